//! Resume tickets: how a client whose shard died finds its avatar again.
//!
//! Every `Welcome` comes with a [`ResumeTicket`] (in `ServerControl::Resume`), signed by the
//! shard for the account it plays and the avatar's `NetId`, until an expiry. When that shard
//! dies, the master gives its cells to another shard, which promotes its copy of the avatar (same
//! `NetId`, waiting for its client). The client connects to any live shard and presents the
//! ticket in `Hello::resume`; that shard binds it to the avatar if it holds it, and otherwise
//! asks the master where the account is seated and redirects it there with an ordinary redirect
//! token ([`crate::token`]).
//!
//! **Why HMAC from the cluster secret, not Ed25519 like login tickets:** shards mint these, and
//! every shard already holds the cluster secret (it signs redirect tokens and proves links); a
//! shard is trusted with the avatars anyway. The key is derived from the secret under its own
//! label, so a resume ticket is never a redirect token or a link proof.
//!
//! **Key ids:** a ticket names the key that signed it by a fingerprint of that key (not of the
//! secret). A ring ([`ResumeKeys`]) signs with its current key and verifies with any key it holds,
//! so a cluster that changes its secret can keep accepting the old one's tickets for as long as
//! they live; a ticket whose key the ring lacks (another cluster, or a key retired) is refused as
//! [`ResumeError::UnknownKey`], told apart from a forgery ([`ResumeError::BadSignature`]).
//!
//! Expiry is in milliseconds of the shards' clock (Unix time in production, simulated time in the
//! simulator), passed in by the caller: nothing here reads a clock.

use crate::limits;
use crate::{NetId, ShardId};
use bitcode::{Decode, Encode};
use ring::hmac;

/// What a resume ticket says: `account` plays `avatar`, as of the shard `shard`'s `Welcome`.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct ResumeTicket {
    pub account: String,
    pub avatar: NetId,
    /// The shard that issued it: the one the client played on. A shard asked to resume a client
    /// whose account the master still seats on this shard knows that failover is not done yet.
    pub shard: ShardId,
    /// Unix milliseconds (or simulated) after which the ticket is refused.
    pub expires_ms: u64,
}

#[derive(Encode, Decode)]
struct Signed {
    key_id: u64,
    body: Vec<u8>,
    mac: Vec<u8>,
}

/// Longest encoded resume ticket a shard will look at (an account name of
/// `PLAYER_NAME_BYTES_MAX` and the rest fit in well under half of it).
pub const RESUME_TICKET_BYTES_MAX: usize = 256;
/// How long a resume ticket stays valid after it is issued. A shard sends a fresh one every
/// [`RESUME_TICKET_REFRESH_MS`], and with every `Welcome`, so a client always holds one valid for
/// longer than any failover takes.
pub const RESUME_TICKET_LIFETIME_MS: u64 = 10 * 60_000;
/// How often a shard sends a playing client a fresh resume ticket.
pub const RESUME_TICKET_REFRESH_MS: u64 = RESUME_TICKET_LIFETIME_MS / 2;
/// Keys one ring verifies with (the current one and those retired recently).
pub const RESUME_KEYS_MAX: usize = 4;

const _: () = assert!(RESUME_TICKET_REFRESH_MS * 2 <= RESUME_TICKET_LIFETIME_MS);
const _: () = assert!(RESUME_TICKET_LIFETIME_MS > limits::REDIRECT_WAIT_MS * 4);
const _: () = assert!(limits::PLAYER_NAME_BYTES_MAX + 128 <= RESUME_TICKET_BYTES_MAX);

/// Why a resume ticket was refused (each reason is what the client is told).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    #[error("resume ticket of {0} bytes is larger than {RESUME_TICKET_BYTES_MAX}")]
    TooLarge(usize),
    #[error("resume ticket is malformed")]
    Malformed,
    #[error(
        "resume ticket is signed with key {0:016x}, which this cluster does not hold (another cluster, or a retired key)"
    )]
    UnknownKey(u64),
    #[error("resume ticket signature does not verify (forged)")]
    BadSignature,
    #[error("resume ticket expired {0} ms ago")]
    Expired(u64),
    #[error("resume ticket names an empty or over-long account")]
    BadAccount,
}

