//! `--engine verify`: every translated block runs on the JIT, then again on the interpreter from
//! the same state, and the two results (registers, the trap if any, every byte either wrote)
//! must be the same. The interpreter is the oracle: the hart goes on from its results.
//!
//! Blocks that touch MMIO cannot run twice (a device register read has effects) and are counted
//! as unverified. Memory written by another hart or a device between the two runs can make a
//! block read different values: verify a single-hart machine.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use popek_cpu::{Hart, Trap};

use crate::engine::{Ctx, EnterFn};
use crate::Divergence;

/// What verifying one block found.
pub(crate) enum Verdict {
    /// Both engines did the same.
    Same,
    /// The block touched MMIO: the JIT's run stands, unchecked.
    Unverifiable,
    /// They differ (the interpreter's results stand).
    Differs(Divergence),
}

/// Run the block at `block` (entered through `enter`, for the hart's current `pc`) on the
/// JIT, undo it, and run the same instructions on the interpreter; the hart is left as the
/// interpreter (or, for an unverifiable block, the JIT) left it. Returns that run's outcome
/// and the verdict.
///
/// # Safety
/// As for entering `block` in `Jit::run_code`: a live translation of the page at `pc` for this
/// state layout, `ctx` set up for this run with its bus pointer valid.
pub(crate) unsafe fn run_both(
    hart: &mut Hart,
    enter: EnterFn,
    block: *const u8,
    ctx: &mut Ctx<'_>,
) -> (Result<(), Trap>, Verdict) {
    hart.log_stores(true);
    // Stores interpreted before this block are not this block's.
    hart.take_store_log();
    let before = hart.checkpoint();
    // One block only: chained jumps and the jump cache are taken only while instructions are left.
    ctx.left = 1;
    let state = hart.state_ptr();
    ctx.hart = hart;
    // SAFETY: per this function's contract.
    let jit = match unsafe { enter(state, ctx, block) } {
        0 => Ok(()),
        _ => Err(ctx.trap),
    };
    let jit_log = hart.take_store_log();
    if jit_log.touched_mmio() {
        return (jit, Verdict::Unverifiable);
    }
    let jit_state = hart.checkpoint();
    let jit_results = hart.store_results(&jit_log);
    hart.undo_stores(&jit_log);
    hart.rewind(&before);
    let retired = jit_state.instret() - before.instret();
    // SAFETY: the bus outlives the run (the contract); generated code no longer uses it.
    let bus = unsafe { &mut *ctx.bus };
    // A trap comes after the instructions that retired.
    let interp = hart.interpret_exactly(bus, retired + jit.is_err() as u64);
    let interp_log = hart.take_store_log();
    let interp_state = hart.checkpoint();
    let same_memory = jit_log.same_places(&interp_log)
        && hart.store_results(&interp_log) == jit_results
        && !interp_log.touched_mmio();
    if jit == interp && same_memory && jit_state.same_as(&interp_state) {
        return (interp, Verdict::Same);
    }

    let mut report = String::new();
    if jit != interp {
        let _ = write!(report, "; trap: jit {jit:?}, interpreter {interp:?}");
    }
    for (name, j, i) in jit_state.differences(&interp_state) {
        let _ = write!(report, "; {name}: jit {j:#x}, interpreter {i:#x}");
    }
    let jit_mem = jit_log.effects(&jit_results);
    let previous = interp_log.previous();
    let addrs: BTreeSet<u64> = jit_mem.keys().chain(previous.keys()).copied().collect();
    let now = hart.memory_bytes(addrs.iter().copied());
    for a in addrs {
        let j = jit_mem.get(&a).or(previous.get(&a)).copied().unwrap_or(0);
        let i = now.get(&a).copied().unwrap_or(0);
        if j != i {
            let _ = write!(
                report,
                "; memory {a:#x}: jit {j:#04x}, interpreter {i:#04x}"
            );
        }
    }
    if interp_log.touched_mmio() {
        // The JIT's run did not touch MMIO: the interpreter's did, which is a difference too.
        report.push_str("; the interpreter touched MMIO, the JIT did not");
    }
    if report.is_empty() {
        // The same effects through different stores (order or width): not a difference.
        return (interp, Verdict::Same);
    }
    let d = Divergence {
        report: format!(
            "after the block at pc {:#x} ({} instruction(s) retired by the JIT){report}",
            before.pc(),
            retired,
        ),
    };
    (interp, Verdict::Differs(d))
}
