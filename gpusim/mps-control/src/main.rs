//! `gpusim-mps-control`: a double of `nvidia-cuda-mps-control` for gpusim.
//!
//! - `gpusim-mps-control -d` starts the control daemon in the background,
//!   `-f` in the foreground.
//! - Without flags it reads commands from standard input, one per line, sends
//!   each to the daemon and prints the reply, as `nvidia-cuda-mps-control` does:
//!   `get_server_list`, `start_server -uid UID`, `shutdown_server PID [-f]`,
//!   `get_client_list PID`, `get_default_active_thread_percentage`,
//!   `set_default_active_thread_percentage PCT`,
//!   `get_active_thread_percentage PID`,
//!   `set_active_thread_percentage PID PCT`, `quit`.
//!
//! A percentage set on a server or as the default applies to clients created
//! afterwards; running clients keep the share they started with. Protocol and
//! client side: `gpusim::mps`.

use gpusim::mps::{self, CLIENT_CONNECT, MpsError, format_percent, parse_percent};
use gpusim::state::pid_alive;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("-d") => start_background(),
        Some("-f") => match Daemon::default().run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gpusim-mps-control: {e}");
                ExitCode::FAILURE
            }
        },
        Some("--server") => {
            // A stand-in MPS server process: it exists so that it has a PID;
            // the control daemon ends it.
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        Some("-h" | "--help") => {
            println!("usage: gpusim-mps-control [-d | -f]   (commands on standard input)");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("gpusim-mps-control: unknown option {other:?} (expected -d or -f)");
            ExitCode::from(2)
        }
        None => command_mode(),
    }
}

fn command_mode() -> ExitCode {
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        match mps::request(&line) {
            Ok(reply) => reply.iter().for_each(|l| println!("{l}")),
            Err(MpsError::NoDaemon) => {
                println!("Cannot find MPS control daemon process");
                return ExitCode::FAILURE;
            }
            // Like nvidia-cuda-mps-control, a failed command prints why and
            // the tool still exits 0.
            Err(e) => println!("{e}"),
        }
    }
    ExitCode::SUCCESS
}