/// One resume key: its id (a fingerprint) and the HMAC key.
#[derive(Clone)]
struct ResumeKey {
    id: u64,
    key: hmac::Key,
}

impl ResumeKey {
    fn from_secret(cluster_secret: &[u8]) -> Self {
        let derive = hmac::Key::new(hmac::HMAC_SHA256, cluster_secret);
        let sub = hmac::sign(&derive, b"zonescaler resume ticket v1");
        let key = hmac::Key::new(hmac::HMAC_SHA256, sub.as_ref());
        // The id is a MAC under the key itself: it names the key without telling anything about
        // the secret, and two secrets give two ids.
        let tag = hmac::sign(&key, b"key id");
        let mut id = [0u8; 8];
        id.copy_from_slice(&tag.as_ref()[..8]);
        Self {
            id: u64::from_le_bytes(id),
            key,
        }
    }
}

/// Signs resume tickets with the current key and verifies them with any key of the ring.
#[derive(Clone)]
pub struct ResumeKeys {
    /// `keys[0]` signs; every one verifies. Never empty, at most [`RESUME_KEYS_MAX`].
    keys: Vec<ResumeKey>,
}

impl std::fmt::Debug for ResumeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResumeKeys")
            .field("ids", &self.ids().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl ResumeKeys {
    /// A ring that signs with the key derived from `cluster_secret`.
    pub fn new(cluster_secret: &[u8]) -> Self {
        Self {
            keys: vec![ResumeKey::from_secret(cluster_secret)],
        }
    }

    /// This ring, also accepting tickets of the key derived from `old_secret` (a cluster secret
    /// being retired). Past [`RESUME_KEYS_MAX`] keys the oldest accepted one is dropped.
    pub fn accepting(mut self, old_secret: &[u8]) -> Self {
        let old = ResumeKey::from_secret(old_secret);
        if self.keys.iter().all(|k| k.id != old.id) {
            self.keys.insert(1, old);
            self.keys.truncate(RESUME_KEYS_MAX);
        }
        self
    }

    /// The ids of the keys this ring verifies with, the signing key's first.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.keys.iter().map(|k| k.id)
    }

    pub fn sign(&self, ticket: &ResumeTicket) -> Vec<u8> {
        let k = &self.keys[0];
        let body = bitcode::encode(ticket);
        let mac = hmac::sign(&k.key, &signed_bytes(k.id, &body))
            .as_ref()
            .to_vec();
        bitcode::encode(&Signed {
            key_id: k.id,
            body,
            mac,
        })
    }

    /// The ticket in `bytes` if a key of this ring signed it, it names an account, and it has
    /// not expired at `now_ms`.
    pub fn verify(&self, bytes: &[u8], now_ms: u64) -> Result<ResumeTicket, ResumeError> {
        if bytes.len() > RESUME_TICKET_BYTES_MAX {
            return Err(ResumeError::TooLarge(bytes.len()));
        }
        let signed: Signed = bitcode::decode(bytes).map_err(|_| ResumeError::Malformed)?;
        let Some(k) = self.keys.iter().find(|k| k.id == signed.key_id) else {
            return Err(ResumeError::UnknownKey(signed.key_id));
        };
        hmac::verify(&k.key, &signed_bytes(k.id, &signed.body), &signed.mac)
            .map_err(|_| ResumeError::BadSignature)?;
        let t: ResumeTicket = bitcode::decode(&signed.body).map_err(|_| ResumeError::Malformed)?;
        if t.account.is_empty() || t.account.len() > limits::PLAYER_NAME_BYTES_MAX {
            return Err(ResumeError::BadAccount);
        }
        if now_ms > t.expires_ms {
            return Err(ResumeError::Expired(now_ms - t.expires_ms));
        }
        Ok(t)
    }
}

