//! Guest registers kept in host registers: a few pinned across blocks, others for the length
//! of a block.
//!
//! The most used guest registers ([`PINNED`]) live in the same host registers in every block:
//! the prologue, run when the engine enters translated code, loads them; the epilogue, run
//! when translated code returns to the engine, stores them; blocks chained to each other pass
//! them on untouched. Each block also keeps the registers it uses most among the others in
//! the remaining host registers, loaded at its chain entry.
//!
//! Both are write-back: a write of a cached guest register changes only its host copy, and the
//! block stores the copies it may have changed ([`spill`]) wherever the state in memory must
//! be exact: its own ones before every exit (chained or not, fault or not), all of them before
//! the step helper (which reads and writes guest registers in memory) and, for the
//! caller-saved host registers a call clobbers, before every other helper call. After a call
//! the copies the call may have clobbered are loaded again (all of them after the step
//! helper).
//!
//! FP registers a block uses twice live in `xmm` registers the same way, for the block only;
//! every `xmm` register is caller-saved, so each call stores the changed ones before and
//! reloads them all after.

// dynasm's dynamic registers (`Rq(n)`) expand to `n.into()`, which is a `u8` already.
#![allow(clippy::useless_conversion)]

use super::{foff, followed_jump, side_exit, xoff, Asm, Op};
use dynasmrt::{dynasm, DynasmApi};
use popek_cpu::decode::Insn;
use popek_cpu::decode::{decode, raw_in_page};

/// Guest registers pinned in host registers across blocks, as (guest, host): the ones RISC-V
/// compilers' code uses most (GCC takes `a5`, `a4`, `a3` first for temporaries; `sp` and `a0`
/// are in every prologue and call). Every block finds them in their host registers at its
/// chain entry and leaves them there, so chained blocks pass them on without a store and a
/// load; the prologue loads them from the state and the epilogue stores them back.
const PINNED: [(u8, u8); 5] = [(15, 15), (14, 14), (13, 5), (2, 8), (10, 9)];

/// Host registers that hold a block's own choice of further guest registers, loaded at its
/// chain entry and stored back at its exits. None of them, nor of the pinned ones, is
/// otherwise used by generated code.
const HOSTS: [u8; 2] = [10, 11];

/// Whether host register `h` survives a call.
fn callee_saved(h: u8) -> bool {
    matches!(h, 3 | 5 | 12..=15)
}

/// Host register number of `rax`, `rcx`, `rdx`, `rsi` and `rdi`, for [`ld`] and [`st`].
pub(super) const RAX: u8 = 0;
pub(super) const RCX: u8 = 1;
pub(super) const RDX: u8 = 2;
pub(super) const RSI: u8 = 6;
pub(super) const RDI: u8 = 7;

/// Which guest register lives in which host register in one block (0: none).
#[derive(Clone, Copy, Default)]
pub(super) struct Cache {
    host: [u8; 32],
    /// Cached registers the block may write (only those need storing back); always set for
    /// pinned ones (a block cannot know what the blocks before it wrote).
    written: [bool; 32],
    /// Guest registers pinned across blocks (see [`PINNED`]).
    pinned: [bool; 32],
    /// Which FP register lives in which `xmm` register (0: none; `xmm0` and `xmm1` are
    /// scratch). Every `xmm` register is caller-saved: calls store and reload them all.
    fhost: [u8; 32],
    /// Cached FP registers the block may write.
    fwritten: [bool; 32],
    /// The cached integer registers as (guest, host), lowest guest register first, and how
    /// many: what [`spill`] and [`Cache::load`] go through (a block calls them at every exit
    /// and helper call; scanning all 32 registers each time was a tenth of translation time).
    ints: ([(u8, u8); 8], u8),
    /// The same for the cached FP registers, as (FP register, `xmm`).
    fps: ([(u8, u8); 8], u8),
}

/// `xmm` registers that hold FP registers.
const FHOSTS: [u8; 8] = [2, 3, 4, 5, 6, 7, 8, 9];

/// Registers of one kind an instruction reads (up to three) and writes.
type Uses = ([Option<u8>; 3], Option<u8>);

