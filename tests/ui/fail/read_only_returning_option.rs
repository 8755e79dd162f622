use diesel::OptionalExtension;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_replica::{ReplicaSet, ReplicatedRepo, read_only};

#[derive(ReplicatedRepo)]
struct Db {
    replicas: ReplicaSet,
}

impl Db {
    #[read_only]
    async fn maybe(&self, conn: &mut AsyncPgConnection) -> Option<i32> {
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1"))
            .get_result(conn)
            .await
            .optional()
            .ok()
            .flatten()
    }
}

fn main() {}
