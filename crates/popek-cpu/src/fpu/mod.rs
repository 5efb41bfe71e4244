//! IEEE-754 binary32/binary64 arithmetic with exact RISC-V F/D semantics.
//!
//! The interpreter calls into this module for every F and D instruction. Host
//! Rust floats cannot be used directly: they always round to nearest-even,
//! expose no exception flags, and propagate NaN payloads, whereas RISC-V needs
//! five rounding modes, precise `fflags` (NV/DZ/OF/UF/NX, tininess detected
//! after rounding), canonical NaNs and saturating float-to-integer conversions.
//!
//! Values are raw IEEE bit patterns (`u32` for binary32, `u64` for binary64);
//! every function ORs the flags it raises into `*flags`.
//!
//! Implementation strategy (results are bit-exact with Berkeley SoftFloat's
//! RISC-V specialization, which is also what QEMU implements):
//! * add/sub/mul/div/sqrt/fma and f64->f32 narrowing in RNE, RTZ, RDN and
//!   RUP take a fast path (`fast.rs`): the host computes the round-to-nearest
//!   result with ordinary Rust floats, an error-free transformation (TwoSum,
//!   or an FMA residual; binary32 is computed exactly in binary64) gives the
//!   sign of the rounding error, which yields NX and the directed-rounding
//!   result one ulp away. The fast path only takes operands and results away
//!   from the overflow/underflow thresholds and never sees NaN or infinity.
//!   MXCSR is never touched. (An `asm!` version that switched MXCSR rounding
//!   modes per operation was measured 3-10x slower than this on the
//!   development host and was dropped.)
//! * Everything else (NaN/inf operands, DZ, overflow/underflow territory,
//!   round-to-nearest-max-magnitude, binary64 mul/div/sqrt/fma on hosts
//!   without FMA) falls back to `softfloat_wrapper` (RISC-V flavour).
//! * Conversions to/from integers, f32->f64 widening, min/max, comparisons and
//!   classification are implemented with integer arithmetic in plain Rust for
//!   all five rounding modes.

use softfloat_wrapper::{ExceptionFlags, Float, F32, F64};

/// Invalid operation.
pub const NV: u8 = 0x10;
/// Divide by zero.
pub const DZ: u8 = 0x08;
/// Overflow.
pub const OF: u8 = 0x04;
/// Underflow.
pub const UF: u8 = 0x02;
/// Inexact.
pub const NX: u8 = 0x01;

/// RISC-V static rounding modes (the `rm` field / `frm` CSR encoding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RoundingMode {
    /// Round to nearest, ties to even.
    Rne = 0,
    /// Round towards zero.
    Rtz = 1,
    /// Round down (towards -inf).
    Rdn = 2,
    /// Round up (towards +inf).
    Rup = 3,
    /// Round to nearest, ties to max magnitude.
    Rmm = 4,
}

/// The RISC-V canonical binary32 NaN.
pub const F32_CANONICAL_NAN: u32 = 0x7fc0_0000;
/// The RISC-V canonical binary64 NaN.
pub const F64_CANONICAL_NAN: u64 = 0x7ff8_0000_0000_0000;

const F32_SIGN: u32 = 0x8000_0000;
const F32_INF: u32 = 0x7f80_0000;
const F32_QUIET: u32 = 0x0040_0000;
const F64_SIGN: u64 = 0x8000_0000_0000_0000;
const F64_INF: u64 = 0x7ff0_0000_0000_0000;
const F64_QUIET: u64 = 0x0008_0000_0000_0000;

#[inline(always)]
fn f32_is_nan(a: u32) -> bool {
    a & !F32_SIGN > F32_INF
}
#[inline(always)]
fn f32_is_snan(a: u32) -> bool {
    f32_is_nan(a) && a & F32_QUIET == 0
}
#[inline(always)]
fn f64_is_nan(a: u64) -> bool {
    a & !F64_SIGN > F64_INF
}
#[inline(always)]
fn f64_is_snan(a: u64) -> bool {
    f64_is_nan(a) && a & F64_QUIET == 0
}

mod fast;

