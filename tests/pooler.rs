//! Behind PgBouncer in transaction mode (`DATABASE_POOLER=transaction`): one
//! pooler in front of the writer and of each replica, each with fewer server
//! connections than the library's pools, as a fleet of containers shares a
//! database. What ran where is asked of the servers behind the poolers.

mod common;

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{Integer, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_replica::{Config, Error, Login, Pooler, ReadYourWrites, ReplicaSet, Tenant};
use diesel_replica_testkit::{Cluster, NodeId, PGBOUNCER_IMAGE_VAR, PgBouncer, Served, who_served};

/// Two tenants' schemas, each with a row naming its owner, and a table of
/// written values for read-your-writes.
const SETUP: &str = "CREATE SCHEMA acme; CREATE TABLE acme.owners (owner text NOT NULL); \
     INSERT INTO acme.owners VALUES ('acme'); \
     CREATE SCHEMA globex; CREATE TABLE globex.owners (owner text NOT NULL); \
     INSERT INTO globex.owners VALUES ('globex'); \
     CREATE TABLE kv (k int PRIMARY KEY, v int NOT NULL)";

/// Server connections of each pooler: fewer than the library's pools.
const POOLER_SIZE: usize = 2;

/// The variable that makes this binary a child process of
/// [`process_starts_back_to_back_leave_nothing_behind`]: its value is the
/// writer's pooler URL, then the replicas', separated by spaces.
const CHILD_VAR: &str = "DIESEL_REPLICA_POOLER_CHILD";

fn main() -> ExitCode {
    if let Ok(urls) = std::env::var(CHILD_VAR) {
        return child(&urls);
    }
    let mut tests = tests![
        reads_and_writes_land_where_they_should_with_their_promises,
        tenants_never_see_each_others_rows,
        reads_see_their_writes,
        a_killed_replica_fails_no_read,
        process_starts_back_to_back_leave_nothing_behind,
        the_library_sends_no_session_level_statement,
        reads_on_the_writer_with_a_read_only_login_commit_no_write,
    ];
    // Behind Debian bookworm's PgBouncer 1.18 a dropped read's statement
    // was left running in some runs (its client connection closed under
    // the cancel); README says so. Behind 1.24 it is cancelled every time.
    if std::env::var_os(PGBOUNCER_IMAGE_VAR).is_some() {
        tests.extend(tests![dropped_reads_are_cancelled_through_the_pooler]);
    }
    common::run_one_at_a_time(2, SETUP, tests)
}

/// A pooler in front of each node, and the set's configuration through them.
struct Poolers {
    writer: PgBouncer,
    replicas: Vec<PgBouncer>,
}

impl Poolers {
    fn start(cluster: &Cluster) -> Self {
        let start = |node: diesel_replica_testkit::Node| {
            PgBouncer::start(node.port(), POOLER_SIZE).expect("PgBouncer starts")
        };
        Self {
            writer: start(cluster.primary()),
            replicas: cluster.replicas().into_iter().map(start).collect(),
        }
    }

    fn config(&self) -> Config {
        config(
            &self.writer.url(),
            &self.replicas.iter().map(PgBouncer::url).collect::<Vec<_>>(),
        )
    }

    fn logs(&self) -> String {
        std::iter::once(&self.writer)
            .chain(&self.replicas)
            .map(PgBouncer::log)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn config(writer: &str, replicas: &[String]) -> Config {
    let mut config = Config::new(writer).unwrap();
    for url in replicas {
        config = config.with_replica(url).unwrap();
    }
    config.pooler = Pooler::Transaction;
    config.writer_pool.max_size = 8;
    config.replica_pool.max_size = 8;
    config.replica_pool.statement_timeout = Some(Duration::from_millis(700));
    config
}

async fn text(conn: &mut AsyncPgConnection, sql: &str) -> diesel::QueryResult<String> {
    diesel::select(diesel::dsl::sql::<Text>(sql))
        .get_result(conn)
        .await
}

async fn reads_and_writes_land_where_they_should_with_their_promises(cluster: Arc<Cluster>) {
    let poolers = Poolers::start(&cluster);
    let db = ReplicaSet::connect(poolers.config()).await.unwrap();
    let replica_ports: HashSet<i32> = common::replica_ports(&cluster).into_iter().collect();
    let writer_port = i32::from(cluster.primary().port());

    // Many concurrent calls through 2 server connections per node.
    let calls: Vec<_> = (0..64)
        .map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                match i % 4 {
                    0 => db.write(who_served).await,
                    1 => db.transaction(who_served).await,
                    _ => db.read(who_served).await,
                }
                .map(|served| (i, served))
            })
        })
        .collect();
    let mut replicas_seen = HashSet::new();
    for call in calls {
        let (i, served): (usize, Served) = call.await.unwrap().unwrap();
        if i % 4 < 2 {
            assert_eq!(served.port, writer_port, "{served:?}");
        } else {
            assert!(replica_ports.contains(&served.port), "{served:?}");
            assert!(served.in_recovery && served.read_only == "on", "{served:?}");
            replicas_seen.insert(served.port);
        }
    }
    assert_eq!(replicas_seen, replica_ports, "both replicas serve reads");

    // The statement timeout holds in each call's transaction, with no
    // startup option: the server cancels a slow read.
    let timeout = db
        .read(async |conn| text(conn, "current_setting('statement_timeout')").await)
        .await
        .unwrap();
    assert_eq!(timeout, "700ms");
    let slow = db
        .read(async |conn| text(conn, "pg_sleep(3)::text").await)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &slow,
            Error::Query {
                error: DieselError::DatabaseError(DatabaseErrorKind::Unknown, info),
                ..
            } if info.message().contains("statement timeout")
        ),
        "{slow:?}"
    );

    // A write in a read fails, on a replica and on the writer (reads that
    // must be fresh), with nothing committed.
    for fresh in [false, true] {
        let insert = async |conn: &mut AsyncPgConnection| {
            diesel::sql_query("INSERT INTO kv VALUES (-1, -1)")
                .execute(conn)
                .await
        };
        let refused = match fresh {
            false => db.read(insert).await,
            true => db.read_fresh(insert).await,
        }
        .unwrap_err();
        assert!(
            matches!(refused, Error::ReadOnlyViolation { .. }),
            "{refused:?}"
        );
    }
    let committed = cluster
        .psql(NodeId::Primary, "SELECT count(*) FROM kv WHERE k = -1")
        .unwrap();
    assert_eq!(committed, "0");

    // A second, plain client of the same poolers finds every server
    // connection at its defaults: each of its transactions is held open
    // so that together they take every server connection.
    for (pooler, primary) in
        std::iter::once((&poolers.writer, true)).chain(poolers.replicas.iter().map(|p| (p, false)))
    {
        let mut clients = Vec::new();
        for _ in 0..POOLER_SIZE {
            let (client, connection) =
                tokio_postgres::connect(&pooler.url(), tokio_postgres::NoTls)
                    .await
                    .unwrap();
            tokio::spawn(connection);
            client.batch_execute("BEGIN").await.unwrap();
            clients.push(client);
        }
        let mut pids = HashSet::new();
        for client in &clients {
            // A simple query: the client prepares nothing itself. PgBouncer
            // 1.21+ keeps the statements it prepares for its clients under
            // names of its own (`PGBOUNCER_n`); those are the pooler's.
            let rows = client
                .simple_query(
                    "SELECT pg_backend_pid(), current_setting('default_transaction_read_only'), \
                     current_setting('search_path'), current_setting('statement_timeout'), \
                     (SELECT count(*) FROM pg_prepared_statements \
                      WHERE name NOT LIKE 'PGBOUNCER\\_%'), \
                     (SELECT count(*) FROM pg_cursors WHERE is_holdable)",
                )
                .await
                .unwrap();
            let Some(row) = rows.iter().find_map(|message| match message {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
                _ => None,
            }) else {
                panic!("no row: {rows:?}");
            };
            let state: Vec<&str> = (0..6).map(|i| row.get(i).unwrap()).collect();
            pids.insert(state[0].to_owned());
            assert_eq!(
                state[1..],
                ["off", "\"$user\", public", "0", "0", "0"],
                "primary: {primary}"
            );
        }
        assert_eq!(pids.len(), POOLER_SIZE, "every server connection was seen");
    }
}

