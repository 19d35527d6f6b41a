//! Games for bots: what a bot must know about the game it plays, and the brain that plays it.
//!
//! The bot core handles everything every game shares (login, snapshots, movement scenarios,
//! redirects). A game adds two things: its [`ProtocolRegistry`], because the client hash in
//! `Hello` and the wire numbers of its client commands come from there (a bot with another
//! game's registry is refused at login), and a [`BotBrain`], which looks at the world once per
//! input tick and may send the game's commands, chat, or steer the avatar. A game server binary
//! embeds the load tester with its own [`BotGame`]; `zonescaler-bots` itself knows only
//! [`BotGame::demo`].

use glam::Vec3;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use zonescaler_shared::NetId;
use zonescaler_shared::codec;
use zonescaler_shared::components::{EXAMPLE_GAME_COMPONENTS, GameCommand, Replicated};
use zonescaler_shared::limits;
use zonescaler_shared::protocol::{ClientCommand, ClientControl, PlayerMessage, Say};
use zonescaler_shared::registry::ProtocolRegistry;
use zonescaler_shared::rng::Rng;

use crate::view::{View, ViewEntity};

/// Makes a fresh brain for a bot from the bot's seed, so a swarm of one seed replays.
pub type BrainFactory = Arc<dyn Fn(u64) -> Box<dyn BotBrain> + Send + Sync>;

/// What a bot needs to know about the game it plays.
#[derive(Clone)]
pub struct BotGame {
    /// What `--game` selects.
    pub name: String,
    /// The client hash and the client command ids come from here.
    pub protocol: ProtocolRegistry,
    /// A fresh brain per bot, from its seed.
    pub brain: BrainFactory,
}

impl std::fmt::Debug for BotGame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BotGame")
            .field("name", &self.name)
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl BotGame {
    pub fn new(
        name: impl Into<String>,
        protocol: ProtocolRegistry,
        brain: impl Fn(u64) -> Box<dyn BotBrain> + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            protocol,
            brain: Arc::new(brain),
        }
    }

    /// The demo game every shard runs without a game plugin: its replicated components, no
    /// commands, and a brain that leaves the bot to its movement scenario.
    pub fn demo() -> Self {
        // The example components are distinct constants, so registering them cannot fail (a
        // unit test below registers them).
        let protocol = ProtocolRegistry::with_components(&EXAMPLE_GAME_COMPONENTS)
            .expect("invariant: the example game's components are distinct");
        Self::new("demo", protocol, |_| Box::new(IdleBrain))
    }
}

/// A game's player logic for one bot.
pub trait BotBrain: Send {
    /// Called once per bot input tick, after the movement scenario picked this tick's target.
    fn think(&mut self, ctx: &mut BrainCtx<'_>);
}

/// The demo game's brain: the movement scenario is all there is to do.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdleBrain;

impl BotBrain for IdleBrain {
    fn think(&mut self, _: &mut BrainCtx<'_>) {}
}

/// Control messages a brain may queue between two takes by the transport. A shard closes a
/// client that sends more than [`limits::CLIENT_CONTROL_PER_TICK_MAX`] in one tick as flooding;
/// a bot that does so by accident would measure nothing, so past this the rest are dropped and
/// counted (`control_queue_full`).
pub const CONTROL_QUEUED_MAX: usize = limits::CLIENT_CONTROL_PER_TICK_MAX;
/// Messages from the shard a brain sees at its next think; older ones are dropped first.
pub const INBOX_MAX: usize = 64;

/// What kind of control message a brain queued (for the bot's counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OutKind {
    Command,
    Say,
}

/// A brain's output between two takes: encoded control messages, a movement override and what
/// went wrong. Lives in the bot core; the brain reaches it only through [`BrainCtx`].
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pub(crate) queued: Vec<(OutKind, Vec<u8>)>,
    pub(crate) move_to: Option<Vec3>,
    /// Error kinds for the bot's report.
    pub(crate) errors: BTreeMap<&'static str, u64>,
}

impl Outbox {
    fn push(&mut self, kind: OutKind, bytes: Vec<u8>) -> bool {
        if self.queued.len() >= CONTROL_QUEUED_MAX {
            *self.errors.entry("control_queue_full").or_default() += 1;
            return false;
        }
        self.queued.push((kind, bytes));
        true
    }
}

