//! The guest address space: one big host reservation, guest address `g` at host `base + g`, with
//! the guest's mappings (VMAs) and the page-permission table the harts check.

use std::collections::BTreeMap;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use popek_cpu::{Memory, PagePerms, RamRegion};

use crate::Errno;

/// Size of the guest address space: 256 GiB, enough for PIE programs at 0x2aaaaaa000 and a
/// top-down mmap area below the stack.
pub const SPAN: u64 = 1 << 38;
/// The guest page size.
pub const PAGE: u64 = 4096;
/// Top of the initial stack mapping.
pub const STACK_TOP: u64 = SPAN - PAGE;
/// Size of the initial stack mapping (RLIMIT_STACK's usual 8 MiB, mapped up front).
pub const STACK_SIZE: u64 = 8 << 20;
/// Where top-down mmap allocation starts, below the stack and a guard gap of a little more
/// than 1 GiB: the extra half megabyte puts the first mappings (the dynamic linker's and
/// libc's data, used all the time) 128 pages away from the top of the stack modulo 1 MiB.
/// The harts' data TLBs are direct-mapped by the page number's low 8 bits, so with a gap of a
/// whole number of megabytes those pages and the stack's took the same entries and evicted
/// each other at every call (seen in sqlite3: 11% of its time refilling the TLB).
pub const MMAP_TOP: u64 = STACK_TOP - STACK_SIZE - (1 << 30) - (128 << 12);
/// Load address of PIE (ET_DYN) main programs, as Linux uses on riscv64.
pub const PIE_BASE: u64 = 0x2a_aaaa_a000;

/// Where the host reservation goes when that address range is free: guest address `g` is
/// then host `PREFERRED_BASE + g`, and with the base below 2 GiB translated code folds it into
/// a load's or store's 32-bit displacement (one host instruction, `[reg + base + offset]`,
/// instead of adding it from a second register). x86-64 Linux puts programs, their heap and
/// mmap far above this range, so it is normally free; if it is not, the reservation goes
/// where the kernel chooses and only that folding is lost.
const PREFERRED_BASE: usize = 1 << 30;
// With an access's 12-bit offset, and the 4 KiB window past a passed check: still 32 bits.
const _: () = assert!(PREFERRED_BASE + 4096 + 2048 <= i32::MAX as usize);

/// Guest PROT_* bits (same values as PagePerms).
pub const PROT_READ: u8 = 1;
/// Guest PROT_WRITE.
pub const PROT_WRITE: u8 = 2;
/// Guest PROT_EXEC.
pub const PROT_EXEC: u8 = 4;

/// Round up to a page.
pub fn page_up(x: u64) -> u64 {
    x.saturating_add(PAGE - 1) & !(PAGE - 1)
}

/// Round down to a page.
pub fn page_down(x: u64) -> u64 {
    x & !(PAGE - 1)
}

/// One guest mapping.
#[derive(Clone, Copy, Debug)]
struct Vma {
    end: u64,
    prot: u8,
    /// A MAP_SHARED mapping of a file opened read-only: host pages are read-only, so the guest
    /// may never gain write permission.
    shared_ro: bool,
    /// A MAP_SHARED mapping of a file: its pages are the file's (page cache), never charged to
    /// the memory limit.
    shared_file: bool,
}

impl Vma {
    /// Whether the mapping counts against the memory limit: only writable memory that is not
    /// a shared file can grow the host's anonymous memory (read-only and PROT_NONE pages are
    /// never touched for writing, so they stay the shared zero page or the page cache).
    fn charged(&self) -> bool {
        self.prot & PROT_WRITE != 0 && !self.shared_file
    }
}

/// The host base pointer, shareable between threads.
#[derive(Clone, Copy, Debug)]
pub struct HostBase(pub usize);

impl HostBase {
    /// Host pointer of guest address `g` (the caller checked the range).
    pub fn ptr(self, g: u64) -> *mut u8 {
        (self.0 as u64 + g) as *mut u8
    }
}

