//! The engine: block cache, invalidation, the helpers generated code calls, and the run loop.

use rustc_hash::FxHashMap as HashMap;
use std::time::Instant;

use popek_cpu::decode::{Insn, Op};
use popek_cpu::engine::{muldiv, CodeDrop, Engine};
use popek_cpu::{BlockHeat, Bus, Exception, Hart, HartState, Priv, Trap};

use crate::code::CodeBuf;
use crate::faults::{self, DirectSites};
use crate::perfmap;
use crate::table::ZeroedTable;
use crate::translate::{
    jcache_fold, jcache_second_slot, jcache_slot, trampolines, translate, Env, InsnArena, JEntry,
    JCACHE_ENTRIES, JCACHE_FIRST_ENTRIES,
};
use crate::verify::Verdict;
use crate::{Divergence, EngineConfig, JitError, JitStats};

/// Slots of the direct-mapped lookup in front of the block map.
const FAST_SLOTS: usize = 4096;

/// What generated code and its helpers share for one run: the hart, the bus, the TLBs the
/// inline fast paths use, and the trap a helper reports.
#[repr(C)]
pub(crate) struct Ctx<'a> {
    tlb_read: *const u8,
    tlb_write: *const u8,
    /// Instructions chained blocks may still run before returning (read on entry; generated
    /// code counts down in a register).
    pub(crate) left: i64,
    /// The chain slot the last block left through, or null.
    exit_slot: *mut u8,
    /// The engine's jump cache.
    jcache: *const JEntry,
    /// Its slot mask (see `Jit::jmask`).
    jmask: u32,
    /// `jcache_fold(jmask)`.
    jfold: u32,
    /// The key valid jump-cache entries carry now.
    jkey: u64,
    pub(crate) hart: *mut Hart,
    pub(crate) bus: *mut (dyn Bus + 'a),
    pub(crate) trap: Trap,
    /// Scratch for generated code (`stmxcsr`/`ldmxcsr` need a memory operand).
    scratch: u32,
    /// Loads and stores that took a helper (see [`JitStats::slow_accesses`]).
    slow_accesses: u64,
    /// Instructions run through the step helper (see [`JitStats::stepped`]).
    stepped: u64,
}

/// What a load helper returns: in `rax` the loaded value, in `rdx` non-zero on a fault.
#[repr(C)]
struct LoadRet {
    value: u64,
    fault: u64,
}

/// Slow path of a load of `N` bytes (sign-extended if `SIGNED`), called by generated code.
///
/// # Safety
/// `ctx` must be the context of the run in progress.
unsafe extern "sysv64" fn load_helper<const N: u8, const SIGNED: bool>(
    ctx: *mut Ctx<'_>,
    vaddr: u64,
) -> LoadRet {
    // SAFETY: generated code passes the live context, whose hart and bus pointers come from
    // the `&mut` borrows `run_code` holds for the whole run; no other reference to them is
    // used while a block runs.
    let ctx = unsafe { &mut *ctx };
    ctx.slow_accesses += 1;
    // SAFETY: as above.
    let (hart, bus) = unsafe { (&mut *ctx.hart, &mut *ctx.bus) };
    match hart.engine_load(bus, vaddr, N) {
        Ok(v) => {
            let value = match (N, SIGNED) {
                (1, true) => v as i8 as i64 as u64,
                (2, true) => v as i16 as i64 as u64,
                (4, true) => v as i32 as i64 as u64,
                _ => v,
            };
            LoadRet { value, fault: 0 }
        }
        Err(t) => {
            ctx.trap = t;
            LoadRet { value: 0, fault: 1 }
        }
    }
}

/// Slow path of a store of `N` bytes; returns non-zero on a fault.
///
/// # Safety
/// `ctx` must be the context of the run in progress.
unsafe extern "sysv64" fn store_helper<const N: u8>(
    ctx: *mut Ctx<'_>,
    vaddr: u64,
    value: u64,
) -> u64 {
    // SAFETY: see `load_helper`.
    let ctx = unsafe { &mut *ctx };
    ctx.slow_accesses += 1;
    // SAFETY: see `load_helper`.
    let (hart, bus) = unsafe { (&mut *ctx.hart, &mut *ctx.bus) };
    match hart.engine_store(bus, vaddr, N, value) {
        Ok(()) => 0,
        Err(t) => {
            ctx.trap = t;
            1
        }
    }
}

