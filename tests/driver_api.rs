//! A client that finds the driver as cudart does, on gpusim: kernels run,
//! and bad input gets the error codes NVIDIA's driver returns (the same
//! program's output on an H100 is in bench/results/).

use crate::support::*;
use std::collections::HashMap;

fn run_client(sim: &Sim, name: &str) -> HashMap<String, Vec<String>> {
    let out = sim
        .cmd(c_client(name))
        .env("CLIENT_STALE_HANDLES", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "client failed ({:?}):\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        let k = w.next().unwrap_or_default().to_string();
        let rest: Vec<String> = w.map(String::from).collect();
        // Repeated keys (occupancy, launch_waves, procaddr) keep every line.
        m.entry(k.clone()).or_default().push(rest.join(" "));
    }
    m
}

fn one<'a>(m: &'a HashMap<String, Vec<String>>, k: &str) -> &'a str {
    m.get(k)
        .and_then(|v| v.first())
        .unwrap_or_else(|| panic!("client printed no {k}"))
        .as_str()
}

#[test]
fn cudart_style_client_runs_kernels_and_gets_real_error_codes() {
    let sim = Sim::new("cudart");
    let m = run_client(&sim, "cudart_like");
    assert_eq!(one(&m, "done"), "1");
    for (k, want) in [
        ("init", "0"),
        ("driver_version", "13000"),
        ("sm_count", "132"),
        ("module_load", "0"),
        ("get_function", "0"),
        ("small_max_threads", "256"),
        // Error codes, each as NVIDIA's driver 580.159 returned them on an H100.
        ("device_get_bad", "101"),       // CUDA_ERROR_INVALID_DEVICE
        ("module_load_garbage", "200"),  // CUDA_ERROR_INVALID_IMAGE
        ("get_function_unknown", "500"), // CUDA_ERROR_NOT_FOUND
        ("launch_block_too_big", "1"),   // CUDA_ERROR_INVALID_VALUE (too many threads per block)
        ("launch_over_maxntid", "1"),    // CUDA_ERROR_INVALID_VALUE
        ("launch_grid_zero", "1"),
        ("elapsed_unrecorded", "400"), // CUDA_ERROR_INVALID_HANDLE
        ("alloc_too_much", "2"),       // CUDA_ERROR_OUT_OF_MEMORY
        ("alloc_no_context", "201"),   // CUDA_ERROR_INVALID_CONTEXT
        ("alloc", "0"),
        ("roundtrip", "1"),
        ("free", "0"),
        ("ctx_create_v2", "0"),
        ("ctx_destroy", "0"),
        // Stream capture and graphs.
        ("capture_begin", "0"),
        ("capture_status", "1"),
        ("capture_end", "0"),
        ("graph_instantiate", "0"),
        ("graph_launch", "0"),
        ("capture_sync", "900"), // CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
        ("capture_status_after_sync", "2"),
        ("capture_end_invalidated", "901"), // CUDA_ERROR_STREAM_CAPTURE_INVALIDATED
        // Stale and made-up handles: codes, not crashes.
        ("stream_sync_destroyed", "400"),
        ("stream_destroy_twice", "400"),
        ("event_record_destroyed", "400"),
        ("launch_bogus_function", "400"),
        ("set_current_bogus", "201"),
        ("free_bogus", "1"),
        ("null_out_pointer", "1"),
        ("export_table", "801"), // CUDA_ERROR_NOT_SUPPORTED: gpusim has no private export tables
        ("copy_out_of_range", "1"),
        ("module_of_destroyed_context", "400"),
    ] {
        assert_eq!(one(&m, k), want, "{k}");
    }

    // Kernel time grows with waves: 1, 2, 4 waves of 1M cycles (~505 µs each).
    let waves: Vec<(u32, f64)> = m["launch_waves"]
        .iter()
        .map(|l| {
            let w: Vec<&str> = l.split(' ').collect();
            assert_eq!(w[1], "0", "launch failed: {l}");
            (w[0].parse().unwrap(), w[2].parse().unwrap())
        })
        .collect();
    let one_wave = waves[0].1;
    assert!(
        (0.45..0.7).contains(&one_wave),
        "one wave took {one_wave} ms"
    );
    for (n, ms) in &waves[1..] {
        let ratio = ms / one_wave;
        assert!(
            (*n as f64 * 0.9..*n as f64 * 1.1).contains(&ratio),
            "{n} waves: {ms} ms, {ratio}x one wave"
        );
    }
    let ex: Vec<&str> = one(&m, "launch_ex").split(' ').collect();
    assert_eq!(ex[0], "0", "cuLaunchKernelEx failed");
    let ex_ms: f64 = ex[1].parse().unwrap();
    assert!(
        (0.9..1.1).contains(&(ex_ms / one_wave)),
        "cuLaunchKernelEx took {ex_ms} ms"
    );
    let graph_ms: f64 = one(&m, "graph_ms").parse().unwrap();
    assert!(
        (2.7..3.6).contains(&(graph_ms / one_wave)),
        "a graph of 3 kernels took {graph_ms} ms"
    );

    // cuGetProcAddress picks the newest variant at or below the caller's
    // version, as NVIDIA's driver did for the same queries.
    let procaddr: Vec<&str> = m["procaddr"].iter().map(String::as_str).collect();
    for want in [
        "cuCtxCreate@3020 0 0 cuCtxCreate_v2",
        "cuCtxCreate@11040 0 0 cuCtxCreate_v3",
        "cuCtxCreate@12080 0 0 cuCtxCreate_v4",
        "cuMemAlloc@12000 0 0 cuMemAlloc_v2",
        "cuCtxSynchronize@12080 0 0 cuCtxSynchronize",
        "cuCtxSynchronize@13000 0 0 cuCtxSynchronize_v2",
        "cuGetProcAddress@12000 0 0 cuGetProcAddress_v2",
        "cuNoSuchFunction@12000 0 1 none",
        "cuLaunchKernelEx@11000 0 2 none",
    ] {
        assert!(procaddr.contains(&want), "missing {want:?} in {procaddr:?}");
    }
}

