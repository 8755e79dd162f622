//! `--through URL`: the same load without the library, as an application
//! behind a read/write-splitting proxy (pgpool-II, say) runs it: one plain
//! diesel-async pool to the proxy's one endpoint, and the very queries of
//! the library path ([`read_item`], [`write_item`]) sent bare, in
//! autocommit, with no transaction around them; the proxy decides where
//! each runs. Counted into the same [`Stats`], so the JSON has the same
//! fields; `per_node` says where the proxy sent each query, as the server
//! that ran it reports itself.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use diesel_async::pooled_connection::deadpool::{Pool, PoolError};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use diesel_replica_testkit::Rng;
use serde_json::Value;

use crate::args::Args;
use crate::clock::bucket;
use crate::error::{Chain, Fatal, print_first};
use crate::nodes::NodeTally;
use crate::repo::{NodeRow, read_item, write_item};
use crate::report;
use crate::setup::{self, Ids, REPLICA_WAIT};
use crate::stats::Stats;
use crate::task::Live;
use crate::workers::{Running, pick_id};

/// The plain pool: what `Pool::builder` gives, with `Fast` recycling (no
/// check of an idle connection before reuse).
type Plain = Pool<AsyncPgConnection>;

/// Why an operation through the proxy failed.
enum Failure {
    /// No connection: the pool could not open one (it has no wait timeout,
    /// as `Pool::builder` makes it, so it never times out).
    Checkout(PoolError),
    /// The query failed, or found no row.
    Query(diesel::result::Error),
}

impl Failure {
    /// The error kind, named as the library path names its own.
    fn kind(&self) -> &'static str {
        match self {
            Failure::Checkout(PoolError::Timeout(_)) => "checkout_timeout",
            Failure::Checkout(_) => "checkout",
            Failure::Query(diesel::result::Error::NotFound) => "not_found",
            Failure::Query(_) => "query",
        }
    }

    fn error(&self) -> &(dyn std::error::Error + 'static) {
        match self {
            Failure::Checkout(e) => e,
            Failure::Query(e) => e,
        }
    }
}

/// One worker task through the proxy: what it owns.
struct Task {
    pool: Plain,
    task: u32,
    rng: Rng,
    ids: Ids,
    read_ratio: f64,
    start: Instant,
    deadline: Instant,
    live: Arc<Live>,
    /// Kinds of error already printed, so that each is printed once.
    first_errors: Arc<Mutex<HashSet<&'static str>>>,
}

