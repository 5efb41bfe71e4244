//! The interpreter's F and D instructions: loads and stores of FP registers, and single and
//! double precision arithmetic through [`crate::fpu`] (exact flags, NaN boxing, every rounding
//! mode).
//!
//! [`Hart::step`] hands every FP instruction to [`Hart::step_fp`]; all of these are inlined
//! into the interpreter loop, so the split costs no call.

use crate::csr::mstatus;
use crate::decode::{Insn, Op};
use crate::exec::{sext32, Flow};
use crate::fpu::{self, RoundingMode};
use crate::hart::Hart;
use crate::trap::{Exception, Trap};
use crate::Bus;

/// Single-precision bits of a register, or the canonical NaN if it is not NaN-boxed.
#[inline(always)]
fn unbox32(v: u64) -> u32 {
    if v >> 32 == 0xffff_ffff {
        v as u32
    } else {
        fpu::F32_CANONICAL_NAN
    }
}

/// A single NaN-boxed into a 64-bit register.
#[inline(always)]
fn box32(v: u32) -> u64 {
    0xffff_ffff_0000_0000 | v as u64
}

impl Hart {
    /// Trap unless `mstatus.FS` enables the FPU.
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

    /// Single-precision operand `r` (unboxed).
    #[inline(always)]
    fn fs(&self, r: u8) -> u32 {
        unbox32(self.s.f[r as usize])
    }

    /// Double-precision operand `r`.
    #[inline(always)]
    fn fd(&self, r: u8) -> u64 {
        self.s.f[r as usize]
    }

    /// An FP operation with a rounding mode and an FP result of `WIDTH` (32 or 64) bits: FPU
    /// on, rounding mode resolved, result written (NaN-boxed if single), flags accrued.
    #[inline(always)]
    fn fp_round<const WIDTH: u32>(
        &mut self,
        i: &Insn,
        pc: u64,
        op: impl FnOnce(&Hart, RoundingMode, &mut u8) -> u64,
    ) -> Result<Flow, Trap> {
        self.fp_on()?;
        let rm = self.rounding(i.rm())?;
        let mut flags = 0u8;
        let r = op(self, rm, &mut flags);
        self.s.f[i.rd() as usize] = if WIDTH == 32 { box32(r as u32) } else { r };
        self.fp_dirty();
        self.accrue(flags);
        Ok(Flow::Next(pc.wrapping_add(i.byte_len() as u64)))
    }

    /// An FP operation with a rounding mode and an integer result.
    #[inline(always)]
    fn fp_to_int(
        &mut self,
        i: &Insn,
        pc: u64,
        op: impl FnOnce(&Hart, RoundingMode, &mut u8) -> u64,
    ) -> Result<Flow, Trap> {
        self.fp_on()?;
        let rm = self.rounding(i.rm())?;
        let mut flags = 0u8;
        self.s.x[i.rd() as usize] = op(self, rm, &mut flags);
        self.accrue(flags);
        Ok(Flow::Next(pc.wrapping_add(i.byte_len() as u64)))
    }

    /// An FP operation without a rounding mode (sign injection, min/max, compares, class,
    /// moves): `op` writes its own result.
    #[inline(always)]
    fn fp_plain(
        &mut self,
        i: &Insn,
        pc: u64,
        op: impl FnOnce(&mut Hart, &mut u8),
    ) -> Result<Flow, Trap> {
        self.fp_on()?;
        let mut flags = 0u8;
        op(self, &mut flags);
        self.accrue(flags);
        Ok(Flow::Next(pc.wrapping_add(i.byte_len() as u64)))
    }

