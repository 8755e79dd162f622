//! Aurora on a real cluster: `aurora_replica_status()` emulated on the
//! primary (and replicated), instance ids that are names as Aurora's are,
//! an endpoint of its own for each instance, and an application role for
//! which the WAL-position functions fail, as they do on Aurora.
//!
//! Each instance's endpoint is a socket directory named after it,
//! `DIR/<instance id>`, holding a link to its node's socket, so that
//! `DATABASE_AURORA_HOST_PATTERN=DIR/?` makes every id a node as
//! `?.cluster-xyz.eu-west-1.rds.amazonaws.com` does on Aurora, with the
//! cluster endpoint's port.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use diesel_replica_testkit::{Cluster, NodeId};

/// How `aurora_replica_status()` reports the instance that answers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Form {
    /// Aurora PostgreSQL 13.9 and later (every 14, 15, 16 and 17 release):
    /// the answering instance's own row has a NULL `last_update_timestamp`.
    Current,
    /// Before 13.9: every row has its timestamp.
    Before13_9,
}

pub(crate) const FORMS: [Form; 2] = [Form::Current, Form::Before13_9];

/// The application's role while Aurora is emulated, and its password.
const ROLE: &str = "aurora_app";
const ROLE_PASSWORD: &str = "aurora-app-pw";

/// The WAL-position functions Aurora does not support ("Function
/// pg_last_wal_replay_lsn() is currently not supported for Aurora",
/// SQLSTATE 0A000). For [`ROLE`] they are revoked (`pg_catalog.` calls
/// fail with 42501) and shadowed on its search path by functions that
/// raise 0A000 (unqualified calls).
const WAL_FUNCTIONS: [(&str, &str); 7] = [
    ("pg_current_wal_lsn", "pg_lsn"),
    ("pg_current_wal_insert_lsn", "pg_lsn"),
    ("pg_current_wal_flush_lsn", "pg_lsn"),
    ("pg_last_wal_receive_lsn", "pg_lsn"),
    ("pg_last_wal_replay_lsn", "pg_lsn"),
    ("pg_last_xact_replay_timestamp", "timestamptz"),
    ("pg_is_wal_replay_paused", "bool"),
];

/// Held by the emulation in use: the tests of a binary share one
/// `aurora_topology`, so those that emulate Aurora take turns.
static IN_USE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The emulation on one cluster; dropping it removes the function, its
/// table and the endpoints.
pub(crate) struct Aurora<'c> {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    cluster: &'c Cluster,
    /// Holds one socket directory per instance.
    dir: PathBuf,
    /// The cluster endpoint's port, which the host pattern keeps.
    port: u16,
    /// The cluster endpoint: the writer's URL when installed, as [`ROLE`].
    endpoint: String,
}

