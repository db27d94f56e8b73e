//! The MPS control daemon's client: `nvidia-cuda-mps-control` (its path is
//! configurable; the tests use gpusim's double), one daemon per pipe
//! directory. Commands go to the tool's standard input, as operators type
//! them; answers come back on its standard output.
//!
//! MPS semantics the callers must keep in mind: a new active-thread
//! percentage applies to clients created afterwards, never to running ones
//! (the sub-second knob on a running process is the shim's budget).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum MpsError {
    #[error("cannot run {binary}: {source}")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("no MPS control daemon for {pipe_dir}")]
    NoDaemon { pipe_dir: String },
    #[error("{command:?} failed: {output}")]
    Failed { command: String, output: String },
    #[error("{command:?} answered {output:?}, not {what}")]
    Unexpected {
        command: String,
        output: String,
        what: &'static str,
    },
    #[error("percentage {0} is not in (0, 100]")]
    BadPercentage(f32),
}

/// One MPS control daemon (one pipe directory).
#[derive(Clone, Debug)]
pub struct MpsControl {
    pub binary: PathBuf,
    pub pipe_dir: PathBuf,
    /// `CUDA_MPS_LOG_DIRECTORY` for a daemon this client starts.
    pub log_dir: Option<PathBuf>,
}

/// What a daemon is running.
#[derive(Clone, Debug, PartialEq)]
pub struct MpsServer {
    pub pid: u32,
    pub percent: f32,
    pub clients: Vec<u32>,
}

impl MpsControl {
    fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.env("CUDA_MPS_PIPE_DIRECTORY", &self.pipe_dir);
        if let Some(log) = &self.log_dir {
            c.env("CUDA_MPS_LOG_DIRECTORY", log);
        }
        c
    }

    /// Runs one command and returns its output.
    pub fn run(&self, line: &str) -> Result<String, MpsError> {
        let spawn = |source| MpsError::Spawn {
            binary: self.binary.display().to_string(),
            source,
        };
        let mut child = self
            .command()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn)?;
        if let Some(mut stdin) = child.stdin.take() {
            writeln!(stdin, "{line}").map_err(spawn)?;
        }
        let out = child.wait_with_output().map_err(spawn)?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if text.contains("Cannot find MPS control daemon") {
            return Err(MpsError::NoDaemon {
                pipe_dir: self.pipe_dir.display().to_string(),
            });
        }
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(MpsError::Failed {
                command: line.to_string(),
                output: format!("{text} {err}").trim().to_string(),
            });
        }
        Ok(text)
    }

    /// Whether a daemon answers on this pipe directory.
    pub fn running(&self) -> bool {
        self.run("get_default_active_thread_percentage").is_ok()
    }

    /// Starts the daemon (`-d`) unless one answers already.
    pub fn ensure_daemon(&self) -> Result<(), MpsError> {
        if self.running() {
            return Ok(());
        }
        let _ = std::fs::create_dir_all(&self.pipe_dir);
        if let Some(log) = &self.log_dir {
            let _ = std::fs::create_dir_all(log);
        }
        let status = self
            .command()
            .arg("-d")
            .status()
            .map_err(|source| MpsError::Spawn {
                binary: self.binary.display().to_string(),
                source,
            })?;
        if !status.success() {
            return Err(MpsError::Failed {
                command: "-d".into(),
                output: format!("exit status {status}"),
            });
        }
        // The daemon answers once its pipe is up.
        for _ in 0..50 {
            if self.running() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Err(MpsError::NoDaemon {
            pipe_dir: self.pipe_dir.display().to_string(),
        })
    }

    fn percent(&self, line: &str) -> Result<f32, MpsError> {
        let out = self.run(line)?;
        out.parse().map_err(|_| MpsError::Unexpected {
            command: line.into(),
            output: out,
            what: "a percentage",
        })
    }

    fn pids(&self, line: &str) -> Result<Vec<u32>, MpsError> {
        let out = self.run(line)?;
        out.split_whitespace()
            .map(|w| {
                w.parse().map_err(|_| MpsError::Unexpected {
                    command: line.into(),
                    output: out.clone(),
                    what: "a list of PIDs",
                })
            })
            .collect()
    }

    pub fn default_percentage(&self) -> Result<f32, MpsError> {
        self.percent("get_default_active_thread_percentage")
    }

    /// Sets the percentage servers started from now on get.
    pub fn set_default_percentage(&self, pct: f32) -> Result<f32, MpsError> {
        check(pct)?;
        self.percent(&format!("set_default_active_thread_percentage {pct}"))
    }

    /// Sets a server's percentage, for its clients created from now on.
    pub fn set_server_percentage(&self, server: u32, pct: f32) -> Result<f32, MpsError> {
        check(pct)?;
        self.percent(&format!("set_active_thread_percentage {server} {pct}"))
    }

    pub fn servers(&self) -> Result<Vec<MpsServer>, MpsError> {
        self.pids("get_server_list")?
            .into_iter()
            .map(|pid| {
                Ok(MpsServer {
                    pid,
                    percent: self.percent(&format!("get_active_thread_percentage {pid}"))?,
                    clients: self.pids(&format!("get_client_list {pid}"))?,
                })
            })
            .collect()
    }

    /// Starts a server for `uid` (as `start_server -uid`).
    pub fn start_server(&self, uid: u32) -> Result<String, MpsError> {
        self.run(&format!("start_server -uid {uid}"))
    }

    /// Shuts a server down (its clients fail; drain them first).
    pub fn shutdown_server(&self, server: u32) -> Result<String, MpsError> {
        self.run(&format!("shutdown_server {server}"))
    }
}

fn check(pct: f32) -> Result<(), MpsError> {
    if pct > 0.0 && pct <= 100.0 {
        Ok(())
    } else {
        Err(MpsError::BadPercentage(pct))
    }
}
