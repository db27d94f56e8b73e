//! The Kubernetes executor against a recorded API server (a tower-test
//! mock behind a real kube-rs client; no API server can run here): the
//! pods it creates and deletes, asserted request by request, and its
//! reflectors' stores fed the watch events Kubernetes sends (kube-runtime's
//! own store and event types) — a pod deleted behind its back, a node gone
//! not ready — reconciled into the brain's state.

mod common;

use common::kube::{ApiServer, Brain, Seen, fixture, post_placement, start, start_with, trail};
use common::{ADMIN, call_at};
use http::{Request, Response};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::client::Body;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher::Event;
use serde_json::{Value, json};
use tokio::sync::watch;
use vagus_brain::kube_exec::{KubeExecutor, View};
use vagus_kube::executor::Applier;

struct Exec {
    ex: KubeExecutor,
    pods: Writer<Pod>,
    nodes: Writer<Node>,
    services: Writer<Service>,
    server: ApiServer,
    leading: watch::Sender<bool>,
}

fn node(name: &str, ready: bool) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
            "reason": if ready { "KubeletReady" } else { "NodeStatusUnknown" },
            "message": if ready { "kubelet is posting ready status" } else { "Kubelet stopped posting node status." }}]}
    }))
    .unwrap()
}

/// An executor on its own mock API server, its stores listed (h1 and a1
/// ready, no pods, no Services).
fn executor(b: &Brain) -> Exec {
    let (mock, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = ApiServer::default();
    b.rt.spawn(server.clone().run(handle));
    let _in = b.rt.enter();
    let applier = Applier::new(kube::Client::new(mock, "default"), 30);
    let (pod_store, mut pods) = reflector::store::<Pod>();
    let (node_store, mut nodes) = reflector::store::<Node>();
    let (service_store, mut services) = reflector::store::<Service>();
    pods.apply_watcher_event(&Event::Init);
    pods.apply_watcher_event(&Event::InitDone);
    services.apply_watcher_event(&Event::Init);
    services.apply_watcher_event(&Event::InitDone);
    nodes.apply_watcher_event(&Event::Init);
    for n in ["h1", "a1"] {
        nodes.apply_watcher_event(&Event::InitApply(node(n, true)));
    }
    nodes.apply_watcher_event(&Event::InitDone);
    let (leading, rx) = watch::channel(true);
    Exec {
        ex: KubeExecutor::new(
            applier,
            View {
                pods: pod_store,
                nodes: node_store,
                services: service_store,
            },
            rx,
        ),
        pods,
        nodes,
        services,
        server,
        leading,
    }
}

fn round(b: &Brain, e: &mut Exec) -> Vec<String> {
    b.rt.block_on(e.ex.round(&b.core))
}

fn place(b: &Brain, name: &str) -> String {
    place_as(b, name, name)
}

/// Places `name` serving `model`; its node.
fn place_as(b: &Brain, name: &str, model: &str) -> String {
    let body = json!({"name": name, "model_id": model, "model_size_gb": 7.0, "batch": 4,
        "seq_len": 1024, "priority": "P1", "sla_ms": 50, "tenant": "acme",
        "expected_duration_s": 600, "share_pct": 30});
    let (s, v) = post_placement(b, &body);
    assert_eq!(s, 201, "{v}");
    placement(b, name).unwrap()["node"]
        .as_str()
        .unwrap()
        .to_string()
}

fn placement(b: &Brain, name: &str) -> Option<Value> {
    let (s, v) = call_at(
        b.api,
        "GET",
        &format!("/v1/placements/{name}"),
        Some(ADMIN),
        None,
    );
    (s == 200).then(|| v["placement"].clone())
}

/// The pod a create asked for, as the API server would store it.
fn stored(seen: &Seen, uid: &str) -> Pod {
    let mut p = seen.body.clone();
    p["metadata"]["uid"] = json!(uid);
    serde_json::from_value(p).unwrap()
}

#[test]
fn placements_become_pods_made_again_when_deleted_and_deleted_gracefully_when_removed() {
    let b = start("exec-pods", false);
    let mut e = executor(&b);
    let node = place(&b, "chat");
    let did = round(&b, &mut e);
    assert_eq!(did, ["created pod default/chat"]);
    let seen = e.server.take();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_eq!(seen[0].at(), ("POST", "/api/v1/namespaces/default/pods?"));
    // And its Service, for the routes.
    assert_eq!(
        seen[1].at(),
        ("POST", "/api/v1/namespaces/default/services?")
    );
    assert_eq!(
        seen[1].body["spec"]["selector"],
        json!({"vagus.dev/workload": "chat"})
    );
    assert_eq!(seen[1].body["spec"]["ports"][0]["targetPort"], "http");
    let pod = &seen[0].body;
    assert_eq!(pod["metadata"]["name"], "chat");
    assert_eq!(pod["metadata"]["labels"]["vagus.dev/workload"], "chat");
    assert_eq!(
        pod["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "vagus"
    );
    assert_eq!(pod["spec"]["nodeName"], node.as_str());
    let share = placement(&b, "chat").unwrap()["share_pct"].to_string();
    assert_eq!(
        pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/mps"],
        share.as_str()
    );
    // The reflectors see them: nothing to do.
    e.pods
        .apply_watcher_event(&Event::Apply(stored(&seen[0], "uid-1")));
    let svc: Service = serde_json::from_value(seen[1].body.clone()).unwrap();
    e.services.apply_watcher_event(&Event::Apply(svc.clone()));
    assert!(round(&b, &mut e).is_empty());
    assert!(e.server.take().is_empty());
    // Its Service deleted behind the brain's back: made again.
    e.services.apply_watcher_event(&Event::Delete(svc.clone()));
    assert_eq!(
        round(&b, &mut e),
        ["created service default/chat: it was gone"]
    );
    let made = e.server.take();
    assert_eq!(made.len(), 1, "{made:#?}");
    assert_eq!(
        made[0].at(),
        ("POST", "/api/v1/namespaces/default/services?")
    );
    assert_eq!(made[0].body, seen[1].body);
    e.services.apply_watcher_event(&Event::Apply(svc));
    // Deleted behind the brain's back: made again.
    e.pods
        .apply_watcher_event(&Event::Delete(stored(&seen[0], "uid-1")));
    assert_eq!(round(&b, &mut e), ["created pod default/chat"]);
    let again = e.server.take();
    assert_eq!(again[0].body, seen[0].body);
    e.pods
        .apply_watcher_event(&Event::Apply(stored(&again[0], "uid-2")));
    // Removed through the API: its pod deleted with the grace period.
    let (s, _) = call_at(b.api, "DELETE", "/v1/placements/chat", Some(ADMIN), None);
    assert!(s < 300, "{s}");
    assert_eq!(round(&b, &mut e), ["deleted pod default/chat"]);
    let del = e.server.take();
    assert_eq!(del.len(), 2, "{del:#?}");
    assert_eq!(
        del[0].at(),
        ("DELETE", "/api/v1/namespaces/default/pods/chat?")
    );
    assert_eq!(del[0].body["gracePeriodSeconds"], 30, "{:?}", del[0].body);
    assert_eq!(
        del[1].at(),
        ("DELETE", "/api/v1/namespaces/default/services/chat?")
    );
    // While it terminates, and once it is gone, nothing more.
    let mut terminating = stored(&again[0], "uid-2");
    terminating.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-12-04T19:00:00Z".parse().unwrap(),
        ));
    e.pods
        .apply_watcher_event(&Event::Apply(terminating.clone()));
    assert!(round(&b, &mut e).is_empty());
    e.pods.apply_watcher_event(&Event::Delete(terminating));
    assert!(round(&b, &mut e).is_empty());
    assert!(e.server.take().is_empty());
}

