//! The frame queues between the virtio-net device and the stack thread, and the `smoltcp`
//! [`Device`] the stack's interface runs on.
//!
//! Both queues are bounded so that neither side can make the other buffer without limit:
//! frames from the guest beyond [`FROM_GUEST_CAP`] are dropped; towards the guest, `smoltcp`
//! stops transmitting at [`TO_GUEST_SOFT_CAP`] (TCP waits, nothing is lost) and frames the stack
//! makes itself are dropped at [`TO_GUEST_HARD_CAP`].

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Frames from the guest waiting for the stack thread; more are dropped.
pub(crate) const FROM_GUEST_CAP: usize = 1024;
/// Frames for the guest beyond which `smoltcp` is told the device is busy.
pub(crate) const TO_GUEST_SOFT_CAP: usize = 256;
/// Frames for the guest beyond which new ones are dropped.
pub(crate) const TO_GUEST_HARD_CAP: usize = 512;
/// The largest Ethernet frame accepted from the guest (no FCS). The stack's own MTU is 1500;
/// larger frames are still parsed, never trusted.
pub(crate) const MAX_FRAME: usize = 65535 + 14;
/// Ethernet header length; anything shorter is not a frame.
pub(crate) const ETH_HEADER_LEN: usize = 14;
/// The IP MTU of the virtual link, as on a standard Ethernet (and QEMU's slirp).
pub(crate) const MTU: usize = 1500;

/// What the API side ([`crate::UserNet`]) and the stack thread share.
pub(crate) struct Shared {
    /// Frames for the guest.
    to_guest: Mutex<VecDeque<Vec<u8>>>,
    /// Readable exactly while `to_guest` is non-empty (see [`crate::UserNet::wake_fd`]).
    pub guest_wake: EventFd,
    /// Frames from the guest.
    from_guest: Mutex<VecDeque<Vec<u8>>>,
    /// The stack thread's doorbell: frames from the guest, room towards the guest, stop.
    pub stack_wake: EventFd,
    /// Asks the stack thread to exit.
    pub stop: AtomicBool,
    /// Set by the stack when `to_guest` reached the soft cap, so `recv` rings the doorbell once
    /// there is room again.
    tx_blocked: AtomicBool,
    /// The stack thread's kernel thread id, for tests that measure its CPU time.
    #[cfg(test)]
    pub tid: std::sync::atomic::AtomicI64,
}

/// Locks a queue even if a thread panicked while holding it (the data is plain frames).
fn lock(m: &Mutex<VecDeque<Vec<u8>>>) -> MutexGuard<'_, VecDeque<Vec<u8>>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Clears an eventfd; it may be already clear.
fn clear(fd: &EventFd) {
    let _ = fd.read();
}

impl Shared {
    pub fn new() -> io::Result<Shared> {
        Ok(Shared {
            to_guest: Mutex::new(VecDeque::new()),
            guest_wake: EventFd::new(EFD_NONBLOCK)?,
            from_guest: Mutex::new(VecDeque::new()),
            stack_wake: EventFd::new(EFD_NONBLOCK)?,
            stop: AtomicBool::new(false),
            tx_blocked: AtomicBool::new(false),
            #[cfg(test)]
            tid: std::sync::atomic::AtomicI64::new(0),
        })
    }

    /// Wakes the stack thread.
    pub fn kick_stack(&self) {
        // An eventfd write only fails when the counter would overflow, i.e. it is set anyway.
        let _ = self.stack_wake.write(1);
    }

    /// Queues a guest frame for the stack (API side).
    pub fn push_from_guest(&self, frame: &[u8]) {
        if frame.len() < ETH_HEADER_LEN || frame.len() > MAX_FRAME {
            tracing::trace!(
                len = frame.len(),
                "usernet: dropping a frame of impossible size"
            );
            return;
        }
        let mut q = lock(&self.from_guest);
        if q.len() >= FROM_GUEST_CAP {
            tracing::trace!("usernet: queue from the guest full, dropping a frame");
            return;
        }
        let was_empty = q.is_empty();
        q.push_back(frame.to_vec());
        drop(q);
        if was_empty {
            self.kick_stack();
        }
    }

    /// How many guest frames wait for the stack.
    #[cfg(test)]
    pub fn pending_from_guest(&self) -> usize {
        lock(&self.from_guest).len()
    }

    /// Takes every queued guest frame (stack side). The doorbell is cleared *before* the queue
    /// is emptied, so a frame queued meanwhile rings it again.
    pub fn take_from_guest(&self) -> VecDeque<Vec<u8>> {
        clear(&self.stack_wake);
        std::mem::take(&mut *lock(&self.from_guest))
    }

    /// Queues a frame for the guest (stack side); drops it at the hard cap.
    pub fn push_to_guest(&self, frame: Vec<u8>) {
        let mut q = lock(&self.to_guest);
        if q.len() >= TO_GUEST_HARD_CAP {
            tracing::trace!("usernet: queue to the guest full, dropping a frame");
            return;
        }
        q.push_back(frame);
        if q.len() == 1 {
            // Under the lock, so that `guest_wake` is set exactly while the queue is non-empty.
            let _ = self.guest_wake.write(1);
        }
    }

