//! Lays a [`Program`] out as machine code and writes a static riscv64 ELF executable.

use crate::enc::*;
use crate::gen::{xn, Enc, FixKind, Item, Program};
use crate::layout::*;

/// Signals the fault flavour handles: SIGILL, SIGTRAP, SIGBUS, SIGSEGV.
pub const HANDLED_SIGNALS: [u64; 4] = [4, 5, 7, 11];

/// A laid-out program.
pub struct Image {
    /// Segment contents, loaded at [`BASE`].
    pub segment: Vec<u8>,
    /// The entry point.
    pub entry: u64,
    /// Listing of the body (and fault) instructions: address, encoding, text.
    pub listing: Vec<(u64, Enc, String)>,
}

struct Code {
    bytes: Vec<u8>,
    pc: u64,
}

impl Code {
    fn w(&mut self, w: u32) {
        self.bytes.extend_from_slice(&w.to_le_bytes());
        self.pc += 4;
    }
    fn h(&mut self, h: u16) {
        self.bytes.extend_from_slice(&h.to_le_bytes());
        self.pc += 2;
    }
    fn enc(&mut self, e: Enc) {
        match e {
            Enc::W(w) => self.w(w),
            Enc::H(h) => self.h(h),
        }
    }
    /// Load a 32-bit signed constant.
    fn li(&mut self, rd: u32, v: i64) {
        assert!(v >= i32::MIN as i64 && v <= i32::MAX as i64);
        let hi = ((v + 0x800) >> 12) as i32;
        let lo = (v - ((hi as i64) << 12)) as i32;
        if hi != 0 {
            self.w(u_type(LUI, rd, hi as u32));
            self.w(i_type(OP_IMM_32, rd, 0, rd, lo));
        } else {
            self.w(i_type(OP_IMM, rd, 0, 0, lo));
        }
    }
}

fn gp_off(addr: u64) -> i32 {
    let o = addr as i64 - GP as i64;
    assert!((-2048..2048).contains(&o));
    o as i32
}

fn fix_text(kind: FixKind, target: u64) -> String {
    match kind {
        FixKind::Branch { f3, rs1, rs2 } => {
            let n = ["beq", "bne", "", "", "blt", "bge", "bltu", "bgeu"][f3 as usize];
            format!("{n} {}, {}, {target:#x}", xn(rs1), xn(rs2))
        }
        FixKind::Jal { rd } => format!("jal {}, {target:#x}", xn(rd)),
        FixKind::CJ => format!("c.j {target:#x}"),
        FixKind::CBz { bnez, rs1 } => format!(
            "{} {}, {target:#x}",
            if bnez { "c.bnez" } else { "c.beqz" },
            xn(rs1)
        ),
        FixKind::Jalr { rd, rs1 } => format!("jalr {}, ({}) -> {target:#x}", xn(rd), xn(rs1)),
        FixKind::Addi { rd, rs1 } => format!("addi {}, {} -> {target:#x}", xn(rd), xn(rs1)),
    }
}

fn resolve(kind: FixKind, pc: u64, anchor: u64, target: u64) -> Enc {
    let off = target as i64 - pc as i64;
    let aoff = (target as i64 - anchor as i64) as i32;
    match kind {
        FixKind::Branch { f3, rs1, rs2 } => Enc::W(b_type(f3, rs1, rs2, off as i32)),
        FixKind::Jal { rd } => Enc::W(j_type(rd, off as i32)),
        FixKind::CJ => Enc::H(c_j(off as i32)),
        FixKind::CBz { bnez, rs1 } => Enc::H(c_bz(bnez, rs1, off as i32)),
        FixKind::Jalr { rd, rs1 } => Enc::W(i_type(JALR, rd, 0, rs1, aoff)),
        FixKind::Addi { rd, rs1 } => Enc::W(i_type(OP_IMM, rd, 0, rs1, aoff)),
    }
}

