//! The Redis keys of one lease, all in the same cluster hash slot.
//!
//! For the lease key `K` (`prefix + resource`, e.g. `honua:leader:honua-server`):
//!
//! | key | type | content | TTL |
//! |---|---|---|---|
//! | `K` | string | the holder id (`redis-cli GET K` shows the leader) | the lease TTL |
//! | `{K}:term` | hash | `holder`, `token`, `meta` of the current term | the lease TTL |
//! | `{K}:token` | string | the fencing counter: the last token minted | none: never reset |
//! | channel `{K}:events` | pub/sub | `released <token>` on release, `metadata <token> <holder>` on update, `resign <token>` on a resign request | |
//!
//! `{K}` makes Redis Cluster hash only `K` for the sibling keys, which is
//! exactly what it hashes for `K` itself, so all three share a slot and one
//! script can touch them. When `K` already contains a hash tag (`{tag}`),
//! Cluster hashes only `tag` for `K`, and any key starting with `K` has the
//! same first tag, so the siblings are `K:term` and `K:token` instead. A key
//! with a `}` but no valid tag (`a}b`, `x{}y`) cannot be given a sibling in
//! its slot; such keys are refused on a cluster and work elsewhere.

/// Suffix of the per-term record.
const TERM: &str = ":term";
/// Suffix of the fencing counter.
const TOKEN: &str = ":token";
/// Suffix of the notification channel.
const EVENTS: &str = ":events";

/// The hash tag Redis Cluster uses for `key`: the bytes between the first
/// `{` and the first `}` after it, if that is not empty.
pub fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let close = key[open + 1..].find('}')?;
    let tag = &key[open + 1..open + 1 + close];
    (!tag.is_empty()).then_some(tag)
}

/// The names of one lease's keys and channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLayout {
    /// The lease key: its value is the holder id.
    pub lease: String,
    /// The per-term record (hash with `holder`, `token` and `meta`).
    pub term: String,
    /// The fencing counter (never deleted, never expires).
    pub counter: String,
    /// The pub/sub channel release, metadata and resign notifications go to.
    pub channel: String,
    /// Whether all keys hash to the same cluster slot.
    pub same_slot: bool,
}

impl KeyLayout {
    /// The layout for lease key `lease`.
    pub fn new(lease: &str) -> Self {
        let (base, same_slot) = if hash_tag(lease).is_some() {
            (lease.to_owned(), true)
        } else {
            (format!("{{{lease}}}"), !lease.contains('}'))
        };
        KeyLayout {
            lease: lease.to_owned(),
            term: format!("{base}{TERM}"),
            counter: format!("{base}{TOKEN}"),
            channel: format!("{base}{EVENTS}"),
            same_slot,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::cluster_routing::Slot;

    #[test]
    fn siblings_share_the_lease_keys_slot() {
        for key in [
            "honua:leader:honua-server",
            "p:{tag}x",
            "{tag}",
            "{a}{b}",
            "x{y",
            "ключ-🔑",
        ] {
            let layout = KeyLayout::new(key);
            assert!(layout.same_slot, "{key}");
            let slot = Slot::for_key(key);
            assert_eq!(Slot::for_key(&layout.term), slot, "term of {key}");
            assert_eq!(Slot::for_key(&layout.counter), slot, "counter of {key}");
        }
    }

    #[test]
    fn keys_with_a_stray_closing_brace_are_flagged() {
        for key in ["a}b", "x{}y}", "a{}b{c}"] {
            let layout = KeyLayout::new(key);
            assert!(!layout.same_slot, "{key}");
            assert_ne!(Slot::for_key(&layout.counter), Slot::for_key(key), "{key}");
        }
    }

    #[test]
    fn layout_is_the_documented_one() {
        let layout = KeyLayout::new("honua:leader:honua-server");
        assert_eq!(layout.lease, "honua:leader:honua-server");
        assert_eq!(layout.term, "{honua:leader:honua-server}:term");
        assert_eq!(layout.counter, "{honua:leader:honua-server}:token");
        assert_eq!(layout.channel, "{honua:leader:honua-server}:events");
        let tagged = KeyLayout::new("app:{orders}:leader");
        assert_eq!(tagged.counter, "app:{orders}:leader:token");
    }

    #[test]
    fn hash_tag_matches_redis_rules() {
        assert_eq!(hash_tag("a{b}c"), Some("b"));
        assert_eq!(hash_tag("a{}c{d}"), None);
        assert_eq!(hash_tag("a{b"), None);
        assert_eq!(hash_tag("}{b}"), Some("b"));
    }
}
