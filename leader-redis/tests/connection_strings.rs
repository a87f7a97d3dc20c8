//! Connection strings: every accepted form parses to the expected topology,
//! every malformed one is refused with an error naming the wrong part, and a
//! password never shows in errors, Debug output or Display.

use std::time::Duration;

use leader_core::ErrorKind;
use leader_redis::{Endpoint, RedisConfig, RedisStore, Topology};

const SECRET: &str = "s3cr3t-p4ss";

fn ep(host: &str, port: u16) -> Endpoint {
    Endpoint::new(host, port)
}

#[test]
fn accepted_forms_parse_to_the_expected_settings() {
    struct Case {
        input: &'static str,
        topology: Topology,
        user: Option<&'static str>,
        password: Option<&'static str>,
        db: i64,
        tls: bool,
    }
    let single = |h: &str, p| Topology::Single(ep(h, p));
    let cases = [
        Case {
            input: "redis://127.0.0.1:6380/2",
            topology: single("127.0.0.1", 6380),
            user: None,
            password: None,
            db: 2,
            tls: false,
        },
        Case {
            input: "redis://:p%40ss@redis-host",
            topology: single("redis-host", 6379),
            user: None,
            password: Some("p@ss"),
            db: 0,
            tls: false,
        },
        Case {
            input: "rediss://app:pw@[::1]:6390/0",
            topology: single("::1", 6390),
            user: Some("app"),
            password: Some("pw"),
            db: 0,
            tls: true,
        },
        Case {
            input: "localhost:6379",
            topology: single("localhost", 6379),
            user: None,
            password: None,
            db: 0,
            tls: false,
        },
        Case {
            input: "redis-host:6379,password=secret",
            topology: single("redis-host", 6379),
            user: None,
            password: Some("secret"),
            db: 0,
            tls: false,
        },
        Case {
            input: "redis-host:6380,password=secret,ssl=true",
            topology: single("redis-host", 6380),
            user: None,
            password: Some("secret"),
            db: 0,
            tls: true,
        },
        Case {
            input: "cache.redis.cache.windows.net:6380,password=key,ssl=true,abortConnect=false",
            topology: single("cache.redis.cache.windows.net", 6380),
            user: None,
            password: Some("key"),
            db: 0,
            tls: true,
        },
        Case {
            input: "cluster.cache.amazonaws.com:6379,ssl=True",
            topology: single("cluster.cache.amazonaws.com", 6379),
            user: None,
            password: None,
            db: 0,
            tls: true,
        },
        Case {
            input: "sentinel1:26379,sentinel2:26379,sentinel3,serviceName=mymaster,password=secret",
            topology: Topology::Sentinel {
                sentinels: vec![
                    ep("sentinel1", 26379),
                    ep("sentinel2", 26379),
                    ep("sentinel3", 26379),
                ],
                service_name: "mymaster".into(),
            },
            user: None,
            password: Some("secret"),
            db: 0,
            tls: false,
        },
        Case {
            input: "node1:6379,node2:6379,node3:6379,password=secret",
            topology: Topology::Cluster(vec![
                ep("node1", 6379),
                ep("node2", 6379),
                ep("node3", 6379),
            ]),
            user: None,
            password: Some("secret"),
            db: 0,
            tls: false,
        },
        Case {
            input: " h:1 , USER=ops , Password=pw , defaultDatabase=3 , connectRetry=3 ",
            topology: single("h", 1),
            user: Some("ops"),
            password: Some("pw"),
            db: 3,
            tls: false,
        },
    ];
    for case in cases {
        let config =
            RedisConfig::from_url(case.input).unwrap_or_else(|e| panic!("{}: {e}", case.input));
        assert_eq!(config.topology(), &case.topology, "{}", case.input);
        assert_eq!(config.username(), case.user, "{}", case.input);
        assert_eq!(
            config.password().map(|p| p.expose()),
            case.password,
            "{}",
            case.input
        );
        assert_eq!(config.db(), case.db, "{}", case.input);
        assert_eq!(config.tls(), case.tls, "{}", case.input);
    }
}

