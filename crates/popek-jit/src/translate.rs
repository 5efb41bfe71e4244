//! Translation of one RISC-V block into x86-64 code.
//!
//! A block is a superblock: translation goes on past forward branches within the page (the
//! fall-through path, which static prediction expects; the taken side jumps ahead within the
//! block when its target is further down the path, else leaves) and along jumps within the
//! page, up to a backward branch, any other jump, [`MAX_BLOCK_INSNS`] or the page's end. A
//! branch back to the block's start loops inside it.
//!
//! The engine enters generated code through a shared entry ([`Trampolines`]),
//! `extern "sysv64" fn(state: *mut HartState, ctx: *mut Ctx, block) -> u64`, which returns 0
//! when the blocks ran to their end (or stopped after a store that set a request bit) and 1
//! when an instruction faulted (the trap is in the context). Either way `pc` and `instret` in
//! the state are exact on return; while blocks run (chained ones included), retired
//! instructions are counted only in `r13`, which starts at the context's `left` and counts
//! down, and the shared exit adds what was retired to `instret`. `rbx` holds the state's
//! address plus [`STATE_BIAS`] (so every integer register is a one-byte displacement away)
//! and `r12` the context's. Guest registers live in the state, except the most used
//! ones, pinned in host registers across chained blocks; a block keeps the ones it uses most
//! among the rest in host registers too (FP ones in `xmm2`-`xmm9`), and stores the changed
//! ones back before it exits or calls out (see `regs`). Within an instruction `rax`,
//! `rcx`, `rdx`, `rsi`, `rdi`, `xmm0` and `xmm1` are scratch. Slow paths (helper calls) are
//! placed after the block's straight-line code.

// dynasm's dynamic registers (`Rq(n)`) expand to `n.into()`, which is a `u8` already.
#![allow(clippy::useless_conversion)]

use dynasmrt::{dynasm, x64::X64Relocation, DynamicLabel, DynasmApi, DynasmLabelApi, VecAssembler};
use popek_cpu::csr::mstatus;
use popek_cpu::decode::{decode, raw_in_page, Insn, Op};
use popek_cpu::engine::{steppable_insn, DATA_TLB_ENTRY_BYTES};
use popek_cpu::HartState;

mod alu;
mod amo;
mod fcsr;
mod fp;
mod indexed;
mod regs;
mod run;

use regs::{
    ld, ldf_bits, spill, st, st_rax, stf_bits, Cache, Operand, Sync, RAX, RCX, RDI, RDX, RSI,
};

/// Most guest instructions in one block: bounds translation latency and budget overshoot.
pub(crate) const MAX_BLOCK_INSNS: usize = 64;

/// Addresses and offsets translated code is built against.
#[derive(Clone, Copy)]
pub(crate) struct Env {
    /// `load_helper` instances by (size index 0..4 for 1/2/4/8 bytes, signed).
    pub load: [[usize; 2]; 4],
    /// `store_helper` instances by size index.
    pub store: [usize; 4],
    /// Division helpers: div, divu, rem, remu, divw, divuw, remw, remuw.
    pub div: [usize; 8],
    /// `step_helper`: one steppable instruction through the interpreter.
    pub step: usize,
    /// `straddle_helper`: the instruction straddling a page end, through the interpreter.
    pub straddle: usize,
    /// Offset in the context of the read-TLB pointer.
    pub ctx_tlb_read: i32,
    /// Offset in the context of the write-TLB pointer.
    pub ctx_tlb_write: i32,
    /// Offset in the context of the instructions left before chained blocks must return (i64).
    pub ctx_left: i32,
    /// Offset in the context of the chain slot the last block left through (or 0).
    pub ctx_exit_slot: i32,
    /// Offset in the context of the jump cache's address.
    pub ctx_jcache: i32,
    /// Offset of the jump cache's current slot mask in the context.
    pub ctx_jmask: i32,
    /// Offset of its [`jcache_fold`] in the context.
    pub ctx_jfold: i32,
    /// Offset in the context of the key jump-cache entries must carry to be used.
    pub ctx_jkey: i32,
    /// Offset in the context of a 4-byte scratch word (for `stmxcsr`/`ldmxcsr`).
    pub ctx_scratch: i32,
    /// The host has FMA3 (`vfmadd…sd`), so fused multiply-adds may run natively.
    pub fma: bool,
    /// Address of the shared exit code ([`Trampolines::epilogue`]) blocks jump to with their
    /// result in `eax` (0 when the trampolines are not assembled yet).
    pub epilogue: usize,
    /// Address of the jump cache's second way ([`Trampolines::second_way`]).
    pub second_way: usize,
    /// The addend (host minus guest virtual address) data TLB entries are expected to hold,
    /// if one is: a process VM's flat address space has one for all of them. Loads and stores
    /// then use it without waiting for the entry's, and check the entry's beside the tag.
    pub data_addend: Option<u64>,
    /// The addend every data TLB entry holds, when the hart requires one
    /// ([`popek_cpu::Hart::require_data_addend`]): loads and stores use it without a check.
    pub sole_addend: Option<u64>,
    /// With `sole_addend`: the host checks loads below `1 << bits` itself
    /// ([`popek_cpu::Hart::let_host_check_reads`]), so a load reads the host directly after
    /// checking only that its address is below the span, and a host fault on it resumes at its
    /// slow path (see `faults`).
    pub host_read_bits: Option<u8>,
    /// The same for stores ([`popek_cpu::Hart::let_host_check_writes`]).
    pub host_write_bits: Option<u8>,
    /// Guest-physical RAM (`base`, bytes) when the block's loads can skip the TLB: it runs in
    /// M-mode without `mstatus.MPRV`, where a load from RAM always
    /// succeeds and loads nothing else at `data_addend`. Such loads check the address against
    /// the RAM's bounds instead (stores keep the TLB: it write-protects pages with code).
    pub machine_ram: Option<(u64, u64)>,
    /// Entries of the hart's data TLBs ([`popek_cpu::Hart::data_tlb_entries`]).
    pub data_tlb_entries: usize,
}

impl Env {
    /// For a load (a store if `write`): the addend and the span bits when the host checks the
    /// access itself ([`Env::host_read_bits`], [`Env::host_write_bits`]), so it is a direct
    /// one; `None` when it goes through the TLB.
    pub fn host_checked(&self, write: bool) -> Option<(u64, u8)> {
        let bits = if write {
            self.host_write_bits
        } else {
            self.host_read_bits
        };
        Some((self.sole_addend?, bits?))
    }

    /// The displacement `addend + offset` when it fits an instruction's 32 bits, so a direct
    /// access through a host register holding its base register is one instruction with the
    /// addend folded in (a process VM whose memory the host put below 2 GiB, see
    /// `popek_linux::mm`); `None` when the access must add the addend from a register.
    pub fn folded(&self, addend: u64, offset: i64) -> Option<i32> {
        i32::try_from(i64::try_from(addend).ok()?.checked_add(offset)?).ok()
    }
}

/// Entries of each way of the jump cache at its largest (a power of two): generated code finds
/// the translation of an indirect or cross-page jump target there without returning to the
/// engine. 16,384 (512 KiB of address space per way and hart, backed only where used): sqlite3
/// inserting a row jumps to more distinct targets than 4,096 entries hold, and went back to
/// the engine every 170 guest instructions (12 million times inserting 100,000 rows); with
/// 16,384, 2-4 million times.
pub(crate) const JCACHE_ENTRIES: usize = 16384;

/// Entries of each way a JIT's jump cache starts with: it grows as the JIT translates (see
/// `Jit::jmask`). Slots are spread over the whole table, so a few hundred targets touched
/// most of its 1 MiB, each host page faulting twice (read, then written): 300 page faults, a
/// sixtieth of a restored guest's short command, where a table of this size takes 8 pages
/// a way.
pub(crate) const JCACHE_FIRST_ENTRIES: usize = 1024;

/// One jump-cache entry: guest virtual pc, key (see `Jit`), chain entry of its translation.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(crate) struct JEntry {
    pub vpc: u64,
    pub key: u64,
    pub entry: *const u8,
}

/// Bits of a jump-cache slot number.
const JCACHE_BITS: u32 = JCACHE_ENTRIES.trailing_zeros();

/// The multiplier of [`jcache_second_slot`]'s hash: 2^32 over the golden ratio, odd.
const JCACHE_MUL: u32 = 0x9e37_79b1;

/// Byte offset of the jump cache's second way (entries `JCACHE_ENTRIES..`) in the table.
const JCACHE_WAY2: i32 = (JCACHE_ENTRIES * std::mem::size_of::<JEntry>()) as i32;

