//! `vagus load`: an inference-like CUDA workload on the driver API (cudarc,
//! dynamically loaded), so the same binary runs on NVIDIA's driver and on
//! gpusim. Requests arrive open-loop at `--qps`; each launches `--kernels`
//! busy-wait kernels on a stream and waits for them. Latency runs from a
//! request's scheduled arrival to its completion, so queueing counts.

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use cudarc::driver::sys;
use gpusim::ptx::BUSY_WAIT_PTX;
use hdrhistogram::Histogram;
use std::ffi::{CString, c_void};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use vagus_serve::gpu::DeviceInfo;

#[derive(Args, Clone, Debug)]
pub struct LoadArgs {
    /// Request arrival rate (requests per second), open loop.
    #[arg(long, env = "VAGUS_LOAD_QPS", default_value_t = 100.0)]
    pub qps: f64,
    /// How long requests arrive for: 10s, 500ms, 2m, or plain seconds.
    #[arg(long, env = "VAGUS_LOAD_DURATION", default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Kernels each request launches.
    #[arg(long, env = "VAGUS_LOAD_KERNELS", default_value_t = 4)]
    pub kernels: u32,
    /// Blocks per kernel.
    #[arg(long, env = "VAGUS_LOAD_GRID", default_value_t = 264)]
    pub grid: u32,
    /// Threads per block.
    #[arg(long, env = "VAGUS_LOAD_BLOCK", default_value_t = 256)]
    pub block: u32,
    /// SM clock cycles each block spins for.
    #[arg(long, env = "VAGUS_LOAD_WORK_CYCLES", default_value_t = 200_000)]
    pub work_cycles: u64,
    /// Requests in flight at once (one stream each).
    #[arg(long, env = "VAGUS_LOAD_CONCURRENCY", default_value_t = 1)]
    pub concurrency: u32,
    /// Device memory held for the run, like a model's weights (MiB).
    #[arg(long, env = "VAGUS_LOAD_MEMORY_MIB", default_value_t = 64)]
    pub memory_mib: u64,
    /// Bytes each request copies host to device before its kernels (KiB).
    #[arg(long, env = "VAGUS_LOAD_INPUT_KIB", default_value_t = 16)]
    pub input_kib: u64,
    /// PTX file to run instead of the built-in busy-wait kernel; it must have
    /// an entry `vagus_busy_wait(.param .u64 cycles)`.
    #[arg(long, env = "VAGUS_LOAD_PTX")]
    pub ptx: Option<std::path::PathBuf>,
    /// CUDA device ordinal.
    #[arg(long, env = "VAGUS_LOAD_DEVICE", default_value_t = 0)]
    pub device: i32,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(v) = s.strip_suffix("ms") {
        (v, 1e-3)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60.0)
    } else {
        (s, 1.0)
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(Duration::from_secs_f64(v * mult)),
        _ => Err(format!(
            "invalid duration {s:?}: expected e.g. 10s, 500ms, 2m"
        )),
    }
}

impl LoadArgs {
    fn validate(&self) -> Result<()> {
        if !(self.qps.is_finite() && self.qps > 0.0) {
            bail!("--qps {} must be a positive number", self.qps);
        }
        if self.kernels == 0 || self.grid == 0 || self.block == 0 || self.concurrency == 0 {
            bail!("--kernels, --grid, --block and --concurrency must be at least 1");
        }
        if self.block > 1024 {
            bail!(
                "--block {} exceeds CUDA's 1024 threads per block",
                self.block
            );
        }
        let n = self.qps * self.duration.as_secs_f64();
        if n < 1.0 {
            bail!(
                "--qps {} over --duration {:?} makes no request",
                self.qps,
                self.duration
            );
        }
        Ok(())
    }
}

fn check(r: sys::CUresult, what: &str) -> Result<()> {
    Ok(vagus_serve::gpu::check(r, what)?)
}

