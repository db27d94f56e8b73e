//! Request-level telemetry: what each inference server's own Prometheus
//! endpoint says, turned into per-window differences.
//!
//! The agent knows the names of vLLM (which `vagus serve` exports too),
//! SGLang, TGI and Triton; a scrape is recognised by the first known prefix
//! its samples carry. Only the lines of the families read are handed to the
//! parser (`nom-openmetrics`, a maintained parser of the text format): a
//! real vLLM page is mostly Python runtime and other families, and parsing
//! them every 100 ms would cost more than the rest of the agent.
//!
//! A window carries the difference between the scrapes it saw and the one
//! before them: counters and histogram buckets bucket-exact (a counter that
//! went down is a restarted server, and its value is the difference), and
//! gauges as last scraped. The first scrape of an endpoint is its baseline:
//! what happened before the agent looked belongs to no window.

use std::collections::{BTreeMap, HashMap};
use vagus_proto::wire::{HistogramDelta, ServingWindow};

/// How a server exports a latency distribution.
#[derive(Clone, Copy, Debug)]
enum Hist {
    /// A histogram family (`_bucket{le}`, `_sum`, `_count`), in `unit_s`
    /// seconds.
    Buckets { name: &'static str, unit_s: f64 },
    /// Only a cumulative sum counter and a count counter (Triton's
    /// `nv_inference_request_duration_us`).
    SumCount {
        sum: &'static str,
        count: &'static str,
        unit_s: f64,
    },
}

impl Hist {
    fn names(&self) -> [&'static str; 2] {
        match *self {
            Hist::Buckets { name, .. } => [name, name],
            Hist::SumCount { sum, count, .. } => [sum, count],
        }
    }
}

/// Where server errors are counted.
#[derive(Clone, Copy, Debug)]
enum Failures {
    Counter(&'static str),
    /// `http_requests_total{status="5xx"}` (prometheus-fastapi-instrumentator,
    /// which vLLM's API server uses; `vagus serve` exports the same).
    HttpStatus,
    Unknown,
}

/// One server's names.
#[derive(Debug)]
struct Names {
    server: &'static str,
    /// Every family of this server starts with it.
    prefix: &'static str,
    model_label: &'static str,
    /// Requests finished successfully; `None`: count the latency histogram.
    success: Option<&'static str>,
    failures: Failures,
    queue: Option<&'static str>,
    running: Option<&'static str>,
    latency: Option<Hist>,
    ttft: Option<Hist>,
}

const HTTP_REQUESTS: &str = "http_requests_total";

const SERVERS: [Names; 4] = [
    Names {
        server: "vllm",
        prefix: "vllm:",
        model_label: "model_name",
        success: Some("vllm:request_success_total"),
        failures: Failures::HttpStatus,
        queue: Some("vllm:num_requests_waiting"),
        running: Some("vllm:num_requests_running"),
        latency: Some(Hist::Buckets {
            name: "vllm:e2e_request_latency_seconds",
            unit_s: 1.0,
        }),
        ttft: Some(Hist::Buckets {
            name: "vllm:time_to_first_token_seconds",
            unit_s: 1.0,
        }),
    },
    Names {
        server: "sglang",
        prefix: "sglang:",
        model_label: "model_name",
        success: None,
        failures: Failures::Unknown,
        queue: Some("sglang:num_queue_reqs"),
        running: Some("sglang:num_running_reqs"),
        latency: Some(Hist::Buckets {
            name: "sglang:e2e_request_latency_seconds",
            unit_s: 1.0,
        }),
        ttft: Some(Hist::Buckets {
            name: "sglang:time_to_first_token_seconds",
            unit_s: 1.0,
        }),
    },
    Names {
        server: "tgi",
        prefix: "tgi_",
        model_label: "",
        success: Some("tgi_request_success"),
        failures: Failures::Counter("tgi_request_failure"),
        queue: Some("tgi_queue_size"),
        running: Some("tgi_batch_current_size"),
        latency: Some(Hist::Buckets {
            name: "tgi_request_duration",
            unit_s: 1.0,
        }),
        ttft: None,
    },
    Names {
        server: "triton",
        prefix: "nv_inference_",
        model_label: "model",
        success: Some("nv_inference_request_success"),
        failures: Failures::Counter("nv_inference_request_failure"),
        queue: Some("nv_inference_pending_request_count"),
        running: None,
        latency: Some(Hist::SumCount {
            sum: "nv_inference_request_duration_us",
            count: "nv_inference_request_success",
            unit_s: 1e-6,
        }),
        ttft: Some(Hist::Buckets {
            name: "nv_inference_first_response_histogram_ms",
            unit_s: 1e-3,
        }),
    },
];

impl Names {
    /// The families this server's reading needs.
    fn families(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = [self.success, self.queue, self.running]
            .into_iter()
            .flatten()
            .collect();
        match self.failures {
            Failures::Counter(c) => v.push(c),
            Failures::HttpStatus => v.push(HTTP_REQUESTS),
            Failures::Unknown => {}
        }
        for h in [self.latency, self.ttft].into_iter().flatten() {
            v.extend(h.names());
        }
        v
    }
}

/// A cumulative histogram as scraped (summed over label sets).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cumulative {
    /// Finite upper bounds, seconds, ascending.
    pub bounds_s: Vec<f64>,
    /// Cumulative counts at each bound, then at `+Inf`.
    pub at_or_below: Vec<f64>,
    pub sum_s: f64,
    pub count: f64,
}

/// One scrape's cumulative values.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reading {
    pub server: &'static str,
    /// The model label, when exactly one value appears.
    pub model: String,
    pub success: Option<f64>,
    pub failures: Option<f64>,
    pub queue: Option<f64>,
    pub running: Option<f64>,
    pub latency: Option<Cumulative>,
    pub ttft: Option<Cumulative>,
}

