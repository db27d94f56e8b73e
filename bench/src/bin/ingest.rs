//! Ingest load: N simulated agents in this process stream telemetry windows
//! at H Hz to a real `vagus brain` process over QUIC with mutual TLS on
//! loopback. Each agent runs the transport's own agent loop
//! (`vagus_agent::uplink::run`: its own certificate and connection,
//! acknowledgements, outage buffer); the agents share a few UDP sockets, as
//! nothing but the 5-tuple would differ between hosts.
//!
//! Measured: the brain's sustained windows/s and agent → brain lag (from
//! its own once-a-second ingest metrics), the brain's CPU (from
//! /proc/PID/stat) and resident memory (VmRSS before the agents, at the
//! end, and its peak VmHWM), and this harness's CPU.
//!
//! ```text
//! ingest --agents 1000 [--hz 10] [--duration 20] [--warmup 5]
//!        [--gpus 8] [--processes 16] [--histograms 3] [--endpoints 8]
//!        [--vagus target/release/vagus] [--loop on|off]
//! ```
//!
//! `--loop on|off` also starts the brain's HTTP API, which runs the control
//! loop (off: `tick_ms = 0`), and reads the loop's own time from its
//! `/metrics` (`vagus_brain_loop_seconds_total`, `vagus_brain_loop_ticks_total`)
//! over the measured interval: `loop_cpu_cores` and `loop_us_per_tick`. Every
//! process of every window is one the loop observes each tick.

use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Serializer, V2Serializer};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use vagus_agent::uplink::{DEFAULT_BUFFER_BYTES, UplinkConfig, UplinkStats};
use vagus_link::certs::{CA_NAME, Ca};
use vagus_link::tls::Identity;
use vagus_proto::wire::{
    self, GpuWindow, Hello, MIN_PROTOCOL_VERSION, Message, PROTOCOL_VERSION, ProcessWindow,
    TelemetryWindow,
};

struct Args {
    agents: usize,
    hz: f64,
    duration: f64,
    warmup: f64,
    gpus: u32,
    processes: u32,
    histograms: u32,
    endpoints: usize,
    vagus: PathBuf,
    /// Some(on): the HTTP API too, with the control loop on or off.
    control: Option<bool>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        agents: 100,
        hz: 10.0,
        duration: 20.0,
        warmup: 5.0,
        gpus: 8,
        processes: 16,
        histograms: 3,
        endpoints: 8,
        vagus: std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("vagus")))
            .unwrap_or_else(|| PathBuf::from("vagus")),
        control: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {v:?}: {e}");
        match flag.as_str() {
            "--agents" => a.agents = v.parse().map_err(|e| bad(&e))?,
            "--hz" => a.hz = v.parse().map_err(|e| bad(&e))?,
            "--duration" => a.duration = v.parse().map_err(|e| bad(&e))?,
            "--warmup" => a.warmup = v.parse().map_err(|e| bad(&e))?,
            "--gpus" => a.gpus = v.parse().map_err(|e| bad(&e))?,
            "--processes" => a.processes = v.parse().map_err(|e| bad(&e))?,
            "--histograms" => a.histograms = v.parse().map_err(|e| bad(&e))?,
            "--endpoints" => a.endpoints = v.parse().map_err(|e| bad(&e))?,
            "--vagus" => a.vagus = PathBuf::from(v),
            "--loop" => {
                a.control = Some(match v.as_str() {
                    "on" => true,
                    "off" => false,
                    _ => return Err(bad(&"on or off")),
                })
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.agents == 0
        || a.hz.is_nan()
        || a.hz <= 0.0
        || a.endpoints == 0
        || a.histograms > a.processes
    {
        return Err(
            "need --agents ≥ 1, --hz > 0, --endpoints ≥ 1, --histograms ≤ --processes".into(),
        );
    }
    Ok(a)
}

/// A kernel-duration histogram as an agent fed by the shim would send it:
/// `n` launches spread log-normally around `median_ns`, at the resolution
/// the shim measures (its segment's eight buckets per power of two, each
/// recorded at its floor), in an HdrHistogram of 1 ns .. 60 s at 2
/// significant digits.
fn kernel_histogram(n: u64, median_ns: f64, seed: u64) -> Vec<u8> {
    use vagus_proto::shm::{bucket_floor, bucket_of};
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 2).expect("bounds");
    let mut x = seed | 1;
    for _ in 0..n {
        // xorshift, then Box-Muller for a normal deviate.
        let mut uniform = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64
        };
        let (u1, u2) = (uniform().max(1e-12), uniform());
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        let ns = (median_ns * (0.35 * z).exp()) as u64;
        h.saturating_record(bucket_floor(bucket_of(ns)).max(1));
    }
    let mut out = Vec::new();
    V2Serializer::new()
        .serialize(&h, &mut out)
        .expect("serialize");
    out
}

