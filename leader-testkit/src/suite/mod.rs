//! The conformance suite every store runs: plain `pub async fn` cases over a
//! [`Ctx`] (a store client, a random key prefix, timing), chosen by the
//! store's declared [`Capabilities`], plus a runner and a macro.
//!
//! A store crate's whole test file:
//!
//! ```ignore
//! use std::sync::Arc;
//! use leader_core::LeaseStore;
//! use leader_testkit::{servers::RedisServer, suite::ServerFixture};
//!
//! async fn fixture() -> ServerFixture<RedisServer> {
//!     let server = RedisServer::from_env_or_start().await.expect("redis-server");
//!     ServerFixture::new("redis", server, |url| async move {
//!         Ok(Arc::new(my_store::RedisStore::connect(&url).await?) as Arc<dyn LeaseStore>)
//!     })
//! }
//!
//! leader_testkit::conformance_tests!(fixture().await);
//! ```
//!
//! [`conformance_tests!`](crate::conformance_tests) expands to one
//! `#[tokio::test]` per case (so a failure names its case); each test
//! builds its own fixture. [`run_all`] runs every case on one fixture
//! instead, naming each as it runs and reporting all failures at the end.
//!
//! Cases that do not apply to a store (by its capabilities, or because the
//! fixture cannot stop its server) pass with a "not applicable" line naming
//! the reason: nothing is skipped by hand.
//!
//! Timing bounds derive from the [`Profile`] (lease, slack): short leases
//! keep real-server runs fast; the slack absorbs a loaded CI machine.

mod election;
mod memory;
mod store;

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leader_core::{Capabilities, ElectionConfig, HolderId, LeaseKey, LeaseStore};

pub use memory::{FaultyLink, MemoryFixture};

use crate::servers::Server;

/// A store under test: how to get clients, and optionally how to stop and
/// start its server.
#[async_trait]
pub trait Fixture: Send + Sync + 'static {
    /// A short name for reports (`"redis"`, `"postgres via proxy"`).
    fn name(&self) -> String;

    /// A new, independent client of the store (its own connections).
    /// Cases that need several clients (concurrent acquirers, electors,
    /// session loss) call it several times.
    ///
    /// # Errors
    ///
    /// When the client cannot be built; the case fails with this error.
    async fn store(&self) -> leader_core::Result<Arc<dyn LeaseStore>>;

    /// Control of the store's server, for the store-down and store-back
    /// cases. `None` (the default) makes those cases not applicable.
    fn control(&self) -> Option<&dyn ServerControl> {
        None
    }

    /// Timing for this store. Default: [`Profile::real_server`].
    fn profile(&self) -> Profile {
        Profile::real_server()
    }

    /// Whether [`Fixture::linked_client`] gives clients whose link to the
    /// store can be cut or slowed (the partition and slow-store cases).
    fn links(&self) -> bool {
        false
    }

    /// A new client whose connection to the store goes through a [`Link`]
    /// the case can cut (a partition of this client only) or slow down.
    /// `Ok(None)` (the default) when the fixture has no such clients.
    ///
    /// # Errors
    ///
    /// When the client or its link cannot be built.
    async fn linked_client(&self) -> leader_core::Result<Option<LinkedClient>> {
        Ok(None)
    }
}

/// A client and the link that carries its traffic.
pub type LinkedClient = (Arc<dyn LeaseStore>, Box<dyn Link>);

/// The network between one client and the store.
pub trait Link: Send + Sync {
    /// A partition: nothing flows and nothing fails; calls hang until the
    /// client's own timeouts fire. The server notices the dead client after
    /// `server_notices_after` (its TCP keepalive / user timeout), which
    /// matters to session-bound stores.
    fn cut(&self, server_notices_after: Duration);
    /// Back to normal.
    fn heal(&self);
    /// Adds about `delay` to every round trip.
    fn slow(&self, delay: Duration);
}

impl Link for crate::proxy::FaultProxy {
    fn cut(&self, server_notices_after: Duration) {
        self.set_mode(crate::proxy::Mode::Partition {
            upstream_timeout: server_notices_after,
        });
    }
    fn heal(&self) {
        self.set_mode(crate::proxy::Mode::PassThrough);
    }
    fn slow(&self, delay: Duration) {
        // Half each way, a quarter of it random.
        self.set_mode(crate::proxy::Mode::Latency {
            fixed: delay * 3 / 8,
            jitter: delay / 4,
        });
    }
}

#[async_trait]
impl<F: Fixture + ?Sized> Fixture for Arc<F> {
    fn name(&self) -> String {
        (**self).name()
    }
    async fn store(&self) -> leader_core::Result<Arc<dyn LeaseStore>> {
        (**self).store().await
    }
    fn control(&self) -> Option<&dyn ServerControl> {
        (**self).control()
    }
    fn profile(&self) -> Profile {
        (**self).profile()
    }
    fn links(&self) -> bool {
        (**self).links()
    }
    async fn linked_client(&self) -> leader_core::Result<Option<LinkedClient>> {
        (**self).linked_client().await
    }
}

