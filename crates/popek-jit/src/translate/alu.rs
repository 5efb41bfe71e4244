//! Integer computation without memory or control flow, and the compare of a conditional
//! branch.
//!
//! A result is computed straight in the host register caching its destination when there is
//! one (see [`Cache::home`]), with operands taken from wherever they are (a host register, the
//! state, or an immediate): `addi a5, a4, 2` with both cached is one `lea`, `sll a5, a5, 32`
//! one `shl`. Otherwise the result is computed in `rax` and stored with [`st_rax`].

// dynasm's dynamic registers (`Rq(n)`) expand to `n.into()`, which is a `u8` already.
#![allow(clippy::useless_conversion)]

use super::regs::{ld, st_rax, Cache, Operand, RAX, RCX};
use super::Asm;
use dynasmrt::{dynasm, DynasmApi};
use popek_cpu::decode::{Insn, Op};

/// Emit `i` if it is an integer computation (false if not). `pc` is its guest address.
pub(super) fn emit_alu(ops: &mut Asm, c: &Cache, i: &Insn, pc: u64) -> bool {
    use Op::*;
    if i.rd() == 0 {
        // No side effects: a hint or nop.
        return writes_only_rd(i.op);
    }
    let d = c.home(i.rd()).unwrap_or(RAX);
    let done = match i.op {
        Lui => {
            dynasm!(ops ; .arch x64 ; mov Rq(d), i.imm);
            true
        }
        Auipc => {
            let v = pc.wrapping_add(i.imm as i64 as u64) as i64;
            dynasm!(ops ; .arch x64 ; mov Rq(d), QWORD v);
            true
        }
        Addi | Xori | Ori | Andi | Slli | Srli | Srai => {
            emit_imm64(ops, c, i, d);
            true
        }
        Addiw | Slliw | Srliw | Sraiw => {
            emit_imm32(ops, c, i, d);
            true
        }
        Add | Sub | Xor | Or | And | Mul | Addw | Subw | Mulw => emit_rr(ops, c, i, d),
        _ => false,
    };
    if done {
        if d == RAX {
            st_rax(ops, c, i.rd());
        }
        return true;
    }
    // The rest through `rax` and `rcx`.
    let (rd, imm) = (i.rd(), i.imm);
    match i.op {
        Slti | Sltiu => {
            ld(ops, c, RAX, i.rs1);
            match i.op {
                Slti => dynasm!(ops ; .arch x64 ; cmp rax, imm ; setl al ; movzx eax, al),
                _ => dynasm!(ops ; .arch x64 ; cmp rax, imm ; setb al ; movzx eax, al),
            }
        }
        Add | Sub | Sll | Slt | Sltu | Xor | Srl | Sra | Or | And | Mul | Mulh | Mulhu | Mulhsu => {
            ld(ops, c, RAX, i.rs1);
            ld(ops, c, RCX, i.rs2);
            emit_rr64(ops, i.op);
        }
        Addw | Subw | Sllw | Srlw | Sraw | Mulw => {
            ld(ops, c, RAX, i.rs1);
            ld(ops, c, RCX, i.rs2);
            match i.op {
                Addw => dynasm!(ops ; .arch x64 ; add eax, ecx),
                Subw => dynasm!(ops ; .arch x64 ; sub eax, ecx),
                Sllw => dynasm!(ops ; .arch x64 ; shl eax, cl),
                Srlw => dynasm!(ops ; .arch x64 ; shr eax, cl),
                Sraw => dynasm!(ops ; .arch x64 ; sar eax, cl),
                _ => dynasm!(ops ; .arch x64 ; imul eax, ecx),
            }
            dynasm!(ops ; .arch x64 ; movsxd rax, eax);
        }
        _ => return false,
    }
    st_rax(ops, c, rd);
    true
}

