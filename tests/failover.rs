//! Writer failover on a real primary and two streaming replicas: the
//! primary is killed and a replica promoted while 32 readers and a writer
//! run, found by candidate-hosts discovery and by Aurora discovery (over
//! an emulated `aurora_replica_status()`, in the forms of Aurora before and
//! since 13.9). Each test adds its own two
//! replicas to whichever node is the primary when it starts.

mod common;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::aurora::{Aurora, FORMS, Form};
use common::report;
use diesel_async::RunQueryDsl;
use diesel_replica::{Config, DiscoverySource, ErrorKind, ReplicaSet};
use diesel_replica_testkit::{Cluster, NodeId, who_served};

fn main() -> ExitCode {
    common::run_one_at_a_time(
        0,
        "CREATE TABLE events (id serial PRIMARY KEY, at_ms int NOT NULL)",
        tests![
            a_promoted_replica_becomes_the_writer_and_reads_never_fail,
            a_hung_writer_is_replaced_by_the_promoted_replica,
            aurora_discovery_follows_the_writer_aurora_names,
            a_write_in_a_read_is_refused_wherever_the_read_runs,
        ],
    )
}

/// When a write started (ms since the start) and how it ended.
type Write = (u128, Result<(), ErrorKind>);

/// The current primary and two new replicas of it.
fn primary_and_two_replicas(cluster: &Cluster) -> (NodeId, NodeId, NodeId) {
    let primary = cluster.primary_id();
    let first = cluster.add_replica().unwrap();
    let second = cluster.add_replica().unwrap();
    cluster.wait_for_replication().unwrap();
    (primary, first, second)
}

fn address(cluster: &Cluster, id: NodeId) -> String {
    format!("127.0.0.1:{}", cluster.node(id).port())
}

/// 32 readers and a writer (one insert every 20 ms), until stopped.
struct Load {
    started: Instant,
    done: Arc<AtomicBool>,
    read_errors: Arc<Mutex<Vec<String>>>,
    writes: Arc<Mutex<Vec<Write>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(db: &ReplicaSet) -> Self {
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
        Self {
            started,
            done,
            read_errors,
            writes,
            tasks,
        }
    }

    fn now(&self) -> u128 {
        self.started.elapsed().as_millis()
    }

    /// Under load for 0.5 s, kills `primary`, and leaves the load 1 s
    /// without it; returns when the kill was issued and when it was done.
    async fn kill_after_a_while(&self, cluster: &Cluster, primary: NodeId) -> (u128, u128) {
        self.fault_after_a_while(cluster, primary, Cluster::kill)
            .await
    }

    /// [`Load::kill_after_a_while`] with another fault: `fault(cluster, primary)`.
    async fn fault_after_a_while(
        &self,
        cluster: &Cluster,
        primary: NodeId,
        fault: fn(&Cluster, NodeId) -> Result<(), diesel_replica_testkit::Error>,
    ) -> (u128, u128) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let kill_issued = self.now();
        fault(cluster, primary).unwrap();
        let killed = self.now();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        (kill_issued, killed)
    }

    /// Stops the load and checks what it saw: no read failed, writes
    /// failed only between `killed` (the kill was issued at `kill_issued`)
    /// and the first write after `writer_known`, as unavailable unless in
    /// flight at the kill, and resumed by themselves. Returns the time of
    /// the first write after `writer_known` and the number of failed writes.
    async fn finish(self, kill_issued: u128, killed: u128, writer_known: u128) -> (u128, usize) {
        self.done.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let read_errors = self.read_errors.lock().unwrap();
        assert!(
            read_errors.is_empty(),
            "failed reads: {:?}",
            &read_errors[..read_errors.len().min(3)]
        );
        let writes = self.writes.lock().unwrap();
        let first_after = writes
            .iter()
            .find(|(at, result)| *at > writer_known && result.is_ok())
            .map(|(at, _)| *at)
            .unwrap_or_else(|| {
                let tail = &writes[writes.len().saturating_sub(8)..];
                panic!("writes resume once the new writer is known: the last ones: {tail:?}")
            });
        let failed: Vec<_> = writes.iter().filter(|(_, r)| r.is_err()).collect();
        // A write in flight when the primary died fails with the broken
        // connection, whatever its kind (writes are never retried); every
        // later one fails as unavailable until the new writer is found.
        let in_flight_at_kill = |at: u128| at + 100 >= kill_issued && at <= killed;
        assert!(
            failed.iter().all(|(at, kind)| (in_flight_at_kill(*at)
                || (*at > killed && matches!(kind, Err(k) if k.is_unavailable())))
                && *at <= first_after),
            "writes fail only in the gap, as unavailable once the primary is dead: {failed:?}"
        );
        assert!(writes.iter().any(|(at, r)| *at > first_after && r.is_ok()));
        (first_after, failed.len())
    }
}

