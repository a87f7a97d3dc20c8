//! The stores' answers, where the library parses them: whatever sits under
//! a lease's keys (a holder record written by another program, an operator,
//! a different version: arbitrary bytes, wrong types, absurd tokens), the
//! store's `current`, `acquire`, `force_release` and `release` never panic
//! and either work or refuse with a typed error and a message.
//!
//! Property tests (proptest) against one private server per store.

use std::sync::Arc;
use std::time::Duration;

use leader::{Acquire, ErrorKind, HolderId, LeaseKey, LeaseStore, Result};
use leader_testkit::servers::{EtcdServer, RedisServer};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Bytes a foreign writer might leave: random bytes, text with control
/// characters, numbers out of range, empty.
fn foreign_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        "[ -~]{0,20}".prop_map(String::into_bytes),
        Just(b"".to_vec()),
        Just(b"\n\r\0\x1b[31m".to_vec()),
        Just(b"-1".to_vec()),
        Just(b"18446744073709551616".to_vec()),
        Just(b"9007199254740993".to_vec()),
        Just("ünïcødé 🚀".as_bytes().to_vec()),
        Just(vec![0xff, 0xfe, 0xfd]),
    ]
}

/// Calls every operation that reads what the store holds; each must work
/// or fail with a typed, explained error. Returns a description of a
/// broken rule, if any.
async fn probe(store: &Arc<dyn LeaseStore>, key: &LeaseKey) -> std::result::Result<(), String> {
    fn judge<T>(what: &str, result: &Result<T>) -> std::result::Result<(), String> {
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::Protocol | ErrorKind::NotHolder | ErrorKind::InvalidName
                ) && !e.message().trim().is_empty() =>
            {
                Ok(())
            }
            Err(e) => Err(format!("{what}: unexpected {:?}: {e}", e.kind())),
        }
    }
    let holder = HolderId::new("prober").map_err(|e| e.to_string())?;
    judge("current", &store.current(key).await)?;
    let acquired = store.acquire(key, &holder, Duration::from_secs(5)).await;
    judge("acquire", &acquired)?;
    if let Ok(Acquire::Acquired(lease)) = acquired {
        judge("renew", &store.renew(&lease).await)?;
        judge("release", &store.release(&lease).await)?;
    }
    judge("force_release", &store.force_release(key).await)?;
    Ok(())
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    })
}

#[test]
fn redis_foreign_records_are_parsed_or_refused() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let server = rt
        .block_on(RedisServer::start())
        .expect("redis-server (Debian: redis-server)");
    let store = leader::connect(server.url()).expect("store");
    let client = redis::Client::open(server.url()).expect("raw client");
    let raw = rt
        .block_on(client.get_multiplexed_async_connection())
        .expect("raw connection");
    let key = LeaseKey::new("answers:", "r").expect("key");
    let k = key.as_str().to_owned();
    let (term, counter) = (format!("{{{k}}}:term"), format!("{{{k}}}:token"));
    let strategy = (foreign_bytes(), foreign_bytes(), foreign_bytes(), 0..4u8);
    runner()
        .run(&strategy, |(holder, token, count, shape)| {
            let mut raw = raw.clone();
            rt.block_on(async {
                let mut pipe = redis::pipe();
                pipe.del(&k).del(&term).del(&counter);
                match shape {
                    // A holder record with arbitrary content.
                    0 => pipe
                        .set(&k, &holder)
                        .hset(&term, "holder", &holder)
                        .hset(&term, "token", &token)
                        .set(&counter, &count),
                    // The key alone, no term record.
                    1 => pipe.set(&k, &holder).set(&counter, &count),
                    // Wrong types under every key.
                    2 => pipe
                        .rpush(&k, &holder)
                        .sadd(&term, &token)
                        .hset(&counter, "x", &count),
                    // Only a counter, with whatever content.
                    _ => pipe.set(&counter, &count),
                };
                let _: () = pipe.query_async(&mut raw).await.expect("write the record");
                probe(&store, &key).await
            })
            .map_err(proptest::test_runner::TestCaseError::fail)
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn etcd_foreign_values_are_parsed_or_refused() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let server = rt
        .block_on(EtcdServer::start())
        .expect("etcd (Debian: etcd-server)");
    let store = leader::connect(server.url()).expect("store");
    let raw = rt
        .block_on(etcd_client::Client::connect([server.url()], None))
        .expect("raw client");
    let key = LeaseKey::new("answers:", "r").expect("key");
    let k = key.as_str().to_owned();
    runner()
        .run(&(foreign_bytes(), any::<bool>()), |(value, with_lease)| {
            let mut raw = raw.clone();
            rt.block_on(async {
                let options = if with_lease {
                    let lease = raw.lease_grant(5, None).await.expect("grant");
                    Some(etcd_client::PutOptions::new().with_lease(lease.id()))
                } else {
                    None
                };
                raw.put(k.as_bytes(), value, options).await.expect("put");
                probe(&store, &key).await
            })
            .map_err(proptest::test_runner::TestCaseError::fail)
        })
        .unwrap_or_else(|e| panic!("{e}"));
}
