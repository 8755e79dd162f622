//! Replica lag: what is known of each replica's progress ([`Lag`]), and the
//! samples that the monitor takes in the background on connections of its
//! own: on PostgreSQL each replica's replayed WAL position against the
//! writer's, on Aurora `aurora_replica_status()`'s reported lag.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel_async::AsyncPgConnection;

use crate::config::ConsistencyConfig;
use crate::connector::Probes;
use crate::consistency::{WriteToken, unix_ms};
use crate::node::{Node, NodeId};
use crate::topology::Topology;
use crate::url::DatabaseUrl;

/// Not known.
const UNKNOWN: u64 = u64::MAX;

/// What is known of one replica's progress. Written by the monitor (and,
/// for the replayed position, by reads that waited for a token), read on
/// the read path without a lock.
pub(crate) struct Lag {
    /// The highest WAL position known replayed, 0 when none is.
    replayed: AtomicU64,
    /// Time lag at the last sample, ms.
    lag_ms: AtomicU64,
    /// WAL bytes not yet replayed at the last sample.
    lag_bytes: AtomicU64,
    /// When the last sample was taken, Unix ms.
    sampled_at: AtomicU64,
    /// Behind the configured limit: no reads.
    behind: AtomicBool,
}

impl Default for Lag {
    fn default() -> Self {
        Self {
            replayed: AtomicU64::new(0),
            lag_ms: AtomicU64::new(UNKNOWN),
            lag_bytes: AtomicU64::new(UNKNOWN),
            sampled_at: AtomicU64::new(0),
            behind: AtomicBool::new(false),
        }
    }
}

/// One sample of a replica.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Sample {
    pub(crate) replayed: Option<u64>,
    pub(crate) lag_ms: Option<u64>,
    pub(crate) lag_bytes: Option<u64>,
}

impl Lag {
    pub(crate) fn is_behind(&self) -> bool {
        self.behind.load(Ordering::Relaxed)
    }

    /// Time lag at the last sample.
    pub(crate) fn lag(&self) -> Option<Duration> {
        known(&self.lag_ms).map(Duration::from_millis)
    }

    pub(crate) fn lag_bytes(&self) -> Option<u64> {
        known(&self.lag_bytes)
    }

    /// Whether the replica is known to hold the write of `token`: it
    /// replayed past its position, or (Aurora, `by_time`) its data was no
    /// older than the write when last sampled.
    pub(crate) fn has_replayed(&self, token: &WriteToken, by_time: bool) -> bool {
        if by_time {
            let (Some(lag), sampled) =
                (known(&self.lag_ms), self.sampled_at.load(Ordering::Relaxed))
            else {
                return false;
            };
            sampled != 0 && sampled.saturating_sub(lag) > token.at_ms
        } else {
            token.lsn != WriteToken::UNKNOWN_LSN
                && self.replayed.load(Ordering::Relaxed) >= token.lsn
        }
    }

    /// The replica was seen to have replayed `lsn`.
    pub(crate) fn replayed_at_least(&self, lsn: u64) {
        self.replayed.fetch_max(lsn, Ordering::Relaxed);
    }

    /// Records a sample and whether it puts the replica behind `limits`;
    /// returns `Some(behind)` when that changed.
    fn record(&self, sample: Sample, limits: &ConsistencyConfig) -> Option<bool> {
        if let Some(lsn) = sample.replayed {
            self.replayed_at_least(lsn);
        }
        self.lag_ms
            .store(sample.lag_ms.unwrap_or(UNKNOWN), Ordering::Relaxed);
        self.lag_bytes
            .store(sample.lag_bytes.unwrap_or(UNKNOWN), Ordering::Relaxed);
        self.sampled_at.store(unix_ms(), Ordering::Relaxed);
        let over_time = limits
            .max_replica_lag
            .zip(sample.lag_ms)
            .is_some_and(|(limit, lag)| u128::from(lag) > limit.as_millis());
        let over_bytes = limits
            .max_replica_lag_bytes
            .zip(sample.lag_bytes)
            .is_some_and(|(limit, lag)| lag > limit);
        let behind = over_time || over_bytes;
        (self.behind.swap(behind, Ordering::Relaxed) != behind).then_some(behind)
    }
}

fn known(value: &AtomicU64) -> Option<u64> {
    Some(value.load(Ordering::Relaxed)).filter(|&v| v != UNKNOWN)
}

/// The monitor's connections, one per node, kept between samples.
#[derive(Default)]
pub(crate) struct Connections(HashMap<NodeId, AsyncPgConnection>);

