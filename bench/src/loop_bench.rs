//! `vagus bench loop`: four `vagus serve` workloads on one GPU under each
//! sharing policy, the same arrivals every time.
//!
//! Two latency-sensitive servers (`chat-a`, `chat-b`) are driven open loop
//! by the Azure conversation trace, time-compressed, `chat-b` from a later
//! point of it so that their bursts differ, and `chat-b`'s arrivals tripled
//! halfway through; two best-effort servers (`batch-a`, `batch-b`) are
//! kept busy by closed-loop clients. The policies:
//!
//! - `exclusive`: each on a GPU of its own (the reference latencies);
//! - `time-sliced`: all on one GPU, nothing to keep them apart;
//! - `static-equal`: an MPS share of 100/4 % each;
//! - `static-class`: the MPS shares Vagus's classification gives them;
//! - `static-budget`: a fixed SM-time budget of 1/4 each (the shim's,
//!   in force from the start, as HAMi's limits are);
//! - `vagus`: placed by the brain, the control loop retuning budgets.
//!
//! Every process runs from the `vagus` executable, on gpusim's driver where
//! the configuration names its libraries (or the real one).

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vagus_cluster::{Brain, Cluster, Host, free_port, healthy};
use vagus_serve::client::{Arrivals, BenchConfig, Planned};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Exclusive,
    TimeSliced,
    StaticEqual,
    StaticClass,
    StaticBudget,
    Vagus,
}

impl Policy {
    /// In the order `all` runs them: `exclusive` first, for the latencies
    /// alone the others are compared with (and the SLOs derived from).
    pub const ALL: [Policy; 6] = [
        Policy::Exclusive,
        Policy::TimeSliced,
        Policy::StaticEqual,
        Policy::StaticClass,
        Policy::StaticBudget,
        Policy::Vagus,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Policy::Exclusive => "exclusive",
            Policy::TimeSliced => "time-sliced",
            Policy::StaticEqual => "static-equal",
            Policy::StaticClass => "static-class",
            Policy::StaticBudget => "static-budget",
            Policy::Vagus => "vagus",
        }
    }

    pub fn parse(s: &str) -> Result<Vec<Policy>, String> {
        if s == "all" {
            return Ok(Policy::ALL.to_vec());
        }
        Policy::ALL
            .iter()
            .find(|p| p.name() == s)
            .map(|p| vec![*p])
            .ok_or_else(|| {
                let names: Vec<&str> = Policy::ALL.iter().map(|p| p.name()).collect();
                format!("--policy {s}: one of all, {}", names.join(", "))
            })
    }
}

pub struct LoopConfig {
    /// The `vagus` executable, and the shim beside it.
    pub vagus: PathBuf,
    pub shim: PathBuf,
    /// gpusim's library directory; `None`: the real driver.
    pub gpusim: Option<PathBuf>,
    pub policies: Vec<Policy>,
    pub duration: Duration,
    pub trace: PathBuf,
    /// Trace time runs this many times faster.
    pub time_scale: f64,
    /// The latency-sensitive servers' arrivals are thinned (< 1) or
    /// multiplied (> 1) by this, before `chat-b`'s step.
    pub rate_scale: f64,
    /// `chat-b` starts this far into the (scaled) trace.
    pub offset: Duration,
    /// `chat-b`'s arrivals are multiplied by this halfway through.
    pub step: f64,
    /// The latency-sensitive servers' SLOs (ms: chat-a's, chat-b's);
    /// `None`: 1.5 × each one's p99 alone, which needs `exclusive` to run
    /// first.
    pub slo_ms: Option<(f64, f64)>,
    /// Requests each best-effort client keeps in flight.
    pub be_concurrency: usize,
    /// The vagus policy holds best-effort launches back for
    /// latency-sensitive work (`control.hold_best_effort`).
    pub hold_best_effort: bool,
    pub seed: u64,
    /// Where each policy's processes keep their files and logs.
    pub dir: PathBuf,
}

struct Workload {
    name: &'static str,
    latency_sensitive: bool,
    model_gb: f64,
    batch: u32,
    seq_len: u32,
}

