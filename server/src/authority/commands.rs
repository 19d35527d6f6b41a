//! Routing commands to their entity's owner (the game's side is [`crate::core::commands`]).
//!
//! Every pending command is delivered here if this shard owns its entity, or forwarded on the
//! link to the shard that does: the proxy's owner, or the target of a handoff in flight. A
//! command chasing an entity that keeps moving is forwarded at most `COMMAND_HOPS_MAX` times,
//! then dropped (counted).

use crate::core::commands::{CommandInbox, DeliveredRaw};
use crate::core::components::{InTransit, NetIndex, Owned, Proxy};
use crate::core::resources::ShardOutbox;
use bevy_ecs::prelude::*;
use bytes::Bytes;
use zonescaler_shared::codec;
use zonescaler_shared::protocol::{EntityCommand, ShardMessage};

/// `Receive` (after links and clients): deliver or forward every pending command.
pub fn deliver_commands(
    mut inbox: ResMut<CommandInbox>,
    mut delivered: ResMut<DeliveredRaw>,
    mut links: ResMut<ShardOutbox>,
    index: Res<NetIndex>,
    owned: Query<(), With<Owned>>,
    proxies: Query<&Proxy>,
    transit: Query<&InTransit>,
) {
    delivered.0.clear();
    let inbox = &mut *inbox;
    let mut dropped = 0;
    for cmd in inbox.pending.drain(..) {
        let Some(&e) = index.0.get(&cmd.target) else {
            dropped += 1;
            continue;
        };
        if owned.contains(e) {
            delivered.0.push((e, cmd));
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
            _ => dropped += 1,
        }
    }
    inbox.dropped += dropped;
}
