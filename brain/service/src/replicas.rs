//! The brain's side of the local executor: every bound placement with a
//! launch spec has its node's agent run a replica of it, and a replica
//! whose placement is gone is drained and stopped.
//!
//! Starting is idempotent on the agent (one replica per placement id), so
//! the brain may ask twice — after its own restart, before the node's first
//! window says what runs — without anything starting twice. A replica that
//! exited is not started again: nothing restarts on its own. What the
//! agents report is kept as [`ReplicaView`]s for `GET /v1/placements/{id}`
//! and the routes.

use crate::agents::Agents;
use crate::agents::ingest::ServingView;
use crate::http::Api;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use utoipa::ToSchema;
use vagus_proto::shm;
use vagus_proto::wire::{CommandKind, ProcessMemory, ReplicaSpec, ReplicaState, ReplicaWindow};

/// How long a replica being stopped may take to finish what it holds.
pub const STOP_GRACE_MS: u64 = 30_000;

/// A replica as its agent last reported it.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ReplicaView {
    pub node: String,
    /// `starting`, `ready` (its `/health` answers), `running` (it has served
    /// requests), `draining`, `exited`.
    pub state: String,
    pub pid: u32,
    /// Where it serves (`http://ADDRESS:PORT`, the address its agent
    /// connects from), when it has a port.
    pub url: Option<String>,
    /// How it ended, once exited.
    pub exit: Option<String>,
    pub gpus: Vec<u32>,
    pub mps_percent: Option<f32>,
    /// The model it serves (its placement's `model_id`).
    pub model: String,
    /// What its own metrics said over the last 10 s, as its agent scraped
    /// them; `null` until a window carries them.
    pub serving: Option<ServingView>,
    /// What the gateways measured of it over the last 10 s (requests,
    /// errors, latency to the first and the last byte, in flight); `null`
    /// until a gateway reports it.
    pub gateway: Option<ServingView>,
    /// Its memory as its shim counts it; `null` when it runs without the
    /// shim or no window has carried it yet.
    pub memory: Option<MemoryView>,
}

/// A replica's memory as its shim counts it.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct MemoryView {
    /// Bytes in use by kind: `device`, `pitch`, `managed`, `stream_ordered`,
    /// `vmm` (device memory) and `host` (page-locked host memory).
    pub in_use_bytes: BTreeMap<String, u64>,
    /// Its device-memory limit (`null`: none).
    pub limit_bytes: Option<u64>,
    /// Allocations refused for crossing the limit since it started, and
    /// their bytes.
    pub refused_allocations: u64,
    pub refused_bytes: u64,
}

impl MemoryView {
    fn of(m: &ProcessMemory) -> MemoryView {
        MemoryView {
            in_use_bytes: shm::MEMORY_KINDS
                .iter()
                .zip(&m.in_use)
                .map(|(k, b)| (k.to_string(), *b))
                .collect(),
            limit_bytes: (m.limit > 0).then_some(m.limit),
            refused_allocations: m.refused_allocations,
            refused_bytes: m.refused_bytes,
        }
    }
}

impl ReplicaView {
    /// Whether routes may send it new requests.
    pub fn takes_requests(&self) -> bool {
        matches!(self.state.as_str(), "ready" | "running")
    }
}

/// What the brain asked for, so that it asks once. Starts are by (node,
/// placement id) and the placement's time: a placement the core decided
/// anew (moved off a node that went down, then back from the queue) is a
/// new one, and its replica is started again even where an earlier one
/// exited; one this brain never started (after its restart) is taken as
/// it runs, exited or not.
#[derive(Default)]
pub struct Executor {
    started: HashMap<(String, String), u64>,
    stopping: HashSet<(String, String)>,
    /// The refused allocations each running replica's alert last counted.
    refused: HashMap<(String, String), u64>,
}