impl<'c> Aurora<'c> {
    /// Installs the emulation in `form` once no other test of this binary
    /// uses one, with an instance for each node of `cluster` and no row
    /// yet; the writer's URL now is the cluster endpoint.
    pub(crate) async fn install(cluster: &'c Cluster, form: Form) -> Self {
        let turn = IN_USE.lock().await;
        static NEXT: AtomicU32 = AtomicU32::new(0);
        // Short: a socket's path holds at most 107 bytes.
        let dir = std::env::temp_dir().join(format!(
            "aurora-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let port = cluster.primary().port();
        let endpoint = format!("postgres://{ROLE}:{ROLE_PASSWORD}@127.0.0.1:{port}/postgres");
        let aurora = Self {
            _turn: turn,
            cluster,
            dir,
            port,
            endpoint,
        };
        let nodes = std::iter::once(cluster.primary_id()).chain(cluster.replica_ids());
        for id in nodes {
            let instance = aurora.dir.join(aurora.instance(id));
            std::fs::create_dir_all(&instance).unwrap();
            let node = cluster.node(id);
            let socket = cluster
                .socket_dir(id)
                .join(format!(".s.PGSQL.{}", node.port()));
            std::os::unix::fs::symlink(socket, instance.join(format!(".s.PGSQL.{port}"))).unwrap();
        }
        // The answering instance is told by its port, which is the same
        // inside a Docker container as outside.
        let answering = match form {
            Form::Current => "t.port = current_setting('port')::int",
            Form::Before13_9 => "false",
        };
        let mut role = format!(
            "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') \
             THEN CREATE ROLE {ROLE} LOGIN; END IF; END$$; \
             ALTER ROLE {ROLE} PASSWORD '{ROLE_PASSWORD}'; \
             GRANT ALL ON ALL TABLES IN SCHEMA public TO {ROLE}; \
             GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {ROLE}; \
             CREATE SCHEMA IF NOT EXISTS aurora_shadow; \
             GRANT USAGE ON SCHEMA aurora_shadow TO {ROLE}; \
             ALTER ROLE {ROLE} SET search_path = aurora_shadow, pg_catalog, public; "
        );
        for (function, returns) in WAL_FUNCTIONS {
            role += &format!(
                "REVOKE EXECUTE ON FUNCTION pg_catalog.{function}() FROM PUBLIC; \
                 CREATE OR REPLACE FUNCTION aurora_shadow.{function}() RETURNS {returns} \
                 LANGUAGE plpgsql AS $$BEGIN RAISE EXCEPTION \
                 'Function {function}() is currently not supported for Aurora' \
                 USING ERRCODE = '0A000'; END$$; "
            );
        }
        aurora.drive(&format!(
            "DROP FUNCTION IF EXISTS aurora_replica_status(); \
             DROP TABLE IF EXISTS aurora_topology; \
             CREATE TABLE aurora_topology (server_id text PRIMARY KEY, port int UNIQUE, \
             session_id text NOT NULL, replica_lag_in_msec float8 DEFAULT 0, \
             last_update_timestamp timestamptz NOT NULL DEFAULT now()); \
             CREATE FUNCTION aurora_replica_status() RETURNS TABLE (server_id text, \
             session_id text, replica_lag_in_msec float8, last_update_timestamp timestamptz) \
             LANGUAGE sql STABLE AS $$SELECT t.server_id, t.session_id, t.replica_lag_in_msec, \
             CASE WHEN {answering} THEN NULL ELSE t.last_update_timestamp END \
             FROM aurora_topology t$$"
        ));
        // After the table, so that the role may read it.
        aurora.drive(&role);
        aurora
    }

    /// Node `id`'s instance id, a name as Aurora's are.
    pub(crate) fn instance(&self, id: NodeId) -> String {
        match id {
            NodeId::Primary => "app-db-instance-1".to_owned(),
            NodeId::Replica(i) => format!("app-db-instance-{}", i + 2),
        }
    }

    /// The address of node `id` in [`Status`](diesel_replica::Status)
    /// once discovery made it a node.
    pub(crate) fn address(&self, id: NodeId) -> String {
        format!(
            "{}:{}",
            self.dir.join(self.instance(id)).display(),
            self.port
        )
    }

    /// The node whose instance endpoint `address` is, if any.
    pub(crate) fn node_at(&self, address: &str) -> Option<NodeId> {
        std::iter::once(self.cluster.primary_id())
            .chain(self.cluster.replica_ids())
            .find(|&id| self.address(id) == address)
    }

    /// The configuration's variables: the cluster endpoint as
    /// `DATABASE_URL` (as the application's role), Aurora discovery, and
    /// the host pattern.
    pub(crate) fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DATABASE_URL", self.endpoint.clone()),
            ("DATABASE_DISCOVERY", "aurora".to_owned()),
            (
                "DATABASE_AURORA_HOST_PATTERN",
                format!("{}/?", self.dir.display()),
            ),
        ]
    }

    /// Adds a row for each of `rows`: node, `session_id`, lag in ms.
    pub(crate) fn insert(&self, rows: &[(NodeId, &str, f64)]) {
        let values: Vec<String> = rows
            .iter()
            .map(|&(id, session, lag)| {
                format!(
                    "('{}', {}, '{session}', {lag})",
                    self.instance(id),
                    self.cluster.node(id).port()
                )
            })
            .collect();
        self.drive(&format!(
            "INSERT INTO aurora_topology (server_id, port, session_id, replica_lag_in_msec) \
             VALUES {}",
            values.join(", ")
        ));
    }

    /// Runs `sql` on the primary and waits until the replicas replayed it.
    pub(crate) fn drive(&self, sql: &str) {
        self.drive_on(self.cluster.primary_id(), sql);
    }

    /// Runs `sql` on node `id` (the writer of the moment) and waits until
    /// the replicas replayed it.
    pub(crate) fn drive_on(&self, id: NodeId, sql: &str) {
        self.cluster.psql(id, sql).unwrap();
        self.cluster.wait_for_replication().unwrap();
    }
}

impl Drop for Aurora<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let grants: String = WAL_FUNCTIONS
            .iter()
            .map(|(function, _)| {
                format!("GRANT EXECUTE ON FUNCTION pg_catalog.{function}() TO PUBLIC; ")
            })
            .collect();
        let _ = self.cluster.psql(
            self.cluster.primary_id(),
            &format!(
                "DROP FUNCTION IF EXISTS aurora_replica_status(); \
                 DROP TABLE IF EXISTS aurora_topology; {grants}"
            ),
        );
    }
}
