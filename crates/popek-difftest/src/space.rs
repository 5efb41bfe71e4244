//! The test program's memory laid out as `popek exec` lays a process's out: one host
//! reservation with guest address `g` at `base + g`, accessible only where the program has
//! memory (the layout's `BASE..END`), and a guard page past a small span. The hart is told
//! the host checks its loads there ([`popek_cpu::Hart::let_host_check_reads`]), so the JIT's
//! loads read the host directly and every load outside the layout faults on the host and takes
//! its slow path, as in `popek exec`. Stores keep the TLB: the test's code is writable (a
//! store the host let through would not drop decoded code).

use std::ptr::NonNull;

use crate::layout::{BASE, END};

/// Bits of the span below which the host checks loads: 1 MiB holds the layout.
pub const SPAN_BITS: u8 = 20;

/// The reservation: the span plus its guard page, accessible only at `BASE..END`.
pub struct Space {
    base: NonNull<u8>,
    len: usize,
}

impl Space {
    /// Reserve the span, and make the layout's memory readable and writable.
    pub fn new() -> std::io::Result<Space> {
        let len = (1usize << SPAN_BITS) + 4096;
        // SAFETY: a fresh anonymous PROT_NONE reservation; nothing else refers to that range.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let space = Space {
            base: NonNull::new(p as *mut u8).expect("mmap gave a mapping"),
            len,
        };
        // SAFETY: `BASE..END` lies inside the reservation just made.
        let opened = unsafe {
            libc::mprotect(
                space.host(BASE) as *mut libc::c_void,
                (END - BASE) as usize,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        if opened != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(space)
    }

    /// The host address of guest address `g` (inside the span).
    pub fn host(&self, g: u64) -> *mut u8 {
        debug_assert!(g < 1 << SPAN_BITS);
        self.base.as_ptr().wrapping_add(g as usize)
    }

    /// What host minus guest address is everywhere: the data TLB's one addend.
    pub fn addend(&self) -> u64 {
        self.base.as_ptr() as u64
    }
}

impl Drop for Space {
    fn drop(&mut self) {
        // SAFETY: the reservation made in `new`; the hart using it is gone.
        unsafe { libc::munmap(self.base.as_ptr() as *mut libc::c_void, self.len) };
    }
}
