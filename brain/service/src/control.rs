//! The control loop as the service runs it: every tick, what the agents'
//! latest windows and the core's placements say becomes an
//! [`Observation`]; the core's [`Controller`] turns it into budget actions;
//! each is sent to its node's agent (`SetShimBudget`, through the command
//! ledger), recorded in the audit trail (path `budget`) and counted; the
//! slow knob's reconfigurations take their steps (see
//! [`crate::reconfigure`]). With
//! a record file, every tick's observation and actions are appended to it
//! as a JSON line, for `vagus control replay`. Each tick also runs the
//! [`Scaler`]: replicas added and removed through the core (actor `loop`,
//! and a `scale` row each).

use crate::agents::Agents;
use crate::audit::Row;
use crate::http::Api;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use vagus_decision::control::{
    Action, GpuObservation, Observation, ProcessObservation, Recorded, UNLIMITED_PPM,
};
use vagus_decision::reconfig::ReconfigConfig;
use vagus_decision::scale::{ModelObservation, ReplicaObservation, Scale, ScaleConfig, Scaler};
use vagus_decision::{ControlConfig, Controller};
use vagus_proto::wire::{CommandKind, ReplicaState};

/// The least time between the starts of two rounds (windows arriving
/// faster are taken together): 25 nodes' windows at 10 Hz woke the loop
/// 250 times a second, ~5% of a core on `bench/ingest.sh`'s loop run.
const MIN_GAP: Duration = Duration::from_millis(10);

/// The first line of a record: the settings the ticks ran with, and the
/// reconfigurations the trail gave back at the start.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct RecordHeader {
    pub control: ControlConfig,
    /// Absent in a record written before the reconfigurer was recorded.
    #[serde(default)]
    pub reconfig: Option<ReconfigConfig>,
    #[serde(default)]
    pub restored: Vec<vagus_decision::reconfig::Reconfig>,
}

/// One line of a record after the first: the controller's tick, and the
/// reconfigurer's round beside it.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct RecordLine {
    #[serde(flatten)]
    pub control: Recorded,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconfig: Option<vagus_decision::reconfig::Recorded>,
}

pub struct Loop {
    ctl: Controller,
    scaler: Scaler,
    reconfigs: crate::reconfigure::Reconfigs,
    record: Option<std::io::BufWriter<std::fs::File>>,
}

impl Loop {
    /// A loop with the core's control settings; `record` names a file to
    /// append the ticks to (created, or truncated).
    pub fn new(
        cfg: ControlConfig,
        scale: ScaleConfig,
        reconfig: ReconfigConfig,
        api: &Api,
        record: Option<&std::path::Path>,
    ) -> std::io::Result<Loop> {
        let reconfigs = crate::reconfigure::Reconfigs::new(reconfig, api);
        let record = match record {
            Some(p) => {
                let mut w = std::io::BufWriter::new(std::fs::File::create(p)?);
                let header = RecordHeader {
                    control: cfg.clone(),
                    reconfig: Some(reconfigs.config().clone()),
                    restored: reconfigs.restored().to_vec(),
                };
                serde_json::to_writer(&mut w, &header)?;
                w.write_all(b"\n")?;
                w.flush()?;
                Some(w)
            }
            None => None,
        };
        Ok(Loop {
            scaler: Scaler::new(scale, cfg.pressure),
            reconfigs,
            ctl: Controller::new(cfg),
            record,
        })
    }

    /// Runs until the task is aborted: as soon as a new window arrives (so
    /// a window that shows pressure is acted on at once, not at the next
    /// tick), and every `tick_ms` when none does. Windows that arrive
    /// during a round are taken together by the next.
    pub async fn run(mut self, agents: Arc<Agents>, api: Arc<Api>) {
        let every = Duration::from_millis(self.ctl.config().tick_ms.max(1));
        let fresh = agents
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .fresh
            .clone();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = fresh.notified() => tick.reset(),
            }
            let started = tokio::time::Instant::now();
            self.round(&agents, &api).await;
            // Windows that arrive within the gap are taken by one round: a
            // fleet's windows each wake the loop, and a round reads them all.
            tokio::time::sleep_until(started + MIN_GAP).await;
        }
    }

    /// One tick.
    pub async fn round(&mut self, agents: &Agents, api: &Api) {
        let t = std::time::Instant::now();
        let obs = observe(agents, api, self.ctl.config().horizon_ms);
        let actions = self.ctl.tick(&obs);
        let scales = self.scales(agents, api);
        let reconfig = self.reconfigs.observe(api, self.ctl.pinned());
        let changes = self.reconfigs.decide(&reconfig);
        // The loop's own time: observing and deciding (carrying the
        // decisions out waits on the ledger and the trail, not the CPU).
        api.metrics.looped(t.elapsed(), &actions, api.now());
        if let Some(w) = &mut self.record {
            let line = RecordLine {
                control: Recorded {
                    observation: obs,
                    actions: actions.clone(),
                },
                reconfig: Some(vagus_decision::reconfig::Recorded {
                    tick: reconfig,
                    changes: changes.clone(),
                }),
            };
            let ok = serde_json::to_writer(&mut *w, &line).is_ok()
                && w.write_all(b"\n").is_ok()
                && w.flush().is_ok();
            if !ok {
                eprintln!("vagus brain: cannot write the control record; no longer recording");
                self.record = None;
            }
        }
        scale(api, scales).await;
        self.reconfigs.carry_out_all(api, &changes).await;
        if actions.is_empty() {
            return;
        }
        let mut rows = Vec::with_capacity(actions.len());
        for a in &actions {
            let budget_ppm = if a.budget_ppm >= UNLIMITED_PPM {
                0
            } else {
                a.budget_ppm
            };
            let kind = CommandKind::SetShimBudget {
                pid: a.pid,
                budget_ppm,
            };
            if let Err(e) = agents.issue(&a.node, kind).await {
                eprintln!(
                    "vagus brain: the loop could not send pid {}'s budget to {}: {e}",
                    a.pid, a.node
                );
            }
            rows.push(row(a));
        }
        api.record_events(rows).await;
    }
}

