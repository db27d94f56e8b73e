//! The MPS control protocol, as gpusim models it.
//!
//! `gpusim-mps-control -d` runs a control daemon that listens on the socket
//! `$CUDA_MPS_PIPE_DIRECTORY/control` (default `/tmp/nvidia-mps`). The command
//! form (`echo get_server_list | gpusim-mps-control`) sends each line of its
//! standard input to the daemon and prints the reply, as
//! `nvidia-cuda-mps-control` does. gpusim's driver library is a client of the
//! same daemon: when a process creates its first context it asks the daemon
//! for a server and is told the active thread percentage it runs with. As with
//! real MPS, that percentage is fixed for the life of the client: changing a
//! server's or the default percentage affects only clients created afterwards.
//!
//! Wire format: one request line per connection, a reply of zero or more
//! lines, then the daemon closes the connection. A reply line starting with
//! `ERROR: ` reports a failed command.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_PIPE_DIRECTORY: &str = "/tmp/nvidia-mps";
/// Internal request a driver client sends when it creates its first context.
pub const CLIENT_CONNECT: &str = "gpusim_client_connect";

/// `$CUDA_MPS_PIPE_DIRECTORY`, or the default.
pub fn pipe_directory() -> PathBuf {
    std::env::var_os("CUDA_MPS_PIPE_DIRECTORY")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PIPE_DIRECTORY))
}

pub fn control_socket() -> PathBuf {
    pipe_directory().join("control")
}

#[derive(Debug, thiserror::Error)]
pub enum MpsError {
    #[error("Cannot find MPS control daemon process")]
    NoDaemon,
    #[error("MPS control daemon at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Command(String),
}

/// Sends one command line to the daemon and returns its reply lines.
pub fn request(line: &str) -> Result<Vec<String>, MpsError> {
    let path = control_socket();
    let mut s = UnixStream::connect(&path).map_err(|_| MpsError::NoDaemon)?;
    let io = |source| MpsError::Io {
        path: path.clone(),
        source,
    };
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    s.write_all(line.trim().as_bytes()).map_err(io)?;
    s.write_all(b"\n").map_err(io)?;
    s.shutdown(std::net::Shutdown::Write).map_err(io)?;
    let mut out = Vec::new();
    for l in BufReader::new(s).lines() {
        let l = l.map_err(io)?;
        if let Some(e) = l.strip_prefix("ERROR: ") {
            return Err(MpsError::Command(e.to_string()));
        }
        out.push(l);
    }
    Ok(out)
}

/// The MPS attachment of a driver client.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClientGrant {
    pub server_pid: u32,
    /// Active thread percentage, 0–100.
    pub percent: f64,
}

/// Called by the driver when a process creates its first context: `None`
/// when no control daemon runs (the process is not an MPS client).
/// `env_percent` is the client's own `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`,
/// which can only lower the server's.
pub fn connect_client(
    pid: u32,
    uid: u32,
    env_percent: Option<f64>,
) -> Option<Result<ClientGrant, MpsError>> {
    if !control_socket().exists() {
        return None;
    }
    let env = env_percent
        .map(|p| p.to_string())
        .unwrap_or_else(|| "-".into());
    match request(&format!("{CLIENT_CONNECT} {pid} {uid} {env}")) {
        Err(MpsError::NoDaemon) => None,
        Err(e) => Some(Err(e)),
        Ok(lines) => {
            let parsed = lines.first().and_then(|l| {
                let mut it = l.split_whitespace();
                Some(ClientGrant {
                    server_pid: it.next()?.parse().ok()?,
                    percent: it.next()?.parse().ok()?,
                })
            });
            Some(
                parsed
                    .ok_or_else(|| MpsError::Command(format!("malformed daemon reply {lines:?}"))),
            )
        }
    }
}

/// Parses an active thread percentage as MPS accepts it: a number in (0, 100].
pub fn parse_percent(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 100.0 => Ok(p),
        _ => Err(format!(
            "invalid active thread percentage {s:?}: expected a number in (0, 100]"
        )),
    }
}

/// SMs are granted in texture processing clusters of this many.
pub const SMS_PER_TPC: u32 = 2;

/// SMs a client with `percent` may use out of `sms`: whole TPCs, rounded
/// down, at least one. This is what an H100 with driver 580.159 reported
/// under MPS: 50% → 66, 25% → 32, 10% → 12 of 132 SMs.
pub fn sms_for_percent(sms: u32, percent: f64) -> u32 {
    let tpcs = (sms / SMS_PER_TPC) as f64 * percent / 100.0;
    ((tpcs + 1e-9).floor() as u32 * SMS_PER_TPC).clamp(SMS_PER_TPC.min(sms), sms)
}

/// How MPS prints a percentage.
pub fn format_percent(p: f64) -> String {
    format!("{p:.1}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_rules() {
        // Measured on an H100 (132 SMs) with driver 580.159.04.
        assert_eq!(sms_for_percent(132, 50.0), 66);
        assert_eq!(sms_for_percent(132, 25.0), 32);
        assert_eq!(sms_for_percent(132, 10.0), 12);
        assert_eq!(sms_for_percent(132, 100.0), 132);
        assert_eq!(sms_for_percent(132, 0.1), 2);
        assert_eq!(sms_for_percent(1, 50.0), 1);
        assert!(parse_percent("0").is_err());
        assert!(parse_percent("150").is_err());
        assert!(parse_percent("x").unwrap_err().contains("\"x\""));
        assert_eq!(format_percent(parse_percent("25").unwrap()), "25.0");
    }
}
