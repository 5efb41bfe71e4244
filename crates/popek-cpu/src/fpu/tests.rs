//! Differential tests against Berkeley SoftFloat (RISC-V specialization, via
//! `softfloat_wrapper`): result bits and flags, every rounding mode.

use super::*;
use softfloat_wrapper::RoundingMode as SfRm;

const MODES: [RoundingMode; 5] = [
    RoundingMode::Rne,
    RoundingMode::Rtz,
    RoundingMode::Rdn,
    RoundingMode::Rup,
    RoundingMode::Rmm,
];
const RANDOM_PER_FN: usize = 200_000;

fn srm(rm: RoundingMode) -> SfRm {
    soft::rm(rm)
}

/// Runs a SoftFloat computation with cleared flags; returns (result, flags).
fn sf<T>(f: impl FnOnce() -> T) -> (T, u8) {
    ExceptionFlags::from_bits(0).set();
    let r = f();
    let mut e = ExceptionFlags::default();
    e.get();
    (r, e.to_bits())
}

/// xorshift64* PRNG.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, s: &[T]) -> T {
        s[self.below(s.len() as u64) as usize]
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    F32,
    F64,
    I32,
    U32,
    I64,
    U64,
}

type Ours = fn(&[u64; 3], RoundingMode, &mut u8) -> u64;
type Refr = fn(&[u64; 3], SfRm) -> u64;

struct Case {
    name: &'static str,
    arity: usize,
    kind: Kind,
    /// false: the operation has no rounding mode; run it once.
    rounds: bool,
    ours: Ours,
    refr: Refr,
}

fn specials(kind: Kind) -> Vec<u64> {
    let mut v: Vec<u64> = Vec::new();
    match kind {
        Kind::F64 => {
            let vals: &[f64] = &[
                0.0,
                1.0,
                0.5,
                1.5,
                2.5,
                3.0,
                0.49999999999999994,
                0.9999999999999999,
                2147483647.0,
                2147483647.5,
                2147483648.0,
                2147483648.5,
                2147483649.0,
                4294967295.0,
                4294967295.5,
                4294967296.0,
                9223372036854774784.0,
                9223372036854775808.0,
                18446744073709549568.0,
                18446744073709551616.0,
                16777217.0,
                9007199254740993.0,
                f32::MAX as f64,
                f64::MAX,
                f64::INFINITY,
                1.0e-40,
                1.401298464324817e-45,
                7.006492321624085e-46,
                1.1754942106924411e-38,
                1.1754943508222875e-38,
                3.4028235677973366e38 + 1.0141204801825835e31,
                1.4916681462400413e-154,
                1.0 / 3.0,
                2.2250738585072014e-308,
            ];
            for &x in vals {
                v.push(x.to_bits());
            }
            v.extend_from_slice(&[
                1,
                0x000f_ffff_ffff_ffff,
                0x0010_0000_0000_0000,
                0x000f_ffff_ffff_fffe,
            ]);
            let n = v.len();
            for i in 0..n {
                v.push(v[i] | F64_SIGN);
            }
            v.extend_from_slice(&[
                0x7ff8_0000_0000_0000,
                0xfff8_0000_0000_0000,
                0x7ff8_0000_0000_0001,
                0x7ff0_0000_0000_0001,
                0xfff4_0000_0000_0000,
            ]);
        }
        Kind::F32 => {
            let bits: &[u32] = &[
                0,
                1,
                0x007f_ffff,
                0x0080_0000,
                0x0080_0001,
                0x3f80_0000,
                0x3f00_0000,
                0x3fc0_0000,
                0x4020_0000,
                0x4040_0000,
                0x3eff_ffff,
                0x3f7f_ffff,
                0x4eff_ffff,
                0x4f00_0000,
                0x4f00_0001,
                0x4f7f_ffff,
                0x4f80_0000,
                0x5eff_ffff,
                0x5f00_0000,
                0x5f7f_ffff,
                0x5f80_0000,
                0x4b80_0001,
                0x7f7f_ffff,
                0x7f7f_fffe,
                0x7f80_0000,
                0x3eaa_aaab,
                0x0000_0003,
                0x1f80_0000,
                0x2000_0000,
            ];
            for &x in bits {
                v.push(x as u64);
                v.push((x | F32_SIGN) as u64);
            }
            v.extend_from_slice(&[
                0x7fc0_0000,
                0xffc0_0000,
                0x7fc0_0001,
                0x7f80_0001,
                0xffa0_0000,
            ]);
        }
        Kind::I32 | Kind::U32 | Kind::I64 | Kind::U64 => {
            let mut ints: Vec<u64> = vec![0, 1, 2, 3, 1000];
            for k in [23u32, 24, 25, 31, 32, 52, 53, 54, 62, 63] {
                for d in [-3i64, -2, -1, 0, 1, 2, 3] {
                    ints.push((1u64 << k).wrapping_add(d as u64));
                }
            }
            ints.extend_from_slice(&[
                u64::MAX,
                u64::MAX - 1,
                i64::MAX as u64,
                0x8000_0000_0000_0001,
            ]);
            ints.extend_from_slice(&[
                0x0100_0001_0000_0001,
                0x0000_0000_0300_0001,
                0x0000_0000_0100_0003,
            ]);
            for x in ints.clone() {
                ints.push(x.wrapping_neg());
            }
            v = ints.into_iter().map(|x| trunc(kind, x)).collect();
        }
    }
    v.sort();
    v.dedup();
    v
}

