//! The device state that every process on the host shares: one file
//! (`SimConfig::state_path`, by default under /dev/shm), memory-mapped by each
//! client of the driver and NVML libraries and by `vagus gpusim status`.
//!
//! The layout is `#[repr(C)]`, versioned, and all-zero is a valid empty
//! state. Writers take the file's `flock` (which the kernel drops if a process
//! dies holding it) plus a process-local mutex; the counters readers poll are
//! atomics.

use crate::clock::now_ns;
use crate::config::{DeviceConfig, MAX_DEVICES, MAX_SMS, SimConfig};
use crate::schedule::{Placement, Traffic, place_kernel};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

pub const MAGIC: u64 = 0x4750_5553_494d_5631; // "GPUSIMV1"
pub const VERSION: u32 = 2;
/// Processes that may hold a context on one device at a time.
pub const MAX_PROCS: usize = 64;
/// Kernel records kept per device for utilisation sampling.
pub const RING: usize = 16384;
/// Lanes a device's memory bandwidth is divided into (see [`crate::schedule`]).
pub const MEMORY_LANES: usize = 64;

#[repr(C)]
pub struct Header {
    magic: AtomicU64,
    version: u32,
    device_count: u32,
    created_ns: u64,
    _reserved: [u64; 5],
}

/// One process with a context on a device.
#[repr(C)]
pub struct ProcSlot {
    pub pid: AtomicU32,
    /// Percentage of the SMs this process may use (100 without MPS).
    pub sm_percent: AtomicU32,
    pub mem_used: AtomicU64,
    pub sm_ns: AtomicU64,
    /// Non-zero for an MPS client: the PID of its MPS server.
    pub mps_server: AtomicU32,
    _pad: u32,
}

/// One kernel as it ran.
#[repr(C)]
pub struct KernelRecord {
    pub start_ns: AtomicU64,
    pub end_ns: AtomicU64,
    pub sm_ns: AtomicU64,
    pub pid: AtomicU32,
    pub sms: AtomicU32,
}

#[repr(C)]
pub struct DeviceSlot {
    name: [u8; 96],
    pub uuid: [u8; 16],
    sms: u32,
    clock_mhz: u32,
    memory_clock_mhz: u32,
    tdp_watts: u32,
    idle_watts: u32,
    max_threads_per_sm: u32,
    max_blocks_per_sm: u32,
    registers_per_sm: u32,
    shared_memory_per_sm: u32,
    shared_memory_per_block_optin: u32,
    reserved_shared_memory_per_block: u32,
    cc_major: u32,
    cc_minor: u32,
    _pad: u32,
    memory_bytes: u64,
    /// Device memory bandwidth a streaming kernel reaches, and what one SM
    /// alone can draw (bytes per simulated second).
    memory_bytes_per_s: u64,
    sm_memory_bytes_per_s: u64,
    pub mem_used: AtomicU64,
    /// SM-nanoseconds of all kernels placed so far (some may lie in the future).
    pub busy_sm_ns: AtomicU64,
    pub kernels: AtomicU64,
    ring_head: AtomicU64,
    sm_free_at: [AtomicU64; MAX_SMS],
    lane_free_at: [AtomicU64; MEMORY_LANES],
    pub procs: [ProcSlot; MAX_PROCS],
    ring: [KernelRecord; RING],
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("gpusim state file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "gpusim state file {path} has layout version {found}, this build uses {VERSION}; remove the file"
    )]
    Version { path: PathBuf, found: u32 },
    #[error(
        "gpusim state file {path} is {len} bytes, too short for its {devices} devices; remove the file"
    )]
    Truncated {
        path: PathBuf,
        len: u64,
        devices: u32,
    },
    #[error("device {0} has no free process slot ({MAX_PROCS} processes already hold contexts)")]
    TooManyProcesses(usize),
}

/// A process's view of the shared state.
pub struct SharedState {
    base: *mut u8,
    len: usize,
    file: File,
    path: PathBuf,
    local: Mutex<()>,
}

// SAFETY: the mapping is shared memory accessed through atomics or under the lock.
unsafe impl Send for SharedState {}
unsafe impl Sync for SharedState {}

