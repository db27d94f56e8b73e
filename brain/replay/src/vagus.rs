//! The `vagus` placement policy: the product's weighted node score.
//!
//! Every feasible (node, GPUs) candidate gets a breakdown of named terms
//! ([`Terms`], each explainable on its own), and the node score is their
//! weighted sum ([`Weights`]) in points, truncated to an integer multiple of
//! [`Weights::quantum`]. The node with the top score wins; ties go to the
//! first node in the cluster's order, as for the paper's policies (packing
//! pods onto the first nodes among equals keeps later nodes whole).
//!
//! Terms, all "higher is better":
//!
//! - `efficiency`: TOPS/W of the node's GPU model, over the best known model
//!   (0 when the model is not in the table).
//! - `affinity`: 1 when the pod names the node's model among those it
//!   accepts, 0 when it accepts any model.
//! - `utilisation`: the node's free GPU share after the placement (1 − its
//!   GPU utilisation): a positive weight spreads, a negative one packs.
//! - `power`: power headroom over TDP. The trace carries no power data, so
//!   it is 1 (no reading means no known pressure).
//! - `mps`: how well a GPU share fits the GPU it takes (1 − the GPU's free
//!   share left after it): MPS slots of the right size first.
//! - `locality`: data locality; no data in the trace, 0.
//! - `fragmentation`: FGD's score (Weng et al., ATC '23): sigmoid of the
//!   drop in the node's expected GPU fragmentation against the trace's
//!   typical pods, 0–100 points.
//! - `cpu_balance`: the change, in GPUs, of the node's GPU capacity stranded
//!   without CPU: free GPU milli beyond what the free CPU can feed at the
//!   trace's CPU-per-GPU ratio. Negative when a placement eats the CPU its
//!   node's GPUs need (CPU-only pods on a CPU-poor GPU node), positive when
//!   it uses GPUs the node's CPU could not have fed anyway (scaled by
//!   [`Weights::cpu_relief`], 0 by default: charging stranding alone did
//!   better on openb). FGD sees CPU only through whether one typical pod
//!   still fits a node; on openb at 130% load it leaves 60–120 GPUs idle on
//!   nodes without CPU, which this term mostly recovers (bench/README.md).
//!   For a GPU share, a partial GPU's CPU need follows the CPU per milli
//!   of the pods small enough to use it (small shares ask more CPU per GPU
//!   milli than whole GPUs), blended 0.7 with the flat ratio
//!   ([`Weights::cpu_need_by_size`]).
//! - `scarcity`: minus the share of the node's GPU model that pods
//!   restricted to few models ask for, charged to pods that accept any model
//!   (so they leave scarce models to those that need them), times the GPUs
//!   the pod takes.

use crate::cluster::{GPU_MILLI, Node, Pod};
use crate::policy::{Typical, View, fgd_score, fragmentation};

/// The weights of the node score, in points per unit of each [`Terms`] field,
/// and the few parameters of the terms. The defaults were tuned on the openb
/// trace's replay (bench/README.md lists every variant tried); a weight of 0
/// keeps a term explainable without letting it decide.
#[derive(Clone, Debug, PartialEq)]
pub struct Weights {
    pub efficiency: f64,
    pub affinity: f64,
    pub utilisation: f64,
    pub power: f64,
    pub mps: f64,
    pub locality: f64,
    pub fragmentation: f64,
    pub cpu_balance: f64,
    pub scarcity: f64,
    /// The score's resolution in points: candidates within one quantum of
    /// each other tie, and ties go to the first node in the cluster's order.
    pub quantum: f64,
    /// Scales the trace's CPU-per-GPU ratio that `cpu_balance` feeds GPUs at.
    pub cpu_ratio: f64,
    /// Choose a share's GPU inside a node by the unquantised score.
    pub gpu_exact: bool,
    /// The typical pods: shapes covering this share of the trace by count.
    pub typical_cover: f64,
    /// Weigh typical shapes by the GPU milli they ask for, not by count.
    pub typical_by_gpu: bool,
    /// `cpu_balance` counts only GPUs with at least this much free milli
    /// (a smaller remainder takes no pod, so it needs no CPU).
    pub cpu_feed_min: u32,
    /// Scales a positive `cpu_balance` (a placement that un-strands GPUs)
    /// against a negative one (that strands them).
    pub cpu_relief: f64,
    /// For a GPU share's `cpu_balance`: how far a free GPU's CPU need moves
    /// from the trace's flat CPU-per-GPU ratio (0) to the ratio of the GPU
    /// pods small enough to use that GPU's free milli (1). See
    /// [`State::stranded`].
    pub cpu_need_by_size: f64,
}

