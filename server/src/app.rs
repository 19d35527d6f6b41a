//! [`ShardApp`]: one shard's `bevy_ecs` world and the schedule that runs once per tick.
//!
//! ```
//! use zonescaler_server::{ShardApp, ShardSystems};
//! use zonescaler_server::components::Position;
//! use bevy_ecs::prelude::*;
//!
//! // A game system: runs in `Simulate` every tick, on entities this shard owns.
//! fn gravity(mut q: Query<&mut Position>) {
//!     for mut p in &mut q { p.0.y = p.0.y.max(0.0); }
//! }
//!
//! let mut app = ShardApp::example(Default::default());
//! app.add_systems(ShardSystems::Simulate, gravity);
//! app.tick();
//! assert_eq!(app.tick_number(), 1);
//! ```

use crate::commands::{self, CommandInbox, DeliveredCommands, GameCommands};
use crate::components::NetIndex;
use crate::components::{InCell, Networked, Owned, Position, ReplicatedComponents};
use crate::handoff::{self, ClusterDirectory, HandoffState};
use crate::interest::{self, AoiGrid, Frame};
use crate::movement;
use crate::net::{self, Clients, Registry};
use crate::npc::NpcPlugin;
use crate::proxy::{self, Mirrors, ProxyApplyTick, ShardInbox, ShardOutbox, Space};
use crate::replicate::{self, ReplicateScratch};
use crate::resources::{
    Config, DespawnLog, IdAllocator, Inbox, Outbox, PlayerLog, ShardRng, ShardStats, TickClock,
};
use bevy_ecs::prelude::*;
use bevy_ecs::schedule::{ScheduleConfigs, SingleThreadedExecutor};
use bevy_ecs::system::ScheduleSystem;
use zonescaler_net::{NetCommand, NetEvent};
use zonescaler_shared::cellmap::{CellGrid, CellMap};
use zonescaler_shared::components::{Health, Kind, Replicated};
use zonescaler_shared::config::WorldConfig;
use zonescaler_shared::protocol::{CommandKind, ComponentBlob};
use zonescaler_shared::rng::Rng;
use zonescaler_shared::{ShardId, Tick};

/// The stages of one tick, in order. Game systems go into `Simulate`.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShardSystems {
    /// Drain the inbox: logins, inputs, disconnects; bad messages close their connection.
    Receive,
    /// Game logic: inputs applied, NPCs wander, movers step. Add your systems here.
    Simulate,
    /// Authority bookkeeping: which cell each owned entity stands in.
    Ownership,
    /// Build this tick's entity frame and AOI grid.
    Interest,
    /// Compute each client's delta snapshot against its acknowledged baseline.
    Replicate,
    /// Encode snapshots into datagram-sized parts and queue them in the outbox.
    Send,
}

/// Refreshes encoded replicated components; runs inside `Interest`, before the frame is built.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ReplicationCache;

/// Something that configures a shard app: systems, components, resources.
pub trait Plugin {
    fn build(&self, app: &mut ShardApp);
}

/// A shard's world, its schedule, and its protocol registry.
pub struct ShardApp {
    pub world: World,
    schedule: Schedule,
    /// Whether the driver set the cluster clock for the next tick (else it advances by a tick).
    clock_set: bool,
}

impl std::fmt::Debug for ShardApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardApp")
            .field("tick", &self.tick_number())
            .finish_non_exhaustive()
    }
}

