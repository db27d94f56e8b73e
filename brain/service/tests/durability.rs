//! What the brain's stores promise, shown on both: SQLite files (the
//! embedded default) and a real PostgreSQL server (Debian's, started per
//! test: common/postgres.rs), where the brain's replicas share them:
//! - an answer only once its audit row is committed;
//! - a restart restores placements, the queue and controls from the trail;
//! - the command ledger keeps commands and results across reopening, and
//!   never reuses an id.
//!
//! On PostgreSQL only: a deposed leader writes nothing (the epoch fences
//! it, and a write it had under way when it was deposed lands before the
//! new leader reads), and a leader change mid-stream (two brains contending
//! for one Lease, the leader's runtime killed while a client posts) loses
//! nothing any brain acknowledged, and the label that routes requests moves
//! to the new leader's pod.

mod common;
#[path = "../../kube/tests/common/lease.rs"]
mod lease;

use common::postgres::{Server, server};
use common::stream::Stream;
use common::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use vagus_brain::agents::ledger::{Ledger, Recorded, Recovered};
use vagus_brain::audit::{Audit, Filter, Row};
use vagus_brain::database::{Database, Postgres};
use vagus_proto::wire::{CommandKind, CommandResult, Outcome};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn h1_a1() -> Vec<vagus_decision::NodeSpec> {
    vec![
        node("h1", "NVIDIA H100 80GB HBM3", 2),
        node("a1", "NVIDIA A100-SXM4-80GB", 2),
    ]
}

fn pg_rows(pg: &Server, workload: &str) -> i64 {
    pg.client()
        .query_one(
            "SELECT COUNT(*) FROM decisions WHERE workload = $1",
            &[&workload],
        )
        .unwrap()
        .get(0)
}

/// While `hold` keeps the trail from committing, a placement is not
/// answered; once it lets go (the closure it returns), it is, and its row
/// is there.
fn answered_only_after_commit(
    api: &Api,
    hold: Box<dyn FnOnce() -> Box<dyn FnOnce()>>,
    rows: impl Fn(&str) -> i64,
) {
    let release = hold();
    let addr = api.addr;
    let answered = Arc::new(AtomicU64::new(0));
    let a = answered.clone();
    let body = profile("held", "m");
    let t = std::thread::spawn(move || {
        let r = call_at(addr, "POST", "/v1/placements", Some(OPERATOR), Some(&body));
        a.store(1, Ordering::SeqCst);
        r
    });
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        answered.load(Ordering::SeqCst),
        0,
        "answered while the row could not be stored"
    );
    release();
    let (st, v) = t.join().unwrap();
    assert_eq!(st, 201, "{v}");
    assert_eq!(rows("held"), 1);
}

#[test]
fn sqlite_answers_only_after_the_audit_row_is_committed() {
    let api = start("before", None);
    let db = api.db.clone();
    answered_only_after_commit(
        &api,
        Box::new(move || {
            // Hold the database's write lock: the brain cannot commit.
            let blocker = rusqlite::Connection::open(&db).unwrap();
            blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
            Box::new(move || blocker.execute_batch("COMMIT").unwrap())
        }),
        |w| rows(&api.db, w),
    );
}

#[test]
fn postgres_answers_only_after_the_audit_row_is_committed() {
    let Some(pg) = server("before") else { return };
    let api = start_in("before", &pg.url, h1_a1());
    let mut blocker = pg.client();
    answered_only_after_commit(
        &api,
        Box::new(move || {
            // Lock the table against inserts: the brain cannot commit.
            blocker
                .batch_execute("BEGIN; LOCK TABLE decisions IN EXCLUSIVE MODE")
                .unwrap();
            Box::new(move || blocker.batch_execute("COMMIT").unwrap())
        }),
        |w| pg_rows(&pg, w),
    );
}

