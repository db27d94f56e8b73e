//! Finding the real driver functions, and handing out the shim's wrappers in
//! their place.
//!
//! Clients reach the driver three ways, and each is covered:
//! - linked against libcuda: the shim exports the wrapped names, and the
//!   wrapper finds the real function with `dlsym(RTLD_NEXT, name)`;
//! - `dlopen` + `dlsym` (cudarc, numba, ctypes): the shim's `dlsym` asks the
//!   real one, and for a wrapped name returns the wrapper, remembering what the
//!   real one answered;
//! - `cuGetProcAddress` (cudart): the wrapper asks the real one with the same
//!   version and flags, and replaces the answer only when it is exactly the
//!   real function of a wrapped variant (`_v2`, `_ptsz`, … are distinct
//!   wrappers). Everything else, `cuGetExportTable` included, passes through
//!   untouched.

use std::ffi::{CStr, c_char, c_void};
use std::sync::atomic::{AtomicUsize, Ordering::*};

/// One wrapped entry point.
pub struct Hook {
    /// The exported name, NUL-terminated.
    pub name: &'static str,
    wrapper: *const (),
    real: AtomicUsize,
}

// SAFETY: `wrapper` is a function address, immutable and valid everywhere.
unsafe impl Sync for Hook {}

impl Hook {
    pub const fn new(name: &'static str, wrapper: *const ()) -> Hook {
        Hook {
            name,
            wrapper,
            real: AtomicUsize::new(0),
        }
    }

    fn cname(&self) -> &CStr {
        CStr::from_bytes_with_nul(self.name.as_bytes()).expect("hook names are NUL-terminated")
    }

    /// The real function, resolved on first use; 0 if the driver has none.
    #[inline]
    pub fn real(&self) -> usize {
        match self.real.load(Relaxed) {
            0 => self.resolve(),
            p => p,
        }
    }

    #[cold]
    fn resolve(&self) -> usize {
        let p = driver_symbol(self.cname());
        if p != 0 && p != self.wrapper as usize {
            let _ = self.real.compare_exchange(0, p, Relaxed, Relaxed);
        }
        self.real.load(Relaxed)
    }

    /// Takes `p` as this hook's real function if none is known yet; returns
    /// whether the wrapper now forwards to `p`.
    fn adopt(&self, p: usize) -> bool {
        if p == self.wrapper as usize {
            return false;
        }
        match self.real.compare_exchange(0, p, Relaxed, Relaxed) {
            Ok(_) => true,
            Err(existing) => existing == p,
        }
    }
}

/// The real `dlsym`, found with `dlvsym` so that it never comes back to us.
pub fn real_dlsym() -> Option<unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void> {
    static REAL: AtomicUsize = AtomicUsize::new(0);
    let mut p = REAL.load(Relaxed);
    if p == 0 {
        for version in [c"GLIBC_2.34", c"GLIBC_2.2.5"] {
            // SAFETY: dlvsym with constant, NUL-terminated names.
            p = unsafe { libc::dlvsym(libc::RTLD_NEXT, c"dlsym".as_ptr(), version.as_ptr()) }
                as usize;
            if p != 0 {
                break;
            }
        }
        REAL.store(p, Relaxed);
    }
    // SAFETY: p is libc's dlsym, whose signature this is.
    (p != 0).then(|| unsafe { std::mem::transmute::<usize, unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void>(p) })
}

/// The loaded driver library's handle (`RTLD_NOLOAD`: never loads it).
fn driver_handle() -> *mut c_void {
    static HANDLE: AtomicUsize = AtomicUsize::new(0);
    let h = HANDLE.load(Relaxed);
    if h != 0 {
        return h as *mut c_void;
    }
    // SAFETY: dlopen with RTLD_NOLOAD only returns an already-loaded library
    // (matched by name or soname).
    let h = unsafe {
        libc::dlopen(
            c"libcuda.so.1".as_ptr(),
            libc::RTLD_LAZY | libc::RTLD_NOLOAD,
        )
    };
    if !h.is_null() {
        HANDLE.store(h as usize, Relaxed);
    }
    h
}

