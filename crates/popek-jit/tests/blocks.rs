//! The JIT against the interpreter: small programs run on both must leave the same registers,
//! pc, instret, memory and exit.
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

use std::ptr::NonNull;

use popek_cpu::{Exception, Exit, Hart, HartConfig, Memory, NoBus, RamRegion};
use popek_jit::Jit;

const BASE: u64 = 0x8000_0000;
const PAGES: usize = 4;

// Encoders for the few formats the programs below use.
fn r(f7: u32, rs2: u32, rs1: u32, f3: u32, rd: u32, op: u32) -> u32 {
    f7 << 25 | rs2 << 20 | rs1 << 15 | f3 << 12 | rd << 7 | op
}
fn i(imm: i32, rs1: u32, f3: u32, rd: u32, op: u32) -> u32 {
    ((imm as u32) & 0xfff) << 20 | rs1 << 15 | f3 << 12 | rd << 7 | op
}
fn s(imm: i32, rs2: u32, rs1: u32, f3: u32) -> u32 {
    let imm = imm as u32;
    (imm >> 5 & 0x7f) << 25 | rs2 << 20 | rs1 << 15 | f3 << 12 | (imm & 0x1f) << 7 | 0x23
}
fn b(off: i32, rs2: u32, rs1: u32, f3: u32) -> u32 {
    let o = off as u32;
    (o >> 12 & 1) << 31
        | (o >> 5 & 0x3f) << 25
        | rs2 << 20
        | rs1 << 15
        | f3 << 12
        | (o >> 1 & 0xf) << 8
        | (o >> 11 & 1) << 7
        | 0x63
}
fn jal(rd: u32, off: i32) -> u32 {
    let o = off as u32;
    (o >> 20 & 1) << 31
        | (o >> 1 & 0x3ff) << 21
        | (o >> 11 & 1) << 20
        | (o >> 12 & 0xff) << 12
        | rd << 7
        | 0x6f
}
fn addi(rd: u32, rs1: u32, imm: i32) -> u32 {
    i(imm, rs1, 0, rd, 0x13)
}
fn lui(rd: u32, imm20: u32) -> u32 {
    imm20 << 12 | rd << 7 | 0x37
}
/// `fld f[rd], off(x1)`: the FP tests address their operands from `x1`.
fn fld(rd: u32, off: i32) -> u32 {
    i(off, 1, 3, rd, 0x07)
}
/// A double-precision op with `funct7` `f7` and the dynamic rounding mode (`frm`).
fn fop_dyn(f7: u32, rs2: u32, rs1: u32, rd: u32) -> u32 {
    r(f7, rs2, rs1, 7, rd, 0x53)
}
/// AMO with `funct5` `f5` (aq set), word or doubleword (`wide`).
fn amo(f5: u32, wide: bool, rd: u32, rs2: u32, rs1: u32) -> u32 {
    f5 << 27 | 1 << 26 | rs2 << 20 | rs1 << 15 | (2 + wide as u32) << 12 | rd << 7 | 0x2f
}
const ECALL: u32 = 0x73;
const FENCE_I: u32 = 0x100f;

/// Guest RAM of `PAGES` pages at `BASE`, with code placed at byte offsets.
struct Ram(Vec<u64>);

impl Ram {
    fn new() -> Ram {
        Ram(vec![0; PAGES * 512])
    }
    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the Vec<u64> is PAGES * 4096 bytes of plain memory.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr() as *mut u8, PAGES * 4096) }
    }
    fn put(&mut self, off: usize, code: &[u32]) {
        for (k, w) in code.iter().enumerate() {
            self.bytes()[off + 4 * k..off + 4 * k + 4].copy_from_slice(&w.to_le_bytes());
        }
    }
    fn put16(&mut self, off: usize, h: u16) {
        self.bytes()[off..off + 2].copy_from_slice(&h.to_le_bytes());
    }
}

/// The result of one run: final registers, pc, instret, exits seen and memory.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    x: Vec<u64>,
    f: Vec<u64>,
    mstatus: u64,
    fcsr: u64,
    pc: u64,
    instret: u64,
    exits: Vec<Exit>,
    mem: Vec<u64>,
}

/// Which engine [`run`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Eng {
    Interp,
    Jit,
    /// The JIT, every block checked against the interpreter as it runs.
    Verify,
    /// The JIT told to expect the data TLB's addend: the right one for this RAM (true) or a
    /// wrong one.
    JitExpectingAddend(bool),
    /// The JIT on a hart required to enter only pages at one addend
    /// (`Hart::require_data_addend`): the right one or a wrong one.
    JitOnHartRequiringAddend(bool),
    /// The JIT told to expect the addend of untranslated addresses (these harts run with
    /// `satp` Bare): the right one or a wrong one.
    JitExpectingBareAddend(bool),
    /// The JIT translating a block at its nth start (the interpreter runs it until then,
    /// counting its starts itself, and hands it over at the nth).
    JitAfter(u32),
}

/// A user-mode hart on `ram`, at `BASE`.
///
/// # Safety
/// `ram` must outlive the hart.
unsafe fn user_hart(ram: &mut Ram) -> Hart {
    // SAFETY: per this function's contract.
    let region = unsafe {
        RamRegion::new(
            BASE,
            (PAGES * 4096) as u64,
            NonNull::new(ram.0.as_mut_ptr() as *mut u8).unwrap(),
        )
    };
    let mut hart = Hart::new(HartConfig::user(), Memory::new(vec![region]).unwrap());
    hart.set_pc(BASE);
    hart
}

/// Run a copy of `ram` from `BASE` until an exit other than `Budget`/`Ecall` or `max_ecalls`
/// ecalls, on engine `eng`; `budget` per call.
fn run(ram: &Ram, eng: Eng, budget: u64, max_ecalls: usize) -> (Outcome, Option<Jit>) {
    let mut mem = Ram(ram.0.clone());
    // SAFETY: `mem` outlives the hart, which is dropped at the end of this function.
    let mut hart = unsafe { user_hart(&mut mem) };
    let mut engine = match eng {
        Eng::Interp => None,
        Eng::Jit => Some(Jit::new().unwrap()),
        Eng::JitExpectingAddend(right) => {
            let mut jit = Jit::new().unwrap();
            // This copy's RAM is flat: host = guest + (its address - BASE) everywhere.
            let addend = (mem.0.as_ptr() as u64).wrapping_sub(BASE);
            jit.expect_data_addend(if right { addend } else { addend ^ 1 << 40 });
            Some(jit)
        }
        Eng::JitOnHartRequiringAddend(right) => {
            let addend = (mem.0.as_ptr() as u64).wrapping_sub(BASE);
            hart.require_data_addend(if right { addend } else { addend ^ 1 << 40 });
            Some(Jit::new().unwrap())
        }
        Eng::JitExpectingBareAddend(right) => {
            let mut jit = Jit::new().unwrap();
            let addend = (mem.0.as_ptr() as u64).wrapping_sub(BASE);
            jit.expect_bare_data_addend(if right { addend } else { addend ^ 1 << 40 });
            Some(jit)
        }
        Eng::JitAfter(n) => Some(Jit::new().unwrap().translating_after(n)),
        Eng::Verify => Some(Jit::verifying(1 << 20).unwrap()),
    };
    let mut exits = Vec::new();
    let mut ecalls = 0;
    for _ in 0..100_000 {
        let e = match engine.as_mut() {
            Some(j) => {
                let e = hart.run_with(&mut NoBus, budget, j);
                assert_eq!(j.take_divergence(), None);
                e
            }
            None => hart.run(&mut NoBus, budget),
        };
        if e == Exit::Budget {
            continue;
        }
        exits.push(e);
        if e == Exit::Ecall && ecalls + 1 < max_ecalls {
            ecalls += 1;
            continue;
        }
        break;
    }
    let out = Outcome {
        x: (0..32).map(|k| hart.xreg(k)).collect(),
        f: (0..32).map(|k| hart.freg(k)).collect(),
        mstatus: hart.csrs().mstatus,
        fcsr: hart.csrs().fcsr(),
        pc: hart.pc(),
        instret: hart.instret(),
        exits,
        mem: mem.0.clone(),
    };
    drop(hart);
    (out, engine)
}

/// The JIT's counts after running `ram` to its first ecall.
fn jit_stats(ram: &Ram) -> popek_jit::JitStats {
    run(ram, Eng::Jit, 1 << 20, 1).1.expect("a JIT ran").stats()
}

/// Run on both engines with several budgets, and under `--engine verify`, and check they
/// agree; returns the interpreter's outcome.
fn same(ram: &Ram, max_ecalls: usize) -> Outcome {
    let (want, _) = run(ram, Eng::Interp, 1 << 20, max_ecalls);
    let runs = [1, 3, 7, 1000, 1 << 20]
        .map(|b| (Eng::Jit, b))
        .into_iter()
        .chain([(Eng::Verify, 1 << 20)]);
    for (eng, budget) in runs {
        let (got, jit) = run(ram, eng, budget, max_ecalls);
        let diff = (0..got.mem.len()).find(|&k| got.mem[k] != want.mem[k]);
        assert_eq!(
            diff, None,
            "memory differs (u64 index), {eng:?}, budget {budget}"
        );
        assert_eq!(
            (
                &got.x,
                &got.f,
                got.mstatus,
                got.fcsr,
                got.pc,
                got.instret,
                &got.exits
            ),
            (
                &want.x,
                &want.f,
                want.mstatus,
                want.fcsr,
                want.pc,
                want.instret,
                &want.exits
            ),
            "{eng:?}, budget {budget}"
        );
        let stats = jit.unwrap().stats();
        if budget >= 1000 {
            assert!(stats.insns > 0, "the JIT translated nothing");
        }
        if eng == Eng::Verify {
            assert!(stats.verified > 0, "nothing verified: {stats:?}");
        }
    }
    want
}

/// With a block translated only at its 8th start, the interpreter runs a program's first
/// rounds of a loop (taking its branches, stores and a call-like jump within the page)
/// and the JIT the rest, with the same results on every budget; code that starts fewer times
/// is never translated.
#[test]
fn blocks_turn_hot_at_their_nth_start_with_the_same_results() {
    let mut ram = Ram::new();
    let mut code = vec![
        addi(5, 0, 0),           // x5 = 0: sum
        addi(28, 0, 30),         // x28 = 30: loop counter
        0x17 | 6 << 7 | 2 << 12, // auipc x6, 2: x6 = a data page
        addi(7, 0, 0),           // x7 = 0: odd-round counter
    ];
    let loop_start = code.len();
    code.extend([
        r(0, 28, 5, 0, 5, 0x33), // add x5, x5, x28
        i(1, 28, 7, 29, 0x13),   // andi x29, x28, 1
        b(8, 0, 29, 0),          // beq x29, x0, +8 (even rounds skip the next)
        addi(7, 7, 1),           // x7 += 1
        s(0, 5, 6, 3),           // sd x5, 0(x6)
        jal(1, 8),               // jal ra, +8 (over the next)
        ECALL,                   // never reached
        addi(28, 28, -1),        // x28 -= 1
    ]);
    let here = code.len();
    code.push(b(((loop_start as i32) - here as i32) * 4, 0, 28, 1)); // bne x28, x0, loop
    code.push(addi(30, 5, 1)); // after the loop: runs once
    code.push(addi(31, 7, 2));
    code.push(ECALL);
    ram.put(0, &code);
    let (want, _) = run(&ram, Eng::Interp, 1 << 20, 1);
    for budget in [1, 3, 7, 1000, 1 << 20] {
        let (got, jit) = run(&ram, Eng::JitAfter(8), budget, 1);
        assert_eq!(got, want, "budget {budget}");
        let stats = jit.expect("a JIT ran").stats();
        if budget >= 1000 {
            assert!(stats.insns > 0, "the loop turned hot: {stats:?}");
        }
        assert!(
            stats.insns < 3 * code.len() as u64,
            "only the loop's blocks were translated: {stats:?}"
        );
    }
    assert_eq!(want.x[5], (1..=30).sum::<u64>());
    assert_eq!(want.x[7], 15);
    assert_eq!(want.exits, vec![Exit::Ecall]);
}

