//! The node's Prometheus exposition (text format 0.0.4). Device metrics use
//! dcgm-exporter's names and labels (`gpu`, `UUID`, `device`, `Hostname`)
//! so existing dashboards work — all but `modelName`, which `promtool check
//! metrics` rejects as camelCase: the model is on `vagus_gpu_info` instead
//! (`model_name`, joinable on `gpu` and `UUID`). Process, kernel and agent
//! metrics are `vagus_*` in base units, counters ending in `_total`,
//! durations as histograms in seconds.

use crate::node::{Node, Proc};
use std::fmt::Write;
use vagus_ebpf::SYNC_BUCKETS;
use vagus_proto::shm;

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(pairs: &[(&str, String)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        let _ = writeln!(self.0, "{name}{labels} {value}");
    }
}

fn proc_labels(p: &Proc, node: &str) -> Vec<(&'static str, String)> {
    vec![
        ("pid", p.pid.to_string()),
        ("comm", p.comm.clone()),
        ("gpu", p.gpu.map(|g| g.to_string()).unwrap_or_default()),
        ("pod", p.attribution.pod_uid.clone().unwrap_or_default()),
        ("namespace", String::new()),
        (
            "container",
            p.attribution.container_id.clone().unwrap_or_default(),
        ),
        ("Hostname", node.to_string()),
    ]
}

/// Writes a cumulative histogram from (upper bound in seconds, count) pairs;
/// `total` is every observation (the `+Inf` bucket).
fn histogram(
    out: &mut Out,
    name: &str,
    base: &[(&str, String)],
    buckets: &[(f64, u64)],
    total: u64,
    sum_s: f64,
) {
    let mut cum = 0;
    for (le, n) in buckets {
        cum += n;
        let mut l = base.to_vec();
        l.push(("le", format!("{le:e}")));
        out.sample(&format!("{name}_bucket"), &labels(&l), cum);
    }
    let mut l = base.to_vec();
    l.push(("le", "+Inf".into()));
    out.sample(&format!("{name}_bucket"), &labels(&l), total.max(cum));
    out.sample(&format!("{name}_sum"), &labels(base), sum_s);
    out.sample(&format!("{name}_count"), &labels(base), total.max(cum));
}

/// The shim's log buckets folded to one per power of two, in seconds.
fn shim_buckets(hist: &[u64; shm::HIST_BUCKETS]) -> Vec<(f64, u64)> {
    let mut out: Vec<(f64, u64)> = Vec::new();
    for (b, &n) in hist.iter().enumerate() {
        // Bucket b holds values below the next bucket's floor; one
        // boundary per power of two (every eighth bucket).
        // The last bucket is open-ended: only `+Inf` bounds it.
        let Some(upper) = (b + 1 < shm::HIST_BUCKETS)
            .then(|| shm::bucket_floor(b + 1).checked_next_power_of_two())
            .flatten()
        else {
            break;
        };
        let le = upper as f64 / 1e9;
        match out.last_mut() {
            Some((l, c)) if *l == le => *c += n,
            _ => out.push((le, n)),
        }
    }
    out
}

