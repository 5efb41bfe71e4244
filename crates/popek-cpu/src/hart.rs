//! Architectural state of one hart, trap entry and interrupt selection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::csr::{self, mstatus};
use crate::heat::BlockHeat;
use crate::memory::Memory;
use crate::mmu::Mmu;
use crate::shared_decode::SharedDecode;
use crate::trap::{Exception, Trap};
use crate::Exit;

/// Privilege modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Priv {
    /// User.
    U = 0,
    /// Supervisor.
    S = 1,
    /// Machine.
    M = 3,
}

impl Priv {
    pub(crate) fn from_bits(b: u64) -> Priv {
        match b & 3 {
            0 => Priv::U,
            1 => Priv::S,
            _ => Priv::M,
        }
    }
}

/// How a hart is used.
#[derive(Clone, Debug)]
pub struct HartConfig {
    /// `mhartid`.
    pub hart_id: u64,
    /// Process-VM mode: the hart runs only U-mode code with translation off; `ecall` and exceptions
    /// return to the caller ([`Exit::Ecall`], [`Exit::Trap`]) instead of entering a trap handler.
    pub user_mode: bool,
    /// Other harts may modify code this hart has decoded: `fence.i` then drops the whole decode
    /// cache (a hart only sees its own stores to code).
    pub smp: bool,
}

impl HartConfig {
    /// A hart of a system VM that starts in M-mode at reset; `smp` if it has sibling harts.
    pub fn machine(hart_id: u64, smp: bool) -> HartConfig {
        HartConfig {
            hart_id,
            user_mode: false,
            smp,
        }
    }

    /// A hart for a process VM (see [`HartConfig::user_mode`]).
    pub fn user() -> HartConfig {
        HartConfig {
            hart_id: 0,
            user_mode: true,
            smp: false,
        }
    }
}

/// Interrupt lines driven by devices (MSIP, MTIP, SEIP, MEIP bits of `mip`), shareable with device
/// threads. The hart ORs them into `mip` whenever it looks for interrupts.
#[derive(Debug, Default)]
pub struct IrqPins(AtomicU64);

impl IrqPins {
    /// Raise or lower the line for `mip` bit `bit`.
    pub fn set(&self, bit: u32, level: bool) {
        if level {
            self.0.fetch_or(1 << bit, Ordering::Release);
        } else {
            self.0.fetch_and(!(1 << bit), Ordering::Release);
        }
    }