impl Default for Weights {
    fn default() -> Weights {
        Weights {
            efficiency: 0.0,
            affinity: 0.0,
            utilisation: 0.0,
            power: 0.0,
            mps: 0.0,
            locality: 0.0,
            fragmentation: 1.0,
            cpu_balance: 50.0,
            scarcity: 0.0,
            quantum: 1.0,
            cpu_ratio: 1.0,
            gpu_exact: false,
            typical_cover: 0.95,
            typical_by_gpu: false,
            cpu_feed_min: 0,
            cpu_relief: 0.0,
            cpu_need_by_size: 0.7,
        }
    }
}

/// One candidate's terms, before weighting (see the module's doc).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Terms {
    pub efficiency: f64,
    pub affinity: f64,
    pub utilisation: f64,
    pub power: f64,
    pub mps: f64,
    pub locality: f64,
    pub fragmentation: f64,
    pub cpu_balance: f64,
    pub scarcity: f64,
}

impl Terms {
    /// The weighted sum, in points, before quantisation.
    pub fn total(&self, w: &Weights) -> f64 {
        w.efficiency * self.efficiency
            + w.affinity * self.affinity
            + w.utilisation * self.utilisation
            + w.power * self.power
            + w.mps * self.mps
            + w.locality * self.locality
            + w.fragmentation * self.fragmentation
            + w.cpu_balance * self.cpu_balance
            + w.scarcity * self.scarcity
    }

