//! The node agent's eBPF probes and their loader.
//!
//! `src/vagus.bpf.c` (C, CO-RE; compiled by `build.rs` with clang) watches
//! process lifecycle — exec, fork, exit, each with its cgroup id — on
//! BTF tracepoints (no tracefs needed), and the CUDA driver calls that say what a GPU process does on
//! uprobes in the `libcuda` it maps: `cuInit` (a process becomes a GPU
//! process: an event, and its counters start), context creation and
//! destruction, module loads, `cuMemAlloc_v2`/`cuMemFree_v2` with their
//! sizes, and the stream, context and event synchronisations with their wait
//! time in a log2 histogram. `cuLaunchKernel` probes exist but are off by
//! default (they cost every launch a trap into the kernel).
//!
//! [`Probes`] loads the object with aya, attaches the tracepoints, attaches
//! the uprobes to each `libcuda` file it is given (once per file: a uprobe
//! is per inode, so it covers every process mapping that file), and hands
//! out events and per-process counters. Built without clang or kernel BTF,
//! [`Probes::load`] says so ([`ProbeError::NotBuilt`]).

use aya::maps::{HashMap, MapData, RingBuf};
use aya::programs::{BtfTracePoint, UProbe};
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Buckets of the synchronisation-wait histogram: bucket `b` counts waits
/// in [2^b, 2^(b+1)) ns.
pub const SYNC_BUCKETS: usize = 40;

/// `struct vagus_event` of `vagus.h`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct RawEvent {
    kind: u32,
    pid: u32,
    ppid: u32,
    _pad: u32,
    cgroup_id: u64,
    ts_ns: u64,
    comm: [u8; 16],
}

/// `struct vagus_proc` of `vagus.h`: one process's driver-call counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcCounters {
    pub cgroup_id: u64,
    /// CLOCK_MONOTONIC ns of its first `cuInit`.
    pub first_cuinit_ns: u64,
    pub cuinit_calls: u64,
    pub ctx_creates: u64,
    pub ctx_destroys: u64,
    pub module_loads: u64,
    /// Successful `cuMemAlloc_v2` calls and the bytes they allocated.
    pub allocs: u64,
    pub alloc_bytes: u64,
    /// Successful `cuMemFree_v2` calls, and the bytes of those whose
    /// allocation was seen.
    pub frees: u64,
    pub freed_bytes: u64,
    /// Stream, context and event synchronisations and their total wait.
    pub syncs: u64,
    pub sync_ns: u64,
    /// Only counted while the launch probes are attached.
    pub launches: u64,
    pub sync_hist: [u64; SYNC_BUCKETS],
}

// SAFETY: plain `#[repr(C)]` integers, any bit pattern valid, no padding.
unsafe impl aya::Pod for ProcCounters {}

/// Something the probes saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Exec {
        pid: u32,
        cgroup_id: u64,
        ts_ns: u64,
        comm: String,
    },
    Fork {
        pid: u32,
        parent: u32,
        ts_ns: u64,
    },
    Exit {
        pid: u32,
        ts_ns: u64,
    },
    /// A process's first `cuInit`: it is a GPU process now.
    CuInit {
        pid: u32,
        cgroup_id: u64,
        ts_ns: u64,
        comm: String,
    },
}

impl Event {
    pub fn pid(&self) -> u32 {
        match self {
            Event::Exec { pid, .. }
            | Event::Fork { pid, .. }
            | Event::Exit { pid, .. }
            | Event::CuInit { pid, .. } => *pid,
        }
    }

