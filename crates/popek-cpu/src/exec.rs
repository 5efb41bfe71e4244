//! The interpreter: fetch through the decode cache, execute, handle traps and interrupts.

use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};

use crate::csr::{mstatus, CsrOp};
use crate::decode::{decode, raw_in_page, Insn, Op};
use crate::engine::{Engine, Interpreter};
use crate::fpu::{self, RoundingMode};
use crate::hart::{request, Hart, Priv};
use crate::mmu::{Access, DecodedPage, UNDECODED};
use crate::trap::{Exception, Trap};
use crate::{Bus, Exit};

/// Whether `op` writes an integer destination register (so rd = x0 can be redirected to the sink).
pub(crate) fn writes_xreg(op: Op) -> bool {
    use Op::*;
    !matches!(
        op,
        Undecoded
            | Illegal
            | Beq
            | Bne
            | Blt
            | Bge
            | Bltu
            | Bgeu
            | Sb
            | Sh
            | Sw
            | Sd
            | Fence
            | FenceI
            | Ecall
            | Ebreak
            | Mret
            | Sret
            | Wfi
            | SfenceVma
            | Flw
            | Fsw
            | Fld
            | Fsd
            | FmaddS
            | FmsubS
            | FnmsubS
            | FnmaddS
            | FaddS
            | FsubS
            | FmulS
            | FdivS
            | FsqrtS
            | FsgnjS
            | FsgnjnS
            | FsgnjxS
            | FminS
            | FmaxS
            | FcvtSW
            | FcvtSWu
            | FcvtSL
            | FcvtSLu
            | FmvWX
            | FmaddD
            | FmsubD
            | FnmsubD
            | FnmaddD
            | FaddD
            | FsubD
            | FmulD
            | FdivD
            | FsqrtD
            | FsgnjD
            | FsgnjnD
            | FsgnjxD
            | FminD
            | FmaxD
            | FcvtSD
            | FcvtDS
            | FcvtDW
            | FcvtDWu
            | FcvtDL
            | FcvtDLu
            | FmvDX
    )
}

/// Decode for the cache: writes to x0 go to the sink register 32, so execution never checks rd.
fn decode_for_cache(raw: u32) -> Insn {
    let mut insn = decode(raw);
    if insn.rd() == 0 && writes_xreg(insn.op) {
        insn.set_rd(32);
    }
    insn
}

/// Where execution continues after an instruction.
#[derive(Clone, Copy)]
pub(crate) enum Flow {
    /// The next instruction in sequence.
    Next(u64),
    /// A taken branch or jump: may leave the page, and bounds the slice.
    Jump(u64),
    /// After a memory write: continue unless the write needs the outer loop (MMIO, code).
    Store(u64),
    /// Continue in the outer loop (privilege, CSR or translation changes, WFI, user ecall).
    Leave(u64),
    /// The slot is not decoded yet: decode it and dispatch again.
    Decode,
}

#[inline(always)]
fn sext32(v: u64) -> u64 {
    v as i32 as i64 as u64
}

#[inline(always)]
fn unbox32(v: u64) -> u32 {
    if v >> 32 == 0xffff_ffff {
        v as u32
    } else {
        fpu::F32_CANONICAL_NAN
    }
}

#[inline(always)]
fn box32(v: u32) -> u64 {
    0xffff_ffff_0000_0000 | v as u64
}

/// Raw bits of the instruction at `host` + `off` (for `mtval` of illegal-instruction traps).
///
/// # Safety
/// `host` must be the start of a 4 KiB page of guest RAM and `off` < 4096.
unsafe fn raw_bits(host: *const u8, off: usize) -> u64 {
    // SAFETY: per the contract (a straddling instruction reports its first parcel).
    unsafe {
        raw_in_page(host, off)
            .unwrap_or_else(|| (host.add(off) as *const u16).read_unaligned() as u32) as u64
    }
}

impl Hart {
    /// Run until `budget` instructions have retired or something needs the owner's attention.
    pub fn run<B: Bus>(&mut self, bus: &mut B, budget: u64) -> Exit {
        self.run_inner::<B, Interpreter, false>(bus, budget, &mut Interpreter)
    }

    /// [`Hart::run`] with `engine` (see [`crate::engine`]).
    pub(crate) fn run_engine<B: Bus, E: Engine>(
        &mut self,
        bus: &mut B,
        budget: u64,
        engine: &mut E,
    ) -> Exit {
        self.run_inner::<B, E, false>(bus, budget, engine)
    }

    /// Execute exactly one instruction (or take one trap or interrupt without executing the
    /// handler), for debuggers: [`Exit::Budget`] when it retired or trapped into a handler.
    pub fn single_step<B: Bus>(&mut self, bus: &mut B) -> Exit {
        self.run_inner::<B, Interpreter, true>(bus, 1, &mut Interpreter)
    }

