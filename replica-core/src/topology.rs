//! The nodes a replica set routes to, as one immutable snapshot: the
//! writer, the replicas (each with its weight), and the balancer over them.
//! A call takes the snapshot that is current when it starts and keeps it to
//! its end, so a snapshot can be replaced as a whole while calls are in
//! flight.

use std::sync::Arc;

use crate::balance::Balancer;
use crate::config::Config;
use crate::node::{Node, Role, Spec};
use crate::url::DatabaseUrl;

pub(crate) struct Topology {
    pub(crate) writer: Arc<Node>,
    pub(crate) replicas: Vec<Arc<Node>>,
    pub(crate) balancer: Balancer,
}

impl Topology {
    /// The nodes a checked configuration names. Builds pools, opens no
    /// connection.
    pub(crate) fn new(config: &Config) -> Self {
        let health = Arc::new(config.health.clone());
        let spec = |role, name, url: &DatabaseUrl, weight, pool| Spec {
            role,
            name,
            url: url.clone(),
            weight,
            pool,
            application_name: &config.application_name,
            health: &health,
        };
        let writer = Node::new(spec(
            Role::Writer,
            "writer".into(),
            &config.writer,
            0,
            &config.writer_pool,
        ));
        let replicas: Vec<Arc<Node>> = config
            .replicas
            .iter()
            .enumerate()
            .map(|(i, url)| {
                let weight = config.replica_weights.get(i).copied().unwrap_or(1);
                let name = format!("replica-{i}");
                Arc::new(Node::new(spec(
                    Role::Replica,
                    name,
                    url,
                    weight,
                    &config.replica_pool,
                )))
            })
            .collect();
        let weights: Vec<u32> = replicas.iter().map(|node| node.weight).collect();
        Self {
            writer: Arc::new(writer),
            balancer: Balancer::new(config.balance, &weights),
            replicas,
        }
    }
}