/// The jump-cache slot of guest virtual address `vpc` in the first way, whose slots are
/// `0..=mask`: its bits from 1 up, with the next as many bits (from [`jcache_fold`] up)
/// folded onto them. Indexed by the low bits alone, functions at the same offset modulo the
/// cache's span took turns at one slot: in lua5.4 (with 4,096 entries, so 8 KiB), two such
/// pairs called each other in a loop and sent 7 million jumps back to the engine.
pub(crate) fn jcache_slot(vpc: u64, mask: u32) -> usize {
    ((vpc >> 1) ^ (vpc >> jcache_fold(mask))) as usize & mask as usize
}

/// How far [`jcache_slot`] shifts the address bits it folds onto the low ones, for slots
/// `0..=mask`: past the bits the slot takes from 1 up.
pub(crate) fn jcache_fold(mask: u32) -> u32 {
    1 + mask.count_ones()
}

/// The slot of `vpc` in the jump cache's second way (slots `0..=mask`), which holds what the
/// first way's slot held before its newest entry: the top bits of `vpc`'s low 32 bits (less
/// bit 0) times [`JCACHE_MUL`], masked. A hash of another kind than the first way's, so two
/// targets that share a slot there (the fold is linear: addresses 0x40010 apart do) rarely
/// share one here, and take turns at the first way's slot without leaving translated code.
/// With one way, nine such pairs in sqlite3 took turns 200,000 times each, and 2 million
/// jumps went back to the engine.
pub(crate) fn jcache_second_slot(vpc: u64, mask: u32) -> usize {
    ((vpc as u32 >> 1).wrapping_mul(JCACHE_MUL) >> (32 - JCACHE_BITS) & mask) as usize
}

#[cfg(test)]
mod jcache_tests {
    use super::*;

    /// The mask of a full-size way.
    const FULL: u32 = JCACHE_ENTRIES as u32 - 1;

    #[test]
    fn targets_a_span_apart_take_different_slots() {
        let span = 2 * JCACHE_ENTRIES as u64;
        for base in [0x1100u64, 0x2a_aaab_6006, 0x3f_bf70_48d4] {
            for k in 1..8 {
                assert_ne!(
                    jcache_slot(base, FULL),
                    jcache_slot(base + k * span, FULL),
                    "{base:#x} + {k} spans"
                );
            }
            assert_ne!(jcache_slot(base, FULL), jcache_slot(base + 2, FULL));
        }
    }

    /// Pairs of jump targets in sqlite3 that took turns at one slot of the first way (2
    /// million jumps went back to the engine for them) have different slots in the second.
    #[test]
    fn targets_sharing_a_first_slot_have_different_second_ones() {
        let pairs = [
            (0x3f_bf6a_cfec, 0x3f_bf6e_cffc),
            (0x3f_bf65_8d30, 0x3f_bf6e_8d1c),
            (0x3f_bf69_fe6e, 0x3f_bf6b_7e64),
            (0x3f_bf6b_d1ec, 0x3f_bf6e_51fa),
            (0x2a_aaab_7044, 0x3f_bf6d_a75e),
            (0x3f_bf64_8930, 0x3f_bf65_8934),
        ];
        for (a, b) in pairs {
            assert_eq!(
                jcache_slot(a, FULL),
                jcache_slot(b, FULL),
                "{a:#x} and {b:#x} in the first way"
            );
            assert_ne!(
                jcache_second_slot(a, FULL),
                jcache_second_slot(b, FULL),
                "{a:#x} and {b:#x} in the second way"
            );
        }
    }

    /// Both ways spread consecutive targets over their slots: 64 Ki 4-byte-aligned targets
    /// (256 KiB of code) use every slot of the first way 4 times, and nearly every slot of the
    /// second a few times.
    #[test]
    fn consecutive_targets_spread_over_all_slots() {
        for (way, slot) in [
            (1, jcache_slot as fn(u64, u32) -> usize),
            (2, jcache_second_slot),
        ] {
            // Every size the cache takes as it grows.
            for n in [
                JCACHE_FIRST_ENTRIES,
                4 * JCACHE_FIRST_ENTRIES,
                JCACHE_ENTRIES,
            ] {
                let mut uses = vec![0u32; n];
                for k in 0..4 * n as u64 {
                    uses[slot(0x2a_aaaa_a000 + 4 * k, n as u32 - 1)] += 1;
                }
                let most = *uses.iter().max().unwrap();
                let empty = uses.iter().filter(|&&u| u == 0).count();
                assert!(
                    most <= 8 && empty < n / 50,
                    "way {way}, {n} entries: most {most}, empty {empty}"
                );
            }
        }
    }
}

/// Decoded instructions that generated code points at (one box each, so addresses stay put
/// while the arena grows); emptied together with the code buffer.
#[derive(Default)]
#[allow(clippy::vec_box)]
pub(crate) struct InsnArena(Vec<Box<Insn>>);

impl InsnArena {
    /// Keep `i` until [`InsnArena::clear`]; its address.
    fn keep(&mut self, i: Insn) -> *const Insn {
        let b = Box::new(i);
        let p = &*b as *const Insn;
        self.0.push(b);
        p
    }

