//! The workload mix: the shapes of the requests the cluster serves, and
//! what the score derives from them.
//!
//! - **Fragmentation** as FGD defines it (Weng et al., USENIX ATC '23): a
//!   node's expected free GPU capacity that a typical request could not
//!   use, over the mix's typical shapes (those making up 95% of requests
//!   by count). A placement scores by how much it lowers that.
//! - **CPU need**: the CPU a free GPU needs to be of use. Flat, it is the
//!   mix's CPU per GPU; by size, a partly used GPU can only take requests
//!   small enough for it, and those may ask more CPU per GPU than whole-GPU
//!   work (on the openb trace 160-milli pods ask 29 cores per GPU, whole
//!   GPUs 11), so its need follows theirs, blended 0.7 by default.
//!
//! A mix given up front (the configuration, a trace's history) is fixed;
//! without one the core starts from the share grid and learns the mix
//! from the requests it places, re-deriving after 1, 2, 4, … 1024 requests
//! and every 1024 after that.
//!
//! Units: GPU shares in percent of one GPU (the core's unit), CPU in
//! milli-cores.

use crate::spec;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One request shape and how often it occurs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Shape {
    pub cpu_milli: u64,
    /// GPUs: 0 (CPU only), 1 (a share of one GPU) or more (whole GPUs).
    pub gpus: u32,
    /// Per GPU, percent (100 for whole GPUs, 0 without GPUs).
    pub share_pct: u32,
    /// GPU model families it accepts; empty: any.
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default = "one")]
    pub count: u64,
}

fn one() -> u64 {
    1
}

impl Shape {
    pub fn new(cpu_milli: u64, gpus: u32, share_pct: u32, models: Vec<String>) -> Shape {
        Shape {
            cpu_milli,
            gpus,
            share_pct: match gpus {
                0 => 0,
                1 => share_pct,
                _ => 100,
            },
            models,
            count: 1,
        }
    }

    fn key(&self) -> (u64, u32, u32, &[String]) {
        (self.cpu_milli, self.share_pct, self.gpus, &self.models)
    }

    /// GPU percent the shape asks for in all.
    fn gpu_pct(&self) -> u64 {
        self.share_pct as u64 * self.gpus as u64
    }
}

/// A typical shape with its frequency and, per GPU model number, whether
/// it accepts that model.
#[derive(Clone, Debug)]
struct Typical {
    cpu_milli: u64,
    gpus: u32,
    share_pct: u32,
    p: f64,
    models: Vec<String>,
    accepts: Vec<bool>,
}

/// One GPU as fragmentation and CPU need see it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Free {
    /// Percent that may still be placed (0 for an exclusive GPU).
    pub(crate) pct: u32,
    /// Its MPS pool's share, 0 for none.
    pub(crate) pool: u32,
    pub(crate) model: u32,
}

/// A node's GPUs summarised for fragmentation (see [`Mix::summarize`]).
#[derive(Clone, Debug, Default)]
pub(crate) struct Summary {
    total: u64,
    /// Per typical shape: GPUs it could use, free percent of the others
    /// (at most 16 GPUs of 200%: 16 bits each).
    per: Vec<(u16, u16)>,
}

#[derive(Clone, Debug)]
pub struct Mix {
    shapes: Vec<Shape>,
    learning: bool,
    /// Requests observed, and the count at which to derive again.
    observed: u64,
    next_derive: u64,
    /// Shares must match a GPU's MPS pool.
    pools: bool,
    need_by_size: f64,
    typical: Vec<Typical>,
    /// CPU milli per GPU percent over the mix's GPU shapes.
    cpu_per_pct: f64,
    /// CPU milli a free GPU of `f` percent needs (index `f`, 0..=100).
    need: Vec<f64>,
    /// GPU model names by the core's model number (index `no - 1`).
    models: Vec<String>,
}

/// Typical shapes cover this share of requests by count, as FGD's do.
const COVER_PERMILLE: u64 = 950;
/// A learning mix is derived again after 1, 2, 4, … requests up to this
/// many, then every this many (each time every node's fragmentation is
/// measured again).
const RELEARN_EVERY: u64 = 1024;

impl Mix {
    /// `prior`: the shapes to start from; `learning`: add each request's.
    pub fn new(prior: Vec<Shape>, learning: bool, pools: bool, need_by_size: f64) -> Mix {
        let mut m = Mix {
            shapes: Vec::new(),
            learning,
            observed: 0,
            next_derive: 1,
            pools,
            need_by_size,
            typical: Vec::new(),
            cpu_per_pct: 0.0,
            need: vec![0.0; 101],
            models: Vec::new(),
        };
        for s in prior {
            m.add(s);
        }
        m.derive();
        m
    }

