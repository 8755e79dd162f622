//! The lag monitor's samples, taken in the background on connections of
//! its own: on PostgreSQL each replica's replayed WAL position against the
//! writer's, on Aurora `aurora_replica_status()`'s reported lag.

use std::sync::Arc;

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Nullable};

use crate::aurora::{self, Endpoints, View};
use crate::config::ConsistencyConfig;
use crate::health::Tracker;
use crate::lag::Sample;
use crate::node::{Node, NodeId, Role};
use crate::probes::{Probes, Unanswered};
use crate::topology::Topology;

/// How lag is measured.
pub(crate) enum Source {
    /// WAL positions, on PostgreSQL.
    Wal,
    /// `aurora_replica_status()`, its `server_id`s made nodes by these.
    Aurora(Arc<Endpoints>),
}

/// The writer's WAL position, as bytes.
#[derive(QueryableByName)]
struct WriterPosition {
    #[diesel(sql_type = Nullable<BigInt>)]
    lsn: Option<i64>,
}

/// A replica's progress.
#[derive(QueryableByName)]
struct ReplicaPosition {
    #[diesel(sql_type = Nullable<BigInt>)]
    replayed: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    received: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    since_replay_ms: Option<i64>,
}

const WRITER_POSITION: &str =
    "SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), '0/0')::int8 AS lsn";

const REPLICA_POSITION: &str = "SELECT \
     pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_last_wal_replay_lsn(), '0/0')::int8 AS replayed, \
     pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_last_wal_receive_lsn(), '0/0')::int8 AS received, \
     (extract(epoch FROM pg_catalog.now() - pg_catalog.pg_last_xact_replay_timestamp()) \
     * 1000)::int8 AS since_replay_ms";

/// Samples every replica of `topology` once and records what it finds,
/// logging each replica that falls behind the limits or catches up.
/// A replica that cannot be asked keeps what was known of it: health,
/// not lag, deals with nodes that do not answer.
pub(crate) async fn sample(
    topology: &Topology,
    source: &Source,
    limits: &ConsistencyConfig,
    probes: &Probes,
) {
    probes.keep_only(
        std::iter::once(&topology.writer)
            .chain(&topology.replicas)
            .map(|node| &node.url),
    );
    let samples: Vec<(usize, Sample)> = match source {
        Source::Wal => sample_wal(topology, probes).await,
        Source::Aurora(endpoints) => sample_aurora(topology, endpoints, probes).await,
    };
    for (i, sample) in samples {
        let node = &topology.replicas[i];
        match node.lag.record(sample, limits) {
            Some(true) => tracing::warn!(
                node = %node.label,
                lag_ms = ?sample.lag_ms,
                lag_bytes = ?sample.lag_bytes,
                "replica behind the lag limit: no reads until it catches up"
            ),
            Some(false) => {
                tracing::info!(node = %node.label, "replica caught up: it takes reads again")
            }
            None => {}
        }
    }
}

async fn sample_wal(topology: &Topology, probes: &Probes) -> Vec<(usize, Sample)> {
    let Some(writer) = ask::<WriterPosition>(&topology.writer, WRITER_POSITION, probes)
        .await
        .and_then(|rows| rows.into_iter().next()?.lsn)
    else {
        return Vec::new();
    };
    let writer = u64::try_from(writer).unwrap_or(0);
    // One replica after the other on the monitor's own connections: a few
    // round trips every interval, off the read path.
    let mut samples = Vec::new();
    for (i, node) in topology.replicas.iter().enumerate() {
        let Some(position) = ask::<ReplicaPosition>(node, REPLICA_POSITION, probes)
            .await
            .and_then(|rows| rows.into_iter().next())
        else {
            continue;
        };
        let as_u64 = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
        let Some(replayed) = as_u64(position.replayed) else {
            // Not in recovery: a promoted node, which discovery moves.
            continue;
        };
        let caught_up = replayed >= writer || as_u64(position.received) == Some(replayed);
        let lag_ms = if caught_up {
            Some(0)
        } else {
            as_u64(position.since_replay_ms).or(Some(0))
        };
        samples.push((
            i,
            Sample {
                replayed: Some(replayed),
                lag_ms,
                lag_bytes: Some(writer.saturating_sub(replayed)),
            },
        ));
    }
    samples
}

/// Each replica's lag as the writer's view reports it, read by the same
/// rules as discovery's: a replica whose lag is NULL gets a sample of no
/// known lag (it qualifies for no token), never 0.
async fn sample_aurora(
    topology: &Topology,
    endpoints: &Endpoints,
    probes: &Probes,
) -> Vec<(usize, Sample)> {
    let Some(rows) = ask::<aurora::Row>(&topology.writer, aurora::STATUS, probes).await else {
        return Vec::new();
    };
    View::read(rows, endpoints)
        .instances
        .into_iter()
        .filter(|instance| !instance.writer)
        .filter_map(|instance| {
            let id = NodeId::of(&instance.url);
            let i = topology.replicas.iter().position(|node| node.id == id)?;
            let sample = Sample {
                replayed: None,
                lag_ms: instance.lag_ms,
                lag_bytes: None,
            };
            Some((i, sample))
        })
        .collect()
}

/// Runs `sql` on the monitor's connection to `node`; `None` when that
/// fails (logged at debug). A replica that answered the monitor before and
/// now gives no answer within its timeout counts a failure in its health,
/// as a read that got none would: a replica cut off the network is ejected
/// within a few samples, before any read's own timeout fires. An answer,
/// even an error, counts nothing, and neither does a replica the monitor
/// never reached (a first connection slowed by a credentials provider is
/// no sign of a failing node); the reads' successes reset the count.
async fn ask<R>(node: &Arc<Node>, sql: &'static str, probes: &Probes) -> Option<Vec<R>>
where
    R: QueryableByName<diesel::pg::Pg> + Send + 'static,
{
    match probes.query(&node.url, sql).await {
        Ok(rows) => Some(rows),
        Err(error) => {
            tracing::debug!(node = %node.label, %error, "lag sample failed");
            if let Unanswered::Lost(reason) | Unanswered::Silent(reason) = error
                && node.role == Role::Replica
                && probes.has_answered(&node.url)
            {
                Tracker::record_failure(node, format!("lag sample: {reason}"));
            }
            None
        }
    }
}
