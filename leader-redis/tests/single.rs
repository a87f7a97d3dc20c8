//! RedisStore on one private redis-server: key layout, tokens, failures
//! (server down at startup, crash, hang, restart), notifications, garbage
//! replies, wrong credentials and replica acknowledgement.

mod support;

use std::time::Duration;

use leader_core::{
    Acquire, ErrorKind, FencingToken, HolderId, Lease, LeaseEvent, LeaseKey, LeaseStore,
};
use leader_redis::{RedisConfig, RedisStore};
use leader_testkit::servers::RedisServer;
use leader_testkit::wait::eventually;
use redis::AsyncCommands;
use support::raw;
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(30);

fn key(resource: &str) -> LeaseKey {
    LeaseKey::new(&format!("test:{:016x}:", rand::random::<u64>()), resource).expect("valid key")
}

fn holder(name: &str) -> HolderId {
    HolderId::new(name).expect("valid holder")
}

async fn acquired(store: &RedisStore, key: &LeaseKey, who: &HolderId, ttl: Duration) -> Lease {
    match store.acquire(key, who, ttl).await.expect("acquire") {
        Acquire::Acquired(lease) => lease,
        Acquire::Held(info) => panic!("expected to acquire, held by {info:?}"),
    }
}

/// A server the test may kill: always private (never LEADER_TEST_REDIS_URL).
async fn owned_server() -> RedisServer {
    RedisServer::start()
        .await
        .expect("start a private redis-server")
}

#[tokio::test]
async fn operators_see_the_holder_and_tokens_never_repeat() {
    let redis = RedisServer::from_env_or_start()
        .await
        .expect("redis server");
    let store = RedisStore::from_url(redis.url()).expect("store");
    let mut c = raw(redis.url()).await;
    let k = key("honua-server");
    let layout = store.layout(&k);
    let (a, b) = (holder("instance-a"), holder("instance-b"));

    let first = acquired(&store, &k, &a, TTL).await;
    let holder_seen: String = c.get(k.as_str()).await.expect("GET");
    assert_eq!(
        holder_seen, "instance-a",
        "redis-cli GET <key> shows the holder"
    );
    let counter: u64 = c.get(&layout.counter).await.expect("GET counter");
    assert_eq!(counter, first.token.0);
    let pttl: i64 = c.pttl(k.as_str()).await.expect("PTTL");
    assert!(
        pttl > 0 && pttl <= 30_000,
        "lease key expires in ms: {pttl}"
    );

    // Someone else is told who holds it, with its token and remaining time.
    match store.acquire(&k, &b, TTL).await.expect("acquire b") {
        Acquire::Held(info) => {
            assert_eq!(info.holder, a);
            assert_eq!(info.token, first.token);
            let left = info.remaining.expect("a TTL");
            assert!(left > Duration::ZERO && left <= TTL, "{left:?}");
        }
        other => panic!("b must not acquire: {other:?}"),
    }

    // Re-acquiring one's own lease is a new term with a new token; the old
    // term can neither renew nor release.
    let second = acquired(&store, &k, &a, TTL).await;
    assert!(second.token > first.token);
    let err = store.renew(&first).await.expect_err("stale term");
    assert_eq!(err.kind(), ErrorKind::NotHolder);
    assert!(!store.release(&first).await.expect("release stale"));
    store.renew(&second).await.expect("renew current term");
    assert!(store.release(&second).await.expect("release"));
    let gone: Option<String> = c.get(k.as_str()).await.expect("GET");
    assert_eq!(gone, None);
    let term_exists: bool = c.exists(&layout.term).await.expect("EXISTS");
    assert!(!term_exists, "release removes the term record");

    // Expiry: the key disappears on the server's clock; the counter stays.
    let short = acquired(&store, &k, &b, Duration::from_millis(100)).await;
    assert!(short.token > second.token);
    eventually(
        Duration::from_secs(10),
        "the short lease to expire",
        || async {
            store
                .current(&k)
                .await
                .expect("current")
                .is_none()
                .then_some(())
        },
    )
    .await;
    let after_expiry = acquired(&store, &k, &a, TTL).await;
    assert!(
        after_expiry.token > short.token,
        "tokens never repeat after expiry"
    );
    let err = store.renew(&short).await.expect_err("expired");
    assert_eq!(err.kind(), ErrorKind::NotHolder);

    // Force release removes the lease, not the counter.
    let removed = store
        .force_release(&k)
        .await
        .expect("force release")
        .expect("was held");
    assert_eq!(
        (removed.holder, removed.token),
        (a.clone(), after_expiry.token)
    );
    assert_eq!(store.current(&k).await.expect("current"), None);
    let counter: u64 = c.get(&layout.counter).await.expect("GET counter");
    assert_eq!(counter, after_expiry.token.0);
    let next = acquired(&store, &k, &b, TTL).await;
    assert!(next.token > after_expiry.token);
    assert_eq!(
        store
            .force_release(&key("never-held"))
            .await
            .expect("force release"),
        None
    );
}

