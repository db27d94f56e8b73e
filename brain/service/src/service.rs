//! The brain as one running service: the HTTP API over the decision core
//! (with its audit trail), the agents' QUIC endpoint (with its command
//! ledger), and the wiring that brings what agents report into the core.
//! `vagus brain`, the black-box tests and the benches all start it through
//! [`Service::start`].

use crate::agents::ledger::unix_ns;
use crate::agents::{Agents, AgentsOptions};
use crate::audit::Audit;
use crate::http::auth::Tokens;
use crate::http::{Api, Clock, Restored, system_clock};
use crate::{failover, sync};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use vagus_decision::{Config as CoreConfig, Core, NodeSpec};
use vagus_link::tls::Identity;

/// How often nodes are checked for failure (their agents' silence).
const FAILOVER_EVERY: Duration = Duration::from_millis(100);

/// Why the service could not start. Each names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Link(#[from] vagus_link::LinkError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
}

/// The HTTP API's part of the configuration.
pub struct HttpConfig {
    pub addr: SocketAddr,
    pub tokens: Tokens,
    /// The audit trail's SQLite file; `None`: a temporary file.
    pub audit: Option<PathBuf>,
    pub core: CoreConfig,
    /// Nodes declared up front, in this order (the core's node order).
    pub nodes: Vec<NodeSpec>,
    /// The core's clock (ms); `None`: the system's.
    pub clock: Option<Clock>,
    /// kube-scheduler's extender, on a listener of its own.
    pub scheduler: Option<SchedulerConfig>,
    /// The Kubernetes executor (and the lease that says whether this
    /// brain may act), where the brain runs on Kubernetes.
    pub kubernetes: Option<KubeConfig>,
}

/// Where the brain runs on Kubernetes.
pub struct KubeConfig {
    pub client: kube::Client,
    /// Contend for this lease; `None`: this brain acts alone.
    pub election: Option<vagus_kube::leader::Election>,
    /// Seconds a deleted pod has to finish its requests.
    pub grace_s: u32,
    /// How often the executor reconciles.
    pub every: Duration,
}

/// kube-scheduler's extender (see [`crate::http::scheduler`]).
pub struct SchedulerConfig {
    /// Where it listens: only the scheduler should reach it (no tokens).
    pub addr: SocketAddr,
    /// The API server, for its bind verb; `None`: binds are refused.
    pub binder: Option<vagus_kube::binder::Binder>,
}

/// The agents' part: where to listen and with which identity.
pub struct QuicConfig {
    pub addr: SocketAddr,
    pub identity: Identity,
    /// The command ledger's SQLite file; `None`: in memory.
    pub ledger: Option<PathBuf>,
    /// Windows of histograms kept per process.
    pub rolling_windows: usize,
}

/// What [`Service::start`] starts; either part may be absent, not both.
pub struct Config {
    pub http: Option<HttpConfig>,
    pub quic: Option<QuicConfig>,
    /// How often what agents report is brought into the core.
    pub sync_every: Duration,
    /// Where the control loop appends each tick's observation and actions
    /// (JSON lines, for `vagus control replay`); `None`: nowhere.
    pub control_record: Option<PathBuf>,
}

