#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub use replica_core::*;
pub use replica_macros::{ReplicatedRepo, read_only, write};
