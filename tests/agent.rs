//! `vagus agent` as operators run it, on gpusim: a shimmed and an unshimmed
//! GPU process at once both appear, each with its own sources of data;
//! `/metrics` passes `promtool check metrics` and has the expected series;
//! broken shim segments are skipped and counted while the agent keeps going.

use crate::support::*;
use std::io::{Read, Write};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// GET `path` from the agent; `None` until it answers.
fn get(port: u16, path: &str) -> Option<(String, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_string(), body.to_string()))
}

fn snapshot(port: u16) -> Option<serde_json::Value> {
    let (status, body) = get(port, "/snapshot")?;
    assert!(status.contains("200"), "{status}");
    serde_json::from_str(&body).ok()
}

struct Agent {
    child: Child,
    port: u16,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_agent(sim: &Sim, segdir: &std::path::Path) -> Agent {
    let port = free_tcp_port();
    let child = sim
        .vagus(&[
            "agent",
            "--node",
            "node-a",
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
            "--segments",
            segdir.to_str().unwrap(),
            "--hz",
            "20",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Owned at once, so the process is killed and reaped whatever happens.
    let agent = Agent { child, port };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if get(port, "/healthz").is_some() {
            return agent;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the agent did not serve /healthz within 20 s");
}

fn probes_required() -> bool {
    std::env::var("VAGUS_REQUIRE_BPF").is_ok_and(|v| v == "1")
}

#[test]
fn shimmed_and_unshimmed_processes_both_appear_with_their_sources() {
    let sim = Sim::new("agent-both");
    let segdir = sim.dir.join("segments");
    std::fs::create_dir_all(&segdir).unwrap();
    let agent = start_agent(&sim, &segdir);
    let first = snapshot(agent.port).expect("a snapshot");
    let probes = first["probes"].as_bool().unwrap();
    if !probes {
        assert!(!probes_required(), "no probes: {}", first["notes"]);
        eprintln!(
            "probes not loaded ({}); checking shim and NVML only",
            first["notes"]
        );
    }
    assert_eq!(first["nvml"], true, "gpusim's NVML: {}", first["notes"]);

    let args = ["--qps", "100", "--duration", "4s", "--input-kib", "4"];
    let plain = sim.spawn_load(&args, &[]);
    let shimmed = sim.spawn_load(
        &args,
        &[
            ("LD_PRELOAD", bin("libvagus_shim.so").to_str().unwrap()),
            ("VAGUS_SHM_DIR", segdir.to_str().unwrap()),
            ("VAGUS_MEMORY_LIMIT", "1GiB"),
        ],
    );
    let (pa, pb) = (plain.id(), shimmed.id());
    let find = |snap: &serde_json::Value, pid: u32| {
        snap["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"] == pid)
            .cloned()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = None;
    while Instant::now() < deadline {
        let s = snapshot(agent.port).unwrap();
        if let (Some(a), Some(b)) = (find(&s, pa), find(&s, pb))
            && b["shim"]["gpu_ns"].as_u64().unwrap_or(0) > 0
            && a["sources"]["nvml"] == true
            && (!probes || a["ebpf"]["syncs"].as_u64().unwrap_or(0) > 0)
        {
            seen = Some((a, b));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (a, b) = seen.expect("both processes with their data within 10 s");
    assert_eq!(a["sources"]["shim"], false, "unshimmed: {a}");
    assert_eq!(b["sources"]["shim"], true, "{b}");
    assert_eq!(b["sources"]["nvml"], true, "{b}");
    if probes {
        assert_eq!(a["sources"]["ebpf"], true, "{a}");
        assert_eq!(
            b["sources"]["ebpf"], true,
            "the probes see shimmed processes too: {b}"
        );
        assert!(a["ebpf"]["allocations"].as_u64().unwrap() >= 1, "{a}");
    }
    assert!(b["shim"]["launches"].as_u64().unwrap() > 0, "{b}");
    // The load's 64 MiB of "weights" and its input buffers, under its limit.
    let device = b["shim"]["memory"]["device"].as_u64().unwrap();
    assert!((64 << 20..65 << 20).contains(&device), "{b}");
    assert_eq!(b["shim"]["memory"]["host"], 0, "{b}");
    assert_eq!(b["shim"]["memory_limit"], 1u64 << 30, "{b}");
    assert_eq!(b["shim"]["refused_allocations"], 0, "{b}");
    assert_eq!(a["comm"], "vagus");

    // Prometheus exposition: valid, with device and process series.
    let (status, metrics) = get(agent.port, "/metrics").unwrap();
    assert!(status.contains("200"), "{status}");
    for series in [
        "DCGM_FI_DEV_GPU_UTIL{",
        "DCGM_FI_DEV_FB_USED{",
        "DCGM_FI_DEV_POWER_USAGE{",
        "vagus_process_info{",
        "vagus_process_launches_total{",
        "vagus_kernel_duration_seconds_bucket{",
        "vagus_agent_windows_total{",
        "vagus_process_memory_limit_bytes{",
        "vagus_process_refused_allocations_total{",
    ] {
        assert!(metrics.contains(series), "no {series} in\n{metrics}");
    }
    assert!(
        metrics.contains(&format!("pid=\"{pb}\"")),
        "the shimmed process"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("vagus_process_shim_memory_bytes{")
                && l.contains("kind=\"device\"")
                && l.contains(&format!("pid=\"{pb}\""))),
        "{metrics}"
    );
    if probes {
        assert!(metrics.contains("vagus_process_sync_wait_seconds_bucket{"));
        assert!(
            metrics.contains(&format!("pid=\"{pa}\"")),
            "the unshimmed process"
        );
    }
    promtool_check(&metrics);

    for c in [plain, shimmed] {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn broken_segments_are_skipped_and_counted() {
    let sim = Sim::new("agent-bad");
    let segdir = sim.dir.join("segments");
    std::fs::create_dir_all(&segdir).unwrap();
    let size = vagus_proto::shm::SEGMENT_BYTES;
    let mut good_header = vec![0u8; size];
    good_header[..8].copy_from_slice(&vagus_proto::shm::MAGIC.to_le_bytes());
    good_header[8..12].copy_from_slice(&vagus_proto::shm::VERSION.to_le_bytes());
    good_header[12..16].copy_from_slice(&(size as u32).to_le_bytes());
    let mut wrong_magic = good_header.clone();
    wrong_magic[..8].copy_from_slice(b"NOTVAGUS");
    let mut wrong_version = good_header.clone();
    wrong_version[8..12].copy_from_slice(&99u32.to_le_bytes());
    let mut wrong_size = good_header.clone();
    wrong_size[12..16].copy_from_slice(&7u32.to_le_bytes());
    std::fs::write(segdir.join("101.shm"), &wrong_magic).unwrap();
    std::fs::write(segdir.join("102.shm"), &wrong_version).unwrap();
    std::fs::write(segdir.join("103.shm"), &wrong_size).unwrap();
    std::fs::write(segdir.join("104.shm"), &good_header[..100]).unwrap();
    std::fs::write(segdir.join("notes.txt"), b"not a segment").unwrap();
    let agent = start_agent(&sim, &segdir);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut skipped = serde_json::Value::Null;
    while Instant::now() < deadline {
        skipped = snapshot(agent.port).unwrap()["segments_skipped"].clone();
        if skipped.as_object().is_some_and(|o| o.len() == 4) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        skipped,
        serde_json::json!({"bad magic": 1, "bad version": 1, "bad size": 1, "too short": 1})
    );
    // Counted once each, and the agent is still working.
    std::thread::sleep(Duration::from_millis(300));
    let s = snapshot(agent.port).unwrap();
    assert_eq!(s["segments_skipped"], skipped);
    let w = s["windows"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(snapshot(agent.port).unwrap()["windows"].as_u64().unwrap() > w);
    let (_, metrics) = get(agent.port, "/metrics").unwrap();
    assert!(
        metrics.contains(
            "vagus_agent_segments_skipped_total{Hostname=\"node-a\",reason=\"bad magic\"} 1"
        ),
        "{metrics}"
    );
}

#[test]
fn mps_percentages_set_through_the_brain_reach_new_clients_only() {
    let mut sim = Sim::new("agent-mps");
    // The agent starts the daemon (--mps-start); the test stops it.
    sim.adopt_mps_daemon();
    let certs = certs_init(&sim, "node-a");
    let addr = format!("127.0.0.1:{}", free_udp_port());
    let mut brain = start_brain(&sim, &addr, &certs);
    let port = free_tcp_port();
    let segdir = sim.dir.join("segments");
    let child = sim
        .vagus(&[
            "agent",
            "--node",
            "node-a",
            "--brain",
            &addr,
            "--certs",
            certs.to_str().unwrap(),
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
            "--segments",
            segdir.to_str().unwrap(),
            "--mps-pipe-dirs",
            sim.dir.join("mps").to_str().unwrap(),
            "--mps-control",
            bin("gpusim-mps-control").to_str().unwrap(),
            "--mps-start",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _agent = Agent { child, port };
    assert!(
        brain
            .wait_for(Duration::from_secs(20), |v| v["event"] == "connected")
            .is_some(),
        "the agent did not connect"
    );

    // The agent started the daemon; the first client starts a server at 100%.
    let short = multi_wave("20", "1s", "1000000");
    let first = sim.load(&short, &[]);
    assert_eq!(first["device"]["sms"], 132, "{first}");
    let snap = snapshot(port).unwrap();
    let servers = snap["mps"][0]["servers"]
        .as_array()
        .expect("servers")
        .clone();
    assert_eq!(servers.len(), 1, "{snap}");
    let server = servers[0]["pid"].as_u64().unwrap();
    assert_eq!(servers[0]["percent"], 100.0);

    // A client that keeps running while the brain halves the server's share.
    let long = multi_wave("20", "3s", "1000000");
    let running = sim.spawn_load(&long, &[]);
    std::thread::sleep(Duration::from_millis(700));
    brain.send(&format!(
        r#"{{"issue": {{"node": "node-a", "command": {{"SetMpsPercentage": {{"gpu": 0, "server_pid": {server}, "percent": 50.0}}}}}}}}"#
    ));
    let id = brain
        .wait_for(Duration::from_secs(5), |v| v["event"] == "issued")
        .expect("issued")["id"]
        .as_u64()
        .unwrap();
    let result = brain
        .wait_for(Duration::from_secs(10), |v| {
            v["event"] == "result" && v["id"].as_u64() == Some(id)
        })
        .expect("a result");
    assert_eq!(result["outcome"], "Applied", "{result}");
    let snap = snapshot(port).unwrap();
    assert_eq!(snap["mps"][0]["servers"][0]["percent"], 50.0, "{snap}");

    // A new client gets half the SMs; the running one kept all of them.
    let after = sim.load(&short, &[]);
    assert_eq!(after["device"]["sms"], 66, "{after}");
    let kept = report(running.wait_with_output().unwrap());
    assert_eq!(kept["device"]["sms"], 132, "{kept}");

    // A bad percentage is refused with the reason, nothing changes.
    brain.send(&format!(
        r#"{{"issue": {{"node": "node-a", "command": {{"SetMpsPercentage": {{"gpu": 0, "server_pid": {server}, "percent": 250.0}}}}}}}}"#
    ));
    let result = brain
        .wait_for(Duration::from_secs(10), |v| v["event"] == "result")
        .expect("a result");
    assert!(
        result["outcome"]
            .as_str()
            .unwrap()
            .contains("250 is not in (0, 100]"),
        "{result}"
    );
    assert_eq!(
        snapshot(port).unwrap()["mps"][0]["servers"][0]["percent"],
        50.0
    );
    let _ = brain.child.kill();
    let _ = brain.child.wait();
}

#[test]
fn xid_errors_are_reported_once_each() {
    let sim = Sim::new("agent-xid");
    let segdir = sim.dir.join("segments");
    let agent = start_agent(&sim, &segdir);
    let first = snapshot(agent.port).unwrap();
    assert_eq!(first["xid_errors"], serde_json::json!([]), "{first}");
    assert!(
        !first["notes"].to_string().contains("XID"),
        "gpusim's NVML offers XID events: {}",
        first["notes"]
    );
    for xid in ["79", "48", "79"] {
        let out = sim
            .vagus(&["gpusim", "xid", "--device", "0", "--xid", xid])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let bad = sim
        .vagus(&["gpusim", "xid", "--device", "7", "--xid", "79"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--device 7"));
    let want = serde_json::json!([
        {"gpu": 0, "xid": 48, "count": 1},
        {"gpu": 0, "xid": 79, "count": 2},
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = serde_json::Value::Null;
    while Instant::now() < deadline {
        got = snapshot(agent.port).unwrap()["xid_errors"].clone();
        if got == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(got, want);
    let (_, metrics) = get(agent.port, "/metrics").unwrap();
    let last = metrics
        .lines()
        .find(|l| l.starts_with("DCGM_FI_DEV_XID_ERRORS{"))
        .unwrap_or_else(|| panic!("no XID gauge in\n{metrics}"));
    assert!(last.ends_with(" 79"), "the last XID: {last}");
    assert!(
        metrics.contains("vagus_gpu_xid_errors_total{gpu=\"0\",xid=\"79\",Hostname=\"node-a\"} 2")
    );
    promtool_check(&metrics);
}
