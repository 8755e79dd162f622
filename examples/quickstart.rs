//! Quickstart: one writer, two replicas, reads and writes routed between them.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! With no `DATABASE_URL` (or `DATABASE_SECRET`) in the environment, it
//! starts a throwaway local cluster (a primary and two streaming replicas,
//! from the machine's PostgreSQL binaries) and removes it at the end. With
//! them set, it uses your cluster as configured by the `DATABASE_*`
//! variables (see the README) and creates one small table there,
//! `quickstart_notes`.
//!
//! It writes a note on the writer, then reads through the replicas and
//! prints which server answered each read, as the server itself reports it
//! (`inet_server_port()`, `pg_is_in_recovery()`).

use std::error::Error;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::{Bool, Integer};
use diesel_async::RunQueryDsl;
use diesel_replica::{Config, ReplicaSet};
use replica_testkit::Cluster;

// `table!` generates public items without docs.
#[allow(missing_docs)]
mod schema {
    diesel::table! {
        quickstart_notes (id) {
            id -> Int4,
            body -> Text,
        }
    }
}
use schema::quickstart_notes;

/// Which server answered, asked of the server itself.
fn served_by() -> (
    diesel::expression::SqlLiteral<Integer>,
    diesel::expression::SqlLiteral<Bool>,
) {
    (
        diesel::dsl::sql::<Integer>("inet_server_port()"),
        diesel::dsl::sql::<Bool>("pg_is_in_recovery()"),
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let configured = ["DATABASE_URL", "DATABASE_SECRET"]
        .iter()
        .any(|key| std::env::var_os(key).is_some());
    let (config, _cluster) = if configured {
        (Config::from_env()?, None)
    } else {
        println!("No DATABASE_URL set: starting a local primary and 2 streaming replicas...");
        let cluster = Cluster::start(2)?;
        let config = cluster
            .replica_urls()
            .iter()
            .try_fold(Config::new(&cluster.writer_url())?, |config, url| {
                config.with_replica(url)
            })?;
        (config, Some(cluster))
    };
    println!("writer:   {}", config.writer);
    for replica in &config.replicas {
        println!("replica:  {replica}");
    }

    let db = ReplicaSet::connect(config).await?;

    db.write(async |conn| {
        diesel::sql_query(
            "CREATE TABLE IF NOT EXISTS quickstart_notes (id serial PRIMARY KEY, body text NOT NULL)",
        )
        .execute(conn)
        .await
    })
    .await?;

    let (id, (port, in_recovery)) = db
        .transaction(async |conn| {
            let id = diesel::insert_into(quickstart_notes::table)
                .values(quickstart_notes::body.eq("hello from the writer"))
                .returning(quickstart_notes::id)
                .get_result::<i32>(conn)
                .await?;
            let who = diesel::select(served_by())
                .get_result::<(i32, bool)>(conn)
                .await?;
            Ok((id, who))
        })
        .await?;
    println!("\nwrote note {id} on port {port} (in recovery: {in_recovery})");

    // Replicas apply the write a moment later; wait until each has it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut caught_up = 0;
    while caught_up < db.replica_count().max(1) && Instant::now() < deadline {
        let seen = db
            .read(async |conn| {
                quickstart_notes::table
                    .find(id)
                    .count()
                    .get_result::<i64>(conn)
                    .await
            })
            .await;
        caught_up = if matches!(seen, Ok(1)) {
            caught_up + 1
        } else {
            0
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    println!("\nreads through the replica set (server-reported):");
    for _ in 0..6 {
        let (body, port, in_recovery) = db
            .read(async |conn| {
                let body = quickstart_notes::table
                    .find(id)
                    .select(quickstart_notes::body)
                    .first::<String>(conn)
                    .await
                    .optional()?;
                let (port, in_recovery) = diesel::select(served_by())
                    .get_result::<(i32, bool)>(conn)
                    .await?;
                Ok((body, port, in_recovery))
            })
            .await?;
        let role = if in_recovery { "replica" } else { "writer" };
        println!("  port {port} ({role}): {body:?}");
    }

    let (port, in_recovery) = db
        .read_fresh(async |conn| {
            diesel::select(served_by())
                .get_result::<(i32, bool)>(conn)
                .await
        })
        .await?;
    println!("\nread_fresh served by port {port} (in recovery: {in_recovery})");

    let refused = db
        .read(async |conn| diesel::delete(quickstart_notes::table).execute(conn).await)
        .await;
    match refused {
        Err(err) => println!("a write on the read path is refused: {err}"),
        Ok(_) => return Err("a write on the read path was not refused".into()),
    }
    Ok(())
}
