//! The statements sent around a routed body: how its transaction begins
//! and the tenant's scope is set, how a call ends, and the reset that keeps
//! what one call leaves in its session from reaching the next user of the
//! pooled connection.
//!
//! Nothing of this costs a round trip of its own. What must come before
//! the body (a `BEGIN`, the scope) is sent *ahead* of it, in the round trip
//! of its first statement, and never waited for; it cannot fail in a way
//! that would let the body run unscoped or outside its transaction (the
//! transaction is then failed, or the connection broken, and the body's
//! statements fail too). The reset is sent *after* the call, and not
//! waited for either: the connection goes back to its pool with it on its
//! way, and the next user's statements follow it. A call dropped before it
//! ends has what it runs cancelled first (see the cancel module).
//!
//! Only what must be known before the call returns is waited for: the
//! `COMMIT` of a write, and the end of a read on the writer, which checks
//! that nothing was written.
//!
//! On a replica's connections, whose replies the library follows off the
//! wire (see the wire module), those replies are read all the same, and a
//! read whose body stayed inside its transaction ends with a `ROLLBACK`
//! and the release of session advisory locks instead of the whole reset.

use std::borrow::Cow;
use std::future::Future;
use std::time::Duration;

use diesel::QueryResult;
use diesel::connection::TransactionDepthChange;
use diesel_async::{
    AnsiTransactionManager, AsyncPgConnection, SimpleAsyncConnection, TransactionManager,
};

use crate::pooler::Pooler;
use crate::route::Route;
use crate::tenant::Scope;
use crate::wire::Seen;

/// What both resets run once no transaction of the call's is left: a
/// macro, so that it splices into them with `concat!`.
macro_rules! session_cleanup {
    () => {
        "BEGIN ISOLATION LEVEL READ COMMITTED; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; \
         CLOSE ALL; UNLISTEN *; SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD TEMP; \
         DISCARD SEQUENCES; COMMIT"
    };
}

/// Ends a transaction the body left open (`BEGIN` only warns then; on an
/// idle session the pair is silent), then, in a `READ COMMITTED`
/// transaction of its own (whatever isolation the body made the session's
/// default: a hot standby refuses a serializable one), undoes what a
/// session keeps past a transaction: a changed session user or role and
/// every `SET` first (back to the startup values, which hold the statement
/// timeout, the time zone and, on replicas, `default_transaction_read_only`;
/// so that a timeout the body set cannot stop the rest), then cursors,
/// `LISTEN`s, session advisory locks, temporary tables and sequence state.
/// It is `DISCARD ALL` without `DEALLOCATE ALL`, which would drop the
/// statements diesel-async keeps prepared on the connection, and without
/// `DISCARD PLANS`. Every statement runs on a hot standby.
const RESET: &str = concat!("BEGIN; ROLLBACK; ", session_cleanup!());

/// [`RESET`] after a statement of the call failed, whose session may be in
/// a failed transaction, where only `ROLLBACK` runs (and warns when there
/// is none); and after a call whose transaction the reset ends.
const RESET_AFTER_FAILURE: &str = concat!("ROLLBACK; ", session_cleanup!());

/// The reset to send after a call: with `rollback`, for a call whose
/// transaction may be open or failed.
fn reset(rollback: bool) -> &'static str {
    if rollback { RESET_AFTER_FAILURE } else { RESET }
}

/// Ends a read on a replica whose replies say the body stayed inside the
/// read's transaction (see the wire module): the `ROLLBACK` undoes all it
/// did there but take session advisory locks, which are released after it.
const END_OF_READ: &str = "ROLLBACK; SELECT pg_catalog.pg_advisory_unlock_all()";

/// What ends whatever a dropped call left on its connection, once its
/// statement is cancelled: the whole reset, or behind a pooler the
/// `ROLLBACK` alone.
pub(crate) fn reset_after_cancel(pooler: Pooler) -> &'static str {
    match pooler {
        Pooler::Transaction => "ROLLBACK",
        _ => RESET_AFTER_FAILURE,
    }
}

/// Makes the session of a read on the writer read-only by default, sent
/// ahead of the read's transaction in a message of its own, so that it
/// holds also after the body ends that transaction by SQL (`COMMIT`,
/// `ROLLBACK`, `COMMIT AND CHAIN`): in the message of the `BEGIN`, a
/// `ROLLBACK` would undo it. The reset's `RESET ALL` gives the writer's
/// sessions their default back.
const READ_ONLY_SESSION: &str = "SET default_transaction_read_only = on";

/// Marks the transaction of a read on the writer as the read's own. The
/// `SELECT` also takes the transaction's snapshot, after which PostgreSQL
/// refuses `SET TRANSACTION READ WRITE`.
const MARK_READ: &str = "SELECT pg_catalog.set_config('diesel_replica.read_only', 'on', true)";

