//! The brain's HTTP API (axum): placements, nodes, the audit trail,
//! operator controls, health, Prometheus metrics and the OpenAPI document.
//!
//! Every request that changes something runs the decision core under one
//! lock (decisions are ordered), hands the decisions to the audit writer
//! in that order, and answers only once they are committed.

pub mod auth;
mod metrics;

use self::auth::{Role, Tokens};
use crate::audit::{self, Audit, Entry, Filter, Row};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use utoipa::{OpenApi, ToSchema};
use vagus_decision::state::{Node, Queued};
use vagus_decision::{Control, Core, Decision, NodeSpec, Path, Placed, Profile, Refusal};

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

pub struct Api {
    core: Mutex<Core>,
    audit: Audit,
    tokens: Tokens,
    clock: Clock,
    pub metrics: Metrics,
    /// Restored placements whose node is not known yet.
    pending: Mutex<Vec<Placed>>,
}

/// What the audit trail records so that a restart can rebuild the state.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Saved {
    Placed(Box<Placed>),
    Queued(Box<Queued>),
    Gone,
    Control(Control),
}

/// What restoring from the audit trail did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub placements: usize,
    pub queued: usize,
    pub controls: usize,
    /// Placements waiting for their node to appear.
    pub pending: usize,
}

impl Api {
    pub fn new(core: Core, audit: Audit, tokens: Tokens, clock: Clock) -> Api {
        Api {
            core: Mutex::new(core),
            audit,
            tokens,
            clock,
            metrics: Metrics::default(),
            pending: Mutex::new(Vec::new()),
        }
    }

    fn core(&self) -> std::sync::MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
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
        for (workload, state) in self.audit.states()? {
            let Ok(s) = serde_json::from_value::<Saved>(state) else {
                continue;
            };
            match s {
                Saved::Control(c) => controls.push(c),
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
        for c in controls {
            if core.control(c, now).is_ok() {
                r.controls += 1;
            }
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for (_, s) in last {
            match s {
                Saved::Placed(p) => {
                    if core.node(&p.node).is_some() {
                        if core.restore(*p).is_ok() {
                            r.placements += 1;
                        }
                    } else {
                        pending.push(*p);
                        r.pending += 1;
                    }
                }
                Saved::Queued(q) => r.queued += usize::from(core.restore_queued(*q).is_ok()),
                _ => {}
            }
        }
        Ok(r)
    }

    /// Adds or updates a node (an agent's inventory, configuration); puts
    /// back restored placements that were waiting for it.
    pub fn upsert_node(&self, spec: &NodeSpec) -> Result<(), vagus_decision::Invalid> {
        let mut core = self.core();
        core.upsert_node(spec)?;
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let (here, rest): (Vec<Placed>, Vec<Placed>) =
            pending.drain(..).partition(|p| p.node == spec.name);
        *pending = rest;
        for p in here {
            let _ = core.restore(p);
        }
        Ok(())
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

    fn authorize(&self, headers: &HeaderMap, need: Role) -> Result<String, ApiError> {
        let unauthorized = |msg: &str| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                Some("authorization"),
                msg.to_string(),
            )
        };
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("missing the Authorization: Bearer header"))?;
        let value = value
            .to_str()
            .map_err(|_| unauthorized("the Authorization header is not text"))?;
        let token = value
            .strip_prefix("Bearer ")
            .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <token>`"))?;
        let t = self
            .tokens
            .find(token.trim())
            .ok_or_else(|| unauthorized("unknown token"))?;
        if t.role < need {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                Some("authorization"),
                format!(
                    "{} is a {}; this needs the {} role",
                    t.name,
                    t.role.name(),
                    need.name()
                ),
            ));
        }
        Ok(t.name.clone())
    }
}

/// What a restart restores after decision `d`: the workload's state, or
/// the control.
fn saved_state(core: &Core, d: &Decision, control: Option<&Control>) -> Saved {
    match (d.path, control) {
        (
            Path::Control,
            Some(Control::Pin { .. } | Control::Unpin { .. } | Control::Override { .. }),
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
    if let Some(p) = core.placement(id) {
        Saved::Placed(Box::new(p.clone()))
    } else if let Some(q) = core.queued_workload(id) {
        Saved::Queued(Box::new(q.clone()))
    } else {
        Saved::Gone
    }
}

/// An error answer: `{"error": …, "field": …}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    /// The request field that is wrong, where one is.
    field: Option<String>,
    error: String,
}

impl ApiError {
    fn new(status: StatusCode, field: Option<&str>, error: String) -> ApiError {
        ApiError {
            status,
            field: field.map(str::to_string),
            error,
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> ApiError {
        match r {
            Refusal::Invalid(i) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(&i.field),
                format!("{}: {}", i.field, i.problem),
            ),
            Refusal::Conflict(what) => ApiError::new(
                StatusCode::CONFLICT,
                Some("name"),
                format!("{what} already exists"),
            ),
            Refusal::NotFound(what) => {
                ApiError::new(StatusCode::NOT_FOUND, None, format!("{what} not found"))
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(&self)).into_response()
    }
}

/// Parses a JSON body; the error names the field at fault.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            Some("body"),
            "body: expected a JSON object".into(),
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.inner().to_string();
        let syntax = e.inner().is_syntax() || e.inner().is_eof();
        let field = if syntax {
            "body".to_string()
        } else if path != "." && !path.is_empty() {
            // A missing field's path is its object's.
            match quoted(&msg) {
                Some(f) if msg.starts_with("missing field") => format!("{path}.{f}"),
                _ => path,
            }
        } else {
            quoted(&msg).unwrap_or_else(|| "body".to_string())
        };
        ApiError::new(
            StatusCode::BAD_REQUEST,
            Some(&field),
            format!("{field}: {msg}"),
        )
    })
}

