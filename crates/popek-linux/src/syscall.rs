//! The riscv64 Linux syscall layer: numbers are the asm-generic table; most calls go to the host
//! kernel with guest pointers translated (guest address `g` is host `base + g`), paths resolved in
//! the sandbox, and the few structures whose layout differs between riscv64 and x86_64 (`stat`,
//! `epoll_event`) converted.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;

use popek_cpu::PagePerms;

use crate::mm::{page_up, PAGE, SPAN};
use crate::process::{self, Flow, Thread, SS_DISABLE, SS_ONSTACK};
use crate::signal::{self, Action};
use crate::{syscall_name, Errno, EXIT_UNSUPPORTED};

const R: u8 = PagePerms::READ;
const W: u8 = PagePerms::WRITE;

type Res = Result<i64, Errno>;

/// A raw host syscall.
fn host(nr: libc::c_long, a: [u64; 6]) -> Res {
    // SAFETY: callers pass arguments the host syscall accepts: pointers are host pointers into
    // guest memory whose ranges were checked, or popek's own buffers.
    let r = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r as i64)
    }
}

macro_rules! h {
    ($nr:expr) => { host($nr, [0; 6]) };
    ($nr:expr, $($a:expr),+) => {{
        let v = [$($a as u64),+];
        let mut a = [0u64; 6];
        a[..v.len()].copy_from_slice(&v);
        host($nr, a)
    }};
}

/// Handle the ecall the hart just stopped at.
pub fn handle(t: &mut Thread) -> Flow {
    let nr = t.hart.xreg(17);
    let a: [u64; 6] = std::array::from_fn(|i| t.hart.xreg(10 + i));
    let r = match dispatch(t, nr, a) {
        Ok(Some(v)) => v,
        Ok(None) => return Flow::Continue, // rt_sigreturn: registers already restored
        Err(Stop::Errno(e)) => -(e.0 as i64),
        Err(Stop::ExitThread(code)) => return t.exit_thread(code),
        Err(Stop::Unsupported | Stop::NotHere) => {
            eprintln!("popek: unsupported syscall {nr} ({})", syscall_name(nr));
            crate::stats::report();
            // SAFETY: ending the process.
            unsafe { libc::_exit(EXIT_UNSUPPORTED) };
        }
    };
    if r == -(libc::EINTR as i64) && restartable(nr) && t.restart_pending() {
        // A handler with SA_RESTART interrupted the call: run the handler, then the ecall again
        // with its original arguments (a0 untouched), as the kernel does.
        t.hart.set_pc(t.hart.pc().wrapping_sub(4));
        return Flow::Continue;
    }
    t.hart.set_xreg(10, r as u64);
    Flow::Continue
}

/// Syscalls Linux restarts after an SA_RESTART handler (signal(7) lists those it never restarts:
/// the waits with timeouts and the signal waits).
fn restartable(nr: u64) -> bool {
    !matches!(nr, 22 | 72 | 73 | 101 | 115 | 133 | 137)
}

enum Stop {
    Errno(Errno),
    ExitThread(i32),
    Unsupported,
    /// A syscall family does not handle this number (see [`FAMILIES`]).
    NotHere,
}

impl From<Errno> for Stop {
    fn from(e: Errno) -> Stop {
        Stop::Errno(e)
    }
}

fn fd(t: &Thread, v: u64) -> Result<i64, Errno> {
    let fd = v as i32 as i64;
    if t.sh.sb.is_reserved(fd) {
        Err(Errno(libc::EBADF))
    } else {
        Ok(fd)
    }
}

fn dirfd(t: &Thread, v: u64) -> Result<i64, Errno> {
    fd(t, v)
}

const GUEST_PATH_MAX: usize = 4096;

/// The absolute guest path of (dirfd, path).
fn path_at(t: &Thread, dfd: u64, path: u64) -> Result<Vec<u8>, Errno> {
    let p = t.cstr(path, GUEST_PATH_MAX)?;
    if p.is_empty() {
        return Err(Errno(libc::ENOENT));
    }
    t.sh.sb.abs(dirfd(t, dfd)?, &p)
}

/// Write a host `struct stat` as the riscv64 (asm-generic) layout.
fn put_stat(t: &mut Thread, addr: u64, st: &libc::stat) -> Result<(), Errno> {
    let mut b = [0u8; 128];
    let mut put =
        |off: usize, v: u64, n: usize| b[off..off + n].copy_from_slice(&v.to_le_bytes()[..n]);
    put(0, st.st_dev, 8);
    put(8, st.st_ino, 8);
    put(16, st.st_mode as u64, 4);
    put(20, st.st_nlink, 4);
    put(24, st.st_uid as u64, 4);
    put(28, st.st_gid as u64, 4);
    put(32, st.st_rdev, 8);
    put(48, st.st_size as u64, 8);
    put(56, st.st_blksize as u64, 4);
    put(64, st.st_blocks as u64, 8);
    put(72, st.st_atime as u64, 8);
    put(80, st.st_atime_nsec as u64, 8);
    put(88, st.st_mtime as u64, 8);
    put(96, st.st_mtime_nsec as u64, 8);
    put(104, st.st_ctime as u64, 8);
    put(112, st.st_ctime_nsec as u64, 8);
    t.write_mem(addr, &b)
}

fn fstat_host(fd: i32) -> Result<libc::stat, Errno> {
    // SAFETY: fstat writes into the zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(Errno::last());
    }
    Ok(st)
}

/// Host iovecs for a guest iovec array.
fn iovecs(t: &Thread, addr: u64, cnt: u64, need: u8) -> Result<Vec<libc::iovec>, Errno> {
    if cnt > 1024 {
        return Err(Errno(libc::EINVAL));
    }
    let raw = t.read_mem(addr, cnt * 16)?;
    let mut v = Vec::with_capacity(cnt as usize);
    for c in raw.chunks(16) {
        let base = u64::from_le_bytes(c[..8].try_into().unwrap_or([0; 8]));
        let len = u64::from_le_bytes(c[8..].try_into().unwrap_or([0; 8]));
        v.push(libc::iovec {
            iov_base: t.ptr(base, len, need)? as *mut libc::c_void,
            iov_len: len as usize,
        });
    }
    Ok(v)
}

fn mark_iov_written(t: &mut Thread, addr: u64, cnt: u64, mut n: i64) {
    if let Ok(raw) = t.read_mem(addr, cnt * 16) {
        for c in raw.chunks(16) {
            if n <= 0 {
                break;
            }
            let base = u64::from_le_bytes(c[..8].try_into().unwrap_or([0; 8]));
            let len = u64::from_le_bytes(c[8..].try_into().unwrap_or([0; 8]));
            let k = (len as i64).min(n);
            t.written(base, k as u64);
            n -= k;
        }
    }
}

fn cs(b: &[u8]) -> Result<CString, Errno> {
    CString::new(b).map_err(|_| Errno(libc::EINVAL))
}

/// The syscall families in turn: each answers [`Stop::NotHere`] for a number not its own, and
/// no number belongs to two.
const FAMILIES: [Family; 11] = [
    file_io,
    file_status,
    file_names,
    file_attrs,
    descriptors,
    memory,
    process_info,
    process_control,
    time,
    signals,
    network,
];

/// Handles the syscalls of one family (see [`FAMILIES`]).
type Family = fn(&mut Thread, u64, [u64; 6]) -> Result<Option<i64>, Stop>;

fn dispatch(t: &mut Thread, nr: u64, a: [u64; 6]) -> Result<Option<i64>, Stop> {
    for family in FAMILIES {
        match family(t, nr, a) {
            Err(Stop::NotHere) => {}
            done => return done,
        }
    }
    if nr >= FIRST_NEWER || syscall_name(nr) == "?" {
        // A number Linux does not have, or a syscall newer than those popek models: ENOSYS,
        // as from a kernel without it, so the program falls back (glibc, for one, probes
        // them).
        return Err(Errno(libc::ENOSYS).into());
    }
    Err(Stop::Unsupported)
}

/// The first syscall popek treats as newer than the kernel it models (cachestat, Linux 6.5):
/// those it does not implement answer ENOSYS instead of stopping the program.
const FIRST_NEWER: u64 = 451;

