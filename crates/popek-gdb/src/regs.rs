//! The register file gdb sees: the integer and FP registers, `fflags`/`frm`/`fcsr`, the
//! privilege level and the machine's main trap CSRs, described by `target.xml`.

use gdbstub::arch::{Arch, Registers};
use popek_cpu::Hart;

/// CSRs in `target.xml`'s `org.gnu.gdb.riscv.csr` feature, in order (read-only to gdb).
const CSRS: usize = 17;

/// A snapshot of one hart's registers in `target.xml`'s order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Regs {
    x: [u64; 32],
    pc: u64,
    f: [u64; 32],
    fcsr: u32,
    prv: u64,
    csrs: [u64; CSRS],
}

impl Regs {
    /// Take a hart's registers.
    pub(crate) fn from_hart(h: &Hart) -> Regs {
        let c = h.csrs();
        Regs {
            x: std::array::from_fn(|i| h.xreg(i)),
            pc: h.pc(),
            f: std::array::from_fn(|i| h.freg(i)),
            fcsr: h.fcsr() as u32,
            prv: h.privilege() as u64,
            csrs: [
                c.mstatus_read(),
                c.mtvec,
                c.mepc,
                c.mcause,
                c.mtval,
                c.mscratch,
                c.mie,
                c.mip,
                c.medeleg,
                c.mideleg,
                c.stvec,
                c.sepc,
                c.scause,
                c.stval,
                c.sscratch,
                c.satp,
                c.mhartid,
            ],
        }
    }

    /// Write the writable part (integer and FP registers, pc, fcsr) back to a hart.
    pub(crate) fn to_hart(&self, h: &mut Hart) {
        for i in 1..32 {
            h.set_xreg(i, self.x[i]);
        }
        for i in 0..32 {
            h.set_freg(i, self.f[i]);
        }
        h.set_pc(self.pc);
        h.set_fcsr(self.fcsr as u64);
    }
}

impl Registers for Regs {
    type ProgramCounter = u64;

    fn pc(&self) -> u64 {
        self.pc
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        let mut put = |bytes: &[u8]| bytes.iter().for_each(|b| write_byte(Some(*b)));
        self.x.iter().for_each(|v| put(&v.to_le_bytes()));
        put(&self.pc.to_le_bytes());
        self.f.iter().for_each(|v| put(&v.to_le_bytes()));
        put(&(self.fcsr & 0x1f).to_le_bytes());
        put(&((self.fcsr >> 5) & 7).to_le_bytes());
        put(&self.fcsr.to_le_bytes());
        put(&self.prv.to_le_bytes());
        self.csrs.iter().for_each(|v| put(&v.to_le_bytes()));
    }

    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        let mut words = bytes.chunks(8);
        let mut next = || -> Result<u64, ()> {
            let w = words.next().ok_or(())?;
            Ok(u64::from_le_bytes(w.try_into().map_err(|_| ())?))
        };
        for i in 0..32 {
            self.x[i] = next()?;
        }
        self.pc = next()?;
        for i in 0..32 {
            self.f[i] = next()?;
        }
        // fflags, frm, fcsr: 32 bits each; fcsr (the last) is the one written back.
        let rest = &bytes[65 * 8..];
        if rest.len() >= 12 {
            self.fcsr = u32::from_le_bytes(rest[8..12].try_into().map_err(|_| ())?);
        }
        Ok(())
    }
}

/// RV64GC as gdb sees popek's harts: [`Regs`] described by `target.xml` (gdbstub_arch's RISC-V
/// description has no FP registers).
pub enum PopekRiscv64 {}

impl Arch for PopekRiscv64 {
    type Usize = u64;
    type Registers = Regs;
    type BreakpointKind = usize;
    type RegId = ();

    fn target_description_xml() -> Option<&'static str> {
        Some(include_str!("target.xml"))
    }
}
