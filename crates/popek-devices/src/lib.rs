//! popek's device models.
//!
//! Devices see only register accesses at an offset inside their window ([`MmioDevice`]) and
//! report interrupts as levels the board wires to whatever consumes them. They know nothing of how
//! the CPU is executed, so an interpreter, a JIT or a hardware-virtualization engine can drive the
//! same models.

pub mod boot_timer;
pub mod clint;
pub mod finisher;
pub mod guest_warn;
mod persist;
pub mod plic;
pub mod uart;
pub mod vmgenid;

/// A device mapped into guest-physical address space.
pub trait MmioDevice {
    /// Read `size` bytes at `offset` inside the device's window.
    fn read(&mut self, offset: u64, size: u8) -> u64;
    /// Write the low `size` bytes of `value` at `offset` inside the device's window.
    fn write(&mut self, offset: u64, size: u8, value: u64);
}
