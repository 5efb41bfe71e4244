//! Device interrupt lines and the software-writable bits of `mip` stay separate.

use std::ptr::NonNull;

use popek_cpu::{Exit, Hart, HartConfig, Memory, NoBus, RamRegion};

const BASE: u64 = 0x8000_0000;

/// A machine-mode hart running `code` from the start of a page of RAM.
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
