//! `vagus bench serve`: a trace-driven client like vLLM's
//! `benchmark_serving`. It replays the Azure LLM trace's arrivals and
//! prompt and output lengths (time compressed by `time_scale`, arrivals
//! thinned or multiplied by `rate_scale`), or Poisson or gamma arrivals at
//! a rate, open loop, against any OpenAI-compatible completions endpoint,
//! streaming each answer; it reports TTFT, TPOT and end-to-end latency,
//! throughput, SLO attainment and goodput.

use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How requests arrive.
#[derive(Clone, Debug, PartialEq)]
pub enum Arrivals {
    /// The trace's own times.
    Trace,
    /// Exponential gaps at a rate (requests/s).
    Poisson(f64),
    /// Gamma gaps at a rate, of this shape (burstiness: below 1 burstier
    /// than Poisson, 1 is Poisson).
    Gamma(f64, f64),
}

#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// The server's base URL (`http://127.0.0.1:8000`).
    pub url: String,
    pub model: String,
    /// The Azure trace (`TIMESTAMP,ContextTokens,GeneratedTokens`); without
    /// it every request has `prompt_tokens` and `output_tokens`.
    pub trace: Option<PathBuf>,
    pub arrivals: Arrivals,
    /// Trace time runs this many times faster.
    pub time_scale: f64,
    /// Each trace arrival is kept with this probability (below 1) or
    /// multiplied (above 1: ⌊r⌋ copies plus one more with probability of
    /// the fraction, spread over the gap to the next arrival).
    pub rate_scale: f64,
    /// Stop after this much (scaled) trace time.
    pub duration: Option<Duration>,
    pub max_requests: Option<usize>,
    pub prompt_tokens: u64,
    pub output_tokens: u64,
    /// End-to-end latency objective (ms).
    pub slo_ms: Option<f64>,
    pub seed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Config(String),
    #[error("--trace {path}: {why}")]
    Trace { path: String, why: String },
}

/// One request to send: when (from the start), its prompt and output.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Planned {
    pub at: Duration,
    pub prompt: u64,
    pub output: u64,
}

/// A small seeded generator (SplitMix64): the plan is a function of the
/// configuration and the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        (-2.0 * self.unit().ln()).sqrt() * (std::f64::consts::TAU * self.unit()).cos()
    }

    /// Gamma(shape, 1) (Marsaglia and Tsang; shape < 1 by boosting).
    fn gamma(&mut self, shape: f64) -> f64 {
        if shape < 1.0 {
            return self.gamma(shape + 1.0) * self.unit().powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v > 0.0 && self.unit().ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }
}

/// The trace's rows: (seconds from its first arrival, prompt, output).
pub fn read_trace(path: &std::path::Path) -> Result<Vec<(f64, u64, u64)>, BenchError> {
    let bad = |why: String| BenchError::Trace {
        path: path.display().to_string(),
        why,
    };
    let mut r = csv::Reader::from_path(path).map_err(|e| bad(e.to_string()))?;
    let mut rows = Vec::new();
    let mut first = None;
    for (i, rec) in r.records().enumerate() {
        let rec = rec.map_err(|e| bad(e.to_string()))?;
        let line = i + 2;
        let field = |k: usize, name: &str| {
            rec.get(k)
                .ok_or_else(|| bad(format!("line {line}: no {name}")))
        };
        let ts = field(0, "TIMESTAMP")?;
        let at: jiff::civil::DateTime = ts
            .parse()
            .map_err(|e| bad(format!("line {line}: TIMESTAMP {ts:?}: {e}")))?;
        let num = |k: usize, name: &str| -> Result<u64, BenchError> {
            let v = field(k, name)?;
            v.trim()
                .parse()
                .map_err(|_| bad(format!("line {line}: {name} {v:?} is not a count")))
        };
        let (prompt, output) = (num(1, "ContextTokens")?, num(2, "GeneratedTokens")?);
        let t0 = *first.get_or_insert(at);
        let secs = at.duration_since(t0).as_secs_f64();
        if secs < 0.0 {
            return Err(bad(format!("line {line}: arrives before the first row")));
        }
        rows.push((secs, prompt.max(1), output.max(1)));
    }
    if rows.is_empty() {
        return Err(bad("no requests".into()));
    }
    Ok(rows)
}

