//! The flattened device tree handed to the guest in a1: describes exactly the devices the board
//! has, at QEMU `virt`'s addresses, so firmware and kernels find them without configuration.

use vm_fdt::{FdtWriter, FdtWriterResult};

use crate::memmap;
use popek_devices::{clint, finisher, uart};

/// The ISA string of popek's harts.
pub const ISA: &str = "rv64imafdc_zicntr_zicsr_zifencei";

/// Build the device tree for a machine with `harts` harts and `memory` bytes of RAM.
pub fn build(harts: u32, memory: u64, bootargs: &str) -> FdtWriterResult<Vec<u8>> {
    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_string("compatible", "riscv-virtio")?;
    fdt.property_string("model", "riscv-virtio,qemu")?;

    let chosen = fdt.begin_node("chosen")?;
    fdt.property_string("stdout-path", &format!("/soc/serial@{:x}", memmap::UART0))?;
    fdt.property_string("bootargs", bootargs)?;
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
    fdt.end_node(serial)?;

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
        let blob = build(1, 128 << 20, "").unwrap();
        assert_eq!(&blob[..4], &[0xd0, 0x0d, 0xfe, 0xed]);
        assert_eq!(load_address(128 << 20, blob.len() as u64), 0x87e0_0000);
    }
}
