//! The node agent: finds, attributes and measures every GPU process on its
//! host. The eBPF probes themselves live in `vagus-ebpf`; this crate joins
//! what they see with where each process runs.
//!
//! - [`cgroup`]: pod and container from a process's cgroup path, and cgroup
//!   ids (as the probes report them) back to paths.

pub mod cgroup;