/// `url` without its credentials, for messages: `HOST:PORT/DB` of a URL,
/// and no part of a `key=value` connection string (its password could be
/// anywhere in it).
pub(crate) fn endpoint(url: &str) -> String {
    let Some((_, rest)) = url.split_once("://") else {
        return "the endpoint of --through (a key=value connection string)".to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    // The password may hold a `/` or `?` only percent-encoded, so the
    // authority ends at the first one; its userinfo at the last `@`.
    let host_start = rest[..authority_end].rfind('@').map_or(0, |at| at + 1);
    let path_end = rest.find('?').unwrap_or(rest.len());
    rest[host_start..path_end].to_owned()
}

/// Connects through the proxy at `url`, prepares the table, runs the load
/// and builds the summary, with the same JSON fields as the library path.
pub(crate) async fn load(args: &Args, url: &str) -> Result<Value, Fatal> {
    let at = endpoint(url);
    let size = args.concurrency as usize;
    let mut config = ManagerConfig::default();
    config.recycling_method = RecyclingMethod::Fast;
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, config);
    let pool = Pool::builder(manager)
        .max_size(size)
        .build()
        .map_err(|e| Fatal::new(format!("cannot build the pool for {at}: {}", Chain(&e))))?;
    let ids = {
        let mut conn = pool
            .get()
            .await
            .map_err(|e| Fatal::new(format!("cannot connect through {at}: {}", Chain(&e))))?;
        // In one transaction: a proxy keeps a transaction that has written
        // on the primary, so the range is read where the rows were made (in
        // autocommit it could be balanced to a replica not there yet).
        conn.transaction(async |conn| setup::create_and_seed(conn).await)
            .await
            .map_err(|e| {
                Fatal::new(format!(
                    "cannot prepare table loadgen_items through {at}: {}",
                    Chain(&e)
                ))
            })?
            .ids()?
    };
    let waited = Instant::now();
    let served = warm_up(&pool, size, ids.hi).await?;
    eprintln!(
        "loadgen: through {at}: a plain pool of {size} connections (Fast recycling, \
         autocommit), all open; table loadgen_items ready ({} ids), its last row read on \
         every connection after {} ms, served by {}",
        ids.hi - ids.lo + 1,
        waited.elapsed().as_millis(),
        served
            .iter()
            .map(|(node, n)| format!("{node} ({n})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    eprintln!(
        "loadgen: running {}s, concurrency {}, read ratio {}",
        args.duration,
        args.concurrency,
        args.read_ratio()
    );

    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.duration);
    let live = Arc::new(Live::default());
    let first_errors = Arc::new(Mutex::new(HashSet::new()));
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let timeline = args.timeline;
    let workers = (0..args.concurrency)
        .map(|task| {
            tokio::spawn(worker(
                Task {
                    pool: pool.clone(),
                    task,
                    rng: Rng::new(seed ^ u64::from(task)),
                    ids,
                    read_ratio: args.read_ratio(),
                    start,
                    deadline,
                    live: live.clone(),
                    first_errors: first_errors.clone(),
                },
                timeline,
            ))
        })
        .collect();
    let (totals, elapsed) = Running::of(workers, live, start, timeline).join().await?;
    // No replica set, so no node retries, ejections or lag to report.
    Ok(report::summarize(
        &totals,
        elapsed,
        0,
        &NodeTally::default(),
        None,
        None,
    ))
}

/// Opens every connection of the pool before the clock starts (as the
/// library path's warm-up does for its pools) and reads the row `id` on
/// each until it is there, so that the run measures neither connection
/// set-up nor the replicas catching up with the seeding. A proxy that
/// balances by session pins each connection to one node, so this reaches
/// every node that will serve reads. Returns how many connections each
/// node served.
async fn warm_up(pool: &Plain, size: usize, id: i64) -> Result<BTreeMap<String, usize>, Fatal> {
    let deadline = Instant::now() + REPLICA_WAIT;
    let mut conns = Vec::with_capacity(size);
    for _ in 0..size {
        conns.push(pool.get().await.map_err(|e| {
            Fatal::new(format!(
                "cannot open connection {} of {size}: {}",
                conns.len() + 1,
                Chain(&e)
            ))
        })?);
    }
    let mut served = BTreeMap::new();
    for conn in &mut conns {
        loop {
            match read_item(conn, id).await {
                Ok(row) => {
                    *served.entry(row.node.key()).or_default() += 1;
                    break;
                }
                // A replica that has not replayed the seeding finds no row,
                // or (a new table) no table: a database error.
                Err(
                    e
                    @ (diesel::result::Error::NotFound | diesel::result::Error::DatabaseError(..)),
                ) => {
                    if Instant::now() >= deadline {
                        return Err(Fatal::new(format!(
                            "after {REPLICA_WAIT:?} a read of row {id} through the proxy still \
                             fails, so a node it reads from does not see table loadgen_items: {}",
                            Chain(&e)
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    return Err(Fatal::new(format!(
                        "cannot read row {id} through the proxy: {}",
                        Chain(&e)
                    )));
                }
            }
        }
    }
    Ok(served)
}

/// One task: reads and writes back to back until the deadline, each on a
/// connection taken from the pool for it alone, as the library path takes
/// one per call.
async fn worker(mut t: Task, timeline: bool) -> Stats {
    let mut stats = Stats::new(timeline, false, false);
    let mut n = 0u64;
    while Instant::now() < t.deadline {
        // Drawn in the library path's order: the id, then read or write.
        let id = pick_id(&mut t.rng, t.ids);
        if t.rng.next_f64() < t.read_ratio {
            let started = Instant::now();
            let result = match t.pool.get().await {
                Ok(mut conn) => read_item(&mut conn, id)
                    .await
                    .map(|row| row.node)
                    .map_err(Failure::Query),
                Err(e) => Err(Failure::Checkout(e)),
            };
            let done = Instant::now();
            match result {
                Ok(node) => {
                    let took = done.duration_since(started);
                    t.live.read_ok(&mut stats, t.start, &node, took, done);
                }
                Err(failure) => {
                    stats.reads_err += 1;
                    count_failure(&mut stats, &t, &failure, done);
                }
            }
        } else {
            n += 1;
            let payload = format!("written by task {} (#{n})", t.task);
            let result: Result<NodeRow, Failure> = match t.pool.get().await {
                Ok(mut conn) => write_item(&mut conn, id, &payload)
                    .await
                    .map_err(Failure::Query),
                Err(e) => Err(Failure::Checkout(e)),
            };
            let done = Instant::now();
            match result {
                Ok(node) => t.live.write_ok(&mut stats, t.start, &node, done),
                Err(failure) => {
                    stats.writes_err += 1;
                    count_failure(&mut stats, &t, &failure, done);
                }
            }
        }
    }
    stats
}

/// Counts a failed operation that ended at `done`, and prints it if it is
/// the first of its kind.
fn count_failure(stats: &mut Stats, t: &Task, failure: &Failure, done: Instant) {
    let kind = failure.kind();
    *stats.errors.entry(kind).or_default() += 1;
    t.live.errors.fetch_add(1, Ordering::Relaxed);
    if let Some(timeline) = &mut stats.timeline {
        timeline.error(bucket(t.start, done));
    }
    print_first(
        &t.first_errors,
        kind,
        t.start,
        done,
        format_args!("{kind} error: {}", Chain(failure.error())),
    );
}

#[cfg(test)]
mod tests {
    use super::endpoint;

    #[test]
    fn the_endpoint_shows_no_credentials() {
        assert_eq!(
            endpoint("postgres://postgres:s3cret@127.0.0.1:9999/postgres"),
            "127.0.0.1:9999/postgres"
        );
        assert_eq!(
            endpoint("postgresql://u:p%40ss@db.example:5432/app?sslmode=require"),
            "db.example:5432/app"
        );
        assert_eq!(endpoint("postgres://u@[::1]:6432"), "[::1]:6432");
        assert_eq!(
            endpoint("postgres://127.0.0.1:6432/db"),
            "127.0.0.1:6432/db"
        );
        let conninfo = endpoint("host=127.0.0.1 port=9999 password=s3cret");
        assert!(!conninfo.contains("s3cret"), "{conninfo}");
    }
}
