//! The process: start-up, the per-thread run loop, signal delivery, threads and fork.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use popek_cpu::{Bus, BusFault, Exception, Exit, Hart, HartConfig, Memory, PagePerms, Trap};

use crate::elf;
use crate::fs::Sandbox;
use crate::mm::{self, HostBase, Mm, PAGE};
use crate::pids::GuestPids;
use crate::signal::{self, Action, FrameRegs, HOST_PENDING};
use crate::stats;
use crate::syscall;
use crate::{Errno, Error, ExecConfig};

/// State shared by every thread of the guest process.
pub struct Shared {
    /// The address space.
    pub mm: Mutex<Mm>,
    /// Host base of guest address 0.
    pub base: HostBase,
    /// Page permissions (also inside `memory`).
    pub perms: Arc<PagePerms>,
    /// The hart's view of memory, cloned for new threads.
    pub memory: Memory,
    /// The file-system sandbox.
    pub sb: Sandbox,
    /// The command line popek was started with.
    pub config: ExecConfig,
    /// Signal dispositions (index sig - 1).
    pub actions: Mutex<[Action; 64]>,
    /// Guest address of the `li a7, 139; ecall` sigreturn trampoline.
    pub trampoline: u64,
    /// The program name for messages.
    pub prog_name: String,
    /// Live guest threads.
    pub threads: AtomicUsize,
    /// Whether the "networking is off" note was printed.
    pub net_warned: AtomicBool,
    /// The guest's processes: the only ones it may signal or otherwise name.
    pub pids: GuestPids,
    /// [`Mm::mirroring`] and [`Mm::mirroring_writes`]: while set, harts let the host check
    /// their loads, and their stores.
    pub mirroring: (Arc<AtomicBool>, Arc<AtomicBool>),
}

/// One guest thread: a hart and its per-thread kernel state.
pub struct Thread {
    /// The hart.
    pub hart: Hart,
    /// The process.
    pub sh: Arc<Shared>,
    /// Host (= guest) thread id.
    pub tid: i32,
    /// Blocked signals.
    pub mask: u64,
    /// Signals sent to this thread by popek itself (faults raised by kill, etc.).
    pub pending: u64,
    /// sigaltstack: (ss_sp, ss_size, ss_flags).
    pub altstack: (u64, u64, u64),
    /// set_tid_address / CLONE_CHILD_CLEARTID.
    pub clear_child_tid: u64,
    /// The mask to restore after a signal handler interrupting rt_sigsuspend.
    pub suspend_saved: Option<u64>,
}

/// The bus of a user-mode hart: no devices; `time` counts at 10 MHz like QEMU's virt board.
pub struct TimeBus(Instant);

impl Bus for TimeBus {
    fn read(&mut self, _: u64, _: u8) -> Result<u64, BusFault> {
        Err(BusFault)
    }
    fn write(&mut self, _: u64, _: u8, _: u64) -> Result<(), BusFault> {
        Err(BusFault)
    }
    fn time(&mut self) -> u64 {
        (self.0.elapsed().as_nanos() / 100) as u64
    }
}

/// The sigreturn trampoline: `li a7, 139; ecall`.
const TRAMPOLINE: [u32; 2] = [0x08b0_0893, 0x0000_0073];

/// What the run loop does after a syscall.
pub enum Flow {
    /// Keep running.
    Continue,
    /// This thread is done.
    ExitThread,
}

/// SS_DISABLE.
pub const SS_DISABLE: u64 = 2;
/// SS_ONSTACK.
pub const SS_ONSTACK: u64 = 1;

fn os_bytes(s: &OsString) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// Find the program: a path (relative to the guest's cwd) or a name looked up in PATH.
fn resolve_prog(sb: &Sandbox, prog: &[u8], env: &[Vec<u8>]) -> Vec<u8> {
    if prog.contains(&b'/') {
        return sb
            .abs(libc::AT_FDCWD as i64, prog)
            .unwrap_or_else(|_| prog.to_vec());
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix(b"PATH="))
        .unwrap_or(b"/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin");
    for dir in path.split(|&b| b == b':').filter(|d| d.starts_with(b"/")) {
        let cand = [dir, b"/", prog].concat();
        if let Ok(fd) = sb.open_path(&cand, false) {
            // SAFETY: fstat into a zeroed struct on our descriptor.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            if unsafe { libc::fstat(std::os::fd::AsRawFd::as_raw_fd(&fd), &mut st) } == 0
                && st.st_mode & libc::S_IFMT == libc::S_IFREG
            {
                return cand;
            }
        }
    }
    sb.abs(libc::AT_FDCWD as i64, prog)
        .unwrap_or_else(|_| prog.to_vec())
}

