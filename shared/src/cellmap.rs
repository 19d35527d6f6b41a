//! The cell map: which shard owns which quadtree leaf of the world, under which epoch.
//!
//! The world rectangle is cut into a grid of base cells ([`CellGrid`]); a base cell may be split
//! into four children, down to [`CellId::MAX_LEVEL`], and four sibling leaves with one owner may
//! merge back. [`CellMap`] holds the current leaves and their owners and an [`Epoch`] that grows
//! on every change, so a message sent under an older map can be recognised and refused.
//!
//! **Invariant: the leaves tile the world exactly** — every point of the world rectangle lies in
//! exactly one leaf ([`CellGrid::contains`] says which points a cell holds). It holds because a map
//! starts as the base grid and changes only by replacing one leaf with its four children or four
//! sibling leaves with their parent; the tests check it after random splits and merges.
//!
//! Everything here is a pure function of its arguments, so the master's decisions (and a
//! simulation of thousands of shards) can run it without I/O. [`assign_contiguous`] is the first
//! placement: one contiguous region per shard, sized by capacity weight.

use crate::config::WorldConfig;
use crate::ids::{CellId, ShardId};
use bitcode::{Decode, Encode};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Version of the cell map. It grows by one on every change of the map; a message that depends on
/// ownership carries the epoch it was sent under, and a receiver holding a newer map rejects it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The epoch after this one.
    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

impl fmt::Display for Epoch {
    /// `e7`: short, and unambiguous in a log line next to ticks and ids.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "e{}", self.0)
    }
}

/// An axis-aligned rectangle on the ground plane; index 0 is x, index 1 is z.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rect {
    pub min: [f32; 2],
    pub max: [f32; 2],
}

impl Rect {
    /// Half-open containment, `min <= p < max` on both axes, so rectangles that share an edge never
    /// both contain a point. (The world's own max edges are handled by [`CellGrid::contains`].)
    pub fn contains(&self, p: [f32; 2]) -> bool {
        (0..2).all(|i| self.min[i] <= p[i] && p[i] < self.max[i])
    }

    /// Squared distance from `p` to the closed rectangle: 0 inside and on the border.
    pub fn distance_sq(&self, p: [f32; 2]) -> f32 {
        let d = |i: usize| (self.min[i] - p[i]).max(p[i] - self.max[i]).max(0.0);
        let (dx, dz) = (d(0), d(1));
        dx * dx + dz * dz
    }

    /// Whether the closed disc (`center`, `r`) touches the closed rectangle. A negative or NaN
    /// radius touches nothing; radius 0 touches a rectangle whose border the centre lies on.
    pub fn intersects_circle(&self, center: [f32; 2], r: f32) -> bool {
        r >= 0.0 && self.distance_sq(center) <= r * r
    }

    /// True when the rectangle has no area. Leaves split off past the world's max edge clip to
    /// such a sliver: they hold no point of the world.
    /// Area in square metres (0 for an empty rectangle).
    pub fn area(&self) -> f32 {
        (self.max[0] - self.min[0]).max(0.0) * (self.max[1] - self.min[1]).max(0.0)
    }

    pub fn is_empty(&self) -> bool {
        (0..2).any(|i| self.min[i] >= self.max[i])
    }
}

/// Most base-cell columns (or rows) a grid may have: a level-[`CellId::MAX_LEVEL`] cell's column
/// must still fit the `u32` that [`CellId::base`] interleaves. The config's cap on base cells
/// (`WorldConfig::validate`) keeps real worlds far below this.
const GRID_SIDE_CELLS_MAX: u32 = 1 << (32 - CellId::MAX_LEVEL as u32);
const _: () = assert!(CellId::MAX_LEVEL < 32);

/// The base (level 0) grid laid over the world rectangle from a [`WorldConfig`].
///
/// Column 0, row 0 starts at the world's min corner; the last column and row may stick out past
/// the world's max edge and are clipped to it by [`Self::rect`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CellGrid {
    world: Rect,
    base_cell_size_m: f32,
    cols: u32,
    rows: u32,
}

impl CellGrid {
    /// The grid of a validated config (see `WorldConfig::validate`). An unvalidated config cannot
    /// make this panic, but its geometry is then meaningless; it still has at least one cell.
    pub fn from_config(config: &WorldConfig) -> Self {
        let w = &config.world;
        let mut grid = Self {
            world: Rect {
                min: [w.min_x, w.min_z],
                max: [w.max_x, w.max_z],
            },
            base_cell_size_m: w.base_cell_size_m,
            cols: 1,
            rows: 1,
        };
        grid.cols = grid.side_cells(0);
        grid.rows = grid.side_cells(1);
        grid
    }

