//! Random differential test against qemu-riscv64: zero divergences allowed.
//!
//! The flavours run one after another (QEMU runs 2 at a time) so the machine is not flooded.

use std::sync::Mutex;

use popek_difftest::{
    check_jit, check_jit_vs_interp, check_verify, run, run_many, run_many_with, Divergence, Flavour,
};

static SERIAL: Mutex<()> = Mutex::new(());

const JOBS: usize = 2;

/// A per-seed check (see `popek_difftest::check`).
type Check = fn(u64, Flavour) -> Result<(), Divergence>;

fn seeds_from_env(default: u64) -> u64 {
    std::env::var("POPEK_DIFFTEST_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn run_flavour(flavour: Flavour, start: u64, count: u64) {
    run_flavour_with(flavour, start, count, None, true);
}

/// `check`: another per-seed check than QEMU against the interpreter (e.g. the JIT).
fn run_flavour_with(
    flavour: Flavour,
    start: u64,
    count: u64,
    check: Option<Check>,
    needs_qemu: bool,
) {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        !needs_qemu || run::qemu_available(),
        "{} is required for the differential tests: apt-get install qemu-user",
        run::QEMU
    );
    let summary = match check {
        Some(c) => run_many_with(start, count, Some(flavour), JOBS, &|_, _, _| {}, c),
        None => run_many(start, count, Some(flavour), JOBS, &|_, _, _| {}),
    };
    let executed = summary.executed[flavour as usize];
    let passed = summary.passed[flavour as usize];
    let mut msg = String::new();
    for d in summary.failed.iter().take(5) {
        msg.push_str(&d.report);
        msg.push('\n');
    }
    if summary.failed.len() > 5 {
        let rest: Vec<String> = summary.failed[5..]
            .iter()
            .map(|d| d.seed.to_string())
            .collect();
        msg.push_str(&format!("other failing seeds: {}\n", rest.join(" ")));
    }
    assert_eq!(
        executed,
        count,
        "executed {executed} {} sequences, asked for {count}",
        flavour.name()
    );
    assert!(
        summary.failed.is_empty(),
        "{} of {count} {} sequences diverged ({passed} passed):\n{msg}",
        summary.failed.len(),
        flavour.name()
    );
    eprintln!(
        "{}: {passed} of {count} sequences identical",
        flavour.name()
    );
}

#[test]
fn random_int() {
    run_flavour(Flavour::Int, 0, seeds_from_env(3000));
}

#[test]
fn random_fp() {
    run_flavour(Flavour::Fp, 0, seeds_from_env(2000));
}

#[test]
fn random_mixed() {
    run_flavour(Flavour::Mixed, 0, seeds_from_env(1500));
}

#[test]
fn random_fault() {
    run_flavour(Flavour::Fault, 0, seeds_from_env(1500));
}

#[test]
fn random_fpmove() {
    run_flavour(Flavour::FpMove, 0, seeds_from_env(1000));
}

// The JIT engine against QEMU (fewer seeds: the interpreter runs above cover the generator).
#[test]
fn random_int_jit() {
    run_flavour_with(Flavour::Int, 0, seeds_from_env(1500), Some(check_jit), true);
}

#[test]
fn random_mixed_jit() {
    run_flavour_with(
        Flavour::Mixed,
        0,
        seeds_from_env(1000),
        Some(check_jit),
        true,
    );
}

#[test]
fn random_fault_jit() {
    run_flavour_with(
        Flavour::Fault,
        0,
        seeds_from_env(1000),
        Some(check_jit),
        true,
    );
}

// The JIT against the interpreter, without QEMU: every flavour, other seeds than above.
#[test]
fn jit_matches_interpreter() {
    for f in Flavour::ALL {
        run_flavour_with(
            f,
            100_000,
            seeds_from_env(500),
            Some(check_jit_vs_interp),
            false,
        );
    }
}

// `--engine verify` (every block run on the JIT and on the interpreter as the program runs): no
// block differs, and the program ends as on the interpreter.
#[test]
fn verify_engine_finds_no_difference() {
    for f in Flavour::ALL {
        run_flavour_with(f, 200_000, seeds_from_env(500), Some(check_verify), false);
    }
}
