//! Logins: `Hello` → who the client is → may that account play → where its avatar is.
//!
//! 1. The protocol hash must be the game's client hash.
//! 2. A redirect token (from another shard of the cluster) binds the client to the avatar it
//!    names (after a handoff) or spawns it where the token says (a login that came in through
//!    another shard, whose account was claimed there). Nothing else is asked. A resume ticket
//!    (the client lost its shard) binds it to its avatar here or sends it where the avatar is
//!    ([`super::resume`]).
//! 3. Otherwise the account comes from the login ticket, checked against the configured login
//!    keys (a server without keys takes the name in `Hello`: development only), and so does the
//!    spawn point, if the game's account service chose one.
//! 4. The account is claimed: with the master in a cluster (one session per account, cluster
//!    wide; the answer comes back as a `MasterNotice::Claim`), in [`Sessions`] on a lone shard.
//!    A second session takes over or is refused, by `[login] duplicate`.
//! 5. Admission ([`super::admission`]): the login gets a seat on the shard that owns its spawn
//!    point, or on another with room (then it starts at a point of that shard), or waits in the
//!    login queue (`Phase::Queued`, the client told its place as it moves up), or is refused
//!    with `no_room`. The master decides in a cluster (with the claim), this shard alone.
//! 6. The avatar spawns at the spawn point, or the login is redirected, with a signed spawn
//!    grant, to the shard that owns that point.

use super::admission::{LoginQueue, Verdict, Waiter};
use super::directory::{ClusterDirectory, LoginPolicy};
use super::{Closing, Phase, Refusal, send_control};
use crate::core::components::{
    Avatar, AwaitingClient, InTransit, MoveTarget, NetIndex, Networked, Owned, Player, Position,
    Proxy,
};
use crate::core::registry::GameRegistry;
use crate::core::resources::{
    ClusterMode, Config, IdAllocator, Logins, MasterOutbox, ShardRng, TickClock,
};
use crate::core::space::Space;
use bevy_ecs::prelude::*;
use bevy_ecs::system::SystemParam;
use glam::Vec3;
use std::collections::BTreeMap;
use tracing::info;
use zonescaler_shared::config::DuplicateLogin;
use zonescaler_shared::protocol::{
    ClaimOutcome, ErrorCode, Hello, MasterRequest, QueuePlace, ServerControl, Welcome,
};
use zonescaler_shared::quant::QPos;
use zonescaler_shared::token::GrantKind;
use zonescaler_shared::{ConnId, NetId, ShardId, limits};

/// What a login needs besides the connection.
#[derive(SystemParam)]
pub struct Login<'w, 's> {
    pub clock: Res<'w, TickClock>,
    config: Res<'w, Config>,
    pub(super) space: Res<'w, Space>,
    registry: Res<'w, GameRegistry>,
    pub(super) directory: Res<'w, ClusterDirectory>,
    policy: Res<'w, LoginPolicy>,
    pub(super) cluster: Res<'w, ClusterMode>,
    ids: ResMut<'w, IdAllocator>,
    rng: ResMut<'w, ShardRng>,
    pub(super) master: ResMut<'w, MasterOutbox>,
    logins: ResMut<'w, Logins>,
    /// This shard's own login queue (used alone; in a cluster the master's decides).
    queue: ResMut<'w, LoginQueue>,
    index: Res<'w, NetIndex>,
    /// Where avatars went on before their client came (the client is sent after them).
    forwards: Res<'w, crate::core::resources::Forwards>,
    /// Members and the dead (where what went to a dead shard is now).
    pub(super) membership: Option<Res<'w, crate::core::resources::Membership>>,
    entities: Query<
        'w,
        's,
        (
            &'static Position,
            Option<&'static AwaitingClient>,
            Option<&'static Proxy>,
            Option<&'static InTransit>,
        ),
    >,
    /// Handed-off avatars bound this tick (the binding is deferred, so a second token for the
    /// same avatar in the same tick must see it taken).
    claimed: Local<'s, Vec<Entity>>,
    claimed_tick: Local<'s, u64>,
}

