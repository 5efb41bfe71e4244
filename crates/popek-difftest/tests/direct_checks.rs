//! The JIT's direct loads (the host checks them, as in `popek exec`) skip the span check when
//! an earlier load through the same base register passed it. These programs are where that
//! would go wrong: the base written in between, a side branch joining past a check it
//! skipped, a load near a checked one that faults. Each must end exactly as under the
//! interpreter (same registers, signal, faulting address and pc), and under QEMU.

use popek_difftest::gen::{self, Enc, Fix, FixKind, Item, Program};
use popek_difftest::layout::{END, GP};
use popek_difftest::{elf, run, Flavour};

const S0: u32 = 8;
const S1: u32 = 9;
const T0: u32 = 5;
const A0: u32 = 10;
const A1: u32 = 11;
const A2: u32 = 12;
/// A register the JIT keeps in a host register in every block (`s0` and `s1` it keeps only
/// where a block uses them most): loads through it have the base folded into their
/// displacement when the memory lies low (see `run::Placement`).
const A5: u32 = 15;

fn item(w: u32, text: &str) -> Item {
    Item {
        enc: Enc::W(w),
        text: text.into(),
        fix: None,
    }
}

/// `ld rd, off(rs1)`.
fn ld(rd: u32, off: i32, rs1: u32) -> Item {
    let w = ((off as u32) & 0xfff) << 20 | rs1 << 15 | 3 << 12 | rd << 7 | 0x03;
    item(w, &format!("ld {}, {off}({})", gen::xn(rd), gen::xn(rs1)))
}

/// `addi t0, t0, 1`: between two loads, it keeps them from being one run (checked once).
fn apart() -> Item {
    item(1 << 20 | T0 << 15 | T0 << 7 | 0x13, "addi t0, t0, 1")
}

/// `lui rd, imm20`.
fn lui(rd: u32, imm20: u32) -> Item {
    item(
        imm20 << 12 | rd << 7 | 0x37,
        &format!("lui {}, {imm20:#x}", gen::xn(rd)),
    )
}

/// `beq rs1, x0` to the start of the group after the next one.
fn beq_zero_skipping_a_group(rs1: u32) -> Item {
    Item {
        enc: Enc::W(0),
        text: String::new(),
        fix: Some(Fix {
            skip: 1,
            kind: FixKind::Branch { f3: 0, rs1, rs2: 0 },
        }),
    }
}

/// A program with `groups` as its body and registers from `regs` (the rest as a generated
/// program of `seed` has them), its faults caught by the test's signal handler.
fn program(seed: u64, groups: Vec<Vec<Item>>, regs: &[(u32, u64)]) -> Program {
    let mut p = gen::generate(seed, Flavour::Fault);
    p.body = groups;
    p.fault = Some(Vec::new());
    p.straddle = None;
    for &(r, v) in regs {
        p.init_x[r as usize] = v;
    }
    p
}

/// The program ends the same under the interpreter, the JIT and QEMU, with `signal` (0:
/// none) at `si_addr`, and the JIT's loads took `host_faults` host faults, with the memory
/// placed low (the addend folded into the loads) and anywhere. (A load that skipped a check
/// it needed would read wherever its wild address points on the host: where nothing is
/// mapped, its host fault would still send it to its slow path and the right result.)
fn same_everywhere(p: &Program, signal: u64, si_addr: u64, host_faults: u64) {
    let img = elf::build(p);
    let interp = run::run_popek_with(&img, popek_jit::EngineKind::Interp);
    for placement in [run::Placement::Low, run::Placement::Anywhere] {
        let (jit, faults) = run::run_popek_counting_at(&img, popek_jit::EngineKind::Jit, placement);
        assert_eq!(
            faults, host_faults,
            "host faults on the JIT's direct loads ({placement:?})"
        );
        if let Some(d) = run::compare(&interp, &jit) {
            panic!(
                "JIT differs from the interpreter ({placement:?}):\n{d}\n{}",
                elf::listing_text(&img)
            );
        }
    }
    assert!(
        run::qemu_available(),
        "qemu-riscv64 is needed: apt-get install qemu-user"
    );
    let qemu = run::run_qemu(&img);
    if let Some(d) = run::compare(&qemu, &interp) {
        panic!("popek differs from QEMU:\n{d}\n{}", elf::listing_text(&img));
    }
    let dump = &interp.stdout;
    let misc = (popek_difftest::layout::DUMP_MISC - popek_difftest::layout::OUT) as usize;
    let word =
        |k: usize| u64::from_le_bytes(dump[misc + 8 * k..misc + 8 * k + 8].try_into().unwrap());
    assert_eq!((word(1), word(2)), (signal, si_addr), "signal and si_addr");
}

#[test]
fn a_base_written_after_its_check_is_checked_again() {
    // s0 points at the scratch area, then far outside the process: the second load through
    // it must fault, not read host memory where the first one's check said it could.
    for base in [S0, A5] {
        let p = program(
            1,
            vec![vec![ld(A0, 0, base), lui(base, 0x80000), ld(A1, 8, base)]],
            &[(base, GP)],
        );
        same_everywhere(&p, 11, 0xffff_ffff_8000_0008, 0);
    }
}

#[test]
fn a_side_branch_joining_past_a_check_it_skipped_is_checked() {
    // t0 = 0: the branch skips the load that checks s0, which is wild; the load after the
    // join must check s0 itself.
    for base in [S0, A5] {
        let p = program(
            2,
            vec![
                vec![beq_zero_skipping_a_group(T0)],
                vec![ld(A0, 0, base)],
                vec![apart(), ld(A1, 16, base)],
            ],
            &[(T0, 0), (base, 0x4000_0000_0000)],
        );
        same_everywhere(&p, 11, 0x4000_0000_0010, 0);
    }
}

