//! TEMPORARY stub: replaced by the real FPU module.
#![allow(unused_variables)]
pub const NV: u8 = 0x10;
pub const DZ: u8 = 0x08;
pub const OF: u8 = 0x04;
pub const UF: u8 = 0x02;
pub const NX: u8 = 0x01;
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RoundingMode {
    Rne = 0,
    Rtz = 1,
    Rdn = 2,
    Rup = 3,
    Rmm = 4,
}
pub const F32_CANONICAL_NAN: u32 = 0x7fc0_0000;
pub const F64_CANONICAL_NAN: u64 = 0x7ff8_0000_0000_0000;
pub fn f32_add(a: u32, b: u32, rm: RoundingMode, flags: &mut u8) -> u32 {
    todo!()
}
pub fn f32_sub(a: u32, b: u32, rm: RoundingMode, flags: &mut u8) -> u32 {
    todo!()
}
pub fn f32_mul(a: u32, b: u32, rm: RoundingMode, flags: &mut u8) -> u32 {
    todo!()
}
pub fn f32_div(a: u32, b: u32, rm: RoundingMode, flags: &mut u8) -> u32 {
    todo!()
}
pub fn f32_sqrt(a: u32, rm: RoundingMode, flags: &mut u8) -> u32 {
    todo!()
}
pub fn f32_fma(a: u32, b: u32, c: u32, rm: RoundingMode, flags: &mut u8) -> u32 {
    todo!()
}
pub fn f32_min(a: u32, b: u32, flags: &mut u8) -> u32 {
    todo!()
}
pub fn f32_max(a: u32, b: u32, flags: &mut u8) -> u32 {
    todo!()
}
pub fn f32_eq(a: u32, b: u32, flags: &mut u8) -> bool {
    todo!()
}
pub fn f32_lt(a: u32, b: u32, flags: &mut u8) -> bool {
    todo!()
}
pub fn f32_le(a: u32, b: u32, flags: &mut u8) -> bool {
    todo!()
}
pub fn f32_classify(a: u32) -> u64 {
    todo!()
}
pub fn f32_to_i32(a: u32, rm: RoundingMode, flags: &mut u8) -> i32 {
    todo!()
}
pub fn i32_to_f32(v: i32, rm: RoundingMode, flags: &mut u8) -> u32 {
    todo!()
}
pub fn f32_to_u32(a: u32, rm: RoundingMode, flags: &mut u8) -> u32 {
    todo!()
}
pub fn u32_to_f32(v: u32, rm: RoundingMode, flags: &mut u8) -> u32 {
    todo!()
}
pub fn f32_to_i64(a: u32, rm: RoundingMode, flags: &mut u8) -> i64 {
    todo!()
}
pub fn i64_to_f32(v: i64, rm: RoundingMode, flags: &mut u8) -> u32 {
    todo!()
}
pub fn f32_to_u64(a: u32, rm: RoundingMode, flags: &mut u8) -> u64 {
    todo!()
}
pub fn u64_to_f32(v: u64, rm: RoundingMode, flags: &mut u8) -> u32 {
    todo!()
}
pub fn f64_add(a: u64, b: u64, rm: RoundingMode, flags: &mut u8) -> u64 {
    todo!()
}
pub fn f64_sub(a: u64, b: u64, rm: RoundingMode, flags: &mut u8) -> u64 {
    todo!()
}
pub fn f64_mul(a: u64, b: u64, rm: RoundingMode, flags: &mut u8) -> u64 {
    todo!()
}
pub fn f64_div(a: u64, b: u64, rm: RoundingMode, flags: &mut u8) -> u64 {
    todo!()
}
pub fn f64_sqrt(a: u64, rm: RoundingMode, flags: &mut u8) -> u64 {
    todo!()
}
pub fn f64_fma(a: u64, b: u64, c: u64, rm: RoundingMode, flags: &mut u8) -> u64 {
    todo!()
}
pub fn f64_min(a: u64, b: u64, flags: &mut u8) -> u64 {
    todo!()
}
pub fn f64_max(a: u64, b: u64, flags: &mut u8) -> u64 {
    todo!()
}
pub fn f64_eq(a: u64, b: u64, flags: &mut u8) -> bool {
    todo!()
}
pub fn f64_lt(a: u64, b: u64, flags: &mut u8) -> bool {
    todo!()
}
pub fn f64_le(a: u64, b: u64, flags: &mut u8) -> bool {
    todo!()
}
pub fn f64_classify(a: u64) -> u64 {
    todo!()
}
pub fn f64_to_i32(a: u64, rm: RoundingMode, flags: &mut u8) -> i32 {
    todo!()
}
pub fn i32_to_f64(v: i32, rm: RoundingMode, flags: &mut u8) -> u64 {
    todo!()
}
pub fn f64_to_u32(a: u64, rm: RoundingMode, flags: &mut u8) -> u32 {
    todo!()
}
pub fn u32_to_f64(v: u32, rm: RoundingMode, flags: &mut u8) -> u64 {
    todo!()
}
pub fn f64_to_i64(a: u64, rm: RoundingMode, flags: &mut u8) -> i64 {
    todo!()
}
pub fn i64_to_f64(v: i64, rm: RoundingMode, flags: &mut u8) -> u64 {
    todo!()
}
pub fn f64_to_u64(a: u64, rm: RoundingMode, flags: &mut u8) -> u64 {
    todo!()
}
pub fn u64_to_f64(v: u64, rm: RoundingMode, flags: &mut u8) -> u64 {
    todo!()
}
pub fn f32_to_f64(a: u32, flags: &mut u8) -> u64 {
    todo!()
}
pub fn f64_to_f32(a: u64, rm: RoundingMode, flags: &mut u8) -> u32 {
    todo!()
}
