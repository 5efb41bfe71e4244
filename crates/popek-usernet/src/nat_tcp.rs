//! TCP: outbound NAT (guest connects anywhere) and `--publish` forwards (host connects into
//! the guest), both relayed between a `smoltcp` TCP socket (the guest's side) and a host
//! [`TcpStream`].
//!
//! Outbound, the guest's SYN is held back while the host connects, non-blocking, to the
//! destination (10.0.2.2 means the host's 127.0.0.1). Once connected, a `smoltcp` socket
//! listening on exactly that destination is created and the SYN is handed to it, so the
//! guest's handshake completes only for a reachable destination; if the host's connect fails
//! the SYN is handed to `smoltcp` with no socket for it, which answers RST.
//!
//! Relaying keeps both directions bounded: guest data is read out of the socket's receive
//! buffer only as fast as the host socket takes it (so the guest's window closes), and host
//! data is read only while the socket's send buffer has room. FIN goes both ways (shutdown
//! of the host socket's write half, `close()` of the `smoltcp` socket), and a reset or error
//! on one side resets the other (an RST to the guest, SO_LINGER 0 towards the host).

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, RecvError, State};
use smoltcp::wire::{IpAddress, IpListenEndpoint};
use socket2::{Domain, SockRef, Socket, Type};

use crate::device::VirtDevice;
use crate::frame::{nat_target, Ep};
use crate::{Publish, GATEWAY_ADDR, GUEST_ADDR};

/// Each direction's buffer in the `smoltcp` socket (the guest's TCP window).
const SOCKET_BUFFER: usize = 64 * 1024;
/// The most connections (outbound, published, and connecting) at once; more are refused.
pub(crate) const MAX_CONNS: usize = 1024;
/// How long the host may take to connect, and the guest to finish a handshake.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a `--publish` listener rests after an accept error.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// The ports the gateway connects into the guest from.
const EPHEMERAL: std::ops::RangeInclusive<u16> = 49152..=65535;

/// A guest flow: (guest endpoint, destination endpoint as the guest sees it).
type FlowKey = (Ep, Ep);

/// A host connect in progress for a held-back guest SYN.
struct Pending {
    key: FlowKey,
    syn: Vec<u8>,
    sock: Socket,
    deadline: Instant,
}

/// A relayed connection.
struct Conn {
    handle: SocketHandle,
    host: TcpStream,
    /// Outbound: the guest flow.
    key: Option<FlowKey>,
    /// Published: the gateway's port towards the guest.
    local_port: Option<u16>,
    /// Until the guest's side is established: when to give up.
    handshake_deadline: Option<Instant>,
    established: bool,
    /// The host socket may have data (or EOF) to read: try before polling.
    rd_ready: bool,
    /// The host socket may take data: try before polling.
    wr_ready: bool,
    /// The host sent FIN (the guest socket is closed for sending).
    host_eof: bool,
    /// The guest's FIN was passed on (host socket shut down for writing).
    host_wr_shut: bool,
    /// The host socket failed; the guest socket was aborted.
    host_failed: bool,
}

impl Conn {
    /// A connection whose guest side is still in its handshake (until `now` plus the connect
    /// timeout), with both host directions open: `key` for an outbound flow, `local_port` for a
    /// published one.
    fn new(
        handle: SocketHandle,
        host: TcpStream,
        key: Option<FlowKey>,
        local_port: Option<u16>,
        now: Instant,
    ) -> Conn {
        Conn {
            handle,
            host,
            key,
            local_port,
            handshake_deadline: Some(now + CONNECT_TIMEOUT),
            established: false,
            rd_ready: true,
            wr_ready: true,
            host_eof: false,
            host_wr_shut: false,
            host_failed: false,
        }
    }
}

/// What a poll entry of the TCP side is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TcpToken {
    Listener(usize),
    Pending(u64),
    Conn(u64),
}

