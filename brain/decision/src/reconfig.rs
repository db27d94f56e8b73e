//! The control loop's slow knob: MPS reconfiguration through the seed's
//! safe flow, pure. MPS cannot change a running client's share, so a new
//! share is a new replica, and traffic moves to it step by step:
//!
//! 1. **gate** — the node's safety gate (the core's: request rate, error
//!    rate, nothing important queued; or a maintenance window);
//! 2. **shadow** — a replica with the new share is placed (by the core,
//!    wherever it fits directly) and started; it takes no traffic yet;
//! 3. **validate** — it must stay healthy for `validate_ms`;
//! 4. **canary** — `canary_fraction` of the workload's traffic for
//!    `canary_ms`, then `migrate_steps` steps of `migrate_step_ms` to all
//!    of it (**migrate**); a shadow that is worse than the old replica (p99
//!    over `1 + worse` × the old's, or more errors) is rolled back;
//! 5. **drain** — the old replica takes no new requests; those it holds
//!    finish;
//! 6. **apply** — the new configuration is the workload's (the core
//!    commits the new share; the old replica's MPS share is free);
//! 7. **cleanup** — the old replica stops; the routing overrides go.
//!
//! Each step has a timeout: past it the reconfiguration is aborted and
//! rolled back (the old replica takes all traffic again, the shadow is
//! removed) and an alert raised. Until **apply** the old replica is the
//! workload's placement, so a rollback is always possible; after it, only
//! cleanup remains, so a brain restarted mid-flow rolls back what had not
//! reached apply and finishes what had ([`Reconfigurer::restore`]).
//!
//! **Triggers**, each held for `sustain_ms` before a plan: a latency-
//! sensitive workload whose reservation is pinned at its MPS ceiling
//! while its p99 is over the pressure threshold (it needs a bigger share:
//! `grow` × its share, on the class grid); or one whose observed prompts
//! classify it into another class than it was placed in (the class's share).
//!
//! **Breakers:** at most `max_per_node_hour` reconfigurations start per
//! node per hour; `failures_to_pause` consecutive failures, or a rise of
//! the workload's error rate over its rate at the gate by more than
//! `error_rise`, pause automatic reconfiguration (the operator's own pause,
//! [`Tick::pause`], resumed by an operator); an operator's pause holds
//! every reconfiguration where it is, its step's clock stopped.

use crate::workload::Invalid;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use utoipa::ToSchema;

const HOUR_MS: u64 = 3_600_000;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ReconfigConfig {
    /// Planning reconfigurations at all (off by default while the flow is
    /// new: `[reconfig] enabled = true`).
    pub enabled: bool,
    /// A trigger must hold this long (ms) before a plan.
    pub sustain_ms: u64,
    /// A pinned workload's new share: this × its share, on the grid.
    pub grow: f64,
    /// Requests with a known prompt length the reclassification needs.
    pub min_sized: u64,
    /// The shadow must stay healthy this long (ms) before its canary.
    pub validate_ms: u64,
    /// The fraction of traffic the canary takes…
    pub canary_fraction: f64,
    /// …for this long (ms)…
    pub canary_ms: u64,
    /// …then this many steps to all of it…
    pub migrate_steps: u32,
    /// …each this long (ms).
    pub migrate_step_ms: u64,
    /// The longest the gate may stay shut before the plan is dropped (ms).
    pub gate_timeout_ms: u64,
    /// The longest a shadow may take to be ready, and the old replica to
    /// drain or stop (ms).
    pub step_timeout_ms: u64,
    /// The shadow is worse when its p99 exceeds (1 + this) × the old's.
    pub worse: f64,
    /// Requests each side needs before their latencies are compared.
    pub min_requests: u64,
    /// Reconfigurations started per node per hour at most.
    pub max_per_node_hour: u32,
    /// A shadow serves on its workload's port plus this (minus, where that
    /// would pass 65535), so that both configurations serve side by side.
    pub port_offset: u16,
    /// Consecutive failures that pause automatic reconfiguration.
    pub failures_to_pause: u32,
    /// An error-rate rise (0–1) over the rate at the gate that pauses it.
    pub error_rise: f64,
    /// A rebalance is planned when the nodes' efficiencies (the share of
    /// their GPUs in use that is placed) differ by more than this fraction
    /// of the best.
    pub rebalance_spread: f64,
}

impl Default for ReconfigConfig {
    fn default() -> ReconfigConfig {
        ReconfigConfig {
            enabled: false,
            sustain_ms: 10_000,
            grow: 1.5,
            min_sized: 20,
            validate_ms: 5_000,
            canary_fraction: 0.1,
            canary_ms: 300_000,
            migrate_steps: 3,
            migrate_step_ms: 30_000,
            gate_timeout_ms: 600_000,
            step_timeout_ms: 120_000,
            worse: 0.2,
            min_requests: 5,
            max_per_node_hour: 3,
            failures_to_pause: 2,
            error_rise: 0.05,
            port_offset: 1_000,
            rebalance_spread: 0.2,
        }
    }
}

impl ReconfigConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        let bad = |k: &str, why: &str| Err(Invalid::new(&format!("reconfig.{k}"), why));
        if !(self.canary_fraction > 0.0 && self.canary_fraction < 1.0) {
            return bad("canary_fraction", "must be above 0 and below 1");
        }
        if !(self.grow > 1.0 && self.grow <= 4.0) {
            return bad("grow", "must be above 1 and at most 4");
        }
        if !(self.worse > 0.0 && self.worse <= 10.0) {
            return bad("worse", "must be above 0 and at most 10");
        }
        if !(self.error_rise > 0.0 && self.error_rise < 1.0) {
            return bad("error_rise", "must be above 0 and below 1");
        }
        if !(self.rebalance_spread > 0.0 && self.rebalance_spread < 1.0) {
            return bad("rebalance_spread", "must be above 0 and below 1");
        }
        if !(1..=20).contains(&self.migrate_steps) {
            return bad("migrate_steps", "must be 1 to 20");
        }
        if self.max_per_node_hour == 0 {
            return bad("max_per_node_hour", "must be above 0");
        }
        if self.port_offset == 0 {
            return bad("port_offset", "must be above 0");
        }
        if self.failures_to_pause == 0 {
            return bad("failures_to_pause", "must be above 0");
        }
        for (k, v) in [
            ("sustain_ms", self.sustain_ms),
            ("canary_ms", self.canary_ms),
            ("migrate_step_ms", self.migrate_step_ms),
            ("gate_timeout_ms", self.gate_timeout_ms),
            ("step_timeout_ms", self.step_timeout_ms),
        ] {
            if v == 0 {
                return bad(k, "must be above 0");
            }
        }
        Ok(())
    }
}

