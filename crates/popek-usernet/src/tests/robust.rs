//! A hostile guest: random frames and mutations of real ones (DHCP, ARP, DNS, TCP, UDP) must
//! be dropped or answered, never panic the stack thread, and leave it serving.
//!
//! While fuzzing, the policy forbids every NAT destination and resolves names with a fake
//! resolver, so no mutated frame can make the stack contact anything (not even another
//! test's loopback listener).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use smoltcp::socket::{tcp, udp};
use smoltcp::wire::IpAddress;

use super::guest::Guest;
use crate::dns::Lookup;
use crate::*;

static FUZZING: AtomicBool = AtomicBool::new(false);

fn policy() -> Policy {
    Policy {
        nat_allowed: |a| a.is_loopback() && !FUZZING.load(Ordering::Acquire),
        lookup: |name| {
            if name == "localhost" {
                Lookup::Found(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)])
            } else {
                Lookup::NotFound
            }
        },
    }
}

/// xorshift64*: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Recomputes the IPv4 header checksum of an Ethernet/IPv4 frame, so that mutations of the
/// IP header get past the checksum and into the deeper parsers.
fn fix_ipv4_checksum(f: &mut [u8]) {
    if f.len() < 34 || f[12..14] != [0x08, 0x00] {
        return;
    }
    let ihl = usize::from(f[14] & 0xf) * 4;
    if ihl < 20 || f.len() < 14 + ihl {
        return;
    }
    f[24] = 0;
    f[25] = 0;
    let mut sum = 0u32;
    for c in f[14..14 + ihl].chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let c = !(sum as u16);
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut f = base.to_vec();
    match rng.below(5) {
        0 => f.truncate(rng.below(base.len() + 1)),
        1 => {
            let extra = rng.below(64);
            f.extend((0..extra).map(|_| rng.next() as u8));
        }
        _ => {
            for _ in 0..=rng.below(4) {
                if f.is_empty() {
                    break;
                }
                let i = rng.below(f.len());
                f[i] = rng.next() as u8;
            }
        }
    }
    if rng.below(4) != 0 {
        fix_ipv4_checksum(&mut f);
    }
    f
}

/// Drives a real session (DHCP, DNS, TCP, UDP) and returns the frames the guest sent.
fn record_session(g: &mut Guest) -> Vec<Vec<u8>> {
    g.record = Some(Vec::new());
    g.dhcp();

    assert_eq!(g.resolve("localhost"), [IpAddress::v4(127, 0, 0, 1)]);

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let host = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(b"hello from the host").unwrap();
        let mut v = Vec::new();
        s.read_to_end(&mut v).unwrap();
        v.len()
    });
    let th = g.sockets.add(tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 8192]),
        tcp::SocketBuffer::new(vec![0; 8192]),
    ));
    g.sockets
        .get_mut::<tcp::Socket>(th)
        .connect(
            g.iface.context(),
            (IpAddress::Ipv4(GATEWAY_ADDR), port),
            41000,
        )
        .unwrap();
    let mut sent = false;
    g.run_until("TCP", Duration::from_secs(20), |g| {
        let s = g.sockets.get_mut::<tcp::Socket>(th);
        if s.can_send() && !sent {
            s.send_slice(&[0x5a; 3000]).unwrap();
            s.close();
            sent = true;
        }
        while s.can_recv() {
            s.recv(|b| (b.len(), ())).unwrap();
        }
        host.is_finished().then_some(())
    });
    assert_eq!(host.join().unwrap(), 3000);

    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    let uport = echo.local_addr().unwrap().port();
    let mk = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 2048]);
    let uh = g.sockets.add(udp::Socket::new(mk(), mk()));
    let s = g.sockets.get_mut::<udp::Socket>(uh);
    s.bind(5001).unwrap();
    s.send_slice(b"udp", (IpAddress::Ipv4(GATEWAY_ADDR), uport))
        .unwrap();
    echo.set_nonblocking(true).unwrap();
    g.run_until("UDP", Duration::from_secs(10), |_| {
        let mut b = [0u8; 8];
        echo.recv_from(&mut b).ok()
    });
    g.record.take().unwrap()
}

#[test]
fn malformed_and_mutated_frames_never_panic_the_stack() {
    let mut g = Guest::new(UserNet::start_with(UserNetConfig::default(), policy()).unwrap());
    let frames = record_session(&mut g);
    assert!(frames.len() >= 10, "only {} frames recorded", frames.len());

    FUZZING.store(true, Ordering::Release);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let t0 = Instant::now();
    let mut sent = 0;
    for i in 0..40_000 {
        let f = if i % 5 == 0 {
            let len = rng.below(1600);
            (0..len).map(|_| rng.next() as u8).collect()
        } else {
            let base = &frames[rng.below(frames.len())];
            mutate(&mut rng, base)
        };
        g.net.send(&f);
        sent += 1;
        if i % 200 == 199 {
            // Let the stack take them (the queue drops beyond its bound), and take its replies.
            while g.net.pending_from_guest() > 0 {
                while g.net.recv().is_some() {}
                thread::sleep(Duration::from_micros(200));
                assert!(
                    t0.elapsed() < Duration::from_secs(120),
                    "the stack stopped taking frames"
                );
            }
        }
    }
    while g.net.pending_from_guest() > 0 {
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(sent, 40_000);
    assert!(g.net.stack_alive(), "the stack thread died");

    // Still serving: DHCP again and a DNS answer.
    g.dhcp();
    let a = g.resolve("localhost");
    assert!(a.contains(&IpAddress::v4(127, 0, 0, 1)));
    assert!(g.net.stack_alive());
}

#[test]
fn random_frames_of_every_length_are_dropped() {
    let net = UserNet::start_with(UserNetConfig::default(), policy()).unwrap();
    let mut rng = Rng(42);
    for len in 0..2000 {
        let mut f: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        // Half of them addressed to the gateway as IPv4, to get past the Ethernet layer.
        if len >= 14 && len % 2 == 0 {
            f[..6].copy_from_slice(&GATEWAY_MAC);
            f[6] &= 0xfe;
            f[12..14].copy_from_slice(&[0x08, 0x00]);
            if len >= 34 {
                f[14] = 0x45;
                fix_ipv4_checksum(&mut f);
            }
        }
        net.send(&f);
        if len % 500 == 0 {
            while net.pending_from_guest() > 0 {
                thread::sleep(Duration::from_millis(1));
            }
        }
    }
    while net.pending_from_guest() > 0 {
        thread::sleep(Duration::from_millis(1));
    }
    assert!(net.stack_alive());
}
