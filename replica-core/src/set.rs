//! The replica set: one writer and any number of replicas, and the routing,
//! retry and fallback of each query.

use std::future::Future;
use std::sync::Arc;

use diesel::QueryResult;
use diesel_async::AsyncPgConnection;
use futures_util::future::join_all;

use crate::balance::Balancer;
use crate::config::{Config, HealthConfig};
use crate::error::Error;
use crate::node::{Failed, Failure, Node, NodeStatus, Role};
use crate::tenant::{Scope, Tenant};

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

/// One writer pool and any number of replica pools, with the routing of
/// reads and writes between them.
///
/// Cloning is cheap and shares the pools.
///
/// - [`read`](Self::read) runs on a replica, chosen by the configured
///   [`Balance`](crate::Balance), inside a `READ ONLY` transaction. A read
///   that fails because its node failed (refused or broken connection, no
///   answer in time) is tried again on another replica, then on the writer
///   when allowed; SQL errors are returned as they are. With no replicas,
///   reads run on the writer, still `READ ONLY`.
/// - [`read_fresh`](Self::read_fresh) runs on the writer, `READ ONLY`, for
///   reads that must see the latest writes.
/// - [`write`](Self::write) runs on the writer; [`transaction`](Self::transaction)
///   runs on the writer inside a transaction. Writes are never retried.
#[derive(Clone)]
pub struct ReplicaSet {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Arc<Node>,
    replicas: Vec<Arc<Node>>,
    balancer: Balancer,
    health: HealthConfig,
    shared_schemas: Vec<String>,
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
    pub(crate) fn is_read_only(self) -> bool {
        matches!(self, Self::Read | Self::ReadFresh)
    }
}

/// Marks the writer among the nodes a read has tried.
const WRITER: usize = usize::MAX;

impl ReplicaSet {
    /// Builds the pools and opens each node's warm-up connections.
    ///
    /// A writer that cannot be reached is an error. A replica that cannot be
    /// reached is logged as a warning and left in the set: its pool connects
    /// again on first use.
    ///
    /// # Errors
    /// [`Error::Config`] as for [`ReplicaSet::new`], [`Error::Checkout`]
    /// when the writer's warm-up fails.
    pub async fn connect(config: Config) -> Result<Self, Error> {
        let set = Self::new(config)?;
        let inner = &set.inner;
        let (writer, replicas) = futures_util::future::join(
            inner.writer.warm_up(),
            join_all(inner.replicas.iter().map(|node| node.warm_up())),
        )
        .await;
        writer?;
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
    ///
    /// # Errors
    /// [`Error::Config`] for a setting out of its range or replica weights
    /// that do not fit the replicas: a `Config` changed by hand is checked
    /// as one read from the environment is.
    pub fn new(config: Config) -> Result<Self, Error> {
        config.validate()?;
        let Config {
            writer,
            replicas,
            writer_pool,
            replica_pool,
            application_name,
            balance,
            replica_weights,
            health,
            shared_schemas,
        } = config;
        let writer = Node::new(
            Role::Writer,
            "writer".into(),
            writer,
            &writer_pool,
            &application_name,
        );
        let replicas: Vec<Arc<Node>> = replicas
            .into_iter()
            .enumerate()
            .map(|(i, url)| {
                let name = format!("replica-{i}");
                Arc::new(Node::new(
                    Role::Replica,
                    name,
                    url,
                    &replica_pool,
                    &application_name,
                ))
            })
            .collect();
        let weights = if replica_weights.is_empty() {
            vec![1; replicas.len()]
        } else {
            replica_weights
        };
        Ok(Self {
            inner: Arc::new(Inner {
                writer: Arc::new(writer),
                balancer: Balancer::new(balance, &weights),
                replicas,
                health,
                shared_schemas,
            }),
        })
    }

    /// Runs `f` on a replica inside a `READ ONLY` transaction and returns its
    /// result.
    ///
    /// `f` may run more than once: when its node fails (a refused or broken
    /// connection, no answer within the statement timeout) it is run again
    /// on another replica, up to `read_retries` times, then on the writer
    /// when `reads_fall_back_to_writer` allows. Hence `Clone`: a closure
    /// that borrows what it uses is cloned for free.
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
    /// The last attempt's failure ([`Error::Checkout`], [`Error::Timeout`])
    /// when every try failed, [`Error::NoReplicaAvailable`] when no replica
    /// could be tried and reads may not fall back to the writer,
    /// [`Error::ReadOnlyViolation`] when `f` tried to write, and
    /// [`Error::Query`] for any other error of `f`.
    pub fn read<T, F>(&self, f: F) -> impl Future<Output = Result<T, Error>> + Send
    where
        F: for<'r> AsyncFnOnce(&'r mut AsyncPgConnection) -> QueryResult<T>
            + for<'r> AsyncFunc<&'r mut AsyncPgConnection, QueryResult<T>, Fut: Send>
            + Clone
            + Send,
        T: Send,
    {
        self.read_query(f, None)
    }