/// The first `backquoted` word of a serde message.
fn quoted(msg: &str) -> Option<String> {
    let a = msg.find('`')?;
    let b = msg[a + 1..].find('`')?;
    Some(msg[a + 1..a + 1 + b].to_string())
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

#[utoipa::path(post, path = "/v1/placements", request_body = Profile,
    responses(
        (status = 201, description = "Placed now", body = Answer),
        (status = 202, description = "Queued (and scale-out asked for)", body = Answer),
        (status = 422, description = "Rejected (quota, cost, no GPU big enough) or invalid", body = ApiError),
        (status = 400, description = "Malformed body", body = ApiError),
        (status = 409, description = "The workload exists", body = ApiError),
    ), security(("bearer" = [])))]
async fn create_placement(
    State(s): State<Arc<Api>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let actor = s.authorize(&headers, Role::Operator)?;
    let p: Profile = parse(&body)?;
    let id = p.name.clone();
    let ds = s
        .decide(&actor, None, Some(&id), |c, now| c.place(p, now))
        .await?;
    let (path, body) = answer(&id, &ds);
    let status = match path {
        p if p.placed() => StatusCode::CREATED,
        Path::Reject => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::ACCEPTED,
    };
    Ok(json(status, body))
}

/// A workload as the API shows it.
#[derive(Serialize, ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Workload {
    Placed {
        placement: Placed,
        #[schema(value_type = Object)]
        manifest: Option<serde_json::Value>,
    },
    Queued {
        queued: Queued,
    },
}

#[utoipa::path(get, path = "/v1/placements/{id}",
    params(("id" = String, Path, description = "Workload name")),
    responses((status = 200, body = Workload), (status = 404, body = ApiError)),
    security(("bearer" = [])))]
async fn get_placement(
    State(s): State<Arc<Api>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    s.authorize(&headers, Role::Viewer)?;
    let core = s.core();
    let w = if let Some(p) = core.placement(&id) {
        let pod = core.manifest(p);
        Workload::Placed {
            placement: p.clone(),
            manifest: serde_json::to_value(pod).ok(),
        }
    } else if let Some(q) = core.queued_workload(&id) {
        Workload::Queued { queued: q.clone() }
    } else {
        return Err(Refusal::NotFound(format!("workload {id}")).into());
    };
    Ok(axum::Json(w).into_response())
}

#[utoipa::path(delete, path = "/v1/placements/{id}",
    params(("id" = String, Path, description = "Workload name")),
    responses((status = 200, body = Answer), (status = 404, body = ApiError)),
    security(("bearer" = [])))]
async fn delete_placement(
    State(s): State<Arc<Api>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let actor = s.authorize(&headers, Role::Operator)?;
    let ds = s
        .decide(&actor, None, None, |c, now| c.remove(&id, now))
        .await?;
    Ok(json(StatusCode::OK, answer(&id, &ds).1))
}

/// Placed and queued workloads, in name order.
#[derive(Serialize, ToSchema)]
pub struct Listing {
    pub placed: Vec<Placed>,
    pub queued: Vec<Queued>,
}

#[utoipa::path(get, path = "/v1/placements",
    responses((status = 200, body = Listing)), security(("bearer" = [])))]
