//! Tenant provisioning: a schema per tenant, and the application's Diesel
//! migrations run inside it, on the writer; replicas get it by replication.

use std::sync::Arc;

use diesel::connection::{Connection, SimpleConnection};
use diesel::migration::MigrationSource;
use diesel::pg::Pg;
use diesel::sql_types::{Bool, Text};
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::MigrationHarness;

use crate::error::Error;
use crate::set::ReplicaSet;
use crate::tenant::{Tenant, quote_identifier};

/// What provisioning did for one tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Provisioned {
    /// The tenant.
    pub tenant: Tenant,
    /// Whether its schema was created now (false: it existed).
    pub created_schema: bool,
    /// The migrations applied now, by version, in order; empty when the
    /// tenant was up to date.
    pub applied: Vec<String>,
}

/// Why one tenant's provisioning failed, inside its transaction.
enum Failure {
    Query(diesel::result::Error),
    Migration(String),
}

impl From<diesel::result::Error> for Failure {
    fn from(error: diesel::result::Error) -> Self {
        Self::Query(error)
    }
}

impl ReplicaSet {
    /// Creates `tenant`'s schema if missing and runs the pending
    /// `migrations` inside it (its own `__diesel_schema_migrations` table
    /// records them), on the writer, in one transaction: on failure the
    /// schema is left as it was. Running it again applies nothing.
    ///
    /// Concurrent provisioning of one tenant, from several processes,
    /// is serialized by an advisory lock on its name.
    ///
    /// ```no_run
    /// # use diesel_migrations::EmbeddedMigrations;
    /// // In the application: `embed_migrations!("migrations")`.
    /// async fn on_sign_up(
    ///     db: &replica_core::ReplicaSet,
    ///     migrations: EmbeddedMigrations,
    /// ) -> Result<(), replica_core::Error> {
    ///     let acme: replica_core::Tenant = "acme".parse().unwrap();
    ///     let done = db.provision_tenant(&acme, migrations).await?;
    ///     println!("{}: {} migration(s) applied", done.tenant, done.applied.len());
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    /// [`Error::Checkout`] when the writer is unavailable, and
    /// [`Error::Provision`] when a statement or a migration failed.
    pub async fn provision_tenant<M>(
        &self,
        tenant: &Tenant,
        migrations: M,
    ) -> Result<Provisioned, Error>
    where
        M: MigrationSource<Pg> + Send + 'static,
    {
        let conn = self.writer_connection().await?;
        let owned = tenant.clone();
        let done = tokio::task::spawn_blocking(move || provision(conn, &owned, migrations))
            .await
            .unwrap_or_else(|panic| {
                Err(Failure::Migration(format!(
                    "the migration task panicked: {panic}"
                )))
            });
        done.map_err(|failure| Error::Provision {
            tenant: tenant.name().to_owned(),
            reason: match failure {
                Failure::Query(error) => error.to_string(),
                Failure::Migration(reason) => reason,
            },
        })
    }

    /// [`provision_tenant`](Self::provision_tenant) for each tenant in turn:
    /// a failure is reported and the others still run. `progress` hears of
    /// each tenant as it finishes, with its position and the total.
    pub async fn provision_tenants<'t, M>(
        &self,
        tenants: impl IntoIterator<Item = &'t Tenant>,
        migrations: M,
        mut progress: impl FnMut(usize, usize, &Result<Provisioned, Error>),
    ) -> Vec<Result<Provisioned, Error>>
    where
        M: MigrationSource<Pg> + Send + Sync + 'static,
    {
        let migrations = Shared(Arc::new(migrations));
        let tenants: Vec<&Tenant> = tenants.into_iter().collect();
        let mut results = Vec::with_capacity(tenants.len());
        for (i, tenant) in tenants.iter().enumerate() {
            let result = self
                .provision_tenant(tenant, Shared(migrations.0.clone()))
                .await;
            progress(i + 1, tenants.len(), &result);
            results.push(result);
        }
        results
    }
}

/// One migration source shared by the tenants of a batch.
struct Shared<M>(Arc<M>);

impl<M: MigrationSource<Pg>> MigrationSource<Pg> for Shared<M> {
    fn migrations(
        &self,
    ) -> diesel::migration::Result<Vec<Box<dyn diesel::migration::Migration<Pg>>>> {
        self.0.migrations()
    }
}

#[derive(diesel::QueryableByName)]
struct Missing {
    #[diesel(sql_type = Bool)]
    missing: bool,
}

fn provision<M: MigrationSource<Pg>>(
    conn: AsyncPgConnection,
    tenant: &Tenant,
    migrations: M,
) -> Result<Provisioned, Failure> {
    use diesel::RunQueryDsl;

    let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::from(conn);
    conn.transaction(|conn| {
        let missing: Missing = diesel::sql_query(
            "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('diesel-replica provision ' || $1)) \
             IS NOT NULL \
             AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1) AS missing",
        )
        .bind::<Text, _>(tenant.name())
        .get_result(conn)?;
        // The name is validated and quoted: nothing of it reaches SQL raw.
        let schema = quote_identifier(tenant.name());
        conn.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; SET LOCAL search_path TO {schema}"
        ))?;
        let applied = conn
            .run_pending_migrations(migrations)
            .map_err(|error| Failure::Migration(error.to_string()))?;
        Ok(Provisioned {
            tenant: tenant.clone(),
            created_schema: missing.missing,
            applied: applied.iter().map(ToString::to_string).collect(),
        })
    })
}
