//! Election configuration: serde structs in the card's JSON shape, presets,
//! environment overrides and validation in one place.
//!
//! ```json
//! { "LeaderElection": { "ResourceName": "honua-server",
//!                       "LeaseDurationSeconds": 30, "RenewalIntervalSeconds": 10 } }
//! ```
//!
//! Durations accept a number of seconds (fractions allowed: `0.5`) or a human
//! string (`"500ms"`, `"1m 30s"`), under either the card's `...Seconds` key
//! or the shorter key (`LeaseDuration`). Environment variables in the card's
//! form (`LeaderElection__LeaseDurationSeconds=15`) override the file; keys
//! are matched without regard to case, as in .NET configuration.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::health::HealthStatus;
use crate::names::{HolderId, LeaseKey};

/// The configuration section name used in files and environment variables.
pub const SECTION: &str = "LeaderElection";

/// The resource name health and metrics show in single-instance mode when
/// `ResourceName` is not set.
pub const UNNAMED_RESOURCE: &str = "leader";

/// The card's environment presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Preset {
    /// 15 s lease, 5 s renewal, detailed logging.
    Development,
    /// 30 s lease, 10 s renewal, detailed logging.
    Staging,
    /// 30 s lease, 10 s renewal.
    Production,
    /// 60 s lease, 15 s renewal.
    HighLoad,
}

impl Preset {
    /// Every preset, in the card's order.
    pub const ALL: [Preset; 4] = [
        Preset::Development,
        Preset::Staging,
        Preset::Production,
        Preset::HighLoad,
    ];

    /// (lease duration, renewal interval, detailed logging) of the preset.
    pub fn settings(self) -> (Duration, Duration, bool) {
        let s = Duration::from_secs;
        match self {
            Preset::Development => (s(15), s(5), true),
            Preset::Staging => (s(30), s(10), true),
            Preset::Production => (s(30), s(10), false),
            Preset::HighLoad => (s(60), s(15), false),
        }
    }

    /// The preset's name as used in config (`"production"`).
    pub fn name(self) -> &'static str {
        match self {
            Preset::Development => "development",
            Preset::Staging => "staging",
            Preset::Production => "production",
            Preset::HighLoad => "high-load",
        }
    }
}

impl FromStr for Preset {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let norm: String = s
            .chars()
            .filter(|c| !matches!(c, '-' | '_' | ' '))
            .flat_map(char::to_lowercase)
            .collect();
        Preset::ALL
            .into_iter()
            .find(|p| p.name().replace('-', "") == norm)
            .ok_or_else(|| {
                Error::invalid_config(format!(
                    "Preset: unknown preset {s:?}; expected one of development, staging, production, high-load"
                ))
            })
    }
}

