//! The scan: every node and GPU of the cluster against every constraint,
//! scored, in one sweep over a packed copy of what it reads.

use super::Core;
use crate::explain::RuledOut;
use crate::mix::{Free, Summary, cpu_balance, fgd_score};
use crate::score::{self, NodeTerms, Slot, Terms};
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
    /// Its MPS daemon is down: only a workload holding it whole.
    pub(super) no_mps: bool,
    /// Its MPS configuration conflicts: nothing.
    pub(super) shut: bool,
}

impl Hot {
    /// What fragmentation and CPU need read of it.
    pub(super) fn free(&self) -> Free {
        Free {
            pct: if self.exclusive {
                0
            } else {
                self.cap.saturating_sub(self.used_pct)
            },
            pool: self.pool,
            model: self.model_no,
        }
    }
}

/// What the scan reads of a node.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct NodeHot {
    pub(super) cpu_free: u64,
    pub(super) memory_free: u64,
    pub(super) cordoned: bool,
    pub(super) healthy: bool,
    /// Its fragmentation against the mix now (GPU percent).
    pub(super) frag: f64,
    /// Its GPUs in `Core::hot`.
    pub(super) first: usize,
    pub(super) count: usize,
}

/// A single-GPU candidate in the scan's hot loop (no allocation).
#[derive(Clone, Copy, Debug)]
pub(super) struct Light {
    pub(super) node: usize,
    /// `u32::MAX`: no GPU (a workload without GPUs).
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
            gpus: if self.gpu == NO_GPU {
                Vec::new()
            } else {
                vec![self.gpu]
            },
            slot: self.slot,
            score: self.score,
            terms: self.terms,
        }
    }
}

