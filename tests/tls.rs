//! TLS against a real TLS-only cluster (a primary and one streaming
//! replica, certificates made for the test, `hostssl` only): libpq, through
//! `psql`, is the reference for when a connection must succeed.

mod common;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use common::report;
use diesel::QueryableByName;
use diesel::sql_types::Bool;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_replica::{Config, Error, ReplicaSet};
use diesel_replica_testkit::{Cluster, NodeId};

fn main() -> ExitCode {
    common::run_tls(
        1,
        "CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL)",
        tests![
            every_sslmode_connects_exactly_when_libpq_does,
            reads_and_writes_run_encrypted_on_every_node,
            failures_say_which_node_which_mode_and_why,
            a_password_rotated_under_load_costs_callers_nothing,
            a_dropped_call_is_cancelled_over_tls,
        ],
    )
}

/// Where a connection attempt goes and how it is secured.
struct Case<'a> {
    mode: &'a str,
    host: &'a str,
    root: Option<&'a std::path::Path>,
}

impl Case<'_> {
    fn libpq(&self, port: u16) -> String {
        let mut conninfo = format!(
            "host={} port={port} user=postgres dbname=postgres sslmode={} connect_timeout=5",
            self.host, self.mode
        );
        if let Some(root) = self.root {
            conninfo.push_str(&format!(" sslrootcert={}", root.display()));
        }
        conninfo
    }

    fn url(&self, password: &str, port: u16) -> String {
        let mut url = format!(
            "postgres://postgres:{password}@{}:{port}/postgres?sslmode={}",
            self.host, self.mode
        );
        if let Some(root) = self.root {
            url.push_str(&format!("&sslrootcert={}", root.display()));
        }
        url
    }
}

/// Whether the library gets a connection, and its error when not.
async fn ours(url: &str) -> Result<(), String> {
    let mut config = Config::new(url).map_err(|e| report(&e))?;
    config.writer_pool.connect_timeout = Some(Duration::from_secs(5));
    config.writer_pool.warm_up = 0;
    let db = ReplicaSet::new(config).map_err(|e| report(&e))?;
    db.write(async |conn| diesel::sql_query("SELECT 1").execute(conn).await)
        .await
        .map(drop)
        .map_err(|e| report(&e))
}

async fn every_sslmode_connects_exactly_when_libpq_does(cluster: Arc<Cluster>) {
    let port = cluster.primary().port();
    let password = cluster.password();
    let (right, wrong) = (cluster.ca_cert_path(), cluster.wrong_ca_cert_path());
    let mut outcomes = Vec::new();
    for mode in [
        "disable",
        "allow",
        "prefer",
        "require",
        "verify-ca",
        "verify-full",
    ] {
        for host in ["localhost", "127.0.0.1"] {
            for root in [None, right, wrong] {
                let case = Case { mode, host, root };
                let libpq = cluster.psql_tcp(&case.libpq(port), password, "SELECT 1");
                let ours = ours(&case.url(password, port)).await;
                let which = format!(
                    "sslmode={mode} host={host} root={}",
                    root.map_or("none".into(), |r| r.display().to_string())
                );
                assert_eq!(
                    ours.is_ok(),
                    libpq.is_ok(),
                    "{which}: ours {ours:?}, libpq {libpq:?}"
                );
                if let Err(error) = &ours {
                    assert!(!error.contains(password), "{which}: {error}");
                }
                outcomes.push(ours.is_ok());
            }
        }
    }
    let connected = outcomes.iter().filter(|ok| **ok).count();
    assert!(
        connected > 0 && connected < outcomes.len(),
        "{connected} of {} cases connected",
        outcomes.len()
    );
}

#[derive(QueryableByName)]
struct Session {
    #[diesel(sql_type = Bool)]
    ssl: bool,
    #[diesel(sql_type = Bool)]
    in_recovery: bool,
}

const SESSION: &str = "SELECT ssl, pg_is_in_recovery() AS in_recovery \
     FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

async fn session(conn: &mut AsyncPgConnection) -> diesel::QueryResult<Session> {
    diesel::sql_query(SESSION).get_result(conn).await
}