    /// Execute F or D instruction `i` at `pc` (see [`Hart::step`]).
    #[inline(always)]
    pub(crate) fn step_fp<B: Bus>(&mut self, bus: &mut B, i: &Insn, pc: u64) -> Result<Flow, Trap> {
        use Op::*;
        let rd = i.rd() as usize;
        let next = pc.wrapping_add(i.byte_len() as u64);
        let addr = |h: &Hart| h.s.x[i.rs1 as usize].wrapping_add(i.imm as i64 as u64);
        // Loads and stores of FP registers (no NaN-box checks: bits move unchanged).
        match i.op {
            Flw => {
                self.fp_on()?;
                let v = self.load::<4, B>(bus, addr(self))?;
                self.s.f[rd] = box32(v as u32);
                self.fp_dirty();
                Ok(Flow::Next(next))
            }
            Fld => {
                self.fp_on()?;
                self.s.f[rd] = self.load::<8, B>(bus, addr(self))?;
                self.fp_dirty();
                Ok(Flow::Next(next))
            }
            Fsw => {
                self.fp_on()?;
                self.store::<4, B>(bus, addr(self), self.s.f[i.rs2 as usize])?;
                Ok(Flow::Store(next))
            }
            Fsd => {
                self.fp_on()?;
                self.store::<8, B>(bus, addr(self), self.s.f[i.rs2 as usize])?;
                Ok(Flow::Store(next))
            }
            FmaddD | FmsubD | FnmsubD | FnmaddD | FaddD | FsubD | FmulD | FdivD | FsqrtD
            | FsgnjD | FsgnjnD | FsgnjxD | FminD | FmaxD | FcvtSD | FcvtDS | FeqD | FltD | FleD
            | FclassD | FcvtWD | FcvtWuD | FcvtLD | FcvtLuD | FmvXD | FcvtDW | FcvtDWu | FcvtDL
            | FcvtDLu | FmvDX => self.step_double(i, pc),
            _ => self.step_single(i, pc),
        }
    }

