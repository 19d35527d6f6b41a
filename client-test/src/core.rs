//! The sans-IO bot client: login, snapshot reconstruction, inputs, the game's brain, and the
//! metrics of a report.

use glam::Vec3;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use zonescaler_shared::NetId;
use zonescaler_shared::codec;
use zonescaler_shared::protocol::*;
use zonescaler_shared::quant::QPos;
use zonescaler_shared::registry::ProtocolRegistry;
use zonescaler_shared::rng::Rng;
use zonescaler_shared::ticket::{LoginTicket, TicketSigner};

use crate::game::{BotBrain, BotGame, BrainCtx, INBOX_MAX, OutKind, Outbox};
use crate::hotspot::Hotspot;
use crate::timeline::Timeline;
pub use crate::view::{View, ViewEntity};

/// Complete snapshots a client keeps as possible delta baselines. The shard keeps
/// `SNAPSHOT_HISTORY_TICKS`; the client keeps more so a baseline is never missing on its side.
pub const CLIENT_HISTORY_TICKS: usize = 2 * zonescaler_shared::limits::SNAPSHOT_HISTORY_TICKS;
/// Incomplete snapshots (waiting for parts) kept at once.
const PARTIAL_SNAPSHOTS_MAX: usize = 8;
/// Texts of the newest player messages a bot keeps (for tests and debugging; the count is in
/// [`BotMetrics::messages_received`]).
pub const LAST_MESSAGES_KEPT: usize = 8;
/// How long one complete snapshot that shows a bot its own avatar counts as playing, at most:
/// until the next one, or this long. Snapshots come every tick (33 ms at 30 Hz), and one per
/// `snapshot_window_ms` (250 ms) to a client behind on its acknowledgements, so a bot that
/// plays is always covered; a lost shard (1.5 s of silence before the bot gives up on it) or a
/// slow login is not.
pub const PLAYING_COVER_US: u64 = 500_000;
/// Salt of the brain's random stream, so it is independent of the movement scenario's.
const BRAIN_RNG_SALT: u64 = 0x4252_4149_4e00;
/// Salt of where a crowd bot starts in its crowd, so a ticket's spawn point does not depend on
/// how many waypoints the bot picked before (it is signed before the bot connects).
const SPAWN_RNG_SALT: u64 = 0x5350_4157_4e00;

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
    /// Gather around one hot spot ([`BotConfig::hotspot`]): walk from point to point of its
    /// disc; without one, wander.
    Crowd,
    /// Like [`Self::Crowd`], around a hot spot that travels across the world during the run.
    Migrate,
}

impl Scenario {
    pub const ALL: [Scenario; 5] = [
        Scenario::Wander,
        Scenario::Idle,
        Scenario::Border,
        Scenario::Crowd,
        Scenario::Migrate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Wander => "wander",
            Self::Idle => "idle",
            Self::Border => "border",
            Self::Crowd => "crowd",
            Self::Migrate => "migrate",
        }
    }

    /// Whether bots of this scenario gather around a hot spot.
    pub fn gathers(self) -> bool {
        matches!(self, Self::Crowd | Self::Migrate)
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
    /// The login ticket `Hello` carries ([`zonescaler_shared::ticket`]): which account the bot
    /// plays and where it starts, signed by the game's account service. Spawn points come from
    /// the server side, never from the client, so this is the only way a bot chooses where it
    /// starts (see [`Self::sign_ticket`]). `None` logs in without one, which only a server
    /// without login keys accepts; the shard then picks the spawn point.
    pub ticket: Option<Vec<u8>>,
    /// For [`Scenario::Border`]: the two ends of the walk, on either side of a border.
    pub border: Option<(Vec3, Vec3)>,
    /// For [`Scenario::Border`]: where along the walk the bot starts, from 0 (the first end) to 1
    /// (the second); it then heads for the second end. The swarm spreads its bots over the whole
    /// walk so that their crossings are spread over time instead of coming in waves.
    pub border_start: f32,
    /// For [`Scenario::Crowd`] and [`Scenario::Migrate`]: where the crowd is, by the swarm's
    /// clock (the same clock the bot is given in [`BotClient::next_input`]).
    pub hotspot: Option<Hotspot>,
    /// When (swarm clock, microseconds) the bot logs in: a crowd bot starts in the crowd where
    /// the hot spot is at that moment.
    pub login_at_us: u64,
}

impl BotConfig {
    pub fn new(name: impl Into<String>, scenario: Scenario, seed: u64) -> Self {
        Self {
            name: name.into(),
            scenario,
            seed,
            ticket: None,
            border: None,
            border_start: 0.0,
            hotspot: None,
            login_at_us: 0,
        }
    }

    /// Where the scenario wants the bot to start: for [`Scenario::Border`] with a walk, the point
    /// `border_start` of the way along it; for a crowd, a point of the hot spot's disc where it
    /// is at `login_at_us` (so the crowd forms in one region from the first second, on the shard
    /// that owns it); otherwise anywhere (`None`: the shard picks).
    pub fn spawn_point(&self) -> Option<Vec3> {
        match (self.scenario, self.border, self.hotspot) {
            (Scenario::Border, Some((a, b)), _) => {
                Some(a.lerp(b, self.border_start.clamp(0.0, 1.0)))
            }
            (s, _, Some(h)) if s.gathers() => {
                let mut rng = Rng::new(self.seed ^ SPAWN_RNG_SALT);
                Some(h.at(self.login_at_us) + h.offset(&mut rng))
            }
            _ => None,
        }
    }

