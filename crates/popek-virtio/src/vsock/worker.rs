//! The vsock worker thread: the connection table, the queues, and the host sockets.
//!
//! Every host socket is non-blocking and the thread only ever waits in `poll(2)`, on the
//! queue-notification eventfd, the listener, host clients that have yet to send their
//! `CONNECT` line, and the connections that can make progress: a connection is polled for
//! input only while the guest has credit for more data and no input is already known to be
//! waiting, so an idle guest (no credit, no receive buffers) costs no reads and no memory
//! beyond what it granted. Packets for the guest are produced only when a receive buffer is
//! at hand, in the order they are due: pending resets first, then each connection's
//! control packets and data, round robin.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::packet::{
    op, Header, HDR_LEN, HOST_CID, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use crate::chain::{self, Chain};
use crate::{next_chain, DeviceError, GuestMem, GuestWriteHook, Signals};

/// Receive buffer popek advertises for each connection: guest data it holds for the host.
pub(super) const BUF_ALLOC: u32 = 256 << 10;
/// Largest payload popek puts in one packet, and accepts in one (Linux's
/// `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub(super) const MAX_PKT_LEN: u32 = 64 << 10;
/// Most open connections (each may hold [`BUF_ALLOC`] bytes for the host).
const MAX_CONNS: usize = 256;
/// Most host clients waiting to send their `CONNECT` line (the oldest is dropped beyond).
const MAX_CLIENTS: usize = 64;
/// Most closed connections whose last guest data is still being written to the host.
const MAX_DRAINING: usize = 64;
/// Resets for stray guest packets waiting for a receive buffer; beyond this, the transmit
/// queue is not served until the guest takes some.
const MAX_STRAY_RST: usize = 256;
/// Longest `CONNECT <port>` line.
const MAX_CONNECT_LINE: usize = 32;
/// How long the guest has to answer a host-initiated connection.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection that is shut down both ways waits for the guest's reset, and how
/// long a closed connection's data may take to reach the host.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// First host-side port of host-initiated connections (Firecracker's choice).
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// A connection: (host-side port, guest-side port).
type Key = (u32, u32);

/// Control packets a connection owes the guest.
const P_REQUEST: u8 = 1;
const P_RESPONSE: u8 = 2;
const P_SHUTDOWN: u8 = 4;
const P_CREDIT_UPDATE: u8 = 8;
const P_CREDIT_REQUEST: u8 = 16;

/// One stream between a guest socket and a host unix socket.
struct Conn {
    stream: UnixStream,
    /// The guest accepted (host-initiated) or popek did (guest-initiated).
    established: bool,
    /// The guest's receive buffer size and how much of what we sent it has consumed.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes sent to the guest.
    tx_cnt: u32,
    /// A `CREDIT_REQUEST` went out since the guest last granted credit.
    credit_requested: bool,
    /// Bytes received from the guest, and how many of them reached the host.
    rx_cnt: u32,
    fwd_cnt: u32,
    /// `fwd_cnt` as last told to the guest.
    sent_fwd_cnt: u32,
    /// Guest data the host has yet to take.
    to_host: VecDeque<u8>,
    /// Shutdown flags the guest sent, and those we sent.
    peer_shut: u32,
    local_shut: u32,
    /// The host side will send no more (read gave end of file).
    host_eof: bool,
    /// The host side hung up completely.
    hup: bool,
    /// Our write side is shut down (after the guest's `SHUTDOWN_SEND`).
    write_shut: bool,
    /// The socket may have input (poll said so; cleared when a read would block).
    readable: bool,
    /// Control packets owed (`P_*`).
    pending: u8,
    /// In the worker's `rx_ready` list.
    scheduled: bool,
    /// When to give up on the guest (connect or close handshake).
    deadline: Option<Instant>,
}

/// A connection that failed: it is removed and the guest gets a reset.
struct Kill;

impl Conn {
    fn new(stream: UnixStream, established: bool) -> Conn {
        Conn {
            stream,
            established,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            credit_requested: false,
            rx_cnt: 0,
            fwd_cnt: 0,
            sent_fwd_cnt: 0,
            to_host: VecDeque::new(),
            peer_shut: 0,
            local_shut: 0,
            host_eof: false,
            hup: false,
            write_shut: false,
            readable: false,
            pending: 0,
            scheduled: false,
            deadline: None,
        }
    }