    /// Current levels as `mip` bits.
    pub fn bits(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// A register file indexed by masking, so the interpreter's register accesses need no bounds
/// checks: `N` is a power of two at least as large as every register number the decoder emits.
#[derive(Clone, Copy, Debug)]
#[repr(transparent)]
pub(crate) struct RegFile<const N: usize>(pub [u64; N]);

impl<const N: usize> std::ops::Index<usize> for RegFile<N> {
    type Output = u64;
    #[inline(always)]
    fn index(&self, i: usize) -> &u64 {
        &self.0[i & (N - 1)]
    }
}

impl<const N: usize> std::ops::IndexMut<usize> for RegFile<N> {
    #[inline(always)]
    fn index_mut(&mut self, i: usize) -> &mut u64 {
        &mut self.0[i & (N - 1)]
    }
}

/// Bits of [`HartState::requests`]: why the inner loop must stop, in one word generated code
/// can test with a single instruction.
pub mod request {
    /// Leave the inner loop after the current instruction (CSR writes, privilege changes, code
    /// modification, MMIO).
    pub const LEAVE: u32 = 1 << 0;
    /// The guest touched MMIO: report [`crate::Exit::Io`] at the next boundary.
    pub const IO: u32 = 1 << 1;
    /// A user-mode `ecall` retired: report [`crate::Exit::Ecall`] at the next boundary.
    pub const ECALL: u32 = 1 << 2;
    /// The hart executed WFI and waits for an interrupt (this bit is state, not a one-shot
    /// request: it stays until an interrupt wakes the hart).
    pub const WFI: u32 = 1 << 3;
}

/// The architectural state of a hart, and nothing else: registers, privilege, CSRs and the
/// retired-instruction count. Fixed layout (`repr(C)`) so translated code can address fields at
/// constant offsets ([`HartState::OFFSETS`] pins them); caches (TLBs, decoded code) live beside
/// it in [`Hart`] and are rebuilt, never saved.
#[repr(C)]
#[derive(Clone, Debug)]
pub struct HartState {
    /// Integer registers; index 32 is a sink for writes to x0 (the decode cache points them there).
    pub(crate) x: RegFile<64>,
    /// FP registers (raw bits, NaN-boxed singles).
    pub(crate) f: RegFile<32>,
    /// Program counter.
    pub(crate) pc: u64,
    /// Retired instructions (drives `minstret` and `mcycle`).
    pub(crate) instret: u64,
    /// [`request`] bits.
    pub(crate) requests: u32,
    /// Current privilege mode.
    pub(crate) prv: Priv,
    /// Control and status registers.
    pub(crate) csr: csr::Csrs,
}

/// Byte offsets of the [`HartState`] fields generated code uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateOffsets {
    /// `x0` (x\[i\] is at `x + 8 * i`).
    pub x: usize,
    /// `f0`.
    pub f: usize,
    /// `pc`.
    pub pc: usize,
    /// `instret`.
    pub instret: usize,
    /// The request word (u32).
    pub requests: usize,
    /// The privilege mode (u8).
    pub prv: usize,
    /// `mstatus`.
    pub mstatus: usize,
    /// `frm` (u64).
    pub frm: usize,
    /// `fflags` (u64).
    pub fflags: usize,
}

impl HartState {
    /// Where the fields are: generated code is built against these numbers.
    pub const OFFSETS: StateOffsets = StateOffsets {
        x: std::mem::offset_of!(HartState, x),
        f: std::mem::offset_of!(HartState, f),
        pc: std::mem::offset_of!(HartState, pc),
        instret: std::mem::offset_of!(HartState, instret),
        requests: std::mem::offset_of!(HartState, requests),
        prv: std::mem::offset_of!(HartState, prv),
        mstatus: std::mem::offset_of!(HartState, csr) + std::mem::offset_of!(csr::Csrs, mstatus),
        frm: std::mem::offset_of!(HartState, csr) + std::mem::offset_of!(csr::Csrs, frm),
        fflags: std::mem::offset_of!(HartState, csr) + std::mem::offset_of!(csr::Csrs, fflags),
    };

    fn reset(config: &HartConfig) -> HartState {
        let mut csr = csr::Csrs {
            mhartid: config.hart_id,
            ..Default::default()
        };
        let prv = if config.user_mode {
            // FP state is on, as Linux sets it for every user process.
            csr.mstatus |= mstatus::FS_INITIAL;
            Priv::U
        } else {
            Priv::M
        };
        HartState {
            x: RegFile([0; 64]),
            f: RegFile([0; 32]),
            pc: 0,
            instret: 0,
            requests: 0,
            prv,
            csr,
        }
    }

    /// The [`request`] bits now set (engines return to the outer loop when any is).
    #[inline(always)]
    pub fn requests(&self) -> u32 {
        self.requests
    }

