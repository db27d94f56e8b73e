//! `vagus brain --quic` and `vagus agent --brain` as processes: they connect
//! with mutual TLS, a command goes out and its result comes back, and when
//! the brain is killed with SIGKILL and restarted the agent is back within
//! 2 s, delivers the windows it buffered, and the result is still there.

use crate::support::*;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn a_brain_killed_and_restarted_gets_its_agent_back_with_the_buffered_windows() {
    let sim = Sim::new("transport");
    let certs = certs_init(&sim, "node-a");
    let addr = format!("127.0.0.1:{}", free_udp_port());

    let mut brain = start_brain(&sim, &addr, &certs);
    let started = brain
        .wait_for(Duration::from_secs(10), |v| v["event"] == "started")
        .expect("the brain starts");
    assert_eq!(started["results_stored"], 0, "{started}");
    let mut agent = sim
        .vagus(&[
            "agent",
            "--brain",
            &addr,
            "--certs",
            certs.to_str().unwrap(),
            "--node",
            "node-a",
            "--hz",
            "20",
            // About 10 of these small windows.
            "--buffer-bytes",
            "900",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let is = |kind: &'static str| move |v: &serde_json::Value| v["event"] == kind;
    assert!(
        brain
            .wait_for(Duration::from_secs(10), is("connected"))
            .is_some(),
        "the agent never connected"
    );
    let w = brain.wait_for(Duration::from_secs(5), |v| {
        v["event"] == "window" && v["seq"].as_u64() >= Some(5)
    });
    assert!(w.is_some(), "windows do not arrive");

    // A command goes out; this agent cannot drain a GPU yet and says so.
    brain.send(r#"{"issue": {"node": "node-a", "command": {"DrainGpu": {"gpu": 0}}}}"#);
    let issued = brain
        .wait_for(Duration::from_secs(5), is("issued"))
        .expect("issued");
    let id = issued["id"].as_u64().unwrap();
    let result = brain
        .wait_for(Duration::from_secs(5), |v| {
            v["event"] == "result" && v["id"].as_u64() == Some(id)
        })
        .expect("the command's result");
    assert!(
        result["outcome"]
            .as_str()
            .unwrap()
            .contains("cannot apply DrainGpu"),
        "{result}"
    );
    brain.send("{\"nonsense\": 1}");
    let err = brain
        .wait_for(Duration::from_secs(5), is("error"))
        .expect("bad input is answered");
    assert!(err["error"].as_str().unwrap().contains("nonsense"), "{err}");

    // SIGKILL the brain; the agent keeps buffering (at most 10 windows). Its
    // connection's idle timeout is 5 s: that it is back within 1.5 + 2 s
    // shows the restarted brain's stateless reset ended it.
    brain.child.kill().unwrap();
    brain.child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(1500));

    let restarted = Instant::now();
    let mut brain = start_brain(&sim, &addr, &certs);
    let started = brain
        .wait_for(Duration::from_secs(5), is("started"))
        .expect("the brain restarts");
    assert_eq!(
        started["results_stored"], 1,
        "the stored result survived SIGKILL: {started}"
    );
    let back = brain.wait_for(Duration::from_secs(5), is("connected"));
    let took = restarted.elapsed();
    assert!(back.is_some(), "the agent did not come back");
    assert!(
        took < Duration::from_secs(2),
        "the agent took {took:?} to reconnect"
    );
    // The first window after the outage reports the windows it had to drop,
    // and the buffered ones follow in order.
    let first = brain
        .wait_for(Duration::from_secs(5), is("window"))
        .expect("a window after reconnecting");
    assert!(
        first["dropped"].as_u64().unwrap() > 0,
        "1.5 s at 20 Hz overflows a 10-window buffer: {first}"
    );
    let mut seqs = vec![first["seq"].as_u64().unwrap()];
    while seqs.len() < 10 {
        let w = brain
            .wait_for(Duration::from_secs(5), is("window"))
            .expect("the buffered windows");
        seqs.push(w["seq"].as_u64().unwrap());
    }
    assert!(
        seqs.windows(2).all(|p| p[1] == p[0] + 1),
        "in order, none missing after the first: {seqs:?}"
    );

    brain.send(&format!("{{\"result\": {id}}}"));
    let found = brain
        .wait_for(Duration::from_secs(5), is("lookup"))
        .expect("lookup");
    assert_eq!(found["node"], "node-a", "{found}");
    assert!(
        found["outcome"]
            .as_str()
            .unwrap()
            .contains("cannot apply DrainGpu"),
        "{found}"
    );

    agent.kill().unwrap();
    agent.wait().unwrap();
    brain.child.kill().unwrap();
    brain.child.wait().unwrap();
}
