//! Faults under load against a real primary and two streaming replicas:
//! nodes are killed (immediate shutdown), paused (every process frozen) and restarted,
//! while tasks read continuously. One test at a time: they share the nodes.

mod common;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::load::{
    READERS, Timeouts, assert_ejected, ejected_within, on_cluster, reading_for, spread,
    until_health,
};
use common::replica_ports;
use common::writer_cut;
use diesel_async::RunQueryDsl;
use diesel_replica::{Balance, Credentials, Error, Health, Login, LoginFuture, ReplicaSet};
use diesel_replica_testkit::{Cluster, NodeId, Served, WHO_SERVED, who_served};

fn main() -> ExitCode {
    common::run_one_at_a_time(
        2,
        "CREATE TABLE t (x int)",
        tests![
            a_killed_replica_costs_no_reads_and_is_readmitted_after_restart,
            a_hung_replica_costs_no_reads_and_no_read_waits_past_the_bound,
            a_hung_replica_is_ejected_by_the_lag_monitor_and_its_reads_go_elsewhere,
            a_replica_the_lag_monitor_never_reached_is_not_ejected,
            with_every_replica_down_reads_use_the_writer_or_fail_clearly,
            with_the_writer_down_writes_fail_clearly_and_reads_go_on,
            a_hung_writer_fails_its_calls_at_once_and_they_resume_by_themselves,
            an_sql_error_on_a_replica_is_returned_once,
            round_robin_alternates,
            random_uses_every_replica,
            weighted_three_to_one_spreads_three_to_one,
            least_in_flight_prefers_the_idle_replica_when_one_is_slow,
            a_stale_pooled_connection_is_replaced_and_the_read_succeeds,
            a_write_on_an_ended_session_fails_as_unavailable,
        ],
    )
}

async fn a_killed_replica_costs_no_reads_and_is_readmitted_after_restart(cluster: Arc<Cluster>) {
    let db = ReplicaSet::connect(cluster.load_config(READERS))
        .await
        .unwrap();
    let killed_port = replica_ports(&cluster)[1];
    let load = reading_for(&db, Duration::from_secs(4));
    tokio::time::sleep(Duration::from_secs(1)).await;
    on_cluster(&cluster, |c| c.kill(NodeId::Replica(1)))
        .await
        .unwrap();
    let load = load.await.unwrap();
    load.assert_no_failed_reads();
    assert!(
        load.by_port[&killed_port] > 0,
        "the replica served reads before it died: {load:?}"
    );
    let status = assert_ejected(&db, 1);
    assert!(status.last_error.is_some());
    assert_eq!(status.in_flight, 0, "reads still sent to the dead replica");

    on_cluster(&cluster, |c| c.start_node(NodeId::Replica(1)))
        .await
        .unwrap();
    until_health(&db, 1, Health::Up).await;
    let after = spread(&db, 40).await;
    assert!(
        after.get(&killed_port).copied().unwrap_or(0) > 0,
        "the restarted replica serves reads again: {after:?}"
    );
}

/// Resumes a paused node even when the test fails midway.
struct Resume(Arc<Cluster>, NodeId);

impl Drop for Resume {
    fn drop(&mut self) {
        // Unwinding already: a second panic would abort the binary.
        if let Err(error) = self.0.resume(self.1) {
            eprintln!("resuming {:?}: {error}", self.1);
        }
    }
}

/// With the lag monitor off, only the reads' own timeouts find a hung replica.
async fn a_hung_replica_costs_no_reads_and_no_read_waits_past_the_bound(cluster: Arc<Cluster>) {
    let mut config = cluster.load_config(READERS);
    let statement_timeout = Duration::from_secs(1);
    config.replica_pool.statement_timeout = Some(statement_timeout);
    config.consistency.lag_interval = Duration::ZERO;
    let retries = config.health.read_retries;
    let db = ReplicaSet::connect(config).await.unwrap();
    let load = reading_for(&db, Duration::from_secs(5));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let resume = Resume(cluster.clone(), NodeId::Replica(1));
    on_cluster(&cluster, |c| c.pause(NodeId::Replica(1)))
        .await
        .unwrap();
    until_health(&db, 1, Health::Ejected).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(resume);
    let load = load.await.unwrap();
    load.assert_no_failed_reads();
    // Each attempt is bounded by the statement timeout plus half a second;
    // a read makes at most `retries + 1` of them. One second of slack for
    // the shared machine.
    let bound =
        (statement_timeout + Duration::from_millis(500)) * (retries + 1) + Duration::from_secs(1);
    assert!(
        load.slowest <= bound,
        "a read took {:?}, past the bound {bound:?}",
        load.slowest
    );
    until_health(&db, 1, Health::Up).await;
    assert!(db.status().replicas[1].ejections >= 1);
}