/// The integer and FP registers `i` reads and writes. FP instructions are told apart for those
/// the translator runs natively or as loads and stores; any other instruction counts its
/// `rs1`, `rs2` and `rd` as integer registers (an FP one among them goes through the step
/// helper, which works on the state: the cache is stored before it and reloaded after, so a
/// miscounted register only costs a load and a store).
fn reg_uses(i: &Insn) -> (Uses, Uses) {
    use Op::*;
    let (a, b, c, d) = (Some(i.rs1), Some(i.rs2), Some(i.rs3()), Some(i.rd()));
    const NONE: Uses = ([None; 3], None);
    match i.op {
        FaddD | FsubD | FmulD | FdivD | FsgnjD | FsgnjnD | FsgnjxD => (NONE, ([a, b, None], d)),
        FsqrtD => (NONE, ([a, None, None], d)),
        FmaddD | FmsubD | FnmsubD | FnmaddD => (NONE, ([a, b, c], d)),
        FeqD | FltD | FleD => (([None; 3], d), ([a, b, None], None)),
        FmvXD => (([None; 3], d), ([a, None, None], None)),
        FcvtDW | FcvtDWu | FmvDX | Fld | Flw => (([a, None, None], None), ([None; 3], d)),
        Fsd | Fsw => (([a, None, None], None), ([b, None, None], None)),
        _ => (([a, b, None], d), NONE),
    }
}

/// Count `uses` in `reads` and `writes`.
fn count(uses: Uses, reads: &mut [u32; 32], writes: &mut [u32; 32]) {
    for r in uses.0.into_iter().flatten() {
        reads[r as usize] += 1;
    }
    if let Some(r) = uses.1 {
        writes[r as usize] += 1;
    }
}

/// Give the registers from `first` on that have no host register yet and are read or written
/// at least twice a host register each, most used first, as long as `hosts` last: `host[r]`
/// and `written[r]` for each.
fn assign(
    (reads, writes): (&[u32; 32], &[u32; 32]),
    first: usize,
    hosts: &[u8],
    host: &mut [u8; 32],
    written: &mut [bool; 32],
) {
    // With write-back, every access after the first saves a load or a store (and a
    // store-to-load round trip on the chain of dependent instructions).
    let uses = |r: usize| reads[r] + writes[r];
    let mut order: Vec<usize> = (first..32)
        .filter(|&r| host[r] == 0 && uses(r) >= 2)
        .collect();
    order.sort_by_key(|&r| std::cmp::Reverse(uses(r)));
    for (&r, &h) in order.iter().zip(hosts) {
        host[r] = h;
        written[r] = writes[r] > 0;
    }
}

impl Cache {
    /// Choose the registers to cache for the block at offset `off` of the guest page at
    /// `page`: those read or written at least twice on the block's straight path (past
    /// forward branches and along jumps within the page, as the translator goes, up to the
    /// first other branch or jump), most used first.
    ///
    /// # Safety
    /// `page` must point at 4096 readable bytes and `off` < 4096.
    pub(super) unsafe fn plan(page: *const u8, mut off: usize, max_insns: usize) -> Cache {
        let start = off as u64;
        let mut reads = [0u32; 32];
        let mut writes = [0u32; 32];
        let mut freads = [0u32; 32];
        let mut fwrites = [0u32; 32];
        for _ in 0..max_insns {
            // SAFETY: per this function's contract (and the loop stops at the page's end).
            let Some(raw) = (unsafe { raw_in_page(page, off) }) else {
                break;
            };
            let i = decode(raw);
            let (int, fp) = reg_uses(&i);
            count(int, &mut reads, &mut writes);
            count(fp, &mut freads, &mut fwrites);
            use Op::*;
            if let Some(target) = followed_jump(&i, off as u64, start) {
                // The translator goes on at the jump's target (offsets stand for addresses:
                // only their page-offset bits matter).
                off = target as usize;
                continue;
            }
            // The translator goes on past a forward branch within the page.
            if side_exit(&i, off as u64).is_none()
                && matches!(
                    i.op,
                    Beq | Bne | Blt | Bge | Bltu | Bgeu | Jal | Jalr | Illegal
                )
            {
                break;
            }
            off += i.byte_len() as usize;
            if off >= 4096 {
                break;
            }
        }
        let mut c = Cache::pinned_only();
        // x0 is never cached; f0 is a register like the others.
        assign((&reads, &writes), 1, &HOSTS, &mut c.host, &mut c.written);
        assign(
            (&freads, &fwrites),
            0,
            &FHOSTS,
            &mut c.fhost,
            &mut c.fwritten,
        );
        c.index();
        c
    }

