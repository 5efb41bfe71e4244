//! Sorting the guest's frames (who handles each one) and making the frames the stack sends
//! itself (DHCP, DNS, UDP). Everything from the guest is parsed with `smoltcp`'s checked
//! accessors, so a malformed frame is dropped, never trusted.

use std::net::Ipv4Addr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress,
    IpProtocol, Ipv4Packet, Ipv4Repr, TcpPacket, UdpPacket, UdpRepr,
};

use crate::{DNS_ADDR, GATEWAY_ADDR, GATEWAY_MAC, NETWORK_ADDR};

/// The gateway's MAC as a `smoltcp` address.
pub(crate) const GW_MAC: EthernetAddress = EthernetAddress(GATEWAY_MAC);
/// IPv4 + UDP header length.
pub(crate) const IP_UDP_HEADERS: usize = 20 + 8;

/// An IPv4 endpoint.
pub(crate) type Ep = (Ipv4Addr, u16);

/// Who handles a guest frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    /// `smoltcp` (ARP for our addresses, ICMP to them, TCP segments of known or unknown flows).
    Smoltcp,
    /// Nobody: malformed, not for us, or a protocol the stack doesn't do.
    Drop,
    /// A UDP datagram (DHCP, DNS or NAT by destination).
    Udp {
        src_mac: EthernetAddress,
        dst_mac: EthernetAddress,
        src: Ep,
        dst: Ep,
        payload: &'a [u8],
    },
    /// A TCP SYN opening a connection: the NAT decides before `smoltcp` sees it.
    TcpSyn { src: Ep, dst: Ep },
}

/// Whether an address is in the guest network 10.0.2.0/24.
pub(crate) fn in_network(a: Ipv4Addr) -> bool {
    a.octets()[..3] == NETWORK_ADDR.octets()[..3]
}

/// Whether an address is one the stack itself owns (gateway, DNS).
pub(crate) fn is_ours(a: Ipv4Addr) -> bool {
    a == GATEWAY_ADDR || a == DNS_ADDR
}

/// The host address a guest destination is reached at: 10.0.2.2 is the host's loopback;
/// the rest of 10.0.2.0/24, loopback, "this network" and non-unicast addresses lead nowhere.
pub(crate) fn nat_target(dst: Ipv4Addr) -> Option<Ipv4Addr> {
    if dst == GATEWAY_ADDR {
        return Some(Ipv4Addr::LOCALHOST);
    }
    if in_network(dst)
        || dst.is_loopback()
        || dst.is_unspecified()
        || dst.octets()[0] == 0
        || dst.is_multicast()
        || dst.is_broadcast()
    {
        return None;
    }
    Some(dst)
}

/// Decides who handles a guest frame.
pub(crate) fn classify(frame: &[u8]) -> Route<'_> {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Route::Drop;
    };
    let dst_mac = eth.dst_addr();
    let src_mac = eth.src_addr();
    if !src_mac.is_unicast() || !(dst_mac == GW_MAC || dst_mac.is_broadcast()) {
        return Route::Drop;
    }
    match eth.ethertype() {
        EthernetProtocol::Arp => {
            let Ok(arp) = ArpPacket::new_checked(eth.payload()) else {
                return Route::Drop;
            };
            match ArpRepr::parse(&arp) {
                // Only our own addresses: answering for others would make a DHCP client's
                // address-conflict probe (or Linux's ACD) fail.
                Ok(ArpRepr::EthernetIpv4 {
                    target_protocol_addr,
                    ..
                }) if is_ours(target_protocol_addr) => Route::Smoltcp,
                _ => Route::Drop,
            }
        }
        EthernetProtocol::Ipv4 => classify_ipv4(eth.payload(), src_mac, dst_mac),
        _ => Route::Drop,
    }
}

fn classify_ipv4(packet: &[u8], src_mac: EthernetAddress, dst_mac: EthernetAddress) -> Route<'_> {
    let Ok(ip) = Ipv4Packet::new_checked(packet) else {
        return Route::Drop;
    };
    if ip.version() != 4 || !ip.verify_checksum() {
        return Route::Drop;
    }
    // Fragments are not reassembled (the stack's MTU is the guest's, so the guest only
    // fragments oversized UDP datagrams).
    if ip.more_frags() || ip.frag_offset() != 0 {
        tracing::trace!("usernet: dropping an IP fragment");
        return Route::Drop;
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    // The guest is somewhere in 10.0.2.0/24 (or has no address yet, for DHCP).
    if !(in_network(src) && !is_ours(src) || src.is_unspecified()) {
        return Route::Drop;
    }
    let payload = ip.payload();
    match ip.next_header() {
        IpProtocol::Udp => {
            let Ok(udp) = UdpPacket::new_checked(payload) else {
                return Route::Drop;
            };
            let len = usize::from(udp.len());
            if len < 8 || len > payload.len() {
                return Route::Drop;
            }
            Route::Udp {
                src_mac,
                dst_mac,
                src: (src, udp.src_port()),
                dst: (dst, udp.dst_port()),
                payload: &payload[8..len],
            }
        }
        IpProtocol::Tcp => {
            let Ok(tcp) = TcpPacket::new_checked(payload) else {
                return Route::Drop;
            };
            if src.is_unspecified()
                || !dst.is_unicast_addr()
                || dst_mac != GW_MAC
                || tcp.src_port() == 0
                || tcp.dst_port() == 0
            {
                return Route::Drop;
            }
            if tcp.syn() && !tcp.ack() && !tcp.rst() && !tcp.fin() {
                Route::TcpSyn {
                    src: (src, tcp.src_port()),
                    dst: (dst, tcp.dst_port()),
                }
            } else {
                Route::Smoltcp
            }
        }
        IpProtocol::Icmp if is_ours(dst) && !src.is_unspecified() => Route::Smoltcp,
        _ => Route::Drop,
    }
}

