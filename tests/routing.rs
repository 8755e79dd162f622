//! Routing against a real primary and three streaming replicas: where reads
//! and writes run is asked of the server that ran them.

mod common;

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::aurora::{Aurora, FORMS, Form};
use common::{closed_port, replica_ports, report};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::RunQueryDsl;
use diesel_replica::{Config, Error, ReplicaSet, Rule};
use diesel_replica_testkit::{Cluster, NodeId, Served, WHO_SERVED, who_served};

const SETUP: &str = "CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)";

fn main() -> ExitCode {
    common::run(
        3,
        SETUP,
        tests![
            reads_land_on_replicas_in_read_only_transactions,
            writes_land_on_the_writer,
            every_replica_serves_reads,
            zero_replicas_reads_go_to_the_writer_read_only,
            read_fresh_runs_on_the_writer_read_only,
            write_on_the_read_path_fails_with_the_read_only_error,
            transaction_commits_on_ok_and_rolls_back_on_err,
            query_errors_are_told_apart_from_routing_errors,
            reads_run_concurrently_from_spawned_tasks,
            warm_up_opens_connections_on_every_node,
            unreachable_replica_is_a_checkout_error_without_the_password,
            wrong_password_is_reported_without_the_password,
            a_dropped_read_is_cancelled_on_the_server,
            a_read_is_one_read_only_transaction_a_snapshot_read_repeatable_read,
            every_character_of_a_generated_password_connects,
            url_options_keep_the_statement_timeout,
            zero_statement_timeout_sets_no_limit_on_either_side,
            session_state_a_read_leaves_is_gone_for_the_next_user,
            a_read_that_ends_its_transaction_leaves_nothing_for_the_next_user,
            a_replica_read_ends_with_a_rollback_unless_its_body_touched_the_session,
            a_read_that_prepares_or_loads_closes_its_connection,
            a_read_behind_a_failed_end_runs_again_on_a_new_connection,
            session_state_a_write_leaves_is_gone_for_the_next_user,
            a_read_on_the_writer_cannot_be_made_read_write,
            reads_refuse_the_same_writes_on_the_writer_as_on_a_replica,
            a_read_on_the_writer_sends_no_notification,
            log_lines_show_no_password_given_as_a_query_parameter,
            errors_keep_their_source_and_tell_their_kind,
            nodes_are_known_by_address_and_database,
            connections_past_their_lifetime_or_idle_timeout_are_replaced,
            replicas_added_and_removed_while_reading_fail_no_read,
            candidate_hosts_discovery_finds_the_writer_and_the_replicas,
            two_candidates_answering_as_the_writer_are_told_and_replicas_serve_on,
            a_busy_replica_pool_is_not_a_dead_node,
            aurora_discovery_follows_aurora_replica_status,
            aurora_writes_go_to_the_endpoint_when_the_view_names_no_writer,
            a_replica_address_that_reaches_the_writer_is_found_at_connect,
            a_writer_address_that_reaches_a_standby_is_refused_at_connect,
        ],
    )
}

async fn connect(cluster: &Cluster) -> ReplicaSet {
    ReplicaSet::connect(cluster.config()).await.unwrap()
}

async fn reads_land_on_replicas_in_read_only_transactions(cluster: Arc<Cluster>) {
    let db = connect(&cluster).await;
    for _ in 0..6 {
        let served = db.read(who_served).await.unwrap();
        assert!(replica_ports(&cluster).contains(&served.port), "{served:?}");
        assert!(served.in_recovery, "{served:?}");
        assert_eq!(served.read_only, "on");
    }
}

async fn writes_land_on_the_writer(cluster: Arc<Cluster>) {
    let db = connect(&cluster).await;
    let writer_port = i32::from(cluster.primary().port());
    for served in [db.write(who_served).await, db.transaction(who_served).await] {
        let served = served.unwrap();
        assert_eq!(served.port, writer_port);
        assert!(!served.in_recovery);
        assert_eq!(served.read_only, "off");
    }
    let inserted = db
        .write(async |conn| {
            diesel::sql_query(concat!(
                "INSERT INTO items (name) VALUES ('written') RETURNING ",
                diesel_replica_testkit::server_columns!(),
                ", pg_is_in_recovery() AS in_recovery, 'off' AS read_only"
            ))
            .get_result::<Served>(conn)
            .await
        })
        .await
        .unwrap();
    assert_eq!(inserted.port, writer_port);
    let on_primary = cluster
        .psql(
            NodeId::Primary,
            "SELECT count(*) FROM items WHERE name = 'written'",
        )
        .unwrap();
    assert_eq!(on_primary, "1");
}

async fn every_replica_serves_reads(cluster: Arc<Cluster>) {
    let db = connect(&cluster).await;
    let mut seen = HashSet::new();
    for _ in 0..60 {
        seen.insert(db.read(who_served).await.unwrap().port);
    }
    assert_eq!(
        seen,
        replica_ports(&cluster).into_iter().collect::<HashSet<_>>()
    );
}

async fn zero_replicas_reads_go_to_the_writer_read_only(cluster: Arc<Cluster>) {
    let db = ReplicaSet::connect(Config::new(&cluster.writer_url()).unwrap())
        .await
        .unwrap();
    assert_eq!(db.replica_count(), 0);
    let served = db.read(who_served).await.unwrap();
    assert_eq!(served.port, i32::from(cluster.primary().port()));
    assert!(!served.in_recovery);
    assert_eq!(served.read_only, "on");
    let err = db
        .read(async |conn| {
            diesel::sql_query("INSERT INTO items (name) VALUES ('nope')")
                .execute(conn)
                .await
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ReadOnlyViolation { .. }), "{err:?}");
}

async fn read_fresh_runs_on_the_writer_read_only(cluster: Arc<Cluster>) {
    let db = connect(&cluster).await;
    let served = db.read_fresh(who_served).await.unwrap();
    assert_eq!(served.port, i32::from(cluster.primary().port()));
    assert_eq!(served.read_only, "on");
}

async fn write_on_the_read_path_fails_with_the_read_only_error(cluster: Arc<Cluster>) {
    let db = connect(&cluster).await;
    let insert = async |conn: &mut diesel_async::AsyncPgConnection| {
        diesel::sql_query("INSERT INTO items (name) VALUES ('sneaky')")
            .execute(conn)
            .await
    };
    for err in [
        db.read(insert).await.unwrap_err(),
        db.read_fresh(insert).await.unwrap_err(),
    ] {
        assert!(matches!(err, Error::ReadOnlyViolation { .. }), "{err:?}");
        let text = report(&err);
        assert!(
            text.contains("cannot execute INSERT in a read-only transaction"),
            "{text}"
        );
        assert!(text.contains("the read path is read-only"), "{text}");
    }
    let count = cluster
        .psql(
            NodeId::Primary,
            "SELECT count(*) FROM items WHERE name = 'sneaky'",
        )
        .unwrap();
    assert_eq!(count, "0");
}

async fn transaction_commits_on_ok_and_rolls_back_on_err(cluster: Arc<Cluster>) {
    let db = connect(&cluster).await;
    let err = db
        .transaction(async |conn| {
            diesel::sql_query("INSERT INTO items (name) VALUES ('rolled-back')")
                .execute(conn)
                .await?;
            Err::<(), _>(DieselError::RollbackTransaction)
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Query {
                error: DieselError::RollbackTransaction,
                ..
            }
        ),
        "{err:?}"
    );
    db.transaction(async |conn| {
        diesel::sql_query("INSERT INTO items (name) VALUES ('committed')")
            .execute(conn)
            .await
    })
    .await
    .unwrap();
    let names = cluster
        .psql(
            NodeId::Primary,
            "SELECT string_agg(name, ',') FROM items WHERE name IN ('rolled-back', 'committed')",
        )
        .unwrap();
    assert_eq!(names, "committed");
}

