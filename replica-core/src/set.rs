//! The replica set: the public routing API (`read`, `read_fresh`, `write`,
//! `transaction`, tenant scopes, status) over the current topology.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use diesel::QueryResult;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::AsyncPgConnection;
use futures_util::future::join_all;
use tokio::sync::Notify;
use tracing::Instrument;
use tracing::instrument::WithSubscriber;

use crate::attempt::{self, Failure, attempt};
use crate::aurora;
use crate::config::{Config, ConsistencyConfig, Discovery, DiscoverySource, HealthConfig};
use crate::consistency::{ReadYourWrites, WriteToken};
use crate::discovery::{self, DiscoveryStatus, Warnings};
use crate::error::{ConfigError, Error, error_chain};
use crate::metrics;
use crate::monitor;
use crate::node::{Node, NodeId, NodeStatus, Role};
use crate::probes::Probes;
use crate::read_path::{self, After};
use crate::route::{AsyncFunc, Body, Call, Route};
use crate::telemetry;
use crate::tenant::{Scope, Tenant};
use crate::topology::{Blueprint, Next, Topology};
use crate::url::DatabaseUrl;
use crate::watchdog;

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
    /// The nodes, replaced as a whole: each call keeps the snapshot it
    /// started with.
    topology: ArcSwap<Topology>,
    /// How nodes that join later are built.
    blueprint: Blueprint,
    /// Serializes changes of the topology; holds the number of the next
    /// replica's name.
    changes: tokio::sync::Mutex<usize>,
    health: HealthConfig,
    consistency: ConsistencyConfig,
    /// Aurora: lag is reported in time, and tokens qualify replicas by it.
    lag_by_time: bool,
    shared_schemas: Vec<String>,
    /// Set by discovery when no candidate is a writer: writes fail fast.
    writer_unavailable: AtomicBool,
    /// Wakes discovery early: a write met a standby or a dead writer.
    wake: Arc<Notify>,
    /// Wakes the lag monitor early: a read after a write found no replica
    /// known to hold it, so the others are sampled at once and the next
    /// such reads spread over every replica that does.
    sample_soon: Arc<Notify>,
    /// Where the nodes come from.
    source: DiscoverySource,
    /// Becomes true once discovery's first survey is over (at once without
    /// discovery).
    surveyed: tokio::sync::watch::Sender<bool>,
    /// What discovery's last survey could not use.
    discovery: std::sync::Mutex<DiscoveryStatus>,
}

/// Time between two surveys while no writer is known.
const FAST_SURVEY: Duration = Duration::from_millis(100);

/// The bound on asking one candidate during a survey.
const SURVEY_TIMEOUT: Duration = Duration::from_secs(2);

/// How long [`ReplicaSet::connect`] waits for discovery's first survey.
const FIRST_SURVEY_LIMIT: Duration = Duration::from_secs(5);

/// How long a removed replica's calls in flight may take before its pool
/// is closed anyway.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// What [`ReplicaSet::update_replicas`] changed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopologyChange {
    /// The topology's generation now: 0 at start, one more per change.
    pub generation: u64,
    /// Replicas that joined, warmed up before they took reads.
    pub added: Vec<NodeId>,
    /// Replicas that left: their calls in flight finish, then their pools
    /// close.
    pub removed: Vec<NodeId>,
}

/// A failed call: the node of its last attempt, and what went wrong.
type CallFailure<E> = (Arc<Node>, Failure<E>);