/// The guest's mappings; kept behind a mutex by the process.
#[derive(Debug)]
pub struct Mm {
    base: HostBase,
    perms: Arc<PagePerms>,
    vmas: BTreeMap<u64, Vma>,
    /// Start of the heap (page aligned, just above the main program).
    pub brk_start: u64,
    /// Current program break.
    pub brk: u64,
    /// Bytes of charged mappings (see [`Vma::charged`]).
    committed: u64,
    /// The most `committed` may reach (`popek exec --memory`); beyond it mmap, mprotect, mremap
    /// and brk fail with ENOMEM, as under Linux's strict overcommit.
    limit: u64,
    /// Whether the host's protection mirrors the guest's reads: every page below [`SPAN`] the
    /// guest may not read (unmapped, PROT_NONE) is PROT_NONE on the host too, and so is the
    /// page past the span, so a host read of `base + a` faults wherever a guest load from `a`
    /// must ([`popek_cpu::Hart::let_host_check_reads`]). It stops for good (see
    /// [`Mm::stop_mirroring`]) when a second thread shares the memory (the host must not fault
    /// on what another thread's stale TLB entries still point at) or the guest maps
    /// execute-only memory (which the harts' decoder reads on the host).
    mirror: Arc<AtomicBool>,
    /// Whether, besides, the host's protection mirrors the guest's writes: every page the
    /// guest may not write is read-only (or PROT_NONE) on the host, so a host write of
    /// `base + a` faults wherever a guest store to `a` must
    /// ([`popek_cpu::Hart::let_host_check_writes`]). Stops with `mirror`, for memory both
    /// writable and executable (a store would change code the harts decoded without their
    /// noticing: without such memory, code changes only through mprotect and mmap, which
    /// drop it), and under a debugger (which writes breakpoints into read-only code).
    mirror_writes: Arc<AtomicBool>,
}