/// Whether `op` is a computation whose only effect is writing `rd` (so with `rd` = x0 it is a
/// nop).
fn writes_only_rd(op: Op) -> bool {
    use Op::*;
    matches!(
        op,
        Lui | Auipc
            | Addi
            | Slti
            | Sltiu
            | Xori
            | Ori
            | Andi
            | Slli
            | Srli
            | Srai
            | Add
            | Sub
            | Sll
            | Slt
            | Sltu
            | Xor
            | Srl
            | Sra
            | Or
            | And
            | Addiw
            | Slliw
            | Srliw
            | Sraiw
            | Addw
            | Subw
            | Sllw
            | Srlw
            | Sraw
            | Mul
            | Mulh
            | Mulhsu
            | Mulhu
            | Mulw
    )
}

/// Host register `d` = operand `s` (all 64 bits).
fn mov64(ops: &mut Asm, d: u8, s: Operand) {
    match s {
        Operand::Zero => dynasm!(ops ; .arch x64 ; xor Rd(d), Rd(d)),
        Operand::Reg(h) if h == d => {}
        Operand::Reg(h) => dynasm!(ops ; .arch x64 ; mov Rq(d), Rq(h)),
        Operand::Mem(o) => dynasm!(ops ; .arch x64 ; mov Rq(d), [BYTE rbx + o]),
    }
}

/// The low 32 bits of host register `d` = those of operand `s`.
fn mov32(ops: &mut Asm, d: u8, s: Operand) {
    match s {
        Operand::Zero => dynasm!(ops ; .arch x64 ; xor Rd(d), Rd(d)),
        Operand::Reg(h) if h == d => {}
        Operand::Reg(h) => dynasm!(ops ; .arch x64 ; mov Rd(d), Rd(h)),
        Operand::Mem(o) => dynasm!(ops ; .arch x64 ; mov Rd(d), DWORD [BYTE rbx + o]),
    }
}

/// `addi`, the logical immediates and the 64-bit immediate shifts, into `d`.
fn emit_imm64(ops: &mut Asm, c: &Cache, i: &Insn, d: u8) {
    use Op::*;
    let s = c.operand(i.rs1);
    let imm = i.imm;
    match (i.op, s) {
        // `addi d, s, imm` with s in another register: one `lea`.
        (Addi, Operand::Reg(h)) if h != d && imm != 0 => {
            match i8::try_from(imm) {
                Ok(b) => dynasm!(ops ; .arch x64 ; lea Rq(d), [BYTE Rq(h) + b]),
                Err(_) => dynasm!(ops ; .arch x64 ; lea Rq(d), [Rq(h) + imm]),
            }
            return;
        }
        // `li`: the sign-extended immediate.
        (Addi | Xori | Ori, Operand::Zero) => {
            dynasm!(ops ; .arch x64 ; mov Rq(d), imm);
            return;
        }
        _ => {}
    }
    mov64(ops, d, s);
    let sh = (imm & 63) as i8;
    match i.op {
        Addi if imm == 0 => {}
        Addi => match i8::try_from(imm) {
            Ok(b) => dynasm!(ops ; .arch x64 ; add Rq(d), BYTE b),
            Err(_) => dynasm!(ops ; .arch x64 ; add Rq(d), imm),
        },
        Xori => dynasm!(ops ; .arch x64 ; xor Rq(d), imm),
        Ori => dynasm!(ops ; .arch x64 ; or Rq(d), imm),
        Andi => dynasm!(ops ; .arch x64 ; and Rq(d), imm),
        Slli => dynasm!(ops ; .arch x64 ; shl Rq(d), sh),
        Srli => dynasm!(ops ; .arch x64 ; shr Rq(d), sh),
        _ => dynasm!(ops ; .arch x64 ; sar Rq(d), sh),
    }
}

