//! Tuning and diagnosis aid for the `vagus` policy (not part of the product):
//! `cargo run --release -p vagus-placement --example tune -- analyze <trace> <policy> [seed]`
//! classifies the idle GPU milli of a 130% replay's final state;
//! `... eval <policy> [seeds]` prints the mean allocation at 130% for the four openb traces.

use vagus_replay::cluster::{Cluster, GPU_MILLI, Node, Pod, feasible};
use vagus_replay::openb;
use vagus_replay::policy::{Kind, Policy};
use vagus_replay::replay::{arrivals, mean_curve, replay_seeds};
use vagus_replay::rng::Rng;
use vagus_replay::vagus::Weights;

const TRACES: [&str; 4] = ["default", "gpushare40", "multigpu20", "gpuspec10"];

fn load(trace: &str) -> (Vec<Node>, Vec<Pod>) {
    let d = std::path::Path::new("/work/shared/data/openb");
    let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    let f = format!("openb_pod_list_{trace}.csv");
    (
        openb::nodes("nodes", &read("openb_node_list_gpu_node.csv")).unwrap(),
        openb::pods(&f, &read(&f)).unwrap(),
    )
}

fn analyze(trace: &str, kind: Kind, seed: u64) {
    let (nodes, trace_pods) = load(trace);
    let mut rng = Rng::new(seed);
    let mut cluster = Cluster { nodes };
    let cap = cluster.gpu_capacity_milli();
    let pods = arrivals(&trace_pods, cap, &mut rng);
    rng.shuffle(&mut cluster.nodes);
    let mut policy = Policy::with_weights(kind, &cluster, &trace_pods, weights());
    let mut failed: Vec<Pod> = Vec::new();
    let mut first_fail = None;
    for (i, pod) in pods.iter().enumerate() {
        match policy.choose(&cluster, pod, &mut rng) {
            Some(p) => {
                cluster.bind(pod, &p);
                policy.bound(&cluster, pod, &p);
            }
            None => {
                if pod.num_gpu > 0 && first_fail.is_none() {
                    first_fail = Some(i);
                }
                failed.push(pod.clone())
            }
        }
    }
    let alloc = cluster.gpu_allocated_milli() as f64 / cap as f64 * 100.0;
    println!(
        "{trace} {} seed {seed}: alloc {alloc:.2}% pods {} failed {} (gpu {}) first gpu fail at {:?}",
        kind.name(),
        pods.len(),
        failed.len(),
        failed.iter().filter(|p| p.num_gpu > 0).count(),
        first_fail
    );
    let idle = cap - cluster.gpu_allocated_milli();
    // Failed GPU pods' shapes.
    let mut shapes = std::collections::BTreeMap::new();
    for p in failed.iter() {
        let e = shapes
            .entry((p.num_gpu, p.gpu_milli, p.gpu_spec.join("|")))
            .or_insert((0u64, 0u64));
        e.0 += 1;
        e.1 += p.cpu_milli;
    }
    let mut v: Vec<_> = shapes.into_iter().collect();
    v.sort_by_key(|x| std::cmp::Reverse(x.1.0));
    println!("  failed shapes (num,milli,spec): count, mean cpu");
    for ((n, m, s), (c, cpu)) in v.iter().take(12) {
        println!("    {n} {m} {s:?}: {c}, cpu {}", cpu / *c);
    }
    // Idle GPU by model and cause.
    let mut by: std::collections::BTreeMap<(String, &str), u64> = Default::default();
    let min_cpu_gpu = failed
        .iter()
        .filter(|p| p.num_gpu > 0)
        .map(|p| p.cpu_milli)
        .min()
        .unwrap_or(0);
    for n in &cluster.nodes {
        let free = n.gpu_free_milli();
        if free == 0 {
            continue;
        }
        // Could any failed GPU pod fit here, ignoring cpu/mem?
        let gpu_fit = failed.iter().any(|p| {
            p.num_gpu > 0 && {
                let mut q = p.clone();
                q.cpu_milli = 0;
                q.memory_mib = 0;
                feasible(n, &q)
            }
        });
        let fit = failed.iter().any(|p| p.num_gpu > 0 && feasible(n, p));
        let cause = if fit {
            "fits-a-failed-pod(!)"
        } else if n.cpu_free < min_cpu_gpu {
            "cpu-exhausted"
        } else if gpu_fit {
            "cpu/mem-short"
        } else if n.gpus.iter().all(|&g| g < GPU_MILLI) {
            "partial-remainders"
        } else {
            "whole-gpus-too-few/model"
        };
        *by.entry((n.model.clone(), cause)).or_default() += free;
    }
    println!("  idle {:.1} GPUs:", idle as f64 / 1000.0);
    for ((m, c), f) in by {
        println!("    {m:8} {c:26} {:.1}", f as f64 / 1000.0);
    }
    let mut hist = std::collections::BTreeMap::<u32, (u32, u32)>::new();
    for n in &cluster.nodes {
        for &g in &n.gpus {
            if g > 0 {
                let e = hist.entry(g / 50 * 50).or_default();
                if n.cpu_free >= min_cpu_gpu {
                    e.0 += 1
                } else {
                    e.1 += 1
                }
            }
        }
    }
    println!("  free-milli histogram (bucket: gpus with cpu, gpus cpu-exhausted): {hist:?}");
    // CPU left by model.
    let mut cpu: std::collections::BTreeMap<String, (u64, u64, u64)> = Default::default();
    for n in &cluster.nodes {
        let e = cpu.entry(n.model.clone()).or_default();
        e.0 += n.cpu_free;
        e.1 += n.cpu_milli;
        e.2 += n.gpu_free_milli();
    }
    for (m, (f, t, g)) in cpu {
        println!(
            "    {m:8} cpu free {:.0}/{:.0} cores, gpu free {:.1}",
            f as f64 / 1000.0,
            t as f64 / 1000.0,
            g as f64 / 1000.0
        );
    }
}

