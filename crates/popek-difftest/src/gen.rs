//! Seeded random instruction sequence generator.

use crate::enc::*;
use crate::layout::*;

/// splitmix64: small, fast, good enough, and ours.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// The generator for `seed`: the same seed, the same program.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x005e_ed0f_90be_c0de)
    }
    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)] // an infinite generator, not an iterator
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in 0..n.
    pub fn below(&mut self, n: u64) -> u64 {
        (self.next() >> 11) % n
    }
    /// Uniform in `lo..=hi_incl`.
    pub fn range(&mut self, lo: i64, hi_incl: i64) -> i64 {
        lo + self.below((hi_incl - lo + 1) as u64) as i64
    }
    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    /// One of `xs`, uniformly.
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// What a sequence exercises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// RV64IMAC + Zicsr on fcsr; no F/D instructions in the body.
    Int,
    /// Mostly F/D with some integer work.
    Fp,
    /// Everything.
    Mixed,
    /// A body (int-only for even seeds, mixed for odd) ending in a faulting instruction.
    Fault,
    /// F/D without arithmetic: loads, stores, sign injection, moves, fcsr access (NaN-boxing).
    FpMove,
}

impl Flavour {
    /// Every flavour, in the order `--flavour all` cycles through them by seed.
    pub const ALL: [Flavour; 5] = [
        Flavour::Int,
        Flavour::Fp,
        Flavour::Mixed,
        Flavour::Fault,
        Flavour::FpMove,
    ];
    /// The name `--flavour` takes and reports print.
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Int => "int",
            Flavour::Fp => "fp",
            Flavour::Mixed => "mixed",
            Flavour::Fault => "fault",
            Flavour::FpMove => "fpmove",
        }
    }
    /// The flavour named `s` (see [`Flavour::name`]).
    pub fn parse(s: &str) -> Option<Flavour> {
        Flavour::ALL.into_iter().find(|f| f.name() == s)
    }
}

/// One encoded instruction: programs mix 32-bit and compressed ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enc {
    /// A 32-bit instruction.
    W(u32),
    /// A compressed (16-bit) one.
    H(u16),
}

impl Enc {
    /// Its length in bytes.
    #[allow(clippy::len_without_is_empty)] // an encoding is never empty
    pub fn len(self) -> u64 {
        match self {
            Enc::W(_) => 4,
            Enc::H(_) => 2,
        }
    }
}

/// A control transfer whose offset is known once the code is laid out.
#[derive(Clone, Copy, Debug)]
pub enum FixKind {
    /// A conditional branch (`f3` picks the condition) comparing `rs1` and `rs2`.
    Branch {
        /// The branch's funct3.
        f3: u32,
        /// First register compared.
        rs1: u32,
        /// Second register compared.
        rs2: u32,
    },
    /// `jal rd, off`.
    Jal {
        /// Link register.
        rd: u32,
    },
    /// `c.j off`.
    CJ,
    /// `c.beqz`/`c.bnez rs1, off`.
    CBz {
        /// `c.bnez` rather than `c.beqz`.
        bnez: bool,
        /// Register tested (x8-x15).
        rs1: u32,
    },
    /// `jalr rd, off(rs1)` where rs1 was set by the `auipc rs1, 0` opening the group.
    Jalr {
        /// Link register.
        rd: u32,
        /// Base register (the `auipc`'s).
        rs1: u32,
    },
    /// `addi rd, rs1, off` where rs1 was set by the `auipc` opening the group.
    Addi {
        /// Destination.
        rd: u32,
        /// Source (the `auipc`'s).
        rs1: u32,
    },
}

/// An instruction's control transfer, fixed up at layout.
#[derive(Clone, Copy, Debug)]
pub struct Fix {
    /// Target: the start of group (this group + 1 + skip), clamped to the end of the body.
    pub skip: usize,
    /// The instruction to encode once the offset is known.
    pub kind: FixKind,
}

/// One instruction of a program: its encoding, its assembly text (for reports and QEMU
/// logs), and the fix-up its offset needs, if any.
#[derive(Clone, Debug)]
pub struct Item {
    /// Its bits (provisional until layout for a control transfer).
    pub enc: Enc,
    /// Its assembly, as reports print it.
    pub text: String,
    /// Set for control transfers whose offset layout decides.
    pub fix: Option<Fix>,
}

/// A generated test program (before layout).
#[derive(Clone, Debug)]
pub struct Program {
    /// The seed it was generated from.
    pub seed: u64,
    /// What it exercises.
    pub flavour: Flavour,
    /// Body groups: a branch target is always the start of a group.
    pub body: Vec<Vec<Item>>,
    /// The faulting group (fault flavour only); branches never skip it.
    pub fault: Option<Vec<Item>>,
    /// Integer registers on entry to the body.
    pub init_x: [u64; 32],
    /// FP registers (raw bits) on entry to the body.
    pub init_f: [u64; 32],
    /// `fcsr` on entry to the body.
    pub init_fcsr: u64,
    /// The scratch memory's initial bytes (loads and stores use it).
    pub scratch: Vec<u8>,
    /// Bytes before the next page boundary where the body starts (None: right after the prologue),
    /// so that instructions straddle a page boundary.
    pub straddle: Option<u64>,
}

const XNAMES: [&str; 32] = [
    "zero", "ra", "sp", "gp", "tp", "t0", "t1", "t2", "s0", "s1", "a0", "a1", "a2", "a3", "a4",
    "a5", "a6", "a7", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11", "t3", "t4",
    "t5", "t6",
];
const FNAMES: [&str; 32] = [
    "ft0", "ft1", "ft2", "ft3", "ft4", "ft5", "ft6", "ft7", "fs0", "fs1", "fa0", "fa1", "fa2",
    "fa3", "fa4", "fa5", "fa6", "fa7", "fs2", "fs3", "fs4", "fs5", "fs6", "fs7", "fs8", "fs9",
    "fs10", "fs11", "ft8", "ft9", "ft10", "ft11",
];
/// The ABI name of integer register `r`.
pub fn xn(r: u32) -> &'static str {
    XNAMES[r as usize]
}
/// The ABI name of FP register `r`.
pub fn fname(r: u32) -> &'static str {
    FNAMES[r as usize]
}
/// The assembler's name of rounding mode `rm`.
pub fn rmn(rm: u32) -> &'static str {
    ["rne", "rtz", "rdn", "rup", "rmm", "rm5", "rm6", "dyn"][rm as usize]
}
fn csrn(c: u32) -> String {
    match c {
        1 => "fflags".into(),
        2 => "frm".into(),
        3 => "fcsr".into(),
        _ => format!("{c:#x}"),
    }
}

// ---------------------------------------------------------------- special values