fn trunc(kind: Kind, x: u64) -> u64 {
    match kind {
        Kind::F32 | Kind::I32 | Kind::U32 => x & 0xffff_ffff,
        _ => x,
    }
}

/// Biased random float with `eb` exponent bits and `mb` fraction bits.
fn gen_float(r: &mut Rng, eb: u32, mb: u32, kind: Kind) -> u64 {
    let bias = (1u64 << (eb - 1)) - 1;
    let emax = (1u64 << eb) - 1;
    let fmask = (1u64 << mb) - 1;
    let sign = (r.next() & 1) << (eb + mb);
    let frac = |r: &mut Rng| -> u64 {
        match r.below(6) {
            0 => 0,
            1 => fmask,
            2 => r.next() & r.next() & r.next() & fmask,
            3 => (r.next() | r.next() | r.next()) & fmask,
            4 => r.below(8) | (r.below(2) << (mb - 1)),
            _ => r.next() & fmask,
        }
    };
    match r.below(10) {
        0 | 1 => trunc(kind, r.next()),
        2 => r.pick(&specials(kind)),
        3 | 4 => {
            // Exponents near the edges: subnormal/normal boundary, overflow,
            // integer-conversion boundaries, f32 range (for narrowing).
            let e = match r.below(8) {
                0 => r.below(3),
                1 => emax - 1 - r.below(3),
                2 => emax,
                3 => bias - 2 + r.below(70),
                4 => bias.saturating_sub(160) + r.below(40),
                5 => bias + 120 + r.below(12),
                6 => bias - mb as u64 - 2 + r.below(5),
                _ => r.below(emax + 1),
            };
            sign | (e << mb) | frac(r)
        }
        5 | 6 => {
            // Small integers, halves and quarters.
            let i = r.below(4000) as f64 - 2000.0;
            let x = i / [1.0, 2.0, 4.0][r.below(3) as usize];
            if kind == Kind::F32 {
                (x as f32).to_bits() as u64
            } else {
                x.to_bits()
            }
        }
        7 => {
            // Uniform exponent.
            sign | (r.below(emax + 1) << mb) | frac(r)
        }
        _ => {
            // A few ulps away from a special value.
            let s = r.pick(&specials(kind));
            trunc(kind, s.wrapping_add(r.below(7)).wrapping_sub(3))
        }
    }
}

