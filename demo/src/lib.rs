//! `vagus demo`: the whole system on gpusim on this one machine, in one
//! command. A brain (QUIC, HTTP API, audit trail), one agent per simulated
//! node (each node its own gpusim state: GPUs of its own), the gateway, and
//! four workloads placed through the brain's API, each a `vagus serve`
//! replica its node's agent starts under the shim:
//!
//! - `chat-a` and `chat-b`, latency-sensitive (P1, with an SLA), reached
//!   through the gateway: `chat-a` on the Azure conversation trace (real
//!   time), `chat-b` at a steady rate of short prompts;
//! - `batch-a` and `batch-b`, best effort (P3), kept busy by closed-loop
//!   clients through the gateway.
//!
//! A third of the way in comes the burst: `chat-a`'s arrivals triple for a
//! third of the run and `chat-b`'s prompts grow from ~500 to ~4,000 tokens.
//! The loop answers: budgets move on the GPUs where best effort sits
//! beside latency-sensitive work, and `chat-b`, reclassified from what the
//! gateway sees of its prompts, is moved to its new share through the safe
//! flow (gate, shadow, validate, canary, migrate, drain, apply, cleanup),
//! with the flow's steps in seconds. Shares are the loop's to hold
//! (`mps_pools = false`: budgets, not MPS caps), as in `vagus bench loop`.
//!
//! What the demo prints comes from the brain's API and the clients: the
//! live view (per workload its p99 against its SLA as the gateway measured
//! it, its share and budget; the latest decisions), then a summary.

mod view;

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use vagus_cluster::{Brain, Cluster, Host, brain_metric, get_json, serve_launch, server_port};
use vagus_serve::client::{Arrivals, BenchConfig, Planned};

pub use view::View;

#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// The `vagus` executable and the shim beside it.
    pub vagus: PathBuf,
    pub shim: PathBuf,
    /// gpusim's library directory.
    pub gpusim: PathBuf,
    /// How long the clients run (the burst is its middle third).
    pub duration: Duration,
    pub nodes: u32,
    pub gpus_per_node: u32,
    /// The brain's HTTP address (port 0: any free one).
    pub http: std::net::SocketAddr,
    /// The Azure conversation trace.
    pub trace: PathBuf,
    /// Where everything it runs keeps its files (removed at the end).
    pub dir: PathBuf,
}

/// One of the demo's workloads.
struct Spec {
    name: &'static str,
    latency_sensitive: bool,
    model_gb: f64,
    batch: u32,
    seq_len: u32,
    sla_ms: Option<u32>,
}

const WORKLOADS: [Spec; 4] = [
    Spec {
        name: "chat-a",
        latency_sensitive: true,
        model_gb: 2.0,
        batch: 4,
        seq_len: 1024,
        sla_ms: Some(4000),
    },
    Spec {
        name: "chat-b",
        latency_sensitive: true,
        model_gb: 2.0,
        batch: 4,
        seq_len: 500,
        sla_ms: Some(5000),
    },
    Spec {
        name: "batch-a",
        latency_sensitive: false,
        model_gb: 4.0,
        batch: 32,
        seq_len: 2048,
        sla_ms: None,
    },
    Spec {
        name: "batch-b",
        latency_sensitive: false,
        model_gb: 4.0,
        batch: 32,
        seq_len: 2048,
        sla_ms: None,
    },
];

/// `chat-b`'s steady arrivals and its prompts before and after the burst.
const CHAT_B_QPS: f64 = 4.0;
const CHAT_B_PROMPT: (u64, u64) = (500, 4000);
const CHAT_B_OUTPUT: u64 = 16;
/// What each best-effort client sends, and how many it keeps in flight.
const BE_PROMPT: u64 = 1024;
const BE_OUTPUT: u64 = 128;
const BE_CONCURRENCY: usize = 4;
/// What the best-effort workloads reserve of a GPU (%).
const BE_SHARE: u32 = 20;
/// How long the demo waits after its clients for a reconfiguration still
/// under way to end.
const SETTLE: Duration = Duration::from_secs(30);

/// The brain's configuration: shares held by budgets, the loop's defaults,
/// the safe flow's steps in seconds (half the traffic on the canary, so
/// that 3 s of it serve enough to compare).
const CORE: &str = "mps_pools = false\n\
    [reconfig]\nenabled = true\nsustain_ms = 1000\nmin_sized = 10\nvalidate_ms = 500\n\
    canary_fraction = 0.5\ncanary_ms = 3000\nmigrate_steps = 2\nmigrate_step_ms = 1000\n\
    step_timeout_ms = 20000\n";

