//! schemathesis, the OpenAPI fuzzer, against `vagus brain --http` with
//! nodes and tokens: every operation, the checks a generated client relies
//! on (no 5xx, only documented statuses, content types and bodies that
//! match the schema), and a stateful phase that creates, reads and deletes
//! placements through the document's links. Bounded in examples, so the
//! suite stays fast; `.ci/run` installs the pinned version.

use crate::support::*;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

/// The version `.ci/run` installs.
const PINNED: &str = "4.32.5";

const TOKEN: &str = "fuzzer-admin-token-0001";

fn schemathesis_version() -> Option<String> {
    let out = Command::new("schemathesis")
        .arg("--version")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn schemathesis_finds_nothing() {
    let required = std::env::var_os("VAGUS_REQUIRE_SCHEMATHESIS").is_some();
    let Some(version) = schemathesis_version() else {
        assert!(
            !required,
            "schemathesis is required here (VAGUS_REQUIRE_SCHEMATHESIS is set): pip install schemathesis=={PINNED}"
        );
        eprintln!("skipped: no schemathesis (pip install schemathesis=={PINNED})");
        return;
    };
    assert!(
        !required || version.ends_with(PINNED),
        "schemathesis {PINNED} is pinned; found {version}"
    );
    let sim = Sim::new("schemathesis");
    let dir = sim.dir.clone();
    let tokens = admin_tokens(&sim, TOKEN);
    let nodes = serde_json::json!([
        {"name": "node-a", "cpu_milli": 64000, "memory_mib": 262144, "labels": {},
         "gpus": [{"model": "NVIDIA H100 80GB HBM3"}, {"model": "NVIDIA H100 80GB HBM3"}]},
        {"name": "node-b", "cpu_milli": 64000, "memory_mib": 262144, "labels": {"zone": "z1"},
         "gpus": [{"model": "NVIDIA A100-SXM4-80GB"}, {"model": "Tesla T4"}]}
    ]);
    std::fs::write(dir.join("nodes.json"), nodes.to_string()).unwrap();
    let addr = format!("127.0.0.1:{}", free_tcp_port());
    let brain = start_brain_with(
        &sim,
        &[
            "--http",
            &addr,
            "--tokens",
            &tokens,
            "--nodes",
            dir.join("nodes.json").to_str().unwrap(),
            "--audit",
            dir.join("audit.sqlite").to_str().unwrap(),
            "--stats-every",
            "0",
        ],
    );
    brain
        .wait_for(Duration::from_secs(60), |v| v["event"] == "http")
        .expect("the brain serves HTTP");
    let report = dir.join("report");
    // `timeout` bounds a run that hangs; 20 examples per operation take
    // ~15 s on an idle two-core machine.
    let out = Command::new("timeout")
        .arg("600")
        .arg("schemathesis")
        .args(["run", &format!("http://{addr}/openapi.json")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--header",
            &format!("Authorization: Bearer {TOKEN}"),
            "--phases",
            "coverage,fuzzing,stateful",
            "--max-examples",
            "20",
            "--suppress-health-check",
            "all",
            "--workers",
            "1",
            "--seed",
            "1",
            "--generation-database",
            ":memory:",
            "--wait-for-schema",
            "30",
            "--request-timeout",
            "20",
            "--no-color",
            "--report",
            "ndjson",
            "--report-dir",
        ])
        .arg(&report)
        // It writes its caches into the working directory.
        .current_dir(&dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis failed ({}):\n{text}",
        out.status
    );
    // What was exercised: every operation, and the stateful phase's
    // create → read → delete of placements.
    let mut seen: BTreeMap<(String, String, String, u16), u32> = BTreeMap::new();
    for entry in std::fs::read_dir(&report).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "ndjson") {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let Some(s) = v.get("ScenarioFinished") else {
                continue;
            };
            let phase = s["phase"].as_str().unwrap_or("").to_string();
            let interactions = s["recorder"]["interactions"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            for i in interactions.values() {
                let method = i["request"]["method"].as_str().unwrap_or("").to_string();
                let uri = i["request"]["uri"].as_str().unwrap_or("");
                let path = uri
                    .split_once(&addr)
                    .map_or(uri, |(_, p)| p)
                    .split('?')
                    .next()
                    .unwrap_or("")
                    .to_string();
                let path = if path.starts_with("/v1/placements/") {
                    "/v1/placements/{id}".to_string()
                } else {
                    path
                };
                let status = i["response"]["status_code"].as_u64().unwrap_or(0) as u16;
                *seen
                    .entry((phase.clone(), method, path, status))
                    .or_default() += 1;
            }
        }
    }
    let count = |phase: &str, method: &str, path: &str, status: u16| {
        seen.get(&(phase.into(), method.into(), path.into(), status))
            .copied()
            .unwrap_or(0)
    };
    let operations: std::collections::BTreeSet<(&str, &str)> = seen
        .keys()
        .map(|(_, m, p, _)| (m.as_str(), p.as_str()))
        .collect();
    for op in [
        ("POST", "/v1/placements"),
        ("GET", "/v1/placements"),
        ("GET", "/v1/placements/{id}"),
        ("DELETE", "/v1/placements/{id}"),
        ("GET", "/v1/nodes"),
        ("POST", "/v1/nodes"),
        ("GET", "/v1/decisions"),
        ("GET", "/v1/events"),
        ("POST", "/v1/controls"),
        ("GET", "/v1/session"),
        ("GET", "/healthz"),
        ("GET", "/metrics"),
    ] {
        assert!(
            operations.contains(&op),
            "{op:?} was never called: {seen:?}"
        );
    }
    // Created: placed (201) or, once the fuzzing filled or cordoned the
    // nodes, queued (202).
    assert!(
        count("stateful", "POST", "/v1/placements", 201)
            + count("stateful", "POST", "/v1/placements", 202)
            > 0,
        "{seen:?}"
    );
    assert!(
        count("stateful", "GET", "/v1/placements/{id}", 200) > 0,
        "{seen:?}"
    );
    assert!(
        count("stateful", "DELETE", "/v1/placements/{id}", 200) > 0,
        "{seen:?}"
    );
    assert!(
        seen.keys().all(|(_, _, _, s)| *s < 500),
        "a server error: {seen:?}"
    );
}
