use std::net::TcpListener;
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{wait_for, Error, Result};

/// How long [`http_get`] and [`http_request`] wait for a whole exchange.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// A TCP port on 127.0.0.1 that nothing listens on right now.
///
/// Taken at random below the kernel's ephemeral range (read from
/// `/proc/sys/net/ipv4/ip_local_port_range`) where possible: a broker or a
/// database that is restarted on its port must find it still free, and a
/// port in the ephemeral range can meanwhile become the local end of some
/// outgoing connection (even a client's own reconnect attempt to that very
/// port, which then connects to itself). Falls back to a kernel-chosen port
/// when 200 tries find nothing. The port is not reserved: whoever binds it
/// first gets it. Fails only if no port can be bound at all.
pub fn free_port() -> Result<u16> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if ephemeral_low > 11_000 {
        for _ in 0..200 {
            let port = rand::rng().random_range(10_000..ephemeral_low);
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").map_err(Error::io("binding a free port"))?;
    let port = listener
        .local_addr()
        .map_err(Error::io("reading the bound port"))?
        .port();
    Ok(port)
}

/// Waits until something accepts TCP connections on `addr`
/// (`host:port`), trying every 50 ms; fails with [`Error::Timeout`] after
/// `timeout`. Only connects, sends nothing: safe to repeat.
pub async fn wait_for_port(addr: &str, timeout: Duration) -> Result<()> {
    wait_for(
        &format!("{addr} to accept connections"),
        timeout,
        || async { Ok(TcpStream::connect(addr).await.ok().map(drop)) },
    )
    .await
}

/// `GET http://ADDR/PATH` (HTTP/1.0, so the answer is never chunked and
/// the server closes the connection): the status code and the body.
///
/// `addr` is `host:port`; `path` starts with `/`. Fails when nothing
/// answers, when the answer is not HTTP ([`Error::Http`]), or after
/// [`HTTP_TIMEOUT`]. A GET changes nothing, so it is safe to retry.
pub async fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    http_request(addr, "GET", path, None).await
}

/// `METHOD http://ADDR/PATH` with an optional JSON body (HTTP/1.0): the
/// status code and the body.
///
/// Fails like [`http_get`]. Whether a retry is safe depends on what the
/// endpoint does: after a timeout the request may have been handled.
pub async fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    json_body: Option<&str>,
) -> Result<(u16, String)> {
    let what = format!("{method} http://{addr}{path}");
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
        if let Some(body) = json_body {
            request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ));
        } else {
            request.push_str("\r\n");
        }
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .map_err(|_| Error::Timeout {
            what: format!("the answer to {what}"),
            after: HTTP_TIMEOUT,
            log: None,
        })?
        .map_err(Error::io(what))?;
    parse_response(addr, &response)
}

fn parse_response(addr: &str, response: &str) -> Result<(u16, String)> {
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::Http {
            addr: addr.to_owned(),
            response: response.chars().take(200).collect(),
        })?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable() {
        let port = free_port().unwrap();
        assert!(TcpListener::bind(("127.0.0.1", port)).is_ok());
    }

    #[test]
    fn parses_status_and_body() {
        let r = "HTTP/1.0 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nnope";
        assert_eq!(parse_response("a", r).unwrap(), (503, "nope".to_owned()));
        assert!(parse_response("a", "garbage").is_err());
    }

    #[tokio::test]
    async fn waits_for_a_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        wait_for_port(&addr, Duration::from_secs(5)).await.unwrap();
        drop(listener);
        let closed = wait_for_port(&addr, Duration::from_millis(100)).await;
        assert!(matches!(closed, Err(Error::Timeout { .. })), "{closed:?}");
    }

    #[tokio::test]
    async fn get_against_a_tiny_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.0 200 OK\r\n\r\nok").await.unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        assert_eq!(
            http_get(&addr, "/healthz").await.unwrap(),
            (200, "ok".into())
        );
        assert!(server
            .await
            .unwrap()
            .starts_with("GET /healthz HTTP/1.0\r\n"));
    }
}
