use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_replica::{ReadYourWrites, ReplicaSet, ReplicatedRepo, write};

#[derive(ReplicatedRepo)]
struct Db {
    replicas: ReplicaSet,
}

type Rw = ReadYourWrites;

impl Db {
    #[write]
    async fn put(&self, conn: &mut AsyncPgConnection, first: &ReadYourWrites, second: &Rw) -> diesel::QueryResult<i32> {
        let _ = (first, second);
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1")).get_result(conn).await
    }
}

fn main() {}
