//! Guest-physical memory map, identical to QEMU's `virt` machine.

/// SiFive test finisher (power off / reset / exit code).
pub const TEST: u64 = 0x10_0000;
/// CLINT (ACLINT MSWI and MTIMER).
pub const CLINT: u64 = 0x200_0000;
/// NS16550A UART 0.
pub const UART0: u64 = 0x1000_0000;
/// Start of RAM.
pub const DRAM: u64 = 0x8000_0000;
