//! Just enough of an HTTP/1.1 client to POST JSON to an agent: one request
//! per connection (`Connection: close`), a deadline on the whole exchange.

use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{Error, Result};

/// POSTs `body` as JSON to `base` + `path`; returns the status and body.
pub(crate) async fn post_json(
    base: &str,
    path: &str,
    body: &impl Serialize,
    timeout: Duration,
) -> Result<(u16, Vec<u8>)> {
    let fail = |reason: String| Error::Agent {
        url: base.to_owned(),
        reason,
    };
    let addr = base
        .strip_prefix("http://")
        .unwrap_or(base)
        .trim_end_matches('/');
    let body = serde_json::to_vec(body).map_err(|e| fail(e.to_string()))?;
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| fail(format!("{path}: no response within {timeout:?}")))?
        .map_err(|e| fail(format!("{path}: {e}")))?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| fail(format!("{path}: malformed response")))?;
    let head = String::from_utf8_lossy(&response[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| fail(format!("{path}: malformed status line")))?;
    Ok((status, response[split + 4..].to_vec()))
}
