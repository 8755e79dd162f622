use diesel_replica::{ReplicaSet, ReplicatedRepo};

#[derive(ReplicatedRepo)]
struct Db {
    main: ReplicaSet,
    analytics: ReplicaSet,
}

fn main() {}
