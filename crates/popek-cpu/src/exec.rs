//! The interpreter: fetch through the decode cache, execute, handle traps and interrupts.

use crate::decode::{decode, raw_in_page, Insn, Op};
use crate::engine::{Engine, Interpreter};
use crate::hart::{request, Hart};
use crate::heat::BlockHeat;
use crate::mmu::DecodedPage;
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

/// Have the host pages holding `slot` (a slot may straddle two) backed by writing to them
/// before the slot is read: an `or` of zero into its first and last bytes, which changes
/// nothing. Decoded pages come from the kernel unbacked (see the decode_pool module) and a
/// slot is read before it is written (is it decoded?): a host page read first faults twice,
/// mapping the kernel's zero page and then copying it at the decoder's first write; written
/// first, once. A restored clone took 1,500 fewer faults, 4% of its time. The interpreter
/// touches the slot it enters a page at, and the decoder the slot after each instruction it
/// decodes.
#[inline(always)]
fn back_for_write(slot: *mut Insn) {
    let first = slot as *mut u8;
    let last = first.wrapping_add(std::mem::size_of::<Insn>() - 1);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `slot` is a slot of a decoded page that is allocated and owned by this hart; an
    // `or` of zero rewrites its bytes unchanged (a plain x86 read-modify-write faults as a
    // write, so the kernel backs the page at once).
    unsafe {
        std::arch::asm!(
            "or byte ptr [{0}], 0",
            "or byte ptr [{1}], 0",
            in(reg) first,
            in(reg) last,
            options(nostack)
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (first, last);
}

/// Decode for the cache: writes to x0 go to the sink register 32, so execution never checks rd.
pub(crate) fn decode_for_cache(raw: u32) -> Insn {
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

/// `v`'s low 32 bits, sign-extended (the result of every `*w` instruction).
#[inline(always)]
pub(crate) fn sext32(v: u64) -> u64 {
    v as i32 as i64 as u64
}

/// The result of M-extension instruction `op` on `a` and `b` (division by zero and overflow
/// as the ISA defines them: no traps). The interpreter's M instructions and the JIT's
/// division helpers (x86 division traps where RISC-V defines a result) both compute it here.
#[inline(always)]
pub fn muldiv(op: Op, a: u64, b: u64) -> u64 {
    use Op::*;
    let (sa, sb) = (a as i64, b as i64);
    let (wa, wb) = (a as i32, b as i32);
    let (ua, ub) = (a as u32, b as u32);
    match op {
        Mul => a.wrapping_mul(b),
        Mulh => ((sa as i128 * sb as i128) >> 64) as u64,
        Mulhsu => ((sa as i128).wrapping_mul(b as i128) >> 64) as u64,
        Mulhu => ((a as u128 * b as u128) >> 64) as u64,
        Div if sb == 0 => u64::MAX,
        Div => sa.wrapping_div(sb) as u64,
        Divu => a.checked_div(b).unwrap_or(u64::MAX),
        Rem if sb == 0 => a,
        Rem => sa.wrapping_rem(sb) as u64,
        Remu if b == 0 => a,
        Remu => a % b,
        Mulw => sext32(a.wrapping_mul(b)),
        Divw if wb == 0 => u64::MAX,
        Divw => wa.wrapping_div(wb) as i64 as u64,
        Divuw => ua.checked_div(ub).map_or(u64::MAX, |q| sext32(q as u64)),
        Remw if wb == 0 => wa as i64 as u64,
        Remw => wa.wrapping_rem(wb) as i64 as u64,
        Remuw if ub == 0 => sext32(ua as u64),
        Remuw => sext32((ua % ub) as u64),
        // Not an M instruction: no result.
        _ => 0,
    }
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
        let hot = engine.hot();
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
            // A block that has not started `hot` times yet is the interpreter's (see the heat
            // module): the engine is not asked.
            let ran = if E::ACTIVE && self.block_heat(self.s.pc, hot) != BlockHeat::Cold {
                engine.run_code(self, bus, left)
            } else {
                None
            };
            let result = match ran {
                Some(r) => r,
                None => match self.fetch_page() {
                    // The engine declined this instruction, or was not asked: interpret up to
                    // a taken jump to a hot block, then ask the engine again.
                    Ok((page, host)) if E::ACTIVE => {
                        self.exec_page::<B, false, true>(bus, page, host, (left, hot))
                    }
                    Ok((page, host)) => {
                        self.exec_page::<B, STEP, false>(bus, page, host, (left, 0))
                    }
                    Err(t) => Err(t),
                },
            };
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
    /// loop; with `GATED` (an engine runs hot blocks), also at a taken jump to a block that
    /// has started `hot` times (counting that start). `self.s.pc` and `instret` are up to date
    /// when it returns.
    #[inline(never)]
    fn exec_page<B: Bus, const STEP: bool, const GATED: bool>(
        &mut self,
        bus: &mut B,
        page: *mut DecodedPage,
        host: *const u8,
        (left, hot): (u64, u32),
    ) -> Result<(), Trap> {
        let vbase = self.s.pc & !0xfff;
        let mut pc = self.s.pc;
        let mut retired = 0u64;
        // A page shared with other processes is complete and never written (see the
        // shared_decode module).
        let shared = self.mmu.shared.as_ref().is_some_and(|s| s.holds(page));
        if !shared {
            // SAFETY: the entry slot is in the page (pc is in it), which stays allocated
            // meanwhile.
            back_for_write(unsafe { (*page).as_mut_ptr().add(((pc - vbase) >> 1) as usize) });
        }
        // The dispatch is replicated: each copy has its own indirect jump, so the host's branch
        // predictor sees consecutive guest instructions at different sites.
        macro_rules! one {
            ($exec:lifetime) => {{
            let off = pc.wrapping_sub(vbase) as usize;
            // SAFETY: sequential flow reaches at most offset 4096 (a straddling instruction
            // leaves the loop), and the page has sentinel slots past there; jumps out of the
            // page leave the loop. The page stays allocated while this function runs.
            let slot = unsafe { (*page).get_unchecked_mut(off >> 1) };
            match self.step(bus, slot, pc, &mut retired) {
                Ok(Flow::Decode) => {
                    if off >= 4096 {
                        break $exec Ok(());
                    }
                    // SAFETY: host is the start of this page of guest RAM and off < 4096.
                    let raw = unsafe { raw_in_page(host, off) };
                    match raw {
                        Some(raw) if !shared => {
                            *slot = decode_for_cache(raw);
                            // Sequential flow reads the next slot next, maybe on a host page
                            // of slots not touched yet. The slot after an instruction that
                            // starts in the page is at most a sentinel slot of the page.
                            back_for_write((slot as *mut Insn).wrapping_add(slot.byte_len() as usize >> 1));
                            // Dispatch the freshly decoded instruction (nothing retired yet).
                        }
                        // An instruction straddling the page's end (the next page may map
                        // anywhere), or one in a shared page, which is never written (only
                        // straddling instructions are undecoded there): run it once,
                        // uncached, and go on in the outer loop.
                        _ => {
                            self.s.pc = pc;
                            match self.step_uncached(bus, pc, raw, retired) {
                                Ok(()) => {
                                    pc = self.s.pc;
                                    retired += 1;
                                    break $exec Ok(());
                                }
                                Err(t) => break $exec Err(t),
                            }
                        }
                    }
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
                    if STEP
                        || target.wrapping_sub(vbase) >= 4096
                        || retired >= left
                        || (GATED && self.block_heat(target, hot) != BlockHeat::Cold)
                    {
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
                        // SAFETY: host is the start of this page of guest RAM and off < 4096
                        // (a decoded slot: no straddling instruction is ever decoded into one).
                        t.tval = unsafe { raw_bits(host, off) };
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
            Mul | Mulh | Mulhsu | Mulhu | Div | Divu | Rem | Remu | Mulw | Divw | Divuw | Remw
            | Remuw => alu!(muldiv(i.op, x!(i.rs1), x!(i.rs2))),
            Fence | FenceI | Ecall | Ebreak | Csrrw | Csrrs | Csrrc | Csrrwi | Csrrsi | Csrrci
            | Mret | Sret | Wfi | SfenceVma => return self.step_system(bus, i, pc, retired),
            LrW | ScW | AmoswapW | AmoaddW | AmoxorW | AmoandW | AmoorW | AmominW | AmomaxW
            | AmominuW | AmomaxuW | LrD | ScD | AmoswapD | AmoaddD | AmoxorD | AmoandD | AmoorD
            | AmominD | AmomaxD | AmominuD | AmomaxuD => return self.step_atomic(i, pc),
            // The F and D extensions.
            _ => return self.step_fp(bus, i, pc),
        })
    }
}
