//! The nodes a replica set routes to, as one immutable snapshot: the
//! writer, the replicas with their weights, and the balancer over them,
//! numbered by a generation. A call takes the snapshot that is current when
//! it starts and keeps it to its end; a change builds the next snapshot,
//! keeping the nodes (and pools) that stay.

use std::sync::Arc;

use crate::balance::{Balance, Balancer};
use crate::config::{Config, HealthConfig, PoolConfig};
use crate::credentials::{CredentialsProvider, Login};
use crate::error::ConfigError;
use crate::node::{Node, NodeId, Role, Spec};
use crate::pooler::Pooler;
use crate::url::DatabaseUrl;

pub(crate) struct Topology {
    pub(crate) generation: u64,
    pub(crate) writer: Arc<Node>,
    pub(crate) replicas: Vec<Arc<Node>>,
    /// The weight of each replica, in order.
    pub(crate) weights: Vec<u32>,
    pub(crate) balancer: Balancer,
}

/// What every node of a set is built with, kept to build the nodes that
/// join later.
pub(crate) struct Blueprint {
    pub(crate) health: Arc<HealthConfig>,
    pub(crate) writer_pool: PoolConfig,
    pub(crate) replica_pool: PoolConfig,
    pub(crate) application_name: String,
    pub(crate) credentials: Option<CredentialsProvider>,
    pub(crate) balance: Balance,
    pub(crate) pooler: Pooler,
    pub(crate) writer_read_login: Option<Login>,
}

impl Blueprint {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            health: Arc::new(config.health.clone()),
            writer_pool: config.writer_pool.clone(),
            replica_pool: config.replica_pool.clone(),
            application_name: config.application_name.clone(),
            credentials: config.credentials.clone(),
            balance: config.balance,
            pooler: config.pooler,
            writer_read_login: config.writer_read_login.clone(),
        }
    }

    fn node(
        &self,
        role: Role,
        name: String,
        url: &DatabaseUrl,
        pool: &PoolConfig,
    ) -> Result<Node, ConfigError> {
        let key = format!("{name} ({})", url.address());
        Node::new(Spec {
            role,
            name,
            url: url.clone(),
            pool,
            application_name: &self.application_name,
            health: &self.health,
            credentials: self.credentials.as_ref(),
            pooler: self.pooler,
            read_login: self.writer_read_login.as_ref(),
        })
        .map_err(|problem| ConfigError::InvalidTls { key, problem })
    }
}

/// The replicas of a new snapshot: the nodes it keeps and the ones it adds.
pub(crate) struct Next {
    pub(crate) topology: Topology,
    pub(crate) added: Vec<Arc<Node>>,
    pub(crate) removed: Vec<Arc<Node>>,
}

impl Topology {
    /// The first snapshot: the nodes a checked configuration names. Builds
    /// pools, opens no connection.
    ///
    /// # Errors
    /// A node's TLS settings cannot be used (a certificate file went away
    /// since the configuration was checked).
    pub(crate) fn new(config: &Config, blueprint: &Blueprint) -> Result<Self, ConfigError> {
        let writer = blueprint.node(
            Role::Writer,
            "writer".into(),
            &config.writer,
            &config.writer_pool,
        )?;
        let replicas = config
            .replicas
            .iter()
            .enumerate()
            .map(|(i, url)| {
                let node = blueprint.node(
                    Role::Replica,
                    format!("replica-{i}"),
                    url,
                    &blueprint.replica_pool,
                )?;
                Ok(Arc::new(node))
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let weights = weights(&config.replica_weights, replicas.len());
        Ok(Self {
            generation: 0,
            writer: Arc::new(writer),
            balancer: Balancer::new(blueprint.balance, &weights),
            weights,
            replicas,
        })
    }

    /// The next snapshot, with `writer` and `replicas` (weights in order,
    /// or none for 1 each): a node already here in the same role (same
    /// [`NodeId`], same settings) keeps its node and pool; the others are
    /// built, replicas named `replica-N` from `next_name` on.
    pub(crate) fn next(
        &self,
        writer: &DatabaseUrl,
        replicas: &[DatabaseUrl],
        weights: &[u32],
        blueprint: &Blueprint,
        next_name: &mut usize,
    ) -> Result<Next, ConfigError> {
        let mut added = Vec::new();
        let writer = if self.writer.id == NodeId::of(writer) && self.writer.url == *writer {
            Arc::clone(&self.writer)
        } else {
            let node = Arc::new(blueprint.node(
                Role::Writer,
                "writer".into(),
                writer,
                &blueprint.writer_pool,
            )?);
            added.push(Arc::clone(&node));
            node
        };
        let replicas = replicas
            .iter()
            .map(|url| {
                let id = NodeId::of(url);
                if let Some(node) = self.replicas.iter().find(|n| n.id == id && n.url == *url) {
                    return Ok(Arc::clone(node));
                }
                let name = format!("replica-{next_name}");
                *next_name += 1;
                let node =
                    Arc::new(blueprint.node(Role::Replica, name, url, &blueprint.replica_pool)?);
                added.push(Arc::clone(&node));
                Ok(node)
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let stays = |old: &Arc<Node>| {
            Arc::ptr_eq(old, &writer) || replicas.iter().any(|new| Arc::ptr_eq(old, new))
        };
        let removed = std::iter::once(&self.writer)
            .chain(&self.replicas)
            .filter(|old| !stays(old))
            .cloned()
            .collect();
        let weights = self::weights(weights, replicas.len());
        let topology = Topology {
            generation: self.generation + 1,
            writer,
            balancer: Balancer::new(blueprint.balance, &weights),
            weights,
            replicas,
        };
        Ok(Next {
            topology,
            added,
            removed,
        })
    }
}

/// The weight of each replica, 1 each when none is given.
fn weights(given: &[u32], replicas: usize) -> Vec<u32> {
    match given {
        [] => vec![1; replicas],
        weights => weights.to_vec(),
    }
}

impl Next {
    /// Whether the next snapshot routes as the current one does.
    pub(crate) fn changes_nothing(&self, current: &Topology) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.topology.weights == current.weights
    }
}