/// Placements, a queued request, a cordon and a pin made on `api`, then
/// the brain restarted by `again`: all of it is back.
fn restores_after_restart(api: Api, again: impl FnOnce() -> Api) {
    let post =
        |api: &Api, token, path, body: &str| call(api, "POST", path, Some(token), Some(body));
    assert_eq!(
        post(&api, OPERATOR, "/v1/placements", &profile("keep", "m1")).0,
        201
    );
    assert_eq!(
        post(&api, OPERATOR, "/v1/placements", &profile("gone", "m2")).0,
        201
    );
    assert_eq!(
        call(&api, "DELETE", "/v1/placements/gone", Some(OPERATOR), None).0,
        200
    );
    let cordon = r#"{"action":"cordon","node":"a1"}"#;
    assert_eq!(post(&api, ADMIN, "/v1/controls", cordon).0, 200);
    let pin = r#"{"action":"pin","workload":"keep"}"#;
    assert_eq!(post(&api, ADMIN, "/v1/controls", pin).0, 200);
    let mut big: serde_json::Value = serde_json::from_str(&profile("waits", "m3")).unwrap();
    big["model_size_gb"] = 120.0.into();
    big["gpus"] = 2.into();
    big["accepted_models"] = serde_json::json!(["A100"]);
    assert_eq!(
        post(&api, OPERATOR, "/v1/placements", &big.to_string()).0,
        202
    );
    let (_, before) = call(&api, "GET", "/v1/placements/keep", Some(VIEWER), None);
    drop(api);
    let api = again();
    let (st, after) = call(&api, "GET", "/v1/placements/keep", Some(VIEWER), None);
    assert_eq!(st, 200);
    assert_eq!(after["placement"], before["placement"]);
    assert_eq!(after["placement"]["pinned"], true);
    assert_eq!(
        call(&api, "GET", "/v1/placements/gone", Some(VIEWER), None).0,
        404
    );
    let (_, q) = call(&api, "GET", "/v1/placements/waits", Some(VIEWER), None);
    assert_eq!(q["state"], "queued");
    let (_, nodes) = call(&api, "GET", "/v1/nodes", Some(VIEWER), None);
    let a1 = nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "a1")
        .unwrap();
    assert_eq!(a1["cordoned"], true);
    let (_, h) = call(&api, "GET", "/healthz", None, None);
    assert_eq!(
        (h["placements"].as_u64(), h["queued"].as_u64()),
        (Some(1), Some(1))
    );
}

#[test]
fn sqlite_restart_restores_placements_queue_and_controls() {
    let api = start("restart", None);
    let db = api.db.clone();
    restores_after_restart(api, || start("restart", Some(db)));
}

#[test]
fn postgres_restart_restores_placements_queue_and_controls() {
    let Some(pg) = server("restart") else { return };
    let api = start_in("restart", &pg.url, h1_a1());
    restores_after_restart(api, || start_in("restart", &pg.url, h1_a1()));
}

/// Commands and results stored through one ledger `open` gives are there
/// when it is opened again; ids go on, never reused.
fn ledger_survives_reopening(open: impl Fn() -> (Ledger, Recovered)) {
    rt().block_on(async {
        let (l, r) = open();
        assert!(r.pending.is_empty());
        let a = l
            .issue("n1", CommandKind::DrainGpu { gpu: 0 })
            .await
            .unwrap();
        let b = l
            .issue("n1", CommandKind::DrainGpu { gpu: 1 })
            .await
            .unwrap();
        assert!(b.id > a.id);
        let ok = CommandResult {
            id: a.id,
            outcome: Outcome::Applied,
        };
        assert_eq!(l.record("n1", ok.clone()).await.unwrap(), Recorded::New);
        assert_eq!(l.record("n1", ok.clone()).await.unwrap(), Recorded::Again);
        assert_eq!(
            l.record("n2", ok).await.unwrap(),
            Recorded::Unknown,
            "a result from a node the command was not issued to"
        );
        let stray = CommandResult {
            id: 999,
            outcome: Outcome::Applied,
        };
        assert_eq!(l.record("n1", stray).await.unwrap(), Recorded::Unknown);
    });
    // The writer thread ends with its handle; the database stays.
    rt().block_on(async {
        let (l, r) = open();
        assert_eq!(r.results, 1);
        let pending: Vec<u64> = r.pending["n1"].keys().copied().collect();
        assert_eq!(pending.len(), 1, "{r:?}");
        let c = l
            .issue("n1", CommandKind::DrainGpu { gpu: 2 })
            .await
            .unwrap();
        assert!(c.id > pending[0], "ids are not reused after a restart");
        let (node, o) = l.result(pending[0] - 1).await.unwrap().unwrap();
        assert_eq!((node.as_str(), o), ("n1", Outcome::Applied));
        assert_eq!(l.result(pending[0]).await.unwrap(), None);
    });
}

