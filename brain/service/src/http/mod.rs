//! The brain's HTTP API (axum): placements, nodes, the audit trail,
//! operator controls, health, Prometheus metrics and the OpenAPI document
//! (`doc`), which describes every answer each operation can give.
//!
//! Every request that changes something runs the decision core under one
//! lock (decisions are ordered), hands the decisions to the audit writer
//! in that order, and answers only once they are committed. Every error,
//! from a handler or from a layer, is JSON `{"field", "error"}`.

pub mod auth;
mod doc;
mod metrics;
mod request;
pub mod scheduler;
mod ui;

use self::auth::{Role, Tokens};
use self::request::{Body, Id, Params};
use crate::audit::{self, Audit, Filter, Row};
use crate::gateways::{GatewayWindow, Gateways, WindowTaken};
use crate::replicas::ReplicaView;
use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use utoipa::ToSchema;
use vagus_decision::reconfig::{Change, Reconfig};
use vagus_decision::state::{Node, Queued};
use vagus_decision::{Control, Core, Decision, NodeSpec, Path, Placed, Profile, Refusal};

pub use self::doc::ApiDoc;
pub use self::metrics::Metrics;

/// A milliseconds clock; the live service reads the system's.
pub type Clock = Box<dyn Fn() -> u64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Box::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    })
}

/// A change to the core, carried out under its lock with the clock's time.
pub type CoreOp<'a> = Box<dyn FnOnce(&mut Core, u64) -> Result<Vec<Decision>, Refusal> + Send + 'a>;

pub struct Api {
    core: Mutex<Core>,
    /// The replicas agents run, by placement id (see [`crate::replicas`]).
    replicas: Mutex<BTreeMap<String, ReplicaView>>,
    /// What the gateways report (see [`crate::gateways`]).
    gateways: Mutex<Gateways>,
    audit: Audit,
    tokens: Tokens,
    clock: Clock,
    pub metrics: Metrics,
    /// What operators must hear about (`GET /v1/events`).
    pub alerts: crate::alerts::Alerts,
    /// Reconfigurations the trail recorded, for the loop to take back.
    restored_reconfigs: Mutex<Vec<Reconfig>>,
    /// After a restart, the replicas restored placements serve that no
    /// agent has reported yet: until they are (or the deadline), the
    /// routes are not known, and `GET /v1/routes` says so rather than
    /// answer an empty table a gateway would take.
    unreported: Mutex<Option<Unreported>>,
    /// Nodes Kubernetes reports not ready, and why (see
    /// [`crate::kube_exec`]): down for the failover too.
    kube_down: Mutex<BTreeMap<String, String>>,
}

struct Unreported {
    ids: std::collections::BTreeSet<String>,
    until_ms: u64,
}

/// How long after a restart the routes wait for the agents to report the
/// replicas restored placements serve, without a node timeout configured.
const ROUTES_WAIT_MS: u64 = 10_000;

/// What the audit trail records so that a restart can rebuild the state.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Saved {
    Placed(Box<Placed>),
    Queued(Box<Queued>),
    Gone,
    Control(Control),
    Reconfig(Box<Reconfig>),
}

/// What restoring from the audit trail did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub placements: usize,
    pub queued: usize,
    pub controls: usize,
    /// Reconfigurations recorded (ended or not).
    pub reconfigs: usize,
    /// Placements waiting for their node to appear.
    pub pending: usize,
}

impl Api {
    pub fn new(core: Core, audit: Audit, tokens: Tokens, clock: Clock) -> Api {
        Api {
            core: Mutex::new(core),
            replicas: Mutex::new(BTreeMap::new()),
            gateways: Mutex::new(Gateways::default()),
            audit,
            tokens,
            clock,
            metrics: Metrics::default(),
            alerts: crate::alerts::Alerts::default(),
            restored_reconfigs: Mutex::new(Vec::new()),
            unreported: Mutex::new(None),
            kube_down: Mutex::new(BTreeMap::new()),
        }
    }

    /// The nodes Kubernetes reports not ready now, and why.
    pub fn set_kube_down(&self, down: BTreeMap<String, String>) {
        *self.kube_down.lock().unwrap_or_else(|e| e.into_inner()) = down;
    }

    /// Why Kubernetes reports `node` not ready, if it does.
    pub fn kube_down(&self, node: &str) -> Option<String> {
        self.kube_down
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
            .cloned()
    }

