//! Replica lag and read-your-writes, on a real primary and two streaming
//! replicas whose replay the tests pause (`pg_wal_replay_pause()`).

mod common;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::aurora::{Aurora, FORMS, Form};
use common::load::on_cluster;
use diesel::QueryableByName;
use diesel::sql_types::{Bool, Integer, Nullable};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_replica::{
    Config, ReadYourWrites, ReplicaSet, ReplicatedRepo, WriteToken, read_only, write,
};
use diesel_replica_testkit::{Cluster, NodeId};

fn main() -> ExitCode {
    common::run_one_at_a_time(
        2,
        "CREATE TABLE kv (k int PRIMARY KEY, v int NOT NULL); \
         CREATE TABLE rows (id int PRIMARY KEY, payload text NOT NULL); \
         INSERT INTO rows SELECT i, 'seed' FROM generate_series(0, 999) AS i",
        tests![
            a_plain_read_on_a_paused_replica_is_stale,
            tokens_carried_between_sets_never_read_stale,
            token_reads_keep_up_with_an_update_load,
            token_reads_spread_over_every_replica_that_holds_the_write,
            a_replica_behind_the_lag_limit_gets_no_reads_until_it_catches_up,
            lag_stays_zero_on_an_idle_primary,
            hostile_tokens_never_panic_nor_read_stale,
            session_writes_are_seen_whatever_the_body_sets,
            aurora_lag_and_tokens_go_by_reported_time,
            aurora_token_reads_never_read_stale_with_replay_paused,
        ],
    )
}

/// A session under another name: the macro goes by the type.
type Session<'a> = &'a ReadYourWrites;

#[derive(ReplicatedRepo, Clone)]
struct Kv {
    replicas: ReplicaSet,
}

/// A value, and where it was read.
#[derive(QueryableByName, Debug)]
struct Read {
    #[diesel(sql_type = Nullable<Integer>)]
    v: Option<i32>,
    #[diesel(sql_type = Bool)]
    in_recovery: bool,
    #[diesel(sql_type = Integer)]
    port: i32,
}

const PUT: &str =
    "INSERT INTO kv (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = excluded.v";
const GET: &str = "SELECT (SELECT v FROM kv WHERE k = $1) AS v, pg_is_in_recovery() AS in_recovery, \
     coalesce(inet_server_port(), current_setting('port')::int) AS port";

impl Kv {
    #[write]
    async fn put(
        &self,
        conn: &mut AsyncPgConnection,
        rw: &ReadYourWrites,
        k: i32,
        v: i32,
    ) -> diesel::QueryResult<usize> {
        diesel::sql_query(PUT)
            .bind::<Integer, _>(k)
            .bind::<Integer, _>(v)
            .execute(conn)
            .await
    }

    #[read_only]
    async fn get(
        &self,
        conn: &mut AsyncPgConnection,
        rw: &ReadYourWrites,
        k: i32,
    ) -> diesel::QueryResult<Read> {
        diesel::sql_query(GET)
            .bind::<Integer, _>(k)
            .get_result(conn)
            .await
    }

    #[read_only]
    async fn get_aliased(
        &self,
        conn: &mut AsyncPgConnection,
        k: i32,
        after: Session<'_>,
    ) -> diesel::QueryResult<Read> {
        diesel::sql_query(GET)
            .bind::<Integer, _>(k)
            .get_result(conn)
            .await
    }
}

async fn kv(config: Config) -> Kv {
    Kv {
        replicas: ReplicaSet::connect(config).await.unwrap(),
    }
}

fn port(cluster: &Cluster, id: NodeId) -> i32 {
    i32::from(cluster.node(id).port())
}

/// Writes `v` under `k` in `rw`'s session (the explicit API).
async fn put(db: &ReplicaSet, rw: &ReadYourWrites, k: i32, v: i32) {
    db.session(rw)
        .transaction(async move |conn| {
            diesel::sql_query(PUT)
                .bind::<Integer, _>(k)
                .bind::<Integer, _>(v)
                .execute(conn)
                .await
        })
        .await
        .unwrap();
}

