//! Identifiers. Each is a newtype so a `NetId` can never be passed where a `ShardId` is meant.

use bitcode::{Decode, Encode};
use std::fmt;

/// Cluster-wide id of a networked entity. It never changes: not on handoff, not on failover.
///
/// The high 16 bits are the shard that allocated it and the low 48 bits a per-shard counter, so
/// shards allocate without coordinating and two shards can never mint the same id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct NetId(pub u64);

impl NetId {
    /// Bits left for the per-shard counter.
    pub const COUNTER_BITS: u32 = 48;
    /// The counter's bits.
    pub const COUNTER_MASK: u64 = (1 << Self::COUNTER_BITS) - 1;

    /// The id `counter` minted by `shard`; `None` once the 48-bit counter is exhausted.
    pub fn new(shard: ShardId, counter: u64) -> Option<Self> {
        (counter < (1 << Self::COUNTER_BITS))
            .then(|| Self((u64::from(shard.0) << Self::COUNTER_BITS) | counter))
    }

    /// The shard that minted this id (not necessarily its owner now).
    pub fn origin(self) -> ShardId {
        ShardId((self.0 >> Self::COUNTER_BITS) as u16)
    }
}

impl fmt::Display for NetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.origin().0, self.0 & Self::COUNTER_MASK)
    }
}

/// A shard process in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct ShardId(pub u16);

/// One simulation step. Ticks only grow; tick 0 is "before the first tick".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct Tick(pub u64);

impl Tick {
    /// The tick after this one.
    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

/// A client connection as the transport numbers it. Local to one shard process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// A quadtree leaf over the world rectangle: `level` 0 is the base cell size from config, each
/// level deeper halves the side. `morton` interleaves the cell's column (x) and row (z) bits, so
/// the four children of a cell are `morton * 4 + 0..4` and a parent is `morton / 4`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct CellId {
    pub level: u8,
    pub morton: u64,
}

impl CellId {
    /// The deepest level a cell may split to (a 32-bit column and row at level 0 need 64 bits).
    pub const MAX_LEVEL: u8 = 8;

    /// The base-level cell at column `cx`, row `cz`.
    pub fn base(cx: u32, cz: u32) -> Self {
        Self {
            level: 0,
            morton: interleave(cx) | (interleave(cz) << 1),
        }
    }

    /// Column and row of this cell on its own level's grid.
    pub fn coords(self) -> (u32, u32) {
        (deinterleave(self.morton), deinterleave(self.morton >> 1))
    }

    /// The four children, in Morton order; `None` at [`Self::MAX_LEVEL`].
    pub fn children(self) -> Option<[CellId; 4]> {
        (self.level < Self::MAX_LEVEL).then(|| {
            let level = self.level + 1;
            let m = self.morton << 2;
            [0, 1, 2, 3].map(|i| CellId {
                level,
                morton: m | i,
            })
        })
    }

    /// The cell this one was split from; `None` for a base cell.
    pub fn parent(self) -> Option<CellId> {
        (self.level > 0).then(|| CellId {
            level: self.level - 1,
            morton: self.morton >> 2,
        })
    }
}

impl fmt::Display for CellId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (x, z) = self.coords();
        write!(f, "L{}({x},{z})", self.level)
    }
}

fn interleave(v: u32) -> u64 {
    let mut x = u64::from(v);
    x = (x | (x << 16)) & 0x0000_FFFF_0000_FFFF;
    x = (x | (x << 8)) & 0x00FF_00FF_00FF_00FF;
    x = (x | (x << 4)) & 0x0F0F_0F0F_0F0F_0F0F;
    x = (x | (x << 2)) & 0x3333_3333_3333_3333;
    x = (x | (x << 1)) & 0x5555_5555_5555_5555;
    x
}

fn deinterleave(v: u64) -> u32 {
    let mut x = v & 0x5555_5555_5555_5555;
    x = (x | (x >> 1)) & 0x3333_3333_3333_3333;
    x = (x | (x >> 2)) & 0x0F0F_0F0F_0F0F_0F0F;
    x = (x | (x >> 4)) & 0x00FF_00FF_00FF_00FF;
    x = (x | (x >> 8)) & 0x0000_FFFF_0000_FFFF;
    x = (x | (x >> 16)) & 0x0000_0000_FFFF_FFFF;
    x as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn morton_round_trips_and_children_nest() {
        for (x, z) in [(0, 0), (1, 0), (0, 1), (5, 9), (65_535, 1), (u32::MAX, 7)] {
            let c = CellId::base(x, z);
            assert_eq!(
                c.coords(),
                (x, z),
                "Morton code must round-trip column and row"
            );
        }
        let c = CellId::base(3, 2);
        let kids = c.children().expect("level 0 can split");
        for k in kids {
            assert_eq!(k.parent(), Some(c), "every child names its parent");
        }
        let (kx, kz) = kids[3].coords();
        assert_eq!(
            (kx, kz),
            (7, 5),
            "child 3 is the far corner on the finer grid"
        );
    }

    #[test]
    fn net_ids_carry_their_origin_and_refuse_overflow() {
        let id = NetId::new(ShardId(7), 42).expect("small counter fits");
        assert_eq!(id.origin(), ShardId(7));
        assert!(
            NetId::new(ShardId(1), 1 << 48).is_none(),
            "counter overflow must not wrap"
        );
    }
}
