//! The vsock device driven through the virtio-mmio transport, with real unix sockets.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::packet::{op, SHUTDOWN_BOTH, SHUTDOWN_SEND, TYPE_STREAM};
use super::worker::{port_path, BUF_ALLOC};
use super::*;
use crate::mmio::status;
use crate::testutil::Driver;

const CID: u64 = 3;
const RX: usize = RX_QUEUE as usize;
const TX: usize = TX_QUEUE as usize;
/// Payload room of the receive buffers the test guest posts (as Linux's 4 KiB buffers).
const RX_PAYLOAD: u32 = 4096;
const RX_BUFFERS: usize = 32;
const TX_AREA: u64 = 4 << 20;
const WAIT: Duration = Duration::from_secs(5);
/// How long to watch for a packet that must not come.
const QUIET: Duration = Duration::from_millis(300);

/// A directory removed at the end of the test.
struct TmpDir(PathBuf);

impl TmpDir {
    fn new() -> TmpDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "popek-vsock-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TmpDir(p)
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The guest's side: a driver with receive buffers posted, sending and receiving packets.
struct Guest {
    d: Driver,
    uds: PathBuf,
    /// Receive buffer of each posted head: (address, size).
    rx_bufs: HashMap<u16, (u64, u32)>,
    tx_area: u64,
    tx_off: u64,
    rx_buffers: usize,
    _dir: TmpDir,
}

impl Guest {
    fn start() -> Guest {
        Guest::start_with(u64::MAX)
    }

    fn start_with(want: u64) -> Guest {
        Guest::start_full(want, RX_BUFFERS)
    }

    fn start_full(want: u64, rx_buffers: usize) -> Guest {
        let dir = TmpDir::new();
        let uds = dir.0.join("v.sock");
        let dev = Vsock::new(CID, uds.clone()).unwrap();
        let mut d = Driver::new(Box::new(dev));
        assert_eq!(d.read_reg(0x08), crate::device_type::VSOCK);
        let tx_area = d.alloc(TX_AREA);
        let mut g = Guest {
            d,
            uds,
            rx_bufs: HashMap::new(),
            tx_area,
            tx_off: 0,
            rx_buffers,
            _dir: dir,
        };
        g.activate(want);
        g
    }

    /// Negotiate and post receive buffers (again after a reset).
    fn activate(&mut self, want: u64) {
        let f = self.d.setup(want);
        assert_ne!(f & crate::features::VERSION_1, 0);
        let mut cid = [0u8; 8];
        self.d.read_config(0, &mut cid);
        assert_eq!(u64::from_le_bytes(cid), CID);
        self.rx_bufs.clear();
        for i in 0..self.rx_buffers {
            let size = HDR_LEN as u32 + RX_PAYLOAD;
            let addr = self.d.alloc(size as u64);
            self.post_rx(addr, size, i & 1 == 1);
        }
        self.d.notify(RX);
    }

    /// Post a receive buffer, as one descriptor or as header + data (older Linux).
    fn post_rx(&mut self, addr: u64, size: u32, split: bool) {
        let head = if split {
            let h = HDR_LEN as u32;
            self.d
                .add(RX, &[(addr, h, true), (addr + h as u64, size - h, true)])
        } else {
            self.d.add(RX, &[(addr, size, true)])
        };
        self.rx_bufs.insert(head, (addr, size));
    }

    /// The next packet from the device within `timeout`; its buffer is posted again.
    fn recv(&mut self, timeout: Duration) -> Option<(Header, Vec<u8>)> {
        let (head, len) = self.d.wait_used(RX, timeout)?;
        let (addr, size) = self.rx_bufs.remove(&head).expect("used head was posted");
        assert!(len as usize >= HDR_LEN && len <= size, "used length {len}");
        let bytes = self.d.read_mem(addr, len as usize);
        let h = Header::parse(bytes[..HDR_LEN].try_into().unwrap());
        assert_eq!(
            h.len as usize,
            len as usize - HDR_LEN,
            "header len vs used len"
        );
        assert_eq!(
            (h.src_cid, h.dst_cid, h.type_),
            (HOST_CID, CID, TYPE_STREAM)
        );
        assert_eq!(h.buf_alloc, BUF_ALLOC);
        self.post_rx(addr, size, head & 1 == 0);
        self.d.notify(RX);
        Some((h, bytes[HDR_LEN..].to_vec()))
    }

