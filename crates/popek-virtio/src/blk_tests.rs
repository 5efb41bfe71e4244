//! virtio-blk through the transport, driven like Linux drives it, on a real image file; and a
//! fuzz of the request path with hostile descriptor tables.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use proptest::prelude::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::mmio::status;
use crate::testutil::{Driver, RAM_BASE, RAM_SIZE};

fn image(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("popek-blk-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Queue one request: its header, the `data` buffers (address, length, written by the device)
/// and a status byte; returns (status byte, used length) once the device completed it.
fn submit(d: &mut Driver, kind: u32, sector: u64, data: &[(u64, u32, bool)]) -> (u8, u32) {
    let hdr = d.alloc(16);
    let mut h = Vec::new();
    h.extend_from_slice(&kind.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&sector.to_le_bytes());
    d.write_mem(hdr, &h);
    let mut bufs = vec![(hdr, 16, false)];
    bufs.extend_from_slice(data);
    let st = d.alloc(1);
    d.write_mem(st, &[0xff]);
    bufs.push((st, 1, true));
    d.add(0, &bufs);
    d.notify(0);
    let (_, used) = d.used(0).expect("request not completed");
    (d.read_mem(st, 1)[0], used)
}

/// Submit one request; returns (status byte, used length, data read back if `read_len`).
fn request(
    d: &mut Driver,
    kind: u32,
    sector: u64,
    out: &[u8],
    read_len: u32,
) -> (u8, u32, Vec<u8>) {
    let mut bufs = Vec::new();
    if !out.is_empty() {
        let a = d.alloc(out.len() as u64);
        d.write_mem(a, out);
        bufs.push((a, out.len() as u32, false));
    }
    let data = d.alloc(read_len.max(1) as u64);
    if read_len > 0 {
        bufs.push((data, read_len, true));
    }
    let (status, used) = submit(d, kind, sector, &bufs);
    (status, used, d.read_mem(data, read_len as usize))
}

fn driver(path: &std::path::Path, readonly: bool) -> Driver {
    let mut d = Driver::new(Box::new(Block::open(path, readonly).unwrap()));
    let f = d.setup(u64::MAX);
    assert_ne!(f & features::VERSION_1, 0);
    d
}

#[test]
fn reads_writes_flushes_and_identifies() {
    let mut bytes = vec![0u8; 64 << 10];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (i / 512) as u8;
    }
    let path = image("rw.img", &bytes);
    let mut d = driver(&path, false);
    let mut cap = [0u8; 8];
    d.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 128, "capacity in sectors");

    let (s, used, data) = request(&mut d, T_IN, 3, &[], 1024);
    assert_eq!((s, used), (S_OK, 1025));
    assert!(data[..512].iter().all(|&b| b == 3) && data[512..].iter().all(|&b| b == 4));
    assert!(
        d.writes.lock().unwrap().iter().any(|&(_, len)| len == 1024),
        "the read's buffer was not reported as written by the device"
    );

    let (s, used, _) = request(&mut d, T_OUT, 10, &[0x5a; 512], 0);
    assert_eq!((s, used), (S_OK, 1));
    let (s, _, _) = request(&mut d, T_FLUSH, 0, &[], 0);
    assert_eq!(s, S_OK);
    let on_disk = std::fs::read(&path).unwrap();
    assert!(on_disk[10 * 512..11 * 512].iter().all(|&b| b == 0x5a));
    assert!(on_disk[11 * 512..12 * 512].iter().all(|&b| b == 11));

    let (s, used, id) = request(&mut d, T_GET_ID, 0, &[], 20);
    assert_eq!((s, used), (S_OK, 21));
    assert_eq!(&id[..12], b"popek-rw.img");

    let (s, _, _) = request(&mut d, 99, 0, &[], 0);
    assert_eq!(s, S_UNSUPP);
    assert_ne!(d.take_interrupt() & crate::INT_USED_RING, 0);
}