    /// Act as the game's account service: sign this bot's ticket with `signer`, for the account
    /// named like the bot, starting at [`Self::spawn_point`], valid until `expires_ms` (Unix
    /// milliseconds of the shards' clock; simulated time in the simulator).
    pub fn sign_ticket(&mut self, signer: &TicketSigner, expires_ms: u64) {
        self.ticket = Some(signer.sign(&LoginTicket {
            account: self.name.clone(),
            spawn: self.spawn_point().map(QPos::quantize),
            expires_ms,
        }));
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

/// Counters and samples a bot reports.
#[derive(Clone, Debug, Default)]
pub struct BotMetrics {
    pub connected_at_us: Option<u64>,
    pub welcomed_at_us: Option<u64>,
    /// The place the login queue first gave this bot (every shard was at its client cap), and
    /// the places it was told since, counted.
    pub queue_first: Option<QueuePlace>,
    pub queue_updates: u32,
    /// For a bot that waited in the login queue: `Hello` sent → admitted (its `Welcome`, or the
    /// redirect to the shard it was given), in microseconds.
    pub queue_us: Option<u64>,
    pub last_snapshot_at_us: Option<u64>,
    /// Complete snapshots applied.
    pub snapshots: u64,
    pub snapshot_parts: u64,
    /// Snapshot parts that arrived after a newer snapshot was complete (decoded, then useless):
    /// a bot behind its datagrams.
    pub parts_stale: u64,
    /// Snapshots begun and never completed (a part lost, or overtaken by a newer snapshot).
    pub snapshots_incomplete: u64,
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
    /// Redirect received → the new shard's `Welcome`, in microseconds: the part of the gap
    /// spent connecting and being bound to the avatar (the rest waits for a snapshot).
    pub handoff_welcome_us: Vec<u32>,
    /// Redirect received → the new connection's QUIC handshake done, in microseconds.
    pub handoff_connect_us: Vec<u32>,
    /// Handoffs that took more than one redirect: the avatar was handed on again before the
    /// client got to it (the gap then spans every hop).
    pub handoffs_chained: u64,
    /// `Prepare`s received: the shard offered the avatar and told the bot where it may go.
    pub redirects_prepared: u64,
    /// Handoffs whose new connection had been opened on a `Prepare`, before the redirect came.
    pub handoffs_preconnected: u64,
    /// Times the bot lost its shard without a redirect (the connection timed out, closed, or the
    /// shard said it was shutting down) and set out to come back.
    pub failovers: u64,
    /// Of them, those where it came back to its avatar with its resume ticket.
    pub resumes: u64,
    /// Resumes that could not be done (no ticket, refused, or no shard took it in time): the bot
    /// then logs in anew with its login ticket.
    pub resumes_failed: u64,
    /// Fresh logins after a failed resume that got the bot playing again.
    pub relogins: u64,
    /// Last heard from the lost shard → first complete snapshot again (resumed or logged in anew), in
    /// microseconds.
    pub failover_gap_us: Vec<u32>,
    pub errors: BTreeMap<String, u64>,
    /// Game commands the brain queued that were handed to the transport.
    pub commands_sent: u64,
    /// Chat lines the brain queued that were handed to the transport.
    pub says_sent: u64,
    /// Every `ServerControl::Message` received (tells and shouts).
    pub messages_received: u64,
    /// The newest [`LAST_MESSAGES_KEPT`] of them, oldest first.
    pub last_messages: VecDeque<PlayerMessage>,
    /// Per-second counters, by second since the clock's zero (the swarm's start).
    pub timeline: Timeline,
    /// The newest time the bot was given: errors counted without a time of their own
    /// ([`Self::error`]) go in its second of the timeline.
    pub clock_us: u64,
    /// Time the bot was playing: each complete snapshot that showed it its own avatar counts
    /// until the next one, at most [`PLAYING_COVER_US`]; the last one's time, until then.
    pub playing_us: u64,
    pub playing_since_us: Option<u64>,
    /// The bot's whole run, from its turn in the ramp to the end of the swarm's run (0 until
    /// [`Self::end_run`]): what [`Self::playing_fraction`] divides by.
    pub run_us: u64,
}

impl BotMetrics {
    /// Count an error of `kind`, at the newest time the bot was given.
    pub fn error(&mut self, kind: &str) {
        self.errors_n(kind, 1);
    }

    /// Count an error of `kind` that happened at `now_us`.
    pub fn error_at(&mut self, now_us: u64, kind: &str) {
        self.clock_us = self.clock_us.max(now_us);
        self.errors_n(kind, 1);
    }

    fn errors_n(&mut self, kind: &str, n: u64) {
        *self.errors.entry(kind.to_string()).or_default() += n;
        self.timeline.errors(self.clock_us, n);
    }

    fn tick(&mut self, now_us: u64) {
        self.clock_us = self.clock_us.max(now_us);
    }

    /// A complete snapshot came at `now_us`, showing the bot its own avatar or not.
    fn played(&mut self, now_us: u64, sees_itself: bool) {
        if let Some(since) = self.playing_since_us.take() {
            self.playing_us += now_us.saturating_sub(since).min(PLAYING_COVER_US);
        }
        if sees_itself {
            self.playing_since_us = Some(now_us);
        }
    }

    /// The bot's run began at `start_us` (its turn in the ramp) and ended at `end_us`.
    pub fn end_run(&mut self, start_us: u64, end_us: u64) {
        self.played(end_us, false);
        self.run_us = end_us.saturating_sub(start_us);
    }

    /// The share of its run the bot was playing (a live avatar, receiving snapshots), 0..=1;
    /// `None` before [`Self::end_run`].
    pub fn playing_fraction(&self) -> Option<f64> {
        (self.run_us > 0).then(|| (self.playing_us as f64 / self.run_us as f64).min(1.0))
    }

    /// The login was let through the queue at `now_us` (if it waited).
    fn admitted(&mut self, now_us: u64) {
        if self.queue_first.is_some() && self.queue_us.is_none() {
            let from = self.connected_at_us.unwrap_or(now_us);
            self.queue_us = Some(now_us.saturating_sub(from));
        }
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

/// A game's brain in the client; `Debug` so the client stays printable.
struct Brain(Box<dyn BotBrain>);

impl std::fmt::Debug for Brain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BotBrain")
    }
}

/// A snapshot as kept for later deltas: the ids in view, sorted, with their positions. Plain
/// data, so keeping one per tick costs one copy of a vector; components live once, in the
/// newest view.
type Frame = Vec<(NetId, QPos)>;

/// Apply a snapshot's `parts` to `frame` (a copy of their baseline): moves, removals, spawns.
/// Returns the new components by id (sorted; of one id the last given comes last) and how many
/// entries named an entity the frame does not hold.
fn apply_parts(
    frame: &mut Frame,
    parts: Vec<SnapshotPart>,
) -> (Vec<(NetId, Arc<[ComponentBlob]>)>, u64) {
    // Moved entities are named by their index in the baseline's sorted ids: apply them
    // before removals and spawns change the frame (until then it is the baseline).
    let mut unknown = 0u64;
    for p in &parts {
        let mut idx = u64::from(p.index_base);
        for m in &p.moved {
            idx += u64::from(m.index_gap);
            match usize::try_from(idx).ok().and_then(|i| frame.get_mut(i)) {
                Some((_, pos)) => *pos = QPos::apply_delta(*pos, m.delta),
                None => unknown += 1,
            }
            idx += 1;
        }
    }
    let mut removed: Vec<NetId> = parts.iter().flat_map(|p| p.removed()).copied().collect();
    if !removed.is_empty() {
        removed.sort_unstable();
        frame.retain(|(id, _)| removed.binary_search(id).is_err());
    }
    // New components by id: a spawn's, then changes (of entities in view only); the last
    // given for an id wins.
    let mut spawned = Vec::new();
    let mut fresh: Vec<(NetId, Arc<[ComponentBlob]>)> = Vec::new();
    let mut changed = Vec::new();
    for p in parts {
        let rare = p.rare.unwrap_or_default();
        for s in rare.spawned {
            spawned.push((s.id, s.pos));
            fresh.push((s.id, s.components));
        }
        changed.extend(rare.changed);
    }
    upsert_sorted(frame, spawned);
    for c in changed {
        if frame.binary_search_by_key(&c.id, |(id, _)| *id).is_ok() {
            fresh.push((c.id, c.components));
        } else {
            unknown += 1;
        }
    }
    fresh.sort_by_key(|(id, _)| *id); // stable: of one id, the last given comes last
    (fresh, unknown)
}

/// Emptied vectors kept for their allocations.
#[derive(Debug, Default)]
struct Spare {
    frame: Frame,
    entries: Vec<(NetId, ViewEntity)>,
}

/// Insert or replace every `(id, pos)` of `new` in the sorted `frame` (the last of an id given
/// twice wins).
fn upsert_sorted(frame: &mut Frame, mut new: Vec<(NetId, QPos)>) {
    if new.is_empty() {
        return;
    }
    new.sort_by_key(|(id, _)| *id); // stable: of one id, the last given comes last
    let mut merged = Vec::with_capacity(frame.len() + new.len());
    let mut old = frame.drain(..).peekable();
    let mut new = new.into_iter().peekable();
    while let Some((id, mut pos)) = new.next() {
        while let Some((_, p)) = new.next_if(|(n, _)| *n == id) {
            pos = p;
        }
        while let Some(o) = old.next_if(|(o, _)| *o < id) {
            merged.push(o);
        }
        old.next_if(|(o, _)| *o == id);
        merged.push((id, pos));
    }
    merged.extend(old);
    *frame = merged;
}

/// A headless client's whole state.
#[derive(Debug)]
pub struct BotClient {
    cfg: BotConfig,
    rng: Rng,
    protocol_hash: u64,
    protocol: ProtocolRegistry,
    brain: Brain,
    brain_rng: Rng,
    outbox: Outbox,
    /// Messages since the brain last thought.
    inbox: VecDeque<PlayerMessage>,
    welcome: Option<Welcome>,
    /// The snapshots kept as possible baselines, oldest first: ids and positions only.
    history: VecDeque<(u64, Frame)>,
    /// The newest snapshot whole, components too (what the brain reads): `history`'s last.
    view: View,
    /// Components of entities that left the view, with the tick they left at: a snapshot
    /// against an older baseline that still held them may bring them back unchanged.
    departed: HashMap<NetId, (u64, Arc<[ComponentBlob]>)>,
    /// Allocations to build the next snapshot in.
    spare: Spare,
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
    /// When the connection to the shard being followed to completed its handshake.
    hop_connected_at_us: Option<u64>,
    /// Redirects in the handoff under way (more than one: a chain).
    hops: u32,
    /// The newest `Prepare` not yet taken by the transport ([`Self::take_prepare`]).
    prepare: Option<Prepare>,
    /// The newest resume ticket and the shards to present it to.
    resume: Option<Resume>,
    /// When the bot noticed it lost its shard, until it plays again (or gives up).
    lost_at_us: Option<u64>,
    /// Coming back by a fresh login (the resume failed) rather than a resume.
    relogging: bool,
    /// The `Welcome` of the comeback arrived: its first complete snapshot ends the failover gap.
    back: bool,
    /// The border walk's next end (true: the second).
    walk_to_b: bool,
    /// A crowd bot's current goal, relative to the hot spot's centre (it moves with the hot spot).
    crowd_goal: Option<Vec3>,
    pub metrics: BotMetrics,
}

impl BotClient {
    /// A bot of the demo game ([`BotGame::demo`]).
    pub fn new(cfg: BotConfig) -> Self {
        Self::with_game(cfg, &BotGame::demo())
    }

    /// A bot of `game`: it presents the game's client hash and runs a brain the game makes for
    /// it from its seed.
    pub fn with_game(cfg: BotConfig, game: &BotGame) -> Self {
        let hash = game.protocol.client_hash();
        Self::build(cfg, game, hash)
    }

    /// A demo bot presenting a specific protocol hash (tests use a wrong one on purpose).
    pub fn with_protocol_hash(cfg: BotConfig, protocol_hash: u64) -> Self {
        Self::build(cfg, &BotGame::demo(), protocol_hash)
    }

    fn build(cfg: BotConfig, game: &BotGame, protocol_hash: u64) -> Self {
        let rng = Rng::new(cfg.seed);
        Self {
            brain: Brain((game.brain)(cfg.seed)),
            brain_rng: Rng::new(cfg.seed ^ BRAIN_RNG_SALT),
            protocol: game.protocol.clone(),
            outbox: Outbox::default(),
            inbox: VecDeque::new(),
            cfg,
            rng,
            protocol_hash,
            welcome: None,
            history: VecDeque::new(),
            view: View::new(),
            departed: HashMap::new(),
            spare: Spare::default(),
            partial: BTreeMap::new(),
            latest_tick: 0,
            next_seq: 1,
            in_flight: VecDeque::new(),
            waypoint: Vec3::ZERO,
            cell_map: None,
            redirected_at_us: None,
            switched_from_us: None,
            hop_connected_at_us: None,
            hops: 0,
            prepare: None,
            resume: None,
            lost_at_us: None,
            relogging: false,
            back: false,
            walk_to_b: true,
            crowd_goal: None,
            metrics: BotMetrics::default(),
        }
    }

    /// The first control message on the first connection: `Hello`, with the bot's ticket.
    pub fn hello(&mut self, now_us: u64) -> Vec<u8> {
        self.metrics.tick(now_us);
        self.metrics.connected_at_us = Some(now_us);
        self.login_hello()
    }

    fn login_hello(&self) -> Vec<u8> {
        codec::encode(&ClientControl::Hello(Hello {
            protocol_hash: self.protocol_hash,
            name: self.cfg.name.clone(),
            ticket: self.cfg.ticket.clone(),
            token: None,
            resume: None,
        }))
    }

    /// The bot's shard is lost without a redirect, last heard at `now_us`: the failover gap starts
    /// (unless it runs already: a shard that took the resume died too), and a redirect under way
    /// is no handoff any more. What to do next: [`Self::resume_hello`] to shards of
    /// [`Self::resume_info`], or, without a ticket, [`Self::resume_failed`] and a fresh login.
    pub fn lost_shard(&mut self, now_us: u64) {
        self.metrics.tick(now_us);
        if self.lost_at_us.is_none() {
            self.metrics.failovers += 1;
            self.lost_at_us = Some(now_us);
        }
        self.back = false;
        self.redirect_abandoned();
        self.switched_from_us = None;
        self.prepare = None;
    }

    /// Whether the bot lost its shard and does not play again yet.
    pub fn is_coming_back(&self) -> bool {
        self.lost_at_us.is_some()
    }

    /// Whether the bot comes back by a fresh login (its resume failed).
    pub fn is_relogging(&self) -> bool {
        self.relogging
    }

    /// The newest resume ticket, and where the shard that sent it said to present it.
    pub fn resume_info(&self) -> Option<&Resume> {
        self.resume.as_ref()
    }

    /// `Hello` with the resume ticket (no login ticket, no token), if the bot holds one.
    pub fn resume_hello(&self) -> Option<Vec<u8>> {
        let r = self.resume.as_ref()?;
        Some(codec::encode(&ClientControl::Hello(Hello {
            protocol_hash: self.protocol_hash,
            name: self.cfg.name.clone(),
            ticket: None,
            token: None,
            resume: Some(r.ticket.clone()),
        })))
    }

    /// The resume cannot be done (`why` goes in the report's errors): the bot logs in anew, with
    /// the `Hello` returned (its login ticket), still timed as the same failover.
    pub fn resume_failed(&mut self, why: &str) -> Vec<u8> {
        if !self.relogging {
            self.metrics.resumes_failed += 1;
            self.relogging = true;
        }
        self.metrics.error(&format!("resume: {why}"));
        self.login_hello()
    }

    /// The bot could not get back into the game at all: the failover ends unfinished.
    pub fn gave_up(&mut self, why: &str) {
        self.metrics.error(&format!("failover: {why}"));
        self.lost_at_us = None;
        self.relogging = false;
        self.back = false;
    }

    /// The first control message on the connection a [`Redirect`] asked for. It carries the
    /// redirect's token and no ticket: the token, signed by the cluster, already names the
    /// avatar (or the account and spawn point of a login that came through another shard), and
    /// a ticket's spawn point must not compete with it.
    pub fn hello_redirected(&self, redirect: &Redirect) -> Vec<u8> {
        codec::encode(&ClientControl::Hello(Hello {
            protocol_hash: self.protocol_hash,
            name: self.cfg.name.clone(),
            ticket: None,
            token: Some(redirect.token.clone()),
            resume: None,
        }))
    }

    /// The control messages (encoded `ClientControl`s: game commands, chat) the brain queued
    /// since the last call, in order, for the transport to write on the control stream.
    pub fn take_control(&mut self) -> Vec<Vec<u8>> {
        let queued = std::mem::take(&mut self.outbox.queued);
        queued
            .into_iter()
            .map(|(kind, bytes)| {
                match kind {
                    OutKind::Command => self.metrics.commands_sent += 1,
                    OutKind::Say => self.metrics.says_sent += 1,
                }
                bytes
            })
            .collect()
    }

    /// The redirect could not be followed (the bot stays where it is): it is no handoff.
    pub fn redirect_abandoned(&mut self) {
        self.redirected_at_us = None;
        self.hop_connected_at_us = None;
        self.hops = 0;
    }

    /// The connection a redirect asked for completed its QUIC handshake at `at_us` (the part of
    /// the handoff gap before the new shard had the client's `Hello`).
    pub fn redirect_connected(&mut self, at_us: u64) {
        self.hop_connected_at_us = Some(at_us);
    }

    /// The redirect being followed goes over a connection opened on a `Prepare`
    /// ([`Self::take_prepare`]); its handshake completed at `at_us`, maybe before the redirect.
    pub fn redirect_preconnected(&mut self, at_us: u64) {
        self.metrics.handoffs_preconnected += 1;
        self.redirect_connected(at_us);
    }

    /// Where the shard said a redirect may soon send the bot, once: the transport may open that
    /// connection now and send [`Self::hello_redirected`] on it when the redirect comes.
    pub fn take_prepare(&mut self) -> Option<Prepare> {
        self.prepare.take()
    }

    /// The newest cell map the shard sent.
    pub fn cell_map(&self) -> Option<&CellMapView> {
        self.cell_map.as_ref()
    }

    pub fn welcome(&self) -> Option<&Welcome> {
        self.welcome.as_ref()
    }

    /// Whether the login waits in the login queue (told its place, not admitted yet).
    pub fn is_queued(&self) -> bool {
        self.metrics.queue_first.is_some() && self.metrics.queue_us.is_none()
    }

    /// The newest complete view and its tick.
    pub fn view(&self) -> Option<(u64, &View)> {
        self.history.back().map(|(t, _)| (*t, &self.view))
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
    ///
    /// Player messages are counted and kept for the brain; a `Queued` place is recorded (the
    /// login goes on waiting for its `Welcome` or `Redirect`: see [`Self::is_queued`]); an
    /// `Error` (whatever its code, the login ones included) is the shard's stated reason for
    /// closing, returned as [`BotError::Refused`], never as a protocol error.
    pub fn on_control(&mut self, now_us: u64, bytes: &[u8]) -> Result<Option<Redirect>, BotError> {
        self.metrics.tick(now_us);
        self.metrics.bytes_down += bytes.len() as u64;
        match codec::decode_server_control(bytes) {
            Ok(ServerControl::Welcome(w)) => {
                if w.protocol_hash != self.protocol_hash {
                    self.metrics.error("protocol_mismatch");
                    return Err(BotError::Protocol(
                        "welcome carries another protocol hash".into(),
                    ));
                }
                if self.lost_at_us.is_some() {
                    // Back after losing the shard: a new shard (maybe a new avatar).
                    self.back = true;
                    self.reset_snapshots();
                } else if self.welcome.is_some() {
                    // A new shard: its ticks and baselines have nothing to do with the old one's.
                    self.switched_from_us = self.redirected_at_us.take();
                    if let Some(at) = self.switched_from_us {
                        let since = |t: u64| t.saturating_sub(at).min(u64::from(u32::MAX)) as u32;
                        self.metrics.handoff_welcome_us.push(since(now_us));
                        if let Some(c) = self.hop_connected_at_us.take() {
                            self.metrics.handoff_connect_us.push(since(c));
                        }
                    }
                    self.reset_snapshots();
                } else {
                    self.metrics.welcomed_at_us = Some(now_us);
                    self.metrics.admitted(now_us);
                    self.waypoint = w.spawn.to_vec3();
                }
                self.welcome = Some(w);
                Ok(None)
            }
            Ok(ServerControl::Redirect(r)) => {
                if self.lost_at_us.is_some() {
                    // A resume sent on to where the avatar is: part of the failover.
                } else if self.welcome.is_some() {
                    // A chain of redirects is one handoff, timed from its first.
                    self.redirected_at_us.get_or_insert(now_us);
                    self.hops += 1;
                } else {
                    // A login sent to the shard it was given a seat on.
                    self.metrics.admitted(now_us);
                }
                Ok(Some(r))
            }
            Ok(ServerControl::CellMap(m)) => {
                self.cell_map = Some(m);
                Ok(None)
            }
            Ok(ServerControl::Prepare(p)) => {
                self.metrics.redirects_prepared += 1;
                self.prepare = Some(p);
                Ok(None)
            }
            Ok(ServerControl::Resume(r)) => {
                self.resume = Some(r);
                Ok(None)
            }
            Ok(ServerControl::Queued(place)) => {
                if self.welcome.is_some() {
                    self.metrics.error("queued_after_welcome");
                } else if self.metrics.queue_first.is_none() {
                    self.metrics.queue_first = Some(place);
                } else {
                    self.metrics.queue_updates += 1;
                }
                Ok(None)
            }
            Ok(ServerControl::Message(m)) => {
                self.metrics.messages_received += 1;
                if self.metrics.last_messages.len() >= LAST_MESSAGES_KEPT {
                    self.metrics.last_messages.pop_front();
                }
                self.metrics.last_messages.push_back(m.clone());
                if self.inbox.len() >= INBOX_MAX {
                    self.inbox.pop_front();
                }
                self.inbox.push_back(m);
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

    /// Forget every snapshot: the next shard's ticks and baselines have nothing to do with these.
    fn reset_snapshots(&mut self) {
        self.history.clear();
        self.view = View::new();
        self.departed.clear();
        self.partial.clear();
        self.latest_tick = 0;
        self.in_flight.clear();
    }

    /// A datagram from the shard: a snapshot part.
    pub fn on_datagram(&mut self, now_us: u64, bytes: &[u8]) {
        self.metrics.tick(now_us);
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
            self.metrics.parts_stale += 1;
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
            self.metrics.snapshots_incomplete += 1;
        }
    }

    fn apply(&mut self, now_us: u64, tick: u64, baseline: u64, parts: Vec<SnapshotPart>) {
        // Into the allocation of the frame that left the history last, rather than a fresh one
        // (and its first touches) per snapshot.
        let mut frame = std::mem::take(&mut self.spare.frame);
        frame.clear();
        if baseline != 0 {
            match self.history.iter().find(|(t, _)| *t == baseline) {
                Some((_, f)) => frame.extend_from_slice(f),
                None => {
                    self.metrics.error("missing_baseline");
                    return;
                }
            }
        }
        let (fresh, unknown) = apply_parts(&mut frame, parts);
        let view = self.view_of(tick, &frame, fresh);
        if unknown > 0 {
            self.metrics.errors_n("update_for_unknown_entity", unknown);
        }
        let sees_itself = self.welcome.as_ref().map(|w| view.contains_key(&w.avatar));
        if sees_itself == Some(false) {
            self.metrics.avatar_missing += 1;
        }
        self.metrics.played(now_us, sees_itself == Some(true));
        self.latest_tick = tick;
        let begun = self.partial.len();
        self.partial.retain(|t, _| *t > tick);
        self.metrics.snapshots_incomplete += (begun - self.partial.len()) as u64;
        if self.history.len() >= CLIENT_HISTORY_TICKS
            && let Some((_, f)) = self.history.pop_front()
        {
            self.spare.frame = f;
        }
        self.history.push_back((tick, frame));
        self.view = view;
        // Components of entities that left are needed only while a frame that holds them may
        // still be a baseline.
        if let Some(&(oldest, _)) = self.history.front() {
            self.departed.retain(|_, (left, _)| *left > oldest);
        }
        self.metrics.snapshots += 1;
        self.metrics.timeline.snapshot(now_us);
        self.metrics.timeline.connected(now_us);
        if let Some(at) = self.switched_from_us.take() {
            let gap = now_us.saturating_sub(at);
            self.metrics.handoffs += 1;
            self.metrics.timeline.handoff(now_us, gap);
            self.metrics
                .handoff_gap_us
                .push(gap.min(u64::from(u32::MAX)) as u32);
            if std::mem::take(&mut self.hops) > 1 {
                self.metrics.handoffs_chained += 1;
            }
        }
        if self.back
            && let Some(at) = self.lost_at_us.take()
        {
            self.back = false;
            let gap = now_us.saturating_sub(at);
            self.metrics
                .failover_gap_us
                .push(gap.min(u64::from(u32::MAX)) as u32);
            if std::mem::take(&mut self.relogging) {
                self.metrics.relogins += 1;
            } else {
                self.metrics.resumes += 1;
            }
        }
        self.metrics.last_snapshot_at_us = Some(now_us);
    }

    /// The view of `frame` at `tick`, its components from `fresh` (sorted by id; of one id the
    /// last wins), else from the newest view (an entity unchanged since the baseline is
    /// unchanged since any later snapshot too: revisions only grow), else from `departed`. The
    /// newest view is taken apart, not copied: components move, no reference count is touched
    /// for the entities that stay, which is most of them (copying and dropping whole views was
    /// about a fifth of a 600-bot crowd's bot CPU). What left the view moves to `departed`.
    fn view_of(
        &mut self,
        tick: u64,
        frame: &Frame,
        fresh: Vec<(NetId, Arc<[ComponentBlob]>)>,
    ) -> View {
        let mut old_entries = std::mem::take(&mut self.view).into_entries();
        let mut old = old_entries.drain(..).peekable();
        let mut fresh = fresh.into_iter().peekable();
        let mut entries = std::mem::take(&mut self.spare.entries);
        entries.clear();
        entries.reserve(frame.len());
        let mut lost = 0u64;
        for &(id, pos) in frame {
            while let Some((left, e)) = old.next_if(|(o, _)| *o < id) {
                self.departed.insert(left, (tick, e.components));
            }
            let kept = old.next_if(|(o, _)| *o == id).map(|(_, e)| e.components);
            while fresh.next_if(|(f, _)| *f < id).is_some() {}
            let mut given = None;
            while let Some((_, c)) = fresh.next_if(|(f, _)| *f == id) {
                given = Some(c);
            }
            let components = match given.or(kept) {
                Some(c) => c,
                None => match self.departed.remove(&id) {
                    Some((_, c)) => c,
                    None => {
                        lost += 1;
                        Arc::from(Vec::new())
                    }
                },
            };
            entries.push((id, ViewEntity { pos, components }));
        }
        for (left, e) in old {
            self.departed.insert(left, (tick, e.components));
        }
        self.spare.entries = old_entries;
        if lost > 0 {
            self.metrics.errors_n("components_lost", lost);
        }
        View::from_sorted(entries)
    }

    /// The next input datagram; call once per client tick after login. The game's brain thinks
    /// here, after the scenario picked its target: afterwards [`Self::take_control`] has what it
    /// wants sent.
    pub fn next_input(&mut self, now_us: u64) -> Option<Vec<u8>> {
        self.metrics.tick(now_us);
        let w = self.welcome.clone()?;
        self.metrics.timeline.connected(now_us);
        let wander = self.cfg.scenario == Scenario::Wander
            || (self.cfg.scenario == Scenario::Border && self.cfg.border.is_none())
            || (self.cfg.scenario.gathers() && self.cfg.hotspot.is_none());
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
        if let Some(h) = self.cfg.hotspot.filter(|_| self.cfg.scenario.gathers()) {
            let here = self.avatar_pos().unwrap_or(w.spawn.to_vec3());
            self.waypoint = self.crowd_target(&h, now_us, here, w.bounds);
        }
        let target = self.think(now_us, w.avatar).unwrap_or(self.waypoint);
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
            target: QPos::quantize(target),
        };
        Some(codec::encode(&ClientDatagram::Input(input)))
    }

    /// Where a crowd bot heads at `now_us`: its goal in the crowd, which moves with the hot spot.
    /// Once there it picks the next one, so the crowd keeps milling about (a standing crowd
    /// would load the shard less than a real one does).
    fn crowd_target(&mut self, h: &Hotspot, now_us: u64, here: Vec3, bounds: [f32; 4]) -> Vec3 {
        let centre = h.at(now_us);
        let [min_x, min_z, max_x, max_z] = bounds;
        let clamp = |p: Vec3| Vec3::new(p.x.clamp(min_x, max_x), 0.0, p.z.clamp(min_z, max_z));
        let reached = self
            .crowd_goal
            .is_none_or(|g| here.distance(clamp(centre + g)) < 1.0);
        if reached {
            self.crowd_goal = Some(h.offset(&mut self.rng));
        }
        clamp(centre + self.crowd_goal.unwrap_or(Vec3::ZERO))
    }

    /// Let the brain think; returns where it wants the avatar to head this tick, if anywhere.
    fn think(&mut self, now_us: u64, avatar: NetId) -> Option<Vec3> {
        let view = (!self.history.is_empty()).then_some(&self.view);
        let position = view.and_then(|v| v.get(&avatar)).map(|e| e.pos.to_vec3());
        let mut ctx = BrainCtx {
            now_us,
            avatar: Some(avatar),
            position,
            view,
            protocol: &self.protocol,
            rng: &mut self.brain_rng,
            inbox: &self.inbox,
            out: &mut self.outbox,
        };
        self.brain.0.think(&mut ctx);
        self.inbox.clear();
        for (kind, n) in std::mem::take(&mut self.outbox.errors) {
            self.metrics.errors_n(kind, n);
        }
        self.outbox.move_to.take()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::game::CONTROL_QUEUED_MAX;
    use bitcode::{Decode, Encode};
    use zonescaler_shared::components::{
        EXAMPLE_GAME_COMPONENTS, GameCommand, Health, Kind, Replicated,
    };
    use zonescaler_shared::ticket::LoginKeys;

    const S: u64 = 1_000_000;

    #[derive(Debug, PartialEq, Encode, Decode)]
    struct Attack {
        target: u64,
    }

    impl GameCommand for Attack {
        const NAME: &'static str = "test.Attack";
    }

    /// Not registered by the test game.
    #[derive(Encode, Decode)]
    struct Dance;

    impl GameCommand for Dance {
        const NAME: &'static str = "test.Dance";
    }

    fn welcome(hash: u64) -> Vec<u8> {
        codec::encode(&ServerControl::Welcome(Welcome {
            avatar: NetId(1),
            spawn: QPos([0, 0, 0]),
            tick: 1,
            tick_hz: 30,
            protocol_hash: hash,
            bounds: [-100.0, -100.0, 100.0, 100.0],
            max_speed_mps: 8.0,
            aoi_radius_m: 40.0,
        }))
    }

    /// A full snapshot: our avatar at the origin and a wounded NPC at x = 5 m.
    fn snapshot(tick: u64) -> Vec<u8> {
        let blob = |kind: &str, bytes: Vec<u8>| ComponentBlob {
            kind: EXAMPLE_GAME_COMPONENTS
                .iter()
                .position(|n| *n == kind)
                .expect("an example component") as u8,
            bytes,
        };
        codec::encode(&ServerDatagram::Snapshot(SnapshotPart {
            tick,
            parts: 1,
            rare: Some(RareUpdates {
                spawned: vec![
                    Spawned {
                        id: NetId(1),
                        pos: QPos([0, 0, 0]),
                        components: vec![blob(Kind::NAME, bitcode::encode(&Kind::Player))].into(),
                    },
                    Spawned {
                        id: NetId(2),
                        pos: QPos([500, 0, 0]),
                        components: vec![
                            blob(Kind::NAME, bitcode::encode(&Kind::Npc)),
                            blob(Health::NAME, bitcode::encode(&Health { hp: 3, max: 10 })),
                        ]
                        .into(),
                    },
                ],
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    /// Attacks every wounded NPC in view, shouts about it, tells a name too long to exist,
    /// and heads for its target.
    struct Hunter;

    impl BotBrain for Hunter {
        fn think(&mut self, ctx: &mut BrainCtx<'_>) {
            assert_eq!(ctx.position(), Some(Vec3::ZERO), "own avatar at the origin");
            assert!(!ctx.send_command(&Dance), "the game has no Dance command");
            let prey: Vec<(NetId, Vec3)> = ctx
                .view()
                .into_iter()
                .flatten()
                .filter(|(_, e)| {
                    ctx.component::<Kind>(e) == Some(Kind::Npc)
                        && ctx.component::<Health>(e).is_some_and(|h| h.hp < h.max)
                })
                .map(|(id, e)| (*id, e.pos.to_vec3()))
                .collect();
            for (id, pos) in prey {
                assert!(ctx.send_command(&Attack { target: id.0 }));
                ctx.say(None, &"charge! ".repeat(100));
                ctx.say(Some(&"x".repeat(100)), "psst");
                ctx.move_to(pos);
            }
            let _ = ctx.rng().next_u64();
        }
    }

    fn hunting_game() -> BotGame {
        let mut protocol =
            ProtocolRegistry::with_components(&EXAMPLE_GAME_COMPONENTS).expect("distinct");
        protocol.register_command(Attack::NAME, true).expect("new");
        BotGame::new("hunt", protocol, |_| Box::new(Hunter))
    }

    /// A shard's model for [`a_view_is_what_the_shard_sent_whatever_baseline_it_named`]: what it
    /// sent at each tick (id → position, revision, components).
    type Sent = BTreeMap<NetId, (QPos, u32, Arc<[ComponentBlob]>)>;

    /// The delta from `base` to `now` as a shard encodes it: moves by the baseline's index,
    /// spawns, changes by revision, removals.
    fn delta(tick: u64, base_tick: u64, base: &Sent, now: &Sent) -> Vec<u8> {
        let mut moved = Vec::new();
        let mut rare = RareUpdates::default();
        let mut last = None::<usize>;
        for (i, (id, (pos, rev, _))) in base.iter().enumerate() {
            let Some((p, r, c)) = now.get(id) else {
                rare.removed.push(*id);
                continue;
            };
            if p != pos {
                let gap = last.map_or(i, |l| i - l - 1);
                let d = [0, 1, 2].map(|k| (p.0[k] - pos.0[k]) as i16);
                moved.push(Moved {
                    index_gap: gap as u32,
                    delta: d,
                });
                last = Some(i);
            }
            if r != rev {
                rare.changed.push(Changed {
                    id: *id,
                    components: c.clone(),
                });
            }
        }
        for (id, (p, _, c)) in now {
            if !base.contains_key(id) {
                rare.spawned.push(Spawned {
                    id: *id,
                    pos: *p,
                    components: c.clone(),
                });
            }
        }
        codec::encode(&ServerDatagram::Snapshot(SnapshotPart {
            tick,
            baseline_age: if base_tick == 0 {
                0
            } else {
                (tick - base_tick) as u8
            },
            parts: 1,
            moved,
            rare: Some(rare),
            ..Default::default()
        }))
    }

    /// A bot behind its datagrams is seen in its report: parts of snapshots older than the one
    /// it holds whole are counted stale, snapshots it began and never completed incomplete.
    #[test]
    fn stale_parts_and_incomplete_snapshots_are_counted() {
        let mut bot = BotClient::new(BotConfig::new("b", Scenario::Idle, 1));
        let hash = bot.protocol_hash;
        bot.on_control(0, &welcome(hash)).expect("welcomed");
        // Part 0 of 2 of tick 3: begun, never finished.
        let half = codec::encode(&ServerDatagram::Snapshot(SnapshotPart {
            tick: 3,
            parts: 2,
            ..Default::default()
        }));
        bot.on_datagram(1, &half);
        bot.on_datagram(2, &snapshot(5));
        assert_eq!(bot.metrics.snapshots, 1);
        assert_eq!(
            (bot.metrics.snapshots_incomplete, bot.metrics.parts_stale),
            (1, 0),
            "tick 3 was overtaken by tick 5"
        );
        // Tick 4 arrives late, and tick 5 again: both useless now.
        bot.on_datagram(3, &snapshot(4));
        bot.on_datagram(4, &snapshot(5));
        assert_eq!(
            (bot.metrics.snapshots, bot.metrics.parts_stale),
            (1, 2),
            "a part older than the snapshot held whole is stale"
        );
    }

    #[test]
    fn a_view_is_what_the_shard_sent_whatever_baseline_it_named() {
        // Entities move, change, leave the view and come back, while snapshots get lost and
        // each names a baseline a few ticks old: the bot keeps positions per tick but
        // components once, so one that left and came back unchanged against an old baseline
        // must still have its components.
        let mut rng = Rng::new(7);
        let mut bot = BotClient::new(BotConfig::new("b", Scenario::Idle, 1));
        bot.on_control(0, &welcome(bot.protocol_hash))
            .expect("welcomed");
        let mut world: BTreeMap<NetId, (QPos, u32, bool)> = (1..=40)
            .map(|i| (NetId(i), (QPos([i as i32 * 100, 0, 0]), 0, true)))
            .collect();
        let comps = |id: NetId, rev: u32| -> Arc<[ComponentBlob]> {
            vec![ComponentBlob {
                kind: 0,
                bytes: [id.0.to_le_bytes(), u64::from(rev).to_le_bytes()].concat(),
            }]
            .into()
        };
        let mut sent: BTreeMap<u64, Sent> = BTreeMap::new();
        let mut received: Vec<u64> = Vec::new();
        let (mut came_back, mut old_baselines) = (0, 0);
        for tick in 1..=3_000u64 {
            for (id, (pos, rev, visible)) in world.iter_mut() {
                if rng.next_u64().is_multiple_of(3) {
                    pos.0[0] += (rng.next_u64() % 200) as i32 - 100;
                }
                if rng.next_u64().is_multiple_of(20) {
                    *rev += 1;
                }
                if rng.next_u64().is_multiple_of(15) {
                    *visible = !*visible || id.0 == 1;
                }
            }
            let now: Sent = world
                .iter()
                .filter(|(_, (_, _, v))| *v)
                .map(|(id, (p, r, _))| (*id, (*p, *r, comps(*id, *r))))
                .collect();
            // The newest acknowledgement the shard has, lagging a few ticks; now and then none.
            let lag = 1 + (rng.next_u64() % 6) as usize;
            let base_tick = if rng.next_u64().is_multiple_of(50) {
                0
            } else {
                received
                    .iter()
                    .rev()
                    .nth(lag.min(received.len().max(1)) - 1)
                    .copied()
                    .unwrap_or(0)
            };
            let empty = Sent::new();
            let base = sent.get(&base_tick).unwrap_or(&empty);
            if base_tick + 1 < received.last().copied().unwrap_or(0) {
                old_baselines += 1;
                came_back += now
                    .keys()
                    .filter(|id| {
                        base.contains_key(id)
                            && !sent[received.last().expect("one")].contains_key(id)
                    })
                    .count();
            }
            let bytes = delta(tick, base_tick, base, &now);
            sent.insert(tick, now.clone());
            if rng.next_u64().is_multiple_of(5) {
                continue; // lost
            }
            bot.on_datagram(tick * 33_000, &bytes);
            received.push(tick);
            let (t, view) = bot.view().expect("a view");
            assert_eq!(t, tick);
            let seen: Vec<_> = view
                .iter()
                .map(|(id, e)| (*id, e.pos, e.components.clone()))
                .collect();
            let want: Vec<_> = now
                .iter()
                .map(|(id, (p, _, c))| (*id, *p, c.clone()))
                .collect();
            assert_eq!(seen, want, "tick {tick} against baseline {base_tick}");
        }
        assert!(bot.metrics.errors.is_empty(), "{:?}", bot.metrics.errors);
        assert!(
            old_baselines > 1_000 && came_back > 100,
            "the run tried what it is about: {old_baselines} old baselines, {came_back} \
             entities back in view against one"
        );
    }

    #[test]
    fn a_brain_reads_components_and_its_commands_chat_and_moves_go_out() {
        let game = hunting_game();
        let mut bot = BotClient::with_game(BotConfig::new("b", Scenario::Idle, 1), &game);
        let hello = bot.hello(0);
        let Ok(ClientControl::Hello(h)) = codec::decode_client_control(&hello) else {
            panic!("hello is a Hello");
        };
        assert_eq!(h.protocol_hash, game.protocol.client_hash());
        bot.on_control(1, &welcome(game.protocol.client_hash()))
            .expect("welcomed");
        bot.on_datagram(2, &snapshot(2));
        let input = bot.next_input(3).expect("an input");
        let Ok(ClientDatagram::Input(input)) = codec::decode_client_datagram(&input) else {
            panic!("an input datagram");
        };
        assert_eq!(
            input.target,
            QPos([500, 0, 0]),
            "the brain's move_to overrides the idle scenario this tick"
        );
        let out = bot.take_control();
        assert_eq!(
            out.len(),
            2,
            "the command and the shout; the bad tell is dropped"
        );
        let Ok(ClientControl::Command(c)) = codec::decode_client_control(&out[0]) else {
            panic!("a command first");
        };
        assert_eq!(c.kind, 0, "Attack is the game's first client command");
        assert_eq!(
            bitcode::decode::<Attack>(&c.bytes).expect("an Attack"),
            Attack { target: 2 }
        );
        let Ok(ClientControl::Say(say)) = codec::decode_client_control(&out[1]) else {
            panic!("then a chat line");
        };
        assert_eq!(say.to, None);
        assert_eq!(
            say.text.len(),
            zonescaler_shared::limits::CHAT_TEXT_BYTES_MAX,
            "an over-long line is cut to what the shard accepts"
        );
        assert_eq!((bot.metrics.commands_sent, bot.metrics.says_sent), (1, 1));
        assert_eq!(bot.metrics.errors.get("say_to_bad_name"), Some(&1));
        assert!(bot.take_control().is_empty(), "taken once");
        let next = bot.next_input(4).expect("an input");
        let Ok(ClientDatagram::Input(next)) = codec::decode_client_datagram(&next) else {
            panic!("an input datagram");
        };
        assert_eq!(
            next.target,
            QPos([500, 0, 0]),
            "it still hunts while prey is in view"
        );
    }

    #[test]
    fn a_brain_that_floods_is_cut_off_at_the_queue_bound() {
        struct Flood;
        impl BotBrain for Flood {
            fn think(&mut self, ctx: &mut BrainCtx<'_>) {
                for _ in 0..CONTROL_QUEUED_MAX + 10 {
                    ctx.say(None, "spam");
                }
            }
        }
        let game = BotGame::new("flood", ProtocolRegistry::new(), |_| Box::new(Flood));
        let mut bot = BotClient::with_game(BotConfig::new("b", Scenario::Idle, 1), &game);
        bot.on_control(1, &welcome(game.protocol.client_hash()))
            .expect("welcomed");
        let _ = bot.next_input(2);
        assert_eq!(bot.take_control().len(), CONTROL_QUEUED_MAX);
        assert_eq!(bot.metrics.errors.get("control_queue_full"), Some(&10));
    }

    #[test]
    fn player_messages_and_login_refusals_are_no_protocol_errors() {
        let mut bot = BotClient::new(BotConfig::new("b", Scenario::Idle, 1));
        for i in 0..LAST_MESSAGES_KEPT + 2 {
            let msg = codec::encode(&ServerControl::Message(PlayerMessage {
                from: "ann".into(),
                text: format!("hi {i}"),
                scope: MessageScope::Shout,
            }));
            assert_eq!(
                bot.on_control(1, &msg),
                Ok(None),
                "a message needs no action"
            );
        }
        assert_eq!(bot.metrics.messages_received, LAST_MESSAGES_KEPT as u64 + 2);
        let kept: Vec<&str> = bot
            .metrics
            .last_messages
            .iter()
            .map(|m| m.text.as_str())
            .collect();
        assert_eq!(kept.len(), LAST_MESSAGES_KEPT);
        assert_eq!(kept.last(), Some(&"hi 9"), "the newest are kept");
        for code in [
            ErrorCode::BadTicket,
            ErrorCode::AccountInUse,
            ErrorCode::SessionTakenOver,
            ErrorCode::NoRoom,
        ] {
            let e = codec::encode(&ServerControl::Error(ErrorMsg {
                code,
                detail: "no".into(),
            }));
            assert_eq!(
                bot.on_control(2, &e),
                Err(BotError::Refused {
                    code: code.as_str(),
                    detail: "no".into()
                })
            );
            assert_eq!(bot.metrics.errors.get(code.as_str()), Some(&1));
        }
        assert!(
            !bot.metrics.errors.contains_key("bad_control_message"),
            "{:?}",
            bot.metrics.errors
        );
    }

    #[test]
    fn a_queued_login_records_its_place_and_how_long_it_waited() {
        let hash = BotGame::demo().protocol.client_hash();
        let place = |position, waiting| {
            codec::encode(&ServerControl::Queued(QueuePlace { position, waiting }))
        };
        let mut bot = BotClient::new(BotConfig::new("q", Scenario::Idle, 1));
        let _ = bot.hello(S);
        assert_eq!(bot.on_control(S + 1, &place(3, 3)), Ok(None));
        assert!(bot.is_queued());
        assert_eq!(bot.on_control(2 * S, &place(2, 5)), Ok(None));
        assert_eq!(bot.on_control(3 * S, &place(1, 5)), Ok(None));
        bot.on_control(4 * S, &welcome(hash)).expect("admitted");
        assert!(!bot.is_queued());
        let m = &bot.metrics;
        assert_eq!(
            (m.queue_first, m.queue_updates, m.queue_us),
            (
                Some(QueuePlace {
                    position: 3,
                    waiting: 3
                }),
                2,
                Some(3 * S)
            ),
            "first place, two moves, Hello to Welcome"
        );
        // Admitted by a redirect to the shard it was given: that ends the wait too.
        let mut bot = BotClient::new(BotConfig::new("r", Scenario::Idle, 1));
        let _ = bot.hello(0);
        bot.on_control(1, &place(1, 1)).expect("queued");
        let redirect = codec::encode(&ServerControl::Redirect(Redirect {
            shard: zonescaler_shared::ShardId(1),
            addr: "127.0.0.1:1".into(),
            token: vec![1],
        }));
        assert!(matches!(bot.on_control(S, &redirect), Ok(Some(_))));
        assert_eq!(bot.metrics.queue_us, Some(S));
        bot.on_control(2 * S, &welcome(hash))
            .expect("welcomed there");
        assert_eq!(bot.metrics.queue_us, Some(S), "timed once");
        let plain = BotClient::new(BotConfig::new("p", Scenario::Idle, 1));
        assert_eq!(
            plain.metrics.queue_us, None,
            "a bot that never waited has no queue time"
        );
    }

    #[test]
    fn the_timeline_counts_each_event_in_its_second() {
        let mut bot = BotClient::new(BotConfig::new("b", Scenario::Idle, 1));
        let hash = BotGame::demo().protocol.client_hash();
        let _ = bot.hello(0);
        bot.on_control(S / 10, &welcome(hash)).expect("welcomed");
        bot.on_datagram(S / 2, &snapshot(2));
        let _ = bot.next_input(S + S / 5);
        // A handoff: redirect in second 1, the new shard's first snapshot in second 2.
        let redirect = codec::encode(&ServerControl::Redirect(Redirect {
            shard: zonescaler_shared::ShardId(2),
            addr: "127.0.0.1:1".into(),
            token: vec![1],
        }));
        assert!(matches!(bot.on_control(S + S / 2, &redirect), Ok(Some(_))));
        bot.on_control(2 * S, &welcome(hash))
            .expect("welcomed again");
        bot.on_datagram(2 * S + 1, &snapshot(5));
        bot.on_datagram(3 * S, b"\xff garbage");
        let t = &bot.metrics.timeline;
        let at = |s: u32| t.get(s).unwrap_or_default();
        assert_eq!((at(0).connected, at(0).snapshots), (1, 1), "{t:?}");
        assert_eq!((at(1).connected, at(1).snapshots), (1, 0), "{t:?}");
        assert_eq!((at(2).handoffs, at(2).snapshots), (1, 1), "{t:?}");
        assert_eq!(at(3).errors, 1, "{t:?}");
        assert_eq!(
            bot.metrics.handoff_gap_us,
            [S as u32 / 2 + 1],
            "the gap runs from the redirect to the new shard's first snapshot"
        );
        assert_eq!(at(2).gap_ms_max, 500, "{t:?}");
        assert_eq!(bot.metrics.handoffs_chained, 0);
        // A chain: the shard the bot was sent to has handed the avatar on before the bot got
        // there, and redirects it again. One handoff, timed from the first redirect, chained.
        assert!(matches!(bot.on_control(4 * S, &redirect), Ok(Some(_))));
        assert!(matches!(
            bot.on_control(4 * S + S / 4, &redirect),
            Ok(Some(_))
        ));
        bot.on_control(4 * S + S / 2, &welcome(hash))
            .expect("welcomed at the end of the chain");
        bot.on_datagram(4 * S + S / 2 + 7, &snapshot(9));
        assert_eq!(
            (bot.metrics.handoffs, bot.metrics.handoffs_chained),
            (2, 1),
            "a chain of redirects is one handoff, counted as chained"
        );
        assert_eq!(bot.metrics.handoff_gap_us[1], S as u32 / 2 + 7);
        // The next plain handoff is not chained: the count of hops starts again.
        assert!(matches!(bot.on_control(6 * S, &redirect), Ok(Some(_))));
        bot.on_control(6 * S + 1, &welcome(hash)).expect("welcomed");
        bot.on_datagram(6 * S + 2, &snapshot(12));
        assert_eq!((bot.metrics.handoffs, bot.metrics.handoffs_chained), (3, 1));
    }

    #[test]
    fn a_bot_plays_while_snapshots_show_it_its_avatar_and_not_across_a_lost_shard() {
        let mut bot = BotClient::new(BotConfig::new("b", Scenario::Idle, 1));
        let hash = BotGame::demo().protocol.client_hash();
        let _ = bot.hello(0);
        bot.on_control(S, &welcome(hash))
            .expect("welcomed 1 s into its run");
        // A snapshot every tick (33 ms) from 1 s to 10 s: 9 s of play.
        let tick_us = 33_000;
        let mut tick = 2;
        let mut now = S;
        while now <= 10 * S {
            bot.on_datagram(now, &snapshot(tick));
            (tick, now) = (tick + 1, now + tick_us);
        }
        let last = now - tick_us;
        // Its shard dies: 3 s of nothing (half a second of it still counts, as a late
        // snapshot would), then it is back from 13 s to the run's end at 20 s.
        now = 13 * S;
        while now <= 20 * S {
            bot.on_datagram(now, &snapshot(tick));
            (tick, now) = (tick + 1, now + tick_us);
        }
        bot.metrics.end_run(0, 20 * S);
        // Each snapshot counts until the next; the last one until the run's end.
        let played = (last - S) + PLAYING_COVER_US + (20 * S - 13 * S);
        assert_eq!(bot.metrics.playing_us, played);
        let f = bot.metrics.playing_fraction().expect("the run ended");
        assert!((f - played as f64 / (20 * S) as f64).abs() < 1e-9, "{f}");
        assert!((0.82..0.84).contains(&f), "about 16.5 s of 20: {f}");
        // Snapshots that do not show its avatar are no play.
        let mut lost = BotClient::new(BotConfig::new("c", Scenario::Idle, 1));
        lost.on_control(0, &welcome(hash)).expect("welcomed");
        let mut blind = welcome(hash);
        if let Ok(ServerControl::Welcome(mut w)) = codec::decode_server_control(&blind) {
            w.avatar = NetId(99);
            blind = codec::encode(&ServerControl::Welcome(w));
        }
        lost.on_control(0, &blind)
            .expect("welcomed as another avatar");
        for t in 1..30 {
            lost.on_datagram(t * tick_us, &snapshot(t + 1));
        }
        lost.metrics.end_run(0, S);
        assert_eq!(lost.metrics.playing_fraction(), Some(0.0));
        assert_eq!(BotMetrics::default().playing_fraction(), None, "no run yet");
    }

    /// The target of an input datagram.
    fn target_of(bytes: &[u8]) -> Vec3 {
        let Ok(ClientDatagram::Input(i)) = codec::decode_client_datagram(bytes) else {
            panic!("an input datagram");
        };
        i.target.to_vec3()
    }

    #[test]
    fn crowd_bots_start_and_walk_inside_their_hot_spot_as_it_travels() {
        // The test welcome's world is 200 m square: the hot spot crosses it in 10 s.
        let h = Hotspot {
            from: Vec3::new(-50.0, 0.0, 0.0),
            to: Vec3::new(50.0, 0.0, 0.0),
            radius_m: 10.0,
            travel_us: 10 * S,
        };
        let mut cfg = BotConfig::new("c", Scenario::Migrate, 5);
        cfg.hotspot = Some(h);
        cfg.login_at_us = 5 * S;
        let spawn = cfg.spawn_point().expect("a crowd bot asks for a start");
        assert!(spawn.distance(h.at(5 * S)) <= 10.0, "in the crowd: {spawn}");
        assert_eq!(cfg.spawn_point(), Some(spawn), "the same every time");
        let other = BotConfig {
            seed: 6,
            ..cfg.clone()
        };
        assert_ne!(other.spawn_point(), Some(spawn), "each bot its own place");

        let hash = BotGame::demo().protocol.client_hash();
        let mut bot = BotClient::new(cfg.clone());
        bot.on_control(1, &welcome(hash)).expect("welcomed");
        let mut targets = Vec::new();
        for step in 0..=100 {
            let now = step * S / 10;
            let t = target_of(&bot.next_input(now).expect("an input"));
            assert!(
                t.distance(h.at(now)) <= 10.0 + 0.01,
                "at {now} µs the target {t} is within 10 m of the hot spot {}",
                h.at(now)
            );
            targets.push(t);
        }
        assert!(
            targets[100].x - targets[0].x > 70.0,
            "the targets travel with the hot spot: {} → {}",
            targets[0],
            targets[100]
        );
        let mut again = BotClient::new(cfg);
        again.on_control(1, &welcome(hash)).expect("welcomed");
        let replay: Vec<Vec3> = (0..=100)
            .map(|step| target_of(&again.next_input(step * S / 10).expect("an input")))
            .collect();
        assert_eq!(replay, targets, "same seed and times, same targets");

        let mut lost = BotConfig::new("w", Scenario::Crowd, 5);
        lost.login_at_us = S;
        assert_eq!(lost.spawn_point(), None, "no hot spot: the shard picks");
    }

    #[test]
    fn a_signed_ticket_names_the_bot_and_where_its_border_walk_starts() {
        let signer = TicketSigner::from_seed("k", [1; 32]).expect("key");
        let ring: LoginKeys = signer.public_keys();
        let mut cfg = BotConfig::new("bot-3", Scenario::Border, 1);
        cfg.border = Some((Vec3::new(-10.0, 0.0, 5.0), Vec3::new(10.0, 0.0, 5.0)));
        cfg.border_start = 0.25;
        cfg.sign_ticket(&signer, 1_000);
        let t = ring
            .verify(cfg.ticket.as_deref().expect("signed"), 999)
            .expect("valid");
        assert_eq!(t.account, "bot-3");
        assert_eq!(t.spawn, Some(QPos([-500, 0, 500])), "a quarter of the way");
        assert_eq!(t.expires_ms, 1_000);
        let mut bot = BotClient::new(cfg.clone());
        let Ok(ClientControl::Hello(h)) = codec::decode_client_control(&bot.hello(0)) else {
            panic!("a Hello");
        };
        assert_eq!(h.ticket, cfg.ticket, "Hello carries the ticket");
        let wander = BotConfig {
            scenario: Scenario::Wander,
            ..cfg
        };
        assert_eq!(
            wander.spawn_point(),
            None,
            "only border bots ask for a start"
        );
    }
}
