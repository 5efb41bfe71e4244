//! End to end: a `smoltcp` test guest talks to the host through [`UserNet`]'s public API,
//! only to the host itself (127.0.0.1 behind 10.0.2.2).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, TcpListener, TcpStream, UdpSocket};
use std::thread;
use std::time::Duration;

use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{IpAddress, IpEndpoint, Ipv4Cidr};

use super::guest::Guest;
use crate::*;

const FNV0: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a, streaming (chunking doesn't change the result).
pub fn fnv(mut h: u64, data: &[u8]) -> u64 {
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Byte `i` of test stream `seed`.
pub fn pattern(seed: u64, i: usize) -> u8 {
    ((i as u64 ^ (seed << 40)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
}

fn pattern_hash(seed: u64, len: usize) -> u64 {
    let v: Vec<u8> = (0..len).map(|i| pattern(seed, i)).collect();
    fnv(FNV0, &v)
}

fn tcp_socket() -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 64 * 1024]),
        tcp::SocketBuffer::new(vec![0; 64 * 1024]),
    )
}

/// A guest with its DHCP lease.
fn guest(config: UserNetConfig) -> Guest {
    let mut g = Guest::new(UserNet::start(config).unwrap());
    g.dhcp();
    g
}

/// CPU time (user + system, in clock ticks) a thread of this process used.
fn thread_ticks(tid: i64) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
    // Fields after the parenthesised name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn dhcp_lease_configures_the_guest_and_the_idle_stack_sleeps() {
    let mut g = Guest::new(UserNet::start(UserNetConfig::default()).unwrap());
    let (addr, router, dns) = g.dhcp();
    assert_eq!(addr, Ipv4Cidr::new(GUEST_ADDR, 24));
    assert_eq!(router, Some(GATEWAY_ADDR));
    assert_eq!(dns, vec![DNS_ADDR]);

    // Idle (the guest doing nothing), the stack thread must sleep in poll().
    let tid = g.net.stack_tid();
    assert!(tid > 0);
    let before = thread_ticks(tid);
    thread::sleep(Duration::from_secs(1));
    let used = thread_ticks(tid) - before;
    assert!(
        used <= 2,
        "the idle stack thread used {used} ticks of CPU in 1 s"
    );
}

#[test]
fn dns_resolves_localhost_through_10_0_2_3() {
    let mut g = guest(UserNetConfig::default());
    let addrs = g.resolve("localhost");
    assert!(
        addrs.contains(&IpAddress::v4(127, 0, 0, 1)),
        "localhost resolved to {addrs:?}"
    );
}

#[test]
fn tcp_outbound_relays_1mib_each_way_with_fin_both_ways() {
    const N: usize = 1 << 20;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let host = thread::spawn(move || {
        let (s, peer) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut w = s.try_clone().unwrap();
        let writer = thread::spawn(move || {
            let data: Vec<u8> = (0..N).map(|i| pattern(2, i)).collect();
            for c in data.chunks(16 * 1024) {
                w.write_all(c).unwrap();
            }
            w.shutdown(Shutdown::Write).unwrap();
        });
        let mut r = s;
        let (mut n, mut h) = (0usize, FNV0);
        let mut buf = vec![0; 32 * 1024];
        loop {
            let k = r.read(&mut buf).unwrap();
            if k == 0 {
                break;
            }
            n += k;
            h = fnv(h, &buf[..k]);
        }
        writer.join().unwrap();
        (n, h, peer)
    });

    let mut g = guest(UserNetConfig::default());
    let sh = g.sockets.add(tcp_socket());
    g.sockets
        .get_mut::<tcp::Socket>(sh)
        .connect(
            g.iface.context(),
            (IpAddress::Ipv4(GATEWAY_ADDR), port),
            40000,
        )
        .unwrap();
    let (mut sent, mut rcvd, mut rhash, mut closed) = (0usize, 0usize, FNV0, false);
    g.run_until("1 MiB each way", Duration::from_secs(120), |g| {
        let s = g.sockets.get_mut::<tcp::Socket>(sh);
        while sent < N && s.can_send() {
            let n = s
                .send(|buf| {
                    let n = buf.len().min(N - sent);
                    for (k, b) in buf[..n].iter_mut().enumerate() {
                        *b = pattern(1, sent + k);
                    }
                    (n, n)
                })
                .unwrap();
            sent += n;
        }
        if sent == N && !closed {
            s.close();
            closed = true;
        }
        while s.can_recv() {
            s.recv(|buf| {
                rhash = fnv(rhash, buf);
                rcvd += buf.len();
                (buf.len(), ())
            })
            .unwrap();
        }
        // The host thread ends once it has the guest's data and FIN.
        (closed && rcvd == N && !s.may_recv() && host.is_finished()).then_some(())
    });
    assert_eq!(rhash, pattern_hash(2, N), "host-to-guest data differs");
    // The guest's FIN reaches the host, which then sees exactly the guest's data.
    let (n, h, peer) = host.join().unwrap();
    assert_eq!(n, N);
    assert_eq!(h, pattern_hash(1, N), "guest-to-host data differs");
    assert!(peer.ip().is_loopback());
    // Both FINs are acknowledged: the guest's socket ends up closed.
    g.run_until("the close", Duration::from_secs(10), |g| {
        let st = g.sockets.get::<tcp::Socket>(sh).state();
        matches!(st, tcp::State::TimeWait | tcp::State::Closed).then_some(())
    });
}

