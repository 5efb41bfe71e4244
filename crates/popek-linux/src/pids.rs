//! Which host processes belong to the guest. The guest's pids are host pids (its processes are
//! host processes), so every call that names another process — kill and its relatives,
//! prlimit64, the scheduler calls, getpgid/getsid/setpgid — goes through here: the guest may
//! name only its own processes and threads, never the host's.
//!
//! The guest's processes are the first `popek exec` process (the guest root: its pid survives
//! the guest's execve, which re-executes popek in place) and its descendants. Ancestry is read
//! from /proc; a process is held by a pidfd while it is checked and signalled, so a pid that is
//! reused in between cannot redirect the signal to a host process.

use std::os::fd::{FromRawFd, OwnedFd};

use crate::Errno;

/// The guest's processes, identified by the guest root's host pid.
#[derive(Clone, Copy, Debug)]
pub struct GuestPids {
    root: i32,
}

/// Deepest ancestry walked before giving up (a guest cannot build a longer chain in time).
const MAX_DEPTH: usize = 4096;

fn my_pid() -> i32 {
    // SAFETY: getpid cannot fail.
    unsafe { libc::getpid() }
}

/// Fields after the command name of /proc/PID/stat: state, ppid, pgrp, ...
fn stat_fields(pid: i32) -> Option<Vec<i64>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    Some(
        rest.split_whitespace()
            .skip(1)
            .take(3)
            .filter_map(|f| f.parse().ok())
            .collect(),
    )
}

fn parent_of(pid: i32) -> Option<i32> {
    stat_fields(pid)?.first().map(|&p| p as i32)
}

fn pgid_of(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(1).map(|&p| p as i32)
}

/// The thread group (process) a task id belongs to.
fn tgid_of(id: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{id}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

fn pidfd_open(pid: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes integers and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel just gave us this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

impl GuestPids {
    /// The guest whose first process is `root` (None: this process is the first).
    pub fn new(root: Option<i32>) -> GuestPids {
        GuestPids {
            root: root.unwrap_or_else(my_pid),
        }
    }

    /// The guest root's pid, passed to a re-executed popek.
    pub fn root(&self) -> i32 {
        self.root
    }

    /// Whether process `pid` is the guest root or one of its descendants.
    pub fn is_guest(&self, pid: i32) -> bool {
        let mut p = pid;
        for _ in 0..MAX_DEPTH {
            if p == self.root {
                return true;
            }
            if p <= 1 {
                return false;
            }
            match parent_of(p) {
                Some(parent) => p = parent,
                None => return false,
            }
        }
        false
    }

    /// Whether task `id` (a process or a thread id; 0 = the caller) is the guest's.
    pub fn is_guest_task(&self, id: i32) -> bool {
        id == 0 || id == my_pid() || tgid_of(id).is_some_and(|tg| self.is_guest(tg))
    }

    /// ESRCH unless task `id` is the guest's: a host process looks like no process at all.
    pub fn check_task(&self, id: i32) -> Result<(), Errno> {
        if self.is_guest_task(id) {
            Ok(())
        } else {
            Err(Errno(libc::ESRCH))
        }
    }

    /// Every live guest process.
    fn processes(&self) -> Vec<i32> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return vec![my_pid()];
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&p| self.is_guest(p))
            .collect()
    }

    /// Signal one guest process (0 checks that it exists), as kill(pid, sig) with pid > 0.
    pub fn signal(&self, pid: i32, sig: u32) -> Result<(), Errno> {
        let pidfd = pidfd_open(pid).map_err(|_| Errno(libc::ESRCH))?;
        if !self.is_guest(pid) {
            return Err(Errno(libc::ESRCH));
        }
        // SAFETY: pidfd_send_signal on our descriptor with a NULL siginfo (kill semantics).
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                std::os::fd::AsRawFd::as_raw_fd(&pidfd),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            Err(Errno::last())
        } else {
            Ok(())
        }
    }

    /// kill(pid, sig) for pid <= 0: 0 is the caller's process group, -1 every guest process but
    /// the caller, -PGID that group; only guest processes are ever signalled.
    pub fn signal_many(&self, pid: i32, sig: u32) -> Result<(), Errno> {
        let me = my_pid();
        let targets: Vec<i32> = match pid {
            -1 => self.processes().into_iter().filter(|&p| p != me).collect(),
            0 => {
                let group = pgid_of(me).ok_or(Errno(libc::ESRCH))?;
                self.processes()
                    .into_iter()
                    .filter(|&p| pgid_of(p) == Some(group))
                    .collect()
            }
            _ => {
                let group = pid.checked_neg().ok_or(Errno(libc::ESRCH))?;
                self.processes()
                    .into_iter()
                    .filter(|&p| pgid_of(p) == Some(group))
                    .collect()
            }
        };
        let mut result = Err(Errno(libc::ESRCH));
        for p in targets {
            match self.signal(p, sig) {
                Ok(()) => result = Ok(()),
                Err(e) if result.is_err() => result = Err(e),
                Err(_) => {}
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_guest_and_parent_is_not() {
        let g = GuestPids::new(None);
        assert!(g.is_guest(my_pid()));
        assert!(g.is_guest_task(0));
        let parent = parent_of(my_pid()).unwrap();
        assert!(!g.is_guest(parent));
        assert!(!g.is_guest(1));
        assert_eq!(g.check_task(1), Err(Errno(libc::ESRCH)));
        assert_eq!(g.signal(1, 0), Err(Errno(libc::ESRCH)));
    }

    #[test]
    fn child_is_guest_and_can_be_signalled() {
        let g = GuestPids::new(None);
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert!(g.is_guest(pid));
        assert!(g.is_guest_task(pid));
        g.signal(pid, libc::SIGKILL as u32).unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success());
        // Gone now: no such process.
        assert!(g.signal(pid, 0).is_err());
    }

    #[test]
    fn a_thread_of_ours_is_a_guest_task() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let h = std::thread::spawn(move || {
            // SAFETY: gettid cannot fail.
            tx.send(unsafe { libc::gettid() }).unwrap();
            let _ = done_rx.recv();
        });
        let tid = rx.recv().unwrap();
        assert!(GuestPids::new(None).is_guest_task(tid));
        done_tx.send(()).unwrap();
        h.join().unwrap();
    }
}