/// Where a reconfiguration stands; `Done` once it ended (see its outcome).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Gate,
    Shadow,
    Validate,
    Canary,
    Migrate,
    Drain,
    Apply,
    Cleanup,
    Done,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Gate => "gate",
            Step::Shadow => "shadow",
            Step::Validate => "validate",
            Step::Canary => "canary",
            Step::Migrate => "migrate",
            Step::Drain => "drain",
            Step::Apply => "apply",
            Step::Cleanup => "cleanup",
            Step::Done => "done",
        }
    }
}

/// How a reconfiguration ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The new configuration serves.
    Completed,
    /// The shadow failed or was worse: the old configuration serves.
    RolledBack,
    /// A step timed out (or the gate never opened): the old configuration
    /// serves, and an alert was raised.
    Aborted,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Completed, Outcome::RolledBack, Outcome::Aborted];
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::RolledBack => "rolled_back",
            Outcome::Aborted => "aborted",
        }
    }
}

/// One reconfiguration, as the audit trail keeps it (a restart restores it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Reconfig {
    pub id: u64,
    /// The workload (its placement keeps the name throughout).
    pub workload: String,
    pub node: String,
    pub from_share: u32,
    pub to_share: u32,
    /// The replica serving the workload when it was planned (the old
    /// configuration's).
    pub old_replica: String,
    /// The shadow's placement name.
    pub shadow: String,
    /// A rebalance: the same share, on another GPU that holds work.
    #[serde(default)]
    pub consolidate: bool,
    /// Why it was planned.
    pub reason: String,
    pub started_ms: u64,
    pub step: Step,
    /// When the step began (its clock; moved on while paused).
    pub since_ms: u64,
    /// The traffic the shadow takes (0–1).
    pub fraction: f64,
    /// The workload's error rate at the gate.
    pub baseline_error_rate: Option<f64>,
    pub outcome: Option<Outcome>,
    /// How it ended, in words.
    pub ended: Option<String>,
}

/// What a replica is doing, as the loop sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Serving {
    /// Its placement exists and its replica answers `/health`.
    pub placed: bool,
    pub ready: bool,
    /// It exited (how), or its agent reports it no more.
    pub exited: Option<String>,
    /// Requests finished and failed over the horizon, with their p99 (ms).
    pub requests: u64,
    pub errors: u64,
    pub p99_ms: Option<f64>,
    /// Requests it holds now.
    pub in_flight: u64,
}

impl Serving {
    fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors as f64 / self.requests as f64)
    }
}

/// An in-flight reconfiguration's evidence this tick.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    /// The node's safety gate: `None` open, else why it is shut.
    pub gate: Option<String>,
    /// The workload's SLA, if it has one.
    pub sla_ms: Option<u32>,
    pub old: Serving,
    pub shadow: Serving,
}

/// A workload the loop might reconfigure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub workload: String,
    /// The id its replica runs under.
    pub replica: String,
    pub node: String,
    pub share_pct: u32,
    /// Its reservation is at its MPS ceiling while its p99 is pressed.
    pub pinned_at_ceiling: bool,
    /// The share its observed prompts classify it to, with how many
    /// requests that rests on and their mean prompt (tokens).
    pub observed: Option<Observed>,
    /// Its p99 and SLA, for the reason.
    pub p99_ms: Option<f64>,
    pub sla_ms: Option<u32>,
    /// How full its GPU is (%).
    #[serde(default)]
    pub gpu_used_pct: u32,
    /// Where a rebalance could move it now (another GPU holding work, at
    /// least as full as its own), in words; `None`: nowhere.
    #[serde(default)]
    pub rebalance_to: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    pub share_pct: u32,
    pub class: String,
    pub sized: u64,
    pub prompt_tokens: f64,
}

/// What one tick of the reconfigurer sees.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tick {
    pub now_ms: u64,
    /// Automatic reconfiguration is paused (an operator, or a breaker):
    /// nothing starts, nothing moves on.
    pub pause: bool,
    /// Why new ones may not start though (the core's breaker tripped).
    pub blocked: Option<String>,
    pub candidates: Vec<Candidate>,
    /// The share grid new shares round up to (empty: exact).
    pub grid: Vec<u32>,
    /// Per in-flight reconfiguration (by id).
    pub progress: BTreeMap<u64, Progress>,
    /// Each node holding work: the share of its GPUs in use that is
    /// placed (0–1).
    #[serde(default)]
    pub efficiency: BTreeMap<String, f64>,
}

/// What the executor must do for a step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "act", rename_all = "snake_case")]
pub enum Act {
    /// Nothing to carry out: the step's record only.
    Record,
    /// Place and start the shadow (`to_share`).
    PlaceShadow,
    /// Route `fraction` of the workload's traffic to the shadow.
    Route,
    /// Make the shadow the workload's placement with the new share; the
    /// old replica stops.
    Apply,
    /// Clear the routing overrides.
    Cleanup,
    /// The old replica takes all traffic again; the shadow is removed.
    RollBack,
    /// Pause automatic reconfiguration (a breaker).
    Pause,
}

/// A step taken: the reconfiguration as it now stands, what to carry out,
/// and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Change {
    pub at_ms: u64,
    pub reconfig: Reconfig,
    pub act: Act,
    pub reason: String,
    /// What it rests on (absent for a plan and a pause).
    pub evidence: Option<Progress>,
    /// An alert goes with it (a timeout, a breaker).
    pub alert: Option<String>,
}