    fn unreported(&self) -> std::sync::MutexGuard<'_, Option<Unreported>> {
        self.unreported.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why the routes are not known yet (restored replicas no agent has
    /// reported, before the deadline), if they are not.
    pub fn routes_unknown(&self) -> Option<String> {
        let now = (self.clock)();
        let mut u = self.unreported();
        match &*u {
            Some(w) if now < w.until_ms => Some(format!(
                "the routes are not known yet: {} replica(s) restored from the audit trail \
                 (first: {}) not reported by their agents; asking again within {} ms",
                w.ids.len(),
                w.ids.first().map(String::as_str).unwrap_or(""),
                w.until_ms - now
            )),
            Some(_) => {
                *u = None;
                None
            }
            None => None,
        }
    }

    /// The reconfigurations the trail held at the last restore (each
    /// one's latest record), once.
    pub fn take_restored_reconfigs(&self) -> Vec<Reconfig> {
        std::mem::take(
            &mut *self
                .restored_reconfigs
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// The requests the gateways sent to `replica` lately whose prompt
    /// length they read, and the mean prompt (tokens).
    pub fn prompts(&self, replica: &str) -> Option<(u64, f64)> {
        self.gateways().prompts(replica, (self.clock)())
    }

    /// Records a reconfiguration's step (`change`): with `f`, the core's
    /// changes it makes, in one transaction with the step's row (actor
    /// `loop`). Refused by the core, the step is still recorded, and the
    /// refusal returned.
    pub async fn reconfig_step(
        &self,
        change: &Change,
        f: Option<CoreOp<'_>>,
    ) -> Result<(), ApiError> {
        let r = &change.reconfig;
        let body = serde_json::to_string(change).unwrap_or_default();
        let state = serde_json::to_string(&Saved::Reconfig(Box::new(r.clone()))).ok();
        let row = Row {
            at_ms: change.at_ms,
            path: "reconfig".into(),
            workload: r.workload.clone(),
            node: (!r.node.is_empty()).then(|| r.node.clone()),
            actor: "loop".into(),
            summary: if r.id == 0 {
                change.reason.clone()
            } else {
                format!(
                    "reconfiguration {} of {}: {}: {}",
                    r.id,
                    r.workload,
                    r.step.name(),
                    change.reason
                )
            },
            body,
            state: (r.id != 0).then_some(state).flatten(),
        };
        match f {
            Some(f) => match self
                .decide_with("loop", None, None, vec![row.clone()], f)
                .await
            {
                Ok(_) => Ok(()),
                Err(e) => {
                    self.record_events(vec![row]).await;
                    Err(e)
                }
            },
            None => {
                self.record_events(vec![row]).await;
                Ok(())
            }
        }
    }

    fn core(&self) -> std::sync::MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every replica as last reported, by placement id, with what the
    /// gateways measured of it.
    pub fn replicas(&self) -> BTreeMap<String, ReplicaView> {
        let mut all = self
            .replicas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let now = (self.clock)();
        let g = self.gateways();
        for (id, r) in all.iter_mut() {
            r.gateway = g.view(id, now);
        }
        all
    }

    fn gateways(&self) -> std::sync::MutexGuard<'_, Gateways> {
        self.gateways.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn replica(&self, id: &str) -> Option<ReplicaView> {
        self.replicas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    pub fn set_replicas(&self, r: BTreeMap<String, ReplicaView>) {
        {
            let mut u = self.unreported();
            if let Some(w) = u.as_mut() {
                w.ids.retain(|id| !r.contains_key(id));
                if w.ids.is_empty() {
                    *u = None;
                }
            }
        }
        *self.replicas.lock().unwrap_or_else(|e| e.into_inner()) = r;
    }

    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// Rebuilds placements, the queue and controls from the audit trail
    /// (call after the nodes are known).
    pub fn restore(&self) -> Result<Restored, audit::AuditError> {
        let mut last: Vec<(String, Saved)> = Vec::new();
        let mut index = std::collections::HashMap::new();
        let mut controls = Vec::new();
        let mut reconfigs = BTreeMap::new();
        for (workload, state) in self.audit.states()? {
            let Ok(s) = serde_json::from_value::<Saved>(state) else {
                continue;
            };
            match s {
                Saved::Control(c) => controls.push(c),
                Saved::Reconfig(r) => {
                    reconfigs.insert(r.id, *r);
                }
                s => match index.get(&workload) {
                    Some(&i) => last[i] = (workload, s),
                    None => {
                        index.insert(workload.clone(), last.len());
                        last.push((workload, s));
                    }
                },
            }
        }
        let now = (self.clock)();
        let mut r = Restored::default();
        let mut core = self.core();
        // Decisions number on from the last one recorded.
        core.resume_after(self.audit.last_decision_seq()?);
        for c in controls {
            if core.control(c, now).is_ok() {
                r.controls += 1;
            }
        }
        for (_, s) in last {
            match s {
                Saved::Placed(p) => r.placements += usize::from(core.restore(*p).is_ok()),
                Saved::Queued(q) => r.queued += usize::from(core.restore_queued(*q).is_ok()),
                _ => {}
            }
        }
        r.pending = core.waiting().count();
        r.placements -= r.pending;
        let serving: std::collections::BTreeSet<String> = core
            .placements()
            .chain(core.waiting())
            .filter(|p| p.profile.launch.as_ref().is_some_and(|l| l.port.is_some()))
            .map(|p| p.replica_id().to_string())
            .collect();
        if !serving.is_empty() {
            let wait = match core.config().failover.node_timeout_ms {
                0 => ROUTES_WAIT_MS,
                t => t + 2_000,
            };
            *self.unreported() = Some(Unreported {
                ids: serving,
                until_ms: now + wait,
            });
        }
        r.reconfigs = reconfigs.len();
        *self
            .restored_reconfigs
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = reconfigs.into_values().collect();
        Ok(r)
    }

    /// Adds or updates a node (an agent's inventory, configuration); the
    /// core binds restored placements that were waiting for it.
    pub fn upsert_node(&self, spec: &NodeSpec) -> Result<(), vagus_decision::Invalid> {
        self.core().upsert_node(spec)
    }

    /// Runs `f` on the core (read only).
    pub fn with_core<R>(&self, f: impl FnOnce(&Core) -> R) -> R {
        f(&self.core())
    }

    /// The core's clock now (ms).
    pub fn now(&self) -> u64 {
        (self.clock)()
    }

    /// Stores rows that record events (not decisions: nothing to restore)
    /// in the audit trail, and counts them.
    pub async fn record_events(&self, rows: Vec<Row>) {
        let n = rows.len();
        match self.audit.submit(rows).await {
            Ok(Ok(())) => self.metrics.events(n),
            _ => self.metrics.audit_failed(),
        }
    }

    pub fn observe(
        &self,
        node: &str,
        load: &vagus_decision::NodeLoad,
    ) -> Result<(), vagus_decision::Invalid> {
        self.core().observe(node, load)
    }

    /// Runs `f` on the core, records its decisions, and waits for them to
    /// be committed. Each decision is encoded once, for the trail and the
    /// answer. If the trail fails, a new placement is withdrawn again (the
    /// caller hears 503 and nothing was placed); a removal or control stays
    /// applied, and the 503 says it was not recorded.
    async fn decide(
        &self,
        actor: &str,
        control: Option<&Control>,
        placing: Option<&str>,
        f: impl FnOnce(&mut Core, u64) -> Result<Vec<Decision>, Refusal>,
    ) -> Result<Vec<Decided>, ApiError> {
        self.decide_with(actor, control, placing, Vec::new(), f)
            .await
    }

    /// [`Api::decide`], with `extra` rows stored in the same transaction
    /// after the decisions (a reconfiguration's step with the core's
    /// changes it made).
    async fn decide_with(
        &self,
        actor: &str,
        control: Option<&Control>,
        placing: Option<&str>,
        extra: Vec<Row>,
        f: impl FnOnce(&mut Core, u64) -> Result<Vec<Decision>, Refusal>,
    ) -> Result<Vec<Decided>, ApiError> {
        let (reserved, rx, decisions, saved) = {
            let mut core = self.core();
            let now = (self.clock)();
            let t = std::time::Instant::now();
            let decisions = f(&mut core, now).map_err(ApiError::from)?;
            self.metrics.decided(t.elapsed(), &decisions);
            // What a restart restores, as it stands after these decisions.
            let saved: Vec<Saved> = decisions
                .iter()
                .map(|d| saved_state(&core, d, control))
                .collect();
            // The trail's place for them is taken under the lock (the
            // core's order); they are encoded outside it.
            let (reserved, rx) = self.audit.reserve();
            (reserved, rx, decisions, saved)
        };
        let mut rows = Vec::with_capacity(decisions.len());
        let mut decided = Vec::with_capacity(decisions.len());
        let mut encoded = Ok(());
        for (d, s) in decisions.iter().zip(&saved) {
            match row(d, s, actor) {
                Ok(r) => {
                    decided.push(Decided {
                        path: d.path,
                        workload: d.workload.clone(),
                        json: r.body.clone(),
                    });
                    rows.push(r);
                }
                Err(e) => {
                    encoded = Err(format!("cannot encode the decision: {e}"));
                    break;
                }
            }
        }
        rows.extend(extra);
        reserved.fill(encoded.map(|()| rows));
        match rx.await {
            Ok(Ok(())) => {
                self.metrics.audited(decided.len());
                Ok(decided)
            }
            failed => {
                self.metrics.audit_failed();
                if let Some(id) = placing {
                    let _ = self.core().remove(id, (self.clock)());
                }
                let why = match failed {
                    Ok(Err(e)) => e,
                    _ => "the audit writer stopped".to_string(),
                };
                Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    None,
                    format!("the audit trail could not store the decision: {why}"),
                ))
            }
        }
    }

    /// Node `node` is down (`why`): the core places its workloads again
    /// elsewhere; the decisions are audited as `actor`'s. The workloads
    /// moved, in the order they were, or the trail's failure.
    pub async fn node_down(
        &self,
        actor: &str,
        node: &str,
        why: &str,
    ) -> Result<Vec<String>, ApiError> {
        let ds = self
            .decide(actor, None, None, |core, now| {
                core.node_down(node, why, now)
            })
            .await?;
        Ok(workloads(ds, |p| p == Path::Evacuate))
    }

    /// GPU `gpu` of `node` has no MPS daemon serving, or (`conflict`) one
    /// whose configuration conflicts ([`Core::mps_down`]): the workloads
    /// that fell back to a GPU of their own.
    pub async fn mps_down(
        &self,
        actor: &str,
        node: &str,
        gpu: u32,
        why: &str,
        conflict: bool,
    ) -> Result<Vec<String>, ApiError> {
        let ds = self
            .decide(actor, None, None, |core, now| {
                core.mps_down(node, gpu, why, conflict, now)
            })
            .await?;
        Ok(workloads(ds, |p| p == Path::Evacuate))
    }

    /// GPU `gpu` of `node` has its MPS daemon again: the workloads placed
    /// from the queue.
    pub async fn mps_up(&self, actor: &str, node: &str, gpu: u32) -> Result<Vec<String>, ApiError> {
        let ds = self
            .decide(actor, None, None, |core, now| core.mps_up(node, gpu, now))
            .await?;
        Ok(workloads(ds, Path::placed))
    }

    /// Node `node` is back: it takes work again, and the queue is tried.
    /// The workloads placed from the queue.
    pub async fn node_up(&self, actor: &str, node: &str) -> Result<Vec<String>, ApiError> {
        let ds = self
            .decide(actor, None, None, |core, now| core.node_up(node, now))
            .await?;
        Ok(workloads(ds, Path::placed))
    }

    /// Places the queued workloads that fit now (a node joined), as
    /// `actor`; their names.
    pub async fn retry_queue(&self, actor: &str) -> Result<Vec<String>, ApiError> {
        if self.with_core(|c| c.queued().next().is_none()) {
            return Ok(Vec::new());
        }
        let ds = self
            .decide(actor, None, None, |c, now| c.retry_queue(now))
            .await?;
        Ok(workloads(ds, Path::placed))
    }

    /// Adds the replica the scaler asked for ([`Core::place_scaled`]); the
    /// path of its decision.
    pub async fn place_scaled(&self, actor: &str, p: Profile) -> Result<Path, ApiError> {
        let id = p.name.clone();
        let ds = self
            .decide(actor, None, Some(&id), |c, now| c.place_scaled(p, now))
            .await?;
        Ok(ds.first().map_or(Path::Queue, |d| d.path))
    }

    /// Applies an operator's control as `actor` (a breaker's pause).
    pub async fn control(&self, actor: &str, c: Control) -> Result<(), ApiError> {
        let c2 = c.clone();
        self.decide(actor, Some(&c), None, move |core, now| {
            core.control(c2, now)
        })
        .await
        .map(drop)
    }

    /// Removes a placement as `actor` (its route goes at once; the executor
    /// drains its replica).
    pub async fn remove(&self, actor: &str, id: &str) -> Result<(), ApiError> {
        self.decide(actor, None, None, |c, now| c.remove(id, now))
            .await
            .map(drop)
    }

    /// Raises an alert (see [`crate::alerts`]) and records it in the audit
    /// trail as an `event` row.
    pub async fn alert(
        &self,
        kind: &str,
        node: Option<&str>,
        workloads: Vec<String>,
        summary: String,
    ) {
        let now = self.now();
        let a = self.alerts.raise(now, kind, node, workloads, summary);
        let body = serde_json::json!({ "event": kind, "alert": &*a });
        self.record_events(vec![Row {
            at_ms: now,
            path: "event".into(),
            workload: String::new(),
            node: a.node.clone(),
            actor: "brain".into(),
            summary: a.summary.clone(),
            body: body.to_string(),
            state: None,
        }])
        .await;
    }

    /// The token's holder, if it has at least the `need` role. The scheme
    /// is case-insensitive (RFC 7235); a 401 carries `WWW-Authenticate`.
    fn authorize(&self, headers: &HeaderMap, need: Role) -> Result<String, ApiError> {
        let t = self.identify(headers)?;
        if t.role < need {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                Some("authorization"),
                format!(
                    "authorization: {} is a {}; this needs the {} role",
                    t.name,
                    t.role.name(),
                    need.name()
                ),
            ));
        }
        Ok(t.name.clone())
    }

