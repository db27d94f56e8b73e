//! `vagus brain`: flags parsed into `vagus_brain::Config`, the service
//! started with `vagus_brain::Service::start`: the agents' QUIC endpoint
//! with `--certs`, the decision core's HTTP API with `--http`; either or
//! both.
//!
//! The brain prints JSON lines: events (connected, result, rejected,
//! disconnected; windows with `--log-windows`), its ingest metrics every
//! `--stats-every`, and answers to what it reads on standard input until the
//! HTTP API exists: `{"issue": {"node": N, "command": KIND}}` issues a
//! command (KIND as in `{"DrainGpu": {"gpu": 0}}`), `{"result": ID}` looks
//! up a stored result.

use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use vagus_brain::agents::ingest::Snapshot;
use vagus_brain::agents::{Agents, Event};
use vagus_brain::http::auth::Tokens;
use vagus_brain::{Config, HttpConfig, KubeConfig, Lease, QuicConfig, SchedulerConfig, Service};
use vagus_link::tls::Identity;
use vagus_proto::wire::CommandKind;

#[derive(Args, Debug)]
pub struct BrainArgs {
    /// UDP address to accept agents on (HOST:PORT; a host name is
    /// resolved).
    #[arg(
        long,
        env = "VAGUS_BRAIN_QUIC",
        default_value = "0.0.0.0:7443",
        value_name = "HOST:PORT"
    )]
    pub quic: String,
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
    /// PostgreSQL for the audit trail and the command ledger instead of
    /// SQLite files, shared by the brain's replicas
    /// (postgres://USER:PASSWORD@HOST:PORT/DB, or key=value settings; TLS
    /// with sslmode=require or --database-ca). Pass it in the environment to
    /// keep the password out of `ps`.
    #[arg(long, env = "VAGUS_BRAIN_DATABASE", value_name = "URL",
          conflicts_with_all = ["ledger", "audit"], hide_env_values = true)]
    pub database: Option<String>,
    /// With --database: the CA (PEM) the database server's certificate
    /// chains to; TLS then, the certificate verified for the host. Without
    /// it, `sslmode=require` verifies against Mozilla's roots.
    #[arg(
        long,
        env = "VAGUS_BRAIN_DATABASE_CA",
        requires = "database",
        value_name = "FILE"
    )]
    pub database_ca: Option<PathBuf>,
    /// Print every window as an event too.
    #[arg(long)]
    pub log_windows: bool,
    /// Seconds between ingest-metrics lines (0: none).
    #[arg(long, default_value_t = 1.0)]
    pub stats_every: f64,
    /// Windows of histograms kept per process.
    #[arg(long, default_value_t = 10)]
    pub rolling_windows: usize,
    /// Append each control-loop tick (what it saw, what it did) to this
    /// file as a JSON line, for `vagus control replay`.
    #[arg(long, env = "VAGUS_BRAIN_CONTROL_RECORD")]
    pub control_record: Option<PathBuf>,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Args, Debug, Default)]
