//! The scheduler extender, asked as kube-scheduler asks it: fixtures in
//! its exact JSON (`k8s.io/kube-scheduler/extender/v1`, both node-cache
//! modes), answered by the decision core; the bind's exchange with the API
//! server recorded through a tower-test mock behind a real kube-rs client
//! (no API server can run here), every request it made asserted.

mod common;

use common::kube::{Brain, fixture, post_placement, start, trail};
use common::{ADMIN, call_at};
use serde_json::{Value, json};
use std::sync::atomic::Ordering;

fn ask(b: &Brain, verb: &str, body: &Value) -> (u16, Value) {
    call_at(
        b.extender,
        "POST",
        &format!("/scheduler/{verb}"),
        None,
        Some(&body.to_string()),
    )
}

fn cordon(b: &Brain, node: &str, on: bool) {
    let action = if on { "cordon" } else { "uncordon" };
    let (s, v) = call_at(
        b.api,
        "POST",
        "/v1/controls",
        Some(ADMIN),
        Some(&json!({"action": action, "node": node}).to_string()),
    );
    assert!(s < 300, "{s} {v}");
}

#[test]
fn filter_in_both_cache_modes_names_what_rules_a_node_out() {
    let b = start("filter", false);
    cordon(&b, "h1", true);
    // nodeCacheCapable: names in, names out.
    let (s, r) = ask(&b, "filter", &fixture("filter-cache.json"));
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["NodeNames"], json!(["a1"]), "{r}");
    assert_eq!(r["Nodes"], Value::Null);
    assert_eq!(r["Error"], "");
    assert!(
        r["FailedNodes"]["h1"]
            .as_str()
            .unwrap()
            .starts_with("cordoned"),
        "{r}"
    );
    assert_eq!(
        r["FailedAndUnresolvableNodes"],
        json!({"ghost": "node ghost: no Vagus agent reports it"})
    );
    // Without the cache: whole Node objects in, the passing ones out as sent.
    let args = fixture("filter-nodes.json");
    let (s, r) = ask(&b, "filter", &args);
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["NodeNames"], Value::Null);
    assert_eq!(
        r["Nodes"]["items"],
        json!([args["Nodes"]["items"][1]]),
        "{r}"
    );
    assert!(
        r["FailedNodes"]["h1"]
            .as_str()
            .unwrap()
            .starts_with("cordoned")
    );
    assert!(r["FailedAndUnresolvableNodes"]["ghost"].is_string());
    // A pod asking for no GPU is not Vagus's to filter.
    let mut cpu = fixture("filter-cache.json");
    cpu["Pod"]["metadata"]["annotations"] = json!({});
    cpu["Pod"]["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "1"}});
    let (_, r) = ask(&b, "filter", &cpu);
    assert_eq!(r["NodeNames"], json!(["h1", "a1", "ghost"]), "{r}");
}

#[test]
fn prioritize_ranks_by_the_core_score() {
    let b = start("prioritize", false);
    let (s, r) = ask(&b, "prioritize", &fixture("filter-cache.json"));
    assert_eq!(s, 200, "{r}");
    let list = r.as_array().unwrap();
    let hosts: Vec<&str> = list.iter().map(|h| h["Host"].as_str().unwrap()).collect();
    assert_eq!(hosts, ["h1", "a1", "ghost"]);
    let score = |i: usize| list[i]["Score"].as_i64().unwrap();
    assert!((0..=10).contains(&score(0)) && (0..=10).contains(&score(1)));
    assert_eq!(score(0).max(score(1)), 10, "the core's best node: {r}");
    assert_eq!(score(2), 0, "an unknown node: {r}");
    // The same in the other mode; a cordoned node falls to 0.
    cordon(&b, "a1", true);
    let (_, r) = ask(&b, "prioritize", &fixture("filter-nodes.json"));
    let scores: Vec<i64> = r
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["Score"].as_i64().unwrap())
        .collect();
    assert_eq!(scores, [10, 0, 0], "{r}");
}