impl ReplicaSet {
    /// Builds the pools and opens each node's warm-up connections.
    ///
    /// A writer that cannot be reached is an error. A replica that cannot be
    /// reached is logged as a warning and left in the set: its pool connects
    /// again on first use. With discovery, the nodes are those of its first
    /// survey (made at once; waited for up to 5 s), so that an application
    /// starts with every replica and the writer of the moment.
    ///
    /// # Errors
    /// [`Error::Config`] as for [`ReplicaSet::new`], [`Error::Checkout`]
    /// when the writer's warm-up fails.
    pub async fn connect(config: Config) -> Result<Self, Error> {
        let set = Self::new(config)?;
        let mut surveyed = set.inner.surveyed.subscribe();
        if tokio::time::timeout(FIRST_SURVEY_LIMIT, surveyed.wait_for(|done| *done))
            .await
            .is_err()
        {
            tracing::warn!(source = %set.inner.source, "discovery's first survey is not over: starting with the configured nodes");
        }
        let topology = set.topology();
        let (writer, replicas) = futures_util::future::join(
            topology.writer.warm_up(),
            join_all(topology.replicas.iter().map(|node| node.warm_up())),
        )
        .await;
        writer?;
        for (node, result) in topology.replicas.iter().zip(replicas) {
            if let Err(error) = result {
                let error = error_chain(&error);
                tracing::warn!(node = %node.label, %error, "replica warm-up failed; it stays in the set");
            }
        }
        // The gauges start from the warmed-up pools, not from zero.
        for node in std::iter::once(&topology.writer).chain(&topology.replicas) {
            node.update_metrics();
        }
        if topology.replicas.is_empty() {
            tracing::info!(writer = %topology.writer.url, "no replicas configured: reads go to the writer, still READ ONLY");
        } else {
            tracing::info!(writer = %topology.writer.url, replicas = topology.replicas.len(), "replica set ready");
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
        let blueprint = Blueprint::new(&config);
        let topology = Topology::new(&config, &blueprint)?;
        let set = Self {
            inner: Arc::new(Inner {
                topology: ArcSwap::from_pointee(topology),
                blueprint,
                changes: tokio::sync::Mutex::new(config.replicas.len()),
                health: config.health,
                consistency: config.consistency.clone(),
                lag_by_time: matches!(config.discovery, Discovery::Aurora { .. }),
                shared_schemas: config.shared_schemas,
                writer_unavailable: AtomicBool::new(false),
                wake: Arc::new(Notify::new()),
                sample_soon: Arc::new(Notify::new()),
                source: config.discovery.source(),
                surveyed: tokio::sync::watch::Sender::new(false),
                discovery: std::sync::Mutex::default(),
            }),
        };
        // Aurora's view serves discovery and the lag monitor alike.
        let aurora = match &config.discovery {
            Discovery::Aurora { host_pattern, .. } => Some(Arc::new(aurora::Endpoints {
                pattern: host_pattern.clone(),
                template: config.writer.clone(),
            })),
            _ => None,
        };
        let lag_source = aurora
            .clone()
            .map_or(monitor::Source::Wal, monitor::Source::Aurora);
        let source = match config.discovery {
            Discovery::Static => {
                set.inner.surveyed.send_replace(true);
                None
            }
            Discovery::Hosts {
                candidates,
                interval,
            } => Some((Source::Hosts(candidates), interval)),
            Discovery::Aurora { interval, .. } => {
                aurora.map(|endpoints| (Source::Aurora(endpoints), interval))
            }
        };
        let lag_interval = set.inner.consistency.lag_interval;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                if let Some((source, interval)) = source {
                    runtime.spawn(
                        watch(Arc::downgrade(&set.inner), source, interval)
                            .with_current_subscriber(),
                    );
                }
                if metrics::ENABLED {
                    runtime.spawn(
                        update_metrics(Arc::downgrade(&set.inner)).with_current_subscriber(),
                    );
                }
                if !lag_interval.is_zero() {
                    runtime.spawn(
                        monitor(Arc::downgrade(&set.inner), lag_source, lag_interval)
                            .with_current_subscriber(),
                    );
                }
                runtime
                    .spawn(writer_watchdog(Arc::downgrade(&set.inner)).with_current_subscriber());
            }
            Err(_) => {
                set.inner.surveyed.send_replace(true);
                tracing::warn!(
                    "the replica set was built outside a Tokio runtime: discovery, the lag monitor and the writer's watchdog do not run"
                );
            }
        }
        Ok(set)
    }

    /// Replaces the replicas with those `config` names (URLs, hosts,
    /// weights: read it again from the environment, a secret or serde, as
    /// at start), while calls run.
    ///
    /// A replica already in the set keeps its pool. A new one opens its
    /// warm-up connections before it takes reads. A removed one takes no
    /// new reads; its calls in flight finish, then its pool closes. No read
    /// fails because of the change: a read that finds a removed replica's
    /// pool closed is tried on another node. Changes are made one at a
    /// time. The writer, pools and other settings stay those of the start.
    ///
    /// # Errors
    /// [`Error::Config`] for a configuration that would be refused at
    /// start (duplicate replicas, a replica equal to the writer, weights
    /// that do not fit), or that names another writer.
    pub async fn update_replicas(&self, config: &Config) -> Result<TopologyChange, Error> {
        config.validate()?;
        let current = self.topology();
        if NodeId::of(&config.writer) != current.writer.id {
            return Err(ConfigError::WriterChanged {
                current: current.writer.url.address(),
                given: config.writer.address(),
            }
            .into());
        }
        self.apply(&config.writer, &config.replicas, &config.replica_weights)
            .await
    }

    /// Makes `writer` and `replicas` the nodes of the set (see
    /// [`ReplicaSet::update_replicas`]); nothing when that changes nothing.
    pub(crate) async fn apply(
        &self,
        writer: &DatabaseUrl,
        replicas: &[DatabaseUrl],
        weights: &[u32],
    ) -> Result<TopologyChange, Error> {
        let mut next_name = self.inner.changes.lock().await;
        let current = self.topology();
        let next = current.next(
            writer,
            replicas,
            weights,
            &self.inner.blueprint,
            &mut next_name,
        )?;
        if next.changes_nothing(&current) {
            return Ok(TopologyChange {
                generation: current.generation,
                added: Vec::new(),
                removed: Vec::new(),
            });
        }
        let Next {
            topology,
            added,
            removed,
        } = next;
        for (node, result) in added
            .iter()
            .zip(join_all(added.iter().map(|node| node.warm_up())).await)
        {
            let role = node.role;
            let event = match removed.iter().find(|old| old.id == node.id) {
                Some(old) if old.role == role => "node changed settings",
                Some(_) if role == Role::Writer => "node promoted: it is the writer",
                Some(_) => "node demoted: it is a replica",
                None => "node added",
            };
            match result {
                Ok(()) => tracing::info!(node = %node.label, %role, "{event}"),
                Err(error) => {
                    let error = error_chain(&error);
                    tracing::warn!(node = %node.label, %role, %error, "{event}; its warm-up failed");
                }
            }
        }
        let change = TopologyChange {
            generation: topology.generation,
            added: added.iter().map(|node| node.id.clone()).collect(),
            removed: removed.iter().map(|node| node.id.clone()).collect(),
        };
        self.inner.topology.store(Arc::new(topology));
        for node in removed {
            if !added.iter().any(|new| new.id == node.id) {
                tracing::info!(node = %node.label, role = %node.role, "node removed: it drains, then its pool closes");
            }
            tokio::spawn(drain(node).with_current_subscriber());
        }
        Ok(change)
    }

    /// The current snapshot of the nodes.
    fn topology(&self) -> Arc<Topology> {
        self.inner.topology.load_full()
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
        self.read_query(Route::Read, None, f)
    }

    /// [`ReplicaSet::read`] in one `REPEATABLE READ READ ONLY` transaction,
    /// for a body whose statements must all see the same snapshot (a page
    /// and its total, say). It costs no round trip more: its `BEGIN` goes
    /// ahead of the body's first statement, and the reset that follows the
    /// call, not waited for, rolls it back.
    ///
    /// # Errors
    /// As [`ReplicaSet::read`].
    pub fn read_snapshot<T, F>(&self, f: F) -> impl Future<Output = Result<T, Error>> + Send
    where
        F: for<'r> AsyncFnOnce(&'r mut AsyncPgConnection) -> QueryResult<T>
            + for<'r> AsyncFunc<&'r mut AsyncPgConnection, QueryResult<T>, Fut: Send>
            + Clone
            + Send,
        T: Send,
    {
        self.read_query(Route::ReadSnapshot, None, f)
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
        self.writer_query(Route::ReadFresh, None, None, f)
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
        self.writer_query(Route::Write, None, None, f)
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
        self.writer_query(Route::Transaction, None, None, f)
    }

    pub(crate) fn scope<'a>(&self, tenant: &'a Tenant) -> Scope<'a> {
        Scope::new(tenant, &self.inner.shared_schemas)
    }

    /// A connection of the writer's, taken out of its pool, for work that
    /// holds it outside the routing (provisioning).
    pub(crate) async fn writer_connection(&self) -> Result<AsyncPgConnection, Error> {
        attempt::dedicated_connection(&self.topology().writer).await
    }

    /// How many replicas the set holds.
    pub fn replica_count(&self) -> usize {
        self.topology().replicas.len()
    }

    /// A snapshot of every node, taken now.
    pub fn status(&self) -> Status {
        let topology = self.topology();
        let writer = topology.writer.status();
        let replicas: Vec<NodeStatus> =
            topology.replicas.iter().map(|node| node.status()).collect();
        let writer_available = !self.inner.writer_unavailable.load(Ordering::Acquire)
            && writer.health == crate::Health::Up;
        let reads_served = replicas.is_empty()
            || self.inner.health.reads_fall_back_to_writer
            || replicas
                .iter()
                .any(|r| r.health == crate::Health::Up && !r.behind);
        Status {
            healthy: writer_available
                && writer.consecutive_failures < self.inner.health.eject_after
                && reads_served,
            writer_available,
            generation: topology.generation,
            source: self.inner.source,
            discovery: self.discovery_status(),
            writer,
            replicas,
        }
    }

    fn discovery_status(&self) -> DiscoveryStatus {
        let status = self.inner.discovery.lock();
        status.unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Keeps what discovery's last survey could not use, for status and
    /// metrics, and says it (see [`Warnings`]).
    fn record_survey(&self, report: DiscoveryStatus, warnings: &mut Warnings) {
        metrics::discovery(&report);
        if report.is_clean() {
            warnings.clear();
        } else {
            warnings.warn(report.to_string());
        }
        *self
            .inner
            .discovery
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = report;
    }

    /// Runs a read on the replicas (then the writer), with retries; with a
    /// session that wrote, where its writes are visible.
    pub(crate) async fn read_call<T, E>(
        &self,
        call: Call<'_>,
        session: Option<&ReadYourWrites>,
        f: impl Body<T, E> + Clone,
    ) -> Result<T, CallFailure<E>> {
        let topology = self.topology();
        let after = session.and_then(ReadYourWrites::token).map(|token| After {
            token,
            wait: self.inner.consistency.read_your_writes_wait,
            by_time: self.inner.lag_by_time,
            unknown: &self.inner.sample_soon,
        });
        let span = telemetry::call_span(&call, topology.writer.url.database());
        let result = read_path::read(&topology, &self.inner.health, call, after, f)
            .instrument(span.clone())
            .await;
        if let Err((_, failure)) = &result {
            span.record("error.type", failure.kind_str());
        }
        result
    }

    /// Runs a call on the writer, once. While discovery knows no writer,
    /// writes fail fast with [`Error::WriterUnavailable`]; a write that
    /// meets a standby or a writer that does not answer wakes discovery.
    ///
    /// With a session, a write records its token there: the writer's WAL
    /// insert position after it (on Aurora, the time). A write whose
    /// outcome is unknown (an autocommit write that failed part-way, a
    /// connection lost) records a token that sends the session's reads to
    /// the writer.
    pub(crate) async fn writer_call<T, E>(
        &self,
        call: Call<'_>,
        session: Option<&ReadYourWrites>,
        f: impl Body<T, E>,
    ) -> Result<T, CallFailure<E>> {
        let writer = Arc::clone(&self.topology().writer);
        let span = telemetry::call_span(&call, writer.url.database());
        let writes = !call.route.is_read_only();
        if writes && self.inner.writer_unavailable.load(Ordering::Acquire) {
            let error = Error::WriterUnavailable {
                last: writer.label.clone(),
            };
            span.record("error.type", error.kind().as_str());
            return Err((writer, Failure::Routing(error)));
        }
        let session = session.filter(|_| writes);
        let token_lsn = AtomicU64::new(WriteToken::UNKNOWN_LSN);
        let call = Call {
            token_lsn: session
                .filter(|_| !self.inner.lag_by_time)
                .map(|_| &token_lsn),
            ..call
        };
        let attempt_span = telemetry::attempt_span(&writer, 1, None);
        let result = attempt(&writer, call, f)
            .instrument(attempt_span.clone())
            .instrument(span.clone())
            .await;
        if let Err(failed) = &result {
            attempt_span.record("error.type", failed.failure.kind_str());
            span.record("error.type", failed.failure.kind_str());
        }
        span.record("diesel_replica.attempts", 1);
        if let Some(session) = session {
            let unknown = WriteToken::now(WriteToken::UNKNOWN_LSN);
            match &result {
                Ok(_) => session.observe(WriteToken::now(AtomicU64::load(
                    &token_lsn,
                    Ordering::Relaxed,
                ))),
                Err(failed) if failed.node_down || call.route == Route::Write => {
                    session.observe(unknown);
                }
                Err(_) => {}
            }
        }
        result.map_err(|failed| {
            let standby = matches!(
                &failed.failure,
                Failure::Routing(Error::Query {
                    error: DieselError::DatabaseError(DatabaseErrorKind::ReadOnlyTransaction, _),
                    ..
                })
            );
            if writes && (failed.node_down || standby) {
                // Connections that may lead to a node gone or demoted are
                // not handed out again: new ones go where the address leads
                // now (an Aurora cluster endpoint follows its writer), and
                // discovery looks at once.
                writer.drop_idle();
                self.inner.wake.notify_one();
            }
            (writer, failed.failure)
        })
    }

    /// A read of `route` whose body returns diesel's `QueryResult`, with
    /// retries; in `session` when given.
    pub(crate) async fn read_query<T, F>(
        &self,
        route: Route,
        session: Option<&ReadYourWrites>,
        f: F,
    ) -> Result<T, Error>
    where
        F: Body<T, DieselError> + Clone,
    {
        let call = Call::new(route, None);
        diesel_result(self.read_call(call, session, f).await, route)
    }

    /// A body returning diesel's `QueryResult` on the writer, once.
    pub(crate) async fn writer_query<T, F>(
        &self,
        route: Route,
        scope: Option<Scope<'_>>,
        session: Option<&ReadYourWrites>,
        f: F,
    ) -> Result<T, Error>
    where
        F: Body<T, DieselError>,
    {
        let call = Call::new(route, scope.as_ref());
        diesel_result(self.writer_call(call, session, f).await, route)
    }

    /// The index of the replica a read would use now (`usize::MAX` for the
    /// writer); for benchmarks.
    pub(crate) fn pick_for_bench(&self) -> usize {
        let topology = self.topology();
        match read_path::pick(&topology, &self.inner.health, &[]) {
            Some(node) => topology
                .replicas
                .iter()
                .position(|replica| Arc::ptr_eq(replica, node))
                .unwrap_or(usize::MAX),
            None => usize::MAX,
        }
    }
}

