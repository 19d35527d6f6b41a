//! Clients that come back by themselves: resume tickets out, resumes in.
//!
//! Every `Welcome` comes with a resume ticket ([`zonescaler_shared::resume`]) for the avatar the
//! client plays, refreshed every `RESUME_TICKET_REFRESH_MS`, with a few other live shards to
//! present it to. When the client's shard dies, the master gives its cells to another shard,
//! which promotes its copy of the avatar as one waiting for its client (`AwaitingClient`, as after
//! a handoff) and is where the directory seats the account. The client connects to any live shard
//! with the ticket in `Hello::resume`:
//!
//! - the shard holds the avatar waiting: it binds the connection to it, as a redirect token would;
//! - it knows where the avatar went (a proxy, a handoff, a forward): it redirects there;
//! - otherwise it asks the master where the account is seated ([`MasterRequest::Locate`]) and
//!   redirects there with an ordinary redirect token; while the seat is still on the shard that
//!   issued the ticket (not declared dead yet) or the avatar is not promoted yet, the client is
//!   told `resume_later`; when the account is seated nowhere, `resume_failed` (log in anew).
//!
//! A ticket only ever binds an avatar that waits for its client: a playing avatar cannot be taken
//! from its connection with a copied ticket.

use super::login::{Found, Login, bind, find_avatar, follow, redirect};
use super::{ClientState, Clients, Closing, ClusterDirectory, Phase, Refusal, send_control};
use crate::core::resources::{Outbox, TickClock};
use crate::core::space::Space;
use bevy_ecs::prelude::*;
use zonescaler_shared::protocol::{ErrorCode, MasterRequest, ServerControl};
use zonescaler_shared::resume::RESUME_TICKET_REFRESH_MS;
use zonescaler_shared::token::GrantKind;
use zonescaler_shared::{ConnId, NetId, ShardId, limits};

/// A `Hello` with a resume ticket: bind, redirect, or ask the master.
pub fn on_resume(
    conn: ConnId,
    ticket: &[u8],
    closing: &mut Closing,
    login: &mut Login,
) -> Result<(), Refusal> {
    let t = login
        .directory
        .resume
        .verify(ticket, login.clock.now_ms)
        .map_err(|e| (ErrorCode::ResumeFailed, e.to_string()))?;
    if let Some(c) = closing.clients.0.get_mut(&conn) {
        c.name.clone_from(&t.account);
    }
    match find_avatar(t.avatar, login) {
        Found::Nothing if login.cluster.0 => {
            if super::login::pending_logins(closing) >= limits::LOGINS_PENDING_MAX {
                return Err((
                    ErrorCode::ResumeLater,
                    format!(
                        "{} logins are waiting for the master already",
                        limits::LOGINS_PENDING_MAX
                    ),
                ));
            }
            login.master.0.push(MasterRequest::Locate {
                account: t.account,
                session: conn.0,
            });
            if let Some(c) = closing.clients.0.get_mut(&conn) {
                c.phase = Phase::AwaitLocate {
                    since_tick: login.clock.tick.0,
                    avatar: t.avatar,
                    from: t.shard,
                };
            }
            Ok(())
        }
        Found::Nothing => Err((
            ErrorCode::ResumeFailed,
            format!("avatar {} is not on this shard", t.avatar),
        )),
        found => take(conn, &t.account, t.avatar, found, closing, login),
    }
}

/// The avatar is here or this shard knows where it went: bind or redirect the client.
fn take(
    conn: ConnId,
    account: &str,
    id: NetId,
    found: Found,
    closing: &mut Closing,
    login: &mut Login,
) -> Result<(), Refusal> {
    match found {
        Found::Waiting(w) if w.name == account => {
            bind(conn, id, w, closing, login);
            Ok(())
        }
        Found::Waiting(_) => Err((
            ErrorCode::ResumeFailed,
            format!("avatar {id} is not account {account:?}'s"),
        )),
        Found::Moved(to) => follow(conn, id, to, ErrorCode::ResumeFailed, closing, login),
        Found::Played => Err((
            ErrorCode::ResumeFailed,
            format!("avatar {id} is played by another connection"),
        )),
        Found::Nothing => Err((
            ErrorCode::ResumeLater,
            format!("avatar {id} is not promoted here yet"),
        )),
    }
}

/// Where a resume goes once the master said where the account is seated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// Seated on this shard: the avatar is here, or is about to be.
    Here,
    /// Seated on another shard, not the one the client lost: send the client there.
    To(ShardId),
    /// Still seated on the shard the client lost: it has not been declared dead yet.
    NotFailedOver(ShardId),
    /// Seated nowhere: the player left, or its avatar was lost.
    Gone,
}