const INT_SPECIALS: [u64; 16] = [
    0,
    1,
    u64::MAX,
    i64::MIN as u64,
    i64::MAX as u64,
    i32::MIN as i64 as u64,
    i32::MAX as u64,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    2,
    u64::MAX - 1,
    0x7fff_ffff_ffff_fffe,
    0xffff_ffff_7fff_ffff,
    63,
    64,
];

const F64_SPECIALS: [u64; 34] = [
    0x0000_0000_0000_0000, // +0
    0x8000_0000_0000_0000, // -0
    0x7ff0_0000_0000_0000, // +inf
    0xfff0_0000_0000_0000, // -inf
    0x7ff8_0000_0000_0000, // qNaN
    0xfff8_0000_0000_0000, // -qNaN
    0x7ff0_0000_0000_0001, // sNaN
    0x7ff4_0000_0000_0000, // sNaN
    0x7ffc_0000_dead_beef, // qNaN with payload
    0x0000_0000_0000_0001, // min subnormal
    0x800f_ffff_ffff_ffff, // -max subnormal
    0x0010_0000_0000_0000, // min normal
    0x7fef_ffff_ffff_ffff, // max
    0xffef_ffff_ffff_ffff, // -max
    0x3ff0_0000_0000_0000, // 1.0
    0xbff0_0000_0000_0000, // -1.0
    0x3fe0_0000_0000_0000, // 0.5
    0xbfe0_0000_0000_0000, // -0.5
    0x3ff8_0000_0000_0000, // 1.5
    0x4004_0000_0000_0000, // 2.5
    0x43e0_0000_0000_0000, // 2^63
    0xc3e0_0000_0000_0000, // -2^63
    0x43df_ffff_ffff_ffff, // 2^63 - ulp
    0x43f0_0000_0000_0000, // 2^64
    0x43ef_ffff_ffff_ffff, // 2^64 - ulp
    0x41e0_0000_0000_0000, // 2^31
    0xc1e0_0000_0000_0000, // -2^31
    0x41df_ffff_ffc0_0000, // 2^31 - 1
    0x41df_ffff_ffe0_0000, // 2^31 - 0.5
    0xc1e0_0000_0010_0000, // -2^31 - 0.5
    0x41f0_0000_0000_0000, // 2^32
    0x41ef_ffff_ffe0_0000, // 2^32 - 1
    0x3810_0000_0000_0000, // f32 min normal as f64
    0x47ef_ffff_e000_0000, // f32 max as f64
];

const F32_SPECIALS: [u32; 30] = [
    0x0000_0000,
    0x8000_0000,
    0x7f80_0000,
    0xff80_0000,
    0x7fc0_0000,
    0xffc0_0000,
    0x7f80_0001,
    0x7fa0_0000,
    0x7fc1_2345,
    0x0000_0001,
    0x807f_ffff,
    0x0080_0000,
    0x7f7f_ffff,
    0xff7f_ffff,
    0x3f80_0000,
    0xbf80_0000,
    0x3f00_0000,
    0xbf00_0000,
    0x3fc0_0000,
    0x4020_0000,
    0x4f00_0000,
    0xcf00_0000,
    0x4eff_ffff,
    0x4f80_0000,
    0x4f7f_ffff,
    0x5f00_0000,
    0xdf00_0000,
    0x5eff_ffff,
    0x5f80_0000,
    0x5f7f_ffff,
];

impl Rng {
    /// An integer register value, often an edge case (0, ±1, extremes, powers of two).
    pub fn int_value(&mut self) -> u64 {
        match self.below(8) {
            0..=2 => self.pick(&INT_SPECIALS),
            3 => self.range(-64, 64) as u64,
            4 => (self.next() as i32) as i64 as u64,
            5 => self.next() >> self.below(64),
            6 => 1u64
                .wrapping_shl(self.below(64) as u32)
                .wrapping_add(self.range(-2, 1) as u64),
            _ => self.next(),
        }
    }
    /// A single's bits, often a special (NaNs, infinities, subnormals, conversion limits).
    pub fn f32_value(&mut self) -> u32 {
        match self.below(6) {
            0..=2 => self.pick(&F32_SPECIALS),
            3 => (self.next() as u32 & 0x807f_ffff) | ((self.range(100, 160) as u32) << 23),
            4 => self.next() as u32 & 0x807f_ffff | (self.below(2) as u32 * 0x7f80_0000),
            _ => self.next() as u32,
        }
    }
    /// A double's bits, often a special (as for [`Rng::f32_value`]).
    pub fn f64_value(&mut self) -> u64 {
        match self.below(6) {
            0..=2 => self.pick(&F64_SPECIALS),
            3 => (self.next() & 0x800f_ffff_ffff_ffff) | ((self.range(990, 1090) as u64) << 52),
            4 => self.next() & 0x800f_ffff_ffff_ffff | (self.below(2) * 0x7ff0_0000_0000_0000),
            _ => self.next(),
        }
    }
    /// A value for an FP register: a double, a NaN-boxed single or a badly boxed single.
    pub fn freg_value(&mut self) -> u64 {
        match self.below(10) {
            0..=3 => self.f64_value(),
            4..=7 => 0xffff_ffff_0000_0000 | self.f32_value() as u64,
            8 => (self.next() & 0xffff_ffff_0000_0000) | self.f32_value() as u64,
            _ => 0x7fff_ffff_0000_0000 | self.f32_value() as u64,
        }
    }
}

// ---------------------------------------------------------------- generator

/// Builds one program from a seed: the random source and what the body may contain.
pub struct Gen {
    /// The seed's random source.
    pub rng: Rng,
    flavour: Flavour,
    /// Whether F/D instructions may appear in the body.
    fp: bool,
    /// Statically known frm (kept valid in the body).
    frm: u32,
    group: Vec<Item>,
    body: Vec<Vec<Item>>,
}

/// Scratch offsets reachable from gp.
const SCR_LO: i64 = SCRATCH as i64 - GP as i64; // -2048
const SCR_HI: i64 = (SCRATCH + SCRATCH_LEN) as i64 - GP as i64; // exclusive

impl Gen {
    fn w(&mut self, w: u32, text: String) {
        self.group.push(Item {
            enc: Enc::W(w),
            text,
            fix: None,
        });
    }
    fn h(&mut self, h: u16, text: String) {
        self.group.push(Item {
            enc: Enc::H(h),
            text,
            fix: None,
        });
    }
    fn fixed(&mut self, enc: Enc, kind: FixKind, skip: usize) {
        self.group.push(Item {
            enc,
            text: String::new(),
            fix: Some(Fix { skip, kind }),
        });
    }
    fn end_group(&mut self) {
        if !self.group.is_empty() {
            let g = std::mem::take(&mut self.group);
            self.body.push(g);
        }
    }

