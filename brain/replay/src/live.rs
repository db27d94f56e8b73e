//! The trace in the shapes the brain's live decision core takes.

use crate::cluster::Node;
use std::collections::BTreeMap;
use vagus_decision::{GpuSpec, NodeSpec};

/// A node of the openb trace (its GPUs all of one model, specs from the
/// GPU table).
pub fn node_spec(n: &Node) -> NodeSpec {
    NodeSpec {
        name: n.name.clone(),
        cpu_milli: n.cpu_milli,
        memory_mib: n.memory_mib,
        labels: BTreeMap::new(),
        gpus: n
            .gpus
            .iter()
            .map(|_| GpuSpec {
                model: n.model.clone(),
                sms: None,
                memory_gb: None,
                tdp_w: None,
                throttling: false,
            })
            .collect(),
    }
}