/// Jail this process before anything of the guest's is read: descriptors, Landlock, seccomp.
/// A popek re-executed by a guest's execve inherited all of it (and its descriptors are the
/// guest's), so it only names its thread kind for the SIGSYS reporter, and gets no perf map.
///
/// Returns the perf map's descriptor (`POPEK_PERF_MAP`), opened first since the jail forbids
/// creating files outside the guest's root.
fn enter_jail(config: &ExecConfig) -> Result<Option<i32>, Error> {
    let kind = popek_jail::ThreadKind::Exec {
        allow_net: config.allow_net,
    };
    if config.guest_root.is_some() {
        popek_jail::report_as(kind)?;
        return Ok(None);
    }
    let perf_map = popek_jit::open_perf_map(Some(crate::fs::reserved_fd_floor() - 1));
    let keep: Vec<i32> = config.pass_fds.iter().copied().chain(perf_map).collect();
    popek_jail::close_inherited_fds(&keep).map_err(Error::Host)?;
    let rules = popek_jail::FsRules {
        trees: vec![config.root.clone()],
        // Ancestry of pids the guest names (crate::pids); never a guest path.
        read: vec!["/proc".into()],
        exec: popek_jail::FsRules::self_exec_files(),
        read_write: Vec::new(),
        devices: crate::fs::HOST_DEVICES
            .iter()
            .map(|d| std::path::PathBuf::from(std::ffi::OsStr::from_bytes(d)))
            .collect(),
        deny_tcp: !config.allow_net,
        scoped: true,
        ..popek_jail::FsRules::default()
    };
    let status = rules.apply()?;
    if status != popek_jail::FsStatus::Full {
        // The seccomp filter and the syscall layer's own checks still hold.
        tracing::info!("Landlock file-system rules {status:?} on this kernel");
    }
    popek_jail::restrict_thread(kind)?;
    Ok(perf_map)
}

/// Serve `--gdb` from a thread of its own, jailed like the rest of the process; gdb gets the
/// auxiliary vector of the stack at `sp`.
fn start_gdb(config: &ExecConfig, base: HostBase, sp: u64) -> Result<(), Error> {
    let Some(debug) = &config.debug else {
        return Ok(());
    };
    // SAFETY: `sp` is the initial stack build_stack just wrote: argc, argv, NULL, envp, NULL,
    // then the auxv pairs up to AT_NULL, all inside the stack mapping.
    let word = |i: u64| unsafe { (base.ptr(sp + 8 * i) as *const u64).read_unaligned() };
    let argc = word(0);
    let mut i = argc + 2;
    while word(i) != 0 {
        i += 1;
    }
    i += 1;
    let mut auxv = Vec::new();
    loop {
        let (k, v) = (word(i), word(i + 1));
        auxv.extend_from_slice(&k.to_le_bytes());
        auxv.extend_from_slice(&v.to_le_bytes());
        if k == 0 {
            break;
        }
        i += 2;
    }
    debug.hub.set_auxv(auxv);
    // SAFETY: getpid has no preconditions.
    debug.hub.set_owner(unsafe { libc::getpid() });
    let listener = debug
        .listener
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(l) = listener {
        popek_gdb::spawn(l, debug.hub.clone(), Box::new(|| {})).map_err(Error::Host)?;
    }
    Ok(())
}

