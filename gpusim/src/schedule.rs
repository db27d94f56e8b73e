//! The execution model: a grid runs in waves over the SMs a client may use.
//!
//! Each SM has a time at which it becomes free. A kernel of `G` blocks with
//! occupancy `b` blocks per SM needs `ceil(G / b)` *SM-waves*, each one block
//! duration long. Placement takes the `allowed` SMs that free up first (the MPS
//! limit caps `allowed`) and hands SM-waves out so that the kernel ends as early
//! as possible; the SMs it used are then busy until their last wave ends. Work
//! from other streams and processes therefore delays a kernel exactly when it
//! wants SMs that are already taken.
//!
//! A kernel may also move bytes to or from device memory ([`Traffic`]). The
//! device's memory bandwidth is a set of *lanes* with free times of their own,
//! shared by every process as the SMs are; a kernel may use as many lanes as
//! the SMs it runs on can keep busy, and it ends when both its blocks' work and
//! its traffic are done (a roofline: the larger of the two), holding its SMs
//! until then. So a memory-bound kernel keeps its speed on a share of the SMs
//! that can still draw the device's bandwidth, and two memory-bound kernels
//! side by side share the bandwidth.

/// One kernel's traffic to device memory.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Traffic {
    /// Lane-nanoseconds in all: its bytes at one lane's bandwidth.
    pub lane_ns: u64,
    /// Lanes one SM can keep busy (one SM's bandwidth over one lane's).
    pub lanes_per_sm: f64,
}

/// Memory traffic is split into this many waves per lane it may use, so that
/// lanes freeing up at different times share a kernel's bytes.
const WAVES_PER_LANE: u64 = 4;

/// Where a kernel ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// When its first block started.
    pub start_ns: u64,
    /// When its last block finished.
    pub end_ns: u64,
    /// How many SMs ran at least one of its blocks.
    pub sms_used: u32,
    /// SM-nanoseconds its SMs were held (SM-waves × wave length, plus the
    /// time they waited for its memory traffic).
    pub sm_ns: u64,
}

/// Places `sm_waves` waves of `wave_ns` each, no earlier than `t0`, on the
/// `allowed` earliest-free SMs of `free_at`, and advances their free times.
pub fn place(
    free_at: &mut [u64],
    t0: u64,
    sm_waves: u64,
    wave_ns: u64,
    allowed: usize,
) -> Placement {
    place_kernel(free_at, &mut [], t0, sm_waves, wave_ns, allowed, None)
}

/// As [`place`], and the kernel's `traffic` (if any) on the memory `lanes`:
/// it starts with the kernel's first block, may use
/// `ceil(SMs used × lanes_per_sm)` lanes, and the kernel's SMs stay busy
/// until the later of their last wave and the traffic's end.
pub fn place_kernel(
    free_at: &mut [u64],
    lanes: &mut [u64],
    t0: u64,
    sm_waves: u64,
    wave_ns: u64,
    allowed: usize,
    traffic: Option<Traffic>,
) -> Placement {
    let used = place_waves(free_at, t0, sm_waves, wave_ns, allowed);
    let Some(start) = used.iter().map(|u| u.1).min() else {
        return Placement {
            start_ns: t0,
            end_ns: t0,
            sms_used: 0,
            sm_ns: 0,
        };
    };
    let mut end = used.iter().map(|u| u.2).max().unwrap_or(start);
    if let Some(t) = traffic.filter(|t| t.lane_ns > 0 && !lanes.is_empty()) {
        let n = ((used.len() as f64 * t.lanes_per_sm).ceil() as usize).clamp(1, lanes.len());
        let waves = n as u64 * WAVES_PER_LANE;
        let mem = place_waves(lanes, start, waves, t.lane_ns.div_ceil(waves), n);
        end = end.max(mem.iter().map(|u| u.2).max().unwrap_or(end));
        for &(j, _, _) in &used {
            free_at[j] = end;
        }
    }
    Placement {
        start_ns: start,
        end_ns: end,
        sms_used: used.len() as u32,
        sm_ns: used.iter().map(|&(j, s, _)| free_at[j] - s).sum(),
    }
}

