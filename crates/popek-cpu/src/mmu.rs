//! Address translation (Sv39/48/57), the software TLB and the decode cache.
//!
//! The TLB maps a virtual page straight to a host pointer, per access kind and per translation
//! context, so a RAM access that hits costs a compare and an add. Contexts separate U-mode,
//! S-mode, S-mode with SUM and M-mode (bare) so that privilege switches and Linux toggling SUM
//! need no flush. Pages holding decoded code never get write entries: a store to them takes the
//! slow path, which drops the decoded page (self-modifying code and page reuse stay correct).

use rustc_hash::{FxHashMap, FxHashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::csr::mstatus;
use crate::decode::Insn;
use crate::decode_pool::{DecodePool, PooledPage};
use crate::hart::{request, Hart, Priv};
use crate::memory::PagePerms;
use crate::shared_decode::SharedDecode;
use crate::trap::{Exception, Trap};
use crate::Bus;

pub(crate) const TLB_SIZE: usize = 256;
/// Entries of each data TLB context a process-VM hart uses ([`Mmu::new`]): 32 MiB of address
/// space. A system VM's kernel flushes its TLBs at every context switch, and a flush clears
/// the entries in use, so its harts keep [`TLB_SIZE`]; a process VM's flushes come only with
/// munmap and mprotect (and forget only the range: [`Mmu::invalidate_range`]), and
/// interpreters such as lua and sqlite3 walk heaps much larger than the 1 MiB that 256
/// entries cover. With 2,048 entries lua5.4's heap (28 MiB) still sent 4 million accesses
/// through the slow path, pages 16 MiB apart taking turns at one entry.
pub(crate) const USER_DATA_TLB_SIZE: usize = 8192;
/// Most pages [`Mmu::invalidate_range`] forgets one by one on a process VM's hart (past this,
/// clearing the whole TLBs costs less).
const RANGE_FORGET_PAGES: u64 = 512;
/// Data contexts: U, S, S with SUM, M (bare), and a never-filled one used while MXR is set.
const DATA_CONTEXTS: usize = 5;
const CTX_NO_CACHE: usize = 4;
/// Decode-cache slots per 4 KiB page (one per 2-byte parcel), plus two sentinels that stop
/// sequential execution running off the page's end.
pub(crate) const SLOTS: usize = 2048 + 2;

/// Most decoded pages a hart keeps (16 KiB each, so 16 MiB); past this the cache starts over.
const MAX_DECODED_PAGES: usize = 1024;

/// A page of decoded instructions, indexed by (offset / 2).
pub(crate) type DecodedPage = [Insn; SLOTS];

#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct TlbEntry {
    /// Virtual page number, or `u64::MAX` when empty.
    pub tag: u64,
    /// Host address minus guest virtual address.
    pub addend: u64,
}

#[derive(Clone, Copy)]
pub(crate) struct ITlbEntry {
    pub tag: u64,
    pub addend: u64,
    pub page: *mut DecodedPage,
}

/// A fetch translation for an execution engine: virtual page to the host address of its
/// (write-protected) physical page.
#[derive(Clone, Copy)]
pub(crate) struct EngineTlbEntry {
    pub tag: u64,
    pub host: *const u8,
}

const EEMPTY: EngineTlbEntry = EngineTlbEntry {
    tag: u64::MAX,
    host: std::ptr::null(),
};

const EMPTY: TlbEntry = TlbEntry {
    tag: u64::MAX,
    addend: 0,
};
const IEMPTY: ITlbEntry = ITlbEntry {
    tag: u64::MAX,
    addend: 0,
    page: std::ptr::null_mut(),
};

/// The kind of access being translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Write,
    Exec,
}

impl Access {
    fn page_fault(self, vaddr: u64) -> Trap {
        let cause = match self {
            Access::Read => Exception::LoadPageFault,
            Access::Write => Exception::StorePageFault,
            Access::Exec => Exception::InstructionPageFault,
        };
        Trap::new(cause, vaddr)
    }

    pub(crate) fn access_fault(self, vaddr: u64) -> Trap {
        let cause = match self {
            Access::Read => Exception::LoadAccessFault,
            Access::Write => Exception::StoreAccessFault,
            Access::Exec => Exception::InstructionAccessFault,
        };
        Trap::new(cause, vaddr)
    }
}

/// A TLB: `N` entries for each of `M` contexts, on the heap (see [`boxed_table`]).
type Table<T, const M: usize> = Box<[[T; TLB_SIZE]; M]>;

/// A data TLB: room for [`USER_DATA_TLB_SIZE`] entries for each of the data contexts, of which
/// each context uses its first [`Mmu::data_entries`] (the rest is never touched, so never
/// backed by host memory).
type DataTable = Box<[[TlbEntry; USER_DATA_TLB_SIZE]; DATA_CONTEXTS]>;

/// A zeroed [`DataTable`], backed by host memory only where it is written. An all-zero entry
/// (tag 0, addend 0) is as good as an empty one once the two slots where a lookup can compare
/// tag 0 are emptied, which [`Mmu::ready_data_context`] does when a context is first used (no
/// lookup reaches a context before that).
fn data_table() -> DataTable {
    let n = USER_DATA_TLB_SIZE * DATA_CONTEXTS;
    let zeroed: Box<[[u64; 2]]> = vec![[0u64; 2]; n].into_boxed_slice();
    // SAFETY: a TlbEntry is two u64s (`repr(C)`, checked below), so `n` `[u64; 2]`s have the
    // size and alignment of the table, and all-zero bits are a valid entry.
    unsafe { Box::from_raw(Box::into_raw(zeroed) as *mut _) }
}
const _: () =
    assert!(std::mem::size_of::<TlbEntry>() == 16 && std::mem::align_of::<TlbEntry>() == 8);

/// A boxed `[[T; N]; M]` with every entry `value`, filled in place on the heap. The TLBs are
/// 80 KiB together: kept inline, the hart was built on the stack and moved (into its thread
/// and run loop) a few times, and those copies and the stack pages they touched were a fifth
/// of `popek exec`'s start-up.
fn boxed_table<T: Copy, const N: usize, const M: usize>(value: T) -> Box<[[T; N]; M]> {
    let flat: Box<[T]> = vec![value; N * M].into_boxed_slice();
    // SAFETY: `N * M` consecutive `T`s have the size and alignment of `[[T; N]; M]` (arrays
    // have no padding), so the allocation is valid for it and is freed with the same layout.
    unsafe { Box::from_raw(Box::into_raw(flat) as *mut [[T; N]; M]) }
}

