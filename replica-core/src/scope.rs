//! Calls scoped to a tenant's schema ([`TenantScope`]) or to a
//! read-your-writes session ([`SessionScope`]), or both.

use std::future::Future;

use diesel::QueryResult;
use diesel_async::AsyncPgConnection;

use crate::consistency::ReadYourWrites;
use crate::error::Error;
use crate::route::{AsyncFunc, Body, Call, Route};
use crate::set::{ReplicaSet, diesel_result};
use crate::tenant::Tenant;

impl ReplicaSet {
    /// Scopes reads and transactions to `tenant`: each runs with
    /// `search_path` set to the tenant's schema, then the shared schemas
    /// (`shared_schemas`, default `public`), for that transaction only, on
    /// whichever node serves it. A tenant whose schema does not exist gets
    /// [`Error::UnknownTenant`], never the shared schemas' rows; a read
    /// that meets a replica without the schema yet (it was just provisioned
    /// and the replica lags) tries the next node, as for a failed one.
    pub fn tenant<'a>(&'a self, tenant: &'a Tenant) -> TenantScope<'a> {
        TenantScope {
            set: self,
            tenant,
            session: None,
        }
    }

    /// Scopes calls to a read-your-writes session: each write records its
    /// [`WriteToken`](crate::WriteToken) in `session`, and each read runs
    /// where the session's latest write is visible: on a replica known to
    /// have replayed it, else on one that replays it within
    /// `read_your_writes_wait`, else on the writer, `READ ONLY`.
    pub fn session<'a>(&'a self, session: &'a ReadYourWrites) -> SessionScope<'a> {
        SessionScope { set: self, session }
    }
}

/// A replica set scoped to a read-your-writes session, from
/// [`ReplicaSet::session`].
#[derive(Clone, Copy)]
pub struct SessionScope<'a> {
    set: &'a ReplicaSet,
    session: &'a ReadYourWrites,
}

impl<'a> SessionScope<'a> {
    /// The session's calls, in `tenant`'s schema.
    pub fn tenant(&self, tenant: &'a Tenant) -> TenantScope<'a> {
        TenantScope {
            set: self.set,
            tenant,
            session: Some(self.session),
        }
    }

    /// [`ReplicaSet::read`], where the session's writes are visible.
    ///
    /// # Errors
    /// As [`ReplicaSet::read`].
    pub fn read<T, F>(&self, f: F) -> impl Future<Output = Result<T, Error>> + Send
    where
        F: for<'r> AsyncFnOnce(&'r mut AsyncPgConnection) -> QueryResult<T>
            + for<'r> AsyncFunc<&'r mut AsyncPgConnection, QueryResult<T>, Fut: Send>
            + Clone
            + Send,
        T: Send,
    {
        self.set.read_query(Route::Read, Some(self.session), f)
    }

    /// [`ReplicaSet::read_snapshot`], where the session's writes are
    /// visible.
    ///
    /// # Errors
    /// As [`ReplicaSet::read`].
    pub fn read_snapshot<T, F>(&self, f: F) -> impl Future<Output = Result<T, Error>> + Send
    where
        F: for<'r> AsyncFnOnce(&'r mut AsyncPgConnection) -> QueryResult<T>
            + for<'r> AsyncFunc<&'r mut AsyncPgConnection, QueryResult<T>, Fut: Send>
            + Clone
            + Send,
        T: Send,
    {
        self.set
            .read_query(Route::ReadSnapshot, Some(self.session), f)
    }

    /// [`ReplicaSet::write`], recording the write's token in the session.
    ///
    /// # Errors
    /// As [`ReplicaSet::write`].
    pub fn write<T, F>(&self, f: F) -> impl Future<Output = Result<T, Error>> + Send
    where
        F: for<'r> AsyncFnOnce(&'r mut AsyncPgConnection) -> QueryResult<T>
            + for<'r> AsyncFunc<&'r mut AsyncPgConnection, QueryResult<T>, Fut: Send>
            + Send,
        T: Send,
    {
        self.set
            .writer_query(Route::Write, None, Some(self.session), f)
    }

    /// [`ReplicaSet::transaction`], recording the write's token in the
    /// session.
    ///
    /// # Errors
    /// As [`ReplicaSet::transaction`].
    pub fn transaction<T, F>(&self, f: F) -> impl Future<Output = Result<T, Error>> + Send
    where
        F: for<'r> AsyncFnOnce(&'r mut AsyncPgConnection) -> QueryResult<T>
            + for<'r> AsyncFunc<&'r mut AsyncPgConnection, QueryResult<T>, Fut: Send>
            + Send,
        T: Send,
    {
        self.set
            .writer_query(Route::Transaction, None, Some(self.session), f)
    }
}

