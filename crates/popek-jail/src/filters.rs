//! The seccomp allow-lists, one per kind of popek thread. Each list is what that kind of thread
//! was seen to need (the Rust runtime and glibc underneath it included), nothing more: a call
//! outside it traps to the SIGSYS reporter.
//!
//! Threads that only ever start threads (never processes) may `clone` only with CLONE_THREAD,
//! and `clone3` answers ENOSYS (its flags live in memory, out of a filter's reach), so glibc
//! falls back to `clone`, whose flags the filter sees.

use std::collections::BTreeMap;

use libc::*;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::JailError;

/// What a thread does, which decides the host calls it may make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// `popek exec`: every guest thread, which is also the syscall layer (and the process's
    /// first thread, which loads the program). Processes the guest forks and programs it
    /// executes (popek re-executed) inherit the filter.
    Exec {
        /// `--allow-net`: the guest may create sockets.
        allow_net: bool,
    },
    /// `popek run`: the main thread once the machine is built, the vCPU threads and the virtio
    /// device workers they start (disk I/O, the tap, vsock's unix sockets).
    Vmm,
    /// `popek run`: the user-mode network's stack and DNS threads (host sockets, the
    /// resolver's files).
    Net,
    /// `popek run`: the thread reading the console's input.
    Console,
}

impl ThreadKind {
    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Exec { .. } => "process-VM",
            ThreadKind::Vmm => "vCPU/device",
            ThreadKind::Net => "user-network",
            ThreadKind::Console => "console",
        }
    }

    /// Whether this kind may create processes (fork, execve) rather than only threads.
    fn forks(self) -> bool {
        matches!(self, ThreadKind::Exec { .. })
    }
}

/// Every popek thread: the Rust runtime, glibc's allocator and threads, messages on stderr.
const RUNTIME: &[c_long] = &[
    SYS_read,
    SYS_write,
    SYS_close,
    SYS_futex,
    SYS_mmap,
    SYS_munmap,
    SYS_mprotect,
    SYS_madvise,
    SYS_mremap,
    SYS_brk,
    SYS_rt_sigprocmask,
    SYS_rt_sigaction,
    SYS_rt_sigreturn,
    SYS_sigaltstack,
    SYS_exit,
    SYS_exit_group,
    SYS_gettid,
    SYS_getpid,
    SYS_sched_yield,
    SYS_sched_getaffinity,
    SYS_clock_gettime,
    SYS_clock_getres,
    SYS_gettimeofday,
    SYS_clock_nanosleep,
    SYS_nanosleep,
    SYS_getrandom,
    SYS_rseq,
    SYS_set_robust_list,
    SYS_restart_syscall,
    SYS_prctl,
    SYS_tgkill,
    SYS_fstat,
    SYS_newfstatat,
    SYS_statx,
    SYS_lseek,
    SYS_fcntl,
    SYS_poll,
    SYS_ppoll,
    SYS_clone,
    SYS_clone3,
];

/// Event loops of device workers and the network.
const EVENTS: &[c_long] = &[
    SYS_epoll_create1,
    SYS_epoll_ctl,
    SYS_epoll_wait,
    SYS_epoll_pwait,
    SYS_eventfd2,
    SYS_readv,
    SYS_writev,
    SYS_ioctl,
];

/// Using sockets someone else created, or unix sockets (vsock's host side).
const SOCKET_IO: &[c_long] = &[
    SYS_connect,
    SYS_accept,
    SYS_accept4,
    SYS_bind,
    SYS_listen,
    SYS_recvfrom,
    SYS_sendto,
    SYS_recvmsg,
    SYS_sendmsg,
    SYS_recvmmsg,
    SYS_sendmmsg,
    SYS_shutdown,
    SYS_getsockopt,
    SYS_setsockopt,
    SYS_getsockname,
    SYS_getpeername,
    SYS_socketpair,
];

/// The machine: disk requests run on the vCPU that kicks the queue; a reset reloads the boot
/// images (Landlock keeps `openat` to the files named on the command line).
const VMM: &[c_long] = &[
    SYS_pread64,
    SYS_pwrite64,
    SYS_preadv,
    SYS_pwritev,
    SYS_preadv2,
    SYS_pwritev2,
    SYS_fsync,
    SYS_fdatasync,
    SYS_fallocate,
    // Saving a snapshot again into the files opened at start (Ctrl-A s).
    SYS_ftruncate,
    SYS_flock,
    SYS_openat,
    SYS_dup,
    SYS_pipe2,
    // --stats: guest RAM resident.
    SYS_mincore,
    // vsock removes its host socket at exit.
    SYS_unlink,
    SYS_unlinkat,
];

