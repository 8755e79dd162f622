//! The one place physical connections are made: a node's pool, whose
//! connections are opened from parsed settings (never from a string), the
//! seam where TLS and credential providers plug in.

use std::sync::Arc;

use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use deadpool::Runtime;
use deadpool::managed::{Hook, HookError, Metrics};
use diesel::ConnectionError;
use diesel::connection::CacheSize;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod, SetupCallback,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use tokio_postgres::config::SslMode as WireSslMode;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::cancel::Canceller;
use crate::config::PoolConfig;
use crate::credentials::{Credentials, CredentialsProvider};
use crate::dial::{Dial, Socket};
use crate::error::error_chain;
use crate::instrument::Watch;
use crate::metrics::{self, Stopwatch};
use crate::pooler::Pooler;
use crate::server_role::{Expect, Reported, Verdict};
use crate::tls::SslMode;
use crate::url::DatabaseUrl;
use crate::wire::{Tap, Tapped};

/// What a pool's connections serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Serves {
    /// The writer's calls.
    Writes,
    /// Reads on the writer, under a login of their own.
    WriterReads,
    /// A replica's reads.
    Reads,
}

/// The node a pool is for: its name in messages, what the pool's
/// connections serve, and where what their server says it is is kept.
pub(crate) struct Owner {
    pub(crate) node: String,
    pub(crate) serves: Serves,
    pub(crate) reported: Arc<Reported>,
}

/// A pool of connections to the node `url` names, with its TLS settings,
/// and what cancels their statements.
///
/// Idle connections are recycled without a round trip (diesel-async's
/// `Fast`: a connection whose socket closed is discarded); the statements
/// of each use find the rest (see the attempt module). Replicas' sessions
/// are read-only from the start, unless a pooler is in front (see
/// [`Connector::new`]).
///
/// # Errors
/// The TLS settings cannot be used: a certificate file is missing or
/// malformed, or the mode needs a root certificate that is not given.
pub(crate) fn pool(
    url: &DatabaseUrl,
    config: &PoolConfig,
    application_name: &str,
    credentials: Option<&CredentialsProvider>,
    pooler: Pooler,
    owner: Owner,
) -> Result<(Pool<AsyncPgConnection>, Canceller), String> {
    let Owner {
        node,
        serves,
        reported,
    } = owner;
    let mut connector = Connector::new(
        url,
        application_name,
        config.statement_timeout(),
        credentials,
        node,
        config.connect_timeout,
        pooler,
    )?;
    // A writer that turns out to be a standby (after a failover) is refused
    // at connect, not at the first write (see the server_role module).
    let expect = match serves {
        Serves::Writes => Expect::Writes,
        Serves::WriterReads => Expect::Primary,
        Serves::Reads => Expect::Standby,
    };
    connector.role = Some((expect, reported));
    if serves != Serves::Writes && !pooler.is_transaction() {
        // A replica's sessions refuse writes from their start, as a second
        // guard beside each read's `READ ONLY` transaction: a body must
        // turn both off to write on a replica promoted since it was found.
        // `RESET ALL` goes back to it.
        let options = connector
            .config
            .get_options()
            .unwrap_or_default()
            .to_owned()
            + " -c default_transaction_read_only=on";
        connector.config.options(options.trim_start());
    }
    // A replica's plaintext connections are followed on the wire, so that
    // its reads end with a `ROLLBACK` alone unless a body touched the
    // session (see the wire and session modules). Replicas cannot
    // `LISTEN`, which the library's own driving of those connections
    // does not forward.
    connector.tapped = serves == Serves::Reads && !pooler.is_transaction();
    let canceller = Canceller {
        tls: connector.tls.clone(),
        pooler,
        dial: Dial::of(&connector.config),
    };
    let mut manager_config = ManagerConfig::default();
    manager_config.recycling_method = RecyclingMethod::Fast;
    manager_config.custom_setup = setup(connector);
    // The manager's URL string is only a label: connections are opened
    // from the parsed settings above.
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
        url.to_string(),
        manager_config,
    );
    let expiry = Expiry {
        max_lifetime: config.max_lifetime,
        idle_timeout: config.idle_timeout,
    };
    let pool = Pool::builder(manager)
        .max_size(config.max_size)
        .wait_timeout(config.wait_timeout)
        .create_timeout(config.connect_timeout)
        .recycle_timeout(config.recycle_timeout)
        .runtime(Runtime::Tokio1)
        .pre_recycle(Hook::sync_fn(move |_, metrics| {
            match expiry.expired(metrics) {
                true => Err(HookError::Message("the connection expired".into())),
                false => Ok(()),
            }
        }))
        .build()
        .expect("a pool with a runtime always builds");
    // Outside a runtime (a set built before one starts), expired
    // connections are still closed when next taken, by the hook above.
    if expiry.is_set()
        && let Ok(runtime) = tokio::runtime::Handle::try_current()
    {
        runtime.spawn(sweep(pool.clone(), expiry));
    }
    Ok((pool, canceller))
}

