//! Helpers shared by popek-cpu's integration tests.
#![allow(dead_code)]

use std::ptr::NonNull;

use popek_cpu::{Hart, HartConfig, Memory, RamRegion};

/// Where the test RAM starts.
pub const BASE: u64 = 0x8000_0000;

/// A machine-mode hart running `code` from the start of a page of RAM.
pub fn hart_with(code: &[u32], ram: &mut Vec<u64>) -> Hart {
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