/// Files: open, close, read, write and seek.
fn file_io(t: &mut Thread, nr: u64, a: [u64; 6]) -> Result<Option<i64>, Stop> {
    use libc::*;
    let r: i64 = match nr {
        56 => {
            // openat
            let abs = path_at(t, a[0], a[1])?;
            t.sh.sb.open(&abs, a[2] as i32, no_setid(a[3]) as u32)? as i64
        }
        57 => h!(SYS_close, fd(t, a[0])?)?,
        436 => {
            // close_range: never popek's own descriptors.
            let (first, last) = (a[0] as u32 as u64, a[1] as u32 as u64);
            let mut lo = first;
            for r in reserved(t) {
                if r >= lo && r <= last {
                    if r > lo {
                        h!(SYS_close_range, lo, r - 1, a[2])?;
                    }
                    lo = r + 1;
                }
            }
            if lo <= last {
                h!(SYS_close_range, lo, last, a[2])?;
            }
            0
        }
        63 | 67 => {
            // read, pread64
            let p = t.ptr(a[1], a[2], W)?;
            let n = if nr == 63 {
                h!(SYS_read, fd(t, a[0])?, p, a[2])?
            } else {
                h!(SYS_pread64, fd(t, a[0])?, p, a[2], a[3])?
            };
            t.written(a[1], n as u64);
            n
        }
        64 => h!(SYS_write, fd(t, a[0])?, t.ptr(a[1], a[2], R)?, a[2])?,
        68 => h!(
            SYS_pwrite64,
            fd(t, a[0])?,
            t.ptr(a[1], a[2], R)?,
            a[2],
            a[3]
        )?,
        65 | 69 => {
            let v = iovecs(t, a[1], a[2], W)?;
            let n = if nr == 65 {
                h!(SYS_readv, fd(t, a[0])?, v.as_ptr(), v.len())?
            } else {
                h!(SYS_preadv, fd(t, a[0])?, v.as_ptr(), v.len(), a[3], a[4])?
            };
            mark_iov_written(t, a[1], a[2], n);
            n
        }
        66 => {
            let v = iovecs(t, a[1], a[2], R)?;
            h!(SYS_writev, fd(t, a[0])?, v.as_ptr(), v.len())?
        }
        70 => {
            let v = iovecs(t, a[1], a[2], R)?;
            h!(SYS_pwritev, fd(t, a[0])?, v.as_ptr(), v.len(), a[3], a[4])?
        }
        62 => h!(SYS_lseek, fd(t, a[0])?, a[1], a[2])?,
        _ => return Err(Stop::NotHere),
    };
    Ok(Some(r))
}

/// Files: status (`stat` and its kin, `statfs`, access checks, `readlink`).
fn file_status(t: &mut Thread, nr: u64, a: [u64; 6]) -> Result<Option<i64>, Stop> {
    use libc::*;
    let r: i64 = match nr {
        80 => {
            let st = fstat_host(fd(t, a[0])? as i32)?;
            put_stat(t, a[1], &st)?;
            0
        }
        79 => {
            // newfstatat
            let flags = a[3] as i32;
            let p = t.cstr(a[1], GUEST_PATH_MAX)?;
            let st = if p.is_empty() && flags & AT_EMPTY_PATH != 0 {
                if a[0] as i32 == AT_FDCWD {
                    let cwd = t.sh.sb.cwd();
                    let f = t.sh.sb.open_path(&cwd, false)?;
                    fstat_host(f.as_raw_fd())?
                } else {
                    fstat_host(fd(t, a[0])? as i32)?
                }
            } else {
                let abs = path_at(t, a[0], a[1])?;
                let f = t.sh.sb.open_path(&abs, flags & AT_SYMLINK_NOFOLLOW != 0)?;
                fstat_host(f.as_raw_fd())?
            };
            put_stat(t, a[2], &st)?;
            0
        }
        291 => {
            // statx
            let flags = a[2] as i32;
            let p = t.cstr(a[1], GUEST_PATH_MAX)?;
            let buf = t.ptr(a[4], 256, W)?;
            let sync = flags & 0x6000;
            let n = if p.is_empty() && flags & AT_EMPTY_PATH != 0 && a[0] as i32 != AT_FDCWD {
                h!(
                    SYS_statx,
                    fd(t, a[0])?,
                    c"".as_ptr(),
                    AT_EMPTY_PATH | sync,
                    a[3],
                    buf
                )?
            } else {
                let abs = if p.is_empty() && flags & AT_EMPTY_PATH != 0 {
                    t.sh.sb.cwd()
                } else {
                    path_at(t, a[0], a[1])?
                };
                let f = t.sh.sb.open_path(&abs, flags & AT_SYMLINK_NOFOLLOW != 0)?;
                h!(
                    SYS_statx,
                    f.as_raw_fd(),
                    c"".as_ptr(),
                    AT_EMPTY_PATH | sync,
                    a[3],
                    buf
                )?
            };
            t.written(a[4], 256);
            n
        }
        43 => {
            // statfs
            let abs = path_at(t, AT_FDCWD as u64, a[0])?;
            let f = t.sh.sb.open_path(&abs, false)?;
            h!(SYS_fstatfs, f.as_raw_fd(), t.ptr(a[1], 120, W)?)?
        }
        44 => h!(SYS_fstatfs, fd(t, a[0])?, t.ptr(a[1], 120, W)?)?,
        48 | 439 => {
            // faccessat, faccessat2
            let flags = if nr == 439 { a[3] as i32 } else { 0 };
            let abs = path_at(t, a[0], a[1])?;
            let f = t.sh.sb.open_path(&abs, flags & AT_SYMLINK_NOFOLLOW != 0)?;
            h!(
                SYS_faccessat2,
                f.as_raw_fd(),
                c"".as_ptr(),
                a[2],
                AT_EMPTY_PATH | (flags & AT_EACCESS)
            )?
        }
        78 => {
            // readlinkat
            if a[3] as i64 <= 0 {
                return Err(Errno(EINVAL).into());
            }
            let abs = path_at(t, a[0], a[1])?;
            let target = t.sh.sb.readlink(&abs)?;
            let n = target.len().min(a[3] as usize);
            t.write_mem(a[2], &target[..n])?;
            n as i64
        }
        _ => return Err(Stop::NotHere),
    };
    Ok(Some(r))
}

