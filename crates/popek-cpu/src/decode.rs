//! RV64GC instruction decoder.
//!
//! Decoding happens once per instruction: the interpreter caches the [`Insn`] produced here, and the
//! JIT will reuse the same decoder. Compressed (RVC) instructions expand to the same operations as
//! their 32-bit equivalents, so the executor never sees a "C" form.

/// Every operation the hart implements. `Illegal` carries nothing: the raw bits are kept in
/// [`Insn::imm`] so the trap can report them in `mtval`.
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// A decode-cache slot that has not been decoded yet; [`decode`] never returns it.
    Undecoded,
    Illegal,
    // RV64I
    Lui,
    Auipc,
    Jal,
    Jalr,
    Beq,
    Bne,
    Blt,
    Bge,
    Bltu,
    Bgeu,
    Lb,
    Lh,
    Lw,
    Ld,
    Lbu,
    Lhu,
    Lwu,
    Sb,
    Sh,
    Sw,
    Sd,
    Addi,
    Slti,
    Sltiu,
    Xori,
    Ori,
    Andi,
    Slli,
    Srli,
    Srai,
    Add,
    Sub,
    Sll,
    Slt,
    Sltu,
    Xor,
    Srl,
    Sra,
    Or,
    And,
    Addiw,
    Slliw,
    Srliw,
    Sraiw,
    Addw,
    Subw,
    Sllw,
    Srlw,
    Sraw,
    Fence,
    FenceI,
    Ecall,
    Ebreak,
    // Zicsr: imm = CSR number; for the *i forms rs1 holds the 5-bit immediate.
    Csrrw,
    Csrrs,
    Csrrc,
    Csrrwi,
    Csrrsi,
    Csrrci,
    // privileged
    Mret,
    Sret,
    Wfi,
    SfenceVma,
    // M
    Mul,
    Mulh,
    Mulhsu,
    Mulhu,
    Div,
    Divu,
    Rem,
    Remu,
    Mulw,
    Divw,
    Divuw,
    Remw,
    Remuw,
    // A (aq/rl are irrelevant to a sequentially consistent interpreter)
    LrW,
    ScW,
    AmoswapW,
    AmoaddW,
    AmoxorW,
    AmoandW,
    AmoorW,
    AmominW,
    AmomaxW,
    AmominuW,
    AmomaxuW,
    LrD,
    ScD,
    AmoswapD,
    AmoaddD,
    AmoxorD,
    AmoandD,
    AmoorD,
    AmominD,
    AmomaxD,
    AmominuD,
    AmomaxuD,
    // F and D: `rm` holds the rounding-mode field, `rs3` the third source of fused ops.
    Flw,
    Fsw,
    Fld,
    Fsd,
    FmaddS,
    FmsubS,
    FnmsubS,
    FnmaddS,
    FaddS,
    FsubS,
    FmulS,
    FdivS,
    FsqrtS,
    FsgnjS,
    FsgnjnS,
    FsgnjxS,
    FminS,
    FmaxS,
    FcvtWS,
    FcvtWuS,
    FcvtLS,
    FcvtLuS,
    FmvXW,
    FclassS,
    FeqS,
    FltS,
    FleS,
    FcvtSW,
    FcvtSWu,
    FcvtSL,
    FcvtSLu,
    FmvWX,
    FmaddD,
    FmsubD,
    FnmsubD,
    FnmaddD,
    FaddD,
    FsubD,
    FmulD,
    FdivD,
    FsqrtD,
    FsgnjD,
    FsgnjnD,
    FsgnjxD,
    FminD,
    FmaxD,
    FcvtSD,
    FcvtDS,
    FeqD,
    FltD,
    FleD,
    FclassD,
    FcvtWD,
    FcvtWuD,
    FcvtLD,
    FcvtLuD,
    FmvXD,
    FcvtDW,
    FcvtDWu,
    FcvtDL,
    FcvtDLu,
    FmvDX,
}

/// A decoded instruction in 8 bytes. A decoded page holds one per 2-byte slot of a guest page,
/// so its size decides how many host pages a guest's cold code touches: at 12 bytes (a field
/// each for the rounding mode, third source and length) a restored default guest backed 5.4
/// MiB of decode cache for 870,000 instructions, a page fault for each host page (1,355 of
/// the 2,580 faults of its run). The rarely used fields share bytes: the length with the
/// destination register, the rounding mode and third source of FP operations with the
/// immediate they do not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    /// What to do.
    pub op: Op,
    /// Destination register (bits 0-5: the sink, 32, included), and [`COMPRESSED`] for a
    /// 2-byte instruction.
    rd_len: u8,
    /// First source register (or the 5-bit immediate of `csrr*i`).
    pub rs1: u8,
    /// Second source register.
    pub rs2: u8,
    /// Immediate, sign-extended; CSR number for Zicsr; raw bits for `Illegal`; for FP
    /// operations, which have none, the rounding mode (bits 0-2) and third source (bits 3-7).
    pub imm: i32,
}

