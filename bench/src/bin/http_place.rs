//! Sustained placements per second through the brain's HTTP API on
//! loopback: `vagus brain --http` (started here, on the openb cluster, with
//! a fresh audit trail) and `--connections` keep-alive clients, each
//! posting workloads from the openb trace's shapes and deleting its oldest
//! once it holds `--live` of them, so the cluster stays near a steady load.
//!
//! `http_place --vagus target/release/vagus [--data DIR] [--connections 32]
//!  [--live 100] [--seconds 10] [--warmup 3]`; prints one JSON line.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vagus_replay::rng::Rng;

const TOKEN: &str = "bench-operator-token-0000001";

struct Opts {
    vagus: std::path::PathBuf,
    data: std::path::PathBuf,
    connections: usize,
    live: usize,
    seconds: f64,
    warmup: f64,
}

fn opts() -> Opts {
    let mut o = Opts {
        vagus: "target/release/vagus".into(),
        data: "../shared/data/openb".into(),
        connections: 32,
        live: 100,
        seconds: 10.0,
        warmup: 3.0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_default();
        match a.as_str() {
            "--vagus" => o.vagus = v.into(),
            "--data" => o.data = v.into(),
            "--connections" => o.connections = v.parse().expect("--connections N"),
            "--live" => o.live = v.parse().expect("--live N"),
            "--seconds" => o.seconds = v.parse().expect("--seconds S"),
            "--warmup" => o.warmup = v.parse().expect("--warmup S"),
            _ => {
                eprintln!(
                    "usage: http_place [--vagus BIN] [--data DIR] [--connections N] [--live N] [--seconds S] [--warmup S]"
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

fn main() {
    let o = opts();
    let dir = std::env::temp_dir().join(format!("vagus-http-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tokens = dir.join("tokens.toml");
    std::fs::write(
        &tokens,
        format!("[[token]]\nname = \"bench\"\nrole = \"operator\"\ntoken = \"{TOKEN}\"\n"),
    )
    .unwrap();
    let nodes = o.data.join("openb_node_list_gpu_node.csv");
    let mut brain = Command::new(&o.vagus)
        .args(["brain", "--http", "127.0.0.1:0", "--tokens"])
        .arg(&tokens)
        .arg("--audit")
        .arg(dir.join("audit.sqlite"))
        .arg("--nodes")
        .arg(&nodes)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start vagus brain (build it: cargo build --release -p vagus)");
    let mut line = String::new();
    BufReader::new(brain.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).expect("the brain's first line");
    let addr: std::net::SocketAddr = v["addr"].as_str().unwrap().parse().unwrap();
    let trace = std::fs::read_to_string(o.data.join("openb_pod_list_default.csv")).unwrap();
    let pods = vagus_replay::openb::pods("pods", &trace).unwrap();
    let shapes: Arc<Vec<(u64, u64, u32, u32)>> = Arc::new(
        pods.iter()
            .filter(|p| p.num_gpu > 0 && p.gpu_spec.is_empty())
            .map(|p| {
                (
                    p.cpu_milli.max(1),
                    p.memory_mib.max(1),
                    p.num_gpu,
                    p.gpu_milli,
                )
            })
            .collect(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..o.connections)
        .map(|c| {
            let shapes = shapes.clone();
            let (measuring, stop) = (measuring.clone(), stop.clone());
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
                    let on = measuring.load(Ordering::Relaxed);
                    if mine.len() >= live {
                        let id = mine.pop_front().unwrap();
                        let st = conn.call("DELETE", &format!("/v1/placements/{id}"), "").await;
                        if on && st.is_ok() {
                            t.deletes += 1;
                        }
                        continue;
                    }
                    n += 1;
                    let (cpu, mem, num, milli) = shapes[rng.below(shapes.len())];
                    let name = format!("c{c}-w{n}");
                    let share = if num > 1 { 100 } else { milli.div_ceil(10).clamp(1, 100) };
                    let body = format!(
                        r#"{{"name":"{name}","model_id":"{name}","model_size_gb":1.0,"batch":1,"seq_len":1,"priority":"P2","sla_ms":100,"tenant":"bench","expected_duration_s":3600,"cpu_milli":{cpu},"memory_mib":{mem},"gpus":{num},"share_pct":{share}}}"#
                    );
                    let t0 = Instant::now();
                    let st = conn.call("POST", "/v1/placements", &body).await.expect("POST");
                    let us = t0.elapsed().as_micros() as u32;
                    mine.push_back(name);
                    if on {
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
    let cpu0 = cpu_ticks(brain.id());
    measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(o.seconds));
    measuring.store(false, Ordering::Relaxed);
    let secs = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_ticks(brain.id());
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
    let rss = std::fs::read_to_string(format!("/proc/{}/status", brain.id()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        });
    let _ = brain.kill();
    let _ = brain.wait();
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{}",
        serde_json::json!({
            "bench": "http-placements",
            "connections": o.connections,
            "live_per_connection": o.live,
            "seconds": (secs * 100.0).round() / 100.0,
            "placements_per_s": (all.posts as f64 / secs).round(),
            "deletes_per_s": (all.deletes as f64 / secs).round(),
            "requests_per_s": ((all.posts + all.deletes) as f64 / secs).round(),
            "placed": all.placed,
            "queued": all.waiting,
            "errors": all.other,
            "post_p50_us": q(0.5),
            "post_p99_us": q(0.99),
            "brain_cpu_cores": ((cpu1 - cpu0) as f64 / 100.0 / secs * 100.0).round() / 100.0,
            "brain_peak_rss_kib": rss,
        })
    );
}

/// utime + stime of a process, in clock ticks (100/s).
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    num(11) + num(12)
}
