//! Writer failover with `--fail-over-at`: the primary of the local cluster
//! is killed and replica 0 promoted, and the replica set (configured with
//! candidate-hosts discovery) is to find it as the writer. The times of
//! the events, the writes either side, and writes per 100 ms bucket around
//! the failover.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use diesel_replica_testkit::{Cluster, NodeId};
use serde_json::{Value, json};

use crate::clock::{BUCKET_MS, UNSET, event_ms, ms_since, record_event};
use crate::local::blocking;
use crate::plan::FailoverPlan;

/// Buckets of the failover timeline shown before the kill.
pub(crate) const BUCKETS_BEFORE: u64 = 5;
/// Buckets of the failover timeline shown after the first write on the new
/// writer.
pub(crate) const BUCKETS_AFTER: u64 = 10;

/// A node of the local cluster: `host:port` and its parts, as the server
/// reports them.
struct LocalNode {
    address: String,
    port: i32,
}

impl LocalNode {
    /// The host every node of a local cluster listens on, and reports.
    const HOST: &str = "127.0.0.1";

    fn of(cluster: &Cluster, id: NodeId) -> Self {
        let port = cluster.node(id).port();
        Self {
            address: format!("{}:{port}", Self::HOST),
            port: i32::from(port),
        }
    }

    fn is(&self, host: Option<&str>, port: i32) -> bool {
        port == self.port && host == Some(Self::HOST)
    }
}

/// When each failover event happened, in ms since the start of the run
/// ([`UNSET`] until it does), shared by the failover task, the node watch
/// and the workers.
pub(crate) struct FailoverClock {
    start: Instant,
    /// The primary at the start, killed.
    old: LocalNode,
    /// Replica 0, promoted.
    new: LocalNode,
    kill_issued: AtomicU64,
    killed: AtomicU64,
    promote_issued: AtomicU64,
    promoted: AtomicU64,
    /// The library's writer was first seen to be the promoted node.
    switched: AtomicU64,
    /// The first successful write that the promoted node served ended.
    first_new_write: AtomicU64,
    /// 1 + the ms at which the last successful write that the old primary
    /// served ended; 0 for none.
    last_old_write: AtomicU64,
}

impl FailoverClock {
    /// The failover of `cluster`'s primary to its replica 0, in a run that
    /// started at `start`.
    pub(crate) fn new(start: Instant, cluster: &Cluster) -> Self {
        let unset = || AtomicU64::new(UNSET);
        Self {
            start,
            old: LocalNode::of(cluster, cluster.primary_id()),
            new: LocalNode::of(cluster, NodeId::Replica(0)),
            kill_issued: unset(),
            killed: unset(),
            promote_issued: unset(),
            promoted: unset(),
            switched: unset(),
            first_new_write: unset(),
            last_old_write: AtomicU64::new(0),
        }
    }

    /// Records `event` as happening now (once) and prints it on stderr.
    fn record(&self, event: &AtomicU64, what: impl std::fmt::Display) {
        record_event(self.start, event, what);
    }

    /// A successful write served by `host:port` ended at `done`: the last
    /// one on the old primary and the first one on the promoted node are
    /// kept (and the latter printed).
    pub(crate) fn saw_write(&self, host: Option<&str>, port: i32, done: Instant) {
        let at = ms_since(self.start, done);
        if self.old.is(host, port) {
            self.last_old_write.fetch_max(at + 1, Ordering::Relaxed);
        } else if self.new.is(host, port)
            && event_ms(&self.first_new_write).is_none()
            && self
                .first_new_write
                .compare_exchange(UNSET, at, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            eprintln!(
                "loadgen: t={:.3}s first write served by the promoted replica-0 ({})",
                at as f64 / 1000.0,
                self.new.address
            );
        }
    }

    /// The library's writer is `address` now: the first time it is the
    /// promoted node is recorded.
    pub(crate) fn saw_writer(&self, address: &str) {
        if address == self.new.address {
            self.record(
                &self.switched,
                format_args!("the library's writer is now replica-0 ({address})"),
            );
        }
    }

    /// The buckets of the failover timeline: from [`BUCKETS_BEFORE`] before
    /// the kill to [`BUCKETS_AFTER`] after the first write on the promoted
    /// node, within the run's `buckets`.
    fn window(&self, buckets: u64) -> Range<u64> {
        let bucket = |event: &AtomicU64| event_ms(event).map(|ms| ms / BUCKET_MS);
        let from = bucket(&self.kill_issued).map_or(0, |b| b.saturating_sub(BUCKETS_BEFORE));
        let to = bucket(&self.first_new_write).map_or(buckets, |b| b + BUCKETS_AFTER + 1);
        from..to.min(buckets)
    }

    /// The `failover` object of the summary, with the timeline of a run of
    /// `elapsed_s` seconds.
    pub(crate) fn to_json(&self, timeline: Option<&WriteTimeline>, elapsed_s: f64) -> Value {
        let promoted = event_ms(&self.promoted);
        let first = event_ms(&self.first_new_write);
        let last_old = AtomicU64::load(&self.last_old_write, Ordering::Relaxed).checked_sub(1);
        let between = |from: Option<u64>, to: Option<u64>| {
            from.zip(to).map(|(from, to)| to as i64 - from as i64)
        };
        let buckets = timeline.map_or(0, |t| t.buckets(elapsed_s));
        json!({
            "old_writer": self.old.address,
            "new_writer": self.new.address,
            "kill_issued_at_ms": event_ms(&self.kill_issued),
            "killed_at_ms": event_ms(&self.killed),
            "promote_issued_at_ms": event_ms(&self.promote_issued),
            "promoted_at_ms": promoted,
            "writer_switched_at_ms": event_ms(&self.switched),
            "last_write_on_old_writer_at_ms": last_old,
            "first_write_on_new_writer_at_ms": first,
            "promotion_to_first_write_ms": between(promoted, first),
            "writes_down_ms": between(last_old, first),
            "timeline": timeline.map(|t| t.to_json(self.window(buckets))),
        })
    }
}

