//! Readiness probes over plain TCP: the server must really answer its
//! protocol, not just accept connections.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How each server kind proves it is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    /// RESP `PING` answered with `+PONG` (or `-NOAUTH` when a password is
    /// required).
    RedisPing,
    /// A startup message for user and database `postgres` answered with
    /// AuthenticationOk (trust auth), not "the database system is starting up".
    PostgresStartup,
    /// `GET /health` answered with `"health":"true"` (etcd has a leader).
    EtcdHealth,
}

/// One attempt at most this long, so a paused or half-started server cannot
/// hang the probe.
const ATTEMPT: Duration = Duration::from_secs(1);

impl Probe {
    /// One probe attempt: `true` when the server answered as a ready server.
    pub(crate) async fn check(self, addr: SocketAddr) -> bool {
        tokio::time::timeout(ATTEMPT, self.attempt(addr))
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or(false)
    }

    async fn attempt(self, addr: SocketAddr) -> std::io::Result<bool> {
        let mut stream = TcpStream::connect(addr).await?;
        match self {
            Probe::RedisPing => {
                stream.write_all(b"PING\r\n").await?;
                let mut buf = [0u8; 7];
                stream.read_exact(&mut buf).await?;
                // A server with a password answers NOAUTH: it is serving.
                Ok(&buf == b"+PONG\r\n" || &buf == b"-NOAUTH")
            }
            Probe::PostgresStartup => {
                let mut body = Vec::new();
                body.extend_from_slice(&196_608u32.to_be_bytes()); // protocol 3.0
                for part in ["user", "postgres", "database", "postgres"] {
                    body.extend_from_slice(part.as_bytes());
                    body.push(0);
                }
                body.push(0);
                let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
                msg.extend_from_slice(&body);
                stream.write_all(&msg).await?;
                let mut head = [0u8; 9];
                stream.read_exact(&mut head).await?;
                let ok = head[0] == b'R' && head[5..9] == [0, 0, 0, 0];
                // Terminate politely so the server logs no broken connection.
                let _ = stream.write_all(&[b'X', 0, 0, 0, 4]).await;
                Ok(ok)
            }
            Probe::EtcdHealth => {
                let body = http_exchange(stream, addr, "GET", "/health").await?;
                Ok(body.contains("\"health\":\"true\""))
            }
        }
    }
}

/// Sends one HTTP/1.0 request with an empty JSON body (HTTP/1.0: the answer
/// is never chunked) and returns the answer's text, headers included.
async fn http_exchange(
    mut stream: TcpStream,
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> std::io::Result<String> {
    let request =
        format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 2\r\n\r\n{{}}");
    stream.write_all(request.as_bytes()).await?;
    let mut body = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut body).await?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// What an etcd member says of itself and its cluster's leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EtcdStatus {
    /// This member's id.
    pub(crate) member: u64,
    /// The leader's member id as this member knows it (0: none).
    pub(crate) leader: u64,
}

/// Asks the etcd member at `addr` for its status through the v3 JSON
/// gateway (`POST /v3/maintenance/status`), within [`ATTEMPT`].
pub(crate) async fn etcd_status(addr: SocketAddr) -> Option<EtcdStatus> {
    let ask = async {
        let stream = TcpStream::connect(addr).await.ok()?;
        let answer = http_exchange(stream, addr, "POST", "/v3/maintenance/status")
            .await
            .ok()?;
        let (_, body) = answer.split_once("\r\n\r\n")?;
        let json: serde_json::Value = serde_json::from_str(body).ok()?;
        // The gateway writes 64-bit ids as decimal strings.
        let id = |v: &serde_json::Value| v.as_str()?.parse::<u64>().ok();
        Some(EtcdStatus {
            member: id(&json["header"]["member_id"])?,
            leader: json.get("leader").map_or(Some(0), id)?,
        })
    };
    tokio::time::timeout(ATTEMPT, ask).await.ok().flatten()
}
