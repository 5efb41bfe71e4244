//! `--gdb`: Debian's gdb-multiarch, in batch mode, debugging a bare-metal program under
//! `popek run` and a static riscv64 Linux program under `popek exec`: breakpoints, stepping,
//! registers (integer, FP, CSRs) and memory read and written, a write watchpoint, Ctrl-C, and
//! the exit status. Each test asserts on what gdb printed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{popek, repo, require};

fn tmp() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gdb");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// tests/gdb_progs/bare.c against tests/baremetal's runtime, with debug information.
fn bare_elf() -> &'static Path {
    static ELF: OnceLock<PathBuf> = OnceLock::new();
    ELF.get_or_init(|| {
        require("riscv64-unknown-elf-gcc");
        let bm = repo().join("tests/baremetal");
        let out = tmp().join("bare.elf");
        let status = Command::new("riscv64-unknown-elf-gcc")
            .args([
                "-march=rv64gc",
                "-mabi=lp64d",
                "-mcmodel=medany",
                "-O1",
                "-g",
            ])
            .args([
                "-nostdlib",
                "-ffreestanding",
                "-fno-builtin",
                "-fno-pic",
                "-static",
            ])
            .args([
                "-Wl,--no-warn-rwx-segments",
                "-Wl,--no-relax",
                "-Wl,--build-id=none",
            ])
            .arg("-I")
            .arg(&bm)
            .arg("-T")
            .arg(bm.join("link.ld"))
            .arg("-o")
            .arg(&out)
            .arg(bm.join("crt.S"))
            .arg(bm.join("lib.c"))
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gdb_progs/bare.c"))
            .status()
            .expect("running riscv64-unknown-elf-gcc: run scripts/install-deps");
        assert!(status.success(), "building bare.c failed");
        out
    })
}

/// A root holding tests/gdb_progs/prog.c with debug information, static at /bin/prog and
/// dynamic (PIE) at /bin/prog-dyn, with the loader and libc.
fn exec_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        require("riscv64-linux-gnu-gcc");
        let root = tmp().join("root");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        let status = Command::new("riscv64-linux-gnu-gcc")
            .args(["-g", "-O1", "-static", "-o"])
            .arg(root.join("bin/prog"))
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gdb_progs/prog.c"))
            .status()
            .expect("running riscv64-linux-gnu-gcc: run scripts/install-deps");
        assert!(status.success(), "building prog.c failed");
        let status = Command::new("riscv64-linux-gnu-gcc")
            .args(["-g", "-O1", "-o"])
            .arg(root.join("bin/prog-dyn"))
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gdb_progs/prog.c"))
            .status()
            .unwrap();
        assert!(status.success(), "building prog.c (dynamic) failed");
        std::fs::create_dir_all(root.join("lib")).unwrap();
        let sysroot = Path::new("/usr/riscv64-linux-gnu/lib");
        for lib in ["ld-linux-riscv64-lp64d.so.1", "libc.so.6"] {
            std::fs::copy(sysroot.join(lib), root.join("lib").join(lib))
                .unwrap_or_else(|e| panic!("copying {lib}: {e} (run scripts/install-deps)"));
        }
        root
    })
}

/// What one debugging session left.
struct Session {
    gdb: String,
    popek: String,
    status: Option<i32>,
}

