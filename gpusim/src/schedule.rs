//! The execution model: a grid runs in waves over the SMs a client may use.
//!
//! Each SM has a time at which it becomes free. A kernel of `G` blocks with
//! occupancy `b` blocks per SM needs `ceil(G / b)` *SM-waves*, each one block
//! duration long. Placement takes the `allowed` SMs that free up first (the MPS
//! limit caps `allowed`) and hands SM-waves out so that the kernel ends as early
//! as possible; the SMs it used are then busy until their last wave ends. Work
//! from other streams and processes therefore delays a kernel exactly when it
//! wants SMs that are already taken.

/// Where a kernel ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// When its first block started.
    pub start_ns: u64,
    /// When its last block finished.
    pub end_ns: u64,
    /// How many SMs ran at least one of its blocks.
    pub sms_used: u32,
    /// SM-nanoseconds of work (SM-waves × wave length).
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
    let allowed = allowed.clamp(1, free_at.len().max(1));
    if sm_waves == 0 || free_at.is_empty() {
        return Placement {
            start_ns: t0,
            end_ns: t0,
            sms_used: 0,
            sm_ns: 0,
        };
    }
    let wave = wave_ns.max(1);
    let mut idx: Vec<usize> = (0..free_at.len()).collect();
    idx.sort_by_key(|&j| (free_at[j].max(t0), j));
    idx.truncate(allowed);
    let starts: Vec<u64> = idx.iter().map(|&j| free_at[j].max(t0)).collect();

    let waves_by = |f: u64| -> u64 { starts.iter().map(|&s| f.saturating_sub(s) / wave).sum() };
    // Smallest finish time by which the chosen SMs complete `sm_waves` waves.
    let mut lo = starts[0];
    let mut hi = starts[starts.len() - 1] + sm_waves.div_ceil(starts.len() as u64) * wave;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if waves_by(mid) >= sm_waves {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let finish = lo;
    // Every wave ending before `finish` is needed (fewer than `sm_waves` of
    // them exist, by minimality); of the waves ending exactly at `finish`,
    // keep only as many as are still missing.
    let mut counts: Vec<u64> = starts
        .iter()
        .map(|&s| finish.saturating_sub(s) / wave)
        .collect();
    let mut surplus = counts.iter().sum::<u64>() - sm_waves;
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
    let mut p = Placement {
        start_ns: u64::MAX,
        end_ns: 0,
        sms_used: 0,
        sm_ns: sm_waves * wave,
    };
    for (k, &j) in idx.iter().enumerate() {
        if counts[k] == 0 {
            continue;
        }
        let end = starts[k] + counts[k] * wave;
        free_at[j] = end;
        p.start_ns = p.start_ns.min(starts[k]);
        p.end_ns = p.end_ns.max(end);
        p.sms_used += 1;
    }
    p
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
}