/// Reads `k` in `rw`'s session (the explicit API).
async fn get(db: &ReplicaSet, rw: &ReadYourWrites, k: i32) -> Read {
    db.session(rw)
        .read(async move |conn| {
            diesel::sql_query(GET)
                .bind::<Integer, _>(k)
                .get_result(conn)
                .await
        })
        .await
        .unwrap()
}

async fn a_plain_read_on_a_paused_replica_is_stale(cluster: Arc<Cluster>) {
    let config = Config::new(&cluster.writer_url())
        .and_then(|config| config.with_replica(&cluster.url(NodeId::Replica(0))))
        .unwrap();
    let db = ReplicaSet::connect(config).await.unwrap();
    put(&db, &ReadYourWrites::new(), 1, 1).await;
    cluster.wait_for_replication().unwrap();
    cluster.pause_replay(0).unwrap();
    let rw = ReadYourWrites::new();
    put(&db, &rw, 1, 2).await;
    // Without the token, the paused replica serves its old value.
    let plain = get(&db, &ReadYourWrites::new(), 1).await;
    assert!(plain.in_recovery, "{plain:?}");
    assert_eq!(plain.v, Some(1), "the replica is stale");
    // With it, the read waits for the replica (in vain), then goes to
    // the writer.
    let started = Instant::now();
    let fresh = get(&db, &rw, 1).await;
    assert_eq!(fresh.v, Some(2));
    assert!(!fresh.in_recovery, "{fresh:?}");
    assert!(started.elapsed() >= Duration::from_millis(100));
    // The same through a repo method whose session parameter is aliased.
    let repo = Kv {
        replicas: db.clone(),
    };
    let fresh = repo.get_aliased(1, &rw).await.unwrap();
    assert_eq!((fresh.v, fresh.in_recovery), (Some(2), false));
    let plain = repo.get_aliased(1, &ReadYourWrites::new()).await.unwrap();
    assert_eq!((plain.v, plain.in_recovery), (Some(1), true));
    cluster.resume_replay(0).unwrap();
    // Once replayed, the token's read is the replica's again.
    cluster.wait_for_replication().unwrap();
    let caught_up = get(&db, &rw, 1).await;
    assert_eq!(caught_up.v, Some(2));
    assert!(caught_up.in_recovery, "{caught_up:?}");
}

