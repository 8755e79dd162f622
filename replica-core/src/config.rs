//! Runtime configuration: from environment variables, a Secrets Manager JSON
//! secret, or any serde source.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::balance::Balance;
use crate::credentials::{Credentials, CredentialsProvider, Login, SecretFile, read_secret_file};
use crate::error::ConfigError;
use crate::pooler::Pooler;
use crate::tenant::check_identifier;
use crate::tls::TlsSettings;
use crate::url::{DatabaseUrl, MAX_TIMEOUT_MS, UrlProblem, redact_address};

/// Where to connect and how to pool: one writer and any number of replicas.
///
/// Build it with [`Config::from_env`], [`Config::from_env_with_prefix`],
/// [`Config::new`], or deserialize it with serde (figment, config-rs, ...).
/// The serde form takes the same settings as the environment, named by field:
///
/// ```
/// # use replica_core::Config;
/// let config: Config = serde_json::from_str(r#"{
///     "url": "postgres://app:secret@writer:5432/app",
///     "replica_hosts": ["reader-1", "reader-2:5433"],
///     "replica_pool": { "max_size": 32, "warm_up": 4 }
/// }"#).unwrap();
/// assert_eq!(config.replicas.len(), 2);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Settings")]
#[non_exhaustive]
pub struct Config {
    /// The writer (primary). Required: `DATABASE_URL` or `DATABASE_SECRET`.
    pub writer: DatabaseUrl,
    /// The read replicas, in order. Default: none, and reads go to the writer.
    pub replicas: Vec<DatabaseUrl>,
    /// Pool of the writer. Default: [`PoolConfig::default`].
    pub writer_pool: PoolConfig,
    /// Pool of each replica. Default: [`PoolConfig::default`].
    pub replica_pool: PoolConfig,
    /// `application_name` given to every connection unless its URL sets one,
    /// as seen in `pg_stat_activity`. Default: `diesel-replica`.
    pub application_name: String,
    /// How reads are spread over the replicas. Default: least in flight.
    pub balance: Balance,
    /// Weight of each replica, in order, for [`Balance::Weighted`]; a
    /// replica of weight 0 serves reads only when every other is out.
    /// Default: empty, meaning 1 for each.
    pub replica_weights: Vec<u32>,
    /// Ejection, re-admission and retry of failed reads. Default:
    /// [`HealthConfig::default`].
    pub health: HealthConfig,
    /// Replica lag: how it is measured, how much a read tolerates, and how
    /// reads wait for their writes. Default: [`ConsistencyConfig::default`].
    pub consistency: ConsistencyConfig,
    /// Schemas every tenant sees after its own, in `search_path` order.
    /// Default: `public`.
    pub shared_schemas: Vec<String>,
    /// Where the login of each new connection comes from; `None` uses the
    /// user and password of each node's URL. `DATABASE_SECRET_FILE` sets a
    /// [`SecretFile`](crate::SecretFile); [`Config::with_credentials`] any
    /// provider. Not a serde field (serde: `secret_file`).
    pub credentials: Option<CredentialsProvider>,
    /// How the nodes are found while running. Default:
    /// [`Discovery::Static`], the lists above.
    pub discovery: Discovery,
    /// What the addresses reach: the servers, or a transaction-mode pooler
    /// in front of each. Default: [`Pooler::None`].
    pub pooler: Pooler,
    /// The login of reads on the writer (fresh reads, and reads when no
    /// replica can take them): a role whose server-side default is
    /// read-only (`ALTER ROLE .. SET default_transaction_read_only = on`),
    /// the guard that holds behind a pooler too. `None` reads with the
    /// writer's login. Env: `DATABASE_WRITER_READ_USER` and
    /// `DATABASE_WRITER_READ_PASSWORD` (default: the writer's password);
    /// serde: `writer_read_user`, `writer_read_password`. Not with a
    /// credentials provider, whose login every connection takes.
    pub writer_read_login: Option<Login>,
}

/// How a replica set finds its nodes while running.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Discovery {
    /// The writer and replicas of the configuration, for good.
    #[default]
    Static,
    /// Candidate hosts asked `SELECT pg_is_in_recovery()` every `interval`
    /// (every 100 ms while no writer is found): the one not in recovery is
    /// the writer, the others are replicas. Works for PostgreSQL with
    /// streaming replicas, Patroni and RDS multi-AZ clusters.
    Hosts {
        /// The candidates: credentials, database and TLS of the writer's
        /// URL or secret, at each `host[:port]`.
        candidates: Vec<DatabaseUrl>,
        /// Time between two surveys.
        interval: Duration,
    },
    /// Aurora's own view, `aurora_replica_status()` asked of the writer
    /// (or a replica when the writer does not answer) every `interval`
    /// (every 100 ms while no writer is known): the row with
    /// `session_id = 'MASTER_SESSION_ID'` is the writer, the others
    /// replicas; rows not updated for 5 minutes are skipped. Each
    /// `server_id` becomes a host through `host_pattern`.
    Aurora {
        /// The instance endpoint of a `server_id`, with `?` standing for
        /// it: `?.cluster-xyz.eu-west-1.rds.amazonaws.com`. The writer's
        /// port, credentials, database and TLS settings apply.
        host_pattern: String,
        /// Time between two surveys.
        interval: Duration,
    },
}

impl Discovery {
    /// Which source this is, without its settings.
    pub fn source(&self) -> DiscoverySource {
        match self {
            Self::Static => DiscoverySource::Static,
            Self::Hosts { .. } => DiscoverySource::Hosts,
            Self::Aurora { .. } => DiscoverySource::Aurora,
        }
    }
}

