use diesel_replica::{ReplicaSet, ReplicatedRepo};

struct Client;

#[derive(ReplicatedRepo)]
struct Db {
    replicas: ReplicaSet,
    client: Client,
}

fn main() {}
