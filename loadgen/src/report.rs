//! What a run reports: per-task counts and latency histograms, merged into
//! the JSON summary; the timeline; the kinds of error.

use std::collections::HashMap;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

use crate::failover::{FailoverClock, WriteTimeline};
use crate::faults::FaultClock;
use crate::nodes::NodeTally;
use crate::own_writes::TokenReads;
use crate::repo::node_key;

/// Largest latency the histograms hold (a minute); larger ones count as it.
pub(crate) const MAX_LATENCY_US: u64 = 60_000_000;
/// Width of one `--timeline` bucket, in milliseconds.
pub(crate) const BUCKET_MS: u64 = 100;

/// Counts kept by one task without sharing, merged at the end.
pub(crate) struct Stats {
    pub(crate) reads_ok: u64,
    pub(crate) reads_err: u64,
    pub(crate) writes_ok: u64,
    pub(crate) writes_err: u64,
    /// `HOST:PORT` to (reads, writes).
    pub(crate) per_node: HashMap<String, (u64, u64)>,
    pub(crate) errors: HashMap<&'static str, u64>,
    /// Successful operations that returned a row of another tenant.
    pub(crate) cross_tenant_violations: u64,
    pub(crate) read_latency_us: Histogram<u64>,
    /// With `--timeline`.
    pub(crate) timeline: Option<Timeline>,
    /// With `--fail-over-at`.
    pub(crate) failover: Option<WriteTimeline>,
    /// With `--read-your-writes`.
    pub(crate) token_reads: Option<TokenReads>,
}

impl Stats {
    /// Counts from zero, with a timeline if asked for, the failover's one
    /// with `failover`, and what the token reads saw with
    /// `read_your_writes`.
    pub(crate) fn new(timeline: bool, failover: bool, read_your_writes: bool) -> Self {
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
            failover: failover.then(WriteTimeline::default),
            token_reads: read_your_writes.then(TokenReads::new),
        }
    }

    pub(crate) fn merge(&mut self, other: Self) {
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
        match (&mut self.failover, other.failover) {
            (Some(failover), Some(other)) => failover.merge(other),
            (None, other) => self.failover = other,
            (Some(_), None) => {}
        }
        match (&mut self.token_reads, other.token_reads) {
            (Some(token_reads), Some(other)) => token_reads.merge(&other),
            (None, other) => self.token_reads = other,
            (Some(_), None) => {}
        }
    }

    /// The JSON summary line.
    pub(crate) fn summary(&self, elapsed_s: f64) -> Value {
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
            "stale_reads": self.token_reads.as_ref().map(|t| t.stale),
            "duration_s": (elapsed_s * 1000.0).round() / 1000.0,
            "reads_per_s": rate(self.reads_ok),
            "writes_per_s": rate(self.writes_ok),
        })
    }
}

/// Milliseconds from `start` to `at`.
pub(crate) fn ms_since(start: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(start).as_millis()).unwrap_or(u64::MAX - 1)
}

/// The timeline bucket of an operation that ended at `done`.
pub(crate) fn bucket(start: Instant, done: Instant) -> usize {
    usize::try_from(ms_since(start, done) / BUCKET_MS).unwrap_or(usize::MAX - 1)
}

/// Adds `retries` and `ejections` since the start, from the `tally` of
/// [`ReplicaSet::status`](diesel_replica::ReplicaSet::status), to the
/// summary's `per_node`, keyed by each node's configured `host:port`: every
/// node that was in the set at any time of the run, including a writer
/// that discovery replaced and nodes it found after the start.
pub(crate) fn add_node_health(summary: &mut Value, tally: &NodeTally) {
    let Some(per_node) = summary["per_node"].as_object_mut() else {
        return;
    };
    for (address, (retries, ejections)) in tally.by_address() {
        let entry = per_node
            .entry(address.to_owned())
            .or_insert_with(|| json!({ "reads": 0, "writes": 0 }));
        entry["retries"] = json!(retries);
        entry["ejections"] = json!(ejections);
    }
}