    fn expect(&mut self) -> (Header, Vec<u8>) {
        self.recv(WAIT).expect("no packet from the device")
    }

    fn expect_op(&mut self, want: u16) -> (Header, Vec<u8>) {
        let (h, data) = self.expect();
        assert_eq!(h.op, want, "unexpected packet {h:?}");
        (h, data)
    }

    fn expect_quiet(&mut self) {
        if let Some((h, _)) = self.recv(QUIET) {
            panic!("unexpected packet {h:?}");
        }
    }

    /// Send raw bytes as one packet (header descriptor, then payload descriptor).
    fn send_raw(&mut self, bytes: &[u8], split_at: usize) {
        while self.d.used(TX).is_some() {}
        if self.d.queues[TX].free_descriptors() < 2 {
            self.d.wait_used(TX, WAIT).expect("tx queue stuck");
        }
        if self.tx_off + bytes.len() as u64 > TX_AREA {
            // Reuse the area only once the device is done with every packet in it.
            while self.d.queues[TX].free_descriptors() < self.d.queues[TX].size as usize {
                self.d.wait_used(TX, WAIT).expect("tx queue stuck");
            }
            self.tx_off = 0;
        }
        let addr = self.tx_area + self.tx_off;
        self.tx_off += (bytes.len() as u64 + 15) & !15;
        self.d.write_mem(addr, bytes);
        let split_at = split_at.min(bytes.len());
        if split_at == bytes.len() {
            self.d.add(TX, &[(addr, bytes.len() as u32, false)]);
        } else {
            self.d.add(
                TX,
                &[
                    (addr, split_at as u32, false),
                    (
                        addr + split_at as u64,
                        (bytes.len() - split_at) as u32,
                        false,
                    ),
                ],
            );
        }
        self.d.notify(TX);
    }

    fn send(&mut self, h: Header, payload: &[u8]) {
        let mut h = h;
        h.len = payload.len() as u32;
        let mut bytes = h.to_bytes().to_vec();
        bytes.extend_from_slice(payload);
        self.send_raw(&bytes, HDR_LEN);
    }

    fn failed(&mut self) -> bool {
        self.d.status() & status::DEVICE_NEEDS_RESET != 0
    }
}

/// A packet from the guest's port `src` to host port `dst`.
fn pkt(op: u16, src: u32, dst: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: src,
        dst_port: dst,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 64 << 10,
        ..Header::default()
    }
}

