//! Shared test plumbing: where the built binaries are, a private gpusim per
//! test (its own state file and MPS pipe directory), and C clients compiled
//! on demand.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

/// target/debug (or whichever profile built this test binary).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/..")
        .to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let p = target_dir().join(name);
    assert!(
        p.is_file(),
        "{} is not built: run `cargo build --workspace` before the tests",
        p.display()
    );
    p
}

/// `vagus gpusim libdir`, once.
pub fn libdir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new(bin("vagus"))
            .args(["gpusim", "libdir"])
            .output()
            .expect("run vagus gpusim libdir");
        assert!(
            out.status.success(),
            "vagus gpusim libdir: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
    .clone()
}

/// Compiles tests/clients/NAME.c once (loading libcuda with dlopen) and
/// returns the executable.
pub fn c_client(name: &str) -> PathBuf {
    compile_client(name, &["-ldl"])
}

/// Compiles tests/clients/NAME.c linked directly against gpusim's libcuda.
pub fn c_client_linked(name: &str) -> PathBuf {
    let lib = format!("-L{}", libdir().display());
    compile_client(name, &[&lib, "-lcuda", "-lpthread"])
}

fn compile_client(name: &str, link: &[&str]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join(format!("{name}.c"));
    let out = target_dir().join(format!("test-client-{name}"));
    let fresh = out.metadata().and_then(|m| m.modified()).ok()
        > src.metadata().and_then(|m| m.modified()).ok();
    if !fresh {
        let tmp = out.with_extension(format!("tmp{}", std::process::id()));
        let st = Command::new("cc")
            .arg("-O1")
            .arg("-o")
            .arg(&tmp)
            .arg(&src)
            .args(link)
            .status()
            .expect("run cc");
        assert!(st.success(), "compiling {} failed", src.display());
        std::fs::rename(&tmp, &out).unwrap();
    }
    out
}

/// A private simulated host: its own state file and MPS pipe directory.
pub struct Sim {
    pub dir: PathBuf,
    daemon: bool,
    /// GPUs it simulates (`GPUSIM_DEVICES`); gpusim's default when `None`.
    devices: Option<u32>,
}

impl Sim {
    pub fn new(tag: &str) -> Sim {
        let dir = std::env::temp_dir().join(format!("vagus-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("mps")).unwrap();
        Sim {
            dir,
            daemon: false,
            devices: None,
        }
    }

    /// A host with `n` GPUs (every command run on it sees them).
    pub fn with_devices(mut self, n: u32) -> Sim {
        self.devices = Some(n);
        self
    }

    pub fn state(&self) -> PathBuf {
        self.dir.join("gpusim.state")
    }

    /// This simulated host's device state, as gpusim's processes share it.
    pub fn device_state(&self) -> gpusim::state::SharedState {
        let path = self.state();
        let cfg = gpusim::SimConfig::from_lookup(|k| {
            (k == "GPUSIM_STATE").then(|| path.display().to_string())
        })
        .expect("state path configuration");
        gpusim::state::SharedState::open(&cfg).expect("open gpusim state")
    }

    /// A command that runs against this simulated host.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("LD_LIBRARY_PATH", libdir())
            .env("GPUSIM_STATE", self.state())
            .env("CUDA_MPS_PIPE_DIRECTORY", self.dir.join("mps"))
            // Each simulated host's agent keeps its own command journal.
            .env("VAGUS_AGENT_STATE_DIR", self.dir.join("agent-state"))
            .env_remove("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")
            .env_remove("GPUSIM_CONFIG");
        match self.devices {
            Some(n) => c.env("GPUSIM_DEVICES", n.to_string()),
            None => c.env_remove("GPUSIM_DEVICES"),
        };
        c
    }

    pub fn vagus(&self, args: &[&str]) -> Command {
        let mut c = self.cmd(bin("vagus"));
        c.args(args);
        c
    }

    /// Starts `vagus load --json` with `args` in the background.
    pub fn spawn_load(&self, args: &[&str], extra_env: &[(&str, &str)]) -> Child {
        let mut c = self.vagus(&["load", "--json"]);
        c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        for (k, v) in extra_env {
            c.env(k, v);
        }
        c.spawn().expect("spawn vagus load")
    }

    /// Runs `vagus load --json` and returns its report.
    pub fn load(&self, args: &[&str], extra_env: &[(&str, &str)]) -> serde_json::Value {
        report(self.spawn_load(args, extra_env).wait_with_output().unwrap())
    }

    /// Sends commands to the MPS control double; returns (stdout, success).
    pub fn mps_control(&self, input: &str) -> (String, bool) {
        let out = run_with_stdin(self.cmd(bin("gpusim-mps-control")), input);
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            out.status.success(),
        )
    }

    /// A daemon something else (the agent) started: stopped on drop too.
    pub fn adopt_mps_daemon(&mut self) {
        self.daemon = true;
    }

