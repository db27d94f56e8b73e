//! Kernel timing off the launch path.
//!
//! A sampled launch is bracketed by two CUDA events recorded on its stream;
//! the launching thread only takes an event pair from its context's pool and
//! pushes a record into a bounded lock-free queue. A background thread (the
//! collector) waits for the events, reads the elapsed time, and updates the
//! segment: histograms, GPU-time totals, occupancy and the top kernels.
//!
//! Sampling is adaptive: every launch while launches are rare; one in N when
//! they are not, with N chosen so that the timing costs at most the overhead
//! budget (default 1% of one core), unless the control block fixes N.

use crate::cuda::*;
use crate::wrappers::helpers;
use std::cell::{Cell, UnsafeCell};
use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::*};
use vagus_proto::shm::{self, ControlRead, ControlValues, Segment, TopKernelView};

/// The period in force: time one launch in this many.
pub static PERIOD: AtomicU32 = AtomicU32::new(1);
/// Estimated host cost of timing one launch (two event records), in ns.
const SAMPLE_COST_NS: u64 = 4_000;
const DEFAULT_OVERHEAD_PPM: u64 = 10_000;

// ---------------------------------------------------------------- event pools

const POOLS: usize = 8;
/// Samples in flight per context; a due launch finding none free goes untimed.
const PAIRS: usize = 256;

struct Pair {
    busy: AtomicBool,
    start: AtomicUsize,
    end: AtomicUsize,
}

/// Event pairs of one context. `generation` changes when the context goes
/// away, so samples taken in it are dropped rather than queried.
struct Pool {
    ctx: AtomicUsize,
    generation: AtomicU32,
    pairs: [Pair; PAIRS],
}

#[allow(clippy::declare_interior_mutable_const)]
const PAIR: Pair = Pair {
    busy: AtomicBool::new(false),
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
};
#[allow(clippy::declare_interior_mutable_const)]
const POOL: Pool = Pool {
    ctx: AtomicUsize::new(0),
    generation: AtomicU32::new(0),
    pairs: [PAIR; PAIRS],
};
static POOLS_: [Pool; POOLS] = [POOL; POOLS];

fn pool_for(ctx: usize) -> Option<usize> {
    if let Some(i) = POOLS_.iter().position(|p| p.ctx.load(Acquire) == ctx) {
        return Some(i);
    }
    POOLS_
        .iter()
        .position(|p| p.ctx.compare_exchange(0, ctx, AcqRel, Relaxed).is_ok())
}

/// Drops the pool of a context that is being destroyed.
pub fn forget_context(ctx: usize) {
    for p in &POOLS_ {
        if p.ctx.load(Acquire) == ctx {
            p.generation.fetch_add(1, AcqRel);
            for pair in &p.pairs {
                pair.start.store(0, Relaxed);
                pair.end.store(0, Relaxed);
                pair.busy.store(false, Release);
            }
            p.ctx.store(0, Release);
        }
    }
}

// ---------------------------------------------------------------- the queue

#[derive(Clone, Copy, Default)]
pub struct Sample {
    pub(crate) pool: u8,
    pub(crate) pair: u8,
    pub(crate) generation: u32,
    pub ctx: usize,
    pub func: usize,
    pub blocks: u64,
    pub block_threads: u32,
    pub shared_bytes: u32,
    pub graph: bool,
    /// What the budget charged for this launch when it was made.
    pub charged: u64,
}

struct Slot {
    seq: AtomicUsize,
    data: UnsafeCell<Sample>,
}

/// A bounded multi-producer queue (Vyukov's), one consumer at a time.
struct Queue {
    slots: Box<[Slot]>,
    head: AtomicUsize,
    tail: AtomicUsize,
    consumer: AtomicBool,
}

// SAFETY: a slot's data is written only by the producer that claimed it and
// read only by the consumer after the producer's Release store of `seq`.
unsafe impl Sync for Queue {}

const QUEUE: usize = 4096;

