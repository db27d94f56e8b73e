//! `vagus demo`: the whole system in one command on gpusim — it exits
//! with a summary that shows the loop acted, and a Ctrl-C stops all of it.

use crate::support::*;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Processes whose command line or environment names `dir`.
fn processes_under(dir: &std::path::Path) -> Vec<(u32, String)> {
    let needle = dir.display().to_string();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let read = |f: &str| std::fs::read(format!("/proc/{pid}/{f}")).unwrap_or_default();
        let (cmd, env) = (read("cmdline"), read("environ"));
        let zombie =
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z"));
        if !zombie
            && (String::from_utf8_lossy(&cmd).contains(&needle)
                || String::from_utf8_lossy(&env).contains(&needle))
        {
            found.push((pid, String::from_utf8_lossy(&cmd).replace('\0', " ")));
        }
    }
    found
}

/// No process the demo started runs on, and its directory is gone.
fn nothing_left(sim: &Sim) {
    let left = processes_under(&sim.dir);
    assert!(left.is_empty(), "left running: {left:?}");
    let dirs: Vec<_> = std::fs::read_dir(&sim.dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("vagus-demo-"))
        .collect();
    assert!(dirs.is_empty(), "left behind: {dirs:?}");
}

/// `vagus demo` with `args`, its temporary directory under the sim's.
fn demo(sim: &Sim, args: &[&str]) -> std::process::Command {
    let trace = shared_data("azure-llm-2023/AzureLLMInferenceTrace_conv.csv");
    let mut c = sim.vagus(&["demo", "--http", "127.0.0.1:0", "--trace"]);
    c.arg(trace)
        .args(args)
        .env("TMPDIR", &sim.dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

#[test]
fn the_demo_places_its_workloads_the_loop_acts_and_it_exits_with_a_summary() {
    let sim = Sim::new("demo");
    let out = demo(&sim, &["--duration", "30s", "--json"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert!(
        err.contains("the brain's API is at http://127.0.0.1:"),
        "{err}"
    );
    let ws = s["workloads"].as_array().unwrap();
    assert_eq!(ws.len(), 4, "{s}");
    for w in ws.iter().filter(|w| w["kind"] == "ls") {
        let a = w["slo_attainment"].as_f64();
        assert!(a.is_some_and(|a| (0.0..=1.0).contains(&a)), "{w}");
        assert!(w["requests"].as_u64().unwrap() > 0, "{w}");
        assert!(w["p99_ms"].as_f64().is_some(), "{w}");
    }
    for w in ws.iter().filter(|w| w["kind"] == "be") {
        assert!(w["tokens_per_s"].as_f64().unwrap() > 0.0, "{w}");
    }
    assert!(s["budget_changes"].as_u64().unwrap() >= 1, "{s}");
    assert!(
        s["reconfigurations_completed"].as_u64().unwrap() >= 1,
        "{s}"
    );
    let done = s["reconfigurations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["outcome"] == "completed")
        .unwrap_or_else(|| panic!("{s}"));
    let steps: Vec<&str> = done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x.as_str())
        .collect();
    assert!(steps.contains(&"canary"), "{done}");
    nothing_left(&sim);
}

/// playwright-core (npm, `tests/ui`) and Node to drive Chromium with; without
/// them the dashboard's part is skipped, unless `VAGUS_REQUIRE_CHROMIUM`.
fn playwright() -> Option<std::path::PathBuf> {
    let ui = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
    let here = ui.join("node_modules/playwright-core").is_dir()
        && std::process::Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        && std::path::Path::new("/usr/bin/chromium").exists();
    if here {
        return Some(ui.join("dashboard.mjs"));
    }
    assert!(
        std::env::var_os("VAGUS_REQUIRE_CHROMIUM").is_none(),
        "Chromium, Node and playwright-core are required here (VAGUS_REQUIRE_CHROMIUM is set): .ci/setup"
    );
    eprintln!("skipped the dashboard: no Chromium, Node or tests/ui/node_modules (.ci/setup)");
    None
}

#[test]
fn while_the_demo_runs_its_dashboard_works_in_chromium_and_ctrl_c_stops_everything() {
    let sim = Sim::new("demo-int");
    let mut child = demo(&sim, &["--duration", "120s"]).spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("the brain's API is at"), "{line}");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .to_string();
    // Once its four replicas run, the clients are about to start.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pids: Vec<u32> = processes_under(&sim.dir)
            .iter()
            .filter(|(_, c)| c.contains(" serve "))
            .map(|(p, _)| *p)
            .collect();
        if pids.len() >= 4 {
            break;
        }
        assert!(Instant::now() < deadline, "no four replicas within 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    if let Some(script) = playwright() {
        let shot = target_dir().join("test-artifacts").join("dashboard.png");
        std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(&shot);
        let out = std::process::Command::new("node")
            .arg(&script)
            .args([
                url.as_str(),
                "vagus-local-admin-token-0001",
                "vagus-local-viewer-token-0001",
            ])
            .arg(&shot)
            .output()
            .unwrap();
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert!(r["error"].is_null(), "{r}");
        assert_eq!(r["console_errors"], serde_json::json!([]), "{r}");
        assert!(
            r["points_after"].as_u64().unwrap() > r["points_before"].as_u64().unwrap(),
            "the chart gains points while the demo runs: {r}"
        );
        assert!(
            r["explanation"].as_str().unwrap().contains("candidate"),
            "{r}"
        );
        assert_eq!(r["controls_shown"], true, "{r}");
        assert_eq!(r["admin_pause"], "pause_reconfiguration: done", "{r}");
        assert!(
            r["control_rows"]
                .as_array()
                .unwrap()
                .iter()
                .any(|row| row["actor"] == "local"
                    && row["summary"].as_str().unwrap().contains("paused")),
            "the admin's click is in the audit trail: {r}"
        );
        assert_eq!(r["viewer_controls_shown"], false, "{r}");
        assert!(
            r["viewer_pause"].as_str().unwrap().contains("403"),
            "the viewer's is refused: {r}"
        );
        assert!(
            std::fs::metadata(&shot).unwrap().len() > 10_000,
            "the screenshot, {}",
            shot.display()
        );
    }
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "still running 15 s after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut rest = String::new();
    use std::io::Read;
    err.read_to_string(&mut rest).unwrap();
    assert_eq!(status.code(), Some(130), "{rest}");
    assert!(rest.contains("interrupted"), "{rest}");
    nothing_left(&sim);
}
