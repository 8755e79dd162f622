//! One attempt of a call on one node: a checked connection, the tenant's
//! scope, the body, the end of the call (see the session module), and
//! whether a failure is the node's (so that a read may go elsewhere) or
//! the statement's.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use diesel::QueryResult;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::deadpool::{Object, PoolError};
use diesel_async::{AnsiTransactionManager, AsyncPgConnection, SimpleAsyncConnection};

use crate::consistency::WriteToken;
use crate::error::{Error, error_chain};
use crate::health::Tracker;
use crate::metrics::Stopwatch;
use crate::node::{Node, Role};
use crate::route::{Body, Call, ReplayWait, Route};
use crate::session::{self, Wrap};
use crate::tenant::Scope;

/// One failed attempt: what went wrong, and whether it says the node (not
/// the statement) is at fault, so that a read may go elsewhere.
pub(crate) struct Failed<E> {
    pub(crate) failure: Failure<E>,
    pub(crate) node_down: bool,
}

/// Why a routed closure did not return `Ok`: routing (checkout, `BEGIN`,
/// the end of the call, timeout) or the closure itself.
pub(crate) enum Failure<E> {
    Routing(Error),
    Body(E),
    /// A replica did not replay the write a read waits for within the
    /// bound; nothing ran. The read path goes elsewhere.
    NotReplayed,
}

/// What a read that found no node to see its write says, if the read path
/// ever lets it out.
fn not_replayed(node: &Node) -> Error {
    Error::NoReplicaAvailable {
        replicas: vec![format!(
            "{} had not replayed the write the read must see",
            node.label
        )],
    }
}

impl Failure<DieselError> {
    /// The body's diesel error as [`Error::Query`] or
    /// [`Error::ReadOnlyViolation`]; routing errors as they are.
    pub(crate) fn into_error(self, node: &Node, route: Route) -> Error {
        match self {
            Self::Routing(error) => error,
            Self::Body(error) => node.query_error(route, error),
            Self::NotReplayed => not_replayed(node),
        }
    }
}

impl<E> Failure<E> {
    /// Its name in spans, as `error.type` and `retry.reason`: an
    /// [`ErrorKind`](crate::ErrorKind) name, `query` for the body's own
    /// error, `not_replayed` for a replica that did not catch up.
    pub(crate) fn kind_str(&self) -> &'static str {
        match self {
            Self::Routing(error) => error.kind().as_str(),
            Self::Body(_) => "query",
            Self::NotReplayed => "not_replayed",
        }
    }
}

impl<E: From<Error>> Failure<E> {
    /// The caller's own error: the body's as it is, routing errors through
    /// `E: From<Error>`.
    pub(crate) fn into_own(self, node: &Node) -> E {
        match self {
            Self::Routing(error) => E::from(error),
            Self::Body(error) => error,
            Self::NotReplayed => E::from(not_replayed(node)),
        }
    }
}

/// Runs `f` once on `node`, bounded by the node's attempt timeout, and
/// records the outcome in its health.
pub(crate) async fn attempt<T, E>(
    node: &Arc<Node>,
    call: Call<'_>,
    f: impl Body<T, E>,
) -> Result<T, Failed<E>> {
    let _in_flight = InFlight::enter(&node.in_flight);
    let stopwatch = Stopwatch::start();
    let result = match node.attempt_timeout {
        None => run(node, call, f).await,
        Some(after) => tokio::time::timeout(after, run(node, call, f))
            .await
            .unwrap_or_else(|_| {
                Err(Failed {
                    failure: Failure::Routing(Error::Timeout {
                        node: node.label.clone(),
                        after,
                    }),
                    node_down: true,
                })
            }),
    };
    node.metrics
        .operation(call.route, result.is_ok(), stopwatch.elapsed());
    match &result {
        Ok(_) => node.health.record_success(),
        Err(Failed {
            failure,
            node_down: true,
        }) => {
            let reason = match failure {
                Failure::Routing(error) => error_chain(error),
                Failure::Body(_) | Failure::NotReplayed => {
                    "the connection broke during the query".to_owned()
                }
            };
            Tracker::record_failure(node, reason);
        }
        Err(_) => {}
    }
    result
}

