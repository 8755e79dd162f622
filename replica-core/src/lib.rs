//! Runtime of [diesel-replica](https://docs.rs/diesel-replica): configuration,
//! one writer pool and any number of replica pools, and the routing of each
//! query to the right one.
//!
//! Most applications depend on `diesel-replica`, which re-exports this crate.
#![forbid(unsafe_code)]

mod balance;
mod config;
mod error;
mod node;
mod provision;
mod session;
mod set;
mod tenant;
mod url;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use crate::balance::Balance;
pub use crate::config::{Config, HealthConfig, PoolConfig};
pub use crate::error::{ConfigError, Error};
pub use crate::node::{Health, NodeStatus, Role};
pub use crate::provision::Provisioned;
pub use crate::set::{AsyncFunc, ReplicaSet, Status, TenantScope};
pub use crate::tenant::{Tenant, TenantError};
pub use crate::url::DatabaseUrl;
pub use diesel_async::AsyncPgConnection;