pub(crate) struct Mmu {
    pub read: DataTable,
    pub write: DataTable,
    /// A superset of the host pages write-TLB entries lead to, as bits indexed by
    /// [`written_bit`]: a page that gets code and has no bit here has no write entry to drop,
    /// so [`Hart::forget_writes_to`] skips its scan of every write table (a kernel's text is
    /// never written). Set at each fill, cleared when every write entry is.
    written_pages: [u64; WRITTEN_WORDS],
    /// Entries each data context uses (a power of two; see [`USER_DATA_TLB_SIZE`]).
    pub data_entries: usize,
    /// Translation is off for every access (a process VM's hart): a page's data TLB entries
    /// can only be under its own number.
    flat: bool,
    /// Data contexts whose used entries were emptied (bit per context; see [`data_table`]).
    data_ready: u32,
    pub exec: Table<ITlbEntry, 4>,
    /// Fetch translations of engines (see `Hart::fetch_code_page`), per fetch context.
    pub engine_exec: Table<EngineTlbEntry, 4>,
    /// Physical pages an engine translated code from: write-protected like decoded pages
    /// (stores take the slow path, which drops them), but independent of the decode cache and
    /// its bound.
    pub engine_pages: FxHashSet<u64>,
    /// Superpages translated since the last full flush, as (virtual page number >> 9 ×
    /// level, level): the TLBs hold a superpage as separate 4 KiB entries, so an `sfence.vma`
    /// for one address in it must drop them all (see [`Mmu::flush_tlb_page`]).
    superpages: FxHashSet<(u64, u8)>,
    /// Virtual pages filled into a fetch TLB since the last full flush: only a change of one of
    /// them can make an engine's virtual-address caches (a JIT's jump cache) stale.
    code_vpns: FxHashSet<u64>,
    /// Current data context (index into `read`/`write`).
    pub dctx: usize,
    /// Current fetch context (index into `exec`).
    pub ictx: usize,
    /// Effective privilege for loads and stores (MPRV applied).
    pub data_priv: Priv,
    /// Decoded code, keyed by physical page number.
    pub decoded: FxHashMap<u64, PooledPage>,
    /// Decoded pages dropped while the interpreter may still point into them; given back to
    /// the pool between slices.
    dropped: Vec<PooledPage>,
    /// Where decoded pages come from (see the decode_pool module).
    pool: DecodePool,
    /// Decoded pages shared with other processes restoring the same snapshot, if any (see
    /// the shared_decode module): tried before the pool.
    pub shared: Option<Arc<SharedDecode>>,
    /// Physical pages of decoded code dropped since an engine last looked (see
    /// `Hart::drain_code_drops`); bounded: past `MAX_CODE_DROPS` it becomes `code_drops_all`.
    pub code_drops: Vec<u64>,
    /// All decoded code was dropped since an engine last looked.
    pub code_drops_all: bool,
    /// Bumped by every TLB flush: engines caching virtual-address lookups drop them when it
    /// changes.
    pub tlb_gen: u64,
    /// Which TLB tables (see [`filled_bit`]) may hold entries: a flush clears only those. A
    /// guest kernel flushes at every context switch, mostly with one or two of the 18 tables
    /// in use (a restored clone spent 3.5% of its time clearing them all).
    filled: u32,
    /// The addend every data TLB entry holds, when the hart's owner requires one (see
    /// [`Hart::require_data_addend`]): a page with another is never entered.
    pub sole_addend: Option<u64>,
    /// Bits of the span below which the host checks reads at the sole addend (see
    /// [`Hart::let_host_check_reads`]).
    pub host_read_bits: Option<u8>,
    /// The same for stores (see [`Hart::let_host_check_writes`]).
    pub host_write_bits: Option<u8>,
}

/// The kinds of TLB table, each valued at the bit of [`Mmu::filled`] for its context 0.
#[derive(Clone, Copy)]
pub(crate) enum Tables {
    Read = 0,
    Write = DATA_CONTEXTS as isize,
    Exec = 2 * DATA_CONTEXTS as isize,
    EngineExec = 2 * DATA_CONTEXTS as isize + 4,
}

/// The bit of [`Mmu::filled`] for context `ctx` of `kind`.
#[inline(always)]
pub(crate) fn filled_bit(kind: Tables, ctx: usize) -> u32 {
    1 << (kind as usize + ctx)
}

/// Empty every context of `tables` (of `kind`) whose bit is set in `filled` (setting its
/// first `used` entries to `empty`), and clear those bits.
fn clear_filled<T: Copy, const N: usize>(
    tables: &mut [[T; N]],
    used: usize,
    filled: &mut u32,
    kind: Tables,
    empty: T,
) {
    for (ctx, t) in tables.iter_mut().enumerate() {
        let bit = filled_bit(kind, ctx);
        if *filled & bit != 0 {
            t[..used].fill(empty);
            *filled &= !bit;
        }
    }
}

/// Most dropped pages remembered one by one for engines (an interpreter-only hart never drains).
const MAX_CODE_DROPS: usize = 64;

/// Words of [`Mmu::written_pages`] (4,096 bits, half a KiB to clear).
const WRITTEN_WORDS: usize = 64;

/// The word and bit of [`Mmu::written_pages`] for the host page at `host` (any address in it).
#[inline(always)]
fn written_bit(host: u64) -> (usize, u64) {
    let page = (host >> 12) as usize;
    ((page >> 6) % WRITTEN_WORDS, 1 << (page & 63))
}

#[inline(always)]
pub(crate) fn tlb_index(vaddr: u64) -> usize {
    ((vaddr >> 12) as usize) & (TLB_SIZE - 1)
}

impl Mmu {
    /// The MMU of a system VM's hart, or with `flat` of a process VM's (translation always
    /// off, larger data TLBs: see [`USER_DATA_TLB_SIZE`]).
    pub fn new(flat: bool) -> Mmu {
        let data_entries = if flat { USER_DATA_TLB_SIZE } else { TLB_SIZE };
        let mut mmu = Mmu {
            read: data_table(),
            write: data_table(),
            written_pages: [0; WRITTEN_WORDS],
            data_entries,
            flat,
            data_ready: 0,
            exec: boxed_table(IEMPTY),
            engine_exec: boxed_table(EEMPTY),
            engine_pages: FxHashSet::default(),
            superpages: FxHashSet::default(),
            code_vpns: FxHashSet::default(),
            dctx: 3,
            ictx: 3,
            data_priv: Priv::M,
            decoded: FxHashMap::default(),
            dropped: Vec::new(),
            pool: DecodePool::new(),
            shared: None,
            code_drops: Vec::new(),
            // A new (or reset) hart: an engine must forget what it had.
            code_drops_all: true,
            tlb_gen: 0,
            filled: 0,
            sole_addend: None,
            host_read_bits: None,
            host_write_bits: None,
        };
        mmu.ready_data_context();
        mmu
    }

    /// Make the current data context's entries empty if it is in use for the first time.
    ///
    /// Its entries are all zero (see [`data_table`]) and stay so: writing `EMPTY` into all of
    /// them backed all of a process VM's 256 KiB of tables, where its lookups touch a few
    /// pages of them. A lookup compares an entry's tag with the page of the access's last
    /// byte, and the entry's slot comes from the page of its first byte, so tag 0 is compared
    /// only when the last byte is in page 0: the first is then in page 0 (slot 0) or, for an
    /// access wrapping around the address space, in the last page (the last slot). Emptying
    /// those two slots leaves no zero entry any lookup can hit.
    #[inline(always)]
    fn ready_data_context(&mut self) {
        let bit = 1 << self.dctx;
        if self.data_ready & bit == 0 {
            self.data_ready |= bit;
            let last = self.data_entries - 1;
            for t in [&mut self.read, &mut self.write] {
                t[self.dctx][0] = EMPTY;
                t[self.dctx][last] = EMPTY;
            }
        }
    }