    /// Bytes the guest can still take: `buf_alloc - (tx_cnt - fwd_cnt)`.
    fn credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    fn may_send_data(&self) -> bool {
        self.established
            && self.local_shut & SHUTDOWN_SEND == 0
            && self.peer_shut & SHUTDOWN_RCV == 0
    }

    /// Whether the connection has something for the guest's receive queue.
    fn wants_rx(&self) -> bool {
        self.pending != 0 || (self.readable && self.may_send_data() && self.credit() > 0)
    }

    /// What to poll the socket for (0: leave it out).
    fn poll_events(&self) -> i16 {
        if self.hup {
            return 0;
        }
        let mut ev = 0;
        if !self.readable && self.may_send_data() && self.credit() > 0 {
            ev |= libc::POLLIN;
        }
        if !self.to_host.is_empty() {
            ev |= libc::POLLOUT;
        }
        ev
    }

    /// A header from the host side of `key`; it carries our credit, so the guest is now up
    /// to date on it.
    fn header(&mut self, key: Key, guest_cid: u64, op: u16, len: u32, flags: u32) -> Header {
        self.sent_fwd_cnt = self.fwd_cnt;
        self.pending &= !P_CREDIT_UPDATE;
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: key.0,
            dst_port: key.1,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// The next packet for the guest (header and payload), with at most `cap` payload bytes.
    fn next_packet(&mut self, key: Key, cid: u64, cap: usize) -> Result<Option<Vec<u8>>, Kill> {
        let control = |c: &mut Conn, flag: u8, op: u16, flags: u32| {
            c.pending &= !flag;
            c.header(key, cid, op, 0, flags).to_bytes().to_vec()
        };
        if self.pending & P_REQUEST != 0 {
            return Ok(Some(control(self, P_REQUEST, op::REQUEST, 0)));
        }
        if self.pending & P_RESPONSE != 0 {
            return Ok(Some(control(self, P_RESPONSE, op::RESPONSE, 0)));
        }
        if self.readable && self.may_send_data() {
            let want = (self.credit() as usize).min(cap).min(MAX_PKT_LEN as usize);
            if want > 0 {
                let mut buf = vec![0u8; HDR_LEN + want];
                match (&self.stream).read(&mut buf[HDR_LEN..]) {
                    Ok(0) => {
                        self.readable = false;
                        self.host_eof = true;
                        self.refresh(Instant::now());
                    }
                    Ok(n) => {
                        buf.truncate(HDR_LEN + n);
                        self.tx_cnt = self.tx_cnt.wrapping_add(n as u32);
                        let h = self.header(key, cid, op::RW, n as u32, 0);
                        buf[..HDR_LEN].copy_from_slice(&h.to_bytes());
                        return Ok(Some(buf));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => self.readable = false,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::debug!("virtio-vsock: {key:?}: host read: {e}");
                        return Err(Kill);
                    }
                }
            }
        }
        if self.pending & P_SHUTDOWN != 0 {
            let flags = self.local_shut;
            return Ok(Some(control(self, P_SHUTDOWN, op::SHUTDOWN, flags)));
        }
        if self.pending & P_CREDIT_UPDATE != 0 {
            return Ok(Some(control(self, P_CREDIT_UPDATE, op::CREDIT_UPDATE, 0)));
        }
        if self.pending & P_CREDIT_REQUEST != 0 {
            return Ok(Some(control(self, P_CREDIT_REQUEST, op::CREDIT_REQUEST, 0)));
        }
        Ok(None)
    }

    /// Write what the host can take of the guest's data.
    fn flush(&mut self) -> std::io::Result<()> {
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match send_nosignal(self.stream.as_raw_fd(), front) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Work out the consequences of a change: half-closes, shutdowns owed to the guest,
    /// credit updates and requests.
    fn refresh(&mut self, now: Instant) {
        if !self.established {
            return;
        }
        if self.peer_shut & SHUTDOWN_SEND != 0 && self.to_host.is_empty() && !self.write_shut {
            let _ = self.stream.shutdown(Shutdown::Write);
            self.write_shut = true;
        }
        let mut shut = self.local_shut;
        if self.host_eof {
            shut |= SHUTDOWN_SEND;
        }
        if self.hup && (self.host_eof || self.peer_shut & SHUTDOWN_RCV != 0) {
            shut = SHUTDOWN_BOTH;
        }
        if shut & SHUTDOWN_SEND != 0
            && self.peer_shut & SHUTDOWN_SEND != 0
            && self.to_host.is_empty()
        {
            // Neither side will send any more: finish, and expect the guest's reset.
            shut = SHUTDOWN_BOTH;
        }
        if shut != self.local_shut {
            self.local_shut = shut;
            self.pending |= P_SHUTDOWN;
        }
        if self.local_shut == SHUTDOWN_BOTH && self.deadline.is_none() {
            self.deadline = Some(now + CLOSE_TIMEOUT);
        }
        if self.readable && self.may_send_data() && self.credit() == 0 && !self.credit_requested {
            self.pending |= P_CREDIT_REQUEST;
            self.credit_requested = true;
        }
        if self.fwd_cnt != self.sent_fwd_cnt {
            let unannounced = self.fwd_cnt.wrapping_sub(self.sent_fwd_cnt);
            let guest_view_free =
                BUF_ALLOC.saturating_sub(self.rx_cnt.wrapping_sub(self.sent_fwd_cnt));
            if unannounced >= BUF_ALLOC / 4 || guest_view_free < MAX_PKT_LEN {
                self.pending |= P_CREDIT_UPDATE;
            }
        }
    }
}

/// A host client that has yet to say which guest port it wants.
struct Client {
    stream: UnixStream,
    line: Vec<u8>,
}

/// What the client's `CONNECT` line says so far.
enum ClientLine {
    More,
    Port(u32),
    Bad,
}

impl Client {
    fn read_line(&mut self) -> ClientLine {
        loop {
            let mut b = [0u8; 1];
            match (&self.stream).read(&mut b) {
                Ok(0) => return ClientLine::Bad,
                Ok(_) if b[0] == b'\n' => return parse_connect(&self.line),
                Ok(_) => {
                    self.line.push(b[0]);
                    if self.line.len() > MAX_CONNECT_LINE {
                        return ClientLine::Bad;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return ClientLine::More,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return ClientLine::Bad,
            }
        }
    }
}

/// Parse `CONNECT <port>` (a trailing `\r` is allowed).
fn parse_connect(line: &[u8]) -> ClientLine {
    let Ok(text) = std::str::from_utf8(line) else {
        return ClientLine::Bad;
    };
    let mut words = text.trim_end_matches('\r').split(' ');
    match (
        words.next(),
        words.next().map(str::parse::<u32>),
        words.next(),
    ) {
        (Some("CONNECT"), Some(Ok(port)), None) => ClientLine::Port(port),
        _ => ClientLine::Bad,
    }
}

/// A connection the guest closed with guest data still on its way to the host.
struct Draining {
    stream: UnixStream,
    data: VecDeque<u8>,
    deadline: Instant,
}

impl Draining {
    /// Write what the host takes; true when done (all written, or the host went away).
    fn flush(&mut self) -> bool {
        while !self.data.is_empty() {
            let (front, _) = self.data.as_slices();
            match send_nosignal(self.stream.as_raw_fd(), front) {
                Ok(0) => return true,
                Ok(n) => {
                    self.data.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
        true
    }
}

/// What the worker is given at activation.
pub(super) struct Setup {
    pub mem: GuestMem,
    pub rxq: Queue,
    pub txq: Queue,
    pub signals: Arc<Signals>,
    pub wrote: GuestWriteHook,
    pub kick: Arc<EventFd>,
    pub stop: Arc<AtomicBool>,
    pub listener: Arc<UnixListener>,
    pub uds_path: PathBuf,
    pub guest_cid: u64,
}

/// The worker's state.
pub(super) struct Worker {
    s: Setup,
    conns: HashMap<Key, Conn>,
    /// Connections that may have something for the guest, in turn.
    rx_ready: VecDeque<Key>,
    /// Resets owed to the guest for packets on connections that do not exist (or no more).
    stray_rst: VecDeque<Header>,
    clients: VecDeque<Client>,
    draining: Vec<Draining>,
    next_port: u32,
}

/// What a `pollfd` stands for.
#[derive(Clone, Copy)]
enum Source {
    Kick,
    Listener,
    Client(usize),
    Conn(Key),
    Drain(usize),
}

impl Worker {
    pub(super) fn new(s: Setup) -> Worker {
        Worker {
            s,
            conns: HashMap::new(),
            rx_ready: VecDeque::new(),
            stray_rst: VecDeque::new(),
            clients: VecDeque::new(),
            draining: Vec::new(),
            next_port: FIRST_LOCAL_PORT,
        }
    }

    /// Serve until told to stop, or until the guest breaks the protocol (the device then
    /// needs a reset). Returning drops every connection, which closes the host sockets.
    pub(super) fn run(mut self) {
        while !self.s.stop.load(Ordering::Acquire) {
            if let Err(e) = self.work() {
                self.s.signals.fail(&format!("virtio-vsock: {e}"));
                return;
            }
            self.wait();
        }
    }

    /// Serve the queues as far as they go.
    fn work(&mut self) -> Result<(), DeviceError> {
        self.expire(Instant::now());
        loop {
            let blocked = self.process_tx()?;
            self.fill_rx()?;
            if !blocked || self.stray_rst.len() >= MAX_STRAY_RST {
                return Ok(());
            }
        }
    }

    /// Give up on connections whose deadline passed.
    fn expire(&mut self, now: Instant) {
        let late: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for k in late {
            tracing::debug!("virtio-vsock: {k:?}: the guest did not answer in time");
            self.kill(k);
        }
        self.draining.retain(|d| d.deadline > now);
    }

    /// Sleep in poll until a notification, a host socket or a deadline needs attention.
    fn wait(&mut self) {
        let mut fds = Vec::new();
        let mut sources = Vec::new();
        let mut add = |fd: RawFd, events: i16, src: Source| {
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
            sources.push(src);
        };
        add(self.s.kick.as_raw_fd(), libc::POLLIN, Source::Kick);
        add(self.s.listener.as_raw_fd(), libc::POLLIN, Source::Listener);
        for (i, c) in self.clients.iter().enumerate() {
            add(c.stream.as_raw_fd(), libc::POLLIN, Source::Client(i));
        }
        for (k, c) in &self.conns {
            let ev = c.poll_events();
            if ev != 0 {
                add(c.stream.as_raw_fd(), ev, Source::Conn(*k));
            }
        }
        for (i, d) in self.draining.iter().enumerate() {
            add(d.stream.as_raw_fd(), libc::POLLOUT, Source::Drain(i));
        }
        let deadline = self
            .conns
            .values()
            .filter_map(|c| c.deadline)
            .chain(self.draining.iter().map(|d| d.deadline))
            .min();
        let timeout = deadline.map_or(-1, |d| {
            let ms = d.saturating_duration_since(Instant::now()).as_millis() + 1;
            ms.min(i32::MAX as u128) as i32
        });
        // SAFETY: `fds` is a live array of `fds.len()` pollfd structures that poll fills in.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != ErrorKind::Interrupted {
                popek_devices::guest_warn!("virtio-vsock: poll: {err}");
                std::thread::sleep(Duration::from_millis(10));
            }
            return;
        }
        let mut done_clients = Vec::new();
        let mut done_drains = Vec::new();
        let mut listener_ready = false;
        for (fd, src) in fds.iter().zip(sources) {
            if fd.revents == 0 {
                continue;
            }
            match src {
                Source::Kick => {
                    let _ = self.s.kick.read();
                }
                Source::Listener => listener_ready = true,
                Source::Client(i) => {
                    let Some(c) = self.clients.get_mut(i) else {
                        continue;
                    };
                    match c.read_line() {
                        ClientLine::More => {}
                        ClientLine::Bad => done_clients.push((i, None)),
                        ClientLine::Port(p) => done_clients.push((i, Some(p))),
                    }
                }
                Source::Conn(k) => self.conn_event(k, fd.revents),
                Source::Drain(i) => {
                    if self.draining.get_mut(i).is_some_and(Draining::flush) {
                        done_drains.push(i);
                    }
                }
            }
        }
        // Remove from the back so the indices stay valid.
        for (i, port) in done_clients.into_iter().rev() {
            let Some(client) = self.clients.remove(i) else {
                continue;
            };
            match port {
                Some(port) => self.host_connect(client.stream, port),
                None => tracing::debug!(
                    "virtio-vsock: host client closed or sent no valid CONNECT <port> line"
                ),
            }
        }
        for i in done_drains.into_iter().rev() {
            self.draining.swap_remove(i);
        }
        // Last: accepting may drop the oldest client, which would shift the indices above.
        if listener_ready {
            self.accept();
        }
    }

    /// Take new host clients from the listener.
    fn accept(&mut self) {
        for _ in 0..MAX_CLIENTS {
            match self.s.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    if self.clients.len() >= MAX_CLIENTS {
                        popek_devices::guest_warn!(
                            "virtio-vsock: too many host clients without a CONNECT line; dropping the oldest"
                        );
                        self.clients.pop_front();
                    }
                    self.clients.push_back(Client {
                        stream,
                        line: Vec::new(),
                    });
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != ErrorKind::WouldBlock {
                        // Out of descriptors, most likely: the listener stays readable, so
                        // pause rather than spin.
                        popek_devices::guest_warn!("virtio-vsock: accept: {e}");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    return;
                }
            }
        }
    }

    /// A host client asked for the guest's `port`: send the guest a connection request.
    fn host_connect(&mut self, stream: UnixStream, port: u32) {
        if self.conns.len() >= MAX_CONNS {
            popek_devices::guest_warn!(
                "virtio-vsock: {MAX_CONNS} connections open; refusing a host client"
            );
            return;
        }
        let local = loop {
            let p = self.next_port;
            self.next_port = p.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(p, port)) {
                break p;
            }
        };
        let mut c = Conn::new(stream, false);
        c.pending = P_REQUEST;
        c.deadline = Some(Instant::now() + CONNECT_TIMEOUT);
        self.conns.insert((local, port), c);
        self.touch((local, port));
    }

    /// The host socket of `k` is ready (`revents` from poll).
    fn conn_event(&mut self, k: Key, revents: i16) {
        let Some(c) = self.conns.get_mut(&k) else {
            return;
        };
        if revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
            self.kill(k);
            return;
        }
        if revents & libc::POLLHUP != 0 {
            c.hup = true;
            c.readable = true;
        }
        if revents & libc::POLLIN != 0 {
            c.readable = true;
        }
        if revents & (libc::POLLOUT | libc::POLLHUP) != 0 {
            if let Err(e) = c.flush() {
                tracing::debug!("virtio-vsock: {k:?}: host write: {e}");
                self.kill(k);
                return;
            }
        }
        self.touch(k);
    }

    /// Update `k`'s state and put it in line for the receive queue if it has something.
    fn touch(&mut self, k: Key) {
        let Some(c) = self.conns.get_mut(&k) else {
            return;
        };
        c.refresh(Instant::now());
        if !c.scheduled && c.wants_rx() {
            c.scheduled = true;
            self.rx_ready.push_back(k);
        }
    }

    /// A reset from the host side of `k`.
    fn rst(&self, k: Key) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.s.guest_cid,
            src_port: k.0,
            dst_port: k.1,
            type_: TYPE_STREAM,
            op: op::RST,
            buf_alloc: BUF_ALLOC,
            ..Header::default()
        }
    }

