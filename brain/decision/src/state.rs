//! The cluster as the decision core holds it: nodes, their GPUs with MPS
//! pools, and the placements on them.

use crate::classify::Class;
use crate::spec;
use crate::workload::{Invalid, Profile};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// The most GPUs a node may declare (the largest systems have 72; the
/// score's per-node counters are 16 bits).
pub const MAX_GPUS_PER_NODE: usize = crate::rules::NODE_GPUS.max;

/// A node as it is declared (configuration, an agent's inventory, a trace).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub gpus: Vec<GpuSpec>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuSpec {
    /// The GPU's name as NVML reports it (`NVIDIA H100 80GB HBM3`).
    pub model: String,
    /// Unknown values come from the GPU table.
    #[serde(default)]
    pub sms: Option<u32>,
    #[serde(default)]
    pub memory_gb: Option<f64>,
    #[serde(default)]
    pub tdp_w: Option<f64>,
    /// The shim enforces SM-time budgets here: the GPU may be
    /// oversubscribed up to the configured limit.
    #[serde(default)]
    pub throttling: bool,
}

impl NodeSpec {
    /// Checks the declaration against [`crate::rules`] (which the OpenAPI
    /// document publishes); the error names the field.
    pub fn validate(&self) -> Result<(), Invalid> {
        use crate::rules::*;
        DNS_SUBDOMAIN.check("name", &self.name)?;
        NODE_CPU_MILLI.check("cpu_milli", self.cpu_milli)?;
        NODE_MEMORY_MIB.check("memory_mib", self.memory_mib)?;
        LABELS.check("labels", self.labels.len())?;
        for (k, v) in &self.labels {
            LABEL_KEY.check("labels", k)?;
            LABEL_VALUE.check(&format!("labels.{k}"), v)?;
        }
        NODE_GPUS.check("gpus", self.gpus.len())?;
        for (i, g) in self.gpus.iter().enumerate() {
            let field = |f: &str| format!("gpus[{i}].{f}");
            GPU_MODEL.check(&field("model"), &g.model)?;
            if let Some(s) = g.sms {
                GPU_SMS.check(&field("sms"), s as u64)?;
            }
            if let Some(m) = g.memory_gb {
                GPU_MEMORY_GB.check(&field("memory_gb"), m)?;
            }
            if let Some(t) = g.tdp_w {
                GPU_TDP_W.check(&field("tdp_w"), t)?;
            }
            if spec::lookup(&g.model).is_none()
                && (g.sms.is_none() || g.memory_gb.is_none() || g.tdp_w.is_none())
            {
                return Err(Invalid::new(
                    &field("model"),
                    &format!(
                        "{} is not in the brain's GPU table ({}): give sms, memory_gb and tdp_w",
                        g.model,
                        spec::families()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// One GPU's state.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Gpu {
    pub index: u32,
    pub model: String,
    /// `nvidia.com/gpu.product`.
    pub product: String,
    pub sms: u32,
    pub memory_gb: f64,
    pub tdp_w: f64,
    /// Dense FP16 TFLOPS per watt (0 when the model is not in the table).
    pub tflops_per_watt: f64,
    /// The core's number for `model` (equal names, equal numbers).
    #[serde(skip)]
    pub(crate) model_no: u32,
    pub price_per_hour: f64,
    pub throttling: bool,
    /// Last measured power draw (W) and utilisation (0–1), if any.
    pub power_w: Option<f64>,
    pub utilisation: Option<f64>,
    /// The share (%) its MPS server is configured for; `None`: no server yet.
    pub pool: Option<u32>,
    /// Held whole by one workload.
    pub exclusive: bool,
    /// Why its MPS control daemon is not serving, while it is not: no
    /// shares here (only a workload holding it whole), until it is back.
    pub mps_down: Option<String>,
    /// Down for a conflicting MPS configuration (its daemon answers, but
    /// would hold a client under its share): nothing at all is placed here,
    /// a whole-GPU workload included, until it would give a client the
    /// whole GPU again.
    pub mps_conflict: bool,
    /// Percent of the GPU placed (may exceed 100 where throttling allows).
    pub used_pct: u32,
    /// Model weights placed on it (GB).
    pub used_gb: f64,
    /// Placement ids on this GPU.
    pub workloads: Vec<String>,
    /// What repack and preemption searches need of each, in `workloads`'
    /// order (no lookups while sweeping the cluster).
    #[serde(skip)]
    pub(crate) residents: Vec<Resident>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Resident {
    pub share: u32,
    pub priority: crate::Priority,
    pub pinned: bool,
    pub preemptible: bool,
    pub gb: f64,
}

impl Gpu {
    fn from_spec(index: u32, g: &GpuSpec) -> Gpu {
        let row = spec::lookup(&g.model);
        let tdp = g.tdp_w.or(row.map(|r| r.tdp_w)).unwrap_or(1.0);
        Gpu {
            index,
            model: g.model.clone(),
            product: spec::product_label(&g.model),
            sms: g.sms.or(row.map(|r| r.sms)).unwrap_or(0),
            memory_gb: g.memory_gb.or(row.map(|r| r.memory_gb)).unwrap_or(0.0),
            tdp_w: tdp,
            tflops_per_watt: row.map(|r| r.tflops / tdp).unwrap_or(0.0),
            model_no: 0,
            price_per_hour: row.map(|r| r.price_per_hour).unwrap_or(0.0),
            throttling: g.throttling,
            power_w: None,
            utilisation: None,
            pool: None,
            exclusive: false,
            mps_down: None,
            mps_conflict: false,
            used_pct: 0,
            used_gb: 0.0,
            workloads: Vec::new(),
            residents: Vec::new(),
        }
    }

    /// Percent that can be placed: 100, or the oversubscription limit where
    /// the shim throttles.
    pub fn capacity_pct(&self, oversubscription_pct: u32) -> u32 {
        if self.throttling {
            oversubscription_pct.max(100)
        } else {
            100
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Node {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub cpu_free: u64,
    pub memory_free: u64,
    pub healthy: bool,
    pub cordoned: bool,
    /// Why the node is down, while it is (its agent went silent, a GPU
    /// reported a critical XID): nothing is placed there, and what ran
    /// there was placed again elsewhere ([`crate::Core::node_down`]).
    pub down: Option<String>,
    /// Requests per second its inference servers report, and their error
    /// ratio (0–1): the reconfiguration safety gate reads them. `None`
    /// until a source reports them (unknown is never taken as zero).
    pub qps: Option<f64>,
    pub error_rate: Option<f64>,
    /// Requests waiting in its inference servers' queues.
    pub queue_depth: Option<f64>,
    /// Maintenance window [from, to) in ms of the core's clock.
    pub maintenance: Option<(u64, u64)>,
    pub gpus: Vec<Gpu>,
    /// Model ids placed here, with their replica counts (anti-affinity).
    pub replicas: BTreeMap<String, u32>,
}

impl Node {
    pub fn from_spec(s: &NodeSpec) -> Node {
        Node {
            name: s.name.clone(),
            labels: s.labels.clone(),
            cpu_milli: s.cpu_milli,
            memory_mib: s.memory_mib,
            cpu_free: s.cpu_milli,
            memory_free: s.memory_mib,
            healthy: true,
            cordoned: false,
            down: None,
            qps: None,
            error_rate: None,
            queue_depth: None,
            maintenance: None,
            gpus: s
                .gpus
                .iter()
                .enumerate()
                .map(|(i, g)| Gpu::from_spec(i as u32, g))
                .collect(),
            replicas: BTreeMap::new(),
        }
    }

    /// Whether a data-locality hint names this node or one of its labels.
    pub fn local_to(&self, hints: &[String]) -> bool {
        hints.iter().any(|h| {
            *h == self.name
                || h.split_once('=')
                    .is_some_and(|(k, v)| self.labels.get(k).is_some_and(|x| x == v))
        })
    }
}

/// Telemetry the core takes for a node (from the agents' windows).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeLoad {
    /// `None`: no source reports it (yet).
    pub qps: Option<f64>,
    pub error_rate: Option<f64>,
    pub queue_depth: Option<f64>,
    pub healthy: bool,
    /// (GPU index, utilisation 0–1, power W).
    pub gpus: Vec<(u32, f64, f64)>,
}

/// A workload that holds GPU share.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Placed {
    pub id: String,
    pub profile: Profile,
    pub class: Class,
    pub node: String,
    pub gpus: Vec<u32>,
    pub share_pct: u32,
    pub at_ms: u64,
    /// GPU-hours charged to the tenant at placement.
    pub gpu_hours: f64,
    /// Operators pinned it: never moved or preempted.
    pub pinned: bool,
    /// Its replica's routing weight, when an operator set one (the
    /// `weight` control); unset: the default.
    #[serde(default)]
    pub weight: Option<u32>,
    /// The scaler added it as another replica of its model (so the scaler
    /// may remove it; see [`crate::scale`]).
    #[serde(default)]
    pub scaled: bool,
    /// Its replica's id on its agent where that is not the placement's name:
    /// a reconfiguration's shadow that became the workload keeps running
    /// under the shadow's name.
    #[serde(default)]
    pub replica: Option<String>,
    /// It is a reconfiguration's shadow of this workload (see
    /// [`crate::reconfig`]).
    #[serde(default)]
    pub shadow_of: Option<String>,
    /// The outside scheduler that bound it (kube-scheduler, through the
    /// extender): its pod is that scheduler's, not one the brain creates.
    #[serde(default)]
    pub bound_by: Option<String>,
}

impl Placed {
    /// The id its replica runs under on its agent.
    pub fn replica_id(&self) -> &str {
        self.replica.as_deref().unwrap_or(&self.id)
    }
}

/// A workload waiting for capacity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Queued {
    pub id: String,
    pub profile: Profile,
    pub since_ms: u64,
    /// Arrival order among equal priorities.
    pub seq: u64,
}

pub(crate) fn check_id(id: &str) -> Result<(), Invalid> {
    crate::rules::DNS_LABEL.check("name", id)
}
