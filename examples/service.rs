//! A small web service on diesel-replica, as an application would write it:
//! axum handlers over a derived repo, a tenant per request from a header,
//! read-your-writes across requests, `/health` from the set's status,
//! Prometheus metrics and tracing to stdout.
//!
//! ```text
//! cargo run --example service
//! curl localhost:3000/health
//! curl -X PUT localhost:3000/tenants/acme
//! curl -i -H 'x-tenant: acme' -H 'content-type: application/json' \
//!      -d '{"name": "anvil"}' localhost:3000/items
//! curl -H 'x-tenant: acme' -H 'x-read-after: <the token returned>' localhost:3000/items/1
//! curl localhost:3000/metrics
//! ```
//!
//! With no `DATABASE_URL` (or `DATABASE_SECRET`, `DATABASE_SECRET_FILE`) set, it
//! starts a throwaway local cluster (a primary and two streaming replicas)
//! as the quickstart does, and removes it on Ctrl-C. With them set, it uses
//! your cluster, configured by the `DATABASE_*` variables, and creates the
//! table `items` in its `public` schema. It listens on `SERVICE_ADDR`
//! (`127.0.0.1:3000`); `RUST_LOG` filters the log (`info,tower_http=debug`).
//!
//! | Request | Answer |
//! |---|---|
//! | `GET /health` | the set's status as JSON: 200 when healthy, else 503 |
//! | `GET /metrics` | Prometheus text |
//! | `PUT /tenants/{name}` | creates the tenant's schema and runs `service_migrations/` in it (again: nothing to do) |
//! | `POST /items` `{"name": ..}` | 200 and `{"id": .., "name": ..}`, with an `x-read-after` token |
//! | `GET /items/{id}` | 200 and the item, or 404 |
//!
//! `/items` work in the schema of the tenant named by the `x-tenant` header,
//! or in `public` without one. A client that sends back the `x-read-after`
//! header it was given reads its own writes, on a replica that has them or
//! else on the writer.

use std::error::Error as StdError;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use diesel_replica::{
    Config, Error, ErrorKind, ReadYourWrites, ReplicaSet, ReplicatedRepo, Status, Tenant,
    read_only, write,
};
use diesel_replica_testkit::Cluster;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use tower_http::trace::TraceLayer;

/// The migrations each tenant's schema gets when it is provisioned.
const MIGRATIONS: EmbeddedMigrations = embed_migrations!("examples/service_migrations");

/// The request header naming the tenant.
const TENANT: &str = "x-tenant";
/// The header carrying a read-your-writes token, in both directions.
const READ_AFTER: &str = "x-read-after";

// `table!` generates public items without docs.
#[allow(missing_docs)]
mod schema {
    diesel::table! {
        items (id) {
            id -> Int8,
            name -> Text,
        }
    }
}
use schema::items;

/// An item, as stored and as answered.
#[derive(Queryable, Selectable, Serialize)]
#[diesel(table_name = items)]
struct Item {
    id: i64,
    name: String,
}

/// The body of `POST /items`.
#[derive(Deserialize)]
struct NewItem {
    name: String,
}

/// The repo: its queries as methods. A `&Tenant` parameter runs a method in
/// the tenant's schema, a `&ReadYourWrites` one records (writes) or honours
/// (reads) the request's token.
#[derive(ReplicatedRepo, Clone)]
struct Db {
    replicas: ReplicaSet,
}

impl Db {
    /// The shared table, for requests without a tenant.
    #[write]
    async fn create_shared_table(&self, conn: &mut AsyncPgConnection) -> QueryResult<()> {
        // Several instances may start at once: one creates, the others wait.
        diesel::sql_query("SELECT pg_advisory_xact_lock(hashtext('service: public.items'))")
            .execute(conn)
            .await?;
        diesel::sql_query(
            "CREATE TABLE IF NOT EXISTS public.items (id bigserial PRIMARY KEY, name text NOT NULL)",
        )
        .execute(conn)
        .await?;
        Ok(())
    }

    #[write]
    async fn add_item(
        &self,
        conn: &mut AsyncPgConnection,
        rw: &ReadYourWrites,
        name: &str,
    ) -> QueryResult<Item> {
        insert(conn, name).await
    }

    #[write]
    async fn add_tenant_item(
        &self,
        conn: &mut AsyncPgConnection,
        tenant: &Tenant,
        rw: &ReadYourWrites,
        name: &str,
    ) -> QueryResult<Item> {
        insert(conn, name).await
    }

    #[read_only]
    async fn item(
        &self,
        conn: &mut AsyncPgConnection,
        rw: &ReadYourWrites,
        id: i64,
    ) -> QueryResult<Option<Item>> {
        find(conn, id).await
    }

    #[read_only]
    async fn tenant_item(
        &self,
        conn: &mut AsyncPgConnection,
        tenant: &Tenant,
        rw: &ReadYourWrites,
        id: i64,
    ) -> QueryResult<Option<Item>> {
        find(conn, id).await
    }
}

// The queries, in whichever schema the call runs in.

async fn insert(conn: &mut AsyncPgConnection, name: &str) -> QueryResult<Item> {
    diesel::insert_into(items::table)
        .values(items::name.eq(name))
        .returning(Item::as_returning())
        .get_result(conn)
        .await
}