#[test]
fn out_of_range_and_partial_sectors_are_io_errors() {
    let path = image("range.img", &[7u8; 4096]);
    let mut d = driver(&path, false);
    assert_eq!(request(&mut d, T_IN, 8, &[], 512).0, S_IOERR);
    assert_eq!(request(&mut d, T_IN, 7, &[], 1024).0, S_IOERR);
    assert_eq!(request(&mut d, T_IN, u64::MAX, &[], 512).0, S_IOERR);
    assert_eq!(request(&mut d, T_OUT, 7, &[1; 1024], 0).0, S_IOERR);
    assert_eq!(request(&mut d, T_OUT, 0, &[1; 100], 0).0, S_IOERR);
    assert_eq!(request(&mut d, T_IN, 7, &[], 512).0, S_OK);
    assert_eq!(std::fs::read(&path).unwrap(), vec![7u8; 4096]);
}

#[test]
fn discard_and_write_zeroes_clear_ranges() {
    let path = image("zero.img", &[0xeeu8; 64 << 10]);
    let mut d = driver(&path, false);
    let seg = |sector: u64, count: u32, flags: u32| {
        let mut v = sector.to_le_bytes().to_vec();
        v.extend_from_slice(&count.to_le_bytes());
        v.extend_from_slice(&flags.to_le_bytes());
        v
    };
    assert_eq!(request(&mut d, T_WRITE_ZEROES, 0, &seg(8, 8, 0), 0).0, S_OK);
    let s = request(&mut d, T_DISCARD, 0, &seg(32, 8, 0), 0).0;
    assert!(s == S_OK || s == S_UNSUPP);
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(on_disk.len(), 64 << 10, "the image changed size");
    assert!(on_disk[8 * 512..16 * 512].iter().all(|&b| b == 0));
    assert!(on_disk[..8 * 512].iter().all(|&b| b == 0xee));
    assert!(on_disk[16 * 512..32 * 512].iter().all(|&b| b == 0xee));
    if s == S_OK {
        assert!(on_disk[32 * 512..40 * 512].iter().all(|&b| b == 0));
    }
    assert_eq!(
        request(&mut d, T_WRITE_ZEROES, 0, &seg(120, 16, 0), 0).0,
        S_IOERR
    );
}

#[test]
fn readonly_disk_refuses_every_change() {
    let path = image("ro.img", &[1u8; 8192]);
    let mut d = driver(&path, true);
    let mut f = [0u8; 4];
    d.write_reg(0x14, 0);
    f.copy_from_slice(&(d.read_reg(0x10)).to_le_bytes());
    assert_ne!(
        u32::from_le_bytes(f) as u64 & F_RO,
        0,
        "RO feature not offered"
    );
    assert_eq!(request(&mut d, T_OUT, 0, &[2; 512], 0).0, S_IOERR);
    let mut seg = 0u64.to_le_bytes().to_vec();
    seg.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(request(&mut d, T_WRITE_ZEROES, 0, &seg, 0).0, S_IOERR);
    assert_eq!(request(&mut d, T_DISCARD, 0, &seg, 0).0, S_IOERR);
    assert_eq!(request(&mut d, T_FLUSH, 0, &[], 0).0, S_OK);
    assert_eq!(std::fs::read(&path).unwrap(), vec![1u8; 8192]);
}