    /// Base cells along axis `i`: the ceiling of extent / size, then corrected against
    /// [`Self::edge`] itself so that the last cell's far edge is at or past the world's max edge
    /// and its near edge is before it. Without the correction a rounding in the division could
    /// leave a sliver of the world in no cell.
    fn side_cells(&self, i: usize) -> u32 {
        let extent = f64::from(self.world.max[i]) - f64::from(self.world.min[i]);
        let estimate = (extent / f64::from(self.base_cell_size_m)).ceil();
        // `as` saturates (NaN → 0), and the clamp keeps an unvalidated config in range.
        let mut n = (estimate as u32).clamp(1, GRID_SIDE_CELLS_MAX);
        let world_max = self.world.max[i];
        while n < GRID_SIDE_CELLS_MAX && self.edge(i, u64::from(n), 0) < world_max {
            n += 1;
        }
        while n > 1 && self.edge(i, u64::from(n - 1), 0) >= world_max {
            n -= 1;
        }
        n
    }

    /// The world rectangle.
    pub fn world(&self) -> Rect {
        self.world
    }

    /// Side of a base cell in metres.
    pub fn base_cell_size_m(&self) -> f32 {
        self.base_cell_size_m
    }

    /// Base-cell columns (along x).
    pub fn cols(&self) -> u32 {
        self.cols
    }

    /// Base-cell rows (along z).
    pub fn rows(&self) -> u32 {
        self.rows
    }

    /// Every base cell, row by row (row 0 first, columns left to right within a row).
    pub fn base_cells(&self) -> impl Iterator<Item = CellId> + use<> {
        let cols = self.cols;
        (0..self.rows).flat_map(move |z| (0..cols).map(move |x| CellId::base(x, z)))
    }

    /// The base cells in boustrophedon order: row 0 left to right, row 1 right to left, … Each
    /// cell is 4-adjacent to the one before it, so any run of consecutive cells is connected.
    fn snake_cells(&self) -> impl Iterator<Item = CellId> + use<> {
        let cols = self.cols;
        (0..self.rows).flat_map(move |z| {
            (0..cols).map(move |i| {
                let x = if z % 2 == 0 { i } else { cols - 1 - i };
                CellId::base(x, z)
            })
        })
    }

    /// Coordinate of grid line `k` on axis `i` at `level`, unclipped.
    ///
    /// Every edge is computed by this one function, and line `2k` at level `L + 1` has exactly
    /// the real value of line `k` at level `L`, so a child's edge and its parent's edge (or
    /// midpoint) round to the same `f32`: the tiling has no gaps or overlaps from rounding.
    fn edge(&self, i: usize, k: u64, level: u8) -> f32 {
        // Halving is exact in binary floating point; a loop rather than `powi`, whose precision
        // Rust leaves unspecified, keeps edges identical on every platform.
        let mut side = f64::from(self.base_cell_size_m);
        for _ in 0..level {
            side *= 0.5;
        }
        (f64::from(self.world.min[i]) + k as f64 * side) as f32
    }

    /// The rectangle of `cell` at any level (a level-L cell has side `base / 2^L`), clipped to
    /// the world. A cell lying wholly past the world's max edge gives an empty rectangle on it.
    pub fn rect(&self, cell: CellId) -> Rect {
        let (cx, cz) = cell.coords();
        let (cx, cz) = (u64::from(cx), u64::from(cz));
        let clip = |i: usize, v: f32| v.min(self.world.max[i]);
        Rect {
            min: [
                clip(0, self.edge(0, cx, cell.level)),
                clip(1, self.edge(1, cz, cell.level)),
            ],
            max: [
                clip(0, self.edge(0, cx + 1, cell.level)),
                clip(1, self.edge(1, cz + 1, cell.level)),
            ],
        }
    }

    /// `p` moved onto the world rectangle (NaN goes to the min edge).
    fn clamp(&self, p: [f32; 2]) -> [f32; 2] {
        [0, 1].map(|i| p[i].max(self.world.min[i]).min(self.world.max[i]))
    }

    /// The base cell holding `p`. Positions outside the world are clamped onto it first, and
    /// positions on the world's max edge belong to the last column or row.
    pub fn base_cell_at(&self, p: [f32; 2]) -> CellId {
        let q = self.clamp(p);
        let [cx, cz] = [(0, self.cols), (1, self.rows)].map(|(i, n)| {
            let guess = ((f64::from(q[i]) - f64::from(self.world.min[i]))
                / f64::from(self.base_cell_size_m))
            .floor();
            // `as` saturates, so the clamp makes any guess a valid column; the loops then make it
            // agree exactly with `edge`, which a floor of a rounded quotient need not.
            let mut c = (guess as u32).min(n - 1);
            while c > 0 && q[i] < self.edge(i, u64::from(c), 0) {
                c -= 1;
            }
            while c + 1 < n && q[i] >= self.edge(i, u64::from(c) + 1, 0) {
                c += 1;
            }
            c
        });
        CellId::base(cx, cz)
    }

    /// Whether `cell` holds `p` under the tiling rule: half-open `[min, max)` on each axis, except
    /// that the world's max edges belong to the cells that touch them from inside. Positions
    /// outside the world are clamped onto it first. Among the leaves of a [`CellMap`] exactly one
    /// holds any `p`, and it is [`CellMap::leaf_at`]`(p)`.
    pub fn contains(&self, cell: CellId, p: [f32; 2]) -> bool {
        let q = self.clamp(p);
        let r = self.rect(cell);
        (0..2).all(|i| {
            let on_max_edge = q[i] == self.world.max[i];
            r.min[i] <= q[i]
                && (q[i] < r.max[i]
                    || (on_max_edge && r.max[i] == self.world.max[i] && r.min[i] < r.max[i]))
        })
    }