/// No row is no error (a 404, not a failed query in the metrics).
async fn find(conn: &mut AsyncPgConnection, id: i64) -> QueryResult<Option<Item>> {
    items::table
        .find(id)
        .select(Item::as_select())
        .first(conn)
        .await
        .optional()
}

/// What the handlers share.
#[derive(Clone)]
struct App {
    db: Db,
    metrics: PrometheusHandle,
}

async fn health(State(app): State<App>) -> (StatusCode, Json<Status>) {
    let status = app.db.replica_set().status();
    let code = if status.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(status))
}

async fn render_metrics(State(app): State<App>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}

/// The answer of `PUT /tenants/{name}`.
#[derive(Serialize)]
struct Provisioned {
    tenant: String,
    created_schema: bool,
    applied: Vec<String>,
}

async fn provision(
    State(app): State<App>,
    Path(name): Path<String>,
) -> Result<Json<Provisioned>, ApiError> {
    let tenant = Tenant::new(name).map_err(ApiError::bad_request)?;
    let done = app
        .db
        .replica_set()
        .provision_tenant(&tenant, MIGRATIONS)
        .await?;
    Ok(Json(Provisioned {
        tenant: done.tenant.name().to_owned(),
        created_schema: done.created_schema,
        applied: done.applied,
    }))
}

async fn create_item(
    State(app): State<App>,
    headers: HeaderMap,
    Json(new): Json<NewItem>,
) -> Result<impl IntoResponse, ApiError> {
    let (tenant, rw) = context(&headers)?;
    let item = match &tenant {
        Some(tenant) => app.db.add_tenant_item(tenant, &rw, &new.name).await?,
        None => app.db.add_item(&rw, &new.name).await?,
    };
    let location = format!("/items/{}", item.id);
    Ok((
        StatusCode::OK,
        [(header::LOCATION, location)],
        read_after(&rw),
        Json(item),
    ))
}

async fn get_item(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse, ApiError> {
    let (tenant, rw) = context(&headers)?;
    let item = match &tenant {
        Some(tenant) => app.db.tenant_item(tenant, &rw, id).await?,
        None => app.db.item(&rw, id).await?,
    };
    let item = item.ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no item {id}")))?;
    Ok((read_after(&rw), Json(item)))
}

/// The request's tenant (none: the `public` schema) and read-your-writes
/// session, from its headers.
fn context(headers: &HeaderMap) -> Result<(Option<Tenant>, ReadYourWrites), ApiError> {
    let text = |name: &str| {
        headers
            .get(name)
            .map(|value| value.to_str())
            .transpose()
            .map_err(|_| ApiError::bad_request(format!("the {name} header is not plain text")))
    };
    let tenant = text(TENANT)?
        .map(Tenant::new)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let rw = ReadYourWrites::resume(text(READ_AFTER)?).map_err(ApiError::bad_request)?;
    Ok((tenant, rw))
}

/// The session's token, for the client to send back with its next request.
fn read_after(rw: &ReadYourWrites) -> Option<[(&'static str, String); 1]> {
    rw.token().map(|token| [(READ_AFTER, token.to_string())])
}

/// An error answer: a status and a message for the client, as JSON.
struct ApiError(StatusCode, String);

impl ApiError {
    fn bad_request(error: impl ToString) -> Self {
        Self(StatusCode::BAD_REQUEST, error.to_string())
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        if let Error::UnknownTenant { tenant, .. } = &error {
            let message =
                format!("unknown tenant `{tenant}`: create it with PUT /tenants/{tenant}");
            return Self(StatusCode::NOT_FOUND, message);
        }
        // The library's messages name nodes, never passwords; still, the
        // client gets the kind of failure, and the log the whole story.
        let kind = error.kind();
        let error: &(dyn StdError + 'static) = &error;
        match kind {
            ErrorKind::NotFound => Self(StatusCode::NOT_FOUND, "not found".to_owned()),
            kind if kind.is_unavailable() => {
                tracing::warn!(error, "database unavailable");
                let message = format!("the database is unavailable ({kind}); try again");
                Self(StatusCode::SERVICE_UNAVAILABLE, message)
            }
            kind => {
                tracing::error!(error, "request failed");
                Self(StatusCode::INTERNAL_SERVER_ERROR, format!("{kind} error"))
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn StdError>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_http=debug".into()),
        )
        .init();

    // Before the set connects: it registers its nodes' metrics as it starts.
    let metrics = PrometheusBuilder::new()
        .set_buckets(&[
            0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])?
        .install_recorder()?;
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });

    let configured = ["DATABASE_URL", "DATABASE_SECRET", "DATABASE_SECRET_FILE"]
        .iter()
        .any(|key| std::env::var_os(key).is_some());
    let (config, _cluster) = if configured {
        (Config::from_env()?, None)
    } else {
        tracing::info!("no DATABASE_URL set: starting a local primary and 2 streaming replicas");
        let cluster = Cluster::start(2)?;
        (cluster.config(), Some(cluster))
    };

    let db = Db::connect(config).await?;
    db.create_shared_table().await?;

    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(render_metrics))
        .route("/tenants/{name}", put(provision))
        .route("/items", post(create_item))
        .route("/items/{id}", get(get_item))
        .layer(TraceLayer::new_for_http())
        .with_state(App { db, metrics });

    let addr = std::env::var("SERVICE_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown())
        .await?;
    Ok(())
}

/// Ctrl-C, or SIGTERM (what a container is stopped with).
async fn shutdown() {
    #[cfg(unix)]
    let term = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        term.recv().await;
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}
