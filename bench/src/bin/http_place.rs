//! Sustained placements per second through the brain's HTTP API on
//! loopback, as a ratio to the decision core's own rate in the same run.
//!
//! 1. The core alone, on one thread: the openb cluster, workloads drawn
//!    from the trace's shapes, each placed and the oldest removed once
//!    `--connections` × `--live` are held (a steady load).
//! 2. The brain as a service, started in this process exactly as
//!    `vagus brain --http` starts it (`vagus_brain::Service::start`: the
//!    core, the SQLite audit trail committed before each answer, axum; or
//!    the trail in PostgreSQL with `--database URL`, as `vagus brain
//!    --database` keeps it),
//!    and `--connections` keep-alive clients posting the same requests and
//!    deleting their oldest once each holds `--live`.
//!
//! The two alternate in `--rounds` rounds of `--seconds` each (the clients
//! paused while the core runs alone), so that each round's ratio compares
//! rates the noisy machine gave alike.
//!
//! `http_place [--data DIR] [--connections 32] [--live 100] [--seconds 5]
//!  [--warmup 3] [--rounds 3] [--database URL]`; prints one JSON line with each round's rates
//! and ratio, and the median.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vagus_brain::http::auth::{Role, Token, Tokens};
use vagus_decision::{Core, NodeSpec, Profile};
use vagus_replay::cluster::Pod;
use vagus_replay::rng::Rng;

const TOKEN: &str = "bench-operator-token-0000001";

struct Opts {
    data: std::path::PathBuf,
    connections: usize,
    live: usize,
    seconds: f64,
    warmup: f64,
    rounds: usize,
    database: Option<String>,
}

fn opts() -> Opts {
    let mut o = Opts {
        data: "../shared/data/openb".into(),
        connections: 32,
        live: 100,
        seconds: 5.0,
        warmup: 3.0,
        rounds: 3,
        database: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_default();
        match a.as_str() {
            "--data" => o.data = v.into(),
            "--connections" => o.connections = v.parse().expect("--connections N"),
            "--live" => o.live = v.parse().expect("--live N"),
            "--seconds" => o.seconds = v.parse().expect("--seconds S"),
            "--warmup" => o.warmup = v.parse().expect("--warmup S"),
            "--rounds" => o.rounds = v.parse().expect("--rounds N"),
            "--database" => o.database = Some(v),
            _ => {
                eprintln!(
                    "usage: http_place [--data DIR] [--connections N] [--live N] [--seconds S] [--warmup S] [--rounds N] [--database URL]"
                );
                std::process::exit(2);
            }
        }
    }
    o
}

/// One keep-alive connection: sends a request, reads one response.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn call(&mut self, method: &str, path: &str, body: &str) -> std::io::Result<u16> {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.s.write_all(req.as_bytes()).await?;
        // Read the head, then Content-Length bytes.
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
                let status: u16 = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                let total = end + 4 + len;
                while self.buf.len() < total {
                    self.fill().await?;
                }
                self.buf.drain(..total);
                return Ok(status);
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 16384];
        let n = self.s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

#[derive(Default)]
struct Tally {
    posts: u64,
    deletes: u64,
    placed: u64,
    waiting: u64,
    other: u64,
    post_us: Vec<u32>,
}

/// The request for workload `name`: trace pod `pod` as the replay makes it.
fn request(name: String, pod: &Pod) -> Profile {
    Profile {
        model_id: name.clone(),
        name,
        ..vagus_replay::vagus::profile(pod)
    }
}

/// The core alone on this thread, at the steady load the HTTP clients
/// keep (`held` workloads: each placement then removes the oldest).
struct Alone<'a> {
    core: Core,
    shapes: &'a [Pod],
    rng: Rng,
    live: VecDeque<String>,
    held: usize,
    n: u64,
}

