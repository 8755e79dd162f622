//! Finding the nodes while running, on connections of discovery's own:
//! candidate hosts each asked `SELECT pg_is_in_recovery()`, or Aurora's
//! `aurora_replica_status()`; and what a survey could not use, said loudly.

use std::time::{Duration, Instant};

use diesel::QueryableByName;
use diesel::sql_types::Bool;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use crate::aurora::{self, Endpoints, RejectedRow, View};
use crate::probes::Probes;
use crate::url::DatabaseUrl;

/// What one survey found.
pub(crate) struct Survey {
    /// The nodes not in recovery: one is the writer; none means the writer
    /// is gone (or not yet promoted); more is a split brain.
    pub(crate) writers: Vec<DatabaseUrl>,
    /// The nodes in recovery.
    pub(crate) replicas: Vec<DatabaseUrl>,
    /// The nodes that did not answer, with why.
    pub(crate) unreachable: Vec<(DatabaseUrl, String)>,
    /// What the survey could not use.
    pub(crate) report: DiscoveryStatus,
}

/// How long a survey that has found a writer still waits for the other
/// candidates: a hung one (the old writer, frozen or cut off) must not
/// hold the new writer back for the whole survey timeout.
const SETTLE: Duration = Duration::from_millis(250);

/// Asks every candidate at once whether it is in recovery. Once one has
/// answered as the writer, the others get [`SETTLE`] more to answer; those
/// that have not are unreachable for this survey.
pub(crate) async fn survey_hosts(candidates: &[DatabaseUrl], probes: &Probes) -> Survey {
    let mut asked: FuturesUnordered<_> = candidates
        .iter()
        .map(|url| async move { (url, in_recovery(url, probes).await) })
        .collect();
    let mut survey = Survey {
        writers: Vec::new(),
        replicas: Vec::new(),
        unreachable: Vec::new(),
        report: DiscoveryStatus::default(),
    };
    let mut answered = Vec::new();
    let mut settle = None;
    loop {
        let next = match settle {
            None => asked.next().await,
            Some(until) => match tokio::time::timeout_at(until, asked.next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
        };
        let Some((url, answer)) = next else { break };
        match answer {
            Ok(false) => {
                survey.writers.push(url.clone());
                settle.get_or_insert_with(|| tokio::time::Instant::now() + SETTLE);
            }
            Ok(true) => survey.replicas.push(url.clone()),
            Err(why) => survey.unreachable.push((url.clone(), why)),
        }
        answered.push(url);
    }
    for url in candidates.iter().filter(|url| !answered.contains(url)) {
        survey.unreachable.push((
            url.clone(),
            format!("no answer within {SETTLE:?} of the writer's"),
        ));
    }
    // In the candidates' order, whatever order they answered in.
    let position = |url: &DatabaseUrl| candidates.iter().position(|c| c == url);
    survey.writers.sort_by_key(|url| position(url));
    survey.replicas.sort_by_key(|url| position(url));
    survey.unreachable.sort_by_key(|(url, _)| position(url));
    survey
}

/// A candidate's answer.
#[derive(QueryableByName)]
struct Recovery {
    #[diesel(sql_type = Bool)]
    in_recovery: bool,
}

async fn in_recovery(url: &DatabaseUrl, probes: &Probes) -> Result<bool, String> {
    let rows = probes
        .query::<Recovery>(url, "SELECT pg_catalog.pg_is_in_recovery() AS in_recovery")
        .await
        .map_err(String::from)?;
    rows.first()
        .map(|row| row.in_recovery)
        .ok_or_else(|| "no answer to pg_is_in_recovery()".to_owned())
}

/// Asks `aurora_replica_status()` of the first of `nodes` that answers
/// (the writer first), and makes each instance it keeps a node with
/// `endpoints`; the nodes asked before are the survey's unreachable ones.
/// When the view names no writer, the configured endpoint is asked whether
/// it is one: writes never fail on the view alone. `Err` when no node
/// answered or the view names no instance that can be used: the nodes then
/// stay as they were, and the report says why.
pub(crate) async fn survey_aurora(
    nodes: &[DatabaseUrl],
    endpoints: &Endpoints,
    probes: &Probes,
) -> Result<Survey, DiscoveryStatus> {
    let mut unreachable = Vec::new();
    for url in nodes {
        match probes.query::<aurora::Row>(url, aurora::STATUS).await {
            Ok(rows) => {
                let view = View::read(rows, endpoints);
                return from_view(view, endpoints, probes, unreachable).await;
            }
            Err(e) => unreachable.push((url.clone(), String::from(e))),
        }
    }
    let why: Vec<String> = unreachable
        .iter()
        .map(|(url, e)| format!("{}: {e}", url.address()))
        .collect();
    Err(DiscoveryStatus {
        failed: Some(format!(
            "no node answered aurora_replica_status(): {}",
            why.join("; ")
        )),
        ..DiscoveryStatus::default()
    })
}

async fn from_view(
    view: View,
    endpoints: &Endpoints,
    probes: &Probes,
    unreachable: Vec<(DatabaseUrl, String)>,
) -> Result<Survey, DiscoveryStatus> {
    let mut survey = Survey {
        writers: Vec::new(),
        replicas: Vec::new(),
        unreachable,
        report: DiscoveryStatus {
            rejected: view.rejected,
            ..DiscoveryStatus::default()
        },
    };
    if view.instances.is_empty() {
        survey.report.failed =
            Some("aurora_replica_status() names no instance that can be used".into());
        return Err(survey.report);
    }
    for instance in view.instances {
        if instance.writer {
            survey.writers.push(instance.url);
        } else {
            survey.replicas.push(instance.url);
        }
    }
    if survey.writers.is_empty() {
        survey.report.writer_not_in_view = true;
        let endpoint = &endpoints.template;
        match in_recovery(endpoint, probes).await {
            Ok(false) => survey.writers.push(endpoint.clone()),
            Ok(true) => {}
            Err(why) => survey.unreachable.push((endpoint.clone(), why)),
        }
    }
    Ok(survey)
}

/// What discovery's last survey could not use, in
/// [`Status::discovery`](crate::Status::discovery). Empty while it used
/// everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct DiscoveryStatus {
    /// Aurora: the rows of `aurora_replica_status()` the last survey did
    /// not use, each with the rule that rejected it.
    pub rejected: Vec<RejectedRow>,
    /// Aurora: the last survey's view named no writer. The writer is then
    /// the configured endpoint (`DATABASE_URL`) if it answers as one; if
    /// it does not, writes fail with
    /// [`Error::WriterUnavailable`](crate::Error::WriterUnavailable).
    pub writer_not_in_view: bool,
    /// Why the last survey changed nothing: no node answered, or Aurora's
    /// view names no instance that can be used. The nodes stay as they
    /// were.
    pub failed: Option<String>,
    /// The nodes that each answered the last survey as the writer, when
    /// more than one did (a split brain, or one server listed under two
    /// names that no configuration check could tell apart). The writer
    /// stays the one the set had, if it is among them, and the replicas
    /// found keep serving reads; else the nodes stay as they were.
    pub writers: Vec<String>,
}

