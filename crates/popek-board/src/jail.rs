//! `popek run` in popek's jail: each kind of thread gets its seccomp allow-list and its Landlock
//! rules once the machine is built (files opened, listeners bound), before the guest runs.
//!
//! - the main thread, then every hart and the virtio workers harts start: `Vmm`, reading only the
//!   boot images (a guest reset reloads them) and nothing else of the host's files;
//! - the user network's stack and DNS threads: `Net`, reading only the resolver's files and the
//!   library directories its NSS modules come from;
//! - the console reader: `Console`, no files at all.

use std::path::{Path, PathBuf};

use popek_jail::{FsRules, FsStatus, ThreadKind};

use crate::error::BoardError;
use crate::machine::MachineConfig;

/// End popek with a one-line message when a thread cannot be confined: running it unconfined
/// would be a silent hole.
fn or_die(kind: ThreadKind, r: Result<(), popek_jail::JailError>) {
    if let Err(e) = r {
        eprintln!("popek: error: {} thread: {e}", kind.name());
        std::process::exit(1);
    }
}

/// The files the host's resolver reads (getaddrinfo through the user network's DNS).
fn resolver_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = [
        "/etc/resolv.conf",
        "/etc/hosts",
        "/etc/nsswitch.conf",
        "/etc/host.conf",
        "/etc/gai.conf",
        "/etc/services",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    // resolv.conf is often a link into /run (systemd-resolved, resolvconf).
    if let Ok(real) = std::fs::canonicalize("/etc/resolv.conf") {
        v.push(real);
    }
    v
}

/// The hook the user network runs first on each of its threads.
pub fn net_thread() {
    let kind = ThreadKind::Net;
    let rules = FsRules {
        read: resolver_files(),
        // NSS modules (libnss_*) load on demand from the libraries' directories.
        exec: FsRules::self_exec_files(),
        ..FsRules::default()
    };
    or_die(kind, rules.apply().map(|_| ()));
    or_die(kind, popek_jail::restrict_thread(kind));
}

/// Run first on the console reader thread.
pub fn console_thread() {
    let kind = ThreadKind::Console;
    or_die(kind, FsRules::default().apply().map(|_| ()));
    or_die(kind, popek_jail::restrict_thread(kind));
}

/// Confine the calling (main) thread and everything it starts afterwards.
pub fn main_thread(config: &MachineConfig) -> Result<FsStatus, BoardError> {
    let jail = |e: popek_jail::JailError| BoardError::Jail(e.to_string());
    let mut read: Vec<PathBuf> = [&config.bios, &config.kernel, &config.initrd]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let mut read_write = Vec::new();
    for d in &config.disks {
        if d.readonly || d.cow {
            read.push(d.path.clone());
        } else {
            read_write.push(d.path.clone());
        }
    }
    let socket_dirs = config
        .vsock
        .iter()
        .filter_map(|v| v.path.parent())
        .map(|d| {
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            }
        })
        .map(Path::to_path_buf)
        .collect();
    let rules = FsRules {
        read,
        read_write,
        socket_dirs,
        // No guest reaches popek's signals or abstract sockets anyway; scoping costs nothing.
        scoped: true,
        ..FsRules::default()
    };
    let status = rules.apply().map_err(jail)?;
    popek_jail::restrict_thread(ThreadKind::Vmm).map_err(jail)?;
    Ok(status)
}
