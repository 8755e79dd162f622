//! One node (the writer or a replica): its pool, its health, and one attempt
//! to run a routed closure on it.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use deadpool::Runtime;
use diesel::ConnectionError;
use diesel::QueryResult;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::deadpool::{Object, Pool, PoolError};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod, SetupCallback,
};
use diesel_async::{AnsiTransactionManager, AsyncPgConnection, SimpleAsyncConnection};
use futures_util::future::try_join_all;

use crate::balance::Candidate;
use crate::config::{HealthConfig, PoolConfig};
use crate::error::Error;
use crate::session::{self, Wrap};
use crate::set::{AsyncFunc, Route};
use crate::tenant::Scope;
use crate::url::DatabaseUrl;

/// The client gives up on an attempt this long after the server's
/// `statement_timeout` would have cancelled it: only a node that does not
/// answer at all is caught by it.
const STATEMENT_GRACE: Duration = Duration::from_millis(500);

/// The role of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The primary: takes writes, and reads when there is no replica, none
    /// is available, or the caller needs the freshest data.
    Writer,
    /// A read replica.
    Replica,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Writer => "writer",
            Self::Replica => "replica",
        })
    }
}

/// Whether a node takes reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Health {
    /// It takes its share of reads.
    Up,
    /// It failed `eject_after` times in a row and takes no reads until a
    /// probe succeeds. Only replicas are ejected.
    Ejected,
}

pub(crate) struct Node {
    pub(crate) role: Role,
    pub(crate) name: String,
    pub(crate) url: DatabaseUrl,
    /// `name (host:port)`, as errors show the node.
    pub(crate) label: String,
    pool: Pool<AsyncPgConnection>,
    warm_up: usize,
    /// The client's bound on one attempt, past the server's own.
    attempt_timeout: Option<Duration>,
    ejected: AtomicBool,
    failures: AtomicU32,
    ejections: AtomicU64,
    retried: AtomicU64,
    in_flight: AtomicUsize,
    last_error: Mutex<Option<String>>,
}

/// One failed attempt: what went wrong, and whether it says the node (not
/// the statement) is at fault, so that a read may go elsewhere.
pub(crate) struct Failed<E> {
    pub(crate) failure: Failure<E>,
    pub(crate) node_down: bool,
}

/// Why a routed closure did not return `Ok`: routing (checkout, `BEGIN`,
/// `COMMIT`, timeout) or the closure itself.
pub(crate) enum Failure<E> {
    Routing(Error),
    Body(E),
}

