//! The local executor: the replicas the brain asks this node to run.
//!
//! A replica is started with the GPUs and MPS share its placement was
//! given (`CUDA_VISIBLE_DEVICES`, `CUDA_MPS_PIPE_DIRECTORY`,
//! `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`), the shim preloaded with the
//! agent's segment directory (and, on one GPU, that GPU's gate,
//! `VAGUS_GATE`), in a session and a cgroup of its own under `vagus.slice`
//! where cgroup v2 is writable, its output in a log beside its record. The
//! record (`<id>.json` in the executor's directory: pid, the process's
//! start time, cgroup) is written before the start is reported,
//! so an agent that restarts finds its replicas again — the pid alive,
//! started when the record says, in the cgroup it names — rather than
//! starting them twice. Nothing is restarted on its own: an exited replica
//! stays exited until the brain says otherwise.
//!
//! Stopping is graceful: the replica drains (the brain's routes give it no
//! new requests) until its own metrics show nothing queued or running and
//! at least [`MIN_DRAIN`] has passed, or its grace period ends; then
//! SIGTERM to its process group, and SIGKILL [`TERM_TIMEOUT`] later. One
//! stopped before it ever answered its health check holds nothing: it gets
//! SIGTERM at once.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vagus_proto::wire::{Outcome, ReplicaSpec, ReplicaState, ReplicaWindow};

/// Draining lasts at least this long: the routes that stop sending to the
/// replica take a moment to reach every gateway.
pub const MIN_DRAIN: Duration = Duration::from_secs(1);
/// SIGKILL after SIGTERM is not heeded within this.
pub const TERM_TIMEOUT: Duration = Duration::from_secs(10);
/// An exited replica is reported this long, then forgotten.
const EXITED_KEPT: Duration = Duration::from_secs(60);

/// How replicas are started on this node.
#[derive(Clone, Debug, Default)]
pub struct ExecConfig {
    /// Where records and logs go (`<agent state>/replicas-<node>`).
    pub state_dir: PathBuf,
    /// `libvagus_shim.so`, preloaded into every replica when given.
    pub shim: Option<PathBuf>,
    /// The shim's segment directory (`VAGUS_SHM_DIR`).
    pub segment_dir: Option<PathBuf>,
    /// MPS pipe directories, one per GPU (one alone serves every GPU).
    pub mps_pipe_dirs: Vec<PathBuf>,
    /// The cgroup v2 mount, when replicas get cgroups.
    pub cgroup_root: Option<PathBuf>,
}

/// What survives an agent restart.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    spec: Spec,
    pid: u32,
    /// `/proc/<pid>/stat` field 22: tells the process from a later one
    /// with the same pid.
    start_ticks: u64,
    /// Its cgroup, relative to the v2 root (`/vagus.slice/<id>`).
    cgroup: Option<String>,
}

/// [`ReplicaSpec`] as the record stores it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Spec {
    id: String,
    command: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    port: Option<u16>,
    gpus: Vec<u32>,
    mps_percent: Option<f32>,
}

impl From<&ReplicaSpec> for Spec {
    fn from(s: &ReplicaSpec) -> Spec {
        Spec {
            id: s.id.clone(),
            command: s.command.clone(),
            args: s.args.clone(),
            env: s.env.clone(),
            port: s.port,
            gpus: s.gpus.clone(),
            mps_percent: s.mps_percent,
        }
    }
}

#[derive(Debug)]
struct Drain {
    since: Instant,
    until: Instant,
    term_at: Option<Instant>,
    /// It was still starting when stopped: it never answered its health
    /// check, so no route sent it anything to finish.
    never_ready: bool,
}

/// One replica.
#[derive(Debug)]
pub struct Replica {
    record: Record,
    /// The process, when this agent run started it (else it was found
    /// again and cannot be waited for).
    child: Option<std::process::Child>,
    pub state: ReplicaState,
    pub exit: Option<String>,
    drain: Option<Drain>,
    exited_at: Option<Instant>,
}

impl Replica {
    pub fn pid(&self) -> u32 {
        self.record.pid
    }

    pub fn port(&self) -> Option<u16> {
        self.record.spec.port
    }

    /// Its metrics URL, when it serves HTTP.
    pub fn metrics_url(&self) -> Option<String> {
        self.port().map(|p| format!("http://127.0.0.1:{p}/metrics"))
    }