/// The reconfigurer's state: the reconfigurations in flight, the breakers'
/// counts and the triggers' timers.
#[derive(Clone, Debug, Default)]
pub struct Reconfigurer {
    cfg: ReconfigConfig,
    inflight: BTreeMap<u64, Reconfig>,
    next_id: u64,
    starts: BTreeMap<String, VecDeque<u64>>,
    failures: u32,
    /// Per workload: since when a trigger has held, for which share.
    held: BTreeMap<String, (u64, u32)>,
    /// Resumed after a restart: roll these back at the next tick.
    restored: Vec<u64>,
    /// The last tick's clock (a pause stops the steps' clocks).
    last_ms: Option<u64>,
}

fn round_share(grid: &[u32], pct: u32) -> u32 {
    grid.iter()
        .copied()
        .find(|&g| g >= pct)
        .unwrap_or(pct.min(100))
}

impl Reconfigurer {
    pub fn new(cfg: ReconfigConfig) -> Reconfigurer {
        Reconfigurer {
            cfg,
            next_id: 1,
            ..Reconfigurer::default()
        }
    }

    pub fn config(&self) -> &ReconfigConfig {
        &self.cfg
    }

    pub fn inflight(&self) -> impl Iterator<Item = &Reconfig> {
        self.inflight.values()
    }

    /// Takes back a reconfiguration the audit trail recorded (a restart):
    /// an ended one counts for the breakers; one in flight that had not
    /// reached apply is rolled back at the next tick, one past it finishes.
    pub fn restore(&mut self, r: Reconfig) {
        if r.id == 0 {
            // A refusal: nothing started.
            return;
        }
        self.next_id = self.next_id.max(r.id + 1);
        self.starts
            .entry(r.node.clone())
            .or_default()
            .push_back(r.started_ms);
        match r.outcome {
            Some(Outcome::Completed) => self.failures = 0,
            Some(_) => self.failures += 1,
            None => {
                if r.step < Step::Apply {
                    self.restored.push(r.id);
                }
                self.inflight.insert(r.id, r);
            }
        }
    }

    /// Whether a workload is being reconfigured (as the old or the shadow).
    pub fn involves(&self, name: &str) -> bool {
        self.inflight
            .values()
            .any(|r| r.workload == name || r.shadow == name)
    }

    /// One tick: the steps every reconfiguration takes, then the new plans.
    pub fn tick(&mut self, t: &Tick) -> Vec<Change> {
        let mut out = Vec::new();
        let now = t.now_ms;
        let since_last = self.last_ms.map_or(0, |l| now.saturating_sub(l));
        self.last_ms = Some(now);
        for id in std::mem::take(&mut self.restored) {
            if let Some(mut r) = self.inflight.remove(&id) {
                let why = format!(
                    "the brain restarted during {}: rolled back, the old configuration serves",
                    r.step.name()
                );
                self.end(&mut r, now, Outcome::RolledBack, &why);
                out.push(change(now, &r, Act::RollBack, why, None, None));
            }
        }
        let ids: Vec<u64> = self.inflight.keys().copied().collect();
        for id in ids {
            let Some(mut r) = self.inflight.remove(&id) else {
                continue;
            };
            if t.pause {
                // Held where it is: its step's clock does not run.
                r.since_ms = r.since_ms.saturating_add(since_last).min(now);
                self.inflight.insert(id, r);
                continue;
            }
            let p = t.progress.get(&id).cloned().unwrap_or(Progress {
                gate: Some("no evidence".into()),
                sla_ms: None,
                old: Serving::default(),
                shadow: Serving::default(),
            });
            self.advance(&mut r, now, &p, &mut out);
            if r.outcome.is_none() {
                self.inflight.insert(id, r);
            }
        }
        if !t.pause && t.blocked.is_none() && self.cfg.enabled {
            self.plan(t, &mut out);
        }
        if self.failures >= self.cfg.failures_to_pause && !t.pause {
            let n = self.failures;
            self.failures = 0;
            out.push(pause(
                now,
                format!("{n} reconfigurations in a row failed: automatic reconfiguration paused"),
            ));
        }
        out
    }

    fn end(&mut self, r: &mut Reconfig, now: u64, o: Outcome, why: &str) {
        r.step = Step::Done;
        r.since_ms = now;
        r.outcome = Some(o);
        r.ended = Some(why.to_string());
        if o == Outcome::Completed {
            self.failures = 0;
        } else {
            self.failures += 1;
        }
    }

    fn to(r: &mut Reconfig, step: Step, now: u64) {
        r.step = step;
        r.since_ms = now;
    }

