//! The virtio-mmio transport, version 2 (virtio 1.2, section 4.2.2).
//!
//! Holds everything the driver negotiates (features, queue layout, device status) and hands
//! configured queues to the device when the driver sets `DRIVER_OK`. A driver that breaks the
//! protocol gets its write ignored (register misuse) or the device in `DEVICE_NEEDS_RESET`
//! (bad queue addresses or descriptors); nothing it does reaches outside guest RAM.

use std::sync::Arc;

use popek_devices::MmioDevice;
use virtio_queue::{Queue, QueueT};

use crate::{features, Activation, DeviceError, GuestMem, GuestWriteHook, Signals, VirtioDevice};

/// Size of one transport's register window.
pub const SIZE: u64 = 0x1000;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VENDOR: u32 = 0x4b45_5050; // "PPEK"

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready: the device may work.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device failed and needs a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// One virtio device behind its register window.
pub struct VirtioMmio {
    device: Box<dyn VirtioDevice>,
    mem: GuestMem,
    signals: Arc<Signals>,
    wrote: GuestWriteHook,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<Queue>,
    /// Whether each queue was ready when handed to the device (for `QueueReady` reads).
    handed_over: Vec<bool>,
    status: u32,
    config_generation: u32,
    /// The queues of a device paused for saving ([`VirtioMmio::pause`]).
    paused: Option<Vec<Queue>>,
}

/// The transport's registers and queue states, as saved.
pub(crate) struct Registers {
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub queue_sel: u32,
    pub status: u32,
    pub config_generation: u32,
    pub interrupt_status: u32,
    pub driver_features: u64,
    pub failed: bool,
    pub queues: Vec<virtio_queue::QueueState>,
    pub handed_over: Vec<bool>,
}

