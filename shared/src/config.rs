//! World configuration, read from TOML.
//!
//! Every field has a default (see `assets/worlds/default.toml` for the documented reference), an
//! unknown key is an error (a typo must not silently fall back to a default), and
//! [`WorldConfig::validate`] turns nonsense (a non-positive cell size, inverted bounds) into a
//! [`ConfigError`] whose one-line message names the field.

use crate::limits;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Why a config could not be used. `Display` is one line that names the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read world config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid world config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid world config {path}: `{field}` {problem}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        problem: String,
    },
}

/// The whole world config file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorldConfig {
    pub world: WorldSection,
    pub simulation: SimulationSection,
    pub interest: InterestSection,
    pub npc: NpcSection,
    pub tls: TlsSection,
    pub cluster: ClusterSection,
    pub login: LoginSection,
    pub balancer: BalancerSection,
    /// `[game]`: the game's own settings, passed through unread for the game to parse
    /// (`Res<Config>`'s `game`). Part of the cluster hash: shards with different game settings
    /// refuse each other.
    pub game: toml::Table,
}

/// `[login]`: who may play. With `keys` set, every login needs a ticket signed by one of those
/// keys (the game's account service holds the private halves) and plays the account it names;
/// without, anyone may log in under any name (development only: the shard says so at start).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginSection {
    /// Login key file (TOML `[[key]]` tables with `id` and `public`; see `zonescaler ticket`).
    pub keys: Option<PathBuf>,
    /// What a second login of an account that is already playing does.
    pub duplicate: DuplicateLogin,
}

/// The rule for a second session of one account.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DuplicateLogin {
    /// The new login plays; the old session is closed with `session_taken_over` (a player who
    /// lost their connection logs straight back in).
    #[default]
    Takeover,
    /// The new login is refused with `account_in_use` while the old one plays.
    Refuse,
}

/// Shortest cluster secret accepted (bytes): 128 bits.
pub const CLUSTER_SECRET_BYTES_MIN: usize = 16;