impl ShardApp {
    /// The core shard: the six sets, networking, movement authority, interest and replication.
    /// No NPCs and no replicated components yet; see [`Self::example`].
    pub fn new(config: WorldConfig, shard: ShardId) -> Self {
        let mut world = World::new();
        world.insert_resource(TickClock {
            tick: Tick(0),
            dt: config.tick_dt(),
            tick_hz: config.simulation.tick_hz,
            now_ms: 0,
        });
        // First: the hooks of `Networked` keep it current from the first spawn on.
        world.init_resource::<NetIndex>();
        world.insert_resource(ShardRng(Rng::new(
            config.simulation.seed ^ u64::from(shard.0).wrapping_mul(0x9E37),
        )));
        world.insert_resource(IdAllocator::new(shard));
        let grid = CellGrid::from_config(&config);
        world.insert_resource(Space::new(shard, CellMap::single(grid, shard)));
        world.insert_resource(Grid(grid));
        world.init_resource::<ShardInbox>();
        world.init_resource::<ShardOutbox>();
        world.init_resource::<Mirrors>();
        world.init_resource::<HandoffState>();
        world.init_resource::<ClusterDirectory>();
        world.init_resource::<DespawnLog>();
        world.init_resource::<PlayerLog>();
        world.init_resource::<GameCommands>();
        world.init_resource::<DeliveredCommands>();
        world.init_resource::<CommandInbox>();
        world.init_resource::<ComponentCodecs>();
        world.init_resource::<ProxyApplyTick>();
        world.insert_resource(Config(config));
        world.init_resource::<Inbox>();
        world.init_resource::<Outbox>();
        world.init_resource::<Clients>();
        world.init_resource::<Registry>();
        world.init_resource::<ShardStats>();
        world.init_resource::<Frame>();
        world.init_resource::<AoiGrid>();
        world.init_resource::<ReplicateScratch>();

        let mut schedule = Schedule::default();
        schedule.set_executor(SingleThreadedExecutor::new());
        use ShardSystems::*;
        schedule.configure_sets((Receive, Simulate, Ownership, Interest, Replicate, Send).chain());
        schedule.configure_sets(ReplicationCache.in_set(Interest));
        schedule.add_systems(
            (
                proxy::receive_shard_messages,
                commands::deliver_commands,
                net::receive,
            )
                .chain()
                .in_set(Receive),
        );
        schedule.add_systems(
            (movement::apply_inputs, movement::move_entities)
                .chain()
                .in_set(Simulate),
        );
        schedule.add_systems(
            (
                net::drop_clients_without_avatar,
                update_cells,
                handoff::start_handoffs,
                handoff::cancel_late_handoffs,
                handoff::expire_awaiting_clients,
                commands::queue_commands,
            )
                .in_set(Ownership),
        );
        // Proxies are read-only; catching a write costs a query per tick, so only in debug.
        #[cfg(debug_assertions)]
        schedule.add_systems(proxy::forbid_proxy_writes.in_set(Ownership));
        schedule.add_systems(
            (interest::build_frame, interest::build_grid)
                .chain()
                .in_set(Interest)
                .after(ReplicationCache),
        );
        schedule.add_systems((replicate::compute_deltas, proxy::mirror_proxies).in_set(Replicate));
        schedule.add_systems(net::send_snapshots.in_set(Send));
        Self {
            world,
            schedule,
            clock_set: false,
        }
    }

    /// The example game: core + wandering NPCs + `Kind` and `Health` replicated, on a one-shard
    /// world.
    pub fn example(config: WorldConfig) -> Self {
        let mut app = Self::new(config, ShardId(0));
        app.add_plugin(ExampleGamePlugin).add_plugin(NpcPlugin);
        app
    }

    /// The example game as shard `me` of a world split by `map`: NPCs and avatars start in the
    /// cells `me` owns, and entities near other shards' cells are mirrored to them as proxies.
    pub fn example_in(config: WorldConfig, me: ShardId, map: CellMap) -> Self {
        let mut app = Self::new(config, me);
        app.world.insert_resource(Space::new(me, map));
        app.add_plugin(ExampleGamePlugin).add_plugin(NpcPlugin);
        app
    }

    /// Hand a message from shard `from` to the next tick.
    pub fn push_shard_message(&mut self, from: ShardId, bytes: bytes::Bytes) {
        self.world
            .resource_mut::<ShardInbox>()
            .messages
            .push((from, bytes));
    }

