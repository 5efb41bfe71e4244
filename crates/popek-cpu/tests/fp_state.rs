//! Writes of the FP CSRs make the FP state dirty (`mstatus.FS`), as the privileged spec and
//! QEMU have it; reads leave it alone.

mod common;

use common::hart_with;
use popek_cpu::csr::mstatus;
use popek_cpu::{Exit, NoBus};

/// `lui t0, 4` (FS = Clean) ; `csrw mstatus, t0` ; `li t1, 1` ; `insn` ; `j .`
fn fs_after(insn: u32) -> u64 {
    let code = [0x0000_42b7, 0x3002_9073, 0x0010_0313, insn, 0x0000_006f];
    let mut ram = Vec::new();
    let mut hart = hart_with(&code, &mut ram);
    assert_eq!(hart.run(&mut NoBus, 10), Exit::Budget);
    hart.csrs().mstatus & mstatus::FS
}

#[test]
fn fp_csr_writes_make_fs_dirty() {
    let clean = 2 << 13;
    // csrr t2, fflags: a read only.
    assert_eq!(fs_after(0x0020_23f3), clean);
    // csrw fflags, t1 ; csrwi frm, 1 ; csrw fcsr, t1
    for write in [0x0013_1073, 0x0020_d073, 0x0033_1073] {
        assert_eq!(fs_after(write), mstatus::FS_DIRTY, "{write:#x}");
    }
}
