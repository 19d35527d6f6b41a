//! Who a client may be and where it may go: the cluster's redirect tokens, the login policy, and
//! the sessions a lone shard keeps itself.

use bevy_ecs::prelude::*;
use std::collections::BTreeMap;
use zonescaler_shared::config::DuplicateLogin;
use zonescaler_shared::protocol::{Prepare, Redirect};
use zonescaler_shared::ticket::LoginKeys;
use zonescaler_shared::token::{Grant, GrantKind, TOKEN_LIFETIME_MS, TokenKey};
use zonescaler_shared::{ConnId, ShardId};

/// The cluster's token key (from the cluster secret) and where each shard's clients connect.
#[derive(Resource, Debug, Clone)]
pub struct ClusterDirectory {
    pub key: TokenKey,
    /// Client-facing `host:port` of each shard (empty where the transport routes by shard id).
    pub client_addrs: BTreeMap<ShardId, String>,
}

impl Default for ClusterDirectory {
    fn default() -> Self {
        // A single process needs no secret: its tokens never leave it. Multi-process clusters
        // always replace this with the configured cluster secret (the runtime refuses to start
        // without one).
        Self {
            key: TokenKey::new(b"zonescaler single-process key"),
            client_addrs: BTreeMap::new(),
        }
    }
}

impl ClusterDirectory {
    /// A signed redirect for `what` on shard `to`, valid for [`TOKEN_LIFETIME_MS`] from `now_ms`.
    pub fn redirect(&self, to: ShardId, what: GrantKind, now_ms: u64) -> Redirect {
        let token = self.key.sign(&Grant {
            shard: to,
            what,
            expires_ms: now_ms + TOKEN_LIFETIME_MS,
        });
        Redirect {
            shard: to,
            addr: self.client_addr(to),
            token,
        }
    }

    /// The heads-up for a client whose avatar is being offered to `to` (where its redirect would
    /// send it).
    pub fn prepare(&self, to: ShardId) -> Prepare {
        Prepare {
            shard: to,
            addr: self.client_addr(to),
        }
    }

    /// Where shard `to`'s clients connect (empty where the transport routes by shard id).
    fn client_addr(&self, to: ShardId) -> String {
        self.client_addrs.get(&to).cloned().unwrap_or_default()
    }
}

/// Who may log in: with keys, only clients with a ticket signed by one of them (the account
/// service's), as the account the ticket names; without, anyone under any name (development).
/// `duplicate` is what a second login of a playing account does (a cluster's master applies the
/// master's copy; a lone shard applies this one).
#[derive(Resource, Debug, Clone, Default)]
pub struct LoginPolicy {
    pub keys: LoginKeys,
    pub duplicate: DuplicateLogin,
}

/// Accounts playing on a lone shard, by connection: the one-shard stand-in for the master's
/// player directory.
#[derive(Resource, Debug, Default)]
pub struct Sessions(pub BTreeMap<String, ConnId>);

impl Sessions {
    /// Forget `account` if `conn` still holds it.
    pub fn release(&mut self, account: &str, conn: ConnId) {
        if self.0.get(account) == Some(&conn) {
            self.0.remove(account);
        }
    }
}