/// A `Hello`: only once, only with the game's protocol hash.
pub fn on_hello(
    conn: ConnId,
    hello: Hello,
    closing: &mut Closing,
    login: &mut Login,
) -> Result<(), Refusal> {
    let Some(client) = closing.clients.0.get(&conn) else {
        return Ok(());
    };
    if !matches!(client.phase, Phase::AwaitHello { .. }) {
        return Err((
            ErrorCode::Unexpected,
            "second Hello on one connection".into(),
        ));
    }
    let expected = login.registry.protocol.client_hash();
    if hello.protocol_hash != expected {
        return Err((
            ErrorCode::ProtocolMismatch,
            format!(
                "protocol hash {:016x}, shard has {expected:016x}",
                hello.protocol_hash
            ),
        ));
    }
    if let Some(token) = &hello.token {
        return on_token(conn, token, closing, login);
    }
    if let Some(ticket) = &hello.resume {
        return super::resume::on_resume(conn, ticket, closing, login);
    }
    let (account, spawn) = identify(&hello, login)?;
    if let Some(c) = closing.clients.0.get_mut(&conn) {
        c.name = account.clone();
    }
    if login.cluster.0 {
        if !may_wait_for_claim(closing) {
            return Err((
                ErrorCode::ServerFull,
                format!(
                    "{} logins are waiting for the master already",
                    limits::LOGINS_PENDING_MAX
                ),
            ));
        }
        let want = wanted_shard(spawn, login);
        login.master.0.push(MasterRequest::Claim {
            account,
            session: conn.0,
            want,
        });
        if let Some(c) = closing.clients.0.get_mut(&conn) {
            c.phase = Phase::AwaitClaim {
                since_tick: login.clock.tick.0,
                spawn,
            };
        }
        return Ok(());
    }
    claim_locally(conn, &account, login.policy.duplicate, closing)?;
    admit_alone(conn, account, spawn, closing, login)
}

/// A lone shard's admission of a claimed login: play, wait, or no room.
fn admit_alone(
    conn: ConnId,
    account: String,
    spawn: Option<QPos>,
    closing: &mut Closing,
    login: &mut Login,
) -> Result<(), Refusal> {
    let me = login.space.me;
    let w = Waiter {
        gateway: me,
        session: conn.0,
        account,
        want: me,
    };
    let seats = BTreeMap::from([(me, players_here(closing))]);
    match login.queue.0.ask(w, &seats) {
        Verdict::Play(_) => finish_login(conn, spawn, None, closing, login),
        Verdict::Queued(place) => {
            queue(conn, spawn, place, closing);
            Ok(())
        }
        Verdict::NoRoom(why) => Err((ErrorCode::NoRoom, why.to_string())),
    }
}

