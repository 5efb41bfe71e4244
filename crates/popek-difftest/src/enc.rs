//! RISC-V instruction encoders (RV64GC). Plain functions from fields to bits; no validation beyond
//! debug assertions, the generator is responsible for legal field values.

/// Major opcode LOAD (bits 6:0).
pub const LOAD: u32 = 0x03;
/// Major opcode LOAD_FP (bits 6:0).
pub const LOAD_FP: u32 = 0x07;
/// Major opcode MISC_MEM (bits 6:0).
pub const MISC_MEM: u32 = 0x0f;
/// Major opcode OP_IMM (bits 6:0).
pub const OP_IMM: u32 = 0x13;
/// Major opcode AUIPC (bits 6:0).
pub const AUIPC: u32 = 0x17;
/// Major opcode OP_IMM_32 (bits 6:0).
pub const OP_IMM_32: u32 = 0x1b;
/// Major opcode STORE (bits 6:0).
pub const STORE: u32 = 0x23;
/// Major opcode STORE_FP (bits 6:0).
pub const STORE_FP: u32 = 0x27;
/// Major opcode AMO (bits 6:0).
pub const AMO: u32 = 0x2f;
/// Major opcode OP (bits 6:0).
pub const OP: u32 = 0x33;
/// Major opcode LUI (bits 6:0).
pub const LUI: u32 = 0x37;
/// Major opcode OP_32 (bits 6:0).
pub const OP_32: u32 = 0x3b;
/// Major opcode MADD (bits 6:0).
pub const MADD: u32 = 0x43;
/// Major opcode MSUB (bits 6:0).
pub const MSUB: u32 = 0x47;
/// Major opcode NMSUB (bits 6:0).
pub const NMSUB: u32 = 0x4b;
/// Major opcode NMADD (bits 6:0).
pub const NMADD: u32 = 0x4f;
/// Major opcode OP_FP (bits 6:0).
pub const OP_FP: u32 = 0x53;
/// Major opcode BRANCH (bits 6:0).
pub const BRANCH: u32 = 0x63;
/// Major opcode JALR (bits 6:0).
pub const JALR: u32 = 0x67;
/// Major opcode JAL (bits 6:0).
pub const JAL: u32 = 0x6f;
/// Major opcode SYSTEM (bits 6:0).
pub const SYSTEM: u32 = 0x73;

fn r5(x: u32) -> u32 {
    debug_assert!(x < 32);
    x & 31
}

/// R-type: register-register operations (OP, OP-32, OP-FP, AMO).
pub fn r_type(op: u32, rd: u32, f3: u32, rs1: u32, rs2: u32, f7: u32) -> u32 {
    op | r5(rd) << 7 | (f3 & 7) << 12 | r5(rs1) << 15 | r5(rs2) << 20 | (f7 & 0x7f) << 25
}

/// I-type: a 12-bit signed immediate (OP-IMM, loads, JALR, SYSTEM).
pub fn i_type(op: u32, rd: u32, f3: u32, rs1: u32, imm: i32) -> u32 {
    debug_assert!((-2048..2048).contains(&imm), "imm {imm}");
    op | r5(rd) << 7 | (f3 & 7) << 12 | r5(rs1) << 15 | ((imm as u32) & 0xfff) << 20
}

/// S-type: stores, the 12-bit offset split around rs2.
pub fn s_type(op: u32, f3: u32, rs1: u32, rs2: u32, imm: i32) -> u32 {
    debug_assert!((-2048..2048).contains(&imm), "imm {imm}");
    let imm = imm as u32;
    op | (imm & 0x1f) << 7
        | (f3 & 7) << 12
        | r5(rs1) << 15
        | r5(rs2) << 20
        | ((imm >> 5) & 0x7f) << 25
}

/// B-type: conditional branches, `off` bytes from the branch (even, within 4 KiB).
pub fn b_type(f3: u32, rs1: u32, rs2: u32, off: i32) -> u32 {
    debug_assert!(off % 2 == 0 && (-4096..4096).contains(&off));
    let o = off as u32;
    BRANCH
        | ((o >> 11) & 1) << 7
        | ((o >> 1) & 0xf) << 8
        | (f3 & 7) << 12
        | r5(rs1) << 15
        | r5(rs2) << 20
        | ((o >> 5) & 0x3f) << 25
        | ((o >> 12) & 1) << 31
}

/// U-type: LUI and AUIPC with a 20-bit upper immediate.
pub fn u_type(op: u32, rd: u32, imm20: u32) -> u32 {
    op | r5(rd) << 7 | (imm20 & 0xfffff) << 12
}