async fn query_errors_are_told_apart_from_routing_errors(cluster: Arc<Cluster>) {
    let db = connect(&cluster).await;
    let err = db
        .read(async |conn| {
            diesel::sql_query("SELECT * FROM no_such_table")
                .execute(conn)
                .await
        })
        .await
        .unwrap_err();
    match &err {
        Error::Query {
            node,
            error: DieselError::DatabaseError(DatabaseErrorKind::Unknown, info),
        } => {
            assert!(node.starts_with("replica-"), "{node}");
            assert!(info.message().contains("no_such_table"));
        }
        other => panic!("expected a query error, got {other:?}"),
    }
    assert!(!err.is_timeout());
    assert!(err.query_error().is_some());
}

async fn reads_run_concurrently_from_spawned_tasks(cluster: Arc<Cluster>) {
    let db = connect(&cluster).await;
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move {
                db.read(async |conn| {
                    diesel::sql_query("SELECT pg_sleep(0.05)")
                        .execute(conn)
                        .await?;
                    diesel::sql_query(WHO_SERVED)
                        .get_result::<Served>(conn)
                        .await
                })
                .await
            })
        })
        .collect();
    let mut ports = HashSet::new();
    for task in tasks {
        ports.insert(task.await.unwrap().unwrap().port);
    }
    assert_eq!(
        ports,
        replica_ports(&cluster).into_iter().collect::<HashSet<_>>()
    );
}

async fn warm_up_opens_connections_on_every_node(cluster: Arc<Cluster>) {
    let mut config = cluster.config();
    config.application_name = "warm-up-test".into();
    config.writer_pool.warm_up = 2;
    config.replica_pool.warm_up = 3;
    let db = ReplicaSet::connect(config).await.unwrap();
    let count = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'warm-up-test'";
    assert_eq!(cluster.psql(NodeId::Primary, count).unwrap(), "2");
    for i in 0..3 {
        assert_eq!(cluster.psql(NodeId::Replica(i), count).unwrap(), "3");
    }
    let status = db.status();
    assert_eq!(status.writer.size, 2);
    assert!(
        status
            .replicas
            .iter()
            .all(|r| r.size == 3 && r.available == 3)
    );
}

async fn unreachable_replica_is_a_checkout_error_without_the_password(cluster: Arc<Cluster>) {
    let closed_port = closed_port();
    let mut config = Config::new(&cluster.writer_url()).unwrap();
    let dead = format!(
        "postgres://postgres:{}@127.0.0.1:{closed_port}/postgres",
        cluster.password()
    );
    config = config.with_replica(&dead).unwrap();
    config.health.reads_fall_back_to_writer = false;
    let db = ReplicaSet::connect(config)
        .await
        .expect("a dead replica does not stop start-up");
    let err = db.read(who_served).await.unwrap_err();
    assert!(matches!(err, Error::Checkout { .. }), "{err:?}");
    let text = format!("{err} {err:?}");
    assert!(
        text.contains(&format!("replica-0 (127.0.0.1:{closed_port})")),
        "{text}"
    );
    assert!(!text.contains(cluster.password()), "{text}");
}

async fn wrong_password_is_reported_without_the_password(cluster: Arc<Cluster>) {
    let wrong = "Wr0ng-Pa55word";
    let url = format!(
        "postgres://postgres:{wrong}@127.0.0.1:{}/postgres",
        cluster.primary().port()
    );
    let err = match ReplicaSet::connect(Config::new(&url).unwrap()).await {
        Err(err) => err,
        Ok(_) => panic!("a wrong password must fail the writer's warm-up"),
    };
    let text = format!("{err} {err:?}");
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(!text.contains(wrong), "{text}");
}

/// A read dropped while its statement runs (here by the caller's
/// timeout) is cancelled on the server, and its connection serves again
/// only once the server is idle on it: the node never holds more backends
/// than the pool's maximum, and nothing of the dropped reads runs on.
async fn a_dropped_read_is_cancelled_on_the_server(cluster: Arc<Cluster>) {
    const APP: &str = "cancel-on-drop";
    let mut config = Config::new(&cluster.writer_url())
        .unwrap()
        .with_replica(&cluster.replica_urls()[0])
        .unwrap();
    config.replica_pool.max_size = 1;
    config.application_name = APP.to_owned();
    let db = ReplicaSet::connect(config).await.unwrap();
    let on_replica = |sql: &str| cluster.psql(NodeId::Replica(0), sql).unwrap();
    let backends = || {
        on_replica(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{APP}'"
        ))
        .parse::<u32>()
        .unwrap()
    };
    let sleeping = || {
        on_replica(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{APP}' \
             AND state = 'active' AND query LIKE '%pg_sleep(5)%'"
        ))
        .parse::<u32>()
        .unwrap()
    };
    let mut most = 0;
    for _ in 0..20 {
        let slow =
            db.read(async |conn| diesel::sql_query("SELECT pg_sleep(5)").execute(conn).await);
        let timed_out = tokio::time::timeout(Duration::from_millis(100), slow).await;
        assert!(timed_out.is_err(), "the slow read should have been dropped");
        most = most.max(backends());
    }
    assert!(most <= 1, "{most} backends for a pool of 1");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sleeping(), 0, "a dropped read still runs 200 ms later");
    // The next read does not wait behind a dropped one.
    let started = std::time::Instant::now();
    let served = db.read(who_served).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(served.read_only, "on");
    assert!(backends() <= 1);
}

/// Every printable ASCII character and a space, as a generated secret may
/// hold them, with `%41` that a URL decoder would read as `A`.
fn hostile_password() -> String {
    let printable: String = (b' '..=b'~').map(char::from).collect();
    format!("p%41ss{printable}")
}

/// Percent-encodes every byte but ASCII letters and digits.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn every_character_of_a_generated_password_connects(cluster: Arc<Cluster>) {
    let password = hostile_password();
    let literal = password.replace('\'', "''");
    cluster
        .psql(
            NodeId::Primary,
            &format!(
                "CREATE ROLE hostile LOGIN PASSWORD '{literal}'; GRANT ALL ON items TO hostile"
            ),
        )
        .unwrap();
    cluster.wait_for_replication().unwrap();
    let writer_port = cluster.primary().port();
    let replica_hosts = cluster
        .replicas()
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port()))
        .collect::<Vec<_>>()
        .join(",");
    let secret = serde_json::json!({
        "username": "hostile",
        "password": password,
        "host": "127.0.0.1",
        "port": writer_port,
        "dbname": "postgres",
    })
    .to_string();
    let url = format!(
        "postgres://hostile:{}@127.0.0.1:{writer_port}/postgres",
        encode(&password)
    );
    for source in [("DATABASE_SECRET", secret), ("DATABASE_URL", url)] {
        let config = Config::from_vars(
            None,
            [
                source.clone(),
                ("DATABASE_REPLICA_HOSTS", replica_hosts.clone()),
            ],
        )
        .unwrap();
        assert!(!format!("{config:?}").contains("p%41ss"), "{config:?}");
        let db = ReplicaSet::connect(config)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", source.0));
        for _ in 0..4 {
            let served = db.read(who_served).await.unwrap();
            assert!(served.in_recovery, "{}: a replica serves reads", source.0);
        }
        let user = db
            .write(async |conn| text(conn, "current_user::text").await)
            .await
            .unwrap();
        assert_eq!(user, "hostile");
        let status = db.status();
        assert!(
            status.replicas.iter().all(|r| r.last_error.is_none()),
            "{status:?}"
        );
    }
}