    /// The token the request's `Authorization` header presents; 401 when
    /// it presents none the brain knows.
    fn identify(&self, headers: &HeaderMap) -> Result<&auth::Token, ApiError> {
        let unauthorized = |error: Option<&str>, msg: &str| {
            let challenge = match error {
                Some(e) => format!("Bearer realm=\"vagus\", error=\"{e}\""),
                None => "Bearer realm=\"vagus\"".to_string(),
            };
            let mut e = ApiError::new(
                StatusCode::UNAUTHORIZED,
                Some("authorization"),
                format!("authorization: {msg}"),
            );
            e.challenge = Some(challenge);
            e
        };
        let value = headers.get(header::AUTHORIZATION).ok_or_else(|| {
            unauthorized(None, "missing the `Authorization: Bearer <token>` header")
        })?;
        let value = value
            .to_str()
            .map_err(|_| unauthorized(Some("invalid_request"), "the header is not ASCII text"))?;
        let token = value
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                unauthorized(
                    Some("invalid_request"),
                    "the header must be `Bearer <token>`",
                )
            })?;
        self.tokens
            .find(token)
            .ok_or_else(|| unauthorized(Some("invalid_token"), "unknown token"))
    }
}

/// The caller, authorized for at least the role `R` names.
pub struct Caller<const R: u8>(pub String);

