//! [`ShardApp`]: one shard's `bevy_ecs` world and the schedule that runs once per tick.
//!
//! This is the bare container: a world, the six sets of [`ShardSystems`] and the finer
//! [`ReceiveSteps`], a startup schedule, and the calls a driver makes (push events and link
//! messages in, tick, drain what to send). The framework's own parts are plugins added on top
//! (`crate::app::ShardPlugins`); a game adds its own with [`ShardApp::add_plugins`].

use super::commands::CommandSystems;
use super::components::{
    Generation, InCell, InTransit, NetIndex, Networked, Owned, Player, Position, Proxy,
    ReplicatedComponents,
};
use super::resources::{
    ClusterMode, Config, HandoffStats, IdAllocator, Inbox, MasterInbox, MasterOutbox, Outbox,
    PlayerLog, ShardInbox, ShardOutbox, ShardRng, ShardStats, TickClock,
};
use super::space::{Grid, Space};
use bevy_ecs::prelude::*;
use bevy_ecs::schedule::{ScheduleConfigs, ScheduleLabel, SingleThreadedExecutor};
use bevy_ecs::system::ScheduleSystem;
use std::collections::BTreeMap;
use zonescaler_net::{NetCommand, NetEvent};
use zonescaler_shared::CellId;
use zonescaler_shared::cellmap::{CellGrid, CellMap};
use zonescaler_shared::config::WorldConfig;
use zonescaler_shared::limits;
use zonescaler_shared::protocol::CellLoad;
use zonescaler_shared::protocol::{MasterNotice, MasterRequest, OwnershipReport, ShardLoad};
use zonescaler_shared::rng::Rng;
use zonescaler_shared::{ShardId, Tick};

/// The stages of one tick, in order. Game systems go into `Simulate`.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShardSystems {
    /// Drain the inboxes: shard links, logins, inputs, client commands, disconnects; bad
    /// messages close their connection. Commands for owned entities are delivered.
    Receive,
    /// Game logic: inputs applied, commands handled, NPCs think, movers step. Add your systems
    /// here.
    Simulate,
    /// Authority bookkeeping: which cell each owned entity stands in, handoffs offered and
    /// timed out, this tick's commands queued.
    Ownership,
    /// Build this tick's entity frame and AOI grid.
    Interest,
    /// Compute each client's delta snapshot and mirror border entities to neighbours.
    Replicate,
    /// Encode snapshots into datagram-sized parts and queue them in the outbox.
    Send,
}

/// The steps of `Receive`, in order: shard-link messages first (a proxy or a handoff answer is
/// applied before anything reads it), then clients (logins, inputs, their commands), then every
/// queued command is routed to its owner or delivered, then decoded into each type's
/// `Delivered<T>` for the game's handlers in `Simulate`.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReceiveSteps {
    Links,
    Clients,
    Commands,
}

/// Refreshes encoded replicated components: first in `Ownership`, so what a handoff offered
/// this tick carries (and what clients and neighbours are sent) is this tick's state, including
/// every change game systems made in `Simulate`.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplicationCache;

/// Runs once, before the first tick, once the shard knows which cells it owns (spawning the
/// world's content in them, for instance).
#[derive(ScheduleLabel, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Startup;

/// Setup problems plugins reported with [`ShardApp::setup_error`].
#[derive(Resource, Debug, Default)]
pub struct SetupErrors(pub Vec<String>);

/// Something that configures a shard app: systems, components, resources, commands.
pub trait Plugin {
    fn build(&self, app: &mut ShardApp);
}

