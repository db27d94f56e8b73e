//! What the shim adds to one `cuLaunchKernel`, against gpusim in null-launch
//! mode: launches timed in batches of 64 (so the clock's own cost is spread
//! thin), per-launch median and p99 over the batches, direct and through the
//! shim, with 1 and 2 threads launching at once. Also checks that a million
//! launches through the shim allocate nothing.
//!
//! Run: `cargo build --release --workspace && target/release/launch_overhead`

use std::sync::Barrier;
use std::time::{Duration, Instant};
use vagus_bench::{Bench, LaunchFn};

const BATCH: usize = 64;
const BATCHES: usize = 40_000;

/// Per-launch ns of each batch, from one thread.
fn measure(b: &Bench, f: LaunchFn, barrier: &Barrier) -> Vec<f64> {
    let mut out = Vec::with_capacity(BATCHES);
    barrier.wait();
    for _ in 0..BATCHES {
        let t = Instant::now();
        for _ in 0..BATCH {
            b.launch(f);
        }
        out.push(t.elapsed().as_nanos() as f64 / BATCH as f64);
    }
    out
}

fn run(b: &Bench, f: LaunchFn, threads: usize) -> Vec<f64> {
    let barrier = Barrier::new(threads);
    let mut all: Vec<f64> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| s.spawn(|| measure(b, f, &barrier)))
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    all.sort_by(f64::total_cmp);
    all
}

fn pct(v: &[f64], q: f64) -> f64 {
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let b = Bench::new();
    // Warm up past the shim's first sampling period (it times every launch
    // until it has seen the launch rate, ~100 ms).
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        b.launch(b.shim);
        b.launch(b.direct);
    }
    let mut rows = Vec::new();
    for threads in [1, 2] {
        // Alternate to spread drift in the machine's speed over both.
        let (mut direct, mut shim) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            direct.extend(run(&b, b.direct, threads));
            shim.extend(run(&b, b.shim, threads));
        }
        direct.sort_by(f64::total_cmp);
        shim.sort_by(f64::total_cmp);
        let (d50, d99, s50, s99) = (
            pct(&direct, 0.5),
            pct(&direct, 0.99),
            pct(&shim, 0.5),
            pct(&shim, 0.99),
        );
        println!(
            "{threads} thread(s): direct p50 {d50:.1} ns p99 {d99:.1} ns | shim p50 {s50:.1} ns p99 {s99:.1} ns | added p50 {:.1} ns p99 {:.1} ns",
            s50 - d50,
            s99 - d99
        );
        rows.push(serde_json::json!({
            "threads": threads, "direct_p50_ns": d50, "direct_p99_ns": d99, "shim_p50_ns": s50, "shim_p99_ns": s99,
            "added_p50_ns": s50 - d50, "added_p99_ns": s99 - d99,
        }));
    }
    let before = (b.shim_allocations(), b.shim_launches());
    for _ in 0..1_000_000 {
        b.launch(b.shim);
    }
    let after = (b.shim_allocations(), b.shim_launches());
    println!(
        "1000000 launches through the shim: {} heap allocations on the launching thread, {} launches counted",
        after.0 - before.0,
        after.1 - before.1
    );
    println!(
        "{}",
        serde_json::json!({ "rows": rows, "allocations_per_million": after.0 - before.0, "counted": after.1 - before.1 })
    );
}
