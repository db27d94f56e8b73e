//! `vagus brain --quic` and `vagus agent --brain`: the two ends of the
//! transport, run for real. What the agent's windows contain (processes,
//! GPUs, histograms) comes with the node agent; here it sends the windows'
//! frame — node, sequence, time — so the link itself can be run and tested.
//!
//! The brain prints JSON lines: events (connected, result, rejected,
//! disconnected; windows with `--log-windows`), its ingest metrics every
//! `--stats-every`, and answers to what it reads on standard input until the
//! HTTP API exists: `{"issue": {"node": N, "command": KIND}}` issues a
//! command (KIND as in `{"DrainGpu": {"gpu": 0}}`), `{"result": ID}` looks
//! up a stored result.

use anyhow::{Context, Result};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vagus_proto::wire::{
    Command, CommandKind, Hello, MIN_PROTOCOL_VERSION, Outcome, PROTOCOL_VERSION, TelemetryWindow,
};
use vagus_transport::agent::{AgentConfig, AgentStats};
use vagus_transport::brain::{Brain, BrainOptions, Event};
use vagus_transport::ingest::Snapshot;
use vagus_transport::tls::Identity;

#[derive(Args, Debug)]
pub struct BrainArgs {
    /// UDP address to accept agents on.
    #[arg(long, env = "VAGUS_BRAIN_QUIC", default_value = "0.0.0.0:7443")]
    pub quic: SocketAddr,
    /// Directory from `vagus certs init`.
    #[arg(long, env = "VAGUS_CERTS_DIR")]
    pub certs: PathBuf,
    /// The brain's certificate name in that directory.
    #[arg(long, default_value = "brain")]
    pub name: String,
    /// SQLite file of the command ledger (commands issued, results
    /// reported); kept across restarts. Without it the ledger is in memory.
    #[arg(long, env = "VAGUS_LEDGER")]
    pub ledger: Option<PathBuf>,
    /// Print every window as an event too.
    #[arg(long)]
    pub log_windows: bool,
    /// Seconds between ingest-metrics lines (0: none).
    #[arg(long, default_value_t = 1.0)]
    pub stats_every: f64,
    /// Windows of histograms kept per process.
    #[arg(long, default_value_t = 10)]
    pub rolling_windows: usize,
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The brain's QUIC address.
    #[arg(long, env = "VAGUS_BRAIN")]
    pub brain: SocketAddr,
    /// Directory from `vagus certs init`.
    #[arg(long, env = "VAGUS_CERTS_DIR")]
    pub certs: PathBuf,
    /// This node's name (its certificate must carry it).
    #[arg(long, env = "VAGUS_NODE")]
    pub node: String,
    /// The name on the brain's certificate.
    #[arg(long, default_value = "brain")]
    pub brain_name: String,
    /// Windows per second.
    #[arg(long, default_value_t = 10.0)]
    pub hz: f64,
    /// Bytes of windows kept until the brain acknowledges them (all of them
    /// while it is unreachable); the oldest are dropped beyond.
    #[arg(long, default_value_t = vagus_transport::agent::DEFAULT_BUFFER_BYTES)]
    pub buffer_bytes: usize,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn event_json(e: &Event) -> serde_json::Value {
    match e {
        Event::Connected { node, version } => {
            serde_json::json!({"event": "connected", "node": node, "version": version})
        }
        Event::Window { node, seq, dropped } => {
            serde_json::json!({"event": "window", "node": node, "seq": seq, "dropped": dropped})
        }
        Event::Result { node, result } => {
            serde_json::json!({"event": "result", "node": node, "id": result.id, "outcome": format!("{:?}", result.outcome)})
        }
        Event::Rejected { reason } => serde_json::json!({"event": "rejected", "reason": reason}),
        Event::Disconnected { node } => serde_json::json!({"event": "disconnected", "node": node}),
    }
}

fn stats_json(m: &Snapshot) -> serde_json::Value {
    serde_json::json!({
        "event": "stats",
        "nodes": m.nodes,
        "windows": m.totals.windows,
        "windows_per_s": (m.windows_per_s * 10.0).round() / 10.0,
        "bytes": m.totals.bytes,
        "bytes_per_s": m.bytes_per_s.round(),
        "lag_p50_us": m.lag_p50_us,
        "lag_p99_us": m.lag_p99_us,
        "lag_max_us": m.lag_max_us,
        "duplicates": m.totals.duplicates,
        "dropped_reported": m.totals.dropped_reported,
        "results": m.totals.results,
        "rejected": m.totals.rejected,
    })
}

/// A line read on the brain's standard input.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
enum Request {
    #[serde(rename = "issue")]
    Issue { node: String, command: CommandKind },
    #[serde(rename = "result")]
    Result(u64),
}

async fn answer(brain: &Brain, line: &str) -> serde_json::Value {
    let req: Request = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => {
            return serde_json::json!({"event": "error", "line": line, "error": e.to_string()});
        }
    };
    match req {
        Request::Issue { node, command } => match brain.issue(&node, command).await {
            Ok(id) => serde_json::json!({"event": "issued", "node": node, "id": id}),
            Err(e) => serde_json::json!({"event": "error", "line": line, "error": e.to_string()}),
        },
        Request::Result(id) => match brain.result(id).await {
            Ok(Some((node, o))) => serde_json::json!({
                "event": "lookup", "id": id, "node": node, "outcome": format!("{o:?}")
            }),
            Ok(None) => serde_json::json!({"event": "lookup", "id": id, "outcome": null}),
            Err(e) => serde_json::json!({"event": "error", "line": line, "error": e.to_string()}),
        },
    }
}

