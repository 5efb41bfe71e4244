//! F/D instructions run natively on SSE2 (and FMA3), with the interpreter as the slow path.
//!
//! IEEE 754 fixes every non-NaN result of add, sub, mul, div, sqrt and the fused multiply-adds
//! in round-to-nearest-even, so the host's results are the guest's. What differs is the rest,
//! and each difference sends the instruction to the step helper (the interpreter's exact
//! software FPU), which leaves `fflags`, `mstatus` and the result as the interpreter does:
//! - a NaN result (RISC-V returns the canonical NaN, x86 propagates payloads);
//! - a rounding mode other than RNE (static, or dynamic with `frm` not RNE);
//! - any exception flag the guest has not already accrued.
//!
//! Flags are told from the result, not from MXCSR (reading it, `stmxcsr`, cost a quarter of
//! bench/cpu's time): in round-to-nearest-even, an operation that raises invalid returns a NaN,
//! divide-by-zero and overflow return an infinity, and underflow (tiny after rounding, then
//! inexact) returns a zero, a subnormal or at most the smallest normal's binade (a value just
//! under 2^-1022 can round up to it). So a result whose exponent field is neither all ones nor
//! 0 or 1 raised at most inexact, and the fast path takes it when the guest's NX is already
//! set. Exact results in those ranges (an exact zero) take the slow path too, which is only
//! slower, except for add and subtract: a sum of doubles below 2^-1021 in magnitude (exponent
//! field 0 or 1) is exact (both operands are multiples of 2^-1074, and so is their sum, which
//! then has at most 53 significant bits), so it raised nothing, and only a NaN or infinite sum
//! needs a closer look. glibc's `sin` subtracts two equal values in its argument reduction
//! for small arguments: lua5.4's workload sent a million such zero differences to the step
//! helper.
//!
//! While NX is clear, an add or subtract with a normal result computes its rounding error
//! (2Sum) and accrues NX itself when it is not zero. Other operations read MXCSR instead: its
//! flags are sticky and may also hold flags from host code, so the result is taken only if
//! they add nothing to the guest's `fflags` (an exact result on a clean MXCSR). The slow path
//! clears MXCSR's flags afterwards.
//! Underflow needs no agreement on when tininess is detected there: any host underflow goes
//! slow.

// dynasm's dynamic registers (`Rx(n)`) expand to `n.into()`, which is a `u8` already.
#![allow(clippy::useless_conversion)]

use super::regs::{ldf, ldf_bits, stf_xmm, Cache, RCX};
use super::{
    emit_fs_check, emit_step_call, foff, ld, set_fs_dirty, st_f_rax, st_rax, Asm, At, Env, Stubs,
    RAX, S,
};
use dynasmrt::{dynasm, DynamicLabel, DynasmApi, DynasmLabelApi};
use popek_cpu::decode::{Insn, Op};

/// MXCSR's exception flags that map to RISC-V flags (all but DE, denormal operand).
const MXCSR_FLAGS: i32 = 0x3d;
/// MXCSR's precision (inexact) flag.
const MXCSR_PE: i32 = 0x20;
/// MXCSR's six exception flags, DE included (what the slow path clears).
const MXCSR_ALL_FLAGS: i32 = 0x3f;
/// A double's exponent field, after shifting out the fraction (the sign bit above it).
const EXPONENT_MASK: i32 = 0x7ff;

/// How an instruction is run natively.
#[derive(Clone, Copy)]
enum Form {
    /// `f[rd] = op(f[rs1], f[rs2])`, rounded: add, sub, mul, div.
    Arith,
    /// `f[rd] = sqrt(f[rs1])`, rounded.
    Sqrt,
    /// `f[rd] = ±(f[rs1] * f[rs2]) ± f[rs3]`, rounded once.
    Fused,
    /// Sign injection (bit operations, no flags).
    SignInject,
    /// `x[rd] = compare(f[rs1], f[rs2])` (ordered operands only; no flags then).
    Compare,
    /// `f[rd] = x[rs1]` as a signed or unsigned 32-bit integer (always exact).
    FromInt32,
    /// `f[rd] = x[rs1]` as a signed or unsigned 64-bit integer: native when exact (below
    /// 2^53 in magnitude, or with trailing zeros to spare), else the slow path rounds and
    /// raises NX.
    FromInt64,
    /// `x[rd] = f[rs1]` bits.
    MoveToX,
    /// `f[rd] = x[rs1]` bits.
    MoveFromX,
}

