//! The control loop's fast knob: SM-time budgets for the shimmed processes
//! on each GPU, retuned every tick from what the latest windows say.
//!
//! Pure, like the rest of the core: [`Controller::tick`] takes an
//! [`Observation`] (the clock in it) and returns [`Action`]s, each with its
//! reason and the measurements behind it, so a recorded stream of
//! observations replays offline to the same actions.
//!
//! Per GPU, latency-sensitive processes (their workload has an SLA, or is
//! P0/P1) each hold a *reservation*: a fraction of the GPU, at most their
//! ceiling (their MPS share, or the whole GPU). Best-effort processes share
//! what the reservations leave, as budgets the shim enforces. The
//! latency-sensitive ones are never throttled themselves: a token bucket
//! delays a burst, and the bursts are the latency being protected; what
//! keeps them fast is that the rest is held back.
//!
//! - A reservation starts at the share the workload was placed with (the
//!   core keeps those within the GPU), at most its ceiling.
//! - When a workload's p99 over the horizon exceeds `pressure × SLA`, the
//!   GPU allows no oversubscription at once, and its reservation grows
//!   (×1.5, at least +0.1, to the ceiling) — at once, then again at most
//!   every `raise_ms`, so that requests answered since the last raise can
//!   show whether it was enough (the horizon's p99 lags).
//! - When it has stayed under `calm × SLA` (or served nothing) for
//!   `calm_ms`, it hands `step_back` of its reservation back (a fraction
//!   of it: what was taken in a burst comes back in a few steps), down to
//!   `ls_floor`.
//! - In between, it holds.
//!
//! Budgets may add up past the GPU (`oversubscription_pct`, ≤ 120) only
//! while every process on it is shimmed and none is under pressure; each
//! best-effort process keeps at least `be_floor` so nothing starves. A GPU
//! with no latency-sensitive process leaves its processes unlimited.

use crate::workload::Invalid;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use utoipa::ToSchema;

/// The budget that means "no limit" (the whole device, in millionths).
pub const UNLIMITED_PPM: u32 = 1_000_000;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// How often the loop runs (ms); 0: never.
    pub tick_ms: u64,
    /// How far back a workload's request latency is read (ms).
    pub horizon_ms: u64,
    /// Act when p99 exceeds this fraction of the SLA…
    pub pressure: f64,
    /// …hand time back when it stays under this fraction…
    pub calm: f64,
    /// …for this long (ms) before each step back.
    pub calm_ms: u64,
    /// The fraction of a reservation handed back per step.
    pub step_back: f64,
    /// Under pressure, a reservation grows again at most this often (ms).
    pub raise_ms: u64,
    /// The least a latency-sensitive process keeps reserved.
    pub ls_floor: f64,
    /// The least a best-effort process is given.
    pub be_floor: f64,
    /// How far budgets may add up past the GPU where every process is
    /// shimmed (percent, 100–120).
    pub oversubscription_pct: u32,
    /// Smaller budget changes than this fraction are not sent.
    pub min_change: f64,
    /// Replicas the brain starts are told their priority, so that a
    /// best-effort replica's launches wait while a latency-sensitive one's
    /// work runs on its GPU (the shim's launch holding). Off by default:
    /// beside latency-sensitive servers that keep the GPU busy it gives
    /// best effort less than `be_floor` (`bench/README.md`).
    pub hold_best_effort: bool,
}

impl Default for ControlConfig {
    fn default() -> ControlConfig {
        ControlConfig {
            tick_ms: 100,
            horizon_ms: 2_000,
            pressure: 0.8,
            calm: 0.5,
            calm_ms: 2_000,
            step_back: 0.2,
            raise_ms: 1_000,
            ls_floor: 0.1,
            be_floor: 0.02,
            oversubscription_pct: 120,
            min_change: 0.01,
            hold_best_effort: false,
        }
    }
}

