//! What a bot sees: its reconstruction of the world at one tick.
//!
//! Its own module because both the client core (which builds views from snapshots) and a game's
//! brain (which reads them) need it, and neither should depend on the other for it.

use std::collections::BTreeMap;
use std::sync::Arc;
use zonescaler_shared::NetId;
use zonescaler_shared::protocol::ComponentBlob;
use zonescaler_shared::quant::QPos;

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