async fn tokens_carried_between_sets_never_read_stale(cluster: Arc<Cluster>) {
    // Two containers: one writes, the other reads with the token it is
    // handed as a string.
    let writer_side = kv(cluster.load_config(16)).await;
    let reader_side = kv(cluster.load_config(16)).await;
    let done = Arc::new(AtomicBool::new(false));
    let chaos = {
        let (cluster, done) = (Arc::clone(&cluster), Arc::clone(&done));
        tokio::task::spawn_blocking(move || {
            let mut round = 0;
            while !AtomicBool::load(&done, Ordering::Relaxed) {
                let paused: &[usize] = match round % 3 {
                    0 => &[0],
                    1 => &[1],
                    _ => &[0, 1],
                };
                for &replica in paused {
                    cluster.pause_replay(replica).unwrap();
                }
                std::thread::sleep(Duration::from_millis(300));
                for &replica in paused {
                    cluster.resume_replay(replica).unwrap();
                }
                std::thread::sleep(Duration::from_millis(200));
                round += 1;
            }
        })
    };
    let (stale, on_replicas, on_writer) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let started = Instant::now();
    let workers: Vec<_> = (0..16)
        .map(|worker| {
            let (a, b) = (writer_side.clone(), reader_side.clone());
            let (stale, on_replicas, on_writer) =
                (stale.clone(), on_replicas.clone(), on_writer.clone());
            tokio::spawn(async move {
                for i in 0..625 {
                    let k = 1000 + worker;
                    let rw = ReadYourWrites::new();
                    a.put(&rw, k, i).await.unwrap();
                    let token = rw.token().expect("a write leaves a token").to_string();
                    let carried = ReadYourWrites::resume(Some(&token)).unwrap();
                    let read = b.get(&carried, k).await.unwrap();
                    if read.v != Some(i) {
                        AtomicUsize::fetch_add(&stale, 1, Ordering::Relaxed);
                    }
                    let counter = if read.in_recovery {
                        &on_replicas
                    } else {
                        &on_writer
                    };
                    AtomicUsize::fetch_add(counter, 1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    chaos.await.unwrap();
    let (replicas, writer) = (
        AtomicUsize::load(&on_replicas, Ordering::Relaxed),
        AtomicUsize::load(&on_writer, Ordering::Relaxed),
    );
    println!(
        "10000 write-then-read pairs in {:?}: {replicas} reads on replicas ({:.1} %), \
         {writer} on the writer",
        started.elapsed(),
        100.0 * replicas as f64 / 10_000.0
    );
    assert_eq!(
        AtomicUsize::load(&stale, Ordering::Relaxed),
        0,
        "stale reads"
    );
    assert_eq!(replicas + writer, 10_000);
    assert!(replicas > 0, "replicas serve token reads");
    assert!(writer > 0, "with both replicas paused, the writer serves");
    cluster.wait_for_replication().unwrap();
}

/// Rewrites rows (so the primary prunes their old versions, which
/// replicas replay as conflicts with running queries' snapshots) and reads
/// each back with its token: waiting for a replica must not hold back its
/// replay, so the replicas keep up and serve the token reads.
async fn token_reads_keep_up_with_an_update_load(cluster: Arc<Cluster>) {
    let db = ReplicaSet::connect(cluster.load_config(16)).await.unwrap();
    let until = Instant::now() + Duration::from_secs(4);
    let (on_replicas, on_writer, stale) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let tasks: Vec<_> = (0..16)
        .map(|task| {
            let db = db.clone();
            let (on_replicas, on_writer, stale) =
                (on_replicas.clone(), on_writer.clone(), stale.clone());
            tokio::spawn(async move {
                let mut op = 0;
                while Instant::now() < until {
                    let id = task + 16 * (op % 60);
                    let payload = format!("{task}-{op}");
                    let rw = ReadYourWrites::new();
                    let written = payload.clone();
                    db.session(&rw)
                        .transaction(async move |conn| {
                            diesel::sql_query("UPDATE rows SET payload = $1 WHERE id = $2")
                                .bind::<diesel::sql_types::Text, _>(written)
                                .bind::<Integer, _>(id)
                                .execute(conn)
                                .await
                        })
                        .await
                        .unwrap();
                    let carried =
                        ReadYourWrites::resume(Some(&rw.token().unwrap().to_string())).unwrap();
                    let (read, in_recovery): (String, bool) = db
                        .session(&carried)
                        .read(async move |conn| {
                            diesel::select((
                                diesel::dsl::sql::<diesel::sql_types::Text>(&format!(
                                    "(SELECT payload FROM rows WHERE id = {id})"
                                )),
                                diesel::dsl::sql::<Bool>("pg_is_in_recovery()"),
                            ))
                            .get_result(conn)
                            .await
                        })
                        .await
                        .unwrap();
                    if read != payload {
                        AtomicUsize::fetch_add(&stale, 1, Ordering::Relaxed);
                    }
                    let counter = if in_recovery {
                        &on_replicas
                    } else {
                        &on_writer
                    };
                    AtomicUsize::fetch_add(counter, 1, Ordering::Relaxed);
                    op += 1;
                }
            })
        })
        .collect();
    let mut max_lag = Duration::ZERO;
    while Instant::now() < until {
        for replica in db.status().replicas {
            max_lag = max_lag.max(replica.lag.unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for task in tasks {
        task.await.unwrap();
    }
    let (replicas, writer) = (
        AtomicUsize::load(&on_replicas, Ordering::Relaxed),
        AtomicUsize::load(&on_writer, Ordering::Relaxed),
    );
    println!("{replicas} token reads on replicas, {writer} on the writer; lag at most {max_lag:?}");
    assert_eq!(AtomicUsize::load(&stale, Ordering::Relaxed), 0);
    assert!(
        replicas > 9 * writer,
        "{replicas} on replicas, {writer} on the writer"
    );
    assert!(
        max_lag < Duration::from_secs(2),
        "the replicas fell {max_lag:?} behind"
    );
}

async fn token_reads_spread_over_every_replica_that_holds_the_write(cluster: Arc<Cluster>) {
    let mut config = Config::new(&cluster.writer_url()).unwrap();
    for url in cluster.replica_urls() {
        config = config.with_replica(&url).unwrap();
    }
    // Lag sampled every 5 s: left to the schedule, the replica a first read
    // waited on would stay the only one known to hold the write.
    config.consistency.lag_interval = Duration::from_secs(5);
    let db = ReplicaSet::connect(config).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let replicas: Vec<i32> = cluster
        .replica_ids()
        .into_iter()
        .map(|id| port(&cluster, id))
        .collect();
    for (round, k) in (9001..9004).enumerate() {
        let rw = ReadYourWrites::new();
        put(&db, &rw, k, 1).await;
        let mut served = std::collections::HashMap::new();
        for _ in 0..30 {
            let read = get(&db, &rw, k).await;
            assert_eq!(read.v, Some(1), "stale");
            assert!(read.in_recovery, "{read:?}");
            *served.entry(read.port).or_insert(0) += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let shares: Vec<usize> = replicas
            .iter()
            .map(|replica| served.get(replica).copied().unwrap_or(0))
            .collect();
        eprint!("round {round}: 30 token reads, per replica {shares:?}; ");
        for (replica, reads) in replicas.iter().zip(&shares) {
            assert!(
                *reads >= 5,
                "round {round}: {replica} served {reads}: {served:?}"
            );
        }
    }
}

async fn a_replica_behind_the_lag_limit_gets_no_reads_until_it_catches_up(cluster: Arc<Cluster>) {
    let mut config = cluster.config();
    config.consistency.lag_interval = Duration::from_millis(100);
    config.consistency.max_replica_lag = Some(Duration::from_millis(300));
    let db = ReplicaSet::connect(config).await.unwrap();
    let (paused, other) = (
        port(&cluster, NodeId::Replica(0)),
        port(&cluster, NodeId::Replica(1)),
    );
    let done = Arc::new(AtomicBool::new(false));
    // Writes keep coming, so the paused replica falls behind.
    let writes = {
        let (db, done) = (db.clone(), done.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !AtomicBool::load(&done, Ordering::Relaxed) {
                put(&db, &ReadYourWrites::new(), 2, i).await;
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.pause_replay(0).unwrap();
    let paused_at = Instant::now();
    while !db.status().replicas[0].behind {
        assert!(
            paused_at.elapsed() < Duration::from_secs(2),
            "{:?}",
            db.status().replicas[0]
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let noticed = paused_at.elapsed();
    for _ in 0..40 {
        let read = get(&db, &ReadYourWrites::new(), 2).await;
        assert_eq!(read.port, other, "the replica behind gets no reads");
    }
    cluster.resume_replay(0).unwrap();
    let resumed_at = Instant::now();
    while db.status().replicas[0].behind {
        assert!(resumed_at.elapsed() < Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let returned = resumed_at.elapsed();
    let mut served = false;
    for _ in 0..100 {
        if get(&db, &ReadYourWrites::new(), 2).await.port == paused {
            served = true;
            break;
        }
    }
    done.store(true, Ordering::Relaxed);
    writes.await.unwrap();
    assert!(served, "the replica takes reads again once caught up");
    let status = db.status().replicas[0].clone();
    assert_eq!(status.ejections, 0, "being behind is no failure");
    assert_eq!(status.health, diesel_replica::Health::Up);
    println!(
        "behind the 300 ms limit {noticed:?} after the pause; back {returned:?} after the resume"
    );
}

async fn lag_stays_zero_on_an_idle_primary(cluster: Arc<Cluster>) {
    cluster.wait_for_replication().unwrap();
    let mut config = cluster.config();
    config.consistency.lag_interval = Duration::from_millis(100);
    let db = ReplicaSet::connect(config).await.unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        for replica in db.status().replicas {
            assert_eq!(replica.lag, Some(Duration::ZERO), "{replica:?}");
            assert_eq!(replica.lag_bytes, Some(0), "{replica:?}");
        }
    }
    assert_eq!(db.status().writer.lag, None);
}

async fn hostile_tokens_never_panic_nor_read_stale(cluster: Arc<Cluster>) {
    let db = ReplicaSet::connect(cluster.config()).await.unwrap();
    let long = "1".repeat(1 << 20);
    for bad in [
        "",
        "garbage",
        "-1/0@1",
        "0/-1@1",
        "1/1@-5",
        "1/1",
        "ff/ff@1e9",
        &long,
    ] {
        match ReadYourWrites::resume(Some(bad)) {
            // Empty: a session without writes.
            Ok(rw) => assert!(bad.trim().is_empty() && rw.token().is_none()),
            Err(error) => assert!(!error.to_string().contains("1111"), "{error}"),
        }
        assert!(
            serde_json::from_value::<WriteToken>(serde_json::json!(bad)).is_err() || bad.is_empty()
        );
    }
    put(&db, &ReadYourWrites::new(), 3, 3).await;
    cluster.wait_for_replication().unwrap();
    // A position from the future: no replica has it; the writer serves.
    for future in [
        "FFFFFFFF/FFFFFFFE@0",
        "FFFFFFFF/FFFFFFFF@18446744073709551615",
    ] {
        let rw = ReadYourWrites::resume(Some(future)).unwrap();
        let read = get(&db, &rw, 3).await;
        assert_eq!(read.v, Some(3));
        assert!(!read.in_recovery, "{future}: {read:?}");
    }
    // One from long ago: any replica will do.
    let read = get(&db, &ReadYourWrites::resume(Some("0/0@0")).unwrap(), 3).await;
    assert!(read.in_recovery, "{read:?}");
}

async fn session_writes_are_seen_whatever_the_body_sets(cluster: Arc<Cluster>) {
    let db = ReplicaSet::connect(cluster.config()).await.unwrap();
    for v in 0..20 {
        // An asynchronous commit: the token still covers it, and replicas
        // are sent it at once.
        let rw = ReadYourWrites::new();
        db.session(&rw)
            .transaction(async move |conn| {
                diesel::sql_query("SET LOCAL synchronous_commit = off")
                    .execute(conn)
                    .await?;
                diesel::sql_query(PUT)
                    .bind::<Integer, _>(5)
                    .bind::<Integer, _>(v)
                    .execute(conn)
                    .await
            })
            .await
            .unwrap();
        let read = get(&db, &rw, 5).await;
        assert_eq!(read.v, Some(v));
        assert!(read.in_recovery, "{read:?}");
        // Autocommit statements, asynchronous too: seen, wherever.
        let rw = ReadYourWrites::new();
        db.session(&rw)
            .write(async move |conn| {
                diesel::sql_query("SET synchronous_commit = off")
                    .execute(conn)
                    .await?;
                diesel::sql_query(PUT)
                    .bind::<Integer, _>(6)
                    .bind::<Integer, _>(v)
                    .execute(conn)
                    .await
            })
            .await
            .unwrap();
        assert_eq!(get(&db, &rw, 6).await.v, Some(v));
    }
}

async fn aurora_lag_and_tokens_go_by_reported_time(cluster: Arc<Cluster>) {
    for (k, form) in (40..).zip(FORMS) {
        aurora_lag_by_reported_time(&cluster, form, k).await;
    }
}

/// Reported lag, in Aurora's `form`, with key `k` for the writes.
async fn aurora_lag_by_reported_time(cluster: &Cluster, form: Form, k: i32) {
    let (lagging, fine) = (NodeId::Replica(0), NodeId::Replica(1));
    let aurora = Aurora::install(cluster, form).await;
    aurora.insert(&[
        (NodeId::Primary, "MASTER_SESSION_ID", 0.0),
        (lagging, "a", 5000.0),
        (fine, "b", 600.0),
    ]);
    let mut vars = aurora.vars();
    vars.push(("DATABASE_LAG_INTERVAL_MS", "100".to_owned()));
    vars.push(("DATABASE_MAX_REPLICA_LAG_MS", "1000".to_owned()));
    let db = ReplicaSet::connect(Config::from_vars(None, vars).unwrap())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let lag_of = |id: NodeId| {
        let status = db.status();
        status
            .replicas
            .iter()
            .find(|r| r.address == aurora.address(id))
            .map(|r| (r.lag, r.behind))
            .unwrap_or_else(|| panic!("{form:?}: no {id:?} in {status:?}"))
    };
    assert_eq!(lag_of(lagging), (Some(Duration::from_millis(5000)), true));
    assert_eq!(lag_of(fine), (Some(Duration::from_millis(600)), false));
    let (lagging_port, fine_port) = (port(cluster, lagging), port(cluster, fine));
    for _ in 0..20 {
        let read = get(&db, &ReadYourWrites::new(), k).await;
        assert_eq!(
            read.port, fine_port,
            "the replica reported 5 s behind gets no reads"
        );
    }
    // Just after a write, no replica is 600 ms ahead of it: the writer.
    let rw = ReadYourWrites::new();
    put(&db, &rw, k, k).await;
    let read = get(&db, &rw, k).await;
    assert!(!read.in_recovery, "{read:?}");
    assert_eq!(read.v, Some(k));
    // Later, the replica whose lag is less than the time since does.
    cluster.wait_for_replication().unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    let read = get(&db, &rw, k).await;
    assert_eq!((read.port, read.v), (fine_port, Some(k)));
    // A time from the future never qualifies a replica.
    let future = ReadYourWrites::resume(Some("0/0@99999999999999")).unwrap();
    assert!(!get(&db, &future, k).await.in_recovery);
    // A lag Aurora does not know (NULL) is no lag known: the replica is
    // not held behind the limit, and never serves a read that must see a
    // write.
    aurora.drive(&format!(
        "UPDATE aurora_topology SET replica_lag_in_msec = NULL WHERE server_id = '{}'",
        aurora.instance(lagging)
    ));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(lag_of(lagging), (None, false), "{form:?}");
    for _ in 0..20 {
        let read = get(&db, &rw, k).await;
        assert_ne!(read.port, lagging_port, "{form:?}: {read:?}");
        assert_eq!(read.v, Some(k));
    }
}

/// Aurora as it is: the WAL-position functions fail with 0A000 for the application's
/// role, and replica 0's replay is paused while the view reports its lag growing, as
/// Aurora would. Reads after each write see it, none on the paused replica, and no error
/// of a missing function reaches a caller.
async fn aurora_token_reads_never_read_stale_with_replay_paused(cluster: Arc<Cluster>) {
    let (paused, fine) = (NodeId::Replica(0), NodeId::Replica(1));
    let k = 60;
    let aurora = Aurora::install(&cluster, Form::Current).await;
    aurora.insert(&[
        (NodeId::Primary, "MASTER_SESSION_ID", 0.0),
        (paused, "a", 20.0),
        (fine, "b", 500.0),
    ]);
    let mut vars = aurora.vars();
    vars.push(("DATABASE_LAG_INTERVAL_MS", "100".to_owned()));
    let db = ReplicaSet::connect(Config::from_vars(None, vars).unwrap())
        .await
        .unwrap();
    on_cluster(&cluster, |c| c.pause_replay(0)).await.unwrap();
    aurora.drive(&format!(
        "UPDATE aurora_topology SET replica_lag_in_msec = 60000 WHERE server_id = '{}'",
        aurora.instance(paused)
    ));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (mut stale, mut on_paused, mut on_fine) = (0, 0, 0);
    for v in 0..40 {
        let rw = ReadYourWrites::new();
        put(&db, &rw, k, v).await;
        if v % 4 == 0 {
            // Some reads a while after their write, when the other replica qualifies.
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        let read = get(&db, &rw, k).await;
        stale += usize::from(read.v != Some(v));
        on_paused += usize::from(read.port == port(&cluster, paused));
        on_fine += usize::from(read.port == port(&cluster, fine));
    }
    on_cluster(&cluster, |c| c.resume_replay(0)).await.unwrap();
    on_cluster(&cluster, |c| c.wait_for_replication())
        .await
        .unwrap();
    assert_eq!(
        (stale, on_paused),
        (0, 0),
        "{on_fine} reads on the other replica"
    );
    assert!(
        on_fine > 0,
        "reads a while after their write went to a replica"
    );
}
