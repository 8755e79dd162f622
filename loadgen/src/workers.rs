//! The load: worker tasks issuing reads and writes back to back until the
//! deadline, each counting into its own [`Stats`] (what one task owns and
//! how it counts: [`Worker`]), the progress line, and the merge at the end.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use diesel_replica::Tenant;
use diesel_replica_testkit::Rng;

use crate::args::Args;
use crate::error::Fatal;
use crate::failover::FailoverClock;
use crate::faults::FaultClock;
use crate::own_writes;
use crate::repo::Items;
use crate::setup::Ids;
use crate::stats::Stats;
use crate::task::{Live, Op, Worker, check_owner, record_error};

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
pub(crate) fn pick_id(rng: &mut Rng, ids: Ids) -> i64 {
    let span = ids.hi.abs_diff(ids.lo) + 1;
    ids.lo.wrapping_add(rng.below(span) as i64)
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
    /// `workers` spawned elsewhere (`--through`, with no replica set), with
    /// the progress line of `live`: the same join and merge.
    pub(crate) fn of(
        workers: Vec<tokio::task::JoinHandle<Stats>>,
        live: Arc<Live>,
        start: Instant,
        timeline: bool,
    ) -> Self {
        Running {
            workers,
            progress: tokio::spawn(progress(start, live)),
            start,
            timeline,
            failover: false,
            read_your_writes: false,
        }
    }

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
