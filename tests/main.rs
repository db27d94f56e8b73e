//! Black-box tests of Vagus, one binary. They run the built executables and
//! libraries (`cargo build --workspace` first), each against a private gpusim.

/// A Kubernetes API server's Lease and pods (shared with the leader-election tests).
#[path = "../brain/kube/tests/common/lease.rs"]
mod lease;
/// A PostgreSQL server of a test's own (shared with the brain's tests).
#[path = "../brain/service/tests/common/postgres.rs"]
mod pg;
/// A client posting placements to two brain replicas (shared with the brain's tests).
#[path = "../brain/service/tests/common/stream.rs"]
mod stream;
mod support;

mod agent;
mod api_fuzz;
mod brain_api;
mod cli;
mod containers;
mod control;
mod dashboard;
mod demo;
mod driver_api;
mod failover;
mod gateway;
mod ha;
mod load;
mod mps;
mod nvml;
mod occupancy;
mod probes;
mod serve;
mod shim;
mod transport;