/// Players on this shard: the seats a lone shard counts against its cap.
fn players_here(closing: &Closing) -> u32 {
    let n = closing
        .clients
        .0
        .values()
        .filter(|c| matches!(c.phase, Phase::Playing { .. }))
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// `conn` waits for a seat at `place`: tell it so.
fn queue(conn: ConnId, spawn: Option<QPos>, place: QueuePlace, closing: &mut Closing) {
    if let Some(c) = closing.clients.0.get_mut(&conn) {
        c.phase = Phase::Queued { spawn };
        send_control(conn, &ServerControl::Queued(place), &mut closing.outbox);
    }
}

/// The shard that owns where a login wants to start (this one when the shard picks the point).
fn wanted_shard(hint: Option<QPos>, login: &Login) -> ShardId {
    let w = &login.config.0.world;
    hint.map(|q| q.to_vec3())
        .filter(|p| p.is_finite())
        .and_then(|p| {
            let at = [p.x.clamp(w.min_x, w.max_x), p.z.clamp(w.min_z, w.max_z)];
            login.space.map.owner_at(at)
        })
        .unwrap_or(login.space.me)
}

/// `Receive`, after the master's notices: logins that ended while waiting are let go (by the
/// master in a cluster, from this shard's own queue alone); alone, waiting logins are seated as
/// players leave, and told when their place moves.
pub fn admit_waiting(mut closing: Closing, mut login: Login) {
    let ended = std::mem::take(&mut closing.ended.0);
    if login.cluster.0 {
        for (conn, account) in ended {
            let session = conn.0;
            login
                .master
                .0
                .push(MasterRequest::Release { account, session });
        }
        return;
    }
    let me = login.space.me;
    for (conn, _) in ended {
        login.queue.0.leave(me, conn.0);
    }
    if login.queue.0.waiting() == 0 {
        return;
    }
    let mut seats = BTreeMap::from([(me, players_here(&closing))]);
    let round = login.queue.0.admit(&mut seats);
    for (w, _) in round.seated {
        let conn = ConnId(w.session);
        let spawn = match closing.clients.0.get(&conn).map(|c| &c.phase) {
            Some(Phase::Queued { spawn }) => *spawn,
            _ => continue,
        };
        if let Err((code, reason)) = finish_login(conn, spawn, None, &mut closing, &mut login) {
            closing.close(conn, code, reason);
        }
    }
    for (w, place) in round.moved {
        send_control(
            ConnId(w.session),
            &ServerControl::Queued(place),
            &mut closing.outbox,
        );
    }
}

/// The account and spawn point of a login without a token: from the ticket when the server has
/// login keys, from `Hello.name` when it has none.
fn identify(hello: &Hello, login: &Login) -> Result<(String, Option<QPos>), Refusal> {
    let keys = &login.policy.keys;
    if keys.is_empty() {
        if hello.name.is_empty() {
            return Err((ErrorCode::BadMessage, "Hello without a name".into()));
        }
        return Ok((hello.name.clone(), None));
    }
    let Some(ticket) = &hello.ticket else {
        return Err((
            ErrorCode::BadTicket,
            "this server needs a login ticket from the game's account service".into(),
        ));
    };
    let t = keys
        .verify(ticket, login.clock.now_ms)
        .map_err(|e| (ErrorCode::BadTicket, e.to_string()))?;
    Ok((t.account, t.spawn))
}

/// The lone shard's rule for a second session of one account.
fn claim_locally(
    conn: ConnId,
    account: &str,
    rule: DuplicateLogin,
    closing: &mut Closing,
) -> Result<(), Refusal> {
    if let Some(&old) = closing.sessions.0.get(account)
        && old != conn
    {
        match rule {
            DuplicateLogin::Refuse => {
                return Err((
                    ErrorCode::AccountInUse,
                    format!("account {account:?} is already playing"),
                ));
            }
            DuplicateLogin::Takeover => closing.close(
                old,
                ErrorCode::SessionTakenOver,
                format!("account {account:?} logged in again elsewhere"),
            ),
        }
    }
    closing.sessions.0.insert(account.to_owned(), conn);
    Ok(())
}

/// The master answered the claim of `conn`'s login: play on the shard it was given, wait in the
/// login queue (again when its place moves), or be refused.
pub fn on_claim_answer(
    conn: ConnId,
    account: &str,
    outcome: ClaimOutcome,
    closing: &mut Closing,
    login: &mut Login,
) {
    let spawn = match closing.clients.0.get(&conn) {
        Some(c) if c.name == account => match &c.phase {
            Phase::AwaitClaim { spawn, .. } | Phase::Queued { spawn } => *spawn,
            _ => return,
        },
        // That login is gone (the client left while waiting): `forget` released it.
        _ => return,
    };
    let outcome = match outcome {
        ClaimOutcome::Granted { shard } | ClaimOutcome::TookOver { shard } => {
            finish_login(conn, spawn, Some(shard), closing, login)
        }
        ClaimOutcome::Queued(place) => {
            queue(conn, spawn, place, closing);
            Ok(())
        }
        ClaimOutcome::InUse => Err((
            ErrorCode::AccountInUse,
            format!("account {account:?} is already playing"),
        )),
        ClaimOutcome::NoRoom(why) => Err((ErrorCode::NoRoom, why.to_string())),
    };
    if let Err((code, reason)) = outcome {
        closing.close(conn, code, reason);
    }
}

/// Where a new player starts: the ticket's point clamped to the world, else a random point this
/// shard owns.
fn spawn_point(hint: Option<QPos>, login: &mut Login) -> Vec3 {
    let w = &login.config.0.world;
    match hint.map(|q| q.to_vec3()).filter(|p| p.is_finite()) {
        Some(p) => Vec3::new(
            p.x.clamp(w.min_x, w.max_x),
            0.0,
            p.z.clamp(w.min_z, w.max_z),
        ),
        None => login
            .space
            .random_owned_point(&mut login.rng.0)
            .unwrap_or_else(|| {
                Vec3::new(
                    login.rng.0.range_f32(w.min_x, w.max_x),
                    0.0,
                    login.rng.0.range_f32(w.min_z, w.max_z),
                )
            }),
    }
}

/// Spawn the avatar of a claimed login, or send it to the shard that owns its spawn point.
/// `play_on`: the shard admission gave it; when that shard does not own the spawn point, the
/// player starts at a point it does own.
fn finish_login(
    conn: ConnId,
    hint: Option<QPos>,
    play_on: Option<ShardId>,
    closing: &mut Closing,
    login: &mut Login,
) -> Result<(), Refusal> {
    let mut spawn = spawn_point(hint, login);
    if let Some(shard) = play_on
        && login.space.map.owner_at([spawn.x, spawn.z]) != Some(shard)
        && let Some(p) = login.space.random_point_of(shard, &mut login.rng.0)
    {
        spawn = p;
    }
    let Some(account) = closing.clients.0.get(&conn).map(|c| c.name.clone()) else {
        return Ok(());
    };
    if let Some(owner) = login.space.map.owner_at([spawn.x, spawn.z])
        && owner != login.space.me
    {
        let what = GrantKind::Spawn {
            name: account,
            spawn: QPos::quantize(spawn),
        };
        redirect(conn, owner, what, closing, login);
        return Ok(());
    }
    let id = login.ids.allocate();
    let speed = login.config.0.simulation.max_speed_mps;
    let avatar = closing
        .commands
        .spawn((
            Networked(id),
            Owned,
            Position(spawn),
            MoveTarget {
                target: spawn,
                speed_mps: speed,
            },
            Avatar { conn },
            Player {
                account: account.clone(),
            },
        ))
        .id();
    login.logins.0.push((avatar, id, account));
    welcome(conn, avatar, id, spawn, closing, login);
    Ok(())
}

/// Send the client to shard `to` with a signed grant; it keeps this connection until it is
/// welcomed there.
pub(super) fn redirect(
    conn: ConnId,
    to: ShardId,
    what: GrantKind,
    closing: &mut Closing,
    login: &Login,
) {
    let r = login.directory.redirect(to, what, login.clock.now_ms);
    if let Some(c) = closing.clients.0.get_mut(&conn) {
        if matches!(c.phase, Phase::AwaitClaim { .. }) {
            // The master noted the account here; the shard it goes to reports its arrival.
            closing.players.left(&c.name);
        }
        c.phase = Phase::Redirected { avatar: None, to };
    }
    closing.stats.redirects += 1;
    send_control(conn, &ServerControl::Redirect(r), &mut closing.outbox);
}

/// The client plays `avatar`: tell it so, with the world it plays in and the cell map.
fn welcome(
    conn: ConnId,
    avatar: Entity,
    id: NetId,
    at: Vec3,
    closing: &mut Closing,
    login: &Login,
) {
    let Some(client) = closing.clients.0.get_mut(&conn) else {
        return;
    };
    client.phase = Phase::Playing { avatar, id };
    if let Some(v) = closing.viewers.0.get_mut(&conn) {
        v.view = Some(avatar);
    }
    closing.players.arrived(&client.name);
    info!(conn = conn.0, name = %client.name, avatar = %id, "client logged in");
    let cfg = &login.config.0;
    let w = &cfg.world;
    let welcome = ServerControl::Welcome(Welcome {
        avatar: id,
        spawn: QPos::quantize(at),
        tick: login.clock.tick.0,
        tick_hz: cfg.simulation.tick_hz as u16,
        protocol_hash: login.registry.protocol.client_hash(),
        bounds: [w.min_x, w.min_z, w.max_x, w.max_z],
        max_speed_mps: cfg.simulation.max_speed_mps,
        aoi_radius_m: cfg.interest.aoi_radius_m,
    });
    send_control(conn, &welcome, &mut closing.outbox);
    send_control(
        conn,
        &ServerControl::CellMap(login.space.client_view()),
        &mut closing.outbox,
    );
    super::resume::send_resume(conn, closing, &login.space, &login.directory, &login.clock);
}

/// A `Hello` with a redirect token from another shard.
fn on_token(
    conn: ConnId,
    token: &[u8],
    closing: &mut Closing,
    login: &mut Login,
) -> Result<(), Refusal> {
    let grant = login
        .directory
        .key
        .verify(token, login.space.me, login.clock.now_ms)
        .map_err(|e| (ErrorCode::BadToken, e.to_string()))?;
    let id = match grant.what {
        GrantKind::Spawn { name, spawn } => {
            if let Some(c) = closing.clients.0.get_mut(&conn) {
                c.name = name;
            }
            return finish_login(conn, Some(spawn), None, closing, login);
        }
        GrantKind::Avatar(id) => id,
    };
    match find_avatar(id, login) {
        Found::Waiting(w) => {
            bind(conn, id, w, closing, login);
            Ok(())
        }
        Found::Moved(to) => follow(conn, id, to, ErrorCode::BadToken, closing, login),
        // Not here (yet): a shard adopting a dead one's cells promotes its avatars a moment
        // after the master seats their players here, and a resume may be sent here in between.
        // The client tries its resume ticket again (the master says where the avatar is then);
        // an avatar that is gone for good ends in `ResumeFailed` that way.
        Found::Nothing => Err((
            ErrorCode::ResumeLater,
            format!("avatar {id} is not here (yet): resume with the ticket"),
        )),
        Found::Played => Err((
            ErrorCode::BadToken,
            format!("avatar {id} is not waiting for a client here"),
        )),
    }
}

/// Avatar `id` went on to shard `to` before `conn` came for it: redirect the client there, or
/// to `to`'s adopter if `to` died since (it promoted the avatar); `gone` when `to` left without
/// one.
pub(super) fn follow(
    conn: ConnId,
    id: NetId,
    to: ShardId,
    gone: ErrorCode,
    closing: &mut Closing,
    login: &mut Login,
) -> Result<(), Refusal> {
    let next = (login.membership.as_ref()).map_or(Some(to), |m| m.successor(to));
    let Some(s) = next else {
        return Err((
            gone,
            format!("avatar {id} went to shard {}, which left", to.0),
        ));
    };
    redirect(conn, s, GrantKind::Avatar(id), closing, login);
    Ok(())
}

/// An avatar here waiting for its client (handed off, or promoted after its shard died).
pub(super) struct Waiting {
    entity: Entity,
    /// The account it belongs to.
    pub name: String,
    last_input_seq: u32,
    at: Vec3,
}

/// What this shard knows of avatar `id`.
pub(super) enum Found {
    /// It is here, waiting for its client, and no connection took it this tick.
    Waiting(Waiting),
    /// It went on to this shard (handed off, frozen on its way, or forwarded) before its client
    /// came.
    Moved(ShardId),
    /// It is simulated here and a client plays it (or took it this tick).
    Played,
    /// Nothing here says where it is.
    Nothing,
}

/// Where avatar `id` is, as this shard sees it.
pub(super) fn find_avatar(id: NetId, login: &mut Login) -> Found {
    if *login.claimed_tick != login.clock.tick.0 {
        login.claimed.clear();
        *login.claimed_tick = login.clock.tick.0;
    }
    let found = login
        .index
        .0
        .get(&id)
        .and_then(|e| login.entities.get(*e).ok().map(|q| (*e, q)));
    match found {
        Some((e, (pos, Some(awaiting), _, _))) if !login.claimed.contains(&e) => {
            Found::Waiting(Waiting {
                entity: e,
                name: awaiting.name.clone(),
                last_input_seq: awaiting.last_input_seq,
                at: pos.0,
            })
        }
        // It moved on before its client arrived: follow it.
        Some((_, (_, None, Some(proxy), _))) => Found::Moved(proxy.owner),
        Some((_, (_, None, None, Some(transit)))) => Found::Moved(transit.to),
        // Gone from here (handed on, its proxy dropped): follow it while the wait lasts.
        _ if let Some(to) = login.forwards.get(id, login.clock.now_ms) => Found::Moved(to),
        Some(_) => Found::Played,
        None => Found::Nothing,
    }
}

/// Bind `conn` to the avatar `w` (id `id`) that waited for it, and welcome it.
pub(super) fn bind(conn: ConnId, id: NetId, w: Waiting, closing: &mut Closing, login: &mut Login) {
    login.claimed.push(w.entity);
    if let Some(c) = closing.clients.0.get_mut(&conn) {
        c.name = w.name;
    }
    if let Some(v) = closing.viewers.0.get_mut(&conn) {
        v.last_input_seq = w.last_input_seq;
    }
    closing
        .commands
        .entity(w.entity)
        .remove::<AwaitingClient>()
        .insert(Avatar { conn });
    closing.stats.redirected_in += 1;
    welcome(conn, w.entity, id, w.at, closing, login);
}

/// Logins waiting for the master's answer about their account (a claim, or where it is seated).
pub fn pending_logins(closing: &Closing) -> usize {
    closing
        .clients
        .0
        .values()
        .filter(|c| {
            matches!(
                c.phase,
                Phase::AwaitClaim { .. } | Phase::AwaitLocate { .. }
            )
        })
        .count()
}

/// Whether another login may wait for the master now (at most [`limits::LOGINS_PENDING_MAX`]).
fn may_wait_for_claim(closing: &Closing) -> bool {
    pending_logins(closing) < limits::LOGINS_PENDING_MAX
}
