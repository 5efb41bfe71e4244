//! Guest RAM as the hart sees it: host memory regions at guest-physical addresses.

use std::ptr::NonNull;

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

/// The set of RAM regions of a machine.
#[derive(Clone, Debug, Default)]
pub struct Memory {
    regions: Vec<RamRegion>,
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
        Ok(Memory { regions })
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
