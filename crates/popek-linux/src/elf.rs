//! Loading riscv64 ELF programs (and `#!` scripts) into the guest address space, and building the
//! initial stack Linux gives a new program (argc, argv, envp, auxv).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::fs::Sandbox;
use crate::mm::{self, page_down, page_up, Mm, PAGE, PROT_EXEC, PROT_READ, PROT_WRITE};
use crate::{Errno, Error};

const PT_LOAD: u32 = 1;
const PT_INTERP: u32 = 3;
const PT_PHDR: u32 = 6;
const EM_RISCV: u16 = 243;

/// Where an ELF file ended up.
#[derive(Debug, Clone, Copy)]
pub struct Loaded {
    /// Entry point (biased).
    pub entry: u64,
    /// Guest address of the program headers.
    pub phdr: u64,
    /// Number of program headers.
    pub phnum: u64,
    /// Load bias (0 for ET_EXEC).
    pub bias: u64,
    /// Page-aligned end of the highest segment.
    pub end: u64,
}

/// A program ready to start: the main image, the interpreter's, and the final argv.
#[derive(Debug)]
pub struct Program {
    /// The main program.
    pub main: Loaded,
    /// The dynamic loader, if the program has PT_INTERP.
    pub interp: Option<Loaded>,
    /// The guest path of the main program.
    pub path: Vec<u8>,
    /// argv after `#!` processing.
    pub argv: Vec<Vec<u8>>,
}

struct Phdr {
    p_type: u32,
    flags: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
    memsz: u64,
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]))
}

/// Read up to `len` bytes at `off` (short at end of file).
fn pread(fd: &OwnedFd, off: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        // SAFETY: the buffer has room for len - got bytes at got.
        let n = unsafe {
            libc::pread(
                fd.as_raw_fd(),
                buf.as_mut_ptr().add(got) as *mut libc::c_void,
                len - got,
                (off + got as u64) as i64,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if n == 0 {
            break;
        }
        got += n as usize;
    }
    buf.truncate(got);
    Ok(buf)
}

fn machine_name(class: u8, machine: u16) -> String {
    let bits = if class == 1 { "32-bit " } else { "" };
    let m = match machine {
        3 => "x86 (i386)",
        62 => "x86-64",
        40 => "32-bit ARM",
        183 => "aarch64",
        8 => "MIPS",
        20 => "PowerPC",
        21 => "PowerPC64",
        22 => "s390x",
        258 => "LoongArch",
        EM_RISCV => return format!("{bits}RISC-V"),
        n => return format!("{bits}unknown-machine ({n})"),
    };
    m.to_string()
}

/// Check the ELF header: what a riscv64 Linux kernel would accept. `Ok(false)` if the file is not
/// an ELF at all.
fn check_header(h: &[u8], prog: &str) -> Result<bool, Error> {
    if h.len() < 4 || &h[..4] != b"\x7fELF" {
        return Ok(false);
    }
    if h.len() < 64 {
        return Err(Error::BadElf {
            prog: prog.into(),
            why: "truncated header".into(),
        });
    }
    let (class, data, machine) = (h[4], h[5], u16_at(h, 18));
    if !(1..=2).contains(&class) || !(1..=2).contains(&data) {
        return Err(Error::BadElf {
            prog: prog.into(),
            why: "bad ELF identification bytes".into(),
        });
    }
    if class != 2 || machine != EM_RISCV || data != 1 {
        return Err(Error::WrongArch {
            prog: prog.into(),
            what: if data == 2 && machine != EM_RISCV {
                format!(
                    "big-endian {}",
                    machine_name(class, u16::from_be_bytes([h[18], h[19]]))
                )
            } else {
                machine_name(class, machine)
            },
        });
    }
    let e_type = u16_at(h, 16);
    if e_type != 2 && e_type != 3 {
        return Err(Error::BadElf {
            prog: prog.into(),
            why: format!("not an executable (ELF type {e_type})"),
        });
    }
    Ok(true)
}

/// Whether a file's first bytes make it something execve would run (for the guest's execve).
pub fn is_runnable(h: &[u8]) -> bool {
    h.starts_with(b"#!") || matches!(check_header(h, ""), Ok(true))
}

fn bad(prog: &str, why: &str) -> Error {
    Error::BadElf {
        prog: prog.into(),
        why: why.into(),
    }
}

/// The error for a failed read of `prog`, for `map_err`.
fn io(prog: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        prog: prog.into(),
        source,
    }
}

