//! This shard's place in the world: the cell map, who owns the cell under a point, and the
//! boundary index that finds the neighbour shards near a point.

use super::boundary::{BoundaryIndex, OwnedCore};
use bevy_ecs::prelude::*;
use zonescaler_shared::ShardId;
use zonescaler_shared::cellmap::{CellGrid, CellMap};
use zonescaler_shared::protocol::{CellMapView, LeafView};

/// This shard's place in the cluster's space.
#[derive(Resource, Debug)]
pub struct Space {
    pub me: ShardId,
    pub map: CellMap,
    pub boundary: BoundaryIndex,
    /// Whether any cell belongs to another shard (if not, there is nothing to mirror).
    pub has_neighbours: bool,
    /// The bulk of this shard's region, for [`Self::owner_at`].
    core: OwnedCore,
}

impl Space {
    /// A point in a cell this shard owns, drawn from `rng` (64 tries; `None` if the shard owns
    /// (almost) nothing).
    pub fn random_owned_point(&self, rng: &mut zonescaler_shared::rng::Rng) -> Option<glam::Vec3> {
        let w = self.grid().world();
        (0..64).find_map(|_| {
            let p = [
                rng.range_f32(w.min[0], w.max[0]),
                rng.range_f32(w.min[1], w.max[1]),
            ];
            self.owns(p).then(|| glam::Vec3::new(p[0], 0.0, p[1]))
        })
    }

    /// A random point in a random leaf of `shard` (a login admission sent there); `None` if it
    /// owns no cell.
    pub fn random_point_of(
        &self,
        shard: ShardId,
        rng: &mut zonescaler_shared::rng::Rng,
    ) -> Option<glam::Vec3> {
        let leaves: Vec<_> = self
            .map
            .leaves()
            .iter()
            .filter(|(_, s)| **s == shard)
            .map(|(c, _)| *c)
            .collect();
        let cell = *leaves.get(rng.below(leaves.len().max(1) as u64) as usize)?;
        let r = self.grid().rect(cell);
        Some(glam::Vec3::new(
            rng.range_f32(r.min[0], r.max[0]),
            0.0,
            rng.range_f32(r.min[1], r.max[1]),
        ))
    }

    pub fn new(me: ShardId, map: CellMap) -> Self {
        let boundary = BoundaryIndex::new(&map);
        let has_neighbours = map.leaves().values().any(|s| *s != me);
        let core = boundary.owned_core(me);
        Self {
            me,
            map,
            boundary,
            has_neighbours,
            core,
        }
    }

    /// This shard's share of `count` things spread over the world by area (NPCs, pickups): the
    /// same world has the same number of them on one shard or on many.
    pub fn share_of(&self, count: usize) -> usize {
        let world_area = self.grid().world().area();
        let owned: f32 = self
            .map
            .cells_of(self.me)
            .map(|c| self.grid().rect(c).area())
            .sum();
        ((count as f64) * f64::from(owned / world_area.max(f32::MIN_POSITIVE))).round() as usize
    }

    /// Whether this shard owns the leaf under `p`.
    pub fn owns(&self, p: [f32; 2]) -> bool {
        self.owner_at(p) == Some(self.me)
    }

    /// The owner of the leaf under `p`: `map.owner_at(p)`, answered without the descent
    /// through the map where it can be: inside the bulk of this shard's region (four
    /// comparisons per block), else from the base-cell table where one shard owns the whole
    /// base cell (the common case, and the only one on an unsplit map).
    pub fn owner_at(&self, p: [f32; 2]) -> Option<ShardId> {
        // The index is built with the map; a map changed in place (not through `Space::new`)
        // is answered by the map alone.
        if self.boundary.epoch() == self.map.epoch() {
            if self.core.contains(p) {
                return Some(self.me);
            }
            if let Some(owner) = self.boundary.base_owner_at(p) {
                return Some(owner);
            }
        }
        self.map.owner_at(p)
    }

    pub fn grid(&self) -> &CellGrid {
        self.map.grid()
    }

    /// The map as clients get it (no leaves if it is too big to send).
    pub fn client_view(&self) -> CellMapView {
        let leaves = self.map.leaves();
        let leaves = if leaves.len() > zonescaler_shared::limits::CELL_MAP_LEAVES_TO_CLIENTS_MAX {
            Vec::new()
        } else {
            leaves
                .iter()
                .map(|(cell, shard)| {
                    let r = self.grid().rect(*cell);
                    LeafView {
                        rect: [r.min[0], r.min[1], r.max[0], r.max[1]],
                        shard: *shard,
                    }
                })
                .filter(|l| l.rect[2] > l.rect[0] && l.rect[3] > l.rect[1])
                .collect()
        };
        CellMapView {
            epoch: self.map.epoch().0,
            leaves,
        }
    }
}

/// The world's base cell grid (from config).
#[derive(Resource, Debug, Clone)]
pub struct Grid(pub CellGrid);
