//! Building a machine's parts: its harts and virtio devices.

use std::sync::Arc;

use popek_cpu::{Hart, HartConfig, Memory};
use popek_virtio::blk::Block;
use popek_virtio::console::Console as VirtioConsole;
use popek_virtio::mmio::VirtioMmio;
use popek_virtio::net::{Net, NetBackend};
use popek_virtio::rng::Rng;
use popek_virtio::tap::Tap;
use popek_virtio::vsock::Vsock;
use popek_virtio::{GuestWriteHook, Signals, VirtioDevice};
use vm_memory::GuestMemoryMmap;

use super::boot::{reset_hart, BootState};
use super::{HartThreads, MachineConfig, NetBackendConfig};
use crate::command_status::{CommandStatus, StatusPort};
use crate::error::BoardError;
use crate::memmap;

/// The configured number of harts on `mem`, each in its reset state.
pub(super) fn new_harts(config: &MachineConfig, mem: &Memory, boot: &BootState) -> Vec<Hart> {
    (0..config.cpus as u64)
        .map(|h| {
            let mut hart = Hart::new(HartConfig::machine(h, config.cpus > 1), mem.clone());
            reset_hart(&mut hart, boot);
            hart
        })
        .collect()
}

/// A network backend for virtio-net: popek's user-mode stack.
struct UserNetBackend(popek_usernet::UserNet);

impl NetBackend for UserNetBackend {
    fn send(&mut self, frame: &[u8]) {
        self.0.send(frame);
    }

    fn recv(&mut self) -> Option<Vec<u8>> {
        self.0.recv()
    }

    fn wake_fd(&self) -> std::os::fd::RawFd {
        self.0.wake_fd()
    }
}

/// Create the configured virtio devices, slot by slot: disks, the network card, the entropy
/// source, then vsock.
pub(super) fn virtio_devices(
    config: &MachineConfig,
    ram: &GuestMemoryMmap,
    mem: &Memory,
    threads: &Arc<HartThreads>,
    command_status: &Arc<CommandStatus>,
) -> Result<Vec<VirtioMmio>, BoardError> {
    if config.virtio_devices() > memmap::VIRTIO_SLOTS {
        return Err(BoardError::TooManyDevices(memmap::VIRTIO_SLOTS));
    }
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for disk in &config.disks {
        let block = if disk.cow && !disk.readonly {
            Block::open_cow(&disk.path)?
        } else if disk.handed_over {
            Block::open_unlocked(&disk.path, disk.readonly)?
        } else {
            Block::open(&disk.path, disk.readonly)?
        };
        devices.push(Box::new(block));
    }
    if let Some(net) = &config.net {
        let backend: Box<dyn NetBackend> = match &net.backend {
            NetBackendConfig::User { publish } => {
                let user = popek_usernet::UserNet::start(popek_usernet::UserNetConfig {
                    guest_mac: net.mac,
                    publish: publish.clone(),
                    thread_start: config.jail.then_some(crate::jail::net_thread as fn()),
                })?;
                Box::new(UserNetBackend(user))
            }
            NetBackendConfig::Tap { name } => Box::new(Tap::open(name)?),
        };
        devices.push(Box::new(Net::new(net.mac, backend)));
    }
    if config.rng {
        devices.push(Box::new(Rng::new()));
    }
    if let Some(v) = &config.vsock {
        devices.push(Box::new(Vsock::new(v.cid, v.path.clone())?));
    }
    if config.command_output {
        devices.push(Box::new(VirtioConsole::new(Box::new(std::io::stdout()))));
        devices.push(Box::new(VirtioConsole::new(Box::new(std::io::stderr()))));
        let status = StatusPort::new(command_status.clone());
        devices.push(Box::new(VirtioConsole::new(Box::new(status))));
    }
    let mem = mem.clone();
    let wrote: GuestWriteHook = Arc::new(move |start, len| mem.device_wrote(start, len));
    Ok(devices
        .into_iter()
        .map(|d| {
            let threads = threads.clone();
            let signals = Signals::new(Box::new(move || threads.wake_all()));
            VirtioMmio::new(d, ram.clone(), signals, wrote.clone())
        })
        .collect())
}
