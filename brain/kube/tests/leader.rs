//! Leader election against a recorded Lease API: two brain replicas, each
//! with a real kube-rs client on a tower-test mock, share one fake API
//! server that keeps a Lease as the API server would (`common/lease.rs`).
//! One leads; it renews; released, the other takes over; a lease taken
//! behind its back makes it follow.

#[path = "common/lease.rs"]
mod lease;

use http::{Request, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::client::Body;
use lease::{LEASE, LeaseServer};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use vagus_kube::leader::{Election, contend};

fn election(identity: &str) -> Election {
    Election {
        namespace: "vagus".into(),
        lease: "vagus-brain".into(),
        identity: identity.into(),
        duration_s: 2,
        grace_s: 1,
    }
}

async fn replica(server: &LeaseServer, identity: &str) -> watch::Receiver<bool> {
    let (mock, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(server.clone().run(handle));
    contend(kube::Client::new(mock, "vagus"), &election(identity))
        .await
        .unwrap()
}

/// Waits (up to 30 s: lease times are seconds; the machine may be loaded)
/// until `f` holds.
async fn until(what: &str, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "waited 30 s for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_renews_and_hands_over_when_it_goes() {
    let server = LeaseServer::default();
    let a = replica(&server, "brain-0").await;
    let b = replica(&server, "brain-1").await;
    until("a leader", || *a.borrow() || *b.borrow()).await;
    assert!(!(*a.borrow() && *b.borrow()), "two leaders");
    let (leader, follower, name, other) = if *a.borrow() {
        (a, b, "brain-0", "brain-1")
    } else {
        (b, a, "brain-1", "brain-0")
    };
    assert_eq!(server.holder().as_deref(), Some(name));
    // The lease was created, then taken by server-side apply as its holder.
    {
        let log = server.log.lock().unwrap();
        assert!(
            log.iter().any(|(m, p, _, _)| m == "POST" && p == LEASE),
            "{log:?}"
        );
        assert!(
            log.iter().any(|(m, _, c, b)| m == "PATCH"
                && c.starts_with("application/apply-patch")
                && b["spec"]["holderIdentity"] == name),
            "{log:?}"
        );
    }
    // It renews: renewTime moves on while it holds the lease.
    let renewed = || {
        server.lease.lock().unwrap().as_ref().unwrap()["spec"]["renewTime"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let first = renewed();
    until("a renewal", || renewed() != first).await;
    assert!(*leader.borrow() && !*follower.borrow());
    // The leader goes (its receivers dropped: it releases the lease); the
    // follower takes it within the lease's time.
    drop(leader);
    until("the follower to lead", || *follower.borrow()).await;
    assert_eq!(server.holder().as_deref(), Some(other));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lease_is_taken_follows() {
    let server = LeaseServer::default();
    let a = replica(&server, "brain-0").await;
    until("brain-0 to lead", || *a.borrow()).await;
    // Another holder, fresh, for a long time: brain-0 sees it at its next
    // renewal and stops leading.
    {
        let mut l = server.lease.lock().unwrap();
        let spec = &mut l.as_mut().unwrap()["spec"];
        spec["holderIdentity"] = json!("brain-9");
        spec["renewTime"] =
            serde_json::to_value(MicroTime(k8s_openapi::jiff::Timestamp::now())).unwrap();
        spec["leaseDurationSeconds"] = json!(3600);
    }
    until("brain-0 to follow", || !*a.borrow()).await;
    assert_eq!(server.holder().as_deref(), Some("brain-9"));
}