async fn a_promoted_replica_becomes_the_writer_and_reads_never_fail(cluster: Arc<Cluster>) {
    follows_a_promotion(&cluster, Cluster::kill).await;
}

/// The writer hangs (frozen: its connections and connects get no answer) instead of
/// dying: its watchdog finds it within two seconds and wakes discovery, and the
/// promoted replica takes the writes.
async fn a_hung_writer_is_replaced_by_the_promoted_replica(cluster: Arc<Cluster>) {
    let hung = cluster.primary_id();
    follows_a_promotion(&cluster, Cluster::pause).await;
    // Thawed and stopped, as the killed one of the other test is.
    cluster.resume(hung).unwrap();
    cluster.kill(hung).unwrap();
}

async fn follows_a_promotion(
    cluster: &Cluster,
    fault: fn(&Cluster, NodeId) -> Result<(), diesel_replica_testkit::Error>,
) {
    let (primary, first, second) = primary_and_two_replicas(cluster);
    let candidates = [primary, first, second]
        .map(|id| address(cluster, id))
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
    // `connect` waited for the first survey.
    assert_eq!(
        db.replica_count(),
        2,
        "the replicas are discovered at start"
    );
    assert_eq!(db.status().source, DiscoverySource::Hosts);

    let load = Load::start(&db);
    let (kill_issued, killed) = load.fault_after_a_while(cluster, primary, fault).await;
    let promoted = load.now();
    cluster.promote(first).unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (first_write, failed) = load.finish(kill_issued, killed, promoted).await;
    println!(
        "hosts: write-unavailable window: killed at {killed} ms, promoted at {promoted} ms, \
         first write after promotion at {first_write} ms ({} ms after promotion); \
         {failed} writes failed",
        first_write - promoted,
    );
    // No write was committed anywhere but on a writer: the new writer is
    // out of recovery, and it is the set's writer.
    let in_recovery = cluster.psql(first, "SELECT pg_is_in_recovery()").unwrap();
    assert_eq!(in_recovery, "f");
    assert_eq!(db.status().writer.address, address(cluster, first));
}

async fn aurora_discovery_follows_the_writer_aurora_names(cluster: Arc<Cluster>) {
    for form in FORMS {
        aurora_follows_the_writer(&cluster, form).await;
    }
}

