//! The GPU side of the server: the CUDA driver API (cudarc, loaded at run
//! time, so the same binary runs on NVIDIA's driver and on gpusim), the
//! model's weights held as device memory, and each iteration run as
//! kernels per transformer layer ([`LAYERS`], Llama-3-8B's 32), launched
//! back to back and synchronised once: per layer, a memory-bound kernel
//! that reads its share of the iteration's bytes from the weights
//! (`kernels/stream.ptx`) and, when the iteration prefills, a busy-wait
//! kernel spinning its share of the prompt's compute. Each is a fixed grid,
//! one full wave of an H100 (132 SMs × 8 blocks of 256 threads, what the
//! cost model's defaults describe). A real server's iteration is many kernels, not one:
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
    /// Peak memory bandwidth, GB/s: 2 × memory clock × bus width (as CUDA's
    /// bandwidthTest sample computes it).
    pub memory_gbps: f64,
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
        let memory_khz = attr(
            A::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE,
            "cuDeviceGetAttribute(MEMORY_CLOCK_RATE)",
        )?;
        let bus_bits = attr(
            A::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH,
            "cuDeviceGetAttribute(GLOBAL_MEMORY_BUS_WIDTH)",
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
            memory_gbps: 2.0 * memory_khz.max(0) as f64 * 1e3 * (bus_bits.max(0) / 8) as f64 / 1e9,
            driver_version: version,
        };
        Ok((ctx, info))
    }
}

/// One device, with the model's weights on it and the kernels loaded.
pub struct Gpu {
    ctx: sys::CUcontext,
    spin: sys::CUfunction,
    stream_kernel: sys::CUfunction,
    stream: sys::CUstream,
    /// The weights, read round and round by the memory-bound kernel.
    weights: sys::CUdeviceptr,
    weight_words: u64,
    /// Bytes this device moves in a microsecond at the cost model's
    /// bandwidth efficiency.
    bytes_per_us: f64,
    pub info: DeviceInfo,
}

// SAFETY: the handles are plain driver handles used from one thread at a
// time (the engine's); CUDA handles may move between threads.
unsafe impl Send for Gpu {}

const BLOCK: u32 = 256;
/// One full wave of 256-thread blocks on an H100 (132 SMs × 8).
const GRID: u32 = 132 * 8;
/// Kernels an iteration is launched as: one per transformer layer.
pub const LAYERS: u32 = 32;
/// The memory-bound kernel: spins parameter 0's cycles, then reads
/// parameter 1's bytes from a buffer (parameters 2 and 3: its address and
/// its size in 8-byte words).
const STREAM_PTX: &str = include_str!("../kernels/stream.ptx");

impl Gpu {
    /// Opens `device`, loads the kernels and holds `weights_mib` of device
    /// memory like a model's weights (at least 1 MiB, for the memory-bound
    /// kernel to read); `bandwidth_eff` is the cost model's fraction of the
    /// peak bandwidth an iteration's reads reach.
    pub fn open(device: i32, weights_mib: u64, bandwidth_eff: f64) -> Result<Gpu, GpuError> {
        let (ctx, info) = open_device(device)?;
        let load = |ptx: &str, name: &CStr| -> Result<sys::CUfunction, GpuError> {
            let ptx = CString::new(ptx).expect("the PTX has no NUL");
            // SAFETY: plain driver API calls with out-pointers we own, in the
            // context `open_device` made current.
            unsafe {
                let mut module = std::ptr::null_mut();
                check(
                    sys::cuModuleLoadData(&mut module, ptx.as_ptr() as *const c_void),
                    "cuModuleLoadData",
                )?;
                let mut func = std::ptr::null_mut();
                check(
                    sys::cuModuleGetFunction(&mut func, module, name.as_ptr()),
                    &format!("cuModuleGetFunction({})", name.to_string_lossy()),
                )?;
                Ok(func)
            }
        };
        let spin = load(BUSY_WAIT_PTX, c"vagus_busy_wait")?;
        let stream_kernel = load(STREAM_PTX, c"vagus_stream")?;
        let weights_mib = weights_mib.max(1);
        // SAFETY: as above.
        unsafe {
            let mut weights = 0;
            check(
                sys::cuMemAlloc_v2(&mut weights, (weights_mib << 20) as usize),
                &format!("cuMemAlloc({weights_mib} MiB of weights)"),
            )?;
            let mut stream = std::ptr::null_mut();
            check(sys::cuStreamCreate(&mut stream, 1), "cuStreamCreate")?;
            Ok(Gpu {
                ctx,
                spin,
                stream_kernel,
                stream,
                weights,
                weight_words: (weights_mib << 20) / 8,
                bytes_per_us: info.memory_gbps * 1e3 * bandwidth_eff,
                info,
            })
        }
    }

    /// Runs an iteration, `compute_us` of compute-bound work and `memory_us`
    /// of memory-bound work at the whole device's speed as the cost model
    /// sees it, a kernel of each per layer, and waits for it. The memory
    /// kernels move what this device moves in `memory_us` at the cost
    /// model's efficiency: the model's own bytes when the model's bandwidth
    /// is the device's.
    pub fn run(&self, compute_us: f64, memory_us: f64) -> Result<(), GpuError> {
        let per_layer = |us: f64| us / LAYERS as f64;
        let mut cycles = (per_layer(compute_us) * self.info.clock_mhz as f64).max(1.0) as u64;
        let mut bytes = (per_layer(memory_us) * self.bytes_per_us).round() as u64;
        let (mut zero, mut buf, mut words) = (0u64, self.weights, self.weight_words);
        let mut spin_params = [&mut cycles as *mut u64 as *mut c_void];
        let mut stream_params = [
            &mut zero as *mut u64 as *mut c_void,
            &mut bytes as *mut u64 as *mut c_void,
            &mut buf as *mut sys::CUdeviceptr as *mut c_void,
            &mut words as *mut u64 as *mut c_void,
        ];
        let mut kernels: Vec<(sys::CUfunction, *mut *mut c_void)> = Vec::with_capacity(2);
        if memory_us > 0.0 {
            kernels.push((self.stream_kernel, stream_params.as_mut_ptr()));
        }
        if compute_us > 0.0 || memory_us <= 0.0 {
            kernels.push((self.spin, spin_params.as_mut_ptr()));
        }
        // SAFETY: handles created in `open`; the parameters outlive the
        // launches, which are synchronised before returning.
        unsafe {
            check(sys::cuCtxSetCurrent(self.ctx), "cuCtxSetCurrent")?;
            for _ in 0..LAYERS {
                for &(func, params) in &kernels {
                    check(
                        sys::cuLaunchKernel(
                            func,
                            GRID,
                            1,
                            1,
                            BLOCK,
                            1,
                            1,
                            0,
                            self.stream,
                            params,
                            std::ptr::null_mut(),
                        ),
                        "cuLaunchKernel",
                    )?;
                }
            }
            check(sys::cuStreamSynchronize(self.stream), "cuStreamSynchronize")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpusim::ptx::{BlockCost, MemoryCost, Module};

    #[test]
    fn the_stream_kernel_tells_gpusim_its_cycles_and_bytes() {
        let m = Module::parse(STREAM_PTX.as_bytes()).unwrap();
        let k = m.kernel("vagus_stream").unwrap();
        assert_eq!(k.params.len(), 4);
        assert!(k.params.iter().all(|p| p.size == 8 && p.integer));
        assert_eq!(k.cost, BlockCost::CyclesParam(0));
        assert_eq!(k.memory, Some(MemoryCost::BytesParam(1)));
    }
}