async fn url_options_keep_the_statement_timeout(cluster: Arc<Cluster>) {
    let url = format!("{}?options=-c%20work_mem%3D7MB", cluster.writer_url());
    let mut config = Config::new(&url).unwrap();
    config.writer_pool.statement_timeout = Some(Duration::from_millis(3000));
    let db = ReplicaSet::connect(config).await.unwrap();
    let settings = db
        .read(async |conn| {
            text(
                conn,
                "current_setting('work_mem') || ' ' || current_setting('statement_timeout')",
            )
            .await
        })
        .await
        .unwrap();
    assert_eq!(settings, "7MB 3s");
}

async fn zero_statement_timeout_sets_no_limit_on_either_side(cluster: Arc<Cluster>) {
    let db = ReplicaSet::connect(
        Config::from_vars(
            None,
            [
                ("DATABASE_URL", cluster.writer_url()),
                ("DATABASE_STATEMENT_TIMEOUT_MS", "0".to_owned()),
            ],
        )
        .unwrap(),
    )
    .await
    .unwrap();
    // Longer than the half second the client used to add to a timeout of 0.
    let timeout = db
        .read(async |conn| {
            text(
                conn,
                "current_setting('statement_timeout') FROM pg_sleep(0.8)",
            )
            .await
        })
        .await
        .unwrap();
    assert_eq!(timeout, "0");
}

/// One replica and the writer, one connection each: every call reuses the
/// connection the call before it used.
fn one_connection_each(cluster: &Cluster) -> Config {
    let mut config = Config::new(&cluster.writer_url())
        .unwrap()
        .with_replica(&cluster.replica_urls()[0])
        .unwrap();
    config.writer_pool.max_size = 1;
    config.replica_pool.max_size = 1;
    config
}

/// Runs `sql` (any statements) in a body, as a body may.
async fn batch(conn: &mut diesel_async::AsyncPgConnection, sql: &str) -> diesel::QueryResult<()> {
    diesel_async::SimpleAsyncConnection::batch_execute(conn, sql).await
}

/// A text value computed by the server in a read of `db`.
async fn read_text(db: &ReplicaSet, sql: &str) -> String {
    db.read(async |conn| text(conn, sql).await).await.unwrap()
}

/// A text value computed by the server.
async fn text(
    conn: &mut diesel_async::AsyncPgConnection,
    sql: &str,
) -> diesel::QueryResult<String> {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(sql))
        .get_result(conn)
        .await
}

/// What a session shows of its state, as one line.
const SESSION_STATE: &str = "current_setting('search_path') || ' | ' || current_setting('statement_timeout') \
     || ' | ' || current_setting('work_mem') || ' | ' || current_user::text \
     || ' | ' || (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) \
     || ' | ' || (SELECT count(*) FROM pg_listening_channels()) \
     || ' | ' || (to_regclass('pg_temp.scratch') IS NULL)::text \
     || ' | ' || current_setting('TimeZone')";

async fn session_state_a_read_leaves_is_gone_for_the_next_user(cluster: Arc<Cluster>) {
    let db = ReplicaSet::connect(one_connection_each(&cluster))
        .await
        .unwrap();
    let fresh = read_text(&db, SESSION_STATE).await;
    assert_eq!(
        fresh,
        "\"$user\", public | 10s | 4MB | postgres | 0 | 0 | true | UTC"
    );
    let pid = read_text(&db, "pg_backend_pid()::text").await;
    // Session state of every kind a read may set, with and without an error.
    let leave = "SET search_path TO nowhere; SET statement_timeout = 12345; SET work_mem = '64MB'; \
         SET TimeZone = 'Asia/Tokyo'; SELECT pg_advisory_lock(42)";
    db.read(async |conn| batch(conn, leave).await)
        .await
        .unwrap();
    let after = read_text(&db, SESSION_STATE).await;
    assert_eq!(after, fresh);
    let failed = db
        .read(async |conn| batch(conn, &format!("{leave}; SELECT 1/0")).await)
        .await;
    assert!(matches!(failed, Err(Error::Query { .. })), "{failed:?}");
    let after = read_text(&db, SESSION_STATE).await;
    assert_eq!(after, fresh);
    let pid_after = read_text(&db, "pg_backend_pid()::text").await;
    assert_eq!(pid_after, pid, "the connection was reused, not replaced");
    // The body leaves a transaction open, or failed, after setting state:
    // the next user finds neither.
    // (Left open, the transaction would still be `REPEATABLE READ`.)
    for body in [
        format!("BEGIN; SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; {leave}"),
        format!("BEGIN ISOLATION LEVEL REPEATABLE READ; {leave}"),
    ] {
        db.read(async |conn| batch(conn, &body).await)
            .await
            .unwrap();
        let after = read_text(&db, SESSION_STATE).await;
        assert_eq!(after, fresh, "after {body}");
        let isolation = db
            .read(async |conn| text(conn, "current_setting('transaction_isolation')").await)
            .await
            .unwrap();
        assert_eq!(
            isolation, "read committed",
            "after {body}: a transaction was left open"
        );
    }
    // A failed transaction the body swallowed.
    db.read(async |conn| {
        batch(conn, &format!("BEGIN; {leave}")).await?;
        let _ = batch(conn, "SELECT 1/0").await;
        Ok(())
    })
    .await
    .unwrap();
    let after = read_text(&db, SESSION_STATE).await;
    assert_eq!(after, fresh);
    let pid_after = read_text(&db, "pg_backend_pid()::text").await;
    assert_eq!(pid_after, pid, "the connection was reset, not replaced");
    // A default isolation a hot standby refuses (every later statement of
    // the session would fail "cannot use serializable mode in a hot
    // standby"): the reset undoes it, and the connection serves on.
    for body in [
        "SET default_transaction_isolation = 'serializable'",
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    ] {
        read_leaves_nothing(&db, body, &fresh, &pid, 5).await;
    }
}

/// Runs `body` as a read, then checks that each of the next `reads` reads
/// finds the `fresh` session state, and that the backend `pid` still
/// serves them: the session was reset, not replaced.
async fn read_leaves_nothing(db: &ReplicaSet, body: &str, fresh: &str, pid: &str, reads: usize) {
    db.read(async |conn| batch(conn, body).await).await.unwrap();
    for _ in 0..reads {
        let after = db
            .read(async |conn| text(conn, SESSION_STATE).await)
            .await
            .unwrap_or_else(|e| panic!("after {body}: {e}"));
        assert_eq!(after, fresh, "after {body}");
    }
    let pid_after = read_text(db, "pg_backend_pid()::text").await;
    assert_eq!(pid_after, pid, "after {body}: reset, not replaced");
}

async fn a_read_that_ends_its_transaction_leaves_nothing_for_the_next_user(cluster: Arc<Cluster>) {
    let db = ReplicaSet::connect(one_connection_each(&cluster))
        .await
        .unwrap();
    let fresh = read_text(&db, SESSION_STATE).await;
    let leave = "SET search_path TO nowhere; SET statement_timeout = 12345; \
         SET work_mem = '64MB'; SELECT pg_advisory_lock(42)";
    for body in [
        format!("COMMIT; {leave}"),
        format!("ROLLBACK; {leave}"),
        format!("COMMIT AND CHAIN; {leave}"),
        format!("END; {leave}; BEGIN; SET LOCAL statement_timeout = 1"),
    ] {
        let pid = read_text(&db, "pg_backend_pid()::text").await;
        // The next reads find a fresh session, and none fails.
        read_leaves_nothing(&db, &body, &fresh, &pid, 3).await;
    }
}

