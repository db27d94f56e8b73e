//! `vagus brain --http`: the audit trail survives SIGKILL and the brain
//! restores its placements from it; nodes come from agents too.

use crate::support::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

const TOKEN: &str = "admin-token-for-the-tests-01";

fn tokens(sim: &Sim) -> String {
    let p = sim.dir.join("tokens.toml");
    std::fs::write(
        &p,
        format!("[[token]]\nname = \"ci\"\nrole = \"admin\"\ntoken = \"{TOKEN}\"\n"),
    )
    .unwrap();
    p.to_str().unwrap().to_string()
}

fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n{body}",
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

fn http_addr(b: &BrainProc) -> SocketAddr {
    b.wait_for(Duration::from_secs(20), |v| v["event"] == "http")
        .expect("the brain did not start its HTTP API")["addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn profile(name: &str) -> String {
    serde_json::json!({
        "name": name, "model_id": name, "model_size_gb": 7.0, "batch": 4, "seq_len": 1024,
        "priority": "P1", "sla_ms": 50, "tenant": "acme", "expected_duration_s": 600
    })
    .to_string()
}

#[test]
fn the_audit_trail_survives_sigkill_and_restores_placements() {
    let sim = Sim::new("brain-api-kill");
    let tokens = tokens(&sim);
    let audit = sim.dir.join("audit.sqlite");
    let nodes = sim.dir.join("nodes.csv");
    std::fs::write(
        &nodes,
        "sn,cpu_milli,memory_mib,gpu,model\nn-0,64000,262144,4,V100M32\nn-1,32000,131072,2,T4\n",
    )
    .unwrap();
    let args = [
        "--http",
        "127.0.0.1:0",
        "--tokens",
        &tokens,
        "--audit",
        audit.to_str().unwrap(),
        "--nodes",
        nodes.to_str().unwrap(),
    ];
    let mut b = start_brain_with(&sim, &args);
    let addr = http_addr(&b);
    let (st, v) = http(addr, "POST", "/v1/placements", &profile("first"));
    assert_eq!(st, 201, "{v}");
    let (st, placed) = http(addr, "POST", "/v1/placements", &profile("second"));
    assert_eq!(st, 201, "{placed}");
    // SIGKILL the moment the answer is in.
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let db = rusqlite::Connection::open(&audit).unwrap();
    let n: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM decisions WHERE workload = 'second' AND path = 'direct'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1, "the answered decision is in the trail after SIGKILL");
    drop(db);
    // A new brain on the same trail has both placements where they were.
    let b = start_brain_with(&sim, &args);
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

#[test]
fn nodes_come_from_connected_agents() {
    let sim = Sim::new("brain-api-agents");
    let tokens = tokens(&sim);
    let certs = certs_init(&sim, "node-a");
    let quic = format!("127.0.0.1:{}", free_udp_port());
    let b = start_brain_with(
        &sim,
        &[
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
        ],
    );
    let addr = http_addr(&b);
    let mut agent = sim
        .vagus(&[
            "agent",
            "--node",
            "node-a",
            "--brain",
            &quic,
            "--certs",
            certs.to_str().unwrap(),
            "--metrics-addr",
            "127.0.0.1:0",
            "--segments",
            sim.dir.join("segments").to_str().unwrap(),
            "--no-bpf",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let node = loop {
        let (_, v) = http(addr, "GET", "/v1/nodes", "");
        if let Some(n) = v
            .as_array()
            .and_then(|a| a.iter().find(|n| n["name"] == "node-a"))
        {
            break n.clone();
        }
        assert!(Instant::now() < deadline, "node-a never appeared: {v}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = agent.kill();
    let _ = agent.wait();
    // gpusim's default device: one H100 with 132 SMs.
    let gpus = node["gpus"].as_array().unwrap();
    assert!(!gpus.is_empty(), "{node}");
    assert_eq!(gpus[0]["sms"], 132, "{node}");
    let (st, v) = http(addr, "POST", "/v1/placements", &profile("on-agent"));
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["decision"]["node"], "node-a");
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
}

/// The openb trace (`../shared/data/openb/`, or `VAGUS_OPENB_DIR`).
fn openb_dir() -> std::path::PathBuf {
    if let Some(d) = std::env::var_os("VAGUS_OPENB_DIR") {
        return d.into();
    }
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|a| a.join("shared/data/openb"))
        .find(|p| p.is_dir())
        .expect("the openb trace (set VAGUS_OPENB_DIR)")
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
