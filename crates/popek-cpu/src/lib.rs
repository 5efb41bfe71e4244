//! popek's RISC-V hart: an RV64IMAFDC (+ Zicsr, Zifencei, Zicntr) interpreter with M, S and U
//! modes, Sv39/48/57 paging, a software TLB and a decode cache.
//!
//! The crate knows nothing of boards, devices or operating systems. Whoever owns a [`Hart`] gives
//! it guest RAM ([`Memory`]) and a [`Bus`] for everything else (MMIO), then calls [`Hart::run`] in
//! slices; the hart returns an [`Exit`] saying why it stopped. Guest traps are data ([`Trap`]), never
//! host errors.

pub mod csr;
pub mod decode;
mod decode_pool;
pub mod engine;
mod exec;
mod exec_fp;
mod exec_system;
pub mod fpu;
mod hart;
mod heat;
mod memory;
mod mmu;
mod persist;
mod shared_decode;
mod trap;
pub mod verify;

pub use hart::{request, Hart, HartConfig, HartState, IrqPins, Priv, StateOffsets};
pub use heat::BlockHeat;
pub use memory::{ChangeLog, CodePages, DirtyLog, Memory, MemoryError, PagePerms, RamRegion};
pub use shared_decode::{SharedDecode, SharedDecodeLayout};
pub use trap::{Exception, Interrupt, Trap};

/// Why [`Hart::run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The instruction budget for this slice is spent: the owner polls its devices and calls again.
    Budget,
    /// The guest wrote to MMIO: device state (timers, interrupt lines, power) may have changed.
    Io,
    /// The hart executed WFI and no interrupt is pending: sleep until one may be.
    Wfi,
    /// User-mode hart only: the guest executed `ecall`; `pc` already points past it.
    Ecall,
    /// User-mode hart only: the guest raised this exception; `pc` points at the faulting instruction.
    Trap(Trap),
    /// The hart trapped while entering its own trap handler (e.g. the trap vector is not in RAM):
    /// it can make no further progress.
    DoubleFault(Trap),
}

/// A failed MMIO access: the hart turns it into an access-fault exception.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusFault;

/// Everything outside RAM, as seen by the hart: memory-mapped I/O and the platform timer.
///
/// This is the hart's only window on the machine (Cloud Hypervisor's `VmOps` idea): the board
/// implements it, so the same hart serves a system VM, a process VM, a test rig or a JIT.
pub trait Bus {
    /// Read `size` (1, 2, 4 or 8) bytes of MMIO at physical address `addr`.
    fn read(&mut self, addr: u64, size: u8) -> Result<u64, BusFault>;
    /// Write the low `size` bytes of `value` to MMIO at physical address `addr`.
    fn write(&mut self, addr: u64, size: u8, value: u64) -> Result<(), BusFault>;
    /// The platform timer (`mtime`) for the `time` CSR.
    fn time(&mut self) -> u64;
}

/// A bus with nothing on it: every MMIO access faults and time stands still. For user-mode harts.
#[derive(Debug, Default)]
pub struct NoBus;

impl Bus for NoBus {
    fn read(&mut self, _addr: u64, _size: u8) -> Result<u64, BusFault> {
        Err(BusFault)
    }
    fn write(&mut self, _addr: u64, _size: u8, _value: u64) -> Result<(), BusFault> {
        Err(BusFault)
    }
    fn time(&mut self) -> u64 {
        0
    }
}