/// How lag is measured.
pub(crate) enum Source {
    /// WAL positions, on PostgreSQL.
    Wal,
    /// `aurora_replica_status()`, its `server_id`s made addresses with
    /// `pattern` and the settings of `template`.
    Aurora {
        pattern: String,
        template: Box<DatabaseUrl>,
    },
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

/// One Aurora replica's reported lag.
#[derive(QueryableByName)]
struct AuroraLag {
    #[diesel(sql_type = Text)]
    server_id: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    lag_ms: Option<i64>,
}

const WRITER_POSITION: &str =
    "SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), '0/0')::int8 AS lsn";

const REPLICA_POSITION: &str = "SELECT \
     pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_last_wal_replay_lsn(), '0/0')::int8 AS replayed, \
     pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_last_wal_receive_lsn(), '0/0')::int8 AS received, \
     (extract(epoch FROM pg_catalog.now() - pg_catalog.pg_last_xact_replay_timestamp()) \
     * 1000)::int8 AS since_replay_ms";

const AURORA_LAG: &str = "SELECT server_id::text AS server_id, \
     replica_lag_in_msec::int8 AS lag_ms FROM aurora_replica_status() \
     WHERE session_id <> 'MASTER_SESSION_ID' \
     AND last_update_timestamp > now() - interval '5 minutes'";

/// Samples every replica of `topology` once and records what it finds,
/// logging each replica that falls behind the limits or catches up.
/// A replica that cannot be asked keeps what was known of it: health,
/// not lag, deals with nodes that do not answer.
pub(crate) async fn sample(
    topology: &Topology,
    source: &Source,
    limits: &ConsistencyConfig,
    probes: &Probes,
    connections: &mut Connections,
) {
    let live: Vec<&NodeId> = std::iter::once(&topology.writer.id)
        .chain(topology.replicas.iter().map(|node| &node.id))
        .collect();
    connections.0.retain(|id, _| live.contains(&id));
    let samples: Vec<(usize, Sample)> = match source {
        Source::Wal => sample_wal(topology, probes, connections).await,
        Source::Aurora { pattern, template } => {
            sample_aurora(topology, pattern, template, probes, connections).await
        }
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

async fn sample_wal(
    topology: &Topology,
    probes: &Probes,
    connections: &mut Connections,
) -> Vec<(usize, Sample)> {
    let Some(writer) =
        ask::<WriterPosition>(&topology.writer, WRITER_POSITION, probes, connections)
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
        let Some(position) = ask::<ReplicaPosition>(node, REPLICA_POSITION, probes, connections)
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

async fn sample_aurora(
    topology: &Topology,
    pattern: &str,
    template: &DatabaseUrl,
    probes: &Probes,
    connections: &mut Connections,
) -> Vec<(usize, Sample)> {
    let Some(rows) = ask::<AuroraLag>(&topology.writer, AURORA_LAG, probes, connections).await
    else {
        return Vec::new();
    };
    let mut samples = Vec::new();
    for row in rows {
        let address = pattern.replace('?', row.server_id.trim());
        let Ok(url) = template.with_address(&address) else {
            continue;
        };
        let id = NodeId::of(&url);
        if let Some(i) = topology.replicas.iter().position(|node| node.id == id) {
            let lag_ms = row.lag_ms.and_then(|v| u64::try_from(v).ok());
            samples.push((
                i,
                Sample {
                    replayed: None,
                    lag_ms,
                    lag_bytes: None,
                },
            ));
        }
    }
    samples
}

/// Runs `sql` on the monitor's connection to `node`, opening it when
/// needed; `None` (and the connection dropped) when that fails.
async fn ask<R: QueryableByName<diesel::pg::Pg> + Send + 'static>(
    node: &Node,
    sql: &'static str,
    probes: &Probes,
    connections: &mut Connections,
) -> Option<Vec<R>> {
    use diesel_async::RunQueryDsl;

    let conn = match connections.0.entry(node.id.clone()) {
        std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
        std::collections::hash_map::Entry::Vacant(entry) => match probes.open(&node.url).await {
            Ok(conn) => entry.insert(conn),
            Err(error) => {
                tracing::debug!(node = %node.label, %error, "lag monitor cannot connect");
                return None;
            }
        },
    };
    let rows = tokio::time::timeout(probes.timeout(), diesel::sql_query(sql).load::<R>(conn)).await;
    match rows {
        Ok(Ok(rows)) => Some(rows),
        Ok(Err(error)) => {
            tracing::debug!(node = %node.label, %error, "lag sample failed");
            connections.0.remove(&node.id);
            None
        }
        Err(_) => {
            tracing::debug!(node = %node.label, "lag sample timed out");
            connections.0.remove(&node.id);
            None
        }
    }
}
