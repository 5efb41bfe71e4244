//! The stack thread: one loop that takes the guest's frames, hands each to whoever handles it
//! (DHCP, DNS, UDP NAT, TCP NAT, `smoltcp`), relays data, and then sleeps in poll(2) on the
//! doorbell eventfd, the DNS workers' eventfd and every host socket that has something to
//! wait for, with `smoltcp`'s next timer as the timeout. Idle, it uses no CPU.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, PollResult, SocketSet};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

use crate::device::{Shared, VirtDevice};
use crate::dns::{self, Job, Parsed, Resolver};
use crate::frame::{self, classify, udp_frame, Ep, Route, GW_MAC};
use crate::nat_tcp::{Net, TcpNat, TcpToken};
use crate::nat_udp::UdpNat;
use crate::{dhcp, Policy, Publish, DNS_ADDR, GATEWAY_ADDR, NETWORK_PREFIX_LEN};

/// Rounds of `smoltcp` poll + relay per wake-up before the loop checks the guest's frames
/// and the host sockets again (it then polls with a zero timeout).
const MAX_ROUNDS: usize = 16;
/// Bound on a wait while the guest isn't taking frames (it wakes the stack when it does).
const BLOCKED_WAIT: Duration = Duration::from_millis(500);

/// What a poll entry is.
#[derive(Clone, Copy, Debug)]
enum Token {
    Doorbell,
    Dns,
    Tcp(TcpToken),
    Udp(u64),
}

/// The stack thread's state.
pub(crate) struct Stack {
    shared: Arc<Shared>,
    iface: Interface,
    dev: VirtDevice,
    sockets: SocketSet<'static>,
    tcp: TcpNat,
    udp: UdpNat,
    resolver: Resolver,
    epoch: Instant,
    udp_buf: Vec<u8>,
}

impl Stack {
    pub fn new(
        shared: Arc<Shared>,
        listeners: Vec<(TcpListener, Publish)>,
        resolver: Resolver,
        policy: Policy,
    ) -> Stack {
        let epoch = Instant::now();
        let mut dev = VirtDevice::new(Arc::clone(&shared));
        let mut cfg = Config::new(HardwareAddress::Ethernet(GW_MAC));
        cfg.random_seed = random_seed();
        let mut iface = Interface::new(cfg, &mut dev, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|addrs| {
            for a in [GATEWAY_ADDR, DNS_ADDR] {
                if addrs
                    .push(IpCidr::new(IpAddress::Ipv4(a), NETWORK_PREFIX_LEN))
                    .is_err()
                {
                    tracing::error!(%a, "usernet: no room for an interface address");
                }
            }
        });
        // Accept TCP for any destination: the NAT decides which SYNs reach smoltcp.
        iface.set_any_ip(true);
        Stack {
            shared,
            iface,
            dev,
            sockets: SocketSet::new(vec![]),
            tcp: TcpNat::new(listeners, policy.nat_allowed),
            udp: UdpNat::new(policy.nat_allowed),
            resolver,
            epoch,
            udp_buf: vec![0; 65536],
        }
    }

    fn smol_now(&self, now: Instant) -> smoltcp::time::Instant {
        let us = now.duration_since(self.epoch).as_micros();
        smoltcp::time::Instant::from_micros(i64::try_from(us).unwrap_or(i64::MAX))
    }

    /// Runs until [`Shared::stop`] is set.
    pub fn run(mut self) {
        tracing::debug!("usernet: stack thread running");
        #[cfg(test)]
        {
            // SAFETY: gettid has no preconditions and only returns the caller's thread id.
            let tid = unsafe { libc::gettid() };
            self.shared.tid.store(i64::from(tid), Ordering::Release);
        }
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut tokens: Vec<Token> = Vec::new();
        loop {
            if self.shared.stop.load(Ordering::Acquire) {
                break;
            }
            let now = Instant::now();
            for (p, &t) in fds.iter().zip(&tokens) {
                if p.revents != 0 {
                    self.event(t, p.revents, now);
                }
            }
            self.ingest(now);
            for d in self.resolver.take_done() {
                let reply = dns::response(&d.job.query, &d.lookup);
                self.shared.push_to_guest(udp_frame(
                    d.job.client_mac,
                    (DNS_ADDR, dns::PORT),
                    d.job.client,
                    &reply,
                ));
            }
            let smol_now = self.smol_now(now);
            let tcp_deadline = self.tcp.expire_pending(
                now,
                &mut Net {
                    iface: &mut self.iface,
                    dev: &mut self.dev,
                    sockets: &mut self.sockets,
                    now: smol_now,
                },
            );
            let udp_deadline = self.udp.expire(now);

            let mut busy = false;
            for round in 0.. {
                let r = self.iface.poll(smol_now, &mut self.dev, &mut self.sockets);
                let moved = self.tcp.relay(&mut self.sockets);
                if !moved && r == PollResult::None && self.dev.rx.is_empty() {
                    break;
                }
                if round + 1 == MAX_ROUNDS {
                    busy = true;
                    break;
                }
            }
            self.tcp.cleanup(&mut self.sockets, now);

            // What to wait for, and how long.
            fds.clear();
            tokens.clear();
            let mut add = |fd: RawFd, events: i16, t: Token| {
                fds.push(libc::pollfd {
                    fd,
                    events,
                    revents: 0,
                });
                tokens.push(t);
            };
            add(
                self.shared.stack_wake.as_raw_fd(),
                libc::POLLIN,
                Token::Doorbell,
            );
            add(self.resolver.fd(), libc::POLLIN, Token::Dns);
            self.tcp
                .poll_fds(&self.sockets, |fd, ev, t| add(fd, ev, Token::Tcp(t)));
            self.udp
                .poll_fds(|fd, id| add(fd, libc::POLLIN, Token::Udp(id)));

            let timeout = if busy {
                Some(Duration::ZERO)
            } else {
                let smol = self
                    .iface
                    .poll_delay(self.smol_now(Instant::now()), &self.sockets)
                    .map(|d| Duration::from_micros(d.total_micros()));
                // While the guest isn't taking frames, smoltcp may want to send "now" forever;
                // the guest's recv() rings the doorbell when there is room again.
                let smol = if self.shared.to_guest_blocked() {
                    smol.map(|d| d.max(BLOCKED_WAIT))
                } else {
                    smol
                };
                let later = Instant::now();
                [tcp_deadline, udp_deadline]
                    .into_iter()
                    .flatten()
                    .map(|d| d.saturating_duration_since(later))
                    .chain(smol)
                    .min()
            };
            if let Err(e) = poll(&mut fds, timeout) {
                tracing::error!(error = %e, "usernet: poll failed; stopping the network");
                break;
            }
        }
        tracing::debug!("usernet: stack thread stopped");
    }

