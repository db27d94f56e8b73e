//! The gateway's calls to the brain's HTTP API (the routes it reads, the
//! windows it reports): one client, the bearer token, a 5 s limit, and an
//! answer other than 2xx as an error with the brain's own words.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request};
use std::time::Duration;

pub type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// How long the brain may take to answer.
const TIMEOUT: Duration = Duration::from_secs(5);

pub struct Brain {
    /// `http://HOST:PORT`, no trailing `/`.
    base: String,
    auth: HeaderValue,
    client: Client,
}

impl Brain {
    /// The brain at `base` (`http://HOST:PORT`) with bearer `token`.
    pub fn new(base: &str, token: &str, client: Client) -> Result<Brain, String> {
        let base = base.trim_end_matches('/').to_string();
        format!("{base}/v1/routes")
            .parse::<hyper::Uri>()
            .map_err(|e| format!("--brain {base}: {e}"))?;
        let auth = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "the token is not a valid header value".to_string())?;
        Ok(Brain { base, auth, client })
    }

    /// `METHOD path` with `body` (JSON) if any: the answer's body, or why
    /// there is none.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, String> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(header::AUTHORIZATION, self.auth.clone());
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(body.map(Bytes::from).unwrap_or_default()))
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| format!("no answer in {} s", TIMEOUT.as_secs()))?
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let text = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if status.is_success() {
            Ok(text)
        } else {
            Err(format!("{status}: {}", String::from_utf8_lossy(&text)))
        }
    }
}
