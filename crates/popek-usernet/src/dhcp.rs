//! The DHCP server (RFC 2131): one lease, 10.0.2.15/24, router 10.0.2.2, DNS 10.0.2.3, one
//! day. `smoltcp` only has a client, and a server this small is simpler written out than
//! bent out of its representation types, which reject some valid client identifiers.
//!
//! Replies go where RFC 2131 section 4.1 says: unicast to `ciaddr` when the client has an
//! address (renewing, INFORM), broadcast when the client set the broadcast flag (or for a NAK),
//! else unicast to the offered address at the client's MAC, which a client without an address
//! receives on its raw socket (busybox udhcpc, systemd-networkd). The server owns the link, so
//! no ARP is needed for that.

use std::net::Ipv4Addr;

use smoltcp::wire::EthernetAddress;

use crate::frame::{udp_frame, Ep};
use crate::{DNS_ADDR, GATEWAY_ADDR, GUEST_ADDR, LEASE_SECS, NETWORK_PREFIX_LEN};

/// The DHCP server's UDP port.
pub(crate) const SERVER_PORT: u16 = 67;
/// The DHCP client's UDP port.
pub(crate) const CLIENT_PORT: u16 = 68;

const OP_REQUEST: u8 = 1;
const OP_REPLY: u8 = 2;
const HTYPE_ETHERNET: u8 = 1;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// Fixed BOOTP header up to the magic cookie.
const HEADER_LEN: usize = 236;
/// Options start after the magic cookie.
const OPTIONS_START: usize = HEADER_LEN + 4;
/// BOOTP's minimum message size; some clients drop shorter replies.
const MIN_REPLY_LEN: usize = 300;
const FLAG_BROADCAST: u16 = 0x8000;

const OPT_PAD: u8 = 0;
const OPT_SUBNET_MASK: u8 = 1;
const OPT_ROUTER: u8 = 3;
const OPT_DNS: u8 = 6;
const OPT_BROADCAST_ADDR: u8 = 28;
const OPT_REQUESTED_IP: u8 = 50;
const OPT_LEASE_TIME: u8 = 51;
const OPT_MESSAGE_TYPE: u8 = 53;
const OPT_SERVER_ID: u8 = 54;
const OPT_RENEWAL_TIME: u8 = 58;
const OPT_REBINDING_TIME: u8 = 59;
const OPT_END: u8 = 255;

/// DHCP message types (option 53).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum MessageType {
    Discover = 1,
    Offer = 2,
    Request = 3,
    Decline = 4,
    Ack = 5,
    Nak = 6,
    Release = 7,
    Inform = 8,
}

impl MessageType {
    fn from_u8(v: u8) -> Option<MessageType> {
        use MessageType::*;
        Some(match v {
            1 => Discover,
            2 => Offer,
            3 => Request,
            4 => Decline,
            5 => Ack,
            6 => Nak,
            7 => Release,
            8 => Inform,
            _ => return None,
        })
    }
}

/// The parts of a client message the server looks at.
#[derive(Debug)]
struct ClientMessage<'a> {
    kind: MessageType,
    /// The BOOTP header, copied into replies (xid, flags, giaddr, chaddr).
    header: &'a [u8],
    ciaddr: Ipv4Addr,
    chaddr: EthernetAddress,
    broadcast: bool,
    requested_ip: Option<Ipv4Addr>,
    server_id: Option<Ipv4Addr>,
}

fn ipv4_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

