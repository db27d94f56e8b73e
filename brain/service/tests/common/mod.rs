//! What the HTTP tests share: a brain started in-process on real TCP with
//! a real SQLite trail, tokens of each role, and a raw HTTP/1.1 client.
#![allow(dead_code)]

pub mod kube;
pub mod postgres;
pub mod stream;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use vagus_brain::http::auth::{Role, Token, Tokens};
use vagus_brain::{Config, HttpConfig, Service};
use vagus_decision::{GpuSpec, NodeSpec};

pub const ADMIN: &str = "admin-token-000000000001";
pub const OPERATOR: &str = "operator-token-00000001";
pub const VIEWER: &str = "viewer-token-0000000001";
pub const GATEWAY: &str = "gateway-token-000000001";

pub struct Api {
    pub addr: std::net::SocketAddr,
    /// The trail's SQLite file (unused with a database).
    pub db: PathBuf,
    _rt: tokio::runtime::Runtime,
}

pub fn node(name: &str, model: &str, gpus: usize) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        cpu_milli: 64_000,
        memory_mib: 256 * 1024,
        labels: Default::default(),
        gpus: (0..gpus)
            .map(|_| GpuSpec {
                model: model.into(),
                sms: None,
                memory_gb: None,
                tdp_w: None,
                throttling: false,
            })
            .collect(),
    }
}

pub fn tokens() -> Tokens {
    let t = |name: &str, role, token: &str| Token {
        name: name.into(),
        role,
        token: token.into(),
    };
    Tokens::new(vec![
        t("ada", Role::Admin, ADMIN),
        t("otto", Role::Operator, OPERATOR),
        t("vic", Role::Viewer, VIEWER),
        t("gus", Role::Gateway, GATEWAY),
    ])
    .unwrap()
}

/// A brain with nodes h1 (2 × H100) and a1 (2 × A100).
pub fn start(tag: &str, db: Option<PathBuf>) -> Api {
    start_with(
        tag,
        db,
        vec![
            node("h1", "NVIDIA H100 80GB HBM3", 2),
            node("a1", "NVIDIA A100-SXM4-80GB", 2),
        ],
    )
}

/// A brain with these nodes, its trail at `db` (a fresh one when `None`).
pub fn start_with(tag: &str, db: Option<PathBuf>, nodes: Vec<NodeSpec>) -> Api {
    start_on(tag, db, None, nodes)
}

/// A brain with these nodes, its trail (and ledger) in the PostgreSQL
/// database `url`.
pub fn start_in(tag: &str, url: &str, nodes: Vec<NodeSpec>) -> Api {
    start_on(
        tag,
        None,
        Some(vagus_brain::database::Database::at(url)),
        nodes,
    )
}

/// A brain with nodes h1 and a1, its trail in the database `db`.
pub fn start_on_database(tag: &str, db: vagus_brain::database::Database) -> Api {
    start_on(
        tag,
        None,
        Some(db),
        vec![
            node("h1", "NVIDIA H100 80GB HBM3", 2),
            node("a1", "NVIDIA A100-SXM4-80GB", 2),
        ],
    )
}

fn start_on(
    tag: &str,
    db: Option<PathBuf>,
    database: Option<vagus_brain::database::Database>,
    nodes: Vec<NodeSpec>,
) -> Api {
    let db = db.unwrap_or_else(|| {
        let d = std::env::temp_dir().join(format!("vagus-api-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d.join("audit.sqlite")
    });
    let clock = Arc::new(AtomicU64::new(1_000));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let svc = rt
        .block_on(Service::start(Config {
            http: Some(HttpConfig {
                addr: "127.0.0.1:0".parse().unwrap(),
                tokens: tokens(),
                audit: database.is_none().then(|| db.clone()),
                core: vagus_decision::Config::default(),
                nodes,
                clock: Some(Box::new(move || clock.load(Ordering::Relaxed))),
                scheduler: None,
                kubernetes: None,
            }),
            quic: None,
            sync_every: Duration::from_secs(1),
            control_record: None,
            database,
            lease: None,
        }))
        .unwrap();
    let addr = svc.http_addr.unwrap();
    Api { addr, db, _rt: rt }
}

/// (status, body as JSON or a string).
pub fn call(
    api: &Api,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    call_at(api.addr, method, path, token, body)
}

pub fn call_at(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    try_call_at(addr, method, path, token, body)
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

/// [`call_at`], with a connection that fails (refused, reset, cut short)
/// as an error.
pub fn try_call_at(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<(u16, serde_json::Value)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    if let Some(t) = token {
        req += &format!("Authorization: Bearer {t}\r\n");
    }
    let body = body.unwrap_or("");
    req += &format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    if !String::from_utf8_lossy(&out).contains("\r\n\r\n") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the connection closed before a full answer",
        ));
    }
    Ok(parse_response(&out))
}

pub fn parse_response(out: &[u8]) -> (u16, serde_json::Value) {
    let text = String::from_utf8_lossy(out);
    let (head, body) = text.split_once("\r\n\r\n").expect("a full response");
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    let v = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    (status, v)
}

pub fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

pub fn profile(name: &str, model: &str) -> String {
    serde_json::json!({
        "name": name, "model_id": model, "model_size_gb": 14.0, "batch": 8, "seq_len": 2048,
        "priority": "P2", "sla_ms": 100, "tenant": "acme", "expected_duration_s": 3600
    })
    .to_string()
}

pub fn rows(db: &PathBuf, workload: &str) -> i64 {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row(
        "SELECT COUNT(*) FROM decisions WHERE workload = ?1",
        [workload],
        |r| r.get(0),
    )
    .unwrap()
}

/// Sends `request` as it is; (status, head, body as JSON or a string).
pub fn raw(addr: std::net::SocketAddr, request: &[u8]) -> (u16, String, serde_json::Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let head = text
        .split_once("\r\n\r\n")
        .map(|(h, _)| h.to_string())
        .unwrap_or_default();
    let (status, body) = parse_response(&out);
    (status, head.to_ascii_lowercase(), body)
}

/// `POST /v1/placements` as the operator.
pub fn place(api: &Api, body: &str) -> (u16, serde_json::Value) {
    call(api, "POST", "/v1/placements", Some(OPERATOR), Some(body))
}