    /// Runs `f` on the writer inside a `READ ONLY` transaction: a read that
    /// must see every write committed before it. Not retried.
    ///
    /// # Errors
    /// [`Error::Checkout`] or [`Error::Timeout`] when the writer failed,
    /// else as [`ReplicaSet::read`].
    pub fn read_fresh<T, F>(&self, f: F) -> impl Future<Output = Result<T, Error>> + Send
    where
        F: for<'r> AsyncFnOnce(&'r mut AsyncPgConnection) -> QueryResult<T>
            + for<'r> AsyncFunc<&'r mut AsyncPgConnection, QueryResult<T>, Fut: Send>
            + Send,
        T: Send,
    {
        self.on_writer(Route::ReadFresh, f, None)
    }

    /// Runs `f` on the writer, outside any transaction: each statement
    /// commits on its own. Not retried.
    ///
    /// # Errors
    /// [`Error::Checkout`] or [`Error::Timeout`] when the writer is
    /// unavailable, and [`Error::Query`] for an error of `f`.
    pub fn write<T, F>(&self, f: F) -> impl Future<Output = Result<T, Error>> + Send
    where
        F: for<'r> AsyncFnOnce(&'r mut AsyncPgConnection) -> QueryResult<T>
            + for<'r> AsyncFunc<&'r mut AsyncPgConnection, QueryResult<T>, Fut: Send>
            + Send,
        T: Send,
    {
        self.on_writer(Route::Write, f, None)
    }

    /// Runs `f` on the writer inside a transaction, committed when `f`
    /// returns `Ok` and rolled back when it returns `Err`. Not retried.
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
        self.on_writer(Route::Transaction, f, None)
    }

    /// Scopes reads and transactions to `tenant`: each runs with
    /// `search_path` set to the tenant's schema, then the shared schemas
    /// (`shared_schemas`, default `public`), for that transaction only, on
    /// whichever node serves it. A tenant whose schema does not exist gets
    /// [`Error::UnknownTenant`], never the shared schemas' rows; a read
    /// that meets a replica without the schema yet (it was just provisioned
    /// and the replica lags) tries the next node, as for a failed one.
    pub fn tenant<'a>(&'a self, tenant: &'a Tenant) -> TenantScope<'a> {
        TenantScope { set: self, tenant }
    }

    pub(crate) fn scope<'a>(&self, tenant: &'a Tenant) -> Scope<'a> {
        Scope::new(tenant, &self.inner.shared_schemas)
    }

    /// A connection of the writer's, taken out of its pool, for work that
    /// holds it outside the routing (provisioning).
    pub(crate) async fn writer_connection(&self) -> Result<AsyncPgConnection, Error> {
        self.inner.writer.dedicated_connection().await
    }

    /// How many replicas the set holds.
    pub fn replica_count(&self) -> usize {
        self.inner.replicas.len()
    }

    /// A snapshot of every node, taken now.
    pub fn status(&self) -> Status {
        Status {
            writer: self.inner.writer.status(),
            replicas: self
                .inner
                .replicas
                .iter()
                .map(|node| node.status())
                .collect(),
        }
    }

    /// Runs a read returning diesel's `QueryResult`, with retries.
    pub(crate) async fn read_query<T, F>(&self, f: F, scope: Option<&Scope<'_>>) -> Result<T, Error>
    where
        F: for<'r> AsyncFunc<&'r mut AsyncPgConnection, QueryResult<T>, Fut: Send> + Clone + Send,
    {
        self.reads(f, scope)
            .await
            .map_err(|(node, failure)| self.query_failure(node, Route::Read, failure))
    }

    /// Runs a closure returning diesel's `QueryResult` on the writer.
    pub(crate) async fn on_writer<T, F>(
        &self,
        route: Route,
        f: F,
        scope: Option<&Scope<'_>>,
    ) -> Result<T, Error>
    where
        F: for<'r> AsyncFunc<&'r mut AsyncPgConnection, QueryResult<T>, Fut: Send> + Send,
    {
        let writer = &self.inner.writer;
        writer
            .attempt(route, f, &self.inner.health, scope)
            .await
            .map_err(|failed| self.query_failure(writer, route, failed.failure))
    }

    /// A closure's diesel error as [`Error::Query`] or
    /// [`Error::ReadOnlyViolation`]; routing errors as they are.
    fn query_failure(
        &self,
        node: &Node,
        route: Route,
        failure: Failure<diesel::result::Error>,
    ) -> Error {
        match failure {
            Failure::Routing(error) => error,
            Failure::Body(error) => node.query_error(route, error),
        }
    }

    /// Runs a read, trying other nodes while nodes fail; on failure, the
    /// node of the last attempt with what went wrong.
    pub(crate) async fn reads<T, E, F>(
        &self,
        f: F,
        scope: Option<&Scope<'_>>,
    ) -> Result<T, (&Arc<Node>, Failure<E>)>
    where
        F: for<'r> AsyncFunc<&'r mut AsyncPgConnection, Result<T, E>, Fut: Send> + Clone + Send,
    {
        let inner = &*self.inner;
        let mut tried = Vec::new();
        let mut last: Option<(&Arc<Node>, Failure<E>)> = None;
        for _ in 0..=inner.health.read_retries {
            let Some((index, node)) = inner.pick_reader(&tried) else {
                break;
            };
            if let Some((previous, _)) = &last {
                previous.count_retry();
            }
            match node
                .attempt(Route::Read, f.clone(), &inner.health, scope)
                .await
            {
                Ok(value) => return Ok(value),
                // A failed node, or a replica that has not yet replayed the
                // creation of the tenant's schema: another node may serve it.
                Err(Failed { failure, node_down })
                    if node_down
                        || matches!(failure, Failure::Routing(Error::UnknownTenant { .. })) =>
                {
                    tried.push(index);
                    last = Some((node, failure));
                }
                Err(Failed { failure, .. }) => return Err((node, failure)),
            }
        }
        match last {
            Some(last) => Err(last),
            None => Err((&inner.writer, Failure::Routing(inner.no_replica()))),
        }
    }

    /// Runs a closure returning the caller's own error type on the writer;
    /// routing failures are converted with `E: From<Error>`.
    pub(crate) async fn on_writer_with<T, E, F>(
        &self,
        route: Route,
        f: F,
        scope: Option<&Scope<'_>>,
    ) -> Result<T, E>
    where
        F: for<'r> AsyncFunc<&'r mut AsyncPgConnection, Result<T, E>, Fut: Send> + Send,
        E: From<Error>,
    {
        let writer = &self.inner.writer;
        writer
            .attempt(route, f, &self.inner.health, scope)
            .await
            .map_err(|failed| own_error(failed.failure))
    }

    /// As [`on_writer_with`](Self::on_writer_with) for a read on the
    /// replicas, with retries.
    pub(crate) async fn read_with<T, E, F>(&self, f: F, scope: Option<&Scope<'_>>) -> Result<T, E>
    where
        F: for<'r> AsyncFunc<&'r mut AsyncPgConnection, Result<T, E>, Fut: Send> + Clone + Send,
        E: From<Error>,
    {
        self.reads(f, scope)
            .await
            .map_err(|(_, failure)| own_error(failure))
    }

    /// The index of the replica a read would use now; for benchmarks.
    pub(crate) fn pick_for_bench(&self) -> usize {
        self.inner
            .pick_reader(&[])
            .map_or(WRITER, |(index, _)| index)
    }
}

fn own_error<E: From<Error>>(failure: Failure<E>) -> E {
    match failure {
        Failure::Routing(error) => E::from(error),
        Failure::Body(error) => error,
    }
}

impl Inner {
    /// The node for the next attempt of a read: a replica that is up and not
    /// yet tried, chosen by the balancer; else the writer, once, when there
    /// are no replicas or reads may fall back to it.
    fn pick_reader(&self, tried: &[usize]) -> Option<(usize, &Arc<Node>)> {
        let replica = self.balancer.pick(&self.replicas, |i| {
            self.replicas[i].is_up() && !tried.contains(&i)
        });
        match replica {
            Some(index) => Some((index, &self.replicas[index])),
            None if (self.replicas.is_empty() || self.health.reads_fall_back_to_writer)
                && !tried.contains(&WRITER) =>
            {
                Some((WRITER, &self.writer))
            }
            None => None,
        }
    }

    fn no_replica(&self) -> Error {
        Error::NoReplicaAvailable {
            replicas: self
                .replicas
                .iter()
                .map(|node| {
                    let status = node.status();
                    match status.last_error {
                        Some(error) => format!("{} {:?}: {error}", node.label, status.health),
                        None => format!("{} {:?}", node.label, status.health),
                    }
                })
                .collect(),
        }
    }
}

/// A snapshot of the replica set, taken by [`ReplicaSet::status`]. It does
/// not change as the nodes do.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Status {
    /// The writer.
    pub writer: NodeStatus,
    /// The replicas, in configuration order.
    pub replicas: Vec<NodeStatus>,
}

