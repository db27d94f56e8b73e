//! `vagus gateway`: where requests arrive. An HTTP reverse proxy (hyper) in
//! front of each model's replicas that routes by the weights the brain
//! publishes (`GET /v1/routes`), profiles what it forwards and measures
//! what users feel, per model and replica, and streams that to the brain.
//!
//! - [`route`]: the route table and smooth weighted round robin (pure).
//! - [`proxy`]: the server, the forwarding, retries before anything was
//!   sent, the measured stream back, the route refresh.
//! - [`metrics`]: its Prometheus metrics.
//! - [`report`]: those measurements streamed to the brain, window by window.
//! - [`brain`]: the calls to the brain's API (routes, reports).

pub mod brain;
pub mod metrics;
pub mod proxy;
pub mod report;
pub mod route;
