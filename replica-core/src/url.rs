//! Connection settings of one node that never show their password.
//!
//! One parser reads a setting, tokio-postgres', and what it reads is what
//! connections use: the library never keeps a second reading of the same
//! string. URLs that two readers could take differently (a raw `/`, `?`,
//! `#` or `@` in the credentials) are refused.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use tokio_postgres::config::Host;

use crate::credentials::Login;
use crate::tls::{self, TlsSettings};

/// Where and as whom to connect to one node: host, port, user, password,
/// database and connection options, parsed from a `postgres://` URL, a
/// libpq `key=value` string, or a Secrets Manager secret.
///
/// Its `Display` and `Debug` forms show `postgres://user:***@host:port/database`
/// and nothing else, so a `DatabaseUrl` can be logged or put in an error
/// message as it is: the password, wherever it was given, never shows.
#[derive(Clone)]
pub struct DatabaseUrl {
    config: tokio_postgres::Config,
    pub(crate) tls: TlsSettings,
}

/// Why a setting is not a usable connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UrlProblem {
    /// tokio-postgres' own message, which quotes option names, never values.
    Syntax(String),
    Scheme(String),
    Tls(String),
    Ambiguous(&'static str),
    NoHost,
    Hosts(usize),
    Address(&'static str),
}

impl fmt::Display for UrlProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax(e) => write!(
                f,
                "{e}; expected postgres://user:password@host:port/database or host=.. user=.. dbname=.."
            ),
            Self::Scheme(s) => write!(
                f,
                "scheme `{s}` is not supported; expected `postgres` or `postgresql`"
            ),
            Self::Tls(problem) => f.write_str(problem),
            Self::Ambiguous(what) => write!(
                f,
                "{what}, so the URL can be read in two ways; percent-encode `/` as %2F, `?` as %3F, \
                 `#` as %23 and `@` as %40 in the user name and password"
            ),
            Self::NoHost => f.write_str("it names no host"),
            Self::Hosts(n) => write!(
                f,
                "it names {n} hosts; give one host per URL and list each replica on its own"
            ),
            Self::Address(problem) => f.write_str(problem),
        }
    }
}

/// How many characters of any one value a problem quotes at the most.
const MAX_QUOTED: usize = 24;

/// The libpq keys that may follow a password in a `key=value` string: where
/// one starts, the password (which may hold an unquoted space) has ended.
const LIBPQ_KEYS: [&str; 26] = [
    "host",
    "hostaddr",
    "port",
    "user",
    "dbname",
    "options",
    "application_name",
    "fallback_application_name",
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "target_session_attrs",
    "load_balance_hosts",
    "channel_binding",
    "sslmode",
    "sslnegotiation",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslpassword",
    "passfile",
    "require_auth",
    "gssencmode",
];

impl UrlProblem {
    /// The problem with every value it quotes (between backticks) cut to
    /// [`MAX_QUOTED`] characters, and with any quoted value that comes from
    /// where `input` holds a password (a URL's user info, a `password`
    /// parameter up to the next libpq key) replaced by `***`.
    fn quoting_safely(self, input: &str) -> Self {
        let guard = |text: String| guarded(&text, &password_parts(input));
        match self {
            Self::Syntax(text) => Self::Syntax(guard(text)),
            Self::Tls(text) => Self::Tls(guard(text)),
            Self::Scheme(scheme) => Self::Scheme(cut(&scheme)),
            other => other,
        }
    }
}

/// `text` with each backtick-quoted part cut, or hidden when it is part of
/// a password.
fn guarded(text: &str, passwords: &[&str]) -> String {
    let mut out = String::new();
    for (i, part) in text.split('`').enumerate() {
        if i > 0 {
            out.push('`');
        }
        let quoted = i % 2 == 1;
        if quoted && !part.is_empty() && passwords.iter().any(|p| p.contains(part)) {
            out.push_str("***");
        } else if quoted {
            out.push_str(&cut(part));
        } else {
            out.push_str(part);
        }
    }
    out
}

/// At most [`MAX_QUOTED`] characters of `value`, with `…` when cut.
fn cut(value: &str) -> String {
    match value.char_indices().nth(MAX_QUOTED) {
        Some((at, _)) => format!("{}…", &value[..at]),
        None => value.to_owned(),
    }
}

