//! Placement policies: the baselines of the FGD paper (Weng et al., USENIX
//! ATC '23) as its simulator implements them, and FGD itself. Each scores
//! every feasible node with an integer 0–100 (truncation included, as the
//! reference does, since it makes ties), picks a node with the top score,
//! and chooses the GPUs inside the node.
//!
//! Node ties go to the first node in the cluster's order.
//!
//! Resource vectors are [CPU, GPU]: CPU in milli-cores over 128 000, GPU in
//! milli-GPU over 8 000 (the reference's largest node). Memory only filters.

use crate::cluster::{Cluster, GPU_MILLI, Node, Placement, Pod, feasible};
use crate::rng::Rng;

const MAX_CPU: f64 = 128_000.0;
const MAX_GPU: f64 = 8_000.0;

/// The policies `vagus replay --policy` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Random,
    DotProd,
    GpuClustering,
    GpuPacking,
    BestFit,
    Fgd,
    /// The brain's live decision core (see [`crate::vagus`]); not a
    /// [`Policy`]: the replay drives the core itself.
    Vagus,
}

impl Kind {
    pub const ALL: [(&'static str, Kind); 7] = [
        ("random", Kind::Random),
        ("dotprod", Kind::DotProd),
        ("gpu-clustering", Kind::GpuClustering),
        ("gpu-packing", Kind::GpuPacking),
        ("best-fit", Kind::BestFit),
        ("fgd", Kind::Fgd),
        ("vagus", Kind::Vagus),
    ];

    pub fn parse(s: &str) -> Option<Kind> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, k)| *k)
    }

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, k)| *k == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }
}

/// A pod's kind for GPU clustering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    Share,
    Whole(u32),
}

fn tag(pod: &Pod) -> Option<Tag> {
    match (pod.num_gpu, pod.gpu_milli) {
        (0, _) => None,
        (1, m) if m < GPU_MILLI => Some(Tag::Share),
        (n, _) => Some(Tag::Whole(n)),
    }
}

/// One shape of the trace's typical pods, with its frequency.
#[derive(Clone, Debug, PartialEq)]
pub struct Typical {
    pub cpu_milli: u64,
    pub gpu_milli: u32,
    pub num_gpu: u32,
    pub gpu_spec: Vec<String>,
    pub p: f64,
}

/// The shapes that make up 95% of `pods` by count, most frequent first,
/// their frequencies renormalised to sum to 1.
pub fn typical_pods(pods: &[Pod]) -> Vec<Typical> {
    typical_pods_covering(pods, 0.95)
}

/// The shapes that make up `cover` (0–1) of `pods` by count, as
/// [`typical_pods`] does for 95%.
pub fn typical_pods_covering(pods: &[Pod], cover: f64) -> Vec<Typical> {
    let permille = (cover.clamp(0.0, 1.0) * 1000.0).round() as u64;
    // (cpu, per-GPU milli, GPUs, accepted models) and how many pods have it.
    type Shape = (u64, u32, u32, Vec<String>);
    let mut counts: Vec<(Shape, u64)> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for p in pods {
        let milli = if p.num_gpu > 1 {
            GPU_MILLI
        } else {
            p.gpu_milli
        };
        let key = (p.cpu_milli, milli, p.num_gpu, p.gpu_spec.clone());
        let i = *index.entry(key.clone()).or_insert_with(|| {
            counts.push((key, 0));
            counts.len() - 1
        });
        counts[i].1 += 1;
    }
    counts.sort_by(|a, b| {
        b.1.cmp(&a.1)
            .then(b.0.0.cmp(&a.0.0))
            .then(b.0.1.cmp(&a.0.1))
            .then(b.0.2.cmp(&a.0.2))
            .then(b.0.3.cmp(&a.0.3))
    });
    let total: u64 = counts.iter().map(|c| c.1).sum();
    let mut taken = Vec::new();
    let mut cum = 0;
    for (k, n) in counts {
        taken.push((k, n));
        cum += n;
        if cum * 1000 >= total * permille {
            break;
        }
    }
    let sum: u64 = taken.iter().map(|t| t.1).sum();
    taken
        .into_iter()
        .map(|((cpu, milli, num, spec), n)| Typical {
            cpu_milli: cpu,
            gpu_milli: milli,
            num_gpu: num,
            gpu_spec: spec,
            p: n as f64 / sum as f64,
        })
        .collect()
}

