//! Guest RAM as the hart sees it: host memory regions at guest-physical addresses.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// Errors describing RAM layouts the hart cannot use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemoryError {
    /// A region is not page aligned.
    #[error("RAM region at {0:#x} is not 4 KiB aligned in base and size")]
    Unaligned(u64),
    /// Two regions overlap.
    #[error("RAM regions at {0:#x} and {1:#x} overlap")]
    Overlap(u64, u64),
}

/// One contiguous block of guest RAM backed by host memory.
#[derive(Clone, Copy, Debug)]
pub struct RamRegion {
    base: u64,
    len: u64,
    host: NonNull<u8>,
}

// SAFETY: a RamRegion is a plain description of memory the owner keeps mapped for the hart's
// lifetime (see `RamRegion::new`); harts on several threads share guest RAM the way real harts do,
// with atomics used for AMOs and LR/SC.
unsafe impl Send for RamRegion {}
// SAFETY: as above.
unsafe impl Sync for RamRegion {}

impl RamRegion {
    /// Describe `len` bytes of host memory at `host` as guest-physical `base..base+len`.
    ///
    /// # Safety
    /// `host..host+len` must stay mapped, readable and writable for as long as any hart uses the
    /// region, and nothing may hold a Rust reference into it while a hart runs.
    pub unsafe fn new(base: u64, len: u64, host: NonNull<u8>) -> RamRegion {
        RamRegion { base, len, host }
    }

    /// First guest-physical address.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Host pointer of the first byte.
    pub fn host(&self) -> NonNull<u8> {
        self.host
    }
}

/// Page permissions of a process VM's address space, kept by the OS layer (mmap, mprotect,
/// munmap) and checked by user-mode harts whenever they fill their TLB.
///
/// One byte per 4 KiB page ([`PagePerms::READ`] | [`PagePerms::WRITE`] | [`PagePerms::EXEC`]); the
/// table is allocated zeroed and lazily by the host, so a sparse address space costs little. Every
/// change is logged so harts on other threads drop stale translations and decoded code.
#[derive(Debug)]
pub struct PagePerms {
    table: Box<[AtomicU8]>,
    log: ChangeLog,
}

/// Guest-physical (or, for process VMs, virtual) ranges changed behind the harts' backs, with a
/// generation number harts poll cheaply and compare with the last one they applied.
#[derive(Debug, Default)]
pub struct ChangeLog {
    changes: Mutex<Vec<(u64, u64)>>,
    generation: AtomicU64,
}

impl ChangeLog {
    /// The log is compacted past this many entries (harts then flush everything).
    const MAX_LOG: usize = 4096;