/// A loop exercising every translated ALU, M and branch operation on awkward values.
#[test]
fn alu_loop_matches_interpreter() {
    let mut ram = Ram::new();
    let mut code = vec![
        lui(5, 0x80000), // x5 = 0xffff_ffff_8000_0000
        addi(6, 0, -7),  // x6 = -7
        addi(7, 0, 3),   // x7 = 3
        addi(28, 0, 20), // loop counter
        addi(29, 0, 0),  // accumulator
    ];
    let loop_start = code.len();
    // All R-type ALU and M ops on (x5, x6) and (x6, x7), folded into x29.
    let ops: [(u32, u32, u32); 18] = [
        (0, 0, 0x33),    // add
        (0x20, 0, 0x33), // sub
        (0, 1, 0x33),    // sll
        (0, 2, 0x33),    // slt
        (0, 3, 0x33),    // sltu
        (0, 4, 0x33),    // xor
        (0, 5, 0x33),    // srl
        (0x20, 5, 0x33), // sra
        (0, 6, 0x33),    // or
        (0, 7, 0x33),    // and
        (1, 0, 0x33),    // mul
        (1, 1, 0x33),    // mulh
        (1, 2, 0x33),    // mulhsu
        (1, 3, 0x33),    // mulhu
        (1, 4, 0x33),    // div
        (1, 5, 0x33),    // divu
        (1, 6, 0x33),    // rem
        (1, 7, 0x33),    // remu
    ];
    for (f7, f3, op) in ops {
        code.push(r(f7, 6, 5, f3, 30, op));
        code.push(r(0, 30, 29, 4, 29, 0x33)); // xor x29, x29, x30
        code.push(r(f7, 0, 6, f3, 31, op)); // rs2 = x0: division by zero and friends
        code.push(r(0, 31, 29, 0, 29, 0x33)); // add x29, x29, x31
    }
    for (f7, f3) in [
        (0, 0),
        (0x20, 0),
        (0, 1),
        (0, 5),
        (0x20, 5),
        (1, 0),
        (1, 4),
        (1, 5),
        (1, 6),
        (1, 7),
    ] {
        code.push(r(f7, 7, 6, f3, 30, 0x3b)); // *w forms
        code.push(r(0, 30, 29, 4, 29, 0x33));
    }
    for (f3, imm) in [
        (0, -2048),
        (2, -1),
        (3, -1),
        (4, 0x555),
        (6, -256),
        (7, 0x7f0),
    ] {
        code.push(i(imm, 5, f3, 30, 0x13));
        code.push(r(0, 30, 29, 0, 29, 0x33));
    }
    code.push(i(63, 5, 1, 30, 0x13)); // slli 63
    code.push(i(0x400 | 13, 5, 5, 31, 0x13)); // srai 13
    code.push(i(7, 6, 0, 30, 0x1b)); // addiw
    code.push(i(0x400 | 31, 5, 5, 30, 0x1b)); // sraiw 31
    code.push(r(0, 30, 29, 0, 29, 0x33));
    code.push(r(0, 31, 29, 4, 29, 0x33));
    code.push(0x0000_0017 | 10 << 7); // auipc x10, 0
    code.push(addi(5, 5, 0x123)); // vary the inputs each round
    code.push(r(0, 29, 6, 4, 6, 0x33));
    code.push(addi(28, 28, -1));
    let here = code.len();
    code.push(b(((loop_start as i32) - here as i32) * 4, 0, 28, 1)); // bne x28, x0, loop
    code.push(ECALL);
    ram.put(0, &code);
    let out = same(&ram, 1);
    assert_eq!(out.exits, vec![Exit::Ecall]);
    assert_ne!(out.x[29], 0);
}

/// Every placement of an ALU instruction's registers the translator tells apart, on the
/// interpreter's results: x0, registers pinned across blocks (in callee- and caller-saved host
/// registers), ones a block caches and ones it leaves in memory, as destination and as either
/// source (`rd` = `rs1`, `rd` = `rs2` of a non-commuting `sub`, `rs1` = `rs2`), followed by a
/// store of the result from wherever it lives; with branches, a division helper call and an
/// AMO through the step helper between them, so pinned registers cross chained blocks, calls
/// and the step helper.
#[test]
fn register_placements_match_interpreter() {
    // x0; pinned a5 (r15), a3 (rbp), sp (r8), a0 (r9); others cached or not by use counts.
    const REGS: [u32; 10] = [0, 15, 13, 2, 10, 5, 6, 7, 20, 21];
    // (funct7, funct3, opcode) of the R-type forms, then I-type ones (imm from the sequence).
    const RR: [(u32, u32, u32); 9] = [
        (0, 0, 0x33),    // add
        (0x20, 0, 0x33), // sub
        (0, 4, 0x33),    // xor
        (0, 6, 0x33),    // or
        (0, 7, 0x33),    // and
        (1, 0, 0x33),    // mul
        (0, 0, 0x3b),    // addw
        (0x20, 0, 0x3b), // subw
        (1, 0, 0x3b),    // mulw
    ];
    const RI: [(u32, u32); 9] = [
        (0, 0x13), // addi
        (4, 0x13), // xori
        (6, 0x13), // ori
        (7, 0x13), // andi
        (1, 0x13), // slli
        (5, 0x13), // srli / srai
        (0, 0x1b), // addiw (sext.w with imm 0)
        (1, 0x1b), // slliw
        (5, 0x1b), // srliw / sraiw
    ];
    let mut ram = Ram::new();
    let data = 3 * 4096;
    // x3 = the data page (BASE + 3 pages); every listed register gets an awkward value.
    let mut code = base_plus(3, data as u32).to_vec();
    for (k, &r) in REGS.iter().enumerate().skip(1) {
        code.push(lui(r, 0x89abc ^ (k as u32 * 0x1111) & 0xfffff));
        code.push(addi(r, r, -0x765 + 97 * k as i32));
    }
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    for k in 0..700 {
        let (rd, rs1, rs2) = (REGS[next(10)], REGS[next(10)], REGS[next(10)]);
        let (rd, rs1, rs2) = match k % 5 {
            0 => (rd, rd, rs2),  // rd = rs1
            1 => (rd, rs1, rd),  // rd = rs2
            2 => (rd, rs1, rs1), // rs1 = rs2
            _ => (rd, rs1, rs2),
        };
        if next(2) == 0 {
            let (f7, f3, op) = RR[next(RR.len())];
            code.push(r(f7, rs2, rs1, f3, rd, op));
        } else {
            let (f3, op) = RI[next(RI.len())];
            let imm = match (f3, op) {
                // Bit 10 makes srli an srai (and slli illegal).
                (1, 0x13) => next(64) as i32,
                (5, 0x13) => (next(64) | next(2) << 10) as i32,
                (1, 0x1b) => next(32) as i32,
                (5, 0x1b) => (next(32) | next(2) << 10) as i32,
                (0, 0x1b) if next(2) == 0 => 0,
                _ => next(4096) as i32 - 2048,
            };
            code.push(i(imm, rs1, f3, rd, op));
        }
        code.push(s(8 * (k % 500), rd, 3, 3)); // sd rd, off(x3)
        if k % 4 == 0 {
            // Fresh bits, as ands and multiplications drive values towards zero.
            code.push(lui(REGS[1 + next(9)], next(1 << 20) as u32));
        }
        match next(16) {
            0 => code.push(b(8, rs2, rs1, [0, 1, 4, 5, 6, 7][next(6)])), // skip one
            1 => code.push(r(1, rs2, rs1, 4, rd, 0x33)),                 // div
            2 => code.push(r(0, rs2, 3, 3, rd, 0x2f)),                   // amoadd.d rd, rs2, (x3)
            3 => code.push(jal(0, 4)),                                   // to the next one
            _ => {}
        }
    }
    code.push(ECALL);
    assert!(
        code.len() * 4 <= data,
        "the program runs into its data page"
    );
    ram.put(0, &code);
    let out = same(&ram, 1);
    assert_eq!(out.exits, vec![Exit::Ecall]);
    let stored = &out.mem[data / 8..data / 8 + 500];
    // Many results are 0 (x0, `sub x, y, y`, shifts out), but most are not.
    let distinct: std::collections::HashSet<_> = stored.iter().collect();
    assert!(distinct.len() > 100, "{stored:x?}");
}

/// A JIT told to expect the data TLB's addend (as a process VM's flat address space lets it,
/// or a board's RAM while translation is off) gives the interpreter's results whether the
/// expectation is right (this RAM is flat: one addend for all of it) or wrong (every access
/// then takes the slow path).
#[test]
fn expected_data_addend_right_or_wrong() {
    let mut ram = Ram::new();
    let code = vec![
        lui(5, 0x80002),
        i(32, 5, 1, 5, 0x13), // slli x5, x5, 32
        i(32, 5, 5, 5, 0x13), // srli x5, x5, 32: x5 = BASE + 2 pages
        addi(6, 0, -3),
        s(4094, 6, 5, 3),       // sd x6 across the end of page 2
        i(4094, 5, 3, 7, 0x03), // ld x7 back across it
        s(8, 7, 5, 2),          // sw x7, 8(x5)
        i(8, 5, 4, 8, 0x03),    // lbu x8, 8(x5)
        i(0, 0, 3, 9, 0x03),    // ld x9, 0(x0): no RAM at address 0
        ECALL,
    ];
    ram.put(0, &code);
    let (want, _) = run(&ram, Eng::Interp, 1 << 20, 1);
    assert_load_fault_at_zero(&want, BASE + 32, 8);
    for right in [true, false] {
        let (got, _) = run(&ram, Eng::JitExpectingAddend(right), 1 << 20, 1);
        assert_eq!(got, want, "expectation right: {right}");
        let (got, _) = run(&ram, Eng::JitExpectingBareAddend(right), 1 << 20, 1);
        assert_eq!(got, want, "bare expectation right: {right}");
        let (got, jit) = run(&ram, Eng::JitOnHartRequiringAddend(right), 1 << 20, 1);
        assert_eq!(got, want, "requirement right: {right}");
        // Five accesses, the last to no RAM: with the right addend, the two crossing a page
        // (which enter both pages, so the next two hit) and the fault reach a helper; with a
        // wrong one, no page is ever entered and all do.
        let slow = jit.expect("a JIT ran").stats().slow_accesses;
        assert_eq!(
            slow,
            if right { 3 } else { 5 },
            "requirement right: {right}"
        );
    }
}

/// A fresh hart's data TLB entries are all zero (see `Mmu::ready_data_context`): loads from
/// page 0 and one wrapping around the address space (first byte in the last page, last byte
/// in page 0) fault on both engines instead of hitting a zero entry.
#[test]
fn loads_at_page_zero_and_wrapping_fault_on_a_fresh_hart() {
    for (load, addr) in [
        (i(8, 0, 3, 7, 0x03), 8),             // ld x7, 8(x0)
        (i(-2, 0, 2, 7, 0x03), u64::MAX - 1), // lw x7, -2(x0): 4 bytes from 2^64 - 2
        (i(-8, 0, 3, 7, 0x03), u64::MAX - 7), // ld x7, -8(x0): the last page alone
    ] {
        let mut ram = Ram::new();
        ram.put(0, &[addi(5, 0, 1), load, ECALL]);
        for eng in [Eng::Interp, Eng::Jit, Eng::JitExpectingAddend(true)] {
            let (out, _) = run(&ram, eng, 1 << 20, 1);
            assert_eq!(
                out.exits,
                vec![Exit::Trap(popek_cpu::Trap::new(
                    Exception::LoadAccessFault,
                    addr
                ))],
                "{eng:?}, address {addr:#x}"
            );
            assert_eq!((out.pc, out.instret), (BASE + 4, 1), "{eng:?}");
        }
    }
}

/// A load fault in the middle of a block: pc at the load, instret counting only what retired,
/// earlier register writes done, later ones not.
/// The run stopped at its only exit, a load access fault at address 0, with the faulting
/// instruction at `pc` and `instret` instructions retired before it.
fn assert_load_fault_at_zero(out: &Outcome, pc: u64, instret: u64) {
    assert_eq!(
        out.exits,
        vec![Exit::Trap(popek_cpu::Trap::new(
            Exception::LoadAccessFault,
            0
        ))]
    );
    assert_eq!(out.pc, pc);
    assert_eq!(out.instret, instret);
}

#[test]
fn fault_mid_block_is_precise() {
    let mut ram = Ram::new();
    ram.put(
        0,
        &[
            addi(5, 0, 11),
            addi(6, 0, 22),
            i(0, 0, 3, 7, 0x03), // ld x7, 0(x0): no RAM at address 0
            addi(8, 0, 33),
            ECALL,
        ],
    );
    let out = same(&ram, 1);
    assert_load_fault_at_zero(&out, BASE + 8, 2);
    assert_eq!((out.x[5], out.x[6], out.x[8]), (11, 22, 0));
}

/// Registers the block keeps in host registers (written more than once, around a division
/// helper call that clobbers caller-saved registers) are in the state when a load faults: the
/// write-back cache stores them before every exit.
#[test]
fn cached_registers_are_exact_at_a_fault() {
    let mut ram = Ram::new();
    ram.put(
        0,
        &[
            addi(5, 0, 11),
            addi(5, 5, 1),
            addi(6, 5, 1),
            addi(6, 6, 1),
            r(1, 5, 6, 4, 7, 0x33), // div x7, x6, x5
            addi(7, 7, 5),
            i(0, 0, 3, 8, 0x03), // ld x8, 0(x0): no RAM at address 0
            addi(5, 0, 99),
            ECALL,
        ],
    );
    let out = same(&ram, 1);
    assert_load_fault_at_zero(&out, BASE + 24, 6);
    assert_eq!((out.x[5], out.x[6], out.x[7], out.x[8]), (12, 14, 6, 0));
}