async fn tenants_never_see_each_others_rows(cluster: Arc<Cluster>) {
    let poolers = Poolers::start(&cluster);
    let db = ReplicaSet::connect(poolers.config()).await.unwrap();
    let wrong = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|task| {
            let (db, wrong, seen) = (db.clone(), wrong.clone(), seen.clone());
            tokio::spawn(async move {
                for i in 0..40 {
                    let name = ["acme", "globex"][(task + i) % 2];
                    let tenant = Tenant::new(name).unwrap();
                    let owners = async |conn: &mut AsyncPgConnection| {
                        diesel::sql_query("SELECT owner FROM owners")
                            .load::<Owner>(conn)
                            .await
                    };
                    let scoped = db.tenant(&tenant);
                    let rows = match i % 3 {
                        0 => scoped.transaction(owners).await,
                        1 => scoped.read_snapshot(owners).await,
                        _ => scoped.read(owners).await,
                    }
                    .unwrap();
                    seen.fetch_add(rows.len() as u64, Ordering::Relaxed);
                    let others = rows.iter().filter(|row| row.owner != name).count();
                    wrong.fetch_add(others as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(AtomicU64::load(&seen, Ordering::Relaxed), 16 * 40);
    assert_eq!(
        AtomicU64::load(&wrong, Ordering::Relaxed),
        0,
        "cross-tenant rows"
    );
    // Unscoped, the search path is the server's default: no tenant's.
    let unscoped = db
        .read(async |conn| text(conn, "current_setting('search_path')").await)
        .await
        .unwrap();
    assert_eq!(unscoped, "\"$user\", public");
}

#[derive(diesel::QueryableByName)]
struct Owner {
    #[diesel(sql_type = Text)]
    owner: String,
}

#[derive(diesel::QueryableByName)]
struct Value {
    #[diesel(sql_type = Integer)]
    v: i32,
}

async fn reads_see_their_writes(cluster: Arc<Cluster>) {
    let poolers = Poolers::start(&cluster);
    let db = ReplicaSet::connect(poolers.config()).await.unwrap();
    let stale = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let (db, stale) = (db.clone(), stale.clone());
            tokio::spawn(async move {
                let session = ReadYourWrites::new();
                for v in 1..=25 {
                    db.session(&session)
                        .write(async move |conn| {
                            diesel::sql_query(
                                "INSERT INTO kv VALUES ($1, $2) \
                                 ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                            )
                            .bind::<Integer, _>(task)
                            .bind::<Integer, _>(v)
                            .execute(conn)
                            .await
                        })
                        .await
                        .unwrap();
                    let read: Value = db
                        .session(&session)
                        .read(async move |conn| {
                            diesel::sql_query("SELECT v FROM kv WHERE k = $1")
                                .bind::<Integer, _>(task)
                                .get_result(conn)
                                .await
                        })
                        .await
                        .unwrap();
                    if read.v != v {
                        stale.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(AtomicU64::load(&stale, Ordering::Relaxed), 0, "stale reads");
}

async fn a_killed_replica_fails_no_read(cluster: Arc<Cluster>) {
    let poolers = Poolers::start(&cluster);
    let db = ReplicaSet::connect(poolers.config()).await.unwrap();
    let failed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let (db, failed, done) = (db.clone(), failed.clone(), done.clone());
            tokio::spawn(async move {
                let until = tokio::time::Instant::now() + Duration::from_secs(4);
                while tokio::time::Instant::now() < until {
                    match db.read(who_served).await {
                        Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            eprintln!("failed read: {e}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let victim = cluster.replica_ids()[0];
    cluster.kill(victim).unwrap();
    for reader in readers {
        reader.await.unwrap();
    }
    cluster.start_node(victim).unwrap();
    cluster.wait_for_replication().unwrap();
    assert_eq!(
        AtomicU64::load(&failed, Ordering::Relaxed),
        0,
        "failed reads out of {}; poolers:\n{}",
        AtomicU64::load(&done, Ordering::Relaxed),
        poolers.logs()
    );
    assert!(AtomicU64::load(&done, Ordering::Relaxed) > 100);
}

async fn dropped_reads_are_cancelled_through_the_pooler(cluster: Arc<Cluster>) {
    let poolers = Poolers::start(&cluster);
    let db = ReplicaSet::connect(poolers.config()).await.unwrap();
    let sleeps: Vec<_> = (0..10)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move {
                let read = db.read(async |conn| text(conn, "pg_sleep(5)::text").await);
                tokio::time::timeout(Duration::from_millis(100), read).await
            })
        })
        .collect();
    for sleep in sleeps {
        assert!(sleep.await.unwrap().is_err(), "the read was dropped");
    }
    // Well before the servers' own 700 ms statement timeout.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for replica in cluster.replica_ids() {
        let running = cluster
            .psql(
                replica,
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE query LIKE '%pg_sleep(5)%' AND state = 'active' \
                 AND pid <> pg_backend_pid()",
            )
            .unwrap();
        assert_eq!(running, "0", "{replica:?}: {}", poolers.logs());
    }
    // The connections are usable again.
    db.read(who_served).await.unwrap();
}

/// Three processes, one after the other, each connecting through the same
/// poolers and running calls: diesel-async names its prepared statements
/// `s0`, `s1`, ... afresh in each process, so one left on a server
/// connection would collide with the next process's.
async fn process_starts_back_to_back_leave_nothing_behind(cluster: Arc<Cluster>) {
    let poolers = Poolers::start(&cluster);
    let urls = std::iter::once(&poolers.writer)
        .chain(&poolers.replicas)
        .map(PgBouncer::url)
        .collect::<Vec<_>>()
        .join(" ");
    for run in 0..3 {
        let urls = urls.clone();
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new(std::env::current_exe().unwrap())
                .env(CHILD_VAR, urls)
                .output()
        })
        .await
        .unwrap()
        .unwrap();
        assert!(
            output.status.success(),
            "start {run}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// A child process's work: concurrent reads, writes and a scoped read.
fn child(urls: &str) -> ExitCode {
    let urls: Vec<String> = urls.split(' ').map(str::to_owned).collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let db = ReplicaSet::connect(config(&urls[0], &urls[1..]))
            .await
            .unwrap();
        let calls: Vec<_> = (0..48)
            .map(|i| {
                let db = db.clone();
                tokio::spawn(async move {
                    match i % 3 {
                        0 => db.write(who_served).await.map(drop),
                        1 => {
                            let tenant = Tenant::new("acme").unwrap();
                            db.tenant(&tenant)
                                .read(async |conn| text(conn, "owner FROM owners").await)
                                .await
                                .map(drop)
                        }
                        _ => db.read(who_served).await.map(drop),
                    }
                })
            })
            .collect();
        for call in calls {
            call.await.unwrap().unwrap();
        }
    });
    ExitCode::SUCCESS
}

/// Behind a pooler no session setting of the library's survives its
/// transaction, so a read on the writer whose body ends the read's
/// transaction by SQL and then writes commits the write (and the call then
/// fails). A login whose server-side default is read-only closes that gap.
async fn reads_on_the_writer_with_a_read_only_login_commit_no_write(cluster: Arc<Cluster>) {
    cluster
        .psql(
            NodeId::Primary,
            "CREATE ROLE app_reader LOGIN PASSWORD 'reader-pass'; \
             ALTER ROLE app_reader SET default_transaction_read_only = on; \
             GRANT SELECT, INSERT ON kv TO app_reader",
        )
        .unwrap();
    let pooler = PgBouncer::start_with_logins(
        cluster.primary().port(),
        POOLER_SIZE,
        &[("app_reader", "reader-pass")],
    )
    .unwrap();
    let committed = || {
        cluster
            .psql(NodeId::Primary, "SELECT count(*) FROM kv WHERE k = -7")
            .unwrap()
    };
    let ends_and_writes = async |conn: &mut AsyncPgConnection| {
        diesel_async::SimpleAsyncConnection::batch_execute(
            conn,
            "COMMIT; INSERT INTO kv VALUES (-7, -7)",
        )
        .await
    };

    // No replicas: reads run on the writer. With the writer's login the
    // write commits, and the call fails after it.
    let db = ReplicaSet::connect(config(&pooler.url(), &[]))
        .await
        .unwrap();
    let failed = db.read(ends_and_writes).await.unwrap_err();
    assert!(
        matches!(failed, Error::ReadOnlyViolation { .. }),
        "{failed:?}"
    );
    assert_eq!(committed(), "1", "the gap the read login closes");
    cluster
        .psql(NodeId::Primary, "DELETE FROM kv WHERE k = -7")
        .unwrap();

    // With the read login, the server refuses the write.
    let mut config = config(&pooler.url(), &[]);
    config.writer_read_login = Some(Login::new("app_reader", "reader-pass"));
    let db = ReplicaSet::connect(config).await.unwrap();
    let refused = db.read(ends_and_writes).await.unwrap_err();
    assert!(
        matches!(refused, Error::ReadOnlyViolation { .. }),
        "{refused:?}"
    );
    assert_eq!(committed(), "0");
    // Reads run as the read login; writes as the writer's.
    let reader = db
        .read(async |conn| text(conn, "current_user::text").await)
        .await
        .unwrap();
    assert_eq!(reader, "app_reader");
    let writer = db
        .write(async |conn| text(conn, "current_user::text").await)
        .await
        .unwrap();
    assert_eq!(writer, "postgres");
}

/// The parameters PgBouncer tracks per client and sets on a server
/// connection before serving the client there, upper-cased.
const POOLER_TRACKED: [&str; 5] = [
    "CLIENT_ENCODING",
    "DATESTYLE",
    "TIMEZONE",
    "STANDARD_CONFORMING_STRINGS",
    "APPLICATION_NAME",
];

/// With every statement logged on the servers, none the library sent
/// through the poolers is session-level: only diesel-async's own time zone
/// and client encoding at connect (which poolers track) change a session.
async fn the_library_sends_no_session_level_statement(cluster: Arc<Cluster>) {
    const APP: &str = "pooler-statements";
    let nodes: Vec<NodeId> = std::iter::once(NodeId::Primary)
        .chain(cluster.replica_ids())
        .collect();
    let configure = |settings: &[&str]| {
        for &node in &nodes {
            for sql in settings.iter().chain(&["SELECT pg_reload_conf()"]) {
                cluster.psql(node, sql).unwrap();
            }
        }
    };
    configure(&[
        "ALTER SYSTEM SET log_statement = 'all'",
        "ALTER SYSTEM SET log_line_prefix = '%a|'",
    ]);
    cluster.wait_for_replication().unwrap();
    let poolers = Poolers::start(&cluster);
    let mut config = poolers.config();
    config.application_name = APP.into();
    let db = ReplicaSet::connect(config).await.unwrap();
    let tenant = Tenant::new("globex").unwrap();
    for _ in 0..10 {
        db.read(who_served).await.unwrap();
        db.read_fresh(who_served).await.unwrap();
        db.read_snapshot(who_served).await.unwrap();
        db.write(who_served).await.unwrap();
        db.transaction(who_served).await.unwrap();
        db.tenant(&tenant)
            .read(async |conn| text(conn, "owner FROM owners").await)
            .await
            .unwrap();
        let _ = db
            .read(async |conn| text(conn, "1/0").await)
            .await
            .unwrap_err();
    }
    drop(db);
    configure(&[
        "ALTER SYSTEM RESET log_statement",
        "ALTER SYSTEM RESET log_line_prefix",
    ]);

    let mut ours = 0;
    let mut session_level = Vec::new();
    for node in std::iter::once(cluster.primary()).chain(cluster.replicas()) {
        let log = std::fs::read_to_string(node.log_file()).unwrap();
        for line in log.lines() {
            let Some(rest) = line.strip_prefix(&format!("{APP}|")) else {
                continue;
            };
            // `LOG:  statement: ...` (simple) or `LOG:  execute s3: ...`.
            let statement = match (rest.find("statement: "), rest.find("execute ")) {
                (Some(at), _) => &rest[at + "statement: ".len()..],
                (None, Some(at)) => match rest[at..].split_once(": ") {
                    Some((_, statement)) => statement,
                    None => continue,
                },
                (None, None) => continue,
            };
            ours += 1;
            let upper = statement.to_ascii_uppercase();
            let diesel_async_setup =
                upper.contains("SET TIME ZONE 'UTC'") || upper.contains("SET CLIENT_ENCODING TO");
            // PgBouncer's own: it gives each server connection the
            // parameters it tracks for the client it serves next
            // (`SET TimeZone='Etc/UTC';SET application_name='...';`).
            let pooler_sync = upper.split(';').map(str::trim).all(|part| {
                part.is_empty()
                    || POOLER_TRACKED
                        .iter()
                        .any(|name| part.starts_with(&format!("SET {name}='")))
            });
            if pooler_sync {
                continue;
            }
            let session = [
                "SET ",
                "RESET",
                "DISCARD",
                "UNLISTEN",
                "CLOSE",
                "PREPARE",
                "DEALLOCATE",
            ]
            .iter()
            .any(|word| {
                upper.split(';').any(|part| {
                    let part = part.trim_start();
                    part.starts_with(word) && !part.starts_with("SET LOCAL")
                })
            }) || upper.contains("ADVISORY_UNLOCK")
                || (upper.contains("SET_CONFIG") && upper.contains("FALSE)"));
            if session && !diesel_async_setup {
                session_level.push(line.to_owned());
            }
        }
    }
    assert!(ours > 70, "the library's statements were logged: {ours}");
    assert!(
        session_level.is_empty(),
        "{} session-level statements:\n{}",
        session_level.len(),
        session_level.join("\n")
    );
}
