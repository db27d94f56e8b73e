//! gpusim's `libnvidia-ml.so.1`: the NVML subset that monitoring clients
//! (nvidia-smi-like tools, pynvml, nvml-wrapper, dcgm-style exporters) use,
//! reading the shared device state that gpusim's driver library writes.
//! Every entry point catches panics and checks its arguments.
#![allow(non_snake_case, clippy::missing_safety_doc)]

use gpusim::SimConfig;
use gpusim::clock::now_ns;
use gpusim::state::{ProcessInfo, SharedState};
use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};

pub type NvmlReturn = c_int;
pub const NVML_SUCCESS: NvmlReturn = 0;
pub const NVML_ERROR_UNINITIALIZED: NvmlReturn = 1;
pub const NVML_ERROR_INVALID_ARGUMENT: NvmlReturn = 2;
pub const NVML_ERROR_NOT_SUPPORTED: NvmlReturn = 3;
pub const NVML_ERROR_NOT_FOUND: NvmlReturn = 6;
pub const NVML_ERROR_INSUFFICIENT_SIZE: NvmlReturn = 7;
pub const NVML_ERROR_DRIVER_NOT_LOADED: NvmlReturn = 9;
pub const NVML_ERROR_ARGUMENT_VERSION_MISMATCH: NvmlReturn = 25;
pub const NVML_ERROR_UNKNOWN: NvmlReturn = 999;

/// The driver version NVML reports, matching gpusim's CUDA 13.0 driver API.
pub const DRIVER_VERSION: &str = "580.65.06";
pub const CUDA_DRIVER_VERSION: c_int = 13000;
/// Utilisation is the busy fraction over this window, like NVML's sample period.
const UTIL_WINDOW_NS: u64 = 1_000_000_000;

static INIT_COUNT: AtomicU32 = AtomicU32::new(0);
static STATE: OnceLock<Mutex<Option<&'static SharedState>>> = OnceLock::new();

fn slot() -> &'static Mutex<Option<&'static SharedState>> {
    STATE.get_or_init(|| Mutex::new(None))
}

fn guard(f: impl FnOnce() -> Result<(), NvmlReturn>) -> NvmlReturn {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => NVML_SUCCESS,
        Ok(Err(e)) => e,
        Err(_) => NVML_ERROR_UNKNOWN,
    }
}

unsafe fn out<T>(p: *mut T, v: T) -> Result<(), NvmlReturn> {
    if p.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    // SAFETY: non-null out-pointer from the caller.
    unsafe { p.write(v) };
    Ok(())
}

fn state() -> Result<&'static SharedState, NvmlReturn> {
    if INIT_COUNT.load(Relaxed) == 0 {
        return Err(NVML_ERROR_UNINITIALIZED);
    }
    slot()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .ok_or(NVML_ERROR_UNINITIALIZED)
}

