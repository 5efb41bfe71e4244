//! popek's JIT: translates the RISC-V basic block at a hart's `pc` into x86-64 host code and runs
//! it, through popek-cpu's [`popek_cpu::engine`] interface.
//!
//! Translated: RV64I and M integer operations, `lui`/`auipc`, branches, `jal`/`jalr`, integer
//! and FP loads and stores (an inline soft-TLB hit path, a call into the hart for everything
//! else), `fence`. Atomics and F/D arithmetic stay inside blocks but run through the
//! interpreter ([`popek_cpu::engine::steppable`]). Anything else (CSRs, `ecall`, `fence.i`,
//! system instructions, instructions straddling a page) ends a block before it, and the hart
//! interprets from there to the end of that basic block. Blocks never cross a 4 KiB page, so
//! translated code is keyed by the host address of the guest's physical page (plus privilege
//! and MMU mode) and is dropped when that page is written or code is flushed
//! ([`popek_cpu::engine::CodeDrop`]). Blocks of one page chain to each other through patched
//! jumps; `jalr` and jumps to other pages go through a jump cache keyed by guest virtual pc,
//! invalidated with the hart's TLB.
//!
//! On hosts other than x86-64 Linux, [`Jit::new`] fails with [`JitError::Unsupported`] and callers
//! use the interpreter.

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod code;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod engine;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod translate;

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub use engine::Jit;

/// Why a JIT could not be created.
#[derive(Debug, thiserror::Error)]
pub enum JitError {
    /// This host is not x86-64 Linux.
    #[error("the JIT needs an x86-64 Linux host")]
    Unsupported,
    /// The executable code buffer could not be mapped.
    #[error("cannot map {bytes} bytes of executable memory for the JIT: {source}")]
    CodeMemory {
        /// Size asked for.
        bytes: usize,
        /// What mmap said.
        source: std::io::Error,
    },
}

/// What the JIT has done so far, for measurements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JitStats {
    /// Blocks translated (including empty ones: a first instruction the JIT does not handle).
    pub blocks: u64,
    /// Guest instructions translated.
    pub insns: u64,
    /// Time spent translating, in nanoseconds.
    pub translate_ns: u64,
    /// Whole-cache flushes (code buffer full, or the hart dropped all decoded code).
    pub flushes: u64,
    /// Pages whose translations were dropped (stores to code, DMA, invalidation).
    pub page_drops: u64,
    /// Bytes of host code emitted.
    pub code_bytes: u64,
}

impl JitStats {
    /// Add `other`'s counters (several harts, several runs).
    pub fn add(&mut self, other: &JitStats) {
        self.blocks += other.blocks;
        self.insns += other.insns;
        self.translate_ns += other.translate_ns;
        self.flushes += other.flushes;
        self.page_drops += other.page_drops;
        self.code_bytes += other.code_bytes;
    }
}

/// Which engine runs guest code: chosen on the command line (`--engine`) and threaded to the VMs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EngineKind {
    /// The interpreter alone.
    #[default]
    Interp,
    /// The JIT, with the interpreter for what it does not translate.
    Jit,
}

/// Stand-in on hosts without a JIT backend: it cannot be created.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
pub struct Jit(std::convert::Infallible);

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
impl Jit {
    /// Always [`JitError::Unsupported`] on this host.
    pub fn new() -> Result<Jit, JitError> {
        Err(JitError::Unsupported)
    }

    /// Never called: no `Jit` exists on this host.
    pub fn stats(&self) -> JitStats {
        match self.0 {}
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
impl popek_cpu::engine::Engine for Jit {
    const ACTIVE: bool = false;
    fn run_code<B: popek_cpu::Bus>(
        &mut self,
        _: &mut popek_cpu::Hart,
        _: &mut B,
        _: u64,
    ) -> Option<Result<(), popek_cpu::Trap>> {
        match self.0 {}
    }
}
