//! Tracing spans of routed calls, in OpenTelemetry's database client
//! vocabulary: a `db.call` span per call (read, fresh read, write,
//! transaction) and a `db.attempt` child per attempt on a node. They carry
//! no SQL text, no bound value and no password. Without a subscriber that
//! listens, a span is a disabled handle and nothing is formatted.
//!
//! `db.call`: `otel.name` (`{operation} {namespace}`), `otel.kind`,
//! `db.system.name` (`postgresql`), `db.namespace` (the database, and
//! `database|schema` for a tenant), `db.operation.name` (the repo method's
//! name, else the route), `diesel_replica.route`, `diesel_replica.tenant`,
//! `diesel_replica.attempts`, `diesel_replica.fallback_to_writer`,
//! `error.type` (an [`ErrorKind`](crate::ErrorKind) name) when it fails.
//!
//! `db.attempt`: `server.address`, `server.port`, `db.namespace`,
//! `diesel_replica.node`, `diesel_replica.role`, `diesel_replica.attempt`
//! (from 1), `diesel_replica.retry.reason` (why the attempt before failed),
//! `error.type` when it fails.

use tracing::Span;
use tracing::field::Empty;

use crate::node::Node;
use crate::route::Call;

/// The span of one call, on a set whose writer's database is `database`.
pub(crate) fn call_span(call: &Call<'_>, database: &str) -> Span {
    let span = tracing::info_span!(
        "db.call",
        otel.name = Empty,
        otel.kind = "client",
        db.system.name = "postgresql",
        db.namespace = Empty,
        db.operation.name = call.operation(),
        diesel_replica.route = call.route.as_str(),
        diesel_replica.tenant = Empty,
        diesel_replica.attempts = Empty,
        diesel_replica.fallback_to_writer = Empty,
        error.type = Empty,
    );
    if !span.is_disabled() {
        let namespace = match call.scope {
            Some(scope) => {
                let tenant = scope.tenant.name();
                span.record("diesel_replica.tenant", tenant);
                format!("{database}|{tenant}")
            }
            None => database.to_owned(),
        };
        span.record(
            "otel.name",
            format!("{} {namespace}", call.operation()).as_str(),
        );
        span.record("db.namespace", namespace.as_str());
    }
    span
}

/// The span of attempt `number` (from 1) on `node`; `retry_reason` is why
/// the attempt before it failed.
pub(crate) fn attempt_span(node: &Node, number: u32, retry_reason: Option<&'static str>) -> Span {
    let span = tracing::info_span!(
        "db.attempt",
        server.address = Empty,
        server.port = node.url.port(),
        db.namespace = node.url.database(),
        diesel_replica.node = node.label.as_str(),
        diesel_replica.role = %node.role,
        diesel_replica.attempt = number,
        diesel_replica.retry.reason = retry_reason,
        error.type = Empty,
    );
    if !span.is_disabled() {
        span.record("server.address", node.url.host().as_str());
    }
    span
}
