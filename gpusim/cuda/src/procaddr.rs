//! `cuGetProcAddress`: how cudart finds the driver's entry points. A request
//! names a base symbol ("cuCtxCreate"), the CUDA version the caller was built
//! for and stream flags; the answer is the newest variant introduced at or
//! before that version, as the real driver gives it.

use crate::result::*;
use crate::*;
use std::collections::HashMap;
use std::sync::OnceLock;

pub const CU_GET_PROC_ADDRESS_SUCCESS: c_int = 0;
pub const CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND: c_int = 1;
pub const CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT: c_int = 2;

type Variants = Vec<(c_int, usize)>;

macro_rules! entries {
    ($m:ident; $($base:literal => [$(($ver:expr, $f:ident)),+ $(,)?]),* $(,)?) => {
        $( $m.insert($base, vec![$(($ver, $f as *const () as usize)),+]); )*
    };
}

fn table() -> &'static HashMap<&'static str, Variants> {
    static T: OnceLock<HashMap<&'static str, Variants>> = OnceLock::new();
    T.get_or_init(|| {
        let mut m: HashMap<&'static str, Variants> = HashMap::new();
        entries!(m;
            "cuInit" => [(2000, cuInit)],
            "cuDriverGetVersion" => [(2020, cuDriverGetVersion)],
            "cuGetErrorName" => [(6000, cuGetErrorName)],
            "cuGetErrorString" => [(6000, cuGetErrorString)],
            "cuGetExportTable" => [(3000, cuGetExportTable)],
            "cuGetProcAddress" => [(11030, cuGetProcAddress), (12000, cuGetProcAddress_v2)],
            "cuDeviceGet" => [(2000, cuDeviceGet)],
            "cuDeviceGetCount" => [(2000, cuDeviceGetCount)],
            "cuDeviceGetName" => [(2000, cuDeviceGetName)],
            "cuDeviceGetUuid" => [(9020, cuDeviceGetUuid), (11040, cuDeviceGetUuid_v2)],
            "cuDeviceTotalMem" => [(3020, cuDeviceTotalMem_v2)],
            "cuDeviceGetAttribute" => [(2000, cuDeviceGetAttribute)],
            "cuDeviceGetPCIBusId" => [(4010, cuDeviceGetPCIBusId)],
            "cuDevicePrimaryCtxRetain" => [(7000, cuDevicePrimaryCtxRetain)],
            "cuDevicePrimaryCtxRelease" => [(7000, cuDevicePrimaryCtxRelease), (11000, cuDevicePrimaryCtxRelease_v2)],
            "cuDevicePrimaryCtxReset" => [(7000, cuDevicePrimaryCtxReset), (11000, cuDevicePrimaryCtxReset_v2)],
            "cuDevicePrimaryCtxSetFlags" => [(7000, cuDevicePrimaryCtxSetFlags), (11000, cuDevicePrimaryCtxSetFlags_v2)],
            "cuDevicePrimaryCtxGetState" => [(7000, cuDevicePrimaryCtxGetState)],
            "cuCtxCreate" => [(3020, cuCtxCreate_v2), (11040, cuCtxCreate_v3), (12050, cuCtxCreate_v4)],
            "cuCtxDestroy" => [(2000, cuCtxDestroy), (4000, cuCtxDestroy_v2)],
            "cuCtxGetCurrent" => [(4000, cuCtxGetCurrent)],
            "cuCtxSetCurrent" => [(4000, cuCtxSetCurrent)],
            "cuCtxPushCurrent" => [(2000, cuCtxPushCurrent), (4000, cuCtxPushCurrent_v2)],
            "cuCtxPopCurrent" => [(2000, cuCtxPopCurrent), (4000, cuCtxPopCurrent_v2)],
            "cuCtxGetDevice" => [(2000, cuCtxGetDevice), (13000, cuCtxGetDevice_v2)],
            "cuCtxGetFlags" => [(7000, cuCtxGetFlags)],
            "cuCtxGetStreamPriorityRange" => [(5050, cuCtxGetStreamPriorityRange)],
            "cuCtxSynchronize" => [(2000, cuCtxSynchronize), (13000, cuCtxSynchronize_v2)],
            "cuModuleLoad" => [(2000, cuModuleLoad)],
            "cuModuleLoadData" => [(2000, cuModuleLoadData)],
            "cuModuleLoadDataEx" => [(2010, cuModuleLoadDataEx)],
            "cuModuleUnload" => [(2000, cuModuleUnload)],
            "cuModuleGetFunction" => [(2000, cuModuleGetFunction)],
            "cuFuncGetAttribute" => [(2020, cuFuncGetAttribute)],
            "cuFuncSetAttribute" => [(9000, cuFuncSetAttribute)],
            "cuFuncGetName" => [(12030, cuFuncGetName)],
            "cuOccupancyMaxActiveBlocksPerMultiprocessor" => [(6050, cuOccupancyMaxActiveBlocksPerMultiprocessor)],
            "cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags" => [(7000, cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags)],
            "cuMemGetInfo" => [(3020, cuMemGetInfo_v2)],
            "cuMemAlloc" => [(3020, cuMemAlloc_v2)],
            "cuMemFree" => [(3020, cuMemFree_v2)],
            "cuMemAllocPitch" => [(3020, cuMemAllocPitch_v2)],
            "cuMemAllocManaged" => [(6000, cuMemAllocManaged)],
            "cuMemAllocAsync" => [(11020, cuMemAllocAsync)],
            "cuMemAllocFromPoolAsync" => [(11020, cuMemAllocFromPoolAsync)],
            "cuMemFreeAsync" => [(11020, cuMemFreeAsync)],
            "cuDeviceGetDefaultMemPool" => [(11020, cuDeviceGetDefaultMemPool)],
            "cuMemGetAllocationGranularity" => [(10020, cuMemGetAllocationGranularity)],
            "cuMemCreate" => [(10020, cuMemCreate)],
            "cuMemRelease" => [(10020, cuMemRelease)],
            "cuMemAddressReserve" => [(10020, cuMemAddressReserve)],
            "cuMemAddressFree" => [(10020, cuMemAddressFree)],
            "cuMemMap" => [(10020, cuMemMap)],
            "cuMemUnmap" => [(10020, cuMemUnmap)],
            "cuMemSetAccess" => [(10020, cuMemSetAccess)],
            "cuMemHostAlloc" => [(2020, cuMemHostAlloc)],
            "cuMemAllocHost" => [(3020, cuMemAllocHost_v2)],
            "cuMemFreeHost" => [(2000, cuMemFreeHost)],
            "cuMemcpyHtoD" => [(3020, cuMemcpyHtoD_v2)],
            "cuMemcpyDtoH" => [(3020, cuMemcpyDtoH_v2)],
            "cuMemcpyDtoD" => [(3020, cuMemcpyDtoD_v2)],
            "cuMemcpyHtoDAsync" => [(3020, cuMemcpyHtoDAsync_v2)],
            "cuMemcpyDtoHAsync" => [(3020, cuMemcpyDtoHAsync_v2)],
            "cuMemcpyDtoDAsync" => [(3020, cuMemcpyDtoDAsync_v2)],
            "cuMemsetD8" => [(3020, cuMemsetD8_v2)],
            "cuMemsetD8Async" => [(3020, cuMemsetD8Async)],
            "cuStreamCreate" => [(2000, cuStreamCreate)],
            "cuStreamCreateWithPriority" => [(5050, cuStreamCreateWithPriority)],
            "cuStreamGetPriority" => [(5050, cuStreamGetPriority)],
            "cuStreamDestroy" => [(2000, cuStreamDestroy), (4000, cuStreamDestroy_v2)],
            "cuStreamSynchronize" => [(2000, cuStreamSynchronize)],
            "cuStreamQuery" => [(2000, cuStreamQuery)],
            "cuStreamWaitEvent" => [(3020, cuStreamWaitEvent)],
            "cuStreamBeginCapture" => [(10000, cuStreamBeginCapture), (10010, cuStreamBeginCapture_v2)],
            "cuStreamEndCapture" => [(10000, cuStreamEndCapture)],
            "cuStreamIsCapturing" => [(10000, cuStreamIsCapturing)],
            "cuEventCreate" => [(2000, cuEventCreate)],
            "cuEventRecord" => [(2000, cuEventRecord)],
            "cuEventRecordWithFlags" => [(11010, cuEventRecordWithFlags)],
            "cuEventQuery" => [(2000, cuEventQuery)],
            "cuEventSynchronize" => [(2000, cuEventSynchronize)],
            "cuEventElapsedTime" => [(2000, cuEventElapsedTime), (12080, cuEventElapsedTime_v2)],
            "cuEventDestroy" => [(2000, cuEventDestroy), (4000, cuEventDestroy_v2)],
            "cuLaunchKernel" => [(4000, cuLaunchKernel)],
            "cuLaunchKernelEx" => [(11060, cuLaunchKernelEx)],
            "cuLaunchCooperativeKernel" => [(9000, cuLaunchCooperativeKernel)],
            "cuGraphInstantiate" => [(10000, cuGraphInstantiate_v2), (12000, cuGraphInstantiateWithFlags)],
            "cuGraphInstantiateWithFlags" => [(11040, cuGraphInstantiateWithFlags)],
            "cuGraphLaunch" => [(10000, cuGraphLaunch)],
            "cuGraphDestroy" => [(10000, cuGraphDestroy)],
            "cuGraphExecDestroy" => [(10000, cuGraphExecDestroy)],
        );
        m
    })
}

