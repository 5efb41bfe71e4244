//! Guest signals: dispositions, masks, host-signal forwarding and the riscv64 `rt_sigframe`.
//!
//! A guest disposition is mirrored onto the host: SIG_DFL and SIG_IGN become the host's own (so a
//! default SIGINT kills popek exactly as it would kill the program, and ignored signals stay ignored
//! across execve), a guest handler becomes a host handler that only marks the signal pending; the
//! guest handler then runs at the next instruction-slice boundary or syscall return. The guest's
//! blocked mask is mirrored onto the host thread's mask the same way. Synchronous signals (SIGSEGV,
//! SIGILL, SIGBUS, SIGFPE, SIGTRAP) are never mirrored: they come from [`popek_cpu::Exit::Trap`].

use std::sync::atomic::{AtomicU64, Ordering};

/// Signals raised by the host since a guest thread last looked (bit `sig - 1`).
pub static HOST_PENDING: AtomicU64 = AtomicU64::new(0);

/// Size of the riscv64 rt_sigframe popek builds: siginfo (128) + ucontext (960).
pub const FRAME_SIZE: u64 = 128 + UCONTEXT_SIZE;
const UCONTEXT_SIZE: u64 = 960;
/// Offset of uc_mcontext in the ucontext.
const MCONTEXT: u64 = 176;

/// sa_flags: run on the alternate stack.
pub const SA_ONSTACK: u64 = 0x0800_0000;
/// Restart interrupted syscalls.
pub const SA_RESTART: u64 = 0x1000_0000;
/// Do not block the signal in its handler.
pub const SA_NODEFER: u64 = 0x4000_0000;
/// Reset to SIG_DFL on delivery.
pub const SA_RESETHAND: u64 = 0x8000_0000;

/// SIG_DFL.
pub const SIG_DFL: u64 = 0;
/// SIG_IGN.
pub const SIG_IGN: u64 = 1;

/// A guest `struct sigaction` (riscv64 has no sa_restorer).
#[derive(Clone, Copy, Debug, Default)]
pub struct Action {
    /// Handler address, SIG_DFL or SIG_IGN.
    pub handler: u64,
    /// SA_* flags.
    pub flags: u64,
    /// Signals blocked while the handler runs.
    pub mask: u64,
}

/// Bit of signal `sig` in a sigset.
pub fn bit(sig: u32) -> u64 {
    1u64 << (sig - 1)
}

/// Signals the guest cannot block or catch.
pub const UNBLOCKABLE: u64 = (1 << (libc::SIGKILL - 1)) | (1 << (libc::SIGSTOP - 1));
/// Signals popek raises itself from guest faults and never mirrors onto the host. SIGSYS is
/// among them because the host's belongs to popek's jail (it reports blocked host calls).
pub const SYNCHRONOUS: u64 = (1 << (libc::SIGSYS - 1))
    | (1 << (libc::SIGSEGV - 1))
    | (1 << (libc::SIGBUS - 1))
    | (1 << (libc::SIGILL - 1))
    | (1 << (libc::SIGFPE - 1))
    | (1 << (libc::SIGTRAP - 1));

extern "C" fn on_host_signal(sig: libc::c_int) {
    if (1..=64).contains(&sig) {
        HOST_PENDING.fetch_or(1u64 << (sig - 1), Ordering::SeqCst);
    }
}

/// Whether the default action of `sig` is to ignore it.
pub fn default_ignores(sig: u32) -> bool {
    matches!(
        sig as i32,
        libc::SIGCHLD | libc::SIGURG | libc::SIGWINCH | libc::SIGCONT
    )
}

/// Make the host's disposition of `sig` follow the guest's `act`.
pub fn mirror_action(sig: u32, act: &Action) {
    if bit(sig) & (SYNCHRONOUS | UNBLOCKABLE) != 0 || !(1..=64).contains(&sig) {
        return;
    }
    // SAFETY: a zeroed sigaction is valid; we fill it before passing it to the host.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = match act.handler {
        SIG_DFL => libc::SIG_DFL,
        SIG_IGN => libc::SIG_IGN,
        _ => on_host_signal as extern "C" fn(libc::c_int) as usize,
    };
    // Never SA_RESTART on the host: a blocking host syscall must return EINTR so the guest
    // handler runs now; popek restarts the guest's syscall itself when the guest asked for it.
    sa.sa_flags = 0;
    // SAFETY: sa is fully initialised; the handler only touches an atomic.
    unsafe {
        libc::sigfillset(&mut sa.sa_mask);
        libc::sigaction(sig as i32, &sa, std::ptr::null_mut());
    }
}