/// A sample line's metric name (the text before its labels or value).
fn name_of(line: &str) -> &str {
    let end = memchr::memchr3(b'{', b' ', b'\t', line.as_bytes()).unwrap_or(line.len());
    &line[..end]
}

/// Whether sample `name` belongs to family `family` (itself, or a
/// histogram's `_bucket`, `_sum`, `_count`).
fn of_family(name: &str, family: &str) -> bool {
    name == family
        || name
            .strip_prefix(family)
            .is_some_and(|rest| matches!(rest, "_bucket" | "_sum" | "_count"))
}

/// Reads one scrape's text (without a reader's memory of the last page).
/// An error names what was wrong: no known server's names, or lines the
/// parser refused.
pub fn read(text: &str) -> Result<Reading, String> {
    Reader::default().read(text)
}

/// A latency distribution a reading has.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Dist {
    Latency = 0,
    Ttft = 1,
}

/// What a sample adds to in a reading.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Role {
    Success,
    Failure,
    /// `http_requests_total`: a server error when its status is 5xx.
    Http {
        error: bool,
    },
    Queue,
    Running,
    /// A cumulative bucket, its bound in seconds.
    Bucket(Dist, f64),
    /// A sum, in units of this many seconds.
    Sum(Dist, f64),
    Count(Dist),
}

/// One sample as a reading takes it: what it adds to (Triton's success
/// counter is also its latency's count) and its model.
#[derive(Clone, Debug)]
struct Parsed {
    roles: [Option<Role>; 2],
    value: f64,
    model: Option<String>,
    /// The page it was last seen on.
    page: u64,
}

fn label<'s>(s: &'s nom_openmetrics::Sample<'_>, k: &str) -> Option<&'s str> {
    s.labels()
        .iter()
        .find(|l| l.name == k)
        .map(|l| l.value.as_str())
}

impl Parsed {
    fn of(names: &Names, s: &nom_openmetrics::Sample<'_>, page: u64) -> Parsed {
        let name = s.name();
        let mut roles = Vec::with_capacity(2);
        if names.success == Some(name) {
            roles.push(Role::Success);
        }
        match names.failures {
            Failures::Counter(c) if c == name => roles.push(Role::Failure),
            Failures::HttpStatus if name == HTTP_REQUESTS => roles.push(Role::Http {
                error: label(s, "status").is_some_and(|v| v.starts_with('5')),
            }),
            _ => {}
        }
        if names.queue == Some(name) {
            roles.push(Role::Queue);
        }
        if names.running == Some(name) {
            roles.push(Role::Running);
        }
        for (dist, hist) in [(Dist::Latency, names.latency), (Dist::Ttft, names.ttft)] {
            match hist {
                Some(Hist::Buckets { name: f, unit_s }) => match name.strip_prefix(f) {
                    Some("_bucket") => {
                        let le = label(s, "le").and_then(|v| v.parse::<f64>().ok());
                        if let Some(le) = le.filter(|le| !le.is_nan()) {
                            roles.push(Role::Bucket(dist, le.max(0.0) * unit_s));
                        }
                    }
                    Some("_sum") => roles.push(Role::Sum(dist, unit_s)),
                    Some("_count") => roles.push(Role::Count(dist)),
                    _ => {}
                },
                Some(Hist::SumCount { sum, count, unit_s }) => {
                    if name == sum {
                        roles.push(Role::Sum(dist, unit_s));
                    }
                    if name == count {
                        roles.push(Role::Count(dist));
                    }
                }
                None => {}
            }
        }
        Parsed {
            roles: [roles.first().copied(), roles.get(1).copied()],
            value: s.number(),
            model: (!names.model_label.is_empty())
                .then(|| label(s, names.model_label).map(str::to_string))
                .flatten(),
            page,
        }
    }
}

