//! Tenants: one PostgreSQL schema each, named by a validated identifier.

use std::fmt;
use std::str::FromStr;

/// A tenant: the name of its PostgreSQL schema, checked before any
/// connection is touched.
///
/// Valid names are what PostgreSQL accepts unquoted and keeps as written:
/// 1 to 63 bytes of lower-case ASCII letters, digits and `_`, not starting
/// with a digit. Names PostgreSQL reserves (`pg_*`, `information_schema`)
/// and `public` are refused. The library quotes the name itself wherever it
/// reaches SQL.
///
/// ```
/// # use replica_core::Tenant;
/// let acme: Tenant = "acme".parse().unwrap();
/// assert_eq!(acme.name(), "acme");
/// assert!(Tenant::new("Acme").is_err());
/// assert!(Tenant::new("acme\"; DROP SCHEMA public; --").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tenant(String);

/// Why a tenant name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TenantError {
    /// The name is empty.
    Empty,
    /// The name is longer than PostgreSQL's 63-byte identifiers.
    TooLong {
        /// The name.
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The name holds a character outside `a-z`, `0-9` and `_`, or starts
    /// with a digit.
    InvalidCharacter {
        /// The name.
        name: String,
        /// The first character refused.
        found: char,
        /// Its byte offset.
        at: usize,
    },
    /// The name is PostgreSQL's or shared by every tenant.
    Reserved {
        /// The name.
        name: String,
    },
}

impl TenantError {
    fn new(name: &str, problem: NameError) -> Self {
        let name = name.to_owned();
        match problem {
            NameError::Empty => Self::Empty,
            NameError::TooLong { len } => Self::TooLong { name, len },
            NameError::InvalidCharacter { found, at } => Self::InvalidCharacter { name, found, at },
        }
    }
}

impl fmt::Display for TenantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("a tenant name cannot be empty"),
            Self::TooLong { name, len } => {
                write!(
                    f,
                    "tenant name {name:?} {}",
                    NameError::TooLong { len: *len }
                )
            }
            Self::InvalidCharacter { name, found, at } => write!(
                f,
                "tenant name {name:?} {}",
                NameError::InvalidCharacter {
                    found: *found,
                    at: *at
                }
            ),
            Self::Reserved { name } => write!(
                f,
                "tenant name {name:?} is reserved (`pg_*`, `information_schema`, `public`)"
            ),
        }
    }
}

/// Why a name is not an identifier PostgreSQL keeps as written: what
/// [`Tenant`] and the shared schemas are checked against.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    #[error("is empty")]
    Empty,
    /// The name is longer than PostgreSQL's 63-byte identifiers.
    #[error("is {len} bytes long: at most 63")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The name holds a character outside `a-z`, `0-9` and `_`, or starts
    /// with a digit.
    #[error(
        "has {found:?} at byte {at}: use lower-case ASCII letters, digits and `_`, not starting with a digit"
    )]
    InvalidCharacter {
        /// The first character refused.
        found: char,
        /// Its byte offset.
        at: usize,
    },
}

impl std::error::Error for TenantError {}

impl Tenant {
    /// Checks `name` and makes it a tenant.
    ///
    /// # Errors
    /// When the name is not a valid tenant name (see [`Tenant`]).
    pub fn new(name: impl Into<String>) -> Result<Self, TenantError> {
        let name = name.into();
        check_identifier(&name).map_err(|problem| TenantError::new(&name, problem))?;
        if name.starts_with("pg_") || name == "information_schema" || name == "public" {
            return Err(TenantError::Reserved { name });
        }
        Ok(Self(name))
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.0
    }
}

/// Checks that `name` is an identifier PostgreSQL keeps as written.
pub(crate) fn check_identifier(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > 63 {
        return Err(NameError::TooLong { len: name.len() });
    }
    let refused = name
        .char_indices()
        .find(|&(at, c)| !(c.is_ascii_lowercase() || c == '_' || (at > 0 && c.is_ascii_digit())));
    match refused {
        Some((at, found)) => Err(NameError::InvalidCharacter { found, at }),
        None => Ok(()),
    }
}

/// `name` as a quoted SQL identifier.
pub(crate) fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `value` as an SQL string literal, read the same whatever
/// `standard_conforming_strings` says (an escape string, `E'..'`).
fn quote_literal(value: &str) -> String {
    format!("E'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// What a tenant-scoped call sets first: the tenant's schema, then the
/// shared ones, as `search_path`.
pub(crate) struct Scope<'a> {
    pub(crate) tenant: &'a Tenant,
    pub(crate) search_path: String,
}

impl<'a> Scope<'a> {
    pub(crate) fn new(tenant: &'a Tenant, shared: &[String]) -> Self {
        let search_path = std::iter::once(tenant.name())
            .chain(shared.iter().map(String::as_str))
            .map(quote_identifier)
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            tenant,
            search_path,
        }
    }
}

impl Scope<'_> {
    /// The statement that sets the scope for the transaction, sent ahead
    /// of the body with its `BEGIN`.
    ///
    /// PostgreSQL silently skips a schema of `search_path` that does not
    /// exist, which would let the tenant read the shared schemas' tables
    /// instead of its own: the statement also casts the tenant's name to
    /// the schema it names, which fails when there is none. The transaction
    /// is then failed, every statement of the body fails with it, and the
    /// attempt says [`Error::UnknownTenant`].
    ///
    /// Every name in it is a checked identifier (see [`Tenant`] and the
    /// shared schemas' check), quoted as one, and each value is quoted as a
    /// literal.
    ///
    /// [`Error::UnknownTenant`]: crate::Error::UnknownTenant
    pub(crate) fn statement(&self) -> String {
        format!(
            "SELECT pg_catalog.set_config('search_path', {path}, true), \
             {schema}::pg_catalog.regnamespace",
            path = quote_literal(&self.search_path),
            schema = quote_literal(&quote_identifier(self.tenant.name())),
        )
    }
}

impl FromStr for Tenant {
    type Err = TenantError;

    fn from_str(name: &str) -> Result<Self, TenantError> {
        Self::new(name)
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_refused() {
        for name in [
            "",
            "\"",
            "acme\"",
            "a;b",
            "\"; DROP SCHEMA public; --",
            "acme; DROP SCHEMA public",
            "ac me",
            "Acme",
            "ACME",
            "acmé",
            "ацме",
            "1acme",
            "acme-corp",
            "acme.public",
            "acme$",
            "public",
            "pg_catalog",
            "information_schema",
        ] {
            assert!(Tenant::new(name).is_err(), "{name:?} was accepted");
        }
        assert_eq!(Tenant::new("a".repeat(63)).map(|t| t.name().len()), Ok(63));
        assert_eq!(
            Tenant::new("a".repeat(64)),
            Err(TenantError::TooLong {
                name: "a".repeat(64),
                len: 64
            })
        );
    }

    #[test]
    fn good_names_are_kept() {
        for name in ["acme", "_acme", "tenant_42", "a"] {
            assert_eq!(Tenant::new(name).unwrap().to_string(), name);
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(
            Tenant::new("Acme").unwrap_err().to_string(),
            "tenant name \"Acme\" has 'A' at byte 0: use lower-case ASCII letters, digits and `_`, not starting with a digit"
        );
        assert_eq!(
            Tenant::new("\"; DROP SCHEMA public; --")
                .unwrap_err()
                .to_string(),
            "tenant name \"\\\"; DROP SCHEMA public; --\" has '\"' at byte 0: use lower-case ASCII letters, digits and `_`, not starting with a digit"
        );
    }

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(quote_identifier("acme"), "\"acme\"");
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "E'it''s'");
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
    }
}