/// Places `waves` waves of `wave_ns` each on the `allowed` earliest-free
/// slots of `free_at` (SMs or memory lanes), advancing their free times;
/// returns each slot used with its first wave's start and last wave's end.
fn place_waves(
    free_at: &mut [u64],
    t0: u64,
    waves: u64,
    wave_ns: u64,
    allowed: usize,
) -> Vec<(usize, u64, u64)> {
    let allowed = allowed.clamp(1, free_at.len().max(1));
    if waves == 0 || free_at.is_empty() {
        return Vec::new();
    }
    let wave = wave_ns.max(1);
    let mut idx: Vec<usize> = (0..free_at.len()).collect();
    idx.sort_by_key(|&j| (free_at[j].max(t0), j));
    idx.truncate(allowed);
    let starts: Vec<u64> = idx.iter().map(|&j| free_at[j].max(t0)).collect();

    let waves_by = |f: u64| -> u64 { starts.iter().map(|&s| f.saturating_sub(s) / wave).sum() };
    // Smallest finish time by which the chosen slots complete `waves` waves.
    let mut lo = starts[0];
    let mut hi = starts[starts.len() - 1] + waves.div_ceil(starts.len() as u64) * wave;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if waves_by(mid) >= waves {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let finish = lo;
    // Every wave ending before `finish` is needed (fewer than `waves` of
    // them exist, by minimality); of the waves ending exactly at `finish`,
    // keep only as many as are still missing.
    let mut counts: Vec<u64> = starts
        .iter()
        .map(|&s| finish.saturating_sub(s) / wave)
        .collect();
    let mut surplus = counts.iter().sum::<u64>() - waves;
    for (k, &s) in starts.iter().enumerate().rev() {
        if surplus == 0 {
            break;
        }
        if counts[k] > 0 && s + counts[k] * wave == finish {
            counts[k] -= 1;
            surplus -= 1;
        }
    }
    debug_assert_eq!(surplus, 0);
    let mut used = Vec::new();
    for (k, &j) in idx.iter().enumerate() {
        if counts[k] == 0 {
            continue;
        }
        let end = starts[k] + counts[k] * wave;
        free_at[j] = end;
        used.push((j, starts[k], end));
    }
    used
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_device_runs_in_waves() {
        let mut sms = vec![0u64; 132];
        // 4 full waves on 132 SMs.
        let p = place(&mut sms, 1000, 4 * 132, 500, 132);
        assert_eq!((p.start_ns, p.end_ns, p.sms_used), (1000, 3000, 132));
        // Half the SMs: twice the waves.
        let mut sms = vec![0u64; 132];
        let p = place(&mut sms, 1000, 4 * 132, 500, 66);
        assert_eq!(p.end_ns, 5000);
        assert_eq!(p.sms_used, 66);
    }

    #[test]
    fn partial_wave_and_small_grids() {
        let mut sms = vec![0u64; 8];
        let p = place(&mut sms, 0, 9, 100, 8);
        assert_eq!(p.end_ns, 200);
        let p = place(&mut sms, 0, 3, 100, 8);
        // Seven SMs are free at 100, one at 200.
        assert_eq!((p.start_ns, p.end_ns, p.sms_used), (100, 200, 3));
    }

    #[test]
    fn busy_sms_delay_and_limited_clients_share() {
        let mut sms = vec![0u64; 10];
        let a = place(&mut sms, 0, 10, 100, 10);
        let b = place(&mut sms, 0, 10, 100, 10);
        assert_eq!(a.end_ns, 100);
        assert_eq!(
            b.end_ns, 200,
            "a second full-device kernel waits for the first"
        );
        // Two half-device clients run side by side.
        let mut sms = vec![0u64; 10];
        let a = place(&mut sms, 0, 10, 100, 5);
        let b = place(&mut sms, 0, 10, 100, 5);
        assert_eq!((a.end_ns, b.end_ns), (200, 200));
    }

    /// One memory lane moves 1 byte/ns here; an SM can keep two lanes busy.
    const T: f64 = 2.0;

    fn traffic(bytes: u64) -> Option<Traffic> {
        Some(Traffic {
            lane_ns: bytes,
            lanes_per_sm: T,
        })
    }

    #[test]
    fn memory_bound_kernels_keep_their_speed_on_fewer_sms() {
        // 10 SMs, 8 lanes: 4 SMs already draw every lane.
        let (mut sms, mut lanes) = (vec![0u64; 10], vec![0u64; 8]);
        let whole = place_kernel(&mut sms, &mut lanes, 0, 10, 1, 10, traffic(8_000));
        assert_eq!(whole.end_ns, 1_000, "8,000 lane-ns over 8 lanes");
        assert_eq!(whole.sm_ns, 10 * 1_000, "its SMs are held while it waits");
        let (mut sms, mut lanes) = (vec![0u64; 10], vec![0u64; 8]);
        let half = place_kernel(&mut sms, &mut lanes, 0, 10, 1, 5, traffic(8_000));
        assert_eq!(half.end_ns, 1_000, "half the SMs still draw every lane");
        let (mut sms, mut lanes) = (vec![0u64; 10], vec![0u64; 8]);
        let one = place_kernel(&mut sms, &mut lanes, 0, 10, 1, 1, traffic(8_000));
        assert_eq!(one.end_ns, 4_000, "one SM draws two of the eight lanes");
        // A compute-bound kernel's time is its waves, traffic or not.
        let (mut sms, mut lanes) = (vec![0u64; 10], vec![0u64; 8]);
        let c = place_kernel(&mut sms, &mut lanes, 0, 20, 500, 5, traffic(800));
        assert_eq!(c.end_ns, 2_000);
    }

    #[test]
    fn memory_bound_kernels_side_by_side_share_the_bandwidth() {
        let (mut sms, mut lanes) = (vec![0u64; 10], vec![0u64; 8]);
        // Two half-device clients, each reading 8,000 lane-ns: alone each
        // takes 1,000 ns; together they end by 2,000 ns, not 1,000.
        let a = place_kernel(&mut sms, &mut lanes, 0, 5, 1, 5, traffic(8_000));
        let b = place_kernel(&mut sms, &mut lanes, 0, 5, 1, 5, traffic(8_000));
        assert_eq!(
            (a.start_ns, b.start_ns),
            (0, 0),
            "different SMs: both start at once"
        );
        assert_eq!(a.end_ns.max(b.end_ns), 2_000);
        // A compute-bound kernel beside a memory-bound one is not slowed.
        let (mut sms, mut lanes) = (vec![0u64; 10], vec![0u64; 8]);
        let m = place_kernel(&mut sms, &mut lanes, 0, 5, 1, 5, traffic(8_000));
        let c = place_kernel(&mut sms, &mut lanes, 0, 5, 1_000, 5, None);
        assert_eq!((m.end_ns, c.end_ns), (1_000, 1_000));
    }
}
