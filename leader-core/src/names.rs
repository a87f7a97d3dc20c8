//! Validated names: lease keys, holder ids, and the fencing token type.
//!
//! Names are validated once, here, so that every store can rely on them: they
//! are never empty, never contain control characters (which could break log
//! lines, protocol framing or SQL), and have a bounded length.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The longest lease key (prefix plus resource name), in bytes.
pub const MAX_KEY_LEN: usize = 2048;
/// The longest holder id, in bytes.
pub const MAX_HOLDER_LEN: usize = 512;
/// The longest configured instance id, in bytes. The rest of
/// [`MAX_HOLDER_LEN`] is room for the random part the library adds and for
/// a named lock's suffix.
pub const MAX_INSTANCE_ID_LEN: usize = 256;

fn check_name(what: &str, value: &str, max: usize) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::invalid_name(format!(
            "{what} must not be empty or blank"
        )));
    }
    if value.len() > max {
        return Err(Error::invalid_name(format!(
            "{what} is {} bytes long; the limit is {max}",
            value.len()
        )));
    }
    if let Some((at, c)) = value.char_indices().find(|(_, c)| c.is_control()) {
        return Err(Error::invalid_name(format!(
            "{what} contains a control character ({:?}) at byte {at}",
            c
        )));
    }
    Ok(())
}

/// The key a lease lives under in the store: the key prefix followed by the
/// resource name (`honua:leader:` + `honua-server`).
///
/// Colons, braces, spaces and any printable Unicode are allowed; control
/// characters, empty or blank names and keys over [`MAX_KEY_LEN`] bytes are
/// refused with [`ErrorKind::InvalidName`](crate::ErrorKind::InvalidName).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseKey {
    full: String,
    prefix_len: usize,
}

impl LeaseKey {
    /// Builds the key for `resource` under `prefix`. The prefix may be empty;
    /// the resource name may not.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidName`](crate::ErrorKind::InvalidName) naming what is wrong.
    pub fn new(prefix: &str, resource: &str) -> Result<Self> {
        check_name("resource name", resource, MAX_KEY_LEN)?;
        if let Some((at, c)) = prefix.char_indices().find(|(_, c)| c.is_control()) {
            return Err(Error::invalid_name(format!(
                "key prefix contains a control character ({c:?}) at byte {at}"
            )));
        }
        let full = format!("{prefix}{resource}");
        if full.len() > MAX_KEY_LEN {
            return Err(Error::invalid_name(format!(
                "key prefix plus resource name is {} bytes long; the limit is {MAX_KEY_LEN}",
                full.len()
            )));
        }
        Ok(LeaseKey {
            full,
            prefix_len: prefix.len(),
        })
    }

    /// The full key as stored: prefix followed by resource name.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The prefix part.
    pub fn prefix(&self) -> &str {
        &self.full[..self.prefix_len]
    }

    /// The resource name part.
    pub fn resource(&self) -> &str {
        &self.full[self.prefix_len..]
    }
}

impl fmt::Display for LeaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for LeaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.full, f)
    }
}

/// Who holds a lease.
///
/// Every holder id the library mints is unique to one elector or one lock
/// factory ([`HolderId::for_instance`], [`HolderId::generate`]); a named lock
/// adds a per-acquisition suffix (`pod-a/3f9c1a2b4d5e/lock-1`). Stores treat
/// "same holder" as "the same term owner re-acquiring", so two owners must
/// never share an id, whatever the operator configured.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HolderId(String);