/// Files: directories and names (listing, working directory, creating, removing, renaming and linking).
fn file_names(t: &mut Thread, nr: u64, a: [u64; 6]) -> Result<Option<i64>, Stop> {
    use libc::*;
    let r: i64 = match nr {
        61 => {
            let n = h!(SYS_getdents64, fd(t, a[0])?, t.ptr(a[1], a[2], W)?, a[2])?;
            t.written(a[1], n as u64);
            n
        }
        17 => {
            // getcwd
            let mut cwd = t.sh.sb.cwd();
            cwd.push(0);
            if (a[1] as usize) < cwd.len() {
                return Err(Errno(ERANGE).into());
            }
            t.write_mem(a[0], &cwd)?;
            cwd.len() as i64
        }
        49 => {
            let abs = path_at(t, AT_FDCWD as u64, a[0])?;
            t.sh.sb.chdir(&abs)?;
            sync_host_cwd(t);
            0
        }
        50 => {
            let p = t.sh.sb.guest_path_of_fd(fd(t, a[0])? as i32)?;
            t.sh.sb.chdir(&p)?;
            sync_host_cwd(t);
            0
        }
        34 => {
            let abs = path_at(t, a[0], a[1])?;
            let (d, last) = t.sh.sb.parent(&abs)?;
            h!(SYS_mkdirat, d.as_raw_fd(), last.as_ptr(), a[2])?
        }
        33 => {
            // mknodat: files, FIFOs and sockets; never device nodes (as in an unprivileged
            // container: a node for the host's disk or kernel log would be a way out).
            let mode = a[2] as u32;
            if !matches!(mode & S_IFMT, 0 | S_IFREG | S_IFIFO | S_IFSOCK) {
                return Err(Errno(EPERM).into());
            }
            let abs = path_at(t, a[0], a[1])?;
            let (d, last) = t.sh.sb.parent(&abs)?;
            h!(SYS_mknodat, d.as_raw_fd(), last.as_ptr(), no_setid(a[2]), 0)?
        }
        35 => {
            let abs = path_at(t, a[0], a[1])?;
            let (d, last) = t.sh.sb.parent(&abs)?;
            h!(SYS_unlinkat, d.as_raw_fd(), last.as_ptr(), a[2])?
        }
        38 | 276 => {
            // renameat, renameat2
            let flags = if nr == 276 { a[4] } else { 0 };
            let (d1, l1) = t.sh.sb.parent(&path_at(t, a[0], a[1])?)?;
            let (d2, l2) = t.sh.sb.parent(&path_at(t, a[2], a[3])?)?;
            h!(
                SYS_renameat2,
                d1.as_raw_fd(),
                l1.as_ptr(),
                d2.as_raw_fd(),
                l2.as_ptr(),
                flags
            )?
        }
        36 => {
            let target = cs(&t.cstr(a[0], GUEST_PATH_MAX)?)?;
            let (d, last) = t.sh.sb.parent(&path_at(t, a[1], a[2])?)?;
            h!(SYS_symlinkat, target.as_ptr(), d.as_raw_fd(), last.as_ptr())?
        }
        37 => {
            let (d2, l2) = t.sh.sb.parent(&path_at(t, a[2], a[3])?)?;
            let old = path_at(t, a[0], a[1])?;
            if a[4] as i32 & AT_SYMLINK_FOLLOW != 0 {
                let f = t.sh.sb.open_path(&old, false)?;
                h!(
                    SYS_linkat,
                    f.as_raw_fd(),
                    c"".as_ptr(),
                    d2.as_raw_fd(),
                    l2.as_ptr(),
                    AT_EMPTY_PATH
                )?
            } else {
                let (d1, l1) = t.sh.sb.parent(&old)?;
                h!(
                    SYS_linkat,
                    d1.as_raw_fd(),
                    l1.as_ptr(),
                    d2.as_raw_fd(),
                    l2.as_ptr(),
                    0
                )?
            }
        }
        _ => return Err(Stop::NotHere),
    };
    Ok(Some(r))
}

/// Files: ownership, modes, times, sizes, syncing and locks.
fn file_attrs(t: &mut Thread, nr: u64, a: [u64; 6]) -> Result<Option<i64>, Stop> {
    use libc::*;
    let r: i64 = match nr {
        52 => h!(SYS_fchmod, fd(t, a[0])?, no_setid(a[1]))?,
        53 => fchmodat2(t, [a[0], a[1], a[2], 0, 0, 0])?,
        452 => fchmodat2(t, a)?,
        55 => h!(SYS_fchown, fd(t, a[0])?, a[1], a[2])?,
        54 => {
            let p = t.cstr(a[1], GUEST_PATH_MAX)?;
            if p.is_empty() && a[4] as i32 & AT_EMPTY_PATH != 0 {
                h!(
                    SYS_fchownat,
                    fd(t, a[0])?,
                    c"".as_ptr(),
                    a[2],
                    a[3],
                    AT_EMPTY_PATH
                )?
            } else {
                let abs = path_at(t, a[0], a[1])?;
                let f =
                    t.sh.sb
                        .open_path(&abs, a[4] as i32 & AT_SYMLINK_NOFOLLOW != 0)?;
                h!(
                    SYS_fchownat,
                    f.as_raw_fd(),
                    c"".as_ptr(),
                    a[2],
                    a[3],
                    AT_EMPTY_PATH
                )?
            }
        }
        88 => {
            // utimensat
            let times = t.opt_ptr(a[2], 32, R)?;
            if a[1] == 0 {
                h!(SYS_utimensat, fd(t, a[0])?, 0, times, 0)?
            } else {
                let abs = path_at(t, a[0], a[1])?;
                let f =
                    t.sh.sb
                        .open_path(&abs, a[3] as i32 & AT_SYMLINK_NOFOLLOW != 0)?;
                let p = cs(format!("/proc/self/fd/{}", f.as_raw_fd()).as_bytes())?;
                h!(SYS_utimensat, AT_FDCWD, p.as_ptr(), times, 0)?
            }
        }
        45 => {
            let abs = path_at(t, AT_FDCWD as u64, a[0])?;
            let f = t.sh.sb.open(&abs, O_WRONLY | O_CLOEXEC, 0)?;
            let r = h!(SYS_ftruncate, f, a[1]);
            // SAFETY: closing our own descriptor.
            unsafe { close(f) };
            r?
        }
        46 => h!(SYS_ftruncate, fd(t, a[0])?, a[1])?,
        47 => h!(SYS_fallocate, fd(t, a[0])?, a[1], a[2], a[3])?,
        81 => h!(SYS_sync)?,
        82 => h!(SYS_fsync, fd(t, a[0])?)?,
        83 => h!(SYS_fdatasync, fd(t, a[0])?)?,
        223 => 0, // fadvise64: advice only
        32 => h!(SYS_flock, fd(t, a[0])?, a[1])?,
        _ => return Err(Stop::NotHere),
    };
    Ok(Some(r))
}

/// Descriptors: `fcntl`, `dup`, pipes, `ioctl`, event and timer descriptors, polling.
fn descriptors(t: &mut Thread, nr: u64, a: [u64; 6]) -> Result<Option<i64>, Stop> {
    use libc::*;
    let r: i64 = match nr {
        25 => fcntl_(t, a)?,
        23 => h!(SYS_fcntl, fd(t, a[0])?, F_DUPFD, 0)?,
        24 => {
            if t.sh.sb.is_reserved(a[1] as i32 as i64) {
                return Err(Errno(EBADF).into());
            }
            h!(SYS_dup3, fd(t, a[0])?, a[1], a[2])?
        }
        59 => h!(SYS_pipe2, t.ptr(a[0], 8, W)?, a[1])?,
        29 => ioctl_(t, a)?,
        71 => h!(
            SYS_sendfile,
            fd(t, a[0])?,
            fd(t, a[1])?,
            t.opt_ptr(a[2], 8, W)?,
            a[3]
        )?,
        285 => h!(
            SYS_copy_file_range,
            fd(t, a[0])?,
            t.opt_ptr(a[1], 8, W)?,
            fd(t, a[2])?,
            t.opt_ptr(a[3], 8, W)?,
            a[4],
            a[5]
        )?,
        19 => h!(SYS_eventfd2, a[0], a[1])?,
        279 => {
            let name = cs(&t.cstr(a[0], 249)?)?;
            h!(SYS_memfd_create, name.as_ptr(), a[1])?
        }
        73 => {
            // ppoll
            let fds = t.ptr(a[0], a[1].saturating_mul(8), W)?;
            let n = h!(
                SYS_ppoll,
                fds,
                a[1],
                t.opt_ptr(a[2], 16, R)?,
                t.opt_ptr(a[3], 8, R)?,
                a[4]
            )?;
            t.written(a[0], a[1] * 8);
            n
        }
        72 => {
            // pselect6
            let sz = a[0].min(1024).div_ceil(64) * 8;
            let (i, o, e) = (
                t.opt_ptr(a[1], sz, W)?,
                t.opt_ptr(a[2], sz, W)?,
                t.opt_ptr(a[3], sz, W)?,
            );
            let ts = t.opt_ptr(a[4], 16, W)?;
            let sig: [u64; 2];
            let sigp = if a[5] != 0 {
                let set = t.read_u64(a[5])?;
                let len = t.read_u64(a[5] + 8)?;
                sig = [t.opt_ptr(set, 8, R)? as u64, len];
                sig.as_ptr() as u64
            } else {
                0
            };
            h!(SYS_pselect6, a[0], i, o, e, ts, sigp)?
        }
        20 => h!(SYS_epoll_create1, a[0])?,
        21 => {
            let ev: Option<(u32, u64)> = if a[3] != 0 {
                let b = t.read_mem(a[3], 16)?;
                Some((
                    u32::from_le_bytes(b[..4].try_into().unwrap_or([0; 4])),
                    u64::from_le_bytes(b[8..].try_into().unwrap_or([0; 8])),
                ))
            } else {
                None
            };
            let host_ev = ev.map(|(events, data)| epoll_event { events, u64: data });
            let p = host_ev
                .as_ref()
                .map_or(std::ptr::null(), |e| e as *const epoll_event);
            h!(SYS_epoll_ctl, fd(t, a[0])?, a[1], fd(t, a[2])?, p)?
        }
        22 => {
            // epoll_pwait
            let max = (a[2] as i32).clamp(0, 4096) as usize;
            t.check(a[1], max as u64 * 16, W)?;
            let mut evs: Vec<epoll_event> = vec![epoll_event { events: 0, u64: 0 }; max.max(1)];
            let n = h!(
                SYS_epoll_pwait,
                fd(t, a[0])?,
                evs.as_mut_ptr(),
                a[2],
                a[3],
                t.opt_ptr(a[4], 8, R)?,
                a[5]
            )?;
            for (i, e) in evs.iter().take(n as usize).enumerate() {
                let mut b = [0u8; 16];
                let (events, data) = (e.events, e.u64);
                b[..4].copy_from_slice(&events.to_le_bytes());
                b[8..].copy_from_slice(&data.to_le_bytes());
                t.write_mem(a[1] + i as u64 * 16, &b)?;
            }
            n
        }
        85 => h!(SYS_timerfd_create, a[0], a[1])?,
        86 => h!(
            SYS_timerfd_settime,
            fd(t, a[0])?,
            a[1],
            t.ptr(a[2], 32, R)?,
            t.opt_ptr(a[3], 32, W)?
        )?,
        87 => h!(SYS_timerfd_gettime, fd(t, a[0])?, t.ptr(a[1], 32, W)?)?,
        _ => return Err(Stop::NotHere),
    };
    Ok(Some(r))
}