fn form(op: Op) -> Option<Form> {
    use Op::*;
    Some(match op {
        FaddD | FsubD | FmulD | FdivD => Form::Arith,
        FsqrtD => Form::Sqrt,
        FmaddD | FmsubD | FnmsubD | FnmaddD => Form::Fused,
        FsgnjD | FsgnjnD | FsgnjxD => Form::SignInject,
        FeqD | FltD | FleD => Form::Compare,
        FcvtDW | FcvtDWu => Form::FromInt32,
        FcvtDL | FcvtDLu => Form::FromInt64,
        FmvXD => Form::MoveToX,
        FmvDX => Form::MoveFromX,
        _ => return None,
    })
}

/// Whether [`emit`] runs `i` natively. A rounding mode other than RNE (0) or dynamic (7,
/// checked at run time) goes through the step helper.
pub(super) fn native(i: &Insn, env: &Env) -> bool {
    match form(i.op) {
        None => false,
        Some(Form::Fused) if !env.fma => false,
        Some(Form::Arith | Form::Sqrt | Form::Fused) => matches!(i.rm(), 0 | 7),
        // Exact results are the same in every rounding mode: any valid one will do.
        Some(Form::FromInt32 | Form::FromInt64) => matches!(i.rm(), 0..=4 | 7),
        Some(_) => true,
    }
}