/// Unicast test for addresses (std's `is_unicast` is not stable for Ipv4Addr).
trait Unicast {
    fn is_unicast_addr(&self) -> bool;
}

impl Unicast for Ipv4Addr {
    fn is_unicast_addr(&self) -> bool {
        !(self.is_broadcast() || self.is_multicast() || self.is_unspecified())
            && *self != Ipv4Addr::new(10, 0, 2, 255)
    }
}

/// An Ethernet + IPv4 + UDP frame with full checksums, from the stack to the guest.
pub(crate) fn udp_frame(dst_mac: EthernetAddress, src: Ep, dst: Ep, payload: &[u8]) -> Vec<u8> {
    let caps = ChecksumCapabilities::default();
    let eth = EthernetRepr {
        src_addr: GW_MAC,
        dst_addr: dst_mac,
        ethertype: EthernetProtocol::Ipv4,
    };
    let udp_len = 8 + payload.len();
    let ip = Ipv4Repr {
        src_addr: src.0,
        dst_addr: dst.0,
        next_header: IpProtocol::Udp,
        payload_len: udp_len,
        hop_limit: 64,
    };
    let udp = UdpRepr {
        src_port: src.1,
        dst_port: dst.1,
    };
    let mut buf = vec![0u8; eth.buffer_len() + ip.buffer_len() + udp_len];
    let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.emit(&mut f);
    let mut p = Ipv4Packet::new_unchecked(f.payload_mut());
    ip.emit(&mut p, &caps);
    let mut u = UdpPacket::new_unchecked(p.payload_mut());
    udp.emit(
        &mut u,
        &IpAddress::Ipv4(src.0),
        &IpAddress::Ipv4(dst.0),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &caps,
    );
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GUEST_ADDR;

    const GUEST_MAC: EthernetAddress = EthernetAddress(crate::DEFAULT_GUEST_MAC);

    #[test]
    fn nat_targets() {
        assert_eq!(nat_target(GATEWAY_ADDR), Some(Ipv4Addr::LOCALHOST));
        assert_eq!(nat_target(DNS_ADDR), None);
        assert_eq!(nat_target(Ipv4Addr::new(10, 0, 2, 99)), None);
        assert_eq!(nat_target(Ipv4Addr::new(127, 0, 0, 1)), None);
        assert_eq!(nat_target(Ipv4Addr::new(224, 0, 0, 1)), None);
        assert_eq!(nat_target(Ipv4Addr::BROADCAST), None);
        let far = Ipv4Addr::new(192, 0, 2, 1);
        assert_eq!(nat_target(far), Some(far));
    }

    #[test]
    fn udp_frames_round_trip_through_classify() {
        // A frame the stack makes, with source and destination swapped, looks like the guest's.
        let mut f = udp_frame(GW_MAC, (GUEST_ADDR, 4000), (DNS_ADDR, 53), b"hello");
        f[6..12].copy_from_slice(&GUEST_MAC.0);
        match classify(&f) {
            Route::Udp {
                src_mac,
                dst_mac,
                src,
                dst,
                payload,
            } => {
                assert_eq!((src_mac, dst_mac), (GUEST_MAC, GW_MAC));
                assert_eq!((src, dst), ((GUEST_ADDR, 4000), (DNS_ADDR, 53)));
                assert_eq!(payload, b"hello");
            }
            other => panic!("{other:?}"),
        }
        // Truncations of it are dropped or still parse, never panic.
        for n in 0..f.len() {
            let _ = classify(&f[..n]);
        }
        assert_eq!(classify(&f[..f.len() - 1]), Route::Drop);
    }

    #[test]
    fn udp_frame_checksums_verify() {
        let f = udp_frame(GUEST_MAC, (DNS_ADDR, 53), (GUEST_ADDR, 4000), &[7; 33]);
        let eth = EthernetFrame::new_checked(&f[..]).unwrap();
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert!(ip.verify_checksum());
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(udp.verify_checksum(&IpAddress::Ipv4(DNS_ADDR), &IpAddress::Ipv4(GUEST_ADDR)));
        assert_eq!(udp.payload(), &[7; 33]);
    }
}