fn parse(msg: &[u8]) -> Option<ClientMessage<'_>> {
    if msg.len() < OPTIONS_START
        || msg[0] != OP_REQUEST
        || msg[1] != HTYPE_ETHERNET
        || msg[2] != 6
        || msg[HEADER_LEN..OPTIONS_START] != MAGIC
    {
        return None;
    }
    let mut kind = None;
    let mut requested_ip = None;
    let mut server_id = None;
    let mut opts = &msg[OPTIONS_START..];
    while let Some((&code, rest)) = opts.split_first() {
        match code {
            OPT_PAD => {
                opts = rest;
                continue;
            }
            OPT_END => break,
            _ => {}
        }
        let (&len, rest) = rest.split_first()?;
        let data = rest.get(..usize::from(len))?;
        opts = &rest[usize::from(len)..];
        match (code, data.len()) {
            (OPT_MESSAGE_TYPE, 1) => kind = MessageType::from_u8(data[0]),
            (OPT_REQUESTED_IP, 4) => requested_ip = Some(ipv4_at(data, 0)),
            (OPT_SERVER_ID, 4) => server_id = Some(ipv4_at(data, 0)),
            _ => {}
        }
    }
    let flags = u16::from_be_bytes([msg[10], msg[11]]);
    Some(ClientMessage {
        kind: kind?,
        header: &msg[..HEADER_LEN],
        ciaddr: ipv4_at(msg, 12),
        chaddr: EthernetAddress::from_bytes(&msg[28..34]),
        broadcast: flags & FLAG_BROADCAST != 0,
        requested_ip,
        server_id,
    })
}

/// The reply's BOOTP message.
fn reply(m: &ClientMessage<'_>, kind: MessageType) -> Vec<u8> {
    let mut out = Vec::with_capacity(MIN_REPLY_LEN);
    out.extend_from_slice(m.header);
    out[0] = OP_REPLY;
    out[3] = 0; // hops
    out[8..10].copy_from_slice(&[0, 0]); // secs
    let yiaddr = match kind {
        MessageType::Offer | MessageType::Ack if m.kind != MessageType::Inform => GUEST_ADDR,
        _ => Ipv4Addr::UNSPECIFIED,
    };
    if kind != MessageType::Ack {
        out[12..16].copy_from_slice(&[0; 4]); // ciaddr only echoed in ACKs
    }
    out[16..20].copy_from_slice(&yiaddr.octets());
    let siaddr = if kind == MessageType::Nak {
        Ipv4Addr::UNSPECIFIED
    } else {
        GATEWAY_ADDR
    };
    out[20..24].copy_from_slice(&siaddr.octets());
    out[44..HEADER_LEN].fill(0); // sname, file
    out.extend_from_slice(&MAGIC);
    let mut opt = |code: u8, data: &[u8]| {
        out.push(code);
        out.push(data.len() as u8);
        out.extend_from_slice(data);
    };
    opt(OPT_MESSAGE_TYPE, &[kind as u8]);
    opt(OPT_SERVER_ID, &GATEWAY_ADDR.octets());
    if kind != MessageType::Nak {
        if m.kind != MessageType::Inform {
            opt(OPT_LEASE_TIME, &LEASE_SECS.to_be_bytes());
            opt(OPT_RENEWAL_TIME, &(LEASE_SECS / 2).to_be_bytes());
            opt(OPT_REBINDING_TIME, &(LEASE_SECS / 8 * 7).to_be_bytes());
        }
        let mask = u32::MAX << (32 - u32::from(NETWORK_PREFIX_LEN));
        opt(OPT_SUBNET_MASK, &mask.to_be_bytes());
        opt(OPT_ROUTER, &GATEWAY_ADDR.octets());
        opt(OPT_DNS, &DNS_ADDR.octets());
        let bcast = u32::from(GUEST_ADDR) | !mask;
        opt(OPT_BROADCAST_ADDR, &bcast.to_be_bytes());
    }
    out.push(OPT_END);
    if out.len() < MIN_REPLY_LEN {
        out.resize(MIN_REPLY_LEN, OPT_PAD);
    }
    out
}

