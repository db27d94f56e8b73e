//! The control loop on gpusim: a latency-sensitive `vagus serve` replica
//! the brain placed, beside a saturating best-effort process on the same
//! GPU, with and without the loop, under the same arrivals; and the scaler
//! adding a replica to a server whose queue grows and draining it once the
//! GPU is idle, behind `vagus gateway`.

use crate::brain_api::{
    Reap, brain_and_agent_with, http, node_joined, profile, replica_until, with,
};
use crate::support::*;
use std::time::{Duration, Instant};

const SLA_MS: u64 = 200;

struct Run {
    bench: serde_json::Value,
    /// The loop's audit rows (path `budget`).
    budgets: Vec<serde_json::Value>,
    best_effort_pid: u32,
    record: std::path::PathBuf,
    /// The server replica's `VAGUS_PRIORITY` and `VAGUS_GATE`, as its
    /// process got them.
    chat_role: (Option<String>, Option<String>),
    /// Its `VAGUS_MEMORY_LIMIT` and `CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`.
    chat_memory: (Option<String>, Option<String>),
    _sim: Sim,
}

/// The value of `name` in process `pid`'s environment.
fn environ(pid: u32, name: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|&b| b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=').map(str::to_string))
}

fn run(name: &str, control: bool) -> Run {
    let mut sim = Sim::new(name);
    let config = sim.dir.join("core.toml");
    // Off: the same brain, its loop never ticking. On: its replicas are
    // told their roles too (the best effort here is not the brain's, so
    // nothing holds it back; tests/shim.rs shows the holding itself).
    let toml = if control {
        "[control]\nhold_best_effort = true\n"
    } else {
        "[control]\ntick_ms = 0\n"
    };
    std::fs::write(&config, toml).unwrap();
    let record = sim.dir.join("control.jsonl");
    let (_b, addr, agent, agent_port) = brain_and_agent_with(
        &mut sim,
        false,
        &[
            "--config",
            config.to_str().unwrap(),
            "--control-record",
            record.to_str().unwrap(),
        ],
        &[],
    );
    let _agent = Owned(agent);
    node_joined(addr);
    let port = free_tcp_port();
    let vagus = bin("vagus");
    let chat = with(
        profile("chat"),
        serde_json::json!({"sla_ms": SLA_MS, "share_pct": 100, "cpu_milli": 500,
            "model_size_gb": 2.0, "gpu_memory_gb": 3.0, "launch": {
            "command": vagus.to_str().unwrap(),
            "args": ["serve", "--listen", format!("127.0.0.1:{port}"), "--model", "chat",
                     "--model-gb", "2", "--fine-buckets"],
            "port": port,
        }}),
    );
    let (_, _reap) = chat_ready(addr, &chat);
    let chat_pid = _reap.0[0];
    let chat_role = (
        environ(chat_pid, "VAGUS_PRIORITY"),
        environ(chat_pid, "VAGUS_GATE"),
    );
    let chat_memory = (
        environ(chat_pid, "VAGUS_MEMORY_LIMIT"),
        environ(chat_pid, "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"),
    );
    // Best effort the brain did not place: whole-GPU kernels, four streams,
    // far more arrivals than the GPU serves — it never lets up.
    let segdir = sim.dir.join("segments");
    let shim = bin("libvagus_shim.so");
    let env = [
        ("LD_PRELOAD", shim.to_str().unwrap()),
        ("VAGUS_SHM_DIR", segdir.to_str().unwrap()),
    ];
    let load = Owned(sim.spawn_load(&four_streams("2000", "60s"), &env));
    let be = load.0.id();
    // The agent sees it under the shim; with the loop, the brain has set
    // its budget. Either way the same time passes before the requests.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let snap = crate::brain_api::agent_snapshot(agent_port);
        let seen = snap["processes"].as_array().is_some_and(|ps| {
            ps.iter()
                .any(|p| p["pid"] == be && p["sources"]["shim"] == true)
        });
        let budgeted = !control || !budget_rows(addr).is_empty();
        if seen && budgeted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "best effort never seen (or budgeted): {snap}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    let url = format!("http://127.0.0.1:{port}");
    let slo = SLA_MS.to_string();
    let out = sim
        .vagus(&[
            "bench",
            "serve",
            "--url",
            &url,
            "--model",
            "chat",
            "--qps",
            "10",
            "--duration",
            "8s",
            "--prompt-tokens",
            "256",
            "--output-tokens",
            "16",
            "--slo-ms",
            &slo,
            "--seed",
            "7",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bench: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Run {
        bench,
        budgets: budget_rows(addr),
        best_effort_pid: be,
        record,
        chat_role,
        chat_memory,
        _sim: sim,
    }
}

fn budget_rows(addr: std::net::SocketAddr) -> Vec<serde_json::Value> {
    let (st, v) = http(addr, "GET", "/v1/decisions?path=budget&limit=1000", "");
    assert_eq!(st, 200, "{v}");
    v["items"].as_array().cloned().unwrap_or_default()
}

#[test]
fn budgets_keep_a_servers_sla_beside_saturating_work_that_breaks_it_without_them() {
    let off = run("control-off", false);
    let on = run("control-on", true);
    let p99 = |r: &Run| r.bench["e2e_ms"]["p99"].as_f64().unwrap();
    let attained = |r: &Run| r.bench["slo_attainment"].as_f64().unwrap();
    for r in [&off, &on] {
        assert_eq!(r.bench["failed"], 0, "{}", r.bench);
    }
    assert_eq!(off.bench["requests"], on.bench["requests"], "same arrivals");
    // With `hold_best_effort` the brain's latency-sensitive replica knows
    // its role and its GPU's gate; without it, it has no role.
    assert_eq!(on.chat_role.0.as_deref(), Some("ls"), "{:?}", on.chat_role);
    let gate = on.chat_role.1.clone().unwrap_or_default();
    assert!(gate.ends_with("/gpu-0.gate"), "{:?}", on.chat_role);
    assert_eq!(off.chat_role.0, None, "{:?}", off.chat_role);
    // Its profile's gpu_memory_gb (3 GB) is its limit, the shim's and MPS's.
    let memory = (Some("3000000000".to_string()), Some("0=2861M".to_string()));
    assert_eq!(on.chat_memory, memory);
    // Without the loop the best effort takes the GPU from it.
    assert!(off.budgets.is_empty(), "{:?}", off.budgets);
    assert!(
        p99(&off) > SLA_MS as f64 && attained(&off) < 0.5,
        "without the loop: {}",
        off.bench
    );
    // With it, the SLA holds.
    assert!(
        p99(&on) <= SLA_MS as f64 && attained(&on) >= 0.95,
        "with the loop: {}",
        on.bench
    );
    // What it did is in the trail: the best effort's budget first set to
    // what the server's reservation (the whole GPU) leaves of the 120%.
    let first = &on.budgets[0];
    assert_eq!(first["actor"], "loop", "{first}");
    let d = &first["decision"];
    assert_eq!(d["pid"], on.best_effort_pid, "{first}");
    assert_eq!(d["budget_ppm"], 200_000, "{first}");
    assert_eq!(d["evidence"]["workload"], "chat", "{first}");
    assert!(
        first["summary"].as_str().unwrap().contains("budget 0.200"),
        "{first}"
    );
    // Replayed offline, the record gives the same actions.
    let out = on
        ._sim
        .vagus(&["control", "replay", on.record.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["same"], true, "{r}");
    assert!(
        r["actions"].as_u64().unwrap() >= on.budgets.len() as u64
            && r["ticks"].as_u64().unwrap() > 50,
        "{r} vs {} rows",
        on.budgets.len()
    );
    // A record whose actions were altered does not replay.
    let text = std::fs::read_to_string(&on.record).unwrap();
    let bent = text.replacen("\"budget_ppm\":200000", "\"budget_ppm\":300000", 1);
    assert_ne!(bent, text);
    let path = on._sim.dir.join("bent.jsonl");
    std::fs::write(&path, bent).unwrap();
    let out = on
        ._sim
        .vagus(&["control", "replay", path.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("replays differently"),
        "{err}"
    );
}

/// `vllm:num_requests_waiting` on the server at `port` (`None`: no page).
fn waiting(port: u16) -> Option<f64> {
    let (_, page) = get(("127.0.0.1", port), "/metrics")?;
    let (_, families) = nom_openmetrics::parser::prometheus(&page).ok()?;
    families
        .iter()
        .flat_map(|f| &f.samples)
        .find(|x| x.name() == "vllm:num_requests_waiting")
        .map(|x| x.number())
}

#[test]
fn a_queue_over_10_adds_a_replica_within_1_s_and_an_idle_gpu_drains_it_without_failures() {
    use crate::gateway::{gateway, load, report};
    let mut sim = Sim::new("scale");
    let config = sim.dir.join("core.toml");
    std::fs::write(
        &config,
        "replicas_per_node = 4\n[classes]\ngrid = [25, 50, 75, 100]\n\
         [scale]\nenabled = true\ncooldown_ms = 60000\nidle_ms = 3000\n",
    )
    .unwrap();
    let (_b, addr, agent, _) = brain_and_agent_with(
        &mut sim,
        false,
        &["--config", config.to_str().unwrap()],
        &[],
    );
    let _agent = Owned(agent);
    node_joined(addr);
    // Half the GPU, two sequences at a time, ~0.1 s each: about 20
    // requests/s.
    let port = free_tcp_port();
    let chat = with(
        profile("chat"),
        serde_json::json!({"model_id": "m", "priority": "P2", "sla_ms": null, "share_pct": 50,
            "model_size_gb": 4.0, "cpu_milli": 200, "launch": {
            "command": bin("vagus").to_str().unwrap(),
            "args": ["serve", "--listen", "127.0.0.1:{port}", "--model", "m", "--model-gb", "4",
                     "--max-batch", "2"],
            "port": port,
        }}),
    );
    let (_, mut reap) = chat_ready(addr, &chat);
    let g = gateway(&sim, addr);
    // Twice what it can serve: its queue grows by ~20 a second.
    let heavy = load(
        &sim,
        &g,
        &[
            "--qps",
            "40",
            "--duration",
            "3s",
            "--prompt-tokens",
            "64",
            "--output-tokens",
            "32",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let over = loop {
        if waiting(port).is_some_and(|w| w > 10.0) {
            break Instant::now();
        }
        assert!(Instant::now() < deadline, "the queue never passed 10");
        std::thread::sleep(Duration::from_millis(20));
    };
    let added = loop {
        if http(addr, "GET", "/v1/placements/chat-s2", "").0 == 200 {
            break over.elapsed();
        }
        assert!(over.elapsed() < Duration::from_secs(10), "no replica added");
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("chat-s2 placed {added:?} after the queue passed 10");
    assert!(
        added <= Duration::from_secs(1),
        "chat-s2 placed {added:?} after the queue passed 10"
    );
    let v = replica_until(addr, "chat-s2", "ready", |r| {
        r["state"] == "ready" || r["state"] == "running"
    });
    reap.0.push(v["replica"]["pid"].as_u64().unwrap() as u32);
    assert_eq!(v["placement"]["scaled"], true, "{v}");
    assert_eq!(
        v["replica"]["url"],
        format!("http://127.0.0.1:{}", port + 1),
        "its own port"
    );
    let heavy = report(heavy);
    eprintln!(
        "heavy load done {:?} after the queue passed 10",
        over.elapsed()
    );
    assert_eq!(heavy["failed"], 0, "{heavy}");
    // Light load: the GPU goes idle; the copy is drained, not one request fails.
    let light = load(
        &sim,
        &g,
        &[
            "--qps",
            "2",
            "--duration",
            "9s",
            "--prompt-tokens",
            "64",
            "--output-tokens",
            "32",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while http(addr, "GET", "/v1/placements/chat-s2", "").0 != 404 {
        assert!(Instant::now() < deadline, "chat-s2 never removed");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "chat-s2 removed {:?} after the queue passed 10",
        over.elapsed()
    );
    let light = report(light);
    eprintln!(
        "light load done {:?} after the queue passed 10",
        over.elapsed()
    );
    assert_eq!(light["failed"], 0, "{light}");
    assert!(light["requests"].as_u64().unwrap() >= 10, "{light}");
    assert_eq!(
        http(addr, "GET", "/v1/placements/chat", "").0,
        200,
        "the operator's stays"
    );
    // The trail: the scaler's rows, and its decisions as the loop's.
    let (_, rows) = http(addr, "GET", "/v1/decisions?path=scale", "");
    let kinds: Vec<&str> = rows["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["decision"]["scale"]["kind"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(kinds, ["up", "down"], "{rows}");
    let up = &rows["items"][0]["summary"];
    assert!(
        up.as_str()
            .unwrap()
            .contains("requests waiting per replica"),
        "{up}"
    );
    let (_, loop_rows) = http(addr, "GET", "/v1/decisions?actor=loop&workload=chat-s2", "");
    let paths: Vec<&str> = loop_rows["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .filter(|p| *p != "scale")
        .collect();
    assert_eq!(paths, ["direct", "remove"], "{loop_rows}");
}

/// The reconfiguration rows of the trail, in order.
fn reconfig_rows(addr: std::net::SocketAddr) -> Vec<serde_json::Value> {
    let (_, v) = http(addr, "GET", "/v1/decisions?path=reconfig&limit=1000", "");
    v["items"].as_array().cloned().unwrap_or_default()
}

/// Every step of the safe flow with two migration steps, in order.
const FLOW: [&str; 10] = [
    "gate", "shadow", "validate", "canary", "migrate", "migrate", "drain", "apply", "cleanup",
    "done",
];

/// The `reconfig` rows once the first reconfiguration has ended (40 s at
/// most), its shadow `shadow`'s replica added to `reap` meanwhile; and
/// their steps.
fn until_reconfigured(
    addr: std::net::SocketAddr,
    shadow: &str,
    reap: &mut Reap,
) -> (Vec<serde_json::Value>, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(40);
    let rows = loop {
        let rows = reconfig_rows(addr);
        if rows
            .iter()
            .any(|r| !r["decision"]["reconfig"]["outcome"].is_null())
        {
            break rows;
        }
        if let Some(pid) =
            http(addr, "GET", &format!("/v1/placements/{shadow}"), "").1["replica"]["pid"].as_u64()
            && !reap.0.contains(&(pid as u32))
        {
            reap.0.push(pid as u32);
        }
        assert!(
            Instant::now() < deadline,
            "no reconfiguration ended: {rows:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let steps = rows
        .iter()
        .map(|r| {
            r["decision"]["reconfig"]["step"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    (rows, steps)
}

/// Places `chat` (model `m`, a `vagus serve` replica) and waits for its
/// replica: 2 GB, batch 4, ~500-token prompts score 40, class small (20%);
/// ~4,000-token prompts score 180, class medium (40%). Its port, and its
/// replica to reap.
fn place_chat(addr: std::net::SocketAddr) -> (u16, Reap) {
    let port = free_tcp_port();
    let launch = serde_json::json!({
        "command": bin("vagus").to_str().unwrap(),
        "args": ["serve", "--listen", "127.0.0.1:{port}", "--model", "m", "--model-gb", "2"],
        "port": port,
    });
    (port, place_chat_launching(addr, launch))
}

/// [`place_chat`] with its own `launch` spec: the replica to reap.
fn place_chat_launching(addr: std::net::SocketAddr, launch: serde_json::Value) -> Reap {
    let chat = with(
        profile("chat"),
        serde_json::json!({"model_id": "m", "priority": "P1", "sla_ms": 5000, "share_pct": null,
            "model_size_gb": 2.0, "batch": 4, "seq_len": 500, "cpu_milli": 200,
            "launch": launch}),
    );
    let (d, reap) = chat_ready(addr, &chat);
    assert_eq!(d["share_pct"], 20, "{d}");
    reap
}

/// Places `chat` (its request `body`) and waits for its replica to take
/// requests: the decision, and the replica to reap.
fn chat_ready(addr: std::net::SocketAddr, body: &str) -> (serde_json::Value, Reap) {
    let (st, v) = http(addr, "POST", "/v1/placements", body);
    assert_eq!(st, 201, "{v}");
    let r = replica_until(addr, "chat", "ready", |r| {
        r["state"] == "ready" || r["state"] == "running"
    });
    (
        v["decision"].clone(),
        Reap(vec![r["replica"]["pid"].as_u64().unwrap() as u32]),
    )
}

#[test]
fn a_workload_whose_prompts_grow_is_reconfigured_step_by_step_without_a_failed_request() {
    use crate::gateway::{gateway, load, report};
    let mut sim = Sim::new("reconfig");
    let config = sim.dir.join("core.toml");
    // Shares side by side on one GPU (the shim's budgets keep them apart),
    // and the flow's steps in seconds (half the traffic on the canary, so
    // that 3 s of it at 6 requests/s serve enough to compare).
    std::fs::write(
        &config,
        "mps_pools = false\n\
         [reconfig]\nenabled = true\nsustain_ms = 1000\nmin_sized = 10\nvalidate_ms = 500\n\
         canary_fraction = 0.5\ncanary_ms = 3000\nmigrate_steps = 2\nmigrate_step_ms = 1000\nstep_timeout_ms = 20000\n",
    )
    .unwrap();
    let (_b, addr, agent, _) = brain_and_agent_with(
        &mut sim,
        false,
        &["--config", config.to_str().unwrap()],
        &[],
    );
    let _agent = Owned(agent);
    node_joined(addr);
    let (port, mut reap) = place_chat(addr);
    let g = gateway(&sim, addr);
    let args = |tokens: &'static str, secs: &'static str| {
        [
            "--qps",
            "6",
            "--duration",
            secs,
            "--prompt-tokens",
            tokens,
            "--output-tokens",
            "8",
        ]
    };
    // As placed: nothing to change.
    let small = report(load(&sim, &g, &args("500", "3s")));
    assert_eq!(small["failed"], 0, "{small}");
    assert!(reconfig_rows(addr).is_empty(), "{:?}", reconfig_rows(addr));
    // The prompts grow: reclassified, the flow runs while requests go on.
    let big = load(&sim, &g, &args("4000", "20s"));
    let (rows, steps) = until_reconfigured(addr, "chat-r1", &mut reap);
    let big = report(big);
    eprintln!("{big}");
    assert_eq!(steps, FLOW, "{rows:#?}");
    let last = &rows.last().unwrap()["decision"]["reconfig"];
    assert_eq!(last["outcome"], "completed", "{last}");
    assert_eq!(
        (last["from_share"].as_u64(), last["to_share"].as_u64()),
        (Some(20), Some(40))
    );
    assert!(
        rows[0]["summary"]
            .as_str()
            .unwrap()
            .contains("reclassified"),
        "{}",
        rows[0]["summary"]
    );
    assert_eq!(big["failed"], 0, "{big}");
    // The workload is the new configuration: 40%, serving as the shadow
    // did, on its own port; the shadow's name is gone.
    let (_, w) = http(addr, "GET", "/v1/placements/chat", "");
    assert_eq!(w["placement"]["share_pct"], 40, "{w}");
    assert_eq!(w["placement"]["replica"], "chat-r1", "{w}");
    assert_eq!(
        w["replica"]["url"],
        format!("http://127.0.0.1:{}", port + 1000),
        "{w}"
    );
    assert_eq!(http(addr, "GET", "/v1/placements/chat-r1", "").0, 404);
    let (_, metrics) = get(addr, "/metrics").unwrap();
    assert!(
        metrics.contains("vagus_brain_reconfigurations_total{outcome=\"completed\"} 1"),
        "{metrics}"
    );
}

#[test]
fn a_brain_killed_during_a_canary_comes_back_with_one_configuration_serving() {
    use crate::brain_api::{spawn_agent, tokens};
    use crate::gateway::{gateway, load, report};
    let sim = Sim::new("reconfig-kill");
    let config = sim.dir.join("core.toml");
    // A canary long enough to be killed in.
    std::fs::write(
        &config,
        "mps_pools = false\n\
         [reconfig]\nenabled = true\nsustain_ms = 1000\nmin_sized = 10\nvalidate_ms = 500\n\
         canary_fraction = 0.5\ncanary_ms = 600000\nstep_timeout_ms = 20000\n",
    )
    .unwrap();
    let tokens = tokens(&sim);
    let certs = certs_init(&sim, "node-a");
    let quic = format!("127.0.0.1:{}", free_udp_port());
    let http_at = format!("127.0.0.1:{}", free_tcp_port());
    let audit = sim.dir.join("audit.sqlite");
    let ledger = sim.dir.join("ledger.sqlite");
    let flags = [
        "--quic",
        &quic,
        "--certs",
        certs.to_str().unwrap(),
        "--http",
        &http_at,
        "--tokens",
        &tokens,
        "--audit",
        audit.to_str().unwrap(),
        "--ledger",
        ledger.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--stats-every",
        "0",
    ];
    let mut brain = start_brain_with(&sim, &flags);
    let addr = crate::brain_api::http_addr(&brain);
    let (agent, _) = spawn_agent(&sim, "node-a", &quic, &certs, &[]);
    let _agent = Owned(agent);
    node_joined(addr);
    let (_, mut reap) = place_chat(addr);
    let g = gateway(&sim, addr);
    let big = load(
        &sim,
        &g,
        &[
            "--qps",
            "6",
            "--duration",
            "25s",
            "--prompt-tokens",
            "4000",
            "--output-tokens",
            "8",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = reconfig_rows(addr);
        if rows
            .last()
            .is_some_and(|r| r["decision"]["reconfig"]["step"] == "canary")
        {
            break;
        }
        assert!(Instant::now() < deadline, "no canary: {rows:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, s) = http(addr, "GET", "/v1/placements/chat-r1", "");
    let shadow_pid = s["replica"]["pid"].as_u64().unwrap() as u32;
    reap.0.push(shadow_pid);
    // Both serve, half the traffic each; the brain dies.
    brain.child.kill().unwrap();
    brain.child.wait().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let again = start_brain_with(&sim, &flags);
    assert_eq!(crate::brain_api::http_addr(&again), addr);
    // Back: the canary is rolled back, the shadow removed and stopped.
    let deadline = Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let rows = reconfig_rows(addr);
        if rows
            .last()
            .is_some_and(|r| !r["decision"]["reconfig"]["outcome"].is_null())
        {
            break rows;
        }
        assert!(Instant::now() < deadline, "not rolled back: {rows:#?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let last = rows.last().unwrap();
    assert_eq!(
        last["decision"]["reconfig"]["outcome"], "rolled_back",
        "{last}"
    );
    assert!(
        last["summary"]
            .as_str()
            .unwrap()
            .contains("the brain restarted during canary"),
        "{last}"
    );
    let (st, sh) = http(addr, "GET", "/v1/placements/chat-r1", "");
    let (_, trail) = http(addr, "GET", "/v1/decisions?limit=1000", "");
    assert_eq!(st, 404, "{sh}\n{trail:#}");
    let (_, w) = http(addr, "GET", "/v1/placements/chat", "");
    assert_eq!(
        w["placement"]["share_pct"], 20,
        "the old configuration: {w}"
    );
    assert!(
        w["placement"]["weight"].is_null(),
        "its weight restored: {w}"
    );
    // The shadow's process goes; exactly one replica routes.
    let deadline = Instant::now() + Duration::from_secs(40);
    while std::path::Path::new(&format!("/proc/{shadow_pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{shadow_pid}/stat"))
            .is_ok_and(|s| s.contains(") Z "))
    {
        assert!(Instant::now() < deadline, "the shadow still runs");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, routes) = http(addr, "GET", "/v1/routes", "");
    let serving: Vec<&str> = routes["models"]["m"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["placement"].as_str().unwrap())
        .collect();
    assert_eq!(serving, ["chat"], "{routes}");
    // Requests go on throughout, none failed: the gateway kept its routes
    // while the brain was down, and while the restarted brain's agent had
    // not reported its replicas yet (`GET /v1/routes` answers 503 then).
    let big = report(big);
    eprintln!("requests across the brain's restart: {big}");
    assert!(big["requests"].as_u64().unwrap() > 100, "{big}");
    assert_eq!(big["failed"], 0, "{big}");
    // What the rollback recorded restores again: the workload, not the
    // shadow, after another kill.
    drop(again);
    let third = start_brain_with(&sim, &flags);
    assert_eq!(crate::brain_api::http_addr(&third), addr);
    let (st, w) = http(addr, "GET", "/v1/placements/chat", "");
    assert_eq!(st, 200, "{w}");
    assert_eq!(w["placement"]["share_pct"], 20, "{w}");
    assert_eq!(http(addr, "GET", "/v1/placements/chat-r1", "").0, 404);
}

#[test]
fn a_spread_of_efficiency_across_nodes_moves_a_share_through_the_safe_flow_without_a_failed_request()
 {
    use crate::brain_api::spawn_agent;
    use crate::gateway::{gateway, load, report};
    let (a, b) = (Sim::new("rebalance-a"), Sim::new("rebalance-b"));
    let config = a.dir.join("core.toml");
    std::fs::write(
        &config,
        "mps_pools = false\n\
         [reconfig]\nenabled = true\nsustain_ms = 1000\nvalidate_ms = 500\n\
         canary_fraction = 0.5\ncanary_ms = 2000\nmigrate_steps = 2\nmigrate_step_ms = 1000\nstep_timeout_ms = 20000\n",
    )
    .unwrap();
    let certs = certs_init(&a, "node-a,node-b");
    let record = a.dir.join("control.jsonl");
    let (_brain, addr, quic) = crate::brain_api::brain_for(
        &a,
        &certs,
        &config,
        &["--control-record", record.to_str().unwrap()],
    );
    let _agents = [
        Owned(spawn_agent(&a, "node-a", &quic, &certs, &[]).0),
        Owned(spawn_agent(&b, "node-b", &quic, &certs, &[]).0),
    ];
    for node in ["node-a", "node-b"] {
        crate::brain_api::joined(addr, node);
    }
    let cordon = |node: &str, on: bool| {
        let action = if on { "cordon" } else { "uncordon" };
        let c = serde_json::json!({"action": action, "node": node});
        let (st, v) = http(addr, "POST", "/v1/controls", &c.to_string());
        assert_eq!(st, 200, "{v}");
    };
    let place = |name: &str, extra: serde_json::Value| {
        let mut body = serde_json::json!({"model_id": name, "share_pct": 20,
            "model_size_gb": 1.0, "cpu_milli": 200});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (st, v) = http(addr, "POST", "/v1/placements", &with(profile(name), body));
        assert_eq!(st, 201, "{v}");
        v["decision"]["node"].as_str().unwrap().to_string()
    };
    // node-a's GPU 60% placed (three shares that run nothing), node-b's
    // 20%: one `vagus serve` replica.
    cordon("node-b", true);
    for f in ["fill-1", "fill-2", "fill-3"] {
        assert_eq!(place(f, serde_json::json!({})), "node-a");
    }
    cordon("node-b", false);
    cordon("node-a", true);
    let port = free_tcp_port();
    // A generous SLA: only the rebalance has a reason to act.
    let launch = serde_json::json!({"model_id": "m", "sla_ms": 5000, "launch": {
        "command": bin("vagus").to_str().unwrap(),
        "args": ["serve", "--listen", "127.0.0.1:{port}", "--model", "m", "--model-gb", "1"],
        "port": port,
    }});
    assert_eq!(place("lone", launch), "node-b");
    cordon("node-a", false);
    let v = replica_until(addr, "lone", "ready", |r| {
        r["state"] == "ready" || r["state"] == "running"
    });
    let mut reap = Reap(vec![v["replica"]["pid"].as_u64().unwrap() as u32]);
    // Requests go on through the move.
    let g = gateway(&b, addr);
    let traffic = load(
        &b,
        &g,
        &[
            "--qps",
            "6",
            "--duration",
            "15s",
            "--prompt-tokens",
            "200",
            "--output-tokens",
            "8",
        ],
    );
    let (rows, steps) = until_reconfigured(addr, "lone-r1", &mut reap);
    let traffic = report(traffic);
    eprintln!("{traffic}");
    assert_eq!(steps, FLOW, "{rows:#?}");
    let first = rows[0]["summary"].as_str().unwrap();
    assert!(
        first.contains("rebalance planned, its 20% to node-a GPU 0")
            && first.contains("node-b's GPUs in use are 20% placed against 60% on node-a"),
        "{first}"
    );
    let last = &rows.last().unwrap()["decision"]["reconfig"];
    assert_eq!(
        (last["outcome"].as_str(), last["consolidate"].as_bool()),
        (Some("completed"), Some(true)),
        "{last}"
    );
    assert_eq!(traffic["failed"], 0, "{traffic}");
    assert!(traffic["requests"].as_u64().unwrap() >= 60, "{traffic}");
    // lone runs on node-a now, beside the fillers; node-b holds nothing.
    let (_, w) = http(addr, "GET", "/v1/placements/lone", "");
    assert_eq!(
        (
            w["placement"]["node"].as_str(),
            w["replica"]["node"].as_str()
        ),
        (Some("node-a"), Some("node-a")),
        "{w}"
    );
    let (_, nodes) = http(addr, "GET", "/v1/nodes", "");
    let used = |n: &str| {
        nodes["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == n)
            .map(|x| x["gpus"][0]["used_pct"].as_u64().unwrap())
    };
    // Replayed offline, the record gives the same steps; one altered does not.
    let replay = |path: &std::path::Path| {
        a.vagus(&["control", "replay", path.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let out = replay(&record);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        r["same"] == true
            && r["reconfig_changes"].as_u64() >= Some(FLOW.len() as u64)
            && r["reconfig_rounds"].as_u64() > Some(50),
        "{r}"
    );
    let text = std::fs::read_to_string(&record).unwrap();
    let bent = text.replacen("\"act\":\"place_shadow\"", "\"act\":\"record\"", 1);
    assert_ne!(bent, text);
    let path = a.dir.join("bent.jsonl");
    std::fs::write(&path, bent).unwrap();
    let out = replay(&path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("the reconfigurer's round replays differently"),
        "{err}"
    );
    assert_eq!(
        (used("node-a"), used("node-b")),
        (Some(80), Some(0)),
        "{nodes}\n{:#?}",
        reconfig_rows(addr)
            .iter()
            .map(|r| r["summary"].clone())
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_shadow_that_never_gets_ready_is_aborted_with_an_alert_and_the_old_replica_serves_on() {
    use crate::gateway::{gateway, load, report};
    let mut sim = Sim::new("reconfig-abort");
    let config = sim.dir.join("core.toml");
    std::fs::write(
        &config,
        "mps_pools = false\n\
         [reconfig]\nenabled = true\nsustain_ms = 1000\nmin_sized = 10\nvalidate_ms = 500\n\
         step_timeout_ms = 3000\n",
    )
    .unwrap();
    let (_b, addr, agent, _) = brain_and_agent_with(
        &mut sim,
        false,
        &["--config", config.to_str().unwrap()],
        &[],
    );
    let _agent = Owned(agent);
    node_joined(addr);
    // `chat` as `place_chat` places it, but on the shadow's port (its own
    // + 1,000) the command starts a process that never serves.
    let port = free_tcp_port();
    let serve = format!(
        "test {{port}} -eq {} && exec sleep 600; exec {} serve --listen 127.0.0.1:{{port}} --model m --model-gb 2",
        port + 1000,
        bin("vagus").display()
    );
    let mut reap = place_chat_launching(
        addr,
        serde_json::json!({"command": "sh", "args": ["-c", serve], "port": port}),
    );
    let g = gateway(&sim, addr);
    // Its prompts grow: the flow starts, and its shadow never answers.
    let traffic = load(
        &sim,
        &g,
        &[
            "--qps",
            "6",
            "--duration",
            "12s",
            "--prompt-tokens",
            "4000",
            "--output-tokens",
            "8",
        ],
    );
    let (rows, steps) = until_reconfigured(addr, "chat-r1", &mut reap);
    let traffic = report(traffic);
    assert_eq!(steps, ["gate", "shadow", "done"], "{rows:#?}");
    let last = rows.last().unwrap();
    assert_eq!(last["decision"]["reconfig"]["outcome"], "aborted", "{last}");
    assert!(
        last["summary"]
            .as_str()
            .unwrap()
            .contains("was not ready within 3000 ms"),
        "{last}"
    );
    // The alert, streamed as every other; the shadow's process stops; the
    // old replica served every request.
    let (_, events) = http(addr, "GET", "/v1/events", "");
    assert!(
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "reconfiguration_aborted" && e["workloads"][0] == "chat"),
        "{events}"
    );
    assert_eq!(http(addr, "GET", "/v1/placements/chat-r1", "").0, 404);
    let shadow = *reap.0.last().unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    while std::path::Path::new(&format!("/proc/{shadow}")).exists()
        && !std::fs::read_to_string(format!("/proc/{shadow}/stat"))
            .is_ok_and(|s| s.contains(") Z "))
    {
        assert!(Instant::now() < deadline, "the shadow still runs");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(traffic["failed"], 0, "{traffic}");
    let (_, w) = http(addr, "GET", "/v1/placements/chat", "");
    assert_eq!(w["placement"]["share_pct"], 20, "{w}");
    assert!(w["placement"]["weight"].is_null(), "{w}");
}