    /// Which child of the level-`level` cell at `coords` holds the clamped point `q`, as the
    /// 0..4 index into [`CellId::children`] (bit 0: upper half in x, bit 1: upper half in z).
    fn child_index(&self, coords: (u32, u32), level: u8, q: [f32; 2]) -> u64 {
        let mut index = 0;
        for (i, c) in [coords.0, coords.1].into_iter().enumerate() {
            let mid = self.edge(i, 2 * u64::from(c) + 1, level + 1);
            // On the world's max edge the point belongs to the child touching it from inside.
            let upper = if q[i] >= self.world.max[i] {
                mid < self.world.max[i]
            } else {
                q[i] >= mid
            };
            index |= u64::from(upper) << i;
        }
        index
    }
}

/// Why a cell map operation was refused. The map is unchanged after any error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CellMapError {
    #[error("cell {0} is not a leaf of the cell map")]
    NotALeaf(CellId),
    #[error("cell {0} is at the deepest level ({max}) and cannot split", max = CellId::MAX_LEVEL)]
    TooDeep(CellId),
    #[error("cell {0} cannot merge: its four children are not all leaves")]
    NotSplit(CellId),
    #[error("cell {cell} cannot merge: its children have different owners (shards {} and {})", .a.0, .b.0)]
    MixedOwners {
        cell: CellId,
        a: ShardId,
        b: ShardId,
    },
    #[error("the leaves do not tile the world: {0}")]
    NotATiling(&'static str),
    #[error("no shard with a positive capacity weight to place cells on")]
    NoCapacity,
    #[error("shard {} is listed twice", .0.0)]
    DuplicateShard(ShardId),
}

/// The master's map of quadtree leaves to their owning shard, with its epoch.
///
/// Invariant: the leaves tile the world exactly (see the [module docs](self)). Every method that
/// changes the map preserves it and bumps the epoch; every refused change leaves map and epoch as
/// they were.
#[derive(Clone, Debug, PartialEq)]
pub struct CellMap {
    epoch: Epoch,
    grid: CellGrid,
    leaves: BTreeMap<CellId, ShardId>,
}

impl CellMap {
    /// Every base cell owned by `shard`, at epoch 1: a one-shard world.
    pub fn single(grid: CellGrid, shard: ShardId) -> Self {
        Self {
            epoch: Epoch(1),
            grid,
            leaves: grid.base_cells().map(|c| (c, shard)).collect(),
        }
    }

    /// A map received from the master: `leaves` at `epoch` over `grid`. Refused unless the
    /// leaves tile the world exactly (every base cell covered once, no leaf inside another).
    pub fn from_leaves(
        grid: CellGrid,
        epoch: Epoch,
        leaves: BTreeMap<CellId, ShardId>,
    ) -> Result<Self, CellMapError> {
        let base: BTreeSet<CellId> = grid.base_cells().collect();
        // Per base cell: the area its leaves cover, in units of the deepest level's cells.
        let unit =
            |level: u8| 1u128 << (2 * u32::from(CellId::MAX_LEVEL - level.min(CellId::MAX_LEVEL)));
        let mut covered: BTreeMap<CellId, u128> = BTreeMap::new();
        for leaf in leaves.keys() {
            if leaf.level > CellId::MAX_LEVEL {
                return Err(CellMapError::NotATiling(
                    "a leaf is deeper than the deepest level",
                ));
            }
            let mut up = *leaf;
            while let Some(parent) = up.parent() {
                if leaves.contains_key(&parent) {
                    return Err(CellMapError::NotATiling("a leaf lies inside another leaf"));
                }
                up = parent;
            }
            if !base.contains(&up) {
                return Err(CellMapError::NotATiling("a leaf lies outside the grid"));
            }
            *covered.entry(up).or_default() += unit(leaf.level);
        }
        if covered.len() != base.len() || covered.values().any(|a| *a != unit(0)) {
            return Err(CellMapError::NotATiling(
                "some base cells are not covered exactly once",
            ));
        }
        Ok(Self {
            epoch,
            grid,
            leaves,
        })
    }

    /// The current epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The base grid the leaves subdivide.
    pub fn grid(&self) -> &CellGrid {
        &self.grid
    }

    /// Every leaf and its owner, in `CellId` order.
    pub fn leaves(&self) -> &BTreeMap<CellId, ShardId> {
        &self.leaves
    }

    /// The owner of a leaf; `None` if `cell` is not a leaf (split, merged away or outside).
    pub fn owner_of(&self, cell: CellId) -> Option<ShardId> {
        self.leaves.get(&cell).copied()
    }

