//! `Error` here is diesel's: the macro cannot tell from the spelling, and
//! the method cannot return routing errors in it.

use diesel::result::Error;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_replica::{ReplicaSet, ReplicatedRepo, read_only, write};

#[derive(ReplicatedRepo)]
struct Db {
    replicas: ReplicaSet,
}

type DbResult<T> = Result<T, Error>;

fn one() -> diesel::dsl::select<diesel::expression::SqlLiteral<diesel::sql_types::Integer>> {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1"))
}

impl Db {
    #[read_only]
    async fn read(&self, conn: &mut AsyncPgConnection) -> Result<i32, Error> {
        one().get_result(conn).await
    }

    #[write]
    async fn write(&self, conn: &mut AsyncPgConnection) -> DbResult<i32> {
        one().get_result(conn).await
    }
}

fn main() {}
