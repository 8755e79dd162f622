//! The load: worker tasks issuing reads and writes back to back until the
//! deadline, each counting into its own [`Stats`], and the progress line.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use diesel_replica::{Error, Tenant};
use replica_testkit::Rng;

use crate::Fatal;
use crate::args::Args;
use crate::failover::FailoverClock;
use crate::faults::FaultClock;
use crate::repo::Items;
use crate::report::{Chain, Stats, bucket};
use crate::setup::Ids;

/// Counts shared with the progress line, bumped once per operation.
#[derive(Default)]
pub(crate) struct Live {
    reads: AtomicU64,
    writes: AtomicU64,
    errors: AtomicU64,
}

impl Live {
    /// `(reads, writes, errors)` now. (Spelled `AtomicU64::load` because
    /// diesel-async's `RunQueryDsl::load` would otherwise be picked.)
    pub(crate) fn snapshot(&self) -> (u64, u64, u64) {
        let get = |counter| AtomicU64::load(counter, Ordering::Relaxed);
        (get(&self.reads), get(&self.writes), get(&self.errors))
    }
}

/// Prints one progress line per second, until aborted.
pub(crate) async fn progress(start: Instant, live: Arc<Live>) {
    let second = Duration::from_secs(1);
    let mut ticks = tokio::time::interval_at((start + second).into(), second);
    let (mut reads, mut writes) = (0, 0);
    for t in 1.. {
        ticks.tick().await;
        let (now_reads, now_writes, errors) = live.snapshot();
        eprintln!(
            "t={t}s reads={}/s writes={}/s errors={errors}",
            now_reads - reads,
            now_writes - writes,
        );
        (reads, writes) = (now_reads, now_writes);
    }
}

/// Uniform in `ids.lo..=ids.hi` (`lo <= hi`), up to a negligible modulo
/// bias.
fn pick_id(rng: &mut Rng, ids: Ids) -> i64 {
    let span = ids.hi.abs_diff(ids.lo) + 1;
    ids.lo.wrapping_add(rng.below(span) as i64)
}

/// What one worker task owns.
pub(crate) struct Worker {
    db: Items,
    task: u32,
    rng: Rng,
    ids: Ids,
    /// With `--tenants`: the tenants and their ids; each operation picks
    /// one. Empty: untenanted, on `ids`.
    tenants: Arc<[(Tenant, Ids)]>,
    read_ratio: f64,
    /// When the clock started, for the timeline and the fault times.
    start: Instant,
    deadline: Instant,
    live: Arc<Live>,
    /// Kinds of error already printed, so that each is printed once.
    first_errors: Arc<Mutex<HashSet<&'static str>>>,
    /// Whether to keep a timeline.
    timeline: bool,
    /// The fault times, with `--kill-replica-at`.
    faults: Option<Arc<FaultClock>>,
    /// The failover times, with `--fail-over-at`.
    failover: Option<Arc<FailoverClock>>,
}

/// Which kind of operation failed.
#[derive(Clone, Copy)]
pub(crate) enum Op {
    Read,
    Write,
}

