//! gpusim's `libcuda.so.1`: the CUDA driver API subset that real clients use,
//! on a simulated device. Every entry point catches panics and checks its
//! handles and pointers, so bad input returns the error code the real driver
//! returns and never crashes the host process.
#![allow(non_snake_case, clippy::missing_safety_doc, clippy::too_many_arguments)]

mod driver;
mod procaddr;
mod result;

use driver::*;
use gpusim::DeviceConfig;
use gpusim::clock::{now_ns, sleep_until};
use gpusim::occupancy::{self, BlockDemand};
use gpusim::ptx::{Module, PtxError};
use result::*;
use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

pub type CUdevice = c_int;
pub type CUdeviceptr = u64;
pub type Handle = *mut c_void;

/// Runs an entry point's body: a panic becomes CUDA_ERROR_UNKNOWN.
fn guard(f: impl FnOnce() -> Result<(), CUresult>) -> CUresult {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => CUDA_SUCCESS,
        Ok(Err(e)) => e,
        Err(_) => CUDA_ERROR_UNKNOWN,
    }
}

/// Writes through an out-pointer, or fails with CUDA_ERROR_INVALID_VALUE if it is NULL.
unsafe fn out<T>(p: *mut T, v: T) -> Result<(), CUresult> {
    if p.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: non-null out-pointer supplied by the caller.
    unsafe { p.write(v) };
    Ok(())
}

fn h(p: Handle) -> u64 {
    p as u64
}
fn p(h: u64) -> Handle {
    h as Handle
}

// ---------------------------------------------------------------- init, version, errors

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuInit(flags: c_uint) -> CUresult {
    guard(|| {
        if flags != 0 {
            Err(CUDA_ERROR_INVALID_VALUE)
        } else {
            match init() {
                0 => Ok(()),
                e => Err(e),
            }
        }
    })
}