#[test]
fn launches_after_the_driver_fails_to_initialise_are_errors_not_crashes() {
    let sim = Sim::new("badcfg");
    let out = sim
        .cmd(c_client("cudart_like"))
        .env("GPUSIM_SMS", "lots")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("init 100"),
        "cuInit should fail with CUDA_ERROR_NO_DEVICE:\n{text}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("GPUSIM_SMS") && err.contains("lots"),
        "stderr should name the bad variable: {err}"
    );
}

#[test]
fn the_rest_of_the_api_surface_behaves_like_the_driver() {
    let sim = Sim::new("surface");
    let m = run_client(&sim, "api_surface");
    assert_eq!(one(&m, "done"), "1");
    for (k, want) in [
        ("init", "0"),
        ("device_count", "1"),
        ("name_rc", "0"),
        ("uuid_nonzero", "1"),
        ("total_mem_gib", "79"), // 81559 MiB
        // Device attributes as an H100 SXM reports them.
        ("attr_1", "1024"),
        ("attr_10", "32"),
        ("attr_12", "65536"),
        ("attr_13", "1980000"),
        ("attr_39", "2048"),
        ("attr_75", "9"),
        ("attr_76", "0"),
        ("attr_81", "233472"),
        ("attr_82", "65536"),
        ("attr_97", "232448"),
        ("attr_106", "32"),
        ("attr_111", "1024"),
        ("attr_unknown", "1"),
        // Primary context: flags survive until retained; active while retained.
        ("primary_set_flags", "0"),
        ("primary_state", "4 0"),
        ("primary_state_retained", "4 1"),
        ("primary_state_released", "0 0"), // flags reset with the last release
        ("release", "0"),
        // CUDA 12.x and 13 context creation, and the context stack.
        ("ctx_create_v3", "0"),
        ("v3_is_current", "1"),
        ("ctx_create_v4", "0"),
        ("pop_returns_v4", "1"),
        ("then_v3_current", "1"),
        ("push", "0"),
        ("ctx_device", "0"),
        ("load_ex", "0"),
        ("func_name", "spin"),
        ("func_regs", "8"),
        ("occupancy_with_flags", "16"),
        ("mem_info_delta_mib", "2"),
        ("priority_range", "0 -5"),
        ("stream_priority", "1"),
        ("async_roundtrip", "1"),
        // A 20 ms kernel is seen running (CUDA_ERROR_NOT_READY), then done.
        ("stream_query_busy", "600"),
        ("event_query_busy", "600"),
        ("elapsed_busy", "600"),
        ("event_sync", "0"),
        ("event_query_done", "0"),
        ("stream_query_done", "0"),
        ("ctx_sync", "0"),
        ("error_name", "CUDA_ERROR_OUT_OF_MEMORY"),
        ("error_string", "out of memory"),
        ("error_name_unknown", "1"),
        ("unload", "0"),
        ("unload_twice", "400"),
    ] {
        assert_eq!(one(&m, k), want, "{k}");
    }
    let ms: f64 = one(&m, "elapsed_ms").parse().unwrap();
    assert!(
        (19.5..22.0).contains(&ms),
        "a 40M-cycle block at 1980 MHz runs ~20.2 ms, events said {ms}"
    );
}
