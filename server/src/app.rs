//! The shard as the framework assembles it: the bare [`ShardApp`] plus the framework's own
//! plugins ([`ShardPlugins`]), and the constructors games and tests use.
//!
//! ```
//! use zonescaler_server::prelude::*;
//!
//! // A game system: runs in `Simulate` every tick, on entities this shard owns.
//! fn gravity(mut q: Query<&mut Position, OwnedOnly>) {
//!     for mut p in &mut q { p.0.y = p.0.y.max(0.0); }
//! }
//!
//! let mut app = ShardApp::example(Default::default());
//! app.add_systems(ShardSystems::Simulate, gravity);
//! app.tick();
//! assert_eq!(app.tick_number(), 1);
//! ```

use crate::authority::AuthorityPlugin;
use crate::client::ClientPlugin;
use crate::core::{CorePlugin, Plugin, ShardApp};
use crate::demo::ExampleGamePlugin;
use crate::interest::InterestPlugin;
use std::sync::Arc;
use zonescaler_shared::ShardId;
use zonescaler_shared::cellmap::{CellGrid, CellMap};
use zonescaler_shared::config::WorldConfig;

/// The framework's parts, in the order they build: the core (movement, cells, commands,
/// registry), interest and replication, clients, authority (handoffs, proxies, command routing).
#[derive(Debug, Default, Clone, Copy)]
pub struct ShardPlugins;

impl Plugin for ShardPlugins {
    fn build(&self, app: &mut ShardApp) {
        app.add_plugins(CorePlugin)
            .add_plugins(InterestPlugin)
            .add_plugins(ClientPlugin)
            .add_plugins(AuthorityPlugin);
    }
}

/// How a game sets up its shards: the closure a game passes to `main_with`, called on every
/// shard app the process builds.
pub type GameSetup = Arc<dyn Fn(&mut ShardApp) + Send + Sync>;

impl ShardApp {
    /// The framework shard, as shard `shard` of a world it owns whole: networking, interest,
    /// replication, authority. No game yet: add one with [`ShardApp::add_plugins`].
    pub fn new(config: WorldConfig, shard: ShardId) -> Self {
        let grid = CellGrid::from_config(&config);
        let mut app = Self::bare(config);
        app.place(shard, CellMap::single(grid, shard), false);
        app.add_plugins(ShardPlugins);
        app
    }

    /// The framework shard as shard `me` of a world split by `map`: entities and avatars start
    /// in the cells `me` owns, entities near other shards' cells are mirrored to them as proxies,
    /// logins are claimed with the master.
    pub fn in_cluster(config: WorldConfig, me: ShardId, map: CellMap) -> Self {
        let mut app = Self::new(config, me);
        app.place(me, map, true);
        app
    }

    /// A game's shard: the framework plus whatever `setup` adds, on a world this shard owns
    /// whole (`None`) or as shard `me` of a cluster.
    pub fn with_game(
        config: WorldConfig,
        placement: Option<(ShardId, CellMap)>,
        setup: &GameSetup,
    ) -> Self {
        let mut app = match placement {
            None => Self::new(config, ShardId(0)),
            Some((me, map)) => Self::in_cluster(config, me, map),
        };
        setup(&mut app);
        app
    }

    /// The demo game on a one-shard world.
    pub fn example(config: WorldConfig) -> Self {
        let mut app = Self::new(config, ShardId(0));
        app.add_plugins(ExampleGamePlugin);
        app
    }

    /// The demo game as shard `me` of a world split by `map`.
    pub fn example_in(config: WorldConfig, me: ShardId, map: CellMap) -> Self {
        let mut app = Self::in_cluster(config, me, map);
        app.add_plugins(ExampleGamePlugin);
        app
    }

    /// The demo game's client protocol hash (what its clients present).
    pub fn example_protocol_hash() -> u64 {
        Self::example(WorldConfig::default()).protocol_hash()
    }
}

/// The demo game, as a [`GameSetup`].
pub fn demo_game() -> GameSetup {
    Arc::new(|app: &mut ShardApp| {
        app.add_plugins(ExampleGamePlugin);
    })
}
