//! An HTTP/1.1 load generator for the proxy benchmarks: small GETs over
//! kept-alive connections, either closed-loop (`--connections N`: each
//! connection sends its next request when the last is answered; reports
//! requests/s) or open-loop (`--rate R`: requests sent on a fixed schedule
//! whatever the answers, each in a task of its own, so a slow server
//! cannot hold the next back and its queue shows; latency is measured from
//! when the request is sent: tokio's timer has millisecond resolution and
//! the schedule's own lateness is the generator's). One JSON line per run.
//!
//!   http_load URL --seconds S (--connections N | --rate R)

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

async fn get(client: &HttpClient, url: &hyper::Uri) -> bool {
    match client.get(url.clone()).await {
        Ok(r) => {
            let ok = r.status().is_success();
            ok && r.into_body().collect().await.is_ok()
        }
        Err(_) => false,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: http_load URL --seconds S (--connections N | --rate R)";
    let url: hyper::Uri = args.get(1).and_then(|u| u.parse().ok()).expect(usage);
    let seconds: f64 = arg(&args, "--seconds")
        .and_then(|s| s.parse().ok())
        .expect(usage);
    let connections: Option<usize> = arg(&args, "--connections").and_then(|s| s.parse().ok());
    let rate: Option<f64> = arg(&args, "--rate").and_then(|s| s.parse().ok());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(4096)
        .build(connector);
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds"),
    ));
    let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let run = Duration::from_secs_f64(seconds);
    let (done, elapsed) = rt.block_on(async {
        // Warm the connections up.
        for _ in 0..connections.unwrap_or(16) {
            get(&client, &url).await;
        }
        let start = Instant::now();
        let mut tasks = Vec::new();
        match (connections, rate) {
            (Some(n), None) => {
                for _ in 0..n {
                    let (client, url, hist, failed) =
                        (client.clone(), url.clone(), hist.clone(), failed.clone());
                    tasks.push(tokio::spawn(async move {
                        let mut k = 0u64;
                        while start.elapsed() < run {
                            let t = Instant::now();
                            if get(&client, &url).await {
                                let us = t.elapsed().as_micros() as u64;
                                hist.lock().unwrap().saturating_record(us.max(1));
                                k += 1;
                            } else {
                                failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                        k
                    }));
                }
            }
            (None, Some(r)) => {
                let every = Duration::from_secs_f64(1.0 / r);
                let total = (r * seconds) as u64;
                for i in 0..total {
                    let at = start + every.mul_f64(i as f64);
                    tokio::time::sleep_until(at.into()).await;
                    let (client, url, hist, failed) =
                        (client.clone(), url.clone(), hist.clone(), failed.clone());
                    tasks.push(tokio::spawn(async move {
                        // From when it is sent: tokio's timer wakes this
                        // loop up to a millisecond after `at`, which is the
                        // load generator's lateness, not the server's.
                        let sent = Instant::now();
                        if get(&client, &url).await {
                            let us = sent.elapsed().as_micros() as u64;
                            hist.lock().unwrap().saturating_record(us.max(1));
                            1
                        } else {
                            failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            0
                        }
                    }));
                }
            }
            _ => panic!("{usage}"),
        }
        let mut done = 0u64;
        for t in tasks {
            done += t.await.unwrap_or(0);
        }
        (done, start.elapsed())
    });
    let h = hist.lock().unwrap();
    println!(
        "{}",
        serde_json::json!({
            "url": url.to_string(),
            "mode": if connections.is_some() { "closed" } else { "open" },
            "connections": connections, "rate": rate,
            "requests": done,
            "failed": failed.load(std::sync::atomic::Ordering::Relaxed),
            "seconds": elapsed.as_secs_f64(),
            "rps": done as f64 / elapsed.as_secs_f64(),
            "p50_us": h.value_at_quantile(0.5), "p90_us": h.value_at_quantile(0.9),
            "p99_us": h.value_at_quantile(0.99), "max_us": h.max(),
        })
    );
}
