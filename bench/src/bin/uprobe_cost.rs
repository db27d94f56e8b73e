//! What each of the agent's uprobes costs per hit on this machine: the
//! probe programs of `vagus-ebpf` attached to two functions of this binary
//! — an ordinary one and one that starts with a 5-byte nop (which newer
//! kernels can patch into a call instead of a trap) — called in a loop,
//! against the same loop with nothing attached. Needs root.
//!
//! With `--libcuda PATH` it also times `cuCtxSynchronize` (on an idle
//! context) through that driver with and without the synchronisation probes
//! attached to it: the per-hit cost on a real libcuda.
//!
//! `uprobe_cost [--calls N] [--rounds R] [--libcuda PATH]`; prints one JSON object.

use std::hint::black_box;
use std::time::Instant;
use vagus_ebpf::Probes;

/// An ordinary function: `push`-free, but its first instruction is a real one.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn vagus_bench_plain(x: u64) -> u64 {
    black_box(x).wrapping_mul(3).wrapping_add(1)
}

/// The same work, behind a leading 5-byte nop (`nopl 0x0(%rax,%rax,1)`).
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub extern "C" fn vagus_bench_nop5(x: u64) -> u64 {
    std::arch::naked_asm!(
        ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
        "lea rax, [rdi + rdi*2 + 1]",
        "ret"
    )
}

/// Called once with the cuInit probe attached, so this process has
/// counters for the other probes to add to (as a GPU process would).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn vagus_bench_init() -> u64 {
    black_box(0)
}

fn per_call_ns(f: extern "C" fn(u64) -> u64, calls: u64, rounds: usize) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..rounds {
        let t = Instant::now();
        let mut acc = 0u64;
        for i in 0..calls {
            acc = acc.wrapping_add(f(black_box(i)));
        }
        black_box(acc);
        best = best.min(t.elapsed().as_nanos() as f64 / calls as f64);
    }
    best
}

type CuInit = unsafe extern "C" fn(u32) -> i32;
type CuRetain = unsafe extern "C" fn(*mut *mut std::ffi::c_void, i32) -> i32;
type CuSetCurrent = unsafe extern "C" fn(*mut std::ffi::c_void) -> i32;
type CuSync = unsafe extern "C" fn() -> i32;