/// A shard's world, its schedules, and its protocol registry.
pub struct ShardApp {
    pub world: World,
    schedule: Schedule,
    startup: Option<Schedule>,
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
    /// The bare container: core resources and the empty sets, on a one-shard map where this is
    /// shard 0. No networking, interest or authority yet: `crate::app::ShardPlugins` adds
    /// them (use `ShardApp::new`, which does).
    pub fn bare(config: WorldConfig) -> Self {
        let mut world = World::new();
        world.insert_resource(TickClock {
            tick: Tick(0),
            dt: config.tick_dt(),
            tick_hz: config.simulation.tick_hz,
            now_ms: 0,
        });
        // First: the hooks of `Networked` keep it current from the first spawn on.
        world.init_resource::<NetIndex>();
        // A command on an entity despawned earlier in the same tick (a game system's, or a race
        // between two systems) is a bug debug builds stop on; a release shard logs it and keeps
        // serving its players rather than crash.
        #[cfg(not(debug_assertions))]
        world.insert_resource(bevy_ecs::error::FallbackErrorHandler(bevy_ecs::error::warn));
        let grid = CellGrid::from_config(&config);
        world.insert_resource(Grid(grid));
        world.insert_resource(Config(config));
        world.init_resource::<ClusterMode>();
        world.init_resource::<Inbox>();
        world.init_resource::<Outbox>();
        world.init_resource::<ShardInbox>();
        world.init_resource::<ShardOutbox>();
        world.init_resource::<MasterInbox>();
        world.init_resource::<MasterOutbox>();
        world.init_resource::<PlayerLog>();
        world.init_resource::<ShardStats>();
        world.init_resource::<HandoffStats>();
        let mut schedule = Schedule::default();
        schedule.set_executor(SingleThreadedExecutor::new());
        use ShardSystems::*;
        schedule.configure_sets((Receive, Simulate, Ownership, Interest, Replicate, Send).chain());
        schedule.configure_sets(
            (
                ReceiveSteps::Links,
                ReceiveSteps::Clients,
                ReceiveSteps::Commands,
            )
                .chain()
                .in_set(Receive),
        );
        schedule.configure_sets(
            (CommandSystems::Route, CommandSystems::Decode)
                .chain()
                .in_set(ReceiveSteps::Commands),
        );
        schedule.configure_sets(ReplicationCache.in_set(Ownership));
        let mut startup = Schedule::new(Startup);
        startup.set_executor(SingleThreadedExecutor::new());
        let mut app = Self {
            world,
            schedule,
            startup: Some(startup),
            clock_set: false,
        };
        app.place(ShardId(0), CellMap::single(grid, ShardId(0)), false);
        app
    }

    /// Make this shard `me` of a world split by `map` (before its first tick): its ids, its
    /// random sequence and its cells follow. A shard of a multi-shard map claims logins with the
    /// master and routes messages to players through it.
    pub fn place(&mut self, me: ShardId, map: CellMap, cluster: bool) -> &mut Self {
        let seed = self.world.resource::<Config>().0.simulation.seed;
        self.world.insert_resource(ShardRng(Rng::new(
            seed ^ u64::from(me.0).wrapping_mul(0x9E37),
        )));
        self.world.insert_resource(IdAllocator::new(me));
        self.world.insert_resource(Space::new(me, map));
        self.world.insert_resource(ClusterMode(cluster));
        self
    }

