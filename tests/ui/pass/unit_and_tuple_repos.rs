//! A unit struct keeps its replica set in a static; a tuple struct holds it.

use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_replica::{ReplicaSet, ReplicatedRepo, read_only};

#[derive(ReplicatedRepo)]
struct Global;

#[derive(ReplicatedRepo)]
struct Wrapped(ReplicaSet, u32);

impl Global {
    #[read_only]
    async fn one(&self, conn: &mut AsyncPgConnection) -> diesel::QueryResult<i32> {
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1")).get_result(conn).await
    }
}

impl Wrapped {
    #[read_only]
    async fn two(&self, conn: &mut AsyncPgConnection) -> diesel::QueryResult<i32> {
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("2")).get_result(conn).await
    }
}

fn main() {
    // Before `Global::from_env()` ran, its methods report it.
    let err = Global.replica_set().err().expect("not connected yet");
    assert_eq!(
        err.to_string(),
        "`Global` is not connected: call `Global::from_env` or `Global::connect` first"
    );
    let _ = (Global.one(), |w: Wrapped| async move { (w.two().await, w.1) });
}
