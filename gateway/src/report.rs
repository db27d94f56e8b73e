//! Streaming what the gateway measures to the brain: every report period,
//! one window (`POST /v1/gateways/{name}/windows`) with each replica's
//! requests, server errors, requests in flight, and latency to the first
//! and the last byte as bucket-exact differences of the gateway's own
//! histograms since the window before.
//!
//! The windows are read off the Prometheus metrics the proxy keeps anyway
//! (nothing is added to a request's path). A window is built once and sent
//! until the brain acknowledges it, oldest first, so a brain that was
//! unreachable for a while gets every window (up to [`MAX_PENDING`]) and,
//! as windows are numbered, counts each once.

use crate::brain::Brain;
use crate::metrics::Metrics;
use hyper::Method;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Windows kept for a brain that does not answer (beyond: the oldest go).
pub const MAX_PENDING: usize = 120;

/// A histogram's change over a window (the brain's `Buckets`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Buckets {
    pub bounds_s: Vec<f64>,
    /// Per bucket, not cumulative; the last above every bound.
    pub counts: Vec<u64>,
    pub sum_s: f64,
    pub count: u64,
}

/// One replica over a window (the brain's `GatewayReplica`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Replica {
    pub model: String,
    pub placement: String,
    pub requests: u64,
    pub errors: u64,
    pub in_flight: u64,
    pub latency: Option<Buckets>,
    pub first_byte: Option<Buckets>,
    /// Requests sent whose prompt length was read, and their prompt tokens.
    pub sized: u64,
    pub prompt_tokens: u64,
    /// Requests answered whose workload has a latency objective, and those
    /// that met it.
    pub slo_requests: u64,
    pub slo_met: u64,
}

/// One window (the brain's `GatewayWindow`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Window {
    pub session: u64,
    pub seq: u64,
    pub duration_ms: u64,
    pub replicas: Vec<Replica>,
}

/// A cumulative histogram as the metrics hold it.
#[derive(Clone, Debug, Default, PartialEq)]
struct Hist {
    bounds_s: Vec<f64>,
    /// At or below each bound.
    cumulative: Vec<u64>,
    sum_s: f64,
    count: u64,
}

/// One replica's cumulative values.
#[derive(Clone, Debug, Default, PartialEq)]
struct Totals {
    requests: u64,
    errors: u64,
    in_flight: u64,
    latency: Option<Hist>,
    first_byte: Option<Hist>,
    sized: u64,
    prompt_tokens: u64,
    slo_requests: u64,
    slo_met: u64,
}

type Snapshot = BTreeMap<(String, String), Totals>;

fn labels(m: &prometheus::proto::Metric) -> Option<(String, String)> {
    let get = |k: &str| {
        m.get_label()
            .iter()
            .find(|l| l.name() == k)
            .map(|l| l.value().to_string())
    };
    Some((get("model")?, get("replica")?))
}

fn hist(m: &prometheus::proto::Metric) -> Hist {
    let h = m.get_histogram();
    Hist {
        bounds_s: h.get_bucket().iter().map(|b| b.upper_bound()).collect(),
        cumulative: h
            .get_bucket()
            .iter()
            .map(|b| b.cumulative_count())
            .collect(),
        sum_s: h.get_sample_sum(),
        count: h.get_sample_count(),
    }
}

