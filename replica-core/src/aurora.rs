//! Aurora's own view of its cluster, `aurora_replica_status()`, read as
//! Aurora gives it, for discovery and the lag monitor alike:
//!
//! - the row whose `session_id` is `MASTER_SESSION_ID` is the writer,
//!   whatever its timestamp;
//! - a NULL `last_update_timestamp` marks the instance that answered (so
//!   Aurora PostgreSQL from 13.9 on), and that row is current;
//! - only a row whose timestamp is over 300 s old is stale, as the AWS
//!   drivers count it;
//! - a NULL `replica_lag_in_msec` is no lag known, never 0.

use std::fmt;

use diesel::QueryableByName;
use diesel::sql_types::{Bool, Double, Nullable, Text};

use crate::url::DatabaseUrl;

/// The view, each row's rules worked out by the server that answers, on
/// its own clock. Only `aurora_replica_status()` itself is left to the
/// search path: Aurora does not document its schema.
pub(crate) const STATUS: &str = "SELECT server_id::text AS server_id, \
     coalesce(session_id = 'MASTER_SESSION_ID', false) AS writer, \
     coalesce(last_update_timestamp < pg_catalog.now() - interval '300 seconds', false) AS stale, \
     last_update_timestamp::text AS updated, \
     replica_lag_in_msec::float8 AS lag_ms \
     FROM aurora_replica_status()";

/// The longest excerpt of a `server_id` kept in a rejection.
const ID_EXCERPT: usize = 64;

/// One row of [`STATUS`].
#[derive(QueryableByName)]
pub(crate) struct Row {
    #[diesel(sql_type = Nullable<Text>)]
    server_id: Option<String>,
    #[diesel(sql_type = Bool)]
    writer: bool,
    #[diesel(sql_type = Bool)]
    stale: bool,
    #[diesel(sql_type = Nullable<Text>)]
    updated: Option<String>,
    #[diesel(sql_type = Nullable<Double>)]
    lag_ms: Option<f64>,
}

/// How an Aurora `server_id` becomes a node: the host pattern, `?`
/// standing for the id, with the port, credentials, database and TLS
/// settings of the writer's configured URL (the cluster endpoint).
pub(crate) struct Endpoints {
    pub(crate) pattern: String,
    pub(crate) template: DatabaseUrl,
}

impl Endpoints {
    /// The node of instance `server_id`.
    fn url(&self, server_id: &str) -> Result<DatabaseUrl, String> {
        self.template
            .with_address(&self.pattern.replace('?', server_id.trim()))
            .map_err(|problem| problem.to_string())
    }
}

/// One instance the view names, made a node.
pub(crate) struct Instance {
    pub(crate) url: DatabaseUrl,
    /// The `MASTER_SESSION_ID` row.
    pub(crate) writer: bool,
    /// `replica_lag_in_msec`, when it is a number of milliseconds.
    pub(crate) lag_ms: Option<u64>,
}

/// What the view says, row by row.
pub(crate) struct View {
    pub(crate) instances: Vec<Instance>,
    pub(crate) rejected: Vec<RejectedRow>,
}

impl View {
    /// Applies the rules to each row and makes each kept one a node.
    pub(crate) fn read(rows: Vec<Row>, endpoints: &Endpoints) -> Self {
        let mut view = Self {
            instances: Vec::new(),
            rejected: Vec::new(),
        };
        for row in rows {
            let Some(server_id) = row.server_id.filter(|id| !id.trim().is_empty()) else {
                view.rejected
                    .push(RejectedRow::new("", Rule::NoServerId, String::new()));
                continue;
            };
            if row.stale && !row.writer {
                let updated = row.updated.unwrap_or_default();
                view.rejected.push(RejectedRow::new(
                    &server_id,
                    Rule::Stale,
                    format!("last updated {updated}"),
                ));
                continue;
            }
            match endpoints.url(&server_id) {
                Ok(url) => view.instances.push(Instance {
                    url,
                    writer: row.writer,
                    lag_ms: row.lag_ms.filter(|_| !row.writer).and_then(milliseconds),
                }),
                Err(problem) => {
                    view.rejected
                        .push(RejectedRow::new(&server_id, Rule::NoEndpoint, problem));
                }
            }
        }
        view
    }
}

/// A lag Aurora reports, as whole milliseconds; none for what is not a
/// duration (negative, NaN, infinite).
fn milliseconds(lag: f64) -> Option<u64> {
    // `as` saturates: a lag past u64::MAX ms is u64::MAX.
    (lag.is_finite() && lag >= 0.0).then(|| lag.round() as u64)
}