/// The agent's spec for placement `p`, if it has a launch spec. A share of
/// one GPU is an MPS percentage where the core keeps MPS pools; without
/// them (`mps_pools = false`) a share is the GPU time the control loop
/// budgets, and the replica runs with the whole GPU's SMs. With
/// `hold_best_effort`, its shim learns its priority (`VAGUS_PRIORITY`, unless
/// the launch spec sets it): a best-effort replica's launches wait while a
/// latency-sensitive one's work runs on its GPU. A profile's
/// `gpu_memory_gb` becomes the shim's memory limit and MPS's pinned-memory
/// limit (unless the launch spec sets them).
fn spec_of(
    p: &vagus_decision::Placed,
    mps_pools: bool,
    hold_best_effort: bool,
) -> Option<ReplicaSpec> {
    let l = p.profile.launch.as_ref()?;
    // `{port}` in an argument or a variable is the replica's own port (a
    // copy the scaler adds serves on another).
    let port = |s: &str| match l.port {
        Some(n) => s.replace("{port}", &n.to_string()),
        None => s.to_string(),
    };
    let mut env: Vec<(String, String)> = l.env.iter().map(|(k, v)| (k.clone(), port(v))).collect();
    let unset = |env: &[(String, String)], k: &str| !env.iter().any(|(n, _)| n == k);
    if hold_best_effort && unset(&env, "VAGUS_PRIORITY") {
        let role = if p.profile.latency_sensitive() {
            "ls"
        } else {
            "be"
        };
        env.push(("VAGUS_PRIORITY".into(), role.into()));
    }
    // Its memory limit: the shim's (all its GPUs together) and, should it
    // be an MPS client, MPS's own per device.
    if let Some(gb) = p.profile.gpu_memory_gb {
        let per_gpu = (gb * 1e9) as u64;
        if unset(&env, "VAGUS_MEMORY_LIMIT") {
            let all = per_gpu * p.gpus.len().max(1) as u64;
            env.push(("VAGUS_MEMORY_LIMIT".into(), all.to_string()));
        }
        if unset(&env, "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT") {
            let each: Vec<String> = (0..p.gpus.len().max(1))
                .map(|d| format!("{d}={}M", per_gpu >> 20))
                .collect();
            env.push(("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT".into(), each.join(",")));
        }
    }
    Some(ReplicaSpec {
        id: p.replica_id().to_string(),
        command: l.command.clone(),
        args: l.args.iter().map(|a| port(a)).collect(),
        env,
        port: l.port,
        gpus: p.gpus.clone(),
        mps_percent: (mps_pools && p.gpus.len() == 1 && p.share_pct < 100)
            .then_some(p.share_pct as f32),
    })
}

