//! A `virt` machine: RAM, devices, harts, and the loops that run them.
//!
//! Each hart runs on its own host thread in slices of `SLICE` (65,536) instructions; devices sit
//! behind one lock that harts take only for MMIO and between slices. A hart in WFI parks its
//! thread until its timer is due or another thread (an IPI, console input) unparks it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::Thread;
use std::time::{Duration, Instant};

use popek_cpu::{Bus, BusFault, DirtyLog, Exit, Hart, HartConfig, IrqPins, Memory, RamRegion};
use popek_devices::boot_timer::BootTimer;
use popek_devices::clint::MtimeClock;
use popek_devices::finisher::FinisherRequest;
use popek_jit::{EngineConfig, Jit};
use popek_virtio::blk::Block;
use popek_virtio::console::Console as VirtioConsole;
use popek_virtio::mmio::VirtioMmio;
use popek_virtio::net::{Net, NetBackend};
use popek_virtio::rng::Rng;
use popek_virtio::tap::Tap;
use popek_virtio::vsock::Vsock;
use popek_virtio::{GuestWriteHook, Signals, VirtioDevice};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::bus::VirtBus;
use crate::command_status::{CommandStatus, StatusPort};
use crate::console::{Escape, EscapeFilter};
use crate::console_out::Console;
use crate::error::{BoardError, ParseError};
use crate::fdt::{self, FdtParams};
use crate::loader::{load_blob, load_image, load_kernel};
use crate::memmap;

/// Instructions per run slice: bounds how late device state (timer lines, console input) is
/// noticed by a guest that never traps or waits.
const SLICE: u64 = 1 << 16;
/// Console output is flushed at least this often.
const FLUSH_EVERY: Duration = Duration::from_millis(20);

/// What to build.
#[derive(Clone, Debug, Default)]
pub struct MachineConfig {
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Number of harts.
    pub cpus: u32,
    /// Firmware (or a bare-metal program) run in M-mode from the start of RAM (`--bios`).
    pub bios: Option<PathBuf>,
    /// Linux kernel `Image`, started in S-mode by the firmware.
    pub kernel: Option<PathBuf>,
    /// Initial RAM disk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub append: String,
    /// virtio-blk disks, in slot order (the first is the guest's `/dev/vda`).
    pub disks: Vec<DiskConfig>,
    /// Whether the machine has a virtio-rng entropy source.
    pub rng: bool,
    /// The virtio-net card, if any.
    pub net: Option<NetConfig>,
    /// The virtio-vsock device, if any.
    pub vsock: Option<VsockConfig>,
    /// Confine popek's own threads (seccomp, Landlock; see [`crate::jail`]): the console
    /// reader and the user network's threads from their start, the rest at [`Machine::run`].
    pub jail: bool,
    /// Give the guest three output-only virtio consoles: its /dev/hvc0 and /dev/hvc1 write to
    /// popek's stdout and stderr (how `popek run -- CMD` returns CMD's output exactly), and a
    /// line on /dev/hvc2 is CMD's exit status, which stops the machine (see
    /// [`crate::command_status`]).
    pub command_output: bool,
    /// Hold the UART console's output until the guest signals it is ready (then drop it), and
    /// stop with [`BoardError::NotReady`] if that takes longer than this (`popek run -- CMD`
    /// without `--verbose`).
    pub quiet_boot: Option<Duration>,
    /// A debugger's hold on the harts (`--gdb`): the hart loops hand their slices to it while
    /// it is engaged.
    pub debug: Option<Arc<popek_gdb::DebugHub>>,
    /// Stop with [`RunOutcome::Ready`] once the guest has signalled it is ready and then gone
    /// idle (every hart waiting for an interrupt), or [`READY_SETTLE`] after the signal if it
    /// never does: `popek snapshot create` saves the machine then. Saved idle, the guest has
    /// finished what it did after the signal (the default guest: the program that signalled
    /// has exited, and init waits for the command on the console), so no restored clone
    /// repeats that work.
    pub stop_when_ready: bool,
    /// What runs guest code (`--engine`): the interpreter, or the JIT (one code cache per hart).
    pub engine: popek_jit::EngineConfig,
    /// On a restore: the guest writes the snapshot's writable disks in place. By default a
    /// restored guest writes them copy-on-write, so the snapshot stays restorable and clones
    /// started from it do not see (or corrupt) each other's writes.
    pub restore_writes_disks: bool,
    /// On a restore: share decoded guest code with the other restores of the same snapshot
    /// that run at the same time with this option (see the shared_decode module): they start
    /// faster and take less memory, but each can change the code the others run, so a guest
    /// that broke out of one of them could take over the others. Off unless asked.
    pub restore_shares_decode: bool,
    /// Keep console input from the UART until the guest signals it is ready (its boot timer):
    /// Linux's 8250 driver reads received bytes and drops them while it starts the port, so
    /// input piped or typed during the boot lost characters. Only for guests known to signal
    /// (the default guest); others would never get their input.
    pub hold_input_until_ready: bool,
    /// A guest reset ends the run ([`RunOutcome::Reset`]) instead of booting again: for
    /// `popek run -- CMD`, where a reboot means CMD will not finish (the kernel reboots on a
    /// panic with `panic=-1` on its command line, instead of hanging).
    pub stop_on_reset: bool,
}