/// `[cluster]`: how shards of one world work together.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// An entity is handed to a neighbour only once it is this far (metres) from every cell its
    /// owner holds, so one pacing on a border does not flap.
    pub handoff_margin_m: f32,
    /// A handoff unanswered this long is cancelled (the entity stays frozen until the answer).
    pub handoff_timeout_ms: u64,
    /// A cell move's source offers at most this many of the cell's entities to the target per
    /// tick, so neither tick stalls while a crowded cell moves.
    pub cell_move_batch: u32,
    /// Of those, at most this many players' avatars per tick: each brings its client along, a
    /// new connection and a first full snapshot on the target, so a crowd's cell moved in one
    /// batch had all its clients reconnect in the same tick.
    pub cell_move_players_per_tick: u32,
    /// A cell move not finished this long after it started is aborted: the source keeps the
    /// cell, and whatever the target took meanwhile is handed back.
    pub cell_move_timeout_ms: u64,
    /// The cluster secret (at least 16 bytes) that proves membership on shard links and signs
    /// client redirect tokens. Prefer the `ZONESCALER_CLUSTER_SECRET` environment variable, which
    /// overrides this, to keeping a secret in a file.
    pub secret: Option<String>,
    /// Players one shard takes at login (its cap). When the shard a login would go to is at its
    /// cap, the login plays on another shard with room; when every shard is, it waits in the
    /// login queue. 0: no shard takes players (every login is refused with `no_room`). Players
    /// who walk across a border are never refused: the cap is checked at login only.
    pub clients_per_shard_max: u32,
    /// Logins that may wait for room, cluster-wide (at most `limits::LOGIN_QUEUE_MAX`); past it a
    /// login is refused with `no_room`. 0: no queue.
    pub login_queue_max: u32,
    /// Client connections (handshaking or established) that one source address, or one IPv6
    /// /64, may hold on a shard; the next is refused at its first packet. It stops one host from
    /// taking every slot. A load test that runs more bots than this from one machine against
    /// one shard raises it (1..=`CONNECTIONS_PER_ADDRESS_CEILING`).
    pub connections_per_address_max: u32,
    /// The master declares a shard it has not heard from for this long dead, fences it and gives
    /// its cells to the living (`limits::SHARD_SILENCE_MS_MIN..=SHARD_SILENCE_MS_MAX`). Each
    /// shard stops simulating by itself two thirds of this after it last heard the master's
    /// answer (its ownership lease), so no two shards ever own a cell. Shorter recovers faster;
    /// longer spares a shard that stalls for a moment on a busy machine (what a dead shard held
    /// comes back from its buddy's replica). The master's setting is the one that counts: it
    /// grants the leases.
    pub shard_silence_ms: u64,
    /// The members elect a new master once the master has not answered them for this long
    /// (`limits::MASTER_SILENCE_MS_MIN..=MASTER_SILENCE_MS_MAX`); the successor fences it and
    /// gives its cells to its buddy. Below two thirds of `shard_silence_ms` (the members'
    /// leases) the new master answers before any other shard pauses; shorter recovers faster,
    /// longer spares a master whose tick stalls for a moment.
    pub master_silence_ms: u64,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            handoff_margin_m: 2.0,
            handoff_timeout_ms: 2_000,
            cell_move_batch: 200,
            cell_move_players_per_tick: 10,
            cell_move_timeout_ms: 20_000,
            secret: None,
            clients_per_shard_max: CLIENTS_PER_SHARD_DEFAULT,
            login_queue_max: LOGIN_QUEUE_DEFAULT,
            connections_per_address_max: limits::CONNECTIONS_PER_ADDRESS_MAX as u32,
            shard_silence_ms: limits::SHARD_DEAD_AFTER_MS,
            master_silence_ms: limits::MASTER_SILENCE_MS_DEFAULT,
        }
    }
}

/// Highest `[cluster] connections_per_address_max`: every connection a shard's endpoint takes
/// before it refuses all of them (twice `limits::CLIENTS_PER_SHARD_MAX`).
pub const CONNECTIONS_PER_ADDRESS_CEILING: u32 = 2 * limits::CLIENTS_PER_SHARD_MAX as u32;

/// Default `[cluster] clients_per_shard_max`: half of what a shard accepts as connections, so
/// the login queue and clients on their way elsewhere keep room beside a full shard's players.
pub const CLIENTS_PER_SHARD_DEFAULT: u32 = (limits::CLIENTS_PER_SHARD_MAX / 2) as u32;
/// Default `[cluster] login_queue_max`.
pub const LOGIN_QUEUE_DEFAULT: u32 = 1_000;
/// `[balancer]`: when and how the master moves, splits and merges cells (the policy is
/// `zonescaler_server::cluster::balancer`). Loads are shares of a tick period (tick-thread CPU
/// time / wall time), so `0.8` is "80% of the tick".
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BalancerSection {
    /// Off: the cells stay where the first placement put them (joins and drains still move
    /// cells; they are operator decisions, not balancing).
    pub enabled: bool,
    /// How often the master runs a balancing round.
    pub round_ms: u64,
    /// A shard whose CPU demand (`ShardLoad::cpu_demand`: its CPU share, scaled up when its
    /// ticks fall behind) is above this is overloaded.
    pub tick_cpu_max: f32,
    /// A shard whose resident memory is above this share of its limit is overloaded.
    pub mem_max: f32,
    /// A shard with more clients than this is overloaded, and no move may push a shard past it.
    pub clients_max: u32,
    /// A shard whose load per unit of weight is more than this fraction above the cluster's mean
    /// is imbalanced (0.1: 10% above the mean).
    pub imbalance_tolerance: f32,
    /// Below this tick CPU share a shard is never imbalanced: moving cells between nearly idle
    /// shards costs handoffs and buys nothing.
    pub min_balance_load: f32,
    /// A threshold must hold this long before anything moves for it.
    pub hold_ms: u64,
    /// A cell that moved (or was split or merged) does not move or merge again for this long (a
    /// hot one may still split: a split moves nothing).
    pub cooldown_ms: u64,
    /// Weight of the newest report in the moving averages (0 < alpha <= 1; 1 = no smoothing).
    pub ewma_alpha: f32,
    /// Loads are projected this far ahead along their trend, so a rising load is acted on before
    /// it crosses a threshold (0: no projection).
    pub trend_horizon_ms: u64,
    /// At most this fraction of the leaves, and of the cluster's load, moves in one round.
    pub max_move_fraction: f32,
    /// A leaf taking more than this share of a tick is split into its four children (when they
    /// are not smaller than `min_cell_m`).
    pub split_cell_load: f32,
    /// Four sibling leaves on one shard that together take less than this share of a tick merge
    /// back. At most half of `split_cell_load`, so a merge cannot be split straight away.
    pub merge_cell_load: f32,
    /// Smallest cell side (metres) a split may make. Leave it out for twice
    /// `interest.interest_radius_m`, the smallest allowed: a proxy zone must not reach past the
    /// cell beyond a neighbour's.
    pub min_cell_m: Option<f32>,
}

