//! `loadgen`: a load generator that shows how diesel-replica routes queries
//! and how much throughput a cluster gives.
//!
//! It runs `--concurrency` tasks for `--duration` seconds. Each task issues
//! operations back to back: a read with probability `--read-ratio`, else a
//! write. Every query asks the server that ran it who it is
//! (`inet_server_addr()`, `inet_server_port()`), so the per-node counts
//! show where the library actually routed each query, not where it meant to.
//!
//! The queries are two methods of a `#[derive(ReplicatedRepo)]` repo, as an
//! application would write them:
//!
//! - A **read** fetches one row by random id through a `#[read_only]`
//!   method: a replica (round robin) inside a `READ ONLY` transaction, or
//!   the writer when no replica is configured.
//! - A **write** updates one row by random id through a `#[write]` method:
//!   always the writer, in a transaction.
//!
//! # The table
//!
//! Before the clock starts, loadgen creates (on the writer, if missing)
//!
//! ```sql
//! CREATE TABLE loadgen_items (
//!     id bigserial PRIMARY KEY,
//!     payload text NOT NULL,
//!     updated_at timestamptz NOT NULL DEFAULT now()
//! )
//! ```
//!
//! fills it with 1000 rows if it is empty, and waits (up to 30 s) until
//! reads through every replica can see those rows, so that replication lag
//! of the set-up is not measured. With `--local` a replica that does not
//! catch up is fatal; against your own cluster loadgen warns (at once for
//! a replica it cannot connect to) and starts anyway. It leaves the table
//! in place afterwards; drop it with `DROP TABLE loadgen_items` when done.
//! Writes change `payload` and `updated_at` of existing rows only.
//!
//! # Tenants
//!
//! With `--tenants N`, loadgen leaves `public.loadgen_items` alone and
//! instead provisions `N` tenants, `tenant_0` to `tenant_{N-1}`, with
//! `ReplicaSet::provision_tenants` and the migrations in
//! `examples/loadgen_migrations` (embedded at build time): each tenant's
//! schema gets its own
//!
//! ```sql
//! CREATE TABLE loadgen_items (
//!     id bigserial PRIMARY KEY,
//!     tenant text NOT NULL DEFAULT current_schema(),
//!     payload text NOT NULL,
//!     updated_at timestamptz NOT NULL DEFAULT now()
//! )
//! ```
//!
//! (one line per tenant on stderr as it is provisioned; a tenant that
//! fails is fatal). Each empty table is then seeded with 200 rows in a
//! tenant-scoped transaction, so that every row's `tenant` is the name of
//! the schema it lives in, and loadgen waits, as above, until every reader
//! sees the last tenant's rows. During the run each operation picks a
//! random tenant and a random id of that tenant's rows, and reads or
//! writes through tenant-scoped methods (a `tenant: &Tenant` parameter):
//! the read `SELECT tenant, payload, .. FROM loadgen_items WHERE id = $1`
//! through a `#[read_only]` method, the write `UPDATE .. RETURNING tenant,
//! ..` through a `#[write]` one. Each runs with `search_path` set to the
//! tenant's schema for its transaction, which costs one more statement per
//! transaction. A successful operation whose row's `tenant` is not the
//! tenant it was scoped to is a **cross-tenant violation**: it still
//! counts as a success, is counted in `cross_tenant_violations`, and the
//! first one is printed on stderr. The schemas stay afterwards; drop them
//! with `DROP SCHEMA tenant_0 CASCADE` (and so on) when done.
//!
//! # Flags
//!
//! - `--duration SECS`: how long to run, in whole seconds (default 10).
//! - `--concurrency N`: how many tasks issue queries at once (default 16).
//! - `--read-ratio R`: the fraction of operations that are reads, from 0
//!   (writes only) to 1 (reads only) (default 0.9).
//! - `--local N`: ignore the environment and start a throwaway local
//!   cluster, one primary and `N` streaming replicas, with the
//!   `replica_testkit` crate (needs the PostgreSQL server binaries: see
//!   its docs, e.g. `PG_BIN`). The cluster lives in a temporary directory
//!   and is removed when loadgen exits normally; interrupting loadgen with
//!   Ctrl-C leaves its servers running.
//! - `--kill-replica-at SECS` (with `--local` only): kills replica 0 with
//!   an immediate shutdown (`pg_ctl stop -m immediate`, crash-like: open
//!   connections break) `SECS` seconds into the run (decimals allowed,
//!   e.g. `2.5`; must be within `--duration`).
//! - `--restart-replica-at SECS` (with `--local` and `--kill-replica-at`
//!   only, and later than the kill): starts replica 0 again `SECS` seconds
//!   into the run. Without it, replica 0 stays down to the end.
//! - `--timeline`: adds a `timeline` of 100 ms buckets to the JSON (see
//!   below).
//! - `--tenants N`: provisions `N` tenants and scopes every operation to a
//!   random one of them (see above); default 0, no tenants.
//!
//! The fault flags without `--local`, or a restart without a kill, before
//! it, or past the run, are rejected with exit status 2. The kill and the
//! restart are blocking `replica_testkit` calls (0.1 to 1 s each); they run
//! off the workers' threads, so the load goes on meanwhile.
//!
//! # Configuration
//!
//! Without `--local`, the cluster comes from the same environment variables
//! as [`Config::from_env`]:
//!
//! - `DATABASE_URL` (the writer) or `DATABASE_SECRET` (an RDS / Secrets
//!   Manager JSON secret for the writer);
//! - `DATABASE_REPLICA_URLS` (comma-separated URLs) and/or
//!   `DATABASE_REPLICA_HOSTS` (comma-separated `host[:port]`, sharing the
//!   writer's credentials and database); with no replica every read goes
//!   to the writer;
//! - `DATABASE_WRITER_POOL_SIZE`, `DATABASE_REPLICA_POOL_SIZE`,
//!   `DATABASE_WARM_UP`, `DATABASE_POOL_TIMEOUT_MS`,
//!   `DATABASE_CONNECT_TIMEOUT_MS`, `DATABASE_RECYCLE_TIMEOUT_MS`,
//!   `DATABASE_APPLICATION_NAME`.
//!
//! A pool size that is not set is raised to at least `--concurrency`, so
//! that the tasks do not queue for connections; a pool size that is set is
//! used as is (a smaller pool shows up as checkout waits and, past
//! `DATABASE_POOL_TIMEOUT_MS`, as `checkout_timeout` errors). With
//! `--local`, both pools hold exactly `--concurrency` connections, all
//! opened before the clock starts.
//!
//! A configuration error names the variable at fault; loadgen then exits
//! with status 2 (as it does for a bad flag). `RUST_LOG` sets the log
//! filter (default `warn`); logs go to stderr.
//!
//! # Output
//!
//! While running, one progress line per second on stderr:
//!
//! ```text
//! t=3s reads=12345/s writes=1370/s errors=0
//! ```
//!
//! (`reads` and `writes` count the successful operations of that second,
//! `errors` all failed operations so far). At the end, one line of JSON on
//! stdout and nothing else:
//!
//! ```json
//! {"reads_ok":61234,"reads_err":0,"writes_ok":6801,"writes_err":0,
//!  "per_node":{"127.0.0.1:5433":{"reads":20411,"writes":0,"retries":0,"ejections":0},
//!              "127.0.0.1:5432":{"reads":0,"writes":6801,"retries":0,"ejections":0}},
//!  "read_p50_us":812,"read_p99_us":2950,"errors":{},
//!  "cross_tenant_violations":0,"tenants":0,
//!  "duration_s":5.003,"reads_per_s":12239.5,"writes_per_s":1359.4}
//! ```
//!
//! (shown wrapped here; it is one line, with its keys sorted). `per_node`
//! is keyed by the `HOST:PORT` the server reports (`local:PORT` over a
//! unix socket). Each node's `retries` (failed attempts on it that a read
//! retried on another node) and `ejections` (times it was ejected) come
//! from `ReplicaSet::status()`, counted from the start of the run (not
//! the wait for the replicas before it), merged under the node's
//! configured `host:port`: with `--local` that is the key the server
//! reports; against your own cluster a node configured by a name (or an
//! address the server does not report as its own) gets a second entry,
//! with `reads` and `writes` 0, holding them.
//! The read latencies cover successful reads only, from the call to
//! the `#[read_only]` method to its result (connection checkout, `BEGIN READ
//! ONLY`, the query and `COMMIT`, and any retries on other nodes), in
//! microseconds; they are `null` when no read succeeded. `errors` counts
//! failed operations by kind: `checkout_timeout` (no connection within the
//! pool timeout), `checkout` (connecting failed), `timeout` (the node did
//! not answer within its statement timeout plus half a second),
//! `no_replica_available` (no replica could serve a read and reads may not
//! fall back to the writer), `read_only_violation`, `not_found` (no row
//! with the chosen id), `query` (any other database error), `config`,
//! `not_connected`, `already_connected`, `unknown_tenant` (the tenant's
//! schema does not exist on the node), `provision`, and `other` for an error kind
//! added to the library later. A read that failed on one node and
//! succeeded on another counts as a success (and as a `retries` of the
//! first node), not as an error. The first error of each kind is also
//! printed on stderr, with its time into the run. Operations still running
//! at the deadline are allowed to finish, and `duration_s` includes them.
//! The exit status is 0 even when operations failed: read `errors`.
//! `tenants` is `--tenants` (0 without it), and `cross_tenant_violations`
//! the successful operations that returned another tenant's row (see
//! [Tenants](#tenants); always 0 without `--tenants`).
//!
//! With `--timeline`, the JSON also holds `timeline`: one object per 100 ms
//! bucket from the start to the end of the run (the last one holds the
//! operations that finished after the deadline),
//!
//! ```json
//! "timeline":[{"t_ms":0,"reads":612,"writes":0,"errors":0,
//!              "by_node":{"127.0.0.1:5433":306,"127.0.0.1:5434":306}}, ...]
//! ```
//!
//! where `t_ms` is the bucket's start, `reads` and `writes` the successful
//! operations and `errors` the failed ones (reads and writes) that
//! finished in it, and `by_node` the successful reads per node that served
//! them (as the server reports it; every node that served a read at any
//! time of the run is listed in every bucket). Each task counts into its
//! own buckets, merged at the end, so the timeline costs the workers no
//! shared state.
//!
//! With `--kill-replica-at`, the JSON also holds `faults`, each time in
//! milliseconds from the start of the run (`null` for what did not happen):
//!
//! ```json
//! "faults":{"replica":"127.0.0.1:5433",
//!           "kill_issued_at_ms":3002,"killed_at_ms":3110,"ejected_at_ms":3033,
//!           "restart_issued_at_ms":7001,"restarted_at_ms":7198,
//!           "readmitted_at_ms":7512,"first_read_after_restart_ms":7517,
//!           "readmission_ms":319}
//! ```
//!
//! - `replica`: replica 0's `host:port`.
//! - `kill_issued_at_ms`: the immediate shutdown was sent; `killed_at_ms`:
//!   `pg_ctl stop` returned (the server is gone).
//! - `ejected_at_ms`: the library was first seen to have ejected replica 0
//!   (its health is looked at every 10 ms).
//! - `restart_issued_at_ms`: `pg_ctl start` was run; `restarted_at_ms`: it
//!   returned, the server accepting connections.
//! - `readmitted_at_ms`: the library was first seen to have re-admitted
//!   replica 0 after the ejection (health `Up` again).
//! - `first_read_after_restart_ms`: the first read that the restarted
//!   replica served (by the port the server reports) finished.
//! - `readmission_ms`: `first_read_after_restart_ms - restarted_at_ms`,
//!   how long after the replica was back it took reads again.
//!
//! Each of these events is also printed on stderr as it happens, e.g.
//! `loadgen: t=7.517s first read served by restarted replica-0
//! (127.0.0.1:5433)`; a later change of replica 0's health is printed too.
//!
//! # Examples
//!
//! ```text
//! # Try it out on a throwaway primary with 3 replicas:
//! cargo run --release --example loadgen -- --local 3 --duration 5
//!
//! # Against your own cluster:
//! export DATABASE_URL=postgres://app:secret@writer:5432/app
//! export DATABASE_REPLICA_HOSTS=reader-1,reader-2
//! cargo run --release --example loadgen -- --duration 10 --concurrency 32 --read-ratio 0.9
//!
//! # Writes only, to measure the writer alone:
//! cargo run --release --example loadgen -- --read-ratio 0
//!
//! # The cost of tenancy: the same load, scoped to 20 tenants:
//! cargo run --release --example loadgen -- --local 2 --duration 8 --concurrency 32 --tenants 20
//!
//! # Failover: kill replica 0 of 2 at 3 s, restart it at 7 s, reads only,
//! # with the timeline and the library's ejection / re-admission logs:
//! RUST_LOG=replica_core=info,warn cargo run --release --example loadgen -- \
//!     --local 2 --duration 12 --concurrency 32 --read-ratio 1.0 \
//!     --timeline --kill-replica-at 3 --restart-replica-at 7
//! ```

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use diesel::QueryableByName;
use diesel::result::Error as DieselError;
use diesel::sql_types::{BigInt, Integer, Nullable, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use diesel_replica::{
    Config, Error, Health, ReplicaSet, ReplicatedRepo, Status, Tenant, read_only, write,
};
use hdrhistogram::Histogram;
use replica_testkit::{Cluster, NodeId};
use serde_json::{Map, Value, json};
use tracing_subscriber::EnvFilter;

/// Rows put into an empty `loadgen_items`.
const SEED_ROWS: i64 = 1000;
/// Rows put into each tenant's empty `loadgen_items` (with `--tenants`).
const TENANT_SEED_ROWS: i64 = 200;
/// The tenants' migrations: one, creating `loadgen_items` in the tenant's
/// schema (path relative to the crate root).
const MIGRATIONS: EmbeddedMigrations = embed_migrations!("examples/loadgen_migrations");
/// Longest wait for the replicas to see the seeded table.
const REPLICA_WAIT: Duration = Duration::from_secs(30);
/// Largest latency the histograms hold (a minute); larger ones count as it.
const MAX_LATENCY_US: u64 = 60_000_000;
/// Width of one `--timeline` bucket, in milliseconds.
const BUCKET_MS: u64 = 100;
/// How often the health of the replica under `--kill-replica-at` is looked at.
const HEALTH_POLL: Duration = Duration::from_millis(10);
/// A fault time that has not happened (yet).
const UNSET: u64 = u64::MAX;

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS loadgen_items (\
     id bigserial PRIMARY KEY, \
     payload text NOT NULL, \
     updated_at timestamptz NOT NULL DEFAULT now())";
/// Seeds only an empty table, in one statement.
const SEED: &str = "INSERT INTO loadgen_items (payload) \
     SELECT 'item ' || g FROM generate_series(1, $1) AS g \
     WHERE NOT EXISTS (SELECT 1 FROM loadgen_items)";
/// Which node this is, as in the queries below.
const WHO_AM_I: &str = "SELECT host(inet_server_addr()) AS host, \
     coalesce(inet_server_port(), current_setting('port')::int) AS port";
const ID_RANGE: &str = "SELECT min(id) AS lo, max(id) AS hi FROM loadgen_items";
// Each query returns the server that ran it, as the server sees it:
// `host()` drops the `/32` that `inet_server_addr()::text` would add; both
// functions are NULL over a unix socket, where the `port` setting still
// names the node.
const READ_ITEM: &str = "SELECT payload, host(inet_server_addr()) AS host, \
     coalesce(inet_server_port(), current_setting('port')::int) AS port \
     FROM loadgen_items WHERE id = $1";
const WRITE_ITEM: &str = "UPDATE loadgen_items SET payload = $1, updated_at = now() WHERE id = $2 \
     RETURNING host(inet_server_addr()) AS host, \
     coalesce(inet_server_port(), current_setting('port')::int) AS port";
// The same with `--tenants`, in the tenant's own `loadgen_items`, also
// returning the tenant that the row belongs to.
const TENANT_READ_ITEM: &str = "SELECT tenant, payload, host(inet_server_addr()) AS host, \
     coalesce(inet_server_port(), current_setting('port')::int) AS port \
     FROM loadgen_items WHERE id = $1";
const TENANT_WRITE_ITEM: &str = "UPDATE loadgen_items SET payload = $1, updated_at = now() \
     WHERE id = $2 \
     RETURNING tenant, host(inet_server_addr()) AS host, \
     coalesce(inet_server_port(), current_setting('port')::int) AS port";

/// The repo the workers use: the replica set and the run's two queries.
#[derive(ReplicatedRepo, Clone)]
struct Items {
    replicas: ReplicaSet,
}

impl Items {
    /// One row by id, on a replica.
    #[read_only]
    async fn item(&self, conn: &mut AsyncPgConnection, id: i64) -> diesel::QueryResult<ReadRow> {
        diesel::sql_query(READ_ITEM)
            .bind::<BigInt, _>(id)
            .get_result(conn)
            .await
    }

    /// Rewrites one row, on the writer.
    #[write]
    async fn touch(
        &self,
        conn: &mut AsyncPgConnection,
        id: i64,
        payload: &str,
    ) -> diesel::QueryResult<NodeRow> {
        diesel::sql_query(WRITE_ITEM)
            .bind::<Text, _>(payload)
            .bind::<BigInt, _>(id)
            .get_result(conn)
            .await
    }

    /// One row by id in `tenant`'s schema, on a replica.
    #[read_only]
    async fn tenant_item(
        &self,
        conn: &mut AsyncPgConnection,
        tenant: &Tenant,
        id: i64,
    ) -> diesel::QueryResult<TenantReadRow> {
        let _ = tenant;
        diesel::sql_query(TENANT_READ_ITEM)
            .bind::<BigInt, _>(id)
            .get_result(conn)
            .await
    }

    /// Rewrites one row in `tenant`'s schema, on the writer.
    #[write]
    async fn tenant_touch(
        &self,
        conn: &mut AsyncPgConnection,
        tenant: &Tenant,
        id: i64,
        payload: &str,
    ) -> diesel::QueryResult<TenantNodeRow> {
        let _ = tenant;
        diesel::sql_query(TENANT_WRITE_ITEM)
            .bind::<Text, _>(payload)
            .bind::<BigInt, _>(id)
            .get_result(conn)
            .await
    }
}

/// Load generator for diesel-replica: runs reads and writes through a
/// ReplicaSet and reports where each ran, throughput and read latency.
///
/// Without --local, the cluster comes from DATABASE_URL (or DATABASE_SECRET)
/// and DATABASE_REPLICA_URLS / DATABASE_REPLICA_HOSTS. Progress goes to
/// stderr, one JSON summary line to stdout.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// How long to run, in seconds.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    duration: u64,

    /// How many tasks issue queries at once.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 16,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    concurrency: u32,

    /// Fraction of operations that are reads, from 0 (only writes) to 1 (only reads).
    #[arg(long, value_name = "R", default_value_t = 0.9, value_parser = parse_read_ratio)]
    read_ratio: f64,

    /// Ignore the environment and start a throwaway local cluster with N
    /// streaming replicas (needs the PostgreSQL server binaries); it is
    /// removed on exit.
    #[arg(long, value_name = "N")]
    local: Option<usize>,

    /// With --local: kill replica 0 (immediate shutdown) this many seconds
    /// into the run (decimals allowed).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    kill_replica_at: Option<Duration>,

    /// With --local and --kill-replica-at: start replica 0 again this many
    /// seconds into the run (later than the kill).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    restart_replica_at: Option<Duration>,

    /// Add to the JSON a "timeline" of 100 ms buckets: reads, writes,
    /// errors, and reads per node.
    #[arg(long)]
    timeline: bool,

    /// Provision N tenants (schemas tenant_0 .. tenant_{N-1}) and run every
    /// operation scoped to a random one of them; 0: no tenants.
    #[arg(long, value_name = "N", default_value_t = 0)]
    tenants: u32,
}

