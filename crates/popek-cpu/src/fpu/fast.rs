//! Fast path: host round-to-nearest arithmetic plus exact error terms.
//!
//! The host computes the round-to-nearest-even result `r`; an error-free
//! transformation (TwoSum, or an FMA residual) gives the sign of `exact - r`.
//! That yields NX and, by stepping `r` one ulp, the RTZ/RDN/RUP results. The
//! fast path only accepts operands and results far enough from the overflow
//! and underflow thresholds that OF/UF cannot occur and the error terms are
//! exact; everything else (NaN, inf, DZ, extreme exponents, RMM) returns
//! `None` and goes to SoftFloat. MXCSR is never touched.

use super::*;

#[inline(always)]
fn e32(a: u32) -> u32 {
    (a >> 23) & 0xff
}
#[inline(always)]
fn e64(a: u64) -> u64 {
    (a >> 52) & 0x7ff
}

/// Adjusts the round-to-nearest result `r` (bits of a nonzero finite
/// value whose neighbours are finite and normal) to `rm`, given whether
/// the exact value is greater (`gt`) or less (`lt`) than `r`.
#[inline(always)]
fn adjust(r: u64, neg: bool, gt: bool, lt: bool, rm: RoundingMode, flags: &mut u8) -> u64 {
    if !(gt || lt) {
        return r;
    }
    *flags |= NX;
    // In sign-magnitude encoding +1 grows the magnitude, -1 shrinks it.
    let away = if neg { lt } else { gt };
    match rm {
        RoundingMode::Rne | RoundingMode::Rmm => r,
        RoundingMode::Rtz => r - (!away) as u64,
        RoundingMode::Rup => {
            if !gt {
                r
            } else if neg {
                r - 1
            } else {
                r + 1
            }
        }
        RoundingMode::Rdn => {
            if !lt {
                r
            } else if neg {
                r + 1
            } else {
                r - 1
            }
        }
    }
}

/// Sign of an exact zero sum `x + y` (operand bits given by their sign
/// bits `sx`, `sy`): same-sign zeros keep it, otherwise -0 only in RDN.
#[inline(always)]
fn zero_sum_negative(sx: bool, sy: bool, rm: RoundingMode) -> bool {
    if sx == sy {
        sx
    } else {
        rm == RoundingMode::Rdn
    }
}

/// TwoSum: s + e == x + y exactly (no overflow).
#[inline(always)]
fn two_sum(x: f64, y: f64) -> (f64, f64) {
    let s = x + y;
    let bb = s - x;
    (s, (x - (s - bb)) + (y - bb))
}

// ----- binary32: computed in f64 (exact products, round-to-odd sums) --

/// Rounds the exact value `s + e` (TwoSum pair) to binary32 and applies
/// `rm`. Returns `None` near the overflow/underflow thresholds.
#[inline(always)]
fn round_pair32(s: f64, e: f64, rm: RoundingMode, flags: &mut u8) -> Option<u32> {
    let mut b = s.to_bits();
    if e != 0.0 && b & 1 == 0 {
        // Round to odd so that the final rounding to 24 bits is exact.
        b = if (e > 0.0) == (s > 0.0) { b + 1 } else { b - 1 };
    }
    let r = f64::from_bits(b) as f32;
    let rb = r.to_bits();
    if !(2..254).contains(&e32(rb)) {
        return None;
    }
    let d = s - r as f64; // exact (Sterbenz)
    let (gt, lt) = if d != 0.0 {
        (d > 0.0, d < 0.0)
    } else {
        (e > 0.0, e < 0.0)
    };
    Some(adjust(rb as u64, rb >> 31 != 0, gt, lt, rm, flags) as u32)
}

#[inline(always)]
pub(super) fn f32_add(a: u32, b: u32, rm: RoundingMode, flags: &mut u8) -> Option<u32> {
    if e32(a) == 0xff || e32(b) == 0xff {
        return None;
    }
    let (x, y) = (f32::from_bits(a) as f64, f32::from_bits(b) as f64);
    let (s, e) = two_sum(x, y);
    if s == 0.0 {
        // Exact: a sum of binary32 values never rounds to zero.
        let neg = zero_sum_negative(a >> 31 != 0, b >> 31 != 0, rm);
        return Some((neg as u32) << 31);
    }
    if s.abs() < f64::from_bits((1023 - 125) << 52) {
        // Sums below 2^-125 are exact multiples of 2^-149 (no NX/UF).
        return Some((s as f32).to_bits());
    }
    round_pair32(s, e, rm, flags)
}

