//! `vagus brain --quic` and `vagus agent --brain` as processes: they connect
//! with mutual TLS, and when the brain is killed with SIGKILL and restarted
//! the agent is back within 2 s and delivers the windows it buffered.

use crate::support::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A brain process and the JSON lines it prints.
struct BrainProc {
    child: Child,
    lines: mpsc::Receiver<serde_json::Value>,
}

fn start_brain(sim: &Sim, addr: &str, certs: &std::path::Path) -> BrainProc {
    let mut child = sim
        .vagus(&["brain", "--quic", addr, "--certs", certs.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&l)
                && tx.send(v).is_err()
            {
                return;
            }
        }
    });
    BrainProc { child, lines }
}

impl BrainProc {
    /// The next event matching `f` within `timeout`.
    fn wait_for(
        &self,
        timeout: Duration,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(v) if f(&v) => return Some(v),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_brain_killed_and_restarted_gets_its_agent_back_with_the_buffered_windows() {
    let sim = Sim::new("transport");
    let certs = sim.dir.join("certs");
    let out = sim
        .vagus(&[
            "certs",
            "init",
            "--dir",
            certs.to_str().unwrap(),
            "--agents",
            "node-a",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let addr = format!("127.0.0.1:{}", free_udp_port());

    let mut brain = start_brain(&sim, &addr, &certs);
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
            "--buffer-windows",
            "10",
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

    // SIGKILL the brain; the agent keeps buffering (at most 10 windows).
    brain.child.kill().unwrap();
    brain.child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(1500));

    let restarted = Instant::now();
    let mut brain = start_brain(&sim, &addr, &certs);
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

    agent.kill().unwrap();
    agent.wait().unwrap();
    brain.child.kill().unwrap();
    brain.child.wait().unwrap();
}
