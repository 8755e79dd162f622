//! `--timeline`: successful reads and writes, failed operations, and reads
//! per node, per 100 ms bucket of the run.

use serde_json::{Map, Value, json};

use crate::clock::BUCKET_MS;
use crate::repo::node_key;

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