/// Where discovery looks.
enum Source {
    /// Candidate hosts, each asked whether it is in recovery.
    Hosts(Vec<DatabaseUrl>),
    /// `aurora_replica_status()`, its instances made nodes by these.
    Aurora(Arc<aurora::Endpoints>),
}

/// Keeps the nodes what `source` says they are, surveying at once, then
/// every `interval`, every [`FAST_SURVEY`] while no writer is known, and at
/// once when a write wakes it. A survey that finds no writer keeps the last good
/// nodes and makes writes fail fast; one that finds exactly one makes it
/// the writer and the others the replicas (keeping replicas that did not
/// answer: ejection deals with those); one that fails (Aurora's view could
/// not be had, or made no sense) keeps the last good nodes and says why.
/// Ends when the set is dropped.
async fn watch(inner: std::sync::Weak<Inner>, source: Source, interval: Duration) {
    let probes = match inner.upgrade() {
        Some(inner) => Probes::new(
            &inner.blueprint.application_name,
            "discovery",
            inner.blueprint.credentials.clone(),
            SURVEY_TIMEOUT,
            inner.blueprint.pooler,
        ),
        None => return,
    };
    let mut announced_unavailable = false;
    let mut warnings = Warnings::default();
    let mut first = true;
    loop {
        if !std::mem::take(&mut first) {
            let (wake, fast) = match inner.upgrade() {
                Some(inner) => {
                    inner.surveyed.send_replace(true);
                    (
                        Arc::clone(&inner.wake),
                        inner.writer_unavailable.load(Ordering::Acquire),
                    )
                }
                None => return,
            };
            let wait = if fast { FAST_SURVEY } else { interval };
            let _ = tokio::time::timeout(wait, wake.notified()).await;
        }
        let Some(inner) = inner.upgrade() else { return };
        let set = ReplicaSet { inner };
        let mut survey = match &source {
            Source::Hosts(candidates) => discovery::survey_hosts(candidates, &probes).await,
            Source::Aurora(endpoints) => {
                let current = set.topology();
                let nodes: Vec<DatabaseUrl> = std::iter::once(&current.writer)
                    .chain(&current.replicas)
                    .map(|node| node.url.clone())
                    .collect();
                probes.keep_only(nodes.iter().chain([&endpoints.template]));
                match discovery::survey_aurora(&nodes, endpoints, &probes).await {
                    Ok(survey) => survey,
                    Err(report) => {
                        set.record_survey(report, &mut warnings);
                        continue;
                    }
                }
            }
        };
        // A writer that did not answer is no writer, whoever names it.
        survey.writers.retain(|writer| {
            let id = NodeId::of(writer);
            !survey
                .unreachable
                .iter()
                .any(|(url, _)| NodeId::of(url) == id)
        });
        if survey.writers.len() > 1 {
            survey.report.writers = survey.writers.iter().map(DatabaseUrl::address).collect();
        }
        set.record_survey(std::mem::take(&mut survey.report), &mut warnings);
        // With several writers, the one the set has stays, if it is among
        // them: the replicas found keep serving reads.
        let current_writer = set.topology().writer.id.clone();
        let kept = match survey.writers.as_slice() {
            [_, _, ..] => survey
                .writers
                .iter()
                .find(|writer| NodeId::of(writer) == current_writer)
                .cloned(),
            _ => None,
        };
        let writers = match &kept {
            Some(writer) => std::slice::from_ref(writer),
            None => survey.writers.as_slice(),
        };
        match writers {
            [writer] => {
                let current = set.topology();
                let mut replicas = survey.replicas.clone();
                replicas.extend(
                    current
                        .replicas
                        .iter()
                        .filter(|node| survey.unreachable.iter().any(|(url, _)| *url == node.url))
                        .map(|node| node.url.clone()),
                );
                match set.apply(writer, &replicas, &[]).await {
                    Ok(change) if !change.added.is_empty() || !change.removed.is_empty() => {
                        tracing::info!(
                            generation = change.generation,
                            writer = %writer.address(),
                            replicas = replicas.len(),
                            "discovery changed the nodes"
                        );
                    }
                    Ok(_) => {}
                    Err(error) => {
                        let error = error_chain(&error);
                        tracing::warn!(%error, "discovery could not apply what it found; the nodes stay as they were");
                        continue;
                    }
                }
                if set.inner.writer_unavailable.swap(false, Ordering::AcqRel) {
                    tracing::info!(writer = %writer.address(), "writer found: writes resume");
                }
                announced_unavailable = false;
            }
            [] => {
                let writer = set.topology().writer.label.clone();
                set.inner.writer_unavailable.store(true, Ordering::Release);
                if !announced_unavailable {
                    let why: Vec<String> = survey
                        .unreachable
                        .iter()
                        .map(|(url, why)| format!("{}: {why}", url.address()))
                        .collect();
                    tracing::warn!(last = %writer, unreachable = ?why, "no candidate is a writer: writes fail until one is");
                    announced_unavailable = true;
                }
            }
            // Said by the survey's report (status, metrics, a warning).
            _ => {}
        }
    }
}

