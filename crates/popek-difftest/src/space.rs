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

/// Where the reservation goes. `popek exec` puts its own below 2 GiB when it can (the JIT then
/// folds the base into its direct loads' displacements) and anywhere when it cannot (the base
/// added from a register): runs test both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Below 2 GiB (the first free 2 MiB-aligned place from 1 GiB; anywhere if none is).
    Low,
    /// Where the kernel chooses (far above 2 GiB on x86-64).
    Anywhere,
}

/// The reservation: the span plus its guard page, accessible only at `BASE..END`.
pub struct Space {
    base: NonNull<u8>,
    len: usize,
}

impl Space {
    /// Reserve the span where `placement` says, and make the layout's memory readable and
    /// writable.
    pub fn new(placement: Placement) -> std::io::Result<Space> {
        let len = (1usize << SPAN_BITS) + 4096;
        let low = (0..512).map(|k| (1usize << 30) + (k << 21));
        let p = match placement {
            // Other threads' runs hold some of these places.
            Placement::Low => low
                .filter_map(|hint| reserve(hint, len, libc::MAP_FIXED_NOREPLACE))
                .next(),
            Placement::Anywhere => None,
        };
        let p = match p.or_else(|| reserve(0, len, 0)) {
            Some(p) => p,
            None => return Err(std::io::Error::last_os_error()),
        };
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

/// A fresh anonymous PROT_NONE mapping of `len` bytes at `hint` (with `flags`) or where the
/// kernel chooses (`hint` 0); `None` if refused.
fn reserve(hint: usize, len: usize, flags: libc::c_int) -> Option<*mut libc::c_void> {
    // SAFETY: a new anonymous mapping; with MAP_FIXED_NOREPLACE the kernel refuses a range
    // that holds anything, so nothing else refers to it.
    let p = unsafe {
        libc::mmap(
            hint as *mut libc::c_void,
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | flags,
            -1,
            0,
        )
    };
    (p != libc::MAP_FAILED).then_some(p)
}

impl Drop for Space {
    fn drop(&mut self) {
        // SAFETY: the reservation made in `new`; the hart using it is gone.
        unsafe { libc::munmap(self.base.as_ptr() as *mut libc::c_void, self.len) };
    }
}
