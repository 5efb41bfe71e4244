//! A test guest: a second `smoltcp` interface (with its own DHCP client, DNS client, TCP and
//! UDP sockets) wired to a [`UserNet`] through `send`/`recv`, waiting on `wake_fd` as a
//! virtio-net device would.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::{dhcpv4, dns};
use smoltcp::wire::{
    DnsQueryType, EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address, Ipv4Cidr,
};

use crate::UserNet;

/// The guest NIC: frames in from the network, frames out to it.
#[derive(Default)]
pub struct GuestDev {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: Vec<Vec<u8>>,
}

pub struct Rx(Vec<u8>);
pub struct Tx<'a>(&'a mut Vec<Vec<u8>>);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0; len];
        let r = f(&mut b);
        self.0.push(b);
        r
    }
}

impl Device for GuestDev {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(Rx, Tx<'_>)> {
        let f = self.rx.pop_front()?;
        Some((Rx(f), Tx(&mut self.tx)))
    }
    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

pub struct Guest {
    pub net: UserNet,
    pub iface: Interface,
    pub dev: GuestDev,
    pub sockets: SocketSet<'static>,
    epoch: Instant,
    /// Every frame the guest sent, when recording (the robustness test mutates them).
    pub record: Option<Vec<Vec<u8>>>,
    /// The DHCP client (smoltcp feeds DHCP to the first DHCP socket only, so there is one).
    dhcp: Option<SocketHandle>,
    /// The DNS client (likewise, the first DNS socket takes every answer).
    dns: Option<SocketHandle>,
}

impl Guest {
    pub fn new(net: UserNet) -> Guest {
        super::init_log();
        let mut dev = GuestDev::default();
        let cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(
            crate::DEFAULT_GUEST_MAC,
        )));
        let iface = Interface::new(cfg, &mut dev, smoltcp::time::Instant::ZERO);
        Guest {
            net,
            iface,
            dev,
            sockets: SocketSet::new(vec![]),
            epoch: Instant::now(),
            record: None,
            dhcp: None,
            dns: None,
        }
    }

    pub fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// One turn: frames from the network in, the guest stack, frames out, then a wait on
    /// `wake_fd` (at most until the guest's next timer, capped at 5 ms so test logic runs).
    pub fn step(&mut self) {
        while let Some(f) = self.net.recv() {
            self.dev.rx.push_back(f);
        }
        let now = self.now();
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        for f in self.dev.tx.drain(..) {
            if let Some(r) = &mut self.record {
                r.push(f.clone());
            }
            self.net.send(&f);
        }
        let delay = self
            .iface
            .poll_delay(self.now(), &self.sockets)
            .map_or(5, |d| d.total_millis().min(5)) as i32;
        let mut p = libc::pollfd {
            fd: self.net.wake_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `p` is a valid pollfd for the duration of the call, and nfds is 1.
        unsafe { libc::poll(&mut p, 1, delay) };
    }

    /// Steps until `f` gives a value; panics after `timeout`.
    pub fn run_until<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&mut Guest) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            self.step();
            if let Some(v) = f(self) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
        }
    }

    /// Gets an address by DHCP (again, if it has one) and configures the interface with it;
    /// returns the lease.
    pub fn dhcp(&mut self) -> (Ipv4Cidr, Option<Ipv4Address>, Vec<Ipv4Address>) {
        let h = match self.dhcp {
            Some(h) => {
                self.sockets.get_mut::<dhcpv4::Socket>(h).reset();
                h
            }
            None => *self.dhcp.insert(self.sockets.add(dhcpv4::Socket::new())),
        };
        let lease = self.run_until("a DHCP lease", Duration::from_secs(10), |g| {
            match g.sockets.get_mut::<dhcpv4::Socket>(h).poll() {
                Some(dhcpv4::Event::Configured(c)) => Some((
                    c.address,
                    c.router,
                    c.dns_servers.iter().copied().collect::<Vec<_>>(),
                )),
                _ => None,
            }
        });
        self.iface.update_ip_addrs(|a| {
            a.clear();
            a.push(IpCidr::Ipv4(lease.0)).unwrap();
        });
        if let Some(r) = lease.1 {
            self.iface.routes_mut().add_default_ipv4_route(r).unwrap();
        }
        lease
    }

    /// Resolves `name` (A records) through the DNS server the lease named, 10.0.2.3.
    pub fn resolve(&mut self, name: &str) -> Vec<IpAddress> {
        let h = *self.dns.get_or_insert_with(|| {
            let servers = [IpAddress::Ipv4(crate::DNS_ADDR)];
            self.sockets.add(dns::Socket::new(&servers, vec![]))
        });
        let q = self
            .sockets
            .get_mut::<dns::Socket>(h)
            .start_query(self.iface.context(), name, DnsQueryType::A)
            .unwrap();
        self.run_until("a DNS answer", Duration::from_secs(10), |g| {
            match g.sockets.get_mut::<dns::Socket>(h).get_query_result(q) {
                Ok(a) => Some(a.to_vec()),
                Err(dns::GetQueryResultError::Pending) => None,
                Err(e) => panic!("DNS query for {name} failed: {e:?}"),
            }
        })
    }
}