#[tokio::test]
async fn a_holder_written_by_hand_is_reported_with_token_zero() {
    let redis = RedisServer::from_env_or_start()
        .await
        .expect("redis server");
    let store = RedisStore::from_url(redis.url()).expect("store");
    let mut c = raw(redis.url()).await;
    let k = key("legacy");
    // The original C# service (or an operator) wrote the key with SET NX EX.
    let _: () = redis::cmd("SET")
        .arg(k.as_str())
        .arg("legacy-instance")
        .arg("EX")
        .arg(30)
        .query_async(&mut c)
        .await
        .expect("SET");
    let info = store.current(&k).await.expect("current").expect("held");
    assert_eq!(info.holder, holder("legacy-instance"));
    assert_eq!(info.token, FencingToken(0));
    match store
        .acquire(&k, &holder("new"), TTL)
        .await
        .expect("acquire")
    {
        Acquire::Held(info) => assert_eq!(info.holder, holder("legacy-instance")),
        other => panic!("must not take a live legacy lease: {other:?}"),
    }
}

#[tokio::test]
async fn scripts_are_reloaded_after_script_flush() {
    let redis = owned_server().await;
    let store = RedisStore::from_url(redis.url()).expect("store");
    let mut c = raw(redis.url()).await;
    let k = key("noscript");
    let lease = acquired(&store, &k, &holder("a"), TTL).await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut c)
        .await
        .expect("flush");
    store.renew(&lease).await.expect("renew after NOSCRIPT");
    assert!(store.release(&lease).await.expect("release after NOSCRIPT"));
}

#[tokio::test]
async fn foreign_values_under_our_keys_are_protocol_errors() {
    let redis = RedisServer::from_env_or_start()
        .await
        .expect("redis server");
    let store = RedisStore::from_url(redis.url()).expect("store");
    let mut c = raw(redis.url()).await;
    let k = key("tampered");
    let layout = store.layout(&k);
    let _: () = c.set(&layout.counter, "not-a-number").await.expect("SET");
    let err = store
        .acquire(&k, &holder("a"), TTL)
        .await
        .expect_err("INCR on text");
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert_eq!(
        store.current(&k).await.expect("current"),
        None,
        "nothing was written"
    );
}

#[tokio::test]
async fn building_never_connects_and_the_store_recovers_after_restart() {
    let redis = owned_server().await;
    redis.kill().await.expect("kill");
    let store = RedisStore::new(
        RedisConfig::from_url(redis.url())
            .expect("valid URL")
            .with_connect_timeout(Duration::from_millis(500)),
    )
    .expect("building with Redis down must not fail");
    let k = key("startup");
    let a = holder("a");
    let err = store.acquire(&k, &a, TTL).await.expect_err("redis is down");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");

    redis.restart().await.expect("restart");
    let lease = eventually(Duration::from_secs(10), "acquire after restart", || async {
        match store.acquire(&k, &a, TTL).await {
            Ok(Acquire::Acquired(lease)) => Some(lease),
            _ => None,
        }
    })
    .await;

    // A crash with a connection open: the first command fails without a
    // known outcome or as unavailable, never as success or NotHolder.
    redis.kill().await.expect("kill");
    let err = store.renew(&lease).await.expect_err("redis crashed");
    assert!(err.is_retryable(), "{err}");
    let err = store.renew(&lease).await.expect_err("redis still down");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");

    // The restarted server (no persistence) lost the lease: renew says so.
    redis.restart().await.expect("restart");
    let err = eventually(Duration::from_secs(10), "a reply after restart", || async {
        match store.renew(&lease).await {
            Err(e) if e.kind() == ErrorKind::NotHolder => Some(e),
            Ok(()) => panic!("renewed a lease the restarted server does not have"),
            Err(_) => None,
        }
    })
    .await;
    assert_eq!(err.kind(), ErrorKind::NotHolder);
    // The counter was lost with the data; tokens still increase because
    // they are floored by the server clock.
    let again = acquired(&store, &k, &a, TTL).await;
    assert!(
        again.token > lease.token,
        "{:?} after {:?}",
        again.token,
        lease.token
    );
}

