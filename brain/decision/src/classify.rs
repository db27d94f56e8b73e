//! Workload classes: a compute score, the MPS share each class gets, and
//! the GPU model it prefers.

use crate::workload::{Invalid, Profile};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One class: workloads scoring below `below` (and not below the previous
/// class) get `share_pct` of a GPU.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Rule {
    pub name: String,
    /// Upper bound of the compute score (exclusive); `None`: no bound.
    pub below: Option<f64>,
    pub share_pct: u32,
    pub preferred_model: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Classes {
    /// In increasing order of `below`; the last has none.
    pub rules: Vec<Rule>,
    /// MPS shares a GPU's server may be configured with; a request rounds up
    /// to the next. Empty: exact shares (the trace replay's).
    pub grid: Vec<u32>,
}

impl Default for Classes {
    fn default() -> Classes {
        Classes {
            rules: vec![
                rule("small", Some(100.0), 20, Some("A100")),
                rule("medium", Some(500.0), 40, None),
                rule("large", None, 100, Some("H100")),
            ],
            grid: vec![20, 40, 60, 80, 100],
        }
    }
}

fn rule(name: &str, below: Option<f64>, share: u32, pref: Option<&str>) -> Rule {
    Rule {
        name: name.into(),
        below,
        share_pct: share,
        preferred_model: pref.map(str::to_string),
    }
}

/// What classification decided for a workload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Class {
    pub name: String,
    pub compute_score: f64,
    /// The MPS share per GPU (%), on the grid (0 without GPUs).
    pub share_pct: u32,
    pub preferred_model: Option<String>,
}

/// model_size_gb·10 + batch·seq_len/100.
pub fn compute_score(p: &Profile) -> f64 {
    p.model_size_gb * 10.0 + p.batch as f64 * p.seq_len as f64 / 100.0
}

impl Classes {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.rules.is_empty() {
            return Err(Invalid::new("classes.rules", "needs at least one class"));
        }
        let mut last = f64::NEG_INFINITY;
        for (i, r) in self.rules.iter().enumerate() {
            let open = i + 1 == self.rules.len();
            match (r.below, open) {
                (None, true) => {}
                (Some(b), false) if b.is_finite() && b > last => last = b,
                _ => {
                    return Err(Invalid::new(
                        &format!("classes.rules[{i}].below"),
                        "bounds must increase and only the last class may be unbounded",
                    ));
                }
            }
            if !(1..=100).contains(&r.share_pct) {
                return Err(Invalid::new(
                    &format!("classes.rules[{i}].share_pct"),
                    "must be 1 to 100",
                ));
            }
        }
        if self.grid.windows(2).any(|w| w[0] >= w[1])
            || self.grid.iter().any(|&g| !(1..=100).contains(&g))
            || self.grid.last().is_some_and(|&g| g != 100)
        {
            return Err(Invalid::new(
                "classes.grid",
                "must increase, lie in 1..=100 and end with 100",
            ));
        }
        Ok(())
    }

    /// The share on the grid for a request of `pct` (exact without a grid).
    pub fn round_share(&self, pct: u32) -> u32 {
        self.grid
            .iter()
            .copied()
            .find(|&g| g >= pct)
            .unwrap_or(pct.min(100))
    }

    pub fn classify(&self, p: &Profile) -> Class {
        let score = compute_score(p);
        let r = self
            .rules
            .iter()
            .find(|r| r.below.is_none_or(|b| score < b))
            .unwrap_or_else(|| self.rules.last().expect("validated: at least one class"));
        let share = if p.gpus() == 0 {
            0
        } else if p.gpus() > 1 {
            100
        } else {
            self.round_share(p.share_pct.unwrap_or(r.share_pct))
        };
        Class {
            name: r.name.clone(),
            compute_score: score,
            share_pct: share,
            preferred_model: r.preferred_model.clone(),
        }
    }
}