pub type Viewer = Caller<0>;
pub type Reporter = Caller<1>;
pub type Operator = Caller<2>;
pub type Admin = Caller<3>;

impl<const R: u8> FromRequestParts<Arc<Api>> for Caller<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &Arc<Api>) -> Result<Self, ApiError> {
        let need = match R {
            0 => Role::Viewer,
            1 => Role::Gateway,
            2 => Role::Operator,
            _ => Role::Admin,
        };
        s.authorize(&parts.headers, need).map(Caller)
    }
}

/// What a restart restores after decision `d`: the workload's state, or
/// the control.
fn saved_state(core: &Core, d: &Decision, control: Option<&Control>) -> Saved {
    match (d.path, control) {
        (
            Path::Control,
            Some(
                Control::Pin { .. }
                | Control::Unpin { .. }
                | Control::Override { .. }
                | Control::Weight { .. },
            ),
        )
        | (Path::Control, None) => workload_state(core, &d.workload),
        (Path::Control, Some(c)) => Saved::Control(c.clone()),
        _ => workload_state(core, &d.workload),
    }
}

/// The audit row of a decision, with the state a restart restores.
fn row(d: &Decision, saved: &Saved, actor: &str) -> Result<Row, serde_json::Error> {
    let ser = |v: &dyn erased::Ser| v.json();
    Ok(Row {
        at_ms: d.at_ms,
        path: d.path.name().to_string(),
        workload: d.workload.clone(),
        node: d.node.clone(),
        actor: actor.to_string(),
        summary: d.summary.clone(),
        body: ser(d)?,
        state: Some(ser(saved)?),
    })
}

mod erased {
    /// `serde_json::to_string` behind a trait object.
    pub trait Ser {
        fn json(&self) -> Result<String, serde_json::Error>;
    }
    impl<T: serde::Serialize> Ser for T {
        fn json(&self) -> Result<String, serde_json::Error> {
            serde_json::to_string(self)
        }
    }
}

fn workload_state(core: &Core, id: &str) -> Saved {
    // A restored placement still waiting for its node is as much a
    // placement (a restarted brain may change its weight before its agent
    // is back).
    if let Some(p) = core.placement(id).or_else(|| core.waiting_workload(id)) {
        Saved::Placed(Box::new(p.clone()))
    } else if let Some(q) = core.queued_workload(id) {
        Saved::Queued(Box::new(q.clone()))
    } else {
        Saved::Gone
    }
}

/// An error answer: `{"field": …, "error": …}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    /// The request's field (body field, path or query parameter, header)
    /// that is wrong; `null` where no one field is.
    field: Option<String>,
    error: String,
    /// A 401's `WWW-Authenticate`.
    #[serde(skip)]
    challenge: Option<String>,
}

impl ApiError {
    /// What went wrong, in words.
    pub fn message(&self) -> &str {
        &self.error
    }

    fn new(status: StatusCode, field: Option<&str>, error: String) -> ApiError {
        ApiError {
            status,
            field: field.map(str::to_string),
            error,
            challenge: None,
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> ApiError {
        match r {
            Refusal::Invalid(i) => ApiError::new(
                StatusCode::BAD_REQUEST,
                Some(&i.field),
                format!("{}: {}", i.field, i.problem),
            ),
            Refusal::Conflict(what) => ApiError::new(
                StatusCode::CONFLICT,
                Some("name"),
                format!("name: {what} already exists"),
            ),
            Refusal::NotFound(what) => {
                // "node n1", "workload w", "placement w": the field named.
                let field = match what.split(' ').next() {
                    Some("node") => "node",
                    _ => "workload",
                };
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    Some(field),
                    format!("{field}: {what} not found"),
                )
            }
            Refusal::NoRoom(why) => ApiError::new(StatusCode::CONFLICT, Some("node"), why),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(&self)).into_response();
        if let Some(c) = self
            .challenge
            .as_deref()
            .and_then(|c| HeaderValue::from_str(c).ok())
        {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, c);
        }
        r
    }
}

/// A decision as recorded: its path, its workload, its JSON.
pub struct Decided {
    pub path: Path,
    pub workload: String,
    pub json: String,
}

