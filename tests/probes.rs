//! The node agent's eBPF probes on this kernel: a `vagus load` process on
//! gpusim, without the shim, in a cgroup shaped like a Kubernetes pod's, is
//! seen exec'ing, found within 200 ms of its first `cuInit`, its
//! allocations and synchronisations counted exactly, its exit seen, and it
//! is attributed to its pod and container.
//!
//! Needs root (or CAP_BPF + CAP_PERFMON) and a build with the probes; with
//! `VAGUS_REQUIRE_BPF=1` (CI) a missing capability fails instead of skipping.

use crate::support::*;
use std::time::{Duration, Instant};
use vagus_agent::cgroup;
use vagus_ebpf::{Event, Probes, monotonic_ns};

/// The probes, or `None` (after saying why) where this host cannot load them.
fn probes() -> Option<Probes> {
    let required = std::env::var("VAGUS_REQUIRE_BPF").is_ok_and(|v| v == "1");
    match Probes::load(false) {
        Ok(p) => Some(p),
        Err(e) if !required => {
            eprintln!("skipping: {e}");
            None
        }
        Err(e) => panic!("VAGUS_REQUIRE_BPF=1 but the probes do not load: {e}"),
    }
}

/// A cgroup v2 hierarchy shaped like kubelet's (systemd driver), removed on drop.
struct PodCgroup {
    dirs: Vec<std::path::PathBuf>,
    uid: String,
    container: String,
}

impl PodCgroup {
    fn new(root: &std::path::Path) -> PodCgroup {
        let n = std::process::id();
        let uid = format!("7e57c0de-0000-4000-8000-{n:012x}");
        let container = format!("{:064x}", 0xc0ffee_u64 * n as u64);
        let rel = [
            "kubepods.slice".to_string(),
            "kubepods-burstable.slice".to_string(),
            format!("kubepods-burstable-pod{}.slice", uid.replace('-', "_")),
            format!("cri-containerd-{container}.scope"),
        ];
        let mut dirs = Vec::new();
        let mut dir = root.to_path_buf();
        for part in rel {
            dir = dir.join(part);
            let _ = std::fs::create_dir(&dir);
            dirs.push(dir.clone());
        }
        PodCgroup {
            dirs,
            uid,
            container,
        }
    }

    fn leaf(&self) -> &std::path::Path {
        self.dirs.last().unwrap()
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        // Only the directories this test made empty go; shared parents stay
        // while another test uses them.
        for d in self.dirs.iter().rev().take(2) {
            let _ = std::fs::remove_dir(d);
        }
    }
}