#[tokio::test]
async fn a_hung_server_makes_operations_indeterminate_within_the_response_timeout() {
    let redis = owned_server().await;
    let response_timeout = Duration::from_millis(300);
    let store = RedisStore::new(
        RedisConfig::from_url(redis.url())
            .expect("valid URL")
            .with_request_timeout(response_timeout)
            .with_connect_timeout(Duration::from_millis(300)),
    )
    .expect("store");
    let k = key("hung");
    let lease = acquired(&store, &k, &holder("a"), TTL).await;
    redis.pause().expect("SIGSTOP");
    let started = Instant::now();
    let err = store.renew(&lease).await.expect_err("server hung");
    let took = started.elapsed();
    redis.resume().expect("SIGCONT");
    assert_eq!(err.kind(), ErrorKind::Indeterminate, "{err}");
    assert!(took >= response_timeout, "gave up early: {took:?}");
    assert!(
        took < response_timeout * 10,
        "hung past the timeout: {took:?}"
    );
    eventually(Duration::from_secs(10), "renew after resume", || async {
        store.renew(&lease).await.ok()
    })
    .await;
}

#[tokio::test]
async fn release_and_force_release_notify_watchers_and_a_dead_subscription_ends() {
    let redis = owned_server().await;
    let store = RedisStore::new(
        RedisConfig::from_url(redis.url())
            .expect("valid URL")
            .with_watch_heartbeat(Duration::from_millis(100))
            .with_request_timeout(Duration::from_millis(300)),
    )
    .expect("store");
    let k = key("watched");
    let mut events = store.watch(&k).await.expect("watch");
    let lease = acquired(&store, &k, &holder("a"), TTL).await;
    assert!(store.release(&lease).await.expect("release"));
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv()).await;
    assert_eq!(event.expect("event in time"), Some(LeaseEvent::Vacated));

    acquired(&store, &k, &holder("b"), TTL).await;
    store.force_release(&k).await.expect("force release");
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv()).await;
    assert_eq!(event.expect("event in time"), Some(LeaseEvent::Vacated));

    // A stale release changes nothing and publishes nothing.
    assert!(!store.release(&lease).await.expect("stale release"));

    // A hung server: the heartbeat ping fails and the subscription ends.
    redis.pause().expect("SIGSTOP");
    let end = tokio::time::timeout(Duration::from_secs(10), events.recv()).await;
    redis.resume().expect("SIGCONT");
    assert_eq!(end.expect("subscription must end"), None);

    // A crash: a new subscription ends when the connection drops.
    let mut events = store.watch(&k).await.expect("watch again");
    redis.kill().await.expect("kill");
    let end = tokio::time::timeout(Duration::from_secs(10), events.recv()).await;
    assert_eq!(end.expect("subscription must end"), None);
    let err = store.watch(&k).await.expect_err("redis down");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
}

#[tokio::test]
async fn wrong_credentials_are_auth_errors_without_the_password() {
    let server = RedisServer::start_with(&["--requirepass", "right-pass"])
        .await
        .expect("redis with a password");
    let k = key("auth");
    let wrong = RedisStore::from_url(&format!(
        "127.0.0.1:{},password=wrong-pass",
        server.addr().port()
    ))
    .expect("store");
    let err = wrong
        .acquire(&k, &holder("a"), TTL)
        .await
        .expect_err("wrong password");
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("wrong-pass"), "{shown}");
    let right = RedisStore::from_url(&format!(
        "redis://:right-pass@127.0.0.1:{}",
        server.addr().port()
    ))
    .expect("store");
    acquired(&right, &k, &holder("a"), TTL).await;
}

