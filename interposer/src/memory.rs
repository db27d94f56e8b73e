//! Memory: every allocation path counted by kind, and the process's
//! device-memory limit.
//!
//! Each allocation entry point (`wrappers.rs`) asks [`admit`] before it calls
//! the driver: with a limit (`VAGUS_MEMORY_LIMIT`, or the control block's
//! `memory_limit`, which may change while the process runs), device memory
//! that would cross it is refused with `CUDA_ERROR_OUT_OF_MEMORY` and the
//! driver is never called. The bytes are reserved against the limit first and
//! given back if the driver fails, so threads allocating at once cannot
//! overshoot it together. Lowering the limit below what is in use frees
//! nothing; it refuses new allocations. A successful allocation is kept
//! ([`settle`]) by its address (or VMM handle) with its size and kind, so
//! its free — `cuMemFree`, `cuMemFreeAsync` on any stream, `cuMemRelease`,
//! `cuMemFreeHost` — gives back exactly what it took. VMM mappings
//! (`cuMemMap`, `cuMemUnmap`) are followed too: a physical allocation
//! released while mapped is in use until its last mapping goes, as the
//! driver keeps it. Host memory
//! (`cuMemHostAlloc`) is counted apart and never limited.
//!
//! With a limit, `cuMemGetInfo` reports total = the limit and free = the
//! limit less what is in use (or the device's own free memory, if less), so
//! frameworks that size their caches from it size them to the limit; with
//! `VAGUS_NVML_VIEW=1` (opt-in: monitoring agents that preload the shim
//! would otherwise see a slice, not the GPU), NVML's memory info says the
//! same, and NVML's process lists (compute, graphics, MPS) hold only this
//! process, with the memory its shim counts.

use crate::lock::ForkLock;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::*};
use vagus_proto::shm::{self, HOST_MEMORY, MEMORY_KINDS, Segment};

/// What an allocation is, in `vagus_proto::shm::MEMORY_KINDS` order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Device = 0,
    Pitch = 1,
    Managed = 2,
    StreamOrdered = 3,
    Vmm = 4,
    Host = 5,
}
const _: () = assert!(Kind::Host as usize == HOST_MEMORY && MEMORY_KINDS.len() == 6);

/// The limit in force, in bytes (0: none), and the one the process started
/// with.
static LIMIT: AtomicU64 = AtomicU64::new(0);
static STARTED_WITH: AtomicU64 = AtomicU64::new(0);
/// Live allocations: address (or VMM handle) → (bytes, kind).
static LIVE: ForkLock<Option<HashMap<u64, (u64, Kind)>>> = ForkLock::new(None);
/// VMM mappings, so a physical allocation released while mapped is counted
/// until its last mapping goes, as the driver keeps it.
static VMM: ForkLock<Option<Mappings>> = ForkLock::new(None);

#[derive(Default)]
struct Mappings {
    /// Mapped address → (handle, bytes).
    at: BTreeMap<u64, (u64, u64)>,
    /// Handle → its mappings.
    count: HashMap<u64, u32>,
    /// Handles released while still mapped.
    released: HashSet<u64>,
}

/// Reads `VAGUS_MEMORY_LIMIT` (bytes, or with a unit: `512MiB`, `4GiB`,
/// `2GB`), once, when the segment is made.
pub fn from_env(seg: &Segment) {
    let Ok(v) = std::env::var("VAGUS_MEMORY_LIMIT") else {
        return;
    };
    match shm::parse_bytes(&v) {
        Some(b) if b > 0 => {
            STARTED_WITH.store(b, Relaxed);
            set_limit(seg, b);
        }
        _ => crate::warn_once(
            &crate::WARNED_MEMORY,
            &format!("ignoring VAGUS_MEMORY_LIMIT={v:?}: expected bytes, e.g. 4GiB or 512MiB"),
        ),
    }
}

fn set_limit(seg: &Segment, bytes: u64) {
    LIMIT.store(bytes, Relaxed);
    seg.stats.memory_limit.store(bytes, Relaxed);
}

/// The control block's `memory_limit`: 0 keeps the limit the process
/// started with, `u64::MAX` lifts any.
pub fn apply_control(seg: &Segment, limit: u64) {
    let want = match limit {
        0 => STARTED_WITH.load(Relaxed),
        u64::MAX => 0,
        b => b,
    };
    if LIMIT.load(Relaxed) != want {
        set_limit(seg, want);
    }
}

/// Before an allocation of `bytes` of `kind`: reserves them, or refuses
/// them (counted) when device memory would cross the limit. `false`: answer
/// `CUDA_ERROR_OUT_OF_MEMORY` without calling the driver.
pub fn admit(seg: &Segment, kind: Kind, bytes: u64) -> bool {
    let st = &seg.stats;
    if kind != Kind::Host {
        let limit = LIMIT.load(Relaxed);
        let fits = st
            .bytes_in_use
            .fetch_update(Relaxed, Relaxed, |u| {
                let after = u.checked_add(bytes)?;
                (limit == 0 || after <= limit).then_some(after)
            })
            .is_ok();
        if !fits {
            st.refused_allocations.fetch_add(1, Relaxed);
            st.refused_bytes.fetch_add(bytes, Relaxed);
            return false;
        }
        st.bytes_peak
            .fetch_max(st.bytes_in_use.load(Relaxed), Relaxed);
    }
    st.memory_kinds[kind as usize].fetch_add(bytes, Relaxed);
    true
}

