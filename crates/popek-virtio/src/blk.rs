//! virtio-blk on a raw disk image (virtio 1.2, section 5.2).
//!
//! Requests run on the thread that notified the queue: on a host file they finish in
//! microseconds (the host page cache absorbs writes), and a flush is the guest asking to wait
//! for `fdatasync`. The image changes only by the guest's writes, discards and write-zeroes;
//! a read-only disk refuses all three. An advisory lock (`flock`) keeps two popek processes
//! from opening one image read-write.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::blk_overlay::Overlay;
use crate::chain::{self, Chain, Segment};
use crate::drain_queue;
use crate::{
    device_type, features, read_config_bytes, Activation, DeviceError, GuestMem, GuestWriteHook,
    SingleQueue, VirtioDevice,
};

const SECTOR: u64 = 512;
const QUEUE_SIZE: u16 = 256;
/// Most data segments per request the driver may use.
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Most sectors one discard or write-zeroes segment may cover (1 GiB).
const MAX_ZERO_SECTORS: u32 = 1 << 21;

const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
const F_DISCARD: u64 = 1 << 13;
const F_WRITE_ZEROES: u64 = 1 << 14;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;

const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;

const WRITE_ZEROES_UNMAP: u32 = 1;

/// Why a disk image can't be used.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image could not be opened.
    #[error("cannot open disk image {path}: {source}")]
    Open {
        /// The image.
        path: PathBuf,
        /// What the host said.
        source: std::io::Error,
    },
    /// Another process holds the image's lock.
    #[error("disk image {path} is in use by another process that holds its lock; stop that VM first, or give ,readonly to every user of the image")]
    Locked {
        /// The image.
        path: PathBuf,
    },
    /// The path is not a regular file or block device.
    #[error("disk image {path} is not a regular file or block device")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The image holds no whole sector.
    #[error("disk image {path} is {size} bytes; a disk needs at least one 512-byte sector (make one with: truncate -s 1G {path})")]
    TooSmall {
        /// The image.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The copy-on-write overlay could not be created.
    #[error("disk image {path}: {source} (set TMPDIR to a writable directory)")]
    Overlay {
        /// The image.
        path: PathBuf,
        /// What the host said.
        source: std::io::Error,
    },
}

/// An open disk image, and the queue it serves once the driver is ready.
pub struct Block {
    disk: Disk,
    active: Option<SingleQueue>,
}

/// The image itself: what requests act on.
struct Disk {
    file: File,
    /// The image's path, for messages.
    path: PathBuf,
    readonly: bool,
    sectors: u64,
    id: [u8; 20],
    /// Copy-on-write: the guest's writes, kept from the image (opened read-only).
    overlay: Option<Overlay>,
}

impl Block {
    /// Open `path` read-only and lock it shared, for a guest that may write it all the same:
    /// its writes go to a private overlay that disappears with the process, so the image never
    /// changes and other VMs may share it (clones of one snapshot).
    pub fn open_cow(path: &Path) -> Result<Block, BlockError> {
        let mut b = Block::open(path, true)?;
        let overlay =
            Overlay::new(b.disk.sectors * SECTOR).map_err(|source| BlockError::Overlay {
                path: path.to_path_buf(),
                source,
            })?;
        b.disk.overlay = Some(overlay);
        b.disk.readonly = false;
        Ok(b)
    }

    /// Open `path` (read-only if `readonly`) and lock it.
    pub fn open(path: &Path, readonly: bool) -> Result<Block, BlockError> {
        let block = Block::open_unlocked(path, readonly)?;
        block.lock()?;
        Ok(block)
    }