/// `addiw` and the 32-bit immediate shifts, into `d`: computed on the low 32 bits, then
/// sign-extended.
fn emit_imm32(ops: &mut Asm, c: &Cache, i: &Insn, d: u8) {
    use Op::*;
    let s = c.operand(i.rs1);
    let imm = i.imm;
    let sh = (imm & 31) as i8;
    match (i.op, s) {
        // `sext.w`: one `movsxd`.
        (Addiw, Operand::Reg(h)) if imm == 0 => {
            dynasm!(ops ; .arch x64 ; movsxd Rq(d), Rd(h));
            return;
        }
        (Addiw, Operand::Mem(o)) if imm == 0 => {
            dynasm!(ops ; .arch x64 ; movsxd Rq(d), DWORD [BYTE rbx + o]);
            return;
        }
        (Addiw, Operand::Reg(h)) if h != d => match i8::try_from(imm) {
            Ok(b) => dynasm!(ops ; .arch x64 ; lea Rd(d), [BYTE Rq(h) + b]),
            Err(_) => dynasm!(ops ; .arch x64 ; lea Rd(d), [Rq(h) + imm]),
        },
        _ => {
            mov32(ops, d, s);
            match i.op {
                Addiw => match i8::try_from(imm) {
                    Ok(b) => dynasm!(ops ; .arch x64 ; add Rd(d), BYTE b),
                    Err(_) => dynasm!(ops ; .arch x64 ; add Rd(d), imm),
                },
                Slliw => dynasm!(ops ; .arch x64 ; shl Rd(d), sh),
                Srliw => dynasm!(ops ; .arch x64 ; shr Rd(d), sh),
                _ => dynasm!(ops ; .arch x64 ; sar Rd(d), sh),
            }
        }
    }
    dynasm!(ops ; .arch x64 ; movsxd Rq(d), Rd(d));
}

/// The register-register operations that take their second operand from anywhere, into `d`;
/// false (nothing emitted) where `d` holds the second operand and the operation does not
/// commute, or the second operand is x0 (both are left to the `rax` path).
fn emit_rr(ops: &mut Asm, c: &Cache, i: &Insn, d: u8) -> bool {
    use Op::*;
    let (mut a, mut b) = (c.operand(i.rs1), c.operand(i.rs2));
    if b == Operand::Reg(d) && a != b {
        if matches!(i.op, Sub | Subw) {
            return false;
        }
        std::mem::swap(&mut a, &mut b);
    }
    let wide = matches!(i.op, Add | Sub | Xor | Or | And | Mul);
    match b {
        Operand::Zero => return false,
        Operand::Reg(h) => {
            if wide {
                mov64(ops, d, a);
                match i.op {
                    Add => dynasm!(ops ; .arch x64 ; add Rq(d), Rq(h)),
                    Sub => dynasm!(ops ; .arch x64 ; sub Rq(d), Rq(h)),
                    Xor => dynasm!(ops ; .arch x64 ; xor Rq(d), Rq(h)),
                    Or => dynasm!(ops ; .arch x64 ; or Rq(d), Rq(h)),
                    And => dynasm!(ops ; .arch x64 ; and Rq(d), Rq(h)),
                    _ => dynasm!(ops ; .arch x64 ; imul Rq(d), Rq(h)),
                }
            } else {
                mov32(ops, d, a);
                match i.op {
                    Addw => dynasm!(ops ; .arch x64 ; add Rd(d), Rd(h)),
                    Subw => dynasm!(ops ; .arch x64 ; sub Rd(d), Rd(h)),
                    _ => dynasm!(ops ; .arch x64 ; imul Rd(d), Rd(h)),
                }
            }
        }
        Operand::Mem(o) => {
            if wide {
                mov64(ops, d, a);
                match i.op {
                    Add => dynasm!(ops ; .arch x64 ; add Rq(d), [BYTE rbx + o]),
                    Sub => dynasm!(ops ; .arch x64 ; sub Rq(d), [BYTE rbx + o]),
                    Xor => dynasm!(ops ; .arch x64 ; xor Rq(d), [BYTE rbx + o]),
                    Or => dynasm!(ops ; .arch x64 ; or Rq(d), [BYTE rbx + o]),
                    And => dynasm!(ops ; .arch x64 ; and Rq(d), [BYTE rbx + o]),
                    _ => dynasm!(ops ; .arch x64 ; imul Rq(d), [BYTE rbx + o]),
                }
            } else {
                mov32(ops, d, a);
                match i.op {
                    Addw => dynasm!(ops ; .arch x64 ; add Rd(d), DWORD [BYTE rbx + o]),
                    Subw => dynasm!(ops ; .arch x64 ; sub Rd(d), DWORD [BYTE rbx + o]),
                    _ => dynasm!(ops ; .arch x64 ; imul Rd(d), DWORD [BYTE rbx + o]),
                }
            }
        }
    }
    if !wide {
        dynasm!(ops ; .arch x64 ; movsxd Rq(d), Rd(d));
    }
    true
}