/// The host's current disposition of `sig` as a guest action (SIG_IGN or SIG_DFL).
pub fn host_action(sig: u32) -> Action {
    // SAFETY: sigaction with a null new action only reads the current one into `old`.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::sigaction(sig as i32, std::ptr::null(), &mut old) };
    Action {
        handler: if old.sa_sigaction == libc::SIG_IGN {
            SIG_IGN
        } else {
            SIG_DFL
        },
        flags: 0,
        mask: 0,
    }
}

/// Set the host thread's blocked mask to the guest's (minus signals popek must always see).
pub fn mirror_mask(mask: u64) {
    let mask = mask & !(SYNCHRONOUS | UNBLOCKABLE);
    // SAFETY: an all-zero sigset_t is valid; the first 8 bytes of glibc's sigset_t are signals
    // 1..=64, the same bit layout as the kernel's.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        std::ptr::write(&mut set as *mut libc::sigset_t as *mut u64, mask);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// The host thread's blocked mask as a guest sigset.
pub fn host_mask() -> u64 {
    // SAFETY: pthread_sigmask with a null new set only reads the old one.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_SETMASK, std::ptr::null(), &mut set);
        std::ptr::read(&set as *const libc::sigset_t as *const u64)
    }
}

/// Die of `sig` the way Linux would kill the program: restore the host default, unblock, raise it
/// (with core dumps off, as QEMU does). Falls back to exit status 128+sig.
pub fn die_of(sig: i32) -> ! {
    crate::stats::report();
    // SAFETY: plain libc calls on our own process; nothing here returns into guest state.
    unsafe {
        let rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &rl);
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
        libc::_exit(128 + sig)
    }
}

/// What a signal frame needs from the interrupted hart.
pub struct FrameRegs {
    /// pc then x1..x31.
    pub x: [u64; 32],
    /// f0..f31.
    pub f: [u64; 32],
    /// fcsr.
    pub fcsr: u32,
}

/// Build the rt_sigframe image (siginfo + ucontext) in host memory order.
pub fn frame_bytes(
    info: &[u8; 128],
    regs: &FrameRegs,
    mask: u64,
    altstack: (u64, u64, u64),
) -> Vec<u8> {
    let mut b = vec![0u8; FRAME_SIZE as usize];
    b[..128].copy_from_slice(info);
    let uc = 128usize;
    let put =
        |b: &mut Vec<u8>, off: usize, v: u64| b[off..off + 8].copy_from_slice(&v.to_le_bytes());
    // uc_stack: ss_sp, ss_flags, ss_size.
    put(&mut b, uc + 16, altstack.0);
    put(&mut b, uc + 24, altstack.2);
    put(&mut b, uc + 32, altstack.1);
    put(&mut b, uc + 40, mask);
    let mc = uc + MCONTEXT as usize;
    for i in 0..32 {
        put(&mut b, mc + i * 8, regs.x[i]);
        put(&mut b, mc + 256 + i * 8, regs.f[i]);
    }
    b[mc + 512..mc + 516].copy_from_slice(&regs.fcsr.to_le_bytes());
    b
}

/// Read the registers and mask back from a frame image (rt_sigreturn).
pub fn parse_frame(b: &[u8]) -> (FrameRegs, u64) {
    let get = |off: usize| u64::from_le_bytes(b[off..off + 8].try_into().unwrap_or([0; 8]));
    let uc = 128usize;
    let mc = uc + MCONTEXT as usize;
    let mut regs = FrameRegs {
        x: [0; 32],
        f: [0; 32],
        fcsr: u32::from_le_bytes(b[mc + 512..mc + 516].try_into().unwrap_or([0; 4])),
    };
    for i in 0..32 {
        regs.x[i] = get(mc + i * 8);
        regs.f[i] = get(mc + 256 + i * 8);
    }
    (regs, get(uc + 40))
}

/// A siginfo for a fault (si_addr) or a signal sent by a process (si_pid, si_uid).
pub fn siginfo(sig: u32, code: i32, addr_or_pid: u64, uid: u32) -> [u8; 128] {
    let mut b = [0u8; 128];
    b[0..4].copy_from_slice(&(sig as i32).to_le_bytes());
    b[8..12].copy_from_slice(&code.to_le_bytes());
    b[16..24].copy_from_slice(&addr_or_pid.to_le_bytes());
    if uid != u32::MAX {
        b[20..24].copy_from_slice(&uid.to_le_bytes());
    }
    b
}

/// The "... at 0x..." phrase popek prints for a fatal fault.
pub fn describe(sig: i32) -> &'static str {
    match sig {
        libc::SIGSEGV => "segmentation fault",
        libc::SIGILL => "illegal instruction",
        libc::SIGBUS => "bus error",
        libc::SIGTRAP => "trace/breakpoint trap",
        libc::SIGFPE => "floating point exception",
        _ => "fatal signal",
    }
}
