//! The debugger's hooks: exact single steps, and memory access that the decode cache sees.

mod common;

use common::{hart_with, BASE};
use popek_cpu::{Exit, NoBus};

/// addi t0, t0, 1
const INC1: u32 = 0x0012_8293;
/// addi t0, t0, 5
const INC5: u32 = 0x0052_8293;
/// j .
const SPIN: u32 = 0x0000_006f;

#[test]
fn single_step_retires_exactly_one_instruction() {
    let mut ram = Vec::new();
    let mut hart = hart_with(&[INC1, INC1, INC1, SPIN], &mut ram);
    for n in 1..=3 {
        assert_eq!(hart.single_step(&mut NoBus), Exit::Budget);
        assert_eq!(hart.pc(), BASE + 4 * n);
        assert_eq!(hart.xreg(5), n);
        assert_eq!(hart.instret(), n);
    }
    assert_eq!(hart.single_step(&mut NoBus), Exit::Budget);
    assert_eq!(hart.pc(), BASE + 12, "j . stays put");
}

#[test]
fn debugger_writes_reach_decoded_code() {
    let mut ram = Vec::new();
    let mut hart = hart_with(&[INC1, SPIN], &mut ram);
    assert_eq!(hart.run(&mut NoBus, 10), Exit::Budget);
    assert_eq!(hart.xreg(5), 1);
    // Replace the (decoded) first instruction, as gdb's memory write would.
    assert_eq!(hart.debug_write(BASE, &INC5.to_le_bytes()), 4);
    let mut back = [0u8; 4];
    assert_eq!(hart.debug_read(BASE, &mut back), 4);
    assert_eq!(u32::from_le_bytes(back), INC5);
    hart.set_pc(BASE);
    hart.single_step(&mut NoBus);
    assert_eq!(
        hart.xreg(5),
        6,
        "the hart ran the stale decoded instruction"
    );
}

#[test]
fn debugger_reads_stop_at_the_end_of_ram() {
    let mut ram = Vec::new();
    let hart = hart_with(&[SPIN], &mut ram);
    let mut buf = [0u8; 16];
    assert_eq!(hart.debug_read(BASE + 4096 - 8, &mut buf), 8);
    assert_eq!(hart.debug_read(0x1000, &mut buf), 0);
    assert_eq!(hart.debug_translate(BASE + 12), Some(BASE + 12));
}
