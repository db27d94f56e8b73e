//! The wrapped driver entry points. Each has the driver's exact signature,
//! forwards to the real function, and observes around the call. The launch
//! wrappers take no lock, make no system call and allocate nothing unless
//! the launch is sampled.
#![allow(non_snake_case, clippy::missing_safety_doc, clippy::too_many_arguments)]

use crate::budget;
use crate::cuda::*;
use crate::lock::ForkLock;
use crate::memory::{self, Kind};
use crate::priority;
use crate::resolve::{Hook, driver_symbol, substitute_by_pointer};
use crate::sampler::{self, Sample};
use crate::segment;
use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicUsize, Ordering::*};
use vagus_proto::shm::{self, SHARDS, Segment, Shard};

macro_rules! hooks {
    ($($name:ident),* $(,)?) => {
        #[allow(non_camel_case_types, dead_code, clippy::upper_case_acronyms)]
        #[derive(Clone, Copy)]
        #[repr(usize)]
        enum H { $($name),* }
        /// Every wrapped entry point, in `H` order.
        pub static HOOKS: [Hook; [$(stringify!($name)),*].len()] =
            [$(Hook::new(concat!(stringify!($name), "\0"), $name as *const ())),*];
    };
}

hooks!(
    cuLaunchKernel,
    cuLaunchKernel_ptsz,
    cuLaunchKernelEx,
    cuLaunchKernelEx_ptsz,
    cuLaunchCooperativeKernel,
    cuLaunchCooperativeKernel_ptsz,
    cuGraphLaunch,
    cuGraphLaunch_ptsz,
    cuStreamSynchronize,
    cuStreamSynchronize_ptsz,
    cuCtxSynchronize,
    cuEventSynchronize,
    cuStreamBeginCapture,
    cuStreamBeginCapture_v2,
    cuStreamEndCapture,
    cuStreamEndCapture_ptsz,
    cuModuleGetFunction,
    cuModuleLoad,
    cuModuleLoadData,
    cuModuleLoadDataEx,
    cuCtxCreate_v2,
    cuCtxCreate_v3,
    cuCtxCreate_v4,
    cuMemAlloc_v2,
    cuMemFree_v2,
    cuMemAllocPitch_v2,
    cuMemAllocManaged,
    cuMemAllocAsync,
    cuMemAllocAsync_ptsz,
    cuMemAllocFromPoolAsync,
    cuMemAllocFromPoolAsync_ptsz,
    cuMemFreeAsync,
    cuMemFreeAsync_ptsz,
    cuMemCreate,
    cuMemRelease,
    cuMemMap,
    cuMemUnmap,
    cuMemHostAlloc,
    cuMemAllocHost_v2,
    cuMemFreeHost,
    cuMemGetInfo_v2,
    cuCtxDestroy_v2,
    cuDevicePrimaryCtxRetain,
    cuDevicePrimaryCtxRelease_v2,
    cuDevicePrimaryCtxReset_v2,
    cuGetProcAddress,
    cuGetProcAddress_v2,
    nvmlDeviceGetMemoryInfo,
    nvmlDeviceGetMemoryInfo_v2,
    nvmlDeviceGetComputeRunningProcesses,
    nvmlDeviceGetComputeRunningProcesses_v2,
    nvmlDeviceGetComputeRunningProcesses_v3,
    nvmlDeviceGetGraphicsRunningProcesses,
    nvmlDeviceGetGraphicsRunningProcesses_v2,
    nvmlDeviceGetGraphicsRunningProcesses_v3,
    nvmlDeviceGetMPSComputeRunningProcesses,
    nvmlDeviceGetMPSComputeRunningProcesses_v2,
    nvmlDeviceGetMPSComputeRunningProcesses_v3,
);

/// The real function behind hook `h`, as type `F`; without one the
/// wrapper answers `missing` (`CUDA_ERROR_NOT_INITIALIZED` by default).
macro_rules! real {
    ($h:expr, $f:ty) => {
        real!($h, $f, CUDA_ERROR_NOT_INITIALIZED)
    };
    ($h:expr, $f:ty, $missing:expr) => {{
        let p = HOOKS[$h as usize].real();
        if p == 0 {
            return $missing;
        }
        // SAFETY: the driver's function of this name has this signature.
        unsafe { std::mem::transmute::<usize, $f>(p) }
    }};
}

// ---------------------------------------------------------------- helpers