    /// Drop every cached translation (satp writes, sfence.vma).
    pub fn flush_tlb(&mut self) {
        self.tlb_gen += 1;
        self.superpages.clear();
        self.code_vpns.clear();
        self.flush_write_tlb();
        let f = &mut self.filled;
        let used = self.data_entries;
        clear_filled(&mut *self.read, used, f, Tables::Read, EMPTY);
        clear_filled(&mut *self.exec, TLB_SIZE, f, Tables::Exec, IEMPTY);
        clear_filled(
            &mut *self.engine_exec,
            TLB_SIZE,
            f,
            Tables::EngineExec,
            EEMPTY,
        );
        debug_assert_eq!(*f, 0, "every table's bits are cleared");
    }

    /// Drop the cached translations of `vaddr`'s page (`sfence.vma` with an address). A guest
    /// kernel does this after changing one page's mapping, far more often than it flushes
    /// everything (booting the default guest: 120,000 times against 4,500); each used to drop
    /// every TLB and a JIT's jump cache. If the page lies in a superpage translated since the
    /// last full flush, everything goes (the superpage's other 4 KiB entries would stay); an
    /// engine is told (through [`Mmu::tlb_gen`]) only if the page was fetched from.
    pub fn flush_tlb_page(&mut self, vaddr: u64) {
        let vpn = vaddr >> 12;
        let in_superpage = !self.superpages.is_empty()
            && (1..=4u8).any(|level| {
                self.superpages
                    .contains(&(vpn >> (9 * level as u32), level))
            });
        if self.flat || in_superpage {
            self.flush_tlb();
            return;
        }
        if self.code_vpns.contains(&vpn) {
            self.tlb_gen += 1;
        }
        self.forget_entries(vpn, vpn);
    }

    /// Note a superpage leaf at `level` (1: 2 MiB, ...) translated for `vaddr`.
    #[inline]
    pub(crate) fn note_superpage(&mut self, vaddr: u64, level: u32) {
        self.superpages
            .insert((vaddr >> 12 >> (9 * level), level as u8));
    }

    /// Note that `vaddr`'s page is in a fetch TLB (only [`Mmu::flush_tlb_page`] asks, which a
    /// flat MMU never gets to: it flushes everything there).
    #[inline]
    pub(crate) fn note_code_vpn(&mut self, vaddr: u64) {
        if !self.flat {
            self.code_vpns.insert(vaddr >> 12);
        }
    }

    /// The index of `vaddr`'s entry in a data TLB context.
    #[inline(always)]
    pub(crate) fn data_index(&self, vaddr: u64) -> usize {
        ((vaddr >> 12) as usize) & (self.data_entries - 1)
    }

    /// Note that context `ctx` of `kind` is getting an entry.
    #[inline(always)]
    pub(crate) fn mark_filled(&mut self, kind: Tables, ctx: usize) {
        self.filled |= filled_bit(kind, ctx);
    }

    /// Drop every write translation (a page just became code, or the dirty log starts a
    /// round: stores must take the slow path).
    pub fn flush_write_tlb(&mut self) {
        let used = self.data_entries;
        clear_filled(
            &mut *self.write,
            used,
            &mut self.filled,
            Tables::Write,
            EMPTY,
        );
        self.written_pages = [0; WRITTEN_WORDS];
    }

    /// Note that a write entry now leads to the host page at `host` (see
    /// [`Mmu::written_pages`]).
    #[inline(always)]
    fn note_write_entry(&mut self, host: u64) {
        let (word, bit) = written_bit(host);
        self.written_pages[word] |= bit;
    }

    /// Whether a write entry may lead to the host page at `host`: false only if none does.
    #[inline(always)]
    fn may_write_to(&self, host: u64) -> bool {
        let (word, bit) = written_bit(host);
        self.written_pages[word] & bit != 0
    }

    /// Whether code was dropped since an engine last looked.
    #[inline(always)]
    pub fn code_drops_pending(&self) -> bool {
        self.code_drops_all || !self.code_drops.is_empty()
    }

    /// Drop translations and decoded code.
    pub fn flush_all(&mut self) {
        self.flush_tlb();
        self.dropped.extend(self.decoded.drain().map(|(_, p)| p));
        self.engine_pages.clear();
        self.code_drops_all = true;
        self.code_drops.clear();
    }

    /// Bytes of host memory backing the decode cache (see `DecodePool::resident_bytes`).
    pub fn decode_cache_resident(&self) -> u64 {
        self.pool.resident_bytes()
    }

    /// Empty the interpreter's fetch TLBs (their entries point into decoded pages).
    fn clear_exec(&mut self) {
        clear_filled(
            &mut *self.exec,
            TLB_SIZE,
            &mut self.filled,
            Tables::Exec,
            IEMPTY,
        );
    }

    /// Drop every decoded page (only between instructions: see `release_dropped_pages`).
    /// Engines' pages stay protected: their translations remain valid.
    pub fn evict_decoded(&mut self) {
        self.dropped.extend(self.decoded.drain().map(|(_, p)| p));
        self.clear_exec();
    }

    /// Forget the decoded (and engine-translated) code of physical page `ppn` (it is being
    /// written).
    pub fn drop_code_page(&mut self, ppn: u64) {
        if let Some(p) = self.decoded.remove(&ppn) {
            self.dropped.push(p);
            self.clear_exec();
        }
        if self.engine_pages.remove(&ppn) {
            clear_filled(
                &mut *self.engine_exec,
                TLB_SIZE,
                &mut self.filled,
                Tables::EngineExec,
                EEMPTY,
            );
            if !self.code_drops_all {
                if self.code_drops.len() >= MAX_CODE_DROPS {
                    self.code_drops_all = true;
                    self.code_drops.clear();
                } else {
                    self.code_drops.push(ppn);
                }
            }
        }
    }

    /// Whether physical page `ppn` holds code the interpreter decoded or an engine translated.
    #[inline]
    pub fn is_code_page(&self, ppn: u64) -> bool {
        self.decoded.contains_key(&ppn)
            || (!self.engine_pages.is_empty() && self.engine_pages.contains(&ppn))
    }

    /// Forget translations and the decoded code of every page overlapping `start..start+len`.
    ///
    /// A process VM's hart (flat: a page's entries sit under its own number) forgets a range
    /// of up to [`RANGE_FORGET_PAGES`] pages entry by entry; anything else flushes the TLBs.
    /// A program that maps and unmaps buffers in a loop otherwise cleared its whole data TLBs
    /// (2 × 8,192 entries) twice a round.
    pub fn invalidate_range(&mut self, start: u64, len: u64) {
        let first = start >> 12;
        let last = start.saturating_add(len).saturating_sub(1) >> 12;
        if self.flat && len != 0 && last - first < RANGE_FORGET_PAGES {
            self.forget_pages(first, last);
        } else {
            self.flush_tlb();
        }
        self.drop_code_range(start, len);
    }

    /// Empty every TLB entry of a flat MMU for pages `first..=last`, and count it as a flush
    /// for engines ([`Mmu::tlb_gen`]).
    fn forget_pages(&mut self, first: u64, last: u64) {
        debug_assert!(self.flat);
        self.tlb_gen += 1;
        self.forget_entries(first, last);
    }