fn gen_int(r: &mut Rng, kind: Kind) -> u64 {
    let x = match r.below(6) {
        0 => r.next(),
        1 => r.below(2001).wrapping_sub(1000),
        2 => r.next() >> r.below(64),
        3 => {
            // Ties and near-ties at a random width.
            let s = r.below(64) as u32;
            let t = 1 + r.below(40) as u32;
            let x = r.next() >> s;
            let x = x & !((1u64 << t) - 1) | (1u64 << (t - 1));
            x.wrapping_add(r.below(3)).wrapping_sub(1)
        }
        4 => r.pick(&specials(kind)),
        _ => (r.next() >> r.below(64)).wrapping_neg(),
    };
    trunc(kind, x)
}

fn gen(r: &mut Rng, kind: Kind) -> u64 {
    match kind {
        Kind::F32 => gen_float(r, 8, 23, kind),
        Kind::F64 => gen_float(r, 11, 52, kind),
        _ => gen_int(r, kind),
    }
}

/// Random operands, sometimes correlated (cancellation, fma near -a*b).
fn gen_ops(r: &mut Rng, c: &Case) -> [u64; 3] {
    let mut o = [gen(r, c.kind), gen(r, c.kind), gen(r, c.kind)];
    let f = matches!(c.kind, Kind::F32 | Kind::F64);
    if f && c.arity >= 2 && r.below(4) == 0 {
        let sign = if c.kind == Kind::F32 {
            F32_SIGN as u64
        } else {
            F64_SIGN
        };
        o[1] = (o[0] ^ (sign * r.below(2)))
            .wrapping_add(r.below(9))
            .wrapping_sub(4);
        o[1] = trunc(c.kind, o[1]);
    }
    if f && c.arity == 3 && r.below(3) == 0 {
        let p = if c.kind == Kind::F32 {
            (-(f32::from_bits(o[0] as u32) * f32::from_bits(o[1] as u32))).to_bits() as u64
        } else {
            (-(f64::from_bits(o[0]) * f64::from_bits(o[1]))).to_bits()
        };
        o[2] = trunc(c.kind, p.wrapping_add(r.below(5)).wrapping_sub(2));
    }
    o
}

#[derive(Default)]
struct Checker {
    count: u64,
    fails: u64,
    msgs: Vec<String>,
}
impl Checker {
    fn run(&mut self, c: &Case, ops: &[u64; 3]) {
        let modes: &[RoundingMode] = if c.rounds { &MODES } else { &MODES[..1] };
        for &rm in modes {
            let mut fl = 0u8;
            let got = (c.ours)(ops, rm, &mut fl);
            let (exp, efl) = sf(|| (c.refr)(ops, srm(rm)));
            self.count += 1;
            if got != exp || fl != efl {
                self.fails += 1;
                if self.msgs.len() < 20 {
                    self.msgs.push(format!(
                        "{} {:x?} {:?}: got {:#x} flags {:#04x}, softfloat {:#x} flags {:#04x}",
                        c.name,
                        &ops[..c.arity],
                        rm,
                        got,
                        fl,
                        exp,
                        efl
                    ));
                }
            }
        }
    }
    fn finish(self, what: &str) {
        assert!(self.count > 0, "{what}: nothing tested");
        assert!(
            self.fails == 0,
            "{what}: {} of {} mismatches:\n{}",
            self.fails,
            self.count,
            self.msgs.join("\n")
        );
    }
}

fn check_cases(what: &str, cases: &[Case], seed: u64) {
    let mut ck = Checker::default();
    for c in cases {
        // (1) all combinations of special operands.
        let s = specials(c.kind);
        let idx = |i: usize, k: usize| s[(i / s.len().pow(k as u32)) % s.len()];
        for i in 0..s.len().pow(c.arity as u32) {
            ck.run(c, &[idx(i, 0), idx(i, 1), idx(i, 2)]);
        }
        // (2) biased random operands.
        let mut r = Rng(seed ^ 0x9e37_79b9_7f4a_7c15);
        for _ in 0..RANDOM_PER_FN {
            let ops = gen_ops(&mut r, c);
            ck.run(c, &ops);
        }
    }
    ck.finish(what);
}

