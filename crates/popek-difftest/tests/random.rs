//! Random differential test against qemu-riscv64: zero divergences allowed.
//!
//! The flavours run one after another (QEMU runs 2 at a time) so the machine is not flooded.

use std::sync::Mutex;

use popek_difftest::{run, run_many, Flavour};

static SERIAL: Mutex<()> = Mutex::new(());

const JOBS: usize = 2;

fn seeds_from_env(default: u64) -> u64 {
    std::env::var("POPEK_DIFFTEST_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn run_flavour(flavour: Flavour, start: u64, count: u64) {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        run::qemu_available(),
        "{} is required for the differential tests: apt-get install qemu-user",
        run::QEMU
    );
    let summary = run_many(start, count, Some(flavour), JOBS, &|_, _, _| {});
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