#[tokio::test]
async fn wait_replicas_fails_and_releases_when_too_few_replicas_acknowledge() {
    let redis = owned_server().await;
    let store = RedisStore::new(
        RedisConfig::from_url(redis.url())
            .expect("valid URL")
            .with_wait_replicas(1, Duration::from_millis(100)),
    )
    .expect("store");
    let k = key("wait");
    let err = store
        .acquire(&k, &holder("a"), TTL)
        .await
        .expect_err("no replica");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("0 of 1 replicas"), "{err}");
    assert_eq!(store.current(&k).await.expect("current"), None, "released");
}

/// A fake server speaking just enough RESP to complete the handshake, then
/// answering each command with `reply(command name)`.
async fn fake_server(reply: fn(&str) -> &'static [u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some((name, used)) = parse_command(&buf) {
                        buf.drain(..used);
                        if sock.write_all(reply(&name)).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

/// Parses one RESP array of bulk strings; returns the command name and the
/// bytes used, or `None` if incomplete.
fn parse_command(buf: &[u8]) -> Option<(String, usize)> {
    fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let end = buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
        Some((&buf[at..end], end + 2))
    }
    let (head, mut at) = line(buf, 0)?;
    let n: usize = std::str::from_utf8(head.strip_prefix(b"*")?)
        .ok()?
        .parse()
        .ok()?;
    let mut name = String::new();
    for i in 0..n {
        let (len, next) = line(buf, at)?;
        let len: usize = std::str::from_utf8(len.strip_prefix(b"$")?)
            .ok()?
            .parse()
            .ok()?;
        if buf.len() < next + len + 2 {
            return None;
        }
        if i == 0 {
            name = String::from_utf8_lossy(&buf[next..next + len]).to_ascii_uppercase();
        }
        at = next + len + 2;
    }
    Some((name, at))
}

#[tokio::test]
async fn garbage_replies_are_protocol_errors() {
    let k = key("garbage");
    // A well-formed but wrong reply to the script.
    let port = fake_server(|_| b"+OK\r\n").await;
    let store = RedisStore::from_url(&format!("127.0.0.1:{port}")).expect("store");
    let err = store
        .acquire(&k, &holder("a"), TTL)
        .await
        .expect_err("+OK is not a lease");
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    let err = store.current(&k).await.expect_err("+OK is not a holder");
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");

    // Bytes that are not RESP at all.
    let port = fake_server(|name| match name {
        "EVALSHA" | "EVAL" => b"?garbage\r\n",
        _ => b"+OK\r\n",
    })
    .await;
    let store = RedisStore::from_url(&format!("127.0.0.1:{port}")).expect("store");
    let err = store
        .acquire(&k, &holder("a"), TTL)
        .await
        .expect_err("garbage");
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
}

