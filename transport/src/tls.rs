//! TLS 1.3 configurations for the QUIC endpoints, from PEM text.

use crate::{ALPN, TransportError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

/// What one endpoint presents and trusts.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub ca: CertificateDer<'static>,
}

fn tls(e: impl std::fmt::Display) -> TransportError {
    TransportError::Tls(e.to_string())
}

impl Identity {
    pub fn from_pem(
        cert_pem: &str,
        key_pem: &str,
        ca_pem: &str,
    ) -> Result<Identity, TransportError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(tls)?;
        if chain.is_empty() {
            return Err(TransportError::Tls("no certificate in the PEM text".into()));
        }
        Ok(Identity {
            chain,
            key: PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(tls)?,
            ca: CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(tls)?,
        })
    }

    /// `<dir>/<name>.pem`, `<dir>/<name>.key` and `<dir>/ca.pem`.
    pub fn load(dir: &std::path::Path, name: &str) -> Result<Identity, TransportError> {
        let (cert, key) = crate::certs::paths(dir, name);
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p).map_err(|source| TransportError::Io {
                what: p.display().to_string(),
                source,
            })
        };
        Identity::from_pem(&read(&cert)?, &read(&key)?, &read(&dir.join("ca.pem"))?)
    }

    fn roots(&self) -> Result<Arc<rustls::RootCertStore>, TransportError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).map_err(tls)?;
        Ok(Arc::new(roots))
    }
}

/// QUIC settings both sides use: keep-alives every 300 ms and a 1 s idle
/// timeout, so a peer that vanished (killed, unplugged) is noticed within a
/// second and the agent starts reconnecting.
fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(std::time::Duration::from_millis(300)));
    t.max_idle_timeout(Some(quinn::VarInt::from_u32(1_000).into()));
    Arc::new(t)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The brain's side: requires a client certificate chaining to the CA.
pub fn server_config(id: &Identity) -> Result<quinn::ServerConfig, TransportError> {
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
    server.transport_config(transport());
    Ok(server)
}

/// The agent's side: trusts the CA and presents its certificate (or none,
/// which the brain refuses; that case exists for tests).
pub fn client_config(
    id: &Identity,
    present_certificate: bool,
) -> Result<quinn::ClientConfig, TransportError> {
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
    client.transport_config(transport());
    Ok(client)
}