/// One endpoint's reader. It keeps the last page's lines, taken apart: a
/// line the server writes again unchanged (a bucket no request reached, an
/// idle gauge) is not parsed again. Only the lines of the families read are
/// handed to the parser.
#[derive(Debug, Default)]
pub struct Reader {
    server: &'static str,
    lines: HashMap<String, Parsed>,
    page: u64,
}

impl Reader {
    /// Reads one scrape's text. An error names what was wrong: no known
    /// server's names, lines the parser refused, or a sample twice.
    pub fn read(&mut self, text: &str) -> Result<Reading, String> {
        let names = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| SERVERS.iter().find(|s| l.starts_with(s.prefix)))
            .ok_or_else(|| {
                "no vLLM, SGLang, TGI or Triton metrics in the page (none of vllm:, sglang:, tgi_, \
                 nv_inference_)"
                    .to_string()
            })?;
        if self.server != names.server {
            // Another server answers at this address: its lines mean other things.
            self.lines.clear();
            self.server = names.server;
        }
        self.page += 1;
        let page = self.page;
        let families = names.families();
        let twice = |line: &str| {
            let shown: String = line.chars().take(120).collect();
            format!("the metrics page has a sample twice: {shown:?}")
        };
        let mut fresh: Vec<&str> = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if !families.iter().any(|f| of_family(name_of(line), f)) {
                continue;
            }
            match self.lines.get_mut(line) {
                Some(p) if p.page == page => return Err(twice(line)),
                Some(p) => p.page = page,
                None => fresh.push(line),
            }
        }
        if !fresh.is_empty() {
            let mut text = String::with_capacity(fresh.iter().map(|l| l.len() + 1).sum());
            for line in &fresh {
                text.push_str(line);
                text.push('\n');
            }
            let samples = parse(&text)?;
            // One sample a line: the parser took every line it was given.
            if samples.len() != fresh.len() {
                return Err(format!(
                    "the metrics page's {} new lines read as {} samples",
                    fresh.len(),
                    samples.len()
                ));
            }
            for (line, s) in fresh.into_iter().zip(&samples) {
                let p = Parsed::of(names, s, page);
                if self.lines.insert(line.to_string(), p).is_some() {
                    return Err(twice(line));
                }
            }
        }
        self.lines.retain(|_, p| p.page == page);
        Ok(reading(names, self.lines.values()))
    }
}

/// The page's samples, borrowed from `text` (families are not needed: the
/// names say what each sample is).
fn parse(text: &str) -> Result<Vec<nom_openmetrics::Sample<'_>>, String> {
    match nom_openmetrics::parser::prometheus(text) {
        Ok((_, f)) => Ok(f.into_iter().flat_map(|f| f.samples).collect()),
        Err(_) => {
            // Name the first line the parser refuses.
            let bad = text
                .lines()
                .find(|l| nom_openmetrics::parser::prometheus(&format!("{l}\n")).is_err())
                .unwrap_or("");
            let shown: String = bad.chars().take(120).collect();
            Err(format!(
                "the metrics page has a line that does not parse: {shown:?}"
            ))
        }
    }
}

/// A distribution's samples, summed over their label sets.
#[derive(Default)]
struct Sums {
    /// Cumulative counts by bound (positive floats order as their bits).
    by_bound: BTreeMap<u64, f64>,
    sum_s: Option<f64>,
    count: Option<f64>,
}

fn add(total: &mut Option<f64>, v: f64) {
    *total = Some(total.unwrap_or(0.0) + v);
}

