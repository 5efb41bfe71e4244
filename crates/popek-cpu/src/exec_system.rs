//! The interpreter's system and atomic instructions: fences, `ecall`/`ebreak`, CSR access,
//! trap returns, WFI, `sfence.vma`, LR/SC and AMOs.
//!
//! [`Hart::step`] hands these to [`Hart::step_system`] and [`Hart::step_atomic`]; both are
//! inlined into the interpreter loop, so the split costs no call.

use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};

use crate::csr::{mstatus, CsrOp};
use crate::decode::{Insn, Op};
use crate::exec::{sext32, Flow};
use crate::hart::{request, Hart, Priv};
use crate::mmu::Access;
use crate::trap::{Exception, Trap};
use crate::Bus;

/// Every access of the interpreter's atomics is sequentially consistent.
const SC: Ordering = Ordering::SeqCst;

impl Hart {
    /// Execute system instruction `i` at `pc` (see [`Hart::step`]). `retired` counts the
    /// instructions retired in this slice but not yet added to `instret`.
    #[inline(always)]
    pub(crate) fn step_system<B: Bus>(
        &mut self,
        bus: &mut B,
        i: &Insn,
        pc: u64,
        retired: &mut u64,
    ) -> Result<Flow, Trap> {
        use Op::*;
        let next = pc.wrapping_add(i.byte_len() as u64);
        Ok(match i.op {
            Fence => Flow::Next(next),
            // Stores to decoded code already dropped it; leave the loop so the next fetch sees
            // the current state of memory.
            FenceI => {
                if self.config.smp {
                    self.mmu.flush_all();
                }
                Flow::Leave(next)
            }
            Ecall => {
                if self.config.user_mode {
                    self.s.requests |= request::ECALL;
                    return Ok(Flow::Leave(next));
                }
                let cause = match self.s.prv {
                    Priv::U => Exception::EcallFromU,
                    Priv::S => Exception::EcallFromS,
                    Priv::M => Exception::EcallFromM,
                };
                return Err(Trap::new(cause, 0));
            }
            Ebreak => return Err(Trap::new(Exception::Breakpoint, pc)),
            Csrrw | Csrrs | Csrrc | Csrrwi | Csrrsi | Csrrci => {
                let x = self.s.x[i.rs1 as usize];
                let (op, operand, write) = match i.op {
                    Csrrw => (CsrOp::Write, x, true),
                    Csrrs => (CsrOp::Set, x, i.rs1 != 0),
                    Csrrc => (CsrOp::Clear, x, i.rs1 != 0),
                    Csrrwi => (CsrOp::Write, i.rs1 as u64, true),
                    Csrrsi => (CsrOp::Set, i.rs1 as u64, i.rs1 != 0),
                    _ => (CsrOp::Clear, i.rs1 as u64, i.rs1 != 0),
                };
                // Counters read here must include everything retired before this instruction.
                self.s.instret += *retired;
                *retired = 0;
                let old = self.csr_access(bus, i.imm as u16 & 0xfff, op, operand, write, 0)?;
                self.s.x[i.rd() as usize] = old;
                if crate::engine::fp_csr_access(i) {
                    // Only FP state changed: the inner loop goes on.
                    Flow::Next(next)
                } else {
                    Flow::Leave(next)
                }
            }
            Mret => {
                if self.s.prv != Priv::M {
                    return Err(Trap::new(Exception::IllegalInstruction, 0));
                }
                self.mret();
                Flow::Leave(self.s.csr.mepc)
            }
            Sret => {
                self.supervisor_allowed(mstatus::TSR)?;
                self.sret();
                Flow::Leave(self.s.csr.sepc)
            }
            Wfi => {
                self.supervisor_allowed(mstatus::TW)?;
                if !self.wfi_should_wake() {
                    self.s.requests |= request::WFI;
                }
                Flow::Leave(next)
            }
            SfenceVma => {
                self.supervisor_allowed(mstatus::TVM)?;
                // One address (the ASID, if any, is ignored: more is dropped than asked, never
                // less), or everything.
                match i.rs1 {
                    0 => self.mmu.flush_tlb(),
                    r => self.mmu.flush_tlb_page(self.s.x[r as usize]),
                }
                Flow::Leave(next)
            }
            // Only system opcodes reach here (see `Hart::step`).
            _ => return Err(Trap::new(Exception::IllegalInstruction, 0)),
        })
    }

    /// Trap unless the current mode may run a supervisor instruction that `mstatus` bit
    /// `trap_bit` (TSR, TW or TVM) makes M-mode only: never from U-mode, from S-mode only
    /// while the bit is clear.
    fn supervisor_allowed(&self, trap_bit: u64) -> Result<(), Trap> {
        match self.s.prv {
            Priv::U => Err(Trap::new(Exception::IllegalInstruction, 0)),
            Priv::S if self.s.csr.mstatus & trap_bit != 0 => {
                Err(Trap::new(Exception::IllegalInstruction, 0))
            }
            _ => Ok(()),
        }
    }

    /// `mret`: back to the privilege in `mstatus.MPP`, with `MIE` from `MPIE`.
    fn mret(&mut self) {
        let st = self.s.csr.mstatus;
        let new = Priv::from_bits(st >> mstatus::MPP_SHIFT);
        let mut st = if st & mstatus::MPIE != 0 {
            st | mstatus::MIE
        } else {
            st & !mstatus::MIE
        };
        st |= mstatus::MPIE;
        st &= !mstatus::MPP;
        if new != Priv::M {
            st &= !mstatus::MPRV;
        }
        self.s.csr.mstatus = st;
        self.set_priv(new);
    }

