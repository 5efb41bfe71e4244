//! Why a virtio device stopped working: the driver broke the protocol, or the host refused
//! something the device needs. The transport puts a device that fails in the state the driver
//! sees as `DEVICE_NEEDS_RESET` and logs the message.

use crate::chain::ChainError;

/// A device's failure; the message is what the log says.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The driver did not make ready a queue the device works on.
    #[error("{device}: {queue} queue not set up")]
    QueueNotSetUp {
        /// The device (`virtio-blk`, ...).
        device: &'static str,
        /// Which queue.
        queue: &'static str,
    },
    /// The transport handed over fewer queues than the device has.
    #[error("{device}: needs {needs}")]
    MissingQueues {
        /// The device.
        device: &'static str,
        /// The queues it needs.
        needs: &'static str,
    },
    /// virtio-net's backend went away with a worker thread that panicked.
    #[error("virtio-net: the network backend was lost")]
    BackendLost,
    /// The host refused an eventfd for queue notifications.
    #[error("{device}: eventfd: {source}")]
    EventFd {
        /// The device.
        device: &'static str,
        /// What the host said.
        #[source]
        source: std::io::Error,
    },
    /// The host refused a worker thread.
    #[error("{device}: cannot start worker thread: {source}")]
    Thread {
        /// The device.
        device: &'static str,
        /// What the host said.
        #[source]
        source: std::io::Error,
    },
    /// A ring access failed: the driver's rings hold impossible indexes or lie outside guest
    /// RAM.
    #[error(transparent)]
    Queue(#[from] virtio_queue::Error),
    /// The driver's available index is more than a queue's worth ahead.
    #[error("available ring: {0}")]
    AvailRing(#[source] virtio_queue::Error),
    /// The driver made a descriptor chain available that the device refuses.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// A refused descriptor chain, on a device that says which of its queues it came from.
    #[error("{queue} queue: {source}")]
    QueueChain {
        /// The queue (`rx`, `tx`).
        queue: &'static str,
        /// What is wrong with the chain.
        #[source]
        source: ChainError,
    },
    /// A block request the device cannot even answer.
    #[error(transparent)]
    BlockRequest(#[from] crate::blk::RequestError),
    /// The host's `getrandom(2)` failed.
    #[error("getrandom: {0}")]
    Entropy(#[source] std::io::Error),
    /// Writing the disk image's data back to the host failed.
    #[error("virtio-blk: flushing the disk: {0}")]
    Flush(#[source] std::io::Error),
    /// A vsock receive buffer the device would have to read.
    #[error("rx buffer with device-readable descriptors")]
    RxBufferReadable,
    /// A vsock receive buffer smaller than a packet header.
    #[error("rx buffer of {room} bytes cannot hold a packet header")]
    RxBufferTooSmall {
        /// Its size in bytes.
        room: u64,
    },
    /// The device keeps state outside its queues, so a snapshot cannot hold it.
    #[error("virtio device type {device_type} cannot be saved in a snapshot")]
    NotSaveable {
        /// The virtio device ID.
        device_type: u32,
    },
    /// A disk image cannot be (re)locked for this process.
    #[error(transparent)]
    Image(#[from] crate::blk::BlockError),
    /// A restored queue's rings are not inside guest RAM.
    #[error("a queue lies outside guest RAM")]
    QueueOutsideRam,
}
