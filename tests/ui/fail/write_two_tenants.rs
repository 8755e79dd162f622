use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_replica::{ReplicaSet, ReplicatedRepo, Tenant, write};

#[derive(ReplicatedRepo)]
struct Db {
    replicas: ReplicaSet,
}

type Org = Tenant;

impl Db {
    #[write]
    async fn copy(&self, conn: &mut AsyncPgConnection, from: &Tenant, id: i64, to: &Org) -> diesel::QueryResult<i32> {
        let _ = (from, id, to);
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1")).get_result(conn).await
    }
}

fn main() {}
