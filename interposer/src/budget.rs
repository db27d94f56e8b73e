//! The SM-time budget and the pause flag, enforced on every launch.
//!
//! A token bucket in device-time: the process earns `budget × wall time` and
//! each launch spends its SM-time (GPU time × the fraction of the device's SMs
//! it could occupy). Every launch is charged the running average of what
//! sampled launches of its kind cost; when a sampled launch's events are read,
//! the difference between its measured cost and that estimate is charged too.
//! Until the first sample of a kind has been measured, a launch of that kind
//! waits for it (at most 50 ms), so a burst cannot slip through before the
//! shim knows what it costs. A launch that finds
//! the process in debt sleeps — never spins — in slices of at most 2 ms,
//! rechecking the settings, so a change takes effect within milliseconds. No
//! lock is taken; with no budget the launch path reads one atomic.
//!
//! Settings come from the control block (polled by the collector every few
//! milliseconds) or, at start, from `VAGUS_BUDGET`.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering::*};
use std::time::Duration;

const UNLIMITED: u32 = 1_000_000;
const PAUSED_BIT: u64 = 1 << 32;
/// Credit a process may bank while idle, in wall ns at its budget.
const BURST_NS: i64 = 20_000_000;
/// Longest single sleep, so that a new setting is seen quickly.
const SLICE: Duration = Duration::from_millis(2);

/// Budget in millionths of the device (low 32 bits) and the pause bit.
static GATE: AtomicU64 = AtomicU64::new(UNLIMITED as u64);
/// Device-time owed, in ns of SM-time (negative: credit).
static DEBT: AtomicI64 = AtomicI64::new(0);
static LAST_REFILL: AtomicU64 = AtomicU64::new(0);
/// Average SM-time cost of a launch, kernels and graphs, in ns.
static COST: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
/// Sampled launches of each kind whose events have not been read yet.
static OUTSTANDING: [AtomicU32; 2] = [AtomicU32::new(0), AtomicU32::new(0)];
/// Longest a launch waits for the first measurement of its kind.
const CALIBRATION_SLICES: u32 = 25;

pub fn set(budget_ppm: u32, paused: bool) {
    let b = if budget_ppm == 0 {
        UNLIMITED
    } else {
        budget_ppm.min(UNLIMITED)
    };
    GATE.store(b as u64 | if paused { PAUSED_BIT } else { 0 }, Relaxed);
}

/// The budget set at start by `VAGUS_BUDGET` (a fraction, e.g. 0.3).
pub fn from_env() {
    let Ok(v) = std::env::var("VAGUS_BUDGET") else {
        return;
    };
    match v.trim().parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 1.0 => set((f * 1e6).round() as u32, false),
        _ => crate::warn_once(
            &crate::WARNED_BUDGET,
            &format!("ignoring VAGUS_BUDGET={v:?}: expected a fraction in (0, 1]"),
        ),
    }
}

/// Before a launch: returns at once when no budget is set or the process has
/// credit; otherwise sleeps until it has.
#[inline]
pub fn wait_turn(graph: bool) {
    if GATE.load(Relaxed) != UNLIMITED as u64 {
        wait_slow(graph as usize);
    }
}

#[cold]
fn wait_slow(kind: usize) {
    let mut calibration = 0;
    loop {
        let g = GATE.load(Relaxed);
        if g & PAUSED_BIT != 0 {
            std::thread::sleep(SLICE);
            continue;
        }
        let budget = (g & 0xffff_ffff) as i64;
        if budget >= UNLIMITED as i64 {
            return;
        }
        if COST[kind].load(Relaxed) == 0
            && OUTSTANDING[kind].load(Relaxed) > 0
            && calibration < CALIBRATION_SLICES
        {
            calibration += 1;
            std::thread::sleep(SLICE);
            continue;
        }
        let now = crate::now_ns();
        let last = LAST_REFILL.swap(now, Relaxed);
        if last != 0 && now > last {
            let earned = (now - last) as i64 * budget / UNLIMITED as i64;
            DEBT.fetch_sub(earned, Relaxed);
        }
        let floor = -BURST_NS * budget / UNLIMITED as i64;
        DEBT.fetch_max(floor, Relaxed);
        let debt = DEBT.load(Relaxed);
        if debt <= 0 {
            return;
        }
        // Time to earn the debt back, at most one slice.
        let wait = (debt as u128 * UNLIMITED as u128 / budget.max(1) as u128) as u64;
        std::thread::sleep(Duration::from_nanos(wait).min(SLICE));
    }
}

/// Charges a launch the average cost of its kind; returns the amount.
#[inline]
pub fn charge_estimate(graph: bool) -> u64 {
    if GATE.load(Relaxed) == UNLIMITED as u64 {
        return 0;
    }
    let c = COST[graph as usize].load(Relaxed);
    DEBT.fetch_add(c as i64, Relaxed);
    c
}

/// A sampled launch of this kind is waiting for its events to be read.
pub fn sample_queued(graph: bool) {
    OUTSTANDING[graph as usize].fetch_add(1, Relaxed);
}

/// A sampled launch was measured at `sm_ns` of SM-time (`None`: it could not
/// be) after `charged` was charged for it at launch.
pub fn sample_done(graph: bool, measured: Option<u64>, charged: u64) {
    let kind = graph as usize;
    let _ = OUTSTANDING[kind].fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
    let Some(sm_ns) = measured else { return };
    if GATE.load(Relaxed) != UNLIMITED as u64 {
        DEBT.fetch_add(sm_ns as i64 - charged as i64, Relaxed);
    }
    let avg = &COST[kind];
    let old = avg.load(Relaxed);
    // Exponential average over ~8 samples; the first sample sets it.
    avg.store(
        if old == 0 {
            sm_ns.max(1)
        } else {
            old - old / 8 + sm_ns / 8
        },
        Relaxed,
    );
}

pub fn reset_after_fork() {
    for n in &OUTSTANDING {
        n.store(0, Relaxed);
    }
    DEBT.store(0, Relaxed);
    LAST_REFILL.store(0, Relaxed);
}
