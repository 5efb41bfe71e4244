//! Control and status registers: storage, access rules and WARL legalisation.

use crate::hart::{request, Hart, Priv};
use crate::trap::{Exception, Trap};
use crate::Bus;

/// `mstatus` fields.
#[allow(missing_docs)]
pub mod mstatus {
    pub const SIE: u64 = 1 << 1;
    pub const MIE: u64 = 1 << 3;
    pub const SPIE: u64 = 1 << 5;
    pub const MPIE: u64 = 1 << 7;
    pub const SPP: u64 = 1 << 8;
    pub const MPP_SHIFT: u64 = 11;
    pub const MPP: u64 = 3 << 11;
    pub const FS: u64 = 3 << 13;
    pub const FS_INITIAL: u64 = 1 << 13;
    pub const FS_DIRTY: u64 = 3 << 13;
    pub const MPRV: u64 = 1 << 17;
    pub const SUM: u64 = 1 << 18;
    pub const MXR: u64 = 1 << 19;
    pub const TVM: u64 = 1 << 20;
    pub const TW: u64 = 1 << 21;
    pub const TSR: u64 = 1 << 22;
    /// UXL = SXL = 2 (64-bit), read-only.
    pub const XLEN_FIELDS: u64 = (2 << 32) | (2 << 34);
    pub const SD: u64 = 1 << 63;
    /// The bits visible through `sstatus`.
    pub const SSTATUS_MASK: u64 = SIE | SPIE | SPP | FS | SUM | MXR | (3 << 32) | SD;
    /// The bits `mstatus` writes may change.
    pub const WRITABLE: u64 =
        SIE | MIE | SPIE | MPIE | SPP | MPP | FS | MPRV | SUM | MXR | TVM | TW | TSR;
}

/// Whether CSR `num` is one of the FP CSRs (`fflags`, `frm`, `fcsr`): accessing them changes
/// only FP state (see [`crate::engine::fp_csr_access`]).
pub fn is_fp_csr(num: u16) -> bool {
    matches!(num, addr::FFLAGS | addr::FRM | addr::FCSR)
}

/// CSR numbers popek implements.
#[allow(missing_docs)]
pub mod addr {
    pub const FFLAGS: u16 = 0x001;
    pub const FRM: u16 = 0x002;
    pub const FCSR: u16 = 0x003;
    pub const CYCLE: u16 = 0xc00;
    pub const TIME: u16 = 0xc01;
    pub const INSTRET: u16 = 0xc02;
    pub const SSTATUS: u16 = 0x100;
    pub const SIE: u16 = 0x104;
    pub const STVEC: u16 = 0x105;
    pub const SCOUNTEREN: u16 = 0x106;
    pub const SENVCFG: u16 = 0x10a;
    pub const SSCRATCH: u16 = 0x140;
    pub const SEPC: u16 = 0x141;
    pub const SCAUSE: u16 = 0x142;
    pub const STVAL: u16 = 0x143;
    pub const SIP: u16 = 0x144;
    pub const SATP: u16 = 0x180;
    pub const MVENDORID: u16 = 0xf11;
    pub const MARCHID: u16 = 0xf12;
    pub const MIMPID: u16 = 0xf13;
    pub const MHARTID: u16 = 0xf14;
    pub const MCONFIGPTR: u16 = 0xf15;
    pub const MSTATUS: u16 = 0x300;
    pub const MISA: u16 = 0x301;
    pub const MEDELEG: u16 = 0x302;
    pub const MIDELEG: u16 = 0x303;
    pub const MIE: u16 = 0x304;
    pub const MTVEC: u16 = 0x305;
    pub const MCOUNTEREN: u16 = 0x306;
    pub const MENVCFG: u16 = 0x30a;
    pub const MCOUNTINHIBIT: u16 = 0x320;
    pub const MSCRATCH: u16 = 0x340;
    pub const MEPC: u16 = 0x341;
    pub const MCAUSE: u16 = 0x342;
    pub const MTVAL: u16 = 0x343;
    pub const MIP: u16 = 0x344;
    pub const PMPCFG0: u16 = 0x3a0;
    pub const PMPADDR0: u16 = 0x3b0;
    pub const MCYCLE: u16 = 0xb00;
    pub const MINSTRET: u16 = 0xb02;
}

/// `misa`: RV64 with A, C, D, F, I, M, S, U.
pub const MISA_VALUE: u64 = (2 << 62)
    | (1 << 0)
    | (1 << 2)
    | (1 << 3)
    | (1 << 5)
    | (1 << 8)
    | (1 << 12)
    | (1 << 18)
    | (1 << 20);