/// Resolves `symbol` for a caller built against CUDA `version`; writes the
/// pointer (NULL when there is none) and returns the result code with the
/// query status. As on NVIDIA's driver (seen with 580.159), a symbol that
/// does not resolve is still CUDA_SUCCESS with a NULL pointer; the status says
/// whether it is unknown or newer than `version`.
pub fn lookup(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
) -> (CUresult, c_int) {
    if symbol.is_null() || pfn.is_null() || flags > 2 || version > DRIVER_VERSION {
        return (
            CUDA_ERROR_INVALID_VALUE,
            CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND,
        );
    }
    // SAFETY: a NUL-terminated symbol name from the caller.
    let name = unsafe { CStr::from_ptr(symbol) }.to_str().unwrap_or("");
    // SAFETY: pfn checked non-null.
    unsafe { *pfn = std::ptr::null_mut() };
    let Some(variants) = table().get(name) else {
        return (CUDA_SUCCESS, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);
    };
    match variants.iter().rev().find(|(v, _)| *v <= version) {
        Some(&(_, f)) => {
            // SAFETY: as above.
            unsafe { *pfn = f as *mut c_void };
            (CUDA_SUCCESS, CU_GET_PROC_ADDRESS_SUCCESS)
        }
        None => (CUDA_SUCCESS, CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT),
    }
}