    /// Take the shard-link messages the last tick wants sent, as (recipient, bytes).
    pub fn drain_shard_outbox(&mut self) -> Vec<(ShardId, bytes::Bytes)> {
        std::mem::take(&mut self.world.resource_mut::<ShardOutbox>().messages)
    }

    pub fn add_plugin(&mut self, plugin: impl Plugin) -> &mut Self {
        plugin.build(self);
        self
    }

    /// Add systems to one of the tick's sets.
    pub fn add_systems<M>(
        &mut self,
        set: ShardSystems,
        systems: impl IntoScheduleConfigs<ScheduleSystem, M>,
    ) -> &mut Self {
        let configs: ScheduleConfigs<ScheduleSystem> = systems.into_configs();
        self.schedule.add_systems(configs.in_set(set));
        self
    }

    /// Replicate component `T` to clients: registered in the protocol registry (so it is part of
    /// the protocol hash) and re-encoded whenever it changes.
    ///
    /// # Panics
    /// If `T::NAME` is already registered: that is a bug in the app's setup, found at start.
    pub fn replicate<T: Replicated>(&mut self) -> &mut Self {
        let kind = self
            .world
            .resource_mut::<Registry>()
            .0
            .register(T::NAME)
            .unwrap_or_else(|e| panic!("replicate::<{}>(): {e}", std::any::type_name::<T>()));
        self.world
            .resource_mut::<ComponentCodecs>()
            .0
            .push(ComponentCodec {
                kind,
                insert: insert_decoded::<T>,
                remove: |e| {
                    e.remove::<T>();
                },
            });
        self.schedule.add_systems(
            (move |mut q: Query<(&T, &mut ReplicatedComponents), bevy_ecs::query::Changed<T>>| {
                for (value, mut cache) in &mut q {
                    cache.set(kind, bitcode::encode(value));
                }
            })
            .in_set(ReplicationCache),
        );
        self
    }

    /// Run one tick: `Receive` → `Simulate` → `Ownership` → `Interest` → `Replicate` → `Send`.
    pub fn tick(&mut self) {
        {
            let advance = !std::mem::take(&mut self.clock_set);
            let mut clock = self.world.resource_mut::<TickClock>();
            clock.tick = clock.tick.next();
            if advance {
                clock.now_ms += 1_000 / u64::from(clock.tick_hz);
            }
        }
        self.schedule.run(&mut self.world);
        let entities = self.world.resource::<Frame>().ids.len();
        let mut stats = self.world.resource_mut::<ShardStats>();
        stats.ticks += 1;
        stats.entities = entities;
    }

    /// Set the cluster clock (milliseconds) for the next tick: the production loop passes Unix
    /// time, the simulator its simulated time.
    pub fn set_now_ms(&mut self, now_ms: u64) {
        self.world.resource_mut::<TickClock>().now_ms = now_ms;
        self.clock_set = true;
    }

    /// The tick last run (0 before the first).
    pub fn tick_number(&self) -> u64 {
        self.world.resource::<TickClock>().tick.0
    }

    /// Hand a network event to the next tick.
    pub fn push_event(&mut self, event: NetEvent) {
        self.world.resource_mut::<Inbox>().push(event);
    }

    /// Take everything the last tick wants sent.
    pub fn drain_outbox(&mut self) -> Vec<NetCommand> {
        std::mem::take(&mut self.world.resource_mut::<Outbox>().commands)
    }

    pub fn stats(&self) -> &ShardStats {
        self.world.resource::<ShardStats>()
    }

