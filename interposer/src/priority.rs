//! Priority between processes on one GPU: best-effort launches held back
//! while latency-sensitive work is in flight (XSched, OSDI'25; LithOS,
//! SOSP'25; Tally, ASPLOS'25 — without preemption: a best-effort kernel
//! already on the GPU runs to its end).
//!
//! `VAGUS_PRIORITY=ls` or `be` gives the process its role and `VAGUS_GATE`
//! names the GPU's gate, a small file every shimmed process on that GPU maps
//! (the agent sets both for the replicas it starts). Each process with a
//! role keeps the time its launched work is expected to end: each launch
//! pushes it on by the process's measured GPU time per launch (the average
//! for a latency-sensitive process; for a best-effort one, which does so
//! only while it paces itself, below, the samples' low envelope). A
//! latency-sensitive process publishes that time in a slot of the gate, and
//! a synchronisation that returns brings it to now plus a linger (so that
//! the next iteration of a server that runs iterations back to back finds
//! the GPU still held): twice the longest recent gap it has shown between a
//! synchronisation and its next launch, from 0.2 to 5 ms. A best-effort launch sleeps while any slot's time lies ahead; and while a
//! latency-sensitive process has been busy within the last second, it also
//! waits until its own queued work is half a launch from done
//! (XSched's progressive launching), so that latency-sensitive work
//! arriving waits for about one best-effort kernel, not for a whole queue
//! of them. It sleeps in slices of at most 1 ms and for at most
//! [`MAX_HOLD`] per launch: best-effort work is slowed, never stopped, and a
//! latency-sensitive process that died holds nothing for longer than its
//! last estimate.
//!
//! Without a role the launch path reads one atomic here. With one, a launch
//! adds a clock read and a few atomics; a held one sleeps.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};
use std::time::Duration;

/// The gate file's first word, written once by whoever maps it first.
const GATE_MAGIC: u64 = u64::from_le_bytes(*b"VAGUSGT1");
/// Latency-sensitive processes one gate tracks.
const SLOTS: usize = 32;
/// Longest one best-effort launch is held.
pub const MAX_HOLD: Duration = Duration::from_millis(20);
/// Longest single sleep while held.
const SLICE: Duration = Duration::from_millis(1);
/// How long a latency-sensitive process holds the GPU after a
/// synchronisation returns, at least and at most: twice the longest recent
/// gap between its synchronisations and its next launches (a server's own
/// work between two iterations, longer on a loaded host), so that its next
/// iteration finds the GPU still held.
const LINGER_NS: u64 = 200_000;
const MAX_LINGER_NS: u64 = 5_000_000;
/// A gap longer than this between a synchronisation and the next launch is
/// idleness, not the work between two iterations: it is not learnt.
const IDLE_GAP_NS: u64 = 20_000_000;
/// The estimate per launch until the process has a measured one.
const FIRST_ESTIMATE_NS: u64 = 200_000;
/// A best-effort process paces its launches while a latency-sensitive one
/// has been busy this recently.
const RECENT_NS: u64 = 1_000_000_000;

#[repr(C, align(64))]
struct Slot {
    /// The latency-sensitive process holding the slot (0: free).
    pid: AtomicU32,
    _pad: u32,
    /// CLOCK_MONOTONIC ns until which its launched work is expected to run.
    busy_until: AtomicU64,
}

#[repr(C)]
struct Gate {
    magic: AtomicU64,
    _reserved: [u64; 7],
    slots: [Slot; SLOTS],
}

const GATE_BYTES: usize = std::mem::size_of::<Gate>();

const NONE: u8 = 0;
const LATENCY: u8 = 1;
const BEST_EFFORT: u8 = 2;

static ROLE: AtomicU8 = AtomicU8::new(NONE);
static GATE: AtomicUsize = AtomicUsize::new(0);
/// This process's slot index + 1 (0: none claimed yet).
static SLOT: AtomicUsize = AtomicUsize::new(0);
/// When this process's launched work is expected to end.
static UNTIL: AtomicU64 = AtomicU64::new(0);
/// What one launch's GPU time is at least, about (see [`sampled`]): how
/// far a best-effort process paces its launches apart.
static LOW: AtomicU64 = AtomicU64::new(FIRST_ESTIMATE_NS);
static LOW_SEEN: AtomicU8 = AtomicU8::new(0);
/// A latency-sensitive process: when its last synchronisation returned (0:
/// it has launched since), and the high envelope of the gaps from one to
/// the next launch.
static SYNCED_AT: AtomicU64 = AtomicU64::new(0);
static GAP: AtomicU64 = AtomicU64::new(0);

