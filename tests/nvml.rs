//! A real third-party NVML client (pynvml, from nvidia-ml-py) reads gpusim's
//! libnvidia-ml.so.1 while a load runs.

use crate::support::*;
use std::process::Command;

const SCRIPT: &str = r#"
import json, os, pynvml
pynvml.nvmlInit()
h = pynvml.nvmlDeviceGetHandleByIndex(0)
mem = pynvml.nvmlDeviceGetMemoryInfo(h)
util = pynvml.nvmlDeviceGetUtilizationRates(h)
procs = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
print(json.dumps({
    "count": pynvml.nvmlDeviceGetCount(),
    "name": pynvml.nvmlDeviceGetName(h),
    "uuid": pynvml.nvmlDeviceGetUUID(h),
    "total": mem.total, "used": mem.used, "free": mem.free,
    "gpu_util": util.gpu,
    "power_mw": pynvml.nvmlDeviceGetPowerUsage(h),
    "limit_mw": pynvml.nvmlDeviceGetEnforcedPowerLimit(h),
    "energy_mj": pynvml.nvmlDeviceGetTotalEnergyConsumption(h),
    "temp": pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
    "sm_clock": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
    "driver": pynvml.nvmlSystemGetDriverVersion(),
    "cuda": pynvml.nvmlSystemGetCudaDriverVersion(),
    "pids": [p.pid for p in procs],
    "proc_mem": [p.usedGpuMemory for p in procs],
    "by_uuid": pynvml.nvmlDeviceGetIndex(pynvml.nvmlDeviceGetHandleByUUID(pynvml.nvmlDeviceGetUUID(h))),
    "by_pci": pynvml.nvmlDeviceGetIndex(pynvml.nvmlDeviceGetHandleByPciBusId(pynvml.nvmlDeviceGetPciInfo(h).busId)),
    "samples": [(s.pid, s.smUtil) for s in pynvml.nvmlDeviceGetProcessUtilization(h, 0)],
}))
pynvml.nvmlShutdown()
"#;

