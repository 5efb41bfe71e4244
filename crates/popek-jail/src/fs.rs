//! Landlock: the host file system as popek's command line named it, and no more.
//!
//! Rules are built for Landlock ABI 7 in the `landlock` crate's best-effort mode: on a kernel
//! with an older ABI the parts it lacks are dropped (signal and abstract-socket scoping need
//! ABI 6, Linux 6.12; TCP rules ABI 4), and on a kernel without Landlock nothing is enforced
//! (the seccomp filter and no-new-privileges still are); [`FsStatus`] says which happened.

use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

use crate::JailError;

/// The Landlock ABI the rules are written for.
const ABI_VERSION: ABI = ABI::V7;

/// What a set of rules lets popek reach. Paths that do not exist are skipped.
#[derive(Clone, Debug, Default)]
pub struct FsRules {
    /// Directories where everything but creating device nodes is allowed (the process VM's
    /// root).
    pub trees: Vec<PathBuf>,
    /// Files and directories to read (boot images, the resolver's configuration).
    pub read: Vec<PathBuf>,
    /// Files to read and execute (popek itself and the libraries its loader maps, for a
    /// guest's execve).
    pub exec: Vec<PathBuf>,
    /// Files to read and write (disk images).
    pub read_write: Vec<PathBuf>,
    /// Device files to read, write and control (the host's /dev/null, /dev/tty... that the
    /// process VM lends a root without a /dev of its own).
    pub devices: Vec<PathBuf>,
    /// Directories where popek made unix sockets (vsock's host side): it may remove them at exit.
    pub socket_dirs: Vec<PathBuf>,
    /// Refuse TCP bind and connect (where the kernel can: Landlock ABI 4).
    pub deny_tcp: bool,
    /// Signals only to processes in the same sandbox, abstract unix sockets only inside it
    /// (Landlock ABI 6).
    pub scoped: bool,
}

/// How much of the rules the host kernel enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsStatus {
    /// All of them.
    Full,
    /// Some: the kernel's Landlock ABI is older than the rules'.
    Partial,
    /// None: the kernel has no Landlock (or it is disabled).
    NotEnforced,
}

impl FsRules {
    /// What a re-executed popek needs to start: its own executable, the directories of the
    /// libraries it has mapped (its loader, libc...) and the loader's cache.
    pub fn self_exec_files() -> Vec<PathBuf> {
        let exe = std::env::current_exe().ok();
        // The libraries' directories rather than each library: fewer rules to install (popek
        // exec's start-up pays for each), and those directories hold only system libraries.
        let mut out: Vec<PathBuf> = std::fs::read_to_string("/proc/self/maps")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .filter(|p| p.starts_with('/'))
            .map(PathBuf::from)
            .filter(|p| Some(p) != exe.as_ref())
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .collect();
        out.extend(exe);
        out.push(PathBuf::from("/etc/ld.so.cache"));
        out.sort();
        out.dedup();
        out
    }

    /// Enforce the rules on the calling thread and everything it starts from now on.
    pub fn apply(&self) -> Result<FsStatus, JailError> {
        let err = |e: &dyn std::fmt::Display| JailError::Landlock(e.to_string());
        let abi = ABI_VERSION;
        let all = AccessFs::from_all(abi);
        let mut ruleset = Ruleset::default().handle_access(all).map_err(|e| err(&e))?;
        if self.deny_tcp {
            ruleset = ruleset
                .handle_access(AccessNet::from_all(abi))
                .map_err(|e| err(&e))?;
        }
        if self.scoped {
            ruleset = ruleset.scope(Scope::from_all(abi)).map_err(|e| err(&e))?;
        }
        let mut created = ruleset.create().map_err(|e| err(&e))?;
        let file = AccessFs::from_file(abi);
        let groups: [(&[PathBuf], BitFlags<AccessFs>); 6] = [
            (
                &self.trees,
                all & !(AccessFs::MakeChar | AccessFs::MakeBlock),
            ),
            (&self.read, AccessFs::from_read(abi)),
            (&self.exec, (AccessFs::ReadFile | AccessFs::Execute) & file),
            (
                &self.read_write,
                (AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate) & file,
            ),
            (&self.socket_dirs, AccessFs::RemoveFile.into()),
            (
                &self.devices,
                (AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev) & file,
            ),
        ];
        for (paths, access) in groups {
            for p in paths {
                let Some((fd, is_dir)) = open_path(p) else {
                    continue;
                };
                let access = if is_dir { access } else { access & file };
                created = created
                    .add_rule(PathBeneath::new(fd, access))
                    .map_err(|e| err(&e))?;
            }
        }
        let status = created.restrict_self().map_err(|e| err(&e))?;
        Ok(match status.ruleset {
            RulesetStatus::FullyEnforced => FsStatus::Full,
            RulesetStatus::PartiallyEnforced => FsStatus::Partial,
            RulesetStatus::NotEnforced => FsStatus::NotEnforced,
        })
    }
}

/// An O_PATH descriptor for a rule, and whether it is a directory; None if it does not exist.
fn open_path(p: &Path) -> Option<(PathFd, bool)> {
    let meta = std::fs::metadata(p).ok()?;
    Some((PathFd::new(p).ok()?, meta.is_dir()))
}
