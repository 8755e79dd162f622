//! Read and write latency over a delayed network: p50 and p99 of
//! `ReplicaSet::read`, `transaction` and `write` against plain diesel-async
//! deadpool pools when every packet between the
//! client and the servers takes `BENCH_DELAY_US` microseconds (default 500)
//! each way, so that a round trip costs about a millisecond, as between
//! hosts of one data centre, rather than the tens of microseconds of
//! loopback.
//!
//! One primary and one streaming replica of a throwaway `diesel_replica_testkit`
//! cluster, each behind a `diesel_replica_testkit::DelayProxy` (a TCP proxy that
//! holds every chunk for the delay, each way; the servers' own replication
//! does not go through it). With `BENCH_DELAY_US=0` there is no proxy: the
//! clients connect to the servers on loopback directly.
//!
//! Contenders, all running `SELECT payload FROM bench_items WHERE id = $1`
//! with a random id out of 10 000 rows on the replica, all with the same
//! server settings (`statement_timeout`, ours by default):
//!
//! - **ours**: `ReplicaSet::read`: the query in a `READ ONLY` transaction
//!   whose `BEGIN` goes ahead of it, in its round trip, on a session that
//!   is read-only from its start; a `ROLLBACK` follows the call (the whole
//!   session reset only when the body touched the session), and nobody
//!   waits for it;
//! - **B**: a plain pool with `Fast` recycling (no check before reuse)
//!   running the bare query, no transaction: the least a read can cost
//!   (read_path's B pays a `SELECT 1` before reuse; this one does not);
//! - **F**: the same `Fast` pool running the query in
//!   `build_transaction().read_only().run(..)`: `BEGIN`, the query,
//!   `COMMIT`, the round trips of ours with no routing;
//! - **A**: a plain pool with diesel-async's default recycling (`Verified`:
//!   a `SELECT 1` before each reuse) running that transaction, what a plain
//!   pool gives as diesel-async sets it up.
//!
//! And writes, on the primary, all running `UPDATE bench_items SET payload
//! = payload WHERE id = $1` (a random id):
//!
//! - **ours: transaction**: `ReplicaSet::transaction`, what `#[write]`
//!   runs: its `BEGIN` goes ahead of the statement, in its round trip, then
//!   the `COMMIT`, and the reset after the call, unawaited;
//! - **W**: a plain `Fast` pool running it in `build_transaction().run(..)`:
//!   `BEGIN`, the statement, `COMMIT`;
//! - **ours: write**: `ReplicaSet::write`, autocommit: the statement alone;
//! - **V**: the plain `Fast` pool running the bare statement.
//!
//! And **ours: tenant's read**, `db.tenant(..).read(..)`: ours with the
//! tenant's scope set in the read's transaction (its schema holds its own
//! copy of the table), against ours untenanted.
//!
//! The query is a `diesel::sql_query`, as in read_path, which diesel never
//! keeps as a prepared statement: each run prepares it (one round trip)
//! and then executes it (another). So a read costs ours 2 round trips, B 2,
//! F 4 and A 5, and a write ours 3 in a transaction and 2 alone, W 4 and
//! V 2. `BENCH_QUERY=dsl` runs the read's SQL built with diesel's query
//! builder instead (`bench_items::table.find(id).select(payload)`), which
//! the connection prepares once and then executes in one round trip: ours
//! 1, B 1, F 3, A 4.
//!
//! For each client count of `BENCH_CLIENTS` (default `1,32`), every pool
//! holds that many connections and gets one untimed second of load; then
//! `BENCH_ROUNDS` rounds (default 4) run each contender for `BENCH_SECS`
//! seconds (default 2) with that many tokio tasks looping on the query, in
//! alternating order (ours, B, F, A, then the writes / backwards / ...) so that drift on
//! a shared machine hits all alike. Latencies go to per-task HDR histograms,
//! merged. CPU time per op is reported too (Linux schedstat, in µs): the
//! client's (every thread of this process but the proxies'), the proxies'
//! (the simulated network's own cost, which shares the machine's cores
//! with the client and the servers), and the servers' (every process of
//! the two postmasters; local backend only). Prints a table
//! and one JSON line with the ratios ours/B of p50 and of throughput at each
//! client count, and the p50 gap between ours and B in round trips as
//! measured: half the p50 gap between F and B, which differ by exactly two
//! round trips of no work (`BEGIN`, `COMMIT`); and the ratios ours/W and
//! ours/V of throughput and p50 for writes.
//!
//! ```text
//! cargo bench --bench latency
//! BENCH_DELAY_US=0 cargo bench --bench latency
//! BENCH_QUERY=dsl cargo bench --bench latency
//! BENCH_DELAY_US=0 BENCH_POOLER=pgbouncer cargo bench --bench latency
//! BENCH_DELAY_US=500 BENCH_CLIENTS=1,8,32 BENCH_SECS=3 BENCH_ROUNDS=5 cargo bench --bench latency
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use diesel::prelude::QueryableByName;
use diesel::sql_types::{Integer, Text};
use diesel::{QueryDsl, QueryResult};
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_replica::{Config, Pooler, ReplicaSet, Tenant};
use diesel_replica_testkit::{Cluster, NodeId, PgBouncer, Rng};
use hdrhistogram::Histogram;

