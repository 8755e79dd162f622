//! The read path: which node serves each attempt of a read (a replica that
//! is up, within the lag limit and not yet tried, chosen by the balancer,
//! else the writer when allowed), retries while nodes fail, and the error
//! when none could. A read after a write ([`WriteToken`]) goes to a replica
//! known to hold the write, else waits on one for it (once, up to the
//! bound), else goes to the writer.

use std::sync::Arc;
use std::time::Duration;

use tracing::{Instrument, Span};

use crate::attempt::{Failed, Failure, attempt};
use crate::config::HealthConfig;
use crate::consistency::WriteToken;
use crate::error::Error;
use crate::metrics::{self, Fallback};
use crate::node::{Node, NodeId};
use crate::route::{Body, Call, ReplayWait};
use crate::telemetry;
use crate::topology::Topology;

/// How many times a read runs again on a new connection of its node after
/// its body failed behind a failed statement of the library's.
const MAX_BEHIND_RETRIES: u32 = 3;

/// What a read must see, and how it may wait for it.
#[derive(Clone, Copy)]
pub(crate) struct After<'a> {
    pub(crate) token: WriteToken,
    /// The longest wait on a replica for the write.
    pub(crate) wait: Duration,
    /// Aurora: replicas qualify by their reported lag, not a position.
    pub(crate) by_time: bool,
    /// Told when no replica was known to hold the write: the lag monitor
    /// then samples at once.
    pub(crate) unknown: &'a tokio::sync::Notify,
}

/// Runs a read, trying other nodes while nodes fail; on failure, the node
/// of the last attempt with what went wrong.
pub(crate) async fn read<T, E>(
    topology: &Topology,
    policy: &HealthConfig,
    call: Call<'_>,
    after: Option<After<'_>>,
    f: impl Body<T, E> + Clone,
) -> Result<T, (Arc<Node>, Failure<E>)> {
    let mut tried: Vec<NodeId> = Vec::new();
    let mut last: Option<(&Arc<Node>, Failure<E>)> = None;
    let mut failures = 0;
    let mut may_wait = after.is_some_and(|after| !after.by_time && !after.wait.is_zero());
    let mut number = 0;
    // A stale connection is tried again once, on a new one of its node.
    let mut again: Option<(&Arc<Node>, Option<ReplayWait>)> = None;
    let mut stale_retried = false;
    let mut behind_retries = 0;
    // Whether a replica's pool was busy.
    let mut busy = false;
    if let Some(after) = after
        && topology
            .replicas
            .iter()
            .any(|node| usable(node, &[]) && !node.lag.has_replayed(&after.token, after.by_time))
    {
        // A replica is not known to hold the write: the lag monitor samples
        // them soon (at most every 20 ms, however many reads ask), so that
        // reads after it spread over every replica that does.
        after.unknown.notify_one();
    }
    while let Some((node, replay_wait)) = again
        .take()
        .or_else(|| next(topology, policy, &tried, after, may_wait))
    {
        if busy && Arc::ptr_eq(node, &topology.writer) && !topology.replicas.is_empty() {
            // A replica's pool was busy: the writer does not take its
            // reads, or one traffic spike becomes the writer's.
            break;
        }
        number += 1;
        let retry_reason = last.as_ref().map(|(previous, failure)| {
            // A retry counts against the node that failed; a replica
            // behind the write or without the tenant's schema yet did not.
            if !matches!(
                failure,
                Failure::NotReplayed
                    | Failure::Behind(_)
                    | Failure::Routing(Error::UnknownTenant { .. } | Error::Busy { .. })
            ) {
                previous.health.count_retry();
            }
            failure.kind_str()
        });
        if let Some(reason) = retry_reason {
            tracing::debug!(from = %last.as_ref().map_or("", |(n, _)| n.label.as_str()), to = %node.label, reason, "read tried on another node");
        }
        if Arc::ptr_eq(node, &topology.writer) && !topology.replicas.is_empty() {
            let why = if matches!(last, Some((_, Failure::NotReplayed))) {
                Fallback::NotReplayed
            } else {
                Fallback::NoReplica
            };
            metrics::writer_fallback(why);
            Span::current().record("diesel_replica.fallback_to_writer", true);
            tracing::debug!(
                reason = why.as_str(),
                "read falls back to the writer, READ ONLY"
            );
        }
        let call = Call {
            replay_wait,
            ..call
        };
        let span = telemetry::attempt_span(node, number, retry_reason);
        let outcome = attempt(node, call, f.clone())
            .instrument(span.clone())
            .await;
        if let Err(failed) = &outcome {
            span.record("error.type", failed.failure.kind_str());
        }
        Span::current().record("diesel_replica.attempts", number);
        match outcome {
            Ok(value) => {
                if let Some(wait) = replay_wait {
                    node.lag.replayed_at_least(wait.lsn);
                }
                return Ok(value);
            }
            Err(Failed {
                failure: failure @ Failure::Stale(_),
                ..
            }) if !stale_retried => {
                stale_retried = true;
                again = Some((node, replay_wait));
                last = Some((node, failure));
            }
            // Each connection that failed a statement of the library's is
            // closed; the node's next one is likely sound.
            Err(Failed {
                failure: failure @ Failure::Behind(_),
                ..
            }) if behind_retries < MAX_BEHIND_RETRIES => {
                behind_retries += 1;
                again = Some((node, replay_wait));
                last = Some((node, failure));
            }
            // Waited on once: the others are tried as they are known.
            Err(Failed {
                failure: Failure::NotReplayed,
                ..
            }) => {
                may_wait = false;
                tried.push(node.id.clone());
                last = Some((node, Failure::NotReplayed));
            }
            // A replica whose pool is busy: another one may have room.
            Err(Failed {
                failure: failure @ Failure::Routing(Error::Busy { .. }),
                ..
            }) if !Arc::ptr_eq(node, &topology.writer) => {
                busy = true;
                tried.push(node.id.clone());
                last = Some((node, failure));
            }
            // A failed node, or a replica that has not yet replayed the
            // creation of the tenant's schema: another node may serve it.
            Err(Failed {
                failure, node_down, ..
            }) if node_down || matches!(failure, Failure::Routing(Error::UnknownTenant { .. })) => {
                tried.push(node.id.clone());
                last = Some((node, failure));
                failures += 1;
                if failures > policy.read_retries {
                    break;
                }
            }
            Err(Failed { failure, .. }) => return Err((Arc::clone(node), failure)),
        }
    }
    match last {
        Some((node, failure)) => Err((Arc::clone(node), failure)),
        None => Err((
            Arc::clone(&topology.writer),
            Failure::Routing(no_replica(topology, after.is_some())),
        )),
    }
}

