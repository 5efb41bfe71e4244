//! Running an image under qemu-riscv64 and on popek, and comparing the results.

use std::cell::RefCell;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use popek_cpu::{Exception, Exit, Hart, HartConfig, Memory, NoBus, RamRegion};
use popek_jit::{EngineConfig, EngineKind};

use crate::elf::Image;
use crate::layout::*;
pub use crate::space::Placement;
use crate::space::{Space, SPAN_BITS};

/// How a run of a test program ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// exit_group(code).
    Exit(i64),
    /// Killed by this signal (no handler).
    Signal(i32),
    /// Did not finish in time.
    Hang,
    /// The emulator itself failed (panic, unexpected exit, spawn failure).
    Error(String),
}

/// What a run of a test program left: how it ended and what it wrote (scratch memory and
/// the register dump), compared between the emulators.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// How it ended.
    pub status: Status,
    /// What it wrote to stdout.
    pub stdout: Vec<u8>,
}

/// The reference emulator's command.
pub const QEMU: &str = "qemu-riscv64";

/// Whether qemu-riscv64 can be run.
pub fn qemu_available() -> bool {
    Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Write the image as an ELF file.
pub fn write_elf(img: &Image, path: &Path) -> std::io::Result<()> {
    std::fs::write(path, &img.segment)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

fn scratch_file() -> PathBuf {
    thread_local! {
        static PATH: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
    }
    PATH.with(|p| {
        p.borrow_mut()
            .get_or_insert_with(|| {
                let dir =
                    std::env::temp_dir().join(format!("popek-difftest-{}", std::process::id()));
                std::fs::create_dir_all(&dir).expect("temp dir");
                static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                dir.join(format!(
                    "t{}.elf",
                    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                ))
            })
            .clone()
    })
}

/// Remove this process's temporary directory (once no QEMU run is in flight).
pub fn cleanup() {
    let _ = std::fs::remove_dir(
        std::env::temp_dir().join(format!("popek-difftest-{}", std::process::id())),
    );
}

/// Run the image under QEMU.
pub fn run_qemu(img: &Image) -> Outcome {
    let path = scratch_file();
    if let Err(e) = write_elf(img, &path) {
        return Outcome {
            status: Status::Error(format!("writing {}: {e}", path.display())),
            stdout: vec![],
        };
    }
    let mut child = match Command::new(QEMU)
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return Outcome {
                status: Status::Error(format!("spawning {QEMU}: {e} (apt-get install qemu-user)")),
                stdout: vec![],
            }
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_micros(300)),
            Err(e) => {
                return Outcome {
                    status: Status::Error(format!("wait: {e}")),
                    stdout: vec![],
                }
            }
        }
    };
    let mut stdout = Vec::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_end(&mut stdout);
    }
    let _ = std::fs::remove_file(&path);
    let status = match status {
        None => Status::Hang,
        Some(s) => {
            use std::os::unix::process::ExitStatusExt;
            match (s.code(), s.signal()) {
                (Some(c), _) => Status::Exit(c as i64),
                (None, Some(sig)) => Status::Signal(sig),
                _ => Status::Error(format!("{s:?}")),
            }
        }
    };
    Outcome { status, stdout }
}

thread_local! {
    static QUIET_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let captured = QUIET_PANIC.with(|q| {
                let mut q = q.borrow_mut();
                if let Some(slot) = q.as_mut() {
                    let loc = info
                        .location()
                        .map(|l| format!(" at {}:{}", l.file(), l.line()))
                        .unwrap_or_default();
                    let msg = if let Some(s) = info.payload().downcast_ref::<&str>() {
                        s.to_string()
                    } else if let Some(s) = info.payload().downcast_ref::<String>() {
                        s.clone()
                    } else {
                        "?".into()
                    };
                    *slot = format!("{msg}{loc}");
                    true
                } else {
                    false
                }
            });
            if !captured {
                default(info);
            }
        }));
    });
}

/// The Linux signal QEMU delivers for an exception, and its si_addr.
pub fn signal_for(cause: Exception, tval: u64, pc: u64) -> (i32, u64) {
    use Exception::*;
    match cause {
        InstructionAccessFault
        | LoadAccessFault
        | StoreAccessFault
        | InstructionPageFault
        | LoadPageFault
        | StorePageFault => (11, tval),
        IllegalInstruction => (4, pc),
        Breakpoint => (5, pc),
        InstructionMisaligned | LoadMisaligned | StoreMisaligned => (7, tval),
        _ => (0, 0),
    }
}

/// Run the image on popek's interpreter with a minimal Linux syscall shim.
pub fn run_popek(img: &Image) -> Outcome {
    run_popek_with(img, EngineKind::Interp)
}