/// The answer to a placement request or deletion (the OpenAPI schema of
/// what [`answer`] writes).
#[derive(Serialize, ToSchema)]
pub struct Answer {
    pub id: String,
    /// The decision on this workload.
    pub decision: Decision,
    /// Decisions it caused for other workloads (moved, preempted, dequeued).
    pub related: Vec<Decision>,
}

/// The answer to a placement request that can never be placed as asked:
/// the decision (path `reject`, recorded in the trail) says which
/// constraint rules it out.
#[derive(Serialize, ToSchema)]
pub struct Rejection {
    pub id: String,
    pub decision: Decision,
    /// Always empty: a rejection changes nothing else.
    pub related: Vec<Decision>,
}

/// `{"id", "decision", "related"}` from the recorded JSON, and the path of
/// the workload's own decision.
fn answer(id: &str, ds: &[Decided]) -> (Path, String) {
    let i = ds.iter().position(|d| d.workload == id).unwrap_or(0);
    let mut out = String::with_capacity(ds.iter().map(|d| d.json.len() + 1).sum::<usize>() + 64);
    out.push_str("{\"id\":");
    out.push_str(&serde_json::Value::from(id).to_string());
    out.push_str(",\"decision\":");
    out.push_str(ds.get(i).map(|d| d.json.as_str()).unwrap_or("null"));
    out.push_str(",\"related\":[");
    let mut first = true;
    for (k, d) in ds.iter().enumerate() {
        if k != i {
            if !first {
                out.push(',');
            }
            out.push_str(&d.json);
            first = false;
        }
    }
    out.push_str("]}");
    (ds.get(i).map(|d| d.path).unwrap_or(Path::Control), out)
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Where a new workload's decisions can be read.
fn located(mut r: Response, id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/placements/{id}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

#[utoipa::path(post, path = "/v1/placements", request_body = Profile,
    responses(
        (status = 201, description = "Placed now", body = Answer,
            headers(("Location" = String, description = "The workload's URL"))),
        (status = 202, description = "Queued (and a scale-out node asked for)", body = Answer,
            headers(("Location" = String, description = "The workload's URL"))),
        (status = 409, description = "A workload of this name exists", body = ApiError),
        (status = 422, description = "Rejected: over quota, or no known node or scale-out shape could ever hold it", body = Rejection),
    ), security(("bearer" = [])))]
async fn create_placement(
    State(s): State<Arc<Api>>,
    Caller(actor): Operator,
    Body(p): Body<Profile>,
) -> Result<Response, ApiError> {
    let id = p.name.clone();
    let ds = s
        .decide(&actor, None, Some(&id), |c, now| c.place(p, now))
        .await?;
    let (path, body) = answer(&id, &ds);
    Ok(match path {
        p if p.placed() => located(json(StatusCode::CREATED, body), &id),
        Path::Reject => json(StatusCode::UNPROCESSABLE_ENTITY, body),
        _ => located(json(StatusCode::ACCEPTED, body), &id),
    })
}

/// A workload as the API shows it.
#[derive(Serialize, ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Workload {
    /// Running where its placement says.
    Placed {
        placement: Placed,
        /// The Pod that binds it (Kubernetes' `v1.Pod`).
        #[schema(value_type = Object)]
        manifest: serde_json::Value,
        /// Its replica, when it has a launch spec and its agent reports it.
        replica: Option<Box<ReplicaView>>,
    },
    /// Restored from the trail onto a node that is not known yet (a
    /// restart before its agent reconnects): bound when the node appears.
    Waiting { placement: Placed },
    /// Waiting for capacity.
    Queued { queued: Queued },
}

impl Workload {
    fn of(core: &Core, replicas: &BTreeMap<String, ReplicaView>, id: &str) -> Option<Workload> {
        if let Some(p) = core.placement(id) {
            Some(Workload::Placed {
                placement: p.clone(),
                manifest: serde_json::to_value(core.manifest(p)).unwrap_or_default(),
                replica: replicas.get(p.replica_id()).cloned().map(Box::new),
            })
        } else if let Some(p) = core.waiting_workload(id) {
            Some(Workload::Waiting {
                placement: p.clone(),
            })
        } else {
            core.queued_workload(id)
                .map(|q| Workload::Queued { queued: q.clone() })
        }
    }
}

#[utoipa::path(get, path = "/v1/placements/{id}",
    params(("id" = String, Path, description = "Workload name")),
    responses((status = 200, body = Workload),
        (status = 404, description = "No workload of this name", body = ApiError)),
    security(("bearer" = [])))]
async fn get_placement(
    State(s): State<Arc<Api>>,
    _: Viewer,
    Id(id): Id,
) -> Result<Response, ApiError> {
    let replicas = s.replicas();
    let core = s.core();
    match Workload::of(&core, &replicas, &id) {
        Some(w) => Ok(axum::Json(w).into_response()),
        None => Err(not_found_id(&id)),
    }
}

fn not_found_id(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        Some("id"),
        format!("id: no workload {id}"),
    )
}

#[utoipa::path(delete, path = "/v1/placements/{id}",
    params(("id" = String, Path, description = "Workload name")),
    responses((status = 200, description = "Removed; what the freed capacity placed follows", body = Answer),
        (status = 404, description = "No workload of this name", body = ApiError)),
    security(("bearer" = [])))]
async fn delete_placement(
    State(s): State<Arc<Api>>,
    Caller(actor): Operator,
    Id(id): Id,
) -> Result<Response, ApiError> {
    let ds = s
        .decide(&actor, None, None, |c, now| c.remove(&id, now))
        .await
        .map_err(|e| match e.status {
            StatusCode::NOT_FOUND => not_found_id(&id),
            _ => e,
        })?;
    Ok(json(StatusCode::OK, answer(&id, &ds).1))
}

/// `GET` lists: a page after a name.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Entries after this name (the last page's `next`).
    pub after: Option<String>,
    /// At most this many (default 100).
    pub limit: Option<u32>,
}

