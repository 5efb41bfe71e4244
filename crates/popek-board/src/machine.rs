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
use crate::error::BoardError;
use crate::fdt;
use crate::loader::load_image;
use crate::memmap;

/// Instructions per run slice: bounds how late device state (timer lines, console input) is
/// noticed by a guest that never traps or waits.
const SLICE: u64 = 1 << 16;
/// Console output is flushed at least this often.
const FLUSH_EVERY: Duration = Duration::from_millis(20);

/// What to build.
#[derive(Clone, Debug)]
pub struct MachineConfig {
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Firmware or bare-metal program run in M-mode from the start of RAM (`--bios`).
    pub bios: PathBuf,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// The guest asked to stop with this status.
    Exit(u32),
}

/// Counters for `--stats` and benchmarks.
#[derive(Clone, Copy, Debug)]
pub struct RunStats {
    /// Guest instructions retired.
    pub instructions: u64,
    /// Wall-clock time spent running.
    pub elapsed: Duration,
}

/// One machine, ready to run.
pub struct Machine {
    hart: Hart,
    bus: VirtBus<std::io::BufWriter<std::io::Stdout>>,
    // Keeps guest RAM mapped for as long as the hart holds pointers into it.
    _ram: GuestMemoryMmap,
    input: Receiver<Vec<u8>>,
    pending_input: Vec<u8>,
    stats: RunStats,
    boot: BootState,
}

/// Register state at reset.
#[derive(Clone, Copy, Debug)]
struct BootState {
    entry: u64,
    fdt: u64,
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
    /// Allocate RAM, create devices and the hart, and load the firmware.
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
        let ram =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(memmap::DRAM), size as usize)])
                .map_err(|e| BoardError::Alloc {
                    mib: size >> 20,
                    reason: e.to_string(),
                })?;
        let host = ram
            .get_host_address(GuestAddress(memmap::DRAM))
            .map_err(|e| BoardError::Alloc {
                mib: size >> 20,
                reason: e.to_string(),
            })?;
        let host = NonNull::new(host).ok_or_else(|| BoardError::Alloc {
            mib: size >> 20,
            reason: "null mapping".into(),
        })?;
        // SAFETY: `ram` owns this mapping and lives in the Machine next to the hart, which is the
        // only user of the region; the mapping is never resized.
        let region = unsafe { RamRegion::new(memmap::DRAM, size, host) };
        let mem = Memory::new(vec![region]).map_err(|e| BoardError::Internal(e.to_string()))?;
        let image = load_image(&config.bios, &mem, memmap::DRAM)?;
        let blob = fdt::build(1, size, "")
            .map_err(|e| BoardError::Internal(format!("device tree: {e}")))?;
        let fdt_addr = fdt::load_address(size, blob.len() as u64);
        if fdt_addr < image.end {
            return Err(BoardError::Internal(format!(
                "the image ends at {:#x}, over the device tree at {fdt_addr:#x}: raise --memory",
                image.end
            )));
        }
        mem.write(fdt_addr, &blob)
            .ok_or_else(|| BoardError::Internal("device tree outside RAM".into()))?;
        let boot = BootState {
            entry: image.entry,
            fdt: fdt_addr,
        };
        let mut hart = Hart::new(HartConfig::machine(0), mem);
        reset_hart(&mut hart, &boot);
        let bus = VirtBus::new(
            1,
            std::io::BufWriter::with_capacity(1 << 16, std::io::stdout()),
        );
        Ok(Machine {
            hart,
            bus,
            _ram: ram,
            input: spawn_stdin_reader(),
            pending_input: Vec::new(),
            stats: RunStats {
                instructions: 0,
                elapsed: Duration::ZERO,
            },
            boot,
        })
    }

    /// Run until the guest powers off or exits.
    pub fn run(&mut self) -> Result<RunOutcome, BoardError> {
        let start = Instant::now();
        let mut last_flush = Instant::now();
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
                    reset_hart(&mut self.hart, &self.boot);
                }
                None => {}
            }
            self.update_irq_lines();
            self.feed_input();
            if last_flush.elapsed() >= FLUSH_EVERY {
                self.flush_console();
                last_flush = Instant::now();
            }
        };
        self.flush_console();
        self.stats = RunStats {
            instructions: self.hart.instret(),
            elapsed: start.elapsed(),
        };
        result
    }

    /// Counters of the last run.
    pub fn stats(&self) -> RunStats {
        self.stats
    }

    fn update_irq_lines(&mut self) {
        let pins = self.hart.irq_pins();
        pins.set(7, self.bus.clint.timer_pending(0));
        pins.set(3, self.bus.clint.software_pending(0));
    }

    fn flush_console(&mut self) {
        // A closed stdout (e.g. `popek ... | head`) must not stop the guest.
        let _ = self.bus.uart.output().flush();
    }

    fn feed_input(&mut self) {
        while let Ok(bytes) = self.input.try_recv() {
            self.pending_input.extend_from_slice(&bytes);
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
            Ok(bytes) => self.pending_input.extend_from_slice(&bytes),
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
