//! How a shard's tick is apportioned over its cells: a cost model of entities and clients.
//!
//! The shard measures one number for its tick (the tick thread's CPU time; the runtime does,
//! the simulator models it) but the balancer moves cells, so it needs each cell's part of that
//! number. Timing every cell's work inside every system would cost more than the estimate is
//! worth, so each cell is charged by what it holds:
//!
//! ```text
//! cost(cell)  = entities + CLIENT_COST_ENTITIES × clients
//! share(cell) = cost(cell) / Σ cost(every cell the shard reported anything in)
//! ```
//!
//! and its CPU is `share × the measured tick CPU`. The whole tick is charged to the cells:
//! the work no cell causes by itself (proxies of neighbours' entities, the fixed cost of a
//! schedule) is spread in proportion, which is what a balancer wants when it asks how much of a
//! shard goes with a cell.

use zonescaler_shared::protocol::CellLoad;

/// What one client costs a tick, in owned entities. A client's avatar is an entity like any
/// other; on top of it the shard runs an AOI query, a merge-join against its baseline, and
/// encodes and sends a snapshot every tick. Measured with `benches/shard_tick.rs`
/// (benches/README): an idle entity costs ~58 ns a tick at 1 000 and at 10 000 entities; each
/// client adds ~2.6 µs in the 1 000-entity world (500 clients) and ~6 µs in the 10 000-entity
/// one (it sees more), i.e. 45 to 100 entities. 64 sits between; the balancer compares cells of
/// one world with each other, so the ratio matters, not its last digit.
pub const CLIENT_COST_ENTITIES: u64 = 64;

/// A cell's cost in entity units.
pub fn cell_cost(entities: u32, clients: u32) -> u64 {
    u64::from(entities) + CLIENT_COST_ENTITIES * u64::from(clients)
}

/// Set every cell's `tick_share` to its part of the cost of all of `cells` (they add up to 1,
/// or all stay 0 when nothing in them costs anything).
pub fn apportion(cells: &mut [CellLoad]) {
    let total: u64 = cells.iter().map(|c| cell_cost(c.entities, c.clients)).sum();
    for c in cells.iter_mut() {
        c.tick_share = if total == 0 {
            0.0
        } else {
            // In f64 so a million-entity shard's shares keep their digits; at most 1 as a
            // part of the sum it is in.
            (cell_cost(c.entities, c.clients) as f64 / total as f64) as f32
        };
    }
}

/// Keep the `max` cells with the largest share (the ones a balancer would move first), in
/// cell order; the shares are kept as they were, so those left still say their part of the
/// whole tick.
pub fn keep_busiest(cells: &mut Vec<CellLoad>, max: usize) {
    if cells.len() <= max {
        return;
    }
    cells.sort_unstable_by(|a, b| {
        cell_cost(b.entities, b.clients)
            .cmp(&cell_cost(a.entities, a.clients))
            .then(a.cell.cmp(&b.cell))
    });
    cells.truncate(max);
    cells.sort_unstable_by_key(|c| c.cell);
}

#[cfg(test)]
mod tests {
    use super::*;
    use zonescaler_shared::CellId;

    fn cell(x: u32, entities: u32, clients: u32) -> CellLoad {
        CellLoad {
            cell: CellId::base(x, 0),
            entities,
            clients,
            tick_share: 0.0,
        }
    }

    #[test]
    fn the_tick_is_shared_by_entities_plus_weighted_clients() {
        // 100 NPCs; 36 entities of which 1 a player (36 + 64 = 100); 200 entities, 0 players.
        let mut cells = vec![cell(0, 100, 0), cell(1, 36, 1), cell(2, 200, 0)];
        apportion(&mut cells);
        let shares: Vec<f32> = cells.iter().map(|c| c.tick_share).collect();
        assert_eq!(
            shares,
            [0.25, 0.25, 0.5],
            "a player costs the cell as much as 64 NPCs"
        );
        let sum: f32 = shares.iter().sum();
        assert!((sum - 1.0).abs() < 1e-6, "the whole tick is apportioned");
    }

    #[test]
    fn empty_cells_share_nothing_and_nothing_divides_by_zero() {
        let mut cells = vec![cell(0, 0, 0), cell(1, 0, 0)];
        apportion(&mut cells);
        assert!(cells.iter().all(|c| c.tick_share == 0.0), "{cells:?}");
        apportion(&mut []);
    }

    #[test]
    fn only_the_busiest_cells_are_kept_with_their_share_of_the_whole() {
        let mut cells: Vec<CellLoad> = (0..10).map(|x| cell(x, x * 10, 0)).collect();
        cells[2].clients = 2; // 20 + 128: the busiest of all
        apportion(&mut cells);
        let total: u64 = (0..10u64).map(|x| x * 10).sum::<u64>() + 128;
        keep_busiest(&mut cells, 3);
        let kept: Vec<u32> = cells.iter().map(|c| c.cell.coords().0).collect();
        assert_eq!(kept, [2, 8, 9], "the three costliest, in cell order");
        assert_eq!(cells[0].tick_share, (148.0 / total as f64) as f32);
        assert!(
            cells.iter().map(|c| c.tick_share).sum::<f32>() < 1.0,
            "the dropped cells' part of the tick is not handed to the kept ones"
        );
    }
}
