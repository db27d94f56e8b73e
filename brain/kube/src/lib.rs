//! Kubernetes' side of the brain.
//!
//! - [`extender`]: kube-scheduler's extender protocol (filter, prioritize,
//!   bind, preempt) in its exact JSON, Go's field names;
//! - [`pod`]: a Pod read as the workload the decision core places, and the
//!   annotations a bind writes on it;
//! - [`webhook`]: the mutating admission webhook that sends GPU pods to
//!   Vagus's scheduler and injects the shim, served over HTTPS;
//! - [`binder`]: the Binding (and annotations) the brain writes through the
//!   API server once the core has placed a pod;
//! - [`executor`]: the Kubernetes executor's plan (placements against the
//!   pods a reflector sees) and its API calls;
//! - [`leader`]: leader election on a `Lease`: only the leader acts.
//!
//! The decisions themselves are the core's (`vagus-decision`); nothing here
//! holds cluster state.

pub mod binder;
pub mod executor;
pub mod extender;
pub mod leader;
pub mod pod;
pub mod webhook;

pub use kube::Client;

/// A client for the cluster this process finds itself in: the pod's
/// service account, else `KUBECONFIG` or `~/.kube/config`. Nothing is
/// asked of the API server yet.
pub async fn client_from_environment() -> Result<kube::Client, String> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| format!("no Kubernetes configuration (in-cluster or KUBECONFIG): {e}"))?;
    kube::Client::try_from(config)
        .map_err(|e| format!("a Kubernetes client from its configuration: {e}"))
}