impl HolderId {
    /// Validates a holder id: not blank, no control characters, at most
    /// [`MAX_HOLDER_LEN`] bytes.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidName`](crate::ErrorKind::InvalidName) naming what is wrong.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        check_name("holder id", &id, MAX_HOLDER_LEN)?;
        Ok(HolderId(id))
    }

    /// A fresh id when no instance id is configured, in the original
    /// service's form `{machine}_{pid}_{32 hex digits}`. Each call returns a
    /// different id.
    pub fn generate() -> Self {
        let random: u128 = rand::random();
        HolderId(format!(
            "{}_{}_{random:032x}",
            hostname(),
            std::process::id()
        ))
    }

    /// A fresh id for the instance a person named `instance` (a pod name):
    /// the name, `/`, and 12 random hex digits (`pod-a/3f9c1a2b4d5e`). Each
    /// call returns a different id, so two electors or processes given the
    /// same name still never pass for one another, while the store and the
    /// logs show a holder that starts with the name.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidName`](crate::ErrorKind::InvalidName) when
    /// `instance` is blank, has a control character or is longer than
    /// [`MAX_INSTANCE_ID_LEN`] bytes.
    pub fn for_instance(instance: &str) -> Result<Self> {
        check_name("instance id", instance, MAX_INSTANCE_ID_LEN)?;
        // 48 bits: two holders sharing a name collide once in ~2.8e14 pairs,
        // and the id still fits Postgres's 63-byte application_name for
        // instance names up to ~40 bytes (only a display copy there).
        let random = rand::random::<u64>() & 0xffff_ffff_ffff;
        HolderId::new(format!("{instance}/{random:012x}"))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for HolderId {
    type Error = Error;
    fn try_from(value: String) -> Result<Self> {
        HolderId::new(value)
    }
}

impl From<HolderId> for String {
    fn from(value: HolderId) -> Self {
        value.0
    }
}

impl fmt::Display for HolderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for HolderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// This machine's hostname without control characters (at most 128 of
/// them), or `host` when it has none.
pub(crate) fn hostname() -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let host: String = host.chars().filter(|c| !c.is_control()).take(128).collect();
    if host.trim().is_empty() {
        "host".to_owned()
    } else {
        host
    }
}

/// A fencing token: strictly greater for every new leadership term on a
/// resource than for any earlier term. Renewals keep the token.
///
/// Pass it with every write to a protected resource and have the resource
/// refuse tokens lower than the highest it has seen.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FencingToken(pub u64);

impl FencingToken {
    /// The token as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FencingToken({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn keys_accept_colons_braces_spaces_unicode_and_1kib() {
        for name in [
            "a:b:c",
            "{tag}x",
            "with space",
            "ключ-名前-🔑",
            &"x".repeat(1024),
        ] {
            let key = LeaseKey::new("p:", name).expect(name);
            assert_eq!(key.resource(), name);
            assert_eq!(key.prefix(), "p:");
            assert_eq!(key.as_str(), format!("p:{name}"));
        }
    }

    #[test]
    fn keys_refuse_empty_control_and_oversized_names() {
        for (prefix, name, needle) in [
            ("p:", "", "empty"),
            ("p:", "   ", "blank"),
            ("p:", "a\nb", "control character"),
            ("p:", "a\0b", "control character"),
            ("p\r:", "a", "key prefix contains a control"),
            ("p:", &"x".repeat(MAX_KEY_LEN + 1), "limit"),
            (&"p".repeat(MAX_KEY_LEN), "x", "limit"),
        ] {
            let err = LeaseKey::new(prefix, name).expect_err(name);
            assert_eq!(err.kind(), ErrorKind::InvalidName);
            assert!(
                err.to_string().contains(needle),
                "{err} should mention {needle}"
            );
        }
    }

    #[test]
    fn generated_holder_ids_are_unique_and_valid() {
        let a = HolderId::generate();
        let b = HolderId::generate();
        assert_ne!(a, b);
        assert!(HolderId::new(a.as_str()).is_ok());
        let pid = format!("_{}_", std::process::id());
        assert!(a.as_str().contains(&pid));
    }

    #[test]
    fn instance_holder_ids_start_with_the_name_and_differ_per_call() {
        let a = HolderId::for_instance("pod-a").expect("valid");
        let b = HolderId::for_instance("pod-a").expect("valid");
        assert_ne!(a, b);
        for id in [&a, &b] {
            let random = id.as_str().strip_prefix("pod-a/").expect("name first");
            assert_eq!(random.len(), 12, "{id}");
            assert!(random.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
        }
    }

    #[test]
    fn instance_names_are_checked_as_instance_ids() {
        for (name, needle) in [
            ("", "empty"),
            ("a\nb", "control character"),
            (&"x".repeat(MAX_INSTANCE_ID_LEN + 1), "limit is 256"),
        ] {
            let err = HolderId::for_instance(name).expect_err(name);
            assert_eq!(err.kind(), ErrorKind::InvalidName);
            assert!(err.to_string().contains("instance id"), "{err}");
            assert!(err.to_string().contains(needle), "{err}");
        }
        let longest = HolderId::for_instance(&"x".repeat(MAX_INSTANCE_ID_LEN)).expect("fits");
        assert!(HolderId::new(format!("{longest}/lock-{}", u64::MAX)).is_ok());
    }

    #[test]
    fn holder_ids_refuse_control_characters() {
        let err = HolderId::new("a\u{1b}[31m").expect_err("escape must be refused");
        assert_eq!(err.kind(), ErrorKind::InvalidName);
    }
}
