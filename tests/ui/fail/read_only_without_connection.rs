use diesel_replica::{ReplicaSet, ReplicatedRepo, read_only};

#[derive(ReplicatedRepo)]
struct Db {
    replicas: ReplicaSet,
}

impl Db {
    #[read_only]
    async fn double(&self, x: i32) -> diesel::QueryResult<i32> {
        Ok(x * 2)
    }
}

fn main() {}
