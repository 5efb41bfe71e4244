//! popek's JIT: translates the RISC-V basic block at a hart's `pc` into x86-64 host code and runs
//! it, through popek-cpu's [`popek_cpu::engine`] interface.
//!
//! Translated: RV64I and M integer operations, `lui`/`auipc`, branches, `jal`/`jalr`, integer
//! and FP loads and stores (an inline soft-TLB hit path, a call into the hart for everything
//! else; loads and stores access the host directly where the host's protection checks them,
//! see `faults`), `fence`. Atomics, F/D arithmetic, accesses to the FP CSRs, `sstatus`,
//! `mstatus` and the trap handlers' CSRs, `time` reads and `sfence.vma` for one address stay
//! inside blocks but run through the interpreter ([`popek_cpu::engine::steppable_insn`]). A
//! 4-byte instruction straddling a page end is a block of its own that runs it through the
//! interpreter's code (both halves fetched anew each time) and goes on through the jump cache.
//! Anything else (other CSRs, `ecall`, `fence.i`, system instructions) ends a block before it,
//! and the hart interprets from there to the end of that basic block. Blocks never cross a 4 KiB
//! page, so translated code is keyed by the host address of the guest's physical page (plus
//! privilege and MMU mode) and is dropped when that page is written or code is flushed
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
mod faults;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod perfmap;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod table;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod translate;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod verify;

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub use engine::Jit;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub use perfmap::open_perf_map;

/// No JIT on this host, so no symbols to list and no descriptor to keep.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
pub fn open_perf_map(_lowest_fd: Option<i32>) -> Option<i32> {
    None
}

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
    /// A lookup table could not be mapped.
    #[error("cannot map {bytes} bytes for the JIT's lookup tables: {source}")]
    Tables {
        /// Size asked for.
        bytes: usize,
        /// What mmap said.
        source: std::io::Error,
    },
    /// The handler that sends host faults of direct loads and stores to their slow paths
    /// could not be installed.
    #[error("cannot install the JIT's SIGSEGV handler: {0}")]
    FaultHandler(std::io::Error),
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
    /// Blocks `--engine verify` ran on both engines and found the same.
    pub verified: u64,
    /// Blocks `--engine verify` could not run twice (they touched MMIO).
    pub unverified: u64,
    /// Times the engine entered translated code: each return to it (a jump the jump cache
    /// missed, a cold block, a request) costs a lookup there, so fewer is better.
    pub entries: u64,
    /// Loads and stores of translated code that missed its inline TLB check and went
    /// through a helper (TLB misses, accesses crossing a page, MMIO, stores to code).
    pub slow_accesses: u64,
    /// Of those, loads and stores that access host memory directly and went to their helper
    /// after a host fault (see [`popek_cpu::Hart::let_host_check_reads`]): guest faults, and
    /// accesses across into a page the guest may not read or write.
    pub host_faults: u64,
    /// Instructions translated code ran through the step helper (the interpreter, with every
    /// guest register stored before and loaded after): what the translator does not emit
    /// itself, such as CSR accesses other than the FP ones and `sstatus`, traps and fences.
    pub stepped: u64,
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
        self.verified += other.verified;
        self.unverified += other.unverified;
        self.entries += other.entries;
        self.slow_accesses += other.slow_accesses;
        self.host_faults += other.host_faults;
        self.stepped += other.stepped;
    }

    /// What was done since `earlier` (counts of the same JIT): a forked process's own work.
    pub fn since(&self, earlier: &JitStats) -> JitStats {
        JitStats {
            blocks: self.blocks.saturating_sub(earlier.blocks),
            insns: self.insns.saturating_sub(earlier.insns),
            translate_ns: self.translate_ns.saturating_sub(earlier.translate_ns),
            flushes: self.flushes.saturating_sub(earlier.flushes),
            page_drops: self.page_drops.saturating_sub(earlier.page_drops),
            code_bytes: self.code_bytes.saturating_sub(earlier.code_bytes),
            verified: self.verified.saturating_sub(earlier.verified),
            unverified: self.unverified.saturating_sub(earlier.unverified),
            entries: self.entries.saturating_sub(earlier.entries),
            slow_accesses: self.slow_accesses.saturating_sub(earlier.slow_accesses),
            host_faults: self.host_faults.saturating_sub(earlier.host_faults),
            stepped: self.stepped.saturating_sub(earlier.stepped),
        }
    }

    /// What `--engine verify` checked, if it checked anything (the second `--stats` line).
    pub fn verify_summary(&self) -> Option<String> {
        (self.verified + self.unverified > 0).then(|| {
            format!(
                "{} block runs the same on the JIT and the interpreter, {} not checked (MMIO)",
                self.verified, self.unverified
            )
        })
    }
}

