//! Property tests for every parser a user feeds: config JSON and env
//! overrides, store URLs (and the card's StackExchange-style Redis strings),
//! resource names and instance ids. Whatever the input: no panic, and every
//! refusal is a typed error (`InvalidConfig`, `InvalidName` or
//! `Unsupported`) with a message that never repeats a password given in it.
//!
//! They run in plain `cargo test` (proptest, 256 cases per property unless
//! `PROPTEST_CASES` says otherwise).

use leader::{ElectionConfig, Error, ErrorKind, HolderId, LeaseKey, Settings, StoreUrl};
use proptest::prelude::*;

/// The refusal kinds a parser may answer with.
fn assert_clear(err: &Error, input: &str) {
    assert!(
        matches!(
            err.kind(),
            ErrorKind::InvalidConfig | ErrorKind::InvalidName | ErrorKind::Unsupported
        ),
        "input {input:?} refused with kind {:?}: {err}",
        err.kind()
    );
    assert!(
        !err.message().trim().is_empty(),
        "input {input:?} refused with an empty message"
    );
}

/// Strings with the characters that break naive parsers: separators,
/// quotes, braces, control characters, percent escapes, Unicode.
fn hostile_text(max: usize) -> impl Strategy<Value = String> {
    let pieces = prop_oneof![
        Just(":".to_owned()),
        Just("@".to_owned()),
        Just("/".to_owned()),
        Just("?".to_owned()),
        Just("&".to_owned()),
        Just("=".to_owned()),
        Just(",".to_owned()),
        Just("%".to_owned()),
        Just("%zz".to_owned()),
        Just("%00".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just("{".to_owned()),
        Just("}".to_owned()),
        Just("\"".to_owned()),
        Just("'".to_owned()),
        Just("\\".to_owned()),
        Just("\n".to_owned()),
        Just("\r".to_owned()),
        Just("\0".to_owned()),
        Just("\u{1b}".to_owned()),
        Just(" ".to_owned()),
        Just("选举🚀".to_owned()),
        Just("\u{202e}".to_owned()),
        Just("99999999999999999999".to_owned()),
        Just("-1".to_owned()),
        Just("0".to_owned()),
        "[a-zA-Z0-9._-]{1,8}",
        any::<char>().prop_map(String::from),
    ];
    proptest::collection::vec(pieces, 0..max).prop_map(|v| v.concat())
}

/// A password that cannot appear by accident anywhere else in an input.
fn secret() -> impl Strategy<Value = String> {
    "[a-z0-9]{6,12}".prop_map(|s| format!("Zq9SECRET{s}"))
}

/// A secret that may hold an unencoded URL delimiter, which ends a URL's
/// authority early: its redaction must not stop there.
fn secret_with_delimiters() -> impl Strategy<Value = String> {
    (
        secret(),
        proptest::sample::select(&["", "/", "?", "#", "@", "/x?y#"][..]),
        "[a-z0-9]{0,4}",
    )
        .prop_map(|(s, d, tail)| format!("{s}{d}{tail}"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime for store constructors")
}

/// `leader::connect` and, per scheme, the store crate's own parser.
fn parse_url(url: &str, password: Option<&str>) {
    let rt = runtime();
    let _guard = rt.enter();
    let check = |err: &Error| {
        assert_clear(err, url);
        if let Some(p) = password {
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains(p), "{url:?}: the password leaked: {shown}");
        }
    };
    match leader::connect(url) {
        Ok(store) => {
            if let Some(p) = password {
                assert!(!format!("{store:?}").contains(p), "{url:?}: Debug leaks");
            }
        }
        Err(e) => check(&e),
    }
    let shown = format!("{:?} {}", StoreUrl::new(url), StoreUrl::new(url));
    if let Some(p) = password {
        // The head of the secret (up to any delimiter inside it) must not
        // show either: a partial leak is a leak.
        let head: String = p
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        assert!(
            !shown.contains(p) && !shown.contains(&head),
            "{url:?}: StoreUrl shows the password: {shown}"
        );
    }
    #[cfg(feature = "redis")]
    if let Err(e) = leader::redis::RedisConfig::from_url(url) {
        check(&e);
    }
    #[cfg(feature = "etcd")]
    if let Err(e) = leader::etcd::EtcdConfig::from_url(url) {
        check(&e);
    }
    #[cfg(feature = "postgres")]
    if let Err(e) = leader::postgres::PostgresConfig::from_url(url) {
        check(&e);
    }
}

const CONFIG_KEYS: &[&str] = &[
    "ResourceName",
    "KeyPrefix",
    "InstanceId",
    "LeaseDurationSeconds",
    "LeaseDuration",
    "RenewalIntervalSeconds",
    "RenewalInterval",
    "RenewDeadlineSeconds",
    "RetryPeriodSeconds",
    "RetryJitter",
    "ClockDrift",
    "RequestTimeoutSeconds",
    "ReleaseTimeoutSeconds",
    "UnhealthyAfterSeconds",
    "FollowerHealthStatus",
    "EnableDetailedLogging",
    "MetricsPrefix",
    "Enabled",
    "Preset",
];

fn config_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(CONFIG_KEYS).prop_map(str::to_owned),
        1 => hostile_text(6),
    ]
}

