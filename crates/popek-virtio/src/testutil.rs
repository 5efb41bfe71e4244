//! A virtio driver for device tests: guest RAM, a [`VirtioMmio`] transport driven through its
//! registers the way Linux's virtio-mmio driver does, and split virtqueues the test fills and
//! reaps by hand.
//!
//! ```ignore
//! let mut d = Driver::new(Box::new(device));
//! d.setup(u64::MAX);                         // negotiate everything offered, all queues
//! let buf = d.alloc(64);
//! d.add(0, &[(buf, 64, true)]);              // one device-writable buffer on queue 0
//! d.notify(0);
//! let (head, len) = d.wait_used(0, Duration::from_secs(5)).unwrap();
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use popek_devices::MmioDevice;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::mmio::{status, VirtioMmio};
use crate::{GuestMem, GuestWriteHook, Signals, VirtioDevice};

/// Where the test's guest RAM starts (as on the board).
pub const RAM_BASE: u64 = 0x8000_0000;
/// Size of the test's guest RAM.
pub const RAM_SIZE: u64 = 16 << 20;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;

/// Driver-side state of one split virtqueue.
pub struct DriverQueue {
    /// Number of descriptors.
    pub size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    free: Vec<u16>,
    avail_idx: u16,
    last_used: u16,
}

impl DriverQueue {
    /// Descriptors not in any available chain.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }
}

/// Guest RAM, the transport, and the driver's view of the queues.
pub struct Driver {
    /// The transport (registers at offsets 0..0x1000).
    pub mmio: VirtioMmio,
    /// Guest RAM.
    pub mem: GuestMem,
    /// The queues, once [`Driver::setup`] ran.
    pub queues: Vec<DriverQueue>,
    /// Every range the device reported writing through its [`GuestWriteHook`].
    pub writes: Arc<Mutex<Vec<(u64, u64)>>>,
    /// How many times the device raised its interrupt.
    pub kicks: Arc<AtomicUsize>,
    next_free: u64,
}

