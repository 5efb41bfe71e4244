//! A host tap device as a [`NetBackend`]: the guest's frames appear on a host interface, for
//! bridged setups (`--net tap=NAME`).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

use crate::net::NetBackend;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

/// Why a tap device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name does not fit an interface name.
    #[error("tap name '{0}' is not a valid interface name (1 to 15 bytes, no '/', ' ' or NUL)")]
    BadName(String),
    /// /dev/net/tun could not be opened.
    #[error("cannot open /dev/net/tun for tap {name}: {source} (load the tun module, and run as root or with CAP_NET_ADMIN)")]
    Open {
        /// The tap.
        name: String,
        /// What the host said.
        source: std::io::Error,
    },
    /// Another process holds the interface: a tap carries one machine's frames.
    #[error("tap {0} is in use by another process (another popek, or another restore of the same snapshot): give each machine a tap of its own")]
    Busy(String),
    /// The kernel refused to attach to the interface.
    #[error("cannot attach to tap {name}: {source} (create it first: ip tuntap add {name} mode tap user $USER; run as root or with CAP_NET_ADMIN)")]
    Attach {
        /// The tap.
        name: String,
        /// What the host said.
        source: std::io::Error,
    },
}

/// An open tap interface.
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attach to (or create, if allowed) the tap interface `name`.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
            return Err(TapError::BadName(name.to_string()));
        }
        let path = c"/dev/net/tun";
        // SAFETY: opening a path from a NUL-terminated literal; the descriptor is owned below.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(TapError::Open {
                name: name.to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `fd` was just opened and nothing else owns it.
        let file = unsafe { File::from_raw_fd(fd) };
        #[repr(C)]
        struct IfReq {
            name: [u8; 16],
            flags: libc::c_short,
            pad: [u8; 22],
        }
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI,
            pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads (and may update) a `struct ifreq`, which IfReq lays out.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) };
        if rc < 0 {
            let source = std::io::Error::last_os_error();
            if source.raw_os_error() == Some(libc::EBUSY) {
                return Err(TapError::Busy(name.to_string()));
            }
            return Err(TapError::Attach {
                name: name.to_string(),
                source,
            });
        }
        Ok(Tap {
            file,
            name: name.to_string(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl NetBackend for Tap {
    fn send(&mut self, frame: &[u8]) {
        if let Err(e) = self.file.write(frame) {
            // A tap that is down or full drops frames, as a cable would.
            tracing::debug!("tap {}: frame dropped: {e}", self.name);
        }
    }

    fn recv(&mut self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65536];
        match self.file.read(&mut buf) {
            Ok(n) if n > 0 => {
                buf.truncate(n);
                Some(buf)
            }
            _ => None,
        }
    }

    fn wake_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
