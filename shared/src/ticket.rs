//! Login tickets: how a client proves which account it plays, and where the game wants it.
//!
//! A game's account service (which checks passwords, platform logins or whatever the game uses)
//! hands a logged-in player a [`LoginTicket`] signed with one of its login keys. The player's
//! client presents it in `Hello`; a shard verifies it against the key ring it was configured
//! with and plays that account, at the spawn point the ticket names (or one the shard picks).
//! The client never names itself or its spawn point.
//!
//! **Why Ed25519, not HMAC:** shards only hold the public half of each key, so a shard, its
//! config or its logs leaking cannot be used to mint tickets; only the account service can.
//! `ring` (already in the build for TLS and the cluster's HMACs) signs and verifies.
//!
//! **Keys rotate by id:** every ticket names the key that signed it. An operator adds the new
//! key to the shards' ring, switches the account service over, and removes the old key once its
//! last tickets expired. A ticket whose key id is not in the ring is refused with that reason.
//!
//! Expiry is in milliseconds of the shards' clock (Unix time in production, simulated time in
//! the simulator), passed in by the caller: nothing here reads a clock.

use crate::limits;
use crate::quant::QPos;
use bitcode::{Decode, Encode};
use ring::signature::{self, Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What a ticket says: who the player is, where the game wants them, until when.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct LoginTicket {
    /// The account, as the account service names it (also the player's name in the world).
    pub account: String,
    /// Where the game wants the player to start; `None` lets the shard pick a point it owns.
    pub spawn: Option<QPos>,
    /// Unix milliseconds (or simulated) after which the ticket is refused.
    pub expires_ms: u64,
}

#[derive(Encode, Decode)]
struct SignedTicket {
    key_id: String,
    body: Vec<u8>,
    signature: Vec<u8>,
}

/// Longest encoded ticket a shard will look at.
pub const TICKET_BYTES_MAX: usize = 512;
/// Longest key id.
pub const KEY_ID_BYTES_MAX: usize = 32;
/// Keys one ring holds (rotation needs two; a few spare).
pub const LOGIN_KEYS_MAX: usize = 16;
/// Longest lifetime a ticket may be minted with (`zonescaler ticket --ttl`).
pub const TICKET_TTL_MS_MAX: u64 = 7 * 24 * 3_600_000;

/// Why a ticket was refused (each reason is what the client is told).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("login ticket of {0} bytes is larger than {TICKET_BYTES_MAX}")]
    TooLarge(usize),
    #[error("login ticket is malformed")]
    Malformed,
    #[error("login ticket is signed with key {0:?}, which this server does not know")]
    UnknownKey(String),
    #[error("login ticket signature does not verify (forged, or signed by another key)")]
    BadSignature,
    #[error("login ticket expired {0} ms ago")]
    Expired(u64),
    #[error("login ticket names an empty or over-long account")]
    BadAccount,
}

/// Why a key file or key was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read login key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write login key file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("login key file {path}: {detail}")]
    Invalid { path: String, detail: String },
    #[error("the system random source failed")]
    Random,
    #[error("no private login key in {0}: minting tickets needs the account service's key file")]
    NoPrivateKey(String),
}

/// One login key as written in a key file. The account service's file holds `private_pkcs8`;
/// a shard needs only `public`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub id: String,
    /// Ed25519 public key, hex (64 characters).
    pub public: String,
    /// PKCS#8 Ed25519 private key, hex; only in the account service's copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_pkcs8: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    #[serde(default)]
    key: Vec<KeyEntry>,
}

/// The keys a shard accepts tickets from (public halves), by id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoginKeys {
    keys: Vec<(String, Vec<u8>)>,
}

/// A private key that mints tickets (the account service's; `zonescaler ticket` and the bots).
pub struct TicketSigner {
    id: String,
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for TicketSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketSigner")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > KEY_ID_BYTES_MAX {
        return Err(format!(
            "key id {id:?} must be 1..={KEY_ID_BYTES_MAX} bytes"
        ));
    }
    Ok(())
}

