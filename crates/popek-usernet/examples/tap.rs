//! Bridges a Linux TAP device to a [`UserNet`], the way popek's virtio-net device uses it:
//! poll the NIC side and `wake_fd` together, `send` what the "guest" transmits, and `recv`
//! until `None` when `wake_fd` is readable.
//!
//! With the TAP device moved into a network namespace, that namespace's real Linux network
//! stack plays the guest, which checks the stack against real clients (busybox udhcpc,
//! systemd-networkd, the kernel's TCP): see `examples/tap-netns-check.sh`. Needs root.
//!
//! ```text
//! cargo run --release -p popek-usernet --example tap -- TAPNAME [HOST_PORT:GUEST_PORT ...]
//! ```

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use popek_usernet::{Publish, UserNet, UserNetConfig};

/// Opens (creating) the TAP device `name`, without packet information headers.
fn open_tap(name: &str) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain old data (a name and a union of integers and pointers that the
    // kernel ignores for TUNSETIFF); all-zero bytes are a valid value of it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: `file` is an open /dev/net/tun fd and `req` a valid, exclusively borrowed ifreq
    // that TUNSETIFF reads and writes for the duration of the call only.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let name = args
        .next()
        .ok_or("usage: tap TAPNAME [HOST_PORT:GUEST_PORT ...]")?;
    let publish = args
        .map(|a| a.parse::<Publish>())
        .collect::<Result<Vec<_>, _>>()?;
    let mut tap = open_tap(&name)?;
    let net = UserNet::start(UserNetConfig {
        publish,
        ..Default::default()
    })?;
    eprintln!("tap: {name} bridged; published {:?}", net.published_addrs());
    let mut buf = vec![0u8; 65536];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: tap.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: net.wake_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd structs for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        // The "guest" transmitted: hand every frame to the stack.
        loop {
            match tap.read(&mut buf) {
                Ok(n) => net.send(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
        // Frames for the "guest": take them all (this also clears wake_fd).
        while let Some(f) = net.recv() {
            if let Err(e) = tap.write(&f) {
                // A full TAP queue drops the frame, like a NIC without receive buffers.
                eprintln!("tap: dropped a frame: {e}");
            }
        }
    }
}
