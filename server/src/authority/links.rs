//! `Receive` for shard links: every message from a neighbour, in arrival order.

use super::handoff;
use super::proxy::{ProxyHints, ProxyParts, refresh_proxy, remove_proxy, upsert_proxy};
use crate::core::resources::{Membership, ProxyApplyTick, ShardInbox};
use bevy_ecs::prelude::*;
use tracing::warn;
use zonescaler_shared::ShardId;
use zonescaler_shared::codec;
use zonescaler_shared::protocol::{ProxyBatch, ShardMessage};

/// `Receive`: apply every shard-link message in arrival order (links are ordered, and a handoff
/// answer must be applied before a proxy update sent after it). Exclusive, so each message sees
/// the world as the previous one left it: a proxy spawned by one message is there for the next.
pub fn receive_shard_messages(
    world: &mut World,
    proxies: &mut QueryState<ProxyParts>,
    mut hints: Local<ProxyHints>,
) {
    let hints = &mut *hints;
    let this_run = world.change_tick();
    world.resource_mut::<ProxyApplyTick>().0 = Some(this_run);
    let messages = std::mem::take(&mut world.resource_mut::<ShardInbox>().messages);
    for (from, bytes) in messages {
        // A shard declared dead is fenced and its entities are its adopter's: what it sent
        // before it died and this shard had not applied yet (this shard was paused, or both
        // came in one tick) would bring back proxies the map push just removed.
        let dead = (world.get_resource::<Membership>()).is_some_and(|m| m.dead.contains_key(&from));
        if dead {
            world.resource_mut::<ShardInbox>().stale += 1;
            continue;
        }
        let msg = match codec::decode_shard_message(&bytes) {
            Ok(m) => m,
            Err(e) => {
                world.resource_mut::<ShardInbox>().refused += 1;
                warn!(from = from.0, error = %e, "shard message refused");
                continue;
            }
        };
        let stale = match msg {
            // A proxy batch is the owner's word on its own entities, whatever map it was sent
            // under: generations order owners (a former owner's late update or remove is
            // refused), so a batch that crosses a map change on the way still applies. Dropping
            // it would lose its removes for good, leaving a stale proxy behind.
            ShardMessage::ProxyBatch(batch) => apply_batch(world, proxies, hints, from, batch),
            other => u64::from(!handoff::on_message(world, from, other)),
        };
        if stale > 0 {
            world.resource_mut::<ShardInbox>().stale += stale;
        }
    }
}

/// One neighbour's proxy batch: upserts, then removes. The entries it refused as stale.
fn apply_batch(
    world: &mut World,
    proxies: &mut QueryState<ProxyParts>,
    hints: &mut ProxyHints,
    from: ShardId,
    batch: ProxyBatch,
) -> u64 {
    let mut stale = 0;
    for u in batch.upserts {
        if let Some(u) = refresh_proxy(world, proxies, hints, from, u) {
            handoff::taken_meanwhile(world, u.id, u.generation);
            stale += u64::from(!upsert_proxy(world, from, u));
        }
    }
    for (id, generation) in batch.removes {
        hints.0.remove(&id);
        stale += u64::from(!remove_proxy(world, from, id, generation));
    }
    stale
}