/// A running brain. Dropping it leaves its tasks running on the runtime;
/// [`Service::shutdown`] stops them.
pub struct Service {
    pub api: Option<Arc<Api>>,
    pub agents: Option<Arc<Agents>>,
    pub http_addr: Option<SocketAddr>,
    pub quic_addr: Option<SocketAddr>,
    /// The scheduler extender's address, when it was asked for.
    pub scheduler_addr: Option<SocketAddr>,
    /// What the audit trail gave back at start.
    pub restored: Restored,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Service {
    /// Starts what `cfg` asks for on the current Tokio runtime: the core
    /// with its nodes, the audit trail and what it restores, the HTTP
    /// listener, the QUIC endpoint, and the sync from agents to the core.
    pub async fn start(cfg: Config) -> Result<Service, StartError> {
        if cfg.http.is_none() && cfg.quic.is_none() {
            return Err(StartError::Config(
                "nothing to start: give the HTTP API, the agents' QUIC endpoint, or both".into(),
            ));
        }
        let mut svc = Service {
            api: None,
            agents: None,
            http_addr: None,
            quic_addr: None,
            scheduler_addr: None,
            restored: Restored::default(),
            tasks: Vec::new(),
        };
        if let Some(h) = cfg.http {
            if h.tokens.is_empty() {
                return Err(StartError::Config(
                    "no bearer tokens: nobody could use the API".into(),
                ));
            }
            let mut core = Core::new(h.core).map_err(|e| StartError::Config(e.to_string()))?;
            for (i, n) in h.nodes.iter().enumerate() {
                core.upsert_node(n)
                    .map_err(|e| StartError::Config(format!("node {i} ({}): {e}", n.name)))?;
            }
            let audit = Audit::open(h.audit.as_deref())?;
            let api = Arc::new(Api::new(
                core,
                audit,
                h.tokens,
                h.clock.unwrap_or_else(system_clock),
            ));
            svc.restored = api.restore()?;
            let listener = tokio::net::TcpListener::bind(h.addr)
                .await
                .map_err(|source| StartError::Io {
                    what: format!("HTTP API on {}: cannot listen", h.addr),
                    source,
                })?;
            svc.http_addr = listener.local_addr().ok();
            let serving = api.clone();
            svc.tasks.push(tokio::spawn(async move {
                if let Err(e) = crate::http::serve(listener, serving).await {
                    eprintln!("vagus brain: the HTTP API stopped: {e}");
                }
            }));
            // On Kubernetes: who leads, the reflectors, the executor.
            let (mut leading, mut pod_view) = (None, None);
            if let Some(k) = h.kubernetes {
                let rx = match &k.election {
                    Some(e) => vagus_kube::leader::contend(k.client.clone(), e)
                        .await
                        .map_err(StartError::Config)?,
                    None => tokio::sync::watch::channel(true).1,
                };
                let (pods, nodes, tasks) = crate::kube_exec::KubeExecutor::reflect(&k.client);
                svc.tasks.extend(tasks);
                pod_view = Some(pods.clone());
                let applier = vagus_kube::executor::Applier::new(k.client, k.grace_s);
                let ex = crate::kube_exec::KubeExecutor::new(applier, pods, nodes, rx.clone());
                svc.tasks.push(tokio::spawn(ex.run(api.clone(), k.every)));
                leading = Some(rx);
            }
            if let Some(x) = h.scheduler {
                let listener = tokio::net::TcpListener::bind(x.addr)
                    .await
                    .map_err(|source| StartError::Io {
                        what: format!("the scheduler extender on {}: cannot listen", x.addr),
                        source,
                    })?;
                svc.scheduler_addr = listener.local_addr().ok();
                let ext = Arc::new(crate::http::scheduler::Extender::new(
                    api.clone(),
                    x.binder,
                    leading.clone(),
                    pod_view.clone(),
                ));
                svc.tasks.push(tokio::spawn(async move {
                    if let Err(e) = crate::http::scheduler::serve(listener, ext).await {
                        eprintln!("vagus brain: the scheduler extender stopped: {e}");
                    }
                }));
            }
            svc.api = Some(api);
        }
        if let Some(q) = cfg.quic {
            let opts = AgentsOptions {
                ledger: q.ledger,
                rolling_windows: q.rolling_windows,
            };
            let agents = Arc::new(Agents::bind(q.addr, &q.identity, &opts)?);
            svc.quic_addr = Some(agents.local_addr());
            let serving = agents.clone();
            svc.tasks
                .push(tokio::spawn(async move { serving.run().await }));
            if let Some(api) = &svc.api {
                let (a, synced) = (agents.clone(), api.clone());
                let every = cfg.sync_every;
                svc.tasks.push(tokio::spawn(async move {
                    // Failures are looked for more often than the sync runs;
                    // one found runs the sync (and so the executor) at once.
                    let mut tick = tokio::time::interval(FAILOVER_EVERY.min(every));
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                    let mut sync = sync::Sync::default();
                    let mut synced_at: Option<std::time::Instant> = None;
                    loop {
                        tick.tick().await;
                        let changed = failover::round(&a, &synced, unix_ns()).await;
                        if changed || synced_at.is_none_or(|t| t.elapsed() >= every) {
                            synced_at = Some(std::time::Instant::now());
                            sync.round(&a, &synced).await;
                        }
                    }
                }));
                // The control loop, unless the core's settings turn it off.
                let (control, scale, reconfig) = api.with_core(|c| {
                    let k = c.config();
                    (k.control.clone(), k.scale.clone(), k.reconfig.clone())
                });
                if control.tick_ms > 0 {
                    let l = crate::control::Loop::new(
                        control,
                        scale,
                        reconfig,
                        api,
                        cfg.control_record.as_deref(),
                    )
                    .map_err(|source| StartError::Io {
                        what: format!(
                            "the control record {}",
                            cfg.control_record
                                .as_deref()
                                .map(|p| p.display().to_string())
                                .unwrap_or_default()
                        ),
                        source,
                    })?;
                    let (a, api) = (agents.clone(), api.clone());
                    svc.tasks.push(tokio::spawn(l.run(a, api)));
                }
            }
            svc.agents = Some(agents);
        }
        Ok(svc)
    }

    /// Stops the HTTP listener, the sync and the QUIC endpoint (whose
    /// agents are told at once).
    pub async fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(a) = &self.agents {
            a.shutdown();
            a.wait_idle().await;
        }
    }
}

