//! Certificates: a CA that signs the brain's and each agent's certificate.
//! A certificate's subject alternative name is the node name (for the brain,
//! its name `brain` unless told otherwise); the brain accepts an agent only if
//! its certificate is valid for the node name the agent announces.

use crate::TransportError;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

fn err(e: impl std::fmt::Display) -> TransportError {
    TransportError::Cert(e.to_string())
}

/// A certificate authority held in memory.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Result<Ca, TransportError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = OffsetDateTime::now_utc() - Duration::days(1);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(3650);
        let key = KeyPair::generate().map_err(err)?;
        let cert = params.self_signed(&key).map_err(err)?;
        let key_pem = key.serialize_pem();
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A certificate for `name`, valid from `not_before` to `not_after`,
    /// usable as both TLS server and client.
    pub fn issue_valid(
        &self,
        name: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Issued, TransportError> {
        let mut params = CertificateParams::new(vec![name.to_string()]).map_err(err)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate().map_err(err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(err)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A certificate for `name`, valid for a year from yesterday.
    pub fn issue(&self, name: &str) -> Result<Issued, TransportError> {
        let now = OffsetDateTime::now_utc();
        self.issue_valid(name, now - Duration::days(1), now + Duration::days(365))
    }
}

/// Where a name's files live in a certificate directory.
pub fn paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    )
}

fn write(path: &Path, text: &str, private: bool) -> Result<(), TransportError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|source| TransportError::Io {
            what: path.display().to_string(),
            source,
        })?;
    f.write_all(text.as_bytes())
        .map_err(|source| TransportError::Io {
            what: path.display().to_string(),
            source,
        })
}

/// `vagus certs init`: writes `ca.pem` (and `ca.key`, private), then
/// `<name>.pem`/`<name>.key` for the brain and for each agent.
pub fn init(dir: &Path, brain: &str, agents: &[String]) -> Result<(), TransportError> {
    std::fs::create_dir_all(dir).map_err(|source| TransportError::Io {
        what: dir.display().to_string(),
        source,
    })?;
    let ca = Ca::new("Vagus CA")?;
    write(&dir.join("ca.pem"), ca.cert_pem(), false)?;
    write(&dir.join("ca.key"), ca.key_pem(), true)?;
    for name in std::iter::once(brain).chain(agents.iter().map(String::as_str)) {
        if name.is_empty() || name == "ca" || name.contains('/') {
            return Err(TransportError::Cert(format!(
                "invalid certificate name {name:?}"
            )));
        }
        let issued = ca.issue(name)?;
        let (cert, key) = paths(dir, name);
        write(&cert, &issued.cert_pem, false)?;
        write(&key, &issued.key_pem, true)?;
    }
    Ok(())
}
