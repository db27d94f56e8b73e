//! The plans that change other workloads: MPS reconfiguration (and its
//! safety gate), repacks (and the circuit breaker), preemption.

use super::scan::{Ask, Cand};
use super::{Core, open_to, step};
use crate::classify::Class;
use crate::explain::{Move, Plan};
use crate::mix::{Free, Summary};
use crate::score::{self, Slot};
use crate::spec;
use crate::state::{Placed, Resident};
use crate::workload::{Priority, Profile};
use std::collections::HashMap;

/// A preemption: (how little it evicts, node, GPU, victims).
pub(super) type Eviction = ((Priority, usize), usize, u32, Vec<Placed>);

impl Core {
    /// The node's safety gate for MPS reconfiguration.
    pub(super) fn gate(&self, node: usize, now: u64) -> Result<(), String> {
        if self.paused {
            return Err("automatic reconfiguration is paused by an operator".into());
        }
        let n = &self.nodes[node];
        if n.maintenance
            .is_some_and(|(from, to)| (from..to).contains(&now))
        {
            return Ok(());
        }
        let g = &self.cfg.gate;
        let unknown = |what: &str| {
            format!(
                "its {what} is unknown (nothing reports it yet), so it is not known to be safe \
                 outside a maintenance window"
            )
        };
        let qps = n.qps.ok_or_else(|| unknown("request rate"))?;
        let error_rate = n.error_rate.ok_or_else(|| unknown("error rate"))?;
        if qps >= g.max_qps {
            return Err(format!("{qps:.0} requests/s ≥ {:.0}", g.max_qps));
        }
        if error_rate >= g.max_error_rate {
            return Err(format!(
                "error rate {:.2}% ≥ {:.2}%",
                error_rate * 100.0,
                g.max_error_rate * 100.0
            ));
        }
        if let Some(((pr, _), q)) = self.queue.iter().next()
            && *pr <= g.protect_queued
        {
            return Err(format!("{} ({pr:?}) is queued", q.id));
        }
        Ok(())
    }

    pub(super) fn reconfigure_plan(&self, c: &Cand, share: u32) -> Plan {
        let n = &self.nodes[c.node];
        let g = &n.gpus[c.gpus[0] as usize];
        let mut steps = vec![step(
            "start-mps-server",
            &n.name,
            Some(g.index),
            None,
            Some(share),
        )];
        for w in &g.workloads {
            let pct = self.placed.get(w).map(|p| p.share_pct);
            steps.push(step("shadow", &n.name, Some(g.index), Some(w), pct));
            steps.push(step("canary", &n.name, Some(g.index), Some(w), pct));
            steps.push(step("drain", &n.name, Some(g.index), Some(w), pct));
        }
        steps.push(step(
            "stop-old-mps-server",
            &n.name,
            Some(g.index),
            None,
            g.pool,
        ));
        Plan {
            moves: Vec::new(),
            steps,
            reload_gb: g.used_gb,
            restarts: g.workloads.len() as u32,
        }
    }

    /// Whether the breaker lets moves happen now.
    pub(super) fn breaker(&mut self, now: u64) -> Result<(), String> {
        if self.breaker_tripped {
            return Err("the circuit breaker was tripped by an operator".into());
        }
        if now < self.breaker_open_until {
            return Err(format!(
                "the circuit breaker is open for {} more ms",
                self.breaker_open_until - now
            ));
        }
        let b = &self.cfg.breaker;
        while self.moves.front().is_some_and(|&t| t + b.window_ms <= now) {
            self.moves.pop_front();
        }
        if self.moves.len() as u32 >= b.max_moves {
            self.breaker_open_until = now + b.cooldown_ms;
            return Err(format!(
                "the circuit breaker opened: {} moves in {} ms",
                self.moves.len(),
                b.window_ms
            ));
        }
        Ok(())
    }

    pub(super) fn record_moves(&mut self, now: u64, k: u32) {
        for _ in 0..k {
            self.moves.push_back(now);
        }
    }