/// A replica set scoped to one tenant, from [`ReplicaSet::tenant`]. Its
/// calls are those of the set, each inside a transaction whose
/// `search_path` is the tenant's.
#[derive(Clone, Copy)]
pub struct TenantScope<'a> {
    set: &'a ReplicaSet,
    tenant: &'a Tenant,
}

impl TenantScope<'_> {
    /// [`ReplicaSet::read`] in the tenant's schema.
    ///
    /// # Errors
    /// As [`ReplicaSet::read`], and [`Error::UnknownTenant`].
    pub fn read<T, F>(&self, f: F) -> impl Future<Output = Result<T, Error>> + Send
    where
        F: for<'r> AsyncFnOnce(&'r mut AsyncPgConnection) -> QueryResult<T>
            + for<'r> AsyncFunc<&'r mut AsyncPgConnection, QueryResult<T>, Fut: Send>
            + Clone
            + Send,
        T: Send,
    {
        let scope = self.set.scope(self.tenant);
        async move { self.set.read_query(f, Some(&scope)).await }
    }

    /// [`ReplicaSet::read_fresh`] in the tenant's schema.
    ///
    /// # Errors
    /// As [`ReplicaSet::read_fresh`], and [`Error::UnknownTenant`].
    pub fn read_fresh<T, F>(&self, f: F) -> impl Future<Output = Result<T, Error>> + Send
    where
        F: for<'r> AsyncFnOnce(&'r mut AsyncPgConnection) -> QueryResult<T>
            + for<'r> AsyncFunc<&'r mut AsyncPgConnection, QueryResult<T>, Fut: Send>
            + Send,
        T: Send,
    {
        let scope = self.set.scope(self.tenant);
        async move { self.set.on_writer(Route::ReadFresh, f, Some(&scope)).await }
    }

    /// [`ReplicaSet::transaction`] in the tenant's schema. (There is no
    /// tenant-scoped autocommit `write`: the scope lives in a transaction.)
    ///
    /// # Errors
    /// As [`ReplicaSet::transaction`], and [`Error::UnknownTenant`].
    pub fn transaction<T, F>(&self, f: F) -> impl Future<Output = Result<T, Error>> + Send
    where
        F: for<'r> AsyncFnOnce(&'r mut AsyncPgConnection) -> QueryResult<T>
            + for<'r> AsyncFunc<&'r mut AsyncPgConnection, QueryResult<T>, Fut: Send>
            + Send,
        T: Send,
    {
        let scope = self.set.scope(self.tenant);
        async move {
            self.set
                .on_writer(Route::Transaction, f, Some(&scope))
                .await
        }
    }
}
