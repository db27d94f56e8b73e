//! The node: every GPU process on the host, joined from the three places
//! that know about it — the eBPF probes (every process that calls `cuInit`,
//! shimmed or not), the shim's segments (launches, GPU time, kernel
//! durations) and NVML (device memory, SM utilisation) — and attributed to
//! its pod and container. [`Node::tick`] turns what changed since the last
//! tick into a [`TelemetryWindow`]; [`Node::apply`] carries out the brain's
//! commands; [`crate::metrics`] renders the current totals for Prometheus.

use crate::cgroup::{self, Attribution};
use crate::nvml::{GpuSample, Gpus};
use crate::segments::SegmentDir;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Serializer, V2Serializer};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use vagus_ebpf::{Event, Probes, ProcCounters, SYNC_BUCKETS};
use vagus_proto::shm::{self, ControlRead, ControlValues, HIST_BUCKETS};
use vagus_proto::wire::{
    Command, CommandKind, GpuMps, GpuWindow, MpsServer, MpsState, Outcome, ProcessWindow,
    TelemetryWindow,
};

/// How the node collects.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node: String,
    /// Where shims write their segments; `None`: no shim data.
    pub segment_dir: Option<PathBuf>,
    /// `libcuda` files to probe beyond those found (`libcuda.so.1` through
    /// the loader's search path, and those GPU processes map).
    pub libcuda: Vec<PathBuf>,
    /// Load the eBPF probes.
    pub bpf: bool,
    /// Probe kernel launches too (costly).
    pub launch_probes: bool,
    /// MPS control daemons, one per GPU in index order (one alone serves
    /// every GPU).
    pub mps: Vec<crate::mps::MpsControl>,
    /// Start those daemons when they are not running.
    pub mps_start: bool,
    /// Inference servers' metrics endpoints to scrape.
    pub serving: Vec<crate::serving::Target>,
    /// How the brain's replicas are started here; `None`: this node runs
    /// none (without a brain nobody asks).
    pub exec: Option<crate::replicas::ExecConfig>,
}

/// Where a process's data comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sources {
    pub ebpf: bool,
    pub shim: bool,
    pub nvml: bool,
}

/// The shim's totals for one process.
#[derive(Clone, Debug)]
pub struct ShimTotals {
    pub launches: u64,
    pub gpu_ns: u64,
    pub occupancy_weighted_sm_ns: u64,
    pub bytes_in_use: u64,
    /// Bytes in use by kind (`vagus_proto::shm::MEMORY_KINDS`).
    pub memory_kinds: [u64; shm::MEMORY_KINDS.len()],
    /// The device-memory limit in force (0: none), and what it refused.
    pub memory_limit: u64,
    pub refused_allocations: u64,
    pub refused_bytes: u64,
    pub syncs: u64,
    pub sync_wait_ns: u64,
    pub mps_percent: f32,
    pub ns_pid: u32,
    pub kernel_hist: [u64; HIST_BUCKETS],
    pub sync_hist: [u64; HIST_BUCKETS],
}

/// One GPU process.
#[derive(Clone, Debug, Default)]
pub struct Proc {
    pub pid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub cgroup_path: Option<String>,
    pub attribution: Attribution,
    pub sources: Sources,
    pub gpu: Option<u32>,
    pub nvml_memory_bytes: Option<u64>,
    pub sm_pct: Option<u32>,
    pub ebpf: Option<ProcCounters>,
    pub shim: Option<ShimTotals>,
    pub exited: bool,
    /// What the previous window already reported.
    prev_shim: Option<ShimTotals>,
    prev_sync_hist: Option<[u64; SYNC_BUCKETS]>,
    windows: u64,
}

impl Proc {
    /// Device memory as the best source knows it.
    pub fn memory_bytes(&self) -> u64 {
        self.nvml_memory_bytes
            .or(self.shim.as_ref().map(|s| s.bytes_in_use))
            .or(self
                .ebpf
                .map(|c| c.alloc_bytes.saturating_sub(c.freed_bytes)))
            .unwrap_or(0)
    }
}

/// What went wrong along the way, counted; the agent keeps running.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub events: u64,
    /// Cgroup paths that did not parse, by error kind.
    pub cgroup_errors: u64,
    /// Processes gone before their details could be read.
    pub vanished: u64,
    pub libcuda_attached: u64,
    pub windows: u64,
}

