//! What it takes to check an engine against the interpreter (`--engine verify`): run a piece of
//! code on the engine from a [`Checkpoint`] with the stores logged ([`Hart::log_stores`]), undo
//! them, rewind, run the same instructions on the interpreter ([`Hart::interpret_exactly`]) and
//! compare. The interpreter is the oracle; the machine goes on from its results.

use std::collections::BTreeMap;

use crate::csr::{Csrs, PMP_ENTRIES};
use crate::decode::{decode, raw_in_page};
use crate::exec::Flow;
use crate::hart::Hart;
use crate::trap::Trap;
use crate::Bus;

/// A hart's architectural state (and LR reservation) at one point, to return to or compare.
/// Only what instructions change is copied (not the write sink beyond `x31`).
#[derive(Clone, Debug)]
pub struct Checkpoint {
    x: [u64; 32],
    f: [u64; 32],
    pc: u64,
    instret: u64,
    requests: u32,
    prv: crate::Priv,
    csr: Csrs,
    reservation: Option<(u64, u64)>,
}

impl Checkpoint {
    /// Retired instructions at this point.
    pub fn instret(&self) -> u64 {
        self.instret
    }

    /// The program counter at this point.
    pub fn pc(&self) -> u64 {
        self.pc
    }

    /// Whether `self` and `other` hold the same registers and reservation (request bits are not
    /// compared: they tell the outer loop what to look at, and an engine may raise more of them
    /// than the interpreter).
    pub fn same_as(&self, other: &Checkpoint) -> bool {
        // Field by field rather than through `compared`: this runs twice per verified block.
        let (a, b) = (self, other);
        a.x[1..] == b.x[1..]
            && a.f == b.f
            && a.pc == b.pc
            && a.instret == b.instret
            && a.prv == b.prv
            && a.reservation.map(|r| r.0) == b.reservation.map(|r| r.0)
            && a.csr.words() == b.csr.words()
            && a.csr.pmpaddr == b.csr.pmpaddr
            && a.csr.pmpcfg == b.csr.pmpcfg
    }

    /// Every register (and the reservation) that differs between `self` and `other`, as
    /// (name, value here, value there); see [`Checkpoint::same_as`].
    pub fn differences(&self, other: &Checkpoint) -> Vec<(String, u64, u64)> {
        self.compared(other)
            .filter(|(_, x, y)| x != y)
            .map(|(r, x, y)| (r.to_string(), x, y))
            .collect()
    }

    /// Every compared value of `self` and `other`, with what it is.
    fn compared<'a>(&'a self, other: &'a Checkpoint) -> impl Iterator<Item = (Reg, u64, u64)> + 'a {
        let (a, b) = (self, other);
        let (wa, wb) = (a.csr.words(), b.csr.words());
        let res = |r: Option<(u64, u64)>| r.map_or(u64::MAX, |(addr, _)| addr);
        (1..32)
            .map(move |r| (Reg::X(r), a.x[r], b.x[r]))
            .chain((0..32).map(move |r| (Reg::F(r), a.f[r], b.f[r])))
            .chain([
                (Reg::Named("pc"), a.pc, b.pc),
                (Reg::Named("instret"), a.instret, b.instret),
                (Reg::Named("privilege"), a.prv as u64, b.prv as u64),
                (
                    Reg::Named("reservation"),
                    res(a.reservation),
                    res(b.reservation),
                ),
            ])
            .chain((0..Csrs::WORDS).map(move |k| (Reg::Named(Csrs::NAMES[k]), wa[k], wb[k])))
            .chain(
                (0..PMP_ENTRIES)
                    .map(move |k| (Reg::PmpAddr(k), a.csr.pmpaddr[k], b.csr.pmpaddr[k])),
            )
            .chain((0..PMP_ENTRIES).map(move |k| {
                (
                    Reg::PmpCfg(k),
                    a.csr.pmpcfg[k] as u64,
                    b.csr.pmpcfg[k] as u64,
                )
            }))
    }
}

/// What a compared value of a [`Checkpoint`] is, for reports.
#[derive(Clone, Copy, Debug)]
enum Reg {
    X(usize),
    F(usize),
    PmpAddr(usize),
    PmpCfg(usize),
    Named(&'static str),
}

impl std::fmt::Display for Reg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reg::X(r) => write!(f, "x{r}"),
            Reg::F(r) => write!(f, "f{r}"),
            Reg::PmpAddr(k) => write!(f, "pmpaddr{k}"),
            Reg::PmpCfg(k) => write!(f, "pmpcfg{k}"),
            Reg::Named(n) => f.write_str(n),
        }
    }
}