fn start_background() -> ExitCode {
    let sock = mps::control_socket();
    if UnixStream::connect(&sock).is_ok() {
        eprintln!("An instance of this daemon is already running");
        return ExitCode::FAILURE;
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("gpusim-mps-control: cannot find own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut cmd = Command::new(exe);
    cmd.arg("-f")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe; it detaches the daemon from our session.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    if let Err(e) = cmd.spawn() {
        eprintln!("gpusim-mps-control: cannot start the daemon: {e}");
        return ExitCode::FAILURE;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if UnixStream::connect(&sock).is_ok() {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "gpusim-mps-control: the daemon did not come up at {}",
        sock.display()
    );
    ExitCode::FAILURE
}

struct Server {
    uid: u32,
    child: Child,
    percent: f64,
    clients: Vec<u32>,
}

struct Daemon {
    default_percent: f64,
    servers: BTreeMap<u32, Server>,
}

impl Default for Daemon {
    fn default() -> Self {
        Daemon {
            default_percent: 100.0,
            servers: BTreeMap::new(),
        }
    }
}

impl Daemon {
    fn run(mut self) -> std::io::Result<()> {
        let dir = mps::pipe_directory();
        std::fs::create_dir_all(&dir)?;
        let sock = mps::control_socket();
        if UnixStream::connect(&sock).is_ok() {
            return Err(std::io::Error::other(
                "An instance of this daemon is already running",
            ));
        }
        let _ = std::fs::remove_file(&sock);
        let listener = UnixListener::bind(&sock)?;
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut line = String::new();
            if BufReader::new(&conn).read_line(&mut line).is_err() {
                continue;
            }
            let (reply, quit) = match self.handle(line.trim()) {
                Ok(r) => (r, line.trim() == "quit"),
                Err(e) => (vec![format!("ERROR: {e}")], false),
            };
            for l in reply {
                let _ = writeln!(conn, "{l}");
            }
            drop(conn);
            if quit {
                break;
            }
        }
        for (_, mut s) in std::mem::take(&mut self.servers) {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
        let _ = std::fs::remove_file(&sock);
        Ok(())
    }

    fn start_server(&mut self, uid: u32) -> Result<u32, String> {
        if let Some((pid, _)) = self.servers.iter().find(|(_, s)| s.uid == uid) {
            return Ok(*pid);
        }
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let child = Command::new(exe)
            .arg("--server")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start an MPS server: {e}"))?;
        let pid = child.id();
        self.servers.insert(
            pid,
            Server {
                uid,
                child,
                percent: self.default_percent,
                clients: Vec::new(),
            },
        );
        Ok(pid)
    }

    fn server(&mut self, pid: &str) -> Result<&mut Server, String> {
        let p: u32 = pid
            .parse()
            .map_err(|_| format!("invalid server PID {pid:?}"))?;
        self.servers
            .get_mut(&p)
            .ok_or_else(|| format!("Server {p} not found"))
    }

    fn handle(&mut self, line: &str) -> Result<Vec<String>, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let arg = |i: usize| {
            words
                .get(i)
                .copied()
                .ok_or_else(|| format!("{}: missing argument", words[0]))
        };
        match words.first().copied().unwrap_or("") {
            "get_server_list" => Ok(self.servers.keys().map(|p| p.to_string()).collect()),
            "start_server" => {
                let uid = match (words.get(1), words.get(2)) {
                    (Some(&"-uid"), Some(u)) => {
                        u.parse().map_err(|_| format!("invalid uid {u:?}"))?
                    }
                    _ => return Err("usage: start_server -uid UID".into()),
                };
                self.start_server(uid).map(|_| Vec::new())
            }
            "shutdown_server" => {
                let pid: u32 = arg(1)?
                    .parse()
                    .map_err(|_| format!("invalid server PID {:?}", words[1]))?;
                let mut s = self
                    .servers
                    .remove(&pid)
                    .ok_or_else(|| format!("Server {pid} not found"))?;
                let _ = s.child.kill();
                let _ = s.child.wait();
                Ok(Vec::new())
            }
            "get_client_list" => {
                let s = self.server(arg(1)?)?;
                s.clients.retain(|&c| pid_alive(c));
                Ok(s.clients.iter().map(|c| c.to_string()).collect())
            }
            "get_default_active_thread_percentage" => {
                Ok(vec![format_percent(self.default_percent)])
            }
            "set_default_active_thread_percentage" => {
                self.default_percent = parse_percent(arg(1)?)?;
                Ok(vec![format_percent(self.default_percent)])
            }
            "get_active_thread_percentage" => {
                Ok(vec![format_percent(self.server(arg(1)?)?.percent)])
            }
            "set_active_thread_percentage" => {
                let pct = parse_percent(arg(2)?)?;
                let s = self.server(arg(1)?)?;
                s.percent = pct;
                Ok(vec![format_percent(pct)])
            }
            "quit" => Ok(Vec::new()),
            CLIENT_CONNECT => {
                let pid: u32 = arg(1)?.parse().map_err(|_| "bad client pid".to_string())?;
                let uid: u32 = arg(2)?.parse().map_err(|_| "bad client uid".to_string())?;
                let env = match arg(3)? {
                    "-" => None,
                    p => Some(parse_percent(p)?),
                };
                let server = self.start_server(uid)?;
                let s = self.servers.get_mut(&server).expect("just started");
                s.clients.retain(|&c| pid_alive(c) && c != pid);
                s.clients.push(pid);
                let pct = env.map_or(s.percent, |e| e.min(s.percent));
                Ok(vec![format!("{server} {pct}")])
            }
            other => Err(format!("Unrecognized command {other:?}")),
        }
    }
}