    fn advance(&mut self, r: &mut Reconfig, now: u64, p: &Progress, out: &mut Vec<Change>) {
        let cfg = self.cfg.clone();
        let age = now.saturating_sub(r.since_ms);
        let ev = Some(p.clone());
        let fail =
            |me: &mut Self, r: &mut Reconfig, o: Outcome, why: String, out: &mut Vec<Change>| {
                me.end(r, now, o, &why);
                let alert = (o == Outcome::Aborted).then(|| why.clone());
                out.push(change(now, r, Act::RollBack, why, Some(p.clone()), alert));
            };
        // The shadow dying is a failure at any step before apply.
        if (Step::Validate..Step::Apply).contains(&r.step)
            && let Some(how) = &p.shadow.exited
        {
            let why = format!("the shadow {} stopped ({how}): rolled back", r.shadow);
            return fail(self, r, Outcome::RolledBack, why, out);
        }
        if (Step::Canary..Step::Apply).contains(&r.step) {
            if let Some(why) = self.worse(p) {
                return fail(
                    self,
                    r,
                    Outcome::RolledBack,
                    format!("{why}: rolled back"),
                    out,
                );
            }
            let both = Serving {
                requests: p.old.requests + p.shadow.requests,
                errors: p.old.errors + p.shadow.errors,
                ..Serving::default()
            };
            if let (Some(now_rate), Some(base)) = (both.error_rate(), r.baseline_error_rate)
                && now_rate - base > cfg.error_rise
            {
                let why = format!(
                    "{}'s error rate rose from {:.1}% to {:.1}% (more than {:.0} points): rolled back, automatic reconfiguration paused",
                    r.workload,
                    base * 100.0,
                    now_rate * 100.0,
                    cfg.error_rise * 100.0
                );
                fail(self, r, Outcome::RolledBack, why.clone(), out);
                out.push(pause(now, why));
                return;
            }
        }
        match r.step {
            Step::Gate => match &p.gate {
                None => {
                    r.baseline_error_rate = p.old.error_rate().or(Some(0.0));
                    Self::to(r, Step::Shadow, now);
                    let why = format!(
                        "the gate is open on {}: a shadow of {} with {}% (now {}%)",
                        r.node, r.workload, r.to_share, r.from_share
                    );
                    out.push(change(now, r, Act::PlaceShadow, why, ev, None));
                }
                Some(shut) if age > cfg.gate_timeout_ms => {
                    let why = format!(
                        "the gate stayed shut for {} ms ({shut}): abandoned",
                        cfg.gate_timeout_ms
                    );
                    self.end(r, now, Outcome::Aborted, &why);
                    out.push(change(now, r, Act::Record, why.clone(), ev, Some(why)));
                }
                Some(_) => {}
            },
            Step::Shadow => {
                if !p.shadow.placed {
                    let why = format!("no room for a shadow with {}%: rolled back", r.to_share);
                    fail(self, r, Outcome::RolledBack, why, out);
                } else if let Some(how) = &p.shadow.exited {
                    let why = format!("the shadow {} stopped ({how}): rolled back", r.shadow);
                    fail(self, r, Outcome::RolledBack, why, out);
                } else if p.shadow.ready {
                    Self::to(r, Step::Validate, now);
                    let why = format!("the shadow {} is ready", r.shadow);
                    out.push(change(now, r, Act::Record, why, ev, None));
                } else if age > cfg.step_timeout_ms {
                    let why = format!(
                        "the shadow {} was not ready within {} ms: aborted",
                        r.shadow, cfg.step_timeout_ms
                    );
                    fail(self, r, Outcome::Aborted, why, out);
                }
            }
            Step::Validate => {
                if !p.shadow.ready {
                    let why = format!("the shadow {} is no longer healthy: rolled back", r.shadow);
                    fail(self, r, Outcome::RolledBack, why, out);
                } else if age >= cfg.validate_ms {
                    Self::to(r, Step::Canary, now);
                    r.fraction = cfg.canary_fraction;
                    let why = format!(
                        "the shadow stayed healthy for {} ms: canary, {:.0}% of the traffic for {} ms",
                        cfg.validate_ms,
                        r.fraction * 100.0,
                        cfg.canary_ms
                    );
                    out.push(change(now, r, Act::Route, why, ev, None));
                }
            }
            Step::Canary if age >= cfg.canary_ms => {
                if p.shadow.requests == 0 && p.old.requests > 0 {
                    let why = "the canary served nothing while the old replica did: not known to be better, rolled back".to_string();
                    return fail(self, r, Outcome::RolledBack, why, out);
                }
                Self::to(r, Step::Migrate, now);
                r.fraction = self.next_fraction(r.fraction);
                let why = format!(
                    "the canary held for {} ms (shadow p99 {}, old p99 {}): migrating, {:.0}% to the shadow",
                    cfg.canary_ms,
                    ms(p.shadow.p99_ms),
                    ms(p.old.p99_ms),
                    r.fraction * 100.0
                );
                out.push(change(now, r, Act::Route, why, ev, None));
            }
            Step::Migrate if age >= cfg.migrate_step_ms => {
                if r.fraction >= 1.0 {
                    Self::to(r, Step::Drain, now);
                    let why = format!(
                        "all traffic on the shadow: the old replica drains ({} in flight)",
                        p.old.in_flight
                    );
                    out.push(change(now, r, Act::Record, why, ev, None));
                } else {
                    r.since_ms = now;
                    r.fraction = self.next_fraction(r.fraction);
                    let why = format!("migrating: {:.0}% to the shadow", r.fraction * 100.0);
                    out.push(change(now, r, Act::Route, why, ev, None));
                }
            }
            Step::Drain => {
                if p.old.in_flight == 0 {
                    Self::to(r, Step::Apply, now);
                    let why = if r.consolidate {
                        format!(
                            "the old replica holds nothing: {} runs where its shadow does, with its {}%",
                            r.workload, r.to_share
                        )
                    } else {
                        format!(
                            "the old replica holds nothing: {} runs with {}% (was {}%)",
                            r.workload, r.to_share, r.from_share
                        )
                    };
                    out.push(change(now, r, Act::Apply, why, ev, None));
                } else if age > cfg.step_timeout_ms {
                    let why = format!(
                        "the old replica still held {} requests after {} ms: aborted",
                        p.old.in_flight, cfg.step_timeout_ms
                    );
                    fail(self, r, Outcome::Aborted, why, out);
                }
            }
            Step::Apply => {
                Self::to(r, Step::Cleanup, now);
                let why = "the old replica stops; routing overrides cleared".to_string();
                out.push(change(now, r, Act::Cleanup, why, ev, None));
            }
            Step::Cleanup => {
                let gone = p.old.exited.is_some();
                if gone || age > cfg.step_timeout_ms {
                    let why = if gone {
                        format!("{} serves with {}%: completed", r.workload, r.to_share)
                    } else {
                        format!(
                            "{} serves with {}%; the old replica was still not reported stopped after {} ms",
                            r.workload, r.to_share, cfg.step_timeout_ms
                        )
                    };
                    let alert = (!gone).then(|| why.clone());
                    self.end(r, now, Outcome::Completed, &why);
                    out.push(change(now, r, Act::Record, why, ev, alert));
                }
            }
            Step::Canary | Step::Migrate | Step::Done => {}
        }
    }

