//! Metrics through the [`metrics`](https://docs.rs/metrics) facade, with
//! the feature `metrics`, in OpenTelemetry's database vocabulary (the
//! application installs a recorder or an exporter; the library installs
//! none). Without the feature every hook here is empty and compiles away.
//!
//! | metric | kind, unit | labels |
//! |---|---|---|
//! | `db.client.operation.duration` | histogram, s | `db.client.connection.pool.name`, `diesel_replica.route`, `outcome` (`ok`, `error`) |
//! | `db.client.connection.count` | gauge | `db.client.connection.pool.name`, `db.client.connection.state` (`idle`, `used`) |
//! | `db.client.connection.max` | gauge | `db.client.connection.pool.name` |
//! | `db.client.connection.pending_requests` | gauge | `db.client.connection.pool.name` |
//! | `db.client.connection.timeouts` | counter | `db.client.connection.pool.name` |
//! | `db.client.connection.create_time` | histogram, s | `db.client.connection.pool.name` |
//! | `db.client.connection.wait_time` | histogram, s | `db.client.connection.pool.name` |
//! | `diesel_replica.retries` | counter | `db.client.connection.pool.name` (the node that failed) |
//! | `diesel_replica.ejections` | counter | `db.client.connection.pool.name` |
//! | `diesel_replica.writer_fallbacks` | counter | `reason` (`no_replica`, `not_replayed`) |
//! | `diesel_replica.node.up` | gauge, 1 or 0 | `db.client.connection.pool.name`, `diesel_replica.role` |
//! | `diesel_replica.discovery.rejected_rows` | gauge | `rule` (`stale`, `no_server_id`, `no_endpoint`) |
//! | `diesel_replica.discovery.writer_not_in_view` | gauge, 1 or 0 | |
//! | `diesel_replica.discovery.failed` | gauge, 1 or 0 | |
//! | `diesel_replica.discovery.writers` | gauge: nodes answering as the writer when more than one did, else 0 | |
//!
//! The pool name is the node's identity, `host:port/database`. The gauges,
//! and the retry and ejection counters, are brought up to date every
//! second by a task of the set's; the discovery gauges after each survey
//! (see [`DiscoveryStatus`](crate::DiscoveryStatus)); the others as things
//! happen.

use std::time::Duration;

use crate::discovery::DiscoveryStatus;
use crate::route::Route;

/// Why a read went to the writer.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Fallback {
    /// No replica could be tried.
    NoReplica,
    /// No replica had replayed the write the read must see.
    NotReplayed,
}

impl Fallback {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::NoReplica => "no_replica",
            Self::NotReplayed => "not_replayed",
        }
    }
}

/// Times what it is started on, when metrics are on.
#[derive(Clone, Copy)]
pub(crate) struct Stopwatch {
    #[cfg(feature = "metrics")]
    started: std::time::Instant,
}

impl Stopwatch {
    pub(crate) fn start() -> Self {
        Self {
            #[cfg(feature = "metrics")]
            started: std::time::Instant::now(),
        }
    }

    /// The time since the start (zero without metrics).
    pub(crate) fn elapsed(self) -> Duration {
        #[cfg(feature = "metrics")]
        return self.started.elapsed();
        #[cfg(not(feature = "metrics"))]
        Duration::ZERO
    }
}

/// What discovery's last survey could not use.
pub(crate) fn discovery(report: &DiscoveryStatus) {
    #[cfg(feature = "metrics")]
    {
        use crate::aurora::Rule;

        let flag = |on: bool| if on { 1.0 } else { 0.0 };
        for rule in Rule::ALL {
            let rows = report
                .rejected
                .iter()
                .filter(|row| row.rule == rule)
                .count();
            metrics::gauge!("diesel_replica.discovery.rejected_rows", "rule" => rule.as_str())
                .set(rows as f64);
        }
        metrics::gauge!("diesel_replica.discovery.writer_not_in_view")
            .set(flag(report.writer_not_in_view));
        metrics::gauge!("diesel_replica.discovery.failed").set(flag(report.failed.is_some()));
        metrics::gauge!("diesel_replica.discovery.writers").set(report.writers.len() as f64);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = report;
}

/// A read went to the writer.
pub(crate) fn writer_fallback(reason: Fallback) {
    #[cfg(feature = "metrics")]
    metrics::counter!("diesel_replica.writer_fallbacks", "reason" => reason.as_str()).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = reason;
}

/// One node's metric handles, registered once so that recording allocates
/// nothing.
pub(crate) struct NodeMetrics {
    #[cfg(feature = "metrics")]
    handles: Box<on::Handles>,
}

/// What the periodic update reads of a node.
#[cfg_attr(
    not(feature = "metrics"),
    expect(dead_code, reason = "read by the metrics feature only")
)]
pub(crate) struct NodeGauges {
    pub(crate) size: usize,
    pub(crate) available: usize,
    pub(crate) max_size: usize,
    pub(crate) waiting: usize,
    pub(crate) up: bool,
    pub(crate) retried: u64,
    pub(crate) ejections: u64,
}