macro_rules! case {
    ($name:expr, $arity:expr, $kind:ident, $rounds:expr, $ours:expr, $refr:expr) => {
        Case {
            name: $name,
            arity: $arity,
            kind: Kind::$kind,
            rounds: $rounds,
            ours: $ours,
            refr: $refr,
        }
    };
}

fn f32s(x: u64) -> F32 {
    F32::from_bits(x as u32)
}
fn f64s(x: u64) -> F64 {
    F64::from_bits(x)
}

#[test]
fn arith_f32() {
    check_cases(
        "arith_f32",
        &[
            case!(
                "f32_add",
                2,
                F32,
                true,
                |o, m, f| f32_add(o[0] as u32, o[1] as u32, m, f) as u64,
                |o, m| f32s(o[0]).add(f32s(o[1]), m).to_bits() as u64
            ),
            case!(
                "f32_sub",
                2,
                F32,
                true,
                |o, m, f| f32_sub(o[0] as u32, o[1] as u32, m, f) as u64,
                |o, m| f32s(o[0]).sub(f32s(o[1]), m).to_bits() as u64
            ),
            case!(
                "f32_mul",
                2,
                F32,
                true,
                |o, m, f| f32_mul(o[0] as u32, o[1] as u32, m, f) as u64,
                |o, m| f32s(o[0]).mul(f32s(o[1]), m).to_bits() as u64
            ),
            case!(
                "f32_div",
                2,
                F32,
                true,
                |o, m, f| f32_div(o[0] as u32, o[1] as u32, m, f) as u64,
                |o, m| f32s(o[0]).div(f32s(o[1]), m).to_bits() as u64
            ),
            case!(
                "f32_sqrt",
                1,
                F32,
                true,
                |o, m, f| f32_sqrt(o[0] as u32, m, f) as u64,
                |o, m| f32s(o[0]).sqrt(m).to_bits() as u64
            ),
        ],
        1,
    );
}

#[test]
fn arith_f64() {
    check_cases(
        "arith_f64",
        &[
            case!(
                "f64_add",
                2,
                F64,
                true,
                |o, m, f| f64_add(o[0], o[1], m, f),
                |o, m| f64s(o[0]).add(f64s(o[1]), m).to_bits()
            ),
            case!(
                "f64_sub",
                2,
                F64,
                true,
                |o, m, f| f64_sub(o[0], o[1], m, f),
                |o, m| f64s(o[0]).sub(f64s(o[1]), m).to_bits()
            ),
            case!(
                "f64_mul",
                2,
                F64,
                true,
                |o, m, f| f64_mul(o[0], o[1], m, f),
                |o, m| f64s(o[0]).mul(f64s(o[1]), m).to_bits()
            ),
            case!(
                "f64_div",
                2,
                F64,
                true,
                |o, m, f| f64_div(o[0], o[1], m, f),
                |o, m| f64s(o[0]).div(f64s(o[1]), m).to_bits()
            ),
            case!(
                "f64_sqrt",
                1,
                F64,
                true,
                |o, m, f| f64_sqrt(o[0], m, f),
                |o, m| f64s(o[0]).sqrt(m).to_bits()
            ),
        ],
        2,
    );
}

#[test]
fn fma_f32() {
    check_cases(
        "fma_f32",
        &[case!(
            "f32_fma",
            3,
            F32,
            true,
            |o, m, f| f32_fma(o[0] as u32, o[1] as u32, o[2] as u32, m, f) as u64,
            |o, m| f32s(o[0])
                .fused_mul_add(f32s(o[1]), f32s(o[2]), m)
                .to_bits() as u64
        )],
        3,
    );
}

