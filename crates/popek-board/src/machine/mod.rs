//! A `virt` machine: RAM, devices, harts, and the loops that run them.
//!
//! Each hart runs on its own host thread in slices of `SLICE` (65,536) instructions; devices sit
//! behind one lock that harts take only for MMIO and between slices. A hart in WFI parks its
//! thread until its timer is due or another thread (an IPI, console input) unparks it.
//!
//! By job: `config` (what to build, from the command line), `build` (harts and virtio
//! devices), `boot` (boot images in RAM, the harts' reset state), `harts` (the threads that run
//! the machine); this module holds the machine, its shared state and its run. Saving and
//! restoring are in [`crate::snapshot`], moving in [`crate::migrate`].

use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::Thread;
use std::time::{Duration, Instant};

use popek_cpu::{DirtyLog, Hart, IrqPins, Memory, RamRegion};
use popek_devices::clint::MtimeClock;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::bus::VirtBus;
use crate::command_status::CommandStatus;
use crate::console::EscapeFilter;
use crate::console_out::Console;
use crate::error::BoardError;
use crate::memmap;

mod boot;
mod build;
mod config;
mod harts;

use boot::{load_boot_images, reset_hart, BootState};
use build::{new_harts, virtio_devices};
use harts::{hart_loop, spawn_console_reader, watch_readiness};

pub use config::{
    parse_mac, DiskConfig, MachineConfig, NetBackendConfig, NetConfig, VsockConfig, DEFAULT_MAC,
    MAX_CPUS,
};

/// Instructions per run slice: bounds how late device state (timer lines, console input) is
/// noticed by a guest that never traps or waits.
const SLICE: u64 = 1 << 16;
/// Console output is flushed at least this often.
const FLUSH_EVERY: Duration = Duration::from_millis(20);

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// The guest asked to stop with this status.
    Exit(u32),
    /// The user typed the quit escape (Ctrl-A x).
    Quit,
    /// The guest signalled it is ready and [`MachineConfig::stop_when_ready`] was set: the
    /// machine can be saved, or run on.
    Ready,
    /// A live migration copied RAM while the guest ran and stopped it for the final copy:
    /// [`Machine::finish_migration`] sends the rest.
    Migrate,
    /// The user typed Ctrl-A s: save the machine ([`Machine::save`]) and run it again.
    Save,
    /// The guest reset the machine and [`MachineConfig::stop_on_reset`] was set.
    Reset,
}

/// Counters for `--stats` and benchmarks.
#[derive(Clone, Copy, Debug)]
pub struct RunStats {
    /// Guest instructions retired (all harts).
    pub instructions: u64,
    /// Wall-clock time spent running.
    pub elapsed: Duration,
    /// When the guest signalled the boot timer, if it did.
    pub boot: Option<Duration>,
    /// Bytes of guest RAM the host has actually backed (touched by the guest or the loaders),
    /// so popek's own memory is the process's RSS minus this.
    pub guest_resident: u64,
    /// Bytes of host memory backing the harts' decode caches at the end of the run.
    pub decode_cache: u64,
    /// What the harts' JITs did (`--engine jit`), summed over harts and runs.
    pub jit: Option<popek_jit::JitStats>,
}

/// Why the harts stopped.
#[derive(Debug)]
pub(crate) enum Stop {
    Exit(u32),
    Quit,
    Reset,
    Ready,
    /// Pre-copy is done: stop for the migration's final copy.
    Migrate,
    /// Ctrl-A s.
    Save,
}

/// How long [`MachineConfig::stop_when_ready`] waits, after the guest's ready signal, for the
/// guest to go idle before stopping anyway (a guest with work that never ends).
pub const READY_SETTLE: Duration = Duration::from_millis(500);

