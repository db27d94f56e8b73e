//! `vagus run [--sim] [--budget F] [--memory-limit SIZE] [--nvml-view]
//! [--json-out FILE] -- CMD ARGS...`: runs a program with
//! the shim preloaded and, when it exits, prints what its kernels did, the
//! way `time` prints what its CPU did.

use anyhow::{Context, Result, bail};
use clap::Args;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering::Relaxed;
use vagus_agent::segments::SegmentFile;
use vagus_proto::shm;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Run on gpusim (prepends `vagus gpusim libdir` to LD_LIBRARY_PATH).
    #[arg(long)]
    pub sim: bool,
    /// Also write the summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<PathBuf>,
    /// SM-time budget, a fraction of the device in (0, 1], in force from the
    /// start (an agent may change it later through the control block).
    #[arg(long, value_name = "F", value_parser = parse_budget)]
    pub budget: Option<f64>,
    /// Device-memory limit (bytes, or with a unit: 512MiB, 4GiB, 2GB): an
    /// allocation that would cross it fails with CUDA_ERROR_OUT_OF_MEMORY
    /// and cuMemGetInfo reports it as the total.
    #[arg(long, value_name = "SIZE", value_parser = parse_limit)]
    pub memory_limit: Option<u64>,
    /// NVML inside the program reports its own slice: the memory limit as
    /// the total and only itself in the process lists.
    #[arg(long)]
    pub nvml_view: bool,
    /// Print no summary on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// The program and its arguments.
    #[arg(trailing_var_arg = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

fn parse_budget(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
        _ => Err(format!(
            "invalid budget {s:?}: expected a fraction of the device in (0, 1], e.g. 0.3"
        )),
    }
}

fn parse_limit(s: &str) -> Result<u64, String> {
    match shm::parse_bytes(s) {
        Some(b) if b > 0 => Ok(b),
        _ => Err(format!(
            "invalid memory limit {s:?}: expected bytes, or a size with a unit (512MiB, 4GiB, 2GB)"
        )),
    }
}

/// This `vagus` executable and the shim beside it (which must be there).
pub fn vagus_and_shim() -> Result<(PathBuf, PathBuf)> {
    let exe = std::env::current_exe().context("cannot locate the vagus executable")?;
    let shim = exe
        .parent()
        .context("vagus executable has no directory")?
        .join("libvagus_shim.so");
    if !shim.is_file() {
        bail!(
            "{} is missing; build it with `cargo build --workspace`",
            shim.display()
        );
    }
    Ok((exe, shim))
}