    /// Whether `smoltcp` may transmit (stack side). When not, `recv` wakes the stack later.
    pub fn to_guest_has_room(&self) -> bool {
        let q = lock(&self.to_guest);
        if q.len() < TO_GUEST_SOFT_CAP {
            return true;
        }
        self.tx_blocked.store(true, Ordering::Release);
        false
    }

    /// Whether the stack is waiting for the guest to take frames (stack side).
    pub fn to_guest_blocked(&self) -> bool {
        self.tx_blocked.load(Ordering::Acquire)
    }

    /// Takes the next frame for the guest (API side).
    pub fn pop_to_guest(&self) -> Option<Vec<u8>> {
        let mut q = lock(&self.to_guest);
        let frame = q.pop_front();
        if q.is_empty() {
            clear(&self.guest_wake);
        }
        let room = q.len() <= TO_GUEST_SOFT_CAP / 2;
        drop(q);
        if room && self.tx_blocked.swap(false, Ordering::AcqRel) {
            self.kick_stack();
        }
        frame
    }
}

/// The `smoltcp` device of the stack's interface: it receives the guest frames the stack
/// decided `smoltcp` should see (ARP, ICMP, TCP) and transmits into the queue to the guest.
pub(crate) struct VirtDevice {
    /// Guest frames for `smoltcp`, in arrival order.
    pub rx: VecDeque<Vec<u8>>,
    shared: Arc<Shared>,
}

impl VirtDevice {
    pub fn new(shared: Arc<Shared>) -> VirtDevice {
        VirtDevice {
            rx: VecDeque::new(),
            shared,
        }
    }
}

/// A received frame, owned.
pub(crate) struct RxToken(Vec<u8>);

/// The right to queue one frame for the guest.
pub(crate) struct TxToken<'a>(&'a Shared);

impl phy::RxToken for RxToken {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut buf = vec![0; len];
        let r = f(&mut buf);
        self.0.push_to_guest(buf);
        r
    }
}

impl Device for VirtDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken, TxToken<'_>)> {
        // Replies to received frames (ARP replies, RSTs, ACKs) are always allowed: they are
        // bounded by what the guest sends, and the hard cap still applies.
        let frame = self.rx.pop_front()?;
        Some((RxToken(frame), TxToken(&self.shared)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        self.shared
            .to_guest_has_room()
            .then_some(TxToken(&self.shared))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MTU + ETH_HEADER_LEN;
        caps.max_burst_size = None;
        // TCP/ICMP checksums from the guest are not verified, so a device that lets the guest
        // offload them (virtio VIRTIO_NET_F_CSUM) still works; the link can't corrupt frames.
        // Everything sent to the guest carries full checksums.
        let mut csum = ChecksumCapabilities::default();
        csum.ipv4 = Checksum::Both;
        csum.tcp = Checksum::Tx;
        csum.udp = Checksum::Tx;
        csum.icmpv4 = Checksum::Tx;
        caps.checksum = csum;
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn readable(fd: &EventFd) -> bool {
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `p` is a valid pollfd for the duration of the call, and nfds is 1.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n == 1 && p.revents & libc::POLLIN != 0
    }

    #[test]
    fn guest_wake_is_readable_exactly_while_frames_are_queued() {
        let s = Shared::new().unwrap();
        assert!(!readable(&s.guest_wake));
        s.push_to_guest(vec![1; 60]);
        s.push_to_guest(vec![2; 60]);
        assert!(readable(&s.guest_wake));
        assert_eq!(s.pop_to_guest().unwrap()[0], 1);
        assert!(readable(&s.guest_wake), "one frame is still queued");
        assert_eq!(s.pop_to_guest().unwrap()[0], 2);
        assert!(!readable(&s.guest_wake));
        assert!(s.pop_to_guest().is_none());
        assert!(!readable(&s.guest_wake));
    }

    #[test]
    fn queues_are_bounded() {
        let s = Shared::new().unwrap();
        for _ in 0..FROM_GUEST_CAP + 10 {
            s.push_from_guest(&[0; 60]);
        }
        s.push_from_guest(&[0; 3]);
        assert!(readable(&s.stack_wake));
        assert_eq!(s.take_from_guest().len(), FROM_GUEST_CAP);
        assert!(!readable(&s.stack_wake));
        for _ in 0..TO_GUEST_HARD_CAP + 10 {
            s.push_to_guest(vec![0; 60]);
        }
        assert!(!s.to_guest_has_room());
        assert!(s.to_guest_blocked());
        let mut n = 0;
        while s.pop_to_guest().is_some() {
            n += 1;
        }
        assert_eq!(n, TO_GUEST_HARD_CAP);
        assert!(!s.to_guest_blocked(), "draining must unblock the stack");
        assert!(readable(&s.stack_wake), "and wake it");
    }
}
