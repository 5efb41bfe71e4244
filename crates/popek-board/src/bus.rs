//! The board's MMIO bus: routes the hart's non-RAM accesses to devices by address.

use std::io::Write;

use popek_cpu::{Bus, BusFault};
use popek_devices::boot_timer::{self, BootTimer};
use popek_devices::clint::{self, Clint};
use popek_devices::finisher::{self, Finisher};
use popek_devices::plic::{self, Plic};
use popek_devices::uart::{self, Uart};
use popek_devices::vmgenid::{self, VmGenId};
use popek_devices::MmioDevice;
use popek_virtio::mmio::{self as virtio_mmio, VirtioMmio};

use crate::memmap;

/// All devices of the `virt` board, addressed as on QEMU's `virt`.
pub struct VirtBus<W: Write> {
    /// Core-local interruptor (timers and software interrupts).
    pub clint: Clint,
    /// Platform-level interrupt controller.
    pub plic: Plic,
    /// The console UART.
    pub uart: Uart<W>,
    /// The test finisher (power off / exit status).
    pub finisher: Finisher,
    /// Boot-time signal from the guest.
    pub boot_timer: BootTimer,
    /// VM generation ID (changes on every restore from a snapshot).
    pub vmgenid: VmGenId,
    /// virtio-mmio transports, slot 0 first.
    pub virtio: Vec<VirtioMmio>,
}

/// A fresh random VM generation ID (all zero only if the host has no randomness to give).
pub fn new_generation_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    if let Err(e) = popek_virtio::rng::fill_random(&mut id) {
        tracing::warn!("no random VM generation ID: {e}");
    }
    id
}

impl<W: Write> VirtBus<W> {
    /// The machine was restored from a snapshot: a new VM generation, announced by interrupt.
    pub fn new_generation(&mut self) {
        self.vmgenid.set_id(new_generation_id());
        self.plic.pulse(memmap::VMGENID_IRQ as usize);
    }

    /// The devices of a `harts`-hart board with the console writing to `out`.
    pub fn new(harts: usize, out: W) -> VirtBus<W> {
        VirtBus {
            clint: Clint::new(harts),
            plic: Plic::new(harts),
            uart: Uart::new(out),
            finisher: Finisher::new(),
            boot_timer: BootTimer::new(),
            vmgenid: VmGenId::new(new_generation_id()),
            virtio: Vec::new(),
        }
    }

    /// Reset the devices as a power cycle does: interrupt controller and timers cleared (the
    /// `mtime` clock keeps running, so it stays monotonic), no pending finisher request. The UART
    /// keeps its console; the guest reprograms it when it boots.
    pub fn reset(&mut self) {
        let harts = self.plic.harts();
        self.plic = Plic::new(harts);
        self.clint.reset();
        self.finisher = Finisher::new();
        self.boot_timer = BootTimer::new();
        for v in &mut self.virtio {
            v.reset();
        }
    }

    /// Move device interrupt events into the PLIC.
    pub fn route_interrupts(&mut self) {
        if self.uart.irq().take() {
            self.plic.pulse(memmap::UART0_IRQ as usize);
        }
        for (slot, v) in self.virtio.iter().enumerate() {
            let irq = memmap::VIRTIO_IRQ0 as usize + slot;
            self.plic.set_level(irq, v.signals().pending());
        }
    }

    fn device(&mut self, addr: u64) -> Option<(&mut dyn MmioDevice, u64)> {
        let within = |base: u64, size: u64| addr.checked_sub(base).filter(|off| *off < size);
        if let Some(off) = within(memmap::UART0, uart::SIZE) {
            return Some((&mut self.uart, off));
        }
        if let Some(off) = within(
            memmap::VIRTIO0,
            memmap::VIRTIO_STRIDE * self.virtio.len() as u64,
        ) {
            let slot = (off / memmap::VIRTIO_STRIDE) as usize;
            let v = &mut self.virtio[slot];
            return Some((v, off % virtio_mmio::SIZE));
        }
        if let Some(off) = within(memmap::PLIC, plic::SIZE) {
            return Some((&mut self.plic, off));
        }
        if let Some(off) = within(memmap::CLINT, clint::SIZE) {
            return Some((&mut self.clint, off));
        }
        if let Some(off) = within(memmap::TEST, finisher::SIZE) {
            return Some((&mut self.finisher, off));
        }
        if let Some(off) = within(memmap::BOOT_TIMER, boot_timer::SIZE) {
            return Some((&mut self.boot_timer, off));
        }
        if let Some(off) = within(memmap::VMGENID, vmgenid::SIZE) {
            return Some((&mut self.vmgenid, off));
        }
        None
    }
}

impl<W: Write> Bus for VirtBus<W> {
    fn read(&mut self, addr: u64, size: u8) -> Result<u64, BusFault> {
        let (dev, off) = self.device(addr).ok_or(BusFault)?;
        let v = dev.read(off, size);
        tracing::trace!("mmio read {addr:#x}/{size} = {v:#x}");
        Ok(v)
    }

    fn write(&mut self, addr: u64, size: u8, value: u64) -> Result<(), BusFault> {
        let (dev, off) = self.device(addr).ok_or(BusFault)?;
        tracing::trace!("mmio write {addr:#x}/{size} = {value:#x}");
        dev.write(off, size, value);
        Ok(())
    }

    fn time(&mut self) -> u64 {
        self.clint.mtime()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A restore's new generation: another ID, and its interrupt pending at the PLIC.
    #[test]
    fn new_generation_changes_the_id_and_interrupts() {
        let mut bus = VirtBus::new(1, Vec::new());
        let before = bus.vmgenid.id();
        // Enable the source for hart 0's S-mode context with a priority above the threshold.
        bus.plic.write(4 * memmap::VMGENID_IRQ as u64, 4, 1);
        bus.plic.write(0x2080, 4, 1 << memmap::VMGENID_IRQ);
        assert!(!bus.plic.context_pending(1));
        bus.new_generation();
        assert_ne!(bus.vmgenid.id(), before);
        assert!(bus.plic.context_pending(1));
    }
}
