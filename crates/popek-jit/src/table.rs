//! Fixed tables of all-zero entries that cost nothing until used.

use std::ops::{Deref, DerefMut};

/// `n` entries of `T` in an anonymous mapping of their own: all-zero at first, and the kernel
/// backs a page only when it is touched. The JIT's lookup tables are 64-384 KiB each; from
/// the allocator (a hart's thread arena, which clears what it hands out) they cost a start-up
/// fault and a clear for every page, though a short run touches a few of them.
pub(crate) struct ZeroedTable<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: the table owns its entries like a `Box<[T]>` does; sending or sharing it sends or
// shares them.
unsafe impl<T: Send> Send for ZeroedTable<T> {}
// SAFETY: as for `Send`: shared access is `&[T]`.
unsafe impl<T: Sync> Sync for ZeroedTable<T> {}

impl<T: Copy> ZeroedTable<T> {
    /// Map `len` (> 0) entries, or `None` if the mapping fails.
    ///
    /// # Safety
    /// All-zero bytes must be a valid `T`.
    pub unsafe fn new(len: usize) -> Option<ZeroedTable<T>> {
        let bytes = std::mem::size_of::<T>().checked_mul(len)?;
        debug_assert!(bytes > 0 && std::mem::align_of::<T>() <= 4096);
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches
        // no existing memory.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        Some(ZeroedTable {
            ptr: p as *mut T,
            len,
        })
    }
}

impl<T> Deref for ZeroedTable<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` maps `len` entries, valid per `new`'s contract, owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl<T> DerefMut for ZeroedTable<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and `&mut self` makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl<T> Drop for ZeroedTable<T> {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made, which nothing uses after `self`.
        unsafe {
            libc::munmap(
                self.ptr as *mut libc::c_void,
                self.len * std::mem::size_of::<T>(),
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::ZeroedTable;

    #[test]
    fn a_table_starts_zero_and_keeps_what_is_written() {
        // SAFETY: zero is a valid u64.
        let mut t = unsafe { ZeroedTable::<u64>::new(100_000) }.expect("mapped");
        assert_eq!(t.len(), 100_000);
        assert!(t.iter().all(|&v| v == 0));
        t[99_999] = 7;
        t[0] = 3;
        assert_eq!((t[0], t[1], t[99_999]), (3, 0, 7));
    }
}
