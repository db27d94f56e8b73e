//! The brain's in-memory cluster state as telemetry arrives: per node, the
//! latest window of each GPU and each process, the last few windows'
//! histograms of each process (merged when asked), and the ingest metrics
//! (windows, bytes, windows/s, agent → brain lag, duplicates, drops the
//! agents reported, connections refused by reason).
//!
//! Histograms stay serialized (HdrHistogram V2, as the agent sent them)
//! until someone reads them: a window costs the brain a copy of its bytes,
//! not a decode, and the memory per node stays proportional to what the
//! agent sent.

use hdrhistogram::Histogram;
use hdrhistogram::serialization::Deserializer;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use utoipa::ToSchema;
use vagus_proto::wire::{
    GpuInfo, GpuWindow, Hello, HistogramDelta, MpsState, ProcessWindow, ReplicaWindow,
    ServingWindow, TelemetryWindow,
};

/// The last `cap` windows' serialized histograms of one series.
#[derive(Debug, Default)]
pub struct Rolling {
    windows: VecDeque<Vec<u8>>,
}

impl Rolling {
    fn push(&mut self, cap: usize, h: Vec<u8>) {
        if h.is_empty() {
            return;
        }
        if self.windows.len() == cap {
            self.windows.pop_front();
        }
        self.windows.push_back(h);
    }

    /// How many windows it holds.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// The sum of the windows held; `None` if none is. A histogram that
    /// does not decode is an error naming it (the agent sent it so).
    pub fn merged(&self) -> Result<Option<Histogram<u64>>, String> {
        let mut total: Option<Histogram<u64>> = None;
        let mut de = Deserializer::new();
        for (i, bytes) in self.windows.iter().enumerate() {
            let h: Histogram<u64> = de
                .deserialize(&mut &bytes[..])
                .map_err(|e| format!("histogram {i} of the rolling window: {e:?}"))?;
            match &mut total {
                Some(t) => t
                    .add(&h)
                    .map_err(|e| format!("histogram {i} cannot be added: {e:?}"))?,
                None => total = Some(h),
            }
        }
        Ok(total)
    }

    fn bytes(&self) -> usize {
        self.windows.iter().map(|w| w.capacity()).sum()
    }
}

/// One process as the latest windows describe it.
#[derive(Debug)]
pub struct ProcessState {
    /// The latest window's counters (its histogram fields are moved into
    /// the rolling series and left empty here).
    pub latest: ProcessWindow,
    pub kernel: Rolling,
    pub sync: Rolling,
    /// The sequence number of the window that last mentioned it.
    pub seen_seq: u64,
}

/// How far back request rates and error rates look (agent's clock).
pub const SERVING_HORIZON_NS: u64 = 10_000_000_000;

/// One inference server endpoint as its windows describe it.
#[derive(Debug, Default)]
pub struct ServingState {
    pub pid: Option<u32>,
    pub server: String,
    pub model: String,
    /// Gauges as last reported (a window whose scrapes failed reports none).
    pub queue_depth: Option<f64>,
    pub running: Option<f64>,
    /// Why its latest window's last failed scrape failed (empty: none did).
    pub error: String,
    /// The recent windows, by the agent's clock.
    recent: VecDeque<Recent>,
    pub requests_total: u64,
    pub errors_total: u64,
    pub seen_seq: u64,
}

/// One window of an endpoint, kept for the horizon.
#[derive(Debug)]
struct Recent {
    end_ns: u64,
    duration_ns: u64,
    requests: Option<u64>,
    errors: Option<u64>,
    latency: Option<HistogramDelta>,
    ttft: Option<HistogramDelta>,
}

