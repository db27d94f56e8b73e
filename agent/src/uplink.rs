//! The agent's endpoint: connects to the brain, says hello, sends telemetry
//! and answers commands, applying each command at most once (across
//! reconnections and agent restarts: [`crate::journal`]).

use crate::journal::Journal;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use vagus_link::LinkError;
use vagus_link::frames::{FrameReader, send, send_encoded};
use vagus_link::tls::{Identity, client_config};
use vagus_proto::wire::{
    self, Ack, Command, CommandResult, Hello, Message, Outcome, TelemetryWindow,
};

/// What the brain sends an agent.
pub enum FromBrain {
    Command(Command),
    /// Windows received and results stored.
    Ack(Ack),
}

/// A connected agent.
pub struct Link {
    pub version: u16,
    /// The brain's ledger (its command ids are unique within it).
    pub ledger: u64,
    conn: quinn::Connection,
    telemetry: quinn::SendStream,
    /// The command stream (brain → agent) and its results (agent → brain).
    commands: FrameReader,
    results: quinn::SendStream,
    _endpoint: quinn::Endpoint,
}

/// A client endpoint (one UDP socket) for connecting to `brain`; many
/// links can share one.
pub fn client_endpoint(brain: SocketAddr) -> Result<quinn::Endpoint, LinkError> {
    let bind: SocketAddr = if brain.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .expect("literal");
    quinn::Endpoint::client(bind).map_err(|source| LinkError::Io {
        what: "client endpoint".into(),
        source,
    })
}

impl Link {
    /// Connects to the brain at `addr` (whose certificate must name
    /// `brain_name`) from a new endpoint and completes the hello.
    /// `present_certificate: false` connects without a client certificate
    /// (the brain refuses that).
    pub async fn connect(
        addr: SocketAddr,
        brain_name: &str,
        id: &Identity,
        hello: Hello,
        present_certificate: bool,
    ) -> Result<Link, LinkError> {
        let endpoint = client_endpoint(addr)?;
        let client = client_config(id, present_certificate)?;
        Link::connect_from(&endpoint, client, addr, brain_name, hello).await
    }

    /// Connects from `endpoint` with the TLS configuration `client`.
    pub async fn connect_from(
        endpoint: &quinn::Endpoint,
        client: quinn::ClientConfig,
        addr: SocketAddr,
        brain_name: &str,
        hello: Hello,
    ) -> Result<Link, LinkError> {
        let conn = endpoint
            .connect_with(client, addr, brain_name)
            .map_err(|e| LinkError::Connection(e.to_string()))?
            .await
            .map_err(|e| LinkError::Connection(e.to_string()))?;
        let (mut tx, rx) = conn
            .open_bi()
            .await
            .map_err(|e| LinkError::Connection(e.to_string()))?;
        send(&mut tx, &Message::Hello(hello), wire::PROTOCOL_VERSION).await?;
        let mut commands = FrameReader::new(rx, wire::DEFAULT_MAX_FRAME);
        let (version, ledger) = match commands.next().await? {
            Some(Message::Welcome(w)) => (w.version, w.ledger),
            Some(Message::Refusal(r)) => {
                conn.close(0u32.into(), b"refused");
                return Err(LinkError::Refused(r.reason));
            }
            Some(other) => {
                return Err(LinkError::Protocol(format!(
                    "expected Welcome, got kind {}",
                    other.kind()
                )));
            }
            None => {
                return Err(LinkError::Connection("the brain closed the stream".into()));
            }
        };
        let telemetry = conn
            .open_uni()
            .await
            .map_err(|e| LinkError::Connection(e.to_string()))?;
        Ok(Link {
            version,
            ledger,
            conn,
            telemetry,
            commands,
            results: tx,
            _endpoint: endpoint.clone(),
        })
    }

    pub async fn send_window(&mut self, w: TelemetryWindow) -> Result<(), LinkError> {
        send(&mut self.telemetry, &Message::Telemetry(w), self.version).await
    }

    /// Sends a window already encoded as a frame of this link's version.
    async fn send_window_frame(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        send_encoded(&mut self.telemetry, frame).await
    }

