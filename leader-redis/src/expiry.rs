//! Expired-key notifications: whether followers may wait for the server to
//! tell them a lease expired instead of polling for it.

/// Whether watchers use the server's expired-key events
/// ([`RedisConfig::with_expiry_notifications`](crate::RedisConfig::with_expiry_notifications)).
///
/// Redis publishes an event on `__keyevent@<db>__:expired` for every key
/// that expires when its `notify-keyspace-events` setting contains `E` and
/// `x` (or `A`, which includes `x`), for example `notify-keyspace-events Ex`.
/// With those events a follower learns that a crashed leader's lease ran out
/// without asking, so it stops polling (the elector keeps one safety poll
/// every four lease durations). The library never changes the server's
/// configuration: an operator enables the setting (`CONFIG SET
/// notify-keyspace-events Ex`, or in `redis.conf`, or a managed service's
/// parameter group).
///
/// The channel carries every expired key of the database: on a server with
/// many expiring keys, each one is a message to the store's subscription
/// connection, which discards the ones it does not watch.
///
/// Never used on Redis Cluster: each node publishes the expiries of its own
/// keys on its own connections, and the store keeps one subscription
/// connection for the whole cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ExpiryNotifications {
    /// Ask the server with `CONFIG GET notify-keyspace-events` each time the
    /// subscription connection opens, and use the events when they are
    /// enabled. When `CONFIG` is denied (ACLs, managed services that rename
    /// it), expiries are polled as without the events. Events turned off
    /// on a running server are noticed when the connection next opens;
    /// until then a crashed leader is replaced at the safety poll. The
    /// default.
    #[default]
    Detect,
    /// Use the events without asking: for servers that publish them but deny
    /// `CONFIG`. If the server does not in fact publish them, a crashed
    /// leader is replaced only at the elector's safety poll (four lease
    /// durations) instead of shortly after its lease ran out.
    Assume,
    /// Never use them: followers poll for expiries.
    Off,
}

/// Whether a `notify-keyspace-events` value publishes expired events on the
/// keyevent channel: `E` and either `x` or the `A` alias (which includes it).
pub(crate) fn pushes_expired_events(flags: &str) -> bool {
    flags.contains('E') && (flags.contains('x') || flags.contains('A'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyevent_expiries_need_e_and_x() {
        for on in ["Ex", "xE", "AE", "KEA", "gxE"] {
            assert!(pushes_expired_events(on), "{on}");
        }
        for off in ["", "Kx", "E", "KA", "Eg$lshzetd"] {
            assert!(!pushes_expired_events(off), "{off}");
        }
    }
}
