//! popek's virtio devices over the virtio-mmio transport (virtio 1.x, modern interface only).
//!
//! The transport ([`mmio::VirtioMmio`]) sees register accesses, like every popek device, and
//! the devices see guest memory through `vm-memory` and their queues through `virtio-queue`.
//! Nothing here knows how the CPU is executed: the interpreter, a JIT or a hardware
//! virtualization engine drive the same models. A device tells the machine about interrupts
//! through [`Signals`], whose `kick` hook the board provides.

pub mod blk;
mod blk_overlay;
pub mod chain;
pub mod console;
mod error;
pub mod mmio;
pub mod net;
mod persist;
pub mod rng;
pub mod tap;
#[cfg(test)]
pub(crate) mod testutil;
pub mod vsock;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

pub use error::DeviceError;

/// Guest memory as devices see it.
pub type GuestMem = GuestMemoryMmap<()>;

/// Virtio device types (virtio 1.2, section 5).
pub mod device_type {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Console.
    pub const CONSOLE: u32 = 3;
    /// Entropy source.
    pub const RNG: u32 = 4;
    /// Socket device.
    pub const VSOCK: u32 = 19;
}

/// Feature bits shared by every device type.
pub mod features {
    /// Indirect descriptor tables (`VIRTIO_RING_F_INDIRECT_DESC`).
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    /// `used_event`/`avail_event` notification suppression (`VIRTIO_RING_F_EVENT_IDX`).
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// The modern (1.x) interface; popek offers nothing else.
    pub const VERSION_1: u64 = 1 << 32;
}

/// Called after a device wrote guest memory directly, with the guest-physical range: the
/// machine forgets whatever it derived from those bytes (decoded instructions).
pub type GuestWriteHook = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Interrupt state of one device, shared between the transport (which the guest reads and
/// acknowledges) and whichever thread does the device's work.
pub struct Signals {
    status: AtomicU32,
    needs_reset: AtomicBool,
    kick: Box<dyn Fn() + Send + Sync>,
}

/// `InterruptStatus` bit: a used buffer was added to a queue.
pub const INT_USED_RING: u32 = 1;
/// `InterruptStatus` bit: the configuration (or device status) changed.
pub const INT_CONFIG: u32 = 2;

impl Signals {
    /// Interrupt state whose changes call `kick`, which must make the machine re-read
    /// [`Signals::pending`] soon; it is called from device threads and from inside MMIO
    /// accesses, so it must not take the machine's device lock.
    pub fn new(kick: Box<dyn Fn() + Send + Sync>) -> Arc<Signals> {
        Arc::new(Signals {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            kick,
        })
    }

    /// Tell the driver that a queue has new used buffers.
    pub fn used_buffer(&self) {
        self.status.fetch_or(INT_USED_RING, Ordering::AcqRel);
        (self.kick)();
    }

    /// Put the device in the failed state the driver sees as `DEVICE_NEEDS_RESET` (the guest
    /// broke the protocol, or the backend failed): the device does nothing until reset.
    pub fn fail(&self, why: &str) {
        popek_devices::guest_warn!("virtio device needs reset: {why}");
        self.needs_reset.store(true, Ordering::Release);
        self.status.fetch_or(INT_CONFIG, Ordering::AcqRel);
        (self.kick)();
    }

    /// Whether the device is in the failed state.
    pub fn failed(&self) -> bool {
        self.needs_reset.load(Ordering::Acquire)
    }

    /// The `InterruptStatus` register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    /// The level of the device's interrupt line.
    pub fn pending(&self) -> bool {
        self.status() != 0
    }

    /// Set the whole `InterruptStatus` (restoring a snapshot).
    fn set_status(&self, bits: u32) {
        self.status.store(bits, Ordering::Release);
    }

    fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::AcqRel);
    }

    fn clear(&self) {
        self.status.store(0, Ordering::Release);
        self.needs_reset.store(false, Ordering::Release);
    }
}

/// What a device gets when the driver sets `DRIVER_OK`.
pub struct Activation {
    /// Guest memory.
    pub mem: GuestMem,
    /// The queues, configured and ready (one per entry of [`VirtioDevice::queue_sizes`]; a
    /// queue the driver left unused is not ready).
    pub queues: Vec<Queue>,
    /// Features both sides agreed on.
    pub features: u64,
    /// Interrupts and failure reporting.
    pub signals: Arc<Signals>,
    /// Report direct writes to guest memory.
    pub wrote: GuestWriteHook,
}

