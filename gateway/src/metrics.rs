//! What the gateway measures, per model and replica, under `vagus_gateway_`
//! names (the `prometheus` crate): requests by status code, latency to the
//! first byte (a stream's first token) and to the last, requests in
//! flight, retries, requests it could not route, and the profile of what it
//! forwards (prompt tokens, `max_tokens`, by priority).

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Latency buckets: 0.5 ms to 2 min, about 26% apart.
fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.0005, 1.26, 54).expect("valid buckets")
}

fn token_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(1.0, 2.0, 18).expect("valid buckets")
}

/// One replica's series, looked up once (not per request: a labelled
/// lookup hashes the labels and takes the family's lock).
pub struct Series {
    pub model: String,
    pub replica: String,
    pub forwarded: IntCounter,
    pub in_flight: prometheus::IntGauge,
    pub duration: prometheus::Histogram,
    pub first_byte: prometheus::Histogram,
    pub sized: IntCounter,
    pub routed_prompt_tokens: IntCounter,
    pub slo_requests: IntCounter,
    pub slo_met: IntCounter,
    /// `requests{code="200"}`, the common answer; other codes are looked up.
    pub ok: IntCounter,
}

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub forwarded: IntCounterVec,
    pub duration: HistogramVec,
    pub first_byte: HistogramVec,
    pub in_flight: IntGaugeVec,
    pub retries: IntCounterVec,
    pub unrouted: IntCounterVec,
    pub prompt_tokens: HistogramVec,
    pub max_tokens: HistogramVec,
    pub sized: IntCounterVec,
    pub routed_prompt_tokens: IntCounterVec,
    pub slo_requests: IntCounterVec,
    pub slo_met: IntCounterVec,
    pub route_updates: IntCounter,
    pub route_errors: IntCounter,
    pub reports: IntCounter,
    pub report_errors: IntCounter,
    pub report_dropped: IntCounter,
    pub replicas: IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let registry = Registry::new();
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
            r.register(Box::new(c.clone())).expect("registered once");
            c
        }
        let counter = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("a valid counter"),
            )
        };
        let histogram = |name: &str, help: &str, labels: &[&str], b: Vec<f64>| {
            reg(
                &registry,
                HistogramVec::new(HistogramOpts::new(name, help).buckets(b), labels)
                    .expect("a valid histogram"),
            )
        };
        let replica = &["model", "replica"];
        Metrics {
            requests: counter(
                "vagus_gateway_requests_total",
                "Requests forwarded, by model, replica and the status code answered.",
                &["model", "replica", "code"],
            ),
            forwarded: counter(
                "vagus_gateway_forwarded_total",
                "Requests sent to a replica (counted when sent, retries included).",
                &["model", "replica"],
            ),
            duration: histogram(
                "vagus_gateway_request_duration_seconds",
                "From the request's arrival to its answer's last byte.",
                replica,
                latency_buckets(),
            ),
            first_byte: histogram(
                "vagus_gateway_first_byte_seconds",
                "From the request's arrival to its answer's first body byte (a stream's first token).",
                replica,
                latency_buckets(),
            ),
            in_flight: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "vagus_gateway_in_flight",
                        "Requests forwarded and not yet answered in full.",
                    ),
                    replica,
                )
                .expect("a valid gauge"),
            ),
            retries: counter(
                "vagus_gateway_retries_total",
                "Requests sent again to another replica after the first could not be reached.",
                &["model"],
            ),
            unrouted: counter(
                "vagus_gateway_unrouted_total",
                "Requests answered by the gateway itself, by reason.",
                &["model", "reason"],
            ),
            prompt_tokens: histogram(
                "vagus_gateway_prompt_tokens",
                "Prompt tokens of the requests forwarded (text: a token per four characters).",
                &["model", "priority"],
                token_buckets(),
            ),
            sized: counter(
                "vagus_gateway_sized_total",
                "Requests sent to a replica whose prompt length the gateway read.",
                replica,
            ),
            routed_prompt_tokens: counter(
                "vagus_gateway_routed_prompt_tokens_total",
                "Prompt tokens of the requests sent to a replica (what the brain reclassifies by).",
                replica,
            ),
            slo_requests: counter(
                "vagus_gateway_slo_requests_total",
                "Requests answered by a replica whose workload has a latency objective (the routes' sla_ms).",
                replica,
            ),
            slo_met: counter(
                "vagus_gateway_slo_met_total",
                "Of those, the ones answered in full, not 5xx, within the objective.",
                replica,
            ),
            max_tokens: histogram(
                "vagus_gateway_max_tokens",
                "The max_tokens the requests forwarded asked for.",
                &["model", "priority"],
                token_buckets(),
            ),
            route_updates: reg(
                &registry,
                IntCounter::new(
                    "vagus_gateway_route_updates_total",
                    "Route tables taken from the brain.",
                )
                .expect("a valid counter"),
            ),
            route_errors: reg(
                &registry,
                IntCounter::new(
                    "vagus_gateway_route_errors_total",
                    "Route updates that failed (the last table stays).",
                )
                .expect("a valid counter"),
            ),
            reports: reg(
                &registry,
                IntCounter::new(
                    "vagus_gateway_reports_total",
                    "Windows of measurements the brain took.",
                )
                .expect("a valid counter"),
            ),
            report_errors: reg(
                &registry,
                IntCounter::new(
                    "vagus_gateway_report_errors_total",
                    "Attempts to send a window that failed (the window is sent again).",
                )
                .expect("a valid counter"),
            ),
            report_dropped: reg(
                &registry,
                IntCounter::new(
                    "vagus_gateway_report_dropped_total",
                    "Windows given up while the brain did not answer (beyond the 120 kept).",
                )
                .expect("a valid counter"),
            ),
            replicas: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "vagus_gateway_replicas",
                        "Replicas taking requests, by model.",
                    ),
                    &["model"],
                )
                .expect("a valid gauge"),
            ),
            registry,
        }
    }
}

impl Metrics {
    /// The series of `replica` of `model`.
    pub fn series(&self, model: &str, replica: &str) -> Series {
        let l = [model, replica];
        Series {
            model: model.to_string(),
            replica: replica.to_string(),
            forwarded: self.forwarded.with_label_values(&l),
            in_flight: self.in_flight.with_label_values(&l),
            duration: self.duration.with_label_values(&l),
            first_byte: self.first_byte.with_label_values(&l),
            sized: self.sized.with_label_values(&l),
            routed_prompt_tokens: self.routed_prompt_tokens.with_label_values(&l),
            slo_requests: self.slo_requests.with_label_values(&l),
            slo_met: self.slo_met.with_label_values(&l),
            ok: self.requests.with_label_values(&[model, replica, "200"]),
        }
    }

    pub fn text(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}
