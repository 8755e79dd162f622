//! Procedural macros of [diesel-replica](https://docs.rs/diesel-replica).
//!
//! Use them through the `diesel-replica` crate, which re-exports them; the
//! generated code names only `::diesel_replica::__private`.
