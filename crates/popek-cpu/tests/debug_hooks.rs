//! The debugger's hooks: exact single steps, and memory access that the decode cache sees.

use std::ptr::NonNull;

use popek_cpu::{Exit, Hart, HartConfig, Memory, NoBus, RamRegion};

const BASE: u64 = 0x8000_0000;
/// addi t0, t0, 1
const INC1: u32 = 0x0012_8293;
/// addi t0, t0, 5
const INC5: u32 = 0x0052_8293;
/// j .
const SPIN: u32 = 0x0000_006f;

fn hart_with(code: &[u32], ram: &mut Vec<u64>) -> Hart {
    ram.resize(512, 0);
    for (i, w) in code.iter().enumerate() {
        let word = &mut ram[i / 2];
        let shift = 32 * (i % 2);
        *word = (*word & !(0xffff_ffff << shift)) | ((*w as u64) << shift);
    }
    // SAFETY: `ram` outlives the hart in every test below and is not touched while it runs.
    let region = unsafe {
        RamRegion::new(
            BASE,
            4096,
            NonNull::new(ram.as_mut_ptr() as *mut u8).unwrap(),
        )
    };
    let mut hart = Hart::new(
        HartConfig::machine(0, false),
        Memory::new(vec![region]).unwrap(),
    );
    hart.set_pc(BASE);
    hart
}

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