    /// A consolidation plan: the GPU that can be freed with the fewest,
    /// cheapest moves of movable workloads to direct slots elsewhere.
    /// Applies it (moves bound at their destinations) and returns the
    /// request's candidate on the freed GPU.
    pub(super) fn repack(
        &mut self,
        p: &Profile,
        class: &Class,
        now: u64,
    ) -> Option<(Cand, Vec<Move>)> {
        if p.gpus() > 1 {
            return None;
        }
        let share = class.share_pct;
        let per_gpu_gb = p.gpu_memory();
        let banned = self.replica_nodes.get(&p.model_id);
        // GPUs that would take the request once the workloads to move are gone.
        let mut targets: Vec<(usize, u32, Vec<String>, f64)> = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let full = |b: &std::collections::HashMap<usize, u32>| {
                b.get(&i).is_some_and(|&n| n >= self.cfg.replicas_per_node)
            };
            if !open_to(n, p) || banned.is_some_and(full) {
                continue;
            }
            for g in &n.gpus {
                if g.workloads.is_empty()
                    || g.mps_conflict
                    || (g.mps_down.is_some() && share < 100)
                    || !p.accepts(&g.model)
                    || p.max_cost_per_hour
                        .is_some_and(|c| g.price_per_hour * share as f64 / 100.0 > c + 1e-9)
                    || g.memory_gb < per_gpu_gb
                {
                    continue;
                }
                let movable = |r: &Resident| {
                    !r.pinned && r.priority != Priority::P0 && !r.priority.outranks(p.priority)
                };
                let same = !self.cfg.mps_pools || g.pool == Some(share);
                if !same && !g.residents.iter().all(movable) {
                    continue;
                }
                let cap = g.capacity_pct(self.cfg.oversubscription_pct);
                // Same pool: move the largest movable shares until it fits;
                // another pool or an exclusive request: move everything.
                let mut order: Vec<usize> = (0..g.residents.len())
                    .filter(|&k| movable(&g.residents[k]))
                    .collect();
                order.sort_by(|&a, &b| {
                    g.residents[b]
                        .share
                        .cmp(&g.residents[a].share)
                        .then(g.workloads[a].cmp(&g.workloads[b]))
                });
                let mut used = g.used_pct;
                let mut gb = g.used_gb;
                let mut chosen = Vec::new();
                let mut reload = 0.0;
                let all = !same || share >= 100 || g.exclusive;
                for k in order {
                    if !all && used + share <= cap && gb + per_gpu_gb <= g.memory_gb + 1e-9 {
                        break;
                    }
                    let r = &g.residents[k];
                    used -= r.share;
                    gb -= r.gb;
                    reload += r.gb;
                    chosen.push(k);
                }
                let fits = if all {
                    chosen.len() == g.workloads.len()
                } else {
                    used + share <= cap && gb + per_gpu_gb <= g.memory_gb + 1e-9
                };
                let chosen: Vec<String> = if fits {
                    chosen.iter().map(|&k| g.workloads[k].clone()).collect()
                } else {
                    Vec::new()
                };
                if fits && !chosen.is_empty() {
                    targets.push((i, g.index, chosen, reload));
                }
            }
        }
        targets.sort_by(|a, b| a.2.len().cmp(&b.2.len()).then(a.3.total_cmp(&b.3)));
        let budget = self.cfg.breaker.max_moves as usize
            - self.moves.len().min(self.cfg.breaker.max_moves as usize);
        // Where could moved workloads go at all? Slots by share (or idle
        // GPUs), before any constraint: a plan needing more is not tried.
        let idle = self.hot.iter().filter(|h| h.empty && !h.shut).count();
        let pools = self.cfg.mps_pools;
        let mut slots: HashMap<u32, usize> = HashMap::new();
        let mut tried = 0;
        for (node, gpu, chosen, _) in targets {
            if tried >= self.cfg.search_limit {
                break;
            }
            if chosen.len() > budget {
                continue;
            }
            let mut need: HashMap<u32, usize> = HashMap::new();
            for id in &chosen {
                if let Some(w) = self.placed.get(id) {
                    *need.entry(w.share_pct).or_default() += 1;
                }
            }
            let possible = need.iter().all(|(&sh, &n)| {
                let have = *slots.entry(sh).or_insert_with(|| {
                    self.hot
                        .iter()
                        .filter(|h| {
                            // Shares need the GPU's MPS daemon.
                            let shut = h.empty || h.exclusive || h.shut || (h.no_mps && sh < 100);
                            !shut && (!pools || h.pool == sh) && h.used_pct + sh <= h.cap
                        })
                        .count()
                });
                have + idle >= n
            });
            if !possible {
                continue;
            }
            tried += 1;
            if let Some(moves) = self.try_moves(node, gpu, &chosen, now) {
                let ask = Ask {
                    p,
                    share,
                    preferred: class.preferred_model.as_deref(),
                    exclude: None,
                    replacing: None,
                    fill_from: None,
                };
                // The request's candidate on the freed GPU.
                let c = self.candidate_on(&ask, node, gpu);
                if let Some(c) = c {
                    return Some((c, moves));
                }
                self.undo_moves(&moves, now);
            }
        }
        None
    }

    /// Moves `ids` off `node`/`gpu` to direct slots elsewhere, or nothing.
    pub(super) fn try_moves(
        &mut self,
        node: usize,
        gpu: u32,
        ids: &[String],
        now: u64,
    ) -> Option<Vec<Move>> {
        let mut moves: Vec<Move> = Vec::new();
        for id in ids {
            let w = (**self.placed.get(id)?).clone();
            self.unbind(&w, now, false);
            let ask = Ask {
                p: &w.profile,
                share: w.share_pct,
                preferred: w.class.preferred_model.as_deref(),
                exclude: Some((node, gpu)),
                replacing: None,
                fill_from: None,
            };
            let s = self.scan(&ask, false);
            match s.direct {
                Some(c) if c.gpus.len() == 1 => {
                    let m = Move {
                        workload: w.id.clone(),
                        from_node: w.node.clone(),
                        from_gpu: gpu,
                        to_node: self.nodes[c.node].name.clone(),
                        to_gpu: c.gpus[0],
                        reload_gb: w.profile.model_size_gb,
                    };
                    let mut moved = w.clone();
                    moved.node = m.to_node.clone();
                    moved.gpus = c.gpus.clone();
                    self.bind(moved, c.slot);
                    moves.push(m);
                }
                _ => {
                    self.bind(w, Slot::Pool);
                    self.undo_moves(&moves, now);
                    return None;
                }
            }
        }
        Some(moves)
    }

    pub(super) fn undo_moves(&mut self, moves: &[Move], now: u64) {
        for m in moves.iter().rev() {
            if let Some(w) = self.placed.get(&m.workload).map(|w| (**w).clone()) {
                self.unbind(&w, now, false);
                let mut back = w;
                back.node = m.from_node.clone();
                back.gpus = vec![m.from_gpu];
                self.bind(back, Slot::Pool);
            }
        }
    }

    /// The GPU where evicting the fewest, least important preemptible
    /// workloads of lower priority makes room.
    pub(super) fn preemption(&self, p: &Profile, class: &Class) -> Option<(Cand, Vec<Placed>)> {
        if p.gpus() > 1 || p.priority == Priority::P3 {
            return None;
        }
        let share = class.share_pct;
        let mut best: Option<Eviction> = None;
        for (i, n) in self.nodes.iter().enumerate() {
            if !open_to(n, p) {
                continue;
            }
            for g in &n.gpus {
                if g.workloads.is_empty()
                    || g.mps_conflict
                    || (g.mps_down.is_some() && share < 100)
                    || !p.accepts(&g.model)
                    || g.memory_gb < p.gpu_memory()
                    || !g
                        .residents
                        .iter()
                        .any(|r| !r.pinned && r.preemptible && p.priority.outranks(r.priority))
                {
                    continue;
                }
                let mut victims: Vec<&Placed> = g
                    .workloads
                    .iter()
                    .filter_map(|w| self.placed.get(w).map(|p| &**p))
                    .filter(|w| {
                        !w.pinned
                            && w.profile.preemptible()
                            && p.priority.outranks(w.profile.priority)
                    })
                    .collect();
                victims.sort_by(|a, b| {
                    b.profile
                        .priority
                        .cmp(&a.profile.priority)
                        .then(b.share_pct.cmp(&a.share_pct))
                });
                let cap = g.capacity_pct(self.cfg.oversubscription_pct);
                let same = !self.cfg.mps_pools || g.pool == Some(share);
                let all = !same || share >= 100 || g.exclusive;
                let (mut used, mut gb) = (g.used_pct, g.used_gb);
                let mut taken: Vec<Placed> = Vec::new();
                let mut replica_left = n.replicas.get(&p.model_id).copied().unwrap_or(0);
                for v in victims {
                    let fits =
                        !all && used + share <= cap && gb + p.gpu_memory() <= g.memory_gb + 1e-9;
                    if fits && replica_left == 0 {
                        break;
                    }
                    used -= v.share_pct;
                    gb -= v.profile.gpu_memory();
                    if v.profile.model_id == p.model_id {
                        replica_left -= 1;
                    }
                    taken.push(v.clone());
                }
                let ok = replica_left == 0
                    && if all {
                        taken.len() == g.workloads.len()
                    } else {
                        used + share <= cap && gb + p.gpu_memory() <= g.memory_gb + 1e-9
                    };
                if !ok || taken.is_empty() {
                    continue;
                }
                let worst = taken
                    .iter()
                    .map(|v| v.profile.priority)
                    .min()
                    .expect("non-empty");
                // Evict the least important first: prefer victims whose most
                // important member is least important, then fewer victims.
                let key = (worst, usize::MAX - taken.len());
                if best.as_ref().is_none_or(|b| key > b.0) {
                    best = Some((key, i, g.index, taken));
                }
            }
        }
        let (_, node, gpu, victims) = best?;
        let n = &self.nodes[node];
        let g = &n.gpus[gpu as usize];
        let same = !self.cfg.mps_pools || g.pool == Some(share);
        let all = !same || share >= 100 || g.exclusive;
        let slot = if all || victims.len() == g.workloads.len() {
            Slot::Fresh
        } else if self.cfg.mps_pools {
            Slot::Pool
        } else {
            Slot::Shared
        };
        let affinity = match class.preferred_model.as_deref() {
            Some(m) if spec::is_family(&g.model, m) => 1.0,
            Some(_) => 0.0,
            None => 0.5,
        };
        let load = score::GpuLoad::of(
            g,
            g.capacity_pct(self.cfg.oversubscription_pct),
            self.best_tpw,
        );
        // The node as it is once the victims are gone.
        let nh = self.node_hot[node];
        let mut view: Vec<Free> = self.hot[nh.first..nh.first + nh.count]
            .iter()
            .map(|h| h.free())
            .collect();
        let freed: u32 = victims.iter().map(|v| v.share_pct).sum();
        let k = gpu as usize;
        view[k].pct = (view[k].pct + freed).min(load.cap);
        if slot == Slot::Fresh {
            view[k].pool = 0;
        }
        let by_size = self.mix.by_size(p.gpus(), share);
        let mut summary = Summary::default();
        self.mix.summarize(&view, &mut summary);
        let frag = self.mix.evaluate(&summary, n.cpu_free, &[]);
        let stranded = self.mix.stranded(n.cpu_free, &view, by_size);
        let cpu_after = n.cpu_free - p.cpu_milli;
        let nt = self.node_terms(
            &summary,
            &mut view,
            &[k],
            share,
            cpu_after,
            by_size,
            frag,
            stranded,
        );
        let terms = score::terms(&load, slot, share, affinity, n.local_to(&p.locality), nt);
        let score = terms.score(&self.cfg.weights);
        Some((
            Cand {
                node,
                gpus: vec![gpu],
                slot,
                score,
                terms,
            },
            victims,
        ))
    }
}
