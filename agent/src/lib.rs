//! The node agent: finds, attributes and measures every GPU process on its
//! host. The eBPF probes themselves live in `vagus-ebpf`; this crate joins
//! what they see with the shim's segments and NVML.
//!
//! - [`cgroup`]: pod and container from a process's cgroup path, and cgroup
//!   ids (as the probes report them) back to paths.
//! - [`segments`]: the shim's shared-memory segments, read and controlled.
//! - [`nvml`]: the devices as NVML reports them.
//! - [`mps`]: the MPS control daemon's client.
//! - [`replicas`]: the local executor, the brain's replicas started, found
//!   again after a restart, drained and stopped.
//! - [`serving`]: inference servers' own metrics read into windows, and
//!   [`scrape`] the HTTP that fetches them.
//! - [`node`]: every GPU process joined from those sources; telemetry
//!   windows; the brain's commands applied.
//! - [`metrics`]: Prometheus exposition, and [`http`] its endpoints.
//! - [`uplink`]: the agent's end of the link to the brain (QUIC): windows
//!   kept until acknowledged, commands applied at most once.
//! - [`run`]: all of it as the `vagus agent` process.

pub mod cgroup;
pub mod http;
pub mod journal;
pub mod metrics;
pub mod mps;
pub mod node;
pub mod nvml;
pub mod replicas;
pub mod run;
pub mod scrape;
pub mod segments;
pub mod serving;
pub mod uplink;
