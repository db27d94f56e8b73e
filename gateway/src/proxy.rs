//! The proxy: hyper's HTTP/1 server in front, hyper's pooled client behind.
//!
//! Each request is read whole (bounded), its `model`, prompt length and
//! `max_tokens` taken from its JSON body (OpenAI's completions and chat
//! shapes), a replica of that model picked from the route table, and the
//! request forwarded with its headers (hop-by-hop ones dropped). The answer
//! streams back as it comes — a server-sent stream token by token — and is
//! measured as it passes: first byte, last byte, status. A replica that
//! cannot be connected to is marked down at once and the request, which
//! reached nothing, goes to another; a request that failed after it was
//! sent is answered 502 (it may have run), not retried.

use crate::brain::Brain;
use crate::metrics::{Metrics, Series};
use crate::route::{RouteSet, Table};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The largest request body taken.
pub const MAX_BODY: usize = 16 << 20;
/// The header naming a request's priority (`P0`…`P3`), profiled per model.
pub const PRIORITY_HEADER: &str = "x-vagus-priority";

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// The brain's HTTP API (`http://HOST:PORT`) and a viewer's token: the
    /// routes come from its `GET /v1/routes`.
    pub brain: Option<(String, String)>,
    /// Routes to start with (and keep, without a brain).
    pub routes: RouteSet,
    /// How often the routes are asked for.
    pub refresh: Duration,
    /// With a brain: the name it knows this gateway by, and how often the
    /// measurements are sent to it (see [`crate::report`]).
    pub name: String,
    pub report: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
}

type Upstream = crate::brain::Client;

pub struct Shared {
    pub table: Mutex<Table>,
    pub metrics: Metrics,
    /// Each replica's series by placement (it serves one model), made on
    /// its first request and kept (series are never removed).
    series: std::sync::RwLock<std::collections::HashMap<String, Arc<Series>>>,
}

impl Shared {
    pub fn new(table: Table, metrics: Metrics) -> Shared {
        Shared {
            table: Mutex::new(table),
            metrics,
            series: Default::default(),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The series of `placement` serving `model`.
    fn series(&self, model: &str, placement: &str) -> Arc<Series> {
        let known = self
            .series
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(placement)
            .filter(|s| s.model == model)
            .cloned();
        known.unwrap_or_else(|| {
            let s = Arc::new(self.metrics.series(model, placement));
            self.series
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(placement.to_string(), s.clone());
            s
        })
    }

    fn set_routes(&self, routes: &RouteSet) {
        let mut t = self.table();
        t.update(routes);
        self.metrics.replicas.reset();
        for (m, n) in t.models() {
            self.metrics.replicas.with_label_values(&[m]).set(n as i64);
        }
    }

    /// A replica could not be reached: down until the brain lists it anew.
    fn mark_down(&self, placement: &str) {
        let mut t = self.table();
        t.mark_down(placement);
        for (m, n) in t.models() {
            self.metrics.replicas.with_label_values(&[m]).set(n as i64);
        }
    }
}

/// A started gateway.
pub struct Gateway {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    /// One serving thread per core (see [`start`]).
    pub threads: Vec<std::thread::JoinHandle<()>>,
}

fn upstream_client() -> Upstream {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(1024)
        .build(connector)
}

fn listener(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let s = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    s.set_reuseaddr(true)?;
    s.set_reuseport(true)?;
    s.set_nodelay(true)?;
    s.bind(addr)?;
    s.listen(4096)
}

/// Listens and serves; with a brain, keeps the routes fresh (on the
/// current tokio runtime). Like nginx's workers, each core gets a thread
/// of its own — its own single-threaded runtime, listening socket
/// (`SO_REUSEPORT`: the kernel spreads connections) and upstream
/// connections — so a request never hops between threads.
pub async fn start(cfg: Config) -> Result<Gateway, GatewayError> {
    if cfg.refresh.is_zero() {
        return Err(GatewayError::Config("--refresh must be above 0".into()));
    }
    if cfg.report.is_zero() {
        return Err(GatewayError::Config("--report-ms must be above 0".into()));
    }
    let shared = Arc::new(Shared::new(Table::default(), Metrics::default()));
    shared.set_routes(&cfg.routes);
    let io = |what: String| move |source| GatewayError::Io { what, source };
    // The first socket fixes the port (`:0` picks one); the others join it.
    let first = {
        let _guard = tokio::runtime::Handle::current().enter();
        listener(cfg.listen).map_err(io(format!("--listen {}: cannot listen", cfg.listen)))?
    };
    let addr = first
        .local_addr()
        .map_err(io("the listening address".into()))?;
    let std_first = first
        .into_std()
        .map_err(io("the listening socket".into()))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut sockets = vec![std_first];
    for _ in 1..cores {
        let _guard = tokio::runtime::Handle::current().enter();
        let l = listener(addr).map_err(io(format!("--listen {addr}: cannot listen again")))?;
        sockets.push(l.into_std().map_err(io("the listening socket".into()))?);
    }
    if let Some((brain, token)) = cfg.brain.clone() {
        let brain =
            Arc::new(Brain::new(&brain, &token, upstream_client()).map_err(GatewayError::Config)?);
        tokio::spawn(refresh(shared.clone(), brain.clone(), cfg.refresh));
        tokio::spawn(crate::report::report(
            shared.clone(),
            brain,
            cfg.name.clone(),
            cfg.report,
        ));
    }
    let mut threads = Vec::new();
    for (i, socket) in sockets.into_iter().enumerate() {
        let shared = shared.clone();
        let t = std::thread::Builder::new()
            .name(format!("vagus-gateway-{i}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        eprintln!("vagus gateway: thread {i}: cannot start its runtime: {e}");
                        return;
                    }
                };
                rt.block_on(serve(socket, shared));
            })
            .map_err(io("cannot start a serving thread".into()))?;
        threads.push(t);
    }
    Ok(Gateway {
        addr,
        shared,
        threads,
    })
}

