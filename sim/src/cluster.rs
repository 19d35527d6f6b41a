//! The multi-shard simulator: N shards of one world and a few dozen bots over the seeded network.
//! Shard links are delayed and jittered, ordered and reliable while they live (as QUIC streams
//! are), now and then partitioned (messages wait, as a stream retransmits), and in half the
//! seeds they die now and then, losing what is in flight on them: the only message loss on
//! links, since a QUIC stream loses nothing while its link lives. Every play-time frame goes
//! through the members' production `Sessions` (numbered, kept until acknowledged, sent again
//! after the redial), the larger id redials with the production backoff, and each process has
//! its own clocks (see [`wire`]); client datagrams also see loss, duplication and reordering.
//! NPCs wander across borders and are handed off; bots walk back and forth across borders and
//! follow their avatar from shard to shard with redirect tokens.
//! The cluster forms as it does in production, through the same [`Forming`] state machine over
//! the simulated links: shard 0 holds the master role, the others join it (one after the other,
//! so process `i` is shard `i`) with random weights, the master places the cells and pushes the
//! map, and every pair of shards links. During play the links carry one batch of shard messages
//! per neighbour per tick, heartbeats to the master, and the master's traffic: logins claim their
//! accounts there (bots log in with tickets the simulation's account key signed, spawning where
//! their border walks start).
//!
//! The master moves random leaves between shards that take work, and splits and merges leaves,
//! while all of this goes on; each tick it does its housekeeping as `Node` does (moves overdue
//! are aborted, a balancing round when one is due, drained shards let go). Membership changes
//! too, in seeds that draw them (about 40% each):
//! - **a late joiner**: one more process (shard id `shards`, the next the master gives) dials
//!   the master 1–2 s in, through [`Forming::joiner`] over the simulated links; the master side
//!   does what `Node` does (its `Join` on an unnamed link: `Master::join`, `Joined` and
//!   `Master::push_for_joiner` back, `Master::members_changed` to the others), it dials every
//!   member with `Peer`, and once formed it ticks. A member sends it nothing before its `Peer`
//!   has arrived (there is no link to send on); the master's balancer gives it its first cell.
//! - **a drain**: 1–2 s in, `Master::drain` on a random shard other than the master's that ticks
//!   and takes work; the balancer evacuates its cells, and once `Master::check_drained` lets it
//!   go (`Drained`) it stops ticking, its connections and links close, and it leaves the checks.
//!
//! - **a crash**: in about 30% of the seeds (a stream of their own), 1–2 s in, a random shard
//!   other than the master's, the joiner's or a draining one stops dead: no tick, nothing sent or
//!   heard. The master's liveness check (every tick, as `Node` runs it) declares it dead after
//!   `SHARD_DEAD_AFTER_MS` and gives its leaves to its buddy, which promotes its replica: what it
//!   held must be simulated again within `FAILOVER_BOUND_MS` of the adopter hearing of it
//!   (`no_lost_entities`); its bots are orphaned (they do not resume here).
//!
//! - **a long cut**: in about 25% of the seeds (a stream of their own), 1–3 s in, a random shard
//!   other than the master's (not the joiner, not draining) is partitioned from the master for
//!   its silence and 0.2–2.7 s more. Every shard but the master holds its production ownership
//!   `Lease` (numbered heartbeats, the master's answers), and obeys it as the runtime does: it
//!   simulates only while it holds, pauses while it lapsed, and stops once lost (fenced, or
//!   silent too long). The cut shard pauses, the master declares it dead and its buddy adopts;
//!   once the cut heals it hears `Fenced` and stops. A dead link that outlasts the silence does
//!   the same, and a shard that lost its lease before the verdict stops as a crash does.
//!
//! - **quitters**: in half the seeds, a bot in the middle of a redirect (sent on, not yet
//!   welcomed) quits now and then, hanging up on both shards.
//!
//! Seeds with either run the production balancer (`Master::balance`, quarter-second rounds; in
//! a quarter of them with balancing off, which still carries out joins and drains). Every tick
//! is checked for:
//! - `single_authority`: no `NetId` owned by two shards;
//! - `no_lost_entities`: every entity that existed still exists (owned somewhere, or frozen in a
//!   handoff), unless the engine despawned it on purpose (its player left);
//! - `handoff_bounded`: no handoff keeps its entity frozen longer than the link's round trip
//!   allows (time its link spends partitioned does not count; a handoff to a shard drained
//!   meanwhile is settled by the master's word, so its source's link to the master counts);
//! - `players_keep_avatars`: every logged-in bot's avatar exists;
//! - `directory_forgets_quitters`: a bot that quit leaves the master's player directory within
//!   [`SENT_ON_WAIT_MS`] (the time the master keeps a seat for a player on its way), two
//!   heartbeats and two link round trips (ticks its shards spend cut off from the master do
//!   not count);
//! - `proxies_converge`: every proxy names a shard that owns (or owned, within the link's delay
//!   bound) that entity, at a position the owner held within that bound; and every entity that
//!   stayed near a neighbour's cells for longer than the bound has a proxy there;
//! - `one_owner_per_point`: every map the master makes tiles the world with one owner per leaf,
//!   and every shard holds exactly one of the master's maps;
//! - `settles_into_owner`: no entity stays owned in a leaf another shard owns for longer than a
//!   cell move and its settling handoffs can take;
//! - `drained_shard_empty`: a shard let go owns no entity, holds none in a handoff, holds a map
//!   that gives it no leaf, and has no bot still playing on it;
//! - `drain_completes`: a drain is done within [`DRAIN_BOUND_MS`] of the order;
//! - `joiner_gets_cells`: the late joiner forms, and holds a leaf of the master's map within
//!   [`JOIN_BOUND_MS`] of dialing in (unless it was the one drained);
//! - `failover_completes`: the master's map gives a crashed shard no leaf within
//!   `SHARD_DEAD_AFTER_MS` + [`FAILOVER_BOUND_MS`] of the last message it heard from it (a
//!   handoff to a crashed shard waits on that; its proxies may stay until the member list
//!   without it reached their holder);
//! - `no_false_death`: the master declares dead only shards that crashed, stopped, or were cut
//!   off from it (partitioned, or their link to it dead) within its silence and a second;
//! - `single_authority` across fencing: a shard the master declared dead while it ran never
//!   simulates again (its lease paused it before the verdict); with the check above over the
//!   shards that did not stop, no entity is simulated by two shards at any tick;
//! - `fenced_shard_stops`: such a shard stops (its lease lost: told `Fenced`, or silent) within
//!   its lease, the silences it waits for an election of a new master and a second of the
//!   verdict;
//! - `links_lose_nothing`: every session frame is delivered in order, none missing (a gap means
//!   a frame lost with a dead link was never sent again);
//! - `links_heal`: a dead link between two members is back within the longest redial backoff,
//!   half a second and three round trips of its cause ending (ticks partitioned, and the wait
//!   after a dial that met a partition, do not count).
//!
//! What a shard taken down holds comes back from its buddy's replica; when its link to that
//! buddy was dead or partitioned at the time (or came back too lately for the kept frames to
//! arrive), its replica is as old as the cut, and what it lacks is lost and counted
//! (`Membership::crash_entities_stale`), not a violation. Not simulated: a crashed process
//! restarting as a new member (the simulation has one late joiner, drawn before the run).
//!
//! - **the master's crash**: in about 30% of the seeds (a stream of their own), 2.5–3.5 s in
//!   (once a majority of the membership would survive it, and no joiner forms), the process
//!   holding the master role crashes, and the run lasts 5 s longer. Every process runs the
//!   production election from the start (see [`succession`]); the winner rebuilds the master
//!   from the state it holds and takes over. `one_master` and `settles_to_one_master` are
//!   checked every tick; the other bounds do not count the ticks the role was vacant or its
//!   holder had no majority (it acts on nothing then), and the directory's waits start anew
//!   with a successor.
//!
//! A run reports its joins, drains and crashes in [`Membership`]: joins, leaves given to
//! joiners, the entities a joiner owned, drains ordered and done, crashes, what they lost and
//! how long their failover took.

mod succession;
mod wire;

pub use succession::{MASTER_SETTLE_BOUND_MS, MASTER_SETTLE_SILENCES};
pub use wire::{Clock, LinkStats};

use crate::load::ModelledLoad;
use crate::{Packet, Violation};
use bevy_ecs::query::Has;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use wire::{DeadLink, Lease};
use zonescaler_bots::{BotClient, BotConfig, Scenario, border_walks};
use zonescaler_net::link::LinkId;
use zonescaler_net::mem::{LinkFaults, MemNetwork};
use zonescaler_server::ShardApp;
use zonescaler_server::authority::handoff::Handoffs;
use zonescaler_server::authority::replica::Replicas;
use zonescaler_server::client::{Clients, LoginPolicy};
use zonescaler_server::cluster::LeaseState;
use zonescaler_server::cluster::election::{MasterElection, QuorumElection};
use zonescaler_server::cluster::reports::PlayerReports;
use zonescaler_server::cluster::requests::UnconfirmedRequests;
use zonescaler_server::cluster::session::Sessions;
use zonescaler_server::cluster::{Balancer, FormAction, FormEvent, Formed, Forming, Master};
use zonescaler_server::core::boundary::BoundaryIndex;
use zonescaler_server::core::components::{InTransit, Networked, Owned, Position, Proxy};
use zonescaler_server::core::resources::{DespawnLog, HandoffStats};
use zonescaler_server::core::space::Space;
use zonescaler_shared::cellmap::{CellGrid, CellMap, Epoch};
use zonescaler_shared::config::WorldConfig;
use zonescaler_shared::protocol::MemberInfo;
use zonescaler_shared::protocol::{
    JoinRequest, LinkMessage, MapPush, MasterNotice, MasterRequest, Standby,
};
use zonescaler_shared::quant::QPos;
use zonescaler_shared::rng::Rng;
use zonescaler_shared::ticket::{LoginKeys, LoginTicket, TicketSigner};
use zonescaler_shared::{CellId, ConnId, NetId, ShardId, limits};

/// `joiner_gets_cells`' bound: a late joiner forms, links, reports, and the balancer's next
/// rounds move it a leaf, well within this (simulated); smoke runs dial in by 2 s and last 8 s,
/// so the bound ends inside every run.
pub const JOIN_BOUND_MS: u64 = 5_000;

/// `drain_completes`' bound: the operator's patience with `zonescaler drain` (simulated).
pub const DRAIN_BOUND_MS: u64 = 30_000;

/// `failover_completes`' bound past the master's silence (`SHARD_DEAD_AFTER_MS`): the heartbeat
/// interval (the last one may have left just before the crash), the liveness check and the
/// balancing round it makes due at once, with margin. Smoke runs crash a shard by 2 s and last
/// 8 s, so the bound ends inside every run.
pub const FAILOVER_BOUND_MS: u64 = 1_000;

/// How much longer a run with a master crash lasts (5 s at 30 Hz): the election (a silence, and
/// half of one per member ahead in line), the takeover, and the failovers it starts, with their
/// bounds, all end inside it.
pub const MASTER_CRASH_EXTRA_TICKS: u64 = 150;

/// Link ids the late joiner's dials get start here (the initial forming's count from 1; during
/// play the simulation addresses shard messages by endpoint, on `LinkId(0)`).
const JOINER_LINKS_FROM: u64 = 1 << 32;

/// How long the simulated master keeps the seat of a player its shard sent on and lost
/// (`Master::with_sent_on_wait`): production keeps it `REDIRECT_WAIT_MS` (15 s), longer than a
/// smoke run, which would leave `directory_forgets_quitters` nothing to check.
pub const SENT_ON_WAIT_MS: u64 = 1_000;

/// One multi-shard run's shape.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub seed: u64,
    pub ticks: u64,
    pub shards: usize,
    pub world: WorldConfig,
    /// Delay and jitter on shard links (loss, duplication and reordering do not apply: links are
    /// reliable ordered streams).
    pub link_faults: LinkFaults,
    /// Faults on client datagrams (and delay on their control streams).
    pub client_faults: LinkFaults,
    pub bots: usize,
    /// Chance per tick that a random pair of shards is partitioned (healed after a while).
    pub partition_chance: f32,
    /// A partition heals after 5 ticks and up to this many more: 40 (1.3 s at 30 Hz) keeps these
    /// short ones shorter than the master's silence (`SHARD_DEAD_AFTER_MS`); the ones past it are
    /// [`Self::long_cut`]s.
    pub partition_ticks_max: u64,
    /// Chance per tick (after the first second) that the master orders a random leaf moved to
    /// a random other shard.
    pub move_chance: f32,
    /// Chance per tick (after the first second) that the master splits a random leaf (where its
    /// children stay at least twice the interest radius) or merges a random split parent.
    pub reshape_chance: f32,
    /// The tick at which one more process (endpoint and shard id `shards`, not part of the
    /// initial forming) dials the master to join the running cluster; `None`: no late joiner.
    pub join_at_tick: Option<u64>,
    /// The late joiner's capacity weight.
    pub joiner_weight: u32,
    /// The tick at which the master is told to drain a random shard other than its own (one that
    /// ticks and takes work then); `None`: no drain.
    pub drain_at_tick: Option<u64>,
    /// Whether the master runs the production balancer (`world.balancer`) every round: it is
    /// what gives a joiner its first cell and evacuates a draining shard.
    pub balance: bool,
    /// Whether the master hears which buddy holds each shard's replica (the heartbeats'
    /// `buddy`): without it a dead shard has no adopter and its cells wait for the balancer.
    /// Off only to sabotage a run.
    pub buddies_reported: bool,
    /// `joiner_gets_cells`: a late joiner holds a leaf of the master's map within this long
    /// (simulated) of dialing in.
    pub join_bound_ms: u64,
    /// `drain_completes`: a drained shard is let go within this long (simulated) of the order.
    pub drain_bound_ms: u64,
    /// Chance per tick that a bot in the middle of a redirect (sent on, not yet welcomed) quits:
    /// it hangs up on both shards, a player closing the game while crossing a border.
    pub quit_chance: f32,
    /// The tick at which a random shard other than the master's (one that ticks, is not the
    /// late joiner and is not being drained) crashes: it stops at once, sends and hears nothing
    /// more; `None`: no crash.
    pub crash_at_tick: Option<u64>,
    /// `failover_completes`: the master's map gives the crashed shard no leaf within
    /// `SHARD_DEAD_AFTER_MS` and this long (simulated) of the crash.
    pub failover_bound_ms: u64,
    /// Chance per tick that the link between a random pair of members dies, losing what is in
    /// flight on it both ways (`wire`); dials fail for up to 1.5 s after.
    pub link_death_chance: f32,
    /// Off only to sabotage a run: after a redial, neither end sends again what the other has
    /// not acknowledged.
    pub resend_after_redial: bool,
    /// Off only to sabotage a run: dead links are never redialled.
    pub redial: bool,
    /// A long cut: at this tick a random shard other than the master's (one that ticks, is not
    /// the late joiner, not draining and not crashed) is partitioned from the master for this
    /// many ticks, longer than the master's silence: its lease lapses, the master declares it
    /// dead and its buddy adopts its cells; once the cut heals it is told it is fenced.
    pub long_cut: Option<(u64, u64)>,
    /// Whether the shards obey their ownership leases (anything else only to sabotage a run).
    pub leases: Leases,
    /// Off only to sabotage a run: the master answers the heartbeats of the last shard that
    /// formed (its lease holds) but records none, so it declares it dead though it was never
    /// cut off (the others' keep the master's majority).
    pub heartbeats_heard: bool,
    /// Each process's monotonic clock runs fast or slow by up to this (parts per million).
    pub clock_skew_ppm_max: u64,
    /// A quarter of the processes step their wall clock once, by up to this either way.
    pub wall_step_ms_max: u64,
    /// The tick at which the process holding the master role crashes (postponed while a late
    /// joiner forms: it dials the master's address only); `None`: the master never crashes.
    /// The live members elect a successor ([`QuorumElection`]), which takes the role over from
    /// the master's state they hold ([`Master::successor`]).
    pub master_crash_at_tick: Option<u64>,
    /// Off only to sabotage a run: election messages are never delivered (no successor).
    pub elections_delivered: bool,
    /// Only to sabotage a run: when a member wins an election, another live member is told it
    /// won that term too (a forged `Elected` naming itself): two masters of one term.
    pub forge_second_winner: bool,
}