    /// Each term's weighted contribution, by name (for explanations).
    pub fn explain(&self, w: &Weights) -> [(&'static str, f64); 9] {
        [
            ("efficiency", w.efficiency * self.efficiency),
            ("affinity", w.affinity * self.affinity),
            ("utilisation", w.utilisation * self.utilisation),
            ("power", w.power * self.power),
            ("mps", w.mps * self.mps),
            ("locality", w.locality * self.locality),
            ("fragmentation", w.fragmentation * self.fragmentation),
            ("cpu_balance", w.cpu_balance * self.cpu_balance),
            ("scarcity", w.scarcity * self.scarcity),
        ]
    }
}

/// Dense INT8/FP16 tensor TOPS per watt of TDP, from the vendors' data
/// sheets; the trace's `G2`/`G3` are anonymised and not listed.
pub fn tops_per_watt(model: &str) -> Option<f64> {
    match model {
        "T4" => Some(130.0 / 70.0),
        "A10" => Some(250.0 / 150.0),
        "V100M16" | "V100M32" => Some(125.0 / 300.0),
        "P100" => Some(21.2 / 250.0),
        _ => None,
    }
}

const BEST_TOPS_PER_WATT: f64 = 130.0 / 70.0;

/// The typical pods the fragmentation term measures against: FGD's shapes
/// ([`crate::policy::typical_pods`]) with the coverage and weighting of `w`.
pub fn typical(trace: &[Pod], w: &Weights) -> Vec<Typical> {
    let mut t = crate::policy::typical_pods_covering(trace, w.typical_cover);
    if w.typical_by_gpu {
        for x in &mut t {
            x.p *= (x.gpu_milli as f64 * x.num_gpu.max(1) as f64).max(1.0);
        }
        let sum: f64 = t.iter().map(|x| x.p).sum();
        for x in &mut t {
            x.p /= sum;
        }
    }
    t
}

/// What the vagus policy derives from the trace and keeps between pods.
#[derive(Clone, Debug)]
pub struct State {
    pub weights: Weights,
    pub typical: Vec<Typical>,
    /// CPU milli the trace's GPU pods ask for per milli-GPU.
    pub cpu_per_gpu_milli: f64,
    /// Per GPU model: the share of its capacity that model-restricted pods
    /// of the trace ask for.
    pub scarcity: Vec<(String, f64)>,
    /// CPU milli a free GPU of `f` milli needs (index `f`, 0..=1000) for
    /// `cpu_balance` of a GPU share: `f` times the trace's CPU-per-milli
    /// blended, by [`Weights::cpu_need_by_size`], with that of the trace's
    /// GPU pods asking at most `f` per GPU.
    pub need: Vec<f64>,
}

impl State {
    pub fn new(nodes: &[Node], trace: &[Pod], typical: Vec<Typical>, weights: Weights) -> State {
        let (cpu, gpu) = trace
            .iter()
            .filter(|p| p.num_gpu > 0)
            .fold((0u64, 0u64), |(c, g), p| {
                (c + p.cpu_milli, g + p.gpu_request_milli())
            });
        let cpu_per_gpu_milli = if gpu == 0 {
            0.0
        } else {
            weights.cpu_ratio * cpu as f64 / gpu as f64
        };
        let mut capacity: Vec<(String, f64)> = Vec::new();
        for n in nodes {
            match capacity.iter_mut().find(|(m, _)| *m == n.model) {
                Some(c) => c.1 += n.gpu_capacity_milli() as f64,
                None => capacity.push((n.model.clone(), n.gpu_capacity_milli() as f64)),
            }
        }
        let mut demand: Vec<(String, f64)> =
            capacity.iter().map(|(m, _)| (m.clone(), 0.0)).collect();
        for p in trace
            .iter()
            .filter(|p| p.num_gpu > 0 && !p.gpu_spec.is_empty())
        {
            let share = p.gpu_request_milli() as f64 / p.gpu_spec.len() as f64;
            for m in &p.gpu_spec {
                if let Some(d) = demand.iter_mut().find(|(x, _)| x == m) {
                    d.1 += share;
                }
            }
        }
        let scarcity = capacity
            .iter()
            .zip(&demand)
            .map(|((m, c), (_, d))| (m.clone(), if *c > 0.0 { d / c } else { 0.0 }))
            .collect();
        // The CPU per GPU milli of the GPU pods asking at most f per GPU
        // (multi-GPU pods count as 1000 per GPU), cumulated over f.
        let mut by = vec![(0u64, 0u64); GPU_MILLI as usize + 1];
        for p in trace.iter().filter(|p| p.num_gpu > 0) {
            let k = if p.num_gpu > 1 {
                GPU_MILLI
            } else {
                p.gpu_milli.min(GPU_MILLI)
            };
            by[k as usize].0 += p.cpu_milli;
            by[k as usize].1 += p.gpu_request_milli();
        }
        let flat = if gpu == 0 {
            0.0
        } else {
            cpu as f64 / gpu as f64
        };
        let s = weights.cpu_need_by_size;
        let (mut cc, mut cg) = (0u64, 0u64);
        let need = by
            .iter()
            .enumerate()
            .map(|(f, &(c, g))| {
                cc += c;
                cg += g;
                let small = if cg == 0 { 0.0 } else { cc as f64 / cg as f64 };
                weights.cpu_ratio * f as f64 * (s * small + (1.0 - s) * flat)
            })
            .collect();
        State {
            need,
            weights,
            typical,
            cpu_per_gpu_milli,
            scarcity,
        }
    }

    /// GPU milli of a node that its free CPU cannot feed at the trace's
    /// CPU-per-GPU ratio.
    ///
    /// With `by_size` (when scoring a GPU share), a free GPU's CPU need
    /// depends on its free milli ([`State::need`]): a partial GPU can only
    /// go to pods small enough for it, and on openb those ask more CPU per
    /// GPU milli the smaller they are (160-milli pods 29 cores per GPU,
    /// whole-GPU pods 11), so the flat ratio underrates the CPU that a
    /// node's remainders need; the shortfall is counted in GPU milli at the
    /// flat ratio. Only for shares: for whole-GPU pods it cost
    /// `multigpu20` 0.7 points (bench/README.md).
    fn stranded(&self, cpu_free: u64, gpus: &[u32], by_size: bool) -> f64 {
        if self.cpu_per_gpu_milli <= 0.0 {
            return 0.0;
        }
        if by_size {
            let need: f64 = gpus
                .iter()
                .map(|&g| self.need[g.min(GPU_MILLI) as usize])
                .sum();
            return ((need - cpu_free as f64) / self.cpu_per_gpu_milli).max(0.0);
        }
        let min = self.weights.cpu_feed_min.max(1);
        let gpu_free: u64 = gpus.iter().filter(|&&g| g >= min).map(|&g| g as u64).sum();
        (gpu_free as f64 - cpu_free as f64 / self.cpu_per_gpu_milli).max(0.0)
    }