pub struct Node {
    cfg: NodeConfig,
    probes: Option<Probes>,
    gpus: Option<Gpus>,
    segments: Option<SegmentDir>,
    resolver: Option<cgroup::Resolver>,
    pub procs: BTreeMap<u32, Proc>,
    pub last_gpus: Vec<GpuSample>,
    /// Each limitation, said once (no probes, no NVML, ...).
    pub notes: Vec<String>,
    pub counters: Counters,
    libcuda_seen: HashSet<PathBuf>,
    seq: u64,
    /// XIDs the watcher thread reported and this node has not taken yet.
    xid_inbox: Option<std::sync::Arc<std::sync::Mutex<Vec<crate::nvml::Xid>>>>,
    /// XID errors seen, by (GPU, XID), and the last one of each GPU.
    pub xid_counts: BTreeMap<(u32, u64), u64>,
    pub last_xid: BTreeMap<u32, u64>,
    /// Each GPU's MPS state as last sent, when to look again, and whether
    /// a command changed it since.
    mps_sent: Vec<Option<MpsState>>,
    mps_next_poll_ns: u64,
    /// When the daemons are next asked only whether they answer.
    mps_next_live_ns: u64,
    mps_dirty: bool,
    /// The inference servers scraped (their tasks, see [`crate::scrape`],
    /// fill it; each window takes what they read).
    pub serving: crate::serving::Serving,
    /// The replicas the brain has this node run.
    pub replicas: Option<crate::replicas::Replicas>,
}

/// How often the MPS daemons are asked for their state (each look runs the
/// control tool a few times); an MPS command makes the next window look.
const MPS_POLL_NS: u64 = 10_000_000_000;
/// How often they are asked only whether they answer (one run of the tool
/// each): a daemon that died is in a window within about this long, and
/// the brain moves the shares it served.
const MPS_LIVE_NS: u64 = 1_000_000_000;

impl Node {
    /// Starts collecting with whatever this host allows, noting what it lacks.
    pub fn new(cfg: NodeConfig) -> Node {
        let mut notes = Vec::new();
        let probes = if cfg.bpf {
            match Probes::load(cfg.launch_probes) {
                Ok(p) => Some(p),
                Err(e) => {
                    notes.push(format!("running without eBPF probes: {e}"));
                    None
                }
            }
        } else {
            notes.push("running without eBPF probes: disabled by configuration".into());
            None
        };
        let gpus = match Gpus::init() {
            Ok(g) => Some(g),
            Err(e) => {
                notes.push(format!("running without NVML: {e}"));
                None
            }
        };
        if cfg.mps_start {
            for m in &cfg.mps {
                if let Err(e) = m.ensure_daemon() {
                    notes.push(format!("MPS control daemon not started: {e}"));
                }
            }
        }
        let xid_inbox = gpus.as_ref().and_then(|_| {
            let inbox = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            match crate::nvml::watch_xids(inbox.clone()) {
                Ok(_) => Some(inbox),
                Err(why) => {
                    notes.push(format!("running without XID events: {why}"));
                    None
                }
            }
        });
        let segments = cfg.segment_dir.clone().map(SegmentDir::new);
        let mut serving = crate::serving::Serving::new(cfg.serving.clone());
        let replicas = cfg.exec.clone().map(|mut e| {
            e.mps_pipe_dirs = cfg.mps.iter().map(|m| m.pipe_dir.clone()).collect();
            let r = crate::replicas::Replicas::open(e);
            notes.extend(r.notes.iter().cloned());
            // Replicas found again are scraped again.
            for rep in r.map.values() {
                if let Some(url) = rep.metrics_url() {
                    serving.ensure(crate::serving::Target {
                        url,
                        pid: Some(rep.pid()),
                    });
                }
            }
            r
        });
        let resolver = cgroup::v2_root().map(cgroup::Resolver::new);
        let mut node = Node {
            cfg,
            probes,
            gpus,
            segments,
            resolver,
            procs: BTreeMap::new(),
            last_gpus: Vec::new(),
            notes,
            counters: Counters::default(),
            libcuda_seen: HashSet::new(),
            seq: 0,
            xid_inbox,
            xid_counts: BTreeMap::new(),
            last_xid: BTreeMap::new(),
            mps_sent: Vec::new(),
            mps_next_poll_ns: 0,
            mps_next_live_ns: 0,
            mps_dirty: false,
            serving,
            replicas,
        };
        let mut initial: Vec<PathBuf> = node.cfg.libcuda.clone();
        if let Some(p) = find_on_loader_path("libcuda.so.1") {
            initial.push(p);
        }
        for p in initial {
            node.probe_libcuda(p);
        }
        node
    }

    /// GPUs the node knows: NVML's, else one per configured MPS daemon.
    fn gpu_count(&self) -> u32 {
        match &self.gpus {
            Some(g) => g.count(),
            None => self.cfg.mps.len() as u32,
        }
    }