    /// Drop `k` (closing its host socket) and reset the guest's end, if it knows of it.
    fn kill(&mut self, k: Key) {
        if let Some(c) = self.conns.remove(&k) {
            if c.established || c.pending & P_REQUEST == 0 {
                self.stray_rst.push_back(self.rst(k));
            }
        }
    }

    /// Answer a guest packet with a reset.
    fn reply_rst(&mut self, h: &Header) {
        self.stray_rst.push_back(self.rst((h.dst_port, h.src_port)));
    }

    /// Serve the transmit queue; true if it stopped because too many resets are owed.
    fn process_tx(&mut self) -> Result<bool, DeviceError> {
        let mut used_any = false;
        let mut blocked = false;
        loop {
            self.s.txq.disable_notification(&self.s.mem)?;
            loop {
                if self.stray_rst.len() >= MAX_STRAY_RST {
                    blocked = true;
                    break;
                }
                let Some(dc) = next_chain(&mut self.s.txq, &self.s.mem)? else {
                    break;
                };
                let head = dc.head_index();
                let chain =
                    Chain::parse(dc, &self.s.mem).map_err(|source| DeviceError::QueueChain {
                        queue: "tx",
                        source,
                    })?;
                self.tx_packet(chain);
                self.s.txq.add_used(&self.s.mem, head, 0)?;
                used_any = true;
            }
            if blocked || !self.s.txq.enable_notification(&self.s.mem)? {
                break;
            }
        }
        if used_any && self.s.txq.needs_notification(&self.s.mem)? {
            self.s.signals.used_buffer();
        }
        Ok(blocked)
    }

