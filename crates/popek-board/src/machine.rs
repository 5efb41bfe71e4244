//! A `virt` machine: RAM, devices, one hart, and the loop that runs them.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use popek_cpu::{Exit, Hart, HartConfig, Memory, RamRegion};
use popek_devices::finisher::FinisherRequest;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::bus::VirtBus;
use crate::console::{Escape, EscapeFilter};
use crate::error::BoardError;
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
}

/// Most harts a machine may have.
pub const MAX_CPUS: u32 = 1;

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// The guest asked to stop with this status.
    Exit(u32),
    /// The user typed the quit escape (Ctrl-A x).
    Quit,
}

/// Counters for `--stats` and benchmarks.
#[derive(Clone, Copy, Debug)]
pub struct RunStats {
    /// Guest instructions retired.
    pub instructions: u64,
    /// Wall-clock time spent running.
    pub elapsed: Duration,
    /// When the guest signalled the boot timer, if it did.
    pub boot: Option<Duration>,
}

/// One machine, ready to run.
pub struct Machine {
    hart: Hart,
    bus: VirtBus<std::io::BufWriter<std::io::Stdout>>,
    // Keeps guest RAM mapped for as long as the hart holds pointers into it.
    _ram: GuestMemoryMmap,
    input: Receiver<Vec<u8>>,
    pending_input: Vec<u8>,
    /// Ctrl-A escapes, interpreted only when the console is an interactive terminal.
    escapes: Option<EscapeFilter>,
    quit: bool,
    stats: RunStats,
    boot: BootState,
    config: MachineConfig,
}

