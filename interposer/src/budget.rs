//! The SM-time budget and the pause flag, enforced on every launch.
//!
//! A token bucket in device-time: the process earns `budget × wall time` and
//! each launch spends its SM-time (GPU time × the fraction of the device's SMs
//! it could occupy). Sampled launches are charged their event-measured cost
//! when the collector reads their events; the others are charged the running
//! average of what sampled launches of their kind cost. A launch that finds
//! the process in debt sleeps — never spins — in slices of at most 2 ms,
//! rechecking the settings, so a change takes effect within milliseconds. No
//! lock is taken; with no budget the launch path reads one atomic.
//!
//! Settings come from the control block (polled by the collector every few
//! milliseconds) or, at start, from `VAGUS_BUDGET`.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::*};
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
static COST_KERNEL: AtomicU64 = AtomicU64::new(0);
static COST_GRAPH: AtomicU64 = AtomicU64::new(0);

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

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime (vDSO) writes into our timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Before a launch: returns at once when no budget is set or the process has
/// credit; otherwise sleeps until it has.
#[inline]
pub fn wait_turn() {
    if GATE.load(Relaxed) != UNLIMITED as u64 {
        wait_slow();
    }
}

#[cold]
fn wait_slow() {
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
        let now = now_ns();
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

/// Charges an unsampled launch the average cost of its kind.
#[inline]
pub fn charge_estimate(graph: bool) {
    if GATE.load(Relaxed) != UNLIMITED as u64 {
        let c = if graph { &COST_GRAPH } else { &COST_KERNEL }.load(Relaxed);
        DEBT.fetch_add(c as i64, Relaxed);
    }
}

/// Charges a sampled launch its measured SM-time and updates the average.
pub fn charge_measured(graph: bool, sm_ns: u64) {
    if GATE.load(Relaxed) != UNLIMITED as u64 {
        DEBT.fetch_add(sm_ns as i64, Relaxed);
    }
    let avg = if graph { &COST_GRAPH } else { &COST_KERNEL };
    let old = avg.load(Relaxed);
    // Exponential average over ~8 samples; the first sample sets it.
    avg.store(
        if old == 0 {
            sm_ns
        } else {
            old - old / 8 + sm_ns / 8
        },
        Relaxed,
    );
}

pub fn reset_after_fork() {
    DEBT.store(0, Relaxed);
    LAST_REFILL.store(0, Relaxed);
}