/// The stores a hart made to RAM while [`Hart::log_stores`] was on, oldest first, and whether
/// it touched MMIO meanwhile (whose effects cannot be undone).
#[derive(Debug, Default)]
pub struct StoreLog {
    /// (guest physical address, size, the bytes there before the store).
    entries: Vec<(u64, u8, u64)>,
    mmio: bool,
}

impl StoreLog {
    /// Whether a load or store reached a device (MMIO the bus accepted), or the code read the
    /// `time` CSR: it cannot be run a second time alike.
    pub fn touched_mmio(&self) -> bool {
        self.mmio
    }

    /// Whether `self` and `other` stored to the same places (addresses and sizes), in the
    /// same order.
    pub fn same_places(&self, other: &StoreLog) -> bool {
        self.entries.len() == other.entries.len()
            && self
                .entries
                .iter()
                .zip(&other.entries)
                .all(|(a, b)| (a.0, a.1) == (b.0, b.1))
    }

    /// Note a store of `size` (at most 8) bytes at physical address `paddr` of `mem`, before
    /// it happens.
    pub(crate) fn record(&mut self, mem: &crate::Memory, paddr: u64, size: u64) {
        let mut old = [0u8; 8];
        let n = size.min(8) as usize;
        if mem.read(paddr, &mut old[..n]).is_some() {
            self.entries.push((paddr, n as u8, u64::from_le_bytes(old)));
        }
    }

    /// Note an MMIO access.
    pub(crate) fn record_mmio(&mut self) {
        self.mmio = true;
    }

    /// Every byte the logged stores wrote, with the value it held before the first of them.
    pub fn previous(&self) -> MemoryEffects {
        bytes(
            self.entries
                .iter()
                .rev()
                .map(|&(p, size, old)| (p, size, old)),
        )
    }

    /// Every byte the logged stores wrote, with the value `results` (from
    /// [`Hart::store_results`]) gives it.
    pub fn effects(&self, results: &[u64]) -> MemoryEffects {
        bytes(
            self.entries
                .iter()
                .zip(results)
                .map(|(&(p, size, _), &v)| (p, size, v)),
        )
    }
}

/// The bytes of little-endian values of (address, size, value); a later value of a byte wins.
fn bytes(values: impl Iterator<Item = (u64, u8, u64)>) -> MemoryEffects {
    let mut m = BTreeMap::new();
    for (paddr, size, v) in values {
        for k in 0..size as u64 {
            m.insert(paddr + k, (v >> (8 * k)) as u8);
        }
    }
    m
}

/// Guest memory by byte: physical address → value.
pub type MemoryEffects = BTreeMap<u64, u8>;

impl Hart {
    /// The state to return to with [`Hart::rewind`].
    pub fn checkpoint(&self) -> Checkpoint {
        let s = &self.s;
        Checkpoint {
            x: s.x.0[..32].try_into().expect("32 registers"),
            f: s.f.0,
            pc: s.pc,
            instret: s.instret,
            requests: s.requests,
            prv: s.prv,
            csr: s.csr.clone(),
            reservation: self.reservation,
        }
    }

    /// Go back to `cp`'s architectural state (caches stay: they hold no architectural state).
    pub fn rewind(&mut self, cp: &Checkpoint) {
        let s = &mut self.s;
        s.x.0[..32].copy_from_slice(&cp.x);
        s.f.0 = cp.f;
        s.pc = cp.pc;
        s.instret = cp.instret;
        s.requests = cp.requests;
        s.prv = cp.prv;
        s.csr = cp.csr.clone();
        self.reservation = cp.reservation;
    }

    /// Log every store to RAM (and note MMIO accesses) from now on, or stop logging. While on,
    /// the write TLB stays empty, so every store (interpreter, engine fast paths, atomics) takes
    /// the slow path, where it is logged.
    pub fn log_stores(&mut self, on: bool) {
        if on {
            if self.store_log.is_none() {
                self.mmu.flush_write_tlb();
                self.store_log = Some(StoreLog::default());
            }
        } else {
            self.store_log = None;
        }
    }