/// Where a replica set's nodes come from: the `DATABASE_DISCOVERY` value
/// of a [`Discovery`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum DiscoverySource {
    /// The configuration's lists (and [`ReplicaSet::update_replicas`](crate::ReplicaSet::update_replicas)).
    Static,
    /// Candidate hosts asked `pg_is_in_recovery()`.
    Hosts,
    /// `aurora_replica_status()`.
    Aurora,
}

impl fmt::Display for DiscoverySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Static => "static",
            Self::Hosts => "hosts",
            Self::Aurora => "aurora",
        })
    }
}

/// How failing nodes are taken out and brought back, and how reads that
/// hit them are retried.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HealthConfig {
    /// Consecutive connection-class failures (connect, checkout, broken
    /// connection, timeout, a lag sample with no answer) after which a
    /// replica is ejected: no read is sent to it until a probe succeeds, and
    /// the reads waiting on it go elsewhere. At least 1. Default: 2.
    pub eject_after: u32,
    /// First wait before probing an ejected replica; the wait doubles while
    /// it stays down, up to `probe_max_interval`. At least 10 ms.
    /// Default: 200 ms.
    /// Serde: `probe_interval_ms`.
    #[serde(rename = "probe_interval_ms", with = "millis_required")]
    pub probe_interval: Duration,
    /// Longest wait between two probes, at least `probe_interval`. Probes
    /// start on this schedule whether or not the last one has ended, so it
    /// bounds the time from a replica answering again to its re-admission.
    /// Default: 500 ms. Serde: `probe_max_interval_ms`.
    #[serde(rename = "probe_max_interval_ms", with = "millis_required")]
    pub probe_max_interval: Duration,
    /// How many times a read that failed with a connection-class error is
    /// tried again, each time on another replica (then the writer, when
    /// allowed). SQL errors are never retried. Default: 2.
    pub read_retries: u32,
    /// Whether reads go to the writer when no replica is available.
    /// Default: true.
    pub reads_fall_back_to_writer: bool,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            eject_after: 2,
            probe_interval: Duration::from_millis(200),
            probe_max_interval: Duration::from_millis(500),
            read_retries: 2,
            reads_fall_back_to_writer: true,
        }
    }
}

/// Replica lag and read-your-writes.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ConsistencyConfig {
    /// Time between two lag samples of every replica, taken in the
    /// background on connections of the monitor's own; zero turns the
    /// monitor off (and with it `max_replica_lag` and the skipping of the
    /// wait for tokens already replayed). Zero or from 10 ms. Default:
    /// 500 ms. Env: `DATABASE_LAG_INTERVAL_MS`; serde: `lag_interval_ms`.
    #[serde(rename = "lag_interval_ms", with = "millis_required")]
    pub lag_interval: Duration,
    /// A replica whose time lag is more than this gets no reads until it
    /// catches up (it is not ejected). `None`: no limit. From 1 ms.
    /// Default: none. Env: `DATABASE_MAX_REPLICA_LAG_MS`; serde:
    /// `max_replica_lag_ms`.
    #[serde(rename = "max_replica_lag_ms", with = "millis")]
    pub max_replica_lag: Option<Duration>,
    /// As `max_replica_lag`, in bytes of WAL not yet replayed (PostgreSQL
    /// only: Aurora reports no bytes). From 1. Default: none. Env:
    /// `DATABASE_MAX_REPLICA_LAG_BYTES`; serde: `max_replica_lag_bytes`.
    pub max_replica_lag_bytes: Option<u64>,
    /// Longest wait of a read given a write token for a replica to replay
    /// the write, when none is known to have; then the read goes to the
    /// writer, `READ ONLY`. Zero goes to the writer at once. At most 60 s.
    /// Default: 100 ms. Env: `DATABASE_READ_YOUR_WRITES_WAIT_MS`; serde:
    /// `read_your_writes_wait_ms`.
    #[serde(rename = "read_your_writes_wait_ms", with = "millis_required")]
    pub read_your_writes_wait: Duration,
}

impl Default for ConsistencyConfig {
    fn default() -> Self {
        Self {
            lag_interval: Duration::from_millis(500),
            max_replica_lag: None,
            max_replica_lag_bytes: None,
            read_your_writes_wait: Duration::from_millis(100),
        }
    }
}