/// One task: reads and writes back to back until the deadline.
pub(crate) async fn worker(mut w: Worker) -> Stats {
    let mut stats = Stats::new(w.timeline, w.failover.is_some());
    let mut n = 0u64;
    while Instant::now() < w.deadline {
        let (tenant, ids) = if w.tenants.is_empty() {
            (None, w.ids)
        } else {
            let (tenant, ids) = &w.tenants[w.rng.below(w.tenants.len() as u64) as usize];
            (Some(tenant), *ids)
        };
        let id = pick_id(&mut w.rng, ids);
        if w.rng.next_f64() < w.read_ratio {
            let started = Instant::now();
            let result = match tenant {
                Some(tenant) => {
                    w.db.tenant_item(tenant, id)
                        .await
                        .map(|row| (row.read.node, Some(row.tenant)))
                }
                None => w.db.item(id).await.map(|row| (row.node, None)),
            };
            let done = Instant::now();
            let micros = done.duration_since(started).as_micros();
            match result {
                Ok((row, owner)) => {
                    check_owner(&mut stats, &w, tenant, owner.as_deref(), "read", id, done);
                    stats
                        .read_latency_us
                        .saturating_record(u64::try_from(micros).unwrap_or(u64::MAX));
                    stats.reads_ok += 1;
                    stats.per_node.entry(row.key()).or_default().0 += 1;
                    w.live.reads.fetch_add(1, Ordering::Relaxed);
                    if let Some(timeline) = &mut stats.timeline {
                        timeline.read(bucket(w.start, done), row.host.as_deref(), row.port);
                    }
                    if let Some(faults) = &w.faults {
                        faults.saw_read(row.host.as_deref(), row.port, done);
                    }
                }
                Err(e) => {
                    stats.reads_err += 1;
                    record_error(&mut stats, &w, &e, Op::Read, done);
                }
            }
        } else {
            n += 1;
            let payload = format!("written by task {} (#{n})", w.task);
            let result = match tenant {
                Some(tenant) => {
                    w.db.tenant_touch(tenant, id, &payload)
                        .await
                        .map(|row| (row.node, Some(row.tenant)))
                }
                None => w.db.touch(id, &payload).await.map(|row| (row, None)),
            };
            let done = Instant::now();
            match result {
                Ok((row, owner)) => {
                    check_owner(&mut stats, &w, tenant, owner.as_deref(), "write", id, done);
                    stats.writes_ok += 1;
                    stats.per_node.entry(row.key()).or_default().1 += 1;
                    w.live.writes.fetch_add(1, Ordering::Relaxed);
                    if let Some(timeline) = &mut stats.timeline {
                        timeline.write(bucket(w.start, done));
                    }
                    if let Some(timeline) = &mut stats.failover {
                        timeline.write_ok(bucket(w.start, done));
                    }
                    if let Some(failover) = &w.failover {
                        failover.saw_write(row.host.as_deref(), row.port, done);
                    }
                }
                Err(e) => {
                    stats.writes_err += 1;
                    record_error(&mut stats, &w, &e, Op::Write, done);
                }
            }
        }
    }
    stats
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
    // Only violations get here, so the lock is off the hot path.
    let first = w
        .first_errors
        .lock()
        .map_or(true, |mut printed| printed.insert("cross_tenant_violation"));
    if first {
        eprintln!(
            "loadgen: t={:.3}s first cross-tenant violation: a {op} scoped to {tenant} \
             returned row {id} of {owner}",
            done.saturating_duration_since(w.start).as_secs_f64()
        );
    }
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
    // Only failed operations get here, so the lock is off the hot path.
    let first = w
        .first_errors
        .lock()
        .map_or(true, |mut printed| printed.insert(kind));
    if first {
        eprintln!(
            "loadgen: t={:.3}s first {kind} error: {}",
            done.saturating_duration_since(w.start).as_secs_f64(),
            Chain(error)
        );
    }
}

/// The worker tasks and the progress line of a run under way.
pub(crate) struct Running {
    workers: Vec<tokio::task::JoinHandle<Stats>>,
    progress: tokio::task::JoinHandle<()>,
    start: Instant,
    timeline: bool,
    failover: bool,
}

/// The clocks the workers report to, if any.
pub(crate) struct Clocks {
    /// With `--kill-replica-at`.
    pub(crate) faults: Option<Arc<FaultClock>>,
    /// With `--fail-over-at`.
    pub(crate) failover: Option<Arc<FailoverClock>>,
}

/// Spawns `--concurrency` workers that run from `start` to `deadline`, and
/// the progress line.
pub(crate) fn spawn(
    db: &Items,
    args: &Args,
    ids: Ids,
    tenants: Vec<(Tenant, Ids)>,
    start: Instant,
    deadline: Instant,
    clocks: Clocks,
) -> Running {
    let tenants: Arc<[(Tenant, Ids)]> = tenants.into();
    let live = Arc::new(Live::default());
    let first_errors = Arc::new(Mutex::new(HashSet::new()));
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let workers = (0..args.concurrency)
        .map(|task| {
            tokio::spawn(worker(Worker {
                db: db.clone(),
                task,
                rng: Rng::new(seed ^ u64::from(task)),
                ids,
                tenants: tenants.clone(),
                read_ratio: args.read_ratio,
                start,
                deadline,
                live: live.clone(),
                first_errors: first_errors.clone(),
                timeline: args.timeline,
                faults: clocks.faults.clone(),
                failover: clocks.failover.clone(),
            }))
        })
        .collect();
    Running {
        workers,
        progress: tokio::spawn(progress(start, live)),
        start,
        timeline: args.timeline,
        failover: clocks.failover.is_some(),
    }
}

impl Running {
    /// Waits for every worker and merges their counts; returns them with
    /// the run's length in seconds (operations still running at the
    /// deadline included).
    pub(crate) async fn join(self) -> Result<(Stats, f64), Fatal> {
        let mut totals = Stats::new(self.timeline, self.failover);
        let mut panicked = None;
        for handle in self.workers {
            match handle.await {
                Ok(stats) => totals.merge(stats),
                Err(e) => panicked = Some(e),
            }
        }
        let elapsed = self.start.elapsed().as_secs_f64();
        self.progress.abort();
        if let Some(e) = panicked {
            return Err(Fatal::new(format!("a worker task failed: {e}")));
        }
        Ok((totals, elapsed))
    }
}