/// Memory: mappings, protections, `brk`.
fn memory(t: &mut Thread, nr: u64, a: [u64; 6]) -> Result<Option<i64>, Stop> {
    use libc::*;
    let r: i64 = match nr {
        222 => mmap_(t, a)?,
        215 => {
            if !a[0].is_multiple_of(PAGE) || a[1] == 0 {
                return Err(Errno(EINVAL).into());
            }
            lock_mm(t).unmap(a[0], page_up(a[1]))?;
            0
        }
        226 => {
            if !a[0].is_multiple_of(PAGE) {
                return Err(Errno(EINVAL).into());
            }
            lock_mm(t).protect(a[0], page_up(a[1]), a[2] as u8 & 7)?;
            0
        }
        216 => {
            // mremap
            if a[3] & 2 != 0 {
                return Err(Errno(EINVAL).into()); // MREMAP_FIXED: not supported
            }
            lock_mm(t).remap(a[0], a[1], a[2], a[3] & 1 != 0)? as i64
        }
        214 => lock_mm(t).set_brk(a[0]) as i64,
        233 => {
            // madvise: DONTNEED/FREE really drop pages; everything else is advice.
            if !a[0].is_multiple_of(PAGE) {
                return Err(Errno(EINVAL).into());
            }
            if matches!(a[2] as i32, MADV_DONTNEED | MADV_FREE) {
                t.check(a[0], page_up(a[1]), R)?;
                h!(
                    SYS_madvise,
                    t.sh.base.ptr(a[0]),
                    page_up(a[1]),
                    MADV_DONTNEED
                )?;
            }
            0
        }
        227 => {
            t.check(a[0], a[1], R)?;
            h!(SYS_msync, t.sh.base.ptr(a[0]), a[1], a[2])?
        }
        228..=231 => 0, // mlock family: memory is never swapped out from under the guest anyway
        283 => 0,       // membarrier(QUERY): no commands
        259 => {
            t.hart.flush_caches();
            0
        }
        _ => return Err(Stop::NotHere),
    };
    Ok(Some(r))
}

/// Processes: exit, identities, credentials, system information and limits.
fn process_info(t: &mut Thread, nr: u64, a: [u64; 6]) -> Result<Option<i64>, Stop> {
    use libc::*;
    let r: i64 = match nr {
        93 => return Err(Stop::ExitThread(a[0] as i32)),
        94 => {
            if let Some(d) = &t.sh.config.debug {
                d.exited(a[0] as i32);
            }
            crate::stats::report();
            // SAFETY: ending the process.
            unsafe { _exit(a[0] as i32 & 0xff) }
        }
        96 => {
            t.clear_child_tid = a[0];
            t.tid as i64
        }
        99 => 0,                                 // set_robust_list: accepted, unused
        293 => return Err(Errno(ENOSYS).into()), // rseq
        172 => h!(SYS_getpid)?,
        173 => h!(SYS_getppid)?,
        178 => t.tid as i64,
        174 => h!(SYS_getuid)?,
        175 => h!(SYS_geteuid)?,
        176 => h!(SYS_getgid)?,
        177 => h!(SYS_getegid)?,
        148 | 150 => h!(
            if nr == 148 {
                SYS_getresuid
            } else {
                SYS_getresgid
            },
            t.ptr(a[0], 4, W)?,
            t.ptr(a[1], 4, W)?,
            t.ptr(a[2], 4, W)?
        )?,
        143 => h!(SYS_setregid, a[0], a[1])?,
        144 => h!(SYS_setgid, a[0])?,
        145 => h!(SYS_setreuid, a[0], a[1])?,
        146 => h!(SYS_setuid, a[0])?,
        147 => h!(SYS_setresuid, a[0], a[1], a[2])?,
        149 => h!(SYS_setresgid, a[0], a[1], a[2])?,
        158 => {
            let n = group_count(a[0], i32::MAX)?;
            h!(SYS_getgroups, n, t.ptr(a[1], n as u64 * 4, W)?)?
        }
        159 => {
            let n = group_count(a[0], NGROUPS_MAX)?;
            h!(SYS_setgroups, n, t.ptr(a[1], n as u64 * 4, R)?)?
        }
        140 | 141 | 30 | 31 => priority(t, nr, a)?,
        // The kernel's log is the host's, not the guest's: refused, as to an unprivileged
        // process where dmesg_restrict is set.
        116 => return Err(Errno(EPERM).into()),
        154 => {
            t.sh.pids.check_task(a[0] as i32)?;
            h!(SYS_setpgid, a[0], a[1])?
        }
        155 | 156 => {
            t.sh.pids.check_task(a[0] as i32)?;
            h!(if nr == 155 { SYS_getpgid } else { SYS_getsid }, a[0])?
        }
        157 => h!(SYS_setsid)?,
        166 => h!(SYS_umask, a[0])?,
        160 => {
            // uname
            // SAFETY: uname fills the zeroed struct.
            let mut u: utsname = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            unsafe { uname(&mut u) };
            let mut b = vec![0u8; 65 * 6];
            let fields = [
                &u.sysname,
                &u.nodename,
                &u.release,
                &u.version,
                &u.machine,
                &u.domainname,
            ];
            for (i, f) in fields.iter().enumerate() {
                for (j, c) in f.iter().take(64).enumerate() {
                    b[i * 65 + j] = *c as u8;
                }
            }
            b[4 * 65..5 * 65].fill(0);
            b[4 * 65..4 * 65 + 7].copy_from_slice(b"riscv64");
            t.write_mem(a[0], &b)?;
            0
        }
        179 => h!(SYS_sysinfo, t.ptr(a[0], 112, W)?)?,
        163 => h!(SYS_getrlimit, a[0], t.ptr(a[1], 16, W)?)?,
        164 => {
            if kept_limit(a[0]) {
                0
            } else {
                h!(SYS_setrlimit, a[0], t.ptr(a[1], 16, R)?)?
            }
        }
        261 => {
            t.sh.pids.check_task(a[0] as i32)?;
            let new = if kept_limit(a[1]) {
                std::ptr::null_mut()
            } else {
                t.opt_ptr(a[2], 16, R)?
            };
            h!(SYS_prlimit64, a[0], a[1], new, t.opt_ptr(a[3], 16, W)?)?
        }
        165 => h!(SYS_getrusage, a[0], t.ptr(a[1], 144, W)?)?,
        153 => h!(SYS_times, t.opt_ptr(a[0], 32, W)?)?,
        _ => return Err(Stop::NotHere),
    };
    Ok(Some(r))
}