/// The last statement of the one idle replica connection of `app`, once
/// the end sent after its last read has run.
fn last_statement(cluster: &Cluster, app: &str, after: &str) -> String {
    let replica = cluster.replica_ids()[0];
    let sql = format!(
        "SELECT query FROM pg_stat_activity WHERE application_name = '{app}' AND state = 'idle'"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let query = cluster.psql(replica, &sql).unwrap();
        if query.starts_with("/*diesel-replica ") || std::time::Instant::now() > deadline {
            return query;
        }
        assert!(
            !query.contains('\n'),
            "after {after}: one connection: {query}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn a_replica_read_ends_with_a_rollback_unless_its_body_touched_the_session(
    cluster: Arc<Cluster>,
) {
    const APP: &str = "rollback-alone";
    let mut config = one_connection_each(&cluster);
    config.application_name = APP.into();
    let db = ReplicaSet::connect(config).await.unwrap();
    let fresh = read_text(&db, SESSION_STATE).await;
    // A body that stays in the read's transaction, whatever it sets there
    // or fails: the read ends with a ROLLBACK and the advisory locks'
    // release, and nothing of the body is left.
    let inside = "SET search_path TO nowhere; SET work_mem = '64MB'; SELECT pg_advisory_lock(42); \
         SET LOCAL statement_timeout = 1234";
    for body in [
        "SELECT 1".to_owned(),
        inside.to_owned(),
        format!("{inside}; SELECT 1/0"),
        "SAVEPOINT a; SELECT 1/0".to_owned(),
        "ROLLBACK AND CHAIN".to_owned(),
    ] {
        let _ = db.read(async |conn| batch(conn, &body).await).await;
        let end = last_statement(&cluster, APP, &body);
        assert!(
            end.ends_with("*/ROLLBACK; SELECT pg_catalog.pg_advisory_unlock_all()"),
            "after {body}: {end}"
        );
        let after = read_text(&db, SESSION_STATE).await;
        assert_eq!(after, fresh, "after {body}");
    }
    // A body that ends the read's transaction, or begins its own: the
    // server's replies say so, and the whole reset follows.
    for body in [
        "COMMIT; SET work_mem = '64MB'",
        "ROLLBACK",
        "COMMIT AND CHAIN; SET search_path TO nowhere",
        "END; SET work_mem = '64MB'; BEGIN",
    ] {
        db.read(async |conn| batch(conn, body).await).await.unwrap();
        let end = last_statement(&cluster, APP, body);
        assert!(end.contains("RESET ALL"), "after {body}: {end}");
        let after = read_text(&db, SESSION_STATE).await;
        assert_eq!(after, fresh, "after {body}");
    }
}

async fn a_read_that_prepares_or_loads_closes_its_connection(cluster: Arc<Cluster>) {
    let db = ReplicaSet::connect(one_connection_each(&cluster))
        .await
        .unwrap();
    let pid = async || {
        db.read(async |conn| text(conn, "pg_backend_pid()::text").await)
            .await
            .unwrap()
    };
    let prepared = async || {
        db.read(async |conn| {
            text(
                conn,
                "(SELECT count(*) FROM pg_prepared_statements WHERE from_sql)::text",
            )
            .await
        })
        .await
        .unwrap()
    };
    for body in [
        "PREPARE leftover AS SELECT 1",
        "COMMIT; PREPARE leftover AS SELECT 1",
        "LOAD 'plpgsql'",
    ] {
        let before = pid().await;
        db.read(async |conn| batch(conn, body).await).await.unwrap();
        assert_eq!(prepared().await, "0", "after {body}");
        assert_ne!(
            pid().await,
            before,
            "after {body}: the connection was closed"
        );
    }
}

async fn a_read_behind_a_failed_end_runs_again_on_a_new_connection(cluster: Arc<Cluster>) {
    // A login that may not call pg_advisory_unlock_all(): the end after
    // each read fails (its reply is read), and the next read on that
    // connection rides behind the failure.
    let revoke = "REVOKE EXECUTE ON FUNCTION pg_advisory_unlock_all() FROM PUBLIC";
    let setup = format!(
        "DROP ROLE IF EXISTS no_unlock; CREATE ROLE no_unlock LOGIN PASSWORD 'no-unlock'; \
         GRANT SELECT ON items TO no_unlock; {revoke}"
    );
    cluster.psql(NodeId::Primary, &setup).unwrap();
    cluster.wait_for_replication().unwrap();
    let ours = format!("//postgres:{}@", cluster.password());
    let login = |url: &str| url.replacen(&ours, "//no_unlock:no-unlock@", 1);
    let mut config = Config::new(&login(&cluster.writer_url()))
        .unwrap()
        .with_replica(&login(&cluster.replica_urls()[0]))
        .unwrap();
    config.writer_pool.max_size = 1;
    config.replica_pool.max_size = 1;
    let db = ReplicaSet::connect(config).await.unwrap();
    let mut pids = HashSet::new();
    for _ in 0..3 {
        // The whole reset after a body that ends its transaction fails
        // inside its own transaction, leaving the session failed: the next
        // read's statements fail there, and it runs again on a new
        // connection instead of failing.
        db.read(async |conn| batch(conn, "COMMIT").await)
            .await
            .unwrap();
        let served = db
            .read(async |conn| text(conn, "pg_backend_pid()::text || ' ' || current_user").await)
            .await
            .unwrap();
        assert!(served.ends_with(" no_unlock"), "{served}");
        pids.insert(served);
    }
    cluster
        .psql(
            NodeId::Primary,
            "GRANT EXECUTE ON FUNCTION pg_advisory_unlock_all() TO PUBLIC; DROP OWNED BY no_unlock; \
             DROP ROLE no_unlock",
        )
        .unwrap();
    cluster.wait_for_replication().unwrap();
    assert_eq!(
        pids.len(),
        3,
        "each failed end closed its connection: {pids:?}"
    );
}

async fn session_state_a_write_leaves_is_gone_for_the_next_user(cluster: Arc<Cluster>) {
    let db = ReplicaSet::connect(one_connection_each(&cluster))
        .await
        .unwrap();
    let fresh = db
        .write(async |conn| text(conn, SESSION_STATE).await)
        .await
        .unwrap();
    let leave = "SET search_path TO nowhere; SET work_mem = '64MB'; SELECT pg_advisory_lock(42); \
         LISTEN somewhere; CREATE TEMP TABLE scratch (a int); SET ROLE pg_monitor";
    db.transaction(async |conn| batch(conn, leave).await)
        .await
        .unwrap();
    let after = db
        .write(async |conn| text(conn, SESSION_STATE).await)
        .await
        .unwrap();
    assert_eq!(after, fresh);
    db.write(async |conn| batch(conn, leave).await)
        .await
        .unwrap();
    let after = db
        .write(async |conn| text(conn, SESSION_STATE).await)
        .await
        .unwrap();
    assert_eq!(after, fresh);
    let failed = db
        .transaction(async |conn| batch(conn, &format!("{leave}; SELECT 1/0")).await)
        .await;
    assert!(failed.is_err());
    let after = db
        .write(async |conn| text(conn, SESSION_STATE).await)
        .await
        .unwrap();
    assert_eq!(after, fresh);
}

async fn a_read_on_the_writer_cannot_be_made_read_write(cluster: Arc<Cluster>) {
    let db = ReplicaSet::connect(Config::new(&cluster.writer_url()).unwrap())
        .await
        .unwrap();
    let count = || {
        cluster.psql(
            NodeId::Primary,
            "SELECT count(*) FROM items WHERE name = 'escaped'",
        )
    };
    let before = count().unwrap();
    let insert = "INSERT INTO items (name) VALUES ('escaped')";
    for body in [
        format!("SET TRANSACTION READ WRITE; {insert}"),
        format!("SET TRANSACTION ISOLATION LEVEL READ COMMITTED, READ WRITE; {insert}"),
        format!("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE; {insert}"),
        format!("COMMIT; BEGIN; {insert}"),
    ] {
        for result in [
            db.read(async |conn| batch(conn, &body).await).await,
            db.read_fresh(async |conn| batch(conn, &body).await).await,
        ] {
            assert!(result.is_err(), "{body}");
        }
    }
    assert_eq!(count().unwrap(), before, "no row was written");
    // A body that ends the transaction it was given, by SQL, and then
    // writes: the session is read-only too, so nothing is committed,
    // whether the statements come in one message or apart, and whatever
    // marker the body sets.
    let mark = "SELECT set_config('diesel_replica.read_only', 'on', false)";
    for end in ["COMMIT", "ROLLBACK", "COMMIT AND CHAIN", "END", "ABORT"] {
        for body in [
            format!("{end}; {insert}"),
            format!("{end}; {mark}; {insert}"),
            format!("{end}; BEGIN; {mark}; {insert}"),
        ] {
            let result = db.read(async |conn| batch(conn, &body).await).await;
            assert!(
                matches!(result, Err(Error::ReadOnlyViolation { .. })),
                "{body}: {result:?}"
            );
        }
        let apart = db
            .read(async |conn| {
                batch(conn, end).await?;
                diesel::sql_query(insert).execute(conn).await
            })
            .await;
        assert!(
            matches!(apart, Err(Error::ReadOnlyViolation { .. })),
            "{end}, then the insert: {apart:?}"
        );
    }
    assert_eq!(count().unwrap(), before, "no row was written");
    // Only a body that both ends the transaction and turns the session's
    // guard off itself can write: the write stands, and the read reports
    // it. Writes on the same connection then work as before.
    let escaped = db
        .read(async |conn| {
            batch(conn, "COMMIT").await?;
            batch(conn, "SET default_transaction_read_only = off").await?;
            batch(conn, insert).await
        })
        .await;
    assert!(
        matches!(escaped, Err(Error::ReadOnlyViolation { .. })),
        "{escaped:?}"
    );
    assert_ne!(count().unwrap(), before, "the body wrote, as it asked");
    let served = db.write(who_served).await.unwrap();
    assert_eq!(
        served.read_only, "off",
        "the writer's session is its own again"
    );
}

async fn reads_refuse_the_same_writes_on_the_writer_as_on_a_replica(cluster: Arc<Cluster>) {
    let on_writer = ReplicaSet::connect(Config::new(&cluster.writer_url()).unwrap())
        .await
        .unwrap();
    let on_replica = connect(&cluster).await;
    let objects = || {
        cluster.psql(
            NodeId::Primary,
            "SELECT count(*) FROM pg_largeobject_metadata",
        )
    };
    let before = objects().unwrap();
    for sql in [
        "SELECT txid_current()",
        "SELECT pg_current_xact_id()",
        "INSERT INTO items (name) VALUES ('no')",
    ] {
        for db in [&on_writer, &on_replica] {
            let result = db.read(async |conn| batch(conn, sql).await).await;
            assert!(
                matches!(result, Err(Error::ReadOnlyViolation { .. })),
                "{sql}: {result:?}"
            );
        }
    }
    let result = on_writer
        .read(async |conn| batch(conn, "SELECT lo_create(0)").await)
        .await;
    assert!(
        matches!(result, Err(Error::ReadOnlyViolation { .. })),
        "{result:?}"
    );
    assert_eq!(objects().unwrap(), before, "no large object was created");
    // A standby of PostgreSQL 13 or 15 refuses it with an internal error, the documented
    // difference; PostgreSQL 17 refuses it as a write in a read-only transaction.
    let result = on_replica
        .read(async |conn| batch(conn, "SELECT lo_create(0)").await)
        .await;
    if server_version(&cluster) >= 170_000 {
        assert!(
            matches!(result, Err(Error::ReadOnlyViolation { .. })),
            "{result:?}"
        );
    } else {
        assert!(matches!(result, Err(Error::Query { .. })), "{result:?}");
    }
}

async fn a_read_on_the_writer_sends_no_notification(cluster: Arc<Cluster>) {
    use diesel_async::AsyncConnection;
    use futures_util::StreamExt;

    let db = ReplicaSet::connect(Config::new(&cluster.writer_url()).unwrap())
        .await
        .unwrap();
    let mut listener = diesel_async::AsyncPgConnection::establish(&cluster.writer_url())
        .await
        .unwrap();
    batch(&mut listener, "LISTEN news").await.unwrap();
    let next = async |listener: &mut diesel_async::AsyncPgConnection| {
        let mut stream = std::pin::pin!(listener.notifications_stream());
        tokio::time::timeout(Duration::from_millis(300), stream.next())
            .await
            .ok()
            .flatten()
            .map(|n| n.unwrap().payload)
    };
    db.read(async |conn| batch(conn, "NOTIFY news, 'from a read'").await)
        .await
        .unwrap();
    db.read_fresh(async |conn| batch(conn, "SELECT pg_notify('news', 'from a fresh read')").await)
        .await
        .unwrap();
    db.write(async |conn| batch(conn, "NOTIFY news, 'from a write'").await)
        .await
        .unwrap();
    assert_eq!(next(&mut listener).await.as_deref(), Some("from a write"));
    assert_eq!(next(&mut listener).await, None);
}

async fn log_lines_show_no_password_given_as_a_query_parameter(cluster: Arc<Cluster>) {
    let captured = common::Captured::default();
    let subscriber = captured.subscriber(tracing_subscriber::filter::LevelFilter::DEBUG);
    let _guard = tracing_subscriber::util::SubscriberInitExt::set_default(subscriber);
    let port = |id| cluster.node(id).port();
    let password = cluster.password();
    let url = |id| {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?password={password}",
            port(id)
        )
    };
    let config = Config::new(&url(NodeId::Primary))
        .unwrap()
        .with_replica(&url(NodeId::Replica(0)))
        .unwrap();
    let db = ReplicaSet::connect(config).await.unwrap();
    db.read(who_served).await.unwrap();
    let log = captured.text();
    assert!(log.contains("replica set ready"), "{log}");
    assert!(!log.contains(password), "{log}");
}

async fn errors_keep_their_source_and_tell_their_kind(cluster: Arc<Cluster>) {
    use diesel_replica::{CheckoutError, ErrorKind};
    use std::error::Error as _;

    let closed = format!("postgres://postgres@127.0.0.1:{}/postgres", closed_port());
    let err = ReplicaSet::new(Config::new(&closed).unwrap())
        .unwrap()
        .write(async |conn| batch(conn, "SELECT 1").await)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Checkout);
    assert_eq!(err.kind().as_str(), "checkout");
    let source = err.source().expect("a checkout error has a source");
    assert!(
        matches!(
            source.downcast_ref::<CheckoutError>(),
            Some(CheckoutError::Connect(_))
        ),
        "{source:?}"
    );
    assert!(source.source().is_some(), "the connection error behind it");
    assert!(
        report(&err).contains("Connection refused"),
        "{}",
        report(&err)
    );

    let db = connect(&cluster).await;
    let err = db
        .read(async |conn| batch(conn, "SELECT * FROM no_such_table").await)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Query);
    let source = err.source().expect("a query error has a source");
    assert!(source.downcast_ref::<DieselError>().is_some(), "{source:?}");
    assert!(
        !err.to_string().contains("no_such_table"),
        "the message is ours: {err}"
    );
    assert!(report(&err).contains("no_such_table"), "{}", report(&err));

    let err = db
        .read(async |conn| {
            diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
                "1 WHERE false",
            ))
            .get_result::<i32>(conn)
            .await
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let err = db
        .read(async |conn| batch(conn, "INSERT INTO items (name) VALUES ('no')").await)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ReadOnlyViolation);
    assert!(!err.kind().is_unavailable());
}