/// One steppable instruction (atomics, F and D) through the interpreter; non-zero on a fault.
///
/// # Safety
/// `ctx` must be the context of the run in progress and `insn` a live decoded instruction.
unsafe extern "sysv64" fn step_helper(
    ctx: *mut Ctx<'_>,
    insn: *const Insn,
    pc: u64,
    raw: u32,
) -> u64 {
    // SAFETY: see `load_helper`; `insn` points into the engine's instruction arena, which
    // lives as long as the code referring to it.
    let (ctx, insn) = unsafe { (&mut *ctx, &*insn) };
    // SAFETY: see `load_helper`.
    let (hart, bus) = unsafe { (&mut *ctx.hart, &mut *ctx.bus) };
    ctx.stepped += 1;
    match hart.engine_step(bus, insn, pc, raw) {
        Ok(()) => 0,
        Err(t) => {
            ctx.trap = t;
            1
        }
    }
}

/// Run the instruction straddling a page end at `pc` (see [`Hart::engine_step_straddling`],
/// `lag` as there): 0 when it ran (the hart's `pc` is where it went), 1 when it trapped (the
/// trap in the context).
///
/// # Safety
/// As for `load_helper`.
unsafe extern "sysv64" fn straddle_helper(ctx: *mut Ctx<'_>, pc: u64, lag: u64) -> u64 {
    // SAFETY: see `load_helper`.
    let ctx = unsafe { &mut *ctx };
    // SAFETY: see `load_helper`.
    let (hart, bus) = unsafe { (&mut *ctx.hart, &mut *ctx.bus) };
    ctx.stepped += 1;
    match hart.engine_step_straddling(bus, pc, lag) {
        Ok(()) => 0,
        Err(t) => {
            ctx.trap = t;
            1
        }
    }
}

/// The division helpers translated code calls (see [`muldiv`]), one per instruction.
macro_rules! division_helpers {
    ($($name:ident: $op:ident),*) => {
        $(
            extern "sysv64" fn $name(a: u64, b: u64) -> u64 {
                muldiv(Op::$op, a, b)
            }
        )*
    };
}
division_helpers!(
    div: Div, divu: Divu, rem: Rem, remu: Remu, divw: Divw, divuw: Divuw, remw: Remw,
    remuw: Remuw
);

/// Point the chain slot (a `jmp rel32`) at `target`.
///
/// # Safety
/// `slot` must be a chain slot of a live block in the code buffer, `target` the chain entry of
/// a live block for the guest address the slot's exit leads to, and no translated code may be
/// running.
unsafe fn chain(slot: *mut u8, target: *const u8) {
    // SAFETY: per the contract, `slot` is the 5-byte `jmp rel32` the translator emitted.
    unsafe {
        assert_eq!(*slot, 0xe9, "a chain slot is a jmp rel32");
        let rel = target as i64 - (slot as i64 + 5);
        (slot.add(1) as *mut i32).write_unaligned(rel as i32);
    }
}

/// [`crate::translate::Trampolines::enter`]: runs the translated block at the third argument
/// with this state and context; 0 when it left normally, else a trap is in the context.
pub(crate) type EnterFn = unsafe extern "sysv64" fn(*mut HartState, *mut Ctx<'_>, *const u8) -> u64;

/// A translated block (or the note that the instruction at its address is not translated).
#[derive(Clone, Copy)]
struct Block {
    /// Its code (entered through `Jit::enter`, jumped to by chained blocks); null when not
    /// translated.
    chain: *const u8,
    insns: u32,
}

/// A block's identity: host address of its first instruction (so the guest physical address),
/// privilege mode and MMU mode packed in one word (host addresses fit in 48 bits), and the
/// guest virtual pc. The virtual pc belongs in it because translated code embeds it (`auipc`,
/// link addresses, exits): a page of a shared library is one physical page mapped at a
/// different address in each process, and each mapping needs its own translation.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    host: u64,
    vpc: u64,
}

fn key(host_pc: u64, vpc: u64, prv: Priv, satp_mode: u64) -> Key {
    Key {
        host: host_pc | (prv as u64) << 56 | (satp_mode & 0xf) << 60,
        vpc,
    }
}

/// The MMU mode [`key`] records for M-mode: 0 (untranslated, see [`Key::untranslated`]) while
/// its loads and stores are M-mode's own, physical; [`MACHINE_MPRV`] under `mstatus.MPRV`
/// with another privilege in `mstatus.MPP` (they take its translation and privilege).
/// `MPRV` and `MPP` change only through a CSR write, a trap or `mret`, which end blocks: the
/// next block is looked up under the new code. (popek checks no PMP entry: an M-mode access
/// to RAM always succeeds.)
fn machine_mode_code(csrs: &popek_cpu::csr::Csrs) -> u64 {
    use popek_cpu::csr::mstatus;
    let mpp = (csrs.mstatus & mstatus::MPP) >> mstatus::MPP_SHIFT;
    if csrs.mstatus & mstatus::MPRV != 0 && mpp != Priv::M as u64 {
        MACHINE_MPRV
    } else {
        0
    }
}

