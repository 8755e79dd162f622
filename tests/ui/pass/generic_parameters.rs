//! An existing app's method shapes: `impl Trait` and generic parameters
//! compile, bounded by `PlainParam`, and take ordinary values.

use std::collections::HashMap;

use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_replica::{PlainParam, ReplicaSet, ReplicatedRepo, Tenant, read_only, write};

#[derive(ReplicatedRepo)]
struct Db {
    replicas: ReplicaSet,
}

/// A type of the app's own, which holds no tenant.
#[derive(Clone, Copy)]
struct Tier(i32);

impl From<Tier> for i32 {
    fn from(tier: Tier) -> i32 {
        tier.0
    }
}

impl PlainParam for Tier {}

fn one() -> diesel::dsl::select<diesel::expression::SqlLiteral<diesel::sql_types::Integer>> {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1"))
}

impl Db {
    #[write]
    async fn rename(&self, conn: &mut AsyncPgConnection, name: impl Into<String>) -> diesel::QueryResult<i32> {
        let name: String = name.into();
        let _ = name;
        one().get_result(conn).await
    }

    #[write]
    async fn count<T: Into<i32>>(&self, conn: &mut AsyncPgConnection, tier: T) -> diesel::QueryResult<i32> {
        let tier: i32 = tier.into();
        let _ = tier;
        one().get_result(conn).await
    }

    /// A read may run again on another replica, so what its body consumes
    /// is `Clone`, as for any other parameter.
    #[read_only]
    async fn find<T>(&self, conn: &mut AsyncPgConnection, tenant: &Tenant, tier: T, names: &[impl AsRef<str>]) -> diesel::QueryResult<i32>
    where
        T: Into<i32> + Clone,
    {
        let _ = (tenant, tier.into(), names.iter().map(AsRef::as_ref).count());
        one().get_result(conn).await
    }

    #[read_only(primary)]
    async fn items<I>(&self, conn: &mut AsyncPgConnection, items: I, first: Option<I::Item>) -> diesel::QueryResult<i32>
    where
        I: IntoIterator<Item = i64> + Clone,
    {
        let _ = (items.into_iter().count(), first);
        one().get_result(conn).await
    }

    #[read_only]
    async fn labelled<'a, K: AsRef<str> + ?Sized>(&self, conn: &mut AsyncPgConnection, labels: &HashMap<&'a K, i64>) -> diesel::QueryResult<i32> {
        let _ = labels.keys().map(|k| k.as_ref()).count();
        one().get_result(conn).await
    }
}

async fn calls(db: &Db, tenant: &Tenant) -> Result<(), diesel_replica::Error> {
    db.rename("a").await?;
    db.rename(String::from("b")).await?;
    db.count(7i16).await?;
    db.count(Tier(2)).await?;
    db.find(tenant, 3u8, &["x", "y"]).await?;
    db.items(vec![1, 2], Some(3)).await?;
    db.labelled(&HashMap::from([("a", 1)])).await?;
    db.labelled::<str>(&HashMap::new()).await?;
    Ok(())
}

fn main() {
    let _ = calls;
}
