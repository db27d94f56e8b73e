//! Node failure on gpusim: two nodes, each its own simulated host with its
//! own agent. Node A dies (its agent and the replicas it ran, killed with
//! SIGKILL, as when a host goes away); once its agent has been silent for
//! the liveness timeout, the brain places A's P0 on node B first — where
//! it serves again within 2 s — while A's P3, for which B has no room,
//! waits. When A's agent comes back, A takes work again and the P3 runs
//! there. A critical XID (79) on B takes B down in turn, an application's
//! own (13) does not. Every step is a decision or an event in the audit
//! trail, an alert on `GET /v1/events` (read as a stream by curl) and a
//! count on `/metrics`.

use crate::brain_api::{Reap, TOKEN, brain_for, http, joined, profile, spawn_agent, with};
use crate::support::*;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The liveness timeout the brain is configured with.
const TIMEOUT: Duration = Duration::from_millis(1500);

fn agent(sim: &Sim, node: &str, quic: &str, certs: &Path) -> Child {
    spawn_agent(sim, node, quic, certs, &[]).0
}

/// Polls until `what` holds of `GET path` (20 s at most).
fn until(
    addr: SocketAddr,
    path: &str,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) = http(addr, "GET", path, "");
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} within 20 s: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn control(addr: SocketAddr, body: serde_json::Value) {
    let (st, v) = http(addr, "POST", "/v1/controls", &body.to_string());
    assert_eq!(st, 200, "{v}");
}

/// A replica of its own model at `share` % and `priority`, serving on
/// `port`; placed, its decision.
fn place(
    addr: SocketAddr,
    name: &str,
    priority: &str,
    share: u32,
    port: Option<u16>,
) -> serde_json::Value {
    let mut extra = serde_json::json!({"model_size_gb": 1.0, "cpu_milli": 200,
        "share_pct": share, "priority": priority});
    if let Some(port) = port {
        extra["launch"] = serde_json::json!({
            "command": bin("vagus").to_str().unwrap(),
            "args": ["serve", "--listen", format!("127.0.0.1:{port}"), "--model", name,
                     "--model-gb", "1"],
            "port": port,
        });
    }
    let (st, v) = http(addr, "POST", "/v1/placements", &with(profile(name), extra));
    assert_eq!(st, 201, "{v}");
    v
}

/// The decisions `actor` took, as the trail lists them, and each one's
/// (workload, path).
fn trail(addr: SocketAddr, actor: &str) -> (serde_json::Value, Vec<(String, String)>) {
    let (_, trail) = http(addr, "GET", &format!("/v1/decisions?actor={actor}"), "");
    let steps = trail["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap().to_string();
            (s("workload"), s("path"))
        })
        .collect();
    (trail, steps)
}

fn healthy(port: u16) -> bool {
    get(("127.0.0.1", port), "/health").is_some_and(|(status, _)| status == 200)
}