    /// What the master hears about this shard (its tick time is the runtime's to add). Drains
    /// the player arrivals and departures since the last call.
    pub fn load(&mut self) -> zonescaler_shared::protocol::ShardLoad {
        use crate::handoff::{HandoffState, InTransit};
        use crate::proxy::Proxy;
        let owned = self
            .world
            .query_filtered::<(), With<crate::components::Owned>>()
            .iter(&self.world)
            .count();
        let in_transit = self
            .world
            .query_filtered::<(), With<InTransit>>()
            .iter(&self.world)
            .count();
        let proxies = self
            .world
            .query_filtered::<(), With<Proxy>>()
            .iter(&self.world)
            .count();
        let clients = self.world.resource::<ShardStats>().clients;
        let mut log = self.world.resource_mut::<PlayerLog>();
        let players_arrived = log.arrived.drain(..).collect();
        let players_left = log.left.drain(..).collect();
        let h = self.world.resource::<HandoffState>();
        zonescaler_shared::protocol::ShardLoad {
            tick: self.tick_number(),
            owned_entities: owned as u32,
            in_transit: in_transit as u32,
            proxies: proxies as u32,
            clients: clients as u32,
            tick_ms_p99: 0.0,
            handoffs_out: h.out,
            handoffs_in: h.accepted_total,
            handoff_transit_ms_p99: h.transit_ms.value_at_quantile(0.99) as f32,
            players_arrived,
            players_left,
        }
    }

    /// The example game's protocol hash (what shards of the example game check on their links).
    pub fn example_protocol_hash() -> u64 {
        zonescaler_shared::registry::ProtocolRegistry::with_components(
            &zonescaler_shared::components::EXAMPLE_GAME_COMPONENTS,
        )
        .map_or(0, |r| r.hash())
    }

    /// The protocol hash clients must present in `Hello`.
    pub fn protocol_hash(&self) -> u64 {
        self.world.resource::<Registry>().0.hash()
    }

    /// A hash of everything simulated: every networked entity's id, quantised position and
    /// replication revision, in `NetId` order, plus the tick. Equal hashes on two runs mean
    /// equal worlds (to the wire's precision).
    pub fn state_hash(&mut self) -> u64 {
        let mut rows: Vec<(u64, [i32; 3], u32)> = self
            .world
            .query::<(&Networked, &Position, &ReplicatedComponents)>()
            .iter(&self.world)
            .map(|(n, p, r)| (n.0.0, p.quantized().0, r.rev))
            .collect();
        rows.sort_unstable_by_key(|r| r.0);
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ self.tick_number();
        let mut eat = |v: u64| {
            h ^= v;
            h = h.wrapping_mul(0x0100_0000_01b3);
        };
        for (id, p, rev) in rows {
            eat(id);
            p.iter().for_each(|c| eat(*c as u32 as u64));
            eat(u64::from(rev));
        }
        h
    }
}

/// `Ownership`: keep each owned entity's base cell current.
fn update_cells(
    mut commands: Commands,
    q: Query<
        (Entity, &Position, Option<&InCell>),
        (With<Owned>, bevy_ecs::query::Changed<Position>),
    >,
    grid: Res<Grid>,
) {
    for (e, p, cell) in &q {
        let now = grid.0.base_cell_at([p.0.x, p.0.z]);
        if cell.map(|c| c.0) != Some(now) {
            commands.entity(e).insert(InCell(now));
        }
    }
}

/// How to turn one registered component's bytes back into the component (a handoff target
/// rebuilds the entity from them) and how to take it off (a former owner keeps only bytes).
#[derive(Clone, Copy, Debug)]
pub struct ComponentCodec {
    pub kind: u8,
    pub insert: fn(&mut EntityWorldMut, &[u8]) -> bool,
    pub remove: fn(&mut EntityWorldMut),
}

/// Every registered component's codec, in registration order.
#[derive(Resource, Debug, Default)]
pub struct ComponentCodecs(pub Vec<ComponentCodec>);

fn insert_decoded<T: Replicated>(e: &mut EntityWorldMut, bytes: &[u8]) -> bool {
    match bitcode::decode::<T>(bytes) {
        Ok(v) => {
            e.insert(v);
            true
        }
        Err(_) => false,
    }
}