    fn window(&self) -> ReplicaWindow {
        ReplicaWindow {
            id: self.record.spec.id.clone(),
            pid: self.record.pid,
            port: self.record.spec.port,
            state: self.state,
            exit: self.exit.clone(),
            gpus: self.record.spec.gpus.clone(),
            mps_percent: self.record.spec.mps_percent,
        }
    }
}

/// What the replica's own metrics say, for its state.
#[derive(Clone, Copy, Debug, Default)]
pub struct Load {
    /// Requests queued plus running, as last scraped.
    pub in_flight: Option<f64>,
    /// Requests it has finished since the agent watched it.
    pub served: u64,
}

/// Every replica this node runs.
#[derive(Debug, Default)]
pub struct Replicas {
    cfg: ExecConfig,
    pub map: BTreeMap<String, Replica>,
    /// Limitations, said once (no cgroup, unreadable records).
    pub notes: Vec<String>,
}

/// The process's start time, if it runs (a zombie has ended).
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces.
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    if matches!(rest.next(), Some("Z" | "X")) {
        return None;
    }
    rest.nth(18)?.parse().ok()
}

fn cgroup_of(pid: u32) -> Option<String> {
    let c = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    c.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().to_string())
}

/// Whether `r`'s process is the one its record names.
fn still_there(r: &Record) -> bool {
    start_ticks(r.pid) == Some(r.start_ticks)
        && r.cgroup
            .as_ref()
            .is_none_or(|c| cgroup_of(r.pid).as_deref() == Some(c.as_str()))
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (_, Some(s)) => format!("signal {s}"),
        _ => status.to_string(),
    }
}

