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
    /// The fragmentation term: minus the change in GPU capacity that the
    /// shares seen so far could no longer use.
    pub fragmentation: f64,
    /// CPU balance: minus the GPU capacity the placement leaves without
    /// the CPU to use it (the trace replay found this is what FGD misses:
    /// CPU-heavy work on GPU-dense nodes strands their GPUs).
    pub cpu_balance: f64,
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

/// GPUs (in units of one GPU) of `free_pct` that `cpu_free` cannot feed at
/// `cpu_per_gpu` milli-CPU per GPU.
fn stranded(free_pct: u64, cpu_free: u64, cpu_per_gpu: u64) -> f64 {
    (free_pct as f64 / 100.0 - cpu_free as f64 / cpu_per_gpu.max(1) as f64).max(0.0)
}

/// The CPU-balance term of taking `pct` of a node's `free_pct` GPU
/// capacity and `cpu` of its `cpu_free`: minus the GPU capacity it newly
/// strands (0 when it strands none).
pub fn cpu_balance(free_pct: u64, cpu_free: u64, pct: u64, cpu: u64, cpu_per_gpu: u64) -> f64 {
    let before = stranded(free_pct, cpu_free, cpu_per_gpu);
    let after = stranded(
        free_pct.saturating_sub(pct),
        cpu_free.saturating_sub(cpu),
        cpu_per_gpu,
    );
    -(after - before).max(0.0)
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
}

/// Shares seen in requests, for the fragmentation term: a GPU's free
/// capacity that most requests cannot use is fragmented.
#[derive(Clone, Debug, Default)]
pub struct ShareMix {
    /// (share %, requests seen), sorted by share.
    counts: Vec<(u32, u64)>,
    total: u64,
    /// `fragmentation(free)` for free = 0..=200, kept current.
    table: Vec<f64>,
}

const TABLE_MAX: u32 = 200;

impl ShareMix {
    pub fn with_grid(grid: &[u32]) -> ShareMix {
        // One pseudo-count per grid share: no request seen yet means every
        // share is as likely.
        let counts: Vec<(u32, u64)> = grid.iter().map(|&g| (g, 1)).collect();
        let total = counts.len() as u64;
        let mut m = ShareMix {
            counts,
            total,
            table: Vec::new(),
        };
        m.tabulate();
        m
    }

    pub fn observe(&mut self, share: u32) {
        match self.counts.binary_search_by_key(&share, |c| c.0) {
            Ok(i) => self.counts[i].1 += 1,
            Err(i) => self.counts.insert(i, (share, 1)),
        }
        self.total += 1;
        self.tabulate();
    }

    fn tabulate(&mut self) {
        self.table = (0..=TABLE_MAX).map(|f| self.compute(f)).collect();
    }

    fn compute(&self, free: u32) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let unusable: u64 = self
            .counts
            .iter()
            .filter(|(s, _)| *s > free)
            .map(|(_, n)| n)
            .sum();
        free as f64 / 100.0 * unusable as f64 / self.total as f64
    }

    /// Expected free percent of a GPU with `free` percent left that a request
    /// cannot use (in GPUs: 0–1).
    pub fn fragmentation(&self, free: u32) -> f64 {
        match self.table.get(free as usize) {
            Some(&f) => f,
            None => self.compute(free),
        }
    }
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

/// The terms of placing `share` percent on a GPU; `affinity` and `local`
/// are the caller's (they depend on the GPU model and the node), and so is
/// `cpu_balance` (the node's, from [`cpu_balance`]).
pub fn terms(
    g: &GpuLoad,
    slot: Slot,
    share: u32,
    affinity: f64,
    local: bool,
    cpu_balance: f64,
    mix: &ShareMix,
) -> Terms {
    let utilisation = if g.utilisation.is_nan() {
        g.used_pct as f64 / g.cap.max(1) as f64
    } else {
        g.utilisation
    }
    .clamp(0.0, 1.0);
    let free_before = g.cap.saturating_sub(g.used_pct);
    let free_after = free_before.saturating_sub(share);
    Terms {
        efficiency: g.efficiency,
        affinity,
        headroom: 1.0 - utilisation,
        power: g.power,
        mps: match slot {
            Slot::Pool => 1.0,
            Slot::Fresh => 0.5,
            Slot::Reconfigure => 0.0,
        },
        locality: if local { 1.0 } else { 0.0 },
        fragmentation: mix.fragmentation(free_before) - mix.fragmentation(free_after),
        cpu_balance,
    }
}