    /// Only the pinned registers: what the shared entry and exit code (run for every block)
    /// loads and stores.
    pub(super) fn pinned_only() -> Cache {
        let mut c = Cache::default();
        for (r, h) in PINNED {
            c.host[r as usize] = h;
            c.written[r as usize] = true;
            c.pinned[r as usize] = true;
        }
        c.index();
        c
    }

    /// Fill in [`Cache::ints`] and [`Cache::fps`] from the per-register tables.
    fn index(&mut self) {
        let list = |hosts: &[u8; 32]| {
            let mut l = ([(0u8, 0u8); 8], 0u8);
            for (r, &h) in hosts.iter().enumerate().filter(|(_, &h)| h != 0) {
                l.0[l.1 as usize] = (r as u8, h);
                l.1 += 1;
            }
            l
        };
        self.ints = list(&self.host);
        self.fps = list(&self.fhost);
    }

    /// The cached integer registers as (guest, host).
    fn int_list(&self) -> &[(u8, u8)] {
        &self.ints.0[..self.ints.1 as usize]
    }

    /// The cached FP registers as (FP register, `xmm`).
    fn fp_list(&self) -> &[(u8, u8)] {
        &self.fps.0[..self.fps.1 as usize]
    }

    /// The `xmm` register holding FP register `r`, if any.
    pub(super) fn fx(&self, r: u8) -> Option<u8> {
        match self.fhost[r as usize] {
            0 => None,
            h => Some(h),
        }
    }

    /// The host register holding guest register `r`, if any.
    fn of(&self, r: u8) -> Option<u8> {
        match self.host[r as usize] {
            0 => None,
            h => Some(h),
        }
    }

    /// Load host copies from the state (see [`Sync`] for which).
    pub(super) fn load(&self, ops: &mut Asm, which: Sync) {
        for &(r, h) in self.int_list() {
            if which.covers(self.pinned[r as usize], h) {
                dynasm!(ops ; .arch x64 ; mov Rq(h), [BYTE rbx + xoff(r)]);
            }
        }
        if which != Sync::Pinned {
            for &(r, x) in self.fp_list() {
                dynasm!(ops ; .arch x64 ; movsd Rx(x), [rbx + foff(r)]);
            }
        }
    }
}

/// Which host copies a [`spill`] stores or a [`Cache::load`] loads.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Sync {
    /// The block's own choice (not the pinned ones), at its chain entry and exits: blocks
    /// chained to each other pass the pinned ones on in their host registers.
    Block,
    /// Only the pinned ones, at the prologue and the epilogue.
    Pinned,
    /// Those in caller-saved host registers (pinned or not), around a call that reads and
    /// writes no guest register.
    CallerSaved,
    /// All of them, around the step helper (which reads and writes guest registers in the
    /// state).
    All,
}

impl Sync {
    /// Whether this covers an integer register in host register `h`, pinned or not.
    fn covers(self, pinned: bool, h: u8) -> bool {
        match self {
            Sync::Block => !pinned,
            Sync::Pinned => pinned,
            Sync::CallerSaved => !callee_saved(h),
            Sync::All => true,
        }
    }
}

/// Store the host copies the block may have changed back to the state (see [`Sync`] for
/// which).
pub(super) fn spill(ops: &mut Asm, c: &Cache, which: Sync) {
    for &(r, h) in c.int_list() {
        if c.written[r as usize] && which.covers(c.pinned[r as usize], h) {
            dynasm!(ops ; .arch x64 ; mov [BYTE rbx + xoff(r)], Rq(h));
        }
    }
    if which != Sync::Pinned {
        for &(r, x) in c.fp_list() {
            if c.fwritten[r as usize] {
                dynasm!(ops ; .arch x64 ; movsd [rbx + foff(r)], Rx(x));
            }
        }
    }
}

