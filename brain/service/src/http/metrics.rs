//! The brain's Prometheus metrics (text format, written by hand: counters,
//! gauges and two histograms).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use vagus_decision::{Core, Decision, Path};

const PATHS: [Path; 10] = Path::ALL;

/// Upper bounds (seconds) of the decision-time histogram.
const BUCKETS: [f64; 10] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.1,
];

#[derive(Default)]
pub struct Metrics {
    decisions: [AtomicU64; PATHS.len()],
    calls: AtomicU64,
    seconds_sum_ns: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    audited: AtomicU64,
    audit_failures: AtomicU64,
    /// Events recorded in the trail (MPS pool mismatches).
    events: AtomicU64,
    /// Answers by status class 2xx…5xx.
    answers: [AtomicU64; 4],
    /// The control loop's ticks, the time they took, and its actions.
    loop_ticks: AtomicU64,
    loop_ns: AtomicU64,
    loop_budgets: AtomicU64,
    /// Replicas the scaler added and removed.
    scaled_up: AtomicU64,
    scaled_down: AtomicU64,
    /// From the end of the window an action under pressure rests on to
    /// the action's command being issued.
    reaction: [AtomicU64; REACTION.len()],
    reaction_count: AtomicU64,
    reaction_sum_ms: AtomicU64,
    /// Reconfiguration steps taken, by step; ended ones, by outcome; those
    /// in flight.
    reconfig_steps: [AtomicU64; STEPS.len()],
    reconfig_outcomes: [AtomicU64; OUTCOMES.len()],
    reconfig_inflight: AtomicU64,
    /// By workload: requests the gateways answered that had a latency
    /// objective, and those that met it, since the brain started.
    slo: std::sync::Mutex<std::collections::BTreeMap<String, (u64, u64)>>,
}

const STEPS: [vagus_decision::reconfig::Step; 9] = {
    use vagus_decision::reconfig::Step::*;
    [
        Gate, Shadow, Validate, Canary, Migrate, Drain, Apply, Cleanup, Done,
    ]
};
const OUTCOMES: [vagus_decision::reconfig::Outcome; 3] = vagus_decision::reconfig::Outcome::ALL;

/// Upper bounds (seconds) of the loop's reaction-time histogram.
const REACTION: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5];

impl Metrics {
    pub(crate) fn decided(&self, took: Duration, ds: &[Decision]) {
        for d in ds {
            if let Some(i) = PATHS.iter().position(|p| *p == d.path) {
                self.decisions[i].fetch_add(1, Relaxed);
            }
        }
        self.calls.fetch_add(1, Relaxed);
        self.seconds_sum_ns
            .fetch_add(took.as_nanos() as u64, Relaxed);
        let s = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| s <= b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
    }

    /// A loop tick at `now_ms` (the brain's clock) that took `took`.
    pub(crate) fn looped(
        &self,
        took: Duration,
        actions: &[vagus_decision::control::Action],
        now_ms: u64,
    ) {
        self.loop_ticks.fetch_add(1, Relaxed);
        self.loop_ns.fetch_add(took.as_nanos() as u64, Relaxed);
        self.loop_budgets.fetch_add(actions.len() as u64, Relaxed);
        // One reaction per GPU acted on under pressure (its actions share
        // the window).
        let mut seen = std::collections::BTreeSet::new();
        for a in actions.iter().filter(|a| a.evidence.pressed) {
            if !seen.insert((&a.node, a.gpu)) {
                continue;
            }
            let ms = now_ms.saturating_sub(a.evidence.window_end_ms);
            let s = ms as f64 / 1000.0;
            if let Some(i) = REACTION.iter().position(|&b| s <= b) {
                self.reaction[i].fetch_add(1, Relaxed);
            }
            self.reaction_count.fetch_add(1, Relaxed);
            self.reaction_sum_ms.fetch_add(ms, Relaxed);
        }
    }

    pub(crate) fn audited(&self, rows: usize) {
        self.audited.fetch_add(rows as u64, Relaxed);
    }

    pub(crate) fn events(&self, rows: usize) {
        self.events.fetch_add(rows as u64, Relaxed);
    }

    pub(crate) fn audit_failed(&self) {
        self.audit_failures.fetch_add(1, Relaxed);
    }

