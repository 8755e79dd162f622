//! Read path overhead: throughput and latency of `ReplicaSet::read` against
//! plain diesel-async deadpool pools on the same replica, same query, same
//! concurrency, measured in the same run.
//!
//! Contenders, all running `SELECT payload FROM bench_items WHERE id = $1`
//! with a random id out of 10 000 rows, on the one replica of a throwaway
//! `diesel_replica_testkit` cluster, all connected with the same server settings
//! (`statement_timeout`, ours by default):
//!
//! - **ours**: `ReplicaSet::read` (one replica, so every read goes there):
//!   the query alone, on a session read-only from its start; no ping
//!   before reuse; the session reset follows the call, and nobody waits
//!   for it;
//! - **ours+token** (read-your-writes, the common case): the same read
//!   through `db.session(&rw).read(..)`, `rw` a request's session holding
//!   the token of a write made before the clock starts, replicated, and
//!   seen by the lag monitor: the replica is known to hold the write,
//!   so the read should cost no round trip more than **ours** (the ratio
//!   ours+token / ours, target >= 0.97);
//! - **ours+observed** (the cost of observability): **ours** on a second
//!   set whose nodes registered their metrics with a Prometheus recorder
//!   (`metrics-exporter-prometheus`, built, not installed), each task
//!   running under a `tracing` subscriber that records every span (a
//!   registry with a formatting layer writing span closes to a sink); the
//!   ratio ours+observed / ours, target >= 0.97;
//! - **A** (what a plain pool gives, the headline ratio): a
//!   `Pool<AsyncPgConnection>` with diesel-async's default recycling
//!   (`Verified`: a `SELECT 1` before each reuse) running the query in
//!   `build_transaction().read_only().run(..)`;
//! - **B** (for transparency): pool A running the bare query, no
//!   transaction, which shows what the `READ ONLY` transaction costs;
//! - **F** (the cost of the layer): a plain pool with `Fast` recycling (no
//!   check before reuse) running the same transaction: the same round trips
//!   as ours without routing, health tracking, timeouts or retries.
//!
//! Every pool holds `concurrency` connections (ours opens them on connect)
//! and gets one untimed second of load first. Then `BENCH_ROUNDS` rounds run
//! each contender for `BENCH_SECS` seconds with `BENCH_CONCURRENCY` tasks
//! looping on the query, in alternating order (ours, ours+token,
//! ours+observed, A, B, F / F, B, A, ours+observed, ours+token, ours)
//! so that drift on a shared machine hits all alike. Latencies go to
//! per-task HDR histograms, merged. The client's CPU time per op (Linux
//! schedstat, all threads of this process) is reported too: it shows what
//! the routing layer costs on the client, which the noise of a shared machine
//! barely touches. Prints a table and one JSON line.
//!
//! ```text
//! cargo bench --bench read_path
//! BENCH_CONCURRENCY=64 BENCH_SECS=5 BENCH_ROUNDS=7 cargo bench --bench read_path
//! ```

use std::time::{Duration, Instant};

use diesel::QueryResult;
use diesel::prelude::QueryableByName;
use diesel::sql_types::{Integer, Text};
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod, SetupCallback,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_replica::{ReadYourWrites, ReplicaSet, WriteToken};
use diesel_replica_testkit::{Cluster, NodeId, Rng};
use hdrhistogram::Histogram;
use tracing::instrument::WithSubscriber;
use tracing_subscriber::layer::SubscriberExt;

const ROWS: i32 = 10_000;
const QUERY: &str = "SELECT payload FROM bench_items WHERE id = $1";
/// Contenders, in the order of a round (the next round runs them backwards).
const NAMES: [&str; 6] = [
    "ours: ReplicaSet::read",
    "ours+token: session(&rw).read",
    "ours+observed: spans, metrics",
    "A: plain pool, READ ONLY tx",
    "B: plain pool, bare query",
    "F: plain Fast pool, READ ONLY tx",
];

