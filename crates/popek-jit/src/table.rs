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
    /// Map `len` (> 0) entries, or `None` if the mapping fails. Backed where first used.
    ///
    /// # Safety
    /// All-zero bytes must be a valid `T`.
    pub unsafe fn new(len: usize) -> Option<ZeroedTable<T>> {
        // SAFETY: passed on.
        unsafe { ZeroedTable::map(len, 0) }
    }

    /// Map `len` (> 0) entries backed at once, for a small table whose every page a run
    /// soon reads and then writes: a first read of an untouched page maps the shared zero
    /// page and the first write faults a second time to replace it; backing it here costs one
    /// call instead (the JIT's block tables: 48 such double faults in a `popek exec` of
    /// `busybox true`, and in every restored clone).
    ///
    /// # Safety
    /// All-zero bytes must be a valid `T`.
    pub unsafe fn new_backed(len: usize) -> Option<ZeroedTable<T>> {
        // SAFETY: passed on.
        unsafe { ZeroedTable::map(len, libc::MAP_POPULATE) }
    }

    /// Map `len` (> 0) entries with the extra mmap `flags`.
    ///
    /// # Safety
    /// All-zero bytes must be a valid `T`.
    unsafe fn map(len: usize, flags: libc::c_int) -> Option<ZeroedTable<T>> {
        let bytes = std::mem::size_of::<T>().checked_mul(len)?;
        debug_assert!(bytes > 0 && std::mem::align_of::<T>() <= 4096);
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches
        // no existing memory.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
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

    /// How many of the host pages of `t` are backed.
    fn backed_pages(t: &ZeroedTable<u64>) -> usize {
        let bytes = t.len() * 8;
        let mut vec = vec![0u8; bytes.div_ceil(4096)];
        // SAFETY: `t` maps `bytes` bytes from a page-aligned address; `vec` has a byte a page.
        let r = unsafe { libc::mincore(t.ptr as *mut libc::c_void, bytes, vec.as_mut_ptr()) };
        assert_eq!(r, 0);
        vec.iter().filter(|b| *b & 1 != 0).count()
    }

    #[test]
    fn a_backed_table_is_backed_at_once_and_a_plain_one_where_written() {
        // SAFETY: zero is a valid u64.
        let backed = unsafe { ZeroedTable::<u64>::new_backed(8192) }.expect("mapped");
        assert_eq!(backed_pages(&backed), 16);
        assert!(backed.iter().all(|&v| v == 0));
        // SAFETY: as above.
        let mut plain = unsafe { ZeroedTable::<u64>::new(8192) }.expect("mapped");
        plain[5000] = 1;
        assert_eq!(backed_pages(&plain), 1);
    }
}
