//! The protocol registry: the one list of everything a game puts on the wire besides the fixed
//! message enums, and the hashes every handshake compares.
//!
//! A game registers, in order:
//! - **replicated components** (`app.replicate::<Health>()`): sent to clients and to neighbour
//!   shards' proxies, and carried on handoff; the order gives each a `u8` id on the wire;
//! - **migrating components** (`app.migrate::<AiState>()`): server-only state that follows an
//!   entity to its next owner and is never sent to clients or proxies;
//! - **commands** (`app.command::<Heal>()`): typed messages to an entity's owner, some of them
//!   sendable by clients (`app.client_command::<Attack>()`).
//!
//! Two hashes come out of it. The **client hash** covers what a client must agree on (version,
//! schema revision, replicated components, client commands) and is checked at `Hello`; a
//! client build never needs to know a game's server-only components. The **cluster hash**
//! covers everything and is checked on every shard link, so two shards built from different
//! games (or versions of one) refuse each other instead of misreading each other's bytes.

use crate::limits;
use crate::protocol::PROTOCOL_VERSION;

/// Revision of the message layout in [`crate::protocol`]; bump with any field change.
const SCHEMA_REVISION: &str = "zonescaler-wire/snapshot-age-baseline-index-moved-rare/proxy-batch-only-handoff-redirect-cellmap/tickets-commands-migrate-messages/shard-load-window/8";

/// Revision of the messages only shards exchange (`LinkMessage`, `ShardMessage`), in the
/// cluster hash alone: a change there needs no new client. Bump with any change to them.
const CLUSTER_SCHEMA_REVISION: &str = "zonescaler-cluster-wire/audit/1";

/// One registered command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandEntry {
    pub name: &'static str,
    /// Whether clients may send it (acting as their own avatar).
    pub from_clients: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProtocolRegistry {
    components: Vec<&'static str>,
    migrating: Vec<&'static str>,
    commands: Vec<CommandEntry>,
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("`{0}` is registered twice")]
    Duplicate(&'static str),
    #[error(
        "more than {} replicated components",
        limits::REPLICATED_COMPONENTS_MAX
    )]
    Full,
    #[error("more than {} migrating components", limits::MIGRATING_COMPONENTS_MAX)]
    MigratingFull,
    #[error("more than {} commands", limits::COMMAND_KINDS_MAX)]
    CommandsFull,
}

