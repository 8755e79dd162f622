//! One worker task: what it owns, and how it counts the outcome of an
//! operation into its own [`Stats`] and the counts shared with the progress
//! line.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel_replica::{Error, Tenant};
use diesel_replica_testkit::Rng;

use crate::clock::bucket;
use crate::error::{Chain, print_first};
use crate::failover::FailoverClock;
use crate::faults::FaultClock;
use crate::repo::{Items, NodeRow};
use crate::setup::Ids;
use crate::stats::Stats;

/// Counts shared with the progress line, bumped once per operation.
#[derive(Default)]
pub(crate) struct Live {
    pub(crate) reads: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) errors: AtomicU64,
}

impl Live {
    /// `(reads, writes, errors)` now. (Spelled `AtomicU64::load` because
    /// diesel-async's `RunQueryDsl::load` would otherwise be picked.)
    pub(crate) fn snapshot(&self) -> (u64, u64, u64) {
        let get = |counter| AtomicU64::load(counter, Ordering::Relaxed);
        (get(&self.reads), get(&self.writes), get(&self.errors))
    }

    /// Counts a successful read served by `node` that took `took` and
    /// ended at `done`, the run having started at `start`.
    pub(crate) fn read_ok(
        &self,
        stats: &mut Stats,
        start: Instant,
        node: &NodeRow,
        took: Duration,
        done: Instant,
    ) {
        stats
            .read_latency_us
            .saturating_record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
        stats.reads_ok += 1;
        stats.per_node.entry(node.key()).or_default().0 += 1;
        self.reads.fetch_add(1, Ordering::Relaxed);
        if let Some(timeline) = &mut stats.timeline {
            timeline.read(bucket(start, done), node.host.as_deref(), node.port);
        }
    }

    /// Counts a successful write served by `node` that ended at `done`.
    pub(crate) fn write_ok(
        &self,
        stats: &mut Stats,
        start: Instant,
        node: &NodeRow,
        done: Instant,
    ) {
        stats.writes_ok += 1;
        stats.per_node.entry(node.key()).or_default().1 += 1;
        self.writes.fetch_add(1, Ordering::Relaxed);
        if let Some(timeline) = &mut stats.timeline {
            timeline.write(bucket(start, done));
        }
    }
}

/// What one worker task owns.
pub(crate) struct Worker {
    pub(crate) db: Items,
    pub(crate) task: u32,
    pub(crate) rng: Rng,
    pub(crate) ids: Ids,
    /// With `--tenants`: the tenants and their ids; each operation picks
    /// one. Empty: untenanted, on `ids`.
    pub(crate) tenants: Arc<[(Tenant, Ids)]>,
    pub(crate) read_ratio: f64,
    /// With `--read-your-writes`: each operation writes a row of this
    /// task's own and reads it back with the write's token.
    pub(crate) read_your_writes: bool,
    /// `--concurrency`: with `--read-your-writes`, task `task` owns the ids
    /// `ids.lo + task + k * tasks`.
    pub(crate) tasks: u32,
    /// This run's seed, in the values written with `--read-your-writes`,
    /// so that no earlier run's value passes for this run's.
    pub(crate) run: u64,
    /// When the clock started, for the timeline and the fault times.
    pub(crate) start: Instant,
    pub(crate) deadline: Instant,
    pub(crate) live: Arc<Live>,
    /// Kinds of error already printed, so that each is printed once.
    pub(crate) first_errors: Arc<Mutex<HashSet<&'static str>>>,
    /// Whether to keep a timeline.
    pub(crate) timeline: bool,
    /// The fault times, with `--kill-replica-at`.
    pub(crate) faults: Option<Arc<FaultClock>>,
    /// The failover times, with `--fail-over-at`.
    pub(crate) failover: Option<Arc<FailoverClock>>,
}

/// Which kind of operation failed.
#[derive(Clone, Copy)]
pub(crate) enum Op {
    Read,
    Write,
}

impl Worker {
    /// Counts a successful read served by `node` that took `took` and
    /// ended at `done`.
    pub(crate) fn read_ok(&self, stats: &mut Stats, node: &NodeRow, took: Duration, done: Instant) {
        self.live.read_ok(stats, self.start, node, took, done);
        if let Some(faults) = &self.faults {
            faults.saw_read(node.port, done);
        }
    }

    /// Counts a successful write served by `node` that ended at `done`.
    pub(crate) fn write_ok(&self, stats: &mut Stats, node: &NodeRow, done: Instant) {
        self.live.write_ok(stats, self.start, node, done);
        if let Some(timeline) = &mut stats.failover {
            timeline.write_ok(bucket(self.start, done));
        }
        if let Some(failover) = &self.failover {
            failover.saw_write(node.host.as_deref(), node.port, done);
        }
    }
}

/// Counts a successful operation scoped to `tenant` that returned a row of
/// `owner` (another tenant) as a cross-tenant violation, and prints the
/// first one.
pub(crate) fn check_owner(
    stats: &mut Stats,
    w: &Worker,
    tenant: Option<&Tenant>,
    owner: Option<&str>,
    op: &str,
    id: i64,
    done: Instant,
) {
    let (Some(tenant), Some(owner)) = (tenant, owner) else {
        return;
    };
    if owner == tenant.name() {
        return;
    }
    stats.cross_tenant_violations += 1;
    print_first(
        &w.first_errors,
        "cross_tenant_violation",
        w.start,
        done,
        format_args!(
            "cross-tenant violation: a {op} scoped to {tenant} returned row {id} of {owner}"
        ),
    );
}

/// Counts a failed operation that ended at `done`, and prints it if it is
/// the first of its kind.
pub(crate) fn record_error(stats: &mut Stats, w: &Worker, error: &Error, op: Op, done: Instant) {
    let kind = error.kind().as_str();
    *stats.errors.entry(kind).or_default() += 1;
    w.live.errors.fetch_add(1, Ordering::Relaxed);
    if let Some(timeline) = &mut stats.timeline {
        timeline.error(bucket(w.start, done));
    }
    if let Some(timeline) = &mut stats.failover {
        match op {
            Op::Read => timeline.read_err(bucket(w.start, done)),
            Op::Write => timeline.write_err(bucket(w.start, done), kind),
        }
    }
    print_first(
        &w.first_errors,
        kind,
        w.start,
        done,
        format_args!("{kind} error: {}", Chain(error)),
    );
}