impl Executor {
    /// One round: starts what should run, stops what should not, and
    /// refreshes the replicas the API shows.
    pub async fn round(&mut self, agents: &Agents, api: &Api) {
        type Wanted = BTreeMap<String, (String, String, ReplicaSpec, u64)>;
        let (wanted, down): (Wanted, HashSet<String>) = api.with_core(|c| {
            let (pools, hold) = (c.config().mps_pools, c.config().control.hold_best_effort);
            let wanted = c
                .placements()
                .filter_map(|p| {
                    let s = spec_of(p, pools, hold)?;
                    Some((
                        p.replica_id().to_string(),
                        (p.node.clone(), p.profile.model_id.clone(), s, p.at_ms),
                    ))
                })
                .collect();
            let down = c
                .nodes()
                .iter()
                .filter(|n| n.down.is_some())
                .map(|n| n.name.clone())
                .collect();
            (wanted, down)
        });
        type Reported = Vec<(
            String,
            Option<std::net::IpAddr>,
            Vec<(ReplicaWindow, Option<ServingView>, Option<MemoryView>)>,
        )>;
        let reported: Reported = {
            let st = agents.state.lock().unwrap_or_else(|e| e.into_inner());
            st.ingest
                .nodes
                .iter()
                // A node that is down is asked only to stop what moved off
                // it, and only while its agent is there (a GPU failed); a
                // silent one is left as it is until it reports again.
                .filter(|(n, _)| !down.contains(*n) || st.is_connected(n))
                .map(|(n, s)| {
                    // A replica's endpoint is the one its agent scrapes for
                    // its pid.
                    let rs = s
                        .replicas
                        .values()
                        .map(|r| {
                            let serving = s
                                .serving
                                .values()
                                .find(|e| e.pid == Some(r.pid))
                                .map(|e| e.view());
                            let memory = s
                                .processes
                                .values()
                                .find(|p| p.latest.pid == r.pid)
                                .and_then(|p| p.latest.memory.as_ref())
                                .map(MemoryView::of);
                            (r.clone(), serving, memory)
                        })
                        .collect();
                    (n.clone(), s.addr, rs)
                })
                .collect()
        };
        // What node `node` last reported of replica `id`, if anything.
        let last = |node: &str, id: &str| {
            reported
                .iter()
                .filter(|(n, ..)| n == node)
                .flat_map(|(_, _, rs)| rs)
                .find(|(r, ..)| r.id == id)
                .map(|(r, ..)| r)
        };
        for (id, (node, _, spec, at_ms)) in &wanted {
            let key = (node.clone(), id.clone());
            let before = self.started.get(&key).copied();
            if down.contains(node) || before == Some(*at_ms) {
                continue;
            }
            let last = last(node, id);
            let exited = last.map(|r| r.state == ReplicaState::Exited);
            // It ran with other GPUs or another MPS share than the placement
            // now has (it fell back to a GPU of its own).
            let otherwise =
                last.is_some_and(|r| r.gpus != spec.gpus || r.mps_percent != spec.mps_percent);
            // Still running so: stopped first, started once it has exited.
            if otherwise && exited == Some(false) {
                let draining = last.is_some_and(|r| r.state == ReplicaState::Draining);
                if !draining
                    && !self.stopping.contains(&key)
                    && agents
                        .issue(
                            node,
                            CommandKind::StopReplica {
                                id: id.clone(),
                                grace_ms: STOP_GRACE_MS,
                            },
                        )
                        .await
                        .is_ok()
                {
                    self.stopping.insert(key);
                }
                continue;
            }
            let take_as_it_is = match exited {
                // Running: it is this placement's, whenever it started.
                Some(false) => true,
                // Exited: this placement's own, unless the core placed it
                // anew since this brain started it, or it ran with other
                // GPUs or another share than the placement now has (nothing
                // restarts on its own).
                Some(true) => before.is_none() && !otherwise,
                None => false,
            };
            if take_as_it_is
                || agents
                    .issue(node, CommandKind::StartReplica(spec.clone()))
                    .await
                    .is_ok()
            {
                self.started.insert(key, *at_ms);
            }
        }
        // Kept while placed, or while its node is down (it may come back
        // to the same node).
        self.started
            .retain(|(node, id), _| wanted.contains_key(id) || down.contains(node));
        let mut views = BTreeMap::new();
        let mut live = HashSet::new();
        for (node, addr, rs) in &reported {
            for (r, serving, memory) in rs {
                let key = (node.clone(), r.id.clone());
                let placed_here = wanted.get(&r.id).is_some_and(|(n, ..)| n == node);
                let gone = matches!(r.state, ReplicaState::Exited);
                if !gone {
                    live.insert(key.clone());
                }
                if !placed_here
                    && !gone
                    && r.state != ReplicaState::Draining
                    && !self.stopping.contains(&key)
                    && agents
                        .issue(
                            node,
                            CommandKind::StopReplica {
                                id: r.id.clone(),
                                grace_ms: STOP_GRACE_MS,
                            },
                        )
                        .await
                        .is_ok()
                {
                    self.stopping.insert(key.clone());
                }
                // What a node that is down reports is not shown nor routed
                // to, and a replica left elsewhere never hides the one
                // where the placement is.
                if down.contains(node) || (!placed_here && views.contains_key(&r.id)) {
                    continue;
                }
                // An operator hears when a replica's limit starts refusing
                // what it asks for (once per rise, not per window).
                if let Some(m) = memory.as_ref().filter(|_| !gone) {
                    let seen = self
                        .refused
                        .insert(key.clone(), m.refused_allocations)
                        .unwrap_or(0);
                    if m.refused_allocations > seen {
                        let limit = m.limit_bytes.map_or("none".into(), |b| format!("{b} B"));
                        let summary = format!(
                            "replica {} on {node} had {} allocation(s) refused at its memory limit ({limit}), {} in all ({} B)",
                            r.id,
                            m.refused_allocations - seen,
                            m.refused_allocations,
                            m.refused_bytes
                        );
                        api.alert("memory_refused", Some(node), vec![r.id.clone()], summary)
                            .await;
                    }
                }
                let model = wanted
                    .get(&r.id)
                    .map(|(_, m, ..)| m.clone())
                    .or_else(|| api.replica(&r.id).map(|v| v.model))
                    .unwrap_or_default();
                views.insert(
                    r.id.clone(),
                    ReplicaView {
                        node: node.clone(),
                        state: r.state.name().to_string(),
                        pid: r.pid,
                        url: match (addr, r.port) {
                            (Some(a), Some(p)) => Some(match a {
                                std::net::IpAddr::V6(v6) => format!("http://[{v6}]:{p}"),
                                v4 => format!("http://{v4}:{p}"),
                            }),
                            _ => None,
                        },
                        exit: r.exit.clone(),
                        gpus: r.gpus.clone(),
                        mps_percent: r.mps_percent,
                        model,
                        serving: serving.clone(),
                        gateway: None,
                        memory: memory.clone(),
                    },
                );
            }
        }
        self.stopping.retain(|k| live.contains(k));
        self.refused.retain(|k, _| live.contains(k));
        api.set_replicas(views);
    }
}
