//! The decision core: one owner of the cluster state, driven by requests
//! and a clock the caller passes in (milliseconds of any epoch). No I/O.
//!
//! A request goes down the decision tree:
//! 1. quota and cost limits, and whether any GPU could ever hold it
//!    (else **reject**);
//! 2. a compatible MPS slot, or an idle GPU whose server is set up for the
//!    request's share (**direct**, path A);
//! 3. a GPU whose server has another share size, reconfigured where the
//!    node's safety gate allows it (**reconfigure**, with a plan);
//! 4. moving movable workloads of no higher priority elsewhere, where the
//!    circuit breaker allows moves (**repack**, path B, with a plan);
//! 5. evicting preemptible lower-priority workloads into the queue
//!    (**preempt**);
//! 6. otherwise the workload waits in the priority queue, and, when
//!    configured, a node of the shape it needs is asked for (**scale-out**
//!    or **queue**, path C).
//!
//! Removals and operator controls free capacity; the queue is retried then,
//! most important first.

mod plans;
mod scan;
mod scheduler;
mod shadow;

pub use self::scheduler::Fitness;

use self::scan::{Ask, Cand, Hot, NodeHot};
use crate::classify::Class;
use crate::config::Config;
use crate::explain::{Candidate, Decision, NodeShape, Path, Plan, Step};
use crate::fit::{Fit, Room};
use crate::manifest;
use crate::mix::{Mix, Shape};
use crate::score::Slot;
use crate::spec;
use crate::state::{Node, NodeLoad, NodeSpec, Placed, Queued, Resident, check_id};
use crate::workload::{Invalid, Priority, Profile};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use utoipa::ToSchema;

/// Why a request was not taken at all (nothing changed).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Invalid(#[from] Invalid),
    #[error("{0} already exists")]
    Conflict(String),
    #[error("{0} not found")]
    NotFound(String),
    /// It does not fit where it was asked to go (an outside scheduler's
    /// choice of node).
    #[error("{0}")]
    NoRoom(String),
}

/// Operator controls.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Control {
    /// Stop automatic MPS reconfiguration (and repacks) on every node.
    PauseReconfiguration {},
    ResumeReconfiguration {},
    /// No new placements on the node.
    Cordon {
        node: String,
    },
    Uncordon {
        node: String,
    },
    /// Never move or preempt the workload.
    Pin {
        workload: String,
    },
    Unpin {
        workload: String,
    },
    /// Put the workload on this node (and GPU), bypassing the score but not
    /// capacity; it is pinned there.
    Override {
        workload: String,
        node: String,
        #[serde(default)]
        gpu: Option<u32>,
    },
    /// Reconfiguration allowed whatever the load in [from_ms, to_ms).
    Maintenance {
        node: String,
        from_ms: u64,
        to_ms: u64,
    },
    /// The share of its model's requests the workload's replica gets
    /// (relative to its model's other replicas; 0: none, those it holds
    /// finish). Unset: the default, 100.
    Weight {
        workload: String,
        weight: u32,
    },
    /// Open the circuit breaker: no moves until reset.
    TripBreaker {},
    ResetBreaker {},
}