const WORKLOADS: [Workload; 4] = [
    Workload {
        name: "chat-a",
        latency_sensitive: true,
        model_gb: 4.0,
        batch: 8,
        seq_len: 2048,
    },
    Workload {
        name: "chat-b",
        latency_sensitive: true,
        model_gb: 4.0,
        batch: 8,
        seq_len: 2048,
    },
    Workload {
        name: "batch-a",
        latency_sensitive: false,
        model_gb: 8.0,
        batch: 32,
        seq_len: 2048,
    },
    Workload {
        name: "batch-b",
        latency_sensitive: false,
        model_gb: 8.0,
        batch: 32,
        seq_len: 2048,
    },
];

/// Best-effort requests: long prompts, long answers.
const BE_PROMPT: u64 = 2048;
const BE_OUTPUT: u64 = 256;

impl Workload {
    /// The placement request the brain gets (and classification reads).
    fn profile(&self, slo_ms: Option<f64>) -> Value {
        let mut p = json!({
            "name": self.name, "model_id": self.name, "model_size_gb": self.model_gb,
            "batch": self.batch, "seq_len": self.seq_len, "tenant": "bench",
            "expected_duration_s": 3600, "cpu_milli": 100, "memory_mib": 256,
            "priority": if self.latency_sensitive { "P1" } else { "P3" },
        });
        if self.latency_sensitive {
            p["sla_ms"] = json!(slo_ms.map(|s| s.round() as u64));
        }
        p
    }

    fn serve_args(&self, port: u16) -> Vec<String> {
        vec![
            "serve".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--model".into(),
            self.name.into(),
            "--model-gb".into(),
            self.model_gb.to_string(),
            "--fine-buckets".into(),
        ]
    }
}

/// The latency-sensitive servers' arrivals: the trace from `from`, its
/// rate multiplied by `step` from halfway on.
fn plan(cfg: &LoopConfig, from: Duration, step: f64, seed: u64) -> Result<Vec<Planned>, String> {
    BenchConfig {
        url: String::new(),
        model: String::new(),
        trace: Some(cfg.trace.clone()),
        arrivals: Arrivals::Trace,
        time_scale: cfg.time_scale,
        rate_scale: cfg.rate_scale,
        duration: None,
        max_requests: None,
        prompt_tokens: 0,
        output_tokens: 0,
        slo_ms: None,
        seed,
    }
    .stepped_plan(from, cfg.duration, cfg.duration / 2, step)
    .map_err(|e| e.to_string())
}