/// Brings every node's gauges and counters up to date every second, until
/// the set is dropped.
async fn update_metrics(inner: std::sync::Weak<Inner>) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let topology = inner.topology.load_full();
        drop(inner);
        for node in std::iter::once(&topology.writer).chain(&topology.replicas) {
            node.update_metrics();
        }
    }
}

/// Samples the replicas' lag every `interval`, on connections of its own,
/// until the set is dropped.
async fn monitor(inner: std::sync::Weak<Inner>, source: monitor::Source, interval: Duration) {
    let probes = match inner.upgrade() {
        Some(inner) => Probes::new(
            &inner.blueprint.application_name,
            "lag",
            inner.blueprint.credentials.clone(),
            interval.clamp(SURVEY_TIMEOUT / 4, SURVEY_TIMEOUT),
            inner.blueprint.pooler,
        ),
        None => return,
    };
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Asked early, a sample still waits this long after the last one.
    let gap = MIN_SAMPLE_GAP.min(interval);
    let mut last = tokio::time::Instant::now();
    let Some(asked) = inner.upgrade().map(|inner| Arc::clone(&inner.sample_soon)) else {
        return;
    };
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = asked.notified() => tokio::time::sleep_until(last + gap).await,
        }
        let Some(inner) = inner.upgrade() else { return };
        let topology = inner.topology.load_full();
        let limits = inner.consistency.clone();
        drop(inner);
        last = tokio::time::Instant::now();
        monitor::sample(&topology, &source, &limits, &probes).await;
    }
}