    /// The stores logged since the last call (empty if logging is off).
    pub fn take_store_log(&mut self) -> StoreLog {
        self.store_log
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// The value now at the place of each store of `log`.
    pub fn store_results(&self, log: &StoreLog) -> Vec<u64> {
        log.entries
            .iter()
            .map(|&(paddr, size, _)| {
                let mut b = [0u8; 8];
                let _ = self.mem.read(paddr, &mut b[..size as usize]);
                u64::from_le_bytes(b)
            })
            .collect()
    }

    /// Undo the stores of `log` (newest first).
    pub fn undo_stores(&mut self, log: &StoreLog) {
        for &(paddr, size, old) in log.entries.iter().rev() {
            // Read successfully when logged, and RAM regions never shrink.
            let _ = self.mem.write(paddr, &old.to_le_bytes()[..size as usize]);
        }
    }

    /// Bytes of guest memory at the addresses in `addrs` (for comparing with another run's
    /// [`MemoryEffects`]).
    pub fn memory_bytes(&self, addrs: impl Iterator<Item = u64>) -> MemoryEffects {
        addrs
            .map(|a| {
                let mut one = [0u8];
                let _ = self.mem.read(a, &mut one);
                (a, one[0])
            })
            .collect()
    }

    /// Execute exactly `n` instructions from `pc` with the interpreter, taking no interrupt and
    /// using no decode cache: the oracle's side of a verification. A trap stops it early and is
    /// returned, not taken: `pc` and `instret` are then at the faulting instruction, as an
    /// engine leaves them.
    pub fn interpret_exactly(&mut self, bus: &mut dyn Bus, n: u64) -> Result<(), Trap> {
        let mut page: Option<(u64, *const u8)> = None;
        for _ in 0..n {
            let pc = self.s.pc;
            let host = match page {
                Some((va, host)) if va == pc & !0xfff => host,
                _ => {
                    let host = self.fetch_code_page()?.host;
                    page = Some((pc & !0xfff, host));
                    host
                }
            };
            // SAFETY: `host` is the start of a 4 KiB page of guest RAM and the offset < 4096.
            let raw = match unsafe { raw_in_page(host, (pc & 0xfff) as usize) } {
                Some(raw) => raw,
                None => self.fetch_straddling()?,
            };
            match self.step_decoded(bus, &decode(raw), pc, raw, 0)? {
                Flow::Next(next) | Flow::Jump(next) | Flow::Store(next) | Flow::Leave(next) => {
                    self.s.pc = next;
                    self.s.instret += 1;
                }
                Flow::Decode => unreachable!("a decoded instruction is never Undecoded"),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank() -> Checkpoint {
        Checkpoint {
            x: [0; 32],
            f: [0; 32],
            pc: 0,
            instret: 0,
            requests: 0,
            prv: crate::Priv::M,
            csr: Csrs::default(),
            reservation: None,
        }
    }

    /// `same_as` (the fast check) and `differences` (the report) must look at the same values.
    #[test]
    fn same_as_and_differences_agree_on_every_field() {
        type Poke = fn(&mut Checkpoint);
        let pokes: Vec<(&str, Poke)> = vec![
            ("x5", |c| c.x[5] = 1),
            ("x31", |c| c.x[31] = 1),
            ("f0", |c| c.f[0] = 1),
            ("pc", |c| c.pc = 4),
            ("instret", |c| c.instret = 1),
            ("privilege", |c| c.prv = crate::Priv::U),
            ("reservation", |c| c.reservation = Some((0x80, 0))),
            ("pmpaddr3", |c| c.csr.pmpaddr[3] = 1),
            ("pmpcfg15", |c| c.csr.pmpcfg[15] = 1),
            ("mscratch", |c| c.csr.mscratch = 1),
            ("satp", |c| c.csr.satp = 1),
        ];
        let base = blank();
        assert!(base.same_as(&blank()));
        assert!(base.differences(&blank()).is_empty());
        for (name, poke) in pokes {
            let mut other = blank();
            poke(&mut other);
            assert!(!base.same_as(&other), "same_as misses {name}");
            let d = base.differences(&other);
            assert_eq!(d.len(), 1, "{name}: {d:?}");
            assert_eq!(d[0].0, name);
        }
        // x0 and the pending requests are not architectural results.
        let mut other = blank();
        other.x[0] = 1;
        other.requests = 1;
        assert!(base.same_as(&other) && base.differences(&other).is_empty());
    }
}