impl Loop {
    /// The scaler's look at every model with replicas: what it decides.
    fn scales(&mut self, agents: &Agents, api: &Api) -> Vec<(u64, Scale)> {
        let horizon_ns = self.ctl.config().horizon_ms * 1_000_000;
        let (now, paused, models) = scale_observation(agents, api, horizon_ns);
        if models.is_empty() {
            return Vec::new();
        }
        let taken = |name: &str| {
            api.with_core(|c| {
                c.placement(name).is_some()
                    || c.queued_workload(name).is_some()
                    || c.waiting_workload(name).is_some()
            })
        };
        self.scaler
            .tick(now, paused, &models, &taken)
            .into_iter()
            .map(|s| (now, s))
            .collect()
    }
}

/// The scaler's decisions carried out through the core (actor `loop`),
/// each with a `scale` row.
async fn scale(api: &Api, scales: Vec<(u64, Scale)>) {
    for (now, s) in scales {
        let summary = match &s {
            Scale::Up {
                model,
                from,
                name,
                offset,
                reason,
            } => {
                let Some(mut p) = api.with_core(|c| c.placement(from).map(|p| p.profile.clone()))
                else {
                    continue;
                };
                p.name = name.clone();
                if let Some(l) = p.launch.as_mut() {
                    l.port = l.port.and_then(|port| port.checked_add(*offset));
                }
                match api.place_scaled("loop", p).await {
                    Ok(path) if path.placed() => {
                        api.metrics.scaled(true);
                        format!("{model}: {name} added, a copy of {from}: {reason}")
                    }
                    Ok(path) => format!(
                        "{model}: {name} not added ({}: no room for it now): {reason}",
                        path.name()
                    ),
                    Err(e) => format!("{model}: {name} not added: {}", e.message()),
                }
            }
            Scale::Down {
                model,
                workload,
                reason,
            } => match api.remove("loop", workload).await {
                Ok(()) => {
                    api.metrics.scaled(false);
                    format!("{model}: {workload} removed (it drains): {reason}")
                }
                Err(e) => format!("{model}: {workload} not removed: {}", e.message()),
            },
        };
        let (workload, model) = match &s {
            Scale::Up { name, model, .. } => (name.clone(), model.clone()),
            Scale::Down {
                workload, model, ..
            } => (workload.clone(), model.clone()),
        };
        let body = serde_json::json!({ "model": model, "scale": &s }).to_string();
        api.record_events(vec![Row {
            at_ms: now,
            path: "scale".into(),
            workload,
            node: None,
            actor: "loop".into(),
            summary,
            body,
            state: None,
        }])
        .await;
    }
}