/// The user network: host sockets for the guest's NAT'd connections, DNS through the host's
/// resolver (which reads its configuration files: Landlock keeps those read-only).
const NET: &[c_long] = &[SYS_socket, SYS_openat, SYS_uname, SYS_getuid, SYS_geteuid];

/// The process VM: what the syscall layer passes to the host kernel, plus starting a
/// re-executed popek (its dynamic loader) after a guest execve.
const EXEC: &[c_long] = &[
    // files
    SYS_openat,
    SYS_openat2,
    SYS_close_range,
    SYS_pread64,
    SYS_pwrite64,
    SYS_readv,
    SYS_writev,
    SYS_preadv,
    SYS_pwritev,
    SYS_fstatfs,
    SYS_faccessat2,
    SYS_access,
    SYS_readlink,
    SYS_readlinkat,
    SYS_getdents64,
    SYS_getcwd,
    SYS_fchdir,
    SYS_mkdirat,
    SYS_mknodat,
    SYS_unlinkat,
    SYS_renameat2,
    SYS_symlinkat,
    SYS_linkat,
    SYS_fchmod,
    SYS_fchmodat,
    SYS_fchown,
    SYS_fchownat,
    SYS_utimensat,
    SYS_ftruncate,
    SYS_fallocate,
    SYS_sync,
    SYS_fsync,
    SYS_fdatasync,
    SYS_flock,
    SYS_dup,
    SYS_dup3,
    SYS_pipe2,
    SYS_ioctl,
    SYS_sendfile,
    SYS_copy_file_range,
    SYS_eventfd2,
    SYS_memfd_create,
    SYS_pselect6,
    SYS_epoll_create1,
    SYS_epoll_ctl,
    SYS_epoll_pwait,
    SYS_timerfd_create,
    SYS_timerfd_settime,
    SYS_timerfd_gettime,
    SYS_msync,
    // processes, identities, limits
    SYS_execve,
    SYS_wait4,
    SYS_waitid,
    SYS_getppid,
    SYS_getuid,
    SYS_geteuid,
    SYS_getgid,
    SYS_getegid,
    SYS_getresuid,
    SYS_getresgid,
    SYS_getgroups,
    SYS_setgroups,
    SYS_setuid,
    SYS_setgid,
    SYS_setreuid,
    SYS_setregid,
    SYS_setresuid,
    SYS_setresgid,
    SYS_getpgid,
    SYS_setpgid,
    SYS_getsid,
    SYS_setsid,
    SYS_umask,
    SYS_uname,
    SYS_sysinfo,
    SYS_getrlimit,
    SYS_setrlimit,
    SYS_prlimit64,
    SYS_getrusage,
    SYS_times,
    SYS_sched_setaffinity,
    SYS_setpriority,
    SYS_getpriority,
    SYS_ioprio_set,
    SYS_ioprio_get,
    SYS_sched_getscheduler,
    SYS_sched_getparam,
    SYS_getcpu,
    SYS_set_tid_address,
    SYS_arch_prctl,
    SYS_pause,
    // signals and time
    SYS_kill,
    SYS_tkill,
    SYS_pidfd_open,
    SYS_pidfd_send_signal,
    SYS_rt_sigsuspend,
    SYS_rt_sigtimedwait,
    SYS_getitimer,
    SYS_setitimer,
];

/// The host calls `kind` may make, sorted (for the note and the tests).
pub fn allow_list(kind: ThreadKind) -> Vec<c_long> {
    let parts: &[&[c_long]] = match kind {
        ThreadKind::Exec { allow_net: false } => &[RUNTIME, EXEC, SOCKET_IO],
        ThreadKind::Exec { allow_net: true } => &[RUNTIME, EXEC, SOCKET_IO, &[SYS_socket]],
        ThreadKind::Vmm => &[RUNTIME, EVENTS, SOCKET_IO, VMM, &[SYS_socket]],
        ThreadKind::Net => &[RUNTIME, EVENTS, SOCKET_IO, NET],
        ThreadKind::Console => &[RUNTIME],
    };
    let mut v: Vec<c_long> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, seccompiler::Error> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value).map_err(Into::into)
}

