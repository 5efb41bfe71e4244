//! The engine interface: what an execution engine other than the interpreter (the JIT in
//! `popek-jit`) needs from a hart, and nothing more.
//!
//! The hart keeps its outer loop (interrupts, WFI, requests, budget, trap entry) for every engine:
//! [`Hart::run_with`] asks the [`Engine`] to run code at the current `pc` once the block there
//! has started [`Engine::hot`] times (the hart counts block starts itself, see
//! [`Hart::block_heat`]) and, until then or whenever the engine declines, interprets up to a
//! taken jump to a block that is hot. The engine reads and writes architectural state
//! through [`Hart::state_ptr`] at [`crate::HartState::OFFSETS`], performs memory accesses through
//! [`Hart::engine_load`] / [`Hart::engine_store`] (same TLB, MMIO and code-protection rules as the
//! interpreter), finds code with [`Hart::fetch_code_page`], and learns which code it must forget
//! from [`Hart::drain_code_drops`]: translated code is valid while the page it came from stays
//! registered (write-protected) as an engine code page, which is independent of the
//! interpreter's decode cache and its bound.

use crate::decode::{Insn, Op};
use crate::exec::{writes_xreg, Flow};
use crate::hart::{request, Hart};
use crate::mmu::{tlb_index, EngineTlbEntry};
use crate::trap::{Exception, Trap};
use crate::{Bus, BusFault, Exit, HartState};

pub use crate::exec::muldiv;

/// An execution engine the hart's outer loop can delegate to.
pub trait Engine {
    /// Whether this engine ever runs code (false only for [`Interpreter`], so its instantiation
    /// of the outer loop is the plain interpreter's).
    const ACTIVE: bool;

    /// Run code from `hart`'s current `pc` for at most about `left` instructions, stopping when a
    /// request bit is set. `None`: the engine cannot run the instruction at `pc` (the hart
    /// interprets from there to a taken jump to a hot block and asks again).
    /// `Some(Err(trap))`: the instruction at `pc` raised `trap`; `pc` and `instret` are
    /// exactly as the interpreter leaves them.
    fn run_code<B: Bus>(
        &mut self,
        hart: &mut Hart,
        bus: &mut B,
        left: u64,
    ) -> Option<Result<(), Trap>>;

    /// How often a block must start before the engine is asked to run it (1: at every start);
    /// until then the interpreter runs it without asking (see [`Hart::block_heat`]).
    fn hot(&self) -> u32 {
        1
    }
}

/// The interpreter alone: the engine [`Hart::run`] uses.
#[derive(Debug, Default)]
pub struct Interpreter;

impl Engine for Interpreter {
    const ACTIVE: bool = false;

    #[inline(always)]
    fn run_code<B: Bus>(&mut self, _: &mut Hart, _: &mut B, _: u64) -> Option<Result<(), Trap>> {
        None
    }
}

/// Translated code an engine must forget, as reported by [`Hart::drain_code_drops`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeDrop {
    /// Everything: all code was dropped (`flush_caches`, `fence.i` on an SMP hart) or the hart
    /// was reset.
    All,
    /// The 4 KiB page of guest RAM whose first byte is at this host address (as in
    /// [`CodePage::host`]; not necessarily aligned on the host).
    HostPage(u64),
}

/// The page of guest RAM holding the instruction at `pc`, as returned by
/// [`Hart::fetch_code_page`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodePage {
    /// Host address of the first byte of the (4 KiB) guest page; unique per physical page. Not
    /// necessarily aligned on the host: guest RAM may be any host allocation.
    pub host: *const u8,
}

impl<T: Bus + ?Sized> Bus for &mut T {
    fn read(&mut self, addr: u64, size: u8) -> Result<u64, BusFault> {
        (**self).read(addr, size)
    }
    fn write(&mut self, addr: u64, size: u8, value: u64) -> Result<(), BusFault> {
        (**self).write(addr, size, value)
    }
    fn time(&mut self) -> u64 {
        (**self).time()
    }
}