/// See [`machine_mode_code`]: a value `satp.MODE` never takes.
const MACHINE_MPRV: u64 = 1;

impl Key {
    /// Whether the block runs with translation off (M-mode, or `satp` Bare: [`key`] records
    /// M-mode's mode as 0), so its addresses are physical.
    fn untranslated(self) -> bool {
        self.host >> 60 == 0
    }

    /// Whether the block runs in M-mode.
    fn machine_mode(self) -> bool {
        (self.host >> 56) & 3 == Priv::M as u64
    }
}

/// The JIT engine of one hart: pass it to [`Hart::run_with`].
pub struct Jit {
    code: CodeBuf,
    /// The shared entry into translated code, at the front of `code` (kept across flushes).
    enter: EnterFn,
    blocks: HashMap<Key, Block>,
    /// Keys of the blocks on each host page, to drop them when the page's code is dropped.
    by_page: HashMap<u64, Vec<Key>>,
    /// Direct-mapped cache of `blocks`: (key, block); [`NO_KEY`] when empty.
    fast: ZeroedTable<(Key, Block)>,
    env: Env,
    stats: JitStats,
    /// Bumped whenever translations are dropped: a chain slot recorded before may be gone.
    epoch: u64,
    /// Decoded instructions translated code hands to the step helper; freed with the code.
    insns: InsnArena,
    /// Translations by guest virtual pc, for jumps generated code resolves itself. An entry
    /// is valid only with the current key: `version << 8 | prv << 4 | satp mode`, where
    /// `version` changes whenever translations are dropped or the hart's TLB is flushed.
    /// Two ways: [`JCACHE_ENTRIES`] slots indexed by `jcache_slot`, then as many indexed by
    /// `jcache_second_slot`, which get what the first way's slots lose. Only slots
    /// `0..=jmask` of each way are used.
    jcache: ZeroedTable<JEntry>,
    /// The jump cache's slot mask: [`JCACHE_FIRST_ENTRIES`] - 1 at first, four times as many
    /// slots whenever the JIT has translated as many blocks as half the slots, up to
    /// [`JCACHE_ENTRIES`]. Entries stay where they were put: one looked up under a larger
    /// mask is missed (the engine puts it again), never wrong, since a match compares the
    /// whole target and key.
    jmask: u32,
    jc_version: u64,
    /// The hart TLB generation the jump cache reflects.
    jc_tlb_gen: u64,
    /// `--engine verify`: every block also runs on the interpreter (see the verify module).
    verify: bool,
    /// The first difference verification found, until the owner takes it.
    divergence: Option<Divergence>,
    /// How often a block starts before it is translated (see [`EngineConfig::hot`]).
    hot: u32,
    /// Starts of blocks not translated yet that the hart has no room to count
    /// ([`BlockHeat::Crowded`]), up to [`MAX_CROWDED`] blocks (then counted afresh).
    crowded: HashMap<Key, u32>,
    /// See [`Jit::expect_bare_data_addend`].
    bare_addend: Option<u64>,
    /// See [`Jit::expect_machine_ram`].
    machine_ram: Option<(u64, u64)>,
    /// Direct loads and stores in `code` (see [`Env::host_read_bits`]), emptied with it.
    direct: DirectSites,
}

/// The jump cache's slot mask once the JIT holds `blocks` translations, from `mask` (see
/// `Jit::jmask`): four times as many slots once they outnumber half the slots, up to
/// [`JCACHE_ENTRIES`].
fn jcache_mask_for(blocks: usize, mask: u32) -> u32 {
    if 2 * blocks > mask as usize + 1 && (mask as usize) < JCACHE_ENTRIES - 1 {
        mask << 2 | 3
    } else {
        mask
    }
}

/// Most blocks [`Jit::crowded`] counts at once: a bound on its memory (24 bytes an entry and
/// the map's overhead) when a guest starts many blocks the hart has no room for.
const MAX_CROWDED: usize = 1 << 16;

/// The key of an empty `fast` slot, all zero (no block's: a key holds a host address).
const NO_KEY: Key = Key { host: 0, vpc: 0 };

