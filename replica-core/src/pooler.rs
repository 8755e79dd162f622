//! What sits between the application and each node: nothing, or a
//! transaction-mode pooler (PgBouncer, RDS Proxy), which decides what the
//! library may send.

use std::fmt;

use serde::Deserialize;

/// What each node's address reaches: the server itself, or a pooler in
/// transaction mode, which hands each transaction to any of its server
/// connections.
///
/// Behind a pooler ([`Pooler::Transaction`]) the library sends nothing that
/// outlives a transaction: no startup `options` (a pooler refuses them), no
/// session `SET`, `RESET` or `DISCARD`, no prepared statement kept past the
/// transaction that made it. Each call's promises (read-only, the tenant's
/// scope, the statement timeout) are set for its transaction alone, a
/// write runs in a transaction even when asked for autocommit, and the
/// background tasks' questions run in transactions of their own. README's
/// "Behind a pooler" says what a body may then do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
#[non_exhaustive]
pub enum Pooler {
    /// The addresses reach PostgreSQL servers (or a session-mode pooler).
    #[default]
    None,
    /// The addresses reach a pooler in transaction mode.
    Transaction,
}

impl Pooler {
    /// Parses the names of `DATABASE_POOLER` and serde's `pooler`, in any
    /// case.
    pub(crate) fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "none" => Some(Self::None),
            "transaction" => Some(Self::Transaction),
            _ => None,
        }
    }

    /// Whether a transaction-mode pooler sits in front of the nodes.
    pub(crate) fn is_transaction(self) -> bool {
        self == Self::Transaction
    }
}

impl fmt::Display for Pooler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Transaction => "transaction",
        })
    }
}

impl TryFrom<String> for Pooler {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        Self::parse(&name)
            .ok_or_else(|| format!("unknown pooler `{name}`, expected none or transaction"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_in_any_case_and_nothing_else_does() {
        assert_eq!(Pooler::parse(" Transaction "), Some(Pooler::Transaction));
        assert_eq!(Pooler::parse("NONE"), Some(Pooler::None));
        for bad in ["", "session", "pgbouncer", "transaction-mode"] {
            assert_eq!(Pooler::parse(bad), None, "{bad:?}");
        }
        assert_eq!(Pooler::default().to_string(), "none");
    }
}