/// Stopping and starting the store's server.
#[async_trait]
pub trait ServerControl: Send + Sync {
    /// Makes the store unreachable as a crash would (connections refused,
    /// open connections broken).
    ///
    /// # Errors
    ///
    /// When the server cannot be stopped.
    async fn stop(&self) -> crate::Result<()>;

    /// Brings the store back on the same address; returns once it answers.
    ///
    /// # Errors
    ///
    /// When it does not come back.
    async fn start(&self) -> crate::Result<()>;

    /// Whether [`ServerControl::pause`] works (default: no).
    fn can_pause(&self) -> bool {
        false
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing
    /// answers. The default refuses.
    ///
    /// # Errors
    ///
    /// When the server cannot be paused.
    async fn pause(&self) -> crate::Result<()> {
        Err(crate::Error::NotRunning {
            operation: "pause",
            server: "this fixture's",
        })
    }

    /// Unfreezes a paused server (SIGCONT).
    ///
    /// # Errors
    ///
    /// When the server cannot be resumed.
    async fn resume(&self) -> crate::Result<()> {
        Err(crate::Error::NotRunning {
            operation: "resume",
            server: "this fixture's",
        })
    }
}

#[async_trait]
impl ServerControl for Server {
    async fn stop(&self) -> crate::Result<()> {
        self.kill().await
    }
    async fn start(&self) -> crate::Result<()> {
        self.restart().await
    }
    fn can_pause(&self) -> bool {
        !self.is_external()
    }
    async fn pause(&self) -> crate::Result<()> {
        Server::pause(self)
    }
    async fn resume(&self) -> crate::Result<()> {
        Server::resume(self)
    }
}

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
    /// For real servers on a loaded 2-core CI box: a 2 s lease, 3 s slack.
    pub fn real_server() -> Self {
        Profile {
            lease: Duration::from_secs(2),
            slack: Duration::from_secs(3),
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

/// A [`Fixture`] over a test [`Server`] (or a handle dereferencing to one,
/// such as [`RedisServer`](crate::servers::RedisServer)): clients come from
/// `connect(url)`, and the server is controllable unless it is external.
pub struct ServerFixture<S> {
    name: String,
    server: S,
    connect: ConnectFn,
    profile: Profile,
}

type ConnectFn = Box<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = leader_core::Result<Arc<dyn LeaseStore>>> + Send>>
        + Send
        + Sync,
>;

impl<S> fmt::Debug for ServerFixture<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerFixture")
            .field("name", &self.name)
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

impl<S: Deref<Target = Server> + Send + Sync + 'static> ServerFixture<S> {
    /// A fixture named `name` whose clients are `connect(server.url())`.
    pub fn new<F, Fut>(name: impl Into<String>, server: S, connect: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = leader_core::Result<Arc<dyn LeaseStore>>> + Send + 'static,
    {
        ServerFixture {
            name: name.into(),
            server,
            connect: Box::new(move |url| Box::pin(connect(url))),
            profile: Profile::real_server(),
        }
    }

    /// Uses `profile` instead of [`Profile::real_server`].
    pub fn with_profile(mut self, profile: Profile) -> Self {
        self.profile = profile;
        self
    }

    /// The server.
    pub fn server(&self) -> &Server {
        &self.server
    }
}

#[async_trait]
impl<S: Deref<Target = Server> + Send + Sync + 'static> Fixture for ServerFixture<S> {
    fn name(&self) -> String {
        if self.server.is_external() {
            format!("{} (external)", self.name)
        } else {
            self.name.clone()
        }
    }

    async fn store(&self) -> leader_core::Result<Arc<dyn LeaseStore>> {
        (self.connect)(self.server.url().to_owned()).await
    }

    fn control(&self) -> Option<&dyn ServerControl> {
        if self.server.is_external() {
            None
        } else {
            Some(&*self.server as &dyn ServerControl)
        }
    }

    fn profile(&self) -> Profile {
        self.profile
    }

    fn links(&self) -> bool {
        true
    }

    async fn linked_client(&self) -> leader_core::Result<Option<LinkedClient>> {
        let proxy = crate::proxy::FaultProxy::start(self.server.addr())
            .await
            .map_err(|e| {
                leader_core::Error::unavailable(format!("cannot start a fault proxy: {e}"))
            })?;
        let client = (self.connect)(self.server.url_via(proxy.addr())).await?;
        Ok(Some((client, Box::new(proxy))))
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

/// Fails the case with a formatted message unless the condition holds.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::suite::Failure::new(format!($($fmt)+)));
        }
    };
}
pub(crate) use ensure;

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

    /// A new client behind a [`Link`] the case can cut or slow.
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

mod runner;
pub use election::*;
pub use runner::{
    CaseOutcome, CaseReport, Level, SuiteReport, assert_all_cases_listed, case_names, check_case,
    run_all, run_case,
};
pub use store::*;
