//! Load and waits shared by the fault and partition tests: readers that
//! keep reading which server answers, and waits on a replica's health.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel_replica::{Config, Health, NodeStatus, ReplicaSet};
use diesel_replica_testkit::{Cluster, who_served};
use tokio::task::JoinHandle;

use super::report;

/// How many tasks read at once.
pub(crate) const READERS: usize = 32;

/// What continuous readers saw.
#[derive(Default, Debug)]
pub(crate) struct Load {
    pub(crate) ok: u64,
    pub(crate) errors: Vec<String>,
    pub(crate) by_port: HashMap<i32, u64>,
    pub(crate) slowest: Duration,
}

/// Slack for the shared machine in the bounds the tests check (scheduling, Docker's
/// proxy).
pub(crate) const SLACK: Duration = Duration::from_secs(1);

/// The replica pool's connect and statement timeouts, which the testkit's configurations
/// leave at the library's defaults (5 s and 10 s).
pub(crate) struct Timeouts {
    pub(crate) connect: Duration,
    pub(crate) statement: Duration,
}

impl Timeouts {
    pub(crate) fn of(config: &Config) -> Self {
        let pool = &config.replica_pool;
        Self {
            connect: pool.connect_timeout.expect("a connect timeout"),
            statement: pool.statement_timeout.expect("a statement timeout"),
        }
    }
}

impl Load {
    /// Panics unless every read succeeded.
    pub(crate) fn assert_no_failed_reads(&self) {
        assert!(
            self.errors.is_empty(),
            "{} failed reads: {:?}",
            self.errors.len(),
            &self.errors[..self.errors.len().min(5)]
        );
    }

    /// Panics unless the reads that waited on a replica ejected `ejected_after` a fault
    /// ended with its ejection: none took longer than that plus [`SLACK`], which is
    /// itself short of the `statement_timeout` they would otherwise have waited out.
    pub(crate) fn assert_ended_by_ejection(
        &self,
        ejected_after: Duration,
        statement_timeout: Duration,
    ) {
        let bound = ejected_after + SLACK;
        assert!(
            self.slowest <= bound && bound < statement_timeout,
            "a read took {:?}, past the ejection {ejected_after:?} and slack {SLACK:?}",
            self.slowest
        );
    }
}

/// Starts `READERS` tasks reading which server answers, for `how_long` from now.
pub(crate) fn reading_for(db: &ReplicaSet, how_long: Duration) -> JoinHandle<Load> {
    let db = db.clone();
    let until = Instant::now() + how_long;
    tokio::spawn(async move { read_until(&db, until).await })
}

/// `READERS` tasks reading which server answers, until `until`.
async fn read_until(db: &ReplicaSet, until: Instant) -> Load {
    let tasks: Vec<_> = (0..READERS)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move {
                let mut load = Load::default();
                while Instant::now() < until {
                    let started = Instant::now();
                    let result = db.read(who_served).await;
                    load.slowest = load.slowest.max(started.elapsed());
                    match result {
                        Ok(served) => {
                            load.ok += 1;
                            *load.by_port.entry(served.port).or_default() += 1;
                        }
                        Err(error) => load.errors.push(report(&error)),
                    }
                }
                load
            })
        })
        .collect();
    let mut total = Load::default();
    for task in tasks {
        let load = task.await.expect("a reader task");
        total.ok += load.ok;
        total.errors.extend(load.errors);
        total.slowest = total.slowest.max(load.slowest);
        for (port, n) in load.by_port {
            *total.by_port.entry(port).or_default() += n;
        }
    }
    total
}

/// Runs blocking cluster work off the runtime's threads.
pub(crate) async fn on_cluster<T: Send + 'static>(
    cluster: &Arc<Cluster>,
    work: impl FnOnce(&Cluster) -> T + Send + 'static,
) -> T {
    let cluster = cluster.clone();
    tokio::task::spawn_blocking(move || work(&cluster))
        .await
        .expect("cluster work")
}

/// Waits until replica `index` of `db` is ejected, and returns the time since `fault`;
/// panics if that is past `limit`.
pub(crate) async fn ejected_within(
    db: &ReplicaSet,
    index: usize,
    fault: Instant,
    limit: Duration,
) -> Duration {
    until_health(db, index, Health::Ejected).await;
    let ejected_after = fault.elapsed();
    assert!(
        ejected_after <= limit,
        "replica-{index} was ejected {ejected_after:?} after the fault, past {limit:?}"
    );
    ejected_after
}

/// Panics unless replica `index` of `db` is ejected now (and so was ejected at least
/// once); returns its status for further checks.
pub(crate) fn assert_ejected(db: &ReplicaSet, index: usize) -> NodeStatus {
    let status = db.status().replicas.swap_remove(index);
    assert_eq!(status.health, Health::Ejected, "{status:?}");
    assert!(status.ejections >= 1, "{status:?}");
    status
}

/// Waits (bounded) until replica `index` of `db` has `health`.
pub(crate) async fn until_health(db: &ReplicaSet, index: usize, health: Health) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while db.status().replicas[index].health != health {
        assert!(
            Instant::now() < deadline,
            "replica-{index} never became {health:?}: {:?}",
            db.status().replicas[index]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `n` reads one after another, counted by the port that served them.
pub(crate) async fn spread(db: &ReplicaSet, n: usize) -> HashMap<i32, u64> {
    let mut by_port = HashMap::new();
    for _ in 0..n {
        let served = db.read(who_served).await.unwrap();
        *by_port.entry(served.port).or_default() += 1;
    }
    by_port
}