const ROWS: i32 = 10_000;
const QUERY: &str = "SELECT payload FROM bench_items WHERE id = $1";
/// The one write the write contenders run, on the primary.
const UPDATE: &str = "UPDATE bench_items SET payload = payload WHERE id = $1";
/// Contenders, in the order of a round (the next round runs them backwards).
const NAMES: [&str; 9] = [
    "ours: ReplicaSet::read",
    "B: plain Fast pool, bare query",
    "F: plain Fast pool, READ ONLY tx",
    "A: plain pool, READ ONLY tx",
    "ours: transaction (#[write])",
    "W: plain Fast pool, transaction",
    "ours: write, autocommit",
    "V: plain Fast pool, bare update",
    "ours: tenant's read",
];
/// Keys of the contenders in the JSON line, as [`NAMES`].
const KEYS: [&str; 9] = [
    "ours",
    "b_plain_fast_pool_bare_query",
    "f_plain_fast_pool_read_only_tx",
    "a_plain_pool_read_only_tx",
    "ours_transaction",
    "w_plain_fast_pool_transaction",
    "ours_write",
    "v_plain_fast_pool_bare_update",
    "ours_tenant",
];
/// Round trips per operation around the statement's own (one for a
/// prepared statement, two for `sql_query`), as [`NAMES`]: ours sends its
/// `BEGIN` ahead of the body, in its first round trip, and its session
/// reset after the call, waited for by nobody.
const ROUND_TRIPS_AROUND: [u32; 9] = [0, 0, 2, 3, 1, 2, 0, 0, 0];
/// Whether the query is built with the query builder (`BENCH_QUERY=dsl`)
/// rather than `sql_query`.
static DSL: AtomicBool = AtomicBool::new(false);

diesel::table! {
    /// The bench's table, for the query builder.
    bench_items (id) {
        /// 1 to [`ROWS`].
        id -> Integer,
        /// `md5(id::text)`.
        payload -> Text,
    }
}

/// Indices of the contenders in [`NAMES`].
const OURS: usize = 0;
const B: usize = 1;
const F: usize = 2;
const OURS_TRANSACTION: usize = 4;
const W: usize = 5;
const OURS_WRITE: usize = 6;
const V: usize = 7;
const OURS_TENANT: usize = 8;

/// The tenant of the tenant's read: its schema holds its own copy of the
/// table, which the read's scope finds first.
const TENANT: &str = "bench_tenant";

/// The postmasters of the bench's servers, whose processes' CPU time is
/// the servers' (see [`server_cpu_ns`]).
static POSTMASTERS: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();

#[derive(QueryableByName)]
struct Item {
    #[diesel(sql_type = Text)]
    payload: String,
}