async fn reads_and_writes_run_encrypted_on_every_node(cluster: Arc<Cluster>) {
    let replica_port = cluster.node(NodeId::Replica(0)).port();
    // The writer's own URL (verify-full to localhost with the test CA); the
    // replica inherits its TLS settings through DATABASE_REPLICA_HOSTS.
    let config = Config::from_vars(
        None,
        [
            ("DATABASE_URL", cluster.writer_url()),
            (
                "DATABASE_REPLICA_HOSTS",
                format!("localhost:{replica_port}"),
            ),
        ],
    )
    .unwrap();
    assert!(
        config.replicas[0]
            .to_string()
            .contains("sslmode=verify-full")
    );
    let db = ReplicaSet::connect(config).await.unwrap();
    let read = db.read(session).await.unwrap();
    assert!(read.ssl && read.in_recovery, "a replica, encrypted");
    let written = db.transaction(session).await.unwrap();
    assert!(written.ssl && !written.in_recovery, "the writer, encrypted");

    // prefer, the default, ends up encrypted; require without a root too.
    for mode in ["prefer", "require"] {
        let url = Case {
            mode,
            host: "127.0.0.1",
            root: None,
        }
        .url(cluster.password(), cluster.primary().port());
        let db = ReplicaSet::connect(Config::new(&url).unwrap())
            .await
            .unwrap();
        assert!(db.write(session).await.unwrap().ssl, "{mode}");
    }
}

async fn failures_say_which_node_which_mode_and_why(cluster: Arc<Cluster>) {
    let port = cluster.primary().port();
    let password = cluster.password();
    let cases = [
        (
            Case {
                mode: "verify-full",
                host: "127.0.0.1",
                root: cluster.ca_cert_path(),
            },
            "not valid for name",
        ),
        (
            Case {
                mode: "verify-ca",
                host: "localhost",
                root: cluster.wrong_ca_cert_path(),
            },
            "UnknownIssuer",
        ),
        (
            Case {
                mode: "disable",
                host: "localhost",
                root: None,
            },
            "no encryption",
        ),
    ];
    for (case, why) in cases {
        let url = case.url(password, port);
        let mut config = Config::new(&url).unwrap();
        config.writer_pool.warm_up = 0;
        let err = ReplicaSet::new(config)
            .unwrap()
            .write(async |conn| diesel::sql_query("SELECT 1").execute(conn).await)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Checkout { .. }), "{err:?}");
        let text = report(&err);
        assert!(
            text.starts_with(&format!("writer ({}:{port}) unavailable", case.host)),
            "{text}"
        );
        assert!(text.contains(&format!("sslmode={}", case.mode)), "{text}");
        // PostgreSQL 13 words the refusal of a plaintext login "SSL off".
        let why_13 = (why == "no encryption").then_some("SSL off");
        assert!(
            text.contains(why) || why_13.is_some_and(|w| text.contains(w)),
            "{text}"
        );
        assert!(!text.contains(password), "{text}");
    }
}

