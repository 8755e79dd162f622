//! Fault injection with `--kill-replica-at` and `--restart-replica-at`:
//! the kill and restart timeline of replica 0 of the local cluster (or,
//! with `--fault partition`, its cut off the network and reconnection;
//! the JSON's `kill_*` and `restart_*` fields then time those), and the
//! watch on its health.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use diesel_replica::Health;
use diesel_replica_testkit::{Cluster, NodeId};
use serde_json::{Value, json};

use crate::clock::{UNSET, event_ms, ms_since, record_event};
use crate::local::blocking;
use crate::plan::{Fault, FaultPlan};
use crate::repo::Items;

/// How often the health of the replica under `--kill-replica-at` is looked at.
pub(crate) const HEALTH_POLL: Duration = Duration::from_millis(10);

/// When each fault event happened, in ms since the start of the run
/// ([`UNSET`] until it does), shared by the fault task, the health watch
/// and the workers.
pub(crate) struct FaultClock {
    start: Instant,
    /// Replica 0, `host:port` as configured.
    address: String,
    /// Its port, which the server reports as its own on both of the
    /// testkit's backends (its host it does not: a container reports its
    /// own address on the cluster's network, not 127.0.0.1). No two nodes
    /// of a cluster share a port.
    port: i32,
    kill_issued: AtomicU64,
    killed: AtomicU64,
    ejected: AtomicU64,
    restart_issued: AtomicU64,
    restarted: AtomicU64,
    readmitted: AtomicU64,
    first_read_after_restart: AtomicU64,
    fault: Fault,
}

impl FaultClock {
    pub(crate) fn new(start: Instant, address: &str, fault: Fault) -> Result<Self, String> {
        let port = address
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .ok_or_else(|| format!("replica 0's address `{address}` is not host:port"))?;
        let unset = || AtomicU64::new(UNSET);
        Ok(Self {
            start,
            address: address.to_owned(),
            port,
            kill_issued: unset(),
            killed: unset(),
            ejected: unset(),
            restart_issued: unset(),
            restarted: unset(),
            readmitted: unset(),
            first_read_after_restart: unset(),
            fault,
        })
    }

    /// Records `event` as happening now (once) and prints it on stderr.
    pub(crate) fn record(&self, event: &AtomicU64, what: impl std::fmt::Display) {
        record_event(self.start, event, what);
    }

    /// A read served on `port` ended at `done`: the first one on replica 0
    /// after its restart was issued is recorded. (Replica 0 is down from
    /// the kill to the restart, so such a read ran on the restarted server.)
    pub(crate) fn saw_read(&self, port: i32, done: Instant) {
        if port != self.port
            || event_ms(&self.restart_issued).is_none()
            || event_ms(&self.first_read_after_restart).is_some()
        {
            return;
        }
        let at = ms_since(self.start, done);
        if self
            .first_read_after_restart
            .compare_exchange(UNSET, at, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            eprintln!(
                "loadgen: t={:.3}s first read served by restarted replica-0 ({})",
                at as f64 / 1000.0,
                self.address
            );
        }
    }

    /// The `faults` object of the summary.
    pub(crate) fn to_json(&self) -> Value {
        let restarted = event_ms(&self.restarted);
        let first_read = event_ms(&self.first_read_after_restart);
        json!({
            "fault": self.fault.as_str(),
            "replica": self.address,
            "kill_issued_at_ms": event_ms(&self.kill_issued),
            "killed_at_ms": event_ms(&self.killed),
            "ejected_at_ms": event_ms(&self.ejected),
            "restart_issued_at_ms": event_ms(&self.restart_issued),
            "restarted_at_ms": restarted,
            "readmitted_at_ms": event_ms(&self.readmitted),
            "first_read_after_restart_ms": first_read,
            "readmission_ms": restarted
                .zip(first_read)
                .map(|(restarted, first)| first as i64 - restarted as i64),
        })
    }
}

/// Kills replica 0 and restarts it as planned. The testkit's calls block
/// (up to a second), so they run on the blocking pool while the workers go on.
pub(crate) async fn inject_faults(
    cluster: Arc<Cluster>,
    plan: FaultPlan,
    clock: Arc<FaultClock>,
) -> Result<(), String> {
    let replica = NodeId::Replica(0);
    let address = clock.address.clone();
    let partition = plan.fault == Fault::Partition;
    tokio::time::sleep_until((clock.start + plan.kill_at).into()).await;
    let what = if partition {
        "cutting it off the network"
    } else {
        "immediate shutdown"
    };
    clock.record(
        &clock.kill_issued,
        format_args!("{}ing replica-0 ({address}): {what}", plan.fault.as_str()),
    );
    blocking(&cluster, move |cluster| match partition {
        true => cluster.partition(replica),
        false => cluster.kill(replica),
    })
    .await
    .map_err(|e| format!("cannot {} replica-0 ({address}): {e}", plan.fault.as_str()))?;
    clock.record(
        &clock.killed,
        if partition {
            "replica-0 is cut off (no packets in or out)"
        } else {
            "replica-0 is down (pg_ctl stop returned)"
        },
    );
    let Some(restart_at) = plan.restart_at else {
        return Ok(());
    };
    tokio::time::sleep_until((clock.start + restart_at).into()).await;
    let (again, back) = if partition {
        ("reconnecting", "replica-0 is on the network again")
    } else {
        (
            "restarting",
            "replica-0 accepts connections again (pg_ctl start returned)",
        )
    };
    clock.record(
        &clock.restart_issued,
        format_args!("{again} replica-0 ({address})"),
    );
    blocking(&cluster, move |cluster| match partition {
        true => cluster.heal(replica),
        false => cluster.start_node(replica),
    })
    .await
    .map_err(|e| format!("{again} replica-0 ({address}) failed: {e}"))?;
    clock.record(&clock.restarted, back);
    Ok(())
}

/// Watches replica 0's health until the deadline and records (and prints)
/// its first ejection and the first re-admission after it; later changes
/// are printed only.
pub(crate) async fn watch_health(db: Items, clock: Arc<FaultClock>, deadline: Instant) {
    let mut ticks = tokio::time::interval(HEALTH_POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut was_up = true;
    while Instant::now() < deadline {
        ticks.tick().await;
        let Some(replica) = db.replica_set().status().replicas.into_iter().next() else {
            return;
        };
        let up = matches!(replica.health, Health::Up);
        if up == was_up {
            continue;
        }
        was_up = up;
        let event = match (up, event_ms(&clock.ejected)) {
            (false, None) => &clock.ejected,
            (true, Some(_)) if event_ms(&clock.readmitted).is_none() => &clock.readmitted,
            _ => {
                let at = ms_since(clock.start, Instant::now());
                eprintln!(
                    "loadgen: t={:.3}s replica-0 is {:?} again",
                    at as f64 / 1000.0,
                    replica.health
                );
                continue;
            }
        };
        let what = if up {
            "replica-0 is re-admitted (health Up)".to_owned()
        } else {
            format!(
                "replica-0 is ejected (ejection #{}); last error: {}",
                replica.ejections,
                replica.last_error.as_deref().unwrap_or("none")
            )
        };
        clock.record(event, what);
    }
}