/// Loads and stores of every size and signedness, in RAM and across a page boundary, plus a
/// faulting store that must leave memory untouched.
#[test]
fn loads_and_stores_match_interpreter() {
    let mut ram = Ram::new();
    let data = 2 * 4096; // page 2
    let mut code = vec![
        lui(5, 0x80002),
        i(32, 5, 1, 5, 0x13), // slli x5, x5, 32
        i(32, 5, 5, 5, 0x13), // srli x5, x5, 32: x5 = BASE + 2 pages
        lui(6, 0xfedcb),
        addi(6, 6, -0x123), // x6 = 0xffff_ffff_fedc_aedd
    ];
    for (k, f3) in [0u32, 1, 2, 3].iter().enumerate() {
        code.push(s(8 * k as i32 + 1, 6, 5, *f3)); // misaligned stores
    }
    for (k, f3) in [0u32, 1, 2, 3, 4, 5, 6].iter().enumerate() {
        code.push(i(3 * k as i32 + 1, 5, *f3, 10 + k as u32, 0x03));
    }
    // FP loads and stores of both sizes inside the block (NaN boxing, FS dirty).
    code.push(i(8, 5, 3, 1, 0x07)); // fld f1, 8(x5)
    code.push(i(12, 5, 2, 2, 0x07)); // flw f2, 12(x5)
    code.push(s(40, 1, 5, 3) & !0x7f | 0x27); // fsd f1, 40(x5)
    code.push(s(51, 2, 5, 2) & !0x7f | 0x27); // fsw f2, 51(x5)
    code.push(s(4093, 6, 5, 3)); // sd across into page 3
    code.push(i(4093, 5, 3, 17, 0x03));
    code.push(i(-6, 5, 2, 18, 0x03)); // lw from page 1
    code.push(i(0, 0, 2, 0, 0x03)); // lw x0: must still fault
    code.push(ECALL);
    ram.put(0, &code);
    ram.bytes()[data - 8..data].copy_from_slice(&0x8877_6655_4433_2211u64.to_le_bytes());
    let out = same(&ram, 1);
    assert!(matches!(out.exits[0], Exit::Trap(t) if t.cause == Exception::LoadAccessFault));
    assert_eq!(out.x[17], 0xffff_ffff_fedc_aedd);
}

/// `rd` = `BASE + off`, zero-extended (four instructions).
fn base_plus(rd: u32, off: u32) -> [u32; 4] {
    let v = 0x8000_0000u32 + off;
    [
        lui(rd, (v + 0x800) >> 12),
        addi(rd, rd, ((v & 0xfff) as i32) << 20 >> 20),
        // Clear the sign extension: slli 32, srli 32.
        i(32, rd, 1, rd, 0x13),
        i(32, rd, 5, rd, 0x13),
    ]
}

/// Runs of stores and of loads through one base register (checked against the TLB once):
/// inside one page, across a page boundary (the slow path), a load overwriting the base last,
/// and a run whose third store faults at the end of RAM, which must leave the first two
/// written and stop exactly at the third.
#[test]
fn runs_of_accesses_match_interpreter() {
    let mut ram = Ram::new();
    let mut code = Vec::new();
    for (r, v) in [
        (10, 0x12345),
        (11, 0xfedcb),
        (12, 0x80808),
        (13, 0x7f7f7),
        (14, 0xabcde),
    ] {
        code.push(lui(r, v));
        code.push(addi(r, r, -0x321 + r as i32));
    }
    for (r, off) in [(2, 3 * 4096 + 2048), (6, 3 * 4096 - 12), (7, 4 * 4096 - 16)] {
        code.extend(base_plus(r, off));
    }
    // Twice (the second time the TLB has the pages): inside page 3, stores of every size and
    // loads back; across the end of page 2, where the run's check fails and the slow path
    // does each access.
    code.push(addi(29, 0, 2));
    let top = code.len();
    code.extend([
        s(-16, 10, 2, 3),       // sd x10, -16(sp)
        s(0, 11, 2, 3),         // sd x11, 0(sp)
        s(8, 12, 2, 2),         // sw x12, 8(sp)
        s(12, 13, 2, 1),        // sh x13, 12(sp)
        s(14, 14, 2, 0),        // sb x14, 14(sp)
        i(-16, 2, 3, 20, 0x03), // ld x20, -16(sp)
        i(0, 2, 6, 21, 0x03),   // lwu x21, 0(sp)
        i(8, 2, 2, 22, 0x03),   // lw x22, 8(sp)
        i(12, 2, 5, 23, 0x03),  // lhu x23, 12(sp)
        i(14, 2, 0, 24, 0x03),  // lb x24, 14(sp)
        i(1, 2, 1, 25, 0x03),   // lh x25, 1(sp) (misaligned)
        s(0, 10, 6, 3),         // sd x10, 0(x6)
        s(8, 11, 6, 3),         // sd x11, 8(x6): page 3
        i(0, 6, 3, 26, 0x03),   // ld x26, 0(x6)
        i(4, 6, 3, 27, 0x03),   // ld x27, 4(x6): straddles
        i(8, 6, 3, 28, 0x03),   // ld x28, 8(x6)
        addi(10, 10, 1),
        addi(29, 29, -1),
    ]);
    let here = code.len();
    code.push(b(4 * (top as i32 - here as i32), 0, 29, 1)); // bne x29, x0, top
    code.extend([
        i(0, 2, 3, 2, 0x03), // ld sp, 0(sp): a run of one
        i(0, 6, 3, 5, 0x03), // ld x5, 0(x6)
        i(0, 6, 3, 6, 0x03), // ld x6, 0(x6): a run overwriting its base last
        // At the end of RAM: the third store faults.
        s(0, 10, 7, 3),  // sd x10, 0(x7)
        s(8, 11, 7, 3),  // sd x11, 8(x7)
        s(16, 12, 7, 3), // sd x12, 16(x7): past RAM
        s(24, 13, 7, 3),
        ECALL,
    ]);
    ram.put(0, &code);
    let out = same(&ram, 1);
    let fault_pc = BASE + 4 * (code.len() as u64 - 3);
    assert_eq!(
        out.exits,
        vec![Exit::Trap(popek_cpu::Trap::new(
            Exception::StoreAccessFault,
            BASE + 4 * 4096
        ))]
    );
    assert_eq!(out.pc, fault_pc);
    // The loop's body (and branch) ran once more than the program's length counts.
    let body = (here - top + 1) as u64;
    assert_eq!(out.instret, code.len() as u64 - 3 + body);
    assert_eq!(out.x[2], out.x[11]);
    assert_eq!(
        out.x[6], out.x[5],
        "the last load of the run overwrote the base"
    );
    assert_eq!(
        (out.x[20], out.x[26], out.x[28]),
        (out.x[10] - 1, out.x[10] - 1, out.x[11])
    );
    let end = out.mem.len();
    assert_eq!((out.mem[end - 2], out.mem[end - 1]), (out.x[10], out.x[11]));
}

/// Code that rewrites an instruction of its own block, and one of another block it already
/// ran: both must take effect at once, like on the interpreter.
/// RAM with `code` at its start, where the loop from instruction `top` to the end of `code`
/// runs x29 times (x29 set before `top`), then an ecall.
fn counted_loop(mut code: Vec<u32>, top: usize) -> Ram {
    code.push(addi(29, 29, -1));
    let here = code.len();
    code.push(b(4 * (top as i32 - here as i32), 0, 29, 1)); // bne x29, x0, top
    code.push(ECALL);
    let mut ram = Ram::new();
    ram.put(0, &code);
    ram
}

/// A run of stores and one of loads across a page boundary, in a loop: once both pages' TLB
/// entries are there (after the first time round, through the helpers), the runs stay in
/// translated code, as within one page, and compute what the interpreter does.
#[test]
fn runs_across_a_page_boundary_stay_inline() {
    let mut code = base_plus(6, 3 * 4096 - 8).to_vec();
    code.extend([lui(10, 0x12345), lui(11, 0xfedcb), addi(29, 0, 100)]);
    let top = code.len();
    code.extend([
        s(0, 10, 6, 3),            // sd x10, 0(x6): page 2
        s(8, 11, 6, 3),            // sd x11, 8(x6): page 3
        i(0, 6, 3, 12, 0x03),      // ld x12, 0(x6)
        i(8, 6, 3, 13, 0x03),      // ld x13, 8(x6)
        r(0, 12, 13, 0, 14, 0x33), // add x14, x13, x12
        addi(10, 10, 3),
    ]);
    let ram = counted_loop(code, top);
    let out = same(&ram, 1);
    assert_eq!(
        out.x[14],
        (0x12345000u64 + 99 * 3).wrapping_add(0xffff_ffff_fedc_b000)
    );
    // The first time round: the two stores fill the write entries, the two loads the read ones.
    assert_eq!(jit_stats(&ram).slow_accesses, 4);
}

/// A run of stores into a page the TLB does not have yet (a kernel clearing fresh pages):
/// only the first store goes through its helper, which fills the entry; the rest of the run
/// is then checked again and done in translated code.
#[test]
fn a_run_missing_the_tlb_does_the_rest_inline_after_its_first_access() {
    let mut code = base_plus(6, 4096).to_vec();
    code.extend([lui(7, 1), lui(10, 0xabcde), addi(29, 0, 3)]);
    let top = code.len();
    code.extend((0..8).map(|k| s(8 * k, 10, 6, 3))); // sd x10, 8k(x6)
    code.extend([
        r(0, 7, 6, 0, 6, 0x33), // add x6, x6, x7: the next page
        addi(10, 10, 1),
    ]);
    let ram = counted_loop(code, top);
    let out = same(&ram, 1);
    for page in 1..4 {
        let v = 0xffff_ffff_abcd_e000u64 + page as u64 - 1;
        assert_eq!(&out.mem[page * 512..page * 512 + 8], &[v; 8]);
    }
    assert_eq!(jit_stats(&ram).slow_accesses, 3, "one store a page");
}

#[test]
fn self_modifying_code() {
    let mut ram = Ram::new();
    let new_insn = addi(10, 10, 100);
    let code = vec![
        lui(5, new_insn >> 12),
        addi(
            5,
            5,
            (new_insn & 0xfff) as i32 - if new_insn & 0x800 != 0 { 4096 } else { 0 },
        ),
        0x0000_0317,    // auipc x6, 0 (x6 = BASE + 8)
        addi(28, 0, 2), // two rounds
        // loop (BASE + 16):
        addi(10, 10, 1), // rewritten below to addi x10, x10, 100
        s(24, 5, 6, 2),  // sw x5, 24(x6): patches the next instruction but one (BASE + 32)
        addi(0, 0, 0),
        addi(11, 11, 1), // BASE + 28
        addi(12, 12, 1), // BASE + 32: replaced in this very block
        s(8, 5, 6, 2),   // sw x5, 8(x6): patches the loop's first instruction (BASE + 16)
        FENCE_I,
        addi(28, 28, -1),
        b(-32, 0, 28, 1), // bne x28, x0, loop
        ECALL,
    ];
    ram.put(0, &code);
    let out = same(&ram, 1);
    assert_eq!(out.x[12], 0);
    assert_eq!(out.x[10], 1 + 100 + 100 + 100);
}

/// Jumps and branches between pages, a 4-byte instruction straddling a page boundary and a
/// compressed instruction before it.
#[test]
fn branches_across_pages() {
    let mut ram = Ram::new();
    // Page 0: call into page 1, come back, branch forward into page 1 again, end.
    ram.put(
        0,
        &[
            addi(5, 0, 3),
            jal(1, 4096 - 4), // to BASE + 4096
            addi(5, 5, -1),
            b(4096 + 8 - 12, 0, 5, 1), // bne x5, x0, BASE + 4096 + 8
            ECALL,
        ],
    );
    // Page 1: a function at 0 returning with jalr; at 8, a path that jumps back to BASE + 8.
    ram.put(
        4096,
        &[
            addi(6, 6, 7),
            i(0, 1, 0, 0, 0x67), // jalr x0, 0(x1)
            addi(7, 7, 1),
            jal(0, -(4096 + 12) + 8), // to BASE + 8
        ],
    );
    let out = same(&ram, 1);
    assert_eq!(out.exits, vec![Exit::Ecall]);
    assert_eq!(out.x[6], 7);

    // End of page 2: c.addi x9, 1 at 4092, then a 4-byte addi straddling into page 3.
    let mut ram = Ram::new();
    ram.put(0, &[jal(0, 2 * 4096 + 4088)]);
    ram.put(2 * 4096 + 4088, &[addi(9, 9, 5)]);
    ram.put16(2 * 4096 + 4092, 0x0485); // c.addi x9, 1
    ram.put16(2 * 4096 + 4094, (addi(9, 9, 40) & 0xffff) as u16);
    ram.put16(3 * 4096, (addi(9, 9, 40) >> 16) as u16);
    ram.put(3 * 4096 + 2, &[ECALL]);
    let out = same(&ram, 1);
    assert_eq!(out.exits, vec![Exit::Ecall]);
    assert_eq!(out.x[9], 46);
}

/// Jumps within a page continue the block at their target: a `while` loop whose condition is
/// reached by a `j` (as compilers lay them out) runs as one block looping to itself, and a
/// followed `jal` still writes its link register, at every budget and under verify.
#[test]
fn jumps_within_a_page_continue_the_block() {
    let slli = |rd, rs1, sh| i(sh, rs1, 1, rd, 0x13);
    let mut ram = Ram::new();
    ram.put(
        0,
        &[
            addi(5, 0, 0),  // 0: i = 0
            addi(6, 0, 50), // 4: n = 50
            addi(7, 0, 1),  // 8: acc = 1
            jal(0, 28),     // 12: j cond (40)
            // body (16):
            r(0, 5, 7, 0, 7, 0x33), // 16: acc += i
            slli(8, 7, 3),          // 20: x8 = acc << 3
            r(0, 8, 7, 4, 7, 0x33), // 24: acc ^= x8
            addi(5, 5, 1),          // 28: i += 1
            jal(1, 8),              // 32: jal ra, cond (40), skipping 36
            addi(9, 0, 99),         // 36: never runs
            b(16 - 40, 6, 5, 4),    // 40 cond: blt i, n, body
            ECALL,                  // 44
        ],
    );
    let out = same(&ram, 1);
    assert_eq!(out.exits, vec![Exit::Ecall]);
    assert_eq!((out.x[5], out.x[9], out.x[1]), (50, 0, BASE + 36));
    // The prologue (through the first jump to the branch), the loop body (through the second
    // jump to the branch, looping to itself) and the ecall.
    assert_eq!(jit_stats(&ram).blocks, 3);
}

