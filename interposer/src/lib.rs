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
//! Modules: `budget` (the SM-time budget and pause), `memory` (every
//! allocation path counted by kind, the device-memory limit), `priority` (best-effort
//! launches held while latency-sensitive work runs on the GPU), `resolve` (real functions, `dlsym` and `cuGetProcAddress`
//! substitution), `wrappers` (the entry points), `segment`, `sampler` (event
//! timing, the queue, the collector's arithmetic), `collector` (its thread),
//! `fork`, `lock`, `cuda` (types).

mod budget;
mod collector;
mod cuda;
mod fork;
mod lock;
mod memory;
mod priority;
mod resolve;
mod sampler;
mod segment;
mod wrappers;

use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// Counts heap allocations made by the host's threads inside the shim (the
/// collector's own are not counted), so a benchmark can show the launch path
/// allocates nothing.
struct CountingAllocator;

static ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
thread_local! {
    static IS_COLLECTOR: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

// SAFETY: forwards to the system allocator unchanged.
unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if !IS_COLLECTOR.try_with(|c| c.get()).unwrap_or(true) {
            ALLOCATIONS.fetch_add(1, Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Heap allocations the shim has made on the host's threads so far.
#[unsafe(no_mangle)]
pub extern "C" fn vagus_shim_allocations() -> u64 {
    ALLOCATIONS.load(Relaxed)
}

/// Marks the calling thread as the collector (its allocations are its own).
fn mark_collector_thread() {
    IS_COLLECTOR.with(|c| c.set(true));
}

static WARNED_PASSTHROUGH: AtomicBool = AtomicBool::new(false);
static WARNED_CONTROL: AtomicBool = AtomicBool::new(false);
static WARNED_BUDGET: AtomicBool = AtomicBool::new(false);
static WARNED_PRIORITY: AtomicBool = AtomicBool::new(false);
static WARNED_MEMORY: AtomicBool = AtomicBool::new(false);

/// CLOCK_MONOTONIC in ns (through the vDSO: no system call).
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into our timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Prints a warning the first time only.
fn warn_once(flag: &AtomicBool, msg: &str) {
    if !flag.swap(true, Relaxed) {
        eprintln!("vagus shim (pid {}): {msg}", std::process::id());
    }
}

/// The shim's `dlsym`. Lookups with a handle (or `RTLD_DEFAULT`) get the real
/// answer, except that wrapped driver entry points come back as their
/// wrappers. `RTLD_NEXT` lookups are answered relative to the *caller's*
/// object, as glibc would answer them — forwarding them from here would make
/// them relative to the shim and hand a library its own function back
/// (infinite recursion in malloc or driver wrappers that other preloaded
/// libraries install). So this entry point only captures its return address
/// and jumps to the implementation.
///
/// # Safety
/// As `dlsym(3)`.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    core::arch::naked_asm!("mov rdx, [rsp]", "jmp {imp}", imp = sym dlsym_from);
}

/// As the x86-64 version: the return address is in the link register.
///
/// # Safety
/// As `dlsym(3)`.
#[cfg(target_arch = "aarch64")]
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    core::arch::naked_asm!("mov x2, x30", "b {imp}", imp = sym dlsym_from);
}

/// `dlsym` for a caller whose return address is `caller`.
unsafe extern "C" fn dlsym_from(
    handle: *mut c_void,
    symbol: *const c_char,
    caller: *const c_void,
) -> *mut c_void {
    if symbol.is_null() {
        return std::ptr::null_mut();
    }
    if handle == libc::RTLD_NEXT {
        return resolve::next_after(caller, symbol);
    }
    let Some(real) = resolve::real_dlsym() else {
        return std::ptr::null_mut();
    };
    // SAFETY: forwarding the caller's arguments.
    let found = unsafe { real(handle, symbol) };
    if found.is_null() {
        return found;
    }
    resolve::substitute_by_name(symbol, found)
}