/// `xmm` register `dst` = FP register `r`.
pub(super) fn ldf(ops: &mut Asm, c: &Cache, dst: u8, r: u8) {
    match c.fx(r) {
        Some(x) => dynasm!(ops ; .arch x64 ; movapd Rx(dst), Rx(x)),
        None => dynasm!(ops ; .arch x64 ; movsd Rx(dst), [rbx + foff(r)]),
    }
}

/// Integer register `dst` = the bits of FP register `r`.
pub(super) fn ldf_bits(ops: &mut Asm, c: &Cache, dst: u8, r: u8) {
    match c.fx(r) {
        Some(x) => dynasm!(ops ; .arch x64 ; movq Rq(dst), Rx(x)),
        None => dynasm!(ops ; .arch x64 ; mov Rq(dst), [rbx + foff(r)]),
    }
}

/// FP register `rd` = the bits of integer register `src`.
pub(super) fn stf_bits(ops: &mut Asm, c: &Cache, rd: u8, src: u8) {
    match c.fx(rd) {
        Some(x) => {
            dynasm!(ops ; .arch x64 ; movq Rx(x), Rq(src));
            if !c.fwritten[rd as usize] {
                // Past the part of the block the plan saw: `spill` does not store it.
                dynasm!(ops ; .arch x64 ; mov [rbx + foff(rd)], Rq(src));
            }
        }
        None => dynasm!(ops ; .arch x64 ; mov [rbx + foff(rd)], Rq(src)),
    }
}

/// FP register `rd` = `xmm` register `src`.
pub(super) fn stf_xmm(ops: &mut Asm, c: &Cache, rd: u8, src: u8) {
    match c.fx(rd) {
        Some(x) => {
            dynasm!(ops ; .arch x64 ; movapd Rx(x), Rx(src));
            if !c.fwritten[rd as usize] {
                dynasm!(ops ; .arch x64 ; movsd [rbx + foff(rd)], Rx(src));
            }
        }
        None => dynasm!(ops ; .arch x64 ; movsd [rbx + foff(rd)], Rx(src)),
    }
}

/// Where an instruction can read a guest register from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Operand {
    /// `x0`: zero.
    Zero,
    /// A host register holding it.
    Reg(u8),
    /// Its slot in the state (a displacement from `rbx`).
    Mem(i8),
}

impl Cache {
    /// Where guest register `r` can be read from.
    pub(super) fn operand(&self, r: u8) -> Operand {
        match (r, self.of(r)) {
            (0, _) => Operand::Zero,
            (_, Some(h)) => Operand::Reg(h),
            _ => Operand::Mem(xoff(r)),
        }
    }

    /// The host register a result for guest register `rd` may be computed in directly: the
    /// one caching it, when [`spill`] stores every write of it back (else results go through
    /// `rax` and [`st`]).
    pub(super) fn home(&self, rd: u8) -> Option<u8> {
        self.of(rd).filter(|_| self.written[rd as usize])
    }
}

/// Host register `dst` = guest register `r`.
pub(super) fn ld(ops: &mut Asm, c: &Cache, dst: u8, r: u8) {
    if r == 0 {
        dynasm!(ops ; .arch x64 ; xor Rd(dst), Rd(dst));
    } else if let Some(h) = c.of(r) {
        dynasm!(ops ; .arch x64 ; mov Rq(dst), Rq(h));
    } else {
        dynasm!(ops ; .arch x64 ; mov Rq(dst), [BYTE rbx + xoff(r)]);
    }
}

/// Guest register `rd` = host register `src` (nothing for x0).
pub(super) fn st(ops: &mut Asm, c: &Cache, rd: u8, src: u8) {
    if rd == 0 {
        return;
    }
    match c.of(rd) {
        Some(h) if c.written[rd as usize] => dynasm!(ops ; .arch x64 ; mov Rq(h), Rq(src)),
        // A write past the part of the block the plan saw: through to the state as well, as
        // `spill` does not store this register.
        Some(h) => dynasm!(ops
            ; .arch x64
            ; mov [BYTE rbx + xoff(rd)], Rq(src)
            ; mov Rq(h), Rq(src)
        ),
        None => dynasm!(ops ; .arch x64 ; mov [BYTE rbx + xoff(rd)], Rq(src)),
    }
}

/// Guest register `rd` = `rax`.
pub(super) fn st_rax(ops: &mut Asm, c: &Cache, rd: u8) {
    st(ops, c, rd, RAX);
}
