//! The board's errors: each message names the thing and the fix.

use std::path::PathBuf;

/// Everything that can stop a machine from being built or run.
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    /// A disk image could not be used.
    #[error(transparent)]
    Disk(#[from] popek_virtio::blk::BlockError),
    /// The user-mode network could not start (e.g. a --publish port is taken).
    #[error(transparent)]
    UserNet(#[from] popek_usernet::UserNetError),
    /// A tap device could not be opened.
    #[error(transparent)]
    Tap(#[from] popek_virtio::tap::TapError),
    /// The vsock device's host socket could not be set up.
    #[error(transparent)]
    Vsock(#[from] popek_virtio::vsock::VsockError),
    /// More virtio devices than the board has slots.
    #[error("too many virtio devices: the board has {0} slots (disks, network, entropy, vsock together)")]
    TooManyDevices(usize),
    /// An image file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The image is empty.
    #[error("{} is empty: give a RISC-V ELF or a flat binary image", .0.display())]
    Empty(PathBuf),
    /// The file claims to be an ELF but isn't a valid one.
    #[error("{} is not a valid ELF file: {reason}", path.display())]
    BadElf {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file is not an ELF though its name says so.
    #[error("{} is not an ELF file (no ELF header); for a raw image, name it *.bin", .0.display())]
    NotElf(PathBuf),
    /// An ELF for another machine.
    #[error("{} is an ELF for {machine}, not RISC-V: build it for riscv64 (e.g. riscv64-unknown-elf-gcc)", path.display())]
    WrongArch {
        /// The file.
        path: PathBuf,
        /// The machine it was built for.
        machine: String,
    },
    /// A 32-bit RISC-V ELF.
    #[error("{} is a 32-bit ELF; popek emulates RV64: build with -march=rv64gc -mabi=lp64d", .0.display())]
    WrongClass(PathBuf),
    /// An image that does not fit in RAM.
    #[error("{} does not fit in guest RAM: {what} at {start:#x}..{end:#x} is outside RAM {ram_start:#x}..{ram_end:#x}: raise --memory, or link the program for RAM at 0x80000000", path.display())]
    OutsideRam {
        /// The file.
        path: PathBuf,
        /// Which part (segment, image).
        what: String,
        /// First address.
        start: u64,
        /// End address.
        end: u64,
        /// RAM start.
        ram_start: u64,
        /// RAM end.
        ram_end: u64,
    },
    /// A kernel file that popek cannot boot.
    #[error("{} is not a riscv64 kernel Image: it is {what}", path.display())]
    NotKernel {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        what: String,
    },
    /// No firmware to run before the kernel.
    #[error("no firmware to boot the kernel with: pass --bios fw_dynamic.bin (Debian's opensbi package) or build the default guest (guests/build-default)")]
    NoFirmware,
    /// Nothing to run at all.
    #[error(
        "nothing to run: give --bios PROG for a bare-metal program or --kernel IMAGE for Linux"
    )]
    NothingToRun,
    /// The pieces of the boot image overlap.
    #[error("{what} does not fit in {mib} MiB of guest RAM: raise --memory")]
    TooBigForRam {
        /// What did not fit.
        what: String,
        /// RAM size in MiB.
        mib: u64,
    },
    /// Unsupported CPU count.
    #[error("--cpus {0}: popek runs 1 to {1} harts")]
    BadCpus(u32, u32),
    /// Guest RAM size is unusable.
    #[error("--memory {} is too small: popek needs at least 1 MiB of guest RAM", crate::size::show_size(*.bytes))]
    MemoryTooSmall {
        /// The requested size in bytes.
        bytes: u64,
    },
    /// Guest RAM size larger than the host has.
    #[error("--memory {requested_mib} MiB is more than this host's {host_mib} MiB of RAM: choose a smaller --memory")]
    MemoryTooLarge {
        /// Requested MiB.
        requested_mib: u64,
        /// Host MiB.
        host_mib: u64,
    },
    /// Guest RAM size is not page-aligned.
    #[error("--memory must be a multiple of 4 KiB")]
    MemoryUnaligned,
    /// Guest RAM could not be mapped.
    #[error("cannot allocate {mib} MiB of guest RAM: {reason}")]
    Alloc {
        /// Requested MiB.
        mib: u64,
        /// The host's reason.
        reason: String,
    },
    /// The hart can make no progress.
    #[error("the guest is stuck: {trap} at pc {pc:#x} while entering its trap handler; the program ran off its code or into unmapped memory with no usable trap handler (mtvec {mtvec:#x})")]
    GuestStuck {
        /// The trap.
        trap: popek_cpu::Trap,
        /// Where.
        pc: u64,
        /// The M-mode trap vector.
        mtvec: u64,
    },
    /// `--engine verify` found the JIT and the interpreter disagreeing: a JIT bug.
    #[error("--engine verify, hart {hart}: {found}")]
    Divergence {
        /// The hart that ran the block.
        hart: usize,
        /// Where, and what differs.
        found: popek_jit::Divergence,
    },
    /// An exit a machine hart should never produce.
    #[error("internal error: unexpected hart exit {0}")]
    Internal(String),
    /// The guest never signalled that it was ready.
    #[error("the guest was not ready after {0} s (its console's last lines are above; --verbose shows all of it, --ready-timeout waits longer)")]
    NotReady(u64),
    /// popek's jail could not be set up.
    #[error("cannot set up the sandbox: {0}")]
    Jail(String),

    /// A copy-on-write disk's writes live only in this process: a snapshot would lose them.
    #[error("disk {} is copy-on-write: its writes live only in this process and a snapshot or migration would lose them; give the disk without ,cow (or restore with --write-disks) to save this machine", .0.display())]
    CowDiskNotSaved(PathBuf),
    /// The snapshot directory could not be created.
    #[error("cannot create the snapshot directory {}: {source} (give a path where popek may create a directory)", dir.display())]
    SnapshotDir {
        /// The directory.
        dir: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A snapshot file could not be read or written.
    #[error("snapshot {}: {source}", path.display())]
    SnapshotIo {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },

    /// A snapshot's saved state is damaged, from another version or of another machine.
    #[error("cannot restore {}: {source}", dir.display())]
    SnapshotState {
        /// The snapshot directory.
        dir: std::path::PathBuf,
        /// What is wrong.
        source: popek_persist::PersistError,
    },

    /// A snapshot's manifest is missing, unreadable or names something this restore cannot use.
    #[error("cannot restore {}: {reason}", dir.display())]
    SnapshotRefused {
        /// The snapshot directory.
        dir: std::path::PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },

    /// A live migration failed (the machine stays where it was).
    #[error("migration: {0}")]
    Migration(String),

    /// A migration failed after the source let go of a disk, and the source cannot take it
    /// back: the machine must not run on without it.
    #[error("migration failed and the disk cannot be taken back ({0}); the machine stops here (its RAM and disks are as the guest left them: start it again)")]
    DiskLost(String),

    /// This machine has a part that cannot be saved.
    #[error("cannot save this machine: {0}")]
    NotSaveable(String),
}

/// Why a command-line value (a size, a MAC address, a `--disk` or `--vsock` argument) was
/// refused; each message shows the form that is accepted. clap prints it after the argument.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A size that is not a number with an optional unit suffix.
    #[error("bad size '{0}': use a number of MiB, or one with a B, K, M, G or T suffix")]
    BadSize(String),
    /// A size beyond 2^64 bytes.
    #[error("size '{0}' is too large")]
    SizeTooLarge(String),
    /// Not six colon-separated hex bytes.
    #[error("'{0}' is not a MAC address (like 52:54:00:12:34:56)")]
    BadMac(String),
    /// A group address, which no card may have.
    #[error("{0} is a multicast address; a card needs a unicast one (first byte even)")]
    MulticastMac(String),
    /// `--vsock` without a socket path.
    #[error("expected PATH[,cid=N], e.g. --vsock /tmp/vm.sock")]
    VsockPath,
    /// A `cid=` that is not a number.
    #[error("cid={0} is not a number (guest CIDs start at 3)")]
    VsockCid(String),
    /// A `--vsock` option other than `cid=`.
    #[error("unknown vsock option '{0}' (the only option is cid=)")]
    VsockOption(String),
    /// `--disk` without an image path.
    #[error("expected PATH[,readonly|,cow], e.g. --disk debian.img or --disk data.img,readonly")]
    DiskPath,
    /// A `--disk` option other than `readonly` or `cow`.
    #[error("unknown disk option '{0}' (the options are readonly and cow)")]
    DiskOption(String),
}

#[cfg(test)]
mod tests {
    use crate::machine::{parse_mac, DiskConfig, VsockConfig};

    #[test]
    fn parse_errors_show_the_accepted_form() {
        let err = |r: Result<(), super::ParseError>| r.unwrap_err().to_string();
        let cases = [
            (
                err(parse_mac("52:54:00").map(drop)),
                "'52:54:00' is not a MAC address (like 52:54:00:12:34:56)",
            ),
            (
                err(parse_mac("01:00:5e:00:00:01").map(drop)),
                "01:00:5e:00:00:01 is a multicast address; a card needs a unicast one (first byte even)",
            ),
            (
                err("".parse::<DiskConfig>().map(drop)),
                "expected PATH[,readonly|,cow], e.g. --disk debian.img or --disk data.img,readonly",
            ),
            (
                err("d.img,fast".parse::<DiskConfig>().map(drop)),
                "unknown disk option 'fast' (the options are readonly and cow)",
            ),
            (
                err(",cid=3".parse::<VsockConfig>().map(drop)),
                "expected PATH[,cid=N], e.g. --vsock /tmp/vm.sock",
            ),
            (
                err("v.sock,cid=x".parse::<VsockConfig>().map(drop)),
                "cid=x is not a number (guest CIDs start at 3)",
            ),
            (
                err("v.sock,port=1".parse::<VsockConfig>().map(drop)),
                "unknown vsock option 'port=1' (the only option is cid=)",
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }
}