    /// Whether the shadow does worse than the old replica.
    fn worse(&self, p: &Progress) -> Option<String> {
        let (o, s) = (&p.old, &p.shadow);
        let n = self.cfg.min_requests;
        if s.requests < n {
            return None;
        }
        if let (Some(se), Some(oe)) = (s.error_rate(), o.error_rate().or(Some(0.0)))
            && se > oe + 0.01
        {
            return Some(format!(
                "the shadow fails {:.1}% of its requests, the old replica {:.1}%",
                se * 100.0,
                oe * 100.0
            ));
        }
        // Slower than the old replica, and not comfortably inside the SLA
        // (under half of it): the old replica's window may still hold
        // lighter requests than the shadow ever saw.
        let comfortable = |p99: f64| p.sla_ms.is_some_and(|s| p99 < 0.5 * s as f64);
        if o.requests >= n
            && let (Some(sp), Some(op)) = (s.p99_ms, o.p99_ms)
            && sp > (1.0 + self.cfg.worse) * op
            && !comfortable(sp)
        {
            return Some(format!(
                "the shadow's p99 {sp:.0} ms is over {:.2} × the old replica's {op:.0} ms",
                1.0 + self.cfg.worse
            ));
        }
        None
    }

    fn next_fraction(&self, f: f64) -> f64 {
        let step = (1.0 - self.cfg.canary_fraction) / self.cfg.migrate_steps as f64;
        ((f + step) * 1000.0).round().min(1000.0) / 1000.0
    }

    /// New plans from the triggers that have held long enough.
    fn plan(&mut self, t: &Tick, out: &mut Vec<Change>) {
        let now = t.now_ms;
        let cfg = self.cfg.clone();
        let mover = self.rebalance(t);
        let mut wanted = BTreeMap::new();
        for c in &t.candidates {
            if self.involves(&c.workload) {
                continue;
            }
            let mut consolidate = false;
            let (share, why) = if let Some(o) = c
                .observed
                .as_ref()
                .filter(|o| o.sized >= cfg.min_sized && o.share_pct != c.share_pct)
            {
                (
                    o.share_pct,
                    format!(
                        "reclassified: its prompts average {:.0} tokens over {} requests, class {} ({}%), placed with {}%",
                        o.prompt_tokens, o.sized, o.class, o.share_pct, c.share_pct
                    ),
                )
            } else if c.pinned_at_ceiling && c.share_pct < 100 {
                let grown = (c.share_pct as f64 * cfg.grow).ceil() as u32;
                (
                    round_share(&t.grid, grown.max(c.share_pct + 1)),
                    format!(
                        "its budget is pinned at its MPS share {}% while its p99 {} is over the pressure threshold of SLA {}",
                        c.share_pct,
                        ms(c.p99_ms),
                        c.sla_ms.map_or("-".into(), |s| format!("{s} ms"))
                    ),
                )
            } else if let Some((_, why)) = mover.as_ref().filter(|(w, _)| *w == c.workload) {
                consolidate = true;
                (c.share_pct, why.clone())
            } else {
                continue;
            };
            let since = match self.held.get(&c.workload) {
                Some(&(since, s)) if s == share => since,
                _ => now,
            };
            wanted.insert(c.workload.clone(), (since, share));
            if now < since + cfg.sustain_ms {
                continue;
            }
            let starts = self.starts.entry(c.node.clone()).or_default();
            while starts.front().is_some_and(|&s| s + HOUR_MS <= now) {
                starts.pop_front();
            }
            if starts.len() as u32 >= cfg.max_per_node_hour {
                // Refused once per trigger: it is held again from now.
                wanted.insert(c.workload.clone(), (now, share));
                let why = format!(
                    "{}: not reconfigured ({why}): {} reconfigurations started on {} within the hour, the most allowed",
                    c.workload,
                    starts.len(),
                    c.node
                );
                let mut r = self.draft(c, share, consolidate, now, why.clone());
                r.id = 0;
                r.step = Step::Done;
                r.outcome = None;
                r.ended = Some(why.clone());
                out.push(change(now, &r, Act::Record, why.clone(), None, Some(why)));
                continue;
            }
            starts.push_back(now);
            let r = self.draft(c, share, consolidate, now, why.clone());
            self.next_id += 1;
            wanted.remove(&c.workload);
            let text = if consolidate {
                format!(
                    "{}: rebalance planned, its {}% to {} ({why})",
                    c.workload,
                    share,
                    c.rebalance_to.as_deref().unwrap_or("another GPU")
                )
            } else {
                format!(
                    "{}: reconfiguration planned, {}% → {}% ({why})",
                    c.workload, c.share_pct, share
                )
            };
            out.push(change(now, &r, Act::Record, text, None, None));
            self.inflight.insert(r.id, r);
        }
        self.held = wanted;
    }

    /// The rebalance trigger: when the nodes' efficiencies spread by more
    /// than `rebalance_spread` of the best, the workload to move off the
    /// least efficient node — one a rebalance can move, on its emptiest
    /// GPU, the smallest share first (so the GPU it leaves empties
    /// soonest) — and why; none while another rebalance is in flight.
    /// Each move goes to a GPU at least as full as the one it leaves, so
    /// rebalances end.
    fn rebalance(&self, t: &Tick) -> Option<(String, String)> {
        // One at a time: the efficiencies change only once it applies.
        if self.inflight.values().any(|r| r.consolidate) {
            return None;
        }
        let cmp = |a: &(&String, &f64), b: &(&String, &f64)| a.1.total_cmp(b.1);
        let (best_node, &best) = t.efficiency.iter().max_by(cmp)?;
        let (low_node, &low) = t.efficiency.iter().min_by(cmp)?;
        let spread = if best > 0.0 { (best - low) / best } else { 0.0 };
        if spread <= self.cfg.rebalance_spread {
            return None;
        }
        let c = t
            .candidates
            .iter()
            .filter(|c| &c.node == low_node && c.rebalance_to.is_some())
            .filter(|c| !self.involves(&c.workload))
            .min_by_key(|c| (c.gpu_used_pct, c.share_pct, c.workload.clone()))?;
        Some((
            c.workload.clone(),
            format!(
                "rebalance: {low_node}'s GPUs in use are {:.0}% placed against {:.0}% on {best_node}, a spread of {:.0}% (over {:.0}%); its GPU is {}% placed",
                low * 100.0,
                best * 100.0,
                spread * 100.0,
                self.cfg.rebalance_spread * 100.0,
                c.gpu_used_pct
            ),
        ))
    }

