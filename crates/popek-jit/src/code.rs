//! The code buffer: one executable mapping filled front to back, emptied whole.

use crate::JitError;

/// Executable memory for translated blocks. Blocks are appended; when the next one does not fit,
/// the owner flushes every translation and calls [`CodeBuf::clear`].
pub(crate) struct CodeBuf {
    base: *mut u8,
    size: usize,
    used: usize,
    /// Bytes at the front kept across [`CodeBuf::clear`] (see [`CodeBuf::keep`]).
    kept: usize,
}

impl CodeBuf {
    /// Map `size` bytes of readable, writable and executable memory.
    pub fn new(size: usize) -> Result<CodeBuf, JitError> {
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches no
        // existing memory.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(JitError::CodeMemory {
                bytes: size,
                source: std::io::Error::last_os_error(),
            });
        }
        // Blocks are appended front to back: past the first 2 MiB (all a short run needs,
        // kept in small pages so it does not clear a huge one), huge pages take one fault per
        // 2 MiB of code instead of one per 4 KiB (a hint; without them it works the same).
        const HEAD: usize = 2 << 20;
        if size > HEAD {
            // SAFETY: advice on the mapping just made, which nothing uses yet.
            unsafe { libc::madvise(p.add(HEAD), size - HEAD, libc::MADV_HUGEPAGE) };
        }
        Ok(CodeBuf {
            base: p as *mut u8,
            size,
            used: 0,
            kept: 0,
        })
    }

    /// Address the next block will be copied to (its code is assembled for this address).
    pub fn next_addr(&self) -> usize {
        self.base as usize + self.used
    }

    /// Bytes still free.
    pub fn free(&self) -> usize {
        self.size - self.used
    }

    /// Copy `code` (assembled for [`CodeBuf::next_addr`]) in; returns its address, or `None`
    /// when it does not fit.
    pub fn push(&mut self, code: &[u8]) -> Option<*const u8> {
        if code.len() > self.free() {
            return None;
        }
        // Keep entries 16-byte aligned, as compilers do for hot code.
        let at = self.used;
        // SAFETY: `at + code.len() <= size`, inside our mapping; no block runs while we write
        // (translation happens between blocks), and the bytes written are never in use.
        unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), self.base.add(at), code.len()) };
        self.used = (at + code.len() + 15) & !15;
        self.used = self.used.min(self.size);
        // SAFETY: as above, `at` is inside the mapping.
        Some(unsafe { self.base.add(at) } as *const u8)
    }

    /// Copy `code` in like [`CodeBuf::push`], to stay for the buffer's life: [`CodeBuf::clear`]
    /// empties only what comes after it. For code shared by every block.
    pub fn keep(&mut self, code: &[u8]) -> Option<*const u8> {
        let p = self.push(code)?;
        self.kept = self.used;
        Some(p)
    }

    /// Forget every block (the caller has dropped all references to them).
    pub fn clear(&mut self) {
        self.used = self.kept;
    }
}

impl Drop for CodeBuf {
    fn drop(&mut self) {
        // SAFETY: `base`/`size` are exactly the mapping made in `new`, and no code in it can run
        // any more: the engine owning this buffer is being dropped.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.size) };
    }
}

// SAFETY: the buffer is plain memory owned by one engine; moving it to another thread moves the
// engine with it.
unsafe impl Send for CodeBuf {}
