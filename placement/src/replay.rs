//! Trace replay, as the FGD paper's simulator does it (timestamps ignored,
//! nothing deleted): the trace's pods in a seeded random order, topped up
//! by sampling with replacement (or thinned) until their GPU request is
//! 130% of the cluster's GPUs, placed one at a time; a pod that fits
//! nowhere fails and is dropped. After each pod the allocated share of the
//! cluster's GPU milli is recorded against the arrived share.

use crate::cluster::{Cluster, GPU_MILLI, Node, Pod};
use crate::policy::{Kind, Policy};
use crate::rng::Rng;

/// Arrived load, in percent of the cluster's GPU capacity, that the replay
/// reaches.
pub const MAX_ARRIVED_PCT: usize = 130;

/// One replay's outcome.
#[derive(Clone, Debug)]
pub struct Replay {
    /// `allocation[k]`: mean GPU allocation ratio (%) while the arrived
    /// load was k% (k = 0..=130).
    pub allocation: Vec<f64>,
    pub pods: usize,
    pub placed: usize,
    pub failed: usize,
}

/// The pods of one replay, in arrival order.
pub fn arrivals(trace: &[Pod], capacity_milli: u64, rng: &mut Rng) -> Vec<Pod> {
    let mut workload = trace.to_vec();
    workload.sort_by(|a, b| a.name.cmp(&b.name));
    let mut pods = workload.clone();
    rng.shuffle(&mut pods);
    let target = capacity_milli * MAX_ARRIVED_PCT as u64 / 100;
    let mut total: u64 = pods.iter().map(Pod::gpu_request_milli).sum();
    if total < target && !workload.is_empty() {
        // The reference stops at the first draw whose per-GPU share would
        // pass the target.
        let mut i = 0;
        loop {
            let p = &workload[rng.below(workload.len())];
            let per_gpu = if p.num_gpu > 1 {
                GPU_MILLI as u64
            } else {
                p.gpu_milli as u64
            };
            if total + per_gpu > target {
                break;
            }
            total += p.gpu_request_milli();
            let mut clone = p.clone();
            clone.name = format!("{}-tuned-{i}", p.name);
            pods.push(clone);
            i += 1;
        }
    } else {
        while total > target && !pods.is_empty() {
            let p = pods.remove(rng.below(pods.len()));
            total -= p.gpu_request_milli();
        }
    }
    pods
}

/// Replays `trace` on `nodes` with `policy` and `seed`.
pub fn replay(nodes: &[Node], trace: &[Pod], kind: Kind, seed: u64) -> Replay {
    let mut rng = Rng::new(seed);
    let mut cluster = Cluster {
        nodes: nodes.to_vec(),
    };
    let capacity = cluster.gpu_capacity_milli();
    let pods = arrivals(trace, capacity, &mut rng);
    rng.shuffle(&mut cluster.nodes);
    let mut policy = Policy::new(kind, &cluster, trace);
    let gpus = (capacity / GPU_MILLI as u64).max(1) as f64;
    let mut sum = vec![0.0; MAX_ARRIVED_PCT + 1];
    let mut count = vec![0u32; MAX_ARRIVED_PCT + 1];
    let (mut arrived, mut placed, mut failed) = (0u64, 0, 0);
    let mut rows: Vec<(usize, f64)> = Vec::with_capacity(pods.len());
    for pod in &pods {
        arrived += pod.gpu_request_milli();
        match policy.choose(&cluster, pod, &mut rng) {
            Some(p) => {
                cluster.bind(pod, &p);
                policy.bound(&cluster, pod, &p);
                placed += 1;
            }
            None => failed += 1,
        }
        let k = (arrived as f64 / gpus / 10.0).round() as usize;
        let alloc = cluster.gpu_allocated_milli() as f64 / gpus / 10.0;
        rows.push((k, alloc));
        if k <= MAX_ARRIVED_PCT {
            sum[k] += alloc;
            count[k] += 1;
        }
    }
    let allocation = (0..=MAX_ARRIVED_PCT)
        .map(|k| {
            if count[k] > 0 {
                return sum[k] / count[k] as f64;
            }
            let near: Vec<f64> = rows
                .iter()
                .filter(|(a, _)| a.abs_diff(k) <= 1)
                .map(|r| r.1)
                .collect();
            if !near.is_empty() {
                return near.iter().sum::<f64>() / near.len() as f64;
            }
            // A small trace skips whole percents: the allocation then is
            // what it was when the arrived load last stood below k (pods
            // are never deleted, so it cannot have changed).
            rows.iter()
                .take_while(|(a, _)| *a < k)
                .last()
                .map(|r| r.1)
                .unwrap_or(0.0)
        })
        .collect();
    Replay {
        allocation,
        pods: pods.len(),
        placed,
        failed,
    }
}

/// The mean of [`replay`] over `seeds`, run on up to `threads` threads
/// (each seed is independent).
pub fn replay_seeds(
    nodes: &[Node],
    trace: &[Pod],
    kind: Kind,
    seeds: &[u64],
    threads: usize,
) -> Vec<Replay> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let out = std::sync::Mutex::new(vec![None; seeds.len()]);
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, seeds.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&seed) = seeds.get(i) else { return };
                    let r = replay(nodes, trace, kind, seed);
                    out.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                }
            });
        }
    });
    out.into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .flatten()
        .collect()
}

/// The mean allocation curve of several replays.
pub fn mean_curve(runs: &[Replay]) -> Vec<f64> {
    (0..=MAX_ARRIVED_PCT)
        .map(|k| runs.iter().map(|r| r.allocation[k]).sum::<f64>() / runs.len().max(1) as f64)
        .collect()
}
