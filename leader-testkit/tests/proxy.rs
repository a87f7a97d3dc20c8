//! Every fault proxy mode, against a tiny echo server.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use leader_testkit::proxy::{FaultProxy, Mode};
use leader_testkit::wait::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long "nothing arrives" is watched for. Only a broken mode can make
/// a negative check fail, so a short window is not a flaky bound.
const SILENCE: Duration = Duration::from_millis(300);
/// Bound on anything that must happen (loaded CI).
const WITHIN: Duration = Duration::from_secs(10);

/// An echo server; returns its address.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = listener.local_addr().expect("echo addr");
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = sock.read(&mut buf).await {
                    if n == 0 || sock.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn roundtrip(conn: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    conn.write_all(msg).await?;
    let mut buf = vec![0u8; msg.len()];
    conn.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn connected(proxy: &FaultProxy) -> TcpStream {
    TcpStream::connect(proxy.addr())
        .await
        .expect("connect to proxy")
}

#[tokio::test]
async fn pass_through_forwards_both_ways_and_propagates_close() {
    let proxy = FaultProxy::start(echo_server().await).await.expect("proxy");
    assert_eq!(proxy.mode(), Mode::PassThrough);
    let mut conn = connected(&proxy).await;
    assert_eq!(
        roundtrip(&mut conn, b"hello").await.expect("echo"),
        b"hello"
    );
    let big = vec![7u8; 1 << 20];
    assert_eq!(roundtrip(&mut conn, &big).await.expect("1 MiB echo"), big);
    eventually(WITHIN, "one open connection", async || {
        proxy.open_connections() == 1
    })
    .await;
    conn.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    let eof = tokio::time::timeout(WITHIN, conn.read_to_end(&mut rest)).await;
    assert!(
        matches!(eof, Ok(Ok(0))),
        "the server's FIN comes back: {eof:?}"
    );
    eventually(WITHIN, "no open connection after the close", async || {
        proxy.open_connections() == 0
    })
    .await;
}

#[tokio::test]
async fn latency_delays_each_direction_and_keeps_order() {
    let proxy = FaultProxy::start(echo_server().await).await.expect("proxy");
    let mut conn = connected(&proxy).await;
    roundtrip(&mut conn, b"warm").await.expect("echo");
    let fixed = Duration::from_millis(150);
    proxy.set_mode(Mode::Latency {
        fixed,
        jitter: Duration::ZERO,
    });
    let started = Instant::now();
    roundtrip(&mut conn, b"slow").await.expect("echo");
    let rtt = started.elapsed();
    assert!(
        rtt >= 2 * fixed,
        "a round trip crosses the delay twice: {rtt:?}"
    );
    assert!(rtt < WITHIN, "{rtt:?}");

    proxy.set_mode(Mode::Latency {
        fixed: Duration::ZERO,
        jitter: Duration::from_millis(20),
    });
    let msgs: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 3]).collect();
    for m in &msgs {
        conn.write_all(m).await.expect("write");
    }
    let mut all = vec![0u8; 150];
    conn.read_exact(&mut all).await.expect("read");
    assert_eq!(all, msgs.concat(), "jitter never reorders bytes");

    proxy.set_mode(Mode::PassThrough);
    assert_eq!(roundtrip(&mut conn, b"fast").await.expect("echo"), b"fast");
}

#[tokio::test]
async fn blackhole_holds_open_and_new_connections_then_heals() {
    let proxy = FaultProxy::start(echo_server().await).await.expect("proxy");
    let mut old = connected(&proxy).await;
    roundtrip(&mut old, b"before").await.expect("echo");

    proxy.set_mode(Mode::Blackhole);
    old.write_all(b"lost?").await.expect("writes are accepted");
    let mut buf = [0u8; 5];
    let silent = tokio::time::timeout(SILENCE, old.read_exact(&mut buf)).await;
    assert!(
        silent.is_err(),
        "nothing flows on an open connection: {silent:?}"
    );

    let mut new = tokio::time::timeout(WITHIN, TcpStream::connect(proxy.addr()))
        .await
        .expect("connect does not hang")
        .expect("a blackhole still accepts");
    new.write_all(b"held!").await.expect("write");
    let silent = tokio::time::timeout(SILENCE, new.read_exact(&mut buf)).await;
    assert!(
        silent.is_err(),
        "nothing flows on a new connection: {silent:?}"
    );

    proxy.set_mode(Mode::PassThrough);
    tokio::time::timeout(WITHIN, old.read_exact(&mut buf))
        .await
        .expect("healed")
        .expect("read");
    assert_eq!(
        &buf, b"lost?",
        "held bytes flow on after the partition heals"
    );
    tokio::time::timeout(WITHIN, new.read_exact(&mut buf))
        .await
        .expect("healed")
        .expect("read");
    assert_eq!(&buf, b"held!");
}

