//! `loop_bench`: `vagus bench loop`, the sharing policies side by side.
//!
//! The rest: shared set-up for the launch-overhead benchmarks: one process holding
//! gpusim's driver (in its null-launch mode, where `cuLaunchKernel` returns at
//! once) and the shim, so the same launch can go straight to the driver or
//! through the shim's wrapper, and the difference is what the shim adds.

pub mod loop_bench;

use std::ffi::{CStr, c_int, c_uint, c_void};
use std::path::{Path, PathBuf};

pub type LaunchFn = unsafe extern "C" fn(
    *mut c_void,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    *mut c_void,
    *mut *mut c_void,
    *mut *mut c_void,
) -> c_int;

/// What a benchmark needs to launch.
pub struct Bench {
    pub direct: LaunchFn,
    pub shim: LaunchFn,
    pub func: usize,
    allocations: unsafe extern "C" fn() -> u64,
    pub segment_dir: PathBuf,
}

/// The directory holding the libraries built with the same profile as the
/// running benchmark (target/release for `cargo bench`).
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("benchmark path");
    let dir = exe.parent().expect("exe dir");
    if dir.ends_with("deps") {
        dir.parent().expect("profile dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

unsafe fn open(path: &Path) -> *mut c_void {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: loading a library we built.
    let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(
        !h.is_null(),
        "cannot load {} (run `cargo build --release --workspace` first)",
        path.display()
    );
    h
}

unsafe fn sym<T: Copy>(h: *mut c_void, name: &CStr) -> T {
    // SAFETY: the caller names a symbol of type T.
    let p = unsafe { libc::dlsym(h, name.as_ptr()) };
    assert!(!p.is_null(), "missing {name:?}");
    unsafe { std::mem::transmute_copy(&p) }
}

impl Bench {
    /// Loads gpusim (null launches) and the shim, and prepares a kernel.
    /// Call before starting other threads: it sets environment variables.
    pub fn new() -> Bench {
        let dir = lib_dir();
        let tmp = std::env::temp_dir().join(format!("vagus-bench-{}", std::process::id()));
        let segment_dir = tmp.join("segments");
        std::fs::create_dir_all(&segment_dir).unwrap();
        // SAFETY: single-threaded set-up, before any thread reads the environment.
        unsafe {
            std::env::set_var("GPUSIM_NULL_LAUNCH", "1");
            std::env::set_var("GPUSIM_STATE", tmp.join("gpusim.state"));
            std::env::set_var("VAGUS_SHM_DIR", &segment_dir);
        }
        // SAFETY: loading and calling our own libraries' C entry points.
        unsafe {
            let cuda = open(&dir.join("libgpusim_cuda.so"));
            let shim = open(&dir.join("libvagus_shim.so"));
            let init: unsafe extern "C" fn(c_uint) -> c_int = sym(cuda, c"cuInit");
            let retain: unsafe extern "C" fn(*mut *mut c_void, c_int) -> c_int =
                sym(cuda, c"cuDevicePrimaryCtxRetain");
            let set_current: unsafe extern "C" fn(*mut c_void) -> c_int =
                sym(cuda, c"cuCtxSetCurrent");
            let load: unsafe extern "C" fn(*mut *mut c_void, *const c_void) -> c_int =
                sym(cuda, c"cuModuleLoadData");
            let get: unsafe extern "C" fn(*mut *mut c_void, *mut c_void, *const i8) -> c_int =
                sym(cuda, c"cuModuleGetFunction");
            assert_eq!(init(0), 0);
            let mut ctx = std::ptr::null_mut();
            assert_eq!(retain(&mut ctx, 0), 0);
            assert_eq!(set_current(ctx), 0);
            let ptx = std::ffi::CString::new(gpusim::ptx::BUSY_WAIT_PTX).unwrap();
            let mut module = std::ptr::null_mut();
            assert_eq!(load(&mut module, ptx.as_ptr() as *const c_void), 0);
            let mut func = std::ptr::null_mut();
            assert_eq!(get(&mut func, module, c"vagus_busy_wait".as_ptr()), 0);
            Bench {
                direct: sym(cuda, c"cuLaunchKernel"),
                shim: sym(shim, c"cuLaunchKernel"),
                func: func as usize,
                allocations: sym(shim, c"vagus_shim_allocations"),
                segment_dir,
            }
        }
    }

    /// One launch through `f`.
    #[inline(always)]
    pub fn launch(&self, f: LaunchFn) {
        let mut cycles = 1000u64;
        let mut params = [&mut cycles as *mut u64 as *mut c_void];
        // SAFETY: a valid launch of the prepared kernel.
        let r = unsafe {
            f(
                self.func as *mut c_void,
                1,
                1,
                1,
                32,
                1,
                1,
                0,
                std::ptr::null_mut(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        };
        debug_assert_eq!(r, 0);
    }

    /// Heap allocations the shim made on this process's (non-collector) threads.
    pub fn shim_allocations(&self) -> u64 {
        // SAFETY: a plain getter exported by the shim.
        unsafe { (self.allocations)() }
    }

    /// Launches the shim counted in its segment.
    pub fn shim_launches(&self) -> u64 {
        use std::os::fd::AsRawFd;
        let path = self.segment_dir.join(format!("{}.shm", std::process::id()));
        let Ok(f) = std::fs::File::open(&path) else {
            return 0;
        };
        let len = vagus_proto::shm::SEGMENT_BYTES;
        // SAFETY: read-only mapping of the shim's segment, which is `len` bytes.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            let n = (*(p as *const vagus_proto::shm::Segment)).stats.launches();
            libc::munmap(p, len);
            n
        }
    }
}

impl Default for Bench {
    fn default() -> Self {
        Self::new()
    }
}