impl Node {
    pub(crate) fn new(
        role: Role,
        name: String,
        url: DatabaseUrl,
        config: &PoolConfig,
        application_name: &str,
    ) -> Self {
        let statement_timeout = config.statement_timeout();
        let mut manager_config = ManagerConfig::default();
        // See `ready_connection`: the first statement checks the connection.
        manager_config.recycling_method = RecyclingMethod::Fast;
        manager_config.custom_setup =
            connector(url.connect_config(application_name, statement_timeout));
        // The manager's URL string is only a label: connections are opened
        // from the parsed settings above, never from a string.
        let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
            url.to_string(),
            manager_config,
        );
        let attempt_timeout = statement_timeout.map(|t| t + STATEMENT_GRACE);
        let pool = Pool::builder(manager)
            .max_size(config.max_size)
            .wait_timeout(config.wait_timeout)
            .create_timeout(config.connect_timeout)
            .recycle_timeout(config.recycle_timeout)
            .runtime(Runtime::Tokio1)
            .build()
            .expect("a pool with a runtime always builds");
        Self {
            role,
            label: format!("{name} ({})", url.address()),
            name,
            url,
            pool,
            warm_up: config.warm_up,
            attempt_timeout,
            ejected: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            ejections: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            last_error: Mutex::new(None),
        }
    }

    pub(crate) fn is_up(&self) -> bool {
        !self.ejected.load(Ordering::Relaxed)
    }

    /// Opens `warm_up` connections at once and returns them to the pool.
    pub(crate) async fn warm_up(&self) -> Result<(), Error> {
        try_join_all((0..self.warm_up).map(|_| self.pool.get()))
            .await
            .map_err(|error| self.checkout_error(error))?;
        Ok(())
    }

    fn checkout_error(&self, error: PoolError) -> Error {
        Error::Checkout {
            node: self.label.clone(),
            error,
        }
    }

    pub(crate) fn query_error(&self, route: Route, error: diesel::result::Error) -> Error {
        Error::from_query(self.label.clone(), error, route.is_read_only())
    }

    /// Runs `f` once on this node, bounded by the attempt timeout.
    pub(crate) async fn attempt<T, E, F>(
        self: &Arc<Self>,
        route: Route,
        f: F,
        health: &HealthConfig,
        scope: Option<&Scope<'_>>,
    ) -> Result<T, Failed<E>>
    where
        F: for<'r> AsyncFunc<&'r mut AsyncPgConnection, Result<T, E>, Fut: Send> + Send,
    {
        let _in_flight = InFlight::enter(&self.in_flight);
        let result = match self.attempt_timeout {
            None => self.run(route, f, scope).await,
            Some(after) => tokio::time::timeout(after, self.run(route, f, scope))
                .await
                .unwrap_or_else(|_| {
                    Err(Failed {
                        failure: Failure::Routing(Error::Timeout {
                            node: self.label.clone(),
                            after,
                        }),
                        node_down: true,
                    })
                }),
        };
        match &result {
            Ok(_) => self.record_success(),
            Err(Failed {
                failure,
                node_down: true,
            }) => {
                let reason = match failure {
                    Failure::Routing(error) => error.to_string(),
                    Failure::Body(_) => "the connection broke during the query".to_owned(),
                };
                self.record_failure(reason, health);
            }
            Err(_) => {}
        }
        result
    }

    async fn run<T, E, F>(
        &self,
        route: Route,
        f: F,
        scope: Option<&Scope<'_>>,
    ) -> Result<T, Failed<E>>
    where
        F: for<'r> AsyncFunc<&'r mut AsyncPgConnection, Result<T, E>, Fut: Send> + Send,
    {
        let wrap = Wrap::new(route, self.role == Role::Writer);
        let down = |error| Failed {
            failure: Failure::Routing(error),
            node_down: true,
        };
        let mut conn = self.ready_connection(route, wrap).await.map_err(down)?;
        if let Some(scope) = scope
            && let Err(error) = self.enter(&mut conn, route, scope).await
        {
            // As for a body's error: a failed end means a broken
            // connection, not a missing schema.
            let broken = end(&mut conn, wrap, false).await.is_err();
            return Err(Failed {
                failure: Failure::Routing(error),
                node_down: broken,
            });
        }
        match f(&mut conn).await {
            Ok(value) => match end(&mut conn, wrap, true).await {
                Ok(()) => Ok(value),
                Err(
                    error @ DieselError::DatabaseError(DatabaseErrorKind::ReadOnlyTransaction, _),
                ) if route.is_read_only() => {
                    // The guard of a read on the writer refused it: the
                    // connection, discarded, rolls back as it closes.
                    Err(Failed {
                        failure: Failure::Routing(self.query_error(route, error)),
                        node_down: false,
                    })
                }
                // Nothing was written: what was read stands. The connection
                // is marked broken, and discarded.
                Err(_) if route.is_read_only() => Ok(value),
                Err(error) => Err(Failed {
                    failure: Failure::Routing(self.query_error(route, error)),
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

    /// A pooled connection that has answered its first statement: the
    /// `BEGIN` of a transaction, `SELECT 1` for an autocommit write.
    ///
    /// Pools recycle idle connections without a check (diesel-async's
    /// `Fast`): the first statement is the check, and it costs no extra
    /// round trip. A connection that fails it is stale (its server went
    /// away since it was pooled) or its node is down: it is dropped with
    /// every idle one, and one new connection is tried. Nothing of the
    /// caller's has run yet, so this is safe for writes too.
    async fn ready_connection(
        &self,
        route: Route,
        wrap: Wrap,
    ) -> Result<Object<AsyncPgConnection>, Error> {
        let mut last = None;
        for _ in 0..2 {
            let mut conn = self.pool.get().await.map_err(|e| self.checkout_error(e))?;
            let result = match wrap.begin {
                Some(begin) => {
                    AnsiTransactionManager::begin_transaction_sql(&mut *conn, begin).await
                }
                None => SimpleAsyncConnection::batch_execute(&mut *conn, "SELECT 1").await,
            };
            match result {
                Ok(()) => return Ok(conn),
                Err(error) => {
                    drop(Object::take(conn));
                    self.pool.retain(|_, _| false);
                    last = Some(self.query_error(route, error));
                }
            }
        }
        Err(last.expect("the loop ran"))
    }

    /// Sets the tenant's `search_path` for this transaction only
    /// (`set_config(.., true)`, as `SET LOCAL`), and checks that its schema
    /// exists: PostgreSQL silently skips a missing schema in `search_path`,
    /// which would let the tenant read the shared schemas' tables instead.
    async fn enter(
        &self,
        conn: &mut AsyncPgConnection,
        route: Route,
        scope: &Scope<'_>,
    ) -> Result<(), Error> {
        use diesel::ExpressionMethods;
        use diesel::query_dsl::QueryDsl;
        use diesel_async::RunQueryDsl;

        // A typed query: diesel-async keeps it as a prepared statement on
        // each connection, so the server parses and plans it once.
        let (_, present): (String, bool) = diesel::select((
            set_config("search_path", &scope.search_path, true),
            diesel::dsl::exists(
                pg_namespace::table.filter(pg_namespace::nspname.eq(scope.tenant.name())),
            ),
        ))
        .get_result(conn)
        .await
        .map_err(|error| self.query_error(route, error))?;
        if present {
            Ok(())
        } else {
            Err(Error::UnknownTenant {
                tenant: scope.tenant.name().to_owned(),
                node: self.label.clone(),
            })
        }
    }

    /// A checked connection taken out of the pool for good.
    pub(crate) async fn dedicated_connection(&self) -> Result<AsyncPgConnection, Error> {
        let wrap = Wrap::new(Route::Write, true);
        Ok(Object::take(
            self.ready_connection(Route::Write, wrap).await?,
        ))
    }

    fn record_success(&self) {
        // Read first: a store on every success would bounce the cache line.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    fn record_failure(self: &Arc<Self>, reason: String, health: &HealthConfig) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(node = %self.label, failures, %reason, "node failure");
        if self.role == Role::Replica
            && failures >= health.eject_after
            && !self.ejected.swap(true, Ordering::AcqRel)
        {
            self.ejections.fetch_add(1, Ordering::Relaxed);
            // Idle connections to a failing node are not handed out again.
            self.pool.retain(|_, _| false);
            tracing::warn!(node = %self.label, %reason, "replica ejected: reads go elsewhere until a probe succeeds");
            tokio::spawn(probe(Arc::downgrade(self), health.clone()));
        }
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
    }

    /// Counts a failed attempt that a read retried elsewhere.
    pub(crate) fn count_retry(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn status(&self) -> NodeStatus {
        let pool = self.pool.status();
        NodeStatus {
            role: self.role,
            name: self.name.clone(),
            address: self.url.address(),
            health: if self.is_up() {
                Health::Up
            } else {
                Health::Ejected
            },
            in_flight: self.in_flight.load(Ordering::Relaxed),
            consecutive_failures: self.failures.load(Ordering::Relaxed),
            ejections: self.ejections.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            max_size: pool.max_size,
            size: pool.size,
            available: pool.available,
            waiting: pool.waiting,
        }
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

/// Opens connections from parsed settings, the one reading of the URL.
fn connector(config: tokio_postgres::Config) -> SetupCallback<AsyncPgConnection> {
    let config = Arc::new(config);
    Box::new(move |_label| {
        let config = Arc::clone(&config);
        Box::pin(async move {
            let (client, connection) = config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| ConnectionError::BadConnection(with_causes(&e)))?;
            AsyncPgConnection::try_from_client_and_connection(client, connection).await
        })
    })
}

/// An error's message followed by those of its causes: tokio-postgres says
/// "db error" and leaves the server's words to the cause.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        text.push_str(": ");
        text.push_str(&next.to_string());
        cause = next.source();
    }
    text
}

impl Candidate for Arc<Node> {
    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
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

/// Probes an ejected replica with a real query, waiting longer between
/// probes while it stays down, and re-admits it when one succeeds. Ends when
/// the replica set is dropped.
async fn probe(node: Weak<Node>, health: HealthConfig) {
    use diesel_async::RunQueryDsl;

    let mut wait = health.probe_interval;
    loop {
        tokio::time::sleep(wait).await;
        let Some(node) = node.upgrade() else { return };
        let check = async {
            let mut conn = node.pool.get().await.ok()?;
            let one: QueryResult<i32> =
                diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1"))
                    .get_result(&mut *conn)
                    .await;
            one.ok()
        };
        let bound = node.attempt_timeout.unwrap_or(Duration::from_secs(10));
        if let Ok(Some(_)) = tokio::time::timeout(bound, check).await {
            node.failures.store(0, Ordering::Relaxed);
            node.ejected.store(false, Ordering::Release);
            tracing::info!(node = %node.label, "replica re-admitted: a probe query succeeded");
            return;
        }
        wait = (wait * 2).min(health.probe_max_interval);
    }
}

/// A snapshot of one node, taken by [`ReplicaSet::status`](crate::ReplicaSet::status).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NodeStatus {
    /// Writer or replica.
    pub role: Role,
    /// `writer`, or `replica-N` with N its position in the configuration.
    pub name: String,
    /// `host:port`.
    pub address: String,
    /// Whether it takes reads.
    pub health: Health,
    /// Queries running on it.
    pub in_flight: usize,
    /// Failures since its last success.
    pub consecutive_failures: u32,
    /// Times it was ejected.
    pub ejections: u64,
    /// Failed attempts on it that a read retried on another node.
    pub retried: u64,
    /// Its last failure, as its error message (never with a password).
    pub last_error: Option<String>,
    /// Most connections its pool may hold.
    pub max_size: usize,
    /// Connections open now.
    pub size: usize,
    /// Idle connections ready for use.
    pub available: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
}