/// With the defaults (statement timeout 10 s), the lag monitor's unanswered samples
/// eject a hung replica, and the reads waiting on it go elsewhere at once.
async fn a_hung_replica_is_ejected_by_the_lag_monitor_and_its_reads_go_elsewhere(
    cluster: Arc<Cluster>,
) {
    let config = cluster.load_config(READERS);
    let timeouts = Timeouts::of(&config);
    let db = ReplicaSet::connect(config).await.unwrap();
    let load = reading_for(&db, Duration::from_secs(4));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let resume = Resume(cluster.clone(), NodeId::Replica(1));
    let paused_at = Instant::now();
    on_cluster(&cluster, |c| c.pause(NodeId::Replica(1)))
        .await
        .unwrap();
    let ejected_after = ejected_within(&db, 1, paused_at, timeouts.connect).await;
    let load = load.await.unwrap();
    drop(resume);
    load.assert_no_failed_reads();
    let last_error = db.status().replicas[1]
        .last_error
        .clone()
        .unwrap_or_default();
    assert!(last_error.starts_with("lag sample"), "{last_error}");
    load.assert_ended_by_ejection(ejected_after, timeouts.statement);
    until_health(&db, 1, Health::Up).await;
    eprintln!(
        "hung replica: ejected {ejected_after:?} after the pause; slowest read {:?}",
        load.slowest
    );
}

/// How long [`SlowLogin`] takes: past the lag monitor's 500 ms timeout, within the
/// pools' 5 s connect timeout.
const SLOW_LOGIN: Duration = Duration::from_millis(700);

/// The cluster's login, given after [`SLOW_LOGIN`] for every new connection to a replica
/// (a provider that fetches a secret each time) and at once for the writer, whose
/// position the lag monitor must have before it samples the replicas.
struct SlowLogin {
    password: String,
    /// `:port/` of the writer's `host:port/database`.
    writer: String,
}

impl Credentials for SlowLogin {
    fn login<'a>(&'a self, node: &'a str, _refresh: bool) -> LoginFuture<'a> {
        Box::pin(async move {
            if !node.contains(&self.writer) {
                tokio::time::sleep(SLOW_LOGIN).await;
            }
            Ok(Login::new("postgres", self.password.clone()))
        })
    }
}

/// The lag monitor never gets a connection within its timeout, because logging in takes
/// longer: that is no sign of failing replicas, and an idle set ejects none of them.
async fn a_replica_the_lag_monitor_never_reached_is_not_ejected(cluster: Arc<Cluster>) {
    let config = cluster.config().with_credentials(SlowLogin {
        password: cluster.password().to_owned(),
        writer: format!(":{}/", cluster.primary().port()),
    });
    let db = ReplicaSet::connect(config).await.unwrap();
    // Six samples, each timed out while connecting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for replica in &db.status().replicas {
        assert_eq!(
            (
                replica.health,
                replica.ejections,
                replica.consecutive_failures
            ),
            (Health::Up, 0, 0),
            "{replica:?}"
        );
    }
    assert!(db.read(who_served).await.unwrap().in_recovery);
}

