use std::sync::Arc;

use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_replica::{ReadYourWrites, ReplicaSet, ReplicatedRepo, read_only};

#[derive(ReplicatedRepo)]
struct Db {
    replicas: ReplicaSet,
}

impl Db {
    #[read_only]
    async fn by_value(&self, conn: &mut AsyncPgConnection, rw: ReadYourWrites) -> diesel::QueryResult<i32> {
        let _ = rw;
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1")).get_result(conn).await
    }

    #[read_only]
    async fn maybe(&self, conn: &mut AsyncPgConnection, rw: Option<&ReadYourWrites>) -> diesel::QueryResult<i32> {
        let _ = rw;
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1")).get_result(conn).await
    }

    #[read_only]
    async fn shared(&self, conn: &mut AsyncPgConnection, rw: Arc<ReadYourWrites>) -> diesel::QueryResult<i32> {
        let _ = rw;
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1")).get_result(conn).await
    }
}

fn main() {}