    /// One packet from the guest.
    fn tx_packet(&mut self, chain: Chain) {
        let mut readable = chain.readable;
        let Some(hseg) = chain::split_front(&mut readable, HDR_LEN as u64) else {
            tracing::debug!("virtio-vsock: packet shorter than its header dropped");
            return;
        };
        let Ok(bytes) = <[u8; HDR_LEN]>::try_from(chain::gather(&self.s.mem, &hseg)) else {
            return;
        };
        let h = Header::parse(&bytes);
        if h.src_cid != self.s.guest_cid || h.dst_cid != HOST_CID {
            tracing::debug!(
                "virtio-vsock: packet from CID {} to CID {} dropped (the guest is CID {}, the host {HOST_CID})",
                h.src_cid,
                h.dst_cid,
                self.s.guest_cid
            );
            return;
        }
        if h.op == op::RST && h.type_ != TYPE_STREAM {
            return;
        }
        if h.type_ != TYPE_STREAM {
            tracing::debug!("virtio-vsock: packet of socket type {} refused", h.type_);
            self.reply_rst(&h);
            return;
        }
        let payload_len = if h.op == op::RW { h.len } else { 0 };
        let payload = match chain::split_front(&mut readable, payload_len as u64) {
            Some(p) if payload_len <= MAX_PKT_LEN => p,
            _ => {
                tracing::debug!(
                    "virtio-vsock: packet claims {} payload bytes but carries {}; reset",
                    h.len,
                    chain::total_len(&readable)
                );
                let k = (h.dst_port, h.src_port);
                if self.conns.contains_key(&k) {
                    self.kill(k);
                } else if h.op != op::RST {
                    self.reply_rst(&h);
                }
                return;
            }
        };
        self.stream_packet(&h, &payload);
    }

