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