/// Ends a read on the writer that returned `Ok`: fails with the SQLSTATE a
/// standby uses, 25006, when the transaction was given a transaction ID
/// (`txid_current()`, `lo_create()`, any write) or the body ended it, then
/// rolls back.
const END_READ_ON_WRITER: &str = "DO $diesel_replica$BEGIN \
     IF pg_catalog.current_setting('diesel_replica.read_only', true) IS DISTINCT FROM 'on' \
     OR pg_catalog.txid_current_if_assigned() IS NOT NULL THEN \
     RAISE EXCEPTION USING ERRCODE = 'read_only_sql_transaction', \
     MESSAGE = 'a read on the writer wrote, or ended its READ ONLY transaction'; \
     END IF; END$diesel_replica$; ROLLBACK";

/// Commits a transaction whose write token is wanted: as a plain commit,
/// but flushed to the writer's disk before it returns even where
/// `synchronous_commit` is `off` (the server's, the role's or the body's
/// `SET LOCAL`), so that the flush position after it covers the commit
/// and replicas are sent it at once. Stronger settings are kept.
const COMMIT_FLUSHED: &str = "SELECT pg_catalog.set_config('synchronous_commit', \
     CASE pg_catalog.current_setting('synchronous_commit') WHEN 'off' THEN 'local' \
     ELSE pg_catalog.current_setting('synchronous_commit') END, true); COMMIT";

/// What of the node a call runs on shapes its plan.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Site {
    /// Whether the node is the writer.
    pub(crate) writer: bool,
    /// What the node's address reaches.
    pub(crate) pooler: Pooler,
    /// The statement timeout, which behind a pooler each call sets for its
    /// own transaction (elsewhere it is a startup option).
    pub(crate) statement_timeout: Option<Duration>,
}

/// How a routed body runs on one node: what is sent ahead of it after the
/// reset, and how the call ends.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    /// Sent ahead of `opening`, in a message of its own (see
    /// [`READ_ONLY_SESSION`]).
    pub(crate) guard: Option<&'static str>,
    /// Begins the transaction (when there is one) and sets the tenant's
    /// scope; sent ahead of the body, after the reset.
    pub(crate) opening: Option<Cow<'static, str>>,
    /// Whether `opening` begins a transaction, which diesel's transaction
    /// manager is told of (so that a body's own transaction nests as a
    /// savepoint).
    pub(crate) transaction: bool,
    /// Ends the call after the body returned `Ok`, waited for; `None` when
    /// nothing is (see [`Plan::ends_with_the_reset`]).
    pub(crate) on_ok: Option<&'static str>,
    /// Ends the call after the body returned `Err`.
    pub(crate) on_err: Option<&'static str>,
    pooler: Pooler,
}

impl Plan {
    /// The plan of `route` on a node, in `scope`.
    ///
    /// - A read on a replica runs in a `READ ONLY` transaction
    ///   (`REPEATABLE READ` for a snapshot), begun with the tenant's scope
    ///   set, and ended by the `ROLLBACK` of the reset, which nobody waits
    ///   for. Its session is read-only from the start too, so a body must
    ///   both end that transaction and turn the session's guard off by SQL
    ///   to write on a replica promoted since it was found.
    /// - A read on the writer runs in a `READ ONLY` transaction, in a
    ///   session made read-only by default for it, and its end checks that
    ///   nothing was written.
    /// - A transaction ends with `COMMIT`, or `ROLLBACK` after an error.
    /// - An autocommit write runs the body alone.
    ///
    /// Behind a transaction-mode pooler, where nothing of a session
    /// survives the transaction, an autocommit write runs in a transaction
    /// too (its prepared statements live only inside one), each transaction
    /// sets the statement timeout for itself, and a read on the writer has
    /// no session guard: its transaction is all that is read-only.
    pub(crate) fn new(route: Route, site: Site, scope: Option<&Scope<'_>>) -> Self {
        let Site {
            writer: on_writer,
            pooler,
            statement_timeout,
        } = site;
        let behind_pooler = pooler.is_transaction();
        let begin = match route {
            Route::Read | Route::ReadFresh if on_writer => {
                Some("BEGIN TRANSACTION READ ONLY; ".to_owned() + MARK_READ)
            }
            Route::ReadSnapshot if on_writer => Some(
                "BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY; ".to_owned()
                    + MARK_READ,
            ),
            Route::ReadSnapshot => {
                Some("BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY".to_owned())
            }
            Route::Read | Route::ReadFresh => Some("BEGIN TRANSACTION READ ONLY".to_owned()),
            // The scope, set for the transaction, is gone with it.
            Route::Transaction | Route::Write if scope.is_some() => Some("BEGIN".to_owned()),
            Route::Transaction => Some("BEGIN".to_owned()),
            Route::Write if behind_pooler => Some("BEGIN".to_owned()),
            Route::Write => None,
        };
        let transaction = begin.is_some();
        let timeout = statement_timeout.filter(|_| behind_pooler).map(|timeout| {
            format!(
                "SELECT pg_catalog.set_config('statement_timeout', '{}', true)",
                timeout.as_millis()
            )
        });
        let opening = begin.map(|mut opening| {
            for statement in [timeout, scope.map(Scope::statement)].into_iter().flatten() {
                opening.push_str("; ");
                opening.push_str(&statement);
            }
            Cow::Owned(opening)
        });
        let (on_ok, on_err) = match route {
            _ if !transaction => (None, None),
            Route::Transaction | Route::Write => (Some("COMMIT"), Some("ROLLBACK")),
            _ if on_writer => (Some(END_READ_ON_WRITER), Some("ROLLBACK")),
            // A read on a replica: see `ends_with_the_reset`.
            _ => (None, None),
        };
        let guard =
            (route.is_read_only() && on_writer && !behind_pooler).then_some(READ_ONLY_SESSION);
        Self {
            guard,
            opening,
            transaction,
            on_ok,
            on_err,
            pooler,
        }
    }