    /// Empty every TLB entry for virtual pages `first..=last`.
    fn forget_entries(&mut self, first: u64, last: u64) {
        let filled = self.filled;
        for vpn in first..=last {
            let d = vpn as usize & (self.data_entries - 1);
            let i = vpn as usize & (TLB_SIZE - 1);
            for ctx in 0..DATA_CONTEXTS {
                for (kind, table) in [
                    (Tables::Read, &mut self.read),
                    (Tables::Write, &mut self.write),
                ] {
                    if filled & filled_bit(kind, ctx) != 0 && table[ctx][d].tag == vpn {
                        table[ctx][d] = EMPTY;
                    }
                }
            }
            for ctx in 0..self.exec.len() {
                if self.exec[ctx][i].tag == vpn {
                    self.exec[ctx][i] = IEMPTY;
                }
                if self.engine_exec[ctx][i].tag == vpn {
                    self.engine_exec[ctx][i] = EEMPTY;
                }
            }
        }
    }

    /// Forget the decoded code of every page overlapping `start..start+len`.
    pub fn drop_code_range(&mut self, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = start >> 12;
        let last = start.saturating_add(len).saturating_sub(1) >> 12;
        if len == u64::MAX || last - first > (self.decoded.len() + self.engine_pages.len()) as u64 {
            let doomed: Vec<u64> = self
                .decoded
                .keys()
                .chain(self.engine_pages.iter())
                .copied()
                .filter(|p| (first..=last).contains(p))
                .collect();
            for p in doomed {
                self.drop_code_page(p);
            }
        } else {
            for p in first..=last {
                self.drop_code_page(p);
            }
        }
    }

    /// Free dropped decoded pages; only called when no instruction is executing.
    pub fn release_dropped_pages(&mut self) {
        for p in self.dropped.drain(..) {
            self.pool.give(p);
        }
    }

    /// Recompute the TLB contexts after a privilege or `mstatus` change.
    #[inline]
    pub fn set_context(&mut self, prv: Priv, status: u64) {
        self.ictx = prv as usize;
        let eff = if prv == Priv::M && status & mstatus::MPRV != 0 {
            Priv::from_bits(status >> mstatus::MPP_SHIFT)
        } else {
            prv
        };
        self.data_priv = eff;
        self.dctx = match eff {
            _ if status & mstatus::MXR != 0 && eff != Priv::M => CTX_NO_CACHE,
            Priv::U => 0,
            Priv::S if status & mstatus::SUM != 0 => 2,
            Priv::S => 1,
            Priv::M => 3,
        };
        self.ready_data_context();
    }
}

impl Hart {
    /// The physical address a debugger reaches at `vaddr` through the hart's current translation
    /// (its privilege and `satp`), without permission checks or A/D updates, so a debugger can
    /// read kernel and user pages alike; `None` when nothing is mapped there.
    pub fn debug_translate(&self, vaddr: u64) -> Option<u64> {
        let mode = self.s.csr.satp >> 60;
        if self.s.prv == Priv::M || mode == 0 {
            if let Some(perms) = self.mem.page_perms() {
                if perms.get(vaddr) == 0 {
                    return None;
                }
            }
            return Some(vaddr);
        }
        let levels = match mode {
            8 => 3,
            9 => 4,
            _ => 5,
        };
        let mut table = (self.s.csr.satp & ((1 << 44) - 1)) << 12;
        for level in (0..levels).rev() {
            let vpn = (vaddr >> (12 + 9 * level)) & 0x1ff;
            let mut raw = [0u8; 8];
            self.mem.read(table + vpn * 8, &mut raw)?;
            let pte = u64::from_le_bytes(raw);
            if pte & 1 == 0 {
                return None;
            }
            let ppn = (pte >> 10) & ((1 << 44) - 1);
            if pte & 0xa == 0 {
                table = ppn << 12;
                continue;
            }
            let low_mask = (1u64 << (9 * level)) - 1;
            let page = (ppn & !low_mask) | ((vaddr >> 12) & low_mask);
            return Some((page << 12) | (vaddr & 0xfff));
        }
        None
    }

    /// Read guest memory at virtual address `vaddr` for a debugger (see
    /// [`Hart::debug_translate`]); returns how many bytes were readable from the start.
    pub fn debug_read(&self, vaddr: u64, buf: &mut [u8]) -> usize {
        let mut done = 0;
        while done < buf.len() {
            let va = vaddr.wrapping_add(done as u64);
            let chunk = (4096 - (va & 0xfff) as usize).min(buf.len() - done);
            let Some(pa) = self.debug_translate(va) else {
                break;
            };
            if self.mem.read(pa, &mut buf[done..done + chunk]).is_none() {
                break;
            }
            done += chunk;
        }
        done
    }

    /// Write guest memory at virtual address `vaddr` for a debugger; every hart drops decoded
    /// code of the bytes written (through the memory's DMA log). Returns the bytes written.
    pub fn debug_write(&mut self, vaddr: u64, data: &[u8]) -> usize {
        let mut done = 0;
        while done < data.len() {
            let va = vaddr.wrapping_add(done as u64);
            let chunk = (4096 - (va & 0xfff) as usize).min(data.len() - done);
            let Some(pa) = self.debug_translate(va) else {
                break;
            };
            if self.mem.write(pa, &data[done..done + chunk]).is_none() {
                break;
            }
            self.mem.device_wrote(pa, chunk as u64);
            done += chunk;
        }
        done
    }
}

