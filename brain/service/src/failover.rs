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
//! with no agent has nothing that could fall silent.

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

/// Takes down the nodes that failed and brings back those that recovered;
/// whether anything changed. Which nodes are down, and why, is the core's
/// own state (`Node::down`).
pub async fn round(agents: &Agents, api: &Api, now_unix_ns: u64) -> bool {
    let settings = api.with_core(|c| c.config().failover.clone());
    let verdicts: Vec<(String, Option<String>)> = {
        let st = agents.state.lock().unwrap_or_else(|e| e.into_inner());
        st.ingest
            .nodes
            .iter()
            // Announced, and seen at least once.
            .filter(|(_, n)| !n.inventory.is_empty() && n.received_unix_ns > 0)
            .map(|(name, n)| (name.clone(), why_down(n, &settings, now_unix_ns)))
            .collect()
    };
    let mut changed = false;
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
