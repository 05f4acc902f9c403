//! `outbox-relay healthcheck`: asks a running relay's `/healthz`, for a
//! container `HEALTHCHECK` or an exec probe in an image without curl or a
//! shell.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// How long the probe waits to connect, and then for the answer: above
/// the 2 s + 2 s `/healthz` may spend asking the database and the broker.
const PROBE_TIMEOUT: Duration = Duration::from_secs(6);

/// `GET /healthz` from the relay listening on `listen` (a wildcard address
/// is asked on loopback). Returns the body when it answered 200, else why
/// not.
pub fn probe(listen: SocketAddr) -> Result<String, String> {
    let addr = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), listen.port())
        }
        _ => listen,
    };
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)
        .map_err(|e| format!("cannot reach the relay at {addr}: {e}"))?;
    let _ = stream.set_read_timeout(Some(PROBE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(PROBE_TIMEOUT));
    stream
        .write_all(format!("GET /healthz HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .map_err(|e| format!("cannot ask the relay at {addr}: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("no answer from the relay at {addr}: {e}"))?;
    let status = response
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| format!("not an HTTP answer from {addr}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .trim()
        .to_owned();
    if status == "200" {
        Ok(body)
    } else {
        Err(format!("unhealthy ({status}): {body}"))
    }
}