    pub fn start_mps_daemon(&mut self) {
        let st = self
            .cmd(bin("gpusim-mps-control"))
            .arg("-d")
            .status()
            .unwrap();
        assert!(st.success(), "gpusim-mps-control -d failed");
        self.daemon = true;
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if self.daemon {
            let _ = self.mps_control("quit\n");
        }
        self.kill_leftovers();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Sim {
    /// SIGKILLs every process still running on this simulated host (its
    /// environment names this sim's state file): a replica an agent started
    /// that the test did not reap must not outlive the test.
    fn kill_leftovers(&self) {
        let mine = format!("GPUSIM_STATE={}", self.state().display());
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in procs.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if pid == std::process::id() as i32 {
                continue;
            }
            let Ok(env) = std::fs::read(e.path().join("environ")) else {
                continue;
            };
            if env.split(|&b| b == 0).any(|v| v == mine.as_bytes()) {
                // SAFETY: kill only sends a signal.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// A command's JSON output (a `vagus load --json` report, …), failing with
/// its stderr unless it exited 0.
pub fn report(out: Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "the command failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

pub fn f(v: &serde_json::Value, path: &str) -> f64 {
    path.split('.')
        .fold(v, |v, k| &v[k])
        .as_f64()
        .unwrap_or_else(|| panic!("no number at {path} in {v}"))
}

/// Runs `cmd` with `input` on its standard input and collects its output.
pub fn run_with_stdin(mut cmd: Command, input: &str) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `vagus load` flags for one kernel per request of 4224 blocks of 256
/// threads: 4 waves on 132 SMs, 8 on 66.
pub const fn multi_wave<'a>(qps: &'a str, duration: &'a str, cycles: &'a str) -> [&'a str; 10] {
    [
        "--qps",
        qps,
        "--duration",
        duration,
        "--kernels",
        "1",
        "--grid",
        "4224",
        "--work-cycles",
        cycles,
    ]
}

/// `vagus load` arguments for best effort that keeps the GPU full: `qps`
/// requests a second for `duration`, each four whole-GPU kernels of ~1 ms
/// (2,000,000 cycles at 1,980 MHz) on one of four streams.
pub const fn four_streams<'a>(qps: &'a str, duration: &'a str) -> [&'a str; 12] {
    [
        "--qps",
        qps,
        "--concurrency",
        "4",
        "--duration",
        duration,
        "--kernels",
        "4",
        "--grid",
        "1056",
        "--work-cycles",
        "2000000",
    ]
}

/// `vagus certs init` for the brain and `agent` (comma-separated names)
/// into `<sim>/certs`.
pub fn certs_init(sim: &Sim, agent: &str) -> PathBuf {
    let certs = sim.dir.join("certs");
    let out = sim
        .vagus(&[
            "certs",
            "init",
            "--dir",
            certs.to_str().unwrap(),
            "--agents",
            agent,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    certs
}

/// A brain process and the JSON lines it prints.
pub struct BrainProc {
    pub child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<serde_json::Value>,
}

pub fn start_brain(sim: &Sim, addr: &str, certs: &std::path::Path) -> BrainProc {
    let ledger = sim.dir.join("ledger.sqlite");
    start_brain_with(
        sim,
        &[
            "--quic",
            addr,
            "--certs",
            certs.to_str().unwrap(),
            "--ledger",
            ledger.to_str().unwrap(),
            "--log-windows",
        ],
    )
}

/// `vagus brain ARGS…`, its JSON lines read in the background.
pub fn start_brain_with(sim: &Sim, args: &[&str]) -> BrainProc {
    let mut all = vec!["brain"];
    all.extend_from_slice(args);
    spawn_brain(sim.vagus(&all))
}

/// A `vagus brain` command started, its JSON lines read in the background.
pub fn spawn_brain(mut cmd: Command) -> BrainProc {
    let mut child = cmd
        .stdin(Stdio::piped())
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
    let stdin = child.stdin.take().unwrap();
    BrainProc {
        child,
        stdin,
        lines,
    }
}

/// A child process killed (and reaped) when dropped, so that a test that
/// passes or panics leaves nothing running to load the next ones.
pub struct Owned(pub Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for BrainProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl BrainProc {
    pub fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// The next event matching `f` within `timeout`.
    pub fn wait_for(
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

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A tokens file in the sim's directory giving `token` the admin role;
/// its path.
pub fn admin_tokens(sim: &Sim, token: &str) -> String {
    let p = sim.dir.join("tokens.toml");
    std::fs::write(
        &p,
        format!("[[token]]\nname = \"ci\"\nrole = \"admin\"\ntoken = \"{token}\"\n"),
    )
    .unwrap();
    p.to_str().unwrap().to_string()
}

/// `shared/data/NAME`: beside the checkout or above it (`../shared/data/`),
/// else where this workplace keeps it.
pub fn shared_data(name: &str) -> PathBuf {
    let rel = format!("shared/data/{name}");
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|a| a.join(&rel))
        .chain([PathBuf::from("/work").join(&rel)])
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{rel} is not beside the checkout nor in /work"))
}

/// `GET path` at `addr` without credentials: the status and the body
/// (`None`: nothing answered).
pub fn get(addr: impl std::net::ToSocketAddrs, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Runs `promtool check metrics` on `text` (required under CI).
pub fn promtool_check(text: &str) {
    let required = std::env::var("VAGUS_REQUIRE_PROMTOOL").is_ok_and(|v| v == "1");
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if !required => {
            eprintln!("skipping the promtool check: {e}");
            return;
        }
        Err(e) => panic!("VAGUS_REQUIRE_PROMTOOL=1 but promtool does not run: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
