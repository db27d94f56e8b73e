//! The scan: every node and GPU of the cluster against every constraint,
//! scored, in one sweep over a packed copy of what it reads.

use super::{Core, accepts};
use crate::explain::RuledOut;
use crate::score::{self, Slot, Terms};
use crate::spec;
use crate::workload::Profile;

/// A candidate while scanning.
#[derive(Clone, Debug)]
pub(super) struct Cand {
    pub(super) node: usize,
    pub(super) gpus: Vec<u32>,
    pub(super) slot: Slot,
    pub(super) score: f64,
    pub(super) terms: Terms,
}

impl Cand {
    pub(super) fn beats(&self, o: &Cand) -> bool {
        self.score > o.score + 1e-12
    }
}

/// What the scan reads of a GPU, packed (the full [`crate::state::Gpu`]
/// is too large to sweep 6,000 of them per decision).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Hot {
    pub(super) used_pct: u32,
    /// 0: no MPS server yet.
    pub(super) pool: u32,
    pub(super) cap: u32,
    pub(super) model_no: u32,
    pub(super) used_gb: f64,
    pub(super) memory_gb: f64,
    pub(super) price: f64,
    pub(super) efficiency: f64,
    /// NaN: not measured.
    pub(super) utilisation: f64,
    pub(super) power: f64,
    pub(super) empty: bool,
    pub(super) exclusive: bool,
}

/// What the scan reads of a node.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct NodeHot {
    pub(super) cpu_free: u64,
    pub(super) memory_free: u64,
    pub(super) cordoned: bool,
    pub(super) healthy: bool,
    /// Its GPUs in `Core::hot`.
    pub(super) first: usize,
    pub(super) count: usize,
}

/// A single-GPU candidate in the scan's hot loop (no allocation).
#[derive(Clone, Copy, Debug)]
pub(super) struct Light {
    pub(super) node: usize,
    pub(super) gpu: u32,
    pub(super) slot: Slot,
    pub(super) score: f64,
    pub(super) terms: Terms,
}

impl Light {
    pub(super) fn beats(&self, o: &Light) -> bool {
        self.score > o.score + 1e-12
    }

    pub(super) fn cand(&self) -> Cand {
        Cand {
            node: self.node,
            gpus: vec![self.gpu],
            slot: self.slot,
            score: self.score,
            terms: self.terms,
        }
    }
}

pub(super) const CONSTRAINTS: [&str; 11] = [
    "cordoned",
    "unhealthy",
    "cpu",
    "memory",
    "anti-affinity",
    "locked",
    "accepted-models",
    "cost",
    "gpu-memory",
    "exclusive",
    "capacity",
];

pub(super) struct Scan {
    pub(super) considered: u32,
    pub(super) feasible: u32,
    pub(super) direct: Option<Cand>,
    pub(super) reconfigure: Vec<Cand>,
    pub(super) top: Vec<Cand>,
    pub(super) ruled: [(u32, Vec<String>); CONSTRAINTS.len()],
}

impl Scan {
    pub(super) fn rule(&mut self, c: usize, what: impl FnOnce() -> String) {
        let r = &mut self.ruled[c];
        r.0 += 1;
        if r.1.len() < 3 {
            r.1.push(what());
        }
    }

    pub(super) fn ruled_out(&self) -> Vec<RuledOut> {
        CONSTRAINTS
            .iter()
            .zip(&self.ruled)
            .filter(|(_, r)| r.0 > 0)
            .map(|(c, r)| RuledOut {
                constraint: c.to_string(),
                count: r.0,
                examples: r.1.clone(),
            })
            .collect()
    }
}

/// What a scan looks for.
pub(super) struct Ask<'a> {
    pub(super) p: &'a Profile,
    pub(super) share: u32,
    pub(super) preferred: Option<&'a str>,
    /// A GPU not to use (the one a repack empties, or a moved workload's).
    pub(super) exclude: Option<(usize, u32)>,
}

