//! The brain's endpoint: accepts agents, checks who they are, ingests their
//! telemetry and sends them commands.

use crate::TransportError;
use crate::frames::{FrameReader, send};
use crate::tls::{Identity, server_config};
use rustls::pki_types::{CertificateDer, ServerName};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use vagus_proto::wire::{self, Command, CommandResult, Message, Refusal, TelemetryWindow, Welcome};

/// What the brain has learnt from its agents.
#[derive(Default)]
pub struct Ingest {
    /// The latest window of each node.
    pub latest: HashMap<String, TelemetryWindow>,
    pub windows: u64,
    pub bytes: u64,
    /// Connections refused, by reason.
    pub rejected: HashMap<String, u64>,
    pub results: Vec<CommandResult>,
    /// Σ of the dropped-window counts agents reported.
    pub dropped_reported: u64,
    /// Windows that arrived twice (resent after a reconnection), ignored.
    pub duplicates: u64,
    /// The last window sequence seen per (node, agent session).
    last_seq: HashMap<(String, u64), u64>,
    /// Commands not yet answered, by node: sent again when the node reconnects.
    pending: HashMap<String, std::collections::BTreeMap<u64, Command>>,
    /// Where events go, if someone listens (see [`Brain::events`]).
    events: Option<mpsc::UnboundedSender<Event>>,
    /// Nodes connected now, with the channel that carries their commands.
    connected: HashMap<String, mpsc::UnboundedSender<Command>>,
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

impl Ingest {
    fn emit(&self, e: Event) {
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
        }
    }

    pub fn is_connected(&self, node: &str) -> bool {
        self.connected.get(node).is_some_and(|c| !c.is_closed())
    }
}

pub struct Brain {
    endpoint: quinn::Endpoint,
    pub state: Arc<Mutex<Ingest>>,
    name: String,
}

fn lock(s: &Mutex<Ingest>) -> std::sync::MutexGuard<'_, Ingest> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

fn reject(state: &Mutex<Ingest>, reason: &str) {
    let mut st = lock(state);
    *st.rejected.entry(reason.to_string()).or_default() += 1;
    st.emit(Event::Rejected {
        reason: reason.to_string(),
    });
}

impl Brain {
    /// Listens on `addr` with the brain's identity. Must run in a Tokio runtime.
    pub fn bind(addr: SocketAddr, id: &Identity) -> Result<Brain, TransportError> {
        let endpoint = quinn::Endpoint::server(server_config(id)?, addr).map_err(|source| {
            TransportError::Io {
                what: format!("bind {addr}"),
                source,
            }
        })?;
        Ok(Brain {
            endpoint,
            state: Arc::new(Mutex::new(Ingest::default())),
            name: env!("CARGO_PKG_VERSION").into(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr().expect("bound endpoint")
    }

    /// Sends a command to a node, now if it is connected, else when it
    /// (re)connects; it is sent again after every reconnection until the
    /// node answers it. Returns whether it went out now.
    pub fn command(&self, node: &str, c: Command) -> bool {
        let mut st = lock(&self.state);
        st.pending
            .entry(node.to_string())
            .or_default()
            .insert(c.id, c.clone());
        st.connected.get(node).is_some_and(|tx| tx.send(c).is_ok())
    }

    /// A stream of what happens from now on (one listener at a time).
    pub fn events(&self) -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.state).events = Some(tx);
        rx
    }

    /// Closes the endpoint: every connection ends at once.
    pub fn shutdown(&self) {
        self.endpoint.close(0u32.into(), b"brain shutting down");
    }

    /// Waits until the closed connections have been told (the socket is
    /// released once the `Brain` is dropped too).
    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }

