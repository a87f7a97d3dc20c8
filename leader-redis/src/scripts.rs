//! The Lua scripts behind acquire, renew, release, current, force-release,
//! update-metadata and request-resign.
//!
//! Every script takes `KEYS = [lease, term, counter]` (see [`crate::keys`]),
//! so Redis Cluster routes it by the lease key's slot, which all three share.
//! Redis runs a script atomically with its clock frozen, so the lease key and
//! the term record, set with the same `PX`, expire together. The term record
//! holds the term's metadata too (field `meta`, see [`crate::metadata`]), so
//! whatever reads the token reads the metadata of the same term with it.

use std::sync::LazyLock;

use redis::Script;

/// ARGV: holder, ttl in ms, meta field (empty: no metadata).
/// Returns `{1, token}` when acquired,
/// `{0, holder, token-or-empty, pttl, meta-or-empty}` when someone else
/// holds the key.
///
/// The token is `max(counter, server time in µs) + 1`: strictly greater
/// than the counter, so tokens never repeat while Redis keeps its data, and
/// floored by the server clock, so they keep increasing after Redis lost the
/// counter (a restart without persistence, a failover to a lagging replica),
/// as long as the server clock does not run behind the lost tokens.
///
/// The script does the least work that keeps those guarantees and the key
/// layout (seven commands on the acquiring path): one `INCRBY` of the
/// counter by the step that lifts it past the clock (so Redis does the
/// 64-bit arithmetic and its reply is the token), and the term hash written
/// with one `HSET` of all its fields (it has no others, so no `DEL` first).
/// The `meta` field is written on every acquisition, empty without
/// metadata, so a plain acquire clears the last term's value at no extra
/// command; the refused path reads token and metadata with one `HMGET`.
/// Values stay below 2^53, so Lua's doubles hold them exactly; they are
/// passed to Redis as `%d`-formatted strings, never as Lua numbers.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  local term = redis.call('HMGET', KEYS[2], 'token', 'meta')
  return {0, holder, term[1] or '', redis.call('PTTL', KEYS[1]), term[2] or ''}
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local counter = tonumber(redis.call('GET', KEYS[3]) or '0')
local step = 1
if counter and counter < now then step = now - counter + 1 end
local token = string.format('%d', redis.call('INCRBY', KEYS[3], string.format('%d', step)))
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[2], 'holder', ARGV[1], 'token', token, 'meta', ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return {1, token}
",
    )
});

/// ARGV: holder, ttl in ms, token. Returns 1 when extended, 0 when not held.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('HGET', KEYS[2], 'token') == ARGV[3] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return 1
end
return 0
",
    )
});

/// ARGV: holder, token, channel. Deletes the lease and publishes
/// `released <token>` when held by holder+token. Returns 1 or 0.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('HGET', KEYS[2], 'token') == ARGV[2] then
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('PUBLISH', ARGV[3], 'released ' .. ARGV[2])
  return 1
end
return 0
",
    )
});

/// No ARGV. Returns `{}` when free, else
/// `{holder, token-or-empty, pttl, meta-or-empty}`.
static CURRENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local holder = redis.call('GET', KEYS[1])
if not holder then return {} end
local term = redis.call('HMGET', KEYS[2], 'token', 'meta')
return {holder, term[1] or '', redis.call('PTTL', KEYS[1]), term[2] or ''}
",
    )
});

/// ARGV: channel. Removes the lease (not the counter) whoever holds it and
/// publishes `force-released <token>`. Returns what `CURRENT` would have.
static FORCE_RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('DEL', KEYS[2])
  return {}
end
local term = redis.call('HMGET', KEYS[2], 'token', 'meta')
local token = term[1] or ''
local pttl = redis.call('PTTL', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('PUBLISH', ARGV[1], 'force-released ' .. token)
return {holder, token, pttl, term[2] or ''}
",
    )
});

/// ARGV: holder, token, meta field, channel. Replaces the term's metadata
/// and publishes `metadata <token> <holder>` when held by holder+token
/// (the holder last: it may contain spaces). Leaves the TTLs alone.
/// Returns 1 or 0.
static UPDATE_METADATA: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('HGET', KEYS[2], 'token') == ARGV[2] then
  redis.call('HSET', KEYS[2], 'meta', ARGV[3])
  redis.call('PUBLISH', ARGV[4], 'metadata ' .. ARGV[2] .. ' ' .. ARGV[1])
  return 1
end
return 0
",
    )
});

/// ARGV: token, channel. Publishes `resign <token>` when the current term
/// has that token: `K` is set and holds the term record's holder (so a
/// holder written by something else, which reads with token 0, is never
/// asked), and the record's token is `token`. Changes nothing else.
/// Returns 1 or 0.
static REQUEST_RESIGN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local holder = redis.call('GET', KEYS[1])
local term = redis.call('HMGET', KEYS[2], 'holder', 'token')
if holder and holder == term[1] and term[2] == ARGV[1] then
  redis.call('PUBLISH', ARGV[2], 'resign ' .. ARGV[1])
  return 1
end
return 0
",
    )
});

/// The acquire script.
pub(crate) fn acquire() -> &'static Script {
    &ACQUIRE
}

/// The renew script.
pub(crate) fn renew() -> &'static Script {
    &RENEW
}

/// The release script.
pub(crate) fn release() -> &'static Script {
    &RELEASE
}

/// The current-holder script.
pub(crate) fn current() -> &'static Script {
    &CURRENT
}

/// The force-release script.
pub(crate) fn force_release() -> &'static Script {
    &FORCE_RELEASE
}

/// The update-metadata script.
pub(crate) fn update_metadata() -> &'static Script {
    &UPDATE_METADATA
}

/// The request-resign script.
pub(crate) fn request_resign() -> &'static Script {
    &REQUEST_RESIGN
}
