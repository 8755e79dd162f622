//! Set-up before the clock starts: the configuration from the `DATABASE_*`
//! variables (a local cluster's comes from `Cluster::load_config`, or with
//! `--fail-over-at` from variables loadgen sets), the connection, the table or the tenants and their rows, and the wait until
//! every reader sees them.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use diesel::sql_types::{BigInt, Nullable};
use diesel::{QueryResult, QueryableByName};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use diesel_replica::{Config, Error, Tenant};
use diesel_replica_testkit::Cluster;

use crate::args::Args;
use crate::error::{Chain, Fatal};
use crate::repo::{Items, NodeRow, WHO_AM_I};

/// Rows put into an empty `loadgen_items`.
pub(crate) const SEED_ROWS: i64 = 1000;
/// Rows put into each tenant's empty `loadgen_items` (with `--tenants`).
pub(crate) const TENANT_SEED_ROWS: i64 = 200;
/// The tenants' migrations: one, creating `loadgen_items` in the tenant's
/// schema (path relative to the crate root).
pub(crate) const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");
/// Longest wait for the replicas to see the seeded table.
pub(crate) const REPLICA_WAIT: Duration = Duration::from_secs(30);

pub(crate) const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS loadgen_items (\
     id bigserial PRIMARY KEY, \
     payload text NOT NULL, \
     updated_at timestamptz NOT NULL DEFAULT now())";
/// Seeds only an empty table, in one statement.
pub(crate) const SEED: &str = "INSERT INTO loadgen_items (payload) \
     SELECT 'item ' || g FROM generate_series(1, $1) AS g \
     WHERE NOT EXISTS (SELECT 1 FROM loadgen_items)";

pub(crate) const ID_RANGE: &str = "SELECT min(id) AS lo, max(id) AS hi FROM loadgen_items";

#[derive(QueryableByName)]
pub(crate) struct IdRange {
    #[diesel(sql_type = Nullable<BigInt>)]
    lo: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    hi: Option<i64>,
}

/// The configuration from `DATABASE_*`, with each pool whose size is not
/// set raised to `concurrency`.
pub(crate) fn env_config(concurrency: usize) -> Result<Config, Fatal> {
    let mut config = Config::from_env().map_err(|e| Fatal {
        message: format!(
            "configuration error: {e}\n\
             hint: loadgen reads your cluster from DATABASE_URL (or DATABASE_SECRET) and \
             DATABASE_REPLICA_URLS / DATABASE_REPLICA_HOSTS; to try it without a cluster, run \
             it with `--local N` (a throwaway local primary with N replicas)"
        ),
        code: 2,
    })?;
    for (pool, var) in [
        (&mut config.writer_pool, "DATABASE_WRITER_POOL_SIZE"),
        (&mut config.replica_pool, "DATABASE_REPLICA_POOL_SIZE"),
    ] {
        if std::env::var_os(var).is_none() {
            pool.max_size = pool.max_size.max(concurrency);
        } else if pool.max_size < concurrency {
            eprintln!(
                "loadgen: note: {var} = {} is below --concurrency {concurrency}; tasks will \
                 queue for connections",
                pool.max_size
            );
        }
    }
    Ok(config)
}

/// With `--fail-over-at`: the local `cluster` configured as a user would
/// configure candidate-hosts discovery, through the `DATABASE_*` variables
/// (read from a list, not the environment): `DATABASE_URL` the primary,
/// `DATABASE_DISCOVERY=hosts` with every node as a candidate, the default
/// survey interval, and both pools of exactly `concurrency` connections
/// opened on connect, as `Cluster::load_config` makes them.
pub(crate) fn discovery_config(cluster: &Cluster, concurrency: usize) -> Result<Config, Fatal> {
    let candidates: Vec<String> = std::iter::once(cluster.primary_id())
        .chain(cluster.replica_ids())
        .map(|id| format!("127.0.0.1:{}", cluster.node(id).port()))
        .collect();
    let pool = concurrency.to_string();
    Config::from_vars(
        None,
        [
            ("DATABASE_URL", cluster.writer_url()),
            ("DATABASE_DISCOVERY", "hosts".to_owned()),
            ("DATABASE_CANDIDATE_HOSTS", candidates.join(",")),
            ("DATABASE_WRITER_POOL_SIZE", pool.clone()),
            ("DATABASE_REPLICA_POOL_SIZE", pool.clone()),
            ("DATABASE_WARM_UP", pool),
        ],
    )
    .map_err(|e| {
        Fatal::new(format!(
            "cannot configure discovery over the local cluster: {}",
            Chain(&e)
        ))
    })
}