    /// Accepts connections until the endpoint closes.
    pub async fn run(&self) {
        while let Some(incoming) = self.endpoint.accept().await {
            let state = self.state.clone();
            let name = self.name.clone();
            tokio::spawn(async move {
                match incoming.await {
                    Ok(conn) => {
                        if let Err((reason, e)) = serve(conn, state.clone(), name).await {
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
    state: Arc<Mutex<Ingest>>,
    brain_version: String,
) -> Result<(), (&'static str, TransportError)> {
    let chain = conn
        .peer_identity()
        .and_then(|i| i.downcast::<Vec<CertificateDer<'static>>>().ok())
        .filter(|c| !c.is_empty())
        .ok_or((
            "no client certificate",
            TransportError::Protocol("no client certificate".into()),
        ))?;
    let (mut tx, rx) = conn.accept_bi().await.map_err(|e| {
        (
            "closed before hello",
            TransportError::Connection(e.to_string()),
        )
    })?;
    let mut reader = FrameReader::new(rx, wire::DEFAULT_MAX_FRAME);
    let hello = match reader.next().await {
        Ok(Some(Message::Hello(h))) => h,
        Ok(_) => {
            return Err((
                "no hello",
                TransportError::Protocol("expected Hello".into()),
            ));
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
            TransportError::Refused(hello.node),
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
            return Err(("no common protocol version", TransportError::Protocol(why)));
        }
    };
    send(
        &mut tx,
        &Message::Welcome(Welcome {
            version,
            brain_version,
        }),
        version,
    )
    .await
    .map_err(|e| ("welcome", e))?;
    let node = hello.node.clone();
    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel();
    {
        let mut st = lock(&state);
        for c in st.pending.get(&node).into_iter().flat_map(|p| p.values()) {
            let _ = cmd_tx.send(c.clone());
        }
        st.connected.insert(node.clone(), cmd_tx);
        st.emit(Event::Connected {
            node: node.clone(),
            version,
        });
    }

    // Telemetry: one unidirectional stream, in order.
    let st = state.clone();
    let telemetry_conn = conn.clone();
    let from = node.clone();
    let session = hello.session;
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<u64>();
    let telemetry = tokio::spawn(async move {
        let Ok(rx) = telemetry_conn.accept_uni().await else {
            return;
        };
        let mut r = FrameReader::new(rx, wire::DEFAULT_MAX_FRAME);
        while let Ok(Some(m)) = r.next().await {
            if let Message::Telemetry(mut w) = m {
                // The authenticated name, whatever the window says.
                w.node = from.clone();
                let _ = ack_tx.send(w.seq);
                let mut s = lock(&st);
                let last = s
                    .last_seq
                    .entry((from.clone(), session))
                    .or_insert(u64::MAX);
                if *last != u64::MAX && w.seq <= *last {
                    s.duplicates += 1;
                    continue;
                }
                *last = w.seq;
                s.windows += 1;
                s.dropped_reported += w.dropped_windows;
                s.bytes += w
                    .processes
                    .iter()
                    .map(|p| p.kernel_hist.len() + p.sync_hist.len())
                    .sum::<usize>() as u64;
                s.emit(Event::Window {
                    node: w.node.clone(),
                    seq: w.seq,
                    dropped: w.dropped_windows,
                });
                s.latest.insert(w.node.clone(), w);
            }
        }
    });
    // Commands out, results in, on the handshake stream.
    loop {
        tokio::select! {
            Some(seq) = ack_rx.recv() => {
                let ack = Message::Heartbeat(wire::Heartbeat { seq, unix_ns: 0 });
                if send(&mut tx, &ack, version).await.is_err() { break }
            }
            c = cmd_rx.recv() => match c {
                Some(c) => if send(&mut tx, &Message::Command(c), version).await.is_err() { break },
                None => break,
            },
            m = reader.next() => match m {
                Ok(Some(Message::CommandResult(r))) => {
                    let mut st = lock(&state);
                    if let Some(p) = st.pending.get_mut(&node) {
                        p.remove(&r.id);
                    }
                    st.emit(Event::Result { node: node.clone(), result: r.clone() });
                    st.results.push(r);
                }
                Ok(Some(_)) => {}
                _ => break,
            },
        }
    }
    telemetry.abort();
    let mut st = lock(&state);
    st.connected.remove(&node);
    st.emit(Event::Disconnected { node });
    Ok(())
}