/// Runs every configured policy; one JSON object each.
pub fn run(cfg: &LoopConfig) -> Result<Vec<Value>, String> {
    if !cfg.trace.is_file() {
        return Err(format!("--trace {}: no such file", cfg.trace.display()));
    }
    if cfg.policies.is_empty() {
        return Err("no policy to run".into());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let mut alone: BTreeMap<String, f64> = BTreeMap::new();
    let mut out = Vec::new();
    for &p in &cfg.policies {
        let slo: BTreeMap<String, f64> = WORKLOADS
            .iter()
            .filter(|w| w.latency_sensitive)
            .filter_map(|w| {
                cfg.slo_ms
                    .map(|(a, b)| if w.name == "chat-a" { a } else { b })
                    .or_else(|| alone.get(w.name).map(|a| (1.5 * a).round()))
                    .map(|s| (w.name.to_string(), s))
            })
            .collect();
        if p == Policy::Vagus && slo.len() < 2 {
            return Err(
                "the vagus policy places its servers with their SLO: give --slo-ms, or run exclusive first (--policy all)"
                    .into(),
            );
        }
        let r = rt.block_on(run_policy(cfg, p, &slo, &alone))?;
        if p == Policy::Exclusive {
            for w in r["workloads"].as_array().into_iter().flatten() {
                if let (Some(n), Some(p99)) = (w["name"].as_str(), w["p99_ms"].as_f64()) {
                    alone.insert(n.to_string(), p99);
                }
            }
        }
        out.push(r);
    }
    Ok(out)
}

async fn run_policy(
    cfg: &LoopConfig,
    policy: Policy,
    slo: &BTreeMap<String, f64>,
    alone: &BTreeMap<String, f64>,
) -> Result<Value, String> {
    let dir = cfg.dir.join(policy.name());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let gpus = if policy == Policy::Exclusive { 4 } else { 1 };
    let host = Host {
        state: dir.join("gpu.state"),
        gpus,
    };
    let mut cluster = Cluster::new(
        dir.clone(),
        cfg.vagus.clone(),
        cfg.shim.clone(),
        cfg.gpusim.clone(),
    );
    let ports: Vec<u16> = (0..WORKLOADS.len())
        .map(|_| free_port())
        .collect::<Result<_, _>>()?;
    let mut brain = None;
    if policy == Policy::Vagus {
        brain = Some(start_vagus(cfg, &mut cluster, &host, &ports, slo).await?);
    } else {
        let classes = vagus_decision::Classes::default();
        for (i, w) in WORKLOADS.iter().enumerate() {
            let mut env: Vec<(&str, String)> = Vec::new();
            match policy {
                Policy::Exclusive => env.push(("CUDA_VISIBLE_DEVICES", i.to_string())),
                Policy::TimeSliced | Policy::Vagus => {}
                Policy::StaticEqual => env.push(("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "25".into())),
                Policy::StaticClass => {
                    let p: vagus_decision::Profile =
                        serde_json::from_value(w.profile(slo.get(w.name).copied()))
                            .map_err(|e| format!("{}'s profile: {e}", w.name))?;
                    let share = classes.classify(&p).share_pct;
                    env.push(("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", share.to_string()));
                }
                Policy::StaticBudget => {
                    env.push(("LD_PRELOAD", cfg.shim.display().to_string()));
                    env.push(("VAGUS_SHM_DIR", dir.join("segments").display().to_string()));
                    env.push(("VAGUS_BUDGET", "0.25".into()));
                }
            }
            if policy == Policy::StaticBudget {
                std::fs::create_dir_all(dir.join("segments")).map_err(|e| e.to_string())?;
            }
            cluster.spawn(
                &w.serve_args(ports[i]),
                &format!("{}.log", w.name),
                Some(&host),
                &env,
            )?;
        }
    }
    let http = cluster.http.clone();
    let health: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}/health"))
        .collect();
    healthy(&http, &health, Duration::from_secs(60)).await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = (policy == Policy::Vagus)
        .then(|| watch_control_blocks(dir.join("node-a/segments"), stop.clone()));
    // The clients, all at once.
    let mut ls = Vec::new();
    let mut be = Vec::new();
    for (i, w) in WORKLOADS.iter().enumerate() {
        let url = format!("http://127.0.0.1:{}", ports[i]);
        if w.latency_sensitive {
            let (from, step) = if w.name == "chat-b" {
                (cfg.offset, cfg.step)
            } else {
                (Duration::ZERO, 1.0)
            };
            let plan = plan(cfg, from, step, cfg.seed + i as u64)?;
            let bc = BenchConfig {
                url,
                model: w.name.into(),
                trace: Some(cfg.trace.clone()),
                arrivals: Arrivals::Trace,
                time_scale: cfg.time_scale,
                rate_scale: 1.0,
                duration: Some(cfg.duration),
                max_requests: None,
                prompt_tokens: 0,
                output_tokens: 0,
                slo_ms: slo.get(w.name).copied(),
                seed: cfg.seed,
            };
            ls.push((
                w,
                tokio::spawn(async move { vagus_serve::client::run_plan(&bc, plan).await }),
            ));
        } else {
            let (d, c, name) = (cfg.duration, cfg.be_concurrency, w.name);
            be.push((
                w,
                tokio::spawn(async move {
                    vagus_serve::client::closed_loop(&url, name, c, BE_PROMPT, BE_OUTPUT, d).await
                }),
            ));
        }
    }
    let mut workloads = Vec::new();
    for (w, t) in ls {
        let r = t
            .await
            .map_err(|e| format!("{}'s client: {e}", w.name))?
            .map_err(|e| format!("{}'s client: {e}", w.name))?;
        workloads.push(json!({
            "name": w.name, "kind": "ls", "slo_ms": slo.get(w.name),
            "requests": r["requests"], "failed": r["failed"],
            "slo_attainment": r["slo_attainment"], "p99_ms": r["e2e_ms"]["p99"],
            "p99_alone_ms": alone.get(w.name), "tokens_per_s": r["tokens_per_s"],
        }));
    }
    for (w, t) in be {
        let r = t
            .await
            .map_err(|e| format!("{}'s client: {e}", w.name))?
            .map_err(|e| format!("{}'s client: {e}", w.name))?;
        workloads.push(json!({
            "name": w.name, "kind": "be", "slo_ms": null, "requests": r.requests,
            "failed": r.failed, "slo_attainment": null, "p99_ms": null, "p99_alone_ms": null,
            "tokens_per_s": r.tokens_per_s,
        }));
    }
    let actions = match &brain {
        Some(b) => loop_actions(&http, b).await,
        None => None,
    };
    drop(cluster);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reaction = match watcher {
        Some(w) => {
            let seen = w.join().unwrap_or_default();
            let mut r = reactions(&dir.join("control.jsonl"), &seen);
            json!({"p50": quantile(&mut r, 0.5), "p99": quantile(&mut r, 0.99), "count": r.len()})
        }
        None => Value::Null,
    };
    Ok(json!({
        "policy": policy.name(),
        "gpus": gpus,
        "workloads": workloads,
        // From the window that showed pressure to the budget in the
        // control block (the vagus policy; `null` for the others).
        "reaction_ms": reaction,
        "actions": actions,
        "duration_s": cfg.duration.as_secs_f64(),
        "time_scale": cfg.time_scale,
        "rate_scale": cfg.rate_scale,
        "step": cfg.step,
        "offset_s": cfg.offset.as_secs_f64(),
        "hold_best_effort": policy == Policy::Vagus && cfg.hold_best_effort,
    }))
}

/// Budgets as the shims' control blocks show them: (pid, budget in
/// millionths, 0 none; first seen, unix µs), each change once.
type Seen = Vec<(u32, u32, u64)>;

fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Polls every segment in `dir` each millisecond until `stop`, noting when
/// each new budget appears in a control block.
fn watch_control_blocks(
    dir: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Seen> {
    use vagus_agent::segments::SegmentFile;
    use vagus_proto::shm::ControlRead;
    std::thread::spawn(move || {
        let mut open: BTreeMap<PathBuf, SegmentFile> = BTreeMap::new();
        let mut last: BTreeMap<u32, u32> = BTreeMap::new();
        let mut seen = Seen::new();
        let mut scanned: Option<Instant> = None;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if scanned.is_none_or(|t| t.elapsed() > Duration::from_millis(50)) {
                scanned = Some(Instant::now());
                for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let p = e.path();
                    if p.extension().is_some_and(|x| x == "shm")
                        && !open.contains_key(&p)
                        && let Ok(f) = SegmentFile::open_read_only(&p)
                    {
                        open.insert(p, f);
                    }
                }
            }
            for f in open.values() {
                if let ControlRead::Valid(v) = f.segment().control.read() {
                    let pid = f.pid();
                    if last.insert(pid, v.budget_ppm) != Some(v.budget_ppm) {
                        seen.push((pid, v.budget_ppm, unix_us()));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        seen
    })
}

/// From the end of the window each pressed action rests on to its budget
/// in the control block (ms), one per tick; read from the brain's record.
fn reactions(record: &Path, seen: &Seen) -> Vec<f64> {
    let Ok(text) = std::fs::read_to_string(record) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let Ok(t) = serde_json::from_str::<vagus_decision::control::Recorded>(line) else {
            continue;
        };
        let Some(a) = t.actions.iter().find(|a| a.evidence.pressed) else {
            continue;
        };
        let want = if a.budget_ppm >= vagus_decision::control::UNLIMITED_PPM {
            0
        } else {
            a.budget_ppm
        };
        let from_us = a.evidence.window_end_ms * 1000;
        // The first time the block showed it after the window (a budget
        // seen before it, and set again since, is not this action's).
        if let Some(&(_, _, at)) = seen
            .iter()
            .find(|(pid, b, at)| *pid == a.pid && *b == want && *at >= from_us)
        {
            out.push(at.saturating_sub(from_us) as f64 / 1000.0);
        }
    }
    out
}

fn quantile(xs: &mut [f64], q: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let i = ((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len()) - 1;
    Some(xs[i])
}

/// The loop's budget actions, from the brain's `/metrics`.
async fn loop_actions(http: &vagus_cluster::Http, brain: &Brain) -> Option<u64> {
    vagus_cluster::brain_metric(
        http,
        brain,
        "vagus_brain_loop_actions_total",
        &[("kind", "budget")],
    )
    .await
    .map(|n| n as u64)
}

/// The brain (HTTP and QUIC) and one agent; the four servers placed with
/// launch specs, their replicas started by the agent under the shim.
async fn start_vagus(
    cfg: &LoopConfig,
    cluster: &mut Cluster,
    host: &Host,
    ports: &[u16],
    slo: &BTreeMap<String, f64>,
) -> Result<Brain, String> {
    // Shares are the loop's to hold, not MPS caps: every server may use the
    // whole GPU's SMs, and the budgets keep best effort out of the way.
    let core = format!(
        "mps_pools = false\n[control]\nhold_best_effort = {}\n",
        cfg.hold_best_effort
    );
    let record = cluster.dir.join("control.jsonl").display().to_string();
    let brain = cluster
        .start_brain(
            &["node-a".to_string()],
            &core,
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            &["--control-record".into(), record],
        )
        .await?;
    cluster.start_agent(&brain, "node-a", host, &[]).await?;
    for (i, w) in WORKLOADS.iter().enumerate() {
        let mut p = w.profile(slo.get(w.name).copied());
        p["share_pct"] = json!(if w.latency_sensitive { 30 } else { 20 });
        p["launch"] = json!({
            "command": cfg.vagus.display().to_string(),
            "args": w.serve_args(ports[i]),
            "port": ports[i],
        });
        cluster.place(&brain, &p).await?;
    }
    for w in &WORKLOADS {
        cluster
            .replica(&brain, w.name, Duration::from_secs(60))
            .await?;
    }
    Ok(brain)
}

/// The runs as a table, one row per policy and workload.
pub fn table(runs: &[Value]) -> String {
    let mut o = format!(
        "{:<14} {:<8} {:>3} {:>8} {:>9} {:>10} {:>10} {:>10} {:>9}\n",
        "policy", "workload", "", "requests", "slo_ms", "attained", "p99_ms", "p99_alone", "tok/s"
    );
    let f = |v: &Value, d: usize| v.as_f64().map_or("—".to_string(), |x| format!("{x:.d$}"));
    for r in runs {
        for w in r["workloads"].as_array().into_iter().flatten() {
            o += &format!(
                "{:<14} {:<8} {:>3} {:>8} {:>9} {:>10} {:>10} {:>10} {:>9}\n",
                r["policy"].as_str().unwrap_or(""),
                w["name"].as_str().unwrap_or(""),
                w["kind"].as_str().unwrap_or(""),
                w["requests"],
                f(&w["slo_ms"], 0),
                f(&w["slo_attainment"], 3),
                f(&w["p99_ms"], 1),
                f(&w["p99_alone_ms"], 1),
                f(&w["tokens_per_s"], 0),
            );
        }
        if let Some(a) = r["actions"].as_u64() {
            o += &format!(
                "{:<14} loop actions: {a}; reaction, window to control block: p50 {} p99 {} ms ({} under pressure)\n",
                r["policy"].as_str().unwrap_or(""),
                f(&r["reaction_ms"]["p50"], 1),
                f(&r["reaction_ms"]["p99"], 1),
                r["reaction_ms"]["count"]
            );
        }
    }
    o
}