/// The ids the workers pick from, inclusive.
#[derive(Clone, Copy)]
pub(crate) struct Ids {
    pub(crate) lo: i64,
    pub(crate) hi: i64,
}

/// Creates and seeds `loadgen_items` on the writer and returns its ids.
pub(crate) async fn prepare_table(db: &Items) -> Result<Ids, Fatal> {
    let range =
        db.replica_set().write(create_and_seed).await.map_err(|e| {
            Fatal::new(format!("cannot prepare table loadgen_items: {}", Chain(&e)))
        })?;
    range.ids()
}

/// Creates `loadgen_items` if missing and seeds it if empty, on `conn`;
/// returns its ids. Run on the writer: through the library's `write`
/// (autocommit, on the writer alone), or through a proxy (`--through`) in
/// one transaction, which a proxy keeps on the primary once it has written,
/// so that the range's `SELECT` runs where the rows were made.
pub(crate) async fn create_and_seed(conn: &mut AsyncPgConnection) -> QueryResult<IdRange> {
    diesel::sql_query(CREATE_TABLE).execute(conn).await?;
    diesel::sql_query(SEED)
        .bind::<BigInt, _>(SEED_ROWS)
        .execute(conn)
        .await?;
    diesel::sql_query(ID_RANGE)
        .get_result::<IdRange>(conn)
        .await
}

impl IdRange {
    /// The ids of the untenanted table, which must not be empty.
    pub(crate) fn ids(self) -> Result<Ids, Fatal> {
        match self {
            IdRange {
                lo: Some(lo),
                hi: Some(hi),
            } => Ok(Ids { lo, hi }),
            _ => Err(Fatal::new(
                "table loadgen_items is empty after seeding (was it emptied meanwhile?)",
            )),
        }
    }
}

/// Provisions `tenant_0 .. tenant_{n-1}` (schema and migrations, on the
/// writer), seeds each one's empty `loadgen_items` in a tenant-scoped
/// transaction, and returns each tenant with its ids.
pub(crate) async fn prepare_tenants(db: &Items, n: u32) -> Result<Vec<(Tenant, Ids)>, Fatal> {
    let tenants = (0..n)
        .map(|i| Tenant::new(format!("tenant_{i}")))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Fatal::new(format!("bad tenant name: {e}")))?;
    let started = Instant::now();
    let results = db
        .replica_set()
        .provision_tenants(&tenants, MIGRATIONS, |done, total, result| match result {
            Ok(p) => eprintln!(
                "loadgen: [{done}/{total}] provisioned {} ({}, {} migration(s) applied)",
                p.tenant,
                if p.created_schema {
                    "schema created"
                } else {
                    "schema existed"
                },
                p.applied.len()
            ),
            Err(e) => eprintln!("loadgen: [{done}/{total}] {}", Chain(e)),
        })
        .await;
    if let Some(e) = results.into_iter().find_map(Result::err) {
        return Err(Fatal::new(format!(
            "cannot provision the tenants: {}",
            Chain(&e)
        )));
    }
    eprintln!(
        "loadgen: {n} tenants provisioned in {} ms; seeding them",
        started.elapsed().as_millis()
    );
    let mut seeded = Vec::with_capacity(tenants.len());
    for tenant in tenants {
        let range = db
            .replica_set()
            .tenant(&tenant)
            .transaction(async |conn| {
                diesel::sql_query(SEED)
                    .bind::<BigInt, _>(TENANT_SEED_ROWS)
                    .execute(conn)
                    .await?;
                diesel::sql_query(ID_RANGE)
                    .get_result::<IdRange>(conn)
                    .await
            })
            .await
            .map_err(|e| {
                Fatal::new(format!("cannot seed {tenant}.loadgen_items: {}", Chain(&e)))
            })?;
        match range {
            IdRange {
                lo: Some(lo),
                hi: Some(hi),
            } => seeded.push((tenant, Ids { lo, hi })),
            _ => {
                return Err(Fatal::new(format!(
                    "table {tenant}.loadgen_items is empty after seeding (was it emptied \
                     meanwhile?)"
                )));
            }
        }
    }
    Ok(seeded)
}

