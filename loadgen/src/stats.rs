//! What one task counts without sharing, merged at the end: operations by
//! outcome and node, errors by kind, read latencies, and the timelines and
//! token reads that some flags add; the summary's counts.

use std::collections::HashMap;

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

use crate::clock::MAX_LATENCY_US;
use crate::failover::WriteTimeline;
use crate::timeline::Timeline;
use crate::token_reads::TokenReads;

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

    /// The summary's counts, the base of the JSON summary line.
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
