//! Spans, metrics and the status snapshot, on a real primary and two
//! streaming replicas, one of which the tests kill.

mod common;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::aurora::{Aurora, Form};
use diesel::QueryableByName;
use diesel::sql_types::Integer;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_replica::{Balance, Config, ReadYourWrites, ReplicaSet, ReplicatedRepo, read_only};
use diesel_replica_testkit::{Cluster, NodeId};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// A value no log, span or metric may show: it is bound to a query.
const BOUND: i32 = 987_654_321;

static SNAPSHOTTER: std::sync::OnceLock<Snapshotter> = std::sync::OnceLock::new();

fn main() -> ExitCode {
    let recorder = DebuggingRecorder::new();
    SNAPSHOTTER.set(recorder.snapshotter()).ok();
    recorder
        .install()
        .expect("the only recorder of this test binary");
    common::run_one_at_a_time(
        2,
        "SELECT 1",
        tests![
            a_retried_read_is_one_call_span_over_two_attempt_spans,
            metrics_name_every_node_and_count_retries_ejections_and_fallbacks,
            the_status_serializes_every_field,
            what_aurora_discovery_cannot_use_is_in_gauges_and_the_status,
        ],
    )
}

#[derive(ReplicatedRepo, Clone)]
struct Repo {
    replicas: ReplicaSet,
}

#[derive(QueryableByName)]
struct Answer {
    #[diesel(sql_type = Integer)]
    v: i32,
}

impl Repo {
    #[read_only]
    async fn answer(&self, conn: &mut AsyncPgConnection, n: i32) -> diesel::QueryResult<i32> {
        let row: Answer = diesel::sql_query("SELECT $1::int AS v")
            .bind::<Integer, _>(n)
            .get_result(conn)
            .await?;
        Ok(row.v)
    }
}

/// Replica 0 takes every read while it is up (replica 1 has weight 0).
fn replica_0_first(cluster: &Cluster) -> Config {
    let mut config = cluster.config();
    config.balance = Balance::Weighted;
    config.replica_weights = vec![1, 0];
    config
}

/// One span as a test subscriber saw it.
#[derive(Debug, Clone)]
struct SpanSeen {
    name: &'static str,
    id: u64,
    parent: Option<u64>,
    fields: BTreeMap<String, String>,
}

/// Records every span with its parent and fields.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<SpanSeen>>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let parent = ctx
            .span(id)
            .and_then(|span| span.parent())
            .map(|parent| parent.id().into_u64());
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().push(SpanSeen {
            name: attrs.metadata().name(),
            id: id.into_u64(),
            parent,
            fields,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut spans = self.0.lock().unwrap();
        if let Some(span) = spans.iter_mut().find(|span| span.id == id.into_u64()) {
            values.record(&mut Fields(&mut span.fields));
        }
    }
}

async fn a_retried_read_is_one_call_span_over_two_attempt_spans(cluster: Arc<Cluster>) {
    let repo = Repo {
        replicas: ReplicaSet::connect(replica_0_first(&cluster))
            .await
            .unwrap(),
    };
    let spans = Spans::default();
    let log = common::Captured::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone()).with(
        tracing_subscriber::fmt::layer()
            .with_writer({
                let log = log.clone();
                move || log.clone()
            })
            .with_filter(tracing_subscriber::filter::LevelFilter::TRACE),
    );
    let guard = tracing::subscriber::set_default(subscriber);
    cluster.kill(NodeId::Replica(0)).unwrap();
    assert_eq!(repo.answer(BOUND).await.unwrap(), BOUND);
    drop(guard);
    cluster.start_node(NodeId::Replica(0)).unwrap();

    let spans = spans.0.lock().unwrap().clone();
    let calls: Vec<&SpanSeen> = spans.iter().filter(|s| s.name == "db.call").collect();
    assert_eq!(calls.len(), 1, "{spans:#?}");
    let call = calls[0];
    let field = |span: &SpanSeen, name: &str| span.fields.get(name).cloned().unwrap_or_default();
    assert_eq!(field(call, "db.system.name"), "postgresql");
    assert_eq!(field(call, "db.operation.name"), "answer");
    assert_eq!(field(call, "diesel_replica.route"), "read");
    assert_eq!(field(call, "diesel_replica.attempts"), "2");
    assert!(!call.fields.contains_key("error.type"), "{call:#?}");
    let attempts: Vec<&SpanSeen> = spans
        .iter()
        .filter(|s| s.name == "db.attempt" && s.parent == Some(call.id))
        .collect();
    assert_eq!(attempts.len(), 2, "{spans:#?}");
    let port = |id| cluster.node(id).port().to_string();
    assert_eq!(field(attempts[0], "server.port"), port(NodeId::Replica(0)));
    assert_eq!(field(attempts[1], "server.port"), port(NodeId::Replica(1)));
    assert_eq!(field(attempts[0], "diesel_replica.attempt"), "1");
    assert!(
        field(attempts[0], "error.type").starts_with("checkout"),
        "{:#?}",
        attempts[0]
    );
    assert_eq!(
        field(attempts[1], "diesel_replica.retry.reason"),
        field(attempts[0], "error.type")
    );
    assert_eq!(field(attempts[1], "server.address"), "127.0.0.1");
    // Nothing shows the password or the bound value.
    let everything = format!("{spans:?}\n{}", log.text());
    for secret in [cluster.password(), &BOUND.to_string()] {
        assert!(
            !everything.contains(secret),
            "{secret} shows in {everything}"
        );
    }
    cluster.wait_for_replication().unwrap();
}