impl Sums {
    fn cumulative(self, hist: Option<Hist>) -> Option<Cumulative> {
        match hist? {
            Hist::Buckets { .. } => {
                if self.by_bound.is_empty() {
                    return None;
                }
                let count = self.count.unwrap_or(0.0);
                let mut bounds_s = Vec::with_capacity(self.by_bound.len());
                let mut at_or_below = Vec::with_capacity(self.by_bound.len() + 1);
                let mut inf = None;
                for (bits, c) in self.by_bound {
                    let b = f64::from_bits(bits);
                    if b.is_infinite() {
                        inf = Some(c);
                    } else {
                        bounds_s.push(b);
                        at_or_below.push(c);
                    }
                }
                at_or_below.push(inf.unwrap_or(count));
                Some(Cumulative {
                    bounds_s,
                    at_or_below,
                    sum_s: self.sum_s.unwrap_or(0.0),
                    count,
                })
            }
            Hist::SumCount { .. } => Some(Cumulative {
                bounds_s: Vec::new(),
                at_or_below: Vec::new(),
                sum_s: self.sum_s?,
                count: self.count?,
            }),
        }
    }
}

fn reading<'a>(names: &'static Names, samples: impl Iterator<Item = &'a Parsed>) -> Reading {
    let mut r = Reading {
        server: names.server,
        ..Reading::default()
    };
    let mut dists = [Sums::default(), Sums::default()];
    let mut models: Vec<&str> = Vec::new();
    for p in samples {
        if let Some(m) = p.model.as_deref()
            && !models.contains(&m)
        {
            models.push(m);
        }
        let v = p.value;
        for role in p.roles.iter().flatten() {
            match *role {
                Role::Success => add(&mut r.success, v),
                Role::Failure => add(&mut r.failures, v),
                Role::Http { error } => add(&mut r.failures, if error { v } else { 0.0 }),
                Role::Queue => add(&mut r.queue, v),
                Role::Running => add(&mut r.running, v),
                Role::Bucket(d, bound_s) => {
                    *dists[d as usize]
                        .by_bound
                        .entry(bound_s.to_bits())
                        .or_default() += v;
                }
                Role::Sum(d, unit_s) => add(&mut dists[d as usize].sum_s, v * unit_s),
                Role::Count(d) => add(&mut dists[d as usize].count, v),
            }
        }
    }
    let [latency, ttft] = dists;
    r.latency = latency.cumulative(names.latency);
    r.ttft = ttft.cumulative(names.ttft);
    if names.success.is_none() {
        // Finished requests are what the latency histogram counted.
        r.success = r.latency.as_ref().map(|l| l.count);
    }
    if models.len() == 1 {
        r.model = models[0].to_string();
    }
    r
}

/// A counter's increase; a counter that went down restarted from zero.
fn increase(now: f64, before: f64) -> u64 {
    let d = if now >= before { now - before } else { now };
    d.round().max(0.0) as u64
}

/// A histogram's change; different buckets or any count going down mean
/// the server restarted, and everything it counted is new.
fn change(now: &Cumulative, before: Option<&Cumulative>) -> HistogramDelta {
    let restarted = before.is_none_or(|b| {
        b.bounds_s != now.bounds_s
            || b.count > now.count
            || b.at_or_below
                .iter()
                .zip(&now.at_or_below)
                .any(|(x, y)| x > y)
    });
    let zero = Cumulative {
        bounds_s: now.bounds_s.clone(),
        at_or_below: vec![0.0; now.at_or_below.len()],
        ..Default::default()
    };
    let b = match before {
        Some(b) if !restarted => b,
        _ => &zero,
    };
    let mut counts = Vec::with_capacity(now.at_or_below.len());
    let mut below = 0u64;
    for (n, p) in now.at_or_below.iter().zip(&b.at_or_below) {
        let cum = increase(*n, *p);
        counts.push(cum.saturating_sub(below));
        below = below.max(cum);
    }
    HistogramDelta {
        bounds_s: now.bounds_s.clone(),
        counts,
        sum_s: (now.sum_s - b.sum_s).max(0.0),
        count: increase(now.count, b.count),
    }
}

fn add_to(total: &mut Option<HistogramDelta>, d: HistogramDelta) {
    // New buckets (a restarted server) start again.
    if !total.as_mut().is_some_and(|t| t.add(&d)) {
        *total = Some(d);
    }
}

fn add_count(total: &mut Option<u64>, d: Option<u64>) {
    if let Some(d) = d {
        *total = Some(total.unwrap_or(0) + d);
    }
}

