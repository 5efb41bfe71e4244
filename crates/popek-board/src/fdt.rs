//! The flattened device tree handed to the guest in a1: describes exactly the devices the board
//! has, at QEMU `virt`'s addresses, so firmware and kernels find them without configuration.

use vm_fdt::{FdtWriter, FdtWriterResult};

use crate::memmap;
use popek_devices::{boot_timer, clint, finisher, plic, uart, vmgenid};

/// What the device tree describes beyond the fixed board.
#[derive(Clone, Debug, Default)]
pub struct FdtParams {
    /// Number of harts.
    pub harts: u32,
    /// RAM size in bytes.
    pub memory: u64,
    /// Kernel command line.
    pub bootargs: String,
    /// Physical range of the initial RAM disk, if one was loaded.
    pub initrd: Option<(u64, u64)>,
    /// Number of virtio-mmio transports in use (slots `0..n`).
    pub virtio: usize,
}

/// The ISA string of popek's harts.
pub const ISA: &str = "rv64imafdc_zicntr_zicsr_zifencei";
/// The same, as the list of `riscv,isa-extensions`.
const ISA_EXTENSIONS: [&str; 9] = ["i", "m", "a", "f", "d", "c", "zicntr", "zicsr", "zifencei"];

/// Build the device tree.
pub fn build(p: &FdtParams) -> FdtWriterResult<Vec<u8>> {
    let (harts, memory) = (p.harts, p.memory);
    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_string("compatible", "riscv-virtio")?;
    fdt.property_string("model", "riscv-virtio,qemu")?;

    let chosen = fdt.begin_node("chosen")?;
    fdt.property_string("stdout-path", &format!("/soc/serial@{:x}", memmap::UART0))?;
    fdt.property_string("bootargs", &p.bootargs)?;
    if let Some((start, end)) = p.initrd {
        fdt.property_u64("linux,initrd-start", start)?;
        fdt.property_u64("linux,initrd-end", end)?;
    }
    fdt.end_node(chosen)?;

    let mem = fdt.begin_node(&format!("memory@{:x}", memmap::DRAM))?;
    fdt.property_string("device_type", "memory")?;
    fdt.property_array_u64("reg", &[memmap::DRAM, memory])?;
    fdt.end_node(mem)?;

    let cpus = fdt.begin_node("cpus")?;
    fdt.property_u32("#address-cells", 1)?;
    fdt.property_u32("#size-cells", 0)?;
    fdt.property_u32("timebase-frequency", clint::TIMEBASE_HZ as u32)?;
    for h in 0..harts {
        let cpu = fdt.begin_node(&format!("cpu@{h}"))?;
        fdt.property_string("device_type", "cpu")?;
        fdt.property_u32("reg", h)?;
        fdt.property_string("status", "okay")?;
        fdt.property_string("compatible", "riscv")?;
        fdt.property_string("riscv,isa", ISA)?;
        // The modern form, so kernels need not parse the deprecated string.
        fdt.property_string("riscv,isa-base", "rv64i")?;
        fdt.property_string_list(
            "riscv,isa-extensions",
            ISA_EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        )?;
        fdt.property_string("mmu-type", "riscv,sv57")?;
        let intc = fdt.begin_node("interrupt-controller")?;
        fdt.property_u32("#interrupt-cells", 1)?;
        fdt.property_null("interrupt-controller")?;
        fdt.property_string("compatible", "riscv,cpu-intc")?;
        fdt.property_u32("phandle", intc_phandle(h))?;
        fdt.end_node(intc)?;
        fdt.end_node(cpu)?;
    }
    fdt.end_node(cpus)?;

    let soc = fdt.begin_node("soc")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_string("compatible", "simple-bus")?;
    fdt.property_null("ranges")?;

    let test = fdt.begin_node(&format!("test@{:x}", memmap::TEST))?;
    fdt.property_string_list(
        "compatible",
        vec![
            "sifive,test1".into(),
            "sifive,test0".into(),
            "syscon".into(),
        ],
    )?;
    fdt.property_array_u64("reg", &[memmap::TEST, finisher::SIZE])?;
    fdt.property_u32("phandle", TEST_PHANDLE)?;
    fdt.end_node(test)?;

    let poweroff = fdt.begin_node("poweroff")?;
    fdt.property_string("compatible", "syscon-poweroff")?;
    fdt.property_u32("regmap", TEST_PHANDLE)?;
    fdt.property_u32("offset", 0)?;
    fdt.property_u32("value", 0x5555)?;
    fdt.end_node(poweroff)?;

    let reboot = fdt.begin_node("reboot")?;
    fdt.property_string("compatible", "syscon-reboot")?;
    fdt.property_u32("regmap", TEST_PHANDLE)?;
    fdt.property_u32("offset", 0)?;
    fdt.property_u32("value", 0x7777)?;
    fdt.end_node(reboot)?;

    let serial = fdt.begin_node(&format!("serial@{:x}", memmap::UART0))?;
    fdt.property_string("compatible", "ns16550a")?;
    fdt.property_array_u64("reg", &[memmap::UART0, uart::SIZE])?;
    fdt.property_u32("clock-frequency", 0x38_4000)?;
    fdt.property_u32("interrupts", memmap::UART0_IRQ)?;
    fdt.property_u32("interrupt-parent", PLIC_PHANDLE)?;
    fdt.end_node(serial)?;

    for slot in 0..p.virtio {
        let base = memmap::VIRTIO0 + slot as u64 * memmap::VIRTIO_STRIDE;
        let node = fdt.begin_node(&format!("virtio_mmio@{base:x}"))?;
        fdt.property_string("compatible", "virtio,mmio")?;
        fdt.property_array_u64("reg", &[base, memmap::VIRTIO_STRIDE])?;
        fdt.property_u32("interrupts", memmap::VIRTIO_IRQ0 + slot as u32)?;
        fdt.property_u32("interrupt-parent", PLIC_PHANDLE)?;
        fdt.property_null("dma-coherent")?;
        fdt.end_node(node)?;
    }

    let timer = fdt.begin_node(&format!("boot-timer@{:x}", memmap::BOOT_TIMER))?;
    fdt.property_string("compatible", "popek,boot-timer")?;
    fdt.property_array_u64("reg", &[memmap::BOOT_TIMER, boot_timer::SIZE])?;
    fdt.end_node(timer)?;

    let genid = fdt.begin_node(&format!("vmgenid@{:x}", memmap::VMGENID))?;
    fdt.property_string("compatible", "microsoft,vmgenid")?;
    fdt.property_array_u64("reg", &[memmap::VMGENID, vmgenid::SIZE])?;
    fdt.property_u32("interrupts", memmap::VMGENID_IRQ)?;
    fdt.property_u32("interrupt-parent", PLIC_PHANDLE)?;
    fdt.end_node(genid)?;

    let plic_node = fdt.begin_node(&format!("plic@{:x}", memmap::PLIC))?;
    fdt.property_u32("phandle", PLIC_PHANDLE)?;
    fdt.property_u32("riscv,ndev", plic::NUM_SOURCES as u32 - 1)?;
    fdt.property_array_u64("reg", &[memmap::PLIC, plic::SIZE])?;
    let mut ext = Vec::new();
    for h in 0..harts {
        // Each hart's M-mode (11) and S-mode (9) external interrupt, in context order.
        ext.extend_from_slice(&[intc_phandle(h), 11, intc_phandle(h), 9]);
    }
    fdt.property_array_u32("interrupts-extended", &ext)?;
    fdt.property_null("interrupt-controller")?;
    fdt.property_string_list(
        "compatible",
        vec!["sifive,plic-1.0.0".into(), "riscv,plic0".into()],
    )?;
    fdt.property_u32("#address-cells", 0)?;
    fdt.property_u32("#interrupt-cells", 1)?;
    fdt.end_node(plic_node)?;

    let clint_node = fdt.begin_node(&format!("clint@{:x}", memmap::CLINT))?;
    fdt.property_string_list(
        "compatible",
        vec!["sifive,clint0".into(), "riscv,clint0".into()],
    )?;
    fdt.property_array_u64("reg", &[memmap::CLINT, clint::SIZE])?;
    let mut ext = Vec::new();
    for h in 0..harts {
        // Machine software (3) and machine timer (7) interrupts of each hart.
        ext.extend_from_slice(&[intc_phandle(h), 3, intc_phandle(h), 7]);
    }
    fdt.property_array_u32("interrupts-extended", &ext)?;
    fdt.end_node(clint_node)?;

    fdt.end_node(soc)?;
    fdt.end_node(root)?;
    fdt.finish()
}

const TEST_PHANDLE: u32 = 1;
const PLIC_PHANDLE: u32 = 2;

fn intc_phandle(hart: u32) -> u32 {
    0x100 + hart
}

/// Where QEMU's `virt` puts the device tree: the end of RAM (capped at 3 GiB) minus its size,
/// aligned down to 2 MiB.
pub fn load_address(memory: u64, fdt_len: u64) -> u64 {
    let end = (memmap::DRAM + memory).min(3 << 30);
    (end - fdt_len) & !((2 << 20) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_valid_blob() {
        let blob = build(&FdtParams {
            harts: 1,
            memory: 128 << 20,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(&blob[..4], &[0xd0, 0x0d, 0xfe, 0xed]);
        assert_eq!(load_address(128 << 20, blob.len() as u64), 0x87e0_0000);
    }
}