    /// Add a plugin (the framework's parts and a game's are the same kind of thing).
    pub fn add_plugins(&mut self, plugin: impl Plugin) -> &mut Self {
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

    /// Add systems with their own set or ordering (the framework's plugins place theirs into
    /// [`ReceiveSteps`] and [`ReplicationCache`] this way).
    pub fn add_systems_raw<M>(
        &mut self,
        systems: impl IntoScheduleConfigs<ScheduleSystem, M>,
    ) -> &mut Self {
        self.schedule.add_systems(systems);
        self
    }

    /// Add systems that run once before the first tick, after the shard knows its cells.
    ///
    /// # Panics
    /// After the first tick: startup has run, a system added now would never run.
    pub fn add_startup_systems<M>(
        &mut self,
        systems: impl IntoScheduleConfigs<ScheduleSystem, M>,
    ) -> &mut Self {
        self.startup
            .as_mut()
            .expect("add_startup_systems after the first tick: startup already ran")
            .add_systems(systems);
        self
    }

    /// A plugin found its setup unusable (a `[game]` setting out of range, say): the process
    /// refuses to start with this line instead of panicking or running a broken game. Plugins
    /// cannot return errors from `build`, so they say it here.
    pub fn setup_error(&mut self, message: impl Into<String>) -> &mut Self {
        self.world
            .get_resource_or_insert_with(SetupErrors::default)
            .0
            .push(message.into());
        self
    }

    /// What plugins said was wrong with their setup (empty when all is well).
    pub fn setup_errors(&self) -> &[String] {
        self.world
            .get_resource::<SetupErrors>()
            .map_or(&[], |e| e.0.as_slice())
    }

    /// Run the startup systems now if they have not run (the first `tick` does it otherwise).
    pub fn start(&mut self) {
        if let Some(mut startup) = self.startup.take() {
            startup.run(&mut self.world);
        }
    }

    /// Run one tick: `Receive` → `Simulate` → `Ownership` → `Interest` → `Replicate` → `Send`.
    pub fn tick(&mut self) {
        self.start();
        {
            let advance = !std::mem::take(&mut self.clock_set);
            let mut clock = self.world.resource_mut::<TickClock>();
            clock.tick = clock.tick.next();
            if advance {
                clock.now_ms += 1_000 / u64::from(clock.tick_hz);
            }
        }
        self.schedule.run(&mut self.world);
        self.world.resource_mut::<ShardStats>().ticks += 1;
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

    /// Hand the master's answer or order to the next tick.
    pub fn push_master_notice(&mut self, notice: MasterNotice) {
        self.world.resource_mut::<MasterInbox>().0.push(notice);
    }

    /// Take the requests for the master the last tick made.
    pub fn drain_master_requests(&mut self) -> Vec<MasterRequest> {
        std::mem::take(&mut self.world.resource_mut::<MasterOutbox>().0)
    }

    /// Whether the master drained this shard: it owns nothing and has left the cluster.
    pub fn drained(&self) -> bool {
        self.world
            .get_resource::<crate::core::resources::Drained>()
            .is_some_and(|d| d.0)
    }

    pub fn stats(&self) -> &ShardStats {
        self.world.resource::<ShardStats>()
    }

    /// This shard's id.
    pub fn shard_id(&self) -> ShardId {
        self.world.resource::<Space>().me
    }

    /// What the master hears about this shard: counts, handoff counters, the players who came
    /// and went since the last call (drained), and each cell's share of the tick by the cost
    /// model ([`super::load`]). Everything measured over time (tick CPU and wall time, bytes,
    /// memory) is left at zero: the app reads no clock, so its driver adds those (the runtime
    /// measures them, the simulator models them; `crate::cluster::load::LoadWindow`).
    pub fn load(&mut self) -> ShardLoad {
        let count = |w: &mut World, f: fn(&mut World) -> usize| f(w);
        let owned = count(&mut self.world, |w| {
            w.query_filtered::<(), With<Owned>>().iter(w).count()
        });
        let in_transit = count(&mut self.world, |w| {
            w.query_filtered::<(), With<InTransit>>().iter(w).count()
        });
        let proxies = count(&mut self.world, |w| {
            w.query_filtered::<(), With<Proxy>>().iter(w).count()
        });
        let clients = self.world.resource::<ShardStats>().clients;
        let cells = self.cell_loads();
        let mut log = self.world.resource_mut::<PlayerLog>();
        let players_arrived = log.arrived.drain(..).collect();
        let players_left = log.left.drain(..).collect();
        let players_sent_on = log.sent_on.drain(..).collect();
        let replica = self
            .world
            .get_resource::<super::resources::ReplicaStatus>()
            .copied()
            .unwrap_or_default();
        let (buddy, replica_lag_ticks) = (replica.buddy, replica.lag_ticks);
        let h = self.world.resource::<HandoffStats>();
        ShardLoad {
            buddy,
            replica_lag_ticks,
            tick: self.tick_number(),
            owned_entities: owned as u32,
            in_transit: in_transit as u32,
            proxies: proxies as u32,
            clients: clients as u32,
            handoffs_out: h.out,
            handoffs_in: h.accepted,
            handoff_transit_ms_p99: h.transit_ms.value_at_quantile(0.99) as f32,
            players_arrived,
            players_left,
            players_sent_on,
            cells,
            ..ShardLoad::default()
        }
    }

    /// What this shard owns now, for the master's ownership audit (`cluster::audit`): every
    /// owned entity with its ownership generation and every one frozen in a handoff with the
    /// attempt's number, sorted by id, with the tick, the map epoch and `taken_ms`, the
    /// driver's clock now (the app reads none). Call it between ticks: the state it reports
    /// then holds until the next one.
    pub fn ownership_report(&mut self, taken_ms: u64) -> OwnershipReport {
        let (mut owned, mut in_transit) = (Vec::new(), Vec::new());
        let mut q = self
            .world
            .query::<(&Networked, &Generation, Has<Owned>, Option<&InTransit>)>();
        for (n, g, is_owned, transit) in q.iter(&self.world) {
            if is_owned {
                owned.push((n.0, g.0));
            }
            if let Some(t) = transit {
                in_transit.push((n.0, t.generation));
            }
        }
        // One entity per id on a shard (`NetIndex`); were there two, the report names it once.
        for list in [&mut owned, &mut in_transit] {
            list.sort_unstable();
            list.dedup_by_key(|e| e.0);
        }
        OwnershipReport {
            tick: self.tick_number(),
            epoch: self.world.resource::<Space>().map.epoch().0,
            taken_ms,
            owned,
            in_transit,
        }
    }

    /// Entities this shard owns per base cell they stand in, players' avatars among them, and
    /// each cell's estimated share of the tick ([`super::load::apportion`], over every cell
    /// before the cut), the busiest `CELL_LOADS_PER_HEARTBEAT_MAX` (one pass over the owned
    /// entities).
    ///
    /// A player counts by its `Player` component, not by `Avatar` (a live connection here): an
    /// avatar just handed over is `AwaitingClient` until its client follows the redirect, which
    /// under load is a good part of the players walking across borders.
    pub fn cell_loads(&mut self) -> Vec<CellLoad> {
        let mut per: BTreeMap<CellId, (u32, u32)> = BTreeMap::new();
        let mut q = self
            .world
            .query_filtered::<(&InCell, Has<Player>), With<Owned>>();
        for (cell, player) in q.iter(&self.world) {
            let e = per.entry(cell.0).or_default();
            e.0 += 1;
            e.1 += u32::from(player);
        }
        let mut cells: Vec<CellLoad> = per
            .into_iter()
            .map(|(cell, (entities, clients))| CellLoad {
                cell,
                entities,
                clients,
                tick_share: 0.0,
            })
            .collect();
        super::load::apportion(&mut cells);
        super::load::keep_busiest(&mut cells, limits::CELL_LOADS_PER_HEARTBEAT_MAX);
        cells
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::components::{Avatar, AwaitingClient};
    use zonescaler_shared::ConnId;

    #[test]
    fn cell_loads_count_every_owned_player_even_while_its_client_follows_a_redirect() {
        let mut app = ShardApp::bare(WorldConfig::default());
        let (a, b) = (CellId::base(0, 0), CellId::base(1, 0));
        let player = |name: &str| Player {
            account: name.into(),
        };
        let w = &mut app.world;
        w.spawn((Owned, InCell(a))); // an NPC
        w.spawn((Owned, InCell(a), player("ann"), Avatar { conn: ConnId(1) }));
        // Handed over a moment ago: its client has not reconnected here yet.
        w.spawn((
            Owned,
            InCell(a),
            player("bob"),
            AwaitingClient {
                name: "bob".into(),
                since_ms: 0,
                last_input_seq: 0,
            },
        ));
        // Handed away: a proxy here, counted by its new owner.
        w.spawn((InCell(b), Proxy { owner: ShardId(1) }));
        assert_eq!(
            app.cell_loads(),
            vec![CellLoad {
                cell: a,
                entities: 3,
                clients: 2,
                tick_share: 1.0,
            }],
            "ann and bob stand in cell a, which is all this shard's tick; the proxy is not this shard's"
        );
    }
}