impl Spec {
    fn profile(&self, vagus: &std::path::Path, port: u16) -> Value {
        let mut p = json!({
            "name": self.name, "model_id": self.name, "model_size_gb": self.model_gb,
            "gpu_memory_gb": self.model_gb * 2.0, "batch": self.batch, "seq_len": self.seq_len,
            "tenant": "demo", "expected_duration_s": 3600, "cpu_milli": 100, "memory_mib": 256,
            "priority": if self.latency_sensitive { "P1" } else { "P3" },
            "launch": serve_launch(vagus, port, self.name, self.model_gb, &["--fine-buckets"]),
        });
        match self.sla_ms {
            // Latency-sensitive: the share its class gives it (so that the
            // burst can reclassify it).
            Some(s) => p["sla_ms"] = json!(s),
            // Best effort: a fifth of a GPU reserved, the rest of it lent.
            None => p["share_pct"] = json!(BE_SHARE),
        }
        p
    }
}

/// Runs the demo: `on_start` hears the brain's address once it answers;
/// `view` is drawn each second. The summary, or why it could not run.
pub async fn run(
    cfg: &DemoConfig,
    on_start: impl FnOnce(&str),
    view: &mut View,
) -> Result<Value, String> {
    std::fs::create_dir_all(&cfg.dir).map_err(|e| format!("{}: {e}", cfg.dir.display()))?;
    let mut cluster = Cluster::new(
        cfg.dir.clone(),
        cfg.vagus.clone(),
        cfg.shim.clone(),
        Some(cfg.gpusim.clone()),
    );
    let nodes: Vec<String> = (1..=cfg.nodes).map(|i| format!("node-{i}")).collect();
    let brain = cluster.start_brain(&nodes, CORE, cfg.http, &[]).await?;
    on_start(&brain.url);
    for n in &nodes {
        let host = Host {
            state: cfg.dir.join(n).join("gpu.state"),
            gpus: cfg.gpus_per_node,
        };
        std::fs::create_dir_all(cfg.dir.join(n)).map_err(|e| e.to_string())?;
        cluster.start_agent(&brain, n, &host, &[]).await?;
    }
    let gateway = cluster.start_gateway(&brain).await?;
    for w in &WORKLOADS {
        let p = w.profile(&cfg.vagus, server_port()?);
        cluster.place(&brain, &p).await?;
    }
    for w in &WORKLOADS {
        ready(&mut cluster, &brain, w.name).await?;
    }
    // Every replica routed before the first request.
    routed(&cluster, &gateway).await?;
    let clients = drive(cfg, &gateway)?;
    let started = Instant::now();
    let mut watch = view::Watch::default();
    let mut clients = std::pin::pin!(clients);
    let results = loop {
        tokio::select! {
            r = &mut clients => break r?,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                cluster.adopt_replicas(&brain).await;
                watch.refresh(&cluster.http, &brain).await;
                view.draw(&watch, started.elapsed(), cfg.duration);
            }
        }
    };
    // A reconfiguration the burst started ends before the summary.
    let deadline = Instant::now() + SETTLE;
    while Instant::now() < deadline
        && brain_metric(
            &cluster.http,
            &brain,
            "vagus_brain_reconfigurations_in_flight",
            &[],
        )
        .await
        .unwrap_or(0.0)
            > 0.0
    {
        cluster.adopt_replicas(&brain).await;
        watch.refresh(&cluster.http, &brain).await;
        view.draw(&watch, started.elapsed(), cfg.duration);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    watch.refresh(&cluster.http, &brain).await;
    let summary = summarise(cfg, &cluster, &brain, &watch, results).await;
    cluster.stop();
    Ok(summary)
}

