//! A copy-on-write overlay over a disk image opened read-only: what the guest writes goes to
//! an unnamed temporary file (gone with the process), by 4 KiB chunk; a chunk the guest never
//! wrote is read from the image. Many VMs (clones restored from one snapshot, say) can share
//! one image this way, and the image never changes.

use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Bytes per overlay chunk: the unit copied up from the image on a first partial write.
const CHUNK: u64 = 4096;

/// The overlay of one disk.
pub(crate) struct Overlay {
    file: File,
    /// Bytes of the disk (the last chunk may be shorter).
    size: u64,
    /// One bit per chunk: set when the chunk lives in `file`.
    written: Vec<u64>,
}

impl Overlay {
    /// An empty overlay for an image of `size` bytes, in an unnamed file of the host's
    /// temporary directory (sparse: only written chunks take space).
    pub(crate) fn new(size: u64) -> io::Result<Overlay> {
        let dir = std::env::temp_dir();
        let file = open_tmpfile(&dir)?;
        file.set_len(size)?;
        let chunks = size.div_ceil(CHUNK);
        Ok(Overlay {
            file,
            size,
            written: vec![0; chunks.div_ceil(64) as usize],
        })
    }

    fn is_written(&self, chunk: u64) -> bool {
        self.written[(chunk / 64) as usize] & (1 << (chunk % 64)) != 0
    }

    fn mark(&mut self, chunk: u64) {
        self.written[(chunk / 64) as usize] |= 1 << (chunk % 64);
    }

    /// Where the bytes at `offset` (up to the end of their chunk) are read from: the overlay or
    /// the image; and how many bytes that is, at most `len`.
    pub(crate) fn source<'a>(&'a self, image: &'a File, offset: u64, len: u64) -> (&'a File, u64) {
        let chunk = offset / CHUNK;
        let n = len.min((chunk + 1) * CHUNK - offset);
        let from = if self.is_written(chunk) {
            &self.file
        } else {
            image
        };
        (from, n)
    }

    /// Prepare the overlay for a write of `len` bytes at `offset` (within one chunk): copy the
    /// chunk up from the image unless the write covers it whole or it is already there.
    /// Returns the file to write to.
    pub(crate) fn prepare_write(
        &mut self,
        image: &File,
        offset: u64,
        len: u64,
    ) -> io::Result<&File> {
        let chunk = offset / CHUNK;
        let start = chunk * CHUNK;
        let end = (start + CHUNK).min(self.size);
        if !self.is_written(chunk) {
            if offset != start || offset + len < end {
                let mut buf = vec![0u8; (end - start) as usize];
                read_full(image, &mut buf, start)?;
                self.file.write_all_at(&buf, start)?;
            }
            self.mark(chunk);
        }
        Ok(&self.file)
    }

    /// Write `len` zero bytes at `offset` (discard and write-zeroes requests).
    pub(crate) fn zero(&mut self, image: &File, offset: u64, len: u64) -> io::Result<()> {
        let zeros = vec![0u8; CHUNK as usize];
        let mut done = 0;
        while done < len {
            let at = offset + done;
            let n = (len - done).min((at / CHUNK + 1) * CHUNK - at);
            self.prepare_write(image, at, n)?
                .write_all_at(&zeros[..n as usize], at)?;
            done += n;
        }
        Ok(())
    }
}

/// Read `buf.len()` bytes at `offset`, zeros past the end of the file.
fn read_full(f: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                break;
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// An unnamed read-write file in `dir` (`O_TMPFILE`): nothing to clean up, whatever happens.
fn open_tmpfile(dir: &Path) -> io::Result<File> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("temporary directory name holds a NUL byte"))?;
    // SAFETY: open on a NUL-terminated path we own; the descriptor it returns is ours alone.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
            0o600,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!(
                "cannot create a copy-on-write overlay in {}: {e}",
                dir.display()
            ),
        ));
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}
