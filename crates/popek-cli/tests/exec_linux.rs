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
    "hostile",
    "hostmem",
    "newer",
    "privs",
];

/// The test root: a riscv64 sysroot copy (loader + libc), the test programs in /bin, and the
/// sandbox fixtures. Built once per test binary.
fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        common::require("riscv64-linux-gnu-gcc");
        common::require("qemu-riscv64");
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

/// `popek exec` on the default engine (the JIT on x86-64).
fn popek(prog: &str, args: &[&str]) -> Output {
    popek_on(DEFAULT, prog, args)
}

/// No engine options: the default engine.
const DEFAULT: &str = "";

/// [`popek`] with the engine options `engine` (space-separated, e.g. `--engine=interp`).
fn popek_on(engine: &str, prog: &str, args: &[&str]) -> Output {
    let mut c = common::popek();
    c.arg("exec").args(engine.split_whitespace());
    c.arg("--root")
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
    same_as_qemu_on(DEFAULT, prog, args)
}

/// [`same_as_qemu`] with popek's engine options `engine` (see [`popek_on`]).
fn same_as_qemu_on(engine: &str, prog: &str, args: &[&str]) -> Output {
    let mut last = None;
    for variant in [prog.to_string(), format!("{prog}-dyn")] {
        let pa: Vec<String> = args.iter().map(|a| a.replace("ROOT", "")).collect();
        let qa: Vec<String> = args
            .iter()
            .map(|a| a.replace("ROOT", &root().display().to_string()))
            .collect();
        let p = popek_on(
            engine,
            &variant,
            &pa.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        );
        let q = qemu(&variant, &qa.iter().map(|s| s.as_str()).collect::<Vec<_>>());
        assert_eq!(
            text(&p.stdout),
            text(&q.stdout),
            "{variant} ({engine}): stdout differs from qemu-riscv64 (popek stderr: {})",
            text(&p.stderr)
        );
        assert_eq!(
            status(&p),
            status(&q),
            "{variant} ({engine}): exit status differs from qemu-riscv64 (popek stderr: {})",
            text(&p.stderr)
        );
        assert!(!text(&p.stderr).contains("panicked"), "{}", text(&p.stderr));
        last = Some(p);
    }
    last.unwrap()
}

/// The interpreter (the fallback engine; every other test runs on the default, the JIT) on the
/// programs that exercise the most guest code: same results as QEMU.
#[test]
fn exec_interp_matches_qemu() {
    let p = same_as_qemu_on("--engine=interp", "hello", &["a", "b"]);
    assert_eq!(text(&p.stdout), "hello, world 3 /bin/hello-dyn\n");
    same_as_qemu_on("--engine=interp", "args", &["one", "two words", "-x"]);
    let p = same_as_qemu_on("--engine=interp", "mem", &[]);
    assert!(text(&p.stdout).contains("malloc big ok"));
    let p = same_as_qemu_on("--engine=interp", "sigsegv", &[]);
    assert!(text(&p.stdout).contains("after unblock: got=10"));
    assert_eq!(
        status(&same_as_qemu_on("--engine=interp", "segv", &[])),
        139
    );
    assert_eq!(status(&same_as_qemu_on("--engine=interp", "ill", &[])), 132);
    let p = same_as_qemu_on("--engine=interp", "forkpipe", &[]);
    assert!(text(&p.stdout).contains("child signaled=1 sig=11"));
    let p = same_as_qemu_on("--engine=interp", "threads", &[]);
    assert_eq!(text(&p.stdout), "counter=80000 sum=60 tls=0\n");
}

/// `--engine verify` (every block also run on the interpreter, stopping at the first
/// difference) and a JIT code cache small enough to be emptied again and again: the same
/// results as QEMU. (Single-threaded programs: verify assumes no other thread writes memory.)
#[test]
fn exec_verify_and_small_code_cache_match_qemu() {
    // `--jit-hot=1` translates every block at its first run, so short programs run on the JIT
    // rather than mostly on the interpreter.
    for opts in ["--engine=verify", "--jit-cache=64K --jit-hot=1"] {
        let p = same_as_qemu_on(opts, "hello", &["a", "b"]);
        assert_eq!(text(&p.stdout), "hello, world 3 /bin/hello-dyn\n");
        let p = same_as_qemu_on(opts, "mem", &[]);
        assert!(text(&p.stdout).contains("malloc big ok"));
        let p = same_as_qemu_on(opts, "sigsegv", &[]);
        assert!(text(&p.stdout).contains("after unblock: got=10"));
        let p = same_as_qemu_on(opts, "forkpipe", &[]);
        assert!(text(&p.stdout).contains("child signaled=1 sig=11"));
    }
}