    fn draft(
        &self,
        c: &Candidate,
        share: u32,
        consolidate: bool,
        now: u64,
        reason: String,
    ) -> Reconfig {
        Reconfig {
            id: self.next_id,
            workload: c.workload.clone(),
            node: c.node.clone(),
            from_share: c.share_pct,
            to_share: share,
            old_replica: c.replica.clone(),
            shadow: shadow_name(&c.workload, self.next_id),
            consolidate,
            reason,
            started_ms: now,
            step: Step::Gate,
            since_ms: now,
            fraction: 0.0,
            baseline_error_rate: None,
            outcome: None,
            ended: None,
        }
    }
}

/// One recorded round of the reconfigurer: what it saw and what it did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recorded {
    pub tick: Tick,
    pub changes: Vec<Change>,
}

/// Where a replay first differed from the record.
#[derive(Clone, Debug, PartialEq)]
pub struct Divergence {
    pub round: usize,
    pub recorded: Vec<Change>,
    pub replayed: Vec<Change>,
}

/// Runs a fresh reconfigurer with `cfg`, given back the reconfigurations
/// `restored` from the trail as the recorded one was, over its recorded
/// rounds; the rounds and changes replayed, or the first round whose
/// changes differ.
pub fn replay(
    cfg: ReconfigConfig,
    restored: Vec<Reconfig>,
    rounds: impl IntoIterator<Item = Recorded>,
) -> Result<(usize, usize), Box<Divergence>> {
    let mut r = Reconfigurer::new(cfg);
    for x in restored {
        r.restore(x);
    }
    let (mut n, mut changed) = (0, 0);
    for (i, rec) in rounds.into_iter().enumerate() {
        let got = r.tick(&rec.tick);
        if got != rec.changes {
            return Err(Box::new(Divergence {
                round: i,
                recorded: rec.changes,
                replayed: got,
            }));
        }
        n += 1;
        changed += got.len();
    }
    Ok((n, changed))
}

/// A shadow's name: the workload's, with the reconfiguration's number
/// (kept a DNS label: the workload's name is cut to fit).
pub fn shadow_name(workload: &str, id: u64) -> String {
    let tail = format!("-r{id}");
    let keep = 63usize.saturating_sub(tail.len());
    let head: String = workload.chars().take(keep).collect();
    format!("{}{tail}", head.trim_end_matches('-'))
}

fn ms(v: Option<f64>) -> String {
    v.map_or("unknown".into(), |v| format!("{v:.0} ms"))
}

fn change(
    at_ms: u64,
    r: &Reconfig,
    act: Act,
    reason: String,
    evidence: Option<Progress>,
    alert: Option<String>,
) -> Change {
    Change {
        at_ms,
        reconfig: r.clone(),
        act,
        reason,
        evidence,
        alert,
    }
}

