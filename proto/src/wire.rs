//! Agent ↔ brain messages and how they travel.
//!
//! A frame is `[length: u32 LE][version: u16 LE][kind: u8][payload]`, where
//! `length` counts everything after itself and the payload is the message
//! body in postcard's compact serde encoding. The header is read before the
//! payload, so a frame that is too large is refused before it is buffered,
//! and a message kind this build does not know (from a newer peer) is
//! answered with [`FrameError::UnknownKind`] instead of a decoding failure.
//! A connection starts with the agent's [`Hello`] (the range of protocol
//! versions it speaks) and the brain's [`Welcome`] (the version chosen, see
//! [`negotiate`]); every later frame carries that version.

use serde::{Deserialize, Serialize};

/// The newest protocol this build speaks, and the oldest it still accepts.
/// Version 2: the node's CPU and memory and each GPU's MPS state in the
/// `Hello`, MPS state changes in windows, and whether a process runs under
/// the shim. Version 3: what each inference server's own metrics said over
/// the window ([`ServingWindow`]), and the replicas the brain has agents
/// run ([`ReplicaSpec`], [`ReplicaWindow`]). Version 4: a shimmed
/// process's memory by kind, its limit and its refused allocations
/// ([`ProcessMemory`]).
pub const PROTOCOL_VERSION: u16 = 4;
pub const MIN_PROTOCOL_VERSION: u16 = 4;
/// Default largest frame (header included) a peer accepts.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;
/// Bytes before the payload: length, version, kind.
pub const HEADER_BYTES: usize = 4 + 2 + 1;

/// One GPU's MPS control daemon as its agent sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MpsState {
    /// The control daemon answers.
    pub daemon: bool,
    /// The active thread percentage servers started from now on get
    /// (`None` when the daemon does not answer).
    pub default_percent: Option<f32>,
    pub servers: Vec<MpsServer>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MpsServer {
    pub pid: u32,
    /// Its active thread percentage, 0–100 (what its clients got).
    pub percent: f32,
    /// Its clients' PIDs.
    pub clients: Vec<u32>,
}

/// A GPU's MPS state, in a window that carries a change of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GpuMps {
    pub gpu: u32,
    pub state: MpsState,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GpuInfo {
    pub index: u32,
    pub uuid: String,
    pub model: String,
    pub sms: u32,
    pub memory_bytes: u64,
    pub tdp_watts: u32,
    /// `None`: the agent does not drive MPS on this GPU.
    pub mps: Option<MpsState>,
}

/// The agent's first message: who it is and what the node has.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub min_version: u16,
    pub max_version: u16,
    pub node: String,
    /// Random per agent run: window sequence numbers are unique within it,
    /// so the brain can drop windows resent after a reconnection.
    pub session: u64,
    pub agent_version: String,
    /// The node's CPU (milli-cores) and memory (MiB); `None` when the agent
    /// could not read them.
    pub cpu_milli: Option<u64>,
    pub memory_mib: Option<u64>,
    pub gpus: Vec<GpuInfo>,
}

/// The brain's answer: the protocol version both will use.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub version: u16,
    pub brain_version: String,
    /// The brain's command ledger: command ids are unique within it (a
    /// brain with a new ledger starts its ids again), so an agent keys the
    /// commands it applied by (ledger, id).
    pub ledger: u64,
}

/// One GPU over one window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GpuWindow {
    pub index: u32,
    /// Fraction of the window any kernel ran, 0–1.
    pub utilization: f32,
    /// Fraction of SM-time used, 0–1.
    pub sm_utilization: f32,
    pub memory_used_bytes: u64,
    pub power_mw: u32,
    pub temperature_c: u32,
    /// XID errors (device faults) NVML reported during the window.
    pub xids: Vec<u32>,
}

/// One process over one window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessWindow {
    pub pid: u32,
    pub ns_pid: u32,
    pub gpu: u32,
    pub cgroup_id: u64,
    /// Who it is. Empty strings mean "as before": an agent sends them when
    /// the process first appears and then only now and again (every tenth
    /// window, say), so a brain that restarts learns them again soon.
    pub container: String,
    pub pod: String,
    pub namespace: String,
    pub launches: u64,
    pub gpu_time_ns: u64,
    pub occupancy_weighted_sm_ns: u64,
    pub memory_bytes: u64,
    /// The MPS percentage it started with (0: not an MPS client).
    pub mps_percent: f32,
    /// It runs under the shim (a segment of its own): its SM-time budget
    /// is enforced.
    pub shimmed: bool,
    /// HdrHistograms in their V2 serialisation (kernel durations, sync waits).
    pub kernel_hist: Vec<u8>,
    pub sync_hist: Vec<u8>,
    /// What its shim counts of its memory (`None`: not shimmed).
    pub memory: Option<ProcessMemory>,
}