/// The BPF programs for `kind`, in the order to install them: for kinds that only start
/// threads, the argument checks (a `clone` without CLONE_THREAD traps, and so does a `Vmm`
/// `socket` other than AF_UNIX) and the filter turning `clone3` into ENOSYS; then the
/// allow-list itself ([`crate::tree`]; anything else traps), last because it does not allow
/// seccomp(2).
pub fn compile(kind: ThreadKind) -> Result<Vec<BpfProgram>, JailError> {
    let err = |e: seccompiler::Error| JailError::Filter {
        kind: kind.name(),
        why: e.to_string(),
    };
    let mut progs = Vec::new();
    if !kind.forks() {
        let thread = CLONE_THREAD as u64;
        let mut denied: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::from([(
            SYS_clone,
            vec![SeccompRule::new(vec![
                cond(0, SeccompCmpOp::MaskedEq(thread), 0).map_err(err)?
            ])
            .map_err(|e| err(e.into()))?],
        )]);
        if kind == ThreadKind::Vmm {
            // vsock's host side: unix sockets only (the user network has its own threads).
            denied.insert(
                SYS_socket,
                vec![SeccompRule::new(vec![
                    cond(0, SeccompCmpOp::Ne, AF_UNIX as u64).map_err(err)?
                ])
                .map_err(|e| err(e.into()))?],
            );
        }
        let checks = SeccompFilter::new(
            denied,
            SeccompAction::Allow,
            SeccompAction::Trap,
            TargetArch::x86_64,
        )
        .map_err(|e| err(e.into()))?;
        progs.push(BpfProgram::try_from(checks).map_err(|e| err(e.into()))?);
        let no_clone3 = SeccompFilter::new(
            BTreeMap::from([(SYS_clone3, Vec::new())]),
            SeccompAction::Allow,
            SeccompAction::Errno(ENOSYS as u32),
            TargetArch::x86_64,
        )
        .map_err(|e| err(e.into()))?;
        progs.push(BpfProgram::try_from(no_clone3).map_err(|e| err(e.into()))?);
    }
    progs.push(crate::tree::allow_tree(&allow_list(kind)));
    Ok(progs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles() {
        for kind in [
            ThreadKind::Exec { allow_net: false },
            ThreadKind::Exec { allow_net: true },
            ThreadKind::Vmm,
            ThreadKind::Net,
            ThreadKind::Console,
        ] {
            let progs = compile(kind).unwrap();
            assert!(
                !progs.is_empty() && progs.iter().all(|p| !p.is_empty()),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn narrower_threads_have_shorter_lists() {
        let n = |k| allow_list(k).len();
        let exec = n(ThreadKind::Exec { allow_net: false });
        let (vmm, net, console) = (
            n(ThreadKind::Vmm),
            n(ThreadKind::Net),
            n(ThreadKind::Console),
        );
        println!("allow-lists: exec {exec}, vmm {vmm}, net {net}, console {console}");
        assert_eq!(n(ThreadKind::Exec { allow_net: true }), exec + 1);
        assert!(
            console < net && net < vmm && vmm < exec,
            "{console} {net} {vmm} {exec}"
        );
    }

    #[test]
    fn lists_leave_out_what_no_thread_needs() {
        let dangerous = [
            SYS_ptrace,
            SYS_mount,
            SYS_umount2,
            SYS_pivot_root,
            SYS_chroot,
            SYS_unshare,
            SYS_setns,
            SYS_bpf,
            SYS_perf_event_open,
            SYS_process_vm_readv,
            SYS_process_vm_writev,
            SYS_init_module,
            SYS_finit_module,
            SYS_kexec_load,
            SYS_reboot,
            SYS_open_by_handle_at,
            SYS_userfaultfd,
            SYS_io_uring_setup,
            SYS_keyctl,
            SYS_add_key,
        ];
        for kind in [
            ThreadKind::Exec { allow_net: true },
            ThreadKind::Vmm,
            ThreadKind::Net,
            ThreadKind::Console,
        ] {
            let list = allow_list(kind);
            for nr in dangerous {
                assert!(!list.contains(&nr), "{kind:?} allows {nr}");
            }
        }
        assert!(!allow_list(ThreadKind::Exec { allow_net: false }).contains(&SYS_socket));
        assert!(!allow_list(ThreadKind::Vmm).contains(&SYS_execve));
        assert!(!allow_list(ThreadKind::Console).contains(&SYS_openat));
    }
}
