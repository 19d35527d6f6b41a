//! Boundary interest: which neighbour shards must mirror an owned entity as a read-only proxy.
//!
//! An entity within `interest_radius_m` of a cell owned by another shard must exist there as a
//! proxy, so that shard's clients see it and its systems can react to it. [`BoundaryIndex`] is an
//! `rstar` R-tree over the leaf rectangles of the [`CellMap`] and their owners. The map changes
//! rarely (a new epoch every few seconds at most) while the query runs for every owned entity
//! every tick, so the tree is bulk-loaded once per epoch and only read in between.

use rstar::{AABB, RTree, RTreeObject};
use zonescaler_shared::ShardId;
use zonescaler_shared::cellmap::{CellMap, Epoch, Rect};

/// One leaf of the map as the R-tree stores it.
#[derive(Clone, Copy, Debug)]
struct OwnedRect {
    rect: Rect,
    owner: ShardId,
}

impl RTreeObject for OwnedRect {
    type Envelope = AABB<[f32; 2]>;

    fn envelope(&self) -> Self::Envelope {
        AABB::from_corners(self.rect.min, self.rect.max)
    }
}

/// The leaf rectangles of one epoch of the cell map, indexed for circle queries.
#[derive(Debug)]
pub struct BoundaryIndex {
    epoch: Epoch,
    tree: RTree<OwnedRect>,
}

impl BoundaryIndex {
    /// Index the leaves of `map` at its current epoch.
    pub fn new(map: &CellMap) -> Self {
        Self {
            epoch: map.epoch(),
            tree: Self::build(map),
        }
    }

    fn build(map: &CellMap) -> RTree<OwnedRect> {
        let grid = map.grid();
        let leaves = map
            .leaves()
            .iter()
            .map(|(&cell, &owner)| OwnedRect {
                rect: grid.rect(cell),
                owner,
            })
            // A leaf split off past the world's max edge is an empty sliver on that edge: no
            // entity can be in it, so its owner needs no proxies from here.
            .filter(|leaf| !leaf.rect.is_empty())
            .collect();
        RTree::bulk_load(leaves)
    }

    /// The epoch of the map this index was built from.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Rebuild from `map` if its epoch differs from the indexed one; true if it rebuilt. Any
    /// difference rebuilds, not only a newer epoch: which map is current is the caller's decision.
    pub fn rebuild_if_stale(&mut self, map: &CellMap) -> bool {
        if map.epoch() == self.epoch {
            return false;
        }
        *self = Self::new(map);
        true
    }

    /// Every shard other than `own` owning a leaf whose rectangle touches the closed disc
    /// (`p`, `radius`), into `out`: cleared first, then sorted and without duplicates. `out` is
    /// bounded by the number of shards and is the caller's so its allocation is reused across
    /// entities and ticks. A negative or NaN radius finds nothing; radius 0 finds the owners of
    /// the leaves whose border `p` lies on.
    pub fn foreign_shards_near(
        &self,
        p: [f32; 2],
        radius: f32,
        own: ShardId,
        out: &mut Vec<ShardId>,
    ) {
        out.clear();
        if radius.is_nan() || radius < 0.0 {
            return;
        }
        // The R-tree can only answer box queries: take the circle's bounding box, then drop the
        // leaves that touch the box only in its corners.
        let envelope = AABB::from_corners(
            [p[0] - radius, p[1] - radius],
            [p[0] + radius, p[1] + radius],
        );
        for leaf in self.tree.locate_in_envelope_intersecting(&envelope) {
            // Most hits are the entity's own cells; the membership test runs on a handful of
            // shards at most, cheaper than a set.
            if leaf.owner != own
                && !out.contains(&leaf.owner)
                && leaf.rect.intersects_circle(p, radius)
            {
                out.push(leaf.owner);
            }
        }
        out.sort_unstable();
    }

