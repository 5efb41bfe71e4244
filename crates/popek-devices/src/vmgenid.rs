//! A VM generation ID (Microsoft's `vmgenid`, device-tree binding `microsoft,vmgenid`): 16
//! read-only bytes that change whenever the machine is restored from a snapshot, plus an
//! interrupt saying so. Linux's built-in driver then reseeds its random number generator at
//! once, so clones of one snapshot do not hand out the same "random" numbers.

use crate::MmioDevice;

/// Size of the window (the GUID).
pub const SIZE: u64 = 16;

/// The generation ID.
#[derive(Debug)]
pub struct VmGenId {
    id: [u8; 16],
}

impl VmGenId {
    /// A device holding `id` (random bytes for a new machine).
    pub fn new(id: [u8; 16]) -> VmGenId {
        VmGenId { id }
    }

    /// The current ID.
    pub fn id(&self) -> [u8; 16] {
        self.id
    }

    /// A new generation: the board pulses the device's interrupt after this.
    pub fn set_id(&mut self, id: [u8; 16]) {
        self.id = id;
    }
}

impl MmioDevice for VmGenId {
    fn read(&mut self, offset: u64, size: u8) -> u64 {
        let mut v = [0u8; 8];
        for (i, b) in v.iter_mut().enumerate().take(size.min(8) as usize) {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| self.id.get(o as usize))
                .copied()
                .unwrap_or(0);
        }
        u64::from_le_bytes(v)
    }

    fn write(&mut self, _offset: u64, _size: u8, _value: u64) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_id_in_any_width() {
        let mut g = VmGenId::new(*b"0123456789abcdef");
        assert_eq!(g.read(0, 8).to_le_bytes(), *b"01234567");
        assert_eq!(g.read(8, 4) as u32, u32::from_le_bytes(*b"89ab"));
        assert_eq!(g.read(15, 8), b'f' as u64);
        g.write(0, 8, 0);
        g.set_id([7; 16]);
        assert_eq!(g.read(0, 1), 7);
    }
}