/// Insert the typed components encoded in `blobs` on `entity` (unknown kinds and bytes that do
/// not decode are skipped and logged: a handoff from a peer with the same protocol hash never
/// has them).
pub fn insert_replicated(world: &mut World, entity: Entity, blobs: &[ComponentBlob]) {
    let codecs = world.resource::<ComponentCodecs>().0.clone();
    let mut e = world.entity_mut(entity);
    for blob in blobs {
        let ok = codecs
            .iter()
            .find(|c| c.kind == blob.kind)
            .is_some_and(|c| (c.insert)(&mut e, &blob.bytes));
        if !ok {
            tracing::warn!(
                kind = blob.kind,
                "replicated component did not decode; skipped"
            );
        }
    }
}

/// Remove every registered typed component from `entity` (it became a proxy: only its bytes,
/// kept fresh by the owner, remain).
pub fn remove_replicated(world: &mut World, entity: Entity) {
    let codecs = world.resource::<ComponentCodecs>().0.clone();
    let mut e = world.entity_mut(entity);
    for c in &codecs {
        (c.remove)(&mut e);
    }
}

/// The world's base cell grid (from config).
#[derive(Resource, Debug, Clone)]
pub struct Grid(pub CellGrid);

/// The example game: replicates `Kind` and `Health`, gives every new networked entity full health.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExampleGamePlugin;

impl Plugin for ExampleGamePlugin {
    fn build(&self, app: &mut ShardApp) {
        app.replicate::<Kind>().replicate::<Health>();
        app.add_systems(ShardSystems::Simulate, (give_health, apply_damage));
    }
}

/// `Simulate`: damage commands delivered to entities this shard owns.
fn apply_damage(delivered: Res<DeliveredCommands>, mut health: Query<&mut Health, With<Owned>>) {
    for (e, cmd) in &delivered.0 {
        let CommandKind::Damage { hp } = *cmd;
        if let Ok(mut h) = health.get_mut(*e) {
            h.hp = h.hp.saturating_sub(hp);
        }
    }
}

fn give_health(
    mut commands: Commands,
    q: Query<Entity, (Added<Networked>, With<Owned>, Without<Health>)>,
) {
    for e in &q {
        commands.entity(e).insert(Health { hp: 100, max: 100 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zonescaler_shared::components::EXAMPLE_GAME_COMPONENTS;
    use zonescaler_shared::registry::ProtocolRegistry;

    #[test]
    fn example_registry_matches_what_clients_register() {
        let app = ShardApp::example(WorldConfig::default());
        let client =
            ProtocolRegistry::with_components(&EXAMPLE_GAME_COMPONENTS).expect("distinct names");
        assert_eq!(
            app.protocol_hash(),
            client.hash(),
            "bots and shards must agree on the protocol"
        );
    }

    #[test]
    fn npcs_wander_and_stay_in_the_world() {
        let mut cfg = WorldConfig::default();
        cfg.npc.count = 200;
        let mut app = ShardApp::example(cfg.clone());
        let before = app.state_hash();
        for _ in 0..60 {
            app.tick();
        }
        assert_ne!(before, app.state_hash(), "NPCs must move");
        let w = &cfg.world;
        let mut q = app.world.query::<&Position>();
        for p in q.iter(&app.world) {
            assert!(
                (w.min_x..=w.max_x).contains(&p.0.x) && (w.min_z..=w.max_z).contains(&p.0.z),
                "{p:?} left the world"
            );
        }
        assert_eq!(app.stats().entities, 200);
    }

    #[test]
    fn an_entity_on_the_world_max_edge_stands_in_the_last_cell() {
        let cfg = WorldConfig::default();
        let mut app = ShardApp::new(cfg.clone(), ShardId(0));
        let corner = glam::Vec3::new(cfg.world.max_x, 0.0, cfg.world.max_z);
        let id = zonescaler_shared::NetId(1);
        let e = app
            .world
            .spawn((Networked(id), Owned, Position(corner)))
            .id();
        app.tick();
        let cell = app
            .world
            .get::<InCell>(e)
            .expect("the cell is set on the first tick")
            .0;
        let grid = CellGrid::from_config(&cfg);
        assert_eq!(
            cell.coords(),
            (grid.cols() - 1, grid.rows() - 1),
            "no cell past the grid"
        );
    }
}