    /// GPU `gpu`'s MPS state, asked of its control daemon; `None` where
    /// the agent drives no daemon for it.
    pub fn mps_state(&self, gpu: u32) -> Option<MpsState> {
        let c = match self.cfg.mps.as_slice() {
            [] => return None,
            [one] => one,
            many => many.get(gpu as usize)?,
        };
        if !c.running() {
            return Some(MpsState::default());
        }
        Some(MpsState {
            daemon: true,
            default_percent: c.default_percentage().ok(),
            servers: c
                .servers()
                .unwrap_or_default()
                .into_iter()
                .map(|s| MpsServer {
                    pid: s.pid,
                    percent: s.percent,
                    clients: s.clients,
                })
                .collect(),
        })
    }

    /// The GPUs' MPS states now, for the `Hello` (and remembered as sent).
    pub fn mps_states(&mut self) -> Vec<Option<MpsState>> {
        let states: Vec<Option<MpsState>> =
            (0..self.gpu_count()).map(|g| self.mps_state(g)).collect();
        self.mps_sent = states.clone();
        states
    }

    /// The MPS states that changed since they were last sent, when it is
    /// time to look (every [`MPS_POLL_NS`], or after an MPS command).
    fn mps_changes(&mut self, now_unix_ns: u64) -> Vec<GpuMps> {
        if self.cfg.mps.is_empty() {
            return Vec::new();
        }
        if !self.mps_dirty && now_unix_ns >= self.mps_next_live_ns {
            self.mps_next_live_ns = now_unix_ns + MPS_LIVE_NS;
            let was = |g: usize| self.mps_sent.get(g).cloned().flatten().map(|s| s.daemon);
            let changed = match self.cfg.mps.as_slice() {
                [one] => {
                    let up = one.running();
                    (0..self.gpu_count() as usize).any(|g| was(g).is_some_and(|d| d != up))
                }
                many => many
                    .iter()
                    .enumerate()
                    .any(|(g, c)| was(g).is_some_and(|d| d != c.running())),
            };
            self.mps_dirty = changed;
        }
        if !self.mps_dirty && now_unix_ns < self.mps_next_poll_ns {
            return Vec::new();
        }
        self.mps_dirty = false;
        self.mps_next_poll_ns = now_unix_ns + MPS_POLL_NS;
        let mut out = Vec::new();
        for g in 0..self.gpu_count() {
            let now = self.mps_state(g);
            if self.mps_sent.len() <= g as usize {
                self.mps_sent.resize(g as usize + 1, None);
            }
            if now != self.mps_sent[g as usize] {
                self.mps_sent[g as usize] = now.clone();
                if let Some(state) = now {
                    out.push(GpuMps { gpu: g, state });
                }
            }
        }
        out
    }

    /// Whether NVML reports XID errors to this node.
    pub fn has_xid_events(&self) -> bool {
        self.xid_inbox.is_some()
    }

    pub fn has_probes(&self) -> bool {
        self.probes.is_some()
    }

    pub fn gpus(&self) -> Option<&Gpus> {
        self.gpus.as_ref()
    }