/// The decision core's configuration from a TOML file (classes, weights,
/// gate, breaker, quotas, manifest…; the defaults without one), with the
/// workload mix of a trace of past requests (an openb pod list) when
/// `mix_from` names one.
pub fn load_core_config(
    path: Option<&Path>,
    mix_from: Option<&Path>,
) -> Result<CoreConfig, StartError> {
    let mut cfg = match path {
        Some(p) => {
            let text = read(p)?;
            toml::from_str(&text)
                .map_err(|e| StartError::Config(format!("{}: {e}", p.display())))?
        }
        None => CoreConfig::default(),
    };
    if let Some(m) = mix_from {
        let what = m.display().to_string();
        let pods = vagus_replay::openb::pods(&what, &read(m)?)
            .map_err(|e| StartError::Config(e.to_string()))?;
        if pods.is_empty() {
            return Err(StartError::Config(format!(
                "{what}: no pods to learn a mix from"
            )));
        }
        cfg.mix = vagus_replay::vagus::mix(&pods);
    }
    let what = path
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "the configuration".into());
    cfg.validate()
        .map_err(|e| StartError::Config(format!("{what}: invalid configuration: {e}")))?;
    Ok(cfg)
}

/// Nodes from an openb node list (`.csv`: `sn,cpu_milli,memory_mib,gpu,model`)
/// or a JSON array of node specs (`.json`), in the file's order.
pub fn load_nodes(path: &Path) -> Result<Vec<NodeSpec>, StartError> {
    let text = read(path)?;
    let what = path.display().to_string();
    if path.extension().is_some_and(|e| e == "json") {
        return serde_json::from_str(&text)
            .map_err(|e| StartError::Config(format!("{what}: not a JSON array of nodes: {e}")));
    }
    let nodes =
        vagus_replay::openb::nodes(&what, &text).map_err(|e| StartError::Config(e.to_string()))?;
    Ok(nodes.iter().map(vagus_replay::live::node_spec).collect())
}

fn read(p: &Path) -> Result<String, StartError> {
    std::fs::read_to_string(p).map_err(|source| StartError::Io {
        what: format!("reading {}", p.display()),
        source,
    })
}
