//! The node agent: finds, attributes and measures every GPU process on its
//! host. The eBPF probes themselves live in `vagus-ebpf`; this crate joins
//! what they see with the shim's segments and NVML.
//!
//! - [`cgroup`]: pod and container from a process's cgroup path, and cgroup
//!   ids (as the probes report them) back to paths.
//! - [`segments`]: the shim's shared-memory segments, read and controlled.
//! - [`nvml`]: the devices as NVML reports them.
//! - [`mps`]: the MPS control daemon's client.
//! - [`node`]: every GPU process joined from those sources; telemetry
//!   windows; the brain's commands applied.
//! - [`metrics`]: Prometheus exposition.

pub mod cgroup;
pub mod metrics;
pub mod mps;
pub mod node;
pub mod nvml;
pub mod segments;