impl Driver {
    /// Guest RAM and a transport for `device`, not yet initialized.
    pub fn new(device: Box<dyn VirtioDevice>) -> Driver {
        let mem: GuestMem =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_BASE), RAM_SIZE as usize)])
                .expect("test RAM");
        let writes = Arc::new(Mutex::new(Vec::new()));
        let w = writes.clone();
        let wrote: GuestWriteHook = Arc::new(move |a, l| w.lock().unwrap().push((a, l)));
        let kicks = Arc::new(AtomicUsize::new(0));
        let k = kicks.clone();
        let signals = Signals::new(Box::new(move || {
            k.fetch_add(1, Ordering::SeqCst);
        }));
        Driver {
            mmio: VirtioMmio::new(device, mem.clone(), signals, wrote),
            mem,
            queues: Vec::new(),
            writes,
            kicks,
            next_free: RAM_BASE,
        }
    }

    /// Read a 32-bit transport register.
    pub fn read_reg(&mut self, offset: u64) -> u32 {
        self.mmio.read(offset, 4) as u32
    }

    /// Write a 32-bit transport register.
    pub fn write_reg(&mut self, offset: u64, value: u32) {
        self.mmio.write(offset, 4, value as u64);
    }

    /// The device status register.
    pub fn status(&mut self) -> u32 {
        self.read_reg(0x70)
    }

    /// Read `data.len()` bytes of the device configuration at `offset`, byte by byte.
    pub fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.mmio.read(0x100 + offset + i as u64, 1) as u8;
        }
    }

    /// Reserve `len` bytes of guest RAM (16-byte aligned, never reused).
    pub fn alloc(&mut self, len: u64) -> u64 {
        let at = (self.next_free + 15) & !15;
        assert!(at + len <= RAM_BASE + RAM_SIZE, "test RAM exhausted");
        self.next_free = at + len;
        at
    }

    /// Initialize the device like Linux does: reset, ACKNOWLEDGE | DRIVER, accept the offered
    /// features masked by `want`, FEATURES_OK, set up every queue at its largest size, then
    /// DRIVER_OK. Returns the negotiated features.
    pub fn setup(&mut self, want: u64) -> u64 {
        assert_eq!(self.read_reg(0x00), 0x7472_6976, "magic");
        assert_eq!(self.read_reg(0x04), 2, "version");
        self.write_reg(0x70, 0);
        self.write_reg(0x70, status::ACKNOWLEDGE);
        self.write_reg(0x70, status::ACKNOWLEDGE | status::DRIVER);
        self.write_reg(0x14, 0);
        let lo = self.read_reg(0x10) as u64;
        self.write_reg(0x14, 1);
        let hi = self.read_reg(0x10) as u64;
        let features = (lo | hi << 32) & want;
        self.write_reg(0x24, 0);
        self.write_reg(0x20, features as u32);
        self.write_reg(0x24, 1);
        self.write_reg(0x20, (features >> 32) as u32);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.write_reg(0x70, s);
        assert_ne!(self.status() & status::FEATURES_OK, 0, "features refused");
        self.queues.clear();
        let mut index = 0;
        loop {
            self.write_reg(0x30, index);
            let max = self.read_reg(0x34);
            if max == 0 {
                break;
            }
            assert_eq!(self.read_reg(0x44), 0, "queue {index} ready before setup");
            let size = max as u16;
            let desc = self.alloc(16 * size as u64);
            let avail = self.alloc(6 + 2 * size as u64);
            let used = self.alloc(6 + 8 * size as u64);
            self.write_reg(0x38, size as u32);
            for (reg, addr) in [(0x80, desc), (0x90, avail), (0xa0, used)] {
                self.write_reg(reg, addr as u32);
                self.write_reg(reg + 4, (addr >> 32) as u32);
            }
            self.write_reg(0x44, 1);
            self.queues.push(DriverQueue {
                size,
                desc,
                avail,
                used,
                free: (0..size).rev().collect(),
                avail_idx: 0,
                last_used: 0,
            });
            index += 1;
        }
        self.write_reg(0x70, s | status::DRIVER_OK);
        assert_eq!(
            self.status() & status::DEVICE_NEEDS_RESET,
            0,
            "device failed"
        );
        features
    }

    /// Reset the device (status 0), as a driver being unloaded does.
    pub fn reset(&mut self) {
        self.write_reg(0x70, 0);
        self.queues.clear();
    }

    /// Write guest RAM.
    pub fn write_mem(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
    }

    /// Read guest RAM.
    pub fn read_mem(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.mem.read_slice(&mut out, GuestAddress(addr)).unwrap();
        out
    }

    /// Make a chain of `(addr, len, device_writable)` buffers available on queue `q` (without
    /// notifying); returns its head. Panics if the queue has too few free descriptors.
    pub fn add(&mut self, q: usize, bufs: &[(u64, u32, bool)]) -> u16 {
        let mem = self.mem.clone();
        let queue = &mut self.queues[q];
        assert!(queue.free.len() >= bufs.len(), "queue {q} full");
        let ids: Vec<u16> = (0..bufs.len()).map(|_| queue.free.pop().unwrap()).collect();
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let mut flags = if writable { DESC_F_WRITE } else { 0 };
            let next = if i + 1 < ids.len() {
                flags |= DESC_F_NEXT;
                ids[i + 1]
            } else {
                0
            };
            let d = queue.desc + 16 * ids[i] as u64;
            mem.write_obj(addr, GuestAddress(d)).unwrap();
            mem.write_obj(len, GuestAddress(d + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(d + 12)).unwrap();
            mem.write_obj(next, GuestAddress(d + 14)).unwrap();
        }
        let slot = queue.avail + 4 + 2 * (queue.avail_idx % queue.size) as u64;
        mem.write_obj(ids[0], GuestAddress(slot)).unwrap();
        queue.avail_idx = queue.avail_idx.wrapping_add(1);
        mem.store(
            queue.avail_idx,
            GuestAddress(queue.avail + 2),
            Ordering::Release,
        )
        .unwrap();
        ids[0]
    }

    /// Publish `idx` as queue `q`'s available index, as a broken or hostile driver might.
    pub fn set_avail_idx(&mut self, q: usize, idx: u16) {
        let queue = &mut self.queues[q];
        queue.avail_idx = idx;
        self.mem
            .store(idx, GuestAddress(queue.avail + 2), Ordering::Release)
            .unwrap();
    }

    /// Notify queue `q` (the `QueueNotify` register).
    pub fn notify(&mut self, q: usize) {
        self.write_reg(0x50, q as u32);
    }

    /// The next used buffer of queue `q` (head, bytes written), freeing its descriptors.
    pub fn used(&mut self, q: usize) -> Option<(u16, u32)> {
        let mem = self.mem.clone();
        let queue = &mut self.queues[q];
        let idx: u16 = mem
            .load(GuestAddress(queue.used + 2), Ordering::Acquire)
            .unwrap();
        if idx == queue.last_used {
            return None;
        }
        let e = queue.used + 4 + 8 * (queue.last_used % queue.size) as u64;
        let head: u32 = mem.read_obj(GuestAddress(e)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(e + 4)).unwrap();
        queue.last_used = queue.last_used.wrapping_add(1);
        let mut id = head as u16;
        loop {
            queue.free.push(id);
            let d = queue.desc + 16 * id as u64;
            let flags: u16 = mem.read_obj(GuestAddress(d + 12)).unwrap();
            if flags & DESC_F_NEXT == 0 {
                break;
            }
            id = mem.read_obj(GuestAddress(d + 14)).unwrap();
        }
        Some((head as u16, len))
    }

    /// Wait up to `timeout` for a used buffer on queue `q` (for devices with a worker thread).
    pub fn wait_used(&mut self, q: usize, timeout: Duration) -> Option<(u16, u32)> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(u) = self.used(q) {
                return Some(u);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The `InterruptStatus` register, acknowledged.
    pub fn take_interrupt(&mut self) -> u32 {
        let s = self.read_reg(0x60);
        self.write_reg(0x64, s);
        s
    }
}
