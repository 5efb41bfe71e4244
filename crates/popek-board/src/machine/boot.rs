//! Boot images in RAM and the harts' state at reset, the way QEMU's `virt` leaves them.

use popek_cpu::{Hart, Memory};

use super::MachineConfig;
use crate::error::BoardError;
use crate::fdt::{self, FdtParams};
use crate::loader::{load_blob, load_image, load_kernel};
use crate::memmap;

/// Register state at reset.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct BootState {
    /// Where the harts start.
    pub(super) entry: u64,
    /// The device tree's address (a1).
    pub(super) fdt: u64,
    /// OpenSBI's `fw_dynamic_info` (a2), when booting a kernel.
    pub(super) fw_info: u64,
}

/// Place firmware, kernel, initrd and device tree in RAM the way QEMU's `virt` does.
pub(super) fn load_boot_images(
    config: &MachineConfig,
    mem: &Memory,
) -> Result<BootState, BoardError> {
    let size = config.memory;
    let mib = size >> 20;
    let ram_end = memmap::DRAM + size;
    let too_big = |what: &str| BoardError::TooBigForRam {
        what: what.to_string(),
        mib,
    };
    let mut params = FdtParams {
        harts: config.cpus,
        memory: size,
        bootargs: config.append.clone(),
        initrd: None,
        virtio: config.virtio_devices(),
    };
    let (entry, fw_info, used_end) = match (&config.kernel, &config.bios) {
        (None, None) => return Err(BoardError::NothingToRun),
        (None, Some(bios)) => {
            let image = load_image(bios, mem, memmap::DRAM)?;
            (image.entry, 0, image.end)
        }
        (Some(_), None) => return Err(BoardError::NoFirmware),
        (Some(kernel), Some(bios)) => {
            let fw = load_image(bios, mem, memmap::DRAM)?;
            // The kernel goes at the first 2 MiB boundary after the firmware.
            let kernel_start = (fw.end + (2 << 20) - 1) & !((2 << 20) - 1);
            if kernel_start >= ram_end {
                return Err(too_big("the firmware"));
            }
            let mut end = load_kernel(kernel, mem, kernel_start)?;
            if let Some(initrd) = &config.initrd {
                // Far enough above the kernel that it survives the kernel's own set-up.
                let start = (kernel_start + (size / 2).min(128 << 20)).max((end + 0xfff) & !0xfff);
                let initrd_end = load_blob(initrd, mem, start)?;
                params.initrd = Some((start, initrd_end));
                end = initrd_end;
            }
            let info = write_fw_dynamic_info(mem, kernel_start)?;
            (fw.entry, info, end)
        }
    };
    let blob =
        fdt::build(&params).map_err(|e| BoardError::Internal(format!("device tree: {e}")))?;
    let fdt_addr = fdt::load_address(size, blob.len() as u64);
    if fdt_addr < used_end {
        return Err(too_big("the boot images and device tree"));
    }
    mem.write(fdt_addr, &blob)
        .ok_or_else(|| too_big("the device tree"))?;
    Ok(BootState {
        entry,
        fdt: fdt_addr,
        fw_info,
    })
}

/// Write OpenSBI's `struct fw_dynamic_info` into the mask ROM, as QEMU does: it tells
/// `fw_dynamic` to continue at `next` in S-mode on hart 0.
fn write_fw_dynamic_info(mem: &Memory, next: u64) -> Result<u64, BoardError> {
    const MAGIC: u64 = 0x4942_534f; // "OSBI"
    let fields = [MAGIC, 2, next, 1, 0, 0];
    let bytes: Vec<u8> = fields.iter().flat_map(|f| f.to_le_bytes()).collect();
    let addr = memmap::MROM + 0x100;
    mem.write(addr, &bytes)
        .ok_or_else(|| BoardError::Internal("mask ROM missing".into()))?;
    Ok(addr)
}

/// Put the hart in the state QEMU's reset vector leaves it in: M-mode at the image entry with
/// a0 = hart id and a1 = the device tree.
pub(super) fn reset_hart(hart: &mut Hart, boot: &BootState) {
    hart.set_pc(boot.entry);
    hart.set_xreg(10, hart.csrs().mhartid);
    hart.set_xreg(11, boot.fdt);
    hart.set_xreg(12, boot.fw_info);
}