/// `fmv.d.x fd, rs1`: an FP register write (it makes `mstatus.FS` dirty).
fn fmv_d_x(fd: u32, rs1: u32) -> u32 {
    0xf200_0053 | rs1 << 15 | fd << 7
}

/// Forward branches inside a loop: the block goes on past each with its fall-through path,
/// and a taken one jumps ahead within the block, retiring exactly the instructions it did
/// not skip. One skips an FP write, so the FP write after its target must still make
/// `mstatus.FS` dirty (the user hart starts with it initial, and the first time round takes
/// that branch); one targets the middle of a run of stores, which has no place to join and
/// leaves the block. The whole loop is one block looping to itself.
#[test]
fn forward_branches_continue_the_block() {
    let mut code = base_plus(11, 2 * 4096).to_vec();
    code.push(addi(29, 0, 12));
    let top = code.len();
    code.extend([
        i(1, 29, 7, 6, 0x13),      // andi x6, x29, 1
        b(12, 0, 6, 0),            // beq x6, x0, L1 (skipping two)
        addi(7, 7, 5),             //   x7 += 5
        fmv_d_x(1, 7),             //   f1 = x7
        fmv_d_x(2, 29),            // L1: f2 = x29
        r(0, 7, 8, 0, 8, 0x33),    // add x8, x8, x7
        i(2, 29, 7, 6, 0x13),      // andi x6, x29, 2
        b(8, 0, 6, 1),             // bne x6, x0, L2 (skipping one)
        addi(9, 9, 1),             //   x9 += 1
        r(0, 29, 10, 0, 10, 0x33), // L2: add x10, x10, x29
        i(4, 29, 7, 6, 0x13),      // andi x6, x29, 4
        b(8, 0, 6, 1),             // bne x6, x0, into the run
        s(0, 10, 11, 3),           //   sd x10, 0(x11)
        s(8, 8, 11, 3),            // sd x8, 8(x11)
        s(16, 9, 11, 3),           // sd x9, 16(x11)
        addi(11, 11, 24),
    ]);
    let ram = counted_loop(code, top);
    let out = same(&ram, 1);
    // Odd x29 (6 of the 12) add 5 to x7; x9 counts the x29 with bit 1 clear (6 of them).
    assert_eq!((out.x[7], out.x[9], out.x[10]), (30, 6, 78));
    // The prologue (through the loop's first time round), the loop, the middle of the run
    // (entered from the branch into it) and the ecall.
    assert_eq!(jit_stats(&ram).blocks, 4);
}

/// An FP load in the middle of a block while `mstatus.FS` is off: an illegal-instruction trap
/// at exactly that instruction, as on the interpreter (a machine-mode hart with a handler).
/// With `mstatus.FS` off, an F/D instruction traps as illegal with the exact pc and bits,
/// whether it opens a block (after a jump) or sits in the middle of one, and whether the JIT
/// runs it inline (loads, stores, native arithmetic) or not.
#[test]
fn fp_off_traps_exactly_first_or_mid_block() {
    let fld = i(0, 1, 3, 1, 0x07); // fld f1, 0(x1)
    let fsd = s(8, 1, 1, 3) & !0x7f | 0x27; // fsd f1, 8(x1)
    let fadd = r(0x01, 2, 1, 7, 3, 0x53); // fadd.d f3, f1, f2
    let fcvt = r(0x61, 0, 1, 1, 5, 0x53); // fcvt.w.d x5, f1, rtz (stepped)
    let frflags = csr(2, 5, 0, 0x001); // csrr x5, fflags (translated)
    let fsrm = csr(1, 0, 5, 0x002); // csrw frm, x5 (translated)
    for insn in [fld, fsd, fadd, fcvt, frflags, fsrm] {
        for first in [false, true] {
            let lead = if first { jal(0, 4) } else { addi(6, 0, 8) };
            fp_off_trap(insn, lead);
        }
    }
}

/// Run `insn` with FP off after `lead` (which it must follow in sequence) on both engines and
/// check the trap.
fn fp_off_trap(insn: u32, lead: u32) {
    let mut ram = Ram::new();
    ram.put(
        0,
        &[
            0x0000_0097,         // auipc x1, 0
            addi(1, 1, 64),      // handler at BASE + 64
            csr(1, 0, 1, 0x305), // csrw mtvec, x1
            lui(2, 6),           // x2 = mstatus.FS
            csr(3, 0, 2, 0x300), // csrc mstatus, x2
            addi(5, 0, 7),
            lead,
            insn, // illegal
            addi(7, 0, 9),
        ],
    );
    ram.put(
        64,
        &[
            csr(2, 20, 0, 0x342), // csrr x20, mcause
            csr(2, 21, 0, 0x343), // csrr x21, mtval
            csr(2, 22, 0, 0x341), // csrr x22, mepc
            0x1050_0073,          // wfi
        ],
    );
    let mut outs = Vec::new();
    for jit in [false, true] {
        let mut mem = Ram(ram.0.clone());
        // SAFETY: `mem` outlives the hart, dropped at the end of this iteration.
        let region = unsafe {
            RamRegion::new(
                BASE,
                (PAGES * 4096) as u64,
                NonNull::new(mem.0.as_mut_ptr() as *mut u8).unwrap(),
            )
        };
        let mut hart = Hart::new(
            HartConfig::machine(0, false),
            Memory::new(vec![region]).unwrap(),
        );
        hart.set_pc(BASE);
        let mut engine = Jit::new().unwrap();
        let exit = if jit {
            hart.run_with(&mut NoBus, 1000, &mut engine)
        } else {
            hart.run(&mut NoBus, 1000)
        };
        outs.push((
            exit,
            (0..32).map(|k| hart.xreg(k)).collect::<Vec<_>>(),
            hart.instret(),
        ));
        if jit {
            assert!(engine.stats().insns > 0);
        }
    }
    assert_eq!(outs[0], outs[1], "insn {insn:#x} after {lead:#x}");
    let (exit, x, _) = &outs[0];
    assert_eq!(*exit, Exit::Wfi);
    assert_eq!((x[20], x[21], x[22]), (2, insn as u64, BASE + 28));
    assert_eq!((x[5], x[7]), (7, 0));
}

/// F/D arithmetic the JIT runs natively: results, canonical NaNs and `fflags` as the
/// interpreter's, including the slow paths (a new flag, a NaN, a rounding mode other than RNE).
#[test]
fn native_fp_matches_interpreter() {
    fn fop(f7: u32, rs2: u32, rs1: u32, rm: u32, rd: u32) -> u32 {
        r(f7, rs2, rs1, rm, rd, 0x53)
    }
    fn fused(op: u32, rs3: u32, rs2: u32, rs1: u32, rd: u32) -> u32 {
        rs3 << 27 | 1 << 25 | rs2 << 20 | rs1 << 15 | 7 << 12 | rd << 7 | op
    }
    let fflags_to = |rd: u32| csr(2, rd, 0, 0x001);
    let nop = addi(0, 0, 0);
    let mut ram = Ram::new();
    ram.put(
        0,
        &[
            0x0000_0097, // auipc x1, 0
            fld(1, 0x700),
            fld(2, 0x708),
            fld(3, 0x710),
            fld(4, 0x718),
            fld(5, 0x720),
            fop(0x01, 4, 3, 7, 6), // fadd.d f6, f3, f4 (exact)
            fflags_to(10),
            nop,
            fop(0x01, 2, 1, 0, 7), // fadd.d f7, f1, f2, rne (inexact, NX new: slow)
            fflags_to(11),
            nop,
            fop(0x09, 2, 1, 7, 8), // fmul.d f8, f1, f2 (inexact, NX known: fast)
            fop(0x05, 5, 5, 7, 9), // fsub.d f9, f5, f5 (inf - inf: NaN, NV)
            fflags_to(12),
            nop,
            fused(0x43, 3, 2, 1, 10), // fmadd.d f10, f1, f2, f3
            fused(0x47, 3, 2, 1, 11), // fmsub.d
            fused(0x4b, 3, 2, 1, 12), // fnmsub.d
            fused(0x4f, 3, 2, 1, 13), // fnmadd.d
            fop(0x0d, 0, 3, 7, 14),   // fdiv.d f14, f3, f0 (1/0: DZ)
            fop(0x2d, 0, 4, 7, 15),   // fsqrt.d f15, f4
            fop(0x11, 3, 3, 1, 16),   // fsgnjn.d f16, f3, f3
            fop(0x11, 16, 16, 2, 17), // fsgnjx.d f17, f16, f16
            fop(0x51, 3, 3, 2, 13),   // feq.d x13, f3, f3
            fop(0x51, 4, 3, 1, 14),   // flt.d x14, f3, f4
            fop(0x51, 3, 4, 0, 15),   // fle.d x15, f4, f3
            fop(0x51, 3, 9, 1, 16),   // flt.d x16, f9 (NaN), f3: NV
            addi(17, 0, -5),
            fop(0x69, 0, 17, 7, 18), // fcvt.d.w f18, x17
            fop(0x69, 1, 17, 7, 19), // fcvt.d.wu f19, x17
            fop(0x71, 0, 18, 0, 18), // fmv.x.d x18, f18
            fop(0x79, 0, 17, 0, 20), // fmv.d.x f20, x17
            csr(5, 0, 1, 0x002),     // csrwi frm, 1 (RTZ)
            nop,
            fop(0x01, 2, 1, 7, 21), // fadd.d f21, f1, f2, dyn: RTZ, slow
            fflags_to(19),
            ECALL,
        ],
    );
    for (k, v) in [0.1f64, 0.2, 1.0, 2.0, f64::INFINITY].iter().enumerate() {
        ram.bytes()[0x700 + 8 * k..][..8].copy_from_slice(&v.to_bits().to_le_bytes());
    }
    let out = same(&ram, 1);
    assert_eq!(out.exits, vec![Exit::Ecall]);
    let (x, f) = (&out.x, &out.f);
    assert_eq!((x[10], x[11], x[12], x[19]), (0, 0x01, 0x11, 0x19));
    assert_eq!(f[6], 3.0f64.to_bits());
    assert_eq!(f[7], 0x3fd3_3333_3333_3334, "0.1 + 0.2, RNE");
    assert_eq!(f[21], 0x3fd3_3333_3333_3333, "0.1 + 0.2, RTZ");
    assert_eq!(f[9], 0x7ff8_0000_0000_0000, "canonical NaN");
    assert_eq!(f[10], (0.1f64).mul_add(0.2, 1.0).to_bits());
    assert_eq!(f[13], (-0.1f64).mul_add(0.2, -1.0).to_bits());
    assert_eq!(f[14], f64::INFINITY.to_bits());
    assert_eq!(f[15], 2f64.sqrt().to_bits());
    assert_eq!((f[16], f[17]), ((-1.0f64).to_bits(), 1.0f64.to_bits()));
    assert_eq!((x[13], x[14], x[15], x[16]), (1, 1, 0, 0));
    assert_eq!(
        (f[18], f[19]),
        ((-5.0f64).to_bits(), 4294967291.0f64.to_bits())
    );
    assert_eq!((x[18], f[20]), ((-5.0f64).to_bits(), -5i64 as u64));
    assert_eq!(out.fcsr, 1 << 5 | 0x19);
}

