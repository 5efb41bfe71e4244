//! Indexed loads: `slli t, x, s; add t, t, b; l* t, imm(t)` as one host load.
//!
//! RISC-V without Zba indexes an array in three instructions: scale the index, add the base,
//! load through the sum, the sum's register taking the loaded value (a jump table's dispatch,
//! a table lookup in a checksum loop, an array of pointers). x86-64 addresses
//! `[base + index * scale + disp]` in the load itself, so where the load overwrites the sum
//! (nothing else reads it) and the host checks the load (a process VM's direct access, with
//! its memory's base folded into the displacement, see [`super::Env::folded`]), the three are
//! one check and one load: the shift and the add leave the load's dependency chain.
//!
//! The sum exists only on the slow path (a failed span check or a host fault, neither of which
//! changed a register): it computes the sum into its register, as the shift and the add would
//! have, then does the load through its helper, so a fault finds the state exactly as after
//! those two.

// dynasm's dynamic registers (`Rq(n)`) expand to `n.into()`, which is a `u8` already.
#![allow(clippy::useless_conversion)]

use super::regs::{RAX, RDI, RSI};
use super::run::is_int_load;
use super::{
    emit_lea, emit_load_call, emit_load_insn, in_register, st_rax, Asm, At, Env, Mem, Stubs,
};
use dynasmrt::{dynasm, DynasmApi, DynasmLabelApi};
use popek_cpu::decode::{decode, raw_in_page, Insn, Op};

/// A fusible triple (see the module's comment).
#[derive(Clone, Copy)]
pub(super) struct Indexed {
    /// The index register, shifted left by `shift` (0 to 3: a host scale of 1 to 8).
    x: u8,
    shift: u8,
    /// The base register added to it.
    b: u8,
    /// The sum's register, which the load overwrites.
    t: u8,
    /// The load.
    load: Insn,
    /// The load's offset plus the memory's base (see [`super::Env::folded`]).
    disp: i32,
    /// The span bits the address is checked against.
    bits: u8,
    /// Where the load is.
    at: At,
}

impl Indexed {
    /// Guest instructions the triple stands for.
    pub(super) const LEN: u32 = 3;

    /// The guest address of the instruction after the load.
    pub(super) fn next_pc(&self) -> u64 {
        self.at.pc.wrapping_add(self.load.byte_len() as u64)
    }
}

/// The triple starting with `first` (at `at`, offset `off` of the guest page at `page`), if it
/// is one this module fuses and the block has room for it (`room` instructions), with loads
/// the host checks and a base that folds into a displacement.
///
/// # Safety
/// `page` must point at 4096 readable bytes and `off` < 4096.
pub(super) unsafe fn find(
    page: *const u8,
    off: usize,
    first: &Insn,
    at: At,
    room: usize,
    env: &Env,
) -> Option<Indexed> {
    let (addend, bits) = env.host_checked(false)?;
    let t = first.rd();
    if first.op != Op::Slli || first.imm > 3 || t == 0 || room < Indexed::LEN as usize {
        return None;
    }
    let off2 = off + first.byte_len() as usize;
    // SAFETY: per this function's contract; `raw_in_page` stops at the page's end.
    let add = decode(unsafe { raw_in_page(page, off2) }?);
    let b = match (add.op, add.rs1 == t, add.rs2 == t) {
        (Op::Add, true, false) => add.rs2,
        (Op::Add, false, true) => add.rs1,
        _ => return None,
    };
    if add.rd() != t || b == 0 {
        return None;
    }
    let off3 = off2 + add.byte_len() as usize;
    // SAFETY: as above.
    let raw = unsafe { raw_in_page(page, off3) }?;
    let load = decode(raw);
    if !is_int_load(load.op) || load.rs1 != t || load.rd() != t {
        return None;
    }
    let disp = env.folded(addend, load.imm as i64)?;
    let pc = at.pc + (off3 - off) as u64;
    Some(Indexed {
        x: first.rs1,
        shift: first.imm as u8,
        b,
        t,
        load,
        disp,
        bits,
        at: At {
            raw,
            pc,
            n: at.n + 2,
        },
    })
}

/// Emit the triple `ix` (from [`find`]).
pub(super) fn emit(ops: &mut Asm, ix: &Indexed, stubs: &mut Stubs) {
    let c = stubs.cache;
    let imm = ix.load.imm;
    let x = in_register(ops, &c, ix.x, RSI);
    let b = in_register(ops, &c, ix.b, RDI);
    let slow = ops.new_dynamic_label();
    let done = ops.new_dynamic_label();
    let fault = ops.new_dynamic_label();
    // The span check on the address, as for any direct access (nothing known covers it: the
    // sum is new).
    match ix.shift {
        0 => dynasm!(ops ; .arch x64 ; lea rax, [Rq(b) + Rq(x) + imm]),
        1 => dynasm!(ops ; .arch x64 ; lea rax, [Rq(b) + Rq(x) * 2 + imm]),
        2 => dynasm!(ops ; .arch x64 ; lea rax, [Rq(b) + Rq(x) * 4 + imm]),
        _ => dynasm!(ops ; .arch x64 ; lea rax, [Rq(b) + Rq(x) * 8 + imm]),
    }
    dynasm!(ops
        ; .arch x64
        ; shr rax, ix.bits as i8
        ; jnz =>slow
    );
    let home = c.home(ix.t);
    let d = home.unwrap_or(RAX);
    // A host fault resumes at `slow` with `d`, `x` and `b` unchanged.
    stubs.direct.push((ops.offset().0, slow));
    emit_load_insn(ops, ix.load.op, d, Mem::Scaled(b, x, ix.shift, ix.disp));
    dynasm!(ops ; .arch x64 ; =>done);
    if home.is_none() {
        st_rax(ops, &c, ix.t);
    }
    let (ix, op) = (*ix, ix.load.op);
    stubs
        .cold
        .push(Box::new(move |ops: &mut Asm, env: &Env, _: &mut Stubs| {
            dynasm!(ops ; .arch x64 ; =>slow);
            // The shift and the add, as they would have left `t`; then the load's slow path
            // with its address in `rsi`.
            dynasm!(ops
                ; .arch x64
                ; mov rax, Rq(x)
                ; shl rax, ix.shift as i8
                ; add rax, Rq(b)
            );
            st_rax(ops, &c, ix.t);
            emit_lea(ops, RSI, RAX, imm);
            emit_load_call(ops, &c, env, op, fault);
            if d != RAX {
                dynasm!(ops ; .arch x64 ; mov Rq(d), rax);
            }
            dynasm!(ops ; .arch x64 ; jmp =>done);
        }));
    stubs.fault.push((fault, ix.at.pc, ix.at.n));
    stubs.checked.written(ix.t);
}
