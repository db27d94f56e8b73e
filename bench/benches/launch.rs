//! Criterion: one `cuLaunchKernel` against gpusim in null-launch mode,
//! straight to the driver and through the shim, from 1 and 2 threads.
//! Run: `cargo build --release --workspace && cargo bench -p vagus-bench`

use criterion::{Criterion, criterion_group, criterion_main};
use std::sync::{Barrier, OnceLock};
use std::time::{Duration, Instant};
use vagus_bench::{Bench, LaunchFn};

fn bench() -> &'static Bench {
    static B: OnceLock<Bench> = OnceLock::new();
    B.get_or_init(Bench::new)
}

/// Time for `iters` launches on each of `threads` threads at once (the slowest thread's).
fn parallel(b: &'static Bench, f: LaunchFn, threads: usize, iters: u64) -> Duration {
    let barrier = Barrier::new(threads);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let t = Instant::now();
                    for _ in 0..iters {
                        b.launch(f);
                    }
                    t.elapsed()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).max().unwrap()
    })
}

fn launch(c: &mut Criterion) {
    let b = bench();
    let mut g = c.benchmark_group("cuLaunchKernel");
    for threads in [1usize, 2] {
        for (name, f) in [("direct", b.direct), ("shim", b.shim)] {
            g.bench_function(format!("{name}/{threads}-thread"), |bn| {
                if threads == 1 {
                    bn.iter(|| b.launch(f))
                } else {
                    bn.iter_custom(|iters| parallel(b, f, threads, iters))
                }
            });
        }
    }
    g.finish();
}

criterion_group!(benches, launch);
criterion_main!(benches);