/// What an inference server's own metrics said over the last
/// [`SERVING_HORIZON_NS`] (the agent's windows summed bucket-exact).
/// `null`: the server does not export it, or no window reported it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, ToSchema)]
pub struct ServingView {
    /// The server the agent recognised (`vllm`, `sglang`, `tgi`, `triton`).
    pub server: String,
    /// Requests finished over the horizon, successes and server errors.
    pub requests: Option<u64>,
    pub errors: Option<u64>,
    /// Requests finished per second over the windows that reported them.
    pub qps: Option<f64>,
    /// Server errors over requests (0–1).
    pub error_rate: Option<f64>,
    /// Requests waiting, and running, as last scraped.
    pub queue_depth: Option<f64>,
    pub running: Option<f64>,
    /// End-to-end latency and time to first token quantiles, seconds (read
    /// from the server's buckets as Prometheus's `histogram_quantile` does).
    pub latency_p50_s: Option<f64>,
    pub latency_p99_s: Option<f64>,
    pub ttft_p50_s: Option<f64>,
    pub ttft_p99_s: Option<f64>,
    /// Why its latest failed scrape failed (empty: none did).
    pub error: String,
}

/// Rates over an endpoint's (or a node's) recent windows.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    /// Requests finished per second; `None`: no window reported requests.
    pub qps: Option<f64>,
    /// Server errors over requests (0–1; 0 with no requests); `None`:
    /// the server does not count its errors, or no rate is known.
    pub error_rate: Option<f64>,
    pub queue_depth: Option<f64>,
}

impl ServingState {
    fn take(&mut self, w: ServingWindow, end_ns: u64, duration_ns: u64, seq: u64) {
        self.pid = w.pid;
        if !w.server.is_empty() {
            self.server = w.server;
            self.model = w.model;
        }
        if w.scrapes > w.failures {
            self.queue_depth = w.queue_depth;
            self.running = w.running;
        } else if w.scrapes > 0 {
            (self.queue_depth, self.running) = (None, None);
        }
        self.error = w.error;
        self.requests_total += w.requests.unwrap_or(0);
        self.errors_total += w.errors.unwrap_or(0);
        self.recent.push_back(Recent {
            end_ns,
            duration_ns,
            requests: w.requests,
            errors: w.errors,
            latency: w.latency,
            ttft: w.ttft,
        });
        while self
            .recent
            .front()
            .is_some_and(|r| r.end_ns + SERVING_HORIZON_NS < end_ns)
        {
            self.recent.pop_front();
        }
        self.seen_seq = seq;
    }

    /// Requests/s and error ratio over the windows that reported them.
    pub fn rates(&self) -> Rates {
        let (mut ns, mut req, mut err, mut err_known) = (0u64, 0u64, 0u64, false);
        for w in &self.recent {
            if let Some(r) = w.requests {
                ns += w.duration_ns;
                req += r;
                if let Some(e) = w.errors {
                    err += e;
                    err_known = true;
                }
            }
        }
        let qps = (ns > 0).then(|| req as f64 / (ns as f64 / 1e9));
        Rates {
            qps,
            error_rate: (qps.is_some() && err_known).then(|| {
                if req == 0 {
                    0.0
                } else {
                    err as f64 / req as f64
                }
            }),
            queue_depth: self.queue_depth,
        }
    }

    /// Requests finished, and their end-to-end p99 (s), over the windows
    /// that ended within `horizon_ns` of the latest (the control loop's
    /// view, shorter than the API's).
    pub fn recent_latency(&self, horizon_ns: u64) -> (Option<u64>, Option<f64>) {
        let Some(last) = self.recent.back() else {
            return (None, None);
        };
        let from = last.end_ns.saturating_sub(horizon_ns);
        let recent = || self.recent.iter().filter(move |r| r.end_ns > from);
        let requests = recent()
            .filter_map(|r| r.requests)
            .fold(None, |t: Option<u64>, v| Some(t.unwrap_or(0) + v));
        let latency = HistogramDelta::sum(recent().filter_map(|r| r.latency.as_ref()));
        (requests, latency.and_then(|h| h.quantile(0.99)))
    }

