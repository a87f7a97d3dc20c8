//! Config loading (card JSON, human durations, presets, env overrides) and
//! every validation rule, each naming its field.

use std::time::Duration;

use leader_core::{ElectionConfig, ErrorKind, HealthStatus, Preset};

#[test]
fn loads_the_cards_json_shape() {
    let c = ElectionConfig::from_json(
        r#"{ "LeaderElection": { "ResourceName": "honua-server",
             "LeaseDurationSeconds": 30, "RenewalIntervalSeconds": 10,
             "KeyPrefix": "honua:leader:", "EnableDetailedLogging": true },
             "Redis": { "ConnectionString": "redis-host:6379" } }"#,
    )
    .expect("card config loads");
    assert_eq!(c.resource_name, "honua-server");
    assert_eq!(c.lease_duration, Duration::from_secs(30));
    assert_eq!(c.renewal_interval, Duration::from_secs(10));
    assert_eq!(c.renew_deadline(), Duration::from_secs(20));
    assert_eq!(c.retry_period(), Duration::from_secs(10));
    assert!(c.enable_detailed_logging);
    assert_eq!(
        c.lease_key().expect("key").as_str(),
        "honua:leader:honua-server"
    );
    c.validate().expect("card defaults are valid");
}

#[test]
fn durations_accept_fractions_and_human_strings_under_either_key() {
    let c = ElectionConfig::from_json(
        r#"{ "leaderelection": { "resourcename": "x", "LeaseDuration": "1500ms",
             "RenewalIntervalSeconds": 0.25, "retryperiod": "1m 30s",
             "FollowerHealthStatus": "Healthy" } }"#,
    )
    .expect("loads");
    assert_eq!(c.lease_duration, Duration::from_millis(1500));
    assert_eq!(c.renewal_interval, Duration::from_millis(250));
    assert_eq!(c.retry_period(), Duration::from_secs(90));
    assert_eq!(c.follower_health_status, HealthStatus::Healthy);
}

#[test]
fn presets_apply_by_name_and_explicit_keys_win() {
    for preset in Preset::ALL {
        let (lease, renewal, detailed) = preset.settings();
        let c = ElectionConfig::preset(preset, "x");
        assert_eq!((c.lease_duration, c.renewal_interval), (lease, renewal));
        assert_eq!(c.enable_detailed_logging, detailed);
        c.validate().expect("presets are valid");
    }
    let c = ElectionConfig::from_json(
        r#"{ "LeaderElection": { "Preset": "high-load", "RenewalIntervalSeconds": 20 } }"#,
    )
    .expect("loads");
    assert_eq!(c.lease_duration, Duration::from_secs(60));
    assert_eq!(c.renewal_interval, Duration::from_secs(20));
    assert_eq!(
        "HighLoad".parse::<Preset>().expect("parses"),
        Preset::HighLoad
    );
    assert!("turbo".parse::<Preset>().is_err());
}