    pub(crate) fn answered(&self, status: u16) {
        if let Some(c) = self.answers.get((status / 100).saturating_sub(2) as usize) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// A reconfiguration step taken (into `step`), the reconfiguration's
    /// outcome once it ended, and how many are in flight now.
    pub fn reconfigured(
        &self,
        step: vagus_decision::reconfig::Step,
        outcome: Option<vagus_decision::reconfig::Outcome>,
        inflight: usize,
    ) {
        if let Some(i) = STEPS.iter().position(|s| *s == step) {
            self.reconfig_steps[i].fetch_add(1, Relaxed);
        }
        if let Some(i) = outcome.and_then(|o| OUTCOMES.iter().position(|x| *x == o)) {
            self.reconfig_outcomes[i].fetch_add(1, Relaxed);
        }
        self.reconfig_inflight.store(inflight as u64, Relaxed);
    }

    /// `requests` answered for `workload` against its objective, `met` of
    /// them within it.
    pub(crate) fn slo_observed(&self, workload: &str, requests: u64, met: u64) {
        let mut slo = self.slo.lock().unwrap_or_else(|e| e.into_inner());
        let e = slo.entry(workload.to_string()).or_default();
        (e.0, e.1) = (e.0 + requests, e.1 + met);
    }

    /// A replica the scaler added (`up`) or removed.
    pub fn scaled(&self, up: bool) {
        if up {
            &self.scaled_up
        } else {
            &self.scaled_down
        }
        .fetch_add(1, Relaxed);
    }

    /// The page: these counters, the core's gauges, `alerts` (raised so
    /// far, by kind), and each workload's requests against its objective
    /// and those that met it over the gateways' horizon (`recent`).
    pub fn render(
        &self,
        core: &Core,
        alerts: &std::collections::BTreeMap<String, u64>,
        recent: &std::collections::BTreeMap<String, (u64, u64)>,
    ) -> String {
        let mut o = String::with_capacity(4096);
        let _ = self.write(&mut o, core, alerts);
        let _ = self.write_slo(&mut o, core, recent);
        o
    }

    /// Per workload with an objective: the counters since the start (a
    /// workload no longer placed leaves them), and the attainment over the
    /// horizon where something was answered (else unknown: no sample).
    fn write_slo(
        &self,
        o: &mut String,
        core: &Core,
        recent: &std::collections::BTreeMap<String, (u64, u64)>,
    ) -> std::fmt::Result {
        let mut slo = self.slo.lock().unwrap_or_else(|e| e.into_inner());
        slo.retain(|w, _| core.placement(w).is_some() || core.waiting_workload(w).is_some());
        // A family without samples is left out, as Prometheus's own client
        // libraries leave it (some parsers refuse a HELP with nothing under it).
        if !slo.is_empty() {
            writeln!(
                o,
                "# HELP vagus_brain_slo_requests_total Requests the gateways answered for a workload with a latency objective (sla_ms)."
            )?;
            writeln!(o, "# TYPE vagus_brain_slo_requests_total counter")?;
            for (w, (n, _)) in slo.iter() {
                writeln!(o, "vagus_brain_slo_requests_total{{workload=\"{w}\"}} {n}")?;
            }
            writeln!(
                o,
                "# HELP vagus_brain_slo_met_total Of those, the ones answered in full, not 5xx, within the objective."
            )?;
            writeln!(o, "# TYPE vagus_brain_slo_met_total counter")?;
            for (w, (_, met)) in slo.iter() {
                writeln!(o, "vagus_brain_slo_met_total{{workload=\"{w}\"}} {met}")?;
            }
        }
        let answered: Vec<_> = recent.iter().filter(|(_, (n, _))| *n > 0).collect();
        if !answered.is_empty() {
            writeln!(
                o,
                "# HELP vagus_brain_slo_attainment Share of a workload's requests that met its objective over the last 10 s (as the gateways measured; absent without requests)."
            )?;
            writeln!(o, "# TYPE vagus_brain_slo_attainment gauge")?;
            for (w, &(n, met)) in answered {
                writeln!(
                    o,
                    "vagus_brain_slo_attainment{{workload=\"{w}\"}} {}",
                    met as f64 / n as f64
                )?;
            }
        }
        Ok(())
    }

    fn write(
        &self,
        o: &mut String,
        core: &Core,
        alerts: &std::collections::BTreeMap<String, u64>,
    ) -> std::fmt::Result {
        writeln!(
            o,
            "# HELP vagus_brain_alerts_total Alerts raised (GET /v1/events), by kind."
        )?;
        writeln!(o, "# TYPE vagus_brain_alerts_total counter")?;
        for kind in crate::alerts::KINDS {
            writeln!(
                o,
                "vagus_brain_alerts_total{{kind=\"{kind}\"}} {}",
                alerts.get(kind).copied().unwrap_or(0)
            )?;
        }
        writeln!(
            o,
            "# HELP vagus_brain_decisions_total Decisions taken, by path."
        )?;
        writeln!(o, "# TYPE vagus_brain_decisions_total counter")?;
        for (p, n) in PATHS.iter().zip(&self.decisions) {
            writeln!(
                o,
                "vagus_brain_decisions_total{{path=\"{}\"}} {}",
                p.name(),
                n.load(Relaxed)
            )?;
        }
        histogram(
            o,
            "vagus_brain_decision_seconds",
            "Time in the decision core per request.",
            &BUCKETS,
            &self.buckets,
            self.seconds_sum_ns.load(Relaxed) as f64 / 1e9,
            self.calls.load(Relaxed),
        )?;
        writeln!(
            o,
            "# HELP vagus_brain_audit_rows_total Decisions committed to the audit trail."
        )?;
        writeln!(o, "# TYPE vagus_brain_audit_rows_total counter")?;
        writeln!(
            o,
            "vagus_brain_audit_rows_total {}",
            self.audited.load(Relaxed)
        )?;
        writeln!(
            o,
            "# HELP vagus_brain_audit_failures_total Requests answered 503 because the audit trail failed."
        )?;
        writeln!(o, "# TYPE vagus_brain_audit_failures_total counter")?;
        writeln!(
            o,
            "vagus_brain_audit_failures_total {}",
            self.audit_failures.load(Relaxed)
        )?;
        writeln!(
            o,
            "# HELP vagus_brain_mps_mismatches_total MPS pools the brain holds that a node's agent reports otherwise (each recorded as an audit event)."
        )?;
        writeln!(o, "# TYPE vagus_brain_mps_mismatches_total counter")?;
        writeln!(
            o,
            "vagus_brain_mps_mismatches_total {}",
            self.events.load(Relaxed)
        )?;
        writeln!(
            o,
            "# HELP vagus_brain_http_responses_total HTTP answers by status class."
        )?;
        writeln!(o, "# TYPE vagus_brain_http_responses_total counter")?;
        for (c, n) in ["2xx", "3xx", "4xx", "5xx"].iter().zip(&self.answers) {
            writeln!(
                o,
                "vagus_brain_http_responses_total{{code=\"{c}\"}} {}",
                n.load(Relaxed)
            )?;
        }
        writeln!(
            o,
            "# HELP vagus_brain_loop_ticks_total Control loop ticks run."
        )?;
        writeln!(o, "# TYPE vagus_brain_loop_ticks_total counter")?;
        writeln!(
            o,
            "vagus_brain_loop_ticks_total {}",
            self.loop_ticks.load(Relaxed)
        )?;
        writeln!(
            o,
            "# HELP vagus_brain_loop_seconds_total Time the control loop's ticks took (observation and controller)."
        )?;
        writeln!(o, "# TYPE vagus_brain_loop_seconds_total counter")?;
        writeln!(
            o,
            "vagus_brain_loop_seconds_total {}",
            self.loop_ns.load(Relaxed) as f64 / 1e9
        )?;
        writeln!(
            o,
            "# HELP vagus_brain_loop_actions_total Actions the control loop took, by kind."
        )?;
        writeln!(o, "# TYPE vagus_brain_loop_actions_total counter")?;
        writeln!(
            o,
            "vagus_brain_loop_actions_total{{kind=\"budget\"}} {}",
            self.loop_budgets.load(Relaxed)
        )?;
        for (kind, n) in [
            ("scale_up", &self.scaled_up),
            ("scale_down", &self.scaled_down),
        ] {
            writeln!(
                o,
                "vagus_brain_loop_actions_total{{kind=\"{kind}\"}} {}",
                n.load(Relaxed)
            )?;
        }
        writeln!(
            o,
            "# HELP vagus_brain_reconfiguration_steps_total MPS reconfiguration steps taken, by the step entered."
        )?;
        writeln!(o, "# TYPE vagus_brain_reconfiguration_steps_total counter")?;
        for (s, n) in STEPS.iter().zip(&self.reconfig_steps) {
            writeln!(
                o,
                "vagus_brain_reconfiguration_steps_total{{step=\"{}\"}} {}",
                s.name(),
                n.load(Relaxed)
            )?;
        }
        writeln!(
            o,
            "# HELP vagus_brain_reconfigurations_total MPS reconfigurations ended, by outcome."
        )?;
        writeln!(o, "# TYPE vagus_brain_reconfigurations_total counter")?;
        for (x, n) in OUTCOMES.iter().zip(&self.reconfig_outcomes) {
            writeln!(
                o,
                "vagus_brain_reconfigurations_total{{outcome=\"{}\"}} {}",
                x.name(),
                n.load(Relaxed)
            )?;
        }
        writeln!(
            o,
            "# HELP vagus_brain_reconfigurations_in_flight MPS reconfigurations under way."
        )?;
        writeln!(o, "# TYPE vagus_brain_reconfigurations_in_flight gauge")?;
        writeln!(
            o,
            "vagus_brain_reconfigurations_in_flight {}",
            self.reconfig_inflight.load(Relaxed)
        )?;
        histogram(
            o,
            "vagus_brain_loop_reaction_seconds",
            "From the end of the window that showed a latency-sensitive workload over its pressure threshold to the budget command issued (agent and brain clocks).",
            &REACTION,
            &self.reaction,
            self.reaction_sum_ms.load(Relaxed) as f64 / 1000.0,
            self.reaction_count.load(Relaxed),
        )?;
        let nodes = core.nodes();
        let gpus: usize = nodes.iter().map(|n| n.gpus.len()).sum();
        let used: u64 = nodes
            .iter()
            .flat_map(|n| &n.gpus)
            .map(|g| g.used_pct.min(100) as u64)
            .sum();
        let gauges = [
            ("vagus_brain_nodes", "Nodes known.", nodes.len() as f64),
            (
                "vagus_brain_cordoned_nodes",
                "Nodes cordoned.",
                nodes.iter().filter(|n| n.cordoned).count() as f64,
            ),
            ("vagus_brain_gpus", "GPUs known.", gpus as f64),
            (
                "vagus_brain_gpu_allocated_ratio",
                "Share of all GPU capacity placed (0-1).",
                if gpus == 0 {
                    0.0
                } else {
                    used as f64 / (gpus as f64 * 100.0)
                },
            ),
            (
                "vagus_brain_placements",
                "Workloads placed.",
                core.placements().count() as f64,
            ),
            (
                "vagus_brain_queued",
                "Workloads waiting.",
                core.queued().count() as f64,
            ),
            (
                "vagus_brain_reconfiguration_paused",
                "1 while an operator paused automatic reconfiguration.",
                if core.reconfiguration_paused() {
                    1.0
                } else {
                    0.0
                },
            ),
        ];
        for (name, help, v) in gauges {
            writeln!(o, "# HELP {name} {help}")?;
            writeln!(o, "# TYPE {name} gauge")?;
            writeln!(o, "{name} {v}")?;
        }
        // Each GPU's placed share (node names are DNS names: nothing to
        // escape in a label).
        if gpus > 0 {
            let name = "vagus_brain_gpu_share_placed_ratio";
            writeln!(
                o,
                "# HELP {name} Share of each GPU the brain has placed (MPS percentages over 100; above 1 only with oversubscription)."
            )?;
            writeln!(o, "# TYPE {name} gauge")?;
            for n in nodes {
                for g in &n.gpus {
                    let share = g.used_pct as f64 / 100.0;
                    writeln!(
                        o,
                        "{name}{{node=\"{}\",gpu=\"{}\"}} {share}",
                        n.name, g.index
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// A histogram in the text format: `# HELP`, `# TYPE`, cumulative buckets
/// of the per-bucket `counts`, `+Inf`, sum and count.
fn histogram(
    o: &mut String,
    name: &str,
    help: &str,
    bounds: &[f64],
    counts: &[AtomicU64],
    sum: f64,
    count: u64,
) -> std::fmt::Result {
    writeln!(o, "# HELP {name} {help}")?;
    writeln!(o, "# TYPE {name} histogram")?;
    let mut cum = 0;
    for (b, n) in bounds.iter().zip(counts) {
        cum += n.load(Relaxed);
        writeln!(o, "{name}_bucket{{le=\"{b}\"}} {cum}")?;
    }
    writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {count}")?;
    writeln!(o, "{name}_sum {sum}")?;
    writeln!(o, "{name}_count {count}")
}
