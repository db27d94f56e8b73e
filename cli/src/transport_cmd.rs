//! `vagus brain --quic`: the brain's end of the transport (the agent's is
//! `vagus agent --brain`, in `agent_cmd.rs`).
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
use std::sync::Arc;
use std::time::Duration;
use vagus_proto::wire::CommandKind;
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
