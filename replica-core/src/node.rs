//! One node, the writer or a replica: its identity, its pool, its health,
//! and the snapshot of it that [`ReplicaSet::status`](crate::ReplicaSet::status)
//! returns.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::deadpool::{Pool, PoolError};
use futures_util::future::try_join_all;
use serde::{Serialize, Serializer};

use crate::balance::Candidate;
use crate::cancel::Canceller;
use crate::config::{HealthConfig, PoolConfig};
use crate::connector::{self, Owner, Serves};
use crate::credentials::{CredentialsProvider, Login};
use crate::error::Error;
use crate::health::{Health, Probed, Tracker};
use crate::lag::Lag;
use crate::metrics::{NodeGauges, NodeMetrics};
use crate::pooler::Pooler;
use crate::route::Route;
use crate::server_role::Reported;
use crate::url::DatabaseUrl;

/// The client gives up on an attempt this long after the server's
/// `statement_timeout` would have cancelled it: only a node that does not
/// answer at all is caught by it.
const STATEMENT_GRACE: Duration = Duration::from_millis(500);

/// The role of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The primary: takes writes, and reads when there is no replica, none
    /// is available, or the caller needs the freshest data.
    Writer,
    /// A read replica.
    Replica,
}

impl Role {
    /// `writer` or `replica`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Writer => "writer",
            Self::Replica => "replica",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node's identity: the server and database it reaches,
/// `host:port/database`, host in lower case. It stays the same however the
/// set of nodes around it changes, unlike a position in a list.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(Arc<str>);

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl NodeId {
    pub(crate) fn of(url: &DatabaseUrl) -> Self {
        let (address, database) = url.target();
        Self(format!("{address}/{database}").into())
    }

    /// `host:port/database`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub(crate) struct Node {
    pub(crate) id: NodeId,
    pub(crate) role: Role,
    pub(crate) name: String,
    pub(crate) url: DatabaseUrl,
    /// `name (host:port)`, as errors show the node.
    pub(crate) label: String,
    pub(crate) pool: Pool<AsyncPgConnection>,
    /// The writer's pool for reads, logged in as the read login.
    read_pool: Option<Pool<AsyncPgConnection>>,
    /// Cancels what a dropped call left running on a connection.
    pub(crate) canceller: Canceller,
    warm_up: usize,
    /// The server's bound on one statement.
    pub(crate) statement_timeout: Option<Duration>,
    /// The client's bound on one attempt, past the server's own.
    pub(crate) attempt_timeout: Option<Duration>,
    /// What its connections' server said it is.
    reported: Arc<Reported>,
    pub(crate) health: Tracker,
    pub(crate) in_flight: AtomicUsize,
    /// What is known of its replay progress (replicas).
    pub(crate) lag: Lag,
    pub(crate) metrics: NodeMetrics,
    /// What its address reaches: the server, or a transaction-mode pooler.
    pub(crate) pooler: Pooler,
}

/// How to build one node.
pub(crate) struct Spec<'a> {
    pub(crate) role: Role,
    pub(crate) name: String,
    pub(crate) url: DatabaseUrl,
    pub(crate) pool: &'a PoolConfig,
    pub(crate) application_name: &'a str,
    pub(crate) health: &'a Arc<HealthConfig>,
    pub(crate) credentials: Option<&'a CredentialsProvider>,
    pub(crate) pooler: Pooler,
    /// The writer's login for reads, when set apart (see
    /// [`Config::writer_read_login`](crate::Config::writer_read_login)).
    pub(crate) read_login: Option<&'a Login>,
}

impl Node {
    /// # Errors
    /// The node's TLS settings cannot be used (see [`connector::pool`]).
    pub(crate) fn new(spec: Spec<'_>) -> Result<Self, String> {
        let Spec {
            role,
            name,
            url,
            pool,
            application_name,
            health,
            credentials,
            pooler,
            read_login,
        } = spec;
        let id = NodeId::of(&url);
        let reported = Arc::new(Reported::default());
        let owner = |serves| Owner {
            node: id.to_string(),
            serves,
            reported: Arc::clone(&reported),
        };
        let (connections, canceller) = connector::pool(
            &url,
            pool,
            application_name,
            credentials,
            pooler,
            owner(match role {
                Role::Writer => Serves::Writes,
                Role::Replica => Serves::Reads,
            }),
        )?;
        // Reads on the writer, with a login of their own: opened as a
        // replica's are (their sessions read-only from the start, and not
        // asked to accept writes, which the login refuses).
        let read_pool = match read_login.filter(|_| role == Role::Writer) {
            Some(login) => Some(
                connector::pool(
                    &url.with_login(login),
                    pool,
                    application_name,
                    credentials,
                    pooler,
                    owner(Serves::WriterReads),
                )?
                .0,
            ),
            None => None,
        };
        Ok(Self {
            id: id.clone(),
            role,
            label: format!("{name} ({})", url.address()),
            name,
            pool: connections,
            read_pool,
            canceller,
            url,
            warm_up: pool.warm_up,
            statement_timeout: pool.statement_timeout(),
            attempt_timeout: pool.statement_timeout().map(|t| t + STATEMENT_GRACE),
            health: Tracker::new(Arc::clone(health), role == Role::Replica),
            in_flight: AtomicUsize::new(0),
            lag: Lag::default(),
            metrics: NodeMetrics::new(id.as_str(), role.as_str()),
            pooler,
            reported,
        })
    }