    /// A well-formed stream packet from the guest.
    fn stream_packet(&mut self, h: &Header, payload: &[chain::Segment]) {
        let k = (h.dst_port, h.src_port);
        if h.op == op::REQUEST {
            self.guest_connect(k, h);
            return;
        }
        let Some(c) = self.conns.get_mut(&k) else {
            if h.op != op::RST {
                self.reply_rst(h);
            }
            return;
        };
        // Every packet tells how much room the guest has.
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = h.fwd_cnt;
        if c.credit() > 0 {
            c.credit_requested = false;
        }
        match h.op {
            op::RST => {
                self.conns.remove(&k);
                return;
            }
            op::RESPONSE => {
                if c.established || c.pending & P_REQUEST != 0 {
                    self.kill(k);
                    return;
                }
                c.established = true;
                c.deadline = None;
                let line = format!("OK {}\n", k.0);
                if !matches!(send_nosignal(c.stream.as_raw_fd(), line.as_bytes()), Ok(n) if n == line.len())
                {
                    tracing::debug!("virtio-vsock: {k:?}: host client went away");
                    self.kill(k);
                    return;
                }
            }
            op::SHUTDOWN => {
                if !c.established {
                    self.kill(k);
                    return;
                }
                let flags = h.flags & SHUTDOWN_BOTH;
                c.peer_shut |= flags;
                if flags & SHUTDOWN_RCV != 0 {
                    let _ = c.stream.shutdown(Shutdown::Read);
                    c.readable = false;
                }
                if c.peer_shut == SHUTDOWN_BOTH {
                    self.close_by_guest(k);
                    return;
                }
            }
            op::RW => {
                if !c.established
                    || c.peer_shut & SHUTDOWN_SEND != 0
                    || c.local_shut & SHUTDOWN_RCV != 0
                {
                    self.kill(k);
                    return;
                }
                if c.to_host.len() + h.len as usize > BUF_ALLOC as usize {
                    popek_devices::guest_warn!(
                        "virtio-vsock: {k:?}: the guest sent more than its credit; reset"
                    );
                    self.kill(k);
                    return;
                }
                c.to_host.extend(chain::gather(&self.s.mem, payload));
                c.rx_cnt = c.rx_cnt.wrapping_add(h.len);
                if let Err(e) = c.flush() {
                    tracing::debug!("virtio-vsock: {k:?}: host write: {e}");
                    self.kill(k);
                    return;
                }
            }
            op::CREDIT_UPDATE => {}
            op::CREDIT_REQUEST => c.pending |= P_CREDIT_UPDATE,
            other => {
                tracing::debug!("virtio-vsock: {k:?}: unknown operation {other}; reset");
                self.kill(k);
                return;
            }
        }
        self.touch(k);
    }