/// A shimmed process's memory as its shim counts it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessMemory {
    /// Bytes in use by kind, in [`crate::shm::MEMORY_KINDS`] order (device
    /// kinds, then host memory).
    pub in_use: Vec<u64>,
    /// Its device-memory limit in bytes (0: none).
    pub limit: u64,
    /// Allocations refused for crossing the limit since it started, and
    /// their bytes.
    pub refused_allocations: u64,
    pub refused_bytes: u64,
}

impl ProcessMemory {
    /// Device bytes in use: every kind but host memory.
    pub fn device_bytes(&self) -> u64 {
        self.in_use
            .iter()
            .enumerate()
            .filter(|(k, _)| *k != crate::shm::HOST_MEMORY)
            .map(|(_, b)| b)
            .sum()
    }
}

/// A histogram's change over a window, bucket-exact: the observations that
/// fell in each of the server's own buckets (not cumulative), so windows
/// add up to exactly what the server counted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HistogramDelta {
    /// The buckets' finite upper bounds (seconds), ascending, as the
    /// server exports them; `counts` has one more entry, for `+Inf`.
    /// Empty for a server that exports only a sum and a count.
    pub bounds_s: Vec<f64>,
    pub counts: Vec<u64>,
    pub sum_s: f64,
    pub count: u64,
}

impl HistogramDelta {
    /// Adds `other` in; `false` (and nothing added) when its buckets are
    /// not these.
    pub fn add(&mut self, other: &HistogramDelta) -> bool {
        if self.bounds_s != other.bounds_s || self.counts.len() != other.counts.len() {
            return false;
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum_s += other.sum_s;
        self.count += other.count;
        true
    }

    /// The sum of a run of windows' differences; windows whose buckets
    /// differ from the sum's (a restarted server) start it again. `None`
    /// for none.
    pub fn sum<'a>(run: impl IntoIterator<Item = &'a HistogramDelta>) -> Option<HistogramDelta> {
        let mut total: Option<HistogramDelta> = None;
        for h in run {
            if !total.as_mut().is_some_and(|t| t.add(h)) {
                total = Some(h.clone());
            }
        }
        total
    }

    /// The `q` quantile (0–1) the way Prometheus's `histogram_quantile`
    /// reads buckets: linear within the bucket the rank falls in (from 0 for
    /// the first), the highest finite bound when it falls in `+Inf`; `None`
    /// without observations or buckets.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.counts.iter().sum();
        if total == 0 || self.bounds_s.is_empty() || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = q * total as f64;
        let mut below = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            if c > 0 && (below + c) as f64 >= rank {
                let Some(&upper) = self.bounds_s.get(i) else {
                    return self.bounds_s.last().copied();
                };
                let lower = if i == 0 { 0.0 } else { self.bounds_s[i - 1] };
                let into = ((rank - below as f64) / c as f64).clamp(0.0, 1.0);
                return Some(lower + (upper - lower) * into);
            }
            below += c;
        }
        self.bounds_s.last().copied()
    }
}

/// What one inference server's own Prometheus endpoint said over a window
/// (the differences between its scrapes; gauges as last scraped). `None`:
/// that server does not export it, never zero.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServingWindow {
    /// The metrics URL scraped.
    pub endpoint: String,
    /// The process serving it, where the agent knows it (it started it).
    pub pid: Option<u32>,
    /// Which names it exports: `vllm` (also `vagus serve`), `sglang`,
    /// `tgi`, `triton`; empty until a scrape recognised one.
    pub server: String,
    /// The model label, when the endpoint serves exactly one.
    pub model: String,
    /// Scrapes attempted and failed during the window, and why the last
    /// failure failed (empty: none did).
    pub scrapes: u32,
    pub failures: u32,
    pub error: String,
    /// Requests finished in the window (successes and server errors), and
    /// those that failed with a server error.
    pub requests: Option<u64>,
    pub errors: Option<u64>,
    /// Requests waiting for the engine, and running in it.
    pub queue_depth: Option<f64>,
    pub running: Option<f64>,
    /// End-to-end request latency and time to first token.
    pub latency: Option<HistogramDelta>,
    pub ttft: Option<HistogramDelta>,
}

