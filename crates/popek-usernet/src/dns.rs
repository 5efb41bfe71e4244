//! The DNS server at 10.0.2.3:53/udp: it parses the guest's query, resolves the name with the
//! host's resolver (getaddrinfo, so /etc/hosts and the host's DNS settings apply) on worker
//! threads, and answers. A queries get A records; AAAA queries get an empty answer (the
//! guest network is IPv4 only); other types an empty answer; a name the host can't resolve
//! NXDOMAIN (SERVFAIL when the host's resolver only failed for now).

use std::io;
use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};

use smoltcp::wire::EthernetAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::frame::Ep;

/// The DNS server's port.
pub(crate) const PORT: u16 = 53;

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;
const RCODE_NOERROR: u8 = 0;
const RCODE_FORMERR: u8 = 1;
const RCODE_SERVFAIL: u8 = 2;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_NOTIMP: u8 = 4;
/// Answers' time to live: short, the host's view may change.
const TTL: u32 = 60;
/// Classic DNS-over-UDP size limit (the server doesn't do EDNS).
const MAX_UDP_RESPONSE: usize = 512;
const HEADER_LEN: usize = 12;
/// Worker threads for host lookups, so one slow name doesn't hold up the others.
const WORKERS: usize = 4;
/// Lookups waiting for a worker; more get SERVFAIL.
const QUEUE: usize = 64;

/// A question the server will answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Query {
    id: u16,
    /// The client's recursion-desired bit, echoed.
    rd: bool,
    /// The question section as sent (name, type, class), echoed in the response.
    question: Vec<u8>,
    /// The name in dotted form without the final dot.
    pub name: String,
    pub qtype: u16,
}

/// What to do with a datagram sent to the DNS server.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// Look the name up on the host, then answer with [`response`].
    Resolve(Query),
    /// Answer now with this message.
    Reply(Vec<u8>),
    /// Not a query (or too broken to answer).
    Ignore,
}

/// The outcome of a host lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    Found(Vec<IpAddr>),
    NotFound,
    /// The host's resolver failed for now (no network, server down).
    TryAgain,
}

/// A header-only response (no question), for messages whose question can't be echoed.
fn bare(id: u16, flags: u16, rcode: u8) -> Vec<u8> {
    let opcode_rd = flags & 0x7900; // opcode and RD
    let f = 0x8000 | opcode_rd | 0x0080 | u16::from(rcode);
    let mut m = Vec::with_capacity(HEADER_LEN);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&f.to_be_bytes());
    m.extend_from_slice(&[0; 8]);
    m
}

/// Parses a datagram sent to the server.
pub(crate) fn parse_query(msg: &[u8]) -> Parsed {
    if msg.len() < HEADER_LEN {
        return Parsed::Ignore;
    }
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    let qdcount = u16::from_be_bytes([msg[4], msg[5]]);
    if flags & 0x8000 != 0 {
        return Parsed::Ignore; // a response
    }
    let opcode = (flags >> 11) & 0xf;
    if opcode != 0 {
        return Parsed::Reply(bare(id, flags, RCODE_NOTIMP));
    }
    match qdcount {
        1 => {}
        0 => return Parsed::Reply(bare(id, flags, RCODE_FORMERR)),
        _ => return Parsed::Reply(bare(id, flags, RCODE_NOTIMP)),
    }
    // The name: uncompressed labels (a query has nothing to point back to).
    let mut at = HEADER_LEN;
    let mut name = String::new();
    let mut plausible = true;
    loop {
        let Some(&len) = msg.get(at) else {
            return Parsed::Reply(bare(id, flags, RCODE_FORMERR));
        };
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return Parsed::Reply(bare(id, flags, RCODE_FORMERR));
        }
        let Some(label) = msg.get(at..at + usize::from(len)) else {
            return Parsed::Reply(bare(id, flags, RCODE_FORMERR));
        };
        at += usize::from(len);
        if !name.is_empty() {
            name.push('.');
        }
        if name.len() + label.len() > 253 {
            return Parsed::Reply(bare(id, flags, RCODE_FORMERR));
        }
        for &c in label {
            // Host names only; anything else can't be in the host's resolver either.
            plausible &= c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
            name.push(if c.is_ascii_graphic() { c as char } else { '?' });
        }
    }
    let Some(tc) = msg.get(at..at + 4) else {
        return Parsed::Reply(bare(id, flags, RCODE_FORMERR));
    };
    let qtype = u16::from_be_bytes([tc[0], tc[1]]);
    let qclass = u16::from_be_bytes([tc[2], tc[3]]);
    let query = Query {
        id,
        rd: flags & 0x0100 != 0,
        question: msg[HEADER_LEN..at + 4].to_vec(),
        name,
        qtype,
    };
    if qclass != CLASS_IN {
        return Parsed::Reply(response_with(&query, RCODE_NOTIMP, &[]));
    }
    if query.name.is_empty() || !plausible {
        return Parsed::Reply(response(&query, &Lookup::NotFound));
    }
    match qtype {
        TYPE_A | TYPE_AAAA | TYPE_ANY => Parsed::Resolve(query),
        // MX, TXT, PTR, ...: nothing to say (NODATA), which ends the client's search quickly.
        _ => Parsed::Reply(response_with(&query, RCODE_NOERROR, &[])),
    }
}

