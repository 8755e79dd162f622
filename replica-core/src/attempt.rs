//! One attempt of a call on one node: a checked connection, the tenant's
//! scope, the body, the end of the call (see the session module), and
//! whether a failure is the node's (so that a read may go elsewhere) or
//! the statement's.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use deadpool::managed::TimeoutType;
use diesel::QueryResult;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::PoolableConnection;
use diesel_async::pooled_connection::deadpool::{Object, PoolError};
use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};

use crate::consistency::WriteToken;
use crate::error::{Error, ErrorKind, error_chain};
use crate::health::Tracker;
use crate::instrument::Watch;
use crate::metrics::Stopwatch;
use crate::node::{Node, Role};
use crate::route::{Body, Call, ReplayWait, Route};
use crate::session::{self, Plan, Site};
use crate::tenant::Scope;
use crate::wire::Tap;

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
    /// The connection broke under the body: the node failed, not the
    /// statement. Nothing of a transaction was committed (its `COMMIT` was
    /// never sent); an autocommit statement may or may not have run.
    Lost(E),
    /// A read's connection, which had served before, broke under the body:
    /// it was stale (its server went away since it was pooled), and the
    /// read may run again on a new connection of the same node.
    Stale(E),
    /// A replica did not replay the write a read waits for within the
    /// bound; nothing ran. The read path goes elsewhere.
    NotReplayed,
    /// A read's body failed behind a statement of the library's that had
    /// failed on its connection (the end of the call before it): the
    /// failure may be that statement's, not the body's. The connection is
    /// closed and the read may run again on a new one of the same node.
    Behind(E),
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
            Self::Body(error) | Self::Stale(error) | Self::Behind(error) => {
                node.query_error(route, error)
            }
            Self::Lost(error) => Error::ConnectionLost {
                node: node.label.clone(),
                error,
            },
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
            Self::Lost(_) => ErrorKind::ConnectionLost.as_str(),
            Self::Stale(_) => "stale_connection",
            Self::Behind(_) => "behind_failed_statement",
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
            Self::Body(error) | Self::Lost(error) | Self::Stale(error) | Self::Behind(error) => {
                error
            }
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
    if node.role == Role::Writer && !node.is_up() {
        // Found unreachable before the call began: nothing ran.
        return Err(Failed {
            failure: Failure::Routing(node.out_of_service()),
            node_down: false,
        });
    }
    let _in_flight = InFlight::enter(&node.in_flight);
    let stopwatch = Stopwatch::start();
    let bounded = async {
        match node.attempt_timeout {
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
        }
    };
    // A read on a replica ejected meanwhile goes elsewhere; a call on a
    // writer found unreachable meanwhile ends.
    let Some(result) = node.health.unless_ejected(bounded).await else {
        node.metrics
            .operation(call.route, false, stopwatch.elapsed());
        return Err(Failed {
            failure: Failure::Routing(node.out_of_service()),
            node_down: true,
        });
    };
    node.metrics
        .operation(call.route, result.is_ok(), stopwatch.elapsed());
    match &result {
        Ok(_) => node.health.record_success(),
        Err(Failed {
            failure,
            node_down: true,
            ..
        }) => {
            let reason = match failure {
                Failure::Routing(error) => error_chain(error),
                Failure::Body(_)
                | Failure::Lost(_)
                | Failure::Stale(_)
                | Failure::Behind(_)
                | Failure::NotReplayed => "the connection broke during the query".to_owned(),
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
    let site = Site {
        writer: node.role == Role::Writer,
        pooler: node.pooler,
        statement_timeout: node.statement_timeout,
    };
    let mut plan = Plan::new(route, site, scope);
    if token_lsn.is_some() {
        plan = plan.flushed(route);
    }
    let (conn, reused, followed) = match ready_connection(node, route, &plan, replay_wait).await {
        Ok(ready) => ready,
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
        Err(NotReady::Busy(error)) => {
            return Err(Failed {
                failure: Failure::Routing(error),
                node_down: false,
            });
        }
    };
    let mut in_use = InUse {
        conn: Some(conn),
        node,
    };
    let call = Ended {
        node,
        route,
        plan: &plan,
        scope,
        token_lsn,
        reused,
        followed: followed.as_ref(),
    };
    let result = call.run(in_use.conn(), f).await;
    match &result {
        // Its server went away, or it failed a statement of the library's:
        // nothing runs there to cancel.
        Err(Failed {
            failure: Failure::Stale(_) | Failure::Behind(_),
            ..
        }) => in_use.close(),
        _ => in_use.release(&plan, followed),
    }
    result
}

/// A connection in use by a call. Dropped before [`InUse::release`] (the
/// call was cancelled or timed out), what the call may still run on it is
/// cancelled, and the connection returns to its pool only once the server
/// is idle on it (see the cancel module).
struct InUse<'a> {
    conn: Option<Object<AsyncPgConnection>>,
    node: &'a Node,
}

impl InUse<'_> {
    fn conn(&mut self) -> &mut Object<AsyncPgConnection> {
        self.conn.as_mut().expect("released only once, at the end")
    }

    /// Takes the connection out of its pool and closes it.
    fn close(mut self) {
        if let Some(conn) = self.conn.take() {
            drop(Object::take(conn));
        }
    }

    /// Sends the session reset (see the session module), which ends a
    /// transaction of the call's that nobody waits for, and gives the
    /// connection back to its pool, with the reset on its way: the next
    /// user's statements follow it. A connection found closed is dropped.
    ///
    /// On a followed connection (see the wire module), a read ends with
    /// the reset only when its replies say the body touched the session,
    /// else with a `ROLLBACK`; and a connection on which a statement of
    /// the library's failed (other than the call's own opening, whose
    /// failure its body met) is closed instead.
    fn release(mut self, plan: &Plan, followed: Option<Followed>) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let failed = Watch::take_failed(&mut conn);
        let sent = match followed {
            Some(Followed { tap, opening }) => {
                let seen = tap.take();
                if let Some(failed) = seen.failed.filter(|failed| failed.mark != opening) {
                    tracing::warn!(
                        node = %self.node.label,
                        sqlstate = failed.code(),
                        "a statement the library sent after a read failed; its connection is closed"
                    );
                    drop(Object::take(conn));
                    return;
                }
                if seen.kept {
                    tracing::debug!(
                        node = %self.node.label,
                        "a read left what no reset undoes (an SQL PREPARE, a LOAD); its connection is closed"
                    );
                    drop(Object::take(conn));
                    return;
                }
                let (_, mark) = tap.mark();
                send_ahead(&conn, &(mark + plan.end_of_followed_read(seen)))
            }
            None => match plan.reset(failed) {
                Some(reset) => send_ahead(&conn, reset),
                None => Ok(()),
            },
        };
        if sent.is_err() {
            drop(Object::take(conn));
        }
    }
}

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.node.canceller.cancel(conn, &self.node.label);
        }
    }
}