/// The bit of `Insn::rd_len` that marks a compressed instruction.
const COMPRESSED: u8 = 0x80;

/// The bits of `Insn::rd_len` that hold the destination register.
const RD_BITS: u8 = 0x3f;

impl Insn {
    fn new(op: Op, rd: u32, rs1: u32, rs2: u32, imm: i32) -> Insn {
        Insn {
            op,
            rd_len: rd as u8,
            rs1: rs1 as u8,
            rs2: rs2 as u8,
            imm,
        }
    }

    /// A slot that holds no instruction yet (decode caches start with these). All its bytes
    /// are zero, so freshly mapped memory is a page of them.
    pub const fn undecoded() -> Insn {
        Insn {
            op: Op::Undecoded,
            rd_len: 0,
            rs1: 0,
            rs2: 0,
            imm: 0,
        }
    }

    /// An illegal instruction, remembering its bits for `mtval`.
    pub fn illegal(bits: u32, len: u8) -> Insn {
        let i = Insn::new(Op::Illegal, 0, 0, 0, bits as i32);
        if len == 2 {
            i.compressed()
        } else {
            i
        }
    }

    /// Destination register (integer or FP depending on `op`).
    #[inline(always)]
    pub fn rd(&self) -> u8 {
        self.rd_len & RD_BITS
    }

    /// Redirect the destination register.
    #[inline]
    pub fn set_rd(&mut self, rd: u8) {
        self.rd_len = (self.rd_len & COMPRESSED) | rd;
    }

    /// Instruction length in bytes: 2 (compressed) or 4.
    #[inline(always)]
    pub fn byte_len(&self) -> u8 {
        // The register bits are below 64: shifted out, leaving 2 for a compressed one.
        4 - (self.rd_len >> 6)
    }

    /// Rounding-mode field of FP instructions.
    #[inline(always)]
    pub fn rm(&self) -> u8 {
        self.imm as u8 & 7
    }

    /// Third source register of fused multiply-add.
    #[inline(always)]
    pub fn rs3(&self) -> u8 {
        (self.imm >> 3) as u8 & 31
    }

    /// The number of the CSR a Zicsr instruction accesses, or `None` for any other: what the
    /// engines ask to tell which CSR accesses may stay inside translated code.
    #[inline]
    pub fn csr(&self) -> Option<u16> {
        use Op::*;
        matches!(self.op, Csrrw | Csrrs | Csrrc | Csrrwi | Csrrsi | Csrrci)
            .then_some(self.imm as u16 & 0xfff)
    }

    /// Set the rounding mode and third source of an FP operation (built with immediate 0).
    fn set_fp_fields(&mut self, rm: u32, rs3: u32) {
        debug_assert_eq!(self.imm, 0, "FP operations have no immediate");
        self.imm = (rm & 7 | (rs3 & 31) << 3) as i32;
    }

    fn compressed(mut self) -> Insn {
        self.rd_len |= COMPRESSED;
        self
    }
}

/// Length in bytes of the instruction whose low 16 bits are `lo`.
#[inline]
pub fn insn_len(lo: u16) -> u8 {
    if lo & 3 == 3 {
        4
    } else {
        2
    }
}

/// The bits of the instruction at offset `off` of the 4 KiB page of guest RAM at `page` (the
/// low 16 for a compressed one), or `None` for a 4-byte instruction straddling the page's end
/// (whose second half may be mapped anywhere).
///
/// # Safety
/// `page` must point at 4096 readable bytes and `off` < 4096.
#[inline]
pub unsafe fn raw_in_page(page: *const u8, off: usize) -> Option<u32> {
    // SAFETY: per the contract, 2 bytes at `off` (< 4096, and instructions are 2-aligned)
    // are in the page; 4 only when `off + 4 <= 4096`.
    unsafe {
        let lo = (page.add(off) as *const u16).read_unaligned();
        if insn_len(lo) == 2 {
            Some(lo as u32)
        } else if off + 4 <= 4096 {
            Some((page.add(off) as *const u32).read_unaligned())
        } else {
            None
        }
    }
}

#[inline]
fn bits(x: u32, hi: u32, lo: u32) -> u32 {
    (x >> lo) & ((1 << (hi - lo + 1)) - 1)
}