/// Wait for `child` up to `limit`; kill it past that. Returns its exit status and output.
fn finish(mut child: Child, limit: Duration, what: &str) -> (Option<i32>, String) {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what} timed out after {limit:?}; it printed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// Start `popek ARGS` (which serves gdb at `addr`), run gdb on `elf` with `commands` once the
/// socket is up, optionally Ctrl-C gdb after `interrupt_after`, and collect both outputs.
fn session(
    popek_args: &[&str],
    addr: &str,
    elf: &Path,
    commands: &[&str],
    interrupt_after: Option<Duration>,
) -> Session {
    require("gdb-multiarch");
    let vm = popek()
        .args(popek_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let up = || match addr.strip_prefix("tcp:") {
        Some(a) => std::net::TcpStream::connect(a).is_ok(),
        None => Path::new(addr).exists(),
    };
    // A TCP probe would be gdb's connection: for TCP wait a little instead.
    if addr.starts_with("tcp:") {
        std::thread::sleep(Duration::from_millis(500));
    } else {
        while !up() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let mut gdb = Command::new("gdb-multiarch");
    gdb.args(["-q", "-batch", "-nx"]);
    let target = format!("target remote {addr}");
    let mut all = vec!["set pagination off", "set confirm off"];
    let file = format!("file {}", elf.display());
    if !elf.as_os_str().is_empty() {
        all.push(&file);
    }
    // Commands before `target remote` would be too late after it (the architecture).
    let (pre, post): (Vec<&str>, Vec<&str>) = commands
        .iter()
        .partition(|c| c.starts_with("set architecture"));
    all.extend(pre);
    all.push(&target);
    all.extend(post);
    for c in all {
        gdb.arg("-ex").arg(c);
    }
    let child = gdb
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(after) = interrupt_after {
        std::thread::sleep(after);
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    }
    let (_, gdb_out) = finish(child, Duration::from_secs(40), "gdb");
    // Generous: the Linux test boots the default guest.
    let (status, popek_out) = finish(vm, Duration::from_secs(150), "popek");
    Session {
        gdb: gdb_out,
        popek: popek_out,
        status,
    }
}

fn sock(name: &str) -> String {
    let p = tmp().join(name);
    let _ = std::fs::remove_file(&p);
    p.display().to_string()
}

fn assert_has(s: &Session, needle: &str) {
    assert!(
        s.gdb.contains(needle),
        "gdb did not print {needle:?}; gdb printed:\n{}\npopek printed:\n{}",
        s.gdb,
        s.popek
    );
}

/// The common script: stop in bump(1), read and write registers and memory, single-step,
/// watch `counter`, run to the end. counter = 100 + 10 + 2 + 3 + 4 + 5 = 124 = 0174.
const SCRIPT: &[&str] = &[
    "info registers pc",
    "break bump",
    "continue",
    "print by",
    "print counter",
    "set var counter = 100",
    "set var $a0 = 10",
    "print $a0",
    "print/x $fcsr",
    "print $fs0",
    "stepi",
    "info registers pc",
    "x/1gd &counter",
    "delete 1",
    "watch counter",
    "continue",
    "delete",
    "continue",
];

fn check_script(s: &Session) {
    assert_has(s, "Breakpoint 1, bump (by=by@entry=1)");
    assert_has(s, "$1 = 1\n");
    assert_has(s, "$2 = 0\n");
    assert_has(s, "$3 = 10\n");
    assert_has(s, "$4 = 0x0\n");
    assert_has(s, "$5 = {float = 0, double = 0}");
    assert_has(s, "<bump+4>");
    assert_has(s, "<counter>:\t100");
    assert_has(s, "Hardware watchpoint 2: counter");
    assert_has(s, "Old value = 100\nNew value = 110");
    assert_has(s, "exited with code 0174]");
    assert_eq!(s.status, Some(124), "popek printed:\n{}", s.popek);
}

#[test]
fn run_bare_metal_under_gdb() {
    let addr = sock("run.sock");
    let elf = bare_elf().display().to_string();
    let s = session(
        &["run", "--bios", &elf, "--gdb", &addr, "--gdb-wait"],
        &addr,
        bare_elf(),
        SCRIPT,
        None,
    );
    assert_has(&s, "pc             0x80000000\t0x80000000 <_start>");
    check_script(&s);
}

#[test]
fn run_smp_harts_are_gdb_threads() {
    let addr = sock("smp.sock");
    let elf = bare_elf().display().to_string();
    let s = session(
        &[
            "run",
            "--cpus",
            "2",
            "--bios",
            &elf,
            "--gdb",
            &addr,
            "--gdb-wait",
        ],
        &addr,
        bare_elf(),
        &[
            "info threads",
            "print $priv",
            "print/x $mhartid",
            "thread 2",
            "print/x $mhartid",
            "thread 1",
            "continue",
        ],
        None,
    );
    assert_has(&s, "Thread 1.2");
    assert_has(&s, "$1 = 3\n");
    assert_has(&s, "$2 = 0x0\n");
    assert_has(&s, "$3 = 0x1\n");
    assert_has(&s, "exited with code 017]");
    assert_eq!(s.status, Some(15), "popek printed:\n{}", s.popek);
}

#[test]
fn run_ctrl_c_stops_the_machine() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("tcp:127.0.0.1:{port}");
    // Counts in t0 forever: gdb attaches to the running machine (no --gdb-wait), lets it go
    // on, stops it with Ctrl-C, and kills it.
    let spin = common::build_asm(
        "gdb_spin",
        ".globl _start\n_start:\n1: addi t0, t0, 1\n j 1b\n",
        0x8000_0000,
    );
    let elf = spin.display().to_string();
    let s = session(
        &["run", "--bios", &elf, "--gdb", &addr],
        &addr,
        &spin,
        &[
            "print $t0 > 1000",
            "continue",
            "print $t0 > 1000",
            "info registers pc",
            "kill",
        ],
        Some(Duration::from_secs(3)),
    );
    assert_has(&s, "$1 = 1\n");
    assert_has(&s, "Program received signal SIGINT");
    assert_has(&s, "$2 = 1\n");
    assert_has(&s, "<_start");
    assert!(s.popek.contains("popek: killed by gdb"), "{}", s.popek);
    assert_eq!(s.status, Some(137), "popek printed:\n{}", s.popek);
}

#[test]
fn exec_program_under_gdb() {
    let addr = sock("exec.sock");
    let root = exec_root().display().to_string();
    let mut script: Vec<&str> = SCRIPT.to_vec();
    // FP memory and registers: the program prints counter * scale.
    script.insert(5, "print scale");
    script.insert(6, "set var scale = 2.0");
    // A hardware breakpoint this time.
    script[1] = "hbreak bump";
    let s = session(
        &["exec", "--root", &root, "--gdb", &addr, "/bin/prog"],
        &addr,
        &exec_root().join("bin/prog"),
        &script,
        None,
    );
    assert_has(&s, "in _start ()");
    assert_has(&s, "Hardware assisted breakpoint 1 at");
    assert_has(&s, "reakpoint 1, bump (by=by@entry=1)");
    assert_has(&s, "= 1.5\n");
    assert_has(&s, "<counter>:\t100");
    assert_has(&s, "Old value = 100\nNew value = 110");
    assert_has(&s, "exited with code 0174]");
    assert!(
        s.popek.contains("gdb_prog: counter 124 scaled 248.0"),
        "popek printed:\n{}",
        s.popek
    );
    assert_eq!(s.status, Some(124));
}

#[test]
fn bad_gdb_addresses_are_one_line_errors() {
    let elf = bare_elf().display().to_string();
    let existing = tmp().join("exists");
    std::fs::write(&existing, "x").unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = format!("tcp:{}", busy.local_addr().unwrap());
    for (addr, want) in [
        ("tcp:nonsense", "expected tcp:HOST:PORT"),
        ("host:1234", "expected tcp:HOST:PORT"),
        (existing.to_str().unwrap(), "the path exists"),
        (busy_addr.as_str(), "cannot listen"),
    ] {
        for cmd in [
            vec!["run", "--bios", &elf, "--gdb", addr],
            vec!["exec", "--gdb", addr, "/bin/true"],
        ] {
            let out = common::run_with_timeout(popek().args(&cmd), Duration::from_secs(10));
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{cmd:?}: {err}");
            assert!(err.contains(want), "{cmd:?}: {err}");
            assert_eq!(err.trim().lines().count(), 1, "{cmd:?}: {err}");
        }
    }
}

#[test]
fn attach_to_a_linux_guest_and_detach() {
    common::guest();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("tcp:127.0.0.1:{port}");
    // No symbol file: the firmware or kernel, wherever the attach finds it.
    let s = session(
        &[
            "run",
            "--gdb",
            &addr,
            "--",
            "sh",
            "-c",
            "sleep 1; echo guest-done",
        ],
        &addr,
        Path::new(""),
        &[
            "set architecture riscv:rv64",
            "info threads",
            "x/1i $pc",
            "print $priv <= 3",
            "print $pc != 0",
            "stepi",
            "detach",
        ],
        None,
    );
    assert_has(&s, "Thread 1.1");
    assert_has(&s, "=> 0x");
    assert_has(&s, "$1 = 1\n");
    assert_has(&s, "$2 = 1\n");
    assert_has(&s, "detached]");
    assert!(
        s.popek.contains("guest-done"),
        "popek printed:\n{}",
        s.popek
    );
    assert_eq!(s.status, Some(0), "popek printed:\n{}", s.popek);
}

#[test]
fn exec_dynamic_pie_program_under_gdb() {
    let addr = sock("exec-dyn.sock");
    let root = exec_root().display().to_string();
    let sysroot = format!("set sysroot {root}");
    // gdb relocates the PIE program and finds libc through the auxiliary vector.
    let s = session(
        &["exec", "--root", &root, "--gdb", &addr, "/bin/prog-dyn"],
        &addr,
        &exec_root().join("bin/prog-dyn"),
        &[
            &sysroot,
            "break bump",
            "continue",
            "print by",
            "bt",
            "info sharedlibrary",
            "set var counter = 100",
            "delete",
            "continue",
        ],
        None,
    );
    assert_has(&s, "from ");
    assert_has(&s, "Breakpoint 1, bump (by=by@entry=1)");
    assert_has(&s, "in main () at");
    assert_has(&s, "lib/libc.so.6");
    assert_has(&s, "exited with code 0163]");
    assert_eq!(s.status, Some(115), "popek printed:\n{}", s.popek);
}