impl PageQuery {
    /// The page of `names` (in name order) after `after`, and the cursor
    /// to the next one; 400 for a bad `after` or `limit`.
    fn page<'a>(
        &self,
        mut names: Vec<&'a str>,
    ) -> Result<(Vec<&'a str>, Option<String>), ApiError> {
        use vagus_decision::rules::{LOOKUP, PAGE};
        let bad = |e: vagus_decision::Invalid| ApiError::from(Refusal::Invalid(e));
        if let Some(a) = &self.after {
            LOOKUP.check("after", a).map_err(bad)?;
        }
        let limit = self.limit.unwrap_or(100);
        PAGE.check("limit", limit as u64).map_err(bad)?;
        let limit = limit as usize;
        names.sort_unstable();
        let from = match &self.after {
            Some(a) => names.partition_point(|n| *n <= a.as_str()),
            None => 0,
        };
        let rest = &names[from..];
        let page: Vec<&str> = rest.iter().take(limit).copied().collect();
        let next = (rest.len() > limit)
            .then(|| page.last().map(|n| n.to_string()))
            .flatten();
        Ok((page, next))
    }
}

/// A page of workloads (placed, waiting for their node, queued), in name
/// order.
#[derive(Serialize, ToSchema)]
pub struct Workloads {
    pub items: Vec<Workload>,
    /// Pass as `after` for the next page; `null` on the last.
    pub next: Option<String>,
}

#[utoipa::path(get, path = "/v1/placements", params(PageQuery),
    responses((status = 200, body = Workloads)), security(("bearer" = [])))]
async fn list_placements(
    State(s): State<Arc<Api>>,
    _: Viewer,
    Params(q): Params<PageQuery>,
) -> Result<Response, ApiError> {
    let replicas = s.replicas();
    let core = s.core();
    let names = core
        .placements()
        .map(|p| p.id.as_str())
        .chain(core.waiting().map(|p| p.id.as_str()))
        .chain(core.queued().map(|q| q.id.as_str()))
        .collect();
    let (page, next) = q.page(names)?;
    let items = page
        .iter()
        .filter_map(|id| Workload::of(&core, &replicas, id))
        .collect();
    Ok(axum::Json(Workloads { items, next }).into_response())
}

/// Where a model's requests go: each replica that serves it, with its
/// weight (0: no new requests; those it holds finish).
#[derive(Serialize, ToSchema)]
pub struct Route {
    pub placement: String,
    pub node: String,
    pub url: String,
    pub state: String,
    pub weight: u32,
    /// Its workload's latency objective (`sla_ms` in its request), if any:
    /// gateways count the answers that meet it.
    pub sla_ms: Option<u32>,
}

/// Every model's routes, by model id.
#[derive(Serialize, ToSchema)]
pub struct Routes {
    pub models: BTreeMap<String, Vec<Route>>,
}

/// The weight a replica in good health gets.
pub const DEFAULT_WEIGHT: u32 = 100;

#[utoipa::path(get, path = "/v1/routes",
    responses((status = 200, body = Routes),
        (status = 503, description = "Just after a restart: the replicas the restored \
            placements serve are not reported by their agents yet (keep the routes you have)",
            body = ApiError)),
    security(("bearer" = [])))]
async fn get_routes(State(s): State<Arc<Api>>, _: Viewer) -> Response {
    if let Some(why) = s.routes_unknown() {
        let mut r = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, None, why).into_response();
        r.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("1"),
        );
        return r;
    }
    let mut models: BTreeMap<String, Vec<Route>> = BTreeMap::new();
    let weights: BTreeMap<String, (Option<u32>, Option<u32>)> = s.with_core(|c| {
        c.placements()
            .map(|p| (p.replica_id().to_string(), (p.weight, p.profile.sla_ms)))
            .collect()
    });
    for (id, r) in s.replicas() {
        let Some(url) = r.url.clone() else { continue };
        // Exited, or its placement gone (it drains): no route.
        let Some(&(weight, sla_ms)) = weights.get(&id) else {
            continue;
        };
        if r.state == "exited" {
            continue;
        }
        models.entry(r.model.clone()).or_default().push(Route {
            placement: id,
            node: r.node.clone(),
            url,
            weight: if r.takes_requests() {
                weight.unwrap_or(DEFAULT_WEIGHT)
            } else {
                0
            },
            state: r.state,
            sla_ms,
        });
    }
    axum::Json(Routes { models }).into_response()
}

#[utoipa::path(post, path = "/v1/gateways/{name}/windows",
    params(("name" = String, Path, description = "The gateway's name (a DNS-1123 subdomain)")),
    request_body = GatewayWindow,
    responses((status = 200, description = "Taken (counted once)", body = WindowTaken)),
    security(("bearer" = [])))]
async fn post_gateway_window(
    State(s): State<Arc<Api>>,
    _: Reporter,
    axum::extract::Path(name): axum::extract::Path<String>,
    Body(w): Body<GatewayWindow>,
) -> Result<Response, ApiError> {
    let bad = |e: vagus_decision::Invalid| ApiError::from(Refusal::Invalid(e));
    vagus_decision::rules::DNS_SUBDOMAIN
        .check("name", &name)
        .map_err(bad)?;
    w.validate().map_err(bad)?;
    let now = (s.clock)();
    let slo: Vec<(String, u64, u64)> = w
        .replicas
        .iter()
        .filter(|r| r.slo_requests > 0)
        .map(|r| (r.placement.clone(), r.slo_requests, r.slo_met))
        .collect();
    let counted = s.gateways().take(&name, w, now);
    if counted {
        let core = s.core();
        for (replica, n, met) in slo {
            if let Some(workload) = workload_of_replica(&core, &replica) {
                s.metrics.slo_observed(workload, n, met);
            }
        }
    }
    Ok(axum::Json(WindowTaken { counted }).into_response())
}

/// A page of nodes, in name order.
#[derive(Serialize, ToSchema)]
pub struct Nodes {
    pub items: Vec<Node>,
    /// Pass as `after` for the next page; `null` on the last.
    pub next: Option<String>,
}

#[utoipa::path(get, path = "/v1/nodes", params(PageQuery),
    responses((status = 200, body = Nodes)), security(("bearer" = [])))]