/// What the shards do with their ownership lease (`cluster::lease`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leases {
    /// As the runtime does: simulate only while it holds, pause while it lapsed, stop once it
    /// is lost.
    Obeyed,
    /// Sabotage: simulate whatever the lease says.
    Ignored,
    /// Sabotage: a lost lease only pauses, the process never stops.
    NeverLost,
}

impl ClusterConfig {
    /// The smoke configuration for one seed: 2–4 shards with random weights on a small world,
    /// a few hundred NPCs, a dozen or two bots walking across borders, link delay and jitter,
    /// client loss, and short partitions, all chosen by the seed.
    pub fn smoke(seed: u64) -> Self {
        Self::smoke_with(seed, true)
    }

    /// [`Self::smoke`] as it was before crashes were simulated: a crash seed without its crash,
    /// and none of the faults simulated after crashes (link deaths, long cuts, clock skew and
    /// steps). Regression tests of older findings replay these.
    pub fn smoke_without_crash(seed: u64) -> Self {
        Self::smoke_with(seed, false)
    }

    fn smoke_with(seed: u64, crashes: bool) -> Self {
        let mut rng = Rng::new(seed ^ 0xC1A5);
        let mut world = crate::square_world(256.0, seed, 300 + rng.below(300) as usize);
        world.world.base_cell_size_m = 64.0;
        // Moves are aborted after this: short enough that runs see aborts as well as moves.
        world.cluster.cell_move_timeout_ms = 3_000;
        world.cluster.cell_move_batch = 5 + rng.below(40) as u32;
        // Derived, not drawn, so every seed keeps the run it had before the setting existed.
        world.cluster.cell_move_players_per_tick = 1 + world.cluster.cell_move_batch / 8;
        let reshape = rng.chance(0.5);
        if reshape {
            // Small enough an interest radius that a base cell's children may exist.
            world.interest.interest_radius_m = 16.0;
        }
        world.npc.speed_mps = 2.0 + rng.range_f32(0.0, 4.0);
        let link_faults = LinkFaults {
            delay_us: 1_000 + rng.below(60_000),
            jitter_us: rng.below(30_000),
            ..LinkFaults::PERFECT
        };
        let client_faults = LinkFaults {
            delay_us: 1_000 + rng.below(30_000),
            jitter_us: rng.below(10_000),
            loss: rng.range_f32(0.0, 0.1),
            duplicate: rng.range_f32(0.0, 0.05),
            reorder: rng.range_f32(0.0, 0.05),
        };
        // Membership changes draw from a stream of their own, so every other choice of a seed
        // stays what it was before joins and drains were simulated.
        let mut m = Rng::new(seed ^ 0x101D_D1A1);
        let join_at_tick = m.chance(0.4).then(|| 30 + m.below(31));
        let joiner_weight = 1 + m.below(3) as u32;
        let drain_at_tick = m.chance(0.4).then(|| 30 + m.below(31));
        // Its own stream too: a seed without a crash runs as it did before crashes existed.
        let mut k = Rng::new(seed ^ 0x0C2A_5111);
        let crash_at_tick = k.chance(0.3).then(|| 30 + k.below(31)).filter(|_| crashes);
        // The faults after crashes draw from a stream of their own too.
        let mut f = Rng::new(seed ^ 0x0F_A017_5EED);
        let link_death_chance = if f.chance(0.5) && crashes { 0.01 } else { 0.0 };
        let silence_ticks = world.cluster.shard_silence_ms * 30 / 1_000;
        let long_cut = f
            .chance(0.25)
            .then(|| (30 + f.below(61), silence_ticks + 6 + f.below(75)))
            .filter(|_| crashes);
        let (clock_skew_ppm_max, wall_step_ms_max) = if crashes { (1_000, 1_000) } else { (0, 0) };
        // The master's crash draws from a stream of its own too; a run with one lasts longer,
        // so that the election, the takeover and the failovers after it end inside it.
        let mut mc = Rng::new(seed ^ 0x0A57_E2C2);
        let master_crash_at_tick = mc
            .chance(0.3)
            .then(|| 75 + mc.below(31))
            .filter(|_| crashes);
        // A dead link can outlast the master's silence too: any seed that may lose a shard
        // runs the balancer, which evacuates a dead shard no buddy adopts.
        let balance = join_at_tick.is_some()
            || drain_at_tick.is_some()
            || crash_at_tick.is_some()
            || long_cut.is_some()
            || link_death_chance > 0.0
            || master_crash_at_tick.is_some();
        // Its own stream too: a seed without quitters runs as it did before they existed.
        let quit_chance = if Rng::new(seed ^ 0x0009_017E).chance(0.5) {
            0.05
        } else {
            0.0
        };
        if balance {
            // Rounds quick enough that a drain and a joiner's first cell fit an 8-second run.
            world.balancer.round_ms = 250;
            world.balancer.max_move_fraction = 0.25;
            // Balancing off (`[balancer] enabled = false`) still carries out joins and drains.
            world.balancer.enabled = !m.chance(0.25);
        }
        Self {
            seed,
            ticks: if master_crash_at_tick.is_some() {
                240 + MASTER_CRASH_EXTRA_TICKS
            } else {
                240
            },
            shards: 2 + rng.below(3) as usize,
            world,
            link_faults,
            client_faults,
            bots: 8 + rng.below(16) as usize,
            partition_chance: if rng.chance(0.5) { 0.01 } else { 0.0 },
            partition_ticks_max: 40,
            move_chance: if rng.chance(0.7) { 0.03 } else { 0.0 },
            reshape_chance: if reshape { 0.02 } else { 0.0 },
            join_at_tick,
            joiner_weight,
            drain_at_tick,
            balance,
            buddies_reported: true,
            join_bound_ms: JOIN_BOUND_MS,
            drain_bound_ms: DRAIN_BOUND_MS,
            quit_chance,
            crash_at_tick,
            failover_bound_ms: FAILOVER_BOUND_MS,
            link_death_chance,
            resend_after_redial: true,
            redial: true,
            long_cut,
            leases: Leases::Obeyed,
            heartbeats_heard: true,
            clock_skew_ppm_max,
            wall_step_ms_max,
            master_crash_at_tick,
            elections_delivered: true,
            forge_second_winner: false,
        }
    }

    /// Simulated ms in `ticks`.
    fn ms_in(&self, ticks: u64) -> u64 {
        ticks * 1_000 / u64::from(self.world.simulation.tick_hz)
    }

    /// Ticks in `ms` of simulated time.
    fn ticks_in(&self, ms: u64) -> u64 {
        ms * u64::from(self.world.simulation.tick_hz) / 1_000
    }

    /// Ticks an entity may stand owned in a leaf the master's map gives another shard: a cell
    /// move's whole time (its target holds the cell's entities before the map flips), then the
    /// handoffs that settle an abort or a flip, with a refusal's backoff or two.
    fn stray_bound_ticks(&self) -> u64 {
        let hz = u64::from(self.world.simulation.tick_hz);
        let move_ticks = self.world.cluster.cell_move_timeout_ms * hz / 1_000;
        let backoff_ticks = limits::HANDOFF_BACKOFF_MS * hz / 1_000;
        move_ticks + 4 * self.lag_bound_ticks() as u64 + 3 * backoff_ticks + hz
    }

    /// Ticks within which any link message is delivered (when not partitioned).
    fn lag_bound_ticks(&self) -> usize {
        let tick_us = 1_000_000 / u64::from(self.world.simulation.tick_hz);
        ((self.link_faults.delay_us + self.link_faults.jitter_us).div_ceil(tick_us) + 2) as usize
    }
}

/// Owned entities of one shard at one tick: id → (quantised position, exact ground position).
type OwnedAt = BTreeMap<NetId, (QPos, [f32; 2])>;

/// `read` of every shard, or the empty value for a departed (drained) one.
fn of_present<T: Default>(
    shards: &mut [ShardApp],
    departed: &BTreeSet<usize>,
    read: impl Fn(&mut ShardApp) -> T,
) -> Vec<T> {
    (shards.iter_mut().enumerate())
        .map(|(i, s)| {
            if departed.contains(&i) {
                T::default()
            } else {
                read(s)
            }
        })
        .collect()
}

/// A bot and its connections: `shard` is the one it plays on, `pending` the one a redirect sent
/// it to (until that one's `Welcome`).
struct ClusterBot {
    bot: BotClient,
    /// Its account (what the master's player directory knows it by).
    name: String,
    shard: Option<usize>,
    pending: Option<usize>,
    welcomed: bool,
    gone: bool,
    /// It quit mid-redirect ([`ClusterConfig::quit_chance`]): the shards it hung up on, and the
    /// ticks since on which both had a connected link to the master.
    quit: Option<Quit>,
}

#[derive(Clone, Copy, Debug)]
struct Quit {
    tick: u64,
    shards: [usize; 2],
    waited: u64,
}

