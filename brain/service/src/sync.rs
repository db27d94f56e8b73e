//! Where telemetry meets decisions: the nodes connected agents announce,
//! and what their windows report, brought into the decision core — with
//! nothing invented.
//!
//! - A node's CPU and memory are what its agent's `Hello` says; a node whose
//!   agent could not tell is not placed on (said once).
//! - Its request rate, error rate and queue depth are the sums over the
//!   inference servers its agent scrapes (their own metrics, the last 10 s
//!   of windows); unknown (`None`) where none reports them, which the
//!   core's reconfiguration gate treats as not safe outside a maintenance
//!   window.
//! - A GPU is throttled (oversubscription allowed) only when NVML shows it
//!   and every process on it runs under the shim.
//! - Where the core keeps MPS pools, each GPU's pool is compared with the
//!   MPS state its agent reports; a mismatch is recorded in the audit trail
//!   as an `event` row (once per new mismatch), trusting neither side.

use crate::agents::Agents;
use crate::agents::ingest::NodeState;
use crate::audit::Row;
use crate::http::Api;
use std::collections::{HashMap, HashSet};
use vagus_decision::{GpuSpec, NodeLoad, NodeSpec};
use vagus_proto::wire::MpsState;

/// What the sync remembers between rounds: mismatches already recorded,
/// and nodes already said to be unusable.
#[derive(Default)]
pub struct Sync {
    /// Each GPU whose pool its MPS state does not serve: what was said,
    /// and since when (the core's clock) it has not been served.
    mismatches: HashMap<(String, u32), (String, u64)>,
    unusable: HashSet<String>,
    executor: crate::replicas::Executor,
}

/// A node as its agent describes it, and its load.
fn node_of(
    name: &str,
    n: &NodeState,
    failover: &vagus_decision::config::Failover,
) -> Result<(NodeSpec, NodeLoad), String> {
    let (Some(cpu_milli), Some(memory_mib)) = (n.cpu_milli, n.memory_mib) else {
        return Err(format!(
            "node {name}: its agent reports no CPU or memory size; nothing is placed there"
        ));
    };
    let throttled = |gpu: u32| {
        n.gpus.contains_key(&gpu)
            && n.processes
                .iter()
                .filter(|((g, _), _)| *g == gpu)
                .all(|(_, p)| p.latest.shimmed)
    };
    let spec = NodeSpec {
        name: name.to_string(),
        cpu_milli,
        memory_mib,
        labels: Default::default(),
        gpus: n
            .inventory
            .iter()
            // Zero: the agent could not tell; the GPU table can.
            .map(|g| GpuSpec {
                model: g.model.clone(),
                sms: (g.sms > 0).then_some(g.sms),
                memory_gb: (g.memory_bytes > 0).then(|| g.memory_bytes as f64 / 1e9),
                tdp_w: (g.tdp_watts > 0).then_some(g.tdp_watts as f64),
                throttling: throttled(g.index),
            })
            .collect(),
    };
    // From the inference servers' own metrics; unknown where none reports.
    let serving = n.serving_rates();
    let load = NodeLoad {
        qps: serving.qps,
        error_rate: serving.error_rate,
        queue_depth: serving.queue_depth,
        // A critical XID in this agent session (an application's own XID
        // leaves the node healthy).
        healthy: !n.xids.iter().any(|(_, x)| failover.critical(*x)),
        gpus: n
            .gpus
            .values()
            .map(|g| (g.index, g.utilization as f64, g.power_mw as f64 / 1000.0))
            .collect(),
    };
    Ok((spec, load))
}

/// Whether the agent's MPS state serves the brain's pool of `pool` percent.
/// Each replica limits itself to its share
/// (`CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`, which can only lower its server's),
/// so a server at the pool's percentage or above serves it; one below it
/// (or, with no server yet, a default below it) holds its clients under
/// their shares.
fn serves(state: &MpsState, pool: u32) -> bool {
    let holds = |p: f32| p + 0.5 >= pool as f32;
    state.daemon
        && state.servers.iter().all(|s| holds(s.percent))
        && (!state.servers.is_empty() || state.default_percent.is_some_and(holds))
}

