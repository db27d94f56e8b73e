//! Trace replay as the FGD paper (Weng et al., USENIX ATC '23) does it: the
//! trace's cluster model, the paper's baseline policies, and the brain's
//! own decision core driven through the same method. No I/O and no clock:
//! callers pass in text, seeds and state.
//!
//! - [`cluster`]: nodes (CPU, memory, per-GPU free milli), pods, feasibility.
//! - [`policy`]: Random, DotProd, GpuClustering, GpuPacking, BestFit and FGD,
//!   as the FGD paper's simulator defines them.
//! - [`vagus`]: the `vagus` policy, which is the live core
//!   (`vagus_decision::Core`) configured for the trace; [`live`] turns the
//!   trace's nodes into the core's.
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