    /// The next command from the brain; `None` when it closed the stream.
    pub async fn next_command(&mut self) -> Result<Option<Command>, LinkError> {
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
    pub async fn next_from_brain(&mut self) -> Result<Option<FromBrain>, LinkError> {
        match self.commands.next().await? {
            Some(Message::Command(c)) => Ok(Some(FromBrain::Command(c))),
            Some(Message::Ack(a)) => Ok(Some(FromBrain::Ack(a))),
            Some(_) => Err(LinkError::Protocol(
                "expected a Command or an acknowledgement".into(),
            )),
            None => Ok(None),
        }
    }

    pub async fn send_result(&mut self, r: CommandResult) -> Result<(), LinkError> {
        send(&mut self.results, &Message::CommandResult(r), self.version).await
    }

    /// Waits for the next command, applies it with `apply` unless the
    /// journal has it, and answers with the outcome. `None` when the brain
    /// closed the stream.
    pub async fn serve_one(
        &mut self,
        journal: &mut Journal,
        apply: impl FnOnce(&Command) -> Outcome,
    ) -> Result<Option<Command>, LinkError> {
        let Some(c) = self.next_command().await? else {
            return Ok(None);
        };
        let (outcome, _) = journal.outcome(self.ledger, &c, apply);
        self.send_result(CommandResult { id: c.id, outcome })
            .await?;
        Ok(Some(c))
    }

    pub fn close(&self) {
        self.conn.close(0u32.into(), b"bye");
    }
}

/// The default bound of the agent's outage buffer.
pub const DEFAULT_BUFFER_BYTES: usize = 16 << 20;

/// How an agent keeps its connection.
pub struct UplinkConfig {
    pub brain: SocketAddr,
    /// The name the brain's certificate carries.
    pub brain_name: String,
    pub identity: Identity,
    pub hello: Hello,
    /// Bytes of encoded windows kept until the brain acknowledges them
    /// (all of them while it is unreachable); the oldest are dropped beyond.
    pub buffer_bytes: usize,
    pub backoff_min: std::time::Duration,
    pub backoff_max: std::time::Duration,
    /// The endpoint to connect from; `None`: one of the agent's own.
    pub endpoint: Option<quinn::Endpoint>,
    /// The commands applied (durable on the node: see [`crate::journal`]).
    pub journal: Journal,
}

/// What the agent's connection has done, for its metrics.
#[derive(Clone, Debug, Default)]
pub struct UplinkStats {
    pub connects: u64,
    pub windows_sent: u64,
    pub windows_dropped: u64,
    pub commands_applied: u64,
    /// Results the brain has confirmed storing.
    pub results_acknowledged: u64,
    /// Bytes held in the outage buffer now.
    pub buffered_bytes: usize,
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

/// Bytes a buffered frame costs beyond its own (the queue entry, the
/// allocation's header).
const FRAME_OVERHEAD: usize = 48;

/// A window waiting for the brain's acknowledgement.
struct Pending {
    seq: u64,
    /// Drops this frame reports (they are reported again if it is dropped).
    reports: u64,
    frame: Vec<u8>,
}

impl Pending {
    fn cost(&self) -> usize {
        self.frame.capacity() + FRAME_OVERHEAD
    }
}

/// Windows not yet acknowledged, encoded, oldest first, within a byte bound.
struct Outbox {
    frames: VecDeque<Pending>,
    bytes: usize,
    limit: usize,
    /// `frames[..sent]` went into the current connection.
    sent: usize,
    /// Windows dropped and not yet carried by a frame.
    unreported: u64,
    /// Windows dropped after they went into the current connection: lost
    /// only if it dies before acknowledging them, so reported only then.
    /// The count and the newest sequence number among them.
    in_flight_drops: (u64, u64),
}

impl Outbox {
    fn new(limit: usize) -> Outbox {
        Outbox {
            frames: VecDeque::new(),
            bytes: 0,
            limit,
            sent: 0,
            unreported: 0,
            in_flight_drops: (0, 0),
        }
    }