/// What the MAC covers: a label, the key id and the body, so a body cannot be moved under another
/// key's id.
fn signed_bytes(key_id: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + body.len());
    out.extend_from_slice(b"zsr1");
    out.extend_from_slice(&key_id.to_le_bytes());
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(expires_ms: u64) -> ResumeTicket {
        ResumeTicket {
            account: "ann".into(),
            avatar: NetId(7),
            shard: ShardId(2),
            expires_ms,
        }
    }

    #[test]
    fn a_ticket_verifies_until_it_expires() {
        let keys = ResumeKeys::new(b"0123456789abcdef");
        let t = keys.sign(&ticket(1_000));
        assert!(t.len() <= RESUME_TICKET_BYTES_MAX);
        assert_eq!(keys.verify(&t, 1_000), Ok(ticket(1_000)));
        assert_eq!(keys.verify(&t, 1_001), Err(ResumeError::Expired(1)));
        let long = ResumeTicket {
            account: "x".repeat(limits::PLAYER_NAME_BYTES_MAX),
            avatar: NetId(u64::MAX),
            shard: ShardId(u16::MAX),
            expires_ms: u64::MAX,
        };
        let t = keys.sign(&long);
        assert!(
            t.len() <= RESUME_TICKET_BYTES_MAX,
            "the longest ticket fits its bound: {} bytes",
            t.len()
        );
        assert_eq!(keys.verify(&t, 0), Ok(long));
    }

    #[test]
    fn a_flipped_bit_anywhere_breaks_it() {
        let keys = ResumeKeys::new(b"0123456789abcdef");
        let t = keys.sign(&ticket(1_000));
        for i in 0..t.len() {
            for bit in 0..8 {
                let mut bad = t.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    keys.verify(&bad, 0).is_err(),
                    "flipping bit {bit} of byte {i} must break the ticket"
                );
            }
        }
        // A changed body under the right key id is a forgery, not an unknown key.
        let mut forged: Signed = bitcode::decode(&t).expect("our own encoding");
        forged.body = bitcode::encode(&ResumeTicket {
            account: "eve".into(),
            ..ticket(1_000)
        });
        assert_eq!(
            keys.verify(&bitcode::encode(&forged), 0),
            Err(ResumeError::BadSignature)
        );
        assert_eq!(keys.verify(&[0u8; 300], 0), Err(ResumeError::TooLarge(300)));
        assert_eq!(keys.verify(&[1, 2, 3], 0), Err(ResumeError::Malformed));
    }

    #[test]
    fn another_clusters_ticket_names_a_key_this_cluster_does_not_hold() {
        let ours = ResumeKeys::new(b"0123456789abcdef");
        let theirs = ResumeKeys::new(b"fedcba9876543210");
        let their_id = theirs.ids().next().expect("a signing key");
        assert_ne!(ours.ids().next(), Some(their_id));
        let t = theirs.sign(&ticket(1_000));
        assert_eq!(ours.verify(&t, 0), Err(ResumeError::UnknownKey(their_id)));
    }

    #[test]
    fn a_retired_key_verifies_while_the_ring_accepts_it_and_not_after() {
        let old = ResumeKeys::new(b"old secret, retiring");
        let t = old.sign(&ticket(1_000));
        let rotated = ResumeKeys::new(b"new secret, current").accepting(b"old secret, retiring");
        assert_eq!(
            rotated.verify(&t, 0),
            Ok(ticket(1_000)),
            "tickets of the old key still resume during the rotation"
        );
        let fresh = rotated.sign(&ticket(1_000));
        let new_only = ResumeKeys::new(b"new secret, current");
        assert_eq!(
            new_only.verify(&fresh, 0),
            Ok(ticket(1_000)),
            "the ring signs with the new key"
        );
        let old_id = old.ids().next().expect("a signing key");
        assert_eq!(
            new_only.verify(&t, 0),
            Err(ResumeError::UnknownKey(old_id)),
            "once retired, the old key's tickets name an unknown key"
        );
        let mut ring = ResumeKeys::new(b"k0");
        for i in 1..10u8 {
            ring = ring.accepting(&[b'k', b'0' + i]);
        }
        assert_eq!(ring.ids().count(), RESUME_KEYS_MAX, "the ring is bounded");
        assert_eq!(ring.ids().next(), ResumeKeys::new(b"k0").ids().next());
    }
}