/// Supervisor-level interrupt bits (SSIP, STIP, SEIP): the ones `mideleg` can delegate.
pub const S_INTERRUPTS: u64 = (1 << 1) | (1 << 5) | (1 << 9);
/// `mip` bits M-mode software may write (the rest are driven by devices).
const MIP_WRITABLE: u64 = S_INTERRUPTS;
/// All interrupt bits this hart has.
const ALL_INTERRUPTS: u64 = S_INTERRUPTS | (1 << 3) | (1 << 7) | (1 << 11);
/// Exceptions `medeleg` can delegate: all but ecall from M-mode (11) and the reserved codes.
const DELEGABLE: u64 = 0xb3ff;
/// Number of PMP entries.
pub const PMP_ENTRIES: usize = 16;

/// CSR storage. Counters and `time` are derived on read.
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Debug, Default)]
pub struct Csrs {
    pub mstatus: u64,
    pub mhartid: u64,
    pub medeleg: u64,
    pub mideleg: u64,
    pub mie: u64,
    /// Software-written `mip` bits (device lines live in `IrqPins`).
    pub mip: u64,
    pub mtvec: u64,
    pub mcounteren: u64,
    pub menvcfg: u64,
    pub mcountinhibit: u64,
    pub mscratch: u64,
    pub mepc: u64,
    pub mcause: u64,
    pub mtval: u64,
    pub stvec: u64,
    pub scounteren: u64,
    pub senvcfg: u64,
    pub sscratch: u64,
    pub sepc: u64,
    pub scause: u64,
    pub stval: u64,
    pub satp: u64,
    pub frm: u64,
    pub fflags: u64,
    pub pmpcfg: [u8; PMP_ENTRIES],
    pub pmpaddr: [u64; PMP_ENTRIES],
    /// `mcycle - instret` and `minstret - instret`, so writes to the counters stick.
    pub cycle_offset: u64,
    pub instret_offset: u64,
}

/// The 64-bit fields of [`Csrs`] as one array (for saving), listed once.
macro_rules! csr_words {
    ($($field:ident),* $(,)?) => {
        /// Number of 64-bit registers [`Csrs::words`] lists.
        pub(crate) const WORDS: usize = [$(stringify!($field)),*].len();

        /// Their names, in the same order.
        pub(crate) const NAMES: [&'static str; Csrs::WORDS] = [$(stringify!($field)),*];

        /// Every 64-bit field, in declaration order.
        pub(crate) fn words(&self) -> [u64; Csrs::WORDS] {
            [$(self.$field),*]
        }

        /// The inverse of [`Csrs::words`].
        pub(crate) fn set_words(&mut self, w: [u64; Csrs::WORDS]) {
            [$(self.$field),*] = w;
        }
    };
}

impl Csrs {
    csr_words!(
        mstatus,
        mhartid,
        medeleg,
        mideleg,
        mie,
        mip,
        mtvec,
        mcounteren,
        menvcfg,
        mcountinhibit,
        mscratch,
        mepc,
        mcause,
        mtval,
        stvec,
        scounteren,
        senvcfg,
        sscratch,
        sepc,
        scause,
        stval,
        satp,
        frm,
        fflags,
        cycle_offset,
        instret_offset,
    );

    /// `fcsr` composed of `frm` and `fflags`.
    pub fn fcsr(&self) -> u64 {
        (self.frm << 5) | self.fflags
    }

    /// Set `fcsr`.
    pub fn set_fcsr(&mut self, v: u64) {
        self.fflags = v & 0x1f;
        self.frm = (v >> 5) & 7;
    }

    /// `mstatus` with its read-only summary fields filled in.
    pub fn mstatus_read(&self) -> u64 {
        let mut v = self.mstatus | mstatus::XLEN_FIELDS;
        if v & mstatus::FS == mstatus::FS_DIRTY {
            v |= mstatus::SD;
        }
        v
    }
}

/// What a CSR instruction does to the register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CsrOp {
    Write,
    Set,
    Clear,
}

