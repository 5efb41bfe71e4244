//! What a machine is built from: [`MachineConfig`] and the options it gathers (disks, network,
//! vsock), with their command-line parsing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::ParseError;

/// What to build.
#[derive(Clone, Debug, Default)]
pub struct MachineConfig {
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Number of harts.
    pub cpus: u32,
    /// Firmware (or a bare-metal program) run in M-mode from the start of RAM (`--bios`).
    pub bios: Option<PathBuf>,
    /// Linux kernel `Image`, started in S-mode by the firmware.
    pub kernel: Option<PathBuf>,
    /// Initial RAM disk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub append: String,
    /// virtio-blk disks, in slot order (the first is the guest's `/dev/vda`).
    pub disks: Vec<DiskConfig>,
    /// Whether the machine has a virtio-rng entropy source.
    pub rng: bool,
    /// The virtio-net card, if any.
    pub net: Option<NetConfig>,
    /// The virtio-vsock device, if any.
    pub vsock: Option<VsockConfig>,
    /// Confine popek's own threads (seccomp, Landlock; see [`crate::jail`]): the console
    /// reader and the user network's threads from their start, the rest at [`Machine::run`].
    pub jail: bool,
    /// Give the guest three output-only virtio consoles: its /dev/hvc0 and /dev/hvc1 write to
    /// popek's stdout and stderr (how `popek run -- CMD` returns CMD's output exactly), and a
    /// line on /dev/hvc2 is CMD's exit status, which stops the machine (see
    /// [`crate::command_status`]).
    pub command_output: bool,
    /// Hold the UART console's output until the guest signals it is ready (then drop it), and
    /// stop with [`BoardError::NotReady`] if that takes longer than this (`popek run -- CMD`
    /// without `--verbose`).
    pub quiet_boot: Option<Duration>,
    /// A debugger's hold on the harts (`--gdb`): the hart loops hand their slices to it while
    /// it is engaged.
    pub debug: Option<Arc<popek_gdb::DebugHub>>,
    /// Stop with [`RunOutcome::Ready`] once the guest has signalled it is ready and then gone
    /// idle (every hart waiting for an interrupt), or [`READY_SETTLE`] after the signal if it
    /// never does: `popek snapshot create` saves the machine then. Saved idle, the guest has
    /// finished what it did after the signal (the default guest: the program that signalled
    /// has exited, and init waits for the command on the console), so no restored clone
    /// repeats that work.
    pub stop_when_ready: bool,
    /// What runs guest code (`--engine`): the interpreter, or the JIT (one code cache per hart).
    pub engine: popek_jit::EngineConfig,
    /// On a restore: the guest writes the snapshot's writable disks in place. By default a
    /// restored guest writes them copy-on-write, so the snapshot stays restorable and clones
    /// started from it do not see (or corrupt) each other's writes.
    pub restore_writes_disks: bool,
    /// On a restore: share decoded guest code with the other restores of the same snapshot
    /// that run at the same time with this option (see the shared_decode module): they start
    /// faster and take less memory, but each can change the code the others run, so a guest
    /// that broke out of one of them could take over the others. Off unless asked.
    pub restore_shares_decode: bool,
    /// Keep console input from the UART until the guest signals it is ready (its boot timer):
    /// Linux's 8250 driver reads received bytes and drops them while it starts the port, so
    /// input piped or typed during the boot lost characters. Only for guests known to signal
    /// (the default guest); others would never get their input.
    pub hold_input_until_ready: bool,
    /// A guest reset ends the run ([`RunOutcome::Reset`]) instead of booting again: for
    /// `popek run -- CMD`, where a reboot means CMD will not finish (the kernel reboots on a
    /// panic with `panic=-1` on its command line, instead of hanging).
    pub stop_on_reset: bool,
}

/// A vsock device whose host side is a unix socket (Firecracker's convention: a host client
/// connects to `path` and writes `CONNECT <port>`; the guest's connections to host port P go
/// to the listener at `<path>_<P>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context ID (3 or more).
    pub cid: u64,
    /// The host socket.
    pub path: PathBuf,
}

impl std::str::FromStr for VsockConfig {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<VsockConfig, ParseError> {
        let mut parts = s.split(',');
        let path = parts.next().unwrap_or_default();
        if path.is_empty() {
            return Err(ParseError::VsockPath);
        }
        let mut v = VsockConfig {
            cid: 3,
            path: PathBuf::from(path),
        };
        for opt in parts {
            match opt.strip_prefix("cid=") {
                Some(n) => v.cid = n.parse().map_err(|_| ParseError::VsockCid(n.to_string()))?,
                None => return Err(ParseError::VsockOption(opt.to_string())),
            }
        }
        Ok(v)
    }
}

/// A network card and what it is connected to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The card's MAC address.
    pub mac: [u8; 6],
    /// Where its frames go.
    pub backend: NetBackendConfig,
}

/// The host side of a network card.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetBackendConfig {
    /// popek's user-mode stack (NAT, DHCP, DNS), with these host ports forwarded to the guest.
    User {
        /// `--publish` forwards.
        publish: Vec<popek_usernet::Publish>,
    },
    /// A host tap interface.
    Tap {
        /// Its name.
        name: String,
    },
}

/// The MAC address cards get unless told otherwise (QEMU's default).
pub const DEFAULT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// Parse `52:54:00:12:34:56`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], ParseError> {
    let parts: Vec<&str> = s.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return Err(ParseError::BadMac(s.to_string()));
    }
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).map_err(|_| ParseError::BadMac(s.to_string()))?;
    }
    if mac[0] & 1 != 0 {
        return Err(ParseError::MulticastMac(s.to_string()));
    }
    Ok(mac)
}

/// One `--disk PATH[,readonly|,cow]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// Raw image file (or block device).
    pub path: PathBuf,
    /// The guest may not write it.
    pub readonly: bool,
    /// The guest writes a private copy-on-write overlay, discarded at exit: the image never
    /// changes and other VMs may share it (restored clones do this unless told otherwise).
    pub cow: bool,
    /// The disk comes with a machine migrating in: opened without its lock, which the source
    /// holds until it stops and then hands over (see [`Machine::take_over_disks`]).
    pub handed_over: bool,
}

impl std::str::FromStr for DiskConfig {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<DiskConfig, ParseError> {
        let mut parts = s.split(',');
        let path = parts.next().unwrap_or_default();
        if path.is_empty() {
            return Err(ParseError::DiskPath);
        }
        let mut disk = DiskConfig {
            path: PathBuf::from(path),
            readonly: false,
            cow: false,
            handed_over: false,
        };
        for opt in parts {
            match opt {
                "readonly" | "ro" | "readonly=on" => disk.readonly = true,
                "readonly=off" | "rw" => disk.readonly = false,
                "cow" => disk.cow = true,
                other => return Err(ParseError::DiskOption(other.to_string())),
            }
        }
        Ok(disk)
    }
}

impl MachineConfig {
    /// Number of virtio-mmio transports the configuration asks for.
    pub fn virtio_devices(&self) -> usize {
        self.disks.len()
            + self.net.is_some() as usize
            + self.rng as usize
            + self.vsock.is_some() as usize
            + 3 * self.command_output as usize
    }
}

/// Most harts a machine may have.
pub const MAX_CPUS: u32 = 32;