#[test]
fn timeouts_in_the_string_apply_unless_a_setter_overrides_them() {
    let config = RedisConfig::from_url("h:1,connectTimeout=1500,syncTimeout=250").expect("valid");
    assert_eq!(config.connect_timeout(), Duration::from_millis(1500));
    assert_eq!(config.request_timeout(), Duration::from_millis(250));
    let store = RedisStore::from_url("h:1,syncTimeout=250").expect("lazy build");
    assert_eq!(store.config().request_timeout(), Duration::from_millis(250));
    let config = RedisConfig::from_url("h:1,syncTimeout=250")
        .expect("valid")
        .with_request_timeout(Duration::from_millis(40));
    let store = RedisStore::new(config).expect("lazy build");
    assert_eq!(store.config().request_timeout(), Duration::from_millis(40));
    // Untouched: the defaults.
    let config = RedisConfig::from_url("redis://h").expect("valid");
    assert_eq!(
        config.connect_timeout(),
        leader_redis::DEFAULT_CONNECT_TIMEOUT
    );
    assert_eq!(
        config.request_timeout(),
        leader_redis::DEFAULT_REQUEST_TIMEOUT
    );
}

#[test]
fn url_options_take_durations_as_the_election_config_does() {
    let config: RedisConfig = "redis://h:1/2?connect_timeout=1.5&request_timeout=250ms"
        .parse()
        .expect("valid");
    assert_eq!(config.connect_timeout(), Duration::from_millis(1500));
    assert_eq!(config.request_timeout(), Duration::from_millis(250));
    assert_eq!(config.db(), 2);
    let config = RedisConfig::from_url("rediss://h?request_timeout=3").expect("bare seconds");
    assert_eq!(config.request_timeout(), Duration::from_secs(3));
}

#[test]
fn malformed_strings_are_refused_naming_the_wrong_part() {
    // (input, text the error must contain)
    let cases: &[(&str, &str)] = &[
        ("", "empty"),
        ("   ", "empty"),
        ("http://h:6379", "unsupported URL scheme 'http'"),
        ("redis://", "no host"),
        ("redis://h:99999", "malformed URL"),
        ("redis://h:0", "port"),
        ("redis://h/abc", "database number"),
        ("redis://h/-1", "database number"),
        (
            "redis://h/?timeout=3",
            "unknown option 'timeout' (known: connect_timeout, request_timeout)",
        ),
        (
            "redis://h/?request_timeout=soon",
            "option request_timeout: \"soon\" is not a duration",
        ),
        (
            "redis://h/?connect_timeout=0",
            "connect_timeout must be above zero",
        ),
        (
            "redis://h/?request_timeout=2h",
            "request_timeout must be above zero and at most",
        ),
        ("redis://h/#insecure", "fragments"),
        ("h:6379,", "part 2 is empty"),
        ("h:6379,,password=x", "part 2 is empty"),
        ("h:abc", "part 1: the port"),
        ("h:0", "part 1: the port"),
        (":6379", "part 1: the host is empty"),
        ("h:1:2", "IPv6"),
        ("[::1:6379", "not closed"),
        ("[::1]6379", "':port'"),
        ("h/x:6379", "part 1: not a host name"),
        (
            "h:6379,ssl=maybe",
            "part 2: option ssl must be true or false",
        ),
        ("h:6379,sll=true", "part 2: unknown option 'sll'"),
        ("h:6379,proxy=twemproxy", "unknown option 'proxy'"),
        (
            "h:6379,password=a,password=b",
            "part 3: option password is given twice",
        ),
        ("h:6379,h:6379", "given twice"),
        ("h:6379,=x", "option name is empty"),
        ("h:6379,serviceName=", "needs a master name"),
        (
            "h:6379,defaultDatabase=x",
            "defaultDatabase must be a non-negative integer",
        ),
        (
            "h:6379,connectTimeout=0",
            "connectTimeout must be a number of milliseconds",
        ),
        (
            "h:6379,syncTimeout=soon",
            "syncTimeout must be a number of milliseconds",
        ),
        ("password=x", "no host:port endpoint"),
        ("n1:1,n2:2,defaultDatabase=1", "Cluster has only database 0"),
        ("h:1,sslCaFile=/ca.pem", "TLS is off"),
        ("h:1,sentinelPassword=x", "only valid with serviceName"),
        (
            "h:1,abortConnect=perhaps",
            "abortConnect must be true or false",
        ),
    ];
    for (input, needle) in cases {
        let err = RedisConfig::from_url(input).expect_err(input);
        assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{input}: {err}");
        assert_eq!(err.store(), Some("redis"), "{input}: {err}");
        let text = err.to_string();
        assert!(
            text.contains(needle),
            "{input:?}: {text:?} should contain {needle:?}"
        );
        // The same error surfaces from the store's URL constructor.
        let err = RedisStore::from_url(input).expect_err(input);
        assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{input}");
    }
}