impl Hart {
    /// Execute a Zicsr instruction on CSR `num`; `write` is false for csrrs/csrrc with rs1 = x0
    /// (which must not write, so read-only CSRs don't fault). Returns the old value.
    pub(crate) fn csr_access<B: Bus>(
        &mut self,
        bus: &mut B,
        num: u16,
        op: CsrOp,
        operand: u64,
        write: bool,
        insn_bits: u64,
    ) -> Result<u64, Trap> {
        let illegal = Trap::new(Exception::IllegalInstruction, insn_bits);
        let min_priv = (num >> 8) & 3;
        if (self.s.prv as u16) < min_priv || (write && num >> 10 == 3) {
            return Err(illegal);
        }
        let old = self.csr_read(bus, num).ok_or(illegal)?;
        if write {
            // Read-modify-write of mip/sip works on the software-writable bits only: a device's
            // interrupt line (e.g. SEIP from the PLIC) seen by the read must not be latched into
            // the software bit by the write.
            let base = match num {
                addr::MIP | addr::SIP => self.s.csr.mip,
                _ => old,
            };
            let new = match op {
                CsrOp::Write => operand,
                CsrOp::Set => base | operand,
                CsrOp::Clear => base & !operand,
            };
            self.csr_write(num, new).ok_or(illegal)?;
            if !is_fp_csr(num) {
                // Interrupt enables, privilege-related fields and translation may have changed
                // (the FP CSRs change only FP state: see `engine::fp_csr_access`).
                self.s.requests |= request::LEAVE;
            }
        }
        Ok(old)
    }

    fn counter_allowed(&self, bit: u16) -> bool {
        match self.s.prv {
            Priv::M => true,
            Priv::S => self.s.csr.mcounteren >> bit & 1 != 0,
            Priv::U => {
                self.s.csr.mcounteren >> bit & 1 != 0 && self.s.csr.scounteren >> bit & 1 != 0
            }
        }
    }

    fn fs_off(&self) -> bool {
        self.s.csr.mstatus & mstatus::FS == 0
    }

    fn csr_read<B: Bus>(&mut self, bus: &mut B, num: u16) -> Option<u64> {
        use addr::*;
        let c = &self.s.csr;
        Some(match num {
            FFLAGS | FRM | FCSR if self.fs_off() => return None,
            FFLAGS => c.fflags,
            FRM => c.frm,
            FCSR => c.fcsr(),
            CYCLE..=0xc1f => {
                if !self.counter_allowed(num - CYCLE) {
                    return None;
                }
                match num {
                    CYCLE => self.s.instret.wrapping_add(c.cycle_offset),
                    TIME => {
                        // A device's clock: `--engine verify` cannot read it twice alike.
                        if let Some(log) = &mut self.store_log {
                            log.record_mmio();
                        }
                        bus.time()
                    }
                    INSTRET => self.s.instret.wrapping_add(c.instret_offset),
                    _ => 0,
                }
            }
            SSTATUS => c.mstatus_read() & mstatus::SSTATUS_MASK,
            SIE => c.mie & c.mideleg,
            STVEC => c.stvec,
            SCOUNTEREN => c.scounteren,
            SENVCFG => c.senvcfg,
            SSCRATCH => c.sscratch,
            SEPC => c.sepc,
            SCAUSE => c.scause,
            STVAL => c.stval,
            SIP => self.mip() & c.mideleg,
            SATP => {
                if self.s.prv == Priv::S && c.mstatus & mstatus::TVM != 0 {
                    return None;
                }
                c.satp
            }
            MVENDORID | MARCHID | MIMPID | MCONFIGPTR => 0,
            MHARTID => c.mhartid,
            MSTATUS => c.mstatus_read(),
            MISA => MISA_VALUE,
            MEDELEG => c.medeleg,
            MIDELEG => c.mideleg,
            MIE => c.mie,
            MTVEC => c.mtvec,
            MCOUNTEREN => c.mcounteren,
            MENVCFG => c.menvcfg,
            MCOUNTINHIBIT => c.mcountinhibit,
            MSCRATCH => c.mscratch,
            MEPC => c.mepc,
            MCAUSE => c.mcause,
            MTVAL => c.mtval,
            MIP => self.mip(),
            0x3a0..=0x3af => {
                // RV64: only even pmpcfg registers exist, each holding eight entries.
                let idx = (num - PMPCFG0) as usize;
                if !idx.is_multiple_of(2) {
                    return None;
                }
                let first = idx * 4;
                (0..8).fold(0u64, |acc, i| {
                    let v = c.pmpcfg.get(first + i).copied().unwrap_or(0) as u64;
                    acc | (v << (8 * i))
                })
            }
            0x3b0..=0x3ef => c
                .pmpaddr
                .get((num - PMPADDR0) as usize)
                .copied()
                .unwrap_or(0),
            MCYCLE => self.s.instret.wrapping_add(c.cycle_offset),
            MINSTRET => self.s.instret.wrapping_add(c.instret_offset),
            0xb03..=0xb1f | 0x323..=0x33f => 0,
            _ => return None,
        })
    }

