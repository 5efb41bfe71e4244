//! The platform-level interrupt controller of QEMU's `virt` (SiFive PLIC layout): routes device
//! interrupt sources to the M- and S-mode external interrupt lines of each hart.
//!
//! Context `2h` is hart `h`'s M-mode, `2h + 1` its S-mode. Sources are level-triggered through
//! a gateway: a source becomes pending when its level is high and it is not being serviced; a
//! claim takes it, a completion lets it pend again. Edge-style devices use [`Plic::pulse`].

use crate::MmioDevice;

/// Interrupt sources (1..=NUM_SOURCES-1; source 0 does not exist), as on QEMU's `virt`.
pub const NUM_SOURCES: usize = 96;
/// Size of the PLIC window for up to 8 harts... and more: QEMU's virt reserves 0x60_0000.
pub const SIZE: u64 = 0x60_0000;

const PENDING: u64 = 0x1000;
const ENABLE: u64 = 0x2000;
const ENABLE_STRIDE: u64 = 0x80;
const CONTEXT: u64 = 0x20_0000;
const CONTEXT_STRIDE: u64 = 0x1000;
const WORDS: usize = NUM_SOURCES.div_ceil(32);

/// The PLIC state.
#[derive(Debug)]
pub struct Plic {
    priority: [u32; NUM_SOURCES],
    level: [bool; NUM_SOURCES],
    pending: [u32; WORDS],
    in_service: [u32; WORDS],
    enable: Vec<[u32; WORDS]>,
    threshold: Vec<u32>,
}

fn bit(v: &[u32; WORDS], s: usize) -> bool {
    v[s / 32] >> (s % 32) & 1 != 0
}

fn set(v: &mut [u32; WORDS], s: usize, on: bool) {
    if on {
        v[s / 32] |= 1 << (s % 32);
    } else {
        v[s / 32] &= !(1 << (s % 32));
    }
}

/// The PLIC's registers, borrowed for saving.
#[allow(missing_docs)]
pub struct PlicParts<'a> {
    pub priority: &'a [u32],
    pub level: &'a [bool],
    pub pending: &'a [u32],
    pub in_service: &'a [u32],
    pub enable: Vec<&'a [u32]>,
    pub threshold: &'a [u32],
}

impl Plic {
    /// The registers (for saving).
    pub fn parts(&self) -> PlicParts<'_> {
        PlicParts {
            priority: &self.priority,
            level: &self.level,
            pending: &self.pending,
            in_service: &self.in_service,
            enable: self.enable.iter().map(|e| &e[..]).collect(),
            threshold: &self.threshold,
        }
    }

    /// Restore what [`Plic::parts`] returned; on a size mismatch, the name of the field.
    pub fn set_parts(
        &mut self,
        priority: &[u32],
        level: &[bool],
        pending: &[u32],
        in_service: &[u32],
        enable: &[Vec<u32>],
        threshold: &[u32],
    ) -> Result<(), &'static str> {
        fn fit<T: Copy>(dst: &mut [T], src: &[T], name: &'static str) -> Result<(), &'static str> {
            if dst.len() != src.len() {
                return Err(name);
            }
            dst.copy_from_slice(src);
            Ok(())
        }
        if enable.len() != self.enable.len() {
            return Err("contexts");
        }
        fit(&mut self.priority, priority, "priority")?;
        fit(&mut self.level, level, "level")?;
        fit(&mut self.pending, pending, "pending")?;
        fit(&mut self.in_service, in_service, "in_service")?;
        for (dst, src) in self.enable.iter_mut().zip(enable) {
            fit(dst, src, "enable")?;
        }
        fit(&mut self.threshold, threshold, "threshold")
    }

    /// A PLIC serving `harts` harts (two contexts each).
    pub fn new(harts: usize) -> Plic {
        Plic {
            priority: [0; NUM_SOURCES],
            level: [false; NUM_SOURCES],
            pending: [0; WORDS],
            in_service: [0; WORDS],
            enable: vec![[0; WORDS]; 2 * harts],
            threshold: vec![0; 2 * harts],
        }
    }

    /// Drive source `s`'s interrupt line to `level`.
    pub fn set_level(&mut self, s: usize, level: bool) {
        if s == 0 || s >= NUM_SOURCES {
            return;
        }
        self.level[s] = level;
        if level && !bit(&self.in_service, s) {
            set(&mut self.pending, s, true);
        }
    }

    /// An edge on source `s`: it becomes pending once (for devices that signal events).
    pub fn pulse(&mut self, s: usize) {
        if s != 0 && s < NUM_SOURCES {
            set(&mut self.pending, s, true);
        }
    }

    /// Whether context `ctx` has an interrupt to take (its hart's MEIP or SEIP line).
    pub fn context_pending(&self, ctx: usize) -> bool {
        self.best(ctx).is_some()
    }

    /// The highest-priority pending, enabled source above the context's threshold.
    fn best(&self, ctx: usize) -> Option<usize> {
        let mut best: Option<(u32, usize)> = None;
        for w in 0..WORDS {
            let mut m = self.pending[w] & self.enable[ctx][w];
            while m != 0 {
                let s = w * 32 + m.trailing_zeros() as usize;
                m &= m - 1;
                let p = self.priority[s];
                if p > self.threshold[ctx] && best.is_none_or(|(bp, _)| p > bp) {
                    best = Some((p, s));
                }
            }
        }
        best.map(|(_, s)| s)
    }

    fn claim(&mut self, ctx: usize) -> u32 {
        match self.best(ctx) {
            Some(s) => {
                set(&mut self.pending, s, false);
                set(&mut self.in_service, s, true);
                s as u32
            }
            None => 0,
        }
    }

    fn complete(&mut self, s: usize) {
        if s == 0 || s >= NUM_SOURCES {
            return;
        }
        set(&mut self.in_service, s, false);
        if self.level[s] {
            set(&mut self.pending, s, true);
        }
    }

    /// Number of harts served.
    pub fn harts(&self) -> usize {
        self.threshold.len() / 2
    }

    fn contexts(&self) -> usize {
        self.threshold.len()
    }
}