/// Reads the row `id` (of `tenant`'s table, with one) until every replica
/// (or, with none, the writer) has served it, so that the run does not
/// measure replication lag of the table's creation.
pub(crate) async fn wait_for_replicas(
    db: &Items,
    tenant: Option<&Tenant>,
    id: i64,
) -> Result<(), String> {
    let needed = db.replica_set().replica_count().max(1);
    let deadline = Instant::now() + REPLICA_WAIT;
    let mut seen = HashSet::new();
    // A read that no replica can serve (a tenant-scoped one on replicas
    // without the schema yet is retried elsewhere) may fall back to the
    // writer: with replicas, the writer does not count as a reader.
    let writer = if db.replica_set().replica_count() > 0 {
        let row = db
            .replica_set()
            .write(async |conn| {
                diesel::sql_query(WHO_AM_I)
                    .get_result::<NodeRow>(conn)
                    .await
            })
            .await
            .map_err(|e| format!("cannot ask the writer its address: {}", Chain(&e)))?;
        Some(row.key())
    } else {
        None
    };
    loop {
        let read = match tenant {
            Some(tenant) => db
                .tenant_item(tenant, id)
                .await
                .map(|row| row.read.node.key()),
            None => db.item(id).await.map(|row| row.node.key()),
        };
        let last = match read {
            Ok(node) if writer.as_ref() != Some(&node) => {
                let new = seen.insert(node);
                if seen.len() >= needed {
                    return Ok(());
                }
                if new {
                    continue;
                }
                "no new reader served the read".to_owned()
            }
            Ok(_) => "the read fell back to the writer".to_owned(),
            // An unreachable reader will not catch up by waiting.
            Err(e @ Error::Checkout { .. }) => {
                return Err(format!(
                    "cannot check that the readers see the table: {}",
                    Chain(&e)
                ));
            }
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            return Err(format!(
                "after {REPLICA_WAIT:?} only {} of {needed} reader(s) see table loadgen_items \
                 (last error: {last})",
                seen.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connects and prints the nodes and pool sizes on stderr; returns the repo
/// and the replicas' configured `host:port`s, in order.
pub(crate) async fn connect(config: Config) -> Result<(Items, Vec<String>), Fatal> {
    let (writer_pool, replica_pool) = (config.writer_pool.max_size, config.replica_pool.max_size);
    let db = Items::connect(config)
        .await
        .map_err(|e| Fatal::new(format!("cannot connect: {}", Chain(&e))))?;
    let status = db.replica_set().status();
    let replicas: Vec<String> = status.replicas.iter().map(|r| r.address.clone()).collect();
    if replicas.is_empty() {
        eprintln!(
            "loadgen: writer {} (pool {writer_pool}); no replicas, so reads go to the writer",
            status.writer.address
        );
    } else {
        eprintln!(
            "loadgen: writer {} (pool {writer_pool}), {} {}: {} (pool {replica_pool} each)",
            status.writer.address,
            replicas.len(),
            if replicas.len() == 1 {
                "replica"
            } else {
                "replicas"
            },
            replicas.join(", ")
        );
    }
    Ok((db, replicas))
}

/// Prepares the table (or, with `--tenants`, the tenants) and waits for the
/// replicas to see it. Returns the ids of the untenanted table and the
/// tenants with their ids.
pub(crate) async fn prepare(db: &Items, args: &Args) -> Result<(Ids, Vec<(Tenant, Ids)>), Fatal> {
    // Untenanted, the workers use `public.loadgen_items` and its ids; with
    // `--tenants`, each tenant's own table and ids (`ids` is then unused).
    let (ids, tenants) = if args.tenants == 0 {
        (prepare_table(db).await?, Vec::new())
    } else {
        let tenants = prepare_tenants(db, args.tenants).await?;
        (tenants[tenants.len() - 1].1, tenants)
    };
    let last_tenant = tenants.last().map(|(tenant, _)| tenant);
    let waited = Instant::now();
    match wait_for_replicas(db, last_tenant, ids.hi).await {
        Ok(()) => eprintln!(
            "loadgen: table loadgen_items ready ({} ids{}), seen by every reader after {} ms",
            ids.hi - ids.lo + 1,
            match last_tenant {
                Some(tenant) => format!(" in {tenant}, the last of {} tenants", tenants.len()),
                None => String::new(),
            },
            waited.elapsed().as_millis()
        ),
        Err(e) if args.local.is_some() => return Err(Fatal::new(e)),
        Err(e) => eprintln!("loadgen: warning: {e}; starting anyway"),
    }
    Ok((ids, tenants))
}
