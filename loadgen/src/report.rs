//! What a run reports: the JSON summary, assembled from the merged counts,
//! the nodes' tally and the fault and failover times, and its line on
//! stderr.

use serde_json::{Value, json};

use crate::failover::FailoverClock;
use crate::faults::FaultClock;
use crate::nodes::NodeTally;
use crate::stats::Stats;

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