    /// The horizon's summary, for the API.
    pub fn view(&self) -> ServingView {
        let rates = self.rates();
        let sum = |f: fn(&Recent) -> Option<u64>| {
            self.recent
                .iter()
                .filter_map(f)
                .fold(None, |t: Option<u64>, v| Some(t.unwrap_or(0) + v))
        };
        let latency = HistogramDelta::sum(self.recent.iter().filter_map(|r| r.latency.as_ref()));
        let ttft = HistogramDelta::sum(self.recent.iter().filter_map(|r| r.ttft.as_ref()));
        let q = |h: &Option<HistogramDelta>, q: f64| h.as_ref().and_then(|h| h.quantile(q));
        ServingView {
            server: self.server.clone(),
            requests: sum(|r| r.requests),
            errors: sum(|r| r.errors),
            qps: rates.qps,
            error_rate: rates.error_rate,
            queue_depth: self.queue_depth,
            running: self.running,
            latency_p50_s: q(&latency, 0.5),
            latency_p99_s: q(&latency, 0.99),
            ttft_p50_s: q(&ttft, 0.5),
            ttft_p99_s: q(&ttft, 0.99),
            error: self.error.clone(),
        }
    }
}

/// What the brain knows of one node.
#[derive(Debug, Default)]
pub struct NodeState {
    /// The agent session whose windows these are (a restarted agent starts
    /// a new one, and its sequence numbers start again).
    pub session: u64,
    pub last_seq: Option<u64>,
    /// The end of the latest window, by the agent's clock.
    pub window_end_unix_ns: u64,
    /// The latest window of each GPU, by index.
    pub gpus: BTreeMap<u32, GpuWindow>,
    /// Each process, by (GPU, pid); a process no window has mentioned for
    /// the rolling length is forgotten.
    pub processes: HashMap<(u32, u32), ProcessState>,
    pub windows: u64,
    pub dropped_reported: u64,
    /// What the node's latest `Hello` said it has.
    pub inventory: Vec<GpuInfo>,
    pub agent_version: String,
    /// Its CPU (milli-cores) and memory (MiB), as the `Hello` said.
    pub cpu_milli: Option<u64>,
    pub memory_mib: Option<u64>,
    /// Each GPU's MPS state as last reported (the `Hello`, then windows
    /// that carry a change); GPUs whose MPS the agent does not drive have
    /// none.
    pub mps: BTreeMap<u32, MpsState>,
    /// Each inference server endpoint its agent scrapes, by URL.
    pub serving: BTreeMap<String, ServingState>,
    /// The replicas its agent runs, by placement id, as last reported.
    pub replicas: BTreeMap<String, ReplicaWindow>,
    /// The address its agent connects from (where its replicas serve).
    pub addr: Option<std::net::IpAddr>,
    /// When its latest window arrived (the brain's clock, Unix ns).
    pub received_unix_ns: u64,
    /// Every (GPU, XID) its agent reported in this session (at most 64).
    pub xids: Vec<(u32, u32)>,
}

impl NodeState {
    /// The node's request rate, error ratio and queue depth: the sums over
    /// its endpoints (an endpoint that does not say is left out; none
    /// saying is unknown).
    pub fn serving_rates(&self) -> Rates {
        let mut total = Rates::default();
        let (mut req, mut err) = (0.0, 0.0);
        for r in self.serving.values().map(ServingState::rates) {
            if let Some(q) = r.qps {
                total.qps = Some(total.qps.unwrap_or(0.0) + q);
                if let Some(e) = r.error_rate {
                    req += q;
                    err += e * q;
                    total.error_rate = Some(0.0);
                }
            }
            if let Some(d) = r.queue_depth {
                total.queue_depth = Some(total.queue_depth.unwrap_or(0.0) + d);
            }
        }
        if total.error_rate.is_some() && req > 0.0 {
            total.error_rate = Some(err / req);
        }
        total
    }

    /// Approximate heap bytes this node's state holds.
    pub fn heap_bytes(&self) -> usize {
        let p: usize = self
            .processes
            .values()
            .map(|p| {
                std::mem::size_of::<ProcessState>()
                    + p.kernel.bytes()
                    + p.sync.bytes()
                    + p.latest.container.capacity()
                    + p.latest.pod.capacity()
                    + p.latest.namespace.capacity()
            })
            .sum();
        p + self.gpus.len() * std::mem::size_of::<GpuWindow>()
    }
}

/// What became of a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    New,
    /// Its sequence number was seen before (resent after a reconnection).
    Duplicate,
}

