//! Exceptions and interrupts as data.

/// Synchronous exception causes (the `mcause` codes of the privileged spec).
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exception {
    InstructionMisaligned = 0,
    InstructionAccessFault = 1,
    IllegalInstruction = 2,
    Breakpoint = 3,
    LoadMisaligned = 4,
    LoadAccessFault = 5,
    StoreMisaligned = 6,
    StoreAccessFault = 7,
    EcallFromU = 8,
    EcallFromS = 9,
    EcallFromM = 11,
    InstructionPageFault = 12,
    LoadPageFault = 13,
    StorePageFault = 15,
}

/// Interrupt causes (bit numbers in `mip`/`mie`).
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Interrupt {
    SupervisorSoftware = 1,
    MachineSoftware = 3,
    SupervisorTimer = 5,
    MachineTimer = 7,
    SupervisorExternal = 9,
    MachineExternal = 11,
}

/// An exception together with the value the spec puts in `xtval`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trap {
    /// What happened.
    pub cause: Exception,
    /// The faulting address, the illegal instruction's bits, or 0.
    pub tval: u64,
}

impl Trap {
    /// Build a trap.
    #[inline]
    pub fn new(cause: Exception, tval: u64) -> Trap {
        Trap { cause, tval }
    }
}

impl std::fmt::Display for Trap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.cause {
            Exception::InstructionMisaligned => "misaligned instruction address",
            Exception::InstructionAccessFault => "instruction access fault",
            Exception::IllegalInstruction => "illegal instruction",
            Exception::Breakpoint => "breakpoint",
            Exception::LoadMisaligned => "misaligned load",
            Exception::LoadAccessFault => "load access fault",
            Exception::StoreMisaligned => "misaligned store/AMO",
            Exception::StoreAccessFault => "store/AMO access fault",
            Exception::EcallFromU => "ecall from U-mode",
            Exception::EcallFromS => "ecall from S-mode",
            Exception::EcallFromM => "ecall from M-mode",
            Exception::InstructionPageFault => "instruction page fault",
            Exception::LoadPageFault => "load page fault",
            Exception::StorePageFault => "store/AMO page fault",
        };
        write!(f, "{what} (tval {:#x})", self.tval)
    }
}
