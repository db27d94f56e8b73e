//! The agent's endpoint: connects to the brain, says hello, sends telemetry
//! and answers commands, applying each command id at most once.

use crate::TransportError;
use crate::frames::{FrameReader, send};
use crate::tls::{Identity, client_config};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use vagus_proto::wire::{self, Command, CommandResult, Hello, Message, Outcome, TelemetryWindow};

/// What the brain sends an agent.
pub enum FromBrain {
    Command(Command),
    /// Every window up to this sequence number has arrived.
    Ack(u64),
}

/// A connected agent.
pub struct Link {
    pub version: u16,
    conn: quinn::Connection,
    telemetry: quinn::SendStream,
    /// The command stream (brain → agent) and its results (agent → brain).
    commands: FrameReader,
    results: quinn::SendStream,
    _endpoint: quinn::Endpoint,
}

/// Command ids already applied, with their outcome (the last 4096). Kept by
/// the agent across reconnections, so a command the brain resends after a
/// reconnect is not applied twice.
#[derive(Default)]
pub struct Applied {
    outcomes: HashMap<u64, Outcome>,
    order: VecDeque<u64>,
}

impl Applied {
    const KEEP: usize = 4096;

    /// The outcome to report for `c`: `apply`'s the first time, `Duplicate` after.
    pub fn outcome(&mut self, c: &Command, apply: impl FnOnce(&Command) -> Outcome) -> Outcome {
        if self.seen(c.id) {
            return Outcome::Duplicate;
        }
        let o = apply(c);
        self.remember(c.id, o.clone());
        o
    }

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
            _endpoint: endpoint,
        })
    }

    pub async fn send_window(&mut self, w: TelemetryWindow) -> Result<(), TransportError> {
        send(&mut self.telemetry, &Message::Telemetry(w), self.version).await
    }

    /// The next command from the brain; `None` when it closed the stream.
    pub async fn next_command(&mut self) -> Result<Option<Command>, TransportError> {
        loop {
            match self.next_from_brain().await? {
                Some(FromBrain::Command(c)) => return Ok(Some(c)),
                Some(FromBrain::Ack(_)) => continue,
                None => return Ok(None),
            }
        }
    }

    /// The next command or window acknowledgement; `None` when the brain
    /// closed the stream.
    pub async fn next_from_brain(&mut self) -> Result<Option<FromBrain>, TransportError> {
        match self.commands.next().await? {
            Some(Message::Command(c)) => Ok(Some(FromBrain::Command(c))),
            Some(Message::Heartbeat(h)) => Ok(Some(FromBrain::Ack(h.seq))),
            Some(_) => Err(TransportError::Protocol(
                "expected a Command or an acknowledgement".into(),
            )),
            None => Ok(None),
        }
    }

    pub async fn send_result(&mut self, r: CommandResult) -> Result<(), TransportError> {
        send(&mut self.results, &Message::CommandResult(r), self.version).await
    }

    /// Waits for the next command, applies it with `apply` unless `applied`
    /// has seen its id, and answers with the outcome. `None` when the brain
    /// closed the stream.
    pub async fn serve_one(
        &mut self,
        applied: &mut Applied,
        apply: impl FnOnce(&Command) -> Outcome,
    ) -> Result<Option<Command>, TransportError> {
        let Some(c) = self.next_command().await? else {
            return Ok(None);
        };
        let outcome = applied.outcome(&c, apply);
        self.send_result(CommandResult { id: c.id, outcome })
            .await?;
        Ok(Some(c))
    }

    pub fn close(&self) {
        self.conn.close(0u32.into(), b"bye");
    }
}

/// How an agent keeps its connection.
pub struct AgentConfig {
    pub brain: SocketAddr,
    /// The name the brain's certificate carries.
    pub brain_name: String,
    pub identity: Identity,
    pub hello: Hello,
    /// Windows kept while disconnected; the oldest are dropped beyond this.
    pub buffer_windows: usize,
    pub backoff_min: std::time::Duration,
    pub backoff_max: std::time::Duration,
}

/// What the agent's connection has done, for its metrics.
#[derive(Clone, Debug, Default)]
pub struct AgentStats {
    pub connects: u64,
    pub windows_sent: u64,
    pub windows_dropped: u64,
    pub commands_applied: u64,
    pub last_error: Option<String>,
}

/// The delay before reconnection attempt `n` (from 0): doubling from
/// `min` up to `max`, then scaled by a jitter factor in [0.5, 1.5).
pub fn backoff(
    n: u32,
    min: std::time::Duration,
    max: std::time::Duration,
    jitter: f64,
) -> std::time::Duration {
    let base = min.saturating_mul(1u32 << n.min(16)).min(max);
    base.mul_f64(0.5 + jitter.clamp(0.0, 1.0))
}

