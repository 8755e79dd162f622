//! The statements sent around a routed body: how its transaction begins,
//! how it ends, and the reset that keeps what one call leaves in its
//! session from reaching the next user of the pooled connection.
//!
//! Each end is one simple-query batch, sent in the round trip a `COMMIT` or
//! `ROLLBACK` takes anyway: nothing costs an extra round trip, except the
//! reset after an autocommit [`Route::Write`], which has no end to fold it
//! into.
//!
//! Reads end with `ROLLBACK`, which undoes every `SET`, `LISTEN` and cursor
//! of the transaction (a read can create no temporary table or sequence
//! state): what survives it is a session advisory lock, released in the
//! same batch, and whatever the body did after ending the transaction it
//! was given, which the end detects by the transaction's marker being gone
//! and answers by discarding the connection. Writes commit, so their
//! session is reset in full.

use diesel::QueryResult;
use diesel::connection::TransactionDepthChange;
use diesel_async::{AnsiTransactionManager, AsyncPgConnection, TransactionManager};

use crate::route::Route;

/// Undoes what a session can keep past a transaction: cursors, a changed
/// session user or role, every `SET` (back to the startup values, which
/// hold the statement timeout and time zone), `LISTEN`s, session advisory
/// locks, temporary tables and sequence state. It is `DISCARD ALL` without
/// `DEALLOCATE ALL`, which would drop the statements diesel-async keeps
/// prepared on the connection, and without `DISCARD PLANS`. Every one of
/// these runs in a transaction block, and on a hot standby.
macro_rules! reset {
    () => {
        "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; \
         SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES"
    };
}

/// The reset alone, after an autocommit write.
const RESET: &str = reset!();

/// Begins a read on a replica, marking the transaction as the read's own.
const BEGIN_READ: &str = "BEGIN TRANSACTION READ ONLY; SET LOCAL diesel_replica.read_only = on";

/// Begins a read on the writer. Its `SELECT` also takes the transaction's
/// snapshot, after which PostgreSQL refuses `SET TRANSACTION READ WRITE`
/// (a hot standby refuses it anyway).
const BEGIN_READ_ON_WRITER: &str = "BEGIN TRANSACTION READ ONLY; \
     SELECT pg_catalog.set_config('diesel_replica.read_only', 'on', true)";

/// Ends a read that returned `Ok`: fails (and so discards the connection)
/// when the body ended the read's transaction, whose marker then reads as
/// `''`, not a boolean; releases session advisory locks; rolls back.
const END_READ: &str = "SELECT pg_catalog.current_setting('diesel_replica.read_only')::bool, \
     pg_catalog.pg_advisory_unlock_all(); ROLLBACK";

/// As [`END_READ`] on the writer, where a read could write: fails with the
/// SQLSTATE a standby uses, 25006, when the transaction was given a
/// transaction ID (`txid_current()`, `lo_create()`, any write) or the body
/// ended it.
const END_READ_ON_WRITER: &str = "DO $diesel_replica$BEGIN \
     IF pg_catalog.current_setting('diesel_replica.read_only', true) IS DISTINCT FROM 'on' \
     OR pg_catalog.txid_current_if_assigned() IS NOT NULL THEN \
     RAISE EXCEPTION USING ERRCODE = 'read_only_sql_transaction', \
     MESSAGE = 'a read on the writer wrote, or ended its READ ONLY transaction'; \
     END IF; END$diesel_replica$; \
     SELECT pg_catalog.pg_advisory_unlock_all(); ROLLBACK";

/// Commits a transaction whose write token is wanted: as a plain commit,
/// but flushed to the writer's disk before it returns even where
/// `synchronous_commit` is `off` (the server's, the role's or the body's
/// `SET LOCAL`), so that the flush position after it covers the commit
/// and replicas are sent it at once. Stronger settings are kept.
const COMMIT_FLUSHED: &str = concat!(
    reset!(),
    "; SELECT pg_catalog.set_config('synchronous_commit', \
     CASE pg_catalog.current_setting('synchronous_commit') WHEN 'off' THEN 'local' \
     ELSE pg_catalog.current_setting('synchronous_commit') END, true); COMMIT"
);

/// How a routed body is wrapped on one node.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Wrap {
    /// The statements that open the transaction, `None` for autocommit.
    pub(crate) begin: Option<&'static str>,
    /// Ends the call after the body returned `Ok`.
    pub(crate) on_ok: &'static str,
    /// Ends the call after the body returned `Err`.
    pub(crate) on_err: &'static str,
}

impl Wrap {
    /// Reads end with `ROLLBACK`: a read has nothing to commit, and a
    /// rollback also drops whatever PostgreSQL lets a `READ ONLY`
    /// transaction queue on the writer (`NOTIFY`, `LISTEN`). A body's error
    /// takes the slow path: a full reset.
    pub(crate) fn new(route: Route, on_writer: bool) -> Self {
        match route {
            Route::Read | Route::ReadFresh if on_writer => Self {
                begin: Some(BEGIN_READ_ON_WRITER),
                on_ok: END_READ_ON_WRITER,
                on_err: concat!("ROLLBACK; ", reset!()),
            },
            Route::Read | Route::ReadFresh => Self {
                begin: Some(BEGIN_READ),
                on_ok: END_READ,
                on_err: concat!("ROLLBACK; ", reset!()),
            },
            Route::Transaction => Self {
                begin: Some("BEGIN"),
                on_ok: concat!(reset!(), "; COMMIT"),
                on_err: concat!("ROLLBACK; ", reset!()),
            },
            Route::Write => Self {
                begin: None,
                on_ok: RESET,
                on_err: RESET,
            },
        }
    }
}

impl Wrap {
    /// The wrap of a write whose token is wanted: a transaction's commit
    /// is flushed (see [`COMMIT_FLUSHED`]).
    pub(crate) fn flushed(self, route: Route) -> Self {
        match route {
            Route::Transaction => Self {
                on_ok: COMMIT_FLUSHED,
                ..self
            },
            _ => self,
        }
    }
}

/// Brings diesel-async's transaction manager in line with an end batch
/// sent outside it: the transaction it saw begin has ended. After a failed
/// end the manager is put in error, so the pool discards the connection
/// instead of handing its unknown session state to someone else.
pub(crate) fn settle(
    conn: &mut AsyncPgConnection,
    wrap: Wrap,
    result: QueryResult<()>,
) -> QueryResult<()> {
    let status = AnsiTransactionManager::transaction_manager_status_mut(conn);
    match result {
        Ok(()) if wrap.begin.is_none() => Ok(()),
        Ok(()) => status
            .transaction_state()?
            .change_transaction_depth(TransactionDepthChange::DecreaseDepth),
        Err(error) => {
            status.set_in_error();
            Err(error)
        }
    }
}