/// Processes: scheduling, randomness, threads and children (`clone`, `execve`, waits), futexes.
/// Whether a guest's setrlimit of `resource` is taken without reaching the host: the address
/// space, data and stack limits describe the guest's own memory, which popek lays out itself
/// (the host's limits on them would bind popek, not the guest).
fn kept_limit(resource: u64) -> bool {
    [libc::RLIMIT_AS, libc::RLIMIT_DATA, libc::RLIMIT_STACK]
        .map(i64::from)
        .contains(&(resource as i64))
}

fn process_control(t: &mut Thread, nr: u64, a: [u64; 6]) -> Result<Option<i64>, Stop> {
    use libc::*;
    let r: i64 = match nr {
        120..=123 => sched_(t, nr, a)?,
        124 => h!(SYS_sched_yield)?,
        168 => h!(
            SYS_getcpu,
            t.opt_ptr(a[0], 4, W)?,
            t.opt_ptr(a[1], 4, W)?,
            0
        )?,
        167 => match a[0] as i32 {
            PR_SET_NAME | PR_GET_NAME => h!(
                SYS_prctl,
                a[0],
                t.ptr(a[1], 16, if a[0] as i32 == PR_SET_NAME { R } else { W })?
            )?,
            PR_SET_PDEATHSIG | PR_SET_DUMPABLE | PR_GET_DUMPABLE | PR_SET_NO_NEW_PRIVS
            | PR_GET_NO_NEW_PRIVS => h!(SYS_prctl, a[0], a[1])?,
            _ => return Err(Errno(EINVAL).into()),
        },
        258 => hwprobe(t, a)?,
        278 => {
            let n = h!(SYS_getrandom, t.ptr(a[0], a[1], W)?, a[1], a[2])?;
            t.written(a[0], n as u64);
            n
        }
        220 => {
            // clone(flags, stack, ptid, tls, ctid)
            clone_(t, a[0], a[1], a[2], a[3], a[4])?
        }
        435 => {
            // clone3
            if a[1] < 64 {
                return Err(Errno(EINVAL).into());
            }
            let b = t.read_mem(a[0], 64)?;
            let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
            let (flags, child_tid, parent_tid, exit_signal, stack, stack_size, tls) =
                (w(0), w(2), w(3), w(4), w(5), w(6), w(7));
            let sp = if stack != 0 { stack + stack_size } else { 0 };
            clone_(
                t,
                flags | (exit_signal & 0xff),
                sp,
                parent_tid,
                tls,
                child_tid,
            )?
        }
        221 | 281 => return execve_(t, nr, a).map(Some),
        260 => h!(
            SYS_wait4,
            a[0],
            t.opt_ptr(a[1], 4, W)?,
            a[2],
            t.opt_ptr(a[3], 144, W)?
        )?,
        95 => h!(
            SYS_waitid,
            a[0],
            a[1],
            t.opt_ptr(a[2], 128, W)?,
            a[3],
            t.opt_ptr(a[4], 144, W)?
        )?,
        98 => futex_(t, a)?,
        100 => return Err(Errno(ENOSYS).into()),
        _ => return Err(Stop::NotHere),
    };
    Ok(Some(r))
}

/// Time: clocks, sleeps and interval timers.
fn time(t: &mut Thread, nr: u64, a: [u64; 6]) -> Result<Option<i64>, Stop> {
    use libc::*;
    let r: i64 = match nr {
        113 => h!(SYS_clock_gettime, a[0], t.ptr(a[1], 16, W)?)?,
        114 => h!(SYS_clock_getres, a[0], t.opt_ptr(a[1], 16, W)?)?,
        169 => h!(
            SYS_gettimeofday,
            t.opt_ptr(a[0], 16, W)?,
            t.opt_ptr(a[1], 8, W)?
        )?,
        101 => h!(SYS_nanosleep, t.ptr(a[0], 16, R)?, t.opt_ptr(a[1], 16, W)?)?,
        115 => h!(
            SYS_clock_nanosleep,
            a[0],
            a[1],
            t.ptr(a[2], 16, R)?,
            t.opt_ptr(a[3], 16, W)?
        )?,
        102 => h!(SYS_getitimer, a[0], t.ptr(a[1], 32, W)?)?,
        103 => h!(
            SYS_setitimer,
            a[0],
            t.ptr(a[1], 32, R)?,
            t.opt_ptr(a[2], 32, W)?
        )?,
        _ => return Err(Stop::NotHere),
    };
    Ok(Some(r))
}

/// Signals: actions, masks, waits and sending.
fn signals(t: &mut Thread, nr: u64, a: [u64; 6]) -> Result<Option<i64>, Stop> {
    use libc::*;
    let r: i64 = match nr {
        134 => sigaction_(t, a)?,
        135 => {
            if a[3] != 8 {
                return Err(Errno(EINVAL).into());
            }
            let old = t.mask;
            if a[1] != 0 {
                let set = t.read_u64(a[1])?;
                let new = match a[0] as i32 {
                    SIG_BLOCK => old | set,
                    SIG_UNBLOCK => old & !set,
                    SIG_SETMASK => set,
                    _ => return Err(Errno(EINVAL).into()),
                };
                t.set_mask(new);
            }
            if a[2] != 0 {
                t.write_u64(a[2], old)?;
            }
            0
        }
        136 => {
            let p = (signal::HOST_PENDING.load(std::sync::atomic::Ordering::Relaxed) | t.pending)
                & t.mask;
            t.write_u64(a[0], p)?;
            0
        }
        133 => {
            // rt_sigsuspend
            let set = t.read_u64(a[0])? & !signal::UNBLOCKABLE;
            let old = t.mask;
            t.mask = set;
            t.suspend_saved = Some(old);
            let tmp = set & !(signal::SYNCHRONOUS);
            let r = h!(SYS_rt_sigsuspend, &tmp as *const u64, 8);
            t.deliver_pending();
            if t.suspend_saved.take().is_some() {
                t.set_mask(old);
            }
            r?
        }
        137 => h!(
            SYS_rt_sigtimedwait,
            t.ptr(a[0], 8, R)?,
            t.opt_ptr(a[1], 128, W)?,
            t.opt_ptr(a[2], 16, R)?,
            a[3]
        )?,
        132 => sigaltstack_(t, a)?,
        139 => {
            t.sigreturn();
            return Ok(None);
        }
        129..=131 => kill_(t, nr, a)?,
        _ => return Err(Stop::NotHere),
    };
    Ok(Some(r))
}

/// Sockets.
fn network(t: &mut Thread, nr: u64, a: [u64; 6]) -> Result<Option<i64>, Stop> {
    use libc::*;
    let r: i64 = match nr {
        198 => {
            if !t.sh.config.allow_net {
                // Unix-domain sockets are refused too (abstract ones would reach the host), but
                // without the note: glibc probes nscd's socket in every user lookup.
                const AF_UNIX: u64 = 1;
                if a[0] != AF_UNIX
                    && !t
                        .sh
                        .net_warned
                        .swap(true, std::sync::atomic::Ordering::SeqCst)
                {
                    eprintln!(
                        "popek: {}: network access denied (run with --allow-net to allow sockets)",
                        t.sh.prog_name
                    );
                }
                return Err(Errno(EACCES).into());
            }
            h!(SYS_socket, a[0], a[1], a[2])?
        }
        199 => h!(SYS_socketpair, a[0], a[1], a[2], t.ptr(a[3], 8, W)?)?,
        200 | 203 => {
            let (addr, _keep) = sockaddr_in(t, a[1], a[2])?;
            h!(
                if nr == 200 { SYS_bind } else { SYS_connect },
                fd(t, a[0])?,
                addr.as_ptr(),
                addr.len()
            )?
        }
        201 => h!(SYS_listen, fd(t, a[0])?, a[1])?,
        202 | 242 => {
            let lenp = t.opt_ptr(a[2], 4, W)?;
            let len = if a[2] != 0 {
                t.read_mem(a[2], 4)
                    .map(|b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))?
            } else {
                0
            };
            h!(
                SYS_accept4,
                fd(t, a[0])?,
                t.opt_ptr(a[1], len as u64, W)?,
                lenp,
                if nr == 242 { a[3] } else { 0 }
            )?
        }
        204 | 205 => {
            let len = t
                .read_mem(a[2], 4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))?;
            h!(
                if nr == 204 {
                    SYS_getsockname
                } else {
                    SYS_getpeername
                },
                fd(t, a[0])?,
                t.ptr(a[1], len as u64, W)?,
                t.ptr(a[2], 4, W)?
            )?
        }
        206 => {
            let (addr, _keep) = if a[4] != 0 {
                sockaddr_in(t, a[4], a[5])?
            } else {
                (Vec::new(), None)
            };
            let ap = if a[4] != 0 {
                addr.as_ptr()
            } else {
                std::ptr::null()
            };
            h!(
                SYS_sendto,
                fd(t, a[0])?,
                t.ptr(a[1], a[2], R)?,
                a[2],
                a[3],
                ap,
                addr.len()
            )?
        }
        207 => {
            let len = if a[5] != 0 {
                t.read_mem(a[5], 4)
                    .map(|b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))?
            } else {
                0
            };
            let n = h!(
                SYS_recvfrom,
                fd(t, a[0])?,
                t.ptr(a[1], a[2], W)?,
                a[2],
                a[3],
                t.opt_ptr(a[4], len as u64, W)?,
                t.opt_ptr(a[5], 4, W)?
            )?;
            t.written(a[1], n as u64);
            n
        }
        208 => h!(
            SYS_setsockopt,
            fd(t, a[0])?,
            a[1],
            a[2],
            t.ptr(a[3], a[4], R)?,
            a[4]
        )?,
        209 => {
            let len = t
                .read_mem(a[4], 4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))?;
            h!(
                SYS_getsockopt,
                fd(t, a[0])?,
                a[1],
                a[2],
                t.ptr(a[3], len as u64, W)?,
                t.ptr(a[4], 4, W)?
            )?
        }
        210 => h!(SYS_shutdown, fd(t, a[0])?, a[1])?,
        211 | 212 => msg_(t, nr, a)?,
        _ => return Err(Stop::NotHere),
    };
    Ok(Some(r))
}