/// Emit `i` (at `at`), for which [`native`] said yes; its slow path goes after the block.
pub(super) fn emit(ops: &mut Asm, i: &Insn, at: At, stubs: &mut Stubs) {
    let form = form(i.op).expect("native() accepted it");
    let slow = ops.new_dynamic_label();
    let done = ops.new_dynamic_label();
    // With FP off, the slow path's step helper raises the illegal-instruction trap.
    emit_fs_check(ops, stubs, slow);
    if i.rm() == 7 {
        match form {
            Form::Arith | Form::Sqrt | Form::Fused => {
                dynasm!(ops ; .arch x64 ; cmp QWORD [rbx + S.frm], 0 ; jne =>slow)
            }
            // Any valid mode (an invalid one traps, on the slow path).
            Form::FromInt32 | Form::FromInt64 => {
                dynasm!(ops ; .arch x64 ; cmp QWORD [rbx + S.frm], 4 ; ja =>slow)
            }
            _ => {}
        }
    }
    let (rd, rs1, rs2) = (i.rd(), i.rs1, i.rs2);
    match form {
        Form::Arith | Form::Sqrt | Form::Fused => {
            ldf(ops, &stubs.cache, 0, rs1);
            emit_rounded(ops, &stubs.cache, i);
            let nx_clear = ops.new_dynamic_label();
            let flags_ok = ops.new_dynamic_label();
            emit_result_check(ops, slow, nx_clear, is_sum(i.op));
            dynasm!(ops ; .arch x64 ; =>flags_ok);
            st_f_xmm0(ops, stubs, rd);
            let (c, op) = (stubs.cache, i.op);
            stubs
                .cold
                .push(Box::new(move |ops: &mut Asm, env: &Env, _: &mut Stubs| {
                    dynasm!(ops ; .arch x64 ; =>nx_clear);
                    if matches!(op, Op::FaddD | Op::FsubD) {
                        emit_sum_exactness(ops, &c, op, (rs1, rs2), slow, flags_ok);
                    }
                    dynasm!(ops
                        ; .arch x64
                        ; ucomisd xmm0, xmm0
                        ; jp =>slow
                    );
                    emit_flags_check(ops, env, slow);
                    dynasm!(ops ; .arch x64 ; jmp =>flags_ok);
                }));
        }
        Form::SignInject => {
            ldf_bits(ops, &stubs.cache, RAX, rs1);
            ldf_bits(ops, &stubs.cache, RCX, rs2);
            dynasm!(ops
                ; .arch x64
                ; mov rdx, rax
                ; btr rax, 63
            );
            match i.op {
                Op::FsgnjD => {}
                Op::FsgnjnD => dynasm!(ops ; .arch x64 ; not rcx),
                _ => dynasm!(ops ; .arch x64 ; xor rcx, rdx),
            }
            dynasm!(ops
                ; .arch x64
                ; shr rcx, 63
                ; shl rcx, 63
                ; or rax, rcx
            );
            st_f_rax(ops, stubs, rd);
        }
        Form::Compare => {
            ldf(ops, &stubs.cache, 0, rs1);
            ldf(ops, &stubs.cache, 1, rs2);
            dynasm!(ops
                ; .arch x64
                ; xor eax, eax
                ; ucomisd xmm0, xmm1
                ; jp =>slow
            );
            match i.op {
                Op::FeqD => dynasm!(ops ; .arch x64 ; sete al),
                Op::FltD => dynasm!(ops ; .arch x64 ; setb al),
                _ => dynasm!(ops ; .arch x64 ; setbe al),
            }
            st_rax(ops, &stubs.cache, rd);
        }
        Form::FromInt32 => {
            ld(ops, &stubs.cache, RAX, rs1);
            if i.op == Op::FcvtDW {
                dynasm!(ops ; .arch x64 ; movsxd rax, eax);
            } else {
                dynasm!(ops ; .arch x64 ; mov eax, eax);
            }
            // Every 32-bit integer is a double: no rounding, no flags.
            dynasm!(ops
                ; .arch x64
                ; cvtsi2sd xmm0, rax
            );
            st_f_xmm0(ops, stubs, rd);
        }
        Form::FromInt64 => {
            ld(ops, &stubs.cache, RAX, rs1);
            if i.op == Op::FcvtDLu {
                // From 2^63 up the signed conversion does not apply.
                dynasm!(ops ; .arch x64 ; test rax, rax ; js =>slow);
            }
            // Exact if converting back (truncating) gives the integer again: no rounding, no
            // flag. 2^63 (i64::MAX rounded up) converts back as invalid and differs too.
            dynasm!(ops
                ; .arch x64
                ; cvtsi2sd xmm0, rax
                ; cvttsd2si rcx, xmm0
                ; cmp rcx, rax
                ; jne =>slow
            );
            st_f_xmm0(ops, stubs, rd);
        }
        Form::MoveToX => {
            if rd != 0 {
                ldf_bits(ops, &stubs.cache, RAX, rs1);
                st_rax(ops, &stubs.cache, rd);
            }
        }
        Form::MoveFromX => {
            ld(ops, &stubs.cache, RAX, rs1);
            st_f_rax(ops, stubs, rd);
        }
    }
    dynasm!(ops ; .arch x64 ; =>done);
    let i = *i;
    stubs.cold.push(Box::new(
        move |ops: &mut Asm, env: &Env, stubs: &mut Stubs| {
            dynasm!(ops ; .arch x64 ; =>slow);
            emit_step_call(ops, i, at, env, stubs);
            dynasm!(ops
                ; .arch x64
                ; stmxcsr [r12 + env.ctx_scratch]
                ; and DWORD [r12 + env.ctx_scratch], !MXCSR_ALL_FLAGS
                ; ldmxcsr [r12 + env.ctx_scratch]
                ; jmp =>done
            );
        },
    ));
}

/// `f[rd]` = `xmm0`, and `mstatus.FS` dirty.
fn st_f_xmm0(ops: &mut Asm, stubs: &mut Stubs, rd: u8) {
    stf_xmm(ops, &stubs.cache, rd, 0);
    set_fs_dirty(ops, stubs);
}