/// A guest execve re-executes popek with the same engine options.
#[test]
fn exec_interp_execve() {
    for prog in ["execve", "execve-dyn"] {
        let p = popek_on("--engine=interp", prog, &[]);
        assert_eq!(
            text(&p.stdout),
            "missing=-1 errno=2\nhello, world 3 renamed-hello\n",
            "{}",
            text(&p.stderr)
        );
        assert_eq!(status(&p), 3);
    }
}

#[test]
fn exec_hello() {
    let p = same_as_qemu("hello", &["a", "b"]);
    assert_eq!(status(&p), 3);
    assert_eq!(text(&p.stdout), "hello, world 3 /bin/hello-dyn\n");
}

/// The `--stats` lines of a run: (the pid a process names, if it is not the first; the
/// instructions it executed).
fn executed_lines(o: &Output) -> Vec<(Option<u32>, u64)> {
    text(&o.stderr)
        .lines()
        .filter_map(|l| {
            let l = l.strip_prefix("popek: ")?;
            let (pid, rest) = match l.strip_prefix("pid ") {
                Some(r) => {
                    let (pid, rest) = r.split_once(": ")?;
                    (Some(pid.parse().ok()?), rest)
                }
                None => (None, l),
            };
            let n = rest.strip_prefix("executed ")?.split_once(' ')?.0;
            Some((pid, n.parse().ok()?))
        })
        .collect()
}

/// `--stats` reports the instructions the program executed (the same count on every engine)
/// and, on the JIT, its translation counts; a threaded program's report sums its threads, and
/// each process a program forks reports its own, naming its pid. Without it, nothing.
#[test]
fn exec_stats_count_instructions_per_process() {
    let mut counts = Vec::new();
    for engine in ["--engine=interp", "--engine=jit", "--engine=verify"] {
        let o = popek_on(&format!("{engine} --stats"), "hello-dyn", &["a"]);
        assert_eq!(status(&o), 3, "{}", text(&o.stderr));
        let lines = executed_lines(&o);
        assert_eq!(lines.len(), 1, "{engine}: {}", text(&o.stderr));
        assert_eq!(lines[0].0, None, "the first process names no pid");
        counts.push(lines[0].1);
        let jit_line = text(&o.stderr).contains("popek: JIT translated ");
        assert_eq!(jit_line, engine != "--engine=interp", "{}", text(&o.stderr));
    }
    assert!(counts[0] > 50_000, "{counts:?}");
    assert!(counts.iter().all(|&c| c == counts[0]), "{counts:?}");
    assert!(executed_lines(&popek("hello-dyn", &[])).is_empty());

    // Four threads take a mutex 20,000 times each: well over 1.6 million instructions, where
    // the main thread alone runs a few hundred thousand.
    let o = popek_on("--stats", "threads", &[]);
    assert_eq!(status(&o), 0, "{}", text(&o.stderr));
    let lines = executed_lines(&o);
    assert_eq!(lines.len(), 1, "{}", text(&o.stderr));
    assert!(lines[0].1 > 1_600_000, "{lines:?}");

    // forkpipe forks three children (the last dies of SIGSEGV): each reports under its pid,
    // only what it ran after the fork (a few hundred instructions; the parent had run tens of
    // thousands by then).
    let o = popek_on("--stats", "forkpipe", &[]);
    assert_eq!(status(&o), 0, "{}", text(&o.stderr));
    let lines = executed_lines(&o);
    assert_eq!(
        lines.iter().filter(|l| l.0.is_none()).count(),
        1,
        "{lines:?}"
    );
    assert!(
        lines.iter().all(|l| l.0.is_none() || l.1 < 5_000),
        "{lines:?}"
    );
    let mut pids: Vec<u32> = lines.iter().filter_map(|l| l.0).collect();
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 3, "{lines:?}");
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

