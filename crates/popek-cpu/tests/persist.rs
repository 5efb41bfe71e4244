//! A hart survives save/restore: the restored copy saves the same bytes and runs on identically.

mod common;

use common::{hart_with, BASE};
use popek_cpu::{Hart, NoBus};
use popek_persist::{check_round_trip, Decoder, Encoder, Persist};

/// addi x1, x0, 5; csrw mscratch, x1; addi x2, x1, 1; (illegal: FP is off) ; j .
const CODE: [u32; 5] = [
    0x0050_0093,
    0x3400_9073,
    0x0010_8113,
    0xd221_01d3,
    0x0000_006f,
];

fn fresh() -> Hart {
    // Each hart gets its own RAM page for the life of the test process.
    let ram: &'static mut Vec<u64> = Box::leak(Box::default());
    let mut hart = hart_with(&CODE, ram);
    hart.set_fcsr(0);
    hart
}

#[test]
fn hart_round_trips() {
    check_round_trip(fresh, |h| {
        h.run(&mut NoBus, 3);
        assert_eq!(h.xreg(2), 6);
    });
}

#[test]
fn restored_hart_runs_on_identically() {
    let mut a = fresh();
    a.run(&mut NoBus, 2);
    let mut enc = Encoder::new();
    a.save(&mut enc);
    let bytes = enc.into_bytes();
    let mut b = fresh();
    let mut dec = Decoder::new("hart0", &bytes);
    b.restore(&mut dec).unwrap();
    dec.finish().unwrap();
    assert_eq!(b.pc(), BASE + 8);
    assert_eq!(b.csrs().mscratch, 5);
    for h in [&mut a, &mut b] {
        h.run(&mut NoBus, 100);
    }
    assert_eq!(a.pc(), b.pc());
    assert_eq!(a.instret(), b.instret());
    for i in 0..32 {
        assert_eq!(a.xreg(i), b.xreg(i), "x{i}");
        assert_eq!(a.freg(i), b.freg(i), "f{i}");
    }
    assert_eq!(a.csrs().mcause, b.csrs().mcause);
}

/// A store marks its page in the memory's dirty log while logging is on.
#[test]
fn stores_mark_the_dirty_log() {
    use popek_cpu::DirtyLog;
    use std::sync::Arc;
    // auipc x1, 0; sd x0, 256(x1); j .
    let code = [0x0000_0097, 0x1000_b023, 0x0000_006f];
    let ram: &'static mut Vec<u64> = Box::leak(Box::default());
    let hart = hart_with(&code, ram);
    let log = Arc::new(DirtyLog::new(BASE, 4096));
    let mem = hart.memory().clone().with_dirty_log(log.clone());
    let mut hart = Hart::new(popek_cpu::HartConfig::machine(0, false), mem);
    hart.set_pc(BASE);
    log.start();
    hart.run(&mut NoBus, 3);
    assert_eq!(hart.pc(), BASE + 8, "at the final jump");
    assert_eq!(log.take(), vec![0]);
}