fn init() -> Result<(), NvmlReturn> {
    let mut s = slot().lock().unwrap_or_else(|e| e.into_inner());
    if s.is_none() {
        let cfg = SimConfig::from_env().map_err(|e| {
            eprintln!("gpusim NVML: {e}");
            NVML_ERROR_DRIVER_NOT_LOADED
        })?;
        let st = SharedState::open(&cfg).map_err(|e| {
            eprintln!("gpusim NVML: {e}");
            NVML_ERROR_DRIVER_NOT_LOADED
        })?;
        // The state lives for the rest of the process, as NVML's does.
        *s = Some(Box::leak(Box::new(st)));
    }
    INIT_COUNT.fetch_add(1, Relaxed);
    Ok(())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInit_v2() -> NvmlReturn {
    guard(init)
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInit() -> NvmlReturn {
    guard(init)
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> NvmlReturn {
    guard(init)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlShutdown() -> NvmlReturn {
    guard(|| {
        INIT_COUNT
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .map(|_| ())
            .map_err(|_| NVML_ERROR_UNINITIALIZED)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlErrorString(r: NvmlReturn) -> *const c_char {
    let s: &'static [u8] = match r {
        0 => b"Success\0",
        1 => b"Uninitialized\0",
        2 => b"Invalid Argument\0",
        3 => b"Not Supported\0",
        6 => b"Not Found\0",
        7 => b"Insufficient Size\0",
        9 => b"Driver Not Loaded\0",
        10 => b"Timeout\0",
        25 => b"Argument version mismatch\0",
        _ => b"Unknown Error\0",
    };
    s.as_ptr() as *const c_char
}

fn write_str(buf: *mut c_char, len: c_uint, s: &str) -> Result<(), NvmlReturn> {
    if buf.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    if (len as usize) < s.len() + 1 {
        return Err(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    // SAFETY: the caller's buffer holds `len` bytes, checked above.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf as *mut u8, s.len());
        *buf.add(s.len()) = 0;
    }
    Ok(())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(buf: *mut c_char, len: c_uint) -> NvmlReturn {
    guard(|| {
        state()?;
        write_str(buf, len, DRIVER_VERSION)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetNVMLVersion(buf: *mut c_char, len: c_uint) -> NvmlReturn {
    guard(|| {
        state()?;
        write_str(buf, len, "13.580.65.06")
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion(v: *mut c_int) -> NvmlReturn {
    guard(|| {
        state()?;
        unsafe { out(v, CUDA_DRIVER_VERSION) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion_v2(v: *mut c_int) -> NvmlReturn {
    guard(|| {
        state()?;
        unsafe { out(v, CUDA_DRIVER_VERSION) }
    })
}

// ---------------------------------------------------------------- device handles

/// Device handles are tagged indices, checked on every use.
const HANDLE_TAG: usize = 0x4e56_4d4c_0000;

fn handle_of(i: usize) -> *mut c_void {
    (HANDLE_TAG | (i + 1)) as *mut c_void
}

fn index_of(h: *mut c_void) -> Result<usize, NvmlReturn> {
    let st = state()?;
    let v = h as usize;
    if v & !0xffff != HANDLE_TAG || v & 0xffff == 0 || (v & 0xffff) > st.device_count() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    Ok((v & 0xffff) - 1)
}

fn count(n: *mut c_uint) -> Result<(), NvmlReturn> {
    let st = state()?;
    unsafe { out(n, st.device_count() as c_uint) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(n: *mut c_uint) -> NvmlReturn {
    guard(|| count(n))
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount(n: *mut c_uint) -> NvmlReturn {
    guard(|| count(n))
}

fn by_index(i: c_uint, h: *mut *mut c_void) -> Result<(), NvmlReturn> {
    let st = state()?;
    if i as usize >= st.device_count() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    unsafe { out(h, handle_of(i as usize)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    i: c_uint,
    h: *mut *mut c_void,
) -> NvmlReturn {
    guard(|| by_index(i, h))
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex(i: c_uint, h: *mut *mut c_void) -> NvmlReturn {
    guard(|| by_index(i, h))
}

fn pci_bus_id(i: usize) -> String {
    format!("00000000:{:02X}:00.0", 0x18 + i)
}

fn find_by(
    key: *const c_char,
    h: *mut *mut c_void,
    f: impl Fn(usize, &str) -> bool,
) -> Result<(), NvmlReturn> {
    let st = state()?;
    if key.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    // SAFETY: NUL-terminated string from the caller.
    let k = unsafe { CStr::from_ptr(key) }.to_string_lossy();
    let i = (0..st.device_count())
        .find(|&i| f(i, &k))
        .ok_or(NVML_ERROR_NOT_FOUND)?;
    unsafe { out(h, handle_of(i)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByUUID(
    uuid: *const c_char,
    h: *mut *mut c_void,
) -> NvmlReturn {
    guard(|| {
        let st = state()?;
        find_by(uuid, h, |i, k| {
            st.device(i)
                .is_some_and(|d| d.uuid_string().eq_ignore_ascii_case(k))
        })
    })
}

fn by_pci(id: *const c_char, h: *mut *mut c_void) -> Result<(), NvmlReturn> {
    find_by(id, h, |i, k| {
        let full = pci_bus_id(i);
        full.eq_ignore_ascii_case(k) || full[4..].eq_ignore_ascii_case(k)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByPciBusId_v2(
    id: *const c_char,
    h: *mut *mut c_void,
) -> NvmlReturn {
    guard(|| by_pci(id, h))
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByPciBusId(
    id: *const c_char,
    h: *mut *mut c_void,
) -> NvmlReturn {
    guard(|| by_pci(id, h))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetIndex(h: *mut c_void, i: *mut c_uint) -> NvmlReturn {
    guard(|| unsafe { out(i, index_of(h)? as c_uint) })
}

/// Runs `f` on device `h` of the shared state.
fn with_dev<T>(
    h: *mut c_void,
    f: impl FnOnce(&SharedState, usize) -> Result<T, NvmlReturn>,
) -> Result<T, NvmlReturn> {
    let i = index_of(h)?;
    f(state()?, i)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetName(
    h: *mut c_void,
    buf: *mut c_char,
    len: c_uint,
) -> NvmlReturn {
    guard(|| {
        with_dev(h, |st, i| {
            write_str(buf, len, st.device(i).expect("index checked").name())
        })
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUUID(
    h: *mut c_void,
    buf: *mut c_char,
    len: c_uint,
) -> NvmlReturn {
    guard(|| {
        with_dev(h, |st, i| {
            write_str(
                buf,
                len,
                &st.device(i).expect("index checked").uuid_string(),
            )
        })
    })
}

#[repr(C)]
pub struct PciInfo {
    bus_id_legacy: [u8; 16],
    domain: c_uint,
    bus: c_uint,
    device: c_uint,
    pci_device_id: c_uint,
    pci_subsystem_id: c_uint,
    bus_id: [u8; 32],
}

fn pci_info(h: *mut c_void, p: *mut PciInfo) -> Result<(), NvmlReturn> {
    let i = index_of(h)?;
    let id = pci_bus_id(i);
    let mut info = PciInfo {
        bus_id_legacy: [0; 16],
        domain: 0,
        bus: 0x18 + i as c_uint,
        device: 0,
        pci_device_id: 0x2330_10de,
        pci_subsystem_id: 0x16c1_10de,
        bus_id: [0; 32],
    };
    info.bus_id[..id.len()].copy_from_slice(id.as_bytes());
    info.bus_id_legacy[..12].copy_from_slice(&id.as_bytes()[4..16]);
    unsafe { out(p, info) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v3(h: *mut c_void, p: *mut PciInfo) -> NvmlReturn {
    guard(|| pci_info(h, p))
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo(h: *mut c_void, p: *mut PciInfo) -> NvmlReturn {
    guard(|| pci_info(h, p))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCudaComputeCapability(
    h: *mut c_void,
    major: *mut c_int,
    minor: *mut c_int,
) -> NvmlReturn {
    guard(|| {
        with_dev(h, |st, i| {
            let cc = st
                .device(i)
                .expect("index checked")
                .config()
                .compute_capability;
            unsafe {
                out(major, cc.0 as c_int)?;
                out(minor, cc.1 as c_int)
            }
        })
    })
}

// ---------------------------------------------------------------- memory, utilisation, power

#[repr(C)]
pub struct Memory {
    total: u64,
    free: u64,
    used: u64,
}

#[repr(C)]
pub struct MemoryV2 {
    version: c_uint,
    total: u64,
    reserved: u64,
    free: u64,
    used: u64,
}

/// `nvmlMemory_v2`: version 2 of a 40-byte struct.
pub const NVML_MEMORY_V2: c_uint = (std::mem::size_of::<MemoryV2>() as c_uint) | (2 << 24);

fn mem(st: &SharedState, i: usize) -> (u64, u64) {
    let d = st.device(i).expect("index checked");
    (
        d.total_memory(),
        d.mem_used.load(Relaxed).min(d.total_memory()),
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(h: *mut c_void, m: *mut Memory) -> NvmlReturn {
    guard(|| {
        with_dev(h, |st, i| {
            let (total, used) = mem(st, i);
            unsafe {
                out(
                    m,
                    Memory {
                        total,
                        free: total - used,
                        used,
                    },
                )
            }
        })
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    h: *mut c_void,
    m: *mut MemoryV2,
) -> NvmlReturn {
    guard(|| {
        with_dev(h, |st, i| {
            if m.is_null() {
                return Err(NVML_ERROR_INVALID_ARGUMENT);
            }
            // SAFETY: non-null; the caller set the version field.
            if unsafe { (*m).version } != NVML_MEMORY_V2 {
                return Err(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
            }
            let (total, used) = mem(st, i);
            unsafe {
                out(
                    m,
                    MemoryV2 {
                        version: NVML_MEMORY_V2,
                        total,
                        reserved: 0,
                        free: total - used,
                        used,
                    },
                )
            }
        })
    })
}

#[repr(C)]
pub struct Utilization {
    gpu: c_uint,
    memory: c_uint,
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUtilizationRates(
    h: *mut c_void,
    u: *mut Utilization,
) -> NvmlReturn {
    guard(|| {
        with_dev(h, |st, i| {
            let (gpu, _) = st.utilization(i, UTIL_WINDOW_NS, now_ns(), None);
            // Copies are not tracked per window: memory utilisation reads 0.
            unsafe {
                out(
                    u,
                    Utilization {
                        gpu: (gpu * 100.0).round() as c_uint,
                        memory: 0,
                    },
                )
            }
        })
    })
}

#[repr(C)]
pub struct ProcessUtilizationSample {
    pid: c_uint,
    time_stamp: u64,
    sm_util: c_uint,
    mem_util: c_uint,
    enc_util: c_uint,
    dec_util: c_uint,
}

fn realtime_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetProcessUtilization(
    h: *mut c_void,
    samples: *mut ProcessUtilizationSample,
    count: *mut c_uint,
    last_seen_us: u64,
) -> NvmlReturn {
    guard(|| {
        with_dev(h, |st, i| {
            if count.is_null() {
                return Err(NVML_ERROR_INVALID_ARGUMENT);
            }
            let (now, wall) = (now_ns(), realtime_us());
            // The window: since last_seen (if recent), else the last second.
            let since_ns = wall
                .saturating_sub(last_seen_us)
                .saturating_mul(1000)
                .clamp(1, UTIL_WINDOW_NS);
            let procs = st.device(i).expect("index checked").live_processes(st);
            let list: Vec<ProcessUtilizationSample> = procs
                .iter()
                .map(|p| (p.pid, st.utilization(i, since_ns, now, Some(p.pid)).1))
                .filter(|&(_, sm)| sm > 0.0)
                .map(|(pid, sm)| ProcessUtilizationSample {
                    pid,
                    time_stamp: wall,
                    sm_util: (sm * 100.0).round().max(1.0) as c_uint,
                    mem_util: 0,
                    enc_util: 0,
                    dec_util: 0,
                })
                .collect();
            if list.is_empty() {
                return Err(NVML_ERROR_NOT_FOUND);
            }
            // SAFETY: count checked non-null.
            let room = unsafe { *count } as usize;
            unsafe { *count = list.len() as c_uint };
            if samples.is_null() || room < list.len() {
                return Err(NVML_ERROR_INSUFFICIENT_SIZE);
            }
            for (k, s) in list.into_iter().enumerate() {
                // SAFETY: the caller's buffer holds `room` samples.
                unsafe { samples.add(k).write(s) };
            }
            Ok(())
        })
    })
}

/// `nvmlProcessInfo_v2_t` / `_v3_t`.
#[repr(C)]
pub struct ProcessInfoV2 {
    pid: c_uint,
    used_gpu_memory: u64,
    gpu_instance_id: c_uint,
    compute_instance_id: c_uint,
}

/// `nvmlProcessInfo_v1_t`.
#[repr(C)]
pub struct ProcessInfoV1 {
    pid: c_uint,
    used_gpu_memory: u64,
}

/// Which of NVML's process lists.
#[derive(Clone, Copy)]
enum List {
    Compute,
    Mps,
    /// Graphics (non-compute) contexts: a data-centre GPU runs none.
    Graphics,
}

/// Processes as NVML lists them: without MPS, the processes with contexts;
/// under MPS, the server appears in the compute list (holding its clients'
/// memory) and the clients in the MPS list.
fn process_list(st: &SharedState, i: usize, list: List) -> Vec<(u32, u64)> {
    let mps = match list {
        List::Compute => false,
        List::Mps => true,
        List::Graphics => return Vec::new(),
    };
    let procs: Vec<ProcessInfo> = st.device(i).expect("index checked").live_processes(st);
    if mps {
        return procs
            .iter()
            .filter(|p| p.mps_server != 0)
            .map(|p| (p.pid, p.mem_used))
            .collect();
    }
    let mut list: Vec<(u32, u64)> = procs
        .iter()
        .filter(|p| p.mps_server == 0)
        .map(|p| (p.pid, p.mem_used))
        .collect();
    for p in procs.iter().filter(|p| p.mps_server != 0) {
        match list.iter_mut().find(|(pid, _)| *pid == p.mps_server) {
            Some(e) => e.1 += p.mem_used,
            None => list.push((p.mps_server, p.mem_used)),
        }
    }
    list
}

fn fill<T>(
    list: Vec<(u32, u64)>,
    count: *mut c_uint,
    infos: *mut T,
    make: impl Fn(u32, u64) -> T,
) -> Result<(), NvmlReturn> {
    if count.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    // SAFETY: count checked non-null.
    let room = unsafe { *count } as usize;
    unsafe { *count = list.len() as c_uint };
    if list.is_empty() {
        return Ok(());
    }
    if infos.is_null() || room < list.len() {
        return Err(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    for (k, (pid, m)) in list.into_iter().enumerate() {
        // SAFETY: the caller's array holds `room` entries.
        unsafe { infos.add(k).write(make(pid, m)) };
    }
    Ok(())
}

fn v2(pid: u32, m: u64) -> ProcessInfoV2 {
    ProcessInfoV2 {
        pid,
        used_gpu_memory: m,
        gpu_instance_id: u32::MAX,
        compute_instance_id: u32::MAX,
    }
}

macro_rules! process_entry {
    ($name:ident, $info:ty, $list:expr, $make:expr) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            h: *mut c_void,
            count: *mut c_uint,
            infos: *mut $info,
        ) -> NvmlReturn {
            guard(|| {
                with_dev(h, |st, i| {
                    fill(process_list(st, i, $list), count, infos, $make)
                })
            })
        }
    };
}

process_entry!(
    nvmlDeviceGetComputeRunningProcesses_v3,
    ProcessInfoV2,
    List::Compute,
    v2
);
process_entry!(
    nvmlDeviceGetComputeRunningProcesses_v2,
    ProcessInfoV2,
    List::Compute,
    v2
);
process_entry!(
    nvmlDeviceGetComputeRunningProcesses,
    ProcessInfoV1,
    List::Compute,
    |pid, m| ProcessInfoV1 {
        pid,
        used_gpu_memory: m
    }
);
process_entry!(
    nvmlDeviceGetMPSComputeRunningProcesses_v3,
    ProcessInfoV2,
    List::Mps,
    v2
);
process_entry!(
    nvmlDeviceGetMPSComputeRunningProcesses_v2,
    ProcessInfoV2,
    List::Mps,
    v2
);
process_entry!(
    nvmlDeviceGetMPSComputeRunningProcesses,
    ProcessInfoV1,
    List::Mps,
    |pid, m| ProcessInfoV1 {
        pid,
        used_gpu_memory: m
    }
);

process_entry!(
    nvmlDeviceGetGraphicsRunningProcesses_v3,
    ProcessInfoV2,
    List::Graphics,
    v2
);
process_entry!(
    nvmlDeviceGetGraphicsRunningProcesses_v2,
    ProcessInfoV2,
    List::Graphics,
    v2
);
process_entry!(
    nvmlDeviceGetGraphicsRunningProcesses,
    ProcessInfoV1,
    List::Graphics,
    |pid, m| ProcessInfoV1 {
        pid,
        used_gpu_memory: m
    }
);

// ---------------------------------------------------------------- what monitoring tools ask
//
// gpustat and nvitop query these for every device; the answers are an H100
// SXM's in a Linux data-centre host: no display, no fans, no video
// encoder, ECC on with no errors.

/// `NVML_COMPUTEMODE_DEFAULT`.
const COMPUTE_MODE_DEFAULT: c_int = 0;
/// `NVML_FEATURE_DISABLED` / `NVML_FEATURE_ENABLED`.
const FEATURE_DISABLED: c_int = 0;
const FEATURE_ENABLED: c_int = 1;
/// NVML's sampling period for video engine utilisation (µs).
const VIDEO_SAMPLING_US: c_uint = 167_000;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeMode(h: *mut c_void, mode: *mut c_int) -> NvmlReturn {
    guard(|| with_dev(h, |_, _| unsafe { out(mode, COMPUTE_MODE_DEFAULT) }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPersistenceMode(
    h: *mut c_void,
    mode: *mut c_int,
) -> NvmlReturn {
    guard(|| with_dev(h, |_, _| unsafe { out(mode, FEATURE_ENABLED) }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetDisplayActive(
    h: *mut c_void,
    active: *mut c_int,
) -> NvmlReturn {
    guard(|| with_dev(h, |_, _| unsafe { out(active, FEATURE_DISABLED) }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetDisplayMode(h: *mut c_void, mode: *mut c_int) -> NvmlReturn {
    guard(|| with_dev(h, |_, _| unsafe { out(mode, FEATURE_DISABLED) }))
}

/// Windows only (WDDM/TCC): not supported on Linux.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetDriverModel(
    h: *mut c_void,
    _current: *mut c_int,
    _pending: *mut c_int,
) -> NvmlReturn {
    guard(|| with_dev(h, |_, _| Err(NVML_ERROR_NOT_SUPPORTED)))
}

/// An SXM module is cooled by the chassis: no fan of its own.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetFanSpeed(h: *mut c_void, _speed: *mut c_uint) -> NvmlReturn {
    guard(|| with_dev(h, |_, _| Err(NVML_ERROR_NOT_SUPPORTED)))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetFanSpeed_v2(
    h: *mut c_void,
    _fan: c_uint,
    _speed: *mut c_uint,
) -> NvmlReturn {
    guard(|| with_dev(h, |_, _| Err(NVML_ERROR_NOT_SUPPORTED)))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetNumFans(h: *mut c_void, n: *mut c_uint) -> NvmlReturn {
    guard(|| with_dev(h, |_, _| unsafe { out(n, 0) }))
}

/// P0: a data-centre GPU holds its top performance state.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPerformanceState(
    h: *mut c_void,
    state: *mut c_int,
) -> NvmlReturn {
    guard(|| with_dev(h, |_, _| unsafe { out(state, 0) }))
}

/// The H100 has video decoders (idle here) and no encoder.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetDecoderUtilization(
    h: *mut c_void,
    util: *mut c_uint,
    period_us: *mut c_uint,
) -> NvmlReturn {
    guard(|| {
        with_dev(h, |_, _| unsafe {
            if util.is_null() || period_us.is_null() {
                return Err(NVML_ERROR_INVALID_ARGUMENT);
            }
            out(util, 0)?;
            out(period_us, VIDEO_SAMPLING_US)
        })
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetEncoderUtilization(
    h: *mut c_void,
    _util: *mut c_uint,
    _period_us: *mut c_uint,
) -> NvmlReturn {
    guard(|| with_dev(h, |_, _| Err(NVML_ERROR_NOT_SUPPORTED)))
}

/// ECC is on and has counted nothing: `error_type` corrected (0) or
/// uncorrected (1), `counter` volatile (0) or aggregate (1).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTotalEccErrors(
    h: *mut c_void,
    error_type: c_int,
    counter: c_int,
    count: *mut u64,
) -> NvmlReturn {
    guard(|| {
        with_dev(h, |_, _| {
            if !(0..=1).contains(&error_type) || !(0..=1).contains(&counter) {
                return Err(NVML_ERROR_INVALID_ARGUMENT);
            }
            unsafe { out(count, 0) }
        })
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetEccMode(
    h: *mut c_void,
    current: *mut c_int,
    pending: *mut c_int,
) -> NvmlReturn {
    guard(|| {
        with_dev(h, |_, _| unsafe {
            if current.is_null() || pending.is_null() {
                return Err(NVML_ERROR_INVALID_ARGUMENT);
            }
            out(current, FEATURE_ENABLED)?;
            out(pending, FEATURE_ENABLED)
        })
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPowerUsage(h: *mut c_void, mw: *mut c_uint) -> NvmlReturn {
    guard(|| {
        with_dev(h, |st, i| unsafe {
            out(mw, st.power_mw(i, now_ns()) as c_uint)
        })
    })
}

fn power_limit(h: *mut c_void, mw: *mut c_uint) -> Result<(), NvmlReturn> {
    with_dev(h, |st, i| unsafe {
        out(
            mw,
            st.device(i).expect("index checked").config().tdp_watts * 1000,
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetEnforcedPowerLimit(
    h: *mut c_void,
    mw: *mut c_uint,
) -> NvmlReturn {
    guard(|| power_limit(h, mw))
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPowerManagementLimit(
    h: *mut c_void,
    mw: *mut c_uint,
) -> NvmlReturn {
    guard(|| power_limit(h, mw))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTotalEnergyConsumption(
    h: *mut c_void,
    mj: *mut u64,
) -> NvmlReturn {
    guard(|| with_dev(h, |st, i| unsafe { out(mj, st.energy_mj(i, now_ns())) }))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTemperature(
    h: *mut c_void,
    sensor: c_int,
    t: *mut c_uint,
) -> NvmlReturn {
    guard(|| {
        with_dev(h, |st, i| {
            if sensor != 0 {
                return Err(NVML_ERROR_INVALID_ARGUMENT);
            }
            let (_, sm) = st.utilization(i, UTIL_WINDOW_NS, now_ns(), None);
            unsafe { out(t, 32 + (sm * 40.0).round() as c_uint) }
        })
    })
}

fn clock(h: *mut c_void, kind: c_int, mhz: *mut c_uint) -> Result<(), NvmlReturn> {
    with_dev(h, |st, i| {
        let d = st.device(i).expect("index checked").config();
        let v = match kind {
            0 | 1 => d.clock_mhz,      // graphics, SM
            2 => d.memory_clock_mhz,   // memory
            3 => d.clock_mhz * 9 / 10, // video
            _ => return Err(NVML_ERROR_INVALID_ARGUMENT),
        };
        unsafe { out(mhz, v) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetClockInfo(
    h: *mut c_void,
    kind: c_int,
    mhz: *mut c_uint,
) -> NvmlReturn {
    guard(|| clock(h, kind, mhz))
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMaxClockInfo(
    h: *mut c_void,
    kind: c_int,
    mhz: *mut c_uint,
) -> NvmlReturn {
    guard(|| clock(h, kind, mhz))
}

// ---------------------------------------------------------------- events (XID errors)

pub const NVML_ERROR_TIMEOUT: NvmlReturn = 10;
/// `nvmlEventTypeXidCriticalError`: the only event type gpusim raises.
pub const NVML_EVENT_TYPE_XID_CRITICAL_ERROR: u64 = 0x8;

/// `nvmlEventData_t`.
#[repr(C)]
pub struct NvmlEventData {
    pub device: *mut c_void,
    pub event_type: u64,
    pub event_data: u64,
    pub gpu_instance_id: c_uint,
    pub compute_instance_id: c_uint,
}

/// An event set: the devices registered on it and the XIDs not yet handed out.
struct EventSet {
    devices: Vec<usize>,
    reader: gpusim::xid::XidReader,
    pending: std::collections::VecDeque<(usize, u64)>,
}

/// Event-set handles are boxed sets, recorded here so a bad handle is refused.
static SETS: OnceLock<Mutex<std::collections::HashSet<usize>>> = OnceLock::new();

fn sets() -> std::sync::MutexGuard<'static, std::collections::HashSet<usize>> {
    SETS.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

fn event_set(h: *mut c_void) -> Result<&'static mut EventSet, NvmlReturn> {
    if h.is_null() || !sets().contains(&(h as usize)) {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    // SAFETY: a live set this library created (recorded in SETS).
    Ok(unsafe { &mut *(h as *mut EventSet) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetCreate(out_set: *mut *mut c_void) -> NvmlReturn {
    guard(|| {
        let st = state()?;
        let set = Box::into_raw(Box::new(EventSet {
            devices: Vec::new(),
            reader: gpusim::xid::XidReader::new(st.path()),
            pending: Default::default(),
        })) as *mut c_void;
        sets().insert(set as usize);
        unsafe { out(out_set, set) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetFree(set: *mut c_void) -> NvmlReturn {
    guard(|| {
        event_set(set)?;
        sets().remove(&(set as usize));
        // SAFETY: created by nvmlEventSetCreate and now forgotten by SETS.
        drop(unsafe { Box::from_raw(set as *mut EventSet) });
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetSupportedEventTypes(
    h: *mut c_void,
    types: *mut u64,
) -> NvmlReturn {
    guard(|| {
        index_of(h)?;
        unsafe { out(types, NVML_EVENT_TYPE_XID_CRITICAL_ERROR) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceRegisterEvents(
    h: *mut c_void,
    types: u64,
    set: *mut c_void,
) -> NvmlReturn {
    guard(|| {
        let i = index_of(h)?;
        let s = event_set(set)?;
        if types & !NVML_EVENT_TYPE_XID_CRITICAL_ERROR != 0 {
            return Err(NVML_ERROR_NOT_SUPPORTED);
        }
        if types != 0 && !s.devices.contains(&i) {
            s.devices.push(i);
        }
        Ok(())
    })
}

fn wait(set: *mut c_void, data: *mut NvmlEventData, timeout_ms: c_uint) -> Result<(), NvmlReturn> {
    if data.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    let deadline = now_ns() + timeout_ms as u64 * 1_000_000;
    loop {
        let s = event_set(set)?;
        for (d, xid) in s.reader.poll() {
            if s.devices.contains(&(d as usize)) {
                s.pending.push_back((d as usize, xid));
            }
        }
        if let Some((d, xid)) = s.pending.pop_front() {
            return unsafe {
                out(
                    data,
                    NvmlEventData {
                        device: handle_of(d),
                        event_type: NVML_EVENT_TYPE_XID_CRITICAL_ERROR,
                        event_data: xid,
                        gpu_instance_id: u32::MAX,
                        compute_instance_id: u32::MAX,
                    },
                )
            };
        }
        if now_ns() >= deadline {
            return Err(NVML_ERROR_TIMEOUT);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetWait_v2(
    set: *mut c_void,
    data: *mut NvmlEventData,
    timeout_ms: c_uint,
) -> NvmlReturn {
    guard(|| wait(set, data, timeout_ms))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetWait(
    set: *mut c_void,
    data: *mut NvmlEventData,
    timeout_ms: c_uint,
) -> NvmlReturn {
    guard(|| wait(set, data, timeout_ms))
}