    /// Whether request bit(s) `bits` are set.
    #[inline(always)]
    pub(crate) fn requested(&self, bits: u32) -> bool {
        self.requests & bits != 0
    }
}

/// One RISC-V hart: its [`HartState`] plus the caches and connections that serve it.
pub struct Hart {
    /// Architectural state.
    pub(crate) s: HartState,
    pub(crate) mmu: Mmu,
    pub(crate) mem: Memory,
    pub(crate) pins: Arc<IrqPins>,
    pub(crate) config: HartConfig,
    /// LR reservation: (physical address, value loaded). Not saved: a restored hart's SC
    /// fails once, which the ISA allows.
    pub(crate) reservation: Option<(u64, u64)>,
    /// The page-permission generation this hart's caches reflect (process VMs).
    pub(crate) perms_seen: u64,
    /// Generation of the memory's DMA log last applied.
    pub(crate) dma_seen: u64,
    /// Generation of the dirty log's write-TLB flushes last applied.
    pub(crate) dirty_seen: u64,
    /// Stores logged for engine verification ([`Hart::log_stores`]); `None` almost always.
    pub(crate) store_log: Option<crate::verify::StoreLog>,
    /// How often blocks started, for an engine (see the heat module).
    pub(crate) heat: crate::heat::Heat,
}

// SAFETY: the raw pointers in a Hart point into its own decode cache (owned through `mmu`) and
// into guest RAM, which is Send + Sync; moving a hart to another thread moves all of it.
unsafe impl Send for Hart {}

impl Hart {
    /// A hart in its reset state (M-mode, or U-mode for [`HartConfig::user`]), with `pc` = 0.
    pub fn new(config: HartConfig, mem: Memory) -> Hart {
        Hart {
            s: HartState::reset(&config),
            mmu: Mmu::new(config.user_mode),
            mem,
            pins: Arc::new(IrqPins::default()),
            config,
            reservation: None,
            perms_seen: 0,
            dma_seen: 0,
            dirty_seen: 0,
            store_log: None,
            heat: crate::heat::Heat::default(),
        }
    }

    /// Return to the reset state (system reset): registers and CSRs cleared, M-mode (or U-mode
    /// for process VMs), caches dropped. Memory and interrupt lines stay connected.
    pub fn reset(&mut self) {
        let fresh = Hart::new(self.config.clone(), self.mem.clone());
        let pins = self.pins.clone();
        *self = fresh;
        self.pins = pins;
    }

    /// Count a start of the block at `pc` (in the current privilege): whether it has started
    /// at least `hot` times, or the hart has no room to count it. The interpreter counts the
    /// starts of blocks it runs with an engine and hands a block to the engine once it is not
    /// [`BlockHeat::Cold`] (see [`Engine::hot`]); an engine counts the blocks it reaches from
    /// its own code here, to know whether to translate one it has no translation of.
    ///
    /// [`Engine::hot`]: crate::engine::Engine::hot
    pub fn block_heat(&mut self, pc: u64, hot: u32) -> BlockHeat {
        self.heat.start(pc, self.s.prv, hot)
    }

    /// What [`Hart::block_heat`] said of the block at `pc` at its last start (for the block
    /// the hart just handed to the engine), without counting a start.
    pub fn block_heat_now(&self, pc: u64, hot: u32) -> BlockHeat {
        self.heat.now(pc, self.s.prv, hot)
    }

    /// The architectural state (fixed layout; see [`HartState::OFFSETS`]).
    pub fn state(&self) -> &HartState {
        &self.s
    }

    /// Program counter.
    pub fn pc(&self) -> u64 {
        self.s.pc
    }

    /// Set the program counter (e.g. to the entry point).
    pub fn set_pc(&mut self, pc: u64) {
        self.s.pc = pc;
    }

    /// Integer register `i` (0..32).
    pub fn xreg(&self, i: usize) -> u64 {
        if i == 0 {
            0
        } else {
            self.s.x[i]
        }
    }

    /// Set integer register `i`; writes to x0 are ignored.
    pub fn set_xreg(&mut self, i: usize, v: u64) {
        if i != 0 {
            self.s.x[i] = v;
        }
    }

    /// Raw bits of FP register `i`.
    pub fn freg(&self, i: usize) -> u64 {
        self.s.f[i]
    }

    /// Set the raw bits of FP register `i`.
    pub fn set_freg(&mut self, i: usize, v: u64) {
        self.s.f[i] = v;
    }

    /// The `fcsr` register (frm and fflags).
    pub fn fcsr(&self) -> u64 {
        self.s.csr.fcsr()
    }

    /// Set `fcsr`.
    pub fn set_fcsr(&mut self, v: u64) {
        self.s.csr.set_fcsr(v);
    }

    /// Current privilege mode.
    pub fn privilege(&self) -> Priv {
        self.s.prv
    }