/// `xmm0` = the rounded result of `i`, with `xmm0` holding `f[rs1]`.
fn emit_rounded(ops: &mut Asm, c: &Cache, i: &Insn) {
    let b = foff(i.rs2);
    match (i.op, c.fx(i.rs2)) {
        (Op::FaddD, Some(x)) => dynasm!(ops ; .arch x64 ; addsd xmm0, Rx(x)),
        (Op::FsubD, Some(x)) => dynasm!(ops ; .arch x64 ; subsd xmm0, Rx(x)),
        (Op::FmulD, Some(x)) => dynasm!(ops ; .arch x64 ; mulsd xmm0, Rx(x)),
        (Op::FdivD, Some(x)) => dynasm!(ops ; .arch x64 ; divsd xmm0, Rx(x)),
        (Op::FaddD, None) => dynasm!(ops ; .arch x64 ; addsd xmm0, [rbx + b]),
        (Op::FsubD, None) => dynasm!(ops ; .arch x64 ; subsd xmm0, [rbx + b]),
        (Op::FmulD, None) => dynasm!(ops ; .arch x64 ; mulsd xmm0, [rbx + b]),
        (Op::FdivD, None) => dynasm!(ops ; .arch x64 ; divsd xmm0, [rbx + b]),
        (Op::FsqrtD, _) => dynasm!(ops ; .arch x64 ; sqrtsd xmm0, xmm0),
        (op, _) => {
            ldf(ops, c, 1, i.rs2);
            let addend = c.fx(i.rs3());
            let m = foff(i.rs3());
            // RISC-V's negated forms negate the product: FNMSUB = -(a*b) + c, FNMADD = -(a*b) - c,
            // which are x86's VFNMADD and VFNMSUB.
            match (op, addend) {
                (Op::FmaddD, Some(x)) => dynasm!(ops ; .arch x64 ; vfmadd213sd xmm0, xmm1, Rx(x)),
                (Op::FmsubD, Some(x)) => dynasm!(ops ; .arch x64 ; vfmsub213sd xmm0, xmm1, Rx(x)),
                (Op::FnmsubD, Some(x)) => {
                    dynasm!(ops ; .arch x64 ; vfnmadd213sd xmm0, xmm1, Rx(x))
                }
                (_, Some(x)) => dynasm!(ops ; .arch x64 ; vfnmsub213sd xmm0, xmm1, Rx(x)),
                (Op::FmaddD, None) => dynasm!(ops ; .arch x64 ; vfmadd213sd xmm0, xmm1, [rbx + m]),
                (Op::FmsubD, None) => dynasm!(ops ; .arch x64 ; vfmsub213sd xmm0, xmm1, [rbx + m]),
                (Op::FnmsubD, None) => {
                    dynasm!(ops ; .arch x64 ; vfnmadd213sd xmm0, xmm1, [rbx + m])
                }
                (_, None) => dynasm!(ops ; .arch x64 ; vfnmsub213sd xmm0, xmm1, [rbx + m]),
            }
        }
    }
}

/// Whether `op` is an add or a subtract (whose tiny results are exact: see the module comment).
fn is_sum(op: Op) -> bool {
    matches!(op, Op::FaddD | Op::FsubD)
}

/// With the rounded result in `xmm0`: go to `nx_clear` if the guest's NX is clear, else to
/// `slow` unless the result's exponent field shows it raised at most inexact (see the module
/// comment): not all ones (NaN, infinity), and unless `sum`, not 0 or 1 (zero, subnormal, the
/// smallest normal binade). Clobbers `rax`.
fn emit_result_check(ops: &mut Asm, slow: DynamicLabel, nx_clear: DynamicLabel, sum: bool) {
    dynasm!(ops
        ; .arch x64
        ; test DWORD [rbx + S.fflags], popek_cpu::fpu::NX as i32
        ; jz =>nx_clear
    );
    if sum {
        emit_exponent_field(ops);
        dynasm!(ops ; .arch x64 ; jz =>slow);
    } else {
        emit_normal_check(ops, slow);
    }
}

