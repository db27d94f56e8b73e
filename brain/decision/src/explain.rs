//! What every decision records about itself.

use crate::classify::Class;
use crate::score::{Slot, Terms};
use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    /// A: a compatible slot (or an idle GPU) was free.
    Direct,
    /// The MPS server of a GPU is reconfigured for the request's size.
    Reconfigure,
    /// B: other workloads move to make room.
    Repack,
    /// Lower priorities were evicted (and queued).
    Preempt,
    /// C: no room; a node of this shape is asked for, the workload waits.
    ScaleOut,
    /// No room; the workload waits in the priority queue.
    Queue,
    /// It can never be placed as asked (quota, cost, no such GPU).
    Reject,
    /// A placement was deleted.
    Remove,
    /// An operator's control.
    Control,
    /// A workload taken off a node that went down (its new placement, or
    /// its place in the queue, follows).
    Evacuate,
}

impl Path {
    pub const ALL: [Path; 10] = [
        Path::Direct,
        Path::Reconfigure,
        Path::Repack,
        Path::Preempt,
        Path::ScaleOut,
        Path::Queue,
        Path::Reject,
        Path::Remove,
        Path::Control,
        Path::Evacuate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Reconfigure => "reconfigure",
            Path::Repack => "repack",
            Path::Preempt => "preempt",
            Path::ScaleOut => "scale_out",
            Path::Queue => "queue",
            Path::Reject => "reject",
            Path::Remove => "remove",
            Path::Control => "control",
            Path::Evacuate => "evacuate",
        }
    }

    /// The workload runs now.
    pub fn placed(self) -> bool {
        matches!(
            self,
            Path::Direct | Path::Reconfigure | Path::Repack | Path::Preempt
        )
    }
}

/// A candidate GPU with its score.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Candidate {
    pub node: String,
    /// Its (first) GPU; none for a workload without GPUs.
    pub gpu: Option<u32>,
    pub slot: Slot,
    pub score: f64,
    pub terms: Terms,
    /// The terms times their weights (they sum to `score`).
    pub weighted: Terms,
}

/// Candidates a constraint ruled out.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct RuledOut {
    pub constraint: String,
    /// Nodes (or GPUs, for GPU constraints) it ruled out.
    pub count: u32,
    /// The first few, `node` or `node/gpu`.
    pub examples: Vec<String>,
}

/// A workload moved by a repack.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Move {
    pub workload: String,
    pub from_node: String,
    pub from_gpu: u32,
    pub to_node: String,
    pub to_gpu: u32,
    /// Weights to load again at the destination (GB).
    pub reload_gb: f64,
}

/// One step of a plan, in order.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Step {
    pub action: String,
    pub node: String,
    pub gpu: Option<u32>,
    pub workload: Option<String>,
    pub share_pct: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, ToSchema)]
pub struct Plan {
    pub moves: Vec<Move>,
    pub steps: Vec<Step>,
    /// Reload cost: weights loaded again, and workloads restarted.
    pub reload_gb: f64,
    pub restarts: u32,
}

/// A node to add: scale-out asks for one of the configured shapes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeShape {
    /// A GPU family of the brain's table (`H100`).
    pub gpu_model: String,
    pub gpus: u32,
    pub cpu_milli: u64,
    pub memory_mib: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Decision {
    /// Order of decisions in this core.
    pub seq: u64,
    pub at_ms: u64,
    pub workload: String,
    pub path: Path,
    pub summary: String,
    pub class: Option<Class>,
    pub node: Option<String>,
    pub gpus: Vec<u32>,
    pub share_pct: Option<u32>,
    /// GPUs looked at, and how many passed every constraint.
    pub considered: u32,
    pub feasible: u32,
    /// The best candidates, best first, with their score breakdowns.
    pub top: Vec<Candidate>,
    pub ruled_out: Vec<RuledOut>,
    pub plan: Option<Plan>,
    pub preempted: Vec<String>,
    pub scale_out: Option<NodeShape>,
    /// The Pod to bind (Kubernetes' `v1.Pod`); `null` unless it was placed.
    #[schema(value_type = Option<Object>)]
    pub manifest: Option<Pod>,
}

impl Decision {
    pub(crate) fn new(
        seq: u64,
        at_ms: u64,
        workload: &str,
        path: Path,
        summary: String,
    ) -> Decision {
        Decision {
            seq,
            at_ms,
            workload: workload.to_string(),
            path,
            summary,
            class: None,
            node: None,
            gpus: Vec::new(),
            share_pct: None,
            considered: 0,
            feasible: 0,
            top: Vec::new(),
            ruled_out: Vec::new(),
            plan: None,
            preempted: Vec::new(),
            scale_out: None,
            manifest: None,
        }
    }
}
