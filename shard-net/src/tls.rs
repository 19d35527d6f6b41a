//! TLS and QUIC transport settings shared by the shard ([`server_config`]) and the bots
//! ([`client_config`]).
//!
//! QUIC cannot run without TLS 1.3, so even a local test needs a certificate: [`ServerIdentity`]
//! either generates a throw-away self-signed one or loads an operator's PEM files, and
//! [`ClientTrust`] says how a client decides to believe the server. The crypto provider is always
//! named explicitly (ring) rather than taken from a process-wide default, so a binary that links
//! two providers can never panic on "no default provider".
//!
//! Every endpoint names its protocol with ALPN ([`ALPN_CLIENT`] on client ports, [`ALPN_LINK`]
//! on shard links), and QUIC's ALPN is strict (RFC 9001 §8.1): a peer that offers another
//! protocol, or none, fails the TLS handshake with `no_application_protocol`. So a link dialer
//! pointed at a client port (or a bot at a link port) learns of the mistake at once, from an
//! error that says so, instead of its bytes reaching a shard that would read them as the wrong
//! protocol; and a future `zs-client/2` can run beside version 1 on the same port.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, VarInt};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use zonescaler_shared::limits;

/// ALPN protocol id of the client protocol: bots and game clients to a shard's client port
/// ([`server_config`], [`client_config`]).
pub const ALPN_CLIENT: &[u8] = b"zs-client/1";
/// ALPN protocol id of shard-to-shard links (`link`), both directions.
pub const ALPN_LINK: &[u8] = b"zs-link/1";

/// Application datagram bytes a connection buffers on receive ([`transport_config`]). A client
/// receives a whole snapshot (up to `SNAPSHOT_PARTS_MAX` datagrams) every tick and must not lose
/// parts just because its task was briefly descheduled.
pub const DATAGRAM_RECEIVE_BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// Application datagram bytes a connection buffers for sending before quinn drops the oldest.
pub const DATAGRAM_SEND_BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// The shard's per-connection datagram receive buffer ([`server_config`]). It is per connection,
/// so 4 MiB × `CLIENTS_PER_SHARD_MAX` would let a flood pin 16 GiB; a client sends at most
/// `CLIENT_DATAGRAMS_PER_TICK_MAX` small inputs per tick and the driver drains them at once, so
/// 256 KiB is hundreds of ticks of legitimate input.
pub const SERVER_DATAGRAM_RECEIVE_BUFFER_BYTES: usize = 256 * 1024;
/// The shard's per-connection datagram send buffer ([`server_config`]). When a client's path is
/// slower than its snapshots, everything buffered is stale; 1 MiB (over ten ticks of the largest
/// possible snapshot) bounds both memory and how old a snapshot can be when it finally leaves.
pub const SERVER_DATAGRAM_SEND_BUFFER_BYTES: usize = 1024 * 1024;
/// Stream flow-control window (per stream, per connection and for sending). The only stream is the
/// control stream, which carries a handful of messages of at most `CONTROL_FRAME_BYTES_MAX`; a
/// small window bounds what a peer can make us buffer, and makes a peer that stops reading block
/// our writer, which is how the driver notices a client too slow to keep up.
pub const CONTROL_STREAM_WINDOW_BYTES: u32 = 128 * 1024;

/// The idle timeout as the `u32` of milliseconds quinn's `VarInt` takes, checked at compile time.
const IDLE_TIMEOUT_MS_U32: u32 = {
    assert!(limits::IDLE_TIMEOUT_MS <= u32::MAX as u64);
    limits::IDLE_TIMEOUT_MS as u32
};