    /// Adds a window; returns how many windows were dropped to fit it.
    fn push(&mut self, w: TelemetryWindow) -> u64 {
        let mut frame = Vec::new();
        let mut dropped = 0;
        let seq = w.seq;
        let max = wire::DEFAULT_MAX_FRAME;
        if wire::encode(
            &Message::Telemetry(w),
            wire::PROTOCOL_VERSION,
            max,
            &mut frame,
        )
        .is_err()
        {
            // Larger than any frame may be: it cannot be sent at all.
            dropped += 1;
            self.unreported += 1;
        } else {
            frame.shrink_to_fit();
            let p = Pending {
                seq,
                reports: 0,
                frame,
            };
            self.bytes += p.cost();
            self.frames.push_back(p);
        }
        while self.bytes > self.limit
            && let Some(p) = self.frames.pop_front()
        {
            self.bytes -= p.cost();
            if self.sent > 0 {
                self.sent -= 1;
                self.in_flight_drops.0 += 1 + p.reports;
                self.in_flight_drops.1 = p.seq;
            } else {
                self.unreported += 1 + p.reports;
            }
            dropped += 1;
        }
        dropped
    }

    /// A new connection: everything unacknowledged goes again, and windows
    /// dropped in flight on the old one count as lost.
    fn reconnected(&mut self) {
        self.sent = 0;
        self.unreported += std::mem::take(&mut self.in_flight_drops).0;
    }

    /// Forgets the windows up to `through`, which the brain has.
    fn acknowledged(&mut self, through: u64) {
        if self.in_flight_drops.0 > 0 && self.in_flight_drops.1 <= through {
            self.in_flight_drops = (0, 0);
        }
        while self.sent > 0
            && let Some(p) = self.frames.front()
            && p.seq <= through
        {
            self.bytes -= p.cost();
            self.frames.pop_front();
            self.sent -= 1;
        }
    }