/// An ELF file's header fields popek uses and its program headers, checked against the file.
struct Headers {
    /// ET_EXEC (2) or ET_DYN (3).
    e_type: u16,
    entry: u64,
    phoff: u64,
    phnum: u64,
    phdrs: Vec<Phdr>,
    file_size: u64,
}

/// Map one ELF file; `want_base` is where an ET_DYN image goes (None: pick a free range).
fn load_elf(
    mm: &mut Mm,
    fd: &OwnedFd,
    prog: &str,
    want_base: Option<u64>,
) -> Result<(Loaded, Option<Vec<u8>>), Error> {
    let h = read_headers(fd, prog)?;
    let loads: Vec<&Phdr> = h.phdrs.iter().filter(|p| p.p_type == PT_LOAD).collect();
    if loads.is_empty() {
        return Err(bad(prog, "no loadable segments"));
    }
    let mut lo = u64::MAX;
    let mut hi = 0u64;
    for p in &loads {
        let end = p
            .vaddr
            .checked_add(p.memsz)
            .ok_or_else(|| bad(prog, "segment wraps around"))?;
        if p.filesz > p.memsz
            || p.offset
                .checked_add(p.filesz)
                .is_none_or(|e| e > h.file_size)
            || p.vaddr % PAGE != p.offset % PAGE
        {
            return Err(bad(prog, "segment does not fit the file"));
        }
        lo = lo.min(page_down(p.vaddr));
        hi = hi.max(page_up(end));
    }
    let span = hi - lo;
    let bias = if h.e_type == 3 {
        let base = match want_base {
            Some(b) => b,
            None => mm
                .find_free(span)
                .ok_or_else(|| bad(prog, "no room for the image"))?,
        };
        base.wrapping_sub(lo)
    } else {
        0
    };
    if lo.wrapping_add(bias) < PAGE || hi.wrapping_add(bias) > mm::MMAP_TOP || span > mm::MMAP_TOP {
        return Err(bad(prog, "segments outside the address space"));
    }
    let interp = read_interp(fd, prog, &h)?;
    for p in &loads {
        map_segment(mm, fd, prog, p, bias)?;
    }
    let phdr = match h.phdrs.iter().find(|p| p.p_type == PT_PHDR) {
        Some(p) => p.vaddr + bias,
        None => loads
            .iter()
            .find(|p| p.offset <= h.phoff && h.phoff < p.offset + p.filesz)
            .map(|p| p.vaddr + (h.phoff - p.offset) + bias)
            .unwrap_or(0),
    };
    Ok((
        Loaded {
            entry: h.entry.wrapping_add(bias),
            phdr,
            phnum: h.phnum,
            bias,
            end: hi + bias,
        },
        interp,
    ))
}