/// The parts of `input` that may hold a password: a URL's user info, and
/// each `password` parameter's value (in a URL's query up to the next `&`;
/// in a `key=value` string up to the next libpq key, since a password may
/// hold an unquoted space, or to the end).
fn password_parts(input: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let lower = input.to_ascii_lowercase();
    if let Some((_, rest)) = input.split_once("://") {
        let authority = rest.split(['/', '?']).next().unwrap_or(rest);
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            parts.push(userinfo);
        }
    }
    let url = input.contains("://");
    let mut from = 0;
    while let Some(found) = lower[from..].find("password") {
        let start = from + found + "password".len();
        from = start;
        let value = input[start..].trim_start();
        let Some(value) = value.strip_prefix('=') else {
            continue;
        };
        let offset = input.len() - value.len();
        let end = if url {
            value.find('&').unwrap_or(value.len())
        } else {
            next_key(value).unwrap_or(value.len())
        };
        parts.push(&input[offset..offset + end]);
    }
    parts
}

/// Where the next ` key=` of a libpq key starts in `value`.
fn next_key(value: &str) -> Option<usize> {
    value
        .char_indices()
        .filter(|(_, c)| c.is_whitespace())
        .find(|(at, _)| {
            let rest = value[*at..].trim_start();
            LIBPQ_KEYS.iter().any(|key| {
                rest.strip_prefix(key)
                    .is_some_and(|after| after.trim_start().starts_with('='))
            })
        })
        .map(|(at, _)| at)
}

/// What a percent-encoded user name or database name keeps as it is.
const COMPONENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b':')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'@')
    .add(b'[')
    .add(b']')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// The most PostgreSQL's `statement_timeout` takes, in milliseconds.
pub(crate) const MAX_TIMEOUT_MS: u64 = i32::MAX as u64;

impl DatabaseUrl {
    /// Parses a `postgres://` / `postgresql://` URL or a libpq `key=value`
    /// string and checks it names exactly one host.
    pub(crate) fn parse(input: &str) -> Result<Self, UrlProblem> {
        let input = input.trim();
        Self::read(input).map_err(|problem| problem.quoting_safely(input))
    }

    fn read(input: &str) -> Result<Self, UrlProblem> {
        if let Some((scheme, rest)) = input.split_once("://") {
            if !matches!(scheme, "postgres" | "postgresql") {
                return Err(UrlProblem::Scheme(scheme.to_owned()));
            }
            check_unambiguous(rest)?;
        }
        // TLS is ours: tokio-postgres knows only some of libpq's modes.
        let (input, tls) = tls::extract(input).map_err(UrlProblem::Tls)?;
        let config = tokio_postgres::Config::from_str(&input).map_err(|e| {
            UrlProblem::Syntax(match std::error::Error::source(&e) {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            })
        })?;
        Self::check(config, tls)
    }

    fn check(config: tokio_postgres::Config, tls: TlsSettings) -> Result<Self, UrlProblem> {
        match config.get_hosts() {
            [] => return Err(UrlProblem::NoHost),
            [Host::Tcp(host)] if host.is_empty() => return Err(UrlProblem::NoHost),
            [Host::Tcp(host)] => check_ipv6(host)?,
            [_] => {}
            hosts => return Err(UrlProblem::Hosts(hosts.len())),
        }
        if config.get_ports().len() > 1 {
            return Err(UrlProblem::Hosts(config.get_ports().len()));
        }
        Ok(Self { config, tls })
    }

    /// Builds the settings from parts, as found in a Secrets Manager secret.
    /// Every byte of every part is kept as it is: nothing is decoded.
    pub(crate) fn from_parts(
        user: &str,
        password: &str,
        host: &str,
        port: u16,
        dbname: &str,
    ) -> Result<Self, UrlProblem> {
        let (host, _) = split_address(host)?;
        let mut config = tokio_postgres::Config::new();
        config.user(user).host(host).port(port).dbname(dbname);
        if !password.is_empty() {
            config.password(password);
        }
        Self::check(config, TlsSettings::default())
    }

