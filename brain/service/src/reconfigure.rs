//! The slow knob as the service runs it: every loop round, what the core,
//! the replicas and the gateways say becomes the [`Reconfigurer`]'s
//! [`Tick`]; each step it takes is carried out through the core (a shadow
//! placed, weights set, the shadow applied or rolled back) and recorded as
//! a `reconfig` row in the same transaction as the core's decisions, so a
//! restarted brain finds every reconfiguration as it last stood.
//!
//! The evidence for a replica is what the gateways measured of it (what
//! users feel), or its server's own metrics where no gateway reports it.

use crate::http::Api;
use crate::replicas::ReplicaView;
use std::collections::BTreeMap;
use vagus_decision::reconfig::{
    Act, Candidate, Change, Observed, Progress, ReconfigConfig, Reconfigurer, Serving, Tick,
};
use vagus_decision::{Control, Priority};

pub struct Reconfigs {
    r: Reconfigurer,
    /// What the trail gave back at the start (a record's replay starts
    /// from it too).
    restored: Vec<vagus_decision::reconfig::Reconfig>,
}

impl Reconfigs {
    /// A reconfigurer with `cfg`, taking back what the trail recorded.
    pub fn new(cfg: ReconfigConfig, api: &Api) -> Reconfigs {
        let mut r = Reconfigurer::new(cfg);
        let restored = api.take_restored_reconfigs();
        for x in &restored {
            r.restore(x.clone());
        }
        Reconfigs { r, restored }
    }

    pub fn config(&self) -> &ReconfigConfig {
        self.r.config()
    }

    pub fn restored(&self) -> &[vagus_decision::reconfig::Reconfig] {
        &self.restored
    }

    /// What this round sees: `pinned` is the controller's (node, pid) →
    /// since when the reservation sits at its ceiling under pressure.
    pub fn observe(&self, api: &Api, pinned: &BTreeMap<(String, u32), u64>) -> Tick {
        let replicas = api.replicas();
        let now = api.now();
        struct Cand {
            sensitive: bool,
            c: Candidate,
            replica: String,
            profile: vagus_decision::Profile,
        }
        let (pause, blocked, grid, classes, cands, progress, efficiency) = api.with_core(|core| {
            let classes = core.config().classes.clone();
            let efficiency: BTreeMap<String, f64> = core.node_efficiency().into_iter().collect();
            // The least efficient node's workloads may be moved (a
            // rebalance): where to, asked of the core only for them.
            let low = efficiency
                .iter()
                .min_by(|a, b| a.1.total_cmp(b.1))
                .map(|(n, _)| n.clone());
            let cands: Vec<Cand> = core
                .placements()
                .filter(|p| {
                    p.profile.launch.is_some()
                        && p.shadow_of.is_none()
                        && !p.pinned
                        && p.gpus.len() == 1
                })
                .map(|p| {
                    let v = replicas.get(p.replica_id());
                    let pid = v.map(|v| v.pid);
                    let s = serving(Some(true), v);
                    let gpu_used_pct = core
                        .node(&p.node)
                        .and_then(|n| n.gpus.get(p.gpus[0] as usize))
                        .map_or(0, |g| g.used_pct);
                    let rebalance_to = (low.as_deref() == Some(p.node.as_str()))
                        .then(|| core.consolidation_target(&p.id))
                        .flatten()
                        .map(|(n, g)| format!("{n} GPU {g}"));
                    // Only latency-sensitive work has the share triggers.
                    let sensitive = p.profile.sla_ms.is_some()
                        || matches!(p.profile.priority, Priority::P0 | Priority::P1);
                    Cand {
                        sensitive,
                        c: Candidate {
                            workload: p.id.clone(),
                            replica: p.replica_id().to_string(),
                            node: p.node.clone(),
                            share_pct: p.share_pct,
                            pinned_at_ceiling: sensitive
                                && pid
                                    .is_some_and(|pid| pinned.contains_key(&(p.node.clone(), pid))),
                            observed: None,
                            p99_ms: s.p99_ms,
                            sla_ms: p.profile.sla_ms,
                            gpu_used_pct,
                            rebalance_to,
                        },
                        replica: p.replica_id().to_string(),
                        profile: p.profile.clone(),
                    }
                })
                .collect();
            let progress: BTreeMap<u64, Progress> = self
                .r
                .inflight()
                .map(|r| {
                    let placed = |id: &str| core.placement(id).map(|p| p.replica_id().to_string());
                    let old_id = r.old_replica.clone();
                    let old_placed = core.placements().any(|p| p.replica_id() == old_id);
                    let shadow_id = placed(&r.shadow);
                    (
                        r.id,
                        Progress {
                            gate: core.reconfiguration_gate(&r.node, now).err(),
                            sla_ms: core.placement(&r.workload).and_then(|p| p.profile.sla_ms),
                            old: serving(Some(old_placed), replicas.get(&old_id)),
                            shadow: serving(
                                Some(shadow_id.is_some()),
                                shadow_id.as_deref().and_then(|s| replicas.get(s)),
                            ),
                        },
                    )
                })
                .collect();
            (
                core.reconfiguration_paused(),
                core.reconfiguration_blocked(now),
                classes.grid.clone(),
                classes,
                cands,
                progress,
                efficiency,
            )
        });
        // The class the prompts the gateways saw would give each one (a
        // share an operator fixed is not reclassified).
        let candidates = cands
            .into_iter()
            .map(|mut k| {
                if k.sensitive
                    && k.profile.share_pct.is_none()
                    && let Some((sized, mean)) = api.prompts(&k.replica)
                {
                    let mut p = k.profile.clone();
                    p.seq_len = mean.round().clamp(1.0, u32::MAX as f64) as u32;
                    let class = classes.classify(&p);
                    k.c.observed = Some(Observed {
                        share_pct: class.share_pct,
                        class: class.name,
                        sized,
                        prompt_tokens: mean,
                    });
                }
                k.c
            })
            .collect();
        Tick {
            now_ms: now,
            pause,
            blocked,
            candidates,
            grid,
            progress,
            efficiency,
        }
    }