impl ProtocolRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry with these replicated component names in this order.
    pub fn with_components(names: &[&'static str]) -> Result<Self, RegistryError> {
        let mut r = Self::new();
        for n in names {
            r.register(n)?;
        }
        Ok(r)
    }

    fn taken(&self, name: &str) -> bool {
        self.components.contains(&name)
            || self.migrating.contains(&name)
            || self.commands.iter().any(|c| c.name == name)
    }

    /// Register a replicated component by its stable wire name; returns its wire id.
    pub fn register(&mut self, name: &'static str) -> Result<u8, RegistryError> {
        if self.taken(name) {
            return Err(RegistryError::Duplicate(name));
        }
        if self.components.len() >= limits::REPLICATED_COMPONENTS_MAX {
            return Err(RegistryError::Full);
        }
        self.components.push(name);
        // The bound above keeps the index below 255.
        Ok((self.components.len() - 1) as u8)
    }

    /// Register a migrating (server-only) component; returns its id among migrating components.
    pub fn register_migrating(&mut self, name: &'static str) -> Result<u8, RegistryError> {
        if self.taken(name) {
            return Err(RegistryError::Duplicate(name));
        }
        if self.migrating.len() >= limits::MIGRATING_COMPONENTS_MAX {
            return Err(RegistryError::MigratingFull);
        }
        self.migrating.push(name);
        Ok((self.migrating.len() - 1) as u8)
    }

    /// Register a command; returns its id among all commands.
    pub fn register_command(
        &mut self,
        name: &'static str,
        from_clients: bool,
    ) -> Result<u8, RegistryError> {
        if self.taken(name) {
            return Err(RegistryError::Duplicate(name));
        }
        if self.commands.len() >= limits::COMMAND_KINDS_MAX {
            return Err(RegistryError::CommandsFull);
        }
        self.commands.push(CommandEntry { name, from_clients });
        Ok((self.commands.len() - 1) as u8)
    }

    /// Wire id of a registered replicated component.
    pub fn id_of(&self, name: &str) -> Option<u8> {
        self.components
            .iter()
            .position(|n| *n == name)
            .map(|i| i as u8)
    }

    /// Replicated component names in wire-id order.
    pub fn components(&self) -> &[&'static str] {
        &self.components
    }

    /// Migrating component names in id order.
    pub fn migrating(&self) -> &[&'static str] {
        &self.migrating
    }

    /// Every command in id order.
    pub fn commands(&self) -> &[CommandEntry] {
        &self.commands
    }

    /// The commands clients may send, in the order that numbers them on the wire
    /// ([`crate::protocol::ClientCommand::kind`]): each one's name and its id among all commands.
    pub fn client_commands(&self) -> impl Iterator<Item = (&'static str, u8)> + '_ {
        self.commands
            .iter()
            .enumerate()
            .filter(|(_, c)| c.from_clients)
            .map(|(i, c)| (c.name, i as u8))
    }

    /// The command id of the client command numbered `client_kind` on the wire.
    pub fn command_of_client_kind(&self, client_kind: u8) -> Option<u8> {
        self.client_commands()
            .nth(usize::from(client_kind))
            .map(|(_, id)| id)
    }

    /// The wire number a client uses for the client command `name`.
    pub fn client_kind_of(&self, name: &str) -> Option<u8> {
        self.client_commands()
            .position(|(n, _)| n == name)
            .map(|i| i as u8)
    }

    /// What a client and a shard must agree on: checked at `Hello`.
    pub fn client_hash(&self) -> u64 {
        let mut h = Fnv::new();
        h.eat(&PROTOCOL_VERSION.to_le_bytes());
        h.eat(SCHEMA_REVISION.as_bytes());
        for n in &self.components {
            h.eat(n.as_bytes());
        }
        h.eat(b"client-commands");
        for (n, _) in self.client_commands() {
            h.eat(n.as_bytes());
        }
        h.0
    }

    /// What two shards must agree on: the client hash plus every migrating component and
    /// every command. Checked on every shard link.
    pub fn cluster_hash(&self) -> u64 {
        let mut h = Fnv::new();
        h.eat(&self.client_hash().to_le_bytes());
        h.eat(CLUSTER_SCHEMA_REVISION.as_bytes());
        h.eat(b"migrating");
        for n in &self.migrating {
            h.eat(n.as_bytes());
        }
        h.eat(b"commands");
        for c in &self.commands {
            h.eat(c.name.as_bytes());
            h.eat(&[u8::from(c.from_clients)]);
        }
        h.0
    }

    /// The client hash (what `Hello` carries). Kept under its old name for callers that only
    /// know one hash.
    pub fn hash(&self) -> u64 {
        self.client_hash()
    }
}

/// FNV-1a over length-prefixed byte strings (so `["ab","c"]` and `["a","bc"]` differ).
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn eat(&mut self, bytes: &[u8]) {
        for b in (bytes.len() as u32).to_le_bytes().iter().chain(bytes) {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_names_and_order() {
        let a = ProtocolRegistry::with_components(&["Health", "Kind"]).expect("distinct");
        let b = ProtocolRegistry::with_components(&["Kind", "Health"]).expect("distinct");
        let c = ProtocolRegistry::with_components(&["Health"]).expect("distinct");
        assert_ne!(a.hash(), b.hash(), "order is part of the wire ids");
        assert_ne!(a.hash(), c.hash());
        assert_eq!(
            a.hash(),
            ProtocolRegistry::with_components(&["Health", "Kind"])
                .expect("ok")
                .hash()
        );
        assert_eq!(a.id_of("Kind"), Some(1));
    }

    #[test]
    fn server_only_parts_change_the_cluster_hash_but_not_the_client_hash() {
        let mut a = ProtocolRegistry::with_components(&["Health"]).expect("distinct");
        let client = a.client_hash();
        let cluster = a.cluster_hash();
        a.register_migrating("AiState").expect("new");
        assert_eq!(a.client_hash(), client, "clients never see migrating state");
        assert_ne!(a.cluster_hash(), cluster);
        let cluster = a.cluster_hash();
        a.register_command("Heal", false).expect("new");
        assert_eq!(
            a.client_hash(),
            client,
            "a server-only command is not the client's"
        );
        assert_ne!(a.cluster_hash(), cluster);
        a.register_command("Attack", true).expect("new");
        assert_ne!(
            a.client_hash(),
            client,
            "a client command is part of the client's protocol"
        );
        assert_eq!(a.client_kind_of("Attack"), Some(0));
        assert_eq!(
            a.command_of_client_kind(0),
            Some(1),
            "Attack is command 1 of all"
        );
        assert_eq!(a.command_of_client_kind(1), None);
        assert_eq!(
            a.register_command("Health", true),
            Err(RegistryError::Duplicate("Health")),
            "one namespace for every registered name"
        );
    }

    #[test]
    fn duplicates_are_refused() {
        let mut r = ProtocolRegistry::new();
        r.register("Health").expect("first");
        assert_eq!(
            r.register("Health"),
            Err(RegistryError::Duplicate("Health"))
        );
    }
}
