//! QEMU's "sifive_test" finisher: the guest powers off, resets or exits with a status code by
//! writing one 32-bit register. Programs built for QEMU's `virt` use it to end a run.

use crate::MmioDevice;

/// Size of the finisher window.
pub const SIZE: u64 = 0x1000;

/// What the guest asked the machine to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinisherRequest {
    /// Stop with this exit status (0x5555 is status 0; `code << 16 | 0x3333` is `code`).
    Exit(u32),
    /// Reset the machine (0x7777).
    Reset,
}

/// The finisher device; `request` is set once the guest wrote a command.
#[derive(Debug, Default)]
pub struct Finisher {
    request: Option<FinisherRequest>,
}

impl Finisher {
    /// A finisher with no pending request.
    pub fn new() -> Finisher {
        Finisher::default()
    }

    /// Take the guest's pending request, if any.
    pub fn take_request(&mut self) -> Option<FinisherRequest> {
        self.request.take()
    }
}

impl MmioDevice for Finisher {
    fn read(&mut self, _offset: u64, _size: u8) -> u64 {
        0
    }

    fn write(&mut self, offset: u64, _size: u8, value: u64) {
        if offset != 0 {
            return;
        }
        let value = value as u32;
        self.request = match value & 0xffff {
            0x5555 => Some(FinisherRequest::Exit(0)),
            // FAIL exits with its code, 0 included, as qemu-system-riscv64 7.2 (the reference).
            0x3333 => Some(FinisherRequest::Exit(value >> 16)),
            0x7777 => Some(FinisherRequest::Reset),
            _ => self.request,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_commands() {
        let mut f = Finisher::new();
        f.write(0, 4, 0x5555);
        assert_eq!(f.take_request(), Some(FinisherRequest::Exit(0)));
        assert_eq!(f.take_request(), None);
        f.write(0, 4, (7 << 16) | 0x3333);
        assert_eq!(f.take_request(), Some(FinisherRequest::Exit(7)));
        f.write(0, 4, 0x3333);
        assert_eq!(f.take_request(), Some(FinisherRequest::Exit(0)));
        f.write(0, 4, 0x7777);
        assert_eq!(f.take_request(), Some(FinisherRequest::Reset));
        f.write(0, 4, 0x1234);
        assert_eq!(f.take_request(), None);
    }
}