impl ControlConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        let frac = |name: &str, v: f64| {
            if v > 0.0 && v < 1.0 {
                Ok(())
            } else {
                Err(Invalid::new(
                    &format!("control.{name}"),
                    "must be above 0 and below 1",
                ))
            }
        };
        frac("pressure", self.pressure)?;
        frac("calm", self.calm)?;
        frac("step_back", self.step_back)?;
        frac("ls_floor", self.ls_floor)?;
        frac("be_floor", self.be_floor)?;
        frac("min_change", self.min_change)?;
        if self.calm >= self.pressure {
            return Err(Invalid::new(
                "control.calm",
                "must be below control.pressure",
            ));
        }
        if !(100..=120).contains(&self.oversubscription_pct) {
            return Err(Invalid::new(
                "control.oversubscription_pct",
                "must be 100 to 120",
            ));
        }
        for (name, v) in [
            ("horizon_ms", self.horizon_ms),
            ("calm_ms", self.calm_ms),
            ("raise_ms", self.raise_ms),
        ] {
            if v == 0 {
                return Err(Invalid::new(&format!("control.{name}"), "must be above 0"));
            }
        }
        Ok(())
    }
}

/// What one tick sees.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub now_ms: u64,
    /// An operator paused automatic actions: nothing is changed.
    pub paused: bool,
    pub gpus: Vec<GpuObservation>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GpuObservation {
    pub node: String,
    pub gpu: u32,
    /// The end of the node's latest window (ms, the agent's clock): when
    /// what this GPU's observation says was measured.
    pub window_end_ms: u64,
    pub processes: Vec<ProcessObservation>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessObservation {
    pub pid: u32,
    /// Its budget is enforced (it runs under the shim).
    pub shimmed: bool,
    /// The placement it is a replica of; `None`: a process the brain did
    /// not place (best effort).
    pub workload: Option<String>,
    /// Latency-sensitive (an SLA, or P0/P1), with its SLA if it has one.
    pub latency_sensitive: bool,
    pub sla_ms: Option<u32>,
    /// The most of the GPU it can use (its MPS share; 1: all of it).
    pub ceiling: f64,
    /// The share its placement was given (what its reservation starts at).
    pub share: f64,
    /// Requests it finished over the horizon, and their p99 (ms); `None`:
    /// it serves no metrics.
    pub requests: Option<u64>,
    pub p99_ms: Option<f64>,
}

/// A budget to set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Action {
    pub at_ms: u64,
    pub node: String,
    pub gpu: u32,
    pub pid: u32,
    pub workload: Option<String>,
    /// Millionths of the device; [`UNLIMITED_PPM`]: no limit.
    pub budget_ppm: u32,
    /// What it had (`None`: never set by the loop, so unlimited).
    pub was_ppm: Option<u32>,
    pub reason: String,
    pub evidence: Evidence,
}

/// The measurements an action rests on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Evidence {
    /// The latency-sensitive workload that decided it, with its p99 and
    /// SLA, if one did.
    pub workload: Option<String>,
    pub p99_ms: Option<f64>,
    pub sla_ms: Option<u32>,
    /// The GPU's reservations, and what budgets may add up to.
    pub reserved: f64,
    pub cap: f64,
    pub best_effort: u32,
    /// A latency-sensitive process was over `pressure` × its SLA.
    pub pressed: bool,
    /// When the window it rests on ended (ms, the agent's clock).
    pub window_end_ms: u64,
}

#[derive(Clone, Debug, PartialEq)]
struct Reservation {
    share: f64,
    calm_since: Option<u64>,
    raised_ms: Option<u64>,
}

/// The loop's state: reservations and the budgets it set.
#[derive(Clone, Debug, Default)]
pub struct Controller {
    cfg: ControlConfig,
    reserved: BTreeMap<(String, u32), Reservation>,
    budgets: BTreeMap<(String, u32), u32>,
    /// Since when a process's reservation has been at its ceiling while
    /// its p99 was pressed (the slow knob's trigger).
    pinned: BTreeMap<(String, u32), u64>,
}

