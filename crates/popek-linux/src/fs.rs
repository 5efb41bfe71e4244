//! The sandbox: every guest path resolves inside the root directory with `openat2(2)` and
//! `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`, so neither `..` nor absolute symlinks can leave it.
//! Operations that do not open (stat, unlink, mkdir, rename, ...) open the parent directory that
//! way and apply the `*at()` call to the last component.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::Errno;

/// Host device files a root without a /dev of its own gets (opened on the host by path).
pub const HOST_DEVICES: [&[u8]; 6] = [
    b"/dev/null",
    b"/dev/zero",
    b"/dev/urandom",
    b"/dev/random",
    b"/dev/full",
    b"/dev/tty",
];

/// The guest's view of the file system.
#[derive(Debug)]
pub struct Sandbox {
    root_fd: OwnedFd,
    /// popek's other descriptors (the perf map), as untouchable for the guest as `root_fd`.
    others: Vec<i32>,
    /// The root as a canonical host path, to turn host paths of open files back into guest paths.
    root: PathBuf,
    /// The root as the user gave it, for messages.
    pub root_display: String,
    /// The guest's working directory, an absolute guest path.
    cwd: Mutex<Vec<u8>>,
    /// The root has a /proc of its own (e.g. `--root /`).
    has_proc: bool,
    /// The root has a /dev of its own.
    has_dev: bool,
    /// The guest path of the running program, for /proc/self/exe.
    pub exe: Mutex<Vec<u8>>,
}

/// `open_how` of openat2(2).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;

fn cstr(b: &[u8]) -> Result<CString, Errno> {
    CString::new(b).map_err(|_| Errno(libc::EINVAL))
}

fn check(r: libc::c_long) -> Result<i64, Errno> {
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r)
    }
}

