//! Guest-physical memory map, identical to QEMU's `virt` machine (plus popek's boot timer in a
//! hole QEMU leaves unused).

/// Mask ROM: QEMU keeps its reset vector and the OpenSBI `fw_dynamic_info` here.
pub const MROM: u64 = 0x1000;
/// Size of the mask ROM.
pub const MROM_SIZE: u64 = 0xf000;
/// SiFive test finisher (power off / reset / exit code).
pub const TEST: u64 = 0x10_0000;
/// popek's boot-timer device (unused address on QEMU's `virt`).
pub const BOOT_TIMER: u64 = 0x10_2000;
/// VM generation ID (`microsoft,vmgenid`; unused address on QEMU's `virt`).
pub const VMGENID: u64 = 0x10_3000;
/// PLIC source of the VM generation ID's change notification.
pub const VMGENID_IRQ: u32 = 12;
/// CLINT (ACLINT MSWI and MTIMER).
pub const CLINT: u64 = 0x200_0000;
/// Platform-level interrupt controller.
pub const PLIC: u64 = 0xc00_0000;
/// NS16550A UART 0.
pub const UART0: u64 = 0x1000_0000;
/// PLIC source of UART 0.
pub const UART0_IRQ: u32 = 10;
/// Start of RAM.
pub const DRAM: u64 = 0x8000_0000;
/// First virtio-mmio transport; the others follow every [`VIRTIO_STRIDE`] bytes.
pub const VIRTIO0: u64 = 0x1000_1000;
/// Distance between virtio-mmio transports.
pub const VIRTIO_STRIDE: u64 = 0x1000;
/// Number of virtio-mmio slots (as on QEMU's `virt`).
pub const VIRTIO_SLOTS: usize = 8;
/// PLIC source of the first virtio-mmio transport (slot `n` has `VIRTIO_IRQ0 + n`).
pub const VIRTIO_IRQ0: u32 = 1;
