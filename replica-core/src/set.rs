//! The replica set: one writer pool, any number of replica pools, and the
//! routing of each query.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use deadpool::Runtime;
use diesel::QueryResult;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::{Object, Pool, PoolError};
use diesel_async::{AnsiTransactionManager, AsyncPgConnection, TransactionManager};
use futures_util::future::{join_all, try_join_all};

use crate::config::{Config, PoolConfig};
use crate::error::Error;
use crate::url::DatabaseUrl;

/// An async closure taking a connection whose future is nameable, so that
/// bounds such as `Send` can be put on it.
///
/// Implemented for every `async |conn| ...` closure; it exists because
/// `AsyncFnOnce` cannot yet say that its future is `Send` (the same device
/// as diesel-async's transactions). Never implement it by hand.
pub trait AsyncFunc<T, R>:
    AsyncFnOnce(T) -> R + FnOnce(T) -> <Self as AsyncFunc<T, R>>::Fut
{
    /// The future the closure returns.
    type Fut: Future<Output = R>;
}

impl<F, T, Fut, R> AsyncFunc<T, R> for F
where
    F: AsyncFnOnce(T) -> R + FnOnce(T) -> Fut,
    Fut: Future<Output = R>,
{
    type Fut = Fut;
}

/// The role of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The primary: takes writes, and reads when there is no replica or the
    /// caller needs the freshest data.
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

/// One writer pool and any number of replica pools, with the routing of
/// reads and writes between them.
///
/// Cloning is cheap and shares the pools.
///
/// - [`read`](Self::read) runs on a replica, chosen round robin, inside a
///   `READ ONLY` transaction; with no replicas, on the writer, still
///   `READ ONLY`.
/// - [`read_fresh`](Self::read_fresh) runs on the writer, `READ ONLY`, for
///   reads that must see the latest writes.
/// - [`write`](Self::write) runs on the writer; [`transaction`](Self::transaction)
///   runs on the writer inside a transaction.
#[derive(Clone)]
pub struct ReplicaSet {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Node,
    replicas: Vec<Node>,
    next: AtomicUsize,
}

struct Node {
    role: Role,
    name: String,
    url: DatabaseUrl,
    /// `name (host:port)`, as errors show the node.
    label: String,
    pool: Pool<AsyncPgConnection>,
    warm_up: usize,
}

/// Where and how a routed closure runs. Public for the macros only.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// A replica (the writer when there is none), `READ ONLY` transaction.
    Read,
    /// The writer, `READ ONLY` transaction.
    ReadFresh,
    /// The writer, transaction.
    Transaction,
    /// The writer, no transaction.
    Write,
}

impl Route {
    fn begin(self) -> Option<&'static str> {
        match self {
            Self::Read | Self::ReadFresh => Some("BEGIN TRANSACTION READ ONLY"),
            Self::Transaction => Some("BEGIN"),
            Self::Write => None,
        }
    }

    fn is_read_only(self) -> bool {
        matches!(self, Self::Read | Self::ReadFresh)
    }
}

/// Why a routed closure did not return `Ok`: routing (checkout, `BEGIN`,
/// `COMMIT`) or the closure itself.
enum Failure<E> {
    Routing(Error),
    Body(E),
}

impl Node {
    fn new(
        role: Role,
        name: String,
        url: DatabaseUrl,
        pool: &PoolConfig,
        application_name: &str,
    ) -> Self {
        let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(
            url.connect_string(application_name),
        );
        let builder = Pool::builder(manager)
            .max_size(pool.max_size)
            .wait_timeout(pool.wait_timeout)
            .create_timeout(pool.connect_timeout)
            .recycle_timeout(pool.recycle_timeout)
            .runtime(Runtime::Tokio1);
        Self {
            role,
            label: format!("{name} ({})", url.address()),
            name,
            url,
            pool: builder
                .build()
                .expect("a pool with a runtime always builds"),
            warm_up: pool.warm_up,
        }
    }

    async fn get(&self) -> Result<Object<AsyncPgConnection>, Error> {
        self.pool.get().await.map_err(|error| Error::Checkout {
            node: self.label.clone(),
            error,
        })
    }

    /// Opens `warm_up` connections at once and returns them to the pool.
    async fn warm_up(&self) -> Result<(), PoolError> {
        try_join_all((0..self.warm_up).map(|_| self.pool.get())).await?;
        Ok(())
    }

