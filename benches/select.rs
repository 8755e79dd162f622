//! Replica selection cost: the time one read spends choosing its replica,
//! per balancing strategy, for 1, 4, 16 and 64 replicas.
//!
//! What is timed is `diesel_replica::__private::pick_reader`, which runs
//! exactly the selection a read runs before it checks a connection out: the
//! strategy of [`Balance`] (`RoundRobin`, `Random`, `LeastInFlight`,
//! `Weighted`, the last with weights `1..=n`) together with the health check
//! of each replica it looks at. Every replica is up, so the cold fallback path
//! (some replica ejected) is not measured.
//!
//! No database is needed: `ReplicaSet::new` builds its pools lazily and
//! opens no connection (nor does it need a tokio runtime: deadpool only
//! records which runtime to use), and selection reads only the set's own
//! atomics (ejected flag, reads in flight, round-robin cursor). The replica
//! URLs point at loopback ports that nothing listens on, and nothing
//! connects.
//!
//! As a same-run baseline, `select/baseline` times a bare
//! `AtomicUsize::fetch_add(1, Relaxed) % n` (a naive round robin, with `n`
//! opaque to the optimizer as the replica count is in the library), so that
//! the figures can be read as ratios on a noisy shared machine.
//!
//! Target: under 200 ns per pick at 16 replicas.
//!
//! ```text
//! cargo bench --bench select
//! ```

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use diesel_replica::{Balance, Config, ReplicaSet};

/// Replica counts measured for each strategy.
const COUNTS: [usize; 4] = [1, 4, 16, 64];

/// The strategies, with the name used in the group (`select/{name}`).
const STRATEGIES: [(&str, Balance); 4] = [
    ("round_robin", Balance::RoundRobin),
    ("random", Balance::Random),
    ("least_in_flight", Balance::LeastInFlight),
    ("weighted", Balance::Weighted),
];

/// A set of `n` replicas balanced by `balance`, built without connecting.
fn replica_set(balance: Balance, n: usize) -> ReplicaSet {
    let mut config = Config::new("postgres://u@127.0.0.1:5432/db").expect("writer URL");
    for i in 1..=n {
        config = config
            .with_replica(&format!("postgres://u@127.0.0.1:{}/db", 6000 + i))
            .expect("replica URL");
    }
    config.balance = balance;
    if balance == Balance::Weighted {
        config.replica_weights = (1..=n).map(|i| i as u32).collect();
    }
    let set = ReplicaSet::new(config).expect("replica set");
    assert_eq!(set.replica_count(), n);
    set
}

fn strategies(c: &mut Criterion) {
    for (name, balance) in STRATEGIES {
        let mut group = c.benchmark_group(format!("select/{name}"));
        for n in COUNTS {
            let set = replica_set(balance, n);
            // Every replica is up: each pick must land on a replica, never
            // on the writer (`usize::MAX`).
            for _ in 0..1_000 {
                let index = diesel_replica::__private::pick_reader(&set);
                assert!(index < n, "{name} with {n} replicas picked {index}");
            }
            group.bench_with_input(BenchmarkId::from_parameter(n), &set, |b, set| {
                b.iter(|| black_box(diesel_replica::__private::pick_reader(black_box(set))));
            });
        }
        group.finish();
    }
}

fn baseline(c: &mut Criterion) {
    let mut group = c.benchmark_group("select/baseline");
    for n in COUNTS {
        let next = AtomicUsize::new(0);
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            // Opaque, as `nodes.len()` is to the balancer: a real division,
            // not a mask for a constant power of two.
            let n = black_box(n);
            b.iter(|| black_box(black_box(&next).fetch_add(1, Ordering::Relaxed) % n));
        });
    }
    group.finish();
}

// Written out rather than with `criterion_group!`, whose generated `pub fn`
// has no doc and would trip the workspace's `missing_docs`.
fn main() {
    // Short settings, so that the whole bench runs in about a minute on a
    // 2-core shared machine; the usual command-line flags still override them.
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
        .configure_from_args();
    baseline(&mut criterion);
    strategies(&mut criterion);
    criterion.final_summary();
}