/// Pool settings of one role (the writer, or each replica).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PoolConfig {
    /// Most connections open to one node, 1 to 10 000. Default: 10.
    pub max_size: usize,
    /// Connections opened to each node at start, so that the first requests
    /// do not pay for connection set-up. At most `max_size`. Default: 1.
    pub warm_up: usize,
    /// Longest wait for a free connection; `None` waits for ever, zero does
    /// not wait. Default: 5 s. Serde: `wait_timeout_ms`.
    #[serde(rename = "wait_timeout_ms", with = "millis")]
    pub wait_timeout: Option<Duration>,
    /// Longest time to open a connection (TCP, TLS, authentication);
    /// `None` waits for ever. Default: 5 s. Serde: `connect_timeout_ms`.
    #[serde(rename = "connect_timeout_ms", with = "millis")]
    pub connect_timeout: Option<Duration>,
    /// Longest time to check an idle connection before reuse; `None` waits
    /// for ever. Default: 5 s. Serde: `recycle_timeout_ms`.
    #[serde(rename = "recycle_timeout_ms", with = "millis")]
    pub recycle_timeout: Option<Duration>,
    /// Longest run of one statement: set as the server's
    /// `statement_timeout`, which cancels a slow query (an SQL error, not
    /// retried). Half a second later the client gives up on the whole
    /// attempt, which bounds a node that does not answer at all; that counts
    /// against the node, and a read is retried elsewhere. `None` or 0 sets
    /// no limit on either side. The server's limit is appended to any
    /// `options` of the URL, and wins over a `statement_timeout` set there.
    /// Default: 10 s. Serde: `statement_timeout_ms`.
    #[serde(rename = "statement_timeout_ms", with = "millis")]
    pub statement_timeout: Option<Duration>,
    /// Longest life of one connection: an older one is closed instead of
    /// reused (when next taken from the pool, or by a sweep every few
    /// seconds), so that connections opened with old credentials or to an
    /// old DNS answer drain away. Each connection's limit is up to a tenth
    /// shorter, at random, so that connections opened together do not all
    /// reconnect together. `None` keeps them for ever. Default: 30 min.
    /// Serde: `max_lifetime_ms`.
    #[serde(rename = "max_lifetime_ms", with = "millis")]
    pub max_lifetime: Option<Duration>,
    /// Longest idle time of one connection before it is closed instead of
    /// reused; `None` keeps idle connections. Default: 10 min. Serde:
    /// `idle_timeout_ms`.
    #[serde(rename = "idle_timeout_ms", with = "millis")]
    pub idle_timeout: Option<Duration>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_size: 10,
            warm_up: 1,
            wait_timeout: Some(Duration::from_secs(5)),
            connect_timeout: Some(Duration::from_secs(5)),
            recycle_timeout: Some(Duration::from_secs(5)),
            statement_timeout: Some(Duration::from_secs(10)),
            max_lifetime: Some(Duration::from_secs(30 * 60)),
            idle_timeout: Some(Duration::from_secs(10 * 60)),
        }
    }
}

impl PoolConfig {
    /// The statement timeout, `None` for 0: PostgreSQL's own word for no
    /// timeout, which then also sets no client bound.
    pub(crate) fn statement_timeout(&self) -> Option<Duration> {
        self.statement_timeout.filter(|t| !t.is_zero())
    }

    fn normalized(mut self) -> Self {
        self.statement_timeout = self.statement_timeout();
        self
    }
}

const DEFAULT_APPLICATION_NAME: &str = "diesel-replica";

impl Config {
    /// A writer with no replicas and default pools.
    ///
    /// # Errors
    /// When `writer_url` is not a valid PostgreSQL URL.
    pub fn new(writer_url: &str) -> Result<Self, ConfigError> {
        Settings {
            url: Some(writer_url.to_owned()),
            ..Settings::default()
        }
        .resolve(&Naming::Fields)
    }

    /// Adds a replica by URL.
    ///
    /// # Errors
    /// When the URL is invalid, already listed, or the writer's.
    pub fn with_replica(mut self, url: &str) -> Result<Self, ConfigError> {
        let key = format!("replicas[{}]", self.replicas.len());
        let replica = parse_url(&key, url)?;
        self.push_replica(key, replica)?;
        Ok(self)
    }

    /// Asks `provider` for the login of each new connection, and again when
    /// the server refuses one (see [`Credentials`](crate::Credentials)).
    #[must_use]
    pub fn with_credentials(mut self, provider: impl Credentials) -> Self {
        self.credentials = Some(CredentialsProvider::new(provider));
        self
    }