    /// The same settings pointing at another `host[:port]`; credentials,
    /// database and options are kept. Without a port, this one's is kept.
    pub(crate) fn with_address(&self, address: &str) -> Result<Self, UrlProblem> {
        let (host, port) = split_address(address)?;
        let mut config = without_address(&self.config);
        config.host(host).port(port.unwrap_or_else(|| self.port()));
        Self::check(config, self.tls.clone())
    }

    /// The server's port, 5432 when none is given.
    pub(crate) fn port(&self) -> u16 {
        self.config.get_ports().first().copied().unwrap_or(5432)
    }

    /// The server's host name, address or socket directory.
    pub(crate) fn host(&self) -> String {
        match self.config.get_hosts().first() {
            Some(Host::Tcp(host)) => host.clone(),
            #[cfg(unix)]
            Some(Host::Unix(path)) => path.display().to_string(),
            None => String::new(),
        }
    }

    /// `host:port` of the server, the port defaulting to 5432.
    pub fn address(&self) -> String {
        let port = self.port();
        match self.config.get_hosts().first() {
            Some(Host::Tcp(host)) if host.contains(':') => format!("[{host}]:{port}"),
            Some(Host::Tcp(host)) => format!("{host}:{port}"),
            #[cfg(unix)]
            Some(Host::Unix(path)) => format!("{}:{port}", path.display()),
            None => format!(":{port}"),
        }
    }

    /// The database name, empty when the settings name none (the server
    /// then takes the user name).
    pub fn database(&self) -> &str {
        self.config.get_dbname().unwrap_or_default()
    }

    /// The password it gives, empty when none.
    pub(crate) fn password(&self) -> &str {
        self.config
            .get_password()
            .and_then(|password| std::str::from_utf8(password).ok())
            .unwrap_or_default()
    }

    /// The same settings with `login`'s user and password.
    pub(crate) fn with_login(&self, login: &Login) -> Self {
        let mut config = self.config.clone();
        config.user(&login.user).password(login.password.expose());
        Self {
            config,
            tls: self.tls.clone(),
        }
    }

    /// Whether it gives startup `options`, which a transaction-mode pooler
    /// refuses.
    pub(crate) fn has_options(&self) -> bool {
        self.config
            .get_options()
            .is_some_and(|options| !options.trim().is_empty())
    }

    /// The identity of the server and database these settings reach, used
    /// to find duplicates.
    pub(crate) fn target(&self) -> (String, &str) {
        // One spelling per address: `DB` and `db`, `[::1]` and
        // `[0:0:0:0:0:0:0:1]`, `db` and `db:5432` are one target.
        let address = match self.config.get_hosts().first() {
            Some(Host::Tcp(host)) => match host.parse::<std::net::IpAddr>() {
                Ok(ip) => std::net::SocketAddr::new(ip, self.port()).to_string(),
                Err(_) => self.address(),
            },
            _ => self.address(),
        };
        (address.to_ascii_lowercase(), self.database())
    }

    /// The settings connections are opened with, password included. Never
    /// log them. `application_name` is added unless set; the statement
    /// timeout and (with `time_zone`) the UTC time zone are appended to any
    /// `options` given, so that they win over what the options say and
    /// survive `RESET ALL`. With neither, no `options` are added.
    pub(crate) fn connect_config(
        &self,
        application_name: &str,
        statement_timeout: Option<Duration>,
        time_zone: bool,
    ) -> tokio_postgres::Config {
        let mut config = self.config.clone();
        if config.get_application_name().is_none() && !application_name.is_empty() {
            config.application_name(application_name);
        }
        let mut options = config.get_options().unwrap_or_default().to_owned();
        if let Some(timeout) = statement_timeout {
            options.push_str(&format!(" -c statement_timeout={}", timeout.as_millis()));
        }
        // diesel-async sets this on each new connection; as a startup option
        // it is also what `RESET ALL` goes back to.
        if time_zone {
            options.push_str(" -c TimeZone=UTC");
        }
        if !options.trim().is_empty() {
            config.options(options.trim_start());
        }
        config
    }
}