async fn nodes_are_known_by_address_and_database(cluster: Arc<Cluster>) {
    let status = connect(&cluster).await.status();
    assert_eq!(
        status.writer.id.as_str(),
        format!("127.0.0.1:{}/postgres", cluster.primary().port())
    );
    let ids: Vec<String> = status.replicas.iter().map(|r| r.id.to_string()).collect();
    let expected: Vec<String> = replica_ports(&cluster)
        .iter()
        .map(|port| format!("127.0.0.1:{port}/postgres"))
        .collect();
    assert_eq!(ids, expected);
}

async fn connections_past_their_lifetime_or_idle_timeout_are_replaced(cluster: Arc<Cluster>) {
    for (lifetime, idle) in [(Some(1000), None), (None, Some(1000))] {
        let mut config = Config::new(&cluster.writer_url()).unwrap();
        config.writer_pool.max_size = 1;
        config.writer_pool.max_lifetime = lifetime.map(Duration::from_millis);
        config.writer_pool.idle_timeout = idle.map(Duration::from_millis);
        let db = ReplicaSet::connect(config).await.unwrap();
        let pid = async || {
            db.write(async |conn| text(conn, "pg_backend_pid()::text").await)
                .await
                .unwrap()
        };
        let first = pid().await;
        assert_eq!(pid().await, first, "reused within its lifetime");
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert_ne!(pid().await, first, "lifetime {lifetime:?}, idle {idle:?}");
    }
}

