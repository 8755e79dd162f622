//! Writer failover with candidate-hosts discovery, on a real primary and
//! two streaming replicas: the primary is killed and a replica promoted
//! while readers and a writer run.

mod common;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::report;
use diesel_async::RunQueryDsl;
use diesel_replica::{Config, ErrorKind, ReplicaSet};
use replica_testkit::{Cluster, NodeId, who_served};

fn main() -> ExitCode {
    common::run_one_at_a_time(
        2,
        "CREATE TABLE events (id serial PRIMARY KEY, at_ms int NOT NULL)",
        tests![a_promoted_replica_becomes_the_writer_and_reads_never_fail],
    )
}

/// When a write started (ms since the start) and how it ended.
type Write = (u128, Result<(), ErrorKind>);

async fn a_promoted_replica_becomes_the_writer_and_reads_never_fail(cluster: Arc<Cluster>) {
    let port = |id| cluster.node(id).port();
    let candidates = [NodeId::Primary, NodeId::Replica(0), NodeId::Replica(1)]
        .map(|id| format!("127.0.0.1:{}", port(id)))
        .join(",");
    let config = Config::from_vars(
        None,
        [
            ("DATABASE_URL", cluster.writer_url()),
            ("DATABASE_DISCOVERY", "hosts".to_owned()),
            ("DATABASE_CANDIDATE_HOSTS", candidates),
            ("DATABASE_DISCOVERY_INTERVAL_MS", "500".to_owned()),
            ("DATABASE_CONNECT_TIMEOUT_MS", "1000".to_owned()),
        ],
    )
    .unwrap();
    let db = ReplicaSet::connect(config).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while db.replica_count() < 2 {
        assert!(Instant::now() < deadline, "the replicas are discovered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let started = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let read_errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let writes: Arc<Mutex<Vec<Write>>> = Arc::default();
    let mut tasks: Vec<_> = (0..32)
        .map(|_| {
            let (db, done, errors) = (db.clone(), done.clone(), read_errors.clone());
            tokio::spawn(async move {
                while !AtomicBool::load(&done, Ordering::Relaxed) {
                    if let Err(e) = db.read(who_served).await {
                        errors.lock().unwrap().push(report(&e));
                    }
                }
            })
        })
        .collect();
    tasks.push({
        let (db, done, writes) = (db.clone(), done.clone(), writes.clone());
        tokio::spawn(async move {
            while !AtomicBool::load(&done, Ordering::Relaxed) {
                let at = started.elapsed().as_millis();
                let result = db
                    .transaction(async |conn| {
                        diesel::sql_query(format!("INSERT INTO events (at_ms) VALUES ({at})"))
                            .execute(conn)
                            .await
                    })
                    .await;
                writes
                    .lock()
                    .unwrap()
                    .push((at, result.map(drop).map_err(|e| e.kind())));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    });

    tokio::time::sleep(Duration::from_millis(500)).await;
    let kill_issued_at = started.elapsed().as_millis();
    cluster.kill(NodeId::Primary).unwrap();
    let killed_at = started.elapsed().as_millis();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let promoted_at = started.elapsed().as_millis();
    cluster.promote(NodeId::Replica(0)).unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    done.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }

    let read_errors = read_errors.lock().unwrap();
    assert!(
        read_errors.is_empty(),
        "failed reads: {:?}",
        &read_errors[..read_errors.len().min(3)]
    );
    let writes = writes.lock().unwrap();
    let first_after = writes
        .iter()
        .find(|(at, result)| *at > promoted_at && result.is_ok())
        .map(|(at, _)| *at)
        .expect("writes resume after the promotion");
    let failed: Vec<_> = writes.iter().filter(|(_, r)| r.is_err()).collect();
    // A write in flight when the primary died fails with the broken
    // connection, whatever its kind (writes are never retried); every later
    // one fails as unavailable until the promotion is found.
    let in_flight_at_kill = |at: u128| at + 100 >= kill_issued_at && at <= killed_at;
    assert!(
        failed.iter().all(|(at, kind)| (in_flight_at_kill(*at)
            || (*at > killed_at && matches!(kind, Err(k) if k.is_unavailable())))
            && *at <= first_after),
        "writes fail only in the gap, as unavailable once the primary is dead: {failed:?}"
    );
    assert!(writes.iter().any(|(at, r)| *at > first_after && r.is_ok()));
    println!(
        "write-unavailable window: killed at {killed_at} ms, promoted at {promoted_at} ms, \
         first write after promotion at {first_after} ms ({} ms after promotion); {} writes failed",
        first_after - promoted_at,
        failed.len()
    );
    // No write was committed anywhere but on a writer: every row on the new
    // writer, and the writer is out of recovery.
    let in_recovery = cluster
        .psql(NodeId::Replica(0), "SELECT pg_is_in_recovery()")
        .unwrap();
    assert_eq!(in_recovery, "f");
    let status = db.status();
    assert_eq!(
        status.writer.address,
        format!("127.0.0.1:{}", port(NodeId::Replica(0)))
    );
}
