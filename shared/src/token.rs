//! Signed, short-lived redirect tokens: how a client proves to a shard that another shard of the
//! same cluster sent it there.
//!
//! When a player's avatar is handed off (or a login lands on a shard that does not own the spawn
//! point), the source shard gives the client a [`Grant`] signed with the cluster secret. The
//! target checks the signature and the expiry before it binds the connection to the avatar, so
//! a client can never claim an avatar, or a spawn point, that no shard gave it. The MAC is
//! HMAC-SHA256 over the grant's `bitcode` encoding; verification is constant-time
//! (`ring::hmac::verify`). Expiry is in milliseconds of the shards' clock (Unix time in
//! production, simulated time in the simulator), which the caller passes in: nothing here reads
//! a clock.

use crate::quant::QPos;
use crate::{NetId, ShardId};
use bitcode::{Decode, Encode};
use ring::hmac;

/// What a token allows: connect to `shard` and take over `avatar`, or spawn a new avatar at `spawn`.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Grant {
    pub shard: ShardId,
    pub what: GrantKind,
    /// Unix milliseconds (or simulated) after which the token is refused.
    pub expires_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum GrantKind {
    /// Bind to this avatar, handed off to `shard`.
    Avatar(NetId),
    /// Log in a new player named `name` at `spawn` (a login that arrived through another shard).
    Spawn { name: String, spawn: QPos },
}

#[derive(Encode, Decode)]
struct Signed {
    grant: Vec<u8>,
    mac: Vec<u8>,
}

/// Longest encoded token a shard will look at.
pub const TOKEN_BYTES_MAX: usize = 256;
/// How long a token stays valid after it is issued.
pub const TOKEN_LIFETIME_MS: u64 = 10_000;

/// Why a token was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token of {0} bytes is larger than {TOKEN_BYTES_MAX}")]
    TooLarge(usize),
    #[error("token is malformed")]
    Malformed,
    #[error("token signature does not verify (another cluster, or forged)")]
    BadSignature,
    #[error("token expired {0} ms ago")]
    Expired(u64),
    #[error("token is for shard {0}, not this one")]
    WrongShard(u16),
}

/// Signs and checks grants with one cluster secret.
#[derive(Clone)]
pub struct TokenKey(hmac::Key);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<secret>)")
    }
}

impl TokenKey {
    /// A key derived from the cluster secret (domain-separated from the link proofs, which use
    /// the same secret).
    pub fn new(cluster_secret: &[u8]) -> Self {
        let derive = hmac::Key::new(hmac::HMAC_SHA256, cluster_secret);
        let sub = hmac::sign(&derive, b"zonescaler redirect token v1");
        Self(hmac::Key::new(hmac::HMAC_SHA256, sub.as_ref()))
    }

    pub fn sign(&self, grant: &Grant) -> Vec<u8> {
        let grant = bitcode::encode(grant);
        let mac = hmac::sign(&self.0, &grant).as_ref().to_vec();
        bitcode::encode(&Signed { grant, mac })
    }

    /// The grant in `token` if it is signed by this key, meant for `me` and not expired at `now_ms`.
    pub fn verify(&self, token: &[u8], me: ShardId, now_ms: u64) -> Result<Grant, TokenError> {
        if token.len() > TOKEN_BYTES_MAX {
            return Err(TokenError::TooLarge(token.len()));
        }
        let signed: Signed = bitcode::decode(token).map_err(|_| TokenError::Malformed)?;
        hmac::verify(&self.0, &signed.grant, &signed.mac).map_err(|_| TokenError::BadSignature)?;
        let grant: Grant = bitcode::decode(&signed.grant).map_err(|_| TokenError::Malformed)?;
        if now_ms > grant.expires_ms {
            return Err(TokenError::Expired(now_ms - grant.expires_ms));
        }
        if grant.shard != me {
            return Err(TokenError::WrongShard(grant.shard.0));
        }
        Ok(grant)
    }
}

/// The operator's API token of a cluster (hex), derived from the cluster secret and
/// domain-separated from the link proofs and the redirect tokens: whoever holds the secret can
/// compute it, and it proves nothing on a link.
pub fn api_token(cluster_secret: &[u8]) -> String {
    let derive = hmac::Key::new(hmac::HMAC_SHA256, cluster_secret);
    hmac::sign(&derive, b"zonescaler operator api token v1")
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(expires_ms: u64) -> Grant {
        Grant {
            shard: ShardId(2),
            what: GrantKind::Avatar(NetId(7)),
            expires_ms,
        }
    }

    #[test]
    fn a_signed_grant_verifies_on_its_shard_until_it_expires() {
        let key = TokenKey::new(b"0123456789abcdef");
        let t = key.sign(&grant(1_000));
        assert_eq!(key.verify(&t, ShardId(2), 1_000), Ok(grant(1_000)));
        assert_eq!(
            key.verify(&t, ShardId(2), 1_001),
            Err(TokenError::Expired(1))
        );
        assert_eq!(
            key.verify(&t, ShardId(3), 10),
            Err(TokenError::WrongShard(2))
        );
    }

    #[test]
    fn another_cluster_or_a_flipped_bit_is_refused() {
        let key = TokenKey::new(b"0123456789abcdef");
        let other = TokenKey::new(b"fedcba9876543210");
        let t = key.sign(&grant(1_000));
        assert_eq!(
            other.verify(&t, ShardId(2), 0),
            Err(TokenError::BadSignature),
            "a token from another cluster must not verify"
        );
        for i in 0..t.len() {
            let mut bad = t.clone();
            bad[i] ^= 0x40;
            assert!(
                key.verify(&bad, ShardId(2), 0).is_err(),
                "flipping byte {i} must break the token"
            );
        }
        assert_eq!(
            key.verify(&[0u8; 300], ShardId(2), 0),
            Err(TokenError::TooLarge(300))
        );
    }
}
