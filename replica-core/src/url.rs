//! Database URLs that never show their password.

use std::fmt;

use url::Url;

/// A validated PostgreSQL connection URL.
///
/// Its `Display` and `Debug` forms replace the password with `***`, so a
/// `DatabaseUrl` can be logged or put in an error message as it is.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(Url);

/// Why a string is not a usable PostgreSQL URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UrlProblem {
    Syntax(url::ParseError),
    Scheme(String),
    NoHost,
    UnknownSslMode(String),
    UnsupportedSslMode(String),
}

impl fmt::Display for UrlProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax(e) => write!(
                f,
                "{e}; expected postgres://user:password@host:port/database"
            ),
            Self::Scheme(s) => write!(
                f,
                "scheme `{s}` is not supported; expected `postgres` or `postgresql`"
            ),
            Self::NoHost => f.write_str("it names no host"),
            Self::UnknownSslMode(m) => write!(
                f,
                "sslmode `{m}` is unknown; expected one of disable, allow, prefer, require, verify-ca, verify-full"
            ),
            Self::UnsupportedSslMode(m) => write!(
                f,
                "sslmode `{m}` needs TLS, which this version does not support yet; use disable or prefer"
            ),
        }
    }
}

const SSL_MODES: [&str; 6] = [
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];
const SUPPORTED_SSL_MODES: [&str; 2] = ["disable", "prefer"];

impl DatabaseUrl {
    /// Parses and checks a URL: `postgres` or `postgresql` scheme, a host,
    /// and a known `sslmode` if one is given.
    pub(crate) fn parse(input: &str) -> Result<Self, UrlProblem> {
        let url = Url::parse(input.trim()).map_err(UrlProblem::Syntax)?;
        Self::check(url)
    }

    fn check(url: Url) -> Result<Self, UrlProblem> {
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(UrlProblem::Scheme(url.scheme().to_owned()));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(UrlProblem::NoHost);
        }
        if let Some((_, mode)) = url.query_pairs().find(|(k, _)| k == "sslmode") {
            if !SSL_MODES.contains(&mode.as_ref()) {
                return Err(UrlProblem::UnknownSslMode(mode.into_owned()));
            }
            if !SUPPORTED_SSL_MODES.contains(&mode.as_ref()) {
                return Err(UrlProblem::UnsupportedSslMode(mode.into_owned()));
            }
        }
        Ok(Self(url))
    }

    /// Builds a URL from parts, as found in a Secrets Manager secret.
    pub(crate) fn from_parts(
        user: &str,
        password: &str,
        host: &str,
        port: u16,
        dbname: &str,
    ) -> Result<Self, UrlProblem> {
        let mut url = Url::parse("postgres://localhost").map_err(UrlProblem::Syntax)?;
        url.set_host(Some(host)).map_err(UrlProblem::Syntax)?;
        // These cannot fail on a URL that has a host.
        let _ = url.set_port(Some(port));
        let _ = url.set_username(user);
        let _ = url.set_password((!password.is_empty()).then_some(password));
        url.set_path(dbname);
        Self::check(url)
    }

    /// The same URL pointing at another `host[:port]`; credentials, database
    /// and options are kept. Without a port, this URL's port is kept.
    pub(crate) fn with_address(&self, address: &str) -> Result<Self, UrlProblem> {
        let parsed =
            Url::parse(&format!("postgres://{}", address.trim())).map_err(UrlProblem::Syntax)?;
        let host = match parsed.host_str() {
            Some(h)
                if !h.is_empty() && parsed.path().is_empty() && parsed.username().is_empty() =>
            {
                h
            }
            _ => return Err(UrlProblem::NoHost),
        };
        let mut url = self.0.clone();
        url.set_host(Some(host)).map_err(UrlProblem::Syntax)?;
        if let Some(port) = parsed.port() {
            let _ = url.set_port(Some(port));
        }
        Ok(Self(url))
    }

    /// `host:port` of the server, the port defaulting to 5432.
    pub fn address(&self) -> String {
        let port = self.0.port().unwrap_or(5432);
        match self.0.host() {
            Some(url::Host::Ipv6(ip)) => format!("[{ip}]:{port}"),
            Some(host) => format!("{host}:{port}"),
            None => format!(":{port}"),
        }
    }

    /// The database name, empty when the URL names none.
    pub fn database(&self) -> &str {
        self.0.path().trim_start_matches('/')
    }

    /// The identity of the server and database this URL reaches, used to
    /// find duplicates.
    pub(crate) fn target(&self) -> (String, &str) {
        (self.address().to_ascii_lowercase(), self.database())
    }

    /// The full URL, password included, for opening connections. Never log it.
    pub(crate) fn connect_string(
        &self,
        application_name: &str,
        statement_timeout: Option<std::time::Duration>,
    ) -> String {
        let mut url = self.0.clone();
        let has = |url: &Url, key: &str| url.query_pairs().any(|(k, _)| k == key);
        if !application_name.is_empty() && !has(&url, "application_name") {
            append_param(&mut url, "application_name", application_name);
        }
        if let Some(timeout) = statement_timeout.filter(|_| !has(&url, "options")) {
            let options = format!("-c statement_timeout={}", timeout.as_millis());
            append_param(&mut url, "options", &options);
        }
        url.into()
    }
}