#[test]
fn an_image_opened_read_write_is_locked() {
    let path = image("lock.img", &[0u8; 4096]);
    let first = Block::open(&path, false).unwrap();
    let err = Block::open(&path, false)
        .err()
        .expect("second writer allowed");
    assert!(matches!(err, BlockError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("lock.img"));
    assert!(matches!(
        Block::open(&path, true),
        Err(BlockError::Locked { .. })
    ));
    drop(first);
    let a = Block::open(&path, true).unwrap();
    let b = Block::open(&path, true).unwrap();
    assert!(matches!(
        Block::open(&path, false),
        Err(BlockError::Locked { .. })
    ));
    drop((a, b));
    assert!(matches!(
        Block::open(&path.with_extension("nope"), false),
        Err(BlockError::Open { .. })
    ));
    let empty = image("empty.img", &[]);
    assert!(matches!(
        Block::open(&empty, false),
        Err(BlockError::TooSmall { .. })
    ));
}

#[test]
fn broken_chains_put_the_device_in_needs_reset_and_reset_recovers() {
    let path = image("broken.img", &[0u8; 4096]);
    let mut d = driver(&path, false);
    // A request without any device-writable byte for the status.
    let hdr = d.alloc(16);
    d.add(0, &[(hdr, 16, false)]);
    d.notify(0);
    assert_ne!(d.status() & status::DEVICE_NEEDS_RESET, 0);
    assert_ne!(d.take_interrupt() & crate::INT_CONFIG, 0);
    // A buffer outside guest RAM.
    d.reset();
    d.setup(u64::MAX);
    assert_eq!(
        d.status() & status::DEVICE_NEEDS_RESET,
        0,
        "reset did not clear"
    );
    let st = d.alloc(1);
    d.add(0, &[(RAM_BASE + RAM_SIZE - 8, 512, true), (st, 1, true)]);
    d.notify(0);
    assert_ne!(d.status() & status::DEVICE_NEEDS_RESET, 0);
    // After a reset the device works again.
    d.reset();
    d.setup(u64::MAX);
    assert_eq!(request(&mut d, T_IN, 0, &[], 512).0, S_OK);
}

#[test]
fn features_without_version_1_are_refused() {
    let path = image("legacy.img", &[0u8; 4096]);
    let mut d = Driver::new(Box::new(Block::open(&path, false).unwrap()));
    d.write_reg(0x70, status::ACKNOWLEDGE | status::DRIVER);
    d.write_reg(0x24, 0);
    d.write_reg(0x20, F_FLUSH as u32);
    d.write_reg(0x24, 1);
    d.write_reg(0x20, 0);
    d.write_reg(
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(d.status() & status::FEATURES_OK, 0);
}

/// Guest memory with a queue whose descriptor table, available ring and buffers are arbitrary
/// bytes: what a hostile driver can make.
fn hostile_queue(table: &[u8], avail: &[u16], size: u16) -> (GuestMem, Queue) {
    let mem: GuestMem = GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_BASE), 1 << 20)]).unwrap();
    let desc = RAM_BASE;
    let avail_ring = RAM_BASE + 0x1000;
    let used = RAM_BASE + 0x2000;
    mem.write_slice(table, GuestAddress(desc)).unwrap();
    for (i, head) in avail.iter().enumerate() {
        mem.write_obj(*head, GuestAddress(avail_ring + 4 + 2 * i as u64))
            .unwrap();
    }
    mem.store(
        avail.len() as u16,
        GuestAddress(avail_ring + 2),
        Ordering::Release,
    )
    .unwrap();
    let mut q = Queue::new(size).unwrap();
    q.set_desc_table_address(Some(desc as u32), Some(0));
    q.set_avail_ring_address(Some(avail_ring as u32), Some(0));
    q.set_used_ring_address(Some(used as u32), Some(0));
    q.set_ready(true);
    (mem, q)
}