fn response_with(q: &Query, rcode: u8, answers: &[Ipv4Addr]) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEADER_LEN + q.question.len() + 16 * answers.len());
    m.extend_from_slice(&q.id.to_be_bytes());
    let flags = 0x8000 | if q.rd { 0x0100 } else { 0 } | 0x0080 | u16::from(rcode);
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    m.extend_from_slice(&[0; 4]); // nscount, arcount
    m.extend_from_slice(&q.question);
    for a in answers {
        m.extend_from_slice(&[0xc0, HEADER_LEN as u8]); // pointer to the question's name
        m.extend_from_slice(&TYPE_A.to_be_bytes());
        m.extend_from_slice(&CLASS_IN.to_be_bytes());
        m.extend_from_slice(&TTL.to_be_bytes());
        m.extend_from_slice(&4u16.to_be_bytes());
        m.extend_from_slice(&a.octets());
    }
    m
}

/// The response to a query, given the host's lookup.
pub(crate) fn response(q: &Query, lookup: &Lookup) -> Vec<u8> {
    match lookup {
        Lookup::NotFound => response_with(q, RCODE_NXDOMAIN, &[]),
        Lookup::TryAgain => response_with(q, RCODE_SERVFAIL, &[]),
        Lookup::Found(addrs) => {
            let room = (MAX_UDP_RESPONSE - HEADER_LEN - q.question.len()) / 16;
            let mut v4: Vec<Ipv4Addr> = Vec::new();
            if q.qtype != TYPE_AAAA {
                for a in addrs {
                    if let IpAddr::V4(a) = a {
                        if !v4.contains(a) && v4.len() < room {
                            v4.push(*a);
                        }
                    }
                }
            }
            response_with(q, RCODE_NOERROR, &v4)
        }
    }
}

/// Resolves a name with the host's resolver (blocking: call it on a worker thread).
pub(crate) fn lookup_host(name: &str) -> Lookup {
    match (name, 0u16).to_socket_addrs() {
        Ok(addrs) => {
            let v: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
            if v.is_empty() {
                Lookup::NotFound
            } else {
                Lookup::Found(v)
            }
        }
        // std only keeps getaddrinfo's message; EAI_AGAIN's is this one (C locale).
        Err(e) if e.to_string().contains("Temporary failure") => Lookup::TryAgain,
        Err(_) => Lookup::NotFound,
    }
}

/// A lookup the stack asked for, and where the answer goes.
pub(crate) struct Job {
    pub query: Query,
    pub client_mac: EthernetAddress,
    pub client: Ep,
}