#[tokio::test]
async fn network_faults_map_to_unavailable_or_indeterminate() {
    use leader_testkit::proxy::{FaultProxy, Mode};
    let redis = RedisServer::from_env_or_start()
        .await
        .expect("redis server");
    let proxy = FaultProxy::start(redis.addr()).await.expect("proxy");
    let store = RedisStore::new(
        RedisConfig::from_url(&format!("redis://{}", proxy.addr()))
            .expect("valid URL")
            .with_request_timeout(Duration::from_millis(300))
            .with_connect_timeout(Duration::from_millis(300)),
    )
    .expect("store");
    let k = key("faults");
    let lease = acquired(&store, &k, &holder("a"), TTL).await;

    // A partition: the command is sent and nothing comes back.
    proxy.set_mode(Mode::Blackhole);
    let err = store.renew(&lease).await.expect_err("blackholed");
    assert_eq!(err.kind(), ErrorKind::Indeterminate, "{err}");
    // The hung connection was dropped; a new one cannot complete its
    // handshake, so nothing is sent: unavailable.
    let err = store.renew(&lease).await.expect_err("still blackholed");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");

    // Connection reset while a command is in flight: outcome unknown.
    proxy.set_mode(Mode::PassThrough);
    eventually(
        Duration::from_secs(10),
        "renew after the partition heals",
        || async { store.renew(&lease).await.ok() },
    )
    .await;
    proxy.set_mode(Mode::Blackhole);
    let renew = store.renew(&lease);
    tokio::pin!(renew);
    assert!(futures::poll!(renew.as_mut()).is_pending());
    proxy.set_mode(Mode::Reset);
    let err = renew.await.expect_err("reset mid-command");
    assert_eq!(err.kind(), ErrorKind::Indeterminate, "{err}");

    // Refused connections: nothing was sent.
    proxy.set_mode(Mode::Refuse);
    let addr = proxy.addr();
    eventually(
        Duration::from_secs(10),
        "the proxy to refuse connections",
        || async move {
            tokio::net::TcpStream::connect(addr)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    let err = store.current(&k).await.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    proxy.set_mode(Mode::PassThrough);
    eventually(Duration::from_secs(10), "recovery", || async {
        store.renew(&lease).await.ok()
    })
    .await;
}

#[tokio::test]
async fn acl_users_and_databases_from_the_url_are_used() {
    let server = owned_server().await;
    let admin = format!("redis://127.0.0.1:{}", server.addr().port());
    let mut c = raw(&admin).await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("app")
        .arg("on")
        .arg(">app-pass")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query_async(&mut c)
        .await
        .expect("ACL SETUSER app");
    // A user that may read but not run scripts.
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("reader")
        .arg("on")
        .arg(">reader-pass")
        .arg("~*")
        .arg("+@read")
        .arg("+ping")
        .arg("+client")
        .arg("+hello")
        .query_async(&mut c)
        .await
        .expect("ACL SETUSER reader");

    let k = key("acl");
    let store = RedisStore::from_url(&format!(
        "redis://app:app-pass@127.0.0.1:{}/3",
        server.addr().port()
    ))
    .expect("store");
    acquired(&store, &k, &holder("a"), TTL).await;
    let mut db3 = raw(&format!("{admin}/3")).await;
    let seen: Option<String> = db3.get(k.as_str()).await.expect("GET in db 3");
    assert_eq!(seen.as_deref(), Some("a"), "the URL's database is used");
    let seen: Option<String> = c.get(k.as_str()).await.expect("GET in db 0");
    assert_eq!(seen, None);

    let reader = RedisStore::from_url(&format!(
        "127.0.0.1:{},user=reader,password=reader-pass",
        server.addr().port()
    ))
    .expect("store");
    let err = reader
        .acquire(&key("acl"), &holder("a"), TTL)
        .await
        .expect_err("no EVALSHA");
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    let wrong = RedisStore::from_url(&format!(
        "redis://app:nope@127.0.0.1:{}",
        server.addr().port()
    ))
    .expect("store");
    let err = wrong.current(&k).await.expect_err("wrong password");
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    assert!(!format!("{err} {err:?}").contains("nope"));
}

#[tokio::test]
async fn a_call_cancelled_by_the_caller_does_not_leave_a_hung_connection_in_use() {
    use leader_testkit::proxy::{FaultProxy, Mode};
    let redis = RedisServer::from_env_or_start()
        .await
        .expect("redis server");
    let proxy = FaultProxy::start(redis.addr()).await.expect("proxy");
    // A response timeout far longer than the caller's own timeout, as when
    // an elector wraps each call in a shorter deadline.
    let store = RedisStore::new(
        RedisConfig::from_url(&format!("redis://{}", proxy.addr()))
            .expect("valid URL")
            .with_request_timeout(Duration::from_secs(30))
            .with_connect_timeout(Duration::from_millis(300)),
    )
    .expect("store");
    let k = key("cancelled");
    let lease = acquired(&store, &k, &holder("a"), TTL).await;
    proxy.set_mode(Mode::Blackhole);
    let cancelled = tokio::time::timeout(Duration::from_millis(200), store.renew(&lease)).await;
    assert!(cancelled.is_err(), "the caller gave up");
    // Refuse new connections while the old one would flow again: reusing
    // the abandoned connection would succeed; replacing it must not.
    proxy.set_mode(Mode::Refuse);
    let addr = proxy.addr();
    eventually(
        Duration::from_secs(10),
        "the proxy to refuse connections",
        || async move {
            tokio::net::TcpStream::connect(addr)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    let err = store
        .renew(&lease)
        .await
        .expect_err("must reconnect, and be refused");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    proxy.set_mode(Mode::PassThrough);
    eventually(
        Duration::from_secs(10),
        "renew on a new connection",
        || async { store.renew(&lease).await.ok() },
    )
    .await;
}