#[test]
fn tcp_outbound_to_a_closed_port_is_reset() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut g = guest(UserNetConfig::default());
    let sh = g.sockets.add(tcp_socket());
    g.sockets
        .get_mut::<tcp::Socket>(sh)
        .connect(
            g.iface.context(),
            (IpAddress::Ipv4(GATEWAY_ADDR), port),
            40001,
        )
        .unwrap();
    let mut established = false;
    g.run_until("the RST", Duration::from_secs(10), |g| {
        let st = g.sockets.get::<tcp::Socket>(sh).state();
        established |= st == tcp::State::Established;
        (st == tcp::State::Closed).then_some(())
    });
    assert!(
        !established,
        "the handshake must not complete for a refused port"
    );
    // The DNS address has no TCP: refused too (as is the rest of 10.0.2.0/24 but the gateway).
    g.sockets
        .get_mut::<tcp::Socket>(sh)
        .connect(g.iface.context(), (IpAddress::Ipv4(DNS_ADDR), 53), 40002)
        .unwrap();
    g.run_until("the RST", Duration::from_secs(10), |g| {
        (g.sockets.get::<tcp::Socket>(sh).state() == tcp::State::Closed).then_some(())
    });
}

#[test]
fn udp_echo_round_trip_through_the_gateway() {
    let host = UdpSocket::bind("127.0.0.1:0").unwrap();
    host.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let port = host.local_addr().unwrap().port();
    let echo = thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let (n, from) = host.recv_from(&mut buf).unwrap();
        let mut reply = buf[..n].to_vec();
        reply.reverse();
        host.send_to(&reply, from).unwrap();
        n
    });
    let mut g = guest(UserNetConfig::default());
    let mk = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]);
    let uh = g.sockets.add(udp::Socket::new(mk(), mk()));
    let s = g.sockets.get_mut::<udp::Socket>(uh);
    s.bind(5000).unwrap();
    let msg: Vec<u8> = (0..1000).map(|i| pattern(5, i)).collect();
    s.send_slice(&msg, (IpAddress::Ipv4(GATEWAY_ADDR), port))
        .unwrap();
    let (data, from) = g.run_until("the UDP echo", Duration::from_secs(20), |g| {
        let s = g.sockets.get_mut::<udp::Socket>(uh);
        s.recv().ok().map(|(d, m)| (d.to_vec(), m.endpoint))
    });
    assert_eq!(echo.join().unwrap(), msg.len());
    let mut want = msg.clone();
    want.reverse();
    assert_eq!(data, want);
    assert_eq!(from, IpEndpoint::new(IpAddress::Ipv4(GATEWAY_ADDR), port));
}

fn published(guest_port: u16) -> Publish {
    Publish {
        host_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        host_port: 0,
        guest_port,
    }
}

#[test]
fn publish_forwards_host_connections_into_the_guest() {
    const IN: usize = 256 * 1024;
    const OUT: usize = 100 * 1024;
    let mut g = guest(UserNetConfig {
        publish: vec![published(8080)],
        ..Default::default()
    });
    let addr = g.net.published_addrs()[0];
    assert!(addr.ip().is_loopback() && addr.port() != 0);
    let lh = g.sockets.add(tcp_socket());
    g.sockets.get_mut::<tcp::Socket>(lh).listen(8080).unwrap();

    let host = thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let data: Vec<u8> = (0..IN).map(|i| pattern(3, i)).collect();
        s.write_all(&data).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        back
    });

    let (mut rhash, mut rcvd, mut sent, mut peer) = (FNV0, 0usize, None::<usize>, None);
    g.run_until("the published exchange", Duration::from_secs(120), |g| {
        let s = g.sockets.get_mut::<tcp::Socket>(lh);
        if peer.is_none() {
            peer = s.remote_endpoint();
        }
        while s.can_recv() {
            s.recv(|b| {
                rhash = fnv(rhash, b);
                rcvd += b.len();
                (b.len(), ())
            })
            .unwrap();
        }
        // After the host's FIN: the hash of what came, then OUT bytes, then FIN.
        if sent.is_none() && !s.may_recv() && s.state() == tcp::State::CloseWait {
            s.send_slice(&rhash.to_be_bytes()).unwrap();
            sent = Some(0);
        }
        if let Some(n) = sent.as_mut() {
            while *n < OUT && s.can_send() {
                let k = s
                    .send(|buf| {
                        let k = buf.len().min(OUT - *n);
                        for (j, b) in buf[..k].iter_mut().enumerate() {
                            *b = pattern(4, *n + j);
                        }
                        (k, k)
                    })
                    .unwrap();
                *n += k;
            }
            if *n == OUT {
                s.close();
            }
        }
        host.is_finished().then_some(())
    });
    let back = host.join().unwrap();
    assert_eq!(rcvd, IN);
    assert_eq!(rhash, pattern_hash(3, IN));
    assert_eq!(back.len(), 8 + OUT);
    assert_eq!(back[..8], pattern_hash(3, IN).to_be_bytes());
    assert_eq!(fnv(FNV0, &back[8..]), pattern_hash(4, OUT));
    // The connection came from the gateway.
    assert_eq!(peer.unwrap().addr, IpAddress::Ipv4(GATEWAY_ADDR));
}