#[test]
fn an_unshimmed_gpu_process_is_found_counted_and_attributed() {
    let Some(mut probes) = probes() else { return };
    let lib = libdir().join("libcuda.so.1");
    let attached = probes.attach_libcuda(&lib).unwrap();
    let names: Vec<&str> = attached.probes.iter().map(|(_, s)| s.as_str()).collect();
    for sym in [
        "cuInit",
        "cuMemAlloc_v2",
        "cuMemFree_v2",
        "cuStreamSynchronize",
    ] {
        assert!(names.contains(&sym), "{sym} not probed: {attached:?}");
    }
    assert!(
        probes.attach_libcuda(&lib).unwrap().already,
        "once per file"
    );

    let root = cgroup::v2_root().expect("a cgroup v2 hierarchy");
    let pod = PodCgroup::new(&root);
    let sim = Sim::new("probes");
    // Join the pod's cgroup, then become `vagus load`: 2 workers, each
    // with a 4 KiB input buffer, plus 8 MiB of weights.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec {} load --json --qps 200 --duration 1s --concurrency 2 --input-kib 4 --memory-mib 8",
        pod.leaf().display(),
        bin("vagus").display()
    );
    let child = sim
        .cmd("sh")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();

    let mut exec = None;
    let mut cuinit = None;
    let mut exited = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !exited && Instant::now() < deadline {
        probes.drain(|e| {
            if e.pid() != pid {
                return;
            }
            match e {
                Event::Exec {
                    comm, cgroup_id, ..
                } if comm == "vagus" => exec = Some(cgroup_id),
                Event::CuInit {
                    ts_ns, cgroup_id, ..
                } => {
                    let found_after = Duration::from_nanos(monotonic_ns().saturating_sub(ts_ns));
                    cuinit = Some((found_after, cgroup_id));
                }
                Event::Exit { .. } => exited = true,
                _ => {}
            }
        });
        std::thread::sleep(Duration::from_millis(5));
    }
    let report = report(child.wait_with_output().unwrap());
    assert!(exited, "the exit was not seen");
    let cg = exec.expect("the exec of vagus was not seen");
    let (after, cuinit_cg) = cuinit.expect("cuInit was not seen");
    assert!(
        after < Duration::from_millis(200),
        "found {after:?} after its cuInit"
    );
    assert_eq!(cuinit_cg, cg);
    let leaf_ino = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(pod.leaf()).unwrap().ino()
    };
    assert_eq!(cg, leaf_ino, "the probes report the pod's cgroup");

    // Attributed to the pod and container from the cgroup id alone.
    let path = cgroup::Resolver::new(root)
        .path(cg)
        .expect("cgroup id resolves");
    let who = cgroup::attribute(&path).unwrap();
    assert_eq!(who.pod_uid.as_deref(), Some(pod.uid.as_str()), "{path}");
    assert_eq!(who.container_id.as_deref(), Some(pod.container.as_str()));
    assert_eq!(who.qos.as_deref(), Some("burstable"));

    // Counted exactly, from the probes alone.
    let c = probes
        .counters(pid)
        .expect("counters of the exited process");
    let requests = report["requests"].as_u64().unwrap();
    assert!(requests >= 150, "{report}");
    assert_eq!(c.allocs, 3, "weights and two input buffers: {c:?}");
    assert_eq!(c.alloc_bytes, (8 << 20) + 2 * 4096);
    assert_eq!((c.frees, c.freed_bytes), (2, 2 * 4096));
    assert_eq!(c.syncs, requests, "one cuStreamSynchronize per request");
    assert_eq!(c.sync_hist.iter().sum::<u64>(), c.syncs);
    assert!(
        c.sync_ns > 0 && c.module_loads >= 1 && c.cuinit_calls >= 1,
        "{c:?}"
    );
    assert_eq!(c.launches, 0, "launch probes are off by default");
    probes.forget(pid);
    assert!(probes.counters(pid).is_none());
}

#[test]
fn launch_probes_count_every_launch_when_asked_for() {
    let required = std::env::var("VAGUS_REQUIRE_BPF").is_ok_and(|v| v == "1");
    let mut probes = match Probes::load(true) {
        Ok(p) => p,
        Err(e) if !required => {
            eprintln!("skipping: {e}");
            return;
        }
        Err(e) => panic!("VAGUS_REQUIRE_BPF=1 but the probes do not load: {e}"),
    };
    let attached = probes
        .attach_libcuda(&libdir().join("libcuda.so.1"))
        .unwrap();
    assert!(
        attached
            .probes
            .iter()
            .any(|(p, s)| p == "vagus_launch" && s == "cuLaunchKernel"),
        "{attached:?}"
    );
    let sim = Sim::new("probes-launch");
    let child = sim.spawn_load(&["--qps", "200", "--duration", "1s", "--kernels", "3"], &[]);
    let pid = child.id();
    let mut exited = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !exited && Instant::now() < deadline {
        probes.drain(|e| exited |= matches!(e, Event::Exit { pid: p, .. } if p == pid));
        std::thread::sleep(Duration::from_millis(5));
    }
    let report = report(child.wait_with_output().unwrap());
    let c = probes.counters(pid).expect("counters");
    assert_eq!(c.launches, report["kernels"].as_u64().unwrap(), "{c:?}");
}