fn pause(now: u64, why: String) -> Change {
    Change {
        at_ms: now,
        reconfig: Reconfig {
            id: 0,
            workload: String::new(),
            node: String::new(),
            from_share: 0,
            to_share: 0,
            old_replica: String::new(),
            shadow: String::new(),
            consolidate: false,
            reason: why.clone(),
            started_ms: now,
            step: Step::Done,
            since_ms: now,
            fraction: 0.0,
            baseline_error_rate: None,
            outcome: None,
            ended: None,
        },
        act: Act::Pause,
        reason: why.clone(),
        evidence: None,
        alert: Some(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ReconfigConfig {
        ReconfigConfig {
            enabled: true,
            sustain_ms: 1_000,
            validate_ms: 500,
            canary_ms: 2_000,
            migrate_steps: 3,
            migrate_step_ms: 1_000,
            step_timeout_ms: 3_000,
            gate_timeout_ms: 5_000,
            ..ReconfigConfig::default()
        }
    }

    fn reclassified(w: &str, node: &str) -> Candidate {
        Candidate {
            workload: w.into(),
            replica: w.into(),
            node: node.into(),
            share_pct: 20,
            pinned_at_ceiling: false,
            observed: Some(Observed {
                share_pct: 40,
                class: "medium".into(),
                sized: 100,
                prompt_tokens: 4_000.0,
            }),
            p99_ms: Some(900.0),
            sla_ms: Some(1_000),
            gpu_used_pct: 20,
            rebalance_to: None,
        }
    }

    fn serving(ready: bool, requests: u64, errors: u64, p99: f64, in_flight: u64) -> Serving {
        Serving {
            placed: true,
            ready,
            exited: None,
            requests,
            errors,
            p99_ms: Some(p99),
            in_flight,
        }
    }

    fn healthy() -> Progress {
        Progress {
            gate: None,
            sla_ms: Some(1_000),
            old: serving(true, 100, 0, 800.0, 0),
            shadow: serving(true, 20, 0, 500.0, 0),
        }
    }

    fn tick(now: u64, cands: &[Candidate], progress: &BTreeMap<u64, Progress>) -> Tick {
        Tick {
            now_ms: now,
            pause: false,
            blocked: None,
            candidates: cands.to_vec(),
            grid: vec![20, 40, 60, 80, 100],
            progress: progress.clone(),
            efficiency: BTreeMap::new(),
        }
    }

    /// Runs `r` every 100 ms from `from` to `to` with `p` for every
    /// reconfiguration, collecting the changes.
    fn run(
        r: &mut Reconfigurer,
        from: u64,
        to: u64,
        cands: &[Candidate],
        p: &Progress,
    ) -> Vec<Change> {
        run_with(r, from, to, cands, p, &BTreeMap::new())
    }

    /// [`run`], the nodes' efficiencies `eff` in every tick.
    fn run_with(
        r: &mut Reconfigurer,
        from: u64,
        to: u64,
        cands: &[Candidate],
        p: &Progress,
        eff: &BTreeMap<String, f64>,
    ) -> Vec<Change> {
        let mut out: Vec<Change> = Vec::new();
        let mut cands = cands.to_vec();
        let mut stopped: Vec<u64> = Vec::new();
        let mut t = from;
        while t <= to {
            let progress = r
                .inflight()
                .map(|x| {
                    let mut p = p.clone();
                    if stopped.contains(&x.id) {
                        p.old.placed = false;
                        p.old.exited = Some("exited".into());
                    }
                    (x.id, p)
                })
                .collect();
            let mut tk = tick(t, &cands, &progress);
            tk.efficiency = eff.clone();
            let now = r.tick(&tk);
            // Applied: the workload has its new share (the core's), and
            // the old replica stops.
            for c in now.iter().filter(|c| c.act == Act::Apply) {
                stopped.push(c.reconfig.id);
                for k in cands
                    .iter_mut()
                    .filter(|k| k.workload == c.reconfig.workload)
                {
                    k.share_pct = c.reconfig.to_share;
                }
            }
            out.extend(now);
            t += 100;
        }
        out
    }

    fn steps(changes: &[Change]) -> Vec<(&'static str, Act)> {
        changes
            .iter()
            .map(|c| (c.reconfig.step.name(), c.act.clone()))
            .collect()
    }

    #[test]
    fn a_reclassified_workload_goes_through_every_step_in_order() {
        let mut r = Reconfigurer::new(cfg());
        let c = [reclassified("chat", "n1")];
        // The trigger holds for sustain_ms before the plan.
        assert!(run(&mut r, 0, 900, &c, &healthy()).is_empty());
        let out = run(&mut r, 1_000, 20_000, &c, &healthy());
        let s = steps(&out);
        assert_eq!(
            s,
            vec![
                ("gate", Act::Record),
                ("shadow", Act::PlaceShadow),
                ("validate", Act::Record),
                ("canary", Act::Route),
                ("migrate", Act::Route),
                ("migrate", Act::Route),
                ("migrate", Act::Route),
                ("drain", Act::Record),
                ("apply", Act::Apply),
                ("cleanup", Act::Cleanup),
                ("done", Act::Record),
            ],
            "{out:#?}"
        );
        let fractions: Vec<f64> = out
            .iter()
            .filter(|c| c.act == Act::Route)
            .map(|c| c.reconfig.fraction)
            .collect();
        assert_eq!(fractions, vec![0.1, 0.4, 0.7, 1.0]);
        let last = &out.last().unwrap().reconfig;
        assert_eq!(last.outcome, Some(Outcome::Completed));
        assert_eq!((last.from_share, last.to_share), (20, 40));
        assert_eq!(last.shadow, "chat-r1");
        // The canary lasted canary_ms.
        let at = |step: &str| {
            out.iter()
                .find(|c| c.reconfig.step.name() == step)
                .unwrap()
                .at_ms
        };
        assert!(at("migrate") - at("canary") >= 2_000);
    }

    #[test]
    fn a_spread_of_efficiency_moves_the_least_efficient_nodes_emptiest_share() {
        let mut lone = reclassified("lone", "n1");
        (lone.observed, lone.gpu_used_pct) = (None, 20);
        lone.rebalance_to = Some("n2 GPU 0".into());
        let mut busier = lone.clone();
        (busier.workload, busier.replica, busier.gpu_used_pct) =
            ("busier".into(), "busier".into(), 40);
        let mut stuck = lone.clone();
        (stuck.workload, stuck.replica, stuck.gpu_used_pct) = ("stuck".into(), "stuck".into(), 0);
        stuck.rebalance_to = None;
        let mut elsewhere = lone.clone();
        (elsewhere.workload, elsewhere.replica, elsewhere.node) =
            ("elsewhere".into(), "elsewhere".into(), "n2".into());
        let c = [lone, busier, stuck, elsewhere];
        let eff = |a: f64, b: f64| BTreeMap::from([("n1".to_string(), a), ("n2".to_string(), b)]);
        // Within 20% of each other: nothing moves.
        let mut r = Reconfigurer::new(cfg());
        assert!(run_with(&mut r, 0, 3_000, &c, &healthy(), &eff(0.7, 0.8)).is_empty());
        // Apart: after sustain_ms, n1's share on its emptiest GPU that can
        // move goes through every step, its share kept.
        let mut r = Reconfigurer::new(cfg());
        let out = run_with(&mut r, 0, 20_000, &c, &healthy(), &eff(0.4, 0.8));
        let first = &out[0];
        assert_eq!(first.at_ms, 1_000);
        assert_eq!(first.reconfig.workload, "lone", "{}", first.reason);
        assert!(first.reconfig.consolidate);
        assert_eq!(
            (first.reconfig.from_share, first.reconfig.to_share),
            (20, 20)
        );
        assert!(first.reason.contains("to n2 GPU 0"), "{}", first.reason);
        assert!(first.reason.contains("spread of 50%"), "{}", first.reason);
        let s = steps(&out);
        assert_eq!(s[1], ("shadow", Act::PlaceShadow));
        assert!(s.contains(&("apply", Act::Apply)), "{s:?}");
        // Nothing else moves until it is done (then, the efficiencies
        // unchanged here, the next share on that GPU would).
        let done = s.iter().position(|x| x.0 == "done").unwrap();
        assert_eq!(s[done - 1], ("cleanup", Act::Cleanup), "{s:?}");
        assert!(out[..=done].iter().all(|c| c.reconfig.workload == "lone"));
        // No node to compare with: nothing.
        let mut r = Reconfigurer::new(cfg());
        let one = BTreeMap::from([("n1".to_string(), 0.3)]);
        assert!(run_with(&mut r, 0, 3_000, &c, &healthy(), &one).is_empty());
    }

    #[test]
    fn a_worse_shadow_is_rolled_back_and_a_late_one_aborted_with_an_alert() {
        let mut r = Reconfigurer::new(cfg());
        let c = [reclassified("chat", "n1")];
        let mut worse = healthy();
        worse.shadow.p99_ms = Some(1_500.0);
        let out = run(&mut r, 0, 10_000, &c, &worse);
        let back = out
            .iter()
            .find(|c| c.act == Act::RollBack)
            .expect("rolled back");
        assert_eq!(back.reconfig.outcome, Some(Outcome::RolledBack));
        assert!(back.reason.contains("p99"), "{}", back.reason);
        assert!(back.alert.is_none());
        // Rolled back during the canary: never applied.
        assert!(out.iter().all(|c| c.act != Act::Apply));

        let mut r = Reconfigurer::new(cfg());
        let mut late = healthy();
        late.shadow.ready = false;
        let out = run(&mut r, 0, 10_000, &c, &late);
        let ab = out
            .iter()
            .find(|c| c.act == Act::RollBack)
            .expect("aborted");
        assert_eq!(ab.reconfig.outcome, Some(Outcome::Aborted));
        assert!(
            ab.alert
                .as_deref()
                .unwrap()
                .contains("not ready within 3000 ms")
        );
        let placed = out
            .iter()
            .find(|c| c.act == Act::PlaceShadow)
            .unwrap()
            .at_ms;
        assert!(ab.at_ms > placed + 3_000 && ab.at_ms <= placed + 3_200);
    }

    #[test]
    fn the_fourth_on_a_node_within_the_hour_is_refused() {
        let mut r = Reconfigurer::new(cfg());
        let mut t = 0;
        for k in 0..3 {
            let c = [reclassified(&format!("w{k}"), "n1")];
            let out = run(&mut r, t, t + 20_000, &c, &healthy());
            assert!(
                out.iter()
                    .any(|c| c.reconfig.outcome == Some(Outcome::Completed))
            );
            t += 30_000;
        }
        let c = [reclassified("w3", "n1")];
        let out = run(&mut r, t, t + 5_000, &c, &healthy());
        assert!(out.iter().all(|c| c.act == Act::Record));
        let refused = &out[0];
        assert_eq!(refused.reconfig.id, 0);
        assert!(
            refused
                .reason
                .contains("3 reconfigurations started on n1 within the hour")
        );
        // Another node is not held back; the hour past, n1 is not either.
        let other = run(
            &mut r,
            t + 5_000,
            t + 7_000,
            &[reclassified("w3", "n2")],
            &healthy(),
        );
        assert!(other.iter().any(|c| c.act == Act::PlaceShadow));
        let later = run(
            &mut r,
            3_700_000,
            3_702_000,
            &[reclassified("w4", "n1")],
            &healthy(),
        );
        assert!(later.iter().any(|c| c.act == Act::PlaceShadow));
    }

    #[test]
    fn two_failures_in_a_row_pause_and_an_error_rise_pauses_at_once() {
        let mut r = Reconfigurer::new(cfg());
        let mut bad = healthy();
        bad.shadow.exited = Some("exit status 1".into());
        let a = run(&mut r, 0, 1_500, &[reclassified("a", "n1")], &bad);
        assert!(a.iter().any(|c| c.act == Act::RollBack));
        assert!(a.iter().all(|c| c.act != Act::Pause));
        let b = run(&mut r, 20_000, 30_000, &[reclassified("b", "n1")], &bad);
        let pause = b.iter().find(|c| c.act == Act::Pause).expect("paused");
        assert!(pause.reason.contains("2 reconfigurations in a row failed"));
        assert!(pause.alert.is_some());

        let mut r = Reconfigurer::new(cfg());
        let mut errs = healthy();
        // 7% of the old replica's and the shadow's requests fail now; the
        // gate saw none.
        let base = run(&mut r, 0, 3_000, &[reclassified("a", "n1")], &healthy());
        assert!(base.iter().any(|c| c.act == Act::Route));
        errs.old.errors = 8;
        errs.shadow.errors = 0;
        let out = run(&mut r, 3_100, 4_000, &[], &errs);
        let acts: Vec<Act> = out.iter().map(|c| c.act.clone()).collect();
        assert_eq!(acts, vec![Act::RollBack, Act::Pause], "{out:#?}");
        assert!(out[0].reason.contains("error rate rose from 0.0% to 6.7%"));
    }

    #[test]
    fn an_operator_pause_holds_everything_where_it_is() {
        let mut r = Reconfigurer::new(cfg());
        let c = [reclassified("chat", "n1")];
        let out = run(&mut r, 0, 2_600, &c, &healthy());
        assert_eq!(out.last().unwrap().reconfig.step, Step::Canary);
        let mut paused = 0;
        for t in (2_700..60_000).step_by(100) {
            let progress = r.inflight().map(|x| (x.id, healthy())).collect();
            let mut tk = tick(t, &[reclassified("other", "n2")], &progress);
            tk.pause = true;
            paused += r.tick(&tk).len();
        }
        assert_eq!(paused, 0, "nothing starts or moves on while paused");
        // Resumed: the canary still has the rest of its 2 s to run (it had
        // run 0.9 s), not less.
        let out = run(&mut r, 60_000, 60_800, &[], &healthy());
        assert!(out.is_empty(), "{out:#?}");
        let out = run(&mut r, 60_900, 63_000, &[], &healthy());
        assert_eq!(out[0].reconfig.step, Step::Migrate);
        assert!(out[0].at_ms <= 61_200, "{}", out[0].at_ms);
    }

    #[test]
    fn a_restart_rolls_back_before_apply_and_finishes_after_it() {
        let mut r = Reconfigurer::new(cfg());
        let out = run(&mut r, 0, 2_600, &[reclassified("chat", "n1")], &healthy());
        let canary = out.last().unwrap().reconfig.clone();
        assert_eq!(canary.step, Step::Canary);
        let mut fresh = Reconfigurer::new(cfg());
        fresh.restore(canary.clone());
        let out = fresh.tick(&tick(5_000, &[], &BTreeMap::new()));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].act, Act::RollBack);
        assert_eq!(out[0].reconfig.outcome, Some(Outcome::RolledBack));
        assert!(out[0].reason.contains("restarted during canary"));

        let mut applied = canary;
        applied.step = Step::Apply;
        let mut fresh = Reconfigurer::new(cfg());
        fresh.restore(applied);
        let mut p = healthy();
        p.old.placed = false;
        p.old.exited = Some("exited".into());
        let out = run(&mut fresh, 5_000, 5_200, &[], &p);
        assert_eq!(
            steps(&out),
            vec![("cleanup", Act::Cleanup), ("done", Act::Record)]
        );
        // Numbers go on after the restored one's.
        let next = run(
            &mut fresh,
            6_000,
            8_000,
            &[reclassified("b", "n1")],
            &healthy(),
        );
        assert_eq!(next[0].reconfig.id, 2);
    }
}
