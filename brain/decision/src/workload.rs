//! What a placement request says about the workload, and its validation.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// P0 is the most important; `P0 < P3` in the derived order.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
pub enum Priority {
    P0,
    P1,
    P2,
    P3,
}

impl Priority {
    /// Whether a workload of this priority is more important than `other`.
    pub fn outranks(self, other: Priority) -> bool {
        self < other
    }
}

/// A workload to place.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Workload name: a DNS label (lowercase letters, digits, `-`), ≤ 63.
    pub name: String,
    /// The model served; replicas of one model share it (anti-affinity).
    pub model_id: String,
    /// Model weights in GB (also what must fit in GPU memory); 0 for work
    /// that holds none (CPU-only work; trace pods, whose GPU memory the
    /// trace does not give).
    pub model_size_gb: f64,
    pub batch: u32,
    pub seq_len: u32,
    pub priority: Priority,
    /// Latency objective (ms); none for work without one (batch, best
    /// effort).
    #[serde(default)]
    pub sla_ms: Option<u32>,
    pub tenant: String,
    /// Expected run time (s): the GPU-hours charged to the tenant's quota.
    pub expected_duration_s: u64,
    /// Nodes (by name) or node labels (`key=value`) that hold its data.
    #[serde(default)]
    pub locality: Vec<String>,
    /// GPU model families it may run on (`H100`, `A100`, …); empty: any.
    #[serde(default)]
    pub accepted_models: Vec<String>,
    #[serde(default = "default_cpu")]
    pub cpu_milli: u64,
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
    /// GPUs on one node: 0 (CPU only), 1 (a share of one, the default) or
    /// more (whole, exclusive GPUs).
    #[serde(default)]
    pub gpus: Option<u32>,
    /// An exact MPS share (%) instead of the classification's.
    #[serde(default)]
    pub share_pct: Option<u32>,
    /// The device memory (GB, per GPU) its replica may hold — the weights
    /// and what it allocates beside them: the shim's limit on the replica
    /// (and its MPS pinned-memory limit), and what placement counts of the
    /// GPU's memory. Absent: `model_size_gb`, unenforced.
    #[serde(default)]
    pub gpu_memory_gb: Option<f64>,
    /// The most it may cost per hour (GPU price × share × GPUs).
    #[serde(default)]
    pub max_cost_per_hour: Option<f64>,
    /// May a more important workload preempt it? Default: P2 and P3 may be.
    #[serde(default)]
    pub preemptible: Option<bool>,
    /// Container image for the Pod manifest.
    #[serde(default)]
    pub image: Option<String>,
    /// What to run where no Kubernetes does: once placed, the node's agent
    /// starts it as a replica with the GPUs and share it was given.
    #[serde(default)]
    pub launch: Option<Launch>,
}

/// A replica's process: the node's agent runs it with the placement's
/// GPUs (`CUDA_VISIBLE_DEVICES`) and MPS share, the shim preloaded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Launch {
    /// The executable (a path, or a name on the agent's `PATH`).
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// More environment, over the agent's own.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// The port it serves HTTP on, on its node (`/health`, `/metrics`,
    /// the requests the gateway routes); none: it serves nothing.
    #[serde(default)]
    pub port: Option<u16>,
}

impl Launch {
    pub fn validate(&self) -> Result<(), Invalid> {
        use crate::rules::*;
        LAUNCH_COMMAND.check("launch.command", &self.command)?;
        LAUNCH_ARGS.check("launch.args", self.args.len())?;
        for (i, a) in self.args.iter().enumerate() {
            LAUNCH_ARG.check(&format!("launch.args[{i}]"), a)?;
        }
        LAUNCH_ENV.check("launch.env", self.env.len())?;
        for (k, v) in &self.env {
            ENV_NAME.check(&format!("launch.env.{k}"), k)?;
            ENV_VALUE.check(&format!("launch.env.{k}"), v)?;
        }
        if let Some(p) = self.port {
            PORT.check("launch.port", p as u64)?;
        }
        Ok(())
    }
}

fn default_cpu() -> u64 {
    1000
}

fn default_memory() -> u64 {
    4096
}

impl Profile {
    pub fn gpus(&self) -> u32 {
        self.gpus.unwrap_or(1)
    }

