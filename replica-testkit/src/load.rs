//! Helpers for load: a [`Config`] for a [`Cluster`] and its pools, and a
//! small seeded random number generator.

use replica_core::Config;

use crate::Cluster;

impl Cluster {
    /// A configuration with this cluster's current writer and replicas, in
    /// id order, and default pools, from [`Cluster::writer_url`] and
    /// [`Cluster::replica_urls`] (a snapshot: later topology changes do not
    /// reach it).
    ///
    /// # Panics
    /// For a TLS cluster ([`Cluster::start_tls`]) while replica-core refuses
    /// `sslmode=verify-full`, which its URLs carry: TLS support in
    /// replica-core is not there yet, and this then starts to work without a
    /// change here. Never for a plain cluster; a panic there is a bug.
    pub fn config(&self) -> Config {
        config_for(&self.writer_url(), &self.replica_urls())
    }

    /// As [`Cluster::config`], with pools sized for `tasks` concurrent
    /// tasks: the writer's and each replica's pool hold exactly `tasks`
    /// connections, all opened when the replica set connects, so that the
    /// tasks neither queue for a connection nor wait for one to open.
    pub fn load_config(&self, tasks: usize) -> Config {
        sized_for(self.config(), tasks)
    }
}

/// A configuration with these URLs and default pools.
///
/// # Panics
/// If a URL is not valid for a `Config` (see [`Cluster::config`]).
pub(crate) fn config_for(writer_url: &str, replica_urls: &[String]) -> Config {
    Config::new(writer_url)
        .and_then(|config| {
            replica_urls
                .iter()
                .try_fold(config, |config, url| config.with_replica(url))
        })
        .unwrap_or_else(|e| panic!("the cluster's own URLs are not a valid config: {e}"))
}

/// `config` with its pools sized for `tasks` (see [`Cluster::load_config`]).
pub(crate) fn sized_for(mut config: Config, tasks: usize) -> Config {
    for pool in [&mut config.writer_pool, &mut config.replica_pool] {
        pool.max_size = tasks;
        pool.warm_up = tasks;
    }
    config
}

/// A seeded pseudo-random number generator (splitmix64): plenty for picking
/// ids and operations in tests and load, reproducible from its seed, and no
/// dependency. Not for anything that needs unpredictability.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose sequence is fixed by `seed`; neighbouring seeds
    /// (such as a seed xor a task index) give unrelated sequences.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n`, up to a negligible modulo bias.
    ///
    /// # Panics
    /// If `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// CPU time used so far by every thread of this process, in nanoseconds
/// (Linux `/proc/self/task/*/schedstat`; 0 where that does not exist): what
/// a benchmark's client costs, which a shared machine's noise barely
/// touches.
pub fn process_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}