    /// The next frame to send, at protocol `version`, carrying the count of
    /// windows dropped and not yet reported; marks it sent.
    fn next(&mut self, version: u16) -> Option<Vec<u8>> {
        let p = self.frames.get_mut(self.sent)?;
        if self.unreported > 0 || version != wire::PROTOCOL_VERSION {
            // Decode, amend, encode again, and keep the amended frame: it
            // goes again if this connection dies before the acknowledgement.
            // (The outbox encoded it, so it decodes; should it not, or not
            // encode, it goes as it is.)
            let mut d = wire::FrameDecoder::new(wire::DEFAULT_MAX_FRAME);
            d.push(&p.frame);
            if let Ok(Some(Message::Telemetry(mut w))) = d.next_message() {
                w.dropped_windows += self.unreported;
                let mut out = Vec::new();
                let m = Message::Telemetry(w);
                if wire::encode(&m, version, wire::DEFAULT_MAX_FRAME, &mut out).is_ok() {
                    out.shrink_to_fit();
                    self.bytes = self.bytes + out.capacity() - p.frame.capacity();
                    p.reports += std::mem::take(&mut self.unreported);
                    p.frame = out;
                }
            }
        }
        self.sent += 1;
        Some(p.frame.clone())
    }
}

/// Runs the agent's side of the transport until `windows` closes: connects
/// (retrying with exponential backoff and jitter), sends every window that
/// `windows` yields — keeping each until the brain acknowledges it, within
/// `buffer_bytes`, dropping the oldest and reporting how many in the next
/// window sent — and answers commands, applying each id at most once across
/// reconnections and keeping each result until the brain confirms it
/// stored it (resending it after a reconnection until then).
pub async fn run(
    cfg: UplinkConfig,
    windows: tokio::sync::mpsc::Receiver<TelemetryWindow>,
    apply: impl FnMut(&Command) -> Outcome,
    stats: std::sync::Arc<std::sync::Mutex<UplinkStats>>,
) {
    run_reporting(cfg, windows, apply, stats, |_| {}).await
}

/// What happens to the connection, as [`run_reporting`] reports it.
#[derive(Clone, Debug, PartialEq)]
pub enum LinkEvent {
    /// Connected: the brain welcomed this agent.
    Connected { ledger: u64, version: u16 },
    /// An attempt to connect failed; the next one starts in `retry_in`.
    Unreachable {
        error: String,
        retry_in: std::time::Duration,
    },
    /// The connection, established, died; reconnecting at once.
    Lost { error: String },
}

/// [`run`], telling `report` of every connection, failed attempt and lost
/// connection (each attempt: deciding what to log is the caller's).
pub async fn run_reporting(
    cfg: UplinkConfig,
    mut windows: tokio::sync::mpsc::Receiver<TelemetryWindow>,
    mut apply: impl FnMut(&Command) -> Outcome,
    stats: std::sync::Arc<std::sync::Mutex<UplinkStats>>,
    mut report: impl FnMut(LinkEvent),
) {
    let stat = |f: &mut dyn FnMut(&mut UplinkStats)| {
        f(&mut stats.lock().unwrap_or_else(|e| e.into_inner()))
    };
    let mut outbox = Outbox::new(cfg.buffer_bytes);
    let mut unconfirmed: BTreeMap<u64, CommandResult> = BTreeMap::new();
    let mut journal = cfg.journal;
    let mut attempt = 0u32;
    let take = |outbox: &mut Outbox, w: TelemetryWindow| {
        let dropped = outbox.push(w);
        let bytes = outbox.bytes;
        stat(&mut |s| {
            s.windows_dropped += dropped;
            s.buffered_bytes = bytes;
        });
    };
    let endpoint = match cfg.endpoint.clone() {
        Some(e) => e,
        None => match client_endpoint(cfg.brain) {
            Ok(e) => e,
            Err(e) => {
                stat(&mut |s| s.last_error = Some(e.to_string()));
                return;
            }
        },
    };
    let client = match client_config(&cfg.identity, true) {
        Ok(c) => c,
        Err(e) => {
            stat(&mut |s| s.last_error = Some(e.to_string()));
            return;
        }
    };
    loop {
        // Connect, buffering what arrives meanwhile.
        let mut link = loop {
            let hello = cfg.hello.clone();
            let connect =
                Link::connect_from(&endpoint, client.clone(), cfg.brain, &cfg.brain_name, hello);
            tokio::pin!(connect);
            let connected = loop {
                tokio::select! {
                    r = &mut connect => break r,
                    w = windows.recv() => match w {
                        Some(w) => take(&mut outbox, w),
                        None => return,
                    },
                }
            };
            let error = match connected {
                Ok(l) => break l,
                Err(e) => e.to_string(),
            };
            stat(&mut |s| s.last_error = Some(error.clone()));
            let retry_in = backoff(attempt, cfg.backoff_min, cfg.backoff_max, jitter());
            report(LinkEvent::Unreachable { error, retry_in });
            let wait = tokio::time::sleep(retry_in);
            attempt = attempt.saturating_add(1);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    w = windows.recv() => match w {
                        Some(w) => take(&mut outbox, w),
                        None => return,
                    },
                    _ = &mut wait => break,
                }
            }
        };
        attempt = 0;
        stat(&mut |s| s.connects += 1);
        report(LinkEvent::Connected {
            ledger: link.ledger,
            version: link.version,
        });
        // Everything unacknowledged goes again: what was written into a
        // connection that then died may never have arrived.
        outbox.reconnected();
        // Why the connection died, once it has.
        let mut dead: Option<String> = None;
        for r in unconfirmed.values() {
            if let Err(e) = link.send_result(r.clone()).await {
                dead = Some(e.to_string());
                break;
            }
        }
        while dead.is_none() {
            while let Some(frame) = outbox.next(link.version) {
                if let Err(e) = link.send_window_frame(&frame).await {
                    dead = Some(e.to_string());
                    break;
                }
                stat(&mut |s| s.windows_sent += 1);
            }
            if dead.is_some() {
                break;
            }
            tokio::select! {
                w = windows.recv() => match w {
                    Some(w) => take(&mut outbox, w),
                    None => {
                        link.close();
                        return;
                    }
                },
                m = link.next_from_brain() => match m {
                    Ok(Some(FromBrain::Ack(a))) => {
                        if let Some(through) = a.windows_through {
                            outbox.acknowledged(through);
                        }
                        let mut confirmed = 0;
                        for id in a.results {
                            confirmed += u64::from(unconfirmed.remove(&id).is_some());
                        }
                        let bytes = outbox.bytes;
                        stat(&mut |s| {
                            s.results_acknowledged += confirmed;
                            s.buffered_bytes = bytes;
                        });
                    }
                    Ok(Some(FromBrain::Command(c))) => {
                        let (outcome, ran) = journal.outcome(link.ledger, &c, &mut apply);
                        if ran {
                            stat(&mut |s| s.commands_applied += 1);
                        }
                        let r = CommandResult { id: c.id, outcome };
                        unconfirmed.insert(c.id, r.clone());
                        if let Err(e) = link.send_result(r).await {
                            dead = Some(e.to_string());
                        }
                    }
                    Ok(None) => dead = Some("the brain closed the connection".into()),
                    Err(e) => dead = Some(e.to_string()),
                },
            }
        }
        link.close();
        report(LinkEvent::Lost {
            error: dead.unwrap_or_default(),
        });
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

#[cfg(test)]
mod outbox_tests {
    use super::*;

