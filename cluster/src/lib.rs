//! A Vagus cluster on this one machine: the brain (QUIC and HTTP), one
//! agent per simulated host (each its own gpusim state file, so each is a
//! node with GPUs of its own), the gateway, and the brain's HTTP API as a
//! client. `vagus demo` and `vagus bench loop` run on it.
//!
//! Every process is started from the `vagus` executable with its output in
//! a log file of the cluster's directory; a [`Cluster`] stops what it
//! started when it is dropped — the replicas agents started (in sessions
//! of their own, so found by pid once the brain reports them) first,
//! asked to stop and then killed, then every child.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The admin token every cluster's brain accepts (the cluster is this
/// machine's alone: its brain listens on loopback), and a viewer's.
pub const TOKEN: &str = "vagus-local-admin-token-0001";
pub const VIEWER_TOKEN: &str = "vagus-local-viewer-token-0001";

pub type Http = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

/// An HTTP/1 client for the brain's API and the servers' endpoints.
pub fn http_client() -> Http {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// One request with the admin token; its status and body (10 s at most).
pub async fn call(
    http: &Http,
    method: &str,
    url: &str,
    body: Option<&Value>,
) -> Result<(u16, String), String> {
    use http_body_util::BodyExt;
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {TOKEN}"));
    let payload = match body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            bytes::Bytes::from(b.to_string())
        }
        None => bytes::Bytes::new(),
    };
    let req = req
        .body(http_body_util::Full::new(payload))
        .map_err(|e| format!("{url}: {e}"))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), http.request(req))
        .await
        .map_err(|_| format!("{method} {url}: no answer in 10 s"))?
        .map_err(|e| format!("{method} {url}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{method} {url}: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// `GET url` as JSON (a body that does not parse is `null`).
pub async fn get_json(http: &Http, url: &str) -> Result<Value, String> {
    let (_, body) = call(http, "GET", url, None).await?;
    Ok(serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Waits until every URL answers 200.
pub async fn healthy(http: &Http, urls: &[String], within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    for u in urls {
        loop {
            if let Ok((200, _)) = call(http, "GET", u, None).await {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{u} did not answer within {within:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

pub fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// A port for a server the brain may copy: free, below the kernel's
/// ephemeral range (where a client connection's own port could take it
/// before the server binds), and so are the ports a shadow or a copy would
/// take (`+1000`, `+2000`: the brain's `reconfig.port_offset`; `+1`,
/// `+2`: the scaler's copies).
pub fn server_port() -> Result<u16, String> {
    use std::sync::atomic::{AtomicU16, Ordering::Relaxed};
    // Handed out once per process, from a start that differs per process.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20_000 + (std::process::id() % 600) as u16 * 10,
        Relaxed,
        Relaxed,
    );
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    for _ in 0..1000 {
        let p = NEXT.fetch_add(10, Relaxed);
        if p >= 29_000 {
            NEXT.store(20_000, Relaxed);
            continue;
        }
        if [0, 1, 2, 1000, 2000].iter().all(|d| free(p + d)) {
            return Ok(p);
        }
    }
    Err("no free server port from 20000 to 29000".into())
}

pub fn free_udp_port() -> Result<u16, String> {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// A simulated host: its gpusim state file and how many GPUs it has.
#[derive(Clone, Debug)]
pub struct Host {
    pub state: PathBuf,
    pub gpus: u32,
}

/// A running brain: its HTTP API and QUIC addresses, and the certificates
/// its agents connect with.
#[derive(Clone, Debug)]
pub struct Brain {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// `127.0.0.1:PORT`.
    pub quic: String,
    pub certs: PathBuf,
}

/// What a cluster runs, and where.
pub struct Cluster {
    /// Logs, certificates, tokens, state files.
    pub dir: PathBuf,
    /// The `vagus` executable, and the shim for the replicas.
    pub vagus: PathBuf,
    pub shim: PathBuf,
    /// gpusim's library directory; `None`: the real driver.
    pub gpusim: Option<PathBuf>,
    pub http: Http,
    children: Vec<Child>,
    /// Replicas agents started (process group leaders).
    replicas: Vec<u32>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Cluster {
    pub fn new(dir: PathBuf, vagus: PathBuf, shim: PathBuf, gpusim: Option<PathBuf>) -> Cluster {
        Cluster {
            dir,
            vagus,
            shim,
            gpusim,
            http: http_client(),
            children: Vec::new(),
            replicas: Vec::new(),
        }
    }

    /// Stops everything: first the cluster's own processes (so that no
    /// agent starts anything more), then the replicas — those adopted and
    /// any other process whose environment names the cluster's directory
    /// (every replica an agent starts has its segments there) — each with
    /// its process group: SIGTERM, SIGKILL after 2 s.
    pub fn stop(&mut self) {
        for mut c in self.children.drain(..).rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let mut targets = std::mem::take(&mut self.replicas);
        for p in strays(&self.dir) {
            if !targets.contains(&p) {
                targets.push(p);
            }
        }
        let signal = |sig: i32| {
            for &pid in &targets {
                // SAFETY: kill only sends signals, to the replica's group
                // (its session) and to it.
                unsafe {
                    libc::kill(-(pid as i32), sig);
                    libc::kill(pid as i32, sig);
                }
            }
        };
        signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while targets.iter().any(|p| alive(*p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        signal(libc::SIGKILL);
    }

    /// `vagus ARGS` on `host` (gpusim's state and devices; none for the
    /// brain and the gateway), its output in `log`.
    pub fn command(
        &self,
        args: &[String],
        log: &str,
        host: Option<&Host>,
    ) -> Result<Command, String> {
        let mut c = Command::new(&self.vagus);
        c.args(args)
            .env_remove("GPUSIM_CONFIG")
            .stdin(Stdio::null());
        if let Some(h) = host {
            c.env("GPUSIM_STATE", &h.state)
                .env("GPUSIM_DEVICES", h.gpus.to_string());
        }
        if let Some(lib) = &self.gpusim {
            c.env("LD_LIBRARY_PATH", lib);
        }
        let path = self.dir.join(log);
        let out = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        c.stdout(out).stderr(err);
        Ok(c)
    }

    /// Starts `vagus ARGS` (see [`Cluster::command`]) with `env` added.
    pub fn spawn(
        &mut self,
        args: &[String],
        log: &str,
        host: Option<&Host>,
        env: &[(&str, String)],
    ) -> Result<u32, String> {
        let mut c = self.command(args, log, host)?;
        for (k, v) in env {
            c.env(k, v);
        }
        let child = c.spawn().map_err(|e| {
            format!(
                "cannot start {} {}: {e}",
                self.vagus.display(),
                args.join(" ")
            )
        })?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// A replica's pid, to stop with the cluster.
    pub fn adopt(&mut self, pid: u32) {
        if !self.replicas.contains(&pid) {
            self.replicas.push(pid);
        }
    }

    /// Certificates, the tokens file and the brain with `core` (its TOML
    /// configuration) and `extra` flags, its API on `http` (port 0: any
    /// free one); waits for the API to answer.
    pub async fn start_brain(
        &mut self,
        agents: &[String],
        core: &str,
        http: std::net::SocketAddr,
        extra: &[String],
    ) -> Result<Brain, String> {
        let certs = self.dir.join("certs");
        vagus_link::certs::init(&certs, "brain", agents).map_err(|e| e.to_string())?;
        let tokens = self.dir.join("tokens.toml");
        std::fs::write(
            &tokens,
            format!(
                "[[token]]\nname = \"local\"\nrole = \"admin\"\ntoken = \"{TOKEN}\"\n\n\
                 [[token]]\nname = \"watcher\"\nrole = \"viewer\"\ntoken = \"{VIEWER_TOKEN}\"\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        let core_path = self.dir.join("core.toml");
        std::fs::write(&core_path, core).map_err(|e| e.to_string())?;
        let quic = format!("127.0.0.1:{}", free_udp_port()?);
        let mut http = http;
        if http.port() == 0 {
            http = std::net::TcpListener::bind(http)
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("no free port on {}: {e}", http.ip()))?;
        }
        let (http, shown) = (
            http.to_string(),
            match http.ip().is_unspecified() {
                true => std::net::SocketAddr::from(([127, 0, 0, 1], http.port())),
                false => http,
            },
        );
        let s = |x: &Path| x.display().to_string();
        let mut args: Vec<String> = [
            "brain",
            "--quic",
            &quic,
            "--certs",
            &s(&certs),
            "--http",
            &http,
            "--tokens",
            &s(&tokens),
            "--config",
            &s(&core_path),
            "--stats-every",
            "0",
        ]
        .map(String::from)
        .to_vec();
        args.extend_from_slice(extra);
        self.spawn(&args, "brain.log", None, &[])?;
        let url = format!("http://{shown}");
        healthy(
            &self.http,
            &[format!("{url}/healthz")],
            Duration::from_secs(30),
        )
        .await
        .map_err(|e| format!("{e} (see {})", self.dir.join("brain.log").display()))?;
        Ok(Brain { url, quic, certs })
    }

    /// The agent of node `node` on `host`, connected to `brain`, its
    /// segments and state in the cluster's directory; waits for the node
    /// to join.
    pub async fn start_agent(
        &mut self,
        brain: &Brain,
        node: &str,
        host: &Host,
        extra: &[String],
    ) -> Result<(), String> {
        let home = self.dir.join(node);
        let segments = home.join("segments");
        std::fs::create_dir_all(&segments).map_err(|e| e.to_string())?;
        let s = |x: &Path| x.display().to_string();
        let mut args: Vec<String> = [
            "agent",
            "--node",
            node,
            "--brain",
            &brain.quic,
            "--certs",
            &s(&brain.certs),
            "--segments",
            &s(&segments),
            "--no-bpf",
            "--shim",
            &s(&self.shim),
            "--state-dir",
            &s(&home.join("state")),
        ]
        .map(String::from)
        .to_vec();
        args.extend_from_slice(extra);
        self.spawn(&args, &format!("agent-{node}.log"), Some(host), &[])?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = get_json(&self.http, &format!("{}/v1/nodes?limit=1000", brain.url)).await;
            if v.is_ok_and(|v| {
                v["items"]
                    .as_array()
                    .is_some_and(|ns| ns.iter().any(|n| n["name"] == node))
            }) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{node} never joined the brain (see {})",
                    self.dir.join(format!("agent-{node}.log")).display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The gateway on a port of its own, routing by `brain`'s weights and
    /// reporting to it; its URL once it answers.
    pub async fn start_gateway(&mut self, brain: &Brain) -> Result<String, String> {
        let token = self.dir.join("gateway.token");
        std::fs::write(&token, TOKEN).map_err(|e| e.to_string())?;
        let listen = format!("127.0.0.1:{}", free_port()?);
        let args: Vec<String> = [
            "gateway",
            "--listen",
            &listen,
            "--brain",
            &brain.url,
            "--token-file",
            &token.display().to_string(),
            "--refresh-ms",
            "200",
            "--report-ms",
            "250",
        ]
        .map(String::from)
        .to_vec();
        self.spawn(&args, "gateway.log", None, &[])?;
        let url = format!("http://{listen}");
        healthy(
            &self.http,
            &[format!("{url}/metrics")],
            Duration::from_secs(30),
        )
        .await?;
        Ok(url)
    }

    /// Places `profile` through the brain's API; the decision.
    pub async fn place(&self, brain: &Brain, profile: &Value) -> Result<Value, String> {
        let (st, body) = call(
            &self.http,
            "POST",
            &format!("{}/v1/placements", brain.url),
            Some(profile),
        )
        .await?;
        if st != 201 {
            return Err(format!("placing {}: {st} {body}", profile["name"]));
        }
        Ok(serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// Waits until placement `id`'s replica has a pid (adopted, to stop
    /// with the cluster); the placement as the API shows it.
    pub async fn replica(
        &mut self,
        brain: &Brain,
        id: &str,
        within: Duration,
    ) -> Result<Value, String> {
        let deadline = Instant::now() + within;
        loop {
            let v = get_json(&self.http, &format!("{}/v1/placements/{id}", brain.url)).await?;
            if let Some(pid) = v["replica"]["pid"].as_u64() {
                self.adopt(pid as u32);
                return Ok(v);
            }
            if Instant::now() > deadline {
                return Err(format!("{id}'s replica never started: {v}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Adopts the replicas of every placement the brain lists now (those
    /// the loop added: scaled copies, shadows).
    pub async fn adopt_replicas(&mut self, brain: &Brain) {
        let Ok(v) = get_json(
            &self.http,
            &format!("{}/v1/placements?limit=1000", brain.url),
        )
        .await
        else {
            return;
        };
        for w in v["items"].as_array().into_iter().flatten() {
            if let Some(pid) = w["replica"]["pid"].as_u64() {
                self.adopt(pid as u32);
            }
        }
    }
}

/// Whether `pid` runs (a zombie does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    })
}

/// Processes other than this one whose environment names `dir`.
fn strays(dir: &Path) -> Vec<u32> {
    // `DIR/`: not a directory whose name only begins the same.
    let needle = format!("{}/", dir.display());
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && alive(pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| String::from_utf8_lossy(&env).contains(&needle))
        })
        .collect()
}

/// A launch spec for a `vagus serve` replica on `port` (for a profile's
/// `launch`; its `--listen` names `{port}`, so that a shadow or a copy the
/// brain starts on another port listens there).
pub fn serve_launch(vagus: &Path, port: u16, model: &str, model_gb: f64, extra: &[&str]) -> Value {
    let mut args = vec![
        "serve".to_string(),
        "--listen".into(),
        "127.0.0.1:{port}".into(),
        "--model".into(),
        model.into(),
        "--model-gb".into(),
        model_gb.to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    json!({"command": vagus.display().to_string(), "args": args, "port": port})
}

/// The sum of family `name`'s samples whose labels include `labels` in a
/// Prometheus text page (`None`: the page does not parse, or has none).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let (_, families) = nom_openmetrics::parser::prometheus(text).ok()?;
    let found: Vec<f64> = families
        .iter()
        .flat_map(|f| f.samples.iter())
        .filter(|s| s.name() == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels().iter().any(|l| l.name == *k && l.value == *v))
        })
        .map(|s| s.number())
        .collect();
    (!found.is_empty()).then(|| found.iter().sum())
}

/// What the brain's `/metrics` says of `name` with `labels`.
pub async fn brain_metric(
    http: &Http,
    brain: &Brain,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    let (_, text) = call(http, "GET", &format!("{}/metrics", brain.url), None)
        .await
        .ok()?;
    metric(&text, name, labels)
}