#[inline]
fn sext(x: u32, width: u32) -> i32 {
    let s = 32 - width;
    ((x << s) as i32) >> s
}

/// Decode a 32-bit or 16-bit instruction (`raw` holds the parcel(s); the low two bits tell which).
pub fn decode(raw: u32) -> Insn {
    if raw & 3 != 3 {
        return decode_compressed(raw as u16);
    }
    decode32(raw)
}

fn decode32(i: u32) -> Insn {
    use Op::*;
    let rd = bits(i, 11, 7);
    let rs1 = bits(i, 19, 15);
    let rs2 = bits(i, 24, 20);
    let f3 = bits(i, 14, 12);
    let f7 = bits(i, 31, 25);
    let imm_i = (i as i32) >> 20;
    let imm_s = (((i as i32) >> 25) << 5) | bits(i, 11, 7) as i32;
    let imm_b = sext(
        (bits(i, 31, 31) << 12)
            | (bits(i, 7, 7) << 11)
            | (bits(i, 30, 25) << 5)
            | (bits(i, 11, 8) << 1),
        13,
    );
    let imm_u = (i & 0xffff_f000) as i32;
    let imm_j = sext(
        (bits(i, 31, 31) << 20)
            | (bits(i, 19, 12) << 12)
            | (bits(i, 20, 20) << 11)
            | (bits(i, 30, 21) << 1),
        21,
    );
    let ill = Insn::illegal(i, 4);
    let iimm = |op| Insn::new(op, rd, rs1, 0, imm_i);
    match i & 0x7f {
        0x37 => Insn::new(Lui, rd, 0, 0, imm_u),
        0x17 => Insn::new(Auipc, rd, 0, 0, imm_u),
        0x6f => Insn::new(Jal, rd, 0, 0, imm_j),
        0x67 if f3 == 0 => iimm(Jalr),
        0x63 => {
            let op = match f3 {
                0 => Beq,
                1 => Bne,
                4 => Blt,
                5 => Bge,
                6 => Bltu,
                7 => Bgeu,
                _ => return ill,
            };
            Insn::new(op, 0, rs1, rs2, imm_b)
        }
        0x03 => {
            let op = match f3 {
                0 => Lb,
                1 => Lh,
                2 => Lw,
                3 => Ld,
                4 => Lbu,
                5 => Lhu,
                6 => Lwu,
                _ => return ill,
            };
            iimm(op)
        }
        0x23 => {
            let op = match f3 {
                0 => Sb,
                1 => Sh,
                2 => Sw,
                3 => Sd,
                _ => return ill,
            };
            Insn::new(op, 0, rs1, rs2, imm_s)
        }
        0x13 => match f3 {
            0 => iimm(Addi),
            2 => iimm(Slti),
            3 => iimm(Sltiu),
            4 => iimm(Xori),
            6 => iimm(Ori),
            7 => iimm(Andi),
            1 if bits(i, 31, 26) == 0 => Insn::new(Slli, rd, rs1, 0, bits(i, 25, 20) as i32),
            5 if bits(i, 31, 26) == 0 => Insn::new(Srli, rd, rs1, 0, bits(i, 25, 20) as i32),
            5 if bits(i, 31, 26) == 0x10 => Insn::new(Srai, rd, rs1, 0, bits(i, 25, 20) as i32),
            _ => ill,
        },
        0x1b => match (f3, f7) {
            (0, _) => iimm(Addiw),
            (1, 0) => Insn::new(Slliw, rd, rs1, 0, rs2 as i32),
            (5, 0) => Insn::new(Srliw, rd, rs1, 0, rs2 as i32),
            (5, 0x20) => Insn::new(Sraiw, rd, rs1, 0, rs2 as i32),
            _ => ill,
        },
        0x33 | 0x3b => decode_op(i, rd, rs1, rs2, f3, f7),
        0x0f => match f3 {
            0 => Insn::new(Fence, 0, 0, 0, 0),
            1 => Insn::new(FenceI, 0, 0, 0, 0),
            _ => ill,
        },
        0x73 => decode_system(i, rd, rs1, rs2, f3, f7),
        0x2f => decode_amo(i, rd, rs1, rs2, f3),
        0x07 => match f3 {
            2 => iimm(Flw),
            3 => iimm(Fld),
            _ => ill,
        },
        0x27 => match f3 {
            2 => Insn::new(Fsw, 0, rs1, rs2, imm_s),
            3 => Insn::new(Fsd, 0, rs1, rs2, imm_s),
            _ => ill,
        },
        0x43 | 0x47 | 0x4b | 0x4f => decode_fma(i, rd, rs1, rs2, f3),
        0x53 => decode_fp(i, rd, rs1, rs2, f3, f7),
        _ => ill,
    }
}

