//! `vagus serve`: the HTTP side (axum) — OpenAI's `POST /v1/completions`
//! (streamed or not), `GET /v1/models`, `GET /health`, `GET /metrics` with
//! vLLM's metric names — and the engine thread that batches requests and
//! runs each iteration on the GPU.

use crate::cost::CostModel;
use crate::engine::{Engine, Event};
use crate::gpu::{Gpu, GpuError};
use crate::metrics::Metrics;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc as tmpsc;

/// What `vagus serve` is started with.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// The model name clients must ask for.
    pub model: String,
    pub cost: CostModel,
    /// Sequences running at once (vLLM's `max_num_seqs`).
    pub max_batch: usize,
    /// Tokens per iteration (vLLM's `max_num_batched_tokens`).
    pub token_budget: u64,
    /// Prompt plus output tokens a request may hold (`max_model_len`).
    pub max_model_len: u64,
    pub device: i32,
    /// Latency and TTFT histograms in buckets 4% apart (quantiles read from
    /// them within 4%) instead of vLLM's coarser ones.
    pub fine_buckets: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
}

impl Config {
    pub fn validate(&self) -> Result<(), ServeError> {
        self.cost.validate().map_err(ServeError::Config)?;
        if self.model.trim().is_empty() {
            return Err(ServeError::Config("--model: must not be empty".into()));
        }
        if self.max_batch == 0 {
            return Err(ServeError::Config(
                "--max-batch 0: must be at least 1".into(),
            ));
        }
        if self.token_budget == 0 {
            return Err(ServeError::Config(
                "--max-batched-tokens 0: must be at least 1".into(),
            ));
        }
        if self.max_model_len < 2 {
            return Err(ServeError::Config(format!(
                "--max-model-len {}: must be at least 2",
                self.max_model_len
            )));
        }
        Ok(())
    }
}

/// What the engine thread hears.
enum Msg {
    Add {
        id: u64,
        prompt: u64,
        max_tokens: u64,
        tx: tmpsc::UnboundedSender<Event>,
    },
    Cancel(u64),
}

struct Shared {
    cfg: Config,
    engine: mpsc::Sender<Msg>,
    next_id: AtomicU64,
    healthy: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    created: u64,
}

/// A started server: where it listens, and its task.
pub struct Server {
    pub addr: SocketAddr,
    pub device: crate::gpu::DeviceInfo,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Opens the GPU, starts the engine thread and serves HTTP (on the
/// current Tokio runtime).
pub async fn start(cfg: Config) -> Result<Server, ServeError> {
    cfg.validate()?;
    let weights_mib = (cfg.cost.model_gb * 1e9 / (1u64 << 20) as f64) as u64;
    let (device, bandwidth_eff) = (cfg.device, cfg.cost.bandwidth_eff);
    let gpu = tokio::task::spawn_blocking(move || Gpu::open(device, weights_mib, bandwidth_eff))
        .await
        .map_err(|e| ServeError::Config(format!("opening the GPU: {e}")))??;
    let info = gpu.info.clone();
    let metrics = Arc::new(Metrics::new(&cfg.model, cfg.fine_buckets));
    let healthy = Arc::new(AtomicBool::new(true));
    let (tx, rx) = mpsc::channel();
    let engine = Engine::new(cfg.cost, cfg.max_batch, cfg.token_budget);
    {
        let (metrics, healthy) = (metrics.clone(), healthy.clone());
        std::thread::Builder::new()
            .name("vagus-serve-engine".into())
            .spawn(move || engine_loop(gpu, engine, rx, &metrics, &healthy))
            .map_err(|source| ServeError::Io {
                what: "starting the engine thread".into(),
                source,
            })?;
    }
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServeError::Io {
            what: format!("--listen {}: cannot listen", cfg.listen),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Io {
        what: "the listening address".into(),
        source,
    })?;
    let shared = Arc::new(Shared {
        cfg,
        engine: tx,
        next_id: AtomicU64::new(1),
        healthy,
        metrics,
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    });
    let app = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route_layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            count_answers,
        ))
        .with_state(shared);
    let task = tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(Server {
        addr,
        device: info,
        task,
    })
}