/// All TCP state of the stack.
pub(crate) struct TcpNat {
    conns: HashMap<u64, Conn>,
    pending: HashMap<u64, Pending>,
    flows: HashMap<FlowKey, u64>,
    listeners: Vec<(TcpListener, Publish)>,
    /// Per listener: not polled until then, after an accept error (EMFILE leaves the client in
    /// the backlog, and the listener readable: polling it would spin).
    listener_pause: Vec<Option<Instant>>,
    next_id: u64,
    next_port: u16,
    used_ports: HashSet<u16>,
    /// Which host addresses NAT may connect to.
    allowed: fn(Ipv4Addr) -> bool,
}

/// The smoltcp pieces TCP works with; borrowed from the stack for one call.
pub(crate) struct Net<'a> {
    pub iface: &'a mut Interface,
    pub dev: &'a mut VirtDevice,
    pub sockets: &'a mut SocketSet<'static>,
    pub now: smoltcp::time::Instant,
}

fn new_socket() -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
        tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
    );
    // A relay: whatever the host sent goes on at once, the host's TCP already coalesced.
    s.set_nagle_enabled(false);
    s
}

/// Closes a host socket with an RST rather than a FIN (the other side reset or failed).
fn reset_host(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Starts a non-blocking connect; `Ok(true)` if it completed at once.
fn start_connect(target: SocketAddrV4) -> io::Result<(Socket, bool)> {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    sock.set_nonblocking(true)?;
    match sock.connect(&target.into()) {
        Ok(()) => Ok((sock, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) || would_block(&e) => {
            Ok((sock, false))
        }
        Err(e) => Err(e),
    }
}

impl TcpNat {
    pub fn new(listeners: Vec<(TcpListener, Publish)>, allowed: fn(Ipv4Addr) -> bool) -> TcpNat {
        TcpNat {
            conns: HashMap::new(),
            pending: HashMap::new(),
            flows: HashMap::new(),
            listener_pause: vec![None; listeners.len()],
            listeners,
            next_id: 0,
            next_port: *EPHEMERAL.start(),
            used_ports: HashSet::new(),
            allowed,
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn full(&self) -> bool {
        self.conns.len() + self.pending.len() >= MAX_CONNS
    }

    /// A guest SYN (without ACK) from `src` to `dst`, as a whole frame.
    pub fn on_syn(&mut self, frame: Vec<u8>, src: Ep, dst: Ep, now: Instant, net: &mut Net<'_>) {
        let key = (src, dst);
        if let Some(id) = self.flows.get(&key) {
            if self.conns.contains_key(id) {
                // A retransmitted SYN of a connection smoltcp already has.
                net.dev.rx.push_back(frame);
            }
            // Else the host is still connecting: the retransmission is dropped.
            return;
        }
        let Some(target) = nat_target(dst.0).filter(|t| (self.allowed)(*t)) else {
            tracing::debug!(
                ?dst,
                "usernet: TCP to an address that leads nowhere, refused"
            );
            net.dev.rx.push_back(frame);
            return;
        };
        if self.full() {
            popek_devices::guest_warn!("usernet: too many TCP connections, refusing one");
            net.dev.rx.push_back(frame);
            return;
        }
        let target = SocketAddrV4::new(target, dst.1);
        match start_connect(target) {
            Ok((sock, done)) => {
                tracing::debug!(?src, ?dst, %target, "usernet: TCP connect");
                let id = self.id();
                self.flows.insert(key, id);
                self.pending.insert(
                    id,
                    Pending {
                        key,
                        syn: frame,
                        sock,
                        deadline: now + CONNECT_TIMEOUT,
                    },
                );
                if done {
                    self.connect_finished(id, now, net);
                }
            }
            Err(e) => {
                tracing::debug!(%target, error = %e, "usernet: TCP connect failed, refused");
                net.dev.rx.push_back(frame);
            }
        }
    }

    /// The host connect of pending `id` finished (its socket polled writable or failed).
    pub fn connect_finished(&mut self, id: u64, now: Instant, net: &mut Net<'_>) {
        let Some(p) = self.pending.get(&id) else {
            return;
        };
        // Polled writable (or in error) means the connect is over: connected, or failed.
        let error = match p.sock.take_error() {
            Ok(None) => p.sock.peer_addr().err(),
            Ok(Some(e)) | Err(e) => Some(e),
        };
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        if let Some(e) = error {
            tracing::debug!(dst = ?p.key.1, error = %e, "usernet: TCP connect failed, refused");
            self.flows.remove(&p.key);
            net.dev.rx.push_back(p.syn);
            return;
        }
        let host: TcpStream = p.sock.into();
        let _ = host.set_nodelay(true);
        let (guest, dst) = p.key;
        // Frames already queued (perhaps a refused SYN to the same destination) go first, so
        // that the listening socket below sees only this SYN.
        net.iface.poll(net.now, &mut *net.dev, &mut *net.sockets);
        let mut s = new_socket();
        let listen = IpListenEndpoint {
            addr: Some(IpAddress::Ipv4(dst.0)),
            port: dst.1,
        };
        if s.listen(listen).is_err() {
            self.flows.remove(&p.key);
            reset_host(&host);
            return;
        }
        let handle = net.sockets.add(s);
        net.dev.rx.push_back(p.syn);
        net.iface.poll(net.now, &mut *net.dev, &mut *net.sockets);
        let s = net.sockets.get::<tcp::Socket>(handle);
        let took_it = s.state() == State::SynReceived
            && s.remote_endpoint()
                == Some(smoltcp::wire::IpEndpoint::new(
                    IpAddress::Ipv4(guest.0),
                    guest.1,
                ));
        if !took_it {
            // The SYN was not acceptable after all; the guest will retry.
            tracing::debug!(?dst, "usernet: held-back SYN not accepted");
            net.sockets.remove(handle);
            self.flows.remove(&p.key);
            reset_host(&host);
            return;
        }
        self.conns
            .insert(id, Conn::new(handle, host, Some(p.key), None, now));
    }

    /// Refuses host connects that took too long; returns the next deadline.
    pub fn expire_pending(&mut self, now: Instant, net: &mut Net<'_>) -> Option<Instant> {
        let late: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| now >= p.deadline)
            .map(|(&id, _)| id)
            .collect();
        for id in late {
            if let Some(p) = self.pending.remove(&id) {
                tracing::debug!(dst = ?p.key.1, "usernet: TCP connect timed out, refused");
                self.flows.remove(&p.key);
                net.dev.rx.push_back(p.syn);
            }
        }
        for p in &mut self.listener_pause {
            if p.is_some_and(|t| now >= t) {
                *p = None;
            }
        }
        let pending = self.pending.values().map(|p| p.deadline);
        let handshakes = self.conns.values().filter_map(|c| c.handshake_deadline);
        let pauses = self.listener_pause.iter().flatten().copied();
        pending.chain(handshakes).chain(pauses).min()
    }

    fn alloc_port(&mut self) -> Option<u16> {
        let span = usize::from(EPHEMERAL.end() - EPHEMERAL.start()) + 1;
        for _ in 0..span {
            let p = self.next_port;
            self.next_port = if p == *EPHEMERAL.end() {
                *EPHEMERAL.start()
            } else {
                p + 1
            };
            if !self.used_ports.contains(&p) {
                self.used_ports.insert(p);
                return Some(p);
            }
        }
        None
    }

    /// A `--publish` listener is readable: accept and connect each client into the guest.
    pub fn accept(&mut self, idx: usize, now: Instant, net: &mut Net<'_>) {
        loop {
            let Some((listener, publish)) = self.listeners.get(idx) else {
                return;
            };
            let guest_port = publish.guest_port;
            let (stream, peer) = match listener.accept() {
                Ok(x) => x,
                Err(e) if would_block(&e) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // E.g. EMFILE: the client stays in the backlog for a later try.
                    popek_devices::guest_warn!(error = %e, "usernet: accept failed on a --publish port");
                    if let Some(p) = self.listener_pause.get_mut(idx) {
                        *p = Some(now + ACCEPT_BACKOFF);
                    }
                    return;
                }
            };
            if self.full() {
                popek_devices::guest_warn!(%peer, "usernet: too many TCP connections, dropping a --publish client");
                reset_host(&stream);
                continue;
            }
            let Some(port) = self.alloc_port() else {
                reset_host(&stream);
                continue;
            };
            let _ = stream.set_nonblocking(true);
            let _ = stream.set_nodelay(true);
            let mut s = new_socket();
            let local = IpListenEndpoint {
                addr: Some(IpAddress::Ipv4(GATEWAY_ADDR)),
                port,
            };
            if s.connect(
                net.iface.context(),
                (IpAddress::Ipv4(GUEST_ADDR), guest_port),
                local,
            )
            .is_err()
            {
                self.used_ports.remove(&port);
                reset_host(&stream);
                continue;
            }
            tracing::debug!(%peer, guest_port, "usernet: --publish connection");
            let handle = net.sockets.add(s);
            let id = self.id();
            self.conns
                .insert(id, Conn::new(handle, stream, None, Some(port), now));
        }
    }

    /// Moves data between every connection's two sockets; true if anything moved or changed.
    pub fn relay(&mut self, sockets: &mut SocketSet<'static>) -> bool {
        let mut progress = false;
        for c in self.conns.values_mut() {
            let s = sockets.get_mut::<tcp::Socket>(c.handle);
            progress |= relay_one(c, s);
        }
        progress
    }

    /// Removes finished connections.
    pub fn cleanup(&mut self, sockets: &mut SocketSet<'static>, now: Instant) {
        let mut done = Vec::new();
        for (&id, c) in self.conns.iter_mut() {
            let s = sockets.get_mut::<tcp::Socket>(c.handle);
            if let Some(graceful) = finished(c, s, now) {
                done.push((id, graceful));
            }
        }
        for (id, graceful) in done {
            let Some(c) = self.conns.remove(&id) else {
                continue;
            };
            sockets.remove(c.handle);
            if let Some(k) = c.key {
                self.flows.remove(&k);
            }
            if let Some(p) = c.local_port {
                self.used_ports.remove(&p);
            }
            if graceful {
                if !c.host_wr_shut {
                    let _ = c.host.shutdown(Shutdown::Write);
                }
            } else if !c.host_failed {
                reset_host(&c.host);
            }
            tracing::debug!(graceful, "usernet: TCP connection closed");
        }
    }

    /// The host sockets to poll, with the events each waits for.
    pub fn poll_fds(
        &self,
        sockets: &SocketSet<'static>,
        mut add: impl FnMut(RawFd, i16, TcpToken),
    ) {
        for (i, (l, _)) in self.listeners.iter().enumerate() {
            if self.listener_pause.get(i).is_some_and(|p| p.is_none()) {
                add(l.as_raw_fd(), libc::POLLIN, TcpToken::Listener(i));
            }
        }
        for (&id, p) in &self.pending {
            add(p.sock.as_raw_fd(), libc::POLLOUT, TcpToken::Pending(id));
        }
        for (&id, c) in &self.conns {
            if !c.established || c.host_failed {
                continue;
            }
            let s = sockets.get::<tcp::Socket>(c.handle);
            let mut ev = 0;
            if !c.host_eof && !c.rd_ready && s.can_send() {
                ev |= libc::POLLIN;
            }
            if !c.wr_ready && s.can_recv() {
                ev |= libc::POLLOUT;
            }
            if ev != 0 {
                add(c.host.as_raw_fd(), ev, TcpToken::Conn(id));
            }
        }
    }

    /// A polled connection socket is ready.
    pub fn conn_event(&mut self, id: u64, revents: i16) {
        if let Some(c) = self.conns.get_mut(&id) {
            let err = revents & (libc::POLLERR | libc::POLLHUP) != 0;
            if err || revents & libc::POLLIN != 0 {
                c.rd_ready = true;
            }
            if err || revents & libc::POLLOUT != 0 {
                c.wr_ready = true;
            }
        }
    }
}

/// Relays one connection; true if anything moved or changed.
fn relay_one(c: &mut Conn, s: &mut tcp::Socket<'static>) -> bool {
    let mut progress = false;
    if !c.established {
        match s.state() {
            State::Closed | State::Listen | State::SynSent | State::SynReceived => return false,
            _ => {
                c.established = true;
                c.handshake_deadline = None;
                progress = true;
            }
        }
    }
    if c.host_failed {
        return progress;
    }
    let host = &mut c.host;

    // Guest to host, only as fast as the host takes it.
    while c.wr_ready && !c.host_wr_shut && s.can_recv() {
        match s.recv(|buf| match host.write(buf) {
            Ok(n) => (n, Ok(n)),
            Err(e) => (0, Err(e)),
        }) {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(_)) => progress = true,
            Ok(Err(e)) if would_block(&e) => c.wr_ready = false,
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "usernet: host write failed, resetting the guest connection");
                s.abort();
                c.host_failed = true;
                return true;
            }
        }
    }
    // The guest's FIN, once its data is all out.
    if !c.host_wr_shut && !s.may_recv() {
        let _ = host.shutdown(Shutdown::Write);
        c.host_wr_shut = true;
        progress = true;
    }

    // Host to guest, only while the socket's send buffer has room.
    while c.rd_ready && !c.host_eof && s.can_send() {
        match s.send(|buf| {
            if buf.is_empty() {
                return (0, Ok(None));
            }
            match host.read(buf) {
                Ok(n) => (n, Ok(Some(n))),
                Err(e) => (0, Err(e)),
            }
        }) {
            Ok(Ok(None)) | Err(_) => break,
            Ok(Ok(Some(0))) => {
                c.host_eof = true;
                s.close();
                progress = true;
            }
            Ok(Ok(Some(_))) => progress = true,
            Ok(Err(e)) if would_block(&e) => c.rd_ready = false,
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "usernet: host read failed, resetting the guest connection");
                s.abort();
                c.host_failed = true;
                return true;
            }
        }
    }
    progress
}

