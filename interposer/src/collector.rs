//! The background thread that turns sampled events into statistics, and the
//! final flush at exit.

use crate::lock::ForkLock;
use crate::sampler::Collector;
use crate::segment;
use std::sync::atomic::{AtomicBool, Ordering::*};
use std::time::{Duration, Instant};

static RUNNING: AtomicBool = AtomicBool::new(false);
pub static STATE: ForkLock<Option<Collector>> = ForkLock::new(None);

/// Starts the collector thread if it is not running.
pub fn ensure_running() {
    if RUNNING.load(Relaxed) || RUNNING.swap(true, AcqRel) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("vagus-collector".into())
        .spawn(run);
    if spawned.is_err() {
        RUNNING.store(false, Release);
    }
}

fn run() {
    crate::mark_collector_thread();
    let mut last_publish = 0;
    loop {
        let Some(seg) = segment::get() else { return };
        let now = crate::now_ns();
        let outstanding = STATE.with(|c| {
            let c = c.get_or_insert_with(Collector::default);
            c.apply_control(seg);
            c.adapt_period(seg, now);
            let n = c.poll(seg);
            if now.saturating_sub(last_publish) >= 100_000_000 {
                c.publish(seg);
                last_publish = now;
            }
            n
        });
        std::thread::sleep(Duration::from_micros(if outstanding > 0 {
            500
        } else {
            2000
        }));
    }
}

/// At exit: collect what has completed (waiting briefly for kernels still in
/// flight) and publish, so short programs report too. Bounded: never blocks
/// exit for more than a quarter second.
pub extern "C" fn flush_at_exit() {
    let Some(seg) = segment::get() else { return };
    let deadline = Instant::now() + Duration::from_millis(250);
    while Instant::now() < deadline {
        let left = STATE.try_with(|c| {
            let c = c.get_or_insert_with(Collector::default);
            let n = c.poll(seg);
            c.publish(seg);
            n
        });
        match left {
            Some(0) => return,
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

pub fn reset_after_fork() {
    RUNNING.store(false, Relaxed);
    STATE.force_unlock();
    STATE.with(|c| *c = None);
}
