//! Trace replay, as the FGD paper's simulator does it (timestamps ignored,
//! nothing deleted): the trace's pods in a seeded random order, topped up
//! by sampling with replacement (or thinned) until their GPU request is
//! 130% of the cluster's GPUs, placed one at a time; a pod that fits
//! nowhere fails and is dropped. After each pod the allocated share of the
//! cluster's GPU milli is recorded against the arrived share.

use crate::cluster::{Cluster, GPU_MILLI, Node, Placement, Pod};
use crate::policy::{Kind, Policy, node_fragmentation, typical_pods};
use crate::rng::Rng;
use crate::vagus::CorePlacer;

/// Arrived load, in percent of the cluster's GPU capacity, that the replay
/// reaches.
pub const MAX_ARRIVED_PCT: usize = 130;

/// One replay's outcome.
#[derive(Clone, Debug)]
pub struct Replay {
    /// `allocation[k]`: mean GPU allocation ratio (%) while the arrived
    /// load was k% (k = 0..=130).
    pub allocation: Vec<f64>,
    /// `fragmentation[k]`: mean GPU fragmentation ratio (%): the idle GPU
    /// milli the typical pods could not use, over all idle GPU milli.
    pub fragmentation: Vec<f64>,
    pub pods: usize,
    pub placed: usize,
    pub failed: usize,
    /// With [`replay_recorded`]: the nodes in the replay's order, and
    /// each pod as it arrived with where it went.
    pub record: Option<Record>,
}

/// One replay, step by step.
#[derive(Clone, Debug, Default)]
pub struct Record {
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    /// Per pod: its node (an index into `nodes`) and GPUs, or `None`.
    pub placements: Vec<Option<Placement>>,
}

/// What places the pods: a baseline policy, or the brain's core.
enum Placer {
    Policy(Policy),
    Core(Box<CorePlacer>),
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
    replay_recorded(nodes, trace, kind, seed, false)
}

/// [`replay`], keeping every step in [`Replay::record`] when `record`.
pub fn replay_recorded(
    nodes: &[Node],
    trace: &[Pod],
    kind: Kind,
    seed: u64,
    record: bool,
) -> Replay {
    let mut rng = Rng::new(seed);
    let mut cluster = Cluster {
        nodes: nodes.to_vec(),
    };
    let capacity = cluster.gpu_capacity_milli();
    let pods = arrivals(trace, capacity, &mut rng);
    rng.shuffle(&mut cluster.nodes);
    let mut placer = match kind {
        Kind::Vagus => Placer::Core(Box::new(
            CorePlacer::new(&cluster, crate::vagus::config(trace))
                .expect("the trace's nodes are valid nodes for the core"),
        )),
        _ => Placer::Policy(Policy::new(kind, &cluster, trace)),
    };
    let mut log = record.then(|| Record {
        nodes: cluster.nodes.clone(),
        pods: pods.clone(),
        placements: Vec::with_capacity(pods.len()),
    });
    // The cluster's fragmentation, against the trace's typical pods, kept
    // per node and updated where a pod binds.
    let typical = typical_pods(trace);
    let mut frag: Vec<f64> = cluster
        .nodes
        .iter()
        .map(|n| node_fragmentation(n, &typical))
        .collect();
    let mut frag_total: f64 = frag.iter().sum();
    let gpus = (capacity / GPU_MILLI as u64).max(1) as f64;
    let (mut arrived, mut placed, mut failed) = (0u64, 0, 0);
    let mut allocated = 0u64;
    // (arrived %, allocation %, fragmentation %) after each pod.
    let mut rows: Vec<(usize, f64, f64)> = Vec::with_capacity(pods.len());
    for pod in &pods {
        arrived += pod.gpu_request_milli();
        let chosen = match &mut placer {
            Placer::Policy(policy) => policy.choose(&cluster, pod, &mut rng),
            Placer::Core(core) => core.place(pod),
        };
        if let Some(log) = &mut log {
            log.placements.push(chosen.clone());
        }
        match chosen {
            Some(p) => {
                cluster.bind(pod, &p);
                if let Placer::Policy(policy) = &mut placer {
                    policy.bound(&cluster, pod, &p);
                }
                allocated += p.gpus.iter().map(|g| g.1 as u64).sum::<u64>();
                let f = node_fragmentation(&cluster.nodes[p.node], &typical);
                frag_total += f - frag[p.node];
                frag[p.node] = f;
                placed += 1;
            }
            None => failed += 1,
        }
        let k = (arrived as f64 / gpus / 10.0).round() as usize;
        let idle = capacity - allocated;
        let frag_pct = if idle == 0 {
            0.0
        } else {
            100.0 * frag_total / idle as f64
        };
        rows.push((k, allocated as f64 / gpus / 10.0, frag_pct));
    }
    Replay {
        allocation: curve(&rows, |r| r.1),
        fragmentation: curve(&rows, |r| r.2),
        pods: pods.len(),
        placed,
        failed,
        record: log,
    }
}

/// The mean of `value` over the rows at each arrived percent (the reference's
/// reduction of its per-pod log).
fn curve(rows: &[(usize, f64, f64)], value: fn(&(usize, f64, f64)) -> f64) -> Vec<f64> {
    let mut sum = vec![0.0; MAX_ARRIVED_PCT + 1];
    let mut count = vec![0u32; MAX_ARRIVED_PCT + 1];
    for r in rows {
        if r.0 <= MAX_ARRIVED_PCT {
            sum[r.0] += value(r);
            count[r.0] += 1;
        }
    }
    (0..=MAX_ARRIVED_PCT)
        .map(|k| {
            if count[k] > 0 {
                return sum[k] / count[k] as f64;
            }
            let near: Vec<f64> = rows
                .iter()
                .filter(|r| r.0.abs_diff(k) <= 1)
                .map(value)
                .collect();
            if !near.is_empty() {
                return near.iter().sum::<f64>() / near.len() as f64;
            }
            // A small trace skips whole percents: the allocation then is
            // what it was when the arrived load last stood below k (pods
            // are never deleted, so it cannot have changed).
            rows.iter()
                .take_while(|r| r.0 < k)
                .last()
                .map(value)
                .unwrap_or(0.0)
        })
        .collect()
}

/// The mean of [`replay`] over `seeds`, run on up to `threads` threads
/// (each seed is independent).
/// `done` is called with the number of seeds finished so far.
pub fn replay_seeds(
    nodes: &[Node],
    trace: &[Pod],
    kind: Kind,
    seeds: &[u64],
    threads: usize,
    done: &(dyn Fn(usize) + Sync),
) -> Vec<Replay> {
    let finished = std::sync::atomic::AtomicUsize::new(0);
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
                    done(finished.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1);
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

/// The mean of one curve of several replays (`Replay::allocation` or
/// `Replay::fragmentation`).
pub fn mean_curve(runs: &[Replay], of: fn(&Replay) -> &Vec<f64>) -> Vec<f64> {
    (0..=MAX_ARRIVED_PCT)
        .map(|k| runs.iter().map(|r| of(r)[k]).sum::<f64>() / runs.len().max(1) as f64)
        .collect()
}
