//! Where telemetry meets decisions: the nodes connected agents announce,
//! and the load their windows report, brought into the decision core.

use crate::agents::Agents;
use crate::http::Api;
use vagus_decision::{GpuSpec, NodeLoad, NodeSpec};

/// Brings every connected agent's node and load into the core.
pub fn agents_to_core(agents: &Agents, api: &Api) {
    let snapshot: Vec<(String, NodeSpec, NodeLoad)> = {
        let st = agents.state.lock().unwrap_or_else(|e| e.into_inner());
        st.ingest
            .nodes
            .iter()
            .filter(|(_, n)| !n.inventory.is_empty())
            .map(|(name, n)| {
                // The Hello carries GPUs, not the node's CPU and memory:
                // agent-declared nodes are not limited by them.
                let spec = NodeSpec {
                    name: name.clone(),
                    cpu_milli: 1 << 40,
                    memory_mib: 1 << 40,
                    labels: Default::default(),
                    gpus: n
                        .inventory
                        .iter()
                        // Zero: the agent could not tell; the GPU table can.
                        .map(|g| GpuSpec {
                            model: g.model.clone(),
                            sms: (g.sms > 0).then_some(g.sms),
                            memory_gb: (g.memory_bytes > 0).then(|| g.memory_bytes as f64 / 1e9),
                            tdp_w: (g.tdp_watts > 0).then_some(g.tdp_watts as f64),
                            throttling: false,
                        })
                        .collect(),
                };
                let load = NodeLoad {
                    qps: None,
                    error_rate: None,
                    healthy: n.gpus.values().all(|g| g.xids.is_empty()),
                    gpus: n
                        .gpus
                        .values()
                        .map(|g| (g.index, g.utilization as f64, g.power_mw as f64 / 1000.0))
                        .collect(),
                };
                (name.clone(), spec, load)
            })
            .collect()
    };
    for (name, spec, load) in snapshot {
        if let Err(e) = api.upsert_node(&spec) {
            eprintln!("vagus brain: node {name} from its agent: {e}");
            continue;
        }
        let _ = api.observe(&name, &load);
    }
}