/// Whether the host has FMA (and the OS keeps the AVX registers it works on), asked of the
/// CPU once. The FPU's fast paths and the JIT's FMA instructions need it. Not
/// `is_x86_feature_detected!`: that probes every feature at its first use, about ten CPUID
/// instructions, and on a virtual machine each traps to the hypervisor (4.5 us here, a
/// tenth of `popek exec`'s start-up for all of them).
#[cfg(target_arch = "x86_64")]
pub fn host_has_fma() -> bool {
    use std::sync::atomic::{AtomicU8, Ordering};
    /// 0: not asked yet; 1: no; 2: yes.
    static FMA: AtomicU8 = AtomicU8::new(0);
    if cfg!(target_feature = "fma") {
        return true;
    }
    match FMA.load(Ordering::Relaxed) {
        0 => {
            let leaf1 = std::arch::x86_64::__cpuid(1);
            let (fma, osxsave, avx) = (1 << 12, 1 << 27, 1 << 28);
            let cpu = leaf1.ecx & (fma | osxsave | avx) == fma | osxsave | avx;
            // SAFETY: XGETBV is available when the OS sets OSXSAVE (checked first).
            // XCR0 bits 1 and 2: the OS saves the SSE and AVX registers.
            let yes = cpu && unsafe { std::arch::x86_64::_xgetbv(0) } & 6 == 6;
            FMA.store(1 + yes as u8, Ordering::Relaxed);
            yes
        }
        v => v == 2,
    }
}

// ---------------------------------------------------------------------------
// SoftFloat fallback (specials, extreme exponents, RMM, no host FMA).
// ---------------------------------------------------------------------------

mod soft {
    use super::*;
    use softfloat_wrapper::RoundingMode as SfRm;

    #[inline]
    pub(super) fn rm(rm: RoundingMode) -> SfRm {
        match rm {
            RoundingMode::Rne => SfRm::TiesToEven,
            RoundingMode::Rtz => SfRm::TowardZero,
            RoundingMode::Rdn => SfRm::TowardNegative,
            RoundingMode::Rup => SfRm::TowardPositive,
            RoundingMode::Rmm => SfRm::TiesToAway,
        }
    }

    /// Runs `f` with SoftFloat's (thread-local) flags cleared and ORs what it
    /// raised into `flags`. SoftFloat's flag bits equal the fflags layout.
    #[inline]
    pub(super) fn run<T>(flags: &mut u8, f: impl FnOnce() -> T) -> T {
        ExceptionFlags::from_bits(0).set();
        let r = f();
        let mut e = ExceptionFlags::default();
        e.get();
        *flags |= e.to_bits() & 0x1f;
        r
    }

    macro_rules! bin {
        ($name:ident, $ty:ident, $u:ty, $m:ident) => {
            #[cold]
            #[inline(never)]
            pub(super) fn $name(a: $u, b: $u, r: RoundingMode, flags: &mut u8) -> $u {
                run(flags, || {
                    $ty::from_bits(a).$m($ty::from_bits(b), rm(r)).to_bits()
                })
            }
        };
    }
    bin!(f32_add, F32, u32, add);
    bin!(f32_sub, F32, u32, sub);
    bin!(f32_mul, F32, u32, mul);
    bin!(f32_div, F32, u32, div);
    bin!(f64_add, F64, u64, add);
    bin!(f64_sub, F64, u64, sub);
    bin!(f64_mul, F64, u64, mul);
    bin!(f64_div, F64, u64, div);

