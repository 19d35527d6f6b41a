//! The game registry: everything a game registers, in one place, and how each type is handled.
//!
//! - [`ShardApp::replicate`]: a component sent to clients and neighbours' proxies and carried on
//!   handoff. Its encoding is cached per entity and refreshed on change; removing it is
//!   replicated too; neighbours hold it on their proxies as the typed component.
//! - [`ShardApp::migrate`]: server-only state (AI, cooldowns, inventory) that follows an entity to
//!   its next owner and never reaches a client or a proxy.
//! - [`ShardApp::command`] / [`ShardApp::client_command`]: typed commands to an entity's owner,
//!   handled there by a system reading [`Delivered<T>`](super::commands::Delivered).
//!
//! Every registration also lands in the [`ProtocolRegistry`] whose hashes peers compare, so a
//! client or a shard built with a different set is refused at connect instead of misreading.

#[cfg(debug_assertions)]
use super::app::ShardSystems;
use super::app::{ReplicationCache, ShardApp};
use super::commands::{CommandSystems, Delivered, DeliveredRaw, GameCommands};
#[cfg(debug_assertions)]
use super::components::Position;
use super::components::{Networked, Proxy, ReplicatedComponents};
use super::resources::ProxyApplyTick;
use bevy_ecs::change_detection::Tick;
use bevy_ecs::prelude::*;
use bitcode::{DecodeOwned, Encode};
use zonescaler_bots::game::{BotBrain, BotGame, BrainFactory};
use zonescaler_shared::components::{GameCommand, Replicated};
use zonescaler_shared::limits;
use zonescaler_shared::protocol::ComponentBlob;
use zonescaler_shared::registry::ProtocolRegistry;

/// Server-only state that follows an entity across handoffs (`app.migrate::<T>()`). `NAME` is
/// its stable wire name between shards (part of the cluster hash).
pub trait Migrating: Component + Encode + DecodeOwned + Send + Sync + 'static {
    const NAME: &'static str;
}

/// How to rebuild one replicated component from its bytes, and take it off.
#[derive(Clone, Copy, Debug)]
pub struct ComponentCodec {
    pub kind: u8,
    pub name: &'static str,
    pub insert: fn(&mut EntityWorldMut, &[u8]) -> bool,
    pub remove: fn(&mut EntityWorldMut),
}

/// How to carry one migrating component to the next owner.
#[derive(Clone, Copy, Debug)]
pub struct MigrateCodec {
    pub kind: u8,
    pub name: &'static str,
    pub encode: fn(EntityRef) -> Option<Vec<u8>>,
    /// Whether the entity's component was added or changed after `last_run` (up to `this_run`):
    /// buddy replication sends only what changed.
    pub changed: fn(EntityRef, Tick, Tick) -> bool,
    pub insert: fn(&mut EntityWorldMut, &[u8]) -> bool,
    pub remove: fn(&mut EntityWorldMut),
}

/// Everything the game registered.
#[derive(Resource, Default, Clone)]
pub struct GameRegistry {
    pub protocol: ProtocolRegistry,
    pub replicated: Vec<ComponentCodec>,
    pub migrating: Vec<MigrateCodec>,
    /// How the game's bots play (`app.bot_brain(...)`); none: they only walk their scenario.
    pub bot_brain: Option<BrainFactory>,
}

impl std::fmt::Debug for GameRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GameRegistry")
            .field("protocol", &self.protocol)
            .field("replicated", &self.replicated)
            .field("migrating", &self.migrating)
            .field("bot_brain", &self.bot_brain.is_some())
            .finish()
    }
}

/// Components that could not be carried because their encoding is over
/// `limits::COMPONENT_BYTES_MAX` (logged as errors: a game bug to fix, never silent).
#[derive(Resource, Debug, Default)]
pub struct OversizedComponents(pub u64);

fn insert_decoded<T: Component + DecodeOwned>(e: &mut EntityWorldMut, bytes: &[u8]) -> bool {
    match bitcode::decode::<T>(bytes) {
        Ok(v) => {
            e.insert(v);
            true
        }
        Err(_) => false,
    }
}

fn encode_checked<T: Encode>(name: &str, value: &T) -> Option<Vec<u8>> {
    let bytes = bitcode::encode(value);
    if bytes.len() > limits::COMPONENT_BYTES_MAX {
        tracing::error!(
            component = name,
            bytes = bytes.len(),
            max = limits::COMPONENT_BYTES_MAX,
            "component encoding over the limit: not sent (make it smaller)"
        );
        return None;
    }
    Some(bytes)
}

impl ShardApp {
    /// The game's registry (component and command ids, the protocol hashes).
    pub fn registry(&self) -> &GameRegistry {
        self.world.resource::<GameRegistry>()
    }