impl Replicas {
    /// The executor, with the replicas an earlier run of the agent left
    /// running found again.
    pub fn open(cfg: ExecConfig) -> Replicas {
        let mut r = Replicas {
            cfg,
            ..Replicas::default()
        };
        let dir = r.dir();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return r;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let record: Record = match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(rec) => rec,
                Err(e) => {
                    r.notes.push(format!(
                        "replica record {} is unreadable: {e}",
                        path.display()
                    ));
                    continue;
                }
            };
            let alive = still_there(&record);
            let id = record.spec.id.clone();
            r.map.insert(
                id,
                Replica {
                    record,
                    child: None,
                    state: if alive {
                        ReplicaState::Starting
                    } else {
                        ReplicaState::Exited
                    },
                    exit: (!alive).then(|| "gone while the agent was not running".to_string()),
                    drain: None,
                    exited_at: (!alive).then(Instant::now),
                },
            );
        }
        r
    }

    fn dir(&self) -> PathBuf {
        self.cfg.state_dir.clone()
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.dir().join(format!("{id}.json"))
    }

    /// Starts `spec`'s replica; a replica of that id that runs already is
    /// left as it is (`Duplicate`).
    pub fn start(&mut self, spec: &ReplicaSpec) -> Outcome {
        if let Some(r) = self.map.get(&spec.id)
            && r.state != ReplicaState::Exited
        {
            return Outcome::Duplicate;
        }
        match self.spawn(spec) {
            Ok(r) => {
                self.map.insert(spec.id.clone(), r);
                Outcome::Applied
            }
            Err(e) => Outcome::Failed(format!("replica {}: {e}", spec.id)),
        }
    }

    fn cgroup_for(&mut self, id: &str) -> Option<(PathBuf, String)> {
        let root = self.cfg.cgroup_root.clone()?;
        let rel = format!("/vagus.slice/{id}");
        let dir = root.join(rel.trim_start_matches('/'));
        match std::fs::create_dir_all(&dir) {
            Ok(()) => Some((dir.join("cgroup.procs"), rel)),
            Err(e) => {
                let note = format!(
                    "replicas run without cgroups of their own: cannot create {}: {e}",
                    dir.display()
                );
                if !self.notes.contains(&note) {
                    self.notes.push(note);
                }
                None
            }
        }
    }

    fn spawn(&mut self, spec: &ReplicaSpec) -> Result<Replica, String> {
        use std::os::unix::process::CommandExt;
        let dir = self.dir();
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let log_path = dir.join(format!("{}.log", spec.id));
        let log =
            std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = std::process::Command::new(&spec.command);
        cmd.args(&spec.args)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err);
        let gpus: Vec<String> = spec.gpus.iter().map(u32::to_string).collect();
        cmd.env("CUDA_VISIBLE_DEVICES", gpus.join(","));
        if let Some(p) = spec.mps_percent {
            cmd.env("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", format!("{p}"));
        }
        // With or without a share, a process on a GPU is its daemon's client
        // where one runs (so the daemon the agent watches for that GPU).
        let pipe = match self.cfg.mps_pipe_dirs.as_slice() {
            [one] => Some(one),
            many => spec.gpus.first().and_then(|g| many.get(*g as usize)),
        };
        if let Some(pipe) = pipe {
            cmd.env("CUDA_MPS_PIPE_DIRECTORY", pipe);
        }
        if let Some(shim) = &self.cfg.shim {
            cmd.env("LD_PRELOAD", shim);
        }
        if let Some(seg) = &self.cfg.segment_dir {
            cmd.env("VAGUS_SHM_DIR", seg);
            // The GPU's gate, where the shims of the processes on it hold
            // best-effort launches back for latency-sensitive ones.
            if let [gpu] = spec.gpus.as_slice() {
                cmd.env("VAGUS_GATE", seg.join(format!("gpu-{gpu}.gate")));
            }
        }
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        let cgroup = self.cgroup_for(&spec.id);
        let procs = cgroup
            .as_ref()
            .and_then(|(p, _)| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok());
        // SAFETY: the closure runs in the child between fork and exec and
        // calls only async-signal-safe functions (setsid, open, write,
        // close) on memory prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                libc::setsid();
                if let Some(procs) = &procs {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd >= 0 {
                        // "0": the writing process itself.
                        libc::write(fd, b"0".as_ptr().cast(), 1);
                        libc::close(fd);
                    }
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", spec.command))?;
        let pid = child.id();
        let record = Record {
            spec: Spec::from(spec),
            pid,
            start_ticks: start_ticks(pid).unwrap_or(0),
            cgroup: cgroup.map(|(_, rel)| rel).filter(|rel| {
                // Only a cgroup the process is really in finds it again.
                cgroup_of(pid).as_deref() == Some(rel.as_str())
            }),
        };
        self.write_record(&record)?;
        Ok(Replica {
            record,
            child: Some(child),
            state: ReplicaState::Starting,
            exit: None,
            drain: None,
            exited_at: None,
        })
    }

    fn write_record(&self, r: &Record) -> Result<(), String> {
        let path = self.record_path(&r.spec.id);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(r).map_err(|e| e.to_string())?;
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Begins stopping replica `id` (draining at most `grace`); stopping
    /// one that is not running, or already stopping, changes nothing.
    pub fn stop(&mut self, id: &str, grace: Duration) -> Outcome {
        let Some(r) = self.map.get_mut(id) else {
            return Outcome::Applied;
        };
        if matches!(r.state, ReplicaState::Exited | ReplicaState::Draining) {
            return Outcome::Duplicate;
        }
        let now = Instant::now();
        let never_ready = r.state == ReplicaState::Starting;
        r.state = ReplicaState::Draining;
        r.drain = Some(Drain {
            since: now,
            until: now + grace,
            term_at: None,
            never_ready,
        });
        Outcome::Applied
    }

    /// Sets whether replica `id` answered its health check.
    pub fn healthy(&mut self, id: &str, ok: bool) {
        if let Some(r) = self.map.get_mut(id)
            && ok
            && r.state == ReplicaState::Starting
        {
            r.state = ReplicaState::Ready;
        }
    }

    /// The replicas a health check should look at: (id, port).
    pub fn to_probe(&self) -> Vec<(String, u16)> {
        self.map
            .values()
            .filter(|r| r.state == ReplicaState::Starting)
            .filter_map(|r| Some((r.record.spec.id.clone(), r.port()?)))
            .collect()
    }

    fn signal(r: &Replica, sig: i32) {
        // The replica leads its own session and process group.
        // SAFETY: kill only sends a signal.
        unsafe {
            libc::kill(-(r.record.pid as i32), sig);
            libc::kill(r.record.pid as i32, sig);
        }
    }

    /// Moves every replica along (exits, drains, timeouts) and returns
    /// their windows. `load(id)`: what the replica's metrics say.
    pub fn tick(&mut self, now: Instant, load: impl Fn(&Replica) -> Load) -> Vec<ReplicaWindow> {
        let mut forget = Vec::new();
        for (id, r) in self.map.iter_mut() {
            if r.state != ReplicaState::Exited {
                let exited = match &mut r.child {
                    Some(c) => match c.try_wait() {
                        Ok(Some(st)) => Some(describe(st)),
                        Ok(None) => None,
                        Err(e) => Some(format!("cannot be waited for: {e}")),
                    },
                    None => (!still_there(&r.record))
                        .then(|| "exited (found again after an agent restart: no status)".into()),
                };
                if let Some(how) = exited {
                    r.state = ReplicaState::Exited;
                    r.exit = Some(how);
                    r.exited_at = Some(now);
                    r.drain = None;
                }
            }
            let l = load(r);
            match r.state {
                ReplicaState::Ready if l.served > 0 => r.state = ReplicaState::Running,
                ReplicaState::Draining => {
                    let d = r.drain.as_mut().expect("a draining replica has a drain");
                    match d.term_at {
                        None => {
                            let idle = l.in_flight.is_some_and(|n| n <= 0.0)
                                || r.record.spec.port.is_none();
                            if d.never_ready
                                || (idle && now >= d.since + MIN_DRAIN)
                                || now >= d.until
                            {
                                d.term_at = Some(now);
                                Self::signal(r, libc::SIGTERM);
                            }
                        }
                        Some(t) if now >= t + TERM_TIMEOUT => {
                            Self::signal(r, libc::SIGKILL);
                        }
                        Some(_) => {}
                    }
                }
                ReplicaState::Exited if r.exited_at.is_some_and(|t| now >= t + EXITED_KEPT) => {
                    forget.push(id.clone());
                }
                _ => {}
            }
        }
        for id in forget {
            self.map.remove(&id);
            let _ = std::fs::remove_file(self.record_path(&id));
            if let Some(root) = &self.cfg.cgroup_root {
                let _ = std::fs::remove_dir(root.join("vagus.slice").join(&id));
            }
        }
        self.map.values().map(Replica::window).collect()
    }

    /// For `/snapshot`.
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.map
                .values()
                .map(|r| {
                    serde_json::json!({
                        "id": r.record.spec.id, "pid": r.record.pid, "port": r.record.spec.port,
                        "state": r.state.name(), "exit": r.exit, "gpus": r.record.spec.gpus,
                        "mps_percent": r.record.spec.mps_percent, "cgroup": r.record.cgroup,
                        "found_again": r.child.is_none(),
                        "log": self.dir().join(format!("{}.log", r.record.spec.id)),
                    })
                })
                .collect(),
        )
    }
}