    fn w(seq: u64) -> TelemetryWindow {
        TelemetryWindow {
            node: "node-a".into(),
            seq,
            start_unix_ns: 1_700_000_000_000_000_000 + seq,
            duration_ns: 50_000_000,
            gpus: vec![],
            processes: vec![],
            dropped_windows: 0,
            mps: Vec::new(),
            serving: Vec::new(),
            replicas: Vec::new(),
        }
    }

    fn decode(frame: &[u8]) -> TelemetryWindow {
        let mut d = wire::FrameDecoder::new(wire::DEFAULT_MAX_FRAME);
        d.push(frame);
        match d.next_message() {
            Ok(Some(Message::Telemetry(w))) => w,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn drops_the_oldest_beyond_its_bytes_and_reports_them_once() {
        let mut o = Outbox::new(900);
        for seq in 0..30 {
            o.push(w(seq));
        }
        assert!(o.bytes <= 900, "{}", o.bytes);
        let kept = o.frames.len() as u64;
        assert_eq!(o.bytes, o.frames.iter().map(Pending::cost).sum::<usize>());
        assert!((8..=12).contains(&kept), "{kept} windows in 900 bytes");
        assert_eq!(o.unreported, 30 - kept);
        let first = decode(&o.next(wire::PROTOCOL_VERSION).unwrap());
        assert_eq!((first.seq, first.dropped_windows), (30 - kept, 30 - kept));
        let second = decode(&o.next(wire::PROTOCOL_VERSION).unwrap());
        assert_eq!(second.dropped_windows, 0, "reported once");
        o.acknowledged(first.seq);
        assert_eq!(o.frames.len() as u64, kept - 1);
        assert_eq!(o.sent, 1, "the second is sent, not acknowledged");
        // A reconnection sends what is unacknowledged again.
        o.reconnected();
        assert_eq!(
            decode(&o.next(wire::PROTOCOL_VERSION).unwrap()).seq,
            second.seq
        );
    }

    #[test]
    fn a_report_sent_into_a_dead_connection_goes_again() {
        let mut o = Outbox::new(900);
        for seq in 0..30 {
            o.push(w(seq));
        }
        let dropped = o.unreported;
        let first = decode(&o.next(wire::PROTOCOL_VERSION).unwrap());
        assert_eq!(first.dropped_windows, dropped);
        // The connection dies unacknowledged; the report goes again.
        o.reconnected();
        assert_eq!(
            decode(&o.next(wire::PROTOCOL_VERSION).unwrap()).dropped_windows,
            dropped
        );
        // Unless the frame itself is dropped: the next frame then carries
        // its report and the drop of the frame itself.
        o.reconnected();
        o.limit = o.bytes - 1;
        o.push(w(30));
        o.push(w(31));
        let next = decode(&o.next(wire::PROTOCOL_VERSION).unwrap());
        assert!(
            next.dropped_windows >= dropped + 2,
            "{} of {}",
            next.dropped_windows,
            dropped + 2
        );
        assert_eq!(o.bytes, o.frames.iter().map(Pending::cost).sum::<usize>());
    }

    #[test]
    fn windows_dropped_in_flight_are_reported_only_if_the_connection_dies() {
        let mut o = Outbox::new(900);
        let fit = {
            let mut n = 0;
            while o.push(w(n)) == 0 {
                n += 1;
            }
            n
        };
        let mut o = Outbox::new(900);
        for seq in 0..fit {
            o.push(w(seq));
            o.next(wire::PROTOCOL_VERSION);
        }
        assert_eq!(o.push(w(fit)), 1, "window 0 goes, in flight");
        assert_eq!(o.unreported, 0);
        o.acknowledged(3);
        assert_eq!(o.in_flight_drops, (0, 0), "it arrived after all");
        o.push(w(fit + 1));
        o.next(wire::PROTOCOL_VERSION);
        while o.push(w(fit + 2)) == 0 {}
        assert_eq!(o.unreported, 0);
        o.reconnected();
        assert!(o.unreported > 0, "the connection died: maybe lost");
    }
}