/// When a pooled connection is closed instead of reused.
#[derive(Clone, Copy)]
struct Expiry {
    max_lifetime: Option<Duration>,
    idle_timeout: Option<Duration>,
}

impl Expiry {
    fn is_set(self) -> bool {
        self.max_lifetime.is_some() || self.idle_timeout.is_some()
    }

    fn expired(self, metrics: &Metrics) -> bool {
        self.max_lifetime
            .is_some_and(|max| metrics.age() >= jittered(max, metrics))
            || self
                .idle_timeout
                .is_some_and(|idle| metrics.last_used() >= idle)
    }
}

/// `max` less up to a tenth, the same for the life of one connection and
/// spread over connections, so that connections opened together expire
/// apart.
fn jittered(max: Duration, metrics: &Metrics) -> Duration {
    let mut hasher = std::hash::DefaultHasher::new();
    metrics.created.hash(&mut hasher);
    let fraction = (hasher.finish() % 1000) as u32;
    max - max / 10 * fraction / 1000
}

/// Closes idle connections that expired, every few seconds, until the pool
/// is closed or dropped everywhere else.
async fn sweep(pool: Pool<AsyncPgConnection>, expiry: Expiry) {
    let every = [expiry.max_lifetime, expiry.idle_timeout]
        .into_iter()
        .flatten()
        .min()
        .map_or(SWEEP_MAX, |shortest| {
            (shortest / 4).clamp(SWEEP_MIN, SWEEP_MAX)
        });
    let pool = pool.weak();
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else { return };
        if pool.is_closed() {
            return;
        }
        pool.retain(|_, metrics| !expiry.expired(&metrics));
    }
}

const SWEEP_MIN: Duration = Duration::from_millis(250);
const SWEEP_MAX: Duration = Duration::from_secs(5);

/// How one node's connections are opened.
pub(crate) struct Connector {
    /// Parsed settings, the one reading of the URL.
    config: tokio_postgres::Config,
    mode: SslMode,
    tls: Option<MakeRustlsConnect>,
    credentials: Option<Arc<dyn Credentials>>,
    node: String,
    /// How long logins refused during a password rotation are retried.
    budget: Duration,
    pooler: Pooler,
    /// Whether connections are opened on a followed stream (see the wire
    /// module).
    tapped: bool,
    /// What the servers of a pool's connections must be, and where what
    /// they said is kept; none for the background tasks' connections.
    role: Option<(Expect, Arc<Reported>)>,
}

/// How long refused logins are retried when connecting has no timeout.
const UNBOUNDED_BUDGET: Duration = Duration::from_secs(60);

impl Connector {
    /// Opens connections to the node `url` names. Their sessions start
    /// with `statement_timeout` and the time zone diesel-async sets, as
    /// startup options; behind a transaction-mode pooler, which refuses
    /// startup options, with neither: each call sets its timeout for its
    /// own transaction (see the session module).
    pub(crate) fn new(
        url: &DatabaseUrl,
        application_name: &str,
        statement_timeout: Option<Duration>,
        credentials: Option<&CredentialsProvider>,
        node: String,
        connect_timeout: Option<Duration>,
        pooler: Pooler,
    ) -> Result<Self, String> {
        let config = match pooler {
            Pooler::Transaction => url.connect_config(application_name, None, false),
            _ => url.connect_config(application_name, statement_timeout, true),
        };
        Ok(Self {
            config,
            mode: url.tls.mode(),
            tls: url.tls.client_config()?.map(MakeRustlsConnect::new),
            credentials: credentials.map(|provider| Arc::clone(&provider.0)),
            node,
            budget: connect_timeout.unwrap_or(UNBOUNDED_BUDGET),
            pooler,
            tapped: false,
            role: None,
        })
    }
}