/// Operations per 100 ms bucket (by the time they ended), kept by one task
/// without sharing and merged at the end.
#[derive(Default)]
pub(crate) struct Timeline {
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
    pub(crate) fn bump(counts: &mut Vec<u64>, bucket: usize) {
        Self::add(counts, bucket, 1);
    }

    pub(crate) fn add(counts: &mut Vec<u64>, bucket: usize, n: u64) {
        if counts.len() <= bucket {
            counts.resize(bucket + 1, 0);
        }
        counts[bucket] += n;
    }

    /// The row of `by_node` for a node, added if new.
    pub(crate) fn node(&mut self, host: Option<&str>, port: i32) -> &mut Vec<u64> {
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

    /// A successful write.
    pub(crate) fn write(&mut self, bucket: usize) {
        Self::bump(&mut self.writes, bucket);
    }

    /// A failed operation, read or write.
    pub(crate) fn error(&mut self, bucket: usize) {
        Self::bump(&mut self.errors, bucket);
    }

    /// A successful read served by `host:port`.
    pub(crate) fn read(&mut self, bucket: usize, host: Option<&str>, port: i32) {
        Self::bump(&mut self.reads, bucket);
        Self::bump(self.node(host, port), bucket);
    }

    pub(crate) fn merge(&mut self, other: Self) {
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
    pub(crate) fn to_json(&self, elapsed_s: f64) -> Value {
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

/// The JSON summary of a run of `elapsed_s` seconds, also told in one line
/// on stderr. `tally` holds what the nodes counted since the clock started;
/// `faults` the fault times, with `--kill-replica-at`; `failover` the
/// failover's, with `--fail-over-at`.
pub(crate) fn summarize(
    totals: &Stats,
    elapsed_s: f64,
    tenants: u32,
    tally: &NodeTally,
    faults: Option<&FaultClock>,
    failover: Option<&FailoverClock>,
) -> Value {
    let mut summary = totals.summary(elapsed_s);
    summary["tenants"] = json!(tenants);
    summary["max_replica_lag_ms"] = json!(
        tally
            .max_replica_lag()
            .map(|lag| u64::try_from(lag.as_millis()).unwrap_or(u64::MAX))
    );
    add_node_health(&mut summary, tally);
    if let Some(timeline) = &totals.timeline {
        summary["timeline"] = timeline.to_json(elapsed_s);
    }
    if let Some(faults) = faults {
        summary["faults"] = faults.to_json();
    }
    if let Some(failover) = failover {
        summary["failover"] = failover.to_json(totals.failover.as_ref(), elapsed_s);
    }
    if let Some(token_reads) = &totals.token_reads {
        summary["read_your_writes"] = token_reads.to_json();
        let lag = match tally.max_replica_lag() {
            Some(lag) => format!("; replica lag up to {} ms", lag.as_millis()),
            None => String::new(),
        };
        eprintln!("loadgen: read-your-writes: {}{lag}", token_reads.line());
    }
    let latency = match (
        summary["read_p50_us"].as_u64(),
        summary["read_p99_us"].as_u64(),
    ) {
        (Some(p50), Some(p99)) => format!(", p50 {p50} us, p99 {p99} us"),
        _ => String::new(),
    };
    eprintln!(
        "loadgen: done in {elapsed_s:.2}s: {} reads ({:.0}/s{latency}), {} writes ({:.0}/s), \
         {} errors",
        totals.reads_ok,
        summary["reads_per_s"].as_f64().unwrap_or_default(),
        totals.writes_ok,
        summary["writes_per_s"].as_f64().unwrap_or_default(),
        totals.reads_err + totals.writes_err,
    );
    summary
}

/// An error with its sources, `message: cause: cause`: the library keeps
/// the cause of a failure (diesel's error, the server's words) in
/// `source()`, not in its message.
pub(crate) struct Chain<'a>(pub(crate) &'a dyn std::error::Error);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(next) = source {
            write!(f, ": {next}")?;
            source = next.source();
        }
        Ok(())
    }
}
