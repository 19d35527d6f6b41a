//! Boundary interest: which neighbour shards must mirror an owned entity as a read-only proxy.
//!
//! An entity within `interest_radius_m` of a cell owned by another shard must exist there as a
//! proxy, so that shard's clients see it and its systems can react to it. [`BoundaryIndex`] is an
//! `rstar` R-tree over the leaf rectangles of the [`CellMap`] and their owners. The map changes
//! rarely (a new epoch every few seconds at most) while the query runs for every owned entity
//! every tick, so the tree is bulk-loaded once per epoch and only read in between.
//!
//! Even a tree walk (or a descent through the map) per entity per tick is too much for the
//! common case, an entity far from any foreign cell: on a map of stripes every 256 m cell touches
//! a border, so "deep inside its own leaf" misses most of them. So the index also keeps the base
//! grid in a form that finds an entity's base cell with one multiplication and two comparisons,
//! and per base cell the one shard owning all of it (`base_owner_at`); [`OwnedCore`] gives the
//! largest blocks of cells one shard owns whole; and [`NearLists`] adds, per base cell and per
//! block, the few foreign leaves within a radius and the part of the cell or block farther than
//! the radius from all of them. Per entity that leaves four comparisons for most, and a disc
//! tested against a short list for the rest.

use rstar::{AABB, RTree, RTreeObject};
use std::sync::atomic::{AtomicU64, Ordering};
use zonescaler_shared::cellmap::{CellGrid, CellMap, Epoch, Rect};
use zonescaler_shared::{CellId, ShardId};

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

/// Tells indexes apart, so a [`NearLists`] never serves lists made for another map (two maps can
/// share an epoch: every fresh map starts at epoch 1).
static NEXT_INDEX_ID: AtomicU64 = AtomicU64::new(0);

/// The leaf rectangles of one epoch of the cell map, indexed for circle queries.
#[derive(Debug)]
pub struct BoundaryIndex {
    id: u64,
    epoch: Epoch,
    tree: RTree<OwnedRect>,
    base: BaseCells,
}