/// Counts each answer by handler, method and status class (`2xx` …), as
/// vLLM's API server does: whoever reads a vLLM server's errors reads these.
async fn count_answers(
    State(s): State<Arc<Shared>>,
    path: axum::extract::MatchedPath,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = req.method().clone();
    let resp = next.run(req).await;
    let class = format!("{}xx", resp.status().as_u16() / 100);
    s.metrics
        .http
        .with_label_values(&[path.as_str(), method.as_str(), class.as_str()])
        .inc();
    resp
}

/// Batches what arrives, runs iterations while there is work, and tells
/// each request what it got. A GPU failure fails every request and marks
/// the server unhealthy.
fn engine_loop(
    gpu: Gpu,
    mut engine: Engine,
    rx: mpsc::Receiver<Msg>,
    metrics: &Metrics,
    healthy: &AtomicBool,
) {
    let mut clients: HashMap<u64, tmpsc::UnboundedSender<Event>> = HashMap::new();
    let apply = |m: Msg, engine: &mut Engine, clients: &mut HashMap<_, _>| match m {
        Msg::Add {
            id,
            prompt,
            max_tokens,
            tx,
        } => {
            engine.add(id, prompt, max_tokens);
            clients.insert(id, tx);
        }
        Msg::Cancel(id) => {
            engine.cancel(id);
            clients.remove(&id);
        }
    };
    loop {
        if engine.running() + engine.waiting() == 0 {
            match rx.recv() {
                Ok(m) => apply(m, &mut engine, &mut clients),
                Err(_) => return,
            }
        }
        while let Ok(m) = rx.try_recv() {
            apply(m, &mut engine, &mut clients);
        }
        metrics.queue(engine.running(), engine.waiting());
        let Some(step) = engine.plan() else {
            continue;
        };
        if let Err(e) = gpu.run(step.compute_us, step.memory_us) {
            eprintln!("vagus serve: the GPU failed: {e}; failing every request");
            healthy.store(false, Ordering::Relaxed);
            return;
        }
        let mut gone = Vec::new();
        for ev in engine.complete() {
            let id = match ev {
                Event::First(id) | Event::Token(id) | Event::Done(id) => id,
            };
            if let Some(tx) = clients.get(&id)
                && tx.send(ev).is_err()
            {
                gone.push(id);
            }
            if matches!(ev, Event::Done(_)) {
                clients.remove(&id);
            }
        }
        for id in gone {
            engine.cancel(id);
            clients.remove(&id);
        }
        // As the iteration left them: the gauges must not keep a finished
        // request running while the engine sleeps.
        metrics.queue(engine.running(), engine.waiting());
    }
}

/// `prompt`: text, or token ids (OpenAI's two forms).
#[derive(Deserialize)]
#[serde(untagged)]
enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// OpenAI's completion request (fields it does not use — temperature and
/// the like — are accepted and ignored, as OpenAI clients send them).
#[derive(Deserialize)]
struct CompletionRequest {
    model: String,
    prompt: Prompt,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    /// Vagus's extension: the prompt's length in tokens, whatever its text.
    #[serde(default)]
    prompt_tokens: Option<u64>,
}

/// An OpenAI-shaped error naming the parameter.
fn error(status: StatusCode, param: &str, message: String) -> Response {
    let kind = if status == StatusCode::NOT_FOUND {
        "NotFoundError"
    } else {
        "invalid_request_error"
    };
    (
        status,
        axum::Json(
            json!({"error": {"message": message, "type": kind, "param": param, "code": null}}),
        ),
    )
        .into_response()
}

/// Prompt tokens of a text: one per four characters (OpenAI's rule of
/// thumb for English), at least one.
fn text_tokens(s: &str) -> u64 {
    (s.chars().count() as u64).div_ceil(4).max(1)
}

