//! The game API as a developer uses it, across a border of a two-shard world in one process:
//! typed proxies, replicated removals, server-only state that follows handoffs, commands to any
//! entity's owner, client commands acting as the client's own avatar, tells and shouts, and the
//! debug guard against writing any replicated component of a proxy.

use bitcode::{Decode, Encode};
use bytes::Bytes;
use glam::Vec3;
use std::sync::Arc;
use zonescaler_net::{NetCommand, NetEvent};
use zonescaler_server::app::GameSetup;
use zonescaler_server::cluster::LocalCluster;
use zonescaler_server::core::components::{Generation, ReplicatedComponents};
use zonescaler_server::prelude::*;
use zonescaler_shared::codec;
use zonescaler_shared::config::WorldConfig;
use zonescaler_shared::protocol::{
    ClientCommand, ClientControl, ErrorCode, Hello, MessageScope, Say, ServerControl,
};
use zonescaler_shared::{ConnId, ShardId};

#[derive(Component, Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
struct Hp(u16);
impl Replicated for Hp {
    const NAME: &'static str = "test.Hp";
}

#[derive(Component, Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
struct Tag(u32);
impl Replicated for Tag {
    const NAME: &'static str = "test.Tag";
}

/// Server-only state: must follow the entity and never reach a client or a proxy.
#[derive(Component, Clone, Debug, PartialEq, Eq, Encode, Decode)]
struct Secret {
    plan: Vec<u32>,
    seed: u64,
}
impl Migrating for Secret {
    const NAME: &'static str = "test.Secret";
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
struct Hit(u16);
impl GameCommand for Hit {
    const NAME: &'static str = "test.Hit";
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
struct Wave(u8);
impl GameCommand for Wave {
    const NAME: &'static str = "test.Wave";
}

/// What the `Wave` handler saw: (target, from, value).
#[derive(Resource, Default, Debug)]
struct Seen(Vec<(NetId, Option<NetId>, u32)>);

fn apply_hits(hits: Res<Delivered<Hit>>, mut hp: Query<&mut Hp, OwnedOnly>) {
    for d in &hits {
        if let Ok(mut h) = hp.get_mut(d.entity) {
            h.0 = h.0.saturating_sub(d.command.0);
        }
    }
}

fn record_waves(waves: Res<Delivered<Wave>>, mut seen: ResMut<Seen>) {
    for d in &waves {
        seen.0.push((d.target, d.from, u32::from(d.command.0)));
    }
}

fn game() -> GameSetup {
    Arc::new(|app: &mut ShardApp| {
        app.replicate::<Hp>()
            .replicate::<Tag>()
            .migrate::<Secret>()
            .command::<Hit>()
            .client_command::<Wave>()
            .add_systems(ShardSystems::Simulate, (apply_hits, record_waves));
        app.world.init_resource::<Seen>();
    })
}

fn cluster() -> LocalCluster {
    let mut world = WorldConfig::default();
    world.npc.count = 0;
    LocalCluster::new(world, 2, &game()).expect("two shards")
}

/// A point on shard 0's side of the border at x = 0, `d` metres from it, and the border's z.
fn near_border(c: &LocalCluster, d: f32) -> (Vec3, f32) {
    let w = c.map.grid().world();
    let mut z = w.min[1];
    while c.map.owner_at([0.0, z + 1.0]) == Some(ShardId(0)) {
        z += 1.0;
    }
    assert_eq!(c.map.owner_at([0.0, z + 2.0]), Some(ShardId(1)), "a border");
    (Vec3::new(0.0, 0.0, z - d), z)
}

/// Spawn an owned entity on shard `i`, standing at `at`, with `extra` besides.
fn spawn_owned(c: &mut LocalCluster, i: usize, at: Vec3, extra: impl Bundle) -> NetId {
    let w = &mut c.shards[i].world;
    let id = w
        .resource_mut::<zonescaler_server::core::resources::IdAllocator>()
        .allocate();
    w.spawn((
        Networked(id),
        Owned,
        Position(at),
        MoveTarget {
            target: at,
            speed_mps: 8.0,
        },
        extra,
    ));
    id
}

/// Spawn an owned entity on shard `i` with the test components.
fn spawn(c: &mut LocalCluster, i: usize, at: Vec3, secret: u64) -> NetId {
    let secret = Secret {
        plan: vec![1, 2, 3],
        seed: secret,
    };
    spawn_owned(c, i, at, (Hp(100), Tag(7), secret))
}

fn entity(c: &mut LocalCluster, i: usize, id: NetId) -> Option<Entity> {
    let w = &mut c.shards[i].world;
    w.query::<(Entity, &Networked)>()
        .iter(w)
        .find(|(_, n)| n.0 == id)
        .map(|(e, _)| e)
}

fn get<T: Component + Clone>(c: &mut LocalCluster, i: usize, id: NetId) -> Option<T> {
    let e = entity(c, i, id)?;
    c.shards[i].world.get::<T>(e).cloned()
}

#[test]
fn a_neighbours_proxy_holds_typed_replicated_components_but_no_server_state() {
    let mut c = cluster();
    let (spot, _) = near_border(&c, 10.0);
    let id = spawn(&mut c, 0, spot, 42);
    for _ in 0..3 {
        c.step();
    }
    let e1 = entity(&mut c, 1, id).expect("shard 1 mirrors the border entity");
    assert!(c.shards[1].world.get::<Proxy>(e1).is_some(), "as a proxy");
    assert_eq!(
        get::<Hp>(&mut c, 1, id),
        Some(Hp(100)),
        "read as a typed Hp"
    );
    assert_eq!(get::<Tag>(&mut c, 1, id), Some(Tag(7)));
    assert_eq!(
        get::<Secret>(&mut c, 1, id),
        None,
        "server-only state stays with the owner"
    );

    // The owner changes and removes replicated components: the proxy follows.
    c.shards[0]
        .world
        .resource_mut::<GameCommands>()
        .send(id, Hit(30));
    let e0 = entity(&mut c, 0, id).expect("owned on 0");
    c.shards[0].world.entity_mut(e0).remove::<Tag>();
    for _ in 0..4 {
        c.step();
    }
    assert_eq!(
        get::<Hp>(&mut c, 1, id),
        Some(Hp(70)),
        "the hit reached the proxy"
    );
    assert_eq!(
        get::<Tag>(&mut c, 1, id),
        None,
        "the removal was replicated"
    );
    let blobs = get::<ReplicatedComponents>(&mut c, 0, id)
        .expect("cache")
        .blobs;
    assert_eq!(blobs.len(), 1, "only Hp is left on the wire: {blobs:?}");
}

#[test]
fn server_only_state_follows_the_entity_across_the_border_unchanged() {
    let mut c = cluster();
    let (spot, z) = near_border(&c, 3.0);
    let id = spawn(&mut c, 0, spot, 0xDEAD_BEEF);
    let before = get::<Secret>(&mut c, 0, id).expect("the owner has it");
    let e0 = entity(&mut c, 0, id).expect("owned");
    c.shards[0]
        .world
        .get_mut::<MoveTarget>(e0)
        .expect("a mover")
        .target = Vec3::new(0.0, 0.0, z + 20.0);
    let mut owner = 0;
    for _ in 0..60 {
        c.step();
        if get::<Owned>(&mut c, 1, id).is_some() {
            owner = 1;
            break;
        }
    }
    assert_eq!(owner, 1, "the entity was handed to shard 1");
    assert_eq!(
        get::<Secret>(&mut c, 1, id),
        Some(before),
        "its server-only state came along"
    );
    assert_eq!(get::<Generation>(&mut c, 1, id), Some(Generation(1)));
    c.step();
    assert_eq!(
        get::<Secret>(&mut c, 0, id),
        None,
        "the old owner's proxy has none"
    );
    assert!(get::<Proxy>(&mut c, 0, id).is_some());
    assert_eq!(
        get::<Hp>(&mut c, 0, id),
        Some(Hp(100)),
        "but it reads its Hp, typed"
    );
}

fn hello(app: &ShardApp, name: &str) -> Bytes {
    Bytes::from(codec::encode(&ClientControl::Hello(Hello {
        protocol_hash: app.protocol_hash(),
        name: name.into(),
        ticket: None,
        token: None,
        resume: None,
    })))
}

fn control(conn: u64, msg: &ClientControl) -> NetEvent {
    NetEvent::Control {
        conn: ConnId(conn),
        bytes: Bytes::from(codec::encode(msg)),
    }
}

/// Log `name` in on shard `i` as connection `conn`; its avatar's id.
fn log_in(c: &mut LocalCluster, i: usize, conn: u64, name: &str) -> NetId {
    c.shards[i].push_event(NetEvent::Connected {
        conn: ConnId(conn),
        max_datagram_bytes: 1_200,
    });
    let h = hello(&c.shards[i], name);
    c.shards[i].push_event(NetEvent::Control {
        conn: ConnId(conn),
        bytes: h,
    });
    for _ in 0..3 {
        for cmd in c.step().into_iter().flatten() {
            if let NetCommand::Control { bytes, .. } = cmd
                && let Ok(ServerControl::Welcome(w)) = codec::decode_server_control(&bytes)
            {
                return w.avatar;
            }
        }
    }
    panic!("{name} was not welcomed on shard {i}");
}

/// Messages each connection of each shard was sent over `ticks` steps: (shard, conn, text).
fn messages(c: &mut LocalCluster, ticks: usize) -> Vec<(usize, u64, String, MessageScope)> {
    let mut out = Vec::new();
    for _ in 0..ticks {
        for (i, cmds) in c.step().into_iter().enumerate() {
            for cmd in cmds {
                if let NetCommand::Control { conn, bytes } = cmd
                    && let Ok(ServerControl::Message(m)) = codec::decode_server_control(&bytes)
                {
                    out.push((i, conn.0, m.text, m.scope));
                }
            }
        }
    }
    out
}

#[test]
fn a_client_command_acts_as_the_clients_own_avatar_and_no_other() {
    let mut c = cluster();
    let avatar = log_in(&mut c, 0, 1, "ann");
    let wave = |kind| {
        control(
            1,
            &ClientControl::Command(ClientCommand {
                kind,
                bytes: bitcode::encode(&Wave(9)),
            }),
        )
    };
    c.shards[0].push_event(wave(0));
    c.step();
    c.step();
    let seen = &c.shards[0].world.resource::<Seen>().0;
    assert_eq!(
        seen.as_slice(),
        [(avatar, Some(avatar), 9)],
        "delivered to the avatar's owner, on behalf of the avatar"
    );
    // Kind 1 is no client command (Hit is server-only): the connection is closed.
    c.shards[0].push_event(wave(1));
    let closed = c.step()[0].iter().any(|cmd| {
        matches!(cmd, NetCommand::Close { conn, code, .. } if conn.0 == 1 && *code == ErrorCode::BadMessage)
    });
    assert!(closed, "a client cannot send a server-only command");
}

#[test]
fn tells_find_players_on_other_shards_and_shouts_reach_everyone() {
    let mut c = cluster();
    log_in(&mut c, 0, 1, "ann");
    log_in(&mut c, 1, 1, "bob");
    c.step();
    // A game system on shard 0 tells bob, who plays on shard 1.
    c.shards[0]
        .world
        .resource_mut::<PlayerMessages>()
        .tell("bob", "", "the gate opens");
    // Ann's own chat: a shout, and a tell to nobody.
    c.shards[0].push_event(control(
        1,
        &ClientControl::Say(Say {
            to: None,
            text: "hello world".into(),
        }),
    ));
    c.shards[0].push_event(control(
        1,
        &ClientControl::Say(Say {
            to: Some("zed".into()),
            text: "psst".into(),
        }),
    ));
    let got = messages(&mut c, 4);
    let has = |shard: usize, text: &str, scope| {
        got.iter()
            .any(|(s, conn, t, sc)| *s == shard && *conn == 1 && t.contains(text) && *sc == scope)
    };
    assert!(
        has(1, "the gate opens", MessageScope::Tell),
        "bob heard the tell: {got:?}"
    );
    assert!(
        has(0, "hello world", MessageScope::Shout),
        "ann hears her shout: {got:?}"
    );
    assert!(
        has(1, "hello world", MessageScope::Shout),
        "bob hears it too: {got:?}"
    );
    assert!(
        has(0, "no player named zed is online", MessageScope::Tell),
        "ann learns zed is not online: {got:?}"
    );
    assert!(
        !got.iter().any(|(_, _, t, _)| t == "psst"),
        "nobody got the tell to zed"
    );
}

/// A game system that forgets `OwnedOnly` and heals everything, proxies included.
fn careless_heal(mut q: Query<&mut Hp>) {
    for mut h in &mut q {
        h.0 += 1;
    }
}

#[test]
#[should_panic(expected = "error[Z0001]")]
fn writing_any_replicated_component_of_a_proxy_fails_loudly_in_debug_builds() {
    let mut c = cluster();
    let (spot, _) = near_border(&c, 10.0);
    spawn(&mut c, 0, spot, 1);
    c.shards[1].add_systems(ShardSystems::Simulate, careless_heal);
    for _ in 0..10 {
        c.step();
    }
}

/// Sends a command type the game never registered.
fn sends_unregistered(mut out: ResMut<GameCommands>, q: Query<&Networked, OwnedOnly>) {
    #[derive(Encode, Decode)]
    struct Nope;
    impl GameCommand for Nope {
        const NAME: &'static str = "test.Nope";
    }
    if let Some(n) = q.iter().next() {
        out.send(n.0, Nope);
    }
}

#[test]
#[should_panic(expected = "error[Z0002]")]
fn sending_an_unregistered_command_fails_loudly_in_debug_builds() {
    let mut c = cluster();
    let (spot, _) = near_border(&c, 100.0);
    spawn(&mut c, 0, spot, 1);
    c.shards[0].add_systems(ShardSystems::Simulate, sends_unregistered);
    c.step();
}

/// A game rule that takes an arriving entity out of the world in the tick it arrives (before
/// the new owner ever mirrors it).
fn despawn_on_arrival(mut net: NetEntities, q: Query<(Entity, &Networked), Added<Owned>>) {
    for (e, n) in &q {
        net.despawn(e, n.0);
    }
}

#[test]
fn the_old_owners_proxy_goes_when_the_new_owner_despawns_the_entity_on_arrival() {
    let mut c = cluster();
    let (spot, z) = near_border(&c, 3.0);
    let id = spawn(&mut c, 0, spot, 5);
    c.step();
    c.shards[1].add_systems(ShardSystems::Simulate, despawn_on_arrival);
    let e0 = entity(&mut c, 0, id).expect("owned");
    c.shards[0]
        .world
        .get_mut::<MoveTarget>(e0)
        .expect("a mover")
        .target = Vec3::new(0.0, 0.0, z + 20.0);
    let handed = |c: &LocalCluster| {
        c.shards[0]
            .world
            .resource::<zonescaler_server::core::resources::HandoffStats>()
            .out
    };
    for _ in 0..60 {
        c.step();
        if handed(&c) > 0 {
            break;
        }
    }
    assert_eq!(handed(&c), 1, "the entity was handed to shard 1");
    for _ in 0..5 {
        c.step();
    }
    assert_eq!(
        entity(&mut c, 1, id),
        None,
        "shard 1 took it out of the world"
    );
    assert_eq!(
        entity(&mut c, 0, id),
        None,
        "the old owner's proxy of a despawned entity must not linger"
    );
}

/// A game rule that changes a replicated component every tick (on the shard it runs on).
fn drain(mut q: Query<&mut Hp, OwnedOnly>) {
    for mut h in &mut q {
        h.0 = h.0.saturating_sub(1);
    }
}

#[test]
fn a_handoff_carries_the_changes_made_in_the_tick_it_is_offered() {
    let mut c = cluster();
    let (spot, z) = near_border(&c, 3.0);
    let id = spawn(&mut c, 0, spot, 9);
    c.shards[0].add_systems(ShardSystems::Simulate, drain);
    let e0 = entity(&mut c, 0, id).expect("owned");
    c.shards[0]
        .world
        .get_mut::<MoveTarget>(e0)
        .expect("a mover")
        .target = Vec3::new(0.0, 0.0, z + 20.0);
    let mut frozen_at = None;
    for _ in 0..60 {
        c.step();
        let e0 = entity(&mut c, 0, id).expect("still on shard 0");
        let w = &c.shards[0].world;
        if frozen_at.is_none()
            && w.get::<zonescaler_server::core::components::InTransit>(e0)
                .is_some()
        {
            frozen_at = w.get::<Hp>(e0).copied();
        }
        if get::<Owned>(&mut c, 1, id).is_some() {
            break;
        }
    }
    let frozen_at = frozen_at.expect("the handoff froze it on shard 0");
    assert!(frozen_at.0 < 100, "the rule ran");
    assert_eq!(
        get::<Hp>(&mut c, 1, id),
        Some(frozen_at),
        "the new owner starts from the value the old one last simulated, not the tick before"
    );
}

#[test]
fn an_avatar_whose_client_never_came_is_not_offered_in_the_tick_it_expires() {
    let mut c = cluster();
    // Past the wait for a redirected client, on the cluster clock.
    let wait_ticks = zonescaler_shared::limits::REDIRECT_WAIT_MS / 33 + 10;
    for _ in 0..wait_ticks {
        c.step();
    }
    let (_, z) = near_border(&c, 0.0);
    // A handed-off avatar awaiting its client since the start, standing (just moved) well inside
    // shard 1's cells: the tick that despawns it is also one that would offer it to shard 1.
    let awaiting = zonescaler_server::core::components::AwaitingClient {
        name: "gone".into(),
        since_ms: 0,
        last_input_seq: 0,
    };
    let id = spawn_owned(&mut c, 0, Vec3::new(0.0, 0.0, z + 10.0), awaiting);
    for _ in 0..5 {
        c.step();
    }
    assert_eq!(entity(&mut c, 0, id), None, "despawned on its shard");
    assert_eq!(
        entity(&mut c, 1, id),
        None,
        "and not resurrected by a handoff"
    );
}

/// The first control message `conn` got from shard `i` over `ticks` steps.
fn first_control(c: &mut LocalCluster, i: usize, conn: u64, ticks: usize) -> Option<ServerControl> {
    for _ in 0..ticks {
        for cmd in c.step().into_iter().nth(i).into_iter().flatten() {
            if let NetCommand::Control { conn: to, bytes } = cmd
                && to.0 == conn
                && let Ok(msg) = codec::decode_server_control(&bytes)
            {
                return Some(msg);
            }
        }
    }
    None
}

/// A client with a redirect token for `id` on shard `i` connects as `conn`.
fn arrive_with_token(c: &mut LocalCluster, i: usize, conn: u64, token: Vec<u8>) {
    c.shards[i].push_event(NetEvent::Connected {
        conn: ConnId(conn),
        max_datagram_bytes: 1_200,
    });
    let hello = ClientControl::Hello(Hello {
        protocol_hash: c.shards[i].protocol_hash(),
        name: String::new(),
        ticket: None,
        token: Some(token),
        resume: None,
    });
    c.shards[i].push_event(control(conn, &hello));
}

#[test]
fn a_client_redirected_to_an_avatar_that_moved_on_with_its_cell_is_sent_after_it() {
    let mut c = cluster();
    c.step();
    // An avatar handed to shard 0 whose client is on its way (it holds a token for shard 0),
    // deep in a cell of shard 0 that then moves to shard 1 before the client arrives.
    let grid = *c.map.grid();
    let cell = c
        .map
        .cells_of(ShardId(0))
        .find(|&cell| {
            let r = grid.rect(cell);
            let mid = [(r.min[0] + r.max[0]) / 2.0, (r.min[1] + r.max[1]) / 2.0];
            // Far from shard 1's cells, so no proxy of it stays on shard 0.
            [-1.0f32, 1.0].iter().all(|d| {
                [[mid[0] + d * 300.0, mid[1]], [mid[0], mid[1] + d * 300.0]]
                    .iter()
                    .all(|p| !grid.world().contains(*p) || c.map.owner_at(*p) == Some(ShardId(0)))
            })
        })
        .expect("a cell of shard 0 deep in its region");
    let r = grid.rect(cell);
    let at = Vec3::new(
        (r.min[0] + r.max[0]) / 2.0,
        0.0,
        (r.min[1] + r.max[1]) / 2.0,
    );
    let now = c.shards[0]
        .world
        .resource::<zonescaler_server::core::resources::TickClock>()
        .now_ms;
    let awaiting = zonescaler_server::core::components::AwaitingClient {
        name: "ann".into(),
        since_ms: now,
        last_input_seq: 0,
    };
    let id = spawn_owned(&mut c, 0, at, awaiting);
    let token = c.shards[0]
        .world
        .resource::<zonescaler_server::client::ClusterDirectory>()
        .redirect(
            ShardId(0),
            zonescaler_shared::token::GrantKind::Avatar(id),
            now,
        )
        .token;
    c.move_cell(cell, ShardId(1)).expect("the move starts");
    for _ in 0..300 {
        c.step();
        if c.map.owner_of(cell) == Some(ShardId(1)) && entity(&mut c, 0, id).is_none() {
            break;
        }
    }
    assert_eq!(c.map.owner_of(cell), Some(ShardId(1)), "the cell moved");
    assert!(
        entity(&mut c, 0, id).is_none(),
        "nothing of the avatar is left on shard 0"
    );
    assert!(entity(&mut c, 1, id).is_some(), "shard 1 holds it");

    arrive_with_token(&mut c, 0, 50, token);
    let redirect = match first_control(&mut c, 0, 50, 3) {
        Some(ServerControl::Redirect(r)) => r,
        other => panic!("the late client is sent after its avatar, got {other:?}"),
    };
    assert_eq!(redirect.shard, ShardId(1));
    arrive_with_token(&mut c, 1, 51, redirect.token);
    match first_control(&mut c, 1, 51, 3) {
        Some(ServerControl::Welcome(w)) => assert_eq!(w.avatar, id, "its own avatar"),
        other => panic!("shard 1 welcomes it to its avatar, got {other:?}"),
    }
}
