//! Typed commands to an entity's owner: how a game system acts on an entity it does not own.
//!
//! ```
//! use bitcode::{Decode, Encode};
//! use zonescaler_server::prelude::*;
//!
//! #[derive(Component, Clone, Copy, PartialEq, Encode, Decode)]
//! struct Hp(u16);
//! impl Replicated for Hp { const NAME: &'static str = "doc.Hp"; }
//!
//! #[derive(Encode, Decode)]
//! struct Heal { hp: u16 }
//! impl GameCommand for Heal { const NAME: &'static str = "doc.Heal"; }
//!
//! // Heal whatever stands next to you, owned here or a neighbour's proxy.
//! fn cast_heals(mut out: ResMut<GameCommands>, near: Query<&Networked, With<Hp>>) {
//!     for n in &near { out.send(n.0, Heal { hp: 5 }); }
//! }
//! // On the owner, next tick.
//! fn apply_heals(heals: Res<Delivered<Heal>>, mut hp: Query<&mut Hp, OwnedOnly>) {
//!     for d in &heals {
//!         if let Ok(mut h) = hp.get_mut(d.entity) { h.0 += d.command.hp; }
//!     }
//! }
//!
//! let mut app = ShardApp::new(Default::default(), zonescaler_shared::ShardId(0));
//! app.replicate::<Hp>()
//!     .command::<Heal>()
//!     .add_systems(ShardSystems::Simulate, (cast_heals, apply_heals));
//! app.tick();
//! ```
//!
//! A system calls [`GameCommands::send`] with a `NetId`, whether the entity is owned here or is
//! a proxy of a neighbour's. Every command goes one path: queued (`Ownership`) for the next
//! tick's `Receive`, where it is delivered to the game (in [`Delivered<T>`]) if this shard owns
//! the entity, or forwarded on the link to the shard that does (the proxy's owner, or the target
//! of a handoff in flight). So a command is applied by the owner on its next tick, and its effect
//! reaches everyone through the ordinary proxy updates. A command chasing an entity that keeps
//! moving is forwarded at most [`COMMAND_HOPS_MAX`] times, then dropped (counted).

use bevy_ecs::prelude::*;
use std::any::TypeId;
use std::collections::HashMap;
use zonescaler_shared::NetId;
use zonescaler_shared::components::GameCommand;
use zonescaler_shared::limits;
use zonescaler_shared::protocol::EntityCommand;

/// Forwards a command may take before it is dropped.
pub const COMMAND_HOPS_MAX: u8 = 4;

/// The steps of command handling inside `Receive`: route every pending command to its owner
/// (or deliver it here), then decode the delivered ones into their types.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandSystems {
    Route,
    Decode,
}

/// Commands game systems send this tick.
#[derive(Resource, Debug, Default)]
pub struct GameCommands {
    outgoing: Vec<EntityCommand>,
    kinds: HashMap<TypeId, u8>,
    /// Commands refused because the queue was full, or dropped after too many hops or for an
    /// entity no shard here knows.
    pub dropped: u64,
    /// Commands of a type the game never registered (a setup bug; logged).
    pub unregistered: u64,
}

impl GameCommands {
    pub(crate) fn register<T: GameCommand>(&mut self, kind: u8) {
        self.kinds.insert(TypeId::of::<T>(), kind);
    }

    /// Send `command` to whoever owns `target`; applied on the owner's next tick.
    pub fn send<T: GameCommand>(&mut self, target: NetId, command: T) {
        self.push(target, None, &command);
    }

    /// Like [`Self::send`], naming the entity on whose behalf it is sent (the handler sees it
    /// as [`Delivery::from`]: who attacked, who picked up).
    pub fn send_from<T: GameCommand>(&mut self, from: NetId, target: NetId, command: T) {
        self.push(target, Some(from), &command);
    }