#[test]
fn fma_f64() {
    check_cases(
        "fma_f64",
        &[case!(
            "f64_fma",
            3,
            F64,
            true,
            |o, m, f| f64_fma(o[0], o[1], o[2], m, f),
            |o, m| f64s(o[0])
                .fused_mul_add(f64s(o[1]), f64s(o[2]), m)
                .to_bits()
        )],
        4,
    );
}

#[test]
fn float_to_int() {
    check_cases(
        "float_to_int",
        &[
            case!(
                "f32_to_i32",
                1,
                F32,
                true,
                |o, m, f| f32_to_i32(o[0] as u32, m, f) as u32 as u64,
                |o, m| f32s(o[0]).to_i32(m, true) as u32 as u64
            ),
            case!(
                "f32_to_u32",
                1,
                F32,
                true,
                |o, m, f| f32_to_u32(o[0] as u32, m, f) as u64,
                |o, m| f32s(o[0]).to_u32(m, true) as u64
            ),
            case!(
                "f32_to_i64",
                1,
                F32,
                true,
                |o, m, f| f32_to_i64(o[0] as u32, m, f) as u64,
                |o, m| f32s(o[0]).to_i64(m, true) as u64
            ),
            case!(
                "f32_to_u64",
                1,
                F32,
                true,
                |o, m, f| f32_to_u64(o[0] as u32, m, f),
                |o, m| f32s(o[0]).to_u64(m, true)
            ),
            case!(
                "f64_to_i32",
                1,
                F64,
                true,
                |o, m, f| f64_to_i32(o[0], m, f) as u32 as u64,
                |o, m| f64s(o[0]).to_i32(m, true) as u32 as u64
            ),
            case!(
                "f64_to_u32",
                1,
                F64,
                true,
                |o, m, f| f64_to_u32(o[0], m, f) as u64,
                |o, m| f64s(o[0]).to_u32(m, true) as u64
            ),
            case!(
                "f64_to_i64",
                1,
                F64,
                true,
                |o, m, f| f64_to_i64(o[0], m, f) as u64,
                |o, m| f64s(o[0]).to_i64(m, true) as u64
            ),
            case!(
                "f64_to_u64",
                1,
                F64,
                true,
                |o, m, f| f64_to_u64(o[0], m, f),
                |o, m| f64s(o[0]).to_u64(m, true)
            ),
        ],
        5,
    );
}

#[test]
fn int_to_float() {
    check_cases(
        "int_to_float",
        &[
            case!(
                "i32_to_f32",
                1,
                I32,
                true,
                |o, m, f| i32_to_f32(o[0] as i32, m, f) as u64,
                |o, m| F32::from_i32(o[0] as i32, m).to_bits() as u64
            ),
            case!(
                "u32_to_f32",
                1,
                U32,
                true,
                |o, m, f| u32_to_f32(o[0] as u32, m, f) as u64,
                |o, m| F32::from_u32(o[0] as u32, m).to_bits() as u64
            ),
            case!(
                "i64_to_f32",
                1,
                I64,
                true,
                |o, m, f| i64_to_f32(o[0] as i64, m, f) as u64,
                |o, m| F32::from_i64(o[0] as i64, m).to_bits() as u64
            ),
            case!(
                "u64_to_f32",
                1,
                U64,
                true,
                |o, m, f| u64_to_f32(o[0], m, f) as u64,
                |o, m| F32::from_u64(o[0], m).to_bits() as u64
            ),
            case!(
                "i32_to_f64",
                1,
                I32,
                true,
                |o, m, f| i32_to_f64(o[0] as i32, m, f),
                |o, m| F64::from_i32(o[0] as i32, m).to_bits()
            ),
            case!(
                "u32_to_f64",
                1,
                U32,
                true,
                |o, m, f| u32_to_f64(o[0] as u32, m, f),
                |o, m| F64::from_u32(o[0] as u32, m).to_bits()
            ),
            case!(
                "i64_to_f64",
                1,
                I64,
                true,
                |o, m, f| i64_to_f64(o[0] as i64, m, f),
                |o, m| F64::from_i64(o[0] as i64, m).to_bits()
            ),
            case!(
                "u64_to_f64",
                1,
                U64,
                true,
                |o, m, f| u64_to_f64(o[0], m, f),
                |o, m| F64::from_u64(o[0], m).to_bits()
            ),
        ],
        6,
    );
}

