//! The GPU side of the server: the CUDA driver API (cudarc, loaded at run
//! time, so the same binary runs on NVIDIA's driver and on gpusim), the
//! model's weights held as device memory, and each iteration run as one
//! busy-wait kernel per transformer layer ([`LAYERS`], Llama-3-8B's 32),
//! launched back to back and synchronised once: a fixed grid, one full wave
//! of an H100 (132 SMs × 8 blocks of 256 threads, what the cost model's
//! defaults describe), each block spinning its layer's share of the
//! iteration's time. A real server's iteration is many kernels, not one:
//! other processes' kernels (and the shim's budget) come between them. A real model's grids are sized by
//! the problem, not by the SMs a process may use, so on a share of the
//! device (an MPS client limited to some SMs) the same grid takes more
//! waves, and longer, as a real model's kernels do.

use cudarc::driver::sys;
use gpusim::ptx::BUSY_WAIT_PTX;
use std::ffi::{CStr, CString, c_void};

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error(
        "no CUDA driver found (libcuda.so / libcuda.so.1 not loadable); to run on gpusim, set LD_LIBRARY_PATH=$(vagus gpusim libdir)"
    )]
    NoDriver,
    #[error("{what} failed: {name}")]
    Call { what: String, name: String },
}

/// A driver call's result as an error naming the call.
pub fn check(r: sys::CUresult, what: &str) -> Result<(), GpuError> {
    if r == sys::CUresult::CUDA_SUCCESS {
        return Ok(());
    }
    let mut name: *const std::ffi::c_char = std::ptr::null();
    // SAFETY: cuGetErrorName writes a static string pointer or NULL.
    unsafe { sys::cuGetErrorName(r, &mut name) };
    let name = if name.is_null() {
        format!("{r:?}")
    } else {
        // SAFETY: the driver returns a NUL-terminated static string.
        unsafe { CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned()
    };
    Err(GpuError::Call {
        what: what.to_string(),
        name,
    })
}

/// What the device is.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeviceInfo {
    pub name: String,
    pub sms: u32,
    pub clock_mhz: u32,
    pub driver_version: i32,
}

/// Loads the driver, opens `device` and makes its primary context current
/// on this thread: the context and what the device is.
pub fn open_device(device: i32) -> Result<(sys::CUcontext, DeviceInfo), GpuError> {
    // SAFETY: only probes whether a driver library can be opened.
    if !unsafe { sys::is_culib_present() } {
        return Err(GpuError::NoDriver);
    }
    // SAFETY: plain driver API calls with out-pointers we own.
    unsafe {
        check(sys::cuInit(0), "cuInit")?;
        let mut version = 0;
        check(sys::cuDriverGetVersion(&mut version), "cuDriverGetVersion")?;
        let mut dev = 0;
        check(
            sys::cuDeviceGet(&mut dev, device),
            &format!("cuDeviceGet({device})"),
        )?;
        let mut name = [0 as std::ffi::c_char; 128];
        check(
            sys::cuDeviceGetName(name.as_mut_ptr(), 128, dev),
            "cuDeviceGetName",
        )?;
        let attr = |a, what: &str| -> Result<i32, GpuError> {
            let mut v = 0;
            check(sys::cuDeviceGetAttribute(&mut v, a, dev), what)?;
            Ok(v)
        };
        use sys::CUdevice_attribute as A;
        let sms = attr(
            A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            "cuDeviceGetAttribute(MULTIPROCESSOR_COUNT)",
        )?;
        let clock_khz = attr(
            A::CU_DEVICE_ATTRIBUTE_CLOCK_RATE,
            "cuDeviceGetAttribute(CLOCK_RATE)",
        )?;
        let mut ctx = std::ptr::null_mut();
        check(
            sys::cuDevicePrimaryCtxRetain(&mut ctx, dev),
            "cuDevicePrimaryCtxRetain",
        )?;
        check(sys::cuCtxSetCurrent(ctx), "cuCtxSetCurrent")?;
        let info = DeviceInfo {
            name: CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned(),
            sms: sms.max(0) as u32,
            clock_mhz: (clock_khz.max(1000) / 1000) as u32,
            driver_version: version,
        };
        Ok((ctx, info))
    }
}

/// One device, with the model's weights on it and the kernel loaded.
pub struct Gpu {
    ctx: sys::CUcontext,
    func: sys::CUfunction,
    stream: sys::CUstream,
    pub info: DeviceInfo,
}

// SAFETY: the context, function and stream are used by one thread at a
// time (the engine's); CUDA handles may move between threads.
unsafe impl Send for Gpu {}

const BLOCK: u32 = 256;
/// One full wave of 256-thread blocks on an H100 (132 SMs × 8).
const GRID: u32 = 132 * 8;
/// Kernels an iteration is launched as: one per transformer layer.
pub const LAYERS: u32 = 32;

impl Gpu {
    /// Opens `device`, loads the kernel and holds `weights_mib` of device
    /// memory like a model's weights.
    pub fn open(device: i32, weights_mib: u64) -> Result<Gpu, GpuError> {
        let (ctx, info) = open_device(device)?;
        // SAFETY: plain driver API calls with out-pointers we own, in the
        // context `open_device` made current.
        unsafe {
            let ptx = CString::new(BUSY_WAIT_PTX).expect("the PTX has no NUL");
            let mut module = std::ptr::null_mut();
            check(
                sys::cuModuleLoadData(&mut module, ptx.as_ptr() as *const c_void),
                "cuModuleLoadData",
            )?;
            let mut func = std::ptr::null_mut();
            check(
                sys::cuModuleGetFunction(&mut func, module, c"vagus_busy_wait".as_ptr()),
                "cuModuleGetFunction(vagus_busy_wait)",
            )?;
            if weights_mib > 0 {
                let mut weights = 0;
                check(
                    sys::cuMemAlloc_v2(&mut weights, (weights_mib << 20) as usize),
                    &format!("cuMemAlloc({weights_mib} MiB of weights)"),
                )?;
            }
            let mut stream = std::ptr::null_mut();
            check(sys::cuStreamCreate(&mut stream, 1), "cuStreamCreate")?;
            Ok(Gpu {
                ctx,
                func,
                stream,
                info,
            })
        }
    }

    /// Runs `us` microseconds of work (at the whole device's speed), a
    /// kernel per layer, and waits for it.
    pub fn run(&self, us: f64) -> Result<(), GpuError> {
        let mut cycles = (us.max(1.0) / LAYERS as f64 * self.info.clock_mhz as f64).max(1.0) as u64;
        let mut params = [&mut cycles as *mut u64 as *mut c_void];
        // SAFETY: handles created in `open`; `params` outlives the launches,
        // which are synchronised before returning.
        unsafe {
            check(sys::cuCtxSetCurrent(self.ctx), "cuCtxSetCurrent")?;
            for _ in 0..LAYERS {
                check(
                    sys::cuLaunchKernel(
                        self.func,
                        GRID,
                        1,
                        1,
                        BLOCK,
                        1,
                        1,
                        0,
                        self.stream,
                        params.as_mut_ptr(),
                        std::ptr::null_mut(),
                    ),
                    "cuLaunchKernel",
                )?;
            }
            check(sys::cuStreamSynchronize(self.stream), "cuStreamSynchronize")
        }
    }
}