/// A replica the brain asks an agent to run: one process of a placement,
/// on the GPUs and at the MPS share it was given.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicaSpec {
    /// The placement's id: a node runs at most one replica of it.
    pub id: String,
    pub command: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The loopback port it serves HTTP on (`/health`, `/metrics`);
    /// `None`: nothing to probe or scrape.
    pub port: Option<u16>,
    pub gpus: Vec<u32>,
    /// Its MPS active thread percentage (0–100); `None`: a whole GPU.
    pub mps_percent: Option<f32>,
}

/// Where a replica is in its life. It starts, becomes ready when its
/// `/health` answers 200, running once it has served a request, draining
/// when told to stop, and exited when its process is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaState {
    Starting,
    Ready,
    Running,
    Draining,
    Exited,
}

impl ReplicaState {
    pub fn name(self) -> &'static str {
        match self {
            ReplicaState::Starting => "starting",
            ReplicaState::Ready => "ready",
            ReplicaState::Running => "running",
            ReplicaState::Draining => "draining",
            ReplicaState::Exited => "exited",
        }
    }
}

/// A replica as its agent runs it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicaWindow {
    pub id: String,
    pub pid: u32,
    pub port: Option<u16>,
    pub state: ReplicaState,
    /// How it ended (`exit status 0`, `signal 9`), once exited.
    pub exit: Option<String>,
    pub gpus: Vec<u32>,
    pub mps_percent: Option<f32>,
}

/// What an agent saw on its node over one window (default 100 ms).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TelemetryWindow {
    pub node: String,
    /// Per-connection sequence number, from 0.
    pub seq: u64,
    pub start_unix_ns: u64,
    pub duration_ns: u64,
    pub gpus: Vec<GpuWindow>,
    pub processes: Vec<ProcessWindow>,
    /// Windows dropped from the outage buffer before this one.
    pub dropped_windows: u64,
    /// GPUs whose MPS state changed since the previous window (empty: none).
    pub mps: Vec<GpuMps>,
    /// Each inference server endpoint the agent scrapes.
    pub serving: Vec<ServingWindow>,
    /// Every replica the agent runs (each window: there are few).
    pub replicas: Vec<ReplicaWindow>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub seq: u64,
    pub unix_ns: u64,
}

/// What the brain asks an agent to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CommandKind {
    /// Set a shimmed process's SM-time budget (millionths of the device; 0: none).
    SetShimBudget {
        pid: u32,
        budget_ppm: u32,
    },
    /// Pause or resume a shimmed process's launches.
    PauseProcess {
        pid: u32,
        paused: bool,
    },
    /// Set an MPS server's active thread percentage (for clients created afterwards).
    SetMpsPercentage {
        gpu: u32,
        server_pid: u32,
        percent: f32,
    },
    StartMpsServer {
        gpu: u32,
        uid: u32,
    },
    StopMpsServer {
        gpu: u32,
        server_pid: u32,
    },
    /// Stop placing work on a GPU and let what runs there finish.
    DrainGpu {
        gpu: u32,
    },
    /// Run a replica (nothing if one of that id runs already).
    StartReplica(ReplicaSpec),
    /// Stop a replica gracefully: wait until it holds no request (at most
    /// `grace_ms`), then SIGTERM, then SIGKILL.
    StopReplica {
        id: String,
        grace_ms: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Unique per brain; an agent applies each id at most once.
    pub id: u64,
    pub kind: CommandKind,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    Applied,
    /// Seen before: not applied again (the first outcome stands).
    Duplicate,
    Failed(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    pub id: u64,
    pub outcome: Outcome,
}

/// The brain's acknowledgement: every window up to `windows_through` (of
/// this connection's agent session) has arrived, and the results of these
/// command ids are durably recorded. The agent forgets what was
/// acknowledged and resends the rest after a reconnection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    pub windows_through: Option<u64>,
    pub results: Vec<u64>,
}

/// A refusal sent before closing: why the peer's frame or hello was refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    pub reason: String,
}

