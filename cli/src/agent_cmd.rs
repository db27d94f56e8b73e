//! `vagus agent`: the node agent's flags, parsed into
//! `vagus_agent::run::Config`. It collects a window every 1/`--hz` s from
//! the eBPF probes, the shim's segments and NVML; streams the windows to the
//! brain when `--brain` is given and applies its commands; serves
//! `/metrics` (Prometheus), `/snapshot` (JSON) and `/healthz` on
//! `--metrics-addr`.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use vagus_agent::node::NodeConfig;
use vagus_agent::run::{BrainLink, Config};

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// This node's name (with `--brain`, its certificate must carry it).
    #[arg(long, env = "VAGUS_NODE")]
    pub node: Option<String>,
    /// The brain's QUIC address, HOST:PORT (an IP address or a host name);
    /// without it the agent collects and serves metrics only.
    #[arg(
        long,
        env = "VAGUS_BRAIN",
        requires = "certs",
        value_name = "HOST:PORT"
    )]
    pub brain: Option<String>,
    /// Directory from `vagus certs init`.
    #[arg(long, env = "VAGUS_CERTS_DIR")]
    pub certs: Option<PathBuf>,
    /// The name on the brain's certificate (checked whatever --brain
    /// names).
    #[arg(long, default_value = "brain")]
    pub brain_name: String,
    /// Windows per second.
    #[arg(long, env = "VAGUS_AGENT_HZ", default_value_t = 10.0)]
    pub hz: f64,
    /// Bytes of windows kept until the brain acknowledges them (all of them
    /// while it is unreachable); the oldest are dropped beyond.
    #[arg(long, default_value_t = vagus_agent::uplink::DEFAULT_BUFFER_BYTES)]
    pub buffer_bytes: usize,
    /// Serve /metrics, /snapshot and /healthz here (HOST:PORT).
    #[arg(long, env = "VAGUS_METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
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
    /// An inference server's Prometheus endpoint to read every window
    /// (vLLM, SGLang, TGI, Triton or `vagus serve`): PORT (on loopback),
    /// HOST:PORT, either with /PATH (default /metrics), or an http:// URL.
    /// Repeat for each server.
    #[arg(
        long = "serving",
        env = "VAGUS_SERVING",
        value_delimiter = ',',
        value_name = "ENDPOINT"
    )]
    pub serving: Vec<String>,
    /// The shim preloaded into the replicas the brain has this node run
    /// (default: libvagus_shim.so beside this executable).
    #[arg(long, env = "VAGUS_SHIM")]
    pub shim: Option<PathBuf>,
    /// Where the agent keeps the journal of the brain's commands it applied,
    /// so that a restarted agent applies none twice (default: /var/lib/vagus
    /// for root, else $XDG_STATE_HOME/vagus).
    #[arg(long, env = "VAGUS_AGENT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

fn hostname() -> String {
    // Lowercased, as Kubernetes names a node after its host.
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_ascii_lowercase())
        .unwrap_or_else(|_| "localhost".into())
}

pub fn agent(args: AgentArgs) -> Result<()> {
    let node = args.node.clone().unwrap_or_else(hostname);
    // The brain takes a node by this name, and it becomes a Pod's
    // `nodeName`: Kubernetes' DNS-1123 subdomain rules.
    vagus_decision::rules::DNS_SUBDOMAIN
        .check("--node", &node)
        .map_err(|e| anyhow::anyhow!("{e} (the name is {node:?})"))?;
    let brain = match (&args.brain, &args.certs) {
        (Some(given), Some(certs)) => Some({
            let addr = crate::addr::resolve("--brain", given)?;
            BrainLink {
                addr,
                shown: crate::addr::shown(given, addr),
                brain_name: args.brain_name.clone(),
                certs: certs.clone(),
                buffer_bytes: args.buffer_bytes,
                state_dir: args
                    .state_dir
                    .clone()
                    .unwrap_or_else(vagus_agent::run::default_state_dir),
            }
        }),
        _ => None,
    };
    let metrics_addr = match &args.metrics_addr {
        Some(a) => Some(crate::addr::resolve("--metrics-addr", a)?),
        None => None,
    };
    let cfg = Config {
        node: NodeConfig {
            node,
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
            serving: args
                .serving
                .iter()
                .map(|s| {
                    vagus_agent::serving::Target::parse(s)
                        .map_err(|e| anyhow::anyhow!("--serving: {e}"))
                })
                .collect::<Result<_>>()?,
            exec: None,
        },
        node_given: args.node.is_some(),
        brain,
        hz: args.hz,
        metrics_addr,
        shim: args.shim.clone(),
    };
    Ok(vagus_agent::run::run(cfg)?)
}