/// State shared by the hart threads and the console thread.
pub(crate) struct Shared {
    /// The exit status `popek run -- CMD`'s guest reports on its status console.
    command_status: Arc<CommandStatus>,
    bus: Mutex<Devices>,
    pub(crate) pins: Vec<Arc<IrqPins>>,
    clock: MtimeClock,
    stopping: AtomicBool,
    stop: Mutex<Option<Result<Stop, BoardError>>>,
    threads: Arc<HartThreads>,
    debug: Option<Arc<popek_gdb::DebugHub>>,
    /// The control socket paused the machine: harts park at their next slice boundary.
    paused: AtomicBool,
    /// Instructions retired by all harts, added at the end of each slice.
    instructions: AtomicU64,
    started: Instant,
    cpus: u32,
    memory: u64,
    stop_when_ready: bool,
    /// Per hart: its last slice ended waiting for an interrupt (see
    /// [`MachineConfig::stop_when_ready`]).
    idle: Vec<AtomicBool>,
    /// Guest RAM's dirty pages (live migration).
    pub(crate) dirty: Arc<DirtyLog>,
    /// Per hart: the dirty log's generation it has applied (see [`DirtyLog::flush_writers`]).
    pub(crate) dirty_acks: Vec<AtomicU64>,
    /// A migration ready for its stop-and-copy: the connection to the destination.
    pub(crate) migration: Mutex<Option<crate::migrate::Outgoing>>,
    /// How the last migration asked of the machine goes.
    pub(crate) progress: crate::migrate::ProgressCell,
    /// Where [`MachineHandle::migrate`] sends requests (the migration thread).
    pub(crate) migrate_requests: Mutex<Option<std::sync::mpsc::Sender<String>>>,
    /// JIT counters, added by each hart thread as it ends.
    jit: Mutex<Option<popek_jit::JitStats>>,
}

/// What [`MachineHandle::status`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MachineState {
    /// Parked by [`MachineHandle::pause`].
    pub paused: bool,
    /// Harts.
    pub cpus: u32,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Since the machine was built.
    pub uptime: Duration,
    /// Instructions retired so far (as of each hart's last slice).
    pub instructions: u64,
}

/// A handle other threads (the control socket) use to watch and steer a machine while
/// [`Machine::run`] runs it. Every method returns at once: it only sets flags the hart loops
/// check between slices.
#[derive(Clone)]
pub struct MachineHandle(pub(crate) Arc<Shared>);

impl MachineHandle {
    /// The machine's state now.
    pub fn status(&self) -> MachineState {
        let s = &self.0;
        MachineState {
            paused: s.paused.load(Ordering::SeqCst),
            cpus: s.cpus,
            memory: s.memory,
            uptime: s.started.elapsed(),
            instructions: s.instructions.load(Ordering::Relaxed),
        }
    }

    /// Park every hart at its next slice boundary (devices keep running).
    pub fn pause(&self) {
        self.0.paused.store(true, Ordering::SeqCst);
    }

    /// Let parked harts go on.
    pub fn resume(&self) {
        self.0.paused.store(false, Ordering::SeqCst);
        self.0.wake_all();
    }

    /// Stop the machine: [`Machine::run`] returns [`RunOutcome::Exit`] with status 0.
    pub fn shutdown(&self) {
        self.0.stop(Ok(Stop::Exit(0)));
    }
}

/// The hart threads, so anything (a device thread, the console) can wake them without taking
/// the device lock.
#[derive(Default)]
struct HartThreads(Mutex<Vec<Thread>>);

impl HartThreads {
    fn list(&self) -> MutexGuard<'_, Vec<Thread>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_all(&self) {
        for t in self.list().iter() {
            t.unpark();
        }
    }
}

/// The devices plus console input waiting for room in the UART.
pub(crate) struct Devices {
    pub(crate) bus: VirtBus<Console>,
    pub(crate) pending_input: Vec<u8>,
    /// Console input waits in `pending_input` until the machine's state is restored (the
    /// console reader starts with the machine, and a restore replaces the UART's FIFO).
    pub(crate) hold_input: bool,
    /// [`MachineConfig::hold_input_until_ready`].
    hold_input_until_ready: bool,
    escapes: Option<EscapeFilter>,
    last_flush: Instant,
}

impl Shared {
    pub(crate) fn devices(&self) -> MutexGuard<'_, Devices> {
        self.bus.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record why the machine stops (the first reason wins) and wake every hart.
    pub(crate) fn stop(&self, why: Result<Stop, BoardError>) {
        let mut s = self.stop.lock().unwrap_or_else(|e| e.into_inner());
        if s.is_none() {
            *s = Some(why);
        }
        self.stopping.store(true, Ordering::SeqCst);
        drop(s);
        self.wake_all();
    }

    /// Unpark every hart (to see a stop request, or to apply the dirty log's generation).
    pub(crate) fn wake_all(&self) {
        self.threads.wake_all();
    }

    /// Whether the machine is stopping.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

impl Devices {
    /// Propagate device state to every hart's interrupt lines and feed waiting console input.
    pub(crate) fn update(&mut self, pins: &[Arc<IrqPins>]) {
        let waiting_for_ready =
            self.hold_input_until_ready && self.bus.boot_timer.ready_after().is_none();
        if !self.hold_input && !waiting_for_ready && !self.pending_input.is_empty() {
            let n = self.bus.uart.receive(&self.pending_input);
            self.pending_input.drain(..n);
        }
        self.bus.route_interrupts();
        for (h, p) in pins.iter().enumerate() {
            p.set(7, self.bus.clint.timer_pending(h));
            p.set(3, self.bus.clint.software_pending(h));
            p.set(11, self.bus.plic.context_pending(2 * h));
            p.set(9, self.bus.plic.context_pending(2 * h + 1));
        }
    }

