//! Scaling replicas: the seed's thresholds, pure. A model whose replicas
//! hold too much waiting work gets another replica; one whose GPUs have
//! been idle long enough loses a replica the scaler added.
//!
//! - **Up**, when the model's ready replicas have more than `queue_depth`
//!   requests waiting on average (their servers' own queue gauge, as last
//!   scraped), or one of them has had its p99 over `control.pressure` × SLA
//!   for `pressed_ms` (the budgets had that long to fix it first) — unless a
//!   replica of the model is still starting, the model scaled up less than
//!   `cooldown_ms` ago, or it has `max_replicas`. The new replica copies the
//!   replica with the most waiting, named `<it>-s<k>`, serving on its port
//!   + k − 1; the core places it like any request.
//! - **Down**, when every GPU that holds the model's replicas has stayed
//!   under `idle_utilisation` for `idle_ms` while every replica served (a
//!   copy still starting holds the idle period back): the newest replica
//!   the scaler added is removed (its route goes first, then it drains).
//!   Replicas an operator placed are never removed.
//! - Nothing while an operator has paused reconfiguration, nor unless
//!   `enabled`.

use crate::workload::Invalid;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ScaleConfig {
    /// Scaling at all (off by default: replicas appear only where an
    /// operator asked for automatic scaling, as an autoscaler is created
    /// in Kubernetes).
    pub enabled: bool,
    /// Up when the replicas average more requests waiting than this.
    pub queue_depth: f64,
    /// Up when a replica's p99 stays over the control loop's pressure
    /// threshold this long (ms).
    pub pressed_ms: u64,
    /// Replicas of one model at most (operators' and the scaler's).
    pub max_replicas: u32,
    /// After a scale-up of a model, none again for this long (ms).
    pub cooldown_ms: u64,
    /// Down when every GPU of the model stays under this utilisation (0–1)…
    pub idle_utilisation: f64,
    /// …for this long (ms).
    pub idle_ms: u64,
}

impl Default for ScaleConfig {
    fn default() -> ScaleConfig {
        ScaleConfig {
            enabled: false,
            queue_depth: 10.0,
            pressed_ms: 5_000,
            max_replicas: 4,
            cooldown_ms: 30_000,
            idle_utilisation: 0.6,
            idle_ms: 300_000,
        }
    }
}

impl ScaleConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if !(self.queue_depth > 0.0 && self.queue_depth.is_finite()) {
            return Err(Invalid::new("scale.queue_depth", "must be above 0"));
        }
        if !(self.idle_utilisation > 0.0 && self.idle_utilisation < 1.0) {
            return Err(Invalid::new(
                "scale.idle_utilisation",
                "must be above 0 and below 1",
            ));
        }
        if !(1..=64).contains(&self.max_replicas) {
            return Err(Invalid::new("scale.max_replicas", "must be 1 to 64"));
        }
        for (name, v) in [
            ("pressed_ms", self.pressed_ms),
            ("cooldown_ms", self.cooldown_ms),
            ("idle_ms", self.idle_ms),
        ] {
            if !(100..=86_400_000).contains(&v) {
                return Err(Invalid::new(
                    &format!("scale.{name}"),
                    "must be 100 to 86400000 (a day)",
                ));
            }
        }
        Ok(())
    }
}

/// What the scaler sees of one model at one moment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelObservation {
    pub model: String,
    pub replicas: Vec<ReplicaObservation>,
    /// Each GPU that holds one of its replicas: its utilisation (0–1) as
    /// last reported; `None`: not reported.
    pub gpu_utilisation: Vec<Option<f64>>,
}

/// One placement of the model that runs (or starts) a replica.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicaObservation {
    pub workload: String,
    /// The scaler added it (so it may remove it).
    pub added: bool,
    /// Its server answers (`ready` or `running`).
    pub ready: bool,
    /// Requests waiting in its server's queue, as last scraped.
    pub queue_depth: Option<f64>,
    pub p99_ms: Option<f64>,
    pub sla_ms: Option<u32>,
}

/// What the scaler decided for a model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Scale {
    /// Place `name`, a copy of `from` serving on `from`'s port + `offset`.
    Up {
        model: String,
        from: String,
        name: String,
        offset: u16,
        reason: String,
    },
    /// Remove `workload` (added by the scaler).
    Down {
        model: String,
        workload: String,
        reason: String,
    },
}

/// The scaler's memory: per model, when it last scaled up, since when its
/// GPUs have been idle, and since when each replica has been pressed.
pub struct Scaler {
    cfg: ScaleConfig,
    pressure: f64,
    last_up: BTreeMap<String, u64>,
    idle_since: BTreeMap<String, u64>,
    pressed_since: BTreeMap<String, u64>,
}