async fn with_every_replica_down_reads_use_the_writer_or_fail_clearly(cluster: Arc<Cluster>) {
    let db = ReplicaSet::connect(cluster.config()).await.unwrap();
    let mut strict = cluster.config();
    strict.health.reads_fall_back_to_writer = false;
    let strict = ReplicaSet::connect(strict).await.unwrap();
    on_cluster(&cluster, |c| {
        c.kill(NodeId::Replica(0))?;
        c.kill(NodeId::Replica(1))
    })
    .await
    .unwrap();
    for _ in 0..10 {
        let served = db.read(who_served).await.unwrap();
        assert_eq!(served.port, i32::from(cluster.primary().port()));
        assert_eq!(served.read_only, "on");
    }
    let mut last = None;
    for _ in 0..5 {
        last = strict.read(who_served).await.err();
    }
    let err = last.expect("reads fail with no replica and no fallback");
    assert!(matches!(err, Error::NoReplicaAvailable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with("no replica available for a read"),
        "{text}"
    );
    assert!(
        text.contains("replica-0") && text.contains("replica-1") && text.contains("Ejected"),
        "{text}"
    );
    on_cluster(&cluster, |c| {
        c.start_node(NodeId::Replica(0))?;
        c.start_node(NodeId::Replica(1))?;
        c.wait_for_replication()
    })
    .await
    .unwrap();
}

async fn with_the_writer_down_writes_fail_clearly_and_reads_go_on(cluster: Arc<Cluster>) {
    let db = ReplicaSet::connect(cluster.config()).await.unwrap();
    let insert = async |conn: &mut diesel_async::AsyncPgConnection| {
        diesel::sql_query("INSERT INTO t VALUES (1)")
            .execute(conn)
            .await
    };
    on_cluster(&cluster, |c| c.kill(NodeId::Primary))
        .await
        .unwrap();
    let err = db.write(insert).await.unwrap_err();
    // Connecting is refused; or, when the pool handed out a connection whose close the
    // client had not yet seen, the write's own statement finds it gone.
    assert!(
        matches!(err, Error::Checkout { .. } | Error::ConnectionLost { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "writer (127.0.0.1:{}) unavailable",
            cluster.primary().port()
        )),
        "{text}"
    );
    let reads = spread(&db, 10).await;
    assert!(
        reads
            .keys()
            .all(|port| replica_ports(&cluster).contains(port)),
        "{reads:?}"
    );

    on_cluster(&cluster, |c| c.start_node(NodeId::Primary))
        .await
        .unwrap();
    assert_eq!(
        db.write(insert).await.unwrap(),
        1,
        "writes resume without a restart of the app"
    );
    on_cluster(&cluster, |c| c.wait_for_replication())
        .await
        .unwrap();
}

/// The writer frozen (every process stopped: connections hang, connects get no answer)
/// under load: found within two seconds by its watchdog, calls to it then fail at once,
/// reads go on, and writes resume by themselves when it thaws, with none lost or
/// duplicated. The defaults' 10 s statement timeout is what each write waited before.
async fn a_hung_writer_fails_its_calls_at_once_and_they_resume_by_themselves(
    cluster: Arc<Cluster>,
) {
    let db = ReplicaSet::connect(cluster.load_config(READERS))
        .await
        .unwrap();
    let figures = writer_cut::writer_stops_answering(
        &cluster,
        db,
        |c| c.pause(NodeId::Primary),
        |c| c.resume(NodeId::Primary),
    )
    .await;
    eprintln!("hung writer: {figures:?}");
}

async fn an_sql_error_on_a_replica_is_returned_once(cluster: Arc<Cluster>) {
    let db = ReplicaSet::connect(cluster.config()).await.unwrap();
    let calls = AtomicUsize::new(0);
    let err = db
        .read(async |conn| {
            calls.fetch_add(1, Ordering::SeqCst);
            diesel::sql_query("SELECT * FROM no_such_table")
                .execute(conn)
                .await
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Query { .. }), "{err:?}");
    assert_eq!(calls.into_inner(), 1, "an SQL error was retried");
    let status = db.status();
    assert!(
        status
            .replicas
            .iter()
            .all(|r| r.retried == 0 && r.consecutive_failures == 0 && r.health == Health::Up)
    );
}

async fn balanced(cluster: &Cluster, balance: Balance, weights: Vec<u32>) -> ReplicaSet {
    let mut config = cluster.config();
    config.balance = balance;
    config.replica_weights = weights;
    ReplicaSet::connect(config).await.unwrap()
}

async fn round_robin_alternates(cluster: Arc<Cluster>) {
    let db = balanced(&cluster, Balance::RoundRobin, vec![]).await;
    let by_port = spread(&db, 100).await;
    let ports = replica_ports(&cluster);
    assert_eq!((by_port[&ports[0]], by_port[&ports[1]]), (50, 50));
}

async fn random_uses_every_replica(cluster: Arc<Cluster>) {
    let db = balanced(&cluster, Balance::Random, vec![]).await;
    let by_port = spread(&db, 400).await;
    for port in replica_ports(&cluster) {
        assert!(by_port[&port] >= 100, "{by_port:?}");
    }
}

async fn weighted_three_to_one_spreads_three_to_one(cluster: Arc<Cluster>) {
    let db = balanced(&cluster, Balance::Weighted, vec![3, 1]).await;
    let by_port = spread(&db, 2000).await;
    let ports = replica_ports(&cluster);
    let ratio = by_port[&ports[0]] as f64 / by_port[&ports[1]] as f64;
    assert!((2.4..3.6).contains(&ratio), "{by_port:?} is {ratio:.2}:1");
}

async fn least_in_flight_prefers_the_idle_replica_when_one_is_slow(cluster: Arc<Cluster>) {
    let ports = replica_ports(&cluster);
    let slow_port = ports[1];
    let mut config = cluster.load_config(READERS);
    config.balance = Balance::LeastInFlight;
    let db = ReplicaSet::connect(config).await.unwrap();
    let slow = format!(
        "SELECT CASE WHEN inet_server_port() = {slow_port} THEN pg_sleep(0.05) END IS NULL AS slowed, {}",
        WHO_SERVED.trim_start_matches("SELECT ")
    );
    let until = Instant::now() + Duration::from_secs(2);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (db, slow) = (db.clone(), slow.clone());
            tokio::spawn(async move {
                let mut on_slow = 0u64;
                let mut total = 0u64;
                while Instant::now() < until {
                    let served = db
                        .read(async |conn| {
                            diesel::sql_query(&slow).get_result::<Served>(conn).await
                        })
                        .await
                        .unwrap();
                    total += 1;
                    on_slow += u64::from(served.port == slow_port);
                }
                (on_slow, total)
            })
        })
        .collect();
    let (mut on_slow, mut total) = (0, 0);
    for task in tasks {
        let (s, t) = task.await.unwrap();
        on_slow += s;
        total += t;
    }
    let on_fast = total - on_slow;
    assert!(
        on_fast > 3 * on_slow,
        "fast replica {on_fast} reads, slow replica {on_slow}"
    );
}