fn file_len(devices: usize) -> usize {
    std::mem::size_of::<Header>() + devices * std::mem::size_of::<DeviceSlot>()
}

struct FileLock<'a>(&'a File);
impl<'a> FileLock<'a> {
    fn new(f: &'a File) -> FileLock<'a> {
        // SAFETY: flock on a descriptor we own; EINTR is retried.
        while unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break;
            }
        }
        FileLock(f)
    }
}
impl Drop for FileLock<'_> {
    fn drop(&mut self) {
        // SAFETY: releases the lock taken in new.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// True if a process with this PID exists.
pub fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    pid != 0
        && (unsafe { libc::kill(pid as i32, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

fn uuid_for(path: &Path, index: usize) -> [u8; 16] {
    let mut h: u64 = 0xcbf29ce484222325;
    let mut out = [0u8; 16];
    for (round, chunk) in out.chunks_mut(8).enumerate() {
        for b in format!("{}#{index}#{round}", path.display()).bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100000001b3);
        }
        chunk.copy_from_slice(&h.to_le_bytes());
    }
    out[6] = (out[6] & 0x0f) | 0x40;
    out[8] = (out[8] & 0x3f) | 0x80;
    out
}

impl SharedState {
    /// Opens the state file named by `cfg`, creating and initialising it from
    /// `cfg` if it does not exist yet. An existing file keeps its devices:
    /// whoever created it decided what the host has.
    pub fn open(cfg: &SimConfig) -> Result<SharedState, StateError> {
        let path = cfg.state_path.clone();
        let io = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let _g = FileLock::new(&file);
        let len = file.metadata().map_err(io)?.len();
        let mut header_buf = [0u8; std::mem::size_of::<Header>()];
        let fresh = len < header_buf.len() as u64 || {
            use std::os::unix::fs::FileExt;
            file.read_exact_at(&mut header_buf, 0).map_err(io)?;
            u64::from_ne_bytes(header_buf[..8].try_into().unwrap()) != MAGIC
        };
        let devices = if fresh {
            let n = cfg.devices.len().min(MAX_DEVICES);
            file.set_len(0).map_err(io)?;
            file.set_len(file_len(n) as u64).map_err(io)?;
            n
        } else {
            let version = u32::from_ne_bytes(header_buf[8..12].try_into().unwrap());
            let n = u32::from_ne_bytes(header_buf[12..16].try_into().unwrap());
            if version != VERSION {
                return Err(StateError::Version {
                    path,
                    found: version,
                });
            }
            if n as usize > MAX_DEVICES || len < file_len(n as usize) as u64 {
                return Err(StateError::Truncated {
                    path,
                    len,
                    devices: n,
                });
            }
            n as usize
        };
        let map_len = file_len(devices);
        // SAFETY: mapping a file we hold open, of at least map_len bytes.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io(std::io::Error::last_os_error()));
        }
        let s = SharedState {
            base: base as *mut u8,
            len: map_len,
            file: file.try_clone().map_err(io)?,
            path,
            local: Mutex::new(()),
        };
        if fresh {
            s.initialise(cfg);
        }
        drop(_g);
        Ok(s)
    }

    fn initialise(&self, cfg: &SimConfig) {
        // SAFETY: we hold the file lock and the file is freshly zeroed; no one
        // reads a device before the magic is set.
        let h = unsafe { &mut *(self.base as *mut Header) };
        h.version = VERSION;
        h.device_count = cfg.devices.len().min(MAX_DEVICES) as u32;
        h.created_ns = now_ns();
        for (i, d) in cfg.devices.iter().enumerate().take(MAX_DEVICES) {
            // SAFETY: as above, index within the mapping.
            let s = unsafe { &mut *self.device_ptr(i) };
            let n = d.name.len().min(95);
            s.name[..n].copy_from_slice(&d.name.as_bytes()[..n]);
            s.uuid = uuid_for(&self.path, i);
            s.sms = d.sms;
            s.clock_mhz = d.clock_mhz;
            s.memory_clock_mhz = d.memory_clock_mhz;
            s.tdp_watts = d.tdp_watts;
            s.idle_watts = d.idle_watts;
            s.max_threads_per_sm = d.max_threads_per_sm;
            s.max_blocks_per_sm = d.max_blocks_per_sm;
            s.registers_per_sm = d.registers_per_sm;
            s.shared_memory_per_sm = d.shared_memory_per_sm;
            s.shared_memory_per_block_optin = d.shared_memory_per_block_optin;
            s.reserved_shared_memory_per_block = d.reserved_shared_memory_per_block;
            s.cc_major = d.compute_capability.0;
            s.cc_minor = d.compute_capability.1;
            s.memory_bytes = d.memory_bytes;
            s.memory_bytes_per_s = (d.memory_gbps * 1e9) as u64;
            s.sm_memory_bytes_per_s = (d.sm_memory_gbps * 1e9) as u64;
        }
        h.magic.store(MAGIC, std::sync::atomic::Ordering::Release);
    }

    fn device_ptr(&self, i: usize) -> *mut DeviceSlot {
        let off = std::mem::size_of::<Header>() + i * std::mem::size_of::<DeviceSlot>();
        assert!(off + std::mem::size_of::<DeviceSlot>() <= self.len);
        // SAFETY: in bounds, checked above.
        unsafe { self.base.add(off) as *mut DeviceSlot }
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping starts with a Header.
        unsafe { &*(self.base as *const Header) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn device_count(&self) -> usize {
        self.header().device_count as usize
    }

    pub fn created_ns(&self) -> u64 {
        self.header().created_ns
    }

    /// Device `i`; `None` past the last.
    pub fn device(&self, i: usize) -> Option<&DeviceSlot> {
        // SAFETY: in bounds; the slot lives as long as the mapping.
        (i < self.device_count()).then(|| unsafe { &*self.device_ptr(i) })
    }

    /// Runs `f` holding the host-wide state lock.
    pub fn locked<T>(&self, f: impl FnOnce() -> T) -> T {
        let _l = self.local.lock().unwrap_or_else(|e| e.into_inner());
        let _g = FileLock::new(&self.file);
        f()
    }

    /// Claims a process slot on `dev` for `pid` (or returns the one it has),
    /// first releasing slots whose processes have died.
    pub fn register_process(
        &self,
        dev: usize,
        pid: u32,
        sm_percent: u32,
        mps_server: u32,
    ) -> Result<usize, StateError> {
        let d = self.device(dev).ok_or(StateError::TooManyProcesses(dev))?;
        self.locked(|| {
            d.reap_dead();
            if let Some(i) = d.procs.iter().position(|p| p.pid.load(Relaxed) == pid) {
                return Ok(i);
            }
            let i = d
                .procs
                .iter()
                .position(|p| p.pid.load(Relaxed) == 0)
                .ok_or(StateError::TooManyProcesses(dev))?;
            let p = &d.procs[i];
            p.mem_used.store(0, Relaxed);
            p.sm_ns.store(0, Relaxed);
            p.sm_percent.store(sm_percent, Relaxed);
            p.mps_server.store(mps_server, Relaxed);
            p.pid.store(pid, Relaxed);
            Ok(i)
        })
    }

    /// Releases `pid`'s slot on `dev` and the memory it still held.
    pub fn unregister_process(&self, dev: usize, pid: u32) {
        if let Some(d) = self.device(dev) {
            self.locked(|| {
                if let Some(p) = d.procs.iter().find(|p| p.pid.load(Relaxed) == pid) {
                    d.release(p);
                }
            });
        }
    }

    /// Places a kernel on `dev`'s SMs, and the `bytes` it moves on the
    /// device's memory lanes; see [`crate::schedule::place_kernel`].
    /// `ns_per_s` is wall nanoseconds per simulated second (the time scale).
    #[allow(clippy::too_many_arguments)]
    pub fn place_kernel(
        &self,
        dev: usize,
        proc_slot: usize,
        t0: u64,
        sm_waves: u64,
        wave_ns: u64,
        allowed_sms: u32,
        bytes: u64,
        ns_per_s: f64,
    ) -> Placement {
        let d = self.device(dev).expect("device index checked by caller");
        let traffic = (bytes > 0 && d.memory_bytes_per_s > 0).then(|| {
            let lane_bytes_per_s = d.memory_bytes_per_s as f64 / MEMORY_LANES as f64;
            Traffic {
                lane_ns: (bytes as f64 / lane_bytes_per_s * ns_per_s).ceil() as u64,
                lanes_per_sm: d.sm_memory_bytes_per_s as f64 / lane_bytes_per_s,
            }
        });
        self.locked(|| {
            let n = d.sms as usize;
            let load = |a: &[AtomicU64]| a.iter().map(|a| a.load(Relaxed)).collect::<Vec<u64>>();
            let (mut free, mut lanes) = (load(&d.sm_free_at[..n]), load(&d.lane_free_at));
            let p = place_kernel(
                &mut free,
                &mut lanes,
                t0,
                sm_waves,
                wave_ns,
                allowed_sms as usize,
                traffic,
            );
            for (a, v) in d.sm_free_at[..n].iter().zip(free) {
                a.store(v, Relaxed);
            }
            for (a, v) in d.lane_free_at.iter().zip(lanes) {
                a.store(v, Relaxed);
            }
            let proc = &d.procs[proc_slot.min(MAX_PROCS - 1)];
            proc.sm_ns.fetch_add(p.sm_ns, Relaxed);
            d.busy_sm_ns.fetch_add(p.sm_ns, Relaxed);
            d.kernels.fetch_add(1, Relaxed);
            if p.sms_used > 0 {
                let r = &d.ring[(d.ring_head.fetch_add(1, Relaxed) as usize) % RING];
                r.start_ns.store(p.start_ns, Relaxed);
                r.end_ns.store(p.end_ns, Relaxed);
                r.sm_ns.store(p.sm_ns, Relaxed);
                r.pid.store(proc.pid.load(Relaxed), Relaxed);
                r.sms.store(p.sms_used, Relaxed);
            }
            p
        })
    }

    /// Kernel intervals (start, end, sm_ns, pid) that overlap `[from, to)`.
    pub fn kernels_between(&self, dev: usize, from: u64, to: u64) -> Vec<(u64, u64, u64, u32)> {
        let Some(d) = self.device(dev) else {
            return Vec::new();
        };
        self.locked(|| {
            let head = d.ring_head.load(Relaxed) as usize;
            let n = head.min(RING);
            (0..n)
                .map(|k| &d.ring[(head - 1 - k) % RING])
                .map(|r| {
                    (
                        r.start_ns.load(Relaxed),
                        r.end_ns.load(Relaxed),
                        r.sm_ns.load(Relaxed),
                        r.pid.load(Relaxed),
                    )
                })
                .filter(|&(s, e, _, _)| e > from && s < to)
                .collect()
        })
    }

    /// Busy fractions of `dev` over `[now - window, now)`: the share of time
    /// any kernel ran (NVML's "GPU utilisation") and the share of SM-time used.
    pub fn utilization(
        &self,
        dev: usize,
        window_ns: u64,
        now: u64,
        pid: Option<u32>,
    ) -> (f64, f64) {
        let Some(d) = self.device(dev) else {
            return (0.0, 0.0);
        };
        let from = now.saturating_sub(window_ns);
        let mut iv = self.kernels_between(dev, from, now);
        if let Some(pid) = pid {
            iv.retain(|k| k.3 == pid);
        }
        let mut sm_ns = 0.0;
        let mut spans: Vec<(u64, u64)> = Vec::with_capacity(iv.len());
        for (s, e, w, _) in iv {
            let (cs, ce) = (s.max(from), e.min(now));
            if ce > cs {
                sm_ns += w as f64 * (ce - cs) as f64 / (e - s).max(1) as f64;
                spans.push((cs, ce));
            }
        }
        spans.sort_unstable();
        let (mut busy, mut cur) = (0u64, (0u64, 0u64));
        for (s, e) in spans {
            if s > cur.1 {
                busy += cur.1 - cur.0;
                cur = (s, e);
            } else {
                cur.1 = cur.1.max(e);
            }
        }
        busy += cur.1 - cur.0;
        let w = window_ns.max(1) as f64;
        (
            (busy as f64 / w).min(1.0),
            (sm_ns / (w * d.sms as f64)).min(1.0),
        )
    }

    /// Power draw in milliwatts: idle plus a part proportional to SM load.
    pub fn power_mw(&self, dev: usize, now: u64) -> u64 {
        let Some(d) = self.device(dev) else { return 0 };
        let (_, sm) = self.utilization(dev, 100_000_000, now, None);
        (d.idle_watts as f64 * 1000.0 + (d.tdp_watts - d.idle_watts) as f64 * 1000.0 * sm) as u64
    }

    /// Energy in millijoules since the state was created.
    pub fn energy_mj(&self, dev: usize, now: u64) -> u64 {
        let Some(d) = self.device(dev) else { return 0 };
        let future: f64 = self
            .kernels_between(dev, now, u64::MAX)
            .iter()
            .map(|&(s, e, w, _)| w as f64 * (e - s.max(now)) as f64 / (e - s).max(1) as f64)
            .sum();
        let done_sm_s = (d.busy_sm_ns.load(Relaxed) as f64 - future).max(0.0) / 1e9;
        let elapsed_s = now.saturating_sub(self.created_ns()) as f64 / 1e9;
        let joules = d.idle_watts as f64 * elapsed_s
            + (d.tdp_watts - d.idle_watts) as f64 * done_sm_s / d.sms as f64;
        (joules * 1000.0) as u64
    }
}

impl Drop for SharedState {
    fn drop(&mut self) {
        // SAFETY: unmapping what open mapped.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

impl DeviceSlot {
    pub fn name(&self) -> &str {
        let n = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.name.len());
        std::str::from_utf8(&self.name[..n]).unwrap_or("gpusim device")
    }

    pub fn config(&self) -> DeviceConfig {
        DeviceConfig {
            name: self.name().to_string(),
            sms: self.sms,
            max_threads_per_sm: self.max_threads_per_sm,
            max_blocks_per_sm: self.max_blocks_per_sm,
            registers_per_sm: self.registers_per_sm,
            shared_memory_per_sm: self.shared_memory_per_sm,
            shared_memory_per_block_optin: self.shared_memory_per_block_optin,
            reserved_shared_memory_per_block: self.reserved_shared_memory_per_block,
            memory_bytes: self.memory_bytes,
            memory_gbps: self.memory_bytes_per_s as f64 / 1e9,
            sm_memory_gbps: self.sm_memory_bytes_per_s as f64 / 1e9,
            clock_mhz: self.clock_mhz,
            memory_clock_mhz: self.memory_clock_mhz,
            tdp_watts: self.tdp_watts,
            idle_watts: self.idle_watts,
            compute_capability: (self.cc_major, self.cc_minor),
        }
    }

    pub fn uuid_string(&self) -> String {
        let u = &self.uuid;
        let hex =
            |r: std::ops::Range<usize>| u[r].iter().map(|b| format!("{b:02x}")).collect::<String>();
        format!(
            "GPU-{}-{}-{}-{}-{}",
            hex(0..4),
            hex(4..6),
            hex(6..8),
            hex(8..10),
            hex(10..16)
        )
    }

    /// Reserves `bytes` of device memory for `proc`; false when the device
    /// does not have them.
    pub fn alloc(&self, proc: usize, bytes: u64) -> bool {
        let ok = self
            .mem_used
            .fetch_update(Relaxed, Relaxed, |u| {
                u.checked_add(bytes).filter(|&n| n <= self.memory_bytes)
            })
            .is_ok();
        if ok {
            self.procs[proc.min(MAX_PROCS - 1)]
                .mem_used
                .fetch_add(bytes, Relaxed);
        }
        ok
    }

    pub fn free(&self, proc: usize, bytes: u64) {
        let sub = |a: &AtomicU64| {
            let _ = a.fetch_update(Relaxed, Relaxed, |u| Some(u.saturating_sub(bytes)));
        };
        sub(&self.mem_used);
        sub(&self.procs[proc.min(MAX_PROCS - 1)].mem_used);
    }

    fn release(&self, p: &ProcSlot) {
        let held = p.mem_used.swap(0, Relaxed);
        let _ = self
            .mem_used
            .fetch_update(Relaxed, Relaxed, |u| Some(u.saturating_sub(held)));
        p.pid.store(0, Relaxed);
    }

    /// Releases the slots of processes that exited without cleaning up.
    /// Call with the state lock held.
    fn reap_dead(&self) {
        for p in &self.procs {
            let pid = p.pid.load(Relaxed);
            if pid != 0 && !pid_alive(pid) {
                self.release(p);
            }
        }
    }

    /// Processes holding a context, dead ones removed first.
    pub fn live_processes(&self, state: &SharedState) -> Vec<ProcessInfo> {
        state.locked(|| {
            self.reap_dead();
            self.procs
                .iter()
                .filter(|p| p.pid.load(Relaxed) != 0)
                .map(|p| ProcessInfo {
                    pid: p.pid.load(Relaxed),
                    mem_used: p.mem_used.load(Relaxed),
                    sm_ns: p.sm_ns.load(Relaxed),
                    sm_percent: p.sm_percent.load(Relaxed),
                    mps_server: p.mps_server.load(Relaxed),
                })
                .collect()
        })
    }

    pub fn total_memory(&self) -> u64 {
        self.memory_bytes
    }

    pub fn sms(&self) -> u32 {
        self.sms
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub mem_used: u64,
    pub sm_ns: u64,
    pub sm_percent: u32,
    pub mps_server: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(tag: &str) -> SimConfig {
        let mut c = SimConfig::from_lookup(|_| None).unwrap();
        c.devices[0].sms = 8;
        c.devices[0].memory_bytes = 1 << 20;
        c.state_path =
            std::env::temp_dir().join(format!("gpusim-state-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(&c.state_path);
        c
    }

    #[test]
    fn two_opens_share_devices_and_memory() {
        let c = cfg("share");
        let a = SharedState::open(&c).unwrap();
        let mut c2 = c.clone();
        c2.devices[0].sms = 99; // ignored: the file already says 8
        let b = SharedState::open(&c2).unwrap();
        assert_eq!(b.device(0).unwrap().sms(), 8);
        let me = std::process::id();
        let slot = a.register_process(0, me, 100, 0).unwrap();
        assert!(a.device(0).unwrap().alloc(slot, 1 << 19));
        assert_eq!(b.device(0).unwrap().mem_used.load(Relaxed), 1 << 19);
        assert!(!b.device(0).unwrap().alloc(slot, 1 << 20), "over capacity");
        a.unregister_process(0, me);
        assert_eq!(b.device(0).unwrap().mem_used.load(Relaxed), 0);
        assert!(a.device(1).is_none());
        std::fs::remove_file(&c.state_path).unwrap();
    }

    #[test]
    fn dead_processes_are_reaped_and_utilisation_counts_kernels() {
        let c = cfg("reap");
        let s = SharedState::open(&c).unwrap();
        // A PID that cannot exist (beyond pid_max).
        let slot = s.register_process(0, 0x3fff_fff0, 100, 0).unwrap();
        assert!(s.device(0).unwrap().alloc(slot, 4096));
        assert!(s.device(0).unwrap().live_processes(&s).is_empty());
        assert_eq!(s.device(0).unwrap().mem_used.load(Relaxed), 0);

        let me = s.register_process(0, std::process::id(), 100, 0).unwrap();
        // Busy on all 8 SMs for [1000, 2000) and on 4 SMs for [3000, 4000).
        s.place_kernel(0, me, 1000, 8, 1000, 8, 0, 1e9);
        s.place_kernel(0, me, 3000, 4, 1000, 8, 0, 1e9);
        let (gpu, sm) = s.utilization(0, 4000, 4000, None);
        assert!((gpu - 0.5).abs() < 1e-9, "{gpu}");
        assert!((sm - 0.375).abs() < 1e-9, "{sm}");
        std::fs::remove_file(&c.state_path).unwrap();
    }
}
