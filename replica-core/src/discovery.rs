//! Finding the nodes while running: a survey of candidate hosts, each asked
//! `SELECT pg_is_in_recovery()` on a connection of its own.

use std::time::Duration;

use futures_util::future::join_all;

use crate::connector;
use crate::credentials::CredentialsProvider;
use crate::url::DatabaseUrl;

/// What one survey found.
pub(crate) struct Survey {
    /// The candidates not in recovery: one is the writer; none means the
    /// writer is gone (or not yet promoted); more is a split brain.
    pub(crate) writers: Vec<DatabaseUrl>,
    /// The candidates in recovery.
    pub(crate) replicas: Vec<DatabaseUrl>,
    /// The candidates that did not answer, with why.
    pub(crate) unreachable: Vec<(DatabaseUrl, String)>,
}

/// Asks every candidate at once, each within `timeout`.
pub(crate) async fn survey(
    candidates: &[DatabaseUrl],
    application_name: &str,
    credentials: Option<&CredentialsProvider>,
    timeout: Duration,
) -> Survey {
    let answers = join_all(
        candidates
            .iter()
            .map(|url| connector::in_recovery(url, application_name, credentials, timeout)),
    )
    .await;
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
