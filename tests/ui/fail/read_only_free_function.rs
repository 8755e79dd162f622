use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_replica::{ReplicaSet, ReplicatedRepo, read_only};

#[derive(ReplicatedRepo)]
struct Db {
    replicas: ReplicaSet,
}

#[read_only]
async fn one(conn: &mut AsyncPgConnection) -> diesel::QueryResult<i32> {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1")).get_result(conn).await
}

fn main() {}
