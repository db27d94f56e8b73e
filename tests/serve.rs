//! `vagus serve` on gpusim under `vagus bench serve`: the OpenAI API
//! answered (streamed and not) with bad input named, vLLM's metrics read
//! by promtool and by `prometheus_client`, latency that grows with load,
//! with prompt length and with a smaller MPS share.

use crate::support::*;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// The trace every load test replays.
fn azure_trace() -> std::path::PathBuf {
    shared_data("azure-llm-2023").join("AzureLLMInferenceTrace_conv.csv")
}

pub(crate) struct Server {
    child: Child,
    pub(crate) url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A 32 GB model (a 16B-parameter stand-in): 12 ms a decode step on the
/// simulated H100, 75 ms to prefill 1,000 tokens.
const MODEL_GB: &str = "32";

fn serve(sim: &Sim, extra_env: &[(&str, &str)]) -> Server {
    serve_with(sim, extra_env, &[])
}

/// `vagus serve` for model `m` (see [`MODEL_GB`]), with more flags.
pub(crate) fn serve_with(sim: &Sim, extra_env: &[(&str, &str)], flags: &[&str]) -> Server {
    let port = free_tcp_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "serve",
        "--listen",
        &listen,
        "--model",
        "m",
        "--model-gb",
        MODEL_GB,
    ];
    args.extend_from_slice(flags);
    let mut c = sim.vagus(&args);
    for (k, v) in extra_env {
        c.env(k, v);
    }
    let child = c
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let s = Server { child, url };
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(port, "/health").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "vagus serve did not become healthy"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    s
}

pub(crate) fn port(s: &Server) -> u16 {
    s.url.rsplit(':').next().unwrap().parse().unwrap()
}