/// Every message, with its kind byte.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Hello(Hello),
    Welcome(Welcome),
    Telemetry(TelemetryWindow),
    Heartbeat(Heartbeat),
    Command(Command),
    CommandResult(CommandResult),
    Refusal(Refusal),
    Ack(Ack),
}

impl Message {
    pub fn kind(&self) -> u8 {
        match self {
            Message::Hello(_) => 1,
            Message::Welcome(_) => 2,
            Message::Telemetry(_) => 3,
            Message::Heartbeat(_) => 4,
            Message::Command(_) => 5,
            Message::CommandResult(_) => 6,
            Message::Refusal(_) => 7,
            Message::Ack(_) => 8,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("frame length {len} is shorter than its header")]
    TooShort { len: usize },
    #[error("stream ended inside a frame ({have} of {want} bytes)")]
    Truncated { have: usize, want: usize },
    #[error(
        "unknown message kind {kind} (peer speaks protocol version {version}; this build {PROTOCOL_VERSION})"
    )]
    UnknownKind { kind: u8, version: u16 },
    #[error(
        "protocol version {version} is not in the supported range {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}"
    )]
    UnsupportedVersion { version: u16 },
    #[error("malformed {kind_name} payload: {reason}")]
    BadPayload {
        kind_name: &'static str,
        reason: String,
    },
    #[error("cannot encode message: {0}")]
    Encode(String),
}

fn kind_name(kind: u8) -> &'static str {
    [
        "?",
        "Hello",
        "Welcome",
        "Telemetry",
        "Heartbeat",
        "Command",
        "CommandResult",
        "Refusal",
        "Ack",
    ]
    .get(kind as usize)
    .copied()
    .unwrap_or("?")
}

/// Encodes `msg` as one frame at protocol `version`, appending to `out`
/// (which is left as it was on error).
pub fn encode(
    msg: &Message,
    version: u16,
    max_frame: usize,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let body = match msg {
        Message::Hello(m) => postcard::to_allocvec(m),
        Message::Welcome(m) => postcard::to_allocvec(m),
        Message::Telemetry(m) => postcard::to_allocvec(m),
        Message::Heartbeat(m) => postcard::to_allocvec(m),
        Message::Command(m) => postcard::to_allocvec(m),
        Message::CommandResult(m) => postcard::to_allocvec(m),
        Message::Refusal(m) => postcard::to_allocvec(m),
        Message::Ack(m) => postcard::to_allocvec(m),
    }
    .map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = HEADER_BYTES + body.len();
    if len > max_frame {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame,
        });
    }
    out.extend_from_slice(&((len - 4) as u32).to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.push(msg.kind());
    out.extend_from_slice(&body);
    Ok(())
}
/// Decodes a message from a frame's kind and payload.
pub fn decode(version: u16, kind: u8, payload: &[u8]) -> Result<Message, FrameError> {
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
        return Err(FrameError::UnsupportedVersion { version });
    }
    fn body<'a, T: Deserialize<'a>>(kind: u8, payload: &'a [u8]) -> Result<T, FrameError> {
        match postcard::take_from_bytes::<T>(payload) {
            Ok((v, [])) => Ok(v),
            Ok((_, rest)) => Err(FrameError::BadPayload {
                kind_name: kind_name(kind),
                reason: format!("{} bytes left over", rest.len()),
            }),
            Err(e) => Err(FrameError::BadPayload {
                kind_name: kind_name(kind),
                reason: e.to_string(),
            }),
        }
    }
    Ok(match kind {
        1 => Message::Hello(body(kind, payload)?),
        2 => Message::Welcome(body(kind, payload)?),
        3 => Message::Telemetry(body(kind, payload)?),
        4 => Message::Heartbeat(body(kind, payload)?),
        5 => Message::Command(body(kind, payload)?),
        6 => Message::CommandResult(body(kind, payload)?),
        7 => Message::Refusal(body(kind, payload)?),
        8 => Message::Ack(body(kind, payload)?),
        _ => return Err(FrameError::UnknownKind { kind, version }),
    })
}

/// Splits a byte stream into messages. Feed it what arrives with
/// [`FrameDecoder::push`]; take messages with [`FrameDecoder::next_message`].
/// After an error the connection is to be closed: the decoder stays failed.
pub struct FrameDecoder {
    buf: Vec<u8>,
    max_frame: usize,
    failed: Option<FrameError>,
}

