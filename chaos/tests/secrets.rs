//! No secret given in a URL or config shows up anywhere a user or operator
//! can see it: `Debug` of URLs, configs, settings and stores; error messages
//! and their source chains (connection refused on a dead port, a live server
//! refusing the credentials); the health JSON; metrics; tracing output at
//! TRACE level from every crate. For every store kind and every way to give
//! a password (URL userinfo, query option, the card's `password=` option).
//!
//! (It lives in the chaos crate because it needs a metrics recorder and a
//! tracing subscriber as dev-dependencies, which the `leader` facade does
//! not have.)

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use leader::{
    ElectionConfig, Elector, Error, HolderId, LeaseKey, Settings, StoreOptions, StoreUrl,
};
use leader_testkit::servers::{EtcdServer, PostgresServer, RedisServer};
use metrics_util::debugging::DebuggingRecorder;
use tracing_subscriber::fmt::MakeWriter;

/// Alphanumeric, so it reads the same percent-encoded or not.
const SECRET: &str = "Zq9s3cretLEAK";

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Buffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Buffer {
    type Writer = Buffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// An error as every surface shows it: Display, Debug, the source chain.
fn error_texts(e: &Error) -> Vec<String> {
    let mut out = vec![e.to_string(), format!("{e:?}"), e.message().to_owned()];
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push(s.to_string());
        out.push(format!("{s:?}"));
        source = s.source();
    }
    out
}

/// Connects, calls the store, runs an elector until it has seen the store
/// (failed or led), and returns every text a user could see.
async fn exercise(url: &str) -> Vec<String> {
    let mut seen = vec![
        format!("{:?}", StoreUrl::new(url)),
        StoreUrl::new(url).to_string(),
    ];
    let settings = format!(r#"{{ "Store": {{ "ConnectionString": {url:?} }} }}"#);
    match Settings::from_json(&settings) {
        Ok(s) => seen.push(format!("{s:?}")),
        Err(e) => seen.extend(error_texts(&e)),
    }
    let options = StoreOptions::with_request_timeout(Duration::from_millis(500));
    let store = match leader::connect_with(&StoreUrl::new(url), &options) {
        Ok(store) => store,
        Err(e) => {
            seen.extend(error_texts(&e));
            return seen;
        }
    };
    seen.push(format!("{store:?}"));
    let key = LeaseKey::new("secrets:", "resource").expect("key");
    let holder = HolderId::new("secrets-test").expect("holder");
    match store.acquire(&key, &holder, Duration::from_secs(5)).await {
        Ok(outcome) => {
            seen.push(format!("{outcome:?}"));
            if let leader::Acquire::Acquired(lease) = outcome {
                seen.push(format!("{lease:?}"));
                if let Err(e) = store.release(&lease).await {
                    seen.extend(error_texts(&e));
                }
            }
        }
        Err(e) => seen.extend(error_texts(&e)),
    }
    if let Err(e) = store.current(&key).await {
        seen.extend(error_texts(&e));
    }

    let mut config = ElectionConfig::new("secrets");
    config.key_prefix = "secrets-elector:".to_owned();
    config.lease_duration = Duration::from_secs(1);
    config.renewal_interval = Duration::from_millis(250);
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let elector = metrics::with_local_recorder(&recorder, || {
        Elector::start(store.clone(), config).expect("a valid config")
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let health = elector.health();
        if health.data.consecutive_failures > 0 || elector.is_leader() || Instant::now() > deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let health = elector.health();
    assert!(
        health.data.consecutive_failures > 0 || elector.is_leader(),
        "the elector never reached the store within 15 s: {health:?}"
    );
    seen.push(health.to_document().to_string());
    seen.push(format!("{health:?}"));
    seen.push(format!("{elector:?}"));
    elector.shutdown().await;
    for (key, unit, description, value) in snapshotter.snapshot().into_vec() {
        seen.push(format!("{key:?} {unit:?} {description:?} {value:?}"));
    }
    seen
}

/// Runs `exercise` for each URL under a TRACE-level subscriber and fails if
/// the secret shows anywhere.
async fn assert_no_leak(urls: &[String]) {
    let buffer = Buffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(buffer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    for url in urls {
        assert!(url.contains(SECRET), "the test URL must carry the secret");
        for text in exercise(url).await {
            assert!(!text.contains(SECRET), "{url}: the secret shows in: {text}");
        }
    }
    let logs = buffer.text();
    assert!(
        !logs.is_empty(),
        "the subscriber captured nothing: the tracing check would be vacuous"
    );
    if let Some(at) = logs.find(SECRET) {
        let from = logs[..at].rfind('\n').map_or(0, |i| i + 1);
        let to = logs[at..].find('\n').map_or(logs.len(), |i| at + i);
        panic!("the secret shows in tracing output: {}", &logs[from..to]);
    }
}

// A current-thread runtime: every task (elector, store clients) runs on the
// test thread, where the subscriber is the default.
#[tokio::test]
async fn redis_secrets_stay_secret() {
    let server = RedisServer::start()
        .await
        .expect("redis-server (Debian: redis-server)");
    let live = server.addr();
    assert_no_leak(&[
        format!("redis://app:{SECRET}@127.0.0.1:1/0"),
        format!("rediss://:{SECRET}@127.0.0.1:1"),
        format!("127.0.0.1:1,password={SECRET},abortConnect=false"),
        // A live server that refuses the password (it has none configured).
        format!("redis://:{SECRET}@{live}"),
        format!("{live},password={SECRET}"),
    ])
    .await;
}

#[tokio::test]
async fn etcd_secrets_stay_secret() {
    let server = EtcdServer::start()
        .await
        .expect("etcd (Debian: etcd-server)");
    let live = server.addr();
    assert_no_leak(&[
        format!("etcd://root:{SECRET}@127.0.0.1:1"),
        format!("http://127.0.0.1:1?user=root&password={SECRET}"),
        // A live server without auth enabled: authentication is refused.
        format!("etcd://root:{SECRET}@{live}"),
    ])
    .await;
}

#[tokio::test]
async fn postgres_secrets_stay_secret() {
    let server = PostgresServer::start()
        .await
        .expect("postgres (Debian: postgresql)");
    let live = server.addr();
    assert_no_leak(&[
        format!("postgres://app:{SECRET}@127.0.0.1:1/app"),
        format!("postgresql://127.0.0.1:1/app?user=app&password={SECRET}&sslmode=disable"),
        // A live server (trust auth: the password is sent and ignored).
        format!("postgres://postgres:{SECRET}@{live}/postgres"),
    ])
    .await;
}
