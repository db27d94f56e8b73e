//! A PostgreSQL server of the test's own: Debian's `postgresql` (initdb,
//! pg_ctl), listening only on a Unix socket in a temporary directory (or,
//! with TLS, on localhost's TCP), stopped and removed when dropped. As root, its programs run as the
//! `postgres` user (initdb refuses root).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Server {
    dir: PathBuf,
    bin: PathBuf,
    /// Settings a client connects with (`key=value`).
    pub url: String,
}

/// The newest PostgreSQL's programs under /usr/lib/postgresql.
fn bindir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

fn root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// One of the server's programs (as `postgres` when we are root).
fn command(bin: &Path, program: &str, args: &[&str]) -> Command {
    let exe = bin.join(program);
    let mut c = if root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    c.args(args);
    c
}

/// Runs it; a failure fails the test with what it printed.
fn run(bin: &Path, program: &str, args: &[&str]) {
    let out = command(bin, program, args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh server, or `None` (said on stderr) where PostgreSQL is not
/// installed, unless VAGUS_REQUIRE_POSTGRES=1 (as CI sets) makes that a
/// failure.
pub fn server(tag: &str) -> Option<Server> {
    start(tag, None)
}

/// A fresh server with TLS on (`cert_pem`, `key_pem`: its certificate for
/// localhost and key), on a free TCP port of localhost; its `url` names no
/// sslmode.
pub fn server_tls(tag: &str, cert_pem: &str, key_pem: &str) -> Option<Server> {
    start(tag, Some((cert_pem, key_pem)))
}

fn start(tag: &str, tls: Option<(&str, &str)>) -> Option<Server> {
    let Some(bin) = bindir() else {
        assert!(
            std::env::var("VAGUS_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "PostgreSQL is not installed (/usr/lib/postgresql/*/bin/initdb): .ci/setup installs it"
        );
        eprintln!("skipped: PostgreSQL is not installed (.ci/setup installs it)");
        return None;
    };
    let dir = std::env::temp_dir().join(format!("vagus-pg-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    if let Some((c, k)) = tls {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&cert, c).unwrap();
        std::fs::write(&key, k).unwrap();
        // The server refuses a key others may read.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    if root() {
        let st = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success(), "chown postgres {}", dir.display());
    }
    let data = dir.join("data");
    let (d, s) = (data.to_str().unwrap(), dir.to_str().unwrap());
    run(
        &bin,
        "initdb",
        &[
            "-D",
            d,
            "-A",
            "trust",
            "-U",
            "vagus",
            "-E",
            "UTF8",
            "--no-sync",
        ],
    );
    let mut opts = format!("-k {s} -c fsync=on -c synchronous_commit=on");
    let url = match tls {
        None => {
            opts += " -c listen_addresses=";
            format!("host={s} user=vagus dbname=postgres")
        }
        Some(_) => {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            opts += &format!(
                " -c listen_addresses=127.0.0.1 -p {port} -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert.display(),
                key.display()
            );
            format!("host=localhost hostaddr=127.0.0.1 port={port} user=vagus dbname=postgres")
        }
    };
    let log = dir.join("log");
    run(
        &bin,
        "pg_ctl",
        &[
            "-D",
            d,
            "-o",
            &opts,
            "-l",
            log.to_str().unwrap(),
            "-w",
            "start",
        ],
    );
    Some(Server { url, dir, bin })
}

impl Server {
    /// A client on the test's own thread (outside any Tokio runtime).
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = command(
            &self.bin,
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"],
        )
        .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