impl FrameDecoder {
    pub fn new(max_frame: usize) -> FrameDecoder {
        FrameDecoder {
            buf: Vec::new(),
            max_frame,
            failed: None,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Message>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.take();
        if let Err(e) = &r {
            self.failed = Some(e.clone());
            self.buf = Vec::new();
        }
        r
    }

    fn take(&mut self) -> Result<Option<Message>, FrameError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
        if len + 4 > self.max_frame {
            return Err(FrameError::TooLarge {
                len: len + 4,
                max: self.max_frame,
            });
        }
        if len < HEADER_BYTES - 4 {
            return Err(FrameError::TooShort { len });
        }
        if self.buf.len() < len + 4 {
            return Ok(None);
        }
        let version = u16::from_le_bytes([self.buf[4], self.buf[5]]);
        let kind = self.buf[6];
        let msg = decode(version, kind, &self.buf[HEADER_BYTES..len + 4]);
        self.buf.drain(..len + 4);
        msg.map(Some)
    }

    /// At end of stream: an error if a frame was cut short.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let want = if self.buf.len() >= 4 {
            u32::from_le_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize + 4
        } else {
            4
        };
        Err(FrameError::Truncated {
            have: self.buf.len(),
            want,
        })
    }
}

/// The version two peers speak: the newest both support.
pub fn negotiate(theirs: (u16, u16), ours: (u16, u16)) -> Result<u16, String> {
    let lo = theirs.0.max(ours.0);
    let hi = theirs.1.min(ours.1);
    if theirs.0 > theirs.1 {
        return Err(format!(
            "peer announced an empty version range {}..={}",
            theirs.0, theirs.1
        ));
    }
    if lo > hi {
        return Err(format!(
            "no common protocol version: peer speaks {}..={}, this build {}..={}",
            theirs.0, theirs.1, ours.0, ours.1
        ));
    }
    Ok(hi)
}

#[cfg(test)]
mod tests {

    #[test]
    fn quantiles_read_buckets_as_prometheus_does() {
        let mut h = HistogramDelta {
            bounds_s: vec![1.0, 2.0, 4.0],
            counts: vec![10, 80, 10, 0],
            sum_s: 190.0,
            count: 100,
        };
        assert_eq!(h.quantile(0.05), Some(0.5));
        assert_eq!(h.quantile(0.5), Some(1.5));
        assert_eq!(h.quantile(0.95), Some(3.0));
        assert!(h.add(&h.clone()));
        assert_eq!((h.count, h.counts[1]), (200, 160));
        assert_eq!(h.quantile(0.5), Some(1.5), "doubling changes no quantile");
        h.counts[3] = 400;
        assert_eq!(
            h.quantile(0.99),
            Some(4.0),
            "+Inf: the highest finite bound"
        );
        let other = HistogramDelta {
            bounds_s: vec![1.0],
            counts: vec![1, 0],
            ..Default::default()
        };
        assert!(!h.add(&other), "different buckets do not add");
        assert_eq!(HistogramDelta::default().quantile(0.5), None);
    }
    use super::*;