    /// [`Hart::run`], or with `STEP` one instruction at a time: the single-step variant is a
    /// separate instantiation, so the normal interpreter loop carries no debugger checks.
    ///
    /// With an active engine, the engine runs code where it can and the interpreter executes one
    /// instruction at a time where it cannot.
    fn run_inner<B: Bus, E: Engine, const STEP: bool>(
        &mut self,
        bus: &mut B,
        budget: u64,
        engine: &mut E,
    ) -> Exit {
        let stop_at = self.s.instret.saturating_add(budget);
        loop {
            self.sync_page_perms();
            self.sync_dma_writes();
            self.sync_dirty_log();
            self.mmu.release_dropped_pages();
            if self.s.requested(request::ECALL) {
                self.s.requests &= !request::ECALL;
                return Exit::Ecall;
            }
            if self.s.requested(request::IO) {
                self.s.requests &= !request::IO;
                return Exit::Io;
            }
            if self.s.instret >= stop_at {
                return Exit::Budget;
            }
            self.s.requests &= !request::LEAVE;
            if let Some(cause) = self.pending_interrupt() {
                self.s.requests &= !request::WFI;
                self.enter_trap(cause, true, 0);
                self.s.requests &= !request::LEAVE;
                if STEP {
                    // Stop at the handler's first instruction, as a hardware debugger would.
                    return Exit::Budget;
                }
            }
            if self.s.requested(request::WFI) {
                if self.wfi_should_wake() {
                    self.s.requests &= !request::WFI;
                } else {
                    return Exit::Wfi;
                }
            }
            let left = stop_at - self.s.instret;
            let ran = if E::ACTIVE {
                engine.run_code(self, bus, left)
            } else {
                None
            };
            let result = match ran {
                Some(r) => r,
                None => match self.fetch_page() {
                    // The engine declined this instruction: interpret up to the end of its
                    // basic block (the first taken jump), then ask the engine again.
                    Ok((page, host)) if E::ACTIVE => self.exec_page::<B, false>(bus, page, host, 1),
                    Ok((page, host)) => self.exec_page::<B, STEP>(bus, page, host, left),
                    Err(t) => Err(t),
                },
            };
            if let Some(slot) = self.straddle_slot.take() {
                // SAFETY: the page the slot belongs to is still allocated: dropped pages are only
                // released at the top of this loop.
                unsafe { *slot = UNDECODED };
            }
            if let Err(t) = result {
                if let Some(e) = self.raise(t) {
                    return e;
                }
                if STEP {
                    return Exit::Budget;
                }
            }
        }
    }