/// One node's window: `gpus` GPUs, `processes` processes, the first
/// `histograms` of them with a kernel-duration histogram. Process identity
/// (container, pod, namespace) is in every tenth window, as the wire
/// protocol allows (empty means unchanged).
fn template(node: &str, a: &Args, hists: &[Vec<u8>]) -> TelemetryWindow {
    TelemetryWindow {
        node: node.to_string(),
        seq: 0,
        start_unix_ns: 0,
        duration_ns: (1e9 / a.hz) as u64,
        gpus: (0..a.gpus)
            .map(|i| GpuWindow {
                index: i,
                utilization: 0.61,
                sm_utilization: 0.48,
                memory_used_bytes: 41 << 30,
                power_mw: 412_000,
                temperature_c: 61,
                xids: Vec::new(),
            })
            .collect(),
        processes: (0..a.processes)
            .map(|i| ProcessWindow {
                pid: 40_000 + i,
                ns_pid: 1 + i,
                gpu: i % a.gpus.max(1),
                cgroup_id: 0x1_0000_0000 + u64::from(i),
                container: "vllm".into(),
                pod: format!("llama-8b-{i:02}-7f9c"),
                namespace: "serving".into(),
                launches: 1_800,
                gpu_time_ns: 61_000_000,
                occupancy_weighted_sm_ns: 29_000_000,
                memory_bytes: 18 << 30,
                mps_percent: 50.0,
                shimmed: true,
                kernel_hist: if i < a.histograms {
                    hists[i as usize % hists.len()].clone()
                } else {
                    Vec::new()
                },
                sync_hist: Vec::new(),
                memory: None,
            })
            .collect(),
        dropped_windows: 0,
        mps: Vec::new(),
        serving: Vec::new(),
        replicas: Vec::new(),
    }
}

const VIEWER: &str = "bench-viewer-token-00000001";

/// The loop's seconds and ticks so far, from the brain's `/metrics` (read
/// with the parser the agent reads inference servers' pages with).
fn loop_time(addr: std::net::SocketAddr) -> (f64, f64) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("the brain's HTTP API");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut page = String::new();
    s.read_to_string(&mut page).expect("response");
    let body = page.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let (_, families) =
        nom_openmetrics::parser::prometheus(body).expect("the brain's metrics parse");
    let value = |name: &str| {
        families
            .iter()
            .flat_map(|f| &f.samples)
            .find(|x| x.name() == name)
            .map(|x| x.number())
            .expect("the loop's metric")
    };
    (
        value("vagus_brain_loop_seconds_total"),
        value("vagus_brain_loop_ticks_total"),
    )
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// (user + system CPU seconds, VmRSS KiB, VmHWM KiB) of a process.
fn proc_usage(pid: &str) -> (f64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = f
        .get(11)
        .zip(f.get(12))
        .map(|(u, s)| (u.parse::<f64>().unwrap_or(0.0) + s.parse::<f64>().unwrap_or(0.0)) / ticks)
        .unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (cpu, kib("VmRSS:"), kib("VmHWM:"))
}

