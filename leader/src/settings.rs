//! Service settings in the card's shape: the `LeaderElection` section plus a
//! store connection string.

use std::fmt;
use std::sync::Arc;

use leader_core::{ElectionConfig, Elector, Error, LeaseStore, Locks, MemoryStore, Result};
use serde_json::Value;

use crate::connect::{StoreOptions, StoreUrl, connect_with};

/// Sections that may hold the store's connection string, in order of
/// precedence: the store-neutral one, then the card's Redis one.
const STORE_SECTIONS: [&str; 2] = ["Store", "Redis"];

/// The election config and the store to run it on.
///
/// Sources, later ones winning: defaults, a JSON document
/// (`{"LeaderElection": {...}, "Store": {"ConnectionString": "..."}}`, or the
/// card's `"Redis": {"ConnectionString": ...}`), then environment variables
/// (`LeaderElection__*`, `Store__ConnectionString`, `Redis__ConnectionString`,
/// or `LEADER_STORE`).
///
/// Election is on by default and needs a store and a `ResourceName`;
/// without a store, [`Settings::start_elector`] and [`Settings::locks`]
/// refuse to start, naming the keys to set. Single-instance mode (this
/// instance always leads, locks only exclude callers in this process) must be
/// asked for with `LeaderElection:Enabled = false`; it logs a warning and
/// health data says `"mode": "single-instance"`.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct Settings {
    /// The election (or lock) configuration.
    pub election: ElectionConfig,
    /// The store URL, if one is configured.
    pub store: Option<StoreUrl>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("election", &self.election)
            .field("store", &self.store)
            .finish()
    }
}

impl Settings {
    /// Settings from a JSON document in the card's `appsettings.json` shape.
    ///
    /// # Errors
    ///
    /// Malformed JSON or an invalid `LeaderElection` section.
    pub fn from_json(document: &str) -> Result<Self> {
        let election = ElectionConfig::from_json(document)?;
        let doc: Value = serde_json::from_str(document)
            .map_err(|e| Error::invalid_config(format!("configuration is not valid JSON: {e}")))?;
        let store = STORE_SECTIONS.iter().find_map(|section| {
            let section = lookup(&doc, section)?;
            lookup(section, "ConnectionString")?
                .as_str()
                .map(StoreUrl::new)
        });
        Ok(Settings { election, store })
    }

    /// Defaults overridden by this process's environment.
    ///
    /// # Errors
    ///
    /// As [`Settings::with_env_from`].
    pub fn from_env() -> Result<Self> {
        Settings::default().with_env_from(std::env::vars())
    }

    /// A JSON file overridden by this process's environment.
    ///
    /// # Errors
    ///
    /// An unreadable file (named in the message) or invalid settings.
    pub fn from_file_and_env(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::invalid_config(format!("cannot read settings file {}: {e}", path.display()))
        })?;
        Settings::from_json(&text)?.with_env_from(std::env::vars())
    }

    /// Applies environment-style variables on top of `self`.
    ///
    /// # Errors
    ///
    /// An unknown `LeaderElection__*` key or a malformed value, naming the variable.
    pub fn with_env_from<I, K, V>(mut self, vars: I) -> Result<Self>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let vars: Vec<(String, String)> = vars
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned()))
            .collect();
        self.election = self
            .election
            .with_env_from(vars.iter().map(|(k, v)| (k, v)))?;
        let find = |name: &str| {
            vars.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
                .filter(|v| !v.trim().is_empty())
        };
        let from_env = find("Store__ConnectionString")
            .or_else(|| find("LEADER_STORE"))
            .or_else(|| find("Redis__ConnectionString"));
        if let Some(url) = from_env {
            self.store = Some(StoreUrl::new(url));
        }
        Ok(self)
    }

    /// Store options derived from the election's timing.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions::with_request_timeout(self.election.request_timeout())
    }

    /// Builds the configured store, or `None` when no store is configured.
    ///
    /// # Errors
    ///
    /// As [`crate::connect`].
    pub fn connect(&self) -> Result<Option<Arc<dyn LeaseStore>>> {
        self.store
            .as_ref()
            .map(|url| connect_with(url, &self.store_options()))
            .transpose()
    }

    /// Starts an elector on the configured store; with `Enabled: false`,
    /// an elector in single-instance mode that always leads (a warning is
    /// logged).
    ///
    /// # Errors
    ///
    /// No store configured while election is enabled (the message names the
    /// keys to set), a missing `ResourceName`, invalid settings or store URL;
    /// must be called inside a tokio runtime.
    pub fn start_elector(&self) -> Result<Elector> {
        if !self.election.enabled {
            warn_single_instance("elector");
            return Elector::start(Arc::new(MemoryStore::new()), self.election.clone());
        }
        Elector::start(self.require_store()?, self.election.clone())
    }

    /// Named locks on the configured store. With `Enabled: false` and no
    /// store, on a store private to this process (locks then only exclude
    /// callers in this process; a warning is logged).
    ///
    /// # Errors
    ///
    /// No store configured while election is enabled (the message names the
    /// keys to set), invalid settings or store URL.
    pub fn locks(&self) -> Result<Locks> {
        let store = match self.connect()? {
            Some(store) => store,
            None if !self.election.enabled => {
                warn_single_instance("named locks");
                Arc::new(MemoryStore::new())
            }
            None => return Err(no_store()),
        };
        Locks::new(store, self.election.clone())
    }

    fn require_store(&self) -> Result<Arc<dyn LeaseStore>> {
        self.connect()?.ok_or_else(no_store)
    }
}

/// Every replica would silently lead without a store: refuse, naming the
/// keys that fix it either way.
fn no_store() -> Error {
    Error::invalid_config(
        "Store: no store configured while LeaderElection:Enabled is true (the default), so \
         replicas cannot agree on a leader. Set Store:ConnectionString (or \
         Store__ConnectionString, LEADER_STORE, Redis__ConnectionString), or set \
         LeaderElection:Enabled to false (LeaderElection__Enabled=false) to run as a single \
         instance that always leads",
    )
}

fn warn_single_instance(what: &str) {
    tracing::warn!(
        what,
        "single-instance mode (LeaderElection:Enabled is false): this instance always leads \
         and excludes no other replica; run exactly one replica"
    );
}

fn lookup<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    value
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}
