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
use std::collections::{BTreeMap, HashSet};
use utoipa::ToSchema;
use vagus_proto::wire::{CommandKind, ReplicaSpec, ReplicaState, ReplicaWindow};

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
}

impl ReplicaView {
    /// Whether routes may send it new requests.
    pub fn takes_requests(&self) -> bool {
        matches!(self.state.as_str(), "ready" | "running")
    }
}

/// What the brain asked for, so that it asks once.
#[derive(Default)]
pub struct Executor {
    started: HashSet<String>,
    stopping: HashSet<(String, String)>,
}

/// The agent's spec for placement `p`, if it has a launch spec. A share of
/// one GPU is an MPS percentage where the core keeps MPS pools; without
/// them (`mps_pools = false`) a share is the GPU time the control loop
/// budgets, and the replica runs with the whole GPU's SMs.
fn spec_of(p: &vagus_decision::Placed, mps_pools: bool) -> Option<ReplicaSpec> {
    let l = p.profile.launch.as_ref()?;
    Some(ReplicaSpec {
        id: p.id.clone(),
        command: l.command.clone(),
        args: l.args.clone(),
        env: l.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
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
        let wanted: BTreeMap<String, (String, String, ReplicaSpec)> = api.with_core(|c| {
            let pools = c.config().mps_pools;
            c.placements()
                .filter_map(|p| {
                    let s = spec_of(p, pools)?;
                    Some((
                        p.id.clone(),
                        (p.node.clone(), p.profile.model_id.clone(), s),
                    ))
                })
                .collect()
        });
        type Reported = Vec<(
            String,
            Option<std::net::IpAddr>,
            Vec<(ReplicaWindow, Option<ServingView>)>,
        )>;
        let reported: Reported = {
            let st = agents.state.lock().unwrap_or_else(|e| e.into_inner());
            st.ingest
                .nodes
                .iter()
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
                            (r.clone(), serving)
                        })
                        .collect();
                    (n.clone(), s.addr, rs)
                })
                .collect()
        };
        let runs = |node: &str, id: &str| {
            reported
                .iter()
                .any(|(n, _, rs)| n == node && rs.iter().any(|(r, _)| r.id == id))
        };
        for (id, (node, _, spec)) in &wanted {
            if self.started.contains(id) || runs(node, id) {
                self.started.insert(id.clone());
                continue;
            }
            if agents
                .issue(node, CommandKind::StartReplica(spec.clone()))
                .await
                .is_ok()
            {
                self.started.insert(id.clone());
            }
        }
        self.started.retain(|id| wanted.contains_key(id));
        let mut views = BTreeMap::new();
        let mut live = HashSet::new();
        for (node, addr, rs) in &reported {
            for (r, serving) in rs {
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
                let model = wanted
                    .get(&r.id)
                    .map(|(_, m, _)| m.clone())
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
                    },
                );
            }
        }
        self.stopping.retain(|k| live.contains(k));
        api.set_replicas(views);
    }
}
