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
//! slot would otherwise restart each other's counts forever and never turn hot, and a
//! block merely turns hot a little early), unless both hold hot blocks: hot blocks keep
//! their slots, since a translated block whose count was lost would be interpreted again
//! until it turned hot anew. The newcomer is then [`BlockHeat::Crowded`]: the hart asks the
//! engine about it at every start, and the engine counts its starts itself. A guest that
//! turns more blocks hot than the table holds (a Linux boot: 20,000) thus only goes back
//! to asking at every start for the blocks that find no room; treating them as hot
//! instead translated every block a boot started after the first few thousand (67,000
//! instead of 22,000, 54 MiB of code instead of 18).

use crate::hart::Priv;

/// What the hart's count says of a block about to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockHeat {
    /// It has started fewer than `hot` times: the interpreter runs it, without asking.
    Cold,
    /// It has started `hot` times: the engine runs it (or translates it).
    Hot,
    /// The table has no room to count it (both its slots hold hot blocks): the engine counts
    /// its starts.
    Crowded,
}

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
    /// at least `hot` times (always, for `hot` of 1 or less; counts stop at 65,535), or the
    /// table has no room for it.
    #[inline(always)]
    pub(crate) fn start(&mut self, pc: u64, prv: Priv, hot: u32) -> BlockHeat {
        if hot <= 1 {
            return BlockHeat::Hot;
        }
        let hot = hot.min(0xffff);
        // The usual case inline: the block is in its first slot.
        let (i, tag) = (first_slot(pc, prv, self.slots.len()), tag(pc, prv));
        match self.slots.get_mut(i) {
            Some(slot) if *slot >> 16 == tag => bump(slot, tag, hot),
            _ => self.start_elsewhere(pc, prv, hot),
        }
    }

    /// What [`Heat::start`] said of the block at `pc` (privilege `prv`) at its last start,
    /// without counting one.
    pub(crate) fn now(&self, pc: u64, prv: Priv, hot: u32) -> BlockHeat {
        if hot <= 1 {
            return BlockHeat::Hot;
        }
        let hot = hot.min(0xffff);
        if self.slots.is_empty() {
            return BlockHeat::Cold;
        }
        match self.place(pc, prv, hot) {
            Place::Own(i) => hot_if(self.slots[i] & 0xffff >= hot),
            Place::Free(_) => BlockHeat::Cold,
            Place::Full => BlockHeat::Crowded,
        }
    }

    /// [`Heat::start`] for a block not in its first slot (or a table not allocated yet).
    #[inline(never)]
    fn start_elsewhere(&mut self, pc: u64, prv: Priv, hot: u32) -> BlockHeat {
        if self.slots.is_empty() {
            self.slots = vec![0; SLOTS];
        }
        match self.place(pc, prv, hot) {
            Place::Own(i) | Place::Free(i) => bump(&mut self.slots[i], tag(pc, prv), hot),
            Place::Full => BlockHeat::Crowded,
        }
    }

    /// Where the block at `pc` (privilege `prv`) stands in the (allocated) table.
    fn place(&self, pc: u64, prv: Priv, hot: u32) -> Place {
        let n = self.slots.len();
        let (first, second, tag) = (
            first_slot(pc, prv, n),
            second_slot(pc, prv, n),
            tag(pc, prv),
        );
        let tagged = |i: usize| self.slots[i] >> 16 == tag;
        let count = |i: usize| self.slots[i] & 0xffff;
        if tagged(first) {
            return Place::Own(first);
        }
        if tagged(second) {
            return Place::Own(second);
        }
        let colder = if count(second) < count(first) {
            second
        } else {
            first
        };
        if count(colder) >= hot {
            Place::Full
        } else {
            Place::Free(colder)
        }
    }
}

/// Where a block stands in the table (see the module's comment).
enum Place {
    /// This slot is the block's.
    Own(usize),
    /// Neither slot is, and this is the colder one, not hot: the block takes it and goes on
    /// from its count.
    Free(usize),
    /// Neither slot is, and both hold hot blocks ([`BlockHeat::Crowded`]).
    Full,
}

/// Count a start in `slot`, the block's (under `tag`) from now on.
#[inline(always)]
fn bump(slot: &mut u32, tag: u32, hot: u32) -> BlockHeat {
    let count = ((*slot & 0xffff) + 1).min(hot);
    *slot = tag << 16 | count;
    hot_if(count >= hot)
}

/// [`BlockHeat::Hot`] if `hot`, else [`BlockHeat::Cold`].
#[inline(always)]
fn hot_if(hot: bool) -> BlockHeat {
    if hot {
        BlockHeat::Hot
    } else {
        BlockHeat::Cold
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
        use BlockHeat::*;
        for start in 1..4 {
            assert_eq!(heat.start(0x8000_0000, Priv::S, 4), Cold, "start {start}");
            assert_eq!(heat.now(0x8000_0000, Priv::S, 4), Cold);
        }
        assert_eq!(heat.start(0x8000_0000, Priv::S, 4), Hot, "the 4th start");
        assert_eq!(heat.now(0x8000_0000, Priv::S, 4), Hot);
        assert_eq!(
            heat.start(0x8000_0000, Priv::S, 4),
            Hot,
            "and every later one"
        );
        assert_eq!(
            heat.start(0x8000_0010, Priv::S, 4),
            Cold,
            "another block counts alone"
        );
        assert_eq!(
            heat.start(0x8000_0000, Priv::M, 4),
            Cold,
            "so does M-mode's"
        );
    }

    #[test]
    fn a_threshold_of_one_counts_nothing() {
        let mut heat = Heat::default();
        assert_eq!(heat.start(0x1000, Priv::U, 1), BlockHeat::Hot);
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
    fn blocks_taking_turns_at_the_same_slots_are_all_handed_to_the_engine() {
        let a = 0x4000u64;
        let mut blocks = vec![a];
        blocks.extend(sharing_both_slots(a).take(2));
        let mut heat = small();
        let mut seen = [[false; 2]; 3];
        for _ in 0..24 {
            for (n, &pc) in blocks.iter().enumerate() {
                match heat.start(pc, Priv::U, 8) {
                    BlockHeat::Hot => seen[n][0] = true,
                    BlockHeat::Crowded => seen[n][1] = true,
                    BlockHeat::Cold => {}
                }
            }
        }
        // Counts merged while all three were cold; two then hold the slots, and the third,
        // with no room, goes to the engine to be counted there.
        let hot = seen.iter().filter(|s| s[0]).count();
        let crowded = seen.iter().filter(|s| s[1] && !s[0]).count();
        assert_eq!((hot, crowded), (2, 1), "{seen:?}");
    }

    #[test]
    fn hot_blocks_keep_their_slots_and_a_newcomer_is_crowded_out() {
        let a = 0x4000u64;
        let mut others = sharing_both_slots(a);
        let (b, c) = (others.next().unwrap(), others.next().unwrap());
        let mut heat = small();
        while heat.start(a, Priv::U, 4) != BlockHeat::Hot {}
        while heat.start(b, Priv::U, 4) != BlockHeat::Hot {}
        assert_eq!(
            heat.start(c, Priv::U, 4),
            BlockHeat::Crowded,
            "no room for a newcomer"
        );
        assert_eq!(heat.now(c, Priv::U, 4), BlockHeat::Crowded);
        assert_eq!(heat.start(a, Priv::U, 4), BlockHeat::Hot, "a still hot");
        assert_eq!(heat.start(b, Priv::U, 4), BlockHeat::Hot, "b still hot");
    }
}
