use diesel_async::AsyncPgConnection;
use diesel_replica::{ReplicaSet, ReplicatedRepo, read_only};

#[derive(ReplicatedRepo)]
struct Db {
    replicas: ReplicaSet,
}

impl Db {
    #[read_only]
    fn one(&self, conn: &mut AsyncPgConnection) -> diesel::QueryResult<i32> {
        let _ = conn;
        Ok(1)
    }
}

fn main() {}