    /// Instructions retired so far.
    pub fn instret(&self) -> u64 {
        self.s.instret
    }

    /// The CSR file, for diagnostics.
    pub fn csrs(&self) -> &csr::Csrs {
        &self.s.csr
    }

    /// Bytes of host memory backing this hart's decode cache (for memory accounting; its
    /// pages are 16 KiB of address space each, backed only where instructions were decoded).
    pub fn decode_cache_bytes(&self) -> u64 {
        self.mmu.decode_cache_resident()
    }

    /// Take decoded pages from `shared` where the guest's code is still the snapshot's, from
    /// now on (a restored hart, before it runs: see [`SharedDecode`]).
    pub fn set_shared_decode(&mut self, shared: Arc<SharedDecode>) {
        self.mmu.shared = Some(shared);
    }

    /// The guest RAM this hart sees.
    pub fn memory(&self) -> &Memory {
        &self.mem
    }

    /// The interrupt lines devices drive.
    pub fn irq_pins(&self) -> Arc<IrqPins> {
        self.pins.clone()
    }

    /// Forget all cached translations and decoded code, e.g. after the owner wrote guest RAM
    /// behind the hart's back (loading an image, DMA into code).
    pub fn flush_caches(&mut self) {
        self.mmu.flush_all();
    }

    /// Forget translations and decoded code for guest addresses `start..start+len`, after the
    /// owner changed what is mapped there (mmap, munmap, mprotect, writes behind the hart's back).
    pub fn invalidate_range(&mut self, start: u64, len: u64) {
        self.mmu.invalidate_range(start, len);
    }

    /// Apply page-permission changes made by other threads since this hart last looked.
    pub(crate) fn sync_page_perms(&mut self) {
        let Some(perms) = self.mem.page_perms() else {
            return;
        };
        if perms.log().generation() == self.perms_seen {
            return;
        }
        let (changes, generation) = perms.log().changes_since(self.perms_seen);
        self.perms_seen = generation;
        for (start, len) in changes {
            self.mmu.invalidate_range(start, len);
        }
    }

    /// Drop write-TLB entries when the dirty log asks (so the next store to each page is seen).
    #[inline]
    pub(crate) fn sync_dirty_log(&mut self) {
        if let Some(log) = self.mem.dirty_log() {
            let g = log.generation();
            if g != self.dirty_seen {
                self.dirty_seen = g;
                self.mmu.flush_write_tlb();
            }
        }
    }

    /// The dirty log's generation this hart has applied: it stores through no write-TLB entry
    /// older than that.
    pub fn dirty_generation_seen(&self) -> u64 {
        self.dirty_seen
    }

    /// Drop decoded code of pages devices wrote since this hart last looked.
    pub(crate) fn sync_dma_writes(&mut self) {
        let log = self.mem.dma_log();
        if log.generation() == self.dma_seen {
            return;
        }
        let (changes, generation) = log.changes_since(self.dma_seen);
        self.dma_seen = generation;
        for (start, len) in changes {
            self.mmu.drop_code_range(start, len);
        }
    }

    /// Current `mip`: software-writable bits plus device lines.
    #[inline]
    pub(crate) fn mip(&self) -> u64 {
        self.s.csr.mip | self.pins.bits()
    }

    /// The highest-priority interrupt that is pending, enabled and not masked, per the
    /// privileged spec's rules for delegation and global enables.
    pub(crate) fn pending_interrupt(&self) -> Option<u64> {
        if self.config.user_mode {
            return None;
        }
        let pending = self.mip() & self.s.csr.mie;
        if pending == 0 {
            return None;
        }
        let m_enabled = self.s.prv < Priv::M || self.s.csr.mstatus & mstatus::MIE != 0;
        let s_enabled = self.s.prv < Priv::S
            || (self.s.prv == Priv::S && self.s.csr.mstatus & mstatus::SIE != 0);
        let m = if m_enabled {
            pending & !self.s.csr.mideleg
        } else {
            0
        };
        let s = if s_enabled {
            pending & self.s.csr.mideleg
        } else {
            0
        };
        let set = if m != 0 { m } else { s };
        // Priority: MEI, MSI, MTI, SEI, SSI, STI.
        [11u64, 3, 7, 9, 1, 5]
            .into_iter()
            .find(|&b| set & (1 << b) != 0)
    }