    /// The leaf holding `p`, a pure function of the current tree: start at the base cell and
    /// descend into the child holding `p` while the cell is not a leaf. By the tiling invariant a
    /// cell that is not a leaf has been split, so this ends on a leaf.
    pub fn leaf_at(&self, p: [f32; 2]) -> CellId {
        let q = self.grid.clamp(p);
        let mut cell = self.grid.base_cell_at(q);
        while !self.leaves.contains_key(&cell) {
            let Some(children) = cell.children() else {
                break;
            };
            let index = self.grid.child_index(cell.coords(), cell.level, q);
            // The index is two bits, so it is always in range.
            cell = children[index as usize];
        }
        cell
    }

    /// The shard owning the leaf that holds `p`.
    pub fn owner_at(&self, p: [f32; 2]) -> Option<ShardId> {
        self.owner_of(self.leaf_at(p))
    }

    /// The leaves `shard` owns, in `CellId` order.
    pub fn cells_of(&self, shard: ShardId) -> impl Iterator<Item = CellId> + '_ {
        self.leaves
            .iter()
            .filter(move |&(_, &s)| s == shard)
            .map(|(&c, _)| c)
    }

    /// Give leaf `cell` to `shard`. The epoch grows only if the owner changes: reassigning a leaf
    /// to its owner is not a change and must not make in-flight messages stale.
    pub fn reassign(&mut self, cell: CellId, shard: ShardId) -> Result<Epoch, CellMapError> {
        let owner = self
            .leaves
            .get_mut(&cell)
            .ok_or(CellMapError::NotALeaf(cell))?;
        if *owner != shard {
            *owner = shard;
            self.epoch = self.epoch.next();
        }
        Ok(self.epoch)
    }

    /// Replace leaf `cell` by its four children, all with its owner.
    pub fn split(&mut self, cell: CellId) -> Result<Epoch, CellMapError> {
        let owner = self.owner_of(cell).ok_or(CellMapError::NotALeaf(cell))?;
        let children = cell.children().ok_or(CellMapError::TooDeep(cell))?;
        self.leaves.remove(&cell);
        self.leaves.extend(children.map(|c| (c, owner)));
        self.epoch = self.epoch.next();
        Ok(self.epoch)
    }

    /// Replace the four sibling leaves under `parent`, which must share one owner, by `parent`.
    pub fn merge(&mut self, parent: CellId) -> Result<Epoch, CellMapError> {
        let children = parent.children().ok_or(CellMapError::NotSplit(parent))?;
        let owners = children.map(|c| self.owner_of(c));
        let Some(first) = owners[0] else {
            return Err(CellMapError::NotSplit(parent));
        };
        for owner in owners {
            match owner {
                None => return Err(CellMapError::NotSplit(parent)),
                Some(s) if s != first => {
                    return Err(CellMapError::MixedOwners {
                        cell: parent,
                        a: first,
                        b: s,
                    });
                }
                Some(_) => {}
            }
        }
        for c in children {
            self.leaves.remove(&c);
        }
        self.leaves.insert(parent, first);
        self.epoch = self.epoch.next();
        Ok(self.epoch)
    }
}

/// The first placement: the base cells, in boustrophedon order (row 0 left to right, row 1 right
/// to left, …), cut into one consecutive run per shard, in the order `shards` lists them.
///
/// Run lengths are proportional to the capacity weights, rounded by largest remainder (ties to
/// the earlier shard), so each is within one cell of its exact share. When there are at least as
/// many cells as shards with a positive weight, each of those gets at least one cell, taken from
/// the shard furthest over its share. Shards with weight 0 get nothing. Because consecutive cells
/// of the order are 4-adjacent, every shard's region is 4-connected. The map starts at epoch 1.
pub fn assign_contiguous(
    grid: &CellGrid,
    shards: &[(ShardId, u32)],
) -> Result<CellMap, CellMapError> {
    let mut seen = BTreeSet::new();
    for &(shard, _) in shards {
        if !seen.insert(shard) {
            return Err(CellMapError::DuplicateShard(shard));
        }
    }
    let weights: Vec<u32> = shards.iter().map(|&(_, w)| w).collect();
    let cells = u64::from(grid.cols) * u64::from(grid.rows);
    let counts = apportion(cells, &weights)?;
    let mut snake = grid.snake_cells();
    let mut leaves = BTreeMap::new();
    for (&(shard, _), &count) in shards.iter().zip(&counts) {
        leaves.extend(snake.by_ref().take(count as usize).map(|c| (c, shard)));
    }
    debug_assert!(
        snake.next().is_none(),
        "the counts add up to the number of cells"
    );
    Ok(CellMap {
        epoch: Epoch(1),
        grid: *grid,
        leaves,
    })
}

