//! Cell moves on a shard: shipping a leaf's entities to its next owner, taking them over, and
//! the new map when the move is done.
//!
//! The master orders a move with `MoveCell { id, cell, from, to }` to both shards (see
//! `cluster::moves` for the whole protocol). While it lasts:
//! - the **source** ([`ship_cells`]) offers every entity it owns in the cell to the target with
//!   the ordinary handoff (the same [`HandoffBook`](super::handoff::HandoffBook), request and
//!   ack, so replicated and migrating state go along and a player's client is redirected), at
//!   most `cluster.cell_move_batch` per tick, players' avatars spread evenly over the move (see
//!   [`players_quota`]). It refuses handoffs into the cell from other shards
//!   (`CellMoving`: they try again after their backoff, by then to the new owner), mirrors the
//!   cell's entities to the target so the target's clients there see them, and reports
//!   `CellShipped` once it owns and freezes nothing there any more. An entity that walks in
//!   from the source's other cells meanwhile is shipped the same way; an input or a command for
//!   an entity of the cell follows it as in any handoff (forwarded to the new owner).
//! - the **target** takes the cell's entities as if it owned the cell (a request for a point in
//!   it, from the source, is accepted) and keeps them: it does not hand them back although the
//!   map still names the source.
//! - a **new map** ([`on_space_notices`]) ends it: the leaf is the target's, the epoch newer.
//!   `MoveAborted` ends it too, the map unchanged: the target hands back what it took by the
//!   usual handoff, since those entities stand in the source's cell.

use super::handoff::Offerer;
use super::replica::Membership;
use crate::client::ClusterDirectory;
use crate::core::components::{Avatar, AwaitingClient, InTransit, Owned, Position};
use crate::core::resources::{Config, Drained, HandoffStats, MasterInbox, MasterOutbox};
use crate::core::space::Space;
use bevy_ecs::prelude::*;
use glam::Vec3;
use std::collections::{BTreeMap, BTreeSet};
use tracing::{error, info};
use zonescaler_shared::cellmap::{CellMap, Epoch};
use zonescaler_shared::protocol::{MapPush, MasterNotice, MasterRequest};
use zonescaler_shared::{CellId, ShardId};

/// One move this shard takes part in: its id and the other shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MovePeer {
    pub id: u64,
    pub peer: ShardId,
}

/// The cell moves under way on this shard.
#[derive(Resource, Debug, Default)]
pub struct CellMoves {
    /// Leaves this shard ships away, with the target.
    pub outgoing: BTreeMap<CellId, MovePeer>,
    /// Leaves this shard takes over, with the source.
    pub incoming: BTreeMap<CellId, MovePeer>,
    /// Moves reported shipped (once each).
    reported: BTreeSet<u64>,
}

impl CellMoves {
    /// Whether the leaf under `p` is one this shard is taking over (from `from`, if given).
    pub fn takes(&self, map: &CellMap, p: [f32; 2], from: Option<ShardId>) -> bool {
        !self.incoming.is_empty()
            && self
                .incoming
                .get(&map.leaf_at(p))
                .is_some_and(|m| from.is_none_or(|f| f == m.peer))
    }

    /// The target the leaf under `p` is being shipped to, if it is.
    pub fn ships(&self, map: &CellMap, p: [f32; 2]) -> Option<ShardId> {
        if self.outgoing.is_empty() {
            return None;
        }
        self.outgoing.get(&map.leaf_at(p)).map(|m| m.peer)
    }
}

/// Another shard holds the master role now (or this one took it): the cell moves under way on
/// `app` end, as aborted. A successor aborts every move its predecessor ordered, but it knows
/// only those in the last state it heard; one ordered after that would stay open here for good,
/// and an entity standing in its leaf would never be handed to the leaf's owner. The moves ended.
pub fn abort_moves(app: &mut crate::core::ShardApp) -> usize {
    let open: Vec<(u64, CellId)> = {
        let m = app.world.resource::<CellMoves>();
        (m.outgoing.iter().chain(m.incoming.iter()))
            .map(|(cell, peer)| (peer.id, *cell))
            .collect()
    };
    for (id, cell) in &open {
        app.push_master_notice(MasterNotice::MoveAborted {
            id: *id,
            cell: *cell,
        });
    }
    open.len()
}