fn write_certs(dir: &Path, ca: &Ca) {
    std::fs::create_dir_all(dir).expect("certs dir");
    let brain = ca.issue("brain").expect("brain certificate");
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).expect("write");
    std::fs::write(dir.join("brain.pem"), &brain.cert_pem).expect("write");
    std::fs::write(dir.join("brain.key"), &brain.key_pem).expect("write");
}

fn main() {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ingest: {e}");
            std::process::exit(2);
        }
    };
    let dir = std::env::temp_dir().join(format!("vagus-ingest-{}", std::process::id()));
    let ca = Ca::new(CA_NAME).expect("CA");
    write_certs(&dir, &ca);

    // The brain, as operators run it.
    let mut cmd = Command::new(&a.vagus);
    cmd.args(["brain", "--quic", "127.0.0.1:0", "--certs"])
        .arg(&dir)
        .args(["--stats-every", "1"]);
    if let Some(on) = a.control {
        let tokens = dir.join("tokens.toml");
        std::fs::write(
            &tokens,
            format!("[[token]]\nname = \"bench\"\nrole = \"viewer\"\ntoken = \"{VIEWER}\"\n"),
        )
        .expect("tokens file");
        let config = dir.join("core.toml");
        let tick = if on { 100 } else { 0 };
        std::fs::write(&config, format!("[control]\ntick_ms = {tick}\n")).expect("config");
        cmd.args(["--http", "127.0.0.1:0", "--tokens"])
            .arg(&tokens)
            .arg("--config")
            .arg(&config);
    }
    let mut brain = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", a.vagus.display()));
    let pid = brain.id().to_string();
    let (tx, lines) = mpsc::channel::<serde_json::Value>();
    let out = brain.stdout.take().expect("piped");
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&l)
                && tx.send(v).is_err()
            {
                return;
            }
        }
    });
    let mut http = None;
    let started = loop {
        let v = lines
            .recv_timeout(Duration::from_secs(10))
            .expect("the brain starts");
        if v["event"] == "http" {
            http = v["addr"]
                .as_str()
                .and_then(|s| s.parse::<std::net::SocketAddr>().ok());
            continue;
        }
        break v;
    };
    let addr: std::net::SocketAddr = started["addr"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("the brain's address");
    std::thread::sleep(Duration::from_millis(300));
    let (_, rss_idle, _) = proc_usage(&pid);

    // One certificate per node, as in a fleet.
    let t = Instant::now();
    let ids: Vec<(String, Identity)> = (0..a.agents)
        .map(|i| {
            let node = format!("node-{i:05}");
            let c = ca.issue(&node).expect("agent certificate");
            let id = Identity::from_pem(&c.cert_pem, &c.key_pem, ca.cert_pem()).expect("identity");
            (node, id)
        })
        .collect();
    eprintln!("{} agent certificates in {:.1?}", a.agents, t.elapsed());

    let hists: Vec<Vec<u8>> = (0..4)
        .map(|s| kernel_histogram(600, 90_000.0, s + 1))
        .collect();
    let mut sample = template("node-00000", &a, &hists);
    let encode = |w: &TelemetryWindow| {
        let mut frame = Vec::new();
        wire::encode(
            &Message::Telemetry(w.clone()),
            PROTOCOL_VERSION,
            wire::DEFAULT_MAX_FRAME,
            &mut frame,
        )
        .expect("encode");
        frame
    };
    let keyframe = encode(&sample);
    for p in &mut sample.processes {
        p.container.clear();
        p.pod.clear();
        p.namespace.clear();
    }
    let frame = encode(&sample);
    let hist_bytes: Vec<usize> = hists.iter().map(Vec::len).collect();
    eprintln!(
        "window: {} GPUs, {} processes, {} kernel histograms ({:?} bytes each): {} bytes per frame, {} with process identity (every tenth)",
        a.gpus,
        a.processes,
        a.histograms,
        hist_bytes,
        frame.len(),
        keyframe.len()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let generated = Arc::new(AtomicU64::new(0));
    let stats: Vec<Arc<Mutex<UplinkStats>>> = (0..a.agents)
        .map(|_| Arc::new(Mutex::new(UplinkStats::default())))
        .collect();
    let period = Duration::from_secs_f64(1.0 / a.hz);
    rt.block_on(async {
        let endpoints: Vec<quinn::Endpoint> = (0..a.endpoints)
            .map(|_| vagus_agent::uplink::client_endpoint(addr).expect("endpoint"))
            .collect();
        for (i, (node, identity)) in ids.into_iter().enumerate() {
            let (wtx, wrx) = tokio::sync::mpsc::channel(16);
            let cfg = UplinkConfig {
                brain: addr,
                brain_name: "brain".into(),
                identity,
                hello: Hello {
                    min_version: MIN_PROTOCOL_VERSION,
                    max_version: PROTOCOL_VERSION,
                    node: node.clone(),
                    session: 1,
                    agent_version: "bench".into(),
                    cpu_milli: Some(128_000),
                    memory_mib: Some(1 << 20),
                    gpus: Vec::new(),
                },
                buffer_bytes: DEFAULT_BUFFER_BYTES,
                backoff_min: Duration::from_millis(100),
                backoff_max: Duration::from_secs(2),
                endpoint: Some(endpoints[i % endpoints.len()].clone()),
                journal: vagus_agent::journal::Journal::in_memory(),
            };
            tokio::spawn(vagus_agent::uplink::run(
                cfg,
                wrx,
                |_| wire::Outcome::Failed("bench agent".into()),
                stats[i].clone(),
            ));
            // Windows on each agent's own phase, as unsynchronised hosts.
            let mut w = template(&node, &a, &hists);
            let generated = generated.clone();
            let phase = period.mul_f64((i as f64 * 0.618_034) % 1.0);
            tokio::spawn(async move {
                let mut tick =
                    tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                for seq in 0.. {
                    tick.tick().await;
                    let now = unix_ns();
                    w.seq = seq;
                    w.start_unix_ns = now.saturating_sub(w.duration_ns);
                    for p in &mut w.processes {
                        p.launches += 1;
                    }
                    let mut out = w.clone();
                    if seq % 10 != 0 {
                        for p in &mut out.processes {
                            p.container.clear();
                            p.pod.clear();
                            p.namespace.clear();
                        }
                    }
                    if wtx.send(out).await.is_err() {
                        return;
                    }
                    generated.fetch_add(1, Ordering::Relaxed);
                }
            });
            // Connect at most ~2000 agents a second: a fleet does not
            // start in the same millisecond.
            if i % 200 == 199 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        // All connected?
        let t = Instant::now();
        loop {
            let connected = stats
                .iter()
                .filter(|s| s.lock().map(|s| s.connects > 0).unwrap_or(false))
                .count();
            if connected == a.agents {
                break;
            }
            if t.elapsed() > Duration::from_secs(120) {
                eprintln!("only {connected} of {} agents connected in 120 s", a.agents);
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let connected = stats
            .iter()
            .filter(|s| s.lock().map(|s| s.connects > 0).unwrap_or(false))
            .count();
        eprintln!(
            "{connected} of {} agents connected after {:.1?}",
            a.agents,
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_secs_f64(a.warmup)).await;
    });

    // Measure: the brain's per-second metrics over `duration`.
    while lines.try_recv().is_ok() {}
    let (brain_cpu0, _, _) = proc_usage(&pid);
    let (self_cpu0, _, _) = proc_usage("self");
    let gen0 = generated.load(Ordering::Relaxed);
    let loop0 = http.map(loop_time);
    let t0 = Instant::now();
    let mut intervals = Vec::new();
    rt.block_on(async { tokio::time::sleep(Duration::from_secs_f64(a.duration)).await });
    let wall = t0.elapsed().as_secs_f64();
    let loop1 = http.map(loop_time);
    let (brain_cpu1, rss_end, hwm) = proc_usage(&pid);
    let (self_cpu1, _, _) = proc_usage("self");
    let gen1 = generated.load(Ordering::Relaxed);
    while let Ok(v) = lines.try_recv() {
        if v["event"] == "stats" {
            intervals.push(v);
        }
    }
    let _ = brain.kill();
    let _ = brain.wait();
    let _ = std::fs::remove_dir_all(&dir);

    let rates: Vec<f64> = intervals
        .iter()
        .filter_map(|v| v["windows_per_s"].as_f64())
        .collect();
    let p99s: Vec<u64> = intervals
        .iter()
        .filter_map(|v| v["lag_p99_us"].as_u64())
        .collect();
    let maxes: Vec<u64> = intervals
        .iter()
        .filter_map(|v| v["lag_max_us"].as_u64())
        .collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let mut sorted = p99s.clone();
    sorted.sort_unstable();
    let dropped: u64 = stats
        .iter()
        .map(|s| s.lock().map(|s| s.windows_dropped).unwrap_or(0))
        .sum();
    let reconnects: u64 = stats
        .iter()
        .map(|s| s.lock().map(|s| s.connects.saturating_sub(1)).unwrap_or(0))
        .sum();
    let offered = a.agents as f64 * a.hz;
    let summary = serde_json::json!({
        "agents": a.agents,
        "hz": a.hz,
        "window_frame_bytes": frame.len(),
        "identity_frame_bytes": keyframe.len(),
        "offered_windows_per_s": offered,
        "generated_windows_per_s": ((gen1 - gen0) as f64 / wall).round(),
        "brain_windows_per_s_mean": mean(&rates).round(),
        "brain_windows_per_s_min": rates.iter().cloned().fold(f64::INFINITY, f64::min).round(),
        "lag_p99_us_median_interval": sorted.get(sorted.len() / 2).copied().unwrap_or(0),
        "lag_p99_us_worst_interval": sorted.last().copied().unwrap_or(0),
        "lag_max_us": maxes.iter().max().copied().unwrap_or(0),
        "brain_cpu_cores": ((brain_cpu1 - brain_cpu0) / wall * 100.0).round() / 100.0,
        "harness_cpu_cores": ((self_cpu1 - self_cpu0) / wall * 100.0).round() / 100.0,
        "brain_rss_idle_mib": rss_idle as f64 / 1024.0,
        "brain_rss_end_mib": (rss_end as f64 / 1024.0 * 10.0).round() / 10.0,
        "brain_rss_peak_mib": (hwm as f64 / 1024.0 * 10.0).round() / 10.0,
        "brain_rss_per_agent_kib": ((rss_end.saturating_sub(rss_idle)) as f64 / a.agents as f64 * 10.0).round() / 10.0,
        "agent_windows_dropped": dropped,
        "agent_reconnects": reconnects,
        "intervals": rates.len(),
        "interval_windows_per_s": rates,
        "interval_lag_p99_us": p99s,
        "loop": a.control.map(|on| if on { "on" } else { "off" }),
        "loop_ticks_per_s": loop0.zip(loop1).map(|((_, t0), (_, t1))| ((t1 - t0) / wall).round()),
        "loop_cpu_cores": loop0.zip(loop1).map(|((s0, _), (s1, _))| ((s1 - s0) / wall * 10_000.0).round() / 10_000.0),
        "loop_us_per_tick": loop0.zip(loop1).and_then(|((s0, t0), (s1, t1))| (t1 > t0).then(|| ((s1 - s0) / (t1 - t0) * 1e6).round())),
    });
    println!("{summary}");
}
