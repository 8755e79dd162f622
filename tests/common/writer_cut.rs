//! A writer that stops answering under load (paused, or cut off the network), then
//! comes back: what writers, fresh readers and readers see, measured and checked. Shared
//! by the fault tests (a pause) and the partition tests (a partition).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use diesel::QueryableByName;
use diesel::sql_types::Integer;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_replica::{Error, ErrorKind, Health, ReplicaSet};
use diesel_replica_testkit::{Cluster, who_served};
use tokio::task::JoinHandle;

use super::load::{SLACK, on_cluster};

/// The most the library takes to find a writer that stopped answering (README,
/// "Failures and balancing").
pub(crate) const DETECTION: Duration = Duration::from_secs(2);

/// How long a call refused at once may take, scheduling included.
const FAST: Duration = Duration::from_millis(250);

/// Tasks that write (one insert each, of a number of their own) and that read fresh.
const WRITERS: usize = 4;
const FRESH_READERS: usize = 2;
const READERS: usize = 4;

/// Something done to the cluster: a cut, a restore.
pub(crate) type Fault = fn(&Cluster) -> Result<(), diesel_replica_testkit::Error>;

/// One call: when it started and ended, relative to the load's start, and how.
#[derive(Debug)]
struct Call {
    started: Duration,
    took: Duration,
    /// The number written, for a write.
    x: Option<i32>,
    outcome: Result<(), (ErrorKind, String)>,
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Integer)]
    x: i32,
}

fn outcome<T>(result: Result<T, Error>) -> Result<(), (ErrorKind, String)> {
    result.map(drop).map_err(|e| (e.kind(), e.to_string()))
}

/// Runs `make(task)` in a loop on `tasks` tasks until `done`.
fn calls<F, Fut>(tasks: usize, done: &Arc<AtomicBool>, make: F) -> Vec<JoinHandle<Vec<Call>>>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = (Option<i32>, Result<(), (ErrorKind, String)>)> + Send,
{
    let start = Instant::now();
    (0..tasks)
        .map(|task| {
            let (done, make) = (Arc::clone(done), make.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !AtomicBool::load(&done, Ordering::Relaxed) {
                    let started = start.elapsed();
                    let (x, outcome) = make(task).await;
                    let took = start.elapsed() - started;
                    seen.push(Call {
                        started,
                        took,
                        x,
                        outcome,
                    });
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                seen
            })
        })
        .collect()
}

/// What the run measured, for the test's report.
#[derive(Debug)]
pub(crate) struct Figures {
    /// From the cut to the writer's status becoming unreachable.
    pub(crate) detected_after: Duration,
    /// From the cut to the first write refused at once.
    pub(crate) first_fast_failure_after: Duration,
    /// From the restore to the first write that succeeded.
    pub(crate) resumed_after: Duration,
    pub(crate) writes_ok: usize,
    pub(crate) writes_failed: usize,
    pub(crate) slowest_write: Duration,
}

