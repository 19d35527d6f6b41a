//! Messages to players wherever they play: a tell to one account, a shout to the whole world.
//!
//! A game system writes into [`PlayerMessages`]; the client plugin routes them. A tell to a
//! player on this shard is delivered here; any other tell, and every shout, goes to the master,
//! which holds the player directory: it forwards a tell to the shard that has the player (or
//! answers the sender that nobody of that name is online) and a shout to every shard. On a
//! one-shard world the shard does all of it itself. Players' own chat (`ClientControl::Say`)
//! takes the same path.

use bevy_ecs::prelude::*;
use zonescaler_shared::limits;
use zonescaler_shared::protocol::{MessageScope, PlayerMessage};

/// Messages game systems send this tick: `(recipient account or None for everyone, message)`.
#[derive(Resource, Debug, Default)]
pub struct PlayerMessages {
    pub(crate) outgoing: Vec<(Option<String>, PlayerMessage)>,
    /// Messages refused: over the per-tick bound, or text or names over their limits.
    pub dropped: u64,
}

impl PlayerMessages {
    /// Tell the player `to` (an account) `text`, from `from` (an account, or "" for the game).
    pub fn tell(&mut self, to: &str, from: &str, text: &str) {
        self.push(Some(to.to_owned()), from, text, MessageScope::Tell);
    }

    /// Tell every player of the world.
    pub fn shout(&mut self, from: &str, text: &str) {
        self.push(None, from, text, MessageScope::Shout);
    }

    fn push(&mut self, to: Option<String>, from: &str, text: &str, scope: MessageScope) {
        let too_long = text.len() > limits::CHAT_TEXT_BYTES_MAX
            || from.len() > limits::PLAYER_NAME_BYTES_MAX
            || to
                .as_ref()
                .is_some_and(|t| t.len() > limits::PLAYER_NAME_BYTES_MAX);
        if too_long || self.outgoing.len() >= limits::PLAYER_MESSAGES_PER_TICK_MAX {
            self.dropped += 1;
            return;
        }
        self.outgoing.push((
            to,
            PlayerMessage {
                from: from.to_owned(),
                text: text.to_owned(),
                scope,
            },
        ));
    }

    /// This tick's messages, for routing.
    pub fn drain(&mut self) -> std::vec::Drain<'_, (Option<String>, PlayerMessage)> {
        self.outgoing.drain(..)
    }
}