/// A driver symbol: from the next object in global scope, else from the
/// loaded libcuda (which a dlopen(RTLD_LOCAL) client keeps out of global scope).
pub fn driver_symbol(name: &CStr) -> usize {
    let Some(dlsym) = real_dlsym() else { return 0 };
    // SAFETY: the real dlsym with a NUL-terminated name.
    let p = unsafe { dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
    if p != 0 {
        return p;
    }
    let h = driver_handle();
    if h.is_null() {
        return 0;
    }
    // SAFETY: as above, on a live handle.
    unsafe { dlsym(h, name.as_ptr()) as usize }
}

/// The replacement for what `dlsym` found for `symbol`.
pub fn substitute_by_name(symbol: *const c_char, found: *mut c_void) -> *mut c_void {
    // SAFETY: dlsym's caller passes a NUL-terminated name; check the prefix first.
    let name = unsafe { CStr::from_ptr(symbol) }.to_bytes();
    if !name.starts_with(b"cu") && !name.starts_with(b"nvml") {
        return found;
    }
    for h in crate::wrappers::HOOKS.iter() {
        if &h.name.as_bytes()[..h.name.len() - 1] == name {
            return if h.adopt(found as usize) {
                h.wrapper as *mut c_void
            } else {
                found
            };
        }
    }
    found
}

/// The replacement for a pointer `cuGetProcAddress` returned.
pub fn substitute_by_pointer(found: *mut c_void) -> *mut c_void {
    let p = found as usize;
    let hooks = &crate::wrappers::HOOKS;
    if let Some(h) = hooks.iter().find(|h| h.real.load(Relaxed) == p) {
        return h.wrapper as *mut c_void;
    }
    // Learn every variant's real address once, then look again.
    for h in hooks.iter() {
        h.real();
    }
    hooks
        .iter()
        .find(|h| h.real.load(Relaxed) == p)
        .map_or(found, |h| h.wrapper as *mut c_void)
}

/// Objects loaded after the caller's, at most this many, are searched.
const MAX_OBJECTS: usize = 512;

struct Walk {
    caller: usize,
    seen_caller: bool,
    after: [(*const c_char, usize); MAX_OBJECTS],
    n: usize,
}

unsafe extern "C" fn visit(
    info: *mut libc::dl_phdr_info,
    _size: usize,
    data: *mut c_void,
) -> libc::c_int {
    // SAFETY: dl_iterate_phdr passes a valid info and our Walk.
    let (info, walk) = unsafe { (&*info, &mut *(data as *mut Walk)) };
    if walk.seen_caller {
        if walk.n < MAX_OBJECTS {
            walk.after[walk.n] = (info.dlpi_name, info.dlpi_addr as usize);
            walk.n += 1;
        }
        return 0;
    }
    // SAFETY: the program headers of a loaded object.
    let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
    let base = info.dlpi_addr as usize;
    walk.seen_caller = phdrs.iter().any(|ph| {
        let start = base + ph.p_vaddr as usize;
        ph.p_type == libc::PT_LOAD && (start..start + ph.p_memsz as usize).contains(&walk.caller)
    });
    0
}

/// `dlsym(RTLD_NEXT, symbol)` as seen from the object containing `caller`:
/// the first object loaded after it that itself defines `symbol`. Allocates
/// nothing (it may be called while an allocator initialises).
pub fn next_after(caller: *const c_void, symbol: *const c_char) -> *mut c_void {
    let Some(real) = real_dlsym() else {
        return std::ptr::null_mut();
    };
    let mut walk = Walk {
        caller: caller as usize,
        seen_caller: false,
        after: [(std::ptr::null(), 0); MAX_OBJECTS],
        n: 0,
    };
    // SAFETY: iterating loaded objects with a callback that only reads them.
    unsafe { libc::dl_iterate_phdr(Some(visit), &mut walk as *mut Walk as *mut c_void) };
    if !walk.seen_caller {
        // Code outside any object (JIT): the best answer is the shim's next.
        // SAFETY: the real dlsym with the caller's arguments.
        return unsafe { real(libc::RTLD_NEXT, symbol) };
    }
    for &(name, base) in &walk.after[..walk.n] {
        // SAFETY: names from dl_iterate_phdr are NUL-terminated; the vDSO and
        // unnamed objects do not open and are skipped.
        unsafe {
            if name.is_null() || *name == 0 {
                continue;
            }
            let h = libc::dlopen(name, libc::RTLD_LAZY | libc::RTLD_NOLOAD);
            if h.is_null() {
                continue;
            }
            let p = real(h, symbol);
            libc::dlclose(h);
            let mut info: libc::Dl_info = std::mem::zeroed();
            if !p.is_null() && libc::dladdr(p, &mut info) != 0 && info.dli_fbase as usize == base {
                return p;
            }
        }
    }
    std::ptr::null_mut()
}