fn pynvml_available() -> bool {
    Command::new("python3")
        .args(["-c", "import pynvml"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Whether pynvml runs here; without it the caller skips, unless
/// `VAGUS_REQUIRE_PYNVML` says it must be there.
fn pynvml_here() -> bool {
    if pynvml_available() {
        return true;
    }
    assert!(
        std::env::var_os("VAGUS_REQUIRE_PYNVML").is_none(),
        "pynvml is required here (VAGUS_REQUIRE_PYNVML is set): pip install nvidia-ml-py"
    );
    eprintln!("skipped: python3 cannot import pynvml (pip install nvidia-ml-py)");
    false
}

#[test]
fn pynvml_reads_device_memory_utilisation_and_power() {
    if !pynvml_here() {
        return;
    }
    let sim = Sim::new("pynvml");
    // Busy enough to show: 4 one-wave kernels of ~0.5 ms per request at 100/s.
    let load = sim.spawn_load(
        &[
            "--qps",
            "100",
            "--duration",
            "3s",
            "--kernels",
            "4",
            "--grid",
            "1056",
            "--work-cycles",
            "1000000",
            "--memory-mib",
            "256",
        ],
        &[],
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let out = sim.cmd("python3").args(["-c", SCRIPT]).output().unwrap();
    let load_pid = load.id();
    report(load.wait_with_output().unwrap());
    assert!(
        out.status.success(),
        "pynvml script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["count"], 1, "{v}");
    assert!(v["name"].as_str().unwrap().contains("H100"), "{v}");
    assert!(v["uuid"].as_str().unwrap().starts_with("GPU-"), "{v}");
    assert_eq!(v["by_uuid"], 0);
    assert_eq!(v["by_pci"], 0);
    let samples = v["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 1, "{v}");
    assert_eq!(samples[0][0], load_pid);
    assert!(
        (1..=60).contains(&samples[0][1].as_u64().unwrap()),
        "per-process SM utilisation: {v}"
    );
    assert_eq!(v["total"], 81559u64 << 20);
    let used = v["used"].as_u64().unwrap();
    assert!(used >= 256 << 20, "the load holds 256 MiB: {v}");
    assert_eq!(
        v["used"].as_u64().unwrap() + v["free"].as_u64().unwrap(),
        81559u64 << 20
    );
    // ~2 ms busy per 10 ms: utilisation near 20%, power above idle (70 W).
    let util = v["gpu_util"].as_u64().unwrap();
    assert!((8..=40).contains(&util), "utilisation {util}%: {v}");
    let power = v["power_mw"].as_u64().unwrap();
    assert!(power > 75_000 && power < 700_000, "power {power} mW: {v}");
    assert_eq!(v["limit_mw"], 700_000);
    assert!(v["energy_mj"].as_u64().unwrap() > 0);
    assert_eq!(v["sm_clock"], 1980);
    assert_eq!(v["cuda"], 13000);
    assert_eq!(v["pids"], serde_json::json!([load_pid]), "{v}");
    assert!(v["proc_mem"][0].as_u64().unwrap() >= 256 << 20);
}

/// NVML's (compute, MPS compute) process PIDs as pynvml reads them; `None`
/// (with a note) where pynvml is not installed and not required.
pub fn process_lists(sim: &Sim) -> Option<(Vec<u32>, Vec<u32>)> {
    if !pynvml_here() {
        return None;
    }
    let script = "import json, pynvml\npynvml.nvmlInit()\nh = pynvml.nvmlDeviceGetHandleByIndex(0)\n\
        print(json.dumps([[p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)],\
        [p.pid for p in pynvml.nvmlDeviceGetMPSComputeRunningProcesses(h)]]))";
    let out = sim.cmd("python3").args(["-c", script]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: (Vec<u32>, Vec<u32>) = serde_json::from_slice(&out.stdout).unwrap();
    Some(v)
}

/// Whether `tool` runs here; otherwise the test is skipped, unless
/// `VAGUS_REQUIRE_MONITORS` says the tools must be there.
fn monitor_available(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("VAGUS_REQUIRE_MONITORS").is_none(),
            "{tool} is required here (VAGUS_REQUIRE_MONITORS is set): pip install gpustat nvitop"
        );
        eprintln!("skipped: {tool} is not installed (pip install gpustat nvitop)");
    }
    ok
}

/// Runs a monitoring tool against gpusim; its output, once it has exited 0
/// and said nothing of an error.
fn monitor(sim: &Sim, tool: &str, args: &[&str]) -> String {
    let out = sim.cmd(tool).args(args).output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    let said = format!("{tool} {args:?}:\n{stdout}\n{stderr}");
    assert!(out.status.success(), "{said}");
    for bad in ["Error", "ERROR", "Traceback", "Not Found"] {
        assert!(!stdout.contains(bad) && !stderr.contains(bad), "{said}");
    }
    stdout
}

#[test]
fn gpustat_and_nvitop_read_gpusim_without_an_error() {
    if !(monitor_available("gpustat") && monitor_available("nvitop")) {
        return;
    }
    let sim = Sim::new("monitors");
    // Idle: the device and no process.
    let idle: serde_json::Value =
        serde_json::from_str(&monitor(&sim, "gpustat", &["--json"])).unwrap();
    let gpu = &idle["gpus"][0];
    assert!(gpu["name"].as_str().unwrap().contains("H100"), "{idle}");
    assert_eq!(gpu["memory.total"], 81559, "{idle}");
    assert_eq!(gpu["processes"], serde_json::json!([]), "{idle}");
    monitor(&sim, "gpustat", &["-cpu"]);
    let table = monitor(&sim, "nvitop", &["--once"]);
    assert!(table.contains("No running processes found"), "{table}");
    // Under a load holding 256 MiB: its process, with its memory.
    let load = sim.spawn_load(
        &[
            "--qps",
            "100",
            "--duration",
            "4s",
            "--kernels",
            "4",
            "--grid",
            "1056",
            "--memory-mib",
            "256",
        ],
        &[],
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let busy: serde_json::Value =
        serde_json::from_str(&monitor(&sim, "gpustat", &["--json"])).unwrap();
    let table = monitor(&sim, "nvitop", &["--once"]);
    let pid = load.id();
    report(load.wait_with_output().unwrap());
    let procs = busy["gpus"][0]["processes"].as_array().unwrap();
    assert!(
        procs
            .iter()
            .any(|p| p["pid"] == pid && p["gpu_memory_usage"].as_u64() >= Some(256)),
        "{busy}"
    );
    assert!(table.contains(&pid.to_string()), "{table}");
}

#[test]
fn pynvml_inside_a_shimmed_process_sees_its_limit_as_the_total_with_the_view_on() {
    if !pynvml_here() {
        return;
    }
    let sim = Sim::new("nvml-view");
    let dir = sim.dir.join("segments");
    std::fs::create_dir_all(&dir).unwrap();
    let script = "import json, pynvml\npynvml.nvmlInit()\nh = pynvml.nvmlDeviceGetHandleByIndex(0)\n\
        m = pynvml.nvmlDeviceGetMemoryInfo(h)\n\
        m2 = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)\n\
        print(json.dumps([[m.total, m.free, m.used], [m2.total, m2.free, m2.used]]))";
    let run = |view: &str| -> Vec<Vec<u64>> {
        let out = sim
            .cmd("python3")
            .args(["-c", script])
            .env("LD_PRELOAD", bin("libvagus_shim.so"))
            .env("VAGUS_SHM_DIR", &dir)
            .env("VAGUS_MEMORY_LIMIT", "1GiB")
            .env("VAGUS_NVML_VIEW", view)
            .output()
            .unwrap();
        serde_json::from_value(report(out)).unwrap()
    };
    // On: the process's slice (it holds nothing yet), through both versions.
    assert_eq!(run("1"), vec![vec![1 << 30, 1 << 30, 0]; 2]);
    // Off (the default): the whole GPU, as NVML says.
    let whole = run("0");
    assert_eq!(whole[0][0], 81559u64 << 20, "{whole:?}");
}

/// A Python process that takes `bytes` of device memory through the driver
/// (ctypes: under the shim, its wrappers, as for any CUDA program), then
/// either lists NVML's processes as JSON (`list`) or holds the memory
/// until a line arrives on stdin (`hold`).
const PROCESSES: &str = r#"
import ctypes, json, os, sys
cu = ctypes.CDLL("libcuda.so.1")
ctx, ptr = ctypes.c_void_p(), ctypes.c_uint64()
assert cu.cuInit(0) == 0
assert cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), 0) == 0
assert cu.cuCtxSetCurrent(ctx) == 0
assert cu.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(int(sys.argv[1]))) == 0
if sys.argv[2] == "hold":
    print("ready", flush=True)
    sys.stdin.readline()
    sys.exit(0)
import pynvml
pynvml.nvmlInit()
h = pynvml.nvmlDeviceGetHandleByIndex(0)
print(json.dumps({
    "pid": os.getpid(),
    "compute": sorted([p.pid, p.usedGpuMemory] for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)),
    "graphics": len(pynvml.nvmlDeviceGetGraphicsRunningProcesses(h)),
}))
"#;

#[test]
fn pynvml_inside_a_shimmed_process_lists_only_itself_with_the_view_on() {
    if !pynvml_here() {
        return;
    }
    let sim = Sim::new("nvml-view-procs");
    let dir = sim.dir.join("segments");
    std::fs::create_dir_all(&dir).unwrap();
    const MIB: u64 = 1 << 20;
    // Another process on the GPU, holding 512 MiB.
    let mut other = sim
        .cmd("python3")
        .args(["-c", PROCESSES, &(512 * MIB).to_string(), "hold"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(other.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready");
    let run = |view: &str| -> serde_json::Value {
        let out = sim
            .cmd("python3")
            .args(["-c", PROCESSES, &(256 * MIB).to_string(), "list"])
            .env("LD_PRELOAD", bin("libvagus_shim.so"))
            .env("VAGUS_SHM_DIR", &dir)
            .env("VAGUS_NVML_VIEW", view)
            .output()
            .unwrap();
        report(out)
    };
    let on = run("1");
    let me = on["pid"].as_u64().unwrap();
    assert_eq!(on["compute"], serde_json::json!([[me, 256 * MIB]]), "{on}");
    assert_eq!(
        on["graphics"], 0,
        "a data-centre GPU runs no graphics contexts"
    );
    // Off: every process on the GPU, as NVML says.
    let off = run("0");
    let me = off["pid"].as_u64().unwrap();
    let mut want = vec![(me, 256 * MIB), (other.id() as u64, 512 * MIB)];
    want.sort();
    assert_eq!(off["compute"], serde_json::json!(want), "{off}");
    use std::io::Write;
    other.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
    assert!(other.wait().unwrap().success());
}