    /// Open `path` without its lock, for a machine migrating in: the source still holds the
    /// lock until it stops, then hands the disk over ([`VirtioDevice::take_over`] takes it).
    pub fn open_unlocked(path: &Path, readonly: bool) -> Result<Block, BlockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!readonly)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let meta = file.metadata().map_err(|source| BlockError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        use std::os::unix::fs::FileTypeExt;
        let ft = meta.file_type();
        if !ft.is_file() && !ft.is_block_device() {
            return Err(BlockError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        let size = if ft.is_block_device() {
            use std::io::{Seek, SeekFrom};
            (&file)
                .seek(SeekFrom::End(0))
                .map_err(|source| BlockError::Open {
                    path: path.to_path_buf(),
                    source,
                })?
        } else {
            meta.len()
        };
        if size < SECTOR {
            return Err(BlockError::TooSmall {
                path: path.to_path_buf(),
                size,
            });
        }
        if !size.is_multiple_of(SECTOR) {
            tracing::warn!(
                "disk image {} is not a whole number of sectors; its last {} bytes are not visible",
                path.display(),
                size % SECTOR
            );
        }
        Ok(Block {
            disk: Disk {
                file,
                path: path.to_path_buf(),
                readonly,
                sectors: size / SECTOR,
                id: disk_id(path),
                overlay: None,
            },
            active: None,
        })
    }

    /// Take the image's lock: shared for a disk whose image does not change (read-only or
    /// copy-on-write), exclusive otherwise, failing at once if another process holds it.
    /// Taking it again is harmless.
    fn lock(&self) -> Result<(), BlockError> {
        let path = &self.disk.path;
        let op = if self.disk.readonly || self.disk.overlay.is_some() {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(self.disk.file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(BlockError::Locked {
                    path: path.to_path_buf(),
                });
            }
            return Err(BlockError::Open {
                path: path.to_path_buf(),
                source: err,
            });
        }
        Ok(())
    }

    /// Size of the disk in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.disk.sectors
    }

    /// Serve every available request of the queue.
    fn process(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        if a.signals.failed() {
            return;
        }
        if let Err(e) = serve_queue(&mut self.disk, a) {
            a.signals.fail(&e.to_string());
        }
    }
}

fn serve_queue(disk: &mut Disk, a: &mut SingleQueue) -> Result<(), DeviceError> {
    let (mem, wrote) = (&a.mem, &a.wrote);
    drain_queue(&mut a.queue, mem, &a.signals, |chain| {
        Ok(disk.request(mem, chain, wrote)?)
    })
}

/// A request the driver formed wrongly enough that it can't even be answered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// No device-writable byte for the status.
    #[error("block request without a status byte")]
    NoStatus,
}

/// The `GET_ID` string: "popek-" and the image's file name, NUL-padded to 20 bytes.
fn disk_id(path: &Path) -> [u8; 20] {
    let mut id = [0u8; 20];
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let text = format!("popek-{name}");
    let n = text.len().min(20);
    id[..n].copy_from_slice(&text.as_bytes()[..n]);
    id
}

impl Disk {
    /// Carry out one request; returns how many bytes were written to the driver's buffers.
    fn request(
        &mut self,
        mem: &GuestMem,
        mut chain: Chain,
        wrote: &GuestWriteHook,
    ) -> Result<u32, RequestError> {
        let status_seg = chain::split_back(&mut chain.writable, 1).ok_or(RequestError::NoStatus)?;
        let (status, data_written) = match chain::split_front(&mut chain.readable, 16) {
            None => (S_IOERR, 0),
            Some(header) => {
                let h = chain::gather(mem, &header);
                let kind = u32::from_le_bytes(h[0..4].try_into().expect("16-byte header"));
                let sector = u64::from_le_bytes(h[8..16].try_into().expect("16-byte header"));
                self.execute(mem, kind, sector, &chain, wrote)
            }
        };
        chain::scatter(mem, &status_seg, &[status]);
        wrote(status_seg[0].addr, 1);
        Ok(data_written.saturating_add(1))
    }