impl Core {
    /// Recomputes the scan's view of node `i` (after any change to it).
    pub(super) fn refresh(&mut self, i: usize) {
        let n = &self.nodes[i];
        let Some(nh) = self.node_hot.get(i).copied() else {
            return self.rebuild_hot();
        };
        if nh.count != n.gpus.len() {
            return self.rebuild_hot();
        }
        self.node_hot[i] = NodeHot {
            cpu_free: n.cpu_free,
            memory_free: n.memory_free,
            cordoned: n.cordoned,
            healthy: n.healthy,
            first: nh.first,
            count: nh.count,
        };
        let over = self.cfg.oversubscription_pct;
        for (k, g) in n.gpus.iter().enumerate() {
            self.hot[nh.first + k] = Hot {
                used_pct: g.used_pct,
                pool: g.pool.unwrap_or(0),
                cap: g.capacity_pct(over),
                model_no: g.model_no,
                used_gb: g.used_gb,
                memory_gb: g.memory_gb,
                price: g.price_per_hour,
                efficiency: if self.best_tpw > 0.0 {
                    (g.tflops_per_watt / self.best_tpw).min(1.0)
                } else {
                    0.0
                },
                utilisation: g.utilisation.unwrap_or(f64::NAN),
                power: match g.power_w {
                    Some(p) if g.tdp_w > 0.0 => ((g.tdp_w - p) / g.tdp_w).clamp(0.0, 1.0),
                    _ => 1.0,
                },
                empty: g.workloads.is_empty(),
                exclusive: g.exclusive,
            };
        }
    }

    pub(super) fn rebuild_hot(&mut self) {
        self.hot.clear();
        self.node_hot.clear();
        for n in &self.nodes {
            let first = self.hot.len();
            self.hot
                .extend(std::iter::repeat_n(Hot::default(), n.gpus.len()));
            self.node_hot.push(NodeHot {
                first,
                count: n.gpus.len(),
                ..NodeHot::default()
            });
        }
        for i in 0..self.nodes.len() {
            self.refresh(i);
        }
    }

    /// Every node and GPU against every constraint; the best direct
    /// candidate, the reconfigurable ones best first, the top few.
    pub(super) fn scan(&self, a: &Ask, explain: bool) -> Scan {
        self.scan_in(a, 0..self.nodes.len(), explain, false)
    }