impl Hart {
    /// Translate `vaddr` for `access` at privilege `prv`, updating A/D bits.
    pub(crate) fn translate(&mut self, vaddr: u64, access: Access, prv: Priv) -> Result<u64, Trap> {
        let satp = self.s.csr.satp;
        let mode = satp >> 60;
        if prv == Priv::M || mode == 0 {
            if let Some(perms) = self.mem.page_perms() {
                let need = match access {
                    Access::Read => PagePerms::READ,
                    Access::Write => PagePerms::WRITE,
                    Access::Exec => PagePerms::EXEC,
                };
                if perms.get(vaddr) & need == 0 {
                    return Err(access.access_fault(vaddr));
                }
            }
            return Ok(vaddr);
        }
        let levels = match mode {
            8 => 3,
            9 => 4,
            _ => 5,
        };
        let va_bits = 12 + 9 * levels;
        // The address must be sign-extended from its top implemented bit.
        let top = (vaddr as i64) >> (va_bits - 1);
        if top != 0 && top != -1 {
            return Err(access.page_fault(vaddr));
        }
        let status = self.s.csr.mstatus;
        let mut table = (satp & ((1 << 44) - 1)) << 12;
        for level in (0..levels).rev() {
            let vpn = (vaddr >> (12 + 9 * level)) & 0x1ff;
            let pte_addr = table + vpn * 8;
            let pte_ptr = self
                .mem
                .host_ptr(pte_addr, 8)
                .ok_or(access.access_fault(vaddr))?;
            // SAFETY: host_ptr checked the 8 bytes lie in guest RAM; PTEs are 8-byte aligned because
            // `table` is page aligned. Atomic because other harts walk and update the same tables.
            let pte_atomic = unsafe { &*(pte_ptr as *const AtomicU64) };
            let pte = pte_atomic.load(Ordering::Acquire);
            let (v, r, w, x, u, a, d) = (
                pte & 1 != 0,
                pte & 2 != 0,
                pte & 4 != 0,
                pte & 8 != 0,
                pte & 16 != 0,
                pte & 64 != 0,
                pte & 128 != 0,
            );
            // Reserved bits (no Svpbmt/Svnapot here) and W-without-R are invalid.
            if !v || (!r && w) || pte >> 54 != 0 {
                return Err(access.page_fault(vaddr));
            }
            let ppn = (pte >> 10) & ((1 << 44) - 1);
            if !r && !x {
                if level == 0 || a || d || u {
                    return Err(access.page_fault(vaddr));
                }
                table = ppn << 12;
                continue;
            }
            // Leaf: permission checks.
            let allowed = match access {
                Access::Exec => x && if prv == Priv::U { u } else { !u },
                Access::Read | Access::Write => {
                    let perm = match access {
                        Access::Read => r || (x && status & mstatus::MXR != 0),
                        _ => w,
                    };
                    let mode_ok = match prv {
                        Priv::U => u,
                        _ => !u || status & mstatus::SUM != 0,
                    };
                    perm && mode_ok
                }
            };
            if !allowed {
                return Err(access.page_fault(vaddr));
            }
            // A superpage's PPN must be aligned to its size.
            let low_mask = (1u64 << (9 * level)) - 1;
            if ppn & low_mask != 0 {
                return Err(access.page_fault(vaddr));
            }
            let need = 64 | if access == Access::Write { 128 } else { 0 };
            if pte & need != need {
                // Hardware A/D update, atomically against concurrent walkers.
                if pte_atomic
                    .compare_exchange(pte, pte | need, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    return self.translate(vaddr, access, prv);
                }
                if let Some(log) = self.mem.dirty_log() {
                    log.mark(pte_addr, 8);
                }
            }
            if level > 0 {
                self.mmu.note_superpage(vaddr, level as u32);
            }
            let page = (ppn & !low_mask) | ((vaddr >> 12) & low_mask);
            return Ok((page << 12) | (vaddr & 0xfff));
        }
        Err(access.page_fault(vaddr))
    }

    /// Slow path of a data access: translate, fill the TLB for RAM, and return the host pointer,
    /// or `None` with the physical address for MMIO.
    pub(crate) fn data_slow(
        &mut self,
        vaddr: u64,
        size: u64,
        access: Access,
    ) -> Result<(Option<*mut u8>, u64), Trap> {
        let paddr = self.translate(vaddr, access, self.mmu.data_priv)?;
        let Some(host) = self.mem.host_ptr(paddr, size) else {
            return Ok((None, paddr));
        };
        let ppn = paddr >> 12;
        if access == Access::Write {
            if let Some(log) = self.mem.dirty_log() {
                log.mark(paddr, size);
            }
            if let Some(log) = &mut self.store_log {
                log.record(&self.mem, paddr, size);
            }
        }
        if access == Access::Write && self.mmu.is_code_page(ppn) {
            // Code is being overwritten: forget it and leave the inner loop, which may be running
            // from that very page.
            self.mmu.drop_code_page(ppn);
            self.s.requests |= request::LEAVE;
        }
        let logged = access == Access::Write && self.store_log.is_some();
        let addend = (host as u64)
            .wrapping_sub(paddr & 0xfff)
            .wrapping_sub(vaddr & !0xfff);
        if self.mmu.dctx != CTX_NO_CACHE
            && !logged
            && self.mmu.sole_addend.is_none_or(|a| a == addend)
            && self.mem.host_ptr(paddr & !0xfff, 4096).is_some()
        {
            let entry = TlbEntry {
                tag: vaddr >> 12,
                addend,
            };
            let ctx = self.mmu.dctx;
            match access {
                Access::Write => {
                    self.mmu.mark_filled(Tables::Write, ctx);
                    self.mmu
                        .note_write_entry((vaddr & !0xfff).wrapping_add(addend));
                    self.mmu.write[ctx][self.mmu.data_index(vaddr)] = entry;
                }
                _ => {
                    self.mmu.mark_filled(Tables::Read, ctx);
                    self.mmu.read[ctx][self.mmu.data_index(vaddr)] = entry;
                }
            }
        }
        Ok((Some(host), paddr))
    }

    /// Load `N` bytes at `vaddr` (any alignment).
    #[inline(always)]
    pub(crate) fn load<const N: usize, B: Bus>(
        &mut self,
        bus: &mut B,
        vaddr: u64,
    ) -> Result<u64, Trap> {
        let e = self.mmu.read[self.mmu.dctx][self.mmu.data_index(vaddr)];
        // The page of the last byte: it is the entry's (whose index comes from the first
        // byte's page, so it holds only that page) only if the access stays in one page.
        if e.tag == vaddr.wrapping_add(N as u64 - 1) >> 12 {
            let p = vaddr.wrapping_add(e.addend) as *const u8;
            // SAFETY: the TLB entry maps this whole page into guest RAM, and the access stays in it.
            return Ok(unsafe { read_host::<N>(p) });
        }
        self.load_slow(bus, vaddr, N as u64)
    }

    #[inline(never)]
    fn load_slow<B: Bus>(&mut self, bus: &mut B, vaddr: u64, size: u64) -> Result<u64, Trap> {
        if (vaddr & 0xfff) + size > 4096 {
            let mut v = 0u64;
            for i in 0..size {
                v |= self.load::<1, B>(bus, vaddr.wrapping_add(i))? << (8 * i);
            }
            return Ok(v);
        }
        match self.data_slow(vaddr, size, Access::Read)? {
            // SAFETY: data_slow returned a pointer with `size` bytes of guest RAM behind it.
            (Some(host), _) => Ok(unsafe { read_dyn(host, size) }),
            (None, paddr) => {
                if paddr & (size - 1) != 0 {
                    return Err(Access::Read.access_fault(vaddr));
                }
                let v = bus
                    .read(paddr, size as u8)
                    .map_err(|_| Access::Read.access_fault(vaddr))?;
                if let Some(log) = &mut self.store_log {
                    log.record_mmio();
                }
                Ok(v)
            }
        }
    }

    /// Store the low `N` bytes of `value` at `vaddr` (any alignment).
    #[inline(always)]
    pub(crate) fn store<const N: usize, B: Bus>(
        &mut self,
        bus: &mut B,
        vaddr: u64,
        value: u64,
    ) -> Result<(), Trap> {
        let e = self.mmu.write[self.mmu.dctx][self.mmu.data_index(vaddr)];
        // The page of the last byte: it is the entry's (whose index comes from the first
        // byte's page, so it holds only that page) only if the access stays in one page.
        if e.tag == vaddr.wrapping_add(N as u64 - 1) >> 12 {
            let p = vaddr.wrapping_add(e.addend) as *mut u8;
            // SAFETY: the TLB entry maps this whole page into guest RAM, and the access stays in it.
            unsafe { write_host::<N>(p, value) };
            return Ok(());
        }
        self.store_slow(bus, vaddr, N as u64, value)
    }

