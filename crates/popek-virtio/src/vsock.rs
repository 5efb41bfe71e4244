//! virtio-vsock (virtio 1.2, section 5.10) with a unix-socket host side, as Firecracker does it.
//!
//! The guest sees a socket device with its own context ID; the host side is one unix socket
//! listener at a path the user chose:
//!
//! - **Host to guest.** A host program connects to the unix socket and writes
//!   `CONNECT <port>\n`. popek opens a vsock stream from the host (CID 2) to that port of the
//!   guest; when the guest accepts, popek answers `OK <hostport>\n` (the host-side vsock port
//!   of the connection) and then relays bytes both ways. If the guest refuses (or does not
//!   answer in time), the unix connection is closed.
//! - **Guest to host.** A guest program connects to CID 2, port `P`; popek connects to the unix
//!   socket `<path>_<P>` (a listener the user started) and relays bytes both ways, or refuses
//!   the guest's connection (RST) if nothing listens there.
//!
//! Streams follow the virtio-vsock protocol: credit-based flow control both ways (popek never
//! sends the guest more than it advertised, and reads a host socket only when the guest has both
//! credit and a receive buffer for the data), `SHUTDOWN` mapped to half-closing the unix
//! stream, and `RST` for anything addressed to a connection that does not exist.
//!
//! The work runs on a worker thread started when the driver activates the device and joined
//! at reset: it polls an eventfd that queue notifications write, the listener and every
//! connection's socket. A vCPU's notify only writes the eventfd.

mod packet;
mod worker;

#[cfg(test)]
mod tests;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::QueueT;
use vmm_sys_util::eventfd::EventFd;

use crate::{device_type, features, read_config_bytes, Activation, DeviceError, VirtioDevice};

pub use packet::{Header, HDR_LEN, HOST_CID};

/// Index of the receive queue (device to driver).
pub const RX_QUEUE: u16 = 0;
/// Index of the transmit queue (driver to device).
pub const TX_QUEUE: u16 = 1;
/// Index of the event queue (unused: popek never migrates, so it has no event to report).
pub const EVENT_QUEUE: u16 = 2;

const QUEUE_SIZES: [u16; 3] = [256, 256, 64];

/// Why the vsock device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The guest CID is reserved or too large.
    #[error("vsock guest CID {0} is not usable: choose a number from 3 to 4294967294 (0, 1, 2 and 0xffffffff are reserved)")]
    InvalidCid(u64),
    /// Another process listens on the socket path.
    #[error("vsock socket {path} is in use by another process (another popek?); stop it or choose another socket path")]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something other than a socket is at the path.
    #[error("vsock socket path {path} exists and is not a socket; remove it or choose another socket path")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The listener could not be created.
    #[error("cannot listen on vsock socket {path}: {source} (check that its directory exists and is writable, and that the path is shorter than 108 bytes)")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// What the host said.
        source: std::io::Error,
    },
}

/// The socket device: the host listener, and the worker thread while the driver is active.
pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: Arc<UnixListener>,
    /// Device and inode of the socket file we created (removed on drop if still ours).
    socket_file: Option<(u64, u64)>,
    worker: Option<Running>,
}

/// A started worker.
struct Running {
    kick: Arc<EventFd>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Vsock {
    /// A device giving the guest context ID `guest_cid`, whose host side listens on the unix
    /// socket `uds_path` (created now; a stale socket file left by a dead process is replaced).
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> Result<Vsock, VsockError> {
        if !(3..=0xffff_fffe).contains(&guest_cid) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        remove_stale_socket(&uds_path)?;
        let listener = UnixListener::bind(&uds_path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AddrInUse {
                VsockError::InUse {
                    path: uds_path.clone(),
                }
            } else {
                VsockError::Bind {
                    path: uds_path.clone(),
                    source,
                }
            }
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| VsockError::Bind {
                path: uds_path.clone(),
                source,
            })?;
        let socket_file = std::fs::symlink_metadata(&uds_path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        Ok(Vsock {
            guest_cid,
            uds_path,
            listener: Arc::new(listener),
            socket_file,
            worker: None,
        })
    }

    /// The guest's context ID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The host listener's path.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    fn stop_worker(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop.store(true, Ordering::Release);
            let _ = w.kick.write(1);
            if w.thread.join().is_err() {
                tracing::error!("virtio-vsock: worker thread panicked");
            }
        }
    }
}

/// Make room for a listener at `path`: refuse if a live process listens there or if it is not
/// a socket; remove a socket file nobody listens on.
fn remove_stale_socket(path: &Path) -> Result<(), VsockError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(VsockError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(VsockError::InUse {
            path: path.to_path_buf(),
        }),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            tracing::info!(
                "virtio-vsock: removing stale socket {} (nobody listens on it)",
                path.display()
            );
            std::fs::remove_file(path).map_err(|source| VsockError::Bind {
                path: path.to_path_buf(),
                source,
            })
        }
        // Let bind report whatever is wrong.
        Err(_) => Ok(()),
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        features::VERSION_1 | features::RING_EVENT_IDX | features::RING_INDIRECT_DESC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), DeviceError> {
        self.stop_worker();
        let mut queues = a.queues.into_iter();
        let rxq = queues
            .next()
            .filter(|q| q.ready())
            .ok_or(DeviceError::QueueNotSetUp {
                device: "virtio-vsock",
                queue: "rx",
            })?;
        let txq = queues
            .next()
            .filter(|q| q.ready())
            .ok_or(DeviceError::QueueNotSetUp {
                device: "virtio-vsock",
                queue: "tx",
            })?;
        let kick = Arc::new(
            EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(|source| {
                DeviceError::EventFd {
                    device: "virtio-vsock",
                    source,
                }
            })?,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let worker = worker::Worker::new(worker::Setup {
            mem: a.mem,
            rxq,
            txq,
            signals: a.signals,
            wrote: a.wrote,
            kick: kick.clone(),
            stop: stop.clone(),
            listener: self.listener.clone(),
            uds_path: self.uds_path.clone(),
            guest_cid: self.guest_cid,
        });
        let thread = std::thread::Builder::new()
            .name("popek-vsock".into())
            .spawn(move || worker.run())
            .map_err(|source| DeviceError::Thread {
                device: "virtio-vsock",
                source,
            })?;
        self.worker = Some(Running { kick, stop, thread });
        Ok(())
    }

    fn notify(&mut self, index: u16) {
        if index == RX_QUEUE || index == TX_QUEUE {
            if let Some(w) = &self.worker {
                // A non-blocking eventfd write: it can only fail if the counter would
                // overflow, and then the worker has a wakeup pending anyway.
                let _ = w.kick.write(1);
            }
        }
    }

    fn reset(&mut self) {
        self.stop_worker();
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.stop_worker();
        // Remove the socket file if it is still the one we created.
        if let (Some(id), Ok(m)) = (self.socket_file, std::fs::symlink_metadata(&self.uds_path)) {
            if (m.dev(), m.ino()) == id {
                let _ = std::fs::remove_file(&self.uds_path);
            }
        }
    }
}