#[test]
fn a_load_near_a_checked_one_faults_at_its_own_address() {
    // The first load passes the check near the end of the process's memory. The next two
    // lie in the window that check covers: the second reads, the third lies past that end
    // and faults on the host, and its slow path makes the guest's fault at its own address.
    for base in [S0, A5] {
        let p = program(
            3,
            vec![vec![
                ld(A0, -16, base),
                apart(),
                ld(A1, 8, base),
                apart(),
                ld(A2, 2000, base),
            ]],
            &[(base, END - 1024)],
        );
        same_everywhere(&p, 11, END + 2000 - 1024, 1);
    }
}

#[test]
fn loads_in_a_checked_window_read_what_the_interpreter_reads() {
    // One check at -2048 covers every offset a load can have; runs and single loads after it
    // go unchecked, and must read the same values.
    for base in [S1, A5] {
        let p = program(
            4,
            vec![vec![
                ld(A0, -2048, base),
                apart(),
                ld(A1, 2040, base),
                apart(),
                ld(A2, -8, base),
                ld(T0, 0, base),
                ld(S0, 8, base),
                apart(),
                ld(A0, 16, base),
            ]],
            &[(base, GP)],
        );
        same_everywhere(&p, 0, 0, 0);
    }
}

/// `slli rd, rs1, shift`.
fn slli(rd: u32, rs1: u32, shift: u32) -> Item {
    let w = shift << 20 | rs1 << 15 | 1 << 12 | rd << 7 | 0x13;
    item(
        w,
        &format!("slli {}, {}, {shift}", gen::xn(rd), gen::xn(rs1)),
    )
}

/// `add rd, rs1, rs2`.
fn add(rd: u32, rs1: u32, rs2: u32) -> Item {
    let w = rs2 << 20 | rs1 << 15 | rd << 7 | 0x33;
    item(
        w,
        &format!("add {}, {}, {}", gen::xn(rd), gen::xn(rs1), gen::xn(rs2)),
    )
}

/// An integer load: `funct3` 0-6 is lb, lh, lw, ld, lbu, lhu, lwu.
fn load(funct3: u32, rd: u32, off: i32, rs1: u32) -> Item {
    let name = ["lb", "lh", "lw", "ld", "lbu", "lhu", "lwu"][funct3 as usize];
    let w = ((off as u32) & 0xfff) << 20 | rs1 << 15 | funct3 << 12 | rd << 7 | 0x03;
    item(
        w,
        &format!("{name} {}, {off}({})", gen::xn(rd), gen::xn(rs1)),
    )
}

const A4: u32 = 14;
/// Sums what the loads of a test read (each load's register is overwritten by the next).
const S2: u32 = 18;

/// `slli t, x, s; add t, t, b; l* t, off(t)` (the JIT makes it one indexed host load, see its
/// `translate::indexed`).
fn indexed(t: u32, x: u32, shift: u32, b: u32, (funct3, off): (u32, i32)) -> Vec<Item> {
    vec![slli(t, x, shift), add(t, t, b), load(funct3, t, off, t)]
}

#[test]
fn indexed_loads_read_what_the_interpreter_reads() {
    // Every width and scale, the base cached or not, both orders of the add's operands, and
    // the index register the sum's own.
    for shift in 0..4 {
        let mut body = Vec::new();
        for funct3 in 0..7 {
            body.push(indexed(A5, A4, shift, S1, (funct3, 8)));
            body.push(vec![add(S2, S2, A5)]);
            body.push(vec![
                slli(A5, A4, shift),
                add(A5, S1, A5),
                load(funct3, A5, -16, A5),
            ]);
            body.push(vec![add(S2, S2, A5), add(A4, A4, T0)]);
        }
        let mut own = vec![add(A5, A4, 0)];
        own.extend(indexed(A5, A5, shift, S1, (3, 0)));
        body.push(own);
        body.push(vec![add(S2, S2, A5)]);
        body.push(indexed(A2, A4, shift, A0, (3, 24)));
        let p = program(
            10 + shift as u64,
            body,
            &[(A4, 3), (T0, 1), (S1, GP - 64), (A0, GP + 128), (S2, 0)],
        );
        same_everywhere(&p, 0, 0, 0);
    }
}

#[test]
fn an_indexed_load_out_of_the_span_faults_with_the_sum_in_its_register() {
    // The sum lies far outside the process: the span check fails, and the guest's fault
    // finds the shift and the add done (a5 holds the address), the load not.
    let wild = 0x4000_0000_0000u64;
    let p = program(
        20,
        vec![indexed(A5, A4, 3, S1, (3, 8))],
        &[(A4, wild >> 3), (S1, 0x100)],
    );
    same_everywhere(&p, 11, wild + 0x108, 0);
}

#[test]
fn an_indexed_load_past_the_end_of_memory_faults_on_the_host_and_then_in_the_guest() {
    // The sum passes the span check but lies past the process's memory: the host faults, and
    // the slow path raises the guest's fault at that address with the sum in a5.
    let p = program(
        21,
        vec![indexed(A5, A4, 2, S1, (2, 4))],
        &[(A4, 0x100), (S1, END)],
    );
    same_everywhere(&p, 11, END + 0x404, 1);
}
