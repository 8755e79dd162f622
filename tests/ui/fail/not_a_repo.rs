use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_replica::read_only;

struct Plain;

impl Plain {
    #[read_only]
    async fn one(&self, conn: &mut AsyncPgConnection) -> diesel::QueryResult<i32> {
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1")).get_result(conn).await
    }
}

fn main() {}