fn queue() -> &'static Queue {
    static Q: OnceLock<Queue> = OnceLock::new();
    Q.get_or_init(|| Queue {
        slots: (0..QUEUE)
            .map(|i| Slot {
                seq: AtomicUsize::new(i),
                data: UnsafeCell::new(Sample::default()),
            })
            .collect(),
        head: AtomicUsize::new(0),
        tail: AtomicUsize::new(0),
        consumer: AtomicBool::new(false),
    })
}

impl Queue {
    fn push(&self, s: Sample) -> bool {
        let mut pos = self.tail.load(Relaxed);
        loop {
            let slot = &self.slots[pos % QUEUE];
            let seq = slot.seq.load(Acquire);
            match (seq as isize).wrapping_sub(pos as isize) {
                0 => match self
                    .tail
                    .compare_exchange_weak(pos, pos + 1, Relaxed, Relaxed)
                {
                    Ok(_) => {
                        // SAFETY: this producer owns the slot until it publishes seq.
                        unsafe { *slot.data.get() = s };
                        slot.seq.store(pos + 1, Release);
                        return true;
                    }
                    Err(p) => pos = p,
                },
                d if d < 0 => return false,
                _ => pos = self.tail.load(Relaxed),
            }
        }
    }

    /// Pops one sample; call only while holding `consumer`.
    fn pop(&self) -> Option<Sample> {
        let pos = self.head.load(Relaxed);
        let slot = &self.slots[pos % QUEUE];
        if slot.seq.load(Acquire) != pos + 1 {
            return None;
        }
        // SAFETY: published by its producer (seq == pos + 1).
        let s = unsafe { *slot.data.get() };
        slot.seq.store(pos + QUEUE, Release);
        self.head.store(pos + 1, Relaxed);
        Some(s)
    }
}

// ---------------------------------------------------------------- the launch side

thread_local! {
    static COUNTDOWN: Cell<u32> = const { Cell::new(0) };
}

/// Whether this launch is to be timed (one in `PERIOD` per thread).
#[inline]
pub fn due() -> bool {
    COUNTDOWN.with(|c| {
        let n = c.get();
        if n == 0 {
            c.set(PERIOD.load(Relaxed).max(1) - 1);
            true
        } else {
            c.set(n - 1);
            false
        }
    })
}

/// A sample in progress: events taken, start recorded.
pub struct Pending {
    sample: Sample,
    end: usize,
    stream: CUstream,
}

/// Before a sampled launch: takes an event pair in the current context and
/// records the start on `stream`. `None` (and the launch goes untimed) when
/// the stream is capturing, no pair is free, or the driver refuses.
pub fn begin(stream: CUstream, mut sample: Sample) -> Option<Pending> {
    let h = helpers()?;
    // SAFETY: driver calls with out-pointers we own.
    unsafe {
        let mut status = 0;
        if (h.stream_is_capturing)(stream, &mut status) != CUDA_SUCCESS || status != 0 {
            return None;
        }
        let mut ctx: CUcontext = std::ptr::null_mut();
        if (h.ctx_get_current)(&mut ctx) != CUDA_SUCCESS || ctx.is_null() {
            return None;
        }
        let pi = pool_for(ctx as usize)?;
        let pool = &POOLS_[pi];
        let generation = pool.generation.load(Acquire);
        let (ki, pair) = pool.pairs.iter().enumerate().find(|(_, p)| {
            p.busy
                .compare_exchange(false, true, Acquire, Relaxed)
                .is_ok()
        })?;
        let release = || pair.busy.store(false, Release);
        let mut events = [pair.start.load(Relaxed), pair.end.load(Relaxed)];
        for (k, e) in events.iter_mut().enumerate() {
            if *e == 0 {
                let mut ev: CUevent = std::ptr::null_mut();
                if (h.event_create)(&mut ev, 0) != CUDA_SUCCESS {
                    release();
                    return None;
                }
                *e = ev as usize;
                [&pair.start, &pair.end][k].store(*e, Relaxed);
            }
        }
        if (h.event_record)(events[0] as CUevent, stream) != CUDA_SUCCESS {
            release();
            return None;
        }
        sample.pool = pi as u8;
        sample.pair = ki as u8;
        sample.generation = generation;
        sample.ctx = ctx as usize;
        Some(Pending {
            sample,
            end: events[1],
            stream,
        })
    }
}