/// A replica set scoped to one tenant, from [`ReplicaSet::tenant`]. Its
/// calls are those of the set, each inside a transaction whose
/// `search_path` is the tenant's.
#[derive(Clone, Copy)]
pub struct TenantScope<'a> {
    set: &'a ReplicaSet,
    tenant: &'a Tenant,
    session: Option<&'a ReadYourWrites>,
}

impl<'a> TenantScope<'a> {
    /// The tenant's calls, in a read-your-writes session (see
    /// [`ReplicaSet::session`]).
    pub fn session(&self, session: &'a ReadYourWrites) -> TenantScope<'a> {
        TenantScope {
            session: Some(session),
            ..*self
        }
    }

    /// [`ReplicaSet::read`] in the tenant's schema.
    ///
    /// # Errors
    /// As [`ReplicaSet::read`], and [`Error::UnknownTenant`].
    pub fn read<T, F>(&self, f: F) -> impl Future<Output = Result<T, Error>> + Send
    where
        F: for<'r> AsyncFnOnce(&'r mut AsyncPgConnection) -> QueryResult<T>
            + for<'r> AsyncFunc<&'r mut AsyncPgConnection, QueryResult<T>, Fut: Send>
            + Clone
            + Send,
        T: Send,
    {
        self.read_on(Route::Read, f)
    }

    /// [`ReplicaSet::read_snapshot`] in the tenant's schema.
    ///
    /// # Errors
    /// As [`ReplicaSet::read`], and [`Error::UnknownTenant`].
    pub fn read_snapshot<T, F>(&self, f: F) -> impl Future<Output = Result<T, Error>> + Send
    where
        F: for<'r> AsyncFnOnce(&'r mut AsyncPgConnection) -> QueryResult<T>
            + for<'r> AsyncFunc<&'r mut AsyncPgConnection, QueryResult<T>, Fut: Send>
            + Clone
            + Send,
        T: Send,
    {
        self.read_on(Route::ReadSnapshot, f)
    }

    fn read_on<T, F>(&self, route: Route, f: F) -> impl Future<Output = Result<T, Error>> + Send
    where
        F: Body<T, diesel::result::Error> + Clone,
        T: Send,
    {
        let scope = self.set.scope(self.tenant);
        async move {
            let call = Call::new(route, Some(&scope));
            diesel_result(self.set.read_call(call, self.session, f).await, route)
        }
    }

    /// [`ReplicaSet::read_fresh`] in the tenant's schema.
    ///
    /// # Errors
    /// As [`ReplicaSet::read_fresh`], and [`Error::UnknownTenant`].
    pub fn read_fresh<T, F>(&self, f: F) -> impl Future<Output = Result<T, Error>> + Send
    where
        F: for<'r> AsyncFnOnce(&'r mut AsyncPgConnection) -> QueryResult<T>
            + for<'r> AsyncFunc<&'r mut AsyncPgConnection, QueryResult<T>, Fut: Send>
            + Send,
        T: Send,
    {
        self.set
            .writer_query(Route::ReadFresh, Some(self.set.scope(self.tenant)), None, f)
    }

    /// [`ReplicaSet::transaction`] in the tenant's schema. (There is no
    /// tenant-scoped autocommit `write`: the scope lives in a transaction.)
    ///
    /// # Errors
    /// As [`ReplicaSet::transaction`], and [`Error::UnknownTenant`].
    pub fn transaction<T, F>(&self, f: F) -> impl Future<Output = Result<T, Error>> + Send
    where
        F: for<'r> AsyncFnOnce(&'r mut AsyncPgConnection) -> QueryResult<T>
            + for<'r> AsyncFunc<&'r mut AsyncPgConnection, QueryResult<T>, Fut: Send>
            + Send,
        T: Send,
    {
        self.set.writer_query(
            Route::Transaction,
            Some(self.set.scope(self.tenant)),
            self.session,
            f,
        )
    }
}