/// One thread's accept loop, with its own upstream connections.
async fn serve(socket: std::net::TcpListener, shared: Arc<Shared>) {
    let Ok(listener) = tokio::net::TcpListener::from_std(socket) else {
        eprintln!("vagus gateway: a listening socket could not be taken over");
        return;
    };
    let client = upstream_client();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (s, c) = (shared.clone(), client.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let (s, c) = (s.clone(), c.clone());
                async move { Ok::<_, std::convert::Infallible>(handle(s, &c, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Asks the brain for the routes every `every`; a failure keeps the last.
async fn refresh(s: Arc<Shared>, brain: Arc<Brain>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut said: Option<String> = None;
    loop {
        tick.tick().await;
        let got = brain
            .call(hyper::Method::GET, "/v1/routes", None)
            .await
            .and_then(|body| {
                serde_json::from_slice::<RouteSet>(&body).map_err(|e| format!("the routes: {e}"))
            });
        match got {
            Ok(routes) => {
                s.set_routes(&routes);
                s.metrics.route_updates.inc();
                said = None;
            }
            Err(e) => {
                s.metrics.route_errors.inc();
                if said.as_ref() != Some(&e) {
                    eprintln!(
                        "vagus gateway: cannot get the routes from the brain: {e}; keeping the last"
                    );
                    said = Some(e);
                }
            }
        }
    }
}

/// OpenAI's error shape, naming the parameter.
fn error(status: StatusCode, param: Option<&str>, message: String) -> Response<GatewayBody> {
    let body = serde_json::json!({"error": {
        "message": message, "type": "invalid_request_error", "param": param, "code": null,
    }});
    let mut r = Response::new(GatewayBody::full(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// What the gateway reads of a request body.
#[derive(Default, serde::Deserialize)]
struct Probe {
    model: Option<String>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    prompt: Option<Prompt>,
    messages: Option<Vec<Message>>,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Prompt {
    Text(String),
    Tokens(Vec<u64>),
    Texts(Vec<String>),
    Batches(Vec<Vec<u64>>),
}

#[derive(serde::Deserialize)]
struct Message {
    #[serde(default)]
    content: serde_json::Value,
}

impl Probe {
    fn prompt_tokens(&self) -> Option<u64> {
        let chars = |s: &str| (s.chars().count() as u64).div_ceil(4);
        if let Some(p) = &self.prompt {
            return Some(match p {
                Prompt::Text(t) => chars(t),
                Prompt::Tokens(t) => t.len() as u64,
                Prompt::Texts(t) => t.iter().map(|s| chars(s)).sum(),
                Prompt::Batches(b) => b.iter().map(|t| t.len() as u64).sum(),
            });
        }
        let m = self.messages.as_ref()?;
        Some(m.iter().map(|m| m.content.as_str().map_or(0, chars)).sum())
    }
}

/// Headers that belong to one connection, not to the request.
fn hop_by_hop(name: &header::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (k, v) in from {
        if !hop_by_hop(k) && k != header::HOST && k != header::CONTENT_LENGTH {
            to.append(k.clone(), v.clone());
        }
    }
}

async fn handle(
    s: Arc<Shared>,
    client: &Upstream,
    req: Request<Incoming>,
) -> Response<GatewayBody> {
    let arrived = Instant::now();
    match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/metrics") => {
            let mut r = Response::new(GatewayBody::full(Bytes::from(s.metrics.text())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            return r;
        }
        (&hyper::Method::GET, "/healthz") => {
            return Response::new(GatewayBody::full(Bytes::from_static(b"ok\n")));
        }
        _ => {}
    }
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let too_big = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            return if too_big {
                error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Some("body"),
                    format!("body: over {} MiB", MAX_BODY >> 20),
                )
            } else {
                error(
                    StatusCode::BAD_REQUEST,
                    Some("body"),
                    format!("body: could not be read: {e}"),
                )
            };
        }
    };
    let probe = if body.is_empty() {
        Probe::default()
    } else {
        match serde_json::from_slice::<Probe>(&body) {
            Ok(p) => p,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    Some("body"),
                    format!("body: not the JSON of a completion request: {e}"),
                );
            }
        }
    };
    let model = match probe.model.clone() {
        Some(m) => m,
        None => match s.table().sole_model() {
            Some(m) => m.to_string(),
            None => {
                s.metrics
                    .unrouted
                    .with_label_values(&["", "no_model"])
                    .inc();
                return error(
                    StatusCode::BAD_REQUEST,
                    Some("model"),
                    "model: the request names none and the gateway routes more than one".into(),
                );
            }
        },
    };
    let priority = parts
        .headers
        .get(PRIORITY_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|p| matches!(*p, "P0" | "P1" | "P2" | "P3"))
        .unwrap_or("none")
        .to_string();
    if let Some(t) = probe.prompt_tokens() {
        s.metrics
            .prompt_tokens
            .with_label_values(&[&model, &priority])
            .observe(t as f64);
    }
    if let Some(t) = probe.max_tokens.or(probe.max_completion_tokens) {
        s.metrics
            .max_tokens
            .with_label_values(&[&model, &priority])
            .observe(t as f64);
    }
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let mut tried: Vec<String> = Vec::new();
    loop {
        let picked = s.table().pick(&model, &tried);
        let Some(route) = picked else {
            let known = s.table().models().any(|(m, _)| m == model);
            let (status, reason, msg) = if known {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no_replica",
                    format!("model: no replica of {model} takes requests now"),
                )
            } else {
                (
                    StatusCode::NOT_FOUND,
                    "unknown_model",
                    format!("model: the gateway routes no model {model:?}"),
                )
            };
            s.metrics
                .unrouted
                .with_label_values(&[&model, reason])
                .inc();
            return error(status, Some("model"), msg);
        };
        let replica = route.placement.as_str();
        let uri: hyper::Uri = match format!("{}{path}", route.url).parse() {
            Ok(u) => u,
            Err(e) => {
                s.mark_down(replica);
                tried.push(replica.to_string());
                eprintln!("vagus gateway: replica URL {}{path}: {e}", route.url);
                continue;
            }
        };
        let mut up = Request::new(Full::new(body.clone()));
        *up.method_mut() = parts.method.clone();
        *up.uri_mut() = uri;
        copy_headers(&parts.headers, up.headers_mut());
        let series = s.series(&model, replica);
        series.in_flight.inc();
        series.forwarded.inc();
        if let Some(t) = probe.prompt_tokens() {
            series.sized.inc();
            series.routed_prompt_tokens.inc_by(t);
        }
        let sla = route.sla_ms.map(|ms| Duration::from_millis(ms as u64));
        match client.request(up).await {
            Ok(resp) => {
                let (mut rp, incoming) = resp.into_parts();
                let headers = std::mem::take(&mut rp.headers);
                copy_headers(&headers, &mut rp.headers);
                let measured = Measured {
                    inner: Some(incoming),
                    arrived,
                    first: false,
                    sla,
                    s: s.clone(),
                    series,
                    code: rp.status,
                };
                return Response::from_parts(rp, GatewayBody::Stream(measured));
            }
            Err(e) => {
                series.in_flight.dec();
                if e.is_connect() {
                    // Nothing reached the replica: it is down, try another.
                    s.mark_down(replica);
                    s.metrics.retries.with_label_values(&[&model]).inc();
                    tried.push(replica.to_string());
                    continue;
                }
                s.metrics
                    .requests
                    .with_label_values(&[&model, replica, "502"])
                    .inc();
                if sla.is_some() {
                    series.slo_requests.inc();
                }
                // It may have run: not sent again.
                s.mark_down(replica);
                return error(
                    StatusCode::BAD_GATEWAY,
                    None,
                    format!("replica {replica} failed the request: {e}"),
                );
            }
        }
    }
}

/// The answer's body: the gateway's own, or the replica's measured as it
/// streams.
pub enum GatewayBody {
    Full(Option<Bytes>),
    Stream(Measured),
}

impl GatewayBody {
    fn full(b: Bytes) -> GatewayBody {
        GatewayBody::Full(Some(b))
    }
}

/// A replica's body passing through: first byte, end, in flight.
pub struct Measured {
    inner: Option<Incoming>,
    arrived: Instant,
    first: bool,
    /// The workload's latency objective, if it has one.
    sla: Option<Duration>,
    s: Arc<Shared>,
    series: Arc<Series>,
    /// The replica's status code.
    code: StatusCode,
}

impl Measured {
    /// The answer is over: `broken`, the replica broke off mid-answer (a
    /// 502), or the client left (a 499).
    fn finish(&mut self, broken: Option<&str>) {
        if self.inner.take().is_none() {
            return;
        }
        let took = self.arrived.elapsed();
        let x = &self.series;
        x.in_flight.dec();
        x.duration.observe(took.as_secs_f64());
        match broken {
            None if self.code == StatusCode::OK => x.ok.inc(),
            _ => {
                let code = broken.map_or_else(|| self.code.as_u16().to_string(), str::to_string);
                self.s
                    .metrics
                    .requests
                    .with_label_values(&[&x.model, &x.replica, &code])
                    .inc();
            }
        }
        if let Some(sla) = self.sla {
            x.slo_requests.inc();
            // Answered in full (not cut off: 499, 502) and not a server error.
            if took <= sla && broken.is_none() && !self.code.is_server_error() {
                x.slo_met.inc();
            }
        }
    }
}

impl Drop for Measured {
    fn drop(&mut self) {
        // The client went away before the end.
        self.finish(Some("499"));
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            GatewayBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            GatewayBody::Stream(m) => {
                let Some(inner) = m.inner.as_mut() else {
                    return Poll::Ready(None);
                };
                match Pin::new(inner).poll_frame(cx) {
                    Poll::Ready(Some(Ok(f))) => {
                        if !m.first && f.data_ref().is_some_and(|d| !d.is_empty()) {
                            m.first = true;
                            m.series
                                .first_byte
                                .observe(m.arrived.elapsed().as_secs_f64());
                        }
                        // Its last frame: hyper may not ask again.
                        if m.inner.as_ref().is_some_and(|i| i.is_end_stream()) {
                            m.finish(None);
                        }
                        Poll::Ready(Some(Ok(f)))
                    }
                    Poll::Ready(Some(Err(e))) => {
                        // The replica broke off mid-answer.
                        m.finish(Some("502"));
                        Poll::Ready(Some(Err(e)))
                    }
                    Poll::Ready(None) => {
                        m.finish(None);
                        Poll::Ready(None)
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Full(b) => b.is_none(),
            GatewayBody::Stream(m) => m.inner.is_none(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            GatewayBody::Full(Some(b)) => hyper::body::SizeHint::with_exact(b.len() as u64),
            GatewayBody::Full(None) => hyper::body::SizeHint::with_exact(0),
            GatewayBody::Stream(m) => m
                .inner
                .as_ref()
                .map_or_else(|| hyper::body::SizeHint::with_exact(0), |i| i.size_hint()),
        }
    }
}