    /// Execute from the decoded page `page` (guest RAM at `host`) starting at `self.s.pc`, until
    /// control leaves the page, `left` instructions retire, or an instruction needs the outer
    /// loop. `self.s.pc` and `instret` are up to date when it returns.
    #[inline(never)]
    fn exec_page<B: Bus, const STEP: bool>(
        &mut self,
        bus: &mut B,
        page: *mut DecodedPage,
        host: *const u8,
        left: u64,
    ) -> Result<(), Trap> {
        let vbase = self.s.pc & !0xfff;
        let mut pc = self.s.pc;
        let mut retired = 0u64;
        // The dispatch is replicated: each copy has its own indirect jump, so the host's branch
        // predictor sees consecutive guest instructions at different sites.
        macro_rules! one {
            ($exec:lifetime) => {{
            let off = pc.wrapping_sub(vbase) as usize;
            // SAFETY: sequential flow reaches at most offset 4096 + 2 (past a straddling
            // instruction), and the page has sentinel slots up to there; jumps out of the page
            // leave the loop. The page stays allocated while this function runs.
            let slot = unsafe { (*page).get_unchecked_mut(off >> 1) };
            match self.step(bus, slot, pc, &mut retired) {
                Ok(Flow::Decode) => {
                    if off >= 4096 {
                        break $exec Ok(());
                    }
                    // SAFETY: host is the start of this page of guest RAM and off < 4096.
                    if let Some(raw) = unsafe { raw_in_page(host, off) } {
                        *slot = decode_for_cache(raw);
                    } else {
                        // Straddles into the next page, which may map anywhere: decode it for this visit
                        // only (the outer loop clears the slot again).
                        self.s.pc = pc;
                        match self.fetch_straddling() {
                            Ok(raw) => {
                                *slot = decode_for_cache(raw);
                                self.straddle_slot = Some(slot as *mut Insn);
                            }
                            Err(t) => break $exec Err(t),
                        }
                    }
                    // Dispatch the freshly decoded instruction (nothing retired yet).
                }
                Ok(Flow::Next(next)) => {
                    pc = next;
                    retired += 1;
                    if STEP {
                        break $exec Ok(());
                    }
                }
                Ok(Flow::Jump(target)) => {
                    pc = target;
                    retired += 1;
                    if STEP || target.wrapping_sub(vbase) >= 4096 || retired >= left {
                        break $exec Ok(());
                    }
                }
                Ok(Flow::Store(next)) => {
                    pc = next;
                    retired += 1;
                    if STEP || self.s.requested(request::LEAVE) {
                        break $exec Ok(());
                    }
                }
                Ok(Flow::Leave(next)) => {
                    pc = next;
                    retired += 1;
                    break $exec Ok(());
                }
                Err(mut t) => {
                    if t.cause == Exception::IllegalInstruction {
                        t.tval = if off + 4 > 4096 && slot.byte_len() == 4 {
                            self.s.pc = pc;
                            self.fetch_straddling().map(u64::from).unwrap_or(0)
                        } else {
                            // SAFETY: host is the start of this page of guest RAM and off < 4096.
                            unsafe { raw_bits(host, off) }
                        };
                    }
                    break $exec Err(t);
                }
            }
            }};
        }
        let result = 'exec: loop {
            one!('exec);
            one!('exec);
            one!('exec);
            one!('exec);
        };
        self.s.pc = pc;
        self.s.instret += retired;
        result
    }

    #[inline(always)]
    fn fp_on(&self) -> Result<(), Trap> {
        if self.s.csr.mstatus & mstatus::FS == 0 {
            Err(Trap::new(Exception::IllegalInstruction, 0))
        } else {
            Ok(())
        }
    }

    /// Resolve an instruction's rounding-mode field (7 = dynamic, from `frm`).
    #[inline(always)]
    fn rounding(&self, rm: u8) -> Result<RoundingMode, Trap> {
        let rm = if rm == 7 { self.s.csr.frm as u8 } else { rm };
        Ok(match rm {
            0 => RoundingMode::Rne,
            1 => RoundingMode::Rtz,
            2 => RoundingMode::Rdn,
            3 => RoundingMode::Rup,
            4 => RoundingMode::Rmm,
            _ => return Err(Trap::new(Exception::IllegalInstruction, 0)),
        })
    }

    #[inline(always)]
    fn fp_dirty(&mut self) {
        self.s.csr.mstatus |= mstatus::FS_DIRTY;
    }

    #[inline(always)]
    fn accrue(&mut self, flags: u8) {
        if flags != 0 {
            self.s.csr.fflags |= flags as u64;
            self.fp_dirty();
        }
    }

    /// Execute instruction `i` at `pc` and say where execution goes next. `retired` counts the
    /// instructions retired in this slice but not yet added to `instret` (counter reads need it).
    #[inline(always)]
    pub(crate) fn step<B: Bus>(
        &mut self,
        bus: &mut B,
        i: &Insn,
        pc: u64,
        retired: &mut u64,
    ) -> Result<Flow, Trap> {
        use Op::*;
        let rd = i.rd() as usize;
        let len = i.byte_len() as u64;
        let imm = i.imm as i64 as u64;
        macro_rules! x {
            ($r:expr) => {
                self.s.x[$r as usize]
            };
        }
        macro_rules! alu {
            ($e:expr) => {{
                self.s.x[rd] = $e;
                Flow::Next(pc.wrapping_add(len))
            }};
        }
        macro_rules! branch {
            ($cond:expr) => {{
                if $cond {
                    Flow::Jump(pc.wrapping_add(imm))
                } else {
                    Flow::Next(pc.wrapping_add(len))
                }
            }};
        }
        macro_rules! load {
            ($n:literal, $conv:expr) => {{
                let a = x!(i.rs1).wrapping_add(imm);
                let v = self.load::<$n, B>(bus, a)?;
                self.s.x[rd] = $conv(v);
                Flow::Next(pc.wrapping_add(len))
            }};
        }
        macro_rules! store {
            ($n:literal) => {{
                let a = x!(i.rs1).wrapping_add(imm);
                self.store::<$n, B>(bus, a, x!(i.rs2))?;
                Flow::Store(pc.wrapping_add(len))
            }};
        }
        // F/D helpers: operands, result write-back with NaN boxing, flag accrual.
        macro_rules! fs {
            ($r:expr) => {
                unbox32(self.s.f[$r as usize])
            };
        }
        macro_rules! fd {
            ($r:expr) => {
                self.s.f[$r as usize]
            };
        }
        macro_rules! fop_s {
            (|$rm:ident, $fl:ident| $e:expr) => {{
                self.fp_on()?;
                let $rm = self.rounding(i.rm())?;
                let mut $fl = 0u8;
                let r: u32 = $e;
                self.s.f[rd] = box32(r);
                self.fp_dirty();
                self.accrue($fl);
                Flow::Next(pc.wrapping_add(len))
            }};
        }
        macro_rules! fop_d {
            (|$rm:ident, $fl:ident| $e:expr) => {{
                self.fp_on()?;
                let $rm = self.rounding(i.rm())?;
                let mut $fl = 0u8;
                let r: u64 = $e;
                self.s.f[rd] = r;
                self.fp_dirty();
                self.accrue($fl);
                Flow::Next(pc.wrapping_add(len))
            }};
        }
        // FP operations with an integer result.
        macro_rules! fop_x {
            (|$rm:ident, $fl:ident| $e:expr) => {{
                self.fp_on()?;
                #[allow(unused_variables)]
                let $rm = self.rounding(i.rm())?;
                let mut $fl = 0u8;
                let r: u64 = $e;
                self.s.x[rd] = r;
                self.accrue($fl);
                Flow::Next(pc.wrapping_add(len))
            }};
        }
        // FP operations without a rounding mode (sign injection, min/max, compares, class, moves).
        macro_rules! fnorm {
            ($fl:ident, $body:block) => {{
                self.fp_on()?;
                let mut $fl = 0u8;
                $body;
                self.accrue($fl);
                Flow::Next(pc.wrapping_add(len))
            }};
        }
        macro_rules! amo {
            ($n:literal, $atomic:ty, $f:expr) => {{
                let a = x!(i.rs1);
                let (p, _) = self.atomic_ptr(a, $n, Access::Write)?;
                // SAFETY: atomic_ptr returned a naturally aligned pointer into guest RAM.
                let at = unsafe { &*(p as *const $atomic) };
                let old = $f(at, x!(i.rs2));
                self.s.x[rd] = if $n == 4 {
                    sext32(old as u64)
                } else {
                    old as u64
                };
                Flow::Store(pc.wrapping_add(len))
            }};
        }
        let sc = Ordering::SeqCst;

        Ok(match i.op {
            Undecoded => Flow::Decode,
            Illegal => return Err(Trap::new(Exception::IllegalInstruction, 0)),
            Lui => alu!(imm),
            Auipc => alu!(pc.wrapping_add(imm)),
            Jal => {
                self.s.x[rd] = pc.wrapping_add(len);
                Flow::Jump(pc.wrapping_add(imm))
            }
            Jalr => {
                let target = x!(i.rs1).wrapping_add(imm) & !1;
                self.s.x[rd] = pc.wrapping_add(len);
                Flow::Jump(target)
            }
            Beq => branch!(x!(i.rs1) == x!(i.rs2)),
            Bne => branch!(x!(i.rs1) != x!(i.rs2)),
            Blt => branch!((x!(i.rs1) as i64) < (x!(i.rs2) as i64)),
            Bge => branch!((x!(i.rs1) as i64) >= (x!(i.rs2) as i64)),
            Bltu => branch!(x!(i.rs1) < x!(i.rs2)),
            Bgeu => branch!(x!(i.rs1) >= x!(i.rs2)),
            Lb => load!(1, |v: u64| v as i8 as i64 as u64),
            Lh => load!(2, |v: u64| v as i16 as i64 as u64),
            Lw => load!(4, |v: u64| v as i32 as i64 as u64),
            Ld => load!(8, |v: u64| v),
            Lbu => load!(1, |v: u64| v),
            Lhu => load!(2, |v: u64| v),
            Lwu => load!(4, |v: u64| v),
            Sb => store!(1),
            Sh => store!(2),
            Sw => store!(4),
            Sd => store!(8),
            Addi => alu!(x!(i.rs1).wrapping_add(imm)),
            Slti => alu!(((x!(i.rs1) as i64) < imm as i64) as u64),
            Sltiu => alu!((x!(i.rs1) < imm) as u64),
            Xori => alu!(x!(i.rs1) ^ imm),
            Ori => alu!(x!(i.rs1) | imm),
            Andi => alu!(x!(i.rs1) & imm),
            Slli => alu!(x!(i.rs1) << (imm & 63)),
            Srli => alu!(x!(i.rs1) >> (imm & 63)),
            Srai => alu!(((x!(i.rs1) as i64) >> (imm & 63)) as u64),
            Add => alu!(x!(i.rs1).wrapping_add(x!(i.rs2))),
            Sub => alu!(x!(i.rs1).wrapping_sub(x!(i.rs2))),
            Sll => alu!(x!(i.rs1) << (x!(i.rs2) & 63)),
            Slt => alu!(((x!(i.rs1) as i64) < (x!(i.rs2) as i64)) as u64),
            Sltu => alu!((x!(i.rs1) < x!(i.rs2)) as u64),
            Xor => alu!(x!(i.rs1) ^ x!(i.rs2)),
            Srl => alu!(x!(i.rs1) >> (x!(i.rs2) & 63)),
            Sra => alu!(((x!(i.rs1) as i64) >> (x!(i.rs2) & 63)) as u64),
            Or => alu!(x!(i.rs1) | x!(i.rs2)),
            And => alu!(x!(i.rs1) & x!(i.rs2)),
            Addiw => alu!(sext32(x!(i.rs1).wrapping_add(imm))),
            Slliw => alu!(sext32(((x!(i.rs1) as u32) << (imm & 31)) as u64)),
            Srliw => alu!(sext32(((x!(i.rs1) as u32) >> (imm & 31)) as u64)),
            Sraiw => alu!(((x!(i.rs1) as i32) >> (imm & 31)) as i64 as u64),
            Addw => alu!(sext32(x!(i.rs1).wrapping_add(x!(i.rs2)))),
            Subw => alu!(sext32(x!(i.rs1).wrapping_sub(x!(i.rs2)))),
            Sllw => alu!(sext32(((x!(i.rs1) as u32) << (x!(i.rs2) & 31)) as u64)),
            Srlw => alu!(sext32(((x!(i.rs1) as u32) >> (x!(i.rs2) & 31)) as u64)),
            Sraw => alu!(((x!(i.rs1) as i32) >> (x!(i.rs2) & 31)) as i64 as u64),
            Mul => alu!(x!(i.rs1).wrapping_mul(x!(i.rs2))),
            Mulh => alu!(((x!(i.rs1) as i64 as i128 * x!(i.rs2) as i64 as i128) >> 64) as u64),
            Mulhsu => {
                alu!(((x!(i.rs1) as i64 as i128).wrapping_mul(x!(i.rs2) as i128) >> 64) as u64)
            }
            Mulhu => alu!(((x!(i.rs1) as u128 * x!(i.rs2) as u128) >> 64) as u64),
            Div => {
                let (a, b) = (x!(i.rs1) as i64, x!(i.rs2) as i64);
                alu!(if b == 0 {
                    u64::MAX
                } else {
                    a.wrapping_div(b) as u64
                })
            }
            Divu => {
                let (a, b) = (x!(i.rs1), x!(i.rs2));
                alu!(a.checked_div(b).unwrap_or(u64::MAX))
            }
            Rem => {
                let (a, b) = (x!(i.rs1) as i64, x!(i.rs2) as i64);
                alu!(if b == 0 {
                    a as u64
                } else {
                    a.wrapping_rem(b) as u64
                })
            }
            Remu => {
                let (a, b) = (x!(i.rs1), x!(i.rs2));
                alu!(if b == 0 { a } else { a % b })
            }
            Mulw => alu!(sext32(x!(i.rs1).wrapping_mul(x!(i.rs2)))),
            Divw => {
                let (a, b) = (x!(i.rs1) as i32, x!(i.rs2) as i32);
                alu!(if b == 0 {
                    u64::MAX
                } else {
                    a.wrapping_div(b) as i64 as u64
                })
            }
            Divuw => {
                let (a, b) = (x!(i.rs1) as u32, x!(i.rs2) as u32);
                alu!(a.checked_div(b).map_or(u64::MAX, |q| sext32(q as u64)))
            }
            Remw => {
                let (a, b) = (x!(i.rs1) as i32, x!(i.rs2) as i32);
                alu!(if b == 0 {
                    a as i64 as u64
                } else {
                    a.wrapping_rem(b) as i64 as u64
                })
            }
            Remuw => {
                let (a, b) = (x!(i.rs1) as u32, x!(i.rs2) as u32);
                alu!(if b == 0 {
                    sext32(a as u64)
                } else {
                    sext32((a % b) as u64)
                })
            }
            Fence => Flow::Next(pc.wrapping_add(len)),
            // Stores to decoded code already dropped it; leave the loop so the next fetch sees
            // the current state of memory.
            FenceI => {
                if self.config.smp {
                    self.mmu.flush_all();
                }
                Flow::Leave(pc.wrapping_add(len))
            }
            Ecall => {
                if self.config.user_mode {
                    self.s.requests |= request::ECALL;
                    return Ok(Flow::Leave(pc.wrapping_add(len)));
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
                let (op, operand, write) = match i.op {
                    Csrrw => (CsrOp::Write, x!(i.rs1), true),
                    Csrrs => (CsrOp::Set, x!(i.rs1), i.rs1 != 0),
                    Csrrc => (CsrOp::Clear, x!(i.rs1), i.rs1 != 0),
                    Csrrwi => (CsrOp::Write, i.rs1 as u64, true),
                    Csrrsi => (CsrOp::Set, i.rs1 as u64, i.rs1 != 0),
                    _ => (CsrOp::Clear, i.rs1 as u64, i.rs1 != 0),
                };
                // Counters read here must include everything retired before this instruction.
                self.s.instret += *retired;
                *retired = 0;
                let old = self.csr_access(bus, i.imm as u16 & 0xfff, op, operand, write, 0)?;
                self.s.x[rd] = old;
                if crate::engine::fp_csr_access(i) {
                    // Only FP state changed: the inner loop goes on.
                    Flow::Next(pc.wrapping_add(len))
                } else {
                    Flow::Leave(pc.wrapping_add(len))
                }
            }
            Mret => {
                if self.s.prv != Priv::M {
                    return Err(Trap::new(Exception::IllegalInstruction, 0));
                }
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
                Flow::Leave(self.s.csr.mepc)
            }
            Sret => {
                if self.s.prv == Priv::U
                    || (self.s.prv == Priv::S && self.s.csr.mstatus & mstatus::TSR != 0)
                {
                    return Err(Trap::new(Exception::IllegalInstruction, 0));
                }
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
                Flow::Leave(self.s.csr.sepc)
            }
            Wfi => {
                if self.s.prv == Priv::U
                    || (self.s.prv == Priv::S && self.s.csr.mstatus & mstatus::TW != 0)
                {
                    return Err(Trap::new(Exception::IllegalInstruction, 0));
                }
                if !self.wfi_should_wake() {
                    self.s.requests |= request::WFI;
                }
                Flow::Leave(pc.wrapping_add(len))
            }
            SfenceVma => {
                if self.s.prv == Priv::U
                    || (self.s.prv == Priv::S && self.s.csr.mstatus & mstatus::TVM != 0)
                {
                    return Err(Trap::new(Exception::IllegalInstruction, 0));
                }
                self.mmu.flush_tlb();
                Flow::Leave(pc.wrapping_add(len))
            }
            LrW | LrD => {
                let size = if i.op == LrW { 4 } else { 8 };
                let a = x!(i.rs1);
                let (p, _) = self.atomic_ptr(a, size, Access::Read)?;
                // SAFETY: atomic_ptr returned a naturally aligned pointer into guest RAM.
                let v = unsafe {
                    if size == 4 {
                        sext32((*(p as *const AtomicU32)).load(sc) as u64)
                    } else {
                        (*(p as *const AtomicU64)).load(sc)
                    }
                };
                self.reservation = Some((a, v));
                self.s.x[rd] = v;
                Flow::Next(pc.wrapping_add(len))
            }
            ScW | ScD => {
                let size = if i.op == ScW { 4 } else { 8 };
                let a = x!(i.rs1);
                let res = self.reservation.take();
                let ok = match res {
                    // Like QEMU: SC succeeds if memory still holds what LR read (compare-and-swap).
                    Some((ra, val)) if ra == a => {
                        let (p, _) = self.atomic_ptr(a, size, Access::Write)?;
                        let new = x!(i.rs2);
                        // SAFETY: atomic_ptr returned a naturally aligned pointer into guest RAM.
                        unsafe {
                            if size == 4 {
                                (*(p as *const AtomicU32))
                                    .compare_exchange(val as u32, new as u32, sc, sc)
                                    .is_ok()
                            } else {
                                (*(p as *const AtomicU64))
                                    .compare_exchange(val, new, sc, sc)
                                    .is_ok()
                            }
                        }
                    }
                    _ => false,
                };
                self.s.x[rd] = (!ok) as u64;
                Flow::Store(pc.wrapping_add(len))
            }
            AmoswapW => amo!(4, AtomicU32, |a: &AtomicU32, v: u64| a.swap(v as u32, sc)),
            AmoaddW => amo!(4, AtomicU32, |a: &AtomicU32, v: u64| a
                .fetch_add(v as u32, sc)),
            AmoxorW => amo!(4, AtomicU32, |a: &AtomicU32, v: u64| a
                .fetch_xor(v as u32, sc)),
            AmoandW => amo!(4, AtomicU32, |a: &AtomicU32, v: u64| a
                .fetch_and(v as u32, sc)),
            AmoorW => amo!(4, AtomicU32, |a: &AtomicU32, v: u64| a
                .fetch_or(v as u32, sc)),
            AmominW => amo!(4, AtomicI32, |a: &AtomicI32, v: u64| a
                .fetch_min(v as i32, sc)),
            AmomaxW => amo!(4, AtomicI32, |a: &AtomicI32, v: u64| a
                .fetch_max(v as i32, sc)),
            AmominuW => amo!(4, AtomicU32, |a: &AtomicU32, v: u64| a
                .fetch_min(v as u32, sc)),
            AmomaxuW => amo!(4, AtomicU32, |a: &AtomicU32, v: u64| a
                .fetch_max(v as u32, sc)),
            AmoswapD => amo!(8, AtomicU64, |a: &AtomicU64, v: u64| a.swap(v, sc)),
            AmoaddD => amo!(8, AtomicU64, |a: &AtomicU64, v: u64| a.fetch_add(v, sc)),
            AmoxorD => amo!(8, AtomicU64, |a: &AtomicU64, v: u64| a.fetch_xor(v, sc)),
            AmoandD => amo!(8, AtomicU64, |a: &AtomicU64, v: u64| a.fetch_and(v, sc)),
            AmoorD => amo!(8, AtomicU64, |a: &AtomicU64, v: u64| a.fetch_or(v, sc)),
            AmominD => amo!(8, AtomicI64, |a: &AtomicI64, v: u64| a
                .fetch_min(v as i64, sc)),
            AmomaxD => amo!(8, AtomicI64, |a: &AtomicI64, v: u64| a
                .fetch_max(v as i64, sc)),
            AmominuD => amo!(8, AtomicU64, |a: &AtomicU64, v: u64| a.fetch_min(v, sc)),
            AmomaxuD => amo!(8, AtomicU64, |a: &AtomicU64, v: u64| a.fetch_max(v, sc)),

            // Loads and stores of FP registers (no NaN-box checks: bits move unchanged).
            Flw => {
                self.fp_on()?;
                let v = self.load::<4, B>(bus, x!(i.rs1).wrapping_add(imm))?;
                self.s.f[rd] = box32(v as u32);
                self.fp_dirty();
                Flow::Next(pc.wrapping_add(len))
            }
            Fld => {
                self.fp_on()?;
                let v = self.load::<8, B>(bus, x!(i.rs1).wrapping_add(imm))?;
                self.s.f[rd] = v;
                self.fp_dirty();
                Flow::Next(pc.wrapping_add(len))
            }
            Fsw => {
                self.fp_on()?;
                self.store::<4, B>(bus, x!(i.rs1).wrapping_add(imm), self.s.f[i.rs2 as usize])?;
                Flow::Store(pc.wrapping_add(len))
            }
            Fsd => {
                self.fp_on()?;
                self.store::<8, B>(bus, x!(i.rs1).wrapping_add(imm), self.s.f[i.rs2 as usize])?;
                Flow::Store(pc.wrapping_add(len))
            }

            // Single precision.
            FaddS => fop_s!(|rm, fl| fpu::f32_add(fs!(i.rs1), fs!(i.rs2), rm, &mut fl)),
            FsubS => fop_s!(|rm, fl| fpu::f32_sub(fs!(i.rs1), fs!(i.rs2), rm, &mut fl)),
            FmulS => fop_s!(|rm, fl| fpu::f32_mul(fs!(i.rs1), fs!(i.rs2), rm, &mut fl)),
            FdivS => fop_s!(|rm, fl| fpu::f32_div(fs!(i.rs1), fs!(i.rs2), rm, &mut fl)),
            FsqrtS => fop_s!(|rm, fl| fpu::f32_sqrt(fs!(i.rs1), rm, &mut fl)),
            FmaddS => {
                fop_s!(|rm, fl| fpu::f32_fma(fs!(i.rs1), fs!(i.rs2), fs!(i.rs3()), rm, &mut fl))
            }
            FmsubS => fop_s!(|rm, fl| fpu::f32_fma(
                fs!(i.rs1),
                fs!(i.rs2),
                fs!(i.rs3()) ^ (1 << 31),
                rm,
                &mut fl
            )),
            FnmsubS => fop_s!(|rm, fl| fpu::f32_fma(
                fs!(i.rs1) ^ (1 << 31),
                fs!(i.rs2),
                fs!(i.rs3()),
                rm,
                &mut fl
            )),
            FnmaddS => fop_s!(|rm, fl| fpu::f32_fma(
                fs!(i.rs1) ^ (1 << 31),
                fs!(i.rs2),
                fs!(i.rs3()) ^ (1 << 31),
                rm,
                &mut fl
            )),
            FsgnjS | FsgnjnS | FsgnjxS => fnorm!(_fl, {
                let (a, b) = (fs!(i.rs1), fs!(i.rs2));
                let sign = match i.op {
                    FsgnjS => b,
                    FsgnjnS => !b,
                    _ => a ^ b,
                } & (1 << 31);
                self.s.f[rd] = box32((a & !(1 << 31)) | sign);
                self.fp_dirty();
            }),
            FminS => fnorm!(fl, {
                self.s.f[rd] = box32(fpu::f32_min(fs!(i.rs1), fs!(i.rs2), &mut fl));
                self.fp_dirty();
            }),
            FmaxS => fnorm!(fl, {
                self.s.f[rd] = box32(fpu::f32_max(fs!(i.rs1), fs!(i.rs2), &mut fl));
                self.fp_dirty();
            }),
            FcvtWS => fop_x!(|rm, fl| fpu::f32_to_i32(fs!(i.rs1), rm, &mut fl) as i64 as u64),
            FcvtWuS => {
                fop_x!(|rm, fl| fpu::f32_to_u32(fs!(i.rs1), rm, &mut fl) as i32 as i64 as u64)
            }
            FcvtLS => fop_x!(|rm, fl| fpu::f32_to_i64(fs!(i.rs1), rm, &mut fl) as u64),
            FcvtLuS => fop_x!(|rm, fl| fpu::f32_to_u64(fs!(i.rs1), rm, &mut fl)),
            FmvXW => fnorm!(_fl, { self.s.x[rd] = sext32(self.s.f[i.rs1 as usize]) }),
            FclassS => fnorm!(_fl, { self.s.x[rd] = fpu::f32_classify(fs!(i.rs1)) }),
            FeqS => fnorm!(fl, {
                self.s.x[rd] = fpu::f32_eq(fs!(i.rs1), fs!(i.rs2), &mut fl) as u64
            }),
            FltS => fnorm!(fl, {
                self.s.x[rd] = fpu::f32_lt(fs!(i.rs1), fs!(i.rs2), &mut fl) as u64
            }),
            FleS => fnorm!(fl, {
                self.s.x[rd] = fpu::f32_le(fs!(i.rs1), fs!(i.rs2), &mut fl) as u64
            }),
            FcvtSW => fop_s!(|rm, fl| fpu::i32_to_f32(x!(i.rs1) as i32, rm, &mut fl)),
            FcvtSWu => fop_s!(|rm, fl| fpu::u32_to_f32(x!(i.rs1) as u32, rm, &mut fl)),
            FcvtSL => fop_s!(|rm, fl| fpu::i64_to_f32(x!(i.rs1) as i64, rm, &mut fl)),
            FcvtSLu => fop_s!(|rm, fl| fpu::u64_to_f32(x!(i.rs1), rm, &mut fl)),
            FmvWX => fnorm!(_fl, {
                self.s.f[rd] = box32(x!(i.rs1) as u32);
                self.fp_dirty();
            }),

            // Double precision.
            FaddD => fop_d!(|rm, fl| fpu::f64_add(fd!(i.rs1), fd!(i.rs2), rm, &mut fl)),
            FsubD => fop_d!(|rm, fl| fpu::f64_sub(fd!(i.rs1), fd!(i.rs2), rm, &mut fl)),
            FmulD => fop_d!(|rm, fl| fpu::f64_mul(fd!(i.rs1), fd!(i.rs2), rm, &mut fl)),
            FdivD => fop_d!(|rm, fl| fpu::f64_div(fd!(i.rs1), fd!(i.rs2), rm, &mut fl)),
            FsqrtD => fop_d!(|rm, fl| fpu::f64_sqrt(fd!(i.rs1), rm, &mut fl)),
            FmaddD => {
                fop_d!(|rm, fl| fpu::f64_fma(fd!(i.rs1), fd!(i.rs2), fd!(i.rs3()), rm, &mut fl))
            }
            FmsubD => fop_d!(|rm, fl| fpu::f64_fma(
                fd!(i.rs1),
                fd!(i.rs2),
                fd!(i.rs3()) ^ (1 << 63),
                rm,
                &mut fl
            )),
            FnmsubD => fop_d!(|rm, fl| fpu::f64_fma(
                fd!(i.rs1) ^ (1 << 63),
                fd!(i.rs2),
                fd!(i.rs3()),
                rm,
                &mut fl
            )),
            FnmaddD => fop_d!(|rm, fl| fpu::f64_fma(
                fd!(i.rs1) ^ (1 << 63),
                fd!(i.rs2),
                fd!(i.rs3()) ^ (1 << 63),
                rm,
                &mut fl
            )),
            FsgnjD | FsgnjnD | FsgnjxD => fnorm!(_fl, {
                let (a, b) = (fd!(i.rs1), fd!(i.rs2));
                let sign = match i.op {
                    FsgnjD => b,
                    FsgnjnD => !b,
                    _ => a ^ b,
                } & (1 << 63);
                self.s.f[rd] = (a & !(1 << 63)) | sign;
                self.fp_dirty();
            }),
            FminD => fnorm!(fl, {
                self.s.f[rd] = fpu::f64_min(fd!(i.rs1), fd!(i.rs2), &mut fl);
                self.fp_dirty();
            }),
            FmaxD => fnorm!(fl, {
                self.s.f[rd] = fpu::f64_max(fd!(i.rs1), fd!(i.rs2), &mut fl);
                self.fp_dirty();
            }),
            FcvtSD => fop_s!(|rm, fl| fpu::f64_to_f32(fd!(i.rs1), rm, &mut fl)),
            FcvtDS => fop_d!(|_rm, fl| fpu::f32_to_f64(fs!(i.rs1), &mut fl)),
            FeqD => fnorm!(fl, {
                self.s.x[rd] = fpu::f64_eq(fd!(i.rs1), fd!(i.rs2), &mut fl) as u64
            }),
            FltD => fnorm!(fl, {
                self.s.x[rd] = fpu::f64_lt(fd!(i.rs1), fd!(i.rs2), &mut fl) as u64
            }),
            FleD => fnorm!(fl, {
                self.s.x[rd] = fpu::f64_le(fd!(i.rs1), fd!(i.rs2), &mut fl) as u64
            }),
            FclassD => fnorm!(_fl, { self.s.x[rd] = fpu::f64_classify(fd!(i.rs1)) }),
            FcvtWD => fop_x!(|rm, fl| fpu::f64_to_i32(fd!(i.rs1), rm, &mut fl) as i64 as u64),
            FcvtWuD => {
                fop_x!(|rm, fl| fpu::f64_to_u32(fd!(i.rs1), rm, &mut fl) as i32 as i64 as u64)
            }
            FcvtLD => fop_x!(|rm, fl| fpu::f64_to_i64(fd!(i.rs1), rm, &mut fl) as u64),
            FcvtLuD => fop_x!(|rm, fl| fpu::f64_to_u64(fd!(i.rs1), rm, &mut fl)),
            FmvXD => fnorm!(_fl, { self.s.x[rd] = self.s.f[i.rs1 as usize] }),
            FcvtDW => fop_d!(|rm, fl| fpu::i32_to_f64(x!(i.rs1) as i32, rm, &mut fl)),
            FcvtDWu => fop_d!(|rm, fl| fpu::u32_to_f64(x!(i.rs1) as u32, rm, &mut fl)),
            FcvtDL => fop_d!(|rm, fl| fpu::i64_to_f64(x!(i.rs1) as i64, rm, &mut fl)),
            FcvtDLu => fop_d!(|rm, fl| fpu::u64_to_f64(x!(i.rs1), rm, &mut fl)),
            FmvDX => fnorm!(_fl, {
                self.s.f[rd] = x!(i.rs1);
                self.fp_dirty();
            }),
        })
    }

    /// Switch privilege mode and the TLB contexts that go with it.
    fn set_priv(&mut self, p: Priv) {
        self.s.prv = p;
        self.mmu.set_context(p, self.s.csr.mstatus);
        self.reservation = None;
        self.s.requests |= request::LEAVE;
    }
}
