//! The master's side of cell moves: which moves are under way, and what ends them.
//!
//! A move of leaf `cell` from shard A to shard B goes:
//! 1. [`Master::move_cell`](super::Master::move_cell) opens it here and sends
//!    `MoveCell { id, cell, from: A, to: B }` to both. The map does not change yet: A still owns
//!    the cell, and B takes A's entities of it as if it owned it already.
//! 2. A ships them (paced handoffs, `authority::cell_move`) and reports `CellShipped { id }`.
//! 3. The master flips the leaf to B under a new epoch and pushes the map to every member.
//!
//! A move that does not finish in `cluster.cell_move_timeout_ms`, or whose source or target
//! dies, is aborted: `MoveAborted` to both, the map unchanged, so A keeps the cell and B hands
//! back whatever it took (they stand in A's cell). Never two owners of a point, never none: the
//! map names one owner per leaf at every epoch, and entities change hands only by handoff.
//! At most one move per leaf at a time; a leaf being moved is not split or merged.

use std::collections::BTreeMap;
use zonescaler_shared::{CellId, ShardId};

/// Moves under way at once, cluster-wide: the balancer's per-round bound is far below this; it
/// only keeps a confused caller from flooding the shards.
pub const MOVES_ACTIVE_MAX: usize = 1_024;

/// One move under way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActiveMove {
    pub id: u64,
    pub cell: CellId,
    pub from: ShardId,
    pub to: ShardId,
    pub started_ms: u64,
}

/// Why a move was not started.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MoveError {
    #[error("the cells are not placed yet")]
    NotPlaced,
    #[error("cell {0} is not a leaf of the map")]
    NotALeaf(CellId),
    #[error("shard {0} already owns cell {1}")]
    SameOwner(u16, CellId),
    #[error("shard {0} is not a live member")]
    NotAlive(u16),
    #[error("shard {0} takes no cells (it is draining, or has not linked to every member yet)")]
    NotTakingCells(u16),
    #[error("cell {0} is already being moved")]
    Busy(CellId),
    #[error("{MOVES_ACTIVE_MAX} moves are under way already")]
    TooMany,
}

/// How a move ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveEnd {
    /// The source shipped everything: flip the map.
    Shipped,
    /// Not finished in time.
    TimedOut,
    /// Its source or target died.
    MemberDied,
}

/// The moves under way, by id.
#[derive(Debug, Default)]
pub struct MoveTable {
    next_id: u64,
    active: BTreeMap<u64, ActiveMove>,
}

impl MoveTable {
    /// A table of `moves` under way (a successor's, from its predecessor's state); new moves
    /// get ids past theirs.
    pub fn resumed(moves: impl IntoIterator<Item = ActiveMove>) -> Self {
        let active: BTreeMap<u64, ActiveMove> = moves.into_iter().map(|m| (m.id, m)).collect();
        Self {
            next_id: active.keys().max().copied().unwrap_or(0),
            active,
        }
    }

    /// Every move under way, taken out of the table (a successor aborts its predecessor's).
    pub fn take_all(&mut self) -> Vec<ActiveMove> {
        std::mem::take(&mut self.active).into_values().collect()
    }

    /// Moves under way.
    pub fn active(&self) -> impl Iterator<Item = &ActiveMove> {
        self.active.values()
    }

    /// The move of `cell`, if one is under way.
    pub fn of_cell(&self, cell: CellId) -> Option<&ActiveMove> {
        self.active.values().find(|m| m.cell == cell)
    }

    /// Open a move; the caller has checked the map and the members.
    pub fn open(
        &mut self,
        cell: CellId,
        from: ShardId,
        to: ShardId,
        now_ms: u64,
    ) -> Result<ActiveMove, MoveError> {
        if self.of_cell(cell).is_some() {
            return Err(MoveError::Busy(cell));
        }
        if self.active.len() >= MOVES_ACTIVE_MAX {
            return Err(MoveError::TooMany);
        }
        self.next_id += 1;
        let m = ActiveMove {
            id: self.next_id,
            cell,
            from,
            to,
            started_ms: now_ms,
        };
        self.active.insert(m.id, m);
        Ok(m)
    }

    /// `from` reports move `id` shipped: the move, if it is under way and `from` is its source.
    pub fn shipped(&mut self, id: u64, from: ShardId) -> Option<ActiveMove> {
        if self.active.get(&id)?.from != from {
            return None;
        }
        self.active.remove(&id)
    }

    /// Close the moves that took longer than `timeout_ms`, or whose source or target is not
    /// `alive`.
    pub fn expire(
        &mut self,
        now_ms: u64,
        timeout_ms: u64,
        alive: impl Fn(ShardId) -> bool,
    ) -> Vec<(ActiveMove, MoveEnd)> {
        let mut ended = Vec::new();
        self.active.retain(|_, m| {
            let end = if !alive(m.from) || !alive(m.to) {
                Some(MoveEnd::MemberDied)
            } else if now_ms.saturating_sub(m.started_ms) > timeout_ms {
                Some(MoveEnd::TimedOut)
            } else {
                None
            };
            if let Some(e) = end {
                ended.push((*m, e));
            }
            end.is_none()
        });
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(n: u64) -> CellId {
        CellId::base(n as u32, 0)
    }

    #[test]
    fn one_move_per_cell_and_only_its_source_can_finish_it() {
        let mut t = MoveTable::default();
        let m = t.open(cell(1), ShardId(0), ShardId(1), 0).unwrap();
        assert_eq!(
            t.open(cell(1), ShardId(0), ShardId(2), 1),
            Err(MoveError::Busy(cell(1)))
        );
        assert!(
            t.open(cell(2), ShardId(0), ShardId(2), 1).is_ok(),
            "another cell"
        );
        assert_eq!(
            t.shipped(m.id, ShardId(1)),
            None,
            "the target cannot finish it"
        );
        assert_eq!(t.shipped(m.id, ShardId(0)), Some(m));
        assert_eq!(t.shipped(m.id, ShardId(0)), None, "once");
    }

    #[test]
    fn moves_end_on_timeout_or_when_a_party_dies() {
        let mut t = MoveTable::default();
        let slow = t.open(cell(1), ShardId(0), ShardId(1), 0).unwrap();
        let orphan = t.open(cell(2), ShardId(2), ShardId(3), 500).unwrap();
        let fine = t.open(cell(3), ShardId(0), ShardId(1), 900).unwrap();
        let ended = t.expire(1_001, 1_000, |s| s != ShardId(3));
        assert_eq!(
            ended,
            vec![(slow, MoveEnd::TimedOut), (orphan, MoveEnd::MemberDied)]
        );
        assert_eq!(t.active().copied().collect::<Vec<_>>(), vec![fine]);
    }
}