impl NodeMetrics {
    /// `role` is `writer` or `replica`.
    pub(crate) fn new(node: &str, role: &'static str) -> Self {
        #[cfg(not(feature = "metrics"))]
        let _ = (node, role);
        Self {
            #[cfg(feature = "metrics")]
            handles: Box::new(on::Handles::new(node, role)),
        }
    }

    /// One attempt on the node ended.
    pub(crate) fn operation(&self, route: Route, ok: bool, took: Duration) {
        #[cfg(feature = "metrics")]
        self.handles.duration[route.index()][usize::from(ok)].record(took);
        #[cfg(not(feature = "metrics"))]
        let _ = (route, ok, took);
    }

    /// A checkout waited `took` for a connection.
    pub(crate) fn waited(&self, took: Duration) {
        #[cfg(feature = "metrics")]
        self.handles.wait_time.record(took);
        #[cfg(not(feature = "metrics"))]
        let _ = took;
    }

    /// A checkout gave up waiting.
    pub(crate) fn checkout_timed_out(&self) {
        #[cfg(feature = "metrics")]
        self.handles.timeouts.increment(1);
    }

    /// The periodic update.
    pub(crate) fn update(&self, gauges: &NodeGauges) {
        #[cfg(feature = "metrics")]
        self.handles.update(gauges);
        #[cfg(not(feature = "metrics"))]
        let _ = gauges;
    }
}

/// A connection to `node` was opened in `took`.
pub(crate) fn connection_created(node: &str, took: Duration) {
    #[cfg(feature = "metrics")]
    metrics::histogram!("db.client.connection.create_time", on::POOL => node.to_owned())
        .record(took);
    #[cfg(not(feature = "metrics"))]
    let _ = (node, took);
}

/// Whether the periodic update has anything to do.
pub(crate) const ENABLED: bool = cfg!(feature = "metrics");

#[cfg(feature = "metrics")]
mod on {
    use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

    use super::NodeGauges;
    use crate::route::Route;

    pub(super) const POOL: &str = "db.client.connection.pool.name";

    pub(super) struct Handles {
        /// By route, then outcome (error, ok).
        pub(super) duration: [[Histogram; 2]; Route::ALL.len()],
        pub(super) wait_time: Histogram,
        pub(super) timeouts: Counter,
        idle: Gauge,
        used: Gauge,
        max: Gauge,
        pending: Gauge,
        up: Gauge,
        retries: Counter,
        ejections: Counter,
    }

    impl Handles {
        pub(super) fn new(node: &str, role: &'static str) -> Self {
            let duration = |route: &'static str, outcome: &'static str| {
                histogram!(
                    "db.client.operation.duration",
                    POOL => node.to_owned(),
                    "diesel_replica.route" => route,
                    "outcome" => outcome
                )
            };
            let routes = Route::ALL.map(Route::as_str);
            let count = |state: &'static str| {
                gauge!(
                    "db.client.connection.count",
                    POOL => node.to_owned(),
                    "db.client.connection.state" => state
                )
            };
            Self {
                duration: routes.map(|route| [duration(route, "error"), duration(route, "ok")]),
                wait_time: histogram!("db.client.connection.wait_time", POOL => node.to_owned()),
                timeouts: counter!("db.client.connection.timeouts", POOL => node.to_owned()),
                idle: count("idle"),
                used: count("used"),
                max: gauge!("db.client.connection.max", POOL => node.to_owned()),
                pending: gauge!(
                    "db.client.connection.pending_requests",
                    POOL => node.to_owned()
                ),
                up: gauge!(
                    "diesel_replica.node.up",
                    POOL => node.to_owned(),
                    "diesel_replica.role" => role
                ),
                retries: counter!("diesel_replica.retries", POOL => node.to_owned()),
                ejections: counter!("diesel_replica.ejections", POOL => node.to_owned()),
            }
        }

        pub(super) fn update(&self, gauges: &NodeGauges) {
            // Counts are far below 2^52: exact as f64.
            #[expect(clippy::cast_precision_loss, reason = "connection counts are small")]
            let f = |n: usize| n as f64;
            self.idle.set(f(gauges.available));
            self.used
                .set(f(gauges.size.saturating_sub(gauges.available)));
            self.max.set(f(gauges.max_size));
            self.pending.set(f(gauges.waiting));
            self.up.set(if gauges.up { 1.0 } else { 0.0 });
            self.retries.absolute(gauges.retried);
            self.ejections.absolute(gauges.ejections);
        }
    }
}
