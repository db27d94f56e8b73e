//! What a running workload's MPS reconfiguration changes in the core (the
//! flow itself is [`crate::reconfig`]'s): a shadow placed beside the
//! workload with the new share, the routing weights that move traffic to
//! it, and either the shadow made the workload (apply) or removed again
//! (roll back). Until apply, the old placement is the workload's and is
//! untouched but for its weight.

use super::scan::Ask;
use super::{Core, Refusal};
use crate::explain::{Decision, Path};
use crate::score::Slot;
use crate::state::Placed;
use crate::workload::Invalid;

impl Core {
    /// The node's safety gate for reconfiguration now: `Err` says why it
    /// is shut.
    pub fn reconfiguration_gate(&self, node: &str, now: u64) -> Result<(), String> {
        let i = *self
            .index
            .get(node)
            .ok_or_else(|| format!("{node} is not a known node"))?;
        self.gate(i, now)
    }

    /// Why no reconfiguration may start now (an operator paused them, or
    /// the circuit breaker is tripped or open), if anything.
    pub fn reconfiguration_blocked(&self, now: u64) -> Option<String> {
        if self.paused {
            Some("automatic reconfiguration is paused".into())
        } else if self.breaker_tripped {
            Some("the circuit breaker was tripped by an operator".into())
        } else if now < self.breaker_open_until {
            Some("the circuit breaker is open".into())
        } else {
            None
        }
    }

    /// Places `shadow`, a copy of `workload` with `share_pct`, wherever it
    /// fits directly (the workload's own replica does not count against
    /// its model's anti-affinity: it is being replaced); `consolidate`:
    /// only on another GPU that holds work and is at least as full as the
    /// workload's (a rebalance). The shadow takes no traffic (weight 0), is
    /// pinned (no repack moves it) and is not charged to the tenant.
    pub fn place_shadow(
        &mut self,
        workload: &str,
        shadow: &str,
        share_pct: u32,
        consolidate: bool,
        now: u64,
    ) -> Result<Vec<Decision>, Refusal> {
        let old = self.bound(workload)?;
        if old.shadow_of.is_some() {
            return Err(Invalid::new("workload", &format!("{workload} is itself a shadow")).into());
        }
        crate::state::check_id(shadow)?;
        if self.known(shadow) {
            return Err(Refusal::Conflict(format!("workload {shadow}")));
        }
        let mut profile = old.profile.clone();
        profile.name = shadow.to_string();
        profile.share_pct = Some(share_pct);
        let class = self.cfg.classes.classify(&profile);
        let Some(c) = self.shadow_slot(&old, &profile, &class, consolidate) else {
            let room = if consolidate {
                "another GPU at least as full as its own"
            } else {
                "a GPU"
            };
            return Err(Invalid::new(
                "share_pct",
                &format!(
                    "no {room} has room for a shadow of {workload} with {}% beside what runs",
                    class.share_pct
                ),
            )
            .into());
        };
        if let Some(l) = profile.launch.as_mut() {
            l.port = l
                .port
                .map(|p| self.shadow_port(p, &self.nodes[c.node].name));
        }
        let seq = self.next_seq();
        let mut d = Decision::new(
            seq,
            now,
            shadow,
            Path::Reconfigure,
            format!(
                "{shadow}, the shadow of {workload} with {}% (it has {}%), on {} GPU {:?}: no traffic until its canary",
                class.share_pct, old.share_pct, self.nodes[c.node].name, c.gpus
            ),
        );
        d.class = Some(class.clone());
        let placed = Placed {
            id: shadow.to_string(),
            share_pct: class.share_pct,
            class,
            node: self.nodes[c.node].name.clone(),
            gpus: c.gpus.clone(),
            at_ms: now,
            gpu_hours: 0.0,
            pinned: true,
            weight: Some(0),
            scaled: false,
            replica: None,
            shadow_of: Some(workload.to_string()),
            bound_by: None,
            profile,
        };
        self.bind(placed, c.slot);
        self.describe(shadow, &mut d);
        Ok(vec![d])
    }

    /// The port a shadow of a workload serving on `port` serves on, on
    /// `node`: `port_offset` above it (below, where that would pass 65535),
    /// then the next one no placement on that node launches on.
    fn shadow_port(&self, port: u16, node: &str) -> u16 {
        let off = self.cfg.reconfig.port_offset;
        let taken: std::collections::HashSet<u16> = self
            .placed
            .values()
            .filter(|p| p.node == node)
            .filter_map(|p| p.profile.launch.as_ref()?.port)
            .collect();
        let mut p = port.checked_add(off).unwrap_or(port.saturating_sub(off));
        while taken.contains(&p) && p < u16::MAX {
            p += 1;
        }
        p
    }

    /// Where a shadow of `old` with `profile` (classed `class`) would go
    /// directly; `consolidate`: only another GPU holding work, at least as
    /// full as `old`'s.
    fn shadow_slot(
        &self,
        old: &Placed,
        profile: &crate::Profile,
        class: &crate::Class,
        consolidate: bool,
    ) -> Option<super::scan::Cand> {
        let node = self.index[&old.node];
        let gpu = old.gpus.first().copied();
        let fill = gpu.map(|g| self.nodes[node].gpus[g as usize].used_pct);
        let ask = Ask {
            p: profile,
            share: class.share_pct,
            preferred: class.preferred_model.as_deref(),
            exclude: gpu.filter(|_| consolidate).map(|g| (node, g)),
            replacing: Some(node),
            fill_from: fill.filter(|_| consolidate),
        };
        self.scan(&ask, false).direct
    }