impl DiscoveryStatus {
    /// Whether the last survey used everything it was given.
    pub fn is_clean(&self) -> bool {
        self.rejected.is_empty()
            && !self.writer_not_in_view
            && self.failed.is_none()
            && self.writers.is_empty()
    }
}

/// How many rejected rows a message names (Aurora has at most 16
/// instances; a view of thousands of rows is named by its count).
const SAID_ROWS: usize = 16;

/// The problems, `; ` between them: empty when clean.
impl std::fmt::Display for DiscoveryStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut problems: Vec<String> = Vec::new();
        if let Some(failed) = &self.failed {
            problems.push(format!("{failed}; the nodes stay as they were"));
        }
        if !self.writers.is_empty() {
            problems.push(format!(
                "{} nodes answer as the writer: {}",
                self.writers.len(),
                self.writers.join(", ")
            ));
        }
        if self.writer_not_in_view {
            problems.push(
                "aurora_replica_status() names no writer: the writer is the configured endpoint if it answers as one".into(),
            );
        }
        problems.extend(
            self.rejected
                .iter()
                .take(SAID_ROWS)
                .map(|row| format!("row rejected: {row}")),
        );
        if let Some(more) = self
            .rejected
            .len()
            .checked_sub(SAID_ROWS)
            .filter(|&n| n > 0)
        {
            problems.push(format!("{more} more rows rejected"));
        }
        f.write_str(&problems.join("; "))
    }
}

/// How often a problem that lasts is said again.
const REPEAT_AFTER: Duration = Duration::from_secs(600);

/// Discovery's problems, logged at WARN when one is new and again every
/// [`REPEAT_AFTER`] while it lasts, however often the surveys meet it.
#[derive(Default)]
pub(crate) struct Warnings {
    last: Option<(String, Instant)>,
}

impl Warnings {
    /// Logs `problem` unless it is the one logged last, less than
    /// [`REPEAT_AFTER`] ago.
    pub(crate) fn warn(&mut self, problem: String) {
        let due = self
            .last
            .as_ref()
            .is_none_or(|(last, at)| *last != problem || at.elapsed() >= REPEAT_AFTER);
        if due {
            tracing::warn!("discovery: {problem}");
            self.last = Some((problem, Instant::now()));
        }
    }

    /// Logs at INFO that the last problem is over, if there was one.
    pub(crate) fn clear(&mut self) {
        if let Some((problem, _)) = self.last.take() {
            tracing::info!(%problem, "discovery: the problem is over");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aurora::Rule;

    #[test]
    fn a_report_names_at_most_16_rows() {
        let row = |i: usize| RejectedRow::new(&format!("instance-{i}"), Rule::Stale, String::new());
        let report = DiscoveryStatus {
            rejected: (0..1000).map(row).collect(),
            ..DiscoveryStatus::default()
        };
        let text = report.to_string();
        assert!(text.contains("`instance-15`"), "{text}");
        assert!(!text.contains("`instance-16`"), "{text}");
        assert!(text.ends_with("; 984 more rows rejected"), "{text}");
        assert_eq!(DiscoveryStatus::default().to_string(), "");
    }
}
