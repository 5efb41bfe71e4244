//! Descriptor chains as lists of checked guest-memory segments.
//!
//! A hostile driver controls every descriptor, so each buffer is checked against guest RAM
//! before a device touches it, and the device-readable part must come before the
//! device-writable part (virtio 1.2, 2.7.4.2). Devices then work on byte ranges of the two
//! lists without caring how the driver split them into descriptors.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryBackend};

use crate::GuestMem;

/// One buffer of a chain: `len` bytes of guest RAM at `addr`, all in one memory region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
}

/// Why a chain was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    /// A buffer lies (partly) outside guest RAM.
    #[error("descriptor buffer {addr:#x}+{len:#x} is outside guest RAM")]
    OutsideMemory {
        /// Start of the buffer.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// A device-readable buffer follows a device-writable one.
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    /// The chain is larger than the device accepts.
    #[error("descriptor chain longer than {0} bytes")]
    TooLong(u64),
}

/// A parsed descriptor chain.
#[derive(Clone, Debug, Default)]
pub struct Chain {
    /// Index of the head descriptor (what goes into the used ring).
    pub head: u16,
    /// Buffers the device reads, in order.
    pub readable: Vec<Segment>,
    /// Buffers the device writes, in order.
    pub writable: Vec<Segment>,
}

/// Most bytes one chain may describe (bounds a device's work per request).
pub const MAX_CHAIN_BYTES: u64 = 64 << 20;

impl Chain {
    /// Check every buffer of `chain` against `mem` and sort them into readable and writable.
    pub fn parse<M>(chain: DescriptorChain<M>, mem: &GuestMem) -> Result<Chain, ChainError>
    where
        M: Deref,
        M::Target: GuestMemory,
    {
        let mut out = Chain {
            head: chain.head_index(),
            ..Default::default()
        };
        let mut total = 0u64;
        for desc in chain {
            let seg = Segment {
                addr: desc.addr().0,
                len: desc.len(),
            };
            total += seg.len as u64;
            if total > MAX_CHAIN_BYTES {
                return Err(ChainError::TooLong(MAX_CHAIN_BYTES));
            }
            if seg.len == 0 {
                continue;
            }
            if mem
                .get_slice(GuestAddress(seg.addr), seg.len as usize)
                .is_err()
            {
                return Err(ChainError::OutsideMemory {
                    addr: seg.addr,
                    len: seg.len,
                });
            }
            if desc.is_write_only() {
                out.writable.push(seg);
            } else if !out.writable.is_empty() {
                return Err(ChainError::ReadableAfterWritable);
            } else {
                out.readable.push(seg);
            }
        }
        Ok(out)
    }
}

/// Total length of `segs`.
pub fn total_len(segs: &[Segment]) -> u64 {
    segs.iter().map(|s| s.len as u64).sum()
}

/// Split off the first `n` bytes of `segs`, or None if there are fewer.
pub fn split_front(segs: &mut Vec<Segment>, n: u64) -> Option<Vec<Segment>> {
    if total_len(segs) < n {
        return None;
    }
    let mut front = Vec::new();
    let mut need = n;
    while need > 0 {
        let first = &mut segs[0];
        if (first.len as u64) <= need {
            need -= first.len as u64;
            front.push(segs.remove(0));
        } else {
            front.push(Segment {
                addr: first.addr,
                len: need as u32,
            });
            first.addr += need;
            first.len -= need as u32;
            need = 0;
        }
    }
    Some(front)
}

/// Split off the last `n` bytes of `segs`, or None if there are fewer.
pub fn split_back(segs: &mut Vec<Segment>, n: u64) -> Option<Vec<Segment>> {
    if total_len(segs) < n {
        return None;
    }
    let mut back = Vec::new();
    let mut need = n;
    while need > 0 {
        let last = segs.last_mut().expect("length checked above");
        if (last.len as u64) <= need {
            need -= last.len as u64;
            back.insert(0, segs.pop().expect("length checked above"));
        } else {
            last.len -= need as u32;
            back.insert(
                0,
                Segment {
                    addr: last.addr + last.len as u64,
                    len: need as u32,
                },
            );
            need = 0;
        }
    }
    Some(back)
}

/// Gather the bytes of `segs` (checked by [`Chain::parse`]) into a vector.
pub fn gather(mem: &GuestMem, segs: &[Segment]) -> Vec<u8> {
    let mut out = vec![0u8; total_len(segs) as usize];
    let mut at = 0;
    for s in segs {
        let end = at + s.len as usize;
        // Parse checked the range; a failure here would only leave zeros.
        let _ = mem.read_slice(&mut out[at..end], GuestAddress(s.addr));
        at = end;
    }
    out
}

/// Scatter `data` over `segs`; returns how many bytes were written.
pub fn scatter(mem: &GuestMem, segs: &[Segment], data: &[u8]) -> usize {
    let mut at = 0;
    for s in segs {
        if at >= data.len() {
            break;
        }
        let n = (s.len as usize).min(data.len() - at);
        if mem
            .write_slice(&data[at..at + n], GuestAddress(s.addr))
            .is_err()
        {
            break;
        }
        at += n;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(addr: u64, len: u32) -> Segment {
        Segment { addr, len }
    }

    #[test]
    fn splits_across_segments() {
        let mut segs = vec![seg(0x1000, 10), seg(0x2000, 4), seg(0x3000, 6)];
        let front = split_front(&mut segs, 12).unwrap();
        assert_eq!(front, vec![seg(0x1000, 10), seg(0x2000, 2)]);
        assert_eq!(segs, vec![seg(0x2002, 2), seg(0x3000, 6)]);
        let back = split_back(&mut segs, 7).unwrap();
        assert_eq!(back, vec![seg(0x2003, 1), seg(0x3000, 6)]);
        assert_eq!(segs, vec![seg(0x2002, 1)]);
        assert!(split_front(&mut segs, 2).is_none());
        assert_eq!(split_back(&mut segs, 1).unwrap(), vec![seg(0x2002, 1)]);
        assert!(segs.is_empty());
    }
}
