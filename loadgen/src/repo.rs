//! The repo the workers use, its queries, and the rows they return: each
//! row says which server ran the query, as the server reports it.

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Bool, Integer, Nullable, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_replica::{ReadYourWrites, ReplicaSet, ReplicatedRepo, Tenant, read_only, write};
use diesel_replica_testkit::server_columns;

// Each query returns the server that ran it, as the server sees it (see
// `diesel_replica_testkit::server_columns!`): `host`, NULL over a unix socket, and
// `port`.

/// Which node this is, as in the queries below.
pub(crate) const WHO_AM_I: &str = concat!("SELECT ", server_columns!());
pub(crate) const READ_ITEM: &str = concat!(
    "SELECT payload, ",
    server_columns!(),
    " FROM loadgen_items WHERE id = $1"
);
pub(crate) const WRITE_ITEM: &str = concat!(
    "UPDATE loadgen_items SET payload = $1, updated_at = now() WHERE id = $2 RETURNING ",
    server_columns!()
);
// With `--read-your-writes`: the read also says whether the server is a
// replica (in recovery) or the writer.
pub(crate) const READ_OWN_WRITE: &str = concat!(
    "SELECT payload, pg_catalog.pg_is_in_recovery() AS in_recovery, ",
    server_columns!(),
    " FROM loadgen_items WHERE id = $1"
);
// The same with `--tenants`, in the tenant's own `loadgen_items`, also
// returning the tenant that the row belongs to.
pub(crate) const TENANT_READ_ITEM: &str = concat!(
    "SELECT tenant, payload, ",
    server_columns!(),
    " FROM loadgen_items WHERE id = $1"
);
pub(crate) const TENANT_WRITE_ITEM: &str = concat!(
    "UPDATE loadgen_items SET payload = $1, updated_at = now() WHERE id = $2 \
     RETURNING tenant, ",
    server_columns!()
);

/// The repo the workers use: the replica set and the run's two queries.
#[derive(ReplicatedRepo, Clone)]
pub(crate) struct Items {
    replicas: ReplicaSet,
}

impl Items {
    /// One row by id, on a replica.
    #[read_only]
    pub(crate) async fn item(
        &self,
        conn: &mut AsyncPgConnection,
        id: i64,
    ) -> diesel::QueryResult<ReadRow> {
        read_item(conn, id).await
    }

    /// Rewrites one row, on the writer.
    #[write]
    pub(crate) async fn touch(
        &self,
        conn: &mut AsyncPgConnection,
        id: i64,
        payload: &str,
    ) -> diesel::QueryResult<NodeRow> {
        write_item(conn, id, payload).await
    }

    /// Rewrites one row, on the writer, recording the write's token in
    /// `rw` (with `--read-your-writes`).
    #[write]
    pub(crate) async fn touch_in(
        &self,
        conn: &mut AsyncPgConnection,
        rw: &ReadYourWrites,
        id: i64,
        payload: &str,
    ) -> diesel::QueryResult<NodeRow> {
        diesel::sql_query(WRITE_ITEM)
            .bind::<Text, _>(payload)
            .bind::<BigInt, _>(id)
            .get_result(conn)
            .await
    }

    /// One row by id where the write of `rw`'s token is visible: a replica
    /// known to have replayed it (or that does so within the library's
    /// wait), else the writer (with `--read-your-writes`).
    #[read_only]
    pub(crate) async fn item_after(
        &self,
        conn: &mut AsyncPgConnection,
        rw: &ReadYourWrites,
        id: i64,
    ) -> diesel::QueryResult<OwnReadRow> {
        diesel::sql_query(READ_OWN_WRITE)
            .bind::<BigInt, _>(id)
            .get_result(conn)
            .await
    }

    /// One row by id in `tenant`'s schema, on a replica.
    #[read_only]
    pub(crate) async fn tenant_item(
        &self,
        conn: &mut AsyncPgConnection,
        tenant: &Tenant,
        id: i64,
    ) -> diesel::QueryResult<TenantReadRow> {
        let _ = tenant;
        diesel::sql_query(TENANT_READ_ITEM)
            .bind::<BigInt, _>(id)
            .get_result(conn)
            .await
    }

    /// Rewrites one row in `tenant`'s schema, on the writer.
    #[write]
    pub(crate) async fn tenant_touch(
        &self,
        conn: &mut AsyncPgConnection,
        tenant: &Tenant,
        id: i64,
        payload: &str,
    ) -> diesel::QueryResult<TenantNodeRow> {
        let _ = tenant;
        diesel::sql_query(TENANT_WRITE_ITEM)
            .bind::<Text, _>(payload)
            .bind::<BigInt, _>(id)
            .get_result(conn)
            .await
    }
}

/// The read of [`Items::item`] on `conn`, whatever it is connected to:
/// also what `--through` runs, bare, on its plain pool.
pub(crate) async fn read_item(
    conn: &mut AsyncPgConnection,
    id: i64,
) -> diesel::QueryResult<ReadRow> {
    diesel::sql_query(READ_ITEM)
        .bind::<BigInt, _>(id)
        .get_result(conn)
        .await
}

/// The write of [`Items::touch`] on `conn` (as [`read_item`]).
pub(crate) async fn write_item(
    conn: &mut AsyncPgConnection,
    id: i64,
    payload: &str,
) -> diesel::QueryResult<NodeRow> {
    diesel::sql_query(WRITE_ITEM)
        .bind::<Text, _>(payload)
        .bind::<BigInt, _>(id)
        .get_result(conn)
        .await
}

/// The row a read returns.
#[derive(QueryableByName)]
pub(crate) struct ReadRow {
    #[diesel(sql_type = Text)]
    #[allow(
        dead_code,
        reason = "fetched like an application would, never inspected"
    )]
    pub(crate) payload: String,
    #[diesel(embed)]
    pub(crate) node: NodeRow,
}

/// The row a read-your-writes read returns: what it saw, and where.
#[derive(QueryableByName)]
pub(crate) struct OwnReadRow {
    #[diesel(sql_type = Text)]
    pub(crate) payload: String,
    /// Served by a replica (else the writer).
    #[diesel(sql_type = Bool)]
    pub(crate) in_recovery: bool,
    #[diesel(embed)]
    pub(crate) node: NodeRow,
}

/// The row a tenant-scoped read returns: whose row it is, and which node
/// ran it.
#[derive(QueryableByName)]
pub(crate) struct TenantReadRow {
    #[diesel(sql_type = Text)]
    pub(crate) tenant: String,
    #[diesel(embed)]
    pub(crate) read: ReadRow,
}

/// The row a tenant-scoped write returns: whose row it is, and which node
/// ran it.
#[derive(QueryableByName)]
pub(crate) struct TenantNodeRow {
    #[diesel(sql_type = Text)]
    pub(crate) tenant: String,
    #[diesel(embed)]
    pub(crate) node: NodeRow,
}

/// The row a write (or the replica wait) returns: which node ran it.
#[derive(QueryableByName)]
pub(crate) struct NodeRow {
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) host: Option<String>,
    #[diesel(sql_type = Integer)]
    pub(crate) port: i32,
}

impl NodeRow {
    /// The node's `HOST:PORT`.
    pub(crate) fn key(&self) -> String {
        node_key(self.host.as_deref(), self.port)
    }
}

/// `HOST:PORT`, with IPv6 hosts in brackets and `local` for a unix socket.
pub(crate) fn node_key(host: Option<&str>, port: i32) -> String {
    match host {
        Some(host) if host.contains(':') => format!("[{host}]:{port}"),
        Some(host) => format!("{host}:{port}"),
        None => format!("local:{port}"),
    }
}
