//! Schema-per-tenant scoping against a real primary and two replicas: fifty
//! tenants, each row naming its tenant, so a leak is seen, not assumed.

mod common;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use diesel::QueryableByName;
use diesel::sql_types::{Integer, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use diesel_replica::{Config, Error, ReplicaSet, ReplicatedRepo, Tenant, read_only, write};
use diesel_replica_testkit::{Cluster, NodeId, Served, WHO_SERVED, who_served};

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("tests/migrations");

const TENANTS: usize = 50;

const SETUP: &str = "CREATE TABLE public.items (id bigserial PRIMARY KEY, owner text NOT NULL); \
    INSERT INTO public.items (owner) VALUES ('public'); \
    DO $$ BEGIN FOR i IN 0..49 LOOP \
        EXECUTE format('CREATE SCHEMA t%s; \
            CREATE TABLE t%s.items (id bigserial PRIMARY KEY, owner text NOT NULL); \
            INSERT INTO t%s.items (owner) VALUES (%L)', i, i, i, 't' || i); \
    END LOOP; END $$";

fn main() -> ExitCode {
    common::run(
        2,
        SETUP,
        tests![
            fifty_tenants_never_see_each_others_rows,
            a_scoped_search_path_ends_with_its_transaction,
            an_unknown_tenant_is_an_error_not_a_read_of_public,
            tenant_scoped_read_only_methods_run_on_replicas_read_only,
            a_tenant_under_an_alias_scopes_the_method_not_the_shared_schemas,
            methods_with_generic_parameters_keep_their_tenant,
            provisioning_twice_changes_nothing_and_replicas_receive_it,
            a_failing_migration_leaves_its_tenant_as_it_was_and_the_others_run,
            a_tenant_not_yet_on_the_replicas_is_read_on_the_writer,
            calls_dropped_mid_way_never_leave_a_tenant_behind,
        ],
    )
}

#[derive(QueryableByName, Debug)]
struct Owner {
    #[diesel(sql_type = Text)]
    owner: String,
}

fn tenant(i: usize) -> Tenant {
    Tenant::new(format!("t{i}")).expect("a valid tenant name")
}

async fn fifty_tenants_never_see_each_others_rows(cluster: Arc<Cluster>) {
    let mut config = cluster.config();
    config.replica_pool.max_size = 16;
    config.writer_pool.max_size = 16;
    let db = ReplicaSet::connect(config).await.unwrap();
    let violations = Arc::new(AtomicU64::new(0));
    let ops = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..32u64)
        .map(|task| {
            let (db, violations, ops) = (db.clone(), violations.clone(), ops.clone());
            tokio::spawn(async move {
                let mut state = task * 7919 + 1;
                for n in 0..320u64 {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let t = tenant((state >> 33) as usize % TENANTS);
                    let scoped = db.tenant(&t);
                    let owners: Vec<Owner> = if n % 5 == 0 {
                        scoped
                            .transaction(async |conn| {
                                diesel::sql_query("INSERT INTO items (owner) VALUES (current_schema()) RETURNING owner")
                                    .load(conn)
                                    .await
                            })
                            .await
                            .unwrap()
                    } else {
                        scoped
                            .read(async |conn| diesel::sql_query("SELECT owner FROM items").load(conn).await)
                            .await
                            .unwrap()
                    };
                    assert!(!owners.is_empty());
                    let wrong = owners.iter().filter(|o| o.owner != t.name()).count();
                    violations.fetch_add(wrong as u64, Ordering::Relaxed);
                    ops.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert!(AtomicU64::load(&ops, Ordering::Relaxed) >= 10_000);
    assert_eq!(
        AtomicU64::load(&violations, Ordering::Relaxed),
        0,
        "rows seen by the wrong tenant"
    );
}

#[derive(QueryableByName, Debug)]
struct Session {
    #[diesel(sql_type = Integer)]
    pid: i32,
    #[diesel(sql_type = Text)]
    search_path: String,
}

const SESSION: &str =
    "SELECT pg_backend_pid() AS pid, current_setting('search_path') AS search_path";

async fn a_scoped_search_path_ends_with_its_transaction(cluster: Arc<Cluster>) {
    let mut config = Config::new(&cluster.writer_url())
        .unwrap()
        .with_replica(&cluster.replica_urls()[0])
        .unwrap();
    config.replica_pool.max_size = 1;
    let db = ReplicaSet::connect(config).await.unwrap();
    let scoped: Session = db
        .tenant(&tenant(7))
        .read(async |conn| diesel::sql_query(SESSION).get_result(conn).await)
        .await
        .unwrap();
    assert_eq!(scoped.search_path, "\"t7\", \"public\"");
    let after: Session = db
        .read(async |conn| diesel::sql_query(SESSION).get_result(conn).await)
        .await
        .unwrap();
    assert_eq!(after.pid, scoped.pid, "the same pooled connection");
    assert_eq!(after.search_path, "\"$user\", public");
}

async fn an_unknown_tenant_is_an_error_not_a_read_of_public(cluster: Arc<Cluster>) {
    let db = ReplicaSet::connect(cluster.config()).await.unwrap();
    // Statements of the body that succeeded: none may, not even one that
    // names no table.
    let succeeded = AtomicUsize::new(0);
    let err = db
        .tenant(&Tenant::new("not_provisioned").unwrap())
        .read(async |conn| {
            let one = diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1"))
                .get_result::<i32>(conn)
                .await;
            succeeded.fetch_add(usize::from(one.is_ok()), Ordering::SeqCst);
            let owners = diesel::sql_query("SELECT owner FROM items")
                .load::<Owner>(conn)
                .await;
            succeeded.fetch_add(usize::from(owners.is_ok()), Ordering::SeqCst);
            owners
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::UnknownTenant { ref tenant, .. } if tenant == "not_provisioned"),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("tenant `not_provisioned` has no schema on writer"),
        "{err}"
    );
    assert_eq!(
        succeeded.into_inner(),
        0,
        "a statement of the body ran without its schema"
    );
}

#[derive(ReplicatedRepo)]
struct Db {
    replicas: ReplicaSet,
}

#[derive(QueryableByName, Debug)]
struct ServedOwner {
    #[diesel(embed)]
    served: Served,
    #[diesel(sql_type = Text)]
    owner: String,
}

impl Db {
    #[read_only]
    async fn owners(
        &self,
        conn: &mut AsyncPgConnection,
        tenant: &Tenant,
    ) -> diesel::QueryResult<Vec<ServedOwner>> {
        let _ = tenant;
        let sql = format!("{WHO_SERVED}, owner FROM items");
        diesel::sql_query(sql).load(conn).await
    }
}

/// The application's name for a tenant.
type Org = Tenant;

impl Db {
    #[read_only]
    async fn owners_of_org(
        &self,
        conn: &mut AsyncPgConnection,
        org: &Org,
    ) -> diesel::QueryResult<Vec<Owner>> {
        let _ = org;
        diesel::sql_query("SELECT owner FROM items")
            .load(conn)
            .await
    }

    #[write]
    async fn add_to_org(
        &self,
        conn: &mut AsyncPgConnection,
        _: &Org,
        (n, m): (i32, i32),
    ) -> diesel::QueryResult<Owner> {
        diesel::sql_query("INSERT INTO items (owner) VALUES (current_schema()) RETURNING owner")
            .get_result::<Owner>(conn)
            .await
            .map(|owner| Owner {
                owner: format!("{}:{}", owner.owner, n + m),
            })
    }
}

/// Regression: scoping was decided by the spelling `Tenant`, so a
/// `&Tenant` under an alias (or bound to `_`) ran unscoped, reading and
/// writing the shared `public.items`.
async fn a_tenant_under_an_alias_scopes_the_method_not_the_shared_schemas(cluster: Arc<Cluster>) {
    let db = Db::connect(cluster.config()).await.unwrap();
    for i in [4, 23] {
        let owners = db.owners_of_org(&tenant(i)).await.unwrap();
        let owners: Vec<&str> = owners.iter().map(|o| o.owner.as_str()).collect();
        assert!(!owners.is_empty());
        assert!(owners.iter().all(|&o| o == format!("t{i}")), "{owners:?}");
    }
    let added = db.add_to_org(&tenant(9), (1, 2)).await.unwrap();
    assert_eq!(added.owner, "t9:3", "the write ran outside t9's schema");
}

/// An existing app's method shapes: `impl Trait` and generic parameters
/// beside the tenant.
impl Db {
    #[read_only]
    async fn owners_like(
        &self,
        conn: &mut AsyncPgConnection,
        org: &Org,
        pattern: impl Into<String> + Clone,
    ) -> diesel::QueryResult<Vec<ServedOwner>> {
        let _ = org;
        let sql = format!("{WHO_SERVED}, owner FROM items WHERE owner LIKE $1");
        diesel::sql_query(sql)
            .bind::<Text, String>(pattern.into())
            .load(conn)
            .await
    }

    #[write]
    async fn add_tiered<T: Into<i32>>(
        &self,
        conn: &mut AsyncPgConnection,
        org: &Org,
        tier: T,
    ) -> diesel::QueryResult<Owner> {
        let _ = org;
        diesel::sql_query(
            "INSERT INTO items (owner) VALUES (current_schema()) RETURNING owner || ':' || $1 AS owner",
        )
        .bind::<Integer, _>(tier.into())
        .get_result(conn)
        .await
    }
}

async fn methods_with_generic_parameters_keep_their_tenant(cluster: Arc<Cluster>) {
    let db = Db::connect(cluster.config()).await.unwrap();
    for i in [5, 31] {
        let rows = db.owners_like(&tenant(i), "t%").await.unwrap();
        assert!(!rows.is_empty());
        for row in rows {
            assert_eq!(row.owner, format!("t{i}"), "the read left t{i}'s schema");
            assert!(row.served.in_recovery, "{:?}", row.served);
        }
    }
    let added = db.add_tiered(&tenant(12), 7i16).await.unwrap();
    assert_eq!(added.owner, "t12:7", "the write ran outside t12's schema");
}

async fn tenant_scoped_read_only_methods_run_on_replicas_read_only(cluster: Arc<Cluster>) {
    let db = Db::connect(cluster.config()).await.unwrap();
    for i in [3, 11, 42] {
        let rows = db.owners(&tenant(i)).await.unwrap();
        assert!(!rows.is_empty());
        for row in rows {
            assert_eq!(row.owner, format!("t{i}"));
            assert!(row.served.in_recovery, "{:?}", row.served);
            assert_eq!(row.served.read_only, "on");
        }
    }
}

/// The tables of a schema, as the writer's catalog lists them.
fn tables(cluster: &Cluster, schema: &str) -> String {
    cluster
        .psql(
            NodeId::Primary,
            &format!(
                "SELECT coalesce(string_agg(table_name || '(' || columns || ')', ' ' ORDER BY table_name), '') \
                 FROM (SELECT table_name, string_agg(column_name, ',' ORDER BY ordinal_position) AS columns \
                 FROM information_schema.columns WHERE table_schema = '{schema}' GROUP BY table_name) t"
            ),
        )
        .unwrap()
}

async fn provisioning_twice_changes_nothing_and_replicas_receive_it(cluster: Arc<Cluster>) {
    let db = ReplicaSet::connect(cluster.config()).await.unwrap();
    let fresh = Tenant::new("fresh_tenant").unwrap();
    let first = db.provision_tenant(&fresh, MIGRATIONS).await.unwrap();
    assert!(first.created_schema);
    assert_eq!(first.applied, ["20261127000001", "20261127000002"]);
    let catalog = tables(&cluster, "fresh_tenant");
    assert!(catalog.contains("notes(id,body,owner)"), "{catalog}");
    let again = db.provision_tenant(&fresh, MIGRATIONS).await.unwrap();
    assert!(!again.created_schema);
    assert!(again.applied.is_empty(), "{again:?}");
    assert_eq!(tables(&cluster, "fresh_tenant"), catalog);

    // The replicas have the schema by replication: a scoped read there
    // finds the empty table, where an unknown schema would be an error.
    cluster.wait_for_replication().unwrap();
    let on_replica: Vec<Owner> = db
        .tenant(&fresh)
        .read(async |conn| {
            diesel::sql_query("SELECT owner FROM notes")
                .load(conn)
                .await
        })
        .await
        .unwrap();
    assert!(on_replica.is_empty());
    let owner: Owner = db
        .tenant(&fresh)
        .transaction(async |conn| {
            diesel::sql_query("INSERT INTO notes (body) VALUES ('hi') RETURNING owner")
                .get_result(conn)
                .await
        })
        .await
        .unwrap();
    assert_eq!(owner.owner, "fresh_tenant");
}

async fn a_failing_migration_leaves_its_tenant_as_it_was_and_the_others_run(cluster: Arc<Cluster>) {
    // A tenant whose schema already holds a `notes` table of another
    // shape: the first migration fails there.
    cluster
        .psql(
            NodeId::Primary,
            "CREATE SCHEMA broken; CREATE TABLE broken.notes (legacy int)",
        )
        .unwrap();
    let before = tables(&cluster, "broken");
    let db = ReplicaSet::connect(cluster.config()).await.unwrap();
    let tenants = ["good_one", "broken", "good_two"].map(|name| Tenant::new(name).unwrap());
    let mut heard = Vec::new();
    let results = db
        .provision_tenants(&tenants, MIGRATIONS, |done, total, result| {
            heard.push((done, total, result.is_ok()));
        })
        .await;
    assert_eq!(heard, [(1, 3, true), (2, 3, false), (3, 3, true)]);
    let err = results[1].as_ref().unwrap_err();
    assert!(
        matches!(err, Error::Provision { tenant, .. } if tenant == "broken"),
        "{err:?}"
    );
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(
        tables(&cluster, "broken"),
        before,
        "the failed tenant changed"
    );
    for good in ["good_one", "good_two"] {
        assert!(
            tables(&cluster, good).contains("notes(id,body,owner)"),
            "{good} not migrated"
        );
    }
}

async fn a_tenant_not_yet_on_the_replicas_is_read_on_the_writer(cluster: Arc<Cluster>) {
    let db = ReplicaSet::connect(cluster.config()).await.unwrap();
    let mut strict = cluster.config();
    strict.health.reads_fall_back_to_writer = false;
    let strict = ReplicaSet::connect(strict).await.unwrap();
    let newcomer = Tenant::new("newcomer").unwrap();
    cluster.pause_replay(0).unwrap();
    cluster.pause_replay(1).unwrap();
    db.provision_tenant(&newcomer, MIGRATIONS).await.unwrap();
    let served: Served = db.tenant(&newcomer).read(who_served).await.unwrap();
    assert_eq!(
        served.port,
        i32::from(cluster.primary().port()),
        "{served:?}"
    );
    assert_eq!(served.read_only, "on");
    let err = strict.tenant(&newcomer).read(who_served).await.unwrap_err();
    assert!(matches!(err, Error::UnknownTenant { .. }), "{err:?}");
    cluster.resume_replay(0).unwrap();
    cluster.resume_replay(1).unwrap();
    cluster.wait_for_replication().unwrap();
    let served: Served = strict.tenant(&newcomer).read(who_served).await.unwrap();
    assert!(
        served.in_recovery,
        "once replayed, the replicas serve it: {served:?}"
    );
}

/// The owners of the rows of `items`, wherever the path finds it.
async fn owners(conn: &mut AsyncPgConnection) -> diesel::QueryResult<Vec<Owner>> {
    diesel::sql_query("SELECT owner FROM items")
        .load(conn)
        .await
}

/// Polls `call` until it is ready or has been woken `polls` times, then
/// drops it: a cancellation at whatever point it had reached.
async fn dropped_after<F: std::future::Future>(call: F, polls: u64) -> Option<F::Output> {
    let mut call = std::pin::pin!(call);
    let mut woken = 0;
    std::future::poll_fn(|cx| match call.as_mut().poll(cx) {
        std::task::Poll::Ready(value) => std::task::Poll::Ready(Some(value)),
        std::task::Poll::Pending if woken >= polls => std::task::Poll::Ready(None),
        std::task::Poll::Pending => {
            woken += 1;
            std::task::Poll::Pending
        }
    })
    .await
}

/// Tenant-scoped and unscoped calls, a third of them dropped at a random
/// point (after a random number of polls, or a timeout of 0.1 to 1.5 ms):
/// no call sees another tenant's rows or a tenant's rows unscoped, and
/// afterwards every pooled connection has the default `search_path`.
async fn calls_dropped_mid_way_never_leave_a_tenant_behind(cluster: Arc<Cluster>) {
    // One replica, so that holding `POOL` reads at once holds every
    // connection its pool has.
    const POOL: usize = 8;
    let mut config = Config::new(&cluster.writer_url())
        .unwrap()
        .with_replica(&cluster.replica_urls()[0])
        .unwrap();
    config.replica_pool.max_size = POOL;
    config.writer_pool.max_size = POOL;
    let db = ReplicaSet::connect(config).await.unwrap();
    let violations = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..32u64)
        .map(|task| {
            let (db, violations, completed, dropped) = (
                db.clone(),
                violations.clone(),
                completed.clone(),
                dropped.clone(),
            );
            tokio::spawn(async move {
                let mut state = task * 104_729 + 7;
                let mut next = move || {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    state >> 33
                };
                for _ in 0..320 {
                    let kind = next() % 10;
                    let t = tenant(next() as usize % TENANTS);
                    // Unscoped reads see the shared `items`, whose one row
                    // is `public`'s.
                    let owner = if kind < 2 { "public" } else { t.name() };
                    let call = async {
                        match kind {
                            0 => db.read_fresh(owners).await,
                            1 => db.read(owners).await,
                            2 => db.tenant(&t).transaction(owners).await,
                            3 => db.tenant(&t).read_snapshot(owners).await,
                            _ => db.tenant(&t).read(owners).await,
                        }
                    };
                    let outcome = match next() % 6 {
                        0 => dropped_after(call, next() % 6).await,
                        1 => {
                            let after = std::time::Duration::from_micros(100 + next() % 1400);
                            tokio::time::timeout(after, call).await.ok()
                        }
                        _ => Some(call.await),
                    };
                    match outcome {
                        Some(owners) => {
                            let owners = owners.unwrap();
                            assert!(!owners.is_empty());
                            let wrong = owners.iter().filter(|o| o.owner != owner).count();
                            violations.fetch_add(wrong as u64, Ordering::Relaxed);
                            completed.fetch_add(1, Ordering::Relaxed);
                        }
                        None => {
                            dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let completed = AtomicU64::load(&completed, Ordering::Relaxed);
    let dropped = AtomicU64::load(&dropped, Ordering::Relaxed);
    eprintln!("{completed} calls completed, {dropped} dropped mid-way");
    assert_eq!(completed + dropped, 32 * 320);
    assert!(dropped >= 1000, "too few calls were dropped: {dropped}");
    assert_eq!(
        AtomicU64::load(&violations, Ordering::Relaxed),
        0,
        "rows seen outside their tenant's scope"
    );
    // Every pooled connection, held at once, says where it is.
    for pool in ["replica", "writer"] {
        let barrier = Arc::new(tokio::sync::Barrier::new(POOL));
        let held: Vec<_> = (0..POOL)
            .map(|_| {
                let (db, barrier) = (db.clone(), barrier.clone());
                tokio::spawn(async move {
                    let session = async |conn: &mut AsyncPgConnection| {
                        let session: Session = diesel::sql_query(SESSION).get_result(conn).await?;
                        barrier.wait().await;
                        Ok(session)
                    };
                    if pool == "replica" {
                        db.read(session).await.unwrap()
                    } else {
                        db.write(session).await.unwrap()
                    }
                })
            })
            .collect();
        let mut pids = std::collections::HashSet::new();
        for session in held {
            let session = session.await.unwrap();
            assert_eq!(session.search_path, "\"$user\", public", "{pool}");
            pids.insert(session.pid);
        }
        assert_eq!(pids.len(), POOL, "{pool}: every pooled connection was seen");
    }
}