impl Hart {
    /// [`Hart::run`] with `engine` running code where it can.
    pub fn run_with<B: Bus, E: Engine>(
        &mut self,
        bus: &mut B,
        budget: u64,
        engine: &mut E,
    ) -> Exit {
        self.run_engine::<B, E>(bus, budget, engine)
    }

    /// Raw pointer to the architectural state, for generated code (fields at
    /// [`HartState::OFFSETS`]). Valid while the hart is neither moved nor dropped.
    pub fn state_ptr(&mut self) -> *mut HartState {
        &mut self.s
    }

    /// Changes whenever the hart's translations are flushed (`satp` writes, `sfence.vma`,
    /// [`Hart::invalidate_range`], [`Hart::flush_caches`]...): lookups an engine keys by
    /// virtual address are valid only while it stays the same.
    pub fn tlb_generation(&self) -> u64 {
        self.mmu.tlb_gen
    }

    /// The page of guest RAM holding `pc`, translated for execution (fetch permissions checked,
    /// through a fetch TLB of the engine's own, flushed with the hart's TLB) and registered as
    /// an engine code page: from now on stores to it drop it (reported by
    /// [`Hart::drain_code_drops`]) and set [`crate::request::LEAVE`].
    #[inline]
    pub fn fetch_code_page(&mut self) -> Result<CodePage, Trap> {
        let pc = self.s.pc;
        let e = self.mmu.engine_exec[self.mmu.ictx][tlb_index(pc)];
        if e.tag == pc >> 12 {
            return Ok(CodePage { host: e.host });
        }
        self.fetch_code_page_slow()
    }

    #[inline(never)]
    fn fetch_code_page_slow(&mut self) -> Result<CodePage, Trap> {
        let pc = self.s.pc;
        let (ppn, host) = self.fetch_page_host()?;
        if self.mmu.engine_pages.insert(ppn) {
            self.forget_writes_to(ppn);
        }
        let ctx = self.mmu.ictx;
        self.mmu.note_code_vpn(pc);
        self.mmu.mark_filled(crate::mmu::Tables::EngineExec, ctx);
        self.mmu.engine_exec[ctx][tlb_index(pc)] = EngineTlbEntry {
            tag: pc >> 12,
            host,
        };
        Ok(CodePage { host })
    }

    /// Report (and forget) the engine code pages dropped since the last call. Call it before
    /// using translated code.
    #[inline]
    pub fn drain_code_drops(&mut self, mut f: impl FnMut(CodeDrop)) {
        if !self.mmu.code_drops_pending() {
            return;
        }
        if self.mmu.code_drops_all {
            f(CodeDrop::All);
        } else {
            for ppn in &self.mmu.code_drops {
                if let Some(p) = self.mem.host_ptr(ppn << 12, 4096) {
                    f(CodeDrop::HostPage(p as u64));
                }
            }
        }
        self.mmu.code_drops_all = false;
        self.mmu.code_drops.clear();
    }

    /// Load `size` (1, 2, 4 or 8) bytes at virtual address `vaddr`, zero-extended, exactly as a
    /// load instruction of the interpreter would (TLB, page walk, MMIO, faults).
    pub fn engine_load(&mut self, bus: &mut dyn Bus, vaddr: u64, size: u8) -> Result<u64, Trap> {
        let mut bus = bus;
        match size {
            1 => self.load::<1, _>(&mut bus, vaddr),
            2 => self.load::<2, _>(&mut bus, vaddr),
            4 => self.load::<4, _>(&mut bus, vaddr),
            _ => self.load::<8, _>(&mut bus, vaddr),
        }
    }

    /// Store the low `size` bytes of `value` at virtual address `vaddr`, as a store instruction
    /// of the interpreter would; afterwards [`crate::request::LEAVE`] is set if the store hit
    /// code or MMIO, and generated code must then return to the outer loop.
    pub fn engine_store(
        &mut self,
        bus: &mut dyn Bus,
        vaddr: u64,
        size: u8,
        value: u64,
    ) -> Result<(), Trap> {
        let mut bus = bus;
        match size {
            1 => self.store::<1, _>(&mut bus, vaddr, value),
            2 => self.store::<2, _>(&mut bus, vaddr, value),
            4 => self.store::<4, _>(&mut bus, vaddr, value),
            _ => self.store::<8, _>(&mut bus, vaddr, value),
        }
    }