#[inline(always)]
pub(super) fn f32_mul(a: u32, b: u32, rm: RoundingMode, flags: &mut u8) -> Option<u32> {
    if e32(a) == 0xff || e32(b) == 0xff {
        return None;
    }
    let p = f32::from_bits(a) as f64 * f32::from_bits(b) as f64; // exact
    if p == 0.0 {
        return Some((p as f32).to_bits());
    }
    round_pair32(p, 0.0, rm, flags)
}

#[inline(always)]
pub(super) fn f32_div(a: u32, b: u32, rm: RoundingMode, flags: &mut u8) -> Option<u32> {
    if e32(a) == 0xff || e32(b) == 0xff || b << 1 == 0 {
        return None;
    }
    let (x, y) = (f32::from_bits(a) as f64, f32::from_bits(b) as f64);
    // Double rounding 53 -> 24 bits is innocuous for division (53 >= 2*24+2).
    let r = (x / y) as f32;
    if a << 1 == 0 {
        return Some(r.to_bits());
    }
    let rb = r.to_bits();
    if !(2..254).contains(&e32(rb)) {
        return None;
    }
    let rem = x - r as f64 * y; // product exact (48 bits), difference exact
    let up = (rem > 0.0) == (y > 0.0);
    Some(adjust(
        rb as u64,
        rb >> 31 != 0,
        rem != 0.0 && up,
        rem != 0.0 && !up,
        rm,
        flags,
    ) as u32)
}

#[inline(always)]
pub(super) fn f32_sqrt(a: u32, rm: RoundingMode, flags: &mut u8) -> Option<u32> {
    if a << 1 == 0 {
        return Some(a);
    }
    if a >> 31 != 0 || e32(a) == 0xff {
        return None;
    }
    let x = f32::from_bits(a) as f64;
    let r = x.sqrt() as f32; // innocuous double rounding (53 >= 2*24+2)
    let rem = x - r as f64 * r as f64; // exact
    Some(adjust(r.to_bits() as u64, false, rem > 0.0, rem < 0.0, rm, flags) as u32)
}

#[inline(always)]
pub(super) fn f32_fma(a: u32, b: u32, c: u32, rm: RoundingMode, flags: &mut u8) -> Option<u32> {
    if e32(a) == 0xff || e32(b) == 0xff || e32(c) == 0xff {
        return None;
    }
    let p = f32::from_bits(a) as f64 * f32::from_bits(b) as f64; // exact
    let z = f32::from_bits(c) as f64;
    if p == 0.0 && z == 0.0 {
        let neg = zero_sum_negative((a ^ b) >> 31 != 0, c >> 31 != 0, rm);
        return Some((neg as u32) << 31);
    }
    let (s, e) = two_sum(p, z);
    if s == 0.0 {
        // Exact cancellation of a nonzero product.
        return Some(((rm == RoundingMode::Rdn) as u32) << 31);
    }
    round_pair32(s, e, rm, flags)
}

#[inline(always)]
pub(super) fn f64_to_f32(a: u64, rm: RoundingMode, flags: &mut u8) -> Option<u32> {
    if a << 1 == 0 {
        return Some((a >> 32) as u32);
    }
    if e64(a) == 0x7ff {
        return None;
    }
    round_pair32(f64::from_bits(a), 0.0, rm, flags)
}

// ----- binary64 -------------------------------------------------------

#[inline(always)]
pub(super) fn f64_add(a: u64, b: u64, rm: RoundingMode, flags: &mut u8) -> Option<u64> {
    if e64(a) >= 0x7f0 || e64(b) >= 0x7f0 {
        return None;
    }
    let (s, e) = two_sum(f64::from_bits(a), f64::from_bits(b));
    if s == 0.0 {
        // Exact: a sum of binary64 values never rounds to zero.
        let neg = zero_sum_negative(a >> 63 != 0, b >> 63 != 0, rm);
        return Some((neg as u64) << 63);
    }
    // A tiny sum is exact (e == 0), so no UF and no adjustment happen.
    Some(adjust(s.to_bits(), s < 0.0, e > 0.0, e < 0.0, rm, flags))
}

/// Operations that need the host FMA to compute exact residuals.
#[cfg(target_arch = "x86_64")]
pub(super) mod fma {
    use super::*;

    #[inline(always)]
    pub(in super::super) fn available() -> bool {
        crate::fpu::host_has_fma()
    }