impl BoundaryIndex {
    /// Index the leaves of `map` at its current epoch.
    pub fn new(map: &CellMap) -> Self {
        Self {
            id: NEXT_INDEX_ID.fetch_add(1, Ordering::Relaxed),
            epoch: map.epoch(),
            tree: Self::build(map),
            base: BaseCells::new(map),
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

    /// The shard owning every leaf of the base cell holding `p`, or `None` when that base cell
    /// is split among several shards. Where it is `Some`, it is `map.owner_at(p)` without the
    /// descent through the map: one multiplication per axis and an array read.
    pub fn base_owner_at(&self, p: [f32; 2]) -> Option<ShardId> {
        self.base.owner[self.base.index(p)]
    }

    /// The largest blocks of base cells `shard` owns whole (see [`OwnedCore`]).
    pub fn owned_core(&self, shard: ShardId) -> OwnedCore {
        OwnedCore {
            spans: self
                .base
                .blocks_of(shard, OwnedCore::BLOCKS_MAX)
                .into_iter()
                .map(|b| self.base.block_span(b))
                .collect(),
        }
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

    /// Append the non-empty leaves not owned by `own` within `radius` of the closed rectangle
    /// `r`, sorted by owner (pass a radius with some slack: this is a candidate list, each
    /// entity is tested exactly against it).
    fn foreign_leaves_near_rect(
        &self,
        r: Rect,
        radius: f32,
        own: ShardId,
        out: &mut Vec<(Rect, ShardId)>,
    ) {
        let envelope = AABB::from_corners(
            [r.min[0] - radius, r.min[1] - radius],
            [r.max[0] + radius, r.max[1] + radius],
        );
        let start = out.len();
        for leaf in self.tree.locate_in_envelope_intersecting(&envelope) {
            if leaf.owner != own && rect_distance_sq(r, leaf.rect) <= radius * radius {
                out.push((leaf.rect, leaf.owner));
            }
        }
        // By owner, so one pass over the list gives a sorted answer without duplicates.
        out[start..].sort_unstable_by_key(|(_, owner)| *owner);
    }
}

/// Squared distance between two closed rectangles (0 when they touch or overlap).
fn rect_distance_sq(a: Rect, b: Rect) -> f32 {
    let d = |i: usize| (b.min[i] - a.max[i]).max(a.min[i] - b.max[i]).max(0.0);
    let (dx, dz) = (d(0), d(1));
    dx * dx + dz * dz
}

/// The base grid of one map, for per-entity lookups: its grid lines as `CellGrid` computes
/// them, and per base cell (row-major) the one shard owning all of its leaves.
#[derive(Debug)]
struct BaseCells {
    grid: CellGrid,
    /// `lines[i][k]`: where base column (`i = 0`) or row (`i = 1`) `k` starts.
    lines: [Vec<f32>; 2],
    inv_size: f32,
    /// `None` where the base cell's leaves belong to several shards.
    owner: Vec<Option<ShardId>>,
}

impl BaseCells {
    fn new(map: &CellMap) -> Self {
        let grid = *map.grid();
        let (cols, rows) = (grid.cols(), grid.rows());
        // A base cell's west and south edges are the grid's unclipped lines (only max edges are
        // clipped, and every base cell starts inside the world).
        let lines = [
            (0..cols)
                .map(|x| grid.rect(CellId::base(x, 0)).min[0])
                .collect(),
            (0..rows)
                .map(|z| grid.rect(CellId::base(0, z)).min[1])
                .collect(),
        ];
        let cells = cols as usize * rows as usize;
        let mut owner: Vec<Option<ShardId>> = vec![None; cells];
        let mut mixed = vec![false; cells];
        for (&leaf, &shard) in map.leaves() {
            // An empty sliver past the world's max edge holds no point (`CellGrid::contains`), so
            // it does not make its base cell mixed.
            if grid.rect(leaf).is_empty() {
                continue;
            }
            let mut base = leaf;
            while let Some(parent) = base.parent() {
                base = parent;
            }
            let (x, z) = base.coords();
            let i = z as usize * cols as usize + x as usize;
            match owner[i] {
                None if !mixed[i] => owner[i] = Some(shard),
                Some(s) if s != shard => {
                    owner[i] = None;
                    mixed[i] = true;
                }
                _ => {}
            }
        }
        Self {
            grid,
            lines,
            inv_size: 1.0 / grid.base_cell_size_m(),
            owner,
        }
    }

    /// Row-major index of the base cell holding `p`: exactly `CellGrid::base_cell_at` (clamped
    /// onto the world, max edges to the last column and row), with an `f32` first guess.
    fn index(&self, p: [f32; 2]) -> usize {
        let w = self.grid.world();
        let x = line_index(&self.lines[0], w.min[0], w.max[0], self.inv_size, p[0]);
        let z = line_index(&self.lines[1], w.min[1], w.max[1], self.inv_size, p[1]);
        z * self.lines[0].len() + x
    }

    fn rect(&self, index: usize) -> Rect {
        let cols = self.lines[0].len();
        self.grid
            .rect(CellId::base((index % cols) as u32, (index / cols) as u32))
    }

    /// Up to `max` rectangles of base cells `shard` owns whole, largest first: each row's runs
    /// of such cells, runs repeated in consecutive rows merged into one block. A region placed
    /// by `assign_contiguous` is at most three blocks (a partial first row, whole rows, a
    /// partial last row); a split one is more, and what is left out goes the per-cell way.
    fn blocks_of(&self, shard: ShardId, max: usize) -> Vec<Block> {
        let cols = self.lines[0].len();
        let mut done = Vec::new();
        let mut open: Vec<Block> = Vec::new();
        let mut next = Vec::new();
        for (z, row) in self.owner.chunks(cols).enumerate() {
            let mut x = 0;
            while x < cols {
                if row[x] != Some(shard) {
                    x += 1;
                    continue;
                }
                let c0 = x;
                while x < cols && row[x] == Some(shard) {
                    x += 1;
                }
                let block = match open.iter().position(|b| b.cols == (c0, x)) {
                    Some(i) => Block {
                        rows: (open[i].rows.0, z + 1),
                        ..open.swap_remove(i)
                    },
                    None => Block {
                        cols: (c0, x),
                        rows: (z, z + 1),
                    },
                };
                next.push(block);
            }
            done.append(&mut open);
            std::mem::swap(&mut open, &mut next);
        }
        done.append(&mut open);
        done.sort_by_key(|b| std::cmp::Reverse((b.cols.1 - b.cols.0) * (b.rows.1 - b.rows.0)));
        done.truncate(max);
        done
    }

    /// The closed rectangle `block` covers.
    fn block_rect(&self, block: Block) -> Rect {
        let first = self
            .grid
            .rect(CellId::base(block.cols.0 as u32, block.rows.0 as u32));
        let last = self.grid.rect(CellId::base(
            block.cols.1 as u32 - 1,
            block.rows.1 as u32 - 1,
        ));
        Rect {
            min: first.min,
            max: last.max,
        }
    }

    /// `block` as the half-open span of positions whose base cell lies in it: what
    /// [`Self::index`] gives, including the clamp (a side on the world's edge reaches to
    /// infinity, since positions beyond it are clamped onto cells of that side).
    fn block_span(&self, block: Block) -> Rect {
        let side = |i: usize, (a, b): (usize, usize)| {
            let lines = &self.lines[i];
            let lo = if a == 0 { f32::NEG_INFINITY } else { lines[a] };
            let hi = if b == lines.len() {
                f32::INFINITY
            } else {
                lines[b]
            };
            (lo, hi)
        };
        let (x, z) = (side(0, block.cols), side(1, block.rows));
        Rect {
            min: [x.0, z.0],
            max: [x.1, z.1],
        }
    }
}

/// Base columns `cols.0..cols.1` by rows `rows.0..rows.1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Block {
    cols: (usize, usize),
    rows: (usize, usize),
}

/// Blocks of base cells one shard owns whole, as half-open spans of positions: a position in
/// one of them is that shard's with four comparisons, before any table or tree.
#[derive(Clone, Debug, Default)]
pub struct OwnedCore {
    spans: Vec<Rect>,
}

impl OwnedCore {
    /// Blocks kept: the regions `assign_contiguous` places take three at most.
    pub const BLOCKS_MAX: usize = 4;

    /// Whether `p` is certainly in a leaf of the shard this core was made for (false says
    /// nothing). A NaN coordinate is never inside.
    #[inline]
    pub fn contains(&self, p: [f32; 2]) -> bool {
        self.spans.iter().any(|s| s.contains(p))
    }
}

/// The column (or row) whose half-open span of `lines` holds `v` clamped to `[min, max]`; the
/// last one also holds `max`. `lines` is never empty (a grid has at least one cell).
#[inline]
fn line_index(lines: &[f32], min: f32, max: f32, inv_size: f32, v: f32) -> usize {
    // `max` then `min`, as `CellGrid` clamps: NaN goes to the min edge.
    let q = v.max(min).min(max);
    let n = lines.len();
    // `as` saturates (and the clamp keeps the guess in range); the loops then agree exactly
    // with the grid lines, which the rounded guess need not.
    let mut c = (((q - min) * inv_size) as usize).min(n - 1);
    while c > 0 && q < lines[c] {
        c -= 1;
    }
    while c + 1 < n && q >= lines[c + 1] {
        c += 1;
    }
    c
}

/// Per base cell, the leaves of shards other than `own` within `radius` of it: the candidates a
/// disc of that radius around an entity in that base cell can touch, and a "safe" rectangle
/// inside the cell whose points are farther than `radius` from all of them. An entity in a base
/// cell with no candidates, or inside its safe rectangle, needs no proxy anywhere: no tree walk,
/// no descent through the map, four comparisons. The others test their disc against the few
/// candidates.
///
/// The lists are filled on first use of each base cell and kept until the index, the shard or
/// the radius change: a map of a million base cells would take long to fill at once, and a shard
/// visits few of them. A base cell with more than [`Self::LIST_LEN_MAX`] candidates (deeply split
/// borders, or a radius of several cells) is answered by the tree instead, which bounds the
/// memory to that many rectangles per base cell visited. The caller keeps one across ticks (a
/// system `Local`).
#[derive(Debug, Default)]
pub struct NearLists {
    /// (index id, own shard, radius bits) the lists were made for.
    key: Option<(u64, ShardId, u32)>,
    /// Per base cell (row-major).
    spans: Vec<Span>,
    leaves: Vec<(Rect, ShardId)>,
    /// The safe parts of the shard's largest blocks of whole base cells ([`OwnedCore`]): the
    /// bulk of a region, answered before its base cell is even looked up.
    safe_blocks: Vec<Rect>,
}

/// One base cell's candidates: `leaves[start..start + len]`, or a start of
/// [`NearLists::UNFILLED`] or [`NearLists::USE_TREE`].
#[derive(Clone, Copy, Debug)]
struct Span {
    start: u32,
    len: u32,
    /// Points strictly inside are farther than the radius from every candidate.
    safe: Rect,
}

/// Whether `p` is inside the open rectangle `r` (a safe rectangle's edges are not safe). A NaN
/// coordinate is never inside.
#[inline]
fn strictly_inside(r: &Rect, p: [f32; 2]) -> bool {
    r.min[0] < p[0] && p[0] < r.max[0] && r.min[1] < p[1] && p[1] < r.max[1]
}

/// A rectangle no point is strictly inside.
const NOWHERE: Rect = Rect {
    min: [f32::INFINITY; 2],
    max: [f32::NEG_INFINITY; 2],
};

impl NearLists {
    /// Candidates per base cell kept as a list; past this the cell is left to the tree.
    pub const LIST_LEN_MAX: usize = 16;
    const UNFILLED: u32 = u32::MAX;
    const USE_TREE: u32 = u32::MAX - 1;

    /// Exactly [`BoundaryIndex::foreign_shards_near`], answered from the per-base-cell lists.
    pub fn foreign_shards_near(
        &mut self,
        index: &BoundaryIndex,
        p: [f32; 2],
        radius: f32,
        own: ShardId,
        out: &mut Vec<ShardId>,
    ) {
        out.clear();
        if radius.is_nan() || radius < 0.0 {
            return;
        }
        let key = (index.id, own, radius.to_bits());
        if self.key != Some(key) {
            self.key = Some(key);
            self.spans.clear();
            let unfilled = Span {
                start: Self::UNFILLED,
                len: 0,
                safe: NOWHERE,
            };
            self.spans.resize(index.base.owner.len(), unfilled);
            self.leaves.clear();
            self.fill_blocks(index, radius, own);
        }
        if self.safe_blocks.iter().any(|s| strictly_inside(s, p)) {
            return;
        }
        let cell = index.base.index(p);
        if self.spans[cell].start == Self::UNFILLED {
            self.fill(index, cell, radius, own);
        }
        let Span { start, len, safe } = self.spans[cell];
        if strictly_inside(&safe, p) {
            return;
        }
        if start == Self::USE_TREE {
            return index.foreign_shards_near(p, radius, own, out);
        }
        // Sorted by owner: a shard already found is the last one pushed.
        for (rect, owner) in &self.leaves[start as usize..][..len as usize] {
            if out.last() != Some(owner) && rect.intersects_circle(p, radius) {
                out.push(*owner);
            }
        }
    }

    /// The safe parts of `own`'s largest blocks. Within a block (closed), every foreign leaf a
    /// disc can touch is within the radius of the block, so the block's candidates and
    /// [`safe_rect`] answer as they do for one cell; outside it they would not, so each safe
    /// rectangle is cut to its block.
    fn fill_blocks(&mut self, index: &BoundaryIndex, radius: f32, own: ShardId) {
        self.safe_blocks.clear();
        let slack = Self::slack(radius);
        let mut candidates = Vec::new();
        for block in index.base.blocks_of(own, OwnedCore::BLOCKS_MAX) {
            let r = index.base.block_rect(block);
            candidates.clear();
            index.foreign_leaves_near_rect(r, slack, own, &mut candidates);
            let s = safe_rect(r, &candidates, slack);
            let cut = Rect {
                min: [s.min[0].max(r.min[0]), s.min[1].max(r.min[1])],
                max: [s.max[0].min(r.max[0]), s.max[1].min(r.max[1])],
            };
            if !cut.is_empty() {
                self.safe_blocks.push(cut);
            }
        }
    }

    /// The radius the candidates are gathered with: slack for rounding only (5 cm is a dozen
    /// `f32` steps at the largest coordinates a world may have). An entity's disc touches a leaf
    /// only if its cell is within the radius of it, and each disc is tested exactly afterwards.
    fn slack(radius: f32) -> f32 {
        radius * (1.0 + 1e-3) + 0.05
    }

    /// Fill the list and safe rectangle of base cell `cell`.
    #[cold]
    fn fill(&mut self, index: &BoundaryIndex, cell: usize, radius: f32, own: ShardId) {
        let start = self.leaves.len();
        let slack = Self::slack(radius);
        let rect = index.base.rect(cell);
        index.foreign_leaves_near_rect(rect, slack, own, &mut self.leaves);
        let len = self.leaves.len() - start;
        // Only where the base cell is all this shard's is every candidate outside it, so that
        // distance to it is distance across a side.
        let safe = if index.base.owner[cell] == Some(own) {
            safe_rect(rect, &self.leaves[start..], slack)
        } else {
            NOWHERE
        };
        self.spans[cell] = match u32::try_from(start) {
            Ok(s) if len <= Self::LIST_LEN_MAX && s < Self::USE_TREE => Span {
                start: s,
                len: len as u32,
                safe,
            },
            _ => {
                self.leaves.truncate(start);
                Span {
                    start: Self::USE_TREE,
                    len: 0,
                    safe,
                }
            }
        };
    }
}

/// The points of `cell` (and beyond its sides that face no candidate) farther than `margin`
/// from every rectangle of `candidates`, as a rectangle, where each candidate lies outside the
/// open `cell`.
///
/// Such a candidate is beyond at least one side of `cell` (say `c.min.x >= cell.max.x`); a point
/// more than `margin` inside that side (`x < cell.max.x - margin`) is then more than `margin`
/// from it, wherever the point is along the other axis. So it is enough to pull in, by
/// `margin`, one side per candidate: a side another candidate already pulled in if it can,
/// so a corner neighbour (beyond two sides) costs nothing next to the neighbour beside it.
/// Sides no candidate is beyond stay open (infinite), which is what lets a cell on a border
/// keep the rest of its area, and a point outside the world (clamped into `cell`) still pass.
fn safe_rect(cell: Rect, candidates: &[(Rect, ShardId)], margin: f32) -> Rect {
    // Sides: 0 = min x, 1 = max x, 2 = min z, 3 = max z.
    let beyond = |c: &Rect| {
        [
            c.max[0] <= cell.min[0],
            c.min[0] >= cell.max[0],
            c.max[1] <= cell.min[1],
            c.min[1] >= cell.max[1],
        ]
    };
    let mut pulled = [false; 4];
    // Candidates beyond one side only decide first; the others then reuse a pulled side.
    for (c, _) in candidates {
        let b = beyond(c);
        if b.iter().filter(|x| **x).count() == 1 {
            pulled = [0, 1, 2, 3].map(|s| pulled[s] || b[s]);
        }
    }
    for (c, _) in candidates {
        let b = beyond(c);
        if !(0..4).any(|s| b[s] && pulled[s]) {
            match (0..4).find(|&s| b[s]) {
                Some(s) => pulled[s] = true,
                // Not outside the open cell: nothing inside the cell is safe.
                None => return NOWHERE,
            }
        }
    }
    // A pulled side moves in by `margin`; an open one goes to infinity.
    let side = |pulled: bool, edge: f32, inward: f32| {
        if pulled {
            edge + inward * margin
        } else {
            -inward * f32::INFINITY
        }
    };
    Rect {
        min: [
            side(pulled[0], cell.min[0], 1.0),
            side(pulled[2], cell.min[1], 1.0),
        ],
        max: [
            side(pulled[1], cell.max[0], -1.0),
            side(pulled[3], cell.max[1], -1.0),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
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

    /// 8 x 8 cells of 10 m, two equal shards: shard 1 owns rows 0–3 (z 0–40), shard 2 rows 4–7.
    fn two_stripes() -> (CellMap, BoundaryIndex) {
        let map = assign_contiguous(
            &grid([80.0, 80.0], 10.0),
            &[(ShardId(1), 1), (ShardId(2), 1)],
        )
        .expect("capacity");
        let index = BoundaryIndex::new(&map);
        (map, index)
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
        let mut listed = Vec::new();
        // One set of lists across all maps and radii: each change must refill them.
        let mut lists = NearLists::default();
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
                // The lists answer for any shard, also one not owning the point (an entity
                // waiting for its handoff stands in another shard's cell).
                let asking = if rng.chance(0.8) {
                    own
                } else {
                    ShardId(rng.below(7) as u16)
                };
                lists.foreign_shards_near(&index, p, radius, asking, &mut listed);
                assert_eq!(
                    listed,
                    brute_force(&map, p, radius, asking),
                    "near lists: p {p:?}, radius {radius}, own shard {}",
                    asking.0
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
    fn near_lists_match_brute_force_across_radii() {
        let mut rng = Rng::new(0x11575);
        let mut lists = NearLists::default();
        let mut out = Vec::new();
        let (mut tree_cells, mut safe_cells, mut skipped, mut skipped_by_block) = (0, 0, 0, 0);
        for _ in 0..30 {
            let map = random_map(&mut rng);
            let index = BoundaryIndex::new(&map);
            let world = map.grid().world();
            // The same radius for many points, so filled lists are reused; 300 m makes lists
            // too long for most cells on small-celled maps (answered by the tree).
            for radius in [0.0, 0.7, 20.0, 64.0, 300.0] {
                for _ in 0..200 {
                    let p = [
                        rng.range_f32(world.min[0] - 5.0, world.max[0] + 5.0),
                        rng.range_f32(world.min[1] - 5.0, world.max[1] + 5.0),
                    ];
                    let own = map.owner_at(p).expect("every point has an owner");
                    lists.foreign_shards_near(&index, p, radius, own, &mut out);
                    assert_eq!(
                        out,
                        brute_force(&map, p, radius, own),
                        "p {p:?}, radius {radius}, own shard {}",
                        own.0
                    );
                    let inside = |s: &Rect| strictly_inside(s, p);
                    let span = lists.spans[index.base.index(p)];
                    skipped += usize::from(inside(&span.safe));
                    skipped_by_block += usize::from(lists.safe_blocks.iter().any(inside));
                }
                tree_cells += lists
                    .spans
                    .iter()
                    .filter(|s| s.start == NearLists::USE_TREE)
                    .count();
                safe_cells += lists
                    .spans
                    .iter()
                    .filter(|s| s.start != NearLists::UNFILLED && s.safe.min[0] != f32::INFINITY)
                    .count();
            }
        }
        assert!(
            tree_cells > 0,
            "some cells have too many candidates for a list"
        );
        assert!(
            safe_cells > 100,
            "cells on a border keep a safe part ({safe_cells})"
        );
        assert!(
            skipped > 1_000,
            "points in safe parts skip the list ({skipped})"
        );
        assert!(
            skipped_by_block > 1_000,
            "points in the safe part of a block skip even the cell lookup ({skipped_by_block})"
        );
    }

    #[test]
    fn a_border_cell_is_safe_away_from_its_border_side() {
        let (_map, index) = two_stripes();
        let mut lists = NearLists::default();
        let mut out = Vec::new();
        // With a 4 m radius, shard 1's region (z 0–40) is safe below z = 36.
        lists.foreign_shards_near(&index, [45.0, 35.0], 4.0, ShardId(1), &mut out);
        assert!(out.is_empty());
        let [block] = lists.safe_blocks[..] else {
            panic!("one block of whole cells: {:?}", lists.safe_blocks);
        };
        assert_eq!(
            (block.min, block.max[0]),
            ([0.0, 0.0], 80.0),
            "sides facing no other shard stay at the block's own edges"
        );
        assert!(
            block.max[1] < 36.0 && block.max[1] > 35.9,
            "the border side is pulled in by the radius (and a little slack): {block:?}"
        );
        // Near the border, the cell's own list answers; its safe part has the same shape, and
        // its sides facing this shard's cells (corner neighbours included) stay open.
        lists.foreign_shards_near(&index, [45.0, 36.5], 4.0, ShardId(1), &mut out);
        assert_eq!(
            out,
            [ShardId(2)],
            "3.5 m from the border, a 4 m disc reaches it"
        );
        let safe = lists.spans[index.base.index([45.0, 36.5])].safe;
        assert_eq!(
            (safe.min, safe.max[0]),
            ([f32::NEG_INFINITY; 2], f32::INFINITY),
        );
        assert!(safe.max[1] < 36.0 && safe.max[1] > 35.9, "{safe:?}");
    }

    #[test]
    fn owned_cores_hold_only_their_shards_points() {
        let mut rng = Rng::new(0xC0DE);
        for round in 0..40 {
            // Half the maps as placed (regions of at most three blocks), half split up.
            let map = if round % 2 == 0 {
                let g = grid(
                    [rng.range_f32(50.0, 400.0), rng.range_f32(50.0, 400.0)],
                    25.0,
                );
                let shards: Vec<(ShardId, u32)> = (0..2 + rng.below(5))
                    .map(|i| (ShardId(i as u16), 1 + rng.below(10) as u32))
                    .collect();
                assign_contiguous(&g, &shards).expect("positive weights")
            } else {
                random_map(&mut rng)
            };
            let index = BoundaryIndex::new(&map);
            let world = map.grid().world();
            let shards: BTreeSet<ShardId> = map.leaves().values().copied().collect();
            let cores: Vec<(ShardId, OwnedCore)> =
                shards.iter().map(|&s| (s, index.owned_core(s))).collect();
            for _ in 0..500 {
                let p = [
                    rng.range_f32(world.min[0] - 10.0, world.max[0] + 10.0),
                    rng.range_f32(world.min[1] - 10.0, world.max[1] + 10.0),
                ];
                let owner = map.owner_at(p).expect("every point has an owner");
                for (shard, core) in &cores {
                    if core.contains(p) {
                        assert_eq!(owner, *shard, "p {p:?} is in shard {}'s core", shard.0);
                    } else if round % 2 == 0 {
                        assert_ne!(
                            owner, *shard,
                            "p {p:?}: a placed region is all core (three blocks at most)"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn base_cell_lookups_match_the_map_on_random_maps() {
        let mut rng = Rng::new(0xBA5E);
        let mut uniform = 0;
        for _ in 0..40 {
            let map = random_map(&mut rng);
            let index = BoundaryIndex::new(&map);
            let grid = map.grid();
            let world = grid.world();
            for _ in 0..500 {
                let p = match rng.below(4) {
                    0 => [
                        rng.range_f32(world.min[0] - 20.0, world.max[0] + 20.0),
                        rng.range_f32(world.min[1] - 20.0, world.max[1] + 20.0),
                    ],
                    // On a grid line, or on a world edge.
                    1 => {
                        let size = grid.base_cell_size_m();
                        let k = [rng.below(u64::from(grid.cols()) + 1), rng.below(4)];
                        [
                            world.min[0] + k[0] as f32 * size,
                            [world.min[1], world.max[1], f32::NAN, world.max[1] + 1.0]
                                [k[1] as usize],
                        ]
                    }
                    _ => [
                        rng.range_f32(world.min[0], world.max[0]),
                        rng.range_f32(world.min[1], world.max[1]),
                    ],
                };
                let (x, z) = grid.base_cell_at(p).coords();
                assert_eq!(
                    index.base.index(p),
                    z as usize * grid.cols() as usize + x as usize,
                    "p {p:?}: the fast base-cell lookup agrees with CellGrid::base_cell_at"
                );
                if let Some(owner) = index.base_owner_at(p) {
                    uniform += 1;
                    assert_eq!(
                        Some(owner),
                        map.owner_at(p),
                        "p {p:?}: a base cell's single owner owns every point in it"
                    );
                }
            }
        }
        assert!(
            uniform > 5_000,
            "most base cells have one owner ({uniform})"
        );
    }

    #[test]
    fn an_entity_deep_inside_its_region_has_no_foreign_shards() {
        let (_map, index) = two_stripes();
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
        let (mut map, mut index) = two_stripes();
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
