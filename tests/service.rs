//! The example service (`examples/service.rs`) as its clients see it: the
//! built binary runs against a real primary and two streaming replicas, and
//! a real HTTP client checks its answers, `/health` and `/metrics`.

mod common;

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::closed_port;
use diesel_replica_testkit::Cluster;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn main() -> ExitCode {
    // One at a time: a test stops the primary.
    common::run_one_at_a_time(
        2,
        "SELECT 1",
        tests![
            items_live_in_the_schema_of_the_tenant_in_the_header,
            health_and_metrics_name_every_node,
            a_stopped_writer_is_a_503_and_reads_go_on,
        ],
    )
}

/// The example's binary, built by Cargo beside this test's:
/// `target/<profile>/deps/service-<hash>` → `target/<profile>/examples/service`.
/// `cargo test` builds examples; `cargo test --test service` alone does
/// not, so it is built (or brought up to date) here.
fn service_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/");
    let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => panic!("no profile directory above {}", exe.display()),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    // What Cargo tells this test of its package would reach the build
    // scripts, which take it for a change (ring's reruns on
    // CARGO_MANIFEST_DIR) and rebuild.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || name.starts_with("CARGO_BIN_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
            ]
            .contains(&name.as_ref())
        {
            build.env_remove(name.as_ref());
        }
    }
    let built = build
        .args([
            "build",
            "--quiet",
            "--example",
            "service",
            "--profile",
            profile,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(built.success(), "cannot build the service example");
    profile_dir
        .join("examples")
        .join(format!("service{}", std::env::consts::EXE_SUFFIX))
}

/// A running service; killed when dropped, its log printed if the test
/// failed.
struct Service {
    child: Child,
    log: PathBuf,
    base: String,
    http: reqwest::Client,
}

impl Service {
    /// Starts the service on `cluster` and waits until it answers.
    async fn start(cluster: &Cluster) -> Self {
        let port = closed_port();
        let log = std::env::temp_dir().join(format!("diesel-replica-service-{port}.log"));
        let out = File::create(&log).expect("a log file");
        let child = Command::new(service_binary())
            .env("DATABASE_URL", cluster.writer_url())
            .env("DATABASE_REPLICA_URLS", cluster.replica_urls().join(","))
            .env("SERVICE_ADDR", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info,tower_http=debug")
            .env_remove("DATABASE_SECRET")
            .env_remove("DATABASE_SECRET_FILE")
            .env_remove("DATABASE_REPLICA_HOSTS")
            .stdout(out.try_clone().expect("the log file"))
            .stderr(out)
            .spawn()
            .expect("the service starts");
        let mut service = Self {
            child,
            log,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = service.child.try_wait().expect("the child's status") {
                panic!("the service exited before answering: {status}");
            }
            if let Ok(response) = service.http.get(service.url("/health")).send().await
                && response.status() == StatusCode::OK
            {
                return service;
            }
            assert!(
                Instant::now() < deadline,
                "the service did not answer /health"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `PUT /tenants/{name}`: the status and the JSON answer.
    async fn provision(&self, name: &str) -> (StatusCode, Value) {
        answer(self.http.put(self.url(&format!("/tenants/{name}")))).await
    }

    /// `POST /items` as `tenant`: the status, the JSON answer and the
    /// read-after token.
    async fn create(&self, tenant: Option<&str>, name: &str) -> (StatusCode, Value, String) {
        let mut request = self
            .http
            .post(self.url("/items"))
            .json(&json!({ "name": name }));
        if let Some(tenant) = tenant {
            request = request.header("x-tenant", tenant);
        }
        let response = request.send().await.expect("an answer");
        let token = response
            .headers()
            .get("x-read-after")
            .map(|value| value.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let status = response.status();
        let body = response.json().await.expect("a JSON answer");
        (status, body, token)
    }

    /// `GET /items/{id}` as `tenant`, after `token`.
    async fn item(&self, tenant: Option<&str>, token: &str, id: &Value) -> (StatusCode, Value) {
        let mut request = self
            .http
            .get(self.url(&format!("/items/{id}")))
            .header("x-read-after", token);
        if let Some(tenant) = tenant {
            request = request.header("x-tenant", tenant);
        }
        answer(request).await
    }

    async fn text(&self, path: &str) -> (StatusCode, String) {
        let response = self
            .http
            .get(self.url(path))
            .send()
            .await
            .expect("an answer");
        (response.status(), response.text().await.expect("a text"))
    }
}

/// Sends `request`: the status and the JSON answer.
async fn answer(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("an answer");
    let status = response.status();
    let text = response.text().await.expect("an answer's body");
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    (status, body)
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- the service's log ---\n{log}--- end of the service's log ---");
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

async fn items_live_in_the_schema_of_the_tenant_in_the_header(cluster: Arc<Cluster>) {
    let service = Service::start(&cluster).await;

    // Provisioning runs the migrations once; again, it has nothing to do.
    let (status, body) = service.provision("svc_acme").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tenant"], "svc_acme");
    assert_eq!(body["created_schema"], true);
    assert_eq!(body["applied"].as_array().unwrap().len(), 1, "{body}");
    let (status, body) = service.provision("svc_acme").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["created_schema"], false);
    assert_eq!(body["applied"], json!([]));
    assert_eq!(service.provision("svc_globex").await.0, StatusCode::OK);

    for bad in ["Acme", "pg_catalog", "public", "1st", "a-b"] {
        let (status, body) = service.provision(bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("tenant name"),
            "{bad}: {body}"
        );
    }

    // Each tenant's items in its own table, numbered from 1.
    let (status, anvil, token) = service.create(Some("svc_acme"), "anvil").await;
    assert_eq!(status, StatusCode::OK, "{anvil}");
    assert_eq!(anvil, json!({ "id": 1, "name": "anvil" }));
    assert!(
        !token.is_empty(),
        "a write answers with its x-read-after token"
    );
    assert_eq!(
        service.item(Some("svc_acme"), &token, &anvil["id"]).await,
        (StatusCode::OK, anvil.clone())
    );
    let (status, body) = service.item(Some("svc_globex"), &token, &anvil["id"]).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let (status, bellows, token) = service.create(Some("svc_globex"), "bellows").await;
    assert_eq!(status, StatusCode::OK, "{bellows}");
    assert_eq!(bellows, json!({ "id": 1, "name": "bellows" }));
    assert_eq!(
        service
            .item(Some("svc_globex"), &token, &bellows["id"])
            .await,
        (StatusCode::OK, bellows.clone())
    );
    assert_eq!(
        service.item(Some("svc_acme"), &token, &json!(1)).await,
        (StatusCode::OK, anvil.clone())
    );

    // Without the header: the shared `public.items`.
    let (status, crucible, token) = service.create(None, "crucible").await;
    assert_eq!(status, StatusCode::OK, "{crucible}");
    assert_eq!(crucible["name"], "crucible");
    assert!(crucible["id"].is_i64(), "{crucible}");
    assert_eq!(
        service.item(None, &token, &crucible["id"]).await,
        (StatusCode::OK, crucible.clone())
    );
    let (_, seen) = service
        .item(Some("svc_globex"), &token, &crucible["id"])
        .await;
    assert_ne!(seen, crucible, "a tenant sees a shared item");
    let (status, body) = service.item(None, &token, &json!(1_000_000)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // A tenant never provisioned: a clear 404, for reads and writes.
    let (status, body) = service.item(Some("svc_nobody"), "", &json!(1)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("unknown tenant `svc_nobody`"),
        "{body}"
    );
    let (status, body, _) = service.create(Some("svc_nobody"), "ghost").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("unknown tenant"),
        "{body}"
    );

    // Bad input: 400, with a message.
    let (status, body) = service.item(Some("Robert'); DROP"), "", &json!(1)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("tenant name"),
        "{body}"
    );
    let (status, body, _) = service.create(Some(""), "nameless").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = service.item(None, "not a token", &json!(1)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("write token"),
        "{body}"
    );
    assert!(!body.to_string().contains("not a token"), "{body}");
}

async fn health_and_metrics_name_every_node(cluster: Arc<Cluster>) {
    let service = Service::start(&cluster).await;

    let (status, body) = service.text("/health").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!body.contains(cluster.password()), "{body}");
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["healthy"], true, "{health}");
    assert_eq!(health["writer_available"], true, "{health}");
    assert_eq!(health["writer"]["role"], "writer", "{health}");
    assert_eq!(health["writer"]["health"], "up", "{health}");
    let replicas = health["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 2, "{health}");
    for replica in replicas {
        assert_eq!(replica["role"], "replica", "{health}");
        assert_eq!(replica["health"], "up", "{health}");
    }
    let writer = health["writer"]["id"].as_str().unwrap().to_owned();
    let replicas: Vec<String> = replicas
        .iter()
        .map(|replica| replica["id"].as_str().unwrap().to_owned())
        .collect();

    // A write, and reads of it after its token: they run where the write
    // is known to be (first the replica they waited on).
    let (status, item, token) = service.create(None, "gauge").await;
    assert_eq!(status, StatusCode::OK, "{item}");
    for _ in 0..10 {
        assert_eq!(
            service.item(None, &token, &item["id"]).await,
            (StatusCode::OK, item.clone())
        );
    }

    // Plain reads go to either replica; the connection gauges are brought
    // up to date every second.
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        for _ in 0..10 {
            let (status, body) = service.item(None, "", &item["id"]).await;
            assert!(
                status == StatusCode::OK || status == StatusCode::NOT_FOUND,
                "{status}: {body}"
            );
        }
        let (status, metrics) = service.text("/metrics").await;
        assert_eq!(status, StatusCode::OK);
        let counted = |node: &str| {
            metrics.contains(&format!(
                "db_client_connection_count{{db_client_connection_pool_name=\"{node}\""
            ))
        };
        let served = |node: &str, route: &str| {
            sample(&metrics, "db_client_operation_duration_count", node, route) > 0.0
        };
        if counted(&writer)
            && replicas.iter().all(|replica| counted(replica))
            && served(&writer, "transaction")
            && replicas.iter().all(|replica| served(replica, "read"))
        {
            break metrics;
        }
        assert!(
            Instant::now() < deadline,
            "missing node metrics for {writer} and {replicas:?}:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(!metrics.contains(cluster.password()));
    assert!(
        metrics.contains("db_client_operation_duration_bucket{"),
        "{metrics}"
    );
    for node in replicas.iter().chain([&writer]) {
        assert!(
            metrics.contains(&format!(
                "diesel_replica_node_up{{db_client_connection_pool_name=\"{node}\""
            )),
            "{metrics}"
        );
    }
}

async fn a_stopped_writer_is_a_503_and_reads_go_on(cluster: Arc<Cluster>) {
    let service = Service::start(&cluster).await;
    let (status, item, _) = service.create(None, "bolt").await;
    assert_eq!(status, StatusCode::OK, "{item}");
    cluster.wait_for_replication().unwrap();

    let primary = cluster.primary_id();
    cluster.stop(primary).unwrap();
    // Writes fail at once with a 503 that names no password; after
    // `eject_after` (2) of them the status is unhealthy.
    for _ in 0..2 {
        let (status, body, _) = service.create(None, "lost").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("unavailable"),
            "{body}"
        );
        assert!(!body.to_string().contains(cluster.password()), "{body}");
    }
    let (status, body) = service.text("/health").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["healthy"], false, "{health}");
    assert!(health["writer"]["last_error"].is_string(), "{health}");
    assert!(!body.contains(cluster.password()), "{body}");
    // The replicas still serve reads.
    assert_eq!(
        service.item(None, "", &item["id"]).await,
        (StatusCode::OK, item.clone())
    );

    cluster.start_node(primary).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body, _) = service.create(None, "back").await;
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(Instant::now() < deadline, "writes did not resume: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = service.text("/health").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// The sum of `name`'s samples for `node` on `route`, whatever their
/// outcome (0 when there is none).
fn sample(metrics: &str, name: &str, node: &str, route: &str) -> f64 {
    let labels = [
        format!("db_client_connection_pool_name=\"{node}\""),
        format!("diesel_replica_route=\"{route}\""),
    ];
    metrics
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| labels.iter().all(|label| line.contains(label.as_str())))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