    /// Entries of each data TLB ([`Hart::data_tlb`]): a power of two, fixed for the hart's
    /// life (larger for a process VM's).
    pub fn data_tlb_entries(&self) -> usize {
        self.mmu.data_entries
    }

    /// Require every data TLB entry to hold `addend` (host minus guest virtual address): an
    /// access to a page with another one always takes the slow path. A process VM's address
    /// space is flat (guest address `g` at host `base + g`), so it loses nothing, and
    /// translated code can then add the addend to an address without reading the entry's
    /// ([`Hart::sole_data_addend`]). Empties the TLBs (entries filled before may hold others).
    pub fn require_data_addend(&mut self, addend: u64) {
        self.mmu.sole_addend = Some(addend);
        self.mmu.flush_tlb();
    }

    /// The addend every data TLB entry holds, if [`Hart::require_data_addend`] fixed one.
    pub fn sole_data_addend(&self) -> Option<u64> {
        self.mmu.sole_addend
    }

    /// Declare that, with the addend [`Hart::require_data_addend`] fixed, the host's own page
    /// protection checks the guest's loads below `1 << bits`: reading host `addend + a` for
    /// such an `a` faults on the host wherever the guest may not load from `a` (a process VM
    /// whose memory manager keeps the host's protection as strict as the guest's), and the
    /// host page past the span faults too. The guest has no memory at or above the span: any
    /// access there faults. Translated loads may then read the host directly and let a host
    /// fault send them to their checked path (and, once one access through a register has
    /// passed the span check, read near it without checking again). `None` withdraws it, as soon as
    /// the host stops mirroring the guest (a second thread, whose stale TLB entries the host
    /// must not fault on). Ignored without a required addend.
    pub fn let_host_check_reads(&mut self, bits: Option<u8>) {
        self.mmu.host_read_bits = bits;
    }

    /// The span bits [`Hart::let_host_check_reads`] set, if a data addend is required too.
    pub fn host_checked_read_bits(&self) -> Option<u8> {
        self.mmu.sole_addend.and(self.mmu.host_read_bits)
    }

    /// Like [`Hart::let_host_check_reads`], for stores: with the required addend, the host's
    /// protection checks the guest's stores below `1 << bits` (writing host `addend + a`
    /// faults wherever the guest may not store to `a`, and past the span). The owner also
    /// keeps code the hart may have decoded out of pages the guest can write (no memory both
    /// writable and executable: code then changes only through the mappings, which drop it),
    /// since a store the host lets through does not look for decoded code.
    pub fn let_host_check_writes(&mut self, bits: Option<u8>) {
        self.mmu.host_write_bits = bits;
    }

    /// The span bits [`Hart::let_host_check_writes`] set, if a data addend is required too.
    pub fn host_checked_write_bits(&self) -> Option<u8> {
        self.mmu.sole_addend.and(self.mmu.host_write_bits)
    }

    /// The current data TLB for loads (`write` false) or stores, for inline fast paths in
    /// generated code: [`Hart::data_tlb_entries`] entries of [`DATA_TLB_ENTRY_BYTES`] bytes,
    /// entry `(vaddr >> 12) % entries` holds the tag `vaddr >> 12` at offset 0 (or
    /// `u64::MAX`) and at offset 8 the value to add to `vaddr` for the host address. Valid until
    /// the privilege, `mstatus` or the TLB change, all of which set [`crate::request::LEAVE`].
    pub fn data_tlb(&self, write: bool) -> *const u8 {
        let ctx = self.mmu.dctx;
        let tlb = if write {
            &self.mmu.write[ctx]
        } else {
            &self.mmu.read[ctx]
        };
        tlb.as_ptr() as *const u8
    }
}