/// J-type: JAL, `off` bytes from the jump (even, within 1 MiB).
pub fn j_type(rd: u32, off: i32) -> u32 {
    debug_assert!(off % 2 == 0 && (-(1 << 20)..(1 << 20)).contains(&off));
    let o = off as u32;
    JAL | r5(rd) << 7
        | ((o >> 12) & 0xff) << 12
        | ((o >> 11) & 1) << 20
        | ((o >> 1) & 0x3ff) << 21
        | ((o >> 20) & 1) << 31
}

/// R4 (fused multiply-add): fmt 0 = S, 1 = D.
pub fn r4_type(op: u32, rd: u32, rm: u32, rs1: u32, rs2: u32, fmt: u32, rs3: u32) -> u32 {
    op | r5(rd) << 7
        | (rm & 7) << 12
        | r5(rs1) << 15
        | r5(rs2) << 20
        | (fmt & 3) << 25
        | r5(rs3) << 27
}

/// OP-FP with funct5 and fmt.
pub fn fp_type(funct5: u32, fmt: u32, rd: u32, rm: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(OP_FP, rd, rm, rs1, rs2, funct5 << 2 | fmt)
}

/// An atomic (A extension): `funct5` picks the operation, `aq`/`rl` the ordering, `f3` the
/// width (2: word, 3: doubleword).
pub fn amo(funct5: u32, aq: bool, rl: bool, f3: u32, rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(
        AMO,
        rd,
        f3,
        rs1,
        rs2,
        funct5 << 2 | (aq as u32) << 1 | rl as u32,
    )
}

/// A CSR instruction: `f3` picks csrrw/s/c and their immediate forms.
pub fn csr(f3: u32, rd: u32, rs1_or_uimm: u32, csr: u32) -> u32 {
    SYSTEM | r5(rd) << 7 | (f3 & 7) << 12 | r5(rs1_or_uimm) << 15 | (csr & 0xfff) << 20
}

/// `ecall`: the generated programs' way to exit.
pub const ECALL: u32 = 0x0000_0073;
/// `ebreak`.
pub const EBREAK: u32 = 0x0010_0073;
/// `fence iorw, iorw`.
pub const FENCE: u32 = 0x0ff0_000f;
/// `fence.i`: makes stores to code visible to instruction fetch (self-modifying tests).
pub const FENCE_I: u32 = 0x0000_100f;

// ---------------------------------------------------------------- compressed

fn bit(v: u32, b: u32) -> u32 {
    (v >> b) & 1
}
fn bits(v: u32, hi: u32, lo: u32) -> u32 {
    (v >> lo) & ((1 << (hi - lo + 1)) - 1)
}
fn cr(r: u32) -> u32 {
    debug_assert!((8..16).contains(&r), "compressed register x{r}");
    r - 8
}

/// c.addi4spn rd', sp, nzuimm (multiple of 4, 4..=1020).
pub fn c_addi4spn(rd: u32, imm: u32) -> u16 {
    debug_assert!(imm != 0 && imm.is_multiple_of(4) && imm < 1024);
    (bits(imm, 5, 4) << 11
        | bits(imm, 9, 6) << 7
        | bit(imm, 2) << 6
        | bit(imm, 3) << 5
        | cr(rd) << 2) as u16
}

/// CL/CS word form (c.lw/c.sw): f3 = 2 or 6; imm multiple of 4, < 128.
pub fn c_lsw(f3: u32, r: u32, rs1: u32, imm: u32) -> u16 {
    debug_assert!(imm.is_multiple_of(4) && imm < 128);
    (f3 << 13
        | bits(imm, 5, 3) << 10
        | cr(rs1) << 7
        | bit(imm, 2) << 6
        | bit(imm, 6) << 5
        | cr(r) << 2) as u16
}

/// CL/CS double form (c.ld/c.sd/c.fld/c.fsd): f3 = 1, 3, 5, 7; imm multiple of 8, < 256.
pub fn c_lsd(f3: u32, r: u32, rs1: u32, imm: u32) -> u16 {
    debug_assert!(imm.is_multiple_of(8) && imm < 256);
    (f3 << 13 | bits(imm, 5, 3) << 10 | cr(rs1) << 7 | bits(imm, 7, 6) << 5 | cr(r) << 2) as u16
}

