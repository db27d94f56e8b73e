//! `vagus brain --http`: the decision core behind the HTTP API, its audit
//! trail, and the nodes it places on (a file, `POST /v1/nodes`, and the
//! inventories and telemetry of connected agents).

use anyhow::{Context, Result};
use clap::Args;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vagus_api::audit::Audit;
use vagus_api::auth::Tokens;
use vagus_api::{Service, system_clock};
use vagus_decision::{Config, Core, GpuSpec, NodeLoad, NodeSpec};

#[derive(Args, Debug, Default)]
pub struct ApiArgs {
    /// Serve the HTTP API (placements, nodes, decisions, controls, metrics)
    /// on this TCP address.
    #[arg(long, env = "VAGUS_BRAIN_HTTP")]
    pub http: Option<SocketAddr>,
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
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    let Some(p) = path else {
        return Ok(Config::default());
    };
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    let cfg: Config = toml::from_str(&text).with_context(|| format!("{}", p.display()))?;
    cfg.validate()
        .with_context(|| format!("{}: invalid configuration", p.display()))?;
    Ok(cfg)
}

/// Nodes from an openb CSV (`sn,cpu_milli,memory_mib,gpu,model`) or a JSON
/// array of node specs.
pub fn load_nodes(path: &Path) -> Result<Vec<NodeSpec>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let what = path.display().to_string();
    if path.extension().is_some_and(|e| e == "json") {
        let specs: Vec<NodeSpec> = serde_json::from_str(&text)
            .with_context(|| format!("{what}: not a JSON array of nodes"))?;
        return Ok(specs);
    }
    let nodes = vagus_placement::openb::nodes(&what, &text)?;
    Ok(nodes.iter().map(NodeSpec::from_trace).collect())
}

/// The service: configuration, nodes, tokens, audit trail, restored state.
pub fn service(args: &ApiArgs) -> Result<Arc<Service>> {
    let tokens_path = args
        .tokens
        .as_deref()
        .context("--http needs --tokens FILE (bearer tokens and their roles)")?;
    let tokens = Tokens::load(tokens_path)?;
    anyhow::ensure!(
        !tokens.is_empty(),
        "{}: no [[token]] entries: nobody could use the API",
        tokens_path.display()
    );
    let mut core = Core::new(load_config(args.config.as_deref())?)?;
    if let Some(p) = &args.nodes {
        for (i, n) in load_nodes(p)?.iter().enumerate() {
            core.upsert_node(n)
                .with_context(|| format!("{}: node {i} ({})", p.display(), n.name))?;
        }
    }
    let audit = Audit::open(args.audit.as_deref())?;
    let svc = Arc::new(Service::new(core, audit, tokens, system_clock()));
    let r = svc.restore()?;
    eprintln!(
        "vagus brain: audit trail {}: restored {} placements, {} queued, {} controls ({} waiting for their node)",
        svc.audit().path(),
        r.placements,
        r.queued,
        r.controls,
        r.pending
    );
    Ok(svc)
}

/// Nodes and their load from the agents connected to the transport.
pub fn sync_agents(brain: &vagus_transport::brain::Brain, svc: &Service) {
    let snapshot: Vec<(String, NodeSpec, NodeLoad)> = {
        let st = brain.state.lock().unwrap_or_else(|e| e.into_inner());
        st.ingest
            .nodes
            .iter()
            .filter(|(_, n)| !n.inventory.is_empty())
            .map(|(name, n)| {
                // The Hello carries GPUs, not the node's CPU and memory:
                // agent-declared nodes are not limited by them.
                let spec = NodeSpec {
                    name: name.clone(),
                    cpu_milli: 1 << 40,
                    memory_mib: 1 << 40,
                    labels: Default::default(),
                    gpus: n
                        .inventory
                        .iter()
                        // Zero: the agent could not tell; the GPU table can.
                        .map(|g| GpuSpec {
                            model: g.model.clone(),
                            sms: (g.sms > 0).then_some(g.sms),
                            memory_gb: (g.memory_bytes > 0).then(|| g.memory_bytes as f64 / 1e9),
                            tdp_w: (g.tdp_watts > 0).then_some(g.tdp_watts as f64),
                            throttling: false,
                        })
                        .collect(),
                };
                let load = NodeLoad {
                    qps: 0.0,
                    error_rate: 0.0,
                    healthy: n.gpus.values().all(|g| g.xids.is_empty()),
                    gpus: n
                        .gpus
                        .values()
                        .map(|g| (g.index, g.utilization as f64, g.power_mw as f64 / 1000.0))
                        .collect(),
                };
                (name.clone(), spec, load)
            })
            .collect()
    };
    for (name, spec, load) in snapshot {
        if let Err(e) = svc.upsert_node(&spec) {
            eprintln!("vagus brain: node {name} from its agent: {e}");
            continue;
        }
        let _ = svc.observe(&name, &load);
    }
}