    fn push<T: GameCommand>(&mut self, target: NetId, from: Option<NetId>, command: &T) {
        let Some(&kind) = self.kinds.get(&TypeId::of::<T>()) else {
            self.unregistered += 1;
            tracing::error!(
                command = T::NAME,
                "error[Z0002]: command type was never registered with app.command::<T>(); \
                 dropped. See docs/errors/Z0002.md"
            );
            #[cfg(debug_assertions)]
            panic!(
                "error[Z0002]: command {} was sent but never registered with \
                 app.command::<T>(). See docs/errors/Z0002.md",
                T::NAME
            );
            #[cfg(not(debug_assertions))]
            return;
        };
        let bytes = bitcode::encode(command);
        if bytes.len() > limits::COMMAND_BYTES_MAX
            || self.outgoing.len() >= limits::COMMANDS_PER_TICK_MAX
        {
            self.dropped += 1;
            return;
        }
        self.outgoing.push(EntityCommand {
            target,
            hops: COMMAND_HOPS_MAX,
            kind,
            bytes,
            from,
        });
    }

    /// This tick's commands, for the queue.
    pub(crate) fn drain(&mut self) -> std::vec::Drain<'_, EntityCommand> {
        self.outgoing.drain(..)
    }
}

/// One command delivered to an entity this shard owns.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery<T> {
    /// The entity, owned here.
    pub entity: Entity,
    pub target: NetId,
    /// On whose behalf it was sent, if the sender said.
    pub from: Option<NetId>,
    pub command: T,
}

/// The commands of type `T` delivered this tick to entities this shard owns: read them in
/// `Simulate` (`Res<Delivered<T>>`). Refilled every tick.
#[derive(Resource, Debug)]
pub struct Delivered<T> {
    items: Vec<Delivery<T>>,
    /// Deliveries whose bytes did not decode as `T` (a peer with another build; logged).
    pub undecodable: u64,
}

impl<T> Default for Delivered<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            undecodable: 0,
        }
    }
}

impl<T: GameCommand> Delivered<T> {
    pub fn iter(&self) -> std::slice::Iter<'_, Delivery<T>> {
        self.items.iter()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub(crate) fn refill(&mut self, raw: &DeliveredRaw, kind: u8) {
        self.items.clear();
        for (entity, cmd) in raw.0.iter().filter(|(_, c)| c.kind == kind) {
            match bitcode::decode::<T>(&cmd.bytes) {
                Ok(command) => self.items.push(Delivery {
                    entity: *entity,
                    target: cmd.target,
                    from: cmd.from,
                    command,
                }),
                Err(_) => {
                    self.undecodable += 1;
                    tracing::warn!(command = T::NAME, "command bytes did not decode; dropped");
                }
            }
        }
    }
}

impl<'a, T: GameCommand> IntoIterator for &'a Delivered<T> {
    type Item = &'a Delivery<T>;
    type IntoIter = std::slice::Iter<'a, Delivery<T>>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Commands waiting to be routed in the next `Receive` (from local systems, clients and links).
#[derive(Resource, Debug, Default)]
pub struct CommandInbox {
    pub pending: Vec<EntityCommand>,
    pub dropped: u64,
}

impl CommandInbox {
    /// Queue `cmd` unless this tick's queue is full (then it is counted as dropped).
    pub fn push(&mut self, cmd: EntityCommand) {
        if self.pending.len() >= limits::COMMANDS_PER_TICK_MAX {
            self.dropped += 1;
        } else {
            self.pending.push(cmd);
        }
    }
}

/// This tick's commands for entities owned here, still encoded (decoded per type into
/// [`Delivered<T>`]).
#[derive(Resource, Debug, Default)]
pub struct DeliveredRaw(pub Vec<(Entity, EntityCommand)>);

/// `Ownership`: this tick's commands from game systems go to the next tick's `Receive`.
pub fn queue_commands(mut commands: ResMut<GameCommands>, mut inbox: ResMut<CommandInbox>) {
    let commands = &mut *commands;
    let mut full = 0;
    for cmd in commands.drain() {
        if inbox.pending.len() >= limits::COMMANDS_PER_TICK_MAX {
            full += 1;
            continue;
        }
        inbox.pending.push(cmd);
    }
    commands.dropped += full;
}
