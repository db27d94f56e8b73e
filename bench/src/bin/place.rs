//! Decision latency and memory of the brain's decision core
//! (`vagus_decision::Core::place`) on the openb cluster (1,213 nodes,
//! 6,212 GPUs).
//!
//! The trace's GPU pods become workloads as `vagus_replay::vagus::profile`
//! makes them (the pod's share, rounded up to the MPS grid by the default
//! configuration, whole GPUs for multi-GPU pods, its CPU, memory and GPU
//! models, a unique name and model, all P2: no preemption, repacks
//! allowed). The core fills the
//! cluster in a seeded order until the placed share reaches the load;
//! requests that do not fit are withdrawn (the queue stays empty). Then
//! `samples` more requests are timed, each withdrawn or removed again
//! after timing, so every decision sees the same load.
//!
//! `place [--data DIR] [--samples N] [--loads 50,100]`; one JSON line per load.

use std::time::Instant;
use vagus_decision::{Config, Core, NodeLoad, NodeSpec, Profile};

const FULL_AFTER_MISSES: u32 = 500;
use vagus_replay::rng::Rng;

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let mut data = std::path::PathBuf::from("../shared/data/openb");
    let mut samples = 2000usize;
    let mut loads = vec![50u64, 100];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_default();
        match a.as_str() {
            "--data" => data = v.into(),
            "--samples" => samples = v.parse().expect("--samples N"),
            "--loads" => {
                loads = v
                    .split(',')
                    .map(|x| x.parse().expect("--loads 50,100"))
                    .collect()
            }
            _ => {
                eprintln!("usage: place [--data DIR] [--samples N] [--loads 50,100]");
                std::process::exit(2);
            }
        }
    }
    let read = |f: &str| {
        std::fs::read_to_string(data.join(f))
            .unwrap_or_else(|e| panic!("{}: {e}", data.join(f).display()))
    };
    let nodes =
        vagus_replay::openb::nodes("nodes", &read("openb_node_list_gpu_node.csv")).expect("nodes");
    let trace =
        vagus_replay::openb::pods("pods", &read("openb_pod_list_default.csv")).expect("pods");
    let specs: Vec<NodeSpec> = nodes.iter().map(vagus_replay::live::node_spec).collect();
    let gpus: u64 = specs.iter().map(|s| s.gpus.len() as u64).sum();
    let shapes: Vec<&vagus_replay::cluster::Pod> = trace.iter().filter(|p| p.num_gpu > 0).collect();
    let mut seq = 0u64;
    let mut workload = |rng: &mut Rng| {
        seq += 1;
        let name = format!("w{seq}");
        Profile {
            model_id: name.clone(),
            name,
            ..vagus_replay::vagus::profile(shapes[rng.below(shapes.len())])
        }
    };
    for load in loads {
        let rss0 = rss_kib("VmRSS:");
        let mut core = Core::new(Config::default()).expect("config");
        // Every node's serving metrics report it idle, so its
        // reconfiguration gate is open (the core takes unknown load as
        // not safe).
        let idle = NodeLoad {
            qps: Some(0.0),
            error_rate: Some(0.0),
            queue_depth: None,
            healthy: true,
            gpus: Vec::new(),
        };
        for s in &specs {
            core.upsert_node(s).expect("node");
            core.observe(&s.name, &idle).expect("node");
        }
        let mut rng = Rng::new(42);
        let mut now = 0u64;
        let placed_pct = |c: &Core| -> u64 {
            c.nodes()
                .iter()
                .flat_map(|n| &n.gpus)
                .map(|g| g.used_pct as u64)
                .sum()
        };
        let mut misses = 0;
        // Fill to the load; stop after many misses in a row (full).
        while placed_pct(&core) < load * gpus && misses < FULL_AFTER_MISSES {
            now += 1;
            let p = workload(&mut rng);
            let name = p.name.clone();
            let d = core.place(p, now).expect("valid").remove(0);
            if d.path.placed() {
                misses = 0;
            } else {
                misses += 1;
                let _ = core.remove(&name, now);
            }
        }
        let filled = placed_pct(&core) as f64 / gpus as f64;
        let placements = core.placements().count();
        let rss_full = rss_kib("VmRSS:");
        let mut ns = Vec::with_capacity(samples);
        let mut paths = std::collections::BTreeMap::new();
        for _ in 0..samples {
            now += 1;
            let p = workload(&mut rng);
            let name = p.name.clone();
            let t = Instant::now();
            let ds = core.place(p, now).expect("valid");
            ns.push(t.elapsed().as_nanos() as u64);
            *paths.entry(ds[0].path.name()).or_insert(0u32) += 1;
            // Undo moves too: put moved workloads' placements back is not
            // possible from outside, so only direct decisions keep the
            // load exactly; the others are rare and counted.
            let _ = core.remove(&name, now);
        }
        ns.sort_unstable();
        let q = |f: f64| ns[((ns.len() as f64 * f) as usize).min(ns.len() - 1)] as f64 / 1000.0;
        println!(
            "{}",
            serde_json::json!({
                "bench": "decision-core",
                "load_pct": load,
                "filled_pct": (filled * 10.0).round() / 10.0,
                "placements": placements,
                "samples": samples,
                "p50_us": q(0.50),
                "p99_us": q(0.99),
                "max_us": *ns.last().unwrap() as f64 / 1000.0,
                "paths": paths,
                "core_rss_kib": rss_full.saturating_sub(rss0),
                "peak_rss_kib": rss_kib("VmHWM:"),
            })
        );
        drop(core);
    }
}
