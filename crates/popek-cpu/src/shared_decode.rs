//! Decoded pages shared by the processes that run clones of one snapshot at the same time.
//!
//! A restored clone spends a sixth of its time on cold code: decoding the kernel's
//! instructions into its decode cache, and the host's page faults for the cache's memory
//! (a decoded page is four times the guest page it decodes). Every clone of a snapshot starts
//! from the same RAM, so every clone decodes the same pages into the same slots.
//!
//! The board maps an area shared by the clones (a file all of them map, see
//! [`SharedDecode::layout`]) and the snapshot's RAM image read-only beside it. A hart that
//! starts executing from a guest page whose bytes are still the image's takes the area's
//! decoded page for it instead of one of its own. The second clone to need a page decodes all
//! of it at once, from the image, and then marks it complete (the first only marks it as
//! wanted: a restore that runs alone decodes as it always did); a complete page is never
//! written again, by anyone, so the others only read it. What a shared page holds is a
//! function of the image's bytes alone: a clone whose page differs from the image (its guest
//! wrote it) uses a page of its own, and writes to a page with decoded code drop it from the
//! hart's cache as they always do (see `Hart::forget_writes_to`). The decoded slots of a
//! 4-byte instruction that straddles the page's end stay undecoded there; the interpreter
//! runs it without caching it (see `Hart::step_uncached`).
//!
//! The area is a cache rebuilt by the clones running at once, never part of a snapshot: it
//! holds nothing a restore needs, and the board empties it when its last user exits.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use crate::decode::{raw_in_page, Insn};
use crate::decode_pool::HOST_PAGE;
use crate::exec::decode_for_cache;
use crate::mmu::{DecodedPage, SLOTS};

/// What the area's header holds, so that an area of another layout is never used.
const MAGIC: &[u8; 16] = b"popek-decode-v1\0";

/// A page's state in the area: no process has run code from it yet.
const EMPTY: u8 = 0;
/// One process ran code from it (and decoded it on its own, as a restore with nobody to
/// share with would): the next to need it decodes it here.
const WANTED: u8 = 1;
/// A process is decoding it: the others use pages of their own for it meanwhile.
const FILLING: u8 = 2;
/// Decoded and never written again.
const COMPLETE: u8 = 3;

/// Where the parts of an area covering a number of guest pages lie, in bytes from its start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedDecodeLayout {
    /// The page states: a byte per guest page.
    pub states: usize,
    /// The decoded pages, [`SharedDecode::STRIDE`] bytes apart.
    pub pages: usize,
    /// The whole area's length.
    pub len: usize,
}

/// The decoded pages of one snapshot's RAM shared between the processes restoring it (see the
/// module comment), with the image they are decoded from.
pub struct SharedDecode {
    /// Guest-physical page number of the image's first page.
    first_ppn: u64,
    /// Guest pages the image and the area cover.
    pages: u64,
    /// The area (see [`SharedDecode::layout`]).
    area: NonNull<u8>,
    layout: SharedDecodeLayout,
    /// The snapshot's RAM image, `pages` pages, read-only.
    image: NonNull<u8>,
    /// Pages this process took from the area.
    taken: AtomicU64,
    /// Of those, the pages this process decoded into it.
    filled: AtomicU64,
    /// Keeps the mappings alive (and empties the area when its last user goes).
    _owner: Box<dyn Send + Sync>,
}

// SAFETY: the area and the image are mappings owned through `_owner`, which is `Send + Sync`;
// the area's shared words are only accessed atomically and its complete pages only read.
unsafe impl Send for SharedDecode {}
// SAFETY: as for `Send`.
unsafe impl Sync for SharedDecode {}

impl std::fmt::Debug for SharedDecode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedDecode")
            .field("first_ppn", &self.first_ppn)
            .field("pages", &self.pages)
            .finish_non_exhaustive()
    }
}

impl SharedDecode {
    /// Distance between two decoded pages in the area: a decoded page rounded up to whole
    /// host pages, as in the decode pool.
    pub const STRIDE: usize = crate::decode_pool::STRIDE;

