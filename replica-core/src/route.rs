//! What a call asks for: where and how its body runs ([`Route`]), in which
//! tenant's scope ([`Call`]), and the shape of the body itself
//! ([`AsyncFunc`], [`Body`]).

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use diesel_async::AsyncPgConnection;

use crate::tenant::Scope;

/// An async closure taking a connection whose future is nameable, so that
/// bounds such as `Send` can be put on it.
///
/// Implemented for every `async |conn| ...` closure; it exists because
/// `AsyncFnOnce` cannot yet say that its future is `Send` (the same device
/// as diesel-async's transactions). Never implement it by hand.
pub trait AsyncFunc<T, R>:
    AsyncFnOnce(T) -> R + FnOnce(T) -> <Self as AsyncFunc<T, R>>::Fut
{
    /// The future the closure returns.
    type Fut: Future<Output = R>;
}

impl<F, T, Fut, R> AsyncFunc<T, R> for F
where
    F: AsyncFnOnce(T) -> R + FnOnce(T) -> Fut,
    Fut: Future<Output = R>,
{
    type Fut = Fut;
}

/// A routed body: an async closure of a connection, returning
/// `Result<T, E>`, whose future is `Send`. Implemented for every such
/// closure; the one bound the routing puts on what it runs. Public for the
/// macros only.
#[doc(hidden)]
pub trait Body<T, E>:
    for<'r> AsyncFunc<&'r mut AsyncPgConnection, Result<T, E>, Fut: Send> + Send
{
}

impl<T, E, F> Body<T, E> for F where
    F: for<'r> AsyncFunc<&'r mut AsyncPgConnection, Result<T, E>, Fut: Send> + Send
{
}

/// Where and how a routed closure runs. Public for the macros only.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// A replica (the writer when there is none), on a read-only session.
    Read,
    /// As [`Route::Read`], in a `REPEATABLE READ READ ONLY` transaction: one
    /// snapshot for every statement of the body.
    ReadSnapshot,
    /// The writer, `READ ONLY` transaction.
    ReadFresh,
    /// The writer, transaction.
    Transaction,
    /// The writer, no transaction.
    Write,
}

impl Route {
    /// Every route, in declaration order (see [`Route::index`]).
    #[cfg(feature = "metrics")]
    pub(crate) const ALL: [Route; 5] = [
        Self::Read,
        Self::ReadSnapshot,
        Self::ReadFresh,
        Self::Transaction,
        Self::Write,
    ];

    /// Its place in [`Route::ALL`].
    #[cfg(feature = "metrics")]
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Its name in spans and metrics.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::ReadSnapshot => "read_snapshot",
            Self::ReadFresh => "read_fresh",
            Self::Transaction => "transaction",
            Self::Write => "write",
        }
    }

    /// Whether the read path routes it: a replica, else the writer.
    pub(crate) fn reads_on_replicas(self) -> bool {
        matches!(self, Self::Read | Self::ReadSnapshot)
    }

    /// Whether the body may not write: a write fails it with
    /// [`Error::ReadOnlyViolation`](crate::Error::ReadOnlyViolation).
    pub(crate) fn is_read_only(self) -> bool {
        matches!(self, Self::Read | Self::ReadSnapshot | Self::ReadFresh)
    }
}

/// One call: its route, the tenant whose schema it runs in, and what it
/// needs for read-your-writes.
#[derive(Clone, Copy)]
pub(crate) struct Call<'a> {
    pub(crate) route: Route,
    pub(crate) scope: Option<&'a Scope<'a>>,
    /// A read on a replica: wait until the replica has replayed a write
    /// before the body runs.
    pub(crate) replay_wait: Option<ReplayWait>,
    /// A write: the WAL position a read must reach to see it goes here.
    pub(crate) token_lsn: Option<&'a AtomicU64>,
    /// The repo method's name, for macro-generated calls.
    pub(crate) operation: Option<&'static str>,
}

/// How a read waits on a replica for a write.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReplayWait {
    /// The write's WAL position.
    pub(crate) lsn: u64,
    /// The longest wait.
    pub(crate) bound: Duration,
}

impl<'a> Call<'a> {
    pub(crate) fn new(route: Route, scope: Option<&'a Scope<'a>>) -> Self {
        Self {
            route,
            scope,
            replay_wait: None,
            token_lsn: None,
            operation: None,
        }
    }

    /// The call named after the repo method that makes it.
    pub(crate) fn named(self, operation: &'static str) -> Self {
        Self {
            operation: Some(operation),
            ..self
        }
    }

    /// The operation's name: the repo method's, else the route's.
    pub(crate) fn operation(&self) -> &'static str {
        self.operation.unwrap_or(self.route.as_str())
    }
}