    /// Random destination: never sp or gp; x0 rarely.
    fn rd(&mut self) -> u32 {
        if self.rng.chance(3) {
            return 0;
        }
        self.rd_nz()
    }
    fn rd_nz(&mut self) -> u32 {
        let r = self.rng.range(3, 31) as u32;
        if r == 3 {
            1
        } else {
            r
        }
    }
    fn rs(&mut self) -> u32 {
        self.rng.below(32) as u32
    }
    fn rc(&mut self) -> u32 {
        self.rng.range(8, 15) as u32
    }
    fn fr(&mut self) -> u32 {
        self.rng.below(32) as u32
    }
    fn rm(&mut self) -> u32 {
        self.rng.pick(&[0, 1, 2, 3, 4, 7, 7])
    }
    fn imm12(&mut self) -> i32 {
        match self.rng.below(6) {
            0 => self.rng.pick(&[0, 1, -1, 2047, -2048, 2, -2]),
            1..=2 => self.rng.range(-16, 16) as i32,
            _ => self.rng.range(-2048, 2047) as i32,
        }
    }
    fn shamt(&mut self, bits: u32) -> u32 {
        if self.rng.chance(30) {
            self.rng.pick(&[0, 1, bits - 1, bits / 2, bits / 2 - 1])
        } else {
            self.rng.below(bits as u64) as u32
        }
    }
    /// Offset from gp of a `width`-byte access inside scratch.
    fn mem_off(&mut self, width: i64, misaligned: bool) -> i32 {
        let mut off = self.rng.range(SCR_LO, SCR_HI - width);
        if !(misaligned && self.rng.chance(20)) {
            off &= !(width - 1);
        }
        off as i32
    }

    // ------------------------------------------------------------ integer

    fn alu_rr(&mut self) {
        const OPS: [(&str, u32, u32, bool); 28] = [
            ("add", 0, 0, false),
            ("sub", 0, 0x20, false),
            ("sll", 1, 0, false),
            ("slt", 2, 0, false),
            ("sltu", 3, 0, false),
            ("xor", 4, 0, false),
            ("srl", 5, 0, false),
            ("sra", 5, 0x20, false),
            ("or", 6, 0, false),
            ("and", 7, 0, false),
            ("mul", 0, 1, false),
            ("mulh", 1, 1, false),
            ("mulhsu", 2, 1, false),
            ("mulhu", 3, 1, false),
            ("div", 4, 1, false),
            ("divu", 5, 1, false),
            ("rem", 6, 1, false),
            ("remu", 7, 1, false),
            ("addw", 0, 0, true),
            ("subw", 0, 0x20, true),
            ("sllw", 1, 0, true),
            ("srlw", 5, 0, true),
            ("sraw", 5, 0x20, true),
            ("mulw", 0, 1, true),
            ("divw", 4, 1, true),
            ("divuw", 5, 1, true),
            ("remw", 6, 1, true),
            ("remuw", 7, 1, true),
        ];
        let (name, f3, f7, w) = self.rng.pick(&OPS);
        let (rd, rs1, rs2) = (self.rd(), self.rs(), self.rs());
        let op = if w { OP_32 } else { OP };
        self.w(
            r_type(op, rd, f3, rs1, rs2, f7),
            format!("{name} {}, {}, {}", xn(rd), xn(rs1), xn(rs2)),
        );
    }

    fn alu_imm(&mut self) {
        let (rd, rs1) = (self.rd(), self.rs());
        match self.rng.below(13) {
            k @ 0..=5 => {
                let f3 = [0, 2, 3, 4, 6, 7][k as usize];
                let name = ["addi", "slti", "sltiu", "xori", "ori", "andi"][k as usize];
                let imm = self.imm12();
                self.w(
                    i_type(OP_IMM, rd, f3, rs1, imm),
                    format!("{name} {}, {}, {imm}", xn(rd), xn(rs1)),
                );
            }
            k @ 6..=8 => {
                let sh = self.shamt(64) as i32;
                let (f3, hi, name) =
                    [(1, 0, "slli"), (5, 0, "srli"), (5, 0x400, "srai")][k as usize - 6];
                self.w(
                    i_type(OP_IMM, rd, f3, rs1, sh | hi),
                    format!("{name} {}, {}, {sh}", xn(rd), xn(rs1)),
                );
            }
            9 => {
                let imm = self.imm12();
                self.w(
                    i_type(OP_IMM_32, rd, 0, rs1, imm),
                    format!("addiw {}, {}, {imm}", xn(rd), xn(rs1)),
                );
            }
            k => {
                let sh = self.shamt(32) as i32;
                let (f3, hi, name) =
                    [(1, 0, "slliw"), (5, 0, "srliw"), (5, 0x400, "sraiw")][k as usize - 10];
                self.w(
                    i_type(OP_IMM_32, rd, f3, rs1, sh | hi),
                    format!("{name} {}, {}, {sh}", xn(rd), xn(rs1)),
                );
            }
        }
    }

    fn upper(&mut self) {
        let rd = self.rd();
        let imm = match self.rng.below(4) {
            0 => self.rng.pick(&[0, 1, 0x80000, 0xfffff, 0x7ffff]),
            _ => self.rng.below(1 << 20) as u32,
        };
        if self.rng.chance(60) {
            self.w(u_type(LUI, rd, imm), format!("lui {}, {imm:#x}", xn(rd)));
        } else {
            self.w(
                u_type(AUIPC, rd, imm),
                format!("auipc {}, {imm:#x}", xn(rd)),
            );
        }
    }

    fn load_store(&mut self) {
        const L: [(&str, u32, i64); 7] = [
            ("lb", 0, 1),
            ("lh", 1, 2),
            ("lw", 2, 4),
            ("ld", 3, 8),
            ("lbu", 4, 1),
            ("lhu", 5, 2),
            ("lwu", 6, 4),
        ];
        const S: [(&str, u32, i64); 4] = [("sb", 0, 1), ("sh", 1, 2), ("sw", 2, 4), ("sd", 3, 8)];
        if self.rng.chance(50) {
            let (name, f3, wd) = self.rng.pick(&L);
            let rd = self.rd();
            let off = self.mem_off(wd, true);
            self.w(
                i_type(LOAD, rd, f3, 3, off),
                format!("{name} {}, {off}(gp)", xn(rd)),
            );
        } else {
            let (name, f3, wd) = self.rng.pick(&S);
            let rs2 = self.rs();
            let off = self.mem_off(wd, true);
            self.w(
                s_type(STORE, f3, 3, rs2, off),
                format!("{name} {}, {off}(gp)", xn(rs2)),
            );
        }
    }

