//! A one-register device the guest's init writes once when it is ready, so popek can log and
//! benchmark boot time without parsing console output (Firecracker's boot-timer idea).

use std::time::{Duration, Instant};

use crate::MmioDevice;

/// Size of the boot-timer window.
pub const SIZE: u64 = 0x1000;

/// Records the time of the guest's first write.
#[derive(Debug)]
pub struct BootTimer {
    start: Instant,
    ready: Option<Duration>,
}

impl BootTimer {
    /// A timer counting from now.
    pub fn new() -> BootTimer {
        BootTimer {
            start: Instant::now(),
            ready: None,
        }
    }

    /// Time from machine start to the guest's signal, once it came.
    pub fn ready_after(&self) -> Option<Duration> {
        self.ready
    }

    /// Set when the guest signalled (restoring a snapshot of a ready guest).
    pub fn set_ready(&mut self, ready: Option<Duration>) {
        self.ready = ready;
    }

    /// Time since the machine started.
    pub fn since_start(&self) -> Duration {
        self.start.elapsed()
    }
}

impl Default for BootTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl MmioDevice for BootTimer {
    fn read(&mut self, _offset: u64, _size: u8) -> u64 {
        0
    }

    fn write(&mut self, _offset: u64, _size: u8, _value: u64) {
        if self.ready.is_none() {
            let t = self.start.elapsed();
            self.ready = Some(t);
            tracing::debug!("guest signalled ready after {:.3} s", t.as_secs_f64());
        }
    }
}