    /// The guest shut its end down both ways: answer with the reset that ends the
    /// connection, and let the host have the guest's last data.
    fn close_by_guest(&mut self, k: Key) {
        let Some(mut c) = self.conns.remove(&k) else {
            return;
        };
        self.stray_rst.push_back(self.rst(k));
        let _ = c.flush();
        if !c.to_host.is_empty() && self.draining.len() < MAX_DRAINING {
            let _ = c.stream.shutdown(Shutdown::Read);
            self.draining.push(Draining {
                stream: c.stream,
                data: c.to_host,
                deadline: Instant::now() + CLOSE_TIMEOUT,
            });
        }
    }

    /// The guest connects to host port `k.0`: connect to the unix socket `<path>_<port>`.
    fn guest_connect(&mut self, k: Key, h: &Header) {
        if self.conns.contains_key(&k) {
            tracing::debug!("virtio-vsock: {k:?}: connection request on an open connection");
            self.kill(k);
            return;
        }
        if self.conns.len() >= MAX_CONNS {
            popek_devices::guest_warn!(
                "virtio-vsock: {MAX_CONNS} connections open; refusing the guest's"
            );
            self.reply_rst(h);
            return;
        }
        let path = port_path(&self.s.uds_path, k.0);
        match connect_nonblocking(&path) {
            Ok(stream) => {
                let mut c = Conn::new(stream, true);
                c.peer_buf_alloc = h.buf_alloc;
                c.peer_fwd_cnt = h.fwd_cnt;
                c.pending = P_RESPONSE;
                self.conns.insert(k, c);
                self.touch(k);
            }
            Err(e) => {
                tracing::debug!(
                    "virtio-vsock: guest connection to port {} refused: {}: {e}",
                    k.0,
                    path.display()
                );
                self.reply_rst(h);
            }
        }
    }