    fn csr_write(&mut self, num: u16, v: u64) -> Option<()> {
        use addr::*;
        let c = &mut self.s.csr;
        match num {
            FFLAGS | FRM | FCSR if c.mstatus & mstatus::FS == 0 => return None,
            // Writing FP state makes it dirty, as every FP instruction that changes it does:
            // a kernel saves a task's FP registers and fcsr at a switch only when FS says so.
            FFLAGS | FRM | FCSR => {
                match num {
                    FFLAGS => c.fflags = v & 0x1f,
                    FRM => c.frm = v & 7,
                    _ => c.set_fcsr(v),
                }
                c.mstatus |= mstatus::FS_DIRTY;
            }
            SSTATUS => {
                let m = mstatus::SSTATUS_MASK & mstatus::WRITABLE;
                c.mstatus = (c.mstatus & !m) | (v & m);
            }
            SIE => c.mie = (c.mie & !c.mideleg) | (v & c.mideleg),
            STVEC => c.stvec = legal_tvec(v, c.stvec),
            SCOUNTEREN => c.scounteren = v & 0xffff_ffff,
            SENVCFG => c.senvcfg = 0,
            SSCRATCH => c.sscratch = v,
            SEPC => c.sepc = v & !1,
            SCAUSE => c.scause = v,
            STVAL => c.stval = v,
            SIP => {
                // Only SSIP is writable through sip, and only when delegated.
                let m = c.mideleg & (1 << 1);
                c.mip = (c.mip & !m) | (v & m);
            }
            SATP => {
                if self.s.prv == Priv::S && c.mstatus & mstatus::TVM != 0 {
                    return None;
                }
                let mode = v >> 60;
                if matches!(mode, 0 | 8 | 9 | 10) {
                    // MODE, a 16-bit ASID and a 44-bit PPN: every bit is implemented.
                    c.satp = v;
                    // Decoded code is keyed by physical page, so only translations go.
                    self.mmu.flush_tlb();
                }
            }
            MSTATUS => {
                let mut new = (c.mstatus & !mstatus::WRITABLE) | (v & mstatus::WRITABLE);
                if (new & mstatus::MPP) >> mstatus::MPP_SHIFT == 2 {
                    new = (new & !mstatus::MPP) | (c.mstatus & mstatus::MPP);
                }
                c.mstatus = new;
            }
            MISA | MVENDORID | MARCHID | MIMPID | MHARTID | MCONFIGPTR => {}
            MEDELEG => c.medeleg = v & DELEGABLE,
            MIDELEG => c.mideleg = v & S_INTERRUPTS,
            MIE => c.mie = v & ALL_INTERRUPTS,
            MTVEC => c.mtvec = legal_tvec(v, c.mtvec),
            MCOUNTEREN => c.mcounteren = v & 0xffff_ffff,
            MENVCFG => c.menvcfg = 0,
            MCOUNTINHIBIT => c.mcountinhibit = v & 0xffff_fffd,
            MSCRATCH => c.mscratch = v,
            MEPC => c.mepc = v & !1,
            MCAUSE => c.mcause = v,
            MTVAL => c.mtval = v,
            MIP => c.mip = (c.mip & !MIP_WRITABLE) | (v & MIP_WRITABLE),
            0x3a0..=0x3af => {
                let idx = (num - PMPCFG0) as usize;
                if !idx.is_multiple_of(2) {
                    return None;
                }
                for i in 0..8 {
                    let e = idx * 4 + i;
                    if e < PMP_ENTRIES && c.pmpcfg[e] & 0x80 == 0 {
                        // W without R is reserved: keep such writes out (WARL).
                        let mut b = (v >> (8 * i)) as u8 & 0x9f;
                        if b & 3 == 2 {
                            b &= !3;
                        }
                        c.pmpcfg[e] = b;
                    }
                }
            }
            0x3b0..=0x3ef => {
                let e = (num - PMPADDR0) as usize;
                let locked = e < PMP_ENTRIES && c.pmpcfg[e] & 0x80 != 0;
                if e < PMP_ENTRIES && !locked {
                    c.pmpaddr[e] = v & ((1 << 54) - 1);
                }
            }
            MCYCLE => c.cycle_offset = v.wrapping_sub(self.s.instret),
            // The write happens before this instruction retires, so it counts one less.
            MINSTRET => c.instret_offset = v.wrapping_sub(self.s.instret).wrapping_sub(1),
            0xb03..=0xb1f | 0x323..=0x33f => {}
            _ => return None,
        }
        self.mmu.set_context(self.s.prv, self.s.csr.mstatus);
        Some(())
    }
}

/// Legalise an `mtvec`/`stvec` write: only direct and vectored modes exist; a write selecting a
/// reserved mode is ignored (as QEMU does).
fn legal_tvec(v: u64, old: u64) -> u64 {
    if v & 3 >= 2 {
        old
    } else {
        v
    }
}