/// `me` was asked to resume a client whose ticket `from` issued; the master seats it on `seat`,
/// a shard that reports (`live`) or has fallen silent.
///
/// A client seated on its ticket's issuer either lost that shard (silent, not declared dead
/// yet: later) or was on its way from it to another that died (a live seat: the issuer knows
/// where it sent the avatar, and so where that shard's adopter has it now).
fn route(me: ShardId, from: ShardId, seat: Option<ShardId>, live: bool) -> Route {
    match seat {
        None => Route::Gone,
        Some(s) if s == me => Route::Here,
        Some(s) if s == from && !live => Route::NotFailedOver(s),
        Some(s) => Route::To(s),
    }
}

/// The master's answer to the `Locate` of `conn`'s resume.
pub fn on_located(
    conn: ConnId,
    account: &str,
    seat: Option<ShardId>,
    live: bool,
    closing: &mut Closing,
    login: &mut Login,
) {
    let (avatar, from) = match closing.clients.0.get(&conn) {
        Some(c) if c.name == account => match c.phase {
            Phase::AwaitLocate { avatar, from, .. } => (avatar, from),
            _ => return,
        },
        // That resume is gone (the client left while waiting).
        _ => return,
    };
    let outcome = match route(login.space.me, from, seat, live) {
        Route::Here => {
            let found = find_avatar(avatar, login);
            take(conn, account, avatar, found, closing, login)
        }
        Route::To(s) => {
            redirect(conn, s, GrantKind::Avatar(avatar), closing, login);
            Ok(())
        }
        Route::NotFailedOver(s) => Err((
            ErrorCode::ResumeLater,
            format!(
                "shard {} still holds account {account:?}: not failed over yet",
                s.0
            ),
        )),
        Route::Gone => Err((
            ErrorCode::ResumeFailed,
            format!("account {account:?} plays nowhere any more: log in again"),
        )),
    };
    if let Err((code, reason)) = outcome {
        closing.close(conn, code, reason);
    }
}

/// Send `conn` (playing here) a fresh resume ticket and the shards to present it to: the other
/// owners of cells (a shard without cells may be leaving).
pub fn send_resume(
    conn: ConnId,
    closing: &mut Closing,
    space: &Space,
    directory: &ClusterDirectory,
    clock: &TickClock,
) {
    if let Some(c) = closing.clients.0.get_mut(&conn) {
        resume_one(conn, c, &mut closing.outbox, space, directory, clock.now_ms);
    }
}

fn resume_one(
    conn: ConnId,
    client: &mut ClientState,
    outbox: &mut Outbox,
    space: &Space,
    directory: &ClusterDirectory,
    now_ms: u64,
) {
    let Phase::Playing { id, .. } = client.phase else {
        return;
    };
    let owners = space.map.leaves().values().copied();
    let r = directory.resume(space.me, &client.name, id, owners, now_ms);
    send_control(conn, &ServerControl::Resume(r), outbox);
    client.resume_sent_ms = now_ms;
}

/// `Ownership`: clients playing here get a fresh resume ticket every
/// [`RESUME_TICKET_REFRESH_MS`], so theirs never expires while they play.
pub fn refresh_resume_tickets(
    mut clients: ResMut<Clients>,
    mut outbox: ResMut<Outbox>,
    space: Res<Space>,
    directory: Res<ClusterDirectory>,
    clock: Res<TickClock>,
) {
    let now_ms = clock.now_ms;
    for (conn, c) in &mut clients.0 {
        if now_ms.saturating_sub(c.resume_sent_ms) >= RESUME_TICKET_REFRESH_MS {
            resume_one(*conn, c, &mut outbox, &space, &directory, now_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_goes_where_the_master_seats_the_account_unless_that_is_the_lost_shard() {
        let (me, lost, adopter) = (ShardId(1), ShardId(2), ShardId(3));
        for live in [false, true] {
            assert_eq!(route(me, lost, Some(adopter), live), Route::To(adopter));
            assert_eq!(route(me, lost, Some(me), live), Route::Here);
            assert_eq!(route(me, lost, None, live), Route::Gone);
        }
        assert_eq!(
            route(me, lost, Some(lost), false),
            Route::NotFailedOver(lost),
            "never redirect a client to the silent shard it lost"
        );
    }

    /// A client on its way from its ticket's issuer to a shard that died resumes elsewhere; the
    /// directory still seats it on the issuer, which reports: the client goes there, and the
    /// issuer sends it on to the dead shard's adopter (it waited for "later" until the seat
    /// expired, 15 s, before).
    #[test]
    fn a_client_seated_on_its_live_issuer_is_sent_there() {
        let (me, issuer) = (ShardId(1), ShardId(2));
        assert_eq!(route(me, issuer, Some(issuer), true), Route::To(issuer));
    }
}