/// The one query every contender runs: [`QUERY`] as a `sql_query`, or
/// the same SQL from the query builder with `BENCH_QUERY=dsl`.
async fn point_read(conn: &mut AsyncPgConnection, id: i32) -> QueryResult<Item> {
    // Spelled out: `RunQueryDsl::load` would be found first.
    if AtomicBool::load(&DSL, Ordering::Relaxed) {
        let payload = bench_items::table
            .find(id)
            .select(bench_items::payload)
            .get_result(conn)
            .await?;
        return Ok(Item { payload });
    }
    diesel::sql_query(QUERY)
        .bind::<Integer, _>(id)
        .get_result(conn)
        .await
}

/// The one write: [`UPDATE`] as a `sql_query`.
async fn point_write(conn: &mut AsyncPgConnection, id: i32) -> QueryResult<usize> {
    diesel::sql_query(UPDATE)
        .bind::<Integer, _>(id)
        .execute(conn)
        .await
}

#[derive(Clone)]
enum Contender {
    Ours(ReplicaSet),
    PlainBare(Pool<AsyncPgConnection>),
    PlainTx(Pool<AsyncPgConnection>),
    OursTransaction(ReplicaSet),
    PlainWriteTx(Pool<AsyncPgConnection>),
    OursWrite(ReplicaSet),
    PlainWriteBare(Pool<AsyncPgConnection>),
    OursTenant(ReplicaSet, Arc<Tenant>),
}

impl Contender {
    /// One operation: a read's payload length, or the rows a write changed.
    async fn op(&self, id: i32) -> usize {
        match self {
            Self::OursTransaction(db) => db
                .transaction(async move |conn| point_write(conn, id).await)
                .await
                .expect("ours: transaction"),
            Self::PlainWriteTx(pool) => {
                let mut conn = pool.get().await.expect("plain: checkout");
                conn.build_transaction()
                    .run(async move |conn| point_write(conn, id).await)
                    .await
                    .expect("plain: transaction")
            }
            Self::OursWrite(db) => db
                .write(async move |conn| point_write(conn, id).await)
                .await
                .expect("ours: write"),
            Self::PlainWriteBare(pool) => {
                let mut conn = pool.get().await.expect("plain: checkout");
                point_write(&mut conn, id).await.expect("plain: write")
            }
            _ => self.read(id).await.len(),
        }
    }

    async fn read(&self, id: i32) -> String {
        let item = match self {
            Self::Ours(db) => db
                .read(async move |conn| point_read(conn, id).await)
                .await
                .expect("ours: read"),
            Self::OursTenant(db, tenant) => db
                .tenant(tenant)
                .read(async move |conn| point_read(conn, id).await)
                .await
                .expect("ours: tenant's read"),
            Self::PlainBare(pool) => {
                let mut conn = pool.get().await.expect("plain: checkout");
                point_read(&mut conn, id).await.expect("plain: read")
            }
            Self::PlainTx(pool) => {
                let mut conn = pool.get().await.expect("plain: checkout");
                conn.build_transaction()
                    .read_only()
                    .run(async move |conn| point_read(conn, id).await)
                    .await
                    .expect("plain: read")
            }
            _ => unreachable!("writes are not reads"),
        };
        item.payload
    }
}

/// What one or more fixed-duration runs of one contender measured.
struct Run {
    ops: u64,
    secs: f64,
    /// CPU time of this process less the proxies, in nanoseconds.
    cpu_ns: u64,
    /// CPU time of the proxies' threads, in nanoseconds.
    proxy_cpu_ns: u64,
    /// CPU time of the servers' processes, in nanoseconds.
    server_cpu_ns: u64,
    /// Latencies in nanoseconds.
    hist: Histogram<u64>,
}

impl Run {
    fn empty() -> Self {
        Self {
            ops: 0,
            secs: 0.0,
            cpu_ns: 0,
            proxy_cpu_ns: 0,
            server_cpu_ns: 0,
            hist: histogram(),
        }
    }

    fn add(&mut self, other: &Run) {
        self.ops += other.ops;
        self.secs += other.secs;
        self.cpu_ns += other.cpu_ns;
        self.proxy_cpu_ns += other.proxy_cpu_ns;
        self.server_cpu_ns += other.server_cpu_ns;
        self.hist.add(&other.hist).expect("equal bounds");
    }