/// OP and OP-32: register-register integer operations (RV64I and M), picked by funct7 and
/// funct3.
fn decode_op(i: u32, rd: u32, rs1: u32, rs2: u32, f3: u32, f7: u32) -> Insn {
    use Op::*;
    let ill = Insn::illegal(i, 4);
    let op = if i & 0x7f == 0x33 {
        match (f7, f3) {
            (0, 0) => Add,
            (0x20, 0) => Sub,
            (0, 1) => Sll,
            (0, 2) => Slt,
            (0, 3) => Sltu,
            (0, 4) => Xor,
            (0, 5) => Srl,
            (0x20, 5) => Sra,
            (0, 6) => Or,
            (0, 7) => And,
            (1, 0) => Mul,
            (1, 1) => Mulh,
            (1, 2) => Mulhsu,
            (1, 3) => Mulhu,
            (1, 4) => Div,
            (1, 5) => Divu,
            (1, 6) => Rem,
            (1, 7) => Remu,
            _ => return ill,
        }
    } else {
        match (f7, f3) {
            (0, 0) => Addw,
            (0x20, 0) => Subw,
            (0, 1) => Sllw,
            (0, 5) => Srlw,
            (0x20, 5) => Sraw,
            (1, 0) => Mulw,
            (1, 4) => Divw,
            (1, 5) => Divuw,
            (1, 6) => Remw,
            (1, 7) => Remuw,
            _ => return ill,
        }
    };
    Insn::new(op, rd, rs1, rs2, 0)
}

/// The fused multiply-adds (MADD, MSUB, NMSUB, NMADD), single or double by fmt.
fn decode_fma(i: u32, rd: u32, rs1: u32, rs2: u32, f3: u32) -> Insn {
    use Op::*;
    let ill = Insn::illegal(i, 4);
    let fmt = bits(i, 26, 25);
    let op = match (i & 0x7f, fmt) {
        (0x43, 0) => FmaddS,
        (0x47, 0) => FmsubS,
        (0x4b, 0) => FnmsubS,
        (0x4f, 0) => FnmaddS,
        (0x43, 1) => FmaddD,
        (0x47, 1) => FmsubD,
        (0x4b, 1) => FnmsubD,
        (0x4f, 1) => FnmaddD,
        _ => return ill,
    };
    let mut insn = Insn::new(op, rd, rs1, rs2, 0);
    insn.set_fp_fields(f3, bits(i, 31, 27));
    insn
}

/// SYSTEM: `ecall`, `ebreak`, the privileged returns, `wfi`, `sfence.vma` and the CSR
/// instructions.
fn decode_system(i: u32, rd: u32, rs1: u32, rs2: u32, f3: u32, f7: u32) -> Insn {
    use Op::*;
    let ill = Insn::illegal(i, 4);
    let csr = bits(i, 31, 20) as i32;
    match f3 {
        0 => {
            if rd != 0 {
                return ill;
            }
            match (f7, rs2, rs1) {
                (0, 0, 0) => Insn::new(Ecall, 0, 0, 0, 0),
                (0, 1, 0) => Insn::new(Ebreak, 0, 0, 0, 0),
                (0x18, 2, 0) => Insn::new(Mret, 0, 0, 0, 0),
                (0x08, 2, 0) => Insn::new(Sret, 0, 0, 0, 0),
                (0x08, 5, 0) => Insn::new(Wfi, 0, 0, 0, 0),
                (0x09, _, _) => Insn::new(SfenceVma, 0, rs1, rs2, 0),
                _ => ill,
            }
        }
        1 => Insn::new(Csrrw, rd, rs1, 0, csr),
        2 => Insn::new(Csrrs, rd, rs1, 0, csr),
        3 => Insn::new(Csrrc, rd, rs1, 0, csr),
        5 => Insn::new(Csrrwi, rd, rs1, 0, csr),
        6 => Insn::new(Csrrsi, rd, rs1, 0, csr),
        7 => Insn::new(Csrrci, rd, rs1, 0, csr),
        _ => ill,
    }
}