/// A finished lookup.
pub(crate) struct Done {
    pub job: Job,
    pub lookup: Lookup,
}

/// The pool of lookup threads. Finished lookups are collected with [`Resolver::take_done`]
/// when [`Resolver::fd`] is readable. Dropping it lets idle workers exit; a worker inside a
/// host lookup exits when that returns.
pub(crate) struct Resolver {
    jobs: SyncSender<Job>,
    done: Receiver<Done>,
    event: Arc<EventFd>,
}

impl Resolver {
    /// Starts the workers with a lookup function ([`lookup_host`] but in tests), each running
    /// `thread_start` first.
    pub fn start_with(
        lookup: fn(&str) -> Lookup,
        thread_start: Option<fn()>,
    ) -> io::Result<Resolver> {
        let (jobs, job_rx) = mpsc::sync_channel::<Job>(QUEUE);
        let (done_tx, done) = mpsc::channel::<Done>();
        let event = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let job_rx = Arc::new(Mutex::new(job_rx));
        for i in 0..WORKERS {
            let job_rx = Arc::clone(&job_rx);
            let done_tx = done_tx.clone();
            let event = Arc::clone(&event);
            std::thread::Builder::new()
                .name(format!("popek-usernet-dns{i}"))
                .spawn(move || {
                    if let Some(hook) = thread_start {
                        hook();
                    }
                    loop {
                        let job = {
                            let rx = job_rx.lock().unwrap_or_else(|e| e.into_inner());
                            match rx.recv() {
                                Ok(job) => job,
                                Err(_) => return, // the stack is gone
                            }
                        };
                        let result = lookup(&job.query.name);
                        tracing::debug!(name = %job.query.name, ?result, "usernet: DNS lookup");
                        if done_tx
                            .send(Done {
                                job,
                                lookup: result,
                            })
                            .is_err()
                        {
                            return;
                        }
                        let _ = event.write(1);
                    }
                })?;
        }
        Ok(Resolver { jobs, done, event })
    }