/// Register state at reset.
#[derive(Clone, Copy, Debug)]
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
    /// Allocate RAM, create devices and the hart, and load firmware, kernel and initrd.
    pub fn new(config: &MachineConfig) -> Result<Machine, BoardError> {
        let size = config.memory;
        if size < 1 << 20 {
            return Err(BoardError::MemoryTooSmall { size: size >> 20 });
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
            // SAFETY: `ram` owns this mapping and lives in the Machine next to the hart, which is
            // the only user of the region; the mapping is never resized.
            regions.push(unsafe { RamRegion::new(base, len, host) });
        }
        let mem = Memory::new(regions).map_err(|e| BoardError::Internal(e.to_string()))?;
        let boot = load_boot_images(config, &mem)?;
        let mut hart = Hart::new(HartConfig::machine(0), mem);
        reset_hart(&mut hart, &boot);
        let bus = VirtBus::new(
            config.cpus as usize,
            std::io::BufWriter::with_capacity(1 << 16, std::io::stdout()),
        );
        Ok(Machine {
            hart,
            bus,
            _ram: ram,
            input: spawn_stdin_reader(),
            pending_input: Vec::new(),
            escapes: None,
            quit: false,
            stats: RunStats {
                instructions: 0,
                elapsed: Duration::ZERO,
                boot: None,
            },
            boot,
            config: config.clone(),
        })
    }

    /// Run until the guest powers off or exits.
    pub fn run(&mut self) -> Result<RunOutcome, BoardError> {
        let start = Instant::now();
        let mut last_flush = Instant::now();
        self.update_irq_lines();
        let result = loop {
            let exit = self.hart.run(&mut self.bus, SLICE);
            match exit {
                Exit::Budget | Exit::Io => {}
                Exit::Wfi => {
                    self.flush_console();
                    let wait = self
                        .bus
                        .clint
                        .until_timer(0)
                        .min(Duration::from_millis(100));
                    self.wait_input(wait);
                }
                Exit::DoubleFault(trap) => {
                    break Err(BoardError::GuestStuck {
                        trap,
                        pc: self.hart.pc(),
                        mtvec: self.hart.csrs().mtvec,
                    });
                }
                Exit::Ecall | Exit::Trap(_) => {
                    break Err(BoardError::Internal(format!("{exit:?}")))
                }
            }
            match self.bus.finisher.take_request() {
                Some(FinisherRequest::Exit(code)) => break Ok(RunOutcome::Exit(code)),
                Some(FinisherRequest::Reset) => {
                    if let Err(e) = self.reset() {
                        break Err(e);
                    }
                }
                None => {}
            }
            self.update_irq_lines();
            self.feed_input();
            if self.quit {
                break Ok(RunOutcome::Quit);
            }
            if last_flush.elapsed() >= FLUSH_EVERY {
                self.flush_console();
                last_flush = Instant::now();
            }
        };
        self.flush_console();
        self.stats = RunStats {
            instructions: self.hart.instret(),
            elapsed: start.elapsed(),
            boot: self.bus.boot_timer.ready_after(),
        };
        result
    }

    /// Interpret QEMU's Ctrl-A escapes in console input (for interactive terminals).
    pub fn enable_escapes(&mut self) {
        self.escapes = Some(EscapeFilter::default());
    }

    fn take_input(&mut self, bytes: Vec<u8>) {
        match self.escapes.as_mut().map(|f| f.filter(&bytes)) {
            None => self.pending_input.extend_from_slice(&bytes),
            Some(Escape::Input(b)) => self.pending_input.extend_from_slice(&b),
            Some(Escape::Quit) => self.quit = true,
        }
    }

    /// Power-cycle: reload the boot images, reset devices and the hart (QEMU's system reset).
    fn reset(&mut self) -> Result<(), BoardError> {
        self.flush_console();
        self.boot = load_boot_images(&self.config, self.hart.memory())?;
        self.bus = VirtBus::new(
            self.config.cpus as usize,
            std::io::BufWriter::with_capacity(1 << 16, std::io::stdout()),
        );
        reset_hart(&mut self.hart, &self.boot);
        Ok(())
    }

    /// Counters of the last run.
    pub fn stats(&self) -> RunStats {
        self.stats
    }

    fn update_irq_lines(&mut self) {
        self.bus.route_interrupts();
        let pins = self.hart.irq_pins();
        pins.set(7, self.bus.clint.timer_pending(0));
        pins.set(3, self.bus.clint.software_pending(0));
        pins.set(11, self.bus.plic.context_pending(0));
        pins.set(9, self.bus.plic.context_pending(1));
    }

    fn flush_console(&mut self) {
        // A closed stdout (e.g. `popek ... | head`) must not stop the guest.
        let _ = self.bus.uart.output().flush();
    }

    fn feed_input(&mut self) {
        while let Ok(bytes) = self.input.try_recv() {
            self.take_input(bytes);
        }
        if !self.pending_input.is_empty() {
            let n = self.bus.uart.receive(&self.pending_input);
            self.pending_input.drain(..n);
        }
    }

    /// Sleep for at most `wait`, waking early if console input arrives.
    fn wait_input(&mut self, wait: Duration) {
        if !self.pending_input.is_empty() {
            return;
        }
        match self.input.recv_timeout(wait) {
            Ok(bytes) => self.take_input(bytes),
            Err(RecvTimeoutError::Timeout) => {}
            // Stdin closed: nothing will ever arrive, so just sleep.
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(wait),
        }
    }
}

/// Put the hart in the state QEMU's reset vector leaves it in: M-mode at the image entry with
/// a0 = hart id and a1 = the device tree.
fn reset_hart(hart: &mut Hart, boot: &BootState) {
    let mem = hart.memory().clone();
    *hart = Hart::new(HartConfig::machine(0), mem);
    hart.set_pc(boot.entry);
    hart.set_xreg(10, 0);
    hart.set_xreg(11, boot.fdt);
    hart.set_xreg(12, boot.fw_info);
}

/// Read stdin on its own thread so the run loop never blocks on the console.
fn spawn_stdin_reader() -> Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("console-in".into())
        .spawn(move || {
            let mut stdin = std::io::stdin();
            let mut buf = [0u8; 256];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        })
        .expect("spawning the console thread");
    rx
}