impl Args {
    /// Checks what clap cannot: the fault flags against each other,
    /// `--local` and `--duration`.
    fn check(&self) -> Result<(), String> {
        let (kill, restart) = (self.kill_replica_at, self.restart_replica_at);
        if kill.is_none() && restart.is_none() {
            return Ok(());
        }
        match self.local {
            None => {
                return Err(
                    "--kill-replica-at and --restart-replica-at need --local N: loadgen \
                     only kills and restarts replicas of the throwaway cluster it starts itself"
                        .into(),
                );
            }
            Some(0) => {
                return Err(
                    "--kill-replica-at needs a replica to kill: use --local 1 or more".into(),
                );
            }
            Some(_) => {}
        }
        let Some(kill) = kill else {
            return Err(
                "--restart-replica-at needs --kill-replica-at: only a killed replica is restarted"
                    .into(),
            );
        };
        let run = Duration::from_secs(self.duration);
        if kill >= run {
            return Err(format!(
                "--kill-replica-at {} is not within the run (--duration {})",
                kill.as_secs_f64(),
                self.duration
            ));
        }
        match restart {
            Some(restart) if restart <= kill => Err(format!(
                "--restart-replica-at {} must be later than --kill-replica-at {}",
                restart.as_secs_f64(),
                kill.as_secs_f64()
            )),
            Some(restart) if restart >= run => Err(format!(
                "--restart-replica-at {} is not within the run (--duration {})",
                restart.as_secs_f64(),
                self.duration
            )),
            _ => Ok(()),
        }
    }

