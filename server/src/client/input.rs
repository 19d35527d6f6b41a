//! Inputs: a client names where it wants its avatar to be.
//!
//! The shard refuses targets outside the world, ignores stale sequence numbers, and (in the core's
//! movement) moves the avatar at most `max_speed_mps / tick_hz` per tick. A client drives only its
//! own avatar: an input carries no entity id at all, the shard applies it to the avatar of the
//! connection it arrived on.

use super::receive::decode_refusal;
use super::{ClientState, Clients, Phase, Refusal};
use crate::core::components::{MoveTarget, Networked, Owned};
use crate::core::movement::in_world;
use crate::core::resources::{Config, ShardOutbox, ShardStats};
use crate::interest::{Viewer, Viewers};
use bevy_ecs::prelude::*;
use bytes::Bytes;
use zonescaler_shared::codec;
use zonescaler_shared::limits;
use zonescaler_shared::protocol::{ClientDatagram, ErrorCode, ShardMessage};

/// A datagram: an input. Rate-limited per tick; the newest sequence number wins.
pub fn on_datagram(
    client: &mut ClientState,
    viewer: &mut Viewer,
    bytes: &[u8],
    tick: u64,
    stats: &mut ShardStats,
) -> Result<(), Refusal> {
    client.datagrams_this_tick += 1;
    if client.datagrams_this_tick > limits::CLIENT_DATAGRAMS_PER_TICK_MAX {
        stats.inputs_dropped_rate += 1;
        return Ok(());
    }
    let ClientDatagram::Input(input) = codec::decode_client_datagram(bytes).map_err(|e| {
        stats.decode_errors += 1;
        decode_refusal("datagram", &e)
    })?;
    if input.ack_tick > tick {
        return Err((
            ErrorCode::BadMessage,
            format!(
                "acknowledged tick {} which the shard has not reached ({tick})",
                input.ack_tick
            ),
        ));
    }
    if matches!(client.phase, Phase::AwaitHello { .. }) {
        // A datagram may overtake the Hello on its stream; it carries nothing to keep.
        return Ok(());
    }
    viewer.ack_tick = viewer.ack_tick.max(input.ack_tick);
    if input.seq > viewer.last_input_seq && client.pending_input.is_none_or(|p| input.seq > p.seq) {
        client.pending_input = Some(input);
    } else {
        stats.inputs_stale += 1;
    }
    Ok(())
}

/// `Simulate`: apply each client's newest input to its own avatar. The input of a client whose
/// avatar was handed off goes to the new owner until the client gets there; one whose avatar
/// is in transit waits (only the newest is kept) for the handoff's outcome.
pub fn apply_inputs(
    mut clients: ResMut<Clients>,
    mut viewers: ResMut<Viewers>,
    mut targets: Query<&mut MoveTarget, With<Owned>>,
    nets: Query<&Networked>,
    config: Res<Config>,
    mut stats: ResMut<ShardStats>,
    mut links: ResMut<ShardOutbox>,
) {
    for (conn, client) in clients.0.iter_mut() {
        let Some(input) = client.pending_input else {
            continue;
        };
        let Some(viewer) = viewers.0.get_mut(conn) else {
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
                viewer.last_input_seq = input.seq;
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
                viewer.last_input_seq = input.seq;
                if let Ok(net) = nets.get(view) {
                    let msg = ShardMessage::ForwardInput { id: net.0, input };
                    links.messages.push((to, Bytes::from(codec::encode(&msg))));
                    stats.inputs_forwarded += 1;
                }
            }
            _ => {
                client.pending_input = None;
                viewer.last_input_seq = input.seq;
            }
        }
    }
}