    /// The reconfigurer's steps for `t` (pure: what a record's replay
    /// runs again).
    pub fn decide(&mut self, t: &Tick) -> Vec<Change> {
        self.r.tick(t)
    }

    /// Carries the steps [`Reconfigs::decide`] took out, in order.
    pub async fn carry_out_all(&mut self, api: &Api, changes: &[Change]) {
        for ch in changes {
            self.carry_out(api, ch).await;
        }
    }

    async fn carry_out(&mut self, api: &Api, ch: &Change) {
        let r = ch.reconfig.clone();
        let why = format!(
            "reconfiguration {} of {}: {}",
            r.id,
            r.workload,
            r.step.name()
        );
        let (w, sh) = (r.workload.clone(), r.shadow.clone());
        let op: Option<crate::http::CoreOp> = match ch.act {
            Act::Record => None,
            Act::PlaceShadow => {
                let (share, consolidate) = (r.to_share, r.consolidate);
                Some(Box::new(move |c, now| {
                    c.place_shadow(&w, &sh, share, consolidate, now)
                }))
            }
            Act::Route => {
                let to = (r.fraction * 100.0).round().clamp(0.0, 100.0) as u32;
                let why = why.clone();
                Some(Box::new(move |c, now| {
                    c.route(&[(&w, Some(100 - to)), (&sh, Some(to))], now, &why)
                }))
            }
            Act::Apply => Some(Box::new(move |c, now| c.apply_shadow(&w, &sh, now))),
            Act::Cleanup => {
                let why = why.clone();
                Some(Box::new(move |c, now| c.route(&[(&w, None)], now, &why)))
            }
            Act::RollBack => {
                let why = ch.reason.clone();
                Some(Box::new(move |c, now| {
                    c.roll_back_shadow(&w, &sh, now, &why)
                }))
            }
            Act::Pause => {
                if let Err(e) = api
                    .control("breaker", Control::PauseReconfiguration {})
                    .await
                {
                    eprintln!(
                        "vagus brain: the breaker could not pause reconfiguration: {}",
                        e.message()
                    );
                }
                None
            }
        };
        if ch.act != Act::Pause
            && let Err(e) = api.reconfig_step(ch, op).await
        {
            eprintln!("vagus brain: {why}: {}", e.message());
        }
        if ch.act != Act::Pause {
            api.metrics
                .reconfigured(r.step, r.outcome, self.r.inflight().count());
        }
        if let Some(text) = &ch.alert {
            let kind = match (ch.act.clone(), r.outcome) {
                (Act::Pause, _) => "reconfiguration_paused",
                (_, Some(vagus_decision::reconfig::Outcome::Completed)) => "reconfiguration_stuck",
                _ if r.id == 0 => "reconfiguration_refused",
                _ => "reconfiguration_aborted",
            };
            let node = (!r.node.is_empty()).then_some(r.node.as_str());
            let workloads = if r.workload.is_empty() {
                Vec::new()
            } else {
                vec![r.workload.clone()]
            };
            api.alert(kind, node, workloads, text.clone()).await;
        }
    }
}

/// A replica as the reconfigurer sees it: `placed` whether a placement
/// holds it, `v` what its agent and the gateways last said.
fn serving(placed: Option<bool>, v: Option<&ReplicaView>) -> Serving {
    let placed = placed.unwrap_or(false);
    let Some(v) = v else {
        return Serving {
            placed,
            // Placed and not reported yet: starting; neither: gone.
            exited: (!placed).then(|| "no longer reported by its agent".into()),
            ..Serving::default()
        };
    };
    let g = v.gateway.as_ref().filter(|g| g.requests.unwrap_or(0) > 0);
    let src = g.or(v.serving.as_ref());
    let in_flight = v
        .gateway
        .as_ref()
        .and_then(|g| g.running)
        .unwrap_or(0.0)
        .max(v.serving.as_ref().map_or(0.0, |s| {
            s.running.unwrap_or(0.0) + s.queue_depth.unwrap_or(0.0)
        }));
    Serving {
        placed,
        ready: v.takes_requests(),
        exited: (v.state == "exited").then(|| v.exit.clone().unwrap_or_else(|| "exited".into())),
        requests: src.and_then(|s| s.requests).unwrap_or(0),
        errors: src.and_then(|s| s.errors).unwrap_or(0),
        p99_ms: src.and_then(|s| s.latency_p99_s).map(|s| s * 1e3),
        in_flight: in_flight.round() as u64,
    }
}
