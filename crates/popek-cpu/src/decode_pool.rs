//! Memory for the decode cache's pages.
//!
//! A decoded page is 16 KiB, but a guest usually runs a few hundred bytes of each code page it
//! touches. Pages taken from the pool are all zero (the all-zero slot is
//! [`crate::decode::Insn::undecoded`]) and nothing writes them until an instruction is
//! decoded, so untouched parts cost nothing. Allocating each page on its own (a boxed array
//! filled with "undecoded") touched all of each: a restored guest spent a tenth of its
//! time in the host's page faults for them.
//!
//! The pool maps its memory in large chunks the kernel zeroes on first touch and hands pages
//! out front to back. Each decoded page starts on a host page boundary, so a page given back
//! is returned to the kernel whole (`MADV_DONTNEED`) and is zero again, and unbacked, when
//! taken next. Clearing given-back pages by writing zeros instead backed the whole of every
//! page the cache ever recycled: a Linux boot, which starts its decode cache over several
//! times, held 24 MiB of cleared pages. The pool stays in small pages, backed only where code
//! was decoded: backing whole decoded pages in advance, and transparent huge pages, made a
//! restore a few milliseconds faster but added 8 MiB to each restored clone (100 clones of
//! the default guest: 2.1 instead of 1.2 GiB).

use std::ptr::NonNull;

use crate::mmu::DecodedPage;

/// Pages per chunk: more than the decode cache keeps, so one chunk usually serves a hart's
/// whole life (24 MiB of address space; only what decoded code touches is backed).
const CHUNK_PAGES: usize = 1536;

/// Host page size the pool aligns decoded pages to (4 KiB on x86-64 and RISC-V Linux hosts;
/// a larger host page only makes `MADV_DONTNEED` round inwards, see [`DecodePool::give`]).
pub(crate) const HOST_PAGE: usize = 4096;

/// Distance between two decoded pages in a chunk: the page rounded up to whole host pages.
pub(crate) const STRIDE: usize = std::mem::size_of::<DecodedPage>().next_multiple_of(HOST_PAGE);

/// Bytes of one chunk.
const CHUNK_BYTES: usize = CHUNK_PAGES * STRIDE;

/// One page of the pool, owned by the decode cache until it is given back; or a page of a
/// [`crate::SharedDecode`] area, which is only read and never given back.
pub(crate) struct PooledPage {
    page: NonNull<DecodedPage>,
    shared: bool,
}

impl PooledPage {
    /// A page of the pool.
    fn pooled(page: NonNull<DecodedPage>) -> PooledPage {
        PooledPage {
            page,
            shared: false,
        }
    }

    /// A complete page of a shared decode area (see the shared_decode module).
    pub fn shared(page: NonNull<DecodedPage>) -> PooledPage {
        PooledPage { page, shared: true }
    }

    /// The page.
    pub fn as_ptr(&self) -> *mut DecodedPage {
        self.page.as_ptr()
    }
}

/// Zeroed decoded pages, handed out and recycled (see the module comment).
pub(crate) struct DecodePool {
    chunks: Vec<NonNull<u8>>,
    /// Pages of the newest chunk not handed out yet (never written: still zero).
    fresh: usize,
    /// Pages given back (returned to the kernel: zero again).
    recycled: Vec<NonNull<DecodedPage>>,
}

// SAFETY: the pool only holds pointers to memory it owns; it moves with the hart that owns it.
unsafe impl Send for DecodePool {}
// SAFETY: as above, a page moves with the decode cache holding it.
unsafe impl Send for PooledPage {}

/// Map a chunk, zeroed (by the kernel, on first touch). `None` when the host has no memory
/// to give.
fn map_chunk() -> Option<NonNull<u8>> {
    // SAFETY: a new anonymous private mapping at an address of the kernel's choosing touches
    // no existing memory.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            CHUNK_BYTES,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    // Small pages even where transparent huge pages are on for everything (see the module
    // comment); a kernel without THP refuses the advice, which changes nothing then.
    // SAFETY: advice on the mapping just made.
    unsafe { libc::madvise(p, CHUNK_BYTES, libc::MADV_NOHUGEPAGE) };
    NonNull::new(p as *mut u8)
}

/// How many of the host pages of the `len` bytes at `p` are backed (`mincore`), or `None` if
/// the kernel would not say.
///
/// # Safety
/// `p` must start a mapping of ours (host-page aligned) at least `len` bytes long.
unsafe fn backed_host_pages(p: *mut u8, len: usize) -> Option<usize> {
    let mut vec = vec![0u8; len.div_ceil(HOST_PAGE)];
    // SAFETY: per this function's contract; `vec` has a byte per host page of the range.
    let r = unsafe { libc::mincore(p as *mut libc::c_void, len, vec.as_mut_ptr()) };
    (r == 0).then(|| vec.iter().filter(|b| *b & 1 != 0).count())
}

impl DecodePool {
    /// An empty pool; it takes memory on the first [`DecodePool::take`].
    pub fn new() -> DecodePool {
        DecodePool {
            chunks: Vec::new(),
            fresh: 0,
            recycled: Vec::new(),
        }
    }

