//! `popek exec`: riscv64 Linux programs built at test time with riscv64-linux-gnu-gcc, run under
//! popek and under qemu-riscv64 (the reference), comparing stdout and exit status; plus the
//! sandbox and the error paths, which QEMU does not have.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// Programs in tests/exec_progs, each built static (`bin/NAME`) and dynamic (`bin/NAME-dyn`).
const PROGS: &[&str] = &[
    "args",
    "files",
    "mem",
    "sigsegv",
    "segv",
    "ill",
    "forkpipe",
    "execve",
    "threads",
    "clock",
    "escape",
    "hwprobe",
    "unsupported",
    "restart",
];

fn require(tool: &str) {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{tool} not found: run scripts/install-deps");
}

/// The test root: a riscv64 sysroot copy (loader + libc), the test programs in /bin, and the
/// sandbox fixtures. Built once per test binary.
fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        require("riscv64-linux-gnu-gcc");
        require("qemu-riscv64");
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("exec-root");
        let _ = std::fs::remove_dir_all(&root);
        for d in ["bin", "lib", "etc", "tmp"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let sysroot = Path::new("/usr/riscv64-linux-gnu/lib");
        for lib in ["ld-linux-riscv64-lp64d.so.1", "libc.so.6"] {
            std::fs::copy(sysroot.join(lib), root.join("lib").join(lib)).unwrap_or_else(|e| {
                panic!(
                    "copying {lib} from {}: {e} (run scripts/install-deps)",
                    sysroot.display()
                )
            });
        }
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/exec_progs");
        let mut all: Vec<&str> = PROGS.to_vec();
        all.push("hello");
        for p in all {
            for (suffix, extra) in [("", &["-static"][..]), ("-dyn", &[][..])] {
                let out = root.join("bin").join(format!("{p}{suffix}"));
                let status = Command::new("riscv64-linux-gnu-gcc")
                    .args(["-O2", "-w", "-o"])
                    .arg(&out)
                    .arg(src.join(format!("{p}.c")))
                    .args(extra)
                    .arg("-lpthread")
                    .status()
                    .expect("running riscv64-linux-gnu-gcc: run scripts/install-deps");
                assert!(status.success(), "building {p}{suffix} failed");
            }
        }
        std::fs::write(root.join("etc/passwd"), "inside-root-passwd\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("tmp/passwd-link")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("tmp/dir-link")).unwrap();
        root
    })
}

/// Run with a time limit, a clean environment and closed stdin.
fn run(cmd: &mut Command) -> Output {
    let prog = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let mut t = Command::new("timeout");
    t.args(["-k", "5", "60"]).arg(&prog).args(&args);
    t.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("POPEK_TEST", "yes");
    if let Some(d) = cmd.get_current_dir() {
        t.current_dir(d);
    }
    t.stdin(Stdio::null());
    let out = t
        .output()
        .unwrap_or_else(|e| panic!("running {prog:?}: {e}"));
    assert_ne!(out.status.code(), Some(124), "{prog:?} {args:?} timed out");
    out
}

/// Exit status as a shell reports it (128 + signal for a killed process).
fn status(o: &Output) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    o.status
        .code()
        .unwrap_or_else(|| 128 + o.status.signal().unwrap_or(0))
}

fn popek(prog: &str, args: &[&str]) -> Output {
    let mut c = common::popek();
    c.arg("exec")
        .arg("--root")
        .arg(root())
        .arg(format!("/bin/{prog}"))
        .args(args);
    c.current_dir(root());
    run(&mut c)
}

