//! `--read-your-writes`: each operation rewrites a row of its task's own in
//! a read-your-writes session, carries the write's token through its string
//! form (as a cookie or a header would) into a fresh session, and reads the
//! row back through a `#[read_only]` method given that session; and which
//! rows each task owns. What those reads saw is counted in
//! [`TokenReads`](crate::token_reads::TokenReads).

use std::time::Instant;

use diesel_replica::ReadYourWrites;
use diesel_replica_testkit::Rng;

use crate::error::{Chain, Fatal};
use crate::setup::Ids;
use crate::stats::Stats;
use crate::task::{Op, Worker, record_error};

/// Stale reads printed on stderr per task; all are counted.
const STALE_SHOWN: u64 = 5;

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
    tokens.write(micros(started, done));
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