#[test]
fn the_password_never_shows_in_errors_debug_or_display() {
    let inputs = [
        format!("redis://user:{SECRET}@h:6379/0"),
        format!("rediss://:{SECRET}@h:6379"),
        format!("h:6379,password={SECRET},ssl=true,abortConnect=false"),
        format!("s1:26379,s2,serviceName=m,password={SECRET},sentinelPassword={SECRET}"),
        format!("n1:1,n2:2,password={SECRET}"),
    ];
    for input in &inputs {
        let config = RedisConfig::from_url(input).expect(input);
        assert_eq!(config.password().map(|p| p.expose()), Some(SECRET));
        for shown in [
            format!("{config:?}"),
            format!("{config:#?}"),
            format!("{:?}", config.password()),
            format!("{}", config.password().expect("password")),
        ] {
            assert!(!shown.contains(SECRET), "{shown}");
        }
        let store = RedisStore::from_url(input).expect("lazy build does not connect");
        assert!(!format!("{store:?}").contains(SECRET));
        assert!(!format!("{:?}", store.config()).contains(SECRET));
    }
    // Malformed strings carrying the password, including a password
    // misplaced where an endpoint belongs.
    let malformed = [
        format!("redis://:{SECRET}@h:6379/x"),
        format!("redis://:{SECRET}@h:6379/?timeout=1"),
        format!("h:6379,password={SECRET},password={SECRET}"),
        format!("h:6379,password={SECRET},bogus=1"),
        format!("h:6379,{SECRET}:x"),
        format!("h:6379,pass/{SECRET}"),
        format!("mongodb://:{SECRET}@h:6379"),
        format!("redis://:{SECRET}@h:99999"),
        format!("redis://:{SECRET}@h:6379/?request_timeout=soon"),
        format!("redis://:{SECRET}%FF@h:6379"),
    ];
    for input in &malformed {
        let err = RedisConfig::from_url(input).expect_err(input);
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(!shown.contains(SECRET), "{input}: {shown}");
        }
    }
}

fn config(input: &str) -> RedisConfig {
    RedisConfig::from_url(input).expect(input)
}

#[test]
fn a_wait_timeout_not_below_the_request_timeout_is_refused() {
    let request = Duration::from_millis(500);
    for wait in [request, Duration::from_secs(2)] {
        // Validation happens once, whatever order the setters ran in.
        let err = RedisStore::new(
            config("redis://h:6379")
                .with_wait_replicas(1, wait)
                .with_request_timeout(request),
        )
        .expect_err("WAIT as long as the request timeout");
        assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
        assert!(err.message().starts_with("wait_replicas"), "{err}");
        assert!(err.message().contains("request timeout"), "{err}");
    }
    // The string's syncTimeout is the request timeout too.
    let err = RedisStore::new(
        config("h:6379,syncTimeout=300").with_wait_replicas(1, Duration::from_millis(300)),
    )
    .expect_err("WAIT as long as syncTimeout");
    assert!(err.message().starts_with("wait_replicas"), "{err}");
    RedisStore::new(
        config("redis://h:6379")
            .with_request_timeout(request)
            .with_wait_replicas(1, Duration::from_millis(499)),
    )
    .expect("a WAIT below the request timeout");
}

#[test]
fn settings_out_of_range_are_refused_by_validate() {
    for (bad, needle) in [
        (
            config("redis://h").with_connect_timeout(Duration::ZERO),
            "connect_timeout",
        ),
        (
            config("redis://h").with_request_timeout(Duration::from_secs(7200)),
            "request_timeout",
        ),
        (
            config("redis://h").with_watch_heartbeat(Duration::ZERO),
            "watch_heartbeat",
        ),
        (
            config("redis://h").with_sentinel_check_interval(Duration::ZERO),
            "sentinel_check_interval",
        ),
        (
            config("redis://h").with_wait_replicas(0, Duration::from_millis(100)),
            "at least one replica",
        ),
        (config("n1:1,n2:2").with_db(1), "only database 0"),
        (config("redis://h").with_db(-1), "must not be negative"),
        (
            config("redis://h").with_ca_file("/ca.pem").with_tls(false),
            "TLS is off",
        ),
    ] {
        let err = bad.validate().expect_err(needle);
        assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
        assert_eq!(err.store(), Some("redis"), "{err}");
        assert!(err.message().contains(needle), "{needle}: {err}");
        let err = RedisStore::new(bad).expect_err(needle);
        assert!(err.message().contains(needle), "{needle}: {err}");
    }
}
