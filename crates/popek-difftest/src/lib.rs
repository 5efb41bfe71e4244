//! Random differential testing of popek's hart against `qemu-riscv64` (user mode).
//!
//! Each seed gives a random RV64GC instruction sequence ([`gen`]), wrapped in a prologue that loads
//! every register from an image and an epilogue (or, for the fault flavour, a signal handler) that
//! writes registers, fcsr and a scratch memory area to stdout ([`elf`]). The same static ELF is run
//! under QEMU and on popek with a tiny syscall shim ([`run`]); the outputs must be identical.

pub mod elf;
pub mod enc;
pub mod gen;
pub mod layout;
pub mod run;
pub mod space;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub use gen::Flavour;

/// A seed whose results differ.
#[derive(Clone, Debug)]
pub struct Divergence {
    /// The seed.
    pub seed: u64,
    /// The flavour it ran.
    pub flavour: Flavour,
    /// Full report: what differs and the listing.
    pub report: String,
}

/// Which flavour a seed runs when several are selected.
pub fn flavour_for(seed: u64, sel: Option<Flavour>) -> Flavour {
    sel.unwrap_or(Flavour::ALL[(seed % Flavour::ALL.len() as u64) as usize])
}

/// Run one seed; Err with a report if QEMU and popek disagree.
pub fn check(seed: u64, flavour: Flavour) -> Result<(), Divergence> {
    check_engine(seed, flavour, popek_jit::EngineKind::Interp)
}

/// [`check`] with popek's JIT engine.
pub fn check_jit(seed: u64, flavour: Flavour) -> Result<(), Divergence> {
    check_engine(seed, flavour, popek_jit::EngineKind::Jit)
}

/// Without QEMU: popek's JIT and interpreter must give identical results.
pub fn check_jit_vs_interp(seed: u64, flavour: Flavour) -> Result<(), Divergence> {
    check_against_interp(seed, flavour, popek_jit::EngineKind::Jit)
}

/// Without QEMU: under `--engine verify` (every block checked against the interpreter as it
/// runs) no block differs, and the end result is the interpreter's.
pub fn check_verify(seed: u64, flavour: Flavour) -> Result<(), Divergence> {
    check_against_interp(seed, flavour, popek_jit::EngineKind::Verify)
}

fn check_against_interp(
    seed: u64,
    flavour: Flavour,
    engine: popek_jit::EngineKind,
) -> Result<(), Divergence> {
    let prog = gen::generate(seed, flavour);
    let img = elf::build(&prog);
    let i = run::run_popek_with(&img, popek_jit::EngineKind::Interp);
    let j = run::run_popek_with(&img, engine);
    match run::compare(&i, &j) {
        None => Ok(()),
        Some(diff) => Err(Divergence {
            seed,
            flavour,
            report: format!(
                "{} DIFFERS FROM INTERPRETER seed {seed} flavour {} (left: interpreter, right: {})\n{diff}  sequence:\n{}",
                engine.name(),
                flavour.name(),
                engine.name(),
                elf::listing_text(&img)
            ),
        }),
    }
}

fn check_engine(
    seed: u64,
    flavour: Flavour,
    engine: popek_jit::EngineKind,
) -> Result<(), Divergence> {
    let prog = gen::generate(seed, flavour);
    let img = elf::build(&prog);
    let q = run::run_qemu(&img);
    let p = run::run_popek_with(&img, engine);
    match run::compare(&q, &p) {
        None => Ok(()),
        Some(diff) => {
            let report = format!(
                "DIVERGENCE seed {seed} flavour {} (rerun: cargo run --release -p popek-difftest --bin difftest -- --seed {seed} --flavour {})\n{diff}  sequence:\n{}",
                flavour.name(),
                flavour.name(),
                elf::listing_text(&img)
            );
            Err(Divergence {
                seed,
                flavour,
                report,
            })
        }
    }
}

/// Generator self-check without popek: the program must run cleanly under QEMU (exit 0 with a
/// full dump; a delivered signal for the fault flavour, none otherwise).
pub fn check_qemu_only(seed: u64, flavour: Flavour) -> Result<(), Divergence> {
    let prog = gen::generate(seed, flavour);
    let img = elf::build(&prog);
    let q = run::run_qemu(&img);
    let sig = if q.stdout.len() == layout::OUT_LEN as usize {
        u64::from_le_bytes(q.stdout[q.stdout.len() - 24..][..8].try_into().unwrap())
    } else {
        u64::MAX
    };
    let ok = q.status == run::Status::Exit(0)
        && sig != u64::MAX
        && ((sig != 0) == (flavour == Flavour::Fault));
    if ok {
        return Ok(());
    }
    let report = format!(
        "QEMU SELF-CHECK FAILED seed {seed} flavour {}: status {:?}, {} bytes, signal {sig}\n  sequence:\n{}",
        flavour.name(),
        q.status,
        q.stdout.len(),
        elf::listing_text(&img)
    );
    Err(Divergence {
        seed,
        flavour,
        report,
    })
}

/// Results of a batch.
#[derive(Debug, Default)]
pub struct Summary {
    /// Executed seeds per flavour (index = Flavour as usize).
    pub executed: [u64; 5],
    /// Seeds whose results agreed, per flavour.
    pub passed: [u64; 5],
    /// The seeds whose results differed.
    pub failed: Vec<Divergence>,
}

/// Run `count` seeds from `start` on `jobs` threads. `progress` is called after each seed with
/// (done, failed so far).
pub fn run_many(
    start: u64,
    count: u64,
    sel: Option<Flavour>,
    jobs: usize,
    progress: &(dyn Fn(u64, u64, Option<&Divergence>) + Sync),
) -> Summary {
    run_many_with(start, count, sel, jobs, progress, check)
}

/// [`run_many`] with another per-seed check (e.g. [`check_qemu_only`]).
pub fn run_many_with(
    start: u64,
    count: u64,
    sel: Option<Flavour>,
    jobs: usize,
    progress: &(dyn Fn(u64, u64, Option<&Divergence>) + Sync),
    check: fn(u64, Flavour) -> Result<(), Divergence>,
) -> Summary {
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let summary = Mutex::new(Summary::default());
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let seed = start + i;
                let fl = flavour_for(seed, sel);
                let r = check(seed, fl);
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                let mut sm = summary.lock().unwrap();
                sm.executed[fl as usize] += 1;
                match r {
                    Ok(()) => {
                        sm.passed[fl as usize] += 1;
                        let nf = sm.failed.len() as u64;
                        drop(sm);
                        progress(d, nf, None);
                    }
                    Err(div) => {
                        sm.failed.push(div.clone());
                        let nf = sm.failed.len() as u64;
                        drop(sm);
                        progress(d, nf, Some(&div));
                    }
                }
            });
        }
    });
    run::cleanup();
    let mut s = summary.into_inner().unwrap();
    s.failed.sort_by_key(|d| d.seed);
    s
}