/// `fcvt.d.l` and `fcvt.d.lu` run natively when exact, in any valid rounding mode, and through
/// the interpreter when they round (NX, and the mode's rounding) or the unsigned value is
/// 2^63 or more; an invalid dynamic mode still traps.
#[test]
fn native_int64_to_double_matches_interpreter() {
    let cvt = |unsigned: u32, rs1: u32, rm: u32, rd: u32| r(0x69, 2 + unsigned, rs1, rm, rd, 0x53);
    let fflags_to = |rd: u32| csr(2, rd, 0, 0x001);
    let fsflags_zero = csr(1, 0, 0, 0x001);
    let ld = |rd: u32, off: i32| i(off, 1, 3, rd, 0x03);
    let values: [u64; 6] = [
        (-7i64) as u64,
        (1 << 53) + 1,   // rounds
        i64::MAX as u64, // rounds up to 2^63
        i64::MIN as u64, // exact
        u64::MAX,        // 2^64 - 1 unsigned: rounds up to 2^64
        1 << 62,         // exact
    ];
    let mut code = vec![0x0000_0097]; // auipc x1, 0
    for (k, _) in values.iter().enumerate() {
        code.push(ld(10 + k as u32, 0x700 + 8 * k as i32));
    }
    // frm = RDN (2): exact conversions stay native, rounded ones round down.
    code.push(csr(5, 0, 2, 0x002)); // csrwi frm, 2
    for k in 0..6u32 {
        code.extend([
            fsflags_zero,
            cvt(0, 10 + k, 7, k),     // fcvt.d.l fk, x(10+k), dyn
            cvt(1, 10 + k, 0, 8 + k), // fcvt.d.lu f(8+k), x(10+k), rne
            fflags_to(20 + k),
        ]);
    }
    code.push(csr(5, 0, 5, 0x002)); // csrwi frm, 5: invalid
    code.push(cvt(0, 10, 7, 20)); // traps as illegal
    code.push(ECALL);
    let mut ram = Ram::new();
    ram.put(0, &code);
    for (k, v) in values.iter().enumerate() {
        ram.bytes()[0x700 + 8 * k..][..8].copy_from_slice(&v.to_le_bytes());
    }
    let out = same(&ram, 1);
    let trap_pc = BASE + 4 * (code.len() as u64 - 2);
    assert_eq!(
        out.pc, trap_pc,
        "the invalid rounding mode traps: {:?}",
        out.exits
    );
    let f = &out.f;
    assert_eq!(f[0], (-7.0f64).to_bits());
    assert_eq!(
        f[1],
        9007199254740992.0f64.to_bits(),
        "2^53 + 1 rounded down"
    );
    assert_eq!(
        f[2],
        9223372036854774784.0f64.to_bits(),
        "i64::MAX rounded down"
    );
    assert_eq!(f[3], (-9223372036854775808.0f64).to_bits());
    assert_eq!(f[5], 4611686018427387904.0f64.to_bits());
    assert_eq!(f[8], 18446744073709551609.0f64.to_bits(), "-7 as u64, RNE");
    assert_eq!(f[12], 18446744073709551616.0f64.to_bits(), "u64::MAX, RNE");
    // NX only where a conversion rounded.
    let x = &out.x;
    assert_eq!(
        (x[20], x[21], x[22], x[23], x[24], x[25]),
        (1, 1, 1, 0, 1, 0)
    );
}

/// Reads and writes of `fflags`, `frm` and `fcsr` in translated code, in every CSR
/// instruction form (set and clear, immediates, bits beyond the CSR's, rd = rs1, rd = x0,
/// reads through x0), leave the registers, `fcsr` and `mstatus.FS` as the interpreter does, and
/// none of them goes through the step helper; a native FP operation after an `frm` write
/// rounds by it.
#[test]
fn fp_csr_accesses_match_interpreter_without_the_step_helper() {
    let code = [
        addi(5, 0, 0xff),
        csr(1, 6, 5, 0x001),   // csrrw x6, fflags, x5: fflags = 0x1f
        csr(2, 7, 0, 0x001),   // csrrs x7, fflags, x0: a read
        csr(7, 8, 3, 0x001),   // csrrci x8, fflags, 3: fflags = 0x1c
        csr(6, 9, 5, 0x002),   // csrrsi x9, frm, 5
        csr(3, 10, 5, 0x003),  // csrrc x10, fcsr, x5: all cleared
        csr(5, 11, 31, 0x003), // csrrwi x11, fcsr, 31
        addi(12, 0, 0x7a5),
        csr(1, 12, 12, 0x003), // csrrw x12, fcsr, x12: rd = rs1; frm = 5, fflags = 5
        csr(2, 0, 5, 0x002),   // csrrs x0, frm, x5: frm = 7 (invalid: only a field)
        csr(1, 13, 0, 0x002),  // csrrw x13, frm, x0: frm = 0
        csr(6, 0, 2, 0x002),   // csrsi frm, 2: RDN
        addi(14, 0, 1),
        addi(15, 0, 10),
        r(0x69, 0, 14, 7, 1, 0x53), // fcvt.d.l f1, x14
        r(0x69, 0, 15, 7, 2, 0x53), // fcvt.d.l f2, x15
        csr(1, 0, 0, 0x001),        // csrw fflags, x0
        r(0x0d, 2, 1, 7, 3, 0x53),  // fdiv.d f3, f1, f2, dyn: 1/10 rounded down
        csr(2, 16, 0, 0x003),       // csrr x16, fcsr
        ECALL,
    ];
    let mut ram = Ram::new();
    ram.put(0, &code);
    let out = same(&ram, 1);
    let x = &out.x;
    assert_eq!((x[6], x[7], x[8], x[9]), (0, 0x1f, 0x1f, 0));
    assert_eq!((x[10], x[11], x[12], x[13]), (5 << 5 | 0x1c, 0, 0x1f, 7));
    assert_eq!(x[16], 2 << 5 | 1, "frm = RDN, NX from the division");
    // Round-to-nearest rounds 1/10 up: rounded down, it is one ulp less.
    assert_eq!(out.f[3], 0.1f64.to_bits() - 1, "1/10 rounded down");
    let stats = jit_stats(&ram);
    // The division under RDN goes through the step helper (native arithmetic rounds to
    // nearest only); none of the twelve CSR accesses does.
    assert_eq!(stats.stepped, 1, "{stats:?}");
}

/// With NX clear (as after glibc's fsflags), native adds and subtracts tell inexact results
/// from exact ones by their rounding error and accrue NX themselves, as the interpreter does:
/// exact and inexact sums and differences, cancellation, operands far apart in magnitude,
/// subnormal operands, results next to the largest double and past it (overflow), zero and
/// subnormal results.
#[test]
fn native_sums_with_nx_clear_match_interpreter() {
    let pairs: [(f64, f64); 9] = [
        (1.5, 2.25),          // exact
        (0.1, 0.2),           // inexact sum, exact difference (0.2 is twice 0.1)
        (1e16, 1.0),          // inexact: 1 lost
        (3.0, -3.0),          // cancellation: a zero sum
        (f64::MAX, -1e-300),  // inexact, the largest double
        (1.0, 5e-324),        // a subnormal operand: inexact
        (f64::MAX, f64::MAX), // overflow (sum), exact zero (difference)
        (1e-308, -0.99e-308), // subnormal results (sum and difference)
        (-2.0, 1e-17),        // inexact
    ];
    let mut code = vec![0x0000_0097]; // auipc x1, 0
    let mut rd = 5;
    for (k, _) in pairs.iter().enumerate() {
        let off = 0x700 + 16 * k as i32;
        code.extend([fld(1, off), fld(2, off + 8)]);
        for f7 in [0x01, 0x05] {
            // fsflags zero; fadd.d or fsub.d f(rd % 32), f1, f2; frflags x(rd)
            code.extend([
                csr(1, 0, 0, 0x001),
                fop_dyn(f7, 2, 1, rd % 29 + 3),
                csr(2, rd, 0, 0x001),
            ]);
            rd += 1;
        }
    }
    code.push(ECALL);
    assert!(rd < 32);
    let ram = code_and_pairs(&code, &pairs);
    let out = same(&ram, 1);
    let flags: Vec<u64> = (5..rd).map(|r| out.x[r as usize]).collect();
    let (nx, of) = (1, 4);
    assert_eq!(
        flags,
        [
            0,
            0,
            nx,
            0,
            nx,
            nx,
            0,
            0,
            nx,
            nx,
            nx,
            nx,
            of | nx,
            0,
            0,
            0,
            nx,
            nx
        ],
        "flags of each sum and difference"
    );
    let stats = jit_stats(&ram);
    // Only the overflow: sums below 2^-1021 (zeros, subnormals) are exact. Every inexact one
    // went through the step helper before 2Sum, and the zero sum after inexact ones (MXCSR's
    // sticky inexact flag, left set by the native inexact sums, could not tell it exact)
    // before sums that small were known exact.
    assert_eq!(stats.stepped, 1, "{stats:?}");
}

/// With NX already set, sums and differences whose results are zero, subnormal or in the
/// smallest normal binade (all exact) stay native; NaN and infinite ones still go through the
/// step helper. Results and flags as on the interpreter.
#[test]
fn tiny_sums_with_nx_set_stay_native() {
    let tiny = f64::MIN_POSITIVE; // 2^-1022
    let pairs: [(f64, f64); 6] = [
        (3.0, 3.0),           // difference: +0
        (-0.0, 0.0),          // sum: +0
        (1e-308, -0.99e-308), // subnormal sum and difference
        (tiny, tiny * 0.5),   // smallest normal binade: sum 1.5 * 2^-1022
        (f64::INFINITY, 1.0), // infinite results: stepped
        (f64::NAN, 1.0),      // NaN results: stepped
    ];
    let mut code = vec![0x0000_0097, csr(5, 0, 1, 0x001)]; // auipc x1, 0; csrwi fflags, NX
    let mut rd = 3;
    for (k, _) in pairs.iter().enumerate() {
        let off = 0x700 + 16 * k as i32;
        code.extend([fld(1, off), fld(2, off + 8)]);
        for f7 in [0x01, 0x05] {
            code.push(fop_dyn(f7, 2, 1, rd));
            rd += 1;
        }
    }
    code.extend([csr(2, 5, 0, 0x001), ECALL]); // frflags x5
    let ram = code_and_pairs(&code, &pairs);
    let out = same(&ram, 1);
    assert_eq!(out.x[5], 1, "only NX, set at the start");
    let stats = jit_stats(&ram);
    // The two infinite results and the two NaNs (a NaN operand: RISC-V's canonical NaN).
    assert_eq!(stats.stepped, 4, "{stats:?}");
}

/// RAM holding `code` at its start and the operand pairs at 0x700, 16 bytes each (the
/// addresses the sum tests' `fld`s read, from `auipc x1, 0`).
fn code_and_pairs(code: &[u32], pairs: &[(f64, f64)]) -> Ram {
    let mut ram = Ram::new();
    ram.put(0, code);
    for (k, (a, b)) in pairs.iter().enumerate() {
        let at = 0x700 + 16 * k;
        ram.bytes()[at..at + 8].copy_from_slice(&a.to_bits().to_le_bytes());
        ram.bytes()[at + 8..at + 16].copy_from_slice(&b.to_bits().to_le_bytes());
    }
    ram
}

/// Random sums and differences with NX clear, operands of nearby and distant magnitudes and
/// with low bits cleared (so a good share is exact): results and flags as on the interpreter.
#[test]
fn random_sums_with_nx_clear_match_interpreter() {
    let fop = |f7: u32, rd: u32| r(f7, 2, 1, 7, rd, 0x53);
    const PAIRS: usize = 384;
    let fsd = |off: i32, rs2: u32| s(off, rs2, 1, 3) & !0x7f | 0x27;
    let mut code = vec![
        0x0000_0097, // auipc x1, 0
        addi(1, 1, 0x7f0),
        addi(1, 1, 0x10), // x1 = the pairs, at 0x800
        addi(5, 0, PAIRS as i32),
        addi(9, 0, 31),
        i(0, 1, 3, 1, 0x07), // loop: fld f1, 0(x1)
        i(8, 1, 3, 2, 0x07), // fld f2, 8(x1)
        csr(1, 0, 0, 0x001), // fsflags zero
        fop(0x01, 3),        // fadd.d f3, f1, f2
        csr(2, 6, 0, 0x001), // frflags x6
        csr(1, 0, 0, 0x001), // fsflags zero
        fop(0x05, 4),        // fsub.d f4, f1, f2
        csr(2, 7, 0, 0x001), // frflags x7
        fsd(0, 3),           // the results over the operands
        fsd(8, 4),
        r(1, 9, 8, 0, 8, 0x33), // the flags folded into x8: x8 = (x8 * 31 + x6) * 31 + x7
        r(0, 6, 8, 0, 8, 0x33),
        r(1, 9, 8, 0, 8, 0x33),
        r(0, 7, 8, 0, 8, 0x33),
        addi(1, 1, 16),
        addi(5, 5, -1),
    ];
    let back = -4 * (code.len() as i32 - 5);
    code.push(b(back, 0, 5, 1)); // bne x5, zero, loop
    code.push(ECALL);
    let mut ram = Ram::new();
    ram.put(0, &code);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for k in 0..PAIRS {
        let a = next();
        let exp = (a >> 52 & 0x7ff) % 64 + 992; // 2^-31 .. 2^32
        let mut mant = a & ((1 << 52) - 1);
        if k % 3 == 0 {
            mant &= !((1 << 40) - 1); // few significant bits: more exact results
        }
        let av = (a & 1 << 63) | exp << 52 | mant;
        let bb = next();
        let bexp = if k % 2 == 0 {
            exp + bb % 5 - 2
        } else {
            (bb >> 52 & 0x7ff) % 128 + 960
        };
        let mut bmant = bb & ((1 << 52) - 1);
        if k % 3 == 0 {
            bmant &= !((1 << 40) - 1);
        }
        let bv = (bb >> 1 & 1 << 63) | bexp << 52 | bmant;
        let at = 0x800 + 16 * k;
        ram.bytes()[at..at + 8].copy_from_slice(&av.to_le_bytes());
        ram.bytes()[at + 8..at + 16].copy_from_slice(&bv.to_le_bytes());
    }
    let out = same(&ram, 1);
    assert_ne!(out.x[8], 0, "the flags were folded");
}

