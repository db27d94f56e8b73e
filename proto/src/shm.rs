//! The shim's shared-memory segment: one file per shimmed process,
//! `<dir>/<pid>.shm`, mapped by the shim (writer of [`Stats`], reader of
//! [`Control`]) and by the agent or `vagus run` (the other way round).
//!
//! Every field is an atomic of at most 8 bytes, so a reader never sees a torn
//! value. Groups of fields that must be read together (a top-kernel entry, the
//! control block) are guarded by a sequence counter: odd while being written.
//! Counters the launch path bumps are sharded per thread ([`SHARDS`]), so two
//! threads never contend for one cache line; readers sum the shards.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};

pub const MAGIC: u64 = u64::from_le_bytes(*b"VAGUSSHM");
pub const VERSION: u32 = 2;
/// Written by the agent once a control block is valid.
pub const CONTROL_MAGIC: u64 = u64::from_le_bytes(*b"VAGUSCTL");
/// Launch-path counters are split over this many cache lines.
pub const SHARDS: usize = 16;
/// Log-spaced histogram buckets: see [`bucket_of`].
pub const HIST_BUCKETS: usize = 200;
/// Buckets per power of two.
const SUB: usize = 8;
const SUB_BITS: usize = 3;
pub const TOP_KERNELS: usize = 16;
/// Kernel names are kept to this many bytes (NUL-padded, truncated).
pub const NAME_BYTES: usize = 96;
pub const CGROUP_BYTES: usize = 256;
/// Kinds of memory the shim counts, in [`Stats::memory_kinds`] order.
pub const MEMORY_KINDS: [&str; 6] = [
    "device",
    "pitch",
    "managed",
    "stream_ordered",
    "vmm",
    "host",
];
/// The index of host memory in [`MEMORY_KINDS`]: page-locked host memory,
/// not the device's.
pub const HOST_MEMORY: usize = 5;

/// A counter on its own cache line.
#[repr(C, align(64))]
#[derive(Default)]
pub struct Shard {
    pub launches: AtomicU64,
    pub captured: AtomicU64,
    pub graph_launches: AtomicU64,
    _pad: [u64; 5],
}

#[repr(C)]
pub struct Header {
    /// [`MAGIC`], written last when the segment is ready.
    pub magic: AtomicU64,
    pub version: AtomicU32,
    /// Size of the whole segment in bytes (`size_of::<Segment>()`).
    pub size: AtomicU32,
    pub pid: AtomicU32,
    /// The PID inside the process's own PID namespace.
    pub ns_pid: AtomicU32,
    /// Process start, Unix time in nanoseconds.
    pub start_unix_ns: AtomicU64,
    /// `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE` the process started with, ×1000
    /// (0 when unset).
    pub mps_percent_milli: AtomicU32,
    _pad: AtomicU32,
    /// The process's cgroup path (NUL-padded).
    pub cgroup: [AtomicU64; CGROUP_BYTES / 8],
}

/// Written by the agent, read by the shim on the launch path.
#[repr(C)]
pub struct Control {
    /// [`CONTROL_MAGIC`] when an agent has written a valid block.
    pub magic: AtomicU64,
    /// Even when stable, odd while the agent writes.
    pub seq: AtomicU64,
    /// SM-time budget as a fraction of the device, in millionths;
    /// 0 or ≥ 1 000 000 means no limit.
    pub budget_ppm: AtomicU32,
    /// Non-zero: hold every launch until cleared.
    pub paused: AtomicU32,
    /// Time one launch in this many; 0 lets the shim adapt.
    pub sample_period: AtomicU32,
    /// The host CPU time the shim may spend timing kernels, in millionths of
    /// one core; 0 for the default.
    pub overhead_ppm: AtomicU32,
    /// Device memory the process may hold, in bytes; 0 leaves the limit it
    /// started with (`VAGUS_MEMORY_LIMIT`), `u64::MAX` lifts it.
    pub memory_limit: AtomicU64,
    /// [`Control::checksum_of`] over the fields above.
    pub checksum: AtomicU64,
}

/// One of the kernels with the most GPU time.
#[repr(C)]
pub struct TopKernel {
    /// Even when stable, odd while being written.
    pub seq: AtomicU64,
    pub name: [AtomicU64; NAME_BYTES / 8],
    /// Estimated launches (its sampled launches scaled by all launches /
    /// all sampled launches).
    pub launches: AtomicU64,
    /// Estimated GPU time in ns.
    pub gpu_ns: AtomicU64,
    /// Theoretical occupancy (resident warps / SM warp slots), millionths.
    pub occupancy_ppm: AtomicU32,
    pub block_threads: AtomicU32,
}

