use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_replica::{ReplicaSet, ReplicatedRepo, read_only};

#[derive(ReplicatedRepo)]
struct Db {
    replicas: ReplicaSet,
}

/// Neither `Clone` nor `Copy`.
struct Ticket(i32);

fn redeemed(ticket: Ticket) -> String {
    ticket.0.to_string()
}

impl Db {
    // A read may run twice (on another replica, when its node fails), so
    // what its body consumes must be `Clone`.
    #[read_only]
    async fn redeem(&self, conn: &mut AsyncPgConnection, ticket: Ticket) -> diesel::QueryResult<i32> {
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(&redeemed(ticket)))
            .get_result(conn)
            .await
    }
}

fn main() {}