/// Indices of the contenders in [`NAMES`], the rates and the totals.
const OURS: usize = 0;
const OURS_TOKEN: usize = 1;
const OURS_OBSERVED: usize = 2;
const A: usize = 3;
const B: usize = 4;
const F: usize = 5;

/// Per-round throughput ratios.
#[derive(Default)]
struct Rounds {
    ours_over_a: Vec<f64>,
    token_over_ours: Vec<f64>,
    observed_over_ours: Vec<f64>,
}

#[derive(QueryableByName)]
struct Item {
    #[diesel(sql_type = Text)]
    payload: String,
}

/// The one query every contender runs.
async fn point_read(conn: &mut AsyncPgConnection, id: i32) -> QueryResult<Item> {
    diesel::sql_query(QUERY)
        .bind::<Integer, _>(id)
        .get_result(conn)
        .await
}

#[derive(Clone)]
enum Contender {
    Ours(ReplicaSet),
    /// Reads in a session after the write of the token.
    OursToken(ReplicaSet, WriteToken),
    /// Reads on a set with a metrics recorder, under a subscriber that
    /// records spans.
    OursObserved(ReplicaSet, tracing::Dispatch),
    PlainTx(Pool<AsyncPgConnection>),
    PlainBare(Pool<AsyncPgConnection>),
}

impl Contender {
    /// The subscriber its tasks run under, if any.
    fn subscriber(&self) -> Option<tracing::Dispatch> {
        match self {
            Self::OursObserved(_, dispatch) => Some(dispatch.clone()),
            _ => None,
        }
    }

    async fn read(&self, id: i32) -> String {
        let item = match self {
            Self::Ours(db) | Self::OursObserved(db, _) => db
                .read(async move |conn| point_read(conn, id).await)
                .await
                .expect("ours: read"),
            Self::OursToken(db, token) => {
                // A request's session, as from the token a client sent
                // back (`ReadYourWrites::resume` less the parsing).
                let rw = ReadYourWrites::after(*token);
                db.session(&rw)
                    .read(async move |conn| point_read(conn, id).await)
                    .await
                    .expect("ours+token: read")
            }
            Self::PlainTx(pool) => {
                let mut conn = pool.get().await.expect("A: checkout");
                conn.build_transaction()
                    .read_only()
                    .run(async move |conn| point_read(conn, id).await)
                    .await
                    .expect("A: read")
            }
            Self::PlainBare(pool) => {
                let mut conn = pool.get().await.expect("B: checkout");
                point_read(&mut conn, id).await.expect("B: read")
            }
        };
        item.payload
    }
}

/// What one fixed-duration run of one contender measured.
struct Run {
    ops: u64,
    secs: f64,
    /// CPU time of this process (the client side), in nanoseconds.
    cpu_ns: u64,
    /// Latencies in nanoseconds.
    hist: Histogram<u64>,
}

impl Run {
    fn empty() -> Self {
        Self {
            ops: 0,
            secs: 0.0,
            cpu_ns: 0,
            hist: histogram(),
        }
    }

