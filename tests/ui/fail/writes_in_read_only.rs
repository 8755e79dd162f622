use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_replica::{ReplicaSet, ReplicatedRepo, read_only};

#[derive(ReplicatedRepo)]
struct Db {
    replicas: ReplicaSet,
}

diesel::table! {
    users (id) {
        id -> Int8,
        name -> Text,
    }
}

use diesel::prelude::*;

impl Db {
    #[read_only]
    async fn sneaky(&self, conn: &mut AsyncPgConnection) -> diesel::QueryResult<usize> {
        diesel::insert_into(users::table).values(users::name.eq("a")).execute(conn).await?;
        diesel::update(users::table).set(users::name.eq("b")).execute(conn).await?;
        diesel::delete(users::table).execute(conn).await?;
        diesel::sql_query("  truncate users").execute(conn).await?;
        diesel::sql_query("SELECT 1").execute(conn).await
    }
}

fn main() {}