    fn scarcity_of(&self, model: &str) -> f64 {
        self.scarcity
            .iter()
            .find(|(m, _)| m == model)
            .map_or(0.0, |s| s.1)
    }

    /// The terms of placing `pod` on `node` taking `take` (GPU index, milli),
    /// given the node's current fragmentation `frag_before`.
    pub fn terms(&self, node: &Node, pod: &Pod, take: &[(usize, u32)], frag_before: f64) -> Terms {
        let mut gpus = node.gpus.clone();
        for &(g, m) in take {
            gpus[g] -= m;
        }
        self.terms_after(node, pod, take, &gpus, frag_before)
    }

    fn terms_after(
        &self,
        node: &Node,
        pod: &Pod,
        take: &[(usize, u32)],
        gpus_after: &[u32],
        frag_before: f64,
    ) -> Terms {
        let cpu_after = node.cpu_free - pod.cpu_milli;
        let gpu_free = node.gpu_free_milli();
        let taken: u64 = take.iter().map(|t| t.1 as u64).sum();
        let gpu_after = gpu_free - taken;
        let cap = node.gpu_capacity_milli().max(1) as f64;
        let frag_after = fragmentation(
            &View {
                model: &node.model,
                cpu_free: cpu_after,
                gpus: gpus_after,
            },
            &self.typical,
        );
        let mps = match (pod.num_gpu, take) {
            (1, [(g, m)]) if *m < GPU_MILLI => 1.0 - (node.gpus[*g] - m) as f64 / GPU_MILLI as f64,
            _ => 0.0,
        };
        let scarcity = if pod.gpu_spec.is_empty() {
            -self.scarcity_of(&node.model) * taken as f64 / GPU_MILLI as f64
        } else {
            0.0
        };
        Terms {
            efficiency: tops_per_watt(&node.model).map_or(0.0, |t| t / BEST_TOPS_PER_WATT),
            affinity: if pod.gpu_spec.contains(&node.model) {
                1.0
            } else {
                0.0
            },
            utilisation: gpu_after as f64 / cap,
            power: 1.0,
            mps,
            locality: 0.0,
            fragmentation: fgd_score(frag_before, frag_after) as f64,
            cpu_balance: {
                let by_size = self.weights.cpu_need_by_size != 0.0
                    && pod.num_gpu == 1
                    && pod.gpu_milli < GPU_MILLI;
                let b = (self.stranded(node.cpu_free, &node.gpus, by_size)
                    - self.stranded(cpu_after, gpus_after, by_size))
                    / GPU_MILLI as f64;
                if b > 0.0 {
                    b * self.weights.cpu_relief
                } else {
                    b
                }
            },
            scarcity,
        }
    }

