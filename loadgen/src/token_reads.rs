//! What the token reads of `--read-your-writes` saw: how many were stale,
//! where they ran, and how long they and their writes took.

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::clock::MAX_LATENCY_US;

/// What the token reads of one task (or, merged, of the run) saw.
pub(crate) struct TokenReads {
    /// Successful reads that did not return the value their own write put.
    pub(crate) stale: u64,
    /// Successful reads served by a replica (in recovery).
    on_replicas: u64,
    /// Successful reads served by the writer.
    on_writer: u64,
    /// Latency of every successful token read, in µs.
    all: Histogram<u64>,
    /// Latency of those served by a replica.
    replica: Histogram<u64>,
    /// Latency of those served by the writer.
    writer: Histogram<u64>,
    /// Latency of the successful writes, in µs (their token costs one
    /// statement after the commit).
    writes: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant bounds are valid")
}

impl TokenReads {
    pub(crate) fn new() -> Self {
        Self {
            stale: 0,
            on_replicas: 0,
            on_writer: 0,
            all: histogram(),
            replica: histogram(),
            writer: histogram(),
            writes: histogram(),
        }
    }

    pub(crate) fn merge(&mut self, other: &Self) {
        self.stale += other.stale;
        self.on_replicas += other.on_replicas;
        self.on_writer += other.on_writer;
        for (mine, theirs) in [
            (&mut self.all, &other.all),
            (&mut self.replica, &other.replica),
            (&mut self.writer, &other.writer),
            (&mut self.writes, &other.writes),
        ] {
            mine.add(theirs)
                .expect("histograms with the same bounds always add");
        }
    }

    /// A successful write of `micros` (its token's statement included).
    pub(crate) fn write(&mut self, micros: u64) {
        self.writes.saturating_record(micros);
    }

    /// A successful token read of `micros`, on a replica or the writer.
    pub(crate) fn read(&mut self, on_replica: bool, micros: u64) {
        self.all.saturating_record(micros);
        if on_replica {
            self.on_replicas += 1;
            self.replica.saturating_record(micros);
        } else {
            self.on_writer += 1;
            self.writer.saturating_record(micros);
        }
    }

    /// The `read_your_writes` object of the JSON summary.
    pub(crate) fn to_json(&self) -> Value {
        let quantiles = |h: &Histogram<u64>| {
            let at = |q: f64| (!h.is_empty()).then(|| h.value_at_quantile(q));
            (at(0.5), at(0.99))
        };
        let (p50, p99) = quantiles(&self.all);
        let (replica_p50, replica_p99) = quantiles(&self.replica);
        let (writer_p50, writer_p99) = quantiles(&self.writer);
        let (write_p50, write_p99) = quantiles(&self.writes);
        let reads = self.on_replicas + self.on_writer;
        let share =
            |n: u64| (reads > 0).then(|| (n as f64 / reads as f64 * 10_000.0).round() / 10_000.0);
        json!({
            "token_reads": reads,
            "stale_reads": self.stale,
            "on_replicas": self.on_replicas,
            "on_writer": self.on_writer,
            "replica_share": share(self.on_replicas),
            "writer_share": share(self.on_writer),
            "read_p50_us": p50,
            "read_p99_us": p99,
            "replica_read_p50_us": replica_p50,
            "replica_read_p99_us": replica_p99,
            "writer_read_p50_us": writer_p50,
            "writer_read_p99_us": writer_p99,
            "write_p50_us": write_p50,
            "write_p99_us": write_p99,
        })
    }

    /// One line for stderr.
    pub(crate) fn line(&self) -> String {
        let reads = self.on_replicas + self.on_writer;
        let pct = |n: u64| {
            if reads == 0 {
                0.0
            } else {
                100.0 * n as f64 / reads as f64
            }
        };
        format!(
            "{reads} token reads: {} on replicas ({:.1} %), {} on the writer ({:.1} %), \
             {} stale",
            self.on_replicas,
            pct(self.on_replicas),
            self.on_writer,
            pct(self.on_writer),
            self.stale
        )
    }
}
