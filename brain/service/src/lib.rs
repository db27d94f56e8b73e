//! The brain as a service around the pure decision core (`vagus-decision`):
//!
//! - [`agents`]: the agents' QUIC endpoint (mutual TLS), their telemetry
//!   ([`agents::ingest`]) and the command ledger ([`agents::ledger`]);
//! - [`http`]: the HTTP API (axum) with bearer roles, and [`audit`], its
//!   SQLite trail, committed before every answer;
//! - `sync`: what agents report, brought into the core;
//! - `failover`: nodes whose agents fell silent (or whose GPUs failed)
//!   taken down, their work placed again, and [`alerts`] raised;
//! - [`gateways`]: what the gateways measure per replica, as they report it;
//! - [`kube_exec`]: on Kubernetes, placements as Pods, and what happens
//!   behind the brain's back reconciled (with `http::scheduler`, the
//!   extender);
//! - [`Service`]: all of it started from one [`Config`] — by `vagus brain`,
//!   the tests and the benches alike.

pub mod agents;
pub mod alerts;
pub mod audit;
pub mod control;
pub mod database;
mod failover;
pub mod gateways;
pub mod http;
pub mod kube_exec;
mod reconfigure;
pub mod replicas;
mod service;
mod sync;

pub use crate::service::{
    Config, HttpConfig, KubeConfig, Lease, QuicConfig, SchedulerConfig, Service, StartError,
    Starting, load_core_config, load_nodes,
};