impl BenchConfig {
    pub fn validate(&self) -> Result<(), BenchError> {
        let bad = |m: String| Err(BenchError::Config(m));
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            return bad(format!("--time-scale {}: must be above 0", self.time_scale));
        }
        if !(self.rate_scale.is_finite() && self.rate_scale > 0.0) {
            return bad(format!("--rate-scale {}: must be above 0", self.rate_scale));
        }
        match self.arrivals {
            Arrivals::Trace if self.trace.is_none() => {
                return bad("give --trace FILE or --qps RATE".into());
            }
            Arrivals::Poisson(q) | Arrivals::Gamma(q, _) if !(q.is_finite() && q > 0.0) => {
                return bad(format!("--qps {q}: must be above 0"));
            }
            Arrivals::Gamma(_, b) if !(b.is_finite() && b > 0.0) => {
                return bad(format!("--burstiness {b}: must be above 0"));
            }
            _ => {}
        }
        if self.trace.is_none() && (self.prompt_tokens == 0 || self.output_tokens == 0) {
            return bad("--prompt-tokens and --output-tokens must be at least 1".into());
        }
        if self.duration.is_none() && self.max_requests.is_none() && self.trace.is_none() {
            return bad("give --duration or --max-requests (or a --trace to replay whole)".into());
        }
        if let Some(s) = self.slo_ms
            && !(s.is_finite() && s > 0.0)
        {
            return bad(format!("--slo-ms {s}: must be above 0"));
        }
        Ok(())
    }

    /// The requests to send, in time order.
    /// The plan of `run` from `from` into the (scaled) trace, shifted to
    /// start at zero, its arrivals multiplied by `step` from `step_at` on
    /// (a load step: the rate scale times `step` from there).
    pub fn stepped_plan(
        &self,
        from: Duration,
        run: Duration,
        step_at: Duration,
        step: f64,
    ) -> Result<Vec<Planned>, BenchError> {
        let with_rate = |rate_scale: f64| BenchConfig {
            rate_scale,
            duration: Some(from + run),
            ..self.clone()
        };
        let before = with_rate(self.rate_scale).plan()?;
        let after = if step == 1.0 {
            before.clone()
        } else {
            with_rate(self.rate_scale * step).plan()?
        };
        let shift = |p: &Planned| Planned {
            at: p.at - from,
            ..*p
        };
        let mut out: Vec<Planned> = before
            .iter()
            .filter(|p| p.at >= from && p.at - from < step_at)
            .map(shift)
            .collect();
        out.extend(
            after
                .iter()
                .filter(|p| p.at >= from && p.at - from >= step_at)
                .map(shift),
        );
        Ok(out)
    }

    pub fn plan(&self) -> Result<Vec<Planned>, BenchError> {
        self.validate()?;
        let rows = match &self.trace {
            Some(p) => read_trace(p)?,
            None => vec![(0.0, self.prompt_tokens, self.output_tokens)],
        };
        let mut rng = Rng(self.seed);
        let mut out = Vec::new();
        let end = self.duration.map(|d| d.as_secs_f64());
        let cap = self.max_requests.unwrap_or(usize::MAX);
        match self.arrivals {
            Arrivals::Trace => {
                for (i, &(t, prompt, output)) in rows.iter().enumerate() {
                    let at = t / self.time_scale;
                    let next = rows.get(i + 1).map_or(at, |r| r.0 / self.time_scale);
                    let whole = self.rate_scale.floor() as u64;
                    let copies = whole + u64::from(rng.unit() < self.rate_scale - whole as f64);
                    for c in 0..copies {
                        let at = at + (next - at) * c as f64 / copies as f64;
                        if end.is_some_and(|e| at >= e) || out.len() >= cap {
                            return Ok(out);
                        }
                        out.push(Planned {
                            at: Duration::from_secs_f64(at),
                            prompt,
                            output,
                        });
                    }
                }
            }
            Arrivals::Poisson(qps) | Arrivals::Gamma(qps, _) => {
                let shape = match self.arrivals {
                    Arrivals::Gamma(_, b) => b,
                    _ => 1.0,
                };
                let mut at = 0.0;
                for i in 0.. {
                    let (_, prompt, output) = rows[i % rows.len()];
                    if end.is_some_and(|e| at >= e) || out.len() >= cap {
                        break;
                    }
                    out.push(Planned {
                        at: Duration::from_secs_f64(at),
                        prompt,
                        output,
                    });
                    at += rng.gamma(shape) / (shape * qps);
                }
            }
        }
        Ok(out)
    }
}