async fn run<T, E>(node: &Node, call: Call<'_>, f: impl Body<T, E>) -> Result<T, Failed<E>> {
    let Call {
        route,
        scope,
        replay_wait,
        token_lsn,
        ..
    } = call;
    let mut wrap = Wrap::new(route, node.role == Role::Writer);
    if token_lsn.is_some() {
        wrap = wrap.flushed(route);
    }
    let mut conn = match ready_connection(node, route, wrap, replay_wait).await {
        Ok(conn) => conn,
        Err(NotReady::Down(error)) => {
            return Err(Failed {
                failure: Failure::Routing(error),
                node_down: true,
            });
        }
        Err(NotReady::NotReplayed) => {
            return Err(Failed {
                failure: Failure::NotReplayed,
                node_down: false,
            });
        }
    };
    if let Some(scope) = scope
        && let Err(error) = enter(node, &mut conn, route, scope).await
    {
        // As for a body's error: a failed end means a broken connection,
        // not a missing schema.
        let broken = end(&mut conn, wrap, false).await.is_err();
        return Err(Failed {
            failure: Failure::Routing(error),
            node_down: broken,
        });
    }
    match f(&mut conn).await {
        Ok(value) => match end(&mut conn, wrap, true).await {
            Ok(()) => {
                if let Some(sink) = token_lsn {
                    sink.store(token_position(&mut conn, route).await, Ordering::Relaxed);
                }
                Ok(value)
            }
            Err(error @ DieselError::DatabaseError(DatabaseErrorKind::ReadOnlyTransaction, _))
                if route.is_read_only() =>
            {
                // The end of a read on the writer refused it: the
                // connection, discarded, rolls back as it closes.
                Err(Failed {
                    failure: Failure::Routing(node.query_error(route, error)),
                    node_down: false,
                })
            }
            // Nothing was written: what was read stands. The connection is
            // marked broken, and discarded.
            Err(_) if route.is_read_only() => Ok(value),
            Err(error) => Err(Failed {
                failure: Failure::Routing(node.query_error(route, error)),
                node_down: false,
            }),
        },
        Err(error) => {
            // An end that fails means the connection broke (the pool
            // discards it): the node, not the statement, failed.
            let broken = end(&mut conn, wrap, false).await.is_err();
            Err(Failed {
                failure: Failure::Body(error),
                node_down: broken,
            })
        }
    }
}

/// The WAL position a replica must have replayed to see a write that has
/// just committed, taken on the writer after it. A transaction committed
/// flushed (see the session module): the flush position, which covers its
/// commit and which replicas are sent at once. An autocommit write's
/// statements may have committed with `synchronous_commit = off`: the
/// insert position, which covers them too, though replicas get it only once
/// the WAL writer flushes it (within `wal_writer_delay`, 200 ms by default).
/// [`WriteToken::UNKNOWN_LSN`] when it cannot be had, so that reads after
/// the write go to the writer.
async fn token_position(conn: &mut AsyncPgConnection, route: Route) -> u64 {
    use diesel_async::RunQueryDsl;

    let position = match route {
        Route::Transaction => {
            "pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_flush_lsn(), '0/0')::int8"
        }
        _ => "pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_insert_lsn(), '0/0')::int8",
    };
    let lsn: QueryResult<i64> =
        diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(position))
            .get_result(conn)
            .await;
    lsn.ok()
        .and_then(|lsn| u64::try_from(lsn).ok())
        .unwrap_or(WriteToken::UNKNOWN_LSN)
}

/// Why a connection could not be made ready.
enum NotReady {
    /// The node failed.
    Down(Error),
    /// The replica did not replay the awaited position in time.
    NotReplayed,
}

/// Checks, on the server, that a replica has replayed the write: fails at
/// once with `serialization_failure` when it has not (or the node is not in
/// recovery). Sent before `BEGIN`, in the same round trip. It never waits
/// there: a statement that waited would hold a snapshot, and a standby's
/// replay waits for such snapshots (recovery conflicts) up to
/// `max_standby_streaming_delay`, so the wait would hold back the very
/// replay it waits for. The client waits between checks instead, with no
/// statement running.
fn replay_check_sql(lsn: u64) -> String {
    format!(
        "DO $diesel_replica$BEGIN \
         IF pg_catalog.pg_last_wal_replay_lsn() IS NULL \
         OR pg_catalog.pg_last_wal_replay_lsn() < '{high:X}/{low:X}'::pg_lsn THEN \
         RAISE EXCEPTION USING ERRCODE = 'serialization_failure', \
         MESSAGE = 'the replica has not replayed the write the read must see'; \
         END IF; END$diesel_replica$",
        high = lsn >> 32,
        low = lsn & 0xFFFF_FFFF,
    )
}

/// The first pause between two replay checks; it doubles up to
/// [`MAX_REPLAY_PAUSE`].
const FIRST_REPLAY_PAUSE: Duration = Duration::from_millis(1);
const MAX_REPLAY_PAUSE: Duration = Duration::from_millis(8);

