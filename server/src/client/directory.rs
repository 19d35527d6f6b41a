//! Who a client may be and where it may go: the cluster's redirect tokens and resume tickets,
//! the login policy, and the sessions a lone shard keeps itself.

use bevy_ecs::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use zonescaler_shared::config::DuplicateLogin;
use zonescaler_shared::protocol::{Prepare, Redirect, Resume};
use zonescaler_shared::resume::{RESUME_TICKET_LIFETIME_MS, ResumeKeys, ResumeTicket};
use zonescaler_shared::ticket::LoginKeys;
use zonescaler_shared::token::{Grant, GrantKind, TOKEN_LIFETIME_MS, TokenKey};
use zonescaler_shared::{ConnId, NetId, ShardId, limits};

/// The cluster's token key and resume keys (from the cluster secret) and where each shard's
/// clients connect.
#[derive(Resource, Debug, Clone)]
pub struct ClusterDirectory {
    pub key: TokenKey,
    pub resume: ResumeKeys,
    /// Client-facing `host:port` of each shard (empty where the transport routes by shard id).
    pub client_addrs: BTreeMap<ShardId, String>,
}

impl Default for ClusterDirectory {
    fn default() -> Self {
        // A single process needs no secret: its tokens never leave it. Multi-process clusters
        // always replace this with the configured cluster secret (the runtime refuses to start
        // without one).
        let secret = b"zonescaler single-process key";
        Self {
            key: TokenKey::new(secret),
            resume: ResumeKeys::new(secret),
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

    /// What a client of shard `me` playing `avatar` as `account` needs to come back if `me` dies:
    /// a resume ticket valid for [`RESUME_TICKET_LIFETIME_MS`] from `now_ms`, and up to
    /// [`limits::RESUME_SHARDS_MAX`] of `others` (live shards) to present it to, the ones after
    /// `me` first (in id order, wrapping), so the clients of one shard do not all crowd the same
    /// one.
    pub fn resume(
        &self,
        me: ShardId,
        account: &str,
        avatar: NetId,
        others: impl IntoIterator<Item = ShardId>,
        now_ms: u64,
    ) -> Resume {
        let ticket = self.resume.sign(&ResumeTicket {
            account: account.to_owned(),
            avatar,
            shard: me,
            expires_ms: now_ms.saturating_add(RESUME_TICKET_LIFETIME_MS),
        });
        let others: BTreeSet<ShardId> = others.into_iter().filter(|s| *s != me).collect();
        let mut others: Vec<ShardId> = others.into_iter().collect();
        let after = others.partition_point(|s| *s < me);
        others.rotate_left(after);
        others.truncate(limits::RESUME_SHARDS_MAX);
        Resume {
            shard: me,
            ticket,
            shards: others
                .into_iter()
                .map(|s| (s, self.client_addr(s)))
                .collect(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_names_other_shards_after_its_own_first_and_verifies_for_its_avatar() {
        let mut dir = ClusterDirectory::default();
        for i in 0..12u16 {
            dir.client_addrs
                .insert(ShardId(i), format!("10.0.0.{i}:4433"));
        }
        let owners = [5, 1, 11, 5, 3, 0, 7, 9, 2, 4, 6, 8, 10].map(ShardId);
        let r = dir.resume(ShardId(5), "ann", NetId(9), owners, 1_000);
        let ids: Vec<u16> = r.shards.iter().map(|(s, _)| s.0).collect();
        assert_eq!(
            ids,
            vec![6, 7, 8, 9, 10, 11, 0, 1],
            "the shards after this one first, wrapping, without it, at most RESUME_SHARDS_MAX"
        );
        assert_eq!(
            r.shards[0].1, "10.0.0.6:4433",
            "with their client addresses"
        );
        assert_eq!(r.shard, ShardId(5));
        let t = dir.resume.verify(&r.ticket, 1_000).expect("it verifies");
        assert_eq!(
            (t.account.as_str(), t.avatar, t.shard),
            ("ann", NetId(9), ShardId(5))
        );
        assert_eq!(t.expires_ms, 1_000 + RESUME_TICKET_LIFETIME_MS);
    }
}