/// What a brain sees and can do during one [`BotBrain::think`].
pub struct BrainCtx<'a> {
    pub(crate) now_us: u64,
    pub(crate) avatar: Option<NetId>,
    pub(crate) position: Option<Vec3>,
    pub(crate) view: Option<&'a View>,
    pub(crate) protocol: &'a ProtocolRegistry,
    pub(crate) rng: &'a mut Rng,
    pub(crate) inbox: &'a VecDeque<PlayerMessage>,
    pub(crate) out: &'a mut Outbox,
}

impl BrainCtx<'_> {
    /// The bot's clock, in microseconds (the same the core is driven with).
    pub fn now_us(&self) -> u64 {
        self.now_us
    }

    /// The entity this bot drives.
    pub fn avatar(&self) -> Option<NetId> {
        self.avatar
    }

    /// Where the avatar is in the newest complete view.
    pub fn position(&self) -> Option<Vec3> {
        self.position
    }

    /// The newest complete view of the world.
    pub fn view(&self) -> Option<&View> {
        self.view
    }

    /// The game's protocol registry.
    pub fn protocol(&self) -> &ProtocolRegistry {
        self.protocol
    }

    /// The bot's own random stream for its brain: seeded from the bot's seed, and separate from
    /// the movement scenario's, so a brain's choices never change where the scenario walks.
    pub fn rng(&mut self) -> &mut Rng {
        self.rng
    }

    /// Messages from the shard (tells, shouts) since the previous think, oldest first (at most
    /// [`INBOX_MAX`]).
    pub fn messages(&self) -> impl Iterator<Item = &PlayerMessage> {
        self.inbox.iter()
    }

    /// Decode a replicated component of an entity in view (by `T::NAME` → registry id). `None`
    /// if the game does not replicate `T`, the entity does not carry it, or its bytes do not
    /// decode (a shard's bytes are wire input: they can be anything).
    pub fn component<T: Replicated>(&self, entity: &ViewEntity) -> Option<T> {
        let id = self.protocol.id_of(T::NAME)?;
        let blob = entity.components.iter().find(|b| b.kind == id)?;
        bitcode::decode(&blob.bytes).ok()
    }

    /// Queue a client command (by `T::NAME` → client kind). False if the game has no such client
    /// command, its encoding is longer than [`limits::COMMAND_BYTES_MAX`] (the shard would close
    /// the connection over it), or [`CONTROL_QUEUED_MAX`] messages are already waiting.
    pub fn send_command<T: GameCommand>(&mut self, cmd: &T) -> bool {
        let Some(kind) = self.protocol.client_kind_of(T::NAME) else {
            return false;
        };
        let bytes = bitcode::encode(cmd);
        if bytes.len() > limits::COMMAND_BYTES_MAX {
            return false;
        }
        let msg = ClientControl::Command(ClientCommand { kind, bytes });
        self.out.push(OutKind::Command, codec::encode(&msg))
    }

    /// Queue a chat line to the account `to`, or to everyone. A text longer than
    /// [`limits::CHAT_TEXT_BYTES_MAX`] is cut there (at a character boundary); a recipient name
    /// longer than [`limits::PLAYER_NAME_BYTES_MAX`] names nobody, so the line is dropped and
    /// counted (`say_to_bad_name`) rather than sent for the shard to refuse.
    pub fn say(&mut self, to: Option<&str>, text: &str) {
        if to.is_some_and(|t| t.len() > limits::PLAYER_NAME_BYTES_MAX) {
            *self.out.errors.entry("say_to_bad_name").or_default() += 1;
            return;
        }
        let text = &text[..text.floor_char_boundary(limits::CHAT_TEXT_BYTES_MAX)];
        let msg = ClientControl::Say(Say {
            to: to.map(str::to_owned),
            text: text.to_owned(),
        });
        self.out.push(OutKind::Say, codec::encode(&msg));
    }

    /// Override where the avatar heads this tick (the scenario's own target is kept for the next
    /// tick). A target that is not a finite point is ignored.
    pub fn move_to(&mut self, target: Vec3) {
        if target.is_finite() {
            self.out.move_to = Some(target);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_game_speaks_the_example_protocol() {
        let demo = BotGame::demo();
        assert_eq!(demo.name, "demo");
        assert_eq!(
            demo.protocol.client_hash(),
            ProtocolRegistry::with_components(&EXAMPLE_GAME_COMPONENTS)
                .expect("distinct")
                .client_hash(),
            "a demo bot presents the example game's client hash"
        );
        assert!(format!("{demo:?}").contains("demo"));
    }
}