/// Every AMO, word and doubleword, on values at the edges of signed and unsigned order, with
/// rd = x0 and rd = rs2: memory and registers as the interpreter leaves them, and none goes
/// through the step helper once the first filled the write TLB; a misaligned one traps as
/// on the interpreter.
#[test]
fn amos_match_interpreter_without_the_step_helper() {
    // swap, add, xor, and, or, min, max, minu, maxu
    let kinds = [0x01, 0x00, 0x04, 0x0c, 0x08, 0x10, 0x14, 0x18, 0x1c];
    let values: [(u64, u64); 3] = [
        (0x8000_0000_7fff_ffff, 0x0000_0001_8000_0000), // signs differ in both widths
        (u64::MAX, 5),
        (0x1234_5678_9abc_def0, 0xfedc_ba98_7654_3210),
    ];
    let mut code = vec![0x0000_1097]; // auipc x1, 1: x1 = the data, on the page after the code
    let mut cases = Vec::new();
    for (k, &f5) in kinds.iter().enumerate() {
        for wide in [false, true] {
            for (v, &(mem, operand)) in values.iter().enumerate() {
                let n = cases.len() as i32;
                // rd = x0 (and, or, xor: one locked instruction), rd = rs2, or another.
                let rd = match (k + v) % 3 {
                    0 => 0,
                    1 => 6,
                    _ => 7,
                };
                code.extend([
                    addi(2, 1, 8 * n),               // x2 = the word's slot
                    i(0x200 + 8 * n, 1, 3, 6, 0x03), // ld x6, operand
                    addi(7, 0, -1),
                    amo(f5, wide, rd, 6, 2),
                    s(0x400 + 8 * n, 6, 1, 3), // sd x6
                    s(0x600 + 8 * n, 7, 1, 3), // sd x7
                ]);
                cases.push((mem, operand));
            }
        }
    }
    code.extend([addi(2, 1, 4), amo(0x00, true, 7, 6, 2), ECALL]); // misaligned amoadd.d
    assert!(4 * code.len() <= 0x1000 && 8 * cases.len() <= 0x200);
    let mut ram = Ram::new();
    ram.put(0, &code);
    for (n, (mem, operand)) in cases.iter().enumerate() {
        ram.bytes()[0x1000 + 8 * n..][..8].copy_from_slice(&mem.to_le_bytes());
        ram.bytes()[0x1200 + 8 * n..][..8].copy_from_slice(&operand.to_le_bytes());
    }
    let out = same(&ram, 1);
    assert!(
        matches!(out.exits.last(), Some(Exit::Trap(t)) if t.cause == Exception::StoreMisaligned),
        "{:?}",
        out.exits
    );
    // Spot checks against the ISA: case 6, amoadd.w on 0x8000_0000_7fff_ffff with operand
    // 0x1_8000_0000, rd = rs2 (x6, saved at 0x1400 + 8 * case).
    let word = |at: usize| out.mem[at / 8];
    assert_eq!(
        word(0x1000 + 8 * 6),
        0x8000_0000_ffff_ffff,
        "amoadd.w keeps the high half"
    );
    assert_eq!(
        word(0x1400 + 8 * 6),
        0x7fff_ffff,
        "the old word, sign-extended"
    );
    // Case 34, amomin.d on u64::MAX (-1) with 5, rd = x0: memory keeps -1. Case 46,
    // amominu.d on the same: memory 5, the old value in x7 (saved at 0x1600 + 8 * case).
    assert_eq!(word(0x1000 + 8 * 34), u64::MAX);
    assert_eq!(
        (word(0x1000 + 8 * 46), word(0x1600 + 8 * 46)),
        (5, u64::MAX)
    );
    let stats = jit_stats(&ram);
    // The first AMO fills the write TLB; the misaligned one traps through the step helper.
    assert_eq!(stats.stepped, 2, "{stats:?}");
}

/// With NX accrued, native F/D operations tell the flags they raise from their results: the
/// edge cases (a tiny result rounded up to the smallest normal, subnormal and zero results,
/// overflow, division by zero, NaN, and results just above the checked exponents) leave the
/// interpreter's results and flags.
#[test]
fn native_fp_flags_from_results_match_interpreter() {
    let fmul = |rd, a, b| fop_dyn(0x09, b, a, rd);
    let fdiv = |rd, a, b| fop_dyn(0x0d, b, a, rd);
    let fsub = |rd, a, b| fop_dyn(0x05, b, a, rd);
    // Read fflags into x[rd], then leave only NX accrued.
    let flags_to = |rd: u32| [csr(2, rd, 0, 0x001), csr(5, 0, 1, 0x001)];
    let mut code = vec![0x0000_0097]; // auipc x1, 0
    for k in 1..=13 {
        code.push(fld(k, 0x700 + 8 * (k as i32 - 1)));
    }
    code.push(fdiv(20, 4, 13)); // 1/3: NX accrued
    code.extend(flags_to(10));
    let cases = [
        fmul(21, 1, 2),   // (1 - 2^-53) * 2^-1022: tiny, rounds up to 2^-1022: UF, NX
        fmul(22, 2, 3),   // 2^-1022 * 0.3: subnormal, inexact: UF, NX
        fmul(23, 2, 9),   // 2^-1022 * 0.5: subnormal, exact
        fsub(24, 4, 4),   // 1 - 1: an exact zero
        fmul(25, 5, 6),   // DBL_MAX * 2: OF, NX
        fdiv(26, 4, 7),   // 1 / 0: DZ
        fsub(27, 8, 8),   // inf - inf: NV
        fmul(28, 2, 10),  // 2^-1022 * 2.8: exact, exponent field 2
        fdiv(29, 12, 13), // 2^-1018 / 3: inexact, exponent field 3
        fmul(30, 11, 3),  // 0.1 * 0.3: inexact, normal
    ];
    for (k, op) in cases.iter().enumerate() {
        code.push(*op);
        code.extend(flags_to(11 + k as u32));
    }
    code.push(ECALL);
    let mut ram = Ram::new();
    ram.put(0, &code);
    let consts = [
        0x3fef_ffff_ffff_ffffu64, // 1 - 2^-53
        0x0010_0000_0000_0000,    // 2^-1022
        0.3f64.to_bits(),
        1.0f64.to_bits(),
        f64::MAX.to_bits(),
        2.0f64.to_bits(),
        0,
        f64::INFINITY.to_bits(),
        0.5f64.to_bits(),
        2.8f64.to_bits(),
        0.1f64.to_bits(),
        0x0050_0000_0000_0000, // 2^-1018
        3.0f64.to_bits(),
    ];
    for (k, v) in consts.iter().enumerate() {
        ram.bytes()[0x700 + 8 * k..][..8].copy_from_slice(&v.to_le_bytes());
    }
    let out = same(&ram, 1);
    assert_eq!(out.exits, vec![Exit::Ecall]);
    let (nx, uf, of, dz, nv) = (1, 2, 4, 8, 16);
    assert_eq!(
        out.x[10..21],
        [
            nx,
            nx | uf,
            nx | uf,
            nx,
            nx,
            nx | of,
            nx | dz,
            nx | nv,
            nx,
            nx,
            nx
        ],
        "fflags after each case"
    );
    assert_eq!(out.f[21], 0x0010_0000_0000_0000, "rounded up to 2^-1022");
}

/// Sv39 in S-mode: a cross-page call resolved by the JIT's jump cache must follow a remap of
/// the callee's page after `sfence.vma` (translations found by virtual address are dropped with
/// the TLB).
/// Pages of the Sv39 rigs below.
const PAGES8: usize = 8;

fn csr(f3: u32, rd: u32, rs1: u32, csr: u32) -> u32 {
    csr << 20 | rs1 << 15 | f3 << 12 | rd << 7 | 0x73
}

/// Guest physical address of page `page` of the rig.
fn pa(page: u64) -> u64 {
    BASE + 4096 * page
}

/// A leaf PTE (valid, readable, executable, accessed) for physical address `addr`.
fn leaf_rx(addr: u64) -> u64 {
    (addr >> 12) << 10 | 1 | 2 | 8 | 64
}

fn put_words(m: &mut [u8], off: usize, words: &[u32]) {
    for (k, w) in words.iter().enumerate() {
        m[off + 4 * k..off + 4 * k + 4].copy_from_slice(&w.to_le_bytes());
    }
}

