//! The SiFive CLINT (ACLINT MSWI + MTIMER) of QEMU's `virt`: per-hart software-interrupt and
//! timer-compare registers plus the shared 10 MHz `mtime` counter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::MmioDevice;

/// `mtime` ticks per second, as on QEMU's `virt` (the device tree's timebase-frequency).
pub const TIMEBASE_HZ: u64 = 10_000_000;
/// Size of the CLINT window.
pub const SIZE: u64 = 0x10000;
const MTIMECMP: u64 = 0x4000;
const MTIME: u64 = 0xbff8;

/// The shared `mtime` counter, readable without the CLINT (harts read it for the `time` CSR on
/// their own threads).
#[derive(Clone, Debug)]
pub struct MtimeClock {
    start: Instant,
    /// Added to the host clock so guest writes to `mtime` stick.
    offset: Arc<AtomicU64>,
}

impl MtimeClock {
    /// Current `mtime`, derived from the host's monotonic clock.
    pub fn now(&self) -> u64 {
        let ns = self.start.elapsed().as_nanos() as u64;
        (ns / (1_000_000_000 / TIMEBASE_HZ)).wrapping_add(self.offset.load(Ordering::Relaxed))
    }
}

/// Core-local interruptor for `harts` harts.
#[derive(Debug)]
pub struct Clint {
    msip: Vec<bool>,
    mtimecmp: Vec<u64>,
    clock: MtimeClock,
}

impl Clint {
    /// A CLINT whose `mtime` starts at 0 now.
    pub fn new(harts: usize) -> Clint {
        Clint {
            msip: vec![false; harts],
            mtimecmp: vec![u64::MAX; harts],
            clock: MtimeClock {
                start: Instant::now(),
                offset: Arc::new(AtomicU64::new(0)),
            },
        }
    }

    /// Clear software interrupts and timer compares (system reset); `mtime` keeps counting.
    pub fn reset(&mut self) {
        self.msip.fill(false);
        self.mtimecmp.fill(u64::MAX);
    }

    /// Number of harts served.
    pub fn harts(&self) -> usize {
        self.msip.len()
    }

    /// MSIP bits, timer compares and `mtime` now (for saving).
    pub fn parts(&self) -> (&[bool], &[u64], u64) {
        (&self.msip, &self.mtimecmp, self.mtime())
    }

    /// Restore what [`Clint::parts`] returned: `mtime` continues from `mtime` (lengths must be
    /// [`Clint::harts`]).
    pub fn set_parts(&mut self, msip: &[bool], mtimecmp: &[u64], mtime: u64) {
        self.msip.copy_from_slice(msip);
        self.mtimecmp.copy_from_slice(mtimecmp);
        let now = self.mtime();
        self.clock
            .offset
            .fetch_add(mtime.wrapping_sub(now), Ordering::Relaxed);
    }

    /// Current `mtime`.
    pub fn mtime(&self) -> u64 {
        self.clock.now()
    }

    /// A handle on `mtime` for other threads.
    pub fn clock(&self) -> MtimeClock {
        self.clock.clone()
    }

    /// Level of hart `hart`'s machine software interrupt (MSIP).
    pub fn software_pending(&self, hart: usize) -> bool {
        self.msip[hart]
    }

    /// Level of hart `hart`'s machine timer interrupt (MTIP).
    pub fn timer_pending(&self, hart: usize) -> bool {
        self.mtime() >= self.mtimecmp[hart]
    }

    /// How long until hart `hart`'s timer fires (zero if it already has), for sleeping in WFI.
    pub fn until_timer(&self, hart: usize) -> Duration {
        let now = self.mtime();
        let cmp = self.mtimecmp[hart];
        if cmp <= now {
            return Duration::ZERO;
        }
        let ticks = cmp - now;
        Duration::from_nanos(ticks.saturating_mul(1_000_000_000 / TIMEBASE_HZ))
    }

    fn reg64(value: u64, offset: u64, size: u8, old: u64) -> u64 {
        // 32-bit halves are allowed: merge the written part into the old value.
        match (size, offset & 4) {
            (8, _) => value,
            (4, 0) => (old & !0xffff_ffff) | (value & 0xffff_ffff),
            (4, _) => (old & 0xffff_ffff) | (value << 32),
            _ => old,
        }
    }
}

impl MmioDevice for Clint {
    fn read(&mut self, offset: u64, size: u8) -> u64 {
        let harts = self.msip.len() as u64;
        let v = if offset < 4 * harts {
            self.msip[(offset / 4) as usize] as u64
        } else if (MTIMECMP..MTIMECMP + 8 * harts).contains(&offset) {
            self.mtimecmp[((offset - MTIMECMP) / 8) as usize]
        } else if (MTIME..MTIME + 8).contains(&offset) {
            self.mtime()
        } else {
            return 0;
        };
        if size == 4 && offset & 4 != 0 && offset >= MTIMECMP {
            v >> 32
        } else if size == 4 {
            v & 0xffff_ffff
        } else {
            v
        }
    }

    fn write(&mut self, offset: u64, size: u8, value: u64) {
        let harts = self.msip.len() as u64;
        if offset < 4 * harts {
            self.msip[(offset / 4) as usize] = value & 1 != 0;
        } else if (MTIMECMP..MTIMECMP + 8 * harts).contains(&offset) {
            let h = ((offset - MTIMECMP) / 8) as usize;
            self.mtimecmp[h] = Self::reg64(value, offset, size, self.mtimecmp[h]);
        } else if (MTIME..MTIME + 8).contains(&offset) {
            let now = self.mtime();
            let new = Self::reg64(value, offset, size, now);
            self.clock
                .offset
                .fetch_add(new.wrapping_sub(now), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_compare_and_halves() {
        let mut c = Clint::new(2);
        assert!(!c.timer_pending(0));
        c.write(MTIMECMP + 8, 4, 0x1234);
        c.write(MTIMECMP + 12, 4, 0);
        assert_eq!(c.read(MTIMECMP + 8, 8), 0x1234);
        c.write(MTIMECMP, 8, 0);
        assert!(c.timer_pending(0));
        assert!(!c.timer_pending(1) || c.mtime() >= 0x1234);
        c.write(4, 4, 1);
        assert!(c.software_pending(1) && !c.software_pending(0));
        assert_eq!(c.read(4, 4), 1);
    }

    #[test]
    fn mtime_advances_and_can_be_set() {
        let mut c = Clint::new(1);
        c.write(MTIME, 8, 1_000_000_000);
        let t = c.read(MTIME, 8);
        assert!(
            (1_000_000_000..1_000_000_000 + TIMEBASE_HZ).contains(&t),
            "{t}"
        );
    }
}
