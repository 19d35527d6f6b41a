//! The sans-IO bot client: login, snapshot reconstruction, inputs, and the metrics of a report.

use glam::Vec3;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use zonescaler_shared::NetId;
use zonescaler_shared::codec;
use zonescaler_shared::components::EXAMPLE_GAME_COMPONENTS;
use zonescaler_shared::protocol::*;
use zonescaler_shared::quant::QPos;
use zonescaler_shared::registry::ProtocolRegistry;
use zonescaler_shared::rng::Rng;

/// Complete snapshots a client keeps as possible delta baselines. The shard keeps
/// `SNAPSHOT_HISTORY_TICKS`; the client keeps more so a baseline is never missing on its side.
pub const CLIENT_HISTORY_TICKS: usize = 2 * zonescaler_shared::limits::SNAPSHOT_HISTORY_TICKS;
/// Incomplete snapshots (waiting for parts) kept at once.
const PARTIAL_SNAPSHOTS_MAX: usize = 8;

/// What a bot does once logged in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Walk to random waypoints at 90% of the max speed.
    Wander,
    /// Stand still (inputs still flow, so RTT is measured).
    Idle,
    /// Walk back and forth across a border between two shards (given by [`BotConfig::border`],
    /// chosen from the cell map with [`border_walks`]); without one, wander.
    Border,
}

impl Scenario {
    pub const ALL: [Scenario; 3] = [Scenario::Wander, Scenario::Idle, Scenario::Border];

    pub fn name(self) -> &'static str {
        match self {
            Self::Wander => "wander",
            Self::Idle => "idle",
            Self::Border => "border",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.name() == s)
    }
}

#[derive(Clone, Debug)]
pub struct BotConfig {
    pub name: String,
    pub scenario: Scenario,
    pub seed: u64,
    /// Where to ask to start (`Hello::spawn_hint`); the shard picks if `None`.
    pub spawn_hint: Option<QPos>,
    /// For [`Scenario::Border`]: the two ends of the walk, on either side of a border.
    pub border: Option<(Vec3, Vec3)>,
    /// For [`Scenario::Border`]: where along the walk the bot starts, from 0 (the first end) to 1
    /// (the second); it then heads for the second end. The swarm spreads its bots over the whole
    /// walk so that their crossings are spread over time instead of coming in waves.
    pub border_start: f32,
}

impl BotConfig {
    pub fn new(name: impl Into<String>, scenario: Scenario, seed: u64) -> Self {
        Self {
            name: name.into(),
            scenario,
            seed,
            spawn_hint: None,
            border: None,
            border_start: 0.0,
        }
    }
}

/// How far (metres) each end of a border walk is from the border.
pub const BORDER_WALK_HALF_M: f32 = 10.0;

