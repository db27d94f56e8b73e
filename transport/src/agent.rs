//! The agent's endpoint: connects to the brain, says hello, sends telemetry
//! and answers commands, applying each command id at most once.

use crate::TransportError;
use crate::frames::{FrameReader, send};
use crate::tls::{Identity, client_config};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use vagus_proto::wire::{self, Command, CommandResult, Hello, Message, Outcome, TelemetryWindow};

/// A connected agent.
pub struct Link {
    pub version: u16,
    conn: quinn::Connection,
    telemetry: quinn::SendStream,
    /// The command stream (brain → agent) and its results (agent → brain).
    commands: FrameReader,
    results: quinn::SendStream,
    applied: Applied,
    _endpoint: quinn::Endpoint,
}

/// Command ids already applied, with their outcome (the last 4096).
#[derive(Default)]
struct Applied {
    outcomes: HashMap<u64, Outcome>,
    order: VecDeque<u64>,
}

impl Applied {
    const KEEP: usize = 4096;

    fn seen(&self, id: u64) -> bool {
        self.outcomes.contains_key(&id)
    }

    fn remember(&mut self, id: u64, o: Outcome) {
        if self.outcomes.insert(id, o).is_none() {
            self.order.push_back(id);
            if self.order.len() > Self::KEEP
                && let Some(old) = self.order.pop_front()
            {
                self.outcomes.remove(&old);
            }
        }
    }
}

impl Link {
    /// Connects to the brain at `addr` (whose certificate must name
    /// `brain_name`) and completes the hello. `present_certificate: false`
    /// connects without a client certificate (the brain refuses that).
    pub async fn connect(
        addr: SocketAddr,
        brain_name: &str,
        id: &Identity,
        hello: Hello,
        present_certificate: bool,
    ) -> Result<Link, TransportError> {
        let bind: SocketAddr = if addr.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()
        .expect("literal");
        let mut endpoint = quinn::Endpoint::client(bind).map_err(|source| TransportError::Io {
            what: "client endpoint".into(),
            source,
        })?;
        endpoint.set_default_client_config(client_config(id, present_certificate)?);
        let conn = endpoint
            .connect(addr, brain_name)
            .map_err(|e| TransportError::Connection(e.to_string()))?
            .await
            .map_err(|e| TransportError::Connection(e.to_string()))?;
        let (mut tx, rx) = conn
            .open_bi()
            .await
            .map_err(|e| TransportError::Connection(e.to_string()))?;
        send(&mut tx, &Message::Hello(hello), wire::PROTOCOL_VERSION).await?;
        let mut commands = FrameReader::new(rx, wire::DEFAULT_MAX_FRAME);
        let version = match commands.next().await? {
            Some(Message::Welcome(w)) => w.version,
            Some(Message::Refusal(r)) => {
                conn.close(0u32.into(), b"refused");
                return Err(TransportError::Refused(r.reason));
            }
            Some(other) => {
                return Err(TransportError::Protocol(format!(
                    "expected Welcome, got kind {}",
                    other.kind()
                )));
            }
            None => {
                return Err(TransportError::Connection(
                    "the brain closed the stream".into(),
                ));
            }
        };
        let telemetry = conn
            .open_uni()
            .await
            .map_err(|e| TransportError::Connection(e.to_string()))?;
        Ok(Link {
            version,
            conn,
            telemetry,
            commands,
            results: tx,
            applied: Applied::default(),
            _endpoint: endpoint,
        })
    }

    pub async fn send_window(&mut self, w: TelemetryWindow) -> Result<(), TransportError> {
        send(&mut self.telemetry, &Message::Telemetry(w), self.version).await
    }

    /// Waits for the next command, applies it with `apply` unless its id was
    /// applied before, and answers with the outcome. `None` when the brain
    /// closed the stream.
    pub async fn serve_one(
        &mut self,
        apply: impl FnOnce(&Command) -> Outcome,
    ) -> Result<Option<Command>, TransportError> {
        let c = match self.commands.next().await? {
            Some(Message::Command(c)) => c,
            Some(_) => return Err(TransportError::Protocol("expected a Command".into())),
            None => return Ok(None),
        };
        let outcome = if self.applied.seen(c.id) {
            Outcome::Duplicate
        } else {
            let o = apply(&c);
            self.applied.remember(c.id, o.clone());
            o
        };
        send(
            &mut self.results,
            &Message::CommandResult(CommandResult { id: c.id, outcome }),
            self.version,
        )
        .await?;
        Ok(Some(c))
    }

    pub fn close(&self) {
        self.conn.close(0u32.into(), b"bye");
    }
}