/// `Receive`, before the links: the master's new maps and move orders (other notices stay for
/// the client layer). A map is taken only if it is newer than the one this shard has.
pub fn on_space_notices(world: &mut World) {
    let notices = std::mem::take(&mut world.resource_mut::<MasterInbox>().0);
    let mut rest = Vec::with_capacity(notices.len());
    for notice in notices {
        match notice {
            MasterNotice::Map(push) => apply_map(world, push),
            MasterNotice::MoveCell { id, cell, from, to } => {
                let me = world.resource::<Space>().me;
                let mut moves = world.resource_mut::<CellMoves>();
                if from == me {
                    moves.outgoing.insert(cell, MovePeer { id, peer: to });
                }
                if to == me {
                    moves.incoming.insert(cell, MovePeer { id, peer: from });
                }
                info!(id, %cell, from = from.0, to = to.0, "cell move started");
            }
            MasterNotice::MoveAborted { id, cell } => {
                let mut moves = world.resource_mut::<CellMoves>();
                moves.outgoing.retain(|_, m| m.id != id);
                moves.incoming.retain(|_, m| m.id != id);
                moves.reported.remove(&id);
                info!(id, %cell, "cell move aborted");
            }
            MasterNotice::Drained => {
                info!("drained: this shard owns nothing and has left the cluster");
                world.insert_resource(Drained(true));
            }
            other => rest.push(other),
        }
    }
    world.resource_mut::<MasterInbox>().0 = rest;
}

/// Take `push` if it is newer: the new map, the members' addresses, and the end of the moves it
/// settles (a leaf shipped away is now its target's; a leaf taken over is now this shard's).
fn apply_map(world: &mut World, push: MapPush) {
    let (me, grid, epoch) = {
        let space = world.resource::<Space>();
        (space.me, *space.grid(), space.map.epoch())
    };
    // The members' addresses come with every push, the same epoch too (a member joined or
    // left). A member that left (drained, or declared dead and fenced): what this shard was
    // handing it comes back, and its proxies here go.
    {
        let mut dir = world.resource_mut::<ClusterDirectory>();
        for m in &push.members {
            dir.client_addrs.insert(m.id, m.client_addr.clone());
        }
    }
    let members: BTreeSet<ShardId> = push.members.iter().map(|m| m.id).collect();
    let dead: std::collections::BTreeMap<ShardId, Option<ShardId>> =
        push.dead.iter().copied().collect();
    let departed = departed_members(world, &members, &dead);
    if push.epoch > epoch.0 {
        match CellMap::from_leaves(grid, Epoch(push.epoch), push.leaves.into_iter().collect()) {
            Ok(map) => install_map(world, me, map),
            Err(e) => {
                error!(epoch = push.epoch, error = %e, "the master's map does not fit this world: ignored");
            }
        }
    }
    let stale = super::proxy::forget_departed_proxies(world, &members);
    if stale > 0 {
        info!(
            proxies = stale,
            "proxies of shards that left the cluster removed"
        );
    }
    let mut m = world.resource_mut::<Membership>();
    if m.members != members {
        m.version += 1;
        m.members = members;
    }
    m.dead = dead.clone();
    // After the new map (an adopter promotes into the cells it now owns) and after the dead
    // member's proxies went (its replica takes their place).
    super::replica::on_departed(world, &departed, &dead);
    (world.resource_mut::<Membership>().settled).extend(departed);
}

/// Members the previous push named and `members` does not, members declared dead this shard
/// has not settled yet (its first push may come after a death), and any this shard still has a
/// handoff open to that `members` does not name.
fn departed_members(
    world: &World,
    members: &BTreeSet<ShardId>,
    dead: &std::collections::BTreeMap<ShardId, Option<ShardId>>,
) -> Vec<ShardId> {
    let known = world.resource::<Membership>();
    let mut gone: BTreeSet<ShardId> = known.members.difference(members).copied().collect();
    gone.extend(
        dead.keys()
            .filter(|d| !members.contains(d) && !known.settled.contains(d)),
    );
    if let Some(book) = world.get_resource::<super::handoff::Handoffs>() {
        // Settled before too (an attempt opened while the push that dropped it was on its
        // way): only its attempts are settled again (`replica::on_departed`).
        gone.extend((book.0.open_to()).filter(|s| !members.contains(s)));
    }
    gone.into_iter().collect()
}

/// The master's newer `map`: moves it settles end, and it replaces this shard's.
fn install_map(world: &mut World, me: ShardId, map: CellMap) {
    let (mut out, mut inc) = (0, 0);
    let mut moves = world.resource_mut::<CellMoves>();
    moves.outgoing.retain(|cell, _| {
        let mine = map.owner_of(*cell) == Some(me);
        out += u64::from(!mine);
        mine
    });
    moves.incoming.retain(|cell, _| {
        let pending = map.owner_of(*cell).is_some_and(|s| s != me);
        inc += u64::from(map.owner_of(*cell) == Some(me));
        pending
    });
    let live: BTreeSet<u64> = moves
        .outgoing
        .values()
        .chain(moves.incoming.values())
        .map(|m| m.id)
        .collect();
    moves.reported.retain(|id| live.contains(id));
    let mut stats = world.resource_mut::<HandoffStats>();
    stats.cells_moved_out += out;
    stats.cells_moved_in += inc;
    info!(epoch = map.epoch().0, "new cell map");
    world.insert_resource(Space::new(me, map));
}

