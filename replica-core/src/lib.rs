//! Runtime of [diesel-replica](https://docs.rs/diesel-replica): configuration,
//! one writer pool and any number of replica pools, and the routing of each
//! query to the right one.
//!
//! Most applications depend on `diesel-replica`, which re-exports this crate.
#![forbid(unsafe_code)]

mod attempt;
mod aurora;
mod balance;
mod cancel;
mod config;
mod connector;
mod consistency;
mod credentials;
mod dial;
mod discovery;
mod error;
mod health;
mod instrument;
mod lag;
mod metrics;
mod monitor;
mod node;
mod plain_param;
mod pooler;
mod probes;
mod provision;
mod read_path;
mod route;
mod scope;
mod server_role;
mod session;
mod set;
mod telemetry;
mod tenant;
mod tls;
mod topology;
mod url;
mod watchdog;
mod wire;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use crate::aurora::{RejectedRow, Rule};
pub use crate::balance::Balance;
pub use crate::config::{
    Config, ConsistencyConfig, Discovery, DiscoverySource, HealthConfig, PoolConfig,
};
pub use crate::consistency::{ReadYourWrites, TokenError, WriteToken};
pub use crate::credentials::{
    Credentials, CredentialsError, CredentialsProvider, Login, LoginFuture, Password, SecretFile,
};
pub use crate::discovery::DiscoveryStatus;
pub use crate::error::{CheckoutError, ConfigError, Error, ErrorKind};
pub use crate::health::Health;
pub use crate::node::{NodeId, NodeStatus, Role};
pub use crate::plain_param::PlainParam;
pub use crate::pooler::Pooler;
pub use crate::provision::Provisioned;
pub use crate::route::AsyncFunc;
pub use crate::scope::{SessionScope, TenantScope};
pub use crate::set::{ReplicaSet, Status, TopologyChange};
pub use crate::tenant::{NameError, Tenant, TenantError};
pub use crate::tls::SslMode;
pub use crate::url::DatabaseUrl;
pub use diesel_async::AsyncPgConnection;
