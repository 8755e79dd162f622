//! Errors: one enum for configuration, one for running queries.

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::deadpool::PoolError;

/// A configuration that cannot be used. Every message names the setting
/// (environment variable or serde field), the bad value with any password
/// hidden, and what is expected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No writer was configured.
    #[error("`{key}` is not set: set it to the writer's URL, or set `{alternative}`")]
    Missing {
        /// The setting that was expected.
        key: String,
        /// The setting that can stand in for it.
        alternative: String,
    },
    /// Two settings that exclude each other are both set.
    #[error("`{first}` and `{second}` are both set: set only one of them")]
    Conflict {
        /// The first setting.
        first: String,
        /// The second setting.
        second: String,
    },
    /// A URL setting is blank.
    #[error("`{key}` is empty: expected a URL such as postgres://user:password@host:5432/database")]
    Empty {
        /// The setting.
        key: String,
    },
    /// A URL or connection string does not parse or cannot be used. The
    /// value is not quoted: it may hold a password wherever it failed.
    #[error("`{key}` is not a usable PostgreSQL URL: {problem}")]
    InvalidUrl {
        /// The setting, with the list index for list entries.
        key: String,
        /// What is wrong and what is expected.
        problem: String,
    },
    /// A `host[:port]` replica entry is malformed.
    #[error(
        "`{key}` = `{value}` is not a valid replica address: {problem}; expected host or host:port"
    )]
    InvalidHost {
        /// The setting, with the list index.
        key: String,
        /// The value, credentials hidden.
        value: String,
        /// What is wrong.
        problem: String,
    },
    /// The same server and database is listed twice as a replica.
    #[error("`{key}`: replica {address} is listed twice")]
    DuplicateReplica {
        /// The setting, with the list index of the second listing.
        key: String,
        /// The replica's `host:port`.
        address: String,
    },
    /// The same server and database is listed twice as a discovery
    /// candidate (in any spelling: `DB` and `db`, `db` and `db:5432`).
    #[error("`{key}`: candidate {address} is listed twice (in one spelling or another)")]
    DuplicateCandidate {
        /// The setting, with the list index of the second listing.
        key: String,
        /// The candidate's `host:port`.
        address: String,
    },
    /// A replica is the writer itself.
    #[error("`{key}`: replica {address} is the writer; list only read replicas")]
    ReplicaIsWriter {
        /// The setting, with the list index.
        key: String,
        /// The writer's `host:port`.
        address: String,
    },
    /// The secret is not a JSON document of the expected shape.
    #[error(
        "`{key}` is not a valid database secret: {reason}; expected JSON such as \
         {{\"username\":..,\"password\":..,\"host\":..,\"port\":5432,\"dbname\":..}}"
    )]
    InvalidSecret {
        /// The setting holding the secret.
        key: String,
        /// What is wrong, never quoting the secret.
        reason: String,
    },
    /// A field of the secret is missing or has the wrong type.
    #[error("`{key}`: field `{field}` of the database secret {problem}")]
    SecretField {
        /// The setting holding the secret.
        key: String,
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A numeric setting does not parse.
    #[error("`{key}` = `{value}` is not a whole number")]
    InvalidNumber {
        /// The setting.
        key: String,
        /// Its value.
        value: String,
    },
    /// A setting that takes one of a few words got another.
    #[error("`{key}` = `{value}` is not valid: expected {expected}")]
    InvalidChoice {
        /// The setting.
        key: String,
        /// Its value.
        value: String,
        /// What it may be.
        expected: &'static str,
    },
    /// Replica weights that do not give each replica one, or are all 0.
    #[error(
        "`{key}` has {weights} weight(s) for {replicas} replica(s): give one weight per replica, \
         in order, not all 0"
    )]
    InvalidWeights {
        /// The setting.
        key: String,
        /// Weights given.
        weights: usize,
        /// Replicas configured.
        replicas: usize,
    },
    /// A shared schema name is not a plain PostgreSQL identifier.
    #[error("`{key}`: schema name {name:?} is not a plain identifier")]
    InvalidSchema {
        /// The setting.
        key: String,
        /// The schema name.
        name: String,
        /// What is wrong with the name.
        #[source]
        problem: crate::tenant::NameError,
    },
    /// TLS settings that cannot be used: an unknown `sslmode`, a missing
    /// or malformed certificate file, a mode that needs a root certificate
    /// without one.
    #[error("`{key}`: {problem}")]
    InvalidTls {
        /// The setting, or the node whose settings they are.
        key: String,
        /// What is wrong, naming the file where one is at fault.
        problem: String,
    },
    /// A change of the replicas named another writer.
    #[error(
        "the writer is {current}, and the new configuration names {given}: replicas can change \
         while running, the writer cannot"
    )]
    WriterChanged {
        /// The writer's `host:port`.
        current: String,
        /// The one the new configuration names.
        given: String,
    },
    /// A number outside the range its setting accepts.
    #[error("`{key}` = {value} is out of range: expected {expected}")]
    OutOfRange {
        /// The setting.
        key: String,
        /// The value, with its unit.
        value: String,
        /// The range accepted.
        expected: String,
    },
    /// A prefix for `{PREFIX}_DATABASE_*` variables that no environment
    /// variable name could start with.
    #[error("prefix `{prefix}` is not valid: use ASCII letters, digits and `_`, as in `ANALYTICS`")]
    InvalidPrefix {
        /// The prefix.
        prefix: String,
    },
    /// More connections to warm up than the pool may hold.
    #[error("`{key}` = {warm_up} is larger than the pool size {max_size}")]
    WarmUpTooLarge {
        /// The setting.
        key: String,
        /// Connections asked for at start.
        warm_up: usize,
        /// The pool's size.
        max_size: usize,
    },
}