    /// [`Self::scan`] over some nodes; `all`: keep every feasible candidate
    /// (in `reconfigure`, whatever its slot).
    ///
    /// The hot loop: per GPU a few integer checks and the terms, no
    /// allocation (candidates are kept as [`Light`] until one is stored).
    pub(super) fn scan_in(
        &self,
        a: &Ask,
        nodes: impl Iterator<Item = usize>,
        explain: bool,
        all: bool,
    ) -> Scan {
        let p = a.p;
        let mut s = Scan {
            considered: 0,
            feasible: 0,
            direct: None,
            reconfigure: Vec::new(),
            top: Vec::new(),
            ruled: Default::default(),
        };
        let want = p.gpus() as usize;
        let per_gpu_gb = p.model_size_gb / want as f64;
        let cost_per_price = a.share as f64 / 100.0 * want as f64;
        let keep = if explain { self.cfg.explain_top } else { 0 };
        let w = &self.cfg.weights;
        // GPUs of one model in a row share these answers.
        let mut memo: (u32, bool, f64) = (0, false, 0.0);
        let mut reconf: Vec<Light> = Vec::new();
        let mut idle: Vec<Light> = Vec::new();
        let banned = self.replica_nodes.get(&p.model_id);
        for i in nodes {
            let nh = self.node_hot[i];
            s.considered += nh.count as u32;
            let node_rule = if nh.cordoned {
                Some(0)
            } else if !nh.healthy {
                Some(1)
            } else if nh.cpu_free < p.cpu_milli {
                Some(2)
            } else if nh.memory_free < p.memory_mib {
                Some(3)
            } else if banned.is_some_and(|b| b.contains_key(&i)) {
                Some(4)
            } else {
                None
            };
            if let Some(r) = node_rule {
                s.rule(r, || self.nodes[i].name.clone());
                continue;
            }
            let local = !p.locality.is_empty() && self.nodes[i].local_to(&p.locality);
            let gpus = &self.hot[nh.first..nh.first + nh.count];
            let free: u64 = gpus
                .iter()
                .filter(|h| !h.exclusive)
                .map(|h| h.cap.saturating_sub(h.used_pct) as u64)
                .sum();
            let balance = score::cpu_balance(
                free,
                nh.cpu_free,
                a.share as u64 * want as u64,
                p.cpu_milli,
                self.cfg.cpu_per_gpu_milli,
            );
            let mut node_best: Option<Light> = None;
            idle.clear();
            for (k, h) in self.hot[nh.first..nh.first + nh.count].iter().enumerate() {
                let gi = k as u32;
                if a.exclude == Some((i, gi)) {
                    s.rule(5, || format!("{}/{gi}", self.nodes[i].name));
                    continue;
                }
                if memo.0 != h.model_no {
                    let model = &self.nodes[i].gpus[k].model;
                    let ok = accepts(p, model);
                    let affinity = match a.preferred {
                        Some(m) if spec::is_family(model, m) => 1.0,
                        Some(_) => 0.0,
                        None => 0.5,
                    };
                    memo = (h.model_no, ok, affinity);
                }
                let rule = if !memo.1 {
                    Some(6)
                } else if h.exclusive || (a.share >= 100 && h.used_pct > 0) {
                    Some(9)
                } else if h.used_pct + a.share > h.cap {
                    Some(10)
                } else if h.used_gb + per_gpu_gb > h.memory_gb + 1e-9 {
                    Some(8)
                } else if p
                    .max_cost_per_hour
                    .is_some_and(|c| h.price * cost_per_price > c + 1e-9)
                {
                    Some(7)
                } else {
                    None
                };
                if let Some(r) = rule {
                    s.rule(r, || format!("{}/{gi}", self.nodes[i].name));
                    continue;
                }
                let slot = if h.empty {
                    Slot::Fresh
                } else if h.pool == a.share {
                    Slot::Pool
                } else {
                    Slot::Reconfigure
                };
                let load = score::GpuLoad {
                    used_pct: h.used_pct,
                    cap: h.cap,
                    utilisation: h.utilisation,
                    power: h.power,
                    efficiency: h.efficiency,
                };
                let terms = score::terms(&load, slot, a.share, memo.2, local, balance, &self.mix);
                let c = Light {
                    node: i,
                    gpu: gi,
                    slot,
                    score: terms.total(w),
                    terms,
                };
                if want > 1 {
                    if slot == Slot::Fresh {
                        idle.push(c);
                    }
                    continue;
                }
                s.feasible += 1;
                if node_best.is_none_or(|b| c.beats(&b)) {
                    node_best = Some(c);
                }
                if slot == Slot::Reconfigure || all {
                    reconf.push(c);
                } else if s.direct.as_ref().is_none_or(|d| c.score > d.score + 1e-12) {
                    s.direct = Some(c.cand());
                }
            }
            let best = if want > 1 {
                // Whole idle GPUs only; the node's best `gpus` of them.
                if idle.len() < want {
                    if !idle.is_empty() {
                        s.rule(10, || self.nodes[i].name.clone());
                    }
                    continue;
                }
                idle.sort_by(|x, y| y.score.total_cmp(&x.score));
                let all_terms: Vec<Terms> = idle[..want].iter().map(|c| c.terms).collect();
                let t = Terms::mean(&all_terms);
                let mut gpus: Vec<u32> = idle[..want].iter().map(|c| c.gpu).collect();
                gpus.sort();
                let c = Cand {
                    node: i,
                    gpus,
                    slot: Slot::Fresh,
                    score: t.total(w),
                    terms: t,
                };
                s.feasible += 1;
                if s.direct.as_ref().is_none_or(|d| c.beats(d)) {
                    s.direct = Some(c.clone());
                }
                if all {
                    s.reconfigure.push(c.clone());
                }
                Some(c)
            } else {
                node_best.map(|b| b.cand())
            };
            // The explanation lists nodes: each node's best candidate.
            if let Some(c) = best
                && keep > 0
                && (s.top.len() < keep || c.beats(s.top.last().expect("non-empty")))
            {
                let at = s.top.iter().position(|t| c.beats(t)).unwrap_or(s.top.len());
                s.top.insert(at, c);
                s.top.truncate(keep);
            }
        }
        // Best first; ties keep the node order.
        reconf.sort_by(|x, y| y.score.total_cmp(&x.score));
        let limit = if all {
            usize::MAX
        } else {
            self.cfg.search_limit
        };
        s.reconfigure
            .extend(reconf.iter().take(limit).map(Light::cand));
        s
    }

    /// The request's candidate on one GPU, if every constraint passes there.
    pub(super) fn candidate_on(&self, a: &Ask, node: usize, gpu: u32) -> Option<Cand> {
        self.scan_nodes(a, &[node])
            .reconfigure
            .into_iter()
            .find(|c| c.gpus == [gpu])
    }

    pub(super) fn scan_nodes(&self, a: &Ask, only: &[usize]) -> Scan {
        self.scan_in(a, only.iter().copied(), false, true)
    }
}
