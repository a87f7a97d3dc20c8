//! The [`Fixture`] a store's tests provide: clients, optional server
//! control, optional per-client links; and [`ServerFixture`] over a test
//! server.

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leader_core::LeaseStore;

use super::Profile;
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

    /// Whether [`Fixture::resource_counts`] counts server-side resources
    /// (the leak case). Default: no, and the leak case does not apply.
    fn counts_resources(&self) -> bool {
        false
    }

    /// Counts the server-side resources a client could leak: connections
    /// (`CLIENT LIST`, `pg_stat_activity`), locks (`pg_locks`, keys) and
    /// leases (etcd's lease list), by name. Called before and after many
    /// cycles: each count must come back to about where it was.
    ///
    /// # Errors
    ///
    /// When the server cannot be asked; the default has nothing to count.
    async fn resource_counts(&self) -> leader_core::Result<ResourceCounts> {
        Err(leader_core::Error::unsupported(
            "this fixture counts no server-side resources",
        ))
    }
}

/// Server-side resource counts by name (`"connections"`, `"advisory
/// locks"`, `"leases"`, ...), as [`Fixture::resource_counts`] reports them.
pub type ResourceCounts = std::collections::BTreeMap<String, u64>;

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
    fn counts_resources(&self) -> bool {
        (**self).counts_resources()
    }
    async fn resource_counts(&self) -> leader_core::Result<ResourceCounts> {
        (**self).resource_counts().await
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

/// A [`Fixture`] over a test [`Server`] (or a handle dereferencing to one,
/// such as [`RedisServer`](crate::servers::RedisServer)): clients come from
/// `connect(url)`, and the server is controllable unless it is external.
pub struct ServerFixture<S> {
    name: String,
    server: S,
    connect: ConnectFn,
    counter: Option<CountFn>,
    profile: Profile,
}

type ConnectFn = Box<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = leader_core::Result<Arc<dyn LeaseStore>>> + Send>>
        + Send
        + Sync,
>;

type CountFn = Box<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = leader_core::Result<ResourceCounts>> + Send>>
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
            counter: None,
            profile: Profile::real_server(),
        }
    }

    /// Counts server-side resources with `count(server.url())` (see
    /// [`Fixture::resource_counts`]), which turns the leak case on.
    pub fn with_resource_counter<F, Fut>(mut self, count: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = leader_core::Result<ResourceCounts>> + Send + 'static,
    {
        self.counter = Some(Box::new(move |url| Box::pin(count(url))));
        self
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

    fn counts_resources(&self) -> bool {
        self.counter.is_some()
    }

    async fn resource_counts(&self) -> leader_core::Result<ResourceCounts> {
        match &self.counter {
            Some(count) => count(self.server.url().to_owned()).await,
            None => Err(leader_core::Error::unsupported(
                "this fixture counts no server-side resources",
            )),
        }
    }
}