/// Read and check the ELF header and the program header table of `fd`.
fn read_headers(fd: &OwnedFd, prog: &str) -> Result<Headers, Error> {
    let h = pread(fd, 0, 64).map_err(io(prog))?;
    if !check_header(&h, prog)? {
        return Err(Error::NotElf { prog: prog.into() });
    }
    // SAFETY: fstat writes into the zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::fstat(fd.as_raw_fd(), &mut st) };
    let file_size = st.st_size.max(0) as u64;
    let phoff = u64_at(&h, 32);
    let phentsize = u16_at(&h, 54) as u64;
    let phnum = u16_at(&h, 56) as u64;
    if phentsize != 56 || phnum == 0 || phnum > 256 {
        return Err(bad(prog, "bad program header table"));
    }
    if phoff.checked_add(phnum * 56).is_none_or(|e| e > file_size) {
        return Err(bad(prog, "program headers past the end of the file"));
    }
    let table = pread(fd, phoff, (phnum * 56) as usize).map_err(io(prog))?;
    if table.len() as u64 != phnum * 56 {
        return Err(bad(prog, "program headers past the end of the file"));
    }
    let phdrs = (0..phnum as usize)
        .map(|i| {
            let b = &table[i * 56..];
            Phdr {
                p_type: u32_at(b, 0),
                flags: u32_at(b, 4),
                offset: u64_at(b, 8),
                vaddr: u64_at(b, 16),
                filesz: u64_at(b, 32),
                memsz: u64_at(b, 40),
            }
        })
        .collect();
    Ok(Headers {
        e_type: u16_at(&h, 16),
        entry: u64_at(&h, 24),
        phoff,
        phnum,
        phdrs,
        file_size,
    })
}

/// The interpreter a PT_INTERP header names, if the file has one.
fn read_interp(fd: &OwnedFd, prog: &str, h: &Headers) -> Result<Option<Vec<u8>>, Error> {
    let mut interp = None;
    for p in h.phdrs.iter().filter(|p| p.p_type == PT_INTERP) {
        if p.filesz == 0
            || p.filesz > 4096
            || p.offset
                .checked_add(p.filesz)
                .is_none_or(|e| e > h.file_size)
        {
            return Err(bad(prog, "bad PT_INTERP"));
        }
        let mut s = pread(fd, p.offset, p.filesz as usize).map_err(io(prog))?;
        while s.last() == Some(&0) {
            s.pop();
        }
        if s.is_empty() || s.contains(&0) {
            return Err(bad(prog, "PT_INTERP names no interpreter"));
        }
        interp = Some(s);
    }
    Ok(interp)
}

/// Map PT_LOAD segment `p` at its address plus `bias`: its file bytes, the rest of its last
/// file page zeroed (the start of .bss), and anonymous pages for the rest of its memory size.
fn map_segment(mm: &mut Mm, fd: &OwnedFd, prog: &str, p: &Phdr, bias: u64) -> Result<(), Error> {
    let limit = mm.limit();
    let emap = |e: Errno| Error::mapping(prog, limit, e);
    let prot = (if p.flags & 4 != 0 { PROT_READ } else { 0 })
        | (if p.flags & 2 != 0 { PROT_WRITE } else { 0 })
        | (if p.flags & 1 != 0 { PROT_EXEC } else { 0 });
    let vaddr = p.vaddr + bias;
    let start = page_down(vaddr);
    let file_end = vaddr + p.filesz;
    let mem_end = page_up(vaddr + p.memsz);
    if p.filesz > 0 {
        let len = page_up(file_end) - start;
        mm.map_file(
            start,
            len,
            prot,
            fd.as_raw_fd(),
            p.offset - (vaddr - start),
            false,
        )
        .map_err(emap)?;
        // Zero the rest of the last file page (it holds the start of .bss).
        let tail = page_up(file_end) - file_end;
        if tail > 0 && p.memsz > p.filesz {
            mm.poke(file_end, &vec![0; tail as usize]).map_err(emap)?;
        }
    }
    let anon_start = if p.filesz > 0 {
        page_up(file_end)
    } else {
        start
    };
    if mem_end > anon_start {
        mm.map_anon(anon_start, mem_end - anon_start, prot, false)
            .map_err(emap)?;
    }
    Ok(())
}

fn is_regular(fd: &OwnedFd) -> bool {
    // SAFETY: fstat writes into the zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above, on our descriptor.
    unsafe {
        libc::fstat(fd.as_raw_fd(), &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFREG
    }
}

/// Open a guest path for execution, mapping errors to the messages of the spec.
fn open_exec(sb: &Sandbox, abs: &[u8], prog: &str) -> Result<OwnedFd, Error> {
    match sb.open(abs, libc::O_RDONLY | libc::O_CLOEXEC, 0) {
        // SAFETY: a fresh descriptor we own.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        Err(Errno(libc::ENOENT)) | Err(Errno(libc::ENOTDIR)) => Err(Error::NotFound {
            prog: prog.into(),
            root: sb.root_display.clone(),
        }),
        Err(Errno(e)) => Err(Error::Io {
            prog: prog.into(),
            source: std::io::Error::from_raw_os_error(e),
        }),
    }
}

