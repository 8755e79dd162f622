//! One attempt of a call on one node: a checked connection, the tenant's
//! scope, the body, the end of the call (see the session module), and
//! whether a failure is the node's (so that a read may go elsewhere) or
//! the statement's.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use diesel::QueryResult;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::deadpool::Object;
use diesel_async::{AnsiTransactionManager, AsyncPgConnection, SimpleAsyncConnection};

use crate::error::{Error, error_chain};
use crate::health::Tracker;
use crate::node::{Node, Role};
use crate::route::{Body, Call, Route};
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
}

impl Failure<DieselError> {
    /// The body's diesel error as [`Error::Query`] or
    /// [`Error::ReadOnlyViolation`]; routing errors as they are.
    pub(crate) fn into_error(self, node: &Node, route: Route) -> Error {
        match self {
            Self::Routing(error) => error,
            Self::Body(error) => node.query_error(route, error),
        }
    }
}

impl<E: From<Error>> Failure<E> {
    /// The caller's own error: the body's as it is, routing errors through
    /// `E: From<Error>`.
    pub(crate) fn into_own(self) -> E {
        match self {
            Self::Routing(error) => E::from(error),
            Self::Body(error) => error,
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
    match &result {
        Ok(_) => node.health.record_success(),
        Err(Failed {
            failure,
            node_down: true,
        }) => {
            let reason = match failure {
                Failure::Routing(error) => error_chain(error),
                Failure::Body(_) => "the connection broke during the query".to_owned(),
            };
            Tracker::record_failure(node, reason);
        }
        Err(_) => {}
    }
    result
}

async fn run<T, E>(node: &Node, call: Call<'_>, f: impl Body<T, E>) -> Result<T, Failed<E>> {
    let Call { route, scope } = call;
    let wrap = Wrap::new(route, node.role == Role::Writer);
    let down = |error| Failed {
        failure: Failure::Routing(error),
        node_down: true,
    };
    let mut conn = ready_connection(node, route, wrap).await.map_err(down)?;
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
            Ok(()) => Ok(value),
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

/// A pooled connection that has answered its first statement: the `BEGIN`
/// of a transaction, `SELECT 1` for an autocommit write.
///
/// Pools recycle idle connections without a check (diesel-async's `Fast`):
/// the first statement is the check, and it costs no extra round trip. A
/// connection that fails it is stale (its server went away since it was
/// pooled) or its node is down: it is dropped with every idle one, and one
/// new connection is tried. Nothing of the caller's has run yet, so this is
/// safe for writes too.
async fn ready_connection(
    node: &Node,
    route: Route,
    wrap: Wrap,
) -> Result<Object<AsyncPgConnection>, Error> {
    let mut last = None;
    for _ in 0..2 {
        let mut conn = node.pool.get().await.map_err(|e| node.checkout_error(e))?;
        let result = match wrap.begin {
            Some(begin) => AnsiTransactionManager::begin_transaction_sql(&mut *conn, begin).await,
            None => SimpleAsyncConnection::batch_execute(&mut *conn, "SELECT 1").await,
        };
        match result {
            Ok(()) => return Ok(conn),
            Err(error) => {
                drop(Object::take(conn));
                node.pool.retain(|_, _| false);
                last = Some(node.query_error(route, error));
            }
        }
    }
    Err(last.expect("the loop ran"))
}

/// A checked connection of `node`'s, taken out of its pool for good.
pub(crate) async fn dedicated_connection(node: &Node) -> Result<AsyncPgConnection, Error> {
    let wrap = Wrap::new(Route::Write, true);
    Ok(Object::take(
        ready_connection(node, Route::Write, wrap).await?,
    ))
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
