//! Kubernetes' side of the brain.
//!
//! - [`extender`]: kube-scheduler's extender protocol (filter, prioritize,
//!   bind, preempt) in its exact JSON, Go's field names;
//! - [`pod`]: a Pod read as the workload the decision core places, and the
//!   annotations a bind writes on it;
//! - [`webhook`]: the mutating admission webhook that sends GPU pods to
//!   Vagus's scheduler and injects the shim, served over HTTPS;
//! - [`binder`]: the Binding (and annotations) the brain writes through the
//!   API server once the core has placed a pod.
//!
//! The decisions themselves are the core's (`vagus-decision`); nothing here
//! holds cluster state.

pub mod binder;
pub mod extender;
pub mod pod;
pub mod webhook;