/// `n` border walks over `map`: for each, a random point on a border between two shards
/// (weighted by border length, away from corners) and the two points `BORDER_WALK_HALF_M` to
/// either side of it. Empty if the map has no border.
pub fn border_walks(map: &CellMapView, n: usize, rng: &mut Rng) -> Vec<(Vec3, Vec3)> {
    // Shared edges between leaves of different shards: (fixed coordinate, lo, hi, vertical).
    let keep = BORDER_WALK_HALF_M;
    let mut edges: Vec<(f32, f32, f32, bool)> = Vec::new();
    for (i, a) in map.leaves.iter().enumerate() {
        for b in &map.leaves[i + 1..] {
            if a.shard == b.shard {
                continue;
            }
            let [ax0, az0, ax1, az1] = a.rect;
            let [bx0, bz0, bx1, bz1] = b.rect;
            if ax1 == bx0 || bx1 == ax0 {
                let (lo, hi) = (az0.max(bz0) + keep, az1.min(bz1) - keep);
                if hi > lo {
                    edges.push((if ax1 == bx0 { ax1 } else { ax0 }, lo, hi, true));
                }
            }
            if az1 == bz0 || bz1 == az0 {
                let (lo, hi) = (ax0.max(bx0) + keep, ax1.min(bx1) - keep);
                if hi > lo {
                    edges.push((if az1 == bz0 { az1 } else { az0 }, lo, hi, false));
                }
            }
        }
    }
    let total: f32 = edges.iter().map(|e| e.2 - e.1).sum();
    if edges.is_empty() || total <= 0.0 {
        return Vec::new();
    }
    (0..n)
        .map(|_| {
            let mut at = rng.range_f32(0.0, total);
            let e = edges
                .iter()
                .find(|e| {
                    at -= e.2 - e.1;
                    at <= 0.0
                })
                .unwrap_or(&edges[edges.len() - 1]);
            let along = rng.range_f32(e.1, e.2);
            let (a, b) = if e.3 {
                (
                    Vec3::new(e.0 - keep, 0.0, along),
                    Vec3::new(e.0 + keep, 0.0, along),
                )
            } else {
                (
                    Vec3::new(along, 0.0, e.0 - keep),
                    Vec3::new(along, 0.0, e.0 + keep),
                )
            };
            if rng.next_f32() < 0.5 { (a, b) } else { (b, a) }
        })
        .collect()
}

/// One entity as the client sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ViewEntity {
    pub pos: QPos,
    /// Shared between the views of successive ticks: every snapshot starts from a copy of its
    /// baseline view, and components change rarely, so copying them would be most of a bot's
    /// work (it was a third of the swarm's CPU at 500 bots).
    pub components: Arc<[ComponentBlob]>,
}

/// The client's reconstruction of the world at one tick.
pub type View = BTreeMap<NetId, ViewEntity>;

/// Counters and samples a bot reports.
#[derive(Clone, Debug, Default)]
pub struct BotMetrics {
    pub connected_at_us: Option<u64>,
    pub welcomed_at_us: Option<u64>,
    pub last_snapshot_at_us: Option<u64>,
    /// Complete snapshots applied.
    pub snapshots: u64,
    pub snapshot_parts: u64,
    pub bytes_down: u64,
    pub snapshot_bytes: u64,
    pub entity_updates: u64,
    pub inputs_sent: u64,
    /// Input sent → first snapshot part that reflects it, in microseconds.
    pub rtt_us: Vec<u32>,
    /// Snapshots in which the bot's own avatar was missing.
    pub avatar_missing: u64,
    /// Redirects after login: the avatar was handed off and the bot moved to its new shard.
    pub handoffs: u64,
    /// Redirect received → first complete snapshot from the new shard, in microseconds.
    pub handoff_gap_us: Vec<u32>,
    pub errors: BTreeMap<String, u64>,
}

impl BotMetrics {
    pub fn error(&mut self, kind: &str) {
        *self.errors.entry(kind.to_string()).or_default() += 1;
    }
}

#[derive(Debug)]
struct Partial {
    baseline: u64,
    parts: Vec<Option<SnapshotPart>>,
}