/// `cuCtxSynchronize` through `lib`, ns per call (best of `rounds`).
fn driver_sync_ns(lib: &std::path::Path, calls: u64, rounds: usize) -> Result<f64, String> {
    use std::ffi::CString;
    let path = CString::new(lib.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: loading a driver library and calling its C entry points with
    // valid arguments.
    unsafe {
        let h = libc::dlopen(path.as_ptr(), libc::RTLD_NOW);
        if h.is_null() {
            return Err(format!("cannot dlopen {}", lib.display()));
        }
        let sym = |n: &str| {
            let c = CString::new(n).expect("no NUL");
            let p = libc::dlsym(h, c.as_ptr());
            if p.is_null() {
                Err(format!("no {n}"))
            } else {
                Ok(p)
            }
        };
        let init: CuInit = std::mem::transmute(sym("cuInit")?);
        let retain: CuRetain = std::mem::transmute(sym("cuDevicePrimaryCtxRetain")?);
        let set: CuSetCurrent = std::mem::transmute(sym("cuCtxSetCurrent")?);
        let sync: CuSync = std::mem::transmute(sym("cuCtxSynchronize")?);
        if init(0) != 0 {
            return Err("cuInit failed".into());
        }
        let mut ctx = std::ptr::null_mut();
        if retain(&mut ctx, 0) != 0 || set(ctx) != 0 {
            return Err("no context on device 0".into());
        }
        let mut best = f64::INFINITY;
        for _ in 0..rounds {
            let t = Instant::now();
            for _ in 0..calls {
                black_box(sync());
            }
            best = best.min(t.elapsed().as_nanos() as f64 / calls as f64);
        }
        Ok(best)
    }
}

fn main() {
    let mut calls = 200_000u64;
    let mut rounds = 5usize;
    let mut libcuda: Option<std::path::PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_default();
        match a.as_str() {
            "--calls" => calls = v.parse().expect("--calls N"),
            "--rounds" => rounds = v.parse().expect("--rounds R"),
            "--libcuda" => libcuda = Some(v.into()),
            _ => {
                eprintln!("usage: uprobe_cost [--calls N] [--rounds R] [--libcuda PATH]");
                std::process::exit(2);
            }
        }
    }
    let exe = std::env::current_exe().expect("this binary's path");
    let base_plain = per_call_ns(vagus_bench_plain, calls, rounds);
    let base_nop5 = per_call_ns(vagus_bench_nop5, calls, rounds);

    // (what, programs) — a pair is an entry probe and its return probe.
    let cases: &[(&str, &[&str])] = &[
        ("cuInit (entry)", &["vagus_cu_init"]),
        (
            "counter (entry: contexts, modules, launches)",
            &["vagus_launch"],
        ),
        (
            "cuMemAlloc_v2 (entry + return)",
            &["vagus_mem_alloc", "vagus_mem_alloc_ret"],
        ),
        (
            "cuMemFree_v2 (entry + return)",
            &["vagus_mem_free", "vagus_mem_free_ret"],
        ),
        (
            "synchronize (entry + return)",
            &["vagus_sync", "vagus_sync_ret"],
        ),
    ];
    let mut rows = Vec::new();
    for (what, progs) in cases {
        for (target, f, base) in [
            (
                "vagus_bench_plain",
                vagus_bench_plain as extern "C" fn(u64) -> u64,
                base_plain,
            ),
            ("vagus_bench_nop5", vagus_bench_nop5, base_nop5),
        ] {
            // A fresh load per case: dropping it detaches everything.
            let mut probes = match Probes::load(false) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("uprobe_cost: {e}");
                    std::process::exit(1);
                }
            };
            probes
                .attach_uprobe("vagus_cu_init", &exe, "vagus_bench_init")
                .expect("attach the init probe");
            vagus_bench_init();
            for p in *progs {
                probes.attach_uprobe(p, &exe, target).expect("attach");
            }
            let with = per_call_ns(f, calls, rounds);
            let hits = probes
                .counters(std::process::id())
                .map(|c| c.launches + c.syncs)
                .unwrap_or(0);
            rows.push(serde_json::json!({
                "probe": what,
                "function": target,
                "ns_per_call_without": (base * 10.0).round() / 10.0,
                "ns_per_call_with": (with * 10.0).round() / 10.0,
                "ns_per_hit": ((with - base) * 10.0).round() / 10.0,
                "counted": hits,
            }));
        }
    }
    let driver = libcuda.map(|lib| {
        let without = driver_sync_ns(&lib, calls, rounds);
        let mut probes = Probes::load(false).expect("probes");
        let attached = probes.attach_libcuda(&lib);
        let with = driver_sync_ns(&lib, calls, rounds);
        let syncs = probes.counters(std::process::id()).map(|c| c.syncs);
        match (without, with) {
            (Ok(a), Ok(b)) => serde_json::json!({
                "libcuda": lib, "call": "cuCtxSynchronize",
                "ns_per_call_without": (a * 10.0).round() / 10.0,
                "ns_per_call_with": (b * 10.0).round() / 10.0,
                "ns_per_hit": ((b - a) * 10.0).round() / 10.0,
                "syncs_counted": syncs,
                "probes_attached": attached.map(|a| a.probes.len()).map_err(|e| e.to_string()),
            }),
            (a, b) => {
                serde_json::json!({"libcuda": lib, "error": format!("{:?} {:?}", a.err(), b.err())})
            }
        }
    });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "{}",
        serde_json::json!({
            "kernel": kernel.trim(),
            "calls": calls,
            "rounds": rounds,
            "cases": rows,
            "driver": driver,
        })
    );
}