fn qemu(prog: &str, args: &[&str]) -> Output {
    let mut c = Command::new("qemu-riscv64");
    if prog.ends_with("-dyn") {
        c.arg("-L").arg(root());
    }
    c.arg("-0").arg(format!("/bin/{prog}"));
    c.arg(root().join("bin").join(prog)).args(args);
    c.current_dir(root());
    run(&mut c)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Run `prog` (static and dynamic) under popek and QEMU with the same arguments (`ROOT` in an
/// argument is replaced by the root as each one sees it) and compare stdout and exit status.
fn same_as_qemu(prog: &str, args: &[&str]) -> Output {
    let mut last = None;
    for variant in [prog.to_string(), format!("{prog}-dyn")] {
        let pa: Vec<String> = args.iter().map(|a| a.replace("ROOT", "")).collect();
        let qa: Vec<String> = args
            .iter()
            .map(|a| a.replace("ROOT", &root().display().to_string()))
            .collect();
        let p = popek(&variant, &pa.iter().map(|s| s.as_str()).collect::<Vec<_>>());
        let q = qemu(&variant, &qa.iter().map(|s| s.as_str()).collect::<Vec<_>>());
        assert_eq!(
            text(&p.stdout),
            text(&q.stdout),
            "{variant}: stdout differs from qemu-riscv64 (popek stderr: {})",
            text(&p.stderr)
        );
        assert_eq!(
            status(&p),
            status(&q),
            "{variant}: exit status differs from qemu-riscv64 (popek stderr: {})",
            text(&p.stderr)
        );
        assert!(!text(&p.stderr).contains("panicked"), "{}", text(&p.stderr));
        last = Some(p);
    }
    last.unwrap()
}

#[test]
fn exec_hello() {
    let p = same_as_qemu("hello", &["a", "b"]);
    assert_eq!(status(&p), 3);
    assert_eq!(text(&p.stdout), "hello, world 3 /bin/hello-dyn\n");
}

#[test]
fn exec_args_env_auxv() {
    let p = same_as_qemu("args", &["one", "two words", "-x"]);
    let out = text(&p.stdout);
    assert!(out.contains("env POPEK_TEST=yes"), "{out}");
    assert!(out.contains("hwcap:ACDFIM\n"), "{out}");
    assert!(out.contains("platform=0\n"), "{out}");
}

#[test]
fn exec_env_option() {
    let mut c = common::popek();
    c.arg("exec").arg("--root").arg(root()).args([
        "--env",
        "POPEK_EXTRA=2",
        "--env",
        "POPEK_TEST=changed",
        "/bin/args",
    ]);
    let out = text(&run(&mut c).stdout);
    assert!(out.contains("env POPEK_EXTRA=2\n"), "{out}");
    assert!(out.contains("env POPEK_TEST=changed\n"), "{out}");
    assert!(!out.contains("POPEK_TEST=yes"), "{out}");
}

#[test]
fn exec_hwprobe_and_network_denied() {
    let p = popek("hwprobe", &[]);
    assert_eq!(
        text(&p.stdout),
        "hwprobe=0\nkey 3 value 1\nkey 4 value 3\nkey 5 value 0\nkey -1 value 0\n\
         socket=-1 errno=13\nsocket=-1 errno=13\n"
    );
    let err = text(&p.stderr);
    assert_eq!(
        err.matches("--allow-net").count(),
        1,
        "one note expected: {err}"
    );
}

#[test]
fn exec_file_io() {
    std::fs::create_dir_all(root().join("tmp/files")).unwrap();
    // Both runs use the same directory one after the other; the program cleans up after itself.
    let p = same_as_qemu("files", &["ROOT/tmp/files"]);
    let out = text(&p.stdout);
    assert!(out.contains("readlink=5 [a.txt]"), "{out}");
    assert!(out.contains("rmdir=0"), "{out}");
}

#[test]
fn exec_mmap_mprotect_munmap() {
    let p = same_as_qemu("mem", &[]);
    assert!(text(&p.stdout).contains("malloc big ok"));
}

#[test]
fn exec_sigsegv_handler_recovers() {
    let p = same_as_qemu("sigsegv", &[]);
    let out = text(&p.stdout);
    assert!(out.contains("recovered 2: sig=11 addr ok=1"), "{out}");
    assert!(out.contains("recovered from SIGILL: sig=4"), "{out}");
    assert!(out.contains("after unblock: got=10"), "{out}");
}

#[test]
fn exec_segfault_status() {
    let p = same_as_qemu("segv", &[]);
    assert_eq!(status(&p), 139);
    let err = text(&p.stderr);
    assert!(
        err.starts_with("popek: /bin/segv-dyn: segmentation fault at 0x8"),
        "{err}"
    );
}

#[test]
fn exec_illegal_instruction_status() {
    let p = same_as_qemu("ill", &[]);
    assert_eq!(status(&p), 132);
    assert!(text(&p.stderr).contains("illegal instruction at 0x"));
}

#[test]
fn exec_fork_wait_pipe() {
    let p = same_as_qemu("forkpipe", &[]);
    let out = text(&p.stdout);
    assert!(
        out.contains("read [message from child] waited=1 exited=1 status=7"),
        "{out}"
    );
    assert!(out.contains("child signaled=1 sig=11"), "{out}");
}

#[test]
fn exec_execve() {
    // QEMU would run the target natively through the host's binfmt; compare with the expected
    // output instead.
    for prog in ["execve", "execve-dyn"] {
        let p = popek(prog, &["/bin/args-dyn"]);
        let out = text(&p.stdout);
        assert_eq!(status(&p), 0, "{}", text(&p.stderr));
        assert!(out.starts_with("missing=-1 errno=2\nargc=3\nargv[1]=one\nargv[2]=two\nenv count=1\nenv POPEK_FROM_EXECVE=1\n"), "{out}");
        let p = popek(prog, &[]);
        assert_eq!(
            text(&p.stdout),
            "missing=-1 errno=2\nhello, world 3 renamed-hello\n"
        );
        assert_eq!(status(&p), 3);
    }
}

#[test]
fn exec_shebang_script() {
    let script = root().join("bin/script");
    std::fs::write(&script, "#!/bin/args -o\necho not reached\n").unwrap();
    let mut c = common::popek();
    c.arg("exec")
        .arg("--root")
        .arg(root())
        .args(["/bin/script", "x"]);
    let o = run(&mut c);
    let out = text(&o.stdout);
    assert!(
        out.starts_with("argc=4\nargv[1]=-o\nargv[2]=/bin/script\nargv[3]=x\n"),
        "{out}{}",
        text(&o.stderr)
    );
}

#[test]
fn exec_threads() {
    let p = same_as_qemu("threads", &[]);
    assert_eq!(text(&p.stdout), "counter=80000 sum=60 tls=0\n");
}

#[test]
fn exec_signals_interrupt_blocking_syscalls() {
    let p = same_as_qemu("restart", &[]);
    assert_eq!(
        text(&p.stdout),
        "restart=1 read=4 errno=- buf=[late] alarms=1\n\
         restart=0 read=-1 errno=EINTR buf=[] alarms=2\n\
         sigchld seen=1\n\
         child killed by signal 15\n"
    );
}

#[test]
fn exec_clock_nanosleep() {
    let p = same_as_qemu("clock", &[]);
    assert!(!text(&p.stdout).contains("=0"), "{}", text(&p.stdout));
}

#[test]
fn exec_sandbox_cannot_escape() {
    for prog in ["escape", "escape-dyn"] {
        let p = popek(prog, &[]);
        assert_eq!(
            text(&p.stdout),
            format!(
                "/tmp/passwd-link: inside-root-passwd\n\
                 /tmp/../../../etc/passwd: inside-root-passwd\n\
                 ../../../../etc/passwd: inside-root-passwd\n\
                 /tmp/dir-link/passwd: inside-root-passwd\n\
                 cwd after ../../..: /\n\
                 exe: /bin/{prog}\n\
                 link text: /etc/passwd\n"
            )
        );
    }
}

#[test]
fn exec_unsupported_syscall() {
    let p = popek("unsupported", &[]);
    assert_eq!(status(&p), 71);
    assert_eq!(text(&p.stdout), "before\n");
    assert_eq!(text(&p.stderr), "popek: unsupported syscall 0 (io_setup)\n");
}

fn bad_root() -> &'static Path {
    static BAD: OnceLock<PathBuf> = OnceLock::new();
    BAD.get_or_init(|| {
        let bad = Path::new(env!("CARGO_TARGET_TMPDIR")).join("exec-bad-root");
        let _ = std::fs::remove_dir_all(&bad);
        std::fs::create_dir_all(bad.join("bin")).unwrap();
        let hello = std::fs::read(root().join("bin/hello")).unwrap();
        std::fs::copy(root().join("bin/hello-dyn"), bad.join("bin/hello-dyn")).unwrap();
        std::fs::copy("/bin/true", bad.join("bin/x86")).unwrap();
        std::fs::write(bad.join("bin/text"), "just some text\n").unwrap();
        let mut a = hello.clone();
        a[18..20].copy_from_slice(&183u16.to_le_bytes());
        std::fs::write(bad.join("bin/aarch64"), a).unwrap();
        let mut r = hello.clone();
        r[4] = 1;
        std::fs::write(bad.join("bin/rv32"), r).unwrap();
        std::fs::write(bad.join("bin/truncated"), &hello[..200]).unwrap();
        bad
    })
}

fn popek_in(root: &Path, prog: &str) -> (i32, String) {
    let mut c = common::popek();
    c.arg("exec").arg("--root").arg(root).arg(prog);
    let o = run(&mut c);
    assert!(o.stdout.is_empty());
    (status(&o), text(&o.stderr))
}

#[test]
fn exec_bad_inputs() {
    let bad = bad_root();
    let b = bad.display().to_string();
    let cases: &[(&str, i32, String)] = &[
        ("/bin/missing", 127, format!("popek: /bin/missing: no such file in {b}\n")),
        (
            "/bin/hello-dyn",
            127,
            format!("popek: /bin/hello-dyn: needs /lib/ld-linux-riscv64-lp64d.so.1 which is not in {b}: give --root with the program's sysroot\n"),
        ),
        ("/bin/text", 126, "popek: /bin/text: not an ELF executable\n".into()),
        (
            "/bin/x86",
            126,
            "popek: /bin/x86: x86-64 program: popek exec runs only 64-bit RISC-V (riscv64) programs\n".into(),
        ),
        (
            "/bin/aarch64",
            126,
            "popek: /bin/aarch64: aarch64 program: popek exec runs only 64-bit RISC-V (riscv64) programs\n".into(),
        ),
        (
            "/bin/rv32",
            126,
            "popek: /bin/rv32: 32-bit RISC-V program: popek exec runs only 64-bit RISC-V (riscv64) programs\n".into(),
        ),
    ];
    for (prog, code, msg) in cases {
        let (s, err) = popek_in(bad, prog);
        assert_eq!((s, err.as_str()), (*code, msg.as_str()), "{prog}");
    }
    let (s, err) = popek_in(bad, "/bin/truncated");
    assert_eq!(s, 126);
    assert!(
        err.starts_with("popek: /bin/truncated: malformed ELF file"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
    let (s, err) = popek_in(&bad.join("no-such-dir"), "/bin/x");
    assert_eq!(s, 127);
    assert!(err.contains("cannot open the root directory"), "{err}");
    assert_eq!(err.lines().count(), 1);
}

/// Random files, with and without an ELF header: one line on stderr, never a panic.
#[test]
fn exec_garbage_never_panics() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("exec-garbage");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let hello = std::fs::read(root().join("bin/hello")).unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..40 {
        let mut b: Vec<u8> = match i % 4 {
            0 => (0..(rnd() % 5000) as usize).map(|_| rnd() as u8).collect(),
            1 => {
                let mut v = b"\x7fELF\x02\x01\x01".to_vec();
                v.extend((0..(rnd() % 3000) as usize).map(|_| rnd() as u8));
                v
            }
            _ => hello.clone(),
        };
        if i % 4 >= 2 {
            // Corrupt a few header or program-header bytes of a real program.
            for _ in 0..(1 + rnd() % 4) {
                let at = (rnd() % if i % 4 == 2 { 64 } else { 64 + 56 * 8 }) as usize;
                b[at] = rnd() as u8;
            }
        }
        let name = format!("g{i}");
        std::fs::write(dir.join(&name), &b).unwrap();
        let mut c = common::popek();
        c.arg("exec")
            .arg("--root")
            .arg(&dir)
            .arg(format!("/{name}"));
        let o = run(&mut c);
        let err = text(&o.stderr);
        assert!(!err.contains("panicked"), "{name}: {err}");
        assert_ne!(status(&o), 101, "{name}: {err}");
    }
}