    fn parse(bytes: &[u8]) -> Option<Event> {
        if bytes.len() < std::mem::size_of::<RawEvent>() {
            return None;
        }
        // SAFETY: long enough, and every bit pattern is a valid RawEvent.
        let e: RawEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let comm = || {
            let end = e.comm.iter().position(|&b| b == 0).unwrap_or(e.comm.len());
            String::from_utf8_lossy(&e.comm[..end]).into_owned()
        };
        Some(match e.kind {
            1 => Event::Exec {
                pid: e.pid,
                cgroup_id: e.cgroup_id,
                ts_ns: e.ts_ns,
                comm: comm(),
            },
            2 => Event::Fork {
                pid: e.pid,
                parent: e.ppid,
                ts_ns: e.ts_ns,
            },
            3 => Event::Exit {
                pid: e.pid,
                ts_ns: e.ts_ns,
            },
            4 => Event::CuInit {
                pid: e.pid,
                cgroup_id: e.cgroup_id,
                ts_ns: e.ts_ns,
                comm: comm(),
            },
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("this build has no eBPF probes: {0}")]
    NotBuilt(&'static str),
    #[error("cannot load the eBPF probes (root or CAP_BPF and CAP_PERFMON needed): {0}")]
    Load(String),
    #[error("cannot attach {what}: {why}")]
    Attach { what: String, why: String },
}

/// Driver functions probed: (program, symbols). A symbol a library does
/// not export is skipped.
const SYNCS: &[&str] = &[
    "cuStreamSynchronize",
    "cuStreamSynchronize_ptsz",
    "cuCtxSynchronize",
    // CUDA 13's signature (a context argument), which cudart asks for
    // through cuGetProcAddress on drivers that have it.
    "cuCtxSynchronize_v2",
    "cuEventSynchronize",
];
const UPROBES: &[(&str, &[&str])] = &[
    ("vagus_cu_init", &["cuInit"]),
    (
        "vagus_ctx_create",
        &[
            "cuCtxCreate_v2",
            "cuCtxCreate_v3",
            "cuCtxCreate_v4",
            "cuDevicePrimaryCtxRetain",
        ],
    ),
    (
        "vagus_ctx_destroy",
        &["cuCtxDestroy_v2", "cuDevicePrimaryCtxRelease_v2"],
    ),
    (
        "vagus_module_load",
        &[
            "cuModuleLoad",
            "cuModuleLoadData",
            "cuModuleLoadDataEx",
            "cuModuleLoadFatBinary",
        ],
    ),
    ("vagus_mem_alloc", &["cuMemAlloc_v2"]),
    ("vagus_mem_alloc_ret", &["cuMemAlloc_v2"]),
    ("vagus_mem_free", &["cuMemFree_v2"]),
    ("vagus_mem_free_ret", &["cuMemFree_v2"]),
    ("vagus_sync", SYNCS),
    ("vagus_sync_ret", SYNCS),
];
const LAUNCH_PROBES: (&str, &[&str]) = (
    "vagus_launch",
    &[
        "cuLaunchKernel",
        "cuLaunchKernel_ptsz",
        "cuLaunchKernelEx",
        "cuLaunchKernelEx_ptsz",
    ],
);

/// What attaching to one library did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attached {
    /// (program, symbol) pairs attached.
    pub probes: Vec<(String, String)>,
    /// Symbols the library does not export.
    pub missing: Vec<String>,
    /// The file had been attached to already (same device and inode).
    pub already: bool,
}

/// The loaded probes.
pub struct Probes {
    ebpf: aya::Ebpf,
    events: RingBuf<MapData>,
    procs: HashMap<MapData, u32, ProcCounters>,
    libraries: HashSet<(u64, u64)>,
    launches: bool,
}

/// CLOCK_MONOTONIC now, in ns: the clock of the events' `ts_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(not(vagus_no_bpf))]
fn object() -> Result<&'static [u8], ProbeError> {
    // The bytes must be 8-aligned for the ELF parser.
    #[repr(C, align(8))]
    struct Aligned<B: ?Sized>(B);
    static OBJ: &Aligned<[u8]> =
        &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/vagus.bpf.o")));
    Ok(&OBJ.0)
}

#[cfg(vagus_no_bpf)]
fn object() -> Result<&'static [u8], ProbeError> {
    Err(ProbeError::NotBuilt(include_str!(concat!(
        env!("OUT_DIR"),
        "/why-no-bpf.txt"
    ))))
}

fn load_err(e: impl std::fmt::Display) -> ProbeError {
    ProbeError::Load(e.to_string())
}

impl Probes {
    /// Loads the programs and attaches the lifecycle tracepoints.
    /// `launches`: also probe kernel launches (costly; off by default).
    pub fn load(launches: bool) -> Result<Probes, ProbeError> {
        let bytes = object()?;
        // Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
        let unlimited = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: a valid rlimit; failure leaves the limit as it was.
        unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
        let mut ebpf = aya::Ebpf::load(bytes).map_err(load_err)?;
        let btf = aya::Btf::from_sys_fs().map_err(load_err)?;
        for (prog, tracepoint) in [
            ("vagus_exec", "sched_process_exec"),
            ("vagus_fork", "sched_process_fork"),
            ("vagus_exit", "sched_process_exit"),
        ] {
            let p: &mut BtfTracePoint = program(&mut ebpf, prog)?;
            p.load(tracepoint, &btf).map_err(|e| attach_err(prog, e))?;
            p.attach().map_err(|e| attach_err(prog, e))?;
        }
        for (prog, _) in UPROBES.iter().chain([&LAUNCH_PROBES]) {
            let p: &mut UProbe = program(&mut ebpf, prog)?;
            p.load().map_err(|e| attach_err(prog, e))?;
        }
        let events = RingBuf::try_from(
            ebpf.take_map("EVENTS")
                .ok_or_else(|| load_err("no EVENTS map"))?,
        )
        .map_err(load_err)?;
        let procs = HashMap::try_from(
            ebpf.take_map("PROCS")
                .ok_or_else(|| load_err("no PROCS map"))?,
        )
        .map_err(load_err)?;
        Ok(Probes {
            ebpf,
            events,
            procs,
            libraries: HashSet::new(),
            launches,
        })
    }