/// The JIT's loads and stores use host memory directly while popek keeps the host's protection
/// as strict as the guest's (the host's fault sends an access to its checked path): loads from
/// PROT_NONE, unmapped and moved pages, across into them, from page 0 and past the address
/// space, and stores to read-only, PROT_NONE and unmapped pages, across into one (changing
/// nothing), to page 0 and to code, and runs of loads and of stores through one base faulting
/// in their middle (the accesses before the fault done), raise the same SIGSEGVs as under
/// QEMU; pages made accessible again read back their bytes; code rewritten between mprotects
/// runs as rewritten. With a second thread, or execute-only memory, popek stops mirroring and
/// accesses check its TLB; memory both writable and executable stops the mirroring of writes
/// only: the same results, with fewer host faults.
#[test]
fn exec_accesses_the_host_checks_fault_like_qemu() {
    for (engine, arg, host_faults) in [
        ("--stats", "plain", 18),
        // Verification logs stores through their helpers: only loads are direct.
        ("--stats --engine=verify", "plain", 10),
        ("--stats", "thread", 0),
        ("--stats", "exec", 0),
        ("--stats", "rwx", 10),
        ("--stats --engine=interp", "plain", 0),
    ] {
        let p = same_as_qemu_on(engine, "hostmem", &[arg]);
        let out = text(&p.stdout);
        let faults = out.matches(": SIGSEGV at bad+0\n").count();
        assert_eq!(faults, 18, "{engine} {arg}: {out}");
        for line in [
            "across into a PROT_NONE page: SIGSEGV at bad+4\n",
            "across into an unmapped page: SIGSEGV at bad+2\n",
            "moved, readable: 6363636363636363\n",
            "store across into a PROT_NONE page: SIGSEGV at bad+4\n",
            "before the boundary: 6666666666666666\n",
            "read-only page unchanged: 6464646464646464\n",
            "writable again: 1122334455667788\n",
            "rewritten code returned 6000\n",
            "nothing stored: 6868686868686868\n",
            "stored before the fault: 7777777777777777 7777777777777777\n",
        ] {
            assert!(out.contains(line), "{engine} {arg}: no {line:?} in {out}");
        }
        // Only the store to writable and executable code goes through.
        let through = out.matches("no fault").count();
        assert_eq!(through, usize::from(arg == "rwx"), "{out}");
        let err = text(&p.stderr);
        let counted = err
            .split_once(" loads and stores through helpers (")
            .and_then(|(_, r)| r.split_once(' '))
            .map(|(n, _)| n.parse::<u64>().expect("a count"));
        let want = (!engine.contains("interp")).then_some(host_faults);
        assert_eq!(counted, want, "{engine} {arg}: {err}");
    }
}