    #[inline(never)]
    fn store_slow<B: Bus>(
        &mut self,
        bus: &mut B,
        vaddr: u64,
        size: u64,
        value: u64,
    ) -> Result<(), Trap> {
        if (vaddr & 0xfff) + size > 4096 {
            // Check both pages before writing anything, so a fault leaves memory untouched; a
            // fault in the second page is at its first byte (as a load's, and as QEMU's).
            let next_page = (vaddr & !0xfff).wrapping_add(4096);
            self.translate(vaddr, Access::Write, self.mmu.data_priv)?;
            self.translate(next_page, Access::Write, self.mmu.data_priv)?;
            for i in 0..size {
                self.store::<1, B>(bus, vaddr.wrapping_add(i), value >> (8 * i))?;
            }
            return Ok(());
        }
        match self.data_slow(vaddr, size, Access::Write)? {
            (Some(host), _) => {
                // SAFETY: data_slow returned a pointer with `size` bytes of guest RAM behind it.
                unsafe { write_dyn(host, size, value) };
                Ok(())
            }
            (None, paddr) => {
                if paddr & (size - 1) != 0 {
                    return Err(Access::Write.access_fault(vaddr));
                }
                bus.write(paddr, size as u8, value)
                    .map_err(|_| Access::Write.access_fault(vaddr))?;
                if let Some(log) = &mut self.store_log {
                    log.record_mmio();
                }
                self.s.requests |= request::IO;
                self.s.requests |= request::LEAVE;
                Ok(())
            }
        }
    }

    /// Host pointer for an atomic access of `size` bytes at `vaddr`: AMOs and LR/SC must be
    /// naturally aligned and in RAM.
    pub(crate) fn atomic_ptr(
        &mut self,
        vaddr: u64,
        size: u64,
        access: Access,
    ) -> Result<(*mut u8, u64), Trap> {
        if vaddr & (size - 1) != 0 {
            let cause = if access == Access::Read {
                Exception::LoadMisaligned
            } else {
                Exception::StoreMisaligned
            };
            return Err(Trap::new(cause, vaddr));
        }
        match self.data_slow(vaddr, size, access)? {
            (Some(host), paddr) => Ok((host, paddr)),
            (None, _) => Err(access.access_fault(vaddr)),
        }
    }

    /// Find (or create) the decoded page holding `pc`, with the host address of the page's start.
    #[inline(always)]
    pub(crate) fn fetch_page(&mut self) -> Result<(*mut DecodedPage, *const u8), Trap> {
        let pc = self.s.pc;
        let e = self.mmu.exec[self.mmu.ictx][tlb_index(pc)];
        if e.tag == pc >> 12 {
            return Ok((e.page, (pc & !0xfff).wrapping_add(e.addend) as *const u8));
        }
        self.fetch_page_slow()
    }

    #[inline(never)]
    fn fetch_page_slow(&mut self) -> Result<(*mut DecodedPage, *const u8), Trap> {
        let pc = self.s.pc;
        let (ppn, host) = self.fetch_page_host()?;
        if self.mmu.decoded.len() >= MAX_DECODED_PAGES && !self.mmu.decoded.contains_key(&ppn) {
            // Bound popek's own memory: start the decode cache afresh (nothing executes from it
            // now; the pages are freed at the next slice boundary).
            self.mmu.evict_decoded();
        }
        let page = self.mark_code_page(ppn, host);
        let ctx = self.mmu.ictx;
        self.mmu.note_code_vpn(pc);
        self.mmu.mark_filled(Tables::Exec, ctx);
        self.mmu.exec[ctx][tlb_index(pc)] = ITlbEntry {
            tag: pc >> 12,
            addend: (host as u64).wrapping_sub(pc & !0xfff),
            page,
        };
        Ok((page, host))
    }

    /// The physical page number and host address of the page holding the pc, translated for
    /// execution (the page walk, permission and access-fault checks of an instruction fetch).
    pub(crate) fn fetch_page_host(&mut self) -> Result<(u64, *const u8), Trap> {
        let pc = self.s.pc;
        let paddr = self.translate(pc, Access::Exec, self.s.prv)?;
        let host = self
            .mem
            .host_ptr(paddr & !0xfff, 4096)
            .ok_or(Trap::new(Exception::InstructionAccessFault, pc))?;
        Ok((paddr >> 12, host))
    }

    /// Drop the write-TLB entries that lead into physical page `ppn`, which now holds code: its
    /// stores must take the slow path, which drops the code; devices' writes to it go into the
    /// DMA log from now on ([`crate::CodePages`]). An entry maps virtual page `tag`
    /// to host address `(tag << 12) + addend`; only those landing on this page go.
    pub(crate) fn forget_writes_to(&mut self, ppn: u64) {
        self.mem.code_pages().mark(ppn);
        match self.mem.host_ptr(ppn << 12, 1) {
            Some(host) => {
                let host = host as u64;
                if !self.mmu.may_write_to(host) {
                    return;
                }
                // Without translation only the page's own virtual number maps it.
                let (from, to) = if self.mmu.flat {
                    let index = self.mmu.data_index(ppn << 12);
                    (index, index + 1)
                } else {
                    (0, self.mmu.data_entries)
                };
                let filled = self.mmu.filled;
                for (ctx, t) in self.mmu.write.iter_mut().enumerate() {
                    if filled & filled_bit(Tables::Write, ctx) == 0 {
                        continue;
                    }
                    for e in &mut t[from..to] {
                        if e.tag != u64::MAX && (e.tag << 12).wrapping_add(e.addend) == host {
                            *e = EMPTY;
                        }
                    }
                }
            }
            None => self.mmu.flush_write_tlb(),
        }
    }

    /// The decoded page for physical page `ppn`, created if needed; from then on stores to the
    /// page take the slow path, which drops the decoded code.
    /// `host` is the page's guest RAM: a shared decoded page serves it only if its bytes are
    /// the snapshot's (checked after its write entries are gone, so this hart cannot change
    /// them unnoticed).
    fn mark_code_page(&mut self, ppn: u64, host: *const u8) -> *mut DecodedPage {
        if let Some(p) = self.mmu.decoded.get(&ppn) {
            return p.as_ptr();
        }
        self.forget_writes_to(ppn);
        let shared = self
            .mmu
            .shared
            .as_ref()
            // SAFETY: `host` is the 4 KiB of guest RAM of page `ppn` (from its translation).
            .and_then(|s| unsafe { s.page(ppn, host) });
        let page = match shared {
            Some(p) => PooledPage::shared(p),
            None => self.mmu.pool.take(),
        };
        let p = page.as_ptr();
        self.mmu.decoded.insert(ppn, page);
        p
    }

    /// Fetch and decode the 4-byte instruction that straddles a page boundary at `pc` (never
    /// cached: each half may map anywhere). Each half is fetched as an instruction fetch from
    /// its page would be, through the fetch TLB: both pages are code pages from then on
    /// (writes to either end execution of what was decoded from them). A fault reports the
    /// half's address, with `pc` still at the instruction.
    pub(crate) fn fetch_straddling(&mut self) -> Result<u32, Trap> {
        let pc = self.s.pc;
        let mut parcel = [0u16; 2];
        for (i, p) in parcel.iter_mut().enumerate() {
            let va = pc.wrapping_add(2 * i as u64);
            self.s.pc = va;
            let fetched = self.fetch_page();
            self.s.pc = pc;
            let (_, host) = fetched?;
            // SAFETY: `host` is the start of the 4 KiB page of guest RAM holding `va`, whose
            // offset is 4094 (the first half) or 0 (the second).
            *p = unsafe { (host.add((va & 0xfff) as usize) as *const u16).read_unaligned() };
        }
        Ok(parcel[0] as u32 | (parcel[1] as u32) << 16)
    }
}

