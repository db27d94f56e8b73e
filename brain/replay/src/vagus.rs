//! The `vagus` policy: the brain's live decision core
//! ([`vagus_decision::Core`], the same `place` path, terms and constraints
//! the HTTP API runs) on the trace's cluster.
//!
//! The core takes the trace's nodes in the replay's node order, the trace's
//! pods as placement requests ([`profile`]), and [`OPENB_CONFIG`]: shares
//! of any size side by side on a GPU (no MPS pools), exact shares, no
//! moves, no preemption, no scale-out, and the score's two terms the trace
//! has data for — FGD's fragmentation against the trace's workload mix
//! ([`mix`]) and CPU balance — truncated to whole points.

use crate::cluster::{Cluster, GPU_MILLI, Placement, Pod};
use std::collections::HashMap;
use vagus_decision::{Config, Core, Invalid, Priority, Profile, Shape};

/// The core's configuration for the openb trace (`brain/replay/openb.toml`).
pub const OPENB_CONFIG: &str = include_str!("../openb.toml");

/// [`OPENB_CONFIG`] with the trace's mix.
pub fn config(trace: &[Pod]) -> Config {
    let mut cfg: Config = toml::from_str(OPENB_CONFIG).expect("openb.toml is a valid Config");
    cfg.mix = mix(trace);
    cfg
}

/// The trace's request shapes and their counts, in order of first
/// appearance: what FGD's typical pods and the CPU need are derived from.
pub fn mix(trace: &[Pod]) -> Vec<Shape> {
    let mut out: Vec<Shape> = Vec::new();
    let mut index: HashMap<(u64, u32, u32, Vec<String>), usize> = HashMap::new();
    for p in trace {
        let s = Shape::new(p.cpu_milli, p.num_gpu, share_pct(p), p.gpu_spec.clone());
        let key = (s.cpu_milli, s.share_pct, s.gpus, s.models.clone());
        match index.get(&key) {
            Some(&i) => out[i].count += 1,
            None => {
                index.insert(key, out.len());
                out.push(s);
            }
        }
    }
    out
}

/// A one-GPU pod's share in whole percent (the core's unit), rounded up:
/// exact for every openb pod, whose shares are multiples of 10 milli.
fn share_pct(p: &Pod) -> u32 {
    match p.num_gpu {
        0 => 0,
        1 => p.gpu_milli.div_ceil(10),
        _ => 100,
    }
}

/// The placement request for a trace pod. The trace gives CPU, memory,
/// GPUs, the share and the accepted models; what it does not give takes no
/// part in placing it: no model weights in GPU memory (the FGD paper's
/// method does not model GPU memory), one model per pod (no
/// anti-affinity between pods), one priority for all (no preemption), no
/// latency objective, an hour of run time for the quota ledger.
pub fn profile(p: &Pod) -> Profile {
    Profile {
        name: p.name.clone(),
        model_id: p.name.clone(),
        model_size_gb: 0.0,
        batch: 1,
        seq_len: 1,
        priority: Priority::P2,
        sla_ms: None,
        tenant: "openb".into(),
        expected_duration_s: 3600,
        locality: Vec::new(),
        accepted_models: p.gpu_spec.clone(),
        cpu_milli: p.cpu_milli,
        memory_mib: p.memory_mib,
        gpus: Some(p.num_gpu),
        share_pct: (p.num_gpu == 1).then(|| share_pct(p)),
        gpu_memory_gb: None,
        max_cost_per_hour: None,
        preemptible: None,
        image: None,
        launch: None,
    }
}

/// Whether every pod of `trace` is a request the core takes, with a
/// unique name; the error names the first that is not.
pub fn check(trace: &[Pod]) -> Result<(), String> {
    let mut names = std::collections::HashSet::new();
    for p in trace {
        profile(p)
            .validate()
            .map_err(|e| format!("pod {:?}: {e}", p.name))?;
        if !names.insert(p.name.as_str()) {
            return Err(format!("pod {:?} appears twice", p.name));
        }
    }
    Ok(())
}

/// The core holding the replay's cluster, and where its nodes are.
pub struct CorePlacer {
    pub core: Core,
    index: HashMap<String, usize>,
}

impl CorePlacer {
    /// The core with `cluster`'s nodes, in the cluster's order.
    pub fn new(cluster: &Cluster, cfg: Config) -> Result<CorePlacer, Invalid> {
        let mut core = Core::new(cfg)?;
        let mut index = HashMap::new();
        for (i, n) in cluster.nodes.iter().enumerate() {
            core.upsert_node(&crate::live::node_spec(n))?;
            index.insert(n.name.clone(), i);
        }
        Ok(CorePlacer { core, index })
    }

    /// Places `pod` through the core; where it went (the core has bound
    /// it), or `None` when it waits (it fits nowhere) or the core refused
    /// it (a pod [`check`] names).
    pub fn place(&mut self, pod: &Pod) -> Option<Placement> {
        let decisions = self.core.place(profile(pod), 0).ok()?;
        let d = decisions.first().filter(|d| d.path.placed())?;
        let node = *self.index.get(d.node.as_deref()?)?;
        let milli = match d.gpus.len() {
            1 => d.share_pct? * 10,
            _ => GPU_MILLI,
        };
        Some(Placement {
            node,
            gpus: d.gpus.iter().map(|&g| (g as usize, milli)).collect(),
        })
    }
}
