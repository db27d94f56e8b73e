//! Address flags (`--brain`, `--quic`, `--http`, `--metrics-addr`):
//! `HOST:PORT`, the host an IP address (`10.0.0.5`, `[::1]`) or a name
//! (`localhost`, `brain.example`), resolved when the command starts.

use anyhow::{Result, anyhow, bail};
use std::net::{SocketAddr, ToSocketAddrs};

/// `value`, given to `flag`, as a socket address: an IP address as it is; a
/// host name resolved, to its first IPv4 address if it has one (where a
/// brain listens on `0.0.0.0` by default), else to its first. Errors name
/// the flag and the value.
pub fn resolve(flag: &str, value: &str) -> Result<SocketAddr> {
    if let Ok(a) = value.parse::<SocketAddr>() {
        return Ok(a);
    }
    let expected =
        || anyhow!("{flag} {value}: expected HOST:PORT (e.g. brain.example:7443 or 10.0.0.5:7443)");
    let (host, port) = value.rsplit_once(':').ok_or_else(expected)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(expected());
    }
    let Ok(port) = port.parse::<u16>() else {
        bail!("{flag} {value}: the port {port:?} is not a number from 0 to 65535");
    };
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| anyhow!("{flag} {value}: cannot resolve the host name: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| anyhow!("{flag} {value}: the host name resolves to no address"))
}

/// How messages name an address given as `value`: as given, with what a
/// host name resolved to (`localhost:7443 (127.0.0.1:7443)`).
pub fn shown(value: &str, addr: SocketAddr) -> String {
    if value.parse::<SocketAddr>() == Ok(addr) {
        addr.to_string()
    } else {
        format!("{value} ({addr})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_host_names() {
        let a = resolve("--brain", "10.0.0.5:7443").unwrap();
        assert_eq!(a, "10.0.0.5:7443".parse().unwrap());
        assert_eq!(shown("10.0.0.5:7443", a), "10.0.0.5:7443");
        let v6 = resolve("--brain", "[::1]:7443").unwrap();
        assert_eq!(v6, "[::1]:7443".parse().unwrap());
        let l = resolve("--http", "localhost:8080").unwrap();
        assert!(l.ip().is_loopback() && l.port() == 8080, "{l}");
        assert!(shown("localhost:8080", l).starts_with("localhost:8080 ("));
        for (bad, want) in [
            ("localhost", "--brain localhost: expected HOST:PORT"),
            (":7443", "--brain :7443: expected HOST:PORT"),
            (
                "localhost:http",
                "--brain localhost:http: the port \"http\"",
            ),
            ("localhost:70000", "the port \"70000\" is not a number"),
            (
                "nosuchhost.invalid:7443",
                "--brain nosuchhost.invalid:7443: cannot resolve the host name: ",
            ),
        ] {
            let e = resolve("--brain", bad).unwrap_err().to_string();
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
    }
}