    /// `addi base, gp, off` with off suitably placed for a following access of `width` at `extra`.
    fn set_base(&mut self, base: u32, width: i64, reach: i64) -> i64 {
        let off = self.rng.range(SCR_LO, SCR_HI - reach - width) & !(width - 1);
        self.w(
            i_type(OP_IMM, base, 0, 3, off as i32),
            format!("addi {}, gp, {off}", xn(base)),
        );
        off
    }

    fn atomic(&mut self) {
        const AMOS: [(&str, u32); 9] = [
            ("amoswap", 0x01),
            ("amoadd", 0x00),
            ("amoxor", 0x04),
            ("amoand", 0x0c),
            ("amoor", 0x08),
            ("amomin", 0x10),
            ("amomax", 0x14),
            ("amominu", 0x18),
            ("amomaxu", 0x1c),
        ];
        let d = self.rng.chance(50);
        let (f3, sfx, wd) = if d { (3, "d", 8) } else { (2, "w", 4) };
        let base = self.rd_nz();
        self.set_base(base, wd, 0);
        let (aq, rl) = (self.rng.chance(50), self.rng.chance(50));
        let ord = match (aq, rl) {
            (false, false) => "",
            (true, false) => ".aq",
            (false, true) => ".rl",
            (true, true) => ".aqrl",
        };
        if self.rng.chance(25) {
            // LR/SC pair, optionally with one ALU op in between that leaves the base alone.
            let mut rd = self.rd();
            while rd == base {
                rd = self.rd();
            }
            self.w(
                amo(0x02, aq, rl, f3, rd, base, 0),
                format!("lr.{sfx}{ord} {}, ({})", xn(rd), xn(base)),
            );
            let mut src = self.rs();
            if self.rng.chance(60) {
                let mut t = self.rd_nz();
                while t == base {
                    t = self.rd_nz();
                }
                let imm = self.imm12();
                self.w(
                    i_type(OP_IMM, t, 0, rd, imm),
                    format!("addi {}, {}, {imm}", xn(t), xn(rd)),
                );
                src = t;
            }
            let rd2 = self.rd();
            self.w(
                amo(0x03, aq, rl, f3, rd2, base, src),
                format!("sc.{sfx}{ord} {}, {}, ({})", xn(rd2), xn(src), xn(base)),
            );
        } else if self.rng.chance(10) {
            // An unpaired SC: must fail.
            let (rd, src) = (self.rd(), self.rs());
            self.w(
                amo(0x03, aq, rl, f3, rd, base, src),
                format!("sc.{sfx}{ord} {}, {}, ({})", xn(rd), xn(src), xn(base)),
            );
        } else {
            let (name, f5) = self.rng.pick(&AMOS);
            let (rd, src) = (self.rd(), self.rs());
            self.w(
                amo(f5, aq, rl, f3, rd, base, src),
                format!("{name}.{sfx}{ord} {}, {}, ({})", xn(rd), xn(src), xn(base)),
            );
        }
    }

    fn control(&mut self) {
        let skip = self.rng.below(4) as usize;
        match self.rng.below(7) {
            0..=2 => {
                let f3 = self.rng.pick(&[0, 1, 4, 5, 6, 7]);
                let (rs1, rs2) = (self.rs(), self.rs());
                self.fixed(Enc::W(0), FixKind::Branch { f3, rs1, rs2 }, skip);
            }
            3 => {
                let rd = self.rd();
                self.fixed(Enc::W(0), FixKind::Jal { rd }, skip);
            }
            4 => {
                let t = self.rd_nz();
                self.w(u_type(AUIPC, t, 0), format!("auipc {}, 0", xn(t)));
                let rd = self.rd();
                self.fixed(Enc::W(0), FixKind::Jalr { rd, rs1: t }, skip);
            }
            5 => {
                let t = self.rd_nz();
                self.w(u_type(AUIPC, t, 0), format!("auipc {}, 0", xn(t)));
                self.fixed(Enc::W(0), FixKind::Addi { rd: t, rs1: t }, skip);
                if self.rng.chance(50) {
                    self.h(c_cr(false, t, 0), format!("c.jr {}", xn(t)));
                } else {
                    self.h(c_cr(true, t, 0), format!("c.jalr {}", xn(t)));
                }
            }
            _ => {
                if self.rng.chance(40) {
                    self.fixed(Enc::H(0), FixKind::CJ, skip);
                } else {
                    let rs1 = self.rc();
                    let bnez = self.rng.chance(50);
                    self.fixed(Enc::H(0), FixKind::CBz { bnez, rs1 }, skip);
                }
            }
        }
    }

    /// Self-modifying code: overwrite an upcoming nop with a random ALU instruction, then fence.i.
    fn smc(&mut self) {
        let before = self.group.len();
        if self.rng.chance(50) {
            self.alu_rr();
        } else {
            self.alu_imm();
        }
        let it = self.group.pop().unwrap();
        debug_assert_eq!(self.group.len(), before);
        let Enc::W(word) = it.enc else { unreachable!() };
        let t = self.rd_nz();
        let mut a = self.rd_nz();
        while a == t {
            a = self.rd_nz();
        }
        let v = word as i32 as i64;
        let hi = ((v + 0x800) >> 12) as i32;
        let lo = (v - ((hi as i64) << 12)) as i32;
        self.w(
            u_type(LUI, t, hi as u32),
            format!("lui {}, {:#x}", xn(t), hi as u32 & 0xfffff),
        );
        self.w(
            i_type(OP_IMM_32, t, 0, t, lo),
            format!("addiw {}, {}, {lo}", xn(t), xn(t)),
        );
        self.w(u_type(AUIPC, a, 0), format!("auipc {}, 0", xn(a)));
        self.w(
            s_type(STORE, 2, a, t, 12),
            format!("sw {}, 12({})", xn(t), xn(a)),
        );
        self.w(FENCE_I, "fence.i".into());
        self.w(
            i_type(OP_IMM, 0, 0, 0, 0),
            format!("nop  # overwritten with {word:08x} {}", it.text),
        );
    }

    fn fence(&mut self) {
        if self.rng.chance(50) {
            self.w(FENCE, "fence".into());
        } else {
            self.w(FENCE_I, "fence.i".into());
        }
    }

