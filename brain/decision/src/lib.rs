//! The brain's decision core: it classifies inference workloads, places
//! them on GPUs (direct, MPS reconfiguration, repack, preemption, scale-out
//! or queue) with a weighted node score, and explains every decision with
//! the Kubernetes Pod to bind.
//!
//! Pure: no I/O and no clock (every call takes `now` in milliseconds), so
//! the HTTP service, the tests and the benchmarks run the same code.

pub mod classify;
pub mod config;
pub mod control;
pub mod core;
pub mod explain;
mod fit;
pub mod manifest;
pub mod mix;
pub mod reconfig;
pub mod rules;
pub mod scale;
pub mod score;
pub mod spec;
pub mod state;
pub mod workload;

pub use crate::classify::{Class, Classes};
pub use crate::config::Config;
pub use crate::control::{ControlConfig, Controller};
pub use crate::core::{Control, Core, Refusal};
pub use crate::explain::{Decision, Path};
pub use crate::mix::{Mix, Shape};
pub use crate::state::{GpuSpec, NodeLoad, NodeSpec, Placed};
pub use crate::workload::{Invalid, Launch, Priority, Profile};