/// The log a replica writes to, in `state_dir`.
pub fn log_path(state_dir: &Path, id: &str) -> PathBuf {
    state_dir.join(format!("{id}.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, args: &[&str]) -> ReplicaSpec {
        ReplicaSpec {
            id: id.into(),
            command: "/bin/sh".into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![("GREETING".into(), "hi".into())],
            port: None,
            gpus: vec![1],
            mps_percent: Some(50.0),
        }
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vagus-replicas-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn until(r: &mut Replicas, id: &str, state: ReplicaState) -> ReplicaWindow {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ws = r.tick(Instant::now(), |_| Load::default());
            if let Some(w) = ws.into_iter().find(|w| w.id == id && w.state == state) {
                return w;
            }
            assert!(Instant::now() < deadline, "{id} never reached {state:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_replica_gets_its_share_and_is_found_again_not_started_twice() {
        let state_dir = dir("found");
        let cfg = ExecConfig {
            state_dir: state_dir.clone(),
            mps_pipe_dirs: vec!["/tmp/mps-a".into(), "/tmp/mps-b".into()],
            segment_dir: Some("/run/vagus-test".into()),
            ..Default::default()
        };
        let mut r = Replicas::open(cfg.clone());
        let s = spec(
            "chat",
            &[
                "-c",
                "echo $CUDA_VISIBLE_DEVICES $CUDA_MPS_ACTIVE_THREAD_PERCENTAGE $CUDA_MPS_PIPE_DIRECTORY $GREETING $VAGUS_GATE; exec sleep 30",
            ],
        );
        assert_eq!(r.start(&s), Outcome::Applied);
        assert_eq!(r.start(&s), Outcome::Duplicate, "one replica per id");
        let pid = r.map["chat"].pid();
        std::thread::sleep(Duration::from_millis(200));
        let log = std::fs::read_to_string(log_path(&state_dir, "chat")).unwrap();
        assert_eq!(log.trim(), "1 50 /tmp/mps-b hi /run/vagus-test/gpu-1.gate");

        // A restarted agent finds it by its record, and starts nothing.
        drop(r);
        let mut again = Replicas::open(cfg.clone());
        assert_eq!(again.map["chat"].pid(), pid);
        assert_eq!(again.map["chat"].state, ReplicaState::Starting);
        assert_eq!(again.start(&s), Outcome::Duplicate);

        // Stopped: it drains (no port: nothing to wait for), then SIGTERM.
        assert_eq!(again.stop("chat", Duration::from_secs(5)), Outcome::Applied);
        let w = until(&mut again, "chat", ReplicaState::Exited);
        assert!(
            w.exit.unwrap().contains("no status"),
            "found again: not its child"
        );
        assert_eq!(start_ticks(pid), None, "the process is gone");

        // Once exited, a new start is a new process.
        assert_eq!(again.start(&s), Outcome::Applied);
        assert_ne!(again.map["chat"].pid(), pid);
        again.stop("chat", Duration::ZERO);
        let w = until(&mut again, "chat", ReplicaState::Exited);
        assert_eq!(w.exit.as_deref(), Some("signal 15"));
        let _ = std::fs::remove_dir_all(&state_dir);
    }

    #[test]
    fn a_replica_that_exits_is_reported_with_its_status_and_not_restarted() {
        let state_dir = dir("exits");
        let mut r = Replicas::open(ExecConfig {
            state_dir: state_dir.clone(),
            ..Default::default()
        });
        assert_eq!(r.start(&spec("short", &["-c", "exit 3"])), Outcome::Applied);
        let w = until(&mut r, "short", ReplicaState::Exited);
        assert_eq!(w.exit.as_deref(), Some("exit status 3"));
        for _ in 0..5 {
            let ws = r.tick(Instant::now(), |_| Load::default());
            assert_eq!(ws[0].state, ReplicaState::Exited, "nothing restarts it");
        }
        let bad = ReplicaSpec {
            command: "/nonexistent/server".into(),
            ..spec("bad", &[])
        };
        let Outcome::Failed(why) = r.start(&bad) else {
            panic!("a command that cannot start fails");
        };
        assert!(why.contains("/nonexistent/server"), "{why}");
        let _ = std::fs::remove_dir_all(&state_dir);
    }

    #[test]
    fn draining_waits_for_in_flight_requests_up_to_the_grace_period() {
        let state_dir = dir("drain");
        let mut r = Replicas::open(ExecConfig {
            state_dir: state_dir.clone(),
            ..Default::default()
        });
        let s = ReplicaSpec {
            port: Some(1),
            ..spec("busy", &["-c", "exec sleep 30"])
        };
        r.start(&s);
        r.healthy("busy", true);
        let ws = r.tick(Instant::now(), |_| Load {
            in_flight: Some(2.0),
            served: 3,
        });
        assert_eq!(ws[0].state, ReplicaState::Running);
        r.stop("busy", Duration::from_secs(60));
        let t0 = Instant::now();
        // Busy: it keeps draining, past the minimum.
        for _ in 0..3 {
            let ws = r.tick(t0 + MIN_DRAIN * 2, |_| Load {
                in_flight: Some(1.0),
                served: 3,
            });
            assert_eq!(ws[0].state, ReplicaState::Draining);
        }
        // Idle: SIGTERM.
        r.tick(t0 + MIN_DRAIN * 2, |_| Load {
            in_flight: Some(0.0),
            served: 4,
        });
        let w = until(&mut r, "busy", ReplicaState::Exited);
        assert_eq!(w.exit.as_deref(), Some("signal 15"));
        // One stopped before it was ever ready held nothing: SIGTERM at
        // once, though its metrics say nothing and its grace is long.
        let s = ReplicaSpec {
            port: Some(1),
            ..spec("mute", &["-c", "exec sleep 30"])
        };
        r.start(&s);
        r.stop("mute", Duration::from_secs(60));
        let t0 = Instant::now();
        let w = until(&mut r, "mute", ReplicaState::Exited);
        assert_eq!(w.exit.as_deref(), Some("signal 15"));
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        let _ = std::fs::remove_dir_all(&state_dir);
    }
}