    fn flush(&mut self) {
        // A closed stdout (e.g. `popek ... | head`) must not stop the guest.
        let _ = self.bus.uart.output().sync();
        self.last_flush = Instant::now();
    }
}

/// One machine, ready to run.
pub struct Machine {
    pub(crate) harts: Vec<Hart>,
    pub(crate) shared: Arc<Shared>,
    // Keeps guest RAM mapped for as long as the harts hold pointers into it.
    pub(crate) ram: GuestMemoryMmap,
    stats: RunStats,
    boot: BootState,
    pub(crate) config: MachineConfig,
    /// Whether the main thread entered the jail (once: the filter stays for good).
    jailed: bool,
    /// The decode cache shared with other restores of the same snapshot (every hart holds
    /// it too) and its file, if this machine was restored with one (see the shared_decode
    /// module).
    pub(crate) shared_decode: Option<(Arc<popek_cpu::SharedDecode>, PathBuf)>,
}

fn host_memory_bytes() -> Option<u64> {
    // SAFETY: sysconf has no memory-safety preconditions.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages > 0 && page > 0).then(|| pages as u64 * page as u64)
}

impl Machine {
    /// Allocate RAM, create devices and harts, and load firmware, kernel and initrd.
    pub fn new(config: &MachineConfig) -> Result<Machine, BoardError> {
        Machine::build(config, true)
    }