    /// CSR access to fflags/frm/fcsr keeping frm valid.
    fn zicsr(&mut self) {
        let csrno = self.rng.range(1, 3) as u32;
        let f3 = self.rng.pick(&[1, 2, 3, 5, 6, 7]);
        let rd = self.rd();
        let name = [
            "", "csrrw", "csrrs", "csrrc", "", "csrrwi", "csrrsi", "csrrci",
        ][f3 as usize];
        let new_frm = |old: u32, v: u64| -> u32 {
            let bits = match csrno {
                1 => return old,
                2 => (v & 7) as u32,
                _ => ((v >> 5) & 7) as u32,
            };
            match f3 & 3 {
                1 => bits,
                2 => old | bits,
                _ => old & !bits,
            }
        };
        if f3 >= 5 {
            let mut v;
            loop {
                v = self.rng.below(32);
                if new_frm(self.frm, v) <= 4 {
                    break;
                }
            }
            self.frm = new_frm(self.frm, v);
            self.w(
                csr(f3, rd, v as u32, csrno),
                format!("{name} {}, {}, {v}", xn(rd), csrn(csrno)),
            );
        } else if csrno == 1 && self.rng.chance(50) {
            let rs = self.rs();
            self.w(
                csr(f3, rd, rs, csrno),
                format!("{name} {}, {}, {}", xn(rd), csrn(csrno), xn(rs)),
            );
        } else {
            let mut v;
            loop {
                v = self.rng.range(-2048, 2047) as u64;
                if self.rng.chance(50) {
                    v &= 0xff;
                }
                if new_frm(self.frm, v) <= 4 {
                    break;
                }
            }
            self.frm = new_frm(self.frm, v);
            let t = self.rd_nz();
            self.w(
                i_type(OP_IMM, t, 0, 0, v as i32),
                format!("addi {}, zero, {}", xn(t), v as i64),
            );
            self.w(
                csr(f3, rd, t, csrno),
                format!("{name} {}, {}, {}", xn(rd), csrn(csrno), xn(t)),
            );
        }
    }

    fn compressed_int(&mut self) {
        match self.rng.below(20) {
            0 => {
                let rd = self.rc();
                let imm = (self.rng.range(1, 255) * 4) as u32;
                self.h(
                    c_addi4spn(rd, imm),
                    format!("c.addi4spn {}, sp, {imm}", xn(rd)),
                );
            }
            1 | 2 => {
                // c.lw/c.ld/c.sw/c.sd with a base set by addi or c.addi4spn
                let base = self.rc();
                let d = self.rng.chance(50);
                let (wd, max) = if d { (8, 248) } else { (4, 124) };
                if self.rng.chance(30) {
                    let imm = (self.rng.range(1, 200) * 4) as u32;
                    self.h(
                        c_addi4spn(base, imm),
                        format!("c.addi4spn {}, sp, {imm}", xn(base)),
                    );
                } else {
                    self.set_base(base, wd, max);
                }
                let imm = (self.rng.range(0, max / wd) * wd) as u32;
                let r = self.rc();
                let load = self.rng.chance(50);
                let f3 = match (load, d) {
                    (true, false) => 2,
                    (true, true) => 3,
                    (false, false) => 6,
                    (false, true) => 7,
                };
                let name = ["", "", "c.lw", "c.ld", "", "", "c.sw", "c.sd"][f3 as usize];
                let enc = if d {
                    c_lsd(f3, r, base, imm)
                } else {
                    c_lsw(f3, r, base, imm)
                };
                self.h(enc, format!("{name} {}, {imm}({})", xn(r), xn(base)));
            }
            3 => {
                let rd = self.rd_nz();
                let mut imm = self.rng.range(-32, 31) as i32;
                if imm == 0 {
                    imm = 1;
                }
                self.h(c_ci(0, 1, rd, imm), format!("c.addi {}, {imm}", xn(rd)));
            }
            4 => {
                let rd = self.rd_nz();
                let imm = self.rng.range(-32, 31) as i32;
                self.h(c_ci(1, 1, rd, imm), format!("c.addiw {}, {imm}", xn(rd)));
            }
            5 => {
                let rd = self.rd_nz();
                let imm = self.rng.range(-32, 31) as i32;
                self.h(c_ci(2, 1, rd, imm), format!("c.li {}, {imm}", xn(rd)));
            }
            6 => {
                let rd = self.rd_nz();
                let mut imm = self.rng.range(-32, 31) as i32;
                if imm == 0 {
                    imm = -32;
                }
                self.h(
                    c_lui(rd, imm),
                    format!("c.lui {}, {:#x}", xn(rd), (imm as u32) & 0xfffff),
                );
            }
            7 => {
                let rd = self.rc();
                let k = self.rng.below(3) as u32;
                let imm = if k == 2 {
                    self.rng.range(-32, 31) as i32
                } else {
                    self.rng.range(1, 63) as i32
                };
                let name = ["c.srli", "c.srai", "c.andi"][k as usize];
                self.h(c_alu_imm(k, rd, imm), format!("{name} {}, {imm}", xn(rd)));
            }
            8 | 9 => {
                let (rd, rs2) = (self.rc(), self.rc());
                let (w, k, name) = self.rng.pick(&[
                    (0, 0, "c.sub"),
                    (0, 1, "c.xor"),
                    (0, 2, "c.or"),
                    (0, 3, "c.and"),
                    (1, 0, "c.subw"),
                    (1, 1, "c.addw"),
                ]);
                self.h(
                    c_alu(w, k, rd, rs2),
                    format!("{name} {}, {}", xn(rd), xn(rs2)),
                );
            }
            10 => {
                let rd = self.rd_nz();
                let sh = self.rng.range(1, 63) as i32;
                self.h(c_ci(0, 2, rd, sh), format!("c.slli {}, {sh}", xn(rd)));
            }
            11 | 12 => {
                let rd = self.rd_nz();
                if self.rng.chance(50) {
                    let imm = (self.rng.range(0, 63) * 4) as u32;
                    self.h(c_lsp(2, rd, imm), format!("c.lwsp {}, {imm}(sp)", xn(rd)));
                } else {
                    let imm = (self.rng.range(0, 63) * 8) as u32;
                    self.h(c_lsp(3, rd, imm), format!("c.ldsp {}, {imm}(sp)", xn(rd)));
                }
            }
            13 => {
                let rs2 = self.rs();
                if self.rng.chance(50) {
                    let imm = (self.rng.range(0, 63) * 4) as u32;
                    self.h(c_ssp(6, rs2, imm), format!("c.swsp {}, {imm}(sp)", xn(rs2)));
                } else {
                    let imm = (self.rng.range(0, 63) * 8) as u32;
                    self.h(c_ssp(7, rs2, imm), format!("c.sdsp {}, {imm}(sp)", xn(rs2)));
                }
            }
            14 => {
                let rd = self.rd_nz();
                let rs2 = self.rng.range(1, 31) as u32;
                self.h(
                    c_cr(false, rd, rs2),
                    format!("c.mv {}, {}", xn(rd), xn(rs2)),
                );
            }
            15 => {
                let rd = self.rd_nz();
                let rs2 = self.rng.range(1, 31) as u32;
                self.h(
                    c_cr(true, rd, rs2),
                    format!("c.add {}, {}", xn(rd), xn(rs2)),
                );
            }
            16 => {
                // c.addi16sp pair around an sp-relative access
                let x = (self.rng.range(1, 31) * 16) as i32;
                self.h(c_addi16sp(x), format!("c.addi16sp sp, {x}"));
                if self.fp && self.rng.chance(30) {
                    let imm = (self.rng.range(0, 63) * 8) as u32;
                    let r = self.fr();
                    if self.rng.chance(50) {
                        self.h(c_lsp(1, r, imm), format!("c.fldsp {}, {imm}(sp)", fname(r)));
                    } else {
                        self.h(c_ssp(5, r, imm), format!("c.fsdsp {}, {imm}(sp)", fname(r)));
                    }
                } else {
                    let imm = (self.rng.range(0, 63) * 8) as u32;
                    if self.rng.chance(50) {
                        let rd = self.rd_nz();
                        self.h(c_lsp(3, rd, imm), format!("c.ldsp {}, {imm}(sp)", xn(rd)));
                    } else {
                        let rs = self.rs();
                        self.h(c_ssp(7, rs, imm), format!("c.sdsp {}, {imm}(sp)", xn(rs)));
                    }
                }
                self.h(c_addi16sp(-x), format!("c.addi16sp sp, {}", -x));
            }
            17 => self.h(C_NOP, "c.nop".into()),
            _ => self.control(),
        }
    }

