//! The threads that run a machine: one per hart (run slices, let devices catch up, park in
//! WFI), the readiness watchdog, and the console reader.

use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use popek_cpu::{Bus, BusFault, Exit, Hart};
use popek_devices::boot_timer::BootTimer;
use popek_devices::finisher::FinisherRequest;
use popek_jit::{EngineConfig, Jit};

use super::{Shared, Stop, FLUSH_EVERY, READY_SETTLE, SLICE};
use crate::console::Escape;
use crate::error::BoardError;
use crate::memmap;

/// A hart's view of the bus: MMIO takes the device lock; `time` is lock-free.
struct HartBus<'a> {
    shared: &'a Shared,
}

impl Bus for HartBus<'_> {
    fn read(&mut self, addr: u64, size: u8) -> Result<u64, BusFault> {
        self.shared.devices().bus.read(addr, size)
    }

    fn write(&mut self, addr: u64, size: u8, value: u64) -> Result<(), BusFault> {
        self.shared.devices().bus.write(addr, size, value)
    }

    fn time(&mut self) -> u64 {
        self.shared.clock.now()
    }
}

/// While the harts run: stop the machine with [`BoardError::NotReady`] if the guest has not
/// signalled its boot timer `limit` after the machine started. It looks every 200 ms, but
/// sees a stop within 10 ms: the machine's run waits for this thread.
pub(super) fn watch_readiness(shared: &Shared, limit: Duration) {
    let mut next_look = Instant::now();
    while !shared.stopping.load(Ordering::Acquire) {
        if Instant::now() >= next_look {
            let devices = shared.devices();
            if devices.bus.boot_timer.ready_after().is_some() {
                return;
            }
            let waited = devices.bus.boot_timer.since_start();
            drop(devices);
            if waited >= limit {
                shared.stop(Err(BoardError::NotReady(limit.as_secs())));
                return;
            }
            next_look = Instant::now() + Duration::from_millis(200);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One hart's thread: run slices, then let the devices catch up.
pub(super) fn hart_loop(hart: &mut Hart, idx: usize, shared: &Shared, engine: EngineConfig) {
    let mut jit = engine.jit().unwrap_or_else(|e| {
        tracing::warn!("hart {idx}: {e}; using the interpreter");
        None
    });
    let dram = hart
        .memory()
        .regions()
        .iter()
        .find(|r| r.base() == memmap::DRAM);
    if let (Some(jit), Some(dram)) = (jit.as_mut(), dram) {
        // DRAM is one host mapping: firmware, bare-metal programs and a kernel before its MMU
        // is on see it at one addend.
        jit.expect_bare_data_addend((dram.host().as_ptr() as u64).wrapping_sub(dram.base()));
        jit.expect_machine_ram(dram.base(), dram.len());
    }
    run_slices(hart, idx, shared, jit.as_mut());
    if let Some(jit) = jit {
        let mut total = shared.jit.lock().unwrap_or_else(|e| e.into_inner());
        total.get_or_insert_with(Default::default).add(&jit.stats());
    }
}

/// [`hart_loop`]'s slices, with the JIT if there is one, until the machine stops.
fn run_slices(hart: &mut Hart, idx: usize, shared: &Shared, mut jit: Option<&mut Jit>) {
    let mut bus = HartBus { shared };
    while !shared.stopping.load(Ordering::Acquire) {
        if shared.paused.load(Ordering::Relaxed) {
            // Parked: no stores until the hart runs again, which applies the dirty log first.
            shared.dirty_acks[idx].store(shared.dirty.generation(), Ordering::Release);
            // Paused by the control socket: resume and stop both unpark us.
            std::thread::park_timeout(Duration::from_millis(100));
            continue;
        }
        let before = hart.instret();
        let exit = match &shared.debug {
            Some(hub) if hub.engaged() => hub.run_slice(idx, hart, &mut bus, SLICE),
            _ => match jit.as_deref_mut() {
                Some(jit) => {
                    let exit = hart.run_with(&mut bus, SLICE, jit);
                    if let Some(d) = jit.take_divergence() {
                        shared.stop(Err(BoardError::Divergence {
                            hart: idx,
                            found: d,
                        }));
                    }
                    exit
                }
                None => hart.run(&mut bus, SLICE),
            },
        };
        shared
            .instructions
            .fetch_add(hart.instret().wrapping_sub(before), Ordering::Relaxed);
        shared.dirty_acks[idx].store(hart.dirty_generation_seen(), Ordering::Release);
        let mut devices = shared.devices();
        match exit {
            Exit::Budget | Exit::Io | Exit::Wfi => {}
            Exit::DoubleFault(trap) => {
                drop(devices);
                let mtvec = hart.csrs().mtvec;
                shared.stop(Err(BoardError::GuestStuck {
                    trap,
                    pc: hart.pc(),
                    mtvec,
                }));
                return;
            }
            Exit::Ecall | Exit::Trap(_) => {
                drop(devices);
                shared.stop(Err(BoardError::Internal(format!("{exit:?}"))));
                return;
            }
        }
        if devices.bus.uart.output().holding() && devices.bus.boot_timer.ready_after().is_some() {
            devices.bus.uart.output().release();
        }
        if shared.stop_when_ready && ready_to_stop(shared, idx, exit, &devices.bus.boot_timer) {
            drop(devices);
            shared.stop(Ok(Stop::Ready));
            return;
        }
        if let Some(code) = shared.command_status.take() {
            drop(devices);
            shared.stop(Ok(Stop::Exit(code)));
            return;
        }
        match devices.bus.finisher.take_request() {
            Some(FinisherRequest::Exit(code)) => {
                drop(devices);
                shared.stop(Ok(Stop::Exit(code)));
                return;
            }
            Some(FinisherRequest::Reset) => {
                drop(devices);
                shared.stop(Ok(Stop::Reset));
                return;
            }
            None => {}
        }
        let pins_before = shared.pins[idx].bits();
        devices.update(&shared.pins);
        // A line that just changed may be the interrupt a waiting hart needs: look again
        // before sleeping.
        let pins_changed = shared.pins[idx].bits() != pins_before;
        if tracing::enabled!(tracing::Level::TRACE) {
            let c = hart.csrs();
            tracing::trace!(
                "hart{idx} {exit:?} pc={:#x} priv={:?} mip={:#x} pins={:#x} mie={:#x} mstatus={:#x} scause={:#x} sepc={:#x}",
                hart.pc(),
                hart.privilege(),
                c.mip,
                shared.pins[idx].bits(),
                c.mie,
                c.mstatus,
                c.scause,
                c.sepc
            );
        }
        if exit == Exit::Wfi || devices.last_flush.elapsed() >= FLUSH_EVERY {
            devices.flush();
        }
        let wait = (exit == Exit::Wfi && !pins_changed).then(|| {
            devices
                .bus
                .clint
                .until_timer(idx)
                .min(Duration::from_millis(100))
        });
        drop(devices);
        if exit == Exit::Io {
            // An IPI or interrupt-controller change may concern another hart.
            shared.wake_all();
        }
        if let Some(wait) = wait {
            shared.dirty_acks[idx].store(shared.dirty.generation(), Ordering::Release);
            std::thread::park_timeout(wait);
        }
    }
}

/// For [`MachineConfig::stop_when_ready`], after hart `idx`'s slice ended with `exit`: the
/// guest signalled it is ready, and every hart is idle or the signal is [`READY_SETTLE`] old.
fn ready_to_stop(shared: &Shared, idx: usize, exit: Exit, timer: &BootTimer) -> bool {
    shared.idle[idx].store(exit == Exit::Wfi, Ordering::Relaxed);
    let Some(ready) = timer.ready_after() else {
        return false;
    };
    shared.idle.iter().all(|i| i.load(Ordering::Relaxed))
        || timer.since_start().saturating_sub(ready) >= READY_SETTLE
}

/// Most console input held for the guest before the console reader stops reading stdin.
const MAX_PENDING_INPUT: usize = 64 << 10;

/// Read stdin on its own thread: console input reaches the UART (and wakes the harts) even
/// while every hart sleeps in WFI.
pub(super) fn spawn_console_reader(shared: Arc<Shared>, jail: bool) {
    std::thread::Builder::new()
        .name("console-in".into())
        .spawn(move || {
            if jail {
                crate::jail::console_thread();
            }
            let mut stdin = std::io::stdin();
            let mut buf = [0u8; 256];
            loop {
                // Input the guest is not taking yet (before it is ready, or while it does not
                // read) waits in stdin's pipe, not in popek's memory.
                while shared.devices().pending_input.len() >= MAX_PENDING_INPUT {
                    if shared.is_stopping() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                let n = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut devices = shared.devices();
                let input = match devices.escapes.as_mut().map(|f| f.filter(&buf[..n])) {
                    None => buf[..n].to_vec(),
                    Some(Escape::Input(b)) => b,
                    Some(Escape::Quit) => {
                        drop(devices);
                        shared.stop(Ok(Stop::Quit));
                        continue;
                    }
                    Some(Escape::Save(b)) => {
                        devices.pending_input.extend_from_slice(&b);
                        drop(devices);
                        shared.stop(Ok(Stop::Save));
                        continue;
                    }
                };
                devices.pending_input.extend_from_slice(&input);
                devices.update(&shared.pins);
                drop(devices);
                shared.wake_all();
            }
        })
        .expect("spawning the console thread");
}
