//! Differential tests: every bare-metal program in tests/baremetal runs on `popek run --bios`
//! and on `qemu-system-riscv64 -M virt -bios`; their UART output and exit status must match each
//! other and the recorded expectation.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

fn qemu(elf: &Path) -> (String, i32) {
    let mut cmd = Command::new("qemu-system-riscv64");
    cmd.args([
        "-M", "virt", "-display", "none", "-serial", "stdio", "-monitor", "none", "-bios",
    ])
    .arg(elf);
    let out = run_with_timeout(&mut cmd, LIMIT);
    (
        text(&out).0,
        out.status.code().expect("qemu killed by a signal"),
    )
}

fn popek_run(elf: &Path, engine: &str) -> (String, i32, String) {
    let out = run_with_timeout(
        popek()
            .arg("run")
            .arg("--engine")
            .arg(engine)
            .arg("--bios")
            .arg(elf),
        LIMIT,
    );
    let (o, e) = text(&out);
    (o, out.status.code().expect("popek killed by a signal"), e)
}

fn check(name: &str) {
    let dir = baremetal_dir();
    let elf = dir.join(format!("{name}.elf"));
    let expected_dir = repo().join("tests/baremetal/expected");
    let want_out = std::fs::read_to_string(expected_dir.join(format!("{name}.out"))).unwrap();
    let want_status: i32 = std::fs::read_to_string(expected_dir.join(format!("{name}.status")))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (q_out, q_status) = qemu(&elf);
    assert_eq!(
        (q_out.as_str(), q_status),
        (want_out.as_str(), want_status),
        "QEMU no longer produces the recorded output for {name}: the test program is not deterministic"
    );
    // Both engines: the interpreter, and the JIT with the interpreter beside it.
    for engine in ["interp", "jit"] {
        let (p_out, p_status, p_err) = popek_run(&elf, engine);
        assert_eq!(
            p_out, q_out,
            "{name} ({engine}): popek's UART output differs from QEMU's (stderr: {p_err})"
        );
        assert_eq!(
            p_status, q_status,
            "{name} ({engine}): exit status differs from QEMU's (stderr: {p_err})"
        );
    }
}

macro_rules! baremetal_tests {
    ($($name:ident),*) => {
        $( #[test] fn $name() { check(stringify!($name)); } )*

        /// Every recorded expectation has a test above, so no program is silently left out.
        #[test]
        fn every_program_is_tested() {
            let listed = [$(stringify!($name)),*];
            for entry in std::fs::read_dir(repo().join("tests/baremetal/expected")).unwrap() {
                let name = entry.unwrap().file_name().into_string().unwrap();
                if let Some(stem) = name.strip_suffix(".out") {
                    assert!(listed.contains(&stem), "tests/baremetal/expected/{name} has no test in baremetal.rs");
                }
            }
        }
    };
}

baremetal_tests!(
    hello, traps, delegation, interrupts, paging, counters, atomics_fp, exit_code, fail_zero
);

#[test]
fn flat_binary_runs_like_the_elf() {
    let bin = baremetal_dir().join("hello.bin");
    let (out, status, err) = popek_run(&bin, "interp");
    let want = std::fs::read_to_string(repo().join("tests/baremetal/expected/hello.out")).unwrap();
    assert_eq!((out.as_str(), status), (want.as_str(), 0), "stderr: {err}");
}

#[test]
fn stats_line_reports_instructions() {
    let elf = baremetal_dir().join("hello.elf");
    let out = run_with_timeout(popek().args(["run", "--stats", "--bios"]).arg(&elf), LIMIT);
    let (_, err) = text(&out);
    let line = err
        .lines()
        .find(|l| l.starts_with("popek: executed "))
        .expect("no stats line");
    let n: u64 = line["popek: executed ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(n > 100, "{line}");
}

/// Console input the guest does not take waits in popek's stdin, not in popek's memory: a
/// program that never reads its UART lets popek take in little more than its 64 KiB of held
/// input (plus the pipe's own buffer), however much is written.
#[test]
fn unread_console_input_waits_in_the_pipe() {
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let spin = build_asm(
        "console_spin",
        ".globl _start\n_start:\n1: addi t0, t0, 1\n j 1b\n",
        0x8000_0000,
    );
    let mut child = popek()
        .args(["run", "--memory", "16M", "--bios"])
        .arg(&spin)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let written = Arc::new(AtomicUsize::new(0));
    let count = written.clone();
    let writer = std::thread::spawn(move || {
        let chunk = [b'x'; 4096];
        // 64 MiB at most; popek's exit ends it early with a broken pipe.
        for _ in 0..(64 << 8) {
            if stdin.write_all(&chunk).is_err() {
                break;
            }
            count.fetch_add(chunk.len(), Ordering::Relaxed);
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    let taken = written.load(Ordering::Relaxed);
    child.kill().unwrap();
    child.wait().unwrap();
    writer.join().unwrap();
    assert!(
        taken < 1 << 20,
        "popek took {taken} bytes of input the guest never read"
    );
}