/// Whether a connection is over: `Some(graceful)` if so.
fn finished(c: &mut Conn, s: &mut tcp::Socket<'static>, now: Instant) -> Option<bool> {
    match s.state() {
        State::Closed | State::TimeWait => {
            if !c.established {
                // Refused by the guest (published port) or reset during the handshake.
                return Some(false);
            }
            if c.host_failed {
                return Some(false);
            }
            if s.can_recv() && !c.host_wr_shut {
                return None; // guest data still on its way to the host
            }
            let fin = matches!(s.recv(|_| (0, ())), Err(RecvError::Finished));
            Some(fin && c.host_eof)
        }
        // Only a socket reset during its handshake goes back to listening.
        State::Listen => Some(false),
        State::SynSent | State::SynReceived if c.handshake_deadline.is_some_and(|d| now >= d) => {
            tracing::debug!("usernet: TCP handshake with the guest timed out");
            s.abort();
            Some(false)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ephemeral_ports_wrap_and_skip_used_ones() {
        let mut t = TcpNat::new(vec![], |_| true);
        t.next_port = 65534;
        assert_eq!(t.alloc_port(), Some(65534));
        assert_eq!(t.alloc_port(), Some(65535));
        assert_eq!(t.alloc_port(), Some(49152));
        t.used_ports.remove(&65535);
        t.next_port = 65534;
        assert_eq!(t.alloc_port(), Some(65535));
    }
}