#[test]
fn env_overrides_in_the_cards_form() {
    let base = ElectionConfig::from_json(r#"{ "LeaderElection": { "ResourceName": "file" } }"#)
        .expect("loads");
    let c = base
        .with_env_from([
            ("LeaderElection__ResourceName", "honua-server"),
            ("LEADERELECTION__LEASEDURATIONSECONDS", "15"),
            ("LeaderElection__RenewalIntervalSeconds", "5"),
            ("LeaderElection__EnableDetailedLogging", "true"),
            ("LeaderElection__InstanceId", "pod-1"),
            ("Redis__ConnectionString", "ignored:6379"),
            ("PATH", "/usr/bin"),
        ])
        .expect("env applies");
    assert_eq!(c.resource_name, "honua-server");
    assert_eq!(c.lease_duration, Duration::from_secs(15));
    assert_eq!(c.renewal_interval, Duration::from_secs(5));
    assert!(c.enable_detailed_logging);
    assert_eq!(c.instance_id.as_deref(), Some("pod-1"));

    let c = ElectionConfig::default()
        .with_env_from([("LeaderElection__Preset", "development")])
        .expect("preset from env");
    assert_eq!(c.lease_duration, Duration::from_secs(15));
}

#[test]
fn env_errors_name_the_variable() {
    let err = ElectionConfig::default()
        .with_env_from([("LeaderElection__LeaseDurationSecs", "15")])
        .expect_err("typo");
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    assert!(
        err.to_string()
            .contains("LeaderElection__LeaseDurationSecs"),
        "{err}"
    );
    let err = ElectionConfig::default()
        .with_env_from([("LeaderElection__LeaseDurationSeconds", "soon")])
        .expect_err("bad value");
    assert!(err.to_string().contains("soon"), "{err}");
}

#[test]
fn unknown_keys_and_bad_json_are_refused() {
    for (doc, needle) in [
        (
            r#"{ "LeaderElection": { "LeaseDurationSecs": 3 } }"#,
            "LeaseDurationSecs",
        ),
        (
            r#"{ "LeaderElection": { "LeaseDurationSeconds": -1 } }"#,
            "-1",
        ),
        (r#"{ "LeaderElection": [] }"#, "object"),
        ("not json", "JSON"),
        (r#"{ "LeaderElection": { "Preset": "turbo" } }"#, "turbo"),
    ] {
        let err = ElectionConfig::from_json(doc).expect_err(doc);
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
        assert!(
            err.to_string().contains(needle),
            "{err} should mention {needle}"
        );
    }
}

/// Every validation rule, with the field the error must name.
#[test]
fn every_validation_rule_names_its_field() {
    let ms = Duration::from_millis;
    type Edit = fn(&mut ElectionConfig);
    let cases: Vec<(&str, Edit)> = vec![
        ("LeaseDurationSeconds", |c| {
            c.lease_duration = Duration::ZERO
        }),
        ("RenewalIntervalSeconds", |c| {
            c.renewal_interval = Duration::ZERO
        }),
        ("RenewalIntervalSeconds", |c| {
            c.renewal_interval = c.lease_duration
        }),
        ("RenewalIntervalSeconds", |c| {
            c.renewal_interval = Duration::from_secs(35)
        }),
        ("RenewDeadlineSeconds", |c| {
            c.renew_deadline = Some(c.lease_duration)
        }),
        ("RenewDeadlineSeconds", |c| {
            c.renew_deadline = Some(Duration::from_secs(5))
        }),
        ("RenewDeadlineSeconds", |c| {
            c.clock_drift = 0.4;
            c.renew_deadline = Some(Duration::from_secs(25));
        }),
        ("RetryPeriodSeconds", |c| {
            c.retry_period = Some(Duration::ZERO)
        }),
        ("RequestTimeoutSeconds", |c| {
            c.request_timeout = Some(Duration::ZERO)
        }),
        ("ReleaseTimeoutSeconds", |c| {
            c.release_timeout = Duration::ZERO
        }),
        ("UnhealthyAfterSeconds", |c| {
            c.unhealthy_after = Some(Duration::ZERO)
        }),
        ("RetryJitter", |c| c.retry_jitter = 1.5),
        ("ClockDrift", |c| c.clock_drift = 0.5),
        ("ClockDrift", |c| c.clock_drift = -0.1),
        ("ResourceName", |c| c.resource_name = "  ".into()),
        ("ResourceName", |c| c.resource_name = "a\nb".into()),
        ("ResourceName", |c| c.key_prefix = "p\u{7}".into()),
        ("MetricsPrefix", |c| c.metrics_prefix = "bad-name".into()),
        ("MetricsPrefix", |c| c.metrics_prefix = "9lives".into()),
        ("InstanceId", |c| c.instance_id = Some("".into())),
        ("LeaseDurationSeconds", |c| {
            c.lease_duration = Duration::from_secs(30 * 86_400)
        }),
    ];
    for (field, edit) in cases {
        let mut c = ElectionConfig::new("r");
        edit(&mut c);
        let err = c.validate().expect_err(field);
        assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{field}: {err}");
        assert!(
            err.message().starts_with(field),
            "expected {field} first: {err}"
        );
    }
    // Sub-second timings are fine.
    ElectionConfig::new("r")
        .with_timing(ms(300), ms(100))
        .validate()
        .expect("sub-second");
}

#[test]
fn debug_output_stays_short_and_readable() {
    let text = format!("{:?}", ElectionConfig::new("r"));
    assert!(text.contains("resource_name: \"r\""), "{text}");
}

#[test]
fn durations_that_break_timing_are_refused_naming_the_field() {
    type Edit = fn(&mut ElectionConfig);
    // The defaults' renew deadline is 20 s.
    let cases: Vec<(&str, Edit)> = vec![
        ("RequestTimeoutSeconds", |c| {
            c.request_timeout = Some(Duration::from_secs(21))
        }),
        ("RequestTimeoutSeconds", |c| {
            c.renew_deadline = Some(Duration::from_secs(12));
            c.request_timeout = Some(Duration::from_secs(13));
        }),
        ("RetryPeriodSeconds", |c| {
            c.retry_period = Some(Duration::from_secs(u64::MAX / 2))
        }),
        ("RetryPeriodSeconds", |c| {
            c.retry_period = Some(leader_core::MAX_TTL + Duration::from_secs(1))
        }),
        ("ReleaseTimeoutSeconds", |c| {
            c.release_timeout = Duration::MAX
        }),
        ("UnhealthyAfterSeconds", |c| {
            c.unhealthy_after = Some(Duration::MAX)
        }),
    ];
    for (field, edit) in cases {
        let mut c = ElectionConfig::new("r");
        edit(&mut c);
        let err = c.validate().expect_err(field);
        assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{field}: {err}");
        assert!(
            err.message().starts_with(field),
            "expected {field} first: {err}"
        );
    }
    // The same from the environment, as an operator would write it.
    let c = ElectionConfig::new("r")
        .with_env_from([("LeaderElection__RetryPeriodSeconds", "1e15")])
        .expect("parses");
    let err = c.validate().expect_err("absurd retry period");
    assert!(err.message().starts_with("RetryPeriodSeconds"), "{err}");
    // The bounds themselves are accepted.
    let mut c = ElectionConfig::new("r");
    c.request_timeout = Some(c.renew_deadline());
    c.retry_period = Some(leader_core::MAX_TTL);
    c.release_timeout = leader_core::MAX_TTL;
    c.unhealthy_after = Some(leader_core::MAX_TTL);
    c.validate().expect("bounds are inclusive");
}

#[test]
fn an_enabled_election_needs_a_resource_name_single_instance_mode_does_not() {
    let err = ElectionConfig::default().validate().expect_err("unnamed");
    assert!(err.message().starts_with("ResourceName: not set"), "{err}");
    let mut single = ElectionConfig::default();
    single.enabled = false;
    single
        .validate()
        .expect("single-instance mode shares nothing");
    assert_eq!(
        single.lease_key().expect("key").resource(),
        leader_core::UNNAMED_RESOURCE
    );
}