/// What one request saw.
#[derive(Clone, Debug, Default)]
struct Outcome {
    ok: bool,
    ttft: Duration,
    e2e: Duration,
    tokens: u64,
    /// Why it failed: its kind (the report counts each) and what was said.
    error: Option<(&'static str, String)>,
}

/// A failed request's outcome.
fn failed(kind: &'static str, detail: String) -> Outcome {
    Outcome {
        error: Some((kind, detail)),
        ..Outcome::default()
    }
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn send(client: &HttpClient, url: &hyper::Uri, body: Bytes, sent: Instant) -> Outcome {
    let req = match hyper::Request::post(url.clone())
        .header("content-type", "application/json")
        .body(Full::new(body))
    {
        Ok(r) => r,
        Err(e) => return failed("request", e.to_string()),
    };
    let resp = match client.request(req).await {
        Ok(r) => r,
        Err(e) => return failed("transport", format!("{e:?}")),
    };
    if resp.status() != hyper::StatusCode::OK {
        let status = resp.status();
        let body = resp.into_body().collect().await.map(|b| b.to_bytes());
        let said = body.map_or(String::new(), |b| {
            String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned()
        });
        return failed("status", format!("{status}: {said}"));
    }
    let mut body = resp.into_body();
    let mut first = None;
    let (mut chunks, mut usage, mut done) = (0u64, None, false);
    let mut pending = String::new();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => return failed("cut off", format!("{e:?}")),
        };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.push_str(&String::from_utf8_lossy(data));
        // Server-sent events: `data: …` lines, a blank line between.
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            for line in event.lines() {
                let Some(d) = line.strip_prefix("data:") else {
                    continue;
                };
                let d = d.trim();
                if d == "[DONE]" {
                    done = true;
                    continue;
                }
                let Ok(v) = serde_json::from_str::<serde_json::Value>(d) else {
                    continue;
                };
                if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                    usage = Some(n);
                }
                if v["choices"][0]["text"]
                    .as_str()
                    .is_some_and(|t| !t.is_empty())
                {
                    chunks += 1;
                    first.get_or_insert_with(Instant::now);
                }
            }
        }
    }
    let now = Instant::now();
    match (done, first) {
        (true, Some(f)) => Outcome {
            ok: true,
            ttft: f - sent,
            e2e: now - sent,
            tokens: usage.unwrap_or(chunks),
            error: None,
        },
        (done, _) => failed(
            "incomplete",
            format!("the stream ended after {chunks} tokens (its [DONE] seen: {done})"),
        ),
    }
}

fn completions(base: &str) -> Result<hyper::Uri, BenchError> {
    format!("{}/v1/completions", base.trim_end_matches('/'))
        .parse()
        .map_err(|e| BenchError::Config(format!("--url {base}: {e}")))
}

fn http_client() -> Arc<HttpClient> {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    Arc::new(
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector),
    )
}

/// A streamed completion request of `prompt` tokens (token ids, so its
/// length is exact on any server) asking for exactly `output`.
fn body(model: &str, prompt: u64, output: u64, i: u64) -> Bytes {
    let body = json!({
        "model": model,
        "prompt": (0..prompt).map(|k| 1000 + (k + i) % 30_000).collect::<Vec<u64>>(),
        "max_tokens": output,
        "stream": true,
        "stream_options": {"include_usage": true},
        "ignore_eos": true,
    });
    Bytes::from(body.to_string())
}

/// Runs the configuration's plan against the server; the report as one
/// JSON object.
pub async fn run(cfg: &BenchConfig) -> Result<serde_json::Value, BenchError> {
    let plan = cfg.plan()?;
    run_plan(cfg, plan).await
}

