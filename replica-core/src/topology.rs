//! The nodes a replica set routes to, as one immutable snapshot: the
//! writer, the replicas (each with its weight), and the balancer over them.
//! A call takes the snapshot that is current when it starts and keeps it to
//! its end, so a snapshot can be replaced as a whole while calls are in
//! flight.

use std::sync::Arc;

use crate::balance::Balancer;
use crate::config::Config;
use crate::error::ConfigError;
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
    ///
    /// # Errors
    /// A node's TLS settings cannot be used (a certificate file went away
    /// since the configuration was checked).
    pub(crate) fn new(config: &Config) -> Result<Self, ConfigError> {
        let health = Arc::new(config.health.clone());
        let spec = |role, name, url: &DatabaseUrl, weight, pool| Spec {
            role,
            name,
            url: url.clone(),
            weight,
            pool,
            application_name: &config.application_name,
            health: &health,
            credentials: config.credentials.as_ref(),
        };
        let tls_error = |node: &str, url: &DatabaseUrl| {
            let key = format!("{node} ({})", url.address());
            move |problem| ConfigError::InvalidTls { key, problem }
        };
        let writer = Node::new(spec(
            Role::Writer,
            "writer".into(),
            &config.writer,
            0,
            &config.writer_pool,
        ))
        .map_err(tls_error("writer", &config.writer))?;
        let replicas: Vec<Arc<Node>> = config
            .replicas
            .iter()
            .enumerate()
            .map(|(i, url)| {
                let weight = config.replica_weights.get(i).copied().unwrap_or(1);
                let name = format!("replica-{i}");
                let node = Node::new(spec(
                    Role::Replica,
                    name.clone(),
                    url,
                    weight,
                    &config.replica_pool,
                ))
                .map_err(tls_error(&name, url))?;
                Ok(Arc::new(node))
            })
            .collect::<Result<_, ConfigError>>()?;
        let weights: Vec<u32> = replicas.iter().map(|node| node.weight).collect();
        Ok(Self {
            writer: Arc::new(writer),
            balancer: Balancer::new(config.balance, &weights),
            replicas,
        })
    }
}
