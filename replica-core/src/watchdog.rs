//! The writer's watchdog: a question every [`INTERVAL`] on a connection of
//! its own, so that a writer cut off the network is known within two
//! seconds. Its calls then fail fast instead of each waiting out its
//! timeout, and they resume when it answers again.

use std::sync::Arc;
use std::time::Duration;

use diesel::QueryableByName;
use diesel::sql_types::Integer;

use crate::health::Tracker;
use crate::node::Node;
use crate::probes::{Probes, Unanswered};

/// Time between two questions.
pub(crate) const INTERVAL: Duration = Duration::from_millis(500);

/// How long a question (and connecting, for the second) may take: well
/// above what a `SELECT 1` takes on a loaded server, and short enough that
/// an interval and two silent questions stay under two seconds.
pub(crate) const TIMEOUT: Duration = Duration::from_millis(600);

#[derive(QueryableByName)]
struct One {
    #[diesel(sql_type = Integer)]
    #[allow(dead_code)]
    one: i32,
}

const QUESTION: &str = "SELECT 1 AS one";

/// What one look at the writer changed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Change {
    None,
    /// It stopped answering: its calls now fail fast.
    Unreachable,
    /// It answers again.
    Reachable,
}

/// Asks `writer` once, and when it gives no answer within [`TIMEOUT`],
/// once more at once on a new connection (the silent one is closed): two
/// silences in a row make it unreachable, so one lost packet or one slow
/// moment does not. Any answer, an error included, makes it reachable. A
/// refused or broken connection changes nothing: calls to a writer that
/// refuses them fail fast by themselves. Nor is a writer the watchdog never
/// reached marked: that is the calls' own failure to report (a wrong
/// address, a credentials provider that is slow at start).
pub(crate) async fn look(writer: &Arc<Node>, probes: &Probes) -> Change {
    let mut silences = Vec::new();
    while silences.len() < 2 {
        match probes.query::<One>(&writer.url, QUESTION).await {
            Ok(_) | Err(Unanswered::Refused(_)) => {
                if writer.health.mark_reachable() {
                    tracing::info!(node = %writer.label, "writer answers again: calls to it resume");
                    return Change::Reachable;
                }
                return Change::None;
            }
            Err(Unanswered::Lost(_)) => return Change::None,
            Err(Unanswered::Silent(reason)) => silences.push(reason),
        }
    }
    if !probes.has_answered(&writer.url) {
        return Change::None;
    }
    let reason = format!("watchdog: {}", silences.join("; then "));
    if !Tracker::mark_unreachable(writer, reason.clone()) {
        return Change::None;
    }
    tracing::warn!(
        node = %writer.label,
        %reason,
        "writer does not answer: calls to it fail fast until it answers or another writer is found"
    );
    Change::Unreachable
}