    /// Skipped shim segments, by reason.
    pub fn segments_skipped(&self) -> BTreeMap<&'static str, u64> {
        self.segments
            .as_ref()
            .map(|s| s.skipped.clone())
            .unwrap_or_default()
    }

    fn probe_libcuda(&mut self, path: PathBuf) {
        let Some(probes) = &mut self.probes else {
            return;
        };
        if !self.libcuda_seen.insert(path.clone()) {
            return;
        }
        match probes.attach_libcuda(&path) {
            Ok(a) if !a.already => self.counters.libcuda_attached += 1,
            Ok(_) => {}
            Err(e) => self.notes.push(format!("{e}")),
        }
    }

    fn proc_entry(&mut self, pid: u32) -> &mut Proc {
        self.procs.entry(pid).or_insert_with(|| Proc {
            pid,
            ..Proc::default()
        })
    }

    /// Fills in where a process runs, from its cgroup id or `/proc`.
    fn attribute(&mut self, pid: u32, cgroup_id: u64) {
        let path = match cgroup::path_of(pid) {
            Some(p) => Some(p),
            None => self.resolver.as_mut().and_then(|r| r.path(cgroup_id)),
        };
        let Some(path) = path else {
            self.counters.vanished += 1;
            return;
        };
        let attribution = match cgroup::attribute(&path) {
            Ok(a) => a,
            Err(_) => {
                self.counters.cgroup_errors += 1;
                Attribution::default()
            }
        };
        let p = self.proc_entry(pid);
        p.cgroup_path = Some(path);
        p.attribution = attribution;
    }

    /// Gathers what changed and returns it as the next window.
    pub fn tick(&mut self, now_unix_ns: u64, duration_ns: u64) -> TelemetryWindow {
        // 1. The probes' events.
        let mut events = Vec::new();
        if let Some(probes) = &mut self.probes {
            probes.drain(|e| events.push(e));
        }
        self.counters.events += events.len() as u64;
        for e in events {
            match e {
                Event::CuInit {
                    pid,
                    cgroup_id,
                    comm,
                    ..
                } => {
                    let p = self.proc_entry(pid);
                    p.sources.ebpf = true;
                    p.comm = comm;
                    p.cgroup_id = cgroup_id;
                    self.attribute(pid, cgroup_id);
                }
                Event::Exit { pid, .. } => {
                    if let Some(p) = self.procs.get_mut(&pid) {
                        p.exited = true;
                    }
                }
                Event::Exec { .. } | Event::Fork { .. } => {}
            }
        }
        if let Some(probes) = &self.probes {
            for (pid, c) in probes.all_counters() {
                if let Some(p) = self.procs.get_mut(&pid) {
                    p.ebpf = Some(c);
                    p.sources.ebpf = true;
                }
            }
        }
        // 2. The shim's segments.
        let mut shimmed = Vec::new();
        if let Some(dir) = &mut self.segments {
            dir.scan();
            for seg in dir.segments() {
                let s = seg.segment();
                let h = &s.header;
                let st = &s.stats;
                let pid = h.pid.load(Relaxed);
                shimmed.push((
                    pid,
                    shm::read_str(&h.cgroup),
                    ShimTotals {
                        launches: st.launches(),
                        gpu_ns: st.estimated_gpu_ns.load(Relaxed),
                        occupancy_weighted_sm_ns: st.occupancy_weighted_sm_ns.load(Relaxed),
                        bytes_in_use: st.bytes_in_use.load(Relaxed),
                        memory_kinds: st.memory_kinds.each_ref().map(|k| k.load(Relaxed)),
                        memory_limit: st.memory_limit.load(Relaxed),
                        refused_allocations: st.refused_allocations.load(Relaxed),
                        refused_bytes: st.refused_bytes.load(Relaxed),
                        syncs: st.syncs.load(Relaxed),
                        sync_wait_ns: st.sync_wait_ns.load(Relaxed),
                        mps_percent: h.mps_percent_milli.load(Relaxed) as f32 / 1000.0,
                        ns_pid: h.ns_pid.load(Relaxed),
                        kernel_hist: st.kernel_hist(),
                        sync_hist: st.sync_hist(),
                    },
                ));
            }
        }
        for (pid, cgroup_path, totals) in shimmed {
            let new = !self.procs.contains_key(&pid);
            let p = self.proc_entry(pid);
            p.sources.shim = true;
            p.shim = Some(totals);
            if new || p.cgroup_path.is_none() {
                match cgroup::attribute(&cgroup_path) {
                    Ok(a) => p.attribution = a,
                    Err(_) => self.counters.cgroup_errors += 1,
                }
                let p = self.proc_entry(pid);
                p.cgroup_path = Some(cgroup_path);
                if p.comm.is_empty() {
                    p.comm = comm_of(pid).unwrap_or_default();
                }
            }
        }
        // 3. NVML.
        let samples = self.gpus.as_ref().map(Gpus::sample).unwrap_or_default();
        let mut maps_to_scan = Vec::new();
        for g in &samples {
            for (&pid, &mem) in &g.processes {
                let new = !self.procs.contains_key(&pid);
                let p = self.proc_entry(pid);
                p.sources.nvml = true;
                p.gpu = Some(g.index);
                p.nvml_memory_bytes = mem;
                p.sm_pct = g.process_sm_pct.get(&pid).copied();
                if new {
                    p.comm = comm_of(pid).unwrap_or_default();
                    if !p.sources.ebpf {
                        maps_to_scan.push(pid);
                    }
                }
            }
        }
        for pid in maps_to_scan {
            // Seen by NVML before the probes saw it: probe the libcuda it
            // maps, so the next process using that file is seen from cuInit.
            for lib in libcuda_of(pid) {
                self.probe_libcuda(lib);
            }
            if self
                .procs
                .get(&pid)
                .is_some_and(|p| p.cgroup_path.is_none())
            {
                self.attribute(pid, 0);
            }
        }
        self.last_gpus = samples;

        // 4. Device faults.
        let xids: Vec<crate::nvml::Xid> = self
            .xid_inbox
            .as_ref()
            .map(|i| std::mem::take(&mut *i.lock().unwrap_or_else(|e| e.into_inner())))
            .unwrap_or_default();
        for x in &xids {
            *self.xid_counts.entry((x.gpu, x.xid)).or_default() += 1;
            self.last_xid.insert(x.gpu, x.xid);
        }

        // 5. The window.
        let keyframe = self.seq.is_multiple_of(10);
        let gpus: Vec<GpuWindow> = self
            .last_gpus
            .iter()
            .map(|g| GpuWindow {
                index: g.index,
                utilization: g.utilization_pct.unwrap_or(0) as f32 / 100.0,
                sm_utilization: self
                    .procs
                    .values()
                    .filter(|p| p.gpu == Some(g.index))
                    .filter_map(|p| p.sm_pct)
                    .sum::<u32>()
                    .min(100) as f32
                    / 100.0,
                memory_used_bytes: g.memory_used_bytes.unwrap_or(0),
                power_mw: g.power_mw.unwrap_or(0),
                temperature_c: g.temperature_c.unwrap_or(0),
                xids: xids
                    .iter()
                    .filter(|x| x.gpu == g.index)
                    .map(|x| x.xid.min(u32::MAX as u64) as u32)
                    .collect(),
            })
            .collect();
        let mut processes = Vec::new();
        for p in self.procs.values_mut() {
            processes.push(window_of(p, keyframe));
        }
        // 6. Processes that exited are reported once more, then forgotten.
        let gone: Vec<u32> = self
            .procs
            .values()
            .filter(|p| p.exited || (!p.sources.ebpf && !alive(p.pid)))
            .map(|p| p.pid)
            .collect();
        for pid in gone {
            self.procs.remove(&pid);
            if let Some(probes) = &mut self.probes {
                probes.forget(pid);
            }
        }
        let mps = self.mps_changes(now_unix_ns);
        let w = TelemetryWindow {
            node: self.cfg.node.clone(),
            seq: self.seq,
            start_unix_ns: now_unix_ns.saturating_sub(duration_ns),
            duration_ns,
            gpus,
            processes,
            dropped_windows: 0,
            mps,
            replicas: self.replica_windows(),
            serving: self.serving.take_windows(now_unix_ns),
        };
        self.seq += 1;
        self.counters.windows += 1;
        w
    }

    /// Moves the replicas along (see [`crate::replicas::Replicas::tick`]),
    /// from what their own metrics say; a replica gone is scraped no more.
    fn replica_windows(&mut self) -> Vec<vagus_proto::wire::ReplicaWindow> {
        let Some(reps) = &mut self.replicas else {
            return Vec::new();
        };
        let serving = &self.serving;
        let windows = reps.tick(std::time::Instant::now(), |r| {
            let e = r.metrics_url().and_then(|u| serving.get(&u));
            crate::replicas::Load {
                in_flight: e.and_then(|e| {
                    let last = e.last.as_ref()?;
                    Some(last.queue.unwrap_or(0.0) + last.running?)
                }),
                served: e.and_then(|e| e.totals.requests).unwrap_or(0),
            }
        });
        for w in &windows {
            if w.state == vagus_proto::wire::ReplicaState::Exited
                && let Some(p) = w.port
            {
                self.serving
                    .remove(&format!("http://127.0.0.1:{p}/metrics"));
            }
        }
        windows
    }

    /// What the node knows now, for operators and tests.
    pub fn snapshot(&self) -> serde_json::Value {
        let procs: Vec<serde_json::Value> = self
            .procs
            .values()
            .map(|p| {
                serde_json::json!({
                    "pid": p.pid,
                    "comm": p.comm,
                    "gpu": p.gpu,
                    "sources": {"ebpf": p.sources.ebpf, "shim": p.sources.shim, "nvml": p.sources.nvml},
                    "cgroup": p.cgroup_path,
                    "pod_uid": p.attribution.pod_uid,
                    "container_id": p.attribution.container_id,
                    "qos": p.attribution.qos,
                    "memory_bytes": p.memory_bytes(),
                    "sm_percent": p.sm_pct,
                    "ebpf": p.ebpf.map(|c| serde_json::json!({
                        "cuinit_calls": c.cuinit_calls, "contexts_created": c.ctx_creates,
                        "contexts_destroyed": c.ctx_destroys, "modules_loaded": c.module_loads,
                        "allocations": c.allocs, "allocated_bytes": c.alloc_bytes,
                        "frees": c.frees, "freed_bytes": c.freed_bytes,
                        "syncs": c.syncs, "sync_wait_ns": c.sync_ns, "launches": c.launches,
                    })),
                    "shim": p.shim.as_ref().map(|s| serde_json::json!({
                        "launches": s.launches, "gpu_ns": s.gpu_ns,
                        "occupancy_weighted_sm_ns": s.occupancy_weighted_sm_ns,
                        "bytes_in_use": s.bytes_in_use, "syncs": s.syncs,
                        "sync_wait_ns": s.sync_wait_ns, "mps_percent": s.mps_percent,
                        "memory": shm::MEMORY_KINDS.iter().zip(s.memory_kinds)
                            .map(|(k, b)| (k.to_string(), serde_json::json!(b)))
                            .collect::<serde_json::Map<_, _>>(),
                        "memory_limit": (s.memory_limit > 0).then_some(s.memory_limit),
                        "refused_allocations": s.refused_allocations,
                        "refused_bytes": s.refused_bytes,
                    })),
                })
            })
            .collect();
        let gpus: Vec<serde_json::Value> = self
            .last_gpus
            .iter()
            .map(|g| {
                serde_json::json!({
                    "index": g.index, "uuid": g.uuid, "model": g.model,
                    "utilization_pct": g.utilization_pct,
                    "memory_used_bytes": g.memory_used_bytes,
                    "memory_total_bytes": g.memory_total_bytes,
                    "power_mw": g.power_mw, "energy_mj": g.energy_mj,
                    "temperature_c": g.temperature_c,
                    "processes": g.processes.keys().collect::<Vec<_>>(),
                })
            })
            .collect();
        let mps: Vec<serde_json::Value> = self
            .cfg
            .mps
            .iter()
            .map(|m| {
                let servers = m.servers().map(|list| {
                    list.iter()
                        .map(|s| serde_json::json!({"pid": s.pid, "percent": s.percent, "clients": s.clients}))
                        .collect::<Vec<_>>()
                });
                serde_json::json!({
                    "pipe_dir": m.pipe_dir,
                    "default_percent": m.default_percentage().ok(),
                    "servers": servers.as_ref().ok(),
                    "error": servers.as_ref().err().map(|e| e.to_string()),
                })
            })
            .collect();
        serde_json::json!({
            "node": self.cfg.node,
            "mps": mps,
            "serving": self.serving.snapshot(),
            "replicas": self.replicas.as_ref().map(|r| r.snapshot()),
            "probes": self.probes.is_some(),
            "nvml": self.gpus.is_some(),
            "notes": self.notes,
            "windows": self.counters.windows,
            "segments_skipped": self.segments_skipped(),
            "cgroup_errors": self.counters.cgroup_errors,
            "vanished": self.counters.vanished,
            "libcuda_attached": self.counters.libcuda_attached,
            "xid_errors": self.xid_counts.iter().map(|((gpu, xid), n)| serde_json::json!({"gpu": gpu, "xid": xid, "count": n})).collect::<Vec<_>>(),
            "gpus": gpus,
            "processes": procs,
        })
    }

    /// Carries out one of the brain's commands.
    pub fn apply(&mut self, c: &Command) -> Outcome {
        if matches!(
            c.kind,
            CommandKind::SetMpsPercentage { .. }
                | CommandKind::StartMpsServer { .. }
                | CommandKind::StopMpsServer { .. }
        ) {
            // The next window reports what the daemon now says.
            self.mps_dirty = true;
        }
        let control = |pid: u32, f: &dyn Fn(&mut ControlValues)| -> Outcome {
            let Some(seg) = self.segments.as_ref().and_then(|d| d.of(pid)) else {
                return Outcome::Failed(format!("process {pid} has no shim segment on this node"));
            };
            let mut v = match seg.segment().control.read() {
                ControlRead::Valid(v) => v,
                _ => ControlValues::default(),
            };
            f(&mut v);
            match seg.set_control(v) {
                Ok(()) => Outcome::Applied,
                Err(e) => Outcome::Failed(e.to_string()),
            }
        };
        let mps = |gpu: u32| -> Result<&crate::mps::MpsControl, Outcome> {
            match self.cfg.mps.as_slice() {
                [] => Err(Outcome::Failed(
                    "no MPS control daemon is configured on this node".into(),
                )),
                [one] => Ok(one),
                many => many.get(gpu as usize).ok_or_else(|| {
                    Outcome::Failed(format!("no MPS control daemon is configured for GPU {gpu}"))
                }),
            }
        };
        fn done<T>(r: Result<T, crate::mps::MpsError>) -> Outcome {
            match r {
                Ok(_) => Outcome::Applied,
                Err(e) => Outcome::Failed(e.to_string()),
            }
        }
        match &c.kind {
            CommandKind::SetShimBudget { pid, budget_ppm } => {
                control(*pid, &|v| v.budget_ppm = *budget_ppm)
            }
            CommandKind::PauseProcess { pid, paused } => control(*pid, &|v| v.paused = *paused),
            // Server 0: the default for servers started from now on.
            CommandKind::SetMpsPercentage {
                gpu,
                server_pid,
                percent,
            } => match mps(*gpu) {
                Ok(m) if *server_pid == 0 => done(m.set_default_percentage(*percent)),
                Ok(m) => done(m.set_server_percentage(*server_pid, *percent)),
                Err(o) => o,
            },
            CommandKind::StartMpsServer { gpu, uid } => match mps(*gpu) {
                Ok(m) => done(m.ensure_daemon().and_then(|()| m.start_server(*uid))),
                Err(o) => o,
            },
            CommandKind::StopMpsServer { gpu, server_pid } => match mps(*gpu) {
                Ok(m) => done(m.shutdown_server(*server_pid)),
                Err(o) => o,
            },
            CommandKind::DrainGpu { .. } => Outcome::Failed(
                "this agent cannot apply DrainGpu yet: draining is not built".into(),
            ),
            CommandKind::StartReplica(spec) => {
                let Some(reps) = &mut self.replicas else {
                    return Outcome::Failed(
                        "this agent runs no replicas (started without --brain)".into(),
                    );
                };
                let out = reps.start(spec);
                if let Some(r) = reps.map.get(&spec.id)
                    && let Some(url) = r.metrics_url()
                {
                    self.serving.ensure(crate::serving::Target {
                        url,
                        pid: Some(r.pid()),
                    });
                }
                out
            }
            CommandKind::StopReplica { id, grace_ms } => match &mut self.replicas {
                Some(reps) => reps.stop(id, std::time::Duration::from_millis(*grace_ms)),
                None => Outcome::Applied,
            },
        }
    }
}

