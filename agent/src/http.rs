//! The agent's HTTP endpoints (axum): `/metrics` (Prometheus text),
//! `/snapshot` (JSON) and `/healthz`. A bug in rendering answers 500; it
//! never takes the agent down.

use crate::node::Node;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
struct Shared {
    node: Arc<Mutex<Node>>,
    host: Arc<str>,
}

/// Renders with the node locked; a panic while rendering is a 500.
fn render(s: &Shared, kind: &'static str, f: impl FnOnce(&Node) -> String) -> Response {
    let node = s.node.clone();
    let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        f(&node.lock().unwrap_or_else(|e| e.into_inner()))
    }));
    match done {
        Ok(body) => ([(header::CONTENT_TYPE, kind)], body).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error while rendering\n",
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<Shared>) -> Response {
    let host = s.host.clone();
    render(&s, "text/plain; version=0.0.4; charset=utf-8", |n| {
        crate::metrics::render(n, &host)
    })
}

async fn snapshot(State(s): State<Shared>) -> Response {
    render(&s, "application/json", |n| n.snapshot().to_string())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn not_found(uri: axum::http::Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!("no such path: {}\n", uri.path()),
    )
        .into_response()
}

/// The agent's routes over `node`; `host` labels the metrics.
pub fn router(node: Arc<Mutex<Node>>, host: &str) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/snapshot", get(snapshot))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .with_state(Shared {
            node,
            host: host.into(),
        })
}

/// Serves the routes on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Arc<Mutex<Node>>,
    host: &str,
) -> std::io::Result<()> {
    axum::serve(listener, router(node, host)).await
}