/// Writes, fresh reads and reads on `db` while the writer is cut off by `cut` and then
/// restored by `restore`; checks that the writer is found unreachable within
/// [`DETECTION`], that calls to it then fail at once with a clear error, that reads never
/// fail, that writes resume by themselves, and that no write was lost or duplicated.
pub(crate) async fn writer_stops_answering(
    cluster: &Arc<Cluster>,
    db: ReplicaSet,
    cut: Fault,
    restore: Fault,
) -> Figures {
    let db = Arc::new(db);
    let base: i32 = db
        .read_fresh(async |conn: &mut AsyncPgConnection| {
            diesel::sql_query("SELECT coalesce(max(x), 0) + 1000 AS x FROM t")
                .get_result::<Row>(conn)
                .await
        })
        .await
        .unwrap()
        .x;
    let next = Arc::new(AtomicI32::new(base));
    let done = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let writes = calls(WRITERS, &done, {
        let (db, next) = (Arc::clone(&db), Arc::clone(&next));
        move |_| {
            let (db, x) = (Arc::clone(&db), next.fetch_add(1, Ordering::Relaxed));
            async move {
                let insert = db.write(async move |conn: &mut AsyncPgConnection| {
                    diesel::sql_query("INSERT INTO t VALUES ($1)")
                        .bind::<Integer, _>(x)
                        .execute(conn)
                        .await
                });
                (Some(x), outcome(insert.await))
            }
        }
    });
    let fresh = calls(FRESH_READERS, &done, {
        let db = Arc::clone(&db);
        move |_| {
            let db = Arc::clone(&db);
            async move { (None, outcome(db.read_fresh(who_served).await)) }
        }
    });
    let reads = calls(READERS, &done, {
        let db = Arc::clone(&db);
        move |_| {
            let db = Arc::clone(&db);
            async move { (None, outcome(db.read(who_served).await)) }
        }
    });

    tokio::time::sleep(Duration::from_secs(1)).await;
    let cut_at = start.elapsed();
    on_cluster(cluster, cut).await.unwrap();
    // Restored whatever happens next, so that a failure here leaves the cluster usable.
    let restore_guard = Restore(Some((Arc::clone(cluster), restore)));
    let detected_after = loop {
        let status = db.status();
        if status.writer.health == Health::Unreachable {
            assert!(!status.writer_available, "{status:?}");
            assert!(!status.healthy, "{status:?}");
            assert!(
                status
                    .writer
                    .last_error
                    .as_deref()
                    .is_some_and(|e| e.starts_with("watchdog: ")),
                "{:?}",
                status.writer
            );
            break start.elapsed() - cut_at;
        }
        assert!(
            start.elapsed() - cut_at < DETECTION + SLACK * 3,
            "the writer was not found unreachable: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // Unreachable for a while: every call to the writer that starts now fails at once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restore_at = start.elapsed();
    drop(restore_guard);
    let deadline = Instant::now() + DETECTION + SLACK * 3;
    while db.status().writer.health != Health::Up {
        assert!(
            Instant::now() < deadline,
            "the writer was not reachable again: {:?}",
            db.status()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    done.store(true, Ordering::Relaxed);
    let collect = async |tasks: Vec<JoinHandle<Vec<Call>>>| {
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        all
    };
    let (writes, fresh, reads) = (
        collect(writes).await,
        collect(fresh).await,
        collect(reads).await,
    );
    let detected_at = cut_at + detected_after;

    // Reads on the replicas never failed.
    let failed_reads: Vec<&Call> = reads.iter().filter(|c| c.outcome.is_err()).collect();
    assert!(failed_reads.is_empty(), "{failed_reads:?}");
    // While the writer was known unreachable (with room for the status to be seen),
    // each write and fresh read failed at once, with the error that says so.
    let during = |c: &&Call| {
        c.started > detected_at + Duration::from_millis(50) && c.started + FAST < restore_at
    };
    for call in writes.iter().chain(&fresh).filter(during) {
        match &call.outcome {
            Err((ErrorKind::WriterUnavailable, text)) if call.took <= FAST => {
                assert!(text.contains("does not answer"), "{text}");
                assert!(!text.contains("password"), "{text}");
            }
            other => panic!(
                "a call to an unreachable writer got {other:?} in {:?}",
                call.took
            ),
        }
    }
    assert!(writes.iter().filter(during).count() > 10, "{writes:?}");
    assert!(fresh.iter().filter(during).count() > 10, "{fresh:?}");
    // No write waited past the detection: those in flight at the cut ended with it.
    let slowest_write = writes.iter().map(|c| c.took).max().unwrap();
    assert!(
        slowest_write <= DETECTION + SLACK,
        "a write took {slowest_write:?}"
    );
    let first_fast_failure_after = writes
        .iter()
        .filter(|c| c.started >= cut_at && c.outcome.is_err() && c.took <= FAST)
        .map(|c| c.started + c.took - cut_at)
        .min()
        .expect("a write failed fast");
    let resumed_after = writes
        .iter()
        .filter(|c| c.started >= restore_at && c.outcome.is_ok())
        .map(|c| c.started + c.took - restore_at)
        .min()
        .expect("writes resumed");

    // Nothing lost, nothing twice: each write that succeeded is there once; each that
    // was refused at once is not there; none is there twice.
    let rows: Vec<Row> = db
        .read_fresh(async move |conn: &mut AsyncPgConnection| {
            diesel::sql_query("SELECT x FROM t WHERE x >= $1")
                .bind::<Integer, _>(base)
                .load::<Row>(conn)
                .await
        })
        .await
        .unwrap();
    let mut stored: HashMap<i32, usize> = HashMap::new();
    for row in rows {
        *stored.entry(row.x).or_default() += 1;
    }
    let twice: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "written twice: {twice:?}");
    let mut writes_ok = 0;
    for call in &writes {
        let x = call.x.expect("a write's number");
        match &call.outcome {
            Ok(()) => {
                writes_ok += 1;
                assert_eq!(stored.get(&x), Some(&1), "write {x} succeeded and is lost");
            }
            Err(_) if during(&call) => {
                assert_eq!(stored.get(&x), None, "write {x} was refused and is there")
            }
            Err(_) => {}
        }
    }
    assert!(
        stored.len() >= writes_ok,
        "{} rows, {writes_ok} writes",
        stored.len()
    );
    on_cluster(cluster, |c| c.wait_for_replication())
        .await
        .unwrap();
    Figures {
        detected_after,
        first_fast_failure_after,
        resumed_after,
        writes_ok,
        writes_failed: writes.len() - writes_ok,
        slowest_write,
    }
}

/// Restores the writer when dropped.
struct Restore(Option<(Arc<Cluster>, Fault)>);

impl Drop for Restore {
    fn drop(&mut self) {
        if let Some((cluster, restore)) = self.0.take() {
            restore(&cluster).expect("restore the writer");
        }
    }
}