const NO_GPU: u32 = u32::MAX;

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
    /// The node where a replica of its model is being replaced (a shadow's
    /// own workload): that one does not count against anti-affinity.
    pub(super) replacing: Option<usize>,
    /// Only GPUs holding work and at least this full (a consolidation).
    pub(super) fill_from: Option<u32>,
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
                no_mps: g.mps_down.is_some(),
                shut: g.mps_conflict,
            };
        }
        let view: Vec<Free> = self.hot[nh.first..nh.first + nh.count]
            .iter()
            .map(Hot::free)
            .collect();
        if self.summaries.len() <= i {
            self.summaries.resize_with(i + 1, Summary::default);
        }
        self.mix.summarize(&view, &mut self.summaries[i]);
        self.node_hot[i] = NodeHot {
            cpu_free: n.cpu_free,
            memory_free: n.memory_free,
            cordoned: n.cordoned,
            healthy: n.healthy && n.down.is_none(),
            frag: self.mix.evaluate(&self.summaries[i], n.cpu_free, &[]),
            first: nh.first,
            count: nh.count,
        };
    }

    pub(super) fn rebuild_hot(&mut self) {
        self.hot.clear();
        self.node_hot.clear();
        self.summaries.clear();
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

    /// The node-level terms of taking `share` of each GPU in `take` (indices
    /// into `view`, the node's GPUs now) and `cpu_after` being left.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn node_terms(
        &self,
        summary: &Summary,
        view: &mut [Free],
        take: &[usize],
        share: u32,
        cpu_after: u64,
        by_size: bool,
        frag_before: f64,
        stranded_before: f64,
    ) -> NodeTerms {
        let mut changes = [(Free::default(), Free::default()); 16];
        for (j, &k) in take.iter().enumerate() {
            let before = view[k];
            view[k].pct = view[k].pct.saturating_sub(share);
            if self.cfg.mps_pools {
                view[k].pool = share;
            }
            changes[j] = (before, view[k]);
        }
        let frag_after = self
            .mix
            .evaluate(summary, cpu_after, &changes[..take.len()]);
        let stranded_after = self.mix.stranded(cpu_after, view, by_size);
        for (j, &k) in take.iter().enumerate() {
            view[k] = changes[j].0;
        }
        NodeTerms {
            fragmentation: fgd_score(frag_before, frag_after),
            cpu_balance: cpu_balance(stranded_before, stranded_after),
        }
    }

    /// [`Self::scan`] over some nodes; `all`: keep every feasible candidate
    /// (in `reconfigure`, whatever its slot).
    ///
    /// The hot loop: per GPU a few integer checks and the terms, no
    /// allocation (candidates are kept as [`Light`] until one is stored).
    /// The node-level terms (fragmentation, CPU balance) depend only on
    /// the chosen GPU's state, so GPUs alike within a node share them.
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
        let per_gpu_gb = p.gpu_memory() / want.max(1) as f64;
        let cost_per_price = a.share as f64 / 100.0 * want as f64;
        let keep = if explain { self.cfg.explain_top } else { 0 };
        let w = &self.cfg.weights;
        let pools = self.cfg.mps_pools;
        let by_size = self.mix.by_size(p.gpus(), a.share);
        // GPUs of one model in a row share these answers.
        let mut memo: (u32, bool, f64) = (0, false, 0.0);
        let mut reconf: Vec<Light> = Vec::new();
        let mut idle: Vec<Light> = Vec::new();
        let mut view: Vec<Free> = Vec::new();
        let mut alike: Vec<(Free, NodeTerms)> = Vec::new();
        let banned = self.replica_nodes.get(&p.model_id);
        let per_node = self.cfg.replicas_per_node;
        for i in nodes {
            let nh = self.node_hot[i];
            s.considered += if want == 0 { 1 } else { nh.count as u32 };
            let node_rule = if nh.cordoned {
                Some(0)
            } else if !nh.healthy {
                Some(1)
            } else if nh.cpu_free < p.cpu_milli {
                Some(2)
            } else if nh.memory_free < p.memory_mib {
                Some(3)
            } else if banned.is_some_and(|b| {
                b.get(&i).is_some_and(|&n| {
                    n.saturating_sub(u32::from(a.replacing == Some(i))) >= per_node
                })
            }) {
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
            view.clear();
            view.extend(gpus.iter().map(Hot::free));
            let cpu_after = nh.cpu_free - p.cpu_milli;
            let stranded_before = self.mix.stranded(nh.cpu_free, &view, by_size);
            let before = (nh.frag, stranded_before);
            if want == 0 {
                let nt = self.node_terms(
                    &self.summaries[i],
                    &mut view,
                    &[],
                    0,
                    cpu_after,
                    false,
                    before.0,
                    before.1,
                );
                let terms = score::node_only(local, nt);
                let c = Light {
                    node: i,
                    gpu: NO_GPU,
                    slot: Slot::Fresh,
                    score: terms.score(w),
                    terms,
                };
                s.feasible += 1;
                if s.direct.as_ref().is_none_or(|d| c.score > d.score + 1e-12) {
                    s.direct = Some(c.cand());
                }
                if all {
                    s.reconfigure.push(c.cand());
                }
                self.keep_top(&mut s, keep, c.cand());
                continue;
            }
            let mut node_best: Option<Light> = None;
            idle.clear();
            alike.clear();
            for (k, h) in gpus.iter().enumerate() {
                let gi = k as u32;
                if a.exclude == Some((i, gi))
                    || a.fill_from.is_some_and(|f| h.empty || h.used_pct < f)
                {
                    s.rule(5, || format!("{}/{gi}", self.nodes[i].name));
                    continue;
                }
                if memo.0 != h.model_no {
                    let model = &self.nodes[i].gpus[k].model;
                    let ok = p.accepts(model);
                    let affinity = match a.preferred {
                        Some(m) if spec::is_family(model, m) => 1.0,
                        Some(_) => 0.0,
                        None => 0.5,
                    };
                    memo = (h.model_no, ok, affinity);
                }
                let rule = if !memo.1 {
                    Some(6)
                } else if h.exclusive
                    || h.shut
                    || (a.share >= 100 && h.used_pct > 0)
                    || (h.no_mps && a.share < 100)
                {
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
                } else if !pools {
                    Slot::Shared
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
                if want > 1 {
                    if slot == Slot::Fresh {
                        let terms =
                            score::terms(&load, slot, a.share, memo.2, local, NodeTerms::default());
                        idle.push(Light {
                            node: i,
                            gpu: gi,
                            slot,
                            score: 0.0,
                            terms,
                        });
                    }
                    continue;
                }
                let nt = match alike.iter().find(|(f, _)| *f == view[k]) {
                    Some(&(_, nt)) => nt,
                    None => {
                        let nt = self.node_terms(
                            &self.summaries[i],
                            &mut view,
                            &[k],
                            a.share,
                            cpu_after,
                            by_size,
                            before.0,
                            before.1,
                        );
                        alike.push((view[k], nt));
                        nt
                    }
                };
                let terms = score::terms(&load, slot, a.share, memo.2, local, nt);
                let c = Light {
                    node: i,
                    gpu: gi,
                    slot,
                    score: terms.score(w),
                    terms,
                };
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
                // Whole idle GPUs only: the node's first `gpus` of them.
                if idle.len() < want {
                    if !idle.is_empty() {
                        s.rule(10, || self.nodes[i].name.clone());
                    }
                    continue;
                }
                let take: Vec<usize> = idle[..want].iter().map(|c| c.gpu as usize).collect();
                let nt = self.node_terms(
                    &self.summaries[i],
                    &mut view,
                    &take,
                    100,
                    cpu_after,
                    by_size,
                    before.0,
                    before.1,
                );
                let all_terms: Vec<Terms> = idle[..want].iter().map(|c| c.terms).collect();
                let t = Terms {
                    fragmentation: nt.fragmentation,
                    cpu_balance: nt.cpu_balance,
                    ..Terms::mean(&all_terms)
                };
                let c = Cand {
                    node: i,
                    gpus: take.iter().map(|&k| k as u32).collect(),
                    slot: Slot::Fresh,
                    score: t.score(w),
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
            if let Some(c) = best {
                self.keep_top(&mut s, keep, c);
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

    /// Keeps `c` among the `keep` best of the explanation.
    fn keep_top(&self, s: &mut Scan, keep: usize, c: Cand) {
        if keep > 0 && (s.top.len() < keep || c.beats(s.top.last().expect("non-empty"))) {
            let at = s.top.iter().position(|t| c.beats(t)).unwrap_or(s.top.len());
            s.top.insert(at, c);
            s.top.truncate(keep);
        }
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