/// [`ZeroedTable::new`] of `n` entries (or [`ZeroedTable::new_backed`] if `backed`), failing
/// as the JIT does.
///
/// # Safety
/// All-zero bytes must be a valid `T`.
unsafe fn table<T: Copy>(n: usize, backed: bool) -> Result<ZeroedTable<T>, JitError> {
    // SAFETY: passed on from this function's contract.
    let t = unsafe {
        if backed {
            ZeroedTable::new_backed(n)
        } else {
            ZeroedTable::new(n)
        }
    };
    t.ok_or_else(|| JitError::Tables {
        bytes: n * std::mem::size_of::<T>(),
        source: std::io::Error::last_os_error(),
    })
}

const EMPTY: (Key, Block) = (
    NO_KEY,
    Block {
        chain: std::ptr::null(),
        insns: 0,
    },
);

fn fast_slot(k: Key) -> usize {
    ((k.host >> 1) ^ (k.host >> 13) ^ (k.vpc >> 12)) as usize & (FAST_SLOTS - 1)
}

impl Jit {
    /// A JIT with an empty code cache of the default size.
    pub fn new() -> Result<Jit, JitError> {
        Jit::with_code_bytes(EngineConfig::DEFAULT_CODE_BYTES)
    }

    /// A JIT that checks every block it runs against the interpreter (`--engine verify`); see
    /// [`Jit::take_divergence`].
    pub fn verifying(code_bytes: usize) -> Result<Jit, JitError> {
        let mut jit = Jit::with_code_bytes(code_bytes)?;
        jit.verify = true;
        Ok(jit)
    }

    /// This JIT, translating a block only when it starts for the `hot`th time (1, the default
    /// of [`Jit::new`] and the tests: at once); see [`EngineConfig::hot`].
    pub fn translating_after(mut self, hot: u32) -> Jit {
        self.hot = hot.max(1);
        self
    }

    /// Expect every data TLB entry to hold `addend` (host minus guest virtual address), as in
    /// a process VM's flat address space (guest address `g` at host `base + g`): translated
    /// loads and stores then start their access without waiting for the entry's addend, and
    /// check it beside the tag (an entry with another one takes the slow path, so a wrong
    /// expectation costs speed, never correctness). Applies to blocks translated afterwards.
    pub fn expect_data_addend(&mut self, addend: u64) {
        self.env.data_addend = Some(addend);
    }

    /// Expect the data TLB entries of code running untranslated (M-mode, or `satp` Bare) to
    /// hold `addend` (host minus guest physical address): a board's RAM is one host mapping,
    /// so its every page has that one. As with [`Jit::expect_data_addend`], loads and stores
    /// of blocks translated in that context afterwards then start their access without
    /// waiting for the entry's addend, and an entry with another one (MMIO, the mask ROM, a
    /// load under `mstatus.MPRV`) takes the slow path.
    pub fn expect_bare_data_addend(&mut self, addend: u64) {
        self.bare_addend = Some(addend);
    }

    /// Guest-physical RAM is `base..base + len`, at the addend of
    /// [`Jit::expect_bare_data_addend`]: loads of blocks translated afterwards that run in
    /// M-mode (without `mstatus.MPRV`), where every load from RAM succeeds,
    /// check their address against these bounds instead of the TLB: a compare instead of a
    /// TLB lookup for firmware and bare-metal programs. Stores still take the TLB, which
    /// write-protects pages with translated code.
    pub fn expect_machine_ram(&mut self, base: u64, len: u64) {
        self.machine_ram = Some((base, len));
    }

    /// The key jump-cache entries must carry to be used now (see `Jit::jcache`).
    fn jkey(&self, prv: Priv, satp_mode: u64) -> u64 {
        self.jc_version << 8 | (prv as u64) << 4 | (satp_mode & 0xf)
    }

    /// The translation of the block under `k`, if there is one (or the mark of a block found
    /// untranslatable).
    #[inline]
    fn find(&mut self, k: Key) -> Option<Block> {
        let slot = self.fast[fast_slot(k)];
        if slot.0 == k {
            return Some(slot.1);
        }
        let b = *self.blocks.get(&k)?;
        self.fast[fast_slot(k)] = (k, b);
        Some(b)
    }