/// After the launch: records the end event and queues the sample, or gives
/// the pair back if the launch failed. `charged` is what the budget charged.
pub fn finish(mut p: Pending, launched: bool, charged: u64) {
    p.sample.charged = charged;
    let pair = &POOLS_[p.sample.pool as usize].pairs[p.sample.pair as usize];
    let recorded = launched
        && helpers().is_some_and(|h| {
            // SAFETY: recording an event this sample owns on the launch stream.
            unsafe { (h.event_record)(p.end as CUevent, p.stream) == CUDA_SUCCESS }
        });
    if !(recorded && queue().push(p.sample)) {
        pair.busy.store(false, Release);
        return;
    }
    crate::budget::sample_queued(p.sample.graph);
    crate::collector::ensure_running();
}

// ---------------------------------------------------------------- the collector side

/// What the collector measured of one kernel (function).
#[derive(Default)]
pub struct FuncStats {
    pub name: String,
    pub sampled: u64,
    pub sampled_ns: u64,
    pub occupancy: f64,
    pub block_threads: u32,
}

/// The collector's private state (one consumer at a time).
#[derive(Default)]
pub struct Collector {
    pending: Vec<Sample>,
    pub funcs: HashMap<usize, FuncStats>,
    /// (function, block threads, dynamic shared bytes) → (blocks per SM, occupancy).
    occupancy: HashMap<(usize, u32, u32), (u32, f64)>,
    /// context → (SMs, max threads per SM).
    devices: HashMap<usize, (u32, u32)>,
    last_launches: u64,
    last_rate_ns: u64,
    /// Σ sampled GPU time × the fraction of the device's SMs each launch could use.
    occupancy_weighted_ns: f64,
    /// The last valid control block.
    control: Option<ControlValues>,
}

static ACTIVE_CAPTURES: AtomicU32 = AtomicU32::new(0);
static CURRENT_CTX: AtomicUsize = AtomicUsize::new(0);

pub fn captures_active(n: u32) {
    ACTIVE_CAPTURES.store(n, Relaxed);
}

impl Collector {
    /// Processes whatever samples have completed. Returns how many are still
    /// outstanding.
    pub fn poll(&mut self, seg: &Segment) -> usize {
        let q = queue();
        if q.consumer
            .compare_exchange(false, true, Acquire, Relaxed)
            .is_err()
        {
            return self.pending.len();
        }
        while let Some(s) = q.pop() {
            self.pending.push(s);
        }
        q.consumer.store(false, Release);
        // Querying events is illegal while a stream captures in global mode.
        if ACTIVE_CAPTURES.load(Relaxed) > 0 {
            return self.pending.len();
        }
        let Some(h) = helpers() else {
            return self.pending.len();
        };
        let mut keep = Vec::with_capacity(self.pending.len());
        for s in std::mem::take(&mut self.pending) {
            let pool = &POOLS_[s.pool as usize];
            let pair = &pool.pairs[s.pair as usize];
            if pool.generation.load(Acquire) != s.generation {
                crate::budget::sample_done(s.graph, None, s.charged);
                continue;
            }
            let (start, end) = (
                pair.start.load(Relaxed) as CUevent,
                pair.end.load(Relaxed) as CUevent,
            );
            // SAFETY: events of a live context (generation checked), owned by this sample.
            let done = unsafe {
                if CURRENT_CTX.swap(s.ctx, Relaxed) != s.ctx {
                    (h.ctx_set_current)(s.ctx as CUcontext);
                }
                match (h.event_query)(end) {
                    CUDA_ERROR_NOT_READY => None,
                    CUDA_SUCCESS => {
                        let mut ms = 0f32;
                        Some(((h.event_elapsed)(&mut ms, start, end) == CUDA_SUCCESS).then_some(ms))
                    }
                    _ => Some(None),
                }
            };
            match done {
                None => keep.push(s),
                Some(ms) => {
                    pair.busy.store(false, Release);
                    match ms {
                        Some(ms) => self.record(seg, &s, (ms as f64 * 1e6).max(0.0) as u64),
                        None => crate::budget::sample_done(s.graph, None, s.charged),
                    }
                }
            }
        }
        self.pending = keep;
        self.pending.len()
    }