    /// A polled fd is ready.
    fn event(&mut self, t: Token, revents: i16, now: Instant) {
        let smol_now = self.smol_now(now);
        let mut net = Net {
            iface: &mut self.iface,
            dev: &mut self.dev,
            sockets: &mut self.sockets,
            now: smol_now,
        };
        match t {
            Token::Doorbell | Token::Dns => {} // handled every iteration
            Token::Tcp(TcpToken::Listener(i)) => self.tcp.accept(i, now, &mut net),
            Token::Tcp(TcpToken::Pending(id)) => self.tcp.connect_finished(id, now, &mut net),
            Token::Tcp(TcpToken::Conn(id)) => self.tcp.conn_event(id, revents),
            Token::Udp(id) => self.udp.readable(id, now, &self.shared, &mut self.udp_buf),
        }
    }

    /// Takes the guest's frames and routes each.
    fn ingest(&mut self, now: Instant) {
        let frames = self.shared.take_from_guest();
        if frames.is_empty() {
            return;
        }
        let smol_now = self.smol_now(now);
        for f in frames {
            match classify(&f) {
                Route::Smoltcp => self.dev.rx.push_back(f),
                Route::Drop => {}
                Route::TcpSyn { src, dst } => {
                    let mut net = Net {
                        iface: &mut self.iface,
                        dev: &mut self.dev,
                        sockets: &mut self.sockets,
                        now: smol_now,
                    };
                    self.tcp.on_syn(f, src, dst, now, &mut net);
                }
                Route::Udp {
                    src_mac,
                    dst_mac,
                    src,
                    dst,
                    payload,
                } => self.udp_from_guest(now, src_mac, dst_mac, src, dst, payload),
            }
        }
    }

    fn udp_from_guest(
        &mut self,
        now: Instant,
        src_mac: EthernetAddress,
        dst_mac: EthernetAddress,
        src: Ep,
        dst: Ep,
        payload: &[u8],
    ) {
        if dst.1 == dhcp::SERVER_PORT
            && src.1 == dhcp::CLIENT_PORT
            && (dst.0 == GATEWAY_ADDR || dst.0.is_broadcast())
        {
            if let Some(reply) = dhcp::handle(src_mac, payload) {
                self.shared.push_to_guest(reply);
            }
            return;
        }
        // Everything else needs a guest address and is addressed to the gateway's MAC.
        if src.0.is_unspecified() || dst_mac != GW_MAC {
            return;
        }
        if dst.0 == DNS_ADDR {
            if dst.1 != dns::PORT {
                return;
            }
            match dns::parse_query(payload) {
                Parsed::Ignore => {}
                Parsed::Reply(m) => {
                    self.shared
                        .push_to_guest(udp_frame(src_mac, (DNS_ADDR, dns::PORT), src, &m))
                }
                Parsed::Resolve(query) => {
                    let job = Job {
                        query,
                        client_mac: src_mac,
                        client: src,
                    };
                    if let Err(job) = self.resolver.submit(job) {
                        popek_devices::guest_warn!(
                            "usernet: too many DNS lookups waiting, answering SERVFAIL"
                        );
                        let m = dns::response(&job.query, &dns::Lookup::TryAgain);
                        self.shared.push_to_guest(udp_frame(
                            src_mac,
                            (DNS_ADDR, dns::PORT),
                            src,
                            &m,
                        ));
                    }
                }
            }
            return;
        }
        if frame::nat_target(dst.0).is_some() {
            self.udp.outbound(now, src_mac, src, dst, payload);
        }
    }
}

/// poll(2) on `fds`; `None` waits without limit.
fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<()> {
    let ms = match timeout {
        None => -1,
        // Round up, so a timer due in 300 µs doesn't become a busy loop of 0 ms polls.
        Some(d) => i32::try_from(d.as_micros().div_ceil(1000)).unwrap_or(i32::MAX),
    };
    // SAFETY: `fds` is a valid, exclusively borrowed slice of pollfd structs for the whole
    // call, and the count passed is its length.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
        for p in fds.iter_mut() {
            p.revents = 0;
        }
    }
    Ok(())
}

/// A seed for smoltcp's initial sequence numbers and ports: they must not be predictable.
fn random_seed() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}