/// Driver functions the shim calls itself.
pub struct Helpers {
    pub ctx_get_current: CtxGetCurrentFn,
    pub ctx_set_current: CtxSetCurrentFn,
    pub ctx_get_device: CtxGetDeviceFn,
    pub event_create: EventCreateFn,
    pub event_record: EventRecordFn,
    pub event_query: EventFn,
    pub event_elapsed: EventElapsedFn,
    pub stream_is_capturing: StreamIsCapturingFn,
    pub occupancy: OccupancyFn,
    pub device_attribute: DeviceGetAttributeFn,
    pub func_get_name: Option<FuncGetNameFn>,
    /// CUDA 12.3+: names of `CUkernel` handles, which cudart launches with.
    pub kernel_get_name: Option<FuncGetNameFn>,
}

/// The helpers, once the driver is loaded; `None` before (or without) it.
pub fn helpers() -> Option<&'static Helpers> {
    static H: OnceLock<Helpers> = OnceLock::new();
    if let Some(h) = H.get() {
        return Some(h);
    }
    let f = |n: &CStr| driver_symbol(n);
    let need = [
        f(c"cuCtxGetCurrent"),
        f(c"cuCtxSetCurrent"),
        f(c"cuCtxGetDevice"),
        f(c"cuEventCreate"),
        f(c"cuEventRecord"),
        f(c"cuEventQuery"),
        f(c"cuEventElapsedTime"),
        f(c"cuStreamIsCapturing"),
        f(c"cuOccupancyMaxActiveBlocksPerMultiprocessor"),
        f(c"cuDeviceGetAttribute"),
    ];
    if need.contains(&0) {
        return None;
    }
    let name = f(c"cuFuncGetName");
    let kernel_name = f(c"cuKernelGetName");
    // SAFETY: each address is the driver function of that name and signature.
    let h = unsafe {
        Helpers {
            ctx_get_current: std::mem::transmute::<usize, CtxGetCurrentFn>(need[0]),
            ctx_set_current: std::mem::transmute::<usize, CtxSetCurrentFn>(need[1]),
            ctx_get_device: std::mem::transmute::<usize, CtxGetDeviceFn>(need[2]),
            event_create: std::mem::transmute::<usize, EventCreateFn>(need[3]),
            event_record: std::mem::transmute::<usize, EventRecordFn>(need[4]),
            event_query: std::mem::transmute::<usize, EventFn>(need[5]),
            event_elapsed: std::mem::transmute::<usize, EventElapsedFn>(need[6]),
            stream_is_capturing: std::mem::transmute::<usize, StreamIsCapturingFn>(need[7]),
            occupancy: std::mem::transmute::<usize, OccupancyFn>(need[8]),
            device_attribute: std::mem::transmute::<usize, DeviceGetAttributeFn>(need[9]),
            func_get_name: (name != 0).then(|| std::mem::transmute::<usize, FuncGetNameFn>(name)),
            kernel_get_name: (kernel_name != 0)
                .then(|| std::mem::transmute::<usize, FuncGetNameFn>(kernel_name)),
        }
    };
    Some(H.get_or_init(|| h))
}

// ---------------------------------------------------------------- registries

/// Kernel names by function handle (from `cuModuleGetFunction`).
static NAMES: ForkLock<Option<HashMap<usize, String>>> = ForkLock::new(None);
/// Primary contexts by device: (context, references).
static PRIMARY: [(AtomicUsize, AtomicI32); 16] =
    [const { (AtomicUsize::new(0), AtomicI32::new(0)) }; 16];

/// A kernel's name: as looked up, else as the driver tells, else its address.
pub fn function_name(func: usize) -> String {
    if let Some(n) = NAMES.with(|m| m.as_ref().and_then(|m| m.get(&func).cloned())) {
        return n;
    }
    let h = helpers();
    for get in [
        h.and_then(|h| h.func_get_name),
        h.and_then(|h| h.kernel_get_name),
    ]
    .into_iter()
    .flatten()
    {
        let mut p: *const c_char = std::ptr::null();
        // SAFETY: the driver writes a pointer to the function's static name
        // (or fails for a handle of the other kind).
        if unsafe { get(&mut p, func as CUfunction) } == CUDA_SUCCESS && !p.is_null() {
            // SAFETY: NUL-terminated string owned by the driver.
            return unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
        }
    }
    format!("kernel@{func:#x}")
}

// ---------------------------------------------------------------- capture tracking

const CAPTURE_SLOTS: usize = 64;
static CAPTURING: [AtomicUsize; CAPTURE_SLOTS] = [const { AtomicUsize::new(0) }; CAPTURE_SLOTS];
static CAPTURES: AtomicU32 = AtomicU32::new(0);

fn capture_started(stream: CUstream) {
    if CAPTURING.iter().any(|s| {
        s.compare_exchange(0, stream as usize, AcqRel, Relaxed)
            .is_ok()
    }) {
        sampler::captures_active(CAPTURES.fetch_add(1, AcqRel) + 1);
    }
}

