//! Save and restore of the board's core devices ([`Persist`]). Interrupt levels a device
//! drives are rebuilt by the board after a restore; everything the guest programmed is saved.

use std::io::Write;
use std::time::Duration;

use popek_persist::{Decoder, Encoder, Persist, PersistError};

use crate::boot_timer::BootTimer;
use crate::clint::Clint;
use crate::finisher::Finisher;
use crate::plic::Plic;
use crate::uart::Uart;
use crate::vmgenid::VmGenId;

impl Persist for Clint {
    const VERSION: u32 = 1;

    fn save(&self, out: &mut Encoder) {
        let (msip, mtimecmp, mtime) = self.parts();
        out.bytes(&msip.iter().map(|&b| b as u8).collect::<Vec<_>>());
        out.u64s(mtimecmp);
        out.u64(mtime);
    }

    fn restore(&mut self, input: &mut Decoder<'_>) -> Result<(), PersistError> {
        let msip = input.bytes()?;
        let mtimecmp = input.u64s()?;
        let mtime = input.u64()?;
        if msip.len() != self.harts()
            || mtimecmp.len() != self.harts()
            || msip.iter().any(|&b| b > 1)
        {
            return Err(input.invalid("harts"));
        }
        let msip: Vec<bool> = msip.iter().map(|&b| b != 0).collect();
        self.set_parts(&msip, &mtimecmp, mtime);
        Ok(())
    }
}

impl Persist for Plic {
    const VERSION: u32 = 1;

    fn save(&self, out: &mut Encoder) {
        let p = self.parts();
        out.u32s(p.priority);
        out.bytes(&p.level.iter().map(|&b| b as u8).collect::<Vec<_>>());
        out.u32s(p.pending);
        out.u32s(p.in_service);
        out.u64(p.enable.len() as u64);
        for e in p.enable {
            out.u32s(e);
        }
        out.u32s(p.threshold);
    }

    fn restore(&mut self, input: &mut Decoder<'_>) -> Result<(), PersistError> {
        let priority = input.u32s()?;
        let level: Vec<bool> = input.bytes()?.iter().map(|&b| b != 0).collect();
        let pending = input.u32s()?;
        let in_service = input.u32s()?;
        let contexts = input.u64()?;
        let mut enable = Vec::new();
        for _ in 0..contexts.min(1024) {
            enable.push(input.u32s()?);
        }
        let threshold = input.u32s()?;
        self.set_parts(
            &priority,
            &level,
            &pending,
            &in_service,
            &enable,
            &threshold,
        )
        .map_err(|field| input.invalid(field))
    }
}

impl<W: Write + Default> Persist for Uart<W> {
    const VERSION: u32 = 1;

    fn save(&self, out: &mut Encoder) {
        let s = self.state();
        out.bytes(&[
            s.baud_divisor_low,
            s.baud_divisor_high,
            s.interrupt_enable,
            s.interrupt_identification,
            s.line_control,
            s.line_status,
            s.modem_control,
            s.modem_status,
            s.scratch,
        ]);
        out.bytes(&s.in_buffer);
    }

    fn restore(&mut self, input: &mut Decoder<'_>) -> Result<(), PersistError> {
        let regs = input.bytes()?;
        let [baud_divisor_low, baud_divisor_high, interrupt_enable, interrupt_identification, line_control, line_status, modem_control, modem_status, scratch] =
            *regs
        else {
            return Err(input.invalid("registers"));
        };
        let state = vm_superio::serial::SerialState {
            baud_divisor_low,
            baud_divisor_high,
            interrupt_enable,
            interrupt_identification,
            line_control,
            line_status,
            modem_control,
            modem_status,
            scratch,
            in_buffer: input.bytes()?.to_vec(),
        };
        if self.set_state(&state) {
            Ok(())
        } else {
            Err(input.invalid("receive buffer"))
        }
    }
}

impl Persist for Finisher {
    const VERSION: u32 = 1;

    /// Nothing: a request is consumed by the board before the machine can be saved.
    fn save(&self, _out: &mut Encoder) {}

    fn restore(&mut self, _input: &mut Decoder<'_>) -> Result<(), PersistError> {
        Ok(())
    }
}

impl Persist for BootTimer {
    const VERSION: u32 = 1;

    fn save(&self, out: &mut Encoder) {
        match self.ready_after() {
            Some(t) => {
                out.bool(true);
                out.u64(t.as_nanos() as u64);
            }
            None => out.bool(false),
        }
    }

    fn restore(&mut self, input: &mut Decoder<'_>) -> Result<(), PersistError> {
        let ready = if input.bool("ready")? {
            Some(Duration::from_nanos(input.u64()?))
        } else {
            None
        };
        self.set_ready(ready);
        Ok(())
    }
}

impl Persist for VmGenId {
    const VERSION: u32 = 1;

    fn save(&self, out: &mut Encoder) {
        out.bytes(&self.id());
    }

    fn restore(&mut self, input: &mut Decoder<'_>) -> Result<(), PersistError> {
        let id = input.bytes()?;
        self.set_id(id.try_into().map_err(|_| input.invalid("id"))?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use popek_persist::check_round_trip;

    use super::*;
    use crate::MmioDevice;

    #[test]
    fn clint_round_trips_and_keeps_mtime() {
        let mut a = Clint::new(2);
        a.write(4, 4, 1);
        a.write(0x4008, 8, 12345);
        a.write(0xbff8, 8, 1 << 40);
        let mut enc = Encoder::new();
        a.save(&mut enc);
        let bytes = enc.into_bytes();
        let mut b = Clint::new(2);
        let mut dec = Decoder::new("clint", &bytes);
        b.restore(&mut dec).unwrap();
        dec.finish().unwrap();
        assert!(b.software_pending(1) && !b.software_pending(0));
        assert_eq!(b.read(0x4008, 8), 12345);
        let (x, y) = (a.mtime(), b.mtime());
        assert!(
            y >= 1 << 40 && y <= x + 10_000_000,
            "mtime {y} continues from {x}"
        );
        for cut in 0..bytes.len() {
            let mut dec = Decoder::new("clint", &bytes[..cut]);
            assert!(Clint::new(2)
                .restore(&mut dec)
                .and_then(|_| dec.finish())
                .is_err());
        }
    }

    #[test]
    fn plic_round_trips() {
        check_round_trip(
            || Plic::new(2),
            |p| {
                p.write(4 * 5, 4, 3);
                p.write(0x2000, 4, 1 << 5);
                p.write(0x20_0000, 4, 1);
                p.set_level(5, true);
            },
        );
    }

    #[test]
    fn uart_round_trips_with_input_queued() {
        check_round_trip(
            || Uart::new(Vec::new()),
            |u| {
                u.write(1, 1, 1);
                u.write(7, 1, 0x5a);
                u.receive(b"ls\n");
            },
        );
    }

    #[test]
    fn boot_timer_and_finisher_round_trip() {
        check_round_trip(BootTimer::new, |t| t.write(0, 4, 1));
        check_round_trip(Finisher::new, |_| {});
        check_round_trip(|| VmGenId::new([1; 16]), |g| g.set_id([9; 16]));
    }
}
