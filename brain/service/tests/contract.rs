//! The API keeps its published contract: every rule the OpenAPI document
//! states is enforced (400 naming the field, nothing changed), bad input of
//! every kind is a JSON error naming what was wrong, from the handlers and
//! from the layers in front of them, lists page, hopeless requests are
//! rejected naming the constraint, and a restart keeps decision numbers
//! and names.

mod common;

use common::*;
use serde_json::{Value, json};

/// What the API holds: workloads, nodes and the trail's length.
fn snapshot(api: &Api) -> (Value, Value, usize) {
    let (_, w) = call(api, "GET", "/v1/placements?limit=1000", Some(VIEWER), None);
    let (_, n) = call(api, "GET", "/v1/nodes?limit=1000", Some(VIEWER), None);
    let (_, d) = call(api, "GET", "/v1/decisions?limit=1000", Some(VIEWER), None);
    (w, n, d["items"].as_array().map_or(0, Vec::len))
}

fn valid_node() -> Value {
    json!({"name": "n9", "cpu_milli": 8000, "memory_mib": 65536,
        "labels": {"zone": "z1"}, "gpus": [{"model": "Tesla T4"}]})
}

fn valid_window() -> Value {
    json!({"session": 1, "seq": 0, "duration_ms": 1000, "replicas": [{
        "model": "m", "placement": "p", "requests": 2, "errors": 0, "in_flight": 0,
        "latency": {"bounds_s": [0.1], "counts": [1, 1], "sum_s": 0.3, "count": 2},
        "first_byte": null}]})
}

/// A value that breaks the property's first published rule, if it has one.
fn breaking(prop: &Value) -> Option<Value> {
    let p = match prop.get("oneOf") {
        // `Option<T>`: the non-null branch.
        Some(Value::Array(alts)) => alts.iter().find(|a| a["type"] != "null")?,
        _ => prop,
    };
    if let Some(max) = p.get("maximum").and_then(Value::as_f64) {
        let is_int = p["type"] == "integer"
            || p["type"]
                .as_array()
                .is_some_and(|t| t.contains(&json!("integer")));
        return Some(if is_int {
            json!(max as u64 + 1)
        } else {
            json!(max * 2.0 + 1.0)
        });
    }
    if let Some(n) = p.get("maxLength").and_then(Value::as_u64) {
        return Some(json!("a".repeat(n as usize + 1)));
    }
    if p.get("pattern").is_some() {
        return Some(json!(" not this "));
    }
    if let Some(n) = p.get("maxItems").and_then(Value::as_u64) {
        return Some(Value::Array(vec![json!("a"); n as usize + 1]));
    }
    if let Some(n) = p.get("maxProperties").and_then(Value::as_u64) {
        let m: serde_json::Map<String, Value> =
            (0..=n).map(|i| (format!("k{i}"), json!("v"))).collect();
        return Some(Value::Object(m));
    }
    None
}