    #[cold]
    #[inline(never)]
    pub(super) fn f32_sqrt(a: u32, r: RoundingMode, flags: &mut u8) -> u32 {
        run(flags, || F32::from_bits(a).sqrt(rm(r)).to_bits())
    }
    #[cold]
    #[inline(never)]
    pub(super) fn f64_sqrt(a: u64, r: RoundingMode, flags: &mut u8) -> u64 {
        run(flags, || F64::from_bits(a).sqrt(rm(r)).to_bits())
    }
    #[cold]
    #[inline(never)]
    pub(super) fn f32_fma(a: u32, b: u32, c: u32, r: RoundingMode, flags: &mut u8) -> u32 {
        run(flags, || {
            F32::from_bits(a)
                .fused_mul_add(F32::from_bits(b), F32::from_bits(c), rm(r))
                .to_bits()
        })
    }
    #[cold]
    #[inline(never)]
    pub(super) fn f64_fma(a: u64, b: u64, c: u64, r: RoundingMode, flags: &mut u8) -> u64 {
        run(flags, || {
            F64::from_bits(a)
                .fused_mul_add(F64::from_bits(b), F64::from_bits(c), rm(r))
                .to_bits()
        })
    }
    #[cold]
    #[inline(never)]
    pub(super) fn f64_to_f32(a: u64, r: RoundingMode, flags: &mut u8) -> u32 {
        run(flags, || F64::from_bits(a).to_f32(rm(r)).to_bits())
    }
}

// ---------------------------------------------------------------------------
// Arithmetic.
// ---------------------------------------------------------------------------

/// binary32 addition.
#[inline]
pub fn f32_add(a: u32, b: u32, rm: RoundingMode, flags: &mut u8) -> u32 {
    if rm != RoundingMode::Rmm {
        if let Some(r) = fast::f32_add(a, b, rm, flags) {
            return r;
        }
    }
    soft::f32_add(a, b, rm, flags)
}
/// binary32 subtraction.
#[inline]
pub fn f32_sub(a: u32, b: u32, rm: RoundingMode, flags: &mut u8) -> u32 {
    if rm != RoundingMode::Rmm {
        if let Some(r) = fast::f32_add(a, b ^ F32_SIGN, rm, flags) {
            return r;
        }
    }
    soft::f32_sub(a, b, rm, flags)
}
/// binary32 multiplication.
#[inline]
pub fn f32_mul(a: u32, b: u32, rm: RoundingMode, flags: &mut u8) -> u32 {
    if rm != RoundingMode::Rmm {
        if let Some(r) = fast::f32_mul(a, b, rm, flags) {
            return r;
        }
    }
    soft::f32_mul(a, b, rm, flags)
}
/// binary32 division.
#[inline]
pub fn f32_div(a: u32, b: u32, rm: RoundingMode, flags: &mut u8) -> u32 {
    if rm != RoundingMode::Rmm {
        if let Some(r) = fast::f32_div(a, b, rm, flags) {
            return r;
        }
    }
    soft::f32_div(a, b, rm, flags)
}
/// binary32 square root.
#[inline]
pub fn f32_sqrt(a: u32, rm: RoundingMode, flags: &mut u8) -> u32 {
    if rm != RoundingMode::Rmm {
        if let Some(r) = fast::f32_sqrt(a, rm, flags) {
            return r;
        }
    }
    soft::f32_sqrt(a, rm, flags)
}
/// binary32 fused `a * b + c` with a single rounding.
#[inline]
pub fn f32_fma(a: u32, b: u32, c: u32, rm: RoundingMode, flags: &mut u8) -> u32 {
    if rm != RoundingMode::Rmm {
        if let Some(r) = fast::f32_fma(a, b, c, rm, flags) {
            return r;
        }
    }
    soft::f32_fma(a, b, c, rm, flags)
}

/// binary64 addition.
#[inline]
pub fn f64_add(a: u64, b: u64, rm: RoundingMode, flags: &mut u8) -> u64 {
    if rm != RoundingMode::Rmm {
        if let Some(r) = fast::f64_add(a, b, rm, flags) {
            return r;
        }
    }
    soft::f64_add(a, b, rm, flags)
}
/// binary64 subtraction.
#[inline]
pub fn f64_sub(a: u64, b: u64, rm: RoundingMode, flags: &mut u8) -> u64 {
    if rm != RoundingMode::Rmm {
        if let Some(r) = fast::f64_add(a, b ^ F64_SIGN, rm, flags) {
            return r;
        }
    }
    soft::f64_sub(a, b, rm, flags)
}

