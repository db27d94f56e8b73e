//! Leader election on a `coordination.k8s.io/v1` Lease
//! (`kube-lease-manager`): the brain replicas contend for one lease; the
//! holder renews it before it expires, and a follower takes it over once
//! it has expired (the holder gone) — within the lease's duration plus a
//! renewal. Only the leader acts (binds, creates and deletes pods).

use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

/// The lease to contend for, and who this replica is.
#[derive(Clone, Debug)]
pub struct Election {
    pub namespace: String,
    pub lease: String,
    /// This replica's name on the lease (its pod's name).
    pub identity: String,
    /// Seconds a holder keeps the lease without renewing it.
    pub duration_s: u64,
    /// Seconds before it expires that the holder renews it.
    pub grace_s: u64,
}

/// Starts contending: the receiver says whether this replica leads now
/// (false until it has the lease). Dropping every receiver releases the
/// lease.
pub async fn contend(client: kube::Client, e: &Election) -> Result<watch::Receiver<bool>, String> {
    let manager = LeaseManagerBuilder::new(client, &e.lease)
        .with_namespace(&e.namespace)
        .with_identity(&e.identity)
        .with_duration(e.duration_s)
        .with_grace(e.grace_s)
        .build()
        .await
        .map_err(|err| format!("lease {}/{}: {err}", e.namespace, e.lease))?;
    let (leading, _task) = manager.watch().await;
    Ok(leading)
}

/// The label the leading replica's pod carries: the brain's Service selects
/// it, so requests, agents and the scheduler reach the leader only.
pub const LEADER_LABEL: &str = "vagus.dev/leader";

/// Labels this replica's pod as the leader's (`leads`) or takes the label
/// off; a pod that took over also takes it off every other pod of the
/// namespace that still carries it (a leader that died keeps its labels).
pub async fn mark(
    client: kube::Client,
    namespace: &str,
    pod: &str,
    leads: bool,
) -> Result<(), String> {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, ListParams, Patch, PatchParams};
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let label = |on: bool| {
        Patch::Merge(serde_json::json!({
            "metadata": {"labels": {LEADER_LABEL: if on { Some("true") } else { None }}}
        }))
    };
    let params = PatchParams::default();
    if leads {
        let marked = pods
            .list(&ListParams::default().labels(&format!("{LEADER_LABEL}=true")))
            .await
            .map_err(|e| format!("pods labelled {LEADER_LABEL} in {namespace}: {e}"))?;
        for other in marked
            .items
            .iter()
            .filter_map(|p| p.metadata.name.as_deref())
        {
            if other != pod {
                pods.patch(other, &params, &label(false))
                    .await
                    .map_err(|e| format!("pod {namespace}/{other}: {e}"))?;
            }
        }
    }
    pods.patch(pod, &params, &label(leads))
        .await
        .map(|_| ())
        .map_err(|e| format!("pod {namespace}/{pod}: {e}"))
}