impl Default for BalancerSection {
    fn default() -> Self {
        Self {
            enabled: true,
            round_ms: 1_000,
            tick_cpu_max: 0.8,
            mem_max: 0.9,
            clients_max: 2_000,
            imbalance_tolerance: 0.1,
            min_balance_load: 0.1,
            hold_ms: 3_000,
            cooldown_ms: 30_000,
            ewma_alpha: 0.3,
            trend_horizon_ms: 5_000,
            max_move_fraction: 0.1,
            split_cell_load: 0.25,
            merge_cell_load: 0.05,
            min_cell_m: None,
        }
    }
}

impl BalancerSection {
    /// The smallest cell side a split may make: `min_cell_m`, or twice the interest radius.
    pub fn min_cell_m(&self, interest_radius_m: f32) -> f32 {
        self.min_cell_m.unwrap_or(2.0 * interest_radius_m)
    }

    /// Check every key; the error names the key (`balancer.` + field) and the problem. Shared by
    /// [`WorldConfig::validate`] and the balancer's constructor, so an unvalidated config cannot
    /// reach the policy either.
    pub fn check(&self, interest_radius_m: f32) -> Result<(), (&'static str, String)> {
        let share = |field: &'static str, v: f32, max: f32| {
            if v.is_finite() && v > 0.0 && v <= max {
                Ok(())
            } else {
                Err((field, format!("must be in (0, {max}] (got {v})")))
            }
        };
        share("balancer.tick_cpu_max", self.tick_cpu_max, 1.0)?;
        share("balancer.mem_max", self.mem_max, 1.0)?;
        share(
            "balancer.imbalance_tolerance",
            self.imbalance_tolerance,
            10.0,
        )?;
        share("balancer.min_balance_load", self.min_balance_load, 1.0)?;
        share("balancer.ewma_alpha", self.ewma_alpha, 1.0)?;
        share("balancer.max_move_fraction", self.max_move_fraction, 1.0)?;
        share("balancer.split_cell_load", self.split_cell_load, 1.0)?;
        share("balancer.merge_cell_load", self.merge_cell_load, 1.0)?;
        if self.merge_cell_load > 0.5 * self.split_cell_load {
            return Err((
                "balancer.merge_cell_load",
                format!(
                    "must be at most half of balancer.split_cell_load ({}), so merged cells are \
                     not split again at once (got {})",
                    self.split_cell_load, self.merge_cell_load
                ),
            ));
        }
        let clients_max = limits::CLIENTS_PER_SHARD_MAX;
        if self.clients_max == 0 || self.clients_max as usize > clients_max {
            return Err((
                "balancer.clients_max",
                format!("must be in 1..={clients_max} (got {})", self.clients_max),
            ));
        }
        for (field, v, range) in [
            ("balancer.round_ms", self.round_ms, 100..=60_000),
            ("balancer.hold_ms", self.hold_ms, 0..=600_000),
            ("balancer.cooldown_ms", self.cooldown_ms, 0..=3_600_000),
            (
                "balancer.trend_horizon_ms",
                self.trend_horizon_ms,
                0..=600_000,
            ),
        ] {
            if !range.contains(&v) {
                let (lo, hi) = (range.start(), range.end());
                return Err((field, format!("must be in {lo}..={hi} (got {v})")));
            }
        }
        let min = 2.0 * interest_radius_m;
        let cell = self.min_cell_m(interest_radius_m);
        if !(cell.is_finite() && cell > 0.0 && cell >= min) {
            return Err((
                "balancer.min_cell_m",
                format!(
                    "must be positive and at least twice interest.interest_radius_m ({min} m), \
                     or a proxy zone would reach past the neighbouring cell (got {cell})"
                ),
            ));
        }
        Ok(())
    }
}