    fn add(&mut self, other: &Run) {
        self.ops += other.ops;
        self.secs += other.secs;
        self.cpu_ns += other.cpu_ns;
        self.hist.add(&other.hist).expect("equal bounds");
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// The token of a write made through `db` in a session, once the replica
/// has replayed it and the lag monitor (sampling every `lag_interval`) has
/// seen it do so: token reads then find the replica known to hold the
/// write, the common case the bench measures.
async fn token_of_a_replicated_write(db: &ReplicaSet, lag_interval: Duration) -> WriteToken {
    let rw = ReadYourWrites::new();
    db.session(&rw)
        .transaction(async |conn| {
            diesel::sql_query("UPDATE bench_items SET payload = payload WHERE id = 1")
                .execute(conn)
                .await
        })
        .await
        .expect("the set-up write");
    let token = rw.token().expect("a write in a session leaves a token");
    // Two samples after the write, and at least a second.
    let settle = (2 * lag_interval + Duration::from_millis(200)).max(Duration::from_millis(1200));
    let deadline = Instant::now() + Duration::from_secs(10);
    tokio::time::sleep(settle).await;
    loop {
        let status = db.status();
        let replica = &status.replicas[0];
        if replica.lag_bytes == Some(0) && replica.lag == Some(Duration::ZERO) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica did not catch up with the set-up write: {replica:?}"
        );
        tokio::time::sleep(lag_interval).await;
    }
    token
}

/// `concurrency` tasks loop on the query for `secs`, each with its own
/// random ids (a [`Rng`] seeded by `seed` and the task index).
async fn run(contender: &Contender, concurrency: usize, secs: f64, seed: u64) -> Run {
    let cpu = diesel_replica_testkit::process_cpu_ns();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..concurrency as u64)
        .map(|task| {
            let contender = contender.clone();
            let mut rng = Rng::new(seed.wrapping_mul(0x1000_0000_01b3) ^ task);
            let subscriber = contender.subscriber();
            let task = async move {
                let mut hist = histogram();
                let mut ops = 0u64;
                while Instant::now() < deadline {
                    let id = rng.below(ROWS as u64) as i32 + 1;
                    let began = Instant::now();
                    std::hint::black_box(contender.read(id).await);
                    hist.saturating_record(began.elapsed().as_nanos() as u64);
                    ops += 1;
                }
                (ops, hist)
            };
            match subscriber {
                Some(dispatch) => tokio::spawn(task.with_subscriber(dispatch)),
                None => tokio::spawn(task),
            }
        })
        .collect();
    let mut total = Run::empty();
    for task in tasks {
        let (ops, hist) = task.await.expect("a benchmark task panicked");
        total.ops += ops;
        total.hist.add(hist).expect("equal bounds");
    }
    total.secs = start.elapsed().as_secs_f64();
    total.cpu_ns = diesel_replica_testkit::process_cpu_ns() - cpu;
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

fn main() {
    let concurrency: usize = env_or("BENCH_CONCURRENCY", 32);
    let secs: f64 = env_or("BENCH_SECS", 3.0);
    let rounds: usize = env_or("BENCH_ROUNDS", 5);

    // BENCH_TLS=1: a TLS-only cluster, every contender over TLS with the
    // same verification (verify-full against the cluster's CA).
    let tls = env_or("BENCH_TLS", 0u8) == 1;
    let cluster = if tls {
        Cluster::start_tls(1)
    } else {
        Cluster::start(1)
    }
    .expect("start the cluster");
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
        .psql(NodeId::Primary, "VACUUM ANALYZE bench_items")
        .expect("vacuum the table");
    cluster.wait_for_replication().expect("replication");
    let replica_url = &cluster.replica_urls()[0];

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let config = cluster.load_config(concurrency);
        let timeout_ms = config
            .replica_pool
            .statement_timeout
            .map_or(0, |t| t.as_millis());
        let lag_interval = config.consistency.lag_interval;
        let db = ReplicaSet::connect(config).await.expect("connect");
        let token = token_of_a_replicated_write(&db, lag_interval).await;
        // The same server settings as ours: a `statement_timeout` is a
        // setting any production pool would carry, not routing work.
        let plain_url = format!("{replica_url}?options=-c%20statement_timeout%3D{timeout_ms}");
        let mut verified = ManagerConfig::default();
        if let Some(ca) = cluster.ca_cert_path() {
            verified.custom_setup = tls_setup(ca);
        }
        let manager =
            AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(plain_url, verified);
        let pool = Pool::builder(manager)
            .max_size(concurrency)
            .build()
            .expect("plain pool");
        // The same round trips as ours: no check of an idle connection
        // before reuse (ours lets `BEGIN` be the check).
        let mut fast = ManagerConfig::default();
        fast.recycling_method = RecyclingMethod::Fast;
        if let Some(ca) = cluster.ca_cert_path() {
            fast.custom_setup = tls_setup(ca);
        }
        let fast = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
            format!("{replica_url}?options=-c%20statement_timeout%3D{timeout_ms}"),
            fast,
        );
        let fast = Pool::builder(fast)
            .max_size(concurrency)
            .build()
            .expect("plain fast pool");
        let observed = {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
            let config = cluster.load_config(concurrency);
            metrics::with_local_recorder(&recorder, || ReplicaSet::new(config))
                .expect("the observed set")
        };
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::sink)
                .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE),
        );
        let contenders = [
            Contender::Ours(db.clone()),
            Contender::OursToken(db, token),
            Contender::OursObserved(observed, tracing::Dispatch::new(subscriber)),
            Contender::PlainTx(pool.clone()),
            Contender::PlainBare(pool),
            Contender::PlainTx(fast),
        ];

        for contender in &contenders {
            run(contender, concurrency, 1.0, 0).await;
        }

        let mut totals = [(); NAMES.len()].map(|()| Run::empty());
        let mut rounds_seen = Rounds::default();
        for round in 0..rounds {
            let mut order: [usize; NAMES.len()] = std::array::from_fn(|i| i);
            if round % 2 == 1 {
                order.reverse();
            }
            let mut rates = [0.0; NAMES.len()];
            for i in order {
                let seed = (round * NAMES.len() + i + 1) as u64;
                let r = run(&contenders[i], concurrency, secs, seed).await;
                rates[i] = r.ops as f64 / r.secs;
                totals[i].add(&r);
            }
            println!(
                "round {}: ours {:.0} ops/s, ours+token {:.0} ops/s, ours+observed {:.0} ops/s, \
                 A {:.0} ops/s, B {:.0} ops/s, F {:.0} ops/s, ours/A {:.3}, ours/F {:.3}, \
                 ours+token/ours {:.3}, ours+observed/ours {:.3}",
                round + 1,
                rates[OURS],
                rates[OURS_TOKEN],
                rates[OURS_OBSERVED],
                rates[A],
                rates[B],
                rates[F],
                rates[OURS] / rates[A],
                rates[OURS] / rates[F],
                rates[OURS_TOKEN] / rates[OURS],
                rates[OURS_OBSERVED] / rates[OURS]
            );
            rounds_seen
                .observed_over_ours
                .push(rates[OURS_OBSERVED] / rates[OURS]);
            rounds_seen.ours_over_a.push(rates[OURS] / rates[A]);
            rounds_seen
                .token_over_ours
                .push(rates[OURS_TOKEN] / rates[OURS]);
        }
        report(concurrency, secs, rounds, &totals, &rounds_seen);
    });
    drop(runtime);
    drop(cluster);
}

