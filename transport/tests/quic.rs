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
        session: 1,
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
    assert!(brain.command("node-a", c.clone()));
    assert!(brain.command("node-a", c));
    let mut applied = 0;
    let mut seen = vagus_transport::agent::Applied::default();
    for _ in 0..2 {
        link.serve_one(&mut seen, |_| {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_brain_restart_the_agent_reconnects_and_delivers_what_it_buffered() {
    use std::sync::{Arc, Mutex};
    use vagus_transport::agent::{AgentConfig, AgentStats, run};
    let ca = Ca::new("test CA").unwrap();
    let brain_id = ca.issue("brain").unwrap();
    let first = Arc::new(Brain::bind("127.0.0.1:0".parse().unwrap(), &id(&brain_id, &ca)).unwrap());
    let addr = first.local_addr();
    let serving = first.clone();
    let first_task = tokio::spawn(async move { serving.run().await });

    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let stats = Arc::new(Mutex::new(AgentStats::default()));
    let applied = Arc::new(Mutex::new(Vec::new()));
    let cfg = AgentConfig {
        brain: addr,
        brain_name: "brain".into(),
        identity: id(&ca.issue("node-a").unwrap(), &ca),
        hello: hello("node-a"),
        buffer_windows: 5,
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
    };
    let log = applied.clone();
    let agent = tokio::spawn(run(
        cfg,
        rx,
        move |c| {
            log.lock().unwrap().push(c.id);
            Outcome::Applied
        },
        stats.clone(),
    ));

    for seq in 0..3 {
        tx.send(window("node-a", seq)).await.unwrap();
    }
    until(|| first.state.lock().unwrap().windows == 3).await;
    assert!(first.command(
        "node-a",
        Command {
            id: 1,
            kind: CommandKind::DrainGpu { gpu: 0 }
        }
    ));
    until(|| first.state.lock().unwrap().results.len() == 1).await;

    // The brain goes away; the agent keeps 5 of the next 8 windows.
    first.shutdown();
    first_task.abort();
    until(|| !first.state.lock().unwrap().is_connected("node-a")).await;
    first.wait_idle().await;
    for seq in 3..11 {
        tx.send(window("node-a", seq)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A new brain on the same address (once the old endpoint has let the
    // socket go), with a command waiting for the node.
    drop(first);
    let mut bound = None;
    for _ in 0..100 {
        match Brain::bind(addr, &id(&brain_id, &ca)) {
            Ok(b) => {
                bound = Some(b);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let second = Arc::new(bound.expect("rebind the brain's address"));
    assert!(
        !second.command(
            "node-a",
            Command {
                id: 2,
                kind: CommandKind::DrainGpu { gpu: 1 }
            }
        ),
        "not connected yet"
    );
    let serving = second.clone();
    tokio::spawn(async move { serving.run().await });
    let t = std::time::Instant::now();
    until(|| second.state.lock().unwrap().is_connected("node-a")).await;
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "reconnected after {:?}",
        t.elapsed()
    );
    until(|| second.state.lock().unwrap().windows == 5).await;
    {
        let st = second.state.lock().unwrap();
        assert_eq!(st.latest["node-a"].seq, 10);
        assert_eq!(st.dropped_reported, 3, "the drops are reported once");
    }
    until(|| second.state.lock().unwrap().results.len() == 1).await;
    assert_eq!(
        *applied.lock().unwrap(),
        vec![1, 2],
        "the waiting command was delivered on reconnect"
    );
    let s = stats.lock().unwrap().clone();
    assert_eq!(
        (s.connects, s.windows_dropped, s.windows_sent),
        (2, 3, 8),
        "{s:?}"
    );
    drop(tx);
    tokio::time::timeout(Duration::from_secs(2), agent)
        .await
        .expect("agent ends when its window source closes")
        .unwrap();
}
