//! Alerts: what an operator must hear about — a node down or back, the
//! workloads moved off it, a replica's memory limit refusing allocations. Each alert is a log line, a count in
//! `vagus_brain_alerts_total{kind}`, an `event` row in the audit trail,
//! and an entry in the stream `GET /v1/events` serves (server-sent events,
//! or JSON for a client that does not ask for the stream).
//!
//! Alerts are numbered from 1 in the order they were raised; the newest
//! [`KEPT`] stay in memory, so a client that reconnects with
//! `Last-Event-ID` (or `?after=`) misses none of them while it was away
//! for less than that many.

use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;
use utoipa::ToSchema;

/// Every kind of alert (each has a series in `vagus_brain_alerts_total`).
pub const KINDS: [&str; 9] = [
    "node_down",
    "node_up",
    "mps_down",
    "mps_up",
    "reconfiguration_aborted",
    "reconfiguration_refused",
    "reconfiguration_paused",
    "reconfiguration_stuck",
    "memory_refused",
];

/// Alerts kept for clients that reconnect.
pub const KEPT: usize = 1024;

/// One alert.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Alert {
    /// 1, 2, …: the order they were raised in (the stream's event id).
    pub id: u64,
    /// The core's clock (ms).
    pub at_ms: u64,
    /// One of [`KINDS`]: `node_down`, `node_up`, `mps_down`, `mps_up`,
    /// `reconfiguration_*`, `memory_refused`.
    pub kind: String,
    pub node: Option<String>,
    /// The workloads it concerns (those moved off a node that went down).
    pub workloads: Vec<String>,
    pub summary: String,
}

/// The alerts raised, the newest kept, and their subscribers.
pub struct Alerts {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<Alert>>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    recent: VecDeque<Arc<Alert>>,
    counts: BTreeMap<String, u64>,
}

impl Default for Alerts {
    fn default() -> Alerts {
        Alerts {
            inner: Mutex::new(Inner::default()),
            tx: broadcast::channel(KEPT).0,
        }
    }
}

impl Alerts {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Raises an alert: numbered, logged, counted, kept and sent to every
    /// subscriber.
    pub fn raise(
        &self,
        at_ms: u64,
        kind: &str,
        node: Option<&str>,
        workloads: Vec<String>,
        summary: String,
    ) -> Arc<Alert> {
        eprintln!("vagus brain: alert {kind}: {summary}");
        let mut i = self.inner();
        i.next += 1;
        let a = Arc::new(Alert {
            id: i.next,
            at_ms,
            kind: kind.to_string(),
            node: node.map(str::to_string),
            workloads,
            summary,
        });
        *i.counts.entry(kind.to_string()).or_default() += 1;
        if i.recent.len() == KEPT {
            i.recent.pop_front();
        }
        i.recent.push_back(a.clone());
        // Sent under the lock, so that a subscriber that read the kept
        // ones under it gets every later alert exactly once.
        let _ = self.tx.send(a.clone());
        a
    }

    /// The kept alerts after `after` (all kept: 0), and a receiver of every
    /// later one.
    pub fn since(&self, after: u64) -> (Vec<Arc<Alert>>, broadcast::Receiver<Arc<Alert>>) {
        let i = self.inner();
        let kept = i.recent.iter().filter(|a| a.id > after).cloned().collect();
        (kept, self.tx.subscribe())
    }

    /// Alerts raised so far, by kind.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.inner().counts.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscriber_gets_what_was_kept_after_its_cursor_then_everything_later_once() {
        let a = Alerts::default();
        for k in 0..3 {
            a.raise(k, "node_down", Some("n"), vec![], format!("a{k}"));
        }
        let (kept, mut rx) = a.since(1);
        assert_eq!(kept.iter().map(|x| x.id).collect::<Vec<_>>(), [2, 3]);
        a.raise(9, "node_up", Some("n"), vec![], "back".into());
        assert_eq!(rx.try_recv().unwrap().id, 4);
        assert!(rx.try_recv().is_err());
        assert_eq!(a.counts()["node_down"], 3);
        // Only the newest KEPT stay.
        for k in 0..KEPT as u64 {
            a.raise(k, "node_down", None, vec![], String::new());
        }
        let (kept, _) = a.since(0);
        assert_eq!(kept.len(), KEPT);
        assert_eq!(kept[0].id, 5);
    }
}
