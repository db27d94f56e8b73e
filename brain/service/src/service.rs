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
    #[error(transparent)]
    Database(#[from] crate::database::DbError),
}

/// The HTTP API's part of the configuration.
pub struct HttpConfig {
    pub addr: SocketAddr,
    pub tokens: Tokens,
    /// The audit trail's SQLite file; `None`: a temporary file (or the
    /// shared database, [`Config::database`]).
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

/// The lease the brain's replicas contend for (see [`Service::bind`]).
pub struct Lease {
    pub client: kube::Client,
    pub election: vagus_kube::leader::Election,
    /// This replica's pod (in the lease's namespace), labelled
    /// `vagus.dev/leader=true` while it leads, so that the brain's Service
    /// sends everything to the leader; `None`: no label.
    pub pod: Option<String>,
}

/// What [`Service::start`] starts; either part may be absent, not both.
pub struct Config {
    pub http: Option<HttpConfig>,
    pub quic: Option<QuicConfig>,
    /// PostgreSQL, where the audit trail and the command ledger live
    /// instead of SQLite files, shared by the brain's replicas.
    pub database: Option<crate::database::Database>,
    /// Contend for this lease, and act only while holding it; `None`: this
    /// brain acts alone.
    pub lease: Option<Lease>,
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
    /// Whether this brain still holds the lease (`None`: no lease).
    pub leading: Option<tokio::sync::watch::Receiver<bool>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// A brain that listens but does not act yet: [`Service::bind`]'s half of
/// the start. Its HTTP API answers 503 until [`Starting::lead`] has
/// restored the core.
pub struct Starting {
    cfg: Config,
    /// Where the HTTP API listens.
    pub http_addr: Option<SocketAddr>,
    api: Arc<std::sync::OnceLock<axum::Router>>,
    leading: Option<tokio::sync::watch::Receiver<bool>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Service {
    /// Starts what `cfg` asks for on the current Tokio runtime: [`bind`],
    /// then [`Starting::lead`] (which waits for the lease, if there is one).
    ///
    /// [`bind`]: Service::bind
    pub async fn start(cfg: Config) -> Result<Service, StartError> {
        Self::bind(cfg).await?.lead().await
    }

    /// Listens for the HTTP API (every request answered 503 for now) and
    /// starts contending for the lease, if there is one.
    pub async fn bind(cfg: Config) -> Result<Starting, StartError> {
        if cfg.http.is_none() && cfg.quic.is_none() {
            return Err(StartError::Config(
                "nothing to start: give the HTTP API, the agents' QUIC endpoint, or both".into(),
            ));
        }
        if cfg.database.is_some()
            && (cfg.http.as_ref().is_some_and(|h| h.audit.is_some())
                || cfg.quic.as_ref().is_some_and(|q| q.ledger.is_some()))
        {
            return Err(StartError::Config(
                "the database holds the audit trail and the ledger: give it, or SQLite files, not both"
                    .into(),
            ));
        }
        let mut starting = Starting {
            http_addr: None,
            api: Arc::new(std::sync::OnceLock::new()),
            leading: None,
            tasks: Vec::new(),
            cfg,
        };
        if let Some(h) = &starting.cfg.http {
            if h.tokens.is_empty() {
                return Err(StartError::Config(
                    "no bearer tokens: nobody could use the API".into(),
                ));
            }
            let listener = listen(h.addr, "HTTP API").await?;
            starting.http_addr = listener.local_addr().ok();
            let slot = starting.api.clone();
            starting.tasks.push(tokio::spawn(async move {
                if let Err(e) = crate::http::serve_once_leading(listener, slot).await {
                    eprintln!("vagus brain: the HTTP API stopped: {e}");
                }
            }));
        }
        if let Some(l) = &starting.cfg.lease {
            // A replica that led before its restart may still carry the label.
            if let Some(pod) = &l.pod {
                let ns = &l.election.namespace;
                if let Err(e) = vagus_kube::leader::mark(l.client.clone(), ns, pod, false).await {
                    eprintln!("vagus brain: cannot take the leader's label off this pod: {e}");
                }
            }
            starting.leading = Some(
                vagus_kube::leader::contend(l.client.clone(), &l.election)
                    .await
                    .map_err(StartError::Config)?,
            );
        }
        Ok(starting)
    }
}

impl Starting {
    /// Waits until this brain holds the lease (at once without one), takes
    /// the shared database's next epoch (fencing out an older leader),
    /// restores the core from the audit trail, and starts everything else:
    /// the API's answers, the extender, the executor, the QUIC endpoint,
    /// the sync and the control loop.
    pub async fn lead(self) -> Result<Service, StartError> {
        let Starting {
            cfg,
            http_addr,
            api: slot,
            mut leading,
            tasks,
        } = self;
        if let Some(rx) = leading.as_mut() {
            rx.wait_for(|l| *l)
                .await
                .map_err(|_| StartError::Config("the lease's contender stopped".into()))?;
        }
        let pg = match &cfg.database {
            Some(db) => {
                let holder = cfg
                    .lease
                    .as_ref()
                    .map(|l| l.election.identity.clone())
                    .unwrap_or_else(|| {
                        format!(
                            "{}/{}",
                            std::env::var("HOSTNAME").unwrap_or_else(|_| "brain".into()),
                            std::process::id()
                        )
                    });
                Some(crate::database::Postgres::take_over(db, &holder)?)
            }
            None => None,
        };
        let mut svc = Service {
            api: None,
            agents: None,
            http_addr,
            quic_addr: None,
            scheduler_addr: None,
            restored: Restored::default(),
            leading: leading.clone(),
            tasks,
        };
        let leading = leading.unwrap_or_else(|| tokio::sync::watch::channel(true).1);
        // The lease is held while the service runs (the contender releases
        // it once every receiver is gone): one receiver lives in a task,
        // which [`Service::shutdown`] ends.
        let mut held = leading.clone();
        svc.tasks.push(tokio::spawn(async move {
            while held.changed().await.is_ok() {}
        }));
        if let Some(h) = cfg.http {
            let mut core = Core::new(h.core).map_err(|e| StartError::Config(e.to_string()))?;
            for (i, n) in h.nodes.iter().enumerate() {
                core.upsert_node(n)
                    .map_err(|e| StartError::Config(format!("node {i} ({}): {e}", n.name)))?;
            }
            let audit = match &pg {
                Some(pg) => Audit::open_postgres(pg)?,
                None => Audit::open(h.audit.as_deref())?,
            };
            let api = Arc::new(Api::new(
                core,
                audit,
                h.tokens,
                h.clock.unwrap_or_else(system_clock),
            ));
            svc.restored = api.restore()?;
            // From here on the API answers.
            let _ = slot.set(crate::http::router(api.clone()));
            // On Kubernetes: the reflectors and the executor.
            let mut pod_view = None;
            if let Some(k) = h.kubernetes {
                let (view, tasks) = crate::kube_exec::KubeExecutor::reflect(&k.client);
                svc.tasks.extend(tasks);
                pod_view = Some(view.pods.clone());
                let applier = vagus_kube::executor::Applier::new(k.client, k.grace_s);
                let ex = crate::kube_exec::KubeExecutor::new(applier, view, leading.clone());
                svc.tasks.push(tokio::spawn(ex.run(api.clone(), k.every)));
            }
            if let Some(x) = h.scheduler {
                let listener = listen(x.addr, "the scheduler extender").await?;
                svc.scheduler_addr = listener.local_addr().ok();
                let ext = Arc::new(crate::http::scheduler::Extender::new(
                    api.clone(),
                    x.binder,
                    Some(leading.clone()),
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
                postgres: pg.clone(),
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
        // Everything runs: the brain's Service may send requests here.
        if let Some(l) = &cfg.lease
            && let Some(pod) = &l.pod
        {
            let ns = &l.election.namespace;
            if let Err(e) = vagus_kube::leader::mark(l.client.clone(), ns, pod, true).await {
                eprintln!(
                    "vagus brain: cannot label this pod the leader's (its Service may not reach it): {e}"
                );
            }
        }
        Ok(svc)
    }
}

impl Service {
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

/// A TCP listener on `addr` for `what`; the error names both.
async fn listen(addr: SocketAddr, what: &str) -> Result<tokio::net::TcpListener, StartError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Io {
            what: format!("{what} on {addr}: cannot listen"),
            source,
        })
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
