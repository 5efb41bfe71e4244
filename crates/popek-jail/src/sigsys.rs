//! The SIGSYS reporter: a call outside a seccomp allow-list traps (SECCOMP_RET_TRAP) instead of
//! killing silently, and this handler prints which call and which thread kind, then ends popek
//! with status 159 (128 + SIGSYS, what a shell shows for a process killed by it).

use std::cell::Cell;
use std::fmt::Write;
use std::io;

use crate::{JailError, ThreadKind};

thread_local! {
    /// The kind of the current thread, for the message (index into `KINDS`).
    static KIND: Cell<&'static str> = const { Cell::new("popek") };
}

/// `si_code` of a SIGSYS raised by seccomp.
const SYS_SECCOMP: i32 = 1;

/// Install the handler (process-wide; idempotent) and name this thread's kind.
pub fn install(kind: ThreadKind) -> Result<(), JailError> {
    KIND.with(|k| k.set(kind.name()));
    // SAFETY: a zeroed sigaction is valid; we fill in the handler and flags before use.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction =
        on_sigsys as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize;
    sa.sa_flags = libc::SA_SIGINFO;
    // SAFETY: sa is initialised; the handler only formats into a stack buffer, writes to fd 2
    // and exits.
    if unsafe { libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) } != 0 {
        return Err(JailError::Signal(io::Error::last_os_error()));
    }
    Ok(())
}

/// A fixed-size message buffer: formatting into it allocates nothing (signal-handler safe).
struct StackBuf {
    buf: [u8; 256],
    len: usize,
}

impl Write for StackBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let mut msg = StackBuf {
        buf: [0; 256],
        len: 0,
    };
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler. For SIGSYS the
    // kernel's layout puts si_call_addr (a pointer) at offset 16 and si_syscall (an int) at 24.
    let (code, nr) = unsafe {
        let p = info as *const u8;
        ((*info).si_code, (p.add(24) as *const i32).read_unaligned())
    };
    if code == SYS_SECCOMP {
        let name = syscalls::Sysno::new(nr as usize).map_or("unknown", |s| s.name());
        let kind = KIND.with(|k| k.get());
        let _ = writeln!(
            msg,
            "popek: sandbox: host syscall {nr} ({name}) is not allowed on a {kind} thread; \
             popek stopped (this is a popek bug: please report it)"
        );
    } else {
        let _ = writeln!(msg, "popek: killed by SIGSYS");
    }
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is ours.
    unsafe {
        libc::write(2, msg.buf.as_ptr() as *const libc::c_void, msg.len);
        libc::_exit(128 + libc::SIGSYS);
    }
}