fn setup(connector: Connector) -> SetupCallback<AsyncPgConnection> {
    let connector = Arc::new(connector);
    Box::new(move |_label| {
        let connector = Arc::clone(&connector);
        Box::pin(async move {
            let stopwatch = Stopwatch::start();
            let opened = connector.open_followed().await;
            opened
                .map(|(mut conn, tap)| {
                    metrics::connection_created(&connector.node, stopwatch.elapsed());
                    Watch::install(&mut conn, tap);
                    conn
                })
                .map_err(|e| {
                    ConnectionError::BadConnection(format!("sslmode={}: {e}", connector.mode))
                })
        })
    })
}

impl Connector {
    /// One connection. With a credentials provider, a login the server
    /// refuses (SQLSTATE 28P01 or 28000) is asked for again, skipping any
    /// cache, and tried with backoff within the connect budget: during a
    /// password rotation the provider may lag the server by a while.
    pub(crate) async fn open(&self) -> Result<AsyncPgConnection, String> {
        self.open_followed().await.map(|(conn, _)| conn)
    }

    /// One connection, with what follows its wire when it is followed.
    async fn open_followed(&self) -> Result<(AsyncPgConnection, Option<Arc<Tap>>), String> {
        let role = Role {
            expected: self
                .role
                .as_ref()
                .map(|(expect, reported)| (*expect, &**reported)),
            node: &self.node,
        };
        let connect = async |config: &tokio_postgres::Config| {
            if self.tapped {
                return followed(config, self.mode, self.tls.clone(), role).await;
            }
            connect(config, self.mode, self.tls.clone(), self.pooler, role)
                .await
                .map(|conn| (conn, None))
        };
        let Some(provider) = &self.credentials else {
            return connect(&self.config).await.map_err(|e| e.message);
        };
        let started = Instant::now();
        let mut refresh = false;
        let mut wait = Duration::from_millis(100);
        loop {
            let login = provider
                .login(&self.node, refresh)
                .await
                .map_err(|e| error_chain(&e))?;
            let mut config = self.config.clone();
            config.user(&login.user).password(login.password.expose());
            match connect(&config).await {
                Ok(conn) => {
                    if refresh {
                        tracing::info!(node = %self.node, "connected with refreshed credentials");
                    }
                    return Ok(conn);
                }
                Err(failure) if failure.refused_login && started.elapsed() + wait < self.budget => {
                    tracing::warn!(
                        node = %self.node,
                        user = %login.user,
                        "login refused; asking for fresh credentials"
                    );
                    if refresh {
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(2));
                    }
                    refresh = true;
                }
                Err(failure) => return Err(failure.message),
            }
        }
    }
}

/// One connection on a socket the library opens and a stream it follows
/// (see the wire module), encrypted as `mode` asks, driven by a task of
/// the library's. What the set-up statements answered is forgotten.
async fn followed(
    config: &tokio_postgres::Config,
    mode: SslMode,
    tls: Option<MakeRustlsConnect>,
    role: Role<'_>,
) -> Result<(AsyncPgConnection, Option<Arc<Tap>>), ConnectFailure> {
    let Some(tls) = tls.filter(|_| mode != SslMode::Disable) else {
        return followed_with(config, WireSslMode::Disable, tokio_postgres::NoTls, role).await;
    };
    let dial = Dial::of(config);
    let host = dial.host();
    let encrypted = async |wire| {
        let mut make = tls.clone();
        let connect = MakeTlsConnect::<Socket>::make_tls_connect(&mut make, host)
            .unwrap_or_else(|never| match never {});
        followed_with(config, wire, FollowTls(connect), role).await
    };
    match mode {
        // Plaintext first; TLS when the server refuses it.
        SslMode::Allow => {
            match followed_with(config, WireSslMode::Disable, tokio_postgres::NoTls, role).await {
                Err(failure) if failure.refused_by_server => encrypted(WireSslMode::Require).await,
                opened => opened,
            }
        }
        SslMode::Prefer => encrypted(WireSslMode::Prefer).await,
        _ => encrypted(WireSslMode::Require).await,
    }
}

