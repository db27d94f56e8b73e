//! The route table: each model's replicas and their weights, and the
//! choice of a replica per request — smooth weighted round robin (nginx's
//! `upstream` algorithm), so a replica of weight 10 beside one of 90 gets
//! exactly one request in ten, evenly spread, with no randomness to blur a
//! small sample.
//!
//! Pure: no I/O. A replica the proxy could not reach is marked down at once
//! and gets nothing until a route update lists it again as taking requests.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One replica as the brain's `GET /v1/routes` lists it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct RouteEntry {
    pub placement: String,
    pub node: String,
    /// `http://HOST:PORT`.
    pub url: String,
    pub state: String,
    pub weight: u32,
    /// Its workload's latency objective, when it has one: the gateway
    /// counts the answers that meet it.
    #[serde(default)]
    pub sla_ms: Option<u32>,
}

/// The brain's answer.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct RouteSet {
    pub models: BTreeMap<String, Vec<RouteEntry>>,
}

#[derive(Clone, Debug)]
struct Slot {
    /// Shared with the requests routed to it (no copies per request).
    entry: Arc<RouteEntry>,
    /// Smooth weighted round robin's running weight.
    current: i64,
    /// Unreachable: set by the proxy, cleared when the brain lists the
    /// replica again after it was marked.
    down: bool,
}

/// Every model's replicas.
#[derive(Debug, Default)]
pub struct Table {
    models: BTreeMap<String, Vec<Slot>>,
    /// Route updates taken.
    pub updates: u64,
}

impl Table {
    /// Takes the brain's routes: new replicas join, weights change, those
    /// no longer listed leave (their requests in flight finish on their
    /// own). A replica marked down stays down only while the brain still
    /// lists it as it was when marked.
    pub fn update(&mut self, routes: &RouteSet) {
        let mut next = BTreeMap::new();
        for (model, entries) in &routes.models {
            let old = self.models.remove(model).unwrap_or_default();
            let slots: Vec<Slot> = entries
                .iter()
                .map(|e| {
                    let prev = old.iter().find(|s| s.entry.placement == e.placement);
                    Slot {
                        entry: Arc::new(e.clone()),
                        current: prev.map_or(0, |p| p.current),
                        down: prev.is_some_and(|p| p.down && p.entry.url == e.url),
                    }
                })
                .collect();
            next.insert(model.clone(), slots);
        }
        self.models = next;
        self.updates += 1;
    }

    /// The replica for the next request to `model`, skipping `except` (a
    /// retry's replicas already tried).
    pub fn pick(&mut self, model: &str, except: &[String]) -> Option<Arc<RouteEntry>> {
        let slots = self.models.get_mut(model)?;
        let eligible =
            |s: &Slot| s.entry.weight > 0 && !s.down && !except.contains(&s.entry.placement);
        let (mut total, mut winner) = (0i64, None::<usize>);
        for i in 0..slots.len() {
            if !eligible(&slots[i]) {
                continue;
            }
            let w = slots[i].entry.weight as i64;
            slots[i].current += w;
            total += w;
            if winner.is_none_or(|b| slots[i].current > slots[b].current) {
                winner = Some(i);
            }
        }
        let b = winner?;
        slots[b].current -= total;
        Some(slots[b].entry.clone())
    }

    /// The replica could not be reached: nothing more goes to it until the
    /// brain lists it anew.
    pub fn mark_down(&mut self, placement: &str) {
        for slots in self.models.values_mut() {
            for s in slots.iter_mut().filter(|s| s.entry.placement == placement) {
                s.down = true;
            }
        }
    }

    /// The models routed, and how many replicas take requests for each.
    pub fn models(&self) -> impl Iterator<Item = (&str, usize)> {
        self.models.iter().map(|(m, s)| {
            (
                m.as_str(),
                s.iter().filter(|s| s.entry.weight > 0 && !s.down).count(),
            )
        })
    }

    /// The only model routed, if there is exactly one.
    pub fn sole_model(&self) -> Option<&str> {
        let mut m = self.models.keys();
        match (m.next(), m.next()) {
            (Some(one), None) => Some(one),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(weights: &[(&str, u32)]) -> RouteSet {
        RouteSet {
            models: [(
                "m".to_string(),
                weights
                    .iter()
                    .map(|(p, w)| RouteEntry {
                        placement: p.to_string(),
                        node: "n".into(),
                        url: format!("http://127.0.0.1:{}", 8000 + p.len()),
                        state: "running".into(),
                        weight: *w,
                        sla_ms: None,
                    })
                    .collect(),
            )]
            .into(),
        }
    }

    fn count(t: &mut Table, n: usize) -> BTreeMap<String, usize> {
        let mut c = BTreeMap::new();
        for _ in 0..n {
            let p = t.pick("m", &[]).unwrap().placement.clone();
            *c.entry(p).or_default() += 1;
        }
        c
    }

    #[test]
    fn requests_follow_the_weights_exactly_and_evenly() {
        let mut t = Table::default();
        t.update(&routes(&[("a", 10), ("bb", 90)]));
        let c = count(&mut t, 2000);
        assert_eq!((c["a"], c["bb"]), (200, 1800));
        // Evenly: never two to `a` in a row.
        let picks: Vec<String> = (0..100)
            .map(|_| t.pick("m", &[]).unwrap().placement.clone())
            .collect();
        assert!(picks.windows(2).all(|w| !(w[0] == "a" && w[1] == "a")));
        t.update(&routes(&[("a", 1), ("bb", 1), ("ccc", 2)]));
        let c = count(&mut t, 400);
        assert_eq!((c["a"], c["bb"], c["ccc"]), (100, 100, 200));
    }

    #[test]
    fn weight_zero_down_and_tried_replicas_get_nothing() {
        let mut t = Table::default();
        t.update(&routes(&[("a", 50), ("bb", 50)]));
        t.update(&routes(&[("a", 0), ("bb", 50)]));
        assert_eq!(count(&mut t, 10)["bb"], 10);
        t.update(&routes(&[("a", 50), ("bb", 50)]));
        t.mark_down("bb");
        assert_eq!(count(&mut t, 10)["a"], 10);
        assert_eq!(
            t.pick("m", &["a".to_string()]),
            None,
            "a retry finds none left"
        );
        // Still listed as before: still down. Listed anew (another URL): up.
        t.update(&routes(&[("a", 50), ("bb", 50)]));
        assert_eq!(count(&mut t, 4).get("bb"), None);
        let mut moved = routes(&[("a", 50), ("bb", 50)]);
        moved.models.get_mut("m").unwrap()[1].url = "http://127.0.0.1:9999".into();
        t.update(&moved);
        assert_eq!(count(&mut t, 4)["bb"], 2);
        assert_eq!(t.pick("other", &[]), None);
        assert_eq!(t.sole_model(), Some("m"));
    }
}