/// N shards, bots, and the network between them. Endpoints `0..N` are shards, `N + i` is bot `i`
/// (`ConnId(i)` on every shard).
pub struct ClusterSim {
    cfg: ClusterConfig,
    shards: Vec<ShardApp>,
    map: CellMap,
    net: MemNetwork<Packet>,
    rng: Rng,
    now_us: u64,
    tick_us: u64,
    bots: Vec<ClusterBot>,
    /// Each shard's modelled load, which its heartbeats report.
    loads: Vec<ModelledLoad>,
    /// Owned entities per shard for the last `lag_bound + 1` ticks, newest last.
    history: VecDeque<Vec<OwnedAt>>,
    /// Positions of entities frozen in a handoff, for the same ticks: a source's proxy of an
    /// entity it just handed off shows it where it froze until the new owner's first update.
    frozen_history: VecDeque<BTreeMap<NetId, QPos>>,
    /// Ticks each (entity, neighbour) pair has been continuously in the border zone.
    near_for: BTreeMap<(NetId, ShardId), usize>,
    /// Entities that must exist (owned or in transit somewhere).
    alive: BTreeSet<NetId>,
    /// Ticks each handoff (entity, source, attempt number) has waited on a connected link. By
    /// attempt, not by entity: an entity handed back and forth while maps change may be in
    /// transit somewhere for many ticks in a row, each handoff within its bound.
    transit_for: BTreeMap<(NetId, usize, u32), usize>,
    /// Partitioned shard pairs and the tick each heals.
    partitions: BTreeMap<(usize, usize), u64>,
    /// Pairs partitioned recently, and the last tick they were.
    disturbed: BTreeMap<(usize, usize), u64>,
    /// The master role (placement done; heartbeats keep its view and directory current).
    pub master: Master,
    /// Draws which bots quit mid-redirect.
    quit_rng: Rng,
    /// Handoffs completed (acks seen by sources), for reports and tests.
    pub handoffs: u64,
    /// Fault injection for checker tests.
    pub sabotage: Option<Box<dyn FnMut(&mut [ShardApp], u64)>>,
    /// Every map the master made, by epoch (shards may only ever hold one of these).
    maps: BTreeMap<u64, CellMap>,
    /// The boundary index of the master's newest map.
    boundary: BoundaryIndex,
    /// Ticks each entity has stood owned in a leaf the master gives another shard.
    stray_for: BTreeMap<NetId, u64>,
    /// Cell moves, splits and merges the master was ordered to make.
    pub reshapes: u64,
    /// A map of the master's that did not tile the world (reported by the next check).
    bad_map: Option<String>,
    /// The epoch each shard holds, and the tick it took it.
    epochs_held: Vec<u64>,
    map_taken_at: Vec<u64>,
    /// Bot `i` is endpoint `bot_base + i` (after the shards and the late joiner's endpoint).
    bot_base: usize,
    /// The late joiner, once it dialed in.
    joiner: Option<Joiner>,
    /// The account service's public keys, which every shard (a joiner too) checks logins with.
    login_keys: LoginKeys,
    /// Drained shards that stopped: they no longer tick, hear nothing, and are out of the checks.
    departed: BTreeSet<usize>,
    /// Drains ordered and not done yet: the shard and the tick of the order.
    draining: BTreeMap<usize, u64>,
    /// Crashed shards (also in `departed`): the tick of the crash, and the tick the master
    /// declared it dead (`None` until then).
    crashed: BTreeMap<usize, (u64, Option<u64>)>,
    /// Entities a crashed shard held (owned or frozen), with the crashed shard: its buddy holds
    /// their replica, and `no_lost_entities` excuses their absence until the master's verdict
    /// and `FAILOVER_BOUND_MS` more (the adopter promotes them on the map that says so). Lost
    /// for good only when the master found no adopter (`crash_lost`).
    crash_limbo: BTreeMap<NetId, usize>,
    /// The tick each crashed shard's adopter was first seen holding the map that adopts it.
    adoption_heard: BTreeMap<usize, u64>,
    crash_lost: BTreeSet<NetId>,
    /// Avatars of bots a crash orphaned: one the crashed shard was handing on waits on its
    /// new shard for a client that never comes (its redirect was the crashed shard's to send)
    /// until `REDIRECT_WAIT_MS`, and is not handed on meanwhile (out of `settles_into_owner`).
    orphan_avatars: BTreeSet<NetId>,
    /// A failure met outside the checks (a joiner that could not form), for the next check.
    failure: Option<(&'static str, String)>,
    /// Joins and drains, for reports and tests.
    pub membership: Membership,
    /// Each process's clocks (`wire::Clock`), by endpoint.
    clocks: Vec<Clock>,
    /// Each process's sessions with the other members, the member list it last heard, and the
    /// members it saw leave.
    sessions: Vec<Sessions>,
    members: Vec<Vec<MemberInfo>>,
    left: Vec<BTreeSet<ShardId>>,
    /// The joiner, at each member that took its `Peer` (`Node`'s `peered`).
    peered: Vec<BTreeSet<ShardId>>,
    /// Each shard's ownership lease (none on the master).
    leases: Vec<Option<Lease>>,
    /// The newest heartbeat of each shard the master answered, as the shard heard it
    /// (`ShardLoad::lease_seq`, as `Node` reports it: the master counts its majority by it).
    lease_seqs: Vec<u64>,
    /// Links that died and are not back at both ends, by (smaller, larger) id.
    dead_links: BTreeMap<(usize, usize), DeadLink>,
    /// Draws link deaths (a stream of its own).
    link_rng: Rng,
    /// Link deaths, redials, frames sent again.
    pub link_stats: LinkStats,
    /// Shards the master declared dead while they still ran (a long cut), and the tick of the
    /// verdict: out of the checks but still running until their lease is lost, and never
    /// simulating again.
    fenced: BTreeMap<usize, u64>,
    /// Shards whose lease lapsed this tick (they did not simulate), and those that simulated.
    paused: BTreeSet<usize>,
    ticked: BTreeSet<usize>,
    /// The last tick each shard was cut off from the master (partitioned, or its link dead).
    cut_from_master: BTreeMap<usize, u64>,
    /// The tick each pair's dead link last came back at both ends, and the last tick each pair
    /// was partitioned.
    link_back_at: BTreeMap<(usize, usize), u64>,
    cut_at: BTreeMap<(usize, usize), u64>,
    /// Shards taken down while their link to the buddy the master knew was dead or cut, or back
    /// too lately for what it kept to have arrived: their replica is as old as the cut, and what
    /// it lacks (entities they took meanwhile) is lost (counted), as in production.
    stale_replica: BTreeSet<usize>,
    /// The run's tick (the master's process may crash, so no shard's tick number is the run's).
    tick: u64,
    /// The process holding the master role (`self.master` is its state), and whether it is
    /// down (crashed, or deposed) with no successor yet.
    master_at: usize,
    master_down: bool,
    /// Each process's election (`Node`'s), the master's state it holds for a successor
    /// (`Node::standby`, `standby_seats`), the dead of the last map push it heard, and its
    /// requests to the master not confirmed yet (`Node::unconfirmed`: after which heartbeat).
    elections: Vec<QuorumElection>,
    standbys: Vec<Standby>,
    standby_seats: Vec<BTreeMap<String, ShardId>>,
    held_dead: Vec<Vec<(ShardId, Option<ShardId>)>>,
    unconfirmed: Vec<UnconfirmedRequests>,
    /// Each process's player reports the master has not answered (`Node`'s).
    reports: Vec<PlayerReports>,
    /// The master's crash: its process and tick, and the tick a successor took the role over.
    master_crash: Option<(usize, u64)>,
    master_takeover: Option<u64>,
    /// The latest ticks on which the master did not act (no majority behind it, or the role
    /// vacant): `failover_completes` does not count them.
    idle_log: VecDeque<u64>,
    /// Each process's own tick number when its member list last changed (a paused shard does
    /// not tick, and handles the change only once it does).
    members_at: Vec<u64>,
    /// Ticks since the master's crash, with no successor yet, on which no two running
    /// processes were cut off from each other (`settles_to_one_master` counts these).
    vacant_connected: u64,
}

/// The late joiner: its process while it forms, and its links.
struct Joiner {
    /// Its endpoint, and the shard id it must get (ids are never reused).
    id: usize,
    /// `None` once formed (it is then `shards[id]`).
    forming: Option<Forming>,
    links: BTreeMap<LinkId, (usize, usize)>,
    dialed_at: u64,
    /// Members that do not know who is on its link yet (the master until its `Join`, the others
    /// until its `Peer`): what they send it is kept in their session until then, as `Node`
    /// keeps it.
    unnamed_at: BTreeSet<usize>,
    /// The tick it first held a leaf of the master's map.
    first_cell_at: Option<u64>,
}

/// What a run's joins and drains did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// Late joiners that formed and ticked.
    pub joins: u64,
    /// Leaves that passed to a late joiner in the master's maps.
    pub cells_to_joiners: u64,
    /// The most entities a late joiner owned at once.
    pub joiner_entities_max: u64,
    pub drains_ordered: u64,
    /// Drains the master completed (the shard was told `Drained` and stopped).
    pub drains_done: u64,
    /// Link messages a member held for the joiner until its link named itself, and dropped
    /// because the held ones reached their bound.
    pub unlinked_held: u64,
    pub unlinked_drops: u64,
    /// Shards crashed, the entities they held then, those of them lost for good (the master
    /// found no adopter), the bots playing on them, and the simulated time from the crash
    /// until the master's map gave away its last leaf.
    pub crashes: u64,
    pub crash_entities_held: u64,
    pub crash_entities_lost: u64,
    pub crash_bots_orphaned: u64,
    pub failover_ms: u64,
    /// Shards the master declared dead while they still ran (cut off from it past its silence),
    /// the ticks shards spent paused by a lapsed lease, and shards that stopped because they
    /// lost their lease.
    pub fenced: u64,
    /// Fences a successor did not know of (they died with the master that declared them): the
    /// shard is a member again.
    pub unfenced: u64,
    pub lease_paused_ticks: u64,
    pub leases_lost: u64,
    /// Entities of a shard taken down while its link to its buddy was dead (or just back), which
    /// its stale replica did not hold: lost, as in production.
    pub crash_entities_stale: u64,
    /// Masters crashed, successors that took the role over, the newest term, and the simulated
    /// time from the master's crash until its successor held the role (the longest).
    pub master_crashes: u64,
    pub takeovers: u64,
    pub max_term: u64,
    pub master_failover_ms: u64,
}

impl std::fmt::Debug for ClusterSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSim")
            .field("seed", &self.cfg.seed)
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

fn owned_of(app: &mut ShardApp) -> OwnedAt {
    let w = &mut app.world;
    w.query_filtered::<(&Networked, &Position), bevy_ecs::query::With<Owned>>()
        .iter(w)
        .map(|(n, p)| (n.0, (p.quantized(), [p.0.x, p.0.z])))
        .collect()
}

fn in_transit_of(app: &mut ShardApp) -> Vec<(NetId, InTransit, QPos)> {
    let w = &mut app.world;
    w.query::<(&Networked, &InTransit, &Position)>()
        .iter(w)
        .map(|(n, t, p)| (n.0, *t, p.quantized()))
        .collect()
}

/// What a run reports when every invariant held.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterOutcome {
    pub max_proxies: usize,
    /// Handoffs completed (sources that got an ack).
    pub handoffs: u64,
    /// Bot redirects that ended with the bot on its avatar's new shard.
    pub bot_handoffs: u64,
    /// Each shard's modelled tick CPU share as the master last heard it, and the shares of the
    /// cells it reported, summed (at most 1).
    pub tick_cpu_shares: Vec<f32>,
    pub cell_share_sums: Vec<f32>,
    pub membership: Membership,
    /// Bots that quit mid-redirect ([`ClusterConfig::quit_chance`]).
    pub quitters: u64,
    /// Link deaths, redials, and frames sent again.
    pub links: LinkStats,
}

impl ClusterSim {
    pub fn new(cfg: ClusterConfig) -> Result<Self, String> {
        let grid = CellGrid::from_config(&cfg.world);
        let mut rng = Rng::new(cfg.seed);
        let mut net = MemNetwork::new(rng.next_u64(), cfg.client_faults);
        let bot_base = cfg.shards + usize::from(cfg.join_at_tick.is_some());
        for a in 0..bot_base as u32 {
            for b in 0..bot_base as u32 {
                if a != b {
                    net.set_faults(a, b, cfg.link_faults);
                }
            }
        }
        let weights: Vec<u32> = (0..cfg.shards).map(|_| 1 + rng.below(3) as u32).collect();
        let mut now_us = 0;
        let balancer = if cfg.balance {
            let b = Balancer::new(&cfg.world).map_err(|e| e.to_string())?;
            Some((b, cfg.world.balancer.round_ms))
        } else {
            None
        };
        let silence_ms = cfg.world.cluster.shard_silence_ms;
        let mut formed = form(
            &mut net,
            grid,
            &weights,
            (balancer, silence_ms),
            &mut now_us,
        )?;
        let master = formed[0]
            .master
            .take()
            .ok_or("shard 0 formed without the master role")?
            .with_sent_on_wait(SENT_ON_WAIT_MS);
        let map = formed[0].map.clone();
        let mut members: Vec<Vec<MemberInfo>> = formed.iter().map(|f| f.members.clone()).collect();
        members.resize(bot_base, Vec::new());
        // The processes' clocks draw from a stream of their own.
        let mut clock_rng = Rng::new(cfg.seed ^ 0x0C10_C5EE);
        let run_us = cfg.ticks * 1_000_000 / u64::from(cfg.world.simulation.tick_hz);
        // One for each process, and one for a joiner whether or not a seed has one.
        let clocks: Vec<Clock> = (0..=cfg.shards)
            .map(|i| {
                let (skew, step) = (cfg.clock_skew_ppm_max, cfg.wall_step_ms_max);
                Clock::draw(&mut clock_rng, i == 0, skew, step, run_us)
            })
            .collect();
        // Every shard but the master holds a lease from the end of forming, as `Node::new`.
        let leases = (0..bot_base)
            .map(|i| (i > 0 && i < cfg.shards).then(|| Lease::new(clocks[i].mono_ms(now_us))))
            .collect();
        // Every process runs the election from the end of forming (`Node::with_succession`).
        let master_silence_ms = cfg.world.cluster.master_silence_ms;
        let elections = (0..bot_base)
            .map(|i| {
                let mono = clocks[i.min(cfg.shards)].mono_ms(now_us);
                QuorumElection::new(ShardId(i as u16), ShardId(0), master_silence_ms, mono)
            })
            .collect();
        // The simulation is its own account service: a seeded key, so runs replay exactly.
        let signer =
            TicketSigner::from_seed("sim", seed_bytes(cfg.seed)).map_err(|e| e.to_string())?;
        let mut shards = make_shards(&cfg, &map, &signer);
        let early: Vec<(usize, ShardId, LinkMessage)> = formed
            .iter_mut()
            .enumerate()
            .flat_map(|(i, f)| {
                std::mem::take(&mut f.early)
                    .into_iter()
                    .map(move |(from, m)| (i, from, m))
            })
            .collect();
        let alive = shards
            .iter_mut()
            .flat_map(|s| owned_of(s).into_keys())
            .collect();
        let bots = make_bots(&cfg, &shards[0], &signer, &mut rng);
        let login_keys = signer.public_keys();
        let tick_us = 1_000_000 / u64::from(cfg.world.simulation.tick_hz);
        let boundary = BoundaryIndex::new(&map);
        let maps = BTreeMap::from([(map.epoch().0, map.clone())]);
        let loads = (0..cfg.shards)
            .map(|_| ModelledLoad::new(cfg.world.simulation.tick_hz))
            .collect();
        let quit_rng = Rng::new(cfg.seed ^ 0x0051_7E00);
        let link_rng = Rng::new(cfg.seed ^ 0x0001_14CD_EAD0);
        let mut sim = Self {
            cfg,
            shards,
            map,
            net,
            rng,
            now_us,
            tick_us,
            bots,
            loads,
            history: VecDeque::new(),
            frozen_history: VecDeque::new(),
            near_for: BTreeMap::new(),
            alive,
            transit_for: BTreeMap::new(),
            partitions: BTreeMap::new(),
            disturbed: BTreeMap::new(),
            boundary,
            maps,
            master,
            quit_rng,
            handoffs: 0,
            sabotage: None,
            stray_for: BTreeMap::new(),
            reshapes: 0,
            epochs_held: Vec::new(),
            map_taken_at: Vec::new(),
            bad_map: None,
            bot_base,
            joiner: None,
            login_keys,
            departed: BTreeSet::new(),
            draining: BTreeMap::new(),
            crashed: BTreeMap::new(),
            crash_limbo: BTreeMap::new(),
            adoption_heard: BTreeMap::new(),
            crash_lost: BTreeSet::new(),
            orphan_avatars: BTreeSet::new(),
            failure: None,
            membership: Membership::default(),
            clocks,
            sessions: wire::sessions_for(bot_base),
            members,
            left: vec![BTreeSet::new(); bot_base],
            peered: vec![BTreeSet::new(); bot_base],
            leases,
            lease_seqs: vec![0; bot_base],
            dead_links: BTreeMap::new(),
            link_rng,
            link_stats: LinkStats::default(),
            fenced: BTreeMap::new(),
            paused: BTreeSet::new(),
            ticked: BTreeSet::new(),
            cut_from_master: BTreeMap::new(),
            link_back_at: BTreeMap::new(),
            cut_at: BTreeMap::new(),
            stale_replica: BTreeSet::new(),
            tick: 0,
            master_at: 0,
            master_down: false,
            elections,
            standbys: vec![Standby::default(); bot_base],
            standby_seats: vec![BTreeMap::new(); bot_base],
            held_dead: vec![Vec::new(); bot_base],
            unconfirmed: vec![UnconfirmedRequests::default(); bot_base],
            reports: vec![PlayerReports::default(); bot_base],
            master_crash: None,
            master_takeover: None,
            idle_log: VecDeque::new(),
            members_at: vec![0; bot_base],
            vacant_connected: 0,
        };
        sim.epochs_held = vec![sim.map.epoch().0; sim.n()];
        sim.map_taken_at = vec![0; sim.n()];
        for (to, from, msg) in early {
            sim.on_wire_message(to, usize::from(from.0), msg);
        }
        Ok(sim)
    }