/// # Safety
/// `p` must point at `N` readable bytes.
#[inline(always)]
unsafe fn read_host<const N: usize>(p: *const u8) -> u64 {
    // SAFETY: `p` points at `N` readable bytes (this function's contract); the reads are
    // unaligned ones.
    unsafe {
        match N {
            1 => *p as u64,
            2 => (p as *const u16).read_unaligned() as u64,
            4 => (p as *const u32).read_unaligned() as u64,
            _ => (p as *const u64).read_unaligned(),
        }
    }
}

/// # Safety
/// `p` must point at `N` writable bytes.
#[inline(always)]
unsafe fn write_host<const N: usize>(p: *mut u8, v: u64) {
    // SAFETY: `p` points at `N` writable bytes (this function's contract); the writes are
    // unaligned ones.
    unsafe {
        match N {
            1 => *p = v as u8,
            2 => (p as *mut u16).write_unaligned(v as u16),
            4 => (p as *mut u32).write_unaligned(v as u32),
            _ => (p as *mut u64).write_unaligned(v),
        }
    }
}

/// # Safety
/// `p` must point at `size` readable bytes.
unsafe fn read_dyn(p: *const u8, size: u64) -> u64 {
    // SAFETY: `p` points at `size` readable bytes, as many as each arm reads.
    unsafe {
        match size {
            1 => read_host::<1>(p),
            2 => read_host::<2>(p),
            4 => read_host::<4>(p),
            _ => read_host::<8>(p),
        }
    }
}