    /// What to send after the call, unread, as the connection goes back
    /// to its pool (`failed`: a statement of the call failed, so its
    /// transaction may be open and failed). Behind a pooler only a
    /// `ROLLBACK`, and only when a transaction may be open: anything more
    /// would be a session-level statement.
    pub(crate) fn reset(&self, failed: bool) -> Option<&'static str> {
        let rollback = failed || self.ends_with_the_reset();
        match self.pooler {
            Pooler::Transaction => rollback.then_some("ROLLBACK"),
            _ => Some(reset(rollback)),
        }
    }

    /// What to send after a replica read on a connection whose replies
    /// were followed (see the wire module), unread by the call: a
    /// `ROLLBACK` and the release of session advisory locks when the body
    /// stayed inside the read's transaction and did nothing a rollback
    /// does not undo; else the whole reset, with a `ROLLBACK` first unless
    /// the session was left idle.
    pub(crate) fn end_of_followed_read(&self, seen: Seen) -> &'static str {
        match (seen.touched, seen.status) {
            (false, _) => END_OF_READ,
            (true, Some(b'I')) => session_cleanup!(),
            (true, _) => RESET_AFTER_FAILURE,
        }
    }

    /// No plan: nothing sent ahead, no end of its own.
    pub(crate) fn bare() -> Self {
        Self {
            guard: None,
            opening: None,
            transaction: false,
            on_ok: None,
            on_err: None,
            pooler: Pooler::None,
        }
    }

    /// The plan of a transaction whose write token is wanted: its commit
    /// is flushed (see [`COMMIT_FLUSHED`]).
    pub(crate) fn flushed(self, route: Route) -> Self {
        match route {
            Route::Transaction => Self {
                on_ok: Some(COMMIT_FLUSHED),
                ..self
            },
            _ => self,
        }
    }

    /// Whether the reset sent after the call ends its transaction, which
    /// nobody waits for (a read on a replica, which cannot have written).
    pub(crate) fn ends_with_the_reset(&self) -> bool {
        self.transaction && self.on_ok.is_none()
    }
}

/// Asks one question of the library's own on `conn` (a typed query, which
/// diesel-async prepares under a name), every reply read. Behind a
/// transaction-mode pooler it runs in a `READ ONLY` transaction of its
/// own, begun in the question's round trip and rolled back after: only a
/// transaction keeps a statement's prepare and its use on one server
/// connection of the pooler's.
///
/// `question` must not have been polled: it is sent after the `BEGIN`.
pub(crate) async fn ask<R>(
    conn: &AsyncPgConnection,
    pooler: Pooler,
    question: impl Future<Output = QueryResult<R>>,
) -> QueryResult<R> {
    if !pooler.is_transaction() {
        return question.await;
    }
    let mut shared = conn;
    let begin = SimpleAsyncConnection::batch_execute(&mut shared, "BEGIN TRANSACTION READ ONLY");
    let (begun, answer) = futures_util::future::join(begin, question).await;
    let mut shared = conn;
    let ended = SimpleAsyncConnection::batch_execute(&mut shared, "ROLLBACK").await;
    begun.and(answer).and_then(|answer| ended.map(|()| answer))
}

/// Tells diesel-async's transaction manager that the transaction sent
/// ahead of the body has begun.
pub(crate) fn begun(conn: &mut AsyncPgConnection) -> QueryResult<()> {
    AnsiTransactionManager::transaction_manager_status_mut(conn)
        .transaction_state()?
        .change_transaction_depth(TransactionDepthChange::IncreaseDepth)
}