/// Why a routed query did not return its result.
///
/// Routing failures ([`Error::Checkout`]) are told apart from the query's
/// own errors ([`Error::Query`], [`Error::ReadOnlyViolation`]). Every variant
/// names the node, by role and `host:port`, never with credentials. The
/// error behind a failure (diesel's, the pool's) is its
/// [`source`](std::error::Error::source), not part of its message: print
/// the chain (`{:#}` with anyhow, or walk `source()`) to see it. Sort
/// errors with [`Error::kind`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No connection could be had from the node's pool: the wait, connect or
    /// recycle timeout expired, or connecting failed.
    #[error("{node} unavailable")]
    Checkout {
        /// The node, as `role (host:port)`.
        node: String,
        /// What went wrong.
        #[source]
        error: CheckoutError,
    },
    /// Every connection of the node's pool was in use for the whole wait
    /// timeout (`DATABASE_POOL_TIMEOUT_MS`): the node is busy, not down.
    /// Its health is not touched, and a read is not sent to the writer for
    /// it (another replica with a free connection may serve it).
    #[error(
        "{node} is busy: all {max_size} connections of its pool were in use for the whole wait timeout"
    )]
    Busy {
        /// The node, as `role (host:port)`.
        node: String,
        /// The pool's size.
        max_size: usize,
    },
    /// The node did not finish the attempt within its statement timeout
    /// plus half a second: it is hung or unreachable.
    #[error("{node} did not answer within {after:?}")]
    Timeout {
        /// The node, as `role (host:port)`.
        node: String,
        /// The bound that expired.
        after: std::time::Duration,
    },
    /// The connection broke during the call: the node failed (it died, was
    /// shut down or ended the session), not the statement. Nothing of a
    /// transaction was committed: its `COMMIT` was never sent. An autocommit
    /// `write` may or may not have run. A read that gets this went
    /// elsewhere first, as far as its retries allowed.
    #[error("{node} unavailable: the connection was lost during the call")]
    ConnectionLost {
        /// The node, as `role (host:port)`.
        node: String,
        /// Diesel's error, as the body saw it.
        #[source]
        error: DieselError,
    },
    /// The replica a read waited on was ejected meanwhile: it had stopped
    /// answering (the other reads on it failed, or the lag monitor got no
    /// answer). The read goes elsewhere at once, without waiting out its
    /// own timeout; this is what it returns only when nowhere else could
    /// serve it.
    #[error("{node} was ejected while a read waited on it")]
    Ejected {
        /// The replica, as `replica (host:port)`.
        node: String,
    },
    /// No replica could serve a read, and reads may not fall back to the
    /// writer (`reads_fall_back_to_writer = false`).
    #[error(
        "no replica available for a read, and reads may not fall back to the writer: {}",
        replicas.join("; ")
    )]
    NoReplicaAvailable {
        /// Each replica with its health and last error.
        replicas: Vec<String>,
    },
    /// No writer is known: the last one turned out to be a standby or
    /// stopped answering, and discovery has not found another yet. Writes
    /// fail fast, and are never retried (one may have partly applied);
    /// they work again by themselves once a writer is found.
    #[error("no writer available ({last} is not one now); writes resume when a writer is found")]
    WriterUnavailable {
        /// The last writer, as `writer (host:port)`.
        last: String,
    },
    /// The writer gave its watchdog no answer twice in a row: it is cut off
    /// the network, hung or down. Calls to it (writes, fresh reads, reads
    /// that fall back to it) fail fast instead of waiting out their
    /// timeouts, and a call running on it when it was found unreachable
    /// ends with this error; whether that call's write committed is then
    /// unknown, as after [`Error::Timeout`]. Discovery, when configured,
    /// looks for another writer at once. Calls work again by themselves as
    /// soon as the writer answers, or another is found. Its kind is
    /// [`ErrorKind::WriterUnavailable`].
    #[error(
        "{writer} does not answer (cut off, hung or down); calls to it resume when it answers or another writer is found"
    )]
    WriterUnreachable {
        /// The writer, as `writer (host:port)`.
        writer: String,
    },
    /// A tenant-scoped call named a tenant whose schema does not exist (on
    /// the node that served it).
    #[error("tenant `{tenant}` has no schema on {node}: provision it first")]
    UnknownTenant {
        /// The tenant.
        tenant: String,
        /// The node, as `role (host:port)`.
        node: String,
    },
    /// Provisioning a tenant failed; its transaction rolled back, so its
    /// schema is as it was.
    #[error("provisioning tenant `{tenant}` failed, and its schema is as it was: {reason}")]
    Provision {
        /// The tenant.
        tenant: String,
        /// The failed statement's or migration's error.
        reason: String,
    },
    /// The query failed; its error is diesel's.
    #[error("query failed on {node}")]
    Query {
        /// The node that ran it.
        node: String,
        /// Diesel's error.
        #[source]
        error: DieselError,
    },
    /// A method of a unit-struct repo ran before the repo was connected
    /// with one of its constructors.
    #[error("`{repo}` is not connected: call `{repo}::from_env` or `{repo}::connect` first")]
    NotConnected {
        /// The repo's type.
        repo: &'static str,
    },
    /// A unit-struct repo holds one replica set per process, and it was
    /// already connected.
    #[error(
        "`{repo}` is already connected: a unit-struct repo holds one replica set per process; \
         give the struct a `ReplicaSet` field to hold several"
    )]
    AlreadyConnected {
        /// The repo's type.
        repo: &'static str,
    },
    /// A statement on the read path tried to write. Reads run in `READ ONLY`
    /// transactions; writes belong on the writer path.
    #[error(
        "{node} refused a write: the read path is read-only; run writes on the writer \
         (`#[write]`, `write` or `transaction`)"
    )]
    ReadOnlyViolation {
        /// The node that refused it.
        node: String,
        /// Diesel's error, `DatabaseErrorKind::ReadOnlyTransaction`.
        #[source]
        error: DieselError,
    },
}