fn client(g: &Guest) -> UnixStream {
    let c = UnixStream::connect(&g.uds).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    c
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        let n = s.read(&mut b).unwrap();
        if n == 0 || b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

fn read_n(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

fn assert_eof(s: &mut UnixStream) {
    let mut b = [0u8; 16];
    assert_eq!(s.read(&mut b).unwrap(), 0, "expected end of file");
}

/// A host client connects to guest port `port`; the guest accepts with `buf_alloc`.
/// Returns the client and the host-side port.
fn host_conn(g: &mut Guest, port: u32, buf_alloc: u32) -> (UnixStream, u32) {
    let mut c = client(g);
    c.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    let (h, _) = g.expect_op(op::REQUEST);
    assert_eq!(h.dst_port, port);
    assert_eq!(h.len, 0);
    assert!(h.src_port >= 1 << 30, "host port {}", h.src_port);
    let mut r = pkt(op::RESPONSE, port, h.src_port);
    r.buf_alloc = buf_alloc;
    g.send(r, &[]);
    assert_eq!(read_line(&mut c), format!("OK {}", h.src_port));
    (c, h.src_port)
}

fn host_to_guest_roundtrip(want: u64) {
    let mut g = Guest::start_with(want);
    let (mut c, hp) = host_conn(&mut g, 1234, 64 << 10);

    c.write_all(b"hello guest").unwrap();
    let (h, data) = g.expect_op(op::RW);
    assert_eq!((h.src_port, h.dst_port), (hp, 1234));
    assert_eq!(data, b"hello guest");
    assert_eq!(h.fwd_cnt, 0);

    g.send(pkt(op::RW, 1234, hp), b"hello host");
    assert_eq!(read_n(&mut c, 10), b"hello host");

    // The guest closes: the device answers with the reset that ends it, the client sees EOF.
    let mut s = pkt(op::SHUTDOWN, 1234, hp);
    s.flags = SHUTDOWN_BOTH;
    g.send(s, &[]);
    let (h, _) = g.expect_op(op::RST);
    assert_eq!((h.src_port, h.dst_port), (hp, 1234));
    assert_eof(&mut c);

    // Every packet written to guest memory was reported through the write hook.
    let writes = g.d.writes.lock().unwrap().clone();
    assert!(writes.len() >= 3, "{writes:?}");
    assert!(!g.failed());
    assert!(g.d.take_interrupt() & crate::INT_USED_RING != 0);
    assert!(
        g.d.kicks.load(Ordering::SeqCst) > 0,
        "the device never raised its interrupt"
    );
}

#[test]
fn vsock_host_connect_roundtrip() {
    host_to_guest_roundtrip(u64::MAX);
}

#[test]
fn vsock_host_connect_roundtrip_without_event_idx() {
    host_to_guest_roundtrip(!crate::features::RING_EVENT_IDX);
}

#[test]
fn vsock_rx_waits_for_guest_buffers() {
    for want in [u64::MAX, !crate::features::RING_EVENT_IDX] {
        // One receive buffer: the ring runs dry after every packet, and only the driver's
        // notification of the next buffer gets the data moving again.
        let mut g = Guest::start_full(want, 1);
        let (mut c, _) = host_conn(&mut g, 1234, 1 << 20);
        let sent: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        c.write_all(&sent).unwrap();
        let mut got = Vec::new();
        while got.len() < sent.len() {
            let (h, data) = g.expect_op(op::RW);
            assert!(h.len <= RX_PAYLOAD);
            got.extend_from_slice(&data);
        }
        assert_eq!(got, sent);
    }
}

#[test]
fn vsock_host_data_sent_before_ok_is_relayed() {
    let mut g = Guest::start();
    let mut c = client(&g);
    c.write_all(b"CONNECT 77\nearly bytes").unwrap();
    let (h, _) = g.expect_op(op::REQUEST);
    g.send(pkt(op::RESPONSE, 77, h.src_port), &[]);
    assert_eq!(read_line(&mut c), format!("OK {}", h.src_port));
    let (_, data) = g.expect_op(op::RW);
    assert_eq!(data, b"early bytes");
}

#[test]
fn vsock_guest_refusal_closes_client() {
    let mut g = Guest::start();
    let mut c = client(&g);
    c.write_all(b"CONNECT 99\n").unwrap();
    let (h, _) = g.expect_op(op::REQUEST);
    g.send(pkt(op::RST, 99, h.src_port), &[]);
    assert_eof(&mut c);
    // A bad CONNECT line closes the client without bothering the guest.
    let mut c = client(&g);
    c.write_all(b"HELLO 5\n").unwrap();
    assert_eof(&mut c);
    g.expect_quiet();
}

#[test]
fn vsock_guest_connects_to_host_listener() {
    let mut g = Guest::start();
    let listener = UnixListener::bind(port_path(&g.uds, 5000)).unwrap();
    g.send(pkt(op::REQUEST, 40000, 5000), &[]);
    let (h, _) = g.expect_op(op::RESPONSE);
    assert_eq!((h.src_port, h.dst_port), (5000, 40000));
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();

    g.send(pkt(op::RW, 40000, 5000), b"ping");
    assert_eq!(read_n(&mut s, 4), b"ping");
    s.write_all(b"pong").unwrap();
    let (h, data) = g.expect_op(op::RW);
    assert_eq!(data, b"pong");
    assert_eq!(h.fwd_cnt, 4, "the host took the guest's 4 bytes");

    // Host half-close: the guest is told the host sends no more, and can still send.
    s.shutdown(Shutdown::Write).unwrap();
    let (h, _) = g.expect_op(op::SHUTDOWN);
    assert_eq!(h.flags, SHUTDOWN_SEND);
    g.send(pkt(op::RW, 40000, 5000), b"more");
    assert_eq!(read_n(&mut s, 4), b"more");

    // Guest half-close: the host reads EOF; nothing flows either way any more, so the
    // device finishes with a full shutdown and the guest's reset ends the connection.
    let mut sh = pkt(op::SHUTDOWN, 40000, 5000);
    sh.flags = SHUTDOWN_SEND;
    g.send(sh, &[]);
    assert_eof(&mut s);
    let (h, _) = g.expect_op(op::SHUTDOWN);
    assert_eq!(h.flags, SHUTDOWN_BOTH);
    g.send(pkt(op::RST, 40000, 5000), &[]);
    g.expect_quiet();

    // The connection is gone: data on it is answered with a reset.
    g.send(pkt(op::RW, 40000, 5000), b"x");
    let (h, _) = g.expect_op(op::RST);
    assert_eq!((h.src_port, h.dst_port), (5000, 40000));
}

#[test]
fn vsock_guest_close_delivers_pending_data() {
    let mut g = Guest::start();
    let listener = UnixListener::bind(port_path(&g.uds, 5001)).unwrap();
    g.send(pkt(op::REQUEST, 40000, 5001), &[]);
    g.expect_op(op::RESPONSE);
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    g.send(pkt(op::RW, 40000, 5001), b"last words");
    let mut sh = pkt(op::SHUTDOWN, 40000, 5001);
    sh.flags = SHUTDOWN_BOTH;
    g.send(sh, &[]);
    g.expect_op(op::RST);
    assert_eq!(read_n(&mut s, 10), b"last words");
    assert_eof(&mut s);
}

#[test]
fn vsock_host_close_is_shutdown_to_guest() {
    let mut g = Guest::start();
    let (c, hp) = host_conn(&mut g, 80, 64 << 10);
    drop(c);
    let (h, _) = g.expect_op(op::SHUTDOWN);
    assert_eq!(h.flags & SHUTDOWN_SEND, SHUTDOWN_SEND);
    let flags = if h.flags == SHUTDOWN_BOTH {
        h.flags
    } else {
        let (h, _) = g.expect_op(op::SHUTDOWN);
        h.flags
    };
    assert_eq!(flags, SHUTDOWN_BOTH);
    g.send(pkt(op::RST, 80, hp), &[]);
    g.expect_quiet();
}

#[test]
fn vsock_guest_connect_without_listener_gets_rst() {
    let mut g = Guest::start();
    g.send(pkt(op::REQUEST, 40001, 6000), &[]);
    let (h, _) = g.expect_op(op::RST);
    assert_eq!((h.src_port, h.dst_port), (6000, 40001));
    assert!(!g.failed());
}

#[test]
fn vsock_rst_for_unknown_and_malformed_packets() {
    let mut g = Guest::start();
    // Data on a connection that does not exist.
    g.send(pkt(op::RW, 1, 2), b"data");
    let (h, _) = g.expect_op(op::RST);
    assert_eq!((h.src_port, h.dst_port), (2, 1));
    // A reset for a connection that does not exist gets no answer.
    g.send(pkt(op::RST, 1, 2), &[]);
    // Wrong destination CID, wrong source CID: dropped.
    let mut p = pkt(op::REQUEST, 3, 4);
    p.dst_cid = 7;
    g.send(p, &[]);
    let mut p = pkt(op::REQUEST, 3, 4);
    p.src_cid = 9;
    g.send(p, &[]);
    // Shorter than a header: dropped.
    g.send_raw(&[0u8; 20], 20);
    // The first answer is to the probe, so all of the above were dropped.
    g.send(pkt(op::CREDIT_REQUEST, 11, 12), &[]);
    let (h, _) = g.expect_op(op::RST);
    assert_eq!((h.src_port, h.dst_port), (12, 11));
    // A socket type other than stream: reset.
    let mut p = pkt(op::REQUEST, 5, 6);
    p.type_ = 2;
    g.send(p, &[]);
    let (h, _) = g.expect_op(op::RST);
    assert_eq!((h.src_port, h.dst_port), (6, 5));
    // A payload length the packet does not carry: reset.
    let mut p = pkt(op::RW, 7, 8);
    p.len = 100;
    let mut bytes = p.to_bytes().to_vec();
    bytes.extend_from_slice(&[1u8; 10]);
    g.send_raw(&bytes, HDR_LEN);
    let (h, _) = g.expect_op(op::RST);
    assert_eq!((h.src_port, h.dst_port), (8, 7));
    g.expect_quiet();
    assert!(!g.failed());
}

#[test]
fn vsock_credit_limits_host_to_guest() {
    let mut g = Guest::start();
    let (mut c, hp) = host_conn(&mut g, 1234, 100);
    let sent: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
    c.write_all(&sent).unwrap();

    let mut got = Vec::new();
    let mut take = |g: &mut Guest, upto: usize| {
        while got.len() < upto {
            let (h, data) = g.expect_op(op::RW);
            assert_eq!(h.dst_port, 1234);
            got.extend_from_slice(&data);
            assert!(
                got.len() <= upto,
                "{} bytes beyond the guest's credit",
                got.len()
            );
        }
    };
    take(&mut g, 100);
    // Out of credit: the device asks for more once, and sends no data.
    g.expect_op(op::CREDIT_REQUEST);
    g.expect_quiet();

    // The guest consumed 100 bytes of its 100-byte buffer: 100 more.
    let mut u = pkt(op::CREDIT_UPDATE, 1234, hp);
    u.buf_alloc = 100;
    u.fwd_cnt = 100;
    g.send(u, &[]);
    take(&mut g, 200);
    g.expect_op(op::CREDIT_REQUEST);
    g.expect_quiet();

    // A bigger buffer: the rest, in packets no larger than the receive buffers.
    u.buf_alloc = 1 << 20;
    u.fwd_cnt = 200;
    g.send(u, &[]);
    take(&mut g, 1000);
    assert_eq!(got, sent);
    g.expect_quiet();
}

#[test]
fn vsock_credit_limits_guest_to_host() {
    let mut g = Guest::start();
    let listener = UnixListener::bind(port_path(&g.uds, 7000)).unwrap();
    g.send(pkt(op::REQUEST, 41000, 7000), &[]);
    let (h, _) = g.expect_op(op::RESPONSE);
    assert_eq!(h.buf_alloc, BUF_ALLOC);
    // The host accepts but never reads: the guest sends all the credit the device grants
    // (its buffer plus whatever the host socket absorbs, announced in credit updates).
    let (_s, _) = listener.accept().unwrap();
    let mut sent: u32 = 0;
    let mut fwd_cnt = h.fwd_cnt;
    let chunk = vec![0x5au8; 64 << 10];
    loop {
        let credit = BUF_ALLOC - (sent - fwd_cnt);
        if credit > 0 {
            let n = credit.min(chunk.len() as u32);
            g.send(pkt(op::RW, 41000, 7000), &chunk[..n as usize]);
            sent += n;
        }
        match g.recv(if credit > 0 {
            Duration::from_millis(20)
        } else {
            QUIET
        }) {
            Some((h, _)) => {
                assert_eq!(h.op, op::CREDIT_UPDATE, "unexpected {h:?}");
                assert!(h.fwd_cnt.wrapping_sub(fwd_cnt) < 1 << 30);
                fwd_cnt = h.fwd_cnt;
            }
            None if credit == 0 => break,
            None => {}
        }
        assert!(sent < 64 << 20, "the host socket never filled");
    }
    assert!(sent >= BUF_ALLOC, "sent {sent}");
    assert!(!g.failed());
    // One byte beyond the credit: the connection is reset.
    g.send(pkt(op::RW, 41000, 7000), b"!");
    let (h, _) = g.expect_op(op::RST);
    assert_eq!((h.src_port, h.dst_port), (7000, 41000));
}

#[test]
fn vsock_credit_update_as_host_consumes() {
    let mut g = Guest::start();
    let listener = UnixListener::bind(port_path(&g.uds, 7001)).unwrap();
    g.send(pkt(op::REQUEST, 41001, 7001), &[]);
    g.expect_op(op::RESPONSE);
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let reader = std::thread::spawn(move || {
        let mut total = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        while total < 100 << 10 {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("{e}"),
            }
        }
        total
    });
    for _ in 0..25 {
        g.send(pkt(op::RW, 41001, 7001), &[0u8; 4096]);
    }
    assert_eq!(reader.join().unwrap(), 100 << 10);
    let (h, _) = g.expect_op(op::CREDIT_UPDATE);
    assert!(h.fwd_cnt >= BUF_ALLOC / 4, "fwd_cnt {}", h.fwd_cnt);
}

#[test]
fn vsock_reset_stops_and_reactivates() {
    let mut g = Guest::start();
    let listener = UnixListener::bind(port_path(&g.uds, 5000)).unwrap();
    g.send(pkt(op::REQUEST, 40000, 5000), &[]);
    g.expect_op(op::RESPONSE);
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    // The driver resets the device: the worker stops and the host connection closes.
    g.d.reset();
    assert_eq!(g.d.status(), 0);
    assert_eof(&mut s);
    // A host client waits in the listener's backlog until the driver is back.
    let mut c = client(&g);
    c.write_all(b"CONNECT 1234\n").unwrap();
    g.activate(u64::MAX);
    let (h, _) = g.expect_op(op::REQUEST);
    assert_eq!(h.dst_port, 1234);
    g.send(pkt(op::RESPONSE, 1234, h.src_port), &[]);
    assert_eq!(read_line(&mut c), format!("OK {}", h.src_port));
}

#[test]
fn vsock_bad_rx_buffer_fails_device() {
    // A device whose only receive buffer is too small for a packet header.
    let dir = TmpDir::new();
    let path = dir.0.join("w.sock");
    let dev = Vsock::new(CID, path.clone()).unwrap();
    let mut d = Driver::new(Box::new(dev));
    d.setup(u64::MAX);
    let buf = d.alloc(16);
    d.add(RX, &[(buf, 16, true)]);
    d.notify(RX);
    let mut c = UnixStream::connect(&path).unwrap();
    c.write_all(b"CONNECT 1\n").unwrap();
    let end = std::time::Instant::now() + WAIT;
    while d.status() & status::DEVICE_NEEDS_RESET == 0 {
        assert!(std::time::Instant::now() < end, "device did not fail");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(d.take_interrupt() & crate::INT_CONFIG != 0);
    // The worker stopped: the client is closed.
    c.set_read_timeout(Some(WAIT)).unwrap();
    assert_eof(&mut c);
    // Resetting clears the failure.
    d.reset();
    assert_eq!(d.status(), 0);
}

#[test]
fn vsock_bogus_avail_index_fails_device() {
    let mut g = Guest::start();
    // More available entries than the ring holds: the device fails instead of spinning.
    let size = g.d.queues[TX].size;
    g.d.set_avail_idx(TX, size + 10);
    g.d.notify(TX);
    let end = std::time::Instant::now() + WAIT;
    while !g.failed() {
        assert!(std::time::Instant::now() < end, "device did not fail");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn vsock_new_checks_the_socket_path() {
    let dir = TmpDir::new();
    let path = dir.0.join("v.sock");
    // A stale socket (its listener is gone) is replaced.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let v = Vsock::new(CID, path.clone()).unwrap();
    assert_eq!(v.guest_cid(), CID);
    // A live one is refused with a message naming it.
    let e = Vsock::new(4, path.clone()).err().expect("in use");
    assert!(matches!(e, VsockError::InUse { .. }));
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    drop(v);
    assert!(!path.exists(), "socket file removed on drop");
    // Not a socket.
    std::fs::write(&path, b"x").unwrap();
    let e = Vsock::new(CID, path.clone()).err().expect("not a socket");
    assert!(matches!(e, VsockError::NotASocket { .. }), "{e}");
    // Reserved CIDs.
    for cid in [0, 1, 2, 0xffff_ffff, 1 << 32] {
        assert!(matches!(
            Vsock::new(cid, dir.0.join("c.sock")),
            Err(VsockError::InvalidCid(c)) if c == cid
        ));
    }
    // A directory that does not exist.
    let e = Vsock::new(CID, dir.0.join("no/such/dir.sock"))
        .err()
        .expect("bind error");
    assert!(matches!(e, VsockError::Bind { .. }), "{e}");
}
