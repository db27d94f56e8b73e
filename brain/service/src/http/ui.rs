//! The dashboard at `/ui`: a page of our own (`ui/index.html`, `app.js`,
//! `app.css`) and uPlot (`ui/vendor/uplot/`, MIT), all built into the
//! binary — nothing is fetched from elsewhere at run time. The assets hold
//! no data and need no token; the page asks the API for everything with
//! the bearer token it is given (`/ui#token=…`).

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX: &str = include_str!("../../ui/index.html");
const APP_JS: &str = include_str!("../../ui/app.js");
const APP_CSS: &str = include_str!("../../ui/app.css");
const UPLOT_JS: &str = include_str!("../../ui/vendor/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../../ui/vendor/uplot/uPlot.min.css");

/// Scripts, styles and API calls from this origin only.
const CSP: &str =
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:";

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        body,
    )
        .into_response()
}

pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/ui",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/ui/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route(
            "/ui/uplot.js",
            get(|| async { asset("text/javascript; charset=utf-8", UPLOT_JS) }),
        )
        .route(
            "/ui/uplot.css",
            get(|| async { asset("text/css; charset=utf-8", UPLOT_CSS) }),
        )
}