/// Every model that has replicas (placements with a launch spec): each
/// replica's readiness, its server's queue and p99 (found by the
/// replica's pid, over `horizon_ns`), and its GPUs' utilisation.
fn scale_observation(
    agents: &Agents,
    api: &Api,
    horizon_ns: u64,
) -> (u64, bool, Vec<ModelObservation>) {
    struct Rep {
        model: String,
        id: String,
        replica: String,
        node: String,
        gpus: Vec<u32>,
        scaled: bool,
        sla_ms: Option<u32>,
    }
    let (now, paused, reps) = api.with_core(|c| {
        let reps: Vec<Rep> = c
            .placements()
            // A reconfiguration's shadow is not another replica to scale.
            .filter(|p| p.profile.launch.is_some() && p.shadow_of.is_none())
            .map(|p| Rep {
                model: p.profile.model_id.clone(),
                id: p.id.clone(),
                replica: p.replica_id().to_string(),
                node: p.node.clone(),
                gpus: p.gpus.clone(),
                scaled: p.scaled,
                sla_ms: p.profile.sla_ms,
            })
            .collect();
        (api.now(), c.reconfiguration_paused(), reps)
    });
    if reps.is_empty() {
        return (now, paused, Vec::new());
    }
    let st = agents.state.lock().unwrap_or_else(|e| e.into_inner());
    let mut by: std::collections::BTreeMap<String, ModelObservation> = Default::default();
    for r in reps {
        let n = st
            .ingest
            .nodes
            .get(&r.node)
            .filter(|_| st.is_connected(&r.node));
        let replica = n.and_then(|n| n.replicas.get(&r.replica));
        let serving = n
            .zip(replica)
            .and_then(|(n, rw)| n.serving.values().find(|e| e.pid == Some(rw.pid)));
        let m = by
            .entry(r.model.clone())
            .or_insert_with(|| ModelObservation {
                model: r.model.clone(),
                replicas: Vec::new(),
                gpu_utilisation: Vec::new(),
            });
        m.replicas.push(ReplicaObservation {
            workload: r.id,
            added: r.scaled,
            ready: replica
                .is_some_and(|rw| matches!(rw.state, ReplicaState::Ready | ReplicaState::Running)),
            queue_depth: serving.and_then(|e| e.queue_depth),
            p99_ms: serving
                .and_then(|e| e.recent_latency(horizon_ns).1)
                .map(|s| s * 1e3),
            sla_ms: r.sla_ms,
        });
        for g in r.gpus {
            m.gpu_utilisation
                .push(n.and_then(|n| n.gpus.get(&g)).map(|g| g.utilization as f64));
        }
    }
    (now, paused, by.into_values().collect())
}

fn share(ppm: u32) -> String {
    if ppm >= UNLIMITED_PPM {
        "unlimited".into()
    } else {
        format!("{:.3}", ppm as f64 / 1e6)
    }
}

fn row(a: &Action) -> Row {
    let who = a
        .workload
        .as_deref()
        .unwrap_or("a process the brain did not place");
    let summary = format!(
        "pid {} ({who}) on {} GPU {}: budget {} (was {}): {}",
        a.pid,
        a.node,
        a.gpu,
        share(a.budget_ppm),
        share(a.was_ppm.unwrap_or(UNLIMITED_PPM)),
        a.reason
    );
    Row {
        at_ms: a.at_ms,
        path: "budget".into(),
        workload: a.workload.clone().unwrap_or_default(),
        node: Some(a.node.clone()),
        actor: "loop".into(),
        summary,
        body: serde_json::to_string(a).unwrap_or_default(),
        state: None,
    }
}

/// What a workload's placement says the loop needs of it.
struct Placement {
    /// The placement's name (its replica may run under another).
    id: String,
    latency_sensitive: bool,
    sla_ms: Option<u32>,
    share: f64,
}

/// The observation of this moment: per GPU of every connected node, the
/// processes its latest window listed, each with its placement (found by
/// the replica's pid) and its request latency over `horizon_ms`.
fn observe(agents: &Agents, api: &Api, horizon_ms: u64) -> Observation {
    let (now_ms, paused, placements) = api.with_core(|c| {
        let placements: std::collections::HashMap<String, Placement> = c
            .placements()
            .map(|p| {
                let pr = &p.profile;
                (
                    p.replica_id().to_string(),
                    Placement {
                        id: p.id.clone(),
                        latency_sensitive: pr.latency_sensitive(),
                        sla_ms: pr.sla_ms,
                        share: p.share_pct.min(100) as f64 / 100.0,
                    },
                )
            })
            .collect();
        (api.now(), c.reconfiguration_paused(), placements)
    });
    let st = agents.state.lock().unwrap_or_else(|e| e.into_inner());
    let mut nodes: Vec<&String> = st.ingest.nodes.keys().collect();
    nodes.sort();
    let mut gpus = Vec::new();
    for name in nodes {
        if !st.is_connected(name) {
            continue;
        }
        let n = &st.ingest.nodes[name];
        let Some(last) = n.last_seq else { continue };
        let mut by_gpu: std::collections::BTreeMap<u32, Vec<ProcessObservation>> =
            n.gpus.keys().map(|g| (*g, Vec::new())).collect();
        let mut procs: Vec<_> = n
            .processes
            .values()
            .filter(|p| p.seen_seq == last)
            .map(|p| &p.latest)
            .collect();
        procs.sort_by_key(|p| (p.gpu, p.pid));
        for p in procs {
            let replica = n.replicas.values().find(|r| r.pid == p.pid);
            let placed = replica.and_then(|r| placements.get(&r.id).map(|pl| (r, pl)));
            let (requests, p99_ms) = n
                .serving
                .values()
                .find(|e| e.pid == Some(p.pid))
                .map(|e| e.recent_latency(horizon_ms * 1_000_000))
                .unwrap_or((None, None));
            by_gpu.entry(p.gpu).or_default().push(ProcessObservation {
                pid: p.pid,
                shimmed: p.shimmed,
                workload: placed.map(|(_, pl)| pl.id.clone()),
                latency_sensitive: placed.is_some_and(|(_, pl)| pl.latency_sensitive),
                sla_ms: placed.and_then(|(_, pl)| pl.sla_ms),
                // What it can use: the MPS percentage it runs with.
                ceiling: placed
                    .and_then(|(r, _)| r.mps_percent)
                    .map_or(1.0, |m| (m as f64 / 100.0).clamp(0.0, 1.0)),
                share: placed.map_or(1.0, |(_, pl)| pl.share),
                requests,
                p99_ms: p99_ms.map(|s| s * 1e3),
            });
        }
        for (gpu, processes) in by_gpu {
            if !processes.is_empty() {
                gpus.push(GpuObservation {
                    node: name.clone(),
                    gpu,
                    window_end_ms: n.window_end_unix_ns / 1_000_000,
                    processes,
                });
            }
        }
    }
    Observation {
        now_ms,
        paused,
        gpus,
    }
}

