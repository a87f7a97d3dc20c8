//! Readiness probes over plain TCP: the server must really answer its
//! protocol, not just accept connections.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How each server kind proves it is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    /// RESP `PING` answered with `+PONG`.
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
                Ok(&buf == b"+PONG\r\n")
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
                let request =
                    format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
                stream.write_all(request.as_bytes()).await?;
                let mut body = Vec::new();
                stream.take(64 * 1024).read_to_end(&mut body).await?;
                let text = String::from_utf8_lossy(&body);
                Ok(text.contains("\"health\":\"true\""))
            }
        }
    }
}
