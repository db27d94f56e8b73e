//! `vagus replay`: replays a GPU-sharing trace (the openb CSV files) with a
//! placement policy, the FGD paper's way, and prints the GPU allocation
//! and fragmentation ratios against arrived load (means over seeds). On a
//! terminal, a progress bar on standard error.

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use std::path::PathBuf;
use vagus_replay::policy::Kind;
use vagus_replay::replay::{MAX_ARRIVED_PCT, mean_curve, replay_seeds};

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// Node list (`sn,cpu_milli,memory_mib,gpu,model`).
    #[arg(long)]
    pub nodes: PathBuf,
    /// Pod list (`name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec,…]`).
    #[arg(long)]
    pub pods: PathBuf,
    /// The placement policy (vagus: the brain's decision core).
    #[arg(long, default_value = "fgd", value_parser = policies())]
    pub policy: Kind,
    /// Seeds: `A..B` (inclusive) or a comma-separated list.
    #[arg(long, default_value = "42..51")]
    pub seeds: String,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Threads (seeds run in parallel); default: the CPUs available.
    #[arg(long)]
    pub threads: Option<usize>,
    /// With one seed: write the replay step by step to this JSON file —
    /// `nodes` (in the replay's order, as the brain's node specs),
    /// `requests` (each pod as the brain's placement request, in arrival
    /// order) and `placements` (each one's `node` and `gpus`, or null).
    #[arg(long)]
    pub record: Option<PathBuf>,
}

/// `--policy`: every policy the replay knows (its help lists them), as
/// its [`Kind`].
fn policies() -> impl TypedValueParser<Value = Kind> {
    PossibleValuesParser::new(Kind::ALL.iter().map(|(name, _)| *name))
        .map(|name| Kind::parse(&name).expect("a policy from Kind::ALL"))
}

/// The most seeds one replay runs.
const MAX_SEEDS: u64 = 10_000;

fn parse_seeds(s: &str) -> Result<Vec<u64>> {
    let bad = || format!("--seeds {s}: expected A..B (inclusive) or a comma-separated list");
    let seeds: Vec<u64> = if let Some((a, b)) = s.split_once("..") {
        let (a, b): (u64, u64) = (
            a.trim().parse().with_context(bad)?,
            b.trim().parse().with_context(bad)?,
        );
        if a > b {
            bail!("--seeds {s}: the range is reversed (start {a} > end {b})");
        }
        if b - a >= MAX_SEEDS {
            bail!("--seeds {s}: at most {MAX_SEEDS} seeds");
        }
        (a..=b).collect()
    } else {
        s.split(',')
            .map(|x| x.trim().parse().with_context(bad))
            .collect::<Result<_>>()?
    };
    if seeds.is_empty() || seeds.len() as u64 > MAX_SEEDS {
        bail!("--seeds {s}: between 1 and {MAX_SEEDS} seeds");
    }
    Ok(seeds)
}