macro_rules! fma_dispatch {
    ($name:ident ( $($arg:ident),* ; $rm:ident, $flags:ident )) => {
        #[cfg(target_arch = "x86_64")]
        if $rm != RoundingMode::Rmm && fast::fma::available() {
            // SAFETY: the host supports FMA (checked just above).
            if let Some(r) = unsafe { fast::fma::$name($($arg,)* $rm, $flags) } {
                return r;
            }
        }
        return soft::$name($($arg,)* $rm, $flags);
    };
}

/// binary64 multiplication.
#[inline]
pub fn f64_mul(a: u64, b: u64, rm: RoundingMode, flags: &mut u8) -> u64 {
    fma_dispatch!(f64_mul(a, b; rm, flags));
}
/// binary64 division.
#[inline]
pub fn f64_div(a: u64, b: u64, rm: RoundingMode, flags: &mut u8) -> u64 {
    fma_dispatch!(f64_div(a, b; rm, flags));
}
/// binary64 square root.
#[inline]
pub fn f64_sqrt(a: u64, rm: RoundingMode, flags: &mut u8) -> u64 {
    fma_dispatch!(f64_sqrt(a; rm, flags));
}
/// binary64 fused `a * b + c` with a single rounding.
#[inline]
pub fn f64_fma(a: u64, b: u64, c: u64, rm: RoundingMode, flags: &mut u8) -> u64 {
    fma_dispatch!(f64_fma(a, b, c; rm, flags));
}

// ---------------------------------------------------------------------------
// Min/max, comparisons, classification.
// ---------------------------------------------------------------------------

macro_rules! minmax {
    ($min:ident, $max:ident, $u:ty, $is_nan:ident, $is_snan:ident, $sign:expr, $canon:expr) => {
        /// Maps a non-NaN encoding to an unsigned key with the same total
        /// order (-0 < +0).
        #[inline(always)]
        fn key(a: $u) -> $u {
            if a & $sign != 0 {
                !a
            } else {
                a | $sign
            }
        }
        #[inline(always)]
        fn nan_case(a: $u, b: $u, flags: &mut u8) -> $u {
            if $is_snan(a) || $is_snan(b) {
                *flags |= NV;
            }
            match ($is_nan(a), $is_nan(b)) {
                (true, true) => $canon,
                (true, false) => b,
                _ => a,
            }
        }
        /// FMIN: IEEE 754-2019 minimumNumber, -0 < +0, NV only for sNaN.
        #[inline]
        pub fn $min(a: $u, b: $u, flags: &mut u8) -> $u {
            if $is_nan(a) || $is_nan(b) {
                return nan_case(a, b, flags);
            }
            if key(a) <= key(b) {
                a
            } else {
                b
            }
        }
        /// FMAX: IEEE 754-2019 maximumNumber, -0 < +0, NV only for sNaN.
        #[inline]
        pub fn $max(a: $u, b: $u, flags: &mut u8) -> $u {
            if $is_nan(a) || $is_nan(b) {
                return nan_case(a, b, flags);
            }
            if key(a) >= key(b) {
                a
            } else {
                b
            }
        }
    };
}

mod mm32 {
    use super::*;
    minmax!(
        f32_min,
        f32_max,
        u32,
        f32_is_nan,
        f32_is_snan,
        F32_SIGN,
        F32_CANONICAL_NAN
    );
}
mod mm64 {
    use super::*;
    minmax!(
        f64_min,
        f64_max,
        u64,
        f64_is_nan,
        f64_is_snan,
        F64_SIGN,
        F64_CANONICAL_NAN
    );
}
pub use mm32::{f32_max, f32_min};
pub use mm64::{f64_max, f64_min};

