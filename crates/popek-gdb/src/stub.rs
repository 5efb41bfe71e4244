//! The gdbstub target: each hart is a gdb thread; requests go through the [`DebugHub`].

use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use gdbstub::common::{Signal, Tid};
use gdbstub::conn::ConnectionExt;
use gdbstub::stub::run_blocking::{BlockingEventLoop, Event, WaitForStopReasonError};
use gdbstub::stub::{DisconnectReason, GdbStub, MultiThreadStopReason};
use gdbstub::target::ext::auxv::{Auxv, AuxvOps};
use gdbstub::target::ext::base::multithread::{
    MultiThreadBase, MultiThreadResume, MultiThreadResumeOps, MultiThreadSchedulerLocking,
    MultiThreadSchedulerLockingOps, MultiThreadSingleStep, MultiThreadSingleStepOps,
};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, HwWatchpoint, HwWatchpointOps,
    SwBreakpoint, SwBreakpointOps, WatchKind,
};
use gdbstub::target::{Target, TargetError, TargetResult};

use crate::hub::{Action, DebugHub, HartStop, Reply, Request};
use crate::regs::{PopekRiscv64, Regs};
use crate::GdbListener;

type Conn = Box<dyn ConnectionExt<Error = std::io::Error>>;

/// Accept gdb connections until popek exits.
pub(crate) fn serve(listener: GdbListener, hub: Arc<DebugHub>) {
    loop {
        let (conn, fd): (Conn, RawFd) = match &listener {
            GdbListener::Tcp(l) => match l.accept() {
                Ok((s, _)) => {
                    let _ = s.set_nodelay(true);
                    let fd = s.as_raw_fd();
                    (Box::new(s), fd)
                }
                Err(e) => {
                    tracing::warn!("gdb: accept: {e}");
                    continue;
                }
            },
            GdbListener::Unix(l, _) => match l.accept() {
                Ok((s, _)) => {
                    let fd = s.as_raw_fd();
                    (Box::new(s), fd)
                }
                Err(e) => {
                    tracing::warn!("gdb: accept: {e}");
                    continue;
                }
            },
        };
        hub.attach();
        let mut target = PopekTarget {
            hub: hub.clone(),
            fd,
            actions: vec![None; hub.harts()],
            locked: false,
        };
        let result = GdbStub::new(conn).run_blocking::<EventLoop>(&mut target);
        match result {
            Ok(DisconnectReason::Kill) => {
                eprintln!("popek: killed by gdb");
                std::process::exit(137);
            }
            Ok(DisconnectReason::TargetExited(_)) | Ok(DisconnectReason::TargetTerminated(_)) => {
                hub.detach();
                return;
            }
            Ok(DisconnectReason::Disconnect) => {}
            Err(e) => tracing::warn!("gdb: connection ended: {e}"),
        }
        hub.detach();
    }
}

/// The machine as gdb sees it.
struct PopekTarget {
    hub: Arc<DebugHub>,
    /// The connection's descriptor, polled while the machine runs.
    fd: RawFd,
    actions: Vec<Option<Action>>,
    /// Only the harts with an action run (gdb's scheduler locking, and `vCont;s:N` alone).
    locked: bool,
}

fn hart_of(tid: Tid) -> usize {
    tid.get() - 1
}

fn tid_of(idx: usize) -> Tid {
    NonZeroUsize::new(idx + 1).unwrap_or(NonZeroUsize::MIN)
}

impl PopekTarget {
    fn ask(&self, tid: Tid, req: Request) -> Option<Reply> {
        let idx = hart_of(tid);
        if idx >= self.actions.len() {
            return None;
        }
        self.hub.ask(idx, req)
    }
}

impl Target for PopekTarget {
    type Arch = PopekRiscv64;
    type Error = std::io::Error;

    fn base_ops(&mut self) -> BaseOps<'_, PopekRiscv64, std::io::Error> {
        BaseOps::MultiThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn guard_rail_implicit_sw_breakpoints(&self) -> bool {
        true
    }

    fn support_auxv(&mut self) -> Option<AuxvOps<'_, Self>> {
        if self.hub.auxv().is_empty() {
            None
        } else {
            Some(self)
        }
    }
}

impl Auxv for PopekTarget {
    fn get_auxv(&self, offset: u64, length: usize, buf: &mut [u8]) -> TargetResult<usize, Self> {
        let auxv = self.hub.auxv();
        let start = (offset as usize).min(auxv.len());
        let n = length.min(buf.len()).min(auxv.len() - start);
        buf[..n].copy_from_slice(&auxv[start..start + n]);
        Ok(n)
    }
}

impl MultiThreadBase for PopekTarget {
    fn read_registers(&mut self, regs: &mut Regs, tid: Tid) -> TargetResult<(), Self> {
        match self.ask(tid, Request::ReadRegs) {
            Some(Reply::Regs(r)) => {
                *regs = *r;
                Ok(())
            }
            _ => Err(TargetError::NonFatal),
        }
    }

