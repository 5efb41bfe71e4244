//! Helpers shared by popek's integration tests: building the bare-metal programs and running
//! popek and QEMU on them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Fail the test with a pointer to scripts/install-deps unless `tool --version` runs.
pub fn require(tool: &str) {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{tool} not found: run scripts/install-deps");
}

/// The popek binary under test.
pub fn popek() -> Command {
    Command::new(env!("CARGO_BIN_EXE_popek"))
}

/// Start `popek ARGS` on a terminal of its own (script(1)), as a user at a console would:
/// popek then reads Ctrl-A escapes and the guest's getty sees a terminal. Input and output
/// are piped.
pub fn popek_on_a_terminal(args: &str) -> std::process::Child {
    require("script");
    Command::new("script")
        .arg("-qfec")
        .arg(format!("{} {args}", env!("CARGO_BIN_EXE_popek")))
        .arg("/dev/null")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("script(1)")
}

/// Run a command with a timeout (via coreutils `timeout`), stdin closed, capturing output.
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Output {
    let prog = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let mut t = Command::new("timeout");
    t.arg("-k")
        .arg("5")
        .arg(format!("{}", limit.as_secs()))
        .arg(&prog)
        .args(&args);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => t.env(k, v),
            None => t.env_remove(k),
        };
    }
    t.stdin(Stdio::null());
    let out = t
        .output()
        .unwrap_or_else(|e| panic!("running {prog:?}: {e}"));
    assert_ne!(
        out.status.code(),
        Some(124),
        "{prog:?} {args:?} timed out after {limit:?}"
    );
    out
}

/// Build every program in tests/baremetal once per test binary; returns the output directory.
pub fn baremetal_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("baremetal");
        let status = Command::new("make")
            .arg("-s")
            .arg("-C")
            .arg(repo().join("tests/baremetal"))
            .arg(format!("OUT={}", out.display()))
            .status()
            .expect("running make: install build tools with scripts/install-deps");
        assert!(status.success(), "building tests/baremetal failed (is gcc-riscv64-unknown-elf installed? run scripts/install-deps)");
        out
    })
}

/// Assemble and link a tiny bare-metal program from assembly source, at `text` address.
pub fn build_asm(name: &str, source: &str, text: u64) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("asm");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join(format!("{name}.S"));
    let elf = dir.join(format!("{name}.elf"));
    std::fs::write(&src, source).unwrap();
    let status = Command::new("riscv64-unknown-elf-gcc")
        .args([
            "-march=rv64gc",
            "-mabi=lp64d",
            "-nostdlib",
            "-nostartfiles",
            "-static",
        ])
        .arg(format!("-Wl,-N,-Ttext=0x{text:x}"))
        .arg("-o")
        .arg(&elf)
        .arg(&src)
        .status()
        .expect("running riscv64-unknown-elf-gcc: install it with scripts/install-deps");
    assert!(status.success(), "assembling {name}");
    elf
}

/// Text of a process's stdout and stderr.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// How long one boot of the default guest may take.
pub const LIMIT: Duration = Duration::from_secs(300);

/// The default guest; the suite fails (never skips) when it was not built.
pub fn guest() -> PathBuf {
    let dir = std::env::var_os("POPEK_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache")
                });
            cache.join("popek/guests/default")
        });
    assert!(
        dir.join("VERSION").is_file(),
        "the default guest is missing in {}: run guests/build-default (scripts/test does)",
        dir.display()
    );
    dir
}

/// Run `popek run ARGS`, returning (stdout, stderr, status).
pub fn popek_run(args: &[&str]) -> (String, String, i32) {
    guest();
    let out = run_with_timeout(popek().arg("run").args(args), LIMIT);
    let (o, e) = text(&out);
    assert!(!e.contains("panicked"), "popek panicked: {e}");
    (
        o,
        e,
        out.status.code().expect("popek was killed by a signal"),
    )
}

/// Read `r` until `needle` appears; what was read (fails on end of output).
pub fn read_until(r: &mut impl std::io::Read, needle: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let n = r.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "no {needle:?} in: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// Kill `child` (and so end the reads of its output) if it still runs after `limit`: a guest
/// that hangs fails the test instead of hanging the suite.
pub fn kill_after(child: &std::process::Child, limit: Duration) {
    let pid = child.id().to_string();
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        let _ = Command::new("kill").args(["-9", &pid]).status();
    });
}
