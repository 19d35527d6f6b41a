//! Authority over movement: targets become bounded steps, and every owned entity knows its cell.
//!
//! A mover heads for its `MoveTarget` at most `speed × dt` per tick and never leaves the world
//! (inputs set avatars' targets in the client plugin; NPCs' are set by the game).

use super::components::{CellBounds, InCell, MoveTarget, Owned, Position};
use super::resources::{Config, TickClock};
use super::space::Space;
use bevy_ecs::prelude::*;
use glam::Vec3;
use zonescaler_shared::config::WorldConfig;
use zonescaler_shared::limits;

/// Is `p` a position inside the world rectangle (and a sane height)?
pub fn in_world(cfg: &WorldConfig, p: Vec3) -> bool {
    let w = &cfg.world;
    p.is_finite()
        && (w.min_x..=w.max_x).contains(&p.x)
        && (w.min_z..=w.max_z).contains(&p.z)
        && p.y.abs() <= limits::WORLD_EXTENT_M_MAX
}

/// `Simulate`: step every owned mover towards its target, never faster than its speed, never out
/// of the world.
pub fn move_entities(
    mut movers: Query<(&mut Position, &MoveTarget), With<Owned>>,
    clock: Res<TickClock>,
    config: Res<Config>,
) {
    let w = &config.0.world;
    for (mut pos, mt) in &mut movers {
        let to = mt.target - pos.0;
        let dist = to.length();
        if dist <= f32::EPSILON {
            continue;
        }
        let step = mt.speed_mps * clock.dt;
        let mut next = if dist <= step {
            mt.target
        } else {
            pos.0 + to * (step / dist)
        };
        next.x = next.x.clamp(w.min_x, w.max_x);
        next.z = next.z.clamp(w.min_z, w.max_z);
        pos.0 = next;
    }
}

/// An owned entity's position and cell, for [`update_cells`].
type CellQuery<'w, 's, F> = Query<
    'w,
    's,
    (
        Entity,
        &'static Position,
        Option<&'static InCell>,
        Option<&'static CellBounds>,
    ),
    (With<Owned>, F),
>;
type CellItem<'a> = (
    Entity,
    &'a Position,
    Option<&'a InCell>,
    Option<&'a CellBounds>,
);

/// `Ownership`: keep each owned entity's leaf of the cell map current (the load reports count
/// per leaf, so a split cell's children are measured apart): the entities that moved, and all of
/// them when the map changed.
pub fn update_cells(
    mut commands: Commands,
    moved: CellQuery<Changed<Position>>,
    all: CellQuery<()>,
    space: Res<Space>,
    mut epoch: Local<u64>,
) {
    let current = space.map.epoch().0;
    let new_map = std::mem::replace(&mut *epoch, current) != current;
    let mut set = |(e, p, cell, bounds): CellItem| {
        let p = [p.0.x, p.0.z];
        // Strictly inside the leaf it was found in at this epoch (a millimetre from every edge,
        // where rounding cannot tell two leaves apart): still there.
        if let (Some(_), Some(b)) = (cell, bounds)
            && b.epoch == current
            && (0..2).all(|i| b.rect.min[i] + 1e-3 < p[i] && p[i] < b.rect.max[i] - 1e-3)
        {
            return;
        }
        let now = space.map.leaf_at(p);
        if cell.map(|c| c.0) != Some(now) || bounds.is_none_or(|b| b.epoch != current) {
            let rect = space.map.grid().rect(now);
            // `try_`: a game system may despawn the entity in this same tick.
            commands.entity(e).try_insert((
                InCell(now),
                CellBounds {
                    rect,
                    epoch: current,
                },
            ));
        }
    };
    if new_map {
        all.iter().for_each(&mut set);
    } else {
        moved.iter().for_each(&mut set);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bevy_ecs::system::RunSystemOnce;
    use zonescaler_shared::CellId;
    use zonescaler_shared::ShardId;
    use zonescaler_shared::cellmap::{CellGrid, CellMap};

    fn cell_of(world: &mut World, e: Entity) -> CellId {
        world.get::<InCell>(e).expect("a cell").0
    }

    #[test]
    fn an_owned_entity_knows_its_leaf_as_it_moves_and_as_the_map_changes() {
        let grid = CellGrid::from_config(&WorldConfig::default());
        let mut map = CellMap::single(grid, ShardId(0));
        let mut world = World::new();
        world.insert_resource(Space::new(ShardId(0), map.clone()));
        let p = |x: f32, z: f32| Position(Vec3::new(x, 0.0, z));
        let e = world.spawn((Owned, p(10.0, 10.0))).id();
        let run = |world: &mut World| {
            world.run_system_once(update_cells).expect("runs");
        };
        run(&mut world);
        let home = map.leaf_at([10.0, 10.0]);
        assert_eq!(cell_of(&mut world, e), home);
        // Inside the same leaf, and then just across its edge into the next one.
        world.get_mut::<Position>(e).expect("pos").0 = Vec3::new(200.0, 0.0, 10.0);
        run(&mut world);
        assert_eq!(cell_of(&mut world, e), home);
        let edge = grid.rect(home).max[0];
        world.get_mut::<Position>(e).expect("pos").0 = Vec3::new(edge, 0.0, 10.0);
        run(&mut world);
        assert_eq!(cell_of(&mut world, e), map.leaf_at([edge, 10.0]));
        assert_ne!(
            cell_of(&mut world, e),
            home,
            "an edge belongs to the cell past it"
        );
        // Well inside its leaf, the map splits that leaf: without moving, it is in a child now.
        let here = map.leaf_at([edge, 10.0]);
        let hr = grid.rect(here);
        let at = [
            hr.min[0] + (hr.max[0] - hr.min[0]) / 4.0,
            hr.min[1] + (hr.max[1] - hr.min[1]) / 4.0,
        ];
        world.get_mut::<Position>(e).expect("pos").0 = Vec3::new(at[0], 0.0, at[1]);
        run(&mut world);
        assert_eq!(cell_of(&mut world, e), here);
        map.split(here).expect("splits");
        world.insert_resource(Space::new(ShardId(0), map.clone()));
        run(&mut world);
        let child = map.leaf_at(at);
        assert_ne!(child, here);
        assert_eq!(
            cell_of(&mut world, e),
            child,
            "the split's child, not the old leaf"
        );
        // Moving inside the child, then into its sibling.
        let r = grid.rect(child);
        let inside = [(r.min[0] + r.max[0]) / 2.0, (r.min[1] + r.max[1]) / 2.0];
        world.get_mut::<Position>(e).expect("pos").0 = Vec3::new(inside[0], 0.0, inside[1]);
        run(&mut world);
        assert_eq!(cell_of(&mut world, e), child);
        world.get_mut::<Position>(e).expect("pos").0 = Vec3::new(r.max[0] + 1.0, 0.0, inside[1]);
        run(&mut world);
        assert_eq!(
            cell_of(&mut world, e),
            map.leaf_at([r.max[0] + 1.0, inside[1]])
        );
        assert_ne!(cell_of(&mut world, e), child);
    }
}