/// The part of a call that runs once its connection is ready.
struct Ended<'a> {
    node: &'a Node,
    route: Route,
    plan: &'a Plan,
    scope: Option<&'a Scope<'a>>,
    token_lsn: Option<&'a AtomicU64>,
    reused: bool,
    followed: Option<&'a Followed>,
}

impl Ended<'_> {
    /// Runs the body and ends the call.
    async fn run<T, E>(
        self,
        conn: &mut Object<AsyncPgConnection>,
        f: impl Body<T, E>,
    ) -> Result<T, Failed<E>> {
        let Self {
            node,
            route,
            plan,
            scope,
            token_lsn,
            reused,
            followed,
        } = self;
        let conn: &mut AsyncPgConnection = conn;
        let result = f(conn).await;
        if plan.ends_with_the_reset() {
            // Nothing was written: the reset that follows the call ends
            // its transaction, and nobody waits for it.
            let _ = session::settle(conn, Ok(()));
        }
        // Behind a failed statement of the library's: one before the call
        // (the end of the one before), or the call's own opening failing
        // for anything but a missing tenant schema (a cancel meant for an
        // earlier call, a recovery conflict): nothing of the body ran.
        let behind = followed.and_then(|followed| {
            followed
                .tap
                .failed()
                .filter(|failed| failed.mark != followed.opening || !failed.is_missing_schema())
        });
        let result = match (result, behind) {
            (Err(error), Some(failed)) => {
                tracing::debug!(
                    node = %node.label,
                    sqlstate = failed.code(),
                    "a read failed behind a failed statement of the library's; it runs again on a new connection"
                );
                return Err(Failed {
                    failure: Failure::Behind(error),
                    node_down: false,
                });
            }
            (result, _) => result,
        };
        match result {
            Ok(value) => {
                let Some(on_ok) = plan.on_ok else {
                    record_token(conn, node, route, token_lsn).await;
                    return Ok(value);
                };
                match end(conn, on_ok).await {
                    Ok(()) => {
                        record_token(conn, node, route, token_lsn).await;
                        Ok(value)
                    }
                    Err(
                        error @ DieselError::DatabaseError(
                            DatabaseErrorKind::ReadOnlyTransaction,
                            _,
                        ),
                    ) if route.is_read_only() => {
                        // The end of a read on the writer refused it: the
                        // connection, discarded, rolls back as it closes.
                        Err(Failed {
                            failure: Failure::Routing(node.query_error(route, error)),
                            node_down: false,
                        })
                    }
                    // Nothing was written: what was read stands. The connection
                    // is marked broken, and discarded.
                    Err(_) if route.is_read_only() => Ok(value),
                    Err(error) => Err(Failed {
                        failure: Failure::Routing(node.query_error(route, error)),
                        node_down: false,
                    }),
                }
            }
            Err(error) => {
                // A connection that breaks means the node, not the statement,
                // failed; or, for a connection that had served before, that
                // it was stale (its server went away since), which a read
                // tries again on a new one.
                let broken = match plan.on_err {
                    Some(on_err) => end(conn, on_err).await.is_err(),
                    None => session_ended(conn).await,
                };
                if broken {
                    let stale = reused && route.reads_on_replicas();
                    if stale {
                        node.drop_idle();
                    }
                    return Err(Failed {
                        failure: if stale {
                            Failure::Stale(error)
                        } else {
                            Failure::Lost(error)
                        },
                        node_down: !stale,
                    });
                }
                if let Some(scope) = scope
                    && !tenant_exists(conn, node, scope, plan).await
                {
                    return Err(Failed {
                        failure: Failure::Routing(Error::UnknownTenant {
                            tenant: scope.tenant.name().to_owned(),
                            node: node.label.clone(),
                        }),
                        node_down: false,
                    });
                }
                Err(Failed {
                    failure: Failure::Body(error),
                    node_down: false,
                })
            }
        }
    }
}

