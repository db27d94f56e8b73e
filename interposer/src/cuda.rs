//! The few CUDA driver types and codes the shim needs (no headers).

use std::ffi::{c_char, c_int, c_uint, c_void};

pub type CUresult = c_int;
pub type CUfunction = *mut c_void;
pub type CUstream = *mut c_void;
pub type CUcontext = *mut c_void;
pub type CUevent = *mut c_void;
pub type CUmodule = *mut c_void;
pub type CUdevice = c_int;
pub type CUdeviceptr = u64;

pub const CUDA_SUCCESS: CUresult = 0;
pub const CUDA_ERROR_OUT_OF_MEMORY: CUresult = 2;
pub const CUDA_ERROR_NOT_INITIALIZED: CUresult = 3;
pub const CUDA_ERROR_NOT_READY: CUresult = 600;

pub const ATTR_MULTIPROCESSOR_COUNT: c_int = 16;
pub const ATTR_MAX_THREADS_PER_MULTIPROCESSOR: c_int = 39;

/// `CUlaunchConfig`.
#[repr(C)]
pub struct LaunchConfig {
    pub grid: [c_uint; 3],
    pub block: [c_uint; 3],
    pub shared_mem_bytes: c_uint,
    pub stream: CUstream,
    pub attrs: *mut c_void,
    pub num_attrs: c_uint,
}

pub type LaunchKernelFn = unsafe extern "C" fn(
    CUfunction,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    CUstream,
    *mut *mut c_void,
    *mut *mut c_void,
) -> CUresult;
pub type LaunchCooperativeFn = unsafe extern "C" fn(
    CUfunction,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    CUstream,
    *mut *mut c_void,
) -> CUresult;
pub type LaunchExFn = unsafe extern "C" fn(
    *const LaunchConfig,
    CUfunction,
    *mut *mut c_void,
    *mut *mut c_void,
) -> CUresult;
pub type GraphLaunchFn = unsafe extern "C" fn(*mut c_void, CUstream) -> CUresult;
pub type StreamFn = unsafe extern "C" fn(CUstream) -> CUresult;
pub type VoidFn = unsafe extern "C" fn() -> CUresult;
pub type EventFn = unsafe extern "C" fn(CUevent) -> CUresult;
pub type BeginCaptureFn = unsafe extern "C" fn(CUstream, c_uint) -> CUresult;
pub type BeginCaptureV1Fn = unsafe extern "C" fn(CUstream) -> CUresult;
pub type EndCaptureFn = unsafe extern "C" fn(CUstream, *mut *mut c_void) -> CUresult;
pub type GetFunctionFn = unsafe extern "C" fn(*mut CUfunction, CUmodule, *const c_char) -> CUresult;
pub type MemAllocFn = unsafe extern "C" fn(*mut CUdeviceptr, usize) -> CUresult;
pub type MemFreeFn = unsafe extern "C" fn(CUdeviceptr) -> CUresult;
pub type MemAllocPitchFn =
    unsafe extern "C" fn(*mut CUdeviceptr, *mut usize, usize, usize, c_uint) -> CUresult;
pub type MemAllocManagedFn = unsafe extern "C" fn(*mut CUdeviceptr, usize, c_uint) -> CUresult;
pub type MemAllocAsyncFn = unsafe extern "C" fn(*mut CUdeviceptr, usize, CUstream) -> CUresult;
pub type MemAllocFromPoolAsyncFn =
    unsafe extern "C" fn(*mut CUdeviceptr, usize, *mut c_void, CUstream) -> CUresult;
pub type MemFreeAsyncFn = unsafe extern "C" fn(CUdeviceptr, CUstream) -> CUresult;
pub type MemCreateFn = unsafe extern "C" fn(*mut u64, usize, *const c_void, u64) -> CUresult;
pub type MemReleaseFn = unsafe extern "C" fn(u64) -> CUresult;
pub type MemMapFn = unsafe extern "C" fn(CUdeviceptr, usize, usize, u64, u64) -> CUresult;
pub type MemUnmapFn = unsafe extern "C" fn(CUdeviceptr, usize) -> CUresult;
pub type MemHostAllocFn = unsafe extern "C" fn(*mut *mut c_void, usize, c_uint) -> CUresult;
pub type MemAllocHostFn = unsafe extern "C" fn(*mut *mut c_void, usize) -> CUresult;
pub type MemFreeHostFn = unsafe extern "C" fn(*mut c_void) -> CUresult;
pub type MemGetInfoFn = unsafe extern "C" fn(*mut usize, *mut usize) -> CUresult;
pub type CtxDestroyFn = unsafe extern "C" fn(CUcontext) -> CUresult;
pub type PrimaryRetainFn = unsafe extern "C" fn(*mut CUcontext, CUdevice) -> CUresult;
pub type PrimaryReleaseFn = unsafe extern "C" fn(CUdevice) -> CUresult;
pub type GetProcFn = unsafe extern "C" fn(*const c_char, *mut *mut c_void, c_int, u64) -> CUresult;
pub type GetProcV2Fn =
    unsafe extern "C" fn(*const c_char, *mut *mut c_void, c_int, u64, *mut c_int) -> CUresult;

// Helpers the shim calls itself (resolved from the loaded driver).
pub type CtxGetCurrentFn = unsafe extern "C" fn(*mut CUcontext) -> CUresult;
pub type CtxSetCurrentFn = unsafe extern "C" fn(CUcontext) -> CUresult;
pub type CtxGetDeviceFn = unsafe extern "C" fn(*mut CUdevice) -> CUresult;
pub type EventCreateFn = unsafe extern "C" fn(*mut CUevent, c_uint) -> CUresult;
pub type EventRecordFn = unsafe extern "C" fn(CUevent, CUstream) -> CUresult;
pub type EventElapsedFn = unsafe extern "C" fn(*mut f32, CUevent, CUevent) -> CUresult;
pub type StreamIsCapturingFn = unsafe extern "C" fn(CUstream, *mut c_int) -> CUresult;
pub type OccupancyFn = unsafe extern "C" fn(*mut c_int, CUfunction, c_int, usize) -> CUresult;
pub type DeviceGetAttributeFn = unsafe extern "C" fn(*mut c_int, c_int, CUdevice) -> CUresult;
pub type FuncGetNameFn = unsafe extern "C" fn(*mut *const c_char, CUfunction) -> CUresult;
pub type CtxCreateV2Fn = unsafe extern "C" fn(*mut CUcontext, c_uint, CUdevice) -> CUresult;
pub type CtxCreateV3Fn =
    unsafe extern "C" fn(*mut CUcontext, *mut c_void, c_int, c_uint, CUdevice) -> CUresult;
pub type CtxCreateV4Fn =
    unsafe extern "C" fn(*mut CUcontext, *mut c_void, c_uint, CUdevice) -> CUresult;
pub type ModuleLoadDataFn = unsafe extern "C" fn(*mut CUmodule, *const c_void) -> CUresult;
pub type ModuleLoadDataExFn = unsafe extern "C" fn(
    *mut CUmodule,
    *const c_void,
    c_uint,
    *mut c_int,
    *mut *mut c_void,
) -> CUresult;
pub type ModuleLoadFn = unsafe extern "C" fn(*mut CUmodule, *const c_char) -> CUresult;
