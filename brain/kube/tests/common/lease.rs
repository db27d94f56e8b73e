//! A Kubernetes API server's Lease endpoints behind a tower-test mock: it
//! keeps one Lease as the API server would (create, get, merge and
//! strategic patches, and server-side apply refusing to take a field
//! another manager holds), and the replicas' pods, for the leader's label
//! (merge patches; lists by label selector). Shared by the leader-election
//! tests here and the brain's (`#[path]`-included there).
#![allow(dead_code)]

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

pub const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/vagus/leases";

/// (method, path, content type, body) of a request.
pub type Logged = (String, String, String, Value);

#[derive(Clone, Default)]
pub struct LeaseServer {
    pub lease: Arc<Mutex<Option<Value>>>,
    pub log: Arc<Mutex<Vec<Logged>>>,
    version: Arc<Mutex<u64>>,
    /// Pods in namespace vagus, by name.
    pub pods: Arc<Mutex<std::collections::BTreeMap<String, Value>>>,
}

const PODS: &str = "/api/v1/namespaces/vagus/pods";

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code})
}

impl LeaseServer {
    /// A pod named `name` in namespace vagus.
    pub fn add_pod(&self, name: &str) {
        self.pods.lock().unwrap().insert(
            name.into(),
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "vagus", "labels": {"app": "vagus-brain"}}}),
        );
    }

    /// The value of label `key` on pod `name`.
    pub fn label(&self, name: &str, key: &str) -> Option<String> {
        self.pods.lock().unwrap()[name]["metadata"]["labels"][key]
            .as_str()
            .map(str::to_string)
    }

    fn pod(&self, method: &str, path: &str, query: &str, body: &Value) -> (u16, Value) {
        let mut pods = self.pods.lock().unwrap();
        match (
            method,
            path.strip_prefix(PODS).and_then(|p| p.strip_prefix('/')),
        ) {
            ("GET", None) => {
                // labelSelector=KEY=VALUE, the only selector the brain sends.
                let selector = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("labelSelector="))
                    .map(|s| s.replace("%2F", "/").replace("%3D", "="))
                    .unwrap_or_default();
                let (key, value) = selector.split_once('=').unwrap_or(("", ""));
                let items: Vec<Value> = pods
                    .values()
                    .filter(|p| key.is_empty() || p["metadata"]["labels"][key] == value)
                    .cloned()
                    .collect();
                (
                    200,
                    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
            ("PATCH", Some(name)) => match pods.get_mut(name) {
                Some(p) => {
                    json_patch::merge(p, body);
                    (200, p.clone())
                }
                None => (
                    404,
                    status(404, "NotFound", &format!("pods \"{name}\" not found")),
                ),
            },
            _ => (405, status(405, "MethodNotAllowed", "")),
        }
    }

    fn answer(&self, method: &str, path: &str, ctype: &str, body: &Value) -> (u16, Value) {
        let mut lease = self.lease.lock().unwrap();
        let bump = |l: &mut Value| {
            let mut v = self.version.lock().unwrap();
            *v += 1;
            l["metadata"]["resourceVersion"] = json!(v.to_string());
        };
        let named = path.starts_with(&format!("{LEASE}/vagus-brain"));
        match (method, named) {
            ("GET", true) => match lease.as_ref() {
                Some(l) => (200, l.clone()),
                None => (
                    404,
                    status(404, "NotFound", "leases \"vagus-brain\" not found"),
                ),
            },
            ("POST", false) => {
                if lease.is_some() {
                    return (
                        409,
                        status(
                            409,
                            "AlreadyExists",
                            "leases \"vagus-brain\" already exists",
                        ),
                    );
                }
                let mut l = body.clone();
                bump(&mut l);
                *lease = Some(l.clone());
                (201, l)
            }
            ("PATCH", true) => {
                let Some(l) = lease.as_mut() else {
                    return (
                        404,
                        status(404, "NotFound", "leases \"vagus-brain\" not found"),
                    );
                };
                // Server-side apply may not take a holder another manager set.
                let holder = &l["spec"]["holderIdentity"];
                let wants = &body["spec"]["holderIdentity"];
                if ctype.starts_with("application/apply-patch")
                    && !holder.is_null()
                    && !wants.is_null()
                    && holder != wants
                {
                    return (
                        409,
                        status(
                            409,
                            "Conflict",
                            "Apply failed with 1 conflict: conflict with another manager: .spec.holderIdentity",
                        ),
                    );
                }
                let mut patch = body.clone();
                if let Some(o) = patch.as_object_mut() {
                    o.remove("apiVersion");
                    o.remove("kind");
                }
                json_patch::merge(l, &patch);
                bump(l);
                (200, l.clone())
            }
            _ => (405, status(405, "MethodNotAllowed", "")),
        }
    }

    /// The answer (status, body) to a request for a Lease or a pod of
    /// namespace vagus, as the API server gives it.
    pub fn respond(
        &self,
        method: &str,
        path: &str,
        query: &str,
        ctype: &str,
        body: &Value,
    ) -> (u16, Value) {
        if path.starts_with(PODS) {
            self.pod(method, path, query, body)
        } else {
            self.answer(method, path, ctype, body)
        }
    }

    /// Answers a tower-test mock's requests (a kube-rs client's) until it closes.
    pub async fn run(self, mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>) {
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let path = parts.uri.path().to_string();
            let ctype = parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let method = parts.method.as_str();
            let query = parts.uri.query().unwrap_or("");
            let (code, answer) = self.respond(method, &path, query, &ctype, &body);
            self.log
                .lock()
                .unwrap()
                .push((parts.method.to_string(), path, ctype, body));
            send.send_response(
                Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
        }
    }

    pub fn holder(&self) -> Option<String> {
        let l = self.lease.lock().unwrap();
        l.as_ref()?["spec"]["holderIdentity"]
            .as_str()
            .map(str::to_string)
    }
}