/// A pooled connection that has answered its first statement: the `BEGIN`
/// of a transaction, `SELECT 1` for an autocommit write.
///
/// Pools recycle idle connections without a check (diesel-async's `Fast`):
/// the first statement is the check, and it costs no extra round trip. A
/// connection that fails it is stale (its server went away since it was
/// pooled) or its node is down: it is dropped with every idle one, and one
/// new connection is tried. Nothing of the caller's has run yet, so this is
/// safe for writes too.
/// With `replay_wait`, a replay check comes first in the same batch; while
/// it fails, the check is sent again (with the `BEGIN`) after a pause, on
/// the same connection, until the bound. A replica that did not replay in
/// time is [`NotReady::NotReplayed`], and its connection stays pooled.
async fn ready_connection(
    node: &Node,
    route: Route,
    wrap: Wrap,
    replay_wait: Option<ReplayWait>,
) -> Result<Object<AsyncPgConnection>, NotReady> {
    let checked_begin = replay_wait
        .zip(wrap.begin)
        .map(|(wait, begin)| format!("{}; {begin}", replay_check_sql(wait.lsn)));
    let mut last = None;
    for _ in 0..2 {
        let waiting_since = Stopwatch::start();
        let checkout = node.pool.get().await;
        node.metrics.waited(waiting_since.elapsed());
        let mut conn = checkout.map_err(|e| {
            if matches!(e, PoolError::Timeout(_)) {
                node.metrics.checkout_timed_out();
            }
            NotReady::Down(node.checkout_error(e))
        })?;
        let result = match (&checked_begin, replay_wait) {
            (Some(sql), Some(wait)) => wait_for_replay(&mut conn, sql, wait.bound).await,
            _ => match wrap.begin {
                Some(begin) => {
                    AnsiTransactionManager::begin_transaction_sql(&mut *conn, begin).await
                }
                None => SimpleAsyncConnection::batch_execute(&mut *conn, "SELECT 1").await,
            },
        };
        match result {
            Ok(()) => return Ok(conn),
            Err(DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, _))
                if checked_begin.is_some() =>
            {
                return Err(NotReady::NotReplayed);
            }
            Err(error) => {
                drop(Object::take(conn));
                node.pool.retain(|_, _| false);
                last = Some(node.query_error(route, error));
            }
        }
    }
    Err(NotReady::Down(last.expect("the loop ran")))
}

/// Sends `checked_begin` (a replay check, then `BEGIN`) until the check
/// passes or `bound` has passed (the last check is made then), pausing
/// between tries with no statement running. The last failure is returned
/// as it is.
async fn wait_for_replay(
    conn: &mut AsyncPgConnection,
    checked_begin: &str,
    bound: Duration,
) -> QueryResult<()> {
    let deadline = tokio::time::Instant::now() + bound;
    let mut pause = FIRST_REPLAY_PAUSE;
    loop {
        match AnsiTransactionManager::begin_transaction_sql(conn, checked_begin).await {
            Err(DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, _))
                if tokio::time::Instant::now() < deadline =>
            {
                // The last check is made at the deadline.
                tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + pause)).await;
                pause = (pause * 2).min(MAX_REPLAY_PAUSE);
            }
            result => return result,
        }
    }
}

/// A checked connection of `node`'s, taken out of its pool for good.
pub(crate) async fn dedicated_connection(node: &Node) -> Result<AsyncPgConnection, Error> {
    let wrap = Wrap::new(Route::Write, true);
    match ready_connection(node, Route::Write, wrap, None).await {
        Ok(conn) => Ok(Object::take(conn)),
        Err(NotReady::Down(error)) => Err(error),
        // No wait was asked for.
        Err(NotReady::NotReplayed) => Err(not_replayed(node)),
    }
}

/// Sets the tenant's `search_path` for this transaction only
/// (`set_config(.., true)`, as `SET LOCAL`), and checks that its schema
/// exists: PostgreSQL silently skips a missing schema in `search_path`,
/// which would let the tenant read the shared schemas' tables instead.
async fn enter(
    node: &Node,
    conn: &mut AsyncPgConnection,
    route: Route,
    scope: &Scope<'_>,
) -> Result<(), Error> {
    use diesel::ExpressionMethods;
    use diesel::query_dsl::QueryDsl;
    use diesel_async::RunQueryDsl;

    // A typed query: diesel-async keeps it as a prepared statement on each
    // connection, so the server parses and plans it once.
    let (_, present): (String, bool) = diesel::select((
        set_config("search_path", &scope.search_path, true),
        diesel::dsl::exists(
            pg_namespace::table.filter(pg_namespace::nspname.eq(scope.tenant.name())),
        ),
    ))
    .get_result(conn)
    .await
    .map_err(|error| node.query_error(route, error))?;
    if present {
        Ok(())
    } else {
        Err(Error::UnknownTenant {
            tenant: scope.tenant.name().to_owned(),
            node: node.label.clone(),
        })
    }
}

/// Ends a call with one batch of [`Wrap`], the one for `Ok` or for `Err`.
/// A connection whose end failed is never reused: its session state is
/// unknown.
async fn end(conn: &mut AsyncPgConnection, wrap: Wrap, ok: bool) -> QueryResult<()> {
    let batch = if ok { wrap.on_ok } else { wrap.on_err };
    let result = SimpleAsyncConnection::batch_execute(conn, batch).await;
    session::settle(conn, wrap, result)
}

diesel::define_sql_function! {
    /// PostgreSQL's `set_config(name, value, is_local)`.
    fn set_config(name: diesel::sql_types::Text, value: diesel::sql_types::Text, is_local: diesel::sql_types::Bool) -> diesel::sql_types::Text;
}

diesel::table! {
    /// The catalog of schemas, for the tenant's existence check.
    pg_catalog.pg_namespace (nspname) {
        /// The schema's name.
        nspname -> Text,
    }
}

/// Counts an attempt in flight until dropped, also when cancelled.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