/// `rax = rax op rcx` for the 64-bit register-register operations.
fn emit_rr64(ops: &mut Asm, op: Op) {
    use Op::*;
    match op {
        Add => dynasm!(ops ; .arch x64 ; add rax, rcx),
        Sub => dynasm!(ops ; .arch x64 ; sub rax, rcx),
        Sll => dynasm!(ops ; .arch x64 ; shl rax, cl),
        Srl => dynasm!(ops ; .arch x64 ; shr rax, cl),
        Sra => dynasm!(ops ; .arch x64 ; sar rax, cl),
        Slt => dynasm!(ops ; .arch x64 ; cmp rax, rcx ; setl al ; movzx eax, al),
        Sltu => dynasm!(ops ; .arch x64 ; cmp rax, rcx ; setb al ; movzx eax, al),
        Xor => dynasm!(ops ; .arch x64 ; xor rax, rcx),
        Or => dynasm!(ops ; .arch x64 ; or rax, rcx),
        And => dynasm!(ops ; .arch x64 ; and rax, rcx),
        Mul => dynasm!(ops ; .arch x64 ; imul rax, rcx),
        Mulh => dynasm!(ops ; .arch x64 ; imul rcx ; mov rax, rdx),
        Mulhu => dynasm!(ops ; .arch x64 ; mul rcx ; mov rax, rdx),
        // Signed × unsigned: the unsigned high half, less rs2 when rs1 is negative.
        _ => dynasm!(ops
            ; .arch x64
            ; mov rsi, rax
            ; mul rcx
            ; sar rsi, 63
            ; and rsi, rcx
            ; sub rdx, rsi
            ; mov rax, rdx
        ),
    }
}

/// Set the host flags as `cmp x[rs1], x[rs2]` would, for a conditional branch.
pub(super) fn emit_compare(ops: &mut Asm, c: &Cache, rs1: u8, rs2: u8) {
    match (c.operand(rs1), c.operand(rs2)) {
        // Against zero, `test` sets the flags `cmp r, 0` would (CF and OF clear).
        (Operand::Reg(h), Operand::Zero) => dynasm!(ops ; .arch x64 ; test Rq(h), Rq(h)),
        (Operand::Reg(h), Operand::Reg(k)) => dynasm!(ops ; .arch x64 ; cmp Rq(h), Rq(k)),
        (Operand::Reg(h), Operand::Mem(o)) => dynasm!(ops ; .arch x64 ; cmp Rq(h), [BYTE rbx + o]),
        (Operand::Mem(o), Operand::Zero) => dynasm!(ops ; .arch x64 ; cmp QWORD [BYTE rbx + o], 0),
        (Operand::Mem(o), Operand::Reg(k)) => dynasm!(ops ; .arch x64 ; cmp [BYTE rbx + o], Rq(k)),
        (a, b) => {
            mov64(ops, RAX, a);
            match b {
                Operand::Zero => dynasm!(ops ; .arch x64 ; test rax, rax),
                Operand::Reg(k) => dynasm!(ops ; .arch x64 ; cmp rax, Rq(k)),
                Operand::Mem(o) => dynasm!(ops ; .arch x64 ; cmp rax, [BYTE rbx + o]),
            }
        }
    }
}
