//! What a case gets ([`Ctx`]), its timing ([`Profile`]) and how it fails
//! ([`Failure`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leader_core::{Capabilities, ElectionConfig, HolderId, LeaseKey, LeaseStore};

use super::{Fixture, LinkedClient, ServerControl};

/// Timing of a suite run. Every bound a case asserts is derived from these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Profile {
    /// The lease TTL the cases use, and the electors' lease duration (their
    /// renewal interval, retry period and request timeout are a quarter of it).
    pub lease: Duration,
    /// Added to every "must happen within" bound, for scheduling delays on
    /// a loaded machine. Never used to make a safety check pass.
    pub slack: Duration,
    /// The longest one store call may take against a hung server before
    /// the store's own timeout must have answered (`Indeterminate` or
    /// `Unavailable`).
    pub call_timeout: Duration,
}

impl Profile {
    /// For real servers on a loaded 2-core CI box: a 2 s lease, 3 s slack
    /// (or `LEADER_TEST_SLACK_MS` milliseconds when set, for slower machines).
    pub fn real_server() -> Self {
        let slack = std::env::var("LEADER_TEST_SLACK_MS")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(Duration::from_secs(3), Duration::from_millis);
        Profile {
            lease: Duration::from_secs(2),
            slack,
            call_timeout: Duration::from_secs(10),
        }
    }

    /// For in-process stores under paused tokio time: a 2 s lease, 100 ms
    /// slack (paused time makes timing exact; the slack covers task hops).
    pub fn paused_time() -> Self {
        Profile {
            lease: Duration::from_secs(2),
            slack: Duration::from_millis(100),
            call_timeout: Duration::from_secs(10),
        }
    }

    /// Sets [`Profile::lease`].
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Sets [`Profile::call_timeout`].
    pub fn with_call_timeout(mut self, call_timeout: Duration) -> Self {
        self.call_timeout = call_timeout;
        self
    }

    /// Sets [`Profile::slack`].
    pub fn with_slack(mut self, slack: Duration) -> Self {
        self.slack = slack;
        self
    }

    /// The electors' renewal interval, retry period and request timeout.
    pub fn interval(&self) -> Duration {
        self.lease / 4
    }
}

impl Default for Profile {
    fn default() -> Self {
        Self::real_server()
    }
}

/// Why a case failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    message: String,
}

impl Failure {
    /// A failure saying `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

impl From<leader_core::Error> for Failure {
    fn from(e: leader_core::Error) -> Self {
        Failure::new(format!("unexpected store error: {e}"))
    }
}

impl From<crate::Error> for Failure {
    fn from(e: crate::Error) -> Self {
        Failure::new(format!("test server error: {e}"))
    }
}

/// What a case returns.
pub type CaseResult = Result<(), Failure>;

/// What every case gets: the fixture, a default client, a key prefix that
/// is random per run, the capabilities and the timing profile.
pub struct Ctx {
    fixture: Arc<dyn Fixture>,
    store: Arc<dyn LeaseStore>,
    prefix: String,
    profile: Profile,
    caps: Capabilities,
}

impl fmt::Debug for Ctx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ctx")
            .field("fixture", &self.fixture.name())
            .field("prefix", &self.prefix)
            .field("profile", &self.profile)
            .field("capabilities", &self.caps)
            .finish()
    }
}

impl Ctx {
    /// A context for `case` on `fixture`, with a fresh client and a random
    /// key prefix (`lt-<random>-<case>:`).
    ///
    /// # Errors
    ///
    /// When the fixture cannot build a client.
    pub async fn new(fixture: Arc<dyn Fixture>, case: &str) -> Result<Ctx, Failure> {
        let store = fixture.store().await?;
        let caps = store.capabilities();
        let profile = fixture.profile();
        let prefix = format!("lt-{:08x}-{case}:", rand::random::<u32>());
        Ok(Ctx {
            fixture,
            store,
            prefix,
            profile,
            caps,
        })
    }