#[test]
fn bind_places_annotates_then_binds_through_the_api_server() {
    let b = start("bind", true);
    let (s, r) = ask(&b, "bind", &fixture("bind-chat-0.json"));
    assert_eq!((s, &r), (200, &json!({"Error": ""})));
    let seen = b.server.take();
    let uid = "1d0c5b3e-7a41-4f0e-9b6a-3c2d1e0f9a81";
    assert_eq!(seen.len(), 3, "{seen:#?}");
    assert_eq!(
        seen[0].at(),
        ("GET", "/api/v1/namespaces/team-a/pods/chat-0")
    );
    assert_eq!(
        seen[1].at(),
        ("PATCH", "/api/v1/namespaces/team-a/pods/chat-0?")
    );
    assert_eq!(
        seen[1].content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    // The core's placement, read back from the API.
    let (s, w) = call_at(
        b.api,
        "GET",
        "/v1/placements/team-a-chat-0",
        Some(ADMIN),
        None,
    );
    assert_eq!(s, 200, "{w}");
    let placed = &w["placement"];
    assert_eq!(placed["node"], "a1");
    assert_eq!(placed["share_pct"], 20);
    let gpu = placed["gpus"][0].as_u64().unwrap();
    assert_eq!(
        seen[1].body,
        json!({"metadata": {"uid": uid, "labels": {"vagus.dev/workload": "team-a-chat-0"}, "annotations": {
            "vagus.dev/workload": "team-a-chat-0",
            "vagus.dev/gpus": gpu.to_string(),
            "vagus.dev/share-pct": "20"}}})
    );
    assert_eq!(
        seen[2].at(),
        ("POST", "/api/v1/namespaces/team-a/pods/chat-0/binding?")
    );
    assert_eq!(
        seen[2].body,
        json!({"apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": "chat-0", "namespace": "team-a", "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": "a1"}})
    );
    // The decision is in the trail, as kube-scheduler's.
    let rows = trail(&b, "team-a-chat-0");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["actor"], "kube-scheduler", "{rows:?}");
    // Asked again (an answer lost): the same node binds again, nothing new
    // is placed.
    let (_, r) = ask(&b, "bind", &fixture("bind-chat-0.json"));
    assert_eq!(r, json!({"Error": ""}));
    assert_eq!(b.server.take().len(), 3);
}

#[test]
fn a_bind_the_api_server_refuses_takes_the_placement_back() {
    let b = start("refused", true);
    b.server.refuse.store(true, Ordering::SeqCst);
    let (s, r) = ask(&b, "bind", &fixture("bind-chat-0.json"));
    assert_eq!(s, 200);
    let e = r["Error"].as_str().unwrap();
    assert!(
        e.contains("binding pod team-a/chat-0") && e.contains("already assigned"),
        "{e}"
    );
    let (s, _) = call_at(
        b.api,
        "GET",
        "/v1/placements/team-a-chat-0",
        Some(ADMIN),
        None,
    );
    assert_eq!(s, 404, "the placement is taken back");
    // Once the API server takes it, the same pod binds.
    b.server.refuse.store(false, Ordering::SeqCst);
    b.server.take();
    let (_, r) = ask(&b, "bind", &fixture("bind-chat-0.json"));
    assert_eq!(r, json!({"Error": ""}));
}

#[test]
fn bind_on_a_node_that_cannot_hold_it_is_refused_naming_why() {
    let b = start("norom", true);
    cordon(&b, "a1", true);
    let (_, r) = ask(&b, "bind", &fixture("bind-chat-0.json"));
    let e = r["Error"].as_str().unwrap();
    assert!(
        e.contains("team-a-chat-0 on a1") && e.contains("cordoned"),
        "{e}"
    );
    // It read the pod, and wrote nothing.
    let seen = b.server.take();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0].method, "GET");
}

#[test]
fn preempt_keeps_only_the_nodes_whose_victims_may_go() {
    let b = start("preempt", true);
    for f in ["bind-chat-0.json", "bind-batch-0.json"] {
        let (_, r) = ask(&b, "bind", &fixture(f));
        assert_eq!(r, json!({"Error": ""}), "{f}");
    }
    // By UID (node cache): chat-0 is P1, not preemptible; batch-0 is P3;
    // b7's victim is no pod this brain bound.
    let (s, r) = ask(&b, "preempt", &fixture("preempt-meta.json"));
    assert_eq!(s, 200, "{r}");
    let kept = r["NodeNameToMetaVictims"].as_object().unwrap();
    let nodes: Vec<&str> = kept.keys().map(String::as_str).collect();
    assert_eq!(nodes, ["b7", "h1"], "{r}");
    assert_eq!(
        r["NodeNameToMetaVictims"]["b7"],
        json!({"Pods": [{"UID": "00000000-0000-4000-8000-00000000beef"}], "NumPDBViolations": 1})
    );
    // Whole pods (no cache): the answer is by UID all the same.
    let (_, r) = ask(&b, "preempt", &fixture("preempt-pods.json"));
    assert_eq!(
        r,
        json!({"NodeNameToMetaVictims": {"h1": {"Pods": [{"UID": "6f2e4d1c-0b9a-4c8d-8e7f-5a4b3c2d1e02"}], "NumPDBViolations": 0}}})
    );
}

