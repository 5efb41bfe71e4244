//! popek-usernet: a user-mode network stack for a VM's virtual NIC, like QEMU's slirp or passt.
//!
//! The virtio-net device hands [`UserNet::send`] the raw Ethernet frames the guest transmitted
//! and delivers to the guest the frames [`UserNet::recv`] returns. Behind that, one thread
//! (the "stack thread") plays the rest of a small network, without root and without any host
//! network configuration:
//!
//! * the network is 10.0.2.0/24 as in QEMU: the gateway (which is also the host) is 10.0.2.2,
//!   the DNS server 10.0.2.3, and the guest gets 10.0.2.15 by DHCP;
//! * ARP for 10.0.2.2 / 10.0.2.3 and ICMP echo to them are answered by a `smoltcp` interface;
//! * a DHCP server leases 10.0.2.15 (`dhcp.rs`);
//! * a DNS server at 10.0.2.3:53 answers A/AAAA queries by resolving the name on the host, on
//!   worker threads so that the stack never blocks (`dns.rs`);
//! * TCP connections from the guest to any address are made from the host with ordinary
//!   sockets and relayed through `smoltcp` TCP sockets; the guest's handshake completes only
//!   once the host's connect succeeded (`nat_tcp.rs`);
//! * UDP datagrams are relayed through one host UDP socket per flow (`nat_udp.rs`);
//! * `--publish` forwards accept on host ports and connect to the guest (`nat_tcp.rs`).
//!
//! 10.0.2.2 stands for the host's loopback (127.0.0.1), as in QEMU. Other addresses of
//! 10.0.2.0/24 lead nowhere (connections are refused), so no guest traffic reaches a real
//! 10.0.2.x network the host might be on.

mod device;
mod dhcp;
mod dns;
mod frame;
mod nat_tcp;
mod nat_udp;
mod stack;

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use device::Shared;

/// The guest network, 10.0.2.0/24, as in QEMU's user-mode networking, so guides and guest
/// configurations written for QEMU apply unchanged.
pub const NETWORK_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 0);
/// Prefix length of [`NETWORK_ADDR`] (a /24).
pub const NETWORK_PREFIX_LEN: u8 = 24;
/// The gateway, which is also how the guest reaches the host: connections and datagrams to
/// this address go to the host's 127.0.0.1.
pub const GATEWAY_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The DNS server the DHCP lease names; it resolves names with the host's resolver.
pub const DNS_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
/// The address the DHCP server leases to the guest (and the target of `--publish` forwards).
pub const GUEST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// The MAC address the gateway and the DNS server answer ARP with (QEMU's slirp uses the same).
pub const GATEWAY_MAC: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];
/// QEMU's default guest NIC MAC address, the default of [`UserNetConfig::guest_mac`].
pub const DEFAULT_GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// How long the DHCP lease lasts (one day); the guest renews it at half that.
pub const LEASE_SECS: u32 = 24 * 60 * 60;

/// What the stack may do on the host: where NAT may connect, how names are resolved.
/// Always [`Policy::default`] outside tests, which use it to keep all traffic on the machine
/// even when they feed the stack random frames.
#[derive(Clone, Copy)]
pub(crate) struct Policy {
    /// Whether NAT may send to this host address (after 10.0.2.2 became 127.0.0.1).
    pub nat_allowed: fn(Ipv4Addr) -> bool,
    /// The host name lookup.
    pub lookup: fn(&str) -> dns::Lookup,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            nat_allowed: |_| true,
            lookup: dns::lookup_host,
        }
    }
}

/// How the user-mode network is set up: what the guest NIC is and which host ports lead
/// into the guest.
#[derive(Clone, Debug)]
pub struct UserNetConfig {
    /// The guest NIC's MAC address (default 52:54:00:12:34:56), for the device to present in
    /// its config space. The stack itself learns the guest's MAC from its frames (ARP, and the
    /// source of each request it answers), so a guest that changes its MAC still works.
    pub guest_mac: [u8; 6],
    /// Host port to guest port TCP forwards, like `docker -p`; every listener is bound by
    /// [`UserNet::start`], so a port already in use is reported there.
    pub publish: Vec<Publish>,
    /// Run first on each of the stack's threads (the stack and the DNS workers), so the
    /// embedding program can confine them (popek's jail) before they touch guest traffic.
    pub thread_start: Option<fn()>,
}

impl Default for UserNetConfig {
    fn default() -> Self {
        UserNetConfig {
            guest_mac: DEFAULT_GUEST_MAC,
            publish: Vec::new(),
            thread_start: None,
        }
    }
}