    /// The faults to inject, if any (after [`Args::check`]).
    fn faults(&self) -> Option<FaultPlan> {
        Some(FaultPlan {
            kill_at: self.kill_replica_at?,
            restart_at: self.restart_replica_at,
        })
    }
}

/// A time into the run, in seconds with decimals.
fn parse_secs(value: &str) -> Result<Duration, String> {
    let secs: f64 = value.trim().parse().map_err(|_| {
        format!("`{value}` is not a number; expected seconds into the run, such as 3 or 2.5")
    })?;
    Duration::try_from_secs_f64(secs).map_err(|_| {
        format!("`{value}` is not a time into the run; expected seconds from 0, such as 3 or 2.5")
    })
}

fn parse_read_ratio(value: &str) -> Result<f64, String> {
    let ratio: f64 = value.trim().parse().map_err(|_| {
        format!("`{value}` is not a number; expected a fraction from 0 to 1, such as 0.9")
    })?;
    if (0.0..=1.0).contains(&ratio) {
        Ok(ratio)
    } else {
        Err(format!(
            "{value} is outside 0..=1; expected the fraction of operations that are reads, \
             such as 0.9 (0 = only writes, 1 = only reads)"
        ))
    }
}

/// The row a read returns.
#[derive(QueryableByName)]
struct ReadRow {
    #[diesel(sql_type = Text)]
    #[allow(
        dead_code,
        reason = "fetched like an application would, never inspected"
    )]
    payload: String,
    #[diesel(embed)]
    node: NodeRow,
}

