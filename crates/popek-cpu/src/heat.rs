//! Block heat: how often each block has started, counted by the hart itself, so that an engine
//! is asked to run only the blocks that started often enough to be worth translating.
//!
//! With an engine, the interpreter runs the code the engine has not translated. Asking the
//! engine at every block start (to learn that it has no translation yet) cost a restored
//! guest a tenth of its time: a return to the hart's outer loop, the engine's lookup of the
//! block, and a new entry into the interpreter, for each of the hundreds of thousands of
//! blocks a guest starts once or a few times. The interpreter counts block starts here
//! instead, without leaving its loop, and leaves it at a block only once that block has
//! started `hot` times: from then on it always leaves there (the count stays at `hot`), and
//! the engine runs the block's translation, or makes one.
//!
//! A block may take either of two slots of the table, chosen by a hash of its address and
//! privilege, and is told apart there by a tag. A block in neither takes the one with the
//! lower count and goes on from that count (merging counts: blocks taking turns at one
//! slot would otherwise restart each other's counts forever and never turn hot), unless
//! both hold hot blocks: hot blocks keep their slots, since a translated block whose count
//! was lost would be interpreted again until it turned hot anew, and the newcomer is
//! treated as hot. Either way a block is only handed to the engine earlier than `hot`
//! starts, which costs a lookup or an early translation, never correctness: the engine
//! decides what it runs.

use crate::hart::Priv;

/// Slots of the table, a power of two.
const SLOTS: usize = 1 << 13;

/// Start counts of blocks (see the module's comment): each slot is `tag << 16 | count`, 0 when
/// empty (every tag is odd). Four bytes a slot: the table is touched at random, and each of
/// its host pages costs a short-lived process VM a page fault.
#[derive(Default)]
pub(crate) struct Heat {
    /// Allocated at the first count: a hart without an engine never counts.
    slots: Vec<u32>,
}

impl Heat {
    /// Count a start of the block at `pc`, run at privilege `prv`: whether it has now started
    /// at least `hot` times (always, for `hot` of 1 or less; counts stop at 65,535).
    #[inline(always)]
    pub(crate) fn start(&mut self, pc: u64, prv: Priv, hot: u32) -> bool {
        if hot <= 1 {
            return true;
        }
        // The usual case inline: the block is in its first slot.
        let i = first_slot(pc, prv, self.slots.len());
        if let Some(slot) = self.slots.get_mut(i) {
            if *slot >> 16 == tag(pc, prv) {
                let hot = hot.min(0xffff);
                let count = ((*slot & 0xffff) + 1).min(hot);
                *slot = *slot & !0xffff | count;
                return count >= hot;
            }
        }
        self.start_elsewhere(pc, prv, hot.min(0xffff))
    }

    /// [`Heat::start`] for a block not in its first slot (or a table not allocated yet).
    #[inline(never)]
    fn start_elsewhere(&mut self, pc: u64, prv: Priv, hot: u32) -> bool {
        if self.slots.is_empty() {
            self.slots = vec![0; SLOTS];
        }
        let n = self.slots.len();
        let (first, second, tag) = (
            first_slot(pc, prv, n),
            second_slot(pc, prv, n),
            tag(pc, prv),
        );
        let tagged = |s: u32| s >> 16 == tag;
        let at = if tagged(self.slots[first]) {
            first
        } else if tagged(self.slots[second]) {
            second
        } else {
            // Neither holds it: the colder slot's count goes on as its own.
            let count = |i: usize| self.slots[i] & 0xffff;
            let colder = if count(second) < count(first) {
                second
            } else {
                first
            };
            if count(colder) >= hot {
                return true;
            }
            colder
        };
        let count = ((self.slots[at] & 0xffff) + 1).min(hot);
        self.slots[at] = tag << 16 | count;
        count >= hot
    }
}

/// The hash of a block at `pc` run at privilege `prv`, which places and tags it.
#[inline(always)]
fn hash(pc: u64, prv: Priv) -> u64 {
    (pc ^ (prv as u64) << 62).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The first of the two slots a block may take in a table of `n` slots (a power of two).
#[inline(always)]
fn first_slot(pc: u64, prv: Priv, n: usize) -> usize {
    (hash(pc, prv) >> 51) as usize & n.wrapping_sub(1)
}

/// The second of them.
#[inline(always)]
fn second_slot(pc: u64, prv: Priv, n: usize) -> usize {
    (hash(pc, prv) >> 38) as usize & n.wrapping_sub(1)
}

/// The tag telling a block apart in its slot: 16 bits, odd (an empty slot is 0).
#[inline(always)]
fn tag(pc: u64, prv: Priv) -> u32 {
    (hash(pc, prv) >> 8) as u32 & 0xffff | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_turns_hot_at_its_nth_start_and_stays_hot() {
        let mut heat = Heat::default();
        for start in 1..4 {
            assert!(
                !heat.start(0x8000_0000, Priv::S, 4),
                "start {start} is cold"
            );
        }
        assert!(heat.start(0x8000_0000, Priv::S, 4), "the 4th start is hot");
        assert!(
            heat.start(0x8000_0000, Priv::S, 4),
            "and so is every later one"
        );
        assert!(
            !heat.start(0x8000_0010, Priv::S, 4),
            "another block counts on its own"
        );
        assert!(
            !heat.start(0x8000_0000, Priv::M, 4),
            "so does the same address in M-mode"
        );
    }

    #[test]
    fn a_threshold_of_one_counts_nothing() {
        let mut heat = Heat::default();
        assert!(heat.start(0x1000, Priv::U, 1));
        assert!(heat.slots.is_empty(), "nothing allocated");
    }

    /// A table of 16 slots, where blocks sharing slots are easy to find.
    fn small() -> Heat {
        Heat { slots: vec![0; 16] }
    }

    /// Blocks whose two slots in a table of 16 are those of `a` (in either order), other than
    /// `a`.
    fn sharing_both_slots(a: u64) -> impl Iterator<Item = u64> {
        let slots = |pc| (first_slot(pc, Priv::U, 16), second_slot(pc, Priv::U, 16));
        let (x, y) = slots(a);
        (1..1u64 << 20).map(move |n| a + 2 * n).filter(move |&pc| {
            let (p, q) = slots(pc);
            (p, q) == (x, y) || (p, q) == (y, x)
        })
    }

    #[test]
    fn blocks_taking_turns_at_the_same_slots_all_turn_hot() {
        let a = 0x4000u64;
        let mut blocks = vec![a];
        blocks.extend(sharing_both_slots(a).take(2));
        let mut heat = small();
        let mut hot = [false; 3];
        for _ in 0..24 {
            for (n, &pc) in blocks.iter().enumerate() {
                hot[n] |= heat.start(pc, Priv::U, 8);
            }
        }
        assert_eq!(
            hot, [true; 3],
            "three blocks for two slots, each started 24 times"
        );
    }

    #[test]
    fn hot_blocks_keep_their_slots() {
        let a = 0x4000u64;
        let mut others = sharing_both_slots(a);
        let (b, c) = (others.next().unwrap(), others.next().unwrap());
        let mut heat = small();
        while !heat.start(a, Priv::U, 4) {}
        while !heat.start(b, Priv::U, 4) {}
        assert!(
            heat.start(c, Priv::U, 4),
            "a newcomer to two hot slots counts as hot"
        );
        assert!(
            heat.start(a, Priv::U, 4) && heat.start(b, Priv::U, 4),
            "both still hot"
        );
    }
}