#[test]
fn sqlite_ledger_keeps_commands_and_results_across_reopening() {
    let dir = std::env::temp_dir().join(format!("vagus-ledger-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ledger.sqlite");
    ledger_survives_reopening(|| Ledger::open(&path).unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn postgres_ledger_keeps_commands_and_results_across_reopening() {
    let Some(pg) = server("ledger") else { return };
    ledger_survives_reopening(|| {
        Ledger::open_postgres(&Postgres::take_over(&Database::at(&pg.url), "brain-0").unwrap())
            .unwrap()
    });
}

fn row(workload: &str) -> Row {
    Row {
        at_ms: 1,
        path: "control".into(),
        workload: workload.into(),
        node: None,
        actor: "test".into(),
        summary: format!("{workload} stored"),
        body: "{}".into(),
        state: None,
    }
}

fn workloads(a: &Audit) -> Vec<String> {
    a.query(&Filter::default())
        .unwrap()
        .into_iter()
        .map(|e| e.workload)
        .collect()
}

#[test]
fn a_deposed_brain_writes_nothing_and_its_last_write_lands_before_the_new_leader_reads() {
    let Some(pg) = server("fence") else { return };
    let a = Postgres::take_over(&Database::at(&pg.url), "brain-a").unwrap();
    let audit_a = Audit::open_postgres(&a).unwrap();
    let (ledger_a, _) = Ledger::open_postgres(&a).unwrap();
    let rt = rt();
    let sent = rt.block_on(async {
        audit_a.submit(vec![row("first")]).await.unwrap().unwrap();
        ledger_a
            .issue("n1", CommandKind::DrainGpu { gpu: 0 })
            .await
            .unwrap()
    });
    // A write of brain-a's under way (the table locked against it, after
    // its fence) when brain-b takes over: the takeover waits for it.
    let mut blocker = pg.client();
    blocker
        .batch_execute("BEGIN; LOCK TABLE decisions IN EXCLUSIVE MODE")
        .unwrap();
    let under_way = audit_a.submit(vec![row("under-way")]);
    std::thread::sleep(Duration::from_millis(300));
    let url = pg.url.clone();
    let taking =
        std::thread::spawn(move || Postgres::take_over(&Database::at(&url), "brain-b").unwrap());
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        !taking.is_finished(),
        "the takeover did not wait for the write under way"
    );
    blocker.batch_execute("COMMIT").unwrap();
    let b = taking.join().unwrap();
    assert!(b.epoch() > a.epoch(), "{} then {}", a.epoch(), b.epoch());
    rt.block_on(async {
        under_way
            .await
            .unwrap()
            .expect("the write under way commits");
        // From now on brain-a's writes are refused, naming who leads.
        let e = audit_a
            .submit(vec![row("late")])
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            e.contains("no longer leads") && e.contains("brain-b"),
            "{e}"
        );
        let e = ledger_a
            .issue("n1", CommandKind::DrainGpu { gpu: 1 })
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("no longer leads"), "{e}");
        let done = CommandResult {
            id: sent.id,
            outcome: Outcome::Applied,
        };
        assert!(ledger_a.record("n1", done.clone()).await.is_err());
        // brain-b reads everything brain-a acknowledged, and nothing after.
        let audit_b = Audit::open_postgres(&b).unwrap();
        assert_eq!(workloads(&audit_b), ["first", "under-way"]);
        let (ledger_b, recovered) = Ledger::open_postgres(&b).unwrap();
        let pending: Vec<u64> = recovered.pending["n1"].keys().copied().collect();
        assert_eq!(pending, [sent.id], "{recovered:?}");
        // And brain-b writes.
        assert_eq!(ledger_b.record("n1", done).await.unwrap(), Recorded::New);
        audit_b.submit(vec![row("b")]).await.unwrap().unwrap();
        assert_eq!(workloads(&audit_b), ["first", "under-way", "b"]);
    });
}