/// The metrics recorded so far: name, labels, value.
fn metrics() -> Vec<(String, BTreeMap<String, String>, DebugValue)> {
    SNAPSHOTTER
        .get()
        .unwrap()
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let labels = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            (key.name().to_owned(), labels, value)
        })
        .collect()
}

async fn metrics_name_every_node_and_count_retries_ejections_and_fallbacks(cluster: Arc<Cluster>) {
    let mut config = replica_0_first(&cluster);
    config.health.eject_after = 1;
    config.health.probe_interval = Duration::from_secs(60);
    config.health.probe_max_interval = Duration::from_secs(60);
    // No lag monitor: its sample of the killed replica could eject it before the read
    // that is to retry off it.
    config.consistency.lag_interval = Duration::ZERO;
    let repo = Repo {
        replicas: ReplicaSet::connect(config).await.unwrap(),
    };
    let db = &repo.replicas;
    let status = db.status();
    let writer = status.writer.id.to_string();
    let (r0, r1) = (
        status.replicas[0].id.to_string(),
        status.replicas[1].id.to_string(),
    );
    for _ in 0..5 {
        repo.answer(1).await.unwrap();
    }
    db.transaction(async |conn| diesel::sql_query("SELECT 1").execute(conn).await)
        .await
        .unwrap();
    // A retry and an ejection: replica 0 dies.
    cluster.kill(NodeId::Replica(0)).unwrap();
    repo.answer(2).await.unwrap();
    // A fallback: a token from the future, which no replica has replayed.
    let future = ReadYourWrites::resume(Some("FFFFFFFF/FFFFFFFE@0")).unwrap();
    db.session(&future)
        .read(async |conn| diesel::sql_query("SELECT 1").execute(conn).await)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let seen = metrics();
    cluster.start_node(NodeId::Replica(0)).unwrap();

    let has = |name: &str, labels: &[(&str, &str)]| {
        seen.iter().any(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
    };
    let value = |name: &str, labels: &[(&str, &str)]| {
        seen.iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| match v {
                DebugValue::Counter(c) => *c as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(h) => h.len() as f64,
            })
    };
    const POOL: &str = "db.client.connection.pool.name";
    for node in [&writer, &r0, &r1] {
        for name in [
            "db.client.connection.max",
            "db.client.connection.pending_requests",
            "db.client.connection.timeouts",
            "db.client.connection.wait_time",
            "diesel_replica.node.up",
        ] {
            assert!(has(name, &[(POOL, node)]), "{name} of {node}: {seen:#?}");
        }
        for state in ["idle", "used"] {
            assert!(
                has(
                    "db.client.connection.count",
                    &[(POOL, node), ("db.client.connection.state", state)]
                ),
                "{node} {state}"
            );
        }
    }
    let duration = "db.client.operation.duration";
    assert!(has(
        duration,
        &[
            (POOL, &r0),
            ("diesel_replica.route", "read"),
            ("outcome", "ok")
        ]
    ));
    assert!(has(
        duration,
        &[
            (POOL, &r0),
            ("diesel_replica.route", "read"),
            ("outcome", "error")
        ]
    ));
    assert!(has(
        duration,
        &[
            (POOL, &r1),
            ("diesel_replica.route", "read"),
            ("outcome", "ok")
        ]
    ));
    assert!(has(
        duration,
        &[
            (POOL, &writer),
            ("diesel_replica.route", "transaction"),
            ("outcome", "ok")
        ]
    ));
    assert!(has("db.client.connection.create_time", &[(POOL, &writer)]));
    assert!(value("diesel_replica.retries", &[(POOL, &r0)]).unwrap() >= 1.0);
    assert!(value("diesel_replica.ejections", &[(POOL, &r0)]).unwrap() >= 1.0);
    assert_eq!(value("diesel_replica.node.up", &[(POOL, &r0)]), Some(0.0));
    assert_eq!(value("diesel_replica.node.up", &[(POOL, &r1)]), Some(1.0));
    assert!(
        value(
            "diesel_replica.writer_fallbacks",
            &[("reason", "not_replayed")]
        )
        .unwrap()
            >= 1.0
    );
    cluster.wait_for_replication().unwrap();
}