/// [`run_popek`] with the given execution engine.
pub fn run_popek_with(img: &Image, engine: EngineKind) -> Outcome {
    run_popek_counting(img, engine).0
}

/// [`run_popek_with`], and how many of the JIT's direct loads took a host fault to reach
/// their helper (its [`popek_jit::JitStats::host_faults`]; 0 without a JIT). The memory is
/// placed low or anywhere (see [`Placement`]) as the image's contents say, so a program that
/// fails does so again, and about half of all programs test each placement.
pub fn run_popek_counting(img: &Image, engine: EngineKind) -> (Outcome, u64) {
    let hash = img.segment.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let placement = if hash & 1 == 0 {
        Placement::Low
    } else {
        Placement::Anywhere
    };
    run_popek_counting_at(img, engine, placement)
}

/// [`run_popek_counting`] with the memory placed as `placement` says.
pub fn run_popek_counting_at(
    img: &Image,
    engine: EngineKind,
    placement: Placement,
) -> (Outcome, u64) {
    install_panic_hook();
    QUIET_PANIC.with(|q| *q.borrow_mut() = Some(String::new()));
    let mut host_faults = 0;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_popek_inner(img, engine, placement, &mut host_faults)
    }));
    let msg = QUIET_PANIC
        .with(|q| q.borrow_mut().take())
        .unwrap_or_default();
    let outcome = match r {
        Ok(o) => o,
        Err(_) => Outcome {
            status: Status::Error(format!("popek panicked: {msg}")),
            stdout: vec![],
        },
    };
    (outcome, host_faults)
}

fn run_popek_inner(
    img: &Image,
    engine: EngineKind,
    placement: Placement,
    host_faults: &mut u64,
) -> Outcome {
    let len = (END - BASE) as usize;
    let space = match Space::new(placement) {
        Ok(s) => s,
        Err(e) => {
            return Outcome {
                status: Status::Error(format!("no memory for the program: {e}")),
                stdout: vec![],
            }
        }
    };
    let host = space.host(BASE);
    // SAFETY: `BASE..END` of the space is readable and writable, and the space outlives the
    // hart; it is only read through `host` between runs.
    unsafe { std::ptr::copy_nonoverlapping(img.segment.as_ptr(), host, len) };
    // SAFETY: as above: the region's bytes stay mapped while the hart runs on them.
    let region = unsafe { RamRegion::new(BASE, len as u64, std::ptr::NonNull::new(host).unwrap()) };
    let mut hart = Hart::new(HartConfig::user(), Memory::new(vec![region]).unwrap());
    hart.set_pc(img.entry);
    // One host mapping, as in `popek exec`: every page at the same addend, and the host's
    // protection checking loads.
    hart.require_data_addend(space.addend());
    hart.let_host_check_reads(Some(SPAN_BITS));
    let mem = |a: u64, n: u64| -> Option<Vec<u8>> {
        if a < BASE || a.checked_add(n)? > END {
            return None;
        }
        // SAFETY: in bounds, hart not running.
        Some(
            unsafe { std::slice::from_raw_parts(host.add((a - BASE) as usize), n as usize) }
                .to_vec(),
        )
    };
    let mut stdout = Vec::new();
    let mut handlers = [false; 65];
    let mut budget_left: u64 = 10_000_000;
    // Every block translated at once: a sequence runs once, and the JIT is what is tested.
    let config = EngineConfig {
        hot: 1,
        ..EngineConfig::new(engine)
    };
    let mut jit = match config.jit() {
        Ok(j) => j,
        Err(e) => {
            return Outcome {
                status: Status::Error(format!("no JIT: {e}")),
                stdout: vec![],
            }
        }
    };
    let outcome = (|| loop {
        let exit = match jit.as_mut() {
            Some(j) => {
                let exit = hart.run_with(&mut NoBus, 100_000, j);
                if let Some(d) = j.take_divergence() {
                    return Outcome {
                        status: Status::Error(d.to_string()),
                        stdout,
                    };
                }
                exit
            }
            None => hart.run(&mut NoBus, 100_000),
        };
        match exit {
            Exit::Ecall => {
                let (a0, a1, a2) = (hart.xreg(10), hart.xreg(11), hart.xreg(12));
                match hart.xreg(17) {
                    64 => {
                        if a0 == 1 || a0 == 2 {
                            match mem(a1, a2) {
                                Some(b) => {
                                    if a0 == 1 {
                                        stdout.extend_from_slice(&b);
                                    }
                                    hart.set_xreg(10, a2);
                                }
                                None => hart.set_xreg(10, -14i64 as u64), // EFAULT
                            }
                        } else {
                            hart.set_xreg(10, -9i64 as u64); // EBADF
                        }
                    }
                    93 | 94 => {
                        return Outcome {
                            status: Status::Exit(a0 as i32 as i64),
                            stdout,
                        }
                    }
                    134 => {
                        if (1..65).contains(&a0) && a1 != 0 {
                            let handler = mem(a1, 8)
                                .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
                                .unwrap_or(0);
                            handlers[a0 as usize] = handler > 1;
                        }
                        hart.set_xreg(10, 0);
                    }
                    n => {
                        return Outcome {
                            status: Status::Error(format!("unexpected syscall {n}")),
                            stdout,
                        };
                    }
                }
            }
            Exit::Trap(t) => {
                let pc = hart.pc();
                let (sig, addr) = signal_for(t.cause, t.tval, pc);
                if sig == 0 {
                    return Outcome {
                        status: Status::Error(format!("unexpected trap {t:?} at {pc:#x}")),
                        stdout,
                    };
                }
                if !handlers[sig as usize] {
                    return Outcome {
                        status: Status::Signal(sig),
                        stdout,
                    };
                }
                // What the guest's signal handler would write.
                let mut out = mem(OUT, OUT_LEN).unwrap();
                let put = |out: &mut Vec<u8>, a: u64, v: u64| {
                    let o = (a - OUT) as usize;
                    out[o..o + 8].copy_from_slice(&v.to_le_bytes());
                };
                for i in 1..32 {
                    put(&mut out, DUMP_X + 8 * i as u64, hart.xreg(i));
                }
                for i in 0..32 {
                    put(&mut out, DUMP_F + 8 * i as u64, hart.freg(i));
                }
                put(&mut out, DUMP_MISC, hart.fcsr() & 0xffff_ffff);
                put(&mut out, DUMP_MISC + 8, sig as u64);
                put(&mut out, DUMP_MISC + 16, addr);
                put(&mut out, DUMP_MISC + 24, pc);
                stdout.extend_from_slice(&out);
                return Outcome {
                    status: Status::Exit(0),
                    stdout,
                };
            }
            Exit::Budget => {
                budget_left = budget_left.saturating_sub(100_000);
                if budget_left == 0 {
                    return Outcome {
                        status: Status::Hang,
                        stdout,
                    };
                }
            }
            other => {
                return Outcome {
                    status: Status::Error(format!("unexpected exit {other:?}")),
                    stdout,
                }
            }
        }
    })();
    *host_faults = jit.map_or(0, |j| j.stats().host_faults);
    outcome
}