/// curl reading `GET /v1/events` as a server-sent event stream; its lines.
fn events_stream(addr: SocketAddr, extra: &[&str]) -> (Owned, mpsc::Receiver<String>) {
    let mut child = std::process::Command::new("curl")
        .args(["-sN", "-H", &format!("Authorization: Bearer {TOKEN}")])
        .args(["-H", "Accept: text/event-stream"])
        .args(extra)
        .arg(format!("http://{addr}/v1/events"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("curl");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    (Owned(child), rx)
}

/// The next server-sent event on `rx` (id, event, data), within 20 s.
fn next_event(rx: &mpsc::Receiver<String>) -> (u64, String, serde_json::Value) {
    let (mut id, mut event, mut data) = (None, None, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("an event within 20 s");
        let line = rx.recv_timeout(left).expect("an event within 20 s");
        if line.is_empty() {
            if let (Some(i), Some(e), Some(d)) = (id.take(), event.take(), data.take()) {
                return (i, e, d);
            }
            continue;
        }
        if let Some(v) = line.strip_prefix("id: ") {
            id = Some(v.parse().unwrap());
        } else if let Some(v) = line.strip_prefix("event: ") {
            event = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("data: ") {
            data = Some(serde_json::from_str(v).unwrap());
        }
    }
}

#[test]
fn a_dead_nodes_p0_serves_elsewhere_within_2_s_of_the_timeout_and_the_node_takes_work_when_back() {
    let a = Sim::new("failover-a");
    let b = Sim::new("failover-b");
    // One CA, a certificate for each node.
    let certs = certs_init(&a, "node-a,node-b");
    let config = a.dir.join("core.toml");
    std::fs::write(
        &config,
        format!(
            "[classes]\ngrid = [25, 50, 75, 100]\n[failover]\nnode_timeout_ms = {}\n",
            TIMEOUT.as_millis()
        ),
    )
    .unwrap();
    let (_brain, addr, quic) = brain_for(&a, &certs, &config, &[]);
    // B holds a P2 on half its GPU.
    let _agent_b = Owned(agent(&b, "node-b", &quic, &certs));
    joined(addr, "node-b");
    assert_eq!(
        place(addr, "filler", "P2", 50, None)["decision"]["node"],
        "node-b"
    );
    // A runs the P0 and the P3 (B cordoned meanwhile), each half its GPU.
    let mut agent_a = agent(&a, "node-a", &quic, &certs);
    joined(addr, "node-a");
    control(
        addr,
        serde_json::json!({"action": "cordon", "node": "node-b"}),
    );
    let (p0_port, p3_port) = (free_tcp_port(), free_tcp_port());
    for (name, prio, port) in [("p0", "P0", p0_port), ("p3", "P3", p3_port)] {
        assert_eq!(
            place(addr, name, prio, 50, Some(port))["decision"]["node"],
            "node-a"
        );
    }
    control(
        addr,
        serde_json::json!({"action": "uncordon", "node": "node-b"}),
    );
    let mut pids = Vec::new();
    for name in ["p0", "p3"] {
        let v = until(
            addr,
            &format!("/v1/placements/{name}"),
            &format!("{name} ready on node-a"),
            |v| {
                v["replica"]["node"] == "node-a"
                    && (v["replica"]["state"] == "ready" || v["replica"]["state"] == "running")
            },
        );
        pids.push(v["replica"]["pid"].as_u64().unwrap() as u32);
    }
    let _reap = Reap(pids.clone());
    let (_curl, stream) = events_stream(addr, &[]);
    std::thread::sleep(Duration::from_millis(300));

    // Host A dies: its agent and the replicas it ran.
    agent_a.kill().unwrap();
    let died = Instant::now();
    for &pid in &pids {
        // SAFETY: kill only sends a signal.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
    agent_a.wait().unwrap();
    // The P0 is placed on B and serves there again.
    let deadline = died + TIMEOUT + Duration::from_secs(10);
    let mut moved_at = None;
    let serving_at = loop {
        if moved_at.is_none()
            && http(addr, "GET", "/v1/placements/p0", "").1["placement"]["node"] == "node-b"
        {
            moved_at = Some(died.elapsed());
        }
        if moved_at.is_some() && healthy(p0_port) {
            break died.elapsed();
        }
        assert!(Instant::now() < deadline, "the P0 never served on node-b");
        std::thread::sleep(Duration::from_millis(20));
    };
    let moved_at = moved_at.unwrap();
    eprintln!("p0 placed on node-b {moved_at:?} after the kill, serving {serving_at:?} after it");
    // The last window came at most a window period (100 ms) before the kill.
    assert!(
        moved_at >= TIMEOUT - Duration::from_millis(200),
        "moved before the liveness timeout: {moved_at:?}"
    );
    assert!(
        serving_at <= TIMEOUT + Duration::from_secs(2),
        "the P0 served on node-b {serving_at:?} after the kill (timeout {TIMEOUT:?} + 2 s)"
    );
    // The P3 has no room on B: it waits.
    let (_, p3) = http(addr, "GET", "/v1/placements/p3", "");
    assert_eq!(p3["state"], "queued", "{p3}");
    let (_, nodes) = http(addr, "GET", "/v1/nodes", "");
    let node_a = nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "node-a")
        .unwrap()
        .clone();
    assert!(
        node_a["down"]
            .as_str()
            .is_some_and(|d| d.contains("sent nothing")),
        "{node_a}"
    );
    // The trail: the P0 first, then the P3, each taken off A then decided.
    let (trail, steps) = trail(addr, "failover");
    let steps: Vec<(&str, &str)> = steps
        .iter()
        .map(|(w, p)| (w.as_str(), p.as_str()))
        .collect();
    assert_eq!(steps[0], ("p0", "evacuate"), "{trail}");
    assert_eq!(steps[1], ("p0", "direct"), "{trail}");
    assert_eq!(steps[2], ("p3", "evacuate"), "{trail}");
    assert!(matches!(steps[3], ("p3", "queue" | "scale_out")), "{trail}");
    // The alert: streamed, listed, counted, and in the trail.
    let (id, kind, alert) = next_event(&stream);
    assert_eq!((id, kind.as_str()), (1, "node_down"), "{alert}");
    assert_eq!(alert["node"], "node-a");
    assert_eq!(alert["workloads"], serde_json::json!(["p0", "p3"]));
    let (_, listed) = http(addr, "GET", "/v1/events", "");
    assert_eq!(listed["items"][0], alert, "{listed}");
    let (_, rows) = http(addr, "GET", "/v1/decisions?path=event", "");
    assert!(rows.to_string().contains("node_down"), "{rows}");

    // A comes back: it takes work again, and the waiting P3 runs there.
    let _agent_a = Owned(agent(&a, "node-a", &quic, &certs));
    let v = until(
        addr,
        "/v1/placements/p3",
        "p3 serving on node-a again",
        |v| {
            v["placement"]["node"] == "node-a"
                && v["replica"]["node"] == "node-a"
                && (v["replica"]["state"] == "ready" || v["replica"]["state"] == "running")
        },
    );
    let _reap_p3 = Reap(vec![v["replica"]["pid"].as_u64().unwrap() as u32]);
    let (id, kind, alert) = next_event(&stream);
    assert_eq!((id, kind.as_str()), (2, "node_up"), "{alert}");
    assert_eq!(alert["workloads"], serde_json::json!(["p3"]));
    // A client that resumes after the first alert gets only the second.
    let (_c, resumed) = events_stream(addr, &["-H", "Last-Event-ID: 1"]);
    assert_eq!(next_event(&resumed).0, 2);
    // An application's own XID on B changes nothing; a device's takes B
    // down (its agent still there), and its P0 moves first, to A.
    let xid = |n: &str| {
        let st = b
            .vagus(&["gpusim", "xid", "--device", "0", "--xid", n])
            .status()
            .unwrap();
        assert!(st.success());
    };
    xid("13");
    std::thread::sleep(Duration::from_millis(1000));
    let (_, p0) = http(addr, "GET", "/v1/placements/p0", "");
    assert_eq!(
        p0["placement"]["node"], "node-b",
        "XID 13 is the application's: {p0}"
    );
    xid("79");
    let (id, kind, alert) = next_event(&stream);
    assert_eq!((id, kind.as_str()), (3, "node_down"), "{alert}");
    assert_eq!(alert["node"], "node-b");
    assert!(
        alert["summary"]
            .as_str()
            .unwrap()
            .contains("GPU 0 reported XID 79"),
        "{alert}"
    );
    assert_eq!(alert["workloads"], serde_json::json!(["p0", "filler"]));
    let (_, p0) = http(addr, "GET", "/v1/placements/p0", "");
    assert_eq!(p0["placement"]["node"], "node-a", "{p0}");
    let page = metrics_page(addr);
    assert!(
        page.contains("vagus_brain_alerts_total{kind=\"node_down\"} 2"),
        "{page}"
    );
    assert!(
        page.contains("vagus_brain_alerts_total{kind=\"node_up\"} 1"),
        "{page}"
    );
    assert!(
        page.contains("vagus_brain_decisions_total{path=\"evacuate\"} 4"),
        "{page}"
    );
}

/// The brain's `/metrics`, which must parse with a strict parser
/// (nom-openmetrics refuses a family with no sample under its HELP).
fn metrics_page(addr: SocketAddr) -> String {
    let page = get(addr, "/metrics").expect("the brain's /metrics").1;
    assert!(
        nom_openmetrics::parser::prometheus(&page).is_ok(),
        "the brain's page does not parse: {page}"
    );
    page
}

/// A two-GPU host whose agent runs MPS (`per_gpu`: a daemon per GPU, else
/// one for both), under a brain with the core's TOML `extra`; a P0 and a
/// P3 (`vagus serve`) share GPU 0's 50% pool, both ready.
struct TwoShares {
    addr: SocketAddr,
    /// The replicas' pids (reaped on drop) and ports, P0's first.
    pids: Vec<u32>,
    ports: [u16; 2],
    _reap: Reap,
    _agent: Owned,
    _brain: crate::support::BrainProc,
}

fn two_shares(tag: &str, extra: &str, per_gpu: bool) -> (Sim, TwoShares) {
    let mut sim = Sim::new(tag).with_devices(2);
    let certs = certs_init(&sim, "node-a");
    let config = sim.dir.join("core.toml");
    std::fs::write(
        &config,
        format!("[classes]\ngrid = [25, 50, 75, 100]\n{extra}"),
    )
    .unwrap();
    let (brain, addr, quic) = brain_for(&sim, &certs, &config, &[]);
    // The agent starts the daemons.
    sim.adopt_mps_daemon();
    let mut dirs = sim.dir.join("mps").display().to_string();
    if per_gpu {
        dirs.push_str(&format!(",{}", sim.dir.join("mps-1").display()));
    }
    let control = bin("gpusim-mps-control").to_str().unwrap().to_string();
    let mps = [
        "--mps-pipe-dirs",
        &dirs,
        "--mps-control",
        &control,
        "--mps-start",
    ];
    let agent = Owned(spawn_agent(&sim, "node-a", &quic, &certs, &mps).0);
    joined(addr, "node-a");
    let ports = [free_tcp_port(), free_tcp_port()];
    for (name, prio, port) in [("p0", "P0", ports[0]), ("p3", "P3", ports[1])] {
        let d = place(addr, name, prio, 50, Some(port));
        assert_eq!(d["decision"]["gpus"], serde_json::json!([0]), "{d}");
    }
    let mut pids = Vec::new();
    for name in ["p0", "p3"] {
        let v = until(
            addr,
            &format!("/v1/placements/{name}"),
            &format!("{name} ready"),
            |v| {
                v["replica"]["mps_percent"] == 50.0
                    && (v["replica"]["state"] == "ready" || v["replica"]["state"] == "running")
            },
        );
        pids.push(v["replica"]["pid"].as_u64().unwrap() as u32);
    }
    let h = TwoShares {
        addr,
        pids: pids.clone(),
        ports,
        _reap: Reap(pids),
        _agent: agent,
        _brain: brain,
    };
    (sim, h)
}

#[test]
fn a_dead_mps_daemon_sends_the_shares_it_served_to_gpus_of_their_own() {
    let (mut sim, h) = two_shares("failover-mps", "", false);
    let (addr, pids, ports) = (h.addr, h.pids.clone(), h.ports);
    let (_curl, stream) = events_stream(addr, &[]);
    std::thread::sleep(Duration::from_millis(300));

    // The daemon goes away (as `quit` stops NVIDIA's).
    let (said, ok) = sim.mps_control("quit\n");
    assert!(ok, "quit: {said}");
    let quit = Instant::now();
    // One daemon served both GPUs: each is down (in either order), GPU 0
    // with the shares.
    let alerts = |kind: &str| {
        let mut by_gpu = std::collections::BTreeMap::new();
        for _ in 0..2 {
            let (_, k, alert) = next_event(&stream);
            assert_eq!(k, kind, "{alert}");
            let s = alert["summary"].as_str().unwrap().to_string();
            let gpu = s
                .strip_prefix("node-a GPU ")
                .and_then(|r| r.split(':').next());
            by_gpu.insert(gpu.unwrap_or_default().to_string(), alert);
        }
        by_gpu
    };
    let down = alerts("mps_down");
    eprintln!("mps_down alerts {:?} after quit", quit.elapsed());
    assert_eq!(down.keys().collect::<Vec<_>>(), ["0", "1"], "{down:?}");
    assert_eq!(
        down["0"]["workloads"],
        serde_json::json!(["p0", "p3"]),
        "{down:?}"
    );
    assert_eq!(down["1"]["workloads"], serde_json::json!([]), "{down:?}");
    // Each runs again, alone on a GPU, without MPS: a new process with the
    // GPU its placement names.
    let (mut gpus, mut new) = (Vec::new(), Vec::new());
    for (name, port, old) in [("p0", ports[0], pids[0]), ("p3", ports[1], pids[1])] {
        let v = until(
            addr,
            &format!("/v1/placements/{name}"),
            &format!("{name} on a GPU of its own"),
            |v| {
                v["placement"]["share_pct"] == 100
                    && v["replica"]["gpus"] == v["placement"]["gpus"]
                    && v["replica"]["mps_percent"].is_null()
                    && v["replica"]["pid"] != old
                    && (v["replica"]["state"] == "ready" || v["replica"]["state"] == "running")
            },
        );
        assert!(healthy(port), "{name} serves: {v}");
        new.push(v["replica"]["pid"].as_u64().unwrap() as u32);
        gpus.push(v["placement"]["gpus"][0].as_u64().unwrap());
        eprintln!(
            "{name} serving on GPU {} {:?} after quit",
            gpus[gpus.len() - 1],
            quit.elapsed()
        );
    }
    let _reap_new = Reap(new);
    gpus.sort();
    assert_eq!(gpus, [0, 1]);
    let (_, nodes) = http(addr, "GET", "/v1/nodes", "");
    let gpu0 = &nodes["items"][0]["gpus"][0];
    assert!(
        gpu0["mps_down"]
            .as_str()
            .is_some_and(|w| w.contains("no MPS control daemon")),
        "{gpu0}"
    );
    // The trail: each taken off its share, then placed whole.
    let (trail, steps) = trail(addr, "failover");
    let steps: Vec<(&str, &str)> = steps
        .iter()
        .map(|(w, p)| (w.as_str(), p.as_str()))
        .collect();
    assert_eq!(
        steps,
        [
            ("p0", "evacuate"),
            ("p0", "direct"),
            ("p3", "evacuate"),
            ("p3", "direct")
        ],
        "{trail}"
    );
    assert!(
        trail.to_string().contains("MPS control daemon is down"),
        "{trail}"
    );

    // The daemon back: both GPUs take shares again.
    sim.start_mps_daemon();
    let up = alerts("mps_up");
    assert_eq!(up.keys().collect::<Vec<_>>(), ["0", "1"], "{up:?}");
    let page = metrics_page(addr);
    for kind in ["mps_down", "mps_up"] {
        assert!(
            page.contains(&format!("vagus_brain_alerts_total{{kind=\"{kind}\"}} 2")),
            "{page}"
        );
    }
}

#[test]
fn an_mps_configuration_that_holds_shares_under_their_pool_sends_them_to_other_gpus() {
    let (sim, h) = two_shares(
        "failover-mps-conflict",
        "[failover]\nmps_conflict_ms = 1000\n",
        true,
    );
    let (addr, ports, p3_pid) = (h.addr, h.ports, h.pids[1]);
    let (_curl, stream) = events_stream(addr, &[]);
    // Someone sets GPU 0's MPS server to 30%: new clients there would get
    // less than their 50% shares.
    let (list, ok) = sim.mps_control("get_server_list\n");
    assert!(ok, "{list}");
    let server = list.lines().next().unwrap().trim().to_string();
    let (said, ok) = sim.mps_control(&format!("set_active_thread_percentage {server} 30\n"));
    assert!(ok, "{said}");
    let set = Instant::now();
    let (_, kind, alert) = next_event(&stream);
    assert_eq!(kind, "mps_down", "{alert}");
    eprintln!(
        "mps_down alert {:?} after the server was set to 30%",
        set.elapsed()
    );
    let summary = alert["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("node-a GPU 0: the brain holds a 50% MPS pool here")
            && summary.contains("30%"),
        "{alert}"
    );
    assert_eq!(
        alert["workloads"],
        serde_json::json!(["p0", "p3"]),
        "{alert}"
    );
    // The P0 holds GPU 1 whole; the P3 has nowhere left, and waits.
    let v = until(addr, "/v1/placements/p0", "p0 alone on GPU 1", |v| {
        v["placement"]["gpus"] == serde_json::json!([1])
            && v["placement"]["share_pct"] == 100
            && v["replica"]["gpus"] == serde_json::json!([1])
            && v["replica"]["mps_percent"].is_null()
            && (v["replica"]["state"] == "ready" || v["replica"]["state"] == "running")
    });
    let mut reap = Reap(vec![v["replica"]["pid"].as_u64().unwrap() as u32]);
    assert!(healthy(ports[0]), "p0 serves: {v}");
    let (_, p3) = http(addr, "GET", "/v1/placements/p3", "");
    assert_eq!(p3["state"], "queued", "{p3}");
    let (_, nodes) = http(addr, "GET", "/v1/nodes", "");
    assert_eq!(
        nodes["items"][0]["gpus"][0]["mps_conflict"], true,
        "{nodes}"
    );
    // Set back to 100%: GPU 0 is back, and the P3 holds it whole.
    let (said, _) = sim.mps_control(&format!("set_active_thread_percentage {server} 100\n"));
    eprintln!("set back: {said}");
    let (_, kind, alert) = next_event(&stream);
    assert_eq!(kind, "mps_up", "{alert}");
    assert_eq!(alert["workloads"], serde_json::json!(["p3"]), "{alert}");
    // Its old replica (50%, exited) is not taken for it: a new one starts,
    // without a share. (That it then serves is the first test's to show: on
    // a loaded machine its port, free since the old one exited, can be
    // taken by then.)
    let v = until(
        addr,
        "/v1/placements/p3",
        "p3 started alone on GPU 0",
        |v| {
            v["placement"]["gpus"] == serde_json::json!([0])
                && v["placement"]["share_pct"] == 100
                && v["replica"]["pid"] != p3_pid
                && v["replica"]["mps_percent"].is_null()
        },
    );
    let log = sim.dir.join("agent-state/replicas-node-a/p3.log");
    eprintln!(
        "p3's new replica: {}; its log: {}",
        v["replica"],
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    reap.0.push(v["replica"]["pid"].as_u64().unwrap() as u32);
    // The trail: the sync took both off GPU 0, most important first.
    let (trail, steps) = trail(addr, "sync");
    let steps: Vec<(&str, &str)> = steps
        .iter()
        .map(|(w, p)| (w.as_str(), p.as_str()))
        .collect();
    assert_eq!(
        steps[..3],
        [("p0", "evacuate"), ("p0", "direct"), ("p3", "evacuate")],
        "{trail}"
    );
}
