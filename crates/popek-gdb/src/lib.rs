//! popek's gdb stub: `--gdb ADDR` on both VMs. The gdb remote protocol is `gdbstub`'s; this
//! crate adds the listener, the RV64GC register description (with FP registers and CSRs) and
//! [`DebugHub`], where harts park while gdb has the machine stopped. Each hart is a gdb thread.
//!
//! Breakpoints are a pc set the hub checks before each instruction (guest memory is never
//! patched, so the decode cache needs no care) and write watchpoints compare the watched bytes
//! after each instruction: both only while some are set.

mod hub;
mod regs;
mod stub;

use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

pub use hub::DebugHub;
pub use regs::{PopekRiscv64, Regs};

/// Why the gdb listener could not be set up; each names the fix.
#[derive(Debug, thiserror::Error)]
pub enum GdbError {
    /// The address is neither `tcp:HOST:PORT` nor a socket path.
    #[error("--gdb {0}: expected tcp:HOST:PORT (e.g. tcp:127.0.0.1:1234) or a unix socket path")]
    BadAddress(String),
    /// Binding failed (port in use, no permission, ...).
    #[error("--gdb {addr}: cannot listen: {reason} (pick another port or path)")]
    Bind {
        /// The address as given.
        addr: String,
        /// The host's reason.
        reason: std::io::Error,
    },
    /// The unix socket path exists already.
    #[error("--gdb {0}: the path exists: remove it or pick another path")]
    PathExists(String),
}

/// Where gdb connects: bound before popek confines itself, served by [`spawn`].
#[derive(Debug)]
pub enum GdbListener {
    /// `tcp:HOST:PORT`.
    Tcp(TcpListener),
    /// A unix socket path (left behind at exit, like QEMU's: the jail forbids removing it).
    Unix(UnixListener, PathBuf),
}

impl GdbListener {
    /// Parse `spec` (`tcp:HOST:PORT` or a path) and start listening.
    pub fn bind(spec: &str) -> Result<GdbListener, GdbError> {
        let bind_err = |reason| GdbError::Bind {
            addr: spec.to_string(),
            reason,
        };
        if let Some(addr) = spec.strip_prefix("tcp:") {
            let sa: std::net::SocketAddr = addr
                .parse()
                .map_err(|_| GdbError::BadAddress(spec.to_string()))?;
            return TcpListener::bind(sa)
                .map(GdbListener::Tcp)
                .map_err(bind_err);
        }
        if spec.is_empty() || spec.contains(':') && !spec.contains('/') {
            return Err(GdbError::BadAddress(spec.to_string()));
        }
        let path = PathBuf::from(spec);
        if path.symlink_metadata().is_ok() {
            return Err(GdbError::PathExists(spec.to_string()));
        }
        UnixListener::bind(&path)
            .map(|l| GdbListener::Unix(l, path))
            .map_err(bind_err)
    }

    /// The listening descriptor (to keep it open across `popek exec`'s descriptor cleanup).
    pub fn raw_fd(&self) -> RawFd {
        match self {
            GdbListener::Tcp(l) => l.as_raw_fd(),
            GdbListener::Unix(l, _) => l.as_raw_fd(),
        }
    }

    /// The unix socket path to remove at exit, if any.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            GdbListener::Tcp(_) => None,
            GdbListener::Unix(_, p) => Some(p),
        }
    }
}

/// Serve gdb on its own thread: accept one connection at a time, stop the machine when gdb
/// attaches, let it run free again when gdb detaches. `on_start` runs first on the new thread
/// (the caller's jail).
pub fn spawn(
    listener: GdbListener,
    hub: Arc<DebugHub>,
    on_start: Box<dyn FnOnce() + Send>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("gdb".into())
        .spawn(move || {
            on_start();
            stub::serve(listener, hub)
        })
}
