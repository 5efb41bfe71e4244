//! The decode cache backs each host page of decoded slots with one page fault, not two: the
//! interpreter writes to a slot's host page before reading it (see `back_for_write`).

mod common;

use popek_cpu::{Exit, NoBus};

/// Minor page faults this thread has taken.
fn thread_minor_faults() -> i64 {
    // SAFETY: `getrusage` writes one `rusage` into the zeroed value it is given.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut u), 0);
        u.ru_minflt
    }
}

/// Host page faults of a fresh hart interpreting `n` consecutive `addi x5, x5, 1` (its
/// decode cache's, and whatever else a first run touches).
fn faults_running(n: usize) -> i64 {
    const ADDI_X5: u32 = (1 << 20) | (5 << 15) | (5 << 7) | 0x13;
    let mut ram = Vec::new();
    let mut hart = common::hart_with(&vec![ADDI_X5; n], &mut ram);
    let before = thread_minor_faults();
    let exit = hart.run(&mut NoBus, n as u64);
    let faults = thread_minor_faults() - before;
    assert_eq!((exit, hart.xreg(5)), (Exit::Budget, n as u64));
    faults
}

#[test]
fn each_host_page_of_decoded_slots_faults_once() {
    // 100 instructions fill 200 two-byte slots, one host page of 8-byte slots; 1,000 fill
    // 2,000 slots, four host pages. The three more cost three faults (six when each was read
    // before it was written).
    // A first run in the thread also pays for what the process sets up once.
    faults_running(100);
    let small = faults_running(100);
    let large = faults_running(1000);
    assert_eq!(std::mem::size_of::<popek_cpu::decode::Insn>(), 8);
    assert_eq!(
        large - small,
        3,
        "{small} faults for 100 instructions, {large} for 1,000"
    );
}
