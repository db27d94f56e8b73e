//! The brain's end of the agent link: accepts agents over QUIC with mutual
//! TLS, checks that each certificate names the node its `Hello` announces,
//! negotiates the protocol version, ingests telemetry ([`ingest`]) and sends
//! commands, each stored in the [`ledger`] before it is sent and each result
//! before it is acknowledged.

pub mod ingest;
pub mod ledger;

use self::ingest::{Accepted, Ingest, Snapshot};
use self::ledger::{Ledger, Recorded, unix_ns};
use rustls::pki_types::{CertificateDer, ServerName};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use vagus_link::LinkError;
use vagus_link::frames::{FrameReader, send};
use vagus_link::tls::{Identity, brain_endpoint_config, server_config};
use vagus_proto::wire::{
    self, Ack, Command, CommandKind, CommandResult, Message, Outcome, Refusal, Welcome,
};

/// Results kept in memory for a quick look (all are in the ledger).
const RECENT_RESULTS: usize = 1024;
/// How often a connection acknowledges the windows it received (results
/// are acknowledged at once). An agent keeps about this long of windows
/// beyond what has arrived; a shorter period costs every connection more
/// packets and wake-ups.
const ACK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The brain's view of its agents: cluster state and ingest metrics
/// ([`Ingest`]), commands waiting for an answer, who is connected.
pub struct AgentsState {
    pub ingest: Ingest,
    /// The latest results, newest last (the ledger has them all).
    pub recent_results: VecDeque<(String, CommandResult)>,
    /// Commands not yet answered, by node: sent again when the node reconnects.
    pending: HashMap<String, BTreeMap<u64, Command>>,
    /// Where events go, if someone listens (see [`Agents::events`]), and
    /// whether windows are among them.
    events: Option<(mpsc::UnboundedSender<Event>, bool)>,
    /// Nodes connected now: the connection's number and the channel that
    /// carries its commands.
    connected: HashMap<String, (u64, mpsc::UnboundedSender<Command>)>,
    connections: u64,
    /// Woken by every new window (the control loop waits on it).
    pub fresh: Arc<tokio::sync::Notify>,
}

/// Something that happened at the brain's endpoint.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Connected {
        node: String,
        version: u16,
    },
    Window {
        node: String,
        seq: u64,
        dropped: u64,
    },
    /// A result stored in the ledger (once per command).
    Result {
        node: String,
        result: CommandResult,
    },
    Rejected {
        reason: String,
    },
    Disconnected {
        node: String,
    },
}

impl AgentsState {
    fn emit(&self, e: Event) {
        if let Some((tx, windows)) = &self.events
            && (*windows || !matches!(e, Event::Window { .. }))
        {
            let _ = tx.send(e);
        }
    }

    pub fn is_connected(&self, node: &str) -> bool {
        self.connected
            .get(node)
            .is_some_and(|(_, c)| !c.is_closed())
    }

    /// Commands issued and not answered yet, all nodes.
    pub fn pending_total(&self) -> usize {
        self.pending.values().map(BTreeMap::len).sum()
    }

    /// Commands issued to `node` and not answered yet.
    pub fn pending(&self, node: &str) -> Vec<u64> {
        self.pending
            .get(node)
            .map(|p| p.keys().copied().collect())
            .unwrap_or_default()
    }
}

pub struct Agents {
    endpoint: quinn::Endpoint,
    pub state: Arc<Mutex<AgentsState>>,
    ledger: Ledger,
    ledger_id: u64,
    name: String,
}

fn lock(s: &Mutex<AgentsState>) -> std::sync::MutexGuard<'_, AgentsState> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

fn reject(state: &Mutex<AgentsState>, reason: &str) {
    let mut st = lock(state);
    st.ingest.rejected(reason);
    st.emit(Event::Rejected {
        reason: reason.to_string(),
    });
}