async fn list_placements(
    State(s): State<Arc<Api>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    s.authorize(&headers, Role::Viewer)?;
    let core = s.core();
    let mut placed: Vec<Placed> = core.placements().cloned().collect();
    placed.sort_by(|a, b| a.id.cmp(&b.id));
    let queued = core.queued().cloned().collect();
    Ok(axum::Json(Listing { placed, queued }).into_response())
}

#[utoipa::path(get, path = "/v1/nodes",
    responses((status = 200, body = Vec<Node>)), security(("bearer" = [])))]
async fn list_nodes(State(s): State<Arc<Api>>, headers: HeaderMap) -> Result<Response, ApiError> {
    s.authorize(&headers, Role::Viewer)?;
    let core = s.core();
    Ok(axum::Json(core.nodes()).into_response())
}

#[utoipa::path(post, path = "/v1/nodes", request_body = NodeSpec,
    responses((status = 200, body = Node), (status = 422, body = ApiError)),
    security(("bearer" = [])))]
async fn put_node(
    State(s): State<Arc<Api>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    s.authorize(&headers, Role::Admin)?;
    let spec: NodeSpec = parse(&body)?;
    s.upsert_node(&spec)
        .map_err(|e| ApiError::from(Refusal::from(e)))?;
    let core = s.core();
    Ok(axum::Json(core.node(&spec.name)).into_response())
}

#[utoipa::path(get, path = "/v1/decisions", params(Filter),
    responses((status = 200, body = Vec<Entry>), (status = 400, body = ApiError)),
    security(("bearer" = [])))]
async fn list_decisions(
    State(s): State<Arc<Api>>,
    headers: HeaderMap,
    query: Result<Query<Filter>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    s.authorize(&headers, Role::Viewer)?;
    let Query(f) = query.map_err(|e| {
        let msg = e.body_text();
        // "Failed to deserialize query string: limit: invalid digit…"
        let field = msg
            .split_once("query string: ")
            .and_then(|(_, rest)| rest.split_once(": "))
            .map(|(f, _)| f.to_string())
            .filter(|f| !f.contains(' '))
            .or_else(|| quoted(&msg))
            .unwrap_or_else(|| "query".into());
        ApiError::new(StatusCode::BAD_REQUEST, Some(&field), msg)
    })?;
    let s2 = s.clone();
    let rows = tokio::task::spawn_blocking(move || s2.audit.query(&f))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, None, e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, None, e.to_string()))?;
    Ok(axum::Json(rows).into_response())
}

#[utoipa::path(post, path = "/v1/controls", request_body = Control,
    responses((status = 200, body = Vec<Decision>), (status = 400, body = ApiError),
        (status = 404, body = ApiError)),
    security(("bearer" = [])))]
async fn post_control(
    State(s): State<Arc<Api>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let actor = s.authorize(&headers, Role::Admin)?;
    let c: Control = parse(&body)?;
    let c2 = c.clone();
    let ds = s
        .decide(&actor, Some(&c), None, move |core, now| {
            core.control(c2, now)
        })
        .await?;
    let items: Vec<&str> = ds.iter().map(|d| d.json.as_str()).collect();
    Ok(json(StatusCode::OK, format!("[{}]", items.join(","))))
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub nodes: usize,
    pub placements: usize,
    pub queued: usize,
}

#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
async fn healthz(State(s): State<Arc<Api>>) -> Response {
    let core = s.core();
    axum::Json(Health {
        status: "ok".into(),
        nodes: core.nodes().len(),
        placements: core.placements().count(),
        queued: core.queued().count(),
    })
    .into_response()
}

#[utoipa::path(get, path = "/metrics",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(State(s): State<Arc<Api>>) -> Response {
    let text = {
        let core = s.core();
        s.metrics.render(&core)
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

#[derive(OpenApi)]
#[openapi(
    info(title = "Vagus brain", description = "Placement decisions, the audit trail and operator controls"),
    paths(create_placement, get_placement, delete_placement, list_placements, list_nodes, put_node,
        list_decisions, post_control, healthz, metrics),
    components(schemas(Profile, Answer, Decision, Workload, Listing, Node, NodeSpec, Entry, Control,
        ApiError, Health)),
    modifiers(&Bearer)
)]
pub struct ApiDoc;

struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

async fn openapi() -> Response {
    axum::Json(ApiDoc::openapi()).into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, None, "no such endpoint".into())
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
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
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

/// Serves the API on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, s: Arc<Api>) -> std::io::Result<()> {
    axum::serve(listener, router(s)).await
}