    /// `sret`: back to the privilege in `mstatus.SPP`, with `SIE` from `SPIE`.
    fn sret(&mut self) {
        let st = self.s.csr.mstatus;
        let new = if st & mstatus::SPP != 0 {
            Priv::S
        } else {
            Priv::U
        };
        let mut st = if st & mstatus::SPIE != 0 {
            st | mstatus::SIE
        } else {
            st & !mstatus::SIE
        };
        st |= mstatus::SPIE;
        st &= !(mstatus::SPP | mstatus::MPRV);
        self.s.csr.mstatus = st;
        self.set_priv(new);
    }

    /// Switch privilege mode and the TLB contexts that go with it.
    pub(crate) fn set_priv(&mut self, p: Priv) {
        self.s.prv = p;
        self.mmu.set_context(p, self.s.csr.mstatus);
        self.reservation = None;
        self.s.requests |= request::LEAVE;
    }

    /// Execute LR, SC or AMO instruction `i` at `pc` (see [`Hart::step`]).
    #[inline(always)]
    pub(crate) fn step_atomic(&mut self, i: &Insn, pc: u64) -> Result<Flow, Trap> {
        use Op::*;
        let next = pc.wrapping_add(i.byte_len() as u64);
        let (a, v) = (self.s.x[i.rs1 as usize], self.s.x[i.rs2 as usize]);
        let rd = i.rd() as usize;
        macro_rules! amo {
            ($n:literal, $atomic:ty, $f:expr) => {{
                let (p, _) = self.atomic_ptr(a, $n, Access::Write)?;
                // SAFETY: atomic_ptr returned a naturally aligned pointer into guest RAM.
                let at = unsafe { &*(p as *const $atomic) };
                let old = $f(at);
                self.s.x[rd] = if $n == 4 {
                    sext32(old as u64)
                } else {
                    old as u64
                };
                Flow::Store(next)
            }};
        }
        Ok(match i.op {
            LrW | LrD => {
                let size = if i.op == LrW { 4 } else { 8 };
                let (p, _) = self.atomic_ptr(a, size, Access::Read)?;
                // SAFETY: atomic_ptr returned a naturally aligned pointer into guest RAM.
                let loaded = unsafe {
                    if size == 4 {
                        sext32((*(p as *const AtomicU32)).load(SC) as u64)
                    } else {
                        (*(p as *const AtomicU64)).load(SC)
                    }
                };
                self.reservation = Some((a, loaded));
                self.s.x[rd] = loaded;
                Flow::Next(next)
            }
            ScW | ScD => {
                let size = if i.op == ScW { 4 } else { 8 };
                let ok = match self.reservation.take() {
                    // Like QEMU: SC succeeds if memory still holds what LR read (compare-and-swap).
                    Some((ra, val)) if ra == a => {
                        let (p, _) = self.atomic_ptr(a, size, Access::Write)?;
                        // SAFETY: atomic_ptr returned a naturally aligned pointer into guest RAM.
                        unsafe {
                            if size == 4 {
                                (*(p as *const AtomicU32))
                                    .compare_exchange(val as u32, v as u32, SC, SC)
                                    .is_ok()
                            } else {
                                (*(p as *const AtomicU64))
                                    .compare_exchange(val, v, SC, SC)
                                    .is_ok()
                            }
                        }
                    }
                    _ => false,
                };
                self.s.x[rd] = (!ok) as u64;
                Flow::Store(next)
            }
            AmoswapW => amo!(4, AtomicU32, |m: &AtomicU32| m.swap(v as u32, SC)),
            AmoaddW => amo!(4, AtomicU32, |m: &AtomicU32| m.fetch_add(v as u32, SC)),
            AmoxorW => amo!(4, AtomicU32, |m: &AtomicU32| m.fetch_xor(v as u32, SC)),
            AmoandW => amo!(4, AtomicU32, |m: &AtomicU32| m.fetch_and(v as u32, SC)),
            AmoorW => amo!(4, AtomicU32, |m: &AtomicU32| m.fetch_or(v as u32, SC)),
            AmominW => amo!(4, AtomicI32, |m: &AtomicI32| m.fetch_min(v as i32, SC)),
            AmomaxW => amo!(4, AtomicI32, |m: &AtomicI32| m.fetch_max(v as i32, SC)),
            AmominuW => amo!(4, AtomicU32, |m: &AtomicU32| m.fetch_min(v as u32, SC)),
            AmomaxuW => amo!(4, AtomicU32, |m: &AtomicU32| m.fetch_max(v as u32, SC)),
            AmoswapD => amo!(8, AtomicU64, |m: &AtomicU64| m.swap(v, SC)),
            AmoaddD => amo!(8, AtomicU64, |m: &AtomicU64| m.fetch_add(v, SC)),
            AmoxorD => amo!(8, AtomicU64, |m: &AtomicU64| m.fetch_xor(v, SC)),
            AmoandD => amo!(8, AtomicU64, |m: &AtomicU64| m.fetch_and(v, SC)),
            AmoorD => amo!(8, AtomicU64, |m: &AtomicU64| m.fetch_or(v, SC)),
            AmominD => amo!(8, AtomicI64, |m: &AtomicI64| m.fetch_min(v as i64, SC)),
            AmomaxD => amo!(8, AtomicI64, |m: &AtomicI64| m.fetch_max(v as i64, SC)),
            AmominuD => amo!(8, AtomicU64, |m: &AtomicU64| m.fetch_min(v, SC)),
            AmomaxuD => amo!(8, AtomicU64, |m: &AtomicU64| m.fetch_max(v, SC)),
            // Only atomic opcodes reach here (see `Hart::step`).
            _ => return Err(Trap::new(Exception::IllegalInstruction, 0)),
        })
    }
}