#[repr(C)]
pub struct Stats {
    pub shards: [Shard; SHARDS],
    /// Launches whose GPU time was measured with events.
    pub sampled_launches: AtomicU64,
    /// Their measured GPU time.
    pub sampled_gpu_ns: AtomicU64,
    /// GPU time of all launches, estimated from the samples.
    pub estimated_gpu_ns: AtomicU64,
    /// Σ GPU time × the fraction of the device's SMs the launch could occupy
    /// (estimated from the samples, like `estimated_gpu_ns`).
    pub occupancy_weighted_sm_ns: AtomicU64,
    /// Device memory in use (every kind but host memory) and its peak.
    pub bytes_in_use: AtomicU64,
    pub bytes_peak: AtomicU64,
    /// Bytes in use by kind ([`MEMORY_KINDS`]).
    pub memory_kinds: [AtomicU64; MEMORY_KINDS.len()],
    /// The device-memory limit in force (0: none).
    pub memory_limit: AtomicU64,
    /// Allocations refused for crossing the limit, and their bytes.
    pub refused_allocations: AtomicU64,
    pub refused_bytes: AtomicU64,
    /// Contexts made with `cuCtxCreate` (any version).
    pub contexts_created: AtomicU64,
    /// Modules loaded (`cuModuleLoad`, `cuModuleLoadData`, `cuModuleLoadDataEx`).
    pub modules_loaded: AtomicU64,
    pub syncs: AtomicU64,
    pub sync_wait_ns: AtomicU64,
    /// The sampling period in force.
    pub sample_period: AtomicU32,
    _pad: AtomicU32,
    /// Sampled kernel durations ([`bucket_of`] of ns).
    pub kernel_hist: [AtomicU64; HIST_BUCKETS],
    /// Host waits in stream/context/event synchronisation.
    pub sync_hist: [AtomicU64; HIST_BUCKETS],
    pub top: [TopKernel; TOP_KERNELS],
}

#[repr(C)]
pub struct Segment {
    pub header: Header,
    pub control: Control,
    pub stats: Stats,
}

/// The segment's size in bytes.
pub const SEGMENT_BYTES: usize = std::mem::size_of::<Segment>();
// Small enough to map cheaply, a whole number of words.
const _: () = assert!(SEGMENT_BYTES.is_multiple_of(8) && SEGMENT_BYTES < 64 * 1024);

/// Histogram bucket of a value in ns: eight buckets per power of two from
/// 1.024 µs (so a value is known within 9%); bucket 0 holds everything below,
/// the last everything from about 16 s up.
pub fn bucket_of(ns: u64) -> usize {
    if ns < 1024 {
        return 0;
    }
    let exp = 63 - ns.leading_zeros() as usize; // ≥ 10
    let sub = ((ns >> (exp - SUB_BITS)) as usize) & (SUB - 1);
    (1 + (exp - 10) * SUB + sub).min(HIST_BUCKETS - 1)
}

/// The smallest value bucket `b` holds.
pub fn bucket_floor(b: usize) -> u64 {
    if b == 0 {
        return 0;
    }
    let exp = 10 + (b - 1) / SUB;
    let sub = ((b - 1) % SUB) as u64;
    (1u64 << exp) + sub * (1u64 << (exp - SUB_BITS))
}

/// The value at quantile `q` (0–1) of a histogram, interpolated within its bucket.
pub fn quantile(hist: &[u64; HIST_BUCKETS], q: f64) -> u64 {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return 0;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (b, &n) in hist.iter().enumerate() {
        if seen + n >= rank {
            let lo = bucket_floor(b);
            let hi = if b + 1 < HIST_BUCKETS {
                bucket_floor(b + 1)
            } else {
                lo
            };
            // Ranks inside a bucket are spread evenly over its width.
            let frac = (rank - seen) as f64 / n as f64;
            return lo + ((hi - lo) as f64 * frac) as u64;
        }
        seen += n;
    }
    0
}

/// Reads a NUL-padded byte string kept in atomics.
pub fn read_str(words: &[AtomicU64]) -> String {
    let bytes: Vec<u8> = words
        .iter()
        .flat_map(|w| w.load(Relaxed).to_le_bytes())
        .collect();
    let n = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..n]).into_owned()
}

/// Writes `s` (truncated) into atomics as a NUL-padded byte string.
pub fn write_str(words: &[AtomicU64], s: &str) {
    let mut bytes = vec![0u8; words.len() * 8];
    let n = s.len().min(bytes.len() - 1);
    bytes[..n].copy_from_slice(&s.as_bytes()[..n]);
    for (w, chunk) in words.iter().zip(bytes.chunks(8)) {
        w.store(
            u64::from_le_bytes(chunk.try_into().expect("8-byte chunk")),
            Relaxed,
        );
    }
}