/// Configuration of one election (one resource) or of named locks.
///
/// Build it from a file ([`ElectionConfig::from_json`]), from the environment
/// ([`ElectionConfig::from_env`]), from a preset, or in code with
/// [`ElectionConfig::new`] and field assignment. Call
/// [`ElectionConfig::validate`] (the elector does) before use.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ElectionConfig {
    /// The resource being elected for (`honua-server`). No default: two
    /// services that both forgot it would share one lease, so an enabled
    /// election refuses to start without it. In single-instance mode
    /// (`Enabled: false`) it may stay unset; health and metrics then say
    /// [`UNNAMED_RESOURCE`].
    pub resource_name: String,
    /// Prepended to the resource name to form the store key.
    pub key_prefix: String,
    /// A name for this instance, for people (a pod name). The holder id the
    /// store shows starts with it and continues with a random part the
    /// library adds (`pod-a/3f9c1a2b4d5e`), so two instances given the same
    /// name never pass for one another: uniqueness is the library's job, not
    /// the operator's. Unset: a generated id (`{machine}_{pid}_{hex}`).
    /// It is visible in the store and logs: put nothing secret in it.
    pub instance_id: Option<String>,
    /// How long a lease lives in the store without renewal.
    #[serde(rename = "LeaseDurationSeconds", with = "duration_serde")]
    pub lease_duration: Duration,
    /// How often the leader renews.
    #[serde(rename = "RenewalIntervalSeconds", with = "duration_serde")]
    pub renewal_interval: Duration,
    /// The leader steps down when it has not renewed successfully for this
    /// long (measured from when the last successful renewal was sent).
    /// Default: halfway between the renewal interval and the lease duration.
    #[serde(rename = "RenewDeadlineSeconds", with = "opt_duration_serde")]
    pub renew_deadline: Option<Duration>,
    /// How often a follower tries to acquire. Default: the renewal interval.
    /// At most 7 days (as are `ReleaseTimeoutSeconds` and `UnhealthyAfterSeconds`).
    #[serde(rename = "RetryPeriodSeconds", with = "opt_duration_serde")]
    pub retry_period: Option<Duration>,
    /// Random spread added to follower retries, as a fraction of the retry
    /// period (0.0 to 1.0), so followers do not stampede.
    pub retry_jitter: f64,
    /// The assumed worst relative clock-rate difference between this machine
    /// and the store (0.0 to 0.5). Validity ends `lease * (1 - drift)` after
    /// the renewal was sent.
    pub clock_drift: f64,
    /// Longest time a single store request may take before its outcome is
    /// treated as unknown. Default: the renewal interval. At most the renew
    /// deadline, so that an answered acquire is always inside its lease's
    /// validity.
    #[serde(rename = "RequestTimeoutSeconds", with = "opt_duration_serde")]
    pub request_timeout: Option<Duration>,
    /// Longest time a graceful release may take on shutdown.
    #[serde(rename = "ReleaseTimeoutSeconds", with = "duration_serde")]
    pub release_timeout: Duration,
    /// Health is Unhealthy once the store has not answered for this long.
    /// Default: the renew deadline.
    #[serde(rename = "UnhealthyAfterSeconds", with = "opt_duration_serde")]
    pub unhealthy_after: Option<Duration>,
    /// Health status reported by a follower (the card: `Degraded`).
    pub follower_health_status: HealthStatus,
    /// Log every renewal at info level instead of debug.
    #[serde(deserialize_with = "bool_or_string")]
    pub enable_detailed_logging: bool,
    /// Prefix of metric names (`leader_election_is_leader`, ...). Set it to
    /// `honua_leader_election` to keep the card's dashboards.
    pub metrics_prefix: String,
    /// When false, election is disabled: this instance always leads
    /// (single-instance mode, the card's Pattern 3).
    #[serde(deserialize_with = "bool_or_string")]
    pub enabled: bool,
}

impl Default for ElectionConfig {
    fn default() -> Self {
        let (lease, renewal, detailed) = Preset::Production.settings();
        ElectionConfig {
            resource_name: String::new(),
            key_prefix: "leader:".to_owned(),
            instance_id: None,
            lease_duration: lease,
            renewal_interval: renewal,
            renew_deadline: None,
            retry_period: None,
            retry_jitter: 0.2,
            clock_drift: 0.01,
            request_timeout: None,
            release_timeout: Duration::from_secs(5),
            unhealthy_after: None,
            follower_health_status: HealthStatus::Degraded,
            enable_detailed_logging: detailed,
            metrics_prefix: "leader_election".to_owned(),
            enabled: true,
        }
    }
}