    fn rate(&self) -> f64 {
        self.ops as f64 / self.secs
    }

    /// The latency at quantile `q`, in microseconds.
    fn micros(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    fn cpu_us_per_op(&self) -> f64 {
        self.cpu_ns as f64 / self.ops as f64 / 1000.0
    }

    fn proxy_cpu_us_per_op(&self) -> f64 {
        self.proxy_cpu_ns as f64 / self.ops as f64 / 1000.0
    }

    fn server_cpu_us_per_op(&self) -> f64 {
        self.server_cpu_ns as f64 / self.ops as f64 / 1000.0
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "ops": self.ops,
            "secs": self.secs,
            "ops_per_sec": self.rate(),
            "p50_us": self.micros(0.5),
            "p99_us": self.micros(0.99),
            "client_cpu_us_per_op": self.cpu_us_per_op(),
            "proxy_cpu_us_per_op": self.proxy_cpu_us_per_op(),
            "server_cpu_us_per_op": self.server_cpu_us_per_op(),
        })
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// CPU time used so far by this process's threads: the client's (every
/// thread but the delay proxies'), and the delay proxies' (threads named
/// `delay-proxy-PORT`), in nanoseconds, from Linux schedstat (zeros
/// elsewhere).
fn cpu_ns() -> (u64, u64) {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return (0, 0);
    };
    let mut client = 0;
    let mut proxies = 0;
    for task in tasks.flatten() {
        let path = task.path();
        let Ok(stat) = std::fs::read_to_string(path.join("schedstat")) else {
            continue;
        };
        let Some(ns) = stat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if name.starts_with("delay-proxy") {
            proxies += ns;
        } else {
            client += ns;
        }
    }
    (client, proxies)
}

/// CPU time used so far by the servers: every process whose parent is one
/// of [`POSTMASTERS`] (backends, walsender, startup, checkpointer, ...),
/// and the postmasters, in nanoseconds, from Linux schedstat (zero
/// elsewhere, and for a Docker backend's servers, whose processes are not
/// children of the PIDs seen here). A process that ended during a run
/// takes its time with it: the bench's connections live through it.
fn server_cpu_ns() -> u64 {
    let postmasters = POSTMASTERS.get().map_or(&[][..], Vec::as_slice);
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut total = 0;
    for process in processes.flatten() {
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let path = process.path();
        // `pid (comm) state ppid ...`: comm may hold spaces and parentheses.
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if !postmasters.contains(&pid) && !ppid.is_some_and(|p| postmasters.contains(&p)) {
            continue;
        }
        total += std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// `clients` tasks loop on the query for `secs`, each with its own random
/// ids (a [`Rng`] seeded by `seed` and the task index).
async fn run(contender: &Contender, clients: usize, secs: f64, seed: u64) -> Run {
    let (cpu, proxy_cpu) = cpu_ns();
    let server_cpu = server_cpu_ns();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..clients as u64)
        .map(|task| {
            let contender = contender.clone();
            let mut rng = Rng::new(seed.wrapping_mul(0x1000_0000_01b3) ^ task);
            tokio::spawn(async move {
                let mut hist = histogram();
                let mut ops = 0u64;
                while Instant::now() < deadline {
                    let id = rng.below(ROWS as u64) as i32 + 1;
                    let began = Instant::now();
                    std::hint::black_box(contender.op(id).await);
                    hist.saturating_record(began.elapsed().as_nanos() as u64);
                    ops += 1;
                }
                (ops, hist)
            })
        })
        .collect();
    let mut total = Run::empty();
    for task in tasks {
        let (ops, hist) = task.await.expect("a benchmark task panicked");
        total.ops += ops;
        total.hist.add(hist).expect("equal bounds");
    }
    total.secs = start.elapsed().as_secs_f64();
    let (cpu_after, proxy_cpu_after) = cpu_ns();
    total.cpu_ns = cpu_after.saturating_sub(cpu);
    total.proxy_cpu_ns = proxy_cpu_after.saturating_sub(proxy_cpu);
    total.server_cpu_ns = server_cpu_ns().saturating_sub(server_cpu);
    total
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a valid number")),
        Err(_) => default,
    }
}