/// AMO: LR/SC and the atomic memory operations, word or doubleword.
fn decode_amo(i: u32, rd: u32, rs1: u32, rs2: u32, f3: u32) -> Insn {
    use Op::*;
    let f5 = bits(i, 31, 27);
    let op = match (f3, f5) {
        (2, 0x02) if rs2 == 0 => LrW,
        (2, 0x03) => ScW,
        (2, 0x01) => AmoswapW,
        (2, 0x00) => AmoaddW,
        (2, 0x04) => AmoxorW,
        (2, 0x0c) => AmoandW,
        (2, 0x08) => AmoorW,
        (2, 0x10) => AmominW,
        (2, 0x14) => AmomaxW,
        (2, 0x18) => AmominuW,
        (2, 0x1c) => AmomaxuW,
        (3, 0x02) if rs2 == 0 => LrD,
        (3, 0x03) => ScD,
        (3, 0x01) => AmoswapD,
        (3, 0x00) => AmoaddD,
        (3, 0x04) => AmoxorD,
        (3, 0x0c) => AmoandD,
        (3, 0x08) => AmoorD,
        (3, 0x10) => AmominD,
        (3, 0x14) => AmomaxD,
        (3, 0x18) => AmominuD,
        (3, 0x1c) => AmomaxuD,
        _ => return Insn::illegal(i, 4),
    };
    Insn::new(op, rd, rs1, rs2, 0)
}

/// OP-FP: the F and D extensions' arithmetic, comparisons, conversions and moves.
fn decode_fp(i: u32, rd: u32, rs1: u32, rs2: u32, f3: u32, f7: u32) -> Insn {
    use Op::*;
    let op = match f7 {
        0x00 => FaddS,
        0x04 => FsubS,
        0x08 => FmulS,
        0x0c => FdivS,
        0x01 => FaddD,
        0x05 => FsubD,
        0x09 => FmulD,
        0x0d => FdivD,
        0x2c if rs2 == 0 => FsqrtS,
        0x2d if rs2 == 0 => FsqrtD,
        0x10 => match f3 {
            0 => FsgnjS,
            1 => FsgnjnS,
            2 => FsgnjxS,
            _ => return Insn::illegal(i, 4),
        },
        0x11 => match f3 {
            0 => FsgnjD,
            1 => FsgnjnD,
            2 => FsgnjxD,
            _ => return Insn::illegal(i, 4),
        },
        0x14 => match f3 {
            0 => FminS,
            1 => FmaxS,
            _ => return Insn::illegal(i, 4),
        },
        0x15 => match f3 {
            0 => FminD,
            1 => FmaxD,
            _ => return Insn::illegal(i, 4),
        },
        0x20 if rs2 == 1 => FcvtSD,
        0x21 if rs2 == 0 => FcvtDS,
        0x50 => match f3 {
            0 => FleS,
            1 => FltS,
            2 => FeqS,
            _ => return Insn::illegal(i, 4),
        },
        0x51 => match f3 {
            0 => FleD,
            1 => FltD,
            2 => FeqD,
            _ => return Insn::illegal(i, 4),
        },
        0x60 => match rs2 {
            0 => FcvtWS,
            1 => FcvtWuS,
            2 => FcvtLS,
            3 => FcvtLuS,
            _ => return Insn::illegal(i, 4),
        },
        0x61 => match rs2 {
            0 => FcvtWD,
            1 => FcvtWuD,
            2 => FcvtLD,
            3 => FcvtLuD,
            _ => return Insn::illegal(i, 4),
        },
        0x68 => match rs2 {
            0 => FcvtSW,
            1 => FcvtSWu,
            2 => FcvtSL,
            3 => FcvtSLu,
            _ => return Insn::illegal(i, 4),
        },
        0x69 => match rs2 {
            0 => FcvtDW,
            1 => FcvtDWu,
            2 => FcvtDL,
            3 => FcvtDLu,
            _ => return Insn::illegal(i, 4),
        },
        0x70 if rs2 == 0 && f3 == 0 => FmvXW,
        0x70 if rs2 == 0 && f3 == 1 => FclassS,
        0x71 if rs2 == 0 && f3 == 0 => FmvXD,
        0x71 if rs2 == 0 && f3 == 1 => FclassD,
        0x78 if rs2 == 0 && f3 == 0 => FmvWX,
        0x79 if rs2 == 0 && f3 == 0 => FmvDX,
        _ => return Insn::illegal(i, 4),
    };
    let mut insn = Insn::new(op, rd, rs1, rs2, 0);
    insn.set_fp_fields(f3, 0);
    insn
}

/// Expand a 16-bit RVC instruction to its 32-bit equivalent operation.
pub fn decode_compressed(c: u16) -> Insn {
    let f = CFields::of(c);
    match c & 3 {
        0 => compressed_q0(f),
        1 => compressed_q1(f),
        2 => compressed_q2(f),
        _ => Insn::illegal(f.c, 2),
    }
}