    /// The best GPUs of `node` for `pod` and their quantised score, or
    /// `None` when the pod's GPUs do not fit. A share tries every GPU it
    /// fits (one per distinct free amount: equal GPUs score the same), the
    /// top score winning and the lowest index on ties; whole GPUs are the
    /// lowest-index free ones.
    pub fn score(
        &self,
        node: &Node,
        pod: &Pod,
        frag_before: f64,
    ) -> Option<(i64, Vec<(usize, u32)>)> {
        let w = &self.weights;
        let q = |t: &Terms| (t.total(w) / w.quantum).floor() as i64;
        match (pod.num_gpu, pod.gpu_milli) {
            (1, m) if m < GPU_MILLI => {
                let mut gpus = node.gpus.clone();
                let mut best: Option<(i64, f64, usize)> = None;
                for g in 0..node.gpus.len() {
                    let free = node.gpus[g];
                    if free < m || node.gpus[..g].contains(&free) {
                        continue;
                    }
                    gpus[g] -= m;
                    let t = self.terms_after(node, pod, &[(g, m)], &gpus, frag_before);
                    gpus[g] += m;
                    let (s, raw) = (q(&t), t.total(w));
                    let better = match best {
                        None => true,
                        Some((b, r, _)) if w.gpu_exact => raw > r || (raw == r && s > b),
                        Some((b, _, _)) => s > b,
                    };
                    if better {
                        best = Some((s, raw, g));
                    }
                }
                best.map(|(s, _, g)| (s, vec![(g, m)]))
            }
            (0, _) => {
                let t = self.terms_after(node, pod, &[], &node.gpus, frag_before);
                Some((q(&t), Vec::new()))
            }
            (n, _) => {
                let take: Vec<(usize, u32)> = node
                    .gpus
                    .iter()
                    .enumerate()
                    .filter(|(_, g)| **g == GPU_MILLI)
                    .take(n as usize)
                    .map(|(i, _)| (i, GPU_MILLI))
                    .collect();
                if take.len() < n as usize {
                    return None;
                }
                let t = self.terms(node, pod, &take, frag_before);
                Some((q(&t), take))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Cluster;
    use crate::policy::{Kind, Policy};
    use crate::rng::Rng;

    fn pod(cpu: u64, num: u32, milli: u32) -> Pod {
        Pod {
            name: "p".into(),
            cpu_milli: cpu,
            memory_mib: 1,
            num_gpu: num,
            gpu_milli: milli,
            gpu_spec: vec![],
        }
    }

    /// A trace of whole-GPU pods asking 11 cores each, and CPU-only pods.
    fn trace() -> Vec<Pod> {
        (0..10)
            .map(|i| {
                if i % 2 == 0 {
                    pod(11_000, 1, 1000)
                } else {
                    pod(12_000, 0, 0)
                }
            })
            .collect()
    }

    /// An 8-GPU node with 96 cores (12 per GPU) first, a 2-GPU node with
    /// 104 cores second.
    fn cluster() -> Cluster {
        Cluster {
            nodes: vec![
                Node::new("lean", "G2", 96_000, 1 << 20, 8),
                Node::new("rich", "T4", 104_000, 1 << 20, 2),
            ],
        }
    }

    #[test]
    fn a_cpu_only_pod_goes_where_its_cpu_strands_no_gpu() {
        let (cluster, trace) = (cluster(), trace());
        let cpu_pod = pod(12_000, 0, 0);
        // FGD sees no change of fragmentation on either node (11 cores are
        // still free for a typical GPU pod) and takes the first node.
        let fgd = Policy::new(Kind::Fgd, &cluster, &trace);
        let p = fgd.choose(&cluster, &cpu_pod, &mut Rng::new(1)).unwrap();
        assert_eq!(p.node, 0);
        // Vagus: on the lean node 84 cores are left for 8 GPUs that need
        // 88 at 11 cores each, so 0.36 GPU is stranded; the rich node has
        // CPU to spare.
        let vagus = Policy::new(Kind::Vagus, &cluster, &trace);
        let v = vagus.vagus().unwrap();
        assert_eq!(v.cpu_per_gpu_milli, 11.0);
        let lean = v.terms(&cluster.nodes[0], &cpu_pod, &[], vagus.node_frag(0));
        let rich = v.terms(&cluster.nodes[1], &cpu_pod, &[], vagus.node_frag(1));
        assert!((lean.cpu_balance + (8000.0 - 84_000.0 / 11.0) / 1000.0).abs() < 1e-9);
        assert_eq!(rich.cpu_balance, 0.0);
        assert_eq!(lean.fragmentation, rich.fragmentation);
        let explained: f64 = lean.explain(&v.weights).iter().map(|e| e.1).sum();
        assert!((explained - lean.total(&v.weights)).abs() < 1e-9);
        let p = vagus.choose(&cluster, &cpu_pod, &mut Rng::new(1)).unwrap();
        assert_eq!(p.node, 1, "the CPU-rich node");
    }

    #[test]
    fn with_relief_a_gpu_pod_uses_gpus_that_the_cpu_could_not_feed_anyway() {
        let (mut cluster, trace) = (cluster(), trace());
        let relief = Weights {
            cpu_relief: 1.0,
            ..Weights::default()
        };
        // The rich node first; the lean node's CPU is mostly gone: 33 cores
        // feed 3 of its 8 GPUs.
        cluster.nodes.swap(0, 1);
        cluster.nodes[1].cpu_free = 33_000;
        let light = pod(3_000, 1, 1000);
        let fgd = Policy::new(Kind::Fgd, &cluster, &trace);
        let p = fgd.choose(&cluster, &light, &mut Rng::new(1)).unwrap();
        assert_eq!(p.node, 0, "FGD sees the same drop of fragmentation");
        // By default relief counts for nothing: FGD's choice.
        let vagus = Policy::new(Kind::Vagus, &cluster, &trace);
        let v = vagus.vagus().unwrap();
        let t = v.terms(&cluster.nodes[1], &light, &[(0, 1000)], vagus.node_frag(1));
        assert_eq!(t.cpu_balance, 0.0);
        assert_eq!(
            vagus
                .choose(&cluster, &light, &mut Rng::new(1))
                .unwrap()
                .node,
            0
        );
        let vagus = Policy::with_weights(Kind::Vagus, &cluster, &trace, relief);
        let v = vagus.vagus().unwrap();
        let t = v.terms(&cluster.nodes[1], &light, &[(0, 1000)], vagus.node_frag(1));
        // 5 GPUs stranded before, 7 − 30/11 after.
        assert!(
            (t.cpu_balance - (5.0 - (7.0 - 30.0 / 11.0))).abs() < 1e-9,
            "{t:?}"
        );
        let p = vagus.choose(&cluster, &light, &mut Rng::new(1)).unwrap();
        assert_eq!((p.node, p.gpus), (1, vec![(0, 1000)]));
    }

    #[test]
    fn a_partial_gpu_needs_the_cpu_of_the_pods_small_enough_for_it() {
        // Whole-GPU pods at 8 cores per GPU, 200-milli pods at 4 cores
        // (20 per GPU): flat ratio (8 + 4) / 1.2 = 10 cores per GPU.
        let trace = vec![pod(8000, 1, 1000), pod(4000, 1, 200)];
        let v = State::new(&cluster().nodes, &trace, Vec::new(), Weights::default());
        assert_eq!(v.cpu_per_gpu_milli, 10.0);
        let s = v.weights.cpu_need_by_size;
        // A free whole GPU: every pod fits, the flat ratio.
        assert!((v.need[1000] - 10_000.0).abs() < 1e-6);
        // 300 milli free: only the 200-milli pods fit.
        let want = 300.0 * (s * 20.0 + (1.0 - s) * 10.0);
        assert!((v.need[300] - want).abs() < 1e-6, "{}", v.need[300]);
        assert_eq!(v.need[100], 100.0 * (1.0 - s) * 10.0);
        // 4 cores feed a 300-milli remainder by the flat ratio (3 cores),
        // not by size: (want - 4000) / 10 milli of it is stranded.
        assert_eq!(v.stranded(4000, &[300], false), 0.0);
        let by_size = v.stranded(4000, &[300], true);
        assert!((by_size - (want - 4000.0) / 10.0).abs() < 1e-6, "{by_size}");
    }

    #[test]
    fn with_the_fragmentation_term_alone_it_decides_as_fgd() {
        let mut a = Node::new("a", "T4", 64_000, 1 << 20, 2);
        a.gpus[1] = 540;
        let b = Node::new("b", "T4", 64_000, 1 << 20, 2);
        let cluster = Cluster { nodes: vec![a, b] };
        let trace: Vec<Pod> = (0..10)
            .map(|i| {
                if i % 2 == 0 {
                    pod(4000, 1, 460)
                } else {
                    pod(8000, 1, 1000)
                }
            })
            .collect();
        let only_frag = Weights {
            fragmentation: 1.0,
            cpu_balance: 0.0,
            ..Weights::default()
        };
        let vagus = Policy::with_weights(Kind::Vagus, &cluster, &trace, only_frag);
        let fgd = Policy::new(Kind::Fgd, &cluster, &trace);
        for p in [pod(4000, 1, 460), pod(8000, 1, 1000), pod(1000, 0, 0)] {
            let (x, y) = (
                vagus.choose(&cluster, &p, &mut Rng::new(1)),
                fgd.choose(&cluster, &p, &mut Rng::new(1)),
            );
            assert_eq!(x, y, "{p:?}");
        }
        let p = vagus
            .choose(&cluster, &pod(4000, 1, 460), &mut Rng::new(1))
            .unwrap();
        assert_eq!((p.node, p.gpus), (0, vec![(1, 460)]), "the partial GPU");
    }
}