macro_rules! compares {
    ($eq:ident, $lt:ident, $le:ident, $u:ty, $f:ty, $is_nan:ident, $is_snan:ident) => {
        /// FEQ: quiet comparison (NV only for a signaling NaN operand).
        #[inline]
        pub fn $eq(a: $u, b: $u, flags: &mut u8) -> bool {
            if $is_nan(a) || $is_nan(b) {
                if $is_snan(a) || $is_snan(b) {
                    *flags |= NV;
                }
                return false;
            }
            <$f>::from_bits(a) == <$f>::from_bits(b)
        }
        /// FLT: signaling comparison (NV for any NaN operand).
        #[inline]
        pub fn $lt(a: $u, b: $u, flags: &mut u8) -> bool {
            if $is_nan(a) || $is_nan(b) {
                *flags |= NV;
                return false;
            }
            <$f>::from_bits(a) < <$f>::from_bits(b)
        }
        /// FLE: signaling comparison (NV for any NaN operand).
        #[inline]
        pub fn $le(a: $u, b: $u, flags: &mut u8) -> bool {
            if $is_nan(a) || $is_nan(b) {
                *flags |= NV;
                return false;
            }
            <$f>::from_bits(a) <= <$f>::from_bits(b)
        }
    };
}
compares!(f32_eq, f32_lt, f32_le, u32, f32, f32_is_nan, f32_is_snan);
compares!(f64_eq, f64_lt, f64_le, u64, f64, f64_is_nan, f64_is_snan);

#[inline(always)]
fn classify(neg: bool, exp_max: bool, exp_zero: bool, frac_zero: bool, quiet: bool) -> u64 {
    let bit = if exp_max {
        if frac_zero {
            if neg {
                0
            } else {
                7
            }
        } else if quiet {
            9
        } else {
            8
        }
    } else if exp_zero {
        match (neg, frac_zero) {
            (true, true) => 3,
            (true, false) => 2,
            (false, true) => 4,
            (false, false) => 5,
        }
    } else if neg {
        1
    } else {
        6
    };
    1 << bit
}

/// FCLASS.S: the 10-bit class mask.
#[inline]
pub fn f32_classify(a: u32) -> u64 {
    let e = (a >> 23) & 0xff;
    classify(
        a & F32_SIGN != 0,
        e == 0xff,
        e == 0,
        a & 0x7f_ffff == 0,
        a & F32_QUIET != 0,
    )
}

/// FCLASS.D: the 10-bit class mask.
#[inline]
pub fn f64_classify(a: u64) -> u64 {
    let e = (a >> 52) & 0x7ff;
    classify(
        a & F64_SIGN != 0,
        e == 0x7ff,
        e == 0,
        a & 0xf_ffff_ffff_ffff == 0,
        a & F64_QUIET != 0,
    )
}

// ---------------------------------------------------------------------------
// Float -> integer conversions (pure integer arithmetic, all modes).
// ---------------------------------------------------------------------------

/// Rounds the binary64 value `a` (not NaN) to an integer. Returns
/// `(negative, magnitude, inexact, huge)` where `huge` means |a| >= 2^64.
#[inline(always)]
fn f64_round_int(a: u64, rm: RoundingMode) -> (bool, u64, bool, bool) {
    let neg = a & F64_SIGN != 0;
    let exp = ((a >> 52) & 0x7ff) as i32;
    let frac = a & 0xf_ffff_ffff_ffff;
    if exp >= 1023 + 64 {
        return (neg, 0, false, true);
    }
    if exp == 0 && frac == 0 {
        return (neg, 0, false, false);
    }
    let (sig, e) = if exp == 0 {
        (frac, 1 - 1075)
    } else {
        (frac | 1 << 52, exp - 1075)
    };
    if e >= 0 {
        // e <= 11, so the shift cannot overflow.
        return (neg, sig << e, false, false);
    }
    let sh = (-e) as u32;
    let (int, half, sticky) = if sh >= 64 {
        (0, false, true)
    } else {
        let rem = sig & ((1u64 << sh) - 1);
        (
            sig >> sh,
            (rem >> (sh - 1)) & 1 != 0,
            rem & ((1u64 << (sh - 1)) - 1) != 0,
        )
    };
    let inexact = half || sticky;
    let inc = match rm {
        RoundingMode::Rne => half && (sticky || int & 1 != 0),
        RoundingMode::Rtz => false,
        RoundingMode::Rdn => neg && inexact,
        RoundingMode::Rup => !neg && inexact,
        RoundingMode::Rmm => half,
    };
    (neg, int + inc as u64, inexact, false)
}