/// Split `n` items by `weights` with largest-remainder rounding, then give every positive weight at
/// least one item if `n` allows. Integer arithmetic throughout, so the result is exact and the
/// same everywhere.
fn apportion(n: u64, weights: &[u32]) -> Result<Vec<u64>, CellMapError> {
    let total: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    if total == 0 {
        return Err(CellMapError::NoCapacity);
    }
    let n128 = u128::from(n);
    // Each share is n * w / total; both parts fit u64 because w <= total.
    let mut counts: Vec<u64> = weights
        .iter()
        .map(|&w| (n128 * u128::from(w) / total) as u64)
        .collect();
    let leftover = n - counts.iter().sum::<u64>();
    let mut by_remainder: Vec<usize> = (0..weights.len()).collect();
    // A stable sort, so equal remainders go to the earlier shard. The leftover is the sum of the
    // fractional parts, so it never reaches a shard whose share is whole (weight 0 included).
    by_remainder.sort_by_key(|&i| Reverse(n128 * u128::from(weights[i]) % total));
    for &i in by_remainder.iter().take(leftover as usize) {
        counts[i] += 1;
    }

    let positive = weights.iter().filter(|&&w| w > 0).count() as u64;
    if n >= positive {
        // How far shard j is over its exact share, scaled by `total` to stay an integer.
        let excess = |counts: &[u64], j: usize| {
            i128::from(counts[j]) * total as i128 - (n128 * u128::from(weights[j])) as i128
        };
        for i in 0..weights.len() {
            if weights[i] == 0 || counts[i] > 0 {
                continue;
            }
            let donor = (0..weights.len())
                .filter(|&j| counts[j] >= 2)
                .max_by_key(|&j| (excess(&counts, j), Reverse(j)));
            // While a positive shard has no cell, the other at most `positive - 1` shards hold all
            // `n >= positive` cells, so one of them holds two: a donor always exists.
            let Some(donor) = donor else { break };
            counts[donor] -= 1;
            counts[i] = 1;
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn grid(min: [f32; 2], max: [f32; 2], size: f32) -> CellGrid {
        let mut config = WorldConfig::default();
        config.world.min_x = min[0];
        config.world.min_z = min[1];
        config.world.max_x = max[0];
        config.world.max_z = max[1];
        config.world.base_cell_size_m = size;
        CellGrid::from_config(&config)
    }

    /// Structural form of the tiling invariant: below every base cell the leaves form a complete
    /// quadtree (each cell is a leaf or all four children are covered), and no leaf lies outside
    /// those trees.
    fn assert_tiles(map: &CellMap) {
        fn covered(map: &CellMap, cell: CellId, seen: &mut usize) -> bool {
            if map.leaves.contains_key(&cell) {
                *seen += 1;
                return true;
            }
            match cell.children() {
                Some(kids) => kids.into_iter().all(|k| covered(map, k, seen)),
                None => false,
            }
        }
        let mut seen = 0;
        for base in map.grid.base_cells() {
            assert!(
                covered(map, base, &mut seen),
                "base cell {base} must be covered by leaves"
            );
        }
        assert_eq!(
            seen,
            map.leaves.len(),
            "every leaf must lie under exactly one base cell, once"
        );
    }

    /// Points that stress the tiling: random ones, every leaf's corners and edge midpoints, the
    /// world's corners and points outside it.
    fn sample_points(map: &CellMap, rng: &mut Rng, random: usize) -> Vec<[f32; 2]> {
        let w = map.grid.world();
        let mut points: Vec<[f32; 2]> = (0..random)
            .map(|_| {
                [
                    rng.range_f32(w.min[0] - 10.0, w.max[0] + 10.0),
                    rng.range_f32(w.min[1] - 10.0, w.max[1] + 10.0),
                ]
            })
            .collect();
        for &leaf in map.leaves.keys() {
            let r = map.grid.rect(leaf);
            let mid = [0.5 * (r.min[0] + r.max[0]), 0.5 * (r.min[1] + r.max[1])];
            for x in [r.min[0], mid[0], r.max[0]] {
                for z in [r.min[1], mid[1], r.max[1]] {
                    points.push([x, z]);
                }
            }
        }
        points.extend([w.min, w.max, [w.min[0], w.max[1]], [w.max[0], w.min[1]]]);
        points.push([f32::NAN, f32::INFINITY]);
        points
    }

    fn assert_leaf_at_is_the_one_leaf_holding(map: &CellMap, points: &[[f32; 2]]) {
        for &p in points {
            let holders: Vec<CellId> = map
                .leaves
                .keys()
                .copied()
                .filter(|&c| map.grid.contains(c, p))
                .collect();
            assert_eq!(
                holders.len(),
                1,
                "point {p:?} must lie in exactly one leaf, got {holders:?}"
            );
            assert_eq!(
                map.leaf_at(p),
                holders[0],
                "leaf_at({p:?}) must be the leaf holding it"
            );
            assert!(map.owner_at(p).is_some(), "every point has an owner");
        }
    }

    /// Split and merge at random, checking the invariant and the epoch after each change.
    fn random_changes(map: &mut CellMap, rng: &mut Rng, steps: usize) {
        for _ in 0..steps {
            let before = map.epoch();
            let leaves: Vec<CellId> = map.leaves.keys().copied().collect();
            let leaf = leaves[rng.below(leaves.len() as u64) as usize];
            let result = if rng.chance(0.6) {
                map.split(leaf)
            } else if let Some(parent) = leaf.parent() {
                map.merge(parent)
            } else {
                map.reassign(leaf, ShardId(rng.below(3) as u16))
            };
            match result {
                Ok(e) => {
                    assert!(e >= before, "epochs never go back");
                    assert_eq!(e, map.epoch());
                }
                Err(_) => assert_eq!(map.epoch(), before, "a refused change keeps the epoch"),
            }
            assert_tiles(map);
        }
    }

    #[test]
    fn a_pushed_map_is_accepted_only_if_it_tiles_the_world() {
        let grid = CellGrid::from_config(&WorldConfig::default());
        let mut map = CellMap::single(grid, ShardId(0));
        let first = *map.leaves().keys().next().expect("cells");
        map.split(first).expect("split");
        let again = CellMap::from_leaves(grid, map.epoch(), map.leaves().clone());
        assert_eq!(again.as_ref(), Ok(&map), "a real map round-trips");
        let mut missing = map.leaves().clone();
        missing.pop_last();
        assert!(
            CellMap::from_leaves(grid, map.epoch(), missing).is_err(),
            "a hole is refused"
        );
        let mut overlap = map.leaves().clone();
        overlap.insert(first, ShardId(0));
        assert!(
            CellMap::from_leaves(grid, map.epoch(), overlap).is_err(),
            "a leaf inside another is refused"
        );
    }

    #[test]
    fn rect_containment_is_half_open_and_distance_is_to_the_closed_rect() {
        let r = Rect {
            min: [0.0, 0.0],
            max: [10.0, 20.0],
        };
        assert!(r.contains([0.0, 0.0]) && r.contains([9.9, 19.9]));
        assert!(
            !r.contains([10.0, 5.0]) && !r.contains([5.0, 20.0]),
            "max edges belong to the next rect"
        );
        assert_eq!(r.distance_sq([5.0, 5.0]), 0.0, "inside");
        assert_eq!(r.distance_sq([10.0, 20.0]), 0.0, "on the border");
        assert_eq!(r.distance_sq([13.0, 24.0]), 25.0, "to the corner");
        assert_eq!(r.distance_sq([-2.0, 5.0]), 4.0, "to an edge");
        assert!(r.intersects_circle([15.0, 5.0], 5.0), "touching counts");
        assert!(!r.intersects_circle([13.0, 24.0], 4.9));
        assert!(
            r.intersects_circle([10.0, 5.0], 0.0),
            "radius 0 on the border"
        );
        assert!(
            !r.intersects_circle([5.0, 5.0], -1.0) && !r.intersects_circle([5.0, 5.0], f32::NAN)
        );
        assert!(!r.is_empty());
        assert!(
            Rect {
                min: [10.0, 0.0],
                max: [10.0, 20.0]
            }
            .is_empty()
        );
    }

    #[test]
    fn grid_matches_config_and_clips_the_last_cells() {
        let g = CellGrid::from_config(&WorldConfig::default());
        assert_eq!((g.cols(), g.rows()), (8, 8), "2048 m / 256 m");
        assert_eq!(g.base_cells().count(), 64);
        assert_eq!(
            g.rect(CellId::base(0, 0)),
            Rect {
                min: [-1024.0, -1024.0],
                max: [-768.0, -768.0]
            }
        );

        let g = grid([0.0, 0.0], [100.0, 64.0], 64.0);
        assert_eq!((g.cols(), g.rows()), (2, 1), "ceil(100 / 64) columns");
        let last = g.rect(CellId::base(1, 0));
        assert_eq!(last.max, [100.0, 64.0], "the last column is clipped");
        let kids = CellId::base(1, 0).children().expect("level 0 splits");
        assert_eq!(
            g.rect(kids[0]).max,
            [96.0, 32.0],
            "a level-1 cell has half the side"
        );
        let sliver = CellId {
            level: 2,
            morton: CellId::base(7, 0).morton,
        };
        assert!(
            g.rect(sliver).is_empty(),
            "a cell wholly past the max edge is empty"
        );
    }

    #[test]
    fn base_cell_at_clamps_and_puts_the_max_edge_in_the_last_cell() {
        let g = grid([-10.0, 0.0], [90.0, 50.0], 25.0);
        assert_eq!((g.cols(), g.rows()), (4, 2));
        assert_eq!(g.base_cell_at([-10.0, 0.0]), CellId::base(0, 0));
        assert_eq!(
            g.base_cell_at([15.0, 25.0]),
            CellId::base(1, 1),
            "an inner edge belongs to the cell above it"
        );
        assert_eq!(g.base_cell_at([90.0, 50.0]), CellId::base(3, 1));
        assert_eq!(g.base_cell_at([1e9, -1e9]), CellId::base(3, 0));
        assert_eq!(g.base_cell_at([f32::NAN, f32::NAN]), CellId::base(0, 0));
    }

    #[test]
    fn single_gives_every_base_cell_to_one_shard() {
        let g = grid([0.0, 0.0], [300.0, 200.0], 64.0);
        let map = CellMap::single(g, ShardId(4));
        assert_eq!(map.epoch(), Epoch(1));
        assert_eq!(map.cells_of(ShardId(4)).count(), 5 * 4);
        assert_eq!(map.cells_of(ShardId(5)).count(), 0);
        assert_eq!(map.owner_at([299.0, 1.0]), Some(ShardId(4)));
        assert_tiles(&map);
    }

    #[test]
    fn leaves_tile_the_world_after_random_splits_and_merges() {
        let mut rng = Rng::new(0xC311);
        for (min, max, size) in [
            ([0.0, 0.0], [256.0, 256.0], 64.0),
            ([-100.0, -37.5], [100.0, 80.0], 48.0),
            ([-1024.0, -1024.0], [1024.0, 1024.0], 256.0),
            ([0.3, 0.7], [10.1, 3.3], 1.7),
        ] {
            let mut map = CellMap::single(grid(min, max, size), ShardId(0));
            for _ in 0..6 {
                random_changes(&mut map, &mut rng, 40);
                let points = sample_points(&map, &mut rng, 200);
                assert_leaf_at_is_the_one_leaf_holding(&map, &points);
            }
        }
    }

    #[test]
    fn leaf_at_matches_brute_force_over_leaf_rects() {
        let mut rng = Rng::new(7);
        let mut map = CellMap::single(grid([0.0, 0.0], [100.0, 100.0], 64.0), ShardId(1));
        // Split straight down to the deepest level at the far corner, where cells clip to slivers.
        let mut cell = map.leaf_at([99.9, 99.9]);
        while cell.level < CellId::MAX_LEVEL {
            map.split(cell)
                .expect("a leaf above the deepest level splits");
            cell = map.leaf_at([99.9, 99.9]);
        }
        assert_eq!(
            map.split(cell),
            Err(CellMapError::TooDeep(cell)),
            "the deepest level does not split"
        );
        random_changes(&mut map, &mut rng, 100);
        let points = sample_points(&map, &mut rng, 2_000);
        assert_leaf_at_is_the_one_leaf_holding(&map, &points);
        for &leaf in map.leaves().keys() {
            let r = map.grid().rect(leaf);
            if !r.is_empty() {
                assert_eq!(map.leaf_at(r.min), leaf, "a leaf's min corner is its own");
            }
        }
    }

    #[test]
    fn epochs_strictly_increase_on_every_change() {
        let mut map = CellMap::single(grid([0.0, 0.0], [128.0, 128.0], 64.0), ShardId(0));
        let base = CellId::base(1, 1);
        let kids = base.children().expect("level 0 splits");
        let mut epochs = vec![map.epoch()];
        epochs.push(map.split(base).expect("base cell is a leaf"));
        epochs.push(map.reassign(kids[2], ShardId(9)).expect("child is a leaf"));
        epochs.push(map.reassign(kids[2], ShardId(0)).expect("child is a leaf"));
        epochs.push(map.merge(base).expect("children share an owner"));
        assert!(
            epochs.windows(2).all(|w| w[0] < w[1]),
            "each change must bump the epoch: {epochs:?}"
        );
        assert_eq!(map.epoch(), Epoch(5));
        assert_eq!(
            map.reassign(base, ShardId(0)),
            Ok(Epoch(5)),
            "giving a leaf to its owner is no change"
        );
        assert_eq!(Epoch(5).to_string(), "e5");
    }

    #[test]
    fn refused_changes_name_the_cell_and_leave_the_map_unchanged() {
        let mut map = CellMap::single(grid([0.0, 0.0], [128.0, 128.0], 64.0), ShardId(0));
        let base = CellId::base(0, 0);
        let kids = base.children().expect("level 0 splits");
        map.split(base).expect("base cell is a leaf");
        map.reassign(kids[1], ShardId(2)).expect("child is a leaf");
        let before = map.clone();
        let outside = CellId::base(5, 5);
        let cases = [
            (
                map.clone().reassign(base, ShardId(1)),
                CellMapError::NotALeaf(base),
            ),
            (
                map.clone().reassign(outside, ShardId(1)),
                CellMapError::NotALeaf(outside),
            ),
            (map.clone().split(base), CellMapError::NotALeaf(base)),
            (
                map.clone().merge(CellId::base(1, 0)),
                CellMapError::NotSplit(CellId::base(1, 0)),
            ),
            (map.clone().merge(kids[0]), CellMapError::NotSplit(kids[0])),
            (
                map.clone().merge(base),
                CellMapError::MixedOwners {
                    cell: base,
                    a: ShardId(0),
                    b: ShardId(2),
                },
            ),
        ];
        for (result, expected) in cases {
            assert_eq!(result, Err(expected.clone()));
            let msg = expected.to_string();
            assert!(!msg.contains('\n') && msg.contains("L"), "{msg}");
        }
        let mut m = map.clone();
        assert!(m.merge(base).is_err());
        assert_eq!(
            m, before,
            "a refused change leaves map and epoch as they were"
        );
    }

    /// Base cells of `shard`, flood-filled from one of them through 4-neighbours of the same
    /// shard: the region is connected iff the fill reaches all of them.
    fn is_4_connected(map: &CellMap, shard: ShardId) -> bool {
        let cells: BTreeSet<(u32, u32)> = map.cells_of(shard).map(|c| c.coords()).collect();
        let Some(&start) = cells.iter().next() else {
            return true;
        };
        let mut reached = BTreeSet::from([start]);
        let mut stack = vec![start];
        while let Some((x, z)) = stack.pop() {
            let neighbours = [
                (x.wrapping_sub(1), z),
                (x + 1, z),
                (x, z.wrapping_sub(1)),
                (x, z + 1),
            ];
            for n in neighbours {
                if cells.contains(&n) && reached.insert(n) {
                    stack.push(n);
                }
            }
        }
        reached.len() == cells.len()
    }

    fn random_weights(rng: &mut Rng) -> Vec<(ShardId, u32)> {
        let shards = 1 + rng.below(8) as usize;
        (0..shards)
            .map(|i| {
                let w = match rng.below(4) {
                    0 => 0,
                    1 => 1 + rng.below(3) as u32,
                    _ => 1 + rng.below(1_000) as u32,
                };
                (ShardId(10 + i as u16), w)
            })
            .collect()
    }

    #[test]
    fn assign_contiguous_gives_each_shard_one_4_connected_region() {
        let mut rng = Rng::new(0x5A4E);
        let mut checked = 0;
        for cols in 1..=12u32 {
            for rows in 1..=12u32 {
                let g = grid([0.0, 0.0], [cols as f32 * 10.0, rows as f32 * 10.0], 10.0);
                for _ in 0..6 {
                    let shards = random_weights(&mut rng);
                    let Ok(map) = assign_contiguous(&g, &shards) else {
                        assert!(shards.iter().all(|&(_, w)| w == 0));
                        continue;
                    };
                    assert_tiles(&map);
                    assert_eq!(map.epoch(), Epoch(1));
                    for &(shard, _) in &shards {
                        assert!(
                            is_4_connected(&map, shard),
                            "{cols}x{rows} grid, weights {shards:?}: shard {} is split in pieces",
                            shard.0
                        );
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 700, "most weight vectors have capacity");
    }

    #[test]
    fn assign_contiguous_is_proportional_to_weights() {
        let mut rng = Rng::new(0x9809);
        for _ in 0..500 {
            let (cols, rows) = (1 + rng.below(40) as u32, 1 + rng.below(40) as u32);
            let g = grid([0.0, 0.0], [cols as f32, rows as f32], 1.0);
            let shards = random_weights(&mut rng);
            let Ok(map) = assign_contiguous(&g, &shards) else {
                continue;
            };
            let n = f64::from(cols * rows);
            let total: f64 = shards.iter().map(|&(_, w)| f64::from(w)).sum();
            let positive = shards.iter().filter(|&&(_, w)| w > 0).count();
            let share = |w: u32| n * f64::from(w) / total;
            // Shards whose largest-remainder count would be 0 are topped up to 1 by the others.
            let topped_up = shards
                .iter()
                .filter(|&&(_, w)| w > 0 && share(w) < 1.0)
                .count();
            for &(shard, w) in &shards {
                let count = map.cells_of(shard).count();
                let dev = (count as f64 - share(w)).abs();
                if w == 0 {
                    assert_eq!(count, 0, "weight 0 gets no cell");
                } else if n as usize >= positive {
                    assert!(count >= 1, "every positive weight gets a cell: {shards:?}");
                }
                assert!(
                    dev < 1.0 + topped_up as f64,
                    "{cols}x{rows}, {shards:?}: shard {} has {count} cells for share {}",
                    shard.0,
                    share(w)
                );
            }
        }
    }

    #[test]
    fn apportion_is_largest_remainder_with_at_least_one() {
        assert_eq!(
            apportion(10, &[1, 1, 1]),
            Ok(vec![4, 3, 3]),
            "ties to the earlier"
        );
        assert_eq!(apportion(10, &[5, 3, 2]), Ok(vec![5, 3, 2]));
        assert_eq!(apportion(7, &[2, 0, 5]), Ok(vec![2, 0, 5]));
        assert_eq!(apportion(4, &[1000, 1, 1, 1]), Ok(vec![1, 1, 1, 1]));
        assert_eq!(
            apportion(2, &[1000, 1, 1]),
            Ok(vec![2, 0, 0]),
            "too few cells: no top-up"
        );
        assert_eq!(apportion(5, &[0, 0]), Err(CellMapError::NoCapacity));
    }

    #[test]
    fn assign_contiguous_refuses_no_capacity_and_duplicates() {
        let g = grid([0.0, 0.0], [64.0, 64.0], 8.0);
        assert_eq!(assign_contiguous(&g, &[]), Err(CellMapError::NoCapacity));
        assert_eq!(
            assign_contiguous(&g, &[(ShardId(1), 0), (ShardId(2), 0)]),
            Err(CellMapError::NoCapacity)
        );
        assert_eq!(
            assign_contiguous(&g, &[(ShardId(1), 1), (ShardId(1), 2)]),
            Err(CellMapError::DuplicateShard(ShardId(1)))
        );
        let map =
            assign_contiguous(&g, &[(ShardId(1), 1), (ShardId(2), 3)]).expect("positive capacity");
        assert_eq!(map.cells_of(ShardId(1)).count(), 16, "a quarter of 64");
        assert_eq!(
            map.owner_at([1.0, 1.0]),
            Some(ShardId(1)),
            "the snake starts at row 0"
        );
        assert_eq!(map.owner_at([63.0, 63.0]), Some(ShardId(2)));
    }
}