/// For an add or subtract whose rounded result is in `xmm0`, with the guest's NX clear: if
/// the result is a normal number (so the operation raised at most inexact), tell whether it
/// is exact from the rounding error, which Knuth's 2Sum computes exactly in round-to-nearest
/// from the operands and the result: exact, go to `flags_ok`; inexact, accrue NX and go
/// there; an error that is not finite (an intermediate overflowed) goes to `slow`. Other
/// results fall through, to the MXCSR check.
///
/// glibc clears `fflags` around every float-to-integer conversion (lua5.4: a million times
/// in bench/exec's workload), so the next inexact subtraction met a clear NX, and MXCSR
/// could only say whether it raised nothing: each went through the step helper.
fn emit_sum_exactness(
    ops: &mut Asm,
    c: &Cache,
    op: Op,
    (rs1, rs2): (u8, u8),
    slow: DynamicLabel,
    flags_ok: DynamicLabel,
) {
    let other = ops.new_dynamic_label();
    emit_normal_check(ops, other);
    // xmm10 = a, xmm11 = b; s (in xmm0) = a + b, or a - b, rounded.
    ldf(ops, c, 10, rs1);
    ldf(ops, c, 11, rs2);
    dynasm!(ops
        ; .arch x64
        ; movapd xmm12, xmm0
        ; subsd xmm12, xmm10 // b' = s - a (the part of b, or of -b, that s holds)
        ; movapd xmm13, xmm0
        ; subsd xmm13, xmm12 // a' = s - b' (the part of a that s holds)
        ; subsd xmm10, xmm13 // a's error: a - a'
    );
    if op == Op::FaddD {
        // b's error: b - b'; the error: their sum.
        dynasm!(ops ; .arch x64 ; subsd xmm11, xmm12 ; addsd xmm10, xmm11);
    } else {
        // -b's error: -b - b' = -(b + b'); the error: a's error minus (b + b').
        dynasm!(ops ; .arch x64 ; addsd xmm11, xmm12 ; subsd xmm10, xmm11);
    }
    dynasm!(ops
        ; .arch x64
        ; xorpd xmm11, xmm11
        ; ucomisd xmm10, xmm11
        ; jp =>slow
        ; je =>flags_ok
        // Not zero: inexact, if the error is finite (an infinity minus itself is a NaN).
        ; movapd xmm12, xmm10
        ; subsd xmm12, xmm10
        ; ucomisd xmm12, xmm11
        ; jp =>slow
        ; or DWORD [rbx + S.fflags], popek_cpu::fpu::NX as i32
        ; jmp =>flags_ok
        ; =>other
        // Below 2^-1021: exact, nothing raised. NaN and infinity go on to the checks after.
        ; test eax, eax
        ; jnz =>flags_ok
    );
}

/// Go to `other` unless `xmm0` is a normal number above the smallest normal binade, from its
/// exponent field: not all ones (NaN, infinity), not 0 or 1 (zero, subnormal, the smallest
/// normal binade). Clobbers `rax`.
fn emit_normal_check(ops: &mut Asm, other: DynamicLabel) {
    emit_exponent_field(ops);
    dynasm!(ops
        ; .arch x64
        ; cmp eax, 2
        ; jbe =>other
    );
}

/// `eax` = `xmm0`'s exponent field plus one, wrapped: 0 for all ones (NaN, infinity), 1 and
/// 2 for 0 and 1 (zero or subnormal, the smallest normal binade); ZF set when 0.
fn emit_exponent_field(ops: &mut Asm) {
    dynasm!(ops
        ; .arch x64
        ; movq rax, xmm0
        ; shr rax, 52
        ; inc eax
        ; and eax, EXPONENT_MASK
    );
}

/// Go to `slow` unless MXCSR's flags add nothing to the guest's `fflags` (see the module
/// comment): only PE is accepted, and only when NX is set.
fn emit_flags_check(ops: &mut Asm, env: &Env, slow: DynamicLabel) {
    dynasm!(ops
        ; .arch x64
        ; stmxcsr [r12 + env.ctx_scratch]
        ; mov eax, [r12 + env.ctx_scratch]
        ; and eax, MXCSR_FLAGS
        ; mov ecx, [rbx + S.fflags]
        ; and ecx, popek_cpu::fpu::NX as i32
        ; shl ecx, MXCSR_PE.trailing_zeros() as i8
        ; not ecx
        ; test eax, ecx
        ; jnz =>slow
    );
}