/// Every replica's totals now.
fn snapshot(m: &Metrics) -> Snapshot {
    use prometheus::core::Collector;
    let mut s = Snapshot::new();
    for mf in m.requests.collect() {
        for metric in mf.get_metric() {
            let Some(key) = labels(metric) else { continue };
            let code = metric
                .get_label()
                .iter()
                .find(|l| l.name() == "code")
                .map(|l| l.value().to_string())
                .unwrap_or_default();
            let n = metric.get_counter().get_value() as u64;
            let t = s.entry(key).or_default();
            t.requests += n;
            if code.starts_with('5') {
                t.errors += n;
            }
        }
    }
    type Field = fn(&mut Totals) -> &mut u64;
    let counters: [(&prometheus::IntCounterVec, Field); 4] = [
        (&m.sized, |t| &mut t.sized),
        (&m.routed_prompt_tokens, |t| &mut t.prompt_tokens),
        // Met before requests: a request counts into both, requests first,
        // so read in this order the met never run ahead.
        (&m.slo_met, |t| &mut t.slo_met),
        (&m.slo_requests, |t| &mut t.slo_requests),
    ];
    for (vec, field) in counters {
        for mf in vec.collect() {
            for metric in mf.get_metric() {
                if let Some(key) = labels(metric) {
                    *field(s.entry(key).or_default()) = metric.get_counter().get_value() as u64;
                }
            }
        }
    }
    for mf in m.in_flight.collect() {
        for metric in mf.get_metric() {
            if let Some(key) = labels(metric) {
                s.entry(key).or_default().in_flight =
                    metric.get_gauge().get_value().max(0.0) as u64;
            }
        }
    }
    for (vec, first) in [(&m.duration, false), (&m.first_byte, true)] {
        for mf in vec.collect() {
            for metric in mf.get_metric() {
                if let Some(key) = labels(metric) {
                    let t = s.entry(key).or_default();
                    let h = Some(hist(metric));
                    if first {
                        t.first_byte = h;
                    } else {
                        t.latency = h;
                    }
                }
            }
        }
    }
    s
}

/// `now − before`, per bucket.
fn change(now: &Hist, before: Option<&Hist>) -> Option<Buckets> {
    let zero = Hist {
        bounds_s: now.bounds_s.clone(),
        cumulative: vec![0; now.cumulative.len()],
        ..Hist::default()
    };
    let b = before
        .filter(|b| b.bounds_s == now.bounds_s)
        .unwrap_or(&zero);
    let count = now.count.saturating_sub(b.count);
    if count == 0 {
        return None;
    }
    let mut counts = Vec::with_capacity(now.cumulative.len() + 1);
    let mut below = 0;
    for (n, p) in now.cumulative.iter().zip(&b.cumulative) {
        let cum = n.saturating_sub(*p).min(count);
        counts.push(cum.saturating_sub(below));
        below = below.max(cum);
    }
    counts.push(count - below);
    Some(Buckets {
        bounds_s: now.bounds_s.clone(),
        counts,
        sum_s: (now.sum_s - b.sum_s).max(0.0),
        count,
    })
}

/// What changed between two snapshots: every replica that answered
/// something or holds requests. A met counted past its request (the two
/// counters are read apart) is left in `now` for the next window.
fn window_of(now: &mut Snapshot, before: &Snapshot) -> Vec<Replica> {
    let mut out = Vec::new();
    for ((model, placement), t) in now.iter_mut() {
        let b = before.get(&(model.clone(), placement.clone()));
        let requests = t.requests.saturating_sub(b.map_or(0, |b| b.requests));
        let errors = t
            .errors
            .saturating_sub(b.map_or(0, |b| b.errors))
            .min(requests);
        let latency = t
            .latency
            .as_ref()
            .and_then(|h| change(h, b.and_then(|b| b.latency.as_ref())));
        let first_byte = t
            .first_byte
            .as_ref()
            .and_then(|h| change(h, b.and_then(|b| b.first_byte.as_ref())));
        let sized = t.sized.saturating_sub(b.map_or(0, |b| b.sized));
        let prompt_tokens = t
            .prompt_tokens
            .saturating_sub(b.map_or(0, |b| b.prompt_tokens));
        let slo_requests = t
            .slo_requests
            .saturating_sub(b.map_or(0, |b| b.slo_requests));
        let met_before = b.map_or(0, |b| b.slo_met);
        let slo_met = t.slo_met.saturating_sub(met_before).min(slo_requests);
        t.slo_met = t.slo_met.min(met_before + slo_met);
        if requests == 0
            && slo_requests == 0
            && t.in_flight == 0
            && sized == 0
            && latency.is_none()
            && first_byte.is_none()
        {
            continue;
        }
        out.push(Replica {
            model: model.clone(),
            placement: placement.clone(),
            requests,
            errors,
            in_flight: t.in_flight,
            latency,
            first_byte,
            sized,
            prompt_tokens,
            slo_requests,
            slo_met,
        });
    }
    out
}

