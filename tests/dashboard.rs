//! The brain's dashboard (`/ui`) in a real browser: headless Chromium loads
//! the page with a token and runs its scripts against the brain's API; the
//! DOM it ends with shows every GPU, every workload, the decisions and the
//! chart, for 100 workloads.

use crate::brain_api::{TOKEN, http, http_addr, profile, tokens, with};
use crate::support::*;
use std::process::Command;

fn chromium() -> Option<&'static str> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    if found.is_none() {
        assert!(
            std::env::var_os("VAGUS_REQUIRE_CHROMIUM").is_none(),
            "Chromium is required here (VAGUS_REQUIRE_CHROMIUM is set): apt-get install chromium"
        );
        eprintln!("skipped: no Chromium (apt-get install chromium)");
    }
    found
}

/// The page's DOM after its scripts ran for `ms` of Chromium's virtual
/// time (timers and fetches run; the page's own clock is virtual too, so
/// how long drawing takes cannot be read from it).
fn dump(browser: &str, url: &str, ms: u32) -> String {
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1400,1800",
        ])
        .arg(format!("--virtual-time-budget={ms}"))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_dashboard_shows_100_workloads_their_gpus_and_decisions_in_a_browser() {
    let Some(browser) = chromium() else { return };
    let sim = Sim::new("dashboard");
    let b = start_brain_with(
        &sim,
        &[
            "--http",
            "127.0.0.1:0",
            "--tokens",
            &tokens(&sim),
            "--stats-every",
            "0",
        ],
    );
    let addr = http_addr(&b);
    // 25 nodes of four H100s; 100 workloads of a quarter GPU, half of them
    // latency-sensitive.
    for n in 0..25 {
        let gpus = vec![serde_json::json!({"model": "NVIDIA H100 80GB HBM3"}); 4];
        let node = serde_json::json!({"name": format!("node-{n:02}"), "cpu_milli": 64_000,
            "memory_mib": 512_000, "gpus": gpus});
        let (st, v) = http(addr, "POST", "/v1/nodes", &node.to_string());
        assert_eq!(st, 200, "{v}");
    }
    for i in 0..100 {
        let extra = if i % 2 == 0 {
            serde_json::json!({"model_size_gb": 2.0, "share_pct": 25, "cpu_milli": 100, "memory_mib": 256})
        } else {
            serde_json::json!({"model_size_gb": 2.0, "share_pct": 25, "cpu_milli": 100, "memory_mib": 256,
                "priority": "P3", "sla_ms": null})
        };
        let (st, v) = http(
            addr,
            "POST",
            "/v1/placements",
            &with(profile(&format!("w-{i:03}")), extra),
        );
        assert_eq!(st, 201, "{v}");
    }
    // The assets are the brain's own, with no token.
    let (st, page) = get(addr, "/ui").unwrap();
    assert_eq!(st, 200);
    assert!(page.contains("/ui/uplot.js"), "{page}");
    let dom = dump(browser, &format!("http://{addr}/ui#token={TOKEN}"), 5000);
    assert!(dom.contains("live · 100 workloads on 25 nodes"), "{dom}");
    assert_eq!(
        dom.matches("data-chart=\"").count(),
        100,
        "a row per workload"
    );
    assert_eq!(dom.matches("class=\"gpu\"").count(), 100, "every GPU");
    assert!(
        dom.matches("<details").count() >= 100,
        "a trail row per placement"
    );
    assert!(dom.contains("class=\"uplot"), "the chart is drawn");
    assert!(
        !dom.contains("id=\"controls-panel\" hidden"),
        "an admin's token shows the controls"
    );
    // The trail as a stream, which the page follows: the rows so far, then
    // each as it commits; resumed after the last id a client got.
    let follow = |extra: &[&str], secs: &str| {
        Command::new("curl")
            .args([
                "-sN",
                "--max-time",
                secs,
                "-H",
                &format!("Authorization: Bearer {TOKEN}"),
            ])
            .args(["-H", "Accept: text/event-stream"])
            .args(extra)
            .arg(format!("http://{addr}/v1/decisions?path=direct"))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("curl")
    };
    let live = follow(&[], "4");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (st, v) = http(
        addr,
        "POST",
        "/v1/placements",
        &with(
            profile("late"),
            serde_json::json!(
        {"model_size_gb": 2.0, "share_pct": 25, "cpu_milli": 100, "memory_mib": 256}),
        ),
    );
    assert_eq!(st, 201, "{v}");
    let text = String::from_utf8(live.wait_with_output().unwrap().stdout).unwrap();
    assert_eq!(text.matches("event: direct").count(), 101, "{text}");
    assert!(
        text.contains("\"workload\":\"late\""),
        "the row committed while it followed"
    );
    let resumed = follow(&["-H", "Last-Event-ID: 100"], "2");
    let text = String::from_utf8(resumed.wait_with_output().unwrap().stdout).unwrap();
    assert_eq!(text.matches("event: direct").count(), 1, "{text}");
    assert!(text.contains("id: 101"), "{text}");
    // A wrong token: the page says so and asks for another.
    let dom = dump(
        browser,
        &format!("http://{addr}/ui#token=not-a-token-of-the-brain"),
        2000,
    );
    assert!(dom.contains("the brain refused the token (401)"), "{dom}");
}
