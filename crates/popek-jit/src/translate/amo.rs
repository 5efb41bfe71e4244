//! AMOs (`amoswap`, `amoadd`, `amoand`, `amoor`, `amoxor`, `amomin[u]`, `amomax[u]`, word and
//! doubleword) as `lock`-prefixed host instructions.
//!
//! The access goes through the write TLB like a store: an entry there means the page is RAM,
//! writable in the current context, not code, and already marked in the dirty log, so the
//! host instruction on the page is exactly the interpreter's AMO. Every locked x86 operation
//! is a full barrier, which covers `aq` and `rl`. A misaligned address, a TLB miss, MMIO, a
//! page of code or a fault goes through the step helper (the interpreter's AMO, which fills
//! the TLB for the next time). A Linux boot ran 600,000 AMOs (atomic counters, bit
//! operations, spinlocks) through the step helper before, each storing and reloading every
//! cached guest register. LR and SC still go through the step helper: their reservation lives
//! in the hart.

use super::regs::{ld, RDX};
use super::{emit_tlb_lookup, st, step_on_slow_path, Asm, At, Env, Stubs, RAX, RSI};
use dynasmrt::{dynasm, DynasmApi, DynasmLabelApi};
use popek_cpu::decode::{Insn, Op};

/// What an AMO does with the old value in memory (`rax`) and the register operand (`rdx`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Swap,
    Add,
    And,
    Or,
    Xor,
    Min,
    Max,
    MinU,
    MaxU,
}

/// The kind and width (4 or 8 bytes) of AMO `op`, or `None` for anything else.
fn amo(op: Op) -> Option<(Kind, u8)> {
    use Op::*;
    Some(match op {
        AmoswapW => (Kind::Swap, 4),
        AmoaddW => (Kind::Add, 4),
        AmoandW => (Kind::And, 4),
        AmoorW => (Kind::Or, 4),
        AmoxorW => (Kind::Xor, 4),
        AmominW => (Kind::Min, 4),
        AmomaxW => (Kind::Max, 4),
        AmominuW => (Kind::MinU, 4),
        AmomaxuW => (Kind::MaxU, 4),
        AmoswapD => (Kind::Swap, 8),
        AmoaddD => (Kind::Add, 8),
        AmoandD => (Kind::And, 8),
        AmoorD => (Kind::Or, 8),
        AmoxorD => (Kind::Xor, 8),
        AmominD => (Kind::Min, 8),
        AmomaxD => (Kind::Max, 8),
        AmominuD => (Kind::MinU, 8),
        AmomaxuD => (Kind::MaxU, 8),
        _ => return None,
    })
}

/// Whether [`emit`] translates `i`.
pub(super) fn native(i: &Insn) -> bool {
    amo(i.op).is_some()
}

/// Emit AMO `i` (at `at`), for which [`native`] said yes.
pub(super) fn emit(ops: &mut Asm, i: &Insn, at: At, env: &Env, stubs: &mut Stubs) {
    let (kind, size) = amo(i.op).expect("native() accepted it");
    let slow = ops.new_dynamic_label();
    let done = ops.new_dynamic_label();
    let c = stubs.cache;
    ld(ops, &c, RSI, i.rs1);
    // Naturally aligned (so within one page), else the step helper raises the trap.
    dynasm!(ops
        ; .arch x64
        ; test esi, (size - 1) as i32
        ; jnz =>slow
        ; mov rax, rsi
    );
    emit_tlb_lookup(ops, env, true, RSI, slow);
    ld(ops, &c, RDX, i.rs2);
    dynasm!(ops ; .arch x64 ; lea rsi, [rsi + rax]);
    let wide = size == 8;
    match (kind, wide) {
        (Kind::Swap, true) => dynasm!(ops ; .arch x64 ; xchg [rsi], rdx ; mov rax, rdx),
        (Kind::Swap, false) => dynasm!(ops ; .arch x64 ; xchg [rsi], edx ; movsxd rax, edx),
        (Kind::Add, true) => dynasm!(ops ; .arch x64 ; lock xadd [rsi], rdx ; mov rax, rdx),
        (Kind::Add, false) => dynasm!(ops ; .arch x64 ; lock xadd [rsi], edx ; movsxd rax, edx),
        // The old value is not wanted: one locked operation.
        (Kind::And | Kind::Or | Kind::Xor, _) if i.rd() == 0 => match (kind, wide) {
            (Kind::And, true) => dynasm!(ops ; .arch x64 ; lock and [rsi], rdx),
            (Kind::And, false) => dynasm!(ops ; .arch x64 ; lock and [rsi], edx),
            (Kind::Or, true) => dynasm!(ops ; .arch x64 ; lock or [rsi], rdx),
            (Kind::Or, false) => dynasm!(ops ; .arch x64 ; lock or [rsi], edx),
            (_, true) => dynasm!(ops ; .arch x64 ; lock xor [rsi], rdx),
            (_, false) => dynasm!(ops ; .arch x64 ; lock xor [rsi], edx),
        },
        _ => emit_cas_loop(ops, kind, wide),
    }
    st(ops, &c, i.rd(), RAX);
    dynasm!(ops ; .arch x64 ; =>done);
    step_on_slow_path(stubs, *i, at, slow, done);
}

/// With the host address in `rsi` and the operand in `rdx`: replace the value there by
/// `kind` of it and the operand with `lock cmpxchg` until no other hart wrote in between;
/// the old value in `rax` (sign-extended if a word).
fn emit_cas_loop(ops: &mut Asm, kind: Kind, wide: bool) {
    let again = ops.new_dynamic_label();
    // One loop for both widths: `$a`, `$c`, `$d` are rax, rcx, rdx or eax, ecx, edx.
    macro_rules! cas {
        ($a:ident, $c:ident, $d:ident) => {{
            dynasm!(ops
                ; .arch x64
                ; mov $a, [rsi]
                ; =>again
                ; mov $c, $a
            );
            match kind {
                Kind::And => dynasm!(ops ; .arch x64 ; and $c, $d),
                Kind::Or => dynasm!(ops ; .arch x64 ; or $c, $d),
                Kind::Xor => dynasm!(ops ; .arch x64 ; xor $c, $d),
                // The new value is the operand unless the old one is the one to keep.
                Kind::Min => dynasm!(ops ; .arch x64 ; cmp $a, $d ; cmovg $c, $d),
                Kind::Max => dynasm!(ops ; .arch x64 ; cmp $a, $d ; cmovl $c, $d),
                Kind::MinU => dynasm!(ops ; .arch x64 ; cmp $a, $d ; cmova $c, $d),
                _ => dynasm!(ops ; .arch x64 ; cmp $a, $d ; cmovb $c, $d),
            }
            dynasm!(ops
                ; .arch x64
                ; lock cmpxchg [rsi], $c
                ; jne =>again
            );
        }};
    }
    if wide {
        cas!(rax, rcx, rdx);
    } else {
        cas!(eax, ecx, edx);
        dynasm!(ops ; .arch x64 ; movsxd rax, eax);
    }
}