    /// Reads the `DATABASE_*` environment variables (see the crate docs).
    ///
    /// # Errors
    /// When a variable is missing, malformed or contradicts another; the
    /// error names the variable and says what is expected.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(None, |key| std::env::var(key).ok())
    }

    /// Reads `{PREFIX}_DATABASE_*` environment variables, so that one
    /// application can hold several replicated databases: with prefix
    /// `ANALYTICS` the writer is `ANALYTICS_DATABASE_URL`.
    ///
    /// # Errors
    /// As [`Config::from_env`].
    pub fn from_env_with_prefix(prefix: &str) -> Result<Self, ConfigError> {
        Self::from_lookup(Some(prefix), |key| std::env::var(key).ok())
    }

    /// Reads the same variables as [`Config::from_env_with_prefix`] from a
    /// list of pairs instead of the process environment.
    ///
    /// # Errors
    /// As [`Config::from_env`].
    pub fn from_vars<I, K, V>(prefix: Option<&str>, vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let vars: HashMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        Self::from_lookup(prefix, |key| vars.get(key).cloned())
    }

    fn from_lookup(
        prefix: Option<&str>,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let naming = Naming::env(prefix)?;
        let var = |field: &str| lookup(&naming.key(field));
        let list = |field: &str| {
            var(field)
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let number = |field: &str| -> Result<Option<u64>, ConfigError> {
            var(field)
                .map(|v| parse_number(&naming.key(field), &v))
                .transpose()
        };
        let narrow = |field: &str, n: u64| -> Result<u32, ConfigError> {
            u32::try_from(n).map_err(|_| ConfigError::OutOfRange {
                key: naming.key(field),
                value: n.to_string(),
                expected: format!("at most {}", u32::MAX),
            })
        };
        let size = |field: &str| -> Result<Option<usize>, ConfigError> {
            // Out of `usize` is out of any range `validate` accepts.
            Ok(number(field)?.map(|n| usize::try_from(n).unwrap_or(usize::MAX)))
        };
        let mut writer_pool = PoolConfig::default();
        let mut replica_pool = PoolConfig::default();
        for (pool, size_field) in [
            (&mut writer_pool, "writer_pool.max_size"),
            (&mut replica_pool, "replica_pool.max_size"),
        ] {
            if let Some(n) = size(size_field)? {
                pool.max_size = n;
            }
            if let Some(n) = size("warm_up")? {
                pool.warm_up = n;
            }
            for (slot, field) in [
                (&mut pool.wait_timeout, "wait_timeout"),
                (&mut pool.connect_timeout, "connect_timeout"),
                (&mut pool.recycle_timeout, "recycle_timeout"),
                (&mut pool.statement_timeout, "statement_timeout"),
                (&mut pool.max_lifetime, "max_lifetime"),
                (&mut pool.idle_timeout, "idle_timeout"),
            ] {
                if let Some(ms) = number(field)? {
                    *slot = Some(Duration::from_millis(ms));
                }
            }
        }
        let secret = var("secret").map(|raw| -> Result<Value, ConfigError> {
            serde_json::from_str(&raw).map_err(|e| ConfigError::InvalidSecret {
                key: naming.key("secret"),
                // A syntax error names a line and column, never the content.
                reason: e.to_string(),
            })
        });
        let mut health = HealthConfig::default();
        if let Some(n) = number("health.eject_after")? {
            health.eject_after = narrow("health.eject_after", n)?;
        }
        if let Some(n) = number("health.read_retries")? {
            health.read_retries = narrow("health.read_retries", n)?;
        }
        if let Some(ms) = number("health.probe_interval")? {
            health.probe_interval = Duration::from_millis(ms);
        }
        if let Some(ms) = number("health.probe_max_interval")? {
            health.probe_max_interval = Duration::from_millis(ms);
        }
        if let Some(flag) = var("health.reads_fall_back_to_writer") {
            health.reads_fall_back_to_writer =
                parse_flag(&flag).ok_or_else(|| ConfigError::InvalidChoice {
                    key: naming.key("health.reads_fall_back_to_writer"),
                    value: flag,
                    expected: "true or false",
                })?;
        }
        let mut consistency = ConsistencyConfig::default();
        if let Some(ms) = number("consistency.lag_interval")? {
            consistency.lag_interval = Duration::from_millis(ms);
        }
        if let Some(ms) = number("consistency.max_replica_lag")? {
            consistency.max_replica_lag = Some(Duration::from_millis(ms));
        }
        if let Some(bytes) = number("consistency.max_replica_lag_bytes")? {
            consistency.max_replica_lag_bytes = Some(bytes);
        }
        if let Some(ms) = number("consistency.read_your_writes_wait")? {
            consistency.read_your_writes_wait = Duration::from_millis(ms);
        }
        let balance = match var("balance") {
            None => None,
            Some(name) => {
                Some(
                    Balance::parse(&name).ok_or_else(|| ConfigError::InvalidChoice {
                        key: naming.key("balance"),
                        value: name,
                        expected: "one of round_robin, random, least_in_flight, weighted",
                    })?,
                )
            }
        };
        let replica_weights: Vec<String> = list("replica_weights");
        let replica_weights = replica_weights
            .into_iter()
            .map(|w: String| {
                let n = parse_number(&naming.key("replica_weights"), &w)?;
                narrow("replica_weights", n)
            })
            .collect::<Result<_, _>>()?;
        let shared_schemas = var("shared_schemas").map(|_| list("shared_schemas"));
        let pooler = match var("pooler") {
            None => None,
            Some(name) => Some(
                Pooler::parse(&name).ok_or_else(|| ConfigError::InvalidChoice {
                    key: naming.key("pooler"),
                    value: name,
                    expected: "none or transaction",
                })?,
            ),
        };
        Settings {
            pooler,
            writer_read_user: var("writer_read_user"),
            writer_read_password: var("writer_read_password"),
            url: var("url"),
            secret_file: var("secret_file"),
            discovery: var("discovery"),
            aurora_host_pattern: var("aurora_host_pattern"),
            candidate_hosts: list("candidate_hosts"),
            discovery_interval_ms: number("discovery_interval_ms")?,
            shared_schemas,
            balance,
            replica_weights,
            health,
            consistency,
            secret: secret.transpose()?,
            replica_urls: list("replica_urls"),
            replica_hosts: list("replica_hosts"),
            application_name: var("application_name"),
            sslmode: var("sslmode"),
            sslrootcert: var("sslrootcert"),
            writer_pool,
            replica_pool,
        }
        .resolve(&naming)
    }

    /// Checks every setting of a configuration however it was built: from
    /// the environment, serde, or by hand before
    /// [`ReplicaSet::new`](crate::ReplicaSet::new).
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        self.check(&Naming::Fields)
    }

    fn check(&self, naming: &Naming) -> Result<(), ConfigError> {
        let out_of_range = |field: &str, value: String, expected: String| ConfigError::OutOfRange {
            key: naming.key(field),
            value,
            expected,
        };
        let ms = |d: Duration| format!("{} ms", d.as_millis());
        let timeout = |field: &str, value: Option<Duration>, least: u64| match value {
            Some(d)
                if d < Duration::from_millis(least)
                    || d.as_millis() > u128::from(MAX_TIMEOUT_MS) =>
            {
                Err(out_of_range(
                    field,
                    ms(d),
                    format!("from {least} to {MAX_TIMEOUT_MS} ms (about 24 days)"),
                ))
            }
            _ => Ok(()),
        };
        for (pool, role) in [
            (&self.writer_pool, "writer_pool"),
            (&self.replica_pool, "replica_pool"),
        ] {
            if !(1..=MAX_POOL_SIZE).contains(&pool.max_size) {
                return Err(out_of_range(
                    &format!("{role}.max_size"),
                    pool.max_size.to_string(),
                    format!("from 1 to {MAX_POOL_SIZE} connections"),
                ));
            }
            if pool.warm_up > pool.max_size {
                return Err(ConfigError::WarmUpTooLarge {
                    key: naming.key(&format!("{role}.warm_up")),
                    warm_up: pool.warm_up,
                    max_size: pool.max_size,
                });
            }
            // 0 does not wait for a free connection; 0 would time out every
            // connect and check.
            timeout("wait_timeout", pool.wait_timeout, 0)?;
            timeout("connect_timeout", pool.connect_timeout, 1)?;
            timeout("recycle_timeout", pool.recycle_timeout, 1)?;
            timeout("statement_timeout", pool.statement_timeout(), 1)?;
            timeout("max_lifetime", pool.max_lifetime, 1000)?;
            timeout("idle_timeout", pool.idle_timeout, 1000)?;
        }
        let health = &self.health;
        if health.eject_after == 0 {
            return Err(out_of_range(
                "health.eject_after",
                "0".into(),
                format!("from 1 to {}", u32::MAX),
            ));
        }
        timeout(
            "health.probe_interval",
            Some(health.probe_interval),
            MIN_PROBE_INTERVAL_MS,
        )?;
        if health.probe_max_interval < health.probe_interval {
            return Err(out_of_range(
                "health.probe_max_interval",
                ms(health.probe_max_interval),
                format!("at least the probe interval, {}", ms(health.probe_interval)),
            ));
        }
        timeout(
            "health.probe_max_interval",
            Some(health.probe_max_interval),
            MIN_PROBE_INTERVAL_MS,
        )?;
        let consistency = &self.consistency;
        if consistency.lag_interval != Duration::ZERO {
            timeout(
                "consistency.lag_interval",
                Some(consistency.lag_interval),
                MIN_PROBE_INTERVAL_MS,
            )?;
        }
        timeout(
            "consistency.max_replica_lag",
            consistency.max_replica_lag,
            1,
        )?;
        if consistency.max_replica_lag_bytes == Some(0) {
            return Err(out_of_range(
                "consistency.max_replica_lag_bytes",
                "0".into(),
                format!("from 1 to {} bytes, or unset for no limit", u64::MAX),
            ));
        }
        if consistency.lag_interval == Duration::ZERO
            && (consistency.max_replica_lag.is_some()
                || consistency.max_replica_lag_bytes.is_some())
        {
            return Err(out_of_range(
                "consistency.lag_interval",
                "0 ms".into(),
                "from 10 ms: a lag limit is set, and only the monitor measures lag".into(),
            ));
        }
        if consistency.read_your_writes_wait > MAX_READ_YOUR_WRITES_WAIT {
            return Err(out_of_range(
                "consistency.read_your_writes_wait",
                ms(consistency.read_your_writes_wait),
                format!("from 0 to {}", ms(MAX_READ_YOUR_WRITES_WAIT)),
            ));
        }
        if self.application_name.len() > 63 || self.application_name.contains(char::is_control) {
            return Err(ConfigError::InvalidChoice {
                key: naming.key("application_name"),
                value: self.application_name.clone(),
                expected: "at most 63 bytes, without control characters",
            });
        }
        if let Some(login) = &self.writer_read_login {
            let bad = login.user.is_empty()
                || login.user.len() > 63
                || login.user.contains(char::is_control);
            if bad || self.credentials.is_some() {
                return Err(ConfigError::InvalidChoice {
                    key: naming.key("writer_read_user"),
                    value: login.user.chars().take(64).collect(),
                    expected: "a role name of 1 to 63 bytes without control characters, \
                               and no credentials provider (whose login every \
                               connection takes)",
                });
            }
        }
        for (name, url) in std::iter::once(("writer".to_owned(), &self.writer)).chain(
            self.replicas
                .iter()
                .enumerate()
                .map(|(i, url)| (format!("replica-{i}"), url)),
        ) {
            url.tls
                .client_config()
                .map_err(|problem| ConfigError::InvalidTls {
                    key: format!("{name} ({})", url.address()),
                    problem,
                })?;
            if self.pooler.is_transaction() && url.has_options() {
                return Err(ConfigError::InvalidChoice {
                    key: format!("{name} ({})", url.address()),
                    value: "options".to_owned(),
                    expected: "no startup options behind a transaction-mode pooler \
                               (DATABASE_POOLER=transaction), which refuses them",
                });
            }
        }
        for schema in &self.shared_schemas {
            check_identifier(schema).map_err(|problem| ConfigError::InvalidSchema {
                key: naming.key("shared_schemas"),
                name: schema.clone(),
                problem,
            })?;
        }
        self.check_weights(&naming.key("replica_weights"))
    }

    /// Weights, when given, name each replica, and not all are 0.
    fn check_weights(&self, key: &str) -> Result<(), ConfigError> {
        let weights = &self.replica_weights;
        if weights.is_empty() {
            return Ok(());
        }
        if weights.len() != self.replicas.len() || weights.iter().all(|&w| w == 0) {
            return Err(ConfigError::InvalidWeights {
                key: key.to_owned(),
                weights: weights.len(),
                replicas: self.replicas.len(),
            });
        }
        Ok(())
    }

    fn push_replica(&mut self, key: String, replica: DatabaseUrl) -> Result<(), ConfigError> {
        if replica.target() == self.writer.target() {
            return Err(ConfigError::ReplicaIsWriter {
                key,
                address: replica.address(),
            });
        }
        if self.replicas.iter().any(|r| r.target() == replica.target()) {
            return Err(ConfigError::DuplicateReplica {
                key,
                address: replica.address(),
            });
        }
        self.replicas.push(replica);
        Ok(())
    }
}