    async fn run<T, E, F>(&self, route: Route, f: F) -> Result<T, Failure<E>>
    where
        F: for<'r> AsyncFunc<&'r mut AsyncPgConnection, Result<T, E>, Fut: Send> + Send,
    {
        let mut conn = self.get().await.map_err(Failure::Routing)?;
        let conn: &mut AsyncPgConnection = &mut conn;
        let Some(begin) = route.begin() else {
            return f(conn).await.map_err(Failure::Body);
        };
        let routing = |error| Failure::Routing(self.query_error(route, error));
        AnsiTransactionManager::begin_transaction_sql(&mut *conn, begin)
            .await
            .map_err(routing)?;
        match f(&mut *conn).await {
            Ok(value) => {
                AnsiTransactionManager::commit_transaction(conn)
                    .await
                    .map_err(routing)?;
                Ok(value)
            }
            Err(error) => {
                // A failed rollback marks the connection broken, and the pool
                // discards it; the caller needs the first error.
                let _ = AnsiTransactionManager::rollback_transaction(conn).await;
                Err(Failure::Body(error))
            }
        }
    }

    fn query_error(&self, route: Route, error: diesel::result::Error) -> Error {
        Error::from_query(self.label.clone(), error, route.is_read_only())
    }

    fn status(&self) -> NodeStatus {
        let pool = self.pool.status();
        NodeStatus {
            role: self.role,
            name: self.name.clone(),
            address: self.url.address(),
            max_size: pool.max_size,
            size: pool.size,
            available: pool.available,
            waiting: pool.waiting,
        }
    }
}

impl ReplicaSet {
    /// Builds the pools and opens each node's warm-up connections.
    ///
    /// A writer that cannot be reached is an error. A replica that cannot be
    /// reached is logged as a warning and left in the set: its pool connects
    /// again on first use.
    ///
    /// # Errors
    /// [`Error::Checkout`] when the writer's warm-up fails.
    pub async fn connect(config: Config) -> Result<Self, Error> {
        let set = Self::new(config);
        let inner = &set.inner;
        let (writer, replicas) = futures_util::future::join(
            inner.writer.warm_up(),
            join_all(inner.replicas.iter().map(Node::warm_up)),
        )
        .await;
        writer.map_err(|error| Error::Checkout {
            node: inner.writer.label.clone(),
            error,
        })?;
        for (node, result) in inner.replicas.iter().zip(replicas) {
            if let Err(error) = result {
                tracing::warn!(node = %node.label, %error, "replica warm-up failed; it stays in the set");
            }
        }
        if inner.replicas.is_empty() {
            tracing::info!(writer = %inner.writer.url, "no replicas configured: reads go to the writer, still READ ONLY");
        } else {
            tracing::info!(writer = %inner.writer.url, replicas = inner.replicas.len(), "replica set ready");
        }
        Ok(set)
    }

    /// Reads the configuration from the `DATABASE_*` environment variables
    /// (see [`Config::from_env`]) and connects.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad configuration, else as [`ReplicaSet::connect`].
    pub async fn from_env() -> Result<Self, Error> {
        Self::connect(Config::from_env()?).await
    }