    /// Execute single-precision instruction `i` at `pc`.
    #[inline(always)]
    fn step_single(&mut self, i: &Insn, pc: u64) -> Result<Flow, Trap> {
        use Op::*;
        let (a, b, c) = (i.rs1, i.rs2, i.rs3());
        let rd = i.rd() as usize;
        const SIGN: u32 = 1 << 31;
        match i.op {
            FaddS => self.fp_round::<32>(i, pc, |h, rm, fl| {
                fpu::f32_add(h.fs(a), h.fs(b), rm, fl) as u64
            }),
            FsubS => self.fp_round::<32>(i, pc, |h, rm, fl| {
                fpu::f32_sub(h.fs(a), h.fs(b), rm, fl) as u64
            }),
            FmulS => self.fp_round::<32>(i, pc, |h, rm, fl| {
                fpu::f32_mul(h.fs(a), h.fs(b), rm, fl) as u64
            }),
            FdivS => self.fp_round::<32>(i, pc, |h, rm, fl| {
                fpu::f32_div(h.fs(a), h.fs(b), rm, fl) as u64
            }),
            FsqrtS => self.fp_round::<32>(i, pc, |h, rm, fl| fpu::f32_sqrt(h.fs(a), rm, fl) as u64),
            FmaddS | FmsubS | FnmsubS | FnmaddS => {
                // Negating the product is negating one factor.
                let (neg_product, neg_addend) = match i.op {
                    FmaddS => (0, 0),
                    FmsubS => (0, SIGN),
                    FnmsubS => (SIGN, 0),
                    _ => (SIGN, SIGN),
                };
                self.fp_round::<32>(i, pc, |h, rm, fl| {
                    fpu::f32_fma(h.fs(a) ^ neg_product, h.fs(b), h.fs(c) ^ neg_addend, rm, fl)
                        as u64
                })
            }
            FsgnjS | FsgnjnS | FsgnjxS => self.fp_plain(i, pc, |h, _| {
                let (x, y) = (h.fs(a), h.fs(b));
                let sign = match i.op {
                    FsgnjS => y,
                    FsgnjnS => !y,
                    _ => x ^ y,
                } & SIGN;
                h.s.f[rd] = box32((x & !SIGN) | sign);
                h.fp_dirty();
            }),
            FminS | FmaxS => self.fp_plain(i, pc, |h, fl| {
                let (x, y) = (h.fs(a), h.fs(b));
                let r = if i.op == FminS {
                    fpu::f32_min(x, y, fl)
                } else {
                    fpu::f32_max(x, y, fl)
                };
                h.s.f[rd] = box32(r);
                h.fp_dirty();
            }),
            FcvtWS => self.fp_to_int(i, pc, |h, rm, fl| {
                fpu::f32_to_i32(h.fs(a), rm, fl) as i64 as u64
            }),
            FcvtWuS => self.fp_to_int(i, pc, |h, rm, fl| {
                fpu::f32_to_u32(h.fs(a), rm, fl) as i32 as i64 as u64
            }),
            FcvtLS => self.fp_to_int(i, pc, |h, rm, fl| fpu::f32_to_i64(h.fs(a), rm, fl) as u64),
            FcvtLuS => self.fp_to_int(i, pc, |h, rm, fl| fpu::f32_to_u64(h.fs(a), rm, fl)),
            FmvXW => self.fp_plain(i, pc, |h, _| h.s.x[rd] = sext32(h.s.f[a as usize])),
            FclassS => self.fp_plain(i, pc, |h, _| h.s.x[rd] = fpu::f32_classify(h.fs(a))),
            FeqS | FltS | FleS => self.fp_plain(i, pc, |h, fl| {
                let (x, y) = (h.fs(a), h.fs(b));
                h.s.x[rd] = match i.op {
                    FeqS => fpu::f32_eq(x, y, fl),
                    FltS => fpu::f32_lt(x, y, fl),
                    _ => fpu::f32_le(x, y, fl),
                } as u64;
            }),
            FcvtSW => self.fp_round::<32>(i, pc, |h, rm, fl| {
                fpu::i32_to_f32(h.s.x[a as usize] as i32, rm, fl) as u64
            }),
            FcvtSWu => self.fp_round::<32>(i, pc, |h, rm, fl| {
                fpu::u32_to_f32(h.s.x[a as usize] as u32, rm, fl) as u64
            }),
            FcvtSL => self.fp_round::<32>(i, pc, |h, rm, fl| {
                fpu::i64_to_f32(h.s.x[a as usize] as i64, rm, fl) as u64
            }),
            FcvtSLu => self.fp_round::<32>(i, pc, |h, rm, fl| {
                fpu::u64_to_f32(h.s.x[a as usize], rm, fl) as u64
            }),
            FmvWX => self.fp_plain(i, pc, |h, _| {
                h.s.f[rd] = box32(h.s.x[a as usize] as u32);
                h.fp_dirty();
            }),
            // Only FP opcodes reach here (see `Hart::step`).
            _ => Err(Trap::new(Exception::IllegalInstruction, 0)),
        }
    }