/// The raw settings, shaped as the serde form; the environment fills the
/// same struct so that both sources share one validation.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    url: Option<String>,
    secret: Option<Value>,
    secret_file: Option<String>,
    discovery: Option<String>,
    aurora_host_pattern: Option<String>,
    candidate_hosts: Vec<String>,
    discovery_interval_ms: Option<u64>,
    replica_urls: Vec<String>,
    replica_hosts: Vec<String>,
    application_name: Option<String>,
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    writer_pool: PoolConfig,
    replica_pool: PoolConfig,
    balance: Option<Balance>,
    replica_weights: Vec<u32>,
    health: HealthConfig,
    consistency: ConsistencyConfig,
    shared_schemas: Option<Vec<String>>,
    pooler: Option<Pooler>,
    writer_read_user: Option<String>,
    writer_read_password: Option<String>,
}

/// How a setting is named in errors: by environment variable or by field.
enum Naming {
    Env { prefix: String },
    Fields,
}

/// The most connections one pool may hold to one node.
const MAX_POOL_SIZE: usize = 10_000;

/// Time between two surveys of candidate hosts, by default.
const DEFAULT_DISCOVERY_INTERVAL_MS: u64 = 2000;

/// Time between two asks of `aurora_replica_status()`, by default (as the
/// AWS JDBC wrapper).
const DEFAULT_AURORA_INTERVAL_MS: u64 = 30_000;

