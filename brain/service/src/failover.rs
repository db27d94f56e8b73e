//! Node failure: a node whose agent has sent no window for
//! `failover.node_timeout_ms`, or whose GPU reported a critical XID in its
//! agent's current session, is down. The core places what ran there again
//! elsewhere, most important first ([`vagus_decision::Core::node_down`]);
//! the executor then starts those replicas where they now belong, and the
//! routes stop listing the old ones. The node is back once its agent
//! reports again (after a critical XID, only from a new session: an agent
//! restarted once the GPU was reset). Each change is an alert.
//!
//! Only nodes that agents announced are watched: a node declared up front
//! with no agent has nothing that could fall silent. On Kubernetes, a node
//! it reports not ready is down as well ([`crate::kube_exec`]).

use crate::agents::Agents;
use crate::agents::ingest::NodeState;
use crate::http::Api;
use vagus_decision::config::Failover as Settings;

/// The actor of the decisions the failover takes, in the audit trail.
pub const ACTOR: &str = "failover";

/// Why node `n` is down now, if it is.
fn why_down(n: &NodeState, s: &Settings, now_unix_ns: u64) -> Option<String> {
    if let Some((gpu, xid)) = n.xids.iter().find(|(_, x)| s.critical(*x)) {
        return Some(format!("GPU {gpu} reported XID {xid}"));
    }
    let silent_ns = now_unix_ns.saturating_sub(n.received_unix_ns);
    (s.node_timeout_ms > 0 && silent_ns > s.node_timeout_ms * 1_000_000).then(|| {
        format!(
            "its agent sent nothing for {:.1} s (timeout {:.1} s)",
            silent_ns as f64 / 1e9,
            s.node_timeout_ms as f64 / 1e3
        )
    })
}

/// Takes down the nodes that failed and brings back those that recovered,
/// and the same for each GPU's MPS daemon; whether anything changed. Which
/// nodes and daemons are down, and why, is the core's own state
/// (`Node::down`, `Gpu::mps_down`).
pub async fn round(agents: &Agents, api: &Api, now_unix_ns: u64) -> bool {
    let (settings, pools) = api.with_core(|c| (c.config().failover.clone(), c.config().mps_pools));
    type Verdicts = Vec<(String, Option<String>, Vec<(u32, bool)>)>;
    let verdicts: Verdicts = {
        let st = agents.state.lock().unwrap_or_else(|e| e.into_inner());
        st.ingest
            .nodes
            .iter()
            // Announced, and seen at least once.
            .filter(|(_, n)| !n.inventory.is_empty() && n.received_unix_ns > 0)
            .map(|(name, n)| {
                // Where its agent drives an MPS daemon: whether it answers.
                let daemons = n.mps.iter().map(|(g, s)| (*g, s.daemon)).collect();
                (name.clone(), why_down(n, &settings, now_unix_ns), daemons)
            })
            .collect()
    };
    let mut changed = false;
    for (node, why, daemons) in &verdicts {
        // Shares are MPS percentages only with pools; a node that is down
        // has nothing placed to move.
        if pools && why.is_none() {
            changed |= mps_round(api, node, daemons).await;
        }
    }
    // Kubernetes' word counts too where the brain runs there: a node it
    // reports not ready is down whatever its agent says.
    let verdicts = verdicts.into_iter().map(|(n, w, _)| {
        let w = w.or_else(|| api.kube_down(&n));
        (n, w)
    });
    for (node, why) in verdicts {
        // A node the core does not hold (its agent's report was
        // unusable) has nothing to move.
        let Some(was) = api.with_core(|c| c.node(&node).map(|n| n.down.clone())) else {
            continue;
        };
        match (why, was) {
            (Some(why), None) => {
                changed = true;
                match api.node_down(ACTOR, &node, &why).await {
                    Ok(moved) => {
                        let summary = if moved.is_empty() {
                            format!("{node} is down: {why}; nothing ran there")
                        } else {
                            format!(
                                "{node} is down: {why}; placed again, most important first: {}",
                                moved.join(", ")
                            )
                        };
                        api.alert("node_down", Some(&node), moved, summary).await;
                    }
                    Err(e) => {
                        // Its work moved; only the trail failed.
                        let summary = format!(
                            "{node} is down: {why}; the audit trail did not record the moves: {}",
                            e.message()
                        );
                        api.alert("node_down", Some(&node), Vec::new(), summary)
                            .await;
                    }
                }
            }
            (None, Some(was)) => {
                changed = true;
                let placed = api.node_up(ACTOR, &node).await.unwrap_or_default();
                let mut summary = format!("{node} is back (it was down: {was})");
                if !placed.is_empty() {
                    summary.push_str(&format!("; placed from the queue: {}", placed.join(", ")));
                }
                api.alert("node_up", Some(&node), placed, summary).await;
            }
            _ => {}
        }
    }
    changed
}