/// An endpoint to scrape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `http://HOST:PORT/PATH`.
    pub url: String,
    /// The process behind it, when the agent knows it.
    pub pid: Option<u32>,
}

impl Target {
    /// `PORT`, `HOST:PORT`, `PORT/PATH`, or an `http://` URL (path
    /// `/metrics` by default).
    pub fn parse(s: &str) -> Result<Target, String> {
        let bad = |why: &str| Err(format!("serving endpoint {s:?}: {why}"));
        let rest = match s.split_once("://") {
            Some(("http", rest)) => rest,
            Some((scheme, _)) => {
                return bad(&format!("scheme {scheme} is not http"));
            }
            None => s,
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/metrics"),
        };
        let authority = if authority.bytes().all(|b| b.is_ascii_digit()) {
            format!("127.0.0.1:{authority}")
        } else {
            authority.to_string()
        };
        let url = format!("http://{authority}{path}");
        match url.parse::<axum::http::Uri>() {
            Ok(u) if u.port_u16().is_some_and(|p| p > 0) => Ok(Target { url, pid: None }),
            Ok(_) => bad("give a port (1–65535)"),
            Err(e) => bad(&e.to_string()),
        }
    }
}

/// Everything cumulative an endpoint's windows carried since the agent
/// started (for `/snapshot`: the sum of the windows, bucket-exact).
#[derive(Clone, Debug, Default)]
pub struct Totals {
    pub windows: u64,
    pub requests: Option<u64>,
    pub errors: Option<u64>,
    pub latency: Option<HistogramDelta>,
    pub ttft: Option<HistogramDelta>,
    /// The end of the last window (agent's clock, unix ns).
    pub through_unix_ns: u64,
}

/// One endpoint's state: its last reading and the window being filled.
#[derive(Debug)]
pub struct Endpoint {
    pub target: Target,
    pub last: Option<Reading>,
    window: ServingWindow,
    pub totals: Totals,
}

impl Endpoint {
    fn new(target: Target) -> Endpoint {
        let window = empty(&target);
        Endpoint {
            target,
            last: None,
            window,
            totals: Totals::default(),
        }
    }

    /// Takes in one scrape: its text read, or why it failed.
    pub fn observe(&mut self, scraped: Result<Reading, String>) {
        let w = &mut self.window;
        w.scrapes += 1;
        let now = match scraped {
            Ok(r) => r,
            Err(e) => {
                w.failures += 1;
                w.error = e;
                return;
            }
        };
        w.server = now.server.to_string();
        w.model.clone_from(&now.model);
        w.queue_depth = now.queue;
        w.running = now.running;
        if let Some(before) = self.last.as_ref().filter(|b| b.server == now.server) {
            let d = |n: Option<f64>, b: Option<f64>| Some(increase(n?, b.unwrap_or(0.0)));
            let ok = d(now.success, before.success);
            let failed = d(now.failures, before.failures);
            add_count(&mut w.requests, ok.map(|o| o + failed.unwrap_or(0)));
            add_count(&mut w.errors, failed);
            if let Some(l) = &now.latency {
                add_to(&mut w.latency, change(l, before.latency.as_ref()));
            }
            if let Some(t) = &now.ttft {
                add_to(&mut w.ttft, change(t, before.ttft.as_ref()));
            }
        }
        self.last = Some(now);
    }

    /// The window filled since the last call; a new one starts.
    fn take(&mut self, end_unix_ns: u64) -> ServingWindow {
        let w = std::mem::replace(&mut self.window, empty(&self.target));
        let t = &mut self.totals;
        t.windows += 1;
        add_count(&mut t.requests, w.requests);
        add_count(&mut t.errors, w.errors);
        for (total, d) in [(&mut t.latency, &w.latency), (&mut t.ttft, &w.ttft)] {
            if let Some(d) = d {
                add_to(total, d.clone());
            }
        }
        t.through_unix_ns = end_unix_ns;
        w
    }
}

fn empty(t: &Target) -> ServingWindow {
    ServingWindow {
        endpoint: t.url.clone(),
        pid: t.pid,
        server: String::new(),
        model: String::new(),
        scrapes: 0,
        failures: 0,
        error: String::new(),
        requests: None,
        errors: None,
        queue_depth: None,
        running: None,
        latency: None,
        ttft: None,
    }
}