    /// Run every tick; stop at the first violated invariant.
    pub fn run(mut self) -> Result<ClusterOutcome, Violation> {
        let mut max_proxies = 0;
        for _ in 0..self.cfg.ticks {
            let tick = self.step();
            if let Some(s) = self.sabotage.as_mut() {
                s(&mut self.shards, tick);
            }
            max_proxies = max_proxies.max(self.check(tick)?);
        }
        let handoffs = self
            .shards
            .iter()
            .map(|s| s.world.resource::<HandoffStats>().out)
            .sum();
        Ok(ClusterOutcome {
            max_proxies,
            handoffs,
            bot_handoffs: self.bots.iter().map(|b| b.bot.metrics.handoffs).sum(),
            tick_cpu_shares: self
                .master
                .members()
                .values()
                .map(|m| m.load.tick_cpu_share)
                .collect(),
            cell_share_sums: (self.master.members().values())
                .map(|m| m.load.cells.iter().map(|c| c.tick_share).sum())
                .collect(),
            membership: self.membership,
            quitters: self.bots.iter().filter(|b| b.quit.is_some()).count() as u64,
            links: self.link_stats,
        })
    }

    /// Shards so far (drained ones included: shard `i` stays `shards[i]`).
    fn n(&self) -> usize {
        self.shards.len()
    }