    /// Whether the block under `k`, about to start at the hart's `pc` and not translated,
    /// is to be translated now. The hart counts block starts (see `Hart::block_heat`): the
    /// `first` block of a run is one it just counted and found not cold; a block reached
    /// from translated code is counted here. A block the hart has no room to count is
    /// counted in [`Jit::crowded`].
    fn turns_hot(&mut self, hart: &mut Hart, k: Key, first: bool) -> bool {
        let pc = hart.pc();
        let heat = if first {
            hart.block_heat_now(pc, self.hot)
        } else {
            hart.block_heat(pc, self.hot)
        };
        match heat {
            BlockHeat::Cold => false,
            BlockHeat::Hot => true,
            BlockHeat::Crowded => self.crowded_start(k),
        }
    }

    /// Count a start of the block under `k`, which the hart has no room to count: whether it
    /// has now started `hot` times (and is to be translated).
    fn crowded_start(&mut self, k: Key) -> bool {
        if self.crowded.len() >= MAX_CROWDED {
            self.crowded.clear();
        }
        let count = self.crowded.entry(k).or_insert(0);
        *count += 1;
        let hot = *count >= self.hot;
        if hot {
            self.crowded.remove(&k);
        }
        hot
    }

    /// The first difference between the JIT and the interpreter that verification found (the
    /// hart goes on from the interpreter's results). Check after every run.
    pub fn take_divergence(&mut self) -> Option<Divergence> {
        self.divergence.take()
    }

