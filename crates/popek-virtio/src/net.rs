//! virtio-net (virtio 1.2, section 5.1): one receive and one transmit queue, frames handed to
//! a [`NetBackend`] (the user-mode stack, a tap device).
//!
//! The queues are served by a worker thread, so frames arriving from the host reach the guest
//! while its vCPUs run or sleep. The guest's notifications reach the worker through an eventfd;
//! the worker signals used buffers through [`Signals`]. A frame that arrives while the guest has
//! no receive buffer waits (one frame), and the worker stops reading the backend until the guest
//! adds buffers: the backend's own queue then fills and drops, as a real NIC does.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::chain::{self, Chain};
use crate::{
    device_type, drain_queue, features, next_chain, read_config_bytes, Activation, DeviceError,
    GuestMem, GuestWriteHook, Signals, VirtioDevice,
};

const QUEUE_SIZE: u16 = 256;
/// The virtio-net header of the modern interface (`struct virtio_net_hdr_v1`).
const HDR_LEN: usize = 12;
/// Largest frame accepted from the guest (no TSO is offered: Ethernet MTU plus headers).
const MAX_FRAME: usize = 65550;

const F_MAC: u64 = 1 << 5;
const F_STATUS: u64 = 1 << 16;
const S_LINK_UP: u16 = 1;

/// Where the guest's frames go and the host's frames come from.
pub trait NetBackend: Send + 'static {
    /// Send one Ethernet frame from the guest.
    fn send(&mut self, frame: &[u8]);
    /// The next frame for the guest, if one is ready (never blocks).
    fn recv(&mut self) -> Option<Vec<u8>>;
    /// A descriptor that polls readable whenever [`NetBackend::recv`] may return a frame.
    fn wake_fd(&self) -> RawFd;
}

/// The network card.
pub struct Net {
    mac: [u8; 6],
    backend: Option<Box<dyn NetBackend>>,
    worker: Option<Worker>,
}

struct Worker {
    kick: Arc<EventFd>,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Queues>,
}

impl Net {
    /// A card with address `mac` on `backend`.
    pub fn new(mac: [u8; 6], backend: Box<dyn NetBackend>) -> Net {
        Net {
            mac,
            backend: Some(backend),
            worker: None,
        }
    }

    /// Stop the worker thread; its receive and transmit queues, if it was running.
    fn stop_worker(&mut self) -> Option<(Queue, Queue)> {
        let w = self.worker.take()?;
        w.stop.store(true, Ordering::Release);
        let _ = w.kick.write(1);
        match w.handle.join() {
            Ok(q) => {
                self.backend = Some(q.backend);
                // A frame waiting for a receive buffer is dropped, as a busy card would.
                Some((q.rx, q.tx))
            }
            Err(_) => {
                tracing::error!("virtio-net: worker thread panicked; the card is gone");
                None
            }
        }
    }
}

/// The worker's state: the queues and the backend.
struct Queues {
    mem: GuestMem,
    rx: Queue,
    tx: Queue,
    signals: Arc<Signals>,
    wrote: GuestWriteHook,
    backend: Box<dyn NetBackend>,
    /// A frame that found no receive buffer.
    waiting: Option<Vec<u8>>,
}

impl Queues {
    fn transmit(&mut self) -> Result<(), DeviceError> {
        let (mem, backend) = (&self.mem, &mut self.backend);
        drain_queue(&mut self.tx, mem, &self.signals, |c| {
            let len = chain::total_len(&c.readable) as usize;
            if (HDR_LEN..=HDR_LEN + MAX_FRAME).contains(&len) {
                let bytes = chain::gather(mem, &c.readable);
                backend.send(&bytes[HDR_LEN..]);
            } else {
                tracing::debug!("virtio-net: dropped a {len}-byte transmit buffer");
            }
            Ok(0)
        })
    }

