//! Procedural macros of [diesel-replica](https://docs.rs/diesel-replica).
//!
//! Use them through the `diesel-replica` crate, which re-exports them and
//! documents them with examples. The generated code names only
//! `::diesel_replica::__private`.

use proc_macro::TokenStream;

mod attr;
mod expand;
mod lint;
mod model;
mod repo;

use attr::Kind;

/// Makes a struct a replicated repo: constructors (`from_env`,
/// `from_env_with_prefix`, `connect`), `replica_set()` for the explicit
/// API, and what `#[read_only]` and `#[write]` methods route through.
///
/// The struct holds one `ReplicaSet` field beside any fields of its own,
/// which the constructors fill with `Default::default()`. A struct without
/// fields keeps its set in a static, one per type and process.
#[proc_macro_derive(ReplicatedRepo)]
pub fn derive_replicated_repo(input: TokenStream) -> TokenStream {
    repo::derive(input.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Runs an `async fn(&self, conn: &mut AsyncPgConnection, ..)` method of a
/// replicated repo on a replica, on a session that refuses writes, in the
/// round trips of its own statements; callers leave the connection out.
/// `#[read_only(snapshot)]` runs it in one `REPEATABLE READ READ ONLY`
/// transaction (one snapshot for all its statements), and
/// `#[read_only(primary)]` on the writer, in a `READ ONLY` transaction.
#[proc_macro_attribute]
pub fn read_only(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::method(Kind::ReadOnly, args.into(), item.into()).into()
}

/// Runs an `async fn(&self, conn: &mut AsyncPgConnection, ..)` method of a
/// replicated repo on the writer, inside a transaction; callers leave the
/// connection out.
#[proc_macro_attribute]
pub fn write(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::method(Kind::Write, args.into(), item.into()).into()
}

#[cfg(test)]
mod tests;
