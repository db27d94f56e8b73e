//! TLS 1.3 configurations for the QUIC endpoints, from PEM text.

use crate::{ALPN, LinkError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

/// What one endpoint presents and trusts.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub ca: CertificateDer<'static>,
}

fn tls(e: impl std::fmt::Display) -> LinkError {
    LinkError::Tls(e.to_string())
}

impl Identity {
    pub fn from_pem(cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<Identity, LinkError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(tls)?;
        if chain.is_empty() {
            return Err(LinkError::Tls("no certificate in the PEM text".into()));
        }
        Ok(Identity {
            chain,
            key: PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(tls)?,
            ca: CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(tls)?,
        })
    }

    /// `<dir>/<name>.pem`, `<dir>/<name>.key` and `<dir>/ca.pem`.
    pub fn load(dir: &std::path::Path, name: &str) -> Result<Identity, LinkError> {
        let (cert, key) = crate::certs::paths(dir, name);
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p).map_err(|source| LinkError::Io {
                what: p.display().to_string(),
                source,
            })
        };
        Identity::from_pem(&read(&cert)?, &read(&key)?, &read(&dir.join("ca.pem"))?)
    }

    fn roots(&self) -> Result<Arc<rustls::RootCertStore>, LinkError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).map_err(tls)?;
        Ok(Arc::new(roots))
    }
}

/// How long a silent connection lives. A brain that restarts on the same
/// address ends its agents' old connections at once instead (see
/// [`brain_endpoint_config`]); this bounds how long a vanished peer goes
/// unnoticed, and is long enough that a brain busy accepting thousands of
/// agents does not time their handshakes out.
pub const IDLE_TIMEOUT_MS: u32 = 5_000;

/// The brain's endpoint settings. Its stateless-reset key is derived from
/// its private key, so a brain restarted with the same identity answers an
/// agent's packets on a connection it no longer knows with a reset the agent
/// recognises: the agent drops the connection at once and reconnects,
/// rather than waiting out the idle timeout.
pub fn brain_endpoint_config(id: &Identity) -> quinn::EndpointConfig {
    let mut seed = b"vagus stateless reset key\0".to_vec();
    seed.extend_from_slice(id.key.secret_der());
    let digest = ring::digest::digest(&ring::digest::SHA256, &seed);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, digest.as_ref());
    let mut cfg = quinn::EndpointConfig::new(Arc::new(key));
    // Thousands of agents may need their reset at once after a restart.
    cfg.min_reset_interval(std::time::Duration::from_micros(50));
    // quinn's default generator signs its connection ids with a key of the
    // process and ignores packets for ids it did not sign: a restarted
    // brain would never answer the old connections. Random ids instead.
    cfg.cid_generator(|| Box::new(RandomCids));
    cfg
}

/// Random 8-byte connection ids.
struct RandomCids;

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        use ring::rand::SecureRandom;
        let mut id = [0u8; 8];
        // The system's random source does not fail on Linux; were it to,
        // the id would be the time, still unique enough for routing.
        if ring::rand::SystemRandom::new().fill(&mut id).is_err() {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            id = t.to_le_bytes();
        }
        quinn::ConnectionId::new(&id)
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

/// QUIC settings both sides use: keep-alives every second and the idle
/// timeout above. `peer_streams`: how many
/// streams of each direction the peer may open (the agent opens one of
/// each, the brain none); quinn keeps state for each stream it allows, so
/// allowing only what is used keeps the brain's memory per agent small.
fn transport(peer_streams: u32) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(std::time::Duration::from_secs(1)));
    t.max_idle_timeout(Some(quinn::VarInt::from_u32(IDLE_TIMEOUT_MS).into()));
    t.max_concurrent_bidi_streams(peer_streams.into());
    t.max_concurrent_uni_streams(peer_streams.into());
    Arc::new(t)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The brain's side: requires a client certificate chaining to the CA.
pub fn server_config(id: &Identity) -> Result<quinn::ServerConfig, LinkError> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(id.roots()?, provider())
            .build()
            .map_err(tls)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .map_err(tls)?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(cfg).map_err(tls)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(transport(1));
    Ok(server)
}

/// The agent's side: trusts the CA and presents its certificate (or none,
/// which the brain refuses; that case exists for tests).
pub fn client_config(
    id: &Identity,
    present_certificate: bool,
) -> Result<quinn::ClientConfig, LinkError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_root_certificates(id.roots()?);
    let mut cfg = if present_certificate {
        builder
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .map_err(tls)?
    } else {
        builder.with_no_client_auth()
    };
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(cfg).map_err(tls)?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(transport(0));
    Ok(client)
}