    /// [`Machine::new`]; without `load`, RAM stays empty and the harts at pc 0 (a snapshot's
    /// RAM and state are about to replace them).
    pub(crate) fn build(config: &MachineConfig, load: bool) -> Result<Machine, BoardError> {
        let size = config.memory;
        if size < 1 << 20 {
            return Err(BoardError::MemoryTooSmall { bytes: size });
        }
        if size & 0xfff != 0 {
            return Err(BoardError::MemoryUnaligned);
        }
        if let Some(host) = host_memory_bytes() {
            if size > host {
                return Err(BoardError::MemoryTooLarge {
                    requested_mib: size >> 20,
                    host_mib: host >> 20,
                });
            }
        }
        if config.cpus == 0 || config.cpus > MAX_CPUS {
            return Err(BoardError::BadCpus(config.cpus, MAX_CPUS));
        }
        let alloc_err = |e: String| BoardError::Alloc {
            mib: size >> 20,
            reason: e,
        };
        let ram = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(memmap::MROM), memmap::MROM_SIZE as usize),
            (GuestAddress(memmap::DRAM), size as usize),
        ])
        .map_err(|e| alloc_err(e.to_string()))?;
        let mut regions = Vec::new();
        for (base, len) in [(memmap::MROM, memmap::MROM_SIZE), (memmap::DRAM, size)] {
            let host = ram
                .get_host_address(GuestAddress(base))
                .map_err(|e| alloc_err(e.to_string()))?;
            let host = NonNull::new(host).ok_or_else(|| alloc_err("null mapping".into()))?;
            // SAFETY: `ram` owns this mapping and lives in the Machine next to the harts, the only
            // users of the region; the mapping is never resized.
            regions.push(unsafe { RamRegion::new(base, len, host) });
        }
        let dirty = Arc::new(DirtyLog::new(memmap::DRAM, size));
        let mem = Memory::new(regions)
            .map_err(|e| BoardError::Internal(e.to_string()))?
            .with_dirty_log(dirty.clone());
        let boot = if load {
            load_boot_images(config, &mem)?
        } else {
            BootState::default()
        };
        let harts = new_harts(config, &mem, &boot);
        let console = if config.quiet_boot.is_some() {
            Console::held()
        } else {
            Console::new()
        };
        let mut bus = VirtBus::new(config.cpus as usize, console);
        let threads = Arc::new(HartThreads::default());
        let command_status = Arc::new(CommandStatus::default());
        bus.virtio = virtio_devices(config, &ram, &mem, &threads, &command_status)?;
        let shared = Arc::new(Shared {
            command_status,
            clock: bus.clint.clock(),
            pins: harts.iter().map(|h| h.irq_pins()).collect(),
            bus: Mutex::new(Devices {
                bus,
                pending_input: Vec::new(),
                hold_input: !load,
                hold_input_until_ready: config.hold_input_until_ready,
                escapes: None,
                last_flush: Instant::now(),
            }),
            stopping: AtomicBool::new(false),
            stop: Mutex::new(None),
            threads,
            debug: config.debug.clone(),
            paused: AtomicBool::new(false),
            instructions: AtomicU64::new(0),
            started: Instant::now(),
            cpus: config.cpus,
            memory: config.memory,
            stop_when_ready: config.stop_when_ready,
            idle: (0..config.cpus).map(|_| AtomicBool::new(false)).collect(),
            dirty,
            dirty_acks: (0..config.cpus).map(|_| AtomicU64::new(0)).collect(),
            migration: Mutex::new(None),
            progress: Default::default(),
            migrate_requests: Mutex::new(None),
            jit: Mutex::new(None),
        });
        spawn_console_reader(shared.clone(), config.jail);
        Ok(Machine {
            harts,
            shared,
            ram,
            stats: RunStats {
                instructions: 0,
                elapsed: Duration::ZERO,
                boot: None,
                guest_resident: 0,
                decode_cache: 0,
                jit: None,
            },
            boot,
            config: config.clone(),
            jailed: false,
            shared_decode: None,
        })
    }

    /// Whether the guest signalled that it is ready (its boot timer).
    pub fn guest_ready(&self) -> bool {
        self.shared.devices().bus.boot_timer.ready_after().is_some()
    }

    /// The last `lines` lines of console output held back while the guest was not ready yet
    /// (see [`MachineConfig::quiet_boot`]); None once it was ready or when nothing was held.
    pub fn console_tail(&self, lines: usize) -> Option<String> {
        self.shared.devices().bus.uart.output().tail(lines)
    }

    /// A handle to watch and steer the machine from other threads while it runs.
    pub fn handle(&self) -> MachineHandle {
        MachineHandle(self.shared.clone())
    }

    /// Interpret QEMU's Ctrl-A escapes in console input (for interactive terminals).
    pub fn enable_escapes(&mut self) {
        self.shared.devices().escapes = Some(EscapeFilter::default());
    }

    /// Run until the guest powers off or exits (a guest reset reloads the images and goes on).
    pub fn run(&mut self) -> Result<RunOutcome, BoardError> {
        if self.config.jail && !self.jailed {
            let status = crate::jail::main_thread(&self.config)?;
            tracing::info!("Landlock file-system rules: {status:?}");
            self.jailed = true;
        }
        let start = Instant::now();
        let retired_before: u64 = self.harts.iter().map(|h| h.instret()).sum();
        let result = loop {
            match self.run_harts() {
                Ok(Stop::Reset) if self.config.stop_on_reset => break Ok(RunOutcome::Reset),
                Ok(Stop::Reset) => {
                    if let Err(e) = self.reset() {
                        break Err(e);
                    }
                }
                Ok(Stop::Exit(code)) => break Ok(RunOutcome::Exit(code)),
                Ok(Stop::Quit) => break Ok(RunOutcome::Quit),
                Ok(Stop::Ready) => break Ok(RunOutcome::Ready),
                Ok(Stop::Migrate) => break Ok(RunOutcome::Migrate),
                Ok(Stop::Save) => break Ok(RunOutcome::Save),
                Err(e) => break Err(e),
            }
        };
        let mut devices = self.shared.devices();
        devices.flush();
        self.stats = RunStats {
            instructions: self
                .harts
                .iter()
                .map(|h| h.instret())
                .sum::<u64>()
                .wrapping_sub(retired_before),
            elapsed: start.elapsed(),
            boot: devices.bus.boot_timer.ready_after(),
            // Counted when asked for (stats()): mincore over all of RAM costs milliseconds.
            guest_resident: 0,
            decode_cache: self.harts.iter().map(|h| h.decode_cache_bytes()).sum(),
            jit: *self.shared.jit.lock().unwrap_or_else(|e| e.into_inner()),
        };
        result
    }

    /// Run every hart on its own thread until one of them (or the console) stops the machine.
    fn run_harts(&mut self) -> Result<Stop, BoardError> {
        let shared = &*self.shared;
        shared.stopping.store(false, Ordering::SeqCst);
        *shared.stop.lock().unwrap_or_else(|e| e.into_inner()) = None;
        shared.threads.list().clear();
        shared.devices().update(&shared.pins);
        let engine = self.config.engine;
        std::thread::scope(|s| {
            for (i, hart) in self.harts.iter_mut().enumerate() {
                std::thread::Builder::new()
                    .name(format!("hart{i}"))
                    .spawn_scoped(s, move || {
                        shared.threads.list().push(std::thread::current());
                        hart_loop(hart, i, shared, engine);
                    })
                    .expect("spawning a hart thread");
            }
            if let Some(limit) = self.config.quiet_boot {
                watch_readiness(shared, limit);
            }
        });
        let why = shared.stop.lock().unwrap_or_else(|e| e.into_inner()).take();
        why.unwrap_or_else(|| {
            Err(BoardError::Internal(
                "harts stopped without a reason".into(),
            ))
        })
    }

    /// Power-cycle: reload the boot images, reset devices and harts (QEMU's system reset).
    fn reset(&mut self) -> Result<(), BoardError> {
        let mem = self.harts[0].memory().clone();
        self.boot = load_boot_images(&self.config, &mem)?;
        for hart in &mut self.harts {
            hart.reset();
            reset_hart(hart, &self.boot);
        }
        let mut devices = self.shared.devices();
        devices.flush();
        devices.bus.reset();
        Ok(())
    }

    /// What the machine was built from.
    pub fn config(&self) -> &MachineConfig {
        &self.config
    }

    /// Decoded pages taken from the cache shared with other restores of the same snapshot,
    /// how many of them this machine decoded there, and the cache's file, if it has one.
    pub fn shared_decode_stats(&self) -> Option<(u64, u64, &Path)> {
        let (shared, path) = self.shared_decode.as_ref()?;
        let (taken, filled) = shared.counts();
        Some((taken, filled, path))
    }

    /// Counters of the last run.
    pub fn stats(&self) -> RunStats {
        RunStats {
            guest_resident: resident_bytes(&self.ram),
            ..self.stats
        }
    }

    /// Guest DRAM's mapping, kept alive by the handle: for code that copies RAM in and out
    /// (snapshots, migration) rather than through the harts.
    pub(crate) fn dram_mapping(&self) -> Result<DramMapping, BoardError> {
        Ok(DramMapping {
            _owner: self.ram.clone(),
            host: self.dram_host()?,
            size: self.config.memory as usize,
        })
    }

    /// Guest DRAM, to fill before the harts run.
    pub(crate) fn dram_mut(&mut self) -> Result<&mut [u8], BoardError> {
        let host = self.dram_host()?;
        // SAFETY: DRAM is one mapping of `config.memory` bytes owned by `self.ram`, which lives
        // as long as `self`, borrowed mutably here, so the harts are not running.
        Ok(unsafe { std::slice::from_raw_parts_mut(host as *mut u8, self.config.memory as usize) })
    }

    /// Host address of guest DRAM's first byte.
    fn dram_host(&self) -> Result<usize, BoardError> {
        let host = self
            .ram
            .get_host_address(GuestAddress(memmap::DRAM))
            .map_err(|e| BoardError::Internal(format!("guest RAM: {e}")))?;
        Ok(host as usize)
    }
}