/// A row of `aurora_replica_status()` that discovery did not use.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct RejectedRow {
    /// The row's `server_id` (at most 64 characters of it; empty when
    /// NULL).
    pub server_id: String,
    /// The rule that rejected it.
    pub rule: Rule,
    /// What the row held that broke the rule: its timestamp, or why its
    /// id makes no endpoint.
    pub detail: String,
}

impl RejectedRow {
    pub(crate) fn new(server_id: &str, rule: Rule, detail: String) -> Self {
        let server_id = match server_id.char_indices().nth(ID_EXCERPT) {
            Some((end, _)) => format!("{}...", &server_id[..end]),
            None => server_id.to_owned(),
        };
        Self {
            server_id,
            rule,
            detail,
        }
    }
}

impl fmt::Display for RejectedRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.server_id, self.rule)?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

/// Why a row of `aurora_replica_status()` was not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Rule {
    /// A replica's row not updated for over 300 s: the instance is gone.
    Stale,
    /// The row has no `server_id`.
    NoServerId,
    /// The `server_id` makes no endpoint with the host pattern.
    NoEndpoint,
}

impl Rule {
    /// Every rule, for metrics that report each.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) const ALL: [Self; 3] = [Self::Stale, Self::NoServerId, Self::NoEndpoint];

    /// The rule's name, as serialized: `stale`, `no_server_id`,
    /// `no_endpoint`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stale => "stale",
            Self::NoServerId => "no_server_id",
            Self::NoEndpoint => "no_endpoint",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Stale => "a replica's row not updated for over 300 s",
            Self::NoServerId => "no server_id",
            Self::NoEndpoint => "its server_id makes no endpoint with the host pattern",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints() -> Endpoints {
        Endpoints {
            pattern: "?.cluster-abc.eu-west-1.rds.amazonaws.com".into(),
            template: DatabaseUrl::parse("postgres://app:pw@cluster-abc:5432/main").unwrap(),
        }
    }

    fn row(id: Option<&str>, writer: bool, stale: bool, lag_ms: Option<f64>) -> Row {
        Row {
            server_id: id.map(str::to_owned),
            writer,
            stale,
            updated: Some("2026-12-07 17:00:00+00".into()),
            lag_ms,
        }
    }

    #[test]
    fn the_writer_row_is_kept_whatever_its_age_and_stale_replicas_are_named() {
        let view = View::read(
            vec![
                row(Some("app-db-1"), true, true, None),
                row(Some("app-db-2"), false, false, Some(12.4)),
                row(Some("app-db-3"), false, true, Some(0.0)),
                row(None, false, false, None),
                row(Some("bad id"), false, false, None),
            ],
            &endpoints(),
        );
        let kept: Vec<(String, bool, Option<u64>)> = view
            .instances
            .iter()
            .map(|i| (i.url.address(), i.writer, i.lag_ms))
            .collect();
        assert_eq!(
            kept,
            [
                (
                    "app-db-1.cluster-abc.eu-west-1.rds.amazonaws.com:5432".into(),
                    true,
                    None
                ),
                (
                    "app-db-2.cluster-abc.eu-west-1.rds.amazonaws.com:5432".into(),
                    false,
                    Some(12)
                ),
            ]
        );
        let rules: Vec<(&str, Rule)> = view
            .rejected
            .iter()
            .map(|r| (r.server_id.as_str(), r.rule))
            .collect();
        assert_eq!(
            rules,
            [
                ("app-db-3", Rule::Stale),
                ("", Rule::NoServerId),
                ("bad id", Rule::NoEndpoint)
            ]
        );
        assert!(view.rejected[2].to_string().contains("no spaces"));
    }

    #[test]
    fn a_lag_that_is_no_duration_is_unknown() {
        assert_eq!(milliseconds(0.4), Some(0));
        assert_eq!(milliseconds(1e300), Some(u64::MAX));
        for lag in [-1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(milliseconds(lag), None, "{lag}");
        }
    }

    #[test]
    fn a_rejected_id_is_cut() {
        let long = "é".repeat(10_000);
        let rejected = RejectedRow::new(&long, Rule::NoEndpoint, String::new());
        assert_eq!(rejected.server_id.chars().count(), ID_EXCERPT + 3);
        assert!(rejected.server_id.ends_with("..."));
    }
}