    /// The shards that tick: every one but those drained.
    fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.n()).filter(|i| !self.departed.contains(i))
    }

    fn step(&mut self) -> u64 {
        self.now_us += self.tick_us;
        let now = self.now_us;
        self.tick += 1;
        let next_tick = self.tick;
        self.weather(next_tick);
        self.long_cut(next_tick);
        self.link_weather();
        self.dial_in(next_tick);
        self.reshape(next_tick);
        self.log_bots_in(now, next_tick);
        self.quit_bots(now, next_tick);
        for (from, to, packet) in self.net.poll(now) {
            self.deliver(now, from as usize, to as usize, packet);
        }
        self.send_acks();
        self.take_in_joiner(next_tick);
        if self.cfg.crash_at_tick == Some(next_tick) {
            self.crash(next_tick);
        }
        // The master crashes once no joiner forms (it dials the master's address only) and the
        // role is held.
        let joiner_forming = (self.joiner.as_ref()).is_some_and(|j| j.forming.is_some());
        if self
            .cfg
            .master_crash_at_tick
            .is_some_and(|t| next_tick >= t)
            && self.master_crash.is_none()
            && !joiner_forming
            && self.master_up()
            && self.master_crash_survivable()
        {
            self.crash_master(next_tick);
        }
        self.poll_elections();
        if !self.master_acts() {
            if self.idle_log.len() >= 4_096 {
                self.idle_log.pop_front();
            }
            self.idle_log.push_back(next_tick);
            tracing::debug!(tick = next_tick, "sim: the master does not act");
        }
        // The lease decides who simulates (`runtime`'s `lease_allows`): a lapsed one pauses the
        // tick (the shard still heartbeats and drains its links), a lost one stops the process.
        self.paused.clear();
        self.ticked.clear();
        for i in self.live().collect::<Vec<_>>() {
            match self.lease_state(i) {
                LeaseState::Holds => {
                    self.ticked.insert(i);
                }
                LeaseState::Lapsed { .. } => {
                    self.paused.insert(i);
                    self.membership.lease_paused_ticks += 1;
                }
                LeaseState::Lost(why) => self.lease_lost(i, next_tick, &why.to_string()),
            }
        }
        let ticking: Vec<usize> = self.ticked.iter().copied().collect();
        for &i in &ticking {
            // `RUST_LOG=debug` replays say which shard logged what, and when.
            let _span = tracing::debug_span!("shard", i, tick = next_tick).entered();
            let wall_ms = self.clocks[i].wall_ms(now);
            let s = &mut self.shards[i];
            s.set_now_ms(wall_ms);
            s.tick();
        }
        let live: Vec<usize> = self.live().collect();
        let heartbeat_ticks =
            (limits::HEARTBEAT_MS * u64::from(self.cfg.world.simulation.tick_hz) / 1_000).max(1);
        if next_tick.is_multiple_of(heartbeat_ticks) {
            for &i in &live {
                let mut load = self.shards[i].load();
                self.loads[i].close(&mut load);
                let mono = self.mono_ms(i);
                load.seq = (self.leases[i].as_mut()).map_or(0, |l| l.sent(mono));
                load.lease_seq = self.lease_seqs[i];
                load.term = self.elections[i].term();
                let direct = self.is_master(i);
                self.reports[i].sending(&mut load, direct);
                load.members_digest = zonescaler_shared::protocol::members_digest(
                    self.members[i].iter().map(|m| m.id),
                );
                self.send_to_master(i, LinkMessage::Heartbeat(load));
            }
        }
        for &i in &ticking {
            let link_bytes = self.send_batches(i);
            let period = std::time::Duration::from_micros(self.tick_us);
            self.loads[i].after_tick(&self.shards[i], period, link_bytes);
            for req in self.shards[i].drain_master_requests() {
                self.request_master(i, req);
            }
            for cmd in self.shards[i].drain_outbox() {
                let to = (self.bot_base as u64 + cmd.conn().0) as u32;
                let (packet, reliable) = Packet::from_command(cmd);
                self.net.send(now, i as u32, to, packet, reliable);
            }
        }
        for (i, b) in self.bots.iter_mut().enumerate() {
            let Some(shard) = b.shard.filter(|_| b.welcomed && !b.gone) else {
                continue;
            };
            if let Some(input) = b.bot.next_input(now) {
                self.net.send(
                    now,
                    (self.bot_base + i) as u32,
                    shard as u32,
                    Packet::Datagram(Bytes::from(input)),
                    false,
                );
            }
        }
        self.tick
    }

    /// Shard `i` lost its lease (fenced, or cut off from the master too long): the process
    /// stops, as the runtime does ("lost its ownership lease"). One the master has not declared
    /// dead yet goes as a crash does (its verdict follows).
    fn lease_lost(&mut self, i: usize, tick: u64, why: &str) {
        tracing::info!(shard = i, tick, why, "sim: lost its lease, stopped");
        self.membership.leases_lost += 1;
        if !self.crashed.contains_key(&i) {
            self.take_down(i, tick);
        }
        self.fenced.remove(&i);
        self.stopped(i);
    }

    /// The long cut ([`ClusterConfig::long_cut`]): a random shard other than the master's that
    /// ticks, is not the late joiner, not draining and not crashed, cut off from the master
    /// past its silence. Also keeps `cut_from_master` (`no_false_death`).
    fn long_cut(&mut self, next_tick: u64) {
        if let Some((at, ticks)) = self.cfg.long_cut.filter(|(at, _)| *at == next_tick) {
            let joiner = self.joiner.as_ref().map(|j| j.id);
            let master = self.master_at;
            let candidates: Vec<usize> = (self.live())
                .filter(|&i| {
                    i != master
                        && Some(i) != joiner
                        && !self.draining.contains_key(&i)
                        && !self.crashed.contains_key(&i)
                })
                .collect();
            if !candidates.is_empty() {
                let mut pick = Rng::new(self.cfg.seed ^ 0x0010_C0CC);
                let c = candidates[pick.below(candidates.len() as u64) as usize];
                tracing::info!(shard = c, tick = at, ticks, "sim: long cut from the master");
                let heal = next_tick + ticks;
                let e = (self.partitions)
                    .entry((master.min(c), master.max(c)))
                    .or_insert(heal);
                *e = (*e).max(heal);
                self.net.set_partition(master as u32, c as u32, true);
            }
        }
        let m = self.master_at;
        let cut: Vec<usize> = (0..self.n())
            .filter(|&i| {
                let key = (m.min(i), m.max(i));
                i != m && (self.partitions.contains_key(&key) || self.dead_links.contains_key(&key))
            })
            .collect();
        for i in cut {
            self.cut_from_master.insert(i, next_tick);
        }
        for pair in self.partitions.keys() {
            self.cut_at.insert(*pair, next_tick);
        }
    }

    /// A packet from endpoint `from` arrived at endpoint `to`.
    fn deliver(&mut self, now: u64, from: usize, to: usize, packet: Packet) {
        if to >= self.bot_base {
            self.deliver_to_bot(now, from, to - self.bot_base, packet);
            return;
        }
        if self
            .joiner
            .as_ref()
            .is_some_and(|j| j.id == to && j.forming.is_some())
        {
            self.joiner_event(from, packet);
            return;
        }
        // Nobody is there (a joiner's endpoint before it dialed), or nobody listens any more (a
        // drained shard's links and connections are closed).
        if to >= self.n() || self.departed.contains(&to) {
            return;
        }
        if from >= self.bot_base {
            let conn = ConnId((from - self.bot_base) as u64);
            if let Some(ev) = packet.into_event(conn) {
                self.shards[to].push_event(ev);
            }
            return;
        }
        let (link, msg) = match packet {
            Packet::Link(link, msg) => (link, msg),
            Packet::Frame(bytes) => return self.on_frame(to, from, &bytes),
            _ => return,
        };
        // A new link waits for its first message to say who is on it (`Node`'s unnamed links).
        let unnamed = self
            .joiner
            .as_ref()
            .is_some_and(|j| j.id == from && j.unnamed_at.contains(&to));
        if unnamed {
            self.unnamed_message(to, from, link, msg);
        } else {
            self.on_wire_message(to, from, msg);
        }
    }

    /// The late joiner starts at its tick: a [`Forming::joiner`] that dials the master, as
    /// `zonescaler shard --join` does.
    fn dial_in(&mut self, next_tick: u64) {
        if self.cfg.join_at_tick != Some(next_tick) || self.joiner.is_some() {
            return;
        }
        let id = self.cfg.shards;
        let grid = *self.map.grid();
        let req = join_request(id, self.cfg.joiner_weight);
        let (forming, acts) = Forming::joiner(grid, req, "sim:0".into());
        self.joiner = Some(Joiner {
            id,
            forming: Some(forming),
            links: BTreeMap::new(),
            dialed_at: next_tick,
            unnamed_at: self.live().collect(),
            first_cell_at: None,
        });
        self.joiner_acts(acts);
    }

    /// Carry out the forming joiner's actions on the simulated links.
    fn joiner_acts(&mut self, acts: Vec<FormAction>) {
        let now = self.now_us;
        let Some(j) = self.joiner.as_mut() else {
            return;
        };
        let Some(f) = j.forming.as_mut() else {
            return;
        };
        for act in acts {
            if let Err(e) = carry_out(
                &mut self.net,
                f,
                &mut j.links,
                JOINER_LINKS_FROM,
                j.id,
                act,
                now,
            ) {
                self.failure
                    .get_or_insert(("joiner_gets_cells", format!("the joiner: {e}")));
            }
        }
    }

    /// A packet for the joiner while it forms: a link event for its [`Forming`]. Messages sent
    /// during play travel on `LinkId(0)`: they are on the joiner's link to their sender.
    fn joiner_event(&mut self, from: usize, packet: Packet) {
        let now_ms = self.mono_ms(self.cfg.shards);
        let Some(j) = self.joiner.as_mut() else {
            return;
        };
        let link_to = |links: &BTreeMap<LinkId, (usize, usize)>| {
            links
                .iter()
                .find(|(_, (a, b))| *a == from || *b == from)
                .map(|(l, _)| *l)
        };
        let ev = match packet {
            Packet::LinkUp(link) => FormEvent::Up(link),
            Packet::Link(LinkId(0), msg) => match link_to(&j.links) {
                Some(link) => FormEvent::Message(link, msg),
                None => return,
            },
            Packet::Link(link, msg) => FormEvent::Message(link, msg),
            Packet::Frame(bytes) => match (
                link_to(&j.links),
                zonescaler_shared::codec::decode_link_message(&bytes),
            ) {
                (Some(link), Ok(msg)) => FormEvent::Message(link, msg),
                _ => return,
            },
            _ => return,
        };
        let Some(f) = j.forming.as_mut() else {
            return;
        };
        match f.on_event(ev, now_ms) {
            Ok(acts) => self.joiner_acts(acts),
            Err(e) => {
                self.failure
                    .get_or_insert(("joiner_gets_cells", format!("the joiner: {e}")));
            }
        }
    }

    /// Once the joiner formed, it is shard `id` and ticks from now on: the messages it kept
    /// while it formed come first, in order.
    fn take_in_joiner(&mut self, tick: u64) {
        let now_ms = self.mono_ms(self.cfg.shards);
        let Some(j) = self.joiner.as_mut() else {
            return;
        };
        if !j.forming.as_ref().is_some_and(Forming::is_formed) {
            return;
        }
        let id = j.id;
        let Some(formed) = j.forming.take().and_then(|f| f.finish(now_ms)) else {
            self.failure.get_or_insert((
                "joiner_gets_cells",
                "the joiner formed but could not finish".into(),
            ));
            return;
        };
        if usize::from(formed.me.0) != id || self.n() != id {
            self.failure.get_or_insert((
                "joiner_gets_cells",
                format!("the joiner (process {id}) became shard {}", formed.me.0),
            ));
            return;
        }
        let app = make_shard(&self.cfg, formed.me, &formed.map, self.login_keys.clone());
        self.shards.push(app);
        self.loads
            .push(ModelledLoad::new(self.cfg.world.simulation.tick_hz));
        self.epochs_held.push(formed.map.epoch().0);
        self.map_taken_at.push(tick);
        self.leases[id] = Some(Lease::new(now_ms));
        self.members[id] = formed.members.clone();
        let silence_ms = self.cfg.world.cluster.master_silence_ms;
        self.elections[id] = QuorumElection::new(formed.me, formed.master_id, silence_ms, now_ms);
        self.membership.joins += 1;
        tracing::info!(shard = id, tick, "sim: the late joiner formed, ticking");
        for (from, msg) in formed.early {
            self.on_wire_message(id, usize::from(from.0), msg);
        }
    }

    /// A message on a link its receiver `to` does not know the other end of: the joiner's
    /// `Join` (on the master) or `Peer` (on the others), as `Node::unnamed_message` takes them.
    fn unnamed_message(&mut self, to: usize, from: usize, link: LinkId, msg: LinkMessage) {
        match msg {
            LinkMessage::Join(req) if to == self.master_at => self.late_join(from, link, req),
            LinkMessage::Peer { id } if usize::from(id.0) == from => self.named(to),
            // `Node` closes such a link; the joiner then cannot form.
            other => {
                self.failure.get_or_insert((
                    "joiner_gets_cells",
                    format!("shard {to} got {other:?} first on the joiner's link"),
                ));
            }
        }
    }

    /// Member `at` learnt who is on the joiner's link: what it held for the joiner goes out on
    /// it, in order (`Node::name_link`).
    fn named(&mut self, at: usize) {
        let Some(j) = self.joiner.as_mut() else {
            return;
        };
        j.unnamed_at.remove(&at);
        let to = j.id;
        self.peered[at].insert(ShardId(to as u16));
        for frame in self.sessions[at].relinked(ShardId(to as u16), 0) {
            self.net.send(
                self.now_us,
                at as u32,
                to as u32,
                Packet::Frame(frame),
                true,
            );
        }
    }

    /// On the master, as `Node::late_join`: admit the joiner, answer `Joined` and the map on its
    /// link, and tell the others who is in the cluster now.
    fn late_join(&mut self, from: usize, link: LinkId, req: JoinRequest) {
        let now_ms = self.master_ms();
        let id = match self.master.join(req, now_ms) {
            Ok(id) => id,
            Err(e) => {
                self.failure.get_or_insert((
                    "joiner_gets_cells",
                    format!("the master refused the joiner: {e}"),
                ));
                return;
            }
        };
        if usize::from(id.0) != from {
            self.failure.get_or_insert((
                "joiner_gets_cells",
                format!("the master gave process {from} shard id {}", id.0),
            ));
            return;
        }
        let Some(push) = self.master.push_for_joiner() else {
            return;
        };
        let notices = self.master.members_changed(Some(id));
        tracing::info!(shard = id.0, "sim: the master admitted the late joiner");
        let now = self.now_us;
        let at = self.master_at;
        let master = ShardId(at as u16);
        for msg in [LinkMessage::Joined { id, master }, LinkMessage::Map(push)] {
            self.net
                .send(now, at as u32, from as u32, Packet::Link(link, msg), true);
        }
        self.named(at);
        for (to, notice) in notices {
            self.notify(usize::from(to.0), notice);
        }
    }

    /// A random shard other than the master's that ticks, is not the late joiner, is not being
    /// drained and was not fenced crashes: it stops where it is (out of `live`, hearing
    /// nothing), and is taken down for the checks ([`Self::take_down`]).
    fn crash(&mut self, tick: u64) {
        let joiner = self.joiner.as_ref().map(|j| j.id);
        let candidates: Vec<usize> = self
            .live()
            .filter(|&i| {
                i != self.master_at
                    && Some(i) != joiner
                    && !self.draining.contains_key(&i)
                    && !self.crashed.contains_key(&i)
            })
            .collect();
        if candidates.is_empty() {
            return;
        }
        let mut pick = Rng::new(self.cfg.seed ^ 0x0C2A_5112);
        let c = candidates[pick.below(candidates.len() as u64) as usize];
        self.take_down(c, tick);
        self.stopped(c);
        self.membership.crashes += 1;
    }

    /// Shard `c` is gone for the checks as of `tick` (it crashed, lost its lease, or the master
    /// fenced it): what it held waits in `crash_limbo` for its adopter, its bots (playing
    /// there, or on their way there) are orphaned, out of `players_keep_avatars`.
    fn take_down(&mut self, c: usize, tick: u64) {
        let owned = owned_of(&mut self.shards[c]);
        let frozen = in_transit_of(&mut self.shards[c]);
        let lost: BTreeSet<NetId> = (owned.keys().copied())
            .chain(frozen.iter().map(|(id, _, _)| *id))
            .collect();
        self.crash_limbo.extend(lost.iter().map(|id| (*id, c)));
        let buddy = (self.master.members().get(&ShardId(c as u16)))
            .and_then(|m| m.load.buddy)
            .map(|b| usize::from(b.0));
        if let Some(b) = buddy {
            let key = (b.min(c), b.max(c));
            let settle = 2 * self.cfg.lag_bound_ticks() as u64 + 2;
            let dead = self.dead_links.contains_key(&key) || self.partitions.contains_key(&key);
            let lately = (self.link_back_at.get(&key)).is_some_and(|at| tick <= at + settle)
                || (self.cut_at.get(&key)).is_some_and(|at| tick <= at + settle);
            if dead || lately {
                tracing::info!(
                    shard = c,
                    buddy = b,
                    "sim: taken down while its buddy's link was dead: its replica is stale"
                );
                self.stale_replica.insert(c);
            }
        }
        let mut orphaned = 0;
        for b in &mut self.bots {
            let avatar_lost = b.bot.welcome().is_some_and(|w| lost.contains(&w.avatar));
            if !b.gone && (b.shard == Some(c) || b.pending == Some(c) || avatar_lost) {
                b.gone = true;
                orphaned += 1;
                self.orphan_avatars
                    .extend(b.bot.welcome().map(|w| w.avatar));
            }
        }
        tracing::info!(
            shard = c,
            tick,
            entities = lost.len(),
            bots = orphaned,
            "sim: gone (crashed, lost its lease or fenced)"
        );
        self.crashed.insert(c, (tick, None));
        self.draining.remove(&c);
        self.membership.crash_entities_held += lost.len() as u64;
        self.membership.crash_bots_orphaned += orphaned;
    }

    /// `no_lost_entities` for an entity of a crashed shard that is nowhere now: excused until
    /// the master's verdict and `FAILOVER_BOUND_MS` after it; lost for good (counted) when the
    /// master found no adopter; otherwise a violation.
    fn crash_excuses(&mut self, id: NetId, tick: u64) -> Result<bool, String> {
        let Some(&c) = self.crash_limbo.get(&id) else {
            return Ok(self.crash_lost.contains(&id));
        };
        let verdict = match self.crashed.get(&c) {
            Some((_, Some(v))) => *v,
            _ => return Ok(true),
        };
        let adopter = match self.master.adopter_of(ShardId(c as u16)) {
            Some(None) => {
                self.crash_limbo.remove(&id);
                self.crash_lost.insert(id);
                self.membership.crash_entities_lost += 1;
                return Ok(true);
            }
            Some(Some(a)) => usize::from(a.0),
            None => return Ok(true),
        };
        // From the verdict, or from when the adopter heard of it (a partition may hold the
        // master's map back), whichever is later.
        // Once it adopted: it heard of the death and every live member told it what it took
        // from the dead shard (a partition may hold either back).
        let heard = self.shards[adopter]
            .world
            .resource::<Replicas>()
            .adopted(ShardId(c as u16));
        if !heard {
            return Ok(true);
        }
        let since = *self.adoption_heard.entry(c).or_insert(tick);
        if tick <= verdict.max(since) + self.cfg.ticks_in(FAILOVER_BOUND_MS) {
            return Ok(true);
        }
        if self.stale_replica.contains(&c) {
            self.crash_limbo.remove(&id);
            self.crash_lost.insert(id);
            self.membership.crash_entities_stale += 1;
            return Ok(true);
        }
        Err(format!(
            "{id} of crashed shard {c} did not come back {FAILOVER_BOUND_MS} ms after shard {adopter} adopted it (verdict at tick {verdict}, heard at tick {since})"
        ))
    }

    /// `failover_completes`: the master's map gives a crashed shard no leaf within
    /// `SHARD_DEAD_AFTER_MS` + `failover_bound_ms` of the last message the master heard from it
    /// (a partition may hold its last heartbeats back past the crash).
    fn check_failover(&mut self, tick: u64) -> Result<(), Violation> {
        // Nobody declares deaths while the role is vacant (`settles_to_one_master` bounds
        // that); a successor's silence for each member starts at its takeover.
        if !self.master_up() {
            return Ok(());
        }
        let now_ms = self.master_ms();
        let bound_ms = self.cfg.world.cluster.shard_silence_ms + self.cfg.failover_bound_ms;
        for (&c, &(at, _)) in &self.crashed {
            let heard_ms =
                (self.master.members().get(&ShardId(c as u16))).map_or(0, |m| m.last_heard_ms);
            let leaves = self.map.cells_of(ShardId(c as u16)).count();
            if leaves == 0 {
                if self.membership.failover_ms == 0 {
                    self.membership.failover_ms =
                        (tick - at) * 1_000 / u64::from(self.cfg.world.simulation.tick_hz);
                }
                continue;
            }
            // Time the master spent without a majority since it last heard from the shard (a
            // dead link, a partition, the role vacant) does not count: it declares nobody dead
            // then.
            let since = tick.saturating_sub(self.cfg.ticks_in(now_ms.saturating_sub(heard_ms)));
            let idle = self.idle_log.iter().filter(|t| **t >= since).count() as u64;
            let idle_ms = self.cfg.ms_in(idle);
            if now_ms.saturating_sub(heard_ms) > bound_ms + idle_ms {
                let events: Vec<String> = (self.master.view().events.iter().rev().take(4))
                    .map(|e| format!("{}: {}", e.kind, e.text))
                    .collect();
                return Err(Violation {
                    seed: self.cfg.seed,
                    tick,
                    invariant: "failover_completes",
                    detail: format!(
                        "shard {c} crashed at tick {at} and the master's map still gives it {leaves} leaves {} ms after it last heard from it (bound {bound_ms} ms); the master's last events: {events:?}",
                        now_ms.saturating_sub(heard_ms)
                    ),
                });
            }
        }
        Ok(())
    }

    fn order_drain(&mut self, tick: u64) {
        let members = self.master.members();
        let candidates: Vec<usize> = self
            .live()
            .filter(|&i| i != self.master_at)
            .filter(|&i| {
                members
                    .get(&ShardId(i as u16))
                    .is_some_and(|m| m.takes_work())
            })
            .collect();
        if candidates.is_empty() {
            return;
        }
        let d = candidates[self.rng.below(candidates.len() as u64) as usize];
        match self.master.drain(ShardId(d as u16), self.master_ms()) {
            Ok(()) => {
                tracing::info!(shard = d, tick, "sim: drain ordered");
                self.membership.drains_ordered += 1;
                self.draining.insert(d, tick);
            }
            Err(e) => {
                self.failure.get_or_insert((
                    "drain_completes",
                    format!("the master refused to drain shard {d}: {e}"),
                ));
            }
        }
    }

    /// Partitions come and go between random pairs of shards.
    fn weather(&mut self, next_tick: u64) {
        let live: Vec<usize> = self.live().collect();
        let n = live.len();
        if n > 1 && self.rng.chance(self.cfg.partition_chance) {
            let a = self.rng.below(n as u64) as usize;
            let b = (a + 1 + self.rng.below(n as u64 - 1) as usize) % n;
            let (a, b) = (live[a], live[b]);
            let heal = next_tick + 5 + self.rng.below(self.cfg.partition_ticks_max);
            // A pair already cut heals when it was going to: partitions of one pair back to
            // back could otherwise outlast the master's silence (`no_false_death`).
            self.partitions.entry((a.min(b), a.max(b))).or_insert(heal);
            self.net.set_partition(a as u32, b as u32, true);
        }
        let net = &mut self.net;
        self.partitions.retain(|&(a, b), heal| {
            let keep = *heal > next_tick;
            if !keep {
                net.set_partition(a as u32, b as u32, false);
            }
            keep
        });
    }

    /// The master's part: moves that are overdue are aborted; now and then a leaf is ordered
    /// moved, split or merged. Its notices travel the links from shard 0.
    fn reshape(&mut self, next_tick: u64) {
        // Only a master with a majority behind it acts (`Node::master_housekeeping`).
        if !self.master_acts() {
            return;
        }
        let now_ms = self.master_ms();
        // The master's housekeeping, as `Node::master_housekeeping` does it.
        let dead = self.master.check_liveness(now_ms);
        // A shard cut off from the master within its silence (and a second) may be declared
        // dead while it runs: its lease has stopped it, and it is fenced.
        let recent = self
            .cfg
            .ticks_in(self.cfg.world.cluster.shard_silence_ms + 1_000);
        for d in &dead {
            let d = usize::from(d.0);
            let was_cut = (self.cut_from_master.get(&d))
                .is_some_and(|at| next_tick.saturating_sub(*at) <= recent);
            match self.crashed.get_mut(&d) {
                Some((_, verdict)) => *verdict = Some(next_tick),
                None if was_cut => {
                    tracing::info!(
                        shard = d,
                        tick = next_tick,
                        "sim: declared dead while running: fenced"
                    );
                    self.take_down(d, next_tick);
                    if let Some((_, v)) = self.crashed.get_mut(&d) {
                        *v = Some(next_tick);
                    }
                    self.fenced.insert(d, next_tick);
                    self.membership.fenced += 1;
                }
                None => {
                    self.failure.get_or_insert((
                        "no_false_death",
                        format!(
                            "the master declared shard {d} dead, which never crashed and was not cut off from it"
                        ),
                    ));
                }
            }
        }
        let mut notices = self.master.check_moves(now_ms);
        // The admission round, as `Node::admit` runs it every tick: seats of logins that never
        // arrived, and of players sent on that never arrived anywhere, are freed here.
        notices.extend(self.master.admit(now_ms));
        if self.cfg.balance {
            notices.extend(self.master.balance(now_ms));
        }
        if !dead.is_empty() {
            notices.extend(self.master.members_changed(None));
        }
        notices.extend(self.master.check_drained(now_ms));
        // Its state, for a successor.
        notices.extend(self.master.standby());
        if self.cfg.drain_at_tick == Some(next_tick) {
            self.order_drain(next_tick);
        }
        let started = next_tick > u64::from(self.cfg.world.simulation.tick_hz);
        if started && self.rng.chance(self.cfg.move_chance) {
            let leaves: Vec<CellId> = self.map.leaves().keys().copied().collect();
            let cell = leaves[self.rng.below(leaves.len() as u64) as usize];
            let to = ShardId(self.rng.below(self.n() as u64) as u16);
            // Random moves go to shards that take work, as the balancer's do: not to one that
            // drains (or left), nor to a joiner that has not linked to everyone yet.
            let takes_work = self
                .master
                .members()
                .get(&to)
                .is_some_and(|m| m.takes_work());
            if takes_work && let Ok(n) = self.master.move_cell(cell, to, now_ms) {
                self.reshapes += 1;
                notices.extend(n);
            }
        }
        if started && self.rng.chance(self.cfg.reshape_chance) {
            notices.extend(self.split_or_merge());
        }
        self.record_map();
        for (to, notice) in notices {
            self.notify(usize::from(to.0), notice);
        }
    }

    /// Split a random leaf whose children stay at least twice the interest radius, or merge the
    /// parent of a random split leaf (refused by the master when its children have two owners
    /// or one of them is moving: that is part of what is tested).
    fn split_or_merge(&mut self) -> Vec<(ShardId, MasterNotice)> {
        let leaves: Vec<CellId> = self.map.leaves().keys().copied().collect();
        let cell = leaves[self.rng.below(leaves.len() as u64) as usize];
        let r = self.map.grid().rect(cell);
        let child_m = (r.max[0] - r.min[0]) / 2.0;
        let result =
            if self.rng.chance(0.5) && child_m >= 2.0 * self.cfg.world.interest.interest_radius_m {
                self.master.split_cell(cell)
            } else if let Some(parent) = cell.parent() {
                self.master.merge_cell(parent)
            } else {
                return Vec::new();
            };
        result.inspect(|_| self.reshapes += 1).unwrap_or_default()
    }

    /// Bots in the middle of a redirect quit now and then ([`ClusterConfig::quit_chance`]),
    /// hanging up on the shard they played on and the one they were sent to. Drawn from a
    /// stream of their own, so the rest of the run only changes by what the quitters change.
    fn quit_bots(&mut self, now: u64, next_tick: u64) {
        if self.cfg.quit_chance <= 0.0 {
            return;
        }
        for i in 0..self.bots.len() {
            let b = &mut self.bots[i];
            let (Some(old), Some(new), false) = (b.shard, b.pending, b.gone) else {
                continue;
            };
            if !b.welcomed || !self.quit_rng.chance(self.cfg.quit_chance) {
                continue;
            }
            b.gone = true;
            b.quit = Some(Quit {
                tick: next_tick,
                shards: [old, new],
                waited: 0,
            });
            let me = (self.bot_base + i) as u32;
            for to in [old, new] {
                let bye = Packet::Close("quit".into());
                self.net.send(now, me, to as u32, bye, true);
            }
        }
    }

    /// Bots log in over the first ticks, through a random one of the first shards.
    fn log_bots_in(&mut self, now: u64, next_tick: u64) {
        let n = self.cfg.shards;
        let base = self.bot_base;
        for i in 0..self.bots.len() {
            let b = &mut self.bots[i];
            if b.shard.is_none()
                && b.pending.is_none()
                && !b.gone
                && next_tick == 2 + (i as u64 % 20)
            {
                let via = self.rng.below(n as u64) as usize;
                let hello = b.bot.hello(now);
                b.pending = Some(via);
                let me = (base + i) as u32;
                self.net.send(now, me, via as u32, Packet::Connect, true);
                let hello = Packet::Control(Bytes::from(hello));
                self.net.send(now, me, via as u32, hello, true);
            }
        }
    }

    /// One tick's shard messages of shard `i`: one batch per neighbour, as a shard's node sends.
    /// Returns the bytes of those messages.
    fn send_batches(&mut self, i: usize) -> u64 {
        let mut per: BTreeMap<ShardId, Vec<Vec<u8>>> = BTreeMap::new();
        let mut bytes_out = 0;
        for (to, bytes) in self.shards[i].drain_shard_outbox() {
            bytes_out += bytes.len() as u64;
            per.entry(to).or_default().push(bytes.to_vec());
        }
        for (to, msgs) in per {
            let msg = LinkMessage::Batch(msgs);
            self.link_send(i, usize::from(to.0), msg);
        }
        bytes_out
    }

    /// A message for the master `from` follows: over the link, or straight in on the master
    /// itself.
    fn send_to_master(&mut self, from: usize, msg: LinkMessage) {
        let to = usize::from(self.elections[from].master().0);
        if to != from {
            self.link_send(from, to, msg);
        } else if from == self.master_at && self.master_up() {
            self.on_link_message(from, from, msg);
        }
    }

    /// A request of shard `from`'s for the master: kept until a lease answer past its next
    /// heartbeat confirms the master heard it, and sent again to a successor
    /// (`Node::to_master`).
    fn request_master(&mut self, from: usize, req: MasterRequest) {
        let to = usize::from(self.elections[from].master().0);
        if to != from {
            let after = self.leases[from].as_ref().map_or(0, Lease::next_seq);
            self.unconfirmed[from].sent(after, req.clone());
        }
        self.send_to_master(from, LinkMessage::ToMaster(req));
    }

    /// Whether process `p` holds the master role and is up.
    fn is_master(&self, p: usize) -> bool {
        p == self.master_at && self.master_up()
    }

    /// A link message from shard `from` arrived at shard `to` (as a node handles it).
    fn on_link_message(&mut self, to: usize, from: usize, msg: LinkMessage) {
        let now_ms = self.master_ms();
        if let LinkMessage::Heartbeat(load) = &msg {
            self.heard_term(to, load.term);
        }
        let master = self.is_master(to);
        match msg {
            LinkMessage::Batch(msgs) => {
                for m in msgs {
                    self.shards[to].push_shard_message(ShardId(from as u16), Bytes::from(m));
                }
            }
            LinkMessage::Election(msg) => self.election_message(to, from, msg),
            LinkMessage::FromMaster(notice)
                if from != usize::from(self.elections[to].master().0)
                    && !self.follows_newer_master(to, from, &notice) => {}
            LinkMessage::Heartbeat(load)
                if master
                    && from + 1 == self.cfg.shards
                    && from != to
                    && !self.cfg.heartbeats_heard =>
            {
                // Sabotage: answered, so the shard's lease holds, but not recorded.
                let silence_ms = self.cfg.world.cluster.shard_silence_ms;
                let lease_ms = limits::lease_ms_for(silence_ms) as u32;
                let answer = MasterNotice::Lease {
                    seq: load.seq,
                    lease_ms,
                };
                self.link_send(to, from, LinkMessage::FromMaster(answer));
            }
            LinkMessage::Heartbeat(mut load) if master => {
                if !self.cfg.buddies_reported {
                    load.buddy = None;
                }
                // The answer renews the shard's lease, or tells a shard declared dead that it
                // is fenced.
                let answer = self.master.heartbeat(ShardId(from as u16), load, now_ms);
                if let Some(answer) = answer.filter(|_| from != to) {
                    self.link_send(to, from, LinkMessage::FromMaster(answer));
                }
            }
            // A master without a majority drops requests (`Node`): the sender sends them again
            // to a successor, should one be elected.
            LinkMessage::ToMaster(req) if master && self.master_acts() => {
                self.master_request(from, req);
            }
            LinkMessage::ToMaster(_) if master => {}
            LinkMessage::FromMaster(
                notice @ (MasterNotice::Lease { .. } | MasterNotice::Fenced),
            ) => {
                self.master_state(to, &notice);
                self.lease_answer(to, &notice);
            }
            LinkMessage::FromMaster(notice @ MasterNotice::Standby(_)) => {
                self.master_state(to, &notice);
            }
            LinkMessage::FromMaster(notice) => {
                if let MasterNotice::Map(push) = &notice {
                    self.observe(to, push);
                }
                self.master_state(to, &notice);
                self.shards[to].push_master_notice(notice);
            }
            _ => {}
        }
    }

    /// The master answers shard `from`; its notices travel the links from shard 0.
    fn master_request(&mut self, from: usize, req: MasterRequest) {
        let now_ms = self.master_ms();
        let notices = self.master.request(ShardId(from as u16), req, now_ms);
        self.record_map();
        for (to, notice) in notices {
            self.notify(usize::from(to.0), notice);
        }
    }

    fn notify(&mut self, to: usize, notice: MasterNotice) {
        if let MasterNotice::Map(push) = &notice {
            self.record_push(push);
        }
        let at = self.master_at;
        if to == at {
            match &notice {
                MasterNotice::Map(push) => self.observe(at, push),
                // The master's own state needs no standby.
                MasterNotice::Standby(_) => return,
                _ => {}
            }
            self.shards[at].push_master_notice(notice);
        } else {
            self.link_send(at, to, LinkMessage::FromMaster(notice));
        }
    }

    /// A packet from shard `from` to bot `i`.
    fn deliver_to_bot(&mut self, now: u64, from: usize, i: usize, packet: Packet) {
        let Self {
            bots,
            net,
            bot_base,
            ..
        } = self;
        let b = &mut bots[i];
        if b.gone {
            return;
        }
        let me = (*bot_base + i) as u32;
        // Everything a bot sends on its control streams is reliable and ordered.
        let mut send = |to: usize, p: Packet| net.send(now, me, to as u32, p, true);
        let current = b.shard == Some(from);
        let pending = b.pending == Some(from);
        match packet {
            Packet::Control(bytes) if current || pending => match b.bot.on_control(now, &bytes) {
                Ok(Some(redirect)) => {
                    let to = usize::from(redirect.shard.0);
                    if pending {
                        // A login redirected onwards: this connection has nothing to keep.
                        send(from, Packet::Close("redirected".into()));
                    }
                    b.pending = Some(to);
                    send(to, Packet::Connect);
                    send(
                        to,
                        Packet::Control(Bytes::from(b.bot.hello_redirected(&redirect))),
                    );
                }
                Ok(None) => {
                    if pending && b.bot.welcome().is_some() {
                        // The new shard's Welcome: switch, and hang up on the old one.
                        if let Some(old) = b.shard.filter(|o| *o != from) {
                            send(old, Packet::Close("redirected".into()));
                        }
                        b.shard = Some(from);
                        b.pending = None;
                        b.welcomed = true;
                    }
                }
                Err(_) => b.gone = true,
            },
            Packet::Datagram(bytes) if current && b.welcomed => b.bot.on_datagram(now, &bytes),
            Packet::Close(_) if current => b.gone = true,
            _ => {}
        }
    }

    fn check(&mut self, tick: u64) -> Result<usize, Violation> {
        let seed = self.cfg.seed;
        let fail = |invariant, detail| {
            Err(Violation {
                seed,
                tick,
                invariant,
                detail,
            })
        };
        if let Some((invariant, detail)) = self.failure.take() {
            return fail(invariant, detail);
        }
        self.check_membership(tick)?;
        self.check_masters(tick)?;
        self.check_failover(tick)?;
        if let Err((invariant, detail)) = self.check_links(tick) {
            return fail(invariant, detail);
        }
        self.check_fenced(tick)?;
        // A drained shard is out of the checks: it held nothing when it left (checked above);
        // so is a fenced one, which `check_fenced` keeps from simulating.
        let absent = self.absent();
        let now: Vec<OwnedAt> = of_present(&mut self.shards, &absent, owned_of);
        let transit: Vec<Vec<(NetId, InTransit, QPos)>> =
            of_present(&mut self.shards, &absent, in_transit_of);
        for s in &mut self.shards {
            for id in std::mem::take(&mut s.world.resource_mut::<DespawnLog>().0) {
                self.alive.remove(&id);
            }
        }
        if let Some(owned) = self.joiner.as_ref().and_then(|j| now.get(j.id)) {
            let m = &mut self.membership.joiner_entities_max;
            *m = (*m).max(owned.len() as u64);
        }

        self.check_maps(tick)?;
        self.check_strays(tick, &now)?;

        // single_authority.
        let mut owner: BTreeMap<NetId, usize> = BTreeMap::new();
        for (i, owned) in now.iter().enumerate() {
            for id in owned.keys() {
                if let Some(other) = owner.insert(*id, i) {
                    return fail(
                        "single_authority",
                        format!("{id} is owned by shards {other} and {i}"),
                    );
                }
            }
        }
        // no_lost_entities: owned somewhere or frozen in a handoff.
        let held: BTreeSet<NetId> = transit.iter().flatten().map(|(id, _, _)| *id).collect();
        let missing: Vec<NetId> = (self.alive.iter())
            .filter(|id| !owner.contains_key(id) && !held.contains(id))
            .copied()
            .collect();
        for id in missing {
            match self.crash_excuses(id, tick) {
                Ok(true) => {}
                Ok(false) => {
                    return fail(
                        "no_lost_entities",
                        format!("{id} is owned by no shard and in no handoff"),
                    );
                }
                Err(why) => return fail("no_lost_entities", why),
            }
        }
        // Back from a crash: simulated by a live shard again (one frozen on a live shard may
        // still turn out to be the crashed shard's: its handoff was taken there).
        self.crash_limbo.retain(|id, _| !owner.contains_key(id));
        // An avatar spawned and offered onwards in one tick is held before it was ever owned
        // at a check: it is alive from then on too.
        self.alive.extend(owner.keys().copied());
        self.alive.extend(held.iter().copied());

        let bound = self.cfg.lag_bound_ticks();
        self.check_handoffs(tick, &transit, bound)?;

        // players_keep_avatars.
        for (i, b) in self.bots.iter().enumerate() {
            if let (Some(w), false) = (b.bot.welcome(), b.gone)
                && !self.alive.contains(&w.avatar)
            {
                return fail(
                    "players_keep_avatars",
                    format!("bot {i}'s avatar {} no longer exists", w.avatar),
                );
            }
        }

        self.check_quitters(tick, bound as u64)?;

        self.history.push_back(now);
        let frozen = self.frozen_now(&transit);
        self.frozen_history.push_back(frozen);
        while self.history.len() > bound + 1 {
            self.history.pop_front();
            self.frozen_history.pop_front();
        }
        self.check_proxies(tick, bound)
    }

    /// `handoff_bounded`: a round trip on a connected link, plus a tick on each side.
    fn check_handoffs(
        &mut self,
        tick: u64,
        transit: &[Vec<(NetId, InTransit, QPos)>],
        bound: usize,
    ) -> Result<(), Violation> {
        let seed = self.cfg.seed;
        let fail = |invariant, detail| {
            Err(Violation {
                seed,
                tick,
                invariant,
                detail,
            })
        };
        let mut transit_now = BTreeMap::new();
        for (src, list) in transit.iter().enumerate() {
            for (id, t, _) in list {
                let dst = usize::from(t.to.0);
                // A handoff to a shard that was drained meanwhile is settled by the master's
                // member list without it (the source takes the entity back): its wait runs on
                // the source's link to the master.
                let via = if self.departed.contains(&dst) { 0 } else { dst };
                // A handoff to a crashed shard waits for the master's verdict on it and for its
                // cells to be given away (an entity resumed in a leaf the dead shard still owns
                // is offered to it again), which `failover_completes` bounds; it runs on the
                // source's link to the master after.
                let adopted = |c: usize| match self.master.adopter_of(ShardId(c as u16)) {
                    Some(Some(a)) => {
                        let a = usize::from(a.0);
                        (self.shards[a].world.resource::<Replicas>()).adopted(ShardId(c as u16))
                    }
                    _ => true,
                };
                let awaiting_verdict = self.crashed.get(&dst).is_some_and(|(_, v)| {
                    v.is_none()
                        || self.map.cells_of(ShardId(dst as u16)).next().is_some()
                        || !adopted(dst)
                });
                // One retargeted to a crashed shard's adopter waits for the adopter to hold the
                // map that made it so (its link to the master may be cut meanwhile).
                let adopter_unaware = self.crashed.keys().any(|&c| {
                    let c = ShardId(c as u16);
                    self.master.adopter_of(c) == Some(Some(ShardId(dst as u16)))
                        && !self.shards[dst].world.resource::<Replicas>().adopted(c)
                });
                let cut = awaiting_verdict || adopter_unaware || self.cut(src, via);
                // After a partition heals, the held messages need a full bound again.
                let key = (*id, src, t.generation);
                let waited = if cut {
                    0
                } else {
                    self.transit_for.get(&key).copied().unwrap_or(0) + 1
                };
                if waited > 2 * bound + 2 {
                    return fail(
                        "handoff_bounded",
                        format!(
                            "{id} has been in transit from shard {src} to shard {dst} for {waited} connected ticks (bound {})",
                            2 * bound + 2
                        ),
                    );
                }
                transit_now.insert(key, waited);
            }
        }
        self.transit_for = transit_now;
        Ok(())
    }

    /// Entities frozen now, where they froze: in transit, or despawned while in transit (its
    /// player quit mid-handoff) with the attempt still open (no position); the target's proxy of
    /// it is settled by the answer.
    fn frozen_now(&self, transit: &[Vec<(NetId, InTransit, QPos)>]) -> BTreeMap<NetId, QPos> {
        let mut frozen: BTreeMap<NetId, QPos> = transit
            .iter()
            .flatten()
            .map(|(id, _, q)| (*id, *q))
            .collect();
        for (i, s) in self.shards.iter().enumerate() {
            if !self.departed.contains(&i) && !self.fenced.contains_key(&i) {
                for id in s.world.resource::<Handoffs>().0.open_ids() {
                    frozen.entry(id).or_default();
                }
            }
        }
        frozen
    }

    /// `directory_forgets_quitters`: a bot that quit mid-redirect leaves the master's player
    /// directory within [`SENT_ON_WAIT_MS`], two heartbeats and two link round trips (`bound`
    /// ticks each way),
    /// counted on ticks on which both shards it hung up on were linked to the master.
    fn check_quitters(&mut self, tick: u64, bound: u64) -> Result<(), Violation> {
        // The old shard reports the quitter as sent on; the master keeps its seat for
        // `SENT_ON_WAIT_MS` in case its new shard reports it late, then frees it.
        let limit = 2 * self.cfg.ticks_in(limits::HEARTBEAT_MS)
            + 2 * bound
            + 2
            + self.cfg.ticks_in(SENT_ON_WAIT_MS);
        // While the role is vacant nobody forgets anyone: every shard counts as cut off.
        let m = self.master_at;
        let cut_off: BTreeSet<usize> = (0..self.n())
            .filter(|&s| !self.master_acts() || (s != m && self.cut(m, s)))
            .collect();
        for b in &mut self.bots {
            let Some(q) = b.quit.as_mut() else {
                continue;
            };
            // A crashed shard reports nothing: the master forgets its players at its verdict.
            let cut = q.shards.iter().any(|&s| {
                cut_off.contains(&s) || self.crashed.get(&s).is_some_and(|(_, v)| v.is_none())
            });
            if !cut {
                q.waited += 1;
            }
            if q.waited > limit
                && let Some(on) = self.master.player(&b.name)
            {
                return Err(Violation {
                    seed: self.cfg.seed,
                    tick,
                    invariant: "directory_forgets_quitters",
                    detail: format!(
                        "{} quit at tick {} (playing on shard {}, sent to shard {}) and is still on shard {} in the player directory ({} connected ticks; bound {limit})",
                        b.name, q.tick, q.shards[0], q.shards[1], on.0, q.waited
                    ),
                });
            }
        }
        Ok(())
    }

    /// The membership checks; a shard found drained leaves the cluster here (it stops ticking,
    /// its connections and links close):
    /// - `drained_shard_empty`: a shard let go holds no owned or in-transit entity and no leaf
    ///   of the map it holds, and no bot still plays on it;
    /// - `drain_completes`: a drain ordered is done within `drain_bound_ms`;
    /// - `joiner_gets_cells`: the late joiner forms, and holds a leaf of the master's map within
    ///   `join_bound_ms` of dialing in (unless it was drained first).
    fn check_membership(&mut self, tick: u64) -> Result<(), Violation> {
        let fail = |invariant, detail| {
            Err(Violation {
                seed: self.cfg.seed,
                tick,
                invariant,
                detail,
            })
        };
        for i in 0..self.n() {
            if !self.shards[i].drained() {
                continue;
            }
            let owned = owned_of(&mut self.shards[i]);
            let frozen = in_transit_of(&mut self.shards[i]);
            if let Some(id) = owned.keys().next().or(frozen.first().map(|(id, _, _)| id)) {
                return fail(
                    "drained_shard_empty",
                    format!(
                        "shard {i} was let go owning {} entities and holding {} in handoff ({id} among them)",
                        owned.len(),
                        frozen.len()
                    ),
                );
            }
            let leaves = (self.shards[i].world.resource::<Space>().map)
                .cells_of(ShardId(i as u16))
                .count();
            if leaves > 0 {
                return fail(
                    "drained_shard_empty",
                    format!("shard {i} was let go holding a map that gives it {leaves} leaves"),
                );
            }
            if !self.departed.insert(i) {
                continue;
            }
            tracing::info!(shard = i, tick, "sim: drained, stopped");
            if let Some(b) = (self.bots.iter()).position(|b| !b.gone && b.shard == Some(i)) {
                return fail(
                    "drained_shard_empty",
                    format!("shard {i} was let go while bot {b} still plays on it"),
                );
            }
            if self.draining.remove(&i).is_some() {
                self.membership.drains_done += 1;
            }
            // The process exits: its clients' connections close.
            let conns: Vec<ConnId> = (self.shards[i].world.resource::<Clients>().0)
                .keys()
                .copied()
                .collect();
            for conn in conns {
                let to = (self.bot_base as u64 + conn.0) as u32;
                let bye = Packet::Close("the shard was drained".into());
                self.net.send(self.now_us, i as u32, to, bye, true);
            }
        }
        let bound = self.cfg.ticks_in(self.cfg.drain_bound_ms);
        if let Some((d, at)) =
            (self.draining.iter()).find(|(_, at)| tick.saturating_sub(**at) > bound)
        {
            let cells = self.map.cells_of(ShardId(*d as u16)).count();
            return fail(
                "drain_completes",
                format!(
                    "shard {d} was ordered drained at tick {at} and still is a member {} ticks later ({cells} leaves in the master's map; bound {bound})",
                    tick - at
                ),
            );
        }
        if let Some(j) = &self.joiner {
            let mut bound = self.cfg.ticks_in(self.cfg.join_bound_ms);
            // A joiner links to every member before it reports: one that crashed unnoticed
            // holds it up until the master's verdict takes it out of the member list.
            if (self.crashed.values()).any(|(at, _)| *at <= j.dialed_at + bound) {
                bound += self
                    .cfg
                    .ticks_in(self.cfg.world.cluster.shard_silence_ms + self.cfg.failover_bound_ms);
            }
            // Nobody gives it cells while the master acts on nothing (the role vacant, or its
            // holder without a majority: a dead link, a partition).
            bound += self.idle_log.iter().filter(|t| **t >= j.dialed_at).count() as u64;
            let drained = self.draining.contains_key(&j.id) || self.departed.contains(&j.id);
            let waited = tick.saturating_sub(j.dialed_at);
            if j.first_cell_at.is_none() && !drained && waited > bound {
                let linked = (self.master.members().get(&ShardId(j.id as u16))).map(|m| m.linked);
                return fail(
                    "joiner_gets_cells",
                    format!(
                        "the joiner (shard {}) dialed in at tick {} and holds no leaf {waited} ticks later (formed: {}, linked per the master: {linked:?}; bound {bound})",
                        j.id,
                        j.dialed_at,
                        j.forming.is_none()
                    ),
                );
            }
        }
        Ok(())
    }

    /// `one_owner_per_point`: every map the master makes tiles the world with leaves, each with
    /// one owner (no leaf inside another, the areas adding up), and every shard holds one of the
    /// master's maps exactly as the master made it for that epoch.
    fn check_maps(&mut self, tick: u64) -> Result<(), Violation> {
        let fail = |detail| {
            Err(Violation {
                seed: self.cfg.seed,
                tick,
                invariant: "one_owner_per_point",
                detail,
            })
        };
        if let Some(bad) = self.bad_map.take() {
            return fail(bad);
        }
        if let Some(map) = self.master.map().filter(|m| m.epoch() != self.map.epoch()) {
            self.map = map.clone();
            self.boundary = BoundaryIndex::new(map);
        }
        for (i, s) in self.shards.iter().enumerate() {
            if self.departed.contains(&i) || self.fenced.contains_key(&i) {
                continue;
            }
            let held = &s.world.resource::<Space>().map;
            if held.epoch().0 != self.epochs_held[i] {
                self.epochs_held[i] = held.epoch().0;
                self.map_taken_at[i] = tick;
            }
            match self.maps.get(&held.epoch().0) {
                Some(m) if m.leaves() == held.leaves() => {}
                Some(_) => {
                    return fail(format!(
                        "shard {i} holds a map of epoch {} unlike the master's",
                        held.epoch()
                    ));
                }
                None => {
                    return fail(format!(
                        "shard {i} holds a map of epoch {} the master never made",
                        held.epoch()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Keep the master's map of each epoch (several may come in one tick), checking that it
    /// tiles the world; a bad one is reported by the next check.
    fn record_map(&mut self) {
        let Some(map) = self.master.map() else {
            return;
        };
        if self.maps.contains_key(&map.epoch().0) {
            return;
        }
        self.keep_map(map.clone());
    }

    /// Keep a map the master pushed (a balancing round may make several, each pushed).
    fn record_push(&mut self, push: &MapPush) {
        if self.maps.contains_key(&push.epoch) {
            return;
        }
        let leaves = push.leaves.iter().copied().collect();
        match CellMap::from_leaves(*self.map.grid(), Epoch(push.epoch), leaves) {
            Ok(map) => self.keep_map(map),
            Err(e) => {
                let bad = format!("epoch {}: {e}", push.epoch);
                self.bad_map.get_or_insert(bad);
            }
        }
    }

    /// A new map of the master's: kept by epoch, its tiling checked, and the leaves it gives
    /// the late joiner counted.
    fn keep_map(&mut self, map: CellMap) {
        let epoch = map.epoch().0;
        if let Some(j) = self.joiner.as_mut() {
            let me = ShardId(j.id as u16);
            let before = self.maps.range(..epoch).next_back().map(|(_, m)| m);
            let grid = *map.grid();
            let got = (map.leaves().iter())
                .filter(|(c, s)| {
                    let r = grid.rect(**c);
                    let mid = [(r.min[0] + r.max[0]) / 2.0, (r.min[1] + r.max[1]) / 2.0];
                    **s == me && before.is_none_or(|b| b.owner_at(mid) != Some(me))
                })
                .count();
            if got > 0 {
                self.membership.cells_to_joiners += got as u64;
                j.first_cell_at.get_or_insert(self.tick);
            }
        }
        if self.bad_map.is_none() {
            self.bad_map = map_tiling_error(&map);
        }
        self.maps.insert(epoch, map);
    }

    /// `settles_into_owner`: no entity stays owned for long in a leaf the master's newest map
    /// gives another shard (beyond the handoff margin). A move's target holds the cell's
    /// entities before the map flips, and an aborted move or a flip hands them on: bounded by
    /// [`ClusterConfig::stray_bound_ticks`]. Shards partitioned lately are exempt.
    fn check_strays(&mut self, tick: u64, now: &[OwnedAt]) -> Result<(), Violation> {
        let margin = self.cfg.world.cluster.handoff_margin_m;
        let bound = self.cfg.stray_bound_ticks();
        let acts = self.master_acts();
        let disturbed: BTreeSet<usize> = self
            .cut_pairs()
            .into_iter()
            .flat_map(|(a, b)| [a, b])
            .collect();
        let mut strays = BTreeMap::new();
        for (o, owned) in now.iter().enumerate() {
            let me = ShardId(o as u16);
            for (id, (_, xz)) in owned {
                let away =
                    self.map.owner_at(*xz) != Some(me) && !self.boundary.owns_near(*xz, margin, me);
                if !away || disturbed.contains(&o) || self.orphan_avatars.contains(id) {
                    continue;
                }
                // Nothing is handed to a shard being drained: an entity that wanders into one of
                // its leaves stays with its owner until the drain moves that leaf.
                let draining = (self.map.owner_at(*xz))
                    .and_then(|s| self.master.members().get(&s))
                    .is_some_and(|m| m.draining);
                if draining {
                    continue;
                }
                // A master without a majority (or no master) moves and flips nothing: its ticks
                // do not count.
                let n = self.stray_for.get(id).copied().unwrap_or(0) + u64::from(acts);
                if n > bound {
                    return Err(Violation {
                        seed: self.cfg.seed,
                        tick,
                        invariant: "settles_into_owner",
                        detail: format!(
                            "{id} has stood on shard {o} in a leaf of shard {:?} for {n} ticks (bound {bound})",
                            self.map.owner_at(*xz).map(|s| s.0)
                        ),
                    });
                }
                strays.insert(*id, n);
            }
        }
        self.stray_for = strays;
        Ok(())
    }

    /// `proxies_converge`, both halves; pairs of shards partitioned within the last `bound`
    /// ticks are exempt (their updates are legitimately late).
    fn check_proxies(&mut self, tick: u64, bound: usize) -> Result<usize, Violation> {
        let seed = self.cfg.seed;
        let fail = |invariant, detail| {
            Err(Violation {
                seed,
                tick,
                invariant,
                detail,
            })
        };
        for pair in self.cut_pairs() {
            self.disturbed.insert(pair, tick);
        }
        self.disturbed
            .retain(|_, at| tick.saturating_sub(*at) <= 2 * bound as u64);
        let disturbed = |a: usize, b: usize| self.disturbed.contains_key(&(a.min(b), a.max(b)));

        // Soundness: a proxy matches its owner's state within the lag bound.
        let mut proxies_total = 0;
        let mut proxied: BTreeSet<(NetId, ShardId)> = BTreeSet::new();
        for (me, app) in self.shards.iter_mut().enumerate() {
            if self.departed.contains(&me) || self.fenced.contains_key(&me) {
                continue;
            }
            let w = &mut app.world;
            let proxies: Vec<(NetId, ShardId, QPos)> = w
                .query::<(&Networked, &Position, &Proxy)>()
                .iter(w)
                .map(|(n, p, x)| (n.0, x.owner, p.quantized()))
                .collect();
            proxies_total += proxies.len();
            for (id, owner_shard, pos) in proxies {
                proxied.insert((id, ShardId(me as u16)));
                let o = usize::from(owner_shard.0);
                if disturbed(me, o) || self.history.len() <= bound {
                    continue;
                }
                // A crashed owner's proxies stay until the master's member list without it
                // reaches their holder: its verdict, then a push on a link that may be cut.
                if let Some((_, verdict)) = self.crashed.get(&o) {
                    let pushed = verdict.is_some_and(|v| tick > v + 2 * bound as u64 + 2);
                    let heard = !(self.members[me].iter()).any(|m| usize::from(m.id.0) == o)
                        && app.tick_number() > self.members_at[me] + 2;
                    if !pushed || !heard || disturbed(me, self.master_at) {
                        continue;
                    }
                    return fail(
                        "proxies_converge",
                        format!(
                            "proxy of {id} on shard {me} is of shard {o}, which crashed and was declared dead at tick {verdict:?}"
                        ),
                    );
                }
                let matches = self.history.iter().any(|h| {
                    h.get(o)
                        .and_then(|m| m.get(&id))
                        .is_some_and(|(q, _)| *q == pos)
                    // Frozen in a handoff within the bound: the handoff's target was not sent
                    // the entity's last steps before the freeze, and after a refusal its proxy
                    // is refreshed within the bound of the entity resuming.
                }) || self.frozen_history.iter().any(|h| h.contains_key(&id));
                if !matches {
                    return fail(
                        "proxies_converge",
                        format!(
                            "proxy of {id} on shard {me} is at {pos:?}, where shard {o} never had it in the last {bound} ticks"
                        ),
                    );
                }
            }
        }

        // Completeness: near a neighbour for longer than the bound ⇒ proxied there.
        let radius = self.cfg.world.interest.interest_radius_m;
        let newest = self.history.back().cloned().unwrap_or_default();
        let mut near_now: BTreeMap<(NetId, ShardId), usize> = BTreeMap::new();
        for (o, owned) in newest.iter().enumerate() {
            // The owner mirrors by the map it holds; just after it took a new one, what it
            // mirrored by the old one is still settling.
            if tick.saturating_sub(self.map_taken_at[o]) <= 2 * bound as u64 {
                continue;
            }
            let map = self.shards[o].world.resource::<Space>().map.clone();
            for (id, (_, xz)) in owned {
                for (cell, s) in map.leaves() {
                    if usize::from(s.0) != o
                        && !disturbed(o, usize::from(s.0))
                        && !self.departed.contains(&usize::from(s.0))
                        && !self.fenced.contains_key(&usize::from(s.0))
                        && map.grid().rect(*cell).intersects_circle(*xz, radius)
                    {
                        let n = self.near_for.get(&(*id, *s)).copied().unwrap_or(0) + 1;
                        near_now.insert((*id, *s), n);
                    }
                }
            }
        }
        for ((id, s), n) in &near_now {
            if *n > bound && !proxied.contains(&(*id, *s)) {
                let seen = self.whereabouts(*id);
                return fail(
                    "proxies_converge",
                    format!(
                        "{id} has been near shard {}'s cells for {n} ticks but has no proxy there ({seen})",
                        s.0
                    ),
                );
            }
        }
        self.near_for = near_now;
        Ok(proxies_total)
    }
}

impl ClusterSim {
    /// Shards out of the checks: stopped (drained, crashed, lost their lease) or fenced.
    fn absent(&self) -> BTreeSet<usize> {
        (self.departed.iter().copied())
            .chain(self.fenced.keys().copied())
            .collect()
    }

    /// Pairs of shards that cannot talk now: partitioned, their link dead, or one of them
    /// paused by its lease (it reads and answers nothing until it simulates again).
    fn cut_pairs(&self) -> Vec<(usize, usize)> {
        let mut pairs: BTreeSet<(usize, usize)> = self.partitions.keys().copied().collect();
        pairs.extend(self.dead_links.keys().copied());
        for &p in &self.paused {
            for o in 0..self.n() {
                if o != p {
                    pairs.insert((p.min(o), p.max(o)));
                }
            }
        }
        pairs.into_iter().collect()
    }

    fn cut(&self, a: usize, b: usize) -> bool {
        let key = (a.min(b), a.max(b));
        self.partitions.contains_key(&key)
            || self.dead_links.contains_key(&key)
            || self.paused.contains(&a)
            || self.paused.contains(&b)
    }

    /// Single authority across fencing: a shard the master declared dead while it ran never
    /// simulates again (its lease stopped it before the verdict, and it must stay stopped while
    /// its adopter owns what it owned); and it stops (`fenced_shard_stops`) within its lease,
    /// the silences a lapsed lease waits for an election (`lease::GIVE_UP_SILENCES`) and a
    /// second of the verdict: told `Fenced` once the cut heals, or lost by silence. A fence the
    /// successor never heard of died with its master (`unfence_forgotten`): the shard is a
    /// member again.
    fn check_fenced(&mut self, tick: u64) -> Result<(), Violation> {
        let silence_ms = self.cfg.world.cluster.shard_silence_ms;
        let lease_ms = limits::lease_ms_for(silence_ms);
        let give_up_ms = zonescaler_server::cluster::lease::GIVE_UP_SILENCES * silence_ms;
        let bound = self.cfg.ticks_in(lease_ms + give_up_ms + 1_000);
        for (&c, &verdict) in &self.fenced {
            let fail = |invariant, detail| {
                Err(Violation {
                    seed: self.cfg.seed,
                    tick,
                    invariant,
                    detail,
                })
            };
            if self.ticked.contains(&c) {
                let adopter = self.master.adopter_of(ShardId(c as u16)).flatten();
                return fail(
                    "single_authority",
                    format!(
                        "shard {c}, declared dead and fenced at tick {verdict}, simulated at tick {tick} (its cells adopted by {adopter:?})"
                    ),
                );
            }
            if tick > verdict + bound {
                return fail(
                    "fenced_shard_stops",
                    format!(
                        "shard {c}, declared dead and fenced at tick {verdict}, still runs {} ticks later (bound {bound})",
                        tick - verdict
                    ),
                );
            }
        }
        Ok(())
    }

    /// What each shard holds of entity `id`, for a violation's detail.
    fn whereabouts(&mut self, id: NetId) -> String {
        let mut out = Vec::new();
        for (i, app) in self.shards.iter_mut().enumerate() {
            let w = &mut app.world;
            let mut q = w.query::<(&Networked, Has<Owned>, Option<&InTransit>, Option<&Proxy>)>();
            for (n, owned, transit, proxy) in q.iter(w) {
                if n.0 != id {
                    continue;
                }
                let what = match (owned, transit, proxy) {
                    (true, _, _) => "owned".to_string(),
                    (_, Some(t), _) => format!("in transit to {}", t.to.0),
                    (_, _, Some(p)) => format!("a proxy of shard {}'s", p.owner.0),
                    _ => "neither owned nor a proxy".to_string(),
                };
                let gone = if self.departed.contains(&i) {
                    " (drained)"
                } else {
                    ""
                };
                out.push(format!("shard {i}{gone}: {what}"));
            }
        }
        let epochs: Vec<String> = (self.shards.iter())
            .map(|s| s.world.resource::<Space>().map.epoch().0.to_string())
            .collect();
        format!("{}; epochs held {}", out.join(", "), epochs.join("/"))
    }
}

/// Why `map` does not tile its world with one owner per point, if it does not.
fn map_tiling_error(map: &CellMap) -> Option<String> {
    let grid = map.grid();
    let area: f64 = map
        .leaves()
        .keys()
        .map(|c| f64::from(grid.rect(*c).area()))
        .sum();
    let world = f64::from(grid.world().area());
    let nested = map.leaves().keys().find(|c| {
        std::iter::successors(c.parent(), |p| p.parent()).any(|p| map.owner_of(p).is_some())
    });
    if let Some(c) = nested {
        return Some(format!(
            "epoch {}: leaf {c} lies inside another leaf",
            map.epoch()
        ));
    }
    if (area - world).abs() > world * 1e-6 {
        return Some(format!(
            "epoch {}: the leaves cover {area} m² of a {world} m² world",
            map.epoch()
        ));
    }
    None
}

/// Run one seed with the multi-shard smoke configuration.
pub fn run_cluster_seed(seed: u64) -> Result<ClusterOutcome, Violation> {
    let sim = ClusterSim::new(ClusterConfig::smoke(seed)).map_err(|e| Violation {
        seed,
        tick: 0,
        invariant: "setup",
        detail: e,
    })?;
    sim.run()
}

/// The shards of a formed cluster: the demo game on `map`, logins checked against `signer`'s key.
fn make_shards(cfg: &ClusterConfig, map: &CellMap, signer: &TicketSigner) -> Vec<ShardApp> {
    (0..cfg.shards)
        .map(|i| make_shard(cfg, ShardId(i as u16), map, signer.public_keys()))
        .collect()
}

/// Shard `me` of the demo game on `map`, logins checked against `keys`, started.
fn make_shard(cfg: &ClusterConfig, me: ShardId, map: &CellMap, keys: LoginKeys) -> ShardApp {
    let mut app = ShardApp::example_in(cfg.world.clone(), me, map.clone());
    app.world.insert_resource(LoginPolicy {
        keys,
        ..LoginPolicy::default()
    });
    app.start();
    app
}

/// The bots: each walks a border of the map `shard` sends its clients, with a ticket that starts
/// it where its walk does.
fn make_bots(
    cfg: &ClusterConfig,
    shard: &ShardApp,
    signer: &TicketSigner,
    rng: &mut Rng,
) -> Vec<ClusterBot> {
    let view = shard.world.resource::<Space>().client_view();
    let walks = border_walks(&view, cfg.bots, rng);
    (0..cfg.bots)
        .map(|i| {
            let mut c = BotConfig::new(
                format!("sim-{i}"),
                Scenario::Border,
                cfg.seed ^ (i as u64) << 20,
            );
            c.border = walks.get(i).copied();
            c.ticket = Some(signer.sign(&LoginTicket {
                account: c.name.clone(),
                spawn: c.border.map(|(a, _)| QPos::quantize(a)),
                expires_ms: u64::MAX,
            }));
            ClusterBot {
                name: c.name.clone(),
                bot: BotClient::new(c),
                shard: None,
                pending: None,
                welcomed: false,
                gone: false,
                quit: None,
            }
        })
        .collect()
}

/// A 32-byte seed from a run's seed (for the simulation's login key).
fn seed_bytes(seed: u64) -> [u8; 32] {
    let mut rng = Rng::new(seed ^ 0x7111_C0DE);
    let mut out = [0u8; 32];
    for chunk in out.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    out
}

/// Form the cluster of `weights.len()` processes over the simulated links, as production does
/// over QUIC: the same [`Forming`] state machine, its actions carried out on `net`. Joiners start
/// one after the other (each once the previous has its id), so process `i` becomes shard `i`.
fn form(
    net: &mut MemNetwork<Packet>,
    grid: CellGrid,
    weights: &[u32],
    (balancer, silence_ms): (Option<(Balancer, u64)>, u64),
    now_us: &mut u64,
) -> Result<Vec<Formed>, String> {
    let n = weights.len();
    let req = |i: usize| join_request(i, weights[i]);
    let mut procs: Vec<Option<Forming>> = Vec::with_capacity(n);
    let mut queues: Vec<Vec<FormAction>> = Vec::with_capacity(n);
    let with_balancer = |m: Master| {
        match balancer {
            Some((b, round_ms)) => m.with_balancer(b, round_ms),
            None => m,
        }
        .with_silence(silence_ms)
    };
    let (master, acts) = Forming::master(grid, req(0), n, with_balancer, 0);
    procs.push(Some(master));
    queues.push(acts);
    let mut links: BTreeMap<LinkId, (usize, usize)> = BTreeMap::new();
    let mut started = 1;
    let deadline = *now_us + 60_000_000;
    loop {
        // The next joiner starts once the one before it has its id.
        if started < n
            && procs[started - 1]
                .as_ref()
                .is_some_and(|p| started == 1 || p.id().is_some())
        {
            let (j, acts) = Forming::joiner(grid, req(started), "sim:0".into());
            procs.push(Some(j));
            queues.push(acts);
            started += 1;
        }
        for (p, queue) in queues.iter_mut().enumerate() {
            for act in std::mem::take(queue) {
                if let Some(f) = procs[p].as_mut() {
                    carry_out(net, f, &mut links, 1, p, act, *now_us)?;
                }
            }
        }
        if started == n
            && procs
                .iter()
                .all(|p| p.as_ref().is_some_and(Forming::is_formed))
        {
            return Ok(procs
                .into_iter()
                .map(|p| p.and_then(|f| f.finish(0)))
                .collect::<Option<Vec<_>>>()
                .ok_or("a process formed but could not finish")?);
        }
        if *now_us > deadline {
            return Err("the cluster did not form within 60 simulated seconds".into());
        }
        *now_us += 1_000;
        for (from, to, packet) in net.poll(*now_us) {
            let ev = match packet {
                Packet::LinkUp(link) => FormEvent::Up(link),
                Packet::Link(link, msg) => FormEvent::Message(link, msg),
                _ => continue,
            };
            let _ = from;
            let p = to as usize;
            if let Some(f) = procs.get_mut(p).and_then(Option::as_mut) {
                let acts = f.on_event(ev, *now_us / 1_000).map_err(|e| e.to_string())?;
                queues[p].extend(acts);
            }
        }
    }
}

/// What simulated process `i` asks to join with.
fn join_request(i: usize, weight: u32) -> JoinRequest {
    JoinRequest {
        client_addr: String::new(),
        link_addr: format!("sim:{i}"),
        metrics_addr: String::new(),
        http_addr: String::new(),
        weight,
    }
}

/// One forming action of process `p` (`f`), carried out on the simulated links; the links it
/// dials are numbered from `first_link` on.
fn carry_out(
    net: &mut MemNetwork<Packet>,
    f: &mut Forming,
    links: &mut BTreeMap<LinkId, (usize, usize)>,
    first_link: u64,
    p: usize,
    act: FormAction,
    now_us: u64,
) -> Result<(), String> {
    match act {
        FormAction::Dial(shard, addr) => {
            let to: usize = addr
                .strip_prefix("sim:")
                .and_then(|i| i.parse().ok())
                .ok_or_else(|| format!("no simulated shard at {addr}"))?;
            let link = LinkId(first_link + links.len() as u64);
            links.insert(link, (p, to));
            f.dialed(shard, link);
            net.send(now_us, to as u32, p as u32, Packet::LinkUp(link), true);
            net.send(now_us, p as u32, to as u32, Packet::LinkUp(link), true);
        }
        FormAction::Send(link, msg) => {
            let (a, b) = *links.get(&link).ok_or("a message on no link")?;
            let to = if a == p { b } else { a };
            net.send(now_us, p as u32, to as u32, Packet::Link(link, msg), true);
        }
        FormAction::Close(_, reason) => {
            return Err(format!("a simulated shard was refused: {reason}"));
        }
        FormAction::Say(_) => {}
    }
    Ok(())
}
