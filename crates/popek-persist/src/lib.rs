//! Save and restore of machine state.
//!
//! Every stateful part of a machine (a hart, the interrupt controllers, each device) implements
//! [`Persist`]: it writes its *architectural* state into an [`Encoder`] and reads it back from a
//! [`Decoder`]. Derived state (TLBs, decoded or translated code, interrupt levels computed from
//! device state) is never saved: whoever restores rebuilds it. The machine collects the parts
//! into a [`StateFile`] of named sections, each with the version of its encoding, protected by
//! a checksum, so a truncated, corrupt or foreign file is refused before anything is restored.
//!
//! The encoding is little-endian and positional: a type that changes what it saves bumps its
//! [`Persist::VERSION`], and a file with another version is refused with a message that says so.

mod state_file;

pub use state_file::StateFile;

/// Why state could not be restored. Each message names the part and what to do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PersistError {
    /// The state file ended early or a section's data is shorter than its contents need.
    #[error(
        "the snapshot's state is truncated ({what}): the snapshot is damaged, create it again"
    )]
    Truncated {
        /// Where it ended.
        what: String,
    },
    /// A section holds more data than its reader consumed.
    #[error("section {section} has {extra} bytes this popek does not understand: the snapshot is damaged or from another popek version")]
    TrailingData {
        /// Section name.
        section: String,
        /// Unread bytes.
        extra: usize,
    },
    /// The checksum does not match the contents.
    #[error("the snapshot's state file is corrupt (checksum mismatch): create the snapshot again")]
    Checksum,
    /// Not a popek state file at all.
    #[error("not a popek snapshot state file (bad magic number)")]
    BadMagic,
    /// A section the machine needs is missing.
    #[error("the snapshot has no state for {0}: it was taken of a different machine (check -m, --cpus and the device options)")]
    MissingSection(String),
    /// A section was written by another version of its encoding.
    #[error("the snapshot's {section} state is version {found}; this popek reads version {expected}: create the snapshot again with this popek")]
    Version {
        /// Section name.
        section: String,
        /// Version in the file.
        found: u32,
        /// Version this build reads.
        expected: u32,
    },
    /// A field holds a value the part cannot take.
    #[error("the snapshot's {section} state has an invalid {field}: the snapshot is damaged")]
    Invalid {
        /// Section name.
        section: String,
        /// Field name.
        field: &'static str,
    },
}

/// A stateful part of a machine that can be saved and restored (Firecracker's `Persist`, without
/// the constructor arguments: the machine is rebuilt from its configuration first, then each
/// part's state is restored into it).
pub trait Persist {
    /// Version of this type's encoding: bump it when [`Persist::save`] writes something else.
    const VERSION: u32;

    /// Append the architectural state.
    fn save(&self, out: &mut Encoder);

    /// Replace the state with what [`Persist::save`] wrote. On error the part may be half
    /// restored: the caller throws the whole machine away.
    fn restore(&mut self, input: &mut Decoder<'_>) -> Result<(), PersistError>;
}

/// Builds a section's bytes.
#[derive(Debug, Default)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    /// An empty encoder.
    pub fn new() -> Encoder {
        Encoder::default()
    }

    /// The bytes written so far.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// A byte.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    /// A bool (one byte).
    pub fn bool(&mut self, v: bool) {
        self.buf.push(v as u8);
    }

    /// A 32-bit value.
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// A 64-bit value.
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// A list of 64-bit values, with its length.
    pub fn u64s(&mut self, v: &[u64]) {
        self.u64(v.len() as u64);
        for x in v {
            self.u64(*x);
        }
    }

    /// A list of 32-bit values, with its length.
    pub fn u32s(&mut self, v: &[u32]) {
        self.u64(v.len() as u64);
        for x in v {
            self.u32(*x);
        }
    }

    /// A byte string, with its length.
    pub fn bytes(&mut self, v: &[u8]) {
        self.u64(v.len() as u64);
        self.buf.extend_from_slice(v);
    }

    /// Another part's state, nested (its version first).
    pub fn part<P: Persist>(&mut self, p: &P) {
        self.u32(P::VERSION);
        p.save(self);
    }
}