#[test]
fn bad_requests_are_named_and_a_brain_without_kubernetes_says_so() {
    let b = start("bad", false);
    let (s, r) = ask(&b, "filter", &json!({"Pod": 7}));
    assert_eq!(s, 400);
    assert!(r["Error"].as_str().unwrap().contains("Pod"), "{r}");
    let mut bad = fixture("filter-cache.json");
    bad["Pod"]["metadata"]["annotations"]["mps.nvidia.com/config"] = json!("compute-0");
    let (_, r) = ask(&b, "filter", &bad);
    assert!(
        r["Error"]
            .as_str()
            .unwrap()
            .starts_with("metadata.annotations[\"mps.nvidia.com/config\"]"),
        "{r}"
    );
    let (_, r) = ask(&b, "filter", &json!({"Pod": fixture("pod-chat-0.json")}));
    assert_eq!(r["Error"], "neither Nodes nor NodeNames given");
    let (s, _) = ask(&b, "prioritize", &bad);
    assert_eq!(s, 400);
    let (_, r) = ask(&b, "bind", &fixture("bind-chat-0.json"));
    assert!(r["Error"].as_str().unwrap().contains("--kubernetes"), "{r}");
    // The extender's routes are not on the API's listener, nor its on ours.
    let (s, _) = call_at(b.api, "POST", "/scheduler/filter", Some(ADMIN), Some("{}"));
    assert_eq!(s, 404);
    let (s, _) = call_at(b.extender, "GET", "/v1/placements", Some(ADMIN), None);
    assert_eq!(s, 404);
    drop(b.rt);
}

/// Victims by UID that this brain did not bind (another replica did, or
/// it restarted): their workloads come from the executor's pod view.
#[test]
fn preempt_finds_victims_it_did_not_bind_in_the_pod_view() {
    use k8s_openapi::api::core::v1::Pod;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;
    use vagus_brain::http::scheduler::{Extender, serve};
    let b = start("preempt-view", false);
    // The two workloads, placed through the API: a P3 and a P1.
    for (name, prio) in [("team-a-batch-0", "P3"), ("team-a-chat-0", "P1")] {
        let body = json!({"name": name, "model_id": name, "model_size_gb": 7.0, "batch": 4,
            "seq_len": 1024, "priority": prio, "tenant": "team-a", "expected_duration_s": 600});
        let (s, v) = post_placement(&b, &body);
        assert_eq!(s, 201, "{v}");
    }
    let (store, mut writer) = reflector::store::<Pod>();
    writer.apply_watcher_event(&Event::Init);
    for (name, uid) in [
        ("team-a-batch-0", "uid-batch"),
        ("team-a-chat-0", "uid-chat"),
    ] {
        let pod: Pod =
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "team-a",
            "uid": uid, "labels": {"vagus.dev/workload": name}}}))
            .unwrap();
        writer.apply_watcher_event(&Event::InitApply(pod));
    }
    writer.apply_watcher_event(&Event::InitDone);
    let x = std::sync::Arc::new(Extender::new(b.core.clone(), None, None, Some(store)));
    let listener =
        b.rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
    let at = listener.local_addr().unwrap();
    b.rt.spawn(serve(listener, x));
    let args = json!({"Pod": fixture("pod-urgent-0.json"), "NodeNameToVictims": null,
        "NodeNameToMetaVictims": {
            "a1": {"Pods": [{"UID": "uid-chat"}], "NumPDBViolations": 0},
            "h1": {"Pods": [{"UID": "uid-batch"}], "NumPDBViolations": 0}}});
    let (s, r) = call_at(
        at,
        "POST",
        "/scheduler/preempt",
        None,
        Some(&args.to_string()),
    );
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        r,
        json!({"NodeNameToMetaVictims": {"h1": {"Pods": [{"UID": "uid-batch"}], "NumPDBViolations": 0}}})
    );
}