/// GPUs of `node` whose MPS daemon stopped answering (`daemons`: GPU, it
/// answers) go down in the core, their shares onto GPUs of their own; those
/// whose daemon answers again come back (one down for a conflicting
/// configuration is the sync's to bring back). Whether anything changed.
async fn mps_round(api: &Api, node: &str, daemons: &[(u32, bool)]) -> bool {
    let was: Vec<(u32, bool, bool)> = api.with_core(|c| {
        c.node(node).map_or(Vec::new(), |n| {
            n.gpus
                .iter()
                .map(|g| (g.index, g.mps_down.is_some(), g.mps_conflict))
                .collect()
        })
    });
    let mut changed = false;
    for &(gpu, answers) in daemons {
        let Some(&(_, down, conflict)) = was.iter().find(|(g, ..)| *g == gpu) else {
            continue;
        };
        match (answers, down) {
            (false, false) => {
                changed = true;
                let why = "its agent reports no MPS control daemon answering";
                mps_fell(api, ACTOR, node, gpu, why, false).await;
            }
            (true, true) if !conflict => {
                changed = true;
                mps_back(
                    api,
                    ACTOR,
                    node,
                    gpu,
                    "its MPS control daemon answers again",
                )
                .await;
            }
            _ => {}
        }
    }
    changed
}

/// Takes GPU `gpu` of `node` down in the core for its MPS daemon (`why`;
/// `conflict`: its configuration, not its absence), as `actor`, with an
/// `mps_down` alert naming what moved.
pub async fn mps_fell(api: &Api, actor: &str, node: &str, gpu: u32, why: &str, conflict: bool) {
    let (moved, trail) = match api.mps_down(actor, node, gpu, why, conflict).await {
        Ok(moved) => (moved, String::new()),
        Err(e) => (
            Vec::new(),
            format!(
                "; the audit trail did not record the moves: {}",
                e.message()
            ),
        ),
    };
    let summary = if moved.is_empty() {
        format!("{node} GPU {gpu}: {why}; nothing to move{trail}")
    } else {
        format!(
            "{node} GPU {gpu}: {why}; on GPUs of their own, most important first: {}{trail}",
            moved.join(", ")
        )
    };
    api.alert("mps_down", Some(node), moved, summary).await;
}

/// Brings GPU `gpu` of `node` back (`why`), as `actor`, with an `mps_up`
/// alert naming what the queue placed.
pub async fn mps_back(api: &Api, actor: &str, node: &str, gpu: u32, why: &str) {
    let placed = api.mps_up(actor, node, gpu).await.unwrap_or_default();
    let mut summary = format!("{node} GPU {gpu}: {why}");
    if !placed.is_empty() {
        summary.push_str(&format!("; placed from the queue: {}", placed.join(", ")));
    }
    api.alert("mps_up", Some(node), placed, summary).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_for_a_silence_past_the_timeout_or_a_devices_xid_not_an_applications() {
        let s = Settings::default();
        let mut n = NodeState {
            received_unix_ns: 10_000_000_000,
            ..NodeState::default()
        };
        let at = |ms: u64| 10_000_000_000 + ms * 1_000_000;
        assert_eq!(why_down(&n, &s, at(2_999)), None);
        let why = why_down(&n, &s, at(3_001)).unwrap();
        assert!(why.contains("sent nothing for 3.0 s"), "{why}");
        n.xids = vec![(0, 13), (1, 31)];
        assert_eq!(why_down(&n, &s, at(100)), None, "applications' XIDs");
        n.xids.push((1, 79));
        assert_eq!(why_down(&n, &s, at(100)).unwrap(), "GPU 1 reported XID 79");
        let never = Settings {
            node_timeout_ms: 0,
            ..Settings::default()
        };
        n.xids.clear();
        assert_eq!(why_down(&n, &never, at(3_600_000)), None);
    }
}
