//! `popek exec --stats`: the guest process's instructions and JIT counts, printed on stderr when
//! its image ends (exit, a fatal signal, an unsupported syscall, or an execve that replaces it),
//! as `popek run --stats` prints a machine's.
//!
//! Each guest thread publishes its counts after every slice it runs (a system call or a budget
//! ends one), so the report made by whichever thread ends the process sums every thread's
//! counts as of its last system call. A forked child starts counting afresh: its report is its
//! own work since the fork, not its parent's.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use popek_jit::JitStats;

/// A thread's (or a set of threads') counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Guest instructions retired.
    pub instructions: u64,
    /// What the thread's JIT did (`None` on the interpreter).
    pub jit: Option<JitStats>,
}

impl Counts {
    /// Counts of a hart that retired `instructions`, with a JIT that did `jit`.
    pub fn of(instructions: u64, jit: Option<JitStats>) -> Counts {
        Counts { instructions, jit }
    }

    /// What was done since `earlier` (counts of the same thread).
    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            instructions: self.instructions.saturating_sub(earlier.instructions),
            jit: match (self.jit, earlier.jit) {
                (Some(now), Some(then)) => Some(now.since(&then)),
                (now, _) => now,
            },
        }
    }

    fn add(&mut self, other: &Counts) {
        self.instructions += other.instructions;
        match (&mut self.jit, other.jit) {
            (Some(sum), Some(j)) => sum.add(&j),
            (sum @ None, Some(j)) => *sum = Some(j),
            (_, None) => {}
        }
    }
}

/// The process's counts.
pub struct Book {
    /// When this process image started (or this forked child was forked).
    started: Instant,
    /// The first process of the guest (started by the user, not forked or re-executed):
    /// reports as `popek run` does; others name their pid.
    first: bool,
    /// Live threads' latest counts, by host tid.
    live: HashMap<i32, Counts>,
    /// Threads that exited.
    finished: Counts,
}

/// Set by [`enable`]: `--stats` was given.
static BOOK: OnceLock<Mutex<Book>> = OnceLock::new();

/// The book, if `--stats` was given; a panic elsewhere while it was held does not stop a report.
fn book() -> Option<MutexGuard<'static, Book>> {
    BOOK.get()
        .map(|b| b.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Start counting (once, at start-up); `first`: this is the guest's first process.
pub fn enable(first: bool) {
    let _ = BOOK.set(Mutex::new(Book {
        started: Instant::now(),
        first,
        live: HashMap::new(),
        finished: Counts::default(),
    }));
}

/// Whether `--stats` was given.
pub fn enabled() -> bool {
    BOOK.get().is_some()
}

/// Thread `tid`'s counts so far (replacing what it published before).
pub fn publish(tid: i32, counts: Counts) {
    if let Some(mut b) = book() {
        b.live.insert(tid, counts);
    }
}

/// Thread `tid` exited: its last published counts stay in the total.
pub fn thread_exited(tid: i32) {
    if let Some(mut b) = book() {
        if let Some(c) = b.live.remove(&tid) {
            b.finished.add(&c);
        }
    }
}

/// Held across a host `fork`, so that the child's copy of the book is not locked by a thread
/// the child does not have.
pub fn hold_for_fork() -> Option<MutexGuard<'static, Book>> {
    book()
}

/// In the child of a fork, with `held` from [`hold_for_fork`]: forget the parent's threads and
/// start the clock again; thread `tid` (the only one) publishes its counts since the fork.
pub fn forked_child(held: Option<MutexGuard<'static, Book>>, tid: i32) {
    if let Some(mut b) = held {
        b.started = Instant::now();
        b.first = false;
        b.live.clear();
        b.live.insert(tid, Counts::default());
        b.finished = Counts::default();
    }
}

/// Print the report on stderr (nothing without `--stats`).
pub fn report() {
    let Some(b) = book() else {
        return;
    };
    let mut total = b.finished;
    for c in b.live.values() {
        total.add(c);
    }
    let secs = b.started.elapsed().as_secs_f64();
    let who = if b.first {
        "popek: ".to_string()
    } else {
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        format!("popek: pid {pid}: ")
    };
    eprintln!(
        "{who}executed {} instructions in {secs:.3} s ({:.1} MIPS)",
        total.instructions,
        total.instructions as f64 / secs.max(1e-9) / 1e6
    );
    if let Some(j) = total.jit {
        eprintln!("{who}JIT {j}");
        if let Some(v) = j.verify_summary() {
            eprintln!("{who}verify: {v}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jit(blocks: u64, entries: u64) -> JitStats {
        JitStats {
            blocks,
            entries,
            ..JitStats::default()
        }
    }

    #[test]
    fn counts_since_and_sums() {
        let then = Counts::of(100, Some(jit(2, 5)));
        let now = Counts::of(350, Some(jit(3, 9)));
        assert_eq!(now.since(&then), Counts::of(250, Some(jit(1, 4))));
        let mut sum = Counts::default();
        sum.add(&Counts::of(7, None));
        sum.add(&now.since(&then));
        assert_eq!(sum, Counts::of(257, Some(jit(1, 4))));
    }
}
