//! What both ends of the agent ↔ brain link share: certificates
//! ([`certs`], `vagus certs init`), the QUIC endpoints' TLS configurations
//! ([`tls`]: the brain requires a client certificate chaining to the CA;
//! the agent checks the brain's) and `vagus_proto::wire` frames over QUIC
//! streams ([`frames`]).
//!
//! Streams: the agent opens one bidirectional stream for the handshake and
//! then commands (brain → agent) and their results (agent → brain);
//! telemetry goes on one unidirectional stream, in order. The agent's end
//! is `vagus_agent::uplink`, the brain's `vagus_brain::agents`.

pub mod certs;
pub mod frames;
pub mod tls;

/// ALPN protocol id of Vagus's QUIC connections.
pub const ALPN: &[u8] = b"vagus/1";

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("certificate error: {0}")]
    Cert(String),
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("I/O error on {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("connection: {0}")]
    Connection(String),
    #[error("protocol: {0}")]
    Protocol(String),
    /// The brain's command ledger could not store or read.
    #[error("command ledger: {0}")]
    Ledger(String),
    #[error("refused by the brain: {0}")]
    Refused(String),
}
