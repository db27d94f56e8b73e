//! `libvagus_shim.so`: preloaded into inference processes, it interposes the
//! CUDA driver API, counts and times kernels, and publishes what it sees in a
//! shared-memory segment (`vagus_proto::shm`) for the agent and `vagus run`.
//!
//! Rules it lives by (the host program must never notice it):
//! - the launch path takes no lock, makes no system call and allocates
//!   nothing (sampled launches add two event records and a queue push);
//! - every name it does not wrap, and every `cuGetProcAddress` answer it does
//!   not recognise exactly, passes through untouched;
//! - no segment directory, or any failure setting up, makes it a
//!   pass-through with one warning on stderr;
//! - fork gives the child its own segment and collector; exit flushes
//!   statistics for at most a quarter second.
//!
//! Modules: `budget` (the SM-time budget and pause), `resolve` (real functions, `dlsym` and `cuGetProcAddress`
//! substitution), `wrappers` (the entry points), `segment`, `sampler` (event
//! timing, the queue, the collector's arithmetic), `collector` (its thread),
//! `fork`, `lock`, `cuda` (types).

mod budget;
mod collector;
mod cuda;
mod fork;
mod lock;
mod resolve;
mod sampler;
mod segment;
mod wrappers;

use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

static WARNED_PASSTHROUGH: AtomicBool = AtomicBool::new(false);
static WARNED_CONTROL: AtomicBool = AtomicBool::new(false);
static WARNED_BUDGET: AtomicBool = AtomicBool::new(false);

/// Prints a warning the first time only.
fn warn_once(flag: &AtomicBool, msg: &str) {
    if !flag.swap(true, Relaxed) {
        eprintln!("vagus shim (pid {}): {msg}", std::process::id());
    }
}

/// The shim's `dlsym`: the real answer, except that wrapped driver entry
/// points come back as their wrappers.
///
/// # Safety
/// As `dlsym(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    let Some(real) = resolve::real_dlsym() else {
        return std::ptr::null_mut();
    };
    // SAFETY: forwarding the caller's arguments.
    let found = unsafe { real(handle, symbol) };
    if found.is_null() || symbol.is_null() {
        return found;
    }
    resolve::substitute_by_name(symbol, found)
}