async fn a_password_rotated_under_load_costs_callers_nothing(cluster: Arc<Cluster>) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    // Connections open on the runtime's threads: the subscriber is global.
    let captured = common::Captured::default();
    let _ = tracing_subscriber::util::SubscriberInitExt::try_init(
        captured.subscriber(tracing_subscriber::filter::LevelFilter::INFO),
    );

    let (old, new) = ("0ld-Pa55", "n3w-Pa55/%41");
    cluster
        .psql(
            NodeId::Primary,
            &format!(
                "CREATE ROLE app LOGIN PASSWORD '{old}'; GRANT ALL ON notes TO app; \
                 GRANT USAGE ON SEQUENCE notes_id_seq TO app"
            ),
        )
        .unwrap();
    cluster.wait_for_replication().unwrap();
    let secret = |password: &str| {
        serde_json::json!({
            "username": "app",
            "password": password,
            "host": "localhost",
            "port": cluster.primary().port(),
            "dbname": "postgres",
        })
        .to_string()
    };
    let file = std::env::temp_dir().join(format!("diesel-replica-secret-{}", std::process::id()));
    std::fs::write(&file, secret(old)).unwrap();
    let replica_port = cluster.node(NodeId::Replica(0)).port();
    let config = Config::from_vars(
        None,
        [
            ("DATABASE_SECRET_FILE", file.display().to_string()),
            (
                "DATABASE_REPLICA_HOSTS",
                format!("localhost:{replica_port}"),
            ),
            ("DATABASE_SSLMODE", "verify-full".into()),
            (
                "DATABASE_SSLROOTCERT",
                cluster.ca_cert_path().unwrap().display().to_string(),
            ),
            // Every connection lives a second or less: pools keep opening
            // new ones, also while the secret file is behind the server.
            ("DATABASE_MAX_LIFETIME_MS", "1000".into()),
            ("DATABASE_WRITER_POOL_SIZE", "8".into()),
            ("DATABASE_REPLICA_POOL_SIZE", "8".into()),
        ],
    )
    .unwrap();
    let db = ReplicaSet::connect(config).await.unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..32)
        .map(|task| {
            let (db, done, ok, failed, errors) = (
                db.clone(),
                Arc::clone(&done),
                Arc::clone(&ok),
                Arc::clone(&failed),
                Arc::clone(&errors),
            );
            tokio::spawn(async move {
                let mut round = 0u64;
                while !AtomicBool::load(&done, Ordering::Relaxed) {
                    round += 1;
                    let result = if (task + round).is_multiple_of(4) {
                        db.transaction(async |conn| {
                            diesel::sql_query("INSERT INTO notes (body) VALUES ('rotation')")
                                .execute(conn)
                                .await
                        })
                        .await
                    } else {
                        db.read(async |conn| diesel::sql_query("SELECT 1").execute(conn).await)
                            .await
                    };
                    match result {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            errors.lock().unwrap().push(report(&e));
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.set_password("app", new).unwrap();
    // The rotation window: the server has the new password, the secret
    // file still the old one, for two seconds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    std::fs::write(&file, secret(new)).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    done.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let _ = std::fs::remove_file(&file);
    let errors = errors.lock().unwrap();
    assert_eq!(
        AtomicU64::load(&failed, Ordering::Relaxed),
        0,
        "caller errors: {:?}",
        &errors[..errors.len().min(5)]
    );
    assert!(
        AtomicU64::load(&ok, Ordering::Relaxed) > 100,
        "{} calls",
        AtomicU64::load(&ok, Ordering::Relaxed)
    );
    let log = captured.text();
    assert!(
        log.contains("login refused; asking for fresh credentials"),
        "{log}"
    );
    assert!(
        log.contains("connected with refreshed credentials"),
        "{log}"
    );
    assert!(
        !log.contains(old) && !log.contains(new),
        "a password in the log"
    );
}

/// The cancel request of a dropped call goes over TLS as its connection
/// does: the server takes it, and nothing of the call runs on.
async fn a_dropped_call_is_cancelled_over_tls(cluster: Arc<Cluster>) {
    const APP: &str = "cancel-over-tls";
    let mut config = Config::new(&cluster.writer_url()).unwrap();
    assert!(config.writer.to_string().contains("sslmode=verify-full"));
    config.writer_pool.max_size = 1;
    config.application_name = APP.to_owned();
    let db = ReplicaSet::connect(config).await.unwrap();
    for _ in 0..5 {
        let slow =
            db.write(async |conn| diesel::sql_query("SELECT pg_sleep(5)").execute(conn).await);
        let timed_out = tokio::time::timeout(Duration::from_millis(100), slow).await;
        assert!(timed_out.is_err(), "the slow call should have been dropped");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let running = cluster
        .psql(
            NodeId::Primary,
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{APP}' \
                 AND state = 'active' AND query LIKE '%pg_sleep(5)%'"
            ),
        )
        .unwrap();
    assert_eq!(running, "0", "a dropped call still runs 200 ms later");
    assert!(db.write(session).await.unwrap().ssl);
}
