//! gpusim: a simulated GPU for hosts without one.
//!
//! This crate is the model shared by gpusim's three front ends: the driver
//! library (`libcuda.so.1`, crate `gpusim-cuda`), the NVML library
//! (`libnvidia-ml.so.1`, crate `gpusim-nvml`) and the MPS control double
//! (`gpusim-mps-control`). It holds no CUDA handles; it knows
//!
//! - the configuration ([`config`]): devices, time scale, where the state lives;
//! - the device state shared by every process on the host ([`state`]): SM
//!   timelines, memory, processes, busy history, in one memory-mapped file;
//! - the execution model ([`schedule`]): how a grid runs in waves over the SMs a
//!   client may use, and the occupancy calculator ([`occupancy`]);
//! - kernel images ([`ptx`]): entry points, parameters and cost directives;
//! - the MPS control protocol ([`mps`]).

pub mod clock;
pub mod config;
pub mod mps;
pub mod occupancy;
pub mod ptx;
pub mod schedule;
pub mod state;
pub mod xid;

pub use config::{DeviceConfig, SimConfig};