/// Load the program and run it (see [`crate::exec`]).
pub fn start(config: ExecConfig) -> Result<std::convert::Infallible, Error> {
    if config.stats {
        stats::enable(config.guest_root.is_none());
    }
    let perf_map = enter_jail(&config)?;
    let mut sb = Sandbox::new(&config.root).map_err(|source| Error::RootMissing {
        root: config.root.display().to_string(),
        source,
    })?;
    if let Some(fd) = perf_map {
        sb.reserve(fd);
    }
    let env: Vec<Vec<u8>> = config.env.iter().map(os_bytes).collect();
    let prog_arg = os_bytes(&config.prog);
    let path = resolve_prog(&sb, &prog_arg, &env);
    let mut argv = vec![config
        .argv0
        .as_ref()
        .map(os_bytes)
        .unwrap_or_else(|| prog_arg.clone())];
    argv.extend(config.args.iter().map(os_bytes));
    let (mut mmv, memory) = Mm::new(config.memory_limit).map_err(Error::Host)?;
    if config.debug.is_some() {
        // The debugger writes breakpoints into code, which the guest may not write.
        mmv.stop_mirroring_writes();
    }
    let program = elf::load_program(&sb, &mut mmv, path, argv).map_err(|e| match e {
        Error::NotFound { root, .. } => Error::NotFound {
            prog: config.prog.to_string_lossy().into_owned(),
            root,
        },
        e => e,
    })?;
    mmv.brk_start = program.main.end;
    mmv.brk = program.main.end;
    let host_err = |e: Errno| Error::Host(std::io::Error::from_raw_os_error(e.0));
    let sp = elf::build_stack(&mut mmv, &program, &env)
        .map_err(|e| Error::mapping(&config.prog.to_string_lossy(), config.memory_limit, e))?;
    start_gdb(&config, mmv.base(), sp)?;
    let trampoline = mmv
        .find_free(PAGE)
        .ok_or(Error::Host(std::io::Error::from_raw_os_error(libc::ENOMEM)))?;
    mmv.map_anon(trampoline, PAGE, mm::PROT_READ | mm::PROT_EXEC, false)
        .map_err(host_err)?;
    let words: Vec<u8> = TRAMPOLINE.iter().flat_map(|w| w.to_le_bytes()).collect();
    mmv.poke(trampoline, &words).map_err(host_err)?;
    let base = mmv.base();
    *sb.exe.lock().unwrap_or_else(|e| e.into_inner()) = program.path.clone();
    let entry = program.interp.map_or(program.main.entry, |i| i.entry);
    let perms = mmv.perms().clone();
    let mirroring = (mmv.mirroring(), mmv.mirroring_writes());
    // Dispositions start as the host's (ignored signals stay ignored across exec), except
    // SIGPIPE, which the Rust runtime ignores for itself.
    let mut actions = [Action::default(); 64];
    for (i, a) in actions.iter_mut().enumerate() {
        let sig = i as u32 + 1;
        if signal::bit(sig) & (signal::SYNCHRONOUS | signal::UNBLOCKABLE) == 0
            && sig != libc::SIGPIPE as u32
        {
            *a = signal::host_action(sig);
        }
    }
    signal::mirror_action(libc::SIGPIPE as u32, &Action::default());
    let config_root = config.guest_root;
    let sh = Arc::new(Shared {
        mm: Mutex::new(mmv),
        base,
        perms,
        memory: memory.clone(),
        sb,
        prog_name: config.prog.to_string_lossy().into_owned(),
        config,
        actions: Mutex::new(actions),
        trampoline,
        threads: AtomicUsize::new(1),
        net_warned: AtomicBool::new(false),
        pids: GuestPids::new(config_root),
        mirroring,
    });
    let mut hart = Hart::new(user_config(), memory);
    hart.set_pc(entry);
    hart.set_xreg(2, sp);
    let t = Thread {
        hart,
        sh,
        // SAFETY: gettid cannot fail.
        tid: unsafe { libc::gettid() },
        mask: signal::host_mask(),
        pending: 0,
        altstack: (0, 0, SS_DISABLE),
        clear_child_tid: 0,
        suspend_saved: None,
    };
    run(t);
    loop {
        // The main thread exited while others run: wait for them (the last one exits).
        // SAFETY: pause just sleeps.
        unsafe { libc::pause() };
    }
}

