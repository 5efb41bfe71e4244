//! `perf` symbols for translated code: with `POPEK_PERF_MAP` set in the environment, each
//! translated block is listed in `/tmp/perf-PID.map` (the file `perf report` reads for
//! JIT-generated code) as `popek-jit:0xGUESTPC`, so a profile shows which guest code the host
//! time went to.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

/// The map every hart's engine appends to, if the user asked for it.
static MAP: OnceLock<Option<Mutex<File>>> = OnceLock::new();
/// Set after a failed write (reported once): no more lines.
static BROKEN: AtomicBool = AtomicBool::new(false);

/// Open the perf map if `POPEK_PERF_MAP` is set. Call it before the process sandboxes
/// itself (a sandboxed hart thread can no longer create files in /tmp); a failure to open the
/// map is reported and profiling goes on without JIT symbols.
pub fn open_perf_map() {
    MAP.get_or_init(|| {
        std::env::var_os("POPEK_PERF_MAP")?;
        let path = format!("/tmp/perf-{}.map", std::process::id());
        match OpenOptions::new().create(true).append(true).open(&path) {
            Ok(f) => Some(Mutex::new(f)),
            Err(e) => {
                tracing::warn!("POPEK_PERF_MAP: cannot open {path}: {e}; no JIT symbols");
                None
            }
        }
    });
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