#[test]
fn a_pod_kube_scheduler_bound_that_is_deleted_ends_its_placement() {
    let b = start("exec-bound", true);
    let mut e = executor(&b);
    let (_, r) = call_at(
        b.extender,
        "POST",
        "/scheduler/bind",
        None,
        Some(&fixture("bind-chat-0.json").to_string()),
    );
    assert_eq!(r, json!({"Error": ""}));
    // Not the brain's pod to make, and not gone before it was ever seen.
    assert!(round(&b, &mut e).is_empty());
    let mut pod: Pod = serde_json::from_value(fixture("pod-chat-0.json")).unwrap();
    pod.metadata
        .labels
        .get_or_insert_default()
        .insert("vagus.dev/workload".into(), "team-a-chat-0".into());
    pod.spec.as_mut().unwrap().node_name = Some("a1".into());
    e.pods.apply_watcher_event(&Event::Apply(pod.clone()));
    assert!(round(&b, &mut e).is_empty());
    assert!(placement(&b, "team-a-chat-0").is_some());
    e.pods.apply_watcher_event(&Event::Delete(pod));
    assert_eq!(
        round(&b, &mut e),
        ["removed team-a-chat-0: its pod is gone"]
    );
    assert!(placement(&b, "team-a-chat-0").is_none());
    let rows = trail(&b, "team-a-chat-0");
    assert_eq!(rows.last().unwrap()["actor"], "kubernetes", "{rows:?}");
    assert_eq!(rows.last().unwrap()["path"], "remove", "{rows:?}");
    // No request of its own was made for it.
    assert!(e.server.take().is_empty());
}