fn user_config() -> HartConfig {
    let mut c = HartConfig::user();
    // Other threads may write code this hart decoded: fence.i must drop the decode cache.
    c.smp = true;
    c
}

/// Let the host check `t`'s loads and stores exactly while the memory manager mirrors the
/// guest's reads and writes (see [`Mm::mirroring`]).
fn follow_mirroring(t: &mut Thread) {
    let bits = Some(mm::SPAN.trailing_zeros() as u8);
    let (reads, writes) = &t.sh.mirroring;
    let reads = reads.load(Ordering::Acquire).then_some(bits).flatten();
    let writes = writes.load(Ordering::Acquire).then_some(reads).flatten();
    if t.hart.host_checked_read_bits() != reads {
        t.hart.let_host_check_reads(reads);
    }
    if t.hart.host_checked_write_bits() != writes {
        t.hart.let_host_check_writes(writes);
    }
}

/// Run a guest thread until it exits.
pub fn run(mut t: Thread) {
    let mut bus = TimeBus(Instant::now());
    let debug = t.sh.config.debug.as_ref().map(|d| d.hub.clone());
    // Only the first thread is under the debugger (its host tid is the process's pid).
    // SAFETY: getpid has no preconditions.
    let debug = debug.filter(|_| t.tid == unsafe { libc::getpid() });
    let mut jit = t.sh.config.engine.jit().unwrap_or_else(|e| {
        eprintln!("popek: {e}; using the interpreter");
        None
    });
    // The address space is flat: every data TLB entry's addend is the base.
    t.hart.require_data_addend(t.sh.base.0 as u64);
    // While the host's protection mirrors the guest's reads (and writes), it checks loads
    // (and stores) itself.
    follow_mirroring(&mut t);
    let counts = |t: &Thread, jit: &Option<popek_jit::Jit>| {
        stats::Counts::of(t.hart.instret(), jit.as_ref().map(popek_jit::Jit::stats))
    };
    // This thread's counts when it started (or its process was forked).
    let mut counted_from = counts(&t, &jit);
    loop {
        let exit = match (&debug, jit.as_mut()) {
            (Some(hub), _) if hub.engaged() => hub.run_slice(0, &mut t.hart, &mut bus, 1 << 20),
            (_, Some(jit)) => {
                let exit = t.hart.run_with(&mut bus, 1 << 20, jit);
                if let Some(d) = jit.take_divergence() {
                    eprintln!("popek: {}: --engine verify: {d}", t.sh.prog_name);
                    // SAFETY: terminating the process.
                    unsafe { libc::_exit(70) };
                }
                exit
            }
            _ => t.hart.run(&mut bus, 1 << 20),
        };
        if stats::enabled() {
            stats::publish(t.tid, counts(&t, &jit).since(&counted_from));
        }
        match exit {
            Exit::Ecall => {
                let tid = t.tid;
                let flow = syscall::handle(&mut t);
                // The call may have ended the mirroring (a second thread, execute-only or
                // writable executable memory).
                follow_mirroring(&mut t);
                if t.tid != tid {
                    // The child of a fork (the only change of tid): it counts from here.
                    counted_from = counts(&t, &jit);
                }
                if let Flow::ExitThread = flow {
                    stats::thread_exited(t.tid);
                    return;
                }
            }
            Exit::Trap(trap) => t.fault(trap),
            Exit::Budget => {}
            other => {
                eprintln!(
                    "popek: {}: internal error: unexpected hart exit {other:?}",
                    t.sh.prog_name
                );
                // SAFETY: terminating the process.
                unsafe { libc::_exit(70) };
            }
        }
        t.deliver_pending();
    }
}

impl Thread {
    /// Whether guest memory `addr..addr+len` allows `need`.
    pub fn check(&self, addr: u64, len: u64, need: u8) -> Result<(), Errno> {
        if len == 0 || self.sh.perms.check(addr, len, need) {
            Ok(())
        } else {
            Err(Errno(libc::EFAULT))
        }
    }

    /// Host pointer for a guest buffer the host kernel will access with `need`.
    pub fn ptr(&self, addr: u64, len: u64, need: u8) -> Result<*mut u8, Errno> {
        self.check(addr, len, need)?;
        Ok(self.sh.base.ptr(if len == 0 { 0 } else { addr }))
    }