/// The row a tenant-scoped read returns: whose row it is, and which node
/// ran it.
#[derive(QueryableByName)]
struct TenantReadRow {
    #[diesel(sql_type = Text)]
    tenant: String,
    #[diesel(embed)]
    read: ReadRow,
}

/// The row a tenant-scoped write returns: whose row it is, and which node
/// ran it.
#[derive(QueryableByName)]
struct TenantNodeRow {
    #[diesel(sql_type = Text)]
    tenant: String,
    #[diesel(embed)]
    node: NodeRow,
}

/// The row a write (or the replica wait) returns: which node ran it.
#[derive(QueryableByName)]
struct NodeRow {
    #[diesel(sql_type = Nullable<Text>)]
    host: Option<String>,
    #[diesel(sql_type = Integer)]
    port: i32,
}

#[derive(QueryableByName)]
struct IdRange {
    #[diesel(sql_type = Nullable<BigInt>)]
    lo: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    hi: Option<i64>,
}

impl NodeRow {
    /// The node's `HOST:PORT`.
    fn key(&self) -> String {
        node_key(self.host.as_deref(), self.port)
    }
}

/// `HOST:PORT`, with IPv6 hosts in brackets and `local` for a unix socket.
fn node_key(host: Option<&str>, port: i32) -> String {
    match host {
        Some(host) if host.contains(':') => format!("[{host}]:{port}"),
        Some(host) => format!("{host}:{port}"),
        None => format!("local:{port}"),
    }
}

/// The `errors` key of a failed operation.
fn error_kind(error: &Error) -> &'static str {
    match error {
        Error::Checkout { .. } if error.is_timeout() => "checkout_timeout",
        Error::Checkout { .. } => "checkout",
        Error::Timeout { .. } => "timeout",
        Error::NoReplicaAvailable { .. } => "no_replica_available",
        Error::ReadOnlyViolation { .. } => "read_only_violation",
        Error::Query {
            error: DieselError::NotFound,
            ..
        } => "not_found",
        Error::Query { .. } => "query",
        Error::Config(_) => "config",
        Error::NotConnected { .. } => "not_connected",
        Error::AlreadyConnected { .. } => "already_connected",
        Error::UnknownTenant { .. } => "unknown_tenant",
        Error::Provision { .. } => "provision",
        // `Error` is non-exhaustive: a variant added later.
        _ => "other",
    }
}

/// A failure that ends the run before or instead of the JSON summary.
struct Fatal {
    message: String,
    code: u8,
}

impl Fatal {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 1,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(message) = args.check() {
        Args::command()
            .bin_name("loadgen")
            .error(ErrorKind::ArgumentConflict, message)
            .exit();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // Owned here, outside `run`, so that the local cluster outlives the
    // runtime and its pools: the servers stop after every connection is gone.
    // The fault injection shares it, and is over before `run` returns.
    let mut cluster = None;
    match run(&args, &mut cluster) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(fatal) => {
            eprintln!("loadgen: {}", fatal.message);
            ExitCode::from(fatal.code)
        }
    }
}

fn run(args: &Args, cluster: &mut Option<Arc<Cluster>>) -> Result<Value, Fatal> {
    let concurrency = args.concurrency as usize;
    let config = match args.local {
        Some(replicas) => {
            eprintln!(
                "loadgen: --local {replicas}: starting a throwaway local cluster (primary + \
                 {replicas} streaming replicas) with replica_testkit; it is removed on exit"
            );
            let local = cluster
                .insert(Arc::new(Cluster::start(replicas).map_err(|e| {
                    Fatal::new(format!("cannot start the local cluster: {e}"))
                })?));
            local_config(local, concurrency)?
        }
        None => env_config(concurrency)?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Fatal::new(format!("cannot start the tokio runtime: {e}")))?;
    runtime.block_on(load(args, config, cluster.clone()))
}

/// The local cluster's configuration, with pools of `concurrency`
/// connections opened up front.
fn local_config(cluster: &Cluster, concurrency: usize) -> Result<Config, Fatal> {
    let mut config = cluster
        .replica_urls()
        .iter()
        .try_fold(Config::new(&cluster.writer_url())?, |config, url| {
            config.with_replica(url)
        })?;
    for pool in [&mut config.writer_pool, &mut config.replica_pool] {
        pool.max_size = concurrency;
        pool.warm_up = concurrency;
    }
    Ok(config)
}

/// The configuration from `DATABASE_*`, with each pool whose size is not
/// set raised to `concurrency`.
fn env_config(concurrency: usize) -> Result<Config, Fatal> {
    let mut config = Config::from_env().map_err(|e| Fatal {
        message: format!(
            "configuration error: {e}\n\
             hint: loadgen reads your cluster from DATABASE_URL (or DATABASE_SECRET) and \
             DATABASE_REPLICA_URLS / DATABASE_REPLICA_HOSTS; to try it without a cluster, run \
             it with `--local N` (a throwaway local primary with N replicas)"
        ),
        code: 2,
    })?;
    for (pool, var) in [
        (&mut config.writer_pool, "DATABASE_WRITER_POOL_SIZE"),
        (&mut config.replica_pool, "DATABASE_REPLICA_POOL_SIZE"),
    ] {
        if std::env::var_os(var).is_none() {
            pool.max_size = pool.max_size.max(concurrency);
        } else if pool.max_size < concurrency {
            eprintln!(
                "loadgen: note: {var} = {} is below --concurrency {concurrency}; tasks will \
                 queue for connections",
                pool.max_size
            );
        }
    }
    Ok(config)
}

impl From<diesel_replica::ConfigError> for Fatal {
    fn from(error: diesel_replica::ConfigError) -> Self {
        Self::new(format!("configuration error: {error}"))
    }
}