/// Handles a DHCP message the guest sent from `src_mac`; returns the Ethernet frame to send
/// back, if any.
pub(crate) fn handle(src_mac: EthernetAddress, msg: &[u8]) -> Option<Vec<u8>> {
    let m = parse(msg)?;
    if !m.chaddr.is_unicast() {
        return None;
    }
    let kind = match m.kind {
        MessageType::Discover => MessageType::Offer,
        MessageType::Request => {
            if m.server_id.is_some_and(|s| s != GATEWAY_ADDR) {
                // The client chose another server's offer.
                return None;
            }
            let wanted = m
                .requested_ip
                .or_else(|| (!m.ciaddr.is_unspecified()).then_some(m.ciaddr));
            if wanted == Some(GUEST_ADDR) {
                MessageType::Ack
            } else {
                tracing::debug!(?wanted, "usernet: DHCP NAK for an address not leased");
                MessageType::Nak
            }
        }
        MessageType::Inform => MessageType::Ack,
        MessageType::Decline | MessageType::Release => {
            tracing::debug!(kind = ?m.kind, "usernet: DHCP message ignored");
            return None;
        }
        MessageType::Offer | MessageType::Ack | MessageType::Nak => return None,
    };
    tracing::debug!(request = ?m.kind, reply = ?kind, "usernet: DHCP");
    let payload = reply(&m, kind);
    let broadcast: Ep = (Ipv4Addr::BROADCAST, CLIENT_PORT);
    let (dst_mac, dst) = if kind == MessageType::Nak {
        (EthernetAddress::BROADCAST, broadcast)
    } else if !m.ciaddr.is_unspecified() {
        (src_mac, (m.ciaddr, CLIENT_PORT))
    } else if m.broadcast {
        (EthernetAddress::BROADCAST, broadcast)
    } else {
        (m.chaddr, (GUEST_ADDR, CLIENT_PORT))
    };
    Some(udp_frame(
        dst_mac,
        (GATEWAY_ADDR, SERVER_PORT),
        dst,
        &payload,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{EthernetFrame, Ipv4Packet, UdpPacket};

    const MAC: EthernetAddress = EthernetAddress(crate::DEFAULT_GUEST_MAC);

    /// A client message as busybox udhcpc / systemd-networkd would send it.
    fn client(
        kind: MessageType,
        broadcast: bool,
        ciaddr: Ipv4Addr,
        opts: &[(u8, &[u8])],
    ) -> Vec<u8> {
        let mut m = vec![0u8; HEADER_LEN];
        m[0] = OP_REQUEST;
        m[1] = HTYPE_ETHERNET;
        m[2] = 6;
        m[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        if broadcast {
            m[10] = 0x80;
        }
        m[12..16].copy_from_slice(&ciaddr.octets());
        m[28..34].copy_from_slice(&MAC.0);
        m.extend_from_slice(&MAGIC);
        m.extend_from_slice(&[OPT_MESSAGE_TYPE, 1, kind as u8]);
        // A DUID client identifier (type 255) as systemd-networkd sends.
        m.extend_from_slice(&[61, 13, 255, 1, 2, 3, 4, 0, 2, 0, 0, 0xab, 0x11, 0x22, 0x33]);
        for (code, data) in opts {
            m.push(*code);
            m.push(data.len() as u8);
            m.extend_from_slice(data);
        }
        m.extend_from_slice(&[OPT_PAD, OPT_END]);
        m
    }

    struct Reply {
        dst_mac: EthernetAddress,
        dst_ip: Ipv4Addr,
        kind: u8,
        yiaddr: Ipv4Addr,
        xid: u32,
        opts: Vec<(u8, Vec<u8>)>,
    }

    fn decode(frame: &[u8]) -> Reply {
        let eth = EthernetFrame::new_checked(frame).unwrap();
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!((udp.src_port(), udp.dst_port()), (67, 68));
        assert_eq!(ip.src_addr(), GATEWAY_ADDR);
        let b = udp.payload();
        assert!(b.len() >= MIN_REPLY_LEN);
        assert_eq!(b[0], OP_REPLY);
        let mut opts = vec![];
        let mut i = OPTIONS_START;
        while b[i] != OPT_END {
            let (c, l) = (b[i], b[i + 1] as usize);
            opts.push((c, b[i + 2..i + 2 + l].to_vec()));
            i += 2 + l;
        }
        let kind = opts.iter().find(|o| o.0 == OPT_MESSAGE_TYPE).unwrap().1[0];
        Reply {
            dst_mac: eth.dst_addr(),
            dst_ip: ip.dst_addr(),
            kind,
            yiaddr: ipv4_at(b, 16),
            xid: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            opts,
        }
    }

    fn opt(r: &Reply, code: u8) -> Option<&[u8]> {
        r.opts.iter().find(|o| o.0 == code).map(|o| &o.1[..])
    }

    #[test]
    fn discover_gets_an_offer_with_the_whole_configuration() {
        let f = handle(
            MAC,
            &client(MessageType::Discover, false, Ipv4Addr::UNSPECIFIED, &[]),
        )
        .unwrap();
        let r = decode(&f);
        assert_eq!(r.kind, MessageType::Offer as u8);
        assert_eq!(r.xid, 0x1234_5678);
        assert_eq!(r.yiaddr, GUEST_ADDR);
        // No broadcast flag: unicast to the offered address at the client's MAC.
        assert_eq!((r.dst_mac, r.dst_ip), (MAC, GUEST_ADDR));
        assert_eq!(opt(&r, OPT_SERVER_ID), Some(&[10, 0, 2, 2][..]));
        assert_eq!(opt(&r, OPT_ROUTER), Some(&[10, 0, 2, 2][..]));
        assert_eq!(opt(&r, OPT_DNS), Some(&[10, 0, 2, 3][..]));
        assert_eq!(opt(&r, OPT_SUBNET_MASK), Some(&[255, 255, 255, 0][..]));
        assert_eq!(opt(&r, OPT_LEASE_TIME), Some(&86400u32.to_be_bytes()[..]));
        assert_eq!(opt(&r, OPT_BROADCAST_ADDR), Some(&[10, 0, 2, 255][..]));
    }

    #[test]
    fn broadcast_flag_gets_a_broadcast_reply() {
        let f = handle(
            MAC,
            &client(MessageType::Discover, true, Ipv4Addr::UNSPECIFIED, &[]),
        )
        .unwrap();
        let r = decode(&f);
        assert_eq!(
            (r.dst_mac, r.dst_ip),
            (EthernetAddress::BROADCAST, Ipv4Addr::BROADCAST)
        );
    }

    #[test]
    fn request_for_the_lease_is_acked_and_others_are_naked() {
        let req = client(
            MessageType::Request,
            false,
            Ipv4Addr::UNSPECIFIED,
            &[
                (OPT_REQUESTED_IP, &[10, 0, 2, 15]),
                (OPT_SERVER_ID, &[10, 0, 2, 2]),
            ],
        );
        let r = decode(&handle(MAC, &req).unwrap());
        assert_eq!(r.kind, MessageType::Ack as u8);
        assert_eq!(r.yiaddr, GUEST_ADDR);

        let req = client(
            MessageType::Request,
            false,
            Ipv4Addr::UNSPECIFIED,
            &[(OPT_REQUESTED_IP, &[10, 0, 2, 99])],
        );
        let r = decode(&handle(MAC, &req).unwrap());
        assert_eq!(r.kind, MessageType::Nak as u8);
        assert_eq!(r.yiaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(r.dst_ip, Ipv4Addr::BROADCAST);

        // Another server was chosen: silence.
        let req = client(
            MessageType::Request,
            false,
            Ipv4Addr::UNSPECIFIED,
            &[
                (OPT_REQUESTED_IP, &[10, 0, 2, 15]),
                (OPT_SERVER_ID, &[10, 0, 2, 4]),
            ],
        );
        assert!(handle(MAC, &req).is_none());
    }

    #[test]
    fn renewal_is_unicast_to_the_client_address() {
        let req = client(MessageType::Request, false, GUEST_ADDR, &[]);
        let r = decode(&handle(MAC, &req).unwrap());
        assert_eq!(r.kind, MessageType::Ack as u8);
        assert_eq!((r.dst_mac, r.dst_ip), (MAC, GUEST_ADDR));
    }

    #[test]
    fn release_decline_and_garbage_get_nothing() {
        assert!(handle(MAC, &client(MessageType::Release, false, GUEST_ADDR, &[])).is_none());
        assert!(handle(
            MAC,
            &client(MessageType::Decline, false, Ipv4Addr::UNSPECIFIED, &[])
        )
        .is_none());
        let good = client(MessageType::Discover, false, Ipv4Addr::UNSPECIFIED, &[]);
        for n in 0..good.len() {
            let _ = handle(MAC, &good[..n]);
        }
        // An option whose length runs past the end.
        let mut bad = good[..OPTIONS_START].to_vec();
        bad.extend_from_slice(&[OPT_MESSAGE_TYPE, 200, 1]);
        assert!(handle(MAC, &bad).is_none());
    }
}