#[test]
fn publish_to_a_closed_guest_port_closes_the_host_socket() {
    let mut g = guest(UserNetConfig {
        publish: vec![published(8081)],
        ..Default::default()
    });
    let addr = g.net.published_addrs()[0];
    let host = thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut b = [0u8; 16];
        // The guest refuses (RST), so the host socket is reset or closed; not a timeout.
        match s.read(&mut b) {
            Ok(0) => "closed",
            Ok(_) => "data",
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => "reset",
            Err(e) => panic!("{e}"),
        }
    });
    g.run_until("the host socket's end", Duration::from_secs(30), |_| {
        host.is_finished().then_some(())
    });
    let how = host.join().unwrap();
    assert!(how == "reset" || how == "closed", "{how}");
}

#[test]
fn publish_port_in_use_is_an_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = UserNet::start(UserNetConfig {
        publish: vec![Publish {
            host_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            host_port: port,
            guest_port: 80,
        }],
        ..Default::default()
    })
    .unwrap_err();
    match &err {
        UserNetError::Publish { port: p, error, .. } => {
            assert_eq!(*p, port);
            assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "cannot listen on 127.0.0.1:{port} for --publish {port}:80: Address already in use; choose a free host port"
        )
    );
}

#[test]
fn tcp_backpressure_holds_host_data_until_the_guest_reads() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut g = guest(UserNetConfig::default());
    let sh = g.sockets.add(tcp_socket());
    g.sockets
        .get_mut::<tcp::Socket>(sh)
        .connect(
            g.iface.context(),
            (IpAddress::Ipv4(GATEWAY_ADDR), port),
            40010,
        )
        .unwrap();
    g.run_until("the connection", Duration::from_secs(10), |g| {
        (g.sockets.get::<tcp::Socket>(sh).state() == tcp::State::Established).then_some(())
    });
    let (mut hs, _) = listener.accept().unwrap();
    hs.set_nonblocking(true).unwrap();

    // The host writes while the guest runs but doesn't read: the writes must stop (the stack
    // stops reading the host socket once the guest's window and its own buffer are full)
    // instead of the stack buffering everything.
    let mut written = 0usize;
    let mut last = std::time::Instant::now();
    let mut chunk = vec![0u8; 64 * 1024];
    while last.elapsed() < Duration::from_millis(500) {
        for (k, b) in chunk.iter_mut().enumerate() {
            *b = pattern(7, written + k);
        }
        match hs.write(&chunk) {
            Ok(n) => {
                written += n;
                last = std::time::Instant::now();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => g.step(),
            Err(e) => panic!("{e}"),
        }
        assert!(
            written < 32 << 20,
            "the host wrote {written} bytes unhindered"
        );
    }
    assert!(written > 128 * 1024, "only {written} bytes went out");
    hs.shutdown(Shutdown::Write).unwrap();

    // Then the guest reads it all, exactly, and sees the host's FIN.
    let (mut rcvd, mut h) = (0usize, FNV0);
    g.run_until("the held-back data", Duration::from_secs(60), |g| {
        let s = g.sockets.get_mut::<tcp::Socket>(sh);
        while s.can_recv() {
            s.recv(|b| {
                h = fnv(h, b);
                rcvd += b.len();
                (b.len(), ())
            })
            .unwrap();
        }
        (!s.may_recv()).then_some(())
    });
    assert_eq!(rcvd, written);
    assert_eq!(h, pattern_hash(7, written));
}

#[test]
fn usernet_can_be_shared_with_the_device_thread() {
    fn check<T: Send + Sync>() {}
    check::<UserNet>();
}