impl fmt::Debug for ElectionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ElectionConfig")
            .field("resource_name", &self.resource_name)
            .field("key_prefix", &self.key_prefix)
            .field("instance_id", &self.instance_id)
            .field("lease_duration", &self.lease_duration)
            .field("renewal_interval", &self.renewal_interval)
            .field("renew_deadline", &self.renew_deadline())
            .field("retry_period", &self.retry_period())
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl ElectionConfig {
    /// The production defaults (30 s lease, 10 s renewal) for `resource`.
    pub fn new(resource: impl Into<String>) -> Self {
        ElectionConfig {
            resource_name: resource.into(),
            ..Self::default()
        }
    }

    /// The preset's durations for `resource`.
    pub fn preset(preset: Preset, resource: impl Into<String>) -> Self {
        let (lease, renewal, detailed) = preset.settings();
        ElectionConfig {
            lease_duration: lease,
            renewal_interval: renewal,
            enable_detailed_logging: detailed,
            ..Self::new(resource)
        }
    }

    /// Sets lease duration and renewal interval together (the renew deadline
    /// and retry period follow unless set explicitly).
    pub fn with_timing(mut self, lease_duration: Duration, renewal_interval: Duration) -> Self {
        self.lease_duration = lease_duration;
        self.renewal_interval = renewal_interval;
        self
    }

    /// The effective renew deadline.
    pub fn renew_deadline(&self) -> Duration {
        self.renew_deadline
            .unwrap_or((self.renewal_interval + self.lease_duration) / 2)
    }

    /// The effective follower retry period.
    pub fn retry_period(&self) -> Duration {
        self.retry_period.unwrap_or(self.renewal_interval)
    }

    /// The effective per-request timeout.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout.unwrap_or(self.renewal_interval)
    }

    /// The effective bound after which an unreachable store makes health Unhealthy.
    pub fn unhealthy_after(&self) -> Duration {
        self.unhealthy_after
            .unwrap_or_else(|| self.renew_deadline())
    }

    /// The store key for this config's resource.
    ///
    /// # Errors
    ///
    /// When the prefix or resource name is invalid.
    pub fn lease_key(&self) -> Result<LeaseKey> {
        let resource = if !self.enabled && self.resource_name.trim().is_empty() {
            UNNAMED_RESOURCE
        } else {
            &self.resource_name
        };
        LeaseKey::new(&self.key_prefix, resource).map_err(|e| field_error("ResourceName", e))
    }

    /// A new holder id for one elector or lock factory: the configured
    /// instance id followed by a random part ([`HolderId::for_instance`]),
    /// or a generated id ([`HolderId::generate`]). Every call mints a
    /// different id; an elector keeps the one it got at start.
    ///
    /// # Errors
    ///
    /// When the configured instance id is invalid.
    pub fn holder_id(&self) -> Result<HolderId> {
        match &self.instance_id {
            Some(id) => HolderId::for_instance(id).map_err(|e| field_error("InstanceId", e)),
            None => Ok(HolderId::generate()),
        }
    }

    /// This instance's name for people (health pages, metric labels): the
    /// configured instance id, or the machine's hostname. Unlike a holder id
    /// it is the same for every elector of the process and need not be unique.
    pub fn instance_name(&self) -> String {
        match &self.instance_id {
            Some(id) => id.clone(),
            None => crate::names::hostname(),
        }
    }

    /// Checks every rule, naming the field that breaks one.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig) with the field name first.
    pub fn validate(&self) -> Result<()> {
        if self.enabled && self.resource_name.is_empty() {
            return Err(Error::invalid_config(
                "ResourceName: not set; name the resource this election is for, one per service \
                 (\"ResourceName\" in the LeaderElection section, or \
                 LeaderElection__ResourceName), or services that forget it share one lease",
            ));
        }
        self.validate_for_locks()
    }

    /// Every rule except the resource name, which named locks do not use
    /// (each lock names its own).
    pub(crate) fn validate_for_locks(&self) -> Result<()> {
        let positive = [
            ("LeaseDurationSeconds", self.lease_duration),
            ("RenewalIntervalSeconds", self.renewal_interval),
            ("RenewDeadlineSeconds", self.renew_deadline()),
            ("RetryPeriodSeconds", self.retry_period()),
            ("RequestTimeoutSeconds", self.request_timeout()),
            ("ReleaseTimeoutSeconds", self.release_timeout),
            ("UnhealthyAfterSeconds", self.unhealthy_after()),
        ];
        for (field, value) in positive {
            if value.is_zero() {
                return Err(Error::invalid_config(format!(
                    "{field}: must be greater than zero"
                )));
            }
        }
        crate::store::check_ttl(self.lease_duration)
            .map_err(|e| Error::invalid_config(format!("LeaseDurationSeconds: {}", e.message())))?;
        // Deadlines are `Instant`s plus these; past any sane value the sums
        // overflow (a huge retry period used to panic the elector task).
        let bounded = [
            ("RetryPeriodSeconds", self.retry_period()),
            ("ReleaseTimeoutSeconds", self.release_timeout),
            ("UnhealthyAfterSeconds", self.unhealthy_after()),
        ];
        for (field, value) in bounded {
            if value > crate::timing::LONGEST {
                return Err(Error::invalid_config(format!(
                    "{field}: {value:?} is longer than the limit of {:?}",
                    crate::timing::LONGEST
                )));
            }
        }
        if self.renewal_interval >= self.lease_duration {
            return Err(Error::invalid_config(format!(
                "RenewalIntervalSeconds: {:?} must be shorter than LeaseDurationSeconds ({:?}); \
                 about a third of the lease is typical",
                self.renewal_interval, self.lease_duration
            )));
        }
        if self.renew_deadline() >= self.lease_duration {
            return Err(Error::invalid_config(format!(
                "RenewDeadlineSeconds: {:?} must be shorter than LeaseDurationSeconds ({:?}) so the \
                 leader steps down before its lease can expire",
                self.renew_deadline(),
                self.lease_duration
            )));
        }
        if self.renew_deadline() < self.renewal_interval {
            return Err(Error::invalid_config(format!(
                "RenewDeadlineSeconds: {:?} must not be shorter than RenewalIntervalSeconds ({:?})",
                self.renew_deadline(),
                self.renewal_interval
            )));
        }
        if self.request_timeout() > self.renew_deadline() {
            return Err(Error::invalid_config(format!(
                "RequestTimeoutSeconds: {:?} must not be longer than RenewDeadlineSeconds ({:?}): \
                 a renewal still unanswered at the deadline cannot keep the lease, and an acquire \
                 answered later could arrive after the lease it took stopped being valid",
                self.request_timeout(),
                self.renew_deadline()
            )));
        }
        if !(0.0..=1.0).contains(&self.retry_jitter) {
            return Err(Error::invalid_config(format!(
                "RetryJitter: {} must be between 0.0 and 1.0",
                self.retry_jitter
            )));
        }
        if !(0.0..0.5).contains(&self.clock_drift) {
            return Err(Error::invalid_config(format!(
                "ClockDrift: {} must be at least 0.0 and below 0.5",
                self.clock_drift
            )));
        }
        let validity = self.lease_duration.mul_f64(1.0 - self.clock_drift);
        if self.renew_deadline() >= validity {
            return Err(Error::invalid_config(format!(
                "RenewDeadlineSeconds: {:?} leaves no safety margin: with ClockDrift {} the lease is \
                 only trusted for {:?}",
                self.renew_deadline(),
                self.clock_drift,
                validity
            )));
        }
        if !self.resource_name.is_empty() && self.resource_name.trim().is_empty() {
            return Err(Error::invalid_config("ResourceName: must not be blank"));
        }
        if self.metrics_prefix.is_empty()
            || !self
                .metrics_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            || self
                .metrics_prefix
                .starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(Error::invalid_config(format!(
                "MetricsPrefix: {:?} must be letters, digits and underscores, not starting with a digit",
                self.metrics_prefix
            )));
        }
        if self.resource_name.is_empty() {
            // Nothing but the prefix to check (locks name their own keys).
            LeaseKey::new(&self.key_prefix, UNNAMED_RESOURCE)
                .map_err(|e| field_error("KeyPrefix", e))?;
        } else {
            self.lease_key()?;
        }
        if self.instance_id.is_some() {
            self.holder_id()?;
        }
        Ok(())
    }

    /// Loads the `LeaderElection` section of a JSON document (the card's
    /// `appsettings.json` shape). A document without the section yields the
    /// defaults. A `Preset` key applies that preset's durations first; other
    /// keys override it.
    ///
    /// # Errors
    ///
    /// Malformed JSON, unknown keys, wrong value types.
    pub fn from_json(document: &str) -> Result<Self> {
        let doc: Value = serde_json::from_str(document)
            .map_err(|e| Error::invalid_config(format!("configuration is not valid JSON: {e}")))?;
        let section = match &doc {
            Value::Object(map) => map
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(SECTION))
                .map(|(_, v)| v.clone()),
            _ => return Err(Error::invalid_config("configuration must be a JSON object")),
        };
        Self::from_section(section.unwrap_or(Value::Object(Map::new())))
    }

    /// The defaults overridden by `LeaderElection__*` variables of this process.
    ///
    /// # Errors
    ///
    /// As [`ElectionConfig::with_env_from`].
    pub fn from_env() -> Result<Self> {
        Self::default().with_env_from(std::env::vars())
    }

    /// Applies `LeaderElection__*` variables of this process on top of `self`.
    ///
    /// # Errors
    ///
    /// As [`ElectionConfig::with_env_from`].
    pub fn with_env(self) -> Result<Self> {
        self.with_env_from(std::env::vars())
    }

    /// Applies `LeaderElection__Key=value` pairs from `vars` on top of `self`
    /// (the card's form; keys are matched without regard to case).
    ///
    /// # Errors
    ///
    /// A variable naming an unknown key, or a value of the wrong type; the
    /// message names the variable.
    pub fn with_env_from<I, K, V>(self, vars: I) -> Result<Self>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut section = match serde_json::to_value(&self) {
            Ok(Value::Object(map)) => map,
            _ => {
                return Err(Error::invalid_config(
                    "configuration could not be serialized",
                ));
            }
        };
        let prefix = format!("{SECTION}__").to_ascii_lowercase();
        let mut preset = None;
        let mut overrides = Vec::new();
        for (name, value) in vars {
            let name = name.as_ref();
            if name.len() <= prefix.len() || !name.is_char_boundary(prefix.len()) {
                continue;
            }
            if !name[..prefix.len()].eq_ignore_ascii_case(&prefix) {
                continue;
            }
            let field = &name[prefix.len()..];
            if field.eq_ignore_ascii_case("Preset") {
                preset = Some(value.as_ref().parse::<Preset>()?);
            } else {
                overrides.push((field.to_owned(), name.to_owned(), value.as_ref().to_owned()));
            }
        }
        if let Some(preset) = preset {
            let (lease, renewal, detailed) = preset.settings();
            section.insert("LeaseDurationSeconds".into(), lease.as_secs_f64().into());
            section.insert(
                "RenewalIntervalSeconds".into(),
                renewal.as_secs_f64().into(),
            );
            section.insert("EnableDetailedLogging".into(), detailed.into());
        }
        for (field, var, value) in overrides {
            let key = canonical_key(&field).ok_or_else(|| {
                Error::invalid_config(format!("{var}: unknown setting {field:?} in {SECTION}"))
            })?;
            section.insert(key.to_owned(), Value::String(value));
        }
        Self::from_value(Value::Object(section))
    }

    fn from_section(section: Value) -> Result<Self> {
        let Value::Object(map) = section else {
            return Err(Error::invalid_config(format!(
                "{SECTION}: must be a JSON object"
            )));
        };
        let mut map = canonicalize(map);
        if let Some(preset) = map.remove("Preset") {
            let Value::String(name) = preset else {
                return Err(Error::invalid_config("Preset: must be a string"));
            };
            let (lease, renewal, detailed) = name.parse::<Preset>()?.settings();
            map.entry("LeaseDurationSeconds")
                .or_insert(lease.as_secs_f64().into());
            map.entry("RenewalIntervalSeconds")
                .or_insert(renewal.as_secs_f64().into());
            map.entry("EnableDetailedLogging")
                .or_insert(detailed.into());
        }
        Self::from_value(Value::Object(map))
    }

    fn from_value(value: Value) -> Result<Self> {
        let Value::Object(map) = value else {
            return Err(Error::invalid_config(format!(
                "{SECTION}: must be a JSON object"
            )));
        };
        serde_json::from_value(Value::Object(canonicalize(map)))
            .map_err(|e| Error::invalid_config(format!("{SECTION}: {e}")))
    }
}