/// Load `path` (an absolute guest path) with `argv`, following `#!` lines.
pub fn load_program(
    sb: &Sandbox,
    mm: &mut Mm,
    mut path: Vec<u8>,
    mut argv: Vec<Vec<u8>>,
) -> Result<Program, Error> {
    for _ in 0..5 {
        let prog = String::from_utf8_lossy(&path).into_owned();
        let fd = open_exec(sb, &path, &prog)?;
        let head = pread(&fd, 0, 256).map_err(io(&prog))?;
        // SAFETY: fstat on our descriptor.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe { libc::fstat(fd.as_raw_fd(), &mut st) };
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(Error::Io {
                prog,
                source: std::io::Error::from_raw_os_error(libc::EISDIR),
            });
        }
        if let Some(rest) = head.strip_prefix(b"#!") {
            let line = rest.split(|&b| b == b'\n').next().unwrap_or(&[]);
            let line: Vec<u8> = line.to_vec();
            let mut it = line
                .splitn(2, |&b| b == b' ' || b == b'\t')
                .map(|s| s.trim_ascii().to_vec())
                .filter(|s| !s.is_empty());
            let Some(interp) = it.next() else {
                return Err(Error::NotElf { prog });
            };
            let mut new_argv = vec![interp.clone()];
            new_argv.extend(it);
            new_argv.push(path.clone());
            new_argv.extend(argv.into_iter().skip(1));
            argv = new_argv;
            path = sb.abs(libc::AT_FDCWD as i64, &interp).unwrap_or(interp);
            continue;
        }
        let (main, interp_path) = load_elf(mm, &fd, &prog, Some(mm::PIE_BASE))?;
        let interp = match interp_path {
            None => None,
            Some(ip) => {
                let ipn = String::from_utf8_lossy(&ip).into_owned();
                let ifd = match open_exec(sb, &ip, &ipn) {
                    Err(Error::NotFound { .. }) => {
                        return Err(Error::InterpMissing {
                            prog,
                            interp: ipn,
                            root: sb.root_display.clone(),
                        })
                    }
                    Err(Error::Io { source, .. }) => {
                        return Err(Error::BadElf {
                            prog,
                            why: format!("its interpreter {ipn} cannot be read: {source}"),
                        })
                    }
                    r => r?,
                };
                if !is_regular(&ifd) {
                    return Err(Error::BadElf {
                        prog,
                        why: format!("its interpreter {ipn} is not a regular file"),
                    });
                }
                Some(load_elf(mm, &ifd, &ipn, None)?.0)
            }
        };
        return Ok(Program {
            main,
            interp,
            path,
            argv,
        });
    }
    Err(Error::Io {
        prog: String::from_utf8_lossy(&path).into_owned(),
        source: std::io::Error::from_raw_os_error(libc::ELOOP),
    })
}

/// AT_* keys.
mod at {
    pub const NULL: u64 = 0;
    pub const PHDR: u64 = 3;
    pub const PHENT: u64 = 4;
    pub const PHNUM: u64 = 5;
    pub const PAGESZ: u64 = 6;
    pub const BASE: u64 = 7;
    pub const FLAGS: u64 = 8;
    pub const ENTRY: u64 = 9;
    pub const UID: u64 = 11;
    pub const EUID: u64 = 12;
    pub const GID: u64 = 13;
    pub const EGID: u64 = 14;
    pub const HWCAP: u64 = 16;
    pub const CLKTCK: u64 = 17;
    pub const SECURE: u64 = 23;
    pub const RANDOM: u64 = 25;
    pub const EXECFN: u64 = 31;
    pub const MINSIGSTKSZ: u64 = 51;
}

