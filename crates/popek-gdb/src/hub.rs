//! The meeting point of the gdb thread and the harts: harts park here when the debugger stops
//! the machine, and serve register and memory requests while parked (only a hart's own thread
//! touches its state, so nothing in the interpreter is shared or locked).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use popek_cpu::{Bus, Exit, Hart};

use crate::regs::Regs;

/// Why a hart stopped, as reported to gdb.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HartStop {
    /// Hit a breakpoint at its pc.
    Break(usize),
    /// Finished a single step.
    Step(usize),
    /// Changed the watched bytes at this address.
    Watch(usize, u64),
}

/// What gdb asked a resumed hart to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Continue,
    Step,
}

/// A request to a parked hart.
pub(crate) enum Request {
    ReadRegs,
    WriteRegs(Box<Regs>),
    Read(u64, usize),
    Write(u64, Vec<u8>),
}

/// A parked hart's answer.
pub(crate) enum Reply {
    Regs(Box<Regs>),
    Data(Vec<u8>),
    Written(usize),
}

#[derive(Default)]
struct State {
    /// All harts should park (all-stop).
    halt: bool,
    parked: Vec<bool>,
    /// What each hart does when the machine resumes (`None`: stays parked).
    go: Vec<Option<Action>>,
    breakpoints: Vec<u64>,
    /// Write watchpoints: address and length.
    watchpoints: Vec<(u64, u64)>,
    events: VecDeque<HartStop>,
    request: Option<(usize, Request)>,
    reply: Option<Reply>,
    exit: Option<u8>,
    connected: bool,
}

/// The debugger's control over a set of harts (one per gdb thread). The VM's run loops call
/// [`DebugHub::engaged`] once per slice and, only when it is true, [`DebugHub::run_slice`]
/// instead of [`Hart::run`]: without a debugger the interpreter runs exactly as before.
pub struct DebugHub {
    engaged: AtomicBool,
    /// The process whose threads are debugged (a process VM's fork children are not), or 0.
    owner_pid: AtomicI32,
    state: Mutex<State>,
    cv: Condvar,
    /// A process VM's auxiliary vector (gdb relocates PIE programs and finds the dynamic
    /// loader's library list with it); empty for system VMs.
    auxv: Mutex<Vec<u8>>,
}

impl std::fmt::Debug for DebugHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DebugHub")
            .field("engaged", &self.engaged.load(Ordering::Relaxed))
            .finish()
    }
}

/// How long the gdb thread waits for a hart to park or answer before giving up.
const HART_TIMEOUT: Duration = Duration::from_secs(5);

/// The harts' view of the breakpoints and watchpoints, copied at each slice and resume.
struct Local {
    breakpoints: Vec<u64>,
    watches: Vec<(u64, Vec<u8>)>,
}

impl DebugHub {
    /// A hub for `harts` harts; with `wait`, every hart parks before its first instruction
    /// until gdb connects and resumes it.
    pub fn new(harts: usize, wait: bool) -> DebugHub {
        let state = State {
            halt: wait,
            parked: vec![false; harts],
            go: vec![None; harts],
            ..State::default()
        };
        DebugHub {
            engaged: AtomicBool::new(wait),
            owner_pid: AtomicI32::new(0),
            state: Mutex::new(state),
            cv: Condvar::new(),
            auxv: Mutex::new(Vec::new()),
        }
    }

    /// Give gdb the program's auxiliary vector (raw little-endian key/value words).
    pub fn set_auxv(&self, auxv: Vec<u8>) {
        *self.auxv.lock().unwrap_or_else(|e| e.into_inner()) = auxv;
    }

