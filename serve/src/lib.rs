//! `vagus serve`, an LLM inference server stand-in, and `vagus bench
//! serve`, the client that measures it.
//!
//! - [`cost`]: what an iteration costs on the GPU (prefill compute-bound,
//!   decode memory-bound), from the model's size and the device's peaks;
//! - [`engine`]: vLLM-style continuous batching with chunked prefill, pure;
//! - [`gpu`]: the driver API (cudarc, loaded at run time: NVIDIA's driver
//!   or gpusim), each iteration one kernel;
//! - [`server`]: OpenAI's completions API over axum, the engine thread;
//! - [`metrics`]: vLLM's metric names, types and buckets;
//! - [`client`]: the Azure trace or Poisson/gamma arrivals, open loop,
//!   streamed; TTFT, TPOT, end-to-end latency, SLO attainment, goodput.

pub mod client;
pub mod cost;
pub mod engine;
pub mod gpu;
pub mod metrics;
pub mod server;