/// Reads `VAGUS_PRIORITY` and `VAGUS_GATE` and maps the gate; once, when
/// the segment is made. Anything wrong leaves the process without a role,
/// with one warning.
pub fn from_env() {
    let role = match std::env::var("VAGUS_PRIORITY").as_deref().map(str::trim) {
        Err(_) | Ok("") => return,
        Ok("ls") => LATENCY,
        Ok("be") => BEST_EFFORT,
        Ok(other) => {
            return crate::warn_once(
                &crate::WARNED_PRIORITY,
                &format!("ignoring VAGUS_PRIORITY={other:?}: expected ls or be"),
            );
        }
    };
    let Some(path) = std::env::var_os("VAGUS_GATE").filter(|p| !p.is_empty()) else {
        return crate::warn_once(
            &crate::WARNED_PRIORITY,
            "ignoring VAGUS_PRIORITY: no VAGUS_GATE names the GPU's gate file",
        );
    };
    match map(std::path::Path::new(&path)) {
        Ok(gate) => {
            GATE.store(gate as *const Gate as usize, Relaxed);
            ROLE.store(role, Release);
        }
        Err(why) => crate::warn_once(
            &crate::WARNED_PRIORITY,
            &format!("ignoring VAGUS_PRIORITY: {why}"),
        ),
    }
}

fn map(path: &std::path::Path) -> Result<&'static Gate, String> {
    let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| "the gate path has a NUL byte".to_string())?;
    let named = |what: &str| {
        format!(
            "{what} {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        )
    };
    // SAFETY: plain file creation and mapping; every result is checked. The
    // file is only ever extended to GATE_BYTES (zeroes: free slots), so two
    // processes making it at once agree.
    unsafe {
        let fd = libc::open(
            cpath.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC,
            0o660,
        );
        if fd < 0 {
            return Err(named("cannot open the gate"));
        }
        let mut st: libc::stat = std::mem::zeroed();
        let sized = libc::fstat(fd, &mut st) == 0
            && (st.st_size as usize >= GATE_BYTES
                || libc::ftruncate(fd, GATE_BYTES as libc::off_t) == 0);
        let m = if sized {
            libc::mmap(
                std::ptr::null_mut(),
                GATE_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        } else {
            libc::MAP_FAILED
        };
        let err = named("cannot map the gate");
        libc::close(fd);
        if m == libc::MAP_FAILED {
            return Err(err);
        }
        let gate = &*(m as *const Gate);
        match gate.magic.compare_exchange(0, GATE_MAGIC, AcqRel, Acquire) {
            Ok(_) => Ok(gate),
            Err(GATE_MAGIC) => Ok(gate),
            Err(other) => {
                libc::munmap(m, GATE_BYTES);
                Err(format!(
                    "{} is not a gate (first word {other:#x})",
                    path.display()
                ))
            }
        }
    }
}

fn gate() -> &'static Gate {
    // SAFETY: set to a live mapping before ROLE is published, never unmapped.
    unsafe { &*(GATE.load(Relaxed) as *const Gate) }
}

/// The process's role, read once per launch.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Role(u8);

#[inline]
pub fn role() -> Role {
    Role(ROLE.load(Acquire))
}

/// Before a launch: a best-effort process waits while latency-sensitive
/// work is in flight on its GPU.
#[inline]
pub fn before_launch(role: Role) {
    if role.0 == BEST_EFFORT {
        hold();
    }
}

#[cold]
fn hold() {
    let g = gate();
    let start = crate::now_ns();
    let mut now = start;
    let estimate = LOW.load(Relaxed);
    // The next launch goes once the work queued before it is half a launch
    // from done.
    let lead = estimate / 2;
    while now.saturating_sub(start) < MAX_HOLD.as_nanos() as u64 {
        let busy = g
            .slots
            .iter()
            .filter(|s| s.pid.load(Relaxed) != 0)
            .map(|s| s.busy_until.load(Relaxed))
            .max()
            .unwrap_or(0);
        let own = UNTIL.load(Relaxed);
        let wake = if busy > now {
            busy
        } else if busy + RECENT_NS <= now {
            return;
        } else if own <= now + lead {
            // Taken by one launching thread at a time: the others see the
            // queue this launch adds.
            if UNTIL
                .compare_exchange(own, own.max(now) + estimate, Relaxed, Relaxed)
                .is_ok()
            {
                return;
            }
            continue;
        } else {
            own - lead
        };
        std::thread::sleep(Duration::from_nanos(wake - now).min(SLICE));
        now = crate::now_ns();
    }
}

/// After a successful launch: a latency-sensitive process pushes the end of
/// its launched work on by its average GPU time per launch and publishes it.
#[inline]
pub fn launched(role: Role, seg: &vagus_proto::shm::Segment) {
    if role.0 == LATENCY {
        pushed_on(seg);
    }
}