/// Counters since the brain started.
#[derive(Clone, Debug, Default)]
pub struct Totals {
    pub windows: u64,
    /// Frame bytes of the windows accepted.
    pub bytes: u64,
    pub duplicates: u64,
    /// Σ of the dropped-window counts agents reported.
    pub dropped_reported: u64,
    /// Command results stored.
    pub results: u64,
    /// Connections refused, by reason.
    pub rejected: BTreeMap<String, u64>,
}

/// The ingest metrics over the interval since the previous snapshot.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub totals: Totals,
    pub interval_s: f64,
    pub windows_per_s: f64,
    pub bytes_per_s: f64,
    /// Agent → brain lag of the interval's windows: from the end of the
    /// window (agent's clock) to its arrival (brain's clock), microseconds.
    pub lag_p50_us: u64,
    pub lag_p99_us: u64,
    pub lag_max_us: u64,
    pub nodes: usize,
}

/// The brain's cluster state and ingest metrics.
pub struct Ingest {
    pub nodes: HashMap<String, NodeState>,
    pub totals: Totals,
    /// Windows of history kept per histogram series.
    rolling: usize,
    lag_us: Histogram<u64>,
    at_snapshot: (std::time::Instant, u64, u64),
}

impl Ingest {
    /// Keeps `rolling` windows of histograms per process (at least 1).
    pub fn new(rolling: usize) -> Ingest {
        Ingest {
            nodes: HashMap::new(),
            totals: Totals::default(),
            rolling: rolling.max(1),
            // 1 µs .. 1 h, 3 significant digits.
            lag_us: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            at_snapshot: (std::time::Instant::now(), 0, 0),
        }
    }

    /// Takes in one window from `node` (agent `session`), `frame_bytes`
    /// long, arriving at `now_unix_ns`.
    pub fn window(
        &mut self,
        node: &str,
        session: u64,
        mut w: TelemetryWindow,
        frame_bytes: usize,
        now_unix_ns: u64,
    ) -> Accepted {
        let rolling = self.rolling;
        let n = match self.nodes.get_mut(node) {
            Some(n) => n,
            None => self.nodes.entry(node.to_string()).or_default(),
        };
        if n.session != session {
            n.session = session;
            n.last_seq = None;
            // A new agent session (a restart, the GPU reset) starts clean.
            n.xids.clear();
        }
        if n.last_seq.is_some_and(|last| w.seq <= last) {
            self.totals.duplicates += 1;
            return Accepted::Duplicate;
        }
        n.last_seq = Some(w.seq);
        n.windows += 1;
        n.dropped_reported += w.dropped_windows;
        n.window_end_unix_ns = w.start_unix_ns.saturating_add(w.duration_ns);
        n.received_unix_ns = now_unix_ns;
        for g in w.gpus.drain(..) {
            for &x in &g.xids {
                if n.xids.len() < 64 && !n.xids.contains(&(g.index, x)) {
                    n.xids.push((g.index, x));
                }
            }
            n.gpus.insert(g.index, g);
        }
        for m in w.mps.drain(..) {
            n.mps.insert(m.gpu, m.state);
        }
        for mut p in w.processes.drain(..) {
            let kernel = std::mem::take(&mut p.kernel_hist);
            let sync = std::mem::take(&mut p.sync_hist);
            let s = n
                .processes
                .entry((p.gpu, p.pid))
                .or_insert_with(|| ProcessState {
                    latest: p.clone(),
                    kernel: Rolling::default(),
                    sync: Rolling::default(),
                    seen_seq: w.seq,
                });
            s.kernel.push(rolling, kernel);
            s.sync.push(rolling, sync);
            // Empty identity strings mean "unchanged".
            for (new, old) in [
                (&mut p.container, &mut s.latest.container),
                (&mut p.pod, &mut s.latest.pod),
                (&mut p.namespace, &mut s.latest.namespace),
            ] {
                if new.is_empty() {
                    std::mem::swap(new, old);
                }
            }
            s.latest = p;
            s.seen_seq = w.seq;
        }
        let seq = w.seq;
        // Every window lists every replica.
        n.replicas = w.replicas.drain(..).map(|r| (r.id.clone(), r)).collect();
        for sw in w.serving.drain(..) {
            n.serving.entry(sw.endpoint.clone()).or_default().take(
                sw,
                n.window_end_unix_ns,
                w.duration_ns,
                seq,
            );
        }
        n.processes.retain(|_, p| p.seen_seq + rolling as u64 > seq);
        n.serving.retain(|_, e| e.seen_seq + rolling as u64 > seq);

        self.totals.windows += 1;
        self.totals.bytes += frame_bytes as u64;
        self.totals.dropped_reported += w.dropped_windows;
        let lag_ns = now_unix_ns.saturating_sub(n.window_end_unix_ns);
        self.lag_us.saturating_record((lag_ns / 1000).max(1));
        Accepted::New
    }