/// A compressed instruction's bits and the fields its formats share.
#[derive(Clone, Copy)]
struct CFields {
    /// The instruction.
    c: u32,
    /// x8..x15 in bits 4:2 (CIW, CL, CS, CA formats).
    rdp: u32,
    /// x8..x15 in bits 9:7 (CL, CS, CA, CB formats).
    rs1p: u32,
    /// A full register number in bits 11:7 (CR, CI formats).
    rd: u32,
    /// A full register number in bits 6:2 (CR, CSS formats).
    rs2: u32,
    /// funct3, bits 15:13.
    f3: u32,
}

impl CFields {
    #[inline]
    fn of(c: u16) -> CFields {
        let c = c as u32;
        CFields {
            c,
            rdp: bits(c, 4, 2) + 8,
            rs1p: bits(c, 9, 7) + 8,
            rd: bits(c, 11, 7),
            rs2: bits(c, 6, 2),
            f3: bits(c, 15, 13),
        }
    }
}

/// A compressed instruction's expansion, marked compressed (2 bytes long).
#[inline]
fn mk(op: Op, rd: u32, rs1: u32, rs2: u32, imm: i32) -> Insn {
    Insn::new(op, rd, rs1, rs2, imm).compressed()
}

/// Quadrant 0: loads and stores through x8-x15, and `c.addi4spn`.
fn compressed_q0(f: CFields) -> Insn {
    use Op::*;
    let CFields {
        c, rdp, rs1p, f3, ..
    } = f;
    let ill = Insn::illegal(c, 2);
    match f3 {
        0 => {
            // c.addi4spn
            let imm = (bits(c, 10, 7) << 6)
                | (bits(c, 12, 11) << 4)
                | (bits(c, 5, 5) << 3)
                | (bits(c, 6, 6) << 2);
            if imm == 0 {
                return ill;
            }
            mk(Addi, rdp, 2, 0, imm as i32)
        }
        1 => mk(
            Fld,
            rdp,
            rs1p,
            0,
            ((bits(c, 12, 10) << 3) | (bits(c, 6, 5) << 6)) as i32,
        ),
        2 => mk(
            Lw,
            rdp,
            rs1p,
            0,
            ((bits(c, 12, 10) << 3) | (bits(c, 6, 6) << 2) | (bits(c, 5, 5) << 6)) as i32,
        ),
        3 => mk(
            Ld,
            rdp,
            rs1p,
            0,
            ((bits(c, 12, 10) << 3) | (bits(c, 6, 5) << 6)) as i32,
        ),
        5 => mk(
            Fsd,
            0,
            rs1p,
            rdp,
            ((bits(c, 12, 10) << 3) | (bits(c, 6, 5) << 6)) as i32,
        ),
        6 => mk(
            Sw,
            0,
            rs1p,
            rdp,
            ((bits(c, 12, 10) << 3) | (bits(c, 6, 6) << 2) | (bits(c, 5, 5) << 6)) as i32,
        ),
        7 => mk(
            Sd,
            0,
            rs1p,
            rdp,
            ((bits(c, 12, 10) << 3) | (bits(c, 6, 5) << 6)) as i32,
        ),
        _ => ill,
    }
}

