//! `--read-your-writes`: each operation rewrites a row of its task's own in
//! a read-your-writes session, carries the write's token through its string
//! form (as a cookie or a header would) into a fresh session, and reads the
//! row back through a `#[read_only]` method given that session. What those
//! reads saw, where they ran, and how long they took.

use std::time::Instant;

use diesel_replica::ReadYourWrites;
use hdrhistogram::Histogram;
use replica_testkit::Rng;
use serde_json::{Value, json};

use crate::Fatal;
use crate::report::{Chain, MAX_LATENCY_US, Stats};
use crate::setup::Ids;
use crate::workers::{Op, Worker, record_error};

/// Stale reads printed on stderr per task; all are counted.
const STALE_SHOWN: u64 = 5;

/// What the token reads of one task (or, merged, of the run) saw.
pub(crate) struct TokenReads {
    /// Successful reads that did not return the value their own write put.
    pub(crate) stale: u64,
    /// Successful reads served by a replica (in recovery).
    on_replicas: u64,
    /// Successful reads served by the writer.
    on_writer: u64,
    /// Latency of every successful token read, in µs.
    all: Histogram<u64>,
    /// Latency of those served by a replica.
    replica: Histogram<u64>,
    /// Latency of those served by the writer.
    writer: Histogram<u64>,
    /// Latency of the successful writes, in µs (their token costs one
    /// statement after the commit).
    writes: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant bounds are valid")
}

impl TokenReads {
    pub(crate) fn new() -> Self {
        Self {
            stale: 0,
            on_replicas: 0,
            on_writer: 0,
            all: histogram(),
            replica: histogram(),
            writer: histogram(),
            writes: histogram(),
        }
    }

    pub(crate) fn merge(&mut self, other: &Self) {
        self.stale += other.stale;
        self.on_replicas += other.on_replicas;
        self.on_writer += other.on_writer;
        for (mine, theirs) in [
            (&mut self.all, &other.all),
            (&mut self.replica, &other.replica),
            (&mut self.writer, &other.writer),
            (&mut self.writes, &other.writes),
        ] {
            mine.add(theirs)
                .expect("histograms with the same bounds always add");
        }
    }

    /// A successful token read of `micros`, on a replica or the writer.
    fn read(&mut self, on_replica: bool, micros: u64) {
        self.all.saturating_record(micros);
        if on_replica {
            self.on_replicas += 1;
            self.replica.saturating_record(micros);
        } else {
            self.on_writer += 1;
            self.writer.saturating_record(micros);
        }
    }

    /// The `read_your_writes` object of the JSON summary.
    pub(crate) fn to_json(&self) -> Value {
        let quantiles = |h: &Histogram<u64>| {
            let at = |q: f64| (!h.is_empty()).then(|| h.value_at_quantile(q));
            (at(0.5), at(0.99))
        };
        let (p50, p99) = quantiles(&self.all);
        let (replica_p50, replica_p99) = quantiles(&self.replica);
        let (writer_p50, writer_p99) = quantiles(&self.writer);
        let (write_p50, write_p99) = quantiles(&self.writes);
        let reads = self.on_replicas + self.on_writer;
        let share =
            |n: u64| (reads > 0).then(|| (n as f64 / reads as f64 * 10_000.0).round() / 10_000.0);
        json!({
            "token_reads": reads,
            "stale_reads": self.stale,
            "on_replicas": self.on_replicas,
            "on_writer": self.on_writer,
            "replica_share": share(self.on_replicas),
            "writer_share": share(self.on_writer),
            "read_p50_us": p50,
            "read_p99_us": p99,
            "replica_read_p50_us": replica_p50,
            "replica_read_p99_us": replica_p99,
            "writer_read_p50_us": writer_p50,
            "writer_read_p99_us": writer_p99,
            "write_p50_us": write_p50,
            "write_p99_us": write_p99,
        })
    }

    /// One line for stderr.
    pub(crate) fn line(&self) -> String {
        let reads = self.on_replicas + self.on_writer;
        let pct = |n: u64| {
            if reads == 0 {
                0.0
            } else {
                100.0 * n as f64 / reads as f64
            }
        };
        format!(
            "{reads} token reads: {} on replicas ({:.1} %), {} on the writer ({:.1} %), \
             {} stale",
            self.on_replicas,
            pct(self.on_replicas),
            self.on_writer,
            pct(self.on_writer),
            self.stale
        )
    }
}