    /// The GPU memory (GB, in all) placement counts: the limit where one is
    /// set, else the weights.
    pub fn gpu_memory(&self) -> f64 {
        match self.gpu_memory_gb {
            Some(gb) => gb * self.gpus().max(1) as f64,
            None => self.model_size_gb,
        }
    }

    /// Latency-sensitive: it has an SLA or runs at P0 or P1. The control
    /// loop keeps such work inside its SLA, and its replicas' launches
    /// hold best-effort ones back on their GPU.
    pub fn latency_sensitive(&self) -> bool {
        self.sla_ms.is_some() || matches!(self.priority, Priority::P0 | Priority::P1)
    }

    /// Whether it accepts a GPU named `model` (its families; none: any).
    pub fn accepts(&self, model: &str) -> bool {
        self.accepted_models.is_empty()
            || self
                .accepted_models
                .iter()
                .any(|m| crate::spec::is_family(model, m))
    }

    pub fn preemptible(&self) -> bool {
        self.preemptible
            .unwrap_or(matches!(self.priority, Priority::P2 | Priority::P3))
    }

    /// Checks what serde cannot: ranges and formats ([`crate::rules`],
    /// which the OpenAPI document publishes). The error names the field.
    pub fn validate(&self) -> Result<(), Invalid> {
        use crate::rules::*;
        DNS_LABEL.check("name", &self.name)?;
        MODEL_ID.check("model_id", &self.model_id)?;
        MODEL_SIZE_GB.check("model_size_gb", self.model_size_gb)?;
        BATCH.check("batch", self.batch as u64)?;
        SEQ_LEN.check("seq_len", self.seq_len as u64)?;
        if let Some(sla) = self.sla_ms {
            SLA_MS.check("sla_ms", sla as u64)?;
        }
        DNS_LABEL.check("tenant", &self.tenant)?;
        DURATION_S.check("expected_duration_s", self.expected_duration_s)?;
        HINTS.check("locality", self.locality.len())?;
        for (i, l) in self.locality.iter().enumerate() {
            LOCALITY.check(&format!("locality[{i}]"), l)?;
        }
        HINTS.check("accepted_models", self.accepted_models.len())?;
        for (i, m) in self.accepted_models.iter().enumerate() {
            GPU_MODEL.check(&format!("accepted_models[{i}]"), m)?;
        }
        CPU_MILLI.check("cpu_milli", self.cpu_milli)?;
        MEMORY_MIB.check("memory_mib", self.memory_mib)?;
        if let Some(g) = self.gpus {
            WORKLOAD_GPUS.check("gpus", g as u64)?;
        }
        if self.gpus() == 0 && self.model_size_gb > 0.0 {
            return Err(Invalid::new(
                "model_size_gb",
                "must be 0 with gpus 0 (no GPU to hold weights)",
            ));
        }
        if let Some(s) = self.share_pct {
            if self.gpus() == 0 {
                return Err(Invalid::new("share_pct", "must be absent with gpus 0"));
            }
            SHARE_PCT.check("share_pct", s as u64)?;
            if self.gpus() > 1 && s != 100 {
                return Err(Invalid::new(
                    "share_pct",
                    "must be 100 (or absent) with gpus > 1",
                ));
            }
        }
        if let Some(gb) = self.gpu_memory_gb {
            GPU_MEMORY_GB.check("gpu_memory_gb", gb)?;
            if self.gpus() == 0 {
                return Err(Invalid::new("gpu_memory_gb", "must be absent with gpus 0"));
            }
            if gb * (self.gpus() as f64) < self.model_size_gb {
                return Err(Invalid::new(
                    "gpu_memory_gb",
                    "must hold the model's weights (model_size_gb, spread over its gpus)",
                ));
            }
        }
        if let Some(c) = self.max_cost_per_hour {
            COST_PER_HOUR.check("max_cost_per_hour", c)?;
        }
        if let Some(img) = &self.image {
            IMAGE.check("image", img)?;
        }
        if let Some(l) = &self.launch {
            l.validate()?;
        }
        Ok(())
    }
}

/// A request the core refuses: which field, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct Invalid {
    pub field: String,
    pub problem: String,
}

impl Invalid {
    pub fn new(field: &str, problem: &str) -> Invalid {
        Invalid {
            field: field.to_string(),
            problem: problem.to_string(),
        }
    }
}