/// Connects, prepares the table, runs the workers (and the faults, with
/// the local `cluster`) and builds the summary.
async fn load(args: &Args, config: Config, cluster: Option<Arc<Cluster>>) -> Result<Value, Fatal> {
    let (writer_pool, replica_pool) = (config.writer_pool.max_size, config.replica_pool.max_size);
    let db = Items::connect(config)
        .await
        .map_err(|e| Fatal::new(format!("cannot connect: {e}")))?;
    let status = db.replica_set().status();
    let replicas: Vec<String> = status.replicas.iter().map(|r| r.address.clone()).collect();
    if replicas.is_empty() {
        eprintln!(
            "loadgen: writer {} (pool {writer_pool}); no replicas, so reads go to the writer",
            status.writer.address
        );
    } else {
        eprintln!(
            "loadgen: writer {} (pool {writer_pool}), {} {}: {} (pool {replica_pool} each)",
            status.writer.address,
            replicas.len(),
            if replicas.len() == 1 {
                "replica"
            } else {
                "replicas"
            },
            replicas.join(", ")
        );
    }

    // Untenanted, the workers use `public.loadgen_items` and its ids; with
    // `--tenants`, each tenant's own table and ids (`ids` is then unused).
    let (ids, tenants) = if args.tenants == 0 {
        (prepare_table(&db).await?, Vec::new())
    } else {
        let tenants = prepare_tenants(&db, args.tenants).await?;
        (tenants[tenants.len() - 1].1, tenants)
    };
    let last_tenant = tenants.last().map(|(tenant, _)| tenant);
    let waited = Instant::now();
    match wait_for_replicas(&db, last_tenant, ids.hi).await {
        Ok(()) => eprintln!(
            "loadgen: table loadgen_items ready ({} ids{}), seen by every reader after {} ms",
            ids.hi - ids.lo + 1,
            match last_tenant {
                Some(tenant) => format!(" in {tenant}, the last of {} tenants", tenants.len()),
                None => String::new(),
            },
            waited.elapsed().as_millis()
        ),
        Err(e) if args.local.is_some() => return Err(Fatal::new(e)),
        Err(e) => eprintln!("loadgen: warning: {e}; starting anyway"),
    }
    let tenants: Arc<[(Tenant, Ids)]> = tenants.into();

    eprintln!(
        "loadgen: running {}s, concurrency {}, read ratio {}",
        args.duration, args.concurrency, args.read_ratio
    );
    // `check` made sure that faults come with a local cluster of at least
    // one replica.
    // (`<[_]>::first` spelled out: diesel-async's `RunQueryDsl::first`
    // would otherwise be picked.)
    let faults = args.faults().zip(cluster).zip(<[String]>::first(&replicas));
    let live = Arc::new(Live::default());
    let first_errors = Arc::new(Mutex::new(HashSet::new()));
    let before = db.replica_set().status();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.duration);
    let clock = match &faults {
        Some((_, address)) => Some(Arc::new(
            FaultClock::new(start, address).map_err(Fatal::new)?,
        )),
        None => None,
    };
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let workers: Vec<_> = (0..args.concurrency)
        .map(|task| {
            tokio::spawn(worker(Worker {
                db: db.clone(),
                task,
                rng: Rng::new(seed ^ u64::from(task)),
                ids,
                tenants: tenants.clone(),
                read_ratio: args.read_ratio,
                start,
                deadline,
                live: live.clone(),
                first_errors: first_errors.clone(),
                timeline: args.timeline,
                faults: clock.clone(),
            }))
        })
        .collect();
    let progress = tokio::spawn(progress(start, live));
    let injected = match (faults, &clock) {
        (Some(((plan, cluster), _)), Some(clock)) => Some((
            tokio::spawn(inject_faults(cluster, plan, clock.clone())),
            tokio::spawn(watch_health(db.clone(), clock.clone(), deadline)),
        )),
        _ => None,
    };

    let mut totals = Stats::new(args.timeline);
    let mut panicked = None;
    for handle in workers {
        match handle.await {
            Ok(stats) => totals.merge(stats),
            Err(e) => panicked = Some(e),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    progress.abort();
    if let Some(e) = panicked {
        return Err(Fatal::new(format!("a worker task failed: {e}")));
    }
    if let Some((inject, watch)) = injected {
        // `check` put the faults inside the run: both end at the deadline,
        // or (a late restart) as soon as `pg_ctl start` returns.
        inject
            .await
            .map_err(|e| Fatal::new(format!("the fault injection task failed: {e}")))?
            .map_err(Fatal::new)?;
        watch
            .await
            .map_err(|e| Fatal::new(format!("the health watch task failed: {e}")))?;
    }
    let mut summary = totals.summary(elapsed);
    summary["tenants"] = json!(args.tenants);
    add_node_health(&mut summary, &db, &before);
    if let Some(timeline) = &totals.timeline {
        summary["timeline"] = timeline.to_json(elapsed);
    }
    if let Some(clock) = &clock {
        summary["faults"] = clock.to_json();
    }
    let latency = match (
        summary["read_p50_us"].as_u64(),
        summary["read_p99_us"].as_u64(),
    ) {
        (Some(p50), Some(p99)) => format!(", p50 {p50} us, p99 {p99} us"),
        _ => String::new(),
    };
    eprintln!(
        "loadgen: done in {elapsed:.2}s: {} reads ({:.0}/s{latency}), {} writes ({:.0}/s), \
         {} errors",
        totals.reads_ok,
        summary["reads_per_s"].as_f64().unwrap_or_default(),
        totals.writes_ok,
        summary["writes_per_s"].as_f64().unwrap_or_default(),
        totals.reads_err + totals.writes_err,
    );
    Ok(summary)
}

/// The ids the workers pick from, inclusive.
#[derive(Clone, Copy)]
struct Ids {
    lo: i64,
    hi: i64,
}

/// Creates and seeds `loadgen_items` on the writer and returns its ids.
async fn prepare_table(db: &Items) -> Result<Ids, Fatal> {
    let range = db
        .replica_set()
        .write(async |conn| {
            diesel::sql_query(CREATE_TABLE).execute(conn).await?;
            diesel::sql_query(SEED)
                .bind::<BigInt, _>(SEED_ROWS)
                .execute(conn)
                .await?;
            diesel::sql_query(ID_RANGE)
                .get_result::<IdRange>(conn)
                .await
        })
        .await
        .map_err(|e| Fatal::new(format!("cannot prepare table loadgen_items: {e}")))?;
    match range {
        IdRange {
            lo: Some(lo),
            hi: Some(hi),
        } => Ok(Ids { lo, hi }),
        _ => Err(Fatal::new(
            "table loadgen_items is empty after seeding (was it emptied meanwhile?)",
        )),
    }
}

/// Provisions `tenant_0 .. tenant_{n-1}` (schema and migrations, on the
/// writer), seeds each one's empty `loadgen_items` in a tenant-scoped
/// transaction, and returns each tenant with its ids.
async fn prepare_tenants(db: &Items, n: u32) -> Result<Vec<(Tenant, Ids)>, Fatal> {
    let tenants = (0..n)
        .map(|i| Tenant::new(format!("tenant_{i}")))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Fatal::new(format!("bad tenant name: {e}")))?;
    let started = Instant::now();
    let results = db
        .replica_set()
        .provision_tenants(&tenants, MIGRATIONS, |done, total, result| match result {
            Ok(p) => eprintln!(
                "loadgen: [{done}/{total}] provisioned {} ({}, {} migration(s) applied)",
                p.tenant,
                if p.created_schema {
                    "schema created"
                } else {
                    "schema existed"
                },
                p.applied.len()
            ),
            Err(e) => eprintln!("loadgen: [{done}/{total}] {e}"),
        })
        .await;
    if let Some(e) = results.into_iter().find_map(Result::err) {
        return Err(Fatal::new(format!("cannot provision the tenants: {e}")));
    }
    eprintln!(
        "loadgen: {n} tenants provisioned in {} ms; seeding them",
        started.elapsed().as_millis()
    );
    let mut seeded = Vec::with_capacity(tenants.len());
    for tenant in tenants {
        let range = db
            .replica_set()
            .tenant(&tenant)
            .transaction(async |conn| {
                diesel::sql_query(SEED)
                    .bind::<BigInt, _>(TENANT_SEED_ROWS)
                    .execute(conn)
                    .await?;
                diesel::sql_query(ID_RANGE)
                    .get_result::<IdRange>(conn)
                    .await
            })
            .await
            .map_err(|e| Fatal::new(format!("cannot seed {tenant}.loadgen_items: {e}")))?;
        match range {
            IdRange {
                lo: Some(lo),
                hi: Some(hi),
            } => seeded.push((tenant, Ids { lo, hi })),
            _ => {
                return Err(Fatal::new(format!(
                    "table {tenant}.loadgen_items is empty after seeding (was it emptied \
                     meanwhile?)"
                )));
            }
        }
    }
    Ok(seeded)
}