fn reserved(t: &Thread) -> Vec<u64> {
    let mut r: Vec<u64> = t.sh.sb.reserved_fds().map(|f| f as u64).collect();
    r.sort_unstable();
    r
}

fn lock_mm(t: &Thread) -> std::sync::MutexGuard<'_, crate::mm::Mm> {
    t.sh.mm.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keep the host's working directory on the guest's, so a re-executed popek (execve) starts there.
fn sync_host_cwd(t: &Thread) {
    let cwd = t.sh.sb.cwd();
    if let Ok(f) = t.sh.sb.open_path(&cwd, false) {
        // SAFETY: fchdir on our descriptor.
        unsafe { libc::fchdir(f.as_raw_fd()) };
    }
}

fn fcntl_(t: &mut Thread, a: [u64; 6]) -> Res {
    use libc::*;
    let f = fd(t, a[0])?;
    match a[1] as i32 {
        F_DUPFD | F_DUPFD_CLOEXEC | F_GETFD | F_SETFD | F_GETFL | F_SETFL | F_GETOWN | F_SETOWN
        | F_SETPIPE_SZ | F_GETPIPE_SZ | F_ADD_SEALS | F_GET_SEALS => {
            h!(SYS_fcntl, f, a[1], a[2])
        }
        F_GETLK | F_SETLK | F_SETLKW | F_OFD_GETLK | F_OFD_SETLK | F_OFD_SETLKW => {
            let p = t.ptr(a[2], 32, R | W)?;
            h!(SYS_fcntl, f, a[1], p)
        }
        _ => Err(Errno(EINVAL)),
    }
}

fn ioctl_(t: &mut Thread, a: [u64; 6]) -> Res {
    use libc::*;
    let f = fd(t, a[0])?;
    let req = a[1] as u32 as u64;
    let (len, need) = match req {
        0x5401 => (36, W),          // TCGETS
        0x5402..=0x5404 => (36, R), // TCSETS, TCSETSW, TCSETSF
        0x5413 => (8, W),           // TIOCGWINSZ
        0x5414 => (8, R),           // TIOCSWINSZ
        0x540f => (4, W),           // TIOCGPGRP
        0x5410 => (4, R),           // TIOCSPGRP
        0x5421 | 0x5452 => (4, R),  // FIONBIO, FIOASYNC
        0x541b => (4, W),           // FIONREAD
        0x5429 => (4, W),           // TIOCGSID
        0x540e | 0x5422 => (0, R),  // TIOCSCTTY, TIOCNOTTY
        0x5451 | 0x5450 => (0, R),  // FIOCLEX, FIONCLEX
        _ => return Err(Errno(ENOTTY)),
    };
    let p = if len == 0 {
        a[2] as *mut u8
    } else {
        t.ptr(a[2], len, need)?
    };
    h!(SYS_ioctl, f, req, p)
}

fn mmap_(t: &mut Thread, a: [u64; 6]) -> Res {
    use libc::*;
    let (addr, len, prot, flags, off) = (a[0], a[1], a[2] as u8 & 7, a[3] as i32, a[5]);
    if len == 0 || off % PAGE != 0 || len > SPAN {
        return Err(Errno(EINVAL));
    }
    let len = page_up(len);
    let shared = flags & MAP_TYPE == MAP_SHARED || flags & MAP_TYPE == MAP_SHARED_VALIDATE;
    let anon = flags & MAP_ANONYMOUS != 0;
    let f = if anon { -1 } else { fd(t, a[4])? as i32 };
    let mut mm = lock_mm(t);
    let at = if flags & (MAP_FIXED | MAP_FIXED_NOREPLACE) != 0 {
        if addr % PAGE != 0 || addr.checked_add(len).is_none_or(|e| e > SPAN) || addr == 0 {
            return Err(Errno(if addr % PAGE != 0 { EINVAL } else { ENOMEM }));
        }
        if flags & MAP_FIXED == 0 && mm.overlaps(addr, addr + len) {
            return Err(Errno(EEXIST));
        }
        addr
    } else {
        let hint = addr & !(PAGE - 1);
        if hint >= PAGE
            && hint
                .checked_add(len)
                .is_some_and(|e| e <= crate::mm::MMAP_TOP)
            && !mm.overlaps(hint, hint + len)
        {
            hint
        } else {
            mm.find_free(len).ok_or(Errno(ENOMEM))?
        }
    };
    if anon {
        mm.map_anon(at, len, prot, shared)?;
    } else {
        mm.map_file(at, len, prot, f, off, shared)?;
    }
    Ok(at as i64)
}

fn sigaction_(t: &mut Thread, a: [u64; 6]) -> Res {
    let sig = a[0] as u32;
    if !(1..=64).contains(&sig) || a[3] != 8 {
        return Err(Errno(libc::EINVAL));
    }
    let new = if a[1] != 0 {
        if signal::bit(sig) & signal::UNBLOCKABLE != 0 {
            return Err(Errno(libc::EINVAL));
        }
        let b = t.read_mem(a[1], 24)?;
        let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        Some(Action {
            handler: w(0),
            flags: w(1),
            mask: w(2) & !signal::UNBLOCKABLE,
        })
    } else {
        None
    };
    let old = {
        let mut acts = t.sh.actions.lock().unwrap_or_else(|e| e.into_inner());
        let old = acts[sig as usize - 1];
        if let Some(n) = new {
            acts[sig as usize - 1] = n;
        }
        old
    };
    if let Some(n) = new {
        signal::mirror_action(sig, &n);
    }
    if a[2] != 0 {
        let mut b = [0u8; 24];
        b[..8].copy_from_slice(&old.handler.to_le_bytes());
        b[8..16].copy_from_slice(&old.flags.to_le_bytes());
        b[16..].copy_from_slice(&old.mask.to_le_bytes());
        t.write_mem(a[2], &b)?;
    }
    Ok(0)
}

