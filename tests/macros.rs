//! `#[derive(ReplicatedRepo)]`, `#[read_only]` and `#[write]` against a real
//! primary and two streaming replicas; where each method ran is asked of
//! the server.

mod common;

use std::process::ExitCode;
use std::sync::Arc;

use common::{closed_port, replica_ports};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_replica::{Config, Error, ReplicaSet, ReplicatedRepo, read_only, write};
use diesel_replica_testkit::{Cluster, NodeId, Served, WHO_SERVED};

// `table!` generates public items without docs.
#[allow(missing_docs)]
mod schema {
    diesel::table! {
        notes (id) {
            id -> Int8,
            body -> Text,
        }
    }
}
use schema::notes;

const SETUP: &str = "CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL)";

fn main() -> ExitCode {
    common::run(
        2,
        SETUP,
        tests![
            read_only_methods_run_on_replicas_read_only,
            read_only_primary_runs_on_the_writer_read_only,
            read_only_snapshot_runs_on_a_replica_in_one_snapshot,
            write_methods_run_on_the_writer_in_a_transaction,
            a_write_hidden_in_a_function_fails_at_run_time,
            early_return_and_question_mark_keep_working,
            own_error_types_receive_routing_errors,
            methods_run_concurrently_from_spawned_tasks,
            unit_struct_repos_connect_once,
        ],
    )
}

#[derive(ReplicatedRepo, Clone)]
struct Db {
    replicas: ReplicaSet,
    label: String,
}

#[derive(Debug)]
enum AppError {
    Routing(Error),
    Query(diesel::result::Error),
}

impl From<Error> for AppError {
    fn from(error: Error) -> Self {
        Self::Routing(error)
    }
}

impl From<diesel::result::Error> for AppError {
    fn from(error: diesel::result::Error) -> Self {
        Self::Query(error)
    }
}

/// A write the compile-time check cannot see.
async fn insert_note(conn: &mut AsyncPgConnection, body: &str) -> QueryResult<usize> {
    diesel::insert_into(notes::table)
        .values(notes::body.eq(body))
        .execute(conn)
        .await
}

impl Db {
    #[read_only]
    async fn who(&self, conn: &mut AsyncPgConnection) -> QueryResult<Served> {
        diesel::sql_query(WHO_SERVED).get_result(conn).await
    }

    #[read_only(primary)]
    async fn who_fresh(&self, conn: &mut AsyncPgConnection) -> QueryResult<Served> {
        diesel::sql_query(WHO_SERVED).get_result(conn).await
    }

    /// The isolation level, and whether two statements saw one transaction.
    #[read_only(snapshot)]
    async fn isolation(&self, conn: &mut AsyncPgConnection) -> QueryResult<(String, bool)> {
        let started = || {
            diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
                "now()::text || '|' || current_setting('transaction_isolation')",
            ))
        };
        let first: String = started().get_result(conn).await?;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let second: String = started().get_result(conn).await?;
        let isolation = first.rsplit('|').next().unwrap_or_default().to_owned();
        Ok((isolation, first == second))
    }

    #[write]
    async fn add(&self, conn: &mut AsyncPgConnection, body: &str) -> QueryResult<Served> {
        insert_note(conn, body).await?;
        diesel::sql_query(WHO_SERVED).get_result(conn).await
    }

    #[write]
    async fn add_then_fail(
        &self,
        conn: &mut AsyncPgConnection,
        body: &str,
    ) -> Result<(), AppError> {
        insert_note(conn, body).await?;
        Err(AppError::Query(diesel::result::Error::RollbackTransaction))
    }

    #[read_only]
    async fn sneaky(&self, conn: &mut AsyncPgConnection, body: &str) -> QueryResult<usize> {
        insert_note(conn, body).await
    }

    #[read_only]
    async fn body_of(&self, conn: &mut AsyncPgConnection, id: i64) -> QueryResult<Option<String>> {
        if id < 0 {
            return Err(diesel::result::Error::NotFound);
        }
        let body = notes::table
            .find(id)
            .select(notes::body)
            .first(conn)
            .await
            .optional()?;
        Ok(body.map(|b: String| format!("{}: {b}", self.label)))
    }

    #[read_only]
    async fn count_as_app(&self, conn: &mut AsyncPgConnection) -> Result<i64, AppError> {
        Ok(notes::table.count().get_result(conn).await?)
    }
}

async fn read_only_methods_run_on_replicas_read_only(cluster: Arc<Cluster>) {
    let db = Db::connect(cluster.config()).await.unwrap();
    assert_eq!(db.label, "", "other fields take their default");
    // Reads one at a time find both replicas idle, and the balancer picks
    // one at random: 4 reads all landed on one replica one run in 8.
    let mut ports = Vec::new();
    for _ in 0..64 {
        let served = db.who().await.unwrap();
        assert!(served.in_recovery, "{served:?}");
        assert_eq!(served.read_only, "on");
        ports.push(served.port);
    }
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports, {
        let mut expected = replica_ports(&cluster);
        expected.sort_unstable();
        expected
    });
}