/// Reports to `brain` as gateway `name` every `every`, for good.
pub async fn report(
    shared: std::sync::Arc<crate::proxy::Shared>,
    brain: std::sync::Arc<Brain>,
    name: String,
    every: Duration,
) {
    let path = format!("/v1/gateways/{name}/windows");
    let session = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let m = &shared.metrics;
    let mut before = snapshot(m);
    let mut since = Instant::now();
    let mut seq = 0u64;
    let mut pending: VecDeque<Window> = VecDeque::new();
    let mut said: Option<String> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let mut now = snapshot(m);
        let at = Instant::now();
        pending.push_back(Window {
            session,
            seq,
            duration_ms: (at - since).as_millis().clamp(1, 60_000) as u64,
            replicas: window_of(&mut now, &before),
        });
        seq += 1;
        (before, since) = (now, at);
        if pending.len() > MAX_PENDING {
            pending.pop_front();
            m.report_dropped.inc();
        }
        while let Some(w) = pending.front() {
            let sent = match serde_json::to_vec(w) {
                Ok(body) => brain.call(Method::POST, &path, Some(body)).await,
                Err(e) => Err(e.to_string()),
            };
            match sent.map(drop) {
                Ok(()) => {
                    pending.pop_front();
                    m.reports.inc();
                    said = None;
                }
                Err(e) => {
                    m.report_errors.inc();
                    if said.as_ref() != Some(&e) {
                        eprintln!(
                            "vagus gateway: cannot report to the brain ({path}): {e}; keeping the windows"
                        );
                        said = Some(e);
                    }
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(cumulative: Vec<u64>, count: u64, sum_s: f64) -> Hist {
        Hist {
            bounds_s: vec![0.1, 0.2],
            cumulative,
            sum_s,
            count,
        }
    }

    #[test]
    fn windows_are_the_differences_per_bucket() {
        let key = ("m".to_string(), "p".to_string());
        let mut before = Snapshot::new();
        before.insert(
            key.clone(),
            Totals {
                requests: 4,
                errors: 1,
                in_flight: 0,
                latency: Some(h(vec![2, 3], 4, 1.0)),
                first_byte: None,
                sized: 4,
                prompt_tokens: 2_000,
                slo_requests: 4,
                slo_met: 3,
            },
        );
        let mut now = before.clone();
        let t = now.get_mut(&key).unwrap();
        (t.requests, t.errors, t.in_flight) = (10, 2, 3);
        t.latency = Some(h(vec![3, 7], 10, 2.5));
        (t.sized, t.prompt_tokens) = (9, 22_000);
        (t.slo_requests, t.slo_met) = (10, 7);
        let w = window_of(&mut now, &before);
        assert_eq!(w.len(), 1);
        let r = &w[0];
        assert_eq!((r.requests, r.errors, r.in_flight), (6, 1, 3));
        assert_eq!((r.sized, r.prompt_tokens), (5, 20_000));
        assert_eq!((r.slo_requests, r.slo_met), (6, 4));
        let l = r.latency.as_ref().unwrap();
        assert_eq!(l.counts, vec![1, 3, 2], "per bucket, the last above 0.2 s");
        assert_eq!(l.count, 6);
        assert!((l.sum_s - 1.5).abs() < 1e-9);
        // Nothing happened: nothing to say.
        assert!(window_of(&mut before.clone(), &before).is_empty());
        // A met read before its request: the window holds it back, the
        // next carries it.
        let before = now.clone();
        let t = now.get_mut(&key).unwrap();
        (t.slo_requests, t.slo_met) = (12, 10);
        let w = window_of(&mut now, &before);
        assert_eq!((w[0].slo_requests, w[0].slo_met), (2, 2));
        let before = now.clone();
        let t = now.get_mut(&key).unwrap();
        (t.slo_requests, t.slo_met) = (13, 10);
        let w = window_of(&mut now, &before);
        assert_eq!((w[0].slo_requests, w[0].slo_met), (1, 1));
    }
}