/// Whether an engine may run `op` through [`Hart::engine_step`] in the middle of translated
/// code: the atomics and the F/D instructions, which neither read the counters nor change
/// control flow, privilege, translation or the decode cache (they may store to code or MMIO, and
/// then set [`crate::request::LEAVE`]). See [`steppable_insn`] for the CSR accesses that are.
pub fn steppable(op: Op) -> bool {
    // The enum lists the A, F and D operations last, from `LrW` to `FmvDX`.
    (Op::LrW as u8..=Op::FmvDX as u8).contains(&(op as u8))
}

/// Whether `i` accesses only the FP CSRs (`fflags`, `frm`, `fcsr`): like the F/D instructions
/// it changes no control flow, privilege or translation (only those CSRs and `mstatus.FS`),
/// so neither the interpreter's inner loop nor a translated block need end at it. C's
/// `fegetround`/`fesetround`/`feclearexcept` are such accesses, and sqlite3 and lua5.4 make
/// them around every float conversion.
pub fn fp_csr_access(i: &Insn) -> bool {
    i.csr().is_some_and(crate::csr::is_fp_csr)
}

/// Whether `i` accesses `sstatus` or `mstatus`. The kernel saves, clears and restores
/// `sstatus.SIE` around every short critical section (`local_irq_save`/`restore`: tens of
/// thousands of times for a 64 MiB disk read), so these run inside translated code: after one,
/// [`Hart::engine_step`] lets the engine leave (as the interpreter does after every CSR
/// write) only if it changed more than the interrupt enables, or changed them with an
/// interrupt now pending and enabled.
pub fn status_csr_access(i: &Insn) -> bool {
    use crate::csr::addr::*;
    matches!(i.csr(), Some(SSTATUS | MSTATUS))
}

/// Whether `i` accesses a CSR that only holds a value for the trap handlers (`sscratch`,
/// `sepc`, `scause`, `stval` and their M-mode twins) or reads `time`: nothing about control
/// flow, privilege, interrupts or translation changes, so translated code goes on after it.
/// The kernel's trap entry and exit access them at every exception and interrupt, and its
/// clock and entropy code read `time` (75,000 times in a boot of the default guest).
pub fn quiet_csr_access(i: &Insn) -> bool {
    use crate::csr::addr::*;
    use Op::*;
    let reads_only = matches!(i.op, Csrrs | Csrrc | Csrrsi | Csrrci) && i.rs1 == 0;
    match i.csr() {
        Some(SSCRATCH | SEPC | SCAUSE | STVAL | MSCRATCH | MEPC | MCAUSE | MTVAL) => true,
        Some(TIME) => reads_only,
        _ => false,
    }
}

/// Whether `i` is an `sfence.vma` for one address: the kernel issues one after every
/// single-page mapping change (120,000 in a boot of the default guest). It drops that page's
/// translations; [`Hart::engine_step`] lets the engine leave only if the page was fetched from
/// (its jump targets may have moved).
pub fn page_fence(i: &Insn) -> bool {
    i.op == Op::SfenceVma && i.rs1 != 0
}

/// Whether an engine may run `i` through [`Hart::engine_step`]: a [`steppable`] operation, an
/// [`fp_csr_access`], a [`status_csr_access`], a [`quiet_csr_access`] or a [`page_fence`].
pub fn steppable_insn(i: &Insn) -> bool {
    steppable(i.op)
        || fp_csr_access(i)
        || status_csr_access(i)
        || quiet_csr_access(i)
        || page_fence(i)
}