async fn replicas_added_and_removed_while_reading_fail_no_read(cluster: Arc<Cluster>) {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicBool;

    let urls = cluster.replica_urls();
    let ports = replica_ports(&cluster);
    let with = |replicas: &[usize]| {
        let mut config = replicas
            .iter()
            .try_fold(Config::new(&cluster.writer_url()).unwrap(), |c, &i| {
                c.with_replica(&urls[i])
            })
            .unwrap();
        // Told apart from the other tests' sessions on the same servers.
        config.application_name = "topology-test".into();
        config
    };
    let db = ReplicaSet::connect(with(&[0])).await.unwrap();
    let started = std::time::Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let served: Arc<Mutex<Vec<(Duration, i32)>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let readers: Vec<_> = (0..32)
        .map(|_| {
            let (db, done, served, errors) =
                (db.clone(), done.clone(), served.clone(), errors.clone());
            tokio::spawn(async move {
                while !AtomicBool::load(&done, Ordering::Relaxed) {
                    match db.read(who_served).await {
                        Ok(s) => served.lock().unwrap().push((started.elapsed(), s.port)),
                        Err(e) => errors.lock().unwrap().push(report(&e)),
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let added_at = started.elapsed();
    let change = db.update_replicas(&with(&[0, 1, 2])).await.unwrap();
    assert_eq!(
        (change.generation, change.added.len(), change.removed.len()),
        (1, 2, 0)
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen_after = |since: Duration| -> Vec<i32> {
        let mut ports: Vec<i32> = served
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at > since)
            .map(|(_, port)| *port)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    };
    let mut all = ports.clone();
    all.sort_unstable();
    assert_eq!(seen_after(added_at), all, "the added replicas serve reads");

    let change = db.update_replicas(&with(&[2])).await.unwrap();
    assert_eq!(
        (change.generation, change.added.len(), change.removed.len()),
        (2, 0, 2)
    );
    let removed_at = started.elapsed();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let after_removal = seen_after(removed_at + Duration::from_millis(100));
    assert_eq!(
        after_removal,
        [ports[2]],
        "only the remaining replica serves reads"
    );
    for i in [0, 1] {
        let sessions = cluster
            .psql(
                NodeId::Replica(i),
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'topology-test'",
            )
            .unwrap();
        assert_eq!(sessions, "0", "replica {i} drained and closed");
    }
    done.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.await.unwrap();
    }
    {
        let errors = errors.lock().unwrap();
        assert!(
            errors.is_empty(),
            "{} failed reads: {:?}",
            errors.len(),
            &errors[..errors.len().min(3)]
        );
    }
    assert_eq!(db.status().generation, 2);
    assert_eq!(db.status().replicas.len(), 1);

    let mut other_writer = with(&[]);
    other_writer.writer = Config::new(&urls[1]).unwrap().writer;
    let err = db.update_replicas(&other_writer).await.unwrap_err();
    assert!(err.to_string().contains("the writer cannot"), "{err}");
}

async fn candidate_hosts_discovery_finds_the_writer_and_the_replicas(cluster: Arc<Cluster>) {
    let candidates = std::iter::once(i32::from(cluster.primary().port()))
        .chain(replica_ports(&cluster))
        .map(|port| format!("127.0.0.1:{port}"))
        .collect::<Vec<_>>()
        .join(",");
    let config = Config::from_vars(
        None,
        [
            ("DATABASE_URL", cluster.writer_url()),
            ("DATABASE_DISCOVERY", "hosts".to_owned()),
            ("DATABASE_CANDIDATE_HOSTS", candidates),
            ("DATABASE_DISCOVERY_INTERVAL_MS", "100".to_owned()),
            ("DATABASE_APPLICATION_NAME", "candidates".to_owned()),
        ],
    )
    .unwrap();
    // No replica is configured: `connect` waits for the first survey.
    let db = ReplicaSet::connect(config).await.unwrap();
    let status = db.status();
    assert_eq!(status.replicas.len(), 3, "{status:?}");
    assert_eq!(status.generation, 1);
    assert_eq!(status.source, diesel_replica::DiscoverySource::Hosts);
    assert_eq!(i32::from(cluster.primary().port()), {
        let address = status.writer.address.clone();
        address.rsplit(':').next().unwrap().parse::<i32>().unwrap()
    });
    for _ in 0..12 {
        let served = db.read(who_served).await.unwrap();
        assert!(served.in_recovery, "{served:?}");
    }
    // Nothing changes while nothing does, and the surveys keep their
    // connection to each candidate.
    let discovery = "SELECT string_agg(pid::text, ',') FROM pg_stat_activity \
                     WHERE application_name = 'candidates-discovery'";
    let before = cluster.psql(NodeId::Primary, discovery).unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(db.status().generation, 1);
    let after = cluster.psql(NodeId::Primary, discovery).unwrap();
    assert_eq!(before.split(',').count(), 1, "{before}");
    assert_eq!(before, after, "the same connection answered every survey");
}

async fn two_candidates_answering_as_the_writer_are_told_and_replicas_serve_on(
    cluster: Arc<Cluster>,
) {
    // The writer under two names no configuration check can tell apart
    // (one needs a name lookup): each answers the survey as a writer.
    let port = cluster.primary().port();
    let candidates = [format!("127.0.0.1:{port}"), format!("localhost:{port}")]
        .into_iter()
        .chain(
            replica_ports(&cluster)
                .into_iter()
                .map(|p| format!("127.0.0.1:{p}")),
        )
        .collect::<Vec<_>>()
        .join(",");
    let config = Config::from_vars(
        None,
        [
            ("DATABASE_URL", cluster.writer_url()),
            ("DATABASE_DISCOVERY", "hosts".to_owned()),
            ("DATABASE_CANDIDATE_HOSTS", candidates),
            ("DATABASE_DISCOVERY_INTERVAL_MS", "100".to_owned()),
        ],
    )
    .unwrap();
    let db = ReplicaSet::connect(config).await.unwrap();
    let status = db.status();
    assert_eq!(status.discovery.writers.len(), 2, "{:?}", status.discovery);
    assert!(!status.discovery.is_clean());
    assert!(
        status
            .discovery
            .to_string()
            .contains("2 nodes answer as the writer"),
        "{}",
        status.discovery
    );
    assert_eq!(
        status.replicas.len(),
        3,
        "the replicas found serve: {status:?}"
    );
    for _ in 0..6 {
        let served = db.read(who_served).await.unwrap();
        assert!(served.in_recovery, "{served:?}");
    }
    let served = db.write(who_served).await.unwrap();
    assert_eq!(served.port, i32::from(port));
}

async fn a_busy_replica_pool_is_not_a_dead_node(cluster: Arc<Cluster>) {
    use diesel_replica::ErrorKind;

    let replicas = cluster.replica_urls();
    let burst = async |config: Config| {
        let db = ReplicaSet::connect(config).await.unwrap();
        // Eight reads at once on pools of one connection that wait 50 ms:
        // the first of each pool holds it for 300 ms.
        let reads = (0..8).map(|_| {
            db.read(async |conn| {
                text(conn, "pg_sleep(0.3)::text || pg_is_in_recovery()::text").await
            })
        });
        let results = futures_util::future::join_all(reads).await;
        (db, results)
    };
    let mut config = Config::new(&cluster.writer_url())
        .unwrap()
        .with_replica(&replicas[0])
        .unwrap();
    config.replica_pool.max_size = 1;
    config.replica_pool.wait_timeout = Some(Duration::from_millis(50));
    let (db, results) = burst(config.clone()).await;
    let served: Vec<&String> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let busy: Vec<&Error> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    // None went to the writer; the others were told the pool is busy.
    assert!(
        !served.is_empty() && served.iter().all(|v| v.ends_with("true")),
        "{results:?}"
    );
    assert!(!busy.is_empty(), "{results:?}");
    for error in &busy {
        assert_eq!(error.kind(), ErrorKind::Busy, "{error}");
        assert!(error.kind().is_unavailable());
        let text = error.to_string();
        assert!(
            text.contains("replica") && text.contains("busy") && text.contains("1 connections"),
            "{text}"
        );
    }
    // The replica stays in rotation: not ejected, no failure counted.
    let status = db.status();
    assert_eq!(status.replicas[0].ejections, 0, "{status:?}");
    assert_eq!(status.replicas[0].consecutive_failures, 0, "{status:?}");
    let served = db
        .read(async |conn| text(conn, "pg_is_in_recovery()::text").await)
        .await
        .unwrap();
    assert_eq!(served, "true");

    // Where another replica has a free connection, the read runs there.
    let config = config.with_replica(&replicas[1]).unwrap();
    let (_, results) = burst(config).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert!(ok >= 2, "both replicas served: {results:?}");
    for result in &results {
        match result {
            Ok(value) => assert!(value.ends_with("true"), "{value}"),
            Err(error) => assert_eq!(error.kind(), ErrorKind::Busy, "{error}"),
        }
    }
}

async fn aurora_discovery_follows_aurora_replica_status(cluster: Arc<Cluster>) {
    for form in FORMS {
        aurora_discovery_follows(&cluster, form).await;
    }
}

async fn aurora_discovery_follows(cluster: &Cluster, form: Form) {
    let [first, second, third] = cluster.replica_ids()[..] else {
        panic!("three replicas")
    };
    let aurora = Aurora::install(cluster, form).await;
    // After the wait for the emulation, which may move this task to
    // another thread: the set's tasks take the subscriber of the thread
    // that builds it.
    let captured = common::Captured::default();
    let subscriber = captured.subscriber(tracing_subscriber::filter::LevelFilter::INFO);
    let _guard = tracing_subscriber::util::SubscriberInitExt::set_default(subscriber);
    aurora.insert(&[
        (NodeId::Primary, "MASTER_SESSION_ID", 0.0),
        (first, "a1", 0.0),
        (second, "a2", 0.0),
        (third, "a3", 0.0),
    ]);
    // An instance not updated for 10 minutes is gone, whatever it says.
    aurora.drive(&format!(
        "UPDATE aurora_topology SET last_update_timestamp = now() - interval '10 minutes' \
         WHERE server_id = '{}'",
        aurora.instance(third)
    ));
    let mut vars = aurora.vars();
    vars.push(("DATABASE_DISCOVERY_INTERVAL_MS", "100".to_owned()));
    let db = ReplicaSet::connect(Config::from_vars(None, vars).unwrap())
        .await
        .unwrap();
    let nodes_now = || -> Vec<NodeId> {
        let status = db.status();
        let mut nodes: Vec<NodeId> = status
            .replicas
            .iter()
            .map(|r| aurora.node_at(&r.address).expect(&r.address))
            .collect();
        nodes.sort_by_key(|id| format!("{id:?}"));
        nodes
    };
    let wait_for = async |expected: Vec<NodeId>| {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while nodes_now() != expected {
            assert!(
                std::time::Instant::now() < deadline,
                "{form:?}: {:?} != {expected:?}",
                nodes_now()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    wait_for(vec![first, second]).await;
    let status = db.status();
    assert_eq!(
        status.writer.address,
        aurora.address(NodeId::Primary),
        "{form:?}: the writer's own row names it, whatever its timestamp"
    );
    assert!(status.healthy && status.writer_available, "{status:?}");
    let rejected: Vec<_> = status
        .discovery
        .rejected
        .iter()
        .map(|row| (row.server_id.clone(), row.rule))
        .collect();
    assert_eq!(
        rejected,
        [(aurora.instance(third), Rule::Stale)],
        "{form:?}"
    );
    assert!(!status.discovery.writer_not_in_view);
    assert!(
        captured.text().contains(&format!(
            "row rejected: `{}`: a replica's row not updated for over 300 s",
            aurora.instance(third)
        )),
        "{}",
        captured.text()
    );
    db.write(async |conn| {
        diesel::sql_query("INSERT INTO items (name) VALUES ('aurora')")
            .execute(conn)
            .await
    })
    .await
    .unwrap();
    // The WAL-position functions fail for the application, as on Aurora.
    for sql in [
        "SELECT pg_catalog.pg_last_wal_replay_lsn()",
        "SELECT pg_last_wal_replay_lsn()",
    ] {
        let err = db
            .read(async |conn| diesel::sql_query(sql).execute(conn).await)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), diesel_replica::ErrorKind::Query, "{sql}: {err}");
    }

    aurora.drive(&format!(
        "DELETE FROM aurora_topology WHERE server_id = '{}'",
        aurora.instance(first)
    ));
    wait_for(vec![second]).await;
    aurora.drive(&format!(
        "UPDATE aurora_topology SET last_update_timestamp = now() WHERE server_id = '{}'",
        aurora.instance(third)
    ));
    wait_for(vec![second, third]).await;
    for _ in 0..6 {
        assert!(db.read(who_served).await.unwrap().in_recovery);
    }
    assert!(db.status().discovery.is_clean(), "{:?}", db.status());
    // Garbage keeps the last good topology, and says so.
    let generation = db.status().generation;
    aurora.drive("UPDATE aurora_topology SET server_id = server_id || ' x'");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let status = db.status();
    assert_eq!(status.generation, generation);
    assert_eq!(nodes_now(), [second, third]);
    assert!(status.discovery.failed.is_some(), "{status:?}");
    assert_eq!(status.discovery.rejected.len(), 3, "{status:?}");
    assert!(
        status
            .discovery
            .rejected
            .iter()
            .all(|row| row.rule == Rule::NoEndpoint && row.server_id.ends_with(" x")),
        "{status:?}"
    );
    let warned = |text: &str| captured.text().lines().filter(|l| l.contains(text)).count();
    assert_eq!(
        warned("names no instance that can be used"),
        1,
        "said once, not at every survey: {}",
        captured.text()
    );

    // Aurora names another writer (here a standby, which only this set
    // believes): each role change is logged once, with the node.
    aurora.drive(&format!(
        "UPDATE aurora_topology SET server_id = split_part(server_id, ' ', 1); \
         UPDATE aurora_topology SET session_id = CASE server_id WHEN '{}' THEN 'a0' \
         WHEN '{}' THEN 'MASTER_SESSION_ID' ELSE session_id END",
        aurora.instance(NodeId::Primary),
        aurora.instance(second)
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while db.status().writer.address != aurora.address(second) {
        assert!(std::time::Instant::now() < deadline, "{:?}", db.status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = captured.text();
    let lines = |event: &str, id: NodeId| {
        log.lines()
            .filter(|line| line.contains(event) && line.contains(&aurora.address(id)))
            .count()
    };
    assert_eq!(lines("node promoted", second), 1, "{log}");
    assert_eq!(lines("node demoted", NodeId::Primary), 1, "{log}");
    assert!(log.contains("discovery: the problem is over"), "{log}");
}

/// Aurora's view may name no writer (a row it lost, a rule it broke): the
/// cluster endpoint is then asked, and writes go there while it answers
/// as a writer. Only when no node answers as one do writes fail.
async fn aurora_writes_go_to_the_endpoint_when_the_view_names_no_writer(cluster: Arc<Cluster>) {
    let [first, second, _] = cluster.replica_ids()[..] else {
        panic!("three replicas")
    };
    for form in FORMS {
        let aurora = Aurora::install(&cluster, form).await;
        aurora.insert(&[
            (NodeId::Primary, "MASTER_SESSION_ID", 0.0),
            (first, "a1", 0.0),
            (second, "a2", 0.0),
        ]);
        // The writer's row is gone from the view.
        aurora.drive(&format!(
            "DELETE FROM aurora_topology WHERE server_id = '{}'",
            aurora.instance(NodeId::Primary)
        ));
        let mut vars = aurora.vars();
        vars.push(("DATABASE_DISCOVERY_INTERVAL_MS", "100".to_owned()));
        let db = ReplicaSet::connect(Config::from_vars(None, vars.clone()).unwrap())
            .await
            .unwrap();
        let status = db.status();
        assert!(status.writer_available && status.healthy, "{status:?}");
        assert!(status.discovery.writer_not_in_view, "{status:?}");
        assert_eq!(
            status.writer.address,
            format!("127.0.0.1:{}", cluster.primary().port())
        );
        assert_eq!(status.replicas.len(), 2, "{status:?}");
        let served = db.write(who_served).await.unwrap();
        assert!(!served.in_recovery, "{form:?}: {served:?}");
        assert!(db.read(who_served).await.unwrap().in_recovery);

        // An endpoint that answers as a standby is no writer: writes fail.
        // (`connect` would refuse it as the writer it warms up.)
        vars[0].1 = cluster.url(first);
        let db = ReplicaSet::new(Config::from_vars(None, vars).unwrap()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while db.status().writer_available {
            assert!(std::time::Instant::now() < deadline, "{:?}", db.status());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(db.status().discovery.writer_not_in_view);
        let err = db.write(who_served).await.unwrap_err();
        assert!(matches!(err, Error::WriterUnavailable { .. }), "{err:?}");
    }
}

/// A read runs its statements in one `READ ONLY` transaction at `READ
/// COMMITTED` (a snapshot per statement); a snapshot read in one at
/// `REPEATABLE READ` (one snapshot for all).
async fn a_read_is_one_read_only_transaction_a_snapshot_read_repeatable_read(
    cluster: Arc<Cluster>,
) {
    let db = connect(&cluster).await;
    let started = "pg_catalog.now()::text || ' ' || current_setting('transaction_isolation') \
         || ' ' || current_setting('transaction_read_only')";
    let twice = async |conn: &mut diesel_async::AsyncPgConnection| {
        let first = text(conn, started).await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok((first, text(conn, started).await?))
    };
    let (first, second) = db.read(twice).await.unwrap();
    assert_eq!(first, second, "a read's statements are one transaction");
    assert!(first.ends_with(" read committed on"), "{first}");
    let (first, second) = db.read_snapshot(twice).await.unwrap();
    assert_eq!(
        first, second,
        "a snapshot read's statements are one transaction"
    );
    assert!(first.ends_with(" repeatable read on"), "{first}");
    let tenant = diesel_replica::Tenant::new("nobody").unwrap();
    let err = db.tenant(&tenant).read_snapshot(twice).await.unwrap_err();
    assert!(matches!(err, Error::UnknownTenant { .. }), "{err:?}");
}

/// The cluster's PostgreSQL version, as `server_version_num` (150010).
fn server_version(cluster: &Cluster) -> u32 {
    cluster
        .psql(NodeId::Primary, "SHOW server_version_num")
        .unwrap()
        .parse()
        .unwrap()
}

/// PostgreSQL 14 and later say in the startup report whether they are a standby: a
/// replica whose address reaches the writer is known at connect, in status and in a
/// warning, and its reads still run read-only. PostgreSQL 13 does not say.
async fn a_replica_address_that_reaches_the_writer_is_found_at_connect(cluster: Arc<Cluster>) {
    let reports = server_version(&cluster) >= 140_000;
    let captured = common::Captured::default();
    let subscriber = captured.subscriber(tracing_subscriber::filter::LevelFilter::WARN);
    let _guard = tracing_subscriber::util::SubscriberInitExt::set_default(subscriber);
    // The writer under another name, as a misconfigured reader endpoint would reach it.
    let writer_port = cluster.node(NodeId::Primary).port();
    let the_writer_again = cluster.writer_url().replace(
        &format!("127.0.0.1:{writer_port}"),
        &format!("localhost:{writer_port}"),
    );
    let config = Config::new(&cluster.writer_url())
        .unwrap()
        .with_replica(&the_writer_again)
        .unwrap()
        .with_replica(&cluster.url(NodeId::Replica(0)))
        .unwrap();
    let db = ReplicaSet::connect(config).await.unwrap();
    let status = db.status();
    let expected = |standby: bool| reports.then_some(standby);
    assert_eq!(status.replicas[0].standby, expected(false), "{status:?}");
    assert_eq!(status.replicas[1].standby, expected(true), "{status:?}");
    assert_eq!(status.writer.standby, expected(false), "{status:?}");
    let logged = captured.text();
    assert_eq!(
        logged.contains("is not a standby (in_hot_standby = off)"),
        reports,
        "{logged}"
    );
    if reports {
        assert!(
            logged.contains(&format!("localhost:{writer_port}")),
            "{logged}"
        );
    }
    // Whichever node serves them, reads stay read-only.
    for _ in 0..10 {
        let served = db.read(who_served).await.unwrap();
        assert_eq!(served.read_only, "on", "{served:?}");
    }
}

/// A writer address that reaches a standby is refused at connect, before any statement
/// of the caller's: from the startup report on PostgreSQL 14 and later, by asking
/// `SHOW transaction_read_only` on older servers.
async fn a_writer_address_that_reaches_a_standby_is_refused_at_connect(cluster: Arc<Cluster>) {
    let reports = server_version(&cluster) >= 140_000;
    let db = ReplicaSet::new(Config::new(&cluster.url(NodeId::Replica(0))).unwrap()).unwrap();
    let err = db
        .write(async |conn| batch(conn, "CREATE TABLE never_made (x int)").await)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), diesel_replica::ErrorKind::Checkout, "{err:?}");
    let text = common::report(&err);
    let why = if reports {
        "the server is a standby (in_hot_standby = on)"
    } else {
        "the server takes no writes"
    };
    assert!(text.contains(why), "{text}");
    assert!(!text.contains(cluster.password()), "{text}");
    assert_eq!(db.status().writer.standby, reports.then_some(true));
    // Fresh reads need the writer too: a standby is refused for them as well.
    let err = db.read_fresh(who_served).await.unwrap_err();
    assert_eq!(err.kind(), diesel_replica::ErrorKind::Checkout, "{err:?}");
}