/// The process's window: what changed since the previous one.
fn window_of(p: &mut Proc, keyframe: bool) -> ProcessWindow {
    let first = p.windows == 0;
    p.windows += 1;
    let (launches, gpu_ns, occ_ns, kernel_hist, mut sync_hist) = match &p.shim {
        Some(s) => {
            let prev = p.prev_shim.as_ref();
            let d = |now: u64, then: Option<u64>| now.saturating_sub(then.unwrap_or(0));
            let out = (
                d(s.launches, prev.map(|x| x.launches)),
                d(s.gpu_ns, prev.map(|x| x.gpu_ns)),
                d(
                    s.occupancy_weighted_sm_ns,
                    prev.map(|x| x.occupancy_weighted_sm_ns),
                ),
                shim_hist_delta(&s.kernel_hist, prev.map(|x| &x.kernel_hist)),
                shim_hist_delta(&s.sync_hist, prev.map(|x| &x.sync_hist)),
            );
            p.prev_shim = Some(s.clone());
            out
        }
        None => (0, 0, 0, Vec::new(), Vec::new()),
    };
    if sync_hist.is_empty()
        && let Some(c) = &p.ebpf
    {
        sync_hist = log2_hist_delta(&c.sync_hist, p.prev_sync_hist.as_ref());
        p.prev_sync_hist = Some(c.sync_hist);
    }
    let identity = first || keyframe;
    let a = &p.attribution;
    ProcessWindow {
        pid: p.pid,
        ns_pid: p.shim.as_ref().map(|s| s.ns_pid).unwrap_or(p.pid),
        gpu: p.gpu.unwrap_or(0),
        cgroup_id: p.cgroup_id,
        container: if identity {
            a.container_id.clone().unwrap_or_default()
        } else {
            String::new()
        },
        pod: if identity {
            a.pod_uid.clone().unwrap_or_default()
        } else {
            String::new()
        },
        namespace: String::new(),
        launches,
        gpu_time_ns: gpu_ns,
        occupancy_weighted_sm_ns: occ_ns,
        memory_bytes: p.memory_bytes(),
        mps_percent: p.shim.as_ref().map(|s| s.mps_percent).unwrap_or(0.0),
        shimmed: p.shim.is_some(),
        kernel_hist,
        sync_hist,
        memory: p.shim.as_ref().map(|s| vagus_proto::wire::ProcessMemory {
            in_use: s.memory_kinds.to_vec(),
            limit: s.memory_limit,
            refused_allocations: s.refused_allocations,
            refused_bytes: s.refused_bytes,
        }),
    }
}