    /// Execute double-precision instruction `i` at `pc`.
    #[inline(always)]
    fn step_double(&mut self, i: &Insn, pc: u64) -> Result<Flow, Trap> {
        use Op::*;
        let (a, b, c) = (i.rs1, i.rs2, i.rs3());
        let rd = i.rd() as usize;
        const SIGN: u64 = 1 << 63;
        match i.op {
            FaddD => self.fp_round::<64>(i, pc, |h, rm, fl| fpu::f64_add(h.fd(a), h.fd(b), rm, fl)),
            FsubD => self.fp_round::<64>(i, pc, |h, rm, fl| fpu::f64_sub(h.fd(a), h.fd(b), rm, fl)),
            FmulD => self.fp_round::<64>(i, pc, |h, rm, fl| fpu::f64_mul(h.fd(a), h.fd(b), rm, fl)),
            FdivD => self.fp_round::<64>(i, pc, |h, rm, fl| fpu::f64_div(h.fd(a), h.fd(b), rm, fl)),
            FsqrtD => self.fp_round::<64>(i, pc, |h, rm, fl| fpu::f64_sqrt(h.fd(a), rm, fl)),
            FmaddD | FmsubD | FnmsubD | FnmaddD => {
                let (neg_product, neg_addend) = match i.op {
                    FmaddD => (0, 0),
                    FmsubD => (0, SIGN),
                    FnmsubD => (SIGN, 0),
                    _ => (SIGN, SIGN),
                };
                self.fp_round::<64>(i, pc, |h, rm, fl| {
                    fpu::f64_fma(h.fd(a) ^ neg_product, h.fd(b), h.fd(c) ^ neg_addend, rm, fl)
                })
            }
            FsgnjD | FsgnjnD | FsgnjxD => self.fp_plain(i, pc, |h, _| {
                let (x, y) = (h.fd(a), h.fd(b));
                let sign = match i.op {
                    FsgnjD => y,
                    FsgnjnD => !y,
                    _ => x ^ y,
                } & SIGN;
                h.s.f[rd] = (x & !SIGN) | sign;
                h.fp_dirty();
            }),
            FminD | FmaxD => self.fp_plain(i, pc, |h, fl| {
                let (x, y) = (h.fd(a), h.fd(b));
                let r = if i.op == FminD {
                    fpu::f64_min(x, y, fl)
                } else {
                    fpu::f64_max(x, y, fl)
                };
                h.s.f[rd] = r;
                h.fp_dirty();
            }),
            FcvtSD => {
                self.fp_round::<32>(i, pc, |h, rm, fl| fpu::f64_to_f32(h.fd(a), rm, fl) as u64)
            }
            FcvtDS => self.fp_round::<64>(i, pc, |h, _, fl| fpu::f32_to_f64(h.fs(a), fl)),
            FeqD | FltD | FleD => self.fp_plain(i, pc, |h, fl| {
                let (x, y) = (h.fd(a), h.fd(b));
                h.s.x[rd] = match i.op {
                    FeqD => fpu::f64_eq(x, y, fl),
                    FltD => fpu::f64_lt(x, y, fl),
                    _ => fpu::f64_le(x, y, fl),
                } as u64;
            }),
            FclassD => self.fp_plain(i, pc, |h, _| h.s.x[rd] = fpu::f64_classify(h.fd(a))),
            FcvtWD => self.fp_to_int(i, pc, |h, rm, fl| {
                fpu::f64_to_i32(h.fd(a), rm, fl) as i64 as u64
            }),
            FcvtWuD => self.fp_to_int(i, pc, |h, rm, fl| {
                fpu::f64_to_u32(h.fd(a), rm, fl) as i32 as i64 as u64
            }),
            FcvtLD => self.fp_to_int(i, pc, |h, rm, fl| fpu::f64_to_i64(h.fd(a), rm, fl) as u64),
            FcvtLuD => self.fp_to_int(i, pc, |h, rm, fl| fpu::f64_to_u64(h.fd(a), rm, fl)),
            FmvXD => self.fp_plain(i, pc, |h, _| h.s.x[rd] = h.s.f[a as usize]),
            FcvtDW => self.fp_round::<64>(i, pc, |h, rm, fl| {
                fpu::i32_to_f64(h.s.x[a as usize] as i32, rm, fl)
            }),
            FcvtDWu => self.fp_round::<64>(i, pc, |h, rm, fl| {
                fpu::u32_to_f64(h.s.x[a as usize] as u32, rm, fl)
            }),
            FcvtDL => self.fp_round::<64>(i, pc, |h, rm, fl| {
                fpu::i64_to_f64(h.s.x[a as usize] as i64, rm, fl)
            }),
            FcvtDLu => self.fp_round::<64>(i, pc, |h, rm, fl| {
                fpu::u64_to_f64(h.s.x[a as usize], rm, fl)
            }),
            FmvDX => self.fp_plain(i, pc, |h, _| {
                h.s.f[rd] = h.s.x[a as usize];
                h.fp_dirty();
            }),
            // Only FP opcodes reach here (see `Hart::step`).
            _ => Err(Trap::new(Exception::IllegalInstruction, 0)),
        }
    }
}