    /// A JIT whose code buffer holds `bytes` (clamped to [`EngineConfig::MIN_CODE_BYTES`] ..=
    /// [`EngineConfig::MAX_CODE_BYTES`]): when it is full, every translation is dropped.
    pub fn with_code_bytes(bytes: usize) -> Result<Jit, JitError> {
        let bytes = bytes.clamp(EngineConfig::MIN_CODE_BYTES, EngineConfig::MAX_CODE_BYTES);
        let ctx_tlb_read = std::mem::offset_of!(Ctx<'static>, tlb_read) as i32;
        let ctx_tlb_write = std::mem::offset_of!(Ctx<'static>, tlb_write) as i32;
        let mut env = Env {
            load: [
                [
                    load_helper::<1, false> as *const () as usize,
                    load_helper::<1, true> as *const () as usize,
                ],
                [
                    load_helper::<2, false> as *const () as usize,
                    load_helper::<2, true> as *const () as usize,
                ],
                [
                    load_helper::<4, false> as *const () as usize,
                    load_helper::<4, true> as *const () as usize,
                ],
                [
                    load_helper::<8, false> as *const () as usize,
                    load_helper::<8, true> as *const () as usize,
                ],
            ],
            store: [
                store_helper::<1> as *const () as usize,
                store_helper::<2> as *const () as usize,
                store_helper::<4> as *const () as usize,
                store_helper::<8> as *const () as usize,
            ],
            div: [
                div as *const () as usize,
                divu as *const () as usize,
                rem as *const () as usize,
                remu as *const () as usize,
                divw as *const () as usize,
                divuw as *const () as usize,
                remw as *const () as usize,
                remuw as *const () as usize,
            ],
            step: step_helper as *const () as usize,
            straddle: straddle_helper as *const () as usize,
            ctx_tlb_read,
            ctx_tlb_write,
            ctx_left: std::mem::offset_of!(Ctx<'static>, left) as i32,
            ctx_exit_slot: std::mem::offset_of!(Ctx<'static>, exit_slot) as i32,
            ctx_jcache: std::mem::offset_of!(Ctx<'static>, jcache) as i32,
            ctx_jmask: std::mem::offset_of!(Ctx<'static>, jmask) as i32,
            ctx_jfold: std::mem::offset_of!(Ctx<'static>, jfold) as i32,
            ctx_jkey: std::mem::offset_of!(Ctx<'static>, jkey) as i32,
            ctx_scratch: std::mem::offset_of!(Ctx<'static>, scratch) as i32,
            fma: popek_cpu::fpu::host_has_fma(),
            epilogue: 0,
            second_way: 0,
            data_addend: None,
            sole_addend: None,
            host_read_bits: None,
            host_write_bits: None,
            machine_ram: None,
            // Set from the hart before anything is translated (see `run_code`).
            data_tlb_entries: 0,
        };
        let mut code = CodeBuf::new(bytes)?;
        let t = trampolines(code.next_addr(), &env);
        let at = code.keep(&t.code).ok_or(JitError::CodeMemory {
            bytes,
            source: std::io::Error::from_raw_os_error(libc::ENOMEM),
        })?;
        env.epilogue = at as usize + t.epilogue;
        env.second_way = at as usize + t.second_way;
        // SAFETY: `at + t.enter` is the entry assembled for this address with the `EnterFn`
        // calling convention; the code stays there as long as the buffer (`keep`).
        let enter = unsafe { std::mem::transmute::<*const u8, EnterFn>(at.add(t.enter)) };
        Ok(Jit {
            code,
            enter,
            blocks: HashMap::default(),
            by_page: HashMap::default(),
            // SAFETY: an all-zero slot is `EMPTY` (a zero key, a null block).
            fast: unsafe { table(FAST_SLOTS, true)? },
            env,
            stats: JitStats::default(),
            epoch: 0,
            insns: InsnArena::default(),
            // SAFETY: all-zero entries are unused ones: no key is 0, as `jc_version` starts at 1.
            jcache: unsafe { table(2 * JCACHE_ENTRIES, false)? },
            jmask: JCACHE_FIRST_ENTRIES as u32 - 1,
            jc_version: 1,
            jc_tlb_gen: u64::MAX,
            verify: false,
            divergence: None,
            hot: 1,
            crowded: HashMap::default(),
            bare_addend: None,
            machine_ram: None,
            direct: DirectSites::default(),
        })
    }

    /// Counters for measurements.
    pub fn stats(&self) -> JitStats {
        JitStats {
            host_faults: self.direct.redirected(),
            ..self.stats
        }
    }

    /// Whether host faults of direct accesses reach their slow paths: the handler is
    /// installed (once per process) the first time a hart lets the host check its accesses;
    /// if that fails, they check the TLB as before.
    fn fault_handler() -> bool {
        static WARNED: std::sync::Once = std::sync::Once::new();
        match faults::install() {
            Ok(()) => true,
            Err(e) => {
                WARNED.call_once(|| tracing::warn!("{e}; loads check the soft TLB"));
                false
            }
        }
    }

    fn flush(&mut self) {
        self.epoch += 1;
        self.jc_version += 1;
        self.blocks.clear();
        self.by_page.clear();
        self.fast.fill(EMPTY);
        self.code.clear();
        self.insns.clear();
        self.direct.clear();
        self.stats.flushes += 1;
    }

    fn drop_code(&mut self, d: CodeDrop) {
        match d {
            CodeDrop::All => {
                if !self.blocks.is_empty() {
                    self.flush();
                }
            }
            CodeDrop::HostPage(page) => {
                if let Some(keys) = self.by_page.remove(&page) {
                    self.epoch += 1;
                    self.jc_version += 1;
                    self.stats.page_drops += 1;
                    for k in keys {
                        self.blocks.remove(&k);
                        let slot = &mut self.fast[fast_slot(k)];
                        if slot.0 == k {
                            *slot = EMPTY;
                        }
                    }
                }
            }
        }
    }

    /// Translate the block at guest virtual `pc` in the page of guest RAM at host address
    /// `page`, and cache it under key `k`.
    fn translate(&mut self, page: *const u8, pc: u64, k: Key) -> Block {
        let started = Instant::now();
        let mut env = self.env;
        if k.untranslated() {
            env.data_addend = env.data_addend.or(self.bare_addend);
            if k.machine_mode() {
                env.machine_ram = self.machine_ram;
            }
        }
        // SAFETY: `page` is the host address of a guest RAM page the hart just fetched from.
        let mut t = unsafe { translate(page, pc, self.code.next_addr(), &env, &mut self.insns) };
        if t.code.len() > self.code.free() {
            self.flush();
            // Assembled for the old address: again for the start of the emptied buffer.
            // SAFETY: as above.
            t = unsafe { translate(page, pc, self.code.next_addr(), &env, &mut self.insns) };
        }
        let mut b = Block {
            chain: std::ptr::null(),
            insns: t.insns,
        };
        if t.insns != 0 {
            let p = self
                .code
                .push(&t.code)
                .expect("a block fits in an empty code buffer");
            b.chain = p;
            for (access, slow) in t.direct_sites {
                self.direct.add(p as usize + access, p as usize + slow);
            }
            perfmap::block(p, t.code.len(), pc);
        }
        self.blocks.insert(k, b);
        self.by_page.entry(page as u64).or_default().push(k);
        self.fast[fast_slot(k)] = (k, b);
        self.stats.blocks += 1;
        self.jmask = jcache_mask_for(self.blocks.len(), self.jmask);
        self.stats.insns += t.insns as u64;
        self.stats.code_bytes += t.code.len() as u64;
        self.stats.translate_ns += started.elapsed().as_nanos() as u64;
        b
    }
}

impl Engine for Jit {
    const ACTIVE: bool = true;

    fn hot(&self) -> u32 {
        self.hot
    }

    fn run_code<B: Bus>(
        &mut self,
        hart: &mut Hart,
        bus: &mut B,
        left: u64,
    ) -> Option<Result<(), Trap>> {
        let start = hart.instret();
        let mut first = true;
        self.env.data_tlb_entries = hart.data_tlb_entries();
        let sole = hart.sole_data_addend();
        let host_reads = hart.host_checked_read_bits();
        // Verification logs every store to undo it before the interpreter's run: through the
        // helpers, never directly.
        let host_writes = hart.host_checked_write_bits().filter(|_| !self.verify);
        let direct = host_reads.or(host_writes).is_some();
        let (host_reads, host_writes) = if direct && !Jit::fault_handler() {
            (None, None)
        } else {
            (host_reads, host_writes)
        };
        let env = &self.env;
        if (sole, host_reads, host_writes)
            != (env.sole_addend, env.host_read_bits, env.host_write_bits)
        {
            // Translations made under another requirement would add the wrong addend, or
            // access memory where the host no longer checks.
            if !self.blocks.is_empty() {
                self.flush();
            }
            self.env.sole_addend = sole;
            self.env.host_read_bits = host_reads;
            self.env.host_write_bits = host_writes;
        }
        // Host faults on this JIT's direct accesses go to their slow paths until we return.
        let _running = direct.then(|| faults::Running::new(&self.direct));
        // The chain slot the last block left through, to point at the next block.
        let mut chain_from: Option<(*mut u8, u64)> = None;
        let prv = hart.privilege();
        let satp_mode = if prv == Priv::M {
            machine_mode_code(hart.csrs())
        } else {
            hart.csrs().satp >> 60
        };
        if hart.tlb_generation() != self.jc_tlb_gen {
            self.jc_tlb_gen = hart.tlb_generation();
            self.jc_version += 1;
        }
        let mut ctx = Ctx {
            tlb_read: hart.data_tlb(false),
            tlb_write: hart.data_tlb(true),
            left: 0,
            exit_slot: std::ptr::null_mut(),
            jcache: self.jcache.as_ptr(),
            jmask: 0,
            jfold: 0,
            jkey: 0,
            hart: std::ptr::null_mut(),
            bus: bus as &mut dyn Bus,
            trap: Trap::new(Exception::IllegalInstruction, 0),
            scratch: 0,
            slow_accesses: 0,
            stepped: 0,
        };
        loop {
            let page = match hart.fetch_code_page() {
                Ok(p) => p,
                Err(t) => return Some(Err(t)),
            };
            hart.drain_code_drops(|d| self.drop_code(d));
            let pc = hart.pc();
            let host_pc = page.host as u64 + (pc & 0xfff);
            let k = key(host_pc, pc, prv, satp_mode);
            let block = match self.find(k) {
                Some(b) => b,
                None if self.turns_hot(hart, k, first) => self.translate(page.host, pc, k),
                // Still cold: the interpreter runs it.
                None => return if first { None } else { Some(Ok(())) },
            };
            let done = hart.instret() - start;
            if block.chain.is_null() || block.insns as u64 > left - done {
                return if first { None } else { Some(Ok(())) };
            }
            let jkey = self.jkey(prv, satp_mode);
            let slot = jcache_slot(pc, self.jmask);
            let old = self.jcache[slot];
            if old.vpc != pc && old.key == jkey {
                // The first way's entry moves to the second way (see `jcache_second_slot`).
                self.jcache[JCACHE_ENTRIES + jcache_second_slot(old.vpc, self.jmask)] = old;
            }
            self.jcache[slot] = JEntry {
                vpc: pc,
                key: jkey,
                entry: block.chain,
            };
            if let Some((slot, epoch)) = chain_from.take() {
                if epoch == self.epoch {
                    // SAFETY: the slot belongs to a block still cached (no drop since it was
                    // recorded) on this same guest page, and no translated code is running.
                    unsafe { chain(slot, block.chain) };
                }
            }
            first = false;
            self.stats.entries += 1;
            ctx.left = (left - done) as i64;
            ctx.exit_slot = std::ptr::null_mut();
            ctx.jkey = jkey;
            ctx.jmask = self.jmask;
            ctx.jfold = jcache_fold(self.jmask);
            let result = if self.verify {
                // SAFETY: as below.
                let (result, verdict) =
                    unsafe { crate::verify::run_both(hart, self.enter, block.chain, &mut ctx) };
                match verdict {
                    Verdict::Same => self.stats.verified += 1,
                    Verdict::Unverifiable => self.stats.unverified += 1,
                    Verdict::Differs(d) => {
                        self.divergence.get_or_insert(d);
                    }
                }
                result
            } else {
                let state = hart.state_ptr();
                ctx.hart = hart;
                // SAFETY: `entry` is a live translation (drops were applied just above, after
                // the fetch that could have evicted code) of the page at `pc`, built for this
                // state layout and context; the hart and bus outlive the call and are only
                // reached through the context while it runs.
                match unsafe { (self.enter)(state, &mut ctx, block.chain) } {
                    0 => Ok(()),
                    _ => Err(ctx.trap),
                }
            };
            self.stats.slow_accesses += std::mem::take(&mut ctx.slow_accesses);
            self.stats.stepped += std::mem::take(&mut ctx.stepped);
            if let Err(t) = result {
                return Some(Err(t));
            }
            if !ctx.exit_slot.is_null() {
                chain_from = Some((ctx.exit_slot, self.epoch));
            }
            // Any request (a store to code or MMIO) goes back to the hart's outer loop.
            if hart.state().requests() != 0 || hart.instret() - start >= left {
                return Some(Ok(()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn untranslated() -> Block {
        Block {
            chain: std::ptr::null(),
            insns: 0,
        }
    }

    #[test]
    fn a_block_is_found_once_translated_and_not_after_a_flush() {
        let mut jit = Jit::with_code_bytes(EngineConfig::MIN_CODE_BYTES).expect("code memory");
        let k = key(0x7f00_0000_1000, 0x8000_0000, Priv::S, 8);
        assert!(jit.find(k).is_none());
        jit.blocks.insert(k, untranslated());
        assert!(jit.find(k).is_some());
        assert!(jit.find(k).is_some(), "again, from the fast table");
        let other = key(0x7f00_0000_1010, 0x8000_0010, Priv::S, 8);
        assert!(jit.find(other).is_none(), "another block of the same page");
        jit.flush();
        assert!(jit.find(k).is_none());
    }

    #[test]
    fn the_hart_hands_over_blocks_at_the_configured_start() {
        let jit = Jit::with_code_bytes(EngineConfig::MIN_CODE_BYTES).expect("code memory");
        assert_eq!(jit.hot(), 1, "at once, unless configured");
        assert_eq!(jit.translating_after(64).hot(), 64);
    }

    #[test]
    fn a_crowded_block_is_translated_at_its_nth_start_and_the_count_is_bounded() {
        let mut jit = Jit::with_code_bytes(EngineConfig::MIN_CODE_BYTES)
            .expect("code memory")
            .translating_after(3);
        let k = key(0x7f00_0000_3000, 0x2000, Priv::S, 8);
        assert!(!jit.crowded_start(k));
        assert!(!jit.crowded_start(k));
        assert!(jit.crowded_start(k), "the 3rd start");
        assert!(
            jit.crowded.is_empty(),
            "a block turned hot is no longer counted"
        );
        for n in 0..MAX_CROWDED as u64 + 10 {
            jit.crowded_start(key(0x7f00_0001_0000 + 2 * n, 0x1_0000 + 2 * n, Priv::S, 8));
        }
        assert!(jit.crowded.len() <= MAX_CROWDED);
    }

    #[test]
    fn the_jump_cache_grows_with_the_translations_to_its_full_size() {
        let mut mask = JCACHE_FIRST_ENTRIES as u32 - 1;
        let mut sizes = vec![mask + 1];
        for blocks in 0..100_000 {
            let grown = jcache_mask_for(blocks, mask);
            if grown != mask {
                assert!(2 * blocks > mask as usize + 1, "{blocks} blocks");
                sizes.push(grown + 1);
            }
            mask = grown;
        }
        assert_eq!(sizes, [1024, 4096, 16384]);
        assert_eq!(JCACHE_ENTRIES, 16384);
    }

    #[test]
    fn a_new_jit_starts_with_empty_tables() {
        let jit = Jit::new().expect("code memory");
        for prv in [Priv::U, Priv::S, Priv::M] {
            for mode in [0, 8, 9, 10] {
                let jkey = jit.jkey(prv, mode);
                assert!(
                    jit.jcache.iter().all(|e| e.key != jkey),
                    "no entry is valid"
                );
            }
        }
        for host_pc in [0x1000u64, 0x7f00_0000_0000] {
            let k = key(host_pc, 0, Priv::U, 0);
            assert!(jit.fast.iter().all(|(slot, _)| *slot != k));
        }
        assert!(jit.fast.iter().all(|(_, b)| b.chain.is_null()));
    }
}
