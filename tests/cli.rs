//! The `vagus` command line: clear errors for a missing driver, a bad
//! kernel image and bad flags, each said once on one line; address flags
//! take host names; the agent says when it cannot reach the brain;
//! `vagus gpusim status` shows the device.

use crate::support::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn stderr_of(mut c: Command) -> String {
    let out = c.output().unwrap();
    assert!(
        !out.status.success(),
        "expected failure, got: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn load_without_a_driver_says_how_to_use_gpusim() {
    let has_system_driver = Command::new("sh")
        .args(["-c", "ldconfig -p | grep -q 'libcuda.so'"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if has_system_driver {
        eprintln!("skipped: this host has a CUDA driver installed");
        return;
    }
    let sim = Sim::new("nodriver");
    let mut c = sim.vagus(&["load", "--duration", "1s"]);
    c.env("LD_LIBRARY_PATH", sim.dir.join("mps"));
    let err = stderr_of(c);
    assert!(
        err.contains("no CUDA driver found") && err.contains("vagus gpusim libdir"),
        "{err}"
    );
}

#[test]
fn a_failing_module_load_names_the_image_and_the_error() {
    let sim = Sim::new("badptx");
    let garbage = sim.dir.join("garbage.ptx");
    std::fs::write(&garbage, "not ptx at all").unwrap();
    let err = stderr_of(sim.vagus(&[
        "load",
        "--duration",
        "1s",
        "--ptx",
        garbage.to_str().unwrap(),
    ]));
    assert!(
        err.contains("cuModuleLoadData")
            && err.contains("garbage.ptx")
            && err.contains("CUDA_ERROR_INVALID_IMAGE"),
        "{err}"
    );

    let other = sim.dir.join("other.ptx");
    std::fs::write(
        &other,
        ".version 7.0\n.target sm_70\n.address_size 64\n.visible .entry other() { ret; }\n",
    )
    .unwrap();
    let err = stderr_of(sim.vagus(&["load", "--duration", "1s", "--ptx", other.to_str().unwrap()]));
    assert!(
        err.contains("vagus_busy_wait") && err.contains("CUDA_ERROR_NOT_FOUND"),
        "{err}"
    );
}

#[test]
fn bad_flags_and_configuration_are_named() {
    let sim = Sim::new("badflags");
    let err = stderr_of(sim.vagus(&["load", "--qps", "0"]));
    assert!(err.contains("--qps"), "{err}");
    let err = stderr_of(sim.vagus(&["load", "--duration", "soon"]));
    assert!(err.contains("soon"), "{err}");
    let err = stderr_of(sim.vagus(&["load", "--block", "2048"]));
    assert!(err.contains("--block"), "{err}");
    let mut c = sim.vagus(&["load", "--duration", "1s"]);
    c.env("GPUSIM_MEMORY_GIB", "-3");
    let err = stderr_of(c);
    assert!(
        err.contains("cuInit") && err.contains("GPUSIM_MEMORY_GIB"),
        "{err}"
    );
}

#[test]
fn gpusim_status_shows_the_work_done() {
    let sim = Sim::new("status");
    let err = stderr_of(sim.vagus(&["gpusim", "status"]));
    assert!(err.contains("no gpusim state"), "{err}");
    sim.load(&["--qps", "50", "--duration", "1s"], &[]);
    let out = sim.vagus(&["gpusim", "status", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = &v["devices"][0];
    assert_eq!(d["sms"], 132);
    assert_eq!(d["kernels_total"], 200, "{v}");
    assert_eq!(
        d["memory_used_bytes"], 0,
        "the load process has exited and released its memory: {v}"
    );
    let text =
        String::from_utf8(sim.vagus(&["gpusim", "status"]).output().unwrap().stdout).unwrap();
    assert!(
        text.contains("GPU 0") && text.contains("kernels 200"),
        "{text}"
    );
}

#[test]
fn devices_come_from_the_toml_file_and_the_environment() {
    let sim = Sim::new("devices");
    let toml = sim.dir.join("gpusim.toml");
    std::fs::write(
        &toml,
        "device_count = 2\n[device]\nsms = 64\nname = \"Test GPU\"\n",
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let mut c = sim.vagus(&["load", "--json", "--qps", "50", "--duration", "1s"]);
        c.args(extra).env("GPUSIM_CONFIG", &toml);
        c.output().unwrap()
    };
    let r = report(run(&["--device", "1"]));
    assert_eq!(r["device"]["name"], "Test GPU");
    assert_eq!(r["device"]["sms"], 64);
    let out = run(&["--device", "2"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cuDeviceGet(2)") && err.contains("CUDA_ERROR_INVALID_DEVICE"),
        "{err}"
    );

    let mut c = sim.vagus(&["gpusim", "status", "--json"]);
    c.env("GPUSIM_CONFIG", &toml);
    let v: serde_json::Value = serde_json::from_slice(&c.output().unwrap().stdout).unwrap();
    assert_eq!(v["devices"].as_array().unwrap().len(), 2);
    assert_eq!(v["devices"][0]["kernels_total"], 0, "{v}");
    assert_eq!(v["devices"][1]["kernels_total"], 200, "{v}");

    let bad = sim.dir.join("bad.toml");
    std::fs::write(&bad, "[device]\nsmz = 64\n").unwrap();
    let mut c = sim.vagus(&["load", "--duration", "1s"]);
    c.env("GPUSIM_CONFIG", &bad);
    let err = stderr_of(c);
    assert!(err.contains("bad.toml") && err.contains("smz"), "{err}");
}

#[test]
fn replay_prints_the_allocation_curve_and_names_bad_input() {
    let sim = Sim::new("replay");
    let nodes = sim.dir.join("nodes.csv");
    let pods = sim.dir.join("pods.csv");
    std::fs::write(
        &nodes,
        "sn,cpu_milli,memory_mib,gpu,model\nn0,64000,262144,2,T4\nn1,64000,262144,1,T4\n",
    )
    .unwrap();
    std::fs::write(
        &pods,
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,4000,1024,1,500\np1,4000,1024,1,1000\np2,1000,1024,0,0\n",
    )
    .unwrap();
    let out = sim
        .vagus(&[
            "replay",
            "--nodes",
            nodes.to_str().unwrap(),
            "--pods",
            pods.to_str().unwrap(),
            "--policy",
            "best-fit",
            "--seeds",
            "1..3",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["policy"], "best-fit");
    assert_eq!(v["trace"], "pods");
    assert_eq!(v["seeds"], serde_json::json!([1, 2, 3]));
    let alloc = v["allocation"].as_object().unwrap();
    assert_eq!(alloc.len(), 131, "0..=130");
    // 3 GPUs: arrivals stop at 130% (3.9 GPUs), and never more than
    // all of them are allocated.
    let at130 = alloc["130"].as_f64().unwrap();
    assert!(at130 > 50.0 && at130 <= 100.0, "{v}");
    let frag = v["fragmentation"].as_object().unwrap();
    assert_eq!(frag.len(), 131);
    assert!(
        frag.values()
            .all(|f| (0.0..=100.0).contains(&f.as_f64().unwrap())),
        "{v}"
    );

    let bad = |args: &[&str], want: &str| {
        let mut c = sim.vagus(&["replay", "--nodes", nodes.to_str().unwrap()]);
        c.args(args);
        let e = stderr_of(c);
        assert!(e.contains(want), "{want:?} not in {e:?}");
    };
    bad(
        &["--pods", pods.to_str().unwrap(), "--policy", "magic"],
        "invalid value 'magic' for '--policy <POLICY>'",
    );
    bad(
        &["--pods", pods.to_str().unwrap(), "--policy", "magic"],
        "[possible values: random, dotprod,",
    );
    bad(
        &["--pods", pods.to_str().unwrap(), "--seeds", "9..3"],
        "--seeds 9..3: the range is reversed (start 9 > end 3)",
    );
    std::fs::write(
        &pods,
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,x,1,1,500\n",
    )
    .unwrap();
    bad(
        &["--pods", pods.to_str().unwrap()],
        "line 2: column cpu_milli is \"x\"",
    );
}

#[test]
fn an_agent_without_its_certificate_says_which_it_looked_for_and_the_ways_out() {
    let sim = Sim::new("cli-agent-cert");
    let certs = certs_init(&sim, "node-a");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    assert_ne!(host, "node-a");
    let out = sim
        .vagus(&[
            "agent",
            "--brain",
            "127.0.0.1:9",
            "--certs",
            certs.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    let l = lines[0];
    for want in [
        host.as_str(),
        "node-a",
        "brain",
        "--node NAME",
        "vagus certs init",
        "--agents",
    ] {
        assert!(l.contains(want), "{want:?} missing from: {l}");
    }
    assert!(!l.contains("os error"), "{l}");
    // With --node naming a node it has no certificate for either.
    let out = sim
        .vagus(&[
            "agent",
            "--brain",
            "127.0.0.1:9",
            "--certs",
            certs.to_str().unwrap(),
            "--node",
            "node-b",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("node-b") && err.contains("--agents node-b") && err.contains("--node"),
        "{err}"
    );
}

/// A node name that could not be a Kubernetes node is refused at start,
/// naming the flag.
#[test]
fn the_agent_refuses_a_node_name_kubernetes_would_refuse() {
    let sim = Sim::new("agent-node-name");
    for bad in ["Node_A", "node/a", "nöde"] {
        let out = sim
            .vagus(&["agent", "--node", bad, "--metrics-addr", "127.0.0.1:0"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad} was taken");
        let err = String::from_utf8_lossy(&out.stderr);
        let lines = lines_of(&err);
        assert_eq!(lines.len(), 1, "{err}");
        assert!(
            lines[0].contains("--node") && lines[0].contains("DNS-1123"),
            "{err}"
        );
    }
}

/// Standard error's non-empty lines.
fn lines_of(err: &str) -> Vec<&str> {
    err.lines().filter(|l| !l.trim().is_empty()).collect()
}

#[test]
fn replay_names_a_reversed_seed_range_and_zero_threads() {
    let sim = Sim::new("cli-replay-flags");
    // The flags are checked before the trace is read.
    let run = |extra: &[&str]| {
        let mut c = sim.vagus(&[
            "replay",
            "--nodes",
            "/nonexistent",
            "--pods",
            "/nonexistent",
        ]);
        c.args(extra);
        stderr_of(c)
    };
    let err = run(&["--seeds", "5..2"]);
    assert_eq!(
        lines_of(&err),
        ["vagus: --seeds 5..2: the range is reversed (start 5 > end 2)"],
        "{err}"
    );
    let err = run(&["--threads", "0"]);
    assert_eq!(
        lines_of(&err),
        ["vagus: --threads 0: must be at least 1"],
        "{err}"
    );
    let err = run(&["--seeds", "0..18446744073709551615"]);
    assert!(err.contains("at most 10000 seeds"), "{err}");
}

#[test]
fn replay_help_lists_every_policy() {
    let sim = Sim::new("cli-replay-help");
    for help in ["--help", "-h"] {
        let out = sim.vagus(&["replay", help]).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        let policy = text
            .split("--policy")
            .nth(1)
            .unwrap_or_else(|| panic!("no --policy in {text}"));
        for (name, _) in vagus_replay::policy::Kind::ALL {
            assert!(policy.contains(name), "{name} not in {help}: {text}");
        }
    }
}

#[test]
fn a_bad_path_is_said_once_on_one_line() {
    let sim = Sim::new("cli-bad-path");
    let missing = sim.dir.join("missing");
    let m = missing.to_str().unwrap();
    let check = |args: &[&str], want: &str| {
        let err = stderr_of(sim.vagus(args));
        let lines = lines_of(&err);
        assert_eq!(lines.len(), 1, "one line: {err}");
        assert!(lines[0].starts_with("vagus: "), "{err}");
        assert!(lines[0].contains(want), "{want:?} not in {err}");
        assert_eq!(
            err.matches("(os error 2)").count(),
            1,
            "the cause once: {err}"
        );
    };
    check(
        &["replay", "--nodes", m, "--pods", m],
        &format!("cannot read {m}: "),
    );
    check(
        &["brain", "--http", "127.0.0.1:0", "--tokens", m],
        &format!("--tokens {m}: "),
    );
    check(
        &["brain", "--quic", "127.0.0.1:0", "--certs", m],
        &format!("--certs {m}: "),
    );
    let tokens = write_tokens(&sim);
    check(
        &[
            "brain",
            "--http",
            "127.0.0.1:0",
            "--tokens",
            &tokens,
            "--config",
            m,
        ],
        m,
    );
}

const TOKEN: &str = "admin-token-for-the-cli-tests";

fn write_tokens(sim: &Sim) -> String {
    admin_tokens(sim, TOKEN)
}

/// `GET path` from localhost:`port`: the status line and body, or `None`
/// while nothing answers.
fn get(port: u16, path: &str) -> Option<(String, String)> {
    let mut s = std::net::TcpStream::connect(("localhost", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_string(), body.to_string()))
}

#[test]
fn the_brain_listens_on_a_host_name() {
    let sim = Sim::new("cli-http-localhost");
    let tokens = write_tokens(&sim);
    let audit = sim.dir.join("audit.sqlite");
    let port = free_tcp_port();
    let http = format!("localhost:{port}");
    let b = start_brain_with(
        &sim,
        &[
            "--http",
            &http,
            "--tokens",
            &tokens,
            "--audit",
            audit.to_str().unwrap(),
        ],
    );
    let ev = b
        .wait_for(Duration::from_secs(60), |v| v["event"] == "http")
        .expect("the brain did not start its HTTP API on localhost");
    let at: std::net::SocketAddr = ev["addr"].as_str().unwrap().parse().unwrap();
    assert!(at.ip().is_loopback() && at.port() == port, "{ev}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let (status, body) = loop {
        if let Some(r) = get(port, "/healthz") {
            break r;
        }
        assert!(Instant::now() < deadline, "no answer on {http} in 60 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.contains(" 200 "), "{status}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ok", "{v}");
}

#[test]
fn a_host_name_that_does_not_resolve_is_named_with_its_flag() {
    let sim = Sim::new("cli-unresolved");
    let err = stderr_of(sim.vagus(&[
        "agent",
        "--brain",
        "nosuchhost.invalid:7443",
        "--certs",
        "/nonexistent",
        "--node",
        "node-a",
    ]));
    let lines = lines_of(&err);
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0]
            .starts_with("vagus: --brain nosuchhost.invalid:7443: cannot resolve the host name: "),
        "{err}"
    );
    let err = stderr_of(sim.vagus(&["brain", "--http", "localhost"]));
    assert!(
        err.contains("--http localhost: expected HOST:PORT"),
        "{err}"
    );
}

/// A child process killed when dropped (a failed assertion included).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_agent_says_once_that_it_cannot_reach_the_brain() {
    let sim = Sim::new("cli-agent-unreachable");
    let certs = certs_init(&sim, "node-a");
    // Nobody listens there.
    let port = free_udp_port();
    let brain = format!("localhost:{port}");
    let mut agent = Killed(
        sim.vagus(&[
            "agent",
            "--brain",
            &brain,
            "--certs",
            certs.to_str().unwrap(),
            "--node",
            "node-a",
            "--no-bpf",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    let (tx, lines) = mpsc::channel::<String>();
    let stderr = agent.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    let want = format!("vagus agent: cannot reach the brain at {brain} (127.0.0.1:{port}): ");
    let mut seen = Vec::new();
    // The first attempt gives up after the QUIC idle timeout (5 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) if l.starts_with(&want) => break l,
            Ok(l) => seen.push(l),
            Err(_) => panic!("no {want:?} within 60 s; stderr: {seen:#?}"),
        }
    };
    assert!(first.contains("; retrying in "), "{first}");
    // It keeps retrying, quietly: the attempts after the first fail the
    // same way (each within the idle timeout and the backoff, ≤ 10 s) and
    // say nothing more.
    let quiet = Instant::now() + Duration::from_secs(12);
    while let Some(left) = quiet.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(l) => seen.push(l),
            Err(mpsc::RecvTimeoutError::Timeout) => break,
            Err(e) => panic!("the agent stopped ({e}): {seen:#?}"),
        }
    }
    assert!(
        !seen.iter().any(|l| l.contains("cannot reach")),
        "said once: {first}\n{seen:#?}"
    );
    assert!(
        agent.0.try_wait().unwrap().is_none(),
        "the agent keeps running"
    );
}

#[test]
fn bench_loop_and_control_replay_name_bad_input() {
    let sim = Sim::new("cli-bench-loop");
    let out = sim
        .vagus(&["bench", "loop", "--policy", "fastest"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    for name in [
        "--policy fastest",
        "exclusive",
        "time-sliced",
        "static-equal",
        "static-class",
        "static-budget",
        "vagus",
    ] {
        assert!(err.contains(name), "{name} not in {err}");
    }
    let out = sim
        .vagus(&[
            "bench",
            "loop",
            "--policy",
            "vagus",
            "--trace",
            "/nonexistent.csv",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("/nonexistent.csv"),
        "{err}"
    );
    let out = sim
        .vagus(&["bench", "loop", "--slo-ms", "0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--slo-ms"), "{err}");
    // A record that is not one is named, with its line.
    let bad = sim.dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"control\": {}}\nnot json\n").unwrap();
    let out = sim
        .vagus(&["control", "replay", bad.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("bad.jsonl:2"),
        "{err}"
    );
}