/// Runs `plan` (open loop: each request at its time, whatever the answers
/// before) against `cfg.url`; reported as [`run`] reports.
pub async fn run_plan(
    cfg: &BenchConfig,
    plan: Vec<Planned>,
) -> Result<serde_json::Value, BenchError> {
    let url = completions(&cfg.url)?;
    let client = http_client();
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(plan.len());
    for (i, p) in plan.iter().enumerate() {
        let body = body(&cfg.model, p.prompt, p.output, i as u64);
        let (client, url, at) = (client.clone(), url.clone(), start + p.at);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let sent = Instant::now();
            (send(&client, &url, body, sent).await, sent, Instant::now())
        }));
    }
    // From the first request sent to the last answer.
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    let mut outcomes = Vec::with_capacity(tasks.len());
    for t in tasks {
        let (o, sent, done) =
            t.await
                .unwrap_or((Outcome::default(), Instant::now(), Instant::now()));
        first = Some(first.map_or(sent, |f| f.min(sent)));
        last = Some(last.map_or(done, |l| l.max(done)));
        outcomes.push(o);
    }
    let took = match (first, last) {
        (Some(f), Some(l)) => l.saturating_duration_since(f),
        _ => Duration::ZERO,
    };
    Ok(report(cfg, &plan, &outcomes, took))
}

/// What a closed-loop client got: requests answered and failed, tokens.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ClosedLoop {
    pub requests: u64,
    pub failed: u64,
    pub tokens: u64,
    pub tokens_per_s: f64,
}

