//! `popek run` refuses bad input with one clear line and a non-zero status, never a panic.

mod common;

use common::*;
use std::time::Duration;

/// Run popek with `args`; return (status, stderr) after checking the error is one clean line.
fn fails(args: &[&str]) -> (i32, String) {
    let out = run_with_timeout(popek().args(args), Duration::from_secs(30));
    let (stdout, stderr) = text(&out);
    let code = out.status.code().expect("popek was killed by a signal");
    assert_ne!(code, 0, "popek {args:?} should fail; stdout: {stdout}");
    assert!(!stderr.contains("panicked"), "popek panicked: {stderr}");
    let line = stderr.trim();
    assert_eq!(
        line.lines().count(),
        1,
        "expected one error line, got: {stderr}"
    );
    assert!(
        line.matches("(os error").count() <= 1,
        "the host's error said twice: {line}"
    );
    (code, line.to_string())
}

#[test]
fn missing_file() {
    let (_, e) = fails(&["run", "--bios", "/nonexistent/prog.elf"]);
    assert!(
        e.contains("cannot read /nonexistent/prog.elf") && e.contains("No such file"),
        "{e}"
    );
}

#[test]
fn not_an_elf() {
    let p = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("text.elf");
    std::fs::write(&p, "hello, I am text\n").unwrap();
    let (_, e) = fails(&["run", "--bios", p.to_str().unwrap()]);
    assert!(e.contains("is not an ELF file"), "{e}");
}

#[test]
fn empty_file() {
    let p = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("empty.bin");
    std::fs::write(&p, "").unwrap();
    let (_, e) = fails(&["run", "--bios", p.to_str().unwrap()]);
    assert!(e.contains("is empty"), "{e}");
}

#[test]
fn wrong_architecture() {
    // The host's own binaries are x86-64 ELFs.
    let (_, e) = fails(&["run", "--bios", "/bin/true"]);
    assert!(e.contains("not RISC-V") && e.contains("X86_64"), "{e}");
}

#[test]
fn thirty_two_bit_elf() {
    let hello = baremetal_dir().join("hello.elf");
    let mut data = std::fs::read(hello).unwrap();
    data[4] = 1; // ELFCLASS32
    let p = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("class32.elf");
    std::fs::write(&p, data).unwrap();
    let (_, e) = fails(&["run", "--bios", p.to_str().unwrap()]);
    assert!(e.contains("32-bit ELF"), "{e}");
}

#[test]
fn not_linked_for_ram() {
    let elf = build_asm("lowlink", ".globl _start\n_start: j _start\n", 0x2000_0000);
    let (_, e) = fails(&["run", "--bios", elf.to_str().unwrap()]);
    assert!(
        e.contains("does not fit in guest RAM") && e.contains("0x20000000"),
        "{e}"
    );
}

#[test]
fn image_larger_than_ram() {
    let elf = build_asm(
        "bigbss",
        ".globl _start\n_start: j _start\n.bss\n.space 0x3000000\n",
        0x8000_0000,
    );
    let (_, e) = fails(&["run", "--memory", "16M", "--bios", elf.to_str().unwrap()]);
    assert!(
        e.contains("does not fit in guest RAM") && e.contains("raise --memory"),
        "{e}"
    );
}

#[test]
fn runs_off_the_end_of_ram() {
    // Jump past the end of 128 MiB of RAM with no trap handler installed.
    let elf = build_asm(
        "offend",
        ".globl _start\n_start: li t0, 0x88000000\n jr t0\n",
        0x8000_0000,
    );
    let (_, e) = fails(&["run", "--bios", elf.to_str().unwrap()]);
    assert!(
        e.contains("the guest is stuck") && e.contains("instruction access fault"),
        "{e}"
    );
}

#[test]
fn bad_memory_sizes() {
    let hello = baremetal_dir().join("hello.elf");
    let h = hello.to_str().unwrap();
    let (_, e) = fails(&["run", "--memory", "12Q", "--bios", h]);
    assert!(e.contains("bad size '12Q'"), "{e}");
    let (_, e) = fails(&["run", "--memory", "512K", "--bios", h]);
    assert_eq!(
        e,
        "popek: error: --memory 512 KiB is too small: popek needs at least 1 MiB of guest RAM"
    );
    let (_, e) = fails(&["run", "--memory", "1B", "--bios", h]);
    assert!(e.contains("--memory 1 byte is too small"), "{e}");
    // A bare number is MiB, as with QEMU's -m: 1 is enough RAM to try, but not for this image.
    let (_, e) = fails(&["run", "--memory", "1", "--bios", h]);
    assert!(!e.contains("too small") && !e.contains("0 MiB"), "{e}");
    let (_, e) = fails(&["run", "--memory", "64T", "--bios", h]);
    assert!(e.contains("more than this host's"), "{e}");
}

#[test]
fn version_and_help() {
    let out = run_with_timeout(popek().arg("--version"), Duration::from_secs(10));
    assert!(out.status.success());
    assert!(text(&out).0.starts_with("popek "), "{:?}", text(&out));
    let out = run_with_timeout(popek().args(["run", "--help"]), Duration::from_secs(10));
    assert!(out.status.success());
    assert!(text(&out).0.contains("--bios"));
}

/// `popek exec`'s arguments are parsed by a parser of their own (it starts often); what that
/// parser does not take still gets the whole command line's answers: help with the
/// subcommand's description, the version, errors in one line.
#[test]
fn exec_help_version_and_errors() {
    let out = run_with_timeout(popek().args(["exec", "--help"]), Duration::from_secs(10));
    assert!(out.status.success());
    let help = text(&out).0;
    assert!(
        help.starts_with("Run one riscv64 Linux program") && help.contains("exec [OPTIONS] <PROG>"),
        "{help}"
    );
    let out = run_with_timeout(popek().args(["exec", "--version"]), Duration::from_secs(10));
    assert!(out.status.success());
    assert!(text(&out).0.starts_with("popek-exec "), "{:?}", text(&out));
    let (code, e) = fails(&["exec"]);
    assert_eq!(code, 2);
    assert_eq!(
        e,
        "popek: the following required arguments were not provided: <PROG> (see popek --help)"
    );
    let (code, e) = fails(&["exec", "--memory", "12Q", "/bin/true"]);
    assert_eq!(code, 2);
    assert!(
        e.contains("invalid value '12Q' for '--memory <SIZE>'"),
        "{e}"
    );
}

#[test]
fn bad_jit_cache_sizes() {
    let hello = baremetal_dir().join("hello.elf");
    let h = hello.to_str().unwrap();
    for size in ["1K", "2G", "lots"] {
        let (_, e) = fails(&["run", "--jit-cache", size, "--bios", h]);
        assert!(
            e.contains("--jit-cache")
                && (e.contains("from 64K to 1G") || e.contains(&format!("bad size '{size}'"))),
            "{size}: {e}"
        );
    }
    for n in ["0", "65536", "often"] {
        let (_, e) = fails(&["run", "--jit-hot", n, "--bios", h]);
        assert!(e.contains("--jit-hot"), "{n}: {e}");
    }
}
