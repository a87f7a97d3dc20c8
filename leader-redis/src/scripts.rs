//! The Lua scripts behind acquire, renew, release, current and force-release.
//!
//! Every script takes `KEYS = [lease, term, counter]` (see [`crate::keys`]),
//! so Redis Cluster routes it by the lease key's slot, which all three share.
//! Redis runs a script atomically with its clock frozen, so the lease key and
//! the term record, set with the same `PX`, expire together.

use std::sync::LazyLock;

use redis::Script;

/// ARGV: holder, ttl in ms.
/// Returns `{1, token}` when acquired,
/// `{0, holder, token-or-empty, pttl}` when someone else holds the key.
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
/// with one `HSET` of both its fields (it has no others, so no `DEL` first).
/// Values stay below 2^53, so Lua's doubles hold them exactly; they are
/// passed to Redis as `%d`-formatted strings, never as Lua numbers.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  local token = redis.call('HGET', KEYS[2], 'token') or ''
  return {0, holder, token, redis.call('PTTL', KEYS[1])}
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local counter = tonumber(redis.call('GET', KEYS[3]) or '0')
local step = 1
if counter and counter < now then step = now - counter + 1 end
local token = string.format('%d', redis.call('INCRBY', KEYS[3], string.format('%d', step)))
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[2], 'holder', ARGV[1], 'token', token)
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

/// No ARGV. Returns `{}` when free, else `{holder, token-or-empty, pttl}`.
static CURRENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local holder = redis.call('GET', KEYS[1])
if not holder then return {} end
return {holder, redis.call('HGET', KEYS[2], 'token') or '', redis.call('PTTL', KEYS[1])}
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
local token = redis.call('HGET', KEYS[2], 'token') or ''
local pttl = redis.call('PTTL', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('PUBLISH', ARGV[1], 'force-released ' .. token)
return {holder, token, pttl}
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
