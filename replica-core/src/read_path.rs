//! The read path: which node serves each attempt of a read (a replica that
//! is up and not yet tried, chosen by the balancer, else the writer when
//! allowed), retries while nodes fail, and the error when none could.

use std::sync::Arc;

use crate::attempt::{Failed, Failure, attempt};
use crate::config::HealthConfig;
use crate::error::Error;
use crate::node::{Node, NodeId};
use crate::route::{Body, Call};
use crate::topology::Topology;

/// Runs a read, trying other nodes while nodes fail; on failure, the node
/// of the last attempt with what went wrong.
pub(crate) async fn read<T, E>(
    topology: &Topology,
    policy: &HealthConfig,
    call: Call<'_>,
    f: impl Body<T, E> + Clone,
) -> Result<T, (Arc<Node>, Failure<E>)> {
    let mut tried: Vec<NodeId> = Vec::new();
    let mut last: Option<(&Arc<Node>, Failure<E>)> = None;
    for _ in 0..=policy.read_retries {
        let Some(node) = pick(topology, policy, &tried) else {
            break;
        };
        if let Some((previous, _)) = &last {
            previous.health.count_retry();
        }
        match attempt(node, call, f.clone()).await {
            Ok(value) => return Ok(value),
            // A failed node, or a replica that has not yet replayed the
            // creation of the tenant's schema: another node may serve it.
            Err(Failed { failure, node_down })
                if node_down
                    || matches!(failure, Failure::Routing(Error::UnknownTenant { .. })) =>
            {
                tried.push(node.id.clone());
                last = Some((node, failure));
            }
            Err(Failed { failure, .. }) => return Err((Arc::clone(node), failure)),
        }
    }
    match last {
        Some((node, failure)) => Err((Arc::clone(node), failure)),
        None => Err((
            Arc::clone(&topology.writer),
            Failure::Routing(no_replica(topology)),
        )),
    }
}

/// The node for the next attempt of a read: a replica that is up and not
/// yet tried, chosen by the balancer; else the writer, once, when there are
/// no replicas or reads may fall back to it.
pub(crate) fn pick<'t>(
    topology: &'t Topology,
    policy: &HealthConfig,
    tried: &[NodeId],
) -> Option<&'t Arc<Node>> {
    let replicas = &topology.replicas;
    let replica = topology.balancer.pick(replicas, |i| {
        replicas[i].is_up() && !tried.contains(&replicas[i].id)
    });
    match replica {
        Some(index) => Some(&replicas[index]),
        None if (replicas.is_empty() || policy.reads_fall_back_to_writer)
            && !tried.contains(&topology.writer.id) =>
        {
            Some(&topology.writer)
        }
        None => None,
    }
}

fn no_replica(topology: &Topology) -> Error {
    Error::NoReplicaAvailable {
        replicas: topology
            .replicas
            .iter()
            .map(|node| {
                let status = node.status();
                match status.last_error {
                    Some(error) => format!("{} {:?}: {error}", node.label, status.health),
                    None => format!("{} {:?}", node.label, status.health),
                }
            })
            .collect(),
    }
}