/// Lay out and assemble `p`.
pub fn build(p: &Program) -> Image {
    let faulting = p.fault.is_some();
    let mut c = Code {
        bytes: Vec::new(),
        pc: CODE,
    };

    // ---- prologue
    if faulting {
        for sig in HANDLED_SIGNALS {
            c.li(17, 134); // rt_sigaction
            c.li(10, sig as i64);
            c.li(11, SIGACTION as i64);
            c.li(12, 0);
            c.li(13, 8);
            c.w(ECALL);
        }
    }
    c.li(31, INIT as i64);
    c.w(i_type(LOAD, 5, 3, 31, (INIT_FCSR - INIT) as i32));
    c.w(csr(1, 0, 5, 3)); // fscsr t0
    for i in 0..32 {
        c.w(i_type(
            LOAD_FP,
            i,
            3,
            31,
            (INIT_F - INIT) as i32 + 8 * i as i32,
        ));
    }
    for i in 1..32 {
        c.w(i_type(LOAD, i, 3, 31, 8 * i as i32));
    }

    // ---- optionally jump over zeros so that the body starts just before a page boundary
    if let Some(before) = p.straddle {
        let start = ((c.pc + 4 + 0xfff) & !0xfff) - before;
        let start = if start < c.pc + 4 {
            start + 0x1000
        } else {
            start
        };
        c.w(j_type(0, (start - c.pc) as i32));
        while c.pc < start {
            c.h(0);
        }
    }

    // ---- body: compute addresses of every group first
    let mut group_addr = Vec::with_capacity(p.body.len() + 1);
    let mut a = c.pc;
    for g in &p.body {
        group_addr.push(a);
        a += g.iter().map(|i| i.enc.len()).sum::<u64>();
    }
    let body_end = a;
    group_addr.push(body_end);
    let mut listing = Vec::new();
    let emit = |c: &mut Code, listing: &mut Vec<(u64, Enc, String)>, items: &[Item], gi: usize| {
        let anchor = c.pc;
        for it in items {
            let (enc, text) = match it.fix {
                None => (it.enc, it.text.clone()),
                Some(f) => {
                    let target = group_addr[(gi + 1 + f.skip).min(p.body.len())];
                    (
                        resolve(f.kind, c.pc, anchor, target),
                        fix_text(f.kind, target),
                    )
                }
            };
            listing.push((c.pc, enc, text));
            c.enc(enc);
        }
    };
    for (gi, g) in p.body.iter().enumerate() {
        emit(&mut c, &mut listing, g, gi);
    }
    assert_eq!(c.pc, body_end);
    if let Some(f) = &p.fault {
        emit(&mut c, &mut listing, f, p.body.len());
    }

    // ---- epilogue: dump x1..x31 relative to gp (never written by the body)
    for i in 1..32 {
        c.w(s_type(STORE, 3, 3, i, gp_off(DUMP_X) + 8 * i as i32));
    }
    for i in 0..32 {
        c.w(s_type(STORE_FP, 3, 3, i, gp_off(DUMP_F) + 8 * i as i32));
    }
    c.w(csr(2, 6, 0, 3)); // frcsr t1
    c.li(5, DUMP_MISC as i64);
    c.w(s_type(STORE, 3, 5, 6, 0));
    let write_exit = |c: &mut Code| {
        c.li(17, 64);
        c.li(10, 1);
        c.li(11, OUT as i64);
        c.li(12, OUT_LEN as i64);
        c.w(ECALL);
        c.li(17, 94);
        c.li(10, 0);
        c.w(ECALL);
        c.w(EBREAK); // not reached
    };
    write_exit(&mut c);

    // ---- signal handler (a0 = signo, a1 = siginfo, a2 = ucontext)
    let handler = c.pc;
    if faulting {
        c.w(i_type(OP_IMM, 5, 0, 12, 176)); // t0 = &uc_mcontext
        c.li(7, DUMP_X as i64);
        for i in 1..32 {
            c.w(i_type(LOAD, 6, 3, 5, 8 * i)); // sc_regs[i]
            c.w(s_type(STORE, 3, 7, 6, 8 * i));
        }
        for i in 0..32 {
            c.w(i_type(LOAD, 6, 3, 5, 256 + 8 * i)); // f[i]
            c.w(s_type(STORE, 3, 7, 6, 0x100 + 8 * i));
        }
        c.li(7, DUMP_MISC as i64);
        c.w(i_type(LOAD, 6, 6, 5, 512)); // lwu fcsr
        c.w(s_type(STORE, 3, 7, 6, 0));
        c.w(s_type(STORE, 3, 7, 10, 8)); // signo
        c.w(i_type(LOAD, 6, 3, 11, 16)); // si_addr
        c.w(s_type(STORE, 3, 7, 6, 16));
        c.w(i_type(LOAD, 6, 3, 5, 0)); // sc_regs.pc
        c.w(s_type(STORE, 3, 7, 6, 24));
        write_exit(&mut c);
    }
    assert!(c.pc <= CODE_END, "code too long");

    // ---- segment
    let mut seg = vec![0u8; (END - BASE) as usize];
    let at = |a: u64| (a - BASE) as usize;
    seg[at(CODE)..at(CODE) + c.bytes.len()].copy_from_slice(&c.bytes);
    for i in 0..32 {
        seg[at(INIT) + 8 * i..][..8].copy_from_slice(&p.init_x[i].to_le_bytes());
        seg[at(INIT_F) + 8 * i..][..8].copy_from_slice(&p.init_f[i].to_le_bytes());
    }
    seg[at(INIT_FCSR)..][..8].copy_from_slice(&p.init_fcsr.to_le_bytes());
    seg[at(SIGACTION)..][..8].copy_from_slice(&handler.to_le_bytes());
    seg[at(SIGACTION) + 8..][..8].copy_from_slice(&4u64.to_le_bytes()); // SA_SIGINFO
    seg[at(SCRATCH)..][..p.scratch.len()].copy_from_slice(&p.scratch);
    write_headers(&mut seg, CODE);
    Image {
        segment: seg,
        entry: CODE,
        listing,
    }
}

/// ELF64 header + one PT_LOAD RWX program header at the start of the segment (file offset 0).
fn write_headers(seg: &mut [u8], entry: u64) {
    let mut h = Vec::with_capacity(120);
    h.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    h.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    h.extend_from_slice(&243u16.to_le_bytes()); // EM_RISCV
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&entry.to_le_bytes());
    h.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    h.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    h.extend_from_slice(&5u32.to_le_bytes()); // EF_RISCV_RVC | EF_RISCV_FLOAT_ABI_DOUBLE
    h.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    h.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    h.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    h.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    h.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    h.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
                                              // program header
    h.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    h.extend_from_slice(&7u32.to_le_bytes()); // RWX
    h.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    h.extend_from_slice(&BASE.to_le_bytes()); // p_vaddr
    h.extend_from_slice(&BASE.to_le_bytes()); // p_paddr
    h.extend_from_slice(&(seg.len() as u64).to_le_bytes()); // p_filesz
    h.extend_from_slice(&(seg.len() as u64).to_le_bytes()); // p_memsz
    h.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    assert_eq!(h.len(), 120);
    seg[..120].copy_from_slice(&h);
}

/// Human-readable listing of the body.
pub fn listing_text(img: &Image) -> String {
    let mut s = String::new();
    for (a, e, t) in &img.listing {
        let hex = match e {
            Enc::W(w) => format!("{w:08x}"),
            Enc::H(h) => format!("    {h:04x}"),
        };
        s.push_str(&format!("  {a:#07x}: {hex}  {t}\n"));
    }
    s
}