#[tokio::test]
async fn reset_resets_open_connections_and_new_ones_while_set() {
    let proxy = FaultProxy::start(echo_server().await).await.expect("proxy");
    let mut old = connected(&proxy).await;
    roundtrip(&mut old, b"ok").await.expect("echo");

    proxy.set_mode(Mode::Reset);
    let mut buf = [0u8; 8];
    let read = tokio::time::timeout(WITHIN, old.read(&mut buf))
        .await
        .expect("no hang");
    assert_eq!(
        read.map_err(|e| e.kind()).err(),
        Some(ErrorKind::ConnectionReset)
    );

    let mut new = connected(&proxy).await;
    let read = tokio::time::timeout(WITHIN, new.read(&mut buf))
        .await
        .expect("no hang");
    assert_eq!(
        read.map_err(|e| e.kind()).err(),
        Some(ErrorKind::ConnectionReset)
    );

    proxy.set_mode(Mode::PassThrough);
    let mut again = connected(&proxy).await;
    assert_eq!(roundtrip(&mut again, b"back").await.expect("echo"), b"back");
}

#[tokio::test]
async fn a_reset_is_not_missed_when_the_mode_changes_back_at_once() {
    let proxy = FaultProxy::start(echo_server().await).await.expect("proxy");
    let mut old = connected(&proxy).await;
    roundtrip(&mut old, b"ok").await.expect("echo");
    proxy.set_mode(Mode::Reset);
    proxy.set_mode(Mode::PassThrough);
    let mut buf = [0u8; 8];
    let read = tokio::time::timeout(WITHIN, old.read(&mut buf))
        .await
        .expect("no hang");
    assert_eq!(
        read.map_err(|e| e.kind()).err(),
        Some(ErrorKind::ConnectionReset)
    );
}

#[tokio::test]
async fn refuse_refuses_new_connections_and_keeps_open_ones() {
    let proxy = FaultProxy::start(echo_server().await).await.expect("proxy");
    let mut old = connected(&proxy).await;
    proxy.set_mode(Mode::Refuse);
    eventually(WITHIN, "new connections to be refused", async || {
        matches!(
            TcpStream::connect(proxy.addr()).await,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused
        )
    })
    .await;
    assert_eq!(roundtrip(&mut old, b"still").await.expect("echo"), b"still");

    proxy.set_mode(Mode::PassThrough);
    eventually(WITHIN, "the same address to accept again", async || {
        TcpStream::connect(proxy.addr()).await.is_ok()
    })
    .await;
    let mut again = connected(&proxy).await;
    assert_eq!(roundtrip(&mut again, b"back").await.expect("echo"), b"back");
}

#[tokio::test]
async fn a_down_upstream_resets_the_client() {
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    };
    let proxy = FaultProxy::start(dead).await.expect("proxy");
    let mut conn = connected(&proxy).await;
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(WITHIN, conn.read(&mut buf))
        .await
        .expect("no hang");
    assert_eq!(
        read.map_err(|e| e.kind()).err(),
        Some(ErrorKind::ConnectionReset)
    );
}

#[tokio::test]
async fn dropping_the_proxy_closes_everything() {
    let proxy = FaultProxy::start(echo_server().await).await.expect("proxy");
    let addr = proxy.addr();
    let mut conn = connected(&proxy).await;
    roundtrip(&mut conn, b"ok").await.expect("echo");
    drop(proxy);
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(WITHIN, conn.read(&mut buf))
        .await
        .expect("no hang");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    eventually(
        WITHIN,
        "the dropped proxy's address to refuse",
        async || TcpStream::connect(addr).await.is_err(),
    )
    .await;
}

#[tokio::test]
async fn partition_holds_the_client_and_lets_the_server_time_out() {
    // An echo server that reports when a connection ends on its side.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream = listener.local_addr().expect("addr");
    let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let ended_tx = ended_tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                loop {
                    match sock.read(&mut buf).await {
                        Ok(n) if n > 0 && sock.write_all(&buf[..n]).await.is_ok() => {}
                        _ => break,
                    }
                }
                let _ = ended_tx.send(Instant::now());
            });
        }
    });
    let proxy = FaultProxy::start(upstream).await.expect("proxy");
    let mut conn = connected(&proxy).await;
    roundtrip(&mut conn, b"ok").await.expect("echo");

    let timeout = Duration::from_millis(200);
    let cut = Instant::now();
    proxy.set_mode(Mode::Partition {
        upstream_timeout: timeout,
    });
    let server_saw_end = tokio::time::timeout(WITHIN, ended.recv())
        .await
        .expect("the server side is closed")
        .expect("ended");
    assert!(
        server_saw_end - cut >= timeout,
        "closed after {:?}",
        server_saw_end - cut
    );
    conn.write_all(b"x").await.expect("writes are accepted");
    let mut buf = [0u8; 1];
    let silent = tokio::time::timeout(SILENCE, conn.read(&mut buf)).await;
    assert!(
        silent.is_err(),
        "the client hears nothing during the partition: {silent:?}"
    );

    proxy.set_mode(Mode::PassThrough);
    let read = tokio::time::timeout(WITHIN, conn.read(&mut buf))
        .await
        .expect("no hang");
    assert_eq!(
        read.map_err(|e| e.kind()).err(),
        Some(ErrorKind::ConnectionReset),
        "healed onto a forgotten connection"
    );
    let mut fresh = connected(&proxy).await;
    assert_eq!(roundtrip(&mut fresh, b"new").await.expect("echo"), b"new");
}