/// What a replay of a record ran: the controller's ticks and actions,
/// the reconfigurer's rounds and steps.
#[derive(Debug, serde::Serialize)]
pub struct Replayed {
    pub ticks: usize,
    pub actions: usize,
    pub reconfig_rounds: usize,
    pub reconfig_changes: usize,
}

/// Runs a fresh controller, with the record's settings, over a record the
/// loop wrote; an error names the line that is not a tick, or the first
/// tick whose actions differ from those recorded.
pub fn replay_record(path: &std::path::Path) -> Result<Replayed, String> {
    use std::io::BufRead;
    let what = path.display();
    let f = std::fs::File::open(path).map_err(|e| format!("{what}: {e}"))?;
    let mut lines = std::io::BufReader::new(f).lines();
    let header = lines
        .next()
        .ok_or_else(|| format!("{what}: empty (no settings line)"))?
        .map_err(|e| format!("{what}: {e}"))?;
    let header: RecordHeader = serde_json::from_str(&header)
        .map_err(|e| format!("{what}:1: not the settings line of a control record: {e}"))?;
    header
        .control
        .validate()
        .map_err(|e| format!("{what}:1: {e}"))?;
    let mut ticks = Vec::new();
    let mut rounds = Vec::new();
    for (i, l) in lines.enumerate() {
        let l = l.map_err(|e| format!("{what}: {e}"))?;
        // A record cut short by a kill ends in a partial line: the ticks
        // before it still replay.
        match serde_json::from_str::<RecordLine>(&l) {
            Ok(t) => {
                ticks.push(t.control);
                rounds.extend(t.reconfig.map(|r| (i, r)));
            }
            Err(e) if e.is_eof() => break,
            Err(e) => return Err(format!("{what}:{}: not a tick: {e}", i + 2)),
        }
    }
    let recorded: Vec<u64> = ticks.iter().map(|t| t.observation.now_ms).collect();
    let (ticks, actions) = vagus_decision::control::replay(header.control, ticks).map_err(|d| {
        let show = |a: &[Action]| serde_json::to_string(a).unwrap_or_default();
        format!(
            "{what}:{}: tick {} (at {} ms) replays differently: recorded {}, replayed {}",
            d.tick + 2,
            d.tick,
            recorded[d.tick],
            show(&d.recorded),
            show(&d.replayed)
        )
    })?;
    let (mut reconfig_rounds, mut reconfig_changes) = (0, 0);
    if let Some(cfg) = header.reconfig {
        cfg.validate().map_err(|e| format!("{what}:1: {e}"))?;
        let lines: Vec<usize> = rounds.iter().map(|(i, _)| *i).collect();
        let rounds = rounds.into_iter().map(|(_, r)| r);
        (reconfig_rounds, reconfig_changes) = vagus_decision::reconfig::replay(
            cfg,
            header.restored,
            rounds,
        )
        .map_err(|d| {
            let show = |c: &[vagus_decision::reconfig::Change]| {
                serde_json::to_string(c).unwrap_or_default()
            };
            format!(
                "{what}:{}: the reconfigurer's round replays differently: recorded {}, replayed {}",
                lines[d.round] + 2,
                show(&d.recorded),
                show(&d.replayed)
            )
        })?;
    }
    Ok(Replayed {
        ticks,
        actions,
        reconfig_rounds,
        reconfig_changes,
    })
}