/// The client counts of `BENCH_CLIENTS` (comma-separated; default `1,32`).
fn client_counts() -> Vec<usize> {
    let text = std::env::var("BENCH_CLIENTS").unwrap_or_else(|_| "1,32".into());
    text.split(',')
        .map(|n| {
            n.trim()
                .parse()
                .ok()
                .filter(|&n: &usize| n > 0)
                .unwrap_or_else(|| panic!("BENCH_CLIENTS={text}: not a list of positive counts"))
        })
        .collect()
}

/// A plain pool of `size` connections to `url`.
fn plain_pool(
    url: &str,
    size: usize,
    recycling: RecyclingMethod<AsyncPgConnection>,
) -> Pool<AsyncPgConnection> {
    let mut config = ManagerConfig::default();
    config.recycling_method = recycling;
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, config);
    Pool::builder(manager)
        .max_size(size)
        .build()
        .expect("a plain pool")
}

/// What one client count measured: totals per contender, and per round the
/// ratios ours/B of throughput and of p50, and ours' transaction over W's
/// throughput.
struct Level {
    clients: usize,
    totals: Vec<Run>,
    round_rate_ratios: Vec<f64>,
    round_p50_ratios: Vec<f64>,
    round_transaction_ratios: Vec<f64>,
    round_tenant_ratios: Vec<f64>,
}

/// The delay proxy needs Linux (`timerfd`).
#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("benches/latency.rs runs on Linux only: its delay proxy uses timerfd");
}