/// Why no connection could be had from a node's pool: the source of
/// [`Error::Checkout`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckoutError {
    /// No connection came free within the pool's wait timeout.
    #[error("no connection came free within the wait timeout")]
    WaitTimeout,
    /// Opening a connection took longer than the connect timeout.
    #[error("opening a connection took longer than the connect timeout")]
    ConnectTimeout,
    /// Checking an idle connection took longer than the recycle timeout.
    #[error("checking an idle connection took longer than the recycle timeout")]
    RecycleTimeout,
    /// Opening a connection failed: refused, unreachable, authentication.
    #[error("opening a connection failed")]
    Connect(#[source] diesel::ConnectionError),
    /// Setting up or checking a connection failed.
    #[error("setting up a connection failed")]
    Setup(#[source] DieselError),
    /// The pool was closed.
    #[error("the pool is closed")]
    Closed,
}

impl From<PoolError> for CheckoutError {
    fn from(error: PoolError) -> Self {
        use deadpool::managed::TimeoutType;
        use diesel_async::pooled_connection::PoolError as Backend;

        match error {
            PoolError::Timeout(TimeoutType::Wait) => Self::WaitTimeout,
            PoolError::Timeout(TimeoutType::Create) => Self::ConnectTimeout,
            PoolError::Timeout(TimeoutType::Recycle) => Self::RecycleTimeout,
            PoolError::Backend(Backend::ConnectionError(e)) => Self::Connect(e),
            PoolError::Backend(Backend::QueryError(e)) => Self::Setup(e),
            // No hooks are installed and the runtime is always set: what is
            // left is a closed pool.
            PoolError::Closed | PoolError::NoRuntimeSpecified | PoolError::PostCreateHook(_) => {
                Self::Closed
            }
        }
    }
}

/// What kind of failure an [`Error`] is, to count, alert or decide on
/// without matching every variant. [`ErrorKind::as_str`] gives a stable
/// `snake_case` name for metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ErrorKind {
    /// [`Error::Config`].
    Config,
    /// [`Error::Checkout`] on a wait, connect or recycle timeout.
    CheckoutTimeout,
    /// [`Error::Checkout`] for any other reason.
    Checkout,
    /// [`Error::Timeout`]: a node did not answer.
    Timeout,
    /// [`Error::Busy`]: every connection of a node's pool was in use.
    Busy,
    /// [`Error::ConnectionLost`].
    ConnectionLost,
    /// [`Error::Ejected`].
    Ejected,
    /// [`Error::NoReplicaAvailable`].
    NoReplicaAvailable,
    /// [`Error::WriterUnavailable`] and [`Error::WriterUnreachable`].
    WriterUnavailable,
    /// [`Error::ReadOnlyViolation`].
    ReadOnlyViolation,
    /// [`Error::Query`] with diesel's `NotFound`: no row.
    NotFound,
    /// [`Error::Query`], any other query error.
    Query,
    /// [`Error::UnknownTenant`].
    UnknownTenant,
    /// [`Error::Provision`].
    Provision,
    /// [`Error::NotConnected`].
    NotConnected,
    /// [`Error::AlreadyConnected`].
    AlreadyConnected,
}