    /// Host pointer or NULL for a nullable guest pointer.
    pub fn opt_ptr(&self, addr: u64, len: u64, need: u8) -> Result<*mut u8, Errno> {
        if addr == 0 {
            Ok(std::ptr::null_mut())
        } else {
            self.ptr(addr, len, need)
        }
    }

    /// Copy guest memory out.
    pub fn read_mem(&self, addr: u64, len: u64) -> Result<Vec<u8>, Errno> {
        let p = self.ptr(addr, len, PagePerms::READ)?;
        let mut v = vec![0u8; len as usize];
        // SAFETY: the range is guest-readable, hence host-mapped.
        unsafe { std::ptr::copy_nonoverlapping(p, v.as_mut_ptr(), len as usize) };
        Ok(v)
    }

    /// Copy into guest memory.
    pub fn write_mem(&mut self, addr: u64, data: &[u8]) -> Result<(), Errno> {
        let p = self.ptr(addr, data.len() as u64, PagePerms::WRITE)?;
        // SAFETY: the range is guest-writable, hence host-mapped RW.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
        self.written(addr, data.len() as u64);
        Ok(())
    }

    /// Note that the host wrote `addr..addr+len` behind the hart's back: drop decoded code there.
    pub fn written(&mut self, addr: u64, len: u64) {
        if len == 0 {
            return;
        }
        let (first, last) = (addr & !(PAGE - 1), (addr + len - 1) & !(PAGE - 1));
        let mut p = first;
        while p <= last {
            if self.sh.perms.get(p) & PagePerms::EXEC != 0 {
                self.hart.invalidate_range(addr, len);
                return;
            }
            p += PAGE;
        }
    }

    /// Read a guest u64.
    pub fn read_u64(&self, addr: u64) -> Result<u64, Errno> {
        let b = self.read_mem(addr, 8)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }

    /// Write a guest u32.
    pub fn write_u32(&mut self, addr: u64, v: u32) -> Result<(), Errno> {
        self.write_mem(addr, &v.to_le_bytes())
    }

    /// Write a guest u64.
    pub fn write_u64(&mut self, addr: u64, v: u64) -> Result<(), Errno> {
        self.write_mem(addr, &v.to_le_bytes())
    }

    /// A NUL-terminated guest string of at most `max` bytes.
    pub fn cstr(&self, addr: u64, max: usize) -> Result<Vec<u8>, Errno> {
        let mut out = Vec::new();
        let mut a = addr;
        loop {
            self.check(a, 1, PagePerms::READ)?;
            let chunk = (PAGE - (a & (PAGE - 1))) as usize;
            // SAFETY: the page holding `a` is guest-readable, hence host-mapped; we read only
            // within that page.
            let s = unsafe { std::slice::from_raw_parts(self.sh.base.ptr(a), chunk) };
            if let Some(n) = s.iter().position(|&b| b == 0) {
                out.extend_from_slice(&s[..n]);
                return if out.len() > max {
                    Err(Errno(libc::ENAMETOOLONG))
                } else {
                    Ok(out)
                };
            }
            out.extend_from_slice(s);
            if out.len() > max {
                return Err(Errno(libc::ENAMETOOLONG));
            }
            a += chunk as u64;
        }
    }

    /// A NULL-terminated array of guest strings (argv, envp).
    pub fn cstr_array(&self, addr: u64) -> Result<Vec<Vec<u8>>, Errno> {
        let mut out = Vec::new();
        if addr == 0 {
            return Ok(out);
        }
        for i in 0.. {
            let p = self.read_u64(addr + i * 8)?;
            if p == 0 {
                break;
            }
            out.push(self.cstr(p, 128 << 10)?);
            if out.len() > 1 << 16 {
                return Err(Errno(libc::E2BIG));
            }
        }
        Ok(out)
    }

    /// Set the blocked mask (guest and host).
    pub fn set_mask(&mut self, mask: u64) {
        self.mask = mask & !signal::UNBLOCKABLE;
        signal::mirror_mask(self.mask);
    }