#[test]
fn float_to_float() {
    check_cases(
        "float_to_float",
        &[
            case!(
                "f32_to_f64",
                1,
                F32,
                false,
                |o, _, f| f32_to_f64(o[0] as u32, f),
                |o, m| f32s(o[0]).to_f64(m).to_bits()
            ),
            case!(
                "f64_to_f32",
                1,
                F64,
                true,
                |o, m, f| f64_to_f32(o[0], m, f) as u64,
                |o, m| f64s(o[0]).to_f32(m).to_bits() as u64
            ),
        ],
        7,
    );
}

/// Reference minimumNumber/maximumNumber built from SoftFloat primitives.
fn ref_minmax<T: Float + Copy>(a: T, b: T, max: bool) -> Option<T> {
    if a.is_signaling_nan() || b.is_signaling_nan() {
        let mut e = ExceptionFlags::default();
        e.get();
        ExceptionFlags::from_bits(e.to_bits() | NV).set();
    }
    match (a.is_nan(), b.is_nan()) {
        (true, true) => None,
        (true, false) => Some(b),
        (false, true) => Some(a),
        _ => {
            let a_first = if max {
                b.lt_quiet(a) || (a.eq(b) && !a.is_negative())
            } else {
                a.lt_quiet(b) || (a.eq(b) && a.is_negative())
            };
            Some(if a_first { a } else { b })
        }
    }
}

#[test]
fn min_max() {
    check_cases(
        "min_max",
        &[
            case!(
                "f32_min",
                2,
                F32,
                false,
                |o, _, f| f32_min(o[0] as u32, o[1] as u32, f) as u64,
                |o, _| ref_minmax(f32s(o[0]), f32s(o[1]), false)
                    .map_or(0x7fc0_0000, |x| x.to_bits() as u64)
            ),
            case!(
                "f32_max",
                2,
                F32,
                false,
                |o, _, f| f32_max(o[0] as u32, o[1] as u32, f) as u64,
                |o, _| ref_minmax(f32s(o[0]), f32s(o[1]), true)
                    .map_or(0x7fc0_0000, |x| x.to_bits() as u64)
            ),
            case!(
                "f64_min",
                2,
                F64,
                false,
                |o, _, f| f64_min(o[0], o[1], f),
                |o, _| ref_minmax(f64s(o[0]), f64s(o[1]), false)
                    .map_or(F64_CANONICAL_NAN, |x| x.to_bits())
            ),
            case!(
                "f64_max",
                2,
                F64,
                false,
                |o, _, f| f64_max(o[0], o[1], f),
                |o, _| ref_minmax(f64s(o[0]), f64s(o[1]), true)
                    .map_or(F64_CANONICAL_NAN, |x| x.to_bits())
            ),
        ],
        8,
    );
}