/// Brings diesel-async's transaction manager in line with an end sent
/// outside it: the transaction it was told of has ended. After a failed
/// end the manager is put in error, so the pool discards the connection
/// instead of handing its unknown session state to someone else.
pub(crate) fn settle(conn: &mut AsyncPgConnection, result: QueryResult<()>) -> QueryResult<()> {
    let status = AnsiTransactionManager::transaction_manager_status_mut(conn);
    match result {
        Ok(()) => status
            .transaction_state()?
            .change_transaction_depth(TransactionDepthChange::DecreaseDepth),
        Err(error) => {
            status.set_in_error();
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tenant;

    fn on(writer: bool) -> Site {
        Site {
            writer,
            pooler: Pooler::None,
            statement_timeout: Some(Duration::from_secs(10)),
        }
    }

    fn behind_pooler(writer: bool) -> Site {
        Site {
            pooler: Pooler::Transaction,
            ..on(writer)
        }
    }

    #[test]
    fn replica_reads_run_in_a_read_only_transaction_the_reset_ends() {
        let plan = Plan::new(Route::Read, on(false), None);
        assert_eq!(plan.opening.as_deref(), Some("BEGIN TRANSACTION READ ONLY"));
        assert!(plan.transaction && plan.guard.is_none());
        assert_eq!((plan.on_ok, plan.on_err), (None, None));
        assert!(plan.ends_with_the_reset());
    }

    #[test]
    fn scoped_replica_reads_begin_with_their_scope() {
        let tenant = Tenant::new("acme").unwrap();
        let scope = Scope::new(&tenant, &["shared".to_owned()]);
        let plan = Plan::new(Route::Read, on(false), Some(&scope));
        let opening = plan.opening.as_deref().unwrap();
        assert!(
            opening.starts_with(
                "BEGIN TRANSACTION READ ONLY; SELECT pg_catalog.set_config('search_path', E'\"acme\", \"shared\"', true)"
            ),
            "{opening}"
        );
        assert!(plan.ends_with_the_reset());
    }

    #[test]
    fn transactions_scope_locally() {
        let tenant = Tenant::new("acme").unwrap();
        let scope = Scope::new(&tenant, &[]);
        let plan = Plan::new(Route::Transaction, on(true), Some(&scope));
        let opening = plan.opening.unwrap();
        assert!(opening.starts_with("BEGIN; SELECT pg_catalog.set_config('search_path'"));
        assert_eq!(plan.on_ok, Some("COMMIT"));
    }

    #[test]
    fn reads_on_the_writer_check_their_end() {
        for route in [Route::Read, Route::ReadFresh, Route::ReadSnapshot] {
            let plan = Plan::new(route, on(true), None);
            assert_eq!(plan.on_ok, Some(END_READ_ON_WRITER), "{route:?}");
            assert_eq!(plan.guard, Some(READ_ONLY_SESSION));
            assert!(!plan.ends_with_the_reset());
        }
        for route in [Route::Write, Route::Transaction] {
            assert_eq!(Plan::new(route, on(true), None).guard, None);
        }
        let plan = Plan::new(Route::ReadSnapshot, on(false), None);
        assert!(plan.ends_with_the_reset());
    }

    #[test]
    fn behind_a_pooler_every_call_is_a_transaction_with_its_own_timeout() {
        for route in [
            Route::Read,
            Route::ReadFresh,
            Route::ReadSnapshot,
            Route::Write,
            Route::Transaction,
        ] {
            for writer in [true, false] {
                let plan = Plan::new(route, behind_pooler(writer), None);
                let opening = plan.opening.as_deref().unwrap();
                assert!(plan.transaction, "{route:?}");
                assert!(
                    opening.contains("set_config('statement_timeout', '10000', true)"),
                    "{opening}"
                );
                assert_eq!(plan.guard, None, "no session SET behind a pooler");
                // Only a ROLLBACK ever follows, and only when a
                // transaction may be open.
                assert!(matches!(plan.reset(true), Some("ROLLBACK")));
                let after_ok = plan.reset(false);
                assert!(after_ok.is_none() || after_ok == Some("ROLLBACK"));
            }
        }
        let write = Plan::new(Route::Write, behind_pooler(true), None);
        assert_eq!(
            (write.on_ok, write.on_err),
            (Some("COMMIT"), Some("ROLLBACK"))
        );
        assert_eq!(write.reset(false), None);
        // Without a pooler the timeout is the session's, set at connect.
        let plan = Plan::new(Route::Read, on(false), None);
        assert!(!plan.opening.clone().unwrap().contains("statement_timeout"));
        assert!(plan.reset(false).unwrap().contains("RESET ALL"));
    }
}