proptest! {
    // POPEK_FUZZ_CASES=N runs a longer campaign.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("POPEK_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(4000)
    ))]

    /// Descriptors with random addresses (inside, across and outside RAM), lengths, flags
    /// (including indirect) and next links (including loops): parsing terminates, never
    /// panics, and every segment it accepts lies in guest RAM; the block device answers or
    /// fails, and never writes outside its image's sectors.
    #[test]
    fn hostile_descriptor_chains(
        descs in proptest::collection::vec(
            (prop_oneof![
                Just(RAM_BASE + 0x8000u64),
                Just(RAM_BASE + 0x10000),
                Just(RAM_BASE + (1 << 20) - 16),
                Just(RAM_BASE + 0x3000),
                any::<u64>(),
            ], prop_oneof![Just(16u32), Just(1), Just(512), Just(4096), any::<u32>()],
             0u16..8, 0u16..20),
            1..16),
        heads in proptest::collection::vec(0u16..20, 1..4),
        header in proptest::collection::vec(any::<u8>(), 16),
    ) {
        let size = 16u16;
        let mut table = Vec::new();
        for (addr, len, flags, next) in &descs {
            table.extend_from_slice(&addr.to_le_bytes());
            table.extend_from_slice(&len.to_le_bytes());
            table.extend_from_slice(&flags.to_le_bytes());
            table.extend_from_slice(&next.to_le_bytes());
        }
        // Indirect tables point back at the main table.
        let (mem, mut q) = hostile_queue(&table, &heads, size);
        mem.write_slice(&header, GuestAddress(RAM_BASE + 0x8000)).unwrap();
        let path = image(&format!("fuzz-{}.img", std::process::id()), &[0x33u8; 8192]);
        let mut blk = Block::open(&path, false).unwrap();
        let disk = &mut blk.disk;
        let wrote: GuestWriteHook = Arc::new(|_, _| {});
        while let Some(dc) = q.pop_descriptor_chain(&mem) {
            if let Ok(chain) = Chain::parse(dc, &mem) {
                for s in chain.readable.iter().chain(&chain.writable) {
                    prop_assert!(s.addr >= RAM_BASE);
                    prop_assert!(s.addr + s.len as u64 <= RAM_BASE + (1 << 20));
                }
                let writable = chain::total_len(&chain.writable);
                if let Ok(used) = disk.request(&mem, chain, &wrote) {
                    prop_assert!(used as u64 <= writable);
                }
            }
        }
        prop_assert_eq!(std::fs::metadata(&path).unwrap().len(), 8192);
    }
}

/// A copy-on-write disk: the guest reads back what it wrote (whole and partial chunks,
/// zeroed ranges), the image never changes, several VMs share it, and a writer is kept out.
#[test]
fn copy_on_write_disk_keeps_the_image_unchanged() {
    let mut bytes = vec![0u8; 64 << 10];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (i / 512) as u8;
    }
    let path = image("cow.img", &bytes);
    let mut d = Driver::new(Box::new(Block::open_cow(&path).unwrap()));
    d.setup(u64::MAX);
    let mut sibling = Driver::new(Box::new(Block::open_cow(&path).unwrap()));
    sibling.setup(u64::MAX);
    assert!(
        matches!(Block::open(&path, false), Err(BlockError::Locked { .. })),
        "a writer must not open an image clones read"
    );

    // One sector in the middle of chunk 1 (sectors 8..16): the rest of the chunk is copied up.
    let (s, _, _) = request(&mut d, T_OUT, 10, &[0x5a; 512], 0);
    assert_eq!(s, S_OK);
    // A whole chunk (sectors 16..24).
    let (s, _, _) = request(&mut d, T_OUT, 16, &[0xa5; 4096], 0);
    assert_eq!(s, S_OK);
    assert_eq!(request(&mut d, T_FLUSH, 0, &[], 0).0, S_OK);
    let seg = [
        40u64.to_le_bytes().to_vec(),
        3u32.to_le_bytes().to_vec(),
        0u32.to_le_bytes().to_vec(),
    ]
    .concat();
    assert_eq!(request(&mut d, T_WRITE_ZEROES, 0, &seg, 0).0, S_OK);

    let (s, _, data) = request(&mut d, T_IN, 8, &[], 24 * 512);
    assert_eq!(s, S_OK);
    for (k, sector) in data.chunks(512).enumerate() {
        let want = match 8 + k as u8 {
            10 => 0x5a,
            16..=23 => 0xa5,
            n => n,
        };
        assert!(sector.iter().all(|&b| b == want), "sector {}", 8 + k);
    }
    let (_, _, zeroed) = request(&mut d, T_IN, 39, &[], 5 * 512);
    assert!(zeroed[..512].iter().all(|&b| b == 39));
    assert!(zeroed[512..2048].iter().all(|&b| b == 0));
    assert!(zeroed[2048..].iter().all(|&b| b == 43));

    assert_eq!(std::fs::read(&path).unwrap(), bytes, "the image changed");
    let (_, _, theirs) = request(&mut sibling, T_IN, 10, &[], 512);
    assert!(
        theirs.iter().all(|&b| b == 10),
        "a sibling saw another VM's write"
    );
    drop(d);
    drop(sibling);
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert!(
        Block::open(&path, false).is_ok(),
        "the shared locks were released"
    );
}