    pub(super) fn samples() -> Vec<Message> {
        let gpu = GpuInfo {
            index: 0,
            uuid: "GPU-1".into(),
            model: "NVIDIA H100 80GB HBM3".into(),
            sms: 132,
            memory_bytes: 81559 << 20,
            tdp_watts: 700,
            mps: Some(MpsState {
                daemon: true,
                default_percent: Some(100.0),
                servers: vec![MpsServer {
                    pid: 465,
                    percent: 50.0,
                    clients: vec![42, 43],
                }],
            }),
        };
        let proc_ = ProcessWindow {
            pid: 42,
            ns_pid: 7,
            gpu: 0,
            cgroup_id: 1234,
            container: "c1".into(),
            pod: "llm-0".into(),
            namespace: "prod".into(),
            launches: 10_000,
            gpu_time_ns: 5_000_000,
            occupancy_weighted_sm_ns: 2_500_000,
            memory_bytes: 1 << 30,
            mps_percent: 40.0,
            shimmed: true,
            kernel_hist: vec![1, 2, 3, 4],
            sync_hist: vec![],
            memory: Some(ProcessMemory {
                in_use: vec![1 << 30, 0, 0, 2 << 20, 0, 4096],
                limit: 4 << 30,
                refused_allocations: 2,
                refused_bytes: 6 << 30,
            }),
        };
        vec![
            Message::Hello(Hello {
                min_version: 1,
                max_version: 1,
                node: "node-a".into(),
                session: 0x5eed,
                agent_version: "0.1.0".into(),
                cpu_milli: Some(64_000),
                memory_mib: None,
                gpus: vec![
                    gpu.clone(),
                    GpuInfo {
                        mps: None,
                        index: 1,
                        ..gpu
                    },
                ],
            }),
            Message::Welcome(Welcome {
                version: 2,
                brain_version: "0.1.0".into(),
                ledger: 0x1ed9e5,
            }),
            Message::Telemetry(TelemetryWindow {
                node: "node-a".into(),
                seq: 9,
                start_unix_ns: 1_700_000_000_000_000_000,
                duration_ns: 100_000_000,
                gpus: vec![GpuWindow {
                    index: 0,
                    utilization: 0.5,
                    sm_utilization: 0.25,
                    memory_used_bytes: 1 << 30,
                    power_mw: 300_000,
                    temperature_c: 55,
                    xids: vec![79],
                }],
                processes: vec![
                    proc_.clone(),
                    ProcessWindow {
                        pid: 43,
                        memory: None,
                        ..proc_
                    },
                ],
                dropped_windows: 3,
                mps: vec![GpuMps {
                    gpu: 0,
                    state: gpu.mps.clone().unwrap_or_default(),
                }],
                serving: vec![ServingWindow {
                    endpoint: "http://127.0.0.1:8000/metrics".into(),
                    pid: Some(42),
                    server: "vllm".into(),
                    model: "vagus-8b".into(),
                    scrapes: 1,
                    failures: 0,
                    error: String::new(),
                    requests: Some(3),
                    errors: Some(0),
                    queue_depth: Some(2.0),
                    running: None,
                    latency: Some(HistogramDelta {
                        bounds_s: vec![0.5, 1.0],
                        counts: vec![1, 2, 0],
                        sum_s: 2.1,
                        count: 3,
                    }),
                    ttft: None,
                }],
                replicas: vec![ReplicaWindow {
                    id: "chat".into(),
                    pid: 42,
                    port: Some(8000),
                    state: ReplicaState::Exited,
                    exit: Some("signal 15".into()),
                    gpus: vec![0],
                    mps_percent: Some(50.0),
                }],
            }),
            Message::Command(Command {
                id: 79,
                kind: CommandKind::StartReplica(ReplicaSpec {
                    id: "chat".into(),
                    command: "vagus".into(),
                    args: vec!["serve".into()],
                    env: vec![("A".into(), "b".into())],
                    port: Some(8000),
                    gpus: vec![0],
                    mps_percent: None,
                }),
            }),
            Message::Heartbeat(Heartbeat { seq: 1, unix_ns: 2 }),
            Message::Command(Command {
                id: 77,
                kind: CommandKind::SetShimBudget {
                    pid: 42,
                    budget_ppm: 300_000,
                },
            }),
            Message::Command(Command {
                id: 78,
                kind: CommandKind::SetMpsPercentage {
                    gpu: 0,
                    server_pid: 465,
                    percent: 40.0,
                },
            }),
            Message::Command(Command {
                id: 79,
                kind: CommandKind::DrainGpu { gpu: 1 },
            }),
            Message::CommandResult(CommandResult {
                id: 77,
                outcome: Outcome::Applied,
            }),
            Message::CommandResult(CommandResult {
                id: 77,
                outcome: Outcome::Failed("no such pid".into()),
            }),
            Message::Refusal(Refusal {
                reason: "certificate names node-b".into(),
            }),
            Message::Ack(Ack {
                windows_through: Some(41),
                results: vec![7, 9],
            }),
            Message::Ack(Ack {
                windows_through: None,
                results: vec![],
            }),
        ]
    }