    /// Whether any enabled interrupt is pending, ignoring global enables: WFI wakes on this.
    pub(crate) fn wfi_should_wake(&self) -> bool {
        self.mip() & self.s.csr.mie != 0
    }

    /// Enter the trap handler for exception `trap` raised by the instruction at `self.s.pc`.
    /// Returns an exit for user-mode harts and for traps that cannot be delivered.
    pub(crate) fn raise(&mut self, trap: Trap) -> Option<Exit> {
        if self.config.user_mode {
            return Some(Exit::Trap(trap));
        }
        let from = self.s.pc;
        self.enter_trap(trap.cause as u64, false, trap.tval);
        // A fetch fault at the very address we just vectored to means the handler itself is
        // unreachable: the hart would loop forever.
        if matches!(
            trap.cause,
            Exception::InstructionAccessFault | Exception::InstructionPageFault
        ) && self.s.pc == from
        {
            return Some(Exit::DoubleFault(trap));
        }
        None
    }

    /// The common trap-entry sequence for exceptions and interrupts.
    pub(crate) fn enter_trap(&mut self, cause: u64, interrupt: bool, tval: u64) {
        let deleg = if interrupt {
            self.s.csr.mideleg
        } else {
            self.s.csr.medeleg
        };
        let mcause = cause | if interrupt { 1 << 63 } else { 0 };
        let s = &mut self.s.csr;
        self.reservation = None;
        if self.s.prv <= Priv::S && (deleg >> cause) & 1 != 0 {
            s.scause = mcause;
            s.sepc = self.s.pc;
            s.stval = tval;
            let mut st = s.mstatus;
            st = set_bit(st, mstatus::SPIE, st & mstatus::SIE != 0);
            st &= !mstatus::SIE;
            st = set_bit(st, mstatus::SPP, self.s.prv == Priv::S);
            s.mstatus = st;
            self.s.pc = vector(s.stvec, cause, interrupt);
            self.s.prv = Priv::S;
        } else {
            s.mcause = mcause;
            s.mepc = self.s.pc;
            s.mtval = tval;
            let mut st = s.mstatus;
            st = set_bit(st, mstatus::MPIE, st & mstatus::MIE != 0);
            st &= !mstatus::MIE;
            st = (st & !mstatus::MPP) | ((self.s.prv as u64) << mstatus::MPP_SHIFT);
            s.mstatus = st;
            self.s.pc = vector(s.mtvec, cause, interrupt);
            self.s.prv = Priv::M;
        }
        self.mmu.set_context(self.s.prv, self.s.csr.mstatus);
        self.s.requests |= request::LEAVE;
    }
}

#[inline]
fn set_bit(v: u64, mask: u64, on: bool) -> u64 {
    if on {
        v | mask
    } else {
        v & !mask
    }
}

fn vector(tvec: u64, cause: u64, interrupt: bool) -> u64 {
    let base = tvec & !3;
    if interrupt && tvec & 3 == 1 {
        base + 4 * cause
    } else {
        base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generated code addresses these fields at fixed offsets: moving one is a deliberate act.
    #[test]
    fn state_offsets_are_pinned() {
        let o = HartState::OFFSETS;
        assert_eq!(o.x, 0);
        assert_eq!(o.f, 512);
        assert_eq!(o.pc, 768);
        assert_eq!(o.instret, 776);
        assert_eq!(o.requests, 784);
        assert_eq!(o.prv, 788);
        assert_eq!(o.mstatus, 792);
        assert_eq!(o.frm, 792 + 22 * 8);
        assert_eq!(o.fflags, 792 + 23 * 8);
        assert_eq!(std::mem::size_of::<Priv>(), 1);
    }
}