    fn record(&mut self, seg: &Segment, s: &Sample, ns: u64) {
        let st = &seg.stats;
        st.sampled_launches.fetch_add(1, Relaxed);
        st.sampled_gpu_ns.fetch_add(ns, Relaxed);
        st.kernel_hist[shm::bucket_of(ns)].fetch_add(1, Relaxed);
        crate::priority::sampled(ns);
        let (sm_fraction, occupancy) = if s.graph {
            (1.0, 0.0)
        } else {
            self.occupancy_of(s)
        };
        self.occupancy_weighted_ns += ns as f64 * sm_fraction;
        crate::budget::sample_done(s.graph, Some((ns as f64 * sm_fraction) as u64), s.charged);
        let key = if s.graph { 0 } else { s.func };
        let f = self.funcs.entry(key).or_default();
        if f.name.is_empty() {
            f.name = if s.graph {
                "(CUDA graph)".into()
            } else {
                crate::wrappers::function_name(s.func)
            };
        }
        f.sampled += 1;
        f.sampled_ns += ns;
        f.occupancy = occupancy;
        f.block_threads = s.block_threads;
    }

    /// (fraction of the device's SMs the launch could occupy, theoretical occupancy).
    fn occupancy_of(&mut self, s: &Sample) -> (f64, f64) {
        let Some(h) = helpers() else {
            return (1.0, 0.0);
        };
        let (sms, threads_per_sm) = *self.devices.entry(s.ctx).or_insert_with(|| {
            let (mut dev, mut sms, mut tps) = (0, 0, 0);
            // SAFETY: queries of the current context (set in poll) with our out-pointers.
            unsafe {
                (h.ctx_get_device)(&mut dev);
                (h.device_attribute)(&mut sms, ATTR_MULTIPROCESSOR_COUNT, dev);
                (h.device_attribute)(&mut tps, ATTR_MAX_THREADS_PER_MULTIPROCESSOR, dev);
            }
            (sms.max(1) as u32, tps.max(32) as u32)
        });
        let (per_sm, occ) = *self
            .occupancy
            .entry((s.func, s.block_threads, s.shared_bytes))
            .or_insert_with(|| {
                let mut n = 0;
                // SAFETY: the driver's occupancy query for a function it gave out.
                let ok = unsafe {
                    (h.occupancy)(
                        &mut n,
                        s.func as CUfunction,
                        s.block_threads as i32,
                        s.shared_bytes as usize,
                    )
                };
                let n = if ok == CUDA_SUCCESS {
                    n.max(0) as u32
                } else {
                    0
                };
                let warps = s.block_threads.div_ceil(32);
                (n, (n * warps) as f64 / (threads_per_sm / 32) as f64)
            });
        let capacity = per_sm as f64 * sms as f64;
        let sm_fraction = if capacity > 0.0 {
            (s.blocks as f64 / capacity).min(1.0)
        } else {
            1.0
        };
        (sm_fraction, occ)
    }