    pub(super) fn stream() -> Vec<u8> {
        let mut out = Vec::new();
        for m in samples() {
            encode(&m, PROTOCOL_VERSION, DEFAULT_MAX_FRAME, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn every_message_round_trips_through_frames_split_anywhere() {
        let bytes = stream();
        for chunk in [1, 2, 3, 7, 64, bytes.len()] {
            let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
            let mut got = Vec::new();
            for piece in bytes.chunks(chunk) {
                d.push(piece);
                while let Some(m) = d.next_message().unwrap() {
                    got.push(m);
                }
            }
            d.finish().unwrap();
            assert_eq!(got, samples(), "chunk size {chunk}");
        }
    }

    #[test]
    fn oversized_truncated_unknown_and_garbage_frames_are_named_errors() {
        let mut big = Vec::new();
        encode(&samples()[3], 1, 64, &mut big).unwrap();
        let before = big.clone();
        let e = encode(&samples()[2], 1, 64, &mut big).unwrap_err();
        assert!(matches!(e, FrameError::TooLarge { max: 64, .. }), "{e}");
        assert_eq!(
            big, before,
            "frames already encoded are kept, nothing partial is added"
        );

        let mut d = FrameDecoder::new(1024);
        d.push(&(5000u32).to_le_bytes());
        assert!(matches!(
            d.next_message(),
            Err(FrameError::TooLarge {
                len: 5004,
                max: 1024
            })
        ));
        assert!(d.next_message().is_err(), "the decoder stays failed");

        let bytes = stream();
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
        d.push(&bytes[..bytes.len() - 3]);
        while d.next_message().unwrap().is_some() {}
        assert!(matches!(d.finish(), Err(FrameError::Truncated { .. })));

        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
        d.push(&[3, 0, 0, 0, 5, 0, 200]);
        let e = d.next_message().unwrap_err();
        assert_eq!(e, FrameError::UnsupportedVersion { version: 5 });
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
        d.push(&[3, 0, 0, 0, 4, 0, 200]);
        let e = d.next_message().unwrap_err();
        assert_eq!(
            e,
            FrameError::UnknownKind {
                kind: 200,
                version: 4
            }
        );
        assert!(e.to_string().contains("unknown message kind 200"), "{e}");

        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
        d.push(&[5, 0, 0, 0, 4, 0, 5, 0xff, 0xff]);
        let e = d.next_message().unwrap_err();
        assert!(
            matches!(
                e,
                FrameError::BadPayload {
                    kind_name: "Command",
                    ..
                }
            ),
            "{e}"
        );
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
        d.push(&[2, 0, 0, 0, 1, 0]);
        assert!(matches!(
            d.next_message(),
            Err(FrameError::TooShort { len: 2 })
        ));
    }

    #[test]
    fn version_negotiation_picks_the_newest_common_version() {
        assert_eq!(negotiate((1, 3), (1, 2)), Ok(2));
        assert_eq!(negotiate((2, 2), (1, 5)), Ok(2));
        assert!(
            negotiate((3, 4), (1, 2))
                .unwrap_err()
                .contains("no common protocol version")
        );
        assert!(negotiate((4, 3), (1, 9)).unwrap_err().contains("empty"));
    }
}

#[cfg(test)]
mod fuzz {
    //! The frame decoder against arbitrary and mutated input: it returns
    //! messages or errors and never panics, whatever arrives.
    use super::tests::{samples, stream};
    use super::*;
    use proptest::prelude::*;

    /// Feeds `bytes` in `chunk`-sized pieces; checks the decoder's contract.
    fn feed(bytes: &[u8], chunk: usize) {
        let mut d = FrameDecoder::new(4096);
        for piece in bytes.chunks(chunk.max(1)) {
            d.push(piece);
            loop {
                match d.next_message() {
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                    Err(_) => {
                        assert!(d.next_message().is_err(), "a failed decoder stays failed");
                        return;
                    }
                }
            }
        }
        let _ = d.finish();
    }

    fn cases() -> u32 {
        std::env::var("VAGUS_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2_000)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), chunk in 1usize..64) {
            feed(&bytes, chunk);
        }

        #[test]
        fn mutated_valid_frames_never_panic(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            cut in any::<usize>(),
            chunk in 1usize..64,
        ) {
            // The corpus: a valid stream of every message kind, then bytes
            // overwritten (length fields included) and the tail cut off.
            let mut bytes = stream();
            for (at, v) in flips {
                let i = at % bytes.len();
                bytes[i] = v;
            }
            bytes.truncate(cut % (bytes.len() + 1));
            feed(&bytes, chunk);
        }

        #[test]
        fn any_valid_message_round_trips(i in 0usize..11, version in MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION) {
            let m = samples()[i].clone();
            let mut out = Vec::new();
            encode(&m, version, DEFAULT_MAX_FRAME, &mut out).unwrap();
            let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
            d.push(&out);
            prop_assert_eq!(d.next_message().unwrap(), Some(m));
        }
    }
}
