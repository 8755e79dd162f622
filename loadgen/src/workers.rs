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
use crate::own_writes;
use crate::repo::{Items, NodeRow};
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
    pub(crate) db: Items,
    pub(crate) task: u32,
    rng: Rng,
    ids: Ids,
    /// With `--tenants`: the tenants and their ids; each operation picks
    /// one. Empty: untenanted, on `ids`.
    tenants: Arc<[(Tenant, Ids)]>,
    read_ratio: f64,
    /// With `--read-your-writes`: each operation writes a row of this
    /// task's own and reads it back with the write's token.
    read_your_writes: bool,
    /// `--concurrency`: with `--read-your-writes`, task `task` owns the ids
    /// `ids.lo + task + k * tasks`.
    tasks: u32,
    /// This run's seed, in the values written with `--read-your-writes`,
    /// so that no earlier run's value passes for this run's.
    pub(crate) run: u64,
    /// When the clock started, for the timeline and the fault times.
    pub(crate) start: Instant,
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

impl Worker {
    /// Counts a successful read served by `node` that took `took` and
    /// ended at `done`.
    pub(crate) fn read_ok(&self, stats: &mut Stats, node: &NodeRow, took: Duration, done: Instant) {
        stats
            .read_latency_us
            .saturating_record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
        stats.reads_ok += 1;
        stats.per_node.entry(node.key()).or_default().0 += 1;
        self.live.reads.fetch_add(1, Ordering::Relaxed);
        if let Some(timeline) = &mut stats.timeline {
            timeline.read(bucket(self.start, done), node.host.as_deref(), node.port);
        }
        if let Some(faults) = &self.faults {
            faults.saw_read(node.host.as_deref(), node.port, done);
        }
    }

    /// Counts a successful write served by `node` that ended at `done`.
    pub(crate) fn write_ok(&self, stats: &mut Stats, node: &NodeRow, done: Instant) {
        stats.writes_ok += 1;
        stats.per_node.entry(node.key()).or_default().1 += 1;
        self.live.writes.fetch_add(1, Ordering::Relaxed);
        if let Some(timeline) = &mut stats.timeline {
            timeline.write(bucket(self.start, done));
        }
        if let Some(timeline) = &mut stats.failover {
            timeline.write_ok(bucket(self.start, done));
        }
        if let Some(failover) = &self.failover {
            failover.saw_write(node.host.as_deref(), node.port, done);
        }
    }
}

/// One task: reads and writes back to back until the deadline.
pub(crate) async fn worker(mut w: Worker) -> Stats {
    let mut stats = Stats::new(w.timeline, w.failover.is_some(), w.read_your_writes);
    let mut n = 0u64;
    while Instant::now() < w.deadline {
        if w.read_your_writes {
            n += 1;
            let id = own_writes::owned_id(&mut w.rng, w.ids, w.task, w.tasks);
            own_writes::operation(&w, &mut stats, id, n).await;
            continue;
        }
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
            match result {
                Ok((row, owner)) => {
                    check_owner(&mut stats, &w, tenant, owner.as_deref(), "read", id, done);
                    w.read_ok(&mut stats, &row, done.duration_since(started), done);
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
                    w.write_ok(&mut stats, &row, done);
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
    read_your_writes: bool,
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
                read_ratio: args.read_ratio(),
                read_your_writes: args.read_your_writes,
                tasks: args.concurrency,
                run: seed,
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
        read_your_writes: args.read_your_writes,
    }
}

impl Running {
    /// Waits for every worker and merges their counts; returns them with
    /// the run's length in seconds (operations still running at the
    /// deadline included).
    pub(crate) async fn join(self) -> Result<(Stats, f64), Fatal> {
        let mut totals = Stats::new(self.timeline, self.failover, self.read_your_writes);
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