#[test]
fn a_node_kubernetes_reports_not_ready_is_down_until_it_is_ready() {
    let b = start("exec-node", false);
    let mut e = executor(&b);
    let first = place(&b, "chat");
    round(&b, &mut e);
    let created = e.server.take();
    e.pods
        .apply_watcher_event(&Event::Apply(stored(&created[0], "uid-1")));
    e.nodes
        .apply_watcher_event(&Event::Apply(node(&first, false)));
    let did = round(&b, &mut e);
    assert!(
        did[0].starts_with(&format!(
            "{first} is down: Kubernetes reports the node not ready (NodeStatusUnknown"
        )),
        "{did:?}"
    );
    // Its workload moved; the old pod goes, the new one comes next round.
    let moved = placement(&b, "chat").unwrap()["node"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(moved, first);
    assert_eq!(did[1..], ["deleted pod default/chat"]);
    e.pods
        .apply_watcher_event(&Event::Delete(stored(&created[0], "uid-1")));
    assert_eq!(round(&b, &mut e), ["created pod default/chat"]);
    let made = e.server.take();
    let pod = pod_create(&made);
    assert_eq!(pod.body["spec"]["nodeName"], moved.as_str());
    let (_, ev) = call_at(b.api, "GET", "/v1/events", Some(ADMIN), None);
    assert!(ev.to_string().contains("node_down"), "{ev}");
    // Ready again: the node is back.
    e.nodes
        .apply_watcher_event(&Event::Apply(node(&first, true)));
    let did = round(&b, &mut e);
    assert!(
        did[0].starts_with(&format!("{first} is ready again")),
        "{did:?}"
    );
    let (_, nodes) = call_at(b.api, "GET", "/v1/nodes", Some(ADMIN), None);
    let n = nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == first.as_str())
        .unwrap();
    assert!(n["down"].is_null(), "{n}");
}

#[test]
fn a_brain_that_does_not_lead_does_nothing() {
    let b = start("exec-follower", false);
    let mut e = executor(&b);
    e.leading.send(false).unwrap();
    place(&b, "chat");
    assert!(round(&b, &mut e).is_empty());
    assert!(e.server.take().is_empty());
    e.leading.send(true).unwrap();
    assert_eq!(round(&b, &mut e), ["created pod default/chat"]);
}