/// Appends `key=value` percent-encoded with `%20` for spaces: the server
/// side (tokio-postgres) does not read `+` as a space, as form encoding has it.
fn append_param(url: &mut Url, key: &str, value: &str) {
    let encode = |s: &str| {
        url::form_urlencoded::byte_serialize(s.as_bytes())
            .collect::<String>()
            .replace('+', "%20")
    };
    let pair = format!("{}={}", encode(key), encode(value));
    let query = match url.query() {
        Some(query) if !query.is_empty() => format!("{query}&{pair}"),
        _ => pair,
    };
    url.set_query(Some(&query));
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.password().is_none() {
            return f.write_str(self.0.as_str());
        }
        let mut shown = self.0.clone();
        let _ = shown.set_password(Some("***"));
        f.write_str(shown.as_str())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// Hides the credentials of a string that did not parse as a URL, so that it
/// can be quoted in an error: everything between `://` and the last `@`.
pub(crate) fn redact_unparsed(input: &str) -> String {
    let input = input.trim();
    let start = input.find("://").map_or(0, |i| i + 3);
    match input[start..].rfind('@') {
        Some(at) => format!("{}***{}", &input[..start], &input[start + at..]),
        None => input.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_debug_hide_the_password() {
        let url = DatabaseUrl::parse("postgres://app:hunter2@db:5432/main").unwrap();
        assert_eq!(url.to_string(), "postgres://app:***@db:5432/main");
        assert!(!format!("{url:?}").contains("hunter2"));
    }

    #[test]
    fn address_defaults_the_port_and_brackets_ipv6() {
        let url = DatabaseUrl::parse("postgresql://app@[::1]/main").unwrap();
        assert_eq!(url.address(), "[::1]:5432");
    }

    #[test]
    fn with_address_keeps_credentials_database_and_options() {
        let writer =
            DatabaseUrl::parse("postgres://app:pw@writer:6543/main?sslmode=disable").unwrap();
        let replica = writer.with_address("reader-1").unwrap();
        assert_eq!(
            replica.connect_string("", None),
            "postgres://app:pw@reader-1:6543/main?sslmode=disable"
        );
        let replica = writer.with_address("reader-2:7000").unwrap();
        assert_eq!(replica.address(), "reader-2:7000");
        assert_eq!(writer.with_address("app@host"), Err(UrlProblem::NoHost));
        assert_eq!(writer.with_address("host/db"), Err(UrlProblem::NoHost));
    }

    #[test]
    fn statement_timeout_goes_in_options_with_spaces_as_percent_20() {
        let url = DatabaseUrl::parse("postgres://h/db?sslmode=disable").unwrap();
        assert_eq!(
            url.connect_string("my app", Some(std::time::Duration::from_secs(2))),
            "postgres://h/db?sslmode=disable&application_name=my%20app&options=-c%20statement_timeout%3D2000"
        );
        let url = DatabaseUrl::parse("postgres://h/db?options=-c%20work_mem%3D64MB").unwrap();
        assert_eq!(
            url.connect_string("", Some(std::time::Duration::from_secs(2))),
            "postgres://h/db?options=-c%20work_mem%3D64MB"
        );
    }

    #[test]
    fn application_name_is_added_unless_present() {
        let url = DatabaseUrl::parse("postgres://h/db").unwrap();
        assert_eq!(
            url.connect_string("svc", None),
            "postgres://h/db?application_name=svc"
        );
        let url = DatabaseUrl::parse("postgres://h/db?application_name=mine").unwrap();
        assert_eq!(
            url.connect_string("svc", None),
            "postgres://h/db?application_name=mine"
        );
    }

    #[test]
    fn redact_unparsed_hides_userinfo() {
        assert_eq!(
            redact_unparsed("postgres://u:p@ss@h:x/db"),
            "postgres://***@h:x/db"
        );
        assert_eq!(redact_unparsed("not a url"), "not a url");
    }
}