/// A brain replica of its own runtime (so that killing it stops all it
/// runs at once), contending for the lease `server` keeps.
struct Replica {
    addr: SocketAddr,
    rt: tokio::runtime::Runtime,
}

fn replica(identity: &str, url: &str, server: &lease::LeaseServer) -> Replica {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (mock, handle) = tower_test::mock::pair::<
        http::Request<::kube::client::Body>,
        http::Response<::kube::client::Body>,
    >();
    rt.spawn(server.clone().run(handle));
    let client = {
        let _in = rt.enter();
        ::kube::Client::new(mock, "vagus")
    };
    let starting = rt
        .block_on(vagus_brain::Service::bind(vagus_brain::Config {
            http: Some(vagus_brain::HttpConfig {
                addr: "127.0.0.1:0".parse().unwrap(),
                tokens: tokens(),
                audit: None,
                core: vagus_decision::Config::default(),
                nodes: h1_a1(),
                clock: None,
                scheduler: None,
                kubernetes: None,
            }),
            quic: None,
            database: Some(Database::at(url)),
            lease: Some(vagus_brain::Lease {
                client,
                election: vagus_kube::leader::Election {
                    namespace: "vagus".into(),
                    lease: "vagus-brain".into(),
                    identity: identity.into(),
                    duration_s: 2,
                    grace_s: 1,
                },
                pod: Some(identity.into()),
            }),
            sync_every: Duration::from_secs(1),
            control_record: None,
        }))
        .unwrap();
    let addr = starting.http_addr.unwrap();
    rt.spawn(async move {
        // Dropping the service leaves its tasks running on this runtime.
        if let Err(e) = starting.lead().await {
            panic!("{e}");
        }
    });
    Replica { addr, rt }
}

fn leads(addr: SocketAddr) -> bool {
    matches!(
        try_call_at(addr, "GET", "/healthz", None, None),
        Ok((200, _))
    )
}

