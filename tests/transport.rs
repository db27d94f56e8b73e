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

#[test]
fn an_agent_killed_between_applying_and_acknowledging_does_not_apply_again() {
    let mut sim = Sim::new("transport-journal");
    sim.start_mps_daemon();
    let certs = certs_init(&sim, "node-a");
    let addr = format!("127.0.0.1:{}", free_udp_port());
    // The MPS control tool, wrapped: a `set_…` command is logged and then
    // waits for `go` before it runs, so the test knows when the agent is
    // applying it and chooses when that ends.
    let (log, go) = (sim.dir.join("applied.log"), sim.dir.join("go"));
    let wrapper = sim.dir.join("mps-control.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nline=$(cat)\ncase \"$line\" in set_*)\n  echo \"$line\" >> '{}'\n  while [ ! -e '{}' ]; do sleep 0.02; done;;\nesac\nprintf '%s\\n' \"$line\" | exec '{}'\n",
            log.display(),
            go.display(),
            bin("gpusim-mps-control").display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mps = sim.dir.join("mps");
    let agent = || {
        sim.vagus(&[
            "agent",
            "--brain",
            &addr,
            "--certs",
            certs.to_str().unwrap(),
            "--node",
            "node-a",
            "--no-bpf",
            "--segments",
            sim.dir.join("segments").to_str().unwrap(),
            "--mps-pipe-dirs",
            mps.to_str().unwrap(),
            "--mps-control",
            wrapper.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
    };
    let lines = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .map(|s| s.lines().map(str::to_string).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let wait = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !ok() {
            assert!(Instant::now() < deadline, "{what} within 15 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    let mut brain = start_brain(&sim, &addr, &certs);
    let mut first = agent();
    assert!(
        brain
            .wait_for(Duration::from_secs(15), |v| v["event"] == "connected")
            .is_some(),
        "the agent never connected"
    );
    // Server 0: the default percentage for servers started from now on.
    brain.send(r#"{"issue": {"node": "node-a", "command": {"SetMpsPercentage": {"gpu": 0, "server_pid": 0, "percent": 40.0}}}}"#);
    let id = brain
        .wait_for(Duration::from_secs(10), |v| v["event"] == "issued")
        .expect("issued")["id"]
        .as_u64()
        .unwrap();
    wait("the agent applying the command", &|| lines(&log).len() == 1);
    // The brain dies before the result can reach it; the command ends and
    // the agent journals its outcome; then the agent dies, unacknowledged.
    brain.child.kill().unwrap();
    brain.child.wait().unwrap();
    std::fs::write(&go, "").unwrap();
    let journal = sim.dir.join("agent-state/commands-node-a.log");
    wait("the outcome in the agent's journal", &|| {
        lines(&journal).iter().any(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            v["id"] == id && v["outcome"] == "Applied"
        })
    });
    first.kill().unwrap();
    first.wait().unwrap();
    let default = || sim.mps_control("get_default_active_thread_percentage\n").0;
    assert_eq!(default().trim(), "40.0", "applied once");
    // An operator changes the default meanwhile: applying the command
    // again would undo that.
    assert!(
        sim.mps_control("set_default_active_thread_percentage 60\n")
            .1
    );

    // Both come back; the brain's ledger still has the command unanswered
    // and sends it again; the restarted agent answers from its journal.
    let brain = start_brain(&sim, &addr, &certs);
    let mut second = agent();
    let result = brain
        .wait_for(Duration::from_secs(20), |v| {
            v["event"] == "result" && v["id"].as_u64() == Some(id)
        })
        .expect("the command's result after the restarts");
    assert_eq!(result["outcome"], "Applied", "the first outcome: {result}");
    assert_eq!(lines(&log).len(), 1, "applied once: {:?}", lines(&log));
    assert_eq!(default().trim(), "60.0", "not applied again");
    let _ = second.kill();
    let _ = second.wait();
}
