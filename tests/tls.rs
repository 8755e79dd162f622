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
use replica_testkit::{Cluster, NodeId};

fn main() -> ExitCode {
    common::run_tls(
        1,
        "CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL)",
        tests![
            every_sslmode_connects_exactly_when_libpq_does,
            reads_and_writes_run_encrypted_on_every_node,
            failures_say_which_node_which_mode_and_why,
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
        assert!(text.contains(why), "{text}");
        assert!(!text.contains(password), "{text}");
    }
}
