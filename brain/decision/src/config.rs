//! The decision core's configuration (validated once, passed in).

use crate::classify::Classes;
use crate::explain::NodeShape;
use crate::manifest::ManifestConfig;
use crate::mix::Shape;
use crate::score::Weights;
use crate::workload::Invalid;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// When a node may have its MPS servers reconfigured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    /// Reconfigure only below this many requests per second on the node…
    pub max_qps: f64,
    /// …and below this error ratio (0–1)…
    pub max_error_rate: f64,
    /// …with no queued workload of this priority or more important —
    /// or inside the node's maintenance window, whatever the load.
    pub protect_queued: crate::Priority,
}

/// Moves (repacks, reconfigurations) allowed per window; tripping opens it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Breaker {
    pub max_moves: u32,
    pub window_ms: u64,
    /// How long it stays open once the move budget is spent.
    pub cooldown_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub classes: Classes,
    pub weights: Weights,
    /// Shares come from MPS pools: every workload on a GPU has its MPS
    /// server's share, and another share needs the server reconfigured.
    /// Off: shares of any size share a GPU (the shim's budgets or time
    /// slicing keep them apart), as in the openb trace.
    pub mps_pools: bool,
    /// Percent of a GPU that may be placed where the shim throttles.
    pub oversubscription_pct: u32,
    /// CPU (milli) a GPU's worth of work needs, for the CPU-balance term,
    /// until the mix has shown what requests ask.
    pub cpu_per_gpu_milli: u64,
    /// The workload mix (see [`crate::mix`]): given, it is fixed; empty,
    /// the core starts from the share grid at `cpu_per_gpu_milli` and
    /// learns it from the requests it places.
    pub mix: Vec<Shape>,
    /// How far a partly used GPU's CPU need follows the requests small
    /// enough for it (1) rather than the mix's flat CPU per GPU (0).
    pub cpu_need_by_size: f64,
    /// Moving placed workloads to make room (repack), and evicting lower
    /// priorities (preemption), are allowed.
    pub repack: bool,
    pub preemption: bool,
    pub gate: Gate,
    pub breaker: Breaker,
    /// Tenant → GPU-hours it may hold (charged share × GPUs × expected
    /// duration at placement, the unused part refunded on removal).
    pub quotas: BTreeMap<String, f64>,
    /// Ask for nodes when nothing fits (else only queue).
    pub scale_out: bool,
    /// Replicas of one model a node may hold (anti-affinity; at least 1).
    pub replicas_per_node: u32,
    /// The nodes scale-out may ask for (the cloud's instance types, the
    /// cluster's node pools). A request that neither a known node nor one
    /// of these could hold when empty is rejected, not queued.
    pub scale_out_shapes: Vec<NodeShape>,
    pub manifest: ManifestConfig,
    /// Candidates kept in each explanation.
    pub explain_top: usize,
    /// Repack plans tried (and reconfigurable GPUs offered) at most per
    /// decision.
    pub search_limit: usize,
    /// The control loop (see [`crate::control`]).
    pub control: crate::control::ControlConfig,
    /// When a node counts as down (see [`crate::Core::node_down`]).
    pub failover: Failover,
    /// Replicas added and removed by load (see [`crate::scale`]).
    pub scale: crate::scale::ScaleConfig,
    /// MPS reconfiguration of running workloads (see [`crate::reconfig`]).
    pub reconfig: crate::reconfig::ReconfigConfig,
}

/// When a node is down: its agent silent too long, or a GPU's XID that is
/// not an application's own error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Failover {
    /// No window from its agent for this long (its windows come every
    /// 100 ms): the node is down. 0: never (a silent node keeps its work).
    pub node_timeout_ms: u64,
    /// XIDs that an application's own fault causes (NVIDIA's device plugin
    /// for Kubernetes skips the same ones: 13 graphics engine exception,
    /// 31 MMU fault, 43 GPU stopped processing, 45 preemptive cleanup, 68
    /// video processor exception, 109 context switch timeout); any other
    /// XID takes the node down until its agent starts a new session.
    pub application_xids: Vec<u32>,
    /// A GPU whose MPS configuration holds clients under the brain's pool
    /// (a server or the default below it) this long is given up: its
    /// workloads go to GPUs of their own elsewhere. 0: never.
    pub mps_conflict_ms: u64,
}

impl Default for Failover {
    fn default() -> Failover {
        Failover {
            node_timeout_ms: 3_000,
            application_xids: vec![13, 31, 43, 45, 68, 109],
            mps_conflict_ms: 10_000,
        }
    }
}