/// A cheap jitter source: the low bits of the clock.
fn jitter() -> f64 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (n % 1000) as f64 / 1000.0
}

/// Runs the agent's side of the transport until `windows` closes: connects
/// (retrying with exponential backoff and jitter), sends every window that
/// `windows` yields — buffering up to `buffer_windows` while disconnected,
/// dropping the oldest and reporting how many in the next window sent — and
/// answers commands, applying each id at most once across reconnections.
pub async fn run(
    cfg: AgentConfig,
    mut windows: tokio::sync::mpsc::Receiver<TelemetryWindow>,
    mut apply: impl FnMut(&Command) -> Outcome,
    stats: std::sync::Arc<std::sync::Mutex<AgentStats>>,
) {
    let stat = |f: &mut dyn FnMut(&mut AgentStats)| {
        f(&mut stats.lock().unwrap_or_else(|e| e.into_inner()))
    };
    let mut buffer: VecDeque<TelemetryWindow> = VecDeque::new();
    let mut unreported = 0u64;
    let mut applied = Applied::default();
    let mut attempt = 0u32;
    let push =
        |buffer: &mut VecDeque<TelemetryWindow>, unreported: &mut u64, w: TelemetryWindow| {
            buffer.push_back(w);
            while buffer.len() > cfg.buffer_windows.max(1) {
                buffer.pop_front();
                *unreported += 1;
                stat(&mut |s| s.windows_dropped += 1);
            }
        };
    loop {
        // Connect, buffering what arrives meanwhile.
        let mut link = loop {
            match Link::connect(
                cfg.brain,
                &cfg.brain_name,
                &cfg.identity,
                cfg.hello.clone(),
                true,
            )
            .await
            {
                Ok(l) => break l,
                Err(e) => stat(&mut |s| s.last_error = Some(e.to_string())),
            }
            let wait =
                tokio::time::sleep(backoff(attempt, cfg.backoff_min, cfg.backoff_max, jitter()));
            attempt = attempt.saturating_add(1);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    w = windows.recv() => match w {
                        Some(w) => push(&mut buffer, &mut unreported, w),
                        None => return,
                    },
                    _ = &mut wait => break,
                }
            }
        };
        attempt = 0;
        stat(&mut |s| s.connects += 1);
        // Windows stay in `buffer` until the brain acknowledges them: those
        // written into a connection that then died are sent again.
        let mut sent = 0usize;
        'connected: loop {
            while sent < buffer.len() {
                if unreported > 0 {
                    // The first window not yet sent carries the drop count.
                    buffer[sent].dropped_windows += unreported;
                    unreported = 0;
                }
                if link.send_window(buffer[sent].clone()).await.is_err() {
                    break 'connected;
                }
                sent += 1;
                stat(&mut |s| s.windows_sent += 1);
            }
            tokio::select! {
                w = windows.recv() => match w {
                    Some(w) => {
                        let before = buffer.len();
                        push(&mut buffer, &mut unreported, w);
                        // Dropping the oldest shifts what was sent.
                        sent = sent.saturating_sub(before + 1 - buffer.len());
                    }
                    None => {
                        link.close();
                        return;
                    }
                },
                m = link.next_from_brain() => match m {
                    Ok(Some(FromBrain::Ack(seq))) => {
                        while buffer.front().is_some_and(|w| w.seq <= seq) && sent > 0 {
                            buffer.pop_front();
                            sent -= 1;
                        }
                    }
                    Ok(Some(FromBrain::Command(c))) => {
                        let before = applied.seen(c.id);
                        let outcome = applied.outcome(&c, &mut apply);
                        if !before {
                            stat(&mut |s| s.commands_applied += 1);
                        }
                        if link.send_result(CommandResult { id: c.id, outcome }).await.is_err() {
                            break 'connected;
                        }
                    }
                    _ => break 'connected,
                },
            }
        }
        link.close();
    }
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        assert_eq!(backoff(0, min, max, 0.5), min);
        assert_eq!(backoff(3, min, max, 0.5), Duration::from_millis(800));
        assert_eq!(backoff(10, min, max, 0.5), max);
        assert_eq!(backoff(40, min, max, 0.5), max, "no overflow");
        assert_eq!(backoff(1, min, max, 0.0), Duration::from_millis(100));
        assert_eq!(backoff(1, min, max, 1.0), Duration::from_millis(300));
    }
}