/// A node's state as fragmentation sees it.
struct View<'a> {
    model: &'a str,
    cpu_free: u64,
    gpus: &'a [u32],
}

/// A node's expected GPU fragmentation against `typical` (milli-GPU).
pub fn node_fragmentation(n: &Node, typical: &[Typical]) -> f64 {
    fragmentation(
        &View {
            model: &n.model,
            cpu_free: n.cpu_free,
            gpus: &n.gpus,
        },
        typical,
    )
}

/// The node's expected GPU fragmentation against the typical pods: for
/// each shape, the free milli the shape could not use (all of it when the
/// shape cannot run there at all, only the GPUs too small for it when it
/// can), weighted by the shape's frequency.
fn fragmentation(v: &View, typical: &[Typical]) -> f64 {
    let total: u64 = v.gpus.iter().map(|&g| g as u64).sum();
    let mut f = 0.0;
    for t in typical {
        let accepts = t.gpu_spec.is_empty() || t.gpu_spec.iter().any(|m| m == v.model);
        let amount = if t.gpu_milli == 0 || !accepts {
            total
        } else {
            let fitting = v.gpus.iter().filter(|&&g| g >= t.gpu_milli).count();
            if fitting >= t.num_gpu as usize && v.cpu_free >= t.cpu_milli {
                v.gpus
                    .iter()
                    .filter(|&&g| g < t.gpu_milli)
                    .map(|&g| g as u64)
                    .sum()
            } else {
                total
            }
        };
        f += t.p * amount as f64;
    }
    f
}

fn fgd_score(before: f64, after: f64) -> i64 {
    let x = (before - after) / 1000.0;
    (100.0 / (1.0 + (-x).exp())) as i64
}

/// The GPUs a pod takes on a node under the "best" rule: whole-GPU pods
/// the lowest-index free GPUs; a share the fitting GPU with the least left
/// (lowest index on ties).
fn best_gpus(node: &Node, pod: &Pod) -> Vec<(usize, u32)> {
    match (pod.num_gpu, pod.gpu_milli) {
        (0, _) => Vec::new(),
        (1, m) if m < GPU_MILLI => {
            let mut best: Option<usize> = None;
            for (i, &g) in node.gpus.iter().enumerate() {
                if g >= m && best.is_none_or(|b| g < node.gpus[b]) {
                    best = Some(i);
                }
            }
            best.map(|i| vec![(i, m)]).unwrap_or_default()
        }
        (n, _) => node
            .gpus
            .iter()
            .enumerate()
            .filter(|(_, g)| **g == GPU_MILLI)
            .take(n as usize)
            .map(|(i, _)| (i, GPU_MILLI))
            .collect(),
    }
}

/// GPU indices and the milli taken from each.
type Gpus = Vec<(usize, u32)>;

/// A policy with what it keeps between pods.
pub struct Policy {
    pub kind: Kind,
    typical: Vec<Typical>,
    /// Per node: the pods' tags (GPU clustering).
    tags: Vec<Vec<Tag>>,
    /// Per node: its fragmentation now (FGD), kept current as pods bind.
    frag: Vec<f64>,
}

impl Policy {
    /// `trace`: the original pods (FGD's typical shapes come from them).
    pub fn new(kind: Kind, cluster: &Cluster, trace: &[Pod]) -> Policy {
        let typical = if kind == Kind::Fgd {
            typical_pods(trace)
        } else {
            Vec::new()
        };
        let frag = cluster
            .nodes
            .iter()
            .map(|n| node_fragmentation(n, &typical))
            .collect();
        Policy {
            kind,
            typical,
            tags: vec![Vec::new(); cluster.nodes.len()],
            frag,
        }
    }

    /// Node `i`'s expected fragmentation now (FGD keeps it).
    pub fn node_frag(&self, i: usize) -> f64 {
        self.frag[i]
    }

    pub fn typical(&self) -> &[Typical] {
        &self.typical
    }