/// The `--stats` line of `popek run` and `popek exec` (after "JIT ").
impl std::fmt::Display for JitStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "translated {} blocks, {} instructions in {:.1} ms ({:.2} us per instruction); {} KiB of code; {} flushes, {} page drops; entered translated code {} times; {} loads and stores through helpers ({} after a host fault); {} instructions through the step helper",
            self.blocks,
            self.insns,
            self.translate_ns as f64 / 1e6,
            self.translate_ns as f64 / 1e3 / self.insns.max(1) as f64,
            self.code_bytes >> 10,
            self.flushes,
            self.page_drops,
            self.entries,
            self.slow_accesses,
            self.host_faults,
            self.stepped
        )
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
    /// Every translated block run on the JIT, then again on the interpreter from the same state,
    /// stopping at the first difference: the interpreter is the oracle.
    Verify,
}

impl EngineKind {
    /// The name `--engine` takes.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Interp => "interp",
            EngineKind::Jit => "jit",
            EngineKind::Verify => "verify",
        }
    }
}

/// How guest code runs: the engine and the size of each JIT's code cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// The engine.
    pub kind: EngineKind,
    /// Bytes of translated code each hart (or guest thread) keeps; when full, it is emptied.
    pub code_bytes: usize,
    /// A block is translated when it starts for this many times (1: at once); until then the
    /// interpreter runs it. Translating costs about as much as interpreting a block a few
    /// hundred times, so code that runs only a few times (start-up, a restored guest's one
    /// command) is cheaper to interpret. The hart counts starts up to 65,535: a larger value
    /// acts as that.
    pub hot: u32,
}

impl EngineConfig {
    /// The code cache when none is asked for: enough for a Debian boot's kernel and user space
    /// without a flush.
    pub const DEFAULT_CODE_BYTES: usize = 32 << 20;
    /// The smallest code cache: a few hundred blocks.
    pub const MIN_CODE_BYTES: usize = 64 << 10;
    /// The largest code cache (generated code reaches its helpers with 32-bit jumps inside it).
    pub const MAX_CODE_BYTES: usize = 1 << 30;

    /// How often a block starts before it is translated, when not asked otherwise (see
    /// [`EngineConfig::hot`]).
    pub const DEFAULT_HOT: u32 = 64;

    /// `kind` with the default code cache and threshold.
    pub const fn new(kind: EngineKind) -> EngineConfig {
        EngineConfig {
            kind,
            code_bytes: EngineConfig::DEFAULT_CODE_BYTES,
            hot: EngineConfig::DEFAULT_HOT,
        }
    }

    /// The JIT this asks for, or `None` for the interpreter. `verify` translates every block
    /// at once: a block left to the interpreter would not be checked.
    pub fn jit(&self) -> Result<Option<Jit>, JitError> {
        match self.kind {
            EngineKind::Interp => Ok(None),
            EngineKind::Jit => {
                Jit::with_code_bytes(self.code_bytes).map(|j| Some(j.translating_after(self.hot)))
            }
            EngineKind::Verify => Jit::verifying(self.code_bytes).map(Some),
        }
    }
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig::new(EngineKind::default())
    }
}

/// The first difference `--engine verify` found between the JIT and the interpreter.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the JIT and the interpreter differ {report}; please report it (--engine interp avoids it)"
)]
pub struct Divergence {
    /// Where, and every register and memory byte that differs.
    pub report: String,
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

    /// Always [`JitError::Unsupported`] on this host.
    pub fn with_code_bytes(_: usize) -> Result<Jit, JitError> {
        Err(JitError::Unsupported)
    }

    /// Always [`JitError::Unsupported`] on this host.
    pub fn verifying(_: usize) -> Result<Jit, JitError> {
        Err(JitError::Unsupported)
    }

    /// Never called: no `Jit` exists on this host.
    pub fn translating_after(self, _: u32) -> Jit {
        match self.0 {}
    }

    /// Never called: no `Jit` exists on this host.
    pub fn expect_data_addend(&mut self, _: u64) {
        match self.0 {}
    }

    /// Never called: no `Jit` exists on this host.
    pub fn expect_bare_data_addend(&mut self, _: u64) {
        match self.0 {}
    }

    /// Never called: no `Jit` exists on this host.
    pub fn expect_machine_ram(&mut self, _: u64, _: u64) {
        match self.0 {}
    }

    /// Never called: no `Jit` exists on this host.
    pub fn take_divergence(&mut self) -> Option<Divergence> {
        match self.0 {}
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