    /// Move frames from the backend into receive buffers until either runs out.
    fn receive(&mut self) -> Result<(), DeviceError> {
        let mem = &self.mem;
        let mut used_any = false;
        while let Some(frame) = self.waiting.take().or_else(|| self.backend.recv()) {
            let Some(dc) = next_chain(&mut self.rx, mem)? else {
                self.waiting = Some(frame);
                // Ask for a notification when buffers come; if some came meanwhile, go on.
                if self.rx.enable_notification(mem)? {
                    continue;
                }
                break;
            };
            let head = dc.head_index();
            let c = Chain::parse(dc, mem)?;
            let room = chain::total_len(&c.writable) as usize;
            let mut packet = vec![0u8; HDR_LEN];
            packet[10] = 1; // num_buffers
            let written = if HDR_LEN + frame.len() <= room {
                packet.extend_from_slice(&frame);
                let n = chain::scatter(mem, &c.writable, &packet);
                for s in &c.writable {
                    (self.wrote)(s.addr, s.len as u64);
                }
                n as u32
            } else {
                tracing::debug!(
                    "virtio-net: dropped a {}-byte frame (receive buffer holds {room})",
                    frame.len()
                );
                0
            };
            self.rx.add_used(mem, head, written)?;
            used_any = true;
        }
        if used_any && self.rx.needs_notification(mem)? {
            self.signals.used_buffer();
        }
        Ok(())
    }
}

fn worker_loop(mut q: Queues, kick: Arc<EventFd>, stop: Arc<AtomicBool>) -> Queues {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: kick.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: q.backend.wake_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // While a frame waits for a receive buffer, only the guest's kick can help.
        let nfds = if q.waiting.is_some() { 1 } else { 2 };
        // SAFETY: `fds` is a valid array of at least `nfds` pollfd structures.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), nfds, 1000) };
        if stop.load(Ordering::Acquire) {
            break;
        }
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                q.signals.fail(&format!("virtio-net: poll: {err}"));
                break;
            }
            continue;
        }
        let _ = kick.read();
        if q.signals.failed() {
            continue;
        }
        if let Err(e) = q.transmit().and_then(|_| q.receive()) {
            q.signals.fail(&format!("virtio-net: {e}"));
        }
    }
    q
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        features::VERSION_1
            | features::RING_EVENT_IDX
            | features::RING_INDIRECT_DESC
            | F_MAC
            | F_STATUS
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut c = [0u8; 12];
        c[0..6].copy_from_slice(&self.mac);
        c[6..8].copy_from_slice(&S_LINK_UP.to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c[10..12].copy_from_slice(&1500u16.to_le_bytes());
        read_config_bytes(&c, offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), DeviceError> {
        self.stop_worker();
        let mut queues = a.queues.into_iter();
        let (Some(rx), Some(tx)) = (queues.next(), queues.next()) else {
            return Err(DeviceError::MissingQueues {
                device: "virtio-net",
                needs: "a receive and a transmit queue",
            });
        };
        if !rx.ready() || !tx.ready() {
            return Err(DeviceError::QueueNotSetUp {
                device: "virtio-net",
                queue: "receive or transmit",
            });
        }
        let backend = self.backend.take().ok_or(DeviceError::BackendLost)?;
        let kick = Arc::new(
            EventFd::new(EFD_NONBLOCK).map_err(|source| DeviceError::EventFd {
                device: "virtio-net",
                source,
            })?,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let q = Queues {
            mem: a.mem,
            rx,
            tx,
            signals: a.signals,
            wrote: a.wrote,
            backend,
            waiting: None,
        };
        let (k, s) = (kick.clone(), stop.clone());
        let handle = std::thread::Builder::new()
            .name("virtio-net".into())
            .spawn(move || worker_loop(q, k, s))
            .map_err(|source| DeviceError::Thread {
                device: "virtio-net",
                source,
            })?;
        self.worker = Some(Worker { kick, stop, handle });
        Ok(())
    }

    fn notify(&mut self, _index: u16) {
        if let Some(w) = &self.worker {
            let _ = w.kick.write(1);
        }
    }

    fn reset(&mut self) {
        self.stop_worker();
    }

    fn take_queues(&mut self) -> Result<Vec<Queue>, DeviceError> {
        Ok(self
            .stop_worker()
            .map(|(rx, tx)| vec![rx, tx])
            .unwrap_or_default())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop_worker();
    }
}
