//! `vagus serve` (the model server stand-in) and `vagus bench serve` (its
//! trace-driven client): flags into `vagus_serve`'s configurations.

use crate::load::parse_duration;
use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;
use vagus_serve::client::{Arrivals, BenchConfig};
use vagus_serve::cost::CostModel;
use vagus_serve::server::Config;

#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// HOST:PORT to serve on.
    #[arg(long, env = "VAGUS_SERVE_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: String,
    /// The model name clients ask for.
    #[arg(long, env = "VAGUS_SERVE_MODEL", default_value = "vagus-8b")]
    pub model: String,
    /// Weights (GB, 16-bit): held as device memory, read by every decode step.
    #[arg(long, env = "VAGUS_SERVE_MODEL_GB", default_value_t = 16.0)]
    pub model_gb: f64,
    /// KV cache per token of context (MiB; Llama-3-8B's is 0.125).
    #[arg(long, default_value_t = 0.125)]
    pub kv_mib_per_token: f64,
    /// The device's dense FP16 peak (TFLOPS; an H100 SXM's by default).
    #[arg(long, default_value_t = 989.0)]
    pub peak_tflops: f64,
    /// The device's HBM bandwidth (GB/s).
    #[arg(long, default_value_t = 3350.0)]
    pub hbm_gbps: f64,
    /// Fraction of peak FLOPs a prefill reaches.
    #[arg(long, default_value_t = 0.5)]
    pub mfu: f64,
    /// Fraction of peak bandwidth a decode step reaches.
    #[arg(long, default_value_t = 0.8)]
    pub bandwidth_eff: f64,
    /// Sequences running at once (vLLM's max_num_seqs).
    #[arg(long, default_value_t = 256)]
    pub max_batch: usize,
    /// Tokens per iteration (vLLM's max_num_batched_tokens).
    #[arg(long, default_value_t = 8192)]
    pub max_batched_tokens: u64,
    /// Prompt plus output tokens a request may hold.
    #[arg(long, default_value_t = 16384)]
    pub max_model_len: u64,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    pub device: i32,
    /// Latency and TTFT histograms in buckets 4% apart (quantiles read
    /// from them are within 4%) instead of vLLM's; pages grow ~10×.
    #[arg(long)]
    pub fine_buckets: bool,
}

