//! Fetching serving endpoints: one task that, every period, GETs every
//! endpoint at once over kept-alive connections and asks starting
//! replicas' `/health`; pages are read (see [`crate::serving`]) outside the
//! node's lock and only the differences are taken under it.

use crate::node::Node;
use crate::run::lock;
use crate::serving::read;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The largest metrics page read (a vLLM page is tens of KiB).
const MAX_PAGE: usize = 4 << 20;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// One GET of `url`: the page, or why there is none.
async fn fetch(client: &HttpClient, url: &hyper::Uri, timeout: Duration) -> Result<String, String> {
    let get = async {
        let resp = client
            .get(url.clone())
            .await
            .map_err(|e| format!("GET {url}: {}", source_chain(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("GET {url}: {status}"));
        }
        let body = Limited::new(resp.into_body(), MAX_PAGE)
            .collect()
            .await
            .map_err(|e| format!("GET {url}: reading the page: {e}"))?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| format!("GET {url}: the page is not UTF-8"))
    };
    tokio::time::timeout(timeout, get)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "GET {url}: no answer in {} ms",
                timeout.as_millis()
            ))
        })
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Starts the scraping task (on the current tokio runtime): every
/// `period`, every endpoint of `node` fetched at once (the list is read
/// anew each time: replicas come and go), and every starting replica's
/// `/health` asked.
pub fn spawn(node: Arc<Mutex<Node>>, period: Duration) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(1)));
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    // A page slower than this is a failed scrape, not a stalled window.
    let timeout = period.max(Duration::from_secs(2));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (urls, probes) = {
                let n = lock(&node);
                let urls: Vec<String> = n
                    .serving
                    .endpoints
                    .iter()
                    .map(|e| e.target.url.clone())
                    .collect();
                let probes = n
                    .replicas
                    .as_ref()
                    .map(|r| r.to_probe())
                    .unwrap_or_default();
                (urls, probes)
            };
            let scrapes = urls.iter().map(|url| {
                let client = &client;
                async move {
                    let scraped = match url.parse::<hyper::Uri>() {
                        Ok(uri) => fetch(client, &uri, timeout).await.and_then(|t| read(&t)),
                        Err(e) => Err(format!("{url}: {e}")),
                    };
                    (url, scraped)
                }
            });
            let health = probes.iter().map(|(id, port)| {
                let client = &client;
                async move {
                    let uri: hyper::Uri = format!("http://127.0.0.1:{port}/health")
                        .parse()
                        .expect("a valid URL");
                    let ok = tokio::time::timeout(timeout, client.get(uri))
                        .await
                        .is_ok_and(|r| r.is_ok_and(|r| r.status().is_success()));
                    (id, ok)
                }
            });
            let (scraped, healthy) = futures_util::future::join(
                futures_util::future::join_all(scrapes),
                futures_util::future::join_all(health),
            )
            .await;
            let mut n = lock(&node);
            for (url, s) in scraped {
                if let Some(e) = n.serving.get_mut(url) {
                    e.observe(s);
                }
            }
            if let Some(r) = &mut n.replicas {
                for (id, ok) in healthy {
                    r.healthy(id, ok);
                }
            }
        }
    });
}