impl LoginKeys {
    /// A ring of `(id, Ed25519 public key)` pairs.
    pub fn new(keys: Vec<(String, Vec<u8>)>) -> Self {
        Self { keys }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(id, _)| id.as_str())
    }

    /// Read a key file (TOML, `[[key]]` tables with `id` and `public`); private halves, if
    /// present, are ignored here.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let entries = read_key_file(path)?;
        Ok(Self::new(
            entries
                .into_iter()
                .map(|(e, public)| (e.id, public))
                .collect(),
        ))
    }

    /// The ticket in `bytes` if a key of this ring signed it, it names an account, and it has
    /// not expired at `now_ms`.
    pub fn verify(&self, bytes: &[u8], now_ms: u64) -> Result<LoginTicket, TicketError> {
        if bytes.len() > TICKET_BYTES_MAX {
            return Err(TicketError::TooLarge(bytes.len()));
        }
        let signed: SignedTicket = bitcode::decode(bytes).map_err(|_| TicketError::Malformed)?;
        let Some((_, public)) = self.keys.iter().find(|(id, _)| *id == signed.key_id) else {
            let mut id = signed.key_id;
            id.truncate(id.floor_char_boundary(KEY_ID_BYTES_MAX));
            return Err(TicketError::UnknownKey(id));
        };
        signature::UnparsedPublicKey::new(&signature::ED25519, public)
            .verify(
                &signed_bytes(&signed.key_id, &signed.body),
                &signed.signature,
            )
            .map_err(|_| TicketError::BadSignature)?;
        let ticket: LoginTicket =
            bitcode::decode(&signed.body).map_err(|_| TicketError::Malformed)?;
        if ticket.account.is_empty() || ticket.account.len() > limits::PLAYER_NAME_BYTES_MAX {
            return Err(TicketError::BadAccount);
        }
        if now_ms > ticket.expires_ms {
            return Err(TicketError::Expired(now_ms - ticket.expires_ms));
        }
        Ok(ticket)
    }
}

/// What the signature covers: the key id and the body, so a body cannot be moved under another
/// key's name.
fn signed_bytes(key_id: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + key_id.len() + body.len());
    out.extend_from_slice(b"zst1");
    out.push(key_id.len() as u8);
    out.extend_from_slice(key_id.as_bytes());
    out.extend_from_slice(body);
    out
}

fn read_key_file(path: &Path) -> Result<Vec<(KeyEntry, Vec<u8>)>, KeyError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: p.clone(),
        source,
    })?;
    let invalid = |detail: String| KeyError::Invalid {
        path: p.clone(),
        detail,
    };
    let file: KeyFile = toml::from_str(&text).map_err(|e| invalid(e.message().to_string()))?;
    if file.key.is_empty() {
        return Err(invalid("no [[key]] entries".into()));
    }
    if file.key.len() > LOGIN_KEYS_MAX {
        return Err(invalid(format!("more than {LOGIN_KEYS_MAX} keys")));
    }
    let mut out = Vec::new();
    for e in file.key {
        check_id(&e.id).map_err(&invalid)?;
        if out.iter().any(|(k, _): &(KeyEntry, Vec<u8>)| k.id == e.id) {
            return Err(invalid(format!("key id {:?} appears twice", e.id)));
        }
        let public = unhex(&e.public)
            .filter(|b| b.len() == 32)
            .ok_or_else(|| invalid(format!("key {:?}: `public` is not 64 hex digits", e.id)))?;
        out.push((e, public));
    }
    Ok(out)
}