/// Reads the row `id` (of `tenant`'s table, with one) until every replica
/// (or, with none, the writer) has served it, so that the run does not
/// measure replication lag of the table's creation.
async fn wait_for_replicas(db: &Items, tenant: Option<&Tenant>, id: i64) -> Result<(), String> {
    let needed = db.replica_set().replica_count().max(1);
    let deadline = Instant::now() + REPLICA_WAIT;
    let mut seen = HashSet::new();
    // A read that no replica can serve (a tenant-scoped one on replicas
    // without the schema yet is retried elsewhere) may fall back to the
    // writer: with replicas, the writer does not count as a reader.
    let writer = if db.replica_set().replica_count() > 0 {
        let row = db
            .replica_set()
            .write(async |conn| {
                diesel::sql_query(WHO_AM_I)
                    .get_result::<NodeRow>(conn)
                    .await
            })
            .await
            .map_err(|e| format!("cannot ask the writer its address: {e}"))?;
        Some(row.key())
    } else {
        None
    };
    loop {
        let read = match tenant {
            Some(tenant) => db
                .tenant_item(tenant, id)
                .await
                .map(|row| row.read.node.key()),
            None => db.item(id).await.map(|row| row.node.key()),
        };
        let last = match read {
            Ok(node) if writer.as_ref() != Some(&node) => {
                let new = seen.insert(node);
                if seen.len() >= needed {
                    return Ok(());
                }
                if new {
                    continue;
                }
                "no new reader served the read".to_owned()
            }
            Ok(_) => "the read fell back to the writer".to_owned(),
            // An unreachable reader will not catch up by waiting.
            Err(e @ Error::Checkout { .. }) => {
                return Err(format!("cannot check that the readers see the table: {e}"));
            }
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            return Err(format!(
                "after {REPLICA_WAIT:?} only {} of {needed} reader(s) see table loadgen_items \
                 (last error: {last})",
                seen.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Counts shared with the progress line, bumped once per operation.
#[derive(Default)]
struct Live {
    reads: AtomicU64,
    writes: AtomicU64,
    errors: AtomicU64,
}

impl Live {
    /// `(reads, writes, errors)` now. (Spelled `AtomicU64::load` because
    /// diesel-async's `RunQueryDsl::load` would otherwise be picked.)
    fn snapshot(&self) -> (u64, u64, u64) {
        let get = |counter| AtomicU64::load(counter, Ordering::Relaxed);
        (get(&self.reads), get(&self.writes), get(&self.errors))
    }
}

/// Prints one progress line per second, until aborted.
async fn progress(start: Instant, live: Arc<Live>) {
    let second = Duration::from_secs(1);
    let mut ticks = tokio::time::interval_at((start + second).into(), second);
    let (mut reads, mut writes) = (0, 0);
    for t in 1.. {
        ticks.tick().await;
        let (now_reads, now_writes, errors) = live.snapshot();
        eprintln!(
            "t={t}s reads={}/s writes={}/s errors={errors}",
            now_reads - reads,
            now_writes - writes,
        );
        (reads, writes) = (now_reads, now_writes);
    }
}

/// xorshift64*: plenty for picking ids and operations, and no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so that neighbouring seeds diverge and the
        // state is never 0.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`), up to a negligible modulo bias.
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `lo..=hi` (`lo <= hi`), up to a negligible modulo bias.
    fn id(&mut self, ids: Ids) -> i64 {
        let span = ids.hi.abs_diff(ids.lo) + 1;
        ids.lo.wrapping_add((self.next_u64() % span) as i64)
    }
}

/// What one worker task owns.
struct Worker {
    db: Items,
    task: u32,
    rng: Rng,
    ids: Ids,
    /// With `--tenants`: the tenants and their ids; each operation picks
    /// one. Empty: untenanted, on `ids`.
    tenants: Arc<[(Tenant, Ids)]>,
    read_ratio: f64,
    /// When the clock started, for the timeline and the fault times.
    start: Instant,
    deadline: Instant,
    live: Arc<Live>,
    /// Kinds of error already printed, so that each is printed once.
    first_errors: Arc<Mutex<HashSet<&'static str>>>,
    /// Whether to keep a timeline.
    timeline: bool,
    /// The fault times, with `--kill-replica-at`.
    faults: Option<Arc<FaultClock>>,
}

/// Counts kept by one task without sharing, merged at the end.
struct Stats {
    reads_ok: u64,
    reads_err: u64,
    writes_ok: u64,
    writes_err: u64,
    /// `HOST:PORT` to (reads, writes).
    per_node: HashMap<String, (u64, u64)>,
    errors: HashMap<&'static str, u64>,
    /// Successful operations that returned a row of another tenant.
    cross_tenant_violations: u64,
    read_latency_us: Histogram<u64>,
    /// With `--timeline`.
    timeline: Option<Timeline>,
}

impl Stats {
    fn new(timeline: bool) -> Self {
        Self {
            reads_ok: 0,
            reads_err: 0,
            writes_ok: 0,
            writes_err: 0,
            per_node: HashMap::new(),
            errors: HashMap::new(),
            cross_tenant_violations: 0,
            read_latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("constant bounds are valid"),
            timeline: timeline.then(Timeline::default),
        }
    }

    fn merge(&mut self, other: Self) {
        self.reads_ok += other.reads_ok;
        self.reads_err += other.reads_err;
        self.writes_ok += other.writes_ok;
        self.writes_err += other.writes_err;
        for (node, (reads, writes)) in other.per_node {
            let counts = self.per_node.entry(node).or_default();
            counts.0 += reads;
            counts.1 += writes;
        }
        self.cross_tenant_violations += other.cross_tenant_violations;
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        self.read_latency_us
            .add(&other.read_latency_us)
            .expect("histograms with the same bounds always add");
        match (&mut self.timeline, other.timeline) {
            (Some(timeline), Some(other)) => timeline.merge(other),
            (None, other) => self.timeline = other,
            (Some(_), None) => {}
        }
    }

    /// The JSON summary line.
    fn summary(&self, elapsed_s: f64) -> Value {
        let per_node: Map<String, Value> = self
            .per_node
            .iter()
            .map(|(node, (reads, writes))| {
                (node.clone(), json!({ "reads": reads, "writes": writes }))
            })
            .collect();
        let errors: Map<String, Value> = self
            .errors
            .iter()
            .map(|(kind, n)| ((*kind).to_owned(), json!(n)))
            .collect();
        let quantile = |q: f64| {
            (!self.read_latency_us.is_empty()).then(|| self.read_latency_us.value_at_quantile(q))
        };
        let rate = |n: u64| {
            if elapsed_s > 0.0 {
                (n as f64 / elapsed_s * 10.0).round() / 10.0
            } else {
                0.0
            }
        };
        json!({
            "reads_ok": self.reads_ok,
            "reads_err": self.reads_err,
            "writes_ok": self.writes_ok,
            "writes_err": self.writes_err,
            "per_node": per_node,
            "read_p50_us": quantile(0.5),
            "read_p99_us": quantile(0.99),
            "errors": errors,
            "cross_tenant_violations": self.cross_tenant_violations,
            "duration_s": (elapsed_s * 1000.0).round() / 1000.0,
            "reads_per_s": rate(self.reads_ok),
            "writes_per_s": rate(self.writes_ok),
        })
    }
}

/// One task: reads and writes back to back until the deadline.
async fn worker(mut w: Worker) -> Stats {
    let mut stats = Stats::new(w.timeline);
    let mut n = 0u64;
    while Instant::now() < w.deadline {
        let (tenant, ids) = if w.tenants.is_empty() {
            (None, w.ids)
        } else {
            let (tenant, ids) = &w.tenants[w.rng.below(w.tenants.len())];
            (Some(tenant), *ids)
        };
        let id = w.rng.id(ids);
        if w.rng.next_f64() < w.read_ratio {
            let started = Instant::now();
            let result = match tenant {
                Some(tenant) => {
                    w.db.tenant_item(tenant, id)
                        .await
                        .map(|row| (row.read.node, Some(row.tenant)))
                }
                None => w.db.item(id).await.map(|row| (row.node, None)),
            };
            let done = Instant::now();
            let micros = done.duration_since(started).as_micros();
            match result {
                Ok((row, owner)) => {
                    check_owner(&mut stats, &w, tenant, owner.as_deref(), "read", id, done);
                    stats
                        .read_latency_us
                        .saturating_record(u64::try_from(micros).unwrap_or(u64::MAX));
                    stats.reads_ok += 1;
                    stats.per_node.entry(row.key()).or_default().0 += 1;
                    w.live.reads.fetch_add(1, Ordering::Relaxed);
                    if let Some(timeline) = &mut stats.timeline {
                        timeline.read(bucket(w.start, done), row.host.as_deref(), row.port);
                    }
                    if let Some(faults) = &w.faults {
                        faults.saw_read(row.host.as_deref(), row.port, done);
                    }
                }
                Err(e) => {
                    stats.reads_err += 1;
                    record_error(&mut stats, &w, &e, done);
                }
            }
        } else {
            n += 1;
            let payload = format!("written by task {} (#{n})", w.task);
            let result = match tenant {
                Some(tenant) => {
                    w.db.tenant_touch(tenant, id, &payload)
                        .await
                        .map(|row| (row.node, Some(row.tenant)))
                }
                None => w.db.touch(id, &payload).await.map(|row| (row, None)),
            };
            let done = Instant::now();
            match result {
                Ok((row, owner)) => {
                    check_owner(&mut stats, &w, tenant, owner.as_deref(), "write", id, done);
                    stats.writes_ok += 1;
                    stats.per_node.entry(row.key()).or_default().1 += 1;
                    w.live.writes.fetch_add(1, Ordering::Relaxed);
                    if let Some(timeline) = &mut stats.timeline {
                        Timeline::bump(&mut timeline.writes, bucket(w.start, done));
                    }
                }
                Err(e) => {
                    stats.writes_err += 1;
                    record_error(&mut stats, &w, &e, done);
                }
            }
        }
    }
    stats
}

/// Counts a successful operation scoped to `tenant` that returned a row of
/// `owner` (another tenant) as a cross-tenant violation, and prints the
/// first one.
fn check_owner(
    stats: &mut Stats,
    w: &Worker,
    tenant: Option<&Tenant>,
    owner: Option<&str>,
    op: &str,
    id: i64,
    done: Instant,
) {
    let (Some(tenant), Some(owner)) = (tenant, owner) else {
        return;
    };
    if owner == tenant.name() {
        return;
    }
    stats.cross_tenant_violations += 1;
    // Only violations get here, so the lock is off the hot path.
    let first = w
        .first_errors
        .lock()
        .map_or(true, |mut printed| printed.insert("cross_tenant_violation"));
    if first {
        eprintln!(
            "loadgen: t={:.3}s first cross-tenant violation: a {op} scoped to {tenant} \
             returned row {id} of {owner}",
            done.saturating_duration_since(w.start).as_secs_f64()
        );
    }
}

/// Counts a failed operation that ended at `done`, and prints it if it is
/// the first of its kind.
fn record_error(stats: &mut Stats, w: &Worker, error: &Error, done: Instant) {
    let kind = error_kind(error);
    *stats.errors.entry(kind).or_default() += 1;
    w.live.errors.fetch_add(1, Ordering::Relaxed);
    if let Some(timeline) = &mut stats.timeline {
        Timeline::bump(&mut timeline.errors, bucket(w.start, done));
    }
    // Only failed operations get here, so the lock is off the hot path.
    let first = w
        .first_errors
        .lock()
        .map_or(true, |mut printed| printed.insert(kind));
    if first {
        eprintln!(
            "loadgen: t={:.3}s first {kind} error: {error}",
            done.saturating_duration_since(w.start).as_secs_f64()
        );
    }
}

/// Milliseconds from `start` to `at`.
fn ms_since(start: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(start).as_millis()).unwrap_or(u64::MAX - 1)
}

/// The timeline bucket of an operation that ended at `done`.
fn bucket(start: Instant, done: Instant) -> usize {
    usize::try_from(ms_since(start, done) / BUCKET_MS).unwrap_or(usize::MAX - 1)
}

/// Adds `retries` and `ejections` from [`ReplicaSet::status`] to the
/// summary's `per_node`, keyed by each node's configured `host:port`.
/// Only what happened since `before` (taken when the clock started)
/// counts: not the retries of the wait for the replicas.
fn add_node_health(summary: &mut Value, db: &Items, before: &Status) {
    let status = db.replica_set().status();
    let Some(per_node) = summary["per_node"].as_object_mut() else {
        return;
    };
    let earlier: HashMap<&str, (u64, u64)> = std::iter::once(&before.writer)
        .chain(&before.replicas)
        .map(|node| (node.address.as_str(), (node.retried, node.ejections)))
        .collect();
    for node in std::iter::once(&status.writer).chain(&status.replicas) {
        let (retried, ejections) = earlier
            .get(node.address.as_str())
            .copied()
            .unwrap_or_default();
        let entry = per_node
            .entry(node.address.clone())
            .or_insert_with(|| json!({ "reads": 0, "writes": 0 }));
        entry["retries"] = json!(node.retried.saturating_sub(retried));
        entry["ejections"] = json!(node.ejections.saturating_sub(ejections));
    }
}

/// Operations per 100 ms bucket (by the time they ended), kept by one task
/// without sharing and merged at the end.
#[derive(Default)]
struct Timeline {
    reads: Vec<u64>,
    writes: Vec<u64>,
    /// Failed operations, reads and writes.
    errors: Vec<u64>,
    /// The nodes that served reads, as the server reported them (host, port).
    nodes: Vec<(Option<String>, i32)>,
    /// Reads per bucket, one row per entry of `nodes`.
    by_node: Vec<Vec<u64>>,
}

impl Timeline {
    fn bump(counts: &mut Vec<u64>, bucket: usize) {
        Self::add(counts, bucket, 1);
    }

    fn add(counts: &mut Vec<u64>, bucket: usize, n: u64) {
        if counts.len() <= bucket {
            counts.resize(bucket + 1, 0);
        }
        counts[bucket] += n;
    }

    /// The row of `by_node` for a node, added if new.
    fn node(&mut self, host: Option<&str>, port: i32) -> &mut Vec<u64> {
        let index = match self
            .nodes
            .iter()
            .position(|(h, p)| *p == port && h.as_deref() == host)
        {
            Some(index) => index,
            None => {
                self.nodes.push((host.map(str::to_owned), port));
                self.by_node.push(Vec::new());
                self.nodes.len() - 1
            }
        };
        &mut self.by_node[index]
    }

    /// A successful read served by `host:port`.
    fn read(&mut self, bucket: usize, host: Option<&str>, port: i32) {
        Self::bump(&mut self.reads, bucket);
        Self::bump(self.node(host, port), bucket);
    }

    fn merge(&mut self, other: Self) {
        for (mine, theirs) in [
            (&mut self.reads, other.reads),
            (&mut self.writes, other.writes),
            (&mut self.errors, other.errors),
        ] {
            for (bucket, n) in theirs.into_iter().enumerate() {
                Self::add(mine, bucket, n);
            }
        }
        for ((host, port), counts) in other.nodes.into_iter().zip(other.by_node) {
            let mine = self.node(host.as_deref(), port);
            for (bucket, n) in counts.into_iter().enumerate() {
                Self::add(mine, bucket, n);
            }
        }
    }

    /// One object per bucket, from 0 to the end of a run of `elapsed_s`;
    /// `by_node` lists every node that served a read during the run.
    fn to_json(&self, elapsed_s: f64) -> Value {
        let run_buckets = (elapsed_s * 1000.0 / BUCKET_MS as f64).ceil() as usize;
        let buckets = [&self.reads, &self.writes, &self.errors]
            .into_iter()
            .chain(&self.by_node)
            .map(Vec::len)
            .fold(run_buckets, usize::max);
        let at = |counts: &Vec<u64>, bucket: usize| counts.get(bucket).copied().unwrap_or(0);
        let keys: Vec<String> = self
            .nodes
            .iter()
            .map(|(host, port)| node_key(host.as_deref(), *port))
            .collect();
        (0..buckets)
            .map(|bucket| {
                let by_node: Map<String, Value> = keys
                    .iter()
                    .zip(&self.by_node)
                    .map(|(key, counts)| (key.clone(), json!(at(counts, bucket))))
                    .collect();
                json!({
                    "t_ms": bucket as u64 * BUCKET_MS,
                    "reads": at(&self.reads, bucket),
                    "writes": at(&self.writes, bucket),
                    "errors": at(&self.errors, bucket),
                    "by_node": by_node,
                })
            })
            .collect()
    }
}

/// What `--kill-replica-at` and `--restart-replica-at` ask for.
#[derive(Clone, Copy)]
struct FaultPlan {
    kill_at: Duration,
    restart_at: Option<Duration>,
}

/// When each fault event happened, in ms since the start of the run
/// ([`UNSET`] until it does), shared by the fault task, the health watch
/// and the workers.
struct FaultClock {
    start: Instant,
    /// Replica 0, `host:port` as configured (and, locally, as reported).
    address: String,
    host: String,
    port: i32,
    kill_issued: AtomicU64,
    killed: AtomicU64,
    ejected: AtomicU64,
    restart_issued: AtomicU64,
    restarted: AtomicU64,
    readmitted: AtomicU64,
    first_read_after_restart: AtomicU64,
}

impl FaultClock {
    fn new(start: Instant, address: &str) -> Result<Self, String> {
        let (host, port) = address
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host, port.parse().ok()?)))
            .ok_or_else(|| format!("replica 0's address `{address}` is not host:port"))?;
        let unset = || AtomicU64::new(UNSET);
        Ok(Self {
            start,
            address: address.to_owned(),
            host: host.trim_matches(['[', ']']).to_owned(),
            port,
            kill_issued: unset(),
            killed: unset(),
            ejected: unset(),
            restart_issued: unset(),
            restarted: unset(),
            readmitted: unset(),
            first_read_after_restart: unset(),
        })
    }

    /// Records `event` as happening now (once) and prints it on stderr.
    fn record(&self, event: &AtomicU64, what: impl std::fmt::Display) {
        let now = ms_since(self.start, Instant::now());
        if event
            .compare_exchange(UNSET, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            eprintln!("loadgen: t={:.3}s {what}", now as f64 / 1000.0);
        }
    }

    fn get(event: &AtomicU64) -> Option<u64> {
        Some(AtomicU64::load(event, Ordering::Relaxed)).filter(|&ms| ms != UNSET)
    }

    /// A read served by `host:port` ended at `done`: the first one on
    /// replica 0 after its restart was issued is recorded. (Replica 0 is
    /// down from the kill to the restart, so such a read ran on the
    /// restarted server.)
    fn saw_read(&self, host: Option<&str>, port: i32, done: Instant) {
        if port != self.port
            || host != Some(self.host.as_str())
            || Self::get(&self.restart_issued).is_none()
            || Self::get(&self.first_read_after_restart).is_some()
        {
            return;
        }
        let at = ms_since(self.start, done);
        if self
            .first_read_after_restart
            .compare_exchange(UNSET, at, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            eprintln!(
                "loadgen: t={:.3}s first read served by restarted replica-0 ({})",
                at as f64 / 1000.0,
                self.address
            );
        }
    }

    /// The `faults` object of the summary.
    fn to_json(&self) -> Value {
        let restarted = Self::get(&self.restarted);
        let first_read = Self::get(&self.first_read_after_restart);
        json!({
            "replica": self.address,
            "kill_issued_at_ms": Self::get(&self.kill_issued),
            "killed_at_ms": Self::get(&self.killed),
            "ejected_at_ms": Self::get(&self.ejected),
            "restart_issued_at_ms": Self::get(&self.restart_issued),
            "restarted_at_ms": restarted,
            "readmitted_at_ms": Self::get(&self.readmitted),
            "first_read_after_restart_ms": first_read,
            "readmission_ms": restarted
                .zip(first_read)
                .map(|(restarted, first)| first as i64 - restarted as i64),
        })
    }
}