/// How a latency-sensitive process stands against its SLA.
enum Standing {
    Pressed,
    Calm,
    Holding,
}

impl Controller {
    pub fn new(cfg: ControlConfig) -> Controller {
        Controller {
            cfg,
            ..Controller::default()
        }
    }

    pub fn config(&self) -> &ControlConfig {
        &self.cfg
    }

    /// The budgets the loop has set, by node and pid.
    pub fn budgets(&self) -> &BTreeMap<(String, u32), u32> {
        &self.budgets
    }

    /// The processes whose reservation is at their ceiling while they are
    /// pressed, by node and pid, with since when.
    pub fn pinned(&self) -> &BTreeMap<(String, u32), u64> {
        &self.pinned
    }

    /// One tick: the actions that bring each GPU's budgets to what its
    /// latency-sensitive work needs now.
    pub fn tick(&mut self, obs: &Observation) -> Vec<Action> {
        if obs.paused {
            return Vec::new();
        }
        let now = obs.now_ms;
        let mut actions = Vec::new();
        let mut present = BTreeSet::new();
        for g in &obs.gpus {
            for p in &g.processes {
                present.insert((g.node.clone(), p.pid));
            }
            self.gpu(now, g, &mut actions);
        }
        self.reserved.retain(|k, _| present.contains(k));
        self.budgets.retain(|k, _| present.contains(k));
        self.pinned.retain(|k, _| present.contains(k));
        actions
    }

    fn standing(&self, p: &ProcessObservation) -> Standing {
        let Some(sla) = p.sla_ms else {
            // P0/P1 without an SLA: nothing to read against; kept whole.
            return Standing::Pressed;
        };
        let sla = sla as f64;
        match (p.requests, p.p99_ms) {
            (Some(n), Some(p99)) if n > 0 => {
                if p99 > self.cfg.pressure * sla {
                    Standing::Pressed
                } else if p99 < self.cfg.calm * sla {
                    Standing::Calm
                } else {
                    Standing::Holding
                }
            }
            // Nothing served over the horizon: it needs little now.
            (Some(_), _) => Standing::Calm,
            // No metrics at all: no evidence to give time away on.
            (None, _) => Standing::Holding,
        }
    }

