//! `vagus brain`: the brain's end of the transport with `--certs` (the
//! agent's is `vagus agent --brain`, in `agent_cmd.rs`), and the decision
//! core's HTTP API with `--http` (in `api_cmd.rs`); either or both.
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
    /// Directory from `vagus certs init`: accept agents over QUIC.
    #[arg(long, env = "VAGUS_CERTS_DIR")]
    pub certs: Option<PathBuf>,
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
    #[command(flatten)]
    pub api: crate::api_cmd::ApiArgs,
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
    anyhow::ensure!(
        args.certs.is_some() || args.api.http.is_some(),
        "give --certs DIR (accept agents over QUIC), --http ADDR (the API), or both"
    );
    let svc = match args.api.http {
        Some(_) => Some(crate::api_cmd::service(&args.api)?),
        None => None,
    };
    runtime()?.block_on(async {
        if let (Some(addr), Some(svc)) = (args.api.http, &svc) {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--http {addr}: cannot listen"))?;
            let at = l.local_addr().context("--http: no local address")?;
            eprintln!("vagus brain: HTTP API on http://{at}");
            println!(
                "{}",
                serde_json::json!({"event": "http", "addr": at.to_string()})
            );
            let svc = svc.clone();
            tokio::spawn(async move {
                if let Err(e) = vagus_api::serve(l, svc).await {
                    eprintln!("vagus brain: the HTTP API stopped: {e}");
                }
            });
        }
        match &args.certs {
            Some(certs) => quic(&args, certs, svc).await,
            None => {
                std::future::pending::<()>().await;
                Ok(())
            }
        }
    })
}

async fn quic(
    args: &BrainArgs,
    certs: &std::path::Path,
    svc: Option<Arc<vagus_api::Service>>,
) -> Result<()> {
    let id = Identity::load(certs, &args.name)?;
    let opts = BrainOptions {
        ledger: args.ledger.clone(),
        rolling_windows: args.rolling_windows,
    };
    {
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
        if let Some(svc) = svc {
            // The decision core learns nodes and their load from the agents.
            let b = brain.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    crate::api_cmd::sync_agents(&b, &svc);
                }
            });
        }
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
    }
}