    /// How this game's load-test bots play: a fresh brain per bot, from the bot's seed (the
    /// `bots` subcommand of the game's binary uses it, with the game's registry).
    pub fn bot_brain(
        &mut self,
        brain: impl Fn(u64) -> Box<dyn BotBrain> + Send + Sync + 'static,
    ) -> &mut Self {
        self.world.resource_mut::<GameRegistry>().bot_brain = Some(std::sync::Arc::new(brain));
        self
    }

    /// The game as its bots see it: its client protocol and its bots' brain.
    pub fn bot_game(&self, name: &str) -> BotGame {
        let reg = self.registry();
        let mut game = BotGame::demo();
        game.name = name.to_owned();
        game.protocol = reg.protocol.clone();
        if let Some(brain) = &reg.bot_brain {
            game.brain = brain.clone();
        }
        game
    }

    /// The hash clients must present in `Hello`.
    pub fn protocol_hash(&self) -> u64 {
        self.registry().protocol.client_hash()
    }

    /// The hash shards of one cluster must share (checked on every link).
    /// It covers the game's `[game]` section of the world config too: shards running different
    /// game rules refuse each other's links.
    pub fn cluster_hash(&self) -> u64 {
        let game = &self.world.resource::<super::resources::Config>().0.game;
        let text = toml::to_string(game).unwrap_or_default();
        let mut h = self.registry().protocol.cluster_hash();
        for b in text.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    }