/// Whether the session ended under a body that failed, when the call has
/// no end of its own to tell (an autocommit read or write).
///
/// A server that ends a session (its postmaster died, an administrator
/// terminated it) sends its reason and then closes the socket, so a body
/// may fail with that reason before the client has seen the close. The
/// error path spends a round trip to know: an empty query fails only when
/// the connection is gone, also in a failed transaction. A read then goes
/// elsewhere, and any call says the node failed rather than its statement.
async fn session_ended(conn: &mut AsyncPgConnection) -> bool {
    if PoolableConnection::is_broken(conn) {
        return true;
    }
    let _ = SimpleAsyncConnection::batch_execute(conn, "").await;
    PoolableConnection::is_broken(conn)
}

/// Stores the write's token position in `sink`, when one is wanted.
async fn record_token(
    conn: &mut AsyncPgConnection,
    node: &Node,
    route: Route,
    sink: Option<&AtomicU64>,
) {
    if let Some(sink) = sink {
        sink.store(token_position(conn, node, route).await, Ordering::Relaxed);
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
async fn token_position(conn: &AsyncPgConnection, node: &Node, route: Route) -> u64 {
    use diesel_async::RunQueryDsl;

    let position = match route {
        Route::Transaction => {
            "pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_flush_lsn(), '0/0')::int8"
        }
        _ => "pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_insert_lsn(), '0/0')::int8",
    };
    let mut shared = conn;
    let question = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(position))
        .get_result(&mut shared);
    let lsn: QueryResult<i64> = session::ask(conn, node.pooler, question).await;
    lsn.ok()
        .and_then(|lsn| u64::try_from(lsn).ok())
        .unwrap_or(WriteToken::UNKNOWN_LSN)
}

/// Why a connection could not be made ready.
enum NotReady {
    /// The node failed.
    Down(Error),
    /// Every connection of the node's pool stayed in use for the whole
    /// wait: [`Error::Busy`]. The node did not fail.
    Busy(Error),
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

/// A pooled connection made ready for the body, and whether it had served
/// before: the reset and the plan's opening are on their way, ahead of the
/// body's first statement.
///
/// Pools hand out idle connections without a round trip (diesel-async's
/// `Fast`, which discards a connection whose socket has closed). One
/// found closed here is stale (its server went away since it was pooled):
/// it is dropped with every idle one, and one new connection is tried.
/// Nothing of the caller's has run yet, so this is safe for writes too. A
/// connection that breaks later, under the body, is the attempt's to judge.
///
/// With `replay_wait`, a replay check is sent after the reset and waited
/// for; while it fails, it is sent again after a pause, on the same
/// connection, until the bound. A replica that did not replay in time is
/// [`NotReady::NotReplayed`], and its connection stays pooled.
async fn ready_connection(
    node: &Node,
    route: Route,
    plan: &Plan,
    replay_wait: Option<ReplayWait>,
) -> Result<(Object<AsyncPgConnection>, bool, Option<Followed>), NotReady> {
    let mut last = None;
    for _ in 0..2 {
        let waiting_since = Stopwatch::start();
        let checkout = node.pool_for(route).get().await;
        node.metrics.waited(waiting_since.elapsed());
        let mut conn = checkout.map_err(|e| {
            if matches!(e, PoolError::Timeout(_)) {
                node.metrics.checkout_timed_out();
            }
            match e {
                PoolError::Timeout(TimeoutType::Wait) => NotReady::Busy(Error::Busy {
                    node: node.label.clone(),
                    max_size: node.pool_for(route).status().max_size,
                }),
                e => NotReady::Down(node.checkout_error(e)),
            }
        })?;
        let reused = Object::metrics(&conn).recycle_count > 0;
        match prepare(&mut conn, plan, replay_wait).await {
            Ok(followed) => return Ok((conn, reused, followed)),
            Err(DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, _))
                if replay_wait.is_some() =>
            {
                return Err(NotReady::NotReplayed);
            }
            Err(error) => {
                drop(Object::take(conn));
                node.drop_idle();
                last = Some(node.query_error(route, error));
            }
        }
    }
    Err(NotReady::Down(last.expect("the loop ran")))
}

/// A read on a connection whose replies the library follows (see the wire
/// module): what follows them, and the mark of the read's opening.
struct Followed {
    tap: Arc<Tap>,
    opening: u128,
}

/// Waits for the replica to replay the awaited write if asked, then sends
/// the plan's guard and opening (its `BEGIN`, the tenant's scope) ahead of
/// the body; on a followed connection, a replica read's opening is marked
/// as the library's.
async fn prepare(
    conn: &mut AsyncPgConnection,
    plan: &Plan,
    replay_wait: Option<ReplayWait>,
) -> QueryResult<Option<Followed>> {
    let tap = if plan.ends_with_the_reset() {
        Watch::tap(conn)
    } else {
        None
    };
    if let Some(wait) = replay_wait {
        let waited = wait_for_replay(conn, &replay_check_sql(wait.lsn), wait.bound).await;
        // A failed check, in autocommit, leaves no failed transaction.
        Watch::take_failed(conn);
        if let Some(tap) = &tap {
            // The checks were the library's: they left the session idle.
            tap.forget_touched();
        }
        waited?;
    }
    if let Some(guard) = plan.guard {
        send_ahead(conn, guard)?;
    }
    let mut followed = None;
    if let Some(opening) = &plan.opening {
        match tap {
            Some(tap) => {
                let (mark, text) = tap.mark();
                send_ahead(conn, &(text + opening))?;
                followed = Some(Followed { tap, opening: mark });
            }
            None => send_ahead(conn, opening)?,
        }
        if plan.transaction {
            session::begun(conn)?;
        }
    }
    Ok(followed)
}

/// Sends `sql` as one simple query, ahead of whatever the connection sends
/// next, without waiting for its outcome (the connection reads and drops
/// it in order). Fails only when the connection is already known closed.
fn send_ahead(conn: &AsyncPgConnection, sql: &str) -> QueryResult<()> {
    let mut shared = conn;
    let mut sending = std::pin::pin!(SimpleAsyncConnection::batch_execute(&mut shared, sql));
    // The first poll hands the query to the connection's task; the rest
    // would only wait for the answer.
    match sending
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(result) => result,
        Poll::Pending => Ok(()),
    }
}