    /// The shapes seen so far (the prior's included), with their counts.
    pub fn shapes(&self) -> &[Shape] {
        &self.shapes
    }

    fn add(&mut self, s: Shape) {
        match self.shapes.iter_mut().find(|x| x.key() == s.key()) {
            Some(x) => x.count += s.count,
            None => self.shapes.push(s),
        }
    }

    /// Counts a request's shape when learning. Returns whether the mix
    /// was derived again (every node's fragmentation must then be
    /// recomputed).
    pub fn observe(&mut self, s: Shape) -> bool {
        if !self.learning {
            return false;
        }
        self.add(s);
        self.observed += 1;
        if self.observed < self.next_derive {
            return false;
        }
        self.next_derive = if self.next_derive < RELEARN_EVERY {
            self.next_derive * 2
        } else {
            self.next_derive + RELEARN_EVERY
        };
        self.derive();
        true
    }

    /// Tells the mix the core's number for a GPU model.
    pub(crate) fn model(&mut self, no: u32, name: &str) {
        let i = no as usize - 1;
        if self.models.len() <= i {
            self.models.resize(i + 1, String::new());
        }
        self.models[i] = name.to_string();
        for t in &mut self.typical {
            t.accepts = accepts(&t.models, &self.models);
        }
    }

    fn derive(&mut self) {
        let mut order: Vec<&Shape> = self.shapes.iter().collect();
        order.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then(b.cpu_milli.cmp(&a.cpu_milli))
                .then(b.share_pct.cmp(&a.share_pct))
                .then(b.gpus.cmp(&a.gpus))
                .then(b.models.cmp(&a.models))
        });
        let total: u64 = order.iter().map(|s| s.count).sum();
        let mut taken = Vec::new();
        let mut cum = 0;
        for s in order {
            taken.push(s);
            cum += s.count;
            if cum * 1000 >= total * COVER_PERMILLE {
                break;
            }
        }
        let sum: u64 = taken.iter().map(|s| s.count).sum();
        self.typical = taken
            .into_iter()
            .map(|s| Typical {
                cpu_milli: s.cpu_milli,
                gpus: s.gpus,
                share_pct: s.share_pct,
                p: s.count as f64 / sum.max(1) as f64,
                models: s.models.clone(),
                accepts: accepts(&s.models, &self.models),
            })
            .collect();
        // CPU per GPU percent: flat, and cumulated by per-GPU share.
        let mut by = [(0u64, 0u64); 101];
        for s in self.shapes.iter().filter(|s| s.gpus > 0) {
            let k = s.share_pct.min(100) as usize;
            by[k].0 += s.cpu_milli * s.count;
            by[k].1 += s.gpu_pct() * s.count;
        }
        let (cpu, gpu) = by.iter().fold((0u64, 0u64), |(c, g), b| (c + b.0, g + b.1));
        self.cpu_per_pct = if gpu == 0 {
            0.0
        } else {
            cpu as f64 / gpu as f64
        };
        let s = self.need_by_size;
        let (mut cc, mut cg) = (0u64, 0u64);
        for (f, b) in by.iter().enumerate() {
            cc += b.0;
            cg += b.1;
            let small = if cg == 0 { 0.0 } else { cc as f64 / cg as f64 };
            self.need[f] = f as f64 * (s * small + (1.0 - s) * self.cpu_per_pct);
        }
    }

    fn usable(&self, t: &Typical, g: &Free) -> bool {
        g.pct >= t.share_pct
            && t.accepts.get(g.model as usize).copied().unwrap_or(false)
            && (!self.pools || g.pool == 0 || g.pool == t.share_pct)
    }

    /// A node's GPUs as fragmentation reads them: per typical shape, how
    /// many GPUs it could use and the free percent of those it could not.
    pub(crate) fn summarize(&self, gpus: &[Free], out: &mut Summary) {
        out.total = gpus.iter().map(|g| g.pct as u64).sum();
        out.per.clear();
        for t in &self.typical {
            let (mut usable, mut rest) = (0u32, 0u64);
            for g in gpus {
                if self.usable(t, g) {
                    usable += 1;
                } else {
                    rest += g.pct as u64;
                }
            }
            out.per.push((
                usable.min(u16::MAX as u32) as u16,
                rest.min(u16::MAX as u64) as u16,
            ));
        }
    }

    /// A node's expected free GPU percent that the typical shapes could
    /// not use, from its [`Summary`] with `changes` (a GPU before and after)
    /// applied and `cpu_free` left: for each shape, all of it when the
    /// shape cannot run there at all (CPU, GPU model, too few GPUs with
    /// room), else the GPUs it could not use; weighted by the shape's
    /// frequency. O(shapes × changes), not O(shapes × GPUs).
    pub(crate) fn evaluate(&self, s: &Summary, cpu_free: u64, changes: &[(Free, Free)]) -> f64 {
        let mut total = s.total;
        for (b, a) in changes {
            total = total - b.pct as u64 + a.pct as u64;
        }
        let mut f = 0.0;
        for (t, &(usable, rest)) in self.typical.iter().zip(&s.per) {
            let amount = if t.share_pct == 0 {
                total
            } else {
                let (mut usable, mut rest) = (usable as u32, rest as u64);
                for (b, a) in changes {
                    if self.usable(t, b) {
                        usable -= 1;
                    } else {
                        rest -= b.pct as u64;
                    }
                    if self.usable(t, a) {
                        usable += 1;
                    } else {
                        rest += a.pct as u64;
                    }
                }
                if usable >= t.gpus && cpu_free >= t.cpu_milli {
                    rest
                } else {
                    total
                }
            };
            f += t.p * amount as f64;
        }
        f
    }

    /// [`Mix::evaluate`] of `gpus` as they are.
    #[cfg(test)]
    pub(crate) fn fragmentation(&self, cpu_free: u64, gpus: &[Free]) -> f64 {
        let mut s = Summary::default();
        self.summarize(gpus, &mut s);
        self.evaluate(&s, cpu_free, &[])
    }

    /// GPU percent of a node that its free CPU cannot feed: free GPU
    /// percent beyond what `cpu_free` covers at the flat ratio, or, `by_size`
    /// (scoring a share), the CPU the free GPUs need by their size beyond
    /// `cpu_free`, in GPU percent at the flat ratio.
    pub(crate) fn stranded(&self, cpu_free: u64, gpus: &[Free], by_size: bool) -> f64 {
        if self.cpu_per_pct <= 0.0 {
            return 0.0;
        }
        if by_size {
            let need: f64 = gpus
                .iter()
                .map(|g| self.need[g.pct.min(100) as usize])
                .sum();
            return ((need - cpu_free as f64) / self.cpu_per_pct).max(0.0);
        }
        let free: u64 = gpus.iter().map(|g| g.pct as u64).sum();
        (free as f64 - cpu_free as f64 / self.cpu_per_pct).max(0.0)
    }

    /// Whether a request of `gpus` × `share` is scored by size.
    pub(crate) fn by_size(&self, gpus: u32, share: u32) -> bool {
        self.need_by_size != 0.0 && gpus == 1 && share < 100
    }
}