fn put64(m: &mut [u8], off: usize, v: u64) {
    m[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// An Sv39 machine of PAGES8 pages: page 0 boots in M mode, turns on paging and enters S mode
/// at VA 0x1000; pages 1-3 are the page tables, whose last level (page 3, mapped read-write at
/// VA 0x3000) gets `leaves` as (VA page number, PTE); the rest is for `fill`.
fn sv39_rig(leaves: &[(usize, u64)], fill: impl FnOnce(&mut [u8])) -> Vec<u64> {
    let mut ram = vec![0u64; PAGES8 * 512];
    // SAFETY: plain memory of PAGES8 pages.
    let m = unsafe { std::slice::from_raw_parts_mut(ram.as_mut_ptr() as *mut u8, PAGES8 * 4096) };
    let boot = [
        0x0000_0317,             // auipc x6, 0
        i(0x7f0, 6, 3, 5, 0x03), // ld x5, 0x7f0(x6): satp
        csr(1, 0, 5, 0x180),     // csrw satp, x5
        i(0x7f8, 6, 3, 5, 0x03), // ld x5, 0x7f8(x6): MPP = S
        csr(2, 0, 5, 0x300),     // csrs mstatus, x5
        i(0x7e0, 6, 3, 5, 0x03), // ld x5, 0x7e0(x6): mepc
        csr(1, 0, 5, 0x341),     // csrw mepc, x5
        0x3020_0073,             // mret
    ];
    put_words(m, 0, &boot);
    put64(m, 0x7f0, 8 << 60 | (pa(1) >> 12));
    put64(m, 0x7f8, 1 << 11);
    put64(m, 0x7e0, 0x1000);
    // Page tables: root (page 1) -> L1 (page 2) -> L0 (page 3).
    put64(m, 4096, (pa(2) >> 12) << 10 | 1);
    put64(m, 2 * 4096, (pa(3) >> 12) << 10 | 1);
    put64(m, 3 * 4096 + 24, (pa(3) >> 12) << 10 | 1 | 2 | 4 | 64 | 128);
    for &(vpn, pte) in leaves {
        put64(m, 3 * 4096 + 8 * vpn, pte);
    }
    fill(m);
    ram
}

/// M-mode loads check RAM's bounds instead of the TLB (`Jit::expect_machine_ram`): loads
/// inside RAM, at its last bytes, across its end, past it and below it fault or not as on
/// the interpreter; under `mstatus.MPRV` (MPP = S, Sv39) the same block of loads, translated
/// before in M-mode's own context, must not run again: the load goes through the page
/// tables, to another page.
#[test]
fn machine_mode_loads_check_ram_bounds() {
    let mut ram = vec![0u64; PAGES8 * 512];
    // SAFETY: plain memory of PAGES8 pages.
    let m = unsafe { std::slice::from_raw_parts_mut(ram.as_mut_ptr() as *mut u8, PAGES8 * 4096) };
    let ld = |rd, rs1, imm| i(imm, rs1, 3, rd, 0x03);
    let add_x10 = |rs| r(0, rs, 10, 0, 10, 0x33);
    let probe = 0x200;
    put_words(
        m,
        0,
        &[
            addi(5, 0, 1),
            i(31, 5, 1, 5, 0x13), // slli x5, x5, 31: RAM's base
            addi(6, 5, 0x400),    // the trap handler
            csr(1, 0, 6, 0x305),  // csrw mtvec, x6
            ld(6, 5, 0x3f0),      // satp
            ld(8, 5, 0x3f8),      // MPRV | MPP = S
            lui(7, 8),            // x7 = RAM's end
            r(0, 5, 7, 0, 7, 0x33),
            lui(17, 4), // x17 = page 4
            r(0, 5, 17, 0, 17, 0x33),
            addi(9, 0, 3),
            ld(11, 5, 0x100), // loop, 0x2c: inside RAM
            add_x10(11),
            ld(11, 7, -8), // RAM's last 8 bytes
            add_x10(11),
            ld(12, 7, -4),      // across its end: faults
            i(0, 7, 2, 13, 3),  // lw x13, 0(x7): past it, faults
            i(-4, 5, 2, 14, 3), // lw x14, -4(x5): below it, faults
            i(-1, 7, 4, 11, 3), // lbu x11, -1(x7): its last byte
            add_x10(11),
            ld(11, 17, 8), // page 4
            add_x10(11),
            addi(9, 9, -1),
            b(-0x30, 0, 9, 1),
            csr(1, 0, 6, 0x180), // csrw satp, x6
            jal(1, probe - 0x64),
            csr(2, 0, 8, 0x300), // csrs mstatus, x8: MPRV, MPP = S
            jal(1, probe - 0x6c),
            i(-1, 7, 4, 11, 3), // lbu: VA of RAM's last byte is unmapped: page fault
            jal(1, probe - 0x74),
            csr(3, 0, 8, 0x300), // csrc mstatus, x8
            0x1050_0073,         // wfi
        ],
    );
    // The probe: x10 += the word at 8 past page 4, as data accesses see it now.
    put_words(
        m,
        probe as usize,
        &[ld(11, 17, 8), add_x10(11), i(0, 1, 0, 0, 0x67)],
    );
    // The trap handler: x10 += mcause << 16; skip the faulting instruction.
    put_words(
        m,
        0x400,
        &[
            csr(2, 30, 0, 0x342),
            i(16, 30, 1, 30, 0x13),
            add_x10(30),
            csr(2, 30, 0, 0x341),
            addi(30, 30, 4),
            csr(1, 0, 30, 0x341),
            0x3020_0073,
        ],
    );
    put64(m, 0x3f0, 8 << 60 | (pa(1) >> 12));
    put64(m, 0x3f8, 1 << 17 | 1 << 11);
    put64(m, 0x100, 1);
    put64(m, PAGES8 * 4096 - 8, 2 << 56);
    put64(m, 4 * 4096 + 8, 0x10);
    put64(m, 5 * 4096 + 8, 0x1000);
    // Sv39: VA 0x8000_4000 (root 2, L1 0, L0 4) -> page 5, read-write, accessed, dirty.
    put64(m, 4096 + 8 * 2, (pa(6) >> 12) << 10 | 1);
    put64(m, 6 * 4096, (pa(7) >> 12) << 10 | 1);
    put64(m, 7 * 4096 + 8 * 4, (pa(5) >> 12) << 10 | 0xc7);
    let (exit, x10, _, _) = run_rig(&ram);
    let round = 1 + (2 << 56) + 3 * (5 << 16) + 2 + 0x10;
    // Then: the probe without MPRV (0x10), with it (0x1000), the page fault (13); the
    // handler's `mret` left MPP = U, so the last probe faults too (page 5 is no user page),
    // and its `add` adds the x11 of the probe before.
    let after = 0x10 + 0x1000 + (13 << 16) + (13 << 16) + 0x1000;
    assert_eq!((exit, x10), (Exit::Wfi, 3 * round + after));
}

/// `mstatus`/`sstatus` accesses run inside translated blocks (`steppable_insn`): one that
/// enables an interrupt already pending must still let the hart take it before the next
/// instruction, as the interpreter does, and one that disables interrupts changes nothing
/// else. Each round: disable (csrrci), x10 += 1, enable with a software interrupt pending (the
/// handler doubles x10), x10 += 100; taken one instruction late, x10 would differ.
#[test]
fn status_writes_in_blocks_take_interrupts_at_once() {
    let mut ram = vec![0u64; PAGES8 * 512];
    // SAFETY: plain memory of PAGES8 pages.
    let m = unsafe { std::slice::from_raw_parts_mut(ram.as_mut_ptr() as *mut u8, PAGES8 * 4096) };
    put_words(
        m,
        0,
        &[
            addi(5, 0, 1),
            i(31, 5, 1, 5, 0x13), // slli x5, x5, 31: RAM's base
            addi(6, 5, 0x400),
            csr(1, 0, 6, 0x305), // csrw mtvec, x6
            addi(7, 0, 2),       // SSIP / SSIE
            csr(2, 0, 7, 0x304), // csrs mie, x7
            addi(9, 0, 8),       // mstatus.MIE
            addi(12, 0, 3),
            csr(7, 0, 8, 0x300), // loop: csrrci x0, mstatus, 8
            csr(2, 0, 7, 0x344), // csrs mip, x7: pending, not enabled
            addi(10, 10, 1),
            csr(2, 0, 9, 0x300), // csrs mstatus, x9: the interrupt is taken here
            addi(10, 10, 100),
            addi(12, 12, -1),
            b(-0x18, 0, 12, 1),
            csr(7, 0, 8, 0x300),
            0x1050_0073, // wfi
        ],
    );
    // The handler: x10 *= 2; clear SSIP; mret.
    put_words(
        m,
        0x400,
        &[i(1, 10, 1, 10, 0x13), csr(3, 0, 7, 0x344), 0x3020_0073],
    );
    let (exit, x10, _, _) = run_rig(&ram);
    let round = |x: u64| (x + 1) * 2 + 100;
    assert_eq!((exit, x10), (Exit::Wfi, round(round(round(0)))));
}

/// Run the rig on the interpreter and on the JIT until it stops (at most 10,000 instructions);
/// both must end the same way. The outcome: exit, x10, pc and instret.
fn run_rig(ram: &[u64]) -> (Exit, u64, u64, u64) {
    let mut outs = Vec::new();
    for eng in [Eng::Interp, Eng::Jit, Eng::Verify] {
        let mut mem = ram.to_vec();
        // SAFETY: `mem` outlives the hart, dropped at the end of this iteration.
        let region = unsafe {
            RamRegion::new(
                BASE,
                (PAGES8 * 4096) as u64,
                NonNull::new(mem.as_mut_ptr() as *mut u8).unwrap(),
            )
        };
        let mut hart = Hart::new(
            HartConfig::machine(0, false),
            Memory::new(vec![region]).unwrap(),
        );
        hart.set_pc(BASE);
        let mut engine = match eng {
            Eng::Verify => Jit::verifying(1 << 20).unwrap(),
            _ => Jit::new().unwrap(),
        };
        // As a board sets it up: RAM is one host mapping.
        engine.expect_bare_data_addend((mem.as_ptr() as u64).wrapping_sub(BASE));
        engine.expect_machine_ram(BASE, (PAGES8 * 4096) as u64);
        let exit = match eng {
            Eng::Interp => hart.run(&mut NoBus, 10_000),
            _ => hart.run_with(&mut NoBus, 10_000, &mut engine),
        };
        outs.push((exit, hart.xreg(10), hart.pc(), hart.instret()));
        assert_eq!(engine.take_divergence(), None);
        match eng {
            Eng::Interp => {}
            Eng::Jit
            | Eng::JitAfter(_)
            | Eng::JitExpectingAddend(_)
            | Eng::JitExpectingBareAddend(_)
            | Eng::JitOnHartRequiringAddend(_) => {
                assert!(engine.stats().insns > 0)
            }
            Eng::Verify => assert!(engine.stats().verified > 0),
        }
    }
    assert_eq!(outs[0], outs[1], "interpreter, then JIT");
    assert_eq!(outs[0], outs[2], "interpreter, then verify");
    outs[0]
}

#[test]
fn remapped_code_after_sfence_vma() {
    // VA 0x1000: caller; VA 0x2000: callee B (later C).
    let ram = sv39_rig(&[(1, leaf_rx(pa(4))), (2, leaf_rx(pa(5)))], |m| {
        // Call B twice, remap VA 0x2000 to C, sfence.vma, call again, wfi.
        put_words(
            m,
            4 * 4096,
            &[
                addi(11, 0, 2),
                jal(1, 0x2000 - 0x1004),
                addi(11, 11, -1),
                b(-8, 0, 11, 1),
                0x0000_0317,             // auipc x6, 0 (0x1010)
                i(0x7f0, 6, 3, 7, 0x03), // ld x7, 0x800(VA 0x1000)
                lui(28, 3),              // x28 = 0x3000
                s(16, 7, 28, 3),         // sd x7, 16(x28): L0[2] = C
                0x1200_0073,             // sfence.vma
                jal(1, 0x2000 - 0x1024),
                0x1050_0073, // wfi
            ],
        );
        put64(m, 4 * 4096 + 0x800, leaf_rx(pa(6)));
        put_words(m, 5 * 4096, &[addi(10, 10, 1), i(0, 1, 0, 0, 0x67)]); // B
        put_words(m, 6 * 4096, &[addi(10, 10, 100), i(0, 1, 0, 0, 0x67)]); // C
    });
    let (exit, x10, _, _) = run_rig(&ram);
    assert_eq!((exit, x10), (Exit::Wfi, 102));
}

/// One physical page of code mapped at two virtual addresses at once (a shared library in two
/// processes): code that uses its own pc (`auipc`, link addresses) must see the address it
/// runs at, so each mapping needs its own translation.
#[test]
fn one_code_page_at_two_addresses() {
    // VA 0x1000: caller; VA 0x2000 and VA 0x5000: the same callee page.
    let ram = sv39_rig(
        &[
            (1, leaf_rx(pa(4))),
            (2, leaf_rx(pa(5))),
            (5, leaf_rx(pa(5))),
        ],
        |m| {
            // Call the callee through each address, three times over, then wfi.
            put_words(
                m,
                4 * 4096,
                &[
                    addi(11, 0, 3),
                    jal(1, 0x2000 - 0x1004),
                    jal(1, 0x5000 - 0x1008),
                    addi(11, 11, -1),
                    b(-12, 0, 11, 1),
                    0x1050_0073, // wfi
                ],
            );
            // Callee: x10 += its own address (auipc) + the link address.
            put_words(
                m,
                5 * 4096,
                &[
                    0x0000_0617,               // auipc x12, 0
                    r(0, 12, 10, 0, 10, 0x33), // add x10, x10, x12
                    r(0, 1, 10, 0, 10, 0x33),  // add x10, x10, ra
                    i(0, 1, 0, 0, 0x67),       // ret
                ],
            );
        },
    );
    let (exit, x10, _, _) = run_rig(&ram);
    // Each round: 0x2000 + 0x1008 (its link) and 0x5000 + 0x100c.
    assert_eq!(
        (exit, x10),
        (Exit::Wfi, 3 * (0x2000 + 0x1008 + 0x5000 + 0x100c))
    );
}

/// Far more code than a small code buffer holds, run three times: the buffer is flushed while
/// chain slots and jump-cache entries point into it, and everything is translated again.
#[test]
fn code_buffer_flushes_when_full() {
    let mut ram = Ram::new();
    let mut code = vec![addi(11, 0, 3)];
    for k in 0..1300 {
        code.push(addi(10, 10, k % 100 + 1));
        code.push(addi(12, 10, k % 7));
        // A block of three instructions: a backward branch ends a block (never taken here:
        // bne x0, x0). A forward branch would not, nor a jump within the page: translation
        // goes on past the one and follows the other.
        code.push(b(-4, 0, 0, 1));
    }
    // Three times round: a1 counts down, the jump back is a jal (a branch reaches 4 KiB).
    code.push(addi(11, 11, -1));
    code.push(b(8, 0, 11, 0)); // beq a1, zero, the ecall
    let back = -(4 * (code.len() as i32 - 1));
    code.push(jal(0, back));
    code.push(ECALL);
    ram.put(0, &code);
    let (want, _) = run(&ram, Eng::Interp, 1 << 20, 1);
    let mut mem = Ram(ram.0.clone());
    // SAFETY: `mem` outlives the hart, dropped at the end of this test.
    let region = unsafe {
        RamRegion::new(
            BASE,
            (PAGES * 4096) as u64,
            NonNull::new(mem.0.as_mut_ptr() as *mut u8).unwrap(),
        )
    };
    let mut hart = Hart::new(HartConfig::user(), Memory::new(vec![region]).unwrap());
    hart.set_pc(BASE);
    let mut jit = Jit::with_code_bytes(64 << 10).unwrap();
    let exit = hart.run_with(&mut NoBus, 1 << 20, &mut jit);
    assert_eq!(exit, Exit::Ecall);
    assert!(jit.stats().flushes > 1, "{:?}", jit.stats());
    assert_eq!(
        (
            (0..32).map(|k| hart.xreg(k)).collect::<Vec<_>>(),
            hart.pc(),
            hart.instret()
        ),
        (want.x, want.pc, want.instret)
    );
}

/// Two functions 8 KiB apart (the span of a 4,096-entry jump cache indexed by the low bits),
/// called in turn from a loop on another page: their jump-cache entries must not evict each
/// other, or every call goes back to the engine. Also checks that generated code computes the
/// slots the engine fills (else no jump would ever be found there).
#[test]
fn calls_to_functions_8_kib_apart_stay_in_translated_code() {
    let mut ram = Ram::new();
    const F1: i32 = 0x1100;
    const F2: i32 = 0x3100;
    let ret = i(0, 1, 0, 0, 0x67); // jalr x0, 0(ra)
    ram.put(
        0,
        &[
            addi(11, 0, 1000),
            jal(1, F1 - 4),
            jal(1, F2 - 8),
            addi(11, 11, -1),
            b(-12, 0, 11, 1), // bne a1, zero, the first call
            ECALL,
        ],
    );
    ram.put(F1 as usize, &[addi(10, 10, 1), ret]);
    ram.put(F2 as usize, &[addi(12, 12, 3), ret]);
    let (want, _) = run(&ram, Eng::Interp, 1 << 20, 1);
    let (got, jit) = run(&ram, Eng::Jit, 1 << 20, 1);
    assert_eq!(got, want);
    assert_eq!((got.x[10], got.x[12]), (1000, 3000));
    let entries = jit.expect("a JIT ran").stats().entries;
    assert!(
        entries < 100,
        "2,000 calls entered translated code {entries} times"
    );
}

/// `fsrm`, `frrm`, `frflags` and `fsflags` in the middle of a loop's block: each division
/// rounds by the mode set just before it in the same block, the CSR reads see it, and the loop
/// stays in translated code (the accesses run through the step helper instead of ending the
/// block).
#[test]
fn fp_csr_accesses_mid_block_match_interpreter() {
    let fdiv = |rd: u32| r(0x0d, 2, 1, 7, rd, 0x53); // fdiv.d rd, f1, f2 (dynamic rounding)
    let mut ram = Ram::new();
    ram.put(
        0,
        &[
            0x0000_0097, // auipc x1, 0
            fld(1, 0x700),
            fld(2, 0x708),
            addi(11, 0, 100),
            addi(5, 0, 3),    // t0 = RUP
            csr(1, 0, 5, 2),  // fsrm t0
            fdiv(3),          // f3 = 1/3 rounded up
            csr(2, 13, 0, 2), // frrm a3
            csr(5, 0, 0, 2),  // fsrmi 0 (RNE)
            fdiv(4),          // f4 = 1/3 rounded to nearest
            csr(2, 14, 0, 1), // frflags a4
            csr(1, 0, 0, 1),  // fsflags zero
            addi(11, 11, -1),
            b(-36, 0, 11, 1), // bne a1, zero, the fsrm's addi
            ECALL,
        ],
    );
    ram.put(0x700, &[0, 0x3ff0_0000, 0, 0x4008_0000]); // 1.0, 3.0
    let want = same(&ram, 1);
    assert_eq!(
        (want.x[13], want.x[14]),
        (3, 1),
        "frm read back, NX accrued"
    );
    assert_eq!(want.f[3] - want.f[4], 1, "RUP rounds 1/3 one ulp above RNE");
    let entries = jit_stats(&ram).entries;
    assert!(
        entries < 20,
        "100 rounds entered translated code {entries} times"
    );
}

/// A device writing code the harts ran (a disk read into a page of code) makes them run the
/// new code, on the interpreter and the JIT; a device writing a page no hart took code from
/// leaves the DMA log alone (so a guest reading a disk into data pages does not make the harts
/// drop their code).
#[test]
fn device_writes_reach_code_and_only_code() {
    for jit in [false, true] {
        let mut ram = Ram::new();
        // Call the function on page 1 twice, with an ecall after each call.
        ram.put(0, &[jal(1, 0x1000), ECALL, jal(1, 0x1000 - 8), ECALL]);
        ram.put(0x1000, &[addi(10, 10, 1), i(0, 1, 0, 0, 0x67)]); // a0 += 1; ret
                                                                  // SAFETY: `ram` outlives the hart, dropped at the end of this iteration.
        let mut hart = unsafe { user_hart(&mut ram) };
        let mut engine = Jit::new().unwrap();
        let mut run = |hart: &mut Hart| {
            if jit {
                hart.run_with(&mut NoBus, 1000, &mut engine)
            } else {
                hart.run(&mut NoBus, 1000)
            }
        };
        assert_eq!(run(&mut hart), Exit::Ecall);
        assert_eq!(hart.xreg(10), 1);
        let mem = hart.memory().clone();
        // Data into page 3, which holds no code: not logged.
        let generation = mem.dma_log().generation();
        mem.write(BASE + 0x3000, &[7; 64]).unwrap();
        mem.device_wrote(BASE + 0x3000, 64);
        assert_eq!(mem.dma_log().generation(), generation, "jit {jit}");
        // New code into page 1: a0 += 100.
        mem.write(BASE + 0x1000, &addi(10, 10, 100).to_le_bytes())
            .unwrap();
        mem.device_wrote(BASE + 0x1000, 4);
        assert_ne!(mem.dma_log().generation(), generation, "jit {jit}");
        assert_eq!(run(&mut hart), Exit::Ecall);
        assert_eq!(hart.xreg(10), 101, "jit {jit}: the new code ran");
    }
}

/// Two functions whose addresses share a slot of the jump cache's first way (0x40010 apart),
/// called in turn through registers: the second way holds the one the first lost, so the
/// calls stay in translated code. With one way, every call missed and went back to the engine
/// (2 entries a round).
#[test]
fn targets_sharing_a_jump_cache_slot_stay_in_translated_code() {
    const SPAN: usize = 0x42000;
    let (f1, f2) = (0x400usize, 0x40410usize);
    let mut mem = vec![0u64; SPAN / 8];
    let words: &mut [u8] =
        // SAFETY: the Vec<u64> is SPAN bytes of plain memory.
        unsafe { std::slice::from_raw_parts_mut(mem.as_mut_ptr() as *mut u8, SPAN) };
    let mut put = |off: usize, code: &[u32]| {
        for (k, w) in code.iter().enumerate() {
            words[off + 4 * k..off + 4 * k + 4].copy_from_slice(&w.to_le_bytes());
        }
    };
    put(
        0,
        &[
            0x0000_0297,               // auipc t0, 0
            lui(6, (f2 >> 12) as u32), // t1 = f2's page offset
            addi(6, 6, (f2 & 0xfff) as i32),
            0x0062_8333,           // add t1, t0, t1: f2
            addi(5, 5, f1 as i32), // t0 = f1
            addi(11, 0, 1000),
            i(0, 5, 0, 1, 0x67), // loop: jalr ra, 0(t0)
            i(0, 6, 0, 1, 0x67), // jalr ra, 0(t1)
            addi(11, 11, -1),
            b(-12, 0, 11, 1), // bne a1, zero, loop
            ECALL,
        ],
    );
    put(f1, &[addi(10, 10, 1), i(0, 1, 0, 0, 0x67)]); // a0 += 1; ret
    put(f2, &[addi(12, 12, 2), i(0, 1, 0, 0, 0x67)]); // a2 += 2; ret
                                                      // SAFETY: `mem` outlives the hart, dropped at the end of this function.
    let region = unsafe {
        RamRegion::new(
            BASE,
            SPAN as u64,
            NonNull::new(mem.as_mut_ptr() as *mut u8).unwrap(),
        )
    };
    let mut hart = Hart::new(HartConfig::user(), Memory::new(vec![region]).unwrap());
    hart.set_pc(BASE);
    let mut jit = Jit::new().unwrap();
    assert_eq!(hart.run_with(&mut NoBus, 1 << 20, &mut jit), Exit::Ecall);
    assert_eq!((hart.xreg(10), hart.xreg(12)), (1000, 2000));
    let entries = jit.stats().entries;
    assert!(
        entries < 20,
        "1,000 rounds entered translated code {entries} times"
    );
}

/// Two harts on two threads add to one counter with `amoadd.w` and `amoadd.d` in translated
/// code (lock xadd) and to another with `amoor.d`-built bit masks: no update is lost.
#[test]
fn amos_on_two_harts_lose_no_update() {
    const ROUNDS: i32 = 2_000_000;
    let mut ram = Ram::new();
    // x1 = the counters (page 1); x5 = rounds; x6 = 1.
    ram.put(
        0,
        &[
            0x0000_1097, // auipc x1, 1
            lui(5, (ROUNDS as u32 + 0x800) >> 12),
            addi(5, 5, (ROUNDS << 20) >> 20),
            addi(6, 0, 1),
            amo(0x00, false, 0, 6, 1), // loop: amoadd.w zero, x6, (x1)
            addi(2, 1, 8),
            amo(0x00, true, 7, 6, 2), // amoadd.d x7, x6, 8(x1)
            addi(5, 5, -1),
            b(-16, 0, 5, 1), // bne x5, zero, loop
            ECALL,
        ],
    );
    let mut mem = Ram(ram.0.clone());
    let base = NonNull::new(mem.0.as_mut_ptr() as *mut u8).unwrap();
    let harts: Vec<Hart> = (0..2)
        .map(|id| {
            // SAFETY: `mem` outlives both harts (joined below) and is only touched through them.
            let region = unsafe { RamRegion::new(BASE, (PAGES * 4096) as u64, base) };
            let mut hart = Hart::new(
                HartConfig::machine(id, true),
                Memory::new(vec![region]).unwrap(),
            );
            hart.set_pc(BASE);
            hart
        })
        .collect();
    std::thread::scope(|s| {
        for mut hart in harts {
            s.spawn(move || {
                let mut jit = Jit::new().unwrap();
                loop {
                    match hart.run_with(&mut NoBus, 1 << 16, &mut jit) {
                        Exit::Budget => continue,
                        // The ecall after the loop traps to mtvec 0, outside RAM.
                        e => {
                            assert!(matches!(e, Exit::DoubleFault(_)), "{e:?}");
                            break;
                        }
                    }
                }
                assert!(jit.stats().insns > 0);
            });
        }
    });
    let counters = &mem.0[512..514];
    assert_eq!(
        (counters[0] as u32, counters[1]),
        (2 * ROUNDS as u32, 2 * ROUNDS as u64),
        "no lost update"
    );
}

/// `auipc rd, imm20`.
fn auipc(rd: u32, imm20: u32) -> u32 {
    imm20 << 12 | rd << 7 | 0x17
}

/// Put the 4-byte instruction `insn` so that it straddles the end of page `page`.
fn put_straddling(ram: &mut Ram, page: usize, insn: u32) {
    let end = (page + 1) * 4096;
    ram.put16(end - 2, insn as u16);
    ram.put16(end, (insn >> 16) as u16);
}

/// A loop of 20 rounds through `insn`, which straddles the end of page 0 (x10 counts rounds,
/// x20 points at page 3, a function on page 2 adds 3 to x11 and returns; an instruction
/// after the straddling one that a branch can skip adds 1 to x15), then an `ecall`.
fn straddling_loop(insn: u32) -> Ram {
    let mut ram = Ram::new();
    ram.put(
        0,
        &[
            auipc(20, 3),
            addi(28, 0, 20),
            jal(0, 4090 - 8), // to 4090
        ],
    );
    ram.put(4090, &[addi(10, 10, 1)]);
    put_straddling(&mut ram, 0, insn);
    ram.put(
        4098,
        &[
            addi(15, 15, 1),
            addi(28, 28, -1),
            b(4090 - 4106, 0, 28, 1), // bne x28, x0, 4090
            ECALL,
        ],
    );
    ram.put(2 * 4096, &[addi(11, 11, 3), i(0, 1, 0, 0, 0x67)]); // jalr x0, 0(x1)
    ram.put(3 * 4096, &[0x1234_5678, 0x9abc_def0]);
    ram
}

/// A 4-byte instruction straddling a page end runs inside translated code (through the
/// interpreter's code for it, both halves fetched anew each time) for every kind of
/// instruction, with the same results, exits and traps as the interpreter: ALU, load, store,
/// a taken branch, a call to another page, a counter read, `ecall`, a faulting load, and a
/// second half rewritten by the loop itself.
#[test]
fn instructions_straddling_a_page_end_run_in_translated_code() {
    let add = r(0, 10, 13, 0, 13, 0x33); // add x13, x13, x10
    let cases: [(&str, u32, usize); 8] = [
        ("alu", add, 1),
        ("load", i(0, 20, 3, 12, 0x03), 1),   // ld x12, 0(x20)
        ("store", s(16, 10, 20, 3), 1),       // sd x10, 16(x20)
        ("taken branch", b(8, 0, 0, 0), 1),   // beq x0, x0, +8: skips x15's addi
        ("call", jal(1, 2 * 4096 - 4094), 1), // jal x1, page 2
        // csrrs x14, instret, x0: user mode may not read counters here (an illegal
        // instruction, its bits in tval).
        ("counter", i(0xc02, 0, 2, 14, 0x73), 1),
        ("ecall", ECALL, 30),
        ("faulting load", i(8, 0, 3, 12, 0x03), 1), // ld x12, 8(x0)
    ];
    for (what, insn, ecalls) in cases {
        let ram = straddling_loop(insn);
        let out = same(&ram, ecalls);
        match what {
            "faulting load" | "counter" => {
                let (cause, tval) = if what == "counter" {
                    (Exception::IllegalInstruction, insn as u64)
                } else {
                    (Exception::LoadAccessFault, 8)
                };
                assert_eq!(
                    out.exits,
                    vec![Exit::Trap(popek_cpu::Trap::new(cause, tval))],
                    "{what}"
                );
                assert_eq!(
                    (out.pc, out.instret),
                    (BASE + 4094, 4),
                    "{what}: pc at the instruction"
                );
                continue;
            }
            "taken branch" => assert_eq!(out.x[15], 0, "{what}"),
            "alu" => assert_eq!(out.x[13], (1..=20).sum::<u64>(), "{what}"),
            "call" => assert_eq!(out.x[11], 60, "{what}"),
            "store" => assert_eq!(out.mem[3 * 512 + 2], 20, "{what}"),
            _ => {}
        }
        assert_eq!(out.x[10], 20, "{what}: 20 rounds");
        if what == "ecall" {
            // Each one goes back to the engine, and on to the caller.
            continue;
        }
        let stats = jit_stats(&ram);
        assert!(
            stats.stepped >= 20 && stats.entries < 20,
            "{what}: the straddling instruction went back to the engine: {stats:?}"
        );
    }

    // The loop rewrites the straddling instruction's second half: `addi x13, x13, 1` becomes
    // `addi x13, x13, 100` after the first round (a store and fence.i on page 1).
    let one = addi(13, 13, 1);
    let hundred = addi(13, 13, 100);
    let mut ram = straddling_loop(one);
    ram.put(
        4098,
        &[
            lui(6, 0),
            addi(6, 6, (hundred >> 16) as i32),
            auipc(7, 0),     // x7 = BASE + 4106
            s(-10, 6, 7, 1), // sh x6, -10(x7): BASE + 4096
            FENCE_I,
            addi(28, 28, -1),
            b(4090 - 4122, 0, 28, 1), // bne x28, x0, 4090
            ECALL,
        ],
    );
    let out = same(&ram, 1);
    assert_eq!(out.x[13], 1 + 19 * 100);

    // The second half lies past the end of RAM: an instruction access fault at pc + 2, with
    // pc at the instruction.
    let mut ram = Ram::new();
    let last = PAGES * 4096;
    ram.put(0, &[jal(0, (last - 6) as i32)]);
    ram.put(last - 6, &[addi(10, 10, 1)]);
    ram.put16(last - 2, add as u16);
    let out = same(&ram, 1);
    assert_eq!(
        out.exits,
        vec![Exit::Trap(popek_cpu::Trap::new(
            Exception::InstructionAccessFault,
            BASE + last as u64
        ))]
    );
    assert_eq!((out.pc, out.instret), (BASE + last as u64 - 2, 2));
}