/// AT_HWCAP: exactly the single-letter extensions the hart implements (I, M, A, F, D, C).
pub const HWCAP: u64 = {
    let mut v = 0u64;
    let letters = *b"IMAFDC";
    let mut i = 0;
    while i < letters.len() {
        v |= 1 << (letters[i] - b'A');
        i += 1;
    }
    v
};

/// Map the stack and write argc/argv/envp/auxv the way Linux lays them out; returns the initial sp.
pub fn build_stack(mm: &mut Mm, prog: &Program, envp: &[Vec<u8>]) -> Result<u64, Errno> {
    let top = mm::STACK_TOP;
    mm.map_anon(
        top - mm::STACK_SIZE,
        mm::STACK_SIZE,
        PROT_READ | PROT_WRITE,
        false,
    )?;
    let base = mm.base();
    let mut sp = top;
    let mut push = |bytes: &[u8]| -> u64 {
        sp -= bytes.len() as u64;
        // SAFETY: sp stays inside the freshly mapped stack (argument sizes are bounded below).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.ptr(sp), bytes.len()) };
        sp
    };
    let total: usize = prog
        .argv
        .iter()
        .chain(envp)
        .map(|s| s.len() + 1)
        .sum::<usize>()
        + prog.path.len();
    if total as u64 > mm::STACK_SIZE / 4 {
        return Err(Errno(libc::E2BIG));
    }
    push(&[0u8; 8]);
    let execfn = push(&[&prog.path[..], b"\0"].concat());
    let mut random = [0u8; 16];
    // SAFETY: getrandom fills the 16-byte buffer.
    unsafe { libc::getrandom(random.as_mut_ptr() as *mut libc::c_void, 16, 0) };
    let mut strings = |list: &[Vec<u8>]| -> Vec<u64> {
        list.iter()
            .map(|s| push(&[&s[..], b"\0"].concat()))
            .collect()
    };
    let envs = strings(envp);
    let args = strings(&prog.argv);
    sp &= !15;
    sp -= 16;
    let rand_addr = sp;
    // SAFETY: inside the stack mapping.
    unsafe { std::ptr::copy_nonoverlapping(random.as_ptr(), base.ptr(sp), 16) };
    // SAFETY: getuid and friends cannot fail.
    let (uid, euid, gid, egid) = unsafe {
        (
            libc::getuid(),
            libc::geteuid(),
            libc::getgid(),
            libc::getegid(),
        )
    };
    let auxv: Vec<(u64, u64)> = vec![
        (at::PHDR, prog.main.phdr),
        (at::PHENT, 56),
        (at::PHNUM, prog.main.phnum),
        (at::PAGESZ, PAGE),
        (at::BASE, prog.interp.map_or(0, |i| i.bias)),
        (at::FLAGS, 0),
        (at::ENTRY, prog.main.entry),
        (at::UID, uid as u64),
        (at::EUID, euid as u64),
        (at::GID, gid as u64),
        (at::EGID, egid as u64),
        (at::SECURE, 0),
        (at::RANDOM, rand_addr),
        (at::HWCAP, HWCAP),
        (at::CLKTCK, 100),
        (at::EXECFN, execfn),
        (at::MINSIGSTKSZ, crate::signal::FRAME_SIZE),
        (at::NULL, 0),
    ];
    let words = 1 + args.len() + 1 + envs.len() + 1 + auxv.len() * 2;
    sp -= words as u64 * 8;
    sp &= !15;
    let mut w: Vec<u64> = Vec::with_capacity(words);
    w.push(args.len() as u64);
    w.extend(&args);
    w.push(0);
    w.extend(&envs);
    w.push(0);
    for (k, v) in auxv {
        w.push(k);
        w.push(v);
    }
    for (i, v) in w.iter().enumerate() {
        // SAFETY: inside the stack mapping (sp was lowered by the table's size).
        unsafe { (base.ptr(sp + i as u64 * 8) as *mut u64).write_unaligned(*v) };
    }
    Ok(sp)
}