fn capture_ended(stream: CUstream) {
    if CAPTURING.iter().any(|s| {
        s.compare_exchange(stream as usize, 0, AcqRel, Relaxed)
            .is_ok()
    }) {
        sampler::captures_active(CAPTURES.fetch_sub(1, AcqRel) - 1);
    }
}

#[inline]
fn capturing(stream: CUstream) -> bool {
    CAPTURES.load(Relaxed) != 0 && CAPTURING.iter().any(|s| s.load(Relaxed) == stream as usize)
}

pub fn reset_after_fork() {
    NAMES.force_unlock();
    crate::memory::force_unlock_after_fork();
    for s in &CAPTURING {
        s.store(0, Relaxed);
    }
    CAPTURES.store(0, Relaxed);
    sampler::captures_active(0);
    SHARD.with(|s| s.set(usize::MAX));
}

// ---------------------------------------------------------------- the launch path

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

#[inline]
fn shard(seg: &Segment) -> &Shard {
    let i = SHARD.with(|s| {
        let i = s.get();
        if i != usize::MAX {
            return i;
        }
        let i = NEXT_SHARD.fetch_add(1, Relaxed) % SHARDS;
        s.set(i);
        i
    });
    &seg.stats.shards[i]
}

/// Observes one launch around `call`.
#[inline(always)]
fn observe(
    stream: CUstream,
    graph: bool,
    describe: impl FnOnce() -> Sample,
    call: impl FnOnce() -> CUresult,
) -> CUresult {
    let Some(seg) = segment::get() else {
        return call();
    };
    let shard = shard(seg);
    if capturing(stream) {
        let r = call();
        if r == CUDA_SUCCESS {
            shard.captured.fetch_add(1, Relaxed);
        }
        return r;
    }
    budget::wait_turn(graph);
    let role = priority::role();
    priority::before_launch(role);
    let pending = if sampler::due() {
        sampler::begin(stream, describe())
    } else {
        None
    };
    let r = call();
    let ok = r == CUDA_SUCCESS;
    let charged = if ok {
        budget::charge_estimate(graph)
    } else {
        0
    };
    if let Some(p) = pending {
        sampler::finish(p, ok, charged);
    }
    if ok {
        priority::launched(role, seg);
        if graph {
            &shard.graph_launches
        } else {
            &shard.launches
        }
        .fetch_add(1, Relaxed);
    }
    r
}

fn kernel_sample(f: CUfunction, grid: [c_uint; 3], block: [c_uint; 3], smem: c_uint) -> Sample {
    Sample {
        func: f as usize,
        blocks: grid.iter().map(|&g| g as u64).product(),
        block_threads: block.iter().product(),
        shared_bytes: smem,
        ..Sample::default()
    }
}

macro_rules! launch_kernel {
    ($name:ident) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            f: CUfunction,
            gx: c_uint,
            gy: c_uint,
            gz: c_uint,
            bx: c_uint,
            by: c_uint,
            bz: c_uint,
            smem: c_uint,
            stream: CUstream,
            params: *mut *mut c_void,
            extra: *mut *mut c_void,
        ) -> CUresult {
            let real = real!(H::$name, LaunchKernelFn);
            observe(
                stream,
                false,
                || kernel_sample(f, [gx, gy, gz], [bx, by, bz], smem),
                || unsafe { real(f, gx, gy, gz, bx, by, bz, smem, stream, params, extra) },
            )
        }
    };
}
launch_kernel!(cuLaunchKernel);
launch_kernel!(cuLaunchKernel_ptsz);

macro_rules! launch_cooperative {
    ($name:ident) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            f: CUfunction,
            gx: c_uint,
            gy: c_uint,
            gz: c_uint,
            bx: c_uint,
            by: c_uint,
            bz: c_uint,
            smem: c_uint,
            stream: CUstream,
            params: *mut *mut c_void,
        ) -> CUresult {
            let real = real!(H::$name, LaunchCooperativeFn);
            observe(
                stream,
                false,
                || kernel_sample(f, [gx, gy, gz], [bx, by, bz], smem),
                || unsafe { real(f, gx, gy, gz, bx, by, bz, smem, stream, params) },
            )
        }
    };
}
launch_cooperative!(cuLaunchCooperativeKernel);
launch_cooperative!(cuLaunchCooperativeKernel_ptsz);

macro_rules! launch_ex {
    ($name:ident) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            config: *const LaunchConfig,
            f: CUfunction,
            params: *mut *mut c_void,
            extra: *mut *mut c_void,
        ) -> CUresult {
            let real = real!(H::$name, LaunchExFn);
            if config.is_null() {
                return unsafe { real(config, f, params, extra) };
            }
            // SAFETY: non-null config from the caller.
            let c = unsafe { &*config };
            observe(
                c.stream,
                false,
                || kernel_sample(f, c.grid, c.block, c.shared_mem_bytes),
                || unsafe { real(config, f, params, extra) },
            )
        }
    };
}
launch_ex!(cuLaunchKernelEx);
launch_ex!(cuLaunchKernelEx_ptsz);