/// Every key the section accepts, in canonical spelling. Duration keys may
/// also be written without their `Seconds` suffix.
const KEYS: &[&str] = &[
    "ResourceName",
    "KeyPrefix",
    "InstanceId",
    "LeaseDurationSeconds",
    "RenewalIntervalSeconds",
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

/// The canonical spelling of a known key (`leaseduration` ->
/// `LeaseDurationSeconds`), or `None` for an unknown one.
fn canonical_key(key: &str) -> Option<&'static str> {
    KEYS.iter().copied().find(|k| {
        k.eq_ignore_ascii_case(key)
            || (k.ends_with("Seconds") && k[..k.len() - "Seconds".len()].eq_ignore_ascii_case(key))
    })
}

/// Rewrites known keys to their canonical spelling; unknown keys are kept so
/// that serde reports them by name.
fn canonicalize(map: Map<String, Value>) -> Map<String, Value> {
    map.into_iter()
        .map(|(k, v)| (canonical_key(&k).map(str::to_owned).unwrap_or(k), v))
        .collect()
}

fn field_error(field: &str, e: Error) -> Error {
    Error::invalid_config(format!("{field}: {}", e.message()))
}

/// Parses a duration: a number of seconds (`30`, `0.25`) or a human string
/// (`"500ms"`, `"1m 30s"`).
///
/// # Errors
///
/// Negative, non-finite or unparseable values.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<f64>() {
        return secs_to_duration(secs);
    }
    humantime::parse_duration(text).map_err(|e| {
        Error::invalid_config(format!(
            "{text:?} is not a duration ({e}); use seconds (\"1.5\") or units (\"1500ms\", \"2m\")"
        ))
    })
}

fn secs_to_duration(secs: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(secs)
        .map_err(|_| Error::invalid_config(format!("{secs} is not a valid number of seconds")))
}

fn bool_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum B {
        B(bool),
        S(String),
    }
    match B::deserialize(d)? {
        B::B(b) => Ok(b),
        B::S(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(serde::de::Error::custom(format!(
                "{s:?} is not true or false"
            ))),
        },
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Secs(f64),
    Text(String),
}

impl RawDuration {
    fn into_duration<E: serde::de::Error>(self) -> Result<Duration, E> {
        match self {
            RawDuration::Secs(s) => secs_to_duration(s),
            RawDuration::Text(t) => parse_duration(&t),
        }
        .map_err(|e| E::custom(e.message()))
    }
}

mod duration_serde {
    use super::*;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        RawDuration::deserialize(d)?.into_duration()
    }
}

mod opt_duration_serde {
    use super::*;

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_f64(d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<RawDuration>::deserialize(d)?
            .map(RawDuration::into_duration)
            .transpose()
    }
}