    fn write_registers(&mut self, regs: &Regs, tid: Tid) -> TargetResult<(), Self> {
        match self.ask(tid, Request::WriteRegs(Box::new(regs.clone()))) {
            Some(_) => Ok(()),
            None => Err(TargetError::NonFatal),
        }
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8], tid: Tid) -> TargetResult<usize, Self> {
        match self.ask(tid, Request::Read(start, data.len())) {
            Some(Reply::Data(v)) if !v.is_empty() => {
                data[..v.len()].copy_from_slice(&v);
                Ok(v.len())
            }
            _ => Err(TargetError::NonFatal),
        }
    }

    fn write_addrs(&mut self, start: u64, data: &[u8], tid: Tid) -> TargetResult<(), Self> {
        match self.ask(tid, Request::Write(start, data.to_vec())) {
            Some(Reply::Written(n)) if n == data.len() => Ok(()),
            _ => Err(TargetError::NonFatal),
        }
    }

    fn list_active_threads(&mut self, cb: &mut dyn FnMut(Tid)) -> Result<(), std::io::Error> {
        (0..self.actions.len()).for_each(|i| cb(tid_of(i)));
        Ok(())
    }

    fn support_resume(&mut self) -> Option<MultiThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadResume for PopekTarget {
    fn resume(&mut self) -> Result<(), std::io::Error> {
        let default = (!self.locked).then_some(Action::Continue);
        let actions: Vec<Option<Action>> = self.actions.iter().map(|a| a.or(default)).collect();
        self.hub.resume(&actions);
        Ok(())
    }

    fn clear_resume_actions(&mut self) -> Result<(), std::io::Error> {
        // gdbstub's contract: threads no action names continue (unless scheduler locking).
        self.actions.iter_mut().for_each(|a| *a = None);
        self.locked = false;
        Ok(())
    }

    fn set_resume_action_continue(
        &mut self,
        tid: Tid,
        _signal: Option<Signal>,
    ) -> Result<(), std::io::Error> {
        if let Some(a) = self.actions.get_mut(hart_of(tid)) {
            *a = Some(Action::Continue);
        }
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<MultiThreadSingleStepOps<'_, Self>> {
        Some(self)
    }

    fn support_scheduler_locking(&mut self) -> Option<MultiThreadSchedulerLockingOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadSchedulerLocking for PopekTarget {
    fn set_resume_action_scheduler_lock(&mut self) -> Result<(), std::io::Error> {
        self.locked = true;
        Ok(())
    }
}

impl MultiThreadSingleStep for PopekTarget {
    fn set_resume_action_step(
        &mut self,
        tid: Tid,
        _signal: Option<Signal>,
    ) -> Result<(), std::io::Error> {
        if let Some(a) = self.actions.get_mut(hart_of(tid)) {
            *a = Some(Action::Step);
        }
        Ok(())
    }
}

impl Breakpoints for PopekTarget {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

impl SwBreakpoint for PopekTarget {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        self.hub.set_breakpoint(addr, true);
        Ok(true)
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        self.hub.set_breakpoint(addr, false);
        Ok(true)
    }
}

impl HwBreakpoint for PopekTarget {
    fn add_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        self.hub.set_breakpoint(addr, true);
        Ok(true)
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        self.hub.set_breakpoint(addr, false);
        Ok(true)
    }
}

impl HwWatchpoint for PopekTarget {
    fn add_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        // Only write watchpoints: reads are not observable without hooks in every load.
        if kind != WatchKind::Write || len == 0 || len > 64 {
            return Ok(false);
        }
        self.hub.set_watchpoint(addr, len, true);
        Ok(true)
    }

    fn remove_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        if kind != WatchKind::Write {
            return Ok(false);
        }
        self.hub.set_watchpoint(addr, len, false);
        Ok(true)
    }
}

/// Waits for a hart's stop or gdb's next byte (Ctrl-C), polling the connection.
enum EventLoop {}

impl BlockingEventLoop for EventLoop {
    type Target = PopekTarget;
    type Connection = Conn;
    type StopReason = MultiThreadStopReason<u64>;

    fn wait_for_stop_reason(
        target: &mut PopekTarget,
        conn: &mut Conn,
    ) -> Result<
        Event<MultiThreadStopReason<u64>>,
        WaitForStopReasonError<std::io::Error, std::io::Error>,
    > {
        loop {
            match target.hub.wait_event(Duration::from_millis(20)) {
                Some(Err(code)) => {
                    return Ok(Event::TargetStopped(MultiThreadStopReason::Exited(code)))
                }
                Some(Ok(stop)) => {
                    target.hub.halt_all();
                    let reason = match stop {
                        HartStop::Break(i) => MultiThreadStopReason::SwBreak(tid_of(i)),
                        HartStop::Step(i) => MultiThreadStopReason::SignalWithThread {
                            tid: tid_of(i),
                            signal: Signal::SIGTRAP,
                        },
                        HartStop::Watch(i, addr) => MultiThreadStopReason::Watch {
                            tid: tid_of(i),
                            kind: WatchKind::Write,
                            addr,
                        },
                    };
                    return Ok(Event::TargetStopped(reason));
                }
                None => {}
            }
            if readable(target.fd).map_err(WaitForStopReasonError::Connection)? {
                let b = conn.read().map_err(WaitForStopReasonError::Connection)?;
                return Ok(Event::IncomingData(b));
            }
        }
    }

    fn on_interrupt(
        target: &mut PopekTarget,
    ) -> Result<Option<MultiThreadStopReason<u64>>, std::io::Error> {
        target.hub.halt_all();
        Ok(Some(MultiThreadStopReason::SignalWithThread {
            tid: tid_of(0),
            signal: Signal::SIGINT,
        }))
    }
}

/// Whether `fd` has data (or hung up), without blocking.
fn readable(fd: RawFd) -> std::io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no timeout.
    let rc = unsafe { libc::poll(&mut p, 1, 0) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return if e.kind() == std::io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(rc > 0)
}