/// Weights from `VAGUS_W` (`name=value,...`) over the defaults.
fn weights() -> Weights {
    let mut w = Weights::default();
    for kv in std::env::var("VAGUS_W").unwrap_or_default().split(',') {
        let Some((k, v)) = kv.split_once('=') else {
            continue;
        };
        let v: f64 = v.parse().unwrap();
        match k.trim() {
            "efficiency" => w.efficiency = v,
            "affinity" => w.affinity = v,
            "utilisation" => w.utilisation = v,
            "power" => w.power = v,
            "mps" => w.mps = v,
            "locality" => w.locality = v,
            "fragmentation" => w.fragmentation = v,
            "cpu_balance" => w.cpu_balance = v,
            "scarcity" => w.scarcity = v,
            "quantum" => w.quantum = v,
            "cpu_relief" => w.cpu_relief = v,
            "cpu_feed_min" => w.cpu_feed_min = v as u32,
            "typical_cover" => w.typical_cover = v,
            "typical_by_gpu" => w.typical_by_gpu = v != 0.0,
            "cpu_ratio" => w.cpu_ratio = v,
            "gpu_exact" => w.gpu_exact = v != 0.0,
            "cpu_need_by_size" => w.cpu_need_by_size = v,
            o => panic!("unknown weight {o}"),
        }
    }
    w
}

/// The replay's allocation at 130% arrived load (as `replay::replay`
/// computes it), with the policy built by `Policy::with_weights`.
fn alloc_130(nodes: &[Node], trace: &[Pod], kind: Kind, w: &Weights, seed: u64) -> f64 {
    let mut rng = Rng::new(seed);
    let mut cluster = Cluster {
        nodes: nodes.to_vec(),
    };
    let cap = cluster.gpu_capacity_milli();
    let pods = arrivals(trace, cap, &mut rng);
    rng.shuffle(&mut cluster.nodes);
    let mut policy = Policy::with_weights(kind, &cluster, trace, w.clone());
    let gpus = (cap / GPU_MILLI as u64) as f64;
    let (mut arrived, mut allocated) = (0u64, 0u64);
    let (mut sum, mut count) = (0.0, 0);
    for pod in &pods {
        arrived += pod.gpu_request_milli();
        if let Some(p) = policy.choose(&cluster, pod, &mut rng) {
            cluster.bind(pod, &p);
            policy.bound(&cluster, pod, &p);
            allocated += p.gpus.iter().map(|g| g.1 as u64).sum::<u64>();
        }
        if (arrived as f64 / gpus / 10.0).round() as usize == 130 {
            sum += allocated as f64 / gpus / 10.0;
            count += 1;
        }
    }
    sum / count.max(1) as f64
}

fn eval_weights(kind: Kind, seeds: &[u64]) {
    let w = weights();
    let t = std::time::Instant::now();
    let mut out = Vec::new();
    for trace in TRACES {
        let (nodes, pods) = load(trace);
        let next = std::sync::atomic::AtomicUsize::new(0);
        let total = std::sync::Mutex::new(0.0);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&seed) = seeds.get(i) else { return };
                        let a = alloc_130(&nodes, &pods, kind, &w, seed);
                        *total.lock().unwrap() += a;
                    }
                });
            }
        });
        out.push(total.into_inner().unwrap() / seeds.len() as f64);
    }
    println!(
        "{} {:?} seeds {}: {}  ({:.1}s)",
        kind.name(),
        std::env::var("VAGUS_W").unwrap_or_default(),
        seeds.len(),
        out.iter()
            .map(|v| format!("{v:.3}"))
            .collect::<Vec<_>>()
            .join(" / "),
        t.elapsed().as_secs_f64()
    );
}

fn eval(kind: Kind, seeds: &[u64]) {
    let mut out = Vec::new();
    let t = std::time::Instant::now();
    for trace in TRACES {
        let (nodes, pods) = load(trace);
        let runs = replay_seeds(&nodes, &pods, kind, seeds, 2, &|_| {});
        out.push(mean_curve(&runs, |r| &r.allocation)[130]);
    }
    println!(
        "{} seeds {}: {}  ({:.1}s)",
        kind.name(),
        seeds.len(),
        out.iter()
            .map(|v| format!("{v:.3}"))
            .collect::<Vec<_>>()
            .join(" / "),
        t.elapsed().as_secs_f64()
    );
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    match a.first().map(String::as_str) {
        Some("analyze") => analyze(
            &a[1],
            Kind::parse(&a[2]).unwrap(),
            a.get(3).map(|s| s.parse().unwrap()).unwrap_or(42),
        ),
        Some("eval") => {
            let n: u64 = a.get(2).map(|s| s.parse().unwrap()).unwrap_or(10);
            eval(
                Kind::parse(&a[1]).unwrap(),
                &(42..42 + n).collect::<Vec<_>>(),
            )
        }
        Some("w") => {
            let n: u64 = a.get(2).map(|s| s.parse().unwrap()).unwrap_or(10);
            eval_weights(
                Kind::parse(&a[1]).unwrap(),
                &(42..42 + n).collect::<Vec<_>>(),
            )
        }
        _ => eprintln!(
            "tune analyze <trace> <policy> [seed] | tune eval <policy> [nseeds] | VAGUS_W=k=v,.. tune w <policy> [nseeds]"
        ),
    }
}