    /// Returns the status and the number of data bytes written to the driver's buffers.
    fn execute(
        &mut self,
        mem: &GuestMem,
        kind: u32,
        sector: u64,
        chain: &Chain,
        wrote: &GuestWriteHook,
    ) -> (u8, u32) {
        match kind {
            T_IN => {
                let Some(offset) = self.range(sector, chain::total_len(&chain.writable)) else {
                    return (S_IOERR, 0);
                };
                match self.transfer(mem, &chain.writable, offset, false) {
                    Ok(n) => {
                        for s in &chain.writable {
                            wrote(s.addr, s.len as u64);
                        }
                        (S_OK, n as u32)
                    }
                    Err(e) => {
                        popek_devices::guest_warn!("virtio-blk: read at sector {sector}: {e}");
                        (S_IOERR, 0)
                    }
                }
            }
            T_OUT => {
                if self.readonly {
                    return (S_IOERR, 0);
                }
                let Some(offset) = self.range(sector, chain::total_len(&chain.readable)) else {
                    return (S_IOERR, 0);
                };
                match self.transfer(mem, &chain.readable, offset, true) {
                    Ok(_) => (S_OK, 0),
                    Err(e) => {
                        popek_devices::guest_warn!("virtio-blk: write at sector {sector}: {e}");
                        (S_IOERR, 0)
                    }
                }
            }
            T_FLUSH => {
                if !self.writes_image() {
                    // Nothing written, or only to an overlay that dies with the process.
                    return (S_OK, 0);
                }
                match self.file.sync_data() {
                    Ok(()) => (S_OK, 0),
                    Err(e) => {
                        popek_devices::guest_warn!("virtio-blk: flush: {e}");
                        (S_IOERR, 0)
                    }
                }
            }
            T_GET_ID => {
                let n = chain::scatter(mem, &chain.writable, &self.id);
                for s in &chain.writable {
                    wrote(s.addr, s.len as u64);
                }
                (S_OK, n as u32)
            }
            T_DISCARD | T_WRITE_ZEROES => {
                if self.readonly {
                    return (S_IOERR, 0);
                }
                let segments = chain::gather(mem, &chain.readable);
                if segments.is_empty() || !segments.len().is_multiple_of(16) {
                    return (S_IOERR, 0);
                }
                for seg in segments.chunks_exact(16) {
                    let start = u64::from_le_bytes(seg[0..8].try_into().expect("16 bytes"));
                    let count = u32::from_le_bytes(seg[8..12].try_into().expect("16 bytes"));
                    let flags = u32::from_le_bytes(seg[12..16].try_into().expect("16 bytes"));
                    if count > MAX_ZERO_SECTORS {
                        return (S_IOERR, 0);
                    }
                    let Some(offset) = self.range(start, count as u64 * SECTOR) else {
                        return (S_IOERR, 0);
                    };
                    let len = count as u64 * SECTOR;
                    let status = if let Some(st) = self.zero_overlay(offset, len) {
                        st
                    } else if kind == T_DISCARD {
                        self.discard(offset, len)
                    } else {
                        self.write_zeroes(offset, len, flags)
                    };
                    if status != S_OK {
                        return (status, 0);
                    }
                }
                (S_OK, 0)
            }
            _ => (S_UNSUPP, 0),
        }
    }

    /// Byte offset of `sector` if `len` bytes from there are inside the disk and whole sectors.
    fn range(&self, sector: u64, len: u64) -> Option<u64> {
        if !len.is_multiple_of(SECTOR) {
            return None;
        }
        let end = sector.checked_add(len / SECTOR)?;
        (end <= self.sectors).then(|| sector * SECTOR)
    }

    /// Whether guest writes reach the image file (not read-only, not copy-on-write).
    fn writes_image(&self) -> bool {
        !self.readonly && self.overlay.is_none()
    }

    /// The descriptor that holds (or takes, if `to_disk`) the bytes at `at`, and how many of
    /// the `left` bytes from there it does: the image, or the overlay chunk by chunk.
    fn piece(&mut self, at: u64, left: usize, to_disk: bool) -> std::io::Result<(i32, usize)> {
        let Some(ov) = &mut self.overlay else {
            return Ok((self.file.as_raw_fd(), left));
        };
        let (from, n) = ov.source(&self.file, at, left as u64);
        if !to_disk {
            return Ok((from.as_raw_fd(), n as usize));
        }
        let to = ov.prepare_write(&self.file, at, n)?;
        Ok((to.as_raw_fd(), n as usize))
    }