    /// The layout of an area for `pages` guest pages: a header page, the page states, the
    /// decoded pages. All zero is an empty area.
    pub fn layout(pages: u64) -> SharedDecodeLayout {
        let states = HOST_PAGE;
        let pages_at = states + (pages as usize).next_multiple_of(HOST_PAGE);
        SharedDecodeLayout {
            states,
            pages: pages_at,
            len: pages_at + pages as usize * Self::STRIDE,
        }
    }

    /// The shared decode cache for the `pages` guest pages from guest-physical page number
    /// `first_ppn`, in the area at `area` (laid out as [`SharedDecode::layout`] says, shared
    /// with the other processes restoring the same image), decoded from the image at `image`.
    /// `None` if the area's header says it was made for another layout.
    ///
    /// # Safety
    /// `area` must be a writable mapping of `layout(pages).len` bytes, all zero or only ever
    /// written by this module (in any process), and `image` a readable mapping of `pages`
    /// 4 KiB pages that nobody writes while any process uses the area; both host-page
    /// aligned and alive until `owner` is dropped.
    pub unsafe fn new(
        first_ppn: u64,
        pages: u64,
        area: NonNull<u8>,
        image: NonNull<u8>,
        owner: Box<dyn Send + Sync>,
    ) -> Option<SharedDecode> {
        let mut header = [0u8; 32];
        header[..16].copy_from_slice(MAGIC);
        header[16..24].copy_from_slice(&pages.to_le_bytes());
        header[24..32].copy_from_slice(&(Self::STRIDE as u64).to_le_bytes());
        // SAFETY: the header page is the area's first (per the contract, writable). Every
        // process writes the same bytes there, so a write racing another changes nothing.
        let found = unsafe { std::slice::from_raw_parts_mut(area.as_ptr(), header.len()) };
        if found.iter().all(|b| *b == 0) {
            found.copy_from_slice(&header);
        } else if *found != header {
            return None;
        }
        Some(SharedDecode {
            first_ppn,
            pages,
            area,
            layout: Self::layout(pages),
            image,
            taken: AtomicU64::new(0),
            filled: AtomicU64::new(0),
            _owner: owner,
        })
    }

    /// The state of page `index`.
    fn state(&self, index: u64) -> &AtomicU8 {
        // SAFETY: `index < pages`, so the byte is inside the states part of the area; every
        // process accesses it atomically only.
        unsafe {
            &*(self.area.as_ptr().add(self.layout.states + index as usize) as *const AtomicU8)
        }
    }

    /// The decoded page of page `index` in the area.
    fn slots(&self, index: u64) -> *mut DecodedPage {
        // SAFETY: `index < pages`: a decoded page inside the area.
        unsafe {
            self.area
                .as_ptr()
                .add(self.layout.pages + index as usize * Self::STRIDE)
        }
        .cast()
    }