    /// Closes the idle connections: the next checkouts connect anew.
    pub(crate) fn drop_idle(&self) {
        self.pool.retain(|_, _| false);
        if let Some(reads) = &self.read_pool {
            reads.retain(|_, _| false);
        }
    }

    /// The pool a call of `route` takes its connection from: reads on the
    /// writer with a read login of their own take its pool.
    pub(crate) fn pool_for(&self, route: Route) -> &Pool<AsyncPgConnection> {
        match &self.read_pool {
            Some(reads) if route.is_read_only() => reads,
            _ => &self.pool,
        }
    }

    pub(crate) fn is_up(&self) -> bool {
        self.health.is_up()
    }

    /// The error of a call the node's health stopped: an ejected replica,
    /// an unreachable writer.
    pub(crate) fn out_of_service(&self) -> Error {
        match self.role {
            Role::Writer => Error::WriterUnreachable {
                writer: self.label.clone(),
            },
            Role::Replica => Error::Ejected {
                node: self.label.clone(),
            },
        }
    }

    /// Opens `warm_up` connections at once and returns them to the pool.
    pub(crate) async fn warm_up(&self) -> Result<(), Error> {
        try_join_all((0..self.warm_up).map(|_| self.pool.get()))
            .await
            .map_err(|error| self.checkout_error(error))?;
        Ok(())
    }

    pub(crate) fn checkout_error(&self, error: PoolError) -> Error {
        Error::Checkout {
            node: self.label.clone(),
            error: error.into(),
        }
    }

    pub(crate) fn query_error(&self, route: Route, error: diesel::result::Error) -> Error {
        Error::from_query(self.label.clone(), error, route.is_read_only())
    }

    /// Brings the node's gauges and counters up to date.
    pub(crate) fn update_metrics(&self) {
        let pool = self.pool.status();
        self.metrics.update(&NodeGauges {
            size: pool.size,
            available: pool.available,
            max_size: pool.max_size,
            waiting: pool.waiting,
            up: self.health.is_up(),
            retried: self.health.retried(),
            ejections: self.health.ejections(),
        });
    }

    pub(crate) fn status(&self) -> NodeStatus {
        let pool = self.pool.status();
        let health = &self.health;
        NodeStatus {
            id: self.id.clone(),
            role: self.role,
            name: self.name.clone(),
            address: self.url.address(),
            health: health.state(),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            consecutive_failures: health.consecutive_failures(),
            ejections: health.ejections(),
            retried: health.retried(),
            last_error: health.last_error(),
            lag: self.lag.lag(),
            lag_bytes: self.lag.lag_bytes(),
            behind: self.lag.is_behind(),
            standby: self.reported.standby(),
            max_size: pool.max_size,
            size: pool.size,
            available: pool.available,
            waiting: pool.waiting,
        }
    }
}

impl Probed for Node {
    fn label(&self) -> &str {
        &self.label
    }

    fn health(&self) -> &Tracker {
        &self.health
    }

    fn drop_idle(&self) {
        Node::drop_idle(self);
    }

    async fn probe(&self) -> bool {
        use diesel_async::SimpleAsyncConnection;

        // A simple query: nothing prepared, also behind a pooler.
        let check = async {
            let mut conn = self.pool.get().await.ok()?;
            SimpleAsyncConnection::batch_execute(&mut *conn, "SELECT 1")
                .await
                .ok()
        };
        let bound = self.attempt_timeout.unwrap_or(Duration::from_secs(10));
        matches!(tokio::time::timeout(bound, check).await, Ok(Some(())))
    }
}

impl Candidate for Arc<Node> {
    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// A snapshot of one node, taken by [`ReplicaSet::status`](crate::ReplicaSet::status).
/// Serializes with its fields' names; durations as whole milliseconds
/// (`lag_ms`).
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct NodeStatus {
    /// Its identity, `host:port/database`.
    pub id: NodeId,
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
    /// Failed attempts on it that a read retried: on another node, or on
    /// a new connection of its own for a stale one.
    pub retried: u64,
    /// Its last failure, as its error message (never with a password).
    pub last_error: Option<String>,
    /// A replica's time lag at the lag monitor's last sample (0 when it
    /// had replayed all it had received); `None` before the first sample
    /// and for the writer.
    #[serde(rename = "lag_ms", serialize_with = "as_millis")]
    pub lag: Option<Duration>,
    /// A replica's WAL bytes not yet replayed at the last sample
    /// (PostgreSQL; Aurora reports none).
    pub lag_bytes: Option<u64>,
    /// Behind the configured lag limit: it gets no reads until it catches
    /// up, and it is not ejected.
    pub behind: bool,
    /// Whether the server said it is a standby when the node's newest
    /// connection was opened (`in_hot_standby`, which PostgreSQL 14 and
    /// later report unasked): `Some(false)` for a replica whose address
    /// reaches a writer (a promoted replica, a misconfigured endpoint),
    /// which is also logged. `None` when no connection was opened yet, or
    /// the server does not say (PostgreSQL 13; poolers that do not pass it
    /// on).
    pub standby: Option<bool>,
    /// Most connections its pool may hold.
    pub max_size: usize,
    /// Connections open now.
    pub size: usize,
    /// Idle connections ready for use.
    pub available: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
}

/// A duration as whole milliseconds.
fn as_millis<S: Serializer>(value: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(d) => serializer.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        None => serializer.serialize_none(),
    }
}