/// Every bound, length, pattern and count the document publishes for a
/// placement or a node is enforced: 400 naming the field, nothing changed.
#[test]
fn every_published_rule_is_enforced() {
    let api = start("rules", None);
    let (_, doc) = call(&api, "GET", "/openapi.json", None, None);
    let bodies = [
        (
            "Profile",
            "/v1/placements",
            ADMIN,
            serde_json::from_str::<Value>(&profile("base", "m")).unwrap(),
        ),
        ("NodeSpec", "/v1/nodes", ADMIN, valid_node()),
        (
            "GatewayWindow",
            "/v1/gateways/gw-1/windows",
            GATEWAY,
            valid_window(),
        ),
    ];
    let before = snapshot(&api);
    let mut checked = 0;
    for (schema, path, token, base) in bodies {
        let props = doc["components"]["schemas"][schema]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{schema} has no properties"));
        for (name, prop) in props {
            let Some(bad) = breaking(prop) else { continue };
            let mut body = base.clone();
            body[name.as_str()] = bad.clone();
            let (st, v) = call(&api, "POST", path, Some(token), Some(&body.to_string()));
            let field = v["field"].as_str().unwrap_or("");
            assert_eq!(st, 400, "{schema}.{name} = {bad}: {v}");
            assert!(
                field == name
                    || field.starts_with(&format!("{name}["))
                    || field.starts_with(&format!("{name}.")),
                "{schema}.{name} = {bad}: named {field}: {v}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} rules found in the document");
    assert_eq!(
        snapshot(&api),
        before,
        "a refused request changed something"
    );
}

/// A table of bad inputs, one or more per field: the status, the field
/// named, and nothing changed.
#[test]
fn bad_inputs_name_the_field_and_change_nothing() {
    let api = start("table", None);
    assert_eq!(
        call(
            &api,
            "POST",
            "/v1/placements",
            Some(ADMIN),
            Some(&profile("held", "m"))
        )
        .0,
        201
    );
    let before = snapshot(&api);
    let p = |k: &str, v: Value| {
        let mut b: Value = serde_json::from_str(&profile("fresh", "m")).unwrap();
        b[k] = v;
        b.to_string()
    };
    let n = |k: &str, v: Value| {
        let mut b = valid_node();
        b[k] = v;
        b.to_string()
    };
    let gpu = |k: &str, v: Value| {
        let mut b = valid_node();
        b["gpus"][0][k] = v;
        b.to_string()
    };
    let place = "/v1/placements";
    let nodes = "/v1/nodes";
    let ctl = "/v1/controls";
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (place, p("name", json!("Bad Name")), 400, "name"),
        (place, p("name", json!("a/b")), 400, "name"),
        (place, p("name", json!("ünï")), 400, "name"),
        (place, p("name", json!("a".repeat(64))), 400, "name"),
        (place, p("name", json!("held")), 409, "name"),
        (place, p("model_id", json!("")), 400, "model_id"),
        (place, p("model_size_gb", json!(-1)), 400, "model_size_gb"),
        (
            place,
            p("model_size_gb", json!("big")),
            400,
            "model_size_gb",
        ),
        (place, p("batch", json!(0)), 400, "batch"),
        (place, p("batch", json!(1.5)), 400, "batch"),
        (place, p("batch", json!("eight")), 400, "batch"),
        (place, p("seq_len", json!(1 << 21)), 400, "seq_len"),
        (place, p("sla_ms", json!(0)), 400, "sla_ms"),
        (place, p("priority", json!(5)), 400, "priority"),
        (place, p("priority", json!("P9")), 400, "priority"),
        (place, p("tenant", json!("Acme Corp")), 400, "tenant"),
        (
            place,
            p("expected_duration_s", json!(-5)),
            400,
            "expected_duration_s",
        ),
        (place, p("locality", json!([""])), 400, "locality[0]"),
        (place, p("locality", json!(vec!["n1"; 33])), 400, "locality"),
        (
            place,
            p("accepted_models", json!(["H100\n"])),
            400,
            "accepted_models[0]",
        ),
        (place, p("cpu_milli", json!(1u64 << 63)), 400, "cpu_milli"),
        (place, p("memory_mib", json!(null)), 400, "memory_mib"),
        (place, p("gpus", json!(17)), 400, "gpus"),
        (place, p("share_pct", json!(101)), 400, "share_pct"),
        (
            place,
            p("max_cost_per_hour", json!(-1)),
            400,
            "max_cost_per_hour",
        ),
        (place, p("image", json!("a".repeat(1025))), 400, "image"),
        (place, p("image", json!("vllm openai")), 400, "image"),
        (place, p("colour", json!("red")), 400, "colour"),
        (place, "[1, 2]".into(), 400, "body"),
        (place, "{\"name\": ".into(), 400, "body"),
        (nodes, n("name", json!("node/a")), 400, "name"),
        (nodes, n("name", json!("nöde")), 400, "name"),
        (nodes, n("name", json!("Node-A")), 400, "name"),
        (nodes, n("cpu_milli", json!(0)), 400, "cpu_milli"),
        (nodes, n("memory_mib", json!(0)), 400, "memory_mib"),
        (
            nodes,
            n("gpus", json!(vec![json!({"model": "Tesla T4"}); 257])),
            400,
            "gpus",
        ),
        (nodes, n("labels", json!({"bad key": "v"})), 400, "labels"),
        (
            nodes,
            n("labels", json!({"zone": "not ok"})),
            400,
            "labels.zone",
        ),
        (nodes, n("extra", json!(1)), 400, "extra"),
        (nodes, gpu("model", json!("Mystery")), 400, "gpus[0].model"),
        (nodes, gpu("model", json!("")), 400, "gpus[0].model"),
        (nodes, gpu("sms", json!(0)), 400, "gpus[0].sms"),
        (nodes, gpu("memory_gb", json!(0)), 400, "gpus[0].memory_gb"),
        (nodes, gpu("sms", json!("x")), 400, "gpus[0].sms"),
        (ctl, r#"{"node":"h1"}"#.into(), 400, "action"),
        (ctl, r#"{"action":"explode"}"#.into(), 400, "action"),
        (ctl, r#"{"action":"cordon"}"#.into(), 400, "node"),
        (
            ctl,
            r#"{"action":"cordon","node":"a/b"}"#.into(),
            400,
            "node",
        ),
        (
            ctl,
            r#"{"action":"cordon","node":"nope"}"#.into(),
            404,
            "node",
        ),
        (
            ctl,
            r#"{"action":"pin","workload":"X"}"#.into(),
            400,
            "workload",
        ),
        (
            ctl,
            r#"{"action":"pin","workload":"nope"}"#.into(),
            404,
            "workload",
        ),
        (
            ctl,
            r#"{"action":"trip_breaker","force":true}"#.into(),
            400,
            "force",
        ),
        (
            ctl,
            r#"{"action":"cordon","node":"h1","why":"x"}"#.into(),
            400,
            "why",
        ),
        (
            ctl,
            r#"{"action":"maintenance","node":"h1","from_ms":-1,"to_ms":5}"#.into(),
            400,
            "from_ms",
        ),
        (
            ctl,
            r#"{"action":"maintenance","node":"h1","from_ms":9,"to_ms":"x"}"#.into(),
            400,
            "to_ms",
        ),
        (
            ctl,
            r#"{"action":"maintenance","node":"h1","from_ms":5,"to_ms":1}"#.into(),
            400,
            "to_ms",
        ),
        (
            ctl,
            r#"{"action":"override","workload":"held","node":"h1","gpu":300}"#.into(),
            400,
            "gpu",
        ),
    ];
    for (path, body, status, field) in &cases {
        let (st, v) = call(&api, "POST", path, Some(ADMIN), Some(body));
        assert_eq!(
            (st, v["field"].as_str()),
            (*status, Some(*field)),
            "{path} {body}: {v}"
        );
        assert!(
            v["error"].as_str().is_some_and(|e| e.starts_with(field)),
            "{path} {body}: {v}"
        );
    }
    let gets: Vec<(&str, u16, &str)> = vec![
        ("/v1/decisions?limit=0", 400, "limit"),
        ("/v1/decisions?limit=1001", 400, "limit"),
        ("/v1/decisions?limit=many", 400, "limit"),
        ("/v1/decisions?after=-1", 400, "after"),
        ("/v1/decisions?path=bogus", 400, "path"),
        ("/v1/decisions?colour=red", 400, "colour"),
        ("/v1/placements?limit=0", 400, "limit"),
        ("/v1/placements?page=2", 400, "page"),
        ("/v1/nodes?limit=x", 400, "limit"),
        ("/v1/placements/Bad_Name", 400, "id"),
        ("/v1/placements/%FF%FE", 400, "id"),
        ("/v1/placements/nope", 404, "id"),
    ];
    for (path, status, field) in &gets {
        let (st, v) = call(&api, "GET", path, Some(VIEWER), None);
        assert_eq!(
            (st, v["field"].as_str()),
            (*status, Some(*field)),
            "{path}: {v}"
        );
    }
    assert_eq!(
        snapshot(&api),
        before,
        "a refused request changed something"
    );
}

/// Errors from the layers in front of the handlers are the same JSON:
/// methods, sizes, media types, authentication.
#[test]
fn every_layer_answers_json() {
    let api = start("layers", None);
    let auth = format!("Authorization: Bearer {ADMIN}\r\n");
    // `head`: the request line and any headers, each line ending CRLF
    // except the last.
    let req = |head: &str, body: &str| {
        let head = head.trim_end_matches("\r\n");
        format!(
            "{head}\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let json_ok = |head: &str, v: &Value| {
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(v["error"].is_string(), "{v}");
    };
    // 405 with Allow.
    let (st, head, v) = raw(
        api.addr,
        req(&format!("PUT /v1/nodes HTTP/1.1\r\n{auth}"), "").as_bytes(),
    );
    assert_eq!((st, v["field"].as_str()), (405, Some("method")), "{v}");
    assert!(head.contains("allow:"), "{head}");
    json_ok(&head, &v);
    // 415: no Content-Type, or another one; nothing placed.
    let body = profile("typed", "m");
    let (st, head, v) = raw(
        api.addr,
        req(&format!("POST /v1/placements HTTP/1.1\r\n{auth}"), &body).as_bytes(),
    );
    assert_eq!(
        (st, v["field"].as_str()),
        (415, Some("content-type")),
        "{v}"
    );
    json_ok(&head, &v);
    let (st, _, v) = raw(
        api.addr,
        req(
            &format!("POST /v1/placements HTTP/1.1\r\n{auth}Content-Type: text/plain"),
            &body,
        )
        .as_bytes(),
    );
    assert_eq!(st, 415, "{v}");
    let (st, _, _) = raw(
        api.addr,
        req(&format!("POST /v1/placements HTTP/1.1\r\n{auth}Content-Type: application/json; charset=utf-8"), &body)
            .as_bytes(),
    );
    assert_eq!(st, 201);
    // 413: a body over 1 MiB.
    let big = format!("{{\"name\":\"{}\"}}", "a".repeat(1 << 21));
    let (st, head, v) = raw(
        api.addr,
        req(
            &format!("POST /v1/placements HTTP/1.1\r\n{auth}Content-Type: application/json"),
            &big,
        )
        .as_bytes(),
    );
    assert_eq!((st, v["field"].as_str()), (413, Some("body")), "{v}");
    json_ok(&head, &v);
    // 414: a query string over 8 KiB.
    let long = format!(
        "GET /v1/decisions?workload={} HTTP/1.1\r\n{auth}",
        "a".repeat(9000)
    );
    let (st, head, v) = raw(api.addr, req(&long, "").as_bytes());
    assert_eq!((st, v["field"].as_str()), (414, Some("uri")), "{v}");
    json_ok(&head, &v);
    // 401 with WWW-Authenticate; the scheme is case-insensitive.
    let (st, head, v) = raw(api.addr, req("GET /v1/nodes HTTP/1.1", "").as_bytes());
    assert_eq!((st, v["field"].as_str()), (401, Some("authorization")));
    assert!(
        head.contains("www-authenticate: bearer realm=\"vagus\""),
        "{head}"
    );
    let (st, head, _) = raw(
        api.addr,
        req(
            "GET /v1/nodes HTTP/1.1\r\nAuthorization: Bearer wrong-token-0000000000",
            "",
        )
        .as_bytes(),
    );
    assert_eq!(st, 401);
    assert!(head.contains("error=\"invalid_token\""), "{head}");
    let (st, head, _) = raw(
        api.addr,
        req(
            "GET /v1/nodes HTTP/1.1\r\nAuthorization: Basic YWI6Y2Q=",
            "",
        )
        .as_bytes(),
    );
    assert_eq!(st, 401);
    assert!(head.contains("error=\"invalid_request\""), "{head}");
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let (st, _, v) = raw(
            api.addr,
            req(
                &format!("GET /v1/nodes HTTP/1.1\r\nAuthorization: {scheme} {VIEWER}"),
                "",
            )
            .as_bytes(),
        );
        assert_eq!(st, 200, "{scheme}: {v}");
    }
    // 403 names the role.
    let (st, _, v) = raw(api.addr, req(&format!("POST /v1/controls HTTP/1.1\r\nAuthorization: Bearer {VIEWER}\r\nContent-Type: application/json"), r#"{"action":"trip_breaker"}"#).as_bytes());
    assert_eq!(
        (st, v["field"].as_str()),
        (403, Some("authorization")),
        "{v}"
    );
    // Authentication comes before the body: a stranger learns nothing of it.
    let (st, _, _) = raw(
        api.addr,
        req(
            "POST /v1/placements HTTP/1.1\r\nContent-Type: application/json",
            "{",
        )
        .as_bytes(),
    );
    assert_eq!(st, 401);
}

/// The document lists every status each operation answers, the reject
/// body has its own schema, nullable fields are nullable, new placements
/// link to reading and deleting them.
#[test]
fn the_document_describes_every_answer() {
    let api = start("doc", None);
    let (_, doc) = call(&api, "GET", "/openapi.json", None, None);
    let op = |path: &str, method: &str| doc["paths"][path][method].clone();
    let statuses = |o: &Value| -> Vec<String> {
        o["responses"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    let post = op("/v1/placements", "post");
    for s in [
        "201", "202", "400", "401", "403", "409", "413", "414", "415", "422", "503",
    ] {
        assert!(
            statuses(&post).contains(&s.to_string()),
            "POST /v1/placements lacks {s}"
        );
    }
    assert_eq!(
        post["responses"]["422"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Rejection"
    );
    assert!(post["responses"]["401"]["headers"]["WWW-Authenticate"].is_object());
    assert_eq!(
        post["responses"]["201"]["links"]["GetPlacement"]["parameters"]["id"],
        "$response.body#/id"
    );
    assert_eq!(
        post["responses"]["202"]["links"]["DeletePlacement"]["operationId"],
        "delete_placement"
    );
    for (path, method) in [("/v1/nodes", "post"), ("/v1/controls", "post")] {
        for s in ["400", "401", "403", "413", "415"] {
            assert!(
                statuses(&op(path, method)).contains(&s.to_string()),
                "{method} {path} lacks {s}"
            );
        }
    }
    for (path, method) in [
        ("/v1/placements/{id}", "get"),
        ("/v1/placements/{id}", "delete"),
        ("/v1/nodes", "get"),
        ("/v1/decisions", "get"),
    ] {
        for s in ["400", "401", "403"] {
            assert!(
                statuses(&op(path, method)).contains(&s.to_string()),
                "{method} {path} lacks {s}"
            );
        }
    }
    let manifest = &doc["components"]["schemas"]["Decision"]["properties"]["manifest"];
    assert!(
        manifest.to_string().contains("null"),
        "Decision.manifest is not nullable: {manifest}"
    );
    let id = &op("/v1/placements/{id}", "get")["parameters"][0]["schema"];
    assert_eq!(id["maxLength"], 63, "{id}");
    let path = doc["paths"]["/v1/decisions"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "path")
        .unwrap()
        .clone();
    assert!(
        path["schema"].to_string().contains("\"scale_out\""),
        "{path}"
    );
}

/// Lists come in pages with a cursor.
#[test]
fn lists_are_paged() {
    let api = start("pages", None);
    for name in ["w-e", "w-a", "w-c", "w-b", "w-d"] {
        let mut b: Value = serde_json::from_str(&profile(name, name)).unwrap();
        b["model_size_gb"] = json!(1.0);
        b["share_pct"] = json!(10);
        assert_eq!(place(&api, &b.to_string()).0, 201);
    }
    let mut seen = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let q = match &next {
            Some(a) => format!("/v1/placements?limit=2&after={a}"),
            None => "/v1/placements?limit=2".into(),
        };
        let (st, v) = call(&api, "GET", &q, Some(VIEWER), None);
        assert_eq!(st, 200, "{v}");
        let items = v["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(
            items
                .iter()
                .map(|w| w["placement"]["id"].as_str().unwrap().to_string()),
        );
        match v["next"].as_str() {
            Some(n) => next = Some(n.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, ["w-a", "w-b", "w-c", "w-d", "w-e"]);
    let (_, v) = call(&api, "GET", "/v1/nodes?limit=1", Some(VIEWER), None);
    assert_eq!(
        (v["items"][0]["name"].as_str(), v["next"].as_str()),
        (Some("a1"), Some("a1"))
    );
    let (_, v) = call(
        &api,
        "GET",
        "/v1/nodes?limit=1&after=a1",
        Some(VIEWER),
        None,
    );
    assert_eq!(
        (v["items"][0]["name"].as_str(), v["next"].as_str()),
        (Some("h1"), None)
    );
    let (_, v) = call(&api, "GET", "/v1/decisions?limit=3", Some(VIEWER), None);
    assert_eq!(v["items"].as_array().unwrap().len(), 3);
    let (_, v2) = call(
        &api,
        "GET",
        &format!("/v1/decisions?limit=3&after={}", v["next"]),
        Some(VIEWER),
        None,
    );
    assert_eq!(v2["items"].as_array().unwrap().len(), 2);
    assert!(v2["next"].is_null());
}

/// A request no known node or scale-out shape could hold is rejected
/// (422, its own body) naming the constraint, and the rejection is in the
/// trail; an unknown GPU model is named as such.
#[test]
fn hopeless_requests_are_rejected_with_the_constraint() {
    let api = start("hopeless", None);
    let cases = [
        ("cpu-hog", "cpu_milli", json!(4_000_000), "cpu_milli:"),
        (
            "odd-gpu",
            "accepted_models",
            json!(["Z9000"]),
            "accepted_models:",
        ),
        ("too-many", "gpus", json!(16), "gpus:"),
    ];
    for (name, field, value, why) in cases {
        let mut b: Value = serde_json::from_str(&profile(name, "m")).unwrap();
        b[field] = value;
        let (st, v) = place(&api, &b.to_string());
        assert_eq!(st, 422, "{v}");
        assert_eq!(
            (v["id"].as_str(), v["decision"]["path"].as_str()),
            (Some(name), Some("reject"))
        );
        let summary = v["decision"]["summary"].as_str().unwrap();
        assert!(summary.starts_with(why), "{summary}");
        assert_eq!(
            call(
                &api,
                "GET",
                &format!("/v1/placements/{name}"),
                Some(VIEWER),
                None
            )
            .0,
            404
        );
        assert_eq!(rows(&api.db, name), 1, "the rejection is in the trail");
    }
}

/// After a restart, decisions number on from the last recorded one.
#[test]
fn decision_numbers_continue_after_a_restart() {
    let api = start("seq", None);
    let db = api.db.clone();
    let mut last = 0;
    for name in ["s1", "s2"] {
        let (_, v) = place(&api, &profile(name, name));
        last = v["decision"]["seq"].as_u64().unwrap();
    }
    assert_eq!(last, 2);
    drop(api);
    let api = start("seq", Some(db));
    let (st, v) = place(&api, &profile("s3", "s3"));
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["decision"]["seq"], last + 1);
    let (_, d) = call(&api, "GET", "/v1/decisions", Some(VIEWER), None);
    let seqs: Vec<u64> = d["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["decision"]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
}

/// A brain restarted before its nodes are known keeps restored placements
/// visible and their names taken; they bind when the node comes back.
#[test]
fn names_stay_taken_while_their_node_is_unknown() {
    let h1 = || vec![node("h1", "NVIDIA H100 80GB HBM3", 2)];
    let api = start_with("waiting", None, h1());
    let db = api.db.clone();
    assert_eq!(place(&api, &profile("keep", "m")).0, 201);
    assert_eq!(place(&api, &profile("drop", "m2")).0, 201);
    let (_, before) = call(&api, "GET", "/v1/placements/keep", Some(VIEWER), None);
    drop(api);
    // No nodes: the placements wait, visible, their names taken.
    let api = start_with("waiting", Some(db.clone()), vec![]);
    let (st, v) = call(&api, "GET", "/v1/placements/keep", Some(VIEWER), None);
    assert_eq!((st, v["state"].as_str()), (200, Some("waiting")), "{v}");
    assert_eq!(v["placement"], before["placement"]);
    let (st, v) = place(&api, &profile("keep", "other"));
    assert_eq!((st, v["field"].as_str()), (409, Some("name")), "{v}");
    let (_, list) = call(&api, "GET", "/v1/placements", Some(VIEWER), None);
    assert_eq!(list["items"].as_array().unwrap().len(), 2, "{list}");
    let (_, h) = call(&api, "GET", "/healthz", None, None);
    assert_eq!(
        (h["placements"].as_u64(), h["waiting"].as_u64()),
        (Some(0), Some(2))
    );
    // A waiting placement can be deleted.
    assert_eq!(
        call(&api, "DELETE", "/v1/placements/drop", Some(OPERATOR), None).0,
        200
    );
    // The node comes back: the placement binds where it was.
    let spec = serde_json::to_string(&h1()[0]).unwrap();
    assert_eq!(
        call(&api, "POST", "/v1/nodes", Some(ADMIN), Some(&spec)).0,
        200
    );
    let (_, v) = call(&api, "GET", "/v1/placements/keep", Some(VIEWER), None);
    assert_eq!(v["state"], "placed", "{v}");
    assert_eq!(v["placement"], before["placement"]);
    drop(api);
    // And a later restart with the node knows the deletion.
    let api = start_with("waiting", Some(db), h1());
    assert_eq!(
        call(&api, "GET", "/v1/placements/drop", Some(VIEWER), None).0,
        404
    );
    assert_eq!(
        call(&api, "GET", "/v1/placements/keep", Some(VIEWER), None).0,
        200
    );
}

/// A gateway reports with the gateway role (a viewer cannot, and a
/// gateway can place nothing); a window is counted once; a bad one names
/// its field.
#[test]
fn gateways_report_with_their_role_and_bad_windows_name_the_field() {
    let api = start("gateways", None);
    let path = "/v1/gateways/gw-1/windows";
    let body = valid_window().to_string();
    let (st, v) = call(&api, "POST", path, Some(VIEWER), Some(&body));
    assert_eq!(
        (st, v["field"].as_str()),
        (403, Some("authorization")),
        "{v}"
    );
    let (st, v) = call(&api, "POST", path, Some(GATEWAY), Some(&body));
    assert_eq!((st, &v["counted"]), (200, &json!(true)), "{v}");
    let (st, v) = call(&api, "POST", path, Some(GATEWAY), Some(&body));
    assert_eq!((st, &v["counted"]), (200, &json!(false)), "sent again: {v}");
    let (st, _) = call(&api, "POST", path, Some(OPERATOR), Some(&body));
    assert_eq!(st, 200, "an operator may report too");
    let (st, v) = call(
        &api,
        "POST",
        "/v1/placements",
        Some(GATEWAY),
        Some(&profile("nope", "m")),
    );
    assert_eq!(st, 403, "{v}");

    let mut bad = valid_window();
    bad["replicas"][0]["latency"]["counts"] = json!([1]);
    let (st, v) = call(&api, "POST", path, Some(GATEWAY), Some(&bad.to_string()));
    assert_eq!(
        (st, v["field"].as_str()),
        (400, Some("replicas[0].latency.counts")),
        "{v}"
    );
    let (st, v) = call(
        &api,
        "POST",
        "/v1/gateways/Not_A_Name/windows",
        Some(GATEWAY),
        Some(&body),
    );
    assert_eq!((st, v["field"].as_str()), (400, Some("name")), "{v}");
    bad = valid_window();
    bad["extra"] = json!(1);
    let (st, v) = call(&api, "POST", path, Some(GATEWAY), Some(&bad.to_string()));
    assert_eq!(st, 400, "{v}");
}