/// The longest wait of a read for its write to be replayed.
const MAX_READ_YOUR_WRITES_WAIT: Duration = Duration::from_secs(60);

/// The shortest wait between two probes of an ejected replica.
const MIN_PROBE_INTERVAL_MS: u64 = 10;

/// A whole number of an environment variable.
fn parse_number(key: &str, value: &str) -> Result<u64, ConfigError> {
    let digits = value.trim();
    digits.parse().map_err(|_| {
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            ConfigError::OutOfRange {
                key: key.to_owned(),
                value: digits.to_owned(),
                expected: format!("at most {}", u64::MAX),
            }
        } else {
            ConfigError::InvalidNumber {
                key: key.to_owned(),
                value: value.to_owned(),
            }
        }
    })
}

/// `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`, in any case.
fn parse_flag(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

impl Naming {
    /// Environment variables, `{PREFIX}_DATABASE_*` with the prefix
    /// upper-cased, as environment variables are conventionally named.
    fn env(prefix: Option<&str>) -> Result<Self, ConfigError> {
        let prefix = prefix.unwrap_or_default().trim().trim_end_matches('_');
        if !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(ConfigError::InvalidPrefix {
                prefix: prefix.to_owned(),
            });
        }
        let prefix = match prefix {
            "" => String::new(),
            p => format!("{}_", p.to_ascii_uppercase()),
        };
        Ok(Self::Env { prefix })
    }

    fn key(&self, field: &str) -> String {
        let Self::Env { prefix } = self else {
            return field.to_owned();
        };
        let name = match field {
            "url" => "URL",
            "secret" => "SECRET",
            "secret_file" => "SECRET_FILE",
            "discovery" => "DISCOVERY",
            "aurora_host_pattern" => "AURORA_HOST_PATTERN",
            "candidate_hosts" => "CANDIDATE_HOSTS",
            "discovery_interval_ms" => "DISCOVERY_INTERVAL_MS",
            "replica_urls" => "REPLICA_URLS",
            "replica_hosts" => "REPLICA_HOSTS",
            "application_name" => "APPLICATION_NAME",
            "sslmode" => "SSLMODE",
            "sslrootcert" => "SSLROOTCERT",
            "writer_pool.max_size" => "WRITER_POOL_SIZE",
            "replica_pool.max_size" => "REPLICA_POOL_SIZE",
            "writer_pool.warm_up" | "replica_pool.warm_up" | "warm_up" => "WARM_UP",
            "wait_timeout" => "POOL_TIMEOUT_MS",
            "connect_timeout" => "CONNECT_TIMEOUT_MS",
            "recycle_timeout" => "RECYCLE_TIMEOUT_MS",
            "statement_timeout" => "STATEMENT_TIMEOUT_MS",
            "max_lifetime" => "MAX_LIFETIME_MS",
            "idle_timeout" => "IDLE_TIMEOUT_MS",
            "balance" => "BALANCE",
            "pooler" => "POOLER",
            "writer_read_user" => "WRITER_READ_USER",
            "writer_read_password" => "WRITER_READ_PASSWORD",
            "shared_schemas" => "SHARED_SCHEMAS",
            "replica_weights" => "REPLICA_WEIGHTS",
            "health.eject_after" => "EJECT_AFTER",
            "health.read_retries" => "READ_RETRIES",
            "health.probe_interval" => "PROBE_INTERVAL_MS",
            "health.probe_max_interval" => "PROBE_MAX_INTERVAL_MS",
            "health.reads_fall_back_to_writer" => "READS_FALL_BACK_TO_WRITER",
            "consistency.lag_interval" => "LAG_INTERVAL_MS",
            "consistency.max_replica_lag" => "MAX_REPLICA_LAG_MS",
            "consistency.max_replica_lag_bytes" => "MAX_REPLICA_LAG_BYTES",
            "consistency.read_your_writes_wait" => "READ_YOUR_WRITES_WAIT_MS",
            other => other,
        };
        format!("{prefix}DATABASE_{name}")
    }
}