    /// Builds the pools without opening any connection: each opens on first
    /// use, and nothing is warmed up.
    pub fn new(config: Config) -> Self {
        let Config {
            writer,
            replicas,
            writer_pool,
            replica_pool,
            application_name,
        } = config;
        let writer = Node::new(
            Role::Writer,
            "writer".into(),
            writer,
            &writer_pool,
            &application_name,
        );
        let replicas = replicas
            .into_iter()
            .enumerate()
            .map(|(i, url)| {
                let name = format!("replica-{i}");
                Node::new(Role::Replica, name, url, &replica_pool, &application_name)
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                writer,
                replicas,
                next: AtomicUsize::new(0),
            }),
        }
    }

    /// Runs `f` on a replica inside a `READ ONLY` transaction and returns its
    /// result. Replicas take turns (round robin); with none configured the
    /// writer serves the read, still `READ ONLY`.
    ///
    /// ```no_run
    /// # use diesel_async::RunQueryDsl;
    /// # async fn demo(db: replica_core::ReplicaSet) -> Result<(), replica_core::Error> {
    /// let answer: i32 = db
    ///     .read(async |conn| diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("42")).get_result(conn).await)
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Checkout`] when no connection could be had,
    /// [`Error::ReadOnlyViolation`] when `f` tried to write, and
    /// [`Error::Query`] for any other error of `f`.
    pub fn read<T, F>(&self, f: F) -> impl Future<Output = Result<T, Error>> + Send
    where
        F: for<'r> AsyncFnOnce(&'r mut AsyncPgConnection) -> QueryResult<T>
            + for<'r> AsyncFunc<&'r mut AsyncPgConnection, QueryResult<T>, Fut: Send>
            + Send,
        T: Send,
    {
        self.route(Route::Read, f)
    }

    /// Runs `f` on the writer inside a `READ ONLY` transaction: a read that
    /// must see every write committed before it.
    ///
    /// # Errors
    /// As [`ReplicaSet::read`].
    pub fn read_fresh<T, F>(&self, f: F) -> impl Future<Output = Result<T, Error>> + Send
    where
        F: for<'r> AsyncFnOnce(&'r mut AsyncPgConnection) -> QueryResult<T>
            + for<'r> AsyncFunc<&'r mut AsyncPgConnection, QueryResult<T>, Fut: Send>
            + Send,
        T: Send,
    {
        self.route(Route::ReadFresh, f)
    }

    /// Runs `f` on the writer, outside any transaction: each statement
    /// commits on its own.
    ///
    /// # Errors
    /// [`Error::Checkout`] when no connection could be had, and
    /// [`Error::Query`] for an error of `f`.
    pub fn write<T, F>(&self, f: F) -> impl Future<Output = Result<T, Error>> + Send
    where
        F: for<'r> AsyncFnOnce(&'r mut AsyncPgConnection) -> QueryResult<T>
            + for<'r> AsyncFunc<&'r mut AsyncPgConnection, QueryResult<T>, Fut: Send>
            + Send,
        T: Send,
    {
        self.route(Route::Write, f)
    }

    /// Runs `f` on the writer inside a transaction, committed when `f`
    /// returns `Ok` and rolled back when it returns `Err`.
    ///
    /// # Errors
    /// As [`ReplicaSet::write`].
    pub fn transaction<T, F>(&self, f: F) -> impl Future<Output = Result<T, Error>> + Send
    where
        F: for<'r> AsyncFnOnce(&'r mut AsyncPgConnection) -> QueryResult<T>
            + for<'r> AsyncFunc<&'r mut AsyncPgConnection, QueryResult<T>, Fut: Send>
            + Send,
        T: Send,
    {
        self.route(Route::Transaction, f)
    }

    /// How many replicas the set holds.
    pub fn replica_count(&self) -> usize {
        self.inner.replicas.len()
    }

    /// A snapshot of every node's pool, taken now.
    pub fn status(&self) -> Status {
        Status {
            writer: self.inner.writer.status(),
            replicas: self.inner.replicas.iter().map(Node::status).collect(),
        }
    }
}

impl ReplicaSet {
    /// Runs a closure returning diesel's `QueryResult` on `route`; its
    /// errors become [`Error::Query`] or [`Error::ReadOnlyViolation`].
    pub(crate) async fn route<T, F>(&self, route: Route, f: F) -> Result<T, Error>
    where
        F: for<'r> AsyncFunc<&'r mut AsyncPgConnection, QueryResult<T>, Fut: Send> + Send,
        T: Send,
    {
        let node = self.inner.node(route);
        node.run(route, f).await.map_err(|failure| match failure {
            Failure::Routing(error) => error,
            Failure::Body(error) => node.query_error(route, error),
        })
    }

    /// Runs a closure returning the caller's own error type on `route`;
    /// routing failures are converted with `E: From<Error>`.
    pub(crate) async fn route_with<T, E, F>(&self, route: Route, f: F) -> Result<T, E>
    where
        F: for<'r> AsyncFunc<&'r mut AsyncPgConnection, Result<T, E>, Fut: Send> + Send,
        T: Send,
        E: From<Error> + Send,
    {
        let node = self.inner.node(route);
        node.run(route, f).await.map_err(|failure| match failure {
            Failure::Routing(error) => E::from(error),
            Failure::Body(error) => error,
        })
    }
}

impl Inner {
    fn node(&self, route: Route) -> &Node {
        match route {
            Route::Read => self.pick_reader(),
            Route::ReadFresh | Route::Transaction | Route::Write => &self.writer,
        }
    }

    /// The seam where replica selection lives.
    fn pick_reader(&self) -> &Node {
        match self.replicas.len() {
            0 => &self.writer,
            n => &self.replicas[self.next.fetch_add(1, Ordering::Relaxed) % n],
        }
    }
}

/// A snapshot of the replica set's pools, taken by [`ReplicaSet::status`].
/// It does not change as the pools do.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Status {
    /// The writer.
    pub writer: NodeStatus,
    /// The replicas, in configuration order.
    pub replicas: Vec<NodeStatus>,
}

/// A snapshot of one node's pool.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NodeStatus {
    /// Writer or replica.
    pub role: Role,
    /// `writer`, or `replica-N` with N its position in the configuration.
    pub name: String,
    /// `host:port`.
    pub address: String,
    /// Most connections the pool may hold.
    pub max_size: usize,
    /// Connections open now.
    pub size: usize,
    /// Idle connections ready for use.
    pub available: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
}