    /// Attaches the driver-call probes to a `libcuda` file (every process
    /// that maps it, now or later). Attaching the same file again (same
    /// device and inode, whatever the path) does nothing.
    pub fn attach_libcuda(&mut self, path: &Path) -> Result<Attached, ProbeError> {
        let meta = std::fs::metadata(path).map_err(|e| ProbeError::Attach {
            what: path.display().to_string(),
            why: e.to_string(),
        })?;
        if !self.libraries.insert((meta.dev(), meta.ino())) {
            return Ok(Attached {
                already: true,
                ..Attached::default()
            });
        }
        let mut done = Attached::default();
        let launch = self.launches.then_some(&LAUNCH_PROBES);
        for (prog, symbols) in UPROBES.iter().chain(launch) {
            let p: &mut UProbe = program(&mut self.ebpf, prog)?;
            for sym in *symbols {
                match p.attach(Some(sym), 0, path, None) {
                    Ok(_) => done.probes.push((prog.to_string(), sym.to_string())),
                    Err(aya::programs::ProgramError::UProbeError(
                        aya::programs::uprobe::UProbeError::SymbolError { .. },
                    )) => {
                        if !done.missing.iter().any(|m| m == sym) {
                            done.missing.push(sym.to_string());
                        }
                    }
                    Err(e) => {
                        return Err(ProbeError::Attach {
                            what: format!("{prog} to {sym} in {}", path.display()),
                            why: e.to_string(),
                        });
                    }
                }
            }
        }
        Ok(done)
    }

    /// Attaches one of the object's uprobe programs (`vagus_sync`,
    /// `vagus_launch`, ...) to `symbol` in `path`, for every process. For
    /// measuring what a probe costs (`bench/`); the agent uses
    /// [`Probes::attach_libcuda`].
    pub fn attach_uprobe(
        &mut self,
        prog: &str,
        path: &Path,
        symbol: &str,
    ) -> Result<(), ProbeError> {
        let p: &mut UProbe = program(&mut self.ebpf, prog)?;
        p.attach(Some(symbol), 0, path, None)
            .map(|_| ())
            .map_err(|e| attach_err(&format!("{prog} to {symbol} in {}", path.display()), e))
    }

    /// Takes every event waiting, oldest first.
    pub fn drain(&mut self, mut f: impl FnMut(Event)) -> usize {
        let mut n = 0;
        while let Some(item) = self.events.next() {
            if let Some(e) = Event::parse(&item) {
                f(e);
                n += 1;
            }
        }
        n
    }

    /// The events ring's descriptor, readable when events are waiting (for
    /// epoll or tokio's `AsyncFd`).
    pub fn events_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.events.as_raw_fd()
    }

    /// A process's counters, if it has called `cuInit`.
    pub fn counters(&self, pid: u32) -> Option<ProcCounters> {
        self.procs.get(&pid, 0).ok()
    }

    /// Every GPU process's counters.
    pub fn all_counters(&self) -> Vec<(u32, ProcCounters)> {
        self.procs.iter().filter_map(Result::ok).collect()
    }

    /// Drops a process's counters (after its exit has been handled).
    pub fn forget(&mut self, pid: u32) {
        let _ = self.procs.remove(&pid);
    }
}

fn attach_err(what: &str, e: impl std::fmt::Display) -> ProbeError {
    ProbeError::Attach {
        what: what.to_string(),
        why: e.to_string(),
    }
}

fn program<'a, T>(ebpf: &'a mut aya::Ebpf, name: &str) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| load_err(format!("no program {name} in the object")))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| load_err(format!("{name}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only in a build without clang (`VAGUS_BPF_CLANG=/nonexistent cargo
    /// test -p vagus-ebpf`): loading says why instead of failing obscurely.
    #[cfg(vagus_no_bpf)]
    #[test]
    fn a_build_without_probes_says_why() {
        match Probes::load(false) {
            Err(ProbeError::NotBuilt(why)) => assert!(why.contains("clang"), "{why}"),
            Err(e) => panic!("expected NotBuilt, got {e}"),
            Ok(_) => panic!("expected NotBuilt, got probes"),
        }
    }

    #[test]
    fn layouts_match_the_c_header() {
        // vagus.h: 4 u32, 2 u64, char[16]; 13 u64 + the histogram.
        assert_eq!(std::mem::size_of::<RawEvent>(), 48);
        assert_eq!(std::mem::size_of::<ProcCounters>(), (13 + SYNC_BUCKETS) * 8);
    }

    #[test]
    fn events_parse_and_junk_does_not() {
        let mut raw = RawEvent {
            kind: 4,
            pid: 77,
            ppid: 0,
            _pad: 0,
            cgroup_id: 9,
            ts_ns: 5,
            comm: *b"vagus\0\0\0\0\0\0\0\0\0\0\0",
        };
        let bytes = |r: &RawEvent| {
            // SAFETY: a plain #[repr(C)] value viewed as bytes.
            unsafe { std::slice::from_raw_parts((r as *const RawEvent).cast::<u8>(), 48).to_vec() }
        };
        assert_eq!(
            Event::parse(&bytes(&raw)),
            Some(Event::CuInit {
                pid: 77,
                cgroup_id: 9,
                ts_ns: 5,
                comm: "vagus".into()
            })
        );
        assert_eq!(Event::parse(&bytes(&raw)[..47]), None, "short");
        raw.kind = 99;
        assert_eq!(Event::parse(&bytes(&raw)), None, "unknown kind");
    }
}