async fn followed_with<T>(
    config: &tokio_postgres::Config,
    wire: WireSslMode,
    tls: T,
    role: Role<'_>,
) -> Result<(AsyncPgConnection, Option<Arc<Tap>>), ConnectFailure>
where
    T: TlsConnect<Tapped<Socket>>,
    T::Stream: Send + 'static,
{
    let socket = Dial::of(config).open().await.map_err(|e| ConnectFailure {
        message: format!("error connecting to server: {e}"),
        refused_login: false,
        refused_by_server: false,
    })?;
    let tap = Arc::new(Tap::default());
    let mut config = config.clone();
    config.ssl_mode(wire);
    let (client, mut connection) = config
        .connect_raw(Tapped::new(socket, Arc::clone(&tap)), tls)
        .await
        .map_err(|e| ConnectFailure::of(&e))?;
    role.check(&client, &mut connection)
        .await
        .map_err(ConnectFailure::role)?;
    tokio::spawn(async move {
        // The client sees the same end: its requests fail once the
        // connection has, and the pool discards it.
        if let Err(error) = connection.await {
            tracing::debug!(error = %error_chain(&error), "a replica connection ended");
        }
    });
    let conn = AsyncPgConnection::try_from(client)
        .await
        .map_err(|e| ConnectFailure::setup(&e))?;
    tap.take();
    Ok((conn, Some(tap)))
}

/// TLS over a followed socket: once the server agrees to encrypt, the
/// encrypted stream is followed in the socket's place, by the same tap.
struct FollowTls<T>(T);

impl<T> TlsConnect<Tapped<Socket>> for FollowTls<T>
where
    T: TlsConnect<Socket> + Send + 'static,
    T::Future: Send,
{
    type Stream = Tapped<T::Stream>;
    type Error = T::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Stream, T::Error>> + Send>>;

    fn connect(self, stream: Tapped<Socket>) -> Self::Future {
        let (socket, tap) = stream.into_parts();
        let handshake = self.0.connect(socket);
        Box::pin(async move { Ok(Tapped::new(handshake.await?, tap)) })
    }
}

/// Why a connection could not be opened, and whether the server refused
/// the login itself.
struct ConnectFailure {
    message: String,
    refused_login: bool,
    /// The server answered with an error (so `allow` tries TLS).
    refused_by_server: bool,
}