    /// Move data between the image at `offset` and the segments (`to_disk`: a write).
    fn transfer(
        &mut self,
        mem: &GuestMem,
        segs: &[Segment],
        mut offset: u64,
        to_disk: bool,
    ) -> std::io::Result<usize> {
        if self.overlay.is_none() {
            return self.transfer_vectored(mem, segs, offset, to_disk);
        }
        let mut total = 0usize;
        for s in segs {
            let slice = mem
                .get_slice(GuestAddress(s.addr), s.len as usize)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let guard = slice.ptr_guard_mut();
            let base = guard.as_ptr();
            let mut done = 0usize;
            while done < s.len as usize {
                let (fd, left) =
                    self.piece(offset + done as u64, s.len as usize - done, to_disk)?;
                // SAFETY: `base..base+s.len` is guest RAM checked by get_slice, mapped for the
                // machine's lifetime; the kernel reads or writes it as plain bytes, and the
                // driver does not touch buffers it has made available.
                let n = unsafe {
                    let p = base.add(done) as *mut libc::c_void;
                    if to_disk {
                        libc::pwrite(fd, p, left, (offset + done as u64) as libc::off_t)
                    } else {
                        libc::pread(fd, p, left, (offset + done as u64) as libc::off_t)
                    }
                };
                let Some(n) = Self::moved(n, to_disk)? else {
                    continue;
                };
                if n == 0 {
                    // Past the end of a file that shrank under us: reads give zeros.
                    // SAFETY: as above.
                    unsafe { std::ptr::write_bytes(base.add(done), 0, left) };
                    break;
                }
                done += n;
            }
            offset += s.len as u64;
            total += s.len as usize;
        }
        Ok(total)
    }