/// A vsock device whose host side is a unix socket (Firecracker's convention: a host client
/// connects to `path` and writes `CONNECT <port>`; the guest's connections to host port P go
/// to the listener at `<path>_<P>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context ID (3 or more).
    pub cid: u64,
    /// The host socket.
    pub path: PathBuf,
}

impl std::str::FromStr for VsockConfig {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<VsockConfig, ParseError> {
        let mut parts = s.split(',');
        let path = parts.next().unwrap_or_default();
        if path.is_empty() {
            return Err(ParseError::VsockPath);
        }
        let mut v = VsockConfig {
            cid: 3,
            path: PathBuf::from(path),
        };
        for opt in parts {
            match opt.strip_prefix("cid=") {
                Some(n) => v.cid = n.parse().map_err(|_| ParseError::VsockCid(n.to_string()))?,
                None => return Err(ParseError::VsockOption(opt.to_string())),
            }
        }
        Ok(v)
    }
}

/// A network card and what it is connected to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The card's MAC address.
    pub mac: [u8; 6],
    /// Where its frames go.
    pub backend: NetBackendConfig,
}

/// The host side of a network card.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetBackendConfig {
    /// popek's user-mode stack (NAT, DHCP, DNS), with these host ports forwarded to the guest.
    User {
        /// `--publish` forwards.
        publish: Vec<popek_usernet::Publish>,
    },
    /// A host tap interface.
    Tap {
        /// Its name.
        name: String,
    },
}

/// The MAC address cards get unless told otherwise (QEMU's default).
pub const DEFAULT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// Parse `52:54:00:12:34:56`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], ParseError> {
    let parts: Vec<&str> = s.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return Err(ParseError::BadMac(s.to_string()));
    }
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).map_err(|_| ParseError::BadMac(s.to_string()))?;
    }
    if mac[0] & 1 != 0 {
        return Err(ParseError::MulticastMac(s.to_string()));
    }
    Ok(mac)
}

/// A network backend for virtio-net: popek's user-mode stack.
struct UserNetBackend(popek_usernet::UserNet);

impl NetBackend for UserNetBackend {
    fn send(&mut self, frame: &[u8]) {
        self.0.send(frame);
    }

    fn recv(&mut self) -> Option<Vec<u8>> {
        self.0.recv()
    }

    fn wake_fd(&self) -> std::os::fd::RawFd {
        self.0.wake_fd()
    }
}

/// One `--disk PATH[,readonly|,cow]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// Raw image file (or block device).
    pub path: PathBuf,
    /// The guest may not write it.
    pub readonly: bool,
    /// The guest writes a private copy-on-write overlay, discarded at exit: the image never
    /// changes and other VMs may share it (restored clones do this unless told otherwise).
    pub cow: bool,
    /// The disk comes with a machine migrating in: opened without its lock, which the source
    /// holds until it stops and then hands over (see [`Machine::take_over_disks`]).
    pub handed_over: bool,
}