    /// A synchronous fault: run the guest's handler, or die the way Linux would.
    fn fault(&mut self, trap: Trap) {
        let pc = self.hart.pc();
        use Exception::*;
        let (sig, code, addr) = match trap.cause {
            IllegalInstruction => (libc::SIGILL, 1, pc),
            Breakpoint => (libc::SIGTRAP, 1, pc),
            LoadMisaligned | StoreMisaligned | InstructionMisaligned => {
                (libc::SIGBUS, 1, trap.tval)
            }
            _ => {
                let mapped = self
                    .sh
                    .mm
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .prot_at(trap.tval)
                    .is_some();
                (libc::SIGSEGV, if mapped { 2 } else { 1 }, trap.tval)
            }
        };
        let sig = sig as u32;
        let act = self.action(sig);
        if act.handler > signal::SIG_IGN && self.mask & signal::bit(sig) == 0 {
            let info = signal::siginfo(sig, code, addr, u32::MAX);
            if self.setup_frame(sig, act, &info).is_ok() {
                return;
            }
        }
        self.die_fault(sig as i32, addr, pc);
    }

    fn die_fault(&self, sig: i32, addr: u64, pc: u64) -> ! {
        eprintln!(
            "popek: {}: {} at {addr:#x} (pc {pc:#x})",
            self.sh.prog_name,
            signal::describe(sig)
        );
        signal::die_of(sig)
    }

    fn action(&self, sig: u32) -> Action {
        self.sh.actions.lock().unwrap_or_else(|e| e.into_inner())[sig as usize - 1]
    }

    /// Whether the signal about to be delivered has a handler with SA_RESTART.
    pub fn restart_pending(&self) -> bool {
        let ready = (HOST_PENDING.load(Ordering::Relaxed) | self.pending) & !self.mask;
        if ready == 0 {
            return false;
        }
        let act = self.action(ready.trailing_zeros() + 1);
        act.handler > signal::SIG_IGN && act.flags & signal::SA_RESTART != 0
    }

    /// Deliver one pending, unblocked signal, if any.
    pub fn deliver_pending(&mut self) {
        let host = HOST_PENDING.load(Ordering::Relaxed);
        let ready = (host | self.pending) & !self.mask;
        if ready == 0 {
            return;
        }
        let sig = ready.trailing_zeros() + 1;
        let b = signal::bit(sig);
        if self.pending & b != 0 {
            self.pending &= !b;
        } else if HOST_PENDING.fetch_and(!b, Ordering::SeqCst) & b == 0 {
            return; // another thread took it
        }
        let act = self.action(sig);
        match act.handler {
            signal::SIG_IGN => {}
            signal::SIG_DFL => {
                if !signal::default_ignores(sig)
                    && !matches!(sig as i32, libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU)
                {
                    signal::die_of(sig as i32);
                }
            }
            _ => {
                // SAFETY: getuid cannot fail.
                let info = signal::siginfo(sig, 0, 0, unsafe { libc::getuid() });
                if self.setup_frame(sig, act, &info).is_err() {
                    self.die_fault(libc::SIGSEGV, self.hart.xreg(2), self.hart.pc());
                }
            }
        }
    }

