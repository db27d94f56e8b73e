//! Definitions shared across Vagus's processes. No I/O here: only layouts,
//! units and the arithmetic both sides of a boundary must agree on.
//!
//! - [`shm`]: the segment each shimmed process writes its statistics into and
//!   reads its control block from (shim ↔ agent, `vagus run`).
//! - [`wire`]: the agent ↔ brain messages and their framing.

pub mod shm;
pub mod wire;