    fn gpu(&mut self, now: u64, g: &GpuObservation, actions: &mut Vec<Action>) {
        let cfg = self.cfg.clone();
        let ls: Vec<&ProcessObservation> =
            g.processes.iter().filter(|p| p.latency_sensitive).collect();
        let be: Vec<&ProcessObservation> = g
            .processes
            .iter()
            .filter(|p| !p.latency_sensitive && p.shimmed)
            .collect();
        // The latency-sensitive process that decides this GPU's budgets:
        // the most pressed (p99 over SLA), and whether any is pressed.
        let mut pressed = false;
        let mut decider: Option<(&ProcessObservation, f64)> = None;
        let mut reserved = 0.0;
        // Each latency-sensitive process: whether it is pressed, and its
        // reservation.
        let mut held: Vec<(&ProcessObservation, bool, f64)> = Vec::new();
        for p in &ls {
            let ceiling = p.ceiling.clamp(cfg.ls_floor, 1.0);
            let standing = self.standing(p);
            let r = self
                .reserved
                .entry((g.node.clone(), p.pid))
                .or_insert(Reservation {
                    share: p.share.clamp(cfg.ls_floor.min(ceiling), ceiling),
                    calm_since: None,
                    raised_ms: None,
                });
            r.share = r.share.min(ceiling);
            let is_pressed = matches!(standing, Standing::Pressed);
            match standing {
                Standing::Pressed => {
                    pressed = true;
                    r.calm_since = None;
                    let due = r.raised_ms.is_none_or(|t| now >= t + cfg.raise_ms);
                    if due && r.share < ceiling {
                        r.share = (r.share * 1.5).max(r.share + 0.1).min(ceiling);
                        r.raised_ms = Some(now);
                    }
                }
                Standing::Calm => {
                    let since = *r.calm_since.get_or_insert(now);
                    if now >= since + cfg.calm_ms {
                        r.share = (r.share * (1.0 - cfg.step_back)).max(cfg.ls_floor.min(ceiling));
                        r.calm_since = Some(now);
                    }
                }
                Standing::Holding => r.calm_since = None,
            }
            reserved += r.share;
            held.push((p, is_pressed, r.share));
            let key = (g.node.clone(), p.pid);
            if is_pressed && p.sla_ms.is_some() && r.share >= ceiling - 1e-9 {
                self.pinned.entry(key).or_insert(now);
            } else {
                self.pinned.remove(&key);
            }
            let ratio = match (p.p99_ms, p.sla_ms) {
                (Some(l), Some(s)) if p.requests.unwrap_or(0) > 0 => l / s as f64,
                _ => 0.0,
            };
            if decider.is_none_or(|(_, best)| ratio > best) {
                decider = Some((p, ratio));
            }
        }
        let all_shimmed = g.processes.iter().all(|p| p.shimmed);
        let cap = if all_shimmed && !pressed {
            cfg.oversubscription_pct as f64 / 100.0
        } else {
            1.0
        };
        let n = be.len() as u32;
        let each = if ls.is_empty() || n == 0 {
            1.0
        } else {
            ((cap - reserved) / n as f64).max(cfg.be_floor).min(1.0)
        };
        let evidence = Evidence {
            workload: decider.and_then(|(p, _)| p.workload.clone()),
            p99_ms: decider.and_then(|(p, _)| p.p99_ms),
            sla_ms: decider.and_then(|(p, _)| p.sla_ms),
            reserved: round3(reserved),
            cap,
            best_effort: n,
            pressed,
            window_end_ms: g.window_end_ms,
        };
        let reason = if ls.is_empty() {
            "no latency-sensitive work on the GPU: unlimited".to_string()
        } else {
            let who = evidence
                .workload
                .as_deref()
                .unwrap_or("latency-sensitive work");
            let standing = match (evidence.p99_ms, evidence.sla_ms) {
                (Some(l), Some(s)) if pressed => {
                    format!("{who} p99 {l:.0} ms > {} × SLA {s} ms", cfg.pressure)
                }
                (Some(l), Some(s)) => format!("{who} p99 {l:.0} ms within SLA {s} ms"),
                (None, Some(s)) => format!("{who} (SLA {s} ms) served nothing lately"),
                _ if pressed => format!("{who} is P0/P1 without an SLA: kept whole"),
                _ => format!("{who}: no latency measured"),
            };
            format!(
                "{standing}; {:.2} of the GPU reserved, {n} best-effort process(es) share the rest of {cap:.2}",
                reserved
            )
        };
        for p in be {
            let want = ppm(each);
            self.set(now, g, p, want, &reason, &evidence, actions);
        }
        // With best effort at its floor there is nothing left to take from
        // it: a latency-sensitive process inside its SLA yields to a
        // pressed one, held to its reservation while the pressure lasts.
        let floor = n == 0 || (cap - reserved) / n as f64 <= cfg.be_floor;
        for &(p, p_pressed, share) in &held {
            if !p.shimmed || p.sla_ms.is_none() {
                continue;
            }
            let yields = pressed && floor && !p_pressed;
            let (want, why) = if yields {
                let who = evidence.workload.as_deref().unwrap_or("another workload");
                let own = match (p.p99_ms, p.sla_ms) {
                    (Some(l), Some(s)) => format!("p99 {l:.0} ms of SLA {s} ms"),
                    (_, Some(s)) => format!("SLA {s} ms, nothing served lately"),
                    _ => String::new(),
                };
                (
                    ppm(share),
                    format!(
                        "{who} is pressed and best effort is at its floor: held to its reservation {share:.2} ({own})"
                    ),
                )
            } else {
                (
                    UNLIMITED_PPM,
                    "latency-sensitive: not held back while no other is pressed beside it".into(),
                )
            };
            self.set(now, g, p, want, &why, &evidence, actions);
        }
    }

