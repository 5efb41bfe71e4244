//! Loading firmware and bare-metal images into guest RAM: ELF (by physical address, as QEMU's
//! `-bios` does) or flat binaries (at the start of RAM).

use std::path::Path;

use goblin::elf::{header, program_header::PT_LOAD, Elf};
use popek_cpu::Memory;

use crate::error::BoardError;

/// Where a loaded image starts executing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedImage {
    /// Entry point.
    pub entry: u64,
    /// One past the highest byte loaded.
    pub end: u64,
}

/// Load `path` into `mem`: an ELF by its program headers, anything else as a flat image at
/// `flat_base`. A file named `*.elf` must be an ELF.
pub fn load_image(path: &Path, mem: &Memory, flat_base: u64) -> Result<LoadedImage, BoardError> {
    let data = std::fs::read(path).map_err(|source| BoardError::Read {
        path: path.to_owned(),
        source,
    })?;
    if data.is_empty() {
        return Err(BoardError::Empty(path.to_owned()));
    }
    if data.starts_with(b"\x7fELF") {
        return load_elf(path, &data, mem);
    }
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("elf"))
    {
        return Err(BoardError::NotElf(path.to_owned()));
    }
    let end = flat_base + data.len() as u64;
    mem.write(flat_base, &data)
        .ok_or_else(|| outside(path, mem, "the image".into(), flat_base, end))?;
    Ok(LoadedImage {
        entry: flat_base,
        end,
    })
}

fn outside(path: &Path, mem: &Memory, what: String, start: u64, end: u64) -> BoardError {
    let (ram_start, ram_end) = mem
        .regions()
        .first()
        .map(|r| (r.base(), r.base() + r.len()))
        .unwrap_or((0, 0));
    BoardError::OutsideRam {
        path: path.to_owned(),
        what,
        start,
        end,
        ram_start,
        ram_end,
    }
}

fn load_elf(path: &Path, data: &[u8], mem: &Memory) -> Result<LoadedImage, BoardError> {
    let bad = |reason: String| BoardError::BadElf {
        path: path.to_owned(),
        reason,
    };
    // Check the architecture from the raw header first: goblin refuses some foreign ELFs outright.
    if data.len() >= 20 {
        let class = data[4];
        let machine = u16::from_le_bytes([data[18], data[19]]);
        if machine != header::EM_RISCV {
            return Err(BoardError::WrongArch {
                path: path.to_owned(),
                machine: header::machine_to_str(machine)
                    .trim_start_matches("EM_")
                    .to_string(),
            });
        }
        if class != header::ELFCLASS64 {
            return Err(BoardError::WrongClass(path.to_owned()));
        }
    }
    let elf = Elf::parse(data).map_err(|e| bad(e.to_string()))?;
    let mut end = 0;
    let mut loaded = 0;
    for ph in elf
        .program_headers
        .iter()
        .filter(|p| p.p_type == PT_LOAD && p.p_memsz > 0)
    {
        let start = ph.p_paddr;
        let seg_end = start.checked_add(ph.p_memsz).ok_or_else(|| {
            bad(format!(
                "segment at {start:#x} wraps around the address space"
            ))
        })?;
        let file_range = ph.file_range();
        let bytes = data.get(file_range.clone()).ok_or_else(|| {
            bad(format!(
                "segment at {start:#x} points past the end of the file"
            ))
        })?;
        if ph.p_filesz > ph.p_memsz {
            return Err(bad(format!(
                "segment at {start:#x} has more file bytes than memory bytes"
            )));
        }
        let what = format!("segment {}", loaded);
        if mem.host_ptr(start, ph.p_memsz).is_none() {
            return Err(outside(path, mem, what, start, seg_end));
        }
        mem.write(start, bytes)
            .ok_or_else(|| outside(path, mem, what.clone(), start, seg_end))?;
        let zeros = vec![0u8; (ph.p_memsz - ph.p_filesz) as usize];
        mem.write(start + ph.p_filesz, &zeros)
            .ok_or_else(|| outside(path, mem, what, start, seg_end))?;
        end = end.max(seg_end);
        loaded += 1;
    }
    if loaded == 0 {
        return Err(bad("it has no loadable segments".into()));
    }
    Ok(LoadedImage {
        entry: elf.entry,
        end,
    })
}

/// Load a Linux kernel `Image` for RISC-V at `addr` (which must be 2 MiB aligned); returns the
/// end of the memory it occupies (its `image_size`, which covers BSS).
pub fn load_kernel(path: &Path, mem: &Memory, addr: u64) -> Result<u64, BoardError> {
    let data = std::fs::read(path).map_err(|source| BoardError::Read {
        path: path.to_owned(),
        source,
    })?;
    let not_kernel = |what: &str| BoardError::NotKernel {
        path: path.to_owned(),
        what: what.to_string(),
    };
    if data.len() >= 0x206 && &data[0x202..0x206] == b"HdrS" {
        return Err(not_kernel("an x86 kernel (bzImage)"));
    }
    if data.len() >= 0x3c && &data[0x38..0x3c] == b"ARMd" {
        return Err(not_kernel("an arm64 kernel Image"));
    }
    if data.starts_with(&[0x1f, 0x8b]) {
        return Err(not_kernel(
            "gzip-compressed (decompress it: popek boots the uncompressed Image)",
        ));
    }
    if data.starts_with(b"\x7fELF") {
        return Err(not_kernel("an ELF (vmlinux); give the kernel's Image file"));
    }
    let riscv =
        data.len() >= 0x40 && (&data[0x30..0x35] == b"RISCV" || &data[0x38..0x3c] == b"RSC\x05");
    if !riscv {
        return Err(not_kernel("something else (it has no RISC-V Image header)"));
    }
    let image_size = u64::from_le_bytes(data[16..24].try_into().unwrap_or_default());
    let size = image_size.max(data.len() as u64);
    let end = addr + size;
    if mem.host_ptr(addr, size).is_none() {
        return Err(outside(path, mem, "the kernel".into(), addr, end));
    }
    mem.write(addr, &data)
        .ok_or_else(|| outside(path, mem, "the kernel".into(), addr, end))?;
    Ok(end)
}

/// Load a file (an initial RAM disk) at `addr`; returns its end.
pub fn load_blob(path: &Path, mem: &Memory, addr: u64) -> Result<u64, BoardError> {
    let data = std::fs::read(path).map_err(|source| BoardError::Read {
        path: path.to_owned(),
        source,
    })?;
    let end = addr + data.len() as u64;
    mem.write(addr, &data)
        .ok_or_else(|| outside(path, mem, "the initrd".into(), addr, end))?;
    Ok(end)
}
