//! Which server ran a query, as the server itself reports it.

use diesel::QueryableByName;
use diesel::sql_types::{Bool, Integer, Nullable, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// The select-list columns that name the server running a query, as that
/// server reports it: `host` (`host(inet_server_addr())`, without the `/32`
/// that `inet_server_addr()::text` would add; NULL over a unix socket) and
/// `port` (`inet_server_port()`, or the `port` setting over a unix socket,
/// where the function is NULL).
///
/// A macro rather than a constant so that it splices into other query text
/// with `concat!`, as in [`WHO_SERVED`]:
///
/// ```
/// const READ: &str = concat!(
///     "SELECT payload, ",
///     diesel_replica_testkit::server_columns!(),
///     " FROM items WHERE id = $1"
/// );
/// assert!(READ.contains("inet_server_port()"));
/// ```
#[macro_export]
macro_rules! server_columns {
    () => {
        "host(inet_server_addr()) AS host, \
         coalesce(inet_server_port(), current_setting('port')::int) AS port"
    };
}

/// A query returning a [`Served`]: which server answered, whether it is a
/// replica, and whether the transaction is read-only.
pub const WHO_SERVED: &str = concat!(
    "SELECT ",
    server_columns!(),
    ", pg_is_in_recovery() AS in_recovery, \
     current_setting('transaction_read_only') AS read_only"
);

/// Which server answered, asked of the server itself: the row of
/// [`WHO_SERVED`].
#[derive(QueryableByName, Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// `host(inet_server_addr())`: `None` over a unix socket.
    #[diesel(sql_type = Nullable<Text>)]
    pub host: Option<String>,
    /// `inet_server_port()` (the `port` setting over a unix socket).
    #[diesel(sql_type = Integer)]
    pub port: i32,
    /// `pg_is_in_recovery()`: true on a replica.
    #[diesel(sql_type = Bool)]
    pub in_recovery: bool,
    /// `transaction_read_only`: `on` inside a READ ONLY transaction.
    #[diesel(sql_type = Text)]
    pub read_only: String,
}

/// Runs [`WHO_SERVED`] on `conn`: which server the connection is on, for
/// `db.read(who_served)` and the like.
pub async fn who_served(conn: &mut AsyncPgConnection) -> diesel::QueryResult<Served> {
    diesel::sql_query(WHO_SERVED).get_result(conn).await
}