/// Kills replica 0 and restarts it as planned. The testkit's calls block
/// (up to a second), so they run on the blocking pool while the workers go on.
async fn inject_faults(
    cluster: Arc<Cluster>,
    plan: FaultPlan,
    clock: Arc<FaultClock>,
) -> Result<(), String> {
    let replica = NodeId::Replica(0);
    let address = clock.address.clone();
    tokio::time::sleep_until((clock.start + plan.kill_at).into()).await;
    clock.record(
        &clock.kill_issued,
        format_args!("killing replica-0 ({address}): immediate shutdown"),
    );
    blocking(&cluster, move |cluster| cluster.kill(replica))
        .await
        .map_err(|e| format!("cannot kill replica-0 ({address}): {e}"))?;
    clock.record(&clock.killed, "replica-0 is down (pg_ctl stop returned)");
    let Some(restart_at) = plan.restart_at else {
        return Ok(());
    };
    tokio::time::sleep_until((clock.start + restart_at).into()).await;
    clock.record(
        &clock.restart_issued,
        format_args!("restarting replica-0 ({address})"),
    );
    blocking(&cluster, move |cluster| cluster.start_node(replica))
        .await
        .map_err(|e| format!("cannot restart replica-0 ({address}): {e}"))?;
    clock.record(
        &clock.restarted,
        "replica-0 accepts connections again (pg_ctl start returned)",
    );
    Ok(())
}