/// Runs the program; returns the exit status to leave with.
pub fn run(args: RunArgs) -> Result<u8> {
    let (_, shim) = vagus_and_shim()?;
    let segdir = std::env::temp_dir().join(format!("vagus-run-{}", std::process::id()));
    std::fs::create_dir_all(&segdir)
        .with_context(|| format!("cannot create {}", segdir.display()))?;

    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..]).env("VAGUS_SHM_DIR", &segdir);
    let preload = match std::env::var_os("LD_PRELOAD").filter(|p| !p.is_empty()) {
        Some(old) => {
            let mut p = shim.clone().into_os_string();
            p.push(":");
            p.push(old);
            p
        }
        None => shim.clone().into_os_string(),
    };
    cmd.env("LD_PRELOAD", preload);
    if let Some(b) = args.budget {
        cmd.env("VAGUS_BUDGET", b.to_string());
    }
    if let Some(b) = args.memory_limit {
        cmd.env("VAGUS_MEMORY_LIMIT", b.to_string());
    }
    if args.nvml_view {
        cmd.env("VAGUS_NVML_VIEW", "1");
    }
    if args.sim {
        let lib = crate::gpusim_cmd::libdir()?;
        let mut path = lib.into_os_string();
        if let Some(old) = std::env::var_os("LD_LIBRARY_PATH").filter(|p| !p.is_empty()) {
            path.push(":");
            path.push(old);
        }
        cmd.env("LD_LIBRARY_PATH", path);
    }
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {:?}", args.command[0]))?;
    let summary = summarise(&segdir);
    let _ = std::fs::remove_dir_all(&segdir);
    let summary = summary?;
    if !args.quiet {
        eprint!("{}", render(&summary));
    }
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&summary)? + "\n")
            .with_context(|| format!("cannot write --json-out {}", path.display()))?;
    }
    use std::os::unix::process::ExitStatusExt;
    Ok(match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(sig)) => 128 + sig as u8,
        _ => 1,
    })
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Adds up the segments of the program and its children.
fn summarise(dir: &Path) -> Result<serde_json::Value> {
    let mut segs = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "shm") {
            segs.push(SegmentFile::open_read_only(&p)?);
        }
    }
    let (mut launches, mut graph, mut captured, mut sampled, mut sampled_ns, mut gpu_ns) =
        (0, 0, 0, 0, 0, 0);
    let (mut syncs, mut sync_ns, mut peak, mut occ_sm_ns) = (0, 0, 0, 0);
    let (mut contexts, mut modules) = (0, 0);
    let (mut refused, mut refused_bytes, mut limit) = (0, 0, 0);
    let mut khist = [0u64; shm::HIST_BUCKETS];
    let mut shist = [0u64; shm::HIST_BUCKETS];
    let mut top: Vec<shm::TopKernelView> = Vec::new();
    let mut processes = Vec::new();
    for m in &segs {
        let s = &m.segment().stats;
        let h = &m.segment().header;
        launches += s.launches();
        graph += s.graph_launches();
        captured += s.captured();
        sampled += s.sampled_launches.load(Relaxed);
        sampled_ns += s.sampled_gpu_ns.load(Relaxed);
        gpu_ns += s.estimated_gpu_ns.load(Relaxed);
        occ_sm_ns += s.occupancy_weighted_sm_ns.load(Relaxed);
        syncs += s.syncs.load(Relaxed);
        sync_ns += s.sync_wait_ns.load(Relaxed);
        peak += s.bytes_peak.load(Relaxed);
        contexts += s.contexts_created.load(Relaxed);
        modules += s.modules_loaded.load(Relaxed);
        refused += s.refused_allocations.load(Relaxed);
        refused_bytes += s.refused_bytes.load(Relaxed);
        limit = limit.max(s.memory_limit.load(Relaxed));
        for (a, b) in khist.iter_mut().zip(s.kernel_hist()) {
            *a += b;
        }
        for (a, b) in shist.iter_mut().zip(s.sync_hist()) {
            *a += b;
        }
        for t in s.top.iter().filter_map(|t| t.read()) {
            match top.iter_mut().find(|x| x.name == t.name) {
                Some(x) => {
                    x.launches += t.launches;
                    x.gpu_ns += t.gpu_ns;
                }
                None => top.push(t),
            }
        }
        processes.push(serde_json::json!({
            "pid": h.pid.load(Relaxed), "launches": s.launches(), "graph_launches": s.graph_launches(),
            "sample_period": s.sample_period.load(Relaxed), "cgroup": shm::read_str(&h.cgroup),
            "mps_percent": h.mps_percent_milli.load(Relaxed) as f64 / 1000.0,
            "peak_bytes": s.bytes_peak.load(Relaxed),
            "refused_allocations": s.refused_allocations.load(Relaxed),
        }));
    }
    top.sort_by_key(|t| std::cmp::Reverse(t.gpu_ns));
    Ok(serde_json::json!({
        "launches": launches,
        "graph_launches": graph,
        "captured_launches": captured,
        "sampled_launches": sampled,
        "sampled_gpu_time_ms": ms(sampled_ns),
        "gpu_time_ms": ms(gpu_ns),
        "occupancy_weighted_sm_ms": ms(occ_sm_ns),
        "kernel_ms": { "p50": ms(shm::quantile(&khist, 0.5)), "p99": ms(shm::quantile(&khist, 0.99)) },
        "sync_wait_ms": { "total": ms(sync_ns), "p99": ms(shm::quantile(&shist, 0.99)), "count": syncs },
        "peak_bytes": peak,
        "memory_limit_bytes": (limit > 0).then_some(limit),
        "refused_allocations": refused,
        "refused_bytes": refused_bytes,
        "contexts_created": contexts,
        "modules_loaded": modules,
        "top_kernels": top.iter().map(|t| serde_json::json!({
            "name": t.name, "launches": t.launches, "gpu_time_ms": ms(t.gpu_ns),
            "occupancy": t.occupancy, "block_threads": t.block_threads,
        })).collect::<Vec<_>>(),
        "processes": processes,
    }))
}

fn render(v: &serde_json::Value) -> String {
    let n = |k: &str| v[k].as_f64().unwrap_or(0.0);
    let mut s = format!(
        "\nvagus run: {} launches, {} graph launches, {} captured, in {} process(es)\n",
        v["launches"],
        v["graph_launches"],
        v["captured_launches"],
        v["processes"].as_array().map_or(0, Vec::len)
    );
    s += &format!(
        "  GPU time      {:.3} ms ({} launches timed)\n",
        n("gpu_time_ms"),
        v["sampled_launches"]
    );
    s += &format!(
        "  kernel        p50 {:.3} ms  p99 {:.3} ms\n",
        v["kernel_ms"]["p50"].as_f64().unwrap_or(0.0),
        v["kernel_ms"]["p99"].as_f64().unwrap_or(0.0)
    );
    s += &format!(
        "  sync wait     p99 {:.3} ms  total {:.3} ms over {} waits\n",
        v["sync_wait_ms"]["p99"].as_f64().unwrap_or(0.0),
        v["sync_wait_ms"]["total"].as_f64().unwrap_or(0.0),
        v["sync_wait_ms"]["count"]
    );
    let mib = |b: f64| b / (1u64 << 20) as f64;
    s += &format!("  peak memory   {:.1} MiB", mib(n("peak_bytes")));
    if let Some(l) = v["memory_limit_bytes"].as_f64() {
        s += &format!(
            " of a {:.1} MiB limit, {} allocation(s) refused ({:.1} MiB)",
            mib(l),
            v["refused_allocations"],
            mib(n("refused_bytes"))
        );
    }
    s += "\n";
    if let Some(top) = v["top_kernels"].as_array().filter(|t| !t.is_empty()) {
        s += "  top kernels   launches   GPU ms     occupancy  name\n";
        for t in top.iter().take(10) {
            s += &format!(
                "                {:>8}   {:>9.3}  {:>8.1}%  {}\n",
                t["launches"],
                t["gpu_time_ms"].as_f64().unwrap_or(0.0),
                t["occupancy"].as_f64().unwrap_or(0.0) * 100.0,
                t["name"].as_str().unwrap_or("")
            );
        }
    }
    s
}