fn serialize(h: &Histogram<u64>) -> Vec<u8> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = V2Serializer::new().serialize(h, &mut out);
    out
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 2).expect("valid bounds")
}

/// The shim's log buckets added since `prev`, as an HdrHistogram of ns.
fn shim_hist_delta(now: &[u64; HIST_BUCKETS], prev: Option<&[u64; HIST_BUCKETS]>) -> Vec<u8> {
    let mut h = new_hist();
    for (b, &n) in now.iter().enumerate() {
        let d = n.saturating_sub(prev.map(|p| p[b]).unwrap_or(0));
        if d > 0 {
            let _ = h.record_n(shm::bucket_floor(b).max(1), d);
        }
    }
    serialize(&h)
}

/// The probes' log2 buckets added since `prev`, as an HdrHistogram of ns.
fn log2_hist_delta(now: &[u64; SYNC_BUCKETS], prev: Option<&[u64; SYNC_BUCKETS]>) -> Vec<u8> {
    let mut h = new_hist();
    for (b, &n) in now.iter().enumerate() {
        let d = n.saturating_sub(prev.map(|p| p[b]).unwrap_or(0));
        if d > 0 {
            let _ = h.record_n(1u64 << b, d);
        }
    }
    serialize(&h)
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn comm_of(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// The `libcuda` files a process maps, reached through its root (so a
/// container's library is found from the host).
pub fn libcuda_of(pid: u32) -> Vec<PathBuf> {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = Vec::new();
    for line in maps.lines() {
        let Some(path) = line.split_whitespace().nth(5) else {
            continue;
        };
        let name = path.rsplit('/').next().unwrap_or("");
        let is_cuda = name.starts_with("libcuda.so") || name.starts_with("libgpusim_cuda");
        if is_cuda && path.starts_with('/') {
            let p = PathBuf::from(format!("/proc/{pid}/root{path}"));
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// Where the dynamic loader would find `name` for a process started now:
/// `LD_LIBRARY_PATH`, then the usual directories.
pub fn find_on_loader_path(name: &str) -> Option<PathBuf> {
    let env = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
    env.split(':')
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .chain(
            [
                "/usr/lib/x86_64-linux-gnu",
                "/usr/lib64",
                "/usr/lib",
                "/usr/local/nvidia/lib64",
                "/usr/local/cuda/lib64",
            ]
            .map(PathBuf::from),
        )
        .map(|d| d.join(name))
        .find(|p| p.exists())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vagus_proto::shm::{MAGIC, SEGMENT_BYTES, VERSION};

    /// A segment file as a shim would leave it, for process `pid`.
    fn segment_file(dir: &std::path::Path, pid: u32) -> PathBuf {
        let mut b = vec![0u8; SEGMENT_BYTES];
        b[..8].copy_from_slice(&MAGIC.to_le_bytes());
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(SEGMENT_BYTES as u32).to_le_bytes());
        b[16..20].copy_from_slice(&pid.to_le_bytes());
        let p = dir.join(format!("{pid}.shm"));
        std::fs::write(&p, b).unwrap();
        p
    }

    #[test]
    fn budgets_and_pauses_reach_the_control_block() {
        let dir = std::env::temp_dir().join(format!("vagus-node-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let me = std::process::id();
        let path = segment_file(&dir, me);
        let mut node = Node::new(NodeConfig {
            node: "n".into(),
            segment_dir: Some(dir.clone()),
            libcuda: vec![],
            bpf: false,
            launch_probes: false,
            mps: vec![],
            mps_start: false,
            serving: vec![],
            exec: None,
        });
        assert!(node.notes.iter().any(|n| n.contains("without eBPF")));
        let w = node.tick(1_000_000_000, 100_000_000);
        assert!(w.processes.iter().any(|p| p.pid == me), "{w:?}");
        let set = |kind| Command { id: 1, kind };
        assert_eq!(
            node.apply(&set(CommandKind::SetShimBudget {
                pid: me,
                budget_ppm: 250_000
            })),
            Outcome::Applied
        );
        assert_eq!(
            node.apply(&set(CommandKind::PauseProcess {
                pid: me,
                paused: true
            })),
            Outcome::Applied
        );
        let seg = crate::segments::SegmentFile::open_read_only(&path).unwrap();
        assert_eq!(
            seg.segment().control.read(),
            ControlRead::Valid(ControlValues {
                budget_ppm: 250_000,
                paused: true,
                ..ControlValues::default()
            }),
            "the budget stays when the pause is set"
        );
        let Outcome::Failed(why) = node.apply(&set(CommandKind::SetShimBudget {
            pid: 1,
            budget_ppm: 1,
        })) else {
            panic!("no segment for pid 1");
        };
        assert!(why.contains("process 1 has no shim segment"), "{why}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_process_gone_mid_read_is_counted_and_skipped() {
        let mut node = Node::new(NodeConfig {
            node: "n".into(),
            segment_dir: None,
            libcuda: vec![],
            bpf: false,
            launch_probes: false,
            mps: vec![],
            mps_start: false,
            serving: vec![],
            exec: None,
        });
        // No such process, and no cgroup with this id.
        node.attribute(u32::MAX - 1, u64::MAX - 1);
        assert_eq!(node.counters.vanished, 1);
        assert!(!node.procs.contains_key(&(u32::MAX - 1)));
        // The node goes on.
        node.tick(1, 1);
        assert_eq!(node.counters.windows, 1);
    }
}
