//! What the gateways measure, as they report it: each gateway posts one
//! window at a time (`POST /v1/gateways/{name}/windows`) with, for every
//! replica it forwarded to, the requests answered, the server errors among
//! them, the requests in flight and the latency to the first and the last
//! byte as bucket-exact differences of its own histograms. The brain keeps
//! the last [`HORIZON_MS`] of them and sums them, over every gateway, into
//! each replica's [`ServingView`]: what its users felt.
//!
//! A window is counted once: a gateway numbers its windows within a
//! session (its start), and a window sent again (its answer was lost) is
//! acknowledged and not counted twice.

use crate::agents::ingest::ServingView;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use utoipa::ToSchema;
use vagus_decision::Invalid;
use vagus_decision::rules::*;
use vagus_proto::wire::HistogramDelta;

/// How far back the gateways' windows are summed (the brain's clock).
pub const HORIZON_MS: u64 = 10_000;

/// A histogram's change over one window, bucket-exact.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Buckets {
    /// Finite upper bounds, seconds, ascending.
    pub bounds_s: Vec<f64>,
    /// Observations in each bucket (not cumulative), then above the last
    /// bound: one more than `bounds_s`.
    pub counts: Vec<u64>,
    pub sum_s: f64,
    pub count: u64,
}

/// One replica as one gateway saw it over one window.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayReplica {
    pub model: String,
    /// The replica's placement id, as the routes name it.
    pub placement: String,
    /// Requests answered (any status), and those answered 5xx.
    pub requests: u64,
    pub errors: u64,
    /// Requests in flight at the window's end.
    pub in_flight: u64,
    /// From a request's arrival to its answer's last byte.
    pub latency: Option<Buckets>,
    /// From a request's arrival to its answer's first body byte (a
    /// stream's first token).
    pub first_byte: Option<Buckets>,
    /// Requests sent to it whose prompt length the gateway read, and their
    /// prompt tokens (what reclassification reads).
    #[serde(default)]
    pub sized: u64,
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Requests answered whose workload has a latency objective (the routes'
    /// `sla_ms`), and those among them answered in full, not 5xx, within it.
    #[serde(default)]
    pub slo_requests: u64,
    #[serde(default)]
    pub slo_met: u64,
}

/// One gateway's window.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayWindow {
    /// The gateway's run (its start, unix ms): its windows are numbered
    /// from 0 within it.
    pub session: u64,
    pub seq: u64,
    pub duration_ms: u64,
    pub replicas: Vec<GatewayReplica>,
}

/// The brain's answer to a window.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct WindowTaken {
    /// `false`: this window was counted before (sent again).
    pub counted: bool,
}

impl Buckets {
    fn validate(&self, field: &str) -> Result<(), Invalid> {
        BUCKET_BOUNDS.check(&format!("{field}.bounds_s"), self.bounds_s.len())?;
        BUCKET_COUNTS.check(&format!("{field}.counts"), self.counts.len())?;
        for (i, b) in self.bounds_s.iter().enumerate() {
            BUCKET_BOUND_S.check(&format!("{field}.bounds_s[{i}]"), *b)?;
            if i > 0 && *b <= self.bounds_s[i - 1] {
                return Err(Invalid::new(
                    &format!("{field}.bounds_s[{i}]"),
                    "must be above the bound before it",
                ));
            }
        }
        if self.counts.len() != self.bounds_s.len() + 1 {
            return Err(Invalid::new(
                &format!("{field}.counts"),
                "must have one count more than bounds_s (the last is above every bound)",
            ));
        }
        LATENCY_SUM_S.check(&format!("{field}.sum_s"), self.sum_s)?;
        WINDOW_COUNT.check(&format!("{field}.count"), self.count)?;
        for (i, c) in self.counts.iter().enumerate() {
            WINDOW_COUNT.check(&format!("{field}.counts[{i}]"), *c)?;
        }
        if self.counts.iter().sum::<u64>() != self.count {
            return Err(Invalid::new(
                &format!("{field}.count"),
                "must be the sum of counts",
            ));
        }
        Ok(())
    }

    fn delta(&self) -> HistogramDelta {
        HistogramDelta {
            bounds_s: self.bounds_s.clone(),
            counts: self.counts.clone(),
            sum_s: self.sum_s,
            count: self.count,
        }
    }
}

