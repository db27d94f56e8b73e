//! The server's Prometheus metrics under vLLM's names, types, labels and
//! buckets, so whatever reads a vLLM server reads this one.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::time::Duration;

/// vLLM's buckets (vllm/engine/metrics.py).
const TTFT: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
const TPOT: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];
const E2E: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
];

/// Buckets 4% apart from 1 ms to 10 min, with vLLM's own among them: a
/// quantile read from them (linear within a bucket, as Prometheus reads
/// them) is within 4% of the true one.
fn fine(vllm: &[f64]) -> Vec<f64> {
    let mut b: Vec<f64> = (0..)
        .map(|i| 0.001 * 1.04f64.powi(i))
        .take_while(|&x| x <= 600.0)
        // Four significant digits keep the page readable.
        .map(|x| {
            let scale = 10f64.powi(3 - x.log10().floor() as i32);
            (x * scale).round() / scale
        })
        .collect();
    b.extend_from_slice(vllm);
    b.sort_by(f64::total_cmp);
    b.dedup_by(|a, b| (*a / *b - 1.0).abs() < 0.01);
    b
}

pub struct Metrics {
    registry: Registry,
    /// Answers by handler, method and status class, as vLLM's API server
    /// counts them (prometheus-fastapi-instrumentator).
    pub http: IntCounterVec,
    model: String,
    running: IntGaugeVec,
    waiting: IntGaugeVec,
    e2e: HistogramVec,
    ttft: HistogramVec,
    tpot: HistogramVec,
    success: IntCounterVec,
    prompt_tokens: IntCounterVec,
    generation_tokens: IntCounterVec,
}

impl Metrics {
    /// `fine_buckets`: end-to-end latency and TTFT in [`fine`] buckets
    /// rather than vLLM's.
    pub fn new(model: &str, fine_buckets: bool) -> Metrics {
        let (e2e, ttft) = if fine_buckets {
            (fine(E2E), fine(TTFT))
        } else {
            (E2E.to_vec(), TTFT.to_vec())
        };
        let registry = Registry::new();
        let label = &["model_name"];
        let gauge = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), label).expect("a valid gauge");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                label,
            )
            .expect("a valid histogram");
            registry
                .register(Box::new(h.clone()))
                .expect("registered once");
            h
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid counter");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let m = Metrics {
            running: gauge(
                "vllm:num_requests_running",
                "Number of requests currently running on GPU.",
            ),
            waiting: gauge(
                "vllm:num_requests_waiting",
                "Number of requests waiting to be processed.",
            ),
            e2e: histogram(
                "vllm:e2e_request_latency_seconds",
                "Histogram of end to end request latency in seconds.",
                &e2e,
            ),
            ttft: histogram(
                "vllm:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
                &ttft,
            ),
            tpot: histogram(
                "vllm:time_per_output_token_seconds",
                "Histogram of time per output token in seconds.",
                TPOT,
            ),
            success: counter(
                "vllm:request_success_total",
                "Count of successfully processed requests.",
                &["model_name", "finished_reason"],
            ),
            prompt_tokens: counter(
                "vllm:prompt_tokens_total",
                "Number of prefill tokens processed.",
                label,
            ),
            generation_tokens: counter(
                "vllm:generation_tokens_total",
                "Number of generation tokens processed.",
                label,
            ),
            http: counter(
                "http_requests_total",
                "Total number of requests by method, status and handler.",
                &["handler", "method", "status"],
            ),
            registry,
            model: model.to_string(),
        };
        // Every series exists from the start, at zero.
        let l = [model];
        m.queue(0, 0);
        for h in [&m.e2e, &m.ttft, &m.tpot] {
            h.with_label_values(&l);
        }
        m.success.with_label_values(&[model, "length"]);
        m.prompt_tokens.with_label_values(&l);
        m.generation_tokens.with_label_values(&l);
        m
    }

    pub fn queue(&self, running: usize, waiting: usize) {
        let m = [self.model.as_str()];
        self.running.with_label_values(&m).set(running as i64);
        self.waiting.with_label_values(&m).set(waiting as i64);
    }

    pub fn first_token(&self, after: Duration) {
        self.ttft
            .with_label_values(&[self.model.as_str()])
            .observe(after.as_secs_f64());
    }

    pub fn output_token(&self, after: Duration) {
        self.tpot
            .with_label_values(&[self.model.as_str()])
            .observe(after.as_secs_f64());
    }

    /// A request answered in full.
    pub fn finished(&self, e2e: Duration, prompt: u64, generated: u64) {
        let m = [self.model.as_str()];
        self.e2e.with_label_values(&m).observe(e2e.as_secs_f64());
        self.success
            .with_label_values(&[self.model.as_str(), "length"])
            .inc();
        self.prompt_tokens.with_label_values(&m).inc_by(prompt);
        self.generation_tokens
            .with_label_values(&m)
            .inc_by(generated);
    }

    /// Prometheus's text format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}