/// Describe how two outcomes differ, or None if they are identical.
pub fn compare(qemu: &Outcome, popek: &Outcome) -> Option<String> {
    if qemu.status == popek.status && qemu.stdout == popek.stdout {
        return None;
    }
    let mut s = String::new();
    if qemu.status != popek.status {
        s.push_str(&format!(
            "  status: qemu {:?}, popek {:?}\n",
            qemu.status, popek.status
        ));
    }
    let n = OUT_LEN as usize;
    if qemu.stdout.len() != n || popek.stdout.len() != n {
        s.push_str(&format!(
            "  stdout length: qemu {}, popek {} (expected {n})\n",
            qemu.stdout.len(),
            popek.stdout.len()
        ));
        return Some(s);
    }
    let word = |b: &[u8], a: u64| {
        let o = (a - OUT) as usize;
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    };
    let mut diffs = Vec::new();
    for i in 1..32u64 {
        let a = DUMP_X + 8 * i;
        diffs.push((format!("x{i} ({})", crate::gen::xn(i as u32)), a));
    }
    for i in 0..32u64 {
        diffs.push((
            format!("f{i} ({})", crate::gen::fname(i as u32)),
            DUMP_F + 8 * i,
        ));
    }
    diffs.push(("fcsr".into(), DUMP_MISC));
    diffs.push(("signal".into(), DUMP_MISC + 8));
    diffs.push(("si_addr".into(), DUMP_MISC + 16));
    diffs.push(("fault pc".into(), DUMP_MISC + 24));
    let mut shown = 0;
    for (name, a) in diffs {
        let (q, p) = (word(&qemu.stdout, a), word(&popek.stdout, a));
        if q != p {
            if shown == 0 {
                s.push_str(&format!(
                    "  first difference: {name}: qemu {q:#018x}, popek {p:#018x}\n"
                ));
            } else {
                s.push_str(&format!("  also {name}: qemu {q:#018x}, popek {p:#018x}\n"));
            }
            shown += 1;
        }
    }
    for a in (SCRATCH..SCRATCH + SCRATCH_LEN).step_by(8) {
        let (q, p) = (word(&qemu.stdout, a), word(&popek.stdout, a));
        if q != p {
            s.push_str(&format!(
                "  memory at {a:#x} (gp{:+}): qemu {q:#018x}, popek {p:#018x}\n",
                a as i64 - GP as i64
            ));
            shown += 1;
            if shown > 12 {
                break;
            }
        }
    }
    Some(s)
}