/// The pod create among `seen`.
fn pod_create(seen: &[Seen]) -> &Seen {
    seen.iter()
        .find(|r| r.at() == ("POST", "/api/v1/namespaces/default/pods?"))
        .expect("a pod created")
}

/// The pod as the reflector sees it once its kubelet says it is ready.
fn ready(seen: &Seen, uid: &str) -> Pod {
    let mut p = stored(seen, uid);
    p.status = Some(
        serde_json::from_value(json!({"phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}]}))
        .unwrap(),
    );
    p
}

fn control(b: &Brain, c: Value) {
    let (s, v) = call_at(
        b.api,
        "POST",
        "/v1/controls",
        Some(ADMIN),
        Some(&c.to_string()),
    );
    assert!(s < 300, "{s} {v}");
}

/// The backends (service, weight) of each HTTPRoute applied, in order.
fn routes(seen: &[Seen]) -> Vec<Vec<(String, u64)>> {
    seen.iter()
        .filter(|s| s.path.contains("/httproutes/"))
        .map(|s| {
            assert_eq!(s.method, "PATCH");
            assert!(
                s.path.starts_with(
                    "/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes/vagus-chat?"
                ) && s.path.contains("fieldManager=vagus-brain")
                    && s.path.contains("force=true"),
                "{}",
                s.path
            );
            assert_eq!(
                s.content_type.as_deref(),
                Some("application/apply-patch+yaml")
            );
            assert_eq!(s.body["spec"]["parentRefs"], json!([{"name": "vagus"}]));
            s.body["spec"]["rules"][0]["backendRefs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| {
                    assert_eq!(b["port"], 8000);
                    (
                        b["name"].as_str().unwrap().to_string(),
                        b["weight"].as_u64().unwrap(),
                    )
                })
                .collect()
        })
        .collect()
}

#[test]
fn a_canary_moves_a_models_httproute_weights_in_order() {
    let mut cfg = vagus_decision::Config::default();
    cfg.manifest.gateway = Some("vagus".into());
    let b = start_with("exec-routes", false, cfg);
    let mut e = executor(&b);
    let place_model = |name: &str| {
        place_as(&b, name, "chat");
    };
    let s = |v: &[(&str, u64)]| -> Vec<(String, u64)> {
        v.iter().map(|(n, w)| (n.to_string(), *w)).collect()
    };
    let mut applied = Vec::new();
    // The old replica: no traffic until its pod is ready, then all.
    place_model("chat-a");
    round(&b, &mut e);
    let a = e.server.take();
    applied.extend(routes(&a));
    e.pods
        .apply_watcher_event(&Event::Apply(ready(pod_create(&a), "uid-a")));
    round(&b, &mut e);
    applied.extend(routes(&e.server.take()));
    // The new one comes in as a canary at 10 %, then half, then all.
    control(
        &b,
        json!({"action": "weight", "workload": "chat-a", "weight": 90}),
    );
    place_model("chat-b");
    control(
        &b,
        json!({"action": "weight", "workload": "chat-b", "weight": 10}),
    );
    round(&b, &mut e);
    let bb = e.server.take();
    applied.extend(routes(&bb));
    let pod_b = pod_create(&bb);
    e.pods
        .apply_watcher_event(&Event::Apply(ready(pod_b, "uid-b")));
    round(&b, &mut e);
    applied.extend(routes(&e.server.take()));
    control(
        &b,
        json!({"action": "weight", "workload": "chat-a", "weight": 50}),
    );
    control(
        &b,
        json!({"action": "weight", "workload": "chat-b", "weight": 50}),
    );
    round(&b, &mut e);
    applied.extend(routes(&e.server.take()));
    control(
        &b,
        json!({"action": "weight", "workload": "chat-a", "weight": 0}),
    );
    round(&b, &mut e);
    applied.extend(routes(&e.server.take()));
    // The old one drained and removed: its pod goes, the route keeps the new.
    let (st, _) = call_at(b.api, "DELETE", "/v1/placements/chat-a", Some(ADMIN), None);
    assert!(st < 300);
    round(&b, &mut e);
    let last = e.server.take();
    applied.extend(routes(&last));
    // Routing stops before the pod goes.
    let patched = last
        .iter()
        .position(|r| r.path.contains("/httproutes/"))
        .unwrap();
    let deleted = last
        .iter()
        .position(|r| r.at() == ("DELETE", "/api/v1/namespaces/default/pods/chat-a?"))
        .unwrap();
    assert!(patched < deleted, "{last:#?}");
    assert!(
        last.iter()
            .any(|r| r.method == "DELETE" && r.path == "/api/v1/namespaces/default/pods/chat-a?")
    );
    assert_eq!(
        applied,
        [
            s(&[("chat-a", 0)]),
            s(&[("chat-a", 100)]),
            s(&[("chat-a", 90), ("chat-b", 0)]),
            s(&[("chat-a", 90), ("chat-b", 10)]),
            s(&[("chat-a", 50), ("chat-b", 50)]),
            s(&[("chat-a", 0), ("chat-b", 50)]),
            s(&[("chat-b", 50)]),
        ]
    );
    // No replica of the model left: its HTTPRoute goes.
    let (st, _) = call_at(b.api, "DELETE", "/v1/placements/chat-b", Some(ADMIN), None);
    assert!(st < 300);
    let did = round(&b, &mut e);
    assert!(
        did.contains(&"deleted HTTPRoute vagus-chat".to_string()),
        "{did:?}"
    );
    let fin = e.server.take();
    assert!(fin.iter().any(|r| r.method == "DELETE"
        && r.path.starts_with(
            "/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes/vagus-chat"
        )));
}

#[test]
fn a_workload_waiting_for_a_node_asks_for_one_with_a_placeholder_pod() {
    let b = start("exec-scale-out", false);
    let mut e = executor(&b);
    // Four whole GPUs: no node here has them.
    let body = json!({"name": "big", "model_id": "big", "model_size_gb": 70.0, "batch": 8,
        "seq_len": 4096, "priority": "P1", "tenant": "acme", "expected_duration_s": 600,
        "gpus": 4});
    let (s, v) = post_placement(&b, &body);
    assert_eq!(s, 202, "{v}");
    let family = v["decision"]["scale_out"]["gpu_model"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"))
        .to_string();
    assert_eq!(
        round(&b, &mut e),
        ["created pod default/vagus-scale-out-big"]
    );
    let seen = e.server.take();
    let pod = &seen[0].body;
    assert_eq!(
        pod["spec"]["nodeSelector"],
        json!({"vagus.dev/gpu-family": family})
    );
    let res = &pod["spec"]["containers"][0]["resources"];
    assert_eq!(res["requests"]["nvidia.com/gpu"], "4");
    assert_eq!(pod["metadata"]["labels"]["vagus.dev/scale-out"], "true");
    assert!(pod["spec"].get("nodeName").is_none_or(Value::is_null));
    // Scheduled onto the node the autoscaler added: it stays while the
    // workload waits.
    let mut placed = stored(&seen[0], "uid-p");
    placed.spec.as_mut().unwrap().node_name = Some("new-node".into());
    e.pods.apply_watcher_event(&Event::Apply(placed.clone()));
    assert!(round(&b, &mut e).is_empty());
    // The node's agent reports it: the workload is placed, the placeholder goes.
    let mut n = common::node("new-node", "NVIDIA H100 80GB HBM3", 8);
    n.cpu_milli = 128_000;
    let (s, v) = call_at(
        b.api,
        "POST",
        "/v1/nodes",
        Some(ADMIN),
        Some(&serde_json::to_string(&n).unwrap()),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(placement(&b, "big").unwrap()["node"], "new-node");
    let did = round(&b, &mut e);
    assert_eq!(
        did,
        [
            "created pod default/big",
            "deleted pod default/vagus-scale-out-big"
        ]
    );
}
