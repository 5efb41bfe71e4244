//! The NS16550A UART of QEMU's `virt` (byte registers at 0x1000_0000), on rust-vmm's
//! `vm-superio` model. Output goes to any writer; input is queued by the board.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vm_superio::{Serial, Trigger};

use crate::MmioDevice;

/// Size of the UART window.
pub const SIZE: u64 = 0x100;

/// Remembers that the UART raised its interrupt; the board turns it into a level for the
/// interrupt controller.
#[derive(Clone, Debug, Default)]
pub struct IrqFlag(Arc<AtomicBool>);

impl IrqFlag {
    /// Whether the UART raised an interrupt since the last call.
    pub fn take(&self) -> bool {
        self.0.swap(false, Ordering::AcqRel)
    }
}

impl Trigger for IrqFlag {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.store(true, Ordering::Release);
        Ok(())
    }
}

/// A 16550 UART writing to `W`.
pub struct Uart<W: Write> {
    serial: Serial<IrqFlag, vm_superio::serial::NoEvents, W>,
    irq: IrqFlag,
}

impl<W: Write> Uart<W> {
    /// A UART whose transmitter writes to `out`.
    pub fn new(out: W) -> Uart<W> {
        let irq = IrqFlag::default();
        Uart {
            serial: Serial::new(irq.clone(), out),
            irq,
        }
    }

    /// Queue bytes typed by the user; returns how many fit in the receive FIFO.
    pub fn receive(&mut self, bytes: &[u8]) -> usize {
        if bytes.is_empty() || self.serial.fifo_capacity() == 0 {
            return 0;
        }
        self.serial.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// Room left in the receive FIFO.
    pub fn receive_capacity(&self) -> usize {
        self.serial.fifo_capacity()
    }

    /// The registers and receive FIFO (for saving).
    pub fn state(&self) -> vm_superio::serial::SerialState {
        self.serial.state()
    }

    /// The interrupt flag, for the board's interrupt wiring.
    pub fn irq(&self) -> &IrqFlag {
        &self.irq
    }

    /// The output writer (e.g. to flush it).
    pub fn output(&mut self) -> &mut W {
        self.serial.writer_mut()
    }
}

impl<W: Write + Default> Uart<W> {
    /// Restore registers and FIFO saved by [`Uart::state`]; the output writer stays. False
    /// (and nothing changed) if the FIFO holds more than the hardware's.
    pub fn set_state(&mut self, state: &vm_superio::serial::SerialState) -> bool {
        let placeholder = Serial::new(self.irq.clone(), W::default());
        let out = std::mem::replace(&mut self.serial, placeholder).into_writer();
        let restored = Serial::from_state(
            state,
            self.irq.clone(),
            vm_superio::serial::NoEvents,
            W::default(),
        );
        match restored {
            Ok(mut serial) => {
                *serial.writer_mut() = out;
                self.serial = serial;
                true
            }
            Err(_) => {
                *self.serial.writer_mut() = out;
                false
            }
        }
    }
}

impl<W: Write> MmioDevice for Uart<W> {
    fn read(&mut self, offset: u64, _size: u8) -> u64 {
        if offset < 8 {
            self.serial.read(offset as u8) as u64
        } else {
            0
        }
    }

    fn write(&mut self, offset: u64, _size: u8, value: u64) {
        if offset < 8 {
            // A failing output writer loses the byte, as a disconnected serial line would.
            let _ = self.serial.write(offset as u8, value as u8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transmits_and_receives() {
        let mut u = Uart::new(Vec::new());
        for b in b"hi" {
            u.write(0, 1, *b as u64);
        }
        assert_eq!(u.output().as_slice(), b"hi");
        // THR empty and idle bits are set in LSR.
        assert_eq!(u.read(5, 1) & 0x60, 0x60);
        assert_eq!(u.receive(b"x"), 1);
        assert_eq!(u.read(5, 1) & 1, 1);
        assert_eq!(u.read(0, 1), b'x' as u64);
        assert_eq!(u.read(5, 1) & 1, 0);
    }
}