#[inline(never)]
fn pushed_on(seg: &vagus_proto::shm::Segment) {
    let estimate = match seg.stats.sampled_launches.load(Relaxed) {
        0 => FIRST_ESTIMATE_NS,
        n => seg.stats.sampled_gpu_ns.load(Relaxed) / n,
    };
    let now = crate::now_ns();
    let synced_at = SYNCED_AT.swap(0, Relaxed);
    if synced_at != 0 {
        learn_gap(now.saturating_sub(synced_at));
    }
    let until = UNTIL.load(Relaxed).max(now) + estimate;
    UNTIL.store(until, Relaxed);
    publish(until);
}

/// A gap from a synchronisation to the next launch: the envelope rises to
/// it at once and falls a sixteenth of the way to a shorter one.
fn learn_gap(gap: u64) {
    if gap >= IDLE_GAP_NS {
        return;
    }
    let g = GAP.load(Relaxed);
    GAP.store(if gap >= g { gap } else { g - (g - gap) / 16 }, Relaxed);
}

/// How long the GPU stays held after a synchronisation.
fn linger() -> u64 {
    (2 * GAP.load(Relaxed)).clamp(LINGER_NS, MAX_LINGER_NS)
}

/// A sampled launch took `ns` of GPU time (from the collector). A launch's
/// measured time includes waiting for the work queued before it on the
/// GPU, so best-effort pacing follows the low envelope of the samples: a
/// shorter one at once, a longer one a sixteenth of the way.
pub fn sampled(ns: u64) {
    if ROLE.load(Relaxed) != BEST_EFFORT {
        return;
    }
    let low = LOW.load(Relaxed);
    let next = if LOW_SEEN.swap(1, Relaxed) == 0 || ns < low {
        ns
    } else {
        low + (ns - low) / 16
    };
    LOW.store(next.max(1), Relaxed);
}

/// After a synchronisation returned: a latency-sensitive process's work is
/// done; it holds the GPU a moment longer for its next launches. (A
/// best-effort process's pacing is not reset: with several streams, one
/// stream's synchronisation says nothing of the others' queued work.)
#[inline]
pub fn synced() {
    if ROLE.load(Acquire) == LATENCY {
        let now = crate::now_ns();
        UNTIL.store(now, Relaxed);
        SYNCED_AT.store(now, Relaxed);
        publish(now + linger());
    }
}

fn publish(until: u64) {
    if let Some(slot) = slot() {
        slot.busy_until.store(until, Relaxed);
    }
}

/// This process's slot, claimed the first time: a free one, or one whose
/// process has exited. `None` when all are held (then it holds no one back).
fn slot() -> Option<&'static Slot> {
    let g = gate();
    match SLOT.load(Relaxed) {
        0 => claim(g),
        i => Some(&g.slots[i - 1]),
    }
}

#[cold]
fn claim(g: &'static Gate) -> Option<&'static Slot> {
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() } as u32;
    let gone = |pid: u32| {
        // SAFETY: signal 0 only checks that the process exists.
        let r = unsafe { libc::kill(pid as i32, 0) };
        r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    };
    for (i, s) in g.slots.iter().enumerate() {
        let pid = s.pid.load(Relaxed);
        if (pid == 0 || pid == me || gone(pid))
            && s.pid.compare_exchange(pid, me, AcqRel, Relaxed).is_ok()
        {
            SLOT.store(i + 1, Relaxed);
            return Some(s);
        }
    }
    None
}

/// A forked child claims a slot of its own.
pub fn reset_after_fork() {
    SLOT.store(0, Relaxed);
    LOW_SEEN.store(0, Relaxed);
    UNTIL.store(0, Relaxed);
    SYNCED_AT.store(0, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_is_a_page_of_cache_lines() {
        assert_eq!(std::mem::size_of::<Slot>(), 64);
        assert_eq!(GATE_BYTES, 64 + SLOTS * 64);
    }

    #[test]
    fn the_linger_follows_the_longest_recent_gap_within_its_bounds() {
        GAP.store(0, Relaxed);
        assert_eq!(linger(), LINGER_NS);
        learn_gap(1_000_000);
        assert_eq!(linger(), 2_000_000);
        // A shorter gap: a sixteenth of the way down.
        learn_gap(100_000);
        let g = 1_000_000 - 900_000 / 16;
        assert_eq!(GAP.load(Relaxed), g);
        // Idleness is not learnt.
        learn_gap(30_000_000);
        assert_eq!(GAP.load(Relaxed), g);
        learn_gap(4_000_000);
        assert_eq!(linger(), MAX_LINGER_NS);
    }
}
