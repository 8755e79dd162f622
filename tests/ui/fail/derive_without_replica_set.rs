use diesel_replica::ReplicatedRepo;

#[derive(ReplicatedRepo)]
struct Db {
    name: String,
}

fn main() {}