/// Settings the agent writes for one process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ControlValues {
    pub budget_ppm: u32,
    pub paused: bool,
    pub sample_period: u32,
    pub overhead_ppm: u32,
    pub memory_limit: u64,
}

/// What the shim finds in a control block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlRead {
    /// No agent has written one.
    Absent,
    /// Being written right now: keep the previous values.
    Busy,
    /// Present but inconsistent: ignore it.
    Corrupt,
    Valid(ControlValues),
}

impl Control {
    pub fn checksum_of(v: &ControlValues) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ CONTROL_MAGIC;
        for x in [
            v.budget_ppm as u64,
            v.paused as u64,
            v.sample_period as u64,
            v.overhead_ppm as u64,
            v.memory_limit,
        ] {
            h = (h ^ x).wrapping_mul(0x100_0000_01b3);
        }
        h
    }

    /// The agent's side: publishes new values.
    pub fn write(&self, v: ControlValues) {
        let s = self.seq.load(Relaxed);
        let odd = s | 1;
        self.seq
            .store(odd.wrapping_add(if s & 1 == 1 { 2 } else { 0 }), Relaxed);
        std::sync::atomic::fence(Release);
        self.budget_ppm.store(v.budget_ppm, Relaxed);
        self.paused.store(v.paused as u32, Relaxed);
        self.sample_period.store(v.sample_period, Relaxed);
        self.overhead_ppm.store(v.overhead_ppm, Relaxed);
        self.memory_limit.store(v.memory_limit, Relaxed);
        self.checksum.store(Self::checksum_of(&v), Relaxed);
        self.magic.store(CONTROL_MAGIC, Relaxed);
        self.seq
            .store(self.seq.load(Relaxed).wrapping_add(1), Release);
    }

    /// The shim's side: reads the values if they are consistent.
    pub fn read(&self) -> ControlRead {
        let s1 = self.seq.load(Acquire);
        if s1 & 1 == 1 {
            return ControlRead::Busy;
        }
        let magic = self.magic.load(Relaxed);
        let v = ControlValues {
            budget_ppm: self.budget_ppm.load(Relaxed),
            paused: self.paused.load(Relaxed) != 0,
            sample_period: self.sample_period.load(Relaxed),
            overhead_ppm: self.overhead_ppm.load(Relaxed),
            memory_limit: self.memory_limit.load(Relaxed),
        };
        let sum = self.checksum.load(Relaxed);
        std::sync::atomic::fence(Acquire);
        if self.seq.load(Relaxed) != s1 {
            return ControlRead::Busy;
        }
        if magic == 0 && s1 == 0 {
            return ControlRead::Absent;
        }
        if magic != CONTROL_MAGIC || sum != Self::checksum_of(&v) {
            return ControlRead::Corrupt;
        }
        ControlRead::Valid(v)
    }
}

impl Stats {
    pub fn launches(&self) -> u64 {
        self.shards.iter().map(|s| s.launches.load(Relaxed)).sum()
    }
    pub fn captured(&self) -> u64 {
        self.shards.iter().map(|s| s.captured.load(Relaxed)).sum()
    }
    pub fn graph_launches(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.graph_launches.load(Relaxed))
            .sum()
    }
    pub fn kernel_hist(&self) -> [u64; HIST_BUCKETS] {
        std::array::from_fn(|i| self.kernel_hist[i].load(Relaxed))
    }
    pub fn sync_hist(&self) -> [u64; HIST_BUCKETS] {
        std::array::from_fn(|i| self.sync_hist[i].load(Relaxed))
    }
}

/// A consistent copy of one top-kernel entry.
#[derive(Clone, Debug, PartialEq)]
pub struct TopKernelView {
    pub name: String,
    pub launches: u64,
    pub gpu_ns: u64,
    pub occupancy: f64,
    pub block_threads: u32,
}

impl TopKernel {
    /// Reads the entry, retrying while it is being written; `None` if empty
    /// or never stable.
    pub fn read(&self) -> Option<TopKernelView> {
        for _ in 0..100 {
            let s1 = self.seq.load(Acquire);
            if s1 & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let v = TopKernelView {
                name: read_str(&self.name),
                launches: self.launches.load(Relaxed),
                gpu_ns: self.gpu_ns.load(Relaxed),
                occupancy: self.occupancy_ppm.load(Relaxed) as f64 / 1e6,
                block_threads: self.block_threads.load(Relaxed),
            };
            std::sync::atomic::fence(Acquire);
            if self.seq.load(Relaxed) == s1 {
                return (v.launches > 0).then_some(v);
            }
        }
        None
    }