/// `[world]`: the ground rectangle (x, z) and its cells.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorldSection {
    pub name: String,
    pub min_x: f32,
    pub min_z: f32,
    pub max_x: f32,
    pub max_z: f32,
    /// Side of a base (level 0) cell in metres.
    pub base_cell_size_m: f32,
}

/// `[simulation]`: tick rate, seed, movement authority.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulationSection {
    pub tick_hz: u32,
    /// Seed of the shard's RNG resource: the same seed and inputs give the same world.
    pub seed: u64,
    /// Fastest a player avatar may move; faster inputs are clamped to this.
    pub max_speed_mps: f32,
}

/// `[interest]`: who sees what.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InterestSection {
    /// Clients receive every entity within this distance of their avatar.
    pub aoi_radius_m: f32,
    /// Owned entities this close to a foreign cell are mirrored to its shard as proxies.
    pub interest_radius_m: f32,
    /// How far behind (ms) a client's newest acknowledged snapshot may fall before its
    /// snapshots are paced: while it is further behind, it gets one every this many ms instead
    /// of one every tick, until its acknowledgements catch up. It bounds how much stale state
    /// queues up for a client that cannot keep up (on its path or in its own process), so what
    /// it does get is fresh. Set it above your clients' round trip plus their input period:
    /// a client whose round trip is longer gets fewer snapshots than one per tick.
    pub snapshot_window_ms: u32,
}

/// `[npc]`: wandering NPCs so a shard has load without clients.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NpcSection {
    pub count: usize,
    pub speed_mps: f32,
}

/// `[tls]`: the shard's certificate. Both empty: a self-signed one is generated at start.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// PEM certificate chain.
    pub cert_pem: Option<PathBuf>,
    /// PEM private key.
    pub key_pem: Option<PathBuf>,
}

impl Default for WorldSection {
    fn default() -> Self {
        Self {
            name: "default".into(),
            min_x: -1024.0,
            min_z: -1024.0,
            max_x: 1024.0,
            max_z: 1024.0,
            base_cell_size_m: 256.0,
        }
    }
}

impl Default for SimulationSection {
    fn default() -> Self {
        Self {
            tick_hz: 30,
            seed: 1,
            max_speed_mps: 8.0,
        }
    }
}

impl Default for InterestSection {
    fn default() -> Self {
        Self {
            aoi_radius_m: 80.0,
            interest_radius_m: 32.0,
            snapshot_window_ms: 250,
        }
    }
}

impl Default for NpcSection {
    fn default() -> Self {
        Self {
            count: 1_000,
            speed_mps: 2.0,
        }
    }
}

