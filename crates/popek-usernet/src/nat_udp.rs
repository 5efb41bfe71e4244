//! Outbound UDP NAT: one connected host UDP socket per guest flow (guest address and port,
//! destination address and port), so replies come back only from where the guest sent to.
//! Flows idle for [`IDLE_TIMEOUT`] are closed; at most [`MAX_FLOWS`] exist (the least
//! recently used goes first).

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use smoltcp::wire::EthernetAddress;

use crate::device::{Shared, MTU};
use crate::frame::{nat_target, udp_frame, Ep, IP_UDP_HEADERS};

/// How long a flow lives without traffic either way.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The most flows at once.
pub(crate) const MAX_FLOWS: usize = 1024;
/// Datagrams read from one socket per wake-up, so one busy flow can't starve the rest.
const READ_BURST: usize = 64;

struct Flow {
    sock: UdpSocket,
    guest_mac: EthernetAddress,
    guest: Ep,
    /// The destination as the guest sees it (10.0.2.2, not 127.0.0.1).
    dst: Ep,
    last_active: Instant,
}

/// The UDP flows.
pub(crate) struct UdpNat {
    flows: HashMap<u64, Flow>,
    by_key: HashMap<(Ep, Ep), u64>,
    next_id: u64,
    allowed: fn(Ipv4Addr) -> bool,
}

impl UdpNat {
    /// No flows yet; `allowed` says which host addresses NAT may send to.
    pub fn new(allowed: fn(Ipv4Addr) -> bool) -> UdpNat {
        UdpNat {
            flows: HashMap::new(),
            by_key: HashMap::new(),
            next_id: 0,
            allowed,
        }
    }

    /// A datagram from the guest to a NAT destination.
    pub fn outbound(
        &mut self,
        now: Instant,
        guest_mac: EthernetAddress,
        src: Ep,
        dst: Ep,
        payload: &[u8],
    ) {
        let Some(target) = nat_target(dst.0).filter(|t| (self.allowed)(*t)) else {
            tracing::trace!(?dst, "usernet: UDP to an address that leads nowhere");
            return;
        };
        let id = match self.by_key.get(&(src, dst)) {
            Some(&id) => id,
            None => match self.open(now, guest_mac, src, dst, SocketAddrV4::new(target, dst.1)) {
                Ok(id) => id,
                Err(e) => {
                    tracing::debug!(?dst, error = %e, "usernet: cannot open a UDP flow");
                    return;
                }
            },
        };
        if let Some(flow) = self.flows.get_mut(&id) {
            flow.last_active = now;
            flow.guest_mac = guest_mac;
            // Errors (no route, buffer full, an earlier ICMP error) lose the datagram, as UDP may.
            if let Err(e) = flow.sock.send(payload) {
                tracing::trace!(?dst, error = %e, "usernet: UDP send failed");
            }
        }
    }