#[derive(Subcommand, Clone, Debug)]
pub enum BenchCommand {
    /// Replay a trace (or Poisson/gamma arrivals) against an
    /// OpenAI-compatible completions server; report TTFT, TPOT, latency.
    Serve(BenchServeArgs),
    /// Four `vagus serve` workloads on one GPU under each sharing policy
    /// (exclusive, time-sliced, static MPS shares, static budgets, and the
    /// control loop), the same arrivals each time.
    Loop(crate::bench_loop_cmd::BenchLoopArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ArrivalKind {
    Poisson,
    Gamma,
}

#[derive(Args, Clone, Debug)]
pub struct BenchServeArgs {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    #[arg(long, default_value = "vagus-8b")]
    pub model: String,
    /// The Azure LLM trace (TIMESTAMP,ContextTokens,GeneratedTokens): its
    /// arrivals (unless --qps) and its prompt and output lengths.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Trace time runs this many times faster.
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Keep each trace arrival with this probability (< 1) or multiply it (> 1).
    #[arg(long, default_value_t = 1.0)]
    pub rate_scale: f64,
    /// Synthetic arrivals at this rate (requests/s) instead of the trace's times.
    #[arg(long)]
    pub qps: Option<f64>,
    #[arg(long, value_enum, default_value = "poisson")]
    pub arrivals: ArrivalKind,
    /// Gamma arrivals' shape (1 is Poisson; below 1 burstier).
    #[arg(long, default_value_t = 1.0)]
    pub burstiness: f64,
    /// Stop after this much (scaled) trace time: 30s, 500ms, 2m.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<std::time::Duration>,
    #[arg(long)]
    pub max_requests: Option<usize>,
    /// Without a trace: each request's prompt and output tokens.
    #[arg(long, default_value_t = 1024)]
    pub prompt_tokens: u64,
    #[arg(long, default_value_t = 128)]
    pub output_tokens: u64,
    /// End-to-end latency objective (ms): SLO attainment and goodput.
    #[arg(long)]
    pub slo_ms: Option<f64>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn serve(a: ServeArgs) -> Result<()> {
    let cfg = Config {
        listen: crate::addr::resolve("--listen", &a.listen)?,
        model: a.model,
        cost: CostModel {
            model_gb: a.model_gb,
            kv_mib_per_token: a.kv_mib_per_token,
            peak_tflops: a.peak_tflops,
            hbm_gbps: a.hbm_gbps,
            mfu: a.mfu,
            bandwidth_eff: a.bandwidth_eff,
        },
        max_batch: a.max_batch,
        token_budget: a.max_batched_tokens,
        max_model_len: a.max_model_len,
        device: a.device,
        fine_buckets: a.fine_buckets,
    };
    crate::runtime()?.block_on(async {
        let s = vagus_serve::server::start(cfg.clone()).await?;
        eprintln!(
            "vagus serve: {} on {} ({} SMs) at http://{}",
            cfg.model, s.device.name, s.device.sms, s.addr
        );
        println!(
            "{}",
            serde_json::json!({"event": "serving", "addr": s.addr.to_string(), "model": cfg.model,
                "device": s.device, "cost": cfg.cost})
        );
        s.task
            .await
            .context("the HTTP server stopped")?
            .context("the HTTP server failed")
    })
}

pub fn bench(c: BenchCommand) -> Result<()> {
    let a = match c {
        BenchCommand::Serve(a) => a,
        BenchCommand::Loop(a) => return crate::bench_loop_cmd::run(a),
    };
    let arrivals = match (a.qps, a.arrivals) {
        (None, _) => Arrivals::Trace,
        (Some(q), ArrivalKind::Poisson) => Arrivals::Poisson(q),
        (Some(q), ArrivalKind::Gamma) => Arrivals::Gamma(q, a.burstiness),
    };
    let cfg = BenchConfig {
        url: a.url,
        model: a.model,
        trace: a.trace,
        arrivals,
        time_scale: a.time_scale,
        rate_scale: a.rate_scale,
        duration: a.duration,
        max_requests: a.max_requests,
        prompt_tokens: a.prompt_tokens,
        output_tokens: a.output_tokens,
        slo_ms: a.slo_ms,
        seed: a.seed,
    };
    let r = crate::runtime()?.block_on(vagus_serve::client::run(&cfg))?;
    if a.json {
        println!("{r}");
        return Ok(());
    }
    let row = |name: &str, v: &serde_json::Value| {
        println!(
            "  {name:<6} p50 {:>9.2}  p90 {:>9.2}  p99 {:>9.2} ms",
            v["p50"].as_f64().unwrap_or(f64::NAN),
            v["p90"].as_f64().unwrap_or(f64::NAN),
            v["p99"].as_f64().unwrap_or(f64::NAN)
        )
    };
    println!(
        "{} requests ({} failed) in {:.1} s: {:.2} req/s, {:.0} output tokens/s (time scale {}, rate scale {})",
        r["requests"],
        r["failed"],
        r["duration_s"].as_f64().unwrap_or(0.0),
        r["throughput_rps"].as_f64().unwrap_or(0.0),
        r["tokens_per_s"].as_f64().unwrap_or(0.0),
        cfg.time_scale,
        cfg.rate_scale
    );
    row("TTFT", &r["ttft_ms"]);
    row("TPOT", &r["tpot_ms"]);
    row("e2e", &r["e2e_ms"]);
    if let Some(s) = cfg.slo_ms {
        println!(
            "  SLO {s} ms: {:.1}% attained, goodput {:.2} req/s",
            r["slo_attainment"].as_f64().unwrap_or(0.0) * 100.0,
            r["goodput_rps"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}
