//! Finding the nodes while running, on connections of discovery's own:
//! candidate hosts each asked `SELECT pg_is_in_recovery()`, or Aurora's
//! `aurora_replica_status()`.

use diesel::QueryableByName;
use diesel::sql_types::{Bool, Text};
use futures_util::future::join_all;

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
}

/// Asks every candidate at once whether it is in recovery.
pub(crate) async fn survey_hosts(candidates: &[DatabaseUrl], probes: &Probes) -> Survey {
    let answers = join_all(candidates.iter().map(|url| in_recovery(url, probes))).await;
    let mut survey = Survey {
        writers: Vec::new(),
        replicas: Vec::new(),
        unreachable: Vec::new(),
    };
    for (url, answer) in candidates.iter().zip(answers) {
        match answer {
            Ok(false) => survey.writers.push(url.clone()),
            Ok(true) => survey.replicas.push(url.clone()),
            Err(why) => survey.unreachable.push((url.clone(), why)),
        }
    }
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

/// One instance in `aurora_replica_status()`.
#[derive(QueryableByName)]
struct Instance {
    #[diesel(sql_type = Text)]
    server_id: String,
    #[diesel(sql_type = Bool)]
    writer: bool,
}

/// How an Aurora `server_id` becomes a node: the host pattern, `?`
/// standing for the id, with the port, credentials, database and TLS
/// settings of the writer's configured URL.
pub(crate) struct AuroraEndpoints {
    pub(crate) pattern: String,
    pub(crate) template: DatabaseUrl,
}

impl AuroraEndpoints {
    /// The node of instance `server_id`.
    pub(crate) fn url(&self, server_id: &str) -> Result<DatabaseUrl, String> {
        self.template
            .with_address(&self.pattern.replace('?', server_id.trim()))
            .map_err(|problem| format!("instance `{server_id}`: {problem}"))
    }
}

/// Instances updated in the last 5 minutes, the writer's row marked.
const AURORA_STATUS: &str = "SELECT server_id::text AS server_id, \
     session_id = 'MASTER_SESSION_ID' AS writer FROM aurora_replica_status() \
     WHERE last_update_timestamp > now() - interval '5 minutes'";

/// Asks `aurora_replica_status()` of the first of `nodes` that answers
/// (the writer first), and makes each instance a node with `endpoints`;
/// the nodes asked before are the
/// survey's unreachable ones. `Err` when no node answered or the answer is
/// unusable: the nodes then stay as they were.
pub(crate) async fn survey_aurora(
    nodes: &[DatabaseUrl],
    endpoints: &AuroraEndpoints,
    probes: &Probes,
) -> Result<Survey, String> {
    let mut unreachable = Vec::new();
    for url in nodes {
        match probes.query::<Instance>(url, AURORA_STATUS).await {
            Ok(rows) => return instances(&rows, endpoints, unreachable),
            Err(e) => unreachable.push((url.clone(), e.into())),
        }
    }
    let why: Vec<String> = unreachable
        .iter()
        .map(|(url, e)| format!("{}: {e}", url.address()))
        .collect();
    Err(format!(
        "no node answered aurora_replica_status(): {}",
        why.join("; ")
    ))
}

fn instances(
    rows: &[Instance],
    endpoints: &AuroraEndpoints,
    unreachable: Vec<(DatabaseUrl, String)>,
) -> Result<Survey, String> {
    if rows.is_empty() {
        return Err("aurora_replica_status() lists no instance updated in 5 minutes".into());
    }
    let mut survey = Survey {
        writers: Vec::new(),
        replicas: Vec::new(),
        unreachable,
    };
    for row in rows {
        let url = endpoints.url(&row.server_id)?;
        if row.writer {
            survey.writers.push(url);
        } else {
            survey.replicas.push(url);
        }
    }
    Ok(survey)
}