    /// The decoded page for guest-physical page `ppn`, whose bytes are at `live` now, if the
    /// area can give one: the page is the image's, unchanged, and its shared page is complete
    /// or this call completes it. `None`: the caller decodes the page into a page of its own.
    ///
    /// A page is decoded here by the second process that needs it: a restore running alone
    /// only marks the pages it runs (decoding all of a page costs more than decoding, lazily,
    /// the part that runs; a lone restore of the default guest took 51 instead of 21 ms).
    ///
    /// The caller must already take the slow path for its own writes to the page (so that
    /// they drop what it gets here).
    ///
    /// # Safety
    /// `live` must point at the 4 KiB of guest RAM holding page `ppn`.
    pub(crate) unsafe fn page(&self, ppn: u64, live: *const u8) -> Option<NonNull<DecodedPage>> {
        let index = ppn
            .checked_sub(self.first_ppn)
            .filter(|i| *i < self.pages)?;
        let state = self.state(index);
        match state.load(Ordering::Acquire) {
            EMPTY => {
                // Losing this race to another process marking it is as good.
                let _ = state.compare_exchange(EMPTY, WANTED, Ordering::Relaxed, Ordering::Relaxed);
                return None;
            }
            // Being decoded by another process (or claimed by one that died doing it).
            FILLING => return None,
            _ => {}
        }
        // SAFETY: `index < pages`: a page of the image.
        let image = unsafe { self.image.as_ptr().add(index as usize * HOST_PAGE) };
        // SAFETY: both are 4 KiB of readable memory (the contracts of `page` and `new`).
        let same = unsafe {
            std::slice::from_raw_parts(live, HOST_PAGE)
                == std::slice::from_raw_parts(image, HOST_PAGE)
        };
        if !same {
            return None;
        }
        let slots = self.slots(index);
        if state.load(Ordering::Acquire) != COMPLETE {
            if state
                .compare_exchange(WANTED, FILLING, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                // Another process claimed it first.
                return None;
            }
            // SAFETY: this process claimed the page: nobody else writes it or reads it until
            // it is complete; `image` is the page's 4 KiB.
            unsafe { fill(slots, image) };
            state.store(COMPLETE, Ordering::Release);
            self.filled.fetch_add(1, Ordering::Relaxed);
        }
        self.taken.fetch_add(1, Ordering::Relaxed);
        NonNull::new(slots)
    }

    /// Whether `page` is one of the area's pages (never written: see the module comment).
    #[inline(always)]
    pub(crate) fn holds(&self, page: *const DecodedPage) -> bool {
        let at = (page as usize).wrapping_sub(self.area.as_ptr() as usize);
        at < self.layout.len
    }

    /// Pages this process took from the area, and how many of them it decoded itself.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.taken.load(Ordering::Relaxed),
            self.filled.load(Ordering::Relaxed),
        )
    }
}

