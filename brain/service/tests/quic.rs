//! Real QUIC with mutual TLS on loopback.

#[path = "common/postgres.rs"]
mod pg;

use std::time::Duration;
use time::OffsetDateTime;
use vagus_agent::uplink::{FromBrain, Link};
use vagus_brain::agents::{Agents, AgentsOptions};
use vagus_link::LinkError;
use vagus_link::certs::{Ca, Issued};
use vagus_link::tls::Identity;
use vagus_proto::wire::{
    CommandKind, CommandResult, Hello, Outcome, PROTOCOL_VERSION, TelemetryWindow,
};

fn id(issued: &Issued, ca: &Ca) -> Identity {
    Identity::from_pem(&issued.cert_pem, &issued.key_pem, ca.cert_pem()).unwrap()
}

fn hello(node: &str) -> Hello {
    Hello {
        min_version: vagus_proto::wire::MIN_PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        node: node.into(),
        session: 1,
        agent_version: "test".into(),
        cpu_milli: Some(64_000),
        memory_mib: Some(256 << 10),
        gpus: vec![vagus_proto::wire::GpuInfo {
            index: 0,
            uuid: "GPU-00000000-0000-0000-0000-000000000000".into(),
            model: "NVIDIA H100 80GB HBM3".into(),
            sms: 132,
            memory_bytes: 80 << 30,
            tdp_watts: 700,
            mps: None,
        }],
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
        mps: Vec::new(),
        serving: Vec::new(),
        replicas: Vec::new(),
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
async fn brain() -> (std::sync::Arc<Agents>, Ca) {
    let ca = Ca::new("test CA").unwrap();
    let b = std::sync::Arc::new(
        Agents::bind(
            "127.0.0.1:0".parse().unwrap(),
            &id(&ca.issue("brain").unwrap(), &ca),
            &AgentsOptions::default(),
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
    until(|| brain.state.lock().unwrap().ingest.totals.windows == 5).await;
    {
        let st = brain.state.lock().unwrap();
        let n = &st.ingest.nodes["node-a"];
        assert_eq!(n.last_seq, Some(4));
        assert_eq!(n.agent_version, "test", "the hello's inventory is kept");
        assert_eq!(n.inventory.len(), 1);
        assert_eq!(n.inventory[0].sms, 132);
    }

    let kind = CommandKind::SetShimBudget {
        pid: 42,
        budget_ppm: 300_000,
    };
    let cid = brain.issue("node-a", kind.clone()).await.unwrap();
    assert!(brain.resend("node-a", cid), "a duplicate on the wire");
    let mut applied = 0;
    let mut seen = vagus_agent::journal::Journal::in_memory();
    for _ in 0..2 {
        let c = link
            .serve_one(&mut seen, |_| {
                applied += 1;
                Outcome::Applied
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!((c.id, &c.kind), (cid, &kind));
    }
    assert_eq!(applied, 1, "a resent command is not applied again");
    // A result the agent sends again (after a reconnection, not knowing
    // whether it was stored) is acknowledged again and stored once.
    link.send_result(CommandResult {
        id: cid,
        outcome: Outcome::Failed("must not replace the first".into()),
    })
    .await
    .unwrap();
    let mut acks = 0;
    let mut windows_through = None;
    while acks < 3 {
        match tokio::time::timeout(Duration::from_secs(5), link.next_from_brain())
            .await
            .expect("acknowledgements")
            .unwrap()
            .unwrap()
        {
            FromBrain::Ack(a) => {
                acks += a.results.iter().filter(|&&r| r == cid).count();
                windows_through = windows_through.max(a.windows_through);
            }
            FromBrain::Command(c) => panic!("unexpected {c:?}"),
        }
    }
    assert_eq!(windows_through, Some(4), "the windows are acknowledged too");
    assert_eq!(
        brain.result(cid).await.unwrap(),
        Some(("node-a".to_string(), Outcome::Applied))
    );
    let st = brain.state.lock().unwrap();
    assert_eq!(st.ingest.totals.results, 1);
    assert!(st.pending("node-a").is_empty());
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
        Err(LinkError::Refused(why)) => assert!(why.contains("node-a"), "{why}"),
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
    until(|| brain.state.lock().unwrap().ingest.totals.windows == 1).await;
    let rejected = brain.state.lock().unwrap().ingest.totals.rejected.clone();
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
    let w = vagus_link::certs::init(&dir, "brain", &["node-a".to_string()]).unwrap();
    assert!(w.new_ca);
    // Later, a node joins: the same CA signs its certificate.
    let w = vagus_link::certs::init(&dir, "brain", &["node-a".into(), "node-b".into()]).unwrap();
    assert!(!w.new_ca, "the existing CA is used");
    assert_eq!(w.issued, vec!["node-b".to_string()]);
    assert_eq!(w.kept, vec!["brain".to_string(), "node-a".to_string()]);
    use std::os::unix::fs::PermissionsExt;
    for f in ["ca.key", "brain.key", "node-a.key", "node-b.key"] {
        let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f} must be private");
    }
    let b = std::sync::Arc::new(
        Agents::bind(
            "127.0.0.1:0".parse().unwrap(),
            &Identity::load(&dir, "brain").unwrap(),
            &AgentsOptions::default(),
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
    assert!(vagus_link::certs::init(&dir, "brain", &["../x".to_string()]).is_err());
    assert!(matches!(
        Identity::load(&dir, "node-z"),
        Err(LinkError::Io { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The frame bytes of one test window, as the agent's outage buffer counts them.
fn buffered_cost(seq: u64) -> usize {
    let mut f = Vec::new();
    vagus_proto::wire::encode(
        &vagus_proto::wire::Message::Telemetry(window("node-a", seq)),
        PROTOCOL_VERSION,
        vagus_proto::wire::DEFAULT_MAX_FRAME,
        &mut f,
    )
    .unwrap();
    f.len() + 48
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_brain_restart_nothing_accepted_or_acknowledged_is_lost() {
    let dir = std::env::temp_dir().join(format!("vagus-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let opts = AgentsOptions {
        ledger: Some(dir.join("ledger.sqlite")),
        ..AgentsOptions::default()
    };
    nothing_lost_across_a_restart(|_| opts.clone()).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The same with the ledger in PostgreSQL, the second brain taking over
/// the database from the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_brain_restart_on_postgres_nothing_accepted_or_acknowledged_is_lost() {
    let Some(pg) = pg::server("quic-restart") else {
        return;
    };
    nothing_lost_across_a_restart(|brain| AgentsOptions {
        postgres: Some(
            vagus_brain::database::Postgres::take_over(
                &vagus_brain::database::Database::at(&pg.url),
                &format!("brain-{brain}"),
            )
            .unwrap(),
        ),
        ..AgentsOptions::default()
    })
    .await;
}

/// An agent's windows and command results across a restart of the brain
/// (`opts(0)` its first, `opts(1)` its second ledger): what the brain
/// accepted or acknowledged is delivered or kept.
async fn nothing_lost_across_a_restart(opts: impl Fn(u32) -> AgentsOptions) {
    use std::sync::{Arc, Mutex};
    use vagus_agent::uplink::{UplinkConfig, UplinkStats, run};
    let ca = Ca::new("test CA").unwrap();
    let brain_id = ca.issue("brain").unwrap();
    let first = Arc::new(
        Agents::bind(
            "127.0.0.1:0".parse().unwrap(),
            &id(&brain_id, &ca),
            &opts(0),
        )
        .unwrap(),
    );
    let addr = first.local_addr();
    let serving = first.clone();
    let first_task = tokio::spawn(async move { serving.run().await });

    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let stats = Arc::new(Mutex::new(UplinkStats::default()));
    let applied = Arc::new(Mutex::new(Vec::new()));
    // Room for 5 windows (windows 3..=9 have the same encoded size).
    let cfg = UplinkConfig {
        brain: addr,
        brain_name: "brain".into(),
        identity: id(&ca.issue("node-a").unwrap(), &ca),
        hello: hello("node-a"),
        buffer_bytes: 5 * buffered_cost(9),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        endpoint: None,
        journal: vagus_agent::journal::Journal::in_memory(),
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
    until(|| first.state.lock().unwrap().ingest.totals.windows == 3).await;
    let a = first
        .issue("node-a", CommandKind::DrainGpu { gpu: 0 })
        .await
        .unwrap();
    // Stored and acknowledged: the agent has let go of it.
    until(|| stats.lock().unwrap().results_acknowledged == 1).await;
    // The windows are acknowledged too (every 200 ms): the buffer empties.
    until(|| stats.lock().unwrap().buffered_bytes == 0).await;

    // The brain goes away; the agent keeps 5 of the next 7 windows.
    first.shutdown();
    first_task.abort();
    until(|| !first.state.lock().unwrap().is_connected("node-a")).await;
    first.wait_idle().await;
    // Accepted while the node is away: stored, sent when it is back, even
    // by the next brain.
    let b = first
        .issue("node-a", CommandKind::DrainGpu { gpu: 1 })
        .await
        .unwrap();
    for seq in 3..10 {
        tx.send(window("node-a", seq)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A new brain on the same address (once the old endpoint has let the
    // socket go) and the same ledger, with one more command waiting.
    drop(first);
    let mut bound = None;
    let second_opts = opts(1);
    for _ in 0..100 {
        match Agents::bind(addr, &id(&brain_id, &ca), &second_opts) {
            Ok(b) => {
                bound = Some(b);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let second = Arc::new(bound.expect("rebind the brain's address"));
    assert_eq!(
        second.result(a).await.unwrap(),
        Some(("node-a".to_string(), Outcome::Applied)),
        "the acknowledged result survived"
    );
    assert_eq!(second.state.lock().unwrap().pending("node-a"), vec![b]);
    let c = second
        .issue("node-a", CommandKind::DrainGpu { gpu: 2 })
        .await
        .unwrap();
    assert!(c > b, "ids are not reused");
    let serving = second.clone();
    tokio::spawn(async move { serving.run().await });
    let t = std::time::Instant::now();
    until(|| second.state.lock().unwrap().is_connected("node-a")).await;
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "reconnected after {:?}",
        t.elapsed()
    );
    until(|| second.state.lock().unwrap().ingest.totals.windows == 5).await;
    {
        let st = second.state.lock().unwrap();
        assert_eq!(st.ingest.nodes["node-a"].last_seq, Some(9));
        assert_eq!(
            st.ingest.totals.dropped_reported, 2,
            "the drops are reported once"
        );
    }
    until(|| second.state.lock().unwrap().ingest.totals.results == 3).await;
    assert_eq!(
        *applied.lock().unwrap(),
        vec![a, b, c],
        "the waiting commands were delivered on reconnect"
    );
    assert!(second.state.lock().unwrap().pending("node-a").is_empty());
    let s = stats.lock().unwrap().clone();
    assert_eq!(
        (s.connects, s.windows_dropped, s.windows_sent),
        (2, 2, 8),
        "{s:?}"
    );
    drop(tx);
    tokio::time::timeout(Duration::from_secs(2), agent)
        .await
        .expect("agent ends when its window source closes")
        .unwrap();
}