#[test]
fn compare() {
    check_cases(
        "compare",
        &[
            case!(
                "f32_eq",
                2,
                F32,
                false,
                |o, _, f| f32_eq(o[0] as u32, o[1] as u32, f) as u64,
                |o, _| f32s(o[0]).eq(f32s(o[1])) as u64
            ),
            case!(
                "f32_lt",
                2,
                F32,
                false,
                |o, _, f| f32_lt(o[0] as u32, o[1] as u32, f) as u64,
                |o, _| f32s(o[0]).lt(f32s(o[1])) as u64
            ),
            case!(
                "f32_le",
                2,
                F32,
                false,
                |o, _, f| f32_le(o[0] as u32, o[1] as u32, f) as u64,
                |o, _| f32s(o[0]).le(f32s(o[1])) as u64
            ),
            case!(
                "f64_eq",
                2,
                F64,
                false,
                |o, _, f| f64_eq(o[0], o[1], f) as u64,
                |o, _| f64s(o[0]).eq(f64s(o[1])) as u64
            ),
            case!(
                "f64_lt",
                2,
                F64,
                false,
                |o, _, f| f64_lt(o[0], o[1], f) as u64,
                |o, _| f64s(o[0]).lt(f64s(o[1])) as u64
            ),
            case!(
                "f64_le",
                2,
                F64,
                false,
                |o, _, f| f64_le(o[0], o[1], f) as u64,
                |o, _| f64s(o[0]).le(f64s(o[1])) as u64
            ),
        ],
        9,
    );
}

/// Reference FCLASS built from SoftFloat predicates.
fn ref_classify<T: Float>(a: T) -> u64 {
    let preds = [
        a.is_negative_infinity(),
        a.is_negative_normal(),
        a.is_negative_subnormal(),
        a.is_negative_zero(),
        a.is_positive_zero(),
        a.is_positive_subnormal(),
        a.is_positive_normal(),
        a.is_positive_infinity(),
        a.is_signaling_nan(),
        a.is_nan() && !a.is_signaling_nan(),
    ];
    assert_eq!(preds.iter().filter(|&&p| p).count(), 1);
    preds
        .iter()
        .enumerate()
        .map(|(i, &p)| (p as u64) << i)
        .sum()
}

#[test]
fn classify() {
    check_cases(
        "classify",
        &[
            case!(
                "f32_classify",
                1,
                F32,
                false,
                |o, _, _| f32_classify(o[0] as u32),
                |o, _| ref_classify(f32s(o[0]))
            ),
            case!(
                "f64_classify",
                1,
                F64,
                false,
                |o, _, _| f64_classify(o[0]),
                |o, _| ref_classify(f64s(o[0]))
            ),
        ],
        10,
    );
}

