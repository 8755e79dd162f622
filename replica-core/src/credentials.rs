//! Who connects: the user name and password of each new physical
//! connection, asked of a provider that may change them (a rotated secret),
//! and asked again, skipping any cache, when the server refuses them.

use std::fmt;
use std::future::Future;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use serde_json::Value;

/// A password that never shows: its `Debug` prints `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps a password.
    pub fn new(password: impl Into<String>) -> Self {
        Self(password.into())
    }

    /// The password itself, to hand to the server. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A user name and its password.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Login {
    /// The role to log in as.
    pub user: String,
    /// Its password.
    pub password: Password,
}

impl Login {
    /// A login.
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            password: Password::new(password),
        }
    }
}

/// Why no login could be had.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CredentialsError {
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl CredentialsError {
    /// An error with our own words, and the error behind it if any.
    pub fn new(
        message: impl Into<String>,
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            message: message.into(),
            source,
        }
    }
}

/// The future of a [`Credentials::login`].
pub type LoginFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Login, CredentialsError>> + Send + 'a>>;

/// Gives the login of each new physical connection.
///
/// Asked once per connection opened (not per query); `refresh` is true
/// when the server has just refused the login given before, so a provider
/// that caches must fetch afresh. Implement it for AWS Secrets Manager, RDS
/// IAM authentication tokens, Vault, ... (see the README).
pub trait Credentials: Send + Sync + 'static {
    /// The login for a new connection to `node` (`host:port/database`).
    fn login<'a>(&'a self, node: &'a str, refresh: bool) -> LoginFuture<'a>;
}

/// A [`Credentials`] in a [`Config`](crate::Config): compared by identity,
/// shown without its contents.
#[derive(Clone)]
pub struct CredentialsProvider(pub(crate) Arc<dyn Credentials>);

impl CredentialsProvider {
    /// Wraps a provider.
    pub fn new(provider: impl Credentials) -> Self {
        Self(Arc::new(provider))
    }
}

impl fmt::Debug for CredentialsProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CredentialsProvider(..)")
    }
}

impl PartialEq for CredentialsProvider {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for CredentialsProvider {}

/// The most a secret file may hold: a Secrets Manager secret's own limit.
pub(crate) const MAX_SECRET_FILE: u64 = 65_536;

/// Reads a secret file: a regular file of at most [`MAX_SECRET_FILE`]
/// bytes. Anything else is refused before a byte is read: a FIFO would
/// block until some writer opens it (it is opened without waiting, and
/// refused), a device may never end, a directory holds no secret.
pub(crate) fn read_secret_file(path: &Path) -> io::Result<String> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "it is not a regular file",
        ));
    }
    let mut text = String::new();
    file.take(MAX_SECRET_FILE + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_SECRET_FILE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("it holds more than {MAX_SECRET_FILE} bytes"),
        ));
    }
    Ok(text)
}

/// A secret file, `DATABASE_SECRET_FILE`: the JSON document of
/// `DATABASE_SECRET` (`username`, `password`, ...), read when a connection
/// is opened, kept until the server refuses it, then read again.
pub struct SecretFile {
    path: PathBuf,
    cached: Mutex<Option<Login>>,
}

impl SecretFile {
    /// The secret at `path`; nothing is read yet.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            cached: Mutex::new(None),
        }
    }

    /// Reads and parses the file now.
    ///
    /// # Errors
    /// When the file cannot be read, is not a JSON object, or lacks a
    /// non-empty `username` or `password`; the error names the path and
    /// never quotes the content.
    pub fn read(&self) -> Result<Login, CredentialsError> {
        let path = self.path.display();
        let text = read_secret_file(&self.path).map_err(|e| {
            CredentialsError::new(
                format!("secret file `{path}` cannot be read"),
                Some(e.into()),
            )
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|e| {
            // A syntax error names a line and column, never the content.
            CredentialsError::new(format!("secret file `{path}` is not JSON"), Some(e.into()))
        })?;
        let field = |name: &str| match value.get(name) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            _ => Err(CredentialsError::new(
                format!(
                    "secret file `{path}`: field `{name}` is missing or not a non-empty string"
                ),
                None,
            )),
        };
        Ok(Login::new(field("username")?, field("password")?))
    }
}

impl Credentials for SecretFile {
    fn login<'a>(&'a self, _node: &'a str, refresh: bool) -> LoginFuture<'a> {
        Box::pin(async move {
            let cached = self
                .cached
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(login) = cached.filter(|_| !refresh) {
                return Ok(login);
            }
            let login = self.read()?;
            *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = Some(login.clone());
            Ok(login)
        })
    }
}