/// Normalise `.` and `..` lexically (`..` at the top stays at the top), keeping a trailing slash.
fn normalize(p: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in p.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let mut out = Vec::with_capacity(p.len() + 1);
    for c in &parts {
        out.push(b'/');
        out.extend_from_slice(c);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

impl Sandbox {
    /// Open `root` and pick the guest's working directory: the host's if it lies inside the root,
    /// else `/`.
    pub fn new(root: &Path) -> io::Result<Sandbox> {
        let canon = root.canonicalize()?;
        let c = CString::new(canon.as_os_str().as_bytes()).map_err(io::Error::other)?;
        // SAFETY: c is a valid C string.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // Keep popek's own descriptor out of the guest's way: move it high.
        // SAFETY: fd is ours; F_DUPFD_CLOEXEC takes an integer.
        let high = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, reserved_fd_floor()) };
        let fd = if high >= 0 {
            // SAFETY: closing our own descriptor.
            unsafe { libc::close(fd) };
            high
        } else {
            fd
        };
        // SAFETY: fd is a fresh descriptor we own.
        let root_fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let cwd = std::env::current_dir()
            .ok()
            .and_then(|d| d.strip_prefix(&canon).ok().map(|r| r.to_path_buf()))
            .map(|r| normalize(&[b"/", r.as_os_str().as_bytes()].concat()))
            .unwrap_or_else(|| b"/".to_vec());
        let has_proc = canon.join("proc/self").exists();
        let has_dev = canon.join("dev/null").exists();
        Ok(Sandbox {
            root_fd,
            others: Vec::new(),
            root: canon,
            root_display: root.display().to_string(),
            cwd: Mutex::new(cwd),
            has_proc,
            has_dev,
            exe: Mutex::new(Vec::new()),
        })
    }

    /// Keep descriptor `fd`, one of popek's own, out of the guest's reach.
    pub fn reserve(&mut self, fd: i32) {
        self.others.push(fd);
    }

    /// popek's own descriptors (the root directory's and those given to [`Sandbox::reserve`]).
    pub fn reserved_fds(&self) -> impl Iterator<Item = i32> + '_ {
        std::iter::once(self.root_fd.as_raw_fd()).chain(self.others.iter().copied())
    }

    /// Whether `fd` is one of popek's own descriptors, which the guest may not touch.
    pub fn is_reserved(&self, fd: i64) -> bool {
        self.reserved_fds().any(|r| r as i64 == fd)
    }

    /// The guest's working directory.
    pub fn cwd(&self) -> Vec<u8> {
        self.cwd.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The absolute guest path for `path` relative to `dirfd` (AT_FDCWD or an open directory).
    pub fn abs(&self, dirfd: i64, path: &[u8]) -> Result<Vec<u8>, Errno> {
        if path.first() == Some(&b'/') {
            return Ok(path.to_vec());
        }
        let dir = if dirfd as i32 == libc::AT_FDCWD {
            self.cwd()
        } else {
            self.guest_path_of_fd(dirfd as i32)?
        };
        Ok([&dir[..], b"/", path].concat())
    }

    /// The guest path of an open file, from the host's /proc/self/fd.
    pub fn guest_path_of_fd(&self, fd: i32) -> Result<Vec<u8>, Errno> {
        if fd < 0 || self.is_reserved(fd as i64) {
            return Err(Errno(libc::EBADF));
        }
        let host =
            std::fs::read_link(format!("/proc/self/fd/{fd}")).map_err(|_| Errno(libc::EBADF))?;
        if !host.is_absolute() {
            return Err(Errno(libc::ENOTDIR));
        }
        match host.strip_prefix(&self.root) {
            Ok(r) => Ok(normalize(&[b"/", r.as_os_str().as_bytes()].concat())),
            Err(_) => Err(Errno(libc::ENOENT)),
        }
    }

    /// openat2 inside the root; `abs` is an absolute guest path.
    fn openat2(&self, abs: &[u8], flags: i32, mode: u32) -> Result<i32, Errno> {
        let c = cstr(abs)?;
        let how = OpenHow {
            flags: flags as u32 as u64,
            mode: if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
                mode as u64 & 0o7777
            } else {
                0
            },
            resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
        };
        // SAFETY: openat2 reads the path and the open_how struct we pass with its size.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.root_fd.as_raw_fd(),
                c.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        check(r).map(|fd| fd as i32)
    }

    /// Open a guest path for the guest, with the special files popek provides.
    pub fn open(&self, abs: &[u8], flags: i32, mode: u32) -> Result<i32, Errno> {
        if let Some(fd) = self.special_open(abs, flags)? {
            return Ok(fd);
        }
        self.openat2(abs, flags, mode)
    }

    /// The guest path execve should load for `abs`: the running program for /proc/self/exe (the
    /// re-executed popek cannot resolve that link: it has no program yet), `abs` otherwise.
    pub fn exec_path(&self, abs: &[u8]) -> Vec<u8> {
        if normalize(abs) == b"/proc/self/exe" {
            return self.exe.lock().unwrap_or_else(|e| e.into_inner()).clone();
        }
        abs.to_vec()
    }

    /// Host paths that stand in for guest paths the root cannot provide itself.
    fn special_open(&self, abs: &[u8], flags: i32) -> Result<Option<i32>, Errno> {
        let abs = &normalize(abs)[..];
        let host: Option<Vec<u8>> = if abs == b"/proc/self/exe" {
            let exe = self.exe.lock().unwrap_or_else(|e| e.into_inner()).clone();
            return self.openat2(&exe, flags, 0).map(Some);
        } else if let Some(n) = self.self_fd_number(abs) {
            let c = cstr(format!("/proc/self/fd/{n}").as_bytes())?;
            // SAFETY: c is a valid C string.
            let fd = unsafe { libc::open(c.as_ptr(), flags & !libc::O_CREAT, 0) };
            if fd >= 0 || Errno::last() != Errno(libc::EACCES) {
                return check(fd as libc::c_long).map(|fd| Some(fd as i32));
            }
            // Landlock refuses to reopen a file outside the root (a terminal, a file the caller
            // redirected in): the guest already holds it, so give it a duplicate instead.
            let cmd = if flags & libc::O_CLOEXEC != 0 {
                libc::F_DUPFD_CLOEXEC
            } else {
                libc::F_DUPFD
            };
            // SAFETY: F_DUPFD on the guest's own descriptor with an integer argument.
            let fd = unsafe { libc::fcntl(n, cmd, 0) };
            return check(fd as libc::c_long).map(|fd| Some(fd as i32));
        } else if !self.has_dev && HOST_DEVICES.contains(&abs) {
            Some(abs.to_vec())
        } else {
            None
        };
        let Some(host) = host else { return Ok(None) };
        let c = cstr(&host)?;
        // SAFETY: c is a valid C string.
        let fd = unsafe { libc::open(c.as_ptr(), flags & !libc::O_CREAT, 0) };
        check(fd as libc::c_long).map(|fd| Some(fd as i32))
    }

    /// `N` for /dev/fd/N, /proc/self/fd/N and /dev/std{in,out,err}: the guest's own descriptors,
    /// reopened through the host's /proc (safe: they are already the guest's).
    fn self_fd_number(&self, abs: &[u8]) -> Option<i32> {
        let n = match abs {
            b"/dev/stdin" => return Some(0),
            b"/dev/stdout" => return Some(1),
            b"/dev/stderr" => return Some(2),
            _ => abs
                .strip_prefix(b"/dev/fd/")
                .or_else(|| abs.strip_prefix(b"/proc/self/fd/"))?,
        };
        let n: i32 = std::str::from_utf8(n).ok()?.parse().ok()?;
        (!self.is_reserved(n as i64)).then_some(n)
    }

    /// Resolve a guest path to an O_PATH descriptor (following a final symlink unless
    /// `nofollow`).
    pub fn open_path(&self, abs: &[u8], nofollow: bool) -> Result<OwnedFd, Errno> {
        let mut flags = libc::O_PATH | libc::O_CLOEXEC;
        if nofollow {
            flags |= libc::O_NOFOLLOW;
        }
        let fd = match self.special_open(abs, flags)? {
            Some(fd) => fd,
            None => self.openat2(abs, flags, 0)?,
        };
        // SAFETY: fd is a fresh descriptor we own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// The parent directory of a guest path (opened O_PATH inside the root) and the last
    /// component. For `/`, `.` and `..` endings the "last component" is `.` in the directory
    /// itself.
    pub fn parent(&self, abs: &[u8]) -> Result<(OwnedFd, CString), Errno> {
        let trimmed = {
            let mut t = abs;
            while t.len() > 1 && t.ends_with(b"/") {
                t = &t[..t.len() - 1];
            }
            t
        };
        let split = trimmed.iter().rposition(|&b| b == b'/').unwrap_or(0);
        let (dir, last) = (&trimmed[..split.max(1)], &trimmed[split + 1..]);
        if last.is_empty() || last == b"." || last == b".." {
            let fd = self.openat2(
                trimmed,
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                0,
            )?;
            // SAFETY: fresh descriptor we own.
            return Ok((unsafe { OwnedFd::from_raw_fd(fd) }, cstr(b".")?));
        }
        let fd = self.openat2(dir, libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC, 0)?;
        // SAFETY: fresh descriptor we own.
        Ok((unsafe { OwnedFd::from_raw_fd(fd) }, cstr(last)?))
    }

    /// readlink of a guest path: /proc/self/exe and the guest's own /proc/self/fd/N are answered
    /// by popek when the root has no /proc of its own.
    pub fn readlink(&self, abs: &[u8]) -> Result<Vec<u8>, Errno> {
        let norm = normalize(abs);
        let abs = &norm[..];
        if abs == b"/proc/self/exe" {
            return Ok(self.exe.lock().unwrap_or_else(|e| e.into_inner()).clone());
        }
        if !self.has_proc || abs.starts_with(b"/proc/self/fd/") {
            if let Some(n) = abs.strip_prefix(b"/proc/self/fd/") {
                let n: i32 = std::str::from_utf8(n)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(Errno(libc::ENOENT))?;
                return match self.guest_path_of_fd(n) {
                    Ok(p) => Ok(p),
                    Err(_) => {
                        let host = std::fs::read_link(format!("/proc/self/fd/{n}"))
                            .map_err(|_| Errno(libc::ENOENT))?;
                        if host.is_absolute() {
                            Err(Errno(libc::ENOENT))
                        } else {
                            Ok(host.as_os_str().as_bytes().to_vec())
                        }
                    }
                };
            }
        }
        let (dir, last) = self.parent(abs)?;
        let mut buf = vec![0u8; 4096];
        // SAFETY: buf has the length we pass.
        let n = unsafe {
            libc::readlinkat(
                dir.as_raw_fd(),
                last.as_ptr(),
                buf.as_mut_ptr() as *mut libc::c_char,
                buf.len(),
            )
        };
        let n = check(n as libc::c_long)?;
        buf.truncate(n as usize);
        Ok(buf)
    }

    /// Change the guest's working directory (after checking it is a directory).
    pub fn chdir(&self, abs: &[u8]) -> Result<(), Errno> {
        let fd = self.openat2(abs, libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC, 0)?;
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
        *self.cwd.lock().unwrap_or_else(|e| e.into_inner()) = normalize(abs);
        Ok(())
    }
}

/// The lowest descriptor number popek uses for itself.
pub(crate) fn reserved_fd_floor() -> i32 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into rl.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
    (rl.rlim_cur.min(1 << 20) as i32 - 1).max(64)
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn normalize_paths() {
        assert_eq!(normalize(b"/a/./b/../c"), b"/a/c");
        assert_eq!(normalize(b"/../../x"), b"/x");
        assert_eq!(normalize(b"/"), b"/");
        assert_eq!(normalize(b""), b"/");
    }
}
