//! Fetching serving endpoints: one thread with its own single-threaded
//! runtime that, every period, GETs every endpoint at once over one
//! kept-alive connection each and asks starting replicas' `/health`;
//! pages are read (see [`crate::serving`]) outside the node's lock and only
//! the differences are taken under it.
//!
//! A thread of its own, not the agent's shared runtime: every scrape's
//! request, response and connection task then run on one thread, with no
//! wake-ups across threads, and hyper's connections are used directly (no
//! pool to check out of). Together these took its HTTP from 1.9 % to 1.1 %
//! of a core for 16 endpoints at 10 Hz (bench/README.md).

use crate::node::Node;
use crate::run::lock;
use crate::serving::Reader;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The largest metrics page read (a vLLM page is tens of KiB).
const MAX_PAGE: usize = 4 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// One endpoint's kept-alive HTTP/1.1 connection (one request at a time).
#[derive(Default)]
struct Connection(Option<SendRequest<Empty<Bytes>>>);

impl Connection {
    /// A connection to `authority` that can take a request now: the one
    /// kept, or a new one (`true` with it).
    async fn ready(
        &mut self,
        authority: &str,
    ) -> Result<(SendRequest<Empty<Bytes>>, bool), String> {
        if let Some(mut s) = self.0.take()
            && s.ready().await.is_ok()
        {
            return Ok((s, false));
        }
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(authority))
            .await
            .map_err(|_| format!("connecting to {authority}: no answer in 1 s"))?
            .map_err(|e| format!("connecting to {authority}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("connecting to {authority}: {e}"))?;
        // Ends when the server closes it or the sender is dropped.
        tokio::spawn(conn);
        Ok((sender, true))
    }

    /// `GET url`: its status and body. A kept connection that the server
    /// closed before taking the request is retried once on a new one.
    async fn get(&mut self, url: &hyper::Uri) -> Result<(hyper::StatusCode, Bytes), String> {
        let authority = url
            .authority()
            .ok_or_else(|| format!("{url}: no host"))?
            .as_str();
        let path = url.path_and_query().map_or("/", |p| p.as_str());
        loop {
            let (mut sender, fresh) = self.ready(authority).await?;
            let req = hyper::Request::get(path)
                .header(hyper::header::HOST, authority)
                .body(Empty::new())
                .map_err(|e| format!("GET {url}: {e}"))?;
            let resp = match sender.send_request(req).await {
                Ok(r) => r,
                Err(e) if !fresh && (e.is_canceled() || e.is_incomplete_message()) => continue,
                Err(e) => return Err(format!("GET {url}: {}", source_chain(&e))),
            };
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_PAGE)
                .collect()
                .await
                .map_err(|e| format!("GET {url}: reading the page: {e}"))?
                .to_bytes();
            self.0 = Some(sender);
            return Ok((status, body));
        }
    }
}

/// One scrape of `url`: the page, or why there is none.
async fn fetch(conn: &mut Connection, url: &str, timeout: Duration) -> Result<String, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let (status, body) = tokio::time::timeout(timeout, conn.get(&uri))
        .await
        .map_err(|_| format!("GET {url}: no answer in {} ms", timeout.as_millis()))??;
    if !status.is_success() {
        return Err(format!("GET {url}: {status}"));
    }
    String::from_utf8(body.into()).map_err(|_| format!("GET {url}: the page is not UTF-8"))
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

/// Starts the scraping thread: every `period`, every endpoint of `node`
/// fetched at once (the list is read anew each time: replicas come and
/// go), and every starting replica's `/health` asked.
pub fn spawn(node: Arc<Mutex<Node>>, period: Duration) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("vagus-scrape".into())
        .spawn(move || rt.block_on(scrape(node, period)))?;
    Ok(())
}

async fn scrape(node: Arc<Mutex<Node>>, period: Duration) {
    // A page slower than this is a failed scrape, not a stalled window.
    let timeout = period.max(Duration::from_secs(2));
    // Each endpoint's connection and reader are its own; so is each probe's
    // connection.
    let mut pages: HashMap<String, (Connection, Reader)> = HashMap::new();
    let mut probes: HashMap<String, Connection> = HashMap::new();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (urls, starting) = {
            let n = lock(&node);
            let urls: Vec<String> = n
                .serving
                .endpoints
                .iter()
                .map(|e| e.target.url.clone())
                .collect();
            let starting = n
                .replicas
                .as_ref()
                .map(|r| r.to_probe())
                .unwrap_or_default();
            (urls, starting)
        };
        pages.retain(|url, _| urls.contains(url));
        probes.retain(|id, _| starting.iter().any(|(s, _)| s == id));
        for url in &urls {
            pages.entry(url.clone()).or_default();
        }
        for (id, _) in &starting {
            probes.entry(id.clone()).or_default();
        }
        let scrapes = pages.iter_mut().map(|(url, (conn, reader))| async move {
            let scraped = fetch(conn, url, timeout)
                .await
                .and_then(|t| reader.read(&t));
            (url, scraped)
        });
        let health = probes.iter_mut().map(|(id, conn)| {
            let port = starting
                .iter()
                .find(|(s, _)| s == id)
                .map_or(0, |(_, p)| *p);
            async move {
                let url = format!("http://127.0.0.1:{port}/health");
                let ok = fetch(conn, &url, timeout).await.is_ok();
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
}