/// The node for the next attempt, and the replay wait to send with it.
fn next<'t>(
    topology: &'t Topology,
    policy: &HealthConfig,
    tried: &[NodeId],
    after: Option<After<'_>>,
    may_wait: bool,
) -> Option<(&'t Arc<Node>, Option<ReplayWait>)> {
    let usable = |node: &Node| usable(node, tried);
    let Some(after) = after else {
        return pick(topology, policy, tried).map(|node| (node, None));
    };
    let token = after.token;
    let known = |node: &Node| usable(node) && node.lag.has_replayed(&token, after.by_time);
    if let Some(node) = choose(topology, known) {
        return Some((node, None));
    }
    if may_wait
        && token.lsn != WriteToken::UNKNOWN_LSN
        && let Some(node) = choose(topology, usable)
    {
        // The wait is part of the attempt, which its node's time limit
        // bounds: half of it at most, so that a wait is never a timeout.
        let bound = node
            .attempt_timeout
            .map_or(after.wait, |limit| after.wait.min(limit / 2));
        let wait = ReplayWait {
            lsn: token.lsn,
            bound,
        };
        return Some((node, Some(wait)));
    }
    writer(topology, policy, tried).map(|node| (node, None))
}

/// A replica for which `eligible` holds, chosen by the balancer.
fn choose(topology: &Topology, eligible: impl Fn(&Node) -> bool) -> Option<&Arc<Node>> {
    let replicas = &topology.replicas;
    topology
        .balancer
        .pick(replicas, |i| eligible(&replicas[i]))
        .map(|index| &replicas[index])
}

/// The writer, once, when there are no replicas or reads may fall back to
/// it.
fn writer<'t>(
    topology: &'t Topology,
    policy: &HealthConfig,
    tried: &[NodeId],
) -> Option<&'t Arc<Node>> {
    ((topology.replicas.is_empty() || policy.reads_fall_back_to_writer)
        && !tried.contains(&topology.writer.id))
    .then_some(&topology.writer)
}

/// The node for the next attempt of a read: a replica that is up, within
/// the lag limit and not yet tried, chosen by the balancer; else the
/// writer, once, when there are no replicas or reads may fall back to it.
pub(crate) fn pick<'t>(
    topology: &'t Topology,
    policy: &HealthConfig,
    tried: &[NodeId],
) -> Option<&'t Arc<Node>> {
    choose(topology, |node| usable(node, tried)).or_else(|| writer(topology, policy, tried))
}

/// A replica that may take a read: up, within the lag limit, not yet tried.
fn usable(node: &Node, tried: &[NodeId]) -> bool {
    node.is_up() && !node.lag.is_behind() && !tried.contains(&node.id)
}

fn no_replica(topology: &Topology, after_write: bool) -> Error {
    Error::NoReplicaAvailable {
        replicas: topology
            .replicas
            .iter()
            .map(|node| {
                let status = node.status();
                let mut line = format!("{} {:?}", node.label, status.health);
                if status.behind {
                    line.push_str(", behind the lag limit");
                } else if after_write {
                    line.push_str(", not known to hold the write");
                }
                if let Some(error) = status.last_error {
                    line.push_str(": ");
                    line.push_str(&error);
                }
                line
            })
            .collect(),
    }
}
