//! Load and waits shared by the fault and partition tests: readers that
//! keep reading which server answers, and waits on a replica's health.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel_replica::{Health, ReplicaSet};
use diesel_replica_testkit::{Cluster, who_served};

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

/// `READERS` tasks reading which server answers, until `until`.
pub(crate) async fn read_until(db: &ReplicaSet, until: Instant) -> Load {
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
