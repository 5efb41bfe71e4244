//! Accesses of the FP CSRs (`fflags`, `frm`, `fcsr`) in translated code.
//!
//! glibc saves and restores `fflags` around every conversion that must not raise inexact
//! (`floor`, `ceil`, `lrint`...: `frflags`, then `fsflags`), and lua5.4 calls those for
//! every float-to-integer conversion: 3 million CSR accesses in bench/exec's lua workload,
//! each through the step helper (all guest registers stored and reloaded). Both CSRs are
//! plain fields of the state, so the access is a few moves; only with FP off (the access
//! traps) does the instruction go through the step helper.

use super::regs::{ld, RCX};
use super::{emit_fs_check, set_fs_dirty, st_rax, step_on_slow_path, Asm, At, Stubs, S};
use dynasmrt::{dynasm, DynasmApi, DynasmLabelApi};
use popek_cpu::csr::addr::{FCSR, FFLAGS, FRM};
use popek_cpu::decode::{Insn, Op};

/// `fflags`' bits.
const FFLAGS_MASK: i32 = 0x1f;
/// `frm`'s bits.
const FRM_MASK: i32 = 7;
/// Where `frm` sits in `fcsr`.
const FRM_SHIFT: i8 = 5;

/// Whether [`emit`] translates `i`: a CSR instruction on `fflags`, `frm` or `fcsr`.
pub(super) fn native(i: &Insn) -> bool {
    matches!(i.csr(), Some(FFLAGS | FRM | FCSR))
}

/// Emit FP CSR access `i` (at `at`), for which [`native`] said yes: `x[rd]` = the old value,
/// and, if the instruction writes, the CSR = the new one with `mstatus.FS` dirty, as the
/// interpreter's CSR access does.
pub(super) fn emit(ops: &mut Asm, i: &Insn, at: At, stubs: &mut Stubs) {
    use Op::*;
    let slow = ops.new_dynamic_label();
    let done = ops.new_dynamic_label();
    // With FP off the access is illegal: the step helper raises the trap.
    emit_fs_check(ops, stubs, slow);
    let num = i.csr().expect("`native` said a CSR instruction");
    match num {
        FFLAGS => dynasm!(ops ; .arch x64 ; mov rax, [rbx + S.fflags]),
        FRM => dynasm!(ops ; .arch x64 ; mov rax, [rbx + S.frm]),
        _ => dynasm!(ops
            ; .arch x64
            ; mov rax, [rbx + S.frm]
            ; shl rax, FRM_SHIFT
            ; or rax, [rbx + S.fflags]
        ),
    }
    // Set and clear with x0 (or a zero immediate) only read.
    let writes = matches!(i.op, Csrrw | Csrrwi) || i.rs1 != 0;
    if writes {
        // rcx = the operand (read before rd is written: rd may be rs1).
        if matches!(i.op, Csrrwi | Csrrsi | Csrrci) {
            dynasm!(ops ; .arch x64 ; mov ecx, i.rs1 as i32);
        } else {
            ld(ops, &stubs.cache, RCX, i.rs1);
        }
        match i.op {
            Csrrs | Csrrsi => dynasm!(ops ; .arch x64 ; or rcx, rax),
            Csrrc | Csrrci => dynasm!(ops ; .arch x64 ; not rcx ; and rcx, rax),
            _ => {}
        }
        match num {
            FFLAGS => dynasm!(ops
                ; .arch x64
                ; and ecx, FFLAGS_MASK
                ; mov [rbx + S.fflags], rcx
            ),
            FRM => dynasm!(ops
                ; .arch x64
                ; and ecx, FRM_MASK
                ; mov [rbx + S.frm], rcx
            ),
            _ => dynasm!(ops
                ; .arch x64
                ; mov edx, ecx
                ; and edx, FFLAGS_MASK
                ; mov [rbx + S.fflags], rdx
                ; shr ecx, FRM_SHIFT
                ; and ecx, FRM_MASK
                ; mov [rbx + S.frm], rcx
            ),
        }
        set_fs_dirty(ops, stubs);
    }
    st_rax(ops, &stubs.cache, i.rd());
    dynasm!(ops ; .arch x64 ; =>done);
    step_on_slow_path(stubs, *i, at, slow, done);
}