/// The CUDA version this driver implements (13.0).
pub const DRIVER_VERSION: c_int = 13000;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDriverGetVersion(v: *mut c_int) -> CUresult {
    guard(|| unsafe { out(v, DRIVER_VERSION) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetErrorName(code: CUresult, s: *mut *const c_char) -> CUresult {
    guard(|| match describe(code) {
        Some((name, _)) => unsafe { out(s, name.as_ptr() as *const c_char) },
        None => {
            let _ = unsafe { out(s, std::ptr::null()) };
            Err(CUDA_ERROR_INVALID_VALUE)
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetErrorString(code: CUresult, s: *mut *const c_char) -> CUresult {
    guard(|| match describe(code) {
        Some((_, text)) => unsafe { out(s, text.as_ptr() as *const c_char) },
        None => {
            let _ = unsafe { out(s, std::ptr::null()) };
            Err(CUDA_ERROR_INVALID_VALUE)
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetExportTable(
    _table: *mut *const c_void,
    _id: *const c_void,
) -> CUresult {
    CUDA_ERROR_NOT_SUPPORTED
}

// ---------------------------------------------------------------- devices

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetCount(n: *mut c_int) -> CUresult {
    guard(|| unsafe { out(n, driver()?.devices.len() as c_int) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGet(dev: *mut CUdevice, ordinal: c_int) -> CUresult {
    guard(|| {
        let h = driver()?.handle(ordinal)?;
        unsafe { out(dev, h) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: CUdevice) -> CUresult {
    guard(|| {
        let d = driver()?.device(dev)?;
        if name.is_null() || len <= 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let bytes = d.name.as_bytes();
        let n = bytes.len().min(len as usize - 1);
        // SAFETY: the caller's buffer holds `len` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), name as *mut u8, n);
            *name.add(n) = 0;
        }
        Ok(())
    })
}

fn uuid(dev: CUdevice) -> Result<[u8; 16], CUresult> {
    let d = driver()?;
    d.device(dev)?;
    Ok(d.state
        .device(dev as usize)
        .map(|s| s.uuid)
        .unwrap_or_default())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetUuid(u: *mut [u8; 16], dev: CUdevice) -> CUresult {
    guard(|| unsafe { out(u, uuid(dev)?) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetUuid_v2(u: *mut [u8; 16], dev: CUdevice) -> CUresult {
    guard(|| unsafe { out(u, uuid(dev)?) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresult {
    guard(|| unsafe { out(bytes, driver()?.device(dev)?.memory_bytes as usize) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetPCIBusId(
    buf: *mut c_char,
    len: c_int,
    dev: CUdevice,
) -> CUresult {
    guard(|| {
        driver()?.device(dev)?;
        let id = format!("00000000:{:02X}:00.0\0", 0x18 + dev);
        if buf.is_null() || (len as usize) < id.len() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: checked the buffer is large enough.
        unsafe { std::ptr::copy_nonoverlapping(id.as_ptr(), buf as *mut u8, id.len()) };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetAttribute(
    v: *mut c_int,
    attr: c_int,
    dev: CUdevice,
) -> CUresult {
    guard(|| {
        let drv = driver()?;
        let d = drv.device(dev)?;
        let sms = {
            let mut o = drv.lock();
            drv.attachment(&mut o, dev as usize).allowed_sms
        };
        let value: i64 = match attr {
            1 => 1024,                                        // MAX_THREADS_PER_BLOCK
            2 | 3 => 1024,                                    // MAX_BLOCK_DIM_X/Y
            4 => 64,                                          // MAX_BLOCK_DIM_Z
            5 => i32::MAX as i64,                             // MAX_GRID_DIM_X
            6 | 7 => 65535,                                   // MAX_GRID_DIM_Y/Z
            8 => 48 * 1024,                                   // MAX_SHARED_MEMORY_PER_BLOCK
            9 => 64 * 1024,                                   // TOTAL_CONSTANT_MEMORY
            10 => occupancy::WARP_SIZE as i64,                // WARP_SIZE
            11 => i32::MAX as i64,                            // MAX_PITCH
            12 => d.registers_per_sm as i64,                  // MAX_REGISTERS_PER_BLOCK
            13 => d.clock_mhz as i64 * 1000,                  // CLOCK_RATE (kHz)
            14 => 512,                                        // TEXTURE_ALIGNMENT
            15 => 1,                                          // GPU_OVERLAP
            16 => sms as i64,                                 // MULTIPROCESSOR_COUNT (MPS-limited)
            17 | 18 => 0,                                     // KERNEL_EXEC_TIMEOUT, INTEGRATED
            19 => 1,                                          // CAN_MAP_HOST_MEMORY
            20 => 0,                                          // COMPUTE_MODE default
            31 | 32 => 1,                                     // CONCURRENT_KERNELS, ECC_ENABLED
            33 => 0x18 + dev as i64,                          // PCI_BUS_ID
            34 | 50 => 0,                                     // PCI_DEVICE_ID, PCI_DOMAIN_ID
            35 => 0,                                          // TCC_DRIVER
            36 => d.memory_clock_mhz as i64 * 1000,           // MEMORY_CLOCK_RATE (kHz)
            37 => 5120,                                       // GLOBAL_MEMORY_BUS_WIDTH
            38 => 50 << 20,                                   // L2_CACHE_SIZE
            39 => d.max_threads_per_sm as i64,                // MAX_THREADS_PER_MULTIPROCESSOR
            40 => 3,                                          // ASYNC_ENGINE_COUNT
            41 => 1,                                          // UNIFIED_ADDRESSING
            75 => d.compute_capability.0 as i64,              // COMPUTE_CAPABILITY_MAJOR
            76 => d.compute_capability.1 as i64,              // COMPUTE_CAPABILITY_MINOR
            78 => 1,                                          // STREAM_PRIORITIES_SUPPORTED
            81 => d.shared_memory_per_sm as i64, // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
            82 => d.registers_per_sm as i64,     // MAX_REGISTERS_PER_MULTIPROCESSOR
            83 | 89 => 1,                        // MANAGED_MEMORY, CONCURRENT_MANAGED_ACCESS
            97 => d.shared_memory_per_block_optin as i64, // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
            106 => d.max_blocks_per_sm as i64,   // MAX_BLOCKS_PER_MULTIPROCESSOR
            111 => d.reserved_shared_memory_per_block as i64, // RESERVED_SHARED_MEMORY_PER_BLOCK
            115 => 0,                            // MEMORY_POOLS_SUPPORTED: no async allocator
            _ => return Err(CUDA_ERROR_INVALID_VALUE),
        };
        unsafe { out(v, value as c_int) }
    })
}

// ---------------------------------------------------------------- primary contexts

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(ctx: *mut Handle, dev: CUdevice) -> CUresult {
    guard(|| {
        let d = driver()?;
        d.device(dev)?;
        if ctx.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let mut o = d.lock();
        let existing = o
            .primary
            .get(&(dev as usize))
            .map(|pc| (pc.handle, pc.flags));
        let hnd = match existing {
            Some((hnd, _)) if o.ctxs.contains_key(&hnd) => hnd,
            other => {
                let flags = other.map(|x| x.1).unwrap_or(0);
                let hnd = d.new_context(&mut o, dev as usize, flags, true)?;
                o.primary.insert(
                    dev as usize,
                    PrimaryCtx {
                        handle: hnd,
                        refs: 0,
                        flags,
                    },
                );
                hnd
            }
        };
        o.primary.get_mut(&(dev as usize)).expect("inserted").refs += 1;
        unsafe { out(ctx, p(hnd)) }
    })
}

fn primary_release(dev: CUdevice) -> Result<(), CUresult> {
    let d = driver()?;
    d.device(dev)?;
    let mut o = d.lock();
    let pc = o
        .primary
        .get_mut(&(dev as usize))
        .filter(|pc| pc.refs > 0)
        .ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
    pc.refs -= 1;
    if pc.refs == 0 {
        // The last release destroys the context and resets its flags, as
        // NVIDIA's driver does.
        pc.flags = 0;
        let hnd = pc.handle;
        d.destroy_context(&mut o, hnd);
    }
    Ok(())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease(dev: CUdevice) -> CUresult {
    guard(|| primary_release(dev))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult {
    guard(|| primary_release(dev))
}

fn primary_reset(dev: CUdevice) -> Result<(), CUresult> {
    let d = driver()?;
    d.device(dev)?;
    let mut o = d.lock();
    if let Some(pc) = o.primary.remove(&(dev as usize)) {
        d.destroy_context(&mut o, pc.handle);
    }
    Ok(())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxReset(dev: CUdevice) -> CUresult {
    guard(|| primary_reset(dev))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxReset_v2(dev: CUdevice) -> CUresult {
    guard(|| primary_reset(dev))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxGetState(
    dev: CUdevice,
    flags: *mut c_uint,
    active: *mut c_int,
) -> CUresult {
    guard(|| {
        let d = driver()?;
        d.device(dev)?;
        let o = d.lock();
        let pc = o.primary.get(&(dev as usize));
        let is_active = pc.is_some_and(|pc| pc.refs > 0 && o.ctxs.contains_key(&pc.handle));
        unsafe {
            out(flags, pc.map(|pc| pc.flags).unwrap_or(0))?;
            out(active, is_active as c_int)
        }
    })
}

fn primary_set_flags(dev: CUdevice, flags: c_uint) -> Result<(), CUresult> {
    let d = driver()?;
    d.device(dev)?;
    if flags & !0x1f != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut o = d.lock();
    let pc = o.primary.entry(dev as usize).or_insert(PrimaryCtx {
        handle: 0,
        refs: 0,
        flags: 0,
    });
    pc.flags = flags;
    let hnd = pc.handle;
    if let Some(c) = o.ctxs.get_mut(&hnd) {
        c.flags = flags;
    }
    Ok(())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxSetFlags(dev: CUdevice, flags: c_uint) -> CUresult {
    guard(|| primary_set_flags(dev, flags))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxSetFlags_v2(dev: CUdevice, flags: c_uint) -> CUresult {
    guard(|| primary_set_flags(dev, flags))
}

// ---------------------------------------------------------------- contexts

fn ctx_create(ctx: *mut Handle, flags: c_uint, dev: CUdevice) -> Result<(), CUresult> {
    let d = driver()?;
    d.device(dev)?;
    if ctx.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut o = d.lock();
    let hnd = d.new_context(&mut o, dev as usize, flags, false)?;
    CTX_STACK.with(|s| s.borrow_mut().push(hnd));
    unsafe { out(ctx, p(hnd)) }
}

/// CUDA 3.2–12 `cuCtxCreate`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxCreate_v2(
    ctx: *mut Handle,
    flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    guard(|| ctx_create(ctx, flags, dev))
}

/// CUDA 11.4+ `cuCtxCreate` with execution-affinity parameters (ignored).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxCreate_v3(
    ctx: *mut Handle,
    _params: *mut c_void,
    n: c_int,
    flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    guard(|| {
        if n < 0 {
            Err(CUDA_ERROR_INVALID_VALUE)
        } else {
            ctx_create(ctx, flags, dev)
        }
    })
}

/// CUDA 12.5+ and 13 `cuCtxCreate` with a `CUctxCreateParams` (ignored).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxCreate_v4(
    ctx: *mut Handle,
    _params: *mut c_void,
    flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    guard(|| ctx_create(ctx, flags, dev))
}

fn ctx_destroy(ctx: Handle) -> Result<(), CUresult> {
    let d = driver()?;
    let mut o = d.lock();
    let c = o.ctxs.get(&h(ctx)).ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
    if c.primary {
        return Err(CUDA_ERROR_INVALID_CONTEXT);
    }
    d.destroy_context(&mut o, h(ctx));
    Ok(())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxDestroy(ctx: Handle) -> CUresult {
    guard(|| ctx_destroy(ctx))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxDestroy_v2(ctx: Handle) -> CUresult {
    guard(|| ctx_destroy(ctx))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxGetCurrent(ctx: *mut Handle) -> CUresult {
    guard(|| {
        driver()?;
        let top = CTX_STACK.with(|s| s.borrow().last().copied()).unwrap_or(0);
        unsafe { out(ctx, p(top)) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxSetCurrent(ctx: Handle) -> CUresult {
    guard(|| {
        let d = driver()?;
        if !ctx.is_null() && !d.lock().ctxs.contains_key(&h(ctx)) {
            return Err(CUDA_ERROR_INVALID_CONTEXT);
        }
        CTX_STACK.with(|s| {
            let mut s = s.borrow_mut();
            s.pop();
            if !ctx.is_null() {
                s.push(h(ctx));
            }
        });
        Ok(())
    })
}

fn ctx_push(ctx: Handle) -> Result<(), CUresult> {
    let d = driver()?;
    if !d.lock().ctxs.contains_key(&h(ctx)) {
        return Err(CUDA_ERROR_INVALID_CONTEXT);
    }
    CTX_STACK.with(|s| s.borrow_mut().push(h(ctx)));
    Ok(())
}

fn ctx_pop(ctx: *mut Handle) -> Result<(), CUresult> {
    driver()?;
    let top = CTX_STACK
        .with(|s| s.borrow_mut().pop())
        .ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
    if !ctx.is_null() {
        unsafe { out(ctx, p(top))? };
    }
    Ok(())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxPushCurrent(ctx: Handle) -> CUresult {
    guard(|| ctx_push(ctx))
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxPushCurrent_v2(ctx: Handle) -> CUresult {
    guard(|| ctx_push(ctx))
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxPopCurrent(ctx: *mut Handle) -> CUresult {
    guard(|| ctx_pop(ctx))
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxPopCurrent_v2(ctx: *mut Handle) -> CUresult {
    guard(|| ctx_pop(ctx))
}

fn ctx_device(dev: *mut CUdevice, ctx: Option<Handle>) -> Result<(), CUresult> {
    let d = driver()?;
    let o = d.lock();
    let hnd = match ctx {
        Some(c) if !c.is_null() => h(c),
        _ => d.current(&o)?,
    };
    let c = o.ctxs.get(&hnd).ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
    unsafe { out(dev, c.device as CUdevice) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxGetDevice(dev: *mut CUdevice) -> CUresult {
    guard(|| ctx_device(dev, None))
}

/// CUDA 13: the device of `ctx`, or of the current context when NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxGetDevice_v2(dev: *mut CUdevice, ctx: Handle) -> CUresult {
    guard(|| ctx_device(dev, Some(ctx)))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxGetFlags(flags: *mut c_uint) -> CUresult {
    guard(|| {
        let d = driver()?;
        let o = d.lock();
        let c = d.current(&o)?;
        unsafe { out(flags, o.ctxs[&c].flags) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxGetStreamPriorityRange(
    least: *mut c_int,
    greatest: *mut c_int,
) -> CUresult {
    guard(|| {
        driver()?;
        if !least.is_null() {
            unsafe { out(least, 0)? };
        }
        if !greatest.is_null() {
            unsafe { out(greatest, -5)? };
        }
        Ok(())
    })
}

fn ctx_synchronize(ctx: Option<Handle>) -> Result<(), CUresult> {
    let d = driver()?;
    let until = {
        let mut o = d.lock();
        let hnd = match ctx {
            Some(c) if !c.is_null() => h(c),
            _ => d.current(&o)?,
        };
        let null_tail = o
            .ctxs
            .get(&hnd)
            .ok_or(CUDA_ERROR_INVALID_CONTEXT)?
            .null_tail;
        if d.invalidate_global_captures(&mut o) {
            return Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
        }
        o.streams
            .values()
            .filter(|s| s.ctx == hnd)
            .map(|s| s.tail)
            .fold(null_tail, u64::max)
    };
    sleep_until(until);
    Ok(())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxSynchronize() -> CUresult {
    guard(|| ctx_synchronize(None))
}

/// CUDA 13: synchronise `ctx`, or the current context when NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxSynchronize_v2(ctx: Handle) -> CUresult {
    guard(|| ctx_synchronize(Some(ctx)))
}

// ---------------------------------------------------------------- modules and functions

fn load_module(module: *mut Handle, image: *const c_void) -> Result<(), CUresult> {
    let d = driver()?;
    if module.is_null() || image.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut o = d.lock();
    let ctx = d.current(&o)?;
    // SAFETY: the image is NUL-terminated PTX text, or a binary whose header
    // we only read a few bytes of before rejecting it.
    let head = unsafe { std::slice::from_raw_parts(image as *const u8, 4) };
    let bytes: &[u8] = if head == b"\x7fELF" {
        head
    } else {
        unsafe { CStr::from_ptr(image as *const c_char) }.to_bytes()
    };
    let m = Module::parse(bytes).map_err(|e| {
        if std::env::var_os("GPUSIM_DEBUG").is_some() {
            eprintln!("gpusim: cuModuleLoadData: {e}");
        }
        match e {
            PtxError::NotPtx(_) => CUDA_ERROR_INVALID_IMAGE,
            PtxError::Invalid(_) => CUDA_ERROR_INVALID_PTX,
        }
    })?;
    let mut funcs = Vec::new();
    for k in m.kernels {
        let fid = o.fresh(Kind::Func);
        let name = CString::new(k.name.clone()).map_err(|_| CUDA_ERROR_INVALID_PTX)?;
        // CUDA's default dynamic shared memory limit: what is left of 48 KiB.
        let max_dynamic_smem = (48 * 1024u32).saturating_sub(k.static_smem);
        o.funcs.insert(
            fid & 0xffff_ffff_ffff,
            Function {
                ctx,
                kernel: k,
                name,
                max_dynamic_smem,
            },
        );
        funcs.push(fid & 0xffff_ffff_ffff);
    }
    let mh = o.fresh(Kind::Module);
    o.modules.insert(mh & 0xffff_ffff_ffff, (ctx, funcs));
    unsafe { out(module, p(mh)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoadData(module: *mut Handle, image: *const c_void) -> CUresult {
    guard(|| load_module(module, image))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoadDataEx(
    module: *mut Handle,
    image: *const c_void,
    _n: c_uint,
    _opts: *mut c_int,
    _vals: *mut *mut c_void,
) -> CUresult {
    guard(|| load_module(module, image))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoad(module: *mut Handle, fname: *const c_char) -> CUresult {
    guard(|| {
        if fname.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let path = unsafe { CStr::from_ptr(fname) }
            .to_string_lossy()
            .into_owned();
        let mut text = std::fs::read(&path).map_err(|_| CUDA_ERROR_FILE_NOT_FOUND)?;
        text.push(0);
        load_module(module, text.as_ptr() as *const c_void)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleUnload(module: Handle) -> CUresult {
    guard(|| {
        let d = driver()?;
        let mut o = d.lock();
        let id = id_of(Kind::Module, h(module)).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        let (_, funcs) = o.modules.remove(&id).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        for f in funcs {
            o.funcs.remove(&f);
        }
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleGetFunction(
    func: *mut Handle,
    module: Handle,
    name: *const c_char,
) -> CUresult {
    guard(|| {
        let d = driver()?;
        if func.is_null() || name.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let o = d.lock();
        let id = id_of(Kind::Module, h(module)).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        let (_, funcs) = o.modules.get(&id).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        let want = unsafe { CStr::from_ptr(name) };
        let f = funcs
            .iter()
            .find(|f| o.funcs.get(f).is_some_and(|f| f.name.as_c_str() == want))
            .ok_or(CUDA_ERROR_NOT_FOUND)?;
        unsafe { out(func, p(handle(Kind::Func, *f))) }
    })
}

/// Runs `f` on a function and the device its context is on.
fn with_func<T>(
    func: Handle,
    f: impl FnOnce(&DeviceConfig, &mut Function) -> Result<T, CUresult>,
) -> Result<T, CUresult> {
    let d = driver()?;
    let mut o = d.lock();
    let id = id_of(Kind::Func, h(func)).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
    let ctx = o.funcs.get(&id).ok_or(CUDA_ERROR_INVALID_HANDLE)?.ctx;
    let dev = o.ctxs.get(&ctx).ok_or(CUDA_ERROR_INVALID_CONTEXT)?.device;
    let fun = o.funcs.get_mut(&id).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
    f(d.device(dev as i32)?, fun)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuFuncGetAttribute(v: *mut c_int, attr: c_int, func: Handle) -> CUresult {
    guard(|| {
        let value = with_func(func, |dev, f| {
            let k = &f.kernel;
            Ok(match attr {
                0 => occupancy::max_threads_per_block(dev, k.regs, k.maxntid) as c_int,
                1 => k.static_smem as c_int,
                2 | 3 => 0,
                4 => k.regs as c_int,
                5 | 6 => (dev.compute_capability.0 * 10 + dev.compute_capability.1) as c_int,
                7 => 0,
                8 => f.max_dynamic_smem as c_int,
                9 => -1,
                _ => return Err(CUDA_ERROR_INVALID_VALUE),
            })
        })?;
        unsafe { out(v, value) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuFuncSetAttribute(func: Handle, attr: c_int, value: c_int) -> CUresult {
    guard(|| {
        with_func(func, |dev, f| match attr {
            8 if value >= 0
                && (value as u32) + f.kernel.static_smem <= dev.shared_memory_per_block_optin =>
            {
                f.max_dynamic_smem = value as u32;
                Ok(())
            }
            9 if (-1..=100).contains(&value) => Ok(()),
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        })
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuFuncGetName(name: *mut *const c_char, func: Handle) -> CUresult {
    guard(|| {
        let ptr = with_func(func, |_, f| Ok(f.name.as_ptr()))?;
        unsafe { out(name, ptr) }
    })
}

fn occupancy_for(
    n: *mut c_int,
    func: Handle,
    block: c_int,
    dyn_smem: usize,
) -> Result<(), CUresult> {
    let blocks = with_func(func, |dev, f| {
        if block <= 0 || dyn_smem > u32::MAX as usize {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let demand = BlockDemand {
            threads: block as u32,
            regs_per_thread: f.kernel.regs,
            shared_bytes: f.kernel.static_smem.saturating_add(dyn_smem as u32),
        };
        if block as u32 > occupancy::max_threads_per_block(dev, f.kernel.regs, f.kernel.maxntid)
            || dyn_smem as u32 > f.max_dynamic_smem
        {
            return Ok(0);
        }
        Ok(occupancy::blocks_per_sm(dev, demand).blocks_per_sm as c_int)
    })?;
    unsafe { out(n, blocks) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuOccupancyMaxActiveBlocksPerMultiprocessor(
    n: *mut c_int,
    func: Handle,
    block: c_int,
    dyn_smem: usize,
) -> CUresult {
    guard(|| occupancy_for(n, func, block, dyn_smem))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(
    n: *mut c_int,
    func: Handle,
    block: c_int,
    dyn_smem: usize,
    _flags: c_uint,
) -> CUresult {
    guard(|| occupancy_for(n, func, block, dyn_smem))
}

// ---------------------------------------------------------------- memory

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    guard(|| {
        let d = driver()?;
        let o = d.lock();
        let c = d.current(&o)?;
        let s = d
            .state
            .device(o.ctxs[&c].device)
            .ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
        let used = s.mem_used.load(std::sync::atomic::Ordering::Relaxed);
        unsafe {
            out(free, s.total_memory().saturating_sub(used) as usize)?;
            out(total, s.total_memory() as usize)
        }
    })
}

/// Device memory of `size` bytes in the current context, accounted on its
/// device: what every allocation entry point below comes down to.
fn allocate(size: usize) -> Result<u64, CUresult> {
    let d = driver()?;
    if size == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut o = d.lock();
    let ctx = d.current(&o)?;
    if o.streams.values().any(|s| {
        s.capture
            .as_ref()
            .is_some_and(|c| c.mode == CU_STREAM_CAPTURE_MODE_GLOBAL)
    }) {
        d.invalidate_global_captures(&mut o);
        return Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    }
    let device = o.ctxs[&ctx].device;
    let slot = d.register(&mut o, device)?;
    let s = d.state.device(device).ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
    if !s.alloc(slot, size as u64) {
        return Err(CUDA_ERROR_OUT_OF_MEMORY);
    }
    // Backing store: reserved address space, paged in only when copied to.
    let Some(m) = map_anonymous(size) else {
        s.free(slot, size as u64);
        return Err(CUDA_ERROR_OUT_OF_MEMORY);
    };
    o.allocs.insert(m, Allocation { ctx, device, size });
    Ok(m)
}

/// Frees the device allocation at `ptr` (an address or a VMM handle):
/// what every device free entry point comes down to.
fn release(ptr: u64) -> Result<(), CUresult> {
    let d = driver()?;
    let mut o = d.lock();
    if d.free_allocation(&mut o, ptr) {
        Ok(())
    } else {
        Err(CUDA_ERROR_INVALID_VALUE)
    }
}

/// `size` bytes of reserved address space, paged in only when touched.
fn map_anonymous(size: usize) -> Option<u64> {
    // SAFETY: anonymous private mapping; no existing memory is touched.
    let m = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    (m != libc::MAP_FAILED).then_some(m as u64)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, size: usize) -> CUresult {
    guard(|| {
        if dptr.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let m = allocate(size)?;
        unsafe { out(dptr, m) }
    })
}

/// Rows of `width` bytes padded to this pitch.
const PITCH_ALIGNMENT: usize = 512;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocPitch_v2(
    dptr: *mut CUdeviceptr,
    pitch: *mut usize,
    width: usize,
    height: usize,
    element_size: c_uint,
) -> CUresult {
    guard(|| {
        if dptr.is_null() || pitch.is_null() || width == 0 || height == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if !matches!(element_size, 4 | 8 | 16) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let row = width.div_ceil(PITCH_ALIGNMENT) * PITCH_ALIGNMENT;
        let size = row.checked_mul(height).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let m = allocate(size)?;
        unsafe {
            out(pitch, row)?;
            out(dptr, m)
        }
    })
}

const CU_MEM_ATTACH_GLOBAL: c_uint = 1;
const CU_MEM_ATTACH_HOST: c_uint = 2;

/// Managed memory, counted as the device's (gpusim does not migrate pages).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocManaged(
    dptr: *mut CUdeviceptr,
    size: usize,
    flags: c_uint,
) -> CUresult {
    guard(|| {
        if dptr.is_null() || !matches!(flags, CU_MEM_ATTACH_GLOBAL | CU_MEM_ATTACH_HOST) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let m = allocate(size)?;
        unsafe { out(dptr, m) }
    })
}

/// Checks that `stream` names a stream of the current context (or is NULL).
fn known_stream(stream: Handle) -> Result<(), CUresult> {
    let d = driver()?;
    let o = d.lock();
    d.stream(&o, h(stream)).map(|_| ())
}

/// Stream-ordered allocation: gpusim's memory exists at once, so the
/// allocation is made when called (what the stream's order would give).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocAsync(
    dptr: *mut CUdeviceptr,
    size: usize,
    stream: Handle,
) -> CUresult {
    guard(|| {
        if dptr.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        known_stream(stream)?;
        let m = allocate(size)?;
        unsafe { out(dptr, m) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocAsync_ptsz(
    dptr: *mut CUdeviceptr,
    size: usize,
    stream: Handle,
) -> CUresult {
    unsafe { cuMemAllocAsync(dptr, size, stream) }
}

/// Each device's default memory pool, as a handle.
const POOL_BASE: usize = 0x7e00_0000;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetDefaultMemPool(pool: *mut usize, dev: c_int) -> CUresult {
    guard(|| {
        driver()?.device(dev)?;
        unsafe { out(pool, POOL_BASE + dev as usize) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocFromPoolAsync(
    dptr: *mut CUdeviceptr,
    size: usize,
    pool: usize,
    stream: Handle,
) -> CUresult {
    guard(|| {
        let d = driver()?;
        let pooled = pool
            .checked_sub(POOL_BASE)
            .is_some_and(|dev| d.device(dev as c_int).is_ok());
        if dptr.is_null() || !pooled {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        known_stream(stream)?;
        let m = allocate(size)?;
        unsafe { out(dptr, m) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocFromPoolAsync_ptsz(
    dptr: *mut CUdeviceptr,
    size: usize,
    pool: usize,
    stream: Handle,
) -> CUresult {
    unsafe { cuMemAllocFromPoolAsync(dptr, size, pool, stream) }
}

/// Frees at the call, whatever the stream (its earlier work already ran
/// in gpusim's time model when it was launched).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFreeAsync(dptr: CUdeviceptr, stream: Handle) -> CUresult {
    guard(|| {
        known_stream(stream)?;
        release(dptr)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFreeAsync_ptsz(dptr: CUdeviceptr, stream: Handle) -> CUresult {
    unsafe { cuMemFreeAsync(dptr, stream) }
}

/// Physical allocations for virtual memory management come in multiples
/// of this (an H100's 2 MiB).
const VMM_GRANULARITY: usize = 2 << 20;

/// `CUmemAllocationProp`'s head: type, requested handle types, location
/// (type, id).
#[repr(C)]
pub struct MemAllocationProp {
    pub kind: c_uint,
    pub handle_types: c_uint,
    pub location_type: c_uint,
    pub location_id: c_int,
}

const CU_MEM_ALLOCATION_TYPE_PINNED: c_uint = 1;
const CU_MEM_LOCATION_TYPE_DEVICE: c_uint = 1;

fn check_prop(prop: *const MemAllocationProp) -> Result<&'static MemAllocationProp, CUresult> {
    if prop.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: non-null, the caller's CUmemAllocationProp.
    let p = unsafe { &*prop };
    if p.kind != CU_MEM_ALLOCATION_TYPE_PINNED || p.location_type != CU_MEM_LOCATION_TYPE_DEVICE {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    Ok(p)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemGetAllocationGranularity(
    granularity: *mut usize,
    prop: *const MemAllocationProp,
    _option: c_uint,
) -> CUresult {
    guard(|| {
        check_prop(prop)?;
        unsafe { out(granularity, VMM_GRANULARITY) }
    })
}

/// A physical allocation on the device the properties name, in the
/// current context: its device memory is accounted now; its bytes live in
/// a memory file that each mapping of it shares.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemCreate(
    handle: *mut u64,
    size: usize,
    prop: *const MemAllocationProp,
    flags: u64,
) -> CUresult {
    guard(|| {
        let p = check_prop(prop)?;
        let d = driver()?;
        if handle.is_null() || flags != 0 || size == 0 || !size.is_multiple_of(VMM_GRANULARITY) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        d.device(p.location_id)?;
        let mut o = d.lock();
        let ctx = d.current(&o)?;
        let device = o.ctxs[&ctx].device;
        let slot = d.register(&mut o, device)?;
        let s = d.state.device(device).ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
        if !s.alloc(slot, size as u64) {
            return Err(CUDA_ERROR_OUT_OF_MEMORY);
        }
        let Some(file) = memory_file(size) else {
            s.free(slot, size as u64);
            return Err(CUDA_ERROR_OUT_OF_MEMORY);
        };
        let h = o.fresh(Kind::Physical);
        o.physical.insert(
            h,
            Physical {
                device,
                size,
                file,
                mappings: 0,
                released: false,
            },
        );
        unsafe { out(handle, h) }
    })
}

/// A sparse memory file of `size` bytes, the backing of a physical
/// allocation.
fn memory_file(size: usize) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: a NUL-terminated name; the descriptor is owned from here on.
    let fd = unsafe { libc::memfd_create(c"gpusim-physical".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a descriptor memfd_create just returned, owned by nobody else.
    let file = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: resizing the file just created.
    (unsafe { libc::ftruncate(fd, size as libc::off_t) } == 0).then_some(file)
}

/// The handle is invalid from now on; the memory goes back to the device
/// once its last mapping is unmapped (at once if it has none).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemRelease(handle: u64) -> CUresult {
    guard(|| {
        let d = driver()?;
        let mut o = d.lock();
        let p = o
            .physical
            .get_mut(&handle)
            .filter(|p| !p.released)
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        p.released = true;
        if p.mappings == 0 {
            d.free_physical(&mut o, handle);
        }
        Ok(())
    })
}

/// `size` bytes of address space (a multiple of the granularity), aligned
/// to `alignment` (0: the granularity); `addr`, a hint, is not followed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAddressReserve(
    ptr: *mut CUdeviceptr,
    size: usize,
    alignment: usize,
    _addr: CUdeviceptr,
    flags: u64,
) -> CUresult {
    guard(|| {
        let d = driver()?;
        let align = if alignment == 0 {
            VMM_GRANULARITY
        } else {
            alignment
        };
        if ptr.is_null()
            || flags != 0
            || size == 0
            || !size.is_multiple_of(VMM_GRANULARITY)
            || !align.is_power_of_two()
        {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let span = size.checked_add(align).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        // SAFETY: a fresh inaccessible anonymous mapping.
        let m = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                span,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if m == libc::MAP_FAILED {
            return Err(CUDA_ERROR_OUT_OF_MEMORY);
        }
        let start = m as usize;
        let base = start.next_multiple_of(align);
        // SAFETY: trimming the parts of that mapping outside [base, base+size).
        unsafe {
            if base > start {
                libc::munmap(m, base - start);
            }
            let tail = start + span - (base + size);
            if tail > 0 {
                libc::munmap((base + size) as *mut c_void, tail);
            }
        }
        d.lock().reserved.insert(base as u64, size);
        unsafe { out(ptr, base as u64) }
    })
}

/// Frees a whole reservation; one still mapped is refused.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAddressFree(ptr: CUdeviceptr, size: usize) -> CUresult {
    guard(|| {
        let d = driver()?;
        let mut o = d.lock();
        if o.reserved.get(&ptr) != Some(&size)
            || o.mapped.range(ptr..ptr + size as u64).next().is_some()
        {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        o.reserved.remove(&ptr);
        // SAFETY: unmapping the reservation this driver made.
        unsafe { libc::munmap(ptr as *mut c_void, size) };
        Ok(())
    })
}

/// Maps `size` bytes of physical allocation `handle` from `offset` at
/// `ptr`, inside one reservation and over no other mapping; inaccessible
/// until `cuMemSetAccess`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemMap(
    ptr: CUdeviceptr,
    size: usize,
    offset: usize,
    handle: u64,
    flags: u64,
) -> CUresult {
    guard(|| {
        let d = driver()?;
        let mut o = d.lock();
        let end = ptr
            .checked_add(size as u64)
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let inside = o
            .reserved
            .range(..=ptr)
            .next_back()
            .is_some_and(|(b, s)| end <= b + *s as u64);
        let overlaps = o
            .mapped
            .range(..end)
            .next_back()
            .is_some_and(|(at, m)| at + m.size as u64 > ptr);
        let p = o.physical.get(&handle).filter(|p| !p.released);
        let fits = p.is_some_and(|p| offset.checked_add(size).is_some_and(|e| e <= p.size));
        if flags != 0
            || size == 0
            || !size.is_multiple_of(VMM_GRANULARITY)
            || !offset.is_multiple_of(VMM_GRANULARITY)
            || !inside
            || overlaps
            || !fits
        {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let fd = {
            use std::os::fd::AsRawFd;
            p.expect("checked").file.as_raw_fd()
        };
        // SAFETY: replacing part of a reservation this driver made with the
        // physical allocation's file, shared.
        let m = unsafe {
            libc::mmap(
                ptr as *mut c_void,
                size,
                libc::PROT_NONE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd,
                offset as libc::off_t,
            )
        };
        if m == libc::MAP_FAILED {
            return Err(CUDA_ERROR_OUT_OF_MEMORY);
        }
        o.physical.get_mut(&handle).expect("checked").mappings += 1;
        o.mapped.insert(
            ptr,
            Mapping {
                size,
                handle,
                accessible: false,
            },
        );
        Ok(())
    })
}

/// The mappings that make up exactly `[ptr, ptr+size)`, by address.
fn whole_mappings(o: &Objects, ptr: u64, size: usize) -> Result<Vec<u64>, CUresult> {
    let end = ptr
        .checked_add(size as u64)
        .ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let mut at = ptr;
    let mut found = Vec::new();
    for (&a, m) in o.mapped.range(ptr..end) {
        if a != at {
            break;
        }
        found.push(a);
        at = a + m.size as u64;
    }
    if size == 0 || at != end {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    Ok(found)
}

/// `CUmemAccessDesc`: a location (type, id) and its access flags.
#[repr(C)]
pub struct MemAccessDesc {
    pub location_type: c_uint,
    pub location_id: c_int,
    pub flags: c_uint,
}

const CU_MEM_ACCESS_FLAGS_PROT_NONE: c_uint = 0;
const CU_MEM_ACCESS_FLAGS_PROT_READ: c_uint = 1;
const CU_MEM_ACCESS_FLAGS_PROT_READWRITE: c_uint = 3;

/// Sets the access of whole mappings: read-write or read-only makes them
/// usable by copies; none makes them inaccessible again.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemSetAccess(
    ptr: CUdeviceptr,
    size: usize,
    desc: *const MemAccessDesc,
    count: usize,
) -> CUresult {
    guard(|| {
        let d = driver()?;
        if desc.is_null() || count == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: the caller's array of `count` descriptors.
        let descs = unsafe { std::slice::from_raw_parts(desc, count) };
        let mut prot = None;
        for a in descs {
            if a.location_type != CU_MEM_LOCATION_TYPE_DEVICE {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            d.device(a.location_id)?;
            prot = Some(match a.flags {
                CU_MEM_ACCESS_FLAGS_PROT_NONE => libc::PROT_NONE,
                CU_MEM_ACCESS_FLAGS_PROT_READ => libc::PROT_READ,
                CU_MEM_ACCESS_FLAGS_PROT_READWRITE => libc::PROT_READ | libc::PROT_WRITE,
                _ => return Err(CUDA_ERROR_INVALID_VALUE),
            });
        }
        let prot = prot.expect("count > 0");
        let mut o = d.lock();
        let found = whole_mappings(&o, ptr, size)?;
        // SAFETY: the range is made of this driver's mappings.
        if unsafe { libc::mprotect(ptr as *mut c_void, size, prot) } != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        for a in found {
            if let Some(m) = o.mapped.get_mut(&a) {
                m.accessible = prot != libc::PROT_NONE;
            }
        }
        Ok(())
    })
}

/// Unmaps whole mappings, leaving their address space reserved; a
/// released physical allocation's memory goes back with its last mapping.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemUnmap(ptr: CUdeviceptr, size: usize) -> CUresult {
    guard(|| {
        let d = driver()?;
        let mut o = d.lock();
        let found = whole_mappings(&o, ptr, size)?;
        // SAFETY: putting inaccessible reserved space back over this
        // driver's mappings.
        unsafe {
            libc::mmap(
                ptr as *mut c_void,
                size,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        for a in found {
            let Some(m) = o.mapped.remove(&a) else {
                continue;
            };
            let done = o.physical.get_mut(&m.handle).is_some_and(|p| {
                p.mappings -= 1;
                p.released && p.mappings == 0
            });
            if done {
                d.free_physical(&mut o, m.handle);
            }
        }
        Ok(())
    })
}

/// Page-locked host memory: ordinary memory here, not the device's.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemHostAlloc(
    pp: *mut *mut c_void,
    size: usize,
    _flags: c_uint,
) -> CUresult {
    guard(|| {
        let d = driver()?;
        if pp.is_null() || size == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        d.current(&d.lock())?;
        let m = map_anonymous(size).ok_or(CUDA_ERROR_OUT_OF_MEMORY)?;
        d.lock().host_allocs.insert(m, size);
        unsafe { out(pp, m as *mut c_void) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocHost_v2(pp: *mut *mut c_void, size: usize) -> CUresult {
    unsafe { cuMemHostAlloc(pp, size, 0) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFreeHost(p: *mut c_void) -> CUresult {
    guard(|| {
        let d = driver()?;
        let size = d
            .lock()
            .host_allocs
            .remove(&(p as u64))
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        // SAFETY: unmapping what cuMemHostAlloc mapped.
        unsafe { libc::munmap(p, size) };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFree_v2(dptr: CUdeviceptr) -> CUresult {
    guard(|| {
        if dptr == 0 {
            return Ok(());
        }
        let d = driver()?;
        d.current(&d.lock())?;
        release(dptr)
    })
}

#[derive(Clone, Copy)]
enum Dir {
    HtoD,
    DtoH,
    DtoD,
}

/// Copies `n` bytes and accounts for the transfer on `stream` (NULL for the
/// synchronous forms, which also wait for it).
fn memcpy(dir: Dir, dst: u64, src: u64, n: usize, stream: Option<Handle>) -> Result<(), CUresult> {
    let d = driver()?;
    let done = {
        let mut o = d.lock();
        let (ctx, sid) = d.stream(&o, stream.map(h).unwrap_or(0))?;
        if n == 0 {
            return Ok(());
        }
        if dst == 0 || src == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        match dir {
            Dir::HtoD => d.check_device_range(&o, dst, n).map(|_| ())?,
            Dir::DtoH => d.check_device_range(&o, src, n).map(|_| ())?,
            Dir::DtoD => {
                d.check_device_range(&o, dst, n)?;
                d.check_device_range(&o, src, n)?;
            }
        }
        if d.capture(&mut o, sid).is_some() {
            d.invalidate_global_captures(&mut o);
            if let Some(c) = d.capture(&mut o, sid) {
                c.invalidated = true;
            }
            return Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
        }
        // SAFETY: device ranges were checked above; host pointers are the
        // caller's, as with the real driver.
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, n) };
        let bw = match dir {
            Dir::DtoD => d.cfg.pcie_bytes_per_s * 40,
            _ => d.cfg.pcie_bytes_per_s,
        };
        let cost = d.wall(1_000.0 + n as f64 * 1e9 / bw as f64);
        let start = d.stream_ready(&o, ctx, sid).max(now_ns());
        d.set_tail(&mut o, ctx, sid, start + cost);
        start + cost
    };
    if stream.is_none() {
        sleep_until(done);
    }
    Ok(())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyHtoD_v2(
    dst: CUdeviceptr,
    src: *const c_void,
    n: usize,
) -> CUresult {
    guard(|| memcpy(Dir::HtoD, dst, src as u64, n, None))
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyDtoH_v2(dst: *mut c_void, src: CUdeviceptr, n: usize) -> CUresult {
    guard(|| memcpy(Dir::DtoH, dst as u64, src, n, None))
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyDtoD_v2(dst: CUdeviceptr, src: CUdeviceptr, n: usize) -> CUresult {
    guard(|| memcpy(Dir::DtoD, dst, src, n, None))
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyHtoDAsync_v2(
    dst: CUdeviceptr,
    src: *const c_void,
    n: usize,
    s: Handle,
) -> CUresult {
    guard(|| memcpy(Dir::HtoD, dst, src as u64, n, Some(s)))
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyDtoHAsync_v2(
    dst: *mut c_void,
    src: CUdeviceptr,
    n: usize,
    s: Handle,
) -> CUresult {
    guard(|| memcpy(Dir::DtoH, dst as u64, src, n, Some(s)))
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyDtoDAsync_v2(
    dst: CUdeviceptr,
    src: CUdeviceptr,
    n: usize,
    s: Handle,
) -> CUresult {
    guard(|| memcpy(Dir::DtoD, dst, src, n, Some(s)))
}

fn memset(dst: u64, byte: u8, n: usize, stream: Option<Handle>) -> Result<(), CUresult> {
    let d = driver()?;
    let done = {
        let mut o = d.lock();
        let (ctx, sid) = d.stream(&o, stream.map(h).unwrap_or(0))?;
        d.check_device_range(&o, dst, n)?;
        // SAFETY: range checked to lie in one allocation.
        unsafe { std::ptr::write_bytes(dst as *mut u8, byte, n) };
        let t = d.stream_ready(&o, ctx, sid).max(now_ns()) + d.wall(1_000.0);
        d.set_tail(&mut o, ctx, sid, t);
        t
    };
    if stream.is_none() {
        sleep_until(done);
    }
    Ok(())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemsetD8_v2(dst: CUdeviceptr, v: u8, n: usize) -> CUresult {
    guard(|| memset(dst, v, n, None))
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemsetD8Async(dst: CUdeviceptr, v: u8, n: usize, s: Handle) -> CUresult {
    guard(|| memset(dst, v, n, Some(s)))
}

// ---------------------------------------------------------------- streams

fn stream_create(out_s: *mut Handle, flags: c_uint, priority: c_int) -> Result<(), CUresult> {
    let d = driver()?;
    if out_s.is_null() || flags & !CU_STREAM_NON_BLOCKING != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut o = d.lock();
    let ctx = d.current(&o)?;
    let hnd = o.fresh(Kind::Stream);
    let id = id_of(Kind::Stream, hnd).expect("fresh stream handle");
    o.streams.insert(
        id,
        Stream {
            ctx,
            flags,
            priority: priority.clamp(-5, 0),
            tail: 0,
            capture: None,
        },
    );
    unsafe { out(out_s, p(hnd)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamCreate(s: *mut Handle, flags: c_uint) -> CUresult {
    guard(|| stream_create(s, flags, 0))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamCreateWithPriority(
    s: *mut Handle,
    flags: c_uint,
    priority: c_int,
) -> CUresult {
    guard(|| stream_create(s, flags, priority))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamGetPriority(s: Handle, priority: *mut c_int) -> CUresult {
    guard(|| {
        let d = driver()?;
        let o = d.lock();
        let (_, sid) = d.stream(&o, h(s))?;
        unsafe { out(priority, sid.map(|i| o.streams[&i].priority).unwrap_or(0)) }
    })
}

fn stream_destroy(s: Handle) -> Result<(), CUresult> {
    let d = driver()?;
    let mut o = d.lock();
    let id = id_of(Kind::Stream, h(s)).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
    o.streams
        .remove(&id)
        .map(|_| ())
        .ok_or(CUDA_ERROR_INVALID_HANDLE)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamDestroy(s: Handle) -> CUresult {
    guard(|| stream_destroy(s))
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamDestroy_v2(s: Handle) -> CUresult {
    guard(|| stream_destroy(s))
}

/// Fails a synchronising call on a capturing stream the way CUDA does: the
/// call returns STREAM_CAPTURE_UNSUPPORTED and the capture is invalidated.
fn refuse_if_capturing(d: &Driver, o: &mut Objects, sid: Option<u64>) -> Result<(), CUresult> {
    if let Some(c) = d.capture(o, sid) {
        c.invalidated = true;
        return Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    }
    if sid.is_none() && d.invalidate_global_captures(o) {
        return Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    }
    Ok(())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamSynchronize(s: Handle) -> CUresult {
    guard(|| {
        let d = driver()?;
        let until = {
            let mut o = d.lock();
            let (ctx, sid) = d.stream(&o, h(s))?;
            refuse_if_capturing(d, &mut o, sid)?;
            d.stream_ready(&o, ctx, sid)
        };
        sleep_until(until);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamQuery(s: Handle) -> CUresult {
    guard(|| {
        let d = driver()?;
        let mut o = d.lock();
        let (ctx, sid) = d.stream(&o, h(s))?;
        refuse_if_capturing(d, &mut o, sid)?;
        if d.stream_ready(&o, ctx, sid) > now_ns() {
            Err(CUDA_ERROR_NOT_READY)
        } else {
            Ok(())
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamWaitEvent(s: Handle, ev: Handle, _flags: c_uint) -> CUresult {
    guard(|| {
        let d = driver()?;
        let mut o = d.lock();
        let (ctx, sid) = d.stream(&o, h(s))?;
        let eid = id_of(Kind::Event, h(ev)).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        let at = o
            .events
            .get(&eid)
            .ok_or(CUDA_ERROR_INVALID_HANDLE)?
            .at
            .unwrap_or(0);
        let t = d.stream_ready(&o, ctx, sid).max(at);
        d.set_tail(&mut o, ctx, sid, t);
        Ok(())
    })
}

fn begin_capture(s: Handle, mode: c_uint) -> Result<(), CUresult> {
    let d = driver()?;
    let mut o = d.lock();
    let (_, sid) = d.stream(&o, h(s))?;
    let id = sid.ok_or(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED)?;
    if mode > 2 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let st = o.streams.get_mut(&id).expect("resolved stream");
    if st.capture.is_some() {
        return Err(CUDA_ERROR_ILLEGAL_STATE);
    }
    st.capture = Some(Capture {
        mode,
        ..Capture::default()
    });
    Ok(())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamBeginCapture(s: Handle) -> CUresult {
    guard(|| begin_capture(s, CU_STREAM_CAPTURE_MODE_GLOBAL))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamBeginCapture_v2(s: Handle, mode: c_uint) -> CUresult {
    guard(|| begin_capture(s, mode))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamEndCapture(s: Handle, graph: *mut Handle) -> CUresult {
    guard(|| {
        let d = driver()?;
        if graph.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let mut o = d.lock();
        let (_, sid) = d.stream(&o, h(s))?;
        let id = sid.ok_or(CUDA_ERROR_ILLEGAL_STATE)?;
        let cap = o
            .streams
            .get_mut(&id)
            .and_then(|st| st.capture.take())
            .ok_or(CUDA_ERROR_ILLEGAL_STATE)?;
        if cap.invalidated {
            unsafe { out(graph, std::ptr::null_mut())? };
            return Err(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
        }
        let gh = o.fresh(Kind::Graph);
        o.graphs
            .insert(id_of(Kind::Graph, gh).expect("graph handle"), cap.nodes);
        unsafe { out(graph, p(gh)) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamIsCapturing(s: Handle, status: *mut c_int) -> CUresult {
    guard(|| {
        let d = driver()?;
        let o = d.lock();
        let (_, sid) = d.stream(&o, h(s))?;
        let st = match sid.and_then(|i| o.streams[&i].capture.as_ref()) {
            None => 0,
            Some(c) if c.invalidated => 2,
            Some(_) => 1,
        };
        unsafe { out(status, st) }
    })
}

// ---------------------------------------------------------------- events

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventCreate(ev: *mut Handle, flags: c_uint) -> CUresult {
    guard(|| {
        let d = driver()?;
        if ev.is_null() || flags & !0xf != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let mut o = d.lock();
        let ctx = d.current(&o)?;
        let hnd = o.fresh(Kind::Event);
        o.events.insert(
            id_of(Kind::Event, hnd).expect("event handle"),
            Event {
                ctx,
                flags,
                at: None,
            },
        );
        unsafe { out(ev, p(hnd)) }
    })
}

fn event_record(ev: Handle, s: Handle) -> Result<(), CUresult> {
    let d = driver()?;
    let mut o = d.lock();
    let eid = id_of(Kind::Event, h(ev)).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
    if !o.events.contains_key(&eid) {
        return Err(CUDA_ERROR_INVALID_HANDLE);
    }
    let (ctx, sid) = d.stream(&o, h(s))?;
    if let Some(c) = d.capture(&mut o, sid) {
        c.nodes.push(Node::EventRecord(eid));
        return Ok(());
    }
    let at = d.stream_ready(&o, ctx, sid).max(now_ns());
    o.events.get_mut(&eid).expect("checked").at = Some(at);
    Ok(())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventRecord(ev: Handle, s: Handle) -> CUresult {
    guard(|| event_record(ev, s))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventRecordWithFlags(ev: Handle, s: Handle, _flags: c_uint) -> CUresult {
    guard(|| event_record(ev, s))
}

fn event_at(ev: Handle) -> Result<(Option<u64>, u32), CUresult> {
    let d = driver()?;
    let o = d.lock();
    let eid = id_of(Kind::Event, h(ev)).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
    let e = o.events.get(&eid).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
    Ok((e.at, e.flags))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventQuery(ev: Handle) -> CUresult {
    guard(|| match event_at(ev)?.0 {
        Some(t) if t > now_ns() => Err(CUDA_ERROR_NOT_READY),
        _ => Ok(()),
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventSynchronize(ev: Handle) -> CUresult {
    guard(|| {
        if let Some(t) = event_at(ev)?.0 {
            sleep_until(t);
        }
        Ok(())
    })
}

fn elapsed(ms: *mut f32, start: Handle, end: Handle) -> Result<(), CUresult> {
    let (a, fa) = event_at(start)?;
    let (b, fb) = event_at(end)?;
    if (fa | fb) & CU_EVENT_DISABLE_TIMING != 0 {
        return Err(CUDA_ERROR_INVALID_HANDLE);
    }
    let (a, b) = (
        a.ok_or(CUDA_ERROR_INVALID_HANDLE)?,
        b.ok_or(CUDA_ERROR_INVALID_HANDLE)?,
    );
    if a.max(b) > now_ns() {
        return Err(CUDA_ERROR_NOT_READY);
    }
    unsafe { out(ms, ((b as f64 - a as f64) / 1e6) as f32) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventElapsedTime(ms: *mut f32, start: Handle, end: Handle) -> CUresult {
    guard(|| elapsed(ms, start, end))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventElapsedTime_v2(
    ms: *mut f32,
    start: Handle,
    end: Handle,
) -> CUresult {
    guard(|| elapsed(ms, start, end))
}

fn event_destroy(ev: Handle) -> Result<(), CUresult> {
    let d = driver()?;
    let mut o = d.lock();
    let eid = id_of(Kind::Event, h(ev)).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
    o.events
        .remove(&eid)
        .map(|_| ())
        .ok_or(CUDA_ERROR_INVALID_HANDLE)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventDestroy(ev: Handle) -> CUresult {
    guard(|| event_destroy(ev))
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventDestroy_v2(ev: Handle) -> CUresult {
    guard(|| event_destroy(ev))
}

// ---------------------------------------------------------------- launches

fn launch(
    func: Handle,
    grid: [u32; 3],
    block: [u32; 3],
    smem: u32,
    s: Handle,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> Result<(), CUresult> {
    let d = driver()?;
    let mut o = d.lock();
    let (_, l) = d.prepare_launch(&o, h(func), grid, block, smem, params, extra)?;
    let (ctx, sid) = d.stream(&o, h(s))?;
    if let Some(c) = d.capture(&mut o, sid) {
        c.nodes.push(Node::Kernel(l));
        return Ok(());
    }
    let ready = d.stream_ready(&o, ctx, sid);
    let end = d.run_launch(&mut o, &l, ready);
    d.set_tail(&mut o, ctx, sid, end);
    Ok(())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLaunchKernel(
    f: Handle,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    smem: c_uint,
    s: Handle,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    if NULL_LAUNCH.load(std::sync::atomic::Ordering::Relaxed) {
        return CUDA_SUCCESS;
    }
    guard(|| launch(f, [gx, gy, gz], [bx, by, bz], smem, s, params, extra))
}

/// `GPUSIM_NULL_LAUNCH`: launches return at once (set by cuInit).
pub static NULL_LAUNCH: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A cooperative launch: the same as `cuLaunchKernel` on gpusim, which
/// places every block of a grid that fits anyway.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLaunchCooperativeKernel(
    f: Handle,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    smem: c_uint,
    s: Handle,
    params: *mut *mut c_void,
) -> CUresult {
    guard(|| {
        launch(
            f,
            [gx, gy, gz],
            [bx, by, bz],
            smem,
            s,
            params,
            std::ptr::null_mut(),
        )
    })
}

/// `CUlaunchConfig`.
#[repr(C)]
pub struct LaunchConfig {
    grid: [c_uint; 3],
    block: [c_uint; 3],
    shared_mem_bytes: c_uint,
    stream: Handle,
    attrs: *mut c_void,
    num_attrs: c_uint,
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLaunchKernelEx(
    cfg: *const LaunchConfig,
    f: Handle,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    guard(|| {
        if cfg.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: non-null config supplied by the caller.
        let c = unsafe { &*cfg };
        launch(
            f,
            c.grid,
            c.block,
            c.shared_mem_bytes,
            c.stream,
            params,
            extra,
        )
    })
}

// ---------------------------------------------------------------- graphs

fn instantiate(exec: *mut Handle, graph: Handle) -> Result<(), CUresult> {
    let d = driver()?;
    if exec.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut o = d.lock();
    let gid = id_of(Kind::Graph, h(graph)).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
    let nodes = o.graphs.get(&gid).ok_or(CUDA_ERROR_INVALID_HANDLE)?.clone();
    let eh = o.fresh(Kind::GraphExec);
    o.execs
        .insert(id_of(Kind::GraphExec, eh).expect("exec handle"), nodes);
    unsafe { out(exec, p(eh)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphInstantiateWithFlags(
    exec: *mut Handle,
    graph: Handle,
    _flags: u64,
) -> CUresult {
    guard(|| instantiate(exec, graph))
}

/// The CUDA 11 form, with an error node and log buffer (left untouched).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphInstantiate_v2(
    exec: *mut Handle,
    graph: Handle,
    _err_node: *mut Handle,
    _log: *mut c_char,
    _log_size: usize,
) -> CUresult {
    guard(|| instantiate(exec, graph))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphLaunch(exec: Handle, s: Handle) -> CUresult {
    guard(|| {
        let d = driver()?;
        let mut o = d.lock();
        let eid = id_of(Kind::GraphExec, h(exec)).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        let nodes = o.execs.get(&eid).ok_or(CUDA_ERROR_INVALID_HANDLE)?.clone();
        let (ctx, sid) = d.stream(&o, h(s))?;
        if let Some(c) = d.capture(&mut o, sid) {
            c.nodes.extend(nodes);
            return Ok(());
        }
        d.run_nodes(&mut o, ctx, sid, &nodes);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphDestroy(graph: Handle) -> CUresult {
    guard(|| {
        let d = driver()?;
        let id = id_of(Kind::Graph, h(graph)).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        d.lock()
            .graphs
            .remove(&id)
            .map(|_| ())
            .ok_or(CUDA_ERROR_INVALID_HANDLE)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphExecDestroy(exec: Handle) -> CUresult {
    guard(|| {
        let d = driver()?;
        let id = id_of(Kind::GraphExec, h(exec)).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        d.lock()
            .execs
            .remove(&id)
            .map(|_| ())
            .ok_or(CUDA_ERROR_INVALID_HANDLE)
    })
}

// ---------------------------------------------------------------- cuGetProcAddress

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetProcAddress(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
) -> CUresult {
    guard(|| match procaddr::lookup(symbol, pfn, version, flags).0 {
        CUDA_SUCCESS => Ok(()),
        e => Err(e),
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetProcAddress_v2(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
    status: *mut c_int,
) -> CUresult {
    guard(|| {
        let (code, st) = procaddr::lookup(symbol, pfn, version, flags);
        if !status.is_null() {
            unsafe { out(status, st)? };
        }
        if code == CUDA_SUCCESS {
            Ok(())
        } else {
            Err(code)
        }
    })
}
