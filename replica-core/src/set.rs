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

/// How a routed closure runs on its connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Inside `BEGIN TRANSACTION READ ONLY`.
    ReadOnly,
    /// Inside `BEGIN`.
    Transaction,
    /// Outside any transaction.
    Autocommit,
}

impl Mode {
    fn begin(self) -> Option<&'static str> {
        match self {
            Self::ReadOnly => Some("BEGIN TRANSACTION READ ONLY"),
            Self::Transaction => Some("BEGIN"),
            Self::Autocommit => None,
        }
    }
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

    async fn run<T, F>(&self, mode: Mode, f: F) -> Result<T, Error>
    where
        F: for<'r> AsyncFunc<&'r mut AsyncPgConnection, QueryResult<T>, Fut: Send> + Send,
        T: Send,
    {
        let mut conn = self.get().await?;
        let conn: &mut AsyncPgConnection = &mut conn;
        let result = match mode.begin() {
            None => f(conn).await,
            Some(begin) => in_transaction(conn, begin, f).await,
        };
        result.map_err(|error| Error::from_query(self.label.clone(), error, mode == Mode::ReadOnly))
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
        self.inner.pick_reader().run(Mode::ReadOnly, f)
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
        self.inner.writer.run(Mode::ReadOnly, f)
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
        self.inner.writer.run(Mode::Autocommit, f)
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
        self.inner.writer.run(Mode::Transaction, f)
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

impl Inner {
    /// The seam where replica selection lives.
    fn pick_reader(&self) -> &Node {
        match self.replicas.len() {
            0 => &self.writer,
            n => &self.replicas[self.next.fetch_add(1, Ordering::Relaxed) % n],
        }
    }
}

async fn in_transaction<T, F>(conn: &mut AsyncPgConnection, begin: &str, f: F) -> QueryResult<T>
where
    F: for<'r> AsyncFunc<&'r mut AsyncPgConnection, QueryResult<T>, Fut: Send> + Send,
{
    AnsiTransactionManager::begin_transaction_sql(&mut *conn, begin).await?;
    match f(&mut *conn).await {
        Ok(value) => {
            AnsiTransactionManager::commit_transaction(conn).await?;
            Ok(value)
        }
        Err(error) => {
            // A failed rollback marks the connection broken, and the pool
            // discards it; the caller needs the first error.
            let _ = AnsiTransactionManager::rollback_transaction(conn).await;
            Err(error)
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