    /// Records what a node's agent announced when it connected.
    pub fn hello(&mut self, h: &Hello) {
        let n = self.nodes.entry(h.node.clone()).or_default();
        n.inventory = h.gpus.clone();
        n.agent_version = h.agent_version.clone();
        n.cpu_milli = h.cpu_milli;
        n.memory_mib = h.memory_mib;
        n.mps = h
            .gpus
            .iter()
            .filter_map(|g| Some((g.index, g.mps.clone()?)))
            .collect();
    }

    pub fn rejected(&mut self, reason: &str) {
        *self.totals.rejected.entry(reason.to_string()).or_default() += 1;
    }

    /// The metrics since the previous snapshot (which this one ends).
    pub fn snapshot(&mut self) -> Snapshot {
        let now = std::time::Instant::now();
        let (then, windows, bytes) = self.at_snapshot;
        let interval_s = now.duration_since(then).as_secs_f64().max(1e-9);
        let s = Snapshot {
            totals: self.totals.clone(),
            interval_s,
            windows_per_s: (self.totals.windows - windows) as f64 / interval_s,
            bytes_per_s: (self.totals.bytes - bytes) as f64 / interval_s,
            lag_p50_us: self.lag_us.value_at_quantile(0.5),
            lag_p99_us: self.lag_us.value_at_quantile(0.99),
            lag_max_us: self.lag_us.max(),
            nodes: self.nodes.len(),
        };
        self.lag_us.reset();
        self.at_snapshot = (now, self.totals.windows, self.totals.bytes);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::{Serializer, V2Serializer};

    fn hist(values: &[u64]) -> Vec<u8> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 2).unwrap();
        for v in values {
            h.record(*v).unwrap();
        }
        let mut out = Vec::new();
        V2Serializer::new().serialize(&h, &mut out).unwrap();
        out
    }

    fn process(pid: u32, kernel: Vec<u8>) -> ProcessWindow {
        ProcessWindow {
            pid,
            ns_pid: pid,
            gpu: 0,
            cgroup_id: 1,
            container: "c".into(),
            pod: "p".into(),
            namespace: "ns".into(),
            launches: 10,
            gpu_time_ns: 1000,
            occupancy_weighted_sm_ns: 500,
            memory_bytes: 1 << 20,
            mps_percent: 100.0,
            shimmed: true,
            kernel_hist: kernel,
            sync_hist: Vec::new(),
            memory: None,
        }
    }

    fn window(seq: u64, processes: Vec<ProcessWindow>) -> TelemetryWindow {
        TelemetryWindow {
            node: "n".into(),
            seq,
            start_unix_ns: seq * 100_000_000,
            duration_ns: 100_000_000,
            gpus: vec![],
            processes,
            dropped_windows: 0,
            mps: Vec::new(),
            serving: Vec::new(),
            replicas: Vec::new(),
        }
    }

    #[test]
    fn histograms_roll_and_processes_expire() {
        let mut i = Ingest::new(3);
        for seq in 0..5 {
            let w = window(
                seq,
                vec![process(7, hist(&[seq * 1000 + 1000])), process(8, vec![])],
            );
            assert_eq!(
                i.window("n", 1, w, 100, (seq + 1) * 100_000_000 + 2_000_000),
                Accepted::New
            );
        }
        let n = &i.nodes["n"];
        let p = &n.processes[&(0, 7)];
        assert_eq!(p.kernel.len(), 3, "only the last 3 windows");
        let h = p.kernel.merged().unwrap().unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(h.min(), h.lowest_equivalent(3000), "windows 2, 3, 4");
        assert!(n.processes[&(0, 8)].kernel.merged().unwrap().is_none());
        assert!(p.latest.kernel_hist.is_empty(), "moved, not kept twice");

        // Process 8 goes away: forgotten once 3 windows have not mentioned
        // it. Process 7's identity is not repeated: it is kept.
        for seq in 5..8 {
            let mut p = process(7, vec![]);
            p.container.clear();
            p.pod.clear();
            p.namespace.clear();
            i.window("n", 1, window(seq, vec![p]), 100, 0);
            let latest = &i.nodes["n"].processes[&(0, 7)].latest;
            assert_eq!((latest.container.as_str(), latest.pod.as_str()), ("c", "p"));
            let gone = !i.nodes["n"].processes.contains_key(&(0, 8));
            assert_eq!(gone, seq >= 7, "window {seq}");
        }
        let s = i.snapshot();
        assert_eq!(s.totals.windows, 8);
        assert_eq!(s.totals.bytes, 800);
        // Five windows 2 ms late, three with no lag at all (clamped to 1 µs).
        assert!((1990..=2010).contains(&s.lag_p50_us), "{s:?}");
    }

    #[test]
    fn duplicates_are_counted_per_session_and_a_new_session_starts_over() {
        let mut i = Ingest::new(4);
        assert_eq!(i.window("n", 1, window(5, vec![]), 10, 0), Accepted::New);
        assert_eq!(
            i.window("n", 1, window(5, vec![]), 10, 0),
            Accepted::Duplicate
        );
        assert_eq!(
            i.window("n", 1, window(3, vec![]), 10, 0),
            Accepted::Duplicate
        );
        assert_eq!(
            i.window("n", 2, window(0, vec![]), 10, 0),
            Accepted::New,
            "restarted agent"
        );
        assert_eq!(i.totals.duplicates, 2);
        assert_eq!(i.totals.windows, 2);
    }

    #[test]
    fn xids_are_kept_for_the_agent_session_and_arrival_is_the_brains_clock() {
        let mut i = Ingest::new(4);
        let with_xid = |seq, xid| {
            let mut w = window(seq, vec![]);
            w.gpus.push(GpuWindow {
                index: 1,
                utilization: 0.0,
                sm_utilization: 0.0,
                memory_used_bytes: 0,
                power_mw: 0,
                temperature_c: 0,
                xids: vec![xid],
            });
            w
        };
        i.window("n", 1, with_xid(0, 79), 10, 7);
        i.window("n", 1, with_xid(1, 79), 10, 8);
        i.window("n", 1, window(2, vec![]), 10, 9);
        assert_eq!(i.nodes["n"].xids, [(1, 79)], "kept after its window, once");
        assert_eq!(i.nodes["n"].received_unix_ns, 9);
        i.window("n", 2, window(0, vec![]), 10, 10);
        assert!(i.nodes["n"].xids.is_empty(), "a new session starts clean");
    }

    #[test]
    fn lag_is_measured_from_the_window_end() {
        let mut i = Ingest::new(1);
        // Window 0 ends at 100 ms; it arrives 3 ms and 40 ms later.
        i.window("a", 1, window(0, vec![]), 10, 103_000_000);
        i.window("b", 1, window(0, vec![]), 10, 140_000_000);
        let s = i.snapshot();
        assert!((2990..=3010).contains(&s.lag_p50_us), "{s:?}");
        assert!((39_900..=40_100).contains(&s.lag_max_us), "{s:?}");
        let next = i.snapshot();
        assert_eq!(next.lag_max_us, 0, "each snapshot covers its own interval");
    }

    #[test]
    fn a_corrupt_histogram_is_reported_when_read() {
        let mut i = Ingest::new(2);
        i.window("n", 1, window(0, vec![process(1, vec![1, 2, 3])]), 10, 0);
        let e = i.nodes["n"].processes[&(0, 1)].kernel.merged().unwrap_err();
        assert!(e.contains("histogram 0"), "{e}");
    }
}
