//! The protocol registry: the one list of everything that crosses the wire besides the fixed
//! message enums, and the hash every handshake compares.
//!
//! A shard registers its replicated components (`app.replicate::<Health>()`) in order; the order
//! gives each a `u8` id on the wire. The hash covers the protocol version, the message schema
//! revision and every registered name in order, so two peers built with different component sets
//! refuse each other at `Hello` instead of misreading each other's bytes.

use crate::limits;
use crate::protocol::PROTOCOL_VERSION;

/// Revision of the message layout in [`crate::protocol`]; bump with any field change.
const SCHEMA_REVISION: &str = "zonescaler-wire/snapshot-age-baseline-index-moved-rare/proxy-batch-only-handoff-redirect-cellmap/6";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProtocolRegistry {
    components: Vec<&'static str>,
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("component `{0}` is registered twice")]
    Duplicate(&'static str),
    #[error(
        "more than {} replicated components",
        limits::REPLICATED_COMPONENTS_MAX
    )]
    Full,
}

impl ProtocolRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry with these component names in this order.
    pub fn with_components(names: &[&'static str]) -> Result<Self, RegistryError> {
        let mut r = Self::new();
        for n in names {
            r.register(n)?;
        }
        Ok(r)
    }

    /// Register a component by its stable wire name; returns its wire id.
    pub fn register(&mut self, name: &'static str) -> Result<u8, RegistryError> {
        if self.components.contains(&name) {
            return Err(RegistryError::Duplicate(name));
        }
        if self.components.len() >= limits::REPLICATED_COMPONENTS_MAX {
            return Err(RegistryError::Full);
        }
        self.components.push(name);
        // The bound above keeps the index below 255.
        Ok((self.components.len() - 1) as u8)
    }

    /// Wire id of a registered component.
    pub fn id_of(&self, name: &str) -> Option<u8> {
        self.components
            .iter()
            .position(|n| *n == name)
            .map(|i| i as u8)
    }

    /// Names in wire-id order.
    pub fn components(&self) -> &[&'static str] {
        &self.components
    }

    /// FNV-1a over the version, schema revision and component names (length-prefixed, so
    /// `["ab","c"]` and `["a","bc"]` differ).
    pub fn hash(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for b in (bytes.len() as u32).to_le_bytes().iter().chain(bytes) {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        eat(&PROTOCOL_VERSION.to_le_bytes());
        eat(SCHEMA_REVISION.as_bytes());
        for n in &self.components {
            eat(n.as_bytes());
        }
        h
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
    fn duplicates_are_refused() {
        let mut r = ProtocolRegistry::new();
        r.register("Health").expect("first");
        assert_eq!(
            r.register("Health"),
            Err(RegistryError::Duplicate("Health"))
        );
    }
}