impl Control {
    /// Checks names and numbers against [`crate::rules`].
    pub fn validate(&self) -> Result<(), Invalid> {
        use crate::rules::*;
        match self {
            Control::Cordon { node } | Control::Uncordon { node } => {
                DNS_SUBDOMAIN.check("node", node)
            }
            Control::Pin { workload } | Control::Unpin { workload } => {
                DNS_LABEL.check("workload", workload)
            }
            Control::Weight { workload, weight } => {
                DNS_LABEL.check("workload", workload)?;
                ROUTE_WEIGHT.check("weight", *weight as u64)
            }
            Control::Override {
                workload,
                node,
                gpu,
            } => {
                DNS_LABEL.check("workload", workload)?;
                DNS_SUBDOMAIN.check("node", node)?;
                gpu.map_or(Ok(()), |g| GPU_INDEX.check("gpu", g as u64))
            }
            Control::Maintenance {
                node,
                from_ms,
                to_ms,
            } => {
                DNS_SUBDOMAIN.check("node", node)?;
                TIME_MS.check("from_ms", *from_ms)?;
                TIME_MS.check("to_ms", *to_ms)?;
                if to_ms <= from_ms {
                    return Err(Invalid::new("to_ms", "must be after from_ms"));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn target(&self) -> String {
        match self {
            Control::Cordon { node }
            | Control::Uncordon { node }
            | Control::Maintenance { node, .. } => node.clone(),
            Control::Pin { workload }
            | Control::Unpin { workload }
            | Control::Weight { workload, .. }
            | Control::Override { workload, .. } => workload.clone(),
            _ => String::new(),
        }
    }
}

pub struct Core {
    cfg: Config,
    nodes: Vec<Node>,
    index: HashMap<String, usize>,
    /// Boxed: the table stays small when it grows (a placement is large).
    placed: HashMap<String, Box<Placed>>,
    queue: BTreeMap<(Priority, u64), Queued>,
    queued: HashMap<String, (Priority, u64)>,
    usage: HashMap<String, f64>,
    paused: bool,
    breaker_tripped: bool,
    breaker_open_until: u64,
    moves: VecDeque<u64>,
    mix: Mix,
    seq: u64,
    qseq: u64,
    best_tpw: f64,
    /// GPU model names, numbered (1, 2, …) for fast comparison.
    models: HashMap<String, u32>,
    /// Model id → nodes holding replicas of it (anti-affinity).
    replica_nodes: HashMap<String, HashMap<usize, u32>>,
    hot: Vec<Hot>,
    node_hot: Vec<NodeHot>,
    /// Per node, its GPUs as fragmentation reads them.
    summaries: Vec<crate::mix::Summary>,
    /// Restored placements whose node is not known yet (a restart before
    /// the node's agent reconnects): their names stay taken, their tenants
    /// charged, and they are bound when the node appears.
    waiting: BTreeMap<String, Placed>,
}

impl Core {
    pub fn new(cfg: Config) -> Result<Core, Invalid> {
        cfg.validate()?;
        let mix = Self::initial_mix(&cfg);
        Ok(Core {
            cfg,
            nodes: Vec::new(),
            index: HashMap::new(),
            placed: HashMap::new(),
            queue: BTreeMap::new(),
            queued: HashMap::new(),
            usage: HashMap::new(),
            paused: false,
            breaker_tripped: false,
            breaker_open_until: 0,
            moves: VecDeque::new(),
            mix,
            seq: 0,
            qseq: 0,
            best_tpw: spec::best_tflops_per_watt(),
            models: HashMap::new(),
            replica_nodes: HashMap::new(),
            hot: Vec::new(),
            node_hot: Vec::new(),
            summaries: Vec::new(),
            waiting: BTreeMap::new(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The configured mix (fixed), or one learned from requests that
    /// starts from the share grid (or the classes' shares without a grid)
    /// at the configured CPU per GPU.
    fn initial_mix(cfg: &Config) -> Mix {
        let (prior, learning) = if cfg.mix.is_empty() {
            let mut shares: Vec<u32> = if cfg.classes.grid.is_empty() {
                cfg.classes.rules.iter().map(|r| r.share_pct).collect()
            } else {
                cfg.classes.grid.clone()
            };
            shares.sort();
            shares.dedup();
            let prior = shares
                .into_iter()
                .map(|sh| {
                    let cpu = cfg.cpu_per_gpu_milli * sh as u64 / 100;
                    Shape::new(cpu, 1, sh, Vec::new())
                })
                .collect();
            (prior, true)
        } else {
            (cfg.mix.clone(), false)
        };
        Mix::new(prior, learning, cfg.mps_pools, cfg.cpu_need_by_size)
    }

    /// Counts a request's shape in a learning mix; when that changes the
    /// typical shapes, every node's fragmentation is measured again.
    fn learn(&mut self, p: &Profile, share: u32) {
        let shape = Shape::new(p.cpu_milli, p.gpus(), share, p.accepted_models.clone());
        if self.mix.observe(shape) {
            self.rebuild_hot();
        }
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.index.get(name).map(|&i| &self.nodes[i])
    }

    pub fn placement(&self, id: &str) -> Option<&Placed> {
        self.placed.get(id).map(|p| &**p)
    }

    pub fn placements(&self) -> impl Iterator<Item = &Placed> {
        self.placed.values().map(|p| &**p)
    }

    pub fn queued(&self) -> impl Iterator<Item = &Queued> {
        self.queue.values()
    }

    pub fn queued_workload(&self, id: &str) -> Option<&Queued> {
        self.queued.get(id).and_then(|k| self.queue.get(k))
    }

    /// Restored placements waiting for their node to be known, by name.
    pub fn waiting(&self) -> impl Iterator<Item = &Placed> {
        self.waiting.values()
    }

    pub fn waiting_workload(&self, id: &str) -> Option<&Placed> {
        self.waiting.get(id)
    }

    fn known(&self, id: &str) -> bool {
        self.placed.contains_key(id)
            || self.queued.contains_key(id)
            || self.waiting.contains_key(id)
    }

    /// The last decision's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Continues numbering decisions after `seq` (a restart, after the
    /// last decision its trail recorded).
    pub fn resume_after(&mut self, seq: u64) {
        self.seq = self.seq.max(seq);
    }

    pub fn reconfiguration_paused(&self) -> bool {
        self.paused
    }

    /// GPU-hours charged to `tenant` now.
    pub fn usage(&self, tenant: &str) -> f64 {
        self.usage.get(tenant).copied().unwrap_or(0.0)
    }

    /// Adds a node or updates its declaration; placements stay. A GPU that
    /// holds workloads cannot disappear.
    pub fn upsert_node(&mut self, spec: &NodeSpec) -> Result<(), Invalid> {
        spec.validate()?;
        let mut fresh = Node::from_spec(spec);
        for g in &mut fresh.gpus {
            let next = self.models.len() as u32 + 1;
            g.model_no = *self.models.entry(g.model.clone()).or_insert(next);
            if g.model_no == next {
                self.mix.model(next, &g.model);
            }
        }
        let Some(&i) = self.index.get(&spec.name) else {
            self.index.insert(spec.name.clone(), self.nodes.len());
            self.nodes.push(fresh);
            let first = self.hot.len();
            self.hot
                .extend(std::iter::repeat_n(Hot::default(), spec.gpus.len()));
            self.node_hot.push(NodeHot {
                first,
                count: spec.gpus.len(),
                ..NodeHot::default()
            });
            self.refresh(self.nodes.len() - 1);
            self.bind_waiting(&spec.name);
            return Ok(());
        };
        let old = &self.nodes[i];
        if let Some(g) = old.gpus[fresh.gpus.len().min(old.gpus.len())..]
            .iter()
            .find(|g| !g.workloads.is_empty())
        {
            return Err(Invalid::new(
                "gpus",
                &format!(
                    "GPU {} of {} holds workloads and cannot be removed",
                    g.index, spec.name
                ),
            ));
        }
        let used_cpu = old.cpu_milli - old.cpu_free;
        let used_mem = old.memory_mib - old.memory_free;
        if spec.cpu_milli < used_cpu || spec.memory_mib < used_mem {
            return Err(Invalid::new(
                "cpu_milli",
                &format!("{} has more CPU or memory placed than declared", spec.name),
            ));
        }
        let mut n = fresh;
        n.cpu_free = n.cpu_milli - used_cpu;
        n.memory_free = n.memory_mib - used_mem;
        n.healthy = old.healthy;
        n.cordoned = old.cordoned;
        n.down = old.down.clone();
        n.qps = old.qps;
        n.error_rate = old.error_rate;
        n.queue_depth = old.queue_depth;
        n.maintenance = old.maintenance;
        n.replicas = old.replicas.clone();
        for (g, o) in n.gpus.iter_mut().zip(&old.gpus) {
            g.pool = o.pool;
            g.exclusive = o.exclusive;
            g.mps_down = o.mps_down.clone();
            g.mps_conflict = o.mps_conflict;
            g.used_pct = o.used_pct;
            g.used_gb = o.used_gb;
            g.workloads = o.workloads.clone();
            g.residents = o.residents.clone();
            g.power_w = o.power_w;
            g.utilisation = o.utilisation;
        }
        self.nodes[i] = n;
        self.refresh(i);
        self.bind_waiting(&spec.name);
        Ok(())
    }

    /// Binds the restored placements that waited for node `name`; one
    /// whose GPUs the node does not have keeps waiting.
    fn bind_waiting(&mut self, name: &str) {
        let here: Vec<String> = self
            .waiting
            .values()
            .filter(|p| p.node == name)
            .map(|p| p.id.clone())
            .collect();
        for id in here {
            let p = self.waiting.remove(&id).expect("listed");
            if self.restore_on_node(p.clone()).is_err() {
                self.waiting.insert(id, p);
            }
        }
    }

    /// Takes a node's load and health from telemetry.
    pub fn observe(&mut self, node: &str, load: &NodeLoad) -> Result<(), Invalid> {
        let &i = self
            .index
            .get(node)
            .ok_or_else(|| Invalid::new("node", &format!("{node} is not a known node")))?;
        let n = &mut self.nodes[i];
        n.qps = load.qps;
        n.error_rate = load.error_rate;
        n.queue_depth = load.queue_depth;
        n.healthy = load.healthy;
        for &(g, util, power) in &load.gpus {
            if let Some(g) = n.gpus.get_mut(g as usize) {
                g.utilisation = Some(util.clamp(0.0, 1.0));
                g.power_w = Some(power.max(0.0));
            }
        }
        self.refresh(i);
        Ok(())
    }

    /// Node `name` is down (`why`: its agent went silent, a critical XID):
    /// nothing more is placed there, and every workload on it is placed
    /// again elsewhere, most important first, as a new request would be
    /// (preempting lower priorities, or waiting in the queue), keeping its
    /// tenant's charge, its pin and its weight. Each gets an `evacuate`
    /// decision, then its new one. A node already down: nothing.
    pub fn node_down(&mut self, name: &str, why: &str, now: u64) -> Result<Vec<Decision>, Refusal> {
        let i = self.node_index(name)?;
        if self.nodes[i].down.is_some() {
            return Ok(Vec::new());
        }
        self.nodes[i].down = Some(why.to_string());
        self.refresh(i);
        let evacuees: Vec<Placed> = self
            .placed
            .values()
            .filter(|p| p.node == name)
            .map(|p| (**p).clone())
            .collect();
        Ok(self.evacuate(evacuees, &format!("the node is down ({why})"), false, now))
    }

    /// GPU `gpu` of node `name` has no MPS control daemon serving (`why`):
    /// it takes no more shares, and each workload holding a share of it
    /// falls back to a GPU of its own (its request's share becomes 100),
    /// placed again as [`Core::node_down`] places them, most important
    /// first (the first may hold this GPU whole). `conflict`: its daemon
    /// answers but its configuration would hold clients under their
    /// shares, so nothing stays or goes there, a whole-GPU workload
    /// included. A shadow of a reconfiguration is left to its
    /// reconfiguration, which rolls back when the shadow fails. Already
    /// down: nothing.
    pub fn mps_down(
        &mut self,
        name: &str,
        gpu: u32,
        why: &str,
        conflict: bool,
        now: u64,
    ) -> Result<Vec<Decision>, Refusal> {
        let i = self.node_index(name)?;
        let Some(g) = self.nodes[i].gpus.get_mut(gpu as usize) else {
            return Err(Refusal::NotFound(format!("GPU {gpu} of node {name}")));
        };
        if g.mps_down.is_some() {
            return Ok(Vec::new());
        }
        g.mps_down = Some(why.to_string());
        g.mps_conflict = conflict;
        self.refresh(i);
        let evacuees: Vec<Placed> = self
            .placed
            .values()
            .filter(|p| {
                p.node == name
                    && p.gpus.contains(&gpu)
                    && (p.share_pct < 100 || conflict)
                    && p.shadow_of.is_none()
            })
            .map(|p| (**p).clone())
            .collect();
        let why = if conflict {
            format!(
                "its MPS configuration conflicts with its shares ({why}); on a GPU of its own elsewhere"
            )
        } else {
            format!("its MPS control daemon is down ({why}); on a GPU of its own")
        };
        Ok(self.evacuate(evacuees, &why, true, now))
    }

    /// GPU `gpu` of node `name` has its MPS daemon serving again: it takes
    /// shares again, and the queue is tried. What fell back to a whole GPU
    /// stays there (a rebalance may pack it again).
    pub fn mps_up(&mut self, name: &str, gpu: u32, now: u64) -> Result<Vec<Decision>, Refusal> {
        let i = self.node_index(name)?;
        let Some(g) = self.nodes[i].gpus.get_mut(gpu as usize) else {
            return Err(Refusal::NotFound(format!("GPU {gpu} of node {name}")));
        };
        if g.mps_down.take().is_none() {
            return Ok(Vec::new());
        }
        g.mps_conflict = false;
        self.refresh(i);
        let mut out = Vec::new();
        self.drain_queue(now, &mut out);
        Ok(out)
    }

    /// Takes `evacuees` off where they run (`why`) and places each again,
    /// most important first, as a new request would be (preempting lower
    /// priorities, or waiting in the queue), keeping its tenant's charge,
    /// its pin and its weight; `whole`: each now asks for a GPU of its own.
    /// Each gets an `evacuate` decision, then its new one.
    fn evacuate(
        &mut self,
        mut evacuees: Vec<Placed>,
        why: &str,
        whole: bool,
        now: u64,
    ) -> Vec<Decision> {
        evacuees.sort_by(|a, b| {
            (a.profile.priority, a.at_ms, &a.id).cmp(&(b.profile.priority, b.at_ms, &b.id))
        });
        // All off first: what they held is unusable anyway.
        for p in &evacuees {
            self.unbind(p, now, false);
            // The new placement charges it afresh.
            if let Some(u) = self.usage.get_mut(&p.profile.tenant) {
                *u = (*u - p.gpu_hours).max(0.0);
            }
        }
        let mut out = Vec::new();
        for mut p in evacuees {
            let mut d = Decision::new(
                self.next_seq(),
                now,
                &p.id,
                Path::Evacuate,
                format!(
                    "{} ({:?}) off {} GPU {:?}: {why}",
                    p.id, p.profile.priority, p.node, p.gpus
                ),
            );
            d.node = Some(p.node.clone());
            d.gpus = p.gpus.clone();
            d.share_pct = Some(p.share_pct);
            d.class = Some(p.class.clone());
            out.push(d);
            if whole {
                p.profile.share_pct = Some(100);
            }
            let class = self.cfg.classes.classify(&p.profile);
            self.decide(p.profile, class, now, true, &mut out);
            if let Some(q) = self.placed.get_mut(&p.id) {
                q.weight = p.weight;
                q.scaled = p.scaled;
            }
            if p.pinned {
                self.set_pinned(&p.id, true);
            }
        }
        out
    }

    /// Node `name` is back (its agent reports again): it takes work again,
    /// and what waits in the queue is tried, most important first.
    pub fn node_up(&mut self, name: &str, now: u64) -> Result<Vec<Decision>, Refusal> {
        let i = self.node_index(name)?;
        if self.nodes[i].down.take().is_none() {
            return Ok(Vec::new());
        }
        self.refresh(i);
        let mut out = Vec::new();
        self.drain_queue(now, &mut out);
        Ok(out)
    }

    /// Pins or unpins a placement and its residents; false if not placed.
    fn set_pinned(&mut self, workload: &str, on: bool) -> bool {
        let Some(p) = self.placed.get_mut(workload) else {
            return false;
        };
        p.pinned = on;
        let (node, gpus) = (self.index[&p.node], p.gpus.clone());
        for g in gpus {
            let g = &mut self.nodes[node].gpus[g as usize];
            if let Some(k) = g.workloads.iter().position(|w| w == workload) {
                g.residents[k].pinned = on;
            }
        }
        true
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Decides where `p` runs. The first decision is the request's; more
    /// follow for workloads a repack moved or a preemption queued.
    pub fn place(&mut self, p: Profile, now: u64) -> Result<Vec<Decision>, Refusal> {
        p.validate()?;
        check_id(&p.name)?;
        if self.known(&p.name) {
            return Err(Refusal::Conflict(format!("workload {}", p.name)));
        }
        let class = self.cfg.classes.classify(&p);
        self.learn(&p, class.share_pct);
        let mut out = Vec::new();
        self.decide(p, class, now, true, &mut out);
        Ok(out)
    }

    /// Places `p` as another replica the scaler adds: like [`Core::place`],
    /// marked `scaled` when placed; one that would wait is taken out of the
    /// queue again at once (the scaler asks again later), its removal the
    /// last decision.
    pub fn place_scaled(&mut self, p: Profile, now: u64) -> Result<Vec<Decision>, Refusal> {
        let id = p.name.clone();
        let mut out = self.place(p, now)?;
        if let Some(q) = self.placed.get_mut(&id) {
            q.scaled = true;
        } else if self.queued.contains_key(&id) {
            out.extend(self.remove(&id, now)?);
        }
        Ok(out)
    }

    /// GPU-hours a placement is charged.
    fn charge(p: &Profile, share: u32) -> f64 {
        share as f64 / 100.0 * p.gpus() as f64 * p.expected_duration_s as f64 / 3600.0
    }

    /// Checks that can never change by waiting: the tenant's quota, and
    /// whether any known node or scale-out shape could hold the request
    /// when empty. The reason names the constraint that rules it out.
    fn hopeless(&self, p: &Profile, class: &Class) -> Option<String> {
        if let Some(q) = self.cfg.quotas.get(&p.tenant) {
            let c = Self::charge(p, class.share_pct);
            let used = self.usage(&p.tenant);
            if used + c > *q + 1e-9 {
                return Some(format!(
                    "quota: tenant {} holds {used:.2} GPU-hours, this needs {c:.2}, its quota is {q:.2}",
                    p.tenant
                ));
            }
        }
        let shapes = self.scale_out_shapes();
        if self.nodes.is_empty() && shapes.is_empty() {
            // Nothing known yet to rule it out: it waits for nodes.
            return None;
        }
        let fit = Fit::new(p, class.share_pct);
        let node_holds = self.nodes.iter().any(|n| {
            fit.holds(
                n.cpu_milli,
                n.memory_mib,
                n.gpus
                    .iter()
                    .map(|g| (g.model.as_str(), g.memory_gb, g.price_per_hour)),
            )
        });
        if node_holds || shapes.iter().any(|s| fit.holds_shape(s)) {
            return None;
        }
        Some(fit.why_not(self.rooms(shapes)))
    }

    /// The configured scale-out shapes, or none when scale-out is off.
    fn scale_out_shapes(&self) -> &[NodeShape] {
        if self.cfg.scale_out {
            &self.cfg.scale_out_shapes
        } else {
            &[]
        }
    }

    /// Every known node and scale-out shape, empty.
    fn rooms<'a>(&'a self, shapes: &'a [NodeShape]) -> Vec<Room<'a>> {
        let nodes = self.nodes.iter().map(|n| Room {
            cpu: n.cpu_milli,
            mem: n.memory_mib,
            gpus: n
                .gpus
                .iter()
                .map(|g| (g.model.as_str(), g.memory_gb, g.price_per_hour))
                .collect(),
        });
        let shapes = shapes.iter().filter_map(|s| {
            let m = spec::lookup(&s.gpu_model)?;
            Some(Room {
                cpu: s.cpu_milli,
                mem: s.memory_mib,
                gpus: vec![(m.family, m.memory_gb, m.price_per_hour); s.gpus as usize],
            })
        });
        nodes.chain(shapes).collect()
    }

    fn decide(
        &mut self,
        p: Profile,
        class: Class,
        now: u64,
        may_scale: bool,
        out: &mut Vec<Decision>,
    ) {
        let seq = self.next_seq();
        if let Some(why) = self.hopeless(&p, &class) {
            let mut d = Decision::new(seq, now, &p.name, Path::Reject, why);
            d.class = Some(class);
            out.push(d);
            return;
        }
        let share = class.share_pct;
        let ask = Ask {
            p: &p,
            share,
            preferred: class.preferred_model.as_deref(),
            exclude: None,
            replacing: None,
            fill_from: None,
        };
        let scan = self.scan(&ask, true);
        let mut d = Decision::new(seq, now, &p.name, Path::Queue, String::new());
        d.considered = scan.considered;
        d.feasible = scan.feasible;
        d.top = scan.top.iter().map(|c| self.candidate(c)).collect();
        d.ruled_out = scan.ruled_out();
        d.share_pct = Some(share);
        d.class = Some(class.clone());
        // 2. Direct.
        if let Some(c) = scan.direct.clone() {
            let how = match c.slot {
                _ if c.gpus.is_empty() => "no GPU asked for",
                Slot::Pool => "a free slot of its share's MPS pool",
                Slot::Shared => "beside other shares",
                _ if self.cfg.mps_pools => "an idle GPU, its MPS server set to its share",
                _ => "an idle GPU",
            };
            d.path = Path::Direct;
            d.summary = format!(
                "{} on {} GPU {:?}: {how}",
                p.name, self.nodes[c.node].name, c.gpus
            );
            self.commit(p, class, &c, now, &mut d);
            out.push(d);
            return;
        }
        // 3. Reconfigure an MPS server whose pool has another size.
        let mut gate_refusals = Vec::new();
        for c in &scan.reconfigure {
            match self.gate(c.node, now) {
                Ok(()) => {
                    let plan = self.reconfigure_plan(c, share);
                    d.path = Path::Reconfigure;
                    d.summary = format!(
                        "{} on {} GPU {:?} after reconfiguring its MPS server to {share}% ({} restarts)",
                        p.name, self.nodes[c.node].name, c.gpus, plan.restarts
                    );
                    d.plan = Some(plan);
                    self.record_moves(now, 1);
                    self.commit(p, class, &c.clone(), now, &mut d);
                    out.push(d);
                    return;
                }
                Err(why) => {
                    if gate_refusals.len() < 3 {
                        gate_refusals.push(format!("{}: {why}", self.nodes[c.node].name));
                    }
                }
            }
        }
        // 4. Repack.
        let breaker = self.breaker(now);
        if self.cfg.repack
            && breaker.is_ok()
            && !self.paused
            && let Some((c, moves)) = self.repack(&p, &class, now)
        {
            let plan = Plan {
                reload_gb: moves.iter().map(|m| m.reload_gb).sum(),
                restarts: moves.len() as u32,
                steps: moves
                    .iter()
                    .flat_map(|m| {
                        [
                            step(
                                "shadow",
                                &m.to_node,
                                Some(m.to_gpu),
                                Some(&m.workload),
                                None,
                            ),
                            step(
                                "canary",
                                &m.to_node,
                                Some(m.to_gpu),
                                Some(&m.workload),
                                None,
                            ),
                            step(
                                "drain",
                                &m.from_node,
                                Some(m.from_gpu),
                                Some(&m.workload),
                                None,
                            ),
                        ]
                    })
                    .collect(),
                moves: moves.clone(),
            };
            d.path = Path::Repack;
            d.summary = format!(
                "{} on {} GPU {:?} after moving {} workload(s) ({:.1} GB to reload)",
                p.name,
                self.nodes[c.node].name,
                c.gpus,
                moves.len(),
                plan.reload_gb
            );
            d.plan = Some(plan);
            self.record_moves(now, moves.len() as u32);
            self.commit(p, class, &c, now, &mut d);
            out.push(d);
            for m in &moves {
                let mut md = Decision::new(
                    self.next_seq(),
                    now,
                    &m.workload,
                    Path::Repack,
                    format!(
                        "{} moved from {} GPU {} to {} GPU {} to make room for {}",
                        m.workload, m.from_node, m.from_gpu, m.to_node, m.to_gpu, out[0].workload
                    ),
                );
                self.describe(&m.workload, &mut md);
                out.push(md);
            }
            return;
        }
        // 5. Preempt.
        if self.cfg.preemption
            && let Some((c, victims)) = self.preemption(&p, &class)
        {
            let names: Vec<String> = victims.iter().map(|v| v.id.clone()).collect();
            d.path = Path::Preempt;
            d.summary = format!(
                "{} on {} GPU {:?} after preempting {}",
                p.name,
                self.nodes[c.node].name,
                c.gpus,
                names.join(", ")
            );
            d.preempted = names;
            let mut queued = Vec::new();
            for v in victims {
                self.unbind(&v, now, true);
                let mut vd = Decision::new(
                    self.next_seq(),
                    now,
                    &v.id,
                    Path::Queue,
                    format!("{} preempted by {} ({:?})", v.id, p.name, p.priority),
                );
                vd.class = Some(v.class.clone());
                self.enqueue(v.profile, now);
                queued.push(vd);
            }
            self.commit(p, class, &c, now, &mut d);
            out.push(d);
            out.extend(queued);
            return;
        }
        // 6. Queue, and ask for a node.
        let mut why = Vec::new();
        if !scan.reconfigure.is_empty() {
            why.push(format!(
                "reconfiguration not safe ({})",
                gate_refusals.join("; ")
            ));
        }
        if let Err(b) = breaker {
            why.push(b);
        } else if self.paused {
            why.push("moves paused by an operator".into());
        }
        let shape = if may_scale {
            self.shape(&p, &class)
        } else {
            None
        };
        if let Some(shape) = shape {
            d.path = Path::ScaleOut;
            d.summary = format!(
                "{} waits (priority {:?}); no capacity{}; asking for a node with {} × {}",
                p.name,
                p.priority,
                suffix(&why),
                shape.gpus,
                shape.gpu_model
            );
            d.scale_out = Some(shape);
        } else {
            d.path = Path::Queue;
            d.summary = format!(
                "{} waits (priority {:?}); no capacity{}",
                p.name,
                p.priority,
                suffix(&why)
            );
        }
        self.enqueue(p, now);
        out.push(d);
    }

    fn candidate(&self, c: &Cand) -> Candidate {
        let w = &self.cfg.weights;
        let t = &c.terms;
        Candidate {
            node: self.nodes[c.node].name.clone(),
            gpu: c.gpus.first().copied(),
            slot: c.slot,
            score: c.score,
            terms: *t,
            weighted: t.weighted(w),
        }
    }

    /// The node a queued workload asks for, if scale-out is on and a
    /// configured shape holds it.
    pub fn scale_out_shape(&self, q: &Queued) -> Option<NodeShape> {
        let class = self.cfg.classes.classify(&q.profile);
        self.shape(&q.profile, &class)
    }

    /// The node to ask for: of the scale-out shapes that hold the request,
    /// one of the class's preferred model, else the most efficient.
    fn shape(&self, p: &Profile, class: &Class) -> Option<NodeShape> {
        let fit = Fit::new(p, class.share_pct);
        let holding = || {
            self.scale_out_shapes()
                .iter()
                .filter(|s| fit.holds_shape(s))
        };
        let preferred = class
            .preferred_model
            .as_deref()
            .and_then(|f| holding().find(|s| s.gpu_model.eq_ignore_ascii_case(f)));
        let efficiency =
            |s: &NodeShape| spec::lookup(&s.gpu_model).map_or(0.0, |m| m.tflops_per_watt());
        preferred
            .or_else(|| holding().max_by(|a, b| efficiency(a).total_cmp(&efficiency(b))))
            .cloned()
    }

    fn enqueue(&mut self, p: Profile, now: u64) {
        self.qseq += 1;
        let key = (p.priority, self.qseq);
        self.queued.insert(p.name.clone(), key);
        self.queue.insert(
            key,
            Queued {
                id: p.name.clone(),
                profile: p,
                since_ms: now,
                seq: self.qseq,
            },
        );
    }

    /// Binds a placement chosen by a scan and fills in its decision.
    fn commit(&mut self, p: Profile, class: Class, c: &Cand, now: u64, d: &mut Decision) {
        let charge = Self::charge(&p, class.share_pct);
        *self.usage.entry(p.tenant.clone()).or_default() += charge;
        let placed = Placed {
            id: p.name.clone(),
            share_pct: class.share_pct,
            class,
            node: self.nodes[c.node].name.clone(),
            gpus: c.gpus.clone(),
            at_ms: now,
            gpu_hours: charge,
            pinned: false,
            weight: None,
            scaled: false,
            replica: None,
            shadow_of: None,
            bound_by: None,
            profile: p,
        };
        let id = placed.id.clone();
        self.bind(placed, c.slot);
        self.describe(&id, d);
    }

    /// Fills node, GPUs and manifest of a decision from the placement.
    fn describe(&self, id: &str, d: &mut Decision) {
        let Some(p) = self.placed.get(id) else { return };
        d.node = Some(p.node.clone());
        d.gpus = p.gpus.clone();
        d.share_pct = Some(p.share_pct);
        if d.class.is_none() {
            d.class = Some(p.class.clone());
        }
        d.manifest = Some(self.manifest(p));
    }

    /// The Pod that binds placement `p` where it is.
    pub fn manifest(&self, p: &Placed) -> k8s_openapi::api::core::v1::Pod {
        let gpu = self
            .node(&p.node)
            .and_then(|n| n.gpus.get(*p.gpus.first()? as usize))
            .map(|g| (g.product.as_str(), g.pool));
        manifest::pod(p, gpu, &self.cfg.manifest)
    }

    /// Takes a placement's resources on its node and GPUs.
    fn bind(&mut self, p: Placed, slot: Slot) {
        let i = self.index[&p.node];
        let n = &mut self.nodes[i];
        n.cpu_free -= p.profile.cpu_milli;
        n.memory_free -= p.profile.memory_mib;
        *n.replicas.entry(p.profile.model_id.clone()).or_default() += 1;
        let per_gpu = p.profile.gpu_memory() / p.gpus.len().max(1) as f64;
        let pools = self.cfg.mps_pools;
        for &g in &p.gpus {
            let g = &mut n.gpus[g as usize];
            if pools && (slot != Slot::Pool || g.workloads.is_empty()) {
                g.pool = Some(p.share_pct);
            }
            g.exclusive = p.share_pct >= 100;
            g.used_pct += p.share_pct;
            g.used_gb += per_gpu;
            g.workloads.push(p.id.clone());
            g.residents.push(Resident {
                share: p.share_pct,
                priority: p.profile.priority,
                pinned: p.pinned,
                preemptible: p.profile.preemptible(),
                gb: per_gpu,
            });
        }
        *self
            .replica_nodes
            .entry(p.profile.model_id.clone())
            .or_default()
            .entry(i)
            .or_default() += 1;
        self.refresh(i);
        self.placed.insert(p.id.clone(), Box::new(p));
    }

    /// Gives a placement's resources back; `refund`: the tenant gets the
    /// unused part of its GPU-hours back.
    fn unbind(&mut self, p: &Placed, now: u64, refund: bool) {
        let i = self.index[&p.node];
        let n = &mut self.nodes[i];
        n.cpu_free += p.profile.cpu_milli;
        n.memory_free += p.profile.memory_mib;
        if let Some(r) = n.replicas.get_mut(&p.profile.model_id) {
            *r -= 1;
            if *r == 0 {
                n.replicas.remove(&p.profile.model_id);
            }
        }
        let per_gpu = p.profile.gpu_memory() / p.gpus.len().max(1) as f64;
        for &g in &p.gpus {
            let g = &mut n.gpus[g as usize];
            g.used_pct -= p.share_pct;
            g.used_gb = (g.used_gb - per_gpu).max(0.0);
            if let Some(k) = g.workloads.iter().position(|w| *w == p.id) {
                g.workloads.remove(k);
                g.residents.remove(k);
            }
            if g.workloads.is_empty() {
                g.exclusive = false;
                g.used_gb = 0.0;
            }
        }
        if let Some(m) = self.replica_nodes.get_mut(&p.profile.model_id) {
            if let Some(c) = m.get_mut(&i) {
                *c -= 1;
                if *c == 0 {
                    m.remove(&i);
                }
            }
            if m.is_empty() {
                self.replica_nodes.remove(&p.profile.model_id);
            }
        }
        self.refresh(i);
        self.placed.remove(&p.id);
        if refund {
            let ran_s = now.saturating_sub(p.at_ms) as f64 / 1000.0;
            let left = 1.0 - (ran_s / p.profile.expected_duration_s as f64).min(1.0);
            if let Some(u) = self.usage.get_mut(&p.profile.tenant) {
                *u = (*u - p.gpu_hours * left).max(0.0);
            }
        }
    }

    /// Deletes a placement (or a queued workload); queued workloads that now
    /// fit follow its decision.
    pub fn remove(&mut self, id: &str, now: u64) -> Result<Vec<Decision>, Refusal> {
        let (summary, held) = if let Some(p) = self.placed.get(id).map(|p| (**p).clone()) {
            self.unbind(&p, now, true);
            (
                format!("{id} removed from {} GPU {:?}", p.node, p.gpus),
                Some(p),
            )
        } else if let Some(key) = self.queued.remove(id) {
            self.queue.remove(&key);
            (format!("{id} removed from the queue"), None)
        } else if let Some(p) = self.waiting.remove(id) {
            if let Some(u) = self.usage.get_mut(&p.profile.tenant) {
                *u = (*u - p.gpu_hours).max(0.0);
            }
            let why = format!("{id} removed (restored onto {}, not known yet)", p.node);
            (why, Some(p))
        } else {
            return Err(Refusal::NotFound(format!("workload {id}")));
        };
        let seq = self.next_seq();
        let mut d = Decision::new(seq, now, id, Path::Remove, summary);
        if let Some(p) = held {
            d.node = Some(p.node);
            d.gpus = p.gpus;
            d.share_pct = Some(p.share_pct);
            d.class = Some(p.class);
        }
        let mut out = vec![d];
        self.drain_queue(now, &mut out);
        Ok(out)
    }

    /// Places what waits that fits now (after a node joined): the
    /// decisions, none if nothing fits.
    pub fn retry_queue(&mut self, now: u64) -> Result<Vec<Decision>, Refusal> {
        let mut out = Vec::new();
        self.drain_queue(now, &mut out);
        Ok(out)
    }

    /// Places what waits, most important first, while anything fits
    /// directly (or after a reconfiguration or repack).
    fn drain_queue(&mut self, now: u64, out: &mut Vec<Decision>) {
        let keys: Vec<(Priority, u64)> = self.queue.keys().copied().collect();
        for key in keys {
            let may_move = !self.paused && self.breaker(now).is_ok();
            let Some(q) = self.queue.get(&key) else {
                continue;
            };
            // Cheap check first: is there any direct slot at all, or may
            // workloads move?
            let class = self.cfg.classes.classify(&q.profile);
            let ask = Ask {
                p: &q.profile,
                share: class.share_pct,
                preferred: class.preferred_model.as_deref(),
                exclude: None,
                replacing: None,
                fill_from: None,
            };
            if !may_move && self.scan(&ask, false).feasible == 0 {
                continue;
            }
            let q = self.queue.remove(&key).expect("present");
            self.queued.remove(&q.id);
            let mut tried = Vec::new();
            self.decide(q.profile, class, now, false, &mut tried);
            let settled = tried
                .first()
                .is_some_and(|d| d.path.placed() || d.path == Path::Reject);
            if !settled {
                // Still waiting: keep its place in the queue.
                let id = tried
                    .first()
                    .map(|d| d.workload.clone())
                    .unwrap_or_default();
                if let Some(k) = self.queued.remove(&id) {
                    let mut back = self.queue.remove(&k).expect("just queued");
                    back.seq = key.1;
                    back.since_ms = q.since_ms;
                    self.queued.insert(id, key);
                    self.queue.insert(key, back);
                }
                self.seq -= tried.len() as u64;
                continue;
            }
            out.extend(tried);
        }
    }

    /// Applies an operator's control.
    pub fn control(&mut self, c: Control, now: u64) -> Result<Vec<Decision>, Refusal> {
        c.validate()?;
        let summary = match &c {
            Control::PauseReconfiguration {} => {
                self.paused = true;
                "automatic reconfiguration paused".to_string()
            }
            Control::ResumeReconfiguration {} => {
                self.paused = false;
                "automatic reconfiguration resumed".to_string()
            }
            Control::Cordon { node } | Control::Uncordon { node } => {
                let on = matches!(c, Control::Cordon { .. });
                let i = self.node_index(node)?;
                self.nodes[i].cordoned = on;
                self.refresh(i);
                format!("{node} {}", if on { "cordoned" } else { "uncordoned" })
            }
            Control::Pin { workload } | Control::Unpin { workload } => {
                let on = matches!(c, Control::Pin { .. });
                if !self.set_pinned(workload, on) {
                    return Err(Refusal::NotFound(format!("placement {workload}")));
                }
                format!("{workload} {}", if on { "pinned" } else { "unpinned" })
            }
            Control::Override {
                workload,
                node,
                gpu,
            } => {
                return self.override_placement(workload, node, *gpu, now);
            }
            Control::Weight { workload, weight } => {
                let p = self
                    .placed
                    .get_mut(workload)
                    .ok_or_else(|| Refusal::NotFound(format!("placement {workload}")))?;
                p.weight = Some(*weight);
                format!("{workload} routed at weight {weight}")
            }
            Control::Maintenance {
                node,
                from_ms,
                to_ms,
            } => {
                let i = self.node_index(node)?;
                self.nodes[i].maintenance = Some((*from_ms, *to_ms));
                format!("{node}: maintenance window {from_ms}..{to_ms}")
            }
            Control::TripBreaker {} => {
                self.breaker_tripped = true;
                "circuit breaker tripped".to_string()
            }
            Control::ResetBreaker {} => {
                self.breaker_tripped = false;
                self.breaker_open_until = 0;
                self.moves.clear();
                "circuit breaker reset".to_string()
            }
        };
        let seq = self.next_seq();
        let mut out = vec![Decision::new(seq, now, &c.target(), Path::Control, summary)];
        if matches!(
            c,
            Control::Uncordon { .. }
                | Control::Unpin { .. }
                | Control::ResumeReconfiguration {}
                | Control::ResetBreaker {}
                | Control::Maintenance { .. }
        ) {
            self.drain_queue(now, &mut out);
        }
        Ok(out)
    }

    fn node_index(&self, node: &str) -> Result<usize, Refusal> {
        self.index
            .get(node)
            .copied()
            .ok_or_else(|| Refusal::NotFound(format!("node {node}")))
    }

    fn override_placement(
        &mut self,
        id: &str,
        node: &str,
        gpu: Option<u32>,
        now: u64,
    ) -> Result<Vec<Decision>, Refusal> {
        let i = self.node_index(node)?;
        let (profile, old) = if let Some(p) = self.placed.get(id).map(|p| (**p).clone()) {
            (p.profile.clone(), Some(p))
        } else if let Some(q) = self.queued_workload(id) {
            (q.profile.clone(), None)
        } else {
            return Err(Refusal::NotFound(format!("workload {id}")));
        };
        if let Some(o) = &old {
            self.unbind(o, now, false);
        }
        let class = old
            .as_ref()
            .map(|o| o.class.clone())
            .unwrap_or_else(|| self.cfg.classes.classify(&profile));
        let ask = Ask {
            p: &profile,
            share: class.share_pct,
            preferred: class.preferred_model.as_deref(),
            exclude: None,
            replacing: None,
            fill_from: None,
        };
        let s = self.scan_nodes(&ask, &[i]);
        let pick = s
            .reconfigure
            .into_iter()
            .filter(|c| gpu.is_none_or(|g| c.gpus.contains(&g)))
            .max_by(|a, b| a.score.total_cmp(&b.score));
        let Some(c) = pick else {
            if let Some(o) = old {
                self.bind(o, Slot::Pool);
            }
            return Err(Invalid::new(
                "node",
                &format!(
                    "{id} does not fit on {node}{}",
                    gpu.map(|g| format!(" GPU {g}")).unwrap_or_default()
                ),
            )
            .into());
        };
        if let Some(k) = self.queued.remove(id) {
            self.queue.remove(&k);
        }
        let seq = self.next_seq();
        let mut d = Decision::new(
            seq,
            now,
            id,
            Path::Control,
            format!("{id} overridden onto {node} GPU {:?} and pinned", c.gpus),
        );
        let mut p = match old {
            Some(mut o) => {
                o.node = node.to_string();
                o.gpus = c.gpus.clone();
                o
            }
            None => {
                let charge = Self::charge(&profile, class.share_pct);
                *self.usage.entry(profile.tenant.clone()).or_default() += charge;
                Placed {
                    id: id.to_string(),
                    share_pct: class.share_pct,
                    class,
                    node: node.to_string(),
                    gpus: c.gpus.clone(),
                    at_ms: now,
                    gpu_hours: charge,
                    pinned: true,
                    weight: None,
                    scaled: false,
                    replica: None,
                    shadow_of: None,
                    bound_by: None,
                    profile,
                }
            }
        };
        p.pinned = true;
        self.bind(p, c.slot);
        self.describe(id, &mut d);
        Ok(vec![d])
    }

    /// Puts back a queued workload recorded earlier (a restart), behind
    /// those already waiting at its priority.
    pub fn restore_queued(&mut self, q: Queued) -> Result<(), Invalid> {
        q.profile.validate()?;
        if self.known(&q.id) {
            return Err(Invalid::new("name", &format!("{} is already known", q.id)));
        }
        self.enqueue(q.profile, q.since_ms);
        Ok(())
    }

    /// Puts back a placement recorded earlier (a restart reading its audit
    /// trail): on its node and GPUs as they were, whatever the score. A
    /// placement whose node is not known yet waits for it (its name stays
    /// taken, its tenant charged).
    pub fn restore(&mut self, p: Placed) -> Result<(), Invalid> {
        if self.known(&p.id) {
            return Err(Invalid::new("name", &format!("{} is already known", p.id)));
        }
        p.profile.validate()?;
        let (tenant, charge) = (p.profile.tenant.clone(), p.gpu_hours);
        if !self.index.contains_key(&p.node) {
            self.waiting.insert(p.id.clone(), p);
        } else {
            self.restore_on_node(p)?;
        }
        *self.usage.entry(tenant).or_default() += charge;
        Ok(())
    }

    fn restore_on_node(&mut self, p: Placed) -> Result<(), Invalid> {
        let &i = self
            .index
            .get(&p.node)
            .ok_or_else(|| Invalid::new("node", &format!("{} is not a known node", p.node)))?;
        let n = &self.nodes[i];
        if p.gpus.iter().any(|&g| g as usize >= n.gpus.len()) {
            return Err(Invalid::new(
                "gpus",
                &format!("{} has no GPU {:?}", p.node, p.gpus),
            ));
        }
        let (profile, share) = (p.profile.clone(), p.share_pct);
        self.learn(&profile, share);
        self.bind(p, Slot::Pool);
        Ok(())
    }
}

/// Whether node `n` takes new work that fits its free CPU and memory.
fn open_to(n: &Node, p: &Profile) -> bool {
    !n.cordoned
        && n.healthy
        && n.down.is_none()
        && n.cpu_free >= p.cpu_milli
        && n.memory_free >= p.memory_mib
}

fn step(
    action: &str,
    node: &str,
    gpu: Option<u32>,
    workload: Option<&str>,
    share: Option<u32>,
) -> Step {
    Step {
        action: action.to_string(),
        node: node.to_string(),
        gpu,
        workload: workload.map(str::to_string),
        share_pct: share,
    }
}

fn suffix(why: &[String]) -> String {
    if why.is_empty() {
        String::new()
    } else {
        format!(" ({})", why.join("; "))
    }
}