    /// Whether anything is waiting for a receive buffer.
    fn has_rx_work(&self) -> bool {
        !self.stray_rst.is_empty() || !self.rx_ready.is_empty()
    }

    /// The next packet for the guest, with at most `cap` payload bytes.
    fn next_packet(&mut self, cap: usize) -> Option<Vec<u8>> {
        let mut budget = self.rx_ready.len();
        loop {
            if let Some(h) = self.stray_rst.pop_front() {
                return Some(h.to_bytes().to_vec());
            }
            if budget == 0 {
                return None;
            }
            budget -= 1;
            let k = self.rx_ready.pop_front()?;
            let Some(c) = self.conns.get_mut(&k) else {
                continue;
            };
            c.scheduled = false;
            match c.next_packet(k, self.s.guest_cid, cap) {
                Err(Kill) => self.kill(k),
                Ok(p) => {
                    self.touch(k);
                    if p.is_some() {
                        return p;
                    }
                }
            }
        }
    }

    /// Put packets in the guest's receive buffers while there are both.
    fn fill_rx(&mut self) -> Result<(), DeviceError> {
        let mut used_any = false;
        // Whether notifications were re-enabled since the last chain: with EVENT_IDX, they
        // must be each time the ring runs dry, or the driver's next buffer goes unnoticed.
        let mut rechecked = false;
        while self.has_rx_work() {
            let Some(dc) = next_chain(&mut self.s.rxq, &self.s.mem)? else {
                if rechecked || !self.s.rxq.enable_notification(&self.s.mem)? {
                    break;
                }
                rechecked = true;
                continue;
            };
            rechecked = false;
            let head = dc.head_index();
            let chain =
                Chain::parse(dc, &self.s.mem).map_err(|source| DeviceError::QueueChain {
                    queue: "rx",
                    source,
                })?;
            if !chain.readable.is_empty() {
                return Err(DeviceError::RxBufferReadable);
            }
            let room = chain::total_len(&chain.writable);
            if room < HDR_LEN as u64 {
                return Err(DeviceError::RxBufferTooSmall { room });
            }
            let cap = (room - HDR_LEN as u64).min(MAX_PKT_LEN as u64) as usize;
            let Some(packet) = self.next_packet(cap) else {
                self.s.rxq.go_to_previous_position();
                break;
            };
            let n = chain::scatter(&self.s.mem, &chain.writable, &packet);
            let mut left = n as u64;
            for s in &chain.writable {
                if left == 0 {
                    break;
                }
                let w = left.min(s.len as u64);
                (self.s.wrote)(s.addr, w);
                left -= w;
            }
            self.s.rxq.add_used(&self.s.mem, head, n as u32)?;
            used_any = true;
        }
        if used_any && self.s.rxq.needs_notification(&self.s.mem)? {
            self.s.signals.used_buffer();
        }
        Ok(())
    }
}

