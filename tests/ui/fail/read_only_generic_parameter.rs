//! A generic parameter could carry a tenant past the type check.

use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_replica::{ReplicaSet, ReplicatedRepo, read_only};

#[derive(ReplicatedRepo)]
struct Db {
    replicas: ReplicaSet,
}

fn one() -> diesel::dsl::select<diesel::expression::SqlLiteral<diesel::sql_types::Integer>> {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1"))
}

impl Db {
    #[read_only]
    async fn generic<'a, T: Sync>(&self, conn: &mut AsyncPgConnection, name: &'a str, key: &'a T) -> diesel::QueryResult<i32> {
        let _ = (name, key);
        one().get_result(conn).await
    }

    #[read_only]
    async fn impl_trait(&self, conn: &mut AsyncPgConnection, name: impl AsRef<str> + Sync) -> diesel::QueryResult<i32> {
        let _ = name.as_ref();
        one().get_result(conn).await
    }
}

fn main() {}