/// JSON values of every type, including the duration forms ("500ms", 0.5).
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{Value, json};
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop_oneof![
            Just("500ms".to_owned()),
            Just("1m".to_owned()),
            Just("-3s".to_owned()),
            Just("1e400".to_owned()),
            Just("NaN".to_owned()),
            Just("production".to_owned()),
            hostile_text(8),
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            proptest::collection::btree_map("[A-Za-z]{1,6}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn config_json_never_panics(text in hostile_text(24)) {
        if let Err(e) = ElectionConfig::from_json(&text) {
            assert_clear(&e, &text);
        }
        if let Err(e) = Settings::from_json(&text) {
            assert_clear(&e, &text);
        }
    }

    #[test]
    fn config_sections_with_any_values_are_loaded_or_refused_clearly(
        fields in proptest::collection::btree_map(config_key(), json_value(), 0..6),
        wrap in any::<bool>(),
    ) {
        let section = serde_json::Value::Object(fields.into_iter().collect());
        let document = if wrap {
            serde_json::json!({ "LeaderElection": section })
        } else {
            section
        };
        let text = document.to_string();
        match ElectionConfig::from_json(&text) {
            // Loading checks syntax and types; the rules are checked by
            // `validate` (as `Elector::start` does): also a clear refusal.
            Ok(config) => {
                if let Err(e) = config.validate() {
                    assert_clear(&e, &text);
                }
            }
            Err(e) => assert_clear(&e, &text),
        }
        if let Err(e) = Settings::from_json(&text) {
            assert_clear(&e, &text);
        }
    }

    #[test]
    fn env_overrides_with_any_keys_and_values(
        vars in proptest::collection::vec(
            (
                prop_oneof![
                    3 => config_key().prop_map(|k| format!("LeaderElection__{k}")),
                    1 => Just("Store__ConnectionString".to_owned()),
                    1 => Just("Redis__ConnectionString".to_owned()),
                    1 => hostile_text(6),
                ],
                hostile_text(10),
            ),
            0..5,
        )
    ) {
        let shown = format!("{vars:?}");
        match ElectionConfig::new("fuzz").with_env_from(vars.clone()) {
            Ok(config) => {
                if let Err(e) = config.validate() {
                    assert_clear(&e, &shown);
                }
            }
            Err(e) => assert_clear(&e, &shown),
        }
        if let Err(e) = Settings::default().with_env_from(vars) {
            assert_clear(&e, &shown);
        }
    }

    #[test]
    fn any_text_as_a_store_url(text in hostile_text(20)) {
        parse_url(&text, None);
    }

    #[test]
    fn structured_urls_with_secrets(
        scheme in proptest::sample::select(&[
            "redis", "rediss", "etcd", "etcds", "http", "https", "postgres", "postgresql",
            "memory", "REDIS", "mongodb", "",
        ][..]),
        // Userinfo as a URL parser sees it: '/', '?' and '#' would end the
        // authority, making the "password" part of the path (not redacted).
        user in prop_oneof![
            Just(String::new()),
            "[a-z]{1,6}".prop_map(String::from),
            hostile_text(3).prop_map(|u| u.replace(['/', '?', '#'], "")),
        ],
        password in secret_with_delimiters(),
        host in prop_oneof![
            Just("127.0.0.1".to_owned()),
            Just("[::1]".to_owned()),
            Just("db.example".to_owned()),
            Just(String::new()),
            hostile_text(4),
        ],
        port in prop_oneof![Just(String::new()), (0u32..70000).prop_map(|p| format!(":{p}")), hostile_text(3).prop_map(|s| format!(":{s}"))],
        path in prop_oneof![Just(String::new()), Just("/0".to_owned()), Just("/app".to_owned()), hostile_text(3).prop_map(|s| format!("/{s}"))],
        query in proptest::collection::vec((hostile_text(3), hostile_text(4)), 0..3),
        password_in_query in any::<bool>(),
    ) {
        let mut params: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let userinfo = if password_in_query {
            params.push(format!("password={password}"));
            if user.is_empty() { String::new() } else { format!("{user}@") }
        } else {
            format!("{user}:{password}@")
        };
        let query = if params.is_empty() { String::new() } else { format!("?{}", params.join("&")) };
        let url = format!("{scheme}://{userinfo}{host}{port}{path}{query}");
        parse_url(&url, Some(&password));
    }

    #[test]
    fn the_cards_redis_connection_strings(
        endpoints in proptest::collection::vec(
            prop_oneof![
                Just("localhost:6379".to_owned()),
                Just("redis-host".to_owned()),
                Just("[::1]:6380".to_owned()),
                hostile_text(4),
            ],
            0..3,
        ),
        options in proptest::collection::vec(
            (
                prop_oneof![
                    Just("ssl".to_owned()), Just("abortConnect".to_owned()),
                    Just("connectTimeout".to_owned()), Just("syncTimeout".to_owned()),
                    Just("defaultDatabase".to_owned()), Just("serviceName".to_owned()),
                    Just("user".to_owned()), Just("allowAdmin".to_owned()),
                    Just("sslHost".to_owned()), hostile_text(3),
                ],
                prop_oneof![
                    Just("true".to_owned()), Just("false".to_owned()), Just("5000".to_owned()),
                    Just("-1".to_owned()), Just("99999999999999999999".to_owned()), hostile_text(4),
                ],
            ),
            0..4,
        ),
        password in secret(),
        with_password in any::<bool>(),
    ) {
        let mut parts = endpoints;
        parts.extend(options.iter().map(|(k, v)| format!("{k}={v}")));
        if with_password {
            parts.push(format!("password={password}"));
        }
        let text = parts.join(",");
        parse_url(&text, with_password.then_some(password.as_str()));
    }

    #[test]
    fn resource_names_and_instance_ids(
        prefix in prop_oneof![Just(String::new()), Just("leader:".to_owned()), hostile_text(4)],
        name in prop_oneof![hostile_text(16), "[a-z]{2000,2100}".prop_map(String::from)],
    ) {
        match LeaseKey::new(&prefix, &name) {
            Ok(key) => {
                prop_assert!(!key.as_str().chars().any(char::is_control));
                prop_assert!(key.as_str().len() <= leader::MAX_KEY_LEN);
                prop_assert_eq!(key.prefix(), prefix.as_str());
                prop_assert_eq!(key.resource(), name.as_str());
            }
            Err(e) => {
                prop_assert_eq!(e.kind(), ErrorKind::InvalidName);
                prop_assert!(!e.message().is_empty());
            }
        }
        match HolderId::new(name.clone()) {
            Ok(id) => {
                prop_assert!(!id.as_str().chars().any(char::is_control));
                prop_assert!(id.as_str().len() <= leader::MAX_HOLDER_LEN);
            }
            Err(e) => {
                prop_assert_eq!(e.kind(), ErrorKind::InvalidName);
                prop_assert!(!e.message().is_empty());
            }
        }
        // A name containing a control character never gets through.
        if name.chars().any(char::is_control) {
            prop_assert!(LeaseKey::new(&prefix, &name).is_err());
            prop_assert!(HolderId::new(name).is_err());
        }
    }

    #[test]
    fn durations(text in hostile_text(6)) {
        if let Err(e) = leader::parse_duration(&text) {
            assert_clear(&e, &text);
        }
    }
}