/// How many of this tick's `budget` offers go to players' avatars, with `players` avatars and
/// `others` other entities left to ship: their share of what is left, rounded up (at least one
/// while any is left), so they leave evenly over the whole move.
///
/// Why: an avatar's handoff brings its client along, and the client's redirect costs the target
/// a login and a first full snapshot of everything it sees (hundreds of entities in a crowded
/// cell), the work of many entity handoffs. Offered in plain query order, avatars come last
/// (spawned after the NPCs), so a crowd's clients all arrived on the target in the same tick: at
/// 2,000 entities and 100 clients that tick cost 2.3× the target's steady tick (the `cell_move`
/// bench); spread, it adds a few of them to each tick of the move.
pub fn players_quota(budget: usize, players: usize, others: usize) -> usize {
    if players == 0 || budget == 0 {
        return 0;
    }
    (budget * players)
        .div_ceil(players + others)
        .clamp(1, players.min(budget))
}

/// An entity of a leaf being shipped, waiting for its offer in [`ship_cells`].
type Shippable = (Entity, Vec3, ShardId);

/// The entities [`ship_cells`] found to ship this tick, kept between ticks for their capacity.
#[derive(Debug, Default)]
pub struct ShipQueue {
    players: Vec<Shippable>,
    others: Vec<Shippable>,
}

/// `Ownership`, before ordinary handoffs: offer the entities of every leaf being shipped to its
/// target, at most `cluster.cell_move_batch` per tick (players' avatars among them by
/// [`players_quota`], at most `cluster.cell_move_players_per_tick`), and report a leaf shipped
/// once nothing of it is owned or frozen here.
pub fn ship_cells(
    mut offerer: Offerer,
    mut moves: ResMut<CellMoves>,
    config: Res<Config>,
    owned: Query<(Entity, &Position, Has<Avatar>, Has<AwaitingClient>), With<Owned>>,
    frozen: Query<(&Position, &InTransit)>,
    mut master: ResMut<MasterOutbox>,
    mut queue: Local<ShipQueue>,
) {
    if moves.outgoing.is_empty() {
        return;
    }
    let budget = config.0.cluster.cell_move_batch as usize;
    let cap = config.0.cluster.cell_move_players_per_tick as usize;
    let mut left: BTreeMap<u64, usize> = moves.outgoing.values().map(|m| (m.id, 0)).collect();
    let ShipQueue { players, others } = &mut *queue;
    players.clear();
    others.clear();
    for (e, pos, avatar, awaiting) in &owned {
        let p = [pos.0.x, pos.0.z];
        let Some(m) = moves.outgoing.get(&offerer.space.map.leaf_at(p)).copied() else {
            continue;
        };
        *left.entry(m.id).or_default() += 1;
        if avatar || awaiting {
            players.push((e, pos.0, m.peer));
        } else {
            others.push((e, pos.0, m.peer));
        }
    }
    // The players' share first, then the others, then more players if the others ran out;
    // never more than `cap` players.
    let quota = players_quota(budget, players.len(), others.len()).min(cap);
    let mut players_offered = 0;
    let mut next_player = 0;
    for &(e, p, to) in players.iter() {
        if players_offered == quota {
            break;
        }
        next_player += 1;
        players_offered += usize::from(offerer.offer(e, p, to));
    }
    let mut offered = players_offered;
    for &(e, p, to) in others.iter() {
        if offered == budget {
            break;
        }
        offered += usize::from(offerer.offer(e, p, to));
    }
    for &(e, p, to) in &players[next_player..] {
        if offered == budget || players_offered == cap {
            break;
        }
        let sent = usize::from(offerer.offer(e, p, to));
        offered += sent;
        players_offered += sent;
    }
    for (pos, t) in &frozen {
        let leaf = offerer.space.map.leaf_at([pos.0.x, pos.0.z]);
        if let Some(m) = moves.outgoing.get(&leaf).filter(|m| m.peer == t.to) {
            *left.entry(m.id).or_default() += 1;
        }
    }
    for (id, n) in left {
        if n == 0 && moves.reported.insert(id) {
            master.0.push(MasterRequest::CellShipped { id });
            info!(id, "cell shipped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::players_quota;

    #[test]
    fn players_leave_in_proportion_to_what_is_left() {
        // The bench's crowd: 100 clients among 2,113 entities, 200 a tick: 10 a tick, so the
        // last of them leave with the last NPCs instead of all together at the end.
        assert_eq!(players_quota(200, 100, 2_013), 10);
        assert_eq!(players_quota(50, 100, 2_013), 3);
        // Rounded up, at least one while any is left; never more than there are or the budget.
        assert_eq!(players_quota(200, 1, 10_000), 1);
        assert_eq!(players_quota(200, 5, 0), 5);
        assert_eq!(players_quota(3, 100, 0), 3);
        assert_eq!(players_quota(200, 0, 500), 0);
        assert_eq!(players_quota(0, 10, 10), 0);
    }
}
