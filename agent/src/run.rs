//! The agent as a process: a collector thread producing a window every
//! period, the HTTP endpoints, and the uplink to the brain that carries the
//! windows and applies the brain's commands. `vagus agent` is a thin shell
//! over [`run`].

use crate::journal::Journal;
use crate::node::{Node, NodeConfig};
use crate::uplink::{LinkEvent, UplinkConfig, UplinkStats};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vagus_link::tls::Identity;
use vagus_proto::wire::{Hello, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};

/// Where the brain is and how to prove who this node is.
#[derive(Clone, Debug)]
pub struct BrainLink {
    pub addr: SocketAddr,
    /// The brain as messages name it: the address as given (with what a
    /// host name resolved to), e.g. `brain.example:7443 (10.0.0.5:7443)`.
    pub shown: String,
    /// The name the brain's certificate carries.
    pub brain_name: String,
    /// The directory `vagus certs init` wrote.
    pub certs: PathBuf,
    /// Bytes of windows kept until the brain acknowledges them.
    pub buffer_bytes: usize,
    /// Where the journal of applied commands lives (see
    /// [`crate::journal`]); [`default_state_dir`] by default.
    pub state_dir: PathBuf,
}

pub struct Config {
    pub node: NodeConfig,
    /// Whether the node's name was given (rather than taken from the
    /// host's): only for the advice when its certificate is missing.
    pub node_given: bool,
    pub brain: Option<BrainLink>,
    /// Windows per second.
    pub hz: f64,
    /// Serve `/metrics`, `/snapshot` and `/healthz` here.
    pub metrics_addr: Option<SocketAddr>,
    /// `libvagus_shim.so` for the replicas the brain has this node run;
    /// `None`: the one beside this executable, if there is one.
    pub shim: Option<PathBuf>,
}