/// popek started with SIGSEGV blocked (a blocked mask survives exec): a host fault of a
/// direct access still reaches popek's handler, and the guest, which inherited the blocked
/// signal, dies of its first fault, printing what it printed before, as under QEMU (Linux
/// kills a thread whose fault signal is blocked). Without the handler's unblocking, the host
/// killed popek itself, with no message.
#[test]
fn exec_started_with_sigsegv_blocked_dies_of_the_fault_like_qemu() {
    use std::os::unix::process::CommandExt;
    let block = || {
        // SAFETY: between fork and exec, only async-signal-safe calls on a local set.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGSEGV);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        }
        Ok(())
    };
    let mut p = common::popek();
    p.arg("exec")
        .arg("--root")
        .arg(root())
        .args(["/bin/hostmem", "plain"]);
    let mut q = Command::new("qemu-riscv64");
    q.arg(root().join("bin/hostmem")).arg("plain");
    let mut outs = Vec::new();
    for c in [&mut p, &mut q] {
        // SAFETY: `block` only calls async-signal-safe functions.
        unsafe { c.pre_exec(block) };
        outs.push(c.stdin(Stdio::null()).output().expect("running hostmem"));
    }
    let (p, q) = (&outs[0], &outs[1]);
    assert_eq!((status(p), status(q)), (139, 139), "{}", text(&p.stderr));
    assert_eq!(text(&p.stdout), text(&q.stdout));
    let err = text(&p.stderr);
    assert!(
        err.starts_with("popek: /bin/hostmem: segmentation fault at "),
        "{err}"
    );
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

/// fchmodat2 works as Linux 6.6 and later has it (the host kernel popek reports; QEMU 7.2
/// answers ENOSYS): glibc 2.39 and later call it for `fchmodat(..., AT_SYMLINK_NOFOLLOW)`,
/// and stopping the program there broke trixie's programs. Syscalls newer than those popek
/// models, and numbers Linux does not have, answer ENOSYS as an older kernel would.
#[test]
fn exec_newer_syscalls() {
    std::fs::create_dir_all(root().join("tmp/newer")).unwrap();
    let host_mode = || std::fs::metadata("/etc/passwd").unwrap().permissions();
    let before = host_mode();
    let p = popek("newer", &["/tmp/newer"]);
    assert_eq!(host_mode(), before, "the host's /etc/passwd changed");
    assert_eq!(
        (
            status(&p),
            text(&p.stdout).as_str(),
            text(&p.stderr).as_str()
        ),
        (
            0,
            "fchmodat2 file nofollow: 0 \n\
             mode 640\n\
             fchmodat2 link nofollow: -1 Operation not supported\n\
             fchmodat2 link: 0 \n\
             fchmodat2 bad flags: -1 Invalid argument\n\
             mode 604\n\
             fchmodat nofollow (libc): 0 \n\
             fchmodat2 /../../etc/passwd: 0 \n\
             mode 640\n\
             cachestat: -1 Function not implemented\n\
             mseal: -1 Function not implemented\n\
             no such syscall: -1 Function not implemented\n",
            ""
        )
    );
}

/// Priorities of the program's own tasks change; other tasks' look absent (ESRCH) or are
/// not the program's to change (EPERM); the host's kernel log is refused; supplementary
/// groups go to the host, which decides. None of them stops the program.
#[test]
fn exec_priorities_groups_and_the_kernel_log() {
    let p = popek("privs", &[]);
    assert_eq!(
        (
            status(&p),
            text(&p.stdout).as_str(),
            text(&p.stderr).as_str()
        ),
        (
            0,
            "setpriority self: 0 \n\
             getpriority self: 5 \n\
             setpriority host init: -1 No such process\n\
             setpriority user: -1 Operation not permitted\n\
             ioprio_set self: 0 \n\
             ioprio_get self: 24576 \n\
             ioprio_get host init: -1 No such process\n\
             syslog: -1 Operation not permitted\n\
             setgroups -1: -1 Invalid argument\n\
             setgroups 70000: -1 Invalid argument\n\
             getgroups -1: -1 Invalid argument\n\
             setgroups same: ok\n",
            ""
        )
    );
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
        let mut p = hello.clone();
        p[32..40].copy_from_slice(&0x8000_0000_0000_0000u64.to_le_bytes());
        std::fs::write(bad.join("bin/phoff"), p).unwrap();
        // The dynamic program with its PT_INTERP string replaced.
        let dynamic = std::fs::read(root().join("bin/hello-dyn")).unwrap();
        let interp = b"/lib/ld-linux-riscv64-lp64d.so.1";
        let at = dynamic
            .windows(interp.len())
            .position(|w| w == interp)
            .unwrap();
        for (name, with) in [("interp-slash", &b"/"[..]), ("interp-empty", &b""[..])] {
            let mut d = dynamic.clone();
            d[at..at + interp.len()].fill(0);
            d[at..at + with.len()].copy_from_slice(with);
            std::fs::write(bad.join("bin").join(name), d).unwrap();
        }
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
    for (prog, why) in [
        ("/bin/phoff", "program headers past the end of the file"),
        (
            "/bin/interp-slash",
            "its interpreter / is not a regular file",
        ),
        ("/bin/interp-empty", "PT_INTERP names no interpreter"),
    ] {
        let (s, err) = popek_in(bad, prog);
        assert_eq!(
            (s, err),
            (126, format!("popek: {prog}: malformed ELF file: {why}\n")),
            "{prog}"
        );
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
    // A memory limit too small for the program's segments, or for its stack.
    for limit in ["4K", "1M"] {
        let o = run(common::popek()
            .arg("exec")
            .args(["--memory", limit, "--root"])
            .arg(root())
            .arg("/bin/hello"));
        assert_eq!(
            (status(&o), text(&o.stderr)),
            (
                126,
                format!("popek: /bin/hello: its writable segments and stack do not fit in --memory {limit}: give a larger --memory\n")
            )
        );
    }
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

/// The x86-64 shared object a hostile guest tries to get the host's loader to run: its
/// constructor creates `marker` (outside the root). Built with the host's cc.
fn evil_so(marker: &Path) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let src = dir.join("evil.c");
    std::fs::write(
        &src,
        format!(
            "#include <fcntl.h>\n#include <unistd.h>\n\
             __attribute__((constructor)) static void evil(void) {{\n\
             close(open(\"{}\", O_CREAT | O_WRONLY, 0644)); }}\n",
            marker.display()
        ),
    )
    .unwrap();
    let so = root().join("evil.so");
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&src)
        .status()
        .expect("running cc");
    assert!(status.success(), "building evil.so failed");
    so
}

/// Escape 1: a guest execve re-executes popek; the guest's loader variables must never reach the
/// host's dynamic loader (LD_PRELOAD by host path, by /proc/self/fd/N and relative; LD_AUDIT,
/// LD_LIBRARY_PATH, GLIBC_TUNABLES). The guest still sees its own environment.
#[test]
fn exec_execve_keeps_loader_variables_from_the_host() {
    let marker = Path::new(env!("CARGO_TARGET_TMPDIR")).join("evil-marker");
    let so = evil_so(&marker);
    // The object works: preloaded into a host program, it creates the marker.
    let _ = std::fs::remove_file(&marker);
    let st = Command::new("/bin/true")
        .env("LD_PRELOAD", &so)
        .status()
        .unwrap();
    assert!(
        st.success() && marker.exists(),
        "evil.so did not run natively"
    );
    std::fs::remove_file(&marker).unwrap();
    for prog in ["hostile", "hostile-dyn"] {
        let p = popek(prog, &["preload", so.to_str().unwrap()]);
        let out = text(&p.stdout);
        assert_eq!(status(&p), 0, "{out}{}", text(&p.stderr));
        assert!(out.contains("argv[1]=after-exec\n"), "{out}");
        assert!(out.contains("env POPEK_GUEST_VAR=kept\n"), "{out}");
        assert!(out.contains("env count=5\n"), "{out}");
        assert!(
            !marker.exists(),
            "{prog}: the host's loader ran the guest's shared object"
        );
    }
}

/// Escape 2: signals, limits and scheduler calls reach only the guest's own processes. Runs in a
/// PID namespace the test creates, with a victim process that is not the guest's.
#[test]
fn exec_signals_stay_inside_the_guest() {
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root for its PID namespace (CI runs as root)"
    );
    let popek_bin = env!("CARGO_BIN_EXE_popek");
    for prog in ["hostile", "hostile-dyn"] {
        let script = format!(
            "sleep 30 & v=$!; {popek_bin} exec --root {} /bin/{prog} signals $v; \
             kill -0 $v && echo victim-alive; kill $v",
            root().display()
        );
        let mut c = Command::new("unshare");
        c.args([
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            "sh",
            "-c",
        ])
        .arg(&script);
        let o = run(&mut c);
        assert_eq!(
            text(&o.stdout),
            "kill victim 0: ESRCH\n\
             kill victim TERM: ESRCH\n\
             kill 1 TERM: ESRCH\n\
             tkill victim: ESRCH\n\
             tgkill victim: ESRCH\n\
             prlimit victim: ESRCH\n\
             setaffinity victim: ESRCH\n\
             getpgid victim: ESRCH\n\
             getsid victim: ESRCH\n\
             prlimit self: ok\n\
             kill 0 USR1: ok\n\
             kill -pgrp USR2: ok\n\
             kill -victim's group: ESRCH\n\
             own signals: usr1=1 usr2=1\n\
             kill child KILL: ok\n\
             child: killed by 9\n\
             kill -1 KILL: ok\n\
             child 1: killed by 9\n\
             child 2: killed by 9\n\
             kill -1 again: ESRCH\n\
             caller alive\n\
             victim-alive\n",
            "{prog}: {}",
            text(&o.stderr)
        );
    }
}