/// A plain pool's connections over TLS, as an application would set them
/// up with tokio-postgres-rustls: the chain and host name checked against
/// `ca`. The URL's own TLS parameters, which tokio-postgres does not know,
/// are dropped.
fn tls_setup(ca: &std::path::Path) -> SetupCallback<AsyncPgConnection> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("the CA file") {
        roots
            .add(cert.expect("a PEM certificate"))
            .expect("a root certificate");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(config);
    Box::new(move |url| {
        let tls = tls.clone();
        let url: String = url
            .split(['?', '&'])
            .filter(|part| !part.starts_with("sslmode=") && !part.starts_with("sslrootcert="))
            .enumerate()
            .map(|(i, part)| match i {
                0 => part.to_owned(),
                1 => format!("?{part}"),
                _ => format!("&{part}"),
            })
            .collect();
        Box::pin(async move {
            let mut config: tokio_postgres::Config = url
                .parse()
                .map_err(|e| diesel::ConnectionError::BadConnection(format!("{e}")))?;
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
            let (client, connection) = config
                .connect(tls)
                .await
                .map_err(|e| diesel::ConnectionError::BadConnection(format!("{e}")))?;
            AsyncPgConnection::try_from_client_and_connection(client, connection).await
        })
    })
}

fn report(concurrency: usize, secs: f64, rounds: usize, totals: &[Run], per_round: &Rounds) {
    let rate = |r: &Run| r.ops as f64 / r.secs;
    let micros = |r: &Run, q: f64| r.hist.value_at_quantile(q) as f64 / 1000.0;
    let cpu_us = |r: &Run| r.cpu_ns as f64 / r.ops as f64 / 1000.0;
    println!(
        "\nread_path: 1 replica, {concurrency} tasks, {rounds} rounds x {secs} s per contender, \
         2 tokio workers"
    );
    println!(
        "{:<30} {:>9} {:>8} {:>9} {:>9} {:>15}",
        "contender", "ops", "ops/s", "p50 µs", "p99 µs", "client CPU µs/op"
    );
    for (name, r) in NAMES.iter().zip(totals) {
        println!(
            "{name:<30} {:>9} {:>8.0} {:>9.1} {:>9.1} {:>15.1}",
            r.ops,
            rate(r),
            micros(r, 0.5),
            micros(r, 0.99),
            cpu_us(r)
        );
    }
    let ours = rate(&totals[OURS]);
    let ours_a = ours / rate(&totals[A]);
    let ours_b = ours / rate(&totals[B]);
    let ours_f = ours / rate(&totals[F]);
    let token_ours = rate(&totals[OURS_TOKEN]) / ours;
    let observed_ours = rate(&totals[OURS_OBSERVED]) / ours;
    let spread = |ratios: &[f64]| {
        let mut sorted = ratios.to_vec();
        sorted.sort_by(f64::total_cmp);
        let (min, max) = (sorted[0], sorted[sorted.len() - 1]);
        let median = sorted[sorted.len() / 2];
        let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
        let line = format!(
            "per round {min:.3}..{max:.3}, median {median:.3}: {}",
            shown.join(" ")
        );
        (median, line)
    };
    let (median_a, rounds_a) = spread(&per_round.ours_over_a);
    let (median_token, rounds_token) = spread(&per_round.token_over_ours);
    let (median_observed, rounds_observed) = spread(&per_round.observed_over_ours);
    println!("ours/A throughput: {ours_a:.3} (target >= 0.97); {rounds_a}");
    println!("ours/B throughput: {ours_b:.3} (B runs no transaction: 2 round trips fewer)");
    println!(
        "ours/F throughput: {ours_f:.3} (F: the same round trips as ours, with no routing, \
         health or retry: the cost of the layer)"
    );
    println!(
        "ours+token/ours throughput: {token_ours:.3} (target >= 0.97: a token the replica is \
         known to hold costs no round trip); {rounds_token}"
    );
    println!(
        "ours+observed/ours throughput: {observed_ours:.3} (target >= 0.97: spans recorded and \
         metrics on); {rounds_observed}"
    );
    let contender = |r: &Run| {
        serde_json::json!({
            "ops": r.ops,
            "secs": r.secs,
            "ops_per_sec": rate(r),
            "p50_us": micros(r, 0.5),
            "p99_us": micros(r, 0.99),
            "client_cpu_us_per_op": cpu_us(r),
        })
    };
    let json = serde_json::json!({
        "bench": "read_path",
        "concurrency": concurrency,
        "secs_per_run": secs,
        "rounds": rounds,
        "ours": contender(&totals[OURS]),
        "ours_token": contender(&totals[OURS_TOKEN]),
        "ours_observed": contender(&totals[OURS_OBSERVED]),
        "baseline_a_plain_pool_read_only_tx": contender(&totals[A]),
        "baseline_b_plain_pool_bare_query": contender(&totals[B]),
        "baseline_f_plain_fast_pool_read_only_tx": contender(&totals[F]),
        "ratio_ours_over_f": ours_f,
        "ratio_ours_over_a": ours_a,
        "ratio_ours_over_b": ours_b,
        "ratio_ours_token_over_ours": token_ours,
        "round_ratios_ours_over_a": per_round.ours_over_a,
        "round_ratio_median_ours_over_a": median_a,
        "round_ratios_ours_token_over_ours": per_round.token_over_ours,
        "round_ratio_median_ours_token_over_ours": median_token,
        "ratio_ours_observed_over_ours": observed_ours,
        "round_ratios_ours_observed_over_ours": per_round.observed_over_ours,
        "round_ratio_median_ours_observed_over_ours": median_observed,
    });
    println!("{json}");
}
