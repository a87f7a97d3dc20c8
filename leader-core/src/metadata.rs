//! [`Metadata`]: the small value a holder publishes with its lease (etcd's
//! `Proclaim`, Curator's participant data), such as the address followers
//! forward requests to.

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};

/// The largest metadata value, in bytes. Small on purpose: it travels with
/// every lease read, and a store keeps it next to the lease.
pub const MAX_METADATA_LEN: usize = 1024;

/// A holder's metadata: at most [`MAX_METADATA_LEN`] bytes of data, stored
/// atomically with the lease and read back with the holder and token.
///
/// It is data, not a name: any bytes are allowed, and its `Debug` shows only
/// its length, so it never reaches a log by accident.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Metadata(Arc<[u8]>);

impl Metadata {
    /// Checks the size and wraps `value`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument)
    /// when `value` is longer than [`MAX_METADATA_LEN`] bytes.
    pub fn new(value: impl Into<Vec<u8>>) -> Result<Metadata> {
        let value = value.into();
        if value.len() > MAX_METADATA_LEN {
            return Err(Error::invalid_argument(format!(
                "leader metadata is {} bytes long; the limit is {MAX_METADATA_LEN}",
                value.len()
            )));
        }
        Ok(Metadata(value.into()))
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The value as text, when it is UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Metadata({} bytes)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_is_bounded_and_debug_hides_the_value() {
        let at_limit = Metadata::new(vec![b'x'; MAX_METADATA_LEN]).expect("at the limit");
        assert_eq!(at_limit.len(), MAX_METADATA_LEN);
        let e = Metadata::new(vec![0u8; MAX_METADATA_LEN + 1]).expect_err("over the limit");
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("1025 bytes"), "{e}");
        let secret = Metadata::new("10.0.0.7:8080").expect("small");
        assert_eq!(secret.as_str(), Some("10.0.0.7:8080"));
        assert!(!format!("{secret:?}").contains("10.0.0.7"));
    }
}