/// Hand-checked values straight from the RISC-V specification.
#[test]
fn riscv_spec_examples() {
    use RoundingMode::*;
    let mut f = 0;
    // Canonical NaN from invalid operations; no payload propagation.
    assert_eq!(f32_div(0, 0, Rne, &mut f), 0x7fc0_0000);
    assert_eq!(f, NV);
    f = 0;
    assert_eq!(
        f64_add(0x7ff8_0000_dead_beef, 0x3ff0_0000_0000_0000, Rne, &mut f),
        F64_CANONICAL_NAN
    );
    assert_eq!(f, 0);
    assert_eq!(f32_sqrt(0xbf80_0000, Rtz, &mut f), F32_CANONICAL_NAN);
    assert_eq!(f, NV);
    // fmin(-0, +0) = -0, fmax(-0, +0) = +0, in both operand orders.
    f = 0;
    assert_eq!(f32_min(0x8000_0000, 0, &mut f), 0x8000_0000);
    assert_eq!(f32_min(0, 0x8000_0000, &mut f), 0x8000_0000);
    assert_eq!(f64_max(F64_SIGN, 0, &mut f), 0);
    assert_eq!(f64_max(0, F64_SIGN, &mut f), 0);
    assert_eq!(f, 0);
    // fmin with one quiet NaN returns the other operand, no flag; two NaNs
    // give the canonical NaN; a signaling NaN raises NV.
    assert_eq!(f32_min(0x7fc0_0001, 0x3f80_0000, &mut f), 0x3f80_0000);
    assert_eq!(f, 0);
    assert_eq!(f32_max(0xffc0_0001, 0x7fc1_0000, &mut f), F32_CANONICAL_NAN);
    assert_eq!(f, 0);
    assert_eq!(
        f64_min(0x7ff0_0000_0000_0001, 0x4000_0000_0000_0000, &mut f),
        0x4000_0000_0000_0000
    );
    assert_eq!(f, NV);
    // fcvt.wu.s(-1.5) = 0 with NV (no NX); fcvt.wu.s(-0.4, rne) = 0 with NX.
    f = 0;
    assert_eq!(f32_to_u32(0xbfc0_0000, Rne, &mut f), 0);
    assert_eq!(f, NV);
    f = 0;
    assert_eq!(f32_to_u32(0xbecc_cccd, Rne, &mut f), 0);
    assert_eq!(f, NX);
    // fcvt.w.s(-0.5, rtz) = 0 with NX only.
    f = 0;
    assert_eq!(f32_to_i32(0xbf00_0000, Rtz, &mut f), 0);
    assert_eq!(f, NX);
    // fcvt.w.s(NaN) = 0x7fffffff with NV; -inf -> INT_MIN; +inf -> INT_MAX.
    f = 0;
    assert_eq!(f32_to_i32(0xffc0_0000, Rne, &mut f), 0x7fff_ffff);
    assert_eq!(f, NV);
    assert_eq!(f64_to_i64(0xfff0_0000_0000_0000, Rne, &mut f), i64::MIN);
    assert_eq!(f32_to_u64(0x7fc0_0000, Rne, &mut f), u64::MAX);
    assert_eq!(f64_to_u32(0x41f0_0000_0000_0000, Rne, &mut f), u32::MAX); // 2^32
                                                                          // fma(inf, 0, qNaN) is invalid.
    f = 0;
    assert_eq!(
        f64_fma(F64_INF, 0, F64_CANONICAL_NAN, Rne, &mut f),
        F64_CANONICAL_NAN
    );
    assert_eq!(f, NV);
    f = 0;
    assert_eq!(
        f32_fma(0, 0xff80_0000, 0x7fc0_0000, Rup, &mut f),
        F32_CANONICAL_NAN
    );
    assert_eq!(f, NV);
    // x + (-x) is +0, except -0 under RDN.
    f = 0;
    assert_eq!(
        f64_add(0x3ff0_0000_0000_0000, 0xbff0_0000_0000_0000, Rne, &mut f),
        0
    );
    assert_eq!(
        f64_add(0x3ff0_0000_0000_0000, 0xbff0_0000_0000_0000, Rdn, &mut f),
        F64_SIGN
    );
    assert_eq!(f32_sub(0x3f80_0000, 0x3f80_0000, Rdn, &mut f), F32_SIGN);
    assert_eq!(f, 0);
    // Tininess after rounding: 0x1.fffffep-127 * (1 + 2^-24)... the
    // smallest normal reached by rounding is not an underflow.
    f = 0;
    let x = f32_mul(0x007f_ffff, 0x3f80_0001, Rup, &mut f); // rounds up to 2^-126
    assert_eq!(x, 0x0080_0000);
    assert_eq!(f, NX);
    // Conversions of the sNaN NaN-box helpers.
    f = 0;
    assert_eq!(f32_to_f64(0x7f80_0001, &mut f), F64_CANONICAL_NAN);
    assert_eq!(f, NV);
    assert_eq!(f32_classify(0x7f80_0001), 1 << 8);
    assert_eq!(f64_classify(F64_CANONICAL_NAN), 1 << 9);
    assert_eq!(f64_classify(F64_SIGN), 1 << 3);
}

/// popek's own FMA probe (one CPUID, see `host_has_fma`) answers as std's full detection does,
/// the first time and from its cache.
#[cfg(target_arch = "x86_64")]
#[test]
fn host_fma_probe_agrees_with_std() {
    let std_says = std::arch::is_x86_feature_detected!("fma");
    assert_eq!(host_has_fma(), std_says);
    assert_eq!(host_has_fma(), std_says);
}