/// One `--publish` forward: TCP connections accepted on `host_addr:host_port` are forwarded
/// to the guest's `guest_port` (at [`GUEST_ADDR`]), coming from the gateway 10.0.2.2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Publish {
    /// The host address to listen on; 127.0.0.1 by default so that a published guest service
    /// is not exposed to the network unless asked for.
    pub host_addr: IpAddr,
    /// The host port to listen on. 0 lets the kernel pick one (see [`UserNet::published_addrs`]);
    /// the `HOST:GUEST` text form rejects it.
    pub host_port: u16,
    /// The guest TCP port the connections are forwarded to.
    pub guest_port: u16,
}

impl Publish {
    /// The default listen address of a forward (loopback only).
    pub const DEFAULT_HOST_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
}

impl fmt::Display for Publish {
    /// The `--publish` text form: `8080:80`, or `ADDR:8080:80` when the address isn't the default.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_addr {
            a if a == Self::DEFAULT_HOST_ADDR => {
                write!(f, "{}:{}", self.host_port, self.guest_port)
            }
            IpAddr::V4(a) => write!(f, "{a}:{}:{}", self.host_port, self.guest_port),
            IpAddr::V6(a) => write!(f, "[{a}]:{}:{}", self.host_port, self.guest_port),
        }
    }
}

impl FromStr for Publish {
    type Err = UserNetError;

    /// Parses `HOST_PORT:GUEST_PORT` (listening on 127.0.0.1) or `HOST_ADDR:HOST_PORT:GUEST_PORT`
    /// (`[::1]:8080:80` for IPv6), the forms `docker -p` uses, so the option reads as users expect.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| UserNetError::InvalidPublish {
            spec: spec.to_string(),
            reason,
        };
        let s = spec.trim();
        // Split off an optional address: bracketed IPv6, or everything before the last two fields.
        let (addr, ports) = if let Some(rest) = s.strip_prefix('[') {
            let (a, after) = rest
                .split_once(']')
                .ok_or_else(|| invalid("missing ']' after the IPv6 address".into()))?;
            let ports = after
                .strip_prefix(':')
                .ok_or_else(|| invalid("expected ':' after the IPv6 address".into()))?;
            (Some(a), ports)
        } else {
            match s.matches(':').count() {
                1 => (None, s),
                2 => {
                    let (a, ports) = s.split_once(':').unwrap_or(("", s));
                    (Some(a), ports)
                }
                0 => return Err(invalid("no ':' between the ports".into())),
                _ => {
                    return Err(invalid(
                        "too many ':' (write an IPv6 address in brackets, e.g. [::1]:8080:80)"
                            .into(),
                    ))
                }
            }
        };
        let host_addr = match addr {
            None => Self::DEFAULT_HOST_ADDR,
            Some(a) => a
                .parse::<IpAddr>()
                .map_err(|_| invalid(format!("'{a}' is not an IP address")))?,
        };
        let (hp, gp) = ports
            .split_once(':')
            .ok_or_else(|| invalid("no ':' between the ports".into()))?;
        let port = |p: &str, what: &str| -> Result<u16, UserNetError> {
            match p.parse::<u16>() {
                Ok(0) | Err(_) => Err(invalid(format!(
                    "{what} port '{p}' is not a number from 1 to 65535"
                ))),
                Ok(n) => Ok(n),
            }
        };
        Ok(Publish {
            host_addr,
            host_port: port(hp, "host")?,
            guest_port: port(gp, "guest")?,
        })
    }
}

/// Why the user-mode network could not be started or configured; each message says what to do.
#[derive(thiserror::Error, Debug)]
pub enum UserNetError {
    /// A `--publish` host port could not be listened on (typically already in use).
    #[error(
        "cannot listen on {} for --publish {publish}: {}; choose a free host port",
        SocketAddr::new(publish.host_addr, *port),
        os_text(error)
    )]
    Publish {
        /// The forward that failed.
        publish: Publish,
        /// The host port that could not be bound.
        port: u16,
        /// The bind error (part of the message, so not a `source`).
        error: io::Error,
    },
    /// A `--publish` value could not be parsed.
    #[error("invalid --publish value '{spec}': {reason} (expected HOST_PORT:GUEST_PORT or HOST_ADDR:HOST_PORT:GUEST_PORT, e.g. 8080:80 or 127.0.0.1:8080:80)")]
    InvalidPublish {
        /// The text given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The host refused a resource the stack needs (eventfd, thread).
    #[error("cannot start the user-mode network: {what}: {error}")]
    Resource {
        /// What could not be created.
        what: &'static str,
        /// The OS error (part of the message, so not a `source`).
        error: io::Error,
    },
}