/// The current state of the node, as Prometheus text.
pub fn render(node: &Node, hostname: &str) -> String {
    let mut o = Out(String::new());
    let dev = |g: &crate::nvml::GpuSample| {
        labels(&[
            ("gpu", g.index.to_string()),
            ("UUID", g.uuid.clone()),
            ("device", format!("nvidia{}", g.index)),
            ("Hostname", hostname.to_string()),
        ])
    };
    if !node.last_gpus.is_empty() {
        o.family(
            "vagus_gpu_info",
            "gauge",
            "A GPU and its model (dcgm-exporter's modelName label).",
        );
        for g in &node.last_gpus {
            let l = labels(&[
                ("gpu", g.index.to_string()),
                ("UUID", g.uuid.clone()),
                ("model_name", g.model.clone()),
                ("Hostname", hostname.to_string()),
            ]);
            o.sample("vagus_gpu_info", &l, 1);
        }
    }
    type Field = fn(&crate::nvml::GpuSample) -> Option<f64>;
    let fields: [(&str, &str, Field); 8] = [
        ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", |g| {
            g.utilization_pct.map(f64::from)
        }),
        (
            "DCGM_FI_DEV_FB_USED",
            "Framebuffer memory used (in MiB).",
            |g| g.memory_used_bytes.map(|b| (b >> 20) as f64),
        ),
        (
            "DCGM_FI_DEV_FB_FREE",
            "Framebuffer memory free (in MiB).",
            |g| Some((g.memory_total_bytes?.saturating_sub(g.memory_used_bytes?) >> 20) as f64),
        ),
        ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", |g| {
            g.power_mw.map(|mw| mw as f64 / 1000.0)
        }),
        (
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
            "Total energy consumption since boot (in mJ).",
            |g| g.energy_mj.map(|e| e as f64),
        ),
        (
            "DCGM_FI_DEV_SM_CLOCK",
            "SM clock frequency (in MHz).",
            |g| g.sm_clock_mhz.map(f64::from),
        ),
        (
            "DCGM_FI_DEV_MEM_CLOCK",
            "Memory clock frequency (in MHz).",
            |g| g.mem_clock_mhz.map(f64::from),
        ),
        ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", |g| {
            g.temperature_c.map(f64::from)
        }),
    ];
    for (name, help, f) in fields {
        let samples: Vec<(String, f64)> = node
            .last_gpus
            .iter()
            .filter_map(|g| f(g).map(|v| (dev(g), v)))
            .collect();
        if samples.is_empty() {
            continue;
        }
        o.family(name, "gauge", help);
        for (l, v) in samples {
            o.sample(name, &l, v);
        }
    }

    // Device faults: dcgm-exporter's last-XID gauge, and counts by XID.
    if !node.last_gpus.is_empty() && node.has_xid_events() {
        o.family(
            "DCGM_FI_DEV_XID_ERRORS",
            "gauge",
            "Value of the last XID error encountered.",
        );
        for g in &node.last_gpus {
            o.sample(
                "DCGM_FI_DEV_XID_ERRORS",
                &dev(g),
                node.last_xid.get(&g.index).copied().unwrap_or(0),
            );
        }
        o.family(
            "vagus_gpu_xid_errors_total",
            "counter",
            "XID errors NVML reported, by GPU and XID.",
        );
        for ((gpu, xid), n) in &node.xid_counts {
            let l = labels(&[
                ("gpu", gpu.to_string()),
                ("xid", xid.to_string()),
                ("Hostname", hostname.to_string()),
            ]);
            o.sample("vagus_gpu_xid_errors_total", &l, n);
        }
    }

    // Processes.
    let procs: Vec<&Proc> = node.procs.values().collect();
    o.family(
        "vagus_process_info",
        "gauge",
        "A GPU process and where its data comes from (1 per source).",
    );
    for p in &procs {
        for (source, on) in [
            ("ebpf", p.sources.ebpf),
            ("shim", p.sources.shim),
            ("nvml", p.sources.nvml),
        ] {
            if on {
                let mut l = proc_labels(p, hostname);
                l.push(("source", source.into()));
                o.sample("vagus_process_info", &labels(&l), 1);
            }
        }
    }
    o.family(
        "vagus_process_memory_bytes",
        "gauge",
        "Device memory a process holds (NVML, else the shim, else the probes).",
    );
    for p in &procs {
        o.sample(
            "vagus_process_memory_bytes",
            &labels(&proc_labels(p, hostname)),
            p.memory_bytes(),
        );
    }
    let shimmed: Vec<&&Proc> = procs.iter().filter(|p| p.shim.is_some()).collect();
    if !shimmed.is_empty() {
        type Total = fn(&crate::node::ShimTotals) -> f64;
        let totals: [(&str, &str, Total); 4] = [
            (
                "vagus_process_launches_total",
                "Kernel launches counted by the shim.",
                |s| s.launches as f64,
            ),
            (
                "vagus_process_gpu_seconds_total",
                "GPU time of the process's kernels (estimated from timed samples).",
                |s| s.gpu_ns as f64 / 1e9,
            ),
            (
                "vagus_process_refused_allocations_total",
                "Allocations the shim refused for crossing the process's memory limit.",
                |s| s.refused_allocations as f64,
            ),
            (
                "vagus_process_refused_bytes_total",
                "Bytes of the allocations the shim refused.",
                |s| s.refused_bytes as f64,
            ),
        ];
        for (name, help, total) in totals {
            o.family(name, "counter", help);
            for p in &shimmed {
                let s = p.shim.as_ref().expect("filtered");
                o.sample(name, &labels(&proc_labels(p, hostname)), total(s));
            }
        }
        o.family(
            "vagus_process_shim_memory_bytes",
            "gauge",
            "Memory the process holds by kind, as the shim counts its allocations (host: page-locked host memory).",
        );
        for p in &shimmed {
            let s = p.shim.as_ref().expect("filtered");
            for (kind, bytes) in shm::MEMORY_KINDS.iter().zip(s.memory_kinds) {
                let mut l = proc_labels(p, hostname);
                l.push(("kind", kind.to_string()));
                o.sample("vagus_process_shim_memory_bytes", &labels(&l), bytes as f64);
            }
        }
        let limited: Vec<&&&Proc> = shimmed
            .iter()
            .filter(|p| p.shim.as_ref().is_some_and(|s| s.memory_limit > 0))
            .collect();
        if !limited.is_empty() {
            o.family(
                "vagus_process_memory_limit_bytes",
                "gauge",
                "The device-memory limit the shim enforces on the process.",
            );
            for p in &limited {
                let s = p.shim.as_ref().expect("filtered");
                o.sample(
                    "vagus_process_memory_limit_bytes",
                    &labels(&proc_labels(p, hostname)),
                    s.memory_limit as f64,
                );
            }
        }
        o.family(
            "vagus_kernel_duration_seconds",
            "histogram",
            "Durations of the process's timed kernel launches.",
        );
        for p in &shimmed {
            let s = p.shim.as_ref().expect("filtered");
            let buckets = shim_buckets(&s.kernel_hist);
            let sum: f64 = s
                .kernel_hist
                .iter()
                .enumerate()
                .map(|(b, &n)| n as f64 * shm::bucket_floor(b) as f64 / 1e9)
                .sum();
            histogram(
                &mut o,
                "vagus_kernel_duration_seconds",
                &proc_labels(p, hostname),
                &buckets,
                s.kernel_hist.iter().sum(),
                sum,
            );
        }
    }
    let probed: Vec<&&Proc> = procs.iter().filter(|p| p.ebpf.is_some()).collect();
    if !probed.is_empty() {
        type Count = fn(&vagus_ebpf::ProcCounters) -> u64;
        let counters: [(&str, &str, Count); 2] = [
            (
                "vagus_process_allocations_total",
                "Successful cuMemAlloc_v2 calls seen by the probes.",
                |c| c.allocs,
            ),
            (
                "vagus_process_allocated_bytes_total",
                "Bytes allocated with cuMemAlloc_v2, seen by the probes.",
                |c| c.alloc_bytes,
            ),
        ];
        for (name, help, count) in counters {
            o.family(name, "counter", help);
            for p in &probed {
                let c = p.ebpf.expect("filtered");
                o.sample(name, &labels(&proc_labels(p, hostname)), count(&c));
            }
        }
        o.family(
            "vagus_process_sync_wait_seconds",
            "histogram",
            "Host waits in stream, context and event synchronisation, seen by the probes.",
        );
        for p in &probed {
            let c = p.ebpf.expect("filtered");
            let buckets: Vec<(f64, u64)> = (0..SYNC_BUCKETS)
                .map(|b| ((1u64 << (b + 1)) as f64 / 1e9, c.sync_hist[b]))
                .collect();
            histogram(
                &mut o,
                "vagus_process_sync_wait_seconds",
                &proc_labels(p, hostname),
                &buckets,
                c.sync_hist.iter().sum(),
                c.sync_ns as f64 / 1e9,
            );
        }
    }

    // The agent itself.
    let host = labels(&[("Hostname", hostname.to_string())]);
    o.family(
        "vagus_agent_probes_loaded",
        "gauge",
        "1 when the eBPF probes are loaded.",
    );
    o.sample(
        "vagus_agent_probes_loaded",
        &host,
        u8::from(node.has_probes()),
    );
    o.family(
        "vagus_agent_segments_skipped_total",
        "counter",
        "Shim segment files skipped, by reason.",
    );
    for (reason, n) in node.segments_skipped() {
        let l = labels(&[
            ("Hostname", hostname.to_string()),
            ("reason", reason.into()),
        ]);
        o.sample("vagus_agent_segments_skipped_total", &l, n);
    }
    for (name, help, v) in [
        (
            "vagus_agent_cgroup_errors_total",
            "Cgroup paths that did not parse.",
            node.counters.cgroup_errors,
        ),
        (
            "vagus_agent_vanished_processes_total",
            "Processes gone before their details could be read.",
            node.counters.vanished,
        ),
        (
            "vagus_agent_probe_events_total",
            "Events read from the probes.",
            node.counters.events,
        ),
        (
            "vagus_agent_windows_total",
            "Telemetry windows produced.",
            node.counters.windows,
        ),
    ] {
        o.family(name, "counter", help);
        o.sample(name, &host, v);
    }
    o.0
}