    fn open(
        &mut self,
        now: Instant,
        guest_mac: EthernetAddress,
        guest: Ep,
        dst: Ep,
        target: SocketAddrV4,
    ) -> io::Result<u64> {
        if self.flows.len() >= MAX_FLOWS {
            if let Some((&oldest, _)) = self.flows.iter().min_by_key(|(_, f)| f.last_active) {
                self.close(oldest);
            }
        }
        let sock = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0)))?;
        sock.connect(target)?;
        sock.set_nonblocking(true)?;
        let id = self.next_id;
        self.next_id += 1;
        tracing::debug!(?guest, ?dst, %target, "usernet: new UDP flow");
        self.flows.insert(
            id,
            Flow {
                sock,
                guest_mac,
                guest,
                dst,
                last_active: now,
            },
        );
        self.by_key.insert((guest, dst), id);
        Ok(id)
    }

    fn close(&mut self, id: u64) {
        if let Some(f) = self.flows.remove(&id) {
            self.by_key.remove(&(f.guest, f.dst));
        }
    }

    /// The sockets to poll for replies.
    pub fn poll_fds(&self, mut add: impl FnMut(RawFd, u64)) {
        for (&id, f) in &self.flows {
            add(f.sock.as_raw_fd(), id);
        }
    }

    /// Relays the replies waiting on flow `id` to the guest.
    pub fn readable(&mut self, id: u64, now: Instant, shared: &Shared, buf: &mut [u8]) {
        let Some(f) = self.flows.get_mut(&id) else {
            return;
        };
        for _ in 0..READ_BURST {
            match f.sock.recv(buf) {
                Ok(n) if n + IP_UDP_HEADERS <= MTU => {
                    f.last_active = now;
                    shared.push_to_guest(udp_frame(f.guest_mac, f.dst, f.guest, &buf[..n]));
                }
                Ok(n) => {
                    // IP fragmentation towards the guest isn't done.
                    tracing::debug!(len = n, "usernet: UDP reply larger than the MTU dropped");
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // ECONNREFUSED and friends: an ICMP error for an earlier datagram.
                Err(e) => tracing::trace!(error = %e, "usernet: UDP receive error"),
            }
        }
    }

    /// Closes idle flows; returns when the next one would expire.
    pub fn expire(&mut self, now: Instant) -> Option<Instant> {
        let idle: Vec<u64> = self
            .flows
            .iter()
            .filter(|(_, f)| now.duration_since(f.last_active) >= IDLE_TIMEOUT)
            .map(|(&id, _)| id)
            .collect();
        for id in idle {
            tracing::debug!("usernet: UDP flow idle, closed");
            self.close(id);
        }
        self.flows
            .values()
            .map(|f| f.last_active + IDLE_TIMEOUT)
            .min()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.flows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GUEST_ADDR;
    use smoltcp::wire::{EthernetFrame, Ipv4Packet, UdpPacket};

    #[test]
    fn datagrams_go_out_and_replies_come_back_framed() {
        let host = UdpSocket::bind("127.0.0.1:0").unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let port = host.local_addr().unwrap().port();
        let shared = Shared::new().unwrap();
        let mut nat = UdpNat::new(|_| true);
        let mac = EthernetAddress(crate::DEFAULT_GUEST_MAC);
        let t0 = Instant::now();
        let guest = (GUEST_ADDR, 5555);
        let dst = (crate::GATEWAY_ADDR, port);
        nat.outbound(t0, mac, guest, dst, b"ping");
        let mut buf = [0u8; 100];
        let (n, from) = host.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        host.send_to(b"pong", from).unwrap();
        let mut ids = vec![];
        nat.poll_fds(|_, id| ids.push(id));
        assert_eq!(ids.len(), 1);
        let mut big = vec![0u8; 65536];
        let deadline = Instant::now() + Duration::from_secs(5);
        let frame = loop {
            nat.readable(ids[0], t0, &shared, &mut big);
            if let Some(f) = shared.pop_to_guest() {
                break f;
            }
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        };
        let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
        assert_eq!(eth.dst_addr(), mac);
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert_eq!(
            (ip.src_addr(), ip.dst_addr()),
            (crate::GATEWAY_ADDR, GUEST_ADDR)
        );
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!((udp.src_port(), udp.dst_port()), (port, 5555));
        assert_eq!(udp.payload(), b"pong");
        // Same flow reuses the socket; idle flows expire.
        nat.outbound(t0, mac, guest, dst, b"again");
        assert_eq!(nat.len(), 1);
        assert!(nat.expire(t0 + Duration::from_secs(1)).is_some());
        assert_eq!(nat.expire(t0 + IDLE_TIMEOUT), None);
        assert_eq!(nat.len(), 0);
    }

    #[test]
    fn nowhere_addresses_open_no_flow() {
        let mut nat = UdpNat::new(|_| true);
        let mac = EthernetAddress(crate::DEFAULT_GUEST_MAC);
        for dst in [
            Ipv4Addr::new(10, 0, 2, 7),
            Ipv4Addr::new(127, 0, 0, 1),
            Ipv4Addr::BROADCAST,
        ] {
            nat.outbound(Instant::now(), mac, (GUEST_ADDR, 1), (dst, 9), b"x");
        }
        assert_eq!(nat.len(), 0);
    }
}
