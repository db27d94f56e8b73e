//! `vagus load` on gpusim: it holds the requested rate, its latency follows
//! the SM share, and processes sharing a device slow each other down.

use crate::support::*;

#[test]
fn reaches_the_requested_qps_below_saturation() {
    let sim = Sim::new("qps");
    for qps in [100.0, 400.0] {
        let q = qps.to_string();
        let r = sim.load(
            &[
                "--qps",
                &q,
                "--duration",
                "2s",
                "--kernels",
                "2",
                "--work-cycles",
                "100000",
            ],
            &[],
        );
        let achieved = f(&r, "qps");
        assert_eq!(f(&r, "requests"), qps * 2.0, "{r}");
        assert!(
            achieved >= qps * 0.98 && achieved <= qps * 1.001,
            "asked {qps}, got {achieved}: {r}"
        );
        assert_eq!(f(&r, "kernels"), qps * 4.0);
        // Two ~50 µs kernels plus a copy: well under 10 ms even on a busy CI box.
        assert!(f(&r, "latency_ms.p50") < 10.0, "{r}");
        assert!(
            f(&r, "latency_ms.p50") <= f(&r, "latency_ms.p99")
                && f(&r, "latency_ms.p99") <= f(&r, "latency_ms.max")
        );
    }
}

#[test]
fn halving_the_mps_share_doubles_multi_wave_latency() {
    let sim = Sim::new("mpshalf");
    // 4224 blocks of 256 threads: 4 waves on 132 SMs, 8 on 66.
    let args = multi_wave("20", "2s", "1000000");
    let full = sim.load(&args, &[("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "100")]);
    let half = sim.load(&args, &[("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "50")]);
    assert_eq!(f(&full, "device.sms"), 132.0);
    assert_eq!(f(&half, "device.sms"), 66.0);
    let lat = f(&half, "latency_ms.p50") / f(&full, "latency_ms.p50");
    assert!(
        (1.7..=2.3).contains(&lat),
        "latency ratio {lat}: full {full} half {half}"
    );
    let kern = f(&half, "kernel_ms.mean") / f(&full, "kernel_ms.mean");
    assert!((1.9..=2.1).contains(&kern), "kernel time ratio {kern}");
}

#[test]
fn two_processes_on_one_device_are_each_slower_than_alone() {
    let sim = Sim::new("contend");
    // Four-wave kernels of ~1 ms; different rates so the two arrival
    // sequences drift across each other rather than lock in phase.
    let args = |qps| multi_wave(qps, "3s", "500000");
    // Each alone keeps the device ~40% busy; together ~80%.
    let alone_a = sim.load(&args("400"), &[]);
    let alone_b = sim.load(&args("417"), &[]);
    let a = sim.spawn_load(&args("400"), &[]);
    let b = sim.spawn_load(&args("417"), &[]);
    let (both_a, both_b) = (
        report(a.wait_with_output().unwrap()),
        report(b.wait_with_output().unwrap()),
    );
    for (alone, both) in [(&alone_a, &both_a), (&alone_b, &both_b)] {
        // Device time per request (CUDA events) is what the model fixes:
        // alone it is the kernel's own ~1.02 ms, shared it includes waiting
        // for the SMs the other process holds (about 40% of the time, for
        // up to a kernel's length). Latency tails also carry the host's
        // scheduling, which a loaded two-core machine blurs (a p90 ratio of
        // 1.11 was seen beside a device ratio of 1.22), so they are not
        // asserted.
        let device = f(both, "kernel_ms.mean") / f(alone, "kernel_ms.mean");
        assert!(
            device > 1.1,
            "sharing should slow each process's kernels: alone {alone} shared {both}"
        );
    }
}

#[test]
fn a_memory_bound_kernel_keeps_its_speed_on_half_the_sms_and_shares_the_bandwidth() {
    let sim = Sim::new("membound");
    // The busy-wait kernel told to move 2.68 GB: 1 ms at gpusim's 2,680 GB/s,
    // its spin (one cycle) negligible.
    let ptx = sim.dir.join("read.ptx");
    let text =
        gpusim::ptx::BUSY_WAIT_PTX.replace("cycles_param=0", "cycles_param=0 bytes=2680000000");
    std::fs::write(&ptx, text).unwrap();
    let ptx = ptx.to_str().unwrap();
    let args = |qps| {
        [
            "--qps",
            qps,
            "--duration",
            "3s",
            "--kernels",
            "1",
            "--grid",
            "1056",
            "--work-cycles",
            "1",
            "--ptx",
            ptx,
        ]
    };
    let share = |pct| [("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", pct)];
    let kernel_ms = |r: &serde_json::Value| f(r, "kernel_ms.mean");
    let full = sim.load(&args("100"), &share("100"));
    assert!((0.95..1.3).contains(&kernel_ms(&full)), "{full}");
    // 66 SMs draw more than the whole bandwidth: the same time.
    let half = sim.load(&args("100"), &share("50"));
    let r = kernel_ms(&half) / kernel_ms(&full);
    assert!((0.9..1.1).contains(&r), "half/full {r}: {half}");
    // 33 SMs draw 33 × 54 GB/s, two thirds of it: half as long again.
    let quarter = sim.load(&args("100"), &share("25"));
    let r = kernel_ms(&quarter) / kernel_ms(&full);
    assert!((1.3..1.7).contains(&r), "quarter/full {r}: {quarter}");
    // Two half-device processes side by side, each keeping the bandwidth
    // ~40% busy (different rates, so they drift across each other): each
    // process's kernels wait for the other's bytes, although their SMs differ.
    let alone = sim.load(&args("400"), &share("50"));
    let a = sim.spawn_load(&args("400"), &share("50"));
    let b = sim.spawn_load(&args("417"), &share("50"));
    for both in [a, b].map(|c| report(c.wait_with_output().unwrap())) {
        let r = kernel_ms(&both) / kernel_ms(&alone);
        assert!(r > 1.1, "shared/alone {r}: alone {alone} shared {both}");
    }
}