/// The shim beside the running executable (`target/…/libvagus_shim.so`
/// next to `vagus`), if it is there.
fn shim_beside_exe() -> Option<PathBuf> {
    let p = std::env::current_exe()
        .ok()?
        .parent()?
        .join("libvagus_shim.so");
    p.exists().then_some(p)
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("--hz {0} must be in (0, 1000]")]
    Hz(f64),
    #[error("no certificate for node {node} in {dir} ({have}); {advice}")]
    NoCertificate {
        node: String,
        dir: String,
        have: String,
        advice: String,
    },
    #[error("{0}")]
    Link(#[from] vagus_link::LinkError),
    #[error("{0}")]
    Journal(#[from] crate::journal::JournalError),
    #[error("the link to the brain at {brain} stopped: {error}")]
    Uplink { brain: String, error: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// The node's identity from `dir`, or an error that says which node it
/// looked for, what the directory has, and the ways out.
pub fn identity(dir: &std::path::Path, node: &str, given: bool) -> Result<Identity, RunError> {
    let (cert, _) = vagus_link::certs::paths(dir, node);
    if !cert.exists() {
        let names = vagus_link::certs::names(dir);
        let have = if names.is_empty() {
            "it has no certificates".to_string()
        } else {
            format!("it has {}", names.join(", "))
        };
        let issue = format!(
            "issue one with `vagus certs init --dir {} --agents {node}`",
            dir.display()
        );
        let which = if names.is_empty() {
            ""
        } else {
            " for one of those"
        };
        let advice = if given {
            format!("check --node, or {issue}")
        } else {
            format!("{node} is this host's name: give --node NAME{which}, or {issue}")
        };
        return Err(RunError::NoCertificate {
            node: node.to_string(),
            dir: dir.display().to_string(),
            have,
            advice,
        });
    }
    Ok(Identity::load(dir, node)?)
}

/// Where the agent keeps its state by default: `/var/lib/vagus` for root,
/// else `$XDG_STATE_HOME/vagus` (`~/.local/state/vagus`).
pub fn default_state_dir() -> PathBuf {
    // SAFETY: geteuid only reads the process's credentials.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/vagus");
    }
    match std::env::var_os("XDG_STATE_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("vagus"),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| ".".into()))
            .join(".local/state/vagus"),
    }
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The host's CPUs online (milli-cores) and memory (MiB, `MemTotal`);
/// `None` for what cannot be read.
pub fn host_resources() -> (Option<u64>, Option<u64>) {
    // SAFETY: sysconf only reads a system value.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let cpu = (cpus > 0).then(|| cpus as u64 * 1000);
    let mem = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let kib: u64 = m
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()?;
        Some(kib / 1024)
    });
    (cpu, mem)
}

/// What the agent says about its connection to the brain: each
/// connection, each lost connection, and an outage once — when its first
/// attempt fails, and again only if the reason changes — not every retry.
pub struct LinkLog {
    brain: String,
    /// The reason last reported during the current outage.
    outage: Option<String>,
}

impl LinkLog {
    /// `brain`: how to name it (see [`BrainLink::shown`]).
    pub fn new(brain: &str) -> LinkLog {
        LinkLog {
            brain: brain.to_string(),
            outage: None,
        }
    }

    /// The line to print for `e`, if any (without the `vagus agent: `).
    pub fn line(&mut self, e: &LinkEvent) -> Option<String> {
        let b = &self.brain;
        match e {
            LinkEvent::Connected { ledger, .. } => {
                self.outage = None;
                Some(format!(
                    "connected to the brain at {b} (ledger {ledger:016x})"
                ))
            }
            LinkEvent::Lost { error } => {
                self.outage = None;
                Some(format!(
                    "lost the connection to the brain at {b}: {error}; reconnecting"
                ))
            }
            LinkEvent::Unreachable { error, retry_in } => {
                if self.outage.as_ref() == Some(error) {
                    return None;
                }
                self.outage = Some(error.clone());
                Some(format!(
                    "cannot reach the brain at {b}: {error}; retrying in {:.1} s",
                    retry_in.as_secs_f64()
                ))
            }
        }
    }
}

/// The node, even if a thread panicked holding it (its state stays usable).
pub(crate) fn lock(n: &Mutex<Node>) -> std::sync::MutexGuard<'_, Node> {
    n.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the agent until it is killed: collects, serves, streams.
pub fn run(cfg: Config) -> Result<(), RunError> {
    if !(cfg.hz > 0.0 && cfg.hz <= 1000.0) {
        return Err(RunError::Hz(cfg.hz));
    }
    let name = cfg.node.node.clone();
    let (identity, journal) = match &cfg.brain {
        Some(b) => (
            Some(identity(&b.certs, &name, cfg.node_given)?),
            Some(Journal::open(&b.state_dir, &name)?),
        ),
        None => (None, None),
    };
    let mut node_cfg = cfg.node;
    if let Some(b) = &cfg.brain {
        // Replicas run where a brain can ask for them.
        node_cfg.exec = Some(crate::replicas::ExecConfig {
            state_dir: b.state_dir.join(format!("replicas-{name}")),
            shim: cfg.shim.clone().or_else(shim_beside_exe),
            segment_dir: node_cfg.segment_dir.clone(),
            mps_pipe_dirs: Vec::new(),
            cgroup_root: crate::cgroup::v2_root(),
        });
    }
    let mut node = Node::new(node_cfg);
    for note in &node.notes {
        eprintln!("vagus agent: {note}");
    }
    let mut inventory = node.gpus().map(|g| g.inventory()).unwrap_or_default();
    let mps = node.mps_states();
    for g in &mut inventory {
        g.mps = mps.get(g.index as usize).cloned().flatten();
    }
    let (cpu_milli, memory_mib) = host_resources();
    let node = Arc::new(Mutex::new(node));
    let period = Duration::from_secs_f64(1.0 / cfg.hz);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| RunError::Io {
            what: "cannot start the async runtime".into(),
            source,
        })?;
    rt.block_on(async move {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        // The collector: one window per period, on its own thread.
        let collector = node.clone();
        std::thread::Builder::new()
            .name("vagus-collect".into())
            .spawn(move || {
                let mut next = Instant::now() + period;
                loop {
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                    next += period;
                    let w = lock(&collector).tick(unix_ns(), period.as_nanos() as u64);
                    // Without a brain nobody takes the windows: keep none.
                    if tx.try_send(w).is_err() && tx.is_closed() {
                        return;
                    }
                }
            })
            .map_err(|source| RunError::Io {
                what: "cannot start the collector thread".into(),
                source,
            })?;
        crate::scrape::spawn(node.clone(), period).map_err(|source| RunError::Io {
            what: "cannot start the scraping thread".into(),
            source,
        })?;
        if let Some(addr) = cfg.metrics_addr {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| RunError::Io {
                    what: format!("cannot listen on {addr}"),
                    source,
                })?;
            if let Ok(at) = listener.local_addr() {
                eprintln!("vagus agent: metrics on http://{at}/metrics");
            }
            let (serving, host) = (node.clone(), name.clone());
            tokio::spawn(async move {
                if let Err(e) = crate::http::serve(listener, serving, &host).await {
                    eprintln!("vagus agent: the HTTP endpoints stopped: {e}");
                }
            });
        }
        match (cfg.brain, identity, journal) {
            (Some(brain), Some(identity), Some(journal)) => {
                let hello = Hello {
                    min_version: MIN_PROTOCOL_VERSION,
                    max_version: PROTOCOL_VERSION,
                    node: name.clone(),
                    // Unique per run: the brain tells resent windows from a
                    // restarted agent's.
                    session: unix_ns() ^ ((std::process::id() as u64) << 32),
                    agent_version: env!("CARGO_PKG_VERSION").into(),
                    cpu_milli,
                    memory_mib,
                    gpus: inventory,
                };
                let up = UplinkConfig {
                    brain: brain.addr,
                    brain_name: brain.brain_name,
                    identity,
                    hello,
                    buffer_bytes: brain.buffer_bytes,
                    backoff_min: Duration::from_millis(100),
                    backoff_max: Duration::from_secs(5),
                    endpoint: None,
                    journal,
                };
                eprintln!(
                    "vagus agent {name}: streaming to {} at {} Hz",
                    brain.shown, cfg.hz
                );
                let stats = Arc::new(Mutex::new(UplinkStats::default()));
                let applier = node.clone();
                let mut log = LinkLog::new(&brain.shown);
                crate::uplink::run_reporting(
                    up,
                    rx,
                    move |c| lock(&applier).apply(c),
                    stats.clone(),
                    move |e| {
                        if let Some(l) = log.line(&e) {
                            eprintln!("vagus agent: {l}");
                        }
                    },
                )
                .await;
                // The windows never stop: it returns only when it could not
                // start.
                let error = stats
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "it returned".into());
                return Err(RunError::Uplink {
                    brain: brain.shown,
                    error,
                });
            }
            _ => {
                eprintln!("vagus agent {name}: collecting (no --brain)");
                let mut rx = rx;
                while rx.recv().await.is_some() {}
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_reported_once_and_again_only_when_its_reason_changes() {
        let mut log = LinkLog::new("brain.example:7443 (10.0.0.5:7443)");
        let down = |error: &str| LinkEvent::Unreachable {
            error: error.into(),
            retry_in: Duration::from_millis(1500),
        };
        assert_eq!(
            log.line(&down("connection: timed out")).as_deref(),
            Some(
                "cannot reach the brain at brain.example:7443 (10.0.0.5:7443): \
                 connection: timed out; retrying in 1.5 s"
            )
        );
        assert_eq!(log.line(&down("connection: timed out")), None);
        assert_eq!(log.line(&down("connection: timed out")), None);
        assert!(log.line(&down("refused by the brain: who")).is_some());
        let up = LinkEvent::Connected {
            ledger: 0x1ed9e5,
            version: 1,
        };
        assert_eq!(
            log.line(&up).as_deref(),
            Some(
                "connected to the brain at brain.example:7443 (10.0.0.5:7443) (ledger 00000000001ed9e5)"
            )
        );
        let lost = LinkEvent::Lost {
            error: "connection: timed out".into(),
        };
        assert!(log.line(&lost).unwrap().starts_with("lost the connection"));
        assert!(
            log.line(&down("connection: timed out")).is_some(),
            "a new outage"
        );
    }
}