impl WorldConfig {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parse and validate config text; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: one_line_toml_error(&e, text),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Check every field against its meaning and the bounds in [`crate::limits`].
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |field: &'static str, problem: String| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            problem,
        };
        let w = &self.world;
        let ext = limits::WORLD_EXTENT_M_MAX;
        for (field, v) in [
            ("world.min_x", w.min_x),
            ("world.min_z", w.min_z),
            ("world.max_x", w.max_x),
            ("world.max_z", w.max_z),
        ] {
            if !v.is_finite() || v.abs() > ext {
                return Err(bad(
                    field,
                    format!("must be a number within ±{ext} m (got {v})"),
                ));
            }
        }
        if w.max_x <= w.min_x {
            return Err(bad(
                "world.max_x",
                format!(
                    "must be greater than world.min_x (got {} <= {})",
                    w.max_x, w.min_x
                ),
            ));
        }
        if w.max_z <= w.min_z {
            return Err(bad(
                "world.max_z",
                format!(
                    "must be greater than world.min_z (got {} <= {})",
                    w.max_z, w.min_z
                ),
            ));
        }
        if !(w.base_cell_size_m.is_finite() && w.base_cell_size_m > 0.0) {
            return Err(bad(
                "world.base_cell_size_m",
                format!("must be positive (got {})", w.base_cell_size_m),
            ));
        }
        let cells = ((w.max_x - w.min_x) / w.base_cell_size_m).ceil()
            * ((w.max_z - w.min_z) / w.base_cell_size_m).ceil();
        if cells > limits::BASE_CELLS_MAX as f32 {
            return Err(bad(
                "world.base_cell_size_m",
                format!(
                    "gives {cells} base cells; at most {}",
                    limits::BASE_CELLS_MAX
                ),
            ));
        }
        let s = &self.simulation;
        if !(limits::TICK_HZ_MIN..=limits::TICK_HZ_MAX).contains(&s.tick_hz) {
            return Err(bad(
                "simulation.tick_hz",
                format!(
                    "must be in {}..={} (got {})",
                    limits::TICK_HZ_MIN,
                    limits::TICK_HZ_MAX,
                    s.tick_hz
                ),
            ));
        }
        if !(s.max_speed_mps.is_finite() && s.max_speed_mps > 0.0) {
            return Err(bad(
                "simulation.max_speed_mps",
                format!("must be positive (got {})", s.max_speed_mps),
            ));
        }
        let i = &self.interest;
        if !(i.aoi_radius_m.is_finite() && i.aoi_radius_m > 0.0) {
            return Err(bad(
                "interest.aoi_radius_m",
                format!("must be positive (got {})", i.aoi_radius_m),
            ));
        }
        if !(i.interest_radius_m.is_finite() && i.interest_radius_m >= 0.0) {
            return Err(bad(
                "interest.interest_radius_m",
                format!("must be zero or positive (got {})", i.interest_radius_m),
            ));
        }
        self.check_snapshot_window(path)?;
        if self.npc.count > limits::NPC_COUNT_MAX {
            return Err(bad(
                "npc.count",
                format!(
                    "must be at most {} (got {})",
                    limits::NPC_COUNT_MAX,
                    self.npc.count
                ),
            ));
        }
        if !(self.npc.speed_mps.is_finite() && self.npc.speed_mps >= 0.0) {
            return Err(bad(
                "npc.speed_mps",
                format!("must be zero or positive (got {})", self.npc.speed_mps),
            ));
        }
        match (&self.tls.cert_pem, &self.tls.key_pem) {
            (Some(_), None) => {
                return Err(bad(
                    "tls.key_pem",
                    "is required when tls.cert_pem is set".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(bad(
                    "tls.cert_pem",
                    "is required when tls.key_pem is set".into(),
                ));
            }
            _ => {}
        }
        let c = &self.cluster;
        if !(c.handoff_margin_m.is_finite() && c.handoff_margin_m >= 0.0) {
            return Err(bad(
                "cluster.handoff_margin_m",
                format!("must be zero or positive (got {})", c.handoff_margin_m),
            ));
        }
        if !(100..=60_000).contains(&c.handoff_timeout_ms) {
            return Err(bad(
                "cluster.handoff_timeout_ms",
                format!("must be in 100..=60000 (got {})", c.handoff_timeout_ms),
            ));
        }
        if !(1..=10_000).contains(&c.cell_move_batch) {
            return Err(bad(
                "cluster.cell_move_batch",
                format!(
                    "must be in 1..=10000 entities per tick (got {})",
                    c.cell_move_batch
                ),
            ));
        }
        if !(1..=c.cell_move_batch).contains(&c.cell_move_players_per_tick) {
            return Err(bad(
                "cluster.cell_move_players_per_tick",
                format!(
                    "must be in 1..=cluster.cell_move_batch ({}) avatars per tick (got {})",
                    c.cell_move_batch, c.cell_move_players_per_tick
                ),
            ));
        }
        if !(1_000..=600_000).contains(&c.cell_move_timeout_ms)
            || c.cell_move_timeout_ms <= c.handoff_timeout_ms
        {
            return Err(bad(
                "cluster.cell_move_timeout_ms",
                format!(
                    "must be in 1000..=600000 and longer than handoff_timeout_ms ({}) (got {})",
                    c.handoff_timeout_ms, c.cell_move_timeout_ms
                ),
            ));
        }
        let silence = limits::SHARD_SILENCE_MS_MIN..=limits::SHARD_SILENCE_MS_MAX;
        if !silence.contains(&c.shard_silence_ms) {
            return Err(bad(
                "cluster.shard_silence_ms",
                format!(
                    "must be in {}..={} ms (got {})",
                    silence.start(),
                    silence.end(),
                    c.shard_silence_ms
                ),
            ));
        }
        let master = limits::MASTER_SILENCE_MS_MIN..=limits::MASTER_SILENCE_MS_MAX;
        if !master.contains(&c.master_silence_ms) {
            return Err(bad(
                "cluster.master_silence_ms",
                format!(
                    "must be in {}..={} ms (got {})",
                    master.start(),
                    master.end(),
                    c.master_silence_ms
                ),
            ));
        }
        if c.clients_per_shard_max as usize > limits::CLIENTS_PER_SHARD_MAX {
            return Err(bad(
                "cluster.clients_per_shard_max",
                format!(
                    "must be at most {} (got {})",
                    limits::CLIENTS_PER_SHARD_MAX,
                    c.clients_per_shard_max
                ),
            ));
        }
        if c.login_queue_max as usize > limits::LOGIN_QUEUE_MAX {
            return Err(bad(
                "cluster.login_queue_max",
                format!(
                    "must be at most {} (got {})",
                    limits::LOGIN_QUEUE_MAX,
                    c.login_queue_max
                ),
            ));
        }
        if !(1..=CONNECTIONS_PER_ADDRESS_CEILING).contains(&c.connections_per_address_max) {
            return Err(bad(
                "cluster.connections_per_address_max",
                format!(
                    "must be in 1..={CONNECTIONS_PER_ADDRESS_CEILING} (got {})",
                    c.connections_per_address_max
                ),
            ));
        }
        if let Some(secret) = &c.secret
            && secret.len() < CLUSTER_SECRET_BYTES_MIN
        {
            return Err(bad(
                "cluster.secret",
                format!(
                    "must be at least {CLUSTER_SECRET_BYTES_MIN} bytes (got {})",
                    secret.len()
                ),
            ));
        }
        self.balancer
            .check(i.interest_radius_m)
            .map_err(|(field, problem)| bad(field, problem))
    }

    /// Seconds per tick.
    pub fn tick_dt(&self) -> f32 {
        1.0 / self.simulation.tick_hz as f32
    }

    /// `interest.snapshot_window_ms` in ticks, rounded up, at least one.
    pub fn snapshot_window_ticks(&self) -> u64 {
        let ms = u64::from(self.interest.snapshot_window_ms);
        (ms * u64::from(self.simulation.tick_hz))
            .div_ceil(1000)
            .max(1)
    }

    /// The window must leave the snapshot a client acknowledges among the ones the shard keeps
    /// as baselines (`limits::SNAPSHOT_HISTORY_TICKS`), else every snapshot it gets is full.
    fn check_snapshot_window(&self, path: &Path) -> Result<(), ConfigError> {
        let most = limits::SNAPSHOT_HISTORY_TICKS as u64 - 2;
        let ms = self.interest.snapshot_window_ms;
        if ms == 0 || self.snapshot_window_ticks() > most {
            let hz = u64::from(self.simulation.tick_hz);
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                field: "interest.snapshot_window_ms",
                problem: format!(
                    "must be positive and at most {most} ticks ({} ms at {hz} Hz) (got {ms})",
                    most * 1000 / hz.max(1)
                ),
            });
        }
        Ok(())
    }
}