    /// Applies the control block: budget and pause at once, sampling knobs at
    /// the next publish. A corrupt block is ignored (with one warning) and the
    /// last valid settings stay in force. Called every few milliseconds.
    pub fn apply_control(&mut self, seg: &Segment) {
        match seg.control.read() {
            ControlRead::Valid(v) => {
                if self.control != Some(v) {
                    crate::budget::set(v.budget_ppm, v.paused);
                    crate::memory::apply_control(seg, v.memory_limit);
                    self.control = Some(v);
                }
            }
            ControlRead::Corrupt => crate::warn_once(
                &crate::WARNED_CONTROL,
                "the control block is corrupt; ignoring it",
            ),
            ControlRead::Absent | ControlRead::Busy => {}
        }
    }

    /// Publishes the estimated totals and the top kernels. Called every
    /// ~100 ms and at exit.
    pub fn publish(&mut self, seg: &Segment) {
        // Every launch stands for the same share of the unsampled ones:
        // scale the measured totals by launches / sampled launches.
        let st = &seg.stats;
        let launches = st.launches() + st.graph_launches();
        let sampled = st.sampled_launches.load(Relaxed);
        let scale = if sampled > 0 {
            launches as f64 / sampled as f64
        } else {
            0.0
        };
        st.estimated_gpu_ns.store(
            (st.sampled_gpu_ns.load(Relaxed) as f64 * scale) as u64,
            Relaxed,
        );
        st.occupancy_weighted_sm_ns
            .store((self.occupancy_weighted_ns * scale) as u64, Relaxed);
        let mut top: Vec<&FuncStats> = self.funcs.values().collect();
        top.sort_by_key(|f| std::cmp::Reverse(f.sampled_ns));
        for (i, slot) in seg.stats.top.iter().enumerate() {
            if let Some(f) = top.get(i) {
                slot.write(&TopKernelView {
                    name: f.name.clone(),
                    launches: (f.sampled as f64 * scale).round() as u64,
                    gpu_ns: (f.sampled_ns as f64 * scale) as u64,
                    occupancy: f.occupancy,
                    block_threads: f.block_threads,
                });
            }
        }
    }

    /// Sets the sampling period from the launch rate over the last ≥ 5 ms
    /// (or as the control block fixes it). Called every collector iteration,
    /// so a burst of launches stops being timed one by one within milliseconds.
    pub fn adapt_period(&mut self, seg: &Segment, now_ns: u64) {
        let dt = now_ns.saturating_sub(self.last_rate_ns);
        if dt < 5_000_000 {
            return;
        }
        let launches = seg.stats.launches() + seg.stats.graph_launches();
        let control = self.control;
        let period = match control {
            Some(c) if c.sample_period > 0 => c.sample_period,
            _ => {
                let rate = launches.saturating_sub(self.last_launches) as f64 * 1e9 / dt as f64;
                let budget = control
                    .map(|c| c.overhead_ppm as u64)
                    .filter(|&p| p > 0)
                    .unwrap_or(DEFAULT_OVERHEAD_PPM);
                let affordable = budget as f64 * 1e3 / SAMPLE_COST_NS as f64; // samples per second
                ((rate / affordable).ceil() as u32).max(1)
            }
        };
        self.last_launches = launches;
        self.last_rate_ns = now_ns;
        PERIOD.store(period, Relaxed);
        seg.stats.sample_period.store(period, Relaxed);
    }
}

pub fn reset_after_fork() {
    // The child has one thread: no producer or consumer is mid-operation
    // except one the fork interrupted, whose slot is abandoned by resetting.
    let q = queue();
    for (i, s) in q.slots.iter().enumerate() {
        s.seq.store(i, Relaxed);
    }
    q.head.store(0, Relaxed);
    q.tail.store(0, Relaxed);
    q.consumer.store(false, Relaxed);
    for p in &POOLS_ {
        p.ctx.store(0, Relaxed);
        p.generation.fetch_add(1, Relaxed);
        for pair in &p.pairs {
            pair.busy.store(false, Relaxed);
            pair.start.store(0, Relaxed);
            pair.end.store(0, Relaxed);
        }
    }
    CURRENT_CTX.store(0, Relaxed);
    PERIOD.store(1, Relaxed);
    COUNTDOWN.with(|c| c.set(0));
}
