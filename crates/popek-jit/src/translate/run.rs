//! Runs of consecutive integer loads (or stores) through one base register, checked against
//! the soft TLB once for the whole run.
//!
//! Function prologues and epilogues save and restore registers with a string of `sd`/`ld`
//! off `sp`; checked one by one, each costs a dozen host instructions of TLB lookup. A run
//! is checked once: if the bytes from its lowest to its highest offset lie in one page whose
//! TLB entry is there, or in two pages whose entries are there with the same addend, every
//! access of the run is then a single host instruction (base register + addend + offset).
//! Otherwise a cold path performs the first access through its helper (which fills the TLB
//! when it can) and checks both pages again; if the check still fails, it does the rest one
//! by one through the helpers too, each access with its own exact fault exit, so faults stay
//! precise.

// dynasm's dynamic registers (`Rq(n)`) expand to `n.into()`, which is a `u8` already.
#![allow(clippy::useless_conversion)]

use super::regs::{ld, Cache, RAX, RDI, RDX, RSI};
use super::{
    emit_address, emit_below_span, emit_load_call, emit_load_insn, emit_store_call,
    emit_store_insn, emit_tlb_lookup, in_register, size_index, st_rax, Asm, At, Env, Mem, Stubs,
};
use dynasmrt::{dynasm, DynamicLabel, DynasmApi, DynasmLabelApi};
use popek_cpu::decode::{decode, raw_in_page, Insn, Op};

/// One access of a run and where it is.
#[derive(Clone, Copy)]
pub(super) struct Access {
    i: Insn,
    at: At,
}

impl Access {
    /// The guest address of the instruction after this one.
    pub(super) fn next_pc(&self) -> u64 {
        self.at.pc.wrapping_add(self.i.byte_len() as u64)
    }
}

/// Whether `op` is an integer load (`lb` to `ld`, `lbu` to `lwu`).
pub(super) fn is_int_load(op: Op) -> bool {
    use Op::*;
    matches!(op, Lb | Lh | Lw | Ld | Lbu | Lhu | Lwu)
}

fn is_int_store(op: Op) -> bool {
    use Op::*;
    matches!(op, Sb | Sh | Sw | Sd)
}

/// The run of accesses starting with `first` (at `at`, offset `off` of the guest page at
/// `page`), at most `room` instructions long: the consecutive integer loads (or stores, as
/// `first` is) through `first`'s base register, up to and including a load that overwrites
/// that register. Empty unless `first` is an integer load or store through a register other
/// than x0; a run of one is no run.
///
/// # Safety
/// `page` must point at 4096 readable bytes and `off` < 4096.
pub(super) unsafe fn find(
    page: *const u8,
    off: usize,
    first: &Insn,
    at: At,
    room: usize,
) -> Vec<Access> {
    let load = is_int_load(first.op);
    if !(load || is_int_store(first.op)) || first.rs1 == 0 {
        return Vec::new();
    }
    let mut run = vec![Access { i: *first, at }];
    let (mut lo, mut hi) = span(first);
    let mut off = off + first.byte_len() as usize;
    while run.len() < room && off < 4096 && !(load && first.rd() == first.rs1) {
        // SAFETY: per this function's contract, and off < 4096.
        let Some(raw) = (unsafe { raw_in_page(page, off) }) else {
            break;
        };
        let i = decode(raw);
        let same_kind = if load {
            is_int_load(i.op)
        } else {
            is_int_store(i.op)
        };
        let (l, h) = span(&i);
        if !same_kind || i.rs1 != first.rs1 || h.max(hi) - l.min(lo) > 4096 {
            break;
        }
        (lo, hi) = (l.min(lo), h.max(hi));
        let prev = run.last().expect("the run has its first access");
        let at = At {
            raw,
            pc: prev.next_pc(),
            n: prev.at.n + 1,
        };
        run.push(Access { i, at });
        if load && i.rd() == i.rs1 {
            break;
        }
        off += i.byte_len() as usize;
    }
    if run.len() < 2 {
        run.clear();
    }
    run
}

/// The byte range the accesses of `run` cover, relative to their base register.
fn run_span(run: &[Access]) -> (i64, i64) {
    let lo = run.iter().map(|a| span(&a.i).0).min().expect("a run");
    let hi = run.iter().map(|a| span(&a.i).1).max().expect("a run");
    (lo, hi)
}

/// The byte range an access covers, relative to its base register.
pub(super) fn span(i: &Insn) -> (i64, i64) {
    let size = size_index(i.op).1 as i64;
    (i.imm as i64, i.imm as i64 + size)
}