impl GatewayWindow {
    pub fn validate(&self) -> Result<(), Invalid> {
        WINDOW_MS.check("duration_ms", self.duration_ms)?;
        GATEWAY_REPLICAS.check("replicas", self.replicas.len())?;
        for (i, r) in self.replicas.iter().enumerate() {
            let f = |name: &str| format!("replicas[{i}].{name}");
            MODEL_ID.check(&f("model"), &r.model)?;
            DNS_LABEL.check(&f("placement"), &r.placement)?;
            WINDOW_COUNT.check(&f("requests"), r.requests)?;
            WINDOW_COUNT.check(&f("errors"), r.errors)?;
            WINDOW_COUNT.check(&f("in_flight"), r.in_flight)?;
            WINDOW_COUNT.check(&f("sized"), r.sized)?;
            WINDOW_COUNT.check(&f("slo_requests"), r.slo_requests)?;
            WINDOW_COUNT.check(&f("slo_met"), r.slo_met)?;
            if r.slo_met > r.slo_requests {
                return Err(Invalid::new(&f("slo_met"), "must be at most slo_requests"));
            }
            vagus_decision::rules::WINDOW_TOKENS.check(&f("prompt_tokens"), r.prompt_tokens)?;
            if r.errors > r.requests {
                return Err(Invalid::new(&f("errors"), "must be at most requests"));
            }
            for (name, h) in [("latency", &r.latency), ("first_byte", &r.first_byte)] {
                if let Some(h) = h {
                    h.validate(&f(name))?;
                }
            }
        }
        Ok(())
    }
}

/// One replica's window from one gateway, kept for the horizon.
#[derive(Debug)]
struct Kept {
    at_ms: u64,
    gateway: String,
    duration_ms: u64,
    requests: u64,
    errors: u64,
    in_flight: u64,
    latency: Option<HistogramDelta>,
    first_byte: Option<HistogramDelta>,
    sized: u64,
    prompt_tokens: u64,
    slo_requests: u64,
    slo_met: u64,
}

/// Every gateway's recent windows.
#[derive(Debug, Default)]
pub struct Gateways {
    /// Each gateway's session and the last window counted.
    last: BTreeMap<String, (u64, u64)>,
    /// By placement.
    recent: BTreeMap<String, VecDeque<Kept>>,
}

impl Gateways {
    /// Takes gateway `name`'s window `w` (validated) at `now_ms`; `false`
    /// when it was counted before.
    pub fn take(&mut self, name: &str, w: GatewayWindow, now_ms: u64) -> bool {
        let fresh = match self.last.get(name) {
            Some(&(session, seq)) => session != w.session || w.seq > seq,
            None => true,
        };
        if !fresh {
            return false;
        }
        self.last.insert(name.to_string(), (w.session, w.seq));
        for r in w.replicas {
            self.recent.entry(r.placement).or_default().push_back(Kept {
                at_ms: now_ms,
                gateway: name.to_string(),
                duration_ms: w.duration_ms,
                requests: r.requests,
                errors: r.errors,
                in_flight: r.in_flight,
                latency: r.latency.as_ref().map(Buckets::delta),
                first_byte: r.first_byte.as_ref().map(Buckets::delta),
                sized: r.sized,
                prompt_tokens: r.prompt_tokens,
                slo_requests: r.slo_requests,
                slo_met: r.slo_met,
            });
        }
        self.forget(now_ms);
        true
    }

    fn forget(&mut self, now_ms: u64) {
        for q in self.recent.values_mut() {
            while q.front().is_some_and(|k| k.at_ms + HORIZON_MS < now_ms) {
                q.pop_front();
            }
        }
        self.recent.retain(|_, q| !q.is_empty());
    }

    /// The requests sent to `placement` over the horizon before `now_ms`
    /// whose prompt length was read, and their mean prompt (tokens).
    pub fn prompts(&self, placement: &str, now_ms: u64) -> Option<(u64, f64)> {
        let (n, tokens) = self
            .recent
            .get(placement)?
            .iter()
            .filter(|k| k.at_ms + HORIZON_MS >= now_ms)
            .fold((0u64, 0u64), |(n, t), k| (n + k.sized, t + k.prompt_tokens));
        (n > 0).then(|| (n, tokens as f64 / n as f64))
    }

    /// The requests answered by `placement` over the horizon before
    /// `now_ms` that had a latency objective, and those that met it.
    pub fn slo(&self, placement: &str, now_ms: u64) -> (u64, u64) {
        self.recent.get(placement).map_or((0, 0), |q| {
            q.iter()
                .filter(|k| k.at_ms + HORIZON_MS >= now_ms)
                .fold((0, 0), |(n, m), k| (n + k.slo_requests, m + k.slo_met))
        })
    }

