use diesel_replica::ReplicatedRepo;

#[derive(ReplicatedRepo)]
enum Db {
    Primary,
}

fn main() {}