    /// The single writer's side.
    pub fn write(&self, v: &TopKernelView) {
        let s = self.seq.load(Relaxed);
        self.seq.store(s | 1, Relaxed);
        std::sync::atomic::fence(Release);
        write_str(&self.name, &v.name);
        self.launches.store(v.launches, Relaxed);
        self.gpu_ns.store(v.gpu_ns, Relaxed);
        self.occupancy_ppm
            .store((v.occupancy * 1e6).round() as u32, Relaxed);
        self.block_threads.store(v.block_threads, Relaxed);
        self.seq.store((s | 1).wrapping_add(1), Release);
    }
}

/// A size as `VAGUS_MEMORY_LIMIT` and `vagus run --memory-limit` take it:
/// `N`, `N` with a unit (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB), or a
/// decimal with a unit (`1.5GiB`).
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return None,
    };
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(scale);
    }
    let f = num.parse::<f64>().ok()?;
    (f.is_finite() && f >= 0.0 && f * (scale as f64) < u64::MAX as f64)
        .then_some((f * scale as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!(parse_bytes("1024"), Some(1024));
        assert_eq!(parse_bytes("4GiB"), Some(4 << 30));
        assert_eq!(parse_bytes(" 512MiB "), Some(512 << 20));
        assert_eq!(parse_bytes("2GB"), Some(2_000_000_000));
        assert_eq!(parse_bytes("1.5GiB"), Some(3 << 29));
        assert_eq!(parse_bytes("4 GiB"), Some(4 << 30));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("4XB"), None);
        assert_eq!(parse_bytes("-1"), None);
    }

    fn zeroed<T>() -> Box<T> {
        // SAFETY: every type here is atomics and arrays of atomics, for which
        // all-zero is a valid value.
        unsafe { Box::new(std::mem::zeroed()) }
    }

    #[test]
    fn buckets_are_monotonic_and_cover_their_floor() {
        let mut last = 0;
        for ns in [
            0u64,
            1,
            1023,
            1024,
            1151,
            1152,
            2047,
            2048,
            10_000,
            1_000_000,
            1 << 40,
        ] {
            let b = bucket_of(ns);
            assert!(b >= last, "{ns}");
            assert!(bucket_floor(b) <= ns, "{ns} below floor of bucket {b}");
            last = b;
        }
        assert_eq!(bucket_of(1024), 1);
        assert_eq!(bucket_of(1152), 2);
        let b = bucket_of(1_000_000);
        assert!(bucket_floor(b) <= 1_000_000 && 1_000_000 < bucket_floor(b + 1));
        assert_eq!(
            bucket_floor(b + 1) - bucket_floor(b),
            1 << 16,
            "an eighth of 2^19"
        );
        let mut h = [0u64; HIST_BUCKETS];
        h[bucket_of(500_000)] = 99;
        h[bucket_of(5_000_000)] = 1;
        let p50 = quantile(&h, 0.5);
        assert!((458_000..=524_288).contains(&p50), "{p50}");
        assert!(quantile(&h, 1.0) > 4_000_000);
    }

    #[test]
    fn control_block_round_trip_and_corruption() {
        let c: Box<Control> = zeroed();
        assert_eq!(c.read(), ControlRead::Absent);
        let v = ControlValues {
            budget_ppm: 300_000,
            paused: false,
            sample_period: 4,
            overhead_ppm: 0,
            memory_limit: 1 << 30,
        };
        c.write(v);
        assert_eq!(c.read(), ControlRead::Valid(v));
        let v2 = ControlValues {
            budget_ppm: 500_000,
            ..v
        };
        c.write(v2);
        assert_eq!(c.read(), ControlRead::Valid(v2));
        c.budget_ppm.store(123, Relaxed);
        assert_eq!(c.read(), ControlRead::Corrupt);
        c.seq.fetch_add(1, Relaxed);
        assert_eq!(c.read(), ControlRead::Busy);
    }

    #[test]
    fn top_kernel_and_strings() {
        let t: Box<TopKernel> = zeroed();
        assert_eq!(t.read(), None);
        let v = TopKernelView {
            name: "k".repeat(200),
            launches: 3,
            gpu_ns: 10,
            occupancy: 0.25,
            block_threads: 256,
        };
        t.write(&v);
        let r = t.read().unwrap();
        assert_eq!(r.name.len(), NAME_BYTES - 1);
        assert_eq!(
            (r.launches, r.gpu_ns, r.occupancy, r.block_threads),
            (3, 10, 0.25, 256)
        );
    }
}