/// CI format with a 6-bit signed/unsigned immediate: c.addi (0), c.addiw (1), c.li (2) in quadrant 1,
/// c.slli (0) in quadrant 2.
pub fn c_ci(f3: u32, quadrant: u32, rd: u32, imm: i32) -> u16 {
    let i = imm as u32;
    (f3 << 13 | bit(i, 5) << 12 | r5(rd) << 7 | bits(i, 4, 0) << 2 | quadrant) as u16
}

/// c.addi16sp: `sp += imm` (a nonzero multiple of 16 in -512..512).
pub fn c_addi16sp(imm: i32) -> u16 {
    debug_assert!(imm != 0 && imm % 16 == 0 && (-512..512).contains(&imm));
    let i = imm as u32;
    (3 << 13
        | bit(i, 9) << 12
        | 2 << 7
        | bit(i, 4) << 6
        | bit(i, 5) << 2
        | bit(i, 6) << 5
        | bits(i, 8, 7) << 3
        | 1) as u16
}

/// c.lui rd, nzimm (the 6-bit signed value placed in bits 17:12).
pub fn c_lui(rd: u32, imm6: i32) -> u16 {
    debug_assert!(imm6 != 0 && (-32..32).contains(&imm6));
    c_ci(3, 1, rd, imm6)
}

/// c.srli (0), c.srai (1), c.andi (2).
pub fn c_alu_imm(kind: u32, rd: u32, imm: i32) -> u16 {
    let i = imm as u32;
    (4 << 13 | bit(i, 5) << 12 | kind << 10 | cr(rd) << 7 | bits(i, 4, 0) << 2 | 1) as u16
}

/// c.sub (0,0) c.xor (0,1) c.or (0,2) c.and (0,3) c.subw (1,0) c.addw (1,1).
pub fn c_alu(w: u32, kind: u32, rd: u32, rs2: u32) -> u16 {
    (4 << 13 | w << 12 | 3 << 10 | cr(rd) << 7 | kind << 5 | cr(rs2) << 2 | 1) as u16
}

/// c.j: a jump `off` bytes away (even, within 2 KiB).
pub fn c_j(off: i32) -> u16 {
    debug_assert!(off % 2 == 0 && (-2048..2048).contains(&off));
    let o = off as u32;
    (5 << 13
        | bit(o, 11) << 12
        | bit(o, 4) << 11
        | bits(o, 9, 8) << 9
        | bit(o, 10) << 8
        | bit(o, 6) << 7
        | bit(o, 7) << 6
        | bits(o, 3, 1) << 3
        | bit(o, 5) << 2
        | 1) as u16
}

/// c.beqz (bnez = false) / c.bnez (true).
pub fn c_bz(bnez: bool, rs1: u32, off: i32) -> u16 {
    debug_assert!(off % 2 == 0 && (-256..256).contains(&off));
    let o = off as u32;
    ((6 + bnez as u32) << 13
        | bit(o, 8) << 12
        | bits(o, 4, 3) << 10
        | cr(rs1) << 7
        | bits(o, 7, 6) << 5
        | bits(o, 2, 1) << 3
        | bit(o, 5) << 2
        | 1) as u16
}

/// c.lwsp (f3 2), c.ldsp (3), c.fldsp (1).
pub fn c_lsp(f3: u32, rd: u32, imm: u32) -> u16 {
    let enc = if f3 == 2 {
        debug_assert!(imm.is_multiple_of(4) && imm < 256);
        bit(imm, 5) << 12 | bits(imm, 4, 2) << 4 | bits(imm, 7, 6) << 2
    } else {
        debug_assert!(imm.is_multiple_of(8) && imm < 512);
        bit(imm, 5) << 12 | bits(imm, 4, 3) << 5 | bits(imm, 8, 6) << 2
    };
    (f3 << 13 | enc | r5(rd) << 7 | 2) as u16
}

/// c.swsp (f3 6), c.sdsp (7), c.fsdsp (5).
pub fn c_ssp(f3: u32, rs2: u32, imm: u32) -> u16 {
    let enc = if f3 == 6 {
        debug_assert!(imm.is_multiple_of(4) && imm < 256);
        bits(imm, 5, 2) << 9 | bits(imm, 7, 6) << 7
    } else {
        debug_assert!(imm.is_multiple_of(8) && imm < 512);
        bits(imm, 5, 3) << 10 | bits(imm, 8, 6) << 7
    };
    (f3 << 13 | enc | r5(rs2) << 2 | 2) as u16
}

/// c.jr (false, rs1, 0), c.mv (false, rd, rs2), c.jalr (true, rs1, 0), c.add (true, rd, rs2),
/// c.ebreak (true, 0, 0).
pub fn c_cr(hi: bool, rd: u32, rs2: u32) -> u16 {
    (4 << 13 | (hi as u32) << 12 | r5(rd) << 7 | r5(rs2) << 2 | 2) as u16
}