    /// Free everything (no code may refer to it any more).
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// A translated block: host code assembled for a given address, and how many guest
/// instructions it covers (0: the first instruction is not translatable). The engine enters
/// it through [`Trampolines::enter`]; chained blocks jump to its start.
pub(crate) struct Translated {
    pub code: Vec<u8>,
    pub insns: u32,
    /// Offsets in `code` of the direct loads and stores (see [`Env::host_read_bits`]) and of
    /// their slow paths, in increasing order.
    pub direct_sites: Vec<(usize, usize)>,
}

/// The code every block shares, assembled once at the front of the code buffer: entering
/// translated code from the engine and returning to it. Each block carried its own copy
/// before (140 of a typical block's 700 bytes).
pub(crate) struct Trampolines {
    pub code: Vec<u8>,
    /// Offset in `code` of the entry, an `extern "sysv64" fn(state, ctx, block) -> u64`: saves
    /// the engine's registers, sets up the context registers and the pinned guest registers,
    /// and jumps to `block`.
    pub enter: usize,
    /// Offset in `code` of the exit blocks jump to with their result in `eax`: stores the
    /// pinned guest registers, brings `instret` up to date and returns to the engine.
    pub epilogue: usize,
    /// Offset in `code` of the jump cache's second way, where a block's exit goes with the
    /// guest address in `rax` when the first way's slot holds another entry: the translation
    /// if [`jcache_second_slot`]'s entry has it, else back to the engine.
    pub second_way: usize,
}

/// Assemble the [`Trampolines`] for address `at`.
pub(crate) fn trampolines(at: usize, env: &Env) -> Trampolines {
    let mut ops = Asm::new(at);
    let pinned = Cache::pinned_only();
    let enter = ops.offset().0;
    // Six pushes and the return address: 8 more bytes keep calls 16-byte aligned.
    dynasm!(ops
        ; .arch x64
        ; push rbx
        ; push r12
        ; push r13
        ; push rbp
        ; push r14
        ; push r15
        ; sub rsp, 8
        ; lea rbx, [rdi + STATE_BIAS]
        ; mov r12, rsi
        ; mov r13, [r12 + env.ctx_left]
    );
    pinned.load(&mut ops, Sync::Pinned);
    dynasm!(ops ; .arch x64 ; jmp rdx ; .align 16);
    let epilogue = ops.offset().0;
    spill(&mut ops, &pinned, Sync::Pinned);
    dynasm!(ops
        ; .arch x64
        // Generated code counts retired instructions only in r13: instret catches up here.
        ; mov rcx, [r12 + env.ctx_left]
        ; sub rcx, r13
        ; add [rbx + S.instret], rcx
        ; add rsp, 8
        ; pop r15
        ; pop r14
        ; pop rbp
        ; pop r13
        ; pop r12
        ; pop rbx
        ; ret
        ; .align 16
    );
    let second_way = ops.offset().0;
    let shift = std::mem::size_of::<JEntry>().trailing_zeros() as i8;
    let back = ops.new_dynamic_label();
    dynasm!(ops
        ; .arch x64
        // rcx = jcache_second_slot(rax) * entry bytes.
        ; mov ecx, eax
        ; shr ecx, 1
        ; imul ecx, ecx, JCACHE_MUL as i32
        ; shr ecx, (32 - JCACHE_BITS) as i8
        ; and ecx, [r12 + env.ctx_jmask]
        ; shl rcx, shift
        ; add rcx, [r12 + env.ctx_jcache]
        ; cmp rax, [rcx + JCACHE_WAY2]
        ; jne =>back
        ; mov rdx, [r12 + env.ctx_jkey]
        ; cmp rdx, [rcx + JCACHE_WAY2 + 8]
        ; jne =>back
        ; jmp QWORD [rcx + JCACHE_WAY2 + 16]
        ; =>back
        // The target, for the engine (see `exit_lookup`).
        ; mov [rbx + S.pc], rax
        ; xor eax, eax
        ; jmp extern (at + epilogue)
    );
    let code = ops
        .finalize()
        .expect("the trampolines have no unresolved labels");
    Trampolines {
        code,
        enter,
        epilogue,
        second_way,
    }
}

type Asm = VecAssembler<X64Relocation>;

const S: StateOffsets = StateOffsets::new();

/// Offsets as `i32` displacements.
struct StateOffsets {
    x: i32,
    f: i32,
    mstatus: i32,
    pc: i32,
    instret: i32,
    requests: i32,
    frm: i32,
    fflags: i32,
}

/// What `rbx` holds beyond the state's address: with the integer registers at the state's
/// start, `x0`..`x31` are at -128..120 from `rbx`, each reached with a one-byte displacement
/// (an access is 3 bytes shorter than with four: a tenth of a typical block's code).
pub(crate) const STATE_BIAS: i32 = 128;

impl StateOffsets {
    /// The state's offsets as displacements from `rbx` (see [`STATE_BIAS`]).
    const fn new() -> StateOffsets {
        let o = HartState::OFFSETS;
        let b = STATE_BIAS;
        StateOffsets {
            x: o.x as i32 - b,
            f: o.f as i32 - b,
            mstatus: o.mstatus as i32 - b,
            pc: o.pc as i32 - b,
            instret: o.instret as i32 - b,
            requests: o.requests as i32 - b,
            frm: o.frm as i32 - b,
            fflags: o.fflags as i32 - b,
        }
    }
}

// Generated code reaches every integer register with a one-byte displacement (`[BYTE rbx + ..]`
// encodes only the low byte of the offset).
const _: () = assert!(S.x >= -128 && S.x + 8 * 31 <= 127);

/// Displacement of integer register `r` (< 32) from `rbx`: one byte (see [`STATE_BIAS`]).
fn xoff(r: u8) -> i8 {
    debug_assert!(r < 32);
    (S.x + 8 * (r & 31) as i32) as i8
}

fn foff(r: u8) -> i32 {
    S.f + 8 * r as i32
}

/// F/D instructions: go to `off` when `mstatus.FS` is off (where the caller runs the
/// instruction through the step helper, which raises the illegal-instruction trap).
///
/// Once one check passed, `mstatus.FS` stays on until the step helper runs (nothing else in a
/// block writes it): later checks are left out.
fn emit_fs_check(ops: &mut Asm, stubs: &mut Stubs, off: DynamicLabel) {
    if stubs.fs_on {
        return;
    }
    stubs.fs_on = true;
    dynasm!(ops
        ; .arch x64
        ; test DWORD [rbx + S.mstatus], mstatus::FS as i32
        ; jz =>off
    );
}

/// The target of [`emit_fs_check`] for F/D loads and stores, a cold path back to just after
/// their code (emitted now): `i` through the step helper.
fn emit_fs_off(ops: &mut Asm, off: DynamicLabel, i: &Insn, at: At, stubs: &mut Stubs) {
    let after = ops.new_dynamic_label();
    dynasm!(ops ; .arch x64 ; =>after);
    step_on_slow_path(stubs, *i, at, off, after);
}

/// A cold path for `i` (at `at`), emitted after the block: at `slow` the step helper runs it
/// (the interpreter's code, which raises its traps), then on at `done`.
fn step_on_slow_path(stubs: &mut Stubs, i: Insn, at: At, slow: DynamicLabel, done: DynamicLabel) {
    stubs.cold.push(Box::new(
        move |ops: &mut Asm, env: &Env, stubs: &mut Stubs| {
            dynasm!(ops ; .arch x64 ; =>slow);
            emit_step(ops, i, at, env, stubs);
            dynasm!(ops ; .arch x64 ; jmp =>done);
        },
    ));
}

/// Read the instruction at offset `off` of the guest page at `page` (`None` if it is a 4-byte
/// instruction straddling the page end: the interpreter handles those).
///
/// # Safety
/// `page` must point at 4096 readable bytes and `off` < 4096.
unsafe fn fetch(page: *const u8, off: usize) -> Option<(Insn, u32)> {
    // SAFETY: per this function's contract.
    let raw = unsafe { raw_in_page(page, off) }?;
    Some((decode(raw), raw))
}

/// How an instruction ends or continues the block.
enum Kind {
    /// Falls through to the next instruction.
    Straight,
    /// Ends the block (branch or jump): the code for it includes the exits.
    Terminal,
}

/// Where an instruction is: its bits (the low 16 for a compressed one), guest pc, and place
/// in its block (the instructions before it retire if it faults).
#[derive(Clone, Copy)]
struct At {
    raw: u32,
    pc: u64,
    n: u32,
}

/// Direct accesses (see [`Env::host_read_bits`]) whose span check a later access through the
/// same base register can rely on: for each guest register, the offset of an access through
/// it that passed the check since the register was last written, and the span's bits.
///
/// A passed check at offset `c` proves the register's value `x` has `x + c` below the span
/// (an access that fails it takes its helper, which faults: the guest has no memory above the
/// span, so only a passed check leads on). An access at `x + d` with `d` in `c..c + 4096`
/// then lies below the span or in the host page past it, which faults: it needs no check of
/// its own, only its slow path for a host fault, as every direct access has.
#[derive(Clone, Copy, Default)]
pub(crate) struct Checked([Option<(i32, u8)>; 32]);

impl Checked {
    /// Whether the bytes `lo..hi` off register `reg` lie in the window of a check it passed
    /// with span bits `bits`.
    pub(crate) fn covers(&self, reg: u8, (lo, hi): (i64, i64), bits: u8) -> bool {
        matches!(self.0[reg as usize], Some((c, b)) if b == bits && c as i64 <= lo && hi <= c as i64 + 4096)
    }

    /// An access at offset `at` off `reg` passed the check of span bits `bits`.
    pub(crate) fn passed(&mut self, reg: u8, at: i32, bits: u8) {
        self.0[reg as usize] = Some((at, bits));
    }

    /// Register `reg` was written: its checks no longer hold.
    pub(crate) fn written(&mut self, reg: u8) {
        self.0[reg as usize] = None;
    }
}

/// Pending out-of-line exits: (label, pc to store, instructions retired).
struct Stubs<'a> {
    /// Decoded instructions the generated code passes to the step helper (kept alive by the
    /// engine until its code buffer is emptied).
    insns: &'a mut InsnArena,
    /// Guest virtual page of the block: exits to it may be chained.
    page: u64,
    /// Guest virtual address of the block's first instruction.
    start: u64,
    env_exit_slot: i32,
    env_jcache: i32,
    env_jmask: i32,
    env_jfold: i32,
    env_jkey: i32,
    fault: Vec<(DynamicLabel, u64, u32)>,
    leave: Vec<(DynamicLabel, u64, u32)>,
    /// Offsets of direct loads and stores, with their slow paths (see
    /// [`Translated::direct_sites`]).
    direct: Vec<(usize, DynamicLabel)>,
    /// Guest registers this block keeps in host registers.
    cache: Cache,
    /// Slow paths, emitted after the block's straight-line code so the fast paths fall
    /// through.
    cold: Vec<ColdPath>,
    /// At this point of the block `mstatus.FS` is known to be on (a check passed).
    fs_on: bool,
    /// At this point of the block `mstatus.FS` is known to be dirty (the block set it).
    fs_dirty: bool,
    /// Base registers whose span check still holds at this point of the block.
    checked: Checked,
    /// Taken sides of forward branches the block went on past: (label the branch jumps to,
    /// target, instructions retired once the branch has).
    sides: Vec<(DynamicLabel, u64, u32)>,
    /// Targets of those branches: (guest address, label, instructions the block's straight
    /// path has retired on reaching it, if it did).
    targets: Vec<(u64, DynamicLabel, Option<u32>)>,
    /// The block's shared labels (dynamic ones: dynasm finds a named label by hashing its
    /// name at every use, a twentieth of translation time).
    labels: Labels,
}

/// Places every block has once: its loop-back point past the entry loads, and the jumps to
/// the engine's shared code.
#[derive(Clone, Copy)]
struct Labels {
    /// Past the loads of cached registers at the entry: where a loop to the block's start goes.
    again: DynamicLabel,
    /// Look a target up in the jump cache's second way.
    second_way: DynamicLabel,
    /// Return to the engine with status 0 (`pc` stored).
    leave: DynamicLabel,
    /// Store `rax` as `pc`, then as `leave`.
    leave_rax: DynamicLabel,
    /// Return to the engine with the status in `eax`.
    epilogue: DynamicLabel,
}