fn sigaltstack_(t: &mut Thread, a: [u64; 6]) -> Res {
    let (sp, size, flags) = t.altstack;
    let cur_sp = t.hart.xreg(2);
    let on = flags & SS_DISABLE == 0 && size != 0 && cur_sp > sp && cur_sp <= sp + size;
    if a[1] != 0 {
        let mut b = [0u8; 24];
        b[..8].copy_from_slice(&sp.to_le_bytes());
        let fl = if on { SS_ONSTACK } else { flags & SS_DISABLE };
        b[8..12].copy_from_slice(&(fl as u32).to_le_bytes());
        b[16..].copy_from_slice(&size.to_le_bytes());
        t.write_mem(a[1], &b)?;
    }
    if a[0] != 0 {
        if on {
            return Err(Errno(libc::EPERM));
        }
        let b = t.read_mem(a[0], 24)?;
        let nsp = u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8]));
        let nfl = u32::from_le_bytes(b[8..12].try_into().unwrap_or([0; 4])) as u64;
        let nsize = u64::from_le_bytes(b[16..].try_into().unwrap_or([0; 8]));
        if nfl & !(SS_DISABLE | (1 << 31)) != 0 {
            return Err(Errno(libc::EINVAL));
        }
        if nfl & SS_DISABLE != 0 {
            t.altstack = (0, 0, SS_DISABLE);
        } else {
            if nsize < 2048 {
                return Err(Errno(libc::ENOMEM));
            }
            t.altstack = (nsp, nsize, 0);
        }
    }
    Ok(0)
}

fn futex_(t: &mut Thread, a: [u64; 6]) -> Res {
    use libc::*;
    let cmd = a[1] as i32 & !(FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME);
    let uaddr = t.ptr(a[0], 4, R)?;
    match cmd {
        FUTEX_WAIT | FUTEX_WAIT_BITSET | FUTEX_LOCK_PI | FUTEX_LOCK_PI2 | FUTEX_WAIT_REQUEUE_PI => {
            let ts = t.opt_ptr(a[3], 16, R)?;
            let u2 = if cmd == FUTEX_WAIT_REQUEUE_PI {
                t.ptr(a[4], 4, R)?
            } else {
                std::ptr::null_mut()
            };
            h!(SYS_futex, uaddr, a[1], a[2], ts, u2, a[5])
        }
        FUTEX_WAKE | FUTEX_WAKE_BITSET | FUTEX_UNLOCK_PI | FUTEX_TRYLOCK_PI => {
            h!(SYS_futex, uaddr, a[1], a[2], a[3], 0, a[5])
        }
        FUTEX_REQUEUE | FUTEX_CMP_REQUEUE | FUTEX_WAKE_OP | FUTEX_CMP_REQUEUE_PI => {
            let u2 = t.ptr(a[4], 4, W)?;
            h!(SYS_futex, uaddr, a[1], a[2], a[3], u2, a[5])
        }
        _ => Err(Errno(ENOSYS)),
    }
}

fn clone_(t: &mut Thread, flags: u64, stack: u64, ptid: u64, tls: u64, ctid: u64) -> Res {
    use libc::*;
    let vm = flags & CLONE_VM as u64 != 0;
    let thread = flags & CLONE_THREAD as u64 != 0;
    if thread {
        if !vm || flags & CLONE_SIGHAND as u64 == 0 {
            return Err(Errno(EINVAL));
        }
        return t.spawn_thread(flags, stack, ptid, tls, ctid);
    }
    if vm && flags & CLONE_VFORK as u64 == 0 {
        // Shared memory without a shared thread group: no host equivalent popek can offer.
        return Err(Errno(ENOSYS));
    }
    t.fork(flags, stack, ptid, tls, ctid)
}

fn execve_(t: &mut Thread, nr: u64, a: [u64; 6]) -> Result<i64, Stop> {
    let (dfd, path, argv, envp) = if nr == 281 {
        (a[0], a[1], a[2], a[3])
    } else {
        (libc::AT_FDCWD as u64, a[0], a[1], a[2])
    };
    let abs = path_at(t, dfd, path)?;
    let abs = t.sh.sb.exec_path(&abs);
    let argv = t.cstr_array(argv)?;
    let envp = t.cstr_array(envp)?;
    // Check what the kernel would before replacing ourselves.
    let f = t.sh.sb.open(&abs, libc::O_RDONLY | libc::O_CLOEXEC, 0)?;
    let mut head = [0u8; 64];
    // SAFETY: reading into our buffer from our descriptor.
    let n = unsafe { libc::pread(f, head.as_mut_ptr() as *mut libc::c_void, 64, 0) };
    let st = fstat_host(f);
    let pathc = cs(format!("/proc/self/fd/{f}").as_bytes())?;
    // SAFETY: access on a host path naming our own descriptor.
    let x_ok = unsafe { libc::access(pathc.as_ptr(), libc::X_OK) } == 0;
    // SAFETY: closing our descriptor.
    unsafe { libc::close(f) };
    let st = st?;
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR
        || st.st_mode & libc::S_IFMT != libc::S_IFREG
        || !x_ok
    {
        return Err(Errno(libc::EACCES).into());
    }
    if n < 4 || !crate::elf::is_runnable(&head[..n as usize]) {
        return Err(Errno(libc::ENOEXEC).into());
    }
    let args = process::reexec_args(&t.sh, &abs, &argv, &envp);
    let cargs: Vec<CString> = args.iter().map(|s| cs(s)).collect::<Result<_, _>>()?;
    let mut pa: Vec<*const libc::c_char> = cargs.iter().map(|c| c.as_ptr()).collect();
    pa.push(std::ptr::null());
    // The host environment of the new popek is empty: the guest's travels in `args`.
    let pe: [*const libc::c_char; 1] = [std::ptr::null()];
    let exe = std::env::current_exe()
        .map(|p| p.as_os_str().as_bytes().to_vec())
        .unwrap_or_else(|_| b"/proc/self/exe".to_vec());
    let exe = cs(&exe)?;
    // Restore host dispositions of signals popek catches for the guest: handlers do not survive
    // exec, and the new popek re-reads SIG_IGN/SIG_DFL from the host.
    for sig in 1..=64u32 {
        let act = t.sh.actions.lock().unwrap_or_else(|e| e.into_inner())[sig as usize - 1];
        if act.handler > signal::SIG_IGN {
            signal::mirror_action(sig, &Action::default());
        }
    }
    // This process image ends here (its report comes first; the new one makes its own).
    crate::stats::report();
    // SAFETY: valid NULL-terminated arrays of C strings that outlive the call.
    unsafe { libc::execve(exe.as_ptr(), pa.as_ptr(), pe.as_ptr()) };
    Err(Errno::last().into())
}

/// fchmodat(dfd, path, mode) and fchmodat2(dfd, path, mode, flags) (Linux 6.6; glibc's
/// `fchmodat` calls it for AT_SYMLINK_NOFOLLOW): with AT_SYMLINK_NOFOLLOW a symlink's own mode
/// cannot change (EOPNOTSUPP), and AT_EMPTY_PATH with an empty path means `dfd` itself.
fn fchmodat2(t: &mut Thread, a: [u64; 6]) -> Result<i64, Errno> {
    use libc::*;
    let flags = a[3] as i32;
    if flags & !(AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH) != 0 {
        return Err(Errno(EINVAL));
    }
    if flags & AT_EMPTY_PATH != 0 && t.cstr(a[1], GUEST_PATH_MAX)?.is_empty() {
        return h!(SYS_fchmod, fd(t, a[0])?, no_setid(a[2]));
    }
    let abs = path_at(t, a[0], a[1])?;
    let nofollow = flags & AT_SYMLINK_NOFOLLOW != 0;
    let f = t.sh.sb.open_path(&abs, nofollow)?;
    if nofollow {
        // SAFETY: `st` is written by fstat on a descriptor we own.
        let mut st: stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { fstat(f.as_raw_fd(), &mut st) } != 0 {
            return Err(Errno::last());
        }
        if st.st_mode & S_IFMT == S_IFLNK {
            return Err(Errno(EOPNOTSUPP));
        }
    }
    let p = cs(format!("/proc/self/fd/{}", f.as_raw_fd()).as_bytes())?;
    h!(SYS_fchmodat, AT_FDCWD, p.as_ptr(), no_setid(a[2]))
}

/// Drop set-uid and set-gid bits from a mode the guest asks for: a set-uid file made by a guest
/// that runs as root would be a privilege for whoever runs it on the host later.
fn no_setid(mode: u64) -> u64 {
    mode & !((libc::S_ISUID | libc::S_ISGID) as u64)
}

