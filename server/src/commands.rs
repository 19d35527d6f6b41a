//! Typed commands to an entity's owner: how a game system acts on an entity it does not own.
//!
//! A system calls [`GameCommands::send`] with a `NetId` and a [`CommandKind`], whether the entity
//! is owned here or is a proxy of a neighbour's. Every command goes through one path: queued for
//! the next tick's `Receive`, where [`deliver_commands`] hands it to the game (in
//! [`DeliveredCommands`]) if this shard owns the entity, or forwards it on the link to the shard
//! that does (the proxy's owner, or the target of a handoff in flight). So a command is applied by
//! the owner on its next tick, and its effect comes back to everyone through the ordinary proxy
//! updates. A command chasing an entity that keeps moving is forwarded at most
//! [`COMMAND_HOPS_MAX`] times, then dropped (counted).

use crate::components::{NetIndex, Owned};
use crate::handoff::InTransit;
use crate::proxy::{Proxy, ShardOutbox};
use bevy_ecs::prelude::*;
use bytes::Bytes;
use zonescaler_shared::NetId;
use zonescaler_shared::codec;
use zonescaler_shared::limits;
use zonescaler_shared::protocol::{CommandKind, EntityCommand, ShardMessage};

/// Forwards a command may take before it is dropped.
pub const COMMAND_HOPS_MAX: u8 = 4;

/// Commands game systems send this tick.
#[derive(Resource, Debug, Default)]
pub struct GameCommands {
    outgoing: Vec<(NetId, CommandKind)>,
    /// Commands refused because the queue was full, or dropped after too many hops or for an
    /// entity no shard here knows.
    pub dropped: u64,
}

impl GameCommands {
    /// Send `kind` to whoever owns `target`; applied on the owner's next tick.
    pub fn send(&mut self, target: NetId, kind: CommandKind) {
        if self.outgoing.len() >= limits::COMMANDS_PER_TICK_MAX {
            self.dropped += 1;
            return;
        }
        self.outgoing.push((target, kind));
    }
}

/// Commands for entities this shard owns, delivered this tick: read them in `Simulate`.
#[derive(Resource, Debug, Default)]
pub struct DeliveredCommands(pub Vec<(Entity, CommandKind)>);

/// Commands waiting for the next `Receive` (from local systems and from links).
#[derive(Resource, Debug, Default)]
pub struct CommandInbox {
    pending: Vec<EntityCommand>,
    pub dropped: u64,
}

/// A command that arrived on a link.
pub fn receive(world: &mut World, cmd: EntityCommand) {
    let mut inbox = world.resource_mut::<CommandInbox>();
    if inbox.pending.len() >= limits::COMMANDS_PER_TICK_MAX {
        inbox.dropped += 1;
    } else {
        inbox.pending.push(cmd);
    }
}

/// `Receive` (after the links): deliver or forward every pending command.
pub fn deliver_commands(
    mut inbox: ResMut<CommandInbox>,
    mut delivered: ResMut<DeliveredCommands>,
    mut links: ResMut<ShardOutbox>,
    index: Res<NetIndex>,
    owned: Query<(), With<Owned>>,
    proxies: Query<&Proxy>,
    transit: Query<&InTransit>,
) {
    delivered.0.clear();
    let inbox = &mut *inbox;
    for cmd in inbox.pending.drain(..) {
        let Some(&e) = index.0.get(&cmd.target) else {
            inbox.dropped += 1;
            continue;
        };
        if owned.contains(e) {
            delivered.0.push((e, cmd.kind));
            continue;
        }
        let next = proxies
            .get(e)
            .map(|p| p.owner)
            .or_else(|_| transit.get(e).map(|t| t.to));
        match (next, cmd.hops.checked_sub(1)) {
            (Ok(to), Some(hops)) => {
                let msg = ShardMessage::Command(EntityCommand { hops, ..cmd });
                links.messages.push((to, Bytes::from(codec::encode(&msg))));
            }
            _ => inbox.dropped += 1,
        }
    }
}

/// `Ownership`: this tick's commands from game systems go to the next tick's `Receive`.
pub fn queue_commands(mut commands: ResMut<GameCommands>, mut inbox: ResMut<CommandInbox>) {
    let commands = &mut *commands;
    for (target, kind) in commands.outgoing.drain(..) {
        if inbox.pending.len() >= limits::COMMANDS_PER_TICK_MAX {
            commands.dropped += 1;
            continue;
        }
        inbox.pending.push(EntityCommand {
            target,
            hops: COMMAND_HOPS_MAX,
            kind,
        });
    }
}