/// How a brain keeps its state.
#[derive(Clone, Debug)]
pub struct AgentsOptions {
    /// The command ledger's SQLite file; `None` keeps it in memory (lost
    /// on exit).
    pub ledger: Option<std::path::PathBuf>,
    /// The ledger in PostgreSQL instead (`ledger` must then be `None`).
    pub postgres: Option<crate::database::Postgres>,
    /// Windows of histograms kept per process.
    pub rolling_windows: usize,
}

impl Default for AgentsOptions {
    fn default() -> Self {
        AgentsOptions {
            ledger: None,
            postgres: None,
            rolling_windows: 10,
        }
    }
}

impl Agents {
    /// Listens on `addr` with the brain's identity. Must run in a Tokio runtime.
    pub fn bind(
        addr: SocketAddr,
        id: &Identity,
        opts: &AgentsOptions,
    ) -> Result<Agents, LinkError> {
        let (ledger, recovered) = match (&opts.postgres, &opts.ledger) {
            (Some(pg), _) => Ledger::open_postgres(pg)?,
            (None, Some(path)) => Ledger::open(path)?,
            (None, None) => Ledger::in_memory()?,
        };
        let io = |source| LinkError::Io {
            what: format!("bind {addr}"),
            source,
        };
        let socket = std::net::UdpSocket::bind(addr).map_err(io)?;
        let endpoint = quinn::Endpoint::new(
            brain_endpoint_config(id),
            Some(server_config(id)?),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(io)?;
        let mut ingest = Ingest::new(opts.rolling_windows);
        ingest.totals.results = recovered.results;
        Ok(Agents {
            endpoint,
            state: Arc::new(Mutex::new(AgentsState {
                ingest,
                recent_results: VecDeque::new(),
                pending: recovered.pending.into_iter().collect(),
                events: None,
                connected: HashMap::new(),
                connections: 0,
                fresh: Arc::new(tokio::sync::Notify::new()),
            })),
            ledger,
            ledger_id: recovered.ledger_id,
            name: env!("CARGO_PKG_VERSION").into(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr().expect("bound endpoint")
    }

    /// Issues a command to a node: stores it in the ledger, then sends it
    /// now if the node is connected, else when it (re)connects; it is sent
    /// again after every reconnection, and after a brain restart, until the
    /// node answers. Returns the command's id.
    pub async fn issue(&self, node: &str, kind: CommandKind) -> Result<u64, LinkError> {
        let c = self.ledger.issue(node, kind).await?;
        let id = c.id;
        let mut st = lock(&self.state);
        st.pending
            .entry(node.to_string())
            .or_default()
            .insert(id, c.clone());
        if let Some((_, tx)) = st.connected.get(node) {
            let _ = tx.send(c);
        }
        Ok(id)
    }

    /// Sends a pending command again now (as a network duplicate would).
    /// Returns whether it went out.
    pub fn resend(&self, node: &str, id: u64) -> bool {
        let st = lock(&self.state);
        let Some(c) = st.pending.get(node).and_then(|p| p.get(&id)) else {
            return false;
        };
        st.connected
            .get(node)
            .is_some_and(|(_, tx)| tx.send(c.clone()).is_ok())
    }

    /// The stored result of command `id` and the node that reported it.
    pub async fn result(&self, id: u64) -> Result<Option<(String, Outcome)>, LinkError> {
        self.ledger.result(id).await
    }

    /// The ingest metrics since the previous call.
    pub fn metrics(&self) -> Snapshot {
        lock(&self.state).ingest.snapshot()
    }

    /// A stream of what happens from now on (one listener at a time);
    /// `windows`: whether each window is an event too.
    pub fn events(&self, windows: bool) -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.state).events = Some((tx, windows));
        rx
    }

    /// Closes the endpoint: every connection ends at once.
    pub fn shutdown(&self) {
        self.endpoint.close(0u32.into(), b"brain shutting down");
    }

    /// Waits until the closed connections have been told (the socket is
    /// released once the `Agents` is dropped too).
    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }

    /// Accepts connections until the endpoint closes.
    pub async fn run(&self) {
        while let Some(incoming) = self.endpoint.accept().await {
            let state = self.state.clone();
            let name = self.name.clone();
            let ledger = self.ledger.clone();
            let ledger_id = self.ledger_id;
            tokio::spawn(async move {
                match incoming.await {
                    Ok(conn) => {
                        if let Err((reason, e)) =
                            serve(conn, state.clone(), ledger, ledger_id, name).await
                        {
                            reject(&state, reason);
                            let _ = e;
                        }
                    }
                    Err(e) => reject(&state, &format!("handshake: {}", short(&e.to_string()))),
                }
            });
        }
    }
}

fn short(s: &str) -> String {
    s.split(':').next().unwrap_or(s).trim().to_string()
}

/// Tells the agent why, lets it read that (it closes, or a second passes),
/// then closes the connection.
async fn refuse_and_close(
    conn: &quinn::Connection,
    tx: &mut quinn::SendStream,
    r: Refusal,
    code: u32,
    reason: &[u8],
) {
    let _ = send(tx, &Message::Refusal(r), wire::PROTOCOL_VERSION).await;
    let _ = tx.finish();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), conn.closed()).await;
    conn.close(code.into(), reason);
}

