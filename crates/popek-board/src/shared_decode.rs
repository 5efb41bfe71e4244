//! The file behind the decoded pages that the clones of one snapshot running at the same time
//! share (see [`popek_cpu::SharedDecode`]): where it lives, who may use it, and emptying it
//! when its last user exits.
//!
//! Only restores asked to (`--share-decode`, [`crate::MachineConfig::restore_shares_decode`])
//! use one: every user maps it writable, so a guest that broke out of popek in one of them
//! could change the code the others run.
//!
//! It is a file in `/dev/shm` (memory, never a disk), private to the user, named after the
//! snapshot's RAM image and popek's own executable (their device, inode, size and times): a
//! rebuilt popek, whose decoder may differ, or a snapshot written again, gets another. Every
//! user holds a shared `flock` on it; one that exits and can turn it into an exclusive lock is
//! the last, and truncates the file to nothing, which gives its memory back. A clone that
//! starts while the last one empties it waits for that and starts a new cache. The cache is
//! an optimisation only: when any of this fails, the restore decodes on its own.

use std::fs::{File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use popek_cpu::SharedDecode;

/// Where the shared caches live: memory shared between processes by name.
const DIR: &str = "/dev/shm";

/// The shared decode cache for the machine restored from the RAM image at `ram` (`bytes` of
/// guest RAM from guest-physical page `first_ppn`), or `None` (with a warning) if there can be
/// none.
pub(crate) fn open(ram: &Path, first_ppn: u64, bytes: u64) -> Option<(Arc<SharedDecode>, PathBuf)> {
    match try_open(ram, first_ppn, bytes) {
        Ok(shared) => shared.map(|(s, path)| (Arc::new(s), path)),
        Err(e) => {
            // Asked for (--share-decode): say why there is none.
            tracing::warn!(
                "no decoded code shared with other restores ({e}): this one decodes its own"
            );
            None
        }
    }
}

fn try_open(
    ram: &Path,
    first_ppn: u64,
    bytes: u64,
) -> std::io::Result<Option<(SharedDecode, PathBuf)>> {
    let pages = bytes / 4096;
    let layout = SharedDecode::layout(pages);
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let path = cache_path(ram, bytes, euid)?;
    remove_unused(&path, euid);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(at(&path))?;
    let meta = file.metadata().map_err(at(&path))?;
    if !meta.is_file() || meta.uid() != euid || meta.mode() & 0o077 != 0 {
        return Err(std::io::Error::other(format!(
            "{} is not a private file of this user",
            path.display()
        )));
    }
    flock(&file, libc::LOCK_SH).map_err(at(&path))?;
    // Holding the lock, nobody empties the file: it is empty, or a cache of this layout.
    let len = file.metadata().map_err(at(&path))?.len();
    if len < layout.len as u64 {
        file.set_len(layout.len as u64).map_err(at(&path))?;
    } else if len > layout.len as u64 {
        return Err(std::io::Error::other(format!(
            "{} is larger than a cache for this snapshot",
            path.display()
        )));
    }
    let image_file = File::open(ram).map_err(at(ram))?;
    let area = map(&file, layout.len, libc::PROT_READ | libc::PROT_WRITE).map_err(at(&path))?;
    let image = match map(&image_file, bytes as usize, libc::PROT_READ).map_err(at(ram)) {
        Ok(m) => m,
        Err(e) => {
            // SAFETY: the area was just mapped with this length and nothing uses it.
            unsafe { libc::munmap(area.as_ptr().cast(), layout.len) };
            return Err(e);
        }
    };
    let owner = Mappings {
        file,
        area,
        area_len: layout.len,
        image,
        image_len: bytes as usize,
    };
    // SAFETY: the area is a shared mapping of `layout.len` bytes of a file that only
    // `SharedDecode` writes (every user runs this code: the name holds popek's executable),
    // zero where it never wrote; the image maps the snapshot's RAM read-only, a file popek
    // does not write while restores use it; both stay mapped until `owner` is dropped.
    let shared = unsafe { SharedDecode::new(first_ppn, pages, area, image, Box::new(owner)) };
    if shared.is_none() {
        tracing::warn!(
            "{} is a decode cache of another layout: no decoded code shared with other restores",
            path.display()
        );
    }
    Ok(shared.map(|s| (s, path)))
}

/// Remove the emptied caches of user `euid` other than `ours` (those of other snapshots or popek
/// builds that nobody uses: their last user emptied them, as it cannot remove them from its
/// jail). One that a restore is just creating may go too: that restore then shares with
/// nobody, which is correct, only slower.
fn remove_unused(ours: &Path, euid: u32) {
    let (Some(dir), Some(name)) = (ours.parent(), ours.file_name().and_then(|n| n.to_str())) else {
        return;
    };
    let Some(prefix) = name.rfind('-').map(|i| &name[..=i]) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let unused = e
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(prefix))
            && path != ours
            && e.metadata()
                .is_ok_and(|m| m.is_file() && m.uid() == euid && m.len() == 0);
        if unused {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// An I/O error that names `path`.
fn at(path: &Path) -> impl Fn(std::io::Error) -> std::io::Error + '_ {
    move |e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// The cache's name for the image at `ram` and this executable, for user `euid`.
fn cache_path(ram: &Path, bytes: u64, euid: u32) -> std::io::Result<PathBuf> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for file in [ram, Path::new("/proc/self/exe")] {
        let m = std::fs::metadata(file)?;
        (
            m.dev(),
            m.ino(),
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        )
            .hash(&mut h);
    }
    (bytes, SharedDecode::STRIDE).hash(&mut h);
    Ok(Path::new(DIR).join(format!("popek-decode-{euid}-{:016x}", h.finish())))
}

fn flock(file: &File, op: libc::c_int) -> std::io::Result<()> {
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Map `len` bytes of `file` shared, with protection `prot`.
fn map(file: &File, len: usize, prot: libc::c_int) -> std::io::Result<NonNull<u8>> {
    // SAFETY: a new shared mapping of our file at an address of the kernel's choosing touches
    // no existing memory.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED | libc::MAP_NORESERVE,
            file.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    NonNull::new(p.cast()).ok_or_else(|| std::io::Error::other("mmap returned null"))
}

/// The cache's file and mappings; the last user empties the file when it goes.
struct Mappings {
    file: File,
    area: NonNull<u8>,
    area_len: usize,
    image: NonNull<u8>,
    image_len: usize,
}

// SAFETY: the mappings are plain memory owned by this value; nothing here is thread-bound.
unsafe impl Send for Mappings {}
// SAFETY: as above; the value itself is never accessed through a shared reference.
unsafe impl Sync for Mappings {}

impl Drop for Mappings {
    fn drop(&mut self) {
        // SAFETY: both were mapped with these lengths by `try_open`; `SharedDecode`, the only
        // user, is being dropped.
        unsafe {
            libc::munmap(self.area.as_ptr().cast(), self.area_len);
            libc::munmap(self.image.as_ptr().cast(), self.image_len);
        }
        // The last user (no other shared lock) empties the cache; closing the file then
        // releases the lock.
        if flock(&self.file, libc::LOCK_EX | libc::LOCK_NB).is_ok() {
            if let Err(e) = self.file.set_len(0) {
                tracing::warn!("cannot empty the shared decode cache: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two opens of one image share a file; when both are gone it is empty.
    #[test]
    fn users_share_one_file_that_the_last_one_empties() {
        let dir = std::env::temp_dir().join(format!("popek-shared-decode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ram = dir.join("ram.img");
        std::fs::write(&ram, vec![0x13u8; 8192]).unwrap();
        // SAFETY: geteuid has no preconditions.
        let path = cache_path(&ram, 8192, unsafe { libc::geteuid() }).unwrap();
        let (a, at) = open(&ram, 0x80000, 8192).expect("a cache");
        let (b, bt) = open(&ram, 0x80000, 8192).expect("the same cache");
        assert_eq!((&at, &bt), (&path, &path));
        let len = SharedDecode::layout(2).len as u64;
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        drop(a);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len, "still in use");
        drop(b);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            0,
            "emptied by the last user"
        );
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