/// Everything of `config` but where it connects: tokio-postgres' setters
/// append to the host, address and port lists, which cannot be cleared.
fn without_address(config: &tokio_postgres::Config) -> tokio_postgres::Config {
    let mut out = tokio_postgres::Config::new();
    if let Some(user) = config.get_user() {
        out.user(user);
    }
    if let Some(password) = config.get_password() {
        out.password(password);
    }
    if let Some(dbname) = config.get_dbname() {
        out.dbname(dbname);
    }
    if let Some(options) = config.get_options() {
        out.options(options);
    }
    if let Some(name) = config.get_application_name() {
        out.application_name(name);
    }
    if let Some(timeout) = config.get_connect_timeout() {
        out.connect_timeout(*timeout);
    }
    if let Some(timeout) = config.get_tcp_user_timeout() {
        out.tcp_user_timeout(*timeout);
    }
    if let Some(interval) = config.get_keepalives_interval() {
        out.keepalives_interval(interval);
    }
    if let Some(retries) = config.get_keepalives_retries() {
        out.keepalives_retries(retries);
    }
    out.ssl_mode(config.get_ssl_mode())
        .ssl_negotiation(config.get_ssl_negotiation())
        .keepalives(config.get_keepalives())
        .keepalives_idle(config.get_keepalives_idle())
        .target_session_attrs(config.get_target_session_attrs())
        .channel_binding(config.get_channel_binding())
        .load_balance_hosts(config.get_load_balance_hosts());
    out
}

/// Refuses a URL whose credentials a URL parser and tokio-postgres would
/// split differently: the credentials end at the first `@`, so they must
/// not hold `/`, `?` or `#`, and the host part must not hold `@`.
fn check_unambiguous(rest: &str) -> Result<(), UrlProblem> {
    let Some(at) = rest.find('@') else {
        return Ok(());
    };
    if rest[..at].contains(['/', '?', '#']) {
        return Err(UrlProblem::Ambiguous(
            "the part before the first `@` holds `/`, `?` or `#`",
        ));
    }
    let after = &rest[at + 1..];
    let host_part = &after[..after.find(['/', '?']).unwrap_or(after.len())];
    if host_part.contains('@') {
        return Err(UrlProblem::Ambiguous("the credentials hold a second `@`"));
    }
    Ok(())
}