/// kill(pid, sig), tkill(tid, sig), tgkill(tgid, tid, sig): only the guest's own processes and
/// threads (crate::pids); signals a guest sends itself synchronously stay inside popek.
fn kill_(t: &mut Thread, nr: u64, a: [u64; 6]) -> Res {
    use libc::*;
    let sig = if nr == 131 { a[2] } else { a[1] } as u32;
    if sig > 64 {
        return Err(Errno(EINVAL));
    }
    // SAFETY: getpid cannot fail.
    let me = unsafe { getpid() };
    let target_self = match nr {
        129 => a[0] as i32 == me,
        130 => a[0] as i32 == t.tid,
        _ => a[1] as i32 == t.tid && a[0] as i32 == me,
    };
    if sig != 0 && target_self && signal::bit(sig) & signal::SYNCHRONOUS != 0 {
        t.pending |= signal::bit(sig);
        return Ok(0);
    }
    match nr {
        129 => {
            let pid = a[0] as i32;
            if pid > 0 {
                t.sh.pids.signal(pid, sig)?;
            } else {
                t.sh.pids.signal_many(pid, sig)?;
            }
            Ok(0)
        }
        // tkill names a thread of any process; popek lets it name only this process's threads
        // (the kernel checks the thread belongs to the group).
        130 => h!(SYS_tgkill, me, a[0] as i32, sig),
        _ => {
            let (tgid, tid) = (a[0] as i32, a[1] as i32);
            if tgid <= 0 || tid <= 0 {
                return Err(Errno(EINVAL));
            }
            if tgid != me && !t.sh.pids.is_guest(tgid) {
                return Err(Errno(ESRCH));
            }
            h!(SYS_tgkill, tgid, tid, sig)
        }
    }
}

/// The size argument of getgroups or setgroups as the kernel reads it (an `int`): EINVAL
/// when negative or above `most`, so the buffer's length never overflows.
fn group_count(size: u64, most: i32) -> Result<i32, Errno> {
    let n = size as i32;
    if n < 0 || n > most {
        return Err(Errno(libc::EINVAL));
    }
    Ok(n)
}

/// Linux's limit on supplementary groups.
const NGROUPS_MAX: i32 = 65536;

/// setpriority, getpriority, ioprio_set, ioprio_get: for one task, the guest's own only; a
/// process group's or a user's (which may hold host processes) refused as if it had none
/// there (the getters) or as not permitted (the setters).
fn priority(t: &mut Thread, nr: u64, a: [u64; 6]) -> Res {
    use libc::*;
    const IOPRIO_WHO_PROCESS: u64 = 1;
    let one_task = match nr {
        140 | 141 => a[0] == PRIO_PROCESS as u64,
        _ => a[0] == IOPRIO_WHO_PROCESS,
    };
    if !one_task {
        return Err(Errno(if nr == 140 || nr == 30 { EPERM } else { ESRCH }));
    }
    t.sh.pids.check_task(a[1] as i32)?;
    match nr {
        140 => h!(SYS_setpriority, a[0], a[1], a[2]),
        141 => h!(SYS_getpriority, a[0], a[1]),
        30 => h!(SYS_ioprio_set, a[0], a[1], a[2]),
        _ => h!(SYS_ioprio_get, a[0], a[1]),
    }
}

/// sched_getscheduler, sched_getparam, sched_setaffinity, sched_getaffinity: the guest's own
/// tasks only.
fn sched_(t: &mut Thread, nr: u64, a: [u64; 6]) -> Res {
    use libc::*;
    t.sh.pids.check_task(a[0] as i32)?;
    match nr {
        120 => h!(SYS_sched_getscheduler, a[0]),
        121 => h!(SYS_sched_getparam, a[0], t.ptr(a[1], 4, W)?),
        122 => h!(SYS_sched_setaffinity, a[0], a[1], t.ptr(a[2], a[1], R)?),
        _ => h!(SYS_sched_getaffinity, a[0], a[1], t.ptr(a[2], a[1], W)?),
    }
}

fn hwprobe(t: &mut Thread, a: [u64; 6]) -> Res {
    if a[4] != 0 {
        return Err(Errno(libc::EINVAL));
    }
    for i in 0..a[1] {
        let p = a[0] + i * 16;
        let key = t.read_u64(p)? as i64;
        let (key, val) = match key {
            0..=2 => (key, 0), // mvendorid, marchid, mimpid: not a real part
            3 => (key, 1),     // BASE_BEHAVIOR_IMA
            4 => (key, 1 | 2), // IMA_FD | IMA_C (no V, no Z* extensions)
            5 => (key, 0),     // CPUPERF_0: misaligned access speed unknown
            6 => (key, 0),     // ZICBOZ_BLOCK_SIZE: no Zicboz
            _ => (-1, 0),
        };
        t.write_u64(p, key as u64)?;
        t.write_u64(p + 8, val)?;
    }
    Ok(0)
}

/// A guest sockaddr, with AF_UNIX paths resolved inside the root (through /proc/self/fd/N of the
/// parent directory, which the returned descriptor keeps open).
fn sockaddr_in(
    t: &Thread,
    addr: u64,
    len: u64,
) -> Result<(Vec<u8>, Option<std::os::fd::OwnedFd>), Errno> {
    if len > 128 {
        return Err(Errno(libc::EINVAL));
    }
    let b = t.read_mem(addr, len)?;
    if len >= 3 && u16::from_le_bytes([b[0], b[1]]) == libc::AF_UNIX as u16 && b[2] != 0 {
        let path: Vec<u8> = b[2..].iter().take_while(|&&c| c != 0).copied().collect();
        let abs = t.sh.sb.abs(libc::AT_FDCWD as i64, &path)?;
        let (d, last) = t.sh.sb.parent(&abs)?;
        let host = format!("/proc/self/fd/{}/", d.as_raw_fd());
        let mut out = vec![b[0], b[1]];
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(last.as_bytes());
        out.push(0);
        if out.len() > 110 {
            return Err(Errno(libc::ENAMETOOLONG));
        }
        return Ok((out, Some(d)));
    }
    Ok((b, None))
}

fn msg_(t: &mut Thread, nr: u64, a: [u64; 6]) -> Res {
    let f = fd(t, a[0])?;
    let m = t.read_mem(a[1], 56)?;
    let w = |o: usize| u64::from_le_bytes(m[o..o + 8].try_into().unwrap_or([0; 8]));
    let (name, namelen, iov, iovlen, ctl, ctllen) =
        (w(0), w(8) & 0xffff_ffff, w(16), w(24), w(32), w(40));
    let send = nr == 211;
    let need = if send { R } else { W };
    let v = iovecs(t, iov, iovlen, need)?;
    let mut hdr: libc::msghdr = unsafe_zeroed_msghdr();
    let (sa, _keep) = if send && name != 0 {
        sockaddr_in(t, name, namelen)?
    } else {
        (Vec::new(), None)
    };
    hdr.msg_name = if name == 0 {
        std::ptr::null_mut()
    } else if send {
        sa.as_ptr() as *mut libc::c_void
    } else {
        t.ptr(name, namelen, W)? as *mut libc::c_void
    };
    hdr.msg_namelen = if send && name != 0 {
        sa.len() as u32
    } else {
        namelen as u32
    };
    hdr.msg_iov = v.as_ptr() as *mut libc::iovec;
    hdr.msg_iovlen = v.len() as _;
    hdr.msg_control = t.opt_ptr(ctl, ctllen, need)? as *mut libc::c_void;
    hdr.msg_controllen = ctllen as _;
    let n = if send {
        h!(libc::SYS_sendmsg, f, &hdr as *const libc::msghdr, a[2])?
    } else {
        let n = h!(libc::SYS_recvmsg, f, &mut hdr as *mut libc::msghdr, a[2])?;
        t.write_mem(a[1] + 8, &hdr.msg_namelen.to_le_bytes())?;
        t.write_mem(a[1] + 40, &(hdr.msg_controllen as u64).to_le_bytes())?;
        t.write_mem(a[1] + 48, &hdr.msg_flags.to_le_bytes())?;
        mark_iov_written(t, iov, iovlen, n);
        n
    };
    Ok(n)
}

fn unsafe_zeroed_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is plain data; all-zero is a valid (empty) value.
    unsafe { std::mem::zeroed() }
}