/// c.nop.
pub const C_NOP: u16 = 0x0001;
/// c.ebreak.
pub const C_EBREAK: u16 = 0x9002;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_encodings() {
        // Values checked against riscv64-linux-gnu-objdump.
        assert_eq!(i_type(OP_IMM, 10, 0, 11, -1), 0xfff58513); // addi a0,a1,-1
        assert_eq!(r_type(OP, 5, 0, 6, 7, 0x20), 0x407302b3); // sub t0,t1,t2
        assert_eq!(r_type(OP, 10, 4, 11, 12, 1), 0x02c5c533); // div a0,a1,a2
        assert_eq!(s_type(STORE, 3, 3, 5, -8), 0xfe51bc23); // sd t0,-8(gp)
        assert_eq!(b_type(1, 5, 6, 8), 0x00629463); // bne t0,t1,+8
        assert_eq!(b_type(0, 5, 6, -4096), 0x80628063); // beq t0,t1,-4096
        assert_eq!(j_type(1, 2048), 0x001000ef); // jal ra,+2048
        assert_eq!(j_type(0, -2), 0xfffff06f); // j -2
        assert_eq!(u_type(LUI, 5, 0x12345), 0x123452b7); // lui t0,0x12345
        assert_eq!(amo(0x01, true, true, 3, 10, 11, 12), 0x0ec5b52f); // amoswap.d.aqrl a0,a2,(a1)
        assert_eq!(amo(0x02, false, false, 2, 10, 11, 0), 0x1005a52f); // lr.w a0,(a1)
        assert_eq!(r4_type(MADD, 1, 7, 2, 3, 1, 4), 0x223170c3); // fmadd.d ft1,ft2,ft3,ft4
        assert_eq!(fp_type(0x18, 0, 10, 1, 5, 2), 0xc0229553); // fcvt.l.s a0,ft5,rtz
        assert_eq!(csr(1, 0, 5, 3), 0x00329073); // fscsr t0
        assert_eq!(csr(5, 10, 3, 2), 0x0021d573); // csrrwi a0,frm,3
    }

    #[test]
    fn known_compressed_encodings() {
        assert_eq!(c_addi4spn(8, 4), 0x0040); // c.addi4spn s0,sp,4
        assert_eq!(c_addi4spn(15, 1020), 0x1ffc);
        assert_eq!(c_lsw(2, 9, 10, 124), 0x5d64); // c.lw s1,124(a0)
        assert_eq!(c_lsd(3, 9, 10, 248), 0x7d64); // c.ld s1,248(a0)
        assert_eq!(c_lsd(7, 9, 10, 8), 0xe504); // c.sd s1,8(a0)
        assert_eq!(c_ci(0, 1, 10, -1), 0x157d); // c.addi a0,-1
        assert_eq!(c_ci(2, 1, 10, 31), 0x457d); // c.li a0,31
        assert_eq!(c_addi16sp(-512), 0x7101);
        assert_eq!(c_addi16sp(496), 0x617d);
        assert_eq!(c_lui(10, -1), 0x757d); // c.lui a0,0xfffff
        assert_eq!(c_alu_imm(1, 8, 63), 0x947d); // c.srai s0,63
        assert_eq!(c_alu(0, 0, 8, 9), 0x8c05); // c.sub s0,s1
        assert_eq!(c_alu(1, 1, 8, 9), 0x9c25); // c.addw s0,s1
        assert_eq!(c_j(-2), 0xbffd);
        assert_eq!(c_j(2046), 0xaffd);
        assert_eq!(c_bz(true, 8, -256), 0xf001);
        assert_eq!(c_bz(false, 8, 254), 0xcc7d);
        assert_eq!(c_lsp(3, 10, 504), 0x757e); // c.ldsp a0,504(sp)
        assert_eq!(c_lsp(2, 10, 252), 0x557e); // c.lwsp a0,252(sp)
        assert_eq!(c_ssp(7, 10, 504), 0xffaa); // c.sdsp a0,504(sp)
        assert_eq!(c_ssp(6, 10, 252), 0xdfaa); // c.swsp a0,252(sp)
        assert_eq!(c_cr(true, 1, 10), 0x90aa); // c.add ra,a0
        assert_eq!(c_cr(false, 5, 0), 0x8282); // c.jr t0
        assert_eq!(C_EBREAK, c_cr(true, 0, 0));
    }
}