    /// Chooses a node and GPUs for `pod`, or `None` when no node can hold it.
    pub fn choose(&self, cluster: &Cluster, pod: &Pod, rng: &mut Rng) -> Option<Placement> {
        let feasible: Vec<usize> = (0..cluster.nodes.len())
            .filter(|&i| feasible(&cluster.nodes[i], pod))
            .collect();
        if feasible.is_empty() {
            return None;
        }
        if self.kind == Kind::Random {
            let node = feasible[rng.below(feasible.len())];
            let n = &cluster.nodes[node];
            let gpus = match (pod.num_gpu, pod.gpu_milli) {
                (1, m) if m < GPU_MILLI => {
                    let fit: Vec<usize> = (0..n.gpus.len()).filter(|&g| n.gpus[g] >= m).collect();
                    vec![(fit[rng.below(fit.len())], m)]
                }
                _ => best_gpus(n, pod),
            };
            return Some(Placement { node, gpus });
        }
        // Score every feasible node; the reference skips scoring when one is.
        let mut scored: Vec<(usize, i64, Gpus)> = Vec::with_capacity(feasible.len());
        for &i in &feasible {
            let (score, gpus) = self.score(i, &cluster.nodes[i], pod);
            scored.push((i, score, gpus));
        }
        if self.kind == Kind::BestFit {
            let lo = scored.iter().map(|s| s.1).min().unwrap_or(0);
            let hi = scored.iter().map(|s| s.1).max().unwrap_or(0);
            for s in &mut scored {
                s.1 = if hi == lo {
                    0
                } else {
                    (s.1 - lo) * 100 / (hi - lo)
                };
            }
        }
        // Ties go to the first node in the cluster's order (which the
        // replay permutes with its seed), as the reference simulator's
        // scheduler does; picking at random among ties instead spreads
        // pods and costs FGD 5–6 points of allocation on openb.
        let top = scored.iter().map(|s| s.1).max()?;
        let (node, _, gpus) = scored.into_iter().find(|s| s.1 == top)?;
        Some(Placement { node, gpus })
    }

    fn score(&self, i: usize, n: &Node, pod: &Pod) -> (i64, Vec<(usize, u32)>) {
        let cpu_left = n.cpu_free as f64;
        let gpu_left = n.gpu_free_milli() as f64;
        let cpu_req = pod.cpu_milli as f64;
        let gpu_req = pod.gpu_request_milli() as f64;
        match self.kind {
            Kind::Random | Kind::Vagus => (0, Vec::new()),
            Kind::DotProd => {
                let s = if n.cpu_free < pod.cpu_milli {
                    0
                } else {
                    let dot = cpu_left / MAX_CPU * cpu_req / MAX_CPU
                        + gpu_left / MAX_GPU * gpu_req / MAX_GPU;
                    (100.0 * (1.0 - dot / 2.0)) as i64
                };
                (s, best_gpus(n, pod))
            }
            Kind::BestFit => {
                let s = 0.5 * (cpu_left - cpu_req) / MAX_CPU + 0.5 * (gpu_left - gpu_req) / MAX_GPU;
                (((1.0 - s) * 100.0) as i64, best_gpus(n, pod))
            }
            Kind::GpuClustering => {
                let Some(t) = tag(pod) else {
                    return (0, Vec::new());
                };
                let base = 25 * (8000 - n.gpu_free_milli() as i64) / 8000;
                let tags = &self.tags[i];
                let has = tags.contains(&t);
                let s = if has && tags.iter().all(|x| *x == t) {
                    base + 75
                } else if has {
                    base + 50
                } else if tags.is_empty() {
                    base + 25
                } else {
                    base
                };
                (s, best_gpus(n, pod))
            }
            Kind::GpuPacking => {
                if pod.num_gpu == 0 {
                    return (0, Vec::new());
                }
                let free = n.gpus.iter().filter(|&&g| g == GPU_MILLI).count() as i64;
                let s = if free as usize == n.gpus.len() {
                    (33 - free).max(free)
                } else {
                    let mut order: Vec<usize> = (0..n.gpus.len()).collect();
                    order.sort_by_key(|&g| n.gpus[g]);
                    let m = if pod.num_gpu > 1 {
                        GPU_MILLI
                    } else {
                        pod.gpu_milli
                    };
                    let chosen: Vec<u32> = order
                        .iter()
                        .map(|&g| n.gpus[g])
                        .filter(|&g| g >= m)
                        .take(pod.num_gpu as usize)
                        .collect();
                    let whole = chosen.iter().filter(|&&g| g == GPU_MILLI).count() as i64;
                    if whole > 0 {
                        (50 - whole).max(33)
                    } else {
                        let r: i64 = chosen.iter().map(|&g| g as i64 * 100 / 1000).sum();
                        (100 - r / 10).max(50)
                    }
                };
                (s, best_gpus(n, pod))
            }
            Kind::Fgd => {
                let before = self.frag[i];
                let cpu_after = n.cpu_free - pod.cpu_milli;
                match (pod.num_gpu, pod.gpu_milli) {
                    (1, m) if m < GPU_MILLI => {
                        let mut best: Option<(i64, usize)> = None;
                        let mut gpus = n.gpus.clone();
                        for g in 0..n.gpus.len() {
                            if n.gpus[g] < m {
                                continue;
                            }
                            gpus[g] -= m;
                            let after = fragmentation(
                                &View {
                                    model: &n.model,
                                    cpu_free: cpu_after,
                                    gpus: &gpus,
                                },
                                &self.typical,
                            );
                            gpus[g] += m;
                            let s = fgd_score(before, after);
                            if best.is_none_or(|(b, _)| s > b) {
                                best = Some((s, g));
                            }
                        }
                        match best {
                            Some((s, g)) => (s, vec![(g, m)]),
                            None => (0, Vec::new()),
                        }
                    }
                    _ => {
                        let take = best_gpus(n, pod);
                        let mut gpus = n.gpus.clone();
                        for &(g, m) in &take {
                            gpus[g] -= m;
                        }
                        let after = fragmentation(
                            &View {
                                model: &n.model,
                                cpu_free: cpu_after,
                                gpus: &gpus,
                            },
                            &self.typical,
                        );
                        (fgd_score(before, after), take)
                    }
                }
            }
        }
    }