/// Submit a request whose data is `segments` buffers (writable for a read, filled with `fill`
/// for a write); returns the status and each buffer's bytes afterwards.
fn request_segments(
    d: &mut Driver,
    kind: u32,
    sector: u64,
    segments: &[u32],
    fill: u8,
) -> (u8, Vec<Vec<u8>>) {
    let mut bufs = Vec::new();
    for &len in segments {
        let a = d.alloc(len as u64);
        d.write_mem(a, &vec![fill; len as usize]);
        bufs.push((a, len, kind == T_IN));
    }
    let (status, _) = submit(d, kind, sector, &bufs);
    let data = bufs
        .iter()
        .map(|&(a, len, _)| d.read_mem(a, len as usize))
        .collect();
    (status, data)
}

#[test]
fn a_request_of_many_segments_moves_each_in_order() {
    let mut bytes = vec![0u8; 64 << 10];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (i / 512) as u8;
    }
    let path = image("segments.img", &bytes);
    let mut d = driver(&path, false);
    // A read into three buffers of 1, 2 and 1 sectors, from sector 5.
    let (s, data) = request_segments(&mut d, T_IN, 5, &[512, 1024, 512], 0xee);
    assert_eq!(s, S_OK);
    assert!(data[0].iter().all(|&b| b == 5));
    assert!(data[1][..512].iter().all(|&b| b == 6) && data[1][512..].iter().all(|&b| b == 7));
    assert!(data[2].iter().all(|&b| b == 8));
    // A write from 100 one-sector buffers (one request, as Linux sends a large write).
    let (s, _) = request_segments(&mut d, T_OUT, 20, &[512; 100], 0xa5);
    assert_eq!(s, S_OK);
    let on_disk = std::fs::read(&path).unwrap();
    assert!(on_disk[20 * 512..(20 + 100) * 512]
        .iter()
        .all(|&b| b == 0xa5));
    assert!(on_disk[19 * 512..20 * 512].iter().all(|&b| b == 19));
    // The image shrinks under the device: what is gone reads as zeros, the rest as before.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(10 * 512)
        .unwrap();
    let (s, data) = request_segments(&mut d, T_IN, 8, &[512, 512, 512, 512], 0xee);
    assert_eq!(s, S_OK);
    assert!(data[0].iter().all(|&b| b == 8) && data[1].iter().all(|&b| b == 9));
    assert!(data[2].iter().all(|&b| b == 0) && data[3].iter().all(|&b| b == 0));
    // Cut inside a buffer: its first 100 bytes come from the image, the rest are zeros.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(10 * 512 + 100)
        .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| {
            use std::os::unix::fs::FileExt;
            f.write_all_at(&[10; 100], 10 * 512)
        })
        .unwrap();
    let (s, data) = request_segments(&mut d, T_IN, 9, &[512, 512, 512], 0xee);
    assert_eq!(s, S_OK);
    assert!(data[0].iter().all(|&b| b == 9));
    assert!(data[1][..100].iter().all(|&b| b == 10) && data[1][100..].iter().all(|&b| b == 0));
    assert!(data[2].iter().all(|&b| b == 0));
}