/// Kills the primary and promotes replica 0 as planned. The testkit's
/// calls block (the promotion until replica 0 is out of recovery), so they
/// run on the blocking pool while the workers go on.
pub(crate) async fn fail_over(
    cluster: Arc<Cluster>,
    plan: FailoverPlan,
    clock: Arc<FailoverClock>,
) -> Result<(), String> {
    let (primary, replica) = (cluster.primary_id(), NodeId::Replica(0));
    let (old, new) = (clock.old.address.clone(), clock.new.address.clone());
    let kill_at = clock.start + plan.kill_at;
    tokio::time::sleep_until(kill_at.into()).await;
    clock.record(
        &clock.kill_issued,
        format_args!("killing the primary ({old}): immediate shutdown"),
    );
    blocking(&cluster, move |cluster| cluster.kill(primary))
        .await
        .map_err(|e| format!("cannot kill the primary ({old}): {e}"))?;
    clock.record(&clock.killed, "the primary is down (pg_ctl stop returned)");
    tokio::time::sleep_until((kill_at + plan.promote_after).into()).await;
    clock.record(
        &clock.promote_issued,
        format_args!("promoting replica-0 ({new})"),
    );
    blocking(&cluster, move |cluster| cluster.promote(replica))
        .await
        .map_err(|e| format!("cannot promote replica-0 ({new}): {e}"))?;
    clock.record(
        &clock.promoted,
        "replica-0 is promoted (pg_ctl promote returned, out of recovery)",
    );
    Ok(())
}

/// Writes per 100 ms bucket (by the time they ended) with their errors by
/// kind, and failed reads, kept by one task without sharing and merged at
/// the end.
#[derive(Default)]
pub(crate) struct WriteTimeline {
    writes_ok: Vec<u64>,
    /// Failed writes per bucket, by kind.
    writes_err: BTreeMap<&'static str, Vec<u64>>,
    reads_err: Vec<u64>,
}

impl WriteTimeline {
    fn add(counts: &mut Vec<u64>, bucket: usize, n: u64) {
        if counts.len() <= bucket {
            counts.resize(bucket + 1, 0);
        }
        counts[bucket] += n;
    }

    /// A successful write.
    pub(crate) fn write_ok(&mut self, bucket: usize) {
        Self::add(&mut self.writes_ok, bucket, 1);
    }

    /// A failed write, of error `kind`.
    pub(crate) fn write_err(&mut self, bucket: usize, kind: &'static str) {
        Self::add(self.writes_err.entry(kind).or_default(), bucket, 1);
    }

    /// A failed read.
    pub(crate) fn read_err(&mut self, bucket: usize) {
        Self::add(&mut self.reads_err, bucket, 1);
    }

    pub(crate) fn merge(&mut self, other: Self) {
        let add_all = |mine: &mut Vec<u64>, theirs: Vec<u64>| {
            for (bucket, n) in theirs.into_iter().enumerate() {
                Self::add(mine, bucket, n);
            }
        };
        add_all(&mut self.writes_ok, other.writes_ok);
        add_all(&mut self.reads_err, other.reads_err);
        for (kind, counts) in other.writes_err {
            add_all(self.writes_err.entry(kind).or_default(), counts);
        }
    }

    /// The buckets of a run of `elapsed_s`, and any after it.
    fn buckets(&self, elapsed_s: f64) -> u64 {
        let run = (elapsed_s * 1000.0 / BUCKET_MS as f64).ceil() as usize;
        [&self.writes_ok, &self.reads_err]
            .into_iter()
            .chain(self.writes_err.values())
            .map(Vec::len)
            .fold(run, usize::max) as u64
    }

    /// One object per bucket of `window`; `writes_err` holds only the
    /// kinds that bucket saw.
    fn to_json(&self, window: Range<u64>) -> Value {
        let at = |counts: &Vec<u64>, bucket: u64| {
            usize::try_from(bucket)
                .ok()
                .and_then(|b| counts.get(b).copied())
                .unwrap_or(0)
        };
        window
            .map(|bucket| {
                let errors: serde_json::Map<String, Value> = self
                    .writes_err
                    .iter()
                    .map(|(kind, counts)| (*kind, at(counts, bucket)))
                    .filter(|&(_, n)| n > 0)
                    .map(|(kind, n)| (kind.to_owned(), json!(n)))
                    .collect();
                json!({
                    "t_ms": bucket * BUCKET_MS,
                    "writes_ok": at(&self.writes_ok, bucket),
                    "writes_err": errors,
                    "reads_err": at(&self.reads_err, bucket),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeline_merges_tasks_and_shows_errors_by_kind() {
        let mut one = WriteTimeline::default();
        one.write_ok(0);
        one.write_err(1, "query");
        let mut two = WriteTimeline::default();
        two.write_ok(0);
        two.write_err(1, "writer_unavailable");
        two.write_err(2, "writer_unavailable");
        two.read_err(2);
        one.merge(two);
        assert_eq!(one.buckets(0.25), 3);
        assert_eq!(
            one.to_json(0..3),
            json!([
                {"t_ms": 0, "writes_ok": 2, "writes_err": {}, "reads_err": 0},
                {"t_ms": 100, "writes_ok": 0,
                 "writes_err": {"query": 1, "writer_unavailable": 1}, "reads_err": 0},
                {"t_ms": 200, "writes_ok": 0, "writes_err": {"writer_unavailable": 1},
                 "reads_err": 1},
            ])
        );
    }
}