/// Tells the engine a request is gone when its handler (or its stream) is
/// dropped before it finished: the client went away.
struct Pending {
    id: u64,
    engine: mpsc::Sender<Msg>,
    done: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.engine.send(Msg::Cancel(self.id));
        }
    }
}

async fn completions(State(s): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    let arrived = Instant::now();
    let req: CompletionRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let param = quoted(&e.to_string()).unwrap_or_else(|| "body".into());
            return error(StatusCode::BAD_REQUEST, &param, format!("{param}: {e}"));
        }
    };
    if req.model != s.cfg.model {
        return error(
            StatusCode::NOT_FOUND,
            "model",
            format!(
                "The model `{}` does not exist; this server serves `{}`",
                req.model, s.cfg.model
            ),
        );
    }
    let prompt = match (&req.prompt, req.prompt_tokens) {
        (_, Some(n)) => n,
        (Prompt::Text(t), None) => text_tokens(t),
        (Prompt::Tokens(t), None) => t.len() as u64,
    };
    let limit = s.cfg.max_model_len;
    if prompt == 0 || prompt >= limit {
        return error(
            StatusCode::BAD_REQUEST,
            "prompt",
            format!(
                "prompt: {prompt} tokens; this model's context is {limit} tokens, and the prompt must leave room for one output token"
            ),
        );
    }
    let max_tokens = req.max_tokens.unwrap_or(16);
    if max_tokens == 0 || prompt + max_tokens > limit {
        return error(
            StatusCode::BAD_REQUEST,
            "max_tokens",
            format!(
                "max_tokens: {max_tokens}; must be 1 to {} (the context is {limit} tokens and the prompt holds {prompt})",
                limit - prompt
            ),
        );
    }
    if !s.healthy.load(Ordering::Relaxed) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "model",
            "the engine stopped (the GPU failed)".into(),
        );
    }
    let id = s.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = tmpsc::unbounded_channel();
    if s.engine
        .send(Msg::Add {
            id,
            prompt,
            max_tokens,
            tx,
        })
        .is_err()
    {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "model",
            "the engine stopped".into(),
        );
    }
    let usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let run = Run {
        s: s.clone(),
        id,
        arrived,
        prompt,
        max_tokens,
        rx,
    };
    if req.stream {
        stream(run, usage).into_response()
    } else {
        whole(run).await
    }
}

/// A request on its way through the engine.
struct Run {
    s: Arc<Shared>,
    id: u64,
    arrived: Instant,
    prompt: u64,
    max_tokens: u64,
    rx: tmpsc::UnboundedReceiver<Event>,
}

/// Times a request's tokens for the metrics.
struct Timing {
    arrived: Instant,
    last: Option<Instant>,
    tokens: u64,
}

impl Timing {
    fn token(&mut self, m: &Metrics) {
        let now = Instant::now();
        match self.last {
            None => m.first_token(now - self.arrived),
            Some(prev) => m.output_token(now - prev),
        }
        self.last = Some(now);
        self.tokens += 1;
    }
}

fn completion_id(id: u64) -> String {
    format!("cmpl-{id:016x}")
}

impl Run {
    fn pending(&self) -> Pending {
        Pending {
            id: self.id,
            engine: self.s.engine.clone(),
            done: false,
        }
    }

    fn usage(&self, tokens: u64) -> serde_json::Value {
        json!({"prompt_tokens": self.prompt, "completion_tokens": tokens,
            "total_tokens": self.prompt + tokens})
    }

    fn chunk(&self, choices: serde_json::Value) -> serde_json::Value {
        json!({"id": completion_id(self.id), "object": "text_completion",
            "created": self.s.created, "model": self.s.cfg.model, "choices": choices})
    }
}

