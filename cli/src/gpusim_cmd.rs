//! `vagus gpusim libdir | status | xid`.

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use gpusim::SimConfig;
use gpusim::clock::now_ns;
use gpusim::state::SharedState;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;

#[derive(Subcommand)]
pub enum GpusimCommand {
    /// Print the directory holding gpusim's libcuda.so.1 and libnvidia-ml.so.1
    /// (use it as LD_LIBRARY_PATH).
    Libdir,
    /// Show the simulated devices: memory, utilisation, power, processes.
    Status {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Raise a simulated XID error on a device (NVML reports it to event sets).
    Xid {
        #[arg(long, default_value_t = 0)]
        device: u32,
        /// The XID number (e.g. 79: fallen off the bus; 48: double-bit ECC).
        #[arg(long)]
        xid: u64,
    },
}

pub fn run(cmd: GpusimCommand) -> Result<()> {
    match cmd {
        GpusimCommand::Libdir => {
            println!("{}", libdir()?.display());
            Ok(())
        }
        GpusimCommand::Status { json } => status(json),
        GpusimCommand::Xid { device, xid } => {
            let cfg = SimConfig::from_env()?;
            let st = SharedState::open(&cfg)
                .with_context(|| format!("cannot open {}", cfg.state_path.display()))?;
            if device as usize >= st.device_count() {
                bail!(
                    "--device {device}: the simulated host has {} device(s)",
                    st.device_count()
                );
            }
            gpusim::xid::inject(st.path(), device, xid).with_context(|| {
                format!(
                    "cannot write {}",
                    gpusim::xid::log_path(st.path()).display()
                )
            })?;
            println!("XID {xid} raised on device {device}");
            Ok(())
        }
    }
}

/// The names clients load, and the cdylib cargo builds for each.
const LIBS: [(&str, &str); 4] = [
    ("libcuda.so.1", "libgpusim_cuda.so"),
    ("libcuda.so", "libgpusim_cuda.so"),
    ("libnvidia-ml.so.1", "libgpusim_nvml.so"),
    ("libnvidia-ml.so", "libgpusim_nvml.so"),
];

/// Finds gpusim's libraries beside the `vagus` executable (as cargo builds
/// them) and lays out a directory where they carry the driver's names.
pub fn libdir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the vagus executable")?;
    let exe_dir = exe.parent().context("vagus executable has no directory")?;
    let candidates = [
        exe_dir.to_path_buf(),
        exe_dir.join("../lib/vagus"),
        exe_dir.join(".."),
    ];
    let src = candidates
        .iter()
        .find(|d| d.join("libgpusim_cuda.so").is_file() && d.join("libgpusim_nvml.so").is_file())
        .with_context(|| {
            format!(
                "gpusim's libraries (libgpusim_cuda.so, libgpusim_nvml.so) are not beside {}; build them with `cargo build --workspace`",
                exe.display()
            )
        })?;
    let src = src.canonicalize()?;
    let preferred = src.join("gpusim-lib");
    match populate(&preferred, &src) {
        Ok(()) => Ok(preferred),
        Err(_) => {
            // SAFETY: getuid has no preconditions.
            let fallback = std::env::temp_dir()
                .join(format!("vagus-gpusim-lib-{}", unsafe { libc::getuid() }));
            populate(&fallback, &src)
                .with_context(|| format!("cannot create {}", fallback.display()))?;
            Ok(fallback)
        }
    }
}

fn populate(dir: &Path, src: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, built) in LIBS {
        let link = dir.join(name);
        let target = src.join(built);
        if std::fs::read_link(&link).ok().as_deref() == Some(target.as_path()) {
            continue;
        }
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp)?;
        std::fs::rename(&tmp, &link)?;
    }
    Ok(())
}

fn status(json: bool) -> Result<()> {
    let cfg = SimConfig::from_env()?;
    if !cfg.state_path.exists() {
        bail!(
            "no gpusim state at {} yet: no client has initialised the driver with this configuration",
            cfg.state_path.display()
        );
    }
    let st = SharedState::open(&cfg)?;
    let now = now_ns();
    let mut devices = Vec::new();
    for i in 0..st.device_count() {
        let d = st.device(i).expect("index in range");
        let (gpu, sm) = st.utilization(i, 1_000_000_000, now, None);
        let procs: Vec<_> = d
            .live_processes(&st)
            .into_iter()
            .map(|p| {
                serde_json::json!({
                    "pid": p.pid, "memory_bytes": p.mem_used, "sm_percent": p.sm_percent,
                    "mps_server": (p.mps_server != 0).then_some(p.mps_server),
                    "sm_utilization": st.utilization(i, 1_000_000_000, now, Some(p.pid)).1,
                })
            })
            .collect();
        devices.push(serde_json::json!({
            "index": i, "name": d.name(), "uuid": d.uuid_string(), "sms": d.sms(),
            "memory_total_bytes": d.total_memory(), "memory_used_bytes": d.mem_used.load(Relaxed),
            "gpu_utilization": gpu, "sm_utilization": sm, "power_watts": st.power_mw(i, now) as f64 / 1000.0,
            "energy_joules": st.energy_mj(i, now) as f64 / 1000.0, "kernels_total": d.kernels.load(Relaxed),
            "processes": procs,
        }));
    }
    if json {
        println!(
            "{}",
            serde_json::json!({ "state": st.path(), "devices": devices })
        );
        return Ok(());
    }
    println!("gpusim state {}", st.path().display());
    for d in &devices {
        println!(
            "GPU {} {} {}  SMs {}  mem {:.1}/{:.1} GiB  util {:.0}%  SM {:.0}%  {:.0} W  kernels {}",
            d["index"],
            d["name"].as_str().unwrap_or(""),
            d["uuid"].as_str().unwrap_or(""),
            d["sms"],
            d["memory_used_bytes"].as_f64().unwrap_or(0.0) / (1u64 << 30) as f64,
            d["memory_total_bytes"].as_f64().unwrap_or(0.0) / (1u64 << 30) as f64,
            d["gpu_utilization"].as_f64().unwrap_or(0.0) * 100.0,
            d["sm_utilization"].as_f64().unwrap_or(0.0) * 100.0,
            d["power_watts"].as_f64().unwrap_or(0.0),
            d["kernels_total"],
        );
        for p in d["processes"].as_array().into_iter().flatten() {
            println!(
                "  pid {:>8}  mem {:>10} B  SM share {:>3}%  SM util {:>5.1}%{}",
                p["pid"],
                p["memory_bytes"],
                p["sm_percent"],
                p["sm_utilization"].as_f64().unwrap_or(0.0) * 100.0,
                p["mps_server"]
                    .as_u64()
                    .map(|s| format!("  (MPS client of {s})"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(())
}
