//! The agent ↔ brain transport: QUIC (quinn) with mutual TLS (rustls).
//!
//! - [`certs`]: a CA, the brain's certificate and one per agent (`vagus certs init`).
//! - [`tls`]: the QUIC endpoints' TLS configurations. The brain requires a
//!   client certificate chaining to the CA; the agent checks the brain's.
//! - [`brain`]: accepts agents, checks that each certificate names the node
//!   its `Hello` announces, negotiates the protocol version, ingests
//!   telemetry and sends commands.
//! - [`ledger`]: the brain's commands and their results in SQLite, committed
//!   before a command is sent or a result acknowledged.
//! - [`agent`]: connects, says hello, sends telemetry, answers commands
//!   (each command id applied at most once).
//!
//! Streams: the agent opens one bidirectional stream for the handshake and
//! then commands (brain → agent) and their results (agent → brain); telemetry
//! goes on one unidirectional stream, in order. Frames are `vagus_proto::wire`'s.

pub mod agent;
pub mod brain;
pub mod certs;
pub mod frames;
pub mod ingest;
pub mod ledger;
pub mod tls;

/// ALPN protocol id of Vagus's QUIC connections.
pub const ALPN: &[u8] = b"vagus/1";

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
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
    #[error("command ledger: {0}")]
    Ledger(String),
    #[error("refused by the brain: {0}")]
    Refused(String),
}
