//! Decision latency of the FGD paper's placement policies on the openb cluster (1,213
//! nodes, 6,212 GPUs): the cluster is filled with the trace's pods, in the
//! replay's order and with the policy itself, until the arrived load reaches
//! 50% or 100%; then `Policy::choose` is timed on 2,000 pods drawn from the
//! trace, against that state (nothing more is bound, so every decision
//! sees the same load).
//!
//! `decide [--data DIR] [--samples N]`; prints one JSON line per policy and load.

use std::time::Instant;
use vagus_replay::cluster::Cluster;
use vagus_replay::policy::{Kind, Policy};
use vagus_replay::replay::arrivals;
use vagus_replay::rng::Rng;

fn main() {
    let mut data = std::path::PathBuf::from("../shared/data/openb");
    let mut samples = 2000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_default();
        match a.as_str() {
            "--data" => data = v.into(),
            "--samples" => samples = v.parse().expect("--samples N"),
            _ => {
                eprintln!("usage: decide [--data DIR] [--samples N]");
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
    // `vagus` is the live core: `place` measures it.
    for (name, kind) in Kind::ALL.into_iter().filter(|(_, k)| *k != Kind::Vagus) {
        for load in [50u64, 100] {
            let mut rng = Rng::new(42);
            let mut cluster = Cluster {
                nodes: nodes.clone(),
            };
            let capacity = cluster.gpu_capacity_milli();
            let pods = arrivals(&trace, capacity, &mut rng);
            rng.shuffle(&mut cluster.nodes);
            let mut policy = Policy::new(kind, &cluster, &trace);
            let mut arrived = 0;
            for pod in &pods {
                if arrived * 100 >= capacity * load {
                    break;
                }
                arrived += pod.gpu_request_milli();
                if let Some(p) = policy.choose(&cluster, pod, &mut rng) {
                    cluster.bind(pod, &p);
                    policy.bound(&cluster, pod, &p);
                }
            }
            let mut ns: Vec<u64> = (0..samples)
                .map(|_| {
                    let pod = &trace[rng.below(trace.len())];
                    let t = Instant::now();
                    std::hint::black_box(policy.choose(&cluster, pod, &mut rng));
                    t.elapsed().as_nanos() as u64
                })
                .collect();
            ns.sort_unstable();
            let q = |f: f64| ns[((ns.len() - 1) as f64 * f) as usize] as f64 / 1000.0;
            println!(
                "{}",
                serde_json::json!({
                    "policy": name,
                    "arrived_load_pct": load,
                    "allocated_pct": (cluster.gpu_allocated_milli() * 1000 / capacity) as f64 / 10.0,
                    "decisions": samples,
                    "p50_us": q(0.5),
                    "p99_us": q(0.99),
                    "max_us": q(1.0),
                })
            );
        }
    }
}