    /// Queues a lookup; gives the job back when too many are waiting.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(job)) | Err(TrySendError::Disconnected(job)) => Err(job),
        }
    }

    /// Finished lookups (clears the fd first, so one finishing meanwhile sets it again).
    pub fn take_done(&self) -> Vec<Done> {
        let _ = self.event.read();
        let mut v = Vec::new();
        loop {
            match self.done.try_recv() {
                Ok(d) => v.push(d),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => return v,
            }
        }
    }

    /// Readable when lookups finished.
    pub fn fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut m = vec![];
        m.extend_from_slice(&id.to_be_bytes());
        m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for l in name.split('.').filter(|l| !l.is_empty()) {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&CLASS_IN.to_be_bytes());
        m
    }

    fn rcode(m: &[u8]) -> u8 {
        m[3] & 0xf
    }

    fn ancount(m: &[u8]) -> u16 {
        u16::from_be_bytes([m[6], m[7]])
    }

    #[test]
    fn a_query_is_answered_with_the_host_addresses() {
        let msg = query(0xbeef, "example.test.", TYPE_A);
        let Parsed::Resolve(q) = parse_query(&msg) else {
            panic!()
        };
        assert_eq!(q.name, "example.test");
        let found = Lookup::Found(vec![
            "192.0.2.7".parse().unwrap(),
            "::1".parse().unwrap(),
            "192.0.2.7".parse().unwrap(),
            "192.0.2.8".parse().unwrap(),
        ]);
        let r = response(&q, &found);
        assert_eq!(&r[..2], &[0xbe, 0xef]);
        assert_eq!(r[2] & 0x80, 0x80, "QR");
        assert_eq!(r[2] & 0x01, 0x01, "RD echoed");
        assert_eq!(rcode(&r), RCODE_NOERROR);
        assert_eq!(ancount(&r), 2);
        // Question echoed, then two A records pointing at it.
        assert_eq!(&r[12..msg.len()], &msg[12..]);
        let a = &r[msg.len()..];
        assert_eq!(&a[..2], &[0xc0, 12]);
        assert_eq!(&a[12..16], &[192, 0, 2, 7]);
        assert_eq!(&a[16 + 12..16 + 16], &[192, 0, 2, 8]);
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn aaaa_gets_an_empty_answer_and_unknown_names_nxdomain() {
        let Parsed::Resolve(q) = parse_query(&query(1, "localhost", TYPE_AAAA)) else {
            panic!()
        };
        let r = response(&q, &Lookup::Found(vec!["127.0.0.1".parse().unwrap()]));
        assert_eq!((rcode(&r), ancount(&r)), (RCODE_NOERROR, 0));
        let r = response(&q, &Lookup::NotFound);
        assert_eq!((rcode(&r), ancount(&r)), (RCODE_NXDOMAIN, 0));
        let r = response(&q, &Lookup::TryAgain);
        assert_eq!(rcode(&r), RCODE_SERVFAIL);
    }

    #[test]
    fn other_types_opcodes_and_garbage() {
        // MX: NODATA straight away.
        let Parsed::Reply(r) = parse_query(&query(2, "example.test", 15)) else {
            panic!()
        };
        assert_eq!((rcode(&r), ancount(&r)), (RCODE_NOERROR, 0));
        // An inverse query (opcode 1): NOTIMP.
        let mut m = query(3, "example.test", TYPE_A);
        m[2] |= 1 << 3;
        let Parsed::Reply(r) = parse_query(&m) else {
            panic!()
        };
        assert_eq!(rcode(&r), RCODE_NOTIMP);
        // A name that can't be a host name: NXDOMAIN without asking the host.
        let Parsed::Reply(r) = parse_query(&query(4, "a b.test", TYPE_A)) else {
            panic!()
        };
        assert_eq!(rcode(&r), RCODE_NXDOMAIN);
        // Responses are ignored; truncations never panic.
        let mut m = query(5, "example.test", TYPE_A);
        m[2] |= 0x80;
        assert_eq!(parse_query(&m), Parsed::Ignore);
        let m = query(6, "example.test", TYPE_A);
        for n in 0..m.len() {
            assert!(!matches!(parse_query(&m[..n]), Parsed::Resolve(_)));
        }
        // A compression pointer in a query is refused.
        let mut m = query(7, "", TYPE_A);
        m.insert(12, 0xc0);
        let Parsed::Reply(r) = parse_query(&m) else {
            panic!()
        };
        assert_eq!(rcode(&r), RCODE_FORMERR);
    }

    #[test]
    fn localhost_resolves_on_the_host() {
        match lookup_host("localhost") {
            Lookup::Found(a) => assert!(a.iter().any(|a| a.is_loopback()), "{a:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn resolver_pool_runs_lookups_off_thread() {
        fn fake(name: &str) -> Lookup {
            if name == "slow" {
                std::thread::sleep(Duration::from_millis(300));
            }
            Lookup::NotFound
        }
        let r = Resolver::start_with(fake, None).unwrap();
        let job = |name: &str| {
            let Parsed::Resolve(query) = parse_query(&query(9, name, TYPE_A)) else {
                panic!()
            };
            Job {
                query,
                client_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
                client: (crate::GUEST_ADDR, 1000),
            }
        };
        assert!(r.submit(job("slow")).is_ok());
        assert!(r.submit(job("fast")).is_ok());
        let t0 = Instant::now();
        let mut names = vec![];
        while names.len() < 2 && t0.elapsed() < Duration::from_secs(5) {
            let mut p = libc::pollfd {
                fd: r.fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `p` is a valid pollfd for the duration of the call, and nfds is 1.
            unsafe { libc::poll(&mut p, 1, 1000) };
            names.extend(r.take_done().into_iter().map(|d| d.job.query.name));
        }
        // The fast name isn't held up by the slow one.
        assert_eq!(names, ["fast", "slow"]);
    }
}