pub fn replay(args: ReplayArgs) -> Result<()> {
    let kind = args.policy;
    let seeds = parse_seeds(&args.seeds)?;
    if args.threads == Some(0) {
        return Err(anyhow!("--threads 0: must be at least 1"));
    }
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
    };
    let nodes = vagus_replay::openb::nodes(&args.nodes.display().to_string(), &read(&args.nodes)?)?;
    let pods = vagus_replay::openb::pods(&args.pods.display().to_string(), &read(&args.pods)?)?;
    if nodes.is_empty() || pods.is_empty() {
        bail!("the trace needs at least one node and one pod");
    }
    if kind == Kind::Vagus {
        vagus_replay::vagus::check(&pods)
            .map_err(|e| anyhow::anyhow!("{}: {e}", args.pods.display()))?;
    }
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let t = std::time::Instant::now();
    // SAFETY: isatty only inspects the descriptor.
    let tty = unsafe { libc::isatty(2) } == 1;
    let total = seeds.len();
    let progress = move |done: usize| {
        if tty {
            let width = 30;
            let filled = done * width / total;
            eprint!(
                "\r[{}{}] {done}/{total} seeds",
                "#".repeat(filled),
                ".".repeat(width - filled)
            );
            if done == total {
                eprintln!();
            }
        }
    };
    if tty {
        progress(0);
    }
    if let Some(path) = &args.record {
        anyhow::ensure!(
            seeds.len() == 1,
            "--record {}: give one seed (--seeds N)",
            path.display()
        );
        return record(&nodes, &pods, kind, seeds[0], path);
    }
    let runs = replay_seeds(&nodes, &pods, kind, &seeds, threads, &progress);
    let curve = mean_curve(&runs, |r| &r.allocation);
    let frag = mean_curve(&runs, |r| &r.fragmentation);
    let trace = args
        .pods
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mean = |f: fn(&vagus_replay::replay::Replay) -> usize| {
        runs.iter().map(f).sum::<usize>() as f64 / runs.len() as f64
    };
    if args.json {
        let by_pct = |c: &[f64]| -> serde_json::Map<String, serde_json::Value> {
            c.iter()
                .enumerate()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        serde_json::json!((v * 1000.0).round() / 1000.0),
                    )
                })
                .collect()
        };
        println!(
            "{}",
            serde_json::json!({
                "policy": kind.name(),
                "trace": trace,
                "seeds": seeds,
                "allocation": by_pct(&curve),
                "fragmentation": by_pct(&frag),
                "pods_mean": mean(|r| r.pods),
                "failed_mean": mean(|r| r.failed),
                "seconds": (t.elapsed().as_secs_f64() * 100.0).round() / 100.0,
            })
        );
    } else {
        println!(
            "{} on {trace}: {} seeds, {} nodes, {} GPUs, {:.1} s",
            kind.name(),
            seeds.len(),
            nodes.len(),
            nodes.iter().map(|n| n.gpus.len()).sum::<usize>(),
            t.elapsed().as_secs_f64()
        );
        println!("arrived %  allocated %  fragmented %");
        for k in (0..=MAX_ARRIVED_PCT).step_by(10) {
            println!("{k:>9}  {:>11.2}  {:>12.2}", curve[k], frag[k]);
        }
        println!(
            "pods {:.0} per seed, {:.0} failed",
            mean(|r| r.pods),
            mean(|r| r.failed)
        );
    }
    Ok(())
}

/// One seed's replay, step by step, as JSON in `path`.
fn record(
    nodes: &[vagus_replay::cluster::Node],
    pods: &[vagus_replay::cluster::Pod],
    kind: Kind,
    seed: u64,
    path: &std::path::Path,
) -> Result<()> {
    let r = vagus_replay::replay::replay_recorded(nodes, pods, kind, seed, true);
    let rec = r.record.context("the replay kept no record")?;
    let placements: Vec<serde_json::Value> = rec
        .placements
        .iter()
        .map(|p| match p {
            Some(p) => serde_json::json!({
                "node": rec.nodes[p.node].name,
                "gpus": p.gpus.iter().map(|g| g.0).collect::<Vec<_>>(),
            }),
            None => serde_json::Value::Null,
        })
        .collect();
    let doc = serde_json::json!({
        "policy": kind.name(),
        "seed": seed,
        "nodes": rec.nodes.iter().map(vagus_replay::live::node_spec).collect::<Vec<_>>(),
        "requests": rec.pods.iter().map(vagus_replay::vagus::profile).collect::<Vec<_>>(),
        "placements": placements,
    });
    std::fs::write(path, serde_json::to_vec(&doc)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!(
        "{}: {} nodes, {} requests, {} placed",
        path.display(),
        rec.nodes.len(),
        rec.pods.len(),
        r.placed
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_and_their_errors() {
        assert_eq!(parse_seeds("3..5").unwrap(), [3, 4, 5]);
        assert_eq!(parse_seeds("7, 1").unwrap(), [7, 1]);
        let err = |s: &str| format!("{:#}", parse_seeds(s).unwrap_err());
        assert_eq!(
            err("5..2"),
            "--seeds 5..2: the range is reversed (start 5 > end 2)"
        );
        assert!(err("0..18446744073709551615").contains("at most 10000 seeds"));
        assert!(err("1..x").starts_with("--seeds 1..x: expected A..B"));
    }
}
