//! Real QUIC with mutual TLS on loopback.

use std::time::Duration;
use time::OffsetDateTime;
use vagus_proto::wire::{Command, CommandKind, Hello, Outcome, PROTOCOL_VERSION, TelemetryWindow};
use vagus_transport::TransportError;
use vagus_transport::agent::Link;
use vagus_transport::brain::Brain;
use vagus_transport::certs::{Ca, Issued};
use vagus_transport::tls::Identity;

fn id(issued: &Issued, ca: &Ca) -> Identity {
    Identity::from_pem(&issued.cert_pem, &issued.key_pem, ca.cert_pem()).unwrap()
}

fn hello(node: &str) -> Hello {
    Hello {
        min_version: 1,
        max_version: PROTOCOL_VERSION,
        node: node.into(),
        agent_version: "test".into(),
        gpus: vec![],
    }
}

fn window(node: &str, seq: u64) -> TelemetryWindow {
    TelemetryWindow {
        node: node.into(),
        seq,
        start_unix_ns: seq * 100_000_000,
        duration_ns: 100_000_000,
        gpus: vec![],
        processes: vec![],
        dropped_windows: 0,
    }
}

async fn until(mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in 5 s");
}

/// A brain on loopback and the CA that issued its certificate.
async fn brain() -> (std::sync::Arc<Brain>, Ca) {
    let ca = Ca::new("test CA").unwrap();
    let b = std::sync::Arc::new(
        Brain::bind(
            "127.0.0.1:0".parse().unwrap(),
            &id(&ca.issue("brain").unwrap(), &ca),
        )
        .unwrap(),
    );
    let run = b.clone();
    tokio::spawn(async move { run.run().await });
    (b, ca)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_flows_and_a_command_applies_once_when_sent_twice() {
    let (brain, ca) = brain().await;
    let agent_id = id(&ca.issue("node-a").unwrap(), &ca);
    let mut link = Link::connect(
        brain.local_addr(),
        "brain",
        &agent_id,
        hello("node-a"),
        true,
    )
    .await
    .unwrap();
    assert_eq!(link.version, PROTOCOL_VERSION);
    for seq in 0..5 {
        link.send_window(window("node-a", seq)).await.unwrap();
    }
    until(|| brain.state.lock().unwrap().windows == 5).await;
    assert_eq!(brain.state.lock().unwrap().latest["node-a"].seq, 4);

    let c = Command {
        id: 7,
        kind: CommandKind::SetShimBudget {
            pid: 42,
            budget_ppm: 300_000,
        },
    };
    brain.command("node-a", c.clone()).unwrap();
    brain.command("node-a", c).unwrap();
    let mut applied = 0;
    for _ in 0..2 {
        link.serve_one(|_| {
            applied += 1;
            Outcome::Applied
        })
        .await
        .unwrap();
    }
    assert_eq!(applied, 1, "a resent command is not applied again");
    until(|| brain.state.lock().unwrap().results.len() == 2).await;
    let results: Vec<Outcome> = brain
        .state
        .lock()
        .unwrap()
        .results
        .iter()
        .map(|r| r.outcome.clone())
        .collect();
    assert_eq!(results, vec![Outcome::Applied, Outcome::Duplicate]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused_and_the_brain_keeps_serving() {
    let (brain, ca) = brain().await;
    let addr = brain.local_addr();
    let good = id(&ca.issue("node-a").unwrap(), &ca);

    // A certificate from another CA (the agent itself trusts our CA).
    let other = Ca::new("other CA").unwrap();
    let issued = other.issue("node-x").unwrap();
    let stranger_id = Identity::from_pem(&issued.cert_pem, &issued.key_pem, ca.cert_pem()).unwrap();
    let r = Link::connect(addr, "brain", &stranger_id, hello("node-x"), true).await;
    assert!(r.is_err(), "a certificate from another CA must be refused");

    // An expired certificate from our CA.
    let now = OffsetDateTime::now_utc();
    let expired = ca
        .issue_valid(
            "node-e",
            now - time::Duration::days(30),
            now - time::Duration::days(1),
        )
        .unwrap();
    let r = Link::connect(addr, "brain", &id(&expired, &ca), hello("node-e"), true).await;
    assert!(r.is_err(), "an expired certificate must be refused");

    // A valid certificate for node-b announcing itself as node-a.
    let b = id(&ca.issue("node-b").unwrap(), &ca);
    match Link::connect(addr, "brain", &b, hello("node-a"), true).await {
        Err(TransportError::Refused(why)) => assert!(why.contains("node-a"), "{why}"),
        Err(e) => panic!("expected a refusal naming the node, got {e}"),
        Ok(_) => panic!("a certificate for node-b must not serve node-a"),
    }

    // No certificate at all.
    let r = Link::connect(addr, "brain", &good, hello("node-a"), false).await;
    assert!(r.is_err(), "a client without a certificate must be refused");

    // The brain still serves a legitimate agent.
    let mut link = Link::connect(addr, "brain", &good, hello("node-a"), true)
        .await
        .unwrap();
    link.send_window(window("node-a", 0)).await.unwrap();
    until(|| brain.state.lock().unwrap().windows == 1).await;
    let rejected = brain.state.lock().unwrap().rejected.clone();
    assert!(
        rejected.get("certificate names another node") == Some(&1),
        "{rejected:?}"
    );
    assert!(rejected.values().sum::<u64>() >= 2, "{rejected:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_init_writes_a_set_that_connects() {
    let dir = std::env::temp_dir().join(format!("vagus-certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    vagus_transport::certs::init(&dir, "brain", &["node-a".to_string(), "node-b".to_string()])
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    for f in ["ca.key", "brain.key", "node-a.key", "node-b.key"] {
        let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f} must be private");
    }
    let b = std::sync::Arc::new(
        Brain::bind(
            "127.0.0.1:0".parse().unwrap(),
            &Identity::load(&dir, "brain").unwrap(),
        )
        .unwrap(),
    );
    let run = b.clone();
    tokio::spawn(async move { run.run().await });
    let link = Link::connect(
        b.local_addr(),
        "brain",
        &Identity::load(&dir, "node-b").unwrap(),
        hello("node-b"),
        true,
    )
    .await;
    assert!(link.is_ok(), "{:?}", link.err());
    assert!(vagus_transport::certs::init(&dir, "brain", &["../x".to_string()]).is_err());
    assert!(matches!(
        Identity::load(&dir, "node-z"),
        Err(TransportError::Io { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}
