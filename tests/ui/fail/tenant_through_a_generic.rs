//! A tenant or a session passed through a generic or `impl Trait`
//! parameter, which the method cannot see, is refused at the call; a trait
//! object, which no bound reaches, is refused on the parameter.

use std::fmt::Display;
use std::sync::Arc;

use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_replica::{ReadYourWrites, ReplicaSet, ReplicatedRepo, Tenant, read_only, write};

#[derive(ReplicatedRepo)]
struct Db {
    replicas: ReplicaSet,
}

fn one() -> diesel::dsl::select<diesel::expression::SqlLiteral<diesel::sql_types::Integer>> {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1"))
}

impl Db {
    #[read_only]
    async fn named(&self, conn: &mut AsyncPgConnection, name: impl Display) -> diesel::QueryResult<i32> {
        let _ = name.to_string();
        one().get_result(conn).await
    }

    #[write]
    async fn keyed<'a, T: ?Sized + Sync>(&self, conn: &mut AsyncPgConnection, key: &'a T) -> diesel::QueryResult<i32> {
        let _ = key;
        one().get_result(conn).await
    }

    #[read_only]
    async fn shown(&self, conn: &mut AsyncPgConnection, label: &dyn Display) -> diesel::QueryResult<i32> {
        let _ = label.to_string();
        one().get_result(conn).await
    }
}

async fn calls(db: &Db, tenant: &Tenant, session: &ReadYourWrites) {
    let _ = db.named(tenant).await;
    let _ = db.keyed(&[Arc::new(tenant.clone())]).await;
    let _ = db.keyed(session).await;
}

fn main() {
    let _ = calls;
}