    /// Sets process `p`'s budget to `want` if it moved by `min_change` or
    /// is lifted, as an action.
    #[allow(clippy::too_many_arguments)]
    fn set(
        &mut self,
        now: u64,
        g: &GpuObservation,
        p: &ProcessObservation,
        want: u32,
        reason: &str,
        evidence: &Evidence,
        actions: &mut Vec<Action>,
    ) {
        let key = (g.node.clone(), p.pid);
        let was = self.budgets.get(&key).copied();
        let current = was.unwrap_or(UNLIMITED_PPM);
        let moved = (want as f64 - current as f64).abs() >= self.cfg.min_change * 1e6;
        let lifted = want == UNLIMITED_PPM && current != UNLIMITED_PPM;
        if !(moved || lifted) {
            return;
        }
        self.budgets.insert(key, want);
        actions.push(Action {
            at_ms: now,
            node: g.node.clone(),
            gpu: g.gpu,
            pid: p.pid,
            workload: p.workload.clone(),
            budget_ppm: want,
            was_ppm: was,
            reason: reason.to_string(),
            evidence: evidence.clone(),
        });
    }
}

/// A share of the device in millionths; the whole of it or more: none.
fn ppm(share: f64) -> u32 {
    if share >= 1.0 {
        UNLIMITED_PPM
    } else {
        (share * 1e6).round() as u32
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One line of a recorded stream: what a tick saw and what it did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recorded {
    pub observation: Observation,
    pub actions: Vec<Action>,
}

/// Where a replay first differed from the record.
#[derive(Clone, Debug, PartialEq)]
pub struct Divergence {
    pub tick: usize,
    pub recorded: Vec<Action>,
    pub replayed: Vec<Action>,
}

/// Runs a fresh controller over a recorded stream; the ticks and actions
/// replayed, or the first tick whose actions differ.
pub fn replay(
    cfg: ControlConfig,
    ticks: impl IntoIterator<Item = Recorded>,
) -> Result<(usize, usize), Box<Divergence>> {
    let mut c = Controller::new(cfg);
    let (mut n, mut acted) = (0, 0);
    for (i, t) in ticks.into_iter().enumerate() {
        let got = c.tick(&t.observation);
        if got != t.actions {
            return Err(Box::new(Divergence {
                tick: i,
                recorded: t.actions,
                replayed: got,
            }));
        }
        n += 1;
        acted += got.len();
    }
    Ok((n, acted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ls(pid: u32, p99: Option<f64>, requests: u64) -> ProcessObservation {
        ProcessObservation {
            pid,
            shimmed: true,
            workload: Some("chat".into()),
            latency_sensitive: true,
            sla_ms: Some(100),
            ceiling: 1.0,
            share: 1.0,
            requests: Some(requests),
            p99_ms: p99,
        }
    }

    fn be(pid: u32, shimmed: bool) -> ProcessObservation {
        ProcessObservation {
            pid,
            shimmed,
            workload: None,
            latency_sensitive: false,
            sla_ms: None,
            ceiling: 1.0,
            share: 1.0,
            requests: None,
            p99_ms: None,
        }
    }

    fn obs(now_ms: u64, processes: Vec<ProcessObservation>) -> Observation {
        Observation {
            now_ms,
            paused: false,
            gpus: vec![GpuObservation {
                node: "a".into(),
                gpu: 0,
                window_end_ms: now_ms,
                processes,
            }],
        }
    }

    fn budget(c: &Controller, pid: u32) -> Option<u32> {
        c.budgets().get(&("a".to_string(), pid)).copied()
    }

    #[test]
    fn best_effort_is_held_back_under_pressure_and_given_time_when_calm() {
        let mut c = Controller::new(ControlConfig::default());
        // Reserved whole at first: best effort gets the oversubscription.
        let a = c.tick(&obs(0, vec![ls(1, Some(60.0), 10), be(2, true)]));
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].budget_ppm, 200_000, "{a:?}");
        // Pressure (90 > 0.8 × 100): no oversubscription, the floor.
        let a = c.tick(&obs(100, vec![ls(1, Some(90.0), 10), be(2, true)]));
        assert_eq!(a[0].budget_ppm, 20_000, "{a:?}");
        assert!(
            a[0].reason.contains("p99 90 ms > 0.8 × SLA 100 ms"),
            "{a:?}"
        );
        assert_eq!(a[0].evidence.p99_ms, Some(90.0));
        // Calm (30 < 50): nothing for calm_ms, then one step back per calm_ms.
        assert!(
            c.tick(&obs(200, vec![ls(1, Some(30.0), 10), be(2, true)]))
                .len()
                == 1
        );
        assert_eq!(budget(&c, 2), Some(200_000), "cap back to 1.2 at once");
        assert!(
            c.tick(&obs(2_100, vec![ls(1, Some(30.0), 10), be(2, true)]))
                .is_empty()
        );
        let a = c.tick(&obs(2_200, vec![ls(1, Some(30.0), 10), be(2, true)]));
        assert_eq!(a[0].budget_ppm, 400_000, "a fifth of 1.0 back: {a:?}");
        // Holding between calm and pressure: no change, and calm restarts.
        assert!(
            c.tick(&obs(4_300, vec![ls(1, Some(70.0), 10), be(2, true)]))
                .is_empty()
        );
        assert!(
            c.tick(&obs(4_400, vec![ls(1, Some(30.0), 10), be(2, true)]))
                .is_empty()
        );
        // Pressure again: no oversubscription and the reservation grows at
        // once (0.8 → 1.0), to the floor for best effort.
        let a = c.tick(&obs(4_500, vec![ls(1, Some(150.0), 10), be(2, true)]));
        assert_eq!(a[0].budget_ppm, 20_000, "{a:?}");
        assert!(a[0].evidence.pressed);
    }

    #[test]
    fn under_pressure_a_reservation_grows_once_per_raise_ms() {
        let mut c = Controller::new(ControlConfig::default());
        let mut p = ls(1, Some(90.0), 10);
        p.share = 0.3;
        let at = |c: &mut Controller, t: u64| {
            c.tick(&obs(t, vec![p.clone(), be(2, true), be(3, true)]));
            budget(c, 2).unwrap()
        };
        // 0.3 → 0.45 at once: (1.0 − 0.45) / 2 each.
        assert_eq!(at(&mut c, 0), 275_000);
        // The horizon still shows the old requests: no second raise yet.
        assert_eq!(at(&mut c, 500), 275_000);
        // A second later, still pressed: 0.45 → 0.675.
        assert_eq!(at(&mut c, 1_000), 162_500);
    }

    #[test]
    fn a_server_inside_its_sla_yields_to_a_pressed_one_once_best_effort_is_at_its_floor() {
        let mut c = Controller::new(ControlConfig::default());
        let mut calm = ls(4, Some(30.0), 10);
        calm.workload = Some("search".into());
        calm.share = 0.3;
        let mut pressed = ls(1, Some(95.0), 10);
        pressed.share = 0.3;
        let all = |p: &ProcessObservation, q: &ProcessObservation| {
            vec![p.clone(), q.clone(), be(2, true), be(3, true)]
        };
        // 0.45 + 0.3 reserved: best effort gets 0.125 each, above its floor:
        // no one yields.
        let a = c.tick(&obs(0, all(&pressed, &calm)));
        assert_eq!(a.len(), 2, "{a:?}");
        assert_eq!(budget(&c, 4), None);
        // A second later, still pressed: 0.675 + 0.3 leaves best effort its floor.
        c.tick(&obs(1_000, all(&pressed, &calm)));
        assert_eq!(budget(&c, 2), Some(20_000));
        assert_eq!(budget(&c, 4), Some(300_000), "held to its reservation");
        assert_eq!(budget(&c, 1), None, "the pressed one is never held");
        // The pressure gone, it is unlimited again.
        let mut fine = pressed.clone();
        fine.p99_ms = Some(60.0);
        let a = c.tick(&obs(1_100, all(&fine, &calm)));
        assert!(
            a.iter()
                .any(|a| a.pid == 4 && a.budget_ppm == UNLIMITED_PPM),
            "{a:?}"
        );
    }

    #[test]
    fn an_unshimmed_process_forbids_oversubscription_and_is_not_budgeted() {
        let mut c = Controller::new(ControlConfig::default());
        let a = c.tick(&obs(
            0,
            vec![ls(1, Some(10.0), 5), be(2, true), be(3, false)],
        ));
        assert_eq!(a.len(), 1, "only the shimmed one: {a:?}");
        assert_eq!((a[0].pid, a[0].budget_ppm), (2, 20_000), "{a:?}");
        assert_eq!(a[0].evidence.cap, 1.0);
    }

    #[test]
    fn without_latency_sensitive_work_budgets_are_lifted() {
        let mut c = Controller::new(ControlConfig::default());
        assert!(c.tick(&obs(0, vec![be(2, true), be(3, true)])).is_empty());
        c.tick(&obs(
            100,
            vec![ls(1, Some(90.0), 5), be(2, true), be(3, true)],
        ));
        assert_eq!(budget(&c, 2), Some(20_000));
        let a = c.tick(&obs(200, vec![be(2, true), be(3, true)]));
        assert_eq!(a.len(), 2, "{a:?}");
        assert!(
            a.iter()
                .all(|a| a.budget_ppm == UNLIMITED_PPM && a.was_ppm == Some(20_000))
        );
        // A process that is gone is forgotten.
        c.tick(&obs(300, vec![be(3, true)]));
        assert_eq!(budget(&c, 2), None);
    }

    #[test]
    fn paused_changes_nothing_and_a_recorded_stream_replays_the_same() {
        let mut c = Controller::new(ControlConfig::default());
        let mut paused = obs(0, vec![ls(1, Some(90.0), 5), be(2, true)]);
        paused.paused = true;
        assert!(c.tick(&paused).is_empty());
        let mut rec = Vec::new();
        for (i, p99) in [60.0, 95.0, 20.0, 20.0, 20.0, 99.0].iter().enumerate() {
            let o = obs(i as u64 * 1_000, vec![ls(1, Some(*p99), 5), be(2, true)]);
            let actions = c.tick(&o);
            rec.push(Recorded {
                observation: o,
                actions,
            });
        }
        let acted: usize = rec.iter().map(|r| r.actions.len()).sum();
        assert!(acted >= 3, "{rec:?}");
        // The pause tick was not recorded, and changed nothing.
        assert_eq!(
            replay(ControlConfig::default(), rec.clone()),
            Ok((rec.len(), acted))
        );
        rec[1].actions.clear();
        let d = replay(ControlConfig::default(), rec).unwrap_err();
        assert_eq!(d.tick, 1);
    }

    #[test]
    fn bad_settings_are_named() {
        let mut cfg = ControlConfig {
            oversubscription_pct: 150,
            ..ControlConfig::default()
        };
        assert_eq!(
            cfg.validate().unwrap_err().field,
            "control.oversubscription_pct"
        );
        cfg.oversubscription_pct = 120;
        cfg.calm = 0.9;
        assert_eq!(cfg.validate().unwrap_err().field, "control.calm");
    }
}