/// Reserve the span and the page past it, PROT_NONE, at `hint` (with `flags`, e.g.
/// `MAP_FIXED_NOREPLACE`) or where the kernel chooses (`hint` 0).
fn reserve(hint: usize, flags: libc::c_int) -> io::Result<*mut libc::c_void> {
    // SAFETY: a fresh anonymous PROT_NONE reservation; with MAP_FIXED_NOREPLACE the kernel
    // refuses a range that holds anything, so nothing else refers to it. Its last page, past
    // the guest's span, is never mapped (see `Mm::mirror`).
    let p = unsafe {
        libc::mmap(
            hint as *mut libc::c_void,
            (SPAN + PAGE) as usize,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p)
}

/// Translate guest PROT bits into page permissions: on RISC-V a writable page is also readable.
fn perms_of(prot: u8) -> u8 {
    let mut p = prot & 7;
    if p & PROT_WRITE != 0 {
        p |= PROT_READ;
    }
    p
}

impl Mm {
    /// The most writable memory the process may map (`popek exec --memory`).
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Reserve the host address space and build the hart's view of it.
    pub fn new(limit: u64) -> io::Result<(Mm, Memory)> {
        let p = match reserve(PREFERRED_BASE, libc::MAP_FIXED_NOREPLACE) {
            Ok(p) => p,
            // Taken (EEXIST), or refused: anywhere will do.
            Err(_) => reserve(0, 0)?,
        };
        let base = NonNull::new(p as *mut u8).ok_or_else(|| io::Error::other("mmap gave NULL"))?;
        let perms = PagePerms::new(SPAN);
        // SAFETY: the reservation stays for the life of the process (it is never unmapped), and
        // the page-permission table keeps harts off pages that are not host-accessible yet.
        let region = unsafe { RamRegion::new(0, SPAN, base) };
        let mem = Memory::new(vec![region])
            .map_err(io::Error::other)?
            .with_page_perms(perms.clone());
        Ok((
            Mm {
                base: HostBase(p as usize),
                perms,
                vmas: BTreeMap::new(),
                brk_start: 0,
                brk: 0,
                committed: 0,
                limit,
                mirror: Arc::new(AtomicBool::new(true)),
                mirror_writes: Arc::new(AtomicBool::new(true)),
            },
            mem,
        ))
    }

    /// The host base.
    pub fn base(&self) -> HostBase {
        self.base
    }

    /// The page-permission table.
    pub fn perms(&self) -> &Arc<PagePerms> {
        &self.perms
    }

    /// Set while the host's protection mirrors the guest's reads (see [`Mm::mirror`]): a
    /// hart may let the host check its loads as long as it reads true.
    pub fn mirroring(&self) -> Arc<AtomicBool> {
        self.mirror.clone()
    }

    /// Set while the host's protection mirrors the guest's writes too (see
    /// [`Mm::mirror_writes`]): a hart may let the host check its stores as long as it reads
    /// true.
    pub fn mirroring_writes(&self) -> Arc<AtomicBool> {
        self.mirror_writes.clone()
    }

    /// Stop mirroring the guest's reads and writes on the host: from now on pages keep the
    /// host access they have, or gain what the guest gains (the ones hidden or write-protected
    /// already stay so until the guest maps or unprotects them). The caller turns the harts'
    /// host-checked loads and stores off before they run guest code again.
    pub fn stop_mirroring(&mut self) {
        self.mirror.store(false, Ordering::Release);
        self.stop_mirroring_writes();
    }

    /// Stop mirroring the guest's writes on the host (see [`Mm::stop_mirroring`]).
    pub fn stop_mirroring_writes(&mut self) {
        self.mirror_writes.store(false, Ordering::Release);
    }

    /// The host protection of a guest mapping with protection `prot` (`shared_ro`: of a
    /// shared file opened read-only). Execute-only memory ends the mirroring first, and
    /// writable executable memory the mirroring of writes.
    fn host_prot(&mut self, prot: u8, shared_ro: bool) -> i32 {
        let p = perms_of(prot);
        if p & PROT_EXEC != 0 && p & PROT_READ == 0 {
            self.stop_mirroring();
        }
        if p & PROT_EXEC != 0 && p & PROT_WRITE != 0 {
            self.stop_mirroring_writes();
        }
        if p & PROT_READ == 0 && self.mirror.load(Ordering::Acquire) {
            libc::PROT_NONE
        } else if shared_ro || (p & PROT_WRITE == 0 && self.mirror_writes.load(Ordering::Acquire)) {
            libc::PROT_READ
        } else {
            libc::PROT_READ | libc::PROT_WRITE
        }
    }

    /// Run `f` with `addr..addr+len` (page aligned, of mappings with guest protection `prot`)
    /// host-writable, for the host's own writes (the loader's, mremap's copy); then give the
    /// range its mirrored protection back.
    fn opened<T>(
        &mut self,
        addr: u64,
        len: u64,
        prot: u8,
        f: impl FnOnce(&Mm) -> T,
    ) -> Result<T, Errno> {
        let host = self.host_prot(prot, false);
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        if host != rw {
            self.host_protect(addr, len, rw)?;
        }
        let out = f(self);
        if host != rw {
            self.host_protect(addr, len, host)?;
        }
        Ok(out)
    }

    /// Set the host protection of `addr..addr+len` (inside the span, page aligned).
    fn host_protect(&self, addr: u64, len: u64, prot: i32) -> Result<(), Errno> {
        // SAFETY: the range lies inside our reservation; changing its protection touches no
        // memory (the callers keep the host as strict as the guest only where nothing reads).
        if unsafe { libc::mprotect(self.base.ptr(addr) as *mut libc::c_void, len as usize, prot) }
            != 0
        {
            return Err(Errno::last());
        }
        Ok(())
    }

    /// Write `data` at `addr` of one mapping the loader just made (a private one: the host
    /// write must not reach a file), whatever its protection.
    pub fn poke(&mut self, addr: u64, data: &[u8]) -> Result<(), Errno> {
        let prot = self.prot_at(addr).unwrap_or(0);
        let (first, end) = (page_down(addr), page_up(addr + data.len() as u64));
        self.opened(first, end - first, prot, |mm| {
            // SAFETY: the range lies in a mapping inside the reservation, host-writable now.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), mm.base.ptr(addr), data.len()) };
        })
    }

    /// Whether any part of `start..end` is mapped.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        self.vmas
            .range(..end)
            .next_back()
            .is_some_and(|(_, v)| v.end > start)
    }

    /// Whether all of `start..end` is mapped.
    fn fully_mapped(&self, start: u64, end: u64) -> bool {
        let mut at = start;
        for (&s, v) in self.vmas.range(..end) {
            if v.end <= at {
                continue;
            }
            if s > at {
                return false;
            }
            at = v.end;
            if at >= end {
                return true;
            }
        }
        at >= end
    }

    /// A free, page-aligned range of `len` bytes, searching down from the mmap area's top.
    pub fn find_free(&self, len: u64) -> Option<u64> {
        let mut top = MMAP_TOP;
        for (&s, v) in self.vmas.range(..MMAP_TOP).rev() {
            if v.end <= top && top - v.end >= len {
                return Some(top - len);
            }
            top = top.min(s);
        }
        let low = 1 << 20;
        (top >= low + len).then(|| top - len)
    }

    /// Remove `start..end` from the VMA map, splitting mappings that straddle it.
    fn cut(&mut self, start: u64, end: u64) -> Vec<(u64, Vma)> {
        let keys: Vec<u64> = self
            .vmas
            .range(..end)
            .rev()
            .take_while(|(_, v)| v.end > start)
            .map(|(&k, _)| k)
            .collect();
        let mut removed = Vec::new();
        for k in keys {
            let v = self.vmas.remove(&k).unwrap_or(Vma {
                end: k,
                prot: 0,
                shared_ro: false,
                shared_file: false,
            });
            if k < start {
                self.vmas.insert(k, Vma { end: start, ..v });
            }
            if v.end > end {
                self.vmas.insert(end, v);
            }
            let piece = Vma {
                end: v.end.min(end),
                ..v
            };
            if piece.charged() {
                self.committed -= piece.end - k.max(start);
            }
            removed.push((k.max(start), piece));
        }
        removed
    }

    /// Bytes of charged mappings inside `start..end`.
    fn charged_in(&self, start: u64, end: u64) -> u64 {
        self.vmas
            .range(..end)
            .rev()
            .take_while(|(_, v)| v.end > start)
            .filter(|(_, v)| v.charged())
            .map(|(&k, v)| v.end.min(end) - k.max(start))
            .sum()
    }

    /// Fail with ENOMEM if replacing `addr..addr+len` by a mapping that is (`charge`) or is not
    /// charged would take the guest past its memory limit.
    fn admit(&self, addr: u64, len: u64, charge: bool) -> Result<(), Errno> {
        if !charge {
            return Ok(());
        }
        let end = addr.saturating_add(len);
        let after = self.committed - self.charged_in(addr, end) + len;
        if after > self.limit {
            return Err(Errno(libc::ENOMEM));
        }
        Ok(())
    }

    /// Bytes the guest's writable mappings take.
    #[cfg(test)]
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Map fresh zeroed memory at `addr..addr+len` with guest protection `prot`.
    pub fn map_anon(&mut self, addr: u64, len: u64, prot: u8, shared: bool) -> Result<(), Errno> {
        let flags = if shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
        self.admit(addr, len, prot & PROT_WRITE != 0)?;
        let host_prot = self.host_prot(prot, false);
        self.host_map(
            addr,
            len,
            host_prot,
            flags | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )?;
        self.record(addr, len, prot, false, false);
        Ok(())
    }

    /// Map `len` bytes of host file `fd` from `offset` at `addr`. Pages past the end of a regular
    /// file are mapped anonymous (zeros) so that no access can raise SIGBUS in the host.
    #[allow(clippy::too_many_arguments)]
    pub fn map_file(
        &mut self,
        addr: u64,
        len: u64,
        prot: u8,
        fd: i32,
        offset: u64,
        shared: bool,
    ) -> Result<(), Errno> {
        // SAFETY: fstat writes into the zeroed struct we own.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            return Err(Errno::last());
        }
        let mut file_len = len;
        if st.st_mode & libc::S_IFMT == libc::S_IFREG {
            let avail = page_up((st.st_size as u64).saturating_sub(offset));
            file_len = len.min(avail);
        }
        let mut shared_ro = false;
        self.admit(addr, len, prot & PROT_WRITE != 0 && !shared)?;
        if shared {
            // SAFETY: F_GETFL takes no pointer.
            let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
            if fl < 0 {
                return Err(Errno::last());
            }
            if fl & libc::O_ACCMODE != libc::O_RDWR {
                if prot & PROT_WRITE != 0 {
                    return Err(Errno(libc::EACCES));
                }
                shared_ro = true;
            }
        }
        let host_prot = self.host_prot(prot, shared_ro);
        if file_len > 0 {
            let flags = if shared {
                libc::MAP_SHARED
            } else {
                libc::MAP_PRIVATE
            };
            self.host_map(addr, file_len, host_prot, flags, fd, offset as i64)?;
        }
        if file_len < len {
            let tail_prot = self.host_prot(prot, false);
            self.host_map(
                addr + file_len,
                len - file_len,
                tail_prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )?;
        }
        self.record(addr, len, prot, shared_ro, shared);
        Ok(())
    }

    fn host_map(
        &self,
        addr: u64,
        len: u64,
        prot: i32,
        flags: i32,
        fd: i32,
        off: i64,
    ) -> Result<(), Errno> {
        if addr.checked_add(len).is_none_or(|e| e > SPAN) {
            return Err(Errno(libc::ENOMEM));
        }
        // SAFETY: the range lies inside our reservation (checked above); MAP_FIXED replaces only
        // our own pages, which stay host-accessible as the hart requires.
        let p = unsafe {
            libc::mmap(
                self.base.ptr(addr) as *mut libc::c_void,
                len as usize,
                prot,
                flags | libc::MAP_FIXED,
                fd,
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        Ok(())
    }

    fn record(&mut self, addr: u64, len: u64, prot: u8, shared_ro: bool, shared_file: bool) {
        let end = addr + len;
        self.cut(addr, end);
        let vma = Vma {
            end,
            prot,
            shared_ro,
            shared_file,
        };
        if vma.charged() {
            self.committed += len;
        }
        self.vmas.insert(addr, vma);
        self.perms.set(addr, len, perms_of(prot));
    }

    /// Unmap `addr..addr+len`: the guest loses access; host pages are replaced by fresh anonymous
    /// memory (never made inaccessible, since another hart may still hold a stale translation).
    pub fn unmap(&mut self, addr: u64, len: u64) -> Result<(), Errno> {
        if addr.checked_add(len).is_none_or(|e| e > SPAN) {
            return Err(Errno(libc::EINVAL));
        }
        let removed = self.cut(addr, addr + len);
        self.perms.set(addr, len, 0);
        let host_prot = self.host_prot(0, false);
        for (s, v) in removed {
            self.host_map(
                s,
                v.end - s,
                host_prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )?;
        }
        Ok(())
    }

    /// Change the guest protection of `addr..addr+len`.
    pub fn protect(&mut self, addr: u64, len: u64, prot: u8) -> Result<(), Errno> {
        let end = addr.checked_add(len).ok_or(Errno(libc::ENOMEM))?;
        if !self.fully_mapped(addr, end) {
            return Err(Errno(libc::ENOMEM));
        }
        let pieces: Vec<(u64, Vma)> = self
            .vmas
            .range(..end)
            .filter(|(_, v)| v.end > addr)
            .map(|(&k, v)| (k, *v))
            .collect();
        if prot & PROT_WRITE != 0 && pieces.iter().any(|(_, v)| v.shared_ro) {
            return Err(Errno(libc::EACCES));
        }
        if prot & PROT_WRITE != 0 {
            let newly: u64 = pieces
                .iter()
                .filter(|(_, v)| !v.shared_file && !v.charged())
                .map(|(k, v)| v.end.min(end) - (*k).max(addr))
                .sum();
            if self.committed + newly > self.limit {
                return Err(Errno(libc::ENOMEM));
            }
        }
        for (s, v) in self.cut(addr, end) {
            let v = Vma { prot, ..v };
            if v.charged() {
                self.committed += v.end - s;
            }
            self.vmas.insert(s, v);
            let host_prot = self.host_prot(prot, v.shared_ro);
            self.host_protect(s, v.end - s, host_prot)?;
        }
        self.perms.set(addr, len, perms_of(prot));
        Ok(())
    }

    /// Guest protection of the mapping holding `addr`, if any.
    pub fn prot_at(&self, addr: u64) -> Option<u8> {
        self.vmas
            .range(..=addr)
            .next_back()
            .filter(|(_, v)| v.end > addr)
            .map(|(_, v)| v.prot)
    }

    /// mremap: shrink in place, grow in place when the space after is free, or move (copying
    /// the contents) when `may_move`.
    pub fn remap(
        &mut self,
        old: u64,
        old_len: u64,
        new_len: u64,
        may_move: bool,
    ) -> Result<u64, Errno> {
        let old_len = page_up(old_len);
        let new_len = page_up(new_len);
        if !old.is_multiple_of(PAGE) || new_len == 0 {
            return Err(Errno(libc::EINVAL));
        }
        let old_end = old.checked_add(old_len).ok_or(Errno(libc::EINVAL))?;
        if !self.fully_mapped(old, old_end) {
            return Err(Errno(libc::EFAULT));
        }
        let prot = self.prot_at(old).unwrap_or(0);
        if new_len <= old_len {
            if new_len < old_len {
                self.unmap(old + new_len, old_len - new_len)?;
            }
            return Ok(old);
        }
        let grow_end = old.checked_add(new_len).ok_or(Errno(libc::ENOMEM))?;
        if grow_end <= SPAN && !self.overlaps(old_end, grow_end) {
            self.map_anon(old_end, new_len - old_len, prot, false)?;
            return Ok(old);
        }
        if !may_move {
            return Err(Errno(libc::ENOMEM));
        }
        let new = self.find_free(new_len).ok_or(Errno(libc::ENOMEM))?;
        self.map_anon(new, new_len, prot, false)?;
        if self.host_prot(prot, false) == libc::PROT_NONE {
            self.host_protect(old, old_len, libc::PROT_READ)?;
        }
        self.opened(new, old_len, prot, |mm| {
            // SAFETY: both ranges are inside the reservation, host-readable (old) and writable
            // (new), and disjoint.
            unsafe {
                std::ptr::copy_nonoverlapping(mm.base.ptr(old), mm.base.ptr(new), old_len as usize)
            };
        })?;
        self.unmap(old, old_len)?;
        Ok(new)
    }

    /// The brk syscall: move the break, mapping or unmapping heap pages.
    pub fn set_brk(&mut self, want: u64) -> u64 {
        if want < self.brk_start {
            return self.brk;
        }
        let (cur, new) = (page_up(self.brk), page_up(want));
        if new > cur {
            if new > MMAP_TOP
                || self.overlaps(cur, new)
                || self
                    .map_anon(cur, new - cur, PROT_READ | PROT_WRITE, false)
                    .is_err()
            {
                return self.brk;
            }
        } else if new < cur && self.unmap(new, cur - new).is_err() {
            return self.brk;
        }
        self.brk = want;
        want
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Whether the host can read the byte at guest address `g` (a pipe write reads it, and
    /// fails with EFAULT where the host may not).
    fn host_readable(mm: &Mm, g: u64) -> bool {
        let mut fds = [0; 2];
        // SAFETY: pipe fills the two descriptors we own and close below.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: write only reads the byte, or reports EFAULT.
        let n = unsafe { libc::write(fds[1], mm.base().ptr(g) as *const libc::c_void, 1) };
        // SAFETY: closing our own descriptors.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        n == 1
    }

    /// Whether the host can write the byte at guest address `g` (a pipe read writes it, and
    /// fails with EFAULT where the host may not).
    fn host_writable(mm: &Mm, g: u64) -> bool {
        let mut fds = [0; 2];
        // SAFETY: pipe fills the two descriptors we own and close below; the byte written
        // into the pipe comes from our own stack.
        unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            assert_eq!(
                libc::write(fds[1], [7u8].as_ptr() as *const libc::c_void, 1),
                1
            );
        }
        // SAFETY: read only writes the byte, or reports EFAULT.
        let n = unsafe { libc::read(fds[0], mm.base().ptr(g) as *mut libc::c_void, 1) };
        // SAFETY: closing our own descriptors.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        n == 1
    }

    #[test]
    fn the_span_lies_low_unless_that_range_is_taken() {
        let (a, _) = Mm::new(8 * MIB).unwrap();
        let (b, _) = Mm::new(8 * MIB).unwrap();
        assert_ne!(a.base().0, b.base().0);
        for mm in [&a, &b] {
            if mm.base().0 != PREFERRED_BASE {
                // Only because something holds the low range (one reservation per process
                // in `popek exec`; here, another test's or `a`).
                let err = reserve(PREFERRED_BASE, libc::MAP_FIXED_NOREPLACE).unwrap_err();
                assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
            }
        }
    }

    #[test]
    fn the_host_mirrors_guest_writes_until_memory_is_writable_and_executable() {
        let (mut mm, _mem) = Mm::new(64 * MIB).unwrap();
        let (reads, writes) = (mm.mirroring(), mm.mirroring_writes());
        let a = mm.find_free(3 * PAGE).unwrap();
        mm.map_anon(a, 3 * PAGE, PROT_READ | PROT_WRITE, false)
            .unwrap();
        mm.protect(a, PAGE, PROT_READ).unwrap();
        mm.protect(a + PAGE, PAGE, PROT_READ | PROT_EXEC).unwrap();
        let writable: Vec<bool> = (0..3).map(|i| host_writable(&mm, a + i * PAGE)).collect();
        assert_eq!(writable, [false, false, true]);
        assert!((0..3).all(|i| host_readable(&mm, a + i * PAGE)));
        // The loader's own writes go through whatever the protection.
        mm.poke(a + 8, b"popek").unwrap();
        // SAFETY: the page is host-readable (checked above) and 5 bytes long enough.
        let poked = unsafe { std::slice::from_raw_parts(mm.base().ptr(a + 8), 5) };
        assert_eq!(poked, b"popek");
        assert!(!host_writable(&mm, a));
        mm.protect(a, PAGE, PROT_READ | PROT_WRITE).unwrap();
        assert!(host_writable(&mm, a));
        // Writable and executable: reads stay mirrored, writes no longer.
        let x = mm.find_free(PAGE).unwrap();
        mm.map_anon(x, PAGE, PROT_READ | PROT_WRITE | PROT_EXEC, false)
            .unwrap();
        assert!(reads.load(Ordering::Acquire));
        assert!(!writes.load(Ordering::Acquire));
        assert!(host_writable(&mm, x));
        mm.protect(a + 2 * PAGE, PAGE, PROT_READ).unwrap();
        assert!(host_writable(&mm, a + 2 * PAGE));
        mm.unmap(a + 2 * PAGE, PAGE).unwrap();
        assert!(!host_readable(&mm, a + 2 * PAGE));
    }

    #[test]
    fn the_host_mirrors_what_the_guest_may_read_until_told_to_stop() {
        let (mut mm, _mem) = Mm::new(64 * MIB).unwrap();
        let flag = mm.mirroring();
        assert!(flag.load(Ordering::Acquire));
        let a = mm.find_free(4 * PAGE).unwrap();
        mm.map_anon(a, 4 * PAGE, PROT_READ | PROT_WRITE, false)
            .unwrap();
        assert!((0..4).all(|i| host_readable(&mm, a + i * PAGE)));
        mm.protect(a, PAGE, 0).unwrap();
        mm.unmap(a + PAGE, PAGE).unwrap();
        mm.protect(a + 2 * PAGE, PAGE, PROT_WRITE).unwrap();
        let readable: Vec<bool> = (0..4).map(|i| host_readable(&mm, a + i * PAGE)).collect();
        assert_eq!(readable, [false, false, true, true]);
        // Unprotected again: readable, with its bytes.
        mm.protect(a, PAGE, PROT_READ).unwrap();
        assert!(host_readable(&mm, a));
        // Never mapped, PROT_NONE from the start, and the page past the span: not readable.
        let b = mm.find_free(PAGE).unwrap();
        mm.map_anon(b, PAGE, 0, false).unwrap();
        assert!(!host_readable(&mm, b));
        assert!(!host_readable(&mm, 0));
        assert!(!host_readable(&mm, SPAN));
        // Execute-only memory (the decoder reads it on the host) ends the mirroring; from
        // then on unmapped pages keep their host access (other threads' TLBs may hold them).
        let x = mm.find_free(PAGE).unwrap();
        mm.map_anon(x, PAGE, PROT_EXEC, false).unwrap();
        assert!(!flag.load(Ordering::Acquire));
        assert!(host_readable(&mm, x));
        mm.unmap(a + 3 * PAGE, PAGE).unwrap();
        assert!(host_readable(&mm, a + 3 * PAGE));
        // A hidden page the guest unprotects is readable again.
        mm.protect(b, PAGE, PROT_READ).unwrap();
        assert!(host_readable(&mm, b));
    }

    #[test]
    fn writable_mappings_are_charged_until_the_limit() {
        let (mut mm, _mem) = Mm::new(8 * MIB).unwrap();
        let a = mm.find_free(4 * MIB).unwrap();
        mm.map_anon(a, 4 * MIB, PROT_READ | PROT_WRITE, false)
            .unwrap();
        assert_eq!(mm.committed(), 4 * MIB);
        // Read-only and PROT_NONE mappings cost nothing.
        let b = mm.find_free(64 * MIB).unwrap();
        mm.map_anon(b, 64 * MIB, 0, false).unwrap();
        assert_eq!(mm.committed(), 4 * MIB);
        // Past the limit: ENOMEM, and nothing changes.
        let c = mm.find_free(8 * MIB).unwrap();
        assert_eq!(
            mm.map_anon(c, 8 * MIB, PROT_WRITE, false),
            Err(Errno(libc::ENOMEM))
        );
        assert_eq!(
            mm.protect(b, 8 * MIB, PROT_READ | PROT_WRITE),
            Err(Errno(libc::ENOMEM))
        );
        assert_eq!(mm.prot_at(b), Some(0));
        mm.protect(b, 4 * MIB, PROT_READ | PROT_WRITE).unwrap();
        assert_eq!(mm.committed(), 8 * MIB);
        // Dropping write access, unmapping and replacing mappings give the charge back.
        mm.protect(b, 2 * MIB, PROT_READ).unwrap();
        assert_eq!(mm.committed(), 6 * MIB);
        mm.unmap(a + MIB, MIB).unwrap();
        assert_eq!(mm.committed(), 5 * MIB);
        mm.map_anon(a, MIB, PROT_READ, false).unwrap();
        assert_eq!(mm.committed(), 4 * MIB);
        // Growing the heap is charged too.
        mm.brk_start = 1 << 30;
        mm.brk = 1 << 30;
        assert_eq!(mm.set_brk((1 << 30) + 8 * MIB), 1 << 30);
        assert_eq!(mm.set_brk((1 << 30) + 2 * MIB), (1 << 30) + 2 * MIB);
        assert_eq!(mm.committed(), 6 * MIB);
    }
}