/// An OS error's text without the "(os error N)" suffix, for one-line messages.
fn os_text(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// A running user-mode network: the stack thread plus the two frame queues between it and the
/// virtio-net device. Dropping it stops the thread and closes every host socket.
pub struct UserNet {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    published: Vec<SocketAddr>,
}

impl UserNet {
    /// Starts the stack on its own thread. Binds every `--publish` listener now, so a port
    /// already in use is an error here ([`UserNetError::Publish`]) rather than a silent
    /// failure later.
    pub fn start(config: UserNetConfig) -> Result<UserNet, UserNetError> {
        Self::start_with(config, Policy::default())
    }

    /// [`start`](Self::start) with a policy (tests keep NAT and DNS on the machine with it).
    pub(crate) fn start_with(
        config: UserNetConfig,
        policy: Policy,
    ) -> Result<UserNet, UserNetError> {
        let mut listeners = Vec::with_capacity(config.publish.len());
        let mut published = Vec::with_capacity(config.publish.len());
        for p in &config.publish {
            let bind = TcpListener::bind((p.host_addr, p.host_port)).and_then(|l| {
                l.set_nonblocking(true)?;
                Ok(l)
            });
            let listener = bind.map_err(|error| UserNetError::Publish {
                publish: *p,
                port: p.host_port,
                error,
            })?;
            published.push(
                listener
                    .local_addr()
                    .unwrap_or_else(|_| SocketAddr::new(p.host_addr, p.host_port)),
            );
            tracing::debug!(publish = %p, "usernet: listening for --publish");
            listeners.push((listener, *p));
        }
        let shared = Arc::new(Shared::new().map_err(|error| UserNetError::Resource {
            what: "eventfd",
            error,
        })?);
        let hook = config.thread_start;
        let resolver = dns::Resolver::start_with(policy.lookup, hook).map_err(|error| {
            UserNetError::Resource {
                what: "DNS resolver thread",
                error,
            }
        })?;
        let stack = stack::Stack::new(Arc::clone(&shared), listeners, resolver, policy);
        let thread = std::thread::Builder::new()
            .name("popek-usernet".into())
            .spawn(move || {
                if let Some(hook) = hook {
                    hook();
                }
                stack.run()
            })
            .map_err(|error| UserNetError::Resource {
                what: "stack thread",
                error,
            })?;
        Ok(UserNet {
            shared,
            thread: Some(thread),
            published,
        })
    }

    /// A frame the guest transmitted. Never blocks: the frame is queued for the stack thread,
    /// and dropped (as a real NIC drops) when the queue is full or the frame can't be Ethernet.
    pub fn send(&self, frame: &[u8]) {
        self.shared.push_from_guest(frame);
    }

    /// The next frame for the guest, if any. Never blocks. Clears [`wake_fd`](Self::wake_fd)
    /// when it hands out the last queued frame.
    pub fn recv(&self) -> Option<Vec<u8>> {
        self.shared.pop_to_guest()
    }

    /// An eventfd that is readable exactly while frames for the guest are queued, so the
    /// device thread can `poll()` it together with its own events.
    ///
    /// Protocol: poll it for `POLLIN`; when readable, call [`recv`](Self::recv) until it returns
    /// `None` (or until the guest has no more receive buffers). Never read or write the fd
    /// yourself: `recv` clears it (under the queue lock) when it takes the last frame, and the
    /// stack sets it when it queues a frame into an empty queue, so it is level-triggered. If
    /// the device stops early because the guest posted no receive buffers, it should leave the
    /// fd out of its poll set until the guest posts some (else poll returns at once, forever),
    /// then call `recv` again. Frames the guest doesn't take pile up to a bound, then new
    /// ones are dropped or held back (TCP slows down), as on a real NIC.
    ///
    /// The fd belongs to this `UserNet` and stays valid until it is dropped.
    pub fn wake_fd(&self) -> RawFd {
        self.shared.guest_wake.as_raw_fd()
    }

    /// The host addresses the `--publish` listeners are bound to, in configuration order (the
    /// kernel's choice when a host port was 0), for messages and tests.
    pub fn published_addrs(&self) -> &[SocketAddr] {
        &self.published
    }
}

#[cfg(test)]
impl UserNet {
    /// The stack thread's kernel thread id (waits for the thread to publish it).
    pub(crate) fn stack_tid(&self) -> i64 {
        for _ in 0..1000 {
            let t = self.shared.tid.load(Ordering::Acquire);
            if t != 0 {
                return t;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        0
    }

    /// How many guest frames wait for the stack thread.
    pub(crate) fn pending_from_guest(&self) -> usize {
        self.shared.pending_from_guest()
    }

    /// Whether the stack thread still runs (it would not after a panic).
    pub(crate) fn stack_alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for UserNet {
    /// Stops the stack thread and waits for it; its host sockets close as it exits.
    /// (DNS worker threads busy in a host lookup finish it on their own, then exit.)
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.kick_stack();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("usernet: the stack thread panicked");
            }
        }
    }
}

impl fmt::Debug for UserNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserNet")
            .field("published", &self.published)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
