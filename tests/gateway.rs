//! `vagus gateway` in front of replicas the brain runs on gpusim: requests
//! follow the brain's weights, a weight of 0 or a `DELETE` drains a replica
//! without failing a request, and a replica killed under load fails at
//! most the requests it held.

use crate::brain_api::{
    Reap, TOKEN, brain_and_agent_with, http, node_joined, profile, replica_until, with,
};
use crate::support::*;
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct Gateway {
    child: Child,
    pub(crate) port: u16,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A brain and its agent for `node-a`, MPS shares in quarters.
fn cluster(sim: &mut Sim) -> (crate::support::BrainProc, SocketAddr, Owned) {
    let config = sim.dir.join("core.toml");
    // One node here: the replicas share it.
    std::fs::write(
        &config,
        "replicas_per_node = 4\n[classes]\ngrid = [25, 50, 75, 100]\n",
    )
    .unwrap();
    let (b, addr, agent, _) =
        brain_and_agent_with(sim, false, &["--config", config.to_str().unwrap()], &[]);
    node_joined(addr);
    (b, addr, Owned(agent))
}

/// Places replica `name` of model `m` (a quarter of the GPU) and waits
/// until it takes requests; its pid.
fn replica(addr: SocketAddr, name: &str) -> u32 {
    replica_with(addr, name, 50, &[])
}

/// Places replica `name` with latency objective `sla_ms`, its server run
/// with `serve` besides the usual flags.
fn replica_with(addr: SocketAddr, name: &str, sla_ms: u32, serve: &[&str]) -> u32 {
    let port = free_tcp_port();
    let mut args: Vec<String> = [
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--model",
        "m",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(
        ["--model-gb", "1"]
            .iter()
            .chain(serve)
            .map(|a| a.to_string()),
    );
    let body = with(
        profile(name),
        serde_json::json!({"model_id": "m", "model_size_gb": 1.0, "cpu_milli": 200,
            "share_pct": 25, "sla_ms": sla_ms, "launch": {
            "command": bin("vagus").to_str().unwrap(),
            "args": args,
            "port": port,
        }}),
    );
    let (st, v) = http(addr, "POST", "/v1/placements", &body);
    assert_eq!(st, 201, "{v}");
    let v = replica_until(addr, name, "ready", |r| {
        r["state"] == "ready" || r["state"] == "running"
    });
    v["replica"]["pid"].as_u64().unwrap() as u32
}

/// `vagus gateway` on a free port with `flags` (where its routes come from).
fn start_gateway(sim: &Sim, flags: &[&str]) -> Gateway {
    let port = free_tcp_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["gateway", "--listen", &listen];
    args.extend_from_slice(flags);
    let child = sim
        .vagus(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Gateway { child, port }
}

/// A gateway that takes its routes from the brain at `addr`.
pub(crate) fn gateway(sim: &Sim, addr: SocketAddr) -> Gateway {
    let token = sim.dir.join("gateway.token");
    std::fs::write(&token, TOKEN).unwrap();
    let brain = format!("http://{addr}");
    start_gateway(
        sim,
        &[
            "--brain",
            &brain,
            "--token-file",
            token.to_str().unwrap(),
            "--refresh-ms",
            "200",
            "--report-ms",
            "250",
        ],
    )
}

/// The gateway's metrics page.
fn page(g: &Gateway) -> String {
    get(("127.0.0.1", g.port), "/metrics")
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// The sum of family `name`'s samples whose labels include `labels`, read
/// with a Prometheus text parser.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let Ok((_, families)) = nom_openmetrics::parser::prometheus(text) else {
        panic!("the gateway's page does not parse: {text}");
    };
    families
        .iter()
        .flat_map(|f| f.samples.iter())
        .filter(|s| s.name() == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels().iter().any(|l| l.name == *k && l.value == *v))
        })
        .map(|s| s.number())
        .sum()
}

fn forwarded(g: &Gateway, replica: &str) -> f64 {
    metric(
        &page(g),
        "vagus_gateway_forwarded_total",
        &[("replica", replica)],
    )
}