/// Quadrant 1: immediates, ALU operations on x8-x15, jumps and branches.
fn compressed_q1(f: CFields) -> Insn {
    use Op::*;
    let CFields {
        c,
        rdp,
        rs1p,
        rd,
        f3,
        ..
    } = f;
    let ill = Insn::illegal(c, 2);
    match f3 {
        0 => {
            // c.addi (c.nop when rd = 0)
            let imm = sext((bits(c, 12, 12) << 5) | bits(c, 6, 2), 6);
            mk(Addi, rd, rd, 0, imm)
        }
        1 => {
            // c.addiw
            if rd == 0 {
                return ill;
            }
            let imm = sext((bits(c, 12, 12) << 5) | bits(c, 6, 2), 6);
            mk(Addiw, rd, rd, 0, imm)
        }
        2 => {
            let imm = sext((bits(c, 12, 12) << 5) | bits(c, 6, 2), 6);
            mk(Addi, rd, 0, 0, imm) // c.li
        }
        3 => {
            if rd == 2 {
                // c.addi16sp
                let imm = sext(
                    (bits(c, 12, 12) << 9)
                        | (bits(c, 4, 3) << 7)
                        | (bits(c, 5, 5) << 6)
                        | (bits(c, 2, 2) << 5)
                        | (bits(c, 6, 6) << 4),
                    10,
                );
                if imm == 0 {
                    return ill;
                }
                mk(Addi, 2, 2, 0, imm)
            } else {
                let imm = sext((bits(c, 12, 12) << 17) | (bits(c, 6, 2) << 12), 18);
                if imm == 0 {
                    return ill;
                }
                mk(Lui, rd, 0, 0, imm)
            }
        }
        4 => {
            let shamt = ((bits(c, 12, 12) << 5) | bits(c, 6, 2)) as i32;
            match bits(c, 11, 10) {
                0 => mk(Srli, rs1p, rs1p, 0, shamt),
                1 => mk(Srai, rs1p, rs1p, 0, shamt),
                2 => mk(
                    Andi,
                    rs1p,
                    rs1p,
                    0,
                    sext((bits(c, 12, 12) << 5) | bits(c, 6, 2), 6),
                ),
                _ => {
                    let op = match (bits(c, 12, 12), bits(c, 6, 5)) {
                        (0, 0) => Sub,
                        (0, 1) => Xor,
                        (0, 2) => Or,
                        (0, 3) => And,
                        (1, 0) => Subw,
                        (1, 1) => Addw,
                        _ => return ill,
                    };
                    mk(op, rs1p, rs1p, rdp, 0)
                }
            }
        }
        5 => {
            let imm = sext(
                (bits(c, 12, 12) << 11)
                    | (bits(c, 8, 8) << 10)
                    | (bits(c, 10, 9) << 8)
                    | (bits(c, 6, 6) << 7)
                    | (bits(c, 7, 7) << 6)
                    | (bits(c, 2, 2) << 5)
                    | (bits(c, 11, 11) << 4)
                    | (bits(c, 5, 3) << 1),
                12,
            );
            mk(Jal, 0, 0, 0, imm)
        }
        6 | 7 => {
            let imm = sext(
                (bits(c, 12, 12) << 8)
                    | (bits(c, 6, 5) << 6)
                    | (bits(c, 2, 2) << 5)
                    | (bits(c, 11, 10) << 3)
                    | (bits(c, 4, 3) << 1),
                9,
            );
            mk(if f3 == 6 { Beq } else { Bne }, 0, rs1p, 0, imm)
        }
        _ => ill,
    }
}