impl ErrorKind {
    /// The kind's `snake_case` name, as `"checkout_timeout"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::CheckoutTimeout => "checkout_timeout",
            Self::Checkout => "checkout",
            Self::Timeout => "timeout",
            Self::Busy => "busy",
            Self::ConnectionLost => "connection_lost",
            Self::Ejected => "ejected",
            Self::NoReplicaAvailable => "no_replica_available",
            Self::WriterUnavailable => "writer_unavailable",
            Self::ReadOnlyViolation => "read_only_violation",
            Self::NotFound => "not_found",
            Self::Query => "query",
            Self::UnknownTenant => "unknown_tenant",
            Self::Provision => "provision",
            Self::NotConnected => "not_connected",
            Self::AlreadyConnected => "already_connected",
        }
    }

    /// Whether the failure is the node's (it could not be reached, did not
    /// answer, or none was available), not the query's or the caller's.
    pub fn is_unavailable(self) -> bool {
        matches!(
            self,
            Self::CheckoutTimeout
                | Self::Checkout
                | Self::Timeout
                | Self::Busy
                | Self::ConnectionLost
                | Self::Ejected
                | Self::NoReplicaAvailable
                | Self::WriterUnavailable
        )
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Config(_) => ErrorKind::Config,
            Self::Checkout { .. } if self.is_timeout() => ErrorKind::CheckoutTimeout,
            Self::Checkout { .. } => ErrorKind::Checkout,
            Self::Timeout { .. } => ErrorKind::Timeout,
            Self::Busy { .. } => ErrorKind::Busy,
            Self::ConnectionLost { .. } => ErrorKind::ConnectionLost,
            Self::Ejected { .. } => ErrorKind::Ejected,
            Self::NoReplicaAvailable { .. } => ErrorKind::NoReplicaAvailable,
            Self::WriterUnavailable { .. } | Self::WriterUnreachable { .. } => {
                ErrorKind::WriterUnavailable
            }
            Self::ReadOnlyViolation { .. } => ErrorKind::ReadOnlyViolation,
            Self::Query {
                error: DieselError::NotFound,
                ..
            } => ErrorKind::NotFound,
            Self::Query { .. } => ErrorKind::Query,
            Self::UnknownTenant { .. } => ErrorKind::UnknownTenant,
            Self::Provision { .. } => ErrorKind::Provision,
            Self::NotConnected { .. } => ErrorKind::NotConnected,
            Self::AlreadyConnected { .. } => ErrorKind::AlreadyConnected,
        }
    }

    /// The diesel error of a failed query, if that is what this is.
    pub fn query_error(&self) -> Option<&DieselError> {
        match self {
            Self::Query { error, .. } | Self::ReadOnlyViolation { error, .. } => Some(error),
            _ => None,
        }
    }

    /// Whether waiting for a connection, connecting, or checking a
    /// connection timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            Self::Timeout { .. }
                | Self::Checkout {
                    error: CheckoutError::WaitTimeout
                        | CheckoutError::ConnectTimeout
                        | CheckoutError::RecycleTimeout,
                    ..
                }
        )
    }

    pub(crate) fn from_query(node: String, error: DieselError, read_only: bool) -> Self {
        match error {
            DieselError::DatabaseError(DatabaseErrorKind::ReadOnlyTransaction, _) if read_only => {
                Self::ReadOnlyViolation { node, error }
            }
            error => Self::Query { node, error },
        }
    }
}

/// An error's message followed by those of its sources, joined by `: `:
/// the whole story on one line, for a node's last error and for
/// tokio-postgres' errors, which leave the server's words to their source.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(next) = source {
        text.push_str(": ");
        text.push_str(&next.to_string());
        source = next.source();
    }
    text
}