    /// Keeps the policy's view current after `pod` was bound as `p`.
    pub fn bound(&mut self, cluster: &Cluster, pod: &Pod, p: &Placement) {
        if let Some(t) = tag(pod) {
            self.tags[p.node].push(t);
        }
        if self.kind == Kind::Fgd {
            let n = &cluster.nodes[p.node];
            self.frag[p.node] = fragmentation(
                &View {
                    model: &n.model,
                    cpu_free: n.cpu_free,
                    gpus: &n.gpus,
                },
                &self.typical,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, cpu: u64, num: u32, milli: u32) -> Pod {
        Pod {
            name: name.into(),
            cpu_milli: cpu,
            memory_mib: 1,
            num_gpu: num,
            gpu_milli: milli,
            gpu_spec: vec![],
        }
    }

    #[test]
    fn fgd_fills_a_partial_gpu_before_breaking_a_whole_one() {
        let mut a = Node::new("a", "T4", 64_000, 1 << 20, 2);
        a.gpus[1] = 540;
        let b = Node::new("b", "T4", 64_000, 1 << 20, 2);
        let cluster = Cluster { nodes: vec![a, b] };
        let trace: Vec<Pod> = (0..10)
            .map(|i| {
                if i % 2 == 0 {
                    pod("s", 4000, 1, 460)
                } else {
                    pod("w", 8000, 1, 1000)
                }
            })
            .collect();
        let policy = Policy::new(Kind::Fgd, &cluster, &trace);
        let (sa, ga) = policy.score(0, &cluster.nodes[0], &pod("x", 4000, 1, 460));
        let (sb, _) = policy.score(1, &cluster.nodes[1], &pod("x", 4000, 1, 460));
        assert_eq!(ga, vec![(1, 460)], "the partial GPU");
        assert!(sa > sb, "{sa} > {sb}");
        let p = policy
            .choose(&cluster, &pod("x", 4000, 1, 460), &mut Rng::new(1))
            .unwrap();
        assert_eq!((p.node, p.gpus), (0, vec![(1, 460)]));
    }
}
