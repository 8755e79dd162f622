use diesel_async::AsyncPgConnection;
use diesel_replica::{ReplicaSet, ReplicatedRepo, read_only};

#[derive(ReplicatedRepo)]
struct Db {
    replicas: ReplicaSet,
}

impl Db {
    #[read_only]
    async fn nothing(&self, conn: &mut AsyncPgConnection) {
        let _ = conn;
    }
}

fn main() {}