/// Guest DRAM's host mapping ([`Machine::dram_mapping`]), which stays mapped while this
/// exists (it shares the machine's regions), even on another thread.
pub(crate) struct DramMapping {
    _owner: GuestMemoryMmap,
    pub(crate) host: usize,
    pub(crate) size: usize,
}

impl DramMapping {
    /// The mapping as bytes. Harts may write them meanwhile: a page read as they write it is
    /// torn, which migration mends by sending it again (the write marked it dirty).
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `_owner` keeps the `size` bytes at `host` mapped for as long as `self`.
        unsafe { std::slice::from_raw_parts(self.host as *const u8, self.size) }
    }
}

/// How much of guest RAM is resident in host memory (mincore over every region).
fn resident_bytes(ram: &GuestMemoryMmap) -> u64 {
    use vm_memory::GuestMemoryRegion;
    let page = 4096usize;
    let mut total = 0u64;
    for region in ram.iter() {
        let Ok(host) = region.get_host_address(vm_memory::MemoryRegionAddress(0)) else {
            continue;
        };
        let len = region.len() as usize;
        let mut vec = vec![0u8; len.div_ceil(page)];
        // SAFETY: `host..host+len` is this region's live mapping (page aligned, owned by `ram`);
        // `vec` has one byte per page as mincore requires.
        let rc = unsafe { libc::mincore(host as *mut libc::c_void, len, vec.as_mut_ptr()) };
        if rc == 0 {
            total += vec.iter().filter(|b| **b & 1 != 0).count() as u64 * page as u64;
        }
    }
    total
}