async fn the_status_serializes_every_field(cluster: Arc<Cluster>) {
    let db = ReplicaSet::connect(cluster.config()).await.unwrap();
    let status = serde_json::to_value(db.status()).unwrap();
    for key in [
        "healthy",
        "writer_available",
        "generation",
        "source",
        "discovery",
        "writer",
        "replicas",
    ] {
        assert!(status.get(key).is_some(), "{key} in {status:#}");
    }
    assert_eq!(status["healthy"], true);
    assert_eq!(status["source"], "static");
    let replicas = status["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 2);
    for node in std::iter::once(&status["writer"]).chain(replicas) {
        for key in [
            "id",
            "role",
            "name",
            "address",
            "health",
            "in_flight",
            "consecutive_failures",
            "ejections",
            "retried",
            "last_error",
            "lag_ms",
            "lag_bytes",
            "behind",
            "max_size",
            "size",
            "available",
            "waiting",
        ] {
            assert!(node.get(key).is_some(), "{key} in {node:#}");
        }
        assert_eq!(node["health"], "up");
    }
    assert_eq!(status["writer"]["role"], "writer");
    assert_eq!(replicas[0]["role"], "replica");
    let text = status.to_string();
    assert!(!text.contains(cluster.password()), "{text}");
}

/// The discovery gauges set since the last snapshot, by name (and rule):
/// `stale`, `no_server_id`, `no_endpoint`, `writer_not_in_view`, `failed`,
/// `writers`.
/// A snapshot takes the values: the next one holds only what was set
/// after it.
fn discovery_gauges() -> BTreeMap<String, f64> {
    metrics()
        .into_iter()
        .filter_map(|(name, labels, value)| {
            let name = name.strip_prefix("diesel_replica.discovery.")?;
            let key = labels
                .get("rule")
                .cloned()
                .unwrap_or_else(|| name.to_owned());
            match value {
                DebugValue::Gauge(g) => Some((key, g.into_inner())),
                _ => None,
            }
        })
        .collect()
}

/// Waits (up to 2 s) until the gauges a survey sets are `expected`.
async fn wait_for_gauges(expected: &[(&str, f64)]) {
    let expected: BTreeMap<String, f64> = expected
        .iter()
        .map(|(k, v)| ((*k).to_owned(), *v))
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        // Longer than the survey interval: each snapshot sees a survey.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let seen = discovery_gauges();
        if seen == expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{seen:?} != {expected:?}"
        );
    }
}

async fn what_aurora_discovery_cannot_use_is_in_gauges_and_the_status(cluster: Arc<Cluster>) {
    let aurora = Aurora::install(&cluster, Form::Current).await;
    aurora.insert(&[
        (NodeId::Primary, "MASTER_SESSION_ID", 0.0),
        (NodeId::Replica(0), "a", 0.0),
        (NodeId::Replica(1), "b", 0.0),
    ]);
    aurora.drive(&format!(
        "UPDATE aurora_topology SET last_update_timestamp = now() - interval '1 hour' \
         WHERE server_id = '{}'; \
         INSERT INTO aurora_topology (server_id, session_id) VALUES ('no such/instance', 'c')",
        aurora.instance(NodeId::Replica(1))
    ));
    let mut vars = aurora.vars();
    vars.push(("DATABASE_DISCOVERY_INTERVAL_MS", "100".to_owned()));
    let db = ReplicaSet::connect(Config::from_vars(None, vars).unwrap())
        .await
        .unwrap();
    wait_for_gauges(&[
        ("stale", 1.0),
        ("no_endpoint", 1.0),
        ("no_server_id", 0.0),
        ("writer_not_in_view", 0.0),
        ("failed", 0.0),
        ("writers", 0.0),
    ])
    .await;
    let status = serde_json::to_value(db.status()).unwrap();
    let rows = status["discovery"]["rejected"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{status:#}");
    assert_eq!(rows[0]["server_id"], aurora.instance(NodeId::Replica(1)));
    assert_eq!(rows[0]["rule"], "stale");
    assert_eq!(rows[1]["server_id"], "no such/instance");
    assert_eq!(rows[1]["rule"], "no_endpoint");
    assert_eq!(status["discovery"]["writer_not_in_view"], false);
    assert_eq!(status["discovery"]["failed"], serde_json::Value::Null);

    // The view loses its writer's row: the gauge says so until it is back.
    aurora.drive(&format!(
        "DELETE FROM aurora_topology WHERE server_id = '{}'",
        aurora.instance(NodeId::Primary)
    ));
    wait_for_gauges(&[
        ("stale", 1.0),
        ("no_endpoint", 1.0),
        ("no_server_id", 0.0),
        ("writer_not_in_view", 1.0),
        ("failed", 0.0),
        ("writers", 0.0),
    ])
    .await;
    assert!(db.status().writer_available);
    aurora.drive(&format!(
        "DELETE FROM aurora_topology WHERE server_id = 'no such/instance'; \
         UPDATE aurora_topology SET last_update_timestamp = now(); \
         INSERT INTO aurora_topology (server_id, port, session_id) VALUES ('{}', {}, \
         'MASTER_SESSION_ID')",
        aurora.instance(NodeId::Primary),
        cluster.primary().port()
    ));
    wait_for_gauges(&[
        ("stale", 0.0),
        ("no_endpoint", 0.0),
        ("no_server_id", 0.0),
        ("writer_not_in_view", 0.0),
        ("failed", 0.0),
        ("writers", 0.0),
    ])
    .await;
    assert!(db.status().discovery.is_clean(), "{:?}", db.status());
}