    pub(crate) fn auxv(&self) -> Vec<u8> {
        self.auxv.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Debug only threads of the process `pid` (a process VM: its forked children run free).
    pub fn set_owner(&self, pid: i32) {
        self.owner_pid.store(pid, Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the run loop must call [`DebugHub::run_slice`]: a debugger is attached or
    /// awaited. One relaxed load, so run loops can ask every slice.
    #[inline]
    pub fn engaged(&self) -> bool {
        if !self.engaged.load(Ordering::Relaxed) {
            return false;
        }
        let owner = self.owner_pid.load(Ordering::Relaxed);
        // SAFETY: getpid has no preconditions.
        owner == 0 || owner == unsafe { libc::getpid() }
    }

    /// Run hart `idx` for at most `budget` instructions under the debugger: park while the
    /// machine is stopped, single-step when gdb asks, and stop at breakpoints and watchpoints
    /// (checked instruction by instruction only while some are set).
    pub fn run_slice<B: Bus>(&self, idx: usize, hart: &mut Hart, bus: &mut B, budget: u64) -> Exit {
        let mut local = self.local(hart);
        let mut skip_at = None;
        let mut done = 0;
        loop {
            if self.lock().halt {
                let action = self.park(idx, hart);
                local = self.local(hart);
                skip_at = Some(hart.pc());
                if action == Action::Step {
                    let exit = hart.single_step(bus);
                    self.report(HartStop::Step(idx));
                    return exit;
                }
            }
            if local.breakpoints.is_empty() && local.watches.is_empty() {
                return hart.run(bus, budget - done);
            }
            let pc = hart.pc();
            if skip_at != Some(pc) && local.breakpoints.contains(&pc) {
                self.report(HartStop::Break(idx));
                continue;
            }
            skip_at = None;
            let exit = hart.single_step(bus);
            done += 1;
            for (addr, old) in &mut local.watches {
                let mut now = vec![0; old.len()];
                hart.debug_read(*addr, &mut now);
                if now != *old {
                    *old = now;
                    self.report(HartStop::Watch(idx, *addr));
                }
            }
            if exit != Exit::Budget || done >= budget {
                return exit;
            }
        }
    }

    fn local(&self, hart: &Hart) -> Local {
        let s = self.lock();
        let watches = s
            .watchpoints
            .iter()
            .map(|&(addr, len)| {
                let mut v = vec![0; len as usize];
                hart.debug_read(addr, &mut v);
                (addr, v)
            })
            .collect();
        Local {
            breakpoints: s.breakpoints.clone(),
            watches,
        }
    }

    /// Record a stop and halt every hart.
    fn report(&self, why: HartStop) {
        let mut s = self.lock();
        s.events.push_back(why);
        s.halt = true;
        self.cv.notify_all();
    }

    /// Park hart `idx` until gdb resumes it, serving gdb's requests meanwhile.
    fn park(&self, idx: usize, hart: &mut Hart) -> Action {
        let mut s = self.lock();
        s.parked[idx] = true;
        self.cv.notify_all();
        loop {
            if matches!(s.request, Some((h, _)) if h == idx) {
                if let Some((_, req)) = s.request.take() {
                    s.reply = Some(serve(hart, req));
                    self.cv.notify_all();
                }
                continue;
            }
            if !s.halt {
                if let Some(action) = s.go[idx].take() {
                    s.parked[idx] = false;
                    return action;
                }
            }
            s = self
                .cv
                .wait_timeout(s, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The guest ended with `code`: tell gdb (waiting a little for it to hear) before popek exits.
    pub fn exited(&self, code: u8) {
        let owner = self.owner_pid.load(Ordering::Relaxed);
        // SAFETY: getpid has no preconditions.
        if owner != 0 && owner != unsafe { libc::getpid() } {
            return;
        }
        let mut s = self.lock();
        s.exit = Some(code);
        self.cv.notify_all();
        let deadline = Instant::now() + Duration::from_secs(2);
        // The gdb thread detaches once it has sent the exit to gdb.
        while s.connected && Instant::now() < deadline {
            s = self
                .cv
                .wait_timeout(s, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    // ---- the gdb thread's side ----

    pub(crate) fn harts(&self) -> usize {
        self.lock().parked.len()
    }

    /// gdb connected: stop the machine.
    pub(crate) fn attach(&self) {
        let mut s = self.lock();
        s.connected = true;
        s.halt = true;
        drop(s);
        self.engaged.store(true, Ordering::SeqCst);
        self.halt_all();
    }

    /// gdb went away: forget its breakpoints and let every hart run.
    pub(crate) fn detach(&self) {
        let mut s = self.lock();
        s.connected = false;
        s.breakpoints.clear();
        s.watchpoints.clear();
        s.events.clear();
        s.halt = false;
        s.go.iter_mut().for_each(|g| *g = Some(Action::Continue));
        self.engaged.store(false, Ordering::SeqCst);
        self.cv.notify_all();
    }

    /// Stop every hart and wait (a bounded time) until they are all parked; a hart blocked in
    /// the host (a process VM's syscall) parks when it comes back.
    pub(crate) fn halt_all(&self) {
        let mut s = self.lock();
        s.halt = true;
        self.cv.notify_all();
        let deadline = Instant::now() + HART_TIMEOUT;
        while !s.parked.iter().all(|p| *p) && s.exit.is_none() && Instant::now() < deadline {
            s = self
                .cv
                .wait_timeout(s, Duration::from_millis(20))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Resume: each hart does what `actions` says (harts not named stay stopped).
    pub(crate) fn resume(&self, actions: &[Option<Action>]) {
        let mut s = self.lock();
        s.events.clear();
        for (g, a) in s.go.iter_mut().zip(actions) {
            *g = *a;
        }
        s.halt = false;
        self.cv.notify_all();
    }

    /// Ask parked hart `idx` something; `None` if it does not answer in time.
    pub(crate) fn ask(&self, idx: usize, req: Request) -> Option<Reply> {
        let mut s = self.lock();
        let deadline = Instant::now() + HART_TIMEOUT;
        s.reply = None;
        s.request = Some((idx, req));
        self.cv.notify_all();
        while s.reply.is_none() && Instant::now() < deadline {
            s = self
                .cv
                .wait_timeout(s, Duration::from_millis(20))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        s.request = None;
        s.reply.take()
    }

    /// Wait up to `timeout` for a stop or the guest's exit.
    pub(crate) fn wait_event(&self, timeout: Duration) -> Option<Result<HartStop, u8>> {
        let mut s = self.lock();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = s.exit {
                return Some(Err(code));
            }
            if let Some(ev) = s.events.pop_front() {
                return Some(Ok(ev));
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            s = self
                .cv
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    pub(crate) fn set_breakpoint(&self, addr: u64, on: bool) {
        let mut s = self.lock();
        s.breakpoints.retain(|a| *a != addr);
        if on {
            s.breakpoints.push(addr);
        }
    }

    pub(crate) fn set_watchpoint(&self, addr: u64, len: u64, on: bool) {
        let mut s = self.lock();
        s.watchpoints.retain(|w| *w != (addr, len));
        if on {
            s.watchpoints.push((addr, len));
        }
    }
}

/// Carry out a request on a parked hart.
fn serve(hart: &mut Hart, req: Request) -> Reply {
    match req {
        Request::ReadRegs => Reply::Regs(Box::new(Regs::from_hart(hart))),
        Request::WriteRegs(r) => {
            r.to_hart(hart);
            Reply::Written(0)
        }
        Request::Read(addr, len) => {
            let mut v = vec![0; len];
            let n = hart.debug_read(addr, &mut v);
            v.truncate(n);
            Reply::Data(v)
        }
        Request::Write(addr, data) => Reply::Written(hart.debug_write(addr, &data)),
    }
}