/// Why a bot stopped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BotError {
    #[error("shard closed the session: {code}: {detail}")]
    Refused { code: &'static str, detail: String },
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// A headless client's whole state.
#[derive(Debug)]
pub struct BotClient {
    cfg: BotConfig,
    rng: Rng,
    protocol_hash: u64,
    welcome: Option<Welcome>,
    history: VecDeque<(u64, View)>,
    partial: BTreeMap<u64, Partial>,
    latest_tick: u64,
    next_seq: u32,
    /// Inputs awaiting a snapshot that reflects them: (seq, sent at).
    in_flight: VecDeque<(u32, u64)>,
    waypoint: Vec3,
    /// The newest cell map the shard sent.
    cell_map: Option<CellMapView>,
    /// When the pending redirect arrived (the first of a chain).
    redirected_at_us: Option<u64>,
    /// Set by the new shard's `Welcome` from `redirected_at_us`; its first complete snapshot
    /// ends the handoff gap.
    switched_from_us: Option<u64>,
    /// The border walk's next end (true: the second).
    walk_to_b: bool,
    pub metrics: BotMetrics,
}

impl BotClient {
    pub fn new(cfg: BotConfig) -> Self {
        let hash = ProtocolRegistry::with_components(&EXAMPLE_GAME_COMPONENTS)
            .map(|r| r.hash())
            .unwrap_or_default();
        Self::with_protocol_hash(cfg, hash)
    }

    /// A bot presenting a specific protocol hash (tests use a wrong one on purpose).
    pub fn with_protocol_hash(cfg: BotConfig, protocol_hash: u64) -> Self {
        let rng = Rng::new(cfg.seed);
        Self {
            cfg,
            rng,
            protocol_hash,
            welcome: None,
            history: VecDeque::new(),
            partial: BTreeMap::new(),
            latest_tick: 0,
            next_seq: 1,
            in_flight: VecDeque::new(),
            waypoint: Vec3::ZERO,
            cell_map: None,
            redirected_at_us: None,
            switched_from_us: None,
            walk_to_b: true,
            metrics: BotMetrics::default(),
        }
    }

    /// The first control message on the first connection: `Hello`.
    pub fn hello(&mut self, now_us: u64) -> Vec<u8> {
        self.metrics.connected_at_us = Some(now_us);
        let spawn_hint = self.cfg.spawn_hint.or_else(|| {
            self.cfg
                .border
                .filter(|_| self.cfg.scenario == Scenario::Border)
                .map(|(a, b)| QPos::quantize(a.lerp(b, self.cfg.border_start.clamp(0.0, 1.0))))
        });
        codec::encode(&ClientControl::Hello(Hello {
            protocol_hash: self.protocol_hash,
            name: self.cfg.name.clone(),
            token: None,
            spawn_hint,
        }))
    }

    /// The first control message on the connection a [`Redirect`] asked for.
    pub fn hello_redirected(&self, redirect: &Redirect) -> Vec<u8> {
        codec::encode(&ClientControl::Hello(Hello {
            protocol_hash: self.protocol_hash,
            name: self.cfg.name.clone(),
            token: Some(redirect.token.clone()),
            spawn_hint: None,
        }))
    }

    /// The redirect could not be followed (the bot stays where it is): it is no handoff.
    pub fn redirect_abandoned(&mut self) {
        self.redirected_at_us = None;
    }

    /// The newest cell map the shard sent.
    pub fn cell_map(&self) -> Option<&CellMapView> {
        self.cell_map.as_ref()
    }

    pub fn welcome(&self) -> Option<&Welcome> {
        self.welcome.as_ref()
    }

    /// The newest complete view and its tick.
    pub fn view(&self) -> Option<(u64, &View)> {
        self.history.back().map(|(t, v)| (*t, v))
    }

    /// Position of the bot's own avatar in its newest view.
    pub fn avatar_pos(&self) -> Option<Vec3> {
        let w = self.welcome.as_ref()?;
        self.view()
            .and_then(|(_, v)| v.get(&w.avatar))
            .map(|e| e.pos.to_vec3())
    }

    /// A control message from the shard. `Ok(Some(redirect))`: connect to `redirect.addr`, send
    /// [`Self::hello_redirected`] there, and keep this connection until that one's `Welcome`
    /// arrives (pass it here too: the bot then switches, and this connection can be closed).
    pub fn on_control(&mut self, now_us: u64, bytes: &[u8]) -> Result<Option<Redirect>, BotError> {
        self.metrics.bytes_down += bytes.len() as u64;
        match codec::decode_server_control(bytes) {
            Ok(ServerControl::Welcome(w)) => {
                if w.protocol_hash != self.protocol_hash {
                    self.metrics.error("protocol_mismatch");
                    return Err(BotError::Protocol(
                        "welcome carries another protocol hash".into(),
                    ));
                }
                if self.welcome.is_some() {
                    // A new shard: its ticks and baselines have nothing to do with the old one's.
                    self.switched_from_us = self.redirected_at_us.take();
                    self.history.clear();
                    self.partial.clear();
                    self.latest_tick = 0;
                    self.in_flight.clear();
                } else {
                    self.metrics.welcomed_at_us = Some(now_us);
                    self.waypoint = w.spawn.to_vec3();
                }
                self.welcome = Some(w);
                Ok(None)
            }
            Ok(ServerControl::Redirect(r)) => {
                if self.welcome.is_some() {
                    // A chain of redirects is one handoff, timed from its first.
                    self.redirected_at_us.get_or_insert(now_us);
                }
                Ok(Some(r))
            }
            Ok(ServerControl::CellMap(m)) => {
                self.cell_map = Some(m);
                Ok(None)
            }
            Ok(ServerControl::Error(e)) => {
                self.metrics.error(e.code.as_str());
                Err(BotError::Refused {
                    code: e.code.as_str(),
                    detail: e.detail,
                })
            }
            Err(e) => {
                self.metrics.error("bad_control_message");
                Err(BotError::Protocol(e.to_string()))
            }
        }
    }

    /// A datagram from the shard: a snapshot part.
    pub fn on_datagram(&mut self, now_us: u64, bytes: &[u8]) {
        self.metrics.bytes_down += bytes.len() as u64;
        let part = match codec::decode_server_datagram(bytes) {
            Ok(ServerDatagram::Snapshot(p)) => p,
            Err(_) => {
                self.metrics.error("bad_snapshot");
                return;
            }
        };
        if self.welcome.is_none() {
            // A datagram can overtake the Welcome on its stream; nothing to apply it to yet.
            self.metrics.error("snapshot_before_welcome");
            return;
        }
        self.metrics.snapshot_parts += 1;
        self.metrics.snapshot_bytes += bytes.len() as u64;
        self.metrics.entity_updates += part.entity_updates() as u64;
        while let Some(&(seq, sent)) = self.in_flight.front() {
            if seq > part.last_input_seq {
                break;
            }
            self.metrics
                .rtt_us
                .push(now_us.saturating_sub(sent).min(u64::from(u32::MAX)) as u32);
            self.in_flight.pop_front();
        }
        if part.tick <= self.latest_tick {
            return; // duplicate or older than what we hold whole
        }
        let (tick, parts, baseline) = (part.tick, usize::from(part.parts), part.baseline());
        let entry = self.partial.entry(tick).or_insert_with(|| Partial {
            baseline,
            parts: vec![None; parts],
        });
        if entry.parts.len() != parts
            || entry.baseline != baseline
            || usize::from(part.part) >= parts
        {
            self.metrics.error("inconsistent_parts");
            return;
        }
        let slot = usize::from(part.part);
        entry.parts[slot] = Some(part);
        if entry.parts.iter().all(Option::is_some) {
            let done = self
                .partial
                .remove(&tick)
                .map(|p| p.parts)
                .unwrap_or_default();
            self.apply(now_us, tick, baseline, done.into_iter().flatten().collect());
        }
        while self.partial.len() > PARTIAL_SNAPSHOTS_MAX {
            self.partial.pop_first();
        }
    }

    fn apply(&mut self, now_us: u64, tick: u64, baseline: u64, parts: Vec<SnapshotPart>) {
        let mut view = if baseline == 0 {
            View::new()
        } else {
            match self.history.iter().find(|(t, _)| *t == baseline) {
                Some((_, v)) => v.clone(),
                None => {
                    self.metrics.error("missing_baseline");
                    return;
                }
            }
        };
        // Moved entities are named by their index in the baseline's sorted ids: resolve them
        // before removals and spawns change the view.
        let base_ids: Vec<NetId> = view.keys().copied().collect();
        let mut unknown = 0u64;
        for p in &parts {
            let mut idx = u64::from(p.index_base);
            for m in &p.moved {
                idx += u64::from(m.index_gap);
                match base_ids.get(idx as usize).and_then(|id| view.get_mut(id)) {
                    Some(e) => e.pos = QPos::apply_delta(e.pos, m.delta),
                    None => unknown += 1,
                }
                idx += 1;
            }
        }
        for p in &parts {
            for id in p.removed() {
                view.remove(id);
            }
        }
        for p in parts {
            let rare = p.rare.unwrap_or_default();
            for s in rare.spawned {
                view.insert(
                    s.id,
                    ViewEntity {
                        pos: s.pos,
                        components: s.components.into(),
                    },
                );
            }
            for c in rare.changed {
                match view.get_mut(&c.id) {
                    Some(e) => e.components = c.components.into(),
                    None => unknown += 1,
                }
            }
        }
        if unknown > 0 {
            *self
                .metrics
                .errors
                .entry("update_for_unknown_entity".into())
                .or_default() += unknown;
        }
        if let Some(w) = &self.welcome
            && !view.contains_key(&w.avatar)
        {
            self.metrics.avatar_missing += 1;
        }
        self.latest_tick = tick;
        self.partial.retain(|t, _| *t > tick);
        if self.history.len() >= CLIENT_HISTORY_TICKS {
            self.history.pop_front();
        }
        self.history.push_back((tick, view));
        self.metrics.snapshots += 1;
        if let Some(at) = self.switched_from_us.take() {
            self.metrics.handoffs += 1;
            self.metrics
                .handoff_gap_us
                .push(now_us.saturating_sub(at).min(u64::from(u32::MAX)) as u32);
        }
        self.metrics.last_snapshot_at_us = Some(now_us);
    }

    /// The next input datagram; call once per client tick after login.
    pub fn next_input(&mut self, now_us: u64) -> Option<Vec<u8>> {
        let w = self.welcome.clone()?;
        let wander = self.cfg.scenario == Scenario::Wander
            || (self.cfg.scenario == Scenario::Border && self.cfg.border.is_none());
        if wander {
            let here = self.avatar_pos().unwrap_or(w.spawn.to_vec3());
            if here.distance(self.waypoint) < 1.0 {
                let [min_x, min_z, max_x, max_z] = w.bounds;
                let r = 60.0;
                let x = (here.x + self.rng.range_f32(-r, r)).clamp(min_x, max_x);
                let z = (here.z + self.rng.range_f32(-r, r)).clamp(min_z, max_z);
                self.waypoint = Vec3::new(x, 0.0, z);
            }
        }
        if let (Scenario::Border, Some((a, b))) = (self.cfg.scenario, self.cfg.border) {
            let here = self.avatar_pos().unwrap_or(w.spawn.to_vec3());
            let goal = if self.walk_to_b { b } else { a };
            if here.distance(goal) < 1.0 {
                self.walk_to_b = !self.walk_to_b;
            }
            self.waypoint = if self.walk_to_b { b } else { a };
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.in_flight.push_back((seq, now_us));
        // Inputs the shard never reflects (lost, superseded) must not grow without bound.
        while self.in_flight.len() > 256 {
            self.in_flight.pop_front();
        }
        self.metrics.inputs_sent += 1;
        let input = Input {
            seq,
            ack_tick: self.latest_tick,
            target: QPos::quantize(self.waypoint),
        };
        Some(codec::encode(&ClientDatagram::Input(input)))
    }

    /// An input with an explicit target (tests of the shard's authority).
    pub fn input_to(&mut self, target: QPos) -> Vec<u8> {
        let seq = self.next_seq;
        self.next_seq += 1;
        codec::encode(&ClientDatagram::Input(Input {
            seq,
            ack_tick: self.latest_tick,
            target,
        }))
    }
}
