use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_replica::{ReplicaSet, ReplicatedRepo, Tenant, read_only};

#[derive(ReplicatedRepo)]
struct Db {
    replicas: ReplicaSet,
}

impl Db {
    // Without a tenant, this would read the shared schemas.
    #[read_only]
    async fn one(&self, conn: &mut AsyncPgConnection, tenant: Option<&Tenant>) -> diesel::QueryResult<i32> {
        let _ = tenant;
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1")).get_result(conn).await
    }
}

fn main() {}