    /// Whether moving bound placement `workload` to another GPU holding
    /// work, at least as full as its own, is possible now (a rebalance's
    /// precondition): that GPU, by node name and index.
    pub fn consolidation_target(&self, workload: &str) -> Option<(String, u32)> {
        let old = self.placed.get(workload)?;
        if old.gpus.len() != 1 || old.shadow_of.is_some() {
            return None;
        }
        let class = self.cfg.classes.classify(&old.profile);
        let c = self.shadow_slot(old, &old.profile, &class, true)?;
        Some((self.nodes[c.node].name.clone(), *c.gpus.first()?))
    }

    /// Each node that is up and holds work on its GPUs: the share of its
    /// GPUs in use that is placed (0–1; a GPU half placed is 0.5). What a
    /// rebalance evens out: a node whose GPUs are little used each holds
    /// GPUs that consolidation would free.
    pub fn node_efficiency(&self) -> Vec<(String, f64)> {
        self.nodes
            .iter()
            .filter(|n| n.down.is_none())
            .filter_map(|n| {
                let used: Vec<u32> = n
                    .gpus
                    .iter()
                    .filter(|g| !g.workloads.is_empty())
                    .map(|g| g.used_pct.min(100))
                    .collect();
                (!used.is_empty()).then(|| {
                    let placed: u32 = used.iter().sum();
                    (n.name.clone(), placed as f64 / (100.0 * used.len() as f64))
                })
            })
            .collect()
    }

    /// A copy of bound placement `id`.
    fn bound(&self, id: &str) -> Result<Placed, Refusal> {
        self.placed
            .get(id)
            .map(|p| (**p).clone())
            .ok_or_else(|| Refusal::NotFound(format!("placement {id}")))
    }

    /// A placement, bound or restored and waiting for its node (a brain
    /// that restarted before its agents came back).
    fn held(&self, id: &str) -> Option<&Placed> {
        self.placed
            .get(id)
            .map(|p| &**p)
            .or_else(|| self.waiting.get(id))
    }

    fn held_mut(&mut self, id: &str) -> Option<&mut Placed> {
        match self.placed.get_mut(id) {
            Some(p) => Some(&mut **p),
            None => self.waiting.get_mut(id),
        }
    }

    /// Sets routing weights (`None`: the default) of placements, one
    /// `control` decision each, saying `why`.
    pub fn route(
        &mut self,
        weights: &[(&str, Option<u32>)],
        now: u64,
        why: &str,
    ) -> Result<Vec<Decision>, Refusal> {
        if let Some((w, _)) = weights.iter().find(|(w, _)| self.held(w).is_none()) {
            return Err(Refusal::NotFound(format!("placement {w}")));
        }
        let mut out = Vec::new();
        for (w, weight) in weights {
            if let Some(p) = self.held_mut(w) {
                p.weight = *weight;
            }
            let seq = self.next_seq();
            let at = weight.map_or("the default weight".into(), |v| format!("weight {v}"));
            let mut d = Decision::new(
                seq,
                now,
                w,
                Path::Control,
                format!("{w} routed at {at}: {why}"),
            );
            self.describe(w, &mut d);
            out.push(d);
        }
        Ok(out)
    }

    /// Makes `shadow` the workload: the placement `workload` now runs on the
    /// shadow's GPU with its share, its replica the shadow's; the old
    /// placement's resources are free (its replica, no longer placed,
    /// drains and stops). The workload keeps its pin, charge and profile.
    pub fn apply_shadow(
        &mut self,
        workload: &str,
        shadow: &str,
        now: u64,
    ) -> Result<Vec<Decision>, Refusal> {
        let old = self.bound(workload)?;
        let sh = self
            .placed
            .get(shadow)
            .map(|p| (**p).clone())
            .filter(|s| s.shadow_of.as_deref() == Some(workload))
            .ok_or_else(|| Refusal::NotFound(format!("shadow {shadow} of {workload}")))?;
        self.unbind(&old, now, false);
        self.unbind(&sh, now, false);
        let summary = format!(
            "{workload} runs as {} on {} GPU {:?} with {}% (was {}% on {} GPU {:?})",
            sh.replica_id(),
            sh.node,
            sh.gpus,
            sh.share_pct,
            old.share_pct,
            old.node,
            old.gpus
        );
        let new = Placed {
            id: workload.to_string(),
            replica: Some(sh.replica_id().to_string()),
            shadow_of: None,
            bound_by: None,
            // Its request as it was, launched as the shadow is.
            profile: crate::Profile {
                launch: sh.profile.launch.clone(),
                ..old.profile.clone()
            },
            pinned: old.pinned,
            gpu_hours: old.gpu_hours,
            scaled: old.scaled,
            ..sh
        };
        self.bind(new, Slot::Pool);
        let seq = self.next_seq();
        let mut d = Decision::new(seq, now, workload, Path::Reconfigure, summary);
        self.describe(workload, &mut d);
        let seq = self.next_seq();
        let gone = Decision::new(
            seq,
            now,
            shadow,
            Path::Remove,
            format!("{shadow} is now {workload}'s placement"),
        );
        Ok(vec![d, gone])
    }

    /// Rolls a reconfiguration back: `workload` takes its default weight
    /// again, and `shadow` (if placed) is removed — bound, or restored and
    /// waiting for its node.
    pub fn roll_back_shadow(
        &mut self,
        workload: &str,
        shadow: &str,
        now: u64,
        why: &str,
    ) -> Result<Vec<Decision>, Refusal> {
        let mut out = Vec::new();
        if self.held(workload).is_some() {
            out.extend(self.route(&[(workload, None)], now, why)?);
        }
        if self
            .held(shadow)
            .is_some_and(|s| s.shadow_of.as_deref() == Some(workload))
        {
            out.extend(self.remove(shadow, now)?);
        }
        Ok(out)
    }
}