impl Hart {
    /// Execute one [`steppable_insn`] instruction `insn` (decoded from `raw`, the instruction's bits:
    /// the low 16 for a compressed one) at `pc` exactly as the interpreter would, except that
    /// `pc` and `instret` are the caller's to update. On an illegal-instruction trap `tval`
    /// holds `raw`, as the interpreter reports it.
    pub fn engine_step(
        &mut self,
        bus: &mut dyn Bus,
        insn: &Insn,
        pc: u64,
        raw: u32,
    ) -> Result<(), Trap> {
        debug_assert!(steppable_insn(insn));
        let status = self.s.csr.mstatus;
        let leave = self.s.requests & request::LEAVE;
        let generation = self.mmu.tlb_gen;
        match self.step_decoded(bus, insn, pc, raw, 0)? {
            Flow::Next(_) | Flow::Store(_) => Ok(()),
            Flow::Leave(_) if quiet_csr_access(insn) => {
                self.s.requests = self.s.requests & !request::LEAVE | leave;
                Ok(())
            }
            Flow::Leave(_) if page_fence(insn) => {
                if self.mmu.tlb_gen != generation {
                    // A fetched page was dropped: the engine's jump cache must go.
                    self.s.requests |= request::LEAVE;
                }
                Ok(())
            }
            Flow::Leave(_) if status_csr_access(insn) => {
                // The CSR write asked to leave, as every one does; stay unless it matters.
                let changed = status ^ self.s.csr.mstatus;
                let enables = crate::csr::mstatus::SIE | crate::csr::mstatus::MIE;
                if changed & !enables == 0 && (changed == 0 || self.pending_interrupt().is_none()) {
                    self.s.requests = self.s.requests & !request::LEAVE | leave;
                }
                Ok(())
            }
            _ => unreachable!("a steppable instruction continues in sequence"),
        }
    }

    /// Execute the 4-byte instruction that straddles a page end at `pc` exactly as the
    /// interpreter would, fetching both halves through the MMU now (each may map anywhere, and
    /// change): `pc` becomes where execution goes next, and an instruction that needs the
    /// hart's loop (a privilege or CSR change, `wfi`, a user `ecall`) leaves a request behind.
    /// `instret` is the caller's to count; `lag` instructions have retired that it does not
    /// hold yet (counter reads add them). A trap leaves `pc` at the instruction.
    ///
    /// Such an instruction is never in a decoded page or a translation, so engines run it
    /// through here instead of handing it to the interpreter's loop: a function whose call
    /// straddles a page end (busybox gunzip's bit-buffer refill, 72,000 times for 16 MiB)
    /// went back to the engine at every call.
    pub fn engine_step_straddling(
        &mut self,
        bus: &mut dyn Bus,
        pc: u64,
        lag: u64,
    ) -> Result<(), Trap> {
        self.s.pc = pc;
        let raw = self.fetch_straddling()?;
        self.step_raw(bus, pc, raw, lag)
    }

    /// Execute the instruction at `pc` without the decode cache, for the interpreter where it
    /// must not cache it: `raw` is its bits if it lies in its page (in a shared page, which is
    /// never written: see the shared_decode module), `None` if it straddles the page's end
    /// (its halves are fetched now, as [`Hart::engine_step_straddling`] does).
    pub(crate) fn step_uncached<B: Bus>(
        &mut self,
        bus: &mut B,
        pc: u64,
        raw: Option<u32>,
        lag: u64,
    ) -> Result<(), Trap> {
        match raw {
            Some(raw) => self.step_raw(bus, pc, raw, lag),
            None => self.engine_step_straddling(bus, pc, lag),
        }
    }

    /// Execute `raw`, fetched from `pc`, for [`Hart::step_uncached`] and
    /// [`Hart::engine_step_straddling`].
    fn step_raw(&mut self, bus: &mut dyn Bus, pc: u64, raw: u32, lag: u64) -> Result<(), Trap> {
        let flow = self.step_decoded(bus, &crate::decode::decode(raw), pc, raw, lag)?;
        self.s.pc = match flow {
            Flow::Next(next) | Flow::Jump(next) | Flow::Store(next) => next,
            Flow::Leave(next) => {
                self.s.requests |= request::LEAVE;
                next
            }
            Flow::Decode => unreachable!("a freshly decoded instruction"),
        };
        Ok(())
    }

