//! Answers for a scheduler that decides itself (kube-scheduler, through
//! its extender): which of its nodes could take a workload now and how
//! well, placing it on the node that scheduler chose, and whether its
//! preemption victims may go.
//!
//! Only the direct path (a compatible slot or an idle GPU) counts: the
//! outside scheduler binds at once, so nothing can first be reconfigured,
//! repacked or queued on its behalf.

use super::Core;
use super::scan::{Ask, Scan};
use crate::explain::{Decision, Path};
use crate::state::check_id;
use crate::workload::Profile;
use crate::{Priority, Refusal};
use serde::Serialize;
use utoipa::ToSchema;

/// What the core says of one node for a workload.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[serde(tag = "fit", rename_all = "snake_case")]
pub enum Fitness {
    /// It fits now: its best GPU and that candidate's score.
    Fits { gpu: Option<u32>, score: f64 },
    /// It does not fit now. `lasting`: no preemption on the node would
    /// make it fit (the node is unknown, or the request could never be
    /// placed as asked).
    Unfit { why: String, lasting: bool },
}

impl Core {
    /// Whether `p` could be placed directly on each of `nodes` now, and how
    /// well (the core's node score); nothing changes.
    pub fn assess(&self, p: &Profile, nodes: &[&str]) -> Result<Vec<Fitness>, Refusal> {
        p.validate()?;
        let class = self.cfg.classes.classify(p);
        if let Some(why) = self.hopeless(p, &class) {
            return Ok(nodes
                .iter()
                .map(|_| Fitness::Unfit {
                    why: why.clone(),
                    lasting: true,
                })
                .collect());
        }
        let ask = Ask {
            p,
            share: class.share_pct,
            preferred: class.preferred_model.as_deref(),
            exclude: None,
            replacing: None,
            fill_from: None,
        };
        Ok(nodes
            .iter()
            .map(|name| match self.index.get(*name) {
                None => Fitness::Unfit {
                    why: format!("node {name}: no Vagus agent reports it"),
                    lasting: true,
                },
                Some(&i) => {
                    let s = self.scan_in(&ask, std::iter::once(i), true, false);
                    match &s.direct {
                        Some(c) => Fitness::Fits {
                            gpu: c.gpus.first().copied(),
                            score: c.score,
                        },
                        None => Fitness::Unfit {
                            why: unfit(&s),
                            lasting: false,
                        },
                    }
                }
            })
            .collect())
    }

    /// Places `p` on `node` (the choice of the outside scheduler `by`) if
    /// it fits there directly, on the GPU the score likes best; else
    /// refuses, naming what rules the node out.
    pub fn place_on(
        &mut self,
        p: Profile,
        node: &str,
        by: &str,
        now: u64,
    ) -> Result<Vec<Decision>, Refusal> {
        p.validate()?;
        check_id(&p.name)?;
        if self.known(&p.name) {
            return Err(Refusal::Conflict(format!("workload {}", p.name)));
        }
        let Some(&i) = self.index.get(node) else {
            return Err(Refusal::NotFound(format!("node {node}")));
        };
        let class = self.cfg.classes.classify(&p);
        if let Some(why) = self.hopeless(&p, &class) {
            return Err(Refusal::NoRoom(why));
        }
        let ask = Ask {
            p: &p,
            share: class.share_pct,
            preferred: class.preferred_model.as_deref(),
            exclude: None,
            replacing: None,
            fill_from: None,
        };
        let s = self.scan_in(&ask, std::iter::once(i), true, false);
        let Some(c) = s.direct.clone() else {
            return Err(Refusal::NoRoom(format!(
                "{} on {node}: {}",
                p.name,
                unfit(&s)
            )));
        };
        self.learn(&p, class.share_pct);
        let seq = self.next_seq();
        let mut d = Decision::new(
            seq,
            now,
            &p.name,
            Path::Direct,
            format!(
                "{} on {node} GPU {:?}: the node its scheduler chose",
                p.name, c.gpus
            ),
        );
        d.considered = s.considered;
        d.feasible = s.feasible;
        d.top = s.top.iter().map(|c| self.candidate(c)).collect();
        d.share_pct = Some(class.share_pct);
        d.class = Some(class.clone());
        let id = p.name.clone();
        self.commit(p, class, &c, now, &mut d);
        if let Some(w) = self.placed.get_mut(&id) {
            w.bound_by = Some(by.to_string());
        }
        Ok(vec![d])
    }

    /// Whether a workload of `priority` may preempt each of `victims`
    /// (placement names): `Err` names the first the core protects (pinned,
    /// not preemptible, or not less important). Names the core does not
    /// know are not its to protect.
    pub fn may_preempt(&self, priority: Priority, victims: &[&str]) -> Result<(), String> {
        for v in victims {
            let Some(w) = self.placed.get(*v) else {
                continue;
            };
            if w.pinned {
                return Err(format!("{v} is pinned"));
            }
            if !w.profile.preemptible() {
                return Err(format!("{v} is not preemptible"));
            }
            if !priority.outranks(w.profile.priority) {
                return Err(format!(
                    "{v} is {:?}, not less important than {priority:?}",
                    w.profile.priority
                ));
            }
        }
        Ok(())
    }
}

/// Why a scan of one node found no direct candidate, in words.
fn unfit(s: &Scan) -> String {
    let ruled = s.ruled_out();
    if ruled.is_empty() && !s.reconfigure.is_empty() {
        return "only by reconfiguring its MPS server for this share".into();
    }
    if ruled.is_empty() {
        return "no GPU there takes it".into();
    }
    ruled
        .iter()
        .map(|r| format!("{} ({})", r.constraint, r.examples.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}