/// Quadrant 2: shifts, stack-relative loads and stores, and `c.jr`/`c.mv`/`c.jalr`/`c.add`/`c.ebreak`.
fn compressed_q2(f: CFields) -> Insn {
    use Op::*;
    let CFields { c, rd, rs2, f3, .. } = f;
    let ill = Insn::illegal(c, 2);
    match f3 {
        0 => {
            let shamt = ((bits(c, 12, 12) << 5) | bits(c, 6, 2)) as i32;
            mk(Slli, rd, rd, 0, shamt)
        }
        1 => mk(
            Fld,
            rd,
            2,
            0,
            ((bits(c, 12, 12) << 5) | (bits(c, 6, 5) << 3) | (bits(c, 4, 2) << 6)) as i32,
        ),
        2 => {
            if rd == 0 {
                return ill;
            }
            mk(
                Lw,
                rd,
                2,
                0,
                ((bits(c, 12, 12) << 5) | (bits(c, 6, 4) << 2) | (bits(c, 3, 2) << 6)) as i32,
            )
        }
        3 => {
            if rd == 0 {
                return ill;
            }
            mk(
                Ld,
                rd,
                2,
                0,
                ((bits(c, 12, 12) << 5) | (bits(c, 6, 5) << 3) | (bits(c, 4, 2) << 6)) as i32,
            )
        }
        4 => match (bits(c, 12, 12), rd, rs2) {
            (0, 0, 0) => ill,
            (0, _, 0) => mk(Jalr, 0, rd, 0, 0),   // c.jr
            (0, _, _) => mk(Add, rd, 0, rs2, 0),  // c.mv
            (1, 0, 0) => mk(Ebreak, 0, 0, 0, 0),  // c.ebreak
            (1, _, 0) => mk(Jalr, 1, rd, 0, 0),   // c.jalr
            (_, _, _) => mk(Add, rd, rd, rs2, 0), // c.add
        },
        5 => mk(
            Fsd,
            0,
            2,
            rs2,
            ((bits(c, 12, 10) << 3) | (bits(c, 9, 7) << 6)) as i32,
        ),
        6 => mk(
            Sw,
            0,
            2,
            rs2,
            ((bits(c, 12, 9) << 2) | (bits(c, 8, 7) << 6)) as i32,
        ),
        7 => mk(
            Sd,
            0,
            2,
            rs2,
            ((bits(c, 12, 10) << 3) | (bits(c, 9, 7) << 6)) as i32,
        ),
        _ => ill,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decoded_instruction_is_eight_bytes_and_keeps_its_packed_fields() {
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        // fmadd.d f1, f2, f3, f31, rmm (rm 4)
        let i = decode(0xfa31_40c3 | 1 << 25);
        assert_eq!(
            (i.op, i.rd(), i.rs1, i.rs2, i.rs3(), i.rm(), i.byte_len()),
            (Op::FmaddD, 1, 2, 3, 31, 4, 4)
        );
        // fadd.s f31, f30, f29, dyn (rm 7)
        let i = decode(0x01df_7fd3);
        assert_eq!(
            (i.op, i.rd(), i.rs1, i.rs2, i.rm()),
            (Op::FaddS, 31, 30, 29, 7)
        );
        // c.addi a0, -1: compressed; redirecting its destination keeps the length.
        let mut i = decode_compressed(0x157d);
        assert_eq!((i.op, i.rd(), i.imm, i.byte_len()), (Op::Addi, 10, -1, 2));
        i.set_rd(32);
        assert_eq!((i.rd(), i.byte_len()), (32, 2));
        let mut i = decode(0xfff5_0513);
        i.set_rd(32);
        assert_eq!((i.rd(), i.byte_len()), (32, 4));
        assert_eq!(Insn::illegal(0x1234, 2).byte_len(), 2);
        assert_eq!(Insn::illegal(0, 4).byte_len(), 4);
    }

    #[test]
    fn decodes_common_forms() {
        // addi a0, a0, -1
        let i = decode(0xfff5_0513);
        assert_eq!(
            (i.op, i.rd(), i.rs1, i.imm, i.byte_len()),
            (Op::Addi, 10, 10, -1, 4)
        );
        // jal ra, -4
        let i = decode(0xffdf_f0ef);
        assert_eq!((i.op, i.rd(), i.imm), (Op::Jal, 1, -4));
        // beq a0, a1, +8
        let i = decode(0x00b5_0463);
        assert_eq!((i.op, i.rs1, i.rs2, i.imm), (Op::Beq, 10, 11, 8));
        // sd ra, 8(sp)
        let i = decode(0x0011_3423);
        assert_eq!((i.op, i.rs1, i.rs2, i.imm), (Op::Sd, 2, 1, 8));
        // csrrs a0, mstatus, zero
        let i = decode(0x3000_2573);
        assert_eq!((i.op, i.rd(), i.imm), (Op::Csrrs, 10, 0x300));
        // fmadd.d fa0, fa1, fa2, fa3, dyn
        let i = decode(0x6ac5_f543);
        assert_eq!(
            (i.op, i.rd(), i.rs1, i.rs2, i.rs3(), i.rm()),
            (Op::FmaddD, 10, 11, 12, 13, 7)
        );
        assert_eq!(decode(0).op, Op::Illegal);
        assert_eq!(decode(0xffff_ffff).op, Op::Illegal);
    }

    #[test]
    fn decodes_compressed_forms() {
        // c.addi sp, -16 = 0x1141
        let i = decode(0x1141);
        assert_eq!(
            (i.op, i.rd(), i.rs1, i.imm, i.byte_len()),
            (Op::Addi, 2, 2, -16, 2)
        );
        // c.sdsp ra, 8(sp) = 0xe406
        let i = decode(0xe406);
        assert_eq!((i.op, i.rs1, i.rs2, i.imm), (Op::Sd, 2, 1, 8));
        // c.ldsp ra, 8(sp) = 0x60a2
        let i = decode(0x60a2);
        assert_eq!((i.op, i.rd(), i.rs1, i.imm), (Op::Ld, 1, 2, 8));
        // c.ret = c.jr ra = 0x8082
        let i = decode(0x8082);
        assert_eq!((i.op, i.rd(), i.rs1, i.imm), (Op::Jalr, 0, 1, 0));
        // c.mv a0, a1 = 0x852e
        let i = decode(0x852e);
        assert_eq!((i.op, i.rd(), i.rs1, i.rs2), (Op::Add, 10, 0, 11));
        // c.j -2 = 0xbffd
        let i = decode(0xbffd);
        assert_eq!((i.op, i.imm), (Op::Jal, -2));
        // c.beqz a0, +0x10 = 0xc901
        let i = decode(0xc901);
        assert_eq!((i.op, i.rs1, i.imm), (Op::Beq, 10, 16));
        // c.lui a0, 0x1 = 0x6505
        let i = decode(0x6505);
        assert_eq!((i.op, i.rd(), i.imm), (Op::Lui, 10, 0x1000));
        // c.ebreak = 0x9002
        assert_eq!(decode(0x9002).op, Op::Ebreak);
        // all zero is defined illegal
        assert_eq!(decode(0x0000).op, Op::Illegal);
    }
}
