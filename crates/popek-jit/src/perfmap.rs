//! `perf` symbols for translated code: with `POPEK_PERF_MAP` set in the environment, each
//! translated block is listed in `/tmp/perf-PID.map` (the file `perf report` reads for
//! JIT-generated code) as `popek-jit:0xGUESTPC`, so a profile shows which guest code the host
//! time went to.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

/// The map every hart's engine appends to, if the user asked for it.
static MAP: OnceLock<Option<Mutex<File>>> = OnceLock::new();
/// Set after a failed write (reported once): no more lines.
static BROKEN: AtomicBool = AtomicBool::new(false);

/// Open the perf map if `POPEK_PERF_MAP` is set. Call it before the process sandboxes
/// itself (a sandboxed hart thread can no longer create files in /tmp); a failure to open the
/// map is reported and profiling goes on without JIT symbols.
///
/// With `lowest_fd`, the map's descriptor is moved to the lowest free number at or above it:
/// `popek exec` keeps its own descriptors high, out of the numbers the guest gets. Returns the
/// map's descriptor, for the caller to keep out of the guest's reach.
pub fn open_perf_map(lowest_fd: Option<i32>) -> Option<i32> {
    let map = MAP.get_or_init(|| {
        std::env::var_os("POPEK_PERF_MAP")?;
        let path = format!("/tmp/perf-{}.map", std::process::id());
        let opened = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|f| match lowest_fd {
                Some(low) => move_high(f, low),
                None => Ok(f),
            });
        match opened {
            Ok(f) => Some(Mutex::new(f)),
            Err(e) => {
                tracing::warn!("POPEK_PERF_MAP: cannot open {path}: {e}; no JIT symbols");
                None
            }
        }
    });
    let f = map.as_ref()?.lock().unwrap_or_else(|e| e.into_inner());
    Some(f.as_raw_fd())
}

/// `f` on the lowest free descriptor at or above `low` (close-on-exec).
fn move_high(f: File, low: i32) -> std::io::Result<File> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own, with an integer argument.
    let high = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_DUPFD_CLOEXEC, low) };
    if high < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `high` is a fresh descriptor nothing else owns.
    Ok(unsafe { File::from_raw_fd(high) })
}

/// List the `len` bytes of code at `addr`, translated from guest virtual `pc`.
pub(crate) fn block(addr: *const u8, len: usize, pc: u64) {
    if let (Some(Some(m)), false) = (MAP.get(), BROKEN.load(Ordering::Relaxed)) {
        let line = format!("{:x} {len:x} popek-jit:{pc:#x}\n", addr as usize);
        let mut f = m.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = f.write_all(line.as_bytes()) {
            if !BROKEN.swap(true, Ordering::Relaxed) {
                tracing::warn!("POPEK_PERF_MAP: {e}; no more JIT symbols");
            }
        }
    }
}