async fn whole(mut run: Run) -> Response {
    let mut guard = run.pending();
    let mut t = Timing {
        arrived: run.arrived,
        last: None,
        tokens: 0,
    };
    while let Some(ev) = run.rx.recv().await {
        match ev {
            Event::First(_) | Event::Token(_) => t.token(&run.s.metrics),
            Event::Done(_) => {
                guard.done = true;
                break;
            }
        }
    }
    if !guard.done {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "model",
            "the engine stopped before the request finished".into(),
        );
    }
    debug_assert_eq!(t.tokens, run.max_tokens);
    run.s
        .metrics
        .finished(run.arrived.elapsed(), run.prompt, t.tokens);
    let mut body = run.chunk(
        json!([{"index": 0, "text": text(t.tokens), "logprobs": null,
        "finish_reason": "length"}]),
    );
    body["usage"] = run.usage(t.tokens);
    axum::Json(body).into_response()
}

/// The generated text: one ` tok` per token.
fn text(tokens: u64) -> String {
    " tok".repeat(tokens as usize)
}

/// Where a stream is.
enum Phase {
    Tokens,
    Usage,
    Done,
    End,
}

/// Server-sent events: a chunk per batch of tokens that came out since the
/// last one was written (one token each while the client keeps up), the
/// last with `finish_reason`, then the usage when asked, then `[DONE]`.
fn stream(
    run: Run,
    usage: bool,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let guard = run.pending();
    let t = Timing {
        arrived: run.arrived,
        last: None,
        tokens: 0,
    };
    let state = (run, guard, t, Phase::Tokens);
    let events = futures_util::stream::unfold(
        state,
        move |(mut run, mut guard, mut t, phase)| async move {
            let data = match phase {
                Phase::End => return None,
                Phase::Done => {
                    return Some((
                        Ok(SseEvent::default().data("[DONE]")),
                        (run, guard, t, Phase::End),
                    ));
                }
                Phase::Usage => {
                    let mut c = run.chunk(json!([]));
                    c["usage"] = run.usage(t.tokens);
                    return Some((
                        Ok(SseEvent::default().data(c.to_string())),
                        (run, guard, t, Phase::Done),
                    ));
                }
                Phase::Tokens => {
                    let first = run.rx.recv().await?;
                    let (mut got, mut done) = (0u64, false);
                    for ev in
                        std::iter::once(first).chain(std::iter::from_fn(|| run.rx.try_recv().ok()))
                    {
                        match ev {
                            Event::First(_) | Event::Token(_) => {
                                t.token(&run.s.metrics);
                                got += 1;
                            }
                            Event::Done(_) => done = true,
                        }
                    }
                    let finish = done.then_some("length");
                    let c = run.chunk(json!([{"index": 0, "text": text(got), "logprobs": null,
                    "finish_reason": finish}]));
                    if done {
                        guard.done = true;
                        run.s
                            .metrics
                            .finished(run.arrived.elapsed(), run.prompt, t.tokens);
                    }
                    (c, done)
                }
            };
            let (c, done) = data;
            let next = match (done, usage) {
                (false, _) => Phase::Tokens,
                (true, true) => Phase::Usage,
                (true, false) => Phase::Done,
            };
            Some((
                Ok(SseEvent::default().data(c.to_string())),
                (run, guard, t, next),
            ))
        },
    );
    Sse::new(events)
}

async fn models(State(s): State<Arc<Shared>>) -> Response {
    axum::Json(
        json!({"object": "list", "data": [{"id": s.cfg.model, "object": "model",
        "created": s.created, "owned_by": "vagus", "max_model_len": s.cfg.max_model_len}]}),
    )
    .into_response()
}

async fn health(State(s): State<Arc<Shared>>) -> Response {
    if s.healthy.load(Ordering::Relaxed) {
        StatusCode::OK.into_response()
    } else {
        StatusCode::SERVICE_UNAVAILABLE.into_response()
    }
}

async fn metrics_text(State(s): State<Arc<Shared>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

/// The first `backquoted` word of a serde message (the field it names).
fn quoted(msg: &str) -> Option<String> {
    let a = msg.find('`')?;
    let b = msg[a + 1..].find('`')?;
    Some(msg[a + 1..a + 1 + b].to_string())
}