async fn list_nodes(
    State(s): State<Arc<Api>>,
    _: Viewer,
    Params(q): Params<PageQuery>,
) -> Result<Response, ApiError> {
    let core = s.core();
    let names = core.nodes().iter().map(|n| n.name.as_str()).collect();
    let (page, next) = q.page(names)?;
    let items = page.iter().filter_map(|n| core.node(n).cloned()).collect();
    Ok(axum::Json(Nodes { items, next }).into_response())
}

#[utoipa::path(post, path = "/v1/nodes", request_body = NodeSpec,
    responses((status = 200, description = "The node as the brain holds it", body = Node)),
    security(("bearer" = [])))]
async fn put_node(
    State(s): State<Arc<Api>>,
    Caller(actor): Admin,
    Body(spec): Body<NodeSpec>,
) -> Result<Response, ApiError> {
    let new = s.with_core(|c| c.node(&spec.name).is_none());
    s.upsert_node(&spec)
        .map_err(|e| ApiError::from(Refusal::from(e)))?;
    // What waited for a node like it.
    if new {
        s.retry_queue(&actor).await?;
    }
    let core = s.core();
    Ok(axum::Json(core.node(&spec.name)).into_response())
}

#[utoipa::path(get, path = "/v1/decisions", params(Filter),
    responses((status = 200, description = "The rows matching the filters; with `Accept: text/event-stream`, a server-sent event stream of them (each event's id its `seq`, its name its `path`, its data the row), going on with each row as it commits and resuming after `Last-Event-ID`", body = audit::Page)),
    security(("bearer" = [])))]
async fn list_decisions(
    State(s): State<Arc<Api>>,
    _: Viewer,
    headers: HeaderMap,
    Params(mut f): Params<Filter>,
) -> Result<Response, ApiError> {
    f.validate()
        .map_err(|e| ApiError::from(Refusal::Invalid(e)))?;
    let unavailable = |e: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, None, e);
    let stream = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if !stream {
        let s2 = s.clone();
        let page = tokio::task::spawn_blocking(move || s2.audit.page(&f))
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .map_err(|e| unavailable(e.to_string()))?;
        return Ok(axum::Json(page).into_response());
    }
    // A stream: the rows matching the filter after `after` (or the
    // Last-Event-ID a client resumes with), then each one as it commits.
    if let Some(v) = headers.get("last-event-id") {
        let seq = v
            .to_str()
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                ApiError::from(Refusal::Invalid(vagus_decision::Invalid::new(
                    "Last-Event-ID",
                    "must be a row's sequence number (a whole number)",
                )))
            })?;
        f.after = Some(f.after.map_or(seq, |a| a.max(seq)));
    }
    f.limit = Some(1000);
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures_util::StreamExt;
    let commits = s.audit.commits();
    let rows = futures_util::stream::unfold(
        (s.clone(), f, commits, std::collections::VecDeque::new()),
        |(s, mut f, mut commits, mut pending)| async move {
            loop {
                if let Some(e) = pending.pop_front() {
                    return Some((e, (s, f, commits, pending)));
                }
                // Marked seen before reading, so a commit after the read
                // wakes the next wait.
                commits.borrow_and_update();
                let (s2, f2) = (s.clone(), f.clone());
                match tokio::task::spawn_blocking(move || s2.audit.query(&f2)).await {
                    Ok(Ok(items)) if !items.is_empty() => {
                        f.after = items.last().map(|e| e.seq as u64);
                        pending.extend(items);
                    }
                    Ok(Ok(_)) => {
                        if commits.changed().await.is_err() {
                            return None;
                        }
                    }
                    // The trail cannot be read: the stream ends (the client
                    // resumes from the last id it got).
                    _ => return None,
                }
            }
        },
    );
    let events = rows.map(|e: audit::Entry| {
        let ev = Event::default().id(e.seq.to_string()).event(&e.path);
        Ok::<_, std::convert::Infallible>(
            ev.json_data(&e)
                .unwrap_or_else(|_| Event::default().comment("unencodable row")),
        )
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[utoipa::path(post, path = "/v1/controls", request_body = Control,
    responses((status = 200, description = "The control's decision, then what it placed", body = Vec<Decision>),
        (status = 404, description = "No such node or workload", body = ApiError)),
    security(("bearer" = [])))]
async fn post_control(
    State(s): State<Arc<Api>>,
    Caller(actor): Admin,
    Body(c): Body<Control>,
) -> Result<Response, ApiError> {
    let c2 = c.clone();
    let ds = s
        .decide(&actor, Some(&c), None, move |core, now| {
            core.control(c2, now)
        })
        .await?;
    let items: Vec<&str> = ds.iter().map(|d| d.json.as_str()).collect();
    Ok(json(StatusCode::OK, format!("[{}]", items.join(","))))
}

/// `GET /v1/events` parameters.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only alerts after this id (a stream's `Last-Event-ID` header does
    /// the same).
    pub after: Option<u64>,
}

/// The alerts kept (the newest 1,024).
#[derive(Serialize, ToSchema)]
pub struct Events {
    pub items: Vec<crate::alerts::Alert>,
}

#[utoipa::path(get, path = "/v1/events", params(EventsQuery),
    responses((status = 200,
        description = "The alerts kept after `after`, oldest first: JSON, or — with `Accept: text/event-stream` — a stream of server-sent events (`id`: the alert's id, `event`: its kind, `data`: the alert's JSON) that goes on with each new alert; a stream that falls more than 1,024 alerts behind ends, and its client reconnects with `Last-Event-ID`",
        content((Events = "application/json"), (String = "text/event-stream")))),
    security(("bearer" = [])))]