    /// What the gateways measured for `placement` over the horizon before
    /// `now_ms`; `None` when no gateway reported it.
    pub fn view(&self, placement: &str, now_ms: u64) -> Option<ServingView> {
        let q = self.recent.get(placement)?;
        let kept: Vec<&Kept> = q
            .iter()
            .filter(|k| k.at_ms + HORIZON_MS >= now_ms)
            .collect();
        if kept.is_empty() {
            return None;
        }
        let requests: u64 = kept.iter().map(|k| k.requests).sum();
        let errors: u64 = kept.iter().map(|k| k.errors).sum();
        // Each gateway's windows cover the horizon once: the rate is the
        // sum of each gateway's requests over its own windows' time.
        let mut by_gateway: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for k in &kept {
            let e = by_gateway.entry(&k.gateway).or_default();
            e.0 += k.requests;
            e.1 += k.duration_ms;
        }
        let qps: f64 = by_gateway
            .values()
            .filter(|(_, ms)| *ms > 0)
            .map(|(r, ms)| *r as f64 / (*ms as f64 / 1000.0))
            .sum();
        // In flight: each gateway's latest.
        let mut in_flight: BTreeMap<&str, u64> = BTreeMap::new();
        for k in &kept {
            in_flight.insert(&k.gateway, k.in_flight);
        }
        let latency = HistogramDelta::sum(kept.iter().filter_map(|k| k.latency.as_ref()));
        let first = HistogramDelta::sum(kept.iter().filter_map(|k| k.first_byte.as_ref()));
        let q = |h: &Option<HistogramDelta>, q: f64| h.as_ref().and_then(|h| h.quantile(q));
        Some(ServingView {
            server: "gateway".into(),
            requests: Some(requests),
            errors: Some(errors),
            qps: Some(qps),
            error_rate: Some(if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            }),
            queue_depth: None,
            running: Some(in_flight.values().sum::<u64>() as f64),
            latency_p50_s: q(&latency, 0.5),
            latency_p99_s: q(&latency, 0.99),
            ttft_p50_s: q(&first, 0.5),
            ttft_p99_s: q(&first, 0.99),
            error: String::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(session: u64, seq: u64, requests: u64, counts: Vec<u64>) -> GatewayWindow {
        let count = counts.iter().sum();
        GatewayWindow {
            session,
            seq,
            duration_ms: 1000,
            replicas: vec![GatewayReplica {
                model: "m".into(),
                placement: "p".into(),
                requests,
                errors: 1,
                in_flight: 2,
                latency: Some(Buckets {
                    bounds_s: vec![0.1, 0.2],
                    counts,
                    sum_s: 1.0,
                    count,
                }),
                first_byte: None,
                sized: 8,
                prompt_tokens: 4_000,
                slo_requests: requests,
                slo_met: requests / 2,
            }],
        }
    }

    #[test]
    fn windows_sum_over_the_horizon_once_each() {
        let mut g = Gateways::default();
        assert!(g.take("gw", window(1, 0, 10, vec![5, 5, 0]), 1_000));
        assert!(g.take("gw", window(1, 1, 10, vec![0, 10, 0]), 2_000));
        assert!(
            !g.take("gw", window(1, 1, 10, vec![0, 10, 0]), 2_100),
            "sent again"
        );
        assert!(
            g.take("gw", window(2, 0, 4, vec![4, 0, 0]), 2_200),
            "a new session"
        );
        let v = g.view("p", 2_500).unwrap();
        assert_eq!((v.requests, v.errors), (Some(24), Some(3)));
        assert!((v.qps.unwrap() - 24.0 / 3.0).abs() < 1e-9, "{v:?}");
        assert_eq!(v.running, Some(2.0));
        assert_eq!(g.prompts("p", 2_500), Some((24, 500.0)));
        assert_eq!(g.slo("p", 2_500), (24, 12));
        let p50 = v.latency_p50_s.unwrap();
        assert!(p50 > 0.1 && p50 < 0.2, "{v:?}");
        // Past the horizon: forgotten.
        assert!(g.view("p", 2_200 + HORIZON_MS + 1).is_none());
    }

    #[test]
    fn bad_windows_name_the_field() {
        let mut w = window(1, 0, 10, vec![5, 5]);
        let e = w.validate().unwrap_err();
        assert_eq!(e.field, "replicas[0].latency.counts", "{e:?}");
        w = window(1, 0, 0, vec![1, 0, 0]);
        assert_eq!(w.validate().unwrap_err().field, "replicas[0].errors");
        w = window(1, 0, 10, vec![1, 0, 0]);
        w.replicas[0].latency.as_mut().unwrap().bounds_s = vec![0.2, 0.1];
        assert_eq!(
            w.validate().unwrap_err().field,
            "replicas[0].latency.bounds_s[1]"
        );
        w = window(1, 0, 10, vec![1, 0, 0]);
        w.replicas[0].slo_met = 11;
        assert_eq!(w.validate().unwrap_err().field, "replicas[0].slo_met");
        w.replicas[0].slo_met = 0;
        w.replicas[0].latency.as_mut().unwrap().count = 7;
        assert_eq!(w.validate().unwrap_err().field, "replicas[0].latency.count");
        w.duration_ms = 0;
        assert_eq!(w.validate().unwrap_err().field, "duration_ms");
    }
}