    /// Execute `insn` (freshly decoded from `raw`, not from the decode cache) at `pc`, as the
    /// interpreter would, but leaving `pc` and `instret` to the caller: writes to x0 go to the
    /// sink, and an illegal-instruction trap reports `raw`. `lag` instructions have retired
    /// that `instret` does not hold yet: counter reads add them, and `instret` is left as it
    /// was.
    pub(crate) fn step_decoded(
        &mut self,
        bus: &mut dyn Bus,
        insn: &Insn,
        pc: u64,
        raw: u32,
        lag: u64,
    ) -> Result<Flow, Trap> {
        let mut i = *insn;
        if i.rd() == 0 && writes_xreg(i.op) {
            i.set_rd(32);
        }
        let mut bus = bus;
        let mut retired = lag;
        let flow = self.step(&mut bus, &i, pc, &mut retired);
        // A CSR instruction adds what retired to `instret` before reading counters: the
        // caller counts those, so they come off again.
        self.s.instret = self.s.instret.wrapping_sub(lag - retired);
        flow.map_err(|mut t| {
            if t.cause == Exception::IllegalInstruction {
                t.tval = raw as u64;
            }
            t
        })
    }
}

/// Bytes per data TLB entry (see [`Hart::data_tlb`]).
pub const DATA_TLB_ENTRY_BYTES: usize = std::mem::size_of::<crate::mmu::TlbEntry>();

#[cfg(test)]
mod tests {
    use std::ptr::NonNull;

    use crate::{HartConfig, Memory, NoBus, RamRegion};

    use super::*;

    /// A machine-mode hart on two pages of RAM at 0x8000_0000, with the 4-byte instruction
    /// `insn` straddling their boundary; the RAM is returned to outlive the hart.
    fn straddling(insn: u32) -> (Hart, Vec<u64>) {
        let mut ram = vec![0u64; 1024];
        let bytes = ram.as_mut_ptr() as *mut u8;
        // SAFETY: the vector is 8 KiB; 4094..4098 lies inside it.
        unsafe {
            (bytes.add(4094) as *mut u16).write_unaligned(insn as u16);
            (bytes.add(4096) as *mut u16).write_unaligned((insn >> 16) as u16);
        }
        // SAFETY: the caller keeps `ram` alive as long as the hart.
        let region = unsafe { RamRegion::new(0x8000_0000, 8192, NonNull::new(bytes).unwrap()) };
        let hart = Hart::new(
            HartConfig::machine(0, false),
            Memory::new(vec![region]).unwrap(),
        );
        (hart, ram)
    }

    /// A counter read by the instruction straddling a page end counts the `lag` instructions
    /// the engine retired but not yet added, and leaves `instret` to the engine.
    #[test]
    fn a_straddling_counter_read_counts_the_engines_lag() {
        // csrrs x14, minstret, x0
        let (mut hart, _ram) = straddling(0xb02 << 20 | 2 << 12 | 14 << 7 | 0x73);
        hart.s.instret = 100;
        hart.engine_step_straddling(&mut NoBus, 0x8000_0ffe, 7)
            .unwrap();
        assert_eq!(hart.xreg(14), 107, "minstret as the interpreter reads it");
        assert_eq!(hart.instret(), 100, "the engine counts what retired");
        assert_eq!(hart.pc(), 0x8000_1002);
        assert_ne!(hart.s.requests & request::LEAVE, 0, "a CSR access leaves");
    }

    /// `engine_step` on `raw` at the page start of `hart`'s RAM: the requests it leaves.
    fn stepped_requests(hart: &mut Hart, raw: u32) -> u32 {
        let i = crate::decode::decode(raw);
        assert!(steppable_insn(&i), "{raw:#x} runs inside translated code");
        hart.s.requests = 0;
        hart.engine_step(&mut NoBus, &i, 0x8000_0000, raw).unwrap();
        hart.s.requests
    }