/// Escape 3: no device nodes; set-uid and set-gid bits are dropped however they are asked for.
#[test]
fn exec_no_device_nodes_or_setid_bits() {
    for prog in ["hostile", "hostile-dyn"] {
        let p = popek(prog, &["nodes"]);
        assert_eq!(
            text(&p.stdout),
            "mknod char 1:11: EPERM\n\
             mknod block 8:0: EPERM\n\
             mknod fifo: ok\n\
             mknod file 04755: ok\n\
             mknod'd file: 0755\n\
             open O_CREAT 06755: ok\n\
             created file: 0755\n\
             fchmod 06755: ok\n\
             after fchmod: 0755\n\
             chmod 04755: ok\n\
             after chmod: 0755\n\
             fchmodat 02755: ok\n\
             after fchmodat: 0755\n",
            "{prog}: {}",
            text(&p.stderr)
        );
        assert!(!root().join("tmp/kmsg").exists() && !root().join("tmp/sda").exists());
    }
}

/// Descriptors the caller did not name with --pass-fd are closed before the guest starts.
#[test]
fn exec_inherited_descriptors_are_not_passed() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let file = std::fs::File::open("/etc/hostname").unwrap();
    let fd = file.as_raw_fd();
    for (extra, want) in [
        (&[][..], "inherited:\n"),
        (&["--pass-fd", "7"][..], "inherited: 7\n"),
    ] {
        let mut c = Command::new(env!("CARGO_BIN_EXE_popek"));
        c.arg("exec")
            .args(extra)
            .arg("--root")
            .arg(root())
            .args(["/bin/hostile", "fds"]);
        // SAFETY: dup2 is async-signal-safe; it runs in the child between fork and exec.
        unsafe {
            c.pre_exec(move || {
                for target in [7, 9] {
                    if libc::dup2(fd, target) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let o = c.stdin(Stdio::null()).output().unwrap();
        assert_eq!(text(&o.stdout), want, "{}", text(&o.stderr));
    }
}

/// With POPEK_PERF_MAP, `popek exec` lists its translated blocks in /tmp/perf-PID.map (as
/// `popek run` does), on a descriptor of its own that the guest cannot see.
#[test]
fn exec_perf_map_lists_translated_code_out_of_the_guests_reach() {
    let child = Command::new(env!("CARGO_BIN_EXE_popek"))
        .args(["exec", "--jit-hot=1", "--root"])
        .arg(root())
        .args(["/bin/hostile", "fds"])
        .env("POPEK_PERF_MAP", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let map = PathBuf::from(format!("/tmp/perf-{}.map", child.id()));
    let o = child.wait_with_output().unwrap();
    assert_eq!(text(&o.stdout), "inherited:\n", "{}", text(&o.stderr));
    let listed = std::fs::read_to_string(&map).unwrap_or_default();
    let _ = std::fs::remove_file(&map);
    let blocks = listed
        .lines()
        .filter(|l| l.contains(" popek-jit:0x"))
        .count();
    assert!(
        blocks > 10,
        "{} lists {blocks} blocks:\n{listed}",
        map.display()
    );
}

/// A guest allocating without bound gets ENOMEM at its --memory limit, not the host's OOM.
#[test]
fn exec_memory_limit() {
    let mut c = common::popek();
    c.arg("exec")
        .arg("--root")
        .arg(root())
        .args(["--memory", "256M", "/bin/hostile", "memory"]);
    let o = run(&mut c);
    let out = text(&o.stdout);
    let mib: u64 = out
        .strip_prefix("allocated ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}{}", text(&o.stderr)));
    assert!((128..256).contains(&mib), "{out}");
    assert_eq!(status(&o), 0);
    // The default limit (4 GiB) refuses one 8 GiB writable mapping; reserving address space
    // (PROT_NONE) costs nothing until it is made writable.
    let p = popek("hostile", &["bigmap"]);
    assert_eq!(
        text(&p.stdout),
        "mmap 8 GiB: ENOMEM\n\
         mmap 8 GiB PROT_NONE: ok\n\
         mprotect all of it writable: ENOMEM\n\
         mprotect 1 MiB writable: ok\n"
    );
}

/// popek exec runs under its seccomp filter with no-new-privileges, whatever the guest does.
#[test]
fn exec_popek_is_jailed() {
    use std::io::Read;
    let mut child = Command::new(env!("CARGO_BIN_EXE_popek"))
        .arg("exec")
        .arg("--root")
        .arg(root())
        .args(["/bin/hostile", "wait"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = [0u8; 6];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut ready)
        .unwrap();
    assert_eq!(&ready, b"ready\n");
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");
    assert_eq!(field("Seccomp:"), "2", "{status}");
    assert!(child.wait().unwrap().success());
}
