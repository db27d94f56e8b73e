//! `vagus brain --quic` and `vagus agent --brain`: the two ends of the
//! transport, run for real. What the agent's windows contain (processes,
//! GPUs, histograms) comes with the node agent; here it sends the windows'
//! frame — node, sequence, time — so the link itself can be run and tested.

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
use vagus_transport::brain::{Brain, Event};
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
    /// Windows kept while the brain is unreachable (oldest dropped beyond).
    #[arg(long, default_value_t = 1024)]
    pub buffer_windows: usize,
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

pub fn brain(args: BrainArgs) -> Result<()> {
    let id = Identity::load(&args.certs, &args.name)?;
    runtime()?.block_on(async {
        let brain = Arc::new(Brain::bind(args.quic, &id)?);
        let mut events = brain.events();
        eprintln!(
            "vagus brain: accepting agents on {} (QUIC, mutual TLS)",
            brain.local_addr()
        );
        let serving = brain.clone();
        tokio::spawn(async move { serving.run().await });
        while let Some(e) = events.recv().await {
            println!("{}", event_json(&e));
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
        buffer_windows: args.buffer_windows,
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_secs(5),
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