    /// A page whose every slot is [`crate::decode::Insn::undecoded`].
    pub fn take(&mut self) -> PooledPage {
        if let Some(p) = self.recycled.pop() {
            // Zero since `give` (a valid page: the all-zero `Insn` is the undecoded one).
            return PooledPage::pooled(p);
        }
        if self.fresh == 0 {
            let Some(chunk) = map_chunk() else {
                // As when any other allocation fails.
                std::alloc::handle_alloc_error(std::alloc::Layout::new::<DecodedPage>())
            };
            self.chunks.push(chunk);
            self.fresh = CHUNK_PAGES;
        }
        let newest = *self.chunks.last().expect("a chunk was just made");
        let index = CHUNK_PAGES - self.fresh;
        self.fresh -= 1;
        // SAFETY: `index < CHUNK_PAGES`: a page inside the newest chunk, never handed out.
        PooledPage::pooled(unsafe { newest.add(index * STRIDE) }.cast())
    }

    /// Bytes of host memory backing the pool's chunks (what the decode cache costs: only the
    /// host pages decoded instructions were written to, since they were last given back).
    pub fn resident_bytes(&self) -> u64 {
        let pages: usize = self
            .chunks
            .iter()
            // SAFETY: every chunk is a mapping of `CHUNK_BYTES` made by `map_chunk`.
            .filter_map(|c| unsafe { backed_host_pages(c.as_ptr(), CHUNK_BYTES) })
            .sum();
        (pages * HOST_PAGE) as u64
    }

    /// Give `page` back; nothing may point into it any more. Its memory goes back to the
    /// kernel, which zeroes it when it is touched again.
    /// A shared page is simply forgotten: it is not the pool's.
    pub fn give(&mut self, page: PooledPage) {
        if page.shared {
            return;
        }
        let p = page.page.as_ptr() as *mut u8;
        // SAFETY: `p` starts a `STRIDE`-byte slot of one of our chunks (host-page aligned, as
        // chunks and strides are) that nobody holds any more; dropping a private anonymous
        // mapping's pages makes them read as zero. `MADV_DONTNEED` cannot fail on such a range.
        let dropped = unsafe { libc::madvise(p as *mut libc::c_void, STRIDE, libc::MADV_DONTNEED) };
        if dropped != 0 {
            // A host whose pages are larger than `HOST_PAGE` refuses the unaligned range:
            // clear the page by hand.
            // SAFETY: as above; zero bytes are a valid `Insn` (the undecoded one).
            unsafe { page.page.as_ptr().write_bytes(0, 1) };
        }
        self.recycled.push(page.page);
    }
}

impl Drop for DecodePool {
    fn drop(&mut self) {
        for c in &self.chunks {
            // SAFETY: every chunk is a mapping of `CHUNK_BYTES` made by `map_chunk`; the decode
            // cache holding pages of it is dropped with (before) the pool.
            unsafe { libc::munmap(c.as_ptr() as *mut libc::c_void, CHUNK_BYTES) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Insn;
    use crate::mmu::SLOTS;

    #[test]
    fn pages_start_undecoded_and_come_back_cleared() {
        let mut pool = DecodePool::new();
        let a = pool.take();
        // SAFETY: the page is ours until given back.
        let page = unsafe { &mut *a.as_ptr() };
        assert!(page.iter().all(|i| *i == Insn::undecoded()));
        page[7] = Insn::illegal(0x1234, 4);
        let b = pool.take();
        assert_ne!(a.as_ptr(), b.as_ptr());
        let reused = a.as_ptr();
        pool.give(a);
        let c = pool.take();
        assert_eq!(c.as_ptr(), reused, "a given-back page is taken first");
        // SAFETY: as above.
        assert!(unsafe { &*c.as_ptr() }
            .iter()
            .all(|i| *i == Insn::undecoded()));
    }

    /// How many of the host pages of `page` are backed.
    fn resident_host_pages(page: &PooledPage) -> usize {
        // SAFETY: the range is the page's slot in a chunk of the pool.
        unsafe { backed_host_pages(page.as_ptr() as *mut u8, STRIDE) }.expect("mincore")
    }

    #[test]
    fn a_given_back_page_returns_its_memory() {
        let mut pool = DecodePool::new();
        let a = pool.take();
        assert_eq!(
            a.as_ptr() as usize % HOST_PAGE,
            0,
            "pages start on host pages"
        );
        // SAFETY: the page is ours until given back.
        let page = unsafe { &mut *a.as_ptr() };
        let mut written = std::collections::BTreeSet::new();
        for i in (0..SLOTS).step_by(300) {
            page[i] = Insn::illegal(0x1234, 4);
            written.insert(i * std::mem::size_of::<Insn>() / HOST_PAGE);
        }
        assert!(written.len() > 1);
        assert_eq!(
            resident_host_pages(&a),
            written.len(),
            "every written host page is backed, and only those"
        );
        pool.give(a);
        let b = pool.take();
        assert_eq!(
            resident_host_pages(&b),
            0,
            "a recycled page is unbacked until written"
        );
        // SAFETY: as above.
        assert!(unsafe { &*b.as_ptr() }
            .iter()
            .all(|i| *i == Insn::undecoded()));
    }

    #[test]
    fn a_full_chunk_starts_another() {
        let mut pool = DecodePool::new();
        let pages: Vec<PooledPage> = (0..CHUNK_PAGES + 1).map(|_| pool.take()).collect();
        assert_eq!(pool.chunks.len(), 2);
        let mut addrs: Vec<usize> = pages.iter().map(|p| p.as_ptr() as usize).collect();
        addrs.sort_unstable();
        addrs.dedup();
        assert_eq!(addrs.len(), CHUNK_PAGES + 1, "no page handed out twice");
    }
}