pub(crate) fn request(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let _ = write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn get(port: u16, path: &str) -> (u16, String) {
    request(port, "GET", path, "")
}

/// `vagus bench serve ARGS --json` against `s`.
pub(crate) fn bench(sim: &Sim, s: &Server, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["bench", "serve", "--url", &s.url, "--model", "m", "--json"];
    all.extend_from_slice(args);
    let out = sim.vagus(&all).output().unwrap();
    assert!(
        out.status.success(),
        "bench serve {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn bench_serve_says_why_requests_failed() {
    let sim = Sim::new("serve-errors");
    let s = serve(&sim, &[]);
    // Prompts far over the server's context: each refused with a 400.
    let r = bench(
        &sim,
        &s,
        &[
            "--qps",
            "20",
            "--max-requests",
            "4",
            "--prompt-tokens",
            "20000",
            "--output-tokens",
            "4",
        ],
    );
    assert_eq!(
        (r["requests"].as_u64(), r["failed"].as_u64()),
        (Some(0), Some(4)),
        "{r}"
    );
    assert_eq!(r["errors"]["status"], 4, "{r}");
    let first = r["first_error"].as_str().unwrap_or_default();
    assert!(
        first.starts_with("status: 400") && first.contains("prompt"),
        "{r}"
    );
}

#[test]
fn completions_are_answered_and_bad_input_is_named() {
    let sim = Sim::new("serve-api");
    let s = serve(&sim, &[]);
    let p = port(&s);
    let (st, body) = request(
        p,
        "POST",
        "/v1/completions",
        r#"{"model":"m","prompt":"hello there, model","max_tokens":5}"#,
    );
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 5, "{v}");
    assert_eq!(
        v["usage"]["prompt_tokens"], 5,
        "18 characters: 5 tokens: {v}"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    // Streamed, with token ids as the prompt.
    let (st, body) = request(
        p,
        "POST",
        "/v1/completions",
        r#"{"model":"m","prompt":[1,2,3,4,5,6,7],"max_tokens":4,"stream":true,"stream_options":{"include_usage":true}}"#,
    );
    assert_eq!(st, 200, "{body}");
    let data: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{body}");
    let usage: serde_json::Value = serde_json::from_str(data[data.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["prompt_tokens"], 7);
    assert_eq!(usage["usage"]["completion_tokens"], 4);
    let text: String = data[..data.len() - 2]
        .iter()
        .map(|d| {
            serde_json::from_str::<serde_json::Value>(d).unwrap()["choices"][0]["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(text.matches("tok").count(), 4, "{body}");
    // Bad input: 4xx naming the parameter; the server keeps serving.
    for (body, status, param) in [
        (
            r#"{"model":"m","prompt":"x","max_tokens":0}"#,
            400,
            "max_tokens",
        ),
        (
            r#"{"model":"m","prompt":"x","max_tokens":100000}"#,
            400,
            "max_tokens",
        ),
        (
            r#"{"model":"m","prompt":"x","prompt_tokens":20000}"#,
            400,
            "prompt",
        ),
        (r#"{"model":"other","prompt":"x"}"#, 404, "model"),
        (r#"{"prompt":"x"}"#, 400, "model"),
        (
            r#"{"model":"m","prompt":"x","max_tokens":"many"}"#,
            400,
            "body",
        ),
        ("{not json", 400, "body"),
    ] {
        let (st, out) = request(p, "POST", "/v1/completions", body);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        assert_eq!(
            (st, v["error"]["param"].as_str()),
            (status, Some(param)),
            "{body}: {out}"
        );
    }
    assert_eq!(get(p, "/health").0, 200);
}

#[test]
fn vllm_metrics_pass_promtool_and_prometheus_client() {
    let sim = Sim::new("serve-metrics");
    let s = serve(&sim, &[]);
    let r = bench(
        &sim,
        &s,
        &[
            "--qps",
            "20",
            "--max-requests",
            "10",
            "--prompt-tokens",
            "100",
            "--output-tokens",
            "8",
        ],
    );
    assert_eq!(
        (r["requests"].as_u64(), r["failed"].as_u64()),
        (Some(10), Some(0)),
        "{r}"
    );
    let (st, text) = get(port(&s), "/metrics");
    assert_eq!(st, 200);
    for name in [
        "vllm:e2e_request_latency_seconds_bucket",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:time_per_output_token_seconds_bucket",
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:request_success_total",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    assert!(
        text.contains("vllm:prompt_tokens_total{model_name=\"m\"} 1000"),
        "{text}"
    );
    assert!(
        text.contains("vllm:generation_tokens_total{model_name=\"m\"} 80"),
        "{text}"
    );
    promtool(&text);
    // prometheus_client's parser reads the histograms.
    let script = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\n\
        fams = {f.name: f for f in p(sys.stdin.read())}\n\
        h = fams['vllm:e2e_request_latency_seconds']\n\
        assert h.type == 'histogram', h.type\n\
        count = [s.value for s in h.samples if s.name.endswith('_count')][0]\n\
        print(h.type, int(count), fams['vllm:time_to_first_token_seconds'].type)";
    let out = run_with_stdin(
        {
            let mut c = std::process::Command::new("python3");
            c.args(["-c", script]).stderr(Stdio::piped());
            c
        },
        &text,
    );
    if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("No module named") {
        assert!(
            std::env::var_os("VAGUS_REQUIRE_PROMETHEUS_CLIENT").is_none(),
            "prometheus_client is required here: pip install prometheus-client"
        );
        eprintln!("skipped the prometheus_client check: pip install prometheus-client");
        return;
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "histogram 10 histogram"
    );
}

/// `promtool check metrics`: the text parses, and its only lint is the
/// one every vLLM server gets — names with vLLM's `vllm:` prefix (colons
/// are meant for recording rules).
fn promtool(text: &str) {
    let mut cmd = std::process::Command::new("promtool");
    cmd.args(["check", "metrics"]).stderr(Stdio::piped());
    let out = run_with_stdin(cmd, text);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let other: Vec<&str> = said
        .lines()
        .filter(|l| !(l.starts_with("vllm:") && l.ends_with("metric names should not contain ':'")))
        .collect();
    assert!(other.is_empty(), "promtool: {said}");
    assert!(
        said.lines().count() >= 8,
        "every vllm: name is linted, so parsed: {said}"
    );
}

fn p(r: &serde_json::Value, what: &str, q: &str) -> f64 {
    r[what][q]
        .as_f64()
        .unwrap_or_else(|| panic!("no {what}.{q}: {r}"))
}

/// The Azure trace (mean 5.5 requests/s) replayed at 30% and at 90% of
/// the capacity the server showed for its mix: every request answered,
/// and the first token's p99 (where queueing shows) over 3× higher at 90%.
#[test]
fn latency_grows_with_load_on_the_azure_trace() {
    let sim = Sim::new("serve-load");
    let s = serve(&sim, &[]);
    let trace = azure_trace();
    let trace = trace.to_str().unwrap();
    // Capacity: 40 of the trace's requests at once.
    let burst = bench(
        &sim,
        &s,
        &["--trace", trace, "--qps", "100000", "--max-requests", "40"],
    );
    assert_eq!(burst["failed"], 0, "{burst}");
    let capacity = burst["throughput_rps"].as_f64().unwrap();
    // Scale the trace's time so that its first 20 s offer the load: the
    // trace time by which load × capacity × 20 requests have arrived.
    let rows = vagus_serve::client::read_trace(std::path::Path::new(trace)).unwrap();
    let at = |load: f64| {
        let n = (load * capacity * 20.0).round() as usize;
        let scale = format!("{:.4}", rows[n.min(rows.len() - 1)].0 / 20.0);
        let r = bench(
            &sim,
            &s,
            &[
                "--trace",
                trace,
                "--time-scale",
                &scale,
                "--duration",
                "20s",
            ],
        );
        let offered = r["config"]["planned"].as_f64().unwrap() / 20.0;
        assert!(
            (offered / (load * capacity) - 1.0).abs() < 0.1,
            "offered {offered} req/s for {load} of {capacity}: {r}"
        );
        r
    };
    let low = at(0.3);
    let high = at(0.9);
    for r in [&low, &high] {
        assert_eq!(r["failed"], 0, "{r}");
        assert!(r["requests"].as_u64().unwrap() >= 10, "{r}");
    }
    let (l, h) = (p(&low, "ttft_ms", "p99"), p(&high, "ttft_ms", "p99"));
    assert!(
        h > 3.0 * l,
        "TTFT p99 {h} ms at 90% of {capacity:.2} req/s vs {l} ms at 30%: low {low} high {high}"
    );
}

#[test]
fn ttft_grows_with_prompt_length_and_a_smaller_share_is_slower() {
    let sim = Sim::new("serve-shape");
    let s = serve(&sim, &[]);
    let run = |s: &Server, prompt: &str| {
        bench(
            &sim,
            s,
            &[
                "--qps",
                "2",
                "--max-requests",
                "6",
                "--prompt-tokens",
                prompt,
                "--output-tokens",
                "16",
            ],
        )
    };
    let short = run(&s, "256");
    let long = run(&s, "4096");
    let (a, b) = (p(&short, "ttft_ms", "p50"), p(&long, "ttft_ms", "p50"));
    assert!(
        b > 3.0 * a,
        "TTFT p50 {b} ms at 4,096 tokens vs {a} ms at 256"
    );
    drop(s);
    // The same load on half the SMs (an MPS share of 50%): the prompts'
    // compute-bound prefill takes twice as long, so long prompts' requests
    // are slower; decode steps are memory-bound, and half of an H100's SMs
    // still draw its whole bandwidth, so the time per output token holds.
    let half = serve(&sim, &[("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "50")]);
    let slow = run(&half, "4096");
    let (full_p99, half_p99) = (p(&long, "e2e_ms", "p99"), p(&slow, "e2e_ms", "p99"));
    assert!(
        half_p99 > 1.3 * full_p99,
        "e2e p99 {half_p99} ms at a 50% share vs {full_p99} ms at 100% (4,096-token prompts)"
    );
    let decode = run(&half, "256");
    let (full_tpot, half_tpot) = (p(&short, "tpot_ms", "p50"), p(&decode, "tpot_ms", "p50"));
    assert!(
        half_tpot < 1.2 * full_tpot,
        "TPOT p50 {half_tpot} ms at a 50% share vs {full_tpot} ms at 100%"
    );
}