/// Converts binary64 `a` to an integer with the given positive limit and
/// negative magnitude limit, applying RISC-V saturation. Returns the result
/// as two's-complement bits (to be truncated by the caller).
#[inline(always)]
fn f64_to_int(a: u64, rm: RoundingMode, flags: &mut u8, pos_max: u64, neg_max: u64) -> u64 {
    if f64_is_nan(a) {
        *flags |= NV;
        return pos_max;
    }
    let (neg, mag, inexact, huge) = f64_round_int(a, rm);
    if neg {
        if huge || mag > neg_max {
            *flags |= NV;
            return neg_max.wrapping_neg();
        }
        *flags |= inexact as u8 * NX;
        mag.wrapping_neg()
    } else {
        if huge || mag > pos_max {
            *flags |= NV;
            return pos_max;
        }
        *flags |= inexact as u8 * NX;
        mag
    }
}

#[inline(always)]
fn widen(a: u32) -> u64 {
    // Exact for every non-NaN value; NaNs stay NaNs.
    (f32::from_bits(a) as f64).to_bits()
}

const I32_LIM: (u64, u64) = (i32::MAX as u64, 1 << 31);
const U32_LIM: (u64, u64) = (u32::MAX as u64, 0);
const I64_LIM: (u64, u64) = (i64::MAX as u64, 1 << 63);
const U64_LIM: (u64, u64) = (u64::MAX, 0);

/// FCVT.W.D
#[inline]
pub fn f64_to_i32(a: u64, rm: RoundingMode, flags: &mut u8) -> i32 {
    f64_to_int(a, rm, flags, I32_LIM.0, I32_LIM.1) as i32
}
/// FCVT.WU.D
#[inline]
pub fn f64_to_u32(a: u64, rm: RoundingMode, flags: &mut u8) -> u32 {
    f64_to_int(a, rm, flags, U32_LIM.0, U32_LIM.1) as u32
}
/// FCVT.L.D
#[inline]
pub fn f64_to_i64(a: u64, rm: RoundingMode, flags: &mut u8) -> i64 {
    f64_to_int(a, rm, flags, I64_LIM.0, I64_LIM.1) as i64
}
/// FCVT.LU.D
#[inline]
pub fn f64_to_u64(a: u64, rm: RoundingMode, flags: &mut u8) -> u64 {
    f64_to_int(a, rm, flags, U64_LIM.0, U64_LIM.1)
}
/// FCVT.W.S
#[inline]
pub fn f32_to_i32(a: u32, rm: RoundingMode, flags: &mut u8) -> i32 {
    f64_to_int(widen(a), rm, flags, I32_LIM.0, I32_LIM.1) as i32
}
/// FCVT.WU.S
#[inline]
pub fn f32_to_u32(a: u32, rm: RoundingMode, flags: &mut u8) -> u32 {
    f64_to_int(widen(a), rm, flags, U32_LIM.0, U32_LIM.1) as u32
}
/// FCVT.L.S
#[inline]
pub fn f32_to_i64(a: u32, rm: RoundingMode, flags: &mut u8) -> i64 {
    f64_to_int(widen(a), rm, flags, I64_LIM.0, I64_LIM.1) as i64
}
/// FCVT.LU.S
#[inline]
pub fn f32_to_u64(a: u32, rm: RoundingMode, flags: &mut u8) -> u64 {
    f64_to_int(widen(a), rm, flags, U64_LIM.0, U64_LIM.1)
}

// ---------------------------------------------------------------------------
// Integer -> float conversions (pure integer arithmetic, all modes).
// ---------------------------------------------------------------------------