    // ------------------------------------------------------------ floating point

    fn fp_load_store(&mut self) {
        let d = self.rng.chance(50);
        let (f3, wd, sfx) = if d { (3, 8, "d") } else { (2, 4, "w") };
        let r = self.fr();
        if self.rng.chance(25) {
            // compressed double forms
            let base = self.rc();
            self.set_base(base, 8, 248);
            let r = self.rc();
            let imm = (self.rng.range(0, 31) * 8) as u32;
            if self.rng.chance(50) {
                self.h(
                    c_lsd(1, r, base, imm),
                    format!("c.fld {}, {imm}({})", fname(r), xn(base)),
                );
            } else {
                self.h(
                    c_lsd(5, r, base, imm),
                    format!("c.fsd {}, {imm}({})", fname(r), xn(base)),
                );
            }
            return;
        }
        let off = self.mem_off(wd, true);
        if self.rng.chance(60) {
            self.w(
                i_type(LOAD_FP, r, f3, 3, off),
                format!("fl{sfx} {}, {off}(gp)", fname(r)),
            );
        } else {
            self.w(
                s_type(STORE_FP, f3, 3, r, off),
                format!("fs{sfx} {}, {off}(gp)", fname(r)),
            );
        }
    }

    fn fp_op(&mut self) {
        let fmt = self.rng.below(2) as u32;
        let s = if fmt == 0 { "s" } else { "d" };
        let rm = self.rm();
        let (rd, rs1, rs2, rs3) = (self.fr(), self.fr(), self.fr(), self.fr());
        let k = if self.flavour == Flavour::FpMove {
            self.rng.pick(&[7, 7, 15, 15, 11])
        } else {
            self.rng.below(16)
        };
        match k {
            0..=3 => {
                let k = self.rng.below(4) as u32;
                let name = ["fadd", "fsub", "fmul", "fdiv"][k as usize];
                self.w(
                    fp_type(k, fmt, rd, rm, rs1, rs2),
                    format!(
                        "{name}.{s} {}, {}, {}, {}",
                        fname(rd),
                        fname(rs1),
                        fname(rs2),
                        rmn(rm)
                    ),
                );
            }
            4 => self.w(
                fp_type(0x0b, fmt, rd, rm, rs1, 0),
                format!("fsqrt.{s} {}, {}, {}", fname(rd), fname(rs1), rmn(rm)),
            ),
            5 | 6 => {
                let k = self.rng.below(4) as u32;
                let op = [MADD, MSUB, NMSUB, NMADD][k as usize];
                let name = ["fmadd", "fmsub", "fnmsub", "fnmadd"][k as usize];
                self.w(
                    r4_type(op, rd, rm, rs1, rs2, fmt, rs3),
                    format!(
                        "{name}.{s} {}, {}, {}, {}, {}",
                        fname(rd),
                        fname(rs1),
                        fname(rs2),
                        fname(rs3),
                        rmn(rm)
                    ),
                );
            }
            7 => {
                let k = self.rng.below(3) as u32;
                let name = ["fsgnj", "fsgnjn", "fsgnjx"][k as usize];
                self.w(
                    fp_type(0x04, fmt, rd, k, rs1, rs2),
                    format!("{name}.{s} {}, {}, {}", fname(rd), fname(rs1), fname(rs2)),
                );
            }
            8 => {
                let k = self.rng.below(2) as u32;
                let name = ["fmin", "fmax"][k as usize];
                self.w(
                    fp_type(0x05, fmt, rd, k, rs1, rs2),
                    format!("{name}.{s} {}, {}, {}", fname(rd), fname(rs1), fname(rs2)),
                );
            }
            9 => {
                if fmt == 0 {
                    self.w(
                        fp_type(0x08, 0, rd, rm, rs1, 1),
                        format!("fcvt.s.d {}, {}, {}", fname(rd), fname(rs1), rmn(rm)),
                    );
                } else {
                    self.w(
                        fp_type(0x08, 1, rd, rm, rs1, 0),
                        format!("fcvt.d.s {}, {}, {}", fname(rd), fname(rs1), rmn(rm)),
                    );
                }
            }
            10 => {
                let k = self.rng.below(3) as u32;
                let name = ["fle", "flt", "feq"][k as usize];
                let xd = self.rd();
                self.w(
                    fp_type(0x14, fmt, xd, k, rs1, rs2),
                    format!("{name}.{s} {}, {}, {}", xn(xd), fname(rs1), fname(rs2)),
                );
            }
            11 => {
                let xd = self.rd();
                if self.flavour != Flavour::FpMove && self.rng.chance(50) {
                    self.w(
                        fp_type(0x1c, fmt, xd, 1, rs1, 0),
                        format!("fclass.{s} {}, {}", xn(xd), fname(rs1)),
                    );
                } else {
                    let n = if fmt == 0 { "fmv.x.w" } else { "fmv.x.d" };
                    self.w(
                        fp_type(0x1c, fmt, xd, 0, rs1, 0),
                        format!("{n} {}, {}", xn(xd), fname(rs1)),
                    );
                }
            }
            12 | 13 => {
                let k = self.rng.below(4) as u32;
                let it = ["w", "wu", "l", "lu"][k as usize];
                let xd = self.rd();
                self.w(
                    fp_type(0x18, fmt, xd, rm, rs1, k),
                    format!("fcvt.{it}.{s} {}, {}, {}", xn(xd), fname(rs1), rmn(rm)),
                );
            }
            14 => {
                let k = self.rng.below(4) as u32;
                let it = ["w", "wu", "l", "lu"][k as usize];
                let xs = self.rs();
                self.w(
                    fp_type(0x1a, fmt, rd, rm, xs, k),
                    format!("fcvt.{s}.{it} {}, {}, {}", fname(rd), xn(xs), rmn(rm)),
                );
            }
            _ => {
                let xs = self.rs();
                let n = if fmt == 0 { "fmv.w.x" } else { "fmv.d.x" };
                self.w(
                    fp_type(0x1e, fmt, rd, 0, xs, 0),
                    format!("{n} {}, {}", fname(rd), xn(xs)),
                );
            }
        }
    }