/// Counts `bytes` of `kind` as in use (past the limit, if padding took
/// them there: the driver has already made the allocation).
fn take(seg: &Segment, kind: Kind, bytes: u64) {
    let st = &seg.stats;
    st.memory_kinds[kind as usize].fetch_add(bytes, Relaxed);
    if kind != Kind::Host {
        let now = st.bytes_in_use.fetch_add(bytes, Relaxed) + bytes;
        st.bytes_peak.fetch_max(now, Relaxed);
    }
}

/// After the driver answered an allocation admitted for `reserved` bytes:
/// `Some((key, bytes))` (its address or handle, and what it really took —
/// a pitched allocation's rows are padded) keeps it, `None` (the driver
/// failed) gives the reservation back.
pub fn settle(seg: &Segment, kind: Kind, reserved: u64, made: Option<(u64, u64)>) {
    let Some((key, bytes)) = made else {
        return give_back(seg, kind, reserved);
    };
    if bytes != reserved {
        give_back(seg, kind, reserved);
        take(seg, kind, bytes);
    }
    let old = LIVE.with(|m| {
        m.get_or_insert_with(HashMap::new)
            .insert(key, (bytes, kind))
    });
    // An address the driver handed out again without our seeing its free:
    // the old allocation is gone.
    if let Some((b, kind)) = old {
        give_back(seg, kind, b);
    }
}

/// After a successful free of `key`: what its allocation took comes back.
pub fn released(seg: &Segment, key: u64) {
    if let Some((b, kind)) = LIVE.with(|m| m.as_mut().and_then(|m| m.remove(&key))) {
        give_back(seg, kind, b);
    }
}

/// After a successful `cuMemMap` of `handle` at `ptr`.
pub fn vmm_mapped(ptr: u64, bytes: u64, handle: u64) {
    VMM.with(|v| {
        let v = v.get_or_insert_with(Mappings::default);
        v.at.insert(ptr, (handle, bytes));
        *v.count.entry(handle).or_default() += 1;
    });
}

/// After a successful `cuMemRelease`: its memory comes back now, or with
/// its last mapping.
pub fn vmm_released(seg: &Segment, handle: u64) {
    let mapped = VMM.with(|v| match v.as_mut() {
        Some(v) if v.count.get(&handle).is_some_and(|n| *n > 0) => {
            v.released.insert(handle);
            true
        }
        _ => false,
    });
    if !mapped {
        released(seg, handle);
    }
}

/// After a successful `cuMemUnmap` of `[ptr, ptr+bytes)`: released
/// allocations whose last mapping that was come back.
pub fn vmm_unmapped(seg: &Segment, ptr: u64, bytes: u64) {
    let done: Vec<u64> = VMM.with(|v| {
        let Some(v) = v.as_mut() else {
            return Vec::new();
        };
        let gone: Vec<u64> =
            v.at.range(ptr..ptr.saturating_add(bytes))
                .map(|(a, _)| *a)
                .collect();
        let mut done = Vec::new();
        for a in gone {
            let Some((h, _)) = v.at.remove(&a) else {
                continue;
            };
            let n = v.count.entry(h).or_default();
            *n = n.saturating_sub(1);
            if *n == 0 {
                v.count.remove(&h);
                if v.released.remove(&h) {
                    done.push(h);
                }
            }
        }
        done
    });
    for h in done {
        released(seg, h);
    }
}

fn give_back(seg: &Segment, kind: Kind, bytes: u64) {
    let sub = |a: &AtomicU64| {
        let _ = a.fetch_update(Relaxed, Relaxed, |u| Some(u.saturating_sub(bytes)));
    };
    sub(&seg.stats.memory_kinds[kind as usize]);
    if kind != Kind::Host {
        sub(&seg.stats.bytes_in_use);
    }
}

/// `cuMemGetInfo`'s answer under the limit, from the device's own.
pub fn info(seg: &Segment, free: u64, total: u64) -> (u64, u64) {
    match LIMIT.load(Relaxed) {
        0 => (free, total),
        limit => {
            let used = seg.stats.bytes_in_use.load(Relaxed);
            (limit.saturating_sub(used).min(free), limit)
        }
    }
}

/// Whether NVML's answers are the process's view (`VAGUS_NVML_VIEW=1`).
pub fn nvml_view_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("VAGUS_NVML_VIEW").is_ok_and(|v| v.trim() == "1"))
}

/// NVML's memory figures as the process should see them: with
/// `VAGUS_NVML_VIEW=1` and a limit, (total, free, used) = (the limit, what
/// it leaves, what the process holds), so tools inside a container see the
/// slice they were given. `None`: NVML's own figures stand.
pub fn nvml_view(seg: &Segment) -> Option<(u64, u64, u64)> {
    let limit = LIMIT.load(Relaxed);
    if limit == 0 {
        return None;
    }
    let used = seg.stats.bytes_in_use.load(Relaxed);
    Some((limit, limit.saturating_sub(used), used))
}

/// This process's pids: `getpid()` and its pid in every PID namespace
/// `/proc/self/status` shows (read at each call: a fork changes them).
pub fn own_pids() -> Vec<u32> {
    // SAFETY: getpid has no preconditions.
    let mut pids = vec![unsafe { libc::getpid() } as u32];
    if let Ok(s) = std::fs::read_to_string("/proc/self/status")
        && let Some(line) = s.lines().find_map(|l| l.strip_prefix("NSpid:"))
    {
        pids.extend(
            line.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    pids
}

pub fn force_unlock_after_fork() {
    LIVE.force_unlock();
    VMM.force_unlock();
}