/// Why a certificate, key or TLS configuration could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rcgen could not generate a self-signed certificate.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A self-signed certificate was requested for no name, so no client could ever verify it.
    #[error("a self-signed certificate needs at least one subject name")]
    NoNames,
    /// A PEM file could not be read (missing, unreadable).
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A PEM file was read but a section of it is not valid PEM.
    #[error("malformed PEM in {}: {source}", path.display())]
    BadPem {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The certificate file holds no `CERTIFICATE` section.
    #[error("no PEM certificate found in {}", path.display())]
    NoCertificate { path: PathBuf },
    /// The key file holds no private key section (PKCS#8, PKCS#1 or SEC1).
    #[error("no PEM private key found in {}", path.display())]
    NoPrivateKey { path: PathBuf },
    /// The key cannot be used, or does not belong to the first certificate of the chain.
    #[error(
        "private key in {} does not fit the certificate in {}: {source}",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    /// [`ClientTrust::Certs`] with an empty list: every handshake would fail, so refuse early.
    #[error("no trusted certificates given")]
    NoTrustedCertificates,
    /// rustls refused a certificate, key or protocol setting.
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    /// The certificate verifier could not be built from the trusted certificates.
    #[error("cannot build the certificate verifier: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
    /// The TLS configuration has no cipher suite QUIC can use for its initial packets.
    #[error("TLS configuration has no cipher suite usable by QUIC: {0}")]
    NoQuicCipherSuite(#[from] NoInitialCipherSuite),
}

/// The certificate chain and private key a shard presents to clients.
pub struct ServerIdentity {
    /// Leaf certificate first, then any intermediates.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The leaf certificate's private key.
    pub key: PrivateKeyDer<'static>,
}

impl fmt::Debug for ServerIdentity {
    /// Never print key material into logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("cert_chain_len", &self.cert_chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Clone for ServerIdentity {
    /// `PrivateKeyDer` is deliberately not `Clone` (keys should not be copied casually); an
    /// identity is cloned only to configure several endpoints with the same certificate.
    fn clone(&self) -> Self {
        Self {
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl ServerIdentity {
    /// A fresh self-signed certificate for `names` (DNS names or IP literals), for local runs and
    /// tests where clients are handed the certificate out of band ([`Self::cert_pem`]).
    pub fn self_signed(names: &[&str]) -> Result<Self, TlsError> {
        if names.is_empty() {
            return Err(TlsError::NoNames);
        }
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(names)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(signing_key.serialize_der()));
        Ok(Self {
            cert_chain: vec![cert.der().clone()],
            key,
        })
    }

    /// Load a certificate chain and its private key from PEM files. Fails with an error naming
    /// the file when one is missing, holds no certificate/key, or the key does not match the
    /// certificate, so a misconfigured shard stops at startup instead of at the first handshake.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let cert_chain = read_certs(cert)?;
        let key_pem = read_file(key)?;
        let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .map_err(|source| TlsError::BadPem {
                path: key.to_path_buf(),
                source,
            })?
            .ok_or_else(|| TlsError::NoPrivateKey {
                path: key.to_path_buf(),
            })?;
        // Checked here, with both paths at hand, rather than left to the first handshake.
        rustls::sign::CertifiedKey::from_der(cert_chain.clone(), key_der.clone_key(), &provider())
            .map_err(|source| TlsError::KeyMismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                source,
            })?;
        Ok(Self {
            cert_chain,
            key: key_der,
        })
    }

    /// The private key as PEM, so a launcher can write a generated identity to files that
    /// [`Self::from_pem_files`] reads back.
    pub fn key_pem(&self) -> String {
        let label = match &self.key {
            PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
            PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
            _ => "PRIVATE KEY",
        };
        pem_encode(label, self.key.secret_der())
    }

    /// The leaf certificate as PEM, so a launcher can write it where bots will trust it.
    /// Empty if the chain is empty (an identity that no server config would accept anyway).
    pub fn cert_pem(&self) -> String {
        self.cert_chain
            .first()
            .map(|c| pem_encode("CERTIFICATE", c))
            .unwrap_or_default()
    }
}

/// How a client decides whether to believe the server's certificate.
#[derive(Clone, Debug)]
pub enum ClientTrust {
    /// Trust exactly these certificates (typically the shard's self-signed one) as roots.
    Certs(Vec<CertificateDer<'static>>),
    /// Accept any certificate. Only for load tests against a server whose certificate the bots
    /// were not given; it gives no protection against an impostor. Shard links use it too,
    /// because there the acceptor proves itself with the cluster secret instead (`link`).
    InsecureSkipVerify,
}

impl ClientTrust {
    /// Trust every certificate in the PEM file at `path`.
    pub fn from_pem_file(path: &Path) -> Result<Self, TlsError> {
        Ok(Self::Certs(read_certs(path)?))
    }
}

/// QUIC transport settings shared by both sides: idle timeout and keep-alive from
/// [`limits`], datagram buffers sized for a client receiving a busy shard's snapshots, and one
/// bi-directional stream (the control stream) with a small flow-control window.
pub fn transport_config() -> quinn::TransportConfig {
    let window = VarInt::from_u32(CONTROL_STREAM_WINDOW_BYTES);
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(
        IDLE_TIMEOUT_MS_U32,
    ))))
    .keep_alive_interval(Some(Duration::from_millis(limits::KEEP_ALIVE_MS)))
    // quinn assumes 333 ms before it has measured a path, so a lost handshake packet is resent
    // only after about a second. A client following a handoff redirect opens a new connection
    // in the middle of play, where that second is a frozen player; game servers and their
    // clients sit on paths far shorter than that.
    .initial_rtt(Duration::from_millis(limits::INITIAL_RTT_MS))
    .datagram_receive_buffer_size(Some(DATAGRAM_RECEIVE_BUFFER_BYTES))
    .datagram_send_buffer_size(DATAGRAM_SEND_BUFFER_BYTES)
    // The protocol has exactly one stream, opened by the client; allowing more would only
    // give a peer more buffers to fill.
    .max_concurrent_bidi_streams(VarInt::from_u32(1))
    .max_concurrent_uni_streams(VarInt::from_u32(0))
    .stream_receive_window(window)
    .receive_window(window)
    .send_window(u64::from(CONTROL_STREAM_WINDOW_BYTES));
    t
}

