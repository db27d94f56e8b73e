//! The process's segment (`vagus_proto::shm`): created at the first wrapped
//! call, in `$VAGUS_SHM_DIR`, else `/run/vagus` for root, else
//! `$XDG_RUNTIME_DIR/vagus`. When the directory is missing or the file cannot
//! be made, the shim is a pass-through and says so once.

use std::ffi::CString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::*};
use vagus_proto::shm::{self, Segment};

const UNINIT: u8 = 0;
const INITIALISING: u8 = 1;
const READY: u8 = 2;
const PASSTHROUGH: u8 = 3;

static STATE: AtomicU8 = AtomicU8::new(UNINIT);
static SEGMENT: AtomicUsize = AtomicUsize::new(0);

/// The segment, or `None` when the shim passes calls through unobserved.
#[inline]
pub fn get() -> Option<&'static Segment> {
    match STATE.load(Acquire) {
        // SAFETY: set once to a live mapping before READY is published.
        READY => Some(unsafe { &*(SEGMENT.load(Relaxed) as *const Segment) }),
        PASSTHROUGH => None,
        _ => slow_get(),
    }
}

#[cold]
fn slow_get() -> Option<&'static Segment> {
    loop {
        match STATE.compare_exchange(UNINIT, INITIALISING, Acquire, Acquire) {
            Ok(_) => {
                let r = create();
                match r {
                    Ok(seg) => {
                        SEGMENT.store(seg as *const Segment as usize, Relaxed);
                        STATE.store(READY, Release);
                        crate::fork::install();
                        crate::budget::from_env();
                        crate::priority::from_env();
                        crate::memory::from_env(seg);
                        // The collector also watches the control block.
                        crate::collector::ensure_running();
                        return Some(seg);
                    }
                    Err(why) => {
                        crate::warn_once(
                            &crate::WARNED_PASSTHROUGH,
                            &format!("{why}; running as a pass-through"),
                        );
                        STATE.store(PASSTHROUGH, Release);
                        return None;
                    }
                }
            }
            Err(READY) => return get(),
            Err(PASSTHROUGH) => return None,
            // Another thread is creating it: a file and a mapping, brief.
            Err(_) => std::thread::yield_now(),
        }
    }
}

/// Forget the parent's segment in a forked child: it makes its own.
pub fn reset_after_fork() {
    SEGMENT.store(0, Relaxed);
    STATE.store(UNINIT, Release);
}

pub fn directory() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("VAGUS_SHM_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Some(PathBuf::from("/run/vagus"));
    }
    std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join("vagus"))
}

fn create() -> Result<&'static Segment, String> {
    let dir = directory().ok_or("no segment directory (set VAGUS_SHM_DIR)")?;
    if !dir.is_dir() {
        return Err(format!(
            "segment directory {} does not exist (no Vagus agent on this host?)",
            dir.display()
        ));
    }
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u32;
    // Made whole under a name the agent does not read, then renamed into
    // place: the agent never sees a `.shm` file shorter than a segment or
    // without its header.
    let path = dir.join(format!("{pid}.shm"));
    let building = dir.join(format!("{pid}.shm.new"));
    let cpath = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| "segment path has a NUL byte")?;
    let cbuilding = CString::new(building.as_os_str().as_encoded_bytes())
        .map_err(|_| "segment path has a NUL byte")?;
    // SAFETY: plain file creation and mapping; every result is checked.
    let seg = unsafe {
        let fd = libc::open(
            cbuilding.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
            0o660,
        );
        if fd < 0 {
            return Err(format!(
                "cannot create {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        let ok = libc::ftruncate(fd, shm::SEGMENT_BYTES as libc::off_t) == 0;
        let m = if ok {
            libc::mmap(
                std::ptr::null_mut(),
                shm::SEGMENT_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        } else {
            libc::MAP_FAILED
        };
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if m == libc::MAP_FAILED {
            libc::unlink(cbuilding.as_ptr());
            return Err(format!("cannot map {}: {err}", building.display()));
        }
        &*(m as *const Segment)
    };
    fill_header(seg, pid);
    // SAFETY: two NUL-terminated paths in one directory.
    if unsafe { libc::rename(cbuilding.as_ptr(), cpath.as_ptr()) } != 0 {
        let err = std::io::Error::last_os_error();
        // SAFETY: as above.
        unsafe { libc::unlink(cbuilding.as_ptr()) };
        return Err(format!(
            "cannot rename {} into place: {err}",
            building.display()
        ));
    }
    Ok(seg)
}

fn fill_header(seg: &Segment, pid: u32) {
    let h = &seg.header;
    h.version.store(shm::VERSION, Relaxed);
    h.size.store(shm::SEGMENT_BYTES as u32, Relaxed);
    h.pid.store(pid, Relaxed);
    h.ns_pid.store(ns_pid().unwrap_or(pid), Relaxed);
    h.start_unix_ns
        .store(process_start_unix_ns().unwrap_or(0), Relaxed);
    let mps = std::env::var("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok());
    h.mps_percent_milli
        .store(mps.map_or(0, |p| (p * 1000.0) as u32), Relaxed);
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|s| {
            // cgroup v2: "0::/path"; else the first line's path.
            s.lines()
                .find_map(|l| l.strip_prefix("0::").map(str::to_string))
                .or_else(|| {
                    s.lines()
                        .next()
                        .and_then(|l| l.splitn(3, ':').nth(2))
                        .map(str::to_string)
                })
        });
    shm::write_str(&h.cgroup, cgroup.as_deref().unwrap_or(""));
    h.magic.store(shm::MAGIC, Release);
}

/// The innermost PID from /proc/self/status's NSpid line.
fn ns_pid() -> Option<u32> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// When this process started: boot time plus its start in clock ticks.
fn process_start_unix_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let btime: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(btime * 1_000_000_000 + ticks * 1_000_000_000 / hz)
}
