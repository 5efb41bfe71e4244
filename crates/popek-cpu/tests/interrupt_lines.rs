//! Device interrupt lines and the software-writable bits of `mip` stay separate.

mod common;

use common::hart_with;
use popek_cpu::{Exit, NoBus};

#[test]
fn csrs_on_mip_does_not_latch_a_device_line() {
    // li t0, 2 ; csrrs x0, mip, t0 ; j .
    let code = [0x0020_0293, 0x3442_a073, 0x0000_006f];
    let mut ram = Vec::new();
    let mut hart = hart_with(&code, &mut ram);
    let pins = hart.irq_pins();
    pins.set(9, true); // the PLIC raises SEIP
    assert_eq!(hart.run(&mut NoBus, 10), Exit::Budget);
    assert_eq!(hart.csrs().mip, 1 << 1, "only SSIP may be set by the csrrs");
    pins.set(9, false); // the PLIC lowers SEIP
    assert_eq!(hart.csrs().mip & (1 << 9), 0);
}
