//! Saving and restoring a hart: its [`HartState`](crate::hart::HartState) only. The TLBs and the
//! decode cache are rebuilt from RAM after a restore, never saved.

use popek_persist::{Decoder, Encoder, Persist, PersistError};

use crate::csr::{Csrs, PMP_ENTRIES};
use crate::hart::{request, Hart, Priv};

impl Persist for Csrs {
    const VERSION: u32 = 1;

    fn save(&self, out: &mut Encoder) {
        for v in self.words() {
            out.u64(v);
        }
        out.bytes(&self.pmpcfg);
        out.u64s(&self.pmpaddr);
    }

    fn restore(&mut self, input: &mut Decoder<'_>) -> Result<(), PersistError> {
        let mut words = [0u64; Csrs::WORDS];
        for w in &mut words {
            *w = input.u64()?;
        }
        self.set_words(words);
        let cfg = input.bytes()?;
        if cfg.len() != PMP_ENTRIES {
            return Err(input.invalid("pmpcfg"));
        }
        self.pmpcfg.copy_from_slice(cfg);
        input.u64s_into(&mut self.pmpaddr, "pmpaddr")
    }
}

impl Persist for Hart {
    const VERSION: u32 = 1;

    fn save(&self, out: &mut Encoder) {
        let s = &self.s;
        out.u64s(&s.x.0[..32]);
        out.u64s(&s.f.0);
        out.u64(s.pc);
        out.u64(s.instret);
        // Only the WFI bit is state; the other requests are consumed at every slice boundary.
        out.bool(s.requested(request::WFI));
        out.u8(s.prv as u8);
        out.part(&s.csr);
    }

    fn restore(&mut self, input: &mut Decoder<'_>) -> Result<(), PersistError> {
        let hart_id = self.s.csr.mhartid;
        let s = &mut self.s;
        input.u64s_into(&mut s.x.0[..32], "x registers")?;
        input.u64s_into(&mut s.f.0, "f registers")?;
        s.x.0[0] = 0;
        s.pc = input.u64()?;
        s.instret = input.u64()?;
        s.requests = if input.bool("wfi")? { request::WFI } else { 0 };
        s.prv = match input.u8()? {
            0 => Priv::U,
            1 => Priv::S,
            3 => Priv::M,
            _ => return Err(input.invalid("privilege")),
        };
        input.part(&mut s.csr)?;
        if s.csr.mhartid != hart_id {
            return Err(input.invalid("mhartid"));
        }
        self.reservation = None;
        self.flush_caches();
        self.mmu.set_context(self.s.prv, self.s.csr.mstatus);
        Ok(())
    }
}