fn describe(state: &MpsState) -> String {
    if !state.daemon {
        return "no MPS control daemon answering".into();
    }
    let servers: Vec<String> = state
        .servers
        .iter()
        .map(|s| format!("{}% ({} clients)", s.percent, s.clients.len()))
        .collect();
    format!(
        "servers at [{}], new servers at {}",
        servers.join(", "),
        state
            .default_percent
            .map(|p| format!("{p}%"))
            .unwrap_or_else(|| "an unknown percentage".into())
    )
}

impl Sync {
    /// Brings every connected agent's node and load into the core, and
    /// records pool mismatches.
    pub async fn round(&mut self, agents: &Agents, api: &Api) {
        // Each node: its name, what its agent describes, its GPUs' MPS state.
        type Described = (
            String,
            Result<(NodeSpec, NodeLoad), String>,
            Vec<(u32, MpsState)>,
        );
        let failover = api.with_core(|c| c.config().failover.clone());
        let nodes: Vec<Described> = {
            let st = agents.state.lock().unwrap_or_else(|e| e.into_inner());
            st.ingest
                .nodes
                .iter()
                .filter(|(_, n)| !n.inventory.is_empty())
                .map(|(name, n)| {
                    let mps = n.mps.iter().map(|(g, s)| (*g, s.clone())).collect();
                    (name.clone(), node_of(name, n, &failover), mps)
                })
                .collect()
        };
        let mut rows = Vec::new();
        let mut conflicts = Vec::new();
        for (name, described, mps) in nodes {
            let (spec, load) = match described {
                Ok(x) => x,
                Err(why) => {
                    if self.unusable.insert(name) {
                        eprintln!("vagus brain: {why}");
                    }
                    continue;
                }
            };
            let new = api.with_core(|c| c.node(&name).is_none());
            if let Err(e) = api.upsert_node(&spec) {
                // Said once, not every round.
                if self.unusable.insert(name.clone()) {
                    eprintln!(
                        "vagus brain: node {name} from its agent: {e}; nothing is placed there"
                    );
                }
                continue;
            }
            self.unusable.remove(&name);
            let _ = api.observe(&name, &load);
            // A node joined: what waited for one may fit (a scale-out's).
            if new && let Err(e) = api.retry_queue("sync").await {
                eprintln!(
                    "vagus brain: placing what waited for {name}: {}",
                    e.message()
                );
            }
            let (r, acts) = self.reconcile(api, &name, &mps);
            rows.extend(r);
            conflicts.extend(acts.into_iter().map(|a| (name.clone(), a)));
        }
        if !rows.is_empty() {
            api.record_events(rows).await;
        }
        for (node, act) in conflicts {
            match act {
                Conflict::Persisted { gpu, why } => {
                    crate::failover::mps_fell(api, ACTOR, &node, gpu, &why, true).await;
                }
                Conflict::Cleared { gpu } => {
                    let why = "its MPS daemon would give a client the whole GPU again";
                    crate::failover::mps_back(api, ACTOR, &node, gpu, why).await;
                }
            }
        }
        self.executor.round(agents, api).await;
    }

