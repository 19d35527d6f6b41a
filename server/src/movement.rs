//! Authority over movement: inputs become targets, targets become bounded steps.
//!
//! A client names where it wants its avatar to be; the shard refuses targets outside the world,
//! ignores stale sequence numbers, and moves the avatar at most `max_speed_mps / tick_hz` per tick.
//! A client drives only its own avatar: an input carries no entity id at all, the shard applies it
//! to the avatar of the connection it arrived on.

use crate::components::{MoveTarget, Networked, Owned, Position};
use crate::net::{Clients, Phase};
use crate::proxy::ShardOutbox;
use crate::resources::{Config, ShardStats, TickClock};
use bevy_ecs::prelude::*;
use bytes::Bytes;
use glam::Vec3;
use zonescaler_shared::codec;
use zonescaler_shared::config::WorldConfig;
use zonescaler_shared::limits;
use zonescaler_shared::protocol::ShardMessage;

/// Is `p` a position inside the world rectangle (and a sane height)?
pub fn in_world(cfg: &WorldConfig, p: Vec3) -> bool {
    let w = &cfg.world;
    p.is_finite()
        && (w.min_x..=w.max_x).contains(&p.x)
        && (w.min_z..=w.max_z).contains(&p.z)
        && p.y.abs() <= limits::WORLD_EXTENT_M_MAX
}

/// `Simulate`: apply each client's newest input to its own avatar. The input of a client whose
/// avatar was handed off goes to the new owner until the client gets there; one whose avatar
/// is in transit waits (only the newest is kept) for the handoff's outcome.
pub fn apply_inputs(
    mut clients: ResMut<Clients>,
    mut targets: Query<&mut MoveTarget, With<Owned>>,
    nets: Query<&Networked>,
    config: Res<Config>,
    mut stats: ResMut<ShardStats>,
    mut links: ResMut<ShardOutbox>,
) {
    for client in clients.0.values_mut() {
        let Some(input) = client.pending_input else {
            continue;
        };
        let target = input.target.to_vec3();
        match client.phase {
            Phase::Playing { avatar, .. } => {
                let Ok(mut t) = targets.get_mut(avatar) else {
                    // In transit: keep it for whoever owns the avatar next.
                    continue;
                };
                client.pending_input = None;
                client.last_input_seq = input.seq;
                if !in_world(&config.0, target) {
                    stats.inputs_refused_out_of_world += 1;
                    continue;
                }
                t.target = target;
                stats.inputs_applied += 1;
            }
            Phase::Redirected {
                avatar: Some(view),
                to,
            } => {
                client.pending_input = None;
                client.last_input_seq = input.seq;
                if let Ok(net) = nets.get(view) {
                    let msg = ShardMessage::ForwardInput { id: net.0, input };
                    links.messages.push((to, Bytes::from(codec::encode(&msg))));
                    stats.inputs_forwarded += 1;
                }
            }
            _ => {
                client.pending_input = None;
                client.last_input_seq = input.seq;
            }
        }
    }
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