    /// Record that `start..start+len` changed.
    pub fn record(&self, start: u64, len: u64) {
        let mut log = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() >= Self::MAX_LOG {
            log.clear();
            log.push((0, u64::MAX));
        }
        log.push((start, len));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Changes since `seen` (a generation number), and the current generation.
    pub(crate) fn changes_since(&self, seen: u64) -> (Vec<(u64, u64)>, u64) {
        let log = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let generation = self.generation.load(Ordering::Acquire);
        let fresh = (generation - seen) as usize;
        if fresh > log.len() {
            return (vec![(0, u64::MAX)], generation);
        }
        (log[log.len() - fresh..].to_vec(), generation)
    }

    /// The current generation, cheap to poll.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

impl PagePerms {
    /// Readable page.
    pub const READ: u8 = 1;
    /// Writable page.
    pub const WRITE: u8 = 2;
    /// Executable page.
    pub const EXEC: u8 = 4;
    /// A table for addresses `0..span`, all pages inaccessible.
    pub fn new(span: u64) -> Arc<PagePerms> {
        let pages = (span >> 12) as usize;
        let table: Vec<AtomicU8> = std::iter::repeat_with(|| AtomicU8::new(0))
            .take(pages)
            .collect();
        Arc::new(PagePerms {
            table: table.into_boxed_slice(),
            log: ChangeLog::default(),
        })
    }

    /// Permissions of the page holding `addr` (0 outside the table).
    #[inline]
    pub fn get(&self, addr: u64) -> u8 {
        self.table
            .get((addr >> 12) as usize)
            .map_or(0, |p| p.load(Ordering::Acquire))
    }

    /// Set the permissions of every page in `start..start+len` (page-aligned) and tell harts.
    pub fn set(&self, start: u64, len: u64, perms: u8) {
        let first = (start >> 12) as usize;
        let last = (((start + len + 0xfff) >> 12) as usize).min(self.table.len());
        for p in self.table.get(first..last).unwrap_or(&[]) {
            p.store(perms, Ordering::Release);
        }
        self.log.record(start, len);
    }

    /// Whether every page of `start..start+len` has all of `need`.
    pub fn check(&self, start: u64, len: u64, need: u8) -> bool {
        if len == 0 {
            return true;
        }
        let Some(end) = start.checked_add(len) else {
            return false;
        };
        let (first, last) = ((start >> 12) as usize, ((end - 1) >> 12) as usize);
        last < self.table.len()
            && self.table[first..=last]
                .iter()
                .all(|p| p.load(Ordering::Acquire) & need == need)
    }

    /// The log of permission changes.
    pub(crate) fn log(&self) -> &ChangeLog {
        &self.log
    }
}

/// Pages of a RAM range written while logging is on (live migration's pre-copy: whatever was
/// written since a round's copy must be sent again).
///
/// Harts mark a page when a store fills its write-TLB entry or misses the TLB; stores through
/// an existing entry are not seen, so [`DirtyLog::flush_writers`] bumps a generation that makes
/// every hart drop its write entries before its next instruction. Devices' direct writes are
/// marked by the board's DMA hook.
#[derive(Debug)]
#[allow(clippy::len_without_is_empty)]
pub struct DirtyLog {
    base: u64,
    bits: Box<[AtomicU64]>,
    enabled: AtomicBool,
    generation: AtomicU64,
}

impl DirtyLog {
    /// A log for guest-physical `base..base+len` (page aligned), off.
    pub fn new(base: u64, len: u64) -> DirtyLog {
        let pages = (len >> 12) as usize;
        DirtyLog {
            base,
            bits: std::iter::repeat_with(|| AtomicU64::new(0))
                .take(pages.div_ceil(64))
                .collect(),
            enabled: AtomicBool::new(false),
            generation: AtomicU64::new(0),
        }
    }

    /// Mark the pages of `paddr..paddr+len` written (nothing while logging is off, or outside
    /// the range).
    #[inline]
    pub fn mark(&self, paddr: u64, len: u64) {
        if !self.enabled.load(Ordering::Relaxed) || len == 0 {
            return;
        }
        let first = paddr.wrapping_sub(self.base) >> 12;
        let last = paddr.wrapping_add(len - 1).wrapping_sub(self.base) >> 12;
        for page in first..=last.min(first + (self.bits.len() as u64) * 64) {
            if let Some(w) = self.bits.get((page / 64) as usize) {
                w.fetch_or(1 << (page % 64), Ordering::Relaxed);
            }
        }
    }

    /// Start logging with every page clean, and make harts see their next write to each page.
    pub fn start(&self) {
        for w in self.bits.iter() {
            w.store(0, Ordering::Relaxed);
        }
        self.enabled.store(true, Ordering::SeqCst);
        self.flush_writers();
    }

    /// Stop logging.
    pub fn stop(&self) {
        self.enabled.store(false, Ordering::SeqCst);
    }

    /// Pages (indexes from the base) marked since the last call; they are clean afterwards.
    pub fn take(&self) -> Vec<u64> {
        let mut pages = Vec::new();
        for (i, w) in self.bits.iter().enumerate() {
            let mut v = w.swap(0, Ordering::AcqRel);
            while v != 0 {
                let b = v.trailing_zeros() as u64;
                pages.push(i as u64 * 64 + b);
                v &= v - 1;
            }
        }
        pages
    }

    /// Ask every hart to drop its write-TLB entries; returns the generation each hart reports
    /// (through its owner) once it has.
    pub fn flush_writers(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The current generation, cheap to poll.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// The set of RAM regions of a machine.
#[derive(Clone, Debug, Default)]
pub struct Memory {
    regions: Vec<RamRegion>,
    perms: Option<Arc<PagePerms>>,
    dma: Arc<ChangeLog>,
    code: Arc<CodePages>,
    dirty: Option<Arc<DirtyLog>>,
}

/// The guest-physical pages some hart has decoded or translated code from, one bit each, set
/// by the hart before it reads the page and never cleared. A device's write to RAM changes no
/// code unless it lands on such a page, so only those writes go into the DMA log
/// ([`Memory::dma_log`]): a guest reading gigabytes from a disk logged every buffer, the log
/// overflowed every 4,096 writes, and each overflow dropped all of every hart's code.
#[derive(Debug, Default)]
pub struct CodePages {
    /// Guest-physical address of bit 0.
    base: u64,
    /// One bit a page; empty: no table (the span is too large), every page may hold code.
    bits: Box<[AtomicU64]>,
}

impl CodePages {
    /// The largest span of RAM the table covers (a 2 MiB table); beyond it, every write is
    /// logged.
    const MAX_SPAN: u64 = 64 << 30;

    /// A table for the guest-physical span of `regions` (sorted by base).
    fn new(regions: &[RamRegion]) -> CodePages {
        let (Some(first), Some(last)) = (regions.first(), regions.last()) else {
            return CodePages::default();
        };
        let span = last.base + last.len - first.base;
        if span > Self::MAX_SPAN {
            return CodePages::default();
        }
        let words = (span >> 12).div_ceil(64) as usize;
        CodePages {
            base: first.base,
            bits: std::iter::repeat_with(|| AtomicU64::new(0))
                .take(words)
                .collect(),
        }
    }

    /// Page `ppn` holds code from now on. Call it before reading the page's instructions: a
    /// device that writes the page afterwards then sees the mark (see [`CodePages::any`]).
    pub fn mark(&self, ppn: u64) {
        let Some(page) = ppn.checked_sub(self.base >> 12) else {
            return;
        };
        if let Some(w) = self.bits.get((page / 64) as usize) {
            // The full RMW even when the bit is set already: it is what orders this hart's
            // reads of the page after the mark on any host, not only x86's (a page becomes
            // code for a hart rarely, so it costs nothing measurable).
            w.fetch_or(1 << (page % 64), Ordering::SeqCst);
        }
    }

    /// Whether any page of `start..start+len` may hold code. Call it after writing the bytes:
    /// the fence orders the write before the check, as `mark`'s update orders the mark
    /// before the hart's reads, so either the hart reads what was written or this sees its
    /// mark.
    pub fn any(&self, start: u64, len: u64) -> bool {
        std::sync::atomic::fence(Ordering::SeqCst);
        if len == 0 {
            return false;
        }
        let pages = self.bits.len() as u64 * 64;
        let (Some(first), Some(end)) = (
            start.checked_sub(self.base),
            start
                .checked_add(len - 1)
                .and_then(|e| e.checked_sub(self.base)),
        ) else {
            return true;
        };
        let (first, last) = (first >> 12, end >> 12);
        if last >= pages {
            return true;
        }
        (first..=last)
            .any(|p| self.bits[(p / 64) as usize].load(Ordering::Relaxed) & 1 << (p % 64) != 0)
    }
}

impl Memory {
    /// A machine's RAM from its regions.
    pub fn new(mut regions: Vec<RamRegion>) -> Result<Memory, MemoryError> {
        regions.sort_by_key(|r| r.base);
        for r in &regions {
            if r.base & 0xfff != 0 || r.len & 0xfff != 0 {
                return Err(MemoryError::Unaligned(r.base));
            }
        }
        for w in regions.windows(2) {
            if w[0].base + w[0].len > w[1].base {
                return Err(MemoryError::Overlap(w[0].base, w[1].base));
            }
        }
        Ok(Memory {
            code: Arc::new(CodePages::new(&regions)),
            regions,
            perms: None,
            dma: Arc::default(),
            dirty: None,
        })
    }

    /// The log of guest-physical ranges devices wrote directly (DMA): harts drop decoded code
    /// of those pages before they next fetch, so code read from a disk runs as read.
    pub fn dma_log(&self) -> &Arc<ChangeLog> {
        &self.dma
    }

    /// The pages harts have taken code from: a device's write elsewhere need not go into
    /// [`Memory::dma_log`].
    pub fn code_pages(&self) -> &Arc<CodePages> {
        &self.code
    }

    /// A device (or a debugger) wrote guest-physical `start..start+len` behind the harts'
    /// backs; call it after the bytes landed. Harts drop the code they took from there
    /// (if they took any: [`CodePages`]), and the dirty log, if on, marks the pages.
    pub fn device_wrote(&self, start: u64, len: u64) {
        if self.code.any(start, len) {
            self.dma.record(start, len);
        }
        if let Some(d) = &self.dirty {
            d.mark(start, len);
        }
    }

    /// Add a page-permission table (process VMs): user-mode harts then fault on any access the
    /// table does not allow.
    pub fn with_page_perms(mut self, perms: Arc<PagePerms>) -> Memory {
        self.perms = Some(perms);
        self
    }

    /// Add a dirty-page log (system VMs that may migrate).
    pub fn with_dirty_log(mut self, log: Arc<DirtyLog>) -> Memory {
        self.dirty = Some(log);
        self
    }

    /// The dirty-page log, if any.
    #[inline]
    pub fn dirty_log(&self) -> Option<&Arc<DirtyLog>> {
        self.dirty.as_ref()
    }

    /// The page-permission table, if any.
    pub fn page_perms(&self) -> Option<&Arc<PagePerms>> {
        self.perms.as_ref()
    }

    /// The regions, sorted by base address.
    pub fn regions(&self) -> &[RamRegion] {
        &self.regions
    }

    /// Host address of guest-physical `paddr`, if it lies in RAM with `len` bytes after it in the
    /// same region.
    #[inline]
    pub fn host_ptr(&self, paddr: u64, len: u64) -> Option<*mut u8> {
        for r in &self.regions {
            let off = paddr.wrapping_sub(r.base);
            if off < r.len && len <= r.len - off {
                // SAFETY: off < r.len, so the result stays inside the region the owner mapped.
                return Some(unsafe { r.host.as_ptr().add(off as usize) });
            }
        }
        None
    }

    /// Copy guest RAM at `paddr` into `buf`; `None` if any byte is outside RAM.
    pub fn read(&self, paddr: u64, buf: &mut [u8]) -> Option<()> {
        let p = self.host_ptr(paddr, buf.len() as u64)?;
        // SAFETY: host_ptr checked the whole range lies in one mapped region.
        unsafe { std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), buf.len()) };
        Some(())
    }

    /// Copy `buf` into guest RAM at `paddr`; `None` if any byte is outside RAM.
    pub fn write(&self, paddr: u64, buf: &[u8]) -> Option<()> {
        let p = self.host_ptr(paddr, buf.len() as u64)?;
        // SAFETY: host_ptr checked the whole range lies in one mapped region.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), p, buf.len()) };
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_pages_say_which_ranges_may_hold_code() {
        let base = 0x8000_0000;
        let region = RamRegion {
            base,
            len: 1 << 20,
            host: NonNull::dangling(),
        };
        let code = CodePages::new(&[region]);
        assert!(!code.any(base, 1 << 20), "nothing marked yet");
        code.mark((base >> 12) + 5);
        assert!(code.any(base + 5 * 4096, 1));
        assert!(
            code.any(base + 4 * 4096 + 4095, 2),
            "a range reaching into the page"
        );
        assert!(code.any(base, 1 << 20));
        assert!(!code.any(base + 4 * 4096, 4096), "the page before");
        assert!(!code.any(base + 6 * 4096, 8192), "the pages after");
        assert!(!code.any(base + 5 * 4096, 0), "an empty range");
        assert!(code.any(base - 4096, 8), "below the table: may be");
        assert!(code.any(base + (1 << 20), 8), "above the table: may be");
        code.mark(0);
        code.mark(u64::MAX >> 12);
        let none = CodePages::default();
        assert!(none.any(base, 8), "no table: every page may hold code");
    }

    #[test]
    fn dirty_log_marks_pages_only_while_on() {
        let log = DirtyLog::new(0x8000_0000, 1 << 20);
        log.mark(0x8000_0000, 8);
        assert!(log.take().is_empty(), "off: nothing marked");
        let g = log.generation();
        log.start();
        assert_eq!(log.generation(), g + 1, "starting flushes writers");
        log.mark(0x8000_1ffc, 8); // straddles pages 1 and 2
        log.mark(0x8000_0000 + (70 << 12), 1);
        log.mark(0x1000, 8); // outside the range
        log.mark(0x8000_0000 + (1 << 20), 1); // just past the end
        assert_eq!(log.take(), vec![1, 2, 70]);
        assert!(log.take().is_empty(), "take leaves pages clean");
        log.stop();
        log.mark(0x8000_0000, 8);
        assert!(log.take().is_empty());
    }
}
