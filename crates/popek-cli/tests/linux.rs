//! `popek run` boots Debian's riscv64 kernel (the default guest built by guests/build-default)
//! and behaves like a machine: commands run, their output streams out, exit statuses come back.

mod common;

use common::*;
use std::io::Write;
use std::time::Duration;

#[test]
fn boots_to_the_ready_line_and_runs_a_command() {
    let (out, err, status) = popek_run(&["--verbose", "--", "uname", "-m"]);
    assert!(
        out.contains("OpenSBI") && out.contains("popek-guest: ready"),
        "--verbose shows the firmware and the ready line; stdout: {out}\nstderr: {err}"
    );
    assert!(
        out.lines().any(|l| l.trim() == "riscv64"),
        "uname -m output missing: {out}"
    );
    assert_eq!(status, 0, "stderr: {err}");
}

/// Without --verbose, `-- CMD` shows exactly what CMD wrote: stdout on stdout, stderr on
/// stderr, byte for byte (no boot messages, no carriage returns), and its exit status.
#[test]
fn command_output_is_exactly_the_commands() {
    let (out, err, status) = popek_run(&["--", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!((out.as_str(), err.as_str(), status), ("out\n", "err\n", 3));
    let (out, err, status) = popek_run(&["--", "printf", "a\\tb\\r\\nno newline"]);
    assert_eq!(
        (out.as_str(), err.as_str(), status),
        ("a\tb\r\nno newline", "", 0)
    );
}

/// A guest that never gets ready: the end of its console and one error line, no hang. (On the
/// interpreter: the JIT brings the default guest to its ready line in under 2 s here.)
#[test]
fn guest_that_is_not_ready_shows_its_console_tail() {
    let (out, err, status) =
        popek_run(&["--engine", "interp", "--ready-timeout", "2", "--", "true"]);
    assert_eq!(status, 1, "stdout: {out}\nstderr: {err}");
    assert_eq!(out, "", "nothing on stdout");
    let lines: Vec<&str> = err.trim_end().lines().collect();
    let last = lines.last().copied().unwrap_or_default();
    assert!(
        last.starts_with("popek: error: ") && last.contains("not ready after 2 s"),
        "{err}"
    );
    // Two seconds in, the console has OpenSBI's banner, perhaps the kernel's first lines.
    assert!(
        lines.len() > 5 && ["OpenSBI", "HART", "Linux"].iter().any(|w| err.contains(w)),
        "the console's tail comes before the error: {err}"
    );
}

#[test]
fn command_exit_status_is_popeks() {
    let (out, err, status) = popek_run(&["--", "sh", "-c", "exit 7"]);
    assert_eq!(status, 7, "stdout: {out}\nstderr: {err}");
}

#[test]
fn streams_a_megabyte_of_output() {
    let (out, err, status) = popek_run(&[
        "--",
        "sh",
        "-c",
        "head -c 1048576 /dev/zero | tr '\\0' x; echo; echo done",
    ]);
    assert_eq!(status, 0, "stderr: {err}");
    assert_eq!(out, format!("{}\ndone\n", "x".repeat(1 << 20)));
}

#[test]
fn memory_size_reaches_the_guest() {
    let (out, err, status) = popek_run(&[
        "--memory",
        "256M",
        "--",
        "grep",
        "MemTotal",
        "/proc/meminfo",
    ]);
    assert_eq!(status, 0, "stderr: {err}");
    let kb: u64 = out
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {out}"));
    assert!(
        (180_000..=262_144).contains(&kb),
        "MemTotal {kb} kB for 256M"
    );
}

#[test]
fn two_cpus_are_visible() {
    let (out, err, status) = popek_run(&["--cpus", "2", "--", "nproc"]);
    assert_eq!(status, 0, "stderr: {err}");
    assert!(
        out.lines().any(|l| l.trim() == "2"),
        "nproc did not print 2: {out}"
    );
}

#[test]
fn poweroff_from_the_guest_exits_zero() {
    let (out, err, status) = popek_run(&["--", "poweroff", "-f"]);
    assert_eq!(status, 0, "stdout: {out}\nstderr: {err}");
}

/// Input piped in before the guest is up reaches its shell whole: the console holds it until
/// the guest is ready (Linux's 8250 driver drops what the UART received while it starts the
/// port; the first command used to arrive as `o hello`).
#[test]
fn input_piped_during_the_boot_reaches_the_shell_whole() {
    use std::io::Write;
    guest();
    let mut child = std::process::Command::new("timeout")
        .args(["-s", "KILL", "120"])
        .arg(env!("CARGO_BIN_EXE_popek"))
        .arg("run")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Quotes split the words, so only the commands' output has them joined.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"echo fir\"\"st\necho sec\"\"ond\npoweroff\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    assert!(
        lines.contains(&"first") && lines.contains(&"second"),
        "both commands should have run: {text}"
    );
}

#[test]
fn reboot_from_the_guest_boots_again() {
    // Interactively, a reboot reloads and restarts the machine, as QEMU's system reset does:
    // the second ready line is the second boot's.
    guest();
    let mut child = popek_on_a_terminal("run");
    kill_after(&child, Duration::from_secs(240));
    let mut input = child.stdin.take().unwrap();
    let mut output = child.stdout.take().unwrap();
    read_until(&mut output, "popek-guest: ready");
    input.write_all(b"reboot -f\r").unwrap();
    read_until(&mut output, "popek-guest: ready");
    input.write_all(b"echo second-$((1+1))\r").unwrap();
    read_until(&mut output, "second-2");
    input.write_all(b"poweroff -f\r").unwrap();
    drop(input);
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_reboot_or_a_kernel_panic_under_a_command_stops_with_the_console() {
    // CMD cannot finish once the guest reboots: popek stops with an error (its kernel reboots
    // on a panic, with panic=-1, instead of hanging).
    let (out, err, status) = popek_run(&[
        "--",
        "sh",
        "-c",
        "echo before; echo c > /proc/sysrq-trigger; echo after",
    ]);
    assert_eq!(status, 1, "stdout: {out}\nstderr: {err}");
    // The kernel's last words come on its console, which follows CMD's output once the guest
    // is ready.
    assert!(
        out.starts_with("before\n") && !out.contains("after"),
        "{out}"
    );
    assert!(
        out.contains("Kernel panic - not syncing: sysrq triggered crash"),
        "{out}"
    );
    assert!(
        err.trim_end().lines().last().unwrap_or_default().starts_with(
            "popek: error: the guest rebooted before the command finished (its kernel reboots when it panics)"
        ),
        "{err}"
    );
    let (_, err, status) = popek_run(&["--", "reboot", "-f"]);
    assert_eq!(status, 1, "{err}");
    assert!(
        err.contains("the guest rebooted before the command finished"),
        "{err}"
    );
}

fn fails(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = popek();
    cmd.arg("run").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run_with_timeout(&mut cmd, Duration::from_secs(30));
    let (o, e) = text(&out);
    assert_ne!(
        out.status.code(),
        Some(0),
        "popek {args:?} should fail: {o}"
    );
    assert!(!e.contains("panicked"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "one error line expected: {e}");
    e
}

#[test]
fn bad_kernels_and_options() {
    let g = guest();
    let fw = g.join("fw_dynamic.bin");
    let fw = fw.to_str().unwrap();
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));

    let e = fails(&["--bios", fw, "--kernel", "/nonexistent/Image"], &[]);
    assert!(e.contains("cannot read /nonexistent/Image"), "{e}");

    let mut bz = vec![0u8; 0x400];
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    let bz_path = tmp.join("bzImage");
    std::fs::write(&bz_path, bz).unwrap();
    let e = fails(&["--bios", fw, "--kernel", bz_path.to_str().unwrap()], &[]);
    assert!(e.contains("x86 kernel (bzImage)"), "{e}");

    let kernel = g.join("Image");
    let k = kernel.to_str().unwrap();
    let e = fails(
        &[
            "--bios",
            fw,
            "--kernel",
            k,
            "--initrd",
            "/nonexistent/initrd",
        ],
        &[],
    );
    assert!(e.contains("cannot read /nonexistent/initrd"), "{e}");

    let e = fails(&["--bios", fw, "--kernel", k, "--memory", "8M"], &[]);
    assert!(
        e.contains("does not fit") || e.contains("raise --memory"),
        "{e}"
    );

    let e = fails(&["--memory", "100T"], &[]);
    assert!(e.contains("more than this host's"), "{e}");

    let e = fails(&["--cpus", "0"], &[]);
    assert!(e.contains("--cpus 0"), "{e}");
    let e = fails(&["--cpus", "999"], &[]);
    assert!(e.contains("--cpus 999"), "{e}");

    let e = fails(&[], &[("POPEK_GUEST_DIR", "/nonexistent/guest")]);
    assert!(
        e.contains("default guest is not built in /nonexistent/guest")
            && e.contains("popek image build default"),
        "{e}"
    );
}

/// The interpreter (the fallback engine) boots the same guest, on one hart and on two, and runs
/// shell code in it (every other test here runs on the default engine, the JIT).
#[test]
fn interp_engine_boots_and_runs_commands() {
    let script =
        "i=0; s=0; while [ $i -lt 3000 ]; do i=$((i+1)); s=$((s+i*i%7)); done; echo $s; nproc";
    for cpus in ["1", "2"] {
        let (out, err, status) = popek_run(&[
            "--engine", "interp", "--cpus", cpus, "--", "sh", "-c", script,
        ]);
        assert_eq!(status, 0, "{cpus} cpus; stdout: {out}\nstderr: {err}");
        let want: u64 = (1..=3000u64).map(|i| i * i % 7).sum();
        assert_eq!(
            out,
            format!("{want}\n{cpus}\n"),
            "{cpus} cpus; stderr: {err}"
        );
    }
}

/// `--engine verify` boots the stock kernel to the guest's ready line and runs a command, with
/// every translated block run again on the interpreter and found the same (a difference would
/// stop popek with the report). Slow: about 20x the interpreter.
#[test]
fn verify_engine_boots_with_no_difference() {
    guest();
    let out = run_with_timeout(
        popek().args(["run", "--engine", "verify", "--stats", "--", "uname", "-m"]),
        Duration::from_secs(1200),
    );
    let (out, err, status) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code().expect("popek was killed by a signal"),
    );
    assert_eq!(status, 0, "stdout: {out}\nstderr: {err}");
    assert_eq!(out, "riscv64\n", "stderr: {err}");
    let verified: u64 = err
        .lines()
        .find_map(|l| l.strip_prefix("popek: verify: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no verify count in: {err}"));
    assert!(verified > 1_000_000, "{verified} blocks verified: {err}");
}
