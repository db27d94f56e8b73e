//! Two `vagus brain --kubernetes --database` processes on one PostgreSQL,
//! contending for one Lease on a fake Kubernetes API server over HTTP
//! (axum): the Lease and the brains' pods kept as
//! brain/kube/tests/common/lease.rs keeps them, empty lists and open
//! watches for the reflectors, the pods and Services the executor creates
//! echoed. The leader is SIGKILLed while a client posts placements; the
//! other takes over within the lease's time and has every acknowledged
//! placement; with its lease taken behind its back, it exits.

use crate::brain_api::{TOKEN, profile, tokens};
use crate::lease::LeaseServer;
use crate::stream::Stream;
use crate::support::*;
use axum::body::Body;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The fake API server's answer to one request.
fn answer(
    server: &LeaseServer,
    method: &str,
    path: &str,
    query: &str,
    body: &Value,
) -> (u16, Value) {
    let list = |kind: &str| json!({"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": []});
    if path.starts_with("/apis/coordination.k8s.io/")
        || path.starts_with("/api/v1/namespaces/vagus/pods")
    {
        return server.respond(method, path, query, "application/merge-patch+json", body);
    }
    match (method, path) {
        ("GET", "/api/v1/pods") => (200, list("PodList")),
        ("GET", "/api/v1/nodes") => (200, list("NodeList")),
        ("GET", "/api/v1/services") => (200, list("ServiceList")),
        ("POST", _) => (201, body.clone()),
        _ => (
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404,
                "reason": "NotFound", "message": format!("{method} {path}")}),
        ),
    }
}

struct FakeApi {
    addr: SocketAddr,
    server: LeaseServer,
    _rt: tokio::runtime::Runtime,
}

fn fake_api() -> FakeApi {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = LeaseServer::default();
    let state = server.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let server = state.clone();
        async move {
            let (parts, body) = req.into_parts();
            let query = parts.uri.query().unwrap_or("").to_string();
            // A watch stays open, with nothing to say.
            if query.contains("watch=true") {
                let never =
                    futures_util::stream::pending::<Result<axum::body::Bytes, std::io::Error>>();
                return http::Response::builder()
                    .header("content-type", "application/json")
                    .body(Body::from_stream(never))
                    .unwrap();
            }
            let bytes = axum::body::to_bytes(body, 1 << 20)
                .await
                .unwrap_or_default();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let (code, v) = answer(
                &server,
                parts.method.as_str(),
                parts.uri.path(),
                &query,
                &body,
            );
            http::Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&v).unwrap()))
                .unwrap()
        }
    });
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move { axum::serve(listener, app).await });
    FakeApi {
        addr,
        server,
        _rt: rt,
    }
}

fn kubeconfig(sim: &Sim, api: SocketAddr) -> String {
    let path = sim.dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{api}\n\
             users:\n- name: brain\n  user:\n    token: fake-token\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: brain\n    namespace: vagus\n\
             current-context: fake\n"
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

/// `vagus brain` as replica `identity`; its API's address (printed at
/// once: a follower answers 503 until it leads).
fn brain(sim: &Sim, identity: &str, url: &str, kubeconfig: &str) -> (BrainProc, SocketAddr) {
    let tokens = tokens(sim);
    let mut cmd = sim.vagus(&[
        "brain",
        "--http",
        "127.0.0.1:0",
        "--tokens",
        &tokens,
        "--database",
        url,
        "--scheduler",
        "127.0.0.1:0",
        "--kubernetes",
        "--lease-namespace",
        "vagus",
        "--identity",
        identity,
        "--lease-seconds",
        "2",
    ]);
    cmd.env("KUBECONFIG", kubeconfig);
    let b = spawn_brain(cmd);
    let addr = b
        .wait_for(Duration::from_secs(30), |v| {
            v["event"] == "following" || v["event"] == "http"
        })
        .unwrap_or_else(|| panic!("{identity} printed no address"))["addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    (b, addr)
}

fn post(addr: SocketAddr, name: &str) -> std::io::Result<u16> {
    use std::io::{Read, Write};
    let body = profile(name);
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        s,
        "POST /v1/placements HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    out.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no answer"))
}

#[test]
fn a_sigkilled_leader_loses_nothing_acknowledged_and_a_deposed_one_exits() {
    let Some(pg) = crate::pg::server("ha") else {
        return;
    };
    let sim = Sim::new("ha");
    let api = fake_api();
    api.server.add_pod("brain-0");
    api.server.add_pod("brain-1");
    let kc = kubeconfig(&sim, api.addr);
    let (mut first, first_addr) = brain(&sim, "brain-0", &pg.url, &kc);
    // The first leads before the second starts.
    let t = Instant::now();
    while api.server.holder().as_deref() != Some("brain-0") || http_status(first_addr) != 200 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "brain-0 did not lead"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (mut second, second_addr) = brain(&sim, "brain-1", &pg.url, &kc);
    assert_eq!(http_status(second_addr), 503, "the follower answers");
    // A client posts without pause to whichever answers.
    let stream = Stream::start([first_addr, second_addr], 0, post);
    stream.wait_for(0, 20, Duration::from_secs(60));
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let killed = Instant::now();
    stream.wait_for(1, 20, Duration::from_secs(60));
    let took = stream.first_by(1).map(|t| t - killed);
    let (acked, refused) = stream.stop();
    eprintln!(
        "{} acknowledged ({} by brain-0 before its SIGKILL); {refused} refused while brain-1 followed; its first answer {took:?} after the kill",
        acked.len(),
        acked.iter().filter(|(_, a)| *a == 0).count(),
    );
    assert!(refused > 0, "brain-1 acknowledged before it led");
    let leader = http_addr_of(second_addr);
    for (name, _) in &acked {
        let (st, v) = crate::brain_api::http(leader, "GET", &format!("/v1/placements/{name}"), "");
        assert_eq!(st, 200, "{name}, acknowledged, is gone: {v}");
    }
    // Its pod carries the leader's label, the dead one's not.
    let label = |p: &str| api.server.label(p, "vagus.dev/leader");
    let t = Instant::now();
    while label("brain-1").is_none() || label("brain-0").is_some() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the label did not move"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Its lease taken behind its back: it exits, to come back a follower.
    {
        let mut l = api.server.lease.lock().unwrap();
        let spec = &mut l.as_mut().unwrap()["spec"];
        spec["holderIdentity"] = json!("brain-9");
        spec["renewTime"] = json!("2099-01-01T00:00:00.000000Z");
        spec["leaseDurationSeconds"] = json!(3600);
    }
    let t = Instant::now();
    let status = loop {
        if let Some(s) = second.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "a deposed brain kept running"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(3), "{status:?}");
}

fn http_status(addr: SocketAddr) -> u16 {
    get(addr, "/healthz").map_or(0, |(s, _)| s)
}

/// The same address, once it answers as the leader.
fn http_addr_of(addr: SocketAddr) -> SocketAddr {
    let t = Instant::now();
    while http_status(addr) != 200 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{addr} does not lead"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    addr
}