/// A read whose pooled connection went stale (its server restarted, or
/// ended the session) runs again on a new connection: the caller sees its
/// rows, and the replica no failure.
async fn a_stale_pooled_connection_is_replaced_and_the_read_succeeds(cluster: Arc<Cluster>) {
    let replica = cluster.replica_ids()[0];
    let only_replica = |writer: &str, replica: &str| {
        let mut config = diesel_replica::Config::new(writer)
            .unwrap()
            .with_replica(replica)
            .unwrap();
        config.replica_pool.max_size = 1;
        // No lag monitor: its samples during the restart would count failures.
        config.consistency.lag_interval = Duration::ZERO;
        config
    };

    // The server restarts: its goodbye reaches the client at once, and the
    // pool drops the connection before handing it out.
    let db = ReplicaSet::connect(only_replica(&cluster.writer_url(), &cluster.url(replica)))
        .await
        .unwrap();
    let before = db.read(backend_pid).await.unwrap();
    on_cluster(&cluster, move |c| c.restart(replica).unwrap()).await;
    let after = db.read(backend_pid).await.unwrap();
    assert_ne!(after, before, "a new connection served the read");
    let status = &db.status().replicas[0];
    assert_eq!(
        (status.health, status.consecutive_failures),
        (Health::Up, 0),
        "{status:?}"
    );

    // Through a delay proxy, the client learns that the server ended the
    // session only from the read's own first statement: the read runs
    // again on a new connection.
    let delayed = cluster.delayed(Duration::from_millis(200)).unwrap();
    let db = ReplicaSet::connect(only_replica(
        delayed.writer_url(),
        &delayed.replica_urls()[0],
    ))
    .await
    .unwrap();
    let before = db.read(backend_pid).await.unwrap();
    cluster
        .psql(replica, &format!("SELECT pg_terminate_backend({before})"))
        .unwrap();
    let (after, served) = db
        .read(async |conn| Ok((backend_pid(conn).await?, who_served(conn).await?)))
        .await
        .unwrap();
    assert_ne!(after, before, "a new connection served the read");
    assert!(served.in_recovery, "{served:?}");
    let status = &db.status().replicas[0];
    assert_eq!(
        (status.health, status.consecutive_failures),
        (Health::Up, 0),
        "{status:?}"
    );
    assert_eq!(
        status.retried, 1,
        "the stale connection cost one retry: {status:?}"
    );
}

/// A write whose pooled connection the server ended learns it only from its own
/// statement (through a delay proxy, the server's goodbye comes as that statement's
/// answer): it fails as the node's failure, `ConnectionLost`, not as its query's.
async fn a_write_on_an_ended_session_fails_as_unavailable(cluster: Arc<Cluster>) {
    let delayed = cluster.delayed(Duration::from_millis(200)).unwrap();
    let mut config = diesel_replica::Config::new(delayed.writer_url()).unwrap();
    config.writer_pool.max_size = 1;
    let db = ReplicaSet::connect(config).await.unwrap();
    let writer = cluster.primary_id();
    for transaction in [false, true] {
        let pid = db.write(backend_pid).await.unwrap();
        cluster
            .psql(writer, &format!("SELECT pg_terminate_backend({pid})"))
            .unwrap();
        let insert = async |conn: &mut diesel_async::AsyncPgConnection| {
            diesel::sql_query("INSERT INTO t VALUES (2)")
                .execute(conn)
                .await
        };
        let err = if transaction {
            db.transaction(insert).await.unwrap_err()
        } else {
            db.write(insert).await.unwrap_err()
        };
        assert!(
            matches!(err, Error::ConnectionLost { .. }),
            "transaction {transaction}: {err:?}"
        );
        assert!(err.kind().is_unavailable());
        assert!(err.to_string().starts_with("writer (127.0.0.1:"), "{err}");
    }
    assert_eq!(
        db.write(async |conn| {
            diesel::sql_query("INSERT INTO t VALUES (2)")
                .execute(conn)
                .await
        })
        .await
        .unwrap(),
        1,
        "the next write runs on a new connection"
    );
}

async fn backend_pid(conn: &mut diesel_async::AsyncPgConnection) -> diesel::QueryResult<i32> {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
        "pg_backend_pid()",
    ))
    .get_result(conn)
    .await
}
