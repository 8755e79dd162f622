//! Forms that hold a tenant but cannot scope the call, each refused.

use std::sync::Arc;

use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_replica::{ReplicaSet, ReplicatedRepo, Tenant, write};

#[derive(ReplicatedRepo)]
struct Db {
    replicas: ReplicaSet,
}

type Org = Tenant;

fn one() -> diesel::dsl::select<diesel::expression::SqlLiteral<diesel::sql_types::Integer>> {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1"))
}

impl Db {
    #[write]
    async fn by_mut(&self, conn: &mut AsyncPgConnection, tenant: &mut Org) -> diesel::QueryResult<i32> {
        let _ = tenant;
        one().get_result(conn).await
    }

    #[write]
    async fn shared(&self, conn: &mut AsyncPgConnection, tenant: Arc<Tenant>) -> diesel::QueryResult<i32> {
        let _ = tenant;
        one().get_result(conn).await
    }

    #[write]
    async fn several(&self, conn: &mut AsyncPgConnection, tenants: &[Tenant]) -> diesel::QueryResult<i32> {
        let _ = tenants;
        one().get_result(conn).await
    }

    #[write]
    async fn twice_borrowed(&self, conn: &mut AsyncPgConnection, tenant: &&Tenant) -> diesel::QueryResult<i32> {
        let _ = tenant;
        one().get_result(conn).await
    }
}

fn main() {}
