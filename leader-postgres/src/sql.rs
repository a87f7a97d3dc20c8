//! The store's SQL, built once per store from the (validated, quoted)
//! counter table name. Every value travels as a bind parameter.
//!
//! # Schema
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS leader_fencing (
//!     lock_key    bigint      PRIMARY KEY, -- the advisory lock key
//!     resource    text        NOT NULL,    -- the lease key that last took it
//!     token       bigint      NOT NULL,    -- the last fencing token minted
//!     holder      text        NOT NULL,    -- full holder id of the last taker
//!     pid         integer     NOT NULL,    -- its backend pid (pg_backend_pid())
//!     acquired_at timestamptz NOT NULL,    -- when (server clock), for operators
//!     ttl_ms      bigint      NOT NULL,    -- the lease TTL of that term
//!     released    boolean     NOT NULL,    -- the term ended by a release
//!     vacated_at  timestamptz,             -- first seen ended without release
//!     metadata    bytea                    -- the term's leader metadata (NULL: none)
//! );
//! ```
//!
//! A row is written only by a session that holds the row's advisory lock, so
//! the row names the current holder while the lock is held. Each term's
//! `token` is `greatest(last + 1, server clock in µs + 1)`: strictly
//! increasing, and still above the lost tokens when the row is lost (a
//! dropped table, an old backup). Rows are never deleted by the library.
//!
//! `released` and `ttl_ms` implement the lock delay (see
//! [`PostgresConfig::with_lock_delay`](crate::PostgresConfig::with_lock_delay)): a term
//! that ended without a release (crash, terminated session, partition) keeps
//! its seat empty for one TTL after an acquirer first finds it free, on the
//! acquirer's monotonic clock. `vacated_at` records the first sighting on the
//! server's clock, for operators only.
//!
//! `metadata` is written by the statement that mints the token (NULL for a
//! plain acquire) and replaced only by `update_metadata` of the same holder,
//! token and session, so a row never pairs one term's token with another
//! term's metadata. A table of an earlier version, without the column, gets
//! it (`ALTER TABLE .. ADD COLUMN IF NOT EXISTS`) on the store's first use.

use std::sync::Arc;

use crate::config::TableName;

/// The predicate matching one bigint advisory lock (`$1`) in `pg_locks` (`k`)
/// in the current database: Postgres shows the high half of the key in
/// `classid`, the low half in `objid` and `objsubid = 1`.
const LOCK_MATCH: &str = "k.locktype = 'advisory' AND k.granted AND k.objsubid = 1 \
     AND k.classid = (($1::bigint >> 32) & 4294967295)::oid \
     AND k.objid = ($1::bigint & 4294967295)::oid \
     AND k.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())";

/// The store's statements.
#[derive(Debug, Clone)]
pub(crate) struct Statements {
    /// Whether the table (`$1`) exists and has the `metadata` column.
    pub(crate) table_exists: Arc<str>,
    pub(crate) create_table: Arc<str>,
    /// The migration of a table from before leader metadata.
    pub(crate) add_metadata: Arc<str>,
    /// Replaces the metadata of term `$3` of holder `$2` on lock `$1` with
    /// `$4`, only on the session holding the lock, and notifies channel
    /// `$5` with payload `$6`.
    pub(crate) update_metadata: Arc<str>,
    /// Notifies channel `$3` with payload `$4` only if the term with token
    /// `$2` on lock `$1` is current: its row is not released and the
    /// session that wrote it holds the lock. Any connection may run it.
    pub(crate) request_resign: Arc<str>,
    /// The common case's acquisition, on a session whose settings already
    /// fit: the token is minted unless the previous term ended without a
    /// release (then `token` is NULL and the lock is held; `reacquire`
    /// decides on the lock delay). A busy lock's holder is looked up with
    /// `holder` after it.
    pub(crate) acquire_fast: Arc<str>,
    /// Acquisition that also applies the session settings of a TTL.
    pub(crate) acquire_settings: Arc<str>,
    pub(crate) reacquire: Arc<str>,
    pub(crate) reacquire_settings: Arc<str>,
    /// The lock check of a new connection: backend pid and lock `$1` in
    /// `pg_locks`.
    pub(crate) renew: Arc<str>,
    /// The periodic check of a shared session: its backend pid and the
    /// high and low halves of every advisory lock it holds in this database.
    pub(crate) locks_held: Arc<str>,
    /// The cheap renewal check: the backend pid alone.
    pub(crate) renew_pid: Arc<str>,
    /// Who holds lock `$1`: its session's pid and application name, and the
    /// counter row (naming the holder in full when its pid matches).
    pub(crate) holder: Arc<str>,
    pub(crate) terminate: Arc<str>,
    table: Arc<str>,
}

/// The server clock in microseconds + 1: the floor of every new token.
const CLOCK_FLOOR: &str = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint + 1";

/// The session settings of a TTL, applied only when the session's TTL
/// changes (see `store::pool`): `idle_session_timeout` ($7, NULL on servers
/// before 14) and the TCP settings ($8..$11). Referenced by the final SELECT
/// so that Postgres evaluates it; gated on the lock being taken.
const SESSION_SETTINGS: &str = ", s AS MATERIALIZED ( \
       SELECT CASE WHEN $7::text IS NULL THEN NULL \
                   ELSE set_config('idle_session_timeout', $7, false) END AS i, \
              set_config('tcp_keepalives_idle', $8, false) AS b, \
              set_config('tcp_keepalives_interval', $9, false) AS c, \
              set_config('tcp_keepalives_count', $10, false) AS d, \
              set_config('tcp_user_timeout', $11, false) AS e \
       FROM g WHERE g.got)";

impl Statements {
    pub(crate) fn new(table: &TableName) -> Self {
        let t = table.quoted();
        // The holder of lock $1 as the server sees it: the locking session's
        // pid and application_name, and the counter row (which names the
        // holder in full when its pid matches the lock's).
        let holder_where = |extra: &str| {
            format!(
                "SELECT k.pid AS lock_pid, a.application_name AS app, f.holder AS holder, \
                        f.token AS token, f.pid AS row_pid, f.metadata AS metadata \
                 FROM pg_locks k \
                 LEFT JOIN pg_stat_activity a ON a.pid = k.pid \
                 LEFT JOIN {t} f ON f.lock_key = $1 \
                 WHERE {LOCK_MATCH}{extra} LIMIT 1"
            )
        };
        let holder_select = holder_where("");
        // Only looked up when the lock was not taken: a constant condition,
        // so Postgres skips scanning pg_locks on success.
        let holder_if_missed = holder_where(" AND NOT (SELECT got FROM l)");
        // One round trip: try the lock (l); read the previous term (r);
        // decide whether the lock delay holds the seat back (d); if so note
        // when it was first found vacated (v) and give the lock back (x);
        // otherwise (g) configure the session (s) and mint the next token (u);
        // if the lock was busy, report who holds it (h). v, x and h are
        // gated by conditions that do not depend on their rows, which
        // Postgres checks once before scanning anything.
        // Params: $1 key, $2 lease key, $3 holder, $4 lock delay on, $5 TTL
        // in ms, $6 the token of a vacated term this client has already
        // waited out on its own monotonic clock (NULL: none); the settings
        // variant adds $7..$11 (SESSION_SETTINGS). The term's metadata
        // (bytea, NULL: none) is the last parameter: $7, or $12 with settings.
        //
        // The lock delay is decided by the client's clock, not the server's:
        // `d.wait_ms` is the vacated term's TTL (the client holds the seat
        // back that long after it first saw the term vacated), 0 when no
        // delay applies. A stepped server clock therefore cannot shorten it.
        //
        // The token is the larger of the last one + 1 and the server clock
        // in microseconds + 1 (EXCLUDED.token), so that a lost counter row
        // (dropped table, old backup, new database) never makes tokens go
        // back.
        let mint = |lock_expr: &str, settings: bool| {
            let (settings_cte, configured, meta) = if settings {
                (
                    SESSION_SETTINGS,
                    ", (SELECT count(*) FROM s) AS configured",
                    "$12",
                )
            } else {
                ("", "", "$7")
            };
            format!(
                "WITH l AS MATERIALIZED (SELECT {lock_expr} AS got), \
                 r AS MATERIALIZED (SELECT f.released, f.ttl_ms, f.holder, f.token, \
                       f.metadata FROM {t} f WHERE f.lock_key = $1), \
                 d AS MATERIALIZED (SELECT l.got, \
                       CASE WHEN l.got AND $4::boolean AND r.released IS FALSE \
                                 AND r.holder <> $3 AND r.token IS DISTINCT FROM $6::bigint \
                            THEN greatest(1, r.ttl_ms) ELSE 0 END AS wait_ms \
                       FROM l LEFT JOIN r ON true), \
                 v AS (UPDATE {t} f SET vacated_at = coalesce(f.vacated_at, now()) \
                       WHERE (SELECT d.wait_ms FROM d) > 0 AND f.lock_key = $1 RETURNING 1), \
                 x AS MATERIALIZED (SELECT pg_advisory_unlock($1::bigint) AS unlocked \
                       FROM d WHERE d.wait_ms > 0), \
                 g AS MATERIALIZED (SELECT d.got AND d.wait_ms = 0 AS got, d.wait_ms FROM d)\
                 {settings_cte}, \
                 u AS (INSERT INTO {t} AS f (lock_key, resource, token, holder, pid, \
                           acquired_at, ttl_ms, released, vacated_at, metadata) \
                       SELECT $1, $2, {CLOCK_FLOOR}, $3, pg_backend_pid(), now(), $5::bigint, \
                              false, NULL, {meta}::bytea \
                       FROM g WHERE g.got \
                       ON CONFLICT (lock_key) DO UPDATE \
                          SET token = greatest(f.token + 1, EXCLUDED.token), \
                          resource = EXCLUDED.resource, holder = EXCLUDED.holder, \
                          pid = EXCLUDED.pid, acquired_at = EXCLUDED.acquired_at, \
                          ttl_ms = EXCLUDED.ttl_ms, released = false, vacated_at = NULL, \
                          metadata = EXCLUDED.metadata \
                       RETURNING f.token), \
                 h AS MATERIALIZED ({holder_if_missed}) \
                 SELECT g.got, g.wait_ms, (SELECT u.token FROM u) AS token, \
                        pg_backend_pid() AS pid{configured}, \
                        (SELECT count(*) FROM v) + (SELECT count(*) FROM x) AS held_back, \
                        r.holder AS prev_holder, r.token AS prev_token, \
                        r.metadata AS prev_metadata, \
                        h.lock_pid, h.app, h.holder, h.token AS held_token, h.row_pid, \
                        h.metadata \
                 FROM g LEFT JOIN h ON true LEFT JOIN r ON true"
            )
        };
        // The common case in two parts: try the lock (l); mint the token
        // (u) unless the lock delay may apply (the previous term ended
        // without a release, by another holder, and is not one this client
        // has waited out: the ON CONFLICT's WHERE then leaves the row and
        // returns nothing). Same parameters $1..$7 as `mint` without
        // settings. Who holds a busy lock is a second statement (`holder`):
        // planned into this one, even gated off, the lookup's joins over
        // pg_locks, pg_stat_activity and the catalogs cost every acquisition
        // about as much as the upsert (executor start-up and relation locks;
        // pgbench, 2026-11-29).
        let fast = format!(
            "WITH l AS MATERIALIZED (SELECT pg_try_advisory_lock($1::bigint) AS got), \
             u AS (INSERT INTO {t} AS f (lock_key, resource, token, holder, pid, acquired_at, \
                       ttl_ms, released, vacated_at, metadata) \
                   SELECT $1, $2, {CLOCK_FLOOR}, $3, pg_backend_pid(), now(), $5::bigint, \
                          false, NULL, $7::bytea \
                   FROM l WHERE l.got \
                   ON CONFLICT (lock_key) DO UPDATE \
                      SET token = greatest(f.token + 1, EXCLUDED.token), \
                      resource = EXCLUDED.resource, holder = EXCLUDED.holder, \
                      pid = EXCLUDED.pid, acquired_at = EXCLUDED.acquired_at, \
                      ttl_ms = EXCLUDED.ttl_ms, released = false, vacated_at = NULL, \
                      metadata = EXCLUDED.metadata \
                   WHERE f.released OR NOT $4::boolean OR f.holder = $3 \
                      OR f.token IS NOT DISTINCT FROM $6::bigint \
                   RETURNING f.token) \
             SELECT l.got, (SELECT u.token FROM u) AS token, pg_backend_pid() AS pid FROM l"
        );
        let try_lock = "pg_try_advisory_lock($1::bigint)";
        // On a session that already holds the lock (a re-acquisition by the
        // same holder): check it is still held instead of locking again, so
        // the session's lock count stays at one.
        let still_held = format!(
            "EXISTS (SELECT 1 FROM pg_locks k WHERE {LOCK_MATCH} AND k.pid = pg_backend_pid())"
        );
        let locks_held = "SELECT pg_backend_pid() AS pid, \
             coalesce(array_agg(k.classid::bigint), '{}') AS hi, \
             coalesce(array_agg(k.objid::bigint), '{}') AS lo \
             FROM pg_locks k WHERE k.locktype = 'advisory' AND k.granted AND k.objsubid = 1 \
             AND k.pid = pg_backend_pid() \
             AND k.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())";
        let renew = format!(
            "SELECT pg_backend_pid() AS pid, EXISTS (SELECT 1 FROM pg_locks k \
             WHERE {LOCK_MATCH} AND k.pid = pg_backend_pid()) AS held"
        );
        // Ends the holding session ($1, waiting up to $2 ms) and notifies
        // followers ($3, $4). Marks the term released ($5 key, $6 token):
        // a force release is an operator's explicit decision, so the lock
        // delay does not apply to it.
        let terminate = format!(
            "WITH m AS (UPDATE {t} SET released = true \
                  WHERE lock_key = $5 AND pid = $1 AND token = $6 RETURNING 1) \
             SELECT pg_terminate_backend($1::integer, $2::bigint) AS done, \
                    (SELECT true FROM pg_notify($3, $4)) AS notified, \
                    (SELECT count(*) FROM m) AS marked"
        );
        let create_table = format!(
            "CREATE TABLE IF NOT EXISTS {t} ( \
                lock_key bigint PRIMARY KEY, \
                resource text NOT NULL, \
                token bigint NOT NULL, \
                holder text NOT NULL, \
                pid integer NOT NULL, \
                acquired_at timestamptz NOT NULL, \
                ttl_ms bigint NOT NULL, \
                released boolean NOT NULL, \
                vacated_at timestamptz, \
                metadata bytea)"
        );
        // Only by the session that minted the term and still holds its lock
        // (a row names its holder only while the lock is held); the NOTIFY
        // goes out with the commit, after the new value is visible.
        let update_metadata = format!(
            "WITH u AS (UPDATE {t} f SET metadata = $4::bytea \
                  WHERE f.lock_key = $1 AND f.holder = $2 AND f.token = $3::bigint \
                    AND f.pid = pg_backend_pid() AND NOT f.released \
                    AND EXISTS (SELECT 1 FROM pg_locks k \
                                WHERE {LOCK_MATCH} AND k.pid = pg_backend_pid()) \
                  RETURNING 1), \
             n AS MATERIALIZED (SELECT pg_notify($5, $6) FROM u) \
             SELECT (SELECT count(*) FROM u) AS updated, (SELECT count(*) FROM n) AS notified"
        );
        // A row alone may name a term that ended without a release (a
        // crashed or terminated session, the lock delay's case): the lock
        // in pg_locks, held by the row's session, proves the term current.
        // The NOTIFY goes out with the commit, as for metadata.
        let request_resign = format!(
            "WITH c AS MATERIALIZED (SELECT 1 FROM {t} f \
                  WHERE f.lock_key = $1 AND f.token = $2::bigint AND NOT f.released \
                    AND EXISTS (SELECT 1 FROM pg_locks k WHERE {LOCK_MATCH} AND k.pid = f.pid)), \
             n AS MATERIALIZED (SELECT pg_notify($3, $4) FROM c) \
             SELECT (SELECT count(*) FROM c) AS found, (SELECT count(*) FROM n) AS notified"
        );
        Statements {
            table_exists: "SELECT to_regclass($1) IS NOT NULL AS present, \
                 EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = to_regclass($1) \
                         AND a.attname = 'metadata' AND NOT a.attisdropped) AS has_metadata"
                .into(),
            create_table: create_table.into(),
            add_metadata: format!("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS metadata bytea").into(),
            update_metadata: update_metadata.into(),
            request_resign: request_resign.into(),
            acquire_fast: fast.into(),
            acquire_settings: mint(try_lock, true).into(),
            reacquire: mint(&still_held, false).into(),
            reacquire_settings: mint(&still_held, true).into(),
            locks_held: locks_held.into(),
            renew: renew.into(),
            renew_pid: "SELECT pg_backend_pid() AS pid".into(),
            holder: holder_select.into(),
            terminate: terminate.into(),
            table: t.into(),
        }
    }
}

impl Statements {
    /// The release of term `token` on lock `lock_key` as one simple-query
    /// string (one round trip, no bind parameters: every value is an integer
    /// or a name built from one). The term is marked released and committed
    /// *before* the unlock, so that a follower taking the lock at once sees
    /// the release and applies no lock delay; the NOTIFY is delivered when
    /// the last statement commits, after the unlock. The session's settings
    /// stay: other leases may share it, and the next lease reuses them.
    pub(crate) fn release(&self, lock_key: i64, token: i64) -> String {
        let t = &self.table;
        let channel = crate::keys::channel(lock_key);
        let vacated = crate::store::VACATED;
        format!(
            "BEGIN; \
             UPDATE {t} SET released = true \
             WHERE lock_key = {lock_key} AND pid = pg_backend_pid() AND token = {token}; \
             COMMIT; \
             WITH x AS MATERIALIZED (SELECT pg_advisory_unlock({lock_key}::bigint) AS ok) \
             SELECT x.ok, CASE WHEN x.ok THEN (SELECT true FROM pg_notify('{channel}', '{vacated}')) \
                               ELSE false END AS notified \
             FROM x"
        )
    }
}
