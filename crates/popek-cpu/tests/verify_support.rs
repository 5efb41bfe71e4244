//! What `--engine verify` builds on: checkpoints, the store log and its undo, and the
//! interpreter running an exact number of instructions.

mod common;

use common::{hart_with, BASE};
use popek_cpu::{Bus, BusFault, Exception, NoBus};

fn i_type(imm: i32, rs1: u32, f3: u32, rd: u32, op: u32) -> u32 {
    ((imm as u32) & 0xfff) << 20 | rs1 << 15 | f3 << 12 | rd << 7 | op
}
fn s_type(imm: i32, rs2: u32, rs1: u32, f3: u32) -> u32 {
    let imm = imm as u32;
    (imm >> 5 & 0x7f) << 25 | rs2 << 20 | rs1 << 15 | f3 << 12 | (imm & 0x1f) << 7 | 0x23
}

/// t1 = BASE; t0 += 7; [t1+0x400] = t0 (8 bytes); [t1+0x408] = t0 (4 bytes); t0 += 1;
/// t2 = [t1+0x400]; then `j .`.
fn program() -> Vec<u32> {
    vec![
        0x0000_0317, // auipc t1, 0
        i_type(7, 5, 0, 5, 0x13),
        s_type(0x400, 5, 6, 3),
        s_type(0x408, 5, 6, 2),
        i_type(1, 5, 0, 5, 0x13),
        i_type(0x400, 6, 3, 7, 0x03),
        0x0000_006f,
    ]
}

fn word(hart: &popek_cpu::Hart, addr: u64) -> u64 {
    let mut b = [0u8; 8];
    assert_eq!(hart.debug_read(addr, &mut b), 8);
    u64::from_le_bytes(b)
}

#[test]
fn a_logged_run_is_undone_and_runs_again_the_same() {
    let mut ram = Vec::new();
    let mut hart = hart_with(&program(), &mut ram);
    hart.log_stores(true);
    let start = hart.checkpoint();
    assert_eq!(hart.interpret_exactly(&mut NoBus, 6), Ok(()));
    assert_eq!((hart.pc(), hart.instret()), (BASE + 24, 6));
    assert_eq!((hart.xreg(5), hart.xreg(7)), (8, 7));
    let first = hart.checkpoint();
    let log = hart.take_store_log();
    assert!(!log.touched_mmio());
    assert_eq!(hart.store_results(&log), vec![7, 7]);
    assert_eq!(word(&hart, BASE + 0x400), 7);

    hart.undo_stores(&log);
    assert_eq!(word(&hart, BASE + 0x400), 0, "undone");
    assert_eq!(word(&hart, BASE + 0x408), 0, "undone");
    hart.rewind(&start);
    assert_eq!((hart.pc(), hart.instret(), hart.xreg(5)), (BASE, 0, 0));
    assert!(!hart.checkpoint().same_as(&first));

    assert_eq!(hart.interpret_exactly(&mut NoBus, 6), Ok(()));
    let second = hart.checkpoint();
    assert!(second.same_as(&first));
    assert!(second.differences(&first).is_empty());
    let again = hart.take_store_log();
    assert!(again.same_places(&log));
    assert_eq!(hart.store_results(&again), vec![7, 7]);
}

#[test]
fn differences_name_the_registers() {
    let mut ram = Vec::new();
    let mut hart = hart_with(&program(), &mut ram);
    let a = hart.checkpoint();
    hart.set_xreg(9, 0x55);
    hart.set_pc(BASE + 8);
    let d = a.differences(&hart.checkpoint());
    assert_eq!(
        d,
        vec![
            ("x9".to_string(), 0, 0x55),
            ("pc".to_string(), BASE, BASE + 8)
        ]
    );
}

#[test]
fn a_trap_stops_at_the_faulting_instruction_unretired() {
    let mut ram = Vec::new();
    // t1 = 0x1000 (no RAM there: MMIO, which NoBus refuses); ld t2, 0(t1).
    let mut hart = hart_with(
        &[
            i_type(0x100, 0, 0, 6, 0x13),
            0x0043_1313,
            i_type(0, 6, 3, 7, 0x03),
        ],
        &mut ram,
    );
    hart.log_stores(true);
    let r = hart.interpret_exactly(&mut NoBus, 5);
    assert_eq!(
        r.map_err(|t| (t.cause, t.tval)),
        Err((Exception::LoadAccessFault, 0x1000))
    );
    assert_eq!((hart.pc(), hart.instret()), (BASE + 8, 2));
    assert!(
        !hart.take_store_log().touched_mmio(),
        "the bus refused the load: no device saw it"
    );

    // With a device there, the same load succeeds and the log says a device saw it.
    struct Device;
    impl Bus for Device {
        fn read(&mut self, _: u64, _: u8) -> Result<u64, BusFault> {
            Ok(0x42)
        }
        fn write(&mut self, _: u64, _: u8, _: u64) -> Result<(), BusFault> {
            Ok(())
        }
        fn time(&mut self) -> u64 {
            0
        }
    }
    assert_eq!(hart.interpret_exactly(&mut Device, 1), Ok(()));
    assert_eq!(hart.xreg(7), 0x42);
    assert!(hart.take_store_log().touched_mmio());
}