async fn aurora_follows_the_writer(cluster: &Cluster, form: Form) {
    let (primary, first, second) = primary_and_two_replicas(cluster);
    let aurora = Aurora::install(cluster, form).await;
    aurora.insert(&[
        (primary, "MASTER_SESSION_ID", 0.0),
        (first, "a1", 0.0),
        (second, "a2", 0.0),
    ]);
    let mut vars = aurora.vars();
    // The default: only a failing writer makes discovery look sooner.
    vars.push(("DATABASE_DISCOVERY_INTERVAL_MS", "30000".to_owned()));
    vars.push(("DATABASE_CONNECT_TIMEOUT_MS", "1000".to_owned()));
    let db = ReplicaSet::connect(Config::from_vars(None, vars).unwrap())
        .await
        .unwrap();
    assert_eq!(
        db.replica_count(),
        2,
        "{form:?}: the replicas are discovered at start"
    );
    assert_eq!(db.status().source, DiscoverySource::Aurora);
    assert_eq!(db.status().writer.address, aurora.address(primary));

    let load = Load::start(&db);
    let (kill_issued, killed) = load.kill_after_a_while(cluster, primary).await;
    // While the replicas still name the dead writer, writes fail fast.
    assert_eq!(db.status().writer.address, aurora.address(primary));
    cluster.promote(first).unwrap();
    // The new writer's view: its own row has no timestamp in the current
    // form, and the dead writer's row is gone.
    cluster
        .psql(
            first,
            &format!(
                "UPDATE aurora_topology SET session_id = 'MASTER_SESSION_ID' \
                 WHERE server_id = '{}'; DELETE FROM aurora_topology WHERE server_id = '{}'",
                aurora.instance(first),
                aurora.instance(primary)
            ),
        )
        .unwrap();
    let named = load.now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (first_write, failed) = load.finish(kill_issued, killed, named).await;
    println!(
        "aurora ({form:?}): killed at {killed} ms, new writer named at {named} ms, first \
         write after at {first_write} ms ({} ms after); {failed} writes failed",
        first_write - named,
    );
    let status = db.status();
    assert_eq!(status.writer.address, aurora.address(first));
    let replicas: Vec<_> = status.replicas.iter().map(|r| r.address.clone()).collect();
    assert_eq!(replicas, [aurora.address(second)]);
    assert!(status.discovery.is_clean(), "{status:?}");
}

/// A read runs its body alone on a replica, with no `READ ONLY`
/// transaction: a write in it is refused by a standby, by the read-only
/// session on a replica promoted before discovery (here: none) could see
/// it, and by the `READ ONLY` transaction of a read that fell back to the
/// writer. Each is [`ErrorKind::ReadOnlyViolation`], and no row is written.
async fn a_write_in_a_read_is_refused_wherever_the_read_runs(cluster: Arc<Cluster>) {
    let (primary, replica, _) = primary_and_two_replicas(&cluster);
    let config = Config::new(&cluster.url(primary))
        .unwrap()
        .with_replica(&cluster.url(replica))
        .unwrap();
    let db = ReplicaSet::connect(config).await.unwrap();
    let insert = async |conn: &mut diesel_async::AsyncPgConnection| {
        diesel::sql_query("INSERT INTO events (at_ms) VALUES (-1)")
            .execute(conn)
            .await
    };
    let written = |id| {
        cluster
            .psql(id, "SELECT count(*) FROM events WHERE at_ms = -1")
            .unwrap()
    };
    let refused = |result: Result<usize, diesel_replica::Error>, on: &str| {
        let err = result.expect_err(on);
        assert_eq!(err.kind(), ErrorKind::ReadOnlyViolation, "{on}: {err:?}");
    };

    let served = db.read(who_served).await.unwrap();
    assert!(served.in_recovery, "{served:?}");
    refused(db.read(insert).await, "on a standby");

    let promoted = cluster.clone();
    tokio::task::spawn_blocking(move || promoted.promote(replica))
        .await
        .unwrap()
        .unwrap();
    let served = db.read(who_served).await.unwrap();
    assert_eq!(served.port, i32::from(cluster.node(replica).port()));
    assert!(!served.in_recovery, "the read ran on the promoted replica");
    refused(db.read(insert).await, "on a promoted replica");
    // Turning the session's guard off is not enough: the read's own
    // transaction is READ ONLY too.
    let unguarded = async |conn: &mut diesel_async::AsyncPgConnection| {
        diesel::sql_query("SET default_transaction_read_only = off")
            .execute(conn)
            .await?;
        diesel::sql_query("INSERT INTO events (at_ms) VALUES (-1)")
            .execute(conn)
            .await
    };
    refused(db.read(unguarded).await, "on a promoted replica, guard off");
    assert_eq!(written(replica), "0");

    let mut config = Config::new(&cluster.url(primary))
        .unwrap()
        .with_replica(&format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            common::closed_port()
        ))
        .unwrap();
    config.health.reads_fall_back_to_writer = true;
    let fallback = ReplicaSet::connect(config).await.unwrap();
    let served = fallback.read(who_served).await.unwrap();
    assert_eq!(served.port, i32::from(cluster.node(primary).port()));
    refused(fallback.read(insert).await, "on the writer");
    assert_eq!(written(primary), "0");
}