    fn one(&mut self) {
        let fp_weight = match (self.fp, self.flavour) {
            (false, _) => 0,
            (true, Flavour::Fp | Flavour::FpMove) => 60,
            (true, _) => 30,
        };
        if self.rng.below(100) < fp_weight {
            match self.rng.below(10) {
                0..=1 => self.fp_load_store(),
                2 => self.zicsr(),
                _ => self.fp_op(),
            }
        } else {
            match self.rng.below(40) {
                0..=7 => self.alu_rr(),
                8..=13 => self.alu_imm(),
                14 => self.upper(),
                15..=19 => self.load_store(),
                20..=22 => self.atomic(),
                23..=26 => self.control(),
                27 => {
                    if self.rng.chance(50) {
                        self.fence()
                    } else {
                        self.smc()
                    }
                }
                28 => self.zicsr(),
                _ => self.compressed_int(),
            }
        }
        self.end_group();
    }

    // ------------------------------------------------------------ faults

    /// `t = small unmapped address base` (below the ELF segment).
    fn unmapped_base(&mut self) -> u32 {
        let t = self.rd_nz();
        let k = self.rng.range(0, 14) as u32;
        self.w(u_type(LUI, t, k), format!("lui {}, {k:#x}", xn(t)));
        t
    }

    fn fault(&mut self) {
        match self.rng.below(9) {
            0 => {
                let t = self.unmapped_base();
                let off = self.rng.range(0, 2047) as i32;
                let rd = self.rd();
                if self.fp && self.rng.chance(30) {
                    let r = self.fr();
                    self.w(
                        i_type(LOAD_FP, r, 3, t, off),
                        format!("fld {}, {off}({})", fname(r), xn(t)),
                    );
                } else {
                    let (name, f3) = self.rng.pick(&[
                        ("lb", 0),
                        ("lh", 1),
                        ("lw", 2),
                        ("ld", 3),
                        ("lbu", 4),
                        ("lhu", 5),
                        ("lwu", 6),
                    ]);
                    self.w(
                        i_type(LOAD, rd, f3, t, off),
                        format!("{name} {}, {off}({})", xn(rd), xn(t)),
                    );
                }
            }
            1 => {
                let t = self.unmapped_base();
                let off = self.rng.range(0, 2047) as i32;
                let (name, f3) = self.rng.pick(&[("sb", 0), ("sh", 1), ("sw", 2), ("sd", 3)]);
                let rs = self.rs();
                self.w(
                    s_type(STORE, f3, t, rs, off),
                    format!("{name} {}, {off}({})", xn(rs), xn(t)),
                );
            }
            2 => {
                // AMO or LR to an unmapped, aligned address
                let t = self.rd_nz();
                let a = self.rng.range(0, 0xfff0) & !7;
                self.w(
                    u_type(LUI, t, (a >> 12) as u32),
                    format!("lui {}, {:#x}", xn(t), a >> 12),
                );
                if a & 0xfff != 0 {
                    self.w(
                        i_type(OP_IMM, t, 0, t, (a & 0x7ff) as i32),
                        format!("addi {}, {}, {}", xn(t), xn(t), a & 0x7ff),
                    );
                }
                let f3 = self.rng.pick(&[2, 3]);
                let rd = self.rd();
                if self.rng.chance(30) {
                    self.w(
                        amo(0x02, false, false, f3, rd, t, 0),
                        format!(
                            "lr.{} {}, ({})",
                            if f3 == 2 { "w" } else { "d" },
                            xn(rd),
                            xn(t)
                        ),
                    );
                } else {
                    let (name, f5) = self.rng.pick(&[
                        ("amoadd", 0u32),
                        ("amoswap", 1),
                        ("amoor", 8),
                        ("amomaxu", 0x1c),
                    ]);
                    let rs = self.rs();
                    self.w(
                        amo(f5, false, true, f3, rd, t, rs),
                        format!(
                            "{name}.{}.rl {}, {}, ({})",
                            if f3 == 2 { "w" } else { "d" },
                            xn(rd),
                            xn(rs),
                            xn(t)
                        ),
                    );
                }
            }
            3 => {
                // misaligned AMO or LR inside scratch
                let d = self.rng.chance(50);
                let (f3, wd) = if d { (3, 8) } else { (2, 4) };
                let base = self.rd_nz();
                let mut off = self.rng.range(SCR_LO, SCR_HI - 16);
                if off % wd == 0 {
                    off += self.rng.range(1, wd - 1);
                }
                self.w(
                    i_type(OP_IMM, base, 0, 3, off as i32),
                    format!("addi {}, gp, {off}", xn(base)),
                );
                let rd = self.rd();
                let sfx = if d { "d" } else { "w" };
                if self.rng.chance(30) {
                    self.w(
                        amo(0x02, false, false, f3, rd, base, 0),
                        format!("lr.{sfx} {}, ({})", xn(rd), xn(base)),
                    );
                } else {
                    let rs = self.rs();
                    self.w(
                        amo(0x00, true, false, f3, rd, base, rs),
                        format!("amoadd.{sfx}.aq {}, {}, ({})", xn(rd), xn(rs), xn(base)),
                    );
                }
            }
            4 => {
                // jump to an unmapped address
                let t = self.unmapped_base();
                let off = (self.rng.range(0, 1023) * 2) as i32;
                let rd = self.rd();
                self.w(
                    i_type(JALR, rd, 0, t, off),
                    format!("jalr {}, {off}({})", xn(rd), xn(t)),
                );
            }
            5 | 6 => match self.rng.below(if self.fp { 6 } else { 3 }) {
                0 => self.h(0, "c.unimp".into()),
                1 => self.w(csr(1, 0, 0, 0xc00), "csrrw zero, cycle, zero".into()),
                2 => {
                    let rd = self.rd();
                    self.w(
                        csr(2, rd, 0, 0x300),
                        format!("csrrs {}, mstatus, zero", xn(rd)),
                    )
                }
                3 => {
                    let rm = self.rng.pick(&[5, 6]);
                    let (rd, a, b) = (self.fr(), self.fr(), self.fr());
                    self.w(
                        fp_type(0, 1, rd, rm, a, b),
                        format!(
                            "fadd.d {}, {}, {}, {}",
                            fname(rd),
                            fname(a),
                            fname(b),
                            rmn(rm)
                        ),
                    );
                }
                4 => {
                    let bad = self.rng.range(5, 7) as u32;
                    self.w(csr(5, 0, bad, 2), format!("csrrwi zero, frm, {bad}"));
                    let (rd, a) = (self.fr(), self.rs());
                    self.w(
                        fp_type(0x1a, 1, rd, 7, a, 2),
                        format!("fcvt.d.l {}, {}, dyn", fname(rd), xn(a)),
                    );
                }
                _ => {
                    let f3 = self.rng.range(2, 7) as u32;
                    let (rd, a) = (self.rd(), self.fr());
                    self.w(
                        fp_type(0x1c, 0, rd, f3, a, 0),
                        format!("fmv.x.w/funct3={f3} {}, {}", xn(rd), fname(a)),
                    );
                }
            },
            7 => self.w(EBREAK, "ebreak".into()),
            _ => self.h(C_EBREAK, "c.ebreak".into()),
        }
    }
}