/// The shard's QUIC server configuration for `id`, speaking the client protocol
/// ([`ALPN_CLIENT`]): [`transport_config`] with per-connection datagram buffers shrunk to what one
/// client needs (see [`SERVER_DATAGRAM_RECEIVE_BUFFER_BYTES`]).
pub fn server_config(id: &ServerIdentity) -> Result<quinn::ServerConfig, TlsError> {
    server_config_for(id, ALPN_CLIENT)
}

/// [`server_config`] for the protocol `alpn` names: a client offering anything else (or nothing)
/// fails the TLS handshake with `no_application_protocol`. Shard links use it with
/// [`ALPN_LINK`] and their own transport settings.
pub fn server_config_for(
    id: &ServerIdentity,
    alpn: &[u8],
) -> Result<quinn::ServerConfig, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(id.cert_chain.clone(), id.key.clone_key())?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    // No 0-RTT: early data can be replayed by anyone who recorded it, and the first thing a
    // client sends is its `Hello`, which may carry a redirect token. (QUIC allows only 0 or
    // `u32::MAX` here.)
    tls.max_early_data_size = 0;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    let mut transport = transport_config();
    transport
        .datagram_receive_buffer_size(Some(SERVER_DATAGRAM_RECEIVE_BUFFER_BYTES))
        .datagram_send_buffer_size(SERVER_DATAGRAM_SEND_BUFFER_BYTES);
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// A client configuration speaking the client protocol ([`ALPN_CLIENT`]; TLS 1.3 only,
/// [`transport_config`]) trusting what `trust` says.
pub fn client_config(trust: &ClientTrust) -> Result<quinn::ClientConfig, TlsError> {
    client_config_for(trust, ALPN_CLIENT)
}

/// [`client_config`] offering the protocol `alpn` names, and nothing else: a server that speaks
/// another one fails the handshake instead of taking the connection.
pub fn client_config_for(
    trust: &ClientTrust,
    alpn: &[u8],
) -> Result<quinn::ClientConfig, TlsError> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match trust {
        ClientTrust::Certs(certs) => {
            if certs.is_empty() {
                return Err(TlsError::NoTrustedCertificates);
            }
            let mut roots = RootCertStore::empty();
            for cert in certs {
                roots.add(cert.clone())?;
            }
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()?
        }
        ClientTrust::InsecureSkipVerify => Arc::new(SkipServerVerification(provider.clone())),
    };
    // `enable_early_data` stays off: the helpers here always wait for the full handshake.
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let mut cfg = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    cfg.transport_config(Arc::new(transport_config()));
    Ok(cfg)
}

/// The crypto provider every config here uses, named explicitly (see the module docs).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any server certificate but still checks the handshake signatures, so the connection
/// is at least encrypted to whoever holds the presented certificate's key.
#[derive(Debug)]
struct SkipServerVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for SkipServerVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Every `CERTIFICATE` section of the PEM file at `path`; at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::BadPem {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// PEM-encode `der` under `label` (RFC 7468: standard base64, 64-character lines). Written here
/// because none of our direct dependencies exports a PEM encoder for arbitrary DER.
fn pem_encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // The base64 alphabet is ASCII, so every 64-byte slice is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_encoding_matches_rcgen() {
        let rcgen::CertifiedKey { cert, .. } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("generate");
        let ours = pem_encode("CERTIFICATE", cert.der());
        assert_eq!(ours.replace("\r\n", "\n"), cert.pem().replace("\r\n", "\n"));
        // Padding cases: 0, 1 and 2 leftover bytes.
        assert!(pem_encode("X", b"abc").contains("\nYWJj\n"));
        assert!(pem_encode("X", b"abcd").contains("\nYWJjZA==\n"));
        assert!(pem_encode("X", b"abcde").contains("\nYWJjZGU=\n"));
    }

    #[test]
    fn configs_build() {
        let id = ServerIdentity::self_signed(&["localhost"]).expect("identity");
        assert!(!id.cert_pem().is_empty());
        server_config(&id).expect("server config");
        client_config(&ClientTrust::Certs(id.cert_chain.clone())).expect("client config");
        client_config(&ClientTrust::InsecureSkipVerify).expect("insecure client config");
        assert!(matches!(
            client_config(&ClientTrust::Certs(Vec::new())),
            Err(TlsError::NoTrustedCertificates)
        ));
        assert!(matches!(
            ServerIdentity::self_signed(&[]),
            Err(TlsError::NoNames)
        ));
    }
}