    /// Push an rt_sigframe and enter the handler.
    fn setup_frame(&mut self, sig: u32, act: Action, info: &[u8; 128]) -> Result<(), Errno> {
        let sp_now = self.hart.xreg(2);
        let (ss_sp, ss_size, ss_flags) = self.altstack;
        let alt_on = ss_flags & SS_DISABLE == 0 && ss_size != 0;
        let on_alt = alt_on && sp_now > ss_sp && sp_now <= ss_sp + ss_size;
        let sp = if act.flags & signal::SA_ONSTACK != 0 && alt_on && !on_alt {
            ss_sp + ss_size
        } else {
            sp_now
        };
        let frame = (sp.wrapping_sub(signal::FRAME_SIZE)) & !15;
        let mut regs = FrameRegs {
            x: [0; 32],
            f: [0; 32],
            fcsr: self.hart.fcsr() as u32,
        };
        regs.x[0] = self.hart.pc();
        for i in 1..32 {
            regs.x[i] = self.hart.xreg(i);
        }
        for i in 0..32 {
            regs.f[i] = self.hart.freg(i);
        }
        let saved_mask = self.suspend_saved.take().unwrap_or(self.mask);
        let uc_flags = if on_alt {
            SS_ONSTACK
        } else if alt_on {
            0
        } else {
            SS_DISABLE
        };
        let bytes = signal::frame_bytes(info, &regs, saved_mask, (ss_sp, ss_size, uc_flags));
        self.write_mem(frame, &bytes)?;
        self.hart.set_pc(act.handler);
        self.hart.set_xreg(1, self.sh.trampoline);
        self.hart.set_xreg(2, frame);
        self.hart.set_xreg(10, sig as u64);
        self.hart.set_xreg(11, frame);
        self.hart.set_xreg(12, frame + 128);
        let mut m = saved_mask | act.mask;
        if act.flags & signal::SA_NODEFER == 0 {
            m |= signal::bit(sig);
        }
        self.set_mask(m);
        if act.flags & signal::SA_RESETHAND != 0 {
            self.sh.actions.lock().unwrap_or_else(|e| e.into_inner())[sig as usize - 1] =
                Action::default();
            signal::mirror_action(sig, &Action::default());
        }
        Ok(())
    }

    /// rt_sigreturn: restore the state saved by [`Thread::setup_frame`].
    pub fn sigreturn(&mut self) {
        let frame = self.hart.xreg(2);
        let Ok(bytes) = self.read_mem(frame, signal::FRAME_SIZE) else {
            self.die_fault(libc::SIGSEGV, frame, self.hart.pc());
        };
        let (regs, mask) = signal::parse_frame(&bytes);
        self.hart.set_pc(regs.x[0]);
        for i in 1..32 {
            self.hart.set_xreg(i, regs.x[i]);
        }
        for i in 0..32 {
            self.hart.set_freg(i, regs.f[i]);
        }
        self.hart.set_fcsr(regs.fcsr as u64);
        self.set_mask(mask);
    }

    /// A new guest thread sharing this one's memory (clone with CLONE_VM | CLONE_THREAD).
    pub fn spawn_thread(
        &mut self,
        flags: u64,
        stack: u64,
        ptid: u64,
        tls: u64,
        ctid: u64,
    ) -> Result<i64, Errno> {
        let mut hart = Hart::new(user_config(), self.sh.memory.clone());
        for i in 1..32 {
            hart.set_xreg(i, self.hart.xreg(i));
        }
        for i in 0..32 {
            hart.set_freg(i, self.hart.freg(i));
        }
        hart.set_fcsr(self.hart.fcsr());
        hart.set_pc(self.hart.pc());
        hart.set_xreg(10, 0);
        if stack != 0 {
            hart.set_xreg(2, stack);
        }
        if flags & libc::CLONE_SETTLS as u64 != 0 {
            hart.set_xreg(4, tls);
        }
        let mut child = Thread {
            hart,
            sh: self.sh.clone(),
            tid: 0,
            mask: self.mask,
            pending: 0,
            altstack: (0, 0, SS_DISABLE),
            clear_child_tid: if flags & libc::CLONE_CHILD_CLEARTID as u64 != 0 {
                ctid
            } else {
                0
            },
            suspend_saved: None,
        };
        // The new thread's TLB entries must stay usable while this one unmaps (see `Mm`).
        self.sh
            .mm
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stop_mirroring();
        follow_mirroring(self);
        let (tx, rx) = std::sync::mpsc::channel();
        self.sh.threads.fetch_add(1, Ordering::SeqCst);
        let spawned = std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(move || {
                // SAFETY: gettid cannot fail.
                let tid = unsafe { libc::gettid() };
                child.tid = tid;
                if flags & libc::CLONE_CHILD_SETTID as u64 != 0 {
                    let _ = child.write_u32(ctid, tid as u32);
                }
                if flags & libc::CLONE_PARENT_SETTID as u64 != 0 {
                    let _ = child.write_u32(ptid, tid as u32);
                }
                signal::mirror_mask(child.mask);
                let _ = tx.send(tid);
                run(child);
            });
        if spawned.is_err() {
            self.sh.threads.fetch_sub(1, Ordering::SeqCst);
            return Err(Errno(libc::EAGAIN));
        }
        rx.recv().map(|t| t as i64).map_err(|_| Errno(libc::EAGAIN))
    }

