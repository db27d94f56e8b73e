//! The brain's placement core: the cluster model, placement policies and
//! trace replay. No I/O and no clock: callers pass in text, seeds and
//! state, so the replay, the tests and (later) the live brain run the same
//! code.
//!
//! - [`cluster`]: nodes (CPU, memory, per-GPU free milli), pods, feasibility.
//! - [`policy`]: Random, DotProd, GpuClustering, GpuPacking, BestFit and FGD,
//!   as the FGD paper's simulator defines them, and `vagus`.
//! - [`vagus`]: the product's weighted node score (terms and weights).
//! - [`replay`]: the paper's replay method and its allocation curve.
//! - [`openb`]: the Alibaba openb trace's CSV files.
//! - [`rng`]: the seeded PRNG every random choice draws from.

pub mod cluster;
pub mod live;
pub mod openb;
pub mod policy;
pub mod replay;
pub mod rng;
pub mod vagus;
