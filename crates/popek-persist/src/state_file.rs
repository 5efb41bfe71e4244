//! The state file: named, versioned sections behind a magic number, ending in a CRC-32.
//!
//! Layout (little-endian): `POPEKSTA` magic, format version (u32), section count (u32), then per
//! section: name length (u32), name, version (u32), data length (u64), data; finally the CRC-32 of
//! everything before it.

use crate::{Decoder, Encoder, Persist, PersistError};

const MAGIC: &[u8; 8] = b"POPEKSTA";
const FORMAT: u32 = 1;

/// A set of named sections, each holding one part's state.
#[derive(Debug, Default)]
pub struct StateFile {
    sections: Vec<(String, u32, Vec<u8>)>,
}

impl StateFile {
    /// An empty state file.
    pub fn new() -> StateFile {
        StateFile::default()
    }

    /// Add section `name` with `part`'s state.
    pub fn put<P: Persist>(&mut self, name: impl Into<String>, part: &P) {
        let mut enc = Encoder::new();
        part.save(&mut enc);
        self.sections
            .push((name.into(), P::VERSION, enc.into_bytes()));
    }

    /// Restore `part` from section `name`, which must exist, have `P`'s version and be read
    /// to its end.
    pub fn get<P: Persist>(&self, name: &str, part: &mut P) -> Result<(), PersistError> {
        let (_, version, data) = self
            .sections
            .iter()
            .find(|(n, _, _)| n == name)
            .ok_or_else(|| PersistError::MissingSection(name.to_string()))?;
        if *version != P::VERSION {
            return Err(PersistError::Version {
                section: name.to_string(),
                found: *version,
                expected: P::VERSION,
            });
        }
        let mut dec = Decoder::new(name, data);
        part.restore(&mut dec)?;
        dec.finish()
    }

    /// Whether section `name` exists.
    pub fn has(&self, name: &str) -> bool {
        self.sections.iter().any(|(n, _, _)| n == name)
    }

    /// Section names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.sections.iter().map(|(n, _, _)| n.as_str())
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT.to_le_bytes());
        out.extend_from_slice(&(self.sections.len() as u32).to_le_bytes());
        for (name, version, data) in &self.sections {
            out.extend_from_slice(&(name.len() as u32).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&version.to_le_bytes());
            out.extend_from_slice(&(data.len() as u64).to_le_bytes());
            out.extend_from_slice(data);
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parse a file's bytes, checking magic, format and checksum before anything else.
    pub fn from_bytes(bytes: &[u8]) -> Result<StateFile, PersistError> {
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(PersistError::BadMagic);
        }
        if bytes.len() < MAGIC.len() + 12 {
            return Err(PersistError::Truncated {
                what: "state file header".into(),
            });
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err(PersistError::Checksum);
        }
        let mut d = Decoder::new("state file header", &body[MAGIC.len()..]);
        let format = d.u32()?;
        if format != FORMAT {
            return Err(PersistError::Version {
                section: "state file".into(),
                found: format,
                expected: FORMAT,
            });
        }
        let count = d.u32()?;
        let mut sections = Vec::new();
        for _ in 0..count {
            let name_len = d.u32()? as usize;
            let name = read_exact(&mut d, name_len)?;
            let name = String::from_utf8(name.to_vec()).map_err(|_| d.invalid("section name"))?;
            let version = d.u32()?;
            let len = d.u64()?;
            let data = read_exact(&mut d, usize::try_from(len).unwrap_or(usize::MAX))?;
            sections.push((name, version, data.to_vec()));
        }
        d.finish()?;
        Ok(StateFile { sections })
    }
}

fn read_exact<'a>(d: &mut Decoder<'a>, n: usize) -> Result<&'a [u8], PersistError> {
    d.raw(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Word<const V: u32 = 3>(u64);

    impl<const V: u32> Persist for Word<V> {
        const VERSION: u32 = V;
        fn save(&self, out: &mut Encoder) {
            out.u64(self.0);
        }
        fn restore(&mut self, input: &mut Decoder<'_>) -> Result<(), PersistError> {
            self.0 = input.u64()?;
            Ok(())
        }
    }

    fn sample() -> Vec<u8> {
        let mut f = StateFile::new();
        f.put("hart0", &Word::<3>(42));
        f.put("clint", &Word::<3>(7));
        f.to_bytes()
    }

    #[test]
    fn sections_round_trip() {
        let f = StateFile::from_bytes(&sample()).unwrap();
        let mut w: Word = Word(0);
        f.get("clint", &mut w).unwrap();
        assert_eq!(w.0, 7);
        assert_eq!(f.names().collect::<Vec<_>>(), ["hart0", "clint"]);
        assert_eq!(
            f.get("plic", &mut w).unwrap_err(),
            PersistError::MissingSection("plic".into())
        );
    }

    #[test]
    fn every_flipped_bit_and_truncation_is_refused() {
        let bytes = sample();
        for i in 0..bytes.len() {
            assert!(StateFile::from_bytes(&bytes[..i]).is_err(), "cut at {i}");
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert!(StateFile::from_bytes(&b).is_err(), "bit {bit} of byte {i}");
            }
        }
    }

    #[test]
    fn another_version_is_named() {
        let f = StateFile::from_bytes(&sample()).unwrap();
        let err = f.get("hart0", &mut Word::<4>(0)).unwrap_err().to_string();
        assert_eq!(err, "the snapshot's hart0 state is version 3; this popek reads version 4: create the snapshot again with this popek");
    }
}
