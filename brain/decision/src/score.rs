//! The weighted node score: each candidate GPU gets its terms (0–1, the
//! fragmentation term a signed change) and their weighted sum.

use crate::state::Gpu;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// w1…w6 of the design plus the fragmentation weight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Weights {
    /// w1: TFLOPS per watt of the GPU model, over the table's best.
    pub efficiency: f64,
    /// w2: the GPU is the class's preferred model.
    pub affinity: f64,
    /// w3: 1 − utilisation of the GPU.
    pub headroom: f64,
    /// w4: power headroom over TDP.
    pub power: f64,
    /// w5: MPS compatibility: a configured slot of the right size.
    pub mps: f64,
    /// w6: the node holds the workload's data.
    pub locality: f64,
    /// The fragmentation term: FGD's score (0–1, 0.5 for no change) of
    /// the drop in the node's expected GPU capacity that typical requests
    /// could not use (see [`crate::mix`]).
    pub fragmentation: f64,
    /// CPU balance: minus the GPU capacity the placement leaves without
    /// the CPU to use it (the trace replay found this is what FGD misses:
    /// CPU-heavy work on GPU-dense nodes strands their GPUs).
    pub cpu_balance: f64,
    /// The score's resolution: a candidate's score is its weighted sum
    /// truncated to a multiple of this, so candidates within one quantum
    /// tie, and ties go to the first node in the cluster's order (0: no
    /// truncation).
    #[serde(default)]
    pub quantum: f64,
}

impl Default for Weights {
    fn default() -> Weights {
        Weights {
            efficiency: 0.10,
            affinity: 0.15,
            headroom: 0.05,
            power: 0.05,
            mps: 0.25,
            locality: 0.15,
            fragmentation: 0.25,
            cpu_balance: 0.5,
            quantum: 0.0,
        }
    }
}

impl Weights {
    pub fn validate(&self) -> Result<(), crate::Invalid> {
        let all = [
            ("weights.efficiency", self.efficiency),
            ("weights.affinity", self.affinity),
            ("weights.headroom", self.headroom),
            ("weights.power", self.power),
            ("weights.mps", self.mps),
            ("weights.locality", self.locality),
            ("weights.fragmentation", self.fragmentation),
            ("weights.cpu_balance", self.cpu_balance),
            ("weights.quantum", self.quantum),
        ];
        for (name, w) in all {
            if !(w.is_finite() && w >= 0.0) {
                return Err(crate::Invalid::new(name, "must be a number ≥ 0"));
            }
        }
        Ok(())
    }
}

/// One candidate's terms, before weighting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, ToSchema)]
pub struct Terms {
    pub efficiency: f64,
    pub affinity: f64,
    pub headroom: f64,
    pub power: f64,
    pub mps: f64,
    pub locality: f64,
    pub fragmentation: f64,
    pub cpu_balance: f64,
}

impl Terms {
    /// The weighted sum, truncated to the weights' quantum.
    pub fn score(&self, w: &Weights) -> f64 {
        let t = self.total(w);
        if w.quantum > 0.0 {
            // The small allowance keeps a sum that lands a rounding error
            // below a multiple (0.57 / 0.01 = 56.999…) on that multiple.
            ((t / w.quantum + 1e-9).floor()) * w.quantum
        } else {
            t
        }
    }

    /// The weighted sum.
    pub fn total(&self, w: &Weights) -> f64 {
        w.efficiency * self.efficiency
            + w.affinity * self.affinity
            + w.headroom * self.headroom
            + w.power * self.power
            + w.mps * self.mps
            + w.locality * self.locality
            + w.fragmentation * self.fragmentation
            + w.cpu_balance * self.cpu_balance
    }

    /// Each term times its weight (they sum to [`Terms::total`]).
    pub fn weighted(&self, w: &Weights) -> Terms {
        Terms {
            efficiency: w.efficiency * self.efficiency,
            affinity: w.affinity * self.affinity,
            headroom: w.headroom * self.headroom,
            power: w.power * self.power,
            mps: w.mps * self.mps,
            locality: w.locality * self.locality,
            fragmentation: w.fragmentation * self.fragmentation,
            cpu_balance: w.cpu_balance * self.cpu_balance,
        }
    }