/// Every endpoint the agent scrapes.
#[derive(Debug, Default)]
pub struct Serving {
    pub endpoints: Vec<Endpoint>,
}

impl Serving {
    pub fn new(targets: Vec<Target>) -> Serving {
        Serving {
            endpoints: targets.into_iter().map(Endpoint::new).collect(),
        }
    }

    /// Scrapes `target` too (nothing if its URL is scraped already).
    pub fn ensure(&mut self, target: Target) {
        match self
            .endpoints
            .iter_mut()
            .find(|e| e.target.url == target.url)
        {
            Some(e) => e.target.pid = target.pid,
            None => self.endpoints.push(Endpoint::new(target)),
        }
    }

    /// Stops scraping `url`.
    pub fn remove(&mut self, url: &str) {
        self.endpoints.retain(|e| e.target.url != url);
    }

    /// The endpoint scraping `url`.
    pub fn get_mut(&mut self, url: &str) -> Option<&mut Endpoint> {
        self.endpoints.iter_mut().find(|e| e.target.url == url)
    }

    pub fn get(&self, url: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.target.url == url)
    }

    /// Each endpoint's window, ending at `end_unix_ns`.
    pub fn take_windows(&mut self, end_unix_ns: u64) -> Vec<ServingWindow> {
        self.endpoints
            .iter_mut()
            .map(|e| e.take(end_unix_ns))
            .collect()
    }

    /// What every endpoint's windows added up to, for `/snapshot`.
    pub fn snapshot(&self) -> serde_json::Value {
        let hist = |h: &Option<HistogramDelta>| {
            h.as_ref().map(|h| {
                serde_json::json!({
                    "bounds_s": h.bounds_s, "counts": h.counts, "sum_s": h.sum_s,
                    "count": h.count, "p50_s": h.quantile(0.5), "p99_s": h.quantile(0.99),
                })
            })
        };
        serde_json::Value::Array(
            self.endpoints
                .iter()
                .map(|e| {
                    let t = &e.totals;
                    let last = e.last.as_ref();
                    serde_json::json!({
                        "endpoint": e.target.url,
                        "pid": e.target.pid,
                        "server": last.map(|r| r.server),
                        "model": last.map(|r| r.model.as_str()),
                        "windows": t.windows,
                        "through_unix_ns": t.through_unix_ns,
                        "requests": t.requests,
                        "errors": t.errors,
                        "queue_depth": last.and_then(|r| r.queue),
                        "running": last.and_then(|r| r.running),
                        "latency": hist(&t.latency),
                        "ttft": hist(&t.ttft),
                    })
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vllm(success: f64, errors: f64, buckets: [f64; 3], waiting: f64) -> String {
        let [a, b, inf] = buckets;
        format!(
            "# HELP python_gc_objects_collected_total Objects collected during gc\n\
             # TYPE python_gc_objects_collected_total counter\n\
             python_gc_objects_collected_total{{generation=\"0\"}} 1234.0\n\
             # HELP http_requests_total Total number of requests by method, status and handler.\n\
             # TYPE http_requests_total counter\n\
             http_requests_total{{handler=\"/v1/completions\",method=\"POST\",status=\"2xx\"}} {success}\n\
             http_requests_total{{handler=\"/v1/completions\",method=\"POST\",status=\"4xx\"}} 7.0\n\
             http_requests_total{{handler=\"/v1/completions\",method=\"POST\",status=\"5xx\"}} {errors}\n\
             # HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n\
             # TYPE vllm:num_requests_waiting gauge\n\
             vllm:num_requests_waiting{{model_name=\"m\"}} {waiting}\n\
             vllm:num_requests_running{{model_name=\"m\"}} 4.0\n\
             # TYPE vllm:request_success_total counter\n\
             vllm:request_success_total{{finished_reason=\"stop\",model_name=\"m\"}} {s1}\n\
             vllm:request_success_total{{finished_reason=\"length\",model_name=\"m\"}} {s2}\n\
             # TYPE vllm:e2e_request_latency_seconds histogram\n\
             vllm:e2e_request_latency_seconds_sum{{model_name=\"m\"}} {sum:e}\n\
             vllm:e2e_request_latency_seconds_bucket{{le=\"0.5\",model_name=\"m\"}} {a}\n\
             vllm:e2e_request_latency_seconds_bucket{{le=\"1.0\",model_name=\"m\"}} {b}\n\
             vllm:e2e_request_latency_seconds_bucket{{le=\"+Inf\",model_name=\"m\"}} {inf}\n\
             vllm:e2e_request_latency_seconds_count{{model_name=\"m\"}} {inf}\n\
             vllm:time_per_output_token_seconds_count{{model_name=\"m\"}} 99.0\n",
            s1 = success - 1.0,
            s2 = 1.0,
            sum = inf * 0.6,
        )
    }

    #[test]
    fn a_vllm_page_reads_as_its_counters_gauges_and_buckets() {
        let r = read(&vllm(10.0, 2.0, [4.0, 9.0, 10.0], 3.0)).unwrap();
        assert_eq!(r.server, "vllm");
        assert_eq!(r.model, "m");
        assert_eq!((r.success, r.failures), (Some(10.0), Some(2.0)));
        assert_eq!((r.queue, r.running), (Some(3.0), Some(4.0)));
        let l = r.latency.unwrap();
        assert_eq!(l.bounds_s, vec![0.5, 1.0]);
        assert_eq!(l.at_or_below, vec![4.0, 9.0, 10.0]);
        assert_eq!(l.count, 10.0);
        assert!(r.ttft.is_none(), "the page has no TTFT histogram");
    }

    #[test]
    fn windows_carry_bucket_exact_differences_and_restarts_count_from_zero() {
        let mut s = Serving::new(vec![Target::parse("8000").unwrap()]);
        let e = &mut s.endpoints[0];
        e.observe(read(&vllm(10.0, 1.0, [4.0, 9.0, 10.0], 3.0)));
        let first = s.take_windows(1);
        assert_eq!(first[0].requests, None, "the first scrape is a baseline");
        assert_eq!(first[0].queue_depth, Some(3.0));

        let e = &mut s.endpoints[0];
        e.observe(read(&vllm(13.0, 1.0, [5.0, 11.0, 13.0], 1.0)));
        e.observe(read(&vllm(20.0, 2.0, [9.0, 17.0, 20.0], 0.0)));
        let w = &s.take_windows(2)[0];
        assert_eq!(w.scrapes, 2);
        assert_eq!(w.requests, Some(10 + 1), "successes and server errors");
        assert_eq!(w.errors, Some(1));
        assert_eq!(w.queue_depth, Some(0.0), "gauges as last scraped");
        let l = w.latency.as_ref().unwrap();
        assert_eq!(l.counts, vec![5, 3, 2], "per bucket, not cumulative");
        assert_eq!(l.count, 10);
        assert!((l.sum_s - 6.0).abs() < 1e-9);

        // The server restarted: its counters start again.
        let e = &mut s.endpoints[0];
        e.observe(read(&vllm(3.0, 0.0, [1.0, 2.0, 3.0], 0.0)));
        e.observe(Err("connection refused".into()));
        let w = &s.take_windows(3)[0];
        assert_eq!(w.requests, Some(3));
        assert_eq!(w.latency.as_ref().unwrap().counts, vec![1, 1, 1]);
        assert_eq!((w.scrapes, w.failures), (2, 1));
        assert_eq!(w.error, "connection refused");

        let t = &s.endpoints[0].totals;
        assert_eq!(t.requests, Some(14));
        assert_eq!(t.latency.as_ref().unwrap().counts, vec![6, 4, 3]);
        assert_eq!(t.through_unix_ns, 3);
    }

    #[test]
    fn a_reader_that_remembers_the_last_page_reads_as_a_fresh_one() {
        let pages = [
            vllm(10.0, 2.0, [4.0, 9.0, 10.0], 3.0),
            vllm(10.0, 2.0, [4.0, 9.0, 10.0], 3.0),
            // Some lines changed, some did not.
            vllm(12.0, 2.0, [4.0, 10.0, 12.0], 0.0),
            vllm(13.0, 5.0, [5.0, 11.0, 13.0], 0.0),
        ];
        let mut reader = Reader::default();
        for page in &pages {
            assert_eq!(reader.read(page).unwrap(), read(page).unwrap());
        }
        // Another server at the same address: nothing of vLLM's is kept.
        let tgi =
            "tgi_request_success 9\ntgi_queue_size 2\nhttp_requests_total{status=\"5xx\"} 4\n";
        let r = reader.read(tgi).unwrap();
        assert_eq!((r.server, r.failures, r.latency), ("tgi", None, None));
        let back = reader.read(&pages[3]).unwrap();
        assert_eq!(back, read(&pages[3]).unwrap());

        let twice = format!(
            "{}vllm:num_requests_running{{model_name=\"m\"}} 4.0\n",
            pages[3]
        );
        let e = reader.read(&twice).unwrap_err();
        assert!(
            e.contains("twice") && e.contains("vllm:num_requests_running"),
            "{e}"
        );
        let e = Reader::default().read(&twice).unwrap_err();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn tgi_triton_and_sglang_read_under_their_names() {
        let tgi = "tgi_request_success 9\ntgi_request_failure 1\ntgi_queue_size 2\n\
                   tgi_batch_current_size 5\ntgi_request_duration_bucket{le=\"1\"} 6\n\
                   tgi_request_duration_bucket{le=\"+Inf\"} 10\ntgi_request_duration_sum 7.5\n\
                   tgi_request_duration_count 10\n";
        let r = read(tgi).unwrap();
        assert_eq!(
            (r.server, r.success, r.failures),
            ("tgi", Some(9.0), Some(1.0))
        );
        assert_eq!((r.queue, r.running), (Some(2.0), Some(5.0)));
        assert_eq!(r.latency.unwrap().at_or_below, vec![6.0, 10.0]);

        let triton = "# HELP nv_inference_request_success Number of successful inference requests\n\
                      # TYPE nv_inference_request_success counter\n\
                      nv_inference_request_success{model=\"resnet\",version=\"1\"} 40\n\
                      nv_inference_request_failure{model=\"resnet\",version=\"1\"} 2\n\
                      nv_inference_pending_request_count{model=\"resnet\",version=\"1\"} 3\n\
                      nv_inference_request_duration_us{model=\"resnet\",version=\"1\"} 2000000\n\
                      nv_inference_first_response_histogram_ms_bucket{model=\"resnet\",version=\"1\",le=\"100\"} 30\n\
                      nv_inference_first_response_histogram_ms_bucket{model=\"resnet\",version=\"1\",le=\"+Inf\"} 40\n\
                      nv_inference_first_response_histogram_ms_count{model=\"resnet\",version=\"1\"} 40\n";
        let r = read(triton).unwrap();
        assert_eq!(r.server, "triton");
        assert_eq!(r.model, "resnet");
        assert_eq!(
            (r.success, r.failures, r.queue, r.running),
            (Some(40.0), Some(2.0), Some(3.0), None)
        );
        let l = r.latency.unwrap();
        assert!(l.bounds_s.is_empty() && l.count == 40.0 && (l.sum_s - 2.0).abs() < 1e-9);
        assert_eq!(
            r.ttft.unwrap().bounds_s,
            vec![0.1],
            "milliseconds in seconds"
        );

        let sglang = "sglang:num_running_reqs{model_name=\"a\"} 2\nsglang:num_queue_reqs{model_name=\"a\"} 1\n\
                      sglang:e2e_request_latency_seconds_bucket{le=\"1.0\",model_name=\"a\"} 3\n\
                      sglang:e2e_request_latency_seconds_bucket{le=\"+Inf\",model_name=\"a\"} 5\n\
                      sglang:e2e_request_latency_seconds_count{model_name=\"a\"} 5\n";
        let r = read(sglang).unwrap();
        assert_eq!(
            (r.server, r.success, r.failures),
            ("sglang", Some(5.0), None)
        );
    }

    #[test]
    fn pages_that_are_not_a_known_servers_are_named_errors() {
        let e = read("up 1\n# HELP x y\n").unwrap_err();
        assert!(e.contains("no vLLM, SGLang, TGI or Triton"), "{e}");
        let e = read("vllm:num_requests_running{model_name=\"m\" 3\n").unwrap_err();
        assert!(
            e.contains("does not parse") && e.contains("vllm:num_requests_running"),
            "{e}"
        );
    }

    #[test]
    fn targets_default_to_loopback_and_metrics() {
        let t = |s: &str| Target::parse(s).map(|t| t.url);
        assert_eq!(t("8000").unwrap(), "http://127.0.0.1:8000/metrics");
        assert_eq!(
            t("10.0.0.5:9000/stats").unwrap(),
            "http://10.0.0.5:9000/stats"
        );
        assert_eq!(t("http://h:81/m").unwrap(), "http://h:81/m");
        assert!(t("https://h:81/m").unwrap_err().contains("not http"));
        assert!(t("h/m").unwrap_err().contains("port"));
        assert!(t("0").unwrap_err().contains("port"));
    }
}