/// Driver handles shared by the worker threads.
#[derive(Clone, Copy)]
struct Gpu {
    ctx: sys::CUcontext,
    func: sys::CUfunction,
}
// SAFETY: CUDA contexts and functions may be used from any thread.
unsafe impl Send for Gpu {}
unsafe impl Sync for Gpu {}

fn open(args: &LoadArgs) -> Result<(Gpu, DeviceInfo)> {
    let (ctx, info) = vagus_serve::gpu::open_device(args.device)?;
    // SAFETY: plain driver API calls with out-pointers we own, in the
    // context `open_device` made current.
    unsafe {
        let (text, origin) = match &args.ptx {
            Some(p) => (
                std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read --ptx {}", p.display()))?,
                p.display().to_string(),
            ),
            None => (
                BUSY_WAIT_PTX.to_string(),
                "built-in busy-wait PTX".to_string(),
            ),
        };
        let ptx = CString::new(text).map_err(|_| anyhow!("{origin} contains a NUL byte"))?;
        let mut module = std::ptr::null_mut();
        check(
            sys::cuModuleLoadData(&mut module, ptx.as_ptr() as *const c_void),
            &format!("cuModuleLoadData ({origin})"),
        )?;
        let mut func = std::ptr::null_mut();
        check(
            sys::cuModuleGetFunction(&mut func, module, c"vagus_busy_wait".as_ptr()),
            &format!("cuModuleGetFunction(vagus_busy_wait) in {origin}"),
        )?;
        if args.memory_mib > 0 {
            let mut weights = 0;
            check(
                sys::cuMemAlloc_v2(&mut weights, (args.memory_mib << 20) as usize),
                &format!("cuMemAlloc({} MiB of --memory-mib)", args.memory_mib),
            )?;
        }
        Ok((Gpu { ctx, func }, info))
    }
}

struct WorkerResult {
    latency_us: Histogram<u64>,
    device_us: Histogram<u64>,
    done: u64,
    last_done: Instant,
}

fn worker(
    gpu: Gpu,
    args: &LoadArgs,
    total: u64,
    next: &AtomicU64,
    start: Instant,
) -> Result<WorkerResult> {
    let mut latency_us = Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
    let mut device_us = latency_us.clone();
    let mut done = 0;
    let mut last_done = start;
    // SAFETY: driver API calls on handles this thread created or shares.
    unsafe {
        check(sys::cuCtxSetCurrent(gpu.ctx), "cuCtxSetCurrent")?;
        let mut stream = std::ptr::null_mut();
        check(sys::cuStreamCreate(&mut stream, 1), "cuStreamCreate")?;
        let (mut ev0, mut ev1) = (std::ptr::null_mut(), std::ptr::null_mut());
        check(sys::cuEventCreate(&mut ev0, 0), "cuEventCreate")?;
        check(sys::cuEventCreate(&mut ev1, 0), "cuEventCreate")?;
        let input = vec![7u8; (args.input_kib << 10) as usize];
        let mut dinput = 0;
        if !input.is_empty() {
            check(
                sys::cuMemAlloc_v2(&mut dinput, input.len()),
                "cuMemAlloc(request input)",
            )?;
        }
        let mut cycles = args.work_cycles;
        let mut params = [&mut cycles as *mut u64 as *mut c_void];
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= total {
                break;
            }
            let arrival = start + Duration::from_secs_f64(i as f64 / args.qps);
            if let Some(wait) = arrival.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if !input.is_empty() {
                check(
                    sys::cuMemcpyHtoDAsync_v2(
                        dinput,
                        input.as_ptr() as *const c_void,
                        input.len(),
                        stream,
                    ),
                    "cuMemcpyHtoDAsync",
                )?;
            }
            check(sys::cuEventRecord(ev0, stream), "cuEventRecord")?;
            for _ in 0..args.kernels {
                check(
                    sys::cuLaunchKernel(
                        gpu.func,
                        args.grid,
                        1,
                        1,
                        args.block,
                        1,
                        1,
                        0,
                        stream,
                        params.as_mut_ptr(),
                        std::ptr::null_mut(),
                    ),
                    "cuLaunchKernel",
                )?;
            }
            check(sys::cuEventRecord(ev1, stream), "cuEventRecord")?;
            check(sys::cuStreamSynchronize(stream), "cuStreamSynchronize")?;
            let now = Instant::now();
            let mut ms = 0f32;
            check(
                sys::cuEventElapsedTime(&mut ms, ev0, ev1),
                "cuEventElapsedTime",
            )?;
            latency_us.saturating_record(now.duration_since(arrival).as_micros().max(1) as u64);
            device_us.saturating_record(((ms as f64) * 1000.0).max(1.0) as u64);
            done += 1;
            last_done = now;
        }
        sys::cuEventDestroy_v2(ev0);
        sys::cuEventDestroy_v2(ev1);
        sys::cuStreamDestroy_v2(stream);
        if dinput != 0 {
            sys::cuMemFree_v2(dinput);
        }
    }
    Ok(WorkerResult {
        latency_us,
        device_us,
        done,
        last_done,
    })
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