/// Sends `check` (a replay check) until it passes or `bound` has passed
/// (the last check is made then), pausing between tries with no statement
/// running. The last failure is returned as it is.
async fn wait_for_replay(
    conn: &mut AsyncPgConnection,
    check: &str,
    bound: Duration,
) -> QueryResult<()> {
    let deadline = tokio::time::Instant::now() + bound;
    let mut pause = FIRST_REPLAY_PAUSE;
    loop {
        match SimpleAsyncConnection::batch_execute(conn, check).await {
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

/// A checked connection of `node`'s, taken out of its pool for good: its
/// reset is waited for, and a stale one is replaced once.
pub(crate) async fn dedicated_connection(node: &Node) -> Result<AsyncPgConnection, Error> {
    let plan = Plan::bare();
    let mut last = None;
    for _ in 0..2 {
        let (conn, _, _) = match ready_connection(node, Route::Write, &plan, None).await {
            Ok(ready) => ready,
            Err(NotReady::Down(error) | NotReady::Busy(error)) => return Err(error),
            // No wait was asked for.
            Err(NotReady::NotReplayed) => return Err(not_replayed(node)),
        };
        let mut conn = Object::take(conn);
        match SimpleAsyncConnection::batch_execute(&mut conn, "SELECT 1").await {
            Ok(()) => return Ok(conn),
            Err(error) => {
                node.drop_idle();
                last = Some(node.query_error(Route::Write, error));
            }
        }
    }
    Err(last.expect("the loop ran"))
}

/// Whether the tenant's schema exists on the node, asked after a scoped
/// body failed: a missing schema fails the call's transaction (see
/// [`Scope::statement`]), and the failure is then the tenant's. The call's
/// transaction, when it is not ended yet, is rolled back first. A check
/// that cannot be made says yes: the body's own error stands.
async fn tenant_exists(
    conn: &mut AsyncPgConnection,
    node: &Node,
    scope: &Scope<'_>,
    plan: &Plan,
) -> bool {
    use diesel::ExpressionMethods;
    use diesel::query_dsl::QueryDsl;
    use diesel_async::RunQueryDsl;

    if plan.ends_with_the_reset()
        && SimpleAsyncConnection::batch_execute(conn, "ROLLBACK")
            .await
            .is_err()
    {
        return true;
    }

    // A typed query: diesel-async keeps it prepared on the connection.
    let conn: &AsyncPgConnection = conn;
    let mut shared = conn;
    let question = diesel::select(diesel::dsl::exists(
        pg_namespace::table.filter(pg_namespace::nspname.eq(scope.tenant.name())),
    ))
    .get_result(&mut shared);
    session::ask(conn, node.pooler, question)
        .await
        .unwrap_or(true)
}

/// Ends a call with one batch of the plan, waited for. A connection whose
/// end failed is never reused: its session state is unknown.
async fn end(conn: &mut AsyncPgConnection, batch: &str) -> QueryResult<()> {
    let result = SimpleAsyncConnection::batch_execute(conn, batch).await;
    session::settle(conn, result)
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