    /// Event rows for this node's GPUs whose pool and MPS state disagree
    /// (newly, or otherwise than before); and the conflicts to act on: one
    /// that has lasted `failover.mps_conflict_ms`, one that has cleared.
    fn reconcile(
        &mut self,
        api: &Api,
        node: &str,
        mps: &[(u32, MpsState)],
    ) -> (Vec<Row>, Vec<Conflict>) {
        type Pools = Vec<(u32, Option<u32>, bool, bool)>;
        let (pools, now, after): (Pools, u64, u64) = api.with_core(|c| {
            // A GPU whose daemon is down holds no pool (failover's alert
            // says so); one down for a conflict is watched until it clears.
            let pools = match c.node(node) {
                Some(n) if c.config().mps_pools => n
                    .gpus
                    .iter()
                    .map(|g| {
                        let pool = g.pool.filter(|_| g.mps_down.is_none());
                        (g.index, pool, g.workloads.is_empty(), g.mps_conflict)
                    })
                    .collect(),
                _ => Vec::new(),
            };
            (pools, api.now(), c.config().failover.mps_conflict_ms)
        });
        let mut rows = Vec::new();
        let mut acts = Vec::new();
        for (gpu, pool, empty, conflict) in pools {
            let key = (node.to_string(), gpu);
            let Some(state) = mps.iter().find(|(g, _)| *g == gpu).map(|(_, s)| s) else {
                // The agent drives no MPS daemon here: nothing to compare.
                self.mismatches.remove(&key);
                continue;
            };
            if conflict {
                if serves(state, 100) {
                    acts.push(Conflict::Cleared { gpu });
                }
                continue;
            }
            let mismatch = match pool {
                Some(p) if !empty && !serves(state, p) => Some(format!(
                    "the brain holds a {p}% MPS pool here, the agent reports {}",
                    describe(state)
                )),
                _ => None,
            };
            let Some(detail) = mismatch else {
                self.mismatches.remove(&key);
                continue;
            };
            let summary = format!("{node} GPU {gpu}: {detail}");
            let since = match self.mismatches.get(&key) {
                Some((said, since)) if *said == summary => {
                    // A daemon that answers, holding clients under their
                    // shares for long enough: given up (one that does not
                    // answer is the failover's).
                    if after > 0 && state.daemon && now >= since + after {
                        acts.push(Conflict::Persisted {
                            gpu,
                            why: format!("{detail}, for {} s", (now - since) / 1000),
                        });
                        self.mismatches.remove(&key);
                    }
                    continue;
                }
                Some((_, since)) => *since,
                None => now,
            };
            self.mismatches.insert(key, (summary.clone(), since));
            let body = serde_json::json!({
                "event": "mps_mismatch",
                "node": node,
                "gpu": gpu,
                "brain_pool_pct": pool,
                "agent": state,
                "summary": summary,
            });
            rows.push(Row {
                at_ms: now,
                path: "event".into(),
                workload: String::new(),
                node: Some(node.to_string()),
                actor: format!("agent:{node}"),
                summary,
                body: body.to_string(),
                state: None,
            });
        }
        (rows, acts)
    }
}

/// What a GPU's MPS conflict calls for.
enum Conflict {
    /// It has lasted: the GPU is given up, its workloads elsewhere.
    Persisted { gpu: u32, why: String },
    /// A GPU given up for one now serves a whole GPU again.
    Cleared { gpu: u32 },
}

/// The actor of the sync's decisions in the audit trail.
pub const ACTOR: &str = "sync";

#[cfg(test)]
mod tests {
    use super::*;
    use vagus_proto::wire::MpsServer;

    #[test]
    fn a_pool_is_served_by_servers_at_or_above_it() {
        let state = |default: f32, servers: &[f32]| MpsState {
            daemon: true,
            default_percent: Some(default),
            servers: servers
                .iter()
                .map(|&percent| MpsServer {
                    pid: 7,
                    percent,
                    clients: vec![8],
                })
                .collect(),
        };
        // Clients limit themselves to their shares: a server at 100% serves
        // a 50% pool; one at 30% holds them under it.
        assert!(serves(&state(100.0, &[]), 50));
        assert!(serves(&state(100.0, &[100.0]), 50));
        assert!(serves(&state(10.0, &[50.0]), 50));
        assert!(!serves(&state(100.0, &[30.0]), 50));
        assert!(!serves(&state(100.0, &[100.0, 30.0]), 50));
        assert!(!serves(&state(10.0, &[]), 50));
        assert!(!serves(&MpsState::default(), 50), "no daemon");
    }
}
