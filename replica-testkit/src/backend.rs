//! Which way a [`Cluster`](crate::Cluster) runs PostgreSQL ([`Backend`]), the variable that
//! forces one (`DIESEL_REPLICA_TEST_BACKEND`), and the [`Driver`] trait that each backend's
//! module implements. Choosing one by what the machine has ([`Backend::select`]) asks both
//! modules, so it lives in the crate root, above them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::tls::TlsFiles;
use crate::{Error, Node};

/// Forces a backend: `local` or `docker`. Unset or empty: chosen by [`Backend::select`].
pub const BACKEND_VAR: &str = "DIESEL_REPLICA_TEST_BACKEND";
/// The image the Docker backend runs (default [`DEFAULT_IMAGE`]).
pub const IMAGE_VAR: &str = "DIESEL_REPLICA_TEST_IMAGE";
/// The image the Docker backend runs when [`IMAGE_VAR`] is unset: the official image.
pub const DEFAULT_IMAGE: &str = "postgres:15";

/// How a cluster's PostgreSQL servers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Processes of the machine's own PostgreSQL binaries, in a temporary directory.
    Local,
    /// One Docker container per node, on a private Docker network of the cluster.
    Docker,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Local => "local",
            Backend::Docker => "docker",
        })
    }
}

impl Backend {
    /// The backend a value of [`BACKEND_VAR`] forces: `None` for an empty value.
    pub(crate) fn forced(value: &str) -> Result<Option<Backend>, Error> {
        match value.trim() {
            "" => Ok(None),
            "local" => Ok(Some(Backend::Local)),
            "docker" => Ok(Some(Backend::Docker)),
            other => Err(Error::UnknownBackend {
                value: other.to_owned(),
            }),
        }
    }
}

/// How a node stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shutdown {
    /// Clients are disconnected and the server shuts down cleanly.
    Fast,
    /// A crash: no clean shutdown, recovery at the next start.
    Immediate,
}

/// What a backend does to the nodes of one cluster. The [`Cluster`](crate::Cluster) keeps
/// the topology and decides; a driver only runs, stops and talks to servers.
///
/// Every method takes the node's fixed facts ([`Node`]); the nodes a driver was asked to
/// make are the ones it tears down in [`Driver::teardown`].
pub(crate) trait Driver: fmt::Debug + Send + Sync {
    /// Which backend this is.
    fn backend(&self) -> Backend;

    /// The cluster's id on Docker (the value of its containers' label); `None` elsewhere.
    fn docker_id(&self) -> Option<&str> {
        None
    }

    /// Where data directories go: a node `name` has its data in `root/name`.
    fn root(&self) -> &Path;

    /// The machine's PostgreSQL binaries (see [`Cluster::bin_dir`](crate::Cluster::bin_dir)).
    fn bin_dir(&self) -> &Path;

    /// A directory on this machine that holds the node's unix socket (see
    /// [`Cluster::socket_dir`](crate::Cluster::socket_dir)).
    fn socket_dir(&self, node: &Node) -> PathBuf;

    /// Makes the first primary (initdb with the testkit's password, the common settings,
    /// TLS if `tls`) and starts it.
    fn init_primary(&self, node: &Node, tls: Option<&TlsFiles>, ipv6: bool) -> Result<(), Error>;

    /// Makes `node` a streaming replica of the running `upstream` (`pg_basebackup -R`) and
    /// starts it.
    fn make_replica(&self, node: &Node, upstream: &Node, tls: bool) -> Result<(), Error>;

    /// Starts a made node and waits until it accepts connections.
    fn start(&self, node: &Node) -> Result<(), Error>;

    /// Stops a running node.
    fn stop(&self, node: &Node, how: Shutdown) -> Result<(), Error>;

    /// Whether the node's server runs (also while paused).
    fn is_running(&self, node: &Node) -> bool;

    /// `pg_ctl promote -w` on a replica.
    fn promote(&self, node: &Node) -> Result<(), Error>;

    /// Points a replica's `primary_conninfo` at `upstream` and leaves it running.
    fn repoint(&self, node: &Node, upstream: &Node) -> Result<(), Error>;

    /// A command that runs `psql` where the node runs (its container, on Docker), with
    /// stdin passed on when `stdin`, and no argument of psql's yet.
    fn psql_program(&self, node: &Node, stdin: bool) -> Command;

    /// A psql on the node itself (unix socket, superuser), `-c` for each of `sqls`.
    fn psql(&self, node: &Node, sqls: &[&str]) -> Result<String, Error> {
        let mut cmd = superuser_psql(self.psql_program(node, false), node);
        for sql in sqls {
            cmd.args(["-c", sql]);
        }
        crate::run(&mut cmd, None)
    }

    /// A psql on the node itself that reads `script` from stdin (`-f -`); `shown` is the
    /// command as errors show it, and `secret` is hidden from its output.
    fn psql_stdin(
        &self,
        node: &Node,
        script: &str,
        shown: &str,
        secret: &str,
    ) -> Result<(), Error> {
        let mut cmd = superuser_psql(self.psql_program(node, true), node);
        cmd.args(["-f", "-"]);
        crate::run_with_stdin(&mut cmd, script, shown, secret)
    }

    /// A psql to run as a TCP client of the cluster from this machine, with every option
    /// still to add; `env` is set in its environment (and no other `PG*` variable).
    fn psql_client(&self, env: &[(&str, &str)]) -> Command;

    /// The PID, in this machine's PID namespace, of the node's postmaster.
    fn postmaster_pid(&self, node: &Node) -> Result<u32, Error>;

    /// Freezes every process of the node (they keep their sockets; nothing answers).
    fn pause(&self, node: &Node) -> Result<(), Error>;

    /// Undoes [`Driver::pause`].
    fn resume(&self, node: &Node) -> Result<(), Error>;

    /// Cuts the node off the network: no packet in or out.
    fn partition(&self, node: &Node) -> Result<(), Error>;

    /// Undoes [`Driver::partition`].
    fn heal(&self, node: &Node) -> Result<(), Error>;

    /// Stops every node for good and removes whatever the driver made outside the
    /// cluster's temp dir; errors are ignored (this runs in `drop`).
    fn teardown(&mut self, nodes: &[Node]);
}

/// `psql`, as `program` runs it, on the node's unix socket as superuser, quiet and
/// unaligned, stopping at the first error: every option but the SQL.
fn superuser_psql(mut program: Command, node: &Node) -> Command {
    program
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(&node.data_dir)
        .args([
            "-p",
            &node.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
        ]);
    program
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_forces_local_or_docker_and_refuses_anything_else() {
        assert_eq!(Backend::forced("").unwrap(), None);
        assert_eq!(Backend::forced(" docker ").unwrap(), Some(Backend::Docker));
        assert_eq!(Backend::forced("local").unwrap(), Some(Backend::Local));
        let err = Backend::forced("podman").unwrap_err();
        assert!(matches!(err, Error::UnknownBackend { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with("DIESEL_REPLICA_TEST_BACKEND=\"podman\" names no backend")
                && text.contains("`local`")
                && text.contains("`docker`"),
            "{text}"
        );
    }
}