/// Refuses a table too small for every task to own a row: task `t` of
/// `tasks` owns the ids `ids.lo + t + k * tasks`.
pub(crate) fn check_rows(ids: Ids, tasks: u32) -> Result<(), Fatal> {
    let span = ids.hi.abs_diff(ids.lo) + 1;
    if span < u64::from(tasks) {
        return Err(Fatal::new(format!(
            "--read-your-writes gives each task rows of its own, but loadgen_items has ids \
             {}..={} ({span}), fewer than --concurrency {tasks}",
            ids.lo, ids.hi
        )));
    }
    Ok(())
}

/// A random id of those that task `task` of `tasks` owns (after
/// [`check_rows`]): no other task writes its rows, so a read of one sees
/// either this task's last write or an older value, never another task's.
pub(crate) fn owned_id(rng: &mut Rng, ids: Ids, task: u32, tasks: u32) -> i64 {
    let (task, tasks) = (u64::from(task), u64::from(tasks));
    let span = ids.hi.abs_diff(ids.lo) + 1;
    // Ids lo + task, lo + task + tasks, ... up to hi.
    let owned = (span - task).div_ceil(tasks);
    ids.lo
        .wrapping_add((task + tasks * rng.below(owned)) as i64)
}

/// One operation: rewrites row `id` with a value no other operation
/// writes, in a session that records the write's token; hands the token on
/// as a string, as to another request; reads the row back in a session
/// resumed from it; counts the read as stale if it did not see the value.
/// Operation `n` of the task.
pub(crate) async fn operation(w: &Worker, stats: &mut Stats, id: i64, n: u64) {
    let value = format!("rw {:016x} task {} #{n}", w.run, w.task);
    let session = ReadYourWrites::new();
    let started = Instant::now();
    let written = w.db.touch_in(&session, id, &value).await;
    let done = Instant::now();
    let node = match written {
        Ok(node) => node,
        Err(e) => {
            stats.writes_err += 1;
            record_error(stats, w, &e, Op::Write, done);
            return;
        }
    };
    w.write_ok(stats, &node, done);
    let tokens = stats
        .token_reads
        .as_mut()
        .expect("a --read-your-writes run");
    tokens.writes.saturating_record(micros(started, done));
    // The string form, as a client would send it back; `None` (a write
    // that left no token, which the library should not allow) resumes a
    // session without one, whose read may then be stale.
    let token = session.token().map(|token| token.to_string());
    let carried = match ReadYourWrites::resume(token.as_deref()) {
        Ok(carried) => carried,
        Err(e) => {
            stats.reads_err += 1;
            *stats.errors.entry("token").or_default() += 1;
            eprintln!(
                "loadgen: a write's own token did not parse back: {}",
                Chain(&e)
            );
            return;
        }
    };
    let started = Instant::now();
    let read = w.db.item_after(&carried, id).await;
    let done = Instant::now();
    match read {
        Ok(row) => {
            w.read_ok(stats, &row.node, done.duration_since(started), done);
            let tokens = stats
                .token_reads
                .as_mut()
                .expect("a --read-your-writes run");
            tokens.read(row.in_recovery, micros(started, done));
            if row.payload != value {
                tokens.stale += 1;
                // Each one in detail, up to a few per task.
                if tokens.stale > STALE_SHOWN {
                    return;
                }
                eprintln!(
                    "loadgen: t={:.3}s STALE READ: row {id} written on {} with token {}, \
                     read back on {} ({}) without that write",
                    done.saturating_duration_since(w.start).as_secs_f64(),
                    node.key(),
                    token.as_deref().unwrap_or("(none)"),
                    row.node.key(),
                    if row.in_recovery {
                        "a replica"
                    } else {
                        "the writer"
                    },
                );
            }
        }
        Err(e) => {
            stats.reads_err += 1;
            record_error(stats, w, &e, Op::Read, done);
        }
    }
}

fn micros(from: Instant, to: Instant) -> u64 {
    u64::try_from(to.duration_since(from).as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_task_picks_only_its_own_ids() {
        let ids = Ids { lo: 11, hi: 20 };
        assert!(check_rows(ids, 10).is_ok());
        assert!(check_rows(ids, 11).is_err());
        let mut rng = Rng::new(7);
        for tasks in [1, 3, 4, 10] {
            let mut seen = std::collections::HashSet::new();
            for task in 0..tasks {
                for _ in 0..200 {
                    let id = owned_id(&mut rng, ids, task, tasks);
                    assert!((ids.lo..=ids.hi).contains(&id), "{id}");
                    assert_eq!((id - ids.lo) as u32 % tasks, task, "{id}");
                    seen.insert(id);
                }
            }
            // Together the tasks reach every row.
            assert_eq!(seen.len(), 10, "{tasks} tasks");
        }
    }
}