pub struct ApiArgs {
    /// Serve the HTTP API (placements, nodes, decisions, controls, metrics)
    /// on this TCP address (HOST:PORT; a host name is resolved).
    #[arg(long, env = "VAGUS_BRAIN_HTTP", value_name = "HOST:PORT")]
    pub http: Option<String>,
    /// Bearer tokens and their roles (TOML: [[token]] name, role, token).
    #[arg(long, env = "VAGUS_BRAIN_TOKENS")]
    pub tokens: Option<PathBuf>,
    /// SQLite file of the audit trail; the brain restores its placements
    /// from it when it starts. Without it the trail is a temporary file.
    #[arg(long, env = "VAGUS_BRAIN_AUDIT")]
    pub audit: Option<PathBuf>,
    /// The decision core's configuration (TOML: classes, weights, gate,
    /// breaker, quotas, manifest…); defaults otherwise.
    #[arg(long, env = "VAGUS_BRAIN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Nodes to place on: an openb node list (.csv) or NodeSpec objects
    /// (.json array).
    #[arg(long, env = "VAGUS_BRAIN_NODES")]
    pub nodes: Option<PathBuf>,
    /// The workload mix the score measures fragmentation against, from a
    /// trace of past requests (an openb pod list); fixed. Without it the
    /// brain learns the mix from the requests it places.
    #[arg(long, env = "VAGUS_BRAIN_MIX")]
    pub mix: Option<PathBuf>,
    /// Serve kube-scheduler's extender (POST /scheduler/filter, prioritize,
    /// bind, preempt) on this TCP address; it takes no tokens, so bind it
    /// where only the scheduler reaches it.
    #[arg(long, env = "VAGUS_BRAIN_SCHEDULER", value_name = "HOST:PORT")]
    pub scheduler: Option<String>,
    /// Bind pods through the Kubernetes API (the pod's service account, or
    /// KUBECONFIG): the extender's bind verb needs it.
    #[arg(long, env = "VAGUS_BRAIN_KUBERNETES", requires = "scheduler")]
    pub kubernetes: bool,
    /// With --kubernetes: the Lease the brain replicas contend for; only
    /// its holder acts.
    #[arg(long, default_value = "vagus-brain")]
    pub lease: String,
    /// The Lease's namespace (the pod's own, from the downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "vagus")]
    pub lease_namespace: String,
    /// This replica's name on the Lease: its pod's name, the pod labelled
    /// vagus.dev/leader=true while it leads (the brain's Service selects it).
    #[arg(long, env = "HOSTNAME", default_value = "vagus-brain")]
    pub identity: String,
    /// Seconds a holder keeps the Lease without renewing it.
    #[arg(long, default_value_t = 15)]
    pub lease_seconds: u64,
    /// Seconds a pod the brain deletes has to finish its requests.
    #[arg(long, default_value_t = 30)]
    pub pod_grace_seconds: u32,
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

async fn answer(brain: &Agents, line: &str) -> serde_json::Value {
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

/// The flags, checked and loaded into the service's configuration.
fn config(args: &BrainArgs) -> Result<Config> {
    anyhow::ensure!(
        args.stats_every >= 0.0 && args.stats_every.is_finite(),
        "--stats-every {} must be a number of seconds ≥ 0",
        args.stats_every
    );
    anyhow::ensure!(
        args.certs.is_some() || args.api.http.is_some(),
        "give --certs DIR (accept agents over QUIC), --http ADDR (the API), or both"
    );
    let http = match &args.api.http {
        Some(given) => {
            let addr = crate::addr::resolve("--http", given)?;
            let path = args
                .api
                .tokens
                .as_deref()
                .context("--http needs --tokens FILE (bearer tokens and their roles)")?;
            let tokens =
                Tokens::load(path).with_context(|| format!("--tokens {}", path.display()))?;
            anyhow::ensure!(
                !tokens.is_empty(),
                "{}: no [[token]] entries: nobody could use the API",
                path.display()
            );
            Some(HttpConfig {
                addr,
                tokens,
                audit: args.api.audit.clone(),
                core: vagus_brain::load_core_config(
                    args.api.config.as_deref(),
                    args.api.mix.as_deref(),
                )?,
                nodes: match &args.api.nodes {
                    Some(p) => vagus_brain::load_nodes(p)?,
                    None => Vec::new(),
                },
                clock: None,
                kubernetes: None,
                scheduler: match &args.api.scheduler {
                    Some(a) => Some(SchedulerConfig {
                        addr: crate::addr::resolve("--scheduler", a)?,
                        binder: None,
                    }),
                    None => None,
                },
            })
        }
        None => None,
    };
    anyhow::ensure!(
        args.api.scheduler.is_none() || args.api.http.is_some(),
        "--scheduler needs --http (the extender answers from the API's decision core)"
    );
    let quic = match &args.certs {
        Some(dir) => Some(QuicConfig {
            addr: crate::addr::resolve("--quic", &args.quic)?,
            identity: Identity::load(dir, &args.name)
                .with_context(|| format!("--certs {}", dir.display()))?,
            ledger: args.ledger.clone(),
            rolling_windows: args.rolling_windows,
        }),
        None => None,
    };
    Ok(Config {
        http,
        quic,
        database: args
            .database
            .as_ref()
            .map(|url| vagus_brain::database::Database {
                url: url.clone(),
                ca: args.database_ca.clone(),
            }),
        lease: None,
        sync_every: Duration::from_secs(1),
        control_record: args.control_record.clone(),
    })
}

pub fn brain(args: BrainArgs) -> Result<()> {
    let mut cfg = config(&args)?;
    crate::runtime()?.block_on(async {
        if args.api.kubernetes
            && let Some(h) = cfg.http.as_mut()
        {
            let a = &args.api;
            anyhow::ensure!(
                a.lease_seconds >= 2,
                "--lease-seconds {} must be at least 2",
                a.lease_seconds
            );
            let client = vagus_kube::client_from_environment()
                .await
                .map_err(|e| anyhow::anyhow!("--kubernetes: {e}"))?;
            if let Some(x) = h.scheduler.as_mut() {
                x.binder = Some(vagus_kube::binder::Binder::new(client.clone()));
            }
            cfg.lease = Some(Lease {
                client: client.clone(),
                election: vagus_kube::leader::Election {
                    namespace: a.lease_namespace.clone(),
                    lease: a.lease.clone(),
                    identity: a.identity.clone(),
                    duration_s: a.lease_seconds,
                    grace_s: (a.lease_seconds / 3).max(1),
                },
                pod: Some(a.identity.clone()),
            });
            h.kubernetes = Some(KubeConfig {
                client,
                grace_s: a.pod_grace_seconds,
                every: Duration::from_secs(1),
            });
        }
        let starting = Service::bind(cfg).await?;
        if let Some(at) = starting.http_addr
            && args.api.kubernetes
        {
            eprintln!(
                "vagus brain: waiting for lease {}/{}; the API on http://{at} answers 503 until this replica leads",
                args.api.lease_namespace, args.api.lease
            );
            println!(
                "{}",
                serde_json::json!({"event": "following", "addr": at.to_string()})
            );
        }
        let svc = starting.lead().await?;
        // The API answers from here on.
        if let Some(at) = svc.http_addr {
            eprintln!("vagus brain: HTTP API on http://{at}");
            println!(
                "{}",
                serde_json::json!({"event": "http", "addr": at.to_string()})
            );
        }
        if let Some(mut leading) = svc.leading.clone() {
            // A brain that lost the lease exits, to come back as a follower
            // (its writes are refused by now: the database is fenced).
            tokio::spawn(async move {
                let _ = leading.wait_for(|l| !*l).await;
                eprintln!("vagus brain: lost the lease; exiting so that a restart follows the new leader");
                std::process::exit(3);
            });
        }
        if let Some(api) = &svc.api {
            let r = &svc.restored;
            eprintln!(
                "vagus brain: audit trail {}: restored {} placements, {} queued, {} controls ({} waiting for their node)",
                api.audit().path(),
                r.placements,
                r.queued,
                r.controls,
                r.pending
            );
        }
        if let Some(at) = svc.scheduler_addr {
            eprintln!("vagus brain: scheduler extender on http://{at}/scheduler");
            println!(
                "{}",
                serde_json::json!({"event": "scheduler", "addr": at.to_string()})
            );
        }
        match svc.agents.clone() {
            Some(agents) => talk(&args, &agents).await,
            None => {
                std::future::pending::<()>().await;
                Ok(())
            }
        }
    })
}

/// Prints the agents' events and ingest metrics, and answers requests read
/// on standard input, until the endpoint closes.
async fn talk(args: &BrainArgs, agents: &Arc<Agents>) -> Result<()> {
    let mut events = agents.events(args.log_windows);
    eprintln!(
        "vagus brain: accepting agents on {} (QUIC, mutual TLS)",
        agents.local_addr()
    );
    {
        let st = agents.state.lock().unwrap_or_else(|e| e.into_inner());
        println!(
            "{}",
            serde_json::json!({
                "event": "started",
                "addr": agents.local_addr().to_string(),
                "results_stored": st.ingest.totals.results,
                "commands_pending": st.pending_total(),
            })
        );
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
                answer(agents, &l).await
            }
            _ = tick.tick(), if every.is_some() => stats_json(&agents.metrics()),
        };
        writeln!(out, "{v}").context("writing to standard output")?;
        out.flush().context("writing to standard output")?;
    }
    Ok(())
}