impl TryFrom<Settings> for Config {
    type Error = ConfigError;

    fn try_from(settings: Settings) -> Result<Self, ConfigError> {
        settings.resolve(&Naming::Fields)
    }
}

impl Settings {
    fn resolve(self, naming: &Naming) -> Result<Config, ConfigError> {
        let given: Vec<&str> = [
            ("url", self.url.is_some()),
            ("secret", self.secret.is_some()),
            ("secret_file", self.secret_file.is_some()),
        ]
        .into_iter()
        .filter_map(|(field, set)| set.then_some(field))
        .collect();
        if let [first, second, ..] = given.as_slice() {
            return Err(ConfigError::Conflict {
                first: naming.key(first),
                second: naming.key(second),
            });
        }
        let mut credentials = None;
        let writer = match (self.url, self.secret, self.secret_file) {
            (Some(url), _, _) => parse_url(&naming.key("url"), &url)?,
            (_, Some(secret), _) => url_from_secret(&naming.key("secret"), &secret)?,
            (_, _, Some(path)) => {
                let key = naming.key("secret_file");
                let text = read_secret_file(Path::new(path.trim())).map_err(|e| {
                    ConfigError::InvalidSecret {
                        key: key.clone(),
                        reason: format!("file `{}` cannot be read: {e}", path.trim()),
                    }
                })?;
                let secret =
                    serde_json::from_str(&text).map_err(|e| ConfigError::InvalidSecret {
                        key: key.clone(),
                        reason: format!("file `{}`: {e}", path.trim()),
                    })?;
                credentials = Some(CredentialsProvider::new(SecretFile::new(path.trim())));
                url_from_secret(&key, &secret)?
            }
            (None, None, None) => {
                return Err(ConfigError::Missing {
                    key: naming.key("url"),
                    alternative: naming.key("secret"),
                });
            }
        };
        // `DATABASE_SSLMODE` and `DATABASE_SSLROOTCERT` stand for what a
        // node's own URL does not say; replica hosts take the writer's.
        let mut tls = TlsSettings::default();
        for (field, value) in [
            ("sslmode", &self.sslmode),
            ("sslrootcert", &self.sslrootcert),
        ] {
            if let Some(value) = value {
                tls.set(field, value.trim())
                    .map_err(|problem| ConfigError::InvalidTls {
                        key: naming.key(field),
                        problem,
                    })?;
            }
        }
        let mut writer = writer;
        writer.tls.inherit(&tls);
        let writer_read_login = match (self.writer_read_user, self.writer_read_password) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(ConfigError::Missing {
                    key: naming.key("writer_read_user"),
                    alternative: naming.key("writer_read_password"),
                });
            }
            (Some(user), password) => Some(Login::new(
                user.trim(),
                password.unwrap_or_else(|| writer.password().to_owned()),
            )),
        };
        let mut config = Config {
            writer,
            replicas: Vec::new(),
            writer_pool: self.writer_pool.normalized(),
            replica_pool: self.replica_pool.normalized(),
            application_name: self
                .application_name
                .unwrap_or_else(|| DEFAULT_APPLICATION_NAME.to_owned()),
            balance: self.balance.unwrap_or_default(),
            replica_weights: self.replica_weights,
            health: self.health,
            consistency: self.consistency,
            shared_schemas: match self.shared_schemas {
                Some(schemas) => schemas,
                None => vec!["public".to_owned()],
            },
            credentials,
            discovery: Discovery::Static,
            pooler: self.pooler.unwrap_or_default(),
            writer_read_login,
        };
        let urls_key = naming.key("replica_urls");
        for (i, url) in self.replica_urls.iter().enumerate() {
            let key = format!("{urls_key}[{i}]");
            let mut replica = parse_url(&key, url)?;
            replica.tls.inherit(&tls);
            config.push_replica(key, replica)?;
        }
        let hosts_key = naming.key("replica_hosts");
        for (i, host) in self.replica_hosts.iter().enumerate() {
            let key = format!("{hosts_key}[{i}]");
            let replica =
                config
                    .writer
                    .with_address(host)
                    .map_err(|problem| ConfigError::InvalidHost {
                        key: key.clone(),
                        value: redact_address(host),
                        problem: problem.to_string(),
                    })?;
            config.push_replica(key, replica)?;
        }
        config.discovery = match self
            .discovery
            .as_deref()
            .map(|d| d.trim().to_ascii_lowercase())
        {
            None => Discovery::Static,
            Some(d) if d == "static" => Discovery::Static,
            Some(d) if d == "hosts" => {
                let key = naming.key("candidate_hosts");
                if self.candidate_hosts.is_empty() {
                    return Err(ConfigError::Missing {
                        key: key.clone(),
                        alternative: naming.key("discovery"),
                    });
                }
                let candidates: Vec<DatabaseUrl> = self
                    .candidate_hosts
                    .iter()
                    .enumerate()
                    .map(|(i, host)| {
                        config.writer.with_address(host).map_err(|problem| {
                            ConfigError::InvalidHost {
                                key: format!("{key}[{i}]"),
                                value: redact_address(host),
                                problem: problem.to_string(),
                            }
                        })
                    })
                    .collect::<Result<_, _>>()?;
                // A target listed twice would be seen twice: as two writers,
                // which discovery cannot tell apart.
                for (i, candidate) in candidates.iter().enumerate() {
                    if candidates[..i]
                        .iter()
                        .any(|c| c.target() == candidate.target())
                    {
                        return Err(ConfigError::DuplicateCandidate {
                            key: format!("{key}[{i}]"),
                            address: candidate.address(),
                        });
                    }
                }
                let ms = self
                    .discovery_interval_ms
                    .unwrap_or(DEFAULT_DISCOVERY_INTERVAL_MS);
                if !(MIN_PROBE_INTERVAL_MS..=MAX_TIMEOUT_MS).contains(&ms) {
                    return Err(ConfigError::OutOfRange {
                        key: naming.key("discovery_interval_ms"),
                        value: format!("{ms} ms"),
                        expected: format!("from {MIN_PROBE_INTERVAL_MS} to {MAX_TIMEOUT_MS} ms"),
                    });
                }
                Discovery::Hosts {
                    candidates,
                    interval: Duration::from_millis(ms),
                }
            }
            Some(d) if d == "aurora" => {
                let key = naming.key("aurora_host_pattern");
                let pattern = self.aurora_host_pattern.as_deref().map(str::trim);
                let Some(pattern) = pattern.filter(|p| p.matches('?').count() == 1) else {
                    return Err(ConfigError::InvalidChoice {
                        key,
                        value: self.aurora_host_pattern.unwrap_or_default(),
                        expected: "an instance host with `?` for the instance, as \
                                   ?.cluster-xyz.eu-west-1.rds.amazonaws.com",
                    });
                };
                // The pattern must make a valid address for any instance.
                config
                    .writer
                    .with_address(&pattern.replace('?', "1"))
                    .map_err(|problem| ConfigError::InvalidHost {
                        key: key.clone(),
                        value: pattern.to_owned(),
                        problem: problem.to_string(),
                    })?;
                let ms = self
                    .discovery_interval_ms
                    .unwrap_or(DEFAULT_AURORA_INTERVAL_MS);
                if !(MIN_PROBE_INTERVAL_MS..=MAX_TIMEOUT_MS).contains(&ms) {
                    return Err(ConfigError::OutOfRange {
                        key: naming.key("discovery_interval_ms"),
                        value: format!("{ms} ms"),
                        expected: format!("from {MIN_PROBE_INTERVAL_MS} to {MAX_TIMEOUT_MS} ms"),
                    });
                }
                Discovery::Aurora {
                    host_pattern: pattern.to_owned(),
                    interval: Duration::from_millis(ms),
                }
            }
            Some(other) => {
                return Err(ConfigError::InvalidChoice {
                    key: naming.key("discovery"),
                    value: other,
                    expected: "static, hosts or aurora",
                });
            }
        };
        config.check(naming)?;
        Ok(config)
    }
}