/// `concurrency` clients, each sending its next request of `prompt` and
/// `output` tokens as soon as the last is answered, for `duration` (what
/// is in flight then is not counted).
pub async fn closed_loop(
    base: &str,
    model: &str,
    concurrency: usize,
    prompt: u64,
    output: u64,
    duration: Duration,
) -> Result<ClosedLoop, BenchError> {
    let url = completions(base)?;
    let client = http_client();
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (client, url, model) = (client.clone(), url.clone(), model.to_string());
        tasks.push(tokio::spawn(async move {
            let mut got = ClosedLoop::default();
            let mut i = w as u64;
            while Instant::now() < end {
                let sent = Instant::now();
                let left = end.saturating_duration_since(sent);
                let ask = send(&client, &url, body(&model, prompt, output, i), sent);
                let Ok(o) = tokio::time::timeout(left, ask).await else {
                    break;
                };
                i += concurrency as u64;
                if o.ok {
                    got.requests += 1;
                    got.tokens += o.tokens;
                } else {
                    got.failed += 1;
                    // A refused connection answers at once: do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            got
        }));
    }
    let mut all = ClosedLoop::default();
    for t in tasks {
        let g = t.await.unwrap_or_default();
        all.requests += g.requests;
        all.failed += g.failed;
        all.tokens += g.tokens;
    }
    all.tokens_per_s = all.tokens as f64 / start.elapsed().as_secs_f64().max(1e-9);
    Ok(all)
}

fn report(
    cfg: &BenchConfig,
    plan: &[Planned],
    outcomes: &[Outcome],
    took: Duration,
) -> serde_json::Value {
    let new = || Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
    let (mut ttft, mut tpot, mut e2e) = (new(), new(), new());
    let (mut ok, mut tokens, mut met) = (0u64, 0u64, 0u64);
    for o in outcomes.iter().filter(|o| o.ok) {
        ok += 1;
        tokens += o.tokens;
        ttft.saturating_record(o.ttft.as_micros().max(1) as u64);
        e2e.saturating_record(o.e2e.as_micros().max(1) as u64);
        if o.tokens > 1 {
            let per = (o.e2e - o.ttft).as_micros() as u64 / (o.tokens - 1);
            tpot.saturating_record(per.max(1));
        }
        if cfg
            .slo_ms
            .is_some_and(|s| o.e2e.as_secs_f64() * 1000.0 <= s)
        {
            met += 1;
        }
    }
    let secs = took.as_secs_f64().max(1e-9);
    let q = |h: &Histogram<u64>| {
        if h.is_empty() {
            json!(null)
        } else {
            let ms = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
            json!({"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "mean": h.mean() / 1000.0})
        }
    };
    let offered = plan.last().map_or(0.0, |p| p.at.as_secs_f64());
    // Failures by kind, and the first one's words.
    let mut errors = std::collections::BTreeMap::<&str, u64>::new();
    for (kind, _) in outcomes.iter().filter_map(|o| o.error.as_ref()) {
        *errors.entry(kind).or_default() += 1;
    }
    let first_error = outcomes
        .iter()
        .find_map(|o| o.error.as_ref())
        .map(|(kind, said)| format!("{kind}: {said}"));
    json!({
        "requests": ok,
        "failed": outcomes.len() as u64 - ok,
        "errors": errors,
        "first_error": first_error,
        "ttft_ms": q(&ttft),
        "tpot_ms": q(&tpot),
        "e2e_ms": q(&e2e),
        "slo_ms": cfg.slo_ms,
        "slo_attainment": cfg.slo_ms.map(|_| if ok == 0 { 0.0 } else { met as f64 / outcomes.len() as f64 }),
        "goodput_rps": cfg.slo_ms.map(|_| met as f64 / secs),
        "throughput_rps": ok as f64 / secs,
        "tokens_per_s": tokens as f64 / secs,
        "duration_s": secs,
        "offered_rps": if offered > 0.0 { plan.len() as f64 / offered } else { 0.0 },
        "config": {
            "trace": cfg.trace.as_ref().map(|p| p.display().to_string()),
            "arrivals": match cfg.arrivals {
                Arrivals::Trace => json!("trace"),
                Arrivals::Poisson(q) => json!({"poisson_qps": q}),
                Arrivals::Gamma(q, b) => json!({"gamma_qps": q, "burstiness": b}),
            },
            "time_scale": cfg.time_scale,
            "rate_scale": cfg.rate_scale,
            "duration_s": cfg.duration.map(|d| d.as_secs_f64()),
            "seed": cfg.seed,
            "planned": plan.len(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BenchConfig {
        BenchConfig {
            url: "http://127.0.0.1:1".into(),
            model: "m".into(),
            trace: None,
            arrivals: Arrivals::Poisson(100.0),
            time_scale: 1.0,
            rate_scale: 1.0,
            duration: Some(Duration::from_secs(100)),
            max_requests: None,
            prompt_tokens: 10,
            output_tokens: 5,
            slo_ms: None,
            seed: 7,
        }
    }

    #[test]
    fn poisson_and_gamma_keep_their_rate() {
        for arrivals in [Arrivals::Poisson(100.0), Arrivals::Gamma(100.0, 0.5)] {
            let c = BenchConfig {
                arrivals: arrivals.clone(),
                ..cfg()
            };
            let n = c.plan().unwrap().len() as f64;
            assert!((n / 10_000.0 - 1.0).abs() < 0.05, "{arrivals:?}: {n}");
        }
    }

    #[test]
    fn the_trace_is_scaled_in_time_and_rate() {
        let dir = std::env::temp_dir().join(format!("vagus-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.csv");
        let mut text = String::from("TIMESTAMP,ContextTokens,GeneratedTokens\n");
        for i in 0..1000 {
            text += &format!(
                "2023-11-16 18:{:02}:{:02}.5000000,{},{}\n",
                i / 60,
                i % 60,
                100 + i,
                10
            );
        }
        std::fs::write(&p, text).unwrap();
        let c = BenchConfig {
            trace: Some(p.clone()),
            arrivals: Arrivals::Trace,
            duration: None,
            ..cfg()
        };
        let all = c.plan().unwrap();
        assert_eq!(all.len(), 1000);
        assert_eq!(all[999].at, Duration::from_secs(999));
        assert_eq!((all[3].prompt, all[3].output), (103, 10));
        let fast = BenchConfig {
            time_scale: 10.0,
            ..c.clone()
        }
        .plan()
        .unwrap();
        assert_eq!(fast[999].at, Duration::from_secs_f64(99.9));
        let half = BenchConfig {
            rate_scale: 0.5,
            ..c.clone()
        }
        .plan()
        .unwrap()
        .len();
        assert!((420..580).contains(&half), "{half}");
        let double = BenchConfig {
            rate_scale: 2.0,
            ..c.clone()
        }
        .plan()
        .unwrap();
        assert_eq!(double.len(), 2000);
        assert!(double.windows(2).all(|w| w[0].at <= w[1].at));
        let head = BenchConfig {
            duration: Some(Duration::from_secs(100)),
            ..c
        }
        .plan()
        .unwrap();
        assert_eq!(head.len(), 100);
        let bad = dir.join("bad.csv");
        std::fs::write(
            &bad,
            "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,1\n",
        )
        .unwrap();
        let e = read_trace(&bad).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("TIMESTAMP"), "{e}");
    }
}