/// A host with a `:` is an IPv6 address (no host name holds one), which
/// must then be a valid one: else it would pass here and fail at every
/// connect with a lookup error.
fn check_ipv6(host: &str) -> Result<(), UrlProblem> {
    if host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err() {
        return Err(UrlProblem::Address(
            "a host with `:` is an IPv6 address, and this one is not valid: write one such as [::1] or [2001:db8::5]",
        ));
    }
    Ok(())
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`; an absolute path is
/// a unix socket directory, as libpq reads a host, and takes no port.
fn split_address(address: &str) -> Result<(&str, Option<u16>), UrlProblem> {
    let address = address.trim();
    if address.contains('@') {
        return Err(UrlProblem::Address(
            "a replica address takes no user name or password: replicas use the writer's credentials",
        ));
    }
    if address.starts_with('/') {
        if address.contains(|c: char| c.is_whitespace() || matches!(c, ',' | '?' | ':')) {
            return Err(UrlProblem::Address(
                "a socket directory holds no spaces, commas, `?` or `:` (its port is the writer's)",
            ));
        }
        return Ok((address, None));
    }
    if address.contains(['/', '?']) {
        return Err(UrlProblem::Address(
            "a replica address takes no database or options: replicas use the writer's",
        ));
    }
    let (host, port) = match address.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, "")) => (host, None),
            Some((host, rest)) => match rest.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => {
                    return Err(UrlProblem::Address(
                        "text follows the `]` of an IPv6 address",
                    ));
                }
            },
            None => return Err(UrlProblem::Address("an IPv6 address lacks its closing `]`")),
        },
        None => match address.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err(UrlProblem::Address(
                    "write an IPv6 address in brackets: [::1]:5432",
                ));
            }
            Some((host, port)) => (host, Some(port)),
            None => (address, None),
        },
    };
    if host.is_empty() {
        return Err(UrlProblem::Address("it names no host"));
    }
    check_ipv6(host)?;
    if host.contains(|c: char| c.is_whitespace() || c == ',') {
        return Err(UrlProblem::Address("a host name holds no spaces or commas"));
    }
    let port = match port {
        None => None,
        Some(port) => match port.parse::<u16>() {
            Ok(port) if port > 0 => Some(port),
            _ => {
                return Err(UrlProblem::Address(
                    "the port is not a number from 1 to 65535",
                ));
            }
        },
    };
    Ok((host, port))
}

impl PartialEq for DatabaseUrl {
    fn eq(&self, other: &Self) -> bool {
        self.config == other.config && self.tls == other.tls
    }
}

impl Eq for DatabaseUrl {}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("postgres://")?;
        if let Some(user) = self.config.get_user() {
            write!(f, "{}", utf8_percent_encode(user, COMPONENT))?;
            if self.config.get_password().is_some() {
                f.write_str(":***")?;
            }
            f.write_str("@")?;
        }
        write!(f, "{}", self.address())?;
        if let Some(db) = self.config.get_dbname() {
            write!(f, "/{}", utf8_percent_encode(db, COMPONENT))?;
        }
        match self.tls.query() {
            query if query.is_empty() => Ok(()),
            query => write!(f, "?{query}"),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// Hides the credentials of a replica address that did not parse, so that
/// it can be quoted in an error: everything before the last `@`.
pub(crate) fn redact_address(input: &str) -> String {
    let input = input.trim();
    match input.rfind('@') {
        Some(at) => format!("***{}", &input[at..]),
        None => input.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn password(url: &DatabaseUrl) -> &[u8] {
        url.config.get_password().unwrap_or_default()
    }

    #[test]
    fn display_and_debug_show_no_password_wherever_it_was_given() {
        for input in [
            "postgres://app:hunter2@db:5432/main",
            "postgres://app@db:5432/main?password=hunter2",
            "host=db port=5432 user=app password=hunter2 dbname=main",
            "postgres://app:hun%2Fter2@db:5432/main",
        ] {
            let url = DatabaseUrl::parse(input).unwrap();
            let shown = format!("{url} {url:?}");
            assert!(!shown.contains("hunter2"), "{input}: {shown}");
            assert!(!shown.contains("hun"), "{input}: {shown}");
            assert!(shown.contains("db:5432"), "{input}: {shown}");
        }
        let url = DatabaseUrl::parse("postgres://app:hunter2@db:5432/main").unwrap();
        assert_eq!(url.to_string(), "postgres://app:***@db:5432/main");
    }

    #[test]
    fn a_url_is_read_as_tokio_postgres_reads_it() {
        let url = DatabaseUrl::parse("postgres://u:p%41ss%2F@h:6500/db").unwrap();
        assert_eq!(password(&url), b"pAss/");
        assert_eq!(url.address(), "h:6500");
        assert_eq!(url.database(), "db");
    }

    #[test]
    fn urls_two_readers_could_split_differently_are_refused() {
        for input in [
            "postgres://u:4711/Zq@host:6500/db",
            "postgres://u:a?b@host/db",
            "postgres://u:a#b@host/db",
            "postgres://u:p@ss@host/db",
            "postgres://host/db?application_name=a@b",
        ] {
            let problem = DatabaseUrl::parse(input).unwrap_err();
            assert!(matches!(problem, UrlProblem::Ambiguous(_)), "{input}");
            let message = problem.to_string();
            assert!(message.contains("percent-encode"), "{message}");
            assert!(
                !message.contains("4711") && !message.contains("Zq"),
                "{message}"
            );
        }
    }

    #[test]
    fn secrets_keep_every_byte_of_the_password() {
        let raw = "p%41ss/?#@:[]&= 'x\"\\é";
        let url = DatabaseUrl::from_parts("app", raw, "db.example", 5432, "main").unwrap();
        assert_eq!(password(&url), raw.as_bytes());
        let replica = url.with_address("reader-1:5433").unwrap();
        assert_eq!(password(&replica), raw.as_bytes());
        assert_eq!(replica.address(), "reader-1:5433");
        assert!(!format!("{url} {replica:?}").contains("p%41ss"));
    }

    #[test]
    fn with_address_keeps_everything_but_the_address() {
        let writer = DatabaseUrl::parse(
            "postgres://app:pw@writer:6543/main?sslmode=disable&hostaddr=10.0.0.1",
        )
        .unwrap();
        let replica = writer.with_address("reader-1").unwrap();
        assert_eq!(replica.address(), "reader-1:6543");
        assert_eq!(replica.database(), "main");
        assert_eq!(password(&replica), b"pw");
        assert_eq!(replica.tls.mode(), crate::tls::SslMode::Disable);
        assert!(
            replica.config.get_hostaddrs().is_empty(),
            "the writer's address stays behind"
        );
        assert_eq!(
            writer.with_address("[::1]:7000").unwrap().address(),
            "[::1]:7000"
        );
    }

    #[test]
    fn an_absolute_path_is_a_socket_directory() {
        let writer = DatabaseUrl::parse("postgres://app:pw@writer:6543/main").unwrap();
        let replica = writer.with_address("/run/aurora/app-db-2").unwrap();
        assert_eq!(replica.host(), "/run/aurora/app-db-2");
        assert_eq!(replica.address(), "/run/aurora/app-db-2:6543");
        assert!(matches!(
            replica.config.get_hosts(),
            [Host::Unix(path)] if path == std::path::Path::new("/run/aurora/app-db-2")
        ));
    }

    #[test]
    fn bad_replica_addresses_get_one_reason() {
        for (input, reason) in [
            (":5433", "it names no host"),
            ("app@host", "takes no user name or password"),
            ("host/db", "takes no database"),
            ("host:0", "not a number from 1 to 65535"),
            ("host:x", "not a number from 1 to 65535"),
            ("::1", "in brackets"),
            ("a b", "no spaces"),
            ("/run/pg:5433", "its port is the writer's"),
            ("/run/my pg", "no spaces"),
        ] {
            let problem = DatabaseUrl::parse("postgres://app@w/db")
                .unwrap()
                .with_address(input)
                .unwrap_err()
                .to_string();
            assert!(problem.contains(reason), "{input}: {problem}");
        }
    }

    #[test]
    fn connect_settings_merge_options() {
        let url = DatabaseUrl::parse("postgres://h/db?options=-c%20work_mem%3D64MB").unwrap();
        let config = url.connect_config("svc", Some(Duration::from_secs(2)), true);
        assert_eq!(
            config.get_options(),
            Some("-c work_mem=64MB -c statement_timeout=2000 -c TimeZone=UTC")
        );
        assert_eq!(config.get_application_name(), Some("svc"));
        let url = DatabaseUrl::parse("postgres://h/db?application_name=mine").unwrap();
        let config = url.connect_config("svc", None, true);
        assert_eq!(config.get_application_name(), Some("mine"));
        assert_eq!(config.get_options(), Some("-c TimeZone=UTC"));
    }

    #[test]
    fn one_host_and_tls_parameters_of_every_form() {
        assert_eq!(
            DatabaseUrl::parse("postgres://a,b/db").unwrap_err(),
            UrlProblem::Hosts(2)
        );
        assert_eq!(
            DatabaseUrl::parse("postgres:///db").unwrap_err(),
            UrlProblem::NoHost
        );
        let url =
            DatabaseUrl::parse("postgres://h/db?sslmode=verify-full&sslrootcert=/ca.pem").unwrap();
        assert_eq!(
            url.to_string(),
            "postgres://h:5432/db?sslmode=verify-full&sslrootcert=/ca.pem"
        );
        let url = DatabaseUrl::parse("host=h sslmode=require").unwrap();
        assert_eq!(url.tls.mode(), crate::tls::SslMode::Require);
        assert!(matches!(
            DatabaseUrl::parse("postgres://h/db?sslmode=maybe").unwrap_err(),
            UrlProblem::Tls(_)
        ));
        assert!(matches!(
            DatabaseUrl::parse("mysql://h/db").unwrap_err(),
            UrlProblem::Scheme(_)
        ));
    }

    #[test]
    fn redact_address_hides_userinfo() {
        assert_eq!(redact_address("u:p@ss@h:x"), "***@h:x");
        assert_eq!(redact_address("host"), "host");
    }
}