/// # Safety
/// `p` must point at `size` writable bytes.
unsafe fn write_dyn(p: *mut u8, size: u64, v: u64) {
    // SAFETY: `p` points at `size` writable bytes, as many as each arm writes.
    unsafe {
        match size {
            1 => write_host::<1>(p, v),
            2 => write_host::<2>(p, v),
            4 => write_host::<4>(p, v),
            _ => write_host::<8>(p, v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxed_tables_hold_their_value_everywhere() {
        let t: Box<[[u32; 5]; 3]> = boxed_table(7);
        assert_eq!(*t, [[7; 5]; 3]);
        for flat in [false, true] {
            let mmu = Mmu::new(flat);
            let used = mmu.data_entries;
            assert_eq!(used, if flat { USER_DATA_TLB_SIZE } else { TLB_SIZE });
            for t in [&mmu.read, &mmu.write] {
                assert!(t[mmu.dctx][..used].iter().all(is_unreachable));
                assert_eq!(
                    (t[mmu.dctx][0].tag, t[mmu.dctx][used - 1].tag),
                    (u64::MAX, u64::MAX)
                );
            }
            assert!(mmu.exec.iter().flatten().all(|e| e.tag == u64::MAX));
        }
    }

    /// `e` is empty, or all zero (which no lookup hits away from the two slots
    /// [`Mmu::ready_data_context`] empties; the callers check those).
    fn is_unreachable(e: &TlbEntry) -> bool {
        e.tag == u64::MAX || (e.tag == 0 && e.addend == 0)
    }

    #[test]
    fn data_entries_index_and_flush_the_used_part() {
        let mut mmu = Mmu::new(true);
        let n = USER_DATA_TLB_SIZE as u64;
        // Pages a system VM's 256 entries would put in one slot have their own here.
        assert_ne!(mmu.data_index(5 << 12), mmu.data_index((5 + 256) << 12));
        assert_eq!(mmu.data_index(5 << 12), mmu.data_index((5 + n) << 12));
        let last = mmu.data_index((n - 1) << 12);
        assert_eq!(last, USER_DATA_TLB_SIZE - 1);
        mmu.read[0][last] = TlbEntry {
            tag: n - 1,
            addend: 1,
        };
        mmu.mark_filled(Tables::Read, 0);
        mmu.flush_tlb();
        assert_eq!(mmu.read[0][last].tag, u64::MAX);
    }

    #[test]
    fn data_contexts_are_emptied_when_first_used() {
        let mut mmu = Mmu::new(false);
        assert_eq!(mmu.data_ready, 1 << 3, "a hart starts in M-mode");
        for (prv, status, ctx) in [
            (Priv::U, 0, 0),
            (Priv::S, 0, 1),
            (Priv::S, mstatus::SUM, 2),
            (Priv::S, mstatus::MXR, CTX_NO_CACHE),
        ] {
            mmu.set_context(prv, status);
            assert_eq!(mmu.dctx, ctx);
            for t in [&mmu.read, &mmu.write] {
                assert!(t[ctx][..TLB_SIZE].iter().all(is_unreachable));
                assert_eq!(
                    (t[ctx][0].tag, t[ctx][TLB_SIZE - 1].tag),
                    (u64::MAX, u64::MAX)
                );
            }
        }
        assert_eq!(mmu.data_ready, 0b11111);
    }

    #[test]
    fn a_flush_empties_every_table_that_got_entries() {
        let mut mmu = Mmu::new(false);
        for prv in [Priv::S, Priv::U] {
            // Contexts 1 and 4 (MXR) in use.
            mmu.set_context(prv, mstatus::MXR * (prv == Priv::U) as u64);
        }
        let full = TlbEntry { tag: 5, addend: 1 };
        mmu.read[1][3] = full;
        mmu.mark_filled(Tables::Read, 1);
        mmu.write[4][7] = full;
        mmu.mark_filled(Tables::Write, 4);
        mmu.engine_exec[3][9] = EngineTlbEntry {
            tag: 5,
            host: std::ptr::null(),
        };
        mmu.mark_filled(Tables::EngineExec, 3);
        mmu.flush_write_tlb();
        assert_eq!(mmu.write[4][7].tag, u64::MAX);
        assert_eq!(mmu.read[1][3].tag, 5, "only the write tables");
        mmu.flush_tlb();
        assert_eq!(mmu.read[1][3].tag, u64::MAX);
        assert_eq!(mmu.engine_exec[3][9].tag, u64::MAX);
        assert_eq!(mmu.filled, 0);
        // The bits of the last kind end below 32.
        assert!(filled_bit(Tables::EngineExec, 3) < 1 << 31);
    }

    #[test]
    fn written_pages_hold_every_write_entry_until_a_flush() {
        let mut mmu = Mmu::new(false);
        mmu.set_context(Priv::S, 0);
        fill(&mut mmu, &[5, 0x80123]);
        for p in [5u64, 0x80123] {
            assert!(mmu.may_write_to((p << 12) + 1), "page {p:#x}");
        }
        assert!(!mmu.may_write_to(0x7000), "no entry leads to page 7");
        mmu.flush_write_tlb();
        assert_eq!(mmu.written_pages, [0; WRITTEN_WORDS]);
        fill(&mut mmu, &[5]);
        mmu.flush_tlb();
        assert_eq!(mmu.written_pages, [0; WRITTEN_WORDS]);
    }

    /// Through the hart's own paths: a store fills a write entry, and the page getting code
    /// drops it; a page no store went to skips the scan and leaves other pages' entries.
    #[test]
    fn a_page_that_gets_code_loses_the_write_entries_stores_made() {
        use crate::{HartConfig, Memory, NoBus, RamRegion};
        let mut ram = vec![0u64; 3 * 512];
        let bytes = std::ptr::NonNull::new(ram.as_mut_ptr() as *mut u8).unwrap();
        // SAFETY: the vector holds the region's 12 KiB and outlives the hart.
        let region = unsafe { RamRegion::new(0x8000_0000, 3 * 4096, bytes) };
        let mut hart = Hart::new(
            HartConfig::machine(0, false),
            Memory::new(vec![region]).unwrap(),
        );
        let write_tag =
            |hart: &Hart, vaddr: u64| hart.mmu.write[hart.mmu.dctx][hart.mmu.data_index(vaddr)].tag;
        let (code, data) = (0x8000_1000u64, 0x8000_2000u64);
        hart.store::<4, _>(&mut NoBus, code + 8, 7).unwrap();
        hart.store::<4, _>(&mut NoBus, data, 9).unwrap();
        assert_eq!(
            write_tag(&hart, code),
            code >> 12,
            "the store filled an entry"
        );
        hart.forget_writes_to(code >> 12);
        assert_eq!(
            write_tag(&hart, code),
            u64::MAX,
            "gone once the page holds code"
        );
        assert_eq!(
            write_tag(&hart, data),
            data >> 12,
            "another page's entry stays"
        );
        // No store went to the first page since: nothing to scan for, nothing changes.
        hart.forget_writes_to(0x8000_0000 >> 12);
        assert_eq!(write_tag(&hart, data), data >> 12);
        assert_eq!(ram[512 + 1], 7, "the stores reached RAM");
    }

    /// Give `pages` entries in the current data context's tables and in fetch context 0's.
    fn fill(mmu: &mut Mmu, pages: &[u64]) {
        let entry = |tag| TlbEntry { tag, addend: 1 };
        for &p in pages {
            let d = mmu.data_index(p << 12);
            mmu.read[mmu.dctx][d] = entry(p);
            mmu.write[mmu.dctx][d] = entry(p);
            mmu.note_write_entry((p << 12) + 1);
            mmu.exec[0][tlb_index(p << 12)] = ITlbEntry {
                tag: p,
                addend: 1,
                page: std::ptr::null_mut(),
            };
            mmu.engine_exec[0][tlb_index(p << 12)] = EngineTlbEntry {
                tag: p,
                host: std::ptr::null(),
            };
        }
        let ctx = mmu.dctx;
        mmu.mark_filled(Tables::Read, ctx);
        mmu.mark_filled(Tables::Write, ctx);
        mmu.mark_filled(Tables::Exec, 0);
        mmu.mark_filled(Tables::EngineExec, 0);
    }

    /// Whether page `p` has its read, write, fetch and engine-fetch entries (see [`fill`]).
    fn present(mmu: &Mmu, p: u64) -> [bool; 4] {
        let d = mmu.data_index(p << 12);
        let i = tlb_index(p << 12);
        [
            mmu.read[mmu.dctx][d].tag == p,
            mmu.write[mmu.dctx][d].tag == p,
            mmu.exec[0][i].tag == p,
            mmu.engine_exec[0][i].tag == p,
        ]
    }

    /// A process VM's hart forgets a small range entry by entry: the range's pages lose their
    /// data, fetch and engine entries, the pages around keep theirs, and engines see a flush.
    /// A large range, or a system VM's hart, flushes everything.
    #[test]
    fn a_flat_mmu_forgets_a_small_range_page_by_page() {
        let mut mmu = Mmu::new(true);
        mmu.set_context(Priv::U, 0);
        let pages = [0x1000u64, 0x1001, 0x1002, 0x1003, 0x1040];
        fill(&mut mmu, &pages);
        let generation = mmu.tlb_gen;
        // Part of page 0x1001 through part of 0x1002.
        mmu.invalidate_range((0x1001 << 12) + 0x800, 0x1000);
        assert!(mmu.tlb_gen > generation, "engines see a flush");
        for p in [0x1001, 0x1002] {
            assert_eq!(present(&mmu, p), [false; 4], "{p:#x} forgotten");
        }
        for p in [0x1000, 0x1003, 0x1040] {
            assert_eq!(present(&mmu, p), [true; 4], "{p:#x} kept");
        }
        // Past RANGE_FORGET_PAGES pages: everything goes.
        mmu.invalidate_range(0x2000 << 12, (RANGE_FORGET_PAGES + 1) << 12);
        for p in [0x1000, 0x1003, 0x1040] {
            assert_eq!(present(&mmu, p)[..2], [false; 2], "{p:#x} flushed");
        }
        // A system VM's hart always flushes (its entries sit under virtual page numbers).
        let mut mmu = Mmu::new(false);
        mmu.set_context(Priv::U, 0);
        fill(&mut mmu, &pages);
        mmu.invalidate_range(0x1001 << 12, 0x1000);
        assert_eq!(present(&mmu, 0x1040)[..2], [false; 2]);
    }

    /// `sfence.vma` with an address drops that page's entries only, and tells engines only if
    /// the page was fetched from; within a superpage translated since the last full flush it
    /// drops everything.
    #[test]
    fn a_single_address_flush_drops_its_page_only() {
        let mut mmu = Mmu::new(false);
        mmu.set_context(Priv::S, 0);
        let pages = [0x1000u64, 0x1001, 0x1040];
        fill(&mut mmu, &pages);
        let generation = mmu.tlb_gen;
        mmu.flush_tlb_page((0x1001 << 12) + 0x123);
        assert_eq!(present(&mmu, 0x1001), [false; 4]);
        for p in [0x1000, 0x1040] {
            assert_eq!(present(&mmu, p), [true; 4], "{p:#x} kept");
        }
        assert_eq!(
            mmu.tlb_gen, generation,
            "no page fetched from: engines keep their caches"
        );
        // A page fetched from: engines are told.
        mmu.note_code_vpn(0x1000 << 12);
        mmu.flush_tlb_page(0x1000 << 12);
        assert!(mmu.tlb_gen > generation, "engines see the change");
        assert_eq!(present(&mmu, 0x1000), [false; 4]);
        assert_eq!(present(&mmu, 0x1040), [true; 4]);
        // A 2 MiB superpage holding page 0x1040 was translated: a flush of any of its pages
        // drops everything, the superpage's other 4 KiB entries with it.
        fill(&mut mmu, &[0x1000, 0x1001]);
        mmu.note_superpage(0x1040 << 12, 1);
        mmu.flush_tlb_page(0x1005 << 12);
        for p in [0x1000, 0x1001, 0x1040] {
            assert_eq!(present(&mmu, p), [false; 4], "{p:#x} flushed");
        }
        // The full flush forgot the superpage and the fetched pages.
        fill(&mut mmu, &pages);
        let generation = mmu.tlb_gen;
        mmu.flush_tlb_page(0x1000 << 12);
        assert_eq!(present(&mmu, 0x1001), [true; 4]);
        assert_eq!(mmu.tlb_gen, generation);
    }
}