/// What a device with a single queue works with once active.
pub struct SingleQueue {
    /// Guest memory.
    pub mem: GuestMem,
    /// The device's one queue.
    pub queue: Queue,
    /// Interrupts and failure reporting.
    pub signals: Arc<Signals>,
    /// Report direct writes to guest memory.
    pub wrote: GuestWriteHook,
}

impl Activation {
    /// The state of a single-queue device (`name` is for the error): its first queue must be
    /// ready.
    pub fn single_queue(self, name: &'static str) -> Result<SingleQueue, DeviceError> {
        let queue = self.queues.into_iter().next().filter(|q| q.ready()).ok_or(
            DeviceError::QueueNotSetUp {
                device: name,
                queue: "request",
            },
        )?;
        Ok(SingleQueue {
            mem: self.mem,
            queue,
            signals: self.signals,
            wrote: self.wrote,
        })
    }
}

/// A virtio device behind the MMIO transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID.
    fn device_type(&self) -> u32;
    /// Largest size of each queue (a power of two).
    fn queue_sizes(&self) -> &[u16];
    /// Features the device offers (must include [`features::VERSION_1`]).
    fn features(&self) -> u64;
    /// Read the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write the device-specific configuration space (ignored by default: most of it is
    /// read-only).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Start working on the queues.
    fn activate(&mut self, activation: Activation) -> Result<(), DeviceError>;
    /// The driver made buffers available on queue `index`.
    fn notify(&mut self, index: u16);
    /// Stop all work and drop the queues (the driver reset the device).
    fn reset(&mut self);
    /// Stop working and hand the queues back, one per entry of [`VirtioDevice::queue_sizes`],
    /// with nothing in flight, so the transport can save them (and activate the device again to
    /// go on). A device whose state lives outside its queues and cannot be saved says why.
    fn take_queues(&mut self) -> Result<Vec<Queue>, DeviceError> {
        Err(DeviceError::NotSaveable {
            device_type: self.device_type(),
        })
    }
    /// The machine is moving to another process, which takes over what this device holds of
    /// the host exclusively (a disk image's lock): let go of it. Called after
    /// [`VirtioDevice::take_queues`], with nothing in flight.
    fn hand_over(&mut self) {}
    /// Hold what this device needs of the host exclusively (again): on a migration's
    /// destination before the machine runs, or on its source when the migration failed.
    fn take_over(&mut self) -> Result<(), DeviceError> {
        Ok(())
    }
}

/// Serve every request available on `queue`: parse each chain, let `serve` carry it out
/// (returning how many bytes it wrote into the chain), put it in the used ring, and signal the
/// driver if it asked to be. With `EVENT_IDX` this also re-arms notifications, so the driver
/// keeps kicking. An error is a protocol violation: the caller fails the device.
pub fn drain_queue(
    queue: &mut Queue,
    mem: &GuestMem,
    signals: &Signals,
    mut serve: impl FnMut(chain::Chain) -> Result<u32, DeviceError>,
) -> Result<(), DeviceError> {
    use virtio_queue::QueueT;
    let mut used_any = false;
    loop {
        queue.disable_notification(mem)?;
        while let Some(dc) = next_chain(queue, mem)? {
            let head = dc.head_index();
            let parsed = chain::Chain::parse(dc, mem)?;
            let used = serve(parsed)?;
            queue.add_used(mem, head, used)?;
            used_any = true;
        }
        if !queue.enable_notification(mem)? {
            break;
        }
    }
    if used_any && queue.needs_notification(mem)? {
        signals.used_buffer();
    }
    Ok(())
}

/// The next available chain of `queue`; an error when the driver's available index is
/// impossible (more than a queue's worth ahead), which a retry would never fix.
pub fn next_chain<'a>(
    queue: &mut Queue,
    mem: &'a GuestMem,
) -> Result<Option<virtio_queue::DescriptorChain<&'a GuestMem>>, DeviceError> {
    use virtio_queue::QueueOwnedT;
    let mut iter = queue.iter(mem).map_err(DeviceError::AvailRing)?;
    Ok(iter.next())
}

/// Read `data.len()` bytes at `offset` of a little-endian configuration image, zero past its end.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}
