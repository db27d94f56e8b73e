//! `vagus bench loop`: flags into `vagus_bench::loop_bench::LoopConfig`.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;
use vagus_bench::loop_bench::{self, LoopConfig, Policy};

#[derive(Args, Clone, Debug)]
pub struct BenchLoopArgs {
    /// exclusive, time-sliced, static-equal, static-class, static-budget,
    /// vagus, or all (each in turn, exclusive first).
    #[arg(long, default_value = "all")]
    pub policy: String,
    /// How long each policy's clients run: 60s, 2m.
    #[arg(long, value_parser = crate::load::parse_duration, default_value = "60s")]
    pub duration: Duration,
    /// The arrival trace (TIMESTAMP,ContextTokens,GeneratedTokens).
    #[arg(
        long,
        default_value = "../shared/data/azure-llm-2023/AzureLLMInferenceTrace_conv.csv"
    )]
    pub trace: PathBuf,
    /// Trace time runs this many times faster.
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// The latency-sensitive servers' arrivals are thinned (below 1) or
    /// multiplied (above 1) by this, before chat-b's step.
    #[arg(long, default_value_t = 1.0)]
    pub rate_scale: f64,
    /// chat-b starts this far into the (scaled) trace, so the two
    /// latency-sensitive servers' bursts differ.
    #[arg(long, value_parser = crate::load::parse_duration, default_value = "600s")]
    pub offset: Duration,
    /// chat-b's arrivals are multiplied by this halfway through.
    #[arg(long, default_value_t = 3.0)]
    pub step: f64,
    /// The latency-sensitive servers' end-to-end SLO (ms): one for both,
    /// or chat-a's,chat-b's; default 1.5 × each one's p99 alone (from the
    /// exclusive run).
    #[arg(long, value_delimiter = ',', num_args = 1..=2)]
    pub slo_ms: Vec<f64>,
    /// Requests each best-effort client keeps in flight.
    #[arg(long, default_value_t = 8)]
    pub be_concurrency: usize,
    /// The vagus policy's brain tells its replicas their roles, so that the
    /// shims hold best-effort launches back for latency-sensitive work
    /// (`control.hold_best_effort`).
    #[arg(long)]
    pub hold_best_effort: bool,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Run on the real driver (NVIDIA's libcuda and an MPS-capable GPU), not gpusim.
    #[arg(long)]
    pub gpu: bool,
    /// Where each policy keeps its processes' files and logs.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print the runs as a JSON array.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: BenchLoopArgs) -> Result<()> {
    let policies = Policy::parse(&a.policy).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        a.time_scale > 0.0 && a.time_scale.is_finite(),
        "--time-scale {}: must be above 0",
        a.time_scale
    );
    anyhow::ensure!(
        a.rate_scale > 0.0 && a.rate_scale.is_finite(),
        "--rate-scale {}: must be above 0",
        a.rate_scale
    );
    anyhow::ensure!(
        a.step > 0.0 && a.step.is_finite(),
        "--step {}: must be above 0",
        a.step
    );
    anyhow::ensure!(a.be_concurrency > 0, "--be-concurrency must be at least 1");
    anyhow::ensure!(!a.duration.is_zero(), "--duration must be above 0");
    anyhow::ensure!(
        a.slo_ms.iter().all(|s| *s > 0.0 && s.is_finite()),
        "--slo-ms {:?}: each must be above 0",
        a.slo_ms
    );
    let (exe, shim) = crate::run::vagus_and_shim()?;
    let gpusim = if a.gpu {
        None
    } else {
        Some(crate::gpusim_cmd::libdir()?)
    };
    let dir = a.dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("vagus-bench-loop-{}", std::process::id()))
    });
    let cfg = LoopConfig {
        vagus: exe,
        shim,
        gpusim,
        policies,
        duration: a.duration,
        trace: a.trace,
        time_scale: a.time_scale,
        rate_scale: a.rate_scale,
        offset: a.offset,
        step: a.step,
        slo_ms: match a.slo_ms.as_slice() {
            [] => None,
            [s] => Some((*s, *s)),
            [x, y, ..] => Some((*x, *y)),
        },
        be_concurrency: a.be_concurrency,
        hold_best_effort: a.hold_best_effort,
        seed: a.seed,
        dir,
    };
    let runs = loop_bench::run(&cfg).map_err(anyhow::Error::msg)?;
    if a.json {
        println!("{}", serde_json::Value::Array(runs));
    } else {
        print!("{}", loop_bench::table(&runs));
    }
    Ok(())
}