    /// What a `pread`/`pwrite`-like call's result `n` means: `None` to try again (interrupted),
    /// the bytes moved (0 at the image's end on a read), or the error (a write that moved
    /// nothing is one).
    fn moved(n: isize, to_disk: bool) -> std::io::Result<Option<usize>> {
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                return Ok(None);
            }
            return Err(err);
        }
        if n == 0 && to_disk {
            return Err(std::io::Error::other("image accepted no more bytes"));
        }
        Ok(Some(n as usize))
    }

    /// [`Self::transfer`] on the image itself (no overlay): all segments in one `preadv` or
    /// `pwritev` (a 1 MiB read is up to 256 segments of a page), again from where a short one
    /// stopped.
    fn transfer_vectored(
        &mut self,
        mem: &GuestMem,
        segs: &[Segment],
        offset: u64,
        to_disk: bool,
    ) -> std::io::Result<usize> {
        let mut iov = Vec::with_capacity(segs.len());
        let mut guards = Vec::with_capacity(segs.len());
        for s in segs {
            let slice = mem
                .get_slice(GuestAddress(s.addr), s.len as usize)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let guard = slice.ptr_guard_mut();
            iov.push(libc::iovec {
                iov_base: guard.as_ptr() as *mut libc::c_void,
                iov_len: s.len as usize,
            });
            guards.push(guard);
        }
        let total: usize = iov.iter().map(|v| v.iov_len).sum();
        let fd = self.file.as_raw_fd();
        let (mut first, mut done) = (0usize, 0usize);
        while first < iov.len() {
            let count = (iov.len() - first).min(libc::UIO_MAXIOV as usize) as libc::c_int;
            let at = (offset + done as u64) as libc::off_t;
            // SAFETY: every iovec is guest RAM checked by get_slice (its guard held in
            // `guards`), mapped for the machine's lifetime; the kernel reads or writes it as
            // plain bytes, and the driver does not touch buffers it has made available.
            let n = unsafe {
                if to_disk {
                    libc::pwritev(fd, iov[first..].as_ptr(), count, at)
                } else {
                    libc::preadv(fd, iov[first..].as_ptr(), count, at)
                }
            };
            let Some(n) = Self::moved(n, to_disk)? else {
                continue;
            };
            if n == 0 {
                // Past the end of a file that shrank under us: reads give zeros.
                for v in &iov[first..] {
                    // SAFETY: as above.
                    unsafe { std::ptr::write_bytes(v.iov_base as *mut u8, 0, v.iov_len) };
                }
                break;
            }
            // Step past what was moved: whole segments, then into the one it stopped in.
            let mut n = n;
            done += n;
            while n > 0 && n >= iov[first].iov_len {
                n -= iov[first].iov_len;
                first += 1;
            }
            if n > 0 {
                let v = &mut iov[first];
                // SAFETY: `n` < the segment's length: still inside it.
                v.iov_base = unsafe { (v.iov_base as *mut u8).add(n) } as *mut libc::c_void;
                v.iov_len -= n;
            }
        }
        drop(guards);
        Ok(total)
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> std::io::Result<()> {
        // SAFETY: fallocate on a descriptor we own; no memory is involved.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                mode,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Zeros over `len` bytes at `offset` in the overlay, for a discard or write-zeroes
    /// request on a copy-on-write disk.
    fn zero_overlay(&mut self, offset: u64, len: u64) -> Option<u8> {
        let ov = self.overlay.as_mut()?;
        Some(match ov.zero(&self.file, offset, len) {
            Ok(()) => S_OK,
            Err(e) => {
                popek_devices::guest_warn!("virtio-blk: zeroing the overlay: {e}");
                S_IOERR
            }
        })
    }

    fn discard(&self, offset: u64, len: u64) -> u8 {
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        match self.fallocate(mode, offset, len) {
            Ok(()) => S_OK,
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => S_UNSUPP,
            Err(e) => {
                popek_devices::guest_warn!("virtio-blk: discard: {e}");
                S_IOERR
            }
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: u32) -> u8 {
        let mut modes = vec![libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE];
        if flags & WRITE_ZEROES_UNMAP != 0 {
            modes.insert(0, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE);
        }
        for mode in modes {
            if self.fallocate(mode, offset, len).is_ok() {
                return S_OK;
            }
        }
        // The file system can't: write the zeros.
        let zeros = vec![0u8; 1 << 16];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            use std::os::unix::fs::FileExt;
            if let Err(e) = self.file.write_all_at(&zeros[..n], offset + done) {
                popek_devices::guest_warn!("virtio-blk: write zeroes: {e}");
                return S_IOERR;
            }
            done += n as u64;
        }
        S_OK
    }

    fn config(&self) -> [u8; 60] {
        let mut c = [0u8; 60];
        c[0..8].copy_from_slice(&self.sectors.to_le_bytes());
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        c[20..24].copy_from_slice(&(SECTOR as u32).to_le_bytes());
        // Discard: any sector count up to the limit, one segment, 4 KiB granularity.
        c[36..40].copy_from_slice(&MAX_ZERO_SECTORS.to_le_bytes());
        c[40..44].copy_from_slice(&1u32.to_le_bytes());
        c[44..48].copy_from_slice(&8u32.to_le_bytes());
        c[48..52].copy_from_slice(&MAX_ZERO_SECTORS.to_le_bytes());
        c[52..56].copy_from_slice(&1u32.to_le_bytes());
        c[56] = 1;
        c
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut f = features::VERSION_1
            | features::RING_EVENT_IDX
            | features::RING_INDIRECT_DESC
            | F_SEG_MAX
            | F_BLK_SIZE
            | F_FLUSH;
        if self.disk.readonly {
            f |= F_RO;
        } else {
            f |= F_DISCARD | F_WRITE_ZEROES;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.disk.config(), offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), DeviceError> {
        self.active = Some(a.single_queue("virtio-blk")?);
        // Requests made available before DRIVER_OK are served now.
        self.process();
        Ok(())
    }

    fn notify(&mut self, _index: u16) {
        self.process();
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn take_queues(&mut self) -> Result<Vec<virtio_queue::Queue>, DeviceError> {
        // Requests finish inside notify: nothing is in flight between MMIO accesses.
        if self.disk.writes_image() {
            self.disk.file.sync_data().map_err(DeviceError::Flush)?;
        }
        Ok(self
            .active
            .take()
            .map(|a| vec![a.queue])
            .unwrap_or_default())
    }

    fn hand_over(&mut self) {
        // SAFETY: flock on a descriptor we own; no memory is involved.
        unsafe { libc::flock(self.disk.file.as_raw_fd(), libc::LOCK_UN) };
    }

    fn take_over(&mut self) -> Result<(), DeviceError> {
        Ok(self.lock()?)
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if self.disk.writes_image() {
            let _ = self.disk.file.sync_data();
        }
    }
}

#[cfg(test)]
#[path = "blk_tests.rs"]
mod tests;