    /// # Safety
    /// The host must support FMA.
    #[target_feature(enable = "fma")]
    pub(in super::super) unsafe fn f64_mul(
        a: u64,
        b: u64,
        rm: RoundingMode,
        flags: &mut u8,
    ) -> Option<u64> {
        if e64(a) == 0x7ff || e64(b) == 0x7ff {
            return None;
        }
        let (x, y) = (f64::from_bits(a), f64::from_bits(b));
        let p = x * y;
        if a << 1 == 0 || b << 1 == 0 {
            return Some(p.to_bits());
        }
        let pb = p.to_bits();
        if !(64..2046).contains(&e64(pb)) {
            return None;
        }
        let e = x.mul_add(y, -p); // exact product error
        Some(adjust(pb, p < 0.0, e > 0.0, e < 0.0, rm, flags))
    }

    /// # Safety
    /// The host must support FMA.
    #[target_feature(enable = "fma")]
    pub(in super::super) unsafe fn f64_div(
        a: u64,
        b: u64,
        rm: RoundingMode,
        flags: &mut u8,
    ) -> Option<u64> {
        if e64(a) == 0x7ff || !(1..0x7ff).contains(&e64(b)) {
            return None;
        }
        let (x, y) = (f64::from_bits(a), f64::from_bits(b));
        let q = x / y;
        if a << 1 == 0 {
            return Some(q.to_bits());
        }
        let qb = q.to_bits();
        if e64(a) < 110 || !(64..2046).contains(&e64(qb)) {
            return None;
        }
        let rem = (-q).mul_add(y, x); // exact remainder
        let up = (rem > 0.0) == (y > 0.0);
        Some(adjust(
            qb,
            q < 0.0,
            rem != 0.0 && up,
            rem != 0.0 && !up,
            rm,
            flags,
        ))
    }

    /// # Safety
    /// The host must support FMA.
    #[target_feature(enable = "fma")]
    pub(in super::super) unsafe fn f64_sqrt(
        a: u64,
        rm: RoundingMode,
        flags: &mut u8,
    ) -> Option<u64> {
        if a << 1 == 0 {
            return Some(a);
        }
        if a >> 63 != 0 || !(110..0x7ff).contains(&e64(a)) {
            return None;
        }
        let x = f64::from_bits(a);
        let r = x.sqrt();
        let rem = (-r).mul_add(r, x); // exact remainder
        Some(adjust(r.to_bits(), false, rem > 0.0, rem < 0.0, rm, flags))
    }

    /// Fused multiply-add; the rounding error of the FMA is recovered
    /// exactly with Boldo & Muller's ErrFma.
    ///
    /// # Safety
    /// The host must support FMA.
    #[target_feature(enable = "fma")]
    pub(in super::super) unsafe fn f64_fma(
        a: u64,
        b: u64,
        c: u64,
        rm: RoundingMode,
        flags: &mut u8,
    ) -> Option<u64> {
        let (ea, eb, ec) = (e64(a), e64(b), e64(c));
        if ea == 0x7ff || eb == 0x7ff || ec == 0x7ff {
            return None;
        }
        if a << 1 == 0 || b << 1 == 0 {
            if c << 1 != 0 {
                return Some(c);
            }
            let neg = zero_sum_negative((a ^ b) >> 63 != 0, c >> 63 != 0, rm);
            return Some((neg as u64) << 63);
        }
        // Product in [2^-950, 2^1002), addend zero or within 2^+-1000.
        let ep = ea as i64 + eb as i64 - 2046;
        if ea == 0 || eb == 0 || !(-950..=1000).contains(&ep) {
            return None;
        }
        if c << 1 != 0 && !(73..=2023).contains(&ec) {
            return None;
        }
        let (x, y, z) = (f64::from_bits(a), f64::from_bits(b), f64::from_bits(c));
        let r1 = x.mul_add(y, z);
        if r1 == 0.0 {
            // Exact cancellation of a nonzero product.
            return Some(((rm == RoundingMode::Rdn) as u64) << 63);
        }
        let rb = r1.to_bits();
        if !(64..2046).contains(&e64(rb)) {
            return None;
        }
        let u1 = x * y;
        let u2 = x.mul_add(y, -u1);
        let (a1, z1) = two_sum(z, u2);
        let (b1, b2) = two_sum(u1, a1);
        let g = (b1 - r1) + b2;
        let r2 = g + z1; // sign of (exact - r1); zero iff exact
        Some(adjust(rb, r1 < 0.0, r2 > 0.0, r2 < 0.0, rm, flags))
    }
}