/// Emit the run `run` (from [`find`]).
pub(super) fn emit(ops: &mut Asm, run: &[Access], env: &Env, stubs: &mut Stubs) {
    let write = is_int_store(run[0].i.op);
    if let Some(direct) = env.host_checked(write) {
        emit_direct(ops, run, direct, env, stubs);
    } else {
        emit_checked(ops, run, env, stubs);
    }
    if !write {
        for a in run {
            stubs.checked.written(a.i.rd());
        }
    }
}

/// Emit the run `run` with one TLB check for its span (see the module's comment).
fn emit_checked(ops: &mut Asm, run: &[Access], env: &Env, stubs: &mut Stubs) {
    let c = stubs.cache;
    let first = run[0].i;
    let write = is_int_store(first.op);
    let (lo, hi) = run_span(run);
    let (lo, hi) = (lo as i32, hi as i32);
    let base = in_register(ops, &c, first.rs1, RSI);
    let two_pages = ops.new_dynamic_label();
    let slow = ops.new_dynamic_label();
    let checked = ops.new_dynamic_label();
    let after_first = ops.new_dynamic_label();
    let rest = ops.new_dynamic_label();
    let done = ops.new_dynamic_label();
    // The span's first and last bytes; the addend goes to `rcx`, as `rax` takes loaded values.
    dynasm!(ops
        ; .arch x64
        ; lea rdi, [Rq(base) + lo]
        ; lea rax, [Rq(base) + hi - 1]
    );
    emit_tlb_lookup(ops, env, write, RDI, two_pages);
    dynasm!(ops ; .arch x64 ; =>checked ; mov rcx, rax);
    for (k, a) in run.iter().enumerate() {
        if k == 1 {
            dynasm!(ops ; .arch x64 ; =>after_first);
        }
        emit_fast(ops, stubs, &a.i, (base, None), None);
    }
    dynasm!(ops ; .arch x64 ; =>done);
    let exits = exits(ops, run, write, stubs);
    stubs
        .cold
        .push(Box::new(move |ops: &mut Asm, env: &Env, _: &mut Stubs| {
            // The span may cross into the next page (a stack pointer near a page's end puts
            // every prologue's run across it).
            dynasm!(ops ; .arch x64 ; =>two_pages);
            emit_span_check(ops, env, write, base, (lo, hi), slow);
            dynasm!(ops ; .arch x64 ; jmp =>checked ; =>slow);
            // The first access through its helper, which fills the TLB entry if it can (the
            // first store to a page the kernel is clearing misses, the other 4 KiB do not):
            // check again, and do the rest as checked. The run's base is still its own: only
            // its last load may overwrite it.
            let (a, fault, leave) = exits[0];
            emit_slow(ops, &c, env, &a.i, fault, leave);
            if base == RSI {
                ld(ops, &c, RSI, first.rs1);
            }
            emit_span_check(ops, env, write, base, (lo, hi), rest);
            dynasm!(ops
                ; .arch x64
                ; mov rcx, rax
                ; jmp =>after_first
                ; =>rest
            );
            for &(a, fault, leave) in &exits[1..] {
                emit_slow(ops, &c, env, &a.i, fault, leave);
            }
            dynasm!(ops ; .arch x64 ; jmp =>done);
        }));
}

/// Emit the run `run` as direct accesses (see [`super::Env::host_read_bits`]): the first
/// byte's address checked against the span (the run covers at most 4096 bytes, and the host
/// page past the span faults), then one host instruction per access, the addend folded into
/// its displacement where it fits ([`Env::folded`]). A host fault on access `k` (which
/// changed nothing) resumes at a cold path doing accesses `k..` through their helpers, each
/// with its own exact fault exit; the accesses before it are done.
fn emit_direct(
    ops: &mut Asm,
    run: &[Access],
    (addend, bits): (u64, u8),
    env: &Env,
    stubs: &mut Stubs,
) {
    let c = stubs.cache;
    let first = run[0].i;
    let write = is_int_store(first.op);
    let (lo, hi) = run_span(run);
    let base = in_register(ops, &c, first.rs1, RSI);
    let done = ops.new_dynamic_label();
    let slow: Vec<DynamicLabel> = run.iter().map(|_| ops.new_dynamic_label()).collect();
    // An earlier check through the base register may cover the run (see `Checked`).
    let access = (first.rs1, (lo, hi));
    emit_below_span(
        ops,
        &mut stubs.checked,
        access,
        (base, lo as i32),
        bits,
        slow[0],
    );
    let folded = env
        .folded(addend, lo)
        .and(env.folded(addend, hi))
        .map(|_| addend as i32);
    if folded.is_none() {
        dynasm!(ops ; .arch x64 ; mov rcx, QWORD addend as i64);
    }
    for (a, &label) in run.iter().zip(&slow) {
        emit_fast(ops, stubs, &a.i, (base, folded), Some(label));
    }
    dynasm!(ops ; .arch x64 ; =>done);
    let exits = exits(ops, run, write, stubs);
    stubs
        .cold
        .push(Box::new(move |ops: &mut Asm, env: &Env, _: &mut Stubs| {
            for (&(a, fault, leave), &label) in exits.iter().zip(&slow) {
                dynasm!(ops ; .arch x64 ; =>label);
                emit_slow(ops, &c, env, &a.i, fault, leave);
            }
            dynasm!(ops ; .arch x64 ; jmp =>done);
        }));
}

