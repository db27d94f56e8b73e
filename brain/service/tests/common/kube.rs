//! A Kubernetes API server's side of a tower-test mock behind a real
//! kube-rs client: every request recorded, answered as the API server
//! answers (the pods of tests/fixtures/scheduler).

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vagus_brain::{Config, HttpConfig, SchedulerConfig, Service};
use vagus_kube::binder::Binder;

pub fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/scheduler/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// One request the brain made of the API server.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub content_type: Option<String>,
    pub body: Value,
}

impl Seen {
    /// Its method and path (with the query kube-rs sends).
    pub fn at(&self) -> (&str, &str) {
        (self.method.as_str(), self.path.as_str())
    }
}

/// The fixtures' pods for GET and PATCH; a created pod echoed (201), a
/// deleted one answered 200; a Binding refused (409, as for a pod bound
/// already) while `refuse` is set.
#[derive(Clone, Default)]
pub struct ApiServer {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub refuse: Arc<AtomicBool>,
}

impl ApiServer {
    pub fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut self.seen.lock().unwrap())
    }

    pub async fn run(self, mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>) {
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let seen = Seen {
                method: parts.method.to_string(),
                path: parts.uri.to_string(),
                content_type: parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .map(|v| v.to_str().unwrap().to_string()),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            self.seen.lock().unwrap().push(seen.clone());
            let pod_of = |p: &str| {
                let name = p.split('/').nth(6).unwrap_or_default();
                let name = name.split('?').next().unwrap_or_default().to_string();
                fixture(&format!("pod-{name}.json"))
            };
            let (status, answer) = match seen.method.as_str() {
                "GET" => (200, pod_of(&seen.path)),
                "PATCH" if seen.path.contains("/pods/") => (200, pod_of(&seen.path)),
                "PATCH" => (200, seen.body.clone()),

                "POST" if !seen.path.contains("/binding") => (201, seen.body.clone()),
                "DELETE" => (
                    200,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                ),
                "POST" if self.refuse.load(Ordering::SeqCst) => (
                    409,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": "Operation cannot be fulfilled on pods/binding \"chat-0\": pod chat-0 is already assigned to node \"h1\"",
                        "reason": "Conflict", "code": 409}),
                ),
                "POST" => (
                    201,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                ),
                _ => (405, json!({})),
            };
            send.send_response(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
        }
    }
}

/// A brain in-process: its API's and extender's addresses, the mock API
/// server its binder talks to, and the API itself (for the executor).
pub struct Brain {
    pub api: SocketAddr,
    pub extender: SocketAddr,
    pub server: ApiServer,
    pub core: Arc<vagus_brain::http::Api>,
    pub rt: tokio::runtime::Runtime,
}

/// A brain with nodes h1 (2 × H100) and a1 (2 × A100), its extender on a
/// listener of its own, binding through the mock when `kubernetes`.
pub fn start(tag: &str, kubernetes: bool) -> Brain {
    start_with(tag, kubernetes, vagus_decision::Config::default())
}

/// [`start`] with this core configuration.
pub fn start_with(tag: &str, kubernetes: bool, core: vagus_decision::Config) -> Brain {
    let d = std::env::temp_dir().join(format!("vagus-sched-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = ApiServer::default();
    let binder = kubernetes.then(|| {
        let (mock, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        rt.spawn(server.clone().run(handle));
        let _in = rt.enter();
        Binder::new(kube::Client::new(mock, "default"))
    });
    let svc = rt
        .block_on(Service::start(Config {
            http: Some(HttpConfig {
                addr: "127.0.0.1:0".parse().unwrap(),
                tokens: super::tokens(),
                audit: Some(d.join("audit.sqlite")),
                core,
                nodes: vec![
                    super::node("h1", "NVIDIA H100 80GB HBM3", 2),
                    super::node("a1", "NVIDIA A100-SXM4-80GB", 2),
                ],
                clock: None,
                scheduler: Some(SchedulerConfig {
                    addr: "127.0.0.1:0".parse().unwrap(),
                    binder,
                }),
                kubernetes: None,
            }),
            quic: None,
            sync_every: Duration::from_secs(1),
            control_record: None,
            database: None,
            lease: None,
        }))
        .unwrap();
    let b = Brain {
        api: svc.http_addr.unwrap(),
        extender: svc.scheduler_addr.unwrap(),
        server,
        core: svc.api.clone().unwrap(),
        rt,
    };
    std::mem::forget(svc);
    b
}

/// `POST /v1/placements` of `body` as the admin: the status and answer.
pub fn post_placement(b: &Brain, body: &Value) -> (u16, Value) {
    super::call_at(
        b.api,
        "POST",
        "/v1/placements",
        Some(super::ADMIN),
        Some(&body.to_string()),
    )
}

/// The audit trail's rows for `workload`, oldest first.
pub fn trail(b: &Brain, workload: &str) -> Vec<Value> {
    let (_, d) = super::call_at(
        b.api,
        "GET",
        &format!("/v1/decisions?workload={workload}"),
        Some(super::ADMIN),
        None,
    );
    d["items"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("{d}"))
}
