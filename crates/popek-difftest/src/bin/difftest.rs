//! Long differential runs against qemu-riscv64.
//!
//! difftest --seeds N --start S --jobs J [--flavour all|int|fp|mixed|fault] [--max-reports K]
//!          [--engine interp|jit]   (popek's engine; jit-vs-interp compares the two, no QEMU)
//! difftest --seed S [--flavour F] [--emit FILE.elf]   (one seed: listing, result, optional ELF)

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use popek_difftest::{
    check, check_jit, check_jit_vs_interp, check_qemu_only, check_verify, elf, flavour_for, gen,
    run, run_many_with, Flavour,
};

fn usage() -> ExitCode {
    eprintln!(
        "usage: difftest [--qemu-only] [--seeds N] [--start S] [--jobs J] [--flavour all|int|fp|mixed|fault] [--max-reports K] [--engine interp|jit|jit-vs-interp|verify]\n       difftest --seed S [--engine interp|jit|verify] [--flavour F] [--emit FILE.elf]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut seeds, mut start, mut jobs, mut sel, mut one, mut emit, mut max_reports) =
        (1000u64, 0u64, 2usize, None, None, None, 20u64);
    let mut qemu_only = false;
    let mut engine = "interp".to_string();
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--qemu-only" {
            qemu_only = true;
            i += 1;
            continue;
        }
        let val = args.get(i + 1).cloned();
        let num = || val.as_deref().and_then(|v| v.parse::<u64>().ok());
        match args[i].as_str() {
            "--seeds" => {
                seeds = match num() {
                    Some(n) => n,
                    None => return usage(),
                }
            }
            "--start" => {
                start = match num() {
                    Some(n) => n,
                    None => return usage(),
                }
            }
            "--jobs" => {
                jobs = match num() {
                    Some(n) => n as usize,
                    None => return usage(),
                }
            }
            "--max-reports" => {
                max_reports = match num() {
                    Some(n) => n,
                    None => return usage(),
                }
            }
            "--seed" => {
                one = match num() {
                    Some(n) => Some(n),
                    None => return usage(),
                }
            }
            "--emit" => emit = val.clone(),
            "--engine" => match val.as_deref() {
                Some(e @ ("interp" | "jit" | "jit-vs-interp" | "verify")) => engine = e.to_string(),
                _ => return usage(),
            },
            "--flavour" => {
                sel = match val.as_deref() {
                    Some("all") => None,
                    Some(f) => match Flavour::parse(f) {
                        Some(f) => Some(f),
                        None => return usage(),
                    },
                    None => return usage(),
                }
            }
            _ => return usage(),
        }
        i += 2;
    }
    if !run::qemu_available() {
        eprintln!("{} not found: apt-get install qemu-user", run::QEMU);
        return ExitCode::FAILURE;
    }
    if let Some(seed) = one {
        let fl = flavour_for(seed, sel);
        let prog = gen::generate(seed, fl);
        let img = elf::build(&prog);
        println!(
            "seed {seed} flavour {}\n{}",
            fl.name(),
            elf::listing_text(&img)
        );
        if let Some(path) = emit {
            run::write_elf(&img, std::path::Path::new(&path)).expect("writing ELF");
            println!("wrote {path}");
        }
        let q = run::run_qemu(&img);
        let kind = match engine.as_str() {
            "interp" => popek_jit::EngineKind::Interp,
            "verify" => popek_jit::EngineKind::Verify,
            _ => popek_jit::EngineKind::Jit,
        };
        let p = run::run_popek_with(&img, kind);
        println!("qemu: {:?}, popek: {:?}", q.status, p.status);
        if q.stdout.len() == popek_difftest::layout::OUT_LEN as usize {
            let w = |i: usize| {
                u64::from_le_bytes(
                    q.stdout[q.stdout.len() - 32 + 8 * i..][..8]
                        .try_into()
                        .unwrap(),
                )
            };
            println!(
                "qemu: fcsr {:#x} signal {} si_addr {:#x} pc {:#x}",
                w(0),
                w(1),
                w(2),
                w(3)
            );
        }
        return match run::compare(&q, &p) {
            None => {
                println!("1 passed, 0 failed");
                ExitCode::SUCCESS
            }
            Some(d) => {
                println!("{d}0 passed, 1 failed");
                ExitCode::FAILURE
            }
        };
    }
    let t0 = Instant::now();
    let reported = AtomicU64::new(0);
    let f = match (qemu_only, engine.as_str()) {
        (true, _) => check_qemu_only,
        (_, "jit") => check_jit,
        (_, "jit-vs-interp") => check_jit_vs_interp,
        (_, "verify") => check_verify,
        _ => check,
    };
    let summary = run_many_with(
        start,
        seeds,
        sel,
        jobs,
        &|done, failed, div| {
            if let Some(d) = div {
                if reported.fetch_add(1, Ordering::Relaxed) < max_reports {
                    println!("{}", d.report);
                } else {
                    println!("DIVERGENCE seed {} flavour {}", d.seed, d.flavour.name());
                }
            }
            if done % 1000 == 0 || done == seeds {
                eprintln!(
                    "[{:.0}s] {done}/{seeds} done, {failed} failed",
                    t0.elapsed().as_secs_f64()
                );
            }
        },
        f,
    );
    for f in Flavour::ALL {
        let e = summary.executed[f as usize];
        if e > 0 {
            println!(
                "  {}: {} passed of {}",
                f.name(),
                summary.passed[f as usize],
                e
            );
        }
    }
    let passed: u64 = summary.passed.iter().sum();
    println!("{passed} passed, {} failed", summary.failed.len());
    if summary.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
