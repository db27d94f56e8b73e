//! `vagus agent`: the node agent. Collects a window every 1/`--hz` s from
//! the eBPF probes, the shim's segments and NVML; streams the windows to the
//! brain when `--brain` is given and applies its commands; serves
//! `/metrics` (Prometheus), `/snapshot` (JSON) and `/healthz` on
//! `--metrics-addr`.

use anyhow::{Context, Result};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vagus_agent::node::{Node, NodeConfig};
use vagus_proto::wire::{Hello, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use vagus_transport::agent::{AgentConfig, AgentStats};
use vagus_transport::tls::Identity;

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// This node's name (with `--brain`, its certificate must carry it).
    #[arg(long, env = "VAGUS_NODE")]
    pub node: Option<String>,
    /// The brain's QUIC address; without it the agent collects and serves
    /// metrics only.
    #[arg(long, env = "VAGUS_BRAIN", requires = "certs")]
    pub brain: Option<SocketAddr>,
    /// Directory from `vagus certs init`.
    #[arg(long, env = "VAGUS_CERTS_DIR")]
    pub certs: Option<PathBuf>,
    /// The name on the brain's certificate.
    #[arg(long, default_value = "brain")]
    pub brain_name: String,
    /// Windows per second.
    #[arg(long, env = "VAGUS_AGENT_HZ", default_value_t = 10.0)]
    pub hz: f64,
    /// Bytes of windows kept until the brain acknowledges them (all of them
    /// while it is unreachable); the oldest are dropped beyond.
    #[arg(long, default_value_t = vagus_transport::agent::DEFAULT_BUFFER_BYTES)]
    pub buffer_bytes: usize,
    /// Serve /metrics, /snapshot and /healthz here.
    #[arg(long, env = "VAGUS_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// The shim's segment directory.
    #[arg(long, env = "VAGUS_SHM_DIR", default_value = "/run/vagus")]
    pub segments: PathBuf,
    /// More libcuda files to probe (beyond libcuda.so.1 on the loader's
    /// path and those GPU processes map).
    #[arg(long, env = "VAGUS_LIBCUDA", value_delimiter = ',')]
    pub libcuda: Vec<PathBuf>,
    /// Do not load the eBPF probes.
    #[arg(long)]
    pub no_bpf: bool,
    /// Also probe kernel launches (a trap per launch; off by default).
    #[arg(long)]
    pub launch_probes: bool,
    /// MPS pipe directories, one per GPU in index order (one alone serves
    /// every GPU).
    #[arg(long, env = "VAGUS_MPS_PIPE_DIRS", value_delimiter = ',')]
    pub mps_pipe_dirs: Vec<PathBuf>,
    /// The MPS control tool.
    #[arg(
        long,
        env = "VAGUS_MPS_CONTROL",
        default_value = "nvidia-cuda-mps-control"
    )]
    pub mps_control: PathBuf,
    /// Start the MPS control daemons that are not running.
    #[arg(long)]
    pub mps_start: bool,
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

fn lock(n: &Mutex<Node>) -> std::sync::MutexGuard<'_, Node> {
    n.lock().unwrap_or_else(|e| e.into_inner())
}

/// Answers one HTTP/1.1 request on `stream` and closes it.
async fn serve_http(mut stream: tokio::net::TcpStream, node: Arc<Mutex<Node>>, host: Arc<str>) {
    let mut buf = vec![0u8; 8192];
    let mut n = 0;
    // Read the request head (bounded; the body, if any, is ignored).
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf[n..])).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => return,
            Ok(Ok(k)) => n += k,
        }
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") || n == buf.len() {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let mut first = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    // A bug in rendering answers 500; it never takes the agent down.
    let render = |f: &dyn Fn(&Node) -> String| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&lock(&node))))
            .map_err(|_| "internal error while rendering\n".to_string())
    };
    let (status, kind, body) = match (method, path) {
        ("GET", "/metrics") => match render(&|n| vagus_agent::metrics::render(n, &host)) {
            Ok(b) => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", b),
            Err(e) => ("500 Internal Server Error", "text/plain", e),
        },
        ("GET", "/snapshot") => match render(&|n| n.snapshot().to_string()) {
            Ok(b) => ("200 OK", "application/json", b),
            Err(e) => ("500 Internal Server Error", "text/plain", e),
        },
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            format!("no such path: {path}\n"),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            format!("{method} is not supported; use GET\n"),
        ),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes()).await;
    let _ = stream.shutdown().await;
}

pub fn agent(args: AgentArgs) -> Result<()> {
    anyhow::ensure!(
        args.hz > 0.0 && args.hz <= 1000.0,
        "--hz {} must be in (0, 1000]",
        args.hz
    );
    let node_name = args.node.clone().unwrap_or_else(hostname);
    let identity = match (&args.brain, &args.certs) {
        (Some(_), Some(dir)) => Some(Identity::load(dir, &node_name)?),
        _ => None,
    };
    let node = Node::new(NodeConfig {
        node: node_name.clone(),
        segment_dir: Some(args.segments.clone()),
        libcuda: args.libcuda.clone(),
        bpf: !args.no_bpf,
        launch_probes: args.launch_probes,
        mps: args
            .mps_pipe_dirs
            .iter()
            .map(|d| vagus_agent::mps::MpsControl {
                binary: args.mps_control.clone(),
                pipe_dir: d.clone(),
                log_dir: None,
            })
            .collect(),
        mps_start: args.mps_start,
    });
    for note in &node.notes {
        eprintln!("vagus agent: {note}");
    }
    let inventory = node.gpus().map(|g| g.inventory()).unwrap_or_default();
    let node = Arc::new(Mutex::new(node));
    let period = Duration::from_secs_f64(1.0 / args.hz);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
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
            .context("cannot start the collector thread")?;
        if let Some(addr) = args.metrics_addr {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            eprintln!(
                "vagus agent: metrics on http://{}/metrics",
                listener.local_addr()?
            );
            let host: Arc<str> = node_name.clone().into();
            let serving = node.clone();
            tokio::spawn(async move {
                while let Ok((s, _)) = listener.accept().await {
                    tokio::spawn(serve_http(s, serving.clone(), host.clone()));
                }
            });
        }
        match (args.brain, identity) {
            (Some(brain), Some(identity)) => {
                let hello = Hello {
                    min_version: MIN_PROTOCOL_VERSION,
                    max_version: PROTOCOL_VERSION,
                    node: node_name.clone(),
                    // Unique per run: the brain tells resent windows from a
                    // restarted agent's.
                    session: unix_ns() ^ ((std::process::id() as u64) << 32),
                    agent_version: env!("CARGO_PKG_VERSION").into(),
                    gpus: inventory,
                };
                let cfg = AgentConfig {
                    brain,
                    brain_name: args.brain_name.clone(),
                    identity,
                    hello,
                    buffer_bytes: args.buffer_bytes,
                    backoff_min: Duration::from_millis(100),
                    backoff_max: Duration::from_secs(5),
                    endpoint: None,
                };
                eprintln!(
                    "vagus agent {node_name}: streaming to {brain} at {} Hz",
                    args.hz
                );
                let stats = Arc::new(Mutex::new(AgentStats::default()));
                let applier = node.clone();
                vagus_transport::agent::run(cfg, rx, move |c| lock(&applier).apply(c), stats).await;
            }
            _ => {
                eprintln!("vagus agent {node_name}: collecting (no --brain)");
                let mut rx = rx;
                while rx.recv().await.is_some() {}
            }
        }
        Ok(())
    })
}