#[cfg(target_os = "linux")]
fn main() {
    let delay_us: u64 = env_or("BENCH_DELAY_US", 500);
    let secs: f64 = env_or("BENCH_SECS", 2.0);
    let rounds: usize = env_or("BENCH_ROUNDS", 4);
    let counts = client_counts();
    let dsl = match std::env::var("BENCH_QUERY").as_deref() {
        Ok("dsl") => true,
        Ok("sql") | Err(_) => false,
        Ok(other) => panic!("BENCH_QUERY={other}: expected sql or dsl"),
    };
    DSL.store(dsl, Ordering::Relaxed);
    let delay = Duration::from_micros(delay_us);
    let behind_pooler = match std::env::var("BENCH_POOLER").as_deref() {
        Ok("pgbouncer") => true,
        Ok("none") | Err(_) => false,
        Ok(other) => panic!("BENCH_POOLER={other}: expected none or pgbouncer"),
    };
    assert!(
        !behind_pooler || (delay_us == 0 && !dsl),
        "BENCH_POOLER=pgbouncer runs on loopback with sql_query: set BENCH_DELAY_US=0"
    );

    let cluster = Cluster::start(1).expect("start the cluster");
    cluster
        .psql(
            NodeId::Primary,
            &format!(
                "CREATE TABLE bench_items (id int PRIMARY KEY, payload text NOT NULL); \
                 INSERT INTO bench_items SELECT g, md5(g::text) FROM generate_series(1, {ROWS}) g"
            ),
        )
        .expect("seed the table");
    cluster
        .psql(
            NodeId::Primary,
            &format!(
                "CREATE SCHEMA {TENANT}; CREATE TABLE {TENANT}.bench_items \
                 (LIKE public.bench_items INCLUDING ALL); \
                 INSERT INTO {TENANT}.bench_items SELECT * FROM public.bench_items"
            ),
        )
        .expect("seed the tenant's table");
    for table in ["bench_items", &format!("{TENANT}.bench_items")] {
        cluster
            .psql(NodeId::Primary, &format!("VACUUM ANALYZE {table}"))
            .expect("vacuum the table");
    }
    let postmasters = [NodeId::Primary, cluster.replica_ids()[0]]
        .map(|id| cluster.postmaster_pid(id).expect("the postmaster's PID"));
    POSTMASTERS.get_or_init(|| postmasters.to_vec());
    let tenant = Arc::new(Tenant::new(TENANT).expect("a valid tenant"));
    cluster.wait_for_replication().expect("replication");
    // The network: a delay proxy in front of each node, or loopback.
    let delayed = (delay_us > 0).then(|| cluster.delayed(delay).expect("the delay proxies"));
    let (writer_url, replica_url) = match &delayed {
        Some(nodes) => (
            nodes.writer_url().to_owned(),
            nodes.replica_urls()[0].clone(),
        ),
        None => (cluster.writer_url(), cluster.replica_urls()[0].clone()),
    };
    let load_config = |clients: usize| match &delayed {
        Some(nodes) => nodes.load_config(clients),
        None => cluster.load_config(clients),
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let levels: Vec<Level> = runtime.block_on(async {
        let mut levels = Vec::new();
        for &clients in &counts {
            // Behind PgBouncer: one in front of each node, with a server
            // connection per client, and every contender through them.
            let poolers = behind_pooler.then(|| {
                [cluster.primary(), cluster.replicas()[0].clone()]
                    .map(|node| PgBouncer::start(node.port(), clients).expect("PgBouncer"))
            });
            let (writer_url, replica_url) = match &poolers {
                Some([writer, replica]) => (writer.url(), replica.url()),
                None => (writer_url.clone(), replica_url.clone()),
            };
            let mut config = load_config(clients);
            if poolers.is_some() {
                let mut behind = Config::new(&writer_url)
                    .and_then(|c| c.with_replica(&replica_url))
                    .expect("the poolers' URLs");
                behind.writer_pool = config.writer_pool.clone();
                behind.replica_pool = config.replica_pool.clone();
                behind.pooler = Pooler::Transaction;
                config = behind;
            }
            let timeout_ms = config
                .replica_pool
                .statement_timeout
                .map_or(0, |t| t.as_millis());
            let db = ReplicaSet::connect(config).await.expect("connect");
            // The same server settings as ours (a pooler refuses options;
            // behind one, each of ours sets its timeout per transaction).
            let options = match behind_pooler {
                false => format!("?options=-c%20statement_timeout%3D{timeout_ms}"),
                true => String::new(),
            };
            let plain_url = format!("{replica_url}{options}");
            let fast = plain_pool(&plain_url, clients, RecyclingMethod::Fast);
            let verified = plain_pool(&plain_url, clients, RecyclingMethod::Verified);
            let writer = plain_pool(
                &format!("{writer_url}{options}"),
                clients,
                RecyclingMethod::Fast,
            );
            // Behind PgBouncer 1.18 a plain pool's statement, prepared in
            // one exchange and run in the next, needs a transaction to stay
            // on one server connection: B and V are then F's and W's forms.
            let (bare_read, bare_write) = match behind_pooler {
                false => (
                    Contender::PlainBare(fast.clone()),
                    Contender::PlainWriteBare(writer.clone()),
                ),
                true => (
                    Contender::PlainTx(fast.clone()),
                    Contender::PlainWriteTx(writer.clone()),
                ),
            };
            let contenders = [
                Contender::Ours(db.clone()),
                bare_read,
                Contender::PlainTx(fast),
                Contender::PlainTx(verified),
                Contender::OursTransaction(db.clone()),
                Contender::PlainWriteTx(writer.clone()),
                Contender::OursWrite(db.clone()),
                bare_write,
                Contender::OursTenant(db, Arc::clone(&tenant)),
            ];
            for contender in &contenders {
                run(contender, clients, 1.0, 0).await;
            }
            let mut level = Level {
                clients,
                totals: (0..NAMES.len()).map(|_| Run::empty()).collect(),
                round_rate_ratios: Vec::new(),
                round_p50_ratios: Vec::new(),
                round_transaction_ratios: Vec::new(),
                round_tenant_ratios: Vec::new(),
            };
            for round in 0..rounds {
                let mut order: [usize; NAMES.len()] = std::array::from_fn(|i| i);
                if round % 2 == 1 {
                    order.reverse();
                }
                let mut runs: [Option<Run>; NAMES.len()] = Default::default();
                for i in order {
                    let seed = (round * NAMES.len() + i + 1) as u64;
                    let r = run(&contenders[i], clients, secs, seed).await;
                    level.totals[i].add(&r);
                    runs[i] = Some(r);
                }
                let runs = runs.map(|r| r.expect("every contender ran"));
                let rate_ratio = runs[OURS].rate() / runs[B].rate();
                let p50_ratio = runs[OURS].micros(0.5) / runs[B].micros(0.5);
                println!(
                    "{clients} clients, round {}: {}; ours/B throughput {rate_ratio:.3}, \
                     p50 {p50_ratio:.3}",
                    round + 1,
                    runs.iter()
                        .zip(KEYS)
                        .map(|(r, key)| {
                            let short = key.split('_').next().unwrap_or(key);
                            format!("{short} {:.0} ops/s p50 {:.0} µs", r.rate(), r.micros(0.5))
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                level.round_rate_ratios.push(rate_ratio);
                level.round_p50_ratios.push(p50_ratio);
                level
                    .round_transaction_ratios
                    .push(runs[OURS_TRANSACTION].rate() / runs[W].rate());
                level
                    .round_tenant_ratios
                    .push(runs[OURS_TENANT].rate() / runs[OURS].rate());
            }
            levels.push(level);
        }
        levels
    });
    drop(runtime);
    report(delay_us, secs, rounds, dsl, &levels);
    drop(delayed);
    drop(cluster);
}

/// `min..max, median m` of per-round ratios.
fn spread(ratios: &[f64]) -> String {
    let mut sorted = ratios.to_vec();
    sorted.sort_by(f64::total_cmp);
    format!(
        "per round {:.3}..{:.3}, median {:.3}",
        sorted[0],
        sorted[sorted.len() - 1],
        sorted[sorted.len() / 2]
    )
}

fn report(delay_us: u64, secs: f64, rounds: usize, dsl: bool, levels: &[Level]) {
    let behind_pooler = std::env::var("BENCH_POOLER").as_deref() == Ok("pgbouncer");
    let network = if behind_pooler {
        "loopback through PgBouncer (transaction mode; B and V in transactions)".to_owned()
    } else if delay_us > 0 {
        format!("{delay_us} µs each way through delay proxies")
    } else {
        "loopback, no proxy".to_owned()
    };
    let (query, query_round_trips) = if dsl {
        ("query builder, prepared once", 1)
    } else {
        ("sql_query, prepared each time", 2)
    };
    println!(
        "\nlatency: 1 replica, {network}, {query}, {rounds} rounds x {secs} s per contender, \
         2 tokio workers; CPU in µs per op"
    );
    println!(
        "{:>7} {:<34} {:>3} {:>8} {:>8} {:>9} {:>9} {:>11} {:>10} {:>10}",
        "clients",
        "contender",
        "RTs",
        "ops",
        "ops/s",
        "p50 µs",
        "p99 µs",
        "client CPU",
        "proxy CPU",
        "server CPU"
    );
    let mut json_levels = Vec::new();
    let mut json = serde_json::json!({
        "bench": "latency",
        "delay_us": delay_us,
        "secs_per_run": secs,
        "rounds": rounds,
        "query": if dsl { "dsl" } else { "sql" },
    });
    for level in levels {
        let clients = level.clients;
        for (i, r) in level.totals.iter().enumerate() {
            println!(
                "{clients:>7} {:<34} {:>3} {:>8} {:>8.0} {:>9.0} {:>9.0} {:>11.1} {:>10.1} {:>10.1}",
                NAMES[i],
                ROUND_TRIPS_AROUND[i] + query_round_trips,
                r.ops,
                r.rate(),
                r.micros(0.5),
                r.micros(0.99),
                r.cpu_us_per_op(),
                r.proxy_cpu_us_per_op(),
                r.server_cpu_us_per_op()
            );
        }
        let ours = &level.totals[OURS];
        let b = &level.totals[B];
        let f = &level.totals[F];
        let p50_ratio = ours.micros(0.5) / b.micros(0.5);
        let p99_ratio = ours.micros(0.99) / b.micros(0.99);
        let rate_ratio = ours.rate() / b.rate();
        let p50_gap_us = ours.micros(0.5) - b.micros(0.5);
        println!(
            "{clients:>7} ours/B: p50 {p50_ratio:.3} ({}), p99 {p99_ratio:.3}, throughput \
             {rate_ratio:.3} ({}); ours/F: p50 {:.3}, throughput {:.3}",
            spread(&level.round_p50_ratios),
            spread(&level.round_rate_ratios),
            ours.micros(0.5) / f.micros(0.5),
            ours.rate() / f.rate(),
        );
        // One round trip as measured: F is B plus two (`BEGIN`, `COMMIT`).
        let round_trip_us = (f.micros(0.5) - b.micros(0.5)) / 2.0;
        println!(
            "{clients:>7} ours p50 - B p50 = {p50_gap_us:.0} µs = {:.2} round trips as measured \
             ((F p50 - B p50) / 2 = {round_trip_us:.0} µs){}",
            p50_gap_us / round_trip_us,
            if delay_us > 0 {
                format!(
                    ", {:.2} of the nominal {} µs",
                    p50_gap_us / (2 * delay_us) as f64,
                    2 * delay_us
                )
            } else {
                String::new()
            }
        );
        let (ours_tx, w) = (&level.totals[OURS_TRANSACTION], &level.totals[W]);
        let (ours_write, v) = (&level.totals[OURS_WRITE], &level.totals[V]);
        let tx_ratio = ours_tx.rate() / w.rate();
        let write_ratio = ours_write.rate() / v.rate();
        println!(
            "{clients:>7} ours transaction/W: throughput {tx_ratio:.3} ({}), p50 {:.3}; \
             ours write/V: throughput {write_ratio:.3}, p50 {:.3}",
            spread(&level.round_transaction_ratios),
            ours_tx.micros(0.5) / w.micros(0.5),
            ours_write.micros(0.5) / v.micros(0.5),
        );
        let tenant_ratio = level.totals[OURS_TENANT].rate() / ours.rate();
        println!(
            "{clients:>7} ours tenant's read/ours read: throughput {tenant_ratio:.3} ({}), p50 {:.3}",
            spread(&level.round_tenant_ratios),
            level.totals[OURS_TENANT].micros(0.5) / ours.micros(0.5),
        );
        let mut entry = serde_json::json!({
            "clients": clients,
            "ratio_ours_tenant_over_ours_throughput": tenant_ratio,
            "ratio_ours_over_b_p50": p50_ratio,
            "ratio_ours_over_b_p99": p99_ratio,
            "ratio_ours_over_b_throughput": rate_ratio,
            "ratio_ours_over_f_p50": ours.micros(0.5) / f.micros(0.5),
            "ratio_ours_over_f_throughput": ours.rate() / f.rate(),
            "p50_gap_ours_minus_b_us": p50_gap_us,
            "round_trip_us_half_f_minus_b_p50": round_trip_us,
            "p50_gap_in_round_trips": p50_gap_us / round_trip_us,
            "round_ratios_ours_over_b_p50": level.round_p50_ratios,
            "round_ratios_ours_over_b_throughput": level.round_rate_ratios,
            "ratio_ours_transaction_over_w_throughput": tx_ratio,
            "ratio_ours_transaction_over_w_p50": ours_tx.micros(0.5) / w.micros(0.5),
            "round_ratios_ours_transaction_over_w_throughput": level.round_transaction_ratios,
            "ratio_ours_write_over_v_throughput": write_ratio,
            "ratio_ours_write_over_v_p50": ours_write.micros(0.5) / v.micros(0.5),
        });
        for (key, r) in KEYS.iter().zip(&level.totals) {
            entry[*key] = r.json();
        }
        json[format!("ratio_ours_over_b_p50_at_{clients}")] = p50_ratio.into();
        json[format!("ratio_ours_over_b_throughput_at_{clients}")] = rate_ratio.into();
        json[format!("ratio_ours_transaction_over_w_throughput_at_{clients}")] = tx_ratio.into();
        json[format!("p50_gap_ours_minus_b_in_round_trips_at_{clients}")] =
            (p50_gap_us / round_trip_us).into();
        json_levels.push(entry);
    }
    json["levels"] = json_levels.into();
    println!("{json}");
}