impl TicketSigner {
    /// A new random key named `id`, kept in memory only (tests, one-off local runs).
    pub fn generate(id: &str) -> Result<Self, KeyError> {
        check_id(id).map_err(|detail| KeyError::Invalid {
            path: "<new key>".into(),
            detail,
        })?;
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Random)?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| KeyError::Random)?;
        Ok(Self {
            id: id.to_string(),
            pair,
        })
    }

    /// A key derived from a 32-byte seed: the same seed gives the same key. For simulations and
    /// tests that must replay exactly; a real account service uses [`Self::generate_files`].
    pub fn from_seed(id: &str, seed: [u8; 32]) -> Result<Self, KeyError> {
        check_id(id).map_err(|detail| KeyError::Invalid {
            path: "<seeded key>".into(),
            detail,
        })?;
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| KeyError::Random)?;
        Ok(Self {
            id: id.to_string(),
            pair,
        })
    }

    /// Generate a key named `id` and write it to `private_path` (readable by this user only,
    /// with both halves) and `public_path` (the public half, for shards).
    pub fn generate_files(
        id: &str,
        private_path: &Path,
        public_path: &Path,
    ) -> Result<Self, KeyError> {
        check_id(id).map_err(|detail| KeyError::Invalid {
            path: private_path.display().to_string(),
            detail,
        })?;
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Random)?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| KeyError::Random)?;
        let public = hex(pair.public_key().as_ref());
        let entry = KeyEntry {
            id: id.to_string(),
            public: public.clone(),
            private_pkcs8: Some(hex(pkcs8.as_ref())),
        };
        let header = "# ZoneScaler login key: the account service signs login tickets with it.\n\
                      # Private: keep it off shards; give shards the .pub file.\n";
        let body =
            toml::to_string(&KeyFile { key: vec![entry] }).map_err(|e| KeyError::Invalid {
                path: private_path.display().to_string(),
                detail: e.to_string(),
            })?;
        write_file(private_path, &format!("{header}{body}"), true)?;
        let public_entry = KeyEntry {
            id: id.to_string(),
            public,
            private_pkcs8: None,
        };
        let pub_body = toml::to_string(&KeyFile {
            key: vec![public_entry],
        })
        .map_err(|e| KeyError::Invalid {
            path: public_path.display().to_string(),
            detail: e.to_string(),
        })?;
        write_file(
            public_path,
            &format!("# ZoneScaler login keys shards accept (public halves).\n{pub_body}"),
            false,
        )?;
        Ok(Self {
            id: id.to_string(),
            pair,
        })
    }

    /// The signing key of a key file: the last entry that has a private half (the newest, by
    /// the convention that rotation appends).
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let p = path.display().to_string();
        let entries = read_key_file(path)?;
        let (entry, public) = entries
            .into_iter()
            .rev()
            .find(|(e, _)| e.private_pkcs8.is_some())
            .ok_or_else(|| KeyError::NoPrivateKey(p.clone()))?;
        let invalid = |detail: String| KeyError::Invalid {
            path: p.clone(),
            detail,
        };
        let pkcs8 = entry
            .private_pkcs8
            .as_deref()
            .and_then(unhex)
            .ok_or_else(|| invalid(format!("key {:?}: `private_pkcs8` is not hex", entry.id)))?;
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
            .map_err(|_| invalid(format!("key {:?}: not an Ed25519 PKCS#8 key", entry.id)))?;
        if pair.public_key().as_ref() != public.as_slice() {
            return Err(invalid(format!(
                "key {:?}: `public` does not match the private key",
                entry.id
            )));
        }
        Ok(Self { id: entry.id, pair })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The ring that accepts this signer's tickets.
    pub fn public_keys(&self) -> LoginKeys {
        LoginKeys::new(vec![(
            self.id.clone(),
            self.pair.public_key().as_ref().to_vec(),
        )])
    }

    /// Sign `ticket`.
    pub fn sign(&self, ticket: &LoginTicket) -> Vec<u8> {
        let body = bitcode::encode(ticket);
        let signature = self
            .pair
            .sign(&signed_bytes(&self.id, &body))
            .as_ref()
            .to_vec();
        bitcode::encode(&SignedTicket {
            key_id: self.id.clone(),
            body,
            signature,
        })
    }
}

/// Tickets travel in text (a command line, an HTTP header) as lowercase hex.
pub fn to_text(ticket: &[u8]) -> String {
    hex(ticket)
}