#[test]
fn a_leader_change_mid_stream_loses_nothing_acknowledged() {
    let Some(pg) = server("handover") else { return };
    let lease = lease::LeaseServer::default();
    lease.add_pod("brain-0");
    lease.add_pod("brain-1");
    let mut replicas = [
        Some(replica("brain-0", &pg.url, &lease)),
        Some(replica("brain-1", &pg.url, &lease)),
    ];
    let addrs: Vec<SocketAddr> = replicas.iter().flatten().map(|r| r.addr).collect();
    let t = Instant::now();
    let first = loop {
        if let Some(i) = addrs.iter().position(|a| leads(*a)) {
            break i;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "no brain led");
        std::thread::sleep(Duration::from_millis(50));
    };
    let follower = 1 - first;
    // The leader's pod is labelled so (the Service selects it); the other's not.
    let label = |i: usize| lease.label(&format!("brain-{i}"), "vagus.dev/leader");
    let t = Instant::now();
    while label(first).is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the leader's pod is not labelled"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        (label(first).as_deref(), label(follower)),
        (Some("true"), None)
    );
    // The follower refuses: 503, and says why.
    let (st, v) = call_at(
        addrs[follower],
        "POST",
        "/v1/placements",
        Some(OPERATOR),
        Some(&profile("early", "m")),
    );
    assert_eq!(st, 503, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("does not lead"),
        "{v}"
    );
    // A client posts placements without pause, to whichever brain leads.
    let stream = Stream::start([addrs[0], addrs[1]], first, |addr, name| {
        let mut p: serde_json::Value = serde_json::from_str(&profile(name, "m")).unwrap();
        p["share_pct"] = 5.into();
        let body = p.to_string();
        try_call_at(addr, "POST", "/v1/placements", Some(OPERATOR), Some(&body)).map(|(st, _)| st)
    });
    stream.wait_for(first, 30, Duration::from_secs(60));
    // The leader dies mid-stream: its runtime (HTTP, lease renewals, all)
    // stops at once, requests in flight cut off.
    let killed = Instant::now();
    replicas[first].take().unwrap().rt.shutdown_background();
    stream.wait_for(follower, 30, Duration::from_secs(60));
    let took = stream.first_by(follower).map(|t| t - killed);
    let (acked, refused) = stream.stop();
    eprintln!(
        "{} acknowledged ({} by the first leader); {refused} refused while following; the new leader's first answer {took:?} after the kill",
        acked.len(),
        acked.iter().filter(|(_, at)| *at == first).count(),
    );
    assert!(refused > 0, "the follower acknowledged before it led");
    // Nothing acknowledged is lost: the new leader knows every one.
    let leader = addrs[follower];
    for (name, _) in &acked {
        let (st, v) = call_at(
            leader,
            "GET",
            &format!("/v1/placements/{name}"),
            Some(VIEWER),
            None,
        );
        assert_eq!(st, 200, "{name}, acknowledged, is gone: {v}");
        assert_eq!(pg_rows(&pg, name), 1, "{name}: one decision in the trail");
    }
    let holder: String = pg
        .client()
        .query_one("SELECT holder FROM vagus_leader", &[])
        .unwrap()
        .get(0);
    assert_eq!(holder, format!("brain-{follower}"));
    assert_eq!(lease.holder(), Some(holder));
    // The new leader took the label off the dead one's pod.
    let t = Instant::now();
    while label(first).is_some() || label(follower).is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the label did not move: {:?}, {:?}",
            label(first),
            label(follower)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn postgres_over_tls_verifies_the_servers_certificate() {
    use vagus_link::certs::Ca;
    let ca = Ca::new("database CA").unwrap();
    let cert = ca.issue("localhost").unwrap();
    let Some(pg) = common::postgres::server_tls("tls", &cert.cert_pem, &cert.key_pem) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("vagus-pg-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ours, theirs) = (dir.join("ca.pem"), dir.join("other-ca.pem"));
    std::fs::write(&ours, ca.cert_pem()).unwrap();
    std::fs::write(&theirs, Ca::new("another CA").unwrap().cert_pem()).unwrap();
    let tls_of = |db: &Database| -> bool {
        let pg = Postgres::take_over(db, "brain-0").unwrap();
        pg.connect()
            .unwrap()
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .unwrap()
            .get(0)
    };
    // Our CA: TLS, the certificate verified for localhost.
    let with_ca = |url: String, ca: &std::path::Path| Database {
        url,
        ca: Some(ca.to_path_buf()),
    };
    assert!(tls_of(&with_ca(pg.url.clone(), &ours)));
    // The brain's trail over it, as `--database … --database-ca` runs it.
    let api = start_on_database("tls", with_ca(pg.url.clone(), &ours));
    assert_eq!(
        call(
            &api,
            "POST",
            "/v1/placements",
            Some(OPERATOR),
            Some(&profile("tls", "m"))
        )
        .0,
        201
    );
    assert_eq!(pg_rows(&pg, "tls"), 1);
    // Another CA, or Mozilla's roots for sslmode=require: refused, and said.
    for db in [
        with_ca(pg.url.clone(), &theirs),
        Database::at(&format!("{} sslmode=require", pg.url)),
    ] {
        let e = Postgres::take_over(&db, "brain-0").unwrap_err().to_string();
        assert!(
            e.contains("postgres://vagus@localhost:") && e.to_lowercase().contains("certificate"),
            "{e}"
        );
    }
    // Neither: a plain connection, as before.
    assert!(!tls_of(&Database::at(&pg.url)));
    let _ = std::fs::remove_dir_all(&dir);
}
