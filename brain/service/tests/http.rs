//! The HTTP API over real TCP, with a real SQLite audit trail: every
//! endpoint, each role allowed and refused, invalid bodies answered with
//! the field named (the trail's durability: durability.rs).

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;

#[test]
fn every_endpoint() {
    let api = start("endpoints", None);
    // POST /v1/placements: placed, with its explanation and Pod.
    let (st, v) = call(
        &api,
        "POST",
        "/v1/placements",
        Some(OPERATOR),
        Some(&profile("svc-a", "llama")),
    );
    assert_eq!(st, 201, "{v}");
    let d = &v["decision"];
    assert_eq!(d["path"], "direct");
    assert_eq!(d["class"]["name"], "medium");
    assert_eq!(d["share_pct"], 40);
    assert!(d["top"][0]["weighted"]["mps"].is_number());
    assert_eq!(d["manifest"]["spec"]["nodeName"], d["node"]);
    assert_eq!(rows(&api.db, "svc-a"), 1);
    // GET /v1/placements/{id}
    let (st, v) = call(&api, "GET", "/v1/placements/svc-a", Some(VIEWER), None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["state"], "placed");
    assert_eq!(v["placement"]["share_pct"], 40);
    assert_eq!(v["manifest"]["metadata"]["name"], "svc-a");
    // GET /v1/placements
    call(
        &api,
        "POST",
        "/v1/placements",
        Some(OPERATOR),
        Some(&profile("svc-b", "mistral")),
    );
    let (st, v) = call(&api, "GET", "/v1/placements", Some(VIEWER), None);
    assert_eq!(st, 200);
    let ids: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["placement"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["svc-a", "svc-b"]);
    assert!(v["next"].is_null());
    // GET /v1/nodes
    let (st, v) = call(&api, "GET", "/v1/nodes", Some(VIEWER), None);
    assert_eq!(st, 200);
    assert_eq!(v["items"].as_array().unwrap().len(), 2);
    let used: u64 = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["gpus"].as_array().unwrap())
        .map(|g| g["used_pct"].as_u64().unwrap())
        .sum();
    assert_eq!(used, 80);
    // POST /v1/nodes (admin)
    let spec = serde_json::to_string(&node("t1", "Tesla T4", 4)).unwrap();
    let (st, v) = call(&api, "POST", "/v1/nodes", Some(ADMIN), Some(&spec));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["gpus"].as_array().unwrap().len(), 4);
    // POST /v1/controls: cordon every node but t1; the next goes to t1.
    for n in ["h1", "a1"] {
        let (st, v) = call(
            &api,
            "POST",
            "/v1/controls",
            Some(ADMIN),
            Some(&format!(r#"{{"action":"cordon","node":"{n}"}}"#)),
        );
        assert_eq!(st, 200, "{v}");
        assert_eq!(v[0]["path"], "control");
    }
    let (st, v) = call(
        &api,
        "POST",
        "/v1/placements",
        Some(OPERATOR),
        Some(&profile("svc-c", "phi")),
    );
    assert_eq!(st, 201);
    assert_eq!(v["decision"]["node"], "t1");
    assert!(
        v["decision"]["ruled_out"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["constraint"] == "cordoned")
    );
    // Nothing fits anywhere: 202 with a scale-out request.
    let mut big: serde_json::Value = serde_json::from_str(&profile("huge", "big")).unwrap();
    big["model_size_gb"] = 60.0.into();
    let (st, v) = call(
        &api,
        "POST",
        "/v1/placements",
        Some(OPERATOR),
        Some(&big.to_string()),
    );
    assert_eq!(st, 202, "{v}");
    assert_eq!(v["decision"]["path"], "scale_out");
    let (st, v) = call(&api, "GET", "/v1/placements/huge", Some(VIEWER), None);
    assert_eq!((st, v["state"].as_str()), (200, Some("queued")));
    // Uncordoning h1 places it (the control's answer lists that decision).
    let (st, v) = call(
        &api,
        "POST",
        "/v1/controls",
        Some(ADMIN),
        Some(r#"{"action":"uncordon","node":"h1"}"#),
    );
    assert_eq!(st, 200);
    assert_eq!(v[1]["workload"], "huge");
    assert_eq!(v[1]["node"], "h1");
    // DELETE /v1/placements/{id}
    let (st, v) = call(&api, "DELETE", "/v1/placements/svc-a", Some(OPERATOR), None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["decision"]["path"], "remove");
    let (st, _) = call(&api, "GET", "/v1/placements/svc-a", Some(VIEWER), None);
    assert_eq!(st, 404);
    let (st, _) = call(&api, "DELETE", "/v1/placements/svc-a", Some(OPERATOR), None);
    assert_eq!(st, 404);
    // GET /v1/decisions: all, by workload, by path, paged.
    let (st, all) = call(&api, "GET", "/v1/decisions", Some(VIEWER), None);
    assert_eq!(st, 200);
    let all = all["items"].as_array().unwrap().clone();
    assert_eq!(all.len(), 9, "{all:#?}");
    assert_eq!(all[0]["actor"], "otto");
    let (_, v) = call(
        &api,
        "GET",
        "/v1/decisions?workload=svc-a",
        Some(VIEWER),
        None,
    );
    let paths: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["direct", "remove"]);
    let (_, v) = call(
        &api,
        "GET",
        "/v1/decisions?path=control&actor=ada",
        Some(VIEWER),
        None,
    );
    assert_eq!(v["items"].as_array().unwrap().len(), 3);
    let after = all[4]["seq"].as_i64().unwrap();
    let (_, v) = call(
        &api,
        "GET",
        &format!("/v1/decisions?after={after}&limit=2"),
        Some(VIEWER),
        None,
    );
    assert_eq!(v["next"], all[6]["seq"]);
    let seqs: Vec<i64> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        [
            all[5]["seq"].as_i64().unwrap(),
            all[6]["seq"].as_i64().unwrap()
        ]
    );
    // /healthz, /metrics, /openapi.json need no token.
    let (st, v) = call(&api, "GET", "/healthz", None, None);
    assert_eq!((st, v["status"].as_str()), (200, Some("ok")));
    assert_eq!(v["placements"], 3);
    let (st, v) = call(&api, "GET", "/metrics", None, None);
    assert_eq!(st, 200);
    let text = v.as_str().unwrap();
    assert!(
        text.contains("vagus_brain_decisions_total{path=\"direct\"} 4"),
        "{text}"
    );
    assert!(text.contains("vagus_brain_placements 3"), "{text}");
    // The loop's, before it has acted (this brain has no agents).
    for line in [
        "vagus_brain_loop_actions_total{kind=\"budget\"} 0",
        "vagus_brain_loop_reaction_seconds_bucket{le=\"+Inf\"} 0",
        "vagus_brain_decision_seconds_bucket{le=\"+Inf\"} 8",
        "vagus_brain_decision_seconds_count 8",
    ] {
        assert!(text.contains(line), "{line} not in {text}");
    }
    // Each GPU's placed share, summing to the placements' shares.
    let shares: f64 = text
        .lines()
        .filter(|l| l.starts_with("vagus_brain_gpu_share_placed_ratio{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    let series = text
        .lines()
        .filter(|l| l.starts_with("vagus_brain_gpu_share_placed_ratio{node="))
        .count();
    let (_, nodes) = call(&api, "GET", "/v1/nodes", Some(VIEWER), None);
    let gpus: usize = nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["gpus"].as_array().unwrap().len())
        .sum();
    assert_eq!(series, gpus, "one per GPU: {text}");
    let (_, list) = call(&api, "GET", "/v1/placements", Some(VIEWER), None);
    let placed: f64 = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["placement"]["share_pct"].as_f64())
        .map(|s| s / 100.0)
        .sum();
    assert!(placed > 0.0, "{list}");
    assert!(
        (shares - placed).abs() < 1e-9,
        "{shares} vs {placed}: {text}"
    );
    promtool_check(text);
    let (st, v) = call(&api, "GET", "/openapi.json", None, None);
    assert_eq!(st, 200);
    for p in [
        "/v1/placements",
        "/v1/placements/{id}",
        "/v1/nodes",
        "/v1/decisions",
        "/v1/controls",
        "/healthz",
        "/metrics",
    ] {
        assert!(
            v["paths"][p].is_object(),
            "{p} missing from the OpenAPI document"
        );
    }
    assert!(v["paths"]["/v1/placements/{id}"]["delete"].is_object());
    assert_eq!(
        v["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert!(v["components"]["schemas"]["Profile"]["properties"]["model_size_gb"].is_object());
    // Unknown endpoints: 404 in JSON.
    let (st, v) = call(&api, "GET", "/v2/nothing", Some(VIEWER), None);
    assert_eq!(
        (st, v["field"].as_str(), v["error"].as_str()),
        (404, Some("path"), Some("path: no such endpoint"))
    );
}

#[test]
fn roles_allow_and_refuse() {
    let api = start("roles", None);
    let place = |token, name: &str| {
        call(
            &api,
            "POST",
            "/v1/placements",
            token,
            Some(&profile(name, name)),
        )
    };
    // No token, an unknown one, a malformed header: 401.
    assert_eq!(place(None, "a").0, 401);
    assert_eq!(place(Some("not-a-known-token-at-all"), "a").0, 401);
    let mut s = TcpStream::connect(api.addr).unwrap();
    s.write_all(b"GET /v1/nodes HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Basic abc\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let (st, v) = parse_response(&out);
    assert_eq!((st, v["field"].as_str()), (401, Some("authorization")));
    // Viewer: reads yes, placements and controls no.
    assert_eq!(call(&api, "GET", "/v1/nodes", Some(VIEWER), None).0, 200);
    assert_eq!(
        call(&api, "GET", "/v1/decisions", Some(VIEWER), None).0,
        200
    );
    let (st, v) = place(Some(VIEWER), "a");
    assert_eq!(st, 403);
    assert!(v["error"].as_str().unwrap().contains("operator"), "{v}");
    assert_eq!(
        call(&api, "DELETE", "/v1/placements/a", Some(VIEWER), None).0,
        403
    );
    // Operator: placements yes, controls and nodes no.
    assert_eq!(place(Some(OPERATOR), "a").0, 201);
    assert_eq!(
        call(&api, "DELETE", "/v1/placements/a", Some(OPERATOR), None).0,
        200
    );
    let pause = r#"{"action":"pause_reconfiguration"}"#;
    assert_eq!(
        call(&api, "POST", "/v1/controls", Some(OPERATOR), Some(pause)).0,
        403
    );
    let spec = serde_json::to_string(&node("x1", "Tesla T4", 1)).unwrap();
    assert_eq!(
        call(&api, "POST", "/v1/nodes", Some(OPERATOR), Some(&spec)).0,
        403
    );
    // Admin: everything.
    assert_eq!(
        call(&api, "POST", "/v1/controls", Some(ADMIN), Some(pause)).0,
        200
    );
    assert_eq!(place(Some(ADMIN), "b").0, 201);
    assert_eq!(call(&api, "GET", "/v1/nodes", Some(ADMIN), None).0, 200);
    // Refused requests changed nothing and were not audited.
    let (_, v) = call(&api, "GET", "/v1/decisions", Some(VIEWER), None);
    let actors: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["actor"].as_str().unwrap())
        .collect();
    assert_eq!(actors, ["otto", "otto", "ada", "ada"]);
}

#[test]
fn invalid_bodies_name_the_field() {
    let api = start("invalid", None);
    let post = |path: &str, body: &str| call(&api, "POST", path, Some(ADMIN), Some(body));
    let mut p: serde_json::Value = serde_json::from_str(&profile("ok", "m")).unwrap();
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("/v1/placements", "".into(), 400, "body"),
        ("/v1/placements", "{not json".into(), 400, "body"),
        ("/v1/placements", r#"{"name":"x"}"#.into(), 400, "model_id"),
        (
            "/v1/placements",
            {
                p["batch"] = "eight".into();
                p.to_string()
            },
            400,
            "batch",
        ),
        (
            "/v1/placements",
            {
                p["batch"] = 0.into();
                p.to_string()
            },
            400,
            "batch",
        ),
        (
            "/v1/placements",
            {
                p["batch"] = 8.into();
                p["priority"] = "P9".into();
                p.to_string()
            },
            400,
            "priority",
        ),
        (
            "/v1/placements",
            {
                p["priority"] = "P1".into();
                p["colour"] = "red".into();
                p.to_string()
            },
            400,
            "colour",
        ),
        (
            "/v1/placements",
            {
                p.as_object_mut().unwrap().remove("colour");
                p["name"] = "Bad Name".into();
                p.to_string()
            },
            400,
            "name",
        ),
        (
            "/v1/placements",
            {
                p["name"] = "ok".into();
                p["share_pct"] = 250.into();
                p.to_string()
            },
            400,
            "share_pct",
        ),
        (
            "/v1/controls",
            r#"{"action":"explode"}"#.into(),
            400,
            "action",
        ),
        ("/v1/controls", r#"{"action":"cordon"}"#.into(), 400, "node"),
        (
            "/v1/controls",
            r#"{"action":"maintenance","node":"h1","from_ms":5,"to_ms":1}"#.into(),
            400,
            "to_ms",
        ),
        (
            "/v1/nodes",
            r#"{"name":"n","cpu_milli":1,"memory_mib":1,"gpus":[{"model":"Mystery"}]}"#.into(),
            400,
            "gpus[0].model",
        ),
        (
            "/v1/nodes",
            r#"{"name":"n","cpu_milli":1,"memory_mib":1,"gpus":[{"model":"T4","sms":"x"}]}"#.into(),
            400,
            "gpus[0].sms",
        ),
    ];
    for (path, body, status, field) in cases {
        let (st, v) = post(path, &body);
        assert_eq!(
            (st, v["field"].as_str()),
            (status, Some(field)),
            "{path} {body}: {v}"
        );
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains(field.split('.').next_back().unwrap()),
            "{v}"
        );
    }
    let (st, v) = call(&api, "GET", "/v1/decisions?limit=many", Some(VIEWER), None);
    assert_eq!((st, v["field"].as_str()), (400, Some("limit")), "{v}");
    // A control on something unknown: 404.
    let (st, _) = post("/v1/controls", r#"{"action":"cordon","node":"nope"}"#);
    assert_eq!(st, 404);
    // The same name twice: 409, the first placement untouched.
    p["share_pct"] = 20.into();
    assert_eq!(post("/v1/placements", &p.to_string()).0, 201);
    let (st, v) = post("/v1/placements", &p.to_string());
    assert_eq!((st, v["field"].as_str()), (409, Some("name")));
    let (_, v) = call(&api, "GET", "/v1/placements", Some(VIEWER), None);
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    let (_, v) = call(&api, "GET", "/v1/decisions", Some(VIEWER), None);
    assert_eq!(
        v["items"].as_array().unwrap().len(),
        1,
        "only the accepted request is in the trail"
    );
}

/// Runs `promtool check metrics` on `text` (required when
/// VAGUS_REQUIRE_PROMTOOL=1, as CI sets).
fn promtool_check(text: &str) {
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var("VAGUS_REQUIRE_PROMTOOL").as_deref() != Ok("1"),
                "promtool is required: {e}"
            );
            eprintln!("skipping promtool: {e}");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