/// The unix socket a guest connection to host port `port` goes to: `<path>_<port>`.
pub(super) fn port_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut s = uds_path.as_os_str().to_owned();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// `send(2)` without `SIGPIPE` and without blocking.
fn send_nosignal(fd: RawFd, buf: &[u8]) -> std::io::Result<usize> {
    // SAFETY: `buf` is a live byte slice of `buf.len()` bytes that send only reads.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr() as *const libc::c_void,
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Connect to the unix stream socket at `path` without blocking (a listener whose backlog is
/// full refuses rather than making the worker wait).
fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor socket(2) just returned, owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_un is plain data for which all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(std::io::Error::new(
            ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: `addr` is a valid, NUL-terminated sockaddr_un of the size passed.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsock_connect_line_parsing() {
        assert!(matches!(parse_connect(b"CONNECT 52"), ClientLine::Port(52)));
        assert!(matches!(
            parse_connect(b"CONNECT 4294967295\r"),
            ClientLine::Port(u32::MAX)
        ));
        assert!(matches!(parse_connect(b"CONNECT"), ClientLine::Bad));
        assert!(matches!(parse_connect(b"CONNECT -1"), ClientLine::Bad));
        assert!(matches!(parse_connect(b"CONNECT 1 2"), ClientLine::Bad));
        assert!(matches!(parse_connect(b"connect 1"), ClientLine::Bad));
        assert!(matches!(parse_connect(b"\xffCONNECT 1"), ClientLine::Bad));
    }

    #[test]
    fn vsock_port_path_appends_port() {
        assert_eq!(
            port_path(Path::new("/tmp/v.sock"), 5000),
            PathBuf::from("/tmp/v.sock_5000")
        );
    }

    #[test]
    fn vsock_credit_never_underflows() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = Conn::new(a, true);
        c.peer_buf_alloc = 100;
        c.tx_cnt = 60;
        c.peer_fwd_cnt = 10;
        assert_eq!(c.credit(), 50);
        c.tx_cnt = 200;
        assert_eq!(c.credit(), 0);
        // A bogus fwd_cnt beyond what was sent gives no credit rather than a huge one.
        c.tx_cnt = 10;
        c.peer_fwd_cnt = 20;
        assert_eq!(c.credit(), 0);
        // Counters wrap.
        c.tx_cnt = 5;
        c.peer_fwd_cnt = u32::MAX - 4;
        assert_eq!(c.credit(), 90);
    }
}