/// Waits until the gateway routes `model` to `n` replicas.
fn routed(g: &Gateway, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&page(g), "vagus_gateway_replicas", &[("model", "m")]) != n as f64 {
        assert!(
            Instant::now() < deadline,
            "the gateway never routed {n} replicas: {}",
            page(g)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn weight(addr: SocketAddr, workload: &str, w: u32) {
    let c = serde_json::json!({"action": "weight", "workload": workload, "weight": w});
    let (st, v) = http(addr, "POST", "/v1/controls", &c.to_string());
    assert_eq!(st, 200, "{v}");
}

/// `vagus bench serve` against the gateway, in the background.
pub(crate) fn load(sim: &Sim, g: &Gateway, args: &[&str]) -> Child {
    let url = format!("http://127.0.0.1:{}", g.port);
    let mut all = vec!["bench", "serve", "--url", &url, "--model", "m", "--json"];
    all.extend_from_slice(args);
    sim.vagus(&all)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

pub(crate) fn report(c: Child) -> serde_json::Value {
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success(), "bench serve failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn requests_follow_the_brains_weights() {
    let mut sim = Sim::new("gateway-weights");
    let (_b, addr, _agent) = cluster(&mut sim);
    // m-a's objective is generous; m-b's server takes 12.5 ms a decode
    // step (1 GB read at 80 GB/s), past its 1 ms objective.
    let _reap = Reap(vec![
        replica_with(addr, "m-a", 60_000, &[]),
        replica_with(addr, "m-b", 1, &["--hbm-gbps", "100"]),
    ]);
    weight(addr, "m-a", 10);
    weight(addr, "m-b", 90);
    let g = gateway(&sim, addr);
    routed(&g, 2);
    // One route update after the weights: the next ones carry them.
    std::thread::sleep(Duration::from_millis(500));
    let r = report(load(
        &sim,
        &g,
        &[
            "--qps",
            "400",
            "--max-requests",
            "2000",
            "--prompt-tokens",
            "16",
            "--output-tokens",
            "1",
        ],
    ));
    assert_eq!(
        (r["requests"].as_u64(), r["failed"].as_u64()),
        (Some(2000), Some(0)),
        "{r}"
    );
    let (a, b) = (forwarded(&g, "m-a"), forwarded(&g, "m-b"));
    eprintln!("forwarded: m-a (weight 10) {a}, m-b (weight 90) {b}");
    assert_eq!(a + b, 2000.0);
    assert!(
        (a / 2000.0 - 0.10).abs() <= 0.02,
        "m-a (weight 10) got {a} of 2000"
    );
    // The gateway streamed what it measured to the brain: each replica's
    // requests, counted once, with their latency (the load took 5 s, well
    // inside the brain's 10 s horizon).
    let deadline = Instant::now() + Duration::from_secs(4);
    let measured = |id: &str| {
        let (_, v) = http(addr, "GET", &format!("/v1/placements/{id}"), "");
        v["replica"]["gateway"].clone()
    };
    loop {
        let (ga, gb) = (measured("m-a"), measured("m-b"));
        let n = |g: &serde_json::Value| g["requests"].as_u64().unwrap_or(0) as f64;
        if n(&ga) == a && n(&gb) == b {
            assert_eq!(
                (ga["errors"].as_u64(), gb["errors"].as_u64()),
                (Some(0), Some(0))
            );
            for g in [&ga, &gb] {
                let p50 = g["latency_p50_s"].as_f64().unwrap();
                assert!(
                    p50 > 0.0 && p50 <= g["latency_p99_s"].as_f64().unwrap(),
                    "{g}"
                );
                assert!(
                    g["ttft_p50_s"].as_f64().unwrap() <= g["latency_p99_s"].as_f64().unwrap(),
                    "{g}"
                );
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the brain's view of the gateway: m-a {ga}, m-b {gb}; the gateway forwarded {a} and {b}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Each answer counted against its workload's objective, at the gateway
    // and, from its windows, at the brain: m-a met every one, m-b none.
    let slo = |text: &str, family: &str, label: (&str, &str)| {
        metric(text, &format!("vagus_{family}_total"), &[label])
    };
    let counted = |replica: &str| {
        let (gp, bp) = (page(&g), get(addr, "/metrics").unwrap().1);
        let n = (
            slo(&gp, "gateway_slo_requests", ("replica", replica)),
            slo(&gp, "gateway_slo_met", ("replica", replica)),
            slo(&bp, "brain_slo_requests", ("workload", replica)),
            slo(&bp, "brain_slo_met", ("workload", replica)),
        );
        (n, gp, bp)
    };
    for (replica, n, met) in [("m-a", a, a), ("m-b", b, 0.0)] {
        // A met may reach the brain a window after its request.
        let deadline = Instant::now() + Duration::from_secs(3);
        let (mut got, mut gp, mut bp) = counted(replica);
        while got != (n, met, n, met) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            (got, gp, bp) = counted(replica);
        }
        assert_eq!(
            got,
            (n, met, n, met),
            "{replica}'s answers against its objective: the gateway's page {gp}\nthe brain's {bp}"
        );
        let attainment = metric(&bp, "vagus_brain_slo_attainment", &[("workload", replica)]);
        assert_eq!(attainment, met / n, "{replica}");
    }
    // Both pages, with these series, are what Prometheus takes.
    promtool_check(&page(&g));
    promtool_check(&get(addr, "/metrics").unwrap().1);
}

#[test]
fn weight_zero_and_delete_drain_without_failures_and_a_killed_replica_fails_only_its_own() {
    let mut sim = Sim::new("gateway-drain");
    let (_b, addr, agent) = cluster(&mut sim);
    let pids = vec![
        replica(addr, "m-a"),
        replica(addr, "m-b"),
        replica(addr, "m-c"),
    ];
    let _reap = Reap(pids.clone());
    let g = gateway(&sim, addr);
    routed(&g, 3);
    // Requests that take a while (100 tokens each), 8 s of them.
    let args = [
        "--qps",
        "15",
        "--duration",
        "8s",
        "--prompt-tokens",
        "64",
        "--output-tokens",
        "100",
    ];
    let bench = load(&sim, &g, &args);
    std::thread::sleep(Duration::from_secs(2));
    // Weight 0: no new request within one route update (200 ms here, and
    // the brain's answer); those it holds finish.
    weight(addr, "m-a", 0);
    std::thread::sleep(Duration::from_millis(600));
    let a_then = forwarded(&g, "m-a");
    // DELETE under load: m-b drains (no new requests, the held ones
    // finish), then stops.
    let (st, v) = http(addr, "DELETE", "/v1/placements/m-b", "");
    assert_eq!(st, 200, "{v}");
    let r = report(bench);
    eprintln!(
        "drain: {} requests, {} failed; m-a forwarded {a_then} before weight 0, {} after",
        r["requests"],
        r["failed"],
        forwarded(&g, "m-a")
    );
    assert_eq!(r["failed"], 0, "weight 0 and DELETE fail nothing: {r}");
    assert!(r["requests"].as_u64().unwrap() > 80, "{r}");
    assert_eq!(
        forwarded(&g, "m-a"),
        a_then,
        "m-a got requests after its weight went to 0"
    );
    let port = agent_port(&agent.0);
    // Well inside the 30 s grace period: the drain ended when m-b held
    // nothing, not when time ran out.
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let snap = crate::brain_api::agent_snapshot(port);
        let b = snap["replicas"]
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["id"] == "m-b").cloned());
        if b.as_ref().is_some_and(|b| b["state"] == "exited") {
            break;
        }
        assert!(Instant::now() < deadline, "m-b never stopped: {snap}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // m-a back; m-c killed under load: only what m-c held fails.
    weight(addr, "m-a", 100);
    routed(&g, 2);
    std::thread::sleep(Duration::from_millis(500));
    let bench = load(&sim, &g, &args);
    std::thread::sleep(Duration::from_secs(3));
    // One reading: what m-c held, and how many it had been sent.
    let before = page(&g);
    let held = metric(&before, "vagus_gateway_in_flight", &[("replica", "m-c")]);
    let sent_before = metric(
        &before,
        "vagus_gateway_forwarded_total",
        &[("replica", "m-c")],
    );
    // SAFETY: kill only sends a signal.
    unsafe {
        libc::kill(pids[2] as i32, libc::SIGKILL);
    }
    let r = report(bench);
    let failed = r["failed"].as_f64().unwrap();
    // Every request that failed was one m-c held when it died: forwarded to
    // it, its answer under way (its first byte had come), then cut off —
    // the gateway's 502s for m-c, and none for anyone else. Those sent to it
    // after it died went elsewhere (retried: nothing had reached it).
    let text = page(&g);
    let m = |replica: &str, name: &str, code: Option<&str>| {
        let mut l = vec![("replica", replica)];
        if let Some(c) = code {
            l.push(("code", c));
        }
        metric(&text, name, &l)
    };
    let cut = m("m-c", "vagus_gateway_requests_total", Some("502"));
    let retried = metric(&text, "vagus_gateway_retries_total", &[]);
    // Sent to m-c after the reading and not sent again elsewhere (those
    // reached it, or it was still up): at most these joined what it held.
    let later = m("m-c", "vagus_gateway_forwarded_total", None) - sent_before - retried;
    eprintln!(
        "killed m-c holding {held} (+{later} sent after the reading): {failed} failed of {}, \
         {cut} cut off, {retried} sent again elsewhere",
        r["requests"]
    );
    assert_eq!(cut, failed, "every failure is one m-c held: {text}");
    assert!(cut <= held + later, "only what m-c held fails: {text}");
    assert_eq!(
        m("m-a", "vagus_gateway_requests_total", Some("502")),
        0.0,
        "{text}"
    );
    assert!(
        r["requests"].as_u64().unwrap() > 80,
        "the rest went on: {r}"
    );
    let after = page(&g);
    assert!(
        metric(&after, "vagus_gateway_replicas", &[("model", "m")]) <= 1.0,
        "m-c is marked down at once: {after}"
    );
}

/// The agent's metrics port, from its command line.
fn agent_port(agent: &Child) -> u16 {
    let argv = std::fs::read(format!("/proc/{}/cmdline", agent.id())).unwrap();
    let args: Vec<String> = argv
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let i = args.iter().position(|a| a == "--metrics-addr").unwrap();
    args[i + 1].rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn bad_requests_are_named_and_a_replicas_own_answers_pass_through() {
    use std::io::{Read, Write};
    let sim = Sim::new("gateway-bad-input");
    let server = crate::serve::serve_with(&sim, &[], &[]);
    let routes = serde_json::json!({"models": {
        "m": [{"placement": "m-a", "node": "n", "url": server.url, "state": "running", "weight": 100}],
        "z": [{"placement": "z-a", "node": "n", "url": "http://127.0.0.1:9", "state": "draining", "weight": 0}],
    }});
    let file = sim.dir.join("routes.json");
    std::fs::write(&file, routes.to_string()).unwrap();
    let g = start_gateway(&sim, &["--routes", file.to_str().unwrap()]);
    let post = |body: &[u8]| -> (u16, serde_json::Value) {
        let mut s = loop {
            match std::net::TcpStream::connect(("127.0.0.1", g.port)) {
                Ok(s) => break s,
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let _ = write!(
            s,
            "POST /v1/completions HTTP/1.1\r\nHost: g\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let _ = s.write_all(body);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let status = out
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        (status, serde_json::from_str(body).unwrap_or_default())
    };
    let param = |v: &serde_json::Value| v["error"]["param"].as_str().unwrap_or("").to_string();
    let (st, v) = post(b"{not json");
    assert_eq!((st, param(&v).as_str()), (400, "body"), "{v}");
    let (st, v) = post(br#"{"model": "nope", "prompt": "hi"}"#);
    assert_eq!((st, param(&v).as_str()), (404, "model"), "{v}");
    let (st, v) = post(br#"{"prompt": "hi"}"#);
    assert_eq!(
        (st, param(&v).as_str()),
        (400, "model"),
        "two models: which? {v}"
    );
    let (st, v) = post(br#"{"model": "z", "prompt": "hi"}"#);
    assert_eq!(
        (st, param(&v).as_str()),
        (503, "model"),
        "weight 0 only: {v}"
    );
    let big = vec![b' '; (16 << 20) + 1];
    let (st, v) = post(&big);
    assert_eq!((st, param(&v).as_str()), (413, "body"), "{v}");
    // The replica's own refusal, naming its field, comes through.
    let (st, v) = post(br#"{"model": "m", "prompt": "hi", "max_tokens": 0}"#);
    assert_eq!((st, param(&v).as_str()), (400, "max_tokens"), "{v}");
    let (st, v) = post(br#"{"model": "m", "prompt": "hello", "max_tokens": 3}"#);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 3, "{v}");
}
