//! Guest integer registers kept in host registers for the length of a block.
//!
//! The cache is write-through: every write of a guest register also goes to the state in
//! memory, so the state stays exact at every exit, fault and helper call, and the host copies
//! only save the loads (and the store-to-load latency) of registers a block reads again. A
//! block loads its cached registers at its chain entry; a helper call may clobber the
//! caller-saved host registers (and the step helper may write guest registers), so the copies
//! are reloaded after calls.

// dynasm's dynamic registers (`Rq(n)`) expand to `n.into()`, which is a `u8` already.
#![allow(clippy::useless_conversion)]

use super::{xoff, Asm, Op};
use dynasmrt::{dynasm, DynasmApi};
use popek_cpu::decode::{decode, raw_in_page};

/// Host registers that hold guest registers: callee-saved first (they survive helper calls),
/// then caller-saved. None of them is otherwise used by generated code.
const HOSTS: [u8; 7] = [15, 14, 5, 8, 9, 10, 11];

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
}

impl Cache {
    /// Choose the registers to cache for the block at offset `off` of the guest page at
    /// `page`: those read at least twice before the block's first branch or jump (as far as
    /// it could run), most read first.
    ///
    /// # Safety
    /// `page` must point at 4096 readable bytes and `off` < 4096.
    pub(super) unsafe fn plan(page: *const u8, mut off: usize, max_insns: usize) -> Cache {
        let mut reads = [0u32; 32];
        for _ in 0..max_insns {
            // SAFETY: per this function's contract (and the loop stops at the page's end).
            let Some(raw) = (unsafe { raw_in_page(page, off) }) else {
                break;
            };
            let i = decode(raw);
            reads[i.rs1 as usize] += 1;
            reads[i.rs2 as usize] += 1;
            use Op::*;
            if matches!(
                i.op,
                Beq | Bne | Blt | Bge | Bltu | Bgeu | Jal | Jalr | Illegal
            ) {
                break;
            }
            off += i.byte_len() as usize;
            if off >= 4096 {
                break;
            }
        }
        reads[0] = 0;
        let mut order: Vec<usize> = (1..32).filter(|&r| reads[r] >= 2).collect();
        order.sort_by_key(|&r| std::cmp::Reverse(reads[r]));
        let mut c = Cache::default();
        for (&r, &h) in order.iter().zip(HOSTS.iter()) {
            c.host[r] = h;
        }
        c
    }

    /// The host register holding guest register `r`, if any.
    fn of(&self, r: u8) -> Option<u8> {
        match self.host[r as usize] {
            0 => None,
            h => Some(h),
        }
    }

    /// Load the host copies from the state: all of them, or only those a call may have
    /// clobbered.
    pub(super) fn load(&self, ops: &mut Asm, after_plain_call: bool) {
        for r in 1..32u8 {
            if let Some(h) = self.of(r) {
                if !(after_plain_call && callee_saved(h)) {
                    dynasm!(ops ; .arch x64 ; mov Rq(h), [rbx + xoff(r)]);
                }
            }
        }
    }
}

/// Host register `dst` = guest register `r`.
pub(super) fn ld(ops: &mut Asm, c: &Cache, dst: u8, r: u8) {
    if r == 0 {
        dynasm!(ops ; .arch x64 ; xor Rd(dst), Rd(dst));
    } else if let Some(h) = c.of(r) {
        dynasm!(ops ; .arch x64 ; mov Rq(dst), Rq(h));
    } else {
        dynasm!(ops ; .arch x64 ; mov Rq(dst), [rbx + xoff(r)]);
    }
}

/// Guest register `rd` = host register `src` (nothing for x0).
pub(super) fn st(ops: &mut Asm, c: &Cache, rd: u8, src: u8) {
    if rd == 0 {
        return;
    }
    dynasm!(ops ; .arch x64 ; mov [rbx + xoff(rd)], Rq(src));
    if let Some(h) = c.of(rd) {
        dynasm!(ops ; .arch x64 ; mov Rq(h), Rq(src));
    }
}

/// Guest register `rd` = `rax`.
pub(super) fn st_rax(ops: &mut Asm, c: &Cache, rd: u8) {
    st(ops, c, rd, RAX);
}
