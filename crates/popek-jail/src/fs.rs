//! Landlock: the host file system as popek's command line named it, and no more.
//!
//! Rules are built for Landlock ABI 7 in the `landlock` crate's best-effort mode: on a kernel
//! with an older ABI the parts it lacks are dropped (signal and abstract-socket scoping need
//! ABI 6, Linux 6.12; TCP rules ABI 4), and on a kernel without Landlock nothing is enforced
//! (the seccomp filter and no-new-privileges still are); [`FsStatus`] says which happened.

use std::os::unix::ffi::OsStrExt;
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

/// Paths of the shared objects loaded into this process (its dynamic loader and libraries;
/// not the executable, nor the vDSO), as the loader names them. Asked of the loader, not read
/// from `/proc/self/maps`: formatting that file took a tenth of a millisecond of every
/// `popek exec` start.
fn loaded_objects() -> Vec<PathBuf> {
    /// Called by `dl_iterate_phdr` for each object, with `data` the output vector.
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: `dl_iterate_phdr` passes a valid `info` for the duration of the call, and
        // `data` is the `Vec` `loaded_objects` handed it, borrowed by nothing else meanwhile.
        let (info, out) = unsafe { (&*info, &mut *(data as *mut Vec<PathBuf>)) };
        if !info.dlpi_name.is_null() {
            // SAFETY: a non-null `dlpi_name` is a NUL-terminated string owned by the loader.
            let name = unsafe { std::ffi::CStr::from_ptr(info.dlpi_name) }.to_bytes();
            if name.first() == Some(&b'/') {
                out.push(PathBuf::from(std::ffi::OsStr::from_bytes(name)));
            }
        }
        0
    }
    let mut out: Vec<PathBuf> = Vec::new();
    // SAFETY: `each` only reads what the loader passes and appends to `out`, which outlives
    // the call.
    unsafe {
        libc::dl_iterate_phdr(
            Some(each),
            &mut out as *mut Vec<PathBuf> as *mut libc::c_void,
        )
    };
    out
}

impl FsRules {
    /// What a re-executed popek needs to start: its own executable, the directories of the
    /// libraries it has mapped (its loader, libc...) and the loader's cache.
    pub fn self_exec_files() -> Vec<PathBuf> {
        let exe = std::env::current_exe().ok();
        // The libraries' directories rather than each library: fewer rules to install (popek
        // exec's start-up pays for each), and those directories hold only system libraries.
        // Where the files really are: the loader names them by the paths it found them at
        // (`/lib64/ld-linux-x86-64.so.2` is a link into another directory).
        let mut out: Vec<PathBuf> = loaded_objects()
            .into_iter()
            .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file this process has mapped (as the kernel names it, after links) lies in a
    /// directory `self_exec_files` lists, or is listed itself: a re-executed popek can load.
    #[test]
    fn self_exec_files_cover_every_mapped_file() {
        let listed = FsRules::self_exec_files();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let mapped: Vec<PathBuf> = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .filter(|p| p.starts_with('/') && p.contains(".so"))
            .map(PathBuf::from)
            .collect();
        let exe = std::env::current_exe().unwrap();
        if mapped.is_empty() {
            // A static executable (see .cargo/static-pie-gcc): nothing but itself to load.
            let mut alone = vec![exe, PathBuf::from("/etc/ld.so.cache")];
            alone.sort();
            assert_eq!(listed, alone);
            return;
        }
        for f in &mapped {
            assert!(
                listed.contains(f) || f.parent().is_some_and(|d| listed.iter().any(|l| l == d)),
                "{} not covered by {listed:?}",
                f.display()
            );
        }
        // And no more: the executable, the loader's cache, and directories of mapped files.
        for l in &listed {
            assert!(
                *l == exe
                    || l == Path::new("/etc/ld.so.cache")
                    || mapped.iter().any(|f| f.parent() == Some(l.as_path())),
                "{} listed but nothing there is mapped",
                l.display()
            );
        }
    }
}
