//! popek's process VM: run one riscv64 Linux program (static or dynamic ELF) in user mode on an
//! x86_64 Linux host, like `qemu-riscv64`, but with every path the guest names confined to a root
//! directory (`openat2(2)` with `RESOLVE_IN_ROOT`).
//!
//! The guest's address space is one host reservation: guest address `g` lives at host
//! `base + g`, so guest buffers go to host syscalls without copying. Guest threads are host
//! threads, each with its own [`popek_cpu::Hart`] over the shared memory; `fork` is a host fork;
//! `execve` re-executes popek itself.

mod elf;
mod fs;
mod mm;
mod names;
mod pids;
mod process;
mod signal;
mod stats;
mod syscall;

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;

pub use names::syscall_name;

/// What to run and how: the parsed `popek exec` command line.
#[derive(Clone, Debug, Default)]
pub struct ExecConfig {
    /// The directory every guest path resolves in (the guest's `/`).
    pub root: PathBuf,
    /// The guest's environment, `K=V` strings in order.
    pub env: Vec<OsString>,
    /// Let the guest create sockets.
    pub allow_net: bool,
    /// The program, as a path inside `root` (relative paths start at the guest's working
    /// directory; a bare name is looked up in the guest's PATH).
    pub prog: OsString,
    /// Arguments after the program name.
    pub args: Vec<OsString>,
    /// `argv[0]` if it differs from `prog` (execve passes it through).
    pub argv0: Option<OsString>,
    /// The most memory the guest's writable mappings may take, in bytes (`--memory`); past it
    /// the guest gets ENOMEM.
    pub memory_limit: u64,
    /// Descriptors above 2 the caller passes to the program (`--pass-fd`); all others are
    /// closed before the program starts.
    pub pass_fds: Vec<i32>,
    /// Set when a guest's execve re-executed popek: the host pid of the guest's first process.
    /// Such a popek is already jailed and its descriptors are the guest's own.
    pub guest_root: Option<i32>,
    /// `--gdb`: the program's first thread waits for gdb before its first instruction.
    pub debug: Option<ExecDebug>,
    /// `--engine`: what runs guest code (each thread gets its own JIT code cache).
    pub engine: popek_jit::EngineConfig,
    /// `--stats`: print the guest's instruction and JIT counts on stderr when each of its
    /// process images ends.
    pub stats: bool,
}

/// The debugger of a process VM: the hub the first guest thread runs under and the listener
/// (bound before the jail; its descriptor must be in [`ExecConfig::pass_fds`]), served from a
/// thread started once the process is jailed.
#[derive(Clone, Debug)]
pub struct ExecDebug {
    /// Where the first thread parks while gdb has it stopped.
    pub hub: std::sync::Arc<popek_gdb::DebugHub>,
    /// Taken by [`exec`] to start the gdb thread.
    pub listener: std::sync::Arc<std::sync::Mutex<Option<popek_gdb::GdbListener>>>,
}

impl ExecDebug {
    /// Tell gdb the program ended with `code` (before the process exits).
    pub(crate) fn exited(&self, code: i32) {
        self.hub.exited((code & 0xff) as u8);
    }
}

/// The default `--memory` of `popek exec`: 4 GiB of writable mappings per guest process.
pub const DEFAULT_MEMORY_LIMIT: u64 = 4 << 30;

/// Why a program could not be started. Each one prints as a single line naming the program.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The root directory does not exist or cannot be opened.
    #[error("{root}: cannot open the root directory: {source}")]
    RootMissing {
        /// The root as given.
        root: String,
        /// Why it could not be opened.
        source: io::Error,
    },
    /// The program is not in the root.
    #[error("{prog}: no such file in {root}")]
    NotFound {
        /// The program as given.
        prog: String,
        /// The root.
        root: String,
    },
    /// The program exists but cannot be read or executed.
    #[error("{prog}: {source}")]
    Io {
        /// The program.
        prog: String,
        /// What went wrong.
        source: io::Error,
    },
    /// The file is not an ELF executable (nor a `#!` script).
    #[error("{prog}: not an ELF executable")]
    NotElf {
        /// The program.
        prog: String,
    },
    /// An ELF file for another machine.
    #[error("{prog}: {what} program: popek exec runs only 64-bit RISC-V (riscv64) programs")]
    WrongArch {
        /// The program.
        prog: String,
        /// What it is, e.g. "x86-64".
        what: String,
    },
    /// A malformed ELF file.
    #[error("{prog}: malformed ELF file: {why}")]
    BadElf {
        /// The program.
        prog: String,
        /// What is wrong with it.
        why: String,
    },
    /// The dynamic loader named by PT_INTERP is not in the root.
    #[error(
        "{prog}: needs {interp} which is not in {root}: give --root with the program's sysroot"
    )]
    InterpMissing {
        /// The program.
        prog: String,
        /// The interpreter path.
        interp: String,
        /// The root.
        root: String,
    },
    /// The program's writable segments and stack need more than the memory limit.
    #[error("{prog}: its writable segments and stack do not fit in --memory {limit}: give a larger --memory")]
    MemoryLimit {
        /// The program.
        prog: String,
        /// The limit, as the user would write it ("1M", "300K").
        limit: String,
    },
    /// The host refused the guest address space or another resource.
    #[error("cannot set up the process: {0}")]
    Host(io::Error),
    /// The jail (seccomp, Landlock, descriptors) could not be set up.
    #[error("cannot set up the sandbox: {0}")]
    Jail(#[from] popek_jail::JailError),
}

impl Error {
    /// The error for a failed mapping of `prog`'s memory when the process starts: ENOMEM is
    /// the memory limit's doing (`limit` bytes), anything else the host's.
    pub(crate) fn mapping(prog: &str, limit: u64, e: Errno) -> Error {
        if e.0 != libc::ENOMEM {
            return Error::Io {
                prog: prog.into(),
                source: io::Error::from_raw_os_error(e.0),
            };
        }
        let limit = if limit.is_multiple_of(1 << 20) {
            format!("{}M", limit >> 20)
        } else {
            format!("{}K", limit.div_ceil(1024))
        };
        Error::MemoryLimit {
            prog: prog.into(),
            limit,
        }
    }

    /// The exit status popek reports for this error: 127 for a missing file, 126 for a file that
    /// cannot be run (as shells do), 1 otherwise.
    pub fn exit_status(&self) -> u8 {
        match self {
            Error::NotFound { .. } | Error::InterpMissing { .. } | Error::RootMissing { .. } => 127,
            Error::NotElf { .. }
            | Error::WrongArch { .. }
            | Error::BadElf { .. }
            | Error::MemoryLimit { .. }
            | Error::Io { .. } => 126,
            Error::Host(_) | Error::Jail(_) => 1,
        }
    }
}

/// A guest-visible error number (positive `errno` value; syscalls return its negation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    /// The host's `errno` after a failed libc call.
    pub fn last() -> Errno {
        Errno(
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        )
    }
}

/// Exit status of popek when the guest makes a syscall popek does not implement (EX_OSERR).
pub const EXIT_UNSUPPORTED: i32 = 71;

/// Run the program. Never returns once the guest has started: popek's process exits with the
/// guest's status (or dies of the guest's fatal signal). Returns only if the program cannot be
/// loaded.
pub fn exec(config: ExecConfig) -> Result<std::convert::Infallible, Error> {
    process::start(config)
}