/// FGD's node score of a placement that takes the node's fragmentation
/// from `before` to `after` (GPU percent): the sigmoid of the drop in
/// GPUs, truncated to whole points as the reference does (which makes
/// ties), as a fraction 0–0.99.
pub(crate) fn fgd_score(before: f64, after: f64) -> f64 {
    let x = (before - after) / 100.0;
    (100.0 / (1.0 + (-x).exp())).trunc() / 100.0
}

/// The CPU-balance term: minus the GPU capacity (in GPUs) a placement
/// newly strands without CPU (0 when it strands none).
pub(crate) fn cpu_balance(stranded_before: f64, stranded_after: f64) -> f64 {
    ((stranded_before - stranded_after) / 100.0).min(0.0)
}

fn accepts(families: &[String], models: &[String]) -> Vec<bool> {
    std::iter::once(false)
        .chain(
            models
                .iter()
                .map(|m| families.is_empty() || families.iter().any(|f| spec::is_family(m, f))),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free(pct: u32) -> Free {
        Free {
            pct,
            pool: 0,
            model: 1,
        }
    }

    fn shape(cpu: u64, gpus: u32, share: u32, count: u64) -> Shape {
        Shape {
            count,
            ..Shape::new(cpu, gpus, share, Vec::new())
        }
    }

    #[test]
    fn fragmentation_counts_what_typical_shapes_cannot_use() {
        // Half the requests want 46%, half a whole GPU.
        let mut m = Mix::new(
            vec![shape(4000, 1, 46, 5), shape(8000, 1, 100, 5)],
            false,
            false,
            0.0,
        );
        m.model(1, "T4");
        // A node with one 54% remainder and one idle GPU: the 46% shape
        // uses both; the whole-GPU shape cannot use the 54%.
        let f = m.fragmentation(64_000, &[free(54), free(100)]);
        assert!((f - 0.5 * 54.0).abs() < 1e-9, "{f}");
        // Without CPU, nothing is usable: all 154% is fragmented.
        assert!((m.fragmentation(1000, &[free(54), free(100)]) - 154.0).abs() < 1e-9);
        // Filling the 54% with a 46% share leaves 8% nobody can use.
        let after = m.fragmentation(60_000, &[free(8), free(100)]);
        assert!((after - 8.0).abs() < 1e-9, "{after}");
        assert!(fgd_score(f, after) > 0.5, "a drop scores above 0.5");
        // An unaccepted model is all fragment.
        let mut only_a100 = Mix::new(
            vec![Shape::new(1000, 1, 50, vec!["A100".into()])],
            false,
            false,
            0.0,
        );
        only_a100.model(1, "T4");
        assert_eq!(only_a100.fragmentation(64_000, &[free(100)]), 100.0);
        only_a100.model(2, "NVIDIA A100-SXM4-80GB");
        let a100 = Free {
            model: 2,
            ..free(100)
        };
        assert_eq!(only_a100.fragmentation(64_000, &[a100]), 0.0);
    }

    #[test]
    fn a_summary_with_changes_measures_what_the_changed_gpus_measure() {
        let mut m = Mix::new(
            vec![
                shape(4000, 1, 46, 5),
                shape(8000, 2, 100, 3),
                shape(1000, 0, 0, 1),
            ],
            false,
            true,
            0.0,
        );
        m.model(1, "T4");
        let before = [
            free(54),
            free(100),
            Free {
                pool: 46,
                ..free(92)
            },
        ];
        let mut s = Summary::default();
        m.summarize(&before, &mut s);
        for (k, after) in [
            (0, free(8)),
            (
                1,
                Free {
                    pool: 46,
                    ..free(54)
                },
            ),
            (2, free(0)),
        ] {
            let mut gpus = before;
            gpus[k] = after;
            let full = m.fragmentation(60_000, &gpus);
            let delta = m.evaluate(&s, 60_000, &[(before[k], after)]);
            assert_eq!(
                full.to_bits(),
                delta.to_bits(),
                "GPU {k}: {full} vs {delta}"
            );
        }
    }

    #[test]
    fn with_pools_a_share_needs_its_pool_or_an_empty_gpu() {
        let mut m = Mix::new(vec![shape(0, 1, 40, 1)], false, true, 0.0);
        m.model(1, "H100");
        let pool20 = Free {
            pool: 20,
            ..free(60)
        };
        let pool40 = Free {
            pool: 40,
            ..free(60)
        };
        assert_eq!(m.fragmentation(1000, &[pool20]), 60.0);
        assert_eq!(m.fragmentation(1000, &[pool40]), 0.0);
    }

    #[test]
    fn cpu_need_follows_the_shapes_small_enough_for_a_free_gpu() {
        // Whole GPUs at 8 cores per GPU, 20% shares at 4 cores (20 per
        // GPU): flat (8 + 4) / 120% = 100 milli-cores per percent.
        let m = Mix::new(
            vec![shape(8000, 1, 100, 1), shape(4000, 1, 20, 1)],
            false,
            false,
            0.7,
        );
        assert!((m.cpu_per_pct - 100.0).abs() < 1e-9);
        assert!((m.need[100] - 10_000.0).abs() < 1e-6);
        let want30 = 30.0 * (0.7 * 200.0 + 0.3 * 100.0);
        assert!((m.need[30] - want30).abs() < 1e-6, "{}", m.need[30]);
        assert_eq!(m.stranded(4000, &[free(30)], false), 0.0);
        let by_size = m.stranded(4000, &[free(30)], true);
        assert!((by_size - (want30 - 4000.0) / 100.0).abs() < 1e-6);
        assert_eq!(cpu_balance(0.0, 40.0), -0.4);
        assert_eq!(cpu_balance(40.0, 0.0), 0.0);
    }

    #[test]
    fn a_learning_mix_derives_at_powers_of_two_then_every_1024() {
        let mut m = Mix::new(vec![shape(1000, 1, 20, 1)], true, false, 0.7);
        let derived: Vec<u64> = (1..=3000)
            .filter(|_| m.observe(shape(2000, 1, 40, 1)))
            .collect();
        assert_eq!(derived, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]);
        assert_eq!(m.typical.len(), 1, "the 40% shape is 95%+ of them");
        let mut fixed = Mix::new(vec![shape(1000, 1, 20, 1)], false, false, 0.7);
        assert!(!fixed.observe(shape(2000, 1, 40, 1)));
        assert_eq!(fixed.shapes().len(), 1);
    }
}