    /// The trap handlers' CSRs and `time` reads leave no request; `sfence.vma` for one address
    /// leaves one only if that page was fetched from (the engine's jump cache must go).
    #[test]
    fn quiet_csr_accesses_and_page_fences_stay_in_translated_code() {
        let (mut hart, _ram) = straddling(0x0000_0013);
        hart.set_xreg(5, 0x1234);
        // csrw sscratch, x5; csrrs x6, sepc, x5; csrr x7, time
        assert_eq!(stepped_requests(&mut hart, 0x1402_9073), 0);
        assert_eq!(hart.s.csr.sscratch, 0x1234);
        assert_eq!(stepped_requests(&mut hart, 0x1412_a373), 0);
        hart.log_stores(true);
        assert_eq!(stepped_requests(&mut hart, 0xc010_23f3), 0);
        assert!(
            hart.take_store_log().touched_mmio(),
            "verify cannot read the clock twice alike"
        );
        hart.log_stores(false);
        // sfence.vma x5 (a page never fetched from), then x8 (the page fetched from below).
        assert_eq!(stepped_requests(&mut hart, 0x1202_8073), 0);
        hart.set_pc(0x8000_1000);
        hart.fetch_code_page().unwrap();
        hart.set_xreg(8, 0x8000_1000);
        assert_eq!(stepped_requests(&mut hart, 0x1204_0073), request::LEAVE);
        // Writing `satp` is not quiet: it stays outside translated code.
        assert!(!steppable_insn(&crate::decode::decode(0x1802_9073)));
    }

    /// A straddling ALU instruction goes on in sequence without a request; a jump goes where
    /// it jumps; an illegal one traps with its bits and leaves `pc` and `instret` alone.
    #[test]
    fn straddling_instructions_go_where_they_go() {
        let (mut hart, _ram) = straddling(0x0050_0513); // addi x10, x0, 5
        hart.engine_step_straddling(&mut NoBus, 0x8000_0ffe, 3)
            .unwrap();
        assert_eq!(
            (hart.xreg(10), hart.pc(), hart.s.requests),
            (5, 0x8000_1002, 0)
        );

        let (mut hart, _ram) = straddling(0x0100_00ef); // jal x1, +16
        hart.engine_step_straddling(&mut NoBus, 0x8000_0ffe, 0)
            .unwrap();
        assert_eq!((hart.xreg(1), hart.pc()), (0x8000_1002, 0x8000_100e));

        let (mut hart, _ram) = straddling(0xffff_ffff);
        hart.s.instret = 9;
        let t = hart
            .engine_step_straddling(&mut NoBus, 0x8000_0ffe, 2)
            .unwrap_err();
        assert_eq!(
            (t.cause, t.tval),
            (Exception::IllegalInstruction, 0xffff_ffff)
        );
        assert_eq!((hart.pc(), hart.instret()), (0x8000_0ffe, 9));
    }

    /// The interpreter runs a straddling instruction the same way, uncached: a jump goes
    /// where it jumps, an illegal one traps with its bits at its own address, and its page's
    /// slot stays undecoded.
    #[test]
    fn the_interpreter_runs_straddling_instructions_uncached() {
        let (mut hart, _ram) = straddling(0x0100_00ef); // jal x1, +16
        hart.set_pc(0x8000_0ffe);
        assert_eq!(hart.single_step(&mut NoBus), crate::Exit::Budget);
        assert_eq!(
            (hart.xreg(1), hart.pc(), hart.instret()),
            (0x8000_1002, 0x8000_100e, 1)
        );
        let page = hart.mmu.decoded[&0x80000].as_ptr();
        // SAFETY: the hart's own decoded page, not running.
        assert_eq!(unsafe { (*page)[2047] }, crate::decode::Insn::undecoded());

        let (mut hart, _ram) = straddling(0xffff_ffff);
        hart.set_pc(0x8000_0ffe);
        assert_eq!(hart.single_step(&mut NoBus), crate::Exit::Budget);
        assert_eq!(
            (hart.s.csr.mcause, hart.s.csr.mtval, hart.s.csr.mepc),
            (2, 0xffff_ffff, 0x8000_0ffe)
        );
    }
}
