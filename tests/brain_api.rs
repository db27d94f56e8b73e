//! `vagus brain --http`: the audit trail survives SIGKILL (in SQLite and in
//! PostgreSQL) and the brain restores its placements from it; nodes come
//! from agents too.

use crate::support::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

pub(crate) const TOKEN: &str = "admin-token-for-the-tests-01";

pub(crate) fn tokens(sim: &Sim) -> String {
    admin_tokens(sim, TOKEN)
}

pub(crate) fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

pub(crate) fn http_addr(b: &BrainProc) -> SocketAddr {
    b.wait_for(Duration::from_secs(20), |v| v["event"] == "http")
        .expect("the brain did not start its HTTP API")["addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

pub(crate) fn profile(name: &str) -> String {
    serde_json::json!({
        "name": name, "model_id": name, "model_size_gb": 7.0, "batch": 4, "seq_len": 1024,
        "priority": "P1", "sla_ms": 50, "tenant": "acme", "expected_duration_s": 600
    })
    .to_string()
}

#[test]
fn the_audit_trail_survives_sigkill_and_restores_placements() {
    let sim = Sim::new("brain-api-kill");
    let audit = sim.dir.join("audit.sqlite");
    let answered = || {
        let db = rusqlite::Connection::open(&audit).unwrap();
        db.query_row(
            "SELECT COUNT(*) FROM decisions WHERE workload = 'second' AND path = 'direct'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    restores_after_sigkill(&sim, &["--audit", audit.to_str().unwrap()], answered);
}

#[test]
fn the_audit_trail_in_postgres_survives_sigkill_and_restores_placements() {
    let Some(pg) = crate::pg::server("brain-api-kill") else {
        return;
    };
    let sim = Sim::new("brain-api-kill-pg");
    let answered = || {
        pg.client()
            .query_one(
                "SELECT COUNT(*) FROM decisions WHERE workload = 'second' AND path = 'direct'",
                &[],
            )
            .unwrap()
            .get(0)
    };
    restores_after_sigkill(&sim, &["--database", &pg.url], answered);
}

/// Two placements on a brain keeping its trail where `store` says; SIGKILL
/// the moment the second is answered (`answered` counts its rows then); a
/// new brain on the same trail has both where they were.
fn restores_after_sigkill(sim: &Sim, store: &[&str], answered: impl Fn() -> i64) {
    let tokens = tokens(sim);
    let nodes = sim.dir.join("nodes.csv");
    std::fs::write(
        &nodes,
        "sn,cpu_milli,memory_mib,gpu,model\nn-0,64000,262144,4,V100M32\nn-1,32000,131072,2,T4\n",
    )
    .unwrap();
    let mut args = vec![
        "--http",
        "127.0.0.1:0",
        "--tokens",
        &tokens,
        "--nodes",
        nodes.to_str().unwrap(),
    ];
    args.extend_from_slice(store);
    let mut b = start_brain_with(sim, &args);
    let addr = http_addr(&b);
    let (st, v) = http(addr, "POST", "/v1/placements", &profile("first"));
    assert_eq!(st, 201, "{v}");
    let (st, placed) = http(addr, "POST", "/v1/placements", &profile("second"));
    assert_eq!(st, 201, "{placed}");
    // SIGKILL the moment the answer is in.
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    assert_eq!(
        answered(),
        1,
        "the answered decision is in the trail after SIGKILL"
    );
    // A new brain on the same trail has both placements where they were.
    let b = start_brain_with(sim, &args);
    let addr = http_addr(&b);
    let (st, v) = http(addr, "GET", "/v1/placements/second", "");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["placement"]["node"], placed["decision"]["node"]);
    assert_eq!(v["placement"]["gpus"], placed["decision"]["gpus"]);
    let (_, h) = http(addr, "GET", "/healthz", "");
    assert_eq!(h["placements"], 2);
    // And it keeps deciding from there: the same name is a conflict.
    assert_eq!(
        http(addr, "POST", "/v1/placements", &profile("first")).0,
        409
    );
}

/// A brain with QUIC and HTTP, and an agent for `node-a` connected to it
/// (with gpusim's MPS daemon when `mps`); the agent's metrics port.
fn brain_and_agent(sim: &mut Sim, mps: bool) -> (BrainProc, SocketAddr, Child, u16) {
    brain_and_agent_with(sim, mps, &[], &[])
}

/// [`brain_and_agent`], the brain and the agent given more flags.
pub(crate) fn brain_and_agent_with(
    sim: &mut Sim,
    mps: bool,
    brain_flags: &[&str],
    agent_flags: &[&str],
) -> (BrainProc, SocketAddr, Child, u16) {
    let tokens = tokens(sim);
    let certs = certs_init(sim, "node-a");
    let quic = format!("127.0.0.1:{}", free_udp_port());
    let mut flags = vec![
        "--quic",
        &quic,
        "--certs",
        certs.to_str().unwrap(),
        "--http",
        "127.0.0.1:0",
        "--tokens",
        &tokens,
        "--stats-every",
        "0",
    ];
    flags.extend_from_slice(brain_flags);
    let b = start_brain_with(sim, &flags);
    let addr = http_addr(&b);
    let (mps_dir, mps_control) = (
        sim.dir.join("mps").to_str().unwrap().to_string(),
        bin("gpusim-mps-control").to_str().unwrap().to_string(),
    );
    let mut args: Vec<&str> = Vec::new();
    if mps {
        sim.adopt_mps_daemon();
        args.extend([
            "--mps-pipe-dirs",
            &mps_dir,
            "--mps-control",
            &mps_control,
            "--mps-start",
        ]);
    }
    args.extend_from_slice(agent_flags);
    let (agent, port) = spawn_agent(sim, "node-a", &quic, &certs, &args);
    (b, addr, agent, port)
}

/// `vagus agent` for `node` on simulated host `sim`, connecting to the
/// brain at `quic` with a certificate from `certs`, its segments in the
/// sim's directory, no BPF, `extra` flags; the agent and its metrics port.
pub(crate) fn spawn_agent(
    sim: &Sim,
    node: &str,
    quic: &str,
    certs: &std::path::Path,
    extra: &[&str],
) -> (Child, u16) {
    let port = free_tcp_port();
    let segdir = sim.dir.join("segments");
    std::fs::create_dir_all(&segdir).unwrap();
    let metrics = format!("127.0.0.1:{port}");
    let mut args = vec![
        "agent",
        "--node",
        node,
        "--brain",
        quic,
        "--certs",
        certs.to_str().unwrap(),
        "--metrics-addr",
        &metrics,
        "--segments",
        segdir.to_str().unwrap(),
        "--no-bpf",
    ];
    args.extend_from_slice(extra);
    let agent = sim
        .vagus(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (agent, port)
}

/// Polls `GET /v1/nodes` until node-a appears and `ok` holds of it.
fn node_a(
    addr: SocketAddr,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) = http(addr, "GET", "/v1/nodes", "");
        if let Some(n) = v["items"]
            .as_array()
            .and_then(|a| a.iter().find(|n| n["name"] == "node-a"))
            && ok(n)
        {
            return n.clone();
        }
        assert!(Instant::now() < deadline, "node-a: {what} within 20 s: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(crate) fn with(base: String, extra: serde_json::Value) -> String {
    let mut v: serde_json::Value = serde_json::from_str(&base).unwrap();
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v.to_string()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn agent_nodes_have_their_cpu_memory_and_mps_state_and_no_invented_load() {
    let mut sim = Sim::new("brain-api-agents");
    let (_b, addr, mut agent, _) = brain_and_agent(&mut sim, true);
    let node = node_a(addr, "appears", |_| true);
    // The agent says what the host has: CPUs online and MemTotal.
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    assert_eq!(node["cpu_milli"], cpus * 1000, "{node}");
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(node["memory_mib"], kib / 1024, "{node}");
    // gpusim's default device: one H100 with 132 SMs. Nothing reports the
    // node's request or error rate: unknown, not zero.
    assert_eq!(node["gpus"][0]["sms"], 132, "{node}");
    assert!(
        node["qps"].is_null() && node["error_rate"].is_null(),
        "{node}"
    );

    // CPU is a limit: more than the node has waits; what fits is placed.
    let big = with(
        profile("too-big"),
        serde_json::json!({"cpu_milli": cpus * 1000 + 1000, "priority": "P2"}),
    );
    let (st, v) = http(addr, "POST", "/v1/placements", &big);
    assert_eq!(st, 202, "{v}");
    let ruled = v["decision"]["ruled_out"].to_string();
    assert!(ruled.contains("cpu") && ruled.contains("node-a"), "{v}");
    let huge = with(
        profile("too-much-memory"),
        serde_json::json!({"memory_mib": kib / 1024 + 1, "priority": "P2"}),
    );
    let (st, v) = http(addr, "POST", "/v1/placements", &huge);
    assert_eq!(st, 202, "{v}");
    assert!(
        v["decision"]["ruled_out"].to_string().contains("memory"),
        "{v}"
    );
    let small = with(
        profile("fits"),
        serde_json::json!({"cpu_milli": 500, "share_pct": 20}),
    );
    let (st, v) = http(addr, "POST", "/v1/placements", &small);
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["decision"]["node"], "node-a");

    // The brain now holds a 20% MPS pool on GPU 0. The daemon would start
    // servers at 100%, which serves it (each client limits itself); an
    // operator lowers that to 10%, under the pool: a mismatch, recorded.
    std::thread::sleep(Duration::from_secs(1));
    let (_, rows) = http(addr, "GET", "/v1/decisions?path=event", "");
    assert_eq!(rows["items"], serde_json::json!([]), "{rows}");
    let (said, ok) = sim.mps_control("set_default_active_thread_percentage 10\n");
    assert!(ok, "{said}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let event = loop {
        let (_, rows) = http(addr, "GET", "/v1/decisions?path=event", "");
        if let Some(e) = rows["items"].as_array().and_then(|r| r.first()) {
            break e.clone();
        }
        assert!(Instant::now() < deadline, "no mismatch event: {rows}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(event["node"], "node-a", "{event}");
    assert_eq!(event["decision"]["event"], "mps_mismatch", "{event}");
    assert_eq!(event["decision"]["brain_pool_pct"], 20, "{event}");
    assert_eq!(
        event["decision"]["agent"]["default_percent"], 10.0,
        "{event}"
    );
    let s = event["summary"].as_str().unwrap();
    assert!(s.contains("20%") && s.contains("10%"), "{s}");

    // A 40% share needs GPU 0's server reconfigured; with the node's load
    // unknown the gate stays shut…
    let wide = with(
        profile("wide"),
        serde_json::json!({"cpu_milli": 500, "share_pct": 40}),
    );
    let (st, v) = http(addr, "POST", "/v1/placements", &wide);
    assert_eq!(st, 202, "{v}");
    let summary = v["decision"]["summary"].as_str().unwrap();
    assert!(
        summary.contains("unknown") && summary.contains("maintenance"),
        "{summary}"
    );
    // …until a maintenance window opens it.
    let now = now_ms();
    let window = serde_json::json!({"action": "maintenance", "node": "node-a",
        "from_ms": now - 1000, "to_ms": now + 600_000});
    let (st, v) = http(addr, "POST", "/v1/controls", &window.to_string());
    assert_eq!(st, 200, "{v}");
    let placed = v
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["workload"] == "wide")
        .cloned();
    let placed = placed.unwrap_or_else(|| panic!("the window placed nothing: {v}"));
    assert_eq!(placed["path"], "reconfigure", "{placed}");
    let _ = agent.kill();
    let _ = agent.wait();
}

#[test]
fn a_gpu_is_throttled_only_while_every_process_on_it_is_shimmed() {
    let mut sim = Sim::new("brain-api-throttled");
    let (_b, addr, mut agent, port) = brain_and_agent(&mut sim, false);
    node_a(addr, "idle and throttled", |n| {
        n["gpus"][0]["throttling"] == true
    });
    let segdir = sim.dir.join("segments");
    let args = ["--qps", "50", "--duration", "8s", "--input-kib", "4"];
    let shim = bin("libvagus_shim.so");
    let env = [
        ("LD_PRELOAD", shim.to_str().unwrap()),
        ("VAGUS_SHM_DIR", segdir.to_str().unwrap()),
    ];
    let mut shimmed = sim.spawn_load(&args, &env);
    // Once the agent sees it (shim and NVML), and the brain has synced
    // since, the GPU is still throttled.
    let pid = shimmed.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            s,
            "GET /snapshot HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let body = out.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
        let snap: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let seen = snap["processes"].as_array().is_some_and(|ps| {
            ps.iter().any(|p| {
                p["pid"] == pid && p["sources"]["shim"] == true && p["sources"]["nvml"] == true
            })
        });
        if seen {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never saw the shimmed process: {snap}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(2500));
    let n = node_a(addr, "listed", |_| true);
    assert_eq!(n["gpus"][0]["throttling"], true, "only shimmed work: {n}");
    // An unshimmed process on the same GPU: no more oversubscription.
    let mut plain = sim.spawn_load(&args, &[]);
    node_a(addr, "not throttled beside an unshimmed process", |n| {
        n["gpus"][0]["throttling"] == false
    });
    let _ = plain.wait();
    let _ = shimmed.wait();
    node_a(addr, "throttled again once it is gone", |n| {
        n["gpus"][0]["throttling"] == true
    });
    let _ = agent.kill();
    let _ = agent.wait();
}

#[test]
fn brain_flags_are_checked() {
    let sim = Sim::new("brain-api-flags");
    let out = sim.vagus(&["brain"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--certs") && err.contains("--http"), "{err}");
    let out = sim
        .vagus(&["brain", "--http", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tokens"));
    let bad = sim.dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[[token]]\nname = \"x\"\nrole = \"root\"\ntoken = \"0123456789abcdef\"\n",
    )
    .unwrap();
    let out = sim
        .vagus(&[
            "brain",
            "--http",
            "127.0.0.1:0",
            "--tokens",
            bad.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("root"), "{err}");
    // The database holds the trail and the ledger: not SQLite files too.
    let good = tokens(&sim);
    let refused = |more: &[&str]| {
        let mut args = vec!["brain", "--http", "127.0.0.1:0", "--tokens", &good];
        args.extend_from_slice(more);
        let out = sim.vagus(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{args:?}: {err}");
        err
    };
    let err = refused(&[
        "--database",
        "postgres://vagus@localhost/vagus",
        "--audit",
        "/tmp/a.sqlite",
    ]);
    assert!(err.contains("--audit"), "{err}");
    // A database that is not there: named, without its password.
    let gone = sim.dir.join("no-server");
    let url = format!(
        "host={} user=vagus password=hunter2 dbname=vagus",
        gone.display()
    );
    let err = refused(&["--database", &url]);
    assert!(
        err.contains(&format!("postgres://vagus@{}:5432/vagus", gone.display())),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "the password is printed: {err}");
}

/// The openb trace (`../shared/data/openb/`, or `VAGUS_OPENB_DIR`).
fn openb_dir() -> std::path::PathBuf {
    if let Some(d) = std::env::var_os("VAGUS_OPENB_DIR") {
        return d.into();
    }
    shared_data("openb")
}

#[test]
fn the_service_places_a_trace_as_the_replay_does() {
    let sim = Sim::new("brain-api-replay");
    let data = openb_dir();
    // Every tenth node of the openb cluster (all of its GPU models), the
    // whole default pod list (the mix), one seed.
    let list = std::fs::read_to_string(data.join("openb_node_list_gpu_node.csv")).unwrap();
    let mut lines = list.lines();
    let mut csv = format!("{}\n", lines.next().unwrap());
    for l in lines.step_by(10) {
        csv += l;
        csv.push('\n');
    }
    let nodes_csv = sim.dir.join("nodes.csv");
    std::fs::write(&nodes_csv, csv).unwrap();
    let pods = data.join("openb_pod_list_default.csv");
    let record = sim.dir.join("replay.json");
    let out = sim
        .vagus(&[
            "replay",
            "--nodes",
            nodes_csv.to_str().unwrap(),
            "--pods",
            pods.to_str().unwrap(),
            "--policy",
            "vagus",
            "--seeds",
            "42",
            "--record",
            record.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    // The brain: the same nodes in the replay's order, the replay's
    // configuration of the core, the trace's mix.
    let nodes_json = sim.dir.join("nodes.json");
    std::fs::write(&nodes_json, rec["nodes"].to_string()).unwrap();
    let config =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../brain/replay/openb.toml");
    let tokens = tokens(&sim);
    let audit = sim.dir.join("audit.sqlite");
    let b = start_brain_with(
        &sim,
        &[
            "--http",
            "127.0.0.1:0",
            "--tokens",
            &tokens,
            "--audit",
            audit.to_str().unwrap(),
            "--nodes",
            nodes_json.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--mix",
            pods.to_str().unwrap(),
        ],
    );
    let addr = http_addr(&b);
    let requests = rec["requests"].as_array().unwrap();
    let want = rec["placements"].as_array().unwrap();
    assert_eq!(requests.len(), want.len());
    let (mut placed, mut waiting) = (0, 0);
    for (i, (r, w)) in requests.iter().zip(want).enumerate() {
        let (st, v) = http(addr, "POST", "/v1/placements", &r.to_string());
        let got = match st {
            201 => {
                placed += 1;
                serde_json::json!({"node": v["decision"]["node"], "gpus": v["decision"]["gpus"]})
            }
            202 => {
                waiting += 1;
                serde_json::Value::Null
            }
            _ => panic!("request {i} ({}): {st} {v}", r["name"]),
        };
        assert_eq!(
            &got, w,
            "request {i} ({}): the service and the replay differ",
            r["name"]
        );
    }
    // Both paths were taken: most pods placed, the overflow waiting.
    assert!(
        placed > 100 && waiting > 10,
        "{placed} placed, {waiting} waiting"
    );
}

/// The agent's `/snapshot` on `port`.
pub(crate) fn agent_snapshot(port: u16) -> serde_json::Value {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return serde_json::Value::Null;
    };
    let _ = write!(
        s,
        "GET /snapshot HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let body = out.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_default()
}

/// An endpoint's cumulative latency histogram in a snapshot.
fn latency_of(endpoint: &serde_json::Value) -> vagus_proto::wire::HistogramDelta {
    let l = &endpoint["latency"];
    let nums = |k: &str| -> Vec<serde_json::Value> { l[k].as_array().cloned().unwrap_or_default() };
    vagus_proto::wire::HistogramDelta {
        bounds_s: nums("bounds_s")
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect(),
        counts: nums("counts").iter().map(|v| v.as_u64().unwrap()).collect(),
        sum_s: l["sum_s"].as_f64().unwrap_or(0.0),
        count: l["count"].as_u64().unwrap_or(0),
    }
}

#[test]
fn the_agent_reads_a_servers_own_metrics_as_its_clients_measured_them() {
    let mut sim = Sim::new("serving-scrape");
    // Buckets 4% apart: a p99 read from them is within 4% of the true one.
    let server = crate::serve::serve_with(&sim, &[], &["--fine-buckets"]);
    let endpoint = crate::serve::port(&server).to_string();
    let (_b, addr, agent, port) =
        brain_and_agent_with(&mut sim, false, &[], &["--serving", &endpoint]);
    let agent = Owned(agent);
    let deadline = Instant::now() + Duration::from_secs(20);
    let endpoint_of = |snap: &serde_json::Value| snap["serving"][0].clone();
    // Read, and past its baseline scrape.
    while !endpoint_of(&agent_snapshot(port))["requests"].is_number() {
        assert!(
            Instant::now() < deadline,
            "the agent never read the server: {}",
            agent_snapshot(port)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = endpoint_of(&agent_snapshot(port));
    // Nearly even arrivals, so the brain's 10 s rate is steady too.
    let r = crate::serve::bench(
        &sim,
        &server,
        &[
            "--qps",
            "4",
            "--arrivals",
            "gamma",
            "--burstiness",
            "50",
            "--duration",
            "20s",
            "--prompt-tokens",
            "512",
            "--output-tokens",
            "64",
        ],
    );
    assert_eq!(r["failed"], 0, "{r}");
    // The brain's view, while its horizon still covers the run.
    let (st, nodes) = http(addr, "GET", "/v1/nodes", "");
    assert_eq!(st, 200, "{nodes}");
    let node = nodes["items"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["name"] == "node-a"))
        .cloned()
        .unwrap_or_else(|| panic!("node-a is not among the brain's nodes: {nodes}"));
    // Two windows for the last scrape to land.
    std::thread::sleep(Duration::from_millis(300));
    let after = endpoint_of(&agent_snapshot(port));
    drop(agent);

    let n = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let requests = n(&after, "requests") - n(&before, "requests");
    assert_eq!(
        requests,
        n(&r, "requests"),
        "every request the bench sent, once: {r}"
    );
    assert_eq!(n(&after, "errors") - n(&before, "errors"), 0.0);
    let seconds = (n(&after, "through_unix_ns") - n(&before, "through_unix_ns")) / 1e9;
    let rate = requests / seconds;
    let bench_rate = n(&r, "throughput_rps");
    assert!(
        (rate / bench_rate - 1.0).abs() < 0.05,
        "the agent's {rate:.3} req/s over {seconds:.2} s vs the bench's {bench_rate:.3}: {r}"
    );
    let (mut run, earlier) = (latency_of(&after), latency_of(&before));
    assert_eq!(run.bounds_s, earlier.bounds_s);
    for (c, e) in run.counts.iter_mut().zip(&earlier.counts) {
        *c -= e;
    }
    let p99 = run.quantile(0.99).unwrap();
    let bench_p99 = r["e2e_ms"]["p99"].as_f64().unwrap() / 1000.0;
    assert!(
        (p99 / bench_p99 - 1.0).abs() < 0.05,
        "p99: the agent's {p99:.4} s vs the bench's {bench_p99:.4} s"
    );
    eprintln!(
        "agent: {rate:.3} req/s, e2e p99 {p99:.4} s; bench: {bench_rate:.3} req/s, p99 {bench_p99:.4} s; \
         brain: {} req/s",
        node["qps"]
    );
    // The brain's node: its request rate, error rate and queue depth from
    // the same windows (the last 10 s of them, mostly the run).
    let qps = node["qps"]
        .as_f64()
        .unwrap_or_else(|| panic!("the brain knows the node's rate: {node}"));
    assert!(
        qps > 0.6 * bench_rate && qps < 1.3 * bench_rate,
        "the brain's {qps} req/s vs the bench's {bench_rate}: {node}"
    );
    assert_eq!(node["error_rate"], 0.0, "{node}");
    assert!(node["queue_depth"].is_number(), "{node}");
}

/// Waits until the brain knows node-a (its agent's first windows).
pub(crate) fn node_joined(addr: SocketAddr) {
    joined(addr, "node-a");
}

/// Waits (20 s at most) until `GET /v1/nodes` lists `node`.
pub(crate) fn joined(addr: SocketAddr, node: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http(addr, "GET", "/v1/nodes", "").1["items"]
        .as_array()
        .is_some_and(|a| a.iter().any(|n| n["name"] == node))
    {
        assert!(Instant::now() < deadline, "{node} never joined");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A brain for agents that connect with certificates from `certs`: the
/// core's TOML `config`, an audit trail in the sim's directory, the
/// tests' admin token, `extra` flags. The brain, its HTTP address and its
/// QUIC address.
pub(crate) fn brain_for(
    sim: &Sim,
    certs: &std::path::Path,
    config: &std::path::Path,
    extra: &[&str],
) -> (BrainProc, SocketAddr, String) {
    let tokens = tokens(sim);
    let audit = sim.dir.join("audit.sqlite");
    let quic = format!("127.0.0.1:{}", free_udp_port());
    let mut flags = vec![
        "--quic",
        &quic,
        "--certs",
        certs.to_str().unwrap(),
        "--http",
        "127.0.0.1:0",
        "--tokens",
        &tokens,
        "--audit",
        audit.to_str().unwrap(),
        "--stats-every",
        "0",
        "--config",
        config.to_str().unwrap(),
    ];
    flags.extend_from_slice(extra);
    let brain = start_brain_with(sim, &flags);
    let addr = http_addr(&brain);
    (brain, addr, quic)
}

/// Kills these pids when dropped (replicas outlive the agents that started
/// them, as they must, and a failed test must not leave them running).
pub(crate) struct Reap(pub(crate) Vec<u32>);

impl Drop for Reap {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: kill only sends a signal.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }
}

/// The placement's replica as the brain shows it, once `ok` holds.
pub(crate) fn replica_until(
    addr: SocketAddr,
    id: &str,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v) = http(addr, "GET", &format!("/v1/placements/{id}"), "");
        if ok(&v["replica"]) || ok(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{id}: never {what}: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether this host lets the agent give replicas cgroups (cgroup v2
/// mounted and writable).
fn cgroups_writable() -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let Some(root) = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_string())
    }) else {
        return false;
    };
    let probe = std::path::Path::new(&root).join(format!("vagus-probe-{}", std::process::id()));
    let ok = std::fs::create_dir(&probe).is_ok();
    let _ = std::fs::remove_dir(&probe);
    ok
}

#[test]
fn a_placement_with_a_launch_spec_runs_as_a_replica_found_again_after_an_agent_restart() {
    let mut sim = Sim::new("replica");
    // MPS shares in quarters, so that a request for 50% gets 50%.
    let config = sim.dir.join("core.toml");
    std::fs::write(&config, "[classes]\ngrid = [25, 50, 75, 100]\n").unwrap();
    let (_b, addr, agent, port) = brain_and_agent_with(
        &mut sim,
        false,
        &["--config", config.to_str().unwrap()],
        &[],
    );
    let agent = Owned(agent);
    node_joined(addr);
    let serve_port = free_tcp_port();
    let vagus = bin("vagus");
    let chat = with(
        profile("chat"),
        serde_json::json!({"cpu_milli": 500, "share_pct": 50, "gpu_memory_gb": 8.0, "launch": {
            "command": vagus.to_str().unwrap(),
            "args": ["serve", "--listen", format!("127.0.0.1:{serve_port}"), "--model", "chat",
                     "--model-gb", "2"],
            "env": {"VAGUS_TEST_MARK": "replica"},
            "port": serve_port,
        }}),
    );
    let (st, v) = http(addr, "POST", "/v1/placements", &chat);
    assert_eq!(st, 201, "{v}");
    let v = replica_until(addr, "chat", "ready", |r| {
        r["state"] == "ready" || r["state"] == "running"
    });
    let r = &v["replica"];
    let pid = r["pid"].as_u64().unwrap() as u32;
    let _reap = Reap(vec![pid]);
    assert_eq!(r["node"], "node-a", "{v}");
    assert_eq!(r["gpus"], serde_json::json!([0]), "{v}");
    assert_eq!(r["mps_percent"], 50.0, "{v}");
    assert_eq!(r["url"], format!("http://127.0.0.1:{serve_port}"), "{v}");

    // Its share: an MPS client at 50% of an H100 sees 66 of its 132 SMs.
    let log = sim.dir.join("agent-state/replicas-node-a/chat.log");
    let text = std::fs::read_to_string(&log).unwrap();
    let started: serde_json::Value = text
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no start line in {}: {text}", log.display()));
    assert_eq!(started["device"]["sms"], 66, "{text}");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let env: Vec<String> = environ
        .split(|b| *b == 0)
        .map(|e| String::from_utf8_lossy(e).into_owned())
        .collect();
    for want in [
        "CUDA_VISIBLE_DEVICES=0",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50",
        "VAGUS_TEST_MARK=replica",
    ] {
        assert!(env.iter().any(|e| e == want), "{want} not in {env:?}");
    }
    assert!(
        env.iter()
            .any(|e| e.starts_with("LD_PRELOAD=") && e.ends_with("libvagus_shim.so")),
        "the shim is preloaded: {env:?}"
    );
    if cgroups_writable() {
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(cg.contains("0::/vagus.slice/chat"), "{cg}");
    }
    let (_, routes) = http(addr, "GET", "/v1/routes", "");
    let chat_routes = &routes["models"]["chat"];
    assert_eq!(chat_routes[0]["placement"], "chat", "{routes}");
    assert_eq!(chat_routes[0]["weight"], 100, "{routes}");

    // What it serves shows in its placement, per request, from its own
    // metrics as its agent scraped them.
    for _ in 0..5 {
        let (st, body) = crate::serve::request(
            serve_port,
            "POST",
            "/v1/completions",
            r#"{"model":"chat","prompt":"hello there","max_tokens":4}"#,
        );
        assert_eq!(st, 200, "{body}");
    }
    let v = replica_until(addr, "chat", "serving five requests", |r| {
        r["serving"]["requests"] == 5
    });
    let s = &v["replica"]["serving"];
    assert_eq!(
        (s["server"].as_str(), s["errors"].as_u64()),
        (Some("vllm"), Some(0)),
        "{v}"
    );
    let (p50, p99) = (
        s["latency_p50_s"].as_f64().unwrap(),
        s["latency_p99_s"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 < 10.0, "{v}");
    assert!(s["qps"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(s["queue_depth"], 0.0, "{v}");
    // Its memory, as its shim counts it, under the limit its profile's
    // gpu_memory_gb set: at least its weights (2 GB in whole MiB), nothing
    // refused.
    let m = &v["replica"]["memory"];
    assert_eq!(m["limit_bytes"], 8_000_000_000u64, "{v}");
    let device: u64 = ["device", "pitch", "managed", "stream_ordered", "vmm"]
        .iter()
        .map(|k| m["in_use_bytes"][k].as_u64().unwrap())
        .sum();
    assert!(
        ((2_000_000_000 >> 20 << 20)..8_000_000_000).contains(&device),
        "{v}"
    );
    assert_eq!(m["refused_allocations"], 0, "{v}");

    // The agent restarts (SIGKILL): the replica runs on and is found again,
    // not started twice.
    let argv: Vec<String> = std::fs::read(format!("/proc/{}/cmdline", agent.0.id()))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    drop(agent);
    let args: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
    let agent = Owned(
        sim.vagus(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let found = loop {
        let snap = agent_snapshot(port);
        if let Some(r) = snap["replicas"].as_array().and_then(|r| r.first())
            && r["state"] != "starting"
        {
            break r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the restarted agent never found it: {snap}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(found["pid"], pid, "the same process: {found}");
    assert_eq!(found["found_again"], true, "{found}");
    assert_eq!(found["state"], "ready", "{found}");
    std::thread::sleep(Duration::from_millis(1500));
    let snap = agent_snapshot(port);
    assert_eq!(snap["replicas"].as_array().map(Vec::len), Some(1), "{snap}");
    assert_eq!(snap["replicas"][0]["pid"], pid, "not started twice: {snap}");

    // DELETE: it drains (nothing in flight), then stops.
    let (st, v) = http(addr, "DELETE", "/v1/placements/chat", "");
    assert_eq!(st, 200, "{v}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let exited = loop {
        let snap = agent_snapshot(port);
        let r = snap["replicas"][0].clone();
        if r["state"] == "exited" {
            break r;
        }
        assert!(Instant::now() < deadline, "never stopped: {snap}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        exited["exit"].as_str().unwrap().contains("no status"),
        "found again, so not the new agent's child: {exited}"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z")),
        "the process is gone"
    );

    // A replica that asks for more than its limit: refused, counted in its
    // placement, and an operator hears of it once.
    let fill = with(
        profile("fill"),
        serde_json::json!({"cpu_milli": 100, "model_size_gb": 0.1, "gpu_memory_gb": 0.25,
            "launch": {"command": c_client_linked("mem_client").to_str().unwrap(),
                       "args": ["fill", "64"]}}),
    );
    let (st, v) = http(addr, "POST", "/v1/placements", &fill);
    assert_eq!(st, 201, "{v}");
    let v = replica_until(addr, "fill", "one allocation refused", |r| {
        r["memory"]["refused_allocations"] == 1
    });
    let _reap = Reap(vec![v["replica"]["pid"].as_u64().unwrap() as u32]);
    // 250 MB: three 64 MiB allocations fit, the fourth does not.
    let m = &v["replica"]["memory"];
    assert_eq!(m["in_use_bytes"]["device"], 3u64 << 26, "{v}");
    assert_eq!(m["refused_bytes"], 1u64 << 26, "{v}");
    assert_eq!(m["limit_bytes"], 250_000_000u64, "{v}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let alerts = loop {
        let (_, events) = http(addr, "GET", "/v1/events", "");
        let alerts: Vec<serde_json::Value> = events["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "memory_refused")
            .cloned()
            .collect();
        if !alerts.is_empty() || Instant::now() > deadline {
            break alerts;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_millis(500));
    let (_, events) = http(addr, "GET", "/v1/events", "");
    let again = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "memory_refused")
        .count();
    assert_eq!((alerts.len(), again), (1, 1), "once: {events}");
    assert_eq!(
        alerts[0]["workloads"],
        serde_json::json!(["fill"]),
        "{events}"
    );
    assert!(
        alerts[0]["summary"]
            .as_str()
            .unwrap()
            .contains("250000000 B"),
        "{events}"
    );
    drop(agent);
}