/// Waits for placement `id`'s replica to take requests (60 s at most).
async fn ready(cluster: &mut Cluster, brain: &Brain, id: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = cluster.replica(brain, id, Duration::from_secs(60)).await?;
        if matches!(v["replica"]["state"].as_str(), Some("ready" | "running")) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{id}'s replica never got ready: {v}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the gateway routes every workload's model.
async fn routed(cluster: &Cluster, gateway: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, page) =
            vagus_cluster::call(&cluster.http, "GET", &format!("{gateway}/metrics"), None).await?;
        if WORKLOADS.iter().all(|w| {
            vagus_cluster::metric(&page, "vagus_gateway_replicas", &[("model", w.name)])
                .is_some_and(|n| n >= 1.0)
        }) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("the gateway never routed every workload: {page}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What each client got.
struct Results {
    ls: Vec<(&'static str, Value)>,
    be: Vec<(&'static str, vagus_serve::client::ClosedLoop)>,
}

/// Starts every client against the gateway; the future of their results.
fn drive(
    cfg: &DemoConfig,
    gateway: &str,
) -> Result<impl std::future::Future<Output = Result<Results, String>>, String> {
    let d = cfg.duration;
    let burst = (d / 3, 2 * d / 3);
    let base = |model: &str| BenchConfig {
        url: gateway.to_string(),
        model: model.to_string(),
        trace: None,
        arrivals: Arrivals::Poisson(CHAT_B_QPS),
        time_scale: 1.0,
        rate_scale: 1.0,
        duration: Some(d),
        max_requests: None,
        prompt_tokens: CHAT_B_PROMPT.0,
        output_tokens: CHAT_B_OUTPUT,
        slo_ms: None,
        seed: 7,
    };
    // chat-a: the trace, tripled through the burst.
    let chat_a = BenchConfig {
        trace: Some(cfg.trace.clone()),
        arrivals: Arrivals::Trace,
        slo_ms: WORKLOADS[0].sla_ms.map(f64::from),
        ..base("chat-a")
    };
    let mut a_plan = chat_a
        .stepped_plan(Duration::ZERO, d, burst.0, 3.0)
        .map_err(|e| e.to_string())?;
    let calm = chat_a.plan().map_err(|e| e.to_string())?;
    a_plan.retain(|p| p.at < burst.1);
    a_plan.extend(calm.into_iter().filter(|p| p.at >= burst.1));
    // chat-b: steady, its prompts long from the burst on.
    let chat_b = BenchConfig {
        slo_ms: WORKLOADS[1].sla_ms.map(f64::from),
        ..base("chat-b")
    };
    let b_plan: Vec<Planned> = chat_b
        .plan()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|p| Planned {
            prompt: if p.at >= burst.0 {
                CHAT_B_PROMPT.1
            } else {
                CHAT_B_PROMPT.0
            },
            ..p
        })
        .collect();
    let ls = [("chat-a", chat_a, a_plan), ("chat-b", chat_b, b_plan)].map(|(n, c, plan)| {
        (
            n,
            tokio::spawn(async move { vagus_serve::client::run_plan(&c, plan).await }),
        )
    });
    let be = ["batch-a", "batch-b"].map(|n| {
        let url = gateway.to_string();
        (
            n,
            tokio::spawn(async move {
                vagus_serve::client::closed_loop(&url, n, BE_CONCURRENCY, BE_PROMPT, BE_OUTPUT, d)
                    .await
            }),
        )
    });
    Ok(async move {
        let mut out = Results {
            ls: Vec::new(),
            be: Vec::new(),
        };
        for (n, t) in ls {
            let r = t
                .await
                .map_err(|e| format!("{n}'s client: {e}"))?
                .map_err(|e| format!("{n}'s client: {e}"))?;
            out.ls.push((n, r));
        }
        for (n, t) in be {
            let r = t
                .await
                .map_err(|e| format!("{n}'s client: {e}"))?
                .map_err(|e| format!("{n}'s client: {e}"))?;
            out.be.push((n, r));
        }
        Ok(out)
    })
}

/// The summary: per workload what its clients got; the loop's actions and
/// the reconfigurations, from the brain.
async fn summarise(
    cfg: &DemoConfig,
    cluster: &Cluster,
    brain: &Brain,
    watch: &view::Watch,
    results: Results,
) -> Value {
    let placed: BTreeMap<&str, &Value> = watch
        .workloads
        .iter()
        .filter_map(|w| Some((w["placement"]["id"].as_str()?, w)))
        .collect();
    let at = |name: &str, key: &str| placed.get(name).map(|w| w["placement"][key].clone());
    let mut workloads = Vec::new();
    for (n, r) in &results.ls {
        workloads.push(json!({
            "name": n, "kind": "ls", "node": at(n, "node"), "share_pct": at(n, "share_pct"),
            "slo_ms": r["slo_ms"], "requests": r["requests"], "failed": r["failed"],
            "slo_attainment": r["slo_attainment"], "p99_ms": r["e2e_ms"]["p99"],
            "ttft_p99_ms": r["ttft_ms"]["p99"], "tokens_per_s": r["tokens_per_s"],
        }));
    }
    for (n, r) in &results.be {
        workloads.push(json!({
            "name": n, "kind": "be", "node": at(n, "node"), "share_pct": at(n, "share_pct"),
            "requests": r.requests, "failed": r.failed, "tokens_per_s": r.tokens_per_s,
        }));
    }
    let m = |name: &'static str, labels: &'static [(&'static str, &'static str)]| {
        brain_metric(&cluster.http, brain, name, labels)
    };
    let mut actions = serde_json::Map::new();
    for (kind, labels) in [
        ("budget", &[("kind", "budget")]),
        ("scale_up", &[("kind", "scale_up")]),
        ("scale_down", &[("kind", "scale_down")]),
    ] {
        if let Some(n) = m("vagus_brain_loop_actions_total", labels).await {
            actions.insert(kind.into(), json!(n as u64));
        }
    }
    let reconfigurations = reconfigurations(cluster, brain).await;
    let completed = m(
        "vagus_brain_reconfigurations_total",
        &[("outcome", "completed")],
    )
    .await;
    json!({
        "brain": brain.url,
        "duration_s": cfg.duration.as_secs_f64(),
        "nodes": cfg.nodes,
        "gpus_per_node": cfg.gpus_per_node,
        "workloads": workloads,
        "budget_changes": actions.get("budget").cloned(),
        "reconfigurations_completed": completed.map(|c| c as u64),
        "reconfigurations": reconfigurations,
        "actions": actions,
        "decisions": watch.rows,
    })
}

/// Each reconfiguration's workload, shares, steps in order and outcome,
/// from the trail's `reconfig` rows.
async fn reconfigurations(cluster: &Cluster, brain: &Brain) -> Vec<Value> {
    let url = format!("{}/v1/decisions?path=reconfig&limit=1000", brain.url);
    let Ok(v) = get_json(&cluster.http, &url).await else {
        return Vec::new();
    };
    let mut by_id: BTreeMap<String, Value> = BTreeMap::new();
    for r in v["items"].as_array().into_iter().flatten() {
        let d = &r["decision"]["reconfig"];
        let e = by_id.entry(d["id"].to_string()).or_insert_with(|| {
            json!({"workload": d["workload"], "node": d["node"], "from_share": d["from_share"],
                   "to_share": d["to_share"], "reason": d["reason"], "steps": [],
                   "outcome": null})
        });
        if let Some(s) = d["step"].as_str() {
            e["steps"].as_array_mut().expect("an array").push(json!(s));
        }
        if !d["outcome"].is_null() {
            e["outcome"] = d["outcome"].clone();
        }
    }
    by_id.into_values().collect()
}

/// The summary as a table, for a person.
pub fn render(s: &Value) -> String {
    let num = |v: &Value, d: usize| v.as_f64().map_or("—".to_string(), |x| format!("{x:.d$}"));
    let mut out = format!(
        "\nvagus demo: {} s on {} node(s) × {} GPU(s)\n\n{:<10} {:<5} {:<8} {:>6} {:>9} {:>9} {:>8} {:>10} {:>10}\n",
        s["duration_s"],
        s["nodes"],
        s["gpus_per_node"],
        "workload",
        "kind",
        "node",
        "share",
        "requests",
        "failed",
        "SLO ms",
        "attained",
        "p99 ms"
    );
    for w in s["workloads"].as_array().into_iter().flatten() {
        out += &format!(
            "{:<10} {:<5} {:<8} {:>5}% {:>9} {:>9} {:>8} {:>10} {:>10}",
            w["name"].as_str().unwrap_or(""),
            w["kind"].as_str().unwrap_or(""),
            w["node"].as_str().unwrap_or("—"),
            num(&w["share_pct"], 0),
            w["requests"].to_string(),
            w["failed"].to_string(),
            num(&w["slo_ms"], 0),
            num(&w["slo_attainment"], 3),
            num(&w["p99_ms"], 0),
        );
        if w["kind"] == "be" {
            out += &format!("   {} tokens/s", num(&w["tokens_per_s"], 0));
        }
        out += "\n";
    }
    out += &format!(
        "\nbudget changes {}, scale-ups {}, scale-downs {}, reconfigurations completed {}\n",
        num(&s["budget_changes"], 0),
        num(&s["actions"]["scale_up"], 0),
        num(&s["actions"]["scale_down"], 0),
        num(&s["reconfigurations_completed"], 0),
    );
    for r in s["reconfigurations"].as_array().into_iter().flatten() {
        let steps: Vec<&str> = r["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let why = r["reason"].as_str().unwrap_or("");
        out += &format!(
            "  {} on {} ({}): {}% → {}%, {}: {}\n",
            r["workload"].as_str().unwrap_or(""),
            r["node"].as_str().unwrap_or(""),
            why.split(':').next().unwrap_or(why),
            r["from_share"],
            r["to_share"],
            r["outcome"].as_str().unwrap_or("not ended"),
            steps.join(" → ")
        );
    }
    out
}
