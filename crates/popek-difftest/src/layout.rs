//! Guest memory layout of a test program (identical under QEMU and popek).

/// Start of the single PT_LOAD segment (ELF header and program header included).
pub const BASE: u64 = 0x10000;
/// First instruction (entry point).
pub const CODE: u64 = 0x10100;
/// End of the code area.
pub const CODE_END: u64 = 0x18000;
/// Initial register image: x0..x31, then f0..f31 at +0x100, fcsr at +0x200, sigaction at +0x210.
pub const INIT: u64 = 0x18000;
/// Initial FP registers f0..f31.
pub const INIT_F: u64 = INIT + 0x100;
/// Initial `fcsr`.
pub const INIT_FCSR: u64 = INIT + 0x200;
/// The `struct sigaction` the prologue installs for the fault flavour's signal.
pub const SIGACTION: u64 = INIT + 0x210;
/// Scratch area for random loads and stores; the signal frame goes below it.
pub const SCRATCH: u64 = 0x1b800;
/// Length of the scratch area.
pub const SCRATCH_LEN: u64 = 0xe00;
/// `gp` points into the middle of scratch (the whole of it is within a 12-bit offset), on a page
/// boundary so that misaligned accesses can cross pages.
pub const GP: u64 = 0x1c000;
/// `sp` points at the start of scratch (for c.*sp loads/stores).
pub const SP: u64 = SCRATCH;
/// Register dump: x0..x31 (x0 slot always 0), f0..f31, then fcsr, signal number, si_addr, pc.
pub const DUMP_X: u64 = SCRATCH + SCRATCH_LEN;
/// The dump's f0..f31.
pub const DUMP_F: u64 = DUMP_X + 0x100;
/// The dump's fcsr, signal number, si_addr and pc.
pub const DUMP_MISC: u64 = DUMP_F + 0x100;
/// What the program writes to stdout: scratch followed by the dump.
pub const OUT: u64 = SCRATCH;
/// Length of what the program writes to stdout.
pub const OUT_LEN: u64 = DUMP_MISC + 0x20 - SCRATCH;
/// End of the segment.
pub const END: u64 = 0x1e000;
