//! A repo with fields of its own, every method form, and futures that are
//! `Send` and `'static` enough for `tokio::spawn`.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_replica::{ReplicaSet, ReplicatedRepo, read_only, write};

diesel::table! {
    users (id) {
        id -> Int8,
        name -> Text,
    }
}

#[derive(ReplicatedRepo, Clone)]
pub struct Db {
    replicas: ReplicaSet,
    requests: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Debug)]
pub enum AppError {
    Db(diesel_replica::Error),
    Query(diesel::result::Error),
    Invalid(&'static str),
}

impl From<diesel_replica::Error> for AppError {
    fn from(e: diesel_replica::Error) -> Self {
        Self::Db(e)
    }
}

impl From<diesel::result::Error> for AppError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Query(e)
    }
}

/// The application's own result type: the macro finds its error type by
/// type, through the alias.
pub type AppResult<T> = Result<T, AppError>;

impl Db {
    #[read_only]
    pub async fn name(&self, conn: &mut AsyncPgConnection, id: i64) -> QueryResult<String> {
        if id < 0 {
            return Err(diesel::result::Error::NotFound);
        }
        let name = users::table.find(id).select(users::name).first(conn).await?;
        Ok(name)
    }

    #[read_only(primary)]
    pub async fn fresh_count(&self, conn: &mut AsyncPgConnection) -> diesel::QueryResult<i64> {
        users::table.count().get_result(conn).await
    }

    /// A read may run again on another replica, so it borrows its
    /// arguments: slices and references.
    #[read_only]
    pub async fn matching<'a>(
        &self,
        conn: &mut AsyncPgConnection,
        prefix: &'a str,
        ids: &'a [i64],
    ) -> Result<Vec<String>, AppError> {
        if prefix.is_empty() {
            return Err(AppError::Invalid("empty prefix"));
        }
        Ok(users::table
            .filter(users::id.eq_any(ids))
            .filter(users::name.like(format!("{prefix}%")))
            .select(users::name)
            .load(conn)
            .await?)
    }

    #[read_only]
    pub async fn user_count(&self, conn: &mut AsyncPgConnection) -> AppResult<i64> {
        Ok(users::table.count().get_result(conn).await?)
    }

    /// An owned argument that the body consumes is cloned for each attempt.
    #[read_only]
    pub async fn named(&self, conn: &mut AsyncPgConnection, names: Vec<String>) -> QueryResult<i64> {
        users::table.filter(users::name.eq_any(names)).count().get_result(conn).await
    }

    #[write]
    pub async fn rename(&self, conn: &mut AsyncPgConnection, id: i64, name: &str) -> QueryResult<usize> {
        diesel::update(users::table.find(id))
            .set(users::name.eq(name))
            .execute(conn)
            .await
    }
}

fn assert_send<T: Send>(_: &T) {}

#[allow(dead_code)]
async fn from_anywhere(db: Db) -> Result<(), AppError> {
    let name = db.name(1).await?;
    let count: i64 = db.fresh_count().await?;
    let found = db.matching(&name, &[1, 2]).await?;
    let named = db.named(vec![name]).await?;
    let _: i64 = db.user_count().await?;
    let renamed: usize = db.rename(1, "ada").await?;
    assert_send(&db.name(1));
    let spawned = tokio::spawn({
        let db = db.clone();
        async move { db.matching("a", &[1]).await }
    });
    let _ = (count, found, named, renamed, spawned.await);
    let explicit = db
        .replica_set()
        .read(async |conn| users::table.count().get_result::<i64>(conn).await)
        .await?;
    let _ = explicit;
    Ok(())
}

#[allow(dead_code)]
async fn constructors() -> Result<(), diesel_replica::Error> {
    let _ = Db::from_env().await?;
    let _ = Db::from_env_with_prefix("ANALYTICS").await?;
    let _ = Db::connect(diesel_replica::Config::new("postgres://localhost/app")?).await?;
    Ok(())
}

fn main() {}