    /// Whether `shard` owns a leaf touching the closed disc (`p`, `radius`): the handoff
    /// hysteresis test ("is the entity still within the margin of its owner's cells?").
    pub fn owns_near(&self, p: [f32; 2], radius: f32, shard: ShardId) -> bool {
        if radius.is_nan() || radius < 0.0 {
            return false;
        }
        let envelope = AABB::from_corners(
            [p[0] - radius, p[1] - radius],
            [p[0] + radius, p[1] + radius],
        );
        self.tree
            .locate_in_envelope_intersecting(&envelope)
            .any(|leaf| leaf.owner == shard && leaf.rect.intersects_circle(p, radius))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zonescaler_shared::CellId;
    use zonescaler_shared::cellmap::{CellGrid, assign_contiguous};
    use zonescaler_shared::config::WorldConfig;
    use zonescaler_shared::rng::Rng;

    fn grid(max: [f32; 2], size: f32) -> CellGrid {
        let mut config = WorldConfig::default();
        config.world.min_x = 0.0;
        config.world.min_z = 0.0;
        config.world.max_x = max[0];
        config.world.max_z = max[1];
        config.world.base_cell_size_m = size;
        CellGrid::from_config(&config)
    }

    fn brute_force(map: &CellMap, p: [f32; 2], radius: f32, own: ShardId) -> Vec<ShardId> {
        let mut shards: Vec<ShardId> = map
            .leaves()
            .iter()
            .filter(|&(&cell, &owner)| {
                let r = map.grid().rect(cell);
                owner != own && !r.is_empty() && r.intersects_circle(p, radius)
            })
            .map(|(_, &owner)| owner)
            .collect();
        shards.sort_unstable();
        shards.dedup();
        shards
    }

    /// A contiguous placement of 2–6 shards, then random splits and reassignments of leaves to a
    /// neighbour's owner so borders also run through split cells.
    fn random_map(rng: &mut Rng) -> CellMap {
        let size = [16.0, 25.0, 64.0][rng.below(3) as usize];
        let g = grid(
            [rng.range_f32(50.0, 400.0), rng.range_f32(50.0, 400.0)],
            size,
        );
        let shards: Vec<(ShardId, u32)> = (0..2 + rng.below(5))
            .map(|i| (ShardId(i as u16), 1 + rng.below(10) as u32))
            .collect();
        let mut map = assign_contiguous(&g, &shards).expect("positive weights");
        for _ in 0..rng.below(60) {
            let leaves: Vec<CellId> = map.leaves().keys().copied().collect();
            let leaf = leaves[rng.below(leaves.len() as u64) as usize];
            if rng.chance(0.7) {
                let _ = map.split(leaf);
            } else {
                let owner = shards[rng.below(shards.len() as u64) as usize].0;
                let _ = map.reassign(leaf, owner);
            }
        }
        map
    }

    #[test]
    fn foreign_shards_match_brute_force_on_random_maps() {
        let mut rng = Rng::new(0xB0DA);
        let mut out = Vec::new();
        let mut nonempty = 0;
        for _ in 0..40 {
            let map = random_map(&mut rng);
            let index = BoundaryIndex::new(&map);
            let world = map.grid().world();
            let leaves: Vec<CellId> = map.leaves().keys().copied().collect();
            for _ in 0..300 {
                let p = if rng.chance(0.5) {
                    [
                        rng.range_f32(world.min[0] - 20.0, world.max[0] + 20.0),
                        rng.range_f32(world.min[1] - 20.0, world.max[1] + 20.0),
                    ]
                } else {
                    // A corner or edge point of some leaf: exactly on a border.
                    let r = map
                        .grid()
                        .rect(leaves[rng.below(leaves.len() as u64) as usize]);
                    let x = [r.min[0], r.max[0], rng.range_f32(r.min[0], r.max[0])];
                    let z = [r.min[1], r.max[1], rng.range_f32(r.min[1], r.max[1])];
                    if rng.chance(0.5) {
                        [x[rng.below(2) as usize], z[rng.below(3) as usize]]
                    } else {
                        [x[rng.below(3) as usize], z[rng.below(2) as usize]]
                    }
                };
                let radius = match rng.below(4) {
                    0 => 0.0,
                    1 => rng.range_f32(0.0, 2.0),
                    _ => rng.range_f32(0.0, 80.0),
                };
                let own = map.owner_at(p).expect("every point has an owner");
                index.foreign_shards_near(p, radius, own, &mut out);
                assert_eq!(
                    out,
                    brute_force(&map, p, radius, own),
                    "p {p:?}, radius {radius}, own shard {}",
                    own.0
                );
                nonempty += usize::from(!out.is_empty());
            }
        }
        assert!(
            nonempty > 1_000,
            "the queries must reach borders often ({nonempty})"
        );
    }

    #[test]
    fn an_entity_deep_inside_its_region_has_no_foreign_shards() {
        // 8 x 8 cells of 10 m, two equal shards: shard 1 owns rows 0–3, shard 2 rows 4–7.
        let g = grid([80.0, 80.0], 10.0);
        let map = assign_contiguous(&g, &[(ShardId(1), 1), (ShardId(2), 1)]).expect("capacity");
        let index = BoundaryIndex::new(&map);
        let mut out = vec![ShardId(99)];
        index.foreign_shards_near([40.0, 15.0], 20.0, ShardId(1), &mut out);
        assert!(
            out.is_empty(),
            "25 m from the border, a 20 m radius reaches no foreign cell"
        );
        index.foreign_shards_near([40.0, 15.0], 25.0, ShardId(1), &mut out);
        assert_eq!(
            out,
            [ShardId(2)],
            "a radius reaching the border finds the neighbour"
        );
        index.foreign_shards_near([40.0, 40.0], 0.0, ShardId(1), &mut out);
        assert_eq!(
            out,
            [ShardId(2)],
            "an entity on the border touches the neighbour's cell"
        );
        index.foreign_shards_near([40.0, 15.0], -1.0, ShardId(1), &mut out);
        assert!(out.is_empty(), "a negative radius finds nothing");
        index.foreign_shards_near([40.0, 15.0], f32::NAN, ShardId(1), &mut out);
        assert!(out.is_empty(), "a NaN radius finds nothing");
    }

    #[test]
    fn rebuild_if_stale_rebuilds_only_on_a_new_epoch() {
        let g = grid([80.0, 80.0], 10.0);
        let mut map = assign_contiguous(&g, &[(ShardId(1), 1), (ShardId(2), 1)]).expect("capacity");
        let mut index = BoundaryIndex::new(&map);
        assert_eq!(index.epoch(), map.epoch());
        assert!(!index.rebuild_if_stale(&map), "same epoch: nothing to do");

        let mut out = Vec::new();
        let inner = map.leaf_at([5.0, 5.0]);
        index.foreign_shards_near([5.0, 5.0], 1.0, ShardId(1), &mut out);
        assert!(out.is_empty());
        let epoch = map
            .reassign(inner, ShardId(3))
            .expect("a base cell is a leaf");
        assert!(index.rebuild_if_stale(&map), "a reassign bumps the epoch");
        assert_eq!(index.epoch(), epoch);
        index.foreign_shards_near([10.5, 5.0], 1.0, ShardId(1), &mut out);
        assert_eq!(out, [ShardId(3)], "the rebuilt index sees the new owner");
        assert!(!index.rebuild_if_stale(&map));
    }
}
