//! Routing messages to players, and the master's answers and orders about accounts.
//!
//! See [`crate::core::messages`] for the game's side. A tell to a player on this shard is
//! delivered here at once; in a cluster every other tell and every shout goes to the master,
//! which knows where each player is; a lone shard answers everything itself.

use super::login::{Login, on_claim_answer};
use super::resume::on_located;
use super::{Clients, Closing, Phase, send_control};
use crate::core::messages::PlayerMessages;
use crate::core::resources::{ClusterMode, MasterInbox, MasterOutbox, Outbox, ShardStats};
use bevy_ecs::prelude::*;
use zonescaler_shared::ConnId;
use zonescaler_shared::protocol::{
    ErrorCode, MasterNotice, MasterRequest, MessageScope, PlayerMessage, ServerControl,
};

/// The connection that plays `account` here, if any.
fn playing(clients: &Clients, account: &str) -> Option<ConnId> {
    clients
        .0
        .iter()
        .find(|(_, c)| c.name == account && matches!(c.phase, Phase::Playing { .. }))
        .map(|(conn, _)| *conn)
}

/// The connection that plays `account` here or waits in the login queue for it, if any.
fn playing_or_waiting(clients: &Clients, account: &str) -> Option<ConnId> {
    clients
        .0
        .iter()
        .find(|(_, c)| {
            c.name == account && matches!(c.phase, Phase::Playing { .. } | Phase::Queued { .. })
        })
        .map(|(conn, _)| *conn)
}

/// Deliver `msg` to `to` (an account playing here) or, with `None`, to every player here.
fn deliver(
    to: Option<&str>,
    msg: &PlayerMessage,
    clients: &Clients,
    outbox: &mut Outbox,
    stats: &mut ShardStats,
) -> bool {
    let out = ServerControl::Message(msg.clone());
    match to {
        Some(account) => match playing(clients, account) {
            Some(conn) => {
                send_control(conn, &out, outbox);
                stats.messages_delivered += 1;
                true
            }
            None => false,
        },
        None => {
            for (conn, c) in &clients.0 {
                if matches!(c.phase, Phase::Playing { .. }) {
                    send_control(*conn, &out, outbox);
                    stats.messages_delivered += 1;
                }
            }
            true
        }
    }
}

/// What the sender of a tell to nobody is told.
pub fn nobody_online(to: &str) -> PlayerMessage {
    PlayerMessage {
        from: String::new(),
        text: format!("no player named {to} is online"),
        scope: MessageScope::Tell,
    }
}

/// `Ownership`: route this tick's messages (the game's, and players' chat from `Receive`).
pub fn route_messages(
    mut messages: ResMut<PlayerMessages>,
    mut master: ResMut<MasterOutbox>,
    cluster: Res<ClusterMode>,
    clients: Res<Clients>,
    mut outbox: ResMut<Outbox>,
    mut stats: ResMut<ShardStats>,
) {
    for (to, msg) in messages.drain() {
        match (to, cluster.0) {
            (Some(to), _) if deliver(Some(&to), &msg, &clients, &mut outbox, &mut stats) => {}
            (Some(to), true) => master.0.push(MasterRequest::Tell { to, msg }),
            (Some(to), false) => {
                // A lone shard knows every player: the recipient is not online.
                let sender = msg.from.clone();
                deliver(
                    Some(&sender),
                    &nobody_online(&to),
                    &clients,
                    &mut outbox,
                    &mut stats,
                );
            }
            (None, true) => master.0.push(MasterRequest::Shout(msg)),
            (None, false) => {
                deliver(None, &msg, &clients, &mut outbox, &mut stats);
            }
        }
    }
}

/// `Receive`, after the clients: the master's answers about logins, takeovers, deliveries.
pub fn on_master_notices(mut inbox: ResMut<MasterInbox>, mut closing: Closing, mut login: Login) {
    for notice in std::mem::take(&mut inbox.0) {
        match notice {
            MasterNotice::Claim {
                account,
                session,
                outcome,
            } => on_claim_answer(ConnId(session), &account, outcome, &mut closing, &mut login),
            MasterNotice::Located {
                account,
                session,
                shard,
                live,
            } => on_located(
                ConnId(session),
                &account,
                shard,
                live,
                &mut closing,
                &mut login,
            ),
            MasterNotice::Kick { account } => {
                if let Some(conn) = playing_or_waiting(&closing.clients, &account) {
                    closing.close(
                        conn,
                        ErrorCode::SessionTakenOver,
                        format!("account {account:?} logged in again elsewhere"),
                    );
                }
            }
            MasterNotice::Deliver { to, msg } => {
                let Closing {
                    clients,
                    outbox,
                    stats,
                    ..
                } = &mut closing;
                deliver(to.as_deref(), &msg, clients, outbox, stats);
            }
            // Maps and cell moves are the authority layer's, taken out before the links run.
            MasterNotice::Map(_)
            | MasterNotice::MoveCell { .. }
            | MasterNotice::MoveAborted { .. }
            | MasterNotice::Drained => {}
            // The ownership lease is the node's (`cluster::lease`): never pushed into the app.
            // So are the election and the master's state for successors.
            MasterNotice::Lease { .. } | MasterNotice::Fenced | MasterNotice::Standby(_) => {}
        }
    }
}