async fn list_events(
    State(s): State<Arc<Api>>,
    _: Viewer,
    headers: HeaderMap,
    Params(q): Params<EventsQuery>,
) -> Result<Response, ApiError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures_util::StreamExt;
    let invalid = |e: vagus_decision::Invalid| ApiError::from(Refusal::Invalid(e));
    let resume = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    invalid(vagus_decision::Invalid::new(
                        "Last-Event-ID",
                        "must be an alert id (a whole number)",
                    ))
                })?,
        ),
    };
    if let Some(a) = q.after {
        vagus_decision::rules::SEQ
            .check("after", a)
            .map_err(invalid)?;
    }
    let after = q.after.or(resume).unwrap_or(0);
    let (kept, rx) = s.alerts.since(after);
    let stream = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if !stream {
        let items = kept.iter().map(|a| (**a).clone()).collect();
        return Ok(axum::Json(Events { items }).into_response());
    }
    let last = kept.last().map_or(after, |a| a.id);
    // After what was kept, each new alert; a receiver that lagged ends the
    // stream (its client resumes from the last id it got).
    let live = futures_util::stream::unfold((rx, last), |(mut rx, last)| async move {
        loop {
            match rx.recv().await {
                Ok(a) if a.id > last => {
                    let id = a.id;
                    return Some((a, (rx, id)));
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    });
    let events = futures_util::stream::iter(kept).chain(live).map(|a| {
        let e = Event::default().id(a.id.to_string()).event(&a.kind);
        Ok::<_, std::convert::Infallible>(
            e.json_data(&*a)
                .unwrap_or_else(|_| Event::default().comment("unencodable alert")),
        )
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub nodes: usize,
    pub placements: usize,
    /// Restored placements waiting for their node.
    pub waiting: usize,
    pub queued: usize,
}

/// Who the caller's token names, and its role.
#[derive(Serialize, ToSchema)]
pub struct Session {
    pub name: String,
    /// `viewer`, `gateway`, `operator` or `admin`.
    pub role: String,
}

#[utoipa::path(get, path = "/v1/session",
    responses((status = 200, description = "The caller's token: its name and role", body = Session)),
    security(("bearer" = [])))]
async fn get_session(State(s): State<Arc<Api>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let t = s.identify(&headers)?;
    Ok(axum::Json(Session {
        name: t.name.clone(),
        role: t.role.name().into(),
    })
    .into_response())
}

#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health),
    (status = 503, description = "This replica does not lead (yet): the leader answers", body = ApiError)))]
async fn healthz(State(s): State<Arc<Api>>) -> Response {
    let core = s.core();
    axum::Json(Health {
        status: "ok".into(),
        nodes: core.nodes().len(),
        placements: core.placements().count(),
        waiting: core.waiting().count(),
        queued: core.queued().count(),
    })
    .into_response()
}

/// The workloads of `ds` whose decision's path is `which`, in order.
fn workloads(ds: Vec<Decided>, which: impl Fn(Path) -> bool) -> Vec<String> {
    ds.into_iter()
        .filter(|d| which(d.path))
        .map(|d| d.workload)
        .collect()
}

/// The workload replica `id` serves: its placement's, or, for a
/// reconfiguration's shadow, the workload it shadows; for a replica a
/// reconfiguration replaced (its late windows), the workload it was named for.
fn workload_of_replica<'c>(core: &'c Core, id: &str) -> Option<&'c str> {
    core.placements()
        .find(|p| p.replica_id() == id)
        .map(|p| p.shadow_of.as_deref().unwrap_or(&p.id))
        .or_else(|| core.placement(id).map(|p| p.id.as_str()))
}

#[utoipa::path(get, path = "/metrics",
    responses((status = 200, description = "Prometheus text format", body = String,
        content_type = "text/plain; version=0.0.4")))]
async fn metrics(State(s): State<Arc<Api>>) -> Response {
    let text = {
        let now = (s.clock)();
        let core = s.core();
        // Each workload with an objective: what its replicas (and shadow)
        // answered against it over the gateways' horizon.
        let mut recent: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        {
            let g = s.gateways();
            for p in core.placements().filter(|p| p.profile.sla_ms.is_some()) {
                let (n, met) = g.slo(p.replica_id(), now);
                let e = recent
                    .entry(p.shadow_of.clone().unwrap_or_else(|| p.id.clone()))
                    .or_default();
                (e.0, e.1) = (e.0 + n, e.1 + met);
            }
        }
        s.metrics.render(&core, &s.alerts.counts(), &recent)
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn openapi() -> Response {
    axum::Json(doc::document()).into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        Some("path"),
        "path: no such endpoint".into(),
    )
}

pub fn router(s: Arc<Api>) -> Router {
    Router::new()
        .route(
            "/v1/placements",
            post(create_placement).get(list_placements),
        )
        .route(
            "/v1/placements/{id}",
            get(get_placement).delete(delete_placement),
        )
        .route("/v1/nodes", get(list_nodes).post(put_node))
        .route("/v1/decisions", get(list_decisions))
        .route("/v1/controls", post(post_control))
        .route("/v1/session", get(get_session))
        .route("/v1/routes", get(get_routes))
        .route("/v1/events", get(list_events))
        .route("/v1/gateways/{name}/windows", post(post_gateway_window))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .merge(ui::routes())
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(request::BODY_LIMIT))
        .layer(axum::middleware::from_fn(request::json_errors))
        .layer(axum::middleware::from_fn_with_state(s.clone(), count))
        .with_state(s)
}

/// Counts answers by status.
async fn count(
    State(s): State<Arc<Api>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let r = next.run(req).await;
    s.metrics.answered(r.status().as_u16());
    r
}

/// Serves the API on `listener` once `api` holds its router, until the
/// task is dropped. Until then (a replica that follows, waiting for the
/// lease, or one restoring its core) every request is answered 503 with
/// `Retry-After`: the readiness probe (`/healthz`) fails, so Kubernetes'
/// Service sends requests to the leader only.
pub async fn serve_once_leading(
    listener: tokio::net::TcpListener,
    api: Arc<std::sync::OnceLock<Router>>,
) -> std::io::Result<()> {
    let gate = Router::new().fallback(move |req: axum::extract::Request| {
        let api = api.clone();
        async move {
            match api.get() {
                Some(r) => match tower_service::Service::call(&mut r.clone(), req).await {
                    Ok(answer) => answer,
                    Err(never) => match never {},
                },
                None => (
                    [(header::RETRY_AFTER, "1")],
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        None,
                        "this brain replica does not lead (it waits for the lease, or restores \
                         its state): the leader answers"
                            .into(),
                    ),
                )
                    .into_response(),
            }
        }
    });
    axum::serve(listener, gate).await
}