    /// A context over a single store client with the default profile: for
    /// running one case by hand. Cases needing server control do not apply.
    ///
    /// # Errors
    ///
    /// Never in practice; kept for symmetry with [`Ctx::new`].
    pub async fn for_store(store: Arc<dyn LeaseStore>, profile: Profile) -> Result<Ctx, Failure> {
        Ctx::new(Arc::new(SingleStore { store, profile }), "manual").await
    }

    /// The default client.
    pub fn store(&self) -> &Arc<dyn LeaseStore> {
        &self.store
    }

    /// A new independent client.
    ///
    /// # Errors
    ///
    /// When the fixture cannot build one.
    pub async fn client(&self) -> Result<Arc<dyn LeaseStore>, Failure> {
        Ok(self.fixture.store().await?)
    }

    /// The key for `resource` under this run's prefix.
    ///
    /// # Errors
    ///
    /// When the store's key rules refuse it (they should not for the
    /// suite's names).
    pub fn key(&self, resource: &str) -> Result<LeaseKey, Failure> {
        Ok(LeaseKey::new(&self.prefix, resource)?)
    }

    /// The run's random key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A holder id.
    ///
    /// # Errors
    ///
    /// When `name` is not a valid holder id.
    pub fn holder(&self, name: &str) -> Result<HolderId, Failure> {
        Ok(HolderId::new(name)?)
    }

    /// The timing profile.
    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// The store's capabilities.
    pub fn capabilities(&self) -> Capabilities {
        self.caps
    }

    /// The server control, when the fixture has one.
    pub fn control(&self) -> Option<&dyn ServerControl> {
        self.fixture.control()
    }

    /// A new client behind a [`Link`](super::Link) the case can cut or slow.
    ///
    /// # Errors
    ///
    /// When the fixture has no linked clients or cannot build one.
    pub async fn linked_client(&self) -> Result<LinkedClient, Failure> {
        self.fixture
            .linked_client()
            .await?
            .ok_or_else(|| Failure::new("the fixture has no linked clients"))
    }

    /// The fixture's server-side resource counts (see
    /// [`Fixture::resource_counts`](super::Fixture::resource_counts)).
    ///
    /// # Errors
    ///
    /// When the fixture cannot count.
    pub async fn resource_counts(&self) -> Result<super::ResourceCounts, Failure> {
        self.fixture
            .resource_counts()
            .await
            .map_err(|e| Failure::new(format!("counting server-side resources: {e}")))
    }

    /// Whether the fixture has linked clients.
    pub fn links(&self) -> bool {
        self.fixture.links()
    }

    /// `ttl` rounded up to the store's TTL granularity (what the store
    /// really grants).
    pub fn granted(&self, ttl: Duration) -> Duration {
        let g = self.caps.ttl_granularity.max(Duration::from_millis(1));
        let n = ttl.as_nanos().div_ceil(g.as_nanos());
        g.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// An election config for `resource` and `instance` under this run's
    /// prefix, with the profile's timing: lease [`Profile::lease`];
    /// renewal interval, retry period and request timeout a quarter of it.
    pub fn election_config(&self, resource: &str, instance: &str) -> ElectionConfig {
        let mut config = ElectionConfig::new(resource);
        config.key_prefix = self.prefix.clone();
        config.instance_id = Some(instance.to_owned());
        config.lease_duration = self.profile.lease;
        config.renewal_interval = self.profile.interval();
        config.retry_period = Some(self.profile.interval());
        config.request_timeout = Some(self.profile.interval());
        config.release_timeout = self.profile.lease;
        config
    }
}

/// A fixture that hands out one client.
struct SingleStore {
    store: Arc<dyn LeaseStore>,
    profile: Profile,
}

#[async_trait]
impl Fixture for SingleStore {
    fn name(&self) -> String {
        self.store.kind().to_owned()
    }
    async fn store(&self) -> leader_core::Result<Arc<dyn LeaseStore>> {
        Ok(self.store.clone())
    }
    fn profile(&self) -> Profile {
        self.profile
    }
}