pub fn brain(args: BrainArgs) -> Result<()> {
    anyhow::ensure!(
        args.stats_every >= 0.0 && args.stats_every.is_finite(),
        "--stats-every {} must be a number of seconds ≥ 0",
        args.stats_every
    );
    let id = Identity::load(&args.certs, &args.name)?;
    let opts = BrainOptions {
        ledger: args.ledger.clone(),
        rolling_windows: args.rolling_windows,
    };
    runtime()?.block_on(async {
        let brain = Arc::new(Brain::bind(args.quic, &id, &opts)?);
        let mut events = brain.events(args.log_windows);
        eprintln!(
            "vagus brain: accepting agents on {} (QUIC, mutual TLS)",
            brain.local_addr()
        );
        {
            let st = brain.state.lock().unwrap_or_else(|e| e.into_inner());
            let pending: usize = st.pending_total();
            println!(
                "{}",
                serde_json::json!({
                    "event": "started",
                    "addr": brain.local_addr().to_string(),
                    "results_stored": st.ingest.totals.results,
                    "commands_pending": pending,
                })
            );
        }
        let serving = brain.clone();
        tokio::spawn(async move { serving.run().await });
        let (line_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            for l in std::io::stdin().lines().map_while(Result::ok) {
                if line_tx.send(l).is_err() {
                    return;
                }
            }
        });
        let every = (args.stats_every > 0.0).then(|| Duration::from_secs_f64(args.stats_every));
        let mut tick = tokio::time::interval(every.unwrap_or(Duration::from_secs(3600)));
        tick.tick().await;
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        loop {
            let v = tokio::select! {
                e = events.recv() => match e {
                    Some(e) => event_json(&e),
                    None => break,
                },
                Some(l) = lines.recv() => {
                    if l.trim().is_empty() { continue }
                    answer(&brain, &l).await
                }
                _ = tick.tick(), if every.is_some() => stats_json(&brain.metrics()),
            };
            writeln!(out, "{v}").context("writing to standard output")?;
            out.flush().context("writing to standard output")?;
        }
        Ok(())
    })
}

/// The agent has nothing to apply commands to until the node agent lands:
/// it says so in each result rather than pretending.
fn cannot_apply(c: &Command) -> Outcome {
    let what = match &c.kind {
        CommandKind::SetShimBudget { .. } => "SetShimBudget",
        CommandKind::PauseProcess { .. } => "PauseProcess",
        CommandKind::SetMpsPercentage { .. } => "SetMpsPercentage",
        CommandKind::StartMpsServer { .. } => "StartMpsServer",
        CommandKind::StopMpsServer { .. } => "StopMpsServer",
        CommandKind::DrainGpu { .. } => "DrainGpu",
    };
    Outcome::Failed(format!("this agent has no handler for {what} yet"))
}

pub fn agent(args: AgentArgs) -> Result<()> {
    anyhow::ensure!(
        args.hz > 0.0 && args.hz <= 1000.0,
        "--hz {} must be in (0, 1000]",
        args.hz
    );
    let id = Identity::load(&args.certs, &args.node)?;
    let hello = Hello {
        min_version: MIN_PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        node: args.node.clone(),
        // Unique per run: the brain tells resent windows from a restarted agent's.
        session: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ ((std::process::id() as u64) << 32),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        gpus: Vec::new(),
    };
    let cfg = AgentConfig {
        brain: args.brain,
        brain_name: args.brain_name.clone(),
        identity: id,
        hello,
        buffer_bytes: args.buffer_bytes,
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_secs(5),
        endpoint: None,
    };
    runtime()?.block_on(async move {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let stats = Arc::new(Mutex::new(AgentStats::default()));
        let node = args.node.clone();
        let period = Duration::from_secs_f64(1.0 / args.hz);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            for seq in 0.. {
                tick.tick().await;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0);
                let w = TelemetryWindow {
                    node: node.clone(),
                    seq,
                    start_unix_ns: now.saturating_sub(period.as_nanos() as u64),
                    duration_ns: period.as_nanos() as u64,
                    gpus: Vec::new(),
                    processes: Vec::new(),
                    dropped_windows: 0,
                };
                if tx.send(w).await.is_err() {
                    return;
                }
            }
        });
        eprintln!(
            "vagus agent {}: streaming to {} at {} Hz",
            args.node, args.brain, args.hz
        );
        vagus_transport::agent::run(cfg, rx, cannot_apply, stats).await;
        Ok(())
    })
}