/// One agent's connection. An error names why it was refused.
async fn serve(
    conn: quinn::Connection,
    state: Arc<Mutex<AgentsState>>,
    ledger: Ledger,
    ledger_id: u64,
    brain_version: String,
) -> Result<(), (&'static str, LinkError)> {
    let chain = conn
        .peer_identity()
        .and_then(|i| i.downcast::<Vec<CertificateDer<'static>>>().ok())
        .filter(|c| !c.is_empty())
        .ok_or((
            "no client certificate",
            LinkError::Protocol("no client certificate".into()),
        ))?;
    let (mut tx, rx) = conn
        .accept_bi()
        .await
        .map_err(|e| ("closed before hello", LinkError::Connection(e.to_string())))?;
    let mut reader = FrameReader::new(rx, wire::DEFAULT_MAX_FRAME);
    let hello = match reader.next().await {
        Ok(Some(Message::Hello(h))) => h,
        Ok(_) => {
            return Err(("no hello", LinkError::Protocol("expected Hello".into())));
        }
        Err(e) => return Err(("bad hello", e)),
    };
    let refuse = |why: String| Refusal { reason: why };
    // The certificate must be valid for the node name the agent announces.
    let named = ServerName::try_from(hello.node.as_str())
        .ok()
        .and_then(|n| {
            webpki::EndEntityCert::try_from(&chain[0])
                .ok()
                .map(|c| c.verify_is_valid_for_subject_name(&n).is_ok())
        })
        .unwrap_or(false);
    if !named {
        let r = refuse(format!(
            "certificate is not valid for node {:?}",
            hello.node
        ));
        refuse_and_close(&conn, &mut tx, r, 1, b"certificate does not name the node").await;
        return Err((
            "certificate names another node",
            LinkError::Refused(hello.node),
        ));
    }
    let version = match wire::negotiate(
        (hello.min_version, hello.max_version),
        (wire::MIN_PROTOCOL_VERSION, wire::PROTOCOL_VERSION),
    ) {
        Ok(v) => v,
        Err(why) => {
            refuse_and_close(
                &conn,
                &mut tx,
                refuse(why.clone()),
                2,
                b"no common protocol version",
            )
            .await;
            return Err(("no common protocol version", LinkError::Protocol(why)));
        }
    };
    send(
        &mut tx,
        &Message::Welcome(Welcome {
            version,
            brain_version,
            ledger: ledger_id,
        }),
        version,
    )
    .await
    .map_err(|e| ("welcome", e))?;
    let node = hello.node.clone();
    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel();
    let me = {
        let mut st = lock(&state);
        for c in st.pending.get(&node).into_iter().flat_map(|p| p.values()) {
            let _ = cmd_tx.send(c.clone());
        }
        st.connections += 1;
        let me = st.connections;
        st.connected.insert(node.clone(), (me, cmd_tx));
        st.ingest.hello(&hello);
        // Where the node's replicas are reached: the address its agent
        // connects from.
        if let Some(n) = st.ingest.nodes.get_mut(&node) {
            n.addr = Some(conn.remote_address().ip());
        }
        st.emit(Event::Connected {
            node: node.clone(),
            version,
        });
        me
    };

    // Telemetry: one unidirectional stream, in order. `received` is one
    // more than the last sequence number taken in (0: none yet).
    let received = Arc::new(AtomicU64::new(0));
    let telemetry = tokio::spawn(telemetry(
        conn.clone(),
        state.clone(),
        node.clone(),
        hello.session,
        received.clone(),
    ));
    // Commands out; results in, stored, then acknowledged; windows
    // acknowledged every ACK_EVERY.
    let mut acked = 0;
    let mut tick = tokio::time::interval(ACK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let through = |n: u64| n.checked_sub(1);
    let outcome = loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = received.load(Ordering::Acquire);
                if now != acked {
                    let ack = Message::Ack(Ack { windows_through: through(now), results: vec![] });
                    if send(&mut tx, &ack, version).await.is_err() { break Ok(()) }
                    acked = now;
                }
            }
            c = cmd_rx.recv() => match c {
                Some(c) => if send(&mut tx, &Message::Command(c), version).await.is_err() { break Ok(()) },
                None => break Ok(()),
            },
            m = reader.next() => match m {
                Ok(Some(Message::CommandResult(r))) => {
                    let recorded = match ledger.record(&node, r.clone()).await {
                        Ok(rec) => rec,
                        // Not stored, so not acknowledged: the agent sends
                        // it again when it reconnects.
                        Err(e) => break Err(("ledger unavailable", e)),
                    };
                    {
                        let mut st = lock(&state);
                        if let Some(p) = st.pending.get_mut(&node) {
                            p.remove(&r.id);
                        }
                        if recorded == Recorded::New {
                            st.ingest.totals.results += 1;
                            st.emit(Event::Result { node: node.clone(), result: r.clone() });
                            if st.recent_results.len() == RECENT_RESULTS {
                                st.recent_results.pop_front();
                            }
                            st.recent_results.push_back((node.clone(), r.clone()));
                        }
                    }
                    let now = received.load(Ordering::Acquire);
                    let ack = Message::Ack(Ack { windows_through: through(now), results: vec![r.id] });
                    if send(&mut tx, &ack, version).await.is_err() { break Ok(()) }
                    acked = now;
                }
                Ok(Some(_)) => {}
                _ => break Ok(()),
            },
        }
    };
    telemetry.abort();
    if outcome.is_err() {
        conn.close(3u32.into(), b"ledger unavailable");
    }
    let mut st = lock(&state);
    // A newer connection of the same node may have taken over already.
    if st.connected.get(&node).is_some_and(|(c, _)| *c == me) {
        st.connected.remove(&node);
    }
    st.emit(Event::Disconnected { node });
    outcome
}

/// Takes in one connection's windows until the stream ends.
async fn telemetry(
    conn: quinn::Connection,
    state: Arc<Mutex<AgentsState>>,
    node: String,
    session: u64,
    received: Arc<AtomicU64>,
) {
    let Ok(rx) = conn.accept_uni().await else {
        return;
    };
    let mut r = FrameReader::new(rx, wire::DEFAULT_MAX_FRAME);
    let mut counted = 0;
    while let Ok(Some(m)) = r.next().await {
        let Message::Telemetry(mut w) = m else {
            continue;
        };
        let now = unix_ns();
        let bytes = (r.bytes - counted) as usize;
        counted = r.bytes;
        // The authenticated name, whatever the window says.
        w.node.clear();
        let (seq, dropped) = (w.seq, w.dropped_windows);
        let mut st = lock(&state);
        let accepted = st.ingest.window(&node, session, w, bytes, now);
        received.store(seq + 1, Ordering::Release);
        if accepted == Accepted::New {
            st.fresh.notify_one();
            st.emit(Event::Window {
                node: node.clone(),
                seq,
                dropped,
            });
        }
    }
}
