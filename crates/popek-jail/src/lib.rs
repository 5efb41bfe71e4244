//! popek's host-side jail, in the spirit of Firecracker's jailer: whatever a guest finds wrong in
//! the emulation (a syscall translated too trustingly, a device bug), the popek process it
//! controls can do no more than popek itself needs to.
//!
//! Four layers, each usable on its own:
//! - [`no_new_privs`]: set-uid binaries and file capabilities never raise popek's privileges
//!   (and seccomp filters need it when popek is not root);
//! - [`restrict_thread`]: a seccomp allow-list per [`ThreadKind`], built with rust-vmm's
//!   `seccompiler`; a call outside it kills popek with a one-line message naming the call and
//!   the thread kind, never proceeds;
//! - [`FsRules`]: Landlock rules (the `landlock` crate) limiting the host file system to what
//!   the command line named, plus signal and abstract-socket scoping where the kernel has it;
//! - [`close_inherited_fds`]: descriptors the caller did not name are not passed on.

mod filters;
mod fs;
mod sigsys;
mod tree;

use std::io;

pub use filters::{allow_list, ThreadKind};
pub use fs::{FsRules, FsStatus};

/// Why the jail could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// `prctl(PR_SET_NO_NEW_PRIVS)` failed.
    #[error("cannot set no-new-privileges: {0}")]
    NoNewPrivs(io::Error),
    /// The seccomp allow-list did not compile to BPF.
    #[error("cannot build the seccomp filter for {kind} threads: {why}")]
    Filter {
        /// The thread kind.
        kind: &'static str,
        /// seccompiler's complaint.
        why: String,
    },
    /// The kernel refused the filter.
    #[error("cannot install the seccomp filter for {kind} threads: {why}")]
    Install {
        /// The thread kind.
        kind: &'static str,
        /// The kernel's complaint.
        why: String,
    },
    /// Landlock rules could not be built or applied (a kernel without Landlock is not an error:
    /// see [`FsStatus`]).
    #[error("cannot apply the file-system rules: {0}")]
    Landlock(String),
    /// The SIGSYS handler that reports blocked calls could not be installed.
    #[error("cannot install the SIGSYS handler: {0}")]
    Signal(io::Error),
}

/// Set no-new-privileges on the calling thread and every thread and process it creates from now
/// on: exec of a set-uid program gains nothing, and seccomp filters may be installed unprivileged.
pub fn no_new_privs() -> Result<(), JailError> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(JailError::NoNewPrivs(io::Error::last_os_error()));
    }
    Ok(())
}

/// Confine the calling thread (and every thread or process it creates afterwards) to the
/// allow-list of `kind`. Also sets no-new-privileges and installs the SIGSYS reporter.
pub fn restrict_thread(kind: ThreadKind) -> Result<(), JailError> {
    no_new_privs()?;
    sigsys::install(kind)?;
    for prog in filters::compile(kind)? {
        seccompiler::apply_filter(&prog).map_err(|e| JailError::Install {
            kind: kind.name(),
            why: e.to_string(),
        })?;
    }
    Ok(())
}

/// Make the SIGSYS reporter name `kind` for this thread without installing another filter: for
/// a process that inherited its filter (popek exec re-executed by a guest execve).
pub fn report_as(kind: ThreadKind) -> Result<(), JailError> {
    sigsys::install(kind)
}

/// Close every descriptor from 3 up except those in `keep`, and make sure 0, 1 and 2 are open
/// (on /dev/null if the caller closed them), so that nothing popek opens later lands on a
/// standard stream. Call before any other thread exists.
pub fn close_inherited_fds(keep: &[i32]) -> io::Result<()> {
    for fd in 0..3 {
        // SAFETY: F_GETFD on an integer descriptor only queries it.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            // SAFETY: opening /dev/null with a constant C string; the lowest free descriptor
            // is `fd`, since the lower ones are open.
            let n = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    let mut keep: Vec<u32> = keep.iter().filter(|&&f| f > 2).map(|&f| f as u32).collect();
    keep.sort_unstable();
    keep.dedup();
    let mut lo = 3u32;
    for k in keep.iter().copied().chain(std::iter::once(u32::MAX)) {
        if k > lo {
            let hi = if k == u32::MAX { u32::MAX } else { k - 1 };
            // SAFETY: close_range on integer bounds; nothing in this process holds these
            // descriptors yet (the caller runs this first).
            if unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        lo = k.saturating_add(1);
    }
    Ok(())
}
