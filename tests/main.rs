//! Black-box tests of Vagus, one binary. They run the built executables and
//! libraries (`cargo build --workspace` first), each against a private gpusim.

/// A PostgreSQL server of a test's own (shared with the brain's tests).
#[path = "../brain/service/tests/common/postgres.rs"]
mod pg;
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
mod load;
mod mps;
mod nvml;
mod occupancy;
mod probes;
mod serve;
mod shim;
mod transport;
