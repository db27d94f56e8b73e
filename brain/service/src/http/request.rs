//! What the API takes from a request — a JSON body, a path's workload
//! name, a query string — each refused with a JSON error naming the field
//! the client sent; and the layer that turns whatever else answers an
//! error (axum's method router, the body limit) into the same JSON.

use super::ApiError;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

/// The most a body may hold.
pub const BODY_LIMIT: usize = 1 << 20;
/// The longest path and query string taken.
pub const URI_LIMIT: usize = 8 << 10;

/// A JSON body (`Content-Type: application/json` required), parsed into
/// `T` with unknown fields refused.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let mut v = match axum::Json::<serde_json::Value>::from_request(req, state).await {
            Ok(axum::Json(v)) => v,
            Err(e) => return Err(body_rejection(e)),
        };
        integers(&mut v);
        parse(v).map(Body)
    }
}

/// Whole numbers written as `2.0` become `2`: JSON Schema counts them as
/// integers, and clients (and generators) write them so.
fn integers(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && f.abs() < 9_007_199_254_740_992.0
            {
                *v = serde_json::Value::from(f as i64);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(integers),
        serde_json::Value::Object(m) => m.values_mut().for_each(integers),
        _ => {}
    }
}

fn body_rejection(e: JsonRejection) -> ApiError {
    let bad = |status, field: &str, msg: String| ApiError::new(status, Some(field), msg);
    match e {
        JsonRejection::MissingJsonContentType(_) => bad(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content-type",
            "content-type: a body must be sent as `Content-Type: application/json`".into(),
        ),
        JsonRejection::BytesRejection(BytesRejection::FailedToBufferBody(f))
            if f.status() == StatusCode::PAYLOAD_TOO_LARGE =>
        {
            bad(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body",
                format!("body: larger than {BODY_LIMIT} bytes"),
            )
        }
        JsonRejection::JsonSyntaxError(e) => bad(
            StatusCode::BAD_REQUEST,
            "body",
            format!("body: not JSON: {}", source_text(&e)),
        ),
        e => bad(
            StatusCode::BAD_REQUEST,
            "body",
            format!("body: {}", e.body_text()),
        ),
    }
}

/// The innermost error's text (serde's message, with line and column).
fn source_text(e: &dyn std::error::Error) -> String {
    let mut inner: &dyn std::error::Error = e;
    while let Some(s) = inner.source() {
        inner = s;
    }
    inner.to_string()
}

/// `T` from a JSON value; the error names the field at fault.
pub fn parse<T: DeserializeOwned>(v: serde_json::Value) -> Result<T, ApiError> {
    if !v.is_object() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            Some("body"),
            "body: expected a JSON object".into(),
        ));
    }
    let copy = v.clone();
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.inner().to_string();
        let field = if path != "." && !path.is_empty() {
            // A missing field's path is its object's.
            match quoted(&msg) {
                Some(f) if msg.starts_with("missing field") => format!("{path}.{f}"),
                _ => path,
            }
        } else {
            field_of(&copy, &msg)
        };
        ApiError::new(
            StatusCode::BAD_REQUEST,
            Some(&field),
            format!("{field}: {msg}"),
        )
    })
}

/// The field a top-level error is about, where serde gives no path (the
/// controls are internally tagged: their fields are read from a buffer).
/// A missing, unknown or duplicate field is named in the message; a value
/// of the wrong type or range is found by its value.
fn field_of(v: &serde_json::Value, msg: &str) -> String {
    let named = ["missing field", "unknown field", "duplicate field"];
    if named.iter().any(|n| msg.starts_with(n)) {
        return quoted(msg).unwrap_or_else(|| "body".into());
    }
    if msg.starts_with("unknown variant") {
        return "action".into();
    }
    let Some(obj) = v.as_object() else {
        return "body".into();
    };
    // "invalid type: integer `-1`, expected u64", "invalid type: null, …"
    let shown = quoted(msg);
    let mut hits = obj.iter().filter(|(k, x)| {
        *k != "action"
            && match (&shown, x) {
                (Some(s), serde_json::Value::String(t)) => {
                    msg.contains(&format!("\"{t}\"")) || s == t
                }
                (Some(s), x) => x.to_string() == *s,
                (None, serde_json::Value::Null) => msg.contains("null"),
                (None, serde_json::Value::Bool(_)) => msg.contains("boolean"),
                (None, serde_json::Value::Array(_)) => msg.contains("sequence"),
                (None, serde_json::Value::Object(_)) => msg.contains("map"),
                (None, serde_json::Value::String(t)) => msg.contains(&format!("\"{t}\"")),
                _ => false,
            }
    });
    match (hits.next(), hits.next()) {
        (Some((k, _)), None) => k.clone(),
        _ => "body".into(),
    }
}

/// The first `backquoted` word of a serde message.
pub fn quoted(msg: &str) -> Option<String> {
    let a = msg.find('`')?;
    let b = msg[a + 1..].find('`')?;
    Some(msg[a + 1..a + 1 + b].to_string())
}

/// The workload name in `/v1/placements/{id}`: percent-decoded UTF-8 and
/// a DNS-1123 label, else 400 naming `id`.
pub struct Id(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let bad = |msg: String| ApiError::new(StatusCode::BAD_REQUEST, Some("id"), msg);
        let axum::extract::Path(id) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e| bad(format!("id: {}", e.body_text())))?;
        vagus_decision::rules::DNS_LABEL
            .check("id", &id)
            .map_err(|e| bad(e.to_string()))?;
        Ok(Id(id))
    }
}

/// A query string parsed into `T` (unknown parameters refused), else 400
/// naming the parameter.
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let q = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(q.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(Params)
            .map_err(|e| {
                let path = e.path().to_string();
                let msg = e.inner().to_string();
                let field = if path != "." && !path.is_empty() {
                    path
                } else {
                    quoted(&msg).unwrap_or_else(|| "query".into())
                };
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    Some(&field),
                    format!("{field}: {msg}"),
                )
            })
    }
}

/// Gives every error answer the API's JSON shape: what the handlers
/// answer already has it; what axum or a layer answers (405 with its
/// `Allow`, 413, …) is rewritten, its headers kept. A request whose path
/// and query are longer than [`URI_LIMIT`] is answered 414.
pub async fn json_errors(req: Request, next: axum::middleware::Next) -> Response {
    let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > URI_LIMIT {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            Some("uri"),
            format!("uri: {uri_len} bytes; at most {URI_LIMIT}"),
        )
        .into_response();
    }
    let r = next.run(req).await;
    let status = r.status();
    let is_json = r
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return r;
    }
    let (mut parts, body) = r.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let reason = status.canonical_reason().unwrap_or("error");
    let (field, error) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (
            Some("method"),
            format!(
                "method: not allowed here; allowed: {}",
                parts
                    .headers
                    .get(header::ALLOW)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
            ),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            Some("body"),
            format!("body: larger than {BODY_LIMIT} bytes"),
        ),
        _ if text.is_empty() => (None, reason.to_string()),
        _ => (None, format!("{reason}: {text}")),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    let mut out = ApiError::new(status, field, error).into_response();
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}
