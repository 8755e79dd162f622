use diesel_replica::{ReplicaSet, ReplicatedRepo};

#[derive(ReplicatedRepo)]
struct Db<T> {
    replicas: ReplicaSet,
    extra: T,
}

fn main() {}
