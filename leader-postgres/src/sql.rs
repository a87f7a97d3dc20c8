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
//!     acquired_at timestamptz NOT NULL     -- when (server clock), for operators
//! );
//! ```
//!
//! A row is written only by a session that holds the row's advisory lock, in
//! the same statement that took the lock, so `token` increases by one per
//! term and the row names the current holder while the lock is held. Rows
//! are never deleted by the library: deleting one would restart its tokens.

use std::sync::Arc;

use crate::options::TableName;

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
    pub(crate) table_exists: Arc<str>,
    pub(crate) create_table: Arc<str>,
    pub(crate) acquire: Arc<str>,
    pub(crate) reacquire: Arc<str>,
    pub(crate) renew: Arc<str>,
    pub(crate) release: Arc<str>,
    pub(crate) holder: Arc<str>,
    pub(crate) terminate: Arc<str>,
}

/// Sets the pinned session's name and TCP settings ($4..$8); referenced by
/// the final SELECT so that Postgres evaluates it.
const SESSION_SETTINGS: &str = "s AS MATERIALIZED ( \
       SELECT set_config('application_name', $4, false) AS a, \
              set_config('tcp_keepalives_idle', $5, false) AS b, \
              set_config('tcp_keepalives_interval', $6, false) AS c, \
              set_config('tcp_keepalives_count', $7, false) AS d, \
              set_config('tcp_user_timeout', $8, false) AS e \
       FROM l WHERE l.got)";

impl Statements {
    pub(crate) fn new(table: &TableName) -> Self {
        let t = table.quoted();
        // The holder of lock $1 as the server sees it: the locking session's
        // pid and application_name, and the counter row (which names the
        // holder in full when its pid matches the lock's).
        let holder_where = |extra: &str| {
            format!(
                "SELECT k.pid AS lock_pid, a.application_name AS app, f.holder AS holder, \
                        f.token AS token, f.pid AS row_pid \
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
        // One round trip: try the lock; only if taken, configure the session
        // and mint the next token; otherwise report who holds it.
        // Params: $1 key, $2 lease key, $3 holder, $4 app name, $5..$8 TCP.
        let mint = |lock_expr: &str| {
            format!(
                "WITH l AS MATERIALIZED (SELECT {lock_expr} AS got), \
                 {SESSION_SETTINGS}, \
                 u AS (INSERT INTO {t} AS f (lock_key, resource, token, holder, pid, acquired_at) \
                       SELECT $1, $2, 1, $3, pg_backend_pid(), now() FROM l WHERE l.got \
                       ON CONFLICT (lock_key) DO UPDATE SET token = f.token + 1, \
                          resource = EXCLUDED.resource, holder = EXCLUDED.holder, \
                          pid = EXCLUDED.pid, acquired_at = EXCLUDED.acquired_at \
                       RETURNING f.token), \
                 h AS MATERIALIZED ({holder_if_missed}) \
                 SELECT l.got, (SELECT u.token FROM u) AS token, pg_backend_pid() AS pid, \
                        (SELECT count(*) FROM s) AS configured, \
                        h.lock_pid, h.app, h.holder, h.token AS held_token, h.row_pid \
                 FROM l LEFT JOIN h ON true"
            )
        };
        let acquire = mint("pg_try_advisory_lock($1::bigint)");
        // On a session that already holds the lock (a re-acquisition by the
        // same holder): check it is still held instead of locking again, so
        // the session's lock count stays at one.
        let reacquire = mint(&format!(
            "EXISTS (SELECT 1 FROM pg_locks k WHERE {LOCK_MATCH} AND k.pid = pg_backend_pid())"
        ));
        let renew = format!(
            "SELECT pg_backend_pid() AS pid, EXISTS (SELECT 1 FROM pg_locks k \
             WHERE {LOCK_MATCH} AND k.pid = pg_backend_pid()) AS held"
        );
        // Unlock, then tell followers (delivered when the statement commits,
        // i.e. after the unlock), and give the session its idle name back.
        let release = "WITH x AS MATERIALIZED (SELECT pg_advisory_unlock($1::bigint) AS ok) \
             SELECT x.ok, \
                    CASE WHEN x.ok THEN (SELECT true FROM pg_notify($2, $3)) ELSE false END \
                        AS notified, \
                    set_config('application_name', $4, false) AS app \
             FROM x"
            .to_owned();
        let terminate = "SELECT pg_terminate_backend($1::integer, $2::bigint) AS done, \
                    (SELECT true FROM pg_notify($3, $4)) AS notified"
            .to_owned();
        let create_table = format!(
            "CREATE TABLE IF NOT EXISTS {t} ( \
                lock_key bigint PRIMARY KEY, \
                resource text NOT NULL, \
                token bigint NOT NULL, \
                holder text NOT NULL, \
                pid integer NOT NULL, \
                acquired_at timestamptz NOT NULL)"
        );
        Statements {
            table_exists: "SELECT to_regclass($1) IS NOT NULL AS present".into(),
            create_table: create_table.into(),
            acquire: acquire.into(),
            reacquire: reacquire.into(),
            renew: renew.into(),
            release: release.into(),
            holder: holder_select.into(),
            terminate: terminate.into(),
        }
    }
}
