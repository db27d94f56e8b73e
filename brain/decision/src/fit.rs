//! Whether a request could ever fit a node (a known one, or a shape
//! scale-out may ask for) when the node is empty — and, when none could,
//! which constraint rules it out.

use crate::explain::NodeShape;
use crate::spec;
use crate::workload::Profile;

/// An empty node: its CPU, memory and GPUs (name, memory GB, price/h).
pub(crate) struct Room<'a> {
    pub cpu: u64,
    pub mem: u64,
    pub gpus: Vec<(&'a str, f64, f64)>,
}

/// What a request needs of an empty node.
pub(crate) struct Fit<'a> {
    p: &'a Profile,
    share: u32,
    per_gpu_gb: f64,
}

impl<'a> Fit<'a> {
    pub fn new(p: &'a Profile, share: u32) -> Fit<'a> {
        let per_gpu_gb = if p.gpus() == 0 {
            0.0
        } else {
            p.gpu_memory() / p.gpus() as f64
        };
        Fit {
            p,
            share,
            per_gpu_gb,
        }
    }

    /// What one GPU costs this request per hour, across its GPUs.
    fn cost(&self, price: f64) -> f64 {
        price * self.share as f64 / 100.0 * self.p.gpus() as f64
    }

    fn affordable(&self, price: f64) -> bool {
        self.p
            .max_cost_per_hour
            .is_none_or(|c| self.cost(price) <= c + 1e-9)
    }

    fn gpu_ok(&self, (model, gb, price): (&str, f64, f64)) -> bool {
        self.p.accepts(model) && gb >= self.per_gpu_gb && self.affordable(price)
    }

    /// Whether an empty node with these resources holds the request.
    pub fn holds<'g>(
        &self,
        cpu: u64,
        mem: u64,
        gpus: impl Iterator<Item = (&'g str, f64, f64)>,
    ) -> bool {
        let n = self.p.gpus() as usize;
        cpu >= self.p.cpu_milli
            && mem >= self.p.memory_mib
            && (n == 0 || gpus.filter(|g| self.gpu_ok(*g)).take(n).count() == n)
    }

    pub fn holds_shape(&self, s: &NodeShape) -> bool {
        spec::lookup(&s.gpu_model).is_some_and(|m| {
            self.holds(
                s.cpu_milli,
                s.memory_mib,
                std::iter::repeat_n((m.family, m.memory_gb, m.price_per_hour), s.gpus as usize),
            )
        })
    }

    /// The first constraint that no room passes, in the order GPU model,
    /// GPU memory, cost, GPU count, CPU, memory, as `field: why`.
    pub fn why_not(&self, mut rooms: Vec<Room<'_>>) -> String {
        let p = self.p;
        let n = p.gpus() as usize;
        let max = |rooms: &[Room], f: &dyn Fn(&Room) -> u64| rooms.iter().map(f).max().unwrap_or(0);
        if n > 0 {
            let mut known: Vec<&str> = rooms
                .iter()
                .flat_map(|r| r.gpus.iter().map(|g| g.0))
                .collect();
            known.sort();
            known.dedup();
            for r in &mut rooms {
                r.gpus.retain(|g| p.accepts(g.0));
            }
            if rooms.iter().all(|r| r.gpus.is_empty()) {
                return format!(
                    "accepted_models: no known node or scale-out shape has a GPU of {} (their GPUs: {})",
                    p.accepted_models.join(", "),
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                );
            }
            let largest = rooms
                .iter()
                .flat_map(|r| r.gpus.iter().map(|g| g.1))
                .fold(0.0, f64::max);
            for r in &mut rooms {
                r.gpus.retain(|g| g.1 >= self.per_gpu_gb);
            }
            if rooms.iter().all(|r| r.gpus.is_empty()) {
                return format!(
                    "{}: {:.1} GB per GPU is more than any GPU it accepts has ({largest:.1} GB)",
                    if self.p.gpu_memory_gb.is_some() {
                        "gpu_memory_gb"
                    } else {
                        "model_size_gb"
                    },
                    self.per_gpu_gb
                );
            }
            let cheapest = rooms
                .iter()
                .flat_map(|r| r.gpus.iter().map(|g| self.cost(g.2)))
                .fold(f64::INFINITY, f64::min);
            for r in &mut rooms {
                r.gpus.retain(|g| self.affordable(g.2));
            }
            if rooms.iter().all(|r| r.gpus.is_empty()) {
                return format!(
                    "max_cost_per_hour: {:.2} is less than the cheapest GPU that holds it costs at this share ({cheapest:.2})",
                    p.max_cost_per_hour.unwrap_or(0.0)
                );
            }
            let most = max(&rooms, &|r| r.gpus.len() as u64);
            rooms.retain(|r| r.gpus.len() >= n);
            if rooms.is_empty() {
                return format!(
                    "gpus: {n} GPUs on one node; the most any known node or scale-out shape has that hold it is {most}"
                );
            }
        }
        let most = max(&rooms, &|r| r.cpu);
        rooms.retain(|r| r.cpu >= p.cpu_milli);
        if rooms.is_empty() {
            return format!(
                "cpu_milli: {} is more than any known node or scale-out shape that holds it has ({most})",
                p.cpu_milli
            );
        }
        let most = max(&rooms, &|r| r.mem);
        format!(
            "memory_mib: {} is more than any known node or scale-out shape that holds it has ({most})",
            p.memory_mib
        )
    }
}
