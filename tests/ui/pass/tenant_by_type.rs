//! The tenant that scopes a method is the parameter of type `&Tenant`,
//! decided by type: under an alias, with any name and lifetime, behind a
//! pattern. A type of the application's own named `Tenant` is an ordinary
//! parameter.

use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_replica::{ReplicaSet, ReplicatedRepo, read_only, write};

type Org = diesel_replica::Tenant;
type OrgRef<'a> = &'a diesel_replica::Tenant;

/// The application's own type, which happens to be named `Tenant`.
mod app {
    #[derive(Clone)]
    pub struct Tenant {
        pub id: i64,
    }
}

use app::Tenant;

#[derive(ReplicatedRepo)]
struct Db {
    replicas: ReplicaSet,
}

#[derive(Debug)]
struct AppError;

impl From<diesel_replica::Error> for AppError {
    fn from(_: diesel_replica::Error) -> Self {
        Self
    }
}

impl From<diesel::result::Error> for AppError {
    fn from(_: diesel::result::Error) -> Self {
        Self
    }
}

fn one() -> diesel::dsl::select<diesel::expression::SqlLiteral<diesel::sql_types::Integer>> {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1"))
}

impl Db {
    #[read_only]
    async fn by_alias(&self, conn: &mut AsyncPgConnection, org: &Org) -> diesel::QueryResult<i32> {
        let _ = org;
        one().get_result(conn).await
    }

    #[read_only(primary)]
    async fn by_alias_of_the_reference<'a>(
        &self,
        conn: &mut AsyncPgConnection,
        id: i64,
        org: OrgRef<'a>,
    ) -> Result<i32, AppError> {
        let _ = (id, org);
        Ok(one().get_result(conn).await?)
    }

    #[write]
    async fn unnamed_and_destructured(
        &self,
        conn: &mut AsyncPgConnection,
        _: &diesel_replica::Tenant,
        (a, b): (i32, i32),
    ) -> Result<i32, diesel::result::Error> {
        let n: i32 = one().get_result(conn).await?;
        Ok(n + a + b)
    }

    /// Not scoped: `app::Tenant` is not `diesel_replica::Tenant`.
    #[read_only]
    async fn own_tenant_type(&self, conn: &mut AsyncPgConnection, tenant: &Tenant) -> diesel::QueryResult<i64> {
        let n: i32 = one().get_result(conn).await?;
        Ok(i64::from(n) + tenant.id)
    }

    #[write]
    async fn own_tenant_type_by_value(&self, conn: &mut AsyncPgConnection, tenant: Tenant) -> diesel::QueryResult<i64> {
        let n: i32 = one().get_result(conn).await?;
        Ok(i64::from(n) + tenant.id)
    }
}

fn assert_send<T: Send>(_: &T) {}

#[allow(dead_code)]
async fn calls(db: Db, org: Org) -> Result<(), AppError> {
    let _: i32 = db.by_alias(&org).await?;
    let _: i32 = db.by_alias_of_the_reference(1, &org).await?;
    let _: i32 = db.unnamed_and_destructured(&org, (1, 2)).await?;
    let _: i64 = db.own_tenant_type(&Tenant { id: 1 }).await?;
    let _: i64 = db.own_tenant_type_by_value(Tenant { id: 1 }).await?;
    assert_send(&db.by_alias(&org));
    Ok(())
}

fn main() {}