    /// The mean of `all` term by term (a multi-GPU candidate).
    pub fn mean(all: &[Terms]) -> Terms {
        let k = all.len().max(1) as f64;
        let mut t = Terms::default();
        for c in all {
            t.efficiency += c.efficiency / k;
            t.affinity += c.affinity / k;
            t.headroom += c.headroom / k;
            t.power += c.power / k;
            t.mps += c.mps / k;
            t.locality += c.locality / k;
            t.fragmentation += c.fragmentation / k;
            t.cpu_balance += c.cpu_balance / k;
        }
        t
    }
}

/// How the request would use a GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Slot {
    /// The GPU's MPS pool has the request's size and room for it.
    Pool,
    /// An idle GPU: its server is (re)configured for the request's size.
    Fresh,
    /// The pool has another size: its server must be reconfigured.
    Reconfigure,
    /// Beside other shares on a GPU without MPS pools (the shim's
    /// budgets keep them apart).
    Shared,
}

/// What the terms read of a GPU.
#[derive(Clone, Copy, Debug)]
pub struct GpuLoad {
    pub used_pct: u32,
    /// Percent that may be placed (100, or more where throttling allows).
    pub cap: u32,
    /// Measured utilisation 0–1; NaN: not measured (the placed share is used).
    pub utilisation: f64,
    /// Power headroom over TDP, 0–1.
    pub power: f64,
    /// TFLOPS per watt over the table's best, 0–1.
    pub efficiency: f64,
}

impl GpuLoad {
    pub fn of(gpu: &Gpu, cap: u32, best_tflops_per_watt: f64) -> GpuLoad {
        GpuLoad {
            used_pct: gpu.used_pct,
            cap,
            utilisation: gpu.utilisation.unwrap_or(f64::NAN),
            power: match gpu.power_w {
                Some(p) if gpu.tdp_w > 0.0 => ((gpu.tdp_w - p) / gpu.tdp_w).clamp(0.0, 1.0),
                _ => 1.0,
            },
            efficiency: if best_tflops_per_watt > 0.0 {
                (gpu.tflops_per_watt / best_tflops_per_watt).min(1.0)
            } else {
                0.0
            },
        }
    }
}

/// What the node-level terms of a candidate came to: the FGD score of its
/// change in fragmentation and its CPU balance (see [`crate::mix`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NodeTerms {
    pub fragmentation: f64,
    pub cpu_balance: f64,
}

/// The terms of placing `share` percent on a GPU; `affinity` and `local`
/// are the caller's (they depend on the GPU model and the node), and so
/// are the node-level ones.
pub fn terms(
    g: &GpuLoad,
    slot: Slot,
    share: u32,
    affinity: f64,
    local: bool,
    node: NodeTerms,
) -> Terms {
    let utilisation = if g.utilisation.is_nan() {
        g.used_pct as f64 / g.cap.max(1) as f64
    } else {
        g.utilisation
    }
    .clamp(0.0, 1.0);
    let free_after = g.cap.saturating_sub(g.used_pct).saturating_sub(share);
    Terms {
        efficiency: g.efficiency,
        affinity,
        headroom: 1.0 - utilisation,
        power: g.power,
        mps: match slot {
            Slot::Pool => 1.0,
            Slot::Fresh => 0.5,
            Slot::Reconfigure => 0.0,
            // How well the share fills the GPU.
            Slot::Shared => 1.0 - free_after as f64 / g.cap.max(1) as f64,
        },
        locality: if local { 1.0 } else { 0.0 },
        fragmentation: node.fragmentation,
        cpu_balance: node.cpu_balance,
    }
}

/// The terms of a workload without GPUs: only where it takes CPU matters.
pub fn node_only(local: bool, node: NodeTerms) -> Terms {
    Terms {
        locality: if local { 1.0 } else { 0.0 },
        fragmentation: node.fragmentation,
        cpu_balance: node.cpu_balance,
        ..Terms::default()
    }
}