/// Generate the program for `seed` in `flavour`.
pub fn generate(seed: u64, flavour: Flavour) -> Program {
    let mut rng = Rng::new(seed.wrapping_mul(4).wrapping_add(flavour as u64));
    let mut init_x = [0u64; 32];
    for (i, x) in init_x.iter_mut().enumerate().skip(1) {
        *x = rng.int_value();
        // Some registers point into scratch so that random loads via them can land there.
        if i > 4 && rng.chance(5) {
            *x = GP;
        }
    }
    init_x[2] = SP;
    init_x[3] = GP;
    let mut init_f = [0u64; 32];
    for f in init_f.iter_mut() {
        *f = rng.freg_value();
    }
    let frm = rng.below(5) as u32;
    let init_fcsr = (frm << 5) as u64 | rng.below(32);
    let mut scratch = vec![0u8; SCRATCH_LEN as usize];
    for w in scratch.chunks_exact_mut(8) {
        let v = match rng.below(3) {
            0 => rng.int_value(),
            1 => rng.f64_value(),
            _ => rng.f32_value() as u64 | (rng.f32_value() as u64) << 32,
        };
        w.copy_from_slice(&v.to_le_bytes());
    }
    let fp = match flavour {
        Flavour::Int => false,
        Flavour::Fp | Flavour::Mixed | Flavour::FpMove => true,
        Flavour::Fault => seed % 2 == 1,
    };
    let mut g = Gen {
        rng,
        flavour,
        fp,
        frm,
        group: Vec::new(),
        body: Vec::new(),
    };
    let n = match flavour {
        Flavour::Fault => g.rng.range(0, 30),
        _ => g.rng.range(10, 80),
    };
    for _ in 0..n {
        g.one();
    }
    let fault = if flavour == Flavour::Fault {
        g.fault();
        Some(std::mem::take(&mut g.group))
    } else {
        None
    };
    let straddle = if g.rng.chance(50) {
        Some(g.rng.range(1, 200) as u64 * 2)
    } else {
        None
    };
    Program {
        seed,
        flavour,
        body: g.body,
        fault,
        init_x,
        init_f,
        init_fcsr,
        scratch,
        straddle,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn deterministic() {
        for f in Flavour::ALL {
            let a = crate::elf::build(&generate(42, f));
            let b = crate::elf::build(&generate(42, f));
            assert_eq!(a.segment, b.segment);
        }
    }

    /// Every instruction the generator knows shows up within a modest number of seeds.
    #[test]
    fn coverage() {
        let mut seen = BTreeSet::new();
        for f in Flavour::ALL {
            for seed in 0..1500 {
                let img = crate::elf::build(&generate(seed, f));
                for (_, _, t) in &img.listing {
                    let m = t.split_whitespace().next().unwrap_or("");
                    // strip AMO ordering suffixes
                    let m = m
                        .trim_end_matches(".aqrl")
                        .trim_end_matches(".aq")
                        .trim_end_matches(".rl");
                    seen.insert(m.to_string());
                }
            }
        }
        let want = "lui auipc jal jalr beq bne blt bge bltu bgeu lb lh lw ld lbu lhu lwu sb sh sw sd \
            addi slti sltiu xori ori andi slli srli srai addiw slliw srliw sraiw add sub sll slt sltu xor srl sra or and \
            addw subw sllw srlw sraw fence fence.i ebreak \
            mul mulh mulhsu mulhu div divu rem remu mulw divw divuw remw remuw \
            lr.w lr.d sc.w sc.d amoswap.w amoadd.w amoxor.w amoand.w amoor.w amomin.w amomax.w amominu.w amomaxu.w \
            amoswap.d amoadd.d amoxor.d amoand.d amoor.d amomin.d amomax.d amominu.d amomaxu.d \
            flw fsw fld fsd \
            fmadd.s fmsub.s fnmsub.s fnmadd.s fadd.s fsub.s fmul.s fdiv.s fsqrt.s fsgnj.s fsgnjn.s fsgnjx.s fmin.s fmax.s \
            fcvt.w.s fcvt.wu.s fcvt.l.s fcvt.lu.s fmv.x.w feq.s flt.s fle.s fclass.s fcvt.s.w fcvt.s.wu fcvt.s.l fcvt.s.lu fmv.w.x \
            fmadd.d fmsub.d fnmsub.d fnmadd.d fadd.d fsub.d fmul.d fdiv.d fsqrt.d fsgnj.d fsgnjn.d fsgnjx.d fmin.d fmax.d \
            fcvt.s.d fcvt.d.s fcvt.w.d fcvt.wu.d fcvt.l.d fcvt.lu.d fmv.x.d feq.d flt.d fle.d fclass.d fcvt.d.w fcvt.d.wu fcvt.d.l fcvt.d.lu fmv.d.x \
            csrrw csrrs csrrc csrrwi csrrsi csrrci \
            c.addi4spn c.fld c.lw c.ld c.fsd c.sw c.sd c.nop c.addi c.addiw c.li c.addi16sp c.lui c.srli c.srai c.andi \
            c.sub c.xor c.or c.and c.subw c.addw c.j c.beqz c.bnez c.slli c.fldsp c.lwsp c.ldsp c.jr c.mv c.ebreak c.jalr c.add \
            c.fsdsp c.swsp c.sdsp c.unimp";
        let missing: Vec<&str> = want
            .split_whitespace()
            .filter(|m| !seen.contains(*m))
            .collect();
        assert!(missing.is_empty(), "never generated: {missing:?}");
    }
}
