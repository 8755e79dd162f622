//! The nodes' `retries` and `ejections` over a run, from
//! [`ReplicaSet::status`](diesel_replica::ReplicaSet::status) looked at
//! every 10 ms, so that what a node counted is kept when it leaves the set
//! (a dead writer that discovery replaces) or changes role (a promoted
//! replica is a new node of the set, counting from 0).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel_replica::Status;

use crate::failover::FailoverClock;
use crate::repo::Items;

/// How often the nodes are looked at.
pub(crate) const NODES_POLL: Duration = Duration::from_millis(10);

/// One node of the set as `status()` shows it: its name (`writer`,
/// `replica-N`) and `host:port`. A node keeps both while it stays in the
/// set; one that joins again or changes role is a new node.
type NodeKey = (String, String);

/// One node's counters: `(retried, ejections)` as last seen, and what they
/// grew by since the start.
#[derive(Default)]
struct Counts {
    last: (u64, u64),
    total: (u64, u64),
}

/// What each node of the set counted since the start of the run (nothing,
/// by default: a run with no replica set, `--through`).
#[derive(Default)]
pub(crate) struct NodeTally {
    nodes: HashMap<NodeKey, Counts>,
    /// The largest replica lag the set reported during the run (its lag
    /// monitor's samples), if it reported any.
    max_replica_lag: Option<Duration>,
}

impl NodeTally {
    /// Counts from `before` (taken when the clock started) on: what its
    /// nodes counted before, such as in the wait for the replicas, is left
    /// out.
    pub(crate) fn new(before: &Status) -> Self {
        let nodes = std::iter::once(&before.writer)
            .chain(&before.replicas)
            .map(|node| {
                let counts = Counts {
                    last: (node.retried, node.ejections),
                    total: (0, 0),
                };
                ((node.name.clone(), node.address.clone()), counts)
            })
            .collect();
        Self {
            nodes,
            max_replica_lag: None,
        }
    }

    /// Adds what the nodes of `status` counted since they were last seen;
    /// a node not seen before counts from 0.
    pub(crate) fn observe(&mut self, status: &Status) {
        for node in std::iter::once(&status.writer).chain(&status.replicas) {
            let counts = self
                .nodes
                .entry((node.name.clone(), node.address.clone()))
                .or_default();
            let now = (node.retried, node.ejections);
            counts.total.0 += grown(counts.last.0, now.0);
            counts.total.1 += grown(counts.last.1, now.1);
            counts.last = now;
        }
        let lag = status.replicas.iter().filter_map(|node| node.lag).max();
        self.max_replica_lag = self.max_replica_lag.max(lag);
    }

    /// The largest replica lag seen since the start, if any was sampled.
    pub(crate) fn max_replica_lag(&self) -> Option<Duration> {
        self.max_replica_lag
    }

    /// `(retries, ejections)` since the start by `host:port`, summed over
    /// the nodes that had it (such as a replica and, once promoted, the
    /// writer on the same server).
    pub(crate) fn by_address(&self) -> BTreeMap<&str, (u64, u64)> {
        let mut by_address = BTreeMap::<&str, (u64, u64)>::new();
        for ((_, address), counts) in &self.nodes {
            let sum = by_address.entry(address.as_str()).or_default();
            sum.0 += counts.total.0;
            sum.1 += counts.total.1;
        }
        by_address
    }
}

/// What a counter grew by from `last` to `now`; one that went down belongs
/// to a node rebuilt under the same name and address, counting from 0.
fn grown(last: u64, now: u64) -> u64 {
    now.checked_sub(last).unwrap_or(now)
}

/// Looks at the set's nodes every [`NODES_POLL`] until the deadline,
/// counting into `tally` and telling `failover` (with `--fail-over-at`)
/// which node is the writer; returns the tally.
pub(crate) async fn watch_nodes(
    db: Items,
    mut tally: NodeTally,
    failover: Option<Arc<FailoverClock>>,
    deadline: Instant,
) -> NodeTally {
    let mut ticks = tokio::time::interval(NODES_POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while Instant::now() < deadline {
        ticks.tick().await;
        let status = db.replica_set().status();
        tally.observe(&status);
        if let Some(failover) = &failover {
            failover.saw_writer(&status.writer.address);
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::grown;

    #[test]
    fn a_counter_that_went_down_counts_from_zero() {
        assert_eq!(grown(3, 5), 2);
        assert_eq!(grown(5, 5), 0);
        assert_eq!(grown(5, 2), 2);
    }
}