impl MmioDevice for Plic {
    fn read(&mut self, offset: u64, _size: u8) -> u64 {
        if offset < PENDING {
            return self
                .priority
                .get((offset / 4) as usize)
                .copied()
                .unwrap_or(0) as u64;
        }
        if offset < ENABLE {
            let w = ((offset - PENDING) / 4) as usize;
            return self.pending.get(w).copied().unwrap_or(0) as u64;
        }
        if offset < CONTEXT {
            let ctx = ((offset - ENABLE) / ENABLE_STRIDE) as usize;
            let w = ((offset - ENABLE) % ENABLE_STRIDE / 4) as usize;
            return self
                .enable
                .get(ctx)
                .and_then(|e| e.get(w))
                .copied()
                .unwrap_or(0) as u64;
        }
        let ctx = ((offset - CONTEXT) / CONTEXT_STRIDE) as usize;
        if ctx >= self.contexts() {
            return 0;
        }
        match (offset - CONTEXT) % CONTEXT_STRIDE {
            0 => self.threshold[ctx] as u64,
            4 => self.claim(ctx) as u64,
            _ => 0,
        }
    }

    fn write(&mut self, offset: u64, _size: u8, value: u64) {
        let value = value as u32;
        if offset < PENDING {
            if let Some(p) = self.priority.get_mut((offset / 4) as usize) {
                // Priorities 0..=7, as on QEMU's virt; source 0 does not exist.
                if offset >= 4 {
                    *p = value & 7;
                }
            }
            return;
        }
        if offset < ENABLE {
            return; // pending bits are read-only
        }
        if offset < CONTEXT {
            let ctx = ((offset - ENABLE) / ENABLE_STRIDE) as usize;
            let w = ((offset - ENABLE) % ENABLE_STRIDE / 4) as usize;
            if let Some(e) = self.enable.get_mut(ctx).and_then(|e| e.get_mut(w)) {
                *e = if w == 0 { value & !1 } else { value };
            }
            return;
        }
        let ctx = ((offset - CONTEXT) / CONTEXT_STRIDE) as usize;
        if ctx >= self.contexts() {
            return;
        }
        match (offset - CONTEXT) % CONTEXT_STRIDE {
            0 => self.threshold[ctx] = value & 7,
            4 => self.complete(value as usize),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim_reg(ctx: u64) -> u64 {
        CONTEXT + ctx * CONTEXT_STRIDE + 4
    }

    #[test]
    fn level_source_claim_complete() {
        let mut p = Plic::new(1);
        p.write(10 * 4, 4, 1); // priority of source 10
        p.write(ENABLE + ENABLE_STRIDE, 4, 1 << 10); // enable for context 1 (S-mode)
        assert!(!p.context_pending(1));
        p.set_level(10, true);
        assert!(p.context_pending(1));
        assert!(!p.context_pending(0), "M context has nothing enabled");
        assert_eq!(p.read(PENDING, 4), 1 << 10);
        assert_eq!(p.read(claim_reg(1), 4), 10);
        assert!(!p.context_pending(1), "claimed source is in service");
        // Still high at completion: pends again.
        p.write(claim_reg(1), 4, 10);
        assert!(p.context_pending(1));
        assert_eq!(p.read(claim_reg(1), 4), 10);
        p.set_level(10, false);
        p.write(claim_reg(1), 4, 10);
        assert!(!p.context_pending(1));
        assert_eq!(p.read(claim_reg(1), 4), 0);
    }

    #[test]
    fn priority_and_threshold() {
        let mut p = Plic::new(1);
        p.write(4, 4, 1);
        p.write(2 * 4, 4, 5);
        p.write(ENABLE, 4, 0b110);
        p.pulse(1);
        p.pulse(2);
        p.write(CONTEXT, 4, 4); // threshold 4 on context 0
        assert_eq!(p.read(claim_reg(0), 4), 2);
        assert!(!p.context_pending(0), "source 1 is below the threshold");
        p.write(CONTEXT, 4, 0);
        assert_eq!(p.read(claim_reg(0), 4), 1);
    }
}