/// Runs a blocking testkit call on the blocking pool.
async fn blocking(
    cluster: &Arc<Cluster>,
    call: impl FnOnce(&Cluster) -> Result<(), replica_testkit::Error> + Send + 'static,
) -> Result<(), String> {
    let cluster = cluster.clone();
    match tokio::task::spawn_blocking(move || call(&cluster)).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(format!("the blocking task failed: {e}")),
    }
}

/// Watches replica 0's health until the deadline and records (and prints)
/// its first ejection and the first re-admission after it; later changes
/// are printed only.
async fn watch_health(db: Items, clock: Arc<FaultClock>, deadline: Instant) {
    let mut ticks = tokio::time::interval(HEALTH_POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut was_up = true;
    while Instant::now() < deadline {
        ticks.tick().await;
        let Some(replica) = db.replica_set().status().replicas.into_iter().next() else {
            return;
        };
        let up = matches!(replica.health, Health::Up);
        if up == was_up {
            continue;
        }
        was_up = up;
        let event = match (up, FaultClock::get(&clock.ejected)) {
            (false, None) => &clock.ejected,
            (true, Some(_)) if FaultClock::get(&clock.readmitted).is_none() => &clock.readmitted,
            _ => {
                let at = ms_since(clock.start, Instant::now());
                eprintln!(
                    "loadgen: t={:.3}s replica-0 is {:?} again",
                    at as f64 / 1000.0,
                    replica.health
                );
                continue;
            }
        };
        let what = if up {
            "replica-0 is re-admitted (health Up)".to_owned()
        } else {
            format!(
                "replica-0 is ejected (ejection #{}); last error: {}",
                replica.ejections,
                replica.last_error.as_deref().unwrap_or("none")
            )
        };
        clock.record(event, what);
    }
}