pub fn run(args: LoadArgs) -> Result<()> {
    args.validate()?;
    // cudarc panics when the driver lacks an entry point it needs; turn that
    // into an error instead of a crash.
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(|| run_inner(&args));
    std::panic::set_hook(prev);
    match r {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(anyhow!("the CUDA driver could not be used: {msg}"))
        }
    }
}

fn run_inner(args: &LoadArgs) -> Result<()> {
    let (gpu, info) = open(args)?;
    let total = (args.qps * args.duration.as_secs_f64()).floor() as u64;
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(20);
    let results: Vec<Result<WorkerResult>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.concurrency)
            .map(|_| s.spawn(|| worker(gpu, args, total, &next, start)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a load worker panicked")))
            })
            .collect()
    });
    let mut latency = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
    let mut device = latency.clone();
    let (mut done, mut last) = (0u64, start);
    for r in results {
        let r = r.context("load worker")?;
        latency.add(&r.latency_us).expect("same bounds");
        device.add(&r.device_us).expect("same bounds");
        done += r.done;
        last = last.max(r.last_done);
    }
    let elapsed = last
        .duration_since(start)
        .as_secs_f64()
        .max(args.duration.as_secs_f64());
    let achieved = done as f64 / elapsed;
    let kernel_ms = device.mean() / 1000.0 / args.kernels as f64;
    let out = serde_json::json!({
        "requests": done,
        "qps": achieved,
        "target_qps": args.qps,
        "duration_s": elapsed,
        "latency_ms": {
            "p50": ms(&latency, 0.50), "p90": ms(&latency, 0.90), "p99": ms(&latency, 0.99),
            "max": latency.max() as f64 / 1000.0, "mean": latency.mean() / 1000.0,
        },
        "kernels": done * args.kernels as u64,
        "kernel_ms": { "mean": kernel_ms, "p50": ms(&device, 0.5) / args.kernels as f64 },
        "device": { "name": info.name, "sms": info.sms, "driver_version": info.driver_version },
        "config": {
            "kernels_per_request": args.kernels, "grid": args.grid, "block": args.block,
            "work_cycles": args.work_cycles, "concurrency": args.concurrency,
            "memory_mib": args.memory_mib, "input_kib": args.input_kib,
        },
    });
    if args.json {
        println!("{out}");
    } else {
        println!(
            "{} ({} SMs, driver {}): {} requests, {:.1} req/s of {:.1} requested",
            info.name, info.sms, info.driver_version, done, achieved, args.qps
        );
        println!(
            "latency ms  p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}",
            ms(&latency, 0.5),
            ms(&latency, 0.9),
            ms(&latency, 0.99),
            latency.max() as f64 / 1000.0
        );
        println!(
            "kernel ms   mean {kernel_ms:.3}  ({} kernels)",
            done * args.kernels as u64
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("fast").unwrap_err().contains("fast"));
        assert!(parse_duration("-1s").is_err());
    }
}
