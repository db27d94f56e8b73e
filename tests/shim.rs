//! The interposer (`libvagus_shim.so`) and `vagus run`, on gpusim: exact
//! launch counts whichever way a client reaches the driver, event-timed GPU
//! time and occupancy that match gpusim's, stream capture left intact, and a
//! host program that never notices the shim.

use crate::support::*;
use std::process::{Command, Output};

/// `vagus run --sim --json-out` around `program args`; returns (summary, output).
fn vagus_run(
    sim: &Sim,
    program: impl AsRef<std::ffi::OsStr>,
    args: &[&str],
) -> (serde_json::Value, Output) {
    vagus_run_with(sim, &[], program, args)
}

/// As `vagus_run`, with extra `vagus run` flags.
fn vagus_run_with(
    sim: &Sim,
    flags: &[&str],
    program: impl AsRef<std::ffi::OsStr>,
    args: &[&str],
) -> (serde_json::Value, Output) {
    let json = sim.dir.join(format!("run-{}.json", rand_suffix()));
    let out = sim
        .vagus(&["run", "--sim", "--json-out", json.to_str().unwrap()])
        .args(flags)
        .arg("--")
        .arg(program)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "vagus run failed ({:?}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    (v, out)
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn launch_counts_are_exact_for_three_kinds_of_client() {
    let sim = Sim::new("shim-counts");
    // Linked against libcuda.
    let (v, out) = vagus_run(&sim, c_client_linked("shim_client"), &["launches", "300"]);
    assert!(stdout(&out).contains("ok"));
    assert_eq!(v["launches"], 300, "{v}");
    assert_eq!(v["top_kernels"][0]["name"], "spin");
    assert_eq!(v["modules_loaded"], 1);

    // dlopen + dlsym (cudarc, in vagus load).
    let vagus = bin("vagus");
    let (v, _) = vagus_run(
        &sim,
        &vagus,
        &["load", "--qps", "200", "--duration", "1s", "--kernels", "3"],
    );
    assert_eq!(v["launches"], 600, "{v}");
    assert_eq!(v["top_kernels"][0]["name"], "vagus_busy_wait");
    assert!(
        v["peak_bytes"].as_u64().unwrap() >= 64 << 20,
        "vagus load holds 64 MiB: {v}"
    );

    // Everything through cuGetProcAddress_v2, as cudart does. The client's
    // own checks (error codes, capture behaviour) must hold under the shim.
    let (v, out) = vagus_run(&sim, c_client("cudart_like"), &[]);
    let text = stdout(&out);
    for line in [
        "done 1",
        "launch_block_too_big 1",
        "capture_sync 900",
        "capture_end_invalidated 901",
        "graph_launch 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} under the shim:\n{text}"
        );
    }
    assert_eq!(
        (v["modules_loaded"].as_u64(), v["contexts_created"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );
    // 3 timed launches + 1 cuLaunchKernelEx; 3 + 1 captured; 1 graph launch.
    assert_eq!(
        (
            v["launches"].as_u64(),
            v["captured_launches"].as_u64(),
            v["graph_launches"].as_u64()
        ),
        (Some(4), Some(4), Some(1)),
        "{v}"
    );
}

#[test]
fn sampled_gpu_time_and_occupancy_match_gpusim() {
    let sim = Sim::new("shim-timing");
    // 128 registers per thread: 2 blocks of 256 threads per SM (occupancy 0.25);
    // 264 blocks are one wave on 132 SMs; 1M cycles at 1980 MHz = 505.05 µs.
    let ptx = sim.dir.join("heavy.ptx");
    std::fs::write(
        &ptx,
        gpusim::ptx::BUSY_WAIT_PTX.replace("cycles_param=0 regs=8", "cycles_param=0 regs=128"),
    )
    .unwrap();
    let args = [
        "load",
        "--qps",
        "50",
        "--duration",
        "1s",
        "--kernels",
        "2",
        "--grid",
        "264",
        "--work-cycles",
        "1000000",
    ];
    let mut full = args.to_vec();
    full.extend(["--ptx", ptx.to_str().unwrap()]);
    let (v, _) = vagus_run(&sim, bin("vagus"), &full);
    let top = &v["top_kernels"][0];
    assert_eq!(v["launches"], 100);
    assert_eq!(
        v["sampled_launches"], 100,
        "rare launches are all timed: {v}"
    );
    let per_kernel_us =
        top["gpu_time_ms"].as_f64().unwrap() * 1000.0 / top["launches"].as_f64().unwrap();
    let truth_us = 1_000_000.0 / 1980.0;
    // 5%: the shim times kernels by events the host records; on a loaded
    // two-core machine (the whole suite running) one run read 2.2% long.
    assert!(
        (per_kernel_us / truth_us - 1.0).abs() < 0.05,
        "shim measured {per_kernel_us} µs, gpusim ran {truth_us} µs"
    );
    let p50_us = v["kernel_ms"]["p50"].as_f64().unwrap() * 1000.0;
    assert!(
        (p50_us / truth_us - 1.0).abs() < 0.09,
        "histogram p50 {p50_us} µs"
    );

    // gpusim's occupancy API, asked directly, for the same kernel and block.
    let out = run_with_stdin(
        {
            let mut c = sim.cmd(c_client("occupancy"));
            c.arg(&ptx);
            c
        },
        "vagus_busy_wait 256 0\n",
    );
    let line = String::from_utf8(out.stdout).unwrap();
    let blocks: f64 = line.split_whitespace().nth(4).unwrap().parse().unwrap();
    assert_eq!(blocks, 2.0, "{line}");
    assert_eq!(
        top["occupancy"].as_f64().unwrap(),
        blocks * 8.0 / 64.0,
        "{v}"
    );
    // One wave over every SM: SM-time equals GPU time.
    let ratio =
        v["occupancy_weighted_sm_ms"].as_f64().unwrap() / v["gpu_time_ms"].as_f64().unwrap();
    assert!((ratio - 1.0).abs() < 1e-6, "{v}");
}

#[test]
fn stream_capture_is_counted_and_left_intact() {
    let sim = Sim::new("shim-capture");
    let (v, out) = vagus_run(
        &sim,
        c_client_linked("shim_client"),
        &["capture", "10", "5", "3"],
    );
    assert!(
        stdout(&out).contains("ok"),
        "the capture must succeed under the shim: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(v["launches"], 10);
    assert_eq!(v["captured_launches"], 5);
    assert_eq!(v["graph_launches"], 3);
    // Every launch outside the capture was timed; none inside it was.
    assert_eq!(v["sampled_launches"], 13, "{v}");
}

#[test]
fn many_threads_and_fork_keep_exact_counts() {
    let sim = Sim::new("shim-threads");
    let client = c_client_linked("shim_client");
    let (v, out) = vagus_run(&sim, &client, &["threads", "64", "200"]);
    assert!(stdout(&out).contains("ok"));
    assert_eq!(v["launches"], 64 * 200, "{v}");

    let (v, out) = vagus_run(&sim, &client, &["fork", "7", "11"]);
    assert!(stdout(&out).contains("ok"));
    let mut per_process: Vec<u64> = v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["launches"].as_u64().unwrap())
        .collect();
    per_process.sort();
    assert_eq!(
        per_process,
        vec![7, 11],
        "the child gets its own segment: {v}"
    );
}

/// Waits for the shim in process `pid` to create its segment in `dir`, then
/// maps it writable (for the test's control-block writes) for the rest of the test.
fn wait_for_segment(dir: &std::path::Path, pid: u32) -> &'static vagus_proto::shm::Segment {
    use vagus_proto::shm::SEGMENT_BYTES;
    let path = dir.join(format!("{pid}.shm"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) < SEGMENT_BYTES as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "no segment at {}",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: a shared mapping of the segment, never unmapped.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            SEGMENT_BYTES,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        &*(p as *const vagus_proto::shm::Segment)
    }
}

/// Runs the linked client directly with the shim preloaded and segments in `dir`.
fn preloaded(sim: &Sim, dir: &std::path::Path, args: &[&str]) -> Command {
    preloaded_with(sim, "shim_client", dir, args)
}

/// Runs the linked C client `client` with the shim preloaded and segments in `dir`.
fn preloaded_with(sim: &Sim, client: &str, dir: &std::path::Path, args: &[&str]) -> Command {
    let mut c = sim.cmd(c_client_linked(client));
    c.args(args)
        .env("LD_PRELOAD", bin("libvagus_shim.so"))
        .env("VAGUS_SHM_DIR", dir);
    c
}

#[test]
fn without_a_segment_directory_the_shim_passes_through_with_one_warning() {
    let sim = Sim::new("shim-noagent");
    let out = preloaded(&sim, &sim.dir.join("no-such-dir"), &["threads", "8", "50"])
        .output()
        .unwrap();
    assert!(out.status.success() && stdout(&out).contains("ok"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("vagus shim").count(), 1, "{err}");
    assert!(
        err.contains("does not exist") && err.contains("pass-through"),
        "{err}"
    );
}

#[test]
fn a_corrupt_control_block_is_ignored_with_one_warning() {
    use vagus_proto::shm::ControlValues;
    let sim = Sim::new("shim-corrupt");
    let dir = sim.dir.join("segments");
    std::fs::create_dir_all(&dir).unwrap();
    let child = preloaded(&sim, &dir, &["seconds", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let seg = wait_for_segment(&dir, child.id());
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Write a valid block, then break its checksum, twice: one warning only.
    for _ in 0..2 {
        seg.control.write(ControlValues {
            budget_ppm: 500_000,
            paused: false,
            sample_period: 1,
            overhead_ppm: 0,
            memory_limit: 0,
        });
        seg.control
            .checksum
            .store(12345, std::sync::atomic::Ordering::Relaxed);
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let launched: u64 = stdout(&out)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(seg.stats.launches(), launched, "counting goes on");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("control block is corrupt").count(), 1, "{err}");
}

/// A running, compute-bound shimmed client (1 ms kernels filling every SM,
/// back to back) and a writable view of its segment.
struct Controlled {
    child: std::process::Child,
    seg: &'static vagus_proto::shm::Segment,
    state: gpusim::state::SharedState,
}

impl Controlled {
    fn start(sim: &Sim, seconds: &str) -> Controlled {
        let dir = sim.dir.join("segments");
        std::fs::create_dir_all(&dir).unwrap();
        let child = preloaded(sim, &dir, &["seconds", seconds, "2112"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let seg = wait_for_segment(&dir, child.id());
        Controlled {
            child,
            seg,
            state: sim.device_state(),
        }
    }

    /// Waits for the client to end and checks it succeeded.
    fn finish(self) {
        let out = self.child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn set(&self, budget: f64, paused: bool) {
        self.seg.control.write(vagus_proto::shm::ControlValues {
            budget_ppm: (budget * 1e6) as u32,
            paused,
            sample_period: 0,
            overhead_ppm: 0,
            memory_limit: 0,
        });
    }

    /// The process's SM-time share of the device over `[from, to)`, as gpusim saw it.
    fn share(&self, from: u64, to: u64) -> f64 {
        self.state
            .utilization(0, to - from, to, Some(self.child.id()))
            .1
    }
}

fn now() -> u64 {
    gpusim::clock::now_ns()
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(std::time::Duration::from_millis(ms));
}

#[test]
fn an_sm_time_budget_of_0_3_holds_over_one_second_windows() {
    let sim = Sim::new("shim-budget");
    let c = Controlled::start(&sim, "5");
    sleep_ms(300);
    // Unthrottled, the client takes well over the budget to come. Each of
    // its kernels is waited for, so the host's wake-ups leave gaps: 0.78 was
    // seen once with the whole suite on this machine's two cores.
    let free = c.share(now() - 250_000_000, now());
    assert!(
        free > 0.6,
        "unthrottled the client keeps the device busy: {free}"
    );
    c.set(0.3, false);
    sleep_ms(300);
    for _ in 0..3 {
        let t0 = now();
        sleep_ms(1000);
        let share = c.share(t0, now());
        assert!(
            (share - 0.3).abs() <= 0.03,
            "SM-time share {share} over one second under a 0.3 budget"
        );
    }
    c.finish();
}

#[test]
fn budget_changes_and_pauses_take_effect_within_10_ms() {
    let sim = Sim::new("shim-change");
    let c = Controlled::start(&sim, "3");
    sleep_ms(200);
    // Pause: nothing launches from 10 ms on.
    c.set(1.0, true);
    sleep_ms(10);
    let frozen = c.seg.stats.launches();
    sleep_ms(300);
    assert_eq!(
        c.seg.stats.launches(),
        frozen,
        "a launch got through 10 ms after the pause"
    );
    // Resume under a budget of 0.9, then drop it to 0.1: the share measured
    // from 10 ms after each change is already the new one.
    c.set(0.9, false);
    sleep_ms(400);
    c.set(0.1, false);
    let t = now();
    sleep_ms(10);
    let t10 = now();
    sleep_ms(400);
    let low = c.share(t10, now());
    assert!(
        (low - 0.1).abs() <= 0.04,
        "share {low} from 10 ms after lowering the budget to 0.1 (set at {t})"
    );
    c.set(0.9, false);
    sleep_ms(10);
    let t10 = now();
    sleep_ms(400);
    let high = c.share(t10, now());
    // The new budget holds (never above it), and is in force: still at the
    // old 0.1 the share would be near 0.1. How close it comes to 0.9 below
    // is the client's CPU on a loaded machine (it must launch each 1 ms
    // kernel in time), not the shim.
    assert!(
        (0.75..=0.96).contains(&high),
        "share {high} from 10 ms after raising the budget to 0.9"
    );
    c.finish();
}

#[test]
fn vagus_run_budget_flag_limits_from_the_start() {
    let sim = Sim::new("shim-runbudget");
    let client = c_client_linked("shim_client");
    let t0 = now();
    let (v, out) = vagus_run_with(
        &sim,
        &["--budget", "0.5"],
        &client,
        &["seconds", "2", "2112"],
    );
    let t1 = now();
    assert!(stdout(&out).contains("ok"));
    let pid = v["processes"][0]["pid"].as_u64().unwrap() as u32;
    let state = sim.device_state();
    // Skip the first 100 ms (process start), then the whole run is at half the device.
    let share = state.utilization(0, t1 - t0 - 100_000_000, t1, Some(pid)).1;
    assert!(
        (share - 0.5).abs() <= 0.05,
        "SM-time share {share} under vagus run --budget 0.5: {v}"
    );
    let err = stderr_of_failure(sim.vagus(&["run", "--budget", "1.5", "--", "true"]));
    assert!(
        err.contains("invalid budget") && err.contains("1.5"),
        "{err}"
    );
}

fn stderr_of_failure(mut c: Command) -> String {
    let out = c.output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn exit_with_launches_in_flight_is_quick_and_counted() {
    let sim = Sim::new("shim-inflight");
    let t = std::time::Instant::now();
    // 50 kernels of 10 ms: half a second of GPU work still queued at exit.
    let (v, out) = vagus_run(&sim, c_client_linked("shim_client"), &["inflight", "50"]);
    assert!(stdout(&out).contains("ok"));
    assert_eq!(v["launches"], 50, "{v}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(3),
        "exit took {:?}",
        t.elapsed()
    );
}

#[test]
fn another_preloaded_library_calling_dlsym_reentrantly_is_fine() {
    let sim = Sim::new("shim-reenter");
    let lib = target_dir().join("test-client-libreenter.so");
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/reenter.c");
    let st = Command::new("cc")
        .args(["-O1", "-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .arg("-ldl")
        .status()
        .unwrap();
    assert!(st.success());
    let shim = bin("libvagus_shim.so");
    let dir = sim.dir.join("segments");
    std::fs::create_dir_all(&dir).unwrap();
    // Both orders: the other library before the shim, and after it.
    for order in [
        format!("{}:{}", lib.display(), shim.display()),
        format!("{}:{}", shim.display(), lib.display()),
    ] {
        let mut c = sim.cmd(c_client_linked("shim_client"));
        let out = c
            .args(["launches", "100"])
            .env("LD_PRELOAD", &order)
            .env("VAGUS_SHM_DIR", &dir)
            .output()
            .unwrap();
        assert!(
            out.status.success() && stdout(&out).contains("ok"),
            "{order}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // And the launches are counted once, through both wrappers.
    let json = sim.dir.join("reenter.json");
    let out = sim
        .vagus(&["run", "--sim", "--json-out", json.to_str().unwrap(), "--"])
        .arg(c_client_linked("shim_client"))
        .args(["launches", "100"])
        .env("LD_PRELOAD", &lib)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["launches"], 100, "{v}");
}

#[test]
fn cooperative_and_graph_launches_are_counted_and_budgeted() {
    let sim = Sim::new("shim-coop");
    let (v, out) = vagus_run(&sim, c_client_linked("shim_client"), &["cooperative", "40"]);
    assert!(
        stdout(&out).contains("ok"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        (
            v["launches"].as_u64(),
            v["graph_launches"].as_u64(),
            v["captured_launches"].as_u64()
        ),
        (Some(40), Some(40), Some(1)),
        "{v}"
    );
    // Under a budget of 1% the graph launches are held back too: their
    // SM-time (a graph counts as using the whole device) over 0.01 is the
    // least the run can take.
    let t = std::time::Instant::now();
    let (v, _) = vagus_run_with(
        &sim,
        &["--budget", "0.01"],
        c_client_linked("shim_client"),
        &["cooperative", "40"],
    );
    let took_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(v["graph_launches"], 40);
    let graphs = v["top_kernels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "(CUDA graph)")
        .expect("graph entry");
    let graph_ms = graphs["gpu_time_ms"].as_f64().unwrap();
    assert!(
        took_ms > 0.8 * graph_ms / 0.01,
        "took {took_ms} ms for {graph_ms} ms of graph SM-time at budget 0.01: {v}"
    );
}

/// Two `vagus load` processes on one GPU under the shim: latency-sensitive
/// requests of two short kernels beside best-effort work that keeps up to
/// sixteen whole-GPU kernels of 1 ms queued (4 streams; arrivals a little
/// above what the GPU serves, 250 requests/s); with roles in one gate, and
/// with the same gate but no roles.
fn beside_best_effort(sim: &Sim, roles: bool) -> (serde_json::Value, serde_json::Value) {
    let dir = sim.dir.join(if roles { "held" } else { "free" });
    std::fs::create_dir_all(&dir).unwrap();
    let shim = bin("libvagus_shim.so");
    let gate = dir.join("gpu-0.gate");
    let env = |role: &str| {
        let mut e = vec![
            ("LD_PRELOAD", shim.to_str().unwrap().to_string()),
            ("VAGUS_SHM_DIR", dir.to_str().unwrap().to_string()),
            ("VAGUS_GATE", gate.to_str().unwrap().to_string()),
        ];
        if roles {
            e.push(("VAGUS_PRIORITY", role.to_string()));
        }
        e
    };
    let (be_env, ls_env) = (env("be"), env("ls"));
    let be = sim.spawn_load(&four_streams("300", "6s"), &pairs(&be_env));
    sleep_ms(1000);
    let ls = sim.load(&short_requests("4s"), &pairs(&ls_env));
    (ls, report(be.wait_with_output().unwrap()))
}

/// Latency-sensitive requests: 50 a second, each two one-wave kernels of
/// 0.25 ms.
fn short_requests(duration: &str) -> [&str; 10] {
    [
        "--qps",
        "50",
        "--duration",
        duration,
        "--kernels",
        "2",
        "--grid",
        "1056",
        "--work-cycles",
        "500000",
    ]
}

fn pairs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[test]
fn best_effort_launches_wait_while_latency_sensitive_work_runs() {
    let sim = Sim::new("shim-hold");
    let alone = sim.load(&short_requests("2s"), &[]);
    let (free_ls, free_be) = beside_best_effort(&sim, false);
    let (held_ls, held_be) = beside_best_effort(&sim, true);
    let p = |r: &serde_json::Value, q: &str| f(r, &format!("latency_ms.{q}"));
    let shown = format!("alone {alone}\nfree {free_ls} / {free_be}\nheld {held_ls} / {held_be}");
    // Two 0.25 ms kernels alone: about 0.5 ms. Without roles they wait
    // behind the best-effort queue (milliseconds); held, for at most about
    // one best-effort kernel.
    assert!(p(&free_ls, "p50") > 4.0 * p(&alone, "p50"), "{shown}");
    assert!(p(&held_ls, "p50") < p(&free_ls, "p50") / 3.0, "{shown}");
    // On the device (the kernels' own times, waits for the SMs included):
    // 7.2 ms a request free, 0.6 held, in the run that set these. Latency
    // tails also carry the host's scheduling, which the whole suite on two
    // cores blurs (a held p99 of 10.9 ms beside a p50 of 1.5 was seen), so
    // they are not asserted.
    let device = |r: &serde_json::Value| f(r, "kernel_ms.mean");
    assert!(device(&held_ls) < device(&free_ls) / 3.0, "{shown}");
    // Best effort keeps most of its throughput (it gives up what the
    // latency-sensitive requests use, 2.5% of the GPU, and the gaps its
    // pacing leaves): measured 0.98 of it unheld.
    let rate = |r: &serde_json::Value| f(r, "requests") / f(r, "duration_s");
    assert!(rate(&held_be) > 0.8 * rate(&free_be), "{shown}");
}

/// The memory client (`tests/clients/mem_client.c`) under the shim, talking
/// line by line: its segment, and a way to read its next line and answer.
struct MemClient {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    seg: &'static vagus_proto::shm::Segment,
}

impl MemClient {
    fn start(sim: &Sim, mode: &str, env: &[(&str, &str)]) -> MemClient {
        let dir = sim.dir.join("segments");
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = preloaded_with(sim, "mem_client", &dir, &[mode]);
        c.envs(env.iter().copied())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let seg = wait_for_segment(&dir, child.id());
        use std::io::BufRead;
        MemClient {
            child,
            lines: std::io::BufReader::new(out).lines(),
            seg,
        }
    }

    /// The value of the next line, which must be `what`'s.
    fn next(&mut self, what: &str) -> u64 {
        let line = self.lines.next().unwrap().unwrap();
        let (k, v) = line.split_once(' ').unwrap();
        assert_eq!(k, what, "{line}");
        v.trim().parse().unwrap()
    }

    fn go_on(&mut self) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }

    fn kinds(&self) -> Vec<u64> {
        self.seg
            .stats
            .memory_kinds
            .iter()
            .map(|k| k.load(Relaxed))
            .collect()
    }

    fn finish(mut self) {
        drop(self.child.stdin.take());
        assert!(self.child.wait().unwrap().success());
    }
}

use std::sync::atomic::Ordering::Relaxed;

#[test]
fn every_allocation_kind_is_counted_and_its_free_matched() {
    let sim = Sim::new("shim-memory");
    let mut c = MemClient::start(&sim, "kinds", &[]);
    let pitch = c.next("pitch");
    assert_eq!(c.next("allocated"), 0, "every allocation succeeded");
    const MIB: u64 = 1 << 20;
    // device, pitch, managed, stream-ordered, VMM, host (vagus_proto::shm::MEMORY_KINDS).
    assert_eq!(
        c.kinds(),
        vec![MIB, pitch * 100, 2 * MIB, 7 * MIB, 2 * MIB, 6 * MIB],
        "pitch {pitch}"
    );
    assert!(pitch >= 1000, "{pitch}");
    let device = MIB + pitch * 100 + 2 * MIB + 7 * MIB + 2 * MIB;
    assert_eq!(
        c.seg.stats.bytes_in_use.load(Relaxed),
        device,
        "host memory apart"
    );
    assert_eq!(c.seg.stats.bytes_peak.load(Relaxed), device);
    c.go_on();
    assert_eq!(c.next("freed"), 0, "every free succeeded");
    // Stream-ordered memory freed on another stream than it was made on
    // comes back too.
    assert_eq!(c.kinds(), vec![0; 6]);
    assert_eq!(c.seg.stats.bytes_in_use.load(Relaxed), 0);
    assert_eq!(c.seg.stats.bytes_peak.load(Relaxed), device);
    c.go_on();
    c.finish();
}

#[test]
fn vmm_memory_is_counted_while_mapped_and_limited_like_the_rest() {
    // What PyTorch's expandable segments do, under a 5 MiB limit.
    let sim = Sim::new("shim-vmm");
    let mut c = MemClient::start(&sim, "vmm", &[("VAGUS_MEMORY_LIMIT", "5MiB")]);
    const MIB: u64 = 1 << 20;
    const VMM: usize = 4; // vagus_proto::shm::MEMORY_KINDS
    let held = |sim: &Sim| sim.device_state().device(0).unwrap().mem_used.load(Relaxed);
    assert_eq!(c.next("granularity"), 2 * MIB);
    assert_eq!((c.next("create0"), c.next("create1")), (0, 0));
    assert_eq!(
        c.next("create2"),
        2,
        "a third 2 MiB crosses 5 MiB: CUDA_ERROR_OUT_OF_MEMORY"
    );
    // gpusim's mappings behave as the driver's: nothing is accessible before
    // cuMemSetAccess, a copy may cross from one mapping into the next, and
    // nothing past them is device memory.
    assert_ne!(c.next("before_access"), 0);
    assert_eq!(
        c.next("roundtrip"),
        1,
        "the bytes came back across the seam"
    );
    assert_ne!(c.next("past_mappings"), 0);
    assert_eq!(c.next("mapped"), 0);
    assert_eq!(c.kinds()[VMM], 4 * MIB);
    assert_eq!(c.seg.stats.refused_allocations.load(Relaxed), 1);
    assert_eq!(held(&sim), 4 * MIB, "the refused one never reached gpusim");
    // Released while mapped: the driver keeps it, and so does the count.
    c.go_on();
    assert_eq!(c.next("still_mapped"), 1);
    assert_eq!(c.next("released"), 0);
    assert_eq!(c.kinds()[VMM], 4 * MIB);
    assert_eq!(held(&sim), 4 * MIB);
    c.go_on();
    assert_eq!(c.next("unmapped"), 0);
    assert_eq!(c.kinds()[VMM], 0);
    assert_eq!(c.seg.stats.bytes_in_use.load(Relaxed), 0);
    assert_eq!(held(&sim), 0);
    c.go_on();
    c.finish();
}

#[test]
fn vagus_run_memory_limit_holds_the_program_to_it_and_says_what_it_refused() {
    let sim = Sim::new("shim-run-memlimit");
    let json = sim.dir.join("run.json");
    let mut child = sim
        .vagus(&["run", "--sim", "--memory-limit", "1GiB", "--json-out"])
        .arg(&json)
        .arg("--")
        .arg(c_client_linked("mem_client"))
        .arg("limit")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let (o, e) = (
        stdout(&out),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{o}{e}");
    // The 1 MiB past the gibibyte is refused both times (nothing raised it),
    // and cuMemGetInfo says the gibibyte is all there is.
    for line in ["over 2", "free 0", "total 1073741824", "again 2"] {
        assert!(o.lines().any(|l| l == line), "{line:?} in {o}");
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["memory_limit_bytes"], 1u64 << 30, "{v}");
    assert_eq!(v["refused_allocations"], 2, "{v}");
    assert_eq!(v["refused_bytes"], 2u64 << 20, "{v}");
    assert_eq!(v["peak_bytes"], 1u64 << 30, "{v}");
    assert!(
        e.contains("of a 1024.0 MiB limit, 2 allocation(s) refused"),
        "{e}"
    );
    let err = stderr_of_failure(sim.vagus(&["run", "--memory-limit", "lots", "--", "true"]));
    assert!(
        err.contains("invalid memory limit") && err.contains("lots"),
        "{err}"
    );
}

#[test]
fn a_memory_limit_refuses_what_would_cross_it_without_the_driver_and_can_be_raised() {
    let sim = Sim::new("shim-memlimit");
    let mut c = MemClient::start(&sim, "limit", &[("VAGUS_MEMORY_LIMIT", "1GiB")]);
    const OOM: u64 = 2; // CUDA_ERROR_OUT_OF_MEMORY
    assert_eq!(c.next("over"), OOM, "1 MiB past 1 GiB");
    let stats = &c.seg.stats;
    assert_eq!(stats.memory_limit.load(Relaxed), 1 << 30);
    assert_eq!(stats.bytes_in_use.load(Relaxed), 1 << 30);
    assert_eq!(
        (
            stats.refused_allocations.load(Relaxed),
            stats.refused_bytes.load(Relaxed)
        ),
        (1, 1 << 20)
    );
    // The driver never saw it: gpusim holds exactly the gibibyte.
    let state = sim.device_state();
    let held = state.device(0).unwrap().mem_used.load(Relaxed);
    assert_eq!(held, 1 << 30, "gpusim's device memory in use");
    // cuMemGetInfo: the limit is the total, nothing is free.
    assert_eq!((c.next("free"), c.next("total")), (0, 1 << 30));
    // Raised at run time through the control block: the allocation goes.
    c.seg.control.write(vagus_proto::shm::ControlValues {
        memory_limit: 2 << 30,
        ..Default::default()
    });
    std::thread::sleep(std::time::Duration::from_millis(100));
    c.go_on();
    assert_eq!(c.next("again"), 0);
    assert_eq!(stats.memory_limit.load(Relaxed), 2 << 30);
    c.finish();
}