/// Each access of `run` with its exits: `fault` (the access faulted) and, for stores,
/// `leave` (it set a request), registered with the block's exits.
fn exits(
    ops: &mut Asm,
    run: &[Access],
    write: bool,
    stubs: &mut Stubs,
) -> Vec<(Access, DynamicLabel, DynamicLabel)> {
    run.iter()
        .map(|a| {
            let fault = ops.new_dynamic_label();
            stubs.fault.push((fault, a.at.pc, a.at.n));
            let leave = ops.new_dynamic_label();
            if write {
                stubs.leave.push((leave, a.next_pc(), a.at.n + 1));
            }
            (*a, fault, leave)
        })
        .collect()
}

/// With the run's span `base + lo .. base + hi`: jump to `miss` unless the TLB has entries for
/// the pages of its first and of its last byte with one addend (the same entry when the span
/// lies in one page; two pages mapped with one addend, as always in a process VM's flat memory,
/// are one range of host memory); leave the addend in `rax`. Clobbers `rcx`, `rdx` and `rdi`
/// (`base` is none of them: it is a cached register or `rsi`).
fn emit_span_check(
    ops: &mut Asm,
    env: &Env,
    write: bool,
    base: u8,
    (lo, hi): (i32, i32),
    miss: DynamicLabel,
) {
    dynasm!(ops
        ; .arch x64
        ; lea rdi, [Rq(base) + lo]
        ; mov rax, rdi
    );
    emit_tlb_lookup(ops, env, write, RDI, miss);
    dynasm!(ops
        ; .arch x64
        ; mov rdx, rax
        ; lea rdi, [Rq(base) + hi - 1]
        ; mov rax, rdi
    );
    emit_tlb_lookup(ops, env, write, RDI, miss);
    dynasm!(ops
        ; .arch x64
        ; cmp rax, rdx
        ; jne =>miss
    );
}

/// One access of a checked run through host register `base`: `rcx` holds the page's addend,
/// unless it is `folded` into the displacement. With `slow`, the access is a direct one (see
/// [`emit_direct`]) whose host fault resumes there.
fn emit_fast(
    ops: &mut Asm,
    stubs: &mut Stubs,
    i: &Insn,
    (base, folded): (u8, Option<i32>),
    slow: Option<DynamicLabel>,
) {
    // A copy: `stubs` takes the direct sites below.
    let c = &{ stubs.cache };
    let mem = match folded {
        Some(addend) => Mem::Disp(base, addend + i.imm),
        None => Mem::Rcx(base, i.imm),
    };
    if is_int_load(i.op) {
        if let Some(slow) = slow {
            stubs.direct.push((ops.offset().0, slow));
        }
        emit_load_insn(ops, i.op, RAX, mem);
        st_rax(ops, c, i.rd());
        return;
    }
    let v = in_register(ops, c, i.rs2, RDX);
    // The site is the store itself, after the value's load.
    if let Some(slow) = slow {
        stubs.direct.push((ops.offset().0, slow));
    }
    emit_store_insn(ops, i.op, v, mem);
}

/// One access of a run whose check failed, through its helper: a fault leaves through
/// `fault`, a store that set a request (code or MMIO written) through `leave`.
fn emit_slow(
    ops: &mut Asm,
    c: &Cache,
    env: &Env,
    i: &Insn,
    fault: DynamicLabel,
    leave: DynamicLabel,
) {
    emit_address(ops, c, i);
    if is_int_load(i.op) {
        emit_load_call(ops, c, env, i.op, fault);
        st_rax(ops, c, i.rd());
    } else {
        ld(ops, c, RDX, i.rs2);
        emit_store_call(ops, c, env, i.op, fault, leave);
    }
}