impl<'a> Alone<'a> {
    fn new(nodes: &[NodeSpec], shapes: &'a [Pod], held: usize) -> Alone<'a> {
        let mut core = Core::new(vagus_decision::Config::default()).expect("config");
        for n in nodes {
            core.upsert_node(n).expect("node");
        }
        let mut a = Alone {
            core,
            shapes,
            rng: Rng::new(7),
            live: VecDeque::new(),
            held,
            n: 0,
        };
        while a.live.len() < held {
            a.step();
        }
        a
    }

    fn step(&mut self) {
        self.n += 1;
        let name = format!("w{}", self.n);
        let pod = &self.shapes[self.rng.below(self.shapes.len())];
        self.core
            .place(request(name.clone(), pod), self.n)
            .expect("valid");
        self.live.push_back(name);
        if self.live.len() > self.held {
            let old = self.live.pop_front().unwrap();
            let _ = self.core.remove(&old, self.n);
        }
    }

    /// Placements per second over `secs`.
    fn rate(&mut self, secs: f64) -> f64 {
        let (t, mut placed) = (Instant::now(), 0u64);
        while t.elapsed().as_secs_f64() < secs {
            self.step();
            placed += 1;
        }
        placed as f64 / t.elapsed().as_secs_f64()
    }
}

/// CPU seconds of this process's threads whose name does not start with
/// `except` (the brain's, not the load's).
fn cpu_seconds(except: &[&str]) -> f64 {
    let mut ticks = 0u64;
    for t in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if except.iter().any(|e| comm.trim().starts_with(e)) {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        ticks += num(11) + num(12);
    }
    ticks as f64 / 100.0
}

fn main() {
    let o = opts();
    let nodes = vagus_brain::load_nodes(&o.data.join("openb_node_list_gpu_node.csv"))
        .expect("the openb node list");
    let trace = std::fs::read_to_string(o.data.join("openb_pod_list_default.csv")).unwrap();
    let pods = vagus_replay::openb::pods("pods", &trace).unwrap();
    let shapes: Arc<Vec<Pod>> = Arc::new(
        pods.into_iter()
            .filter(|p| p.num_gpu > 0 && p.gpu_spec.is_empty())
            .collect(),
    );
    let held = o.connections * o.live;
    let mut alone = Alone::new(&nodes, &shapes, held);

    let dir = std::env::temp_dir().join(format!("vagus-http-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let brain_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("brain")
        .enable_all()
        .build()
        .unwrap();
    let tokens = Tokens::new(vec![Token {
        name: "bench".into(),
        role: Role::Operator,
        token: TOKEN.into(),
    }])
    .unwrap();
    let svc = brain_rt
        .block_on(vagus_brain::Service::start(vagus_brain::Config {
            http: Some(vagus_brain::HttpConfig {
                addr: "127.0.0.1:0".parse().unwrap(),
                tokens,
                audit: o.database.is_none().then(|| dir.join("audit.sqlite")),
                core: vagus_decision::Config::default(),
                nodes,
                clock: None,
                scheduler: None,
                kubernetes: None,
            }),
            quic: None,
            sync_every: Duration::from_secs(1),
            control_record: None,
            database: o
                .database
                .as_deref()
                .map(vagus_brain::database::Database::at),
            lease: None,
        }))
        .expect("the brain starts");
    let addr = svc.http_addr.expect("an HTTP address");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-client")
        .enable_all()
        .build()
        .unwrap();
    let measuring = Arc::new(AtomicBool::new(false));
    let paused = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let posts = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..o.connections)
        .map(|c| {
            let shapes = shapes.clone();
            let (measuring, paused, stop) = (measuring.clone(), paused.clone(), stop.clone());
            let posts = posts.clone();
            let live = o.live;
            rt.spawn(async move {
                let mut conn = Conn {
                    s: TcpStream::connect(addr).await.expect("connect"),
                    buf: Vec::new(),
                };
                conn.s.set_nodelay(true).unwrap();
                let mut rng = Rng::new(c as u64 + 1);
                let mut mine: VecDeque<String> = VecDeque::new();
                let mut t = Tally::default();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if paused.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                    let on = measuring.load(Ordering::Relaxed);
                    if mine.len() >= live {
                        let id = mine.pop_front().unwrap();
                        let st = conn
                            .call("DELETE", &format!("/v1/placements/{id}"), "")
                            .await;
                        if on && st.is_ok() {
                            t.deletes += 1;
                        }
                        continue;
                    }
                    n += 1;
                    let name = format!("c{c}-w{n}");
                    let p = request(name.clone(), &shapes[rng.below(shapes.len())]);
                    let body = serde_json::to_string(&p).expect("a request encodes");
                    let t0 = Instant::now();
                    let st = conn
                        .call("POST", "/v1/placements", &body)
                        .await
                        .expect("POST");
                    let us = t0.elapsed().as_micros() as u32;
                    mine.push_back(name);
                    if on {
                        posts.fetch_add(1, Ordering::Relaxed);
                        t.posts += 1;
                        t.post_us.push(us);
                        match st {
                            201 => t.placed += 1,
                            202 => t.waiting += 1,
                            _ => t.other += 1,
                        }
                    }
                }
                t
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(o.warmup));
    // Rounds: the core alone (the clients paused), then the service, so
    // that both rates of a round see the machine alike.
    let brain_cpu = || cpu_seconds(&["bench-client", "http_place"]);
    let mut rounds = Vec::new();
    let (mut secs, mut cpu) = (0.0, 0.0);
    for _ in 0..o.rounds {
        paused.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(300));
        let core_rate = alone.rate(o.seconds);
        paused.store(false, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(500));
        let before = posts.load(Ordering::Relaxed);
        let cpu0 = brain_cpu();
        measuring.store(true, Ordering::Relaxed);
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(o.seconds));
        measuring.store(false, Ordering::Relaxed);
        let took = t0.elapsed().as_secs_f64();
        cpu += brain_cpu() - cpu0;
        secs += took;
        let http_rate = (posts.load(Ordering::Relaxed) - before) as f64 / took;
        rounds.push((core_rate, http_rate));
    }
    stop.store(true, Ordering::Relaxed);
    let mut all = Tally::default();
    for t in tasks {
        let t = rt.block_on(t).unwrap();
        all.posts += t.posts;
        all.deletes += t.deletes;
        all.placed += t.placed;
        all.waiting += t.waiting;
        all.other += t.other;
        all.post_us.extend(t.post_us);
    }
    all.post_us.sort_unstable();
    let q = |f: f64| {
        all.post_us
            .get(((all.post_us.len() as f64 * f) as usize).min(all.post_us.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        });
    brain_rt.block_on(svc.shutdown());
    let _ = std::fs::remove_dir_all(&dir);
    let ratios: Vec<f64> = rounds.iter().map(|(c, h)| h / c).collect();
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
    println!(
        "{}",
        serde_json::json!({
            "bench": "http-placements",
            "trail": if o.database.is_some() { "postgres" } else { "sqlite" },
            "connections": o.connections,
            "live_per_connection": o.live,
            "seconds": (secs * 100.0).round() / 100.0,
            "rounds": rounds.iter().map(|(c, h)| serde_json::json!({
                "core_placements_per_s": c.round(),
                "placements_per_s": h.round(),
                "ratio": r3(h / c),
            })).collect::<Vec<_>>(),
            "ratio_median": r3(median),
            "ratio_min": r3(sorted[0]),
            "placements_per_s": (all.posts as f64 / secs).round(),
            "deletes_per_s": (all.deletes as f64 / secs).round(),
            "requests_per_s": ((all.posts + all.deletes) as f64 / secs).round(),
            "placed": all.placed,
            "queued": all.waiting,
            "errors": all.other,
            "post_p50_us": q(0.5),
            "post_p99_us": q(0.99),
            "brain_cpu_cores": (cpu / secs * 100.0).round() / 100.0,
            "peak_rss_kib": rss,
        })
    );
}