    fn registered<E: std::fmt::Display>(result: Result<u8, E>, what: &str) -> u8 {
        result.unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// Replicate component `T` to clients and neighbours: registered in the protocol (part of
    /// both hashes), re-encoded whenever it changes on an entity this shard owns, its removal
    /// replicated, held as a typed `T` on neighbours' proxies, carried on handoff.
    ///
    /// # Panics
    /// If `T::NAME` is already registered: a bug in the app's setup, found at start.
    pub fn replicate<T: Replicated>(&mut self) -> &mut Self {
        let what = format!("replicate::<{}>()", std::any::type_name::<T>());
        let kind = Self::registered(
            self.world
                .resource_mut::<GameRegistry>()
                .protocol
                .register(T::NAME),
            &what,
        );
        self.world
            .resource_mut::<GameRegistry>()
            .replicated
            .push(ComponentCodec {
                kind,
                name: T::NAME,
                insert: insert_decoded::<T>,
                remove: |e| {
                    e.remove::<T>();
                },
            });
        // Checked here, where it is encoded, so an oversized value is left out of this entity's
        // proxies and handoffs instead of making a neighbour refuse a whole batch of them.
        let cache =
            move |mut q: Query<(&T, &mut ReplicatedComponents), (Changed<T>, Without<Proxy>)>,
                  mut oversized: ResMut<OversizedComponents>| {
                for (value, mut cache) in &mut q {
                    match encode_checked(T::NAME, value) {
                        Some(bytes) => cache.set(kind, bytes),
                        None => {
                            oversized.0 += 1;
                            cache.remove(kind);
                        }
                    }
                }
            };
        let removals = move |mut removed: RemovedComponents<T>,
                             mut q: Query<
            &mut ReplicatedComponents,
            (Without<T>, Without<Proxy>),
        >| {
            for e in removed.read() {
                if let Ok(mut cache) = q.get_mut(e) {
                    cache.remove(kind);
                }
            }
        };
        self.add_systems_raw((cache, removals).chain().in_set(ReplicationCache));
        // Proxies are read-only; catching a write costs a query per tick, so only in debug.
        #[cfg(debug_assertions)]
        self.add_systems(ShardSystems::Ownership, forbid_proxy_writes::<T>);
        self
    }

    /// Carry server-only component `T` to an entity's next owner (handoffs now; cell moves and
    /// failover reuse it). Never sent to clients or proxies; a proxy has no `T`.
    ///
    /// # Panics
    /// If `T::NAME` is already registered.
    pub fn migrate<T: Migrating>(&mut self) -> &mut Self {
        let what = format!("migrate::<{}>()", std::any::type_name::<T>());
        let kind = Self::registered(
            self.world
                .resource_mut::<GameRegistry>()
                .protocol
                .register_migrating(T::NAME),
            &what,
        );
        self.world
            .resource_mut::<GameRegistry>()
            .migrating
            .push(MigrateCodec {
                kind,
                name: T::NAME,
                encode: |e| e.get::<T>().and_then(|v| encode_checked(T::NAME, v)),
                changed: |e, last, this| {
                    e.get_change_ticks::<T>()
                        .is_some_and(|t| t.is_changed(last, this))
                },
                insert: insert_decoded::<T>,
                remove: |e| {
                    e.remove::<T>();
                },
            });
        self
    }

    /// Register command `T`, sent by game systems with `GameCommands::send` to any entity,
    /// owned here or a neighbour's proxy, and handled on the owner by a system reading
    /// `Res<Delivered<T>>` in `Simulate`.
    ///
    /// # Panics
    /// If `T::NAME` is already registered.
    pub fn command<T: GameCommand>(&mut self) -> &mut Self {
        self.register_command::<T>(false)
    }

    /// Like [`Self::command`], and clients may send it too (as `ClientControl::Command`): it
    /// is then addressed to, and sent on behalf of, the client's own avatar. Handlers check
    /// what a player may do (range, cooldown); the framework checks who the player is.
    pub fn client_command<T: GameCommand>(&mut self) -> &mut Self {
        self.register_command::<T>(true)
    }

    fn register_command<T: GameCommand>(&mut self, from_clients: bool) -> &mut Self {
        let what = format!("command::<{}>()", std::any::type_name::<T>());
        let kind = Self::registered(
            self.world
                .resource_mut::<GameRegistry>()
                .protocol
                .register_command(T::NAME, from_clients),
            &what,
        );
        self.world
            .resource_mut::<GameCommands>()
            .register::<T>(kind);
        self.world.insert_resource(Delivered::<T>::default());
        let decode = move |raw: Res<DeliveredRaw>, mut out: ResMut<Delivered<T>>| {
            out.refill(&raw, kind);
        };
        self.add_systems_raw(decode.in_set(CommandSystems::Decode));
        self
    }
}

/// Set the registered replicated components on `entity` from `blobs`: decode the ones present,
/// remove the ones absent (the owner removed them). Used when a proxy is created or its
/// components change, and when a handoff promotes an entity. Bytes that do not decode are
/// skipped and logged: a peer with the same cluster hash never sends them.
pub fn apply_replicated(world: &mut World, entity: Entity, blobs: &[ComponentBlob]) {
    let codecs = world.resource::<GameRegistry>().replicated.clone();
    let mut e = world.entity_mut(entity);
    for c in &codecs {
        match blobs.iter().find(|b| b.kind == c.kind) {
            Some(b) => {
                if !(c.insert)(&mut e, &b.bytes) {
                    tracing::warn!(component = c.name, "replicated component did not decode");
                }
            }
            None => (c.remove)(&mut e),
        }
    }
}

/// Every migrating component `entity` has, encoded for its next owner.
pub fn encode_migrating(world: &World, entity: Entity) -> Vec<ComponentBlob> {
    let reg = world.resource::<GameRegistry>();
    let Ok(e) = world.get_entity(entity) else {
        return Vec::new();
    };
    reg.migrating
        .iter()
        .filter_map(|c| {
            (c.encode)(e).map(|bytes| ComponentBlob {
                kind: c.kind,
                bytes,
            })
        })
        .collect()
}

/// Whether any migrating component of `entity` was added or changed after `last_run`.
pub fn migrating_changed(world: &World, entity: Entity, last_run: Tick, this_run: Tick) -> bool {
    let reg = world.resource::<GameRegistry>();
    let Ok(e) = world.get_entity(entity) else {
        return false;
    };
    reg.migrating
        .iter()
        .any(|c| (c.changed)(e, last_run, this_run))
}

/// Insert the migrating components a handoff carried.
pub fn insert_migrating(world: &mut World, entity: Entity, blobs: &[ComponentBlob]) {
    let codecs = world.resource::<GameRegistry>().migrating.clone();
    let mut e = world.entity_mut(entity);
    for b in blobs {
        let ok = codecs
            .iter()
            .find(|c| c.kind == b.kind)
            .is_some_and(|c| (c.insert)(&mut e, &b.bytes));
        if !ok {
            tracing::warn!(kind = b.kind, "migrating component did not decode; skipped");
        }
    }
}

/// Take every migrating component off `entity` (it became a proxy: its state lives on the
/// new owner now).
pub fn remove_migrating(world: &mut World, entity: Entity) {
    let codecs = world.resource::<GameRegistry>().migrating.clone();
    let mut e = world.entity_mut(entity);
    for c in &codecs {
        (c.remove)(&mut e);
    }
}

/// `Ownership`, debug builds only: proxies are read-only. A system that wrote a proxy's `T`
/// (instead of sending a command to its owner) fails here, loudly, with `error[Z0001]`
/// (`docs/errors/Z0001.md`). The link's own writes (before `ProxyApplyTick`) and spawns are not
/// writes.
pub fn forbid_proxy_writes<T: Component>(
    applied: Res<ProxyApplyTick>,
    proxies: Query<(&Networked, &Proxy, Ref<T>)>,
) {
    let Some(at) = applied.0 else { return };
    for (net, proxy, value) in &proxies {
        if value.is_changed_after(at) && value.added() != value.last_changed() {
            panic!(
                "error[Z0001]: a system wrote the {} of {}, a read-only proxy of shard {}'s \
                 entity; send the owner a command instead. See docs/errors/Z0001.md",
                std::any::type_name::<T>(),
                net.0,
                proxy.owner.0
            );
        }
    }
}

/// Position is replicated by the frame itself (not through the registry): guard it the same way.
#[cfg(debug_assertions)]
pub(crate) fn guard_positions(app: &mut ShardApp) {
    app.add_systems(ShardSystems::Ownership, forbid_proxy_writes::<Position>);
}