/// Looks at the writer every [`watchdog::INTERVAL`], on a connection of its
/// own, until the set is dropped; wakes discovery when the writer stops
/// answering.
async fn writer_watchdog(inner: std::sync::Weak<Inner>) {
    let probes = match inner.upgrade() {
        Some(inner) => Probes::new(
            &inner.blueprint.application_name,
            "watchdog",
            inner.blueprint.credentials.clone(),
            watchdog::TIMEOUT,
            inner.blueprint.pooler,
        ),
        None => return,
    };
    let mut ticks = tokio::time::interval(watchdog::INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let writer = Arc::clone(&inner.topology.load().writer);
        let wake = Arc::clone(&inner.wake);
        drop(inner);
        probes.keep_only([&writer.url]);
        if watchdog::look(&writer, &probes).await == watchdog::Change::Unreachable {
            wake.notify_one();
        }
    }
}

/// The shortest time between two lag samples when reads ask for one early:
/// at most 50 samples a second however many reads ask.
const MIN_SAMPLE_GAP: Duration = Duration::from_millis(20);

/// Waits until a removed node has no call in flight (or
/// [`DRAIN_LIMIT`] passed), then closes its pool.
async fn drain(node: Arc<Node>) {
    let started = tokio::time::Instant::now();
    while node.in_flight.load(Ordering::Relaxed) > 0 && started.elapsed() < DRAIN_LIMIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.pool.close();
    tracing::info!(node = %node.label, "removed node drained: its pool is closed");
}