fn parse_url(key: &str, value: &str) -> Result<DatabaseUrl, ConfigError> {
    if value.trim().is_empty() {
        return Err(ConfigError::Empty {
            key: key.to_owned(),
        });
    }
    DatabaseUrl::parse(value).map_err(|problem: UrlProblem| ConfigError::InvalidUrl {
        key: key.to_owned(),
        problem: problem.to_string(),
    })
}

/// Builds the writer URL from an RDS / Secrets Manager secret:
/// `{"username", "password", "host", "port", "dbname", "engine"}`, `port` a
/// number or a string, `dbname` optional (defaults to the user name, as in
/// PostgreSQL). Extra fields are ignored.
fn url_from_secret(key: &str, secret: &Value) -> Result<DatabaseUrl, ConfigError> {
    let invalid = |reason: &str| ConfigError::InvalidSecret {
        key: key.to_owned(),
        reason: reason.to_owned(),
    };
    let secret = match secret {
        Value::Object(map) => map,
        // A string holding the JSON document, as some serde sources give it.
        Value::String(text) => {
            let value: Value = serde_json::from_str(text).map_err(|e| invalid(&e.to_string()))?;
            return url_from_secret(key, &value);
        }
        _ => return Err(invalid("expected a JSON object")),
    };
    let field = |name: &'static str| -> Result<&str, ConfigError> {
        match secret.get(name) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s),
            Some(_) => Err(ConfigError::SecretField {
                key: key.to_owned(),
                field: name,
                problem: "is not a non-empty string",
            }),
            None => Err(ConfigError::SecretField {
                key: key.to_owned(),
                field: name,
                problem: "is missing",
            }),
        }
    };
    let username = field("username")?;
    let password = field("password")?;
    let host = field("host")?;
    let port = match secret.get("port") {
        None => 5432,
        Some(Value::Number(n)) => n.as_u64().and_then(|n| u16::try_from(n).ok()).unwrap_or(0),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(0),
        Some(_) => 0,
    };
    if port == 0 {
        return Err(ConfigError::SecretField {
            key: key.to_owned(),
            field: "port",
            problem: "is not a port number (1-65535, as a number or a string)",
        });
    }
    let dbname = match secret.get("dbname") {
        None => username,
        Some(_) => field("dbname")?,
    };
    DatabaseUrl::from_parts(username, password, host, port, dbname).map_err(|problem| {
        ConfigError::InvalidSecret {
            key: key.to_owned(),
            reason: format!("host `{host}`: {problem}"),
        }
    })
}

/// `Duration` as a number of milliseconds.
mod millis_required {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(deserializer)?))
    }
}

/// `Option<Duration>` as a number of milliseconds; `null` means no timeout.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(deserializer)?.map(Duration::from_millis))
    }
}