/// Decode every instruction of the guest page at `image` into `slots`, which are all
/// undecoded: one at each 2-byte offset, as the interpreter would decode it there, except a
/// 4-byte instruction straddling the page's end (it depends on the next page).
///
/// # Safety
/// `slots` must be a decoded page nobody else accesses, `image` 4 KiB of readable memory.
unsafe fn fill(slots: *mut DecodedPage, image: *const u8) {
    for slot in 0..SLOTS - 2 {
        // SAFETY: `2 * slot < 4096`, in the page.
        if let Some(raw) = unsafe { raw_in_page(image, 2 * slot) } {
            let insn = decode_for_cache(raw);
            debug_assert_ne!(insn, Insn::undecoded(), "every raw value decodes");
            // SAFETY: the slot is in the page, which only this call accesses.
            unsafe { (*slots)[slot] = insn };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode;

    /// Zeroed, page-aligned memory of `len` bytes (a stand-in for a mapping).
    struct Zeroed {
        ptr: NonNull<u8>,
        layout: std::alloc::Layout,
    }

    impl Zeroed {
        fn new(len: usize) -> Zeroed {
            let layout = std::alloc::Layout::from_size_align(len, HOST_PAGE).unwrap();
            // SAFETY: `len` > 0.
            let ptr = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) }).unwrap();
            Zeroed { ptr, layout }
        }
    }

    impl Drop for Zeroed {
        fn drop(&mut self) {
            // SAFETY: allocated with this layout in `new`.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
        }
    }

    /// Two guest pages of code: `addi a0, a0, 1` words, a `c.addi` at offset 2 of the second
    /// word, and a 4-byte `addi` straddling the first page's end.
    fn image() -> Vec<u8> {
        let mut img = vec![0u8; 2 * HOST_PAGE];
        for w in img.chunks_mut(4) {
            w.copy_from_slice(&0x0015_0513u32.to_le_bytes());
        }
        img[4..6].copy_from_slice(&0x0505u16.to_le_bytes());
        img[4094..4098].copy_from_slice(&0x0015_0513u32.to_le_bytes());
        img
    }

    fn shared(area: &Zeroed, img: &[u8]) -> SharedDecode {
        // SAFETY: `area` is zeroed memory of the layout's length, `img` two pages nobody
        // writes; both outlive the value (the tests drop it first).
        unsafe {
            SharedDecode::new(
                0x80000,
                2,
                area.ptr,
                NonNull::new(img.as_ptr() as *mut u8).unwrap(),
                Box::new(()),
            )
        }
        .expect("an empty area")
    }

    #[test]
    fn a_page_is_decoded_once_and_then_shared() {
        let img = image();
        let area = Zeroed::new(SharedDecode::layout(2).len);
        let a = shared(&area, &img);
        let b = shared(&area, &img);
        let live = img.clone();
        // SAFETY: `live` holds both pages.
        let first = unsafe { a.page(0x80000, live.as_ptr()) };
        assert!(first.is_none(), "the first use marks it");
        // SAFETY: as above.
        let pa = unsafe { a.page(0x80000, live.as_ptr()) }.expect("the second use fills it");
        assert!(a.holds(pa.as_ptr()));
        // SAFETY: as above.
        let pb = unsafe { b.page(0x80000, live.as_ptr()) }.expect("complete: shared");
        assert_eq!(pa, pb);
        assert_eq!(a.counts(), (1, 1));
        assert_eq!(b.counts(), (1, 0), "the second user only read it");
        // SAFETY: a complete page, read only.
        let page = unsafe { &*pa.as_ptr() };
        assert_eq!(page[0], decode_for_cache(0x0015_0513));
        assert_eq!(page[2], decode_for_cache(0x0505));
        assert_eq!(page[2].op, decode(0x0505).op);
        assert_eq!(
            page[2047],
            Insn::undecoded(),
            "the straddling instruction is left out"
        );
        assert_eq!(page[2048], Insn::undecoded(), "sentinels stay");
    }

    #[test]
    fn a_changed_page_or_one_being_filled_is_not_shared() {
        let img = image();
        let area = Zeroed::new(SharedDecode::layout(2).len);
        let a = shared(&area, &img);
        let mut live = img.clone();
        live[HOST_PAGE + 100] ^= 1;
        // SAFETY: `live` holds both pages.
        assert!(unsafe { a.page(0x80001, live.as_ptr().add(HOST_PAGE)) }.is_none());
        // SAFETY: as above.
        assert!(unsafe { a.page(0x80001, live.as_ptr().add(HOST_PAGE)) }.is_none());
        assert_eq!(
            a.state(1).load(Ordering::Relaxed),
            WANTED,
            "marked, not filled"
        );
        a.state(0).store(FILLING, Ordering::Release);
        // SAFETY: as above.
        assert!(unsafe { a.page(0x80000, live.as_ptr()) }.is_none());
        // SAFETY: as above; pages outside the image.
        assert!(unsafe { a.page(0x7ffff, live.as_ptr()) }.is_none());
        // SAFETY: as above.
        assert!(unsafe { a.page(0x80002, live.as_ptr()) }.is_none());
        assert_eq!(a.counts(), (0, 0));
    }

    /// Guest RAM for [`a_hart_runs_shared_pages_without_writing_them`]: two pages at
    /// 0x8000_0000 of `addi a0, a0, 1`, a `c.addi a0, 1` at 4092 and an `addi` straddling the
    /// pages at 4094, then ten more `addi`s and `j .` at 4138 (1,035 additions, then a loop).
    fn straddling_program() -> Vec<u64> {
        let mut ram = vec![0u64; 1024];
        // SAFETY: the vector's 8 KiB seen as bytes.
        let bytes = unsafe { std::slice::from_raw_parts_mut(ram.as_mut_ptr() as *mut u8, 8192) };
        for off in (0..4092).step_by(4) {
            bytes[off..off + 4].copy_from_slice(&0x0015_0513u32.to_le_bytes());
        }
        bytes[4092..4094].copy_from_slice(&0x0505u16.to_le_bytes());
        for off in (4094..4138).step_by(4) {
            bytes[off..off + 4].copy_from_slice(&0x0015_0513u32.to_le_bytes());
        }
        bytes[4138..4142].copy_from_slice(&0x0000_006fu32.to_le_bytes());
        ram
    }

    /// Run the hart from the program's start for its 1,036 instructions: a0 and pc after.
    fn run_program(hart: &mut crate::Hart) -> (u64, u64) {
        hart.flush_caches();
        hart.set_pc(0x8000_0000);
        hart.set_xreg(10, 0);
        assert_eq!(hart.run(&mut crate::NoBus, 1036), crate::Exit::Budget);
        (hart.xreg(10), hart.pc())
    }

    /// A hart runs code from shared pages as from its own: the same results; the instruction
    /// straddling the pages runs without being written into the shared page; a page the
    /// guest changed gets a page of its own.
    #[test]
    fn a_hart_runs_shared_pages_without_writing_them() {
        let mut ram = straddling_program();
        // SAFETY: the vector's 8 KiB seen as bytes.
        let image: Vec<u8> =
            unsafe { std::slice::from_raw_parts(ram.as_ptr() as *const u8, 8192) }.to_vec();
        let area = Zeroed::new(SharedDecode::layout(2).len);
        let bytes = NonNull::new(ram.as_mut_ptr() as *mut u8).unwrap();
        // SAFETY: `ram` outlives the hart (dropped at the end of the test, after it).
        let region = unsafe { crate::RamRegion::new(0x8000_0000, 8192, bytes) };
        let mut hart = crate::Hart::new(
            crate::HartConfig::machine(0, false),
            crate::Memory::new(vec![region]).unwrap(),
        );
        let shared = std::sync::Arc::new(shared(&area, &image));
        hart.set_shared_decode(shared.clone());
        let end = (1035, 0x8000_0000 + 4138);
        assert_eq!(run_program(&mut hart), end, "alone: pages of its own");
        assert_eq!(shared.counts(), (0, 0));
        assert_eq!(run_program(&mut hart), end, "from the shared pages");
        assert_eq!(shared.counts(), (2, 2), "both pages decoded there");
        // SAFETY: a complete page, only read.
        let first = unsafe { &*shared.slots(0) };
        assert_eq!(first[0], decode_for_cache(0x0015_0513));
        assert_eq!(first[2046], decode_for_cache(0x0505));
        assert_eq!(
            first[2047],
            Insn::undecoded(),
            "the straddling instruction was not cached"
        );
        // Nothing writes a complete shared page, not even for a moment: run from it read-only.
        let len = SharedDecode::layout(2).len;
        // SAFETY: the area's own (page-aligned) allocation; made writable again below.
        let protected = unsafe { libc::mprotect(area.ptr.as_ptr().cast(), len, libc::PROT_READ) };
        assert_eq!(protected, 0);
        assert_eq!(
            run_program(&mut hart),
            end,
            "from the read-only shared pages"
        );
        // SAFETY: as above.
        let unprotected = unsafe {
            libc::mprotect(
                area.ptr.as_ptr().cast(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        assert_eq!(unprotected, 0);
        assert_eq!(shared.counts(), (4, 2));

        // The guest changes its second page: addi a0, a0, 2 at 4098.
        // SAFETY: inside the vector, which the hart does not run meanwhile.
        unsafe { (bytes.as_ptr().add(4098) as *mut u32).write_unaligned(0x0025_0513) };
        assert_eq!(run_program(&mut hart), (1036, end.1));
        assert_eq!(
            shared.counts(),
            (5, 2),
            "only the first page came from the area"
        );
        drop(hart);
        drop(ram);
    }

    #[test]
    fn an_area_of_another_layout_is_refused() {
        let img = image();
        let area = Zeroed::new(SharedDecode::layout(2).len);
        drop(shared(&area, &img));
        // SAFETY: as in `shared`, with a smaller page count than the header says.
        let other = unsafe {
            SharedDecode::new(
                0x80000,
                1,
                area.ptr,
                NonNull::new(img.as_ptr() as *mut u8).unwrap(),
                Box::new(()),
            )
        };
        assert!(other.is_none());
    }
}