/// The bytes of a ticket in text form, `None` if it is not hex.
pub fn from_text(text: &str) -> Option<Vec<u8>> {
    unhex(text.trim())
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), KeyError> {
    use std::io::Write;
    let err = |source| KeyError::Write {
        path: path.display().to_string(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = options.open(path).map_err(err)?;
    f.write_all(contents.as_bytes()).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(expires_ms: u64) -> LoginTicket {
        LoginTicket {
            account: "ann".into(),
            spawn: Some(QPos([100, 0, -200])),
            expires_ms,
        }
    }

    #[test]
    fn a_ticket_verifies_with_its_key_until_it_expires() {
        let signer = TicketSigner::generate("k1").expect("key");
        let ring = signer.public_keys();
        let t = signer.sign(&ticket(1_000));
        assert_eq!(ring.verify(&t, 1_000), Ok(ticket(1_000)));
        assert_eq!(ring.verify(&t, 1_500), Err(TicketError::Expired(500)));
    }

    #[test]
    fn forged_or_foreign_tickets_are_refused_with_their_reason() {
        let signer = TicketSigner::generate("k1").expect("key");
        let ring = signer.public_keys();
        let t = signer.sign(&ticket(1_000));
        let other = TicketSigner::generate("k1").expect("key");
        assert_eq!(
            ring.verify(&other.sign(&ticket(1_000)), 0),
            Err(TicketError::BadSignature),
            "same key id, another key: the signature decides"
        );
        let stranger = TicketSigner::generate("k9").expect("key");
        assert_eq!(
            ring.verify(&stranger.sign(&ticket(1_000)), 0),
            Err(TicketError::UnknownKey("k9".into()))
        );
        for i in 0..t.len() {
            let mut bad = t.clone();
            bad[i] ^= 0x20;
            assert!(ring.verify(&bad, 0).is_err(), "flipping byte {i} breaks it");
        }
        assert_eq!(
            ring.verify(&[0; TICKET_BYTES_MAX + 1], 0),
            Err(TicketError::TooLarge(TICKET_BYTES_MAX + 1))
        );
        assert_eq!(ring.verify(b"junk", 0), Err(TicketError::Malformed));
        let nobody = LoginTicket {
            account: String::new(),
            ..ticket(1_000)
        };
        assert_eq!(
            ring.verify(&signer.sign(&nobody), 0),
            Err(TicketError::BadAccount)
        );
    }

    #[test]
    fn key_files_round_trip_and_shards_read_only_public_halves() {
        let dir = std::env::temp_dir().join(format!("zs-ticket-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (private, public) = (dir.join("login.key"), dir.join("login.pub"));
        let made = TicketSigner::generate_files("2026-11", &private, &public).expect("written");
        let loaded = TicketSigner::load(&private).expect("private file loads");
        assert_eq!(loaded.id(), "2026-11");
        let ring = LoginKeys::load(&public).expect("public file loads");
        assert_eq!(ring.ids().collect::<Vec<_>>(), ["2026-11"]);
        let t = loaded.sign(&ticket(10));
        assert_eq!(ring.verify(&t, 0), Ok(ticket(10)));
        assert_eq!(made.public_keys(), ring);
        assert!(matches!(
            TicketSigner::load(&public),
            Err(KeyError::NoPrivateKey(_))
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&private)
                .expect("exists")
                .permissions()
                .mode();
            assert_eq!(
                mode & 0o077,
                0,
                "the private key is readable by its owner only"
            );
        }
        std::fs::write(&public, "[[key]]\nid = \"a\"\npublic = \"zz\"\n").expect("write");
        let err = LoginKeys::load(&public).expect_err("bad hex");
        assert!(err.to_string().contains("not 64 hex digits"), "{err}");
        std::fs::write(&public, "[[key]]\nid = \"a\"\npublik = \"00\"\n").expect("write");
        assert!(
            LoginKeys::load(&public).is_err(),
            "unknown fields are refused"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tickets_survive_text_form() {
        let signer = TicketSigner::generate("k1").expect("key");
        let t = signer.sign(&ticket(5));
        assert_eq!(from_text(&to_text(&t)), Some(t));
        assert_eq!(from_text("xyz"), None);
    }
}