/// The name of the `k`-th replica copied from `from` (a DNS label).
fn replica_name(from: &str, k: u32) -> String {
    let base = from
        .rsplit_once("-s")
        .filter(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .map_or(from, |(b, _)| b);
    let suffix = format!("-s{k}");
    let keep = base.len().min(63 - suffix.len());
    format!("{}{suffix}", base[..keep].trim_end_matches('-'))
}

impl Scaler {
    /// `pressure`: the control loop's threshold (a fraction of the SLA).
    pub fn new(cfg: ScaleConfig, pressure: f64) -> Scaler {
        Scaler {
            cfg,
            pressure,
            last_up: BTreeMap::new(),
            idle_since: BTreeMap::new(),
            pressed_since: BTreeMap::new(),
        }
    }

    /// One look at every model; `taken`: names already in use.
    pub fn tick(
        &mut self,
        now_ms: u64,
        paused: bool,
        models: &[ModelObservation],
        taken: &dyn Fn(&str) -> bool,
    ) -> Vec<Scale> {
        let mut out = Vec::new();
        // Forget what no longer exists.
        self.pressed_since.retain(|w, _| {
            models
                .iter()
                .any(|m| m.replicas.iter().any(|r| r.workload == *w))
        });
        self.idle_since
            .retain(|m, _| models.iter().any(|o| o.model == *m));
        for m in models {
            for r in &m.replicas {
                let pressed = match (r.p99_ms, r.sla_ms) {
                    (Some(p), Some(sla)) => p > self.pressure * sla as f64,
                    _ => false,
                };
                if pressed {
                    self.pressed_since
                        .entry(r.workload.clone())
                        .or_insert(now_ms);
                } else {
                    self.pressed_since.remove(&r.workload);
                }
            }
            // Idle: every GPU under the threshold while every replica
            // serves. A copy still starting has served nothing yet, so its
            // idle GPU says nothing: the period starts once it serves.
            let idle = !m.gpu_utilisation.is_empty()
                && m.replicas.iter().all(|r| r.ready)
                && m.gpu_utilisation
                    .iter()
                    .all(|u| u.is_some_and(|u| u < self.cfg.idle_utilisation));
            if idle {
                self.idle_since.entry(m.model.clone()).or_insert(now_ms);
            } else {
                self.idle_since.remove(&m.model);
            }
            if !self.cfg.enabled || paused || m.replicas.is_empty() {
                continue;
            }
            if let Some(s) = self.up(now_ms, m, taken) {
                self.last_up.insert(m.model.clone(), now_ms);
                self.idle_since.remove(&m.model);
                out.push(s);
            } else if let Some(s) = self.down(now_ms, m) {
                // One replica per idle period.
                self.idle_since.insert(m.model.clone(), now_ms);
                out.push(s);
            }
        }
        out
    }

    fn up(&self, now_ms: u64, m: &ModelObservation, taken: &dyn Fn(&str) -> bool) -> Option<Scale> {
        if m.replicas.len() as u32 >= self.cfg.max_replicas
            || m.replicas.iter().any(|r| !r.ready)
            || self
                .last_up
                .get(&m.model)
                .is_some_and(|&t| now_ms < t + self.cfg.cooldown_ms)
        {
            return None;
        }
        let depths: Vec<f64> = m.replicas.iter().filter_map(|r| r.queue_depth).collect();
        let mean = (!depths.is_empty()).then(|| depths.iter().sum::<f64>() / depths.len() as f64);
        let long_pressed = m.replicas.iter().find(|r| {
            self.pressed_since
                .get(&r.workload)
                .is_some_and(|&t| now_ms >= t + self.cfg.pressed_ms)
        });
        let reason = match (mean, long_pressed) {
            (Some(q), _) if q > self.cfg.queue_depth => format!(
                "{q:.1} requests waiting per replica (over {}) on {} replica(s)",
                self.cfg.queue_depth,
                m.replicas.len()
            ),
            (_, Some(r)) => format!(
                "{}'s p99 {:.0} ms over {:.0}% of its {} ms SLA for {:.1} s",
                r.workload,
                r.p99_ms.unwrap_or(0.0),
                self.pressure * 100.0,
                r.sla_ms.unwrap_or(0),
                self.cfg.pressed_ms as f64 / 1e3
            ),
            _ => return None,
        };
        let from = m
            .replicas
            .iter()
            .max_by(|a, b| {
                a.queue_depth
                    .unwrap_or(0.0)
                    .total_cmp(&b.queue_depth.unwrap_or(0.0))
            })
            .expect("not empty");
        let k = (2..=u16::MAX as u32).find(|&k| !taken(&replica_name(&from.workload, k)))?;
        Some(Scale::Up {
            model: m.model.clone(),
            from: from.workload.clone(),
            name: replica_name(&from.workload, k),
            offset: (k - 1) as u16,
            reason,
        })
    }

    fn down(&self, now_ms: u64, m: &ModelObservation) -> Option<Scale> {
        let since = *self.idle_since.get(&m.model)?;
        if now_ms < since + self.cfg.idle_ms {
            return None;
        }
        // The newest the scaler added: the highest copy number.
        let newest = m.replicas.iter().filter(|r| r.added).max_by_key(|r| {
            let n = r
                .workload
                .rsplit_once("-s")
                .and_then(|(_, n)| n.parse::<u32>().ok());
            (n, r.workload.clone())
        })?;
        Some(Scale::Down {
            model: m.model.clone(),
            workload: newest.workload.clone(),
            reason: format!(
                "every GPU of {} under {:.0}% utilisation for {:.1} s",
                m.model,
                self.cfg.idle_utilisation * 100.0,
                (now_ms - since) as f64 / 1e3
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(name: &str, added: bool, q: f64) -> ReplicaObservation {
        ReplicaObservation {
            workload: name.into(),
            added,
            ready: true,
            queue_depth: Some(q),
            p99_ms: Some(10.0),
            sla_ms: Some(100),
        }
    }

    fn model(replicas: Vec<ReplicaObservation>, util: f64) -> Vec<ModelObservation> {
        vec![ModelObservation {
            model: "m".into(),
            gpu_utilisation: vec![Some(util); replicas.len()],
            replicas,
        }]
    }

    fn cfg() -> ScaleConfig {
        ScaleConfig {
            enabled: true,
            cooldown_ms: 1_000,
            idle_ms: 3_000,
            pressed_ms: 2_000,
            ..ScaleConfig::default()
        }
    }

    #[test]
    fn a_queue_over_the_threshold_adds_a_replica_once_per_cooldown_and_never_past_the_most() {
        let mut s = Scaler::new(
            ScaleConfig {
                max_replicas: 3,
                ..cfg()
            },
            0.8,
        );
        let none = |_: &str| false;
        assert!(
            s.tick(
                0,
                false,
                &model(vec![replica("chat", false, 10.0)], 0.9),
                &none
            )
            .is_empty()
        );
        let out = s.tick(
            100,
            false,
            &model(vec![replica("chat", false, 12.0)], 0.9),
            &none,
        );
        let [
            Scale::Up {
                from,
                name,
                offset,
                reason,
                ..
            },
        ] = &out[..]
        else {
            panic!("{out:?}")
        };
        assert_eq!(
            (from.as_str(), name.as_str(), *offset),
            ("chat", "chat-s2", 1)
        );
        assert!(reason.contains("12.0 requests waiting"), "{reason}");
        // Starting, then inside the cooldown: nothing.
        let mut two = vec![replica("chat", false, 30.0), replica("chat-s2", true, 0.0)];
        two[1].ready = false;
        assert!(
            s.tick(1_200, false, &model(two.clone(), 0.9), &none)
                .is_empty()
        );
        two[1].ready = true;
        assert!(
            s.tick(1_050, false, &model(two.clone(), 0.9), &none)
                .is_empty()
        );
        let out = s.tick(1_200, false, &model(two.clone(), 0.9), &|n| n == "chat-s2");
        assert!(
            matches!(&out[..], [Scale::Up { name, .. }] if name == "chat-s3"),
            "{out:?}"
        );
        two.push(replica("chat-s3", true, 30.0));
        assert!(
            s.tick(9_000, false, &model(two, 0.9), &none).is_empty(),
            "at the most"
        );
        // Paused, or off: nothing.
        let mut s = Scaler::new(cfg(), 0.8);
        assert!(
            s.tick(
                0,
                true,
                &model(vec![replica("chat", false, 50.0)], 0.9),
                &none
            )
            .is_empty()
        );
        let mut s = Scaler::new(
            ScaleConfig {
                enabled: false,
                ..cfg()
            },
            0.8,
        );
        assert!(
            s.tick(
                0,
                false,
                &model(vec![replica("chat", false, 50.0)], 0.9),
                &none
            )
            .is_empty()
        );
    }

    #[test]
    fn a_p99_pressed_long_enough_adds_a_replica() {
        let mut s = Scaler::new(cfg(), 0.8);
        let none = |_: &str| false;
        let mut r = replica("chat", false, 0.0);
        r.p99_ms = Some(90.0);
        for t in [0, 1_000, 1_999] {
            assert!(
                s.tick(t, false, &model(vec![r.clone()], 0.9), &none)
                    .is_empty(),
                "{t}"
            );
        }
        let out = s.tick(2_000, false, &model(vec![r.clone()], 0.9), &none);
        assert!(
            matches!(&out[..], [Scale::Up { reason, .. }] if reason.contains("p99 90 ms")),
            "{out:?}"
        );
        // Pressure that lapses starts over.
        let mut s = Scaler::new(cfg(), 0.8);
        s.tick(0, false, &model(vec![r.clone()], 0.9), &none);
        s.tick(
            1_500,
            false,
            &model(vec![replica("chat", false, 0.0)], 0.9),
            &none,
        );
        assert!(s.tick(2_500, false, &model(vec![r], 0.9), &none).is_empty());
    }

    #[test]
    fn a_copy_still_starting_is_not_removed_and_the_idle_period_starts_once_it_serves() {
        let mut s = Scaler::new(cfg(), 0.8);
        let none = |_: &str| false;
        let mut starting = replica("chat-s2", true, 0.0);
        starting.ready = false;
        let two = vec![replica("chat", false, 0.0), starting];
        // Idle GPUs for far longer than idle_ms while the copy starts.
        for t in [0, 2_000, 4_000, 9_000] {
            assert!(
                s.tick(t, false, &model(two.clone(), 0.1), &none).is_empty(),
                "at {t} ms"
            );
        }
        // It serves: the idle period starts now, and ends idle_ms later.
        let serving = vec![replica("chat", false, 0.0), replica("chat-s2", true, 0.0)];
        assert!(
            s.tick(10_000, false, &model(serving.clone(), 0.1), &none)
                .is_empty()
        );
        assert!(
            s.tick(12_000, false, &model(serving.clone(), 0.1), &none)
                .is_empty()
        );
        let out = s.tick(13_000, false, &model(serving, 0.1), &none);
        assert!(
            matches!(&out[..], [Scale::Down { workload, .. }] if workload == "chat-s2"),
            "{out:?}"
        );
    }

    #[test]
    fn idle_gpus_remove_the_newest_added_replica_once_per_idle_period_and_never_an_operators() {
        let mut s = Scaler::new(cfg(), 0.8);
        let none = |_: &str| false;
        let three = vec![
            replica("chat", false, 0.0),
            replica("chat-s2", true, 0.0),
            replica("chat-s3", true, 0.0),
        ];
        assert!(
            s.tick(0, false, &model(three.clone(), 0.3), &none)
                .is_empty()
        );
        // Busy for a moment: the idle period starts again.
        assert!(
            s.tick(2_000, false, &model(three.clone(), 0.7), &none)
                .is_empty()
        );
        assert!(
            s.tick(4_000, false, &model(three.clone(), 0.3), &none)
                .is_empty()
        );
        let out = s.tick(7_000, false, &model(three.clone(), 0.3), &none);
        assert!(
            matches!(&out[..], [Scale::Down { workload, .. }] if workload == "chat-s3"),
            "{out:?}"
        );
        let two = three[..2].to_vec();
        assert!(
            s.tick(8_000, false, &model(two.clone(), 0.3), &none)
                .is_empty()
        );
        let out = s.tick(10_000, false, &model(two, 0.3), &none);
        assert!(matches!(&out[..], [Scale::Down { workload, .. }] if workload == "chat-s2"));
        let one = vec![replica("chat", false, 0.0)];
        assert!(s.tick(99_000, false, &model(one, 0.0), &none).is_empty());
        // A GPU that reports nothing is not idle.
        let mut s = Scaler::new(cfg(), 0.8);
        let mut m = model(
            vec![replica("chat", false, 0.0), replica("chat-s2", true, 0.0)],
            0.1,
        );
        m[0].gpu_utilisation[1] = None;
        s.tick(0, false, &m, &none);
        assert!(s.tick(9_000, false, &m, &none).is_empty());
    }

    #[test]
    fn copies_are_named_within_a_dns_label() {
        assert_eq!(replica_name("chat", 2), "chat-s2");
        assert_eq!(replica_name("chat-s2", 3), "chat-s3");
        let long = "a".repeat(63);
        let n = replica_name(&long, 12);
        assert_eq!(n.len(), 63);
        assert!(n.ends_with("-s12"));
        assert!(ScaleConfig::default().validate().is_ok());
        let bad = ScaleConfig {
            idle_utilisation: 1.0,
            ..ScaleConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "scale.idle_utilisation");
    }
}