/// Code emitted after the block (see [`Stubs::cold`]).
type ColdPath = Box<dyn FnOnce(&mut Asm, &Env, &mut Stubs<'_>)>;

/// Translate the block starting at offset `off` of the guest page at host address `page`,
/// whose guest virtual address is `pc`, into code to be placed at `at`.
///
/// # Safety
/// `page` must point at the 4096 bytes of a guest RAM page.
pub(crate) unsafe fn translate(
    page: *const u8,
    pc: u64,
    at: usize,
    env: &Env,
    insns: &mut InsnArena,
) -> Translated {
    // Sized for a typical block, so assembling rarely grows a buffer (growing and copying
    // was a tenth of translation time).
    let mut ops = Asm::new_with_capacity(at, 4096, 0, 4, 64, 16, 64);
    let mut stubs = Stubs {
        insns,
        page: pc & !0xfff,
        start: pc,
        env_exit_slot: env.ctx_exit_slot,
        env_jcache: env.ctx_jcache,
        env_jmask: env.ctx_jmask,
        env_jfold: env.ctx_jfold,
        env_jkey: env.ctx_jkey,
        fault: Vec::new(),
        leave: Vec::new(),
        direct: Vec::new(),
        // SAFETY: the caller's page is 4096 bytes and the offset < 4096.
        cache: unsafe { Cache::plan(page, (pc & 0xfff) as usize, MAX_BLOCK_INSNS) },
        cold: Vec::new(),
        fs_on: false,
        fs_dirty: false,
        checked: Checked::default(),
        sides: Vec::new(),
        targets: Vec::new(),
        labels: Labels {
            again: ops.new_dynamic_label(),
            second_way: ops.new_dynamic_label(),
            leave: ops.new_dynamic_label(),
            leave_rax: ops.new_dynamic_label(),
            epilogue: ops.new_dynamic_label(),
        },
    };
    // Entered from `Trampolines::enter` or a chained block, with the pinned registers loaded.
    stubs.cache.load(&mut ops, Sync::Block);
    dynasm!(ops ; .arch x64 ; =>stubs.labels.again);
    let mut cur = pc;
    let mut n = 0u32;
    let mut terminated = false;
    while (n as usize) < MAX_BLOCK_INSNS {
        let off = (cur & 0xfff) as usize;
        // SAFETY: the caller's page is 4096 bytes and off < 4096.
        let Some((i, raw)) = (unsafe { fetch(page, off) }) else {
            if n == 0 {
                // A block of the one instruction straddling the page's end.
                emit_straddling(&mut ops, &mut stubs, env, cur);
                return finish(ops, stubs, env, 1);
            }
            break;
        };
        reach_target(&mut ops, &mut stubs, cur, n);
        let at = At { raw, pc: cur, n };
        // Instructions emitted as one (an indexed load, a run of accesses through one base):
        // how many, and the address after them.
        let room = MAX_BLOCK_INSNS - n as usize;
        // SAFETY: as for `fetch`.
        let fused = match unsafe { indexed::find(page, off, &i, at, room, env) } {
            Some(ix) => {
                indexed::emit(&mut ops, &ix, &mut stubs);
                Some((indexed::Indexed::LEN, ix.next_pc()))
            }
            None => {
                // SAFETY: as for `fetch`.
                let accesses = unsafe { run::find(page, off, &i, at, room) };
                accesses.last().map(|last| {
                    run::emit(&mut ops, &accesses, env, &mut stubs);
                    (accesses.len() as u32, last.next_pc())
                })
            }
        };
        if let Some((len, next)) = fused {
            n += len;
            cur = next;
            if cur & 0xfff == 0 {
                break;
            }
            continue;
        }
        if let Some(target) = followed_jump(&i, cur, pc) {
            // A `jal` to elsewhere on this page: the block goes on at its target (a loop
            // whose condition is reached by a jump becomes one block that loops to itself).
            if i.rd() != 0 {
                dynasm!(ops ; .arch x64 ; mov rax, QWORD cur.wrapping_add(i.byte_len() as u64) as i64);
                st_rax(&mut ops, &stubs.cache, i.rd());
                stubs.checked.written(i.rd());
            }
            n += 1;
            cur = target;
            continue;
        }
        let kind = if let Some(target) = side_exit(&i, cur) {
            // A forward branch within the page: the block goes on with its fall-through path,
            // and its taken side leaves (or jumps ahead, see `emit_sides`).
            emit_side_branch(&mut ops, &i, target, n + 1, &mut stubs);
            Some(Kind::Straight)
        } else if fp::native(&i, env) {
            fp::emit(&mut ops, &i, at, &mut stubs);
            Some(Kind::Straight)
        } else if amo::native(&i) {
            amo::emit(&mut ops, &i, at, env, &mut stubs);
            Some(Kind::Straight)
        } else if fcsr::native(&i) {
            fcsr::emit(&mut ops, &i, at, &mut stubs);
            Some(Kind::Straight)
        } else if steppable_insn(&i) && !matches!(i.op, Op::Flw | Op::Fld | Op::Fsw | Op::Fsd) {
            emit_step(&mut ops, i, at, env, &mut stubs);
            Some(Kind::Straight)
        } else {
            emit(&mut ops, &i, at, env, &mut stubs)
        };
        let Some(kind) = kind else {
            break;
        };
        stubs.checked.written(i.rd());
        n += 1;
        cur = cur.wrapping_add(i.byte_len() as u64);
        if let Kind::Terminal = kind {
            terminated = true;
            break;
        }
        if cur & 0xfff == 0 {
            break;
        }
    }
    if n == 0 {
        return Translated {
            code: Vec::new(),
            insns: 0,
            direct_sites: Vec::new(),
        };
    }
    if !terminated {
        exit_to(&mut ops, &stubs, cur, n);
    }
    finish(ops, stubs, env, n)
}

/// Complete a block of `n` instructions whose straight path has been emitted: its side
/// branches' taken sides, slow paths, fault and leave exits and the jumps to the engine's
/// shared code, then the code and where its direct accesses' slow paths are.
fn finish(mut ops: Asm, mut stubs: Stubs, env: &Env, n: u32) -> Translated {
    emit_sides(&mut ops, &mut stubs);
    for cold in std::mem::take(&mut stubs.cold) {
        cold(&mut ops, env, &mut stubs);
    }
    for (label, at_pc, k) in std::mem::take(&mut stubs.fault) {
        dynasm!(ops ; .arch x64 ; =>label);
        exit(&mut ops, &stubs, at_pc, k, 1);
    }
    for (label, next, k) in std::mem::take(&mut stubs.leave) {
        dynasm!(ops ; .arch x64 ; =>label);
        exit(&mut ops, &stubs, next, k, 0);
    }
    debug_assert_ne!(
        env.epilogue, 0,
        "blocks are assembled after the trampolines"
    );
    let l = stubs.labels;
    dynasm!(ops
        ; .arch x64
        ; =>l.second_way
        ; jmp extern env.second_way
        ; =>l.leave_rax
        ; mov [rbx + S.pc], rax
        ; =>l.leave
        ; xor eax, eax
        ; =>l.epilogue
        ; jmp extern env.epilogue
    );
    let direct_sites = stubs
        .direct
        .iter()
        .map(|&(load, slow)| {
            let slow = ops.labels().resolve_dynamic(slow);
            (load, slow.expect("every slow path is emitted").0)
        })
        .collect();
    let code = ops.finalize().expect("the JIT's own labels always resolve");
    Translated {
        code,
        insns: n,
        direct_sites,
    }
}

/// The target of `i` at `pc`, in a block starting at `start`, if translation follows it
/// there rather than ending the block: `i` is a `jal` to another address on the same guest
/// page (a block never spans two pages: code is dropped page by page). A jump back to the
/// block's start ends the block, as a loop to itself (see [`exit_to`]).
pub(crate) fn followed_jump(i: &Insn, pc: u64, start: u64) -> Option<u64> {
    if i.op != Op::Jal {
        return None;
    }
    let target = pc.wrapping_add(i.imm as i64 as u64);
    (target & !0xfff == start & !0xfff && target != start).then_some(target)
}

/// Farthest forward, in bytes, a branch the block goes on past may jump: a short skip (an
/// if-then, a loop's `continue`) usually lands further down the block's own path, where the
/// taken side joins it. Going on past every forward branch doubled the code a Debian boot
/// translated (1.6 to 2.9 million instructions) for the cold paths behind early exits; with
/// 128 bytes it translates 2.1 million, and loops keep their bodies in one block.
const MAX_SIDE_SKIP: i32 = 128;

/// The target of `i` at `pc` if it is a conditional branch forward within `pc`'s page, at most
/// [`MAX_SIDE_SKIP`] ahead: the block goes on past it (its fall-through path, which static
/// prediction expects) and the taken side is a side exit (a superblock). A backward branch
/// ends the block: it usually closes a loop, whose fall-through is the loop's exit.
pub(crate) fn side_exit(i: &Insn, pc: u64) -> Option<u64> {
    use Op::*;
    if !matches!(i.op, Beq | Bne | Blt | Bge | Bltu | Bgeu) || !(1..=MAX_SIDE_SKIP).contains(&i.imm)
    {
        return None;
    }
    let target = pc.wrapping_add(i.imm as i64 as u64);
    (target & !0xfff == pc & !0xfff).then_some(target)
}

/// A branch whose taken side goes to `target` after `retired` instructions, with the block
/// going on at its fall-through: the taken side jumps to a label [`emit_sides`] fills in.
fn emit_side_branch(ops: &mut Asm, i: &Insn, target: u64, retired: u32, stubs: &mut Stubs) {
    if target == stubs.start {
        // Forward to the block's start (reached through a jump back).
        emit_loop_back(ops, i, retired, stubs);
        return;
    }
    let side = ops.new_dynamic_label();
    emit_jcc(ops, i, &stubs.cache, side, true);
    if !stubs.targets.iter().any(|t| t.0 == target) {
        let label = ops.new_dynamic_label();
        stubs.targets.push((target, label, None));
    }
    stubs.sides.push((side, target, retired));
}

/// The block's straight path reaches `pc` after `n` instructions: if a side branch targets it,
/// this is where that branch can join the path. What the block knew of `mstatus.FS` and of
/// checked base registers there holds only for the straight path, so it is forgotten.
fn reach_target(ops: &mut Asm, stubs: &mut Stubs, pc: u64, n: u32) {
    if let Some(t) = stubs
        .targets
        .iter_mut()
        .find(|t| t.0 == pc && t.2.is_none())
    {
        dynasm!(ops ; .arch x64 ; =>t.1);
        t.2 = Some(n);
        stubs.fs_on = false;
        stubs.fs_dirty = false;
        stubs.checked = Checked::default();
    }
}

/// The taken sides of the block's side branches: a jump to their target's place further down
/// the block's straight path where it has one (the instructions skipped are not retired:
/// the count the path's exits subtract is corrected), else an exit to the target.
fn emit_sides(ops: &mut Asm, stubs: &mut Stubs) {
    for (side, target, retired) in std::mem::take(&mut stubs.sides) {
        dynasm!(ops ; .arch x64 ; =>side);
        let joined = stubs
            .targets
            .iter()
            .find(|t| t.0 == target)
            .and_then(|t| Some((t.1, t.2?)))
            .filter(|&(_, at)| at >= retired);
        match joined {
            Some((label, at)) => {
                if at > retired {
                    dynasm!(ops ; .arch x64 ; add r13, BYTE (at - retired) as i8);
                }
                dynasm!(ops ; .arch x64 ; jmp =>label);
            }
            None => exit_to(ops, stubs, target, retired),
        }
    }
}

// Exits count retired instructions with a one-byte immediate.
const _: () = assert!(MAX_BLOCK_INSNS <= 127);

/// Leave the block for the known guest address `next` after `retired` instructions. Within
/// the block's own page the exit is a chain slot: a `jmp` the engine later points at the
/// translation of `next` (while instructions are left); until then, and when the budget is
/// spent, it stores `pc`, records the slot in the context and returns.
fn exit_to(ops: &mut Asm, stubs: &Stubs, next: u64, retired: u32) {
    if next & !0xfff != stubs.page {
        dynasm!(ops ; .arch x64 ; mov rax, QWORD next as i64);
        exit_lookup(ops, stubs, retired);
        return;
    }
    let slot = ops.new_dynamic_label();
    let unchained = ops.new_dynamic_label();
    if next == stubs.start {
        // A loop to this block's own start: straight back, past the load of cached
        // registers (their host copies are the live values).
        dynasm!(ops
            ; .arch x64
            ; sub r13, BYTE retired as i8
            ; jg =>stubs.labels.again
        );
        spill(ops, &stubs.cache, Sync::Block);
        dynasm!(ops
            ; .arch x64
            ; mov rax, QWORD next as i64
            ; mov [rbx + S.pc], rax
            ; jmp =>stubs.labels.leave
        );
        return;
    }
    // The next block (chained or not) starts from the state in memory.
    spill(ops, &stubs.cache, Sync::Block);
    dynasm!(ops
        ; .arch x64
        ; sub r13, BYTE retired as i8
        ; jle =>unchained
        ; =>slot
        // Patched by the engine (see `Jit::chain`); rel32 form, so any target in the buffer fits.
        ; jmp DWORD =>unchained
        ; =>unchained
        ; mov rax, QWORD next as i64
        ; mov [rbx + S.pc], rax
        ; lea rax, [=>slot]
        ; mov [r12 + stubs.env_exit_slot], rax
        ; xor eax, eax
        ; jmp =>stubs.labels.epilogue
    );
}

/// Leave the block for the guest address in `rax` after `retired` instructions: jump straight
/// to its translation if the jump cache has one for the current context (and instructions are
/// left), else return to the engine. Only the way back to the engine stores `pc` (here, or in
/// the second way's miss): translated code, like a chained jump's target, does not read it.
fn exit_lookup(ops: &mut Asm, stubs: &Stubs, retired: u32) {
    spill(ops, &stubs.cache, Sync::Block);
    let shift = std::mem::size_of::<JEntry>().trailing_zeros() as i8;
    dynasm!(ops
        ; .arch x64
        ; sub r13, BYTE retired as i8
        ; jle =>stubs.labels.leave_rax
        // rcx = jcache_slot(rax, mask) * entry bytes.
        ; mov rdx, rax
        ; mov ecx, [r12 + stubs.env_jfold]
        ; shr rdx, cl
        ; mov rcx, rax
        ; shr rcx, 1
        ; xor ecx, edx
        ; and ecx, [r12 + stubs.env_jmask]
        ; shl rcx, shift
        ; add rcx, [r12 + stubs.env_jcache]
        ; cmp rax, [rcx]
        ; jne =>stubs.labels.second_way
        ; mov rdx, [r12 + stubs.env_jkey]
        ; cmp rdx, [rcx + 8]
        ; jne =>stubs.labels.second_way
        ; jmp QWORD [rcx + 16]
    );
}

/// Leave the block: `pc` = `next`, `instret` += `retired`, return `status`.
fn exit(ops: &mut Asm, stubs: &Stubs, next: u64, retired: u32, status: i32) {
    spill(ops, &stubs.cache, Sync::Block);
    dynasm!(ops
        ; .arch x64
        ; mov rax, QWORD next as i64
        ; mov [rbx + S.pc], rax
        ; sub r13, BYTE retired as i8
        ; mov eax, status
        ; jmp =>stubs.labels.epilogue
    );
}

/// `rdx` = the value a store writes: integer register `r`, or FP register `r` if `fp`.
fn ld_value(ops: &mut Asm, c: &Cache, r: u8, fp: bool) {
    if fp {
        ldf_bits(ops, c, RDX, r);
    } else {
        ld(ops, c, RDX, r);
    }
}

/// `f[rd]` = `rax`, and `mstatus.FS` dirty, as every write of an FP register leaves it.
fn st_f_rax(ops: &mut Asm, stubs: &mut Stubs, rd: u8) {
    stf_bits(ops, &stubs.cache, rd, RAX);
    set_fs_dirty(ops, stubs);
}

/// `mstatus.FS` = dirty.
///
/// Once set, it stays dirty until the step helper runs: later writes in the block leave it.
fn set_fs_dirty(ops: &mut Asm, stubs: &mut Stubs) {
    if stubs.fs_dirty {
        return;
    }
    stubs.fs_dirty = true;
    dynasm!(ops ; .arch x64 ; or QWORD [rbx + S.mstatus], mstatus::FS_DIRTY as i32);
}

/// Emit instruction `i` at `pc`, the `n`th of the block; `None` if it is not translated.
fn emit(ops: &mut Asm, i: &Insn, at: At, env: &Env, stubs: &mut Stubs) -> Option<Kind> {
    use Op::*;
    let At { pc, n, .. } = at;
    let c = stubs.cache;
    match i.op {
        Lb | Lh | Lw | Ld | Lbu | Lhu | Lwu | Flw | Fld => emit_load(ops, i, at, env, stubs),
        Sb | Sh | Sw | Sd | Fsw | Fsd => emit_store(ops, i, at, env, stubs),
        Beq | Bne | Blt | Bge | Bltu | Bgeu => {
            emit_branch(ops, i, pc, n, stubs);
            return Some(Kind::Terminal);
        }
        Jal => {
            if i.rd() != 0 {
                dynasm!(ops ; .arch x64 ; mov rax, QWORD pc.wrapping_add(i.byte_len() as u64) as i64);
                st_rax(ops, &c, i.rd());
            }
            exit_to(ops, stubs, pc.wrapping_add(i.imm as i64 as u64), n + 1);
            return Some(Kind::Terminal);
        }
        Jalr => {
            ld(ops, &c, RAX, i.rs1);
            if i.imm != 0 {
                dynasm!(ops ; .arch x64 ; add rax, i.imm);
            }
            dynasm!(ops ; .arch x64 ; and rax, -2);
            if i.rd() != 0 {
                dynasm!(ops
                    ; .arch x64
                    ; mov rcx, QWORD pc.wrapping_add(i.byte_len() as u64) as i64
                );
                st(ops, &c, i.rd(), RCX);
            }
            exit_lookup(ops, stubs, n + 1);
            return Some(Kind::Terminal);
        }
        Fence => {}
        Div | Divu | Rem | Remu | Divw | Divuw | Remw | Remuw => emit_div(ops, &c, i, env),
        _ => return alu::emit_alu(ops, &c, i, pc).then_some(Kind::Straight),
    }
    Some(Kind::Straight)
}

/// Division and remainder through helpers (x86 division traps where RISC-V defines results).
fn emit_div(ops: &mut Asm, c: &Cache, i: &Insn, env: &Env) {
    use Op::*;
    if i.rd() == 0 {
        return;
    }
    let idx = match i.op {
        Div => 0,
        Divu => 1,
        Rem => 2,
        Remu => 3,
        Divw => 4,
        Divuw => 5,
        Remw => 6,
        _ => 7,
    };
    ld(ops, c, RDI, i.rs1);
    ld(ops, c, RSI, i.rs2);
    spill(ops, c, Sync::CallerSaved);
    dynasm!(ops
        ; .arch x64
        ; mov rax, QWORD env.div[idx] as i64
        ; call rax
    );
    c.load(ops, Sync::CallerSaved);
    st_rax(ops, c, i.rd());
}

fn emit_branch(ops: &mut Asm, i: &Insn, pc: u64, n: u32, stubs: &Stubs) {
    let next = pc.wrapping_add(i.byte_len() as u64);
    let target = pc.wrapping_add(i.imm as i64 as u64);
    if target == stubs.start {
        emit_loop_back(ops, i, n + 1, stubs);
        exit_to(ops, stubs, next, n + 1);
        return;
    }
    let taken = ops.new_dynamic_label();
    emit_jcc(ops, i, &stubs.cache, taken, true);
    exit_to(ops, stubs, next, n + 1);
    dynasm!(ops ; .arch x64 ; =>taken);
    exit_to(ops, stubs, target, n + 1);
}

/// A branch `i` to the block's start, after `retired` instructions: the way round falls
/// through to the loop's jump back (one taken jump an iteration instead of two), and code
/// emitted next runs when the branch is not taken.
fn emit_loop_back(ops: &mut Asm, i: &Insn, retired: u32, stubs: &Stubs) {
    let out = ops.new_dynamic_label();
    emit_jcc(ops, i, &stubs.cache, out, false);
    exit_to(ops, stubs, stubs.start, retired);
    dynasm!(ops ; .arch x64 ; =>out);
}

/// Compare a conditional branch's registers and jump to `to` if the branch is taken (`when`
/// true) or if it is not (`when` false).
fn emit_jcc(ops: &mut Asm, i: &Insn, c: &Cache, to: DynamicLabel, when: bool) {
    use Op::*;
    alu::emit_compare(ops, c, i.rs1, i.rs2);
    match (i.op, when) {
        (Beq, true) | (Bne, false) => dynasm!(ops ; .arch x64 ; je =>to),
        (Bne, true) | (Beq, false) => dynasm!(ops ; .arch x64 ; jne =>to),
        (Blt, true) | (Bge, false) => dynasm!(ops ; .arch x64 ; jl =>to),
        (Bge, true) | (Blt, false) => dynasm!(ops ; .arch x64 ; jge =>to),
        (Bltu, true) | (Bgeu, false) => dynasm!(ops ; .arch x64 ; jb =>to),
        _ => dynasm!(ops ; .arch x64 ; jae =>to),
    }
}

/// Where the host bytes of a checked access are (see [`emit_tlb_check`]).
#[derive(Clone, Copy)]
enum HostAddr {
    /// `[rsi + rax]`: the guest address in `rsi`, the addend in `rax`. `direct` when the check
    /// was only the span's of [`Env::host_read_bits`] (or [`Env::host_write_bits`]: an access
    /// the host checks): the caller then records the access instruction as a direct one.
    Indexed { direct: bool },
    /// `[base + disp]`: a direct access through host register `base`, which holds the base
    /// register (its cached copy, or `rsi`), with the addend folded into the displacement
    /// ([`Env::folded`]). The slow path computes the address in `rsi` itself
    /// ([`HostAddr::to_rsi`]), from `base`, which neither the check nor a faulting access
    /// changed.
    Folded { base: u8, disp: i32 },
}

impl HostAddr {
    /// Whether the access is a direct one, whose host fault resumes at its slow path.
    fn direct(self) -> bool {
        matches!(
            self,
            HostAddr::Folded { .. } | HostAddr::Indexed { direct: true }
        )
    }

    /// On the slow path of access `i`: put its guest address in `rsi` if the fast path did not.
    fn to_rsi(self, ops: &mut Asm, i: &Insn) {
        if let HostAddr::Folded { base, .. } = self {
            emit_lea(ops, RSI, base, i.imm);
        }
    }
}

/// The span check of a direct access: unless an earlier check through guest register `reg`
/// covers the bytes `span` off it (see [`Checked`]), jump to `slow` unless `base + off` (host
/// register `base`: the address of the span's first byte) lies below the span of `bits`, and
/// record the check (at the span's first byte). Below the span the
/// host faults where the guest may not read (write); past its end lies a host page that faults
/// too, so the first byte's address is all there is to check. Clobbers `rax`.
fn emit_below_span(
    ops: &mut Asm,
    checked: &mut Checked,
    (reg, span): (u8, (i64, i64)),
    (base, off): (u8, i32),
    bits: u8,
    slow: DynamicLabel,
) {
    if checked.covers(reg, span, bits) {
        return;
    }
    emit_lea(ops, RAX, base, off);
    dynasm!(ops
        ; .arch x64
        ; shr rax, bits as i8
        ; jnz =>slow
    );
    checked.passed(reg, span.0 as i32, bits);
}

/// Host register `dst` = `base + imm`, in the shortest form.
fn emit_lea(ops: &mut Asm, dst: u8, base: u8, imm: i32) {
    match i8::try_from(imm) {
        Ok(0) => dynasm!(ops ; .arch x64 ; mov Rq(dst), Rq(base)),
        Ok(b) => dynasm!(ops ; .arch x64 ; lea Rq(dst), [BYTE Rq(base) + b]),
        Err(_) => dynasm!(ops ; .arch x64 ; lea Rq(dst), [Rq(base) + imm]),
    }
}

/// A host register holding guest register `r`: the one caching it, or `scratch` loaded with
/// it (an access's base in `rsi`, a store's value in `rdx`).
fn in_register(ops: &mut Asm, c: &Cache, r: u8, scratch: u8) -> u8 {
    match c.operand(r) {
        Operand::Reg(h) => h,
        _ => {
            ld(ops, c, scratch, r);
            scratch
        }
    }
}

/// Check access `i` (a store if `write`), jumping to `slow` unless it may go ahead, and say
/// where its bytes are on the host on the fast path.
///
/// A direct access, when the addend fits a displacement, is [`HostAddr::Folded`]. Otherwise
/// `rsi` = the effective address, and the check jumps to `slow` unless the TLB entry for it
/// maps the page and the access of `size` bytes stays in it (or only checks the span, for a
/// direct one); it leaves the addend in `rax`.
fn emit_tlb_check(
    ops: &mut Asm,
    env: &Env,
    (c, checked): (&Cache, &mut Checked),
    i: &Insn,
    write: bool,
    slow: DynamicLabel,
) -> HostAddr {
    let size = size_index(i.op).1;
    let direct = env.host_checked(write);
    if let Some((addend, bits)) = direct {
        let folded = env.folded(addend, i.imm as i64).filter(|_| i.rs1 != 0);
        if let Some(disp) = folded {
            let base = in_register(ops, c, i.rs1, RSI);
            let access = (i.rs1, run::span(i));
            emit_below_span(ops, checked, access, (base, i.imm), bits, slow);
            return HostAddr::Folded { base, disp };
        }
    }
    match c.operand(i.rs1) {
        Operand::Reg(h) => emit_lea(ops, RSI, h, i.imm),
        _ => emit_address(ops, c, i),
    }
    if let Some((addend, bits)) = direct {
        let access = (i.rs1, run::span(i));
        emit_below_span(ops, checked, access, (RSI, 0), bits, slow);
        dynasm!(ops ; .arch x64 ; mov rax, QWORD addend as i64);
        return HostAddr::Indexed { direct: true };
    }
    if !write {
        if let Some(bounds) = ram_bounds(env, size) {
            emit_ram_check(ops, bounds, slow);
            return HostAddr::Indexed { direct: false };
        }
    }
    if size > 1 {
        dynasm!(ops ; .arch x64 ; lea rax, [BYTE rsi + (size - 1) as i8]);
    } else {
        dynasm!(ops ; .arch x64 ; mov rax, rsi);
    }
    emit_tlb_lookup(ops, env, write, RSI, slow);
    HostAddr::Indexed { direct: false }
}

/// For a load of `size` bytes under [`Env::machine_ram`]: the displacement that takes an
/// address to its offset in RAM, the largest offset the access may start at, and the
/// addend; `None` when they do not fit the instructions' 32-bit immediates (RAM above
/// 2 GiB, or over 2 GiB of it), and such loads check the TLB.
fn ram_bounds(env: &Env, size: u32) -> Option<(i32, i32, u64)> {
    let (base, len) = env.machine_ram?;
    let to_offset = i32::try_from(0i64.checked_sub(i64::try_from(base).ok()?)?).ok()?;
    let last_start = i32::try_from(len.checked_sub(size as u64)?).ok()?;
    Some((to_offset, last_start, env.data_addend?))
}

/// With the address of a load in `rsi`: jump to `slow` unless all of its bytes lie in RAM
/// (see [`ram_bounds`]); on the fast path, leave the RAM's addend in `rax`.
fn emit_ram_check(
    ops: &mut Asm,
    (to_offset, last_start, addend): (i32, i32, u64),
    slow: DynamicLabel,
) {
    dynasm!(ops
        ; .arch x64
        ; lea rax, [rsi + to_offset]
        ; cmp rax, last_start
        ; ja =>slow
        ; mov rax, QWORD addend as i64
    );
}

/// `rsi` = `x[rs1] + imm`, the address of memory access `i`.
fn emit_address(ops: &mut Asm, c: &Cache, i: &Insn) {
    ld(ops, c, RSI, i.rs1);
    match i8::try_from(i.imm) {
        Ok(0) => {}
        Ok(b) => dynasm!(ops ; .arch x64 ; add rsi, BYTE b),
        Err(_) => dynasm!(ops ; .arch x64 ; add rsi, i.imm),
    }
}

/// With host register `first` holding the address of an access's first byte and `rax` that
/// of its last: jump to `slow` unless the data TLB (the write one if `write`) maps the page
/// and the access stays in it; on the fast path, leave the page's addend in `rax`. Clobbers
/// `rcx`.
///
/// The entry's offset comes straight from the first byte's address (`(vaddr >> 12) %
/// entries × entry bytes` in two operations): the access's address depends on it, the tag
/// compare only steers a branch. The tag is compared with the page of the last byte: it
/// matches only if that page is the entry's, which is the page of the first byte, so an access
/// crossing into the next page takes the slow path too.
fn emit_tlb_lookup(ops: &mut Asm, env: &Env, write: bool, first: u8, slow: DynamicLabel) {
    let tlb = if write {
        env.ctx_tlb_write
    } else {
        env.ctx_tlb_read
    };
    let shift = 12 - DATA_TLB_ENTRY_BYTES.trailing_zeros() as i8;
    debug_assert!(env.data_tlb_entries.is_power_of_two());
    let mask = ((env.data_tlb_entries - 1) * DATA_TLB_ENTRY_BYTES) as i32;
    dynasm!(ops
        ; .arch x64
        ; mov ecx, Rd(first)
        ; shr ecx, shift
        ; and ecx, mask
        ; add rcx, [r12 + tlb]
        ; shr rax, 12
        ; cmp rax, [rcx]
        ; jne =>slow
    );
    match (env.sole_addend, env.data_addend) {
        // The entry holds it: nothing to check.
        (Some(a), _) => dynasm!(ops ; .arch x64 ; mov rax, QWORD a as i64),
        // The access's address no longer waits for the entry's addend (a load on the
        // dependency chain of every access); the compare only steers a predicted branch.
        (None, Some(a)) => dynasm!(ops
            ; .arch x64
            ; mov rax, QWORD a as i64
            ; cmp rax, [rcx + 8]
            ; jne =>slow
        ),
        (None, None) => dynasm!(ops ; .arch x64 ; mov rax, [rcx + 8]),
    }
}

fn size_index(op: Op) -> (usize, u32) {
    use Op::*;
    match op {
        Lb | Lbu | Sb => (0, 1),
        Lh | Lhu | Sh => (1, 2),
        Lw | Lwu | Sw | Flw | Fsw => (2, 4),
        _ => (3, 8),
    }
}

/// Where a host load or store finds its bytes.
#[derive(Clone, Copy)]
enum Mem {
    /// `[rsi + rax]`: the guest address and the addend.
    RsiRax,
    /// `[base + disp]`: the addend folded into the displacement.
    Disp(u8, i32),
    /// `[base + rcx + disp]`: the addend in `rcx` (a run's).
    Rcx(u8, i32),
    /// `[base + index << shift + disp]` as (`base`, `index`, `shift` 0 to 3, `disp`), the
    /// addend folded in (an indexed load's; loads only).
    Scaled(u8, u8, u8, i32),
}

impl HostAddr {
    /// The operand of the access `emit_tlb_check` answered with this.
    fn mem(self) -> Mem {
        match self {
            HostAddr::Indexed { .. } => Mem::RsiRax,
            HostAddr::Folded { base, disp } => Mem::Disp(base, disp),
        }
    }
}

/// The host load of load `$op` into host register `$d` from the memory operand written in
/// the brackets (dynasm syntax): one form per width and extension.
macro_rules! host_load {
    ($ops:ident, $op:ident, $d:ident, [$($mem:tt)*]) => {
        match $op {
            Op::Lb => dynasm!($ops ; .arch x64 ; movsx Rq($d), BYTE [$($mem)*]),
            Op::Lbu => dynasm!($ops ; .arch x64 ; movzx Rd($d), BYTE [$($mem)*]),
            Op::Lh => dynasm!($ops ; .arch x64 ; movsx Rq($d), WORD [$($mem)*]),
            Op::Lhu => dynasm!($ops ; .arch x64 ; movzx Rd($d), WORD [$($mem)*]),
            Op::Lw => dynasm!($ops ; .arch x64 ; movsxd Rq($d), DWORD [$($mem)*]),
            Op::Lwu | Op::Flw => dynasm!($ops ; .arch x64 ; mov Rd($d), DWORD [$($mem)*]),
            _ => dynasm!($ops ; .arch x64 ; mov Rq($d), QWORD [$($mem)*]),
        }
    };
}

/// The host store of store `$op` from host register `$v` to the memory operand written in the
/// brackets (dynasm syntax): one form per width.
macro_rules! host_store {
    ($ops:ident, $op:ident, $v:ident, [$($mem:tt)*]) => {
        match $op {
            Op::Sb => dynasm!($ops ; .arch x64 ; mov BYTE [$($mem)*], Rb($v)),
            Op::Sh => dynasm!($ops ; .arch x64 ; mov WORD [$($mem)*], Rw($v)),
            Op::Sw | Op::Fsw => dynasm!($ops ; .arch x64 ; mov DWORD [$($mem)*], Rd($v)),
            _ => dynasm!($ops ; .arch x64 ; mov QWORD [$($mem)*], Rq($v)),
        }
    };
}

/// The host load of integer (or `Flw`/`Fld`) load `op` into host register `d`, from `mem`.
fn emit_load_insn(ops: &mut Asm, op: Op, d: u8, mem: Mem) {
    match mem {
        Mem::RsiRax => host_load!(ops, op, d, [rsi + rax]),
        Mem::Disp(base, disp) => host_load!(ops, op, d, [Rq(base) + disp]),
        Mem::Rcx(base, disp) => host_load!(ops, op, d, [Rq(base) + rcx + disp]),
        Mem::Scaled(base, index, 0, disp) => {
            host_load!(ops, op, d, [Rq(base) + Rq(index) * 1 + disp])
        }
        Mem::Scaled(base, index, 1, disp) => {
            host_load!(ops, op, d, [Rq(base) + Rq(index) * 2 + disp])
        }
        Mem::Scaled(base, index, 2, disp) => {
            host_load!(ops, op, d, [Rq(base) + Rq(index) * 4 + disp])
        }
        Mem::Scaled(base, index, _, disp) => {
            host_load!(ops, op, d, [Rq(base) + Rq(index) * 8 + disp])
        }
    }
}

/// The host store of store `op` from host register `v`, to `mem` (not [`Mem::Scaled`]).
fn emit_store_insn(ops: &mut Asm, op: Op, v: u8, mem: Mem) {
    match mem {
        Mem::RsiRax => host_store!(ops, op, v, [rsi + rax]),
        Mem::Disp(base, disp) => host_store!(ops, op, v, [Rq(base) + disp]),
        Mem::Rcx(base, disp) => host_store!(ops, op, v, [Rq(base) + rcx + disp]),
        Mem::Scaled(..) => unreachable!("indexed stores are not fused"),
    }
}

fn emit_load(ops: &mut Asm, i: &Insn, at: At, env: &Env, stubs: &mut Stubs) {
    use Op::*;
    let At { pc, n, .. } = at;
    let fp = matches!(i.op, Flw | Fld);
    let fs_off = ops.new_dynamic_label();
    if fp {
        emit_fs_check(ops, stubs, fs_off);
    }
    let slow = ops.new_dynamic_label();
    let done = ops.new_dynamic_label();
    let fault = ops.new_dynamic_label();
    let c = stubs.cache;
    let at_host = emit_tlb_check(ops, env, (&c, &mut stubs.checked), i, false, slow);
    // The value goes straight to the host register holding the destination, if one does
    // (else through `rax`).
    let home = if fp { None } else { c.home(i.rd()) };
    let d = home.unwrap_or(RAX);
    if at_host.direct() {
        // A host fault on the next instruction resumes at `slow`, with `d` unchanged (and
        // the address still in `rsi`, or its base register in `base`).
        stubs.direct.push((ops.offset().0, slow));
    }
    emit_load_insn(ops, i.op, d, at_host.mem());
    dynasm!(ops ; .arch x64 ; =>done);
    let (op, insn) = (i.op, *i);
    stubs
        .cold
        .push(Box::new(move |ops: &mut Asm, env: &Env, _: &mut Stubs| {
            dynasm!(ops ; .arch x64 ; =>slow);
            at_host.to_rsi(ops, &insn);
            emit_load_call(ops, &c, env, op, fault);
            if d != RAX {
                dynasm!(ops ; .arch x64 ; mov Rq(d), rax);
            }
            dynasm!(ops ; .arch x64 ; jmp =>done);
        }));
    stubs.fault.push((fault, pc, n));
    if !fp {
        if home.is_none() {
            st_rax(ops, &c, i.rd());
        }
        return;
    }
    if i.op == Flw {
        // NaN-box the single.
        dynasm!(ops ; .arch x64 ; mov rcx, QWORD -1i64 << 32 ; or rax, rcx);
    }
    st_f_rax(ops, stubs, i.rd());
    emit_fs_off(ops, fs_off, i, at, stubs);
}

/// The slow path of load `op` (its address in `rsi`): its helper, leaving the value in `rax`
/// or through `fault`.
fn emit_load_call(ops: &mut Asm, c: &Cache, env: &Env, op: Op, fault: DynamicLabel) {
    use Op::*;
    let signed = matches!(op, Lb | Lh | Lw | Ld);
    call_memory_helper(ops, c, env.load[size_index(op).0][signed as usize] as i64);
    dynasm!(ops
        ; .arch x64
        ; test rdx, rdx
        ; jnz =>fault
    );
}

/// The slow path of store `op` (its address in `rsi`, the value in `rdx`): its helper,
/// leaving through `fault` if it faulted and through `leave` if it set a request.
fn emit_store_call(
    ops: &mut Asm,
    c: &Cache,
    env: &Env,
    op: Op,
    fault: DynamicLabel,
    leave: DynamicLabel,
) {
    call_memory_helper(ops, c, env.store[size_index(op).0] as i64);
    dynasm!(ops
        ; .arch x64
        ; test rax, rax
        ; jnz =>fault
        // The store may have hit code (possibly this block's) or MMIO: back to the hart.
        ; cmp DWORD [rbx + S.requests], 0
        ; jne =>leave
    );
}

/// Call a load or store helper (its address and the value to store already in `rsi` and
/// `rdx`) with the context, and reload the cached registers the call may have clobbered.
fn call_memory_helper(ops: &mut Asm, c: &Cache, helper: i64) {
    spill(ops, c, Sync::CallerSaved);
    dynasm!(ops
        ; .arch x64
        ; mov rdi, r12
        ; mov rax, QWORD helper
        ; call rax
    );
    c.load(ops, Sync::CallerSaved);
}

fn emit_store(ops: &mut Asm, i: &Insn, at: At, env: &Env, stubs: &mut Stubs) {
    use Op::*;
    let At { pc, n, .. } = at;
    let fp = matches!(i.op, Fsw | Fsd);
    let fs_off = ops.new_dynamic_label();
    if fp {
        emit_fs_check(ops, stubs, fs_off);
    }
    let slow = ops.new_dynamic_label();
    let done = ops.new_dynamic_label();
    let fault = ops.new_dynamic_label();
    let leave = ops.new_dynamic_label();
    let c = stubs.cache;
    let at_host = emit_tlb_check(ops, env, (&c, &mut stubs.checked), i, true, slow);
    // The value straight from the host register caching it, if one does.
    let v = match (fp, c.operand(i.rs2)) {
        (false, Operand::Reg(h)) => h,
        _ => {
            ld_value(ops, &c, i.rs2, fp);
            RDX
        }
    };
    if at_host.direct() {
        // A host fault on the next instruction writes nothing and resumes at `slow`, with
        // the address still in `rsi` or its base register in `base` (the slow path loads the
        // value again).
        stubs.direct.push((ops.offset().0, slow));
    }
    emit_store_insn(ops, i.op, v, at_host.mem());
    dynasm!(ops ; .arch x64 ; =>done);
    let (op, value, insn) = (i.op, i.rs2, *i);
    stubs
        .cold
        .push(Box::new(move |ops: &mut Asm, env: &Env, _: &mut Stubs| {
            dynasm!(ops ; .arch x64 ; =>slow);
            at_host.to_rsi(ops, &insn);
            ld_value(ops, &c, value, fp);
            emit_store_call(ops, &c, env, op, fault, leave);
            dynasm!(ops ; .arch x64 ; jmp =>done);
        }));
    stubs.fault.push((fault, pc, n));
    stubs
        .leave
        .push((leave, pc.wrapping_add(i.byte_len() as u64), n + 1));
    if fp {
        emit_fs_off(ops, fs_off, i, at, stubs);
    }
}

/// An atomic or F/D instruction, run by the interpreter through the step helper; like a store,
/// it may have set a request (code or MMIO written) and then the block ends after it.
fn emit_step(ops: &mut Asm, i: Insn, at: At, env: &Env, stubs: &mut Stubs) {
    emit_step_call(ops, i, at, env, stubs);
    let At { pc, n, .. } = at;
    let leave = ops.new_dynamic_label();
    dynasm!(ops
        ; .arch x64
        ; cmp DWORD [rbx + S.requests], 0
        ; jne =>leave
    );
    stubs
        .leave
        .push((leave, pc.wrapping_add(i.byte_len() as u64), n + 1));
}

/// The block of the 4-byte instruction at `pc` that straddles its page's end: the straddle
/// helper fetches (both halves, through the MMU: the next page may map anywhere) and runs it;
/// the block then goes where it went, through the jump cache, or back to the engine if it left
/// a request (a store to code or MMIO, a privilege change) or trapped.
fn emit_straddling(ops: &mut Asm, stubs: &mut Stubs, env: &Env, pc: u64) {
    let fault = ops.new_dynamic_label();
    let requested = ops.new_dynamic_label();
    call_interpreter(ops, stubs, env.straddle, fault, |ops| {
        dynasm!(ops
            ; .arch x64
            ; mov rsi, QWORD pc as i64
            // Instructions retired since the engine's call and not yet in `instret`.
            ; mov rdx, [r12 + env.ctx_left]
            ; sub rdx, r13
        );
    });
    dynasm!(ops
        ; .arch x64
        ; cmp DWORD [rbx + S.requests], 0
        ; jne =>requested
        ; mov rax, [rbx + S.pc]
    );
    exit_lookup(ops, stubs, 1);
    // `pc` is where the instruction went: the helper stored it.
    dynasm!(ops
        ; .arch x64
        ; =>requested
        ; sub r13, 1
        ; jmp =>stubs.labels.leave
    );
    stubs.fault.push((fault, pc, 0));
}

/// Call `helper` (the context in `rdi`, the rest of its arguments set by `args`), which runs
/// guest code through the interpreter: guest registers go to the state before and come back
/// after (it may have written any), and a non-zero result (a trap) jumps to `fault`.
fn call_interpreter(
    ops: &mut Asm,
    stubs: &Stubs,
    helper: usize,
    fault: DynamicLabel,
    args: impl FnOnce(&mut Asm),
) {
    spill(ops, &stubs.cache, Sync::All);
    dynasm!(ops ; .arch x64 ; mov rdi, r12);
    args(ops);
    dynasm!(ops
        ; .arch x64
        ; mov rax, QWORD helper as i64
        ; call rax
    );
    stubs.cache.load(ops, Sync::All);
    dynasm!(ops
        ; .arch x64
        ; test rax, rax
        ; jnz =>fault
    );
}

/// Call the step helper for `i` (at `at`), leaving the block through a fault exit if it
/// trapped.
fn emit_step_call(ops: &mut Asm, i: Insn, at: At, env: &Env, stubs: &mut Stubs) {
    let At { raw, pc, n } = at;
    let insn_ptr = stubs.insns.keep(i) as i64;
    let fault = ops.new_dynamic_label();
    // The interpreter may change `mstatus` (a CSR write): what the block knew of FS is
    // forgotten.
    stubs.fs_on = false;
    stubs.fs_dirty = false;
    call_interpreter(ops, stubs, env.step, fault, |ops| {
        dynasm!(ops
            ; .arch x64
            ; mov rsi, QWORD insn_ptr
            ; mov rdx, QWORD pc as i64
            ; mov ecx, raw as i32
        );
    });
    stubs.fault.push((fault, pc, n));
}