/// toml's errors span several lines (a source excerpt); operators get one line with the position
/// and, where the error sits on a `key = value` line, the full dotted key (`npc.count`), which
/// toml's own message leaves out for type errors.
fn one_line_toml_error(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim().replace('\n', " ");
    let Some(span) = e.span() else { return msg };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("");
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    match key {
        Some(key) => {
            let section = text
                .lines()
                .take(line_no - 1)
                .filter_map(|l| l.trim().strip_prefix('[').and_then(|l| l.strip_suffix(']')))
                .last();
            let full =
                section.map_or_else(|| key.to_string(), |sec| format!("{}.{key}", sec.trim()));
            if msg.contains(&format!("`{key}`")) {
                format!("line {line_no}: {msg}")
            } else {
                format!("line {line_no}: `{full}`: {msg}")
            }
        }
        None => format!("line {line_no}: {msg}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WorldConfig, String> {
        WorldConfig::parse(text, Path::new("w.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let cfg = parse("").expect("defaults are valid");
        assert_eq!(cfg, WorldConfig::default());
        assert_eq!(cfg.simulation.tick_hz, 30);
        assert_eq!(cfg.cluster.clients_per_shard_max, 2_048);
        let none = parse("[cluster]\nclients_per_shard_max = 0\nlogin_queue_max = 0\n")
            .expect("a cluster that takes no players is a valid config");
        assert_eq!(none.cluster.clients_per_shard_max, 0);
    }

    #[test]
    fn bad_configs_name_the_field_in_one_line() {
        let cases = [
            (
                "[world]\nbase_cell_size_m = 0.0\n",
                "world.base_cell_size_m",
            ),
            (
                "[world]\nbase_cell_size_m = -5.0\n",
                "world.base_cell_size_m",
            ),
            ("[world]\nmin_x = 10.0\nmax_x = -10.0\n", "world.max_x"),
            ("[world]\nmin_z = 5.0\nmax_z = 5.0\n", "world.max_z"),
            ("[world]\nbase_cel_size_m = 64.0\n", "base_cel_size_m"),
            ("[simulation]\ntick_hz = 0\n", "simulation.tick_hz"),
            ("[interest]\naoi_radius_m = -1.0\n", "interest.aoi_radius_m"),
            (
                "[interest]\nsnapshot_window_ms = 0\n",
                "interest.snapshot_window_ms",
            ),
            (
                "[interest]\nsnapshot_window_ms = 1001\n",
                "interest.snapshot_window_ms",
            ),
            (
                "[cluster]\ncell_move_players_per_tick = 0\n",
                "cluster.cell_move_players_per_tick",
            ),
            (
                "[cluster]\ncell_move_batch = 20\ncell_move_players_per_tick = 21\n",
                "cluster.cell_move_players_per_tick",
            ),
            ("[tls]\ncert_pem = \"a.pem\"\n", "tls.key_pem"),
            ("[nope]\n", "nope"),
            ("[npc]\ncount = -3\n", "npc.count"),
            ("[simulation]\ntick_hz = \"fast\"\n", "simulation.tick_hz"),
            (
                "[cluster]\nclients_per_shard_max = 5000\n",
                "cluster.clients_per_shard_max",
            ),
            (
                "[cluster]\nclients_per_shard_max = -1\n",
                "cluster.clients_per_shard_max",
            ),
            (
                "[cluster]\nlogin_queue_max = 3000\n",
                "cluster.login_queue_max",
            ),
            (
                "[cluster]\nconnections_per_address_max = 0\n",
                "cluster.connections_per_address_max",
            ),
            (
                "[cluster]\nconnections_per_address_max = 8193\n",
                "cluster.connections_per_address_max",
            ),
            (
                "[cluster]\nshard_silence_ms = 999\n",
                "cluster.shard_silence_ms",
            ),
            (
                "[cluster]\nshard_silence_ms = 60001\n",
                "cluster.shard_silence_ms",
            ),
            (
                "[cluster]\nmaster_silence_ms = 499\n",
                "cluster.master_silence_ms",
            ),
            ("[balancer]\ntick_cpu_max = 1.5\n", "balancer.tick_cpu_max"),
            ("[balancer]\newma_alpha = 0.0\n", "balancer.ewma_alpha"),
            (
                "[balancer]\nmax_move_fraction = -0.1\n",
                "balancer.max_move_fraction",
            ),
            ("[balancer]\nclients_max = 0\n", "balancer.clients_max"),
            ("[balancer]\nclients_max = 99999\n", "balancer.clients_max"),
            ("[balancer]\nhold_ms = 9999999\n", "balancer.hold_ms"),
            ("[balancer]\nround_ms = 5\n", "balancer.round_ms"),
            (
                "[balancer]\nmerge_cell_load = 0.2\n",
                "balancer.merge_cell_load",
            ),
            ("[balancer]\nmin_cell_m = 40.0\n", "balancer.min_cell_m"),
            ("[balancer]\nmin_cell_m = nan\n", "balancer.min_cell_m"),
            ("[balancer]\nenable = true\n", "enable"),
        ];
        for (text, field) in cases {
            let err = parse(text).expect_err(text);
            assert!(
                err.contains(field),
                "error for {text:?} must name {field}: {err}"
            );
            assert!(!err.contains('\n'), "error must be one line: {err:?}");
        }
    }

    #[test]
    fn the_documented_reference_file_holds_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/worlds/default.toml");
        let cfg = WorldConfig::load(&path).expect("the reference config is valid");
        assert_eq!(
            cfg,
            WorldConfig::default(),
            "assets/worlds/default.toml documents every key with its default"
        );
    }

    #[test]
    fn balancer_min_cell_defaults_to_twice_the_interest_radius_and_follows_it() {
        let cfg = parse("[interest]\ninterest_radius_m = 50.0\n").expect("valid");
        assert!(cfg.balancer.enabled, "the balancer is on by default");
        assert_eq!(
            cfg.balancer.min_cell_m(cfg.interest.interest_radius_m),
            100.0,
            "an unset min_cell_m is twice the interest radius"
        );
        let err = parse("[interest]\ninterest_radius_m = 50.0\n[balancer]\nmin_cell_m = 64.0\n")
            .expect_err("64 m cells are smaller than twice a 50 m interest radius");
        assert!(
            err.contains("balancer.min_cell_m") && err.contains("100"),
            "{err}"
        );
        let ok = parse("[balancer]\nenabled = false\nmin_cell_m = 128.0\n").expect("valid");
        assert!(!ok.balancer.enabled, "the switch turns it off");
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = WorldConfig::load(Path::new("/nonexistent/world.toml")).expect_err("no file");
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/world.toml") && !msg.contains('\n'),
            "{msg}"
        );
    }
}