    /// A fork-like clone: a host fork.
    pub fn fork(
        &mut self,
        flags: u64,
        stack: u64,
        ptid: u64,
        tls: u64,
        ctid: u64,
    ) -> Result<i64, Errno> {
        let stats_held = stats::hold_for_fork();
        // SAFETY: fork in a process whose other threads (if any) hold no locks we need in the
        // child (the stats book is held by this thread): the child only runs this thread's hart.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(Errno::last());
        }
        if pid == 0 {
            // SAFETY: gettid cannot fail.
            self.tid = unsafe { libc::gettid() };
            stats::forked_child(stats_held, self.tid);
            self.sh.threads.store(1, Ordering::SeqCst);
            if stack != 0 {
                self.hart.set_xreg(2, stack);
            }
            if flags & libc::CLONE_SETTLS as u64 != 0 {
                self.hart.set_xreg(4, tls);
            }
            if flags & libc::CLONE_CHILD_SETTID as u64 != 0 {
                let _ = self.write_u32(ctid, self.tid as u32);
            }
            if flags & libc::CLONE_CHILD_CLEARTID as u64 != 0 {
                self.clear_child_tid = ctid;
            }
            return Ok(0);
        }
        drop(stats_held);
        if flags & libc::CLONE_PARENT_SETTID as u64 != 0 {
            let _ = self.write_u32(ptid, pid as u32);
        }
        Ok(pid as i64)
    }

    /// exit(2) of this thread: clear and wake the tid word, and end the process with the last one.
    pub fn exit_thread(&mut self, code: i32) -> Flow {
        if self.clear_child_tid != 0 && self.write_u32(self.clear_child_tid, 0).is_ok() {
            // SAFETY: a futex wake on a guest-writable (host-mapped) word.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    self.sh.base.ptr(self.clear_child_tid),
                    libc::FUTEX_WAKE,
                    1,
                )
            };
        }
        if self.sh.threads.fetch_sub(1, Ordering::SeqCst) == 1 {
            if let Some(d) = &self.sh.config.debug {
                d.exited(code);
            }
            stats::report();
            // SAFETY: ending the process.
            unsafe { libc::_exit(code & 0xff) };
        }
        Flow::ExitThread
    }
}

/// The re-exec command line for a guest execve: popek itself with the same root and options,
/// and the guest's environment as `--env` arguments: popek is started with an empty host
/// environment, so nothing the guest chose (LD_PRELOAD, LD_LIBRARY_PATH, GLIBC_TUNABLES...)
/// ever reaches the host's dynamic loader.
pub fn reexec_args(sh: &Shared, path: &[u8], argv: &[Vec<u8>], envp: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut a: Vec<Vec<u8>> = vec![b"popek".to_vec(), b"exec".to_vec(), b"--root".to_vec()];
    a.push(sh.config.root.clone().into_os_string().into_vec());
    if sh.config.allow_net {
        a.push(b"--allow-net".to_vec());
    }
    a.push(format!("--memory={}", sh.config.memory_limit).into_bytes());
    a.push(format!("--guest-root={}", sh.pids.root()).into_bytes());
    a.push(format!("--engine={}", sh.config.engine.kind.name()).into_bytes());
    a.push(format!("--jit-cache={}B", sh.config.engine.code_bytes).into_bytes());
    a.push(format!("--jit-hot={}", sh.config.engine.hot).into_bytes());
    if sh.config.stats {
        a.push(b"--stats".to_vec());
    }
    a.push(b"--clear-env".to_vec());
    for e in envp {
        a.push([b"--env=".as_slice(), e].concat());
    }
    if let Some(a0) = argv.first() {
        a.push(b"--argv0".to_vec());
        a.push(a0.clone());
    }
    a.push(b"--".to_vec());
    a.push(path.to_vec());
    a.extend(argv.iter().skip(1).cloned());
    a
}