impl std::str::FromStr for DiskConfig {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<DiskConfig, ParseError> {
        let mut parts = s.split(',');
        let path = parts.next().unwrap_or_default();
        if path.is_empty() {
            return Err(ParseError::DiskPath);
        }
        let mut disk = DiskConfig {
            path: PathBuf::from(path),
            readonly: false,
            cow: false,
            handed_over: false,
        };
        for opt in parts {
            match opt {
                "readonly" | "ro" | "readonly=on" => disk.readonly = true,
                "readonly=off" | "rw" => disk.readonly = false,
                "cow" => disk.cow = true,
                other => return Err(ParseError::DiskOption(other.to_string())),
            }
        }
        Ok(disk)
    }
}

impl MachineConfig {
    /// Number of virtio-mmio transports the configuration asks for.
    pub fn virtio_devices(&self) -> usize {
        self.disks.len()
            + self.net.is_some() as usize
            + self.rng as usize
            + self.vsock.is_some() as usize
            + 3 * self.command_output as usize
    }
}

/// Most harts a machine may have.
pub const MAX_CPUS: u32 = 32;

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

fn new_harts(config: &MachineConfig, mem: &Memory, boot: &BootState) -> Vec<Hart> {
    (0..config.cpus as u64)
        .map(|h| {
            let mut hart = Hart::new(HartConfig::machine(h, config.cpus > 1), mem.clone());
            reset_hart(&mut hart, boot);
            hart
        })
        .collect()
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

/// While the harts run: stop the machine with [`BoardError::NotReady`] if the guest has not
/// signalled its boot timer `limit` after the machine started. It looks every 200 ms, but
/// sees a stop within 10 ms: the machine's run waits for this thread.
fn watch_readiness(shared: &Shared, limit: Duration) {
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
fn hart_loop(hart: &mut Hart, idx: usize, shared: &Shared, engine: EngineConfig) {
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

/// Create the configured virtio devices, slot by slot: disks, the network card, the entropy
/// source, then vsock.
fn virtio_devices(
    config: &MachineConfig,
    ram: &GuestMemoryMmap,
    mem: &Memory,
    threads: &Arc<HartThreads>,
    command_status: &Arc<CommandStatus>,
) -> Result<Vec<VirtioMmio>, BoardError> {
    if config.virtio_devices() > memmap::VIRTIO_SLOTS {
        return Err(BoardError::TooManyDevices(memmap::VIRTIO_SLOTS));
    }
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for disk in &config.disks {
        let block = if disk.cow && !disk.readonly {
            Block::open_cow(&disk.path)?
        } else if disk.handed_over {
            Block::open_unlocked(&disk.path, disk.readonly)?
        } else {
            Block::open(&disk.path, disk.readonly)?
        };
        devices.push(Box::new(block));
    }
    if let Some(net) = &config.net {
        let backend: Box<dyn NetBackend> = match &net.backend {
            NetBackendConfig::User { publish } => {
                let user = popek_usernet::UserNet::start(popek_usernet::UserNetConfig {
                    guest_mac: net.mac,
                    publish: publish.clone(),
                    thread_start: config.jail.then_some(crate::jail::net_thread as fn()),
                })?;
                Box::new(UserNetBackend(user))
            }
            NetBackendConfig::Tap { name } => Box::new(Tap::open(name)?),
        };
        devices.push(Box::new(Net::new(net.mac, backend)));
    }
    if config.rng {
        devices.push(Box::new(Rng::new()));
    }
    if let Some(v) = &config.vsock {
        devices.push(Box::new(Vsock::new(v.cid, v.path.clone())?));
    }
    if config.command_output {
        devices.push(Box::new(VirtioConsole::new(Box::new(std::io::stdout()))));
        devices.push(Box::new(VirtioConsole::new(Box::new(std::io::stderr()))));
        let status = StatusPort::new(command_status.clone());
        devices.push(Box::new(VirtioConsole::new(Box::new(status))));
    }
    let mem = mem.clone();
    let wrote: GuestWriteHook = Arc::new(move |start, len| mem.device_wrote(start, len));
    Ok(devices
        .into_iter()
        .map(|d| {
            let threads = threads.clone();
            let signals = Signals::new(Box::new(move || threads.wake_all()));
            VirtioMmio::new(d, ram.clone(), signals, wrote.clone())
        })
        .collect())
}

/// Register state at reset.
#[derive(Clone, Copy, Debug, Default)]
struct BootState {
    entry: u64,
    fdt: u64,
    /// OpenSBI's `fw_dynamic_info` (a2), when booting a kernel.
    fw_info: u64,
}

/// Place firmware, kernel, initrd and device tree in RAM the way QEMU's `virt` does.
fn load_boot_images(config: &MachineConfig, mem: &Memory) -> Result<BootState, BoardError> {
    let size = config.memory;
    let mib = size >> 20;
    let ram_end = memmap::DRAM + size;
    let too_big = |what: &str| BoardError::TooBigForRam {
        what: what.to_string(),
        mib,
    };
    let mut params = FdtParams {
        harts: config.cpus,
        memory: size,
        bootargs: config.append.clone(),
        initrd: None,
        virtio: config.virtio_devices(),
    };
    let (entry, fw_info, used_end) = match (&config.kernel, &config.bios) {
        (None, None) => return Err(BoardError::NothingToRun),
        (None, Some(bios)) => {
            let image = load_image(bios, mem, memmap::DRAM)?;
            (image.entry, 0, image.end)
        }
        (Some(_), None) => return Err(BoardError::NoFirmware),
        (Some(kernel), Some(bios)) => {
            let fw = load_image(bios, mem, memmap::DRAM)?;
            // The kernel goes at the first 2 MiB boundary after the firmware.
            let kernel_start = (fw.end + (2 << 20) - 1) & !((2 << 20) - 1);
            if kernel_start >= ram_end {
                return Err(too_big("the firmware"));
            }
            let mut end = load_kernel(kernel, mem, kernel_start)?;
            if let Some(initrd) = &config.initrd {
                // Far enough above the kernel that it survives the kernel's own set-up.
                let start = (kernel_start + (size / 2).min(128 << 20)).max((end + 0xfff) & !0xfff);
                let initrd_end = load_blob(initrd, mem, start)?;
                params.initrd = Some((start, initrd_end));
                end = initrd_end;
            }
            let info = write_fw_dynamic_info(mem, kernel_start)?;
            (fw.entry, info, end)
        }
    };
    let blob =
        fdt::build(&params).map_err(|e| BoardError::Internal(format!("device tree: {e}")))?;
    let fdt_addr = fdt::load_address(size, blob.len() as u64);
    if fdt_addr < used_end {
        return Err(too_big("the boot images and device tree"));
    }
    mem.write(fdt_addr, &blob)
        .ok_or_else(|| too_big("the device tree"))?;
    Ok(BootState {
        entry,
        fdt: fdt_addr,
        fw_info,
    })
}

/// Write OpenSBI's `struct fw_dynamic_info` into the mask ROM, as QEMU does: it tells
/// `fw_dynamic` to continue at `next` in S-mode on hart 0.
fn write_fw_dynamic_info(mem: &Memory, next: u64) -> Result<u64, BoardError> {
    const MAGIC: u64 = 0x4942_534f; // "OSBI"
    let fields = [MAGIC, 2, next, 1, 0, 0];
    let bytes: Vec<u8> = fields.iter().flat_map(|f| f.to_le_bytes()).collect();
    let addr = memmap::MROM + 0x100;
    mem.write(addr, &bytes)
        .ok_or_else(|| BoardError::Internal("mask ROM missing".into()))?;
    Ok(addr)
}

/// Put the hart in the state QEMU's reset vector leaves it in: M-mode at the image entry with
/// a0 = hart id and a1 = the device tree.
fn reset_hart(hart: &mut Hart, boot: &BootState) {
    hart.set_pc(boot.entry);
    hart.set_xreg(10, hart.csrs().mhartid);
    hart.set_xreg(11, boot.fdt);
    hart.set_xreg(12, boot.fw_info);
}

/// Most console input held for the guest before the console reader stops reading stdin.
const MAX_PENDING_INPUT: usize = 64 << 10;

/// Read stdin on its own thread: console input reaches the UART (and wakes the harts) even
/// while every hart sleeps in WFI.
fn spawn_console_reader(shared: Arc<Shared>, jail: bool) {
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