async fn read_only_primary_runs_on_the_writer_read_only(cluster: Arc<Cluster>) {
    let db = Db::connect(cluster.config()).await.unwrap();
    let served = db.who_fresh().await.unwrap();
    assert_eq!(served.port, i32::from(cluster.primary().port()));
    assert!(!served.in_recovery);
    assert_eq!(served.read_only, "on");
}

async fn read_only_snapshot_runs_on_a_replica_in_one_snapshot(cluster: Arc<Cluster>) {
    let db = Db::connect(cluster.config()).await.unwrap();
    let (isolation, one_transaction) = db.isolation().await.unwrap();
    assert_eq!(isolation, "repeatable read");
    assert!(one_transaction, "two statements, one snapshot");
}

async fn write_methods_run_on_the_writer_in_a_transaction(cluster: Arc<Cluster>) {
    let db = Db::connect(cluster.config()).await.unwrap();
    let served = db.add("kept").await.unwrap();
    assert_eq!(served.port, i32::from(cluster.primary().port()));
    assert_eq!(served.read_only, "off");
    let err = db.add_then_fail("rolled back").await.unwrap_err();
    assert!(
        matches!(
            err,
            AppError::Query(diesel::result::Error::RollbackTransaction)
        ),
        "{err:?}"
    );
    let bodies = cluster
        .psql(
            NodeId::Primary,
            "SELECT string_agg(body, ',') FROM notes WHERE body IN ('kept', 'rolled back')",
        )
        .unwrap();
    assert_eq!(bodies, "kept");
}

async fn a_write_hidden_in_a_function_fails_at_run_time(cluster: Arc<Cluster>) {
    let db = Db::connect(cluster.config()).await.unwrap();
    let err = db.sneaky("hidden").await.unwrap_err();
    assert!(matches!(err, Error::ReadOnlyViolation { .. }), "{err:?}");
    let count = cluster
        .psql(
            NodeId::Primary,
            "SELECT count(*) FROM notes WHERE body = 'hidden'",
        )
        .unwrap();
    assert_eq!(count, "0");
}

async fn early_return_and_question_mark_keep_working(cluster: Arc<Cluster>) {
    let mut db = Db::connect(cluster.config()).await.unwrap();
    db.label = "repo".into();
    let err = db.body_of(-1).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Query {
                error: diesel::result::Error::NotFound,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(db.body_of(i64::MAX).await.unwrap(), None);
    let id: String = cluster
        .psql(
            NodeId::Primary,
            "INSERT INTO notes (body) VALUES ('visible') RETURNING id",
        )
        .unwrap();
    cluster.wait_for_replication().unwrap();
    let body = db.body_of(id.parse().unwrap()).await.unwrap();
    assert_eq!(body.as_deref(), Some("repo: visible"));
}

async fn own_error_types_receive_routing_errors(cluster: Arc<Cluster>) {
    let db = Db::connect(cluster.config()).await.unwrap();
    let count = db.count_as_app().await.unwrap();
    assert!(count >= 0);
    let closed_port = closed_port();
    let mut dead = Config::new(&cluster.writer_url())
        .unwrap()
        .with_replica(&format!(
            "postgres://postgres@127.0.0.1:{closed_port}/postgres"
        ))
        .unwrap();
    dead.health.reads_fall_back_to_writer = false;
    let db = Db::connect(dead).await.unwrap();
    let err = db.count_as_app().await.unwrap_err();
    assert!(
        matches!(err, AppError::Routing(Error::Checkout { .. })),
        "{err:?}"
    );
}

async fn methods_run_concurrently_from_spawned_tasks(cluster: Arc<Cluster>) {
    let db = Db::connect(cluster.config()).await.unwrap();
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                if i % 6 == 0 {
                    db.add(&format!("task {i}")).await
                } else {
                    db.who().await
                }
            })
        })
        .collect();
    let mut replica_reads = 0;
    for task in tasks {
        let served = task.await.unwrap().unwrap();
        replica_reads += usize::from(served.in_recovery);
    }
    assert_eq!(replica_reads, 20);
}

#[derive(ReplicatedRepo)]
struct Global;

impl Global {
    #[read_only]
    async fn who(&self, conn: &mut AsyncPgConnection) -> QueryResult<Served> {
        diesel::sql_query(WHO_SERVED).get_result(conn).await
    }
}

async fn unit_struct_repos_connect_once(cluster: Arc<Cluster>) {
    let err = Global.who().await.unwrap_err();
    assert!(
        matches!(err, Error::NotConnected { repo: "Global" }),
        "{err:?}"
    );
    let global = Global::connect(cluster.config()).await.unwrap();
    assert!(global.who().await.unwrap().in_recovery);
    assert!(
        Global.who().await.is_ok(),
        "every value of a unit repo shares its set"
    );
    let again = Global::connect(cluster.config()).await.err().unwrap();
    assert!(
        matches!(again, Error::AlreadyConnected { repo: "Global" }),
        "{again:?}"
    );
}