impl Failover {
    /// Whether an XID is a device fault (not the application's own).
    pub fn critical(&self, xid: u32) -> bool {
        !self.application_xids.contains(&xid)
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            classes: Classes::default(),
            weights: Weights::default(),
            mps_pools: true,
            oversubscription_pct: 120,
            cpu_per_gpu_milli: 8_000,
            mix: Vec::new(),
            cpu_need_by_size: 0.7,
            repack: true,
            preemption: true,
            gate: Gate {
                max_qps: 50.0,
                max_error_rate: 0.01,
                protect_queued: crate::Priority::P1,
            },
            breaker: Breaker {
                max_moves: 16,
                window_ms: 60_000,
                cooldown_ms: 300_000,
            },
            quotas: BTreeMap::new(),
            scale_out: true,
            replicas_per_node: 1,
            scale_out_shapes: default_shapes(),
            manifest: ManifestConfig::default(),
            explain_top: 3,
            search_limit: 8,
            control: crate::control::ControlConfig::default(),
            failover: Failover::default(),
            scale: crate::scale::ScaleConfig::default(),
            reconfig: crate::reconfig::ReconfigConfig::default(),
        }
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), Invalid> {
        self.classes.validate()?;
        self.weights.validate()?;
        self.control.validate()?;
        self.scale.validate()?;
        self.reconfig.validate()?;
        if self.failover.node_timeout_ms != 0
            && !(500..=3_600_000).contains(&self.failover.node_timeout_ms)
        {
            return Err(Invalid::new(
                "failover.node_timeout_ms",
                "must be 0 (never) or 500 to 3600000 (an hour)",
            ));
        }
        if self.replicas_per_node == 0 {
            return Err(Invalid::new("replicas_per_node", "must be at least 1"));
        }
        if !(100..=200).contains(&self.oversubscription_pct) {
            return Err(Invalid::new("oversubscription_pct", "must be 100 to 200"));
        }
        if self.cpu_per_gpu_milli == 0 {
            return Err(Invalid::new("cpu_per_gpu_milli", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.cpu_need_by_size) {
            return Err(Invalid::new("cpu_need_by_size", "must be 0 to 1"));
        }
        for (i, m) in self.mix.iter().enumerate() {
            let field = |f: &str| format!("mix[{i}].{f}");
            if m.gpus > 16 {
                return Err(Invalid::new(&field("gpus"), "must be 0 to 16"));
            }
            let ok = match m.gpus {
                0 => m.share_pct == 0,
                1 => (1..=100).contains(&m.share_pct),
                _ => m.share_pct == 100,
            };
            if !ok {
                return Err(Invalid::new(
                    &field("share_pct"),
                    "must be 0 without GPUs, 1 to 100 for one GPU, 100 for several",
                ));
            }
            if m.count == 0 {
                return Err(Invalid::new(&field("count"), "must be at least 1"));
            }
        }
        if !(self.gate.max_qps.is_finite() && self.gate.max_qps >= 0.0) {
            return Err(Invalid::new("gate.max_qps", "must be a number ≥ 0"));
        }
        if !(0.0..=1.0).contains(&self.gate.max_error_rate) {
            return Err(Invalid::new("gate.max_error_rate", "must be 0 to 1"));
        }
        if self.breaker.window_ms == 0 {
            return Err(Invalid::new("breaker.window_ms", "must be at least 1"));
        }
        for (t, q) in &self.quotas {
            if !(q.is_finite() && *q >= 0.0) {
                return Err(Invalid::new(
                    &format!("quotas.{t}"),
                    "must be GPU-hours ≥ 0",
                ));
            }
        }
        for (i, n) in self.scale_out_shapes.iter().enumerate() {
            let field = |f: &str| format!("scale_out_shapes[{i}].{f}");
            if crate::spec::lookup(&n.gpu_model).is_none() {
                return Err(Invalid::new(
                    &field("gpu_model"),
                    &format!(
                        "{} is not in the brain's GPU table ({})",
                        n.gpu_model,
                        crate::spec::families()
                    ),
                ));
            }
            if !(1..=crate::rules::NODE_GPUS.max as u32).contains(&n.gpus) {
                return Err(Invalid::new(
                    &field("gpus"),
                    &format!("must be 1 to {}", crate::rules::NODE_GPUS.max),
                ));
            }
            crate::rules::NODE_CPU_MILLI.check(&field("cpu_milli"), n.cpu_milli)?;
            crate::rules::NODE_MEMORY_MIB.check(&field("memory_mib"), n.memory_mib)?;
        }
        if self.explain_top == 0 {
            return Err(Invalid::new("explain_top", "must be at least 1"));
        }
        Ok(())
    }
}

/// Eight-GPU instance types of the large clouds (AWS p5, p5e, p4de, g6e,
/// g6, g5, g4dn, p3 sizes).
fn default_shapes() -> Vec<NodeShape> {
    let s = |gpu_model: &str, cpus: u64, gib: u64| NodeShape {
        gpu_model: gpu_model.to_string(),
        gpus: 8,
        cpu_milli: cpus * 1000,
        memory_mib: gib * 1024,
    };
    vec![
        s("H200", 192, 2048),
        s("H100", 192, 2048),
        s("A100", 96, 1152),
        s("L40S", 192, 1536),
        s("L4", 192, 768),
        s("A10", 192, 768),
        s("T4", 96, 384),
        s("V100", 64, 488),
    ]
}
