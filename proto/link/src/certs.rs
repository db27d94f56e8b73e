//! Certificates: a CA that signs the brain's and each agent's certificate.
//! A certificate's subject alternative name is the node name (for the brain,
//! its name `brain` unless told otherwise); the brain accepts an agent only if
//! its certificate is valid for the node name the agent announces.

use crate::LinkError;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

fn err(e: impl std::fmt::Display) -> LinkError {
    LinkError::Cert(e.to_string())
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

/// The common name of the CA `vagus certs init` creates.
pub const CA_NAME: &str = "Vagus CA";

fn ca_params(name: &str) -> Result<CertificateParams, LinkError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

impl Ca {
    /// Loads a CA that [`Ca::new`] made with common name `name`, from its
    /// certificate and key. Certificates it issues carry the CA's name as
    /// their issuer and the key's identifier as their authority key, so
    /// they chain to the stored certificate; the key must be that
    /// certificate's.
    pub fn load(name: &str, cert_pem: &str, key_pem: &str) -> Result<Ca, LinkError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| err(format!("CA key: {e}")))?;
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .next()
            .ok_or_else(|| err("no certificate in the CA's PEM file"))?
            .map_err(|e| err(format!("CA certificate: {e:?}")))?;
        // The certificate's public key field holds the key's raw public key.
        let public = key.public_key_raw();
        if !der.windows(public.len()).any(|w| w == public) {
            return Err(err("the CA key does not belong to the CA certificate"));
        }
        if !der.windows(name.len()).any(|w| w == name.as_bytes()) {
            return Err(err(format!("the CA certificate is not named {name:?}")));
        }
        Ok(Ca {
            issuer: Issuer::new(ca_params(name)?, KeyPair::from_pem(key_pem).map_err(err)?),
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        })
    }

    pub fn new(name: &str) -> Result<Ca, LinkError> {
        let mut params = ca_params(name)?;
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
    ) -> Result<Issued, LinkError> {
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
    pub fn issue(&self, name: &str) -> Result<Issued, LinkError> {
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

/// The names with a certificate and a key in `dir` (the CA's aside), sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let f = e.file_name().into_string().ok()?;
            let name = f.strip_suffix(".pem")?.to_string();
            (name != "ca" && dir.join(format!("{name}.key")).exists()).then_some(name)
        })
        .collect();
    names.sort();
    names
}

fn write(path: &Path, text: &str, private: bool) -> Result<(), LinkError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|source| LinkError::Io {
            what: path.display().to_string(),
            source,
        })?;
    f.write_all(text.as_bytes())
        .map_err(|source| LinkError::Io {
            what: path.display().to_string(),
            source,
        })
}

/// What `init` did.
#[derive(Debug, Default, PartialEq)]
pub struct Written {
    /// Whether it created the CA (else it used the one in the directory).
    pub new_ca: bool,
    /// Certificates issued now.
    pub issued: Vec<String>,
    /// Names that had a certificate already: left as they were.
    pub kept: Vec<String>,
}

/// `vagus certs init`: writes `ca.pem` (and `ca.key`, private), then
/// `<name>.pem`/`<name>.key` for the brain and for each agent. Run on a
/// directory that has a CA already, it uses that CA and issues only the
/// certificates missing (adding agents to a running fleet).
pub fn init(dir: &Path, brain: &str, agents: &[String]) -> Result<Written, LinkError> {
    let names: Vec<&str> = std::iter::once(brain)
        .chain(agents.iter().map(String::as_str))
        .collect();
    for name in &names {
        if name.is_empty() || *name == "ca" || name.contains('/') || name.starts_with('.') {
            return Err(LinkError::Cert(format!(
                "invalid certificate name {name:?}"
            )));
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| LinkError::Io {
        what: dir.display().to_string(),
        source,
    })?;
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| LinkError::Io {
            what: p.display().to_string(),
            source,
        })
    };
    let (ca_cert, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let mut done = Written::default();
    let ca = if ca_cert.exists() || ca_key.exists() {
        Ca::load(CA_NAME, &read(&ca_cert)?, &read(&ca_key)?)
            .map_err(|e| LinkError::Cert(format!("{}: {e}", dir.display())))?
    } else {
        let ca = Ca::new(CA_NAME)?;
        write(&ca_cert, ca.cert_pem(), false)?;
        write(&ca_key, ca.key_pem(), true)?;
        done.new_ca = true;
        ca
    };
    for name in names {
        let (cert, key) = paths(dir, name);
        if cert.exists() && key.exists() {
            done.kept.push(name.to_string());
            continue;
        }
        let issued = ca.issue(name)?;
        write(&key, &issued.key_pem, true)?;
        write(&cert, &issued.cert_pem, false)?;
        done.issued.push(name.to_string());
    }
    Ok(done)
}