/// Reads a section's bytes back, in the order they were written.
#[derive(Debug)]
pub struct Decoder<'a> {
    section: &'a str,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    /// A decoder over section `section`'s data.
    pub fn new(section: &'a str, buf: &'a [u8]) -> Decoder<'a> {
        Decoder {
            section,
            buf,
            pos: 0,
        }
    }

    /// The section being read, for error messages.
    pub fn section(&self) -> &str {
        self.section
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PersistError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(PersistError::Truncated {
                what: format!("section {}", self.section),
            });
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The next `n` bytes as they are (no length prefix).
    pub fn raw(&mut self, n: usize) -> Result<&'a [u8], PersistError> {
        self.take(n)
    }

    /// A byte.
    pub fn u8(&mut self) -> Result<u8, PersistError> {
        Ok(self.take(1)?[0])
    }

    /// A bool; anything but 0 or 1 is an error naming `field`.
    pub fn bool(&mut self, field: &'static str) -> Result<bool, PersistError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.invalid(field)),
        }
    }

    /// A 32-bit value.
    pub fn u32(&mut self) -> Result<u32, PersistError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    /// A 64-bit value.
    pub fn u64(&mut self) -> Result<u64, PersistError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn len(&mut self, elem: usize) -> Result<usize, PersistError> {
        let n = self.u64()?;
        // A length that cannot fit in what is left is damage, not a reason to allocate.
        if n.saturating_mul(elem as u64) > (self.buf.len() - self.pos) as u64 {
            return Err(PersistError::Truncated {
                what: format!("section {}", self.section),
            });
        }
        Ok(n as usize)
    }

    /// A list of 64-bit values.
    pub fn u64s(&mut self) -> Result<Vec<u64>, PersistError> {
        let n = self.len(8)?;
        (0..n).map(|_| self.u64()).collect()
    }

    /// A list of exactly `out.len()` 64-bit values into `out`.
    pub fn u64s_into(&mut self, out: &mut [u64], field: &'static str) -> Result<(), PersistError> {
        let v = self.u64s()?;
        if v.len() != out.len() {
            return Err(self.invalid(field));
        }
        out.copy_from_slice(&v);
        Ok(())
    }

    /// A list of 32-bit values.
    pub fn u32s(&mut self) -> Result<Vec<u32>, PersistError> {
        let n = self.len(4)?;
        (0..n).map(|_| self.u32()).collect()
    }

    /// A byte string.
    pub fn bytes(&mut self) -> Result<&'a [u8], PersistError> {
        let n = self.len(1)?;
        self.take(n)
    }

    /// A nested part written by [`Encoder::part`].
    pub fn part<P: Persist>(&mut self, p: &mut P) -> Result<(), PersistError> {
        let found = self.u32()?;
        if found != P::VERSION {
            return Err(PersistError::Version {
                section: self.section.to_string(),
                found,
                expected: P::VERSION,
            });
        }
        p.restore(self)
    }

    /// The error for field `field` holding a value its part cannot take.
    pub fn invalid(&self, field: &'static str) -> PersistError {
        PersistError::Invalid {
            section: self.section.to_string(),
            field,
        }
    }

    /// Check every byte was read.
    pub fn finish(self) -> Result<(), PersistError> {
        let extra = self.buf.len() - self.pos;
        if extra != 0 {
            return Err(PersistError::TrailingData {
                section: self.section.to_string(),
                extra,
            });
        }
        Ok(())
    }
}

/// Check that a part survives a save/restore round trip: `make` builds a fresh part (as the
/// machine would before restoring), `exercise` drives it into an interesting state. The restored
/// copy must save exactly the same bytes, and truncating the saved state anywhere must be an
/// error, never a panic. One check for every part (crosvm's shared `Suspendable` test idea).
pub fn check_round_trip<P: Persist>(make: impl Fn() -> P, exercise: impl FnOnce(&mut P)) {
    let mut original = make();
    exercise(&mut original);
    let mut enc = Encoder::new();
    original.save(&mut enc);
    let saved = enc.into_bytes();
    let mut copy = make();
    let mut dec = Decoder::new("test", &saved);
    copy.restore(&mut dec).expect("restoring what was saved");
    dec.finish().expect("restore reads every byte it saved");
    let mut enc = Encoder::new();
    copy.save(&mut enc);
    assert_eq!(enc.into_bytes(), saved, "restored state saves differently");
    for cut in 0..saved.len() {
        let mut fresh = make();
        let mut dec = Decoder::new("test", &saved[..cut]);
        let whole = fresh.restore(&mut dec).and_then(|_| dec.finish());
        assert!(
            whole.is_err(),
            "state cut at {cut} of {} bytes was accepted",
            saved.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Thing {
        a: u64,
        b: Vec<u32>,
        c: bool,
    }

    impl Persist for Thing {
        const VERSION: u32 = 1;
        fn save(&self, out: &mut Encoder) {
            out.u64(self.a);
            out.u32s(&self.b);
            out.bool(self.c);
        }
        fn restore(&mut self, input: &mut Decoder<'_>) -> Result<(), PersistError> {
            self.a = input.u64()?;
            self.b = input.u32s()?;
            self.c = input.bool("c")?;
            Ok(())
        }
    }

    #[test]
    fn thing_round_trips() {
        check_round_trip(Thing::default, |t| {
            t.a = 7;
            t.b = vec![1, 2, 3];
            t.c = true;
        });
    }

    #[test]
    fn huge_lengths_are_truncation_not_allocation() {
        let mut e = Encoder::new();
        e.u64(u64::MAX);
        let b = e.into_bytes();
        let mut d = Decoder::new("s", &b);
        assert!(matches!(d.u64s(), Err(PersistError::Truncated { .. })));
    }

    #[test]
    fn bad_bool_names_the_field() {
        let b = [2u8];
        let mut d = Decoder::new("uart", &b);
        assert_eq!(
            d.bool("ier").unwrap_err().to_string(),
            "the snapshot's uart state has an invalid ier: the snapshot is damaged"
        );
    }
}
