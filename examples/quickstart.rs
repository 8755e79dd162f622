//! Quickstart: one writer, two replicas, reads and writes routed between them.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! With no `DATABASE_URL` (or `DATABASE_SECRET`, `DATABASE_SECRET_FILE`) set, it
//! starts a throwaway local cluster (a primary and two streaming replicas,
//! from the machine's PostgreSQL binaries) and removes it at the end. With
//! them set, it uses your cluster as configured by the `DATABASE_*`
//! variables (see the README) and creates one small table there,
//! `quickstart_notes`.
//!
//! A `#[derive(ReplicatedRepo)]` repo writes a note on the writer, then
//! reads it through the replicas; each query returns which server answered,
//! as the server itself reports it (`inet_server_port()`,
//! `pg_is_in_recovery()`).

use std::error::Error;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_replica::{Config, ReplicaSet, ReplicatedRepo, read_only, write};
use diesel_replica_testkit::{Cluster, Served, who_served};

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

/// The application's repo: its replica set, and its queries as methods.
#[derive(ReplicatedRepo)]
struct Notes {
    replicas: ReplicaSet,
}

impl Notes {
    #[write]
    async fn create_table(&self, conn: &mut AsyncPgConnection) -> QueryResult<()> {
        diesel::sql_query(
            "CREATE TABLE IF NOT EXISTS quickstart_notes (id serial PRIMARY KEY, body text NOT NULL)",
        )
        .execute(conn)
        .await?;
        Ok(())
    }

    #[write]
    async fn add(&self, conn: &mut AsyncPgConnection, body: &str) -> QueryResult<(i32, Served)> {
        let id = diesel::insert_into(quickstart_notes::table)
            .values(quickstart_notes::body.eq(body))
            .returning(quickstart_notes::id)
            .get_result(conn)
            .await?;
        Ok((id, who_served(conn).await?))
    }

    #[read_only]
    async fn body(
        &self,
        conn: &mut AsyncPgConnection,
        id: i32,
    ) -> QueryResult<(Option<String>, Served)> {
        body_and_server(conn, id).await
    }

    #[read_only(primary)]
    async fn fresh_body(
        &self,
        conn: &mut AsyncPgConnection,
        id: i32,
    ) -> QueryResult<(Option<String>, Served)> {
        body_and_server(conn, id).await
    }
}

async fn body_and_server(
    conn: &mut AsyncPgConnection,
    id: i32,
) -> QueryResult<(Option<String>, Served)> {
    let body = quickstart_notes::table
        .find(id)
        .select(quickstart_notes::body)
        .first(conn)
        .await
        .optional()?;
    Ok((body, who_served(conn).await?))
}

fn role(served: &Served) -> &'static str {
    if served.in_recovery {
        "replica"
    } else {
        "writer"
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let configured = ["DATABASE_URL", "DATABASE_SECRET", "DATABASE_SECRET_FILE"]
        .iter()
        .any(|key| std::env::var_os(key).is_some());
    let (config, _cluster) = if configured {
        (Config::from_env()?, None)
    } else {
        println!("No DATABASE_URL set: starting a local primary and 2 streaming replicas...");
        let cluster = Cluster::start(2)?;
        (cluster.config(), Some(cluster))
    };
    println!("writer:   {}", config.writer);
    for replica in &config.replicas {
        println!("replica:  {replica}");
    }

    let notes = Notes::connect(config).await?;
    notes.create_table().await?;
    let (id, served) = notes.add("hello from the writer").await?;
    println!(
        "\nwrote note {id} on port {} ({})",
        served.port,
        role(&served)
    );

    // Replicas apply the write a moment later; wait until each has it.
    let replicas = notes.replica_set().replica_count().max(1);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut caught_up = 0;
    while caught_up < replicas && Instant::now() < deadline {
        let seen = matches!(notes.body(id).await, Ok((Some(_), _)));
        caught_up = if seen { caught_up + 1 } else { 0 };
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    println!("\n#[read_only] reads (server-reported):");
    for _ in 0..6 {
        let (body, served) = notes.body(id).await?;
        println!("  port {} ({}): {body:?}", served.port, role(&served));
    }

    // Least-in-flight balancing (the default) sends a read to the less
    // busy of two replicas: of two reads at once, one goes to each.
    let ((_, first), (_, second)) = tokio::try_join!(notes.body(id), notes.body(id))?;
    println!(
        "two at once: ports {} ({}) and {} ({})",
        first.port,
        role(&first),
        second.port,
        role(&second)
    );

    let (body, served) = notes.fresh_body(id).await?;
    println!(
        "\n#[read_only(primary)] read: port {} ({}): {body:?}",
        served.port,
        role(&served)
    );

    // The explicit API beside the methods; a write on its read path is
    // refused by PostgreSQL.
    let refused = notes
        .replica_set()
        .read(async |conn| diesel::delete(quickstart_notes::table).execute(conn).await)
        .await;
    match refused {
        Err(err) => println!("a write on the read path is refused: {err}"),
        Ok(_) => return Err("a write on the read path was not refused".into()),
    }
    Ok(())
}