macro_rules! graph_launch {
    ($name:ident) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(exec: *mut c_void, stream: CUstream) -> CUresult {
            let real = real!(H::$name, GraphLaunchFn);
            observe(
                stream,
                true,
                || Sample {
                    graph: true,
                    ..Sample::default()
                },
                || unsafe { real(exec, stream) },
            )
        }
    };
}
graph_launch!(cuGraphLaunch);
graph_launch!(cuGraphLaunch_ptsz);

// ---------------------------------------------------------------- synchronisation

/// Times how long the host waits in `call`.
fn timed_wait(call: impl FnOnce() -> CUresult) -> CUresult {
    let Some(seg) = segment::get() else {
        return call();
    };
    let t0 = crate::now_ns();
    let r = call();
    priority::synced();
    let dt = crate::now_ns().saturating_sub(t0);
    let st = &seg.stats;
    st.syncs.fetch_add(1, Relaxed);
    st.sync_wait_ns.fetch_add(dt, Relaxed);
    st.sync_hist[shm::bucket_of(dt)].fetch_add(1, Relaxed);
    r
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamSynchronize(stream: CUstream) -> CUresult {
    let real = real!(H::cuStreamSynchronize, StreamFn);
    timed_wait(|| unsafe { real(stream) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamSynchronize_ptsz(stream: CUstream) -> CUresult {
    let real = real!(H::cuStreamSynchronize_ptsz, StreamFn);
    timed_wait(|| unsafe { real(stream) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxSynchronize() -> CUresult {
    let real = real!(H::cuCtxSynchronize, VoidFn);
    timed_wait(|| unsafe { real() })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventSynchronize(event: CUevent) -> CUresult {
    let real = real!(H::cuEventSynchronize, EventFn);
    timed_wait(|| unsafe { real(event) })
}

// ---------------------------------------------------------------- stream capture

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamBeginCapture(stream: CUstream) -> CUresult {
    let real = real!(H::cuStreamBeginCapture, BeginCaptureV1Fn);
    let r = unsafe { real(stream) };
    if r == CUDA_SUCCESS {
        capture_started(stream);
    }
    r
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamBeginCapture_v2(stream: CUstream, mode: c_uint) -> CUresult {
    let real = real!(H::cuStreamBeginCapture_v2, BeginCaptureFn);
    let r = unsafe { real(stream, mode) };
    if r == CUDA_SUCCESS {
        capture_started(stream);
    }
    r
}

macro_rules! end_capture {
    ($name:ident) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(stream: CUstream, graph: *mut *mut c_void) -> CUresult {
            let real = real!(H::$name, EndCaptureFn);
            // The capture ends whether or not it succeeded.
            let r = unsafe { real(stream, graph) };
            capture_ended(stream);
            r
        }
    };
}
end_capture!(cuStreamEndCapture);
end_capture!(cuStreamEndCapture_ptsz);

// ---------------------------------------------------------------- modules, memory, contexts

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleGetFunction(
    f: *mut CUfunction,
    module: CUmodule,
    name: *const c_char,
) -> CUresult {
    let real = real!(H::cuModuleGetFunction, GetFunctionFn);
    let r = unsafe { real(f, module, name) };
    if r == CUDA_SUCCESS && !f.is_null() && !name.is_null() && segment::get().is_some() {
        // SAFETY: the driver succeeded, so both pointers are valid.
        let (handle, name) = unsafe {
            (
                *f as usize,
                CStr::from_ptr(name).to_string_lossy().into_owned(),
            )
        };
        NAMES.with(|m| m.get_or_insert_with(HashMap::new).insert(handle, name));
    }
    r
}

/// An allocation of `bytes` of `kind` through the limit: refused without
/// calling the driver when it would cross it; otherwise `call` makes it and
/// `made` (after a success) says its key and the bytes it took.
fn allocation(
    kind: Kind,
    bytes: u64,
    call: impl FnOnce() -> CUresult,
    made: impl FnOnce() -> Option<(u64, u64)>,
) -> CUresult {
    let Some(seg) = segment::get() else {
        return call();
    };
    if !memory::admit(seg, kind, bytes) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    let r = call();
    memory::settle(
        seg,
        kind,
        bytes,
        if r == CUDA_SUCCESS { made() } else { None },
    );
    r
}

/// A free of `key`: what it took comes back once the driver freed it.
fn freeing(key: u64, call: impl FnOnce() -> CUresult) -> CUresult {
    let r = call();
    if r == CUDA_SUCCESS
        && let Some(seg) = segment::get()
    {
        memory::released(seg, key);
    }
    r
}

/// The pointer the driver wrote, with `bytes`.
fn written<T: Copy + Into<u64>>(p: *mut T, bytes: u64) -> Option<(u64, u64)> {
    // SAFETY: after a success the driver wrote the out-pointer, if non-null.
    (!p.is_null()).then(|| (unsafe { *p }.into(), bytes))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, size: usize) -> CUresult {
    let real = real!(H::cuMemAlloc_v2, MemAllocFn);
    allocation(
        Kind::Device,
        size as u64,
        || unsafe { real(dptr, size) },
        || written(dptr, size as u64),
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFree_v2(dptr: CUdeviceptr) -> CUresult {
    let real = real!(H::cuMemFree_v2, MemFreeFn);
    freeing(dptr, || unsafe { real(dptr) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocPitch_v2(
    dptr: *mut CUdeviceptr,
    pitch: *mut usize,
    width: usize,
    height: usize,
    element: c_uint,
) -> CUresult {
    let real = real!(H::cuMemAllocPitch_v2, MemAllocPitchFn);
    // Admitted at its unpadded size; counted at what the pitch makes it.
    let bytes = (width as u64).saturating_mul(height as u64);
    allocation(
        Kind::Pitch,
        bytes,
        || unsafe { real(dptr, pitch, width, height, element) },
        || {
            // SAFETY: after a success the driver wrote the pitch.
            let rows = (!pitch.is_null()).then(|| unsafe { *pitch } as u64)?;
            written(dptr, rows.saturating_mul(height as u64))
        },
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocManaged(
    dptr: *mut CUdeviceptr,
    size: usize,
    flags: c_uint,
) -> CUresult {
    let real = real!(H::cuMemAllocManaged, MemAllocManagedFn);
    allocation(
        Kind::Managed,
        size as u64,
        || unsafe { real(dptr, size, flags) },
        || written(dptr, size as u64),
    )
}

macro_rules! alloc_async {
    ($name:ident) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            dptr: *mut CUdeviceptr,
            size: usize,
            stream: CUstream,
        ) -> CUresult {
            let real = real!(H::$name, MemAllocAsyncFn);
            allocation(
                Kind::StreamOrdered,
                size as u64,
                || unsafe { real(dptr, size, stream) },
                || written(dptr, size as u64),
            )
        }
    };
}
alloc_async!(cuMemAllocAsync);
alloc_async!(cuMemAllocAsync_ptsz);

macro_rules! alloc_from_pool {
    ($name:ident) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            dptr: *mut CUdeviceptr,
            size: usize,
            pool: *mut c_void,
            stream: CUstream,
        ) -> CUresult {
            let real = real!(H::$name, MemAllocFromPoolAsyncFn);
            allocation(
                Kind::StreamOrdered,
                size as u64,
                || unsafe { real(dptr, size, pool, stream) },
                || written(dptr, size as u64),
            )
        }
    };
}
alloc_from_pool!(cuMemAllocFromPoolAsync);
alloc_from_pool!(cuMemAllocFromPoolAsync_ptsz);

macro_rules! free_async {
    ($name:ident) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(dptr: CUdeviceptr, stream: CUstream) -> CUresult {
            let real = real!(H::$name, MemFreeAsyncFn);
            // Charged at allocation, given back when the free is enqueued,
            // whichever stream it is on.
            freeing(dptr, || unsafe { real(dptr, stream) })
        }
    };
}
free_async!(cuMemFreeAsync);
free_async!(cuMemFreeAsync_ptsz);

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemCreate(
    handle: *mut u64,
    size: usize,
    prop: *const c_void,
    flags: u64,
) -> CUresult {
    let real = real!(H::cuMemCreate, MemCreateFn);
    allocation(
        Kind::Vmm,
        size as u64,
        || unsafe { real(handle, size, prop, flags) },
        || written(handle, size as u64),
    )
}

/// A physical allocation still mapped stays in use until its last
/// mapping goes (as the driver keeps it).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemRelease(handle: u64) -> CUresult {
    let real = real!(H::cuMemRelease, MemReleaseFn);
    let r = unsafe { real(handle) };
    if r == CUDA_SUCCESS
        && let Some(seg) = segment::get()
    {
        memory::vmm_released(seg, handle);
    }
    r
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemMap(
    ptr: CUdeviceptr,
    size: usize,
    offset: usize,
    handle: u64,
    flags: u64,
) -> CUresult {
    let real = real!(H::cuMemMap, MemMapFn);
    let r = unsafe { real(ptr, size, offset, handle, flags) };
    if r == CUDA_SUCCESS {
        memory::vmm_mapped(ptr, size as u64, handle);
    }
    r
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemUnmap(ptr: CUdeviceptr, size: usize) -> CUresult {
    let real = real!(H::cuMemUnmap, MemUnmapFn);
    let r = unsafe { real(ptr, size) };
    if r == CUDA_SUCCESS
        && let Some(seg) = segment::get()
    {
        memory::vmm_unmapped(seg, ptr, size as u64);
    }
    r
}

/// A host pointer as an allocation's key.
fn host_written(p: *mut *mut c_void, bytes: u64) -> Option<(u64, u64)> {
    // SAFETY: after a success the driver wrote the out-pointer, if non-null.
    (!p.is_null()).then(|| (unsafe { *p } as u64, bytes))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemHostAlloc(
    pp: *mut *mut c_void,
    size: usize,
    flags: c_uint,
) -> CUresult {
    let real = real!(H::cuMemHostAlloc, MemHostAllocFn);
    allocation(
        Kind::Host,
        size as u64,
        || unsafe { real(pp, size, flags) },
        || host_written(pp, size as u64),
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocHost_v2(pp: *mut *mut c_void, size: usize) -> CUresult {
    let real = real!(H::cuMemAllocHost_v2, MemAllocHostFn);
    allocation(
        Kind::Host,
        size as u64,
        || unsafe { real(pp, size) },
        || host_written(pp, size as u64),
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFreeHost(p: *mut c_void) -> CUresult {
    let real = real!(H::cuMemFreeHost, MemFreeHostFn);
    freeing(p as u64, || unsafe { real(p) })
}

/// Under a limit: total is the limit, free what the limit leaves.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    let real = real!(H::cuMemGetInfo_v2, MemGetInfoFn);
    let r = unsafe { real(free, total) };
    if r == CUDA_SUCCESS
        && !free.is_null()
        && !total.is_null()
        && let Some(seg) = segment::get()
    {
        // SAFETY: the driver wrote both.
        let (f, t) = unsafe { (*free as u64, *total as u64) };
        let (f, t) = memory::info(seg, f, t);
        // SAFETY: the caller's out-pointers, checked non-null.
        unsafe {
            *free = f as usize;
            *total = t as usize;
        }
    }
    r
}

// ---------------------------------------------------------------- NVML: the process's view

/// NVML's `NVML_ERROR_UNINITIALIZED`, for a call with no real NVML behind it.
const NVML_ERROR_UNINITIALIZED: c_int = 1;

/// `nvmlMemory_t`.
#[repr(C)]
pub struct NvmlMemory {
    total: u64,
    free: u64,
    used: u64,
}

/// `nvmlMemory_v2_t`.
#[repr(C)]
pub struct NvmlMemoryV2 {
    version: c_uint,
    total: u64,
    reserved: u64,
    free: u64,
    used: u64,
}

type NvmlMemoryFn = unsafe extern "C" fn(*mut c_void, *mut NvmlMemory) -> c_int;
type NvmlMemoryV2Fn = unsafe extern "C" fn(*mut c_void, *mut NvmlMemoryV2) -> c_int;

/// The process's (total, free, used) where its NVML view is on (asked
/// first: without it, an NVML call makes no segment).
fn nvml_view() -> Option<(u64, u64, u64)> {
    if !memory::nvml_view_on() {
        return None;
    }
    memory::nvml_view(segment::get()?)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(dev: *mut c_void, m: *mut NvmlMemory) -> c_int {
    let real = real!(
        H::nvmlDeviceGetMemoryInfo,
        NvmlMemoryFn,
        NVML_ERROR_UNINITIALIZED
    );
    let r = unsafe { real(dev, m) };
    if r == 0
        && !m.is_null()
        && let Some((total, free, used)) = nvml_view()
    {
        // SAFETY: the caller's struct, filled by NVML just now.
        unsafe { *m = NvmlMemory { total, free, used } };
    }
    r
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    dev: *mut c_void,
    m: *mut NvmlMemoryV2,
) -> c_int {
    let real = real!(
        H::nvmlDeviceGetMemoryInfo_v2,
        NvmlMemoryV2Fn,
        NVML_ERROR_UNINITIALIZED
    );
    let r = unsafe { real(dev, m) };
    if r == 0
        && !m.is_null()
        && let Some((total, free, used)) = nvml_view()
    {
        // SAFETY: the caller's struct, filled by NVML just now.
        unsafe {
            (*m).total = total;
            (*m).free = free;
            (*m).used = used;
        }
    }
    r
}

/// `nvmlProcessInfo_v1_t`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct NvmlProcessV1 {
    pid: c_uint,
    used_gpu_memory: u64,
}

/// `nvmlProcessInfo_t`, what the `_v2` and `_v3` lists hold.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct NvmlProcessV2 {
    pid: c_uint,
    used_gpu_memory: u64,
    gpu_instance_id: c_uint,
    compute_instance_id: c_uint,
}

/// An entry of an NVML process list: its pid and its memory.
trait NvmlProcess: Copy + Default {
    fn pid(&self) -> u32;
    fn set_used(&mut self, bytes: u64);
}

impl NvmlProcess for NvmlProcessV1 {
    fn pid(&self) -> u32 {
        self.pid
    }
    fn set_used(&mut self, bytes: u64) {
        self.used_gpu_memory = bytes;
    }
}

impl NvmlProcess for NvmlProcessV2 {
    fn pid(&self) -> u32 {
        self.pid
    }
    fn set_used(&mut self, bytes: u64) {
        self.used_gpu_memory = bytes;
    }
}

const NVML_SUCCESS: c_int = 0;
const NVML_ERROR_INSUFFICIENT_SIZE: c_int = 7;

/// An NVML process list as the process should see it: with
/// `VAGUS_NVML_VIEW=1`, only its own entry (by any of its pids: NVML
/// reports the host's, which a process in a PID namespace cannot see, so
/// there the list is empty), with the memory its shim counts. NVML's size
/// protocol holds as for the real list (`*count` in: room, out: entries;
/// `NVML_ERROR_INSUFFICIENT_SIZE` when the room is short).
unsafe fn process_view<T: NvmlProcess>(
    real: unsafe extern "C" fn(*mut c_void, *mut c_uint, *mut T) -> c_int,
    dev: *mut c_void,
    count: *mut c_uint,
    infos: *mut T,
) -> c_int {
    if !memory::nvml_view_on() || count.is_null() {
        return unsafe { real(dev, count, infos) };
    }
    // The whole list, into a buffer of our own (it may grow between calls).
    let mut all: Vec<T> = Vec::new();
    let mut listed = None;
    for _ in 0..4 {
        let mut n = all.len() as c_uint;
        let buf = if all.is_empty() {
            std::ptr::null_mut()
        } else {
            all.as_mut_ptr()
        };
        match unsafe { real(dev, &mut n, buf) } {
            NVML_SUCCESS => {
                listed = Some((n as usize).min(all.len()));
                break;
            }
            NVML_ERROR_INSUFFICIENT_SIZE => all = vec![T::default(); n as usize + 8],
            r => return r,
        }
    }
    let Some(listed) = listed else {
        return NVML_ERROR_INSUFFICIENT_SIZE;
    };
    let mine = memory::own_pids();
    let used = segment::get().map(|s| s.stats.bytes_in_use.load(Relaxed));
    let kept: Vec<T> = all[..listed]
        .iter()
        .filter(|p| mine.contains(&p.pid()))
        .map(|p| {
            let mut p = *p;
            if let Some(b) = used.filter(|b| *b > 0) {
                p.set_used(b);
            }
            p
        })
        .collect();
    // SAFETY: count checked non-null; the caller's array holds `room`.
    let room = unsafe { *count } as usize;
    unsafe { *count = kept.len() as c_uint };
    if kept.is_empty() {
        return NVML_SUCCESS;
    }
    if infos.is_null() || room < kept.len() {
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (k, p) in kept.into_iter().enumerate() {
        unsafe { infos.add(k).write(p) };
    }
    NVML_SUCCESS
}

macro_rules! process_list_hook {
    ($name:ident, $info:ty) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            dev: *mut c_void,
            count: *mut c_uint,
            infos: *mut $info,
        ) -> c_int {
            let real = real!(
                H::$name,
                unsafe extern "C" fn(*mut c_void, *mut c_uint, *mut $info) -> c_int,
                NVML_ERROR_UNINITIALIZED
            );
            unsafe { process_view(real, dev, count, infos) }
        }
    };
}

process_list_hook!(nvmlDeviceGetComputeRunningProcesses, NvmlProcessV1);
process_list_hook!(nvmlDeviceGetComputeRunningProcesses_v2, NvmlProcessV2);
process_list_hook!(nvmlDeviceGetComputeRunningProcesses_v3, NvmlProcessV2);
process_list_hook!(nvmlDeviceGetGraphicsRunningProcesses, NvmlProcessV1);
process_list_hook!(nvmlDeviceGetGraphicsRunningProcesses_v2, NvmlProcessV2);
process_list_hook!(nvmlDeviceGetGraphicsRunningProcesses_v3, NvmlProcessV2);
process_list_hook!(nvmlDeviceGetMPSComputeRunningProcesses, NvmlProcessV1);
process_list_hook!(nvmlDeviceGetMPSComputeRunningProcesses_v2, NvmlProcessV2);
process_list_hook!(nvmlDeviceGetMPSComputeRunningProcesses_v3, NvmlProcessV2);

/// Counts a success of `r` in `counter`.
fn count_ok(
    r: CUresult,
    counter: impl FnOnce(&Segment) -> &std::sync::atomic::AtomicU64,
) -> CUresult {
    if let (CUDA_SUCCESS, Some(seg)) = (r, segment::get()) {
        counter(seg).fetch_add(1, Relaxed);
    }
    r
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoad(module: *mut CUmodule, fname: *const c_char) -> CUresult {
    let real = real!(H::cuModuleLoad, ModuleLoadFn);
    count_ok(unsafe { real(module, fname) }, |s| &s.stats.modules_loaded)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoadData(module: *mut CUmodule, image: *const c_void) -> CUresult {
    let real = real!(H::cuModuleLoadData, ModuleLoadDataFn);
    count_ok(unsafe { real(module, image) }, |s| &s.stats.modules_loaded)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoadDataEx(
    module: *mut CUmodule,
    image: *const c_void,
    n: c_uint,
    options: *mut c_int,
    values: *mut *mut c_void,
) -> CUresult {
    let real = real!(H::cuModuleLoadDataEx, ModuleLoadDataExFn);
    count_ok(unsafe { real(module, image, n, options, values) }, |s| {
        &s.stats.modules_loaded
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxCreate_v2(
    ctx: *mut CUcontext,
    flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    let real = real!(H::cuCtxCreate_v2, CtxCreateV2Fn);
    count_ok(unsafe { real(ctx, flags, dev) }, |s| {
        &s.stats.contexts_created
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxCreate_v3(
    ctx: *mut CUcontext,
    params: *mut c_void,
    n: c_int,
    flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    let real = real!(H::cuCtxCreate_v3, CtxCreateV3Fn);
    count_ok(unsafe { real(ctx, params, n, flags, dev) }, |s| {
        &s.stats.contexts_created
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxCreate_v4(
    ctx: *mut CUcontext,
    params: *mut c_void,
    flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    let real = real!(H::cuCtxCreate_v4, CtxCreateV4Fn);
    count_ok(unsafe { real(ctx, params, flags, dev) }, |s| {
        &s.stats.contexts_created
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxDestroy_v2(ctx: CUcontext) -> CUresult {
    let real = real!(H::cuCtxDestroy_v2, CtxDestroyFn);
    sampler::forget_context(ctx as usize);
    unsafe { real(ctx) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(ctx: *mut CUcontext, dev: CUdevice) -> CUresult {
    let real = real!(H::cuDevicePrimaryCtxRetain, PrimaryRetainFn);
    let r = unsafe { real(ctx, dev) };
    if r == CUDA_SUCCESS
        && !ctx.is_null()
        && let Some((c, refs)) = PRIMARY.get(dev as usize)
    {
        // SAFETY: the driver wrote the context.
        c.store(unsafe { *ctx } as usize, Relaxed);
        refs.fetch_add(1, Relaxed);
    }
    r
}

fn primary_gone(dev: CUdevice, reset: bool) {
    if let Some((c, refs)) = PRIMARY.get(dev as usize)
        && (reset || refs.fetch_sub(1, Relaxed) <= 1)
    {
        refs.store(0, Relaxed);
        sampler::forget_context(c.load(Relaxed));
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult {
    let real = real!(H::cuDevicePrimaryCtxRelease_v2, PrimaryReleaseFn);
    primary_gone(dev, false);
    unsafe { real(dev) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxReset_v2(dev: CUdevice) -> CUresult {
    let real = real!(H::cuDevicePrimaryCtxReset_v2, PrimaryReleaseFn);
    primary_gone(dev, true);
    unsafe { real(dev) }
}

// ---------------------------------------------------------------- cuGetProcAddress

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetProcAddress(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
) -> CUresult {
    let real = real!(H::cuGetProcAddress, GetProcFn);
    let r = unsafe { real(symbol, pfn, version, flags) };
    if r == CUDA_SUCCESS && !pfn.is_null() {
        // SAFETY: the driver wrote the out-pointer.
        unsafe {
            if !(*pfn).is_null() {
                *pfn = substitute_by_pointer(*pfn);
            }
        }
    }
    r
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetProcAddress_v2(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
    status: *mut c_int,
) -> CUresult {
    let real = real!(H::cuGetProcAddress_v2, GetProcV2Fn);
    let r = unsafe { real(symbol, pfn, version, flags, status) };
    if r == CUDA_SUCCESS && !pfn.is_null() {
        // SAFETY: the driver wrote the out-pointer.
        unsafe {
            if !(*pfn).is_null() {
                *pfn = substitute_by_pointer(*pfn);
            }
        }
    }
    r
}