/// A call's result with a body returning diesel's errors: those become
/// [`Error::Query`] or [`Error::ReadOnlyViolation`].
pub(crate) fn diesel_result<T>(
    result: Result<T, CallFailure<DieselError>>,
    route: Route,
) -> Result<T, Error> {
    result.map_err(|(node, failure)| failure.into_error(&node, route))
}

/// A call's result with a body returning the caller's own errors: routing
/// errors become theirs through `E: From<Error>`.
pub(crate) fn own_result<T, E: From<Error>>(result: Result<T, CallFailure<E>>) -> Result<T, E> {
    result.map_err(|(node, failure)| failure.into_own(&node))
}

/// A snapshot of the replica set, taken by [`ReplicaSet::status`]. It does
/// not change as the nodes do. Serializes (serde) with its fields' names,
/// for a health endpoint.
#[derive(Clone, Debug, serde::Serialize)]
#[non_exhaustive]
pub struct Status {
    /// Whether the set can serve: the writer is reachable (discovery knows
    /// one, it answers its watchdog, and it has failed fewer than
    /// `eject_after` times in a row since its last success), and reads have somewhere to go (a replica
    /// that is up and within the lag limit, or reads may fall back to the
    /// writer, or no replica is configured).
    pub healthy: bool,
    /// False while discovery knows no writer (writes fail with
    /// [`Error::WriterUnavailable`]), or the writer does not answer its
    /// watchdog (calls to it fail with [`Error::WriterUnreachable`], and
    /// `writer.health` is [`Health::Unreachable`](crate::Health::Unreachable)).
    pub writer_available: bool,
    /// The topology's generation: 0 at start, one more per change.
    pub generation: u64,
    /// Where the nodes come from.
    pub source: DiscoverySource,
    /// What discovery's last survey could not use: rejected rows of
    /// Aurora's view, a view that named no writer, a survey that changed
    /// nothing. Empty without discovery.
    pub discovery: DiscoveryStatus,
    /// The writer.
    pub writer: NodeStatus,
    /// The replicas, in configuration order.
    pub replicas: Vec<NodeStatus>,
}