impl ConnectFailure {
    fn of(error: &tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState;

        Self {
            message: error_chain(error),
            refused_login: matches!(
                error.code(),
                Some(&SqlState::INVALID_PASSWORD | &SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
            ),
            refused_by_server: error.as_db_error().is_some(),
        }
    }

    fn role(why: String) -> Self {
        Self {
            message: why,
            refused_login: false,
            refused_by_server: false,
        }
    }

    fn setup(error: &ConnectionError) -> Self {
        Self {
            message: error_chain(error),
            refused_login: false,
            refused_by_server: false,
        }
    }
}

/// One connection, encrypted as `mode` asks (see the tls module).
async fn connect(
    config: &tokio_postgres::Config,
    mode: SslMode,
    tls: Option<MakeRustlsConnect>,
    pooler: Pooler,
    role: Role<'_>,
) -> Result<AsyncPgConnection, ConnectFailure> {
    let Some(tls) = tls.filter(|_| mode != SslMode::Disable) else {
        return plain(config, pooler, role).await.map_err(|e| e.failure());
    };
    let encrypted = |wire| {
        let mut config = config.clone();
        config.ssl_mode(wire);
        async move {
            let (client, mut connection) = config
                .connect(tls)
                .await
                .map_err(|e| ConnectFailure::of(&e))?;
            role.check(&client, &mut connection)
                .await
                .map_err(ConnectFailure::role)?;
            adopt(client, connection, pooler)
                .await
                .map_err(|e| ConnectFailure::setup(&e))
        }
    };
    match mode {
        // Plaintext first; TLS when the server refuses it.
        SslMode::Allow => match plain(config, pooler, role).await {
            Ok(conn) => Ok(conn),
            Err(Refused::Server(_)) => encrypted(WireSslMode::Require).await,
            Err(e) => Err(e.failure()),
        },
        SslMode::Prefer => encrypted(WireSslMode::Prefer).await,
        _ => encrypted(WireSslMode::Require).await,
    }
}

/// Why a plaintext connection failed: the server said no (so `allow`
/// tries TLS), or anything else.
enum Refused {
    Server(tokio_postgres::Error),
    Other(tokio_postgres::Error),
    Setup(ConnectionError),
    /// Its server is not what the pool needs.
    Role(String),
}

impl Refused {
    fn failure(self) -> ConnectFailure {
        match self {
            Self::Server(e) | Self::Other(e) => ConnectFailure::of(&e),
            Self::Setup(e) => ConnectFailure::setup(&e),
            Self::Role(why) => ConnectFailure::role(why),
        }
    }
}

async fn plain(
    config: &tokio_postgres::Config,
    pooler: Pooler,
    role: Role<'_>,
) -> Result<AsyncPgConnection, Refused> {
    let mut config = config.clone();
    config.ssl_mode(WireSslMode::Disable);
    let (client, mut connection) = config.connect(tokio_postgres::NoTls).await.map_err(|e| {
        if e.as_db_error().is_some() {
            Refused::Server(e)
        } else {
            Refused::Other(e)
        }
    })?;
    role.check(&client, &mut connection)
        .await
        .map_err(Refused::Role)?;
    adopt(client, connection, pooler)
        .await
        .map_err(Refused::Setup)
}

/// diesel-async's connection over tokio-postgres' client and connection.
///
/// Behind a transaction-mode pooler, diesel-async's set-up statements (its
/// session's time zone and client encoding, each prepared under a name,
/// run and closed: statements the pooler tracks) run inside one
/// transaction of ours, so that the pooler gives all of them one server
/// connection; and the connection keeps no statement prepared past the
/// use that prepared it, so none outlives the transaction it ran in. The
/// `BEGIN` and `COMMIT` replies are read: a failure fails the connect.
async fn adopt<S>(
    client: tokio_postgres::Client,
    mut connection: tokio_postgres::Connection<tokio_postgres::Socket, S>,
    pooler: Pooler,
) -> Result<AsyncPgConnection, ConnectionError>
where
    S: tokio_postgres::tls::TlsStream + Unpin + Send + 'static,
{
    if !pooler.is_transaction() {
        return AsyncPgConnection::try_from_client_and_connection(client, connection).await;
    }
    // The connection is driven here until the `BEGIN` is answered, then
    // handed to diesel-async, which drives it from then on.
    driven(client.batch_execute("BEGIN"), &mut connection)
        .await
        .map_err(ConnectionError::BadConnection)?;
    let mut conn = AsyncPgConnection::try_from_client_and_connection(client, connection).await?;
    SimpleAsyncConnection::batch_execute(&mut conn, "COMMIT")
        .await
        .map_err(ConnectionError::CouldntSetupConfiguration)?;
    conn.set_prepared_statement_cache_size(CacheSize::Disabled);
    Ok(conn)
}

/// What a pool needs its connections' server to be, and where to keep what
/// the server said; `expected` is `None` for the background tasks'
/// connections, which take any server.
#[derive(Clone, Copy)]
struct Role<'a> {
    expected: Option<(Expect, &'a Reported)>,
    node: &'a str,
}

impl Role<'_> {
    /// Judges a new connection by its server's startup report, asking the
    /// server where it did not say (see the server_role module); `Err`
    /// says why the connection may not be used.
    async fn check<C>(
        self,
        client: &tokio_postgres::Client,
        connection: &mut C,
    ) -> Result<(), String>
    where
        C: Parameters + Future<Output = Result<(), tokio_postgres::Error>> + Unpin,
    {
        let Some((expect, reported)) = self.expected else {
            return Ok(());
        };
        let verdict = match reported.judge(expect, self.node, |name| connection.parameter(name)) {
            Verdict::Ask(question) => {
                let answer = driven(client.simple_query(question.sql()), connection).await?;
                question.verdict(answer.iter().find_map(|message| match message {
                    tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0),
                    _ => None,
                }))
            }
            verdict => verdict,
        };
        match verdict {
            Verdict::Refused(why) => Err(format!("{}: {why}", self.node)),
            _ => Ok(()),
        }
    }
}

/// A connection's startup report.
trait Parameters {
    fn parameter(&self, name: &str) -> Option<&str>;
}

impl<S, T> Parameters for tokio_postgres::Connection<S, T>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    fn parameter(&self, name: &str) -> Option<&str> {
        tokio_postgres::Connection::parameter(self, name)
    }
}

/// Awaits `request` while driving `connection`, before diesel-async drives
/// it (or the library's own task does).
async fn driven<R>(
    request: impl Future<Output = Result<R, tokio_postgres::Error>>,
    connection: &mut (impl Future<Output = Result<(), tokio_postgres::Error>> + Unpin),
) -> Result<R, String> {
    let mut request = std::pin::pin!(request);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(answered) = request.as_mut().poll(cx) {
            return Poll::Ready(answered.map_err(|e| error_chain(&e)));
        }
        match Pin::new(&mut *connection).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(Err("the connection closed".to_owned())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(error_chain(&e))),
        }
    })
    .await
}