/// Rounds `±mag` to a float with `P` significand bits (incl. the implicit
/// one) and exponent bias `BIAS`; returns the bits without the sign.
/// Integers never overflow or underflow binary32/binary64.
#[inline(always)]
fn int_to_float<const P: u32, const BIAS: i32>(
    neg: bool,
    mag: u64,
    rm: RoundingMode,
    flags: &mut u8,
) -> u64 {
    if mag == 0 {
        return 0;
    }
    let msb = 63 - mag.leading_zeros();
    let sig = if msb < P {
        mag << (P - 1 - msb)
    } else {
        let sh = msb - (P - 1);
        let kept = mag >> sh;
        let rem = mag & ((1u64 << sh) - 1);
        let half = 1u64 << (sh - 1);
        if rem != 0 {
            *flags |= NX;
        }
        let inc = match rm {
            RoundingMode::Rne => rem > half || (rem == half && kept & 1 != 0),
            RoundingMode::Rtz => false,
            RoundingMode::Rdn => neg && rem != 0,
            RoundingMode::Rup => !neg && rem != 0,
            RoundingMode::Rmm => rem >= half,
        };
        kept + inc as u64
    };
    // A carry out of the significand bumps the exponent field by itself.
    (((msb as i32 + BIAS - 1) as u64) << (P - 1)) + sig
}

/// FCVT.S.W
#[inline]
pub fn i32_to_f32(v: i32, rm: RoundingMode, flags: &mut u8) -> u32 {
    let r = int_to_float::<24, 127>(v < 0, v.unsigned_abs() as u64, rm, flags) as u32;
    r | ((v < 0) as u32 * F32_SIGN)
}
/// FCVT.S.WU
#[inline]
pub fn u32_to_f32(v: u32, rm: RoundingMode, flags: &mut u8) -> u32 {
    int_to_float::<24, 127>(false, v as u64, rm, flags) as u32
}
/// FCVT.S.L
#[inline]
pub fn i64_to_f32(v: i64, rm: RoundingMode, flags: &mut u8) -> u32 {
    let r = int_to_float::<24, 127>(v < 0, v.unsigned_abs(), rm, flags) as u32;
    r | ((v < 0) as u32 * F32_SIGN)
}
/// FCVT.S.LU
#[inline]
pub fn u64_to_f32(v: u64, rm: RoundingMode, flags: &mut u8) -> u32 {
    int_to_float::<24, 127>(false, v, rm, flags) as u32
}
/// FCVT.D.W (always exact)
#[inline]
pub fn i32_to_f64(v: i32, rm: RoundingMode, flags: &mut u8) -> u64 {
    let r = int_to_float::<53, 1023>(v < 0, v.unsigned_abs() as u64, rm, flags);
    r | ((v < 0) as u64 * F64_SIGN)
}
/// FCVT.D.WU (always exact)
#[inline]
pub fn u32_to_f64(v: u32, rm: RoundingMode, flags: &mut u8) -> u64 {
    int_to_float::<53, 1023>(false, v as u64, rm, flags)
}
/// FCVT.D.L
#[inline]
pub fn i64_to_f64(v: i64, rm: RoundingMode, flags: &mut u8) -> u64 {
    let r = int_to_float::<53, 1023>(v < 0, v.unsigned_abs(), rm, flags);
    r | ((v < 0) as u64 * F64_SIGN)
}
/// FCVT.D.LU
#[inline]
pub fn u64_to_f64(v: u64, rm: RoundingMode, flags: &mut u8) -> u64 {
    int_to_float::<53, 1023>(false, v, rm, flags)
}

// ---------------------------------------------------------------------------
// Float <-> float.
// ---------------------------------------------------------------------------

/// FCVT.D.S: exact; NaN -> canonical NaN (NV for sNaN).
#[inline]
pub fn f32_to_f64(a: u32, flags: &mut u8) -> u64 {
    if f32_is_nan(a) {
        if a & F32_QUIET == 0 {
            *flags |= NV;
        }
        return F64_CANONICAL_NAN;
    }
    widen(a)
}

/// FCVT.S.D: rounded narrowing; NaN -> canonical NaN (NV for sNaN).
#[inline]
pub fn f64_to_f32(a: u64, rm: RoundingMode, flags: &mut u8) -> u32 {
    if rm != RoundingMode::Rmm {
        if let Some(r) = fast::f64_to_f32(a, rm, flags) {
            return r;
        }
    }
    soft::f64_to_f32(a, rm, flags)
}

#[cfg(test)]
mod tests;