impl VirtioMmio {
    /// A transport for `device`, working on `mem`, signalling through `signals`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMem,
        signals: Arc<Signals>,
        wrote: GuestWriteHook,
    ) -> VirtioMmio {
        let queues = Self::fresh_queues(device.as_ref());
        VirtioMmio {
            handed_over: vec![false; queues.len()],
            device,
            mem,
            signals,
            wrote,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            status: 0,
            config_generation: 0,
            paused: None,
        }
    }

    fn fresh_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
        device
            .queue_sizes()
            .iter()
            .map(|&max| Queue::new(max).expect("device queue sizes are powers of two"))
            .collect()
    }

    /// The interrupt state (its level drives the device's interrupt line).
    pub fn signals(&self) -> &Arc<Signals> {
        &self.signals
    }

    /// The virtio device ID.
    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    fn active(&self) -> bool {
        self.status & status::DRIVER_OK != 0
    }

    /// Reset the device as a write of 0 to `Status` does (machine reset).
    pub fn reset(&mut self) {
        self.device.reset();
        self.queues = Self::fresh_queues(self.device.as_ref());
        self.handed_over = vec![false; self.queues.len()];
        self.signals.clear();
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.status = 0;
        self.paused = None;
    }

    /// Make an active device stop and hand its queues back (see
    /// [`VirtioDevice::take_queues`]) so that [`popek_persist::Persist::save`] sees every queue's
    /// state with nothing in flight; [`VirtioMmio::resume`] starts it again. Fails for a device
    /// that cannot be saved.
    pub fn pause(&mut self) -> Result<(), DeviceError> {
        if !self.active() || self.signals.failed() || self.paused.is_some() {
            return Ok(());
        }
        self.paused = Some(self.device.take_queues()?);
        Ok(())
    }

    /// See [`VirtioDevice::hand_over`]: after [`VirtioMmio::pause`], when the machine moves.
    pub fn hand_over(&mut self) {
        self.device.hand_over();
    }

    /// See [`VirtioDevice::take_over`].
    pub fn take_over(&mut self) -> Result<(), DeviceError> {
        self.device.take_over()
    }

    /// Let a device paused by [`VirtioMmio::pause`] go on.
    pub fn resume(&mut self) {
        if let Some(queues) = self.paused.take() {
            self.start_device(queues);
        }
    }

    /// Everything [`popek_persist::Persist`] saves.
    pub(crate) fn registers(&self) -> Registers {
        let queues = match &self.paused {
            Some(p) if p.len() == self.queue_count() => p.iter().map(|q| q.state()).collect(),
            _ => self.queues.iter().map(|q| q.state()).collect(),
        };
        Registers {
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            queue_sel: self.queue_sel,
            status: self.status,
            config_generation: self.config_generation,
            interrupt_status: self.signals.status(),
            driver_features: self.driver_features,
            failed: self.signals.failed(),
            queues,
            handed_over: self.handed_over.clone(),
        }
    }

    /// Guest-physical ranges of the rings of every configured queue (descriptor table,
    /// available and used rings), as saved: devices write the used rings directly.
    pub fn ring_areas(&self) -> Vec<(u64, u64)> {
        let mut areas = Vec::new();
        for q in self.registers().queues.iter().filter(|q| q.ready) {
            let n = q.size as u64;
            areas.push((q.desc_table, 16 * n));
            areas.push((q.avail_ring, 6 + 2 * n));
            areas.push((q.used_ring, 6 + 8 * n));
        }
        areas
    }

    /// Number of queues the device has.
    pub(crate) fn queue_count(&self) -> usize {
        self.device.queue_sizes().len()
    }

    /// Restore saved registers on a fresh transport; an active device is started on `queues`.
    pub(crate) fn set_registers(
        &mut self,
        r: Registers,
        queues: Vec<Queue>,
    ) -> Result<(), DeviceError> {
        self.reset();
        self.device_features_sel = r.device_features_sel;
        self.driver_features_sel = r.driver_features_sel;
        self.queue_sel = r.queue_sel;
        self.status = r.status;
        self.config_generation = r.config_generation;
        self.driver_features = r.driver_features;
        self.handed_over = r.handed_over;
        if r.failed {
            self.signals.fail("failed before the snapshot was taken");
        }
        if self.active() && !r.failed {
            for q in queues.iter().filter(|q| q.ready()) {
                if !q.is_valid(&self.mem) {
                    return Err(DeviceError::QueueOutsideRam);
                }
            }
            self.start_device(queues);
        } else {
            self.queues = queues;
        }
        self.signals.set_status(r.interrupt_status);
        Ok(())
    }

    /// Hand `queues` to the device.
    fn start_device(&mut self, queues: Vec<Queue>) {
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            features: self.driver_features,
            signals: self.signals.clone(),
            wrote: self.wrote.clone(),
        };
        if let Err(e) = self.device.activate(activation) {
            self.signals.fail(&e.to_string());
        }
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        if self.active() {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let new = value & !self.status;
        if value & self.status != self.status {
            popek_devices::guest_warn!(
                "virtio: driver cleared status bits ({:#x} -> {value:#x})",
                self.status
            );
            return;
        }
        if new & status::FEATURES_OK != 0 {
            let offered = self.device.features();
            if self.driver_features & !offered != 0
                || self.driver_features & features::VERSION_1 == 0
            {
                popek_devices::guest_warn!(
                    "virtio: driver features {:#x} not acceptable (offered {offered:#x})",
                    self.driver_features
                );
                self.status = value & !(status::FEATURES_OK | status::DRIVER_OK);
                return;
            }
        }
        self.status = value;
        if new & status::DRIVER_OK != 0 {
            if self.status & status::FEATURES_OK == 0 {
                self.signals.fail("DRIVER_OK without FEATURES_OK");
                return;
            }
            self.activate();
        }
    }

    fn activate(&mut self) {
        let event_idx = self.driver_features & features::RING_EVENT_IDX != 0;
        for (i, q) in self.queues.iter_mut().enumerate() {
            if q.ready() {
                if !q.is_valid(&self.mem) {
                    self.signals
                        .fail(&format!("queue {i} lies outside guest RAM or is malformed"));
                    return;
                }
                q.set_event_idx(event_idx);
            }
        }
        self.handed_over = self.queues.iter().map(|q| q.ready()).collect();
        let queues = Self::fresh_queues(self.device.as_ref());
        let queues = std::mem::replace(&mut self.queues, queues);
        self.start_device(queues);
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            0x00 => MAGIC,
            0x04 => 2,
            0x08 => self.device.device_type(),
            0x0c => VENDOR,
            0x10 => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            0x34 => self
                .device
                .queue_sizes()
                .get(self.queue_sel as usize)
                .map_or(0, |&n| n as u32),
            0x44 => {
                let i = self.queue_sel as usize;
                if self.active() {
                    self.handed_over.get(i).copied().unwrap_or(false) as u32
                } else {
                    self.queues.get(i).is_some_and(|q| q.ready()) as u32
                }
            }
            0x60 => self.signals.status(),
            0x70 => {
                let failed = if self.signals.failed() {
                    status::DEVICE_NEEDS_RESET
                } else {
                    0
                };
                self.status | failed
            }
            0xfc => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, v: u32) {
        match offset {
            0x14 => self.device_features_sel = v,
            0x20 => {
                if self.status & status::FEATURES_OK == 0 {
                    match self.driver_features_sel {
                        0 => {
                            self.driver_features = (self.driver_features & !0xffff_ffff) | v as u64
                        }
                        1 => {
                            self.driver_features =
                                (self.driver_features & 0xffff_ffff) | (v as u64) << 32
                        }
                        _ => {}
                    }
                }
            }
            0x24 => self.driver_features_sel = v,
            0x30 => self.queue_sel = v,
            0x38 => {
                if let Some(q) = self.selected() {
                    q.set_size(v as u16);
                }
            }
            0x44 => {
                if let Some(q) = self.selected() {
                    q.set_ready(v == 1);
                }
            }
            0x50 => {
                if self.active() && !self.signals.failed() {
                    if (v as usize) < self.handed_over.len() {
                        self.device.notify(v as u16);
                    } else {
                        popek_devices::guest_warn!(
                            "virtio: notify of queue {v}, which does not exist"
                        );
                    }
                }
            }
            0x64 => self.signals.acknowledge(v),
            0x70 => self.set_status(v),
            0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 => {
                let high = offset & 4 != 0;
                let (lo, hi) = if high {
                    (None, Some(v))
                } else {
                    (Some(v), None)
                };
                if let Some(q) = self.selected() {
                    match offset & !4 {
                        0x80 => q.set_desc_table_address(lo, hi),
                        0x90 => q.set_avail_ring_address(lo, hi),
                        _ => q.set_used_ring_address(lo, hi),
                    }
                }
            }
            _ => tracing::debug!("virtio: write of {v:#x} to register {offset:#x} ignored"),
        }
    }
}

impl MmioDevice for VirtioMmio {
    fn read(&mut self, offset: u64, size: u8) -> u64 {
        if offset >= 0x100 {
            let mut buf = [0u8; 8];
            let n = (size as usize).min(8);
            self.device.read_config(offset - 0x100, &mut buf[..n]);
            return u64::from_le_bytes(buf);
        }
        if size != 4 || offset & 3 != 0 {
            return 0;
        }
        self.read_register(offset) as u64
    }

    fn write(&mut self, offset: u64, size: u8, value: u64) {
        if offset >= 0x100 {
            let n = (size as usize).min(8);
            self.device
                .write_config(offset - 0x100, &value.to_le_bytes()[..n]);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        if size != 4 || offset & 3 != 0 {
            tracing::debug!("virtio: {size}-byte write to register {offset:#x} ignored");
            return;
        }
        self.write_register(offset, value as u32);
    }
}

impl Drop for VirtioMmio {
    fn drop(&mut self) {
        self.device.reset();
    }
}
