//! A throwaway PostgreSQL replication cluster for diesel-replica's tests, examples and
//! benchmarks: one primary plus N streaming replicas, run from the machine's PostgreSQL
//! binaries in a fresh temporary directory, or in Docker containers (see
//! [Backends](#backends)).
//!
//! Everything is synchronous (plain [`std::process::Command`]). When running as root,
//! every local PostgreSQL command runs as the `postgres` user.
//!
//! # Backends
//!
//! [`Cluster::start`] picks one ([`Backend::select`]):
//!
//! - **local**, when this machine has PostgreSQL's server binaries (`PG_BIN`, else the
//!   newest `/usr/lib/postgresql/*/bin`, `pg_config --bindir` or `PATH`): one server
//!   process per node, data directories, sockets and logs in the temp dir.
//! - **docker**, otherwise, when the Docker engine answers `docker version`: one container
//!   per node, of the image named by `DIESEL_REPLICA_TEST_IMAGE` (default `postgres:15`,
//!   the official image; `docker/build-image.sh` builds one from Debian's packages where
//!   no registry can be reached), on a private Docker network of the cluster. The image's
//!   entrypoint never runs: each container runs a small `sh` script as `postgres` that
//!   makes the data directory on first start (initdb with the same settings as the local
//!   backend for the primary, `pg_basebackup -R` from the upstream's container over the
//!   network for a replica) and then `exec`s the postmaster. Each node's port is
//!   published on 127.0.0.1 (`-p 127.0.0.1:PORT:PORT`, a free port the testkit picks;
//!   the server listens on the same number inside, so `inet_server_port()` agrees), so
//!   URLs, [`Cluster::config`] and tests are the same on both backends. psql
//!   ([`Cluster::psql`]) runs in the node's container (`docker exec`).
//!
//! `DIESEL_REPLICA_TEST_BACKEND=local` or `docker` forces one; anything else is an
//! [`Error::UnknownBackend`]. With neither, [`Error::NoBackend`] says how to get one.
//!
//! Every public method works on both, with these differences:
//!
//! | | local | docker |
//! |---|---|---|
//! | [`Cluster::kill`] | `pg_ctl stop -m immediate` | `docker kill` (SIGKILL) |
//! | [`Cluster::stop`] | `pg_ctl stop -m fast` | `docker stop` (SIGINT: fast shutdown) |
//! | [`Cluster::pause`] | SIGSTOP to the postmaster and its children | `docker pause` |
//! | [`Cluster::partition`] | [`Error::Unsupported`] | iptables DROP in the container's network namespace and for its port on this machine's loopback (needs root) |
//! | [`Cluster::postmaster_pid`] | from `postmaster.pid` | the container's main process, as this machine sees it |
//! | [`Node::data_dir`] | in the temp dir | in the container |
//! | [`Cluster::bin_dir`] | the binaries in use | this machine's binaries or psql, if any |
//!
//! Every container, volume and network of a Docker cluster carries the label [`DOCKER_LABEL`],
//! whose value is the cluster's id ([`Cluster::docker_id`]), and [`DOCKER_OWNER_LABEL`]
//! (`host/pid/start time` of the process that made it). Dropping the cluster removes them
//! (also when a test panics: the unwinding drops it); a process that died without
//! dropping its cluster leaves them, and the next Docker cluster started on this machine
//! removes whatever a dead owner left, and the loopback DROP rules of its partitions
//! (which carry the same id and owner in their comment). To remove everything by hand:
//! `docker rm -f -v $(docker ps -aq --filter label=diesel-replica-testkit)` and
//! `docker volume rm $(docker volume ls -q --filter label=diesel-replica-testkit)` and
//! `docker network rm $(docker network ls -q --filter label=diesel-replica-testkit)`.
//!
//! [`Cluster::start_tls`] starts a cluster that accepts TCP connections only over TLS, with
//! a certificate for `localhost` signed by a fresh CA ([`Cluster::ca_cert_path`]).
//!
//! The topology can change while the cluster runs: [`Cluster::add_replica`],
//! [`Cluster::remove_replica`], [`Cluster::promote`] (with [`Cluster::primary_id`] naming
//! the primary of the moment) and [`Cluster::repoint`]. All take `&self`, so a cluster
//! shared in an `Arc` can change under a running application.
//!
//! Beside the cluster: [`Cluster::config`] and [`Cluster::load_config`] (a
//! `Config` for the cluster), [`WHO_SERVED`] and [`Served`] (which server
//! ran a query, as it reports itself), and [`Rng`] (a small seeded random
//! number generator).
//!
//! [`DelayProxy`] is a TCP proxy that delays every chunk by a fixed one-way delay, and
//! [`Cluster::delayed`] puts one in front of each node ([`DelayedCluster`]): a network
//! slower than loopback, for latency measurements on a machine without `netem`.
//!
//! ```no_run
//! use diesel_replica_testkit::{Cluster, NodeId};
//!
//! let cluster = Cluster::start(2)?;
//! cluster.psql(NodeId::Primary, "CREATE TABLE t(x int); INSERT INTO t VALUES (1)")?;
//! cluster.wait_for_replication()?;
//! assert_eq!(cluster.psql(NodeId::Replica(0), "SELECT x FROM t")?, "1");
//! println!("writer: {}, readers: {:?}", cluster.writer_url(), cluster.replica_urls());
//! # Ok::<(), diesel_replica_testkit::Error>(())
//! ```

use std::net::{Ipv6Addr, TcpListener, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use std::{fs, io, thread};

use tempfile::TempDir;

use crate::backend::{Driver, Shutdown};
use crate::docker::Docker;
use crate::local::Local;
use crate::tls::TlsFiles;

mod backend;
mod docker;
mod load;
mod local;
mod pooler;
#[cfg(target_os = "linux")]
mod proxy;
mod served;
mod tls;

pub use backend::{BACKEND_VAR, Backend, DEFAULT_IMAGE, IMAGE_VAR};
pub use docker::{LABEL as DOCKER_LABEL, OWNER_LABEL as DOCKER_OWNER_LABEL};
pub use load::{Rng, process_cpu_ns};
#[cfg(target_os = "linux")]
pub use pooler::{PGBOUNCER_IMAGE_VAR, PGBOUNCER_VAR, PgBouncer};
pub use proxy::{DelayProxy, DelayedCluster};
pub use served::{Served, WHO_SERVED, who_served};

/// Password of the `postgres` role; TCP connections must present it.
const PASSWORD: &str = "testkit-s3cret-pw";
/// How long [`Cluster::wait_for_replication`] waits before giving up.
const REPLICATION_TIMEOUT: Duration = Duration::from_secs(30);
/// `pg_hba.conf` of a TLS cluster: TCP only with TLS, on the loopback addresses.
const TLS_HBA: &str = "\
# replica-testkit: TCP connections only with TLS
local   all          all                 trust
local   replication  all                 trust
hostssl all          all   127.0.0.1/32  scram-sha-256
hostssl all          all   ::1/128       scram-sha-256
hostssl replication  all   127.0.0.1/32  scram-sha-256
hostssl replication  all   ::1/128       scram-sha-256
";
/// How many trailing lines of stderr or a server log go into an [`Error`].
const TAIL_LINES: usize = 20;
/// Settings for every node (replicas inherit them from the primary's base backup).
///
/// `listen_addresses` comes from the backend.
const COMMON_CONF: &str = "
max_connections = 200
shared_buffers = 32MB
fsync = off
synchronous_commit = off
full_page_writes = off
wal_level = replica
max_wal_senders = 10
wal_keep_size = 256MB
hot_standby = on
wal_retrieve_retry_interval = 100ms
";

/// What went wrong while running the cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A PostgreSQL program could not be found.
    #[error(
        "PostgreSQL binary `{binary}` not found (searched {searched}); install the `postgresql` \
         package or set PG_BIN to the directory holding initdb, pg_ctl, pg_basebackup and psql"
    )]
    MissingBinary {
        /// The program that is missing, e.g. `initdb`.
        binary: String,
        /// Where it was looked for.
        searched: String,
    },
    /// The `pgbouncer` program could not be found.
    #[error(
        "PgBouncer not found (looked for `pgbouncer` on PATH and in /usr/sbin); install the \
         `pgbouncer` package or set {PGBOUNCER_VAR} to the program"
    )]
    MissingPgBouncer,
    /// `DIESEL_REPLICA_TEST_BACKEND` names no backend.
    #[error(
        "{BACKEND_VAR}={value:?} names no backend: set it to `local` (this machine's \
         PostgreSQL binaries) or `docker` (containers of {IMAGE_VAR}, default {DEFAULT_IMAGE}), \
         or leave it unset to pick whichever is there"
    )]
    UnknownBackend {
        /// The variable's value.
        value: String,
    },
    /// Neither backend can run here.
    #[error(
        "cannot run PostgreSQL for the test cluster: there are no PostgreSQL server binaries \
         here ({local}), and Docker is not usable ({docker}). Either install PostgreSQL's \
         server binaries (Debian: `apt-get install postgresql`, or set PG_BIN to their \
         directory), or start Docker and build an image with docker/build-image.sh, naming \
         its tag in {IMAGE_VAR} (default: {DEFAULT_IMAGE})"
    )]
    NoBackend {
        /// Why the local backend cannot run.
        local: Box<Error>,
        /// Why the Docker backend cannot run.
        docker: Box<Error>,
    },
    /// The Docker engine does not answer `docker version`.
    #[error("the Docker engine does not answer `docker version`: {source}")]
    DockerUnavailable {
        /// What `docker version` did.
        #[source]
        source: Box<Error>,
    },
    /// The Docker backend's image is not on this machine.
    #[error(
        "Docker image `{image}` is not here: build one with docker/build-image.sh and name its \
         tag in {IMAGE_VAR}, or `docker pull {image}` where a registry can be reached"
    )]
    MissingImage {
        /// The image named by `DIESEL_REPLICA_TEST_IMAGE` (or the default).
        image: String,
    },
    /// The cluster's backend cannot do this.
    #[error("cannot {action} {node} on the {backend} backend: {reason}")]
    Unsupported {
        /// What was asked, e.g. `partition`.
        action: &'static str,
        /// The node's name, e.g. `replica-0`.
        node: String,
        /// The cluster's backend.
        backend: Backend,
        /// Why not, and what would do it.
        reason: &'static str,
    },
    /// Running as root, but there is no `postgres` user to run PostgreSQL as.
    #[error(
        "running as root, but PostgreSQL refuses to run as root and there is no `postgres` user \
         in /etc/passwd to run it as; create one (installing the `postgresql` package does) or \
         run as a non-root user"
    )]
    NoPostgresUser,
    /// A command ran but failed.
    #[error("`{command}` failed with {status}:\n{output}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// The tail of its stderr and, for server starts and stops, of the node's log.
        output: String,
    },
    /// A file-system or process-spawning operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Making a certificate or key for a TLS cluster failed.
    #[error("generating {what}")]
    Certificate {
        /// What was being generated.
        what: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A topology change or start that does not apply to the node, such as removing the
    /// primary or starting a removed replica.
    #[error("cannot {action} {node}: {reason}")]
    Topology {
        /// What was asked, e.g. `remove`.
        action: &'static str,
        /// The node's name, e.g. `replica-0`.
        node: String,
        /// Why not.
        reason: &'static str,
    },
    /// Replication or a promotion did not finish in time.
    #[error("timed out after {REPLICATION_TIMEOUT:?} waiting for {what} (last seen: {last})")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The last observed state.
        last: String,
    },
}

/// Identifies a node of a [`Cluster`]. An id names the same server for the cluster's
/// whole life, whatever role it has now, and is never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeId {
    /// The node started as the read-write primary (`"primary"`). After a
    /// [`Cluster::promote`] it is no longer the primary: see [`Cluster::primary_id`].
    Primary,
    /// The replica with this index (0-based, in creation order: the replicas of
    /// [`Cluster::start`], then each [`Cluster::add_replica`]).
    Replica(usize),
}

impl NodeId {
    /// Index into [`Topology::slots`].
    fn index(self) -> usize {
        match self {
            NodeId::Primary => 0,
            NodeId::Replica(i) => i + 1,
        }
    }

    fn from_index(index: usize) -> NodeId {
        match index {
            0 => NodeId::Primary,
            i => NodeId::Replica(i - 1),
        }
    }
}

/// One PostgreSQL server of a [`Cluster`] (a copy of its fixed facts: name, port, paths).
#[derive(Debug, Clone)]
pub struct Node {
    name: String,
    port: u16,
    data_dir: PathBuf,
    log: PathBuf,
}

impl Node {
    fn new(root: &Path, name: String, port: u16) -> Node {
        Node {
            data_dir: root.join(&name),
            log: root.join(format!("{name}.log")),
            name,
            port,
        }
    }

    /// `"primary"`, `"replica-0"`, `"replica-1"`, ...
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The TCP port the node listens on at 127.0.0.1 (and at ::1 on a TLS cluster where
    /// `localhost` resolves to ::1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The node's data directory, which also holds its unix socket. On the Docker backend,
    /// the path inside the node's container.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server's log file on the local backend (`pg_ctl -l`); the Docker backend's
    /// servers log to their containers' output instead.
    pub fn log_file(&self) -> &Path {
        &self.log
    }
}

/// Where a node stands in the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Being made by [`Cluster::add_replica`]; listed nowhere yet.
    Creating,
    /// Part of the cluster (running or not).
    Member,
    /// Removed for good (or its creation failed); listed nowhere, never started again.
    Removed,
}

#[derive(Debug)]
struct Slot {
    node: Node,
    state: State,
    /// The node whose WAL it streams, as far as the testkit knows; `None` for a primary.
    upstream: Option<NodeId>,
}

/// The node list and who is primary, behind the cluster's lock.
#[derive(Debug)]
struct Topology {
    /// The current primary.
    primary: NodeId,
    /// Every node ever made, at [`NodeId::index`]: the first primary, then the replicas.
    slots: Vec<Slot>,
}

impl Topology {
    fn slot(&self, id: NodeId) -> &Slot {
        match self.slots.get(id.index()) {
            Some(slot) => slot,
            None => panic!("{id:?} is not a node of this cluster"),
        }
    }

    fn slot_mut(&mut self, id: NodeId) -> &mut Slot {
        match self.slots.get_mut(id.index()) {
            Some(slot) => slot,
            None => panic!("{id:?} is not a node of this cluster"),
        }
    }

    /// The member replicas other than the current primary, in id order.
    fn replicas(&self) -> impl Iterator<Item = (NodeId, &Slot)> {
        self.slots
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, slot)| (NodeId::from_index(i), slot))
            .filter(|&(id, slot)| slot.state == State::Member && id != self.primary)
    }
}

/// A primary plus streaming replicas in a temporary directory (or, on the Docker backend,
/// in containers: see the crate docs).
///
/// Dropping it shuts every node down (immediate mode) and deletes the directory; on
/// Docker it removes the cluster's containers, volumes and network, and the rules of its
/// partitions.
///
/// # Changing the topology
///
/// [`Cluster::add_replica`] and [`Cluster::remove_replica`] add and remove replicas while
/// the cluster runs; [`Cluster::promote`] makes a replica the primary. The lists
/// ([`Cluster::replicas`], [`Cluster::replica_ids`], [`Cluster::replica_urls`],
/// [`Cluster::config`]) hold the replicas of the moment in id order, so once a replica
/// has been removed or promoted a position in them is no longer a replica index: use
/// [`Cluster::replica_ids`] to tell which is which. [`Cluster::node`] and
/// [`Cluster::url`] still answer for a removed node, describing the stopped server.
///
/// After a promotion only the promoted node is guaranteed usable: the other replicas keep
/// following the old primary (dead, as a rule) until [`Cluster::repoint`]ed, and
/// [`Cluster::wait_for_replication`] skips them until then.
#[derive(Debug)]
pub struct Cluster {
    topology: Mutex<Topology>,
    /// Runs the servers: the local or the Docker backend.
    driver: Box<dyn Driver>,
    /// The certificates of a TLS cluster.
    tls: Option<TlsFiles>,
    /// Whether the nodes also listen on ::1 (a TLS cluster where `localhost` resolves to ::1).
    ipv6: bool,
    dir: TempDir,
}

impl Cluster {
    /// Starts a primary and `replicas` streaming replicas on free 127.0.0.1 ports in a fresh
    /// temp dir and waits until every replica has replayed the primary's latest write.
    ///
    /// The backend is [`Backend::select`]'s: this machine's binaries when it has them,
    /// else Docker (see the crate docs). The replicas are made side by side, each on a
    /// thread of its own.
    pub fn start(replicas: usize) -> Result<Cluster, Error> {
        Cluster::start_with(Backend::select()?, replicas, false)
    }

    /// As [`Cluster::start`], but every node accepts TCP connections only over TLS.
    ///
    /// The temp dir gets a fresh CA (`ca.crt`, [`Cluster::ca_cert_path`]), a server
    /// certificate signed by it whose only subject alternative name is the DNS name
    /// `localhost` (no IP address, so `sslmode=verify-full` succeeds for host `localhost`
    /// and fails for host `127.0.0.1`), its key, and a second CA that signed nothing here
    /// (`wrong-ca.crt`, [`Cluster::wrong_ca_cert_path`]). Every node serves the same
    /// certificate (`ssl = on`).
    ///
    /// `pg_hba.conf` has only `hostssl` lines for TCP (127.0.0.1/32 and ::1/128,
    /// scram-sha-256, databases and replication), so the server refuses a plaintext TCP
    /// connection ("no pg_hba.conf entry ... no encryption"); the unix socket stays `trust`
    /// as on a plain cluster. The replicas stream from the primary over TLS
    /// (`sslmode=require`).
    ///
    /// The nodes listen on 127.0.0.1, and also on ::1 if `localhost` resolves to ::1 on this
    /// machine, so that a client connecting to `localhost` reaches the node whichever
    /// address it tries.
    pub fn start_tls(replicas: usize) -> Result<Cluster, Error> {
        Cluster::start_with(Backend::select()?, replicas, true)
    }

    /// As [`Cluster::start`], on `backend` rather than the one [`Backend::select`] picks.
    pub fn start_on(backend: Backend, replicas: usize) -> Result<Cluster, Error> {
        Cluster::start_with(backend, replicas, false)
    }

    /// As [`Cluster::start_tls`], on `backend` rather than the one [`Backend::select`]
    /// picks.
    pub fn start_tls_on(backend: Backend, replicas: usize) -> Result<Cluster, Error> {
        Cluster::start_with(backend, replicas, true)
    }

    fn start_with(backend: Backend, replicas: usize, tls: bool) -> Result<Cluster, Error> {
        let dir = tempfile::Builder::new()
            .prefix("replica-testkit-")
            .tempdir()
            .map_err(io_err("creating the temp dir"))?;
        let ipv6 = tls && localhost_is_ipv6();
        let driver: Box<dyn Driver> = match backend {
            Backend::Local => Box::new(Local::new(dir.path())?),
            Backend::Docker => Box::new(Docker::new(dir.path(), ipv6)?),
        };
        let ports = free_ports(replicas + 1, ipv6)?;
        let primary = Slot {
            node: Node::new(driver.root(), "primary".into(), ports[0]),
            state: State::Member,
            upstream: None,
        };
        let mut cluster = Cluster {
            topology: Mutex::new(Topology {
                primary: NodeId::Primary,
                slots: vec![primary],
            }),
            driver,
            tls: None,
            ipv6,
            dir,
        };
        if tls {
            cluster.tls = Some(TlsFiles::generate(cluster.dir.path())?);
        }
        let primary = cluster.node(NodeId::Primary);
        cluster
            .driver
            .init_primary(&primary, cluster.tls.as_ref(), ipv6)?;
        // The replicas are made side by side: on Docker, most of a replica's making is
        // waiting for the engine and the container.
        let cluster_ref = &cluster;
        thread::scope(|scope| {
            let makers: Vec<_> = ports[1..]
                .iter()
                .map(|&port| scope.spawn(move || cluster_ref.create_replica(port)))
                .collect();
            makers
                .into_iter()
                .map(|maker| {
                    maker
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect::<Result<Vec<NodeId>, Error>>()
        })?;
        cluster.wait_for_replication()?;
        Ok(cluster)
    }

    /// The backend the cluster runs on.
    pub fn backend(&self) -> Backend {
        self.driver.backend()
    }

    /// On the Docker backend, the cluster's id: the value of the [`DOCKER_LABEL`] that its
    /// containers and network carry (`docker ps --filter label=diesel-replica-testkit=ID`),
    /// and part of their names (`drt-ID` for the network, `drt-ID-NODE` for a node's
    /// container). `None` on the local backend.
    pub fn docker_id(&self) -> Option<&str> {
        self.driver.docker_id()
    }

    /// The current primary: the node started as primary until a [`Cluster::promote`], then
    /// the promoted one.
    pub fn primary(&self) -> Node {
        self.node(self.primary_id())
    }

    /// The id of the current primary: [`NodeId::Primary`] until a [`Cluster::promote`],
    /// then the promoted replica's.
    pub fn primary_id(&self) -> NodeId {
        self.topology().primary
    }

    /// The replicas, in id order: every replica not removed and not promoted, running or
    /// not, including any still following a former primary. After a removal or a
    /// promotion, position `i` need not be `NodeId::Replica(i)`: see
    /// [`Cluster::replica_ids`].
    pub fn replicas(&self) -> Vec<Node> {
        let topology = self.topology();
        topology
            .replicas()
            .map(|(_, slot)| slot.node.clone())
            .collect()
    }

    /// The ids of [`Cluster::replicas`], in the same order.
    pub fn replica_ids(&self) -> Vec<NodeId> {
        self.topology().replicas().map(|(id, _)| id).collect()
    }

    /// The node `id` refers to, whatever its role; for a removed node, the stopped server
    /// it was (its port refuses connections).
    ///
    /// # Panics
    /// If `id` is `Replica(i)` and no replica `i` was ever made.
    pub fn node(&self, id: NodeId) -> Node {
        self.topology().slot(id).node.clone()
    }

    /// A directory on this machine that holds the node's unix socket, `.s.PGSQL.PORT`
    /// (`PORT` being [`Node::port`]): its data directory on the local backend, a directory
    /// of the cluster's temp dir mounted into its container on Docker. Connections there
    /// are trusted, as `postgres` or any role.
    pub fn socket_dir(&self, id: NodeId) -> PathBuf {
        self.driver.socket_dir(&self.node(id))
    }

    /// The directory holding the PostgreSQL binaries in use (for running e.g. psql or pgbench).
    ///
    /// On the Docker backend, the servers run the image's binaries: this is the directory
    /// of this machine's binaries (or of its psql) if it has any, else an empty path.
    pub fn bin_dir(&self) -> &Path {
        self.driver.bin_dir()
    }

    /// The password of the `postgres` role used in the URLs.
    pub fn password(&self) -> &str {
        PASSWORD
    }

    /// Whether the cluster was started with [`Cluster::start_tls`].
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The PEM file of the CA that signed a TLS cluster's server certificate (`ca.crt` in
    /// the temp dir); `None` for a plain cluster.
    pub fn ca_cert_path(&self) -> Option<&Path> {
        self.tls.as_ref().map(|tls| tls.ca.as_path())
    }

    /// The PEM file of a CA that signed nothing the cluster uses (`wrong-ca.crt` in the
    /// temp dir), for tests that verification fails; `None` for a plain cluster.
    pub fn wrong_ca_cert_path(&self) -> Option<&Path> {
        self.tls.as_ref().map(|tls| tls.wrong_ca.as_path())
    }

    /// [`Cluster::url`] of the current primary ([`Cluster::primary_id`]).
    pub fn writer_url(&self) -> String {
        self.url(self.primary_id())
    }

    /// One URL per replica of [`Cluster::replicas`], in the same order.
    pub fn replica_urls(&self) -> Vec<String> {
        self.replica_ids()
            .into_iter()
            .map(|id| self.url(id))
            .collect()
    }

    /// The node's URL (also for a removed node), with the `postgres` role and the testkit's password
    /// ([`Cluster::password`]).
    ///
    /// Plain cluster: `postgres://postgres:PASSWORD@127.0.0.1:PORT/postgres`.
    ///
    /// TLS cluster:
    /// `postgres://postgres:PASSWORD@localhost:PORT/postgres?sslmode=verify-full&sslrootcert=CA`
    /// where `CA` is [`Cluster::ca_cert_path`], percent-encoded.
    pub fn url(&self, id: NodeId) -> String {
        self.url_at(self.node(id).port)
    }

    /// [`Cluster::url`] with another port, such as a proxy's.
    fn url_at(&self, port: u16) -> String {
        match &self.tls {
            None => format!("postgres://postgres:{PASSWORD}@127.0.0.1:{port}/postgres"),
            Some(tls) => format!(
                "postgres://postgres:{PASSWORD}@localhost:{port}/postgres\
                 ?sslmode=verify-full&sslrootcert={}",
                percent_encode(&tls.ca.display().to_string())
            ),
        }
    }

    /// Fast shutdown (`pg_ctl stop -m fast`; on Docker, `docker stop`, whose signal is
    /// SIGINT, the same fast shutdown).
    pub fn stop(&self, id: NodeId) -> Result<(), Error> {
        self.driver.stop(&self.node(id), Shutdown::Fast)
    }

    /// Immediate shutdown (`pg_ctl stop -m immediate`): the crash-like kill. On Docker,
    /// `docker kill` (SIGKILL to the postmaster, which takes every process of the
    /// container with it).
    pub fn kill(&self, id: NodeId) -> Result<(), Error> {
        self.driver.stop(&self.node(id), Shutdown::Immediate)
    }

    /// Starts a stopped or killed node again on the same port and waits until it accepts
    /// connections (`pg_ctl start -w`). A removed node is an [`Error::Topology`].
    ///
    /// Starting the former primary after a [`Cluster::promote`] makes a second primary:
    /// the testkit does not stop you.
    pub fn start_node(&self, id: NodeId) -> Result<(), Error> {
        let node = {
            let topology = self.topology();
            let slot = topology.slot(id);
            if slot.state == State::Removed {
                return Err(refuse("start", slot, "it was removed"));
            }
            slot.node.clone()
        };
        self.driver.start(&node)
    }

    /// Fast shutdown, then start.
    pub fn restart(&self, id: NodeId) -> Result<(), Error> {
        self.stop(id)?;
        self.start_node(id)
    }

    /// Adds a streaming replica of the current primary ([`Cluster::primary_id`]): a
    /// `pg_basebackup -R` of the running primary, started on a free port (over TLS on a
    /// TLS cluster, like the others). Returns its id, the next `NodeId::Replica(i)`.
    ///
    /// The replica is listed ([`Cluster::replicas`] and friends) once it accepts
    /// connections; it has then replayed at least the WAL of the base backup, and
    /// [`Cluster::wait_for_replication`] waits for it from then on. If anything fails, its
    /// id stays used and the node counts as removed.
    pub fn add_replica(&self) -> Result<NodeId, Error> {
        let port = self.free_port()?;
        self.create_replica(port)
    }

    /// Removes a replica for good: it is no longer listed ([`Cluster::replicas`] and
    /// friends), stops (fast) if running, and can never be started again; its id is not
    /// reused. [`Cluster::node`] and [`Cluster::url`] still describe it, and its port
    /// refuses connections.
    ///
    /// Any node but the current primary can be removed, including a former primary.
    /// Removing the current primary or a removed node is an [`Error::Topology`]. If the
    /// stop fails, the node stays removed all the same (and is killed when the cluster
    /// drops).
    pub fn remove_replica(&self, id: NodeId) -> Result<(), Error> {
        let node = {
            let mut topology = self.topology();
            let is_primary = id == topology.primary;
            let slot = topology.slot_mut(id);
            let reason = match slot.state {
                _ if is_primary => Some("it is the primary"),
                State::Removed => Some("it was removed already"),
                State::Creating => Some("it is still being added"),
                State::Member => None,
            };
            if let Some(reason) = reason {
                return Err(refuse("remove", slot, reason));
            }
            // Unlisted before it goes down, so that nobody is handed a stopping server.
            slot.state = State::Removed;
            slot.node.clone()
        };
        if self.driver.is_running(&node) {
            self.stop(id)?;
        }
        Ok(())
    }

    /// Promotes a replica to primary (`pg_ctl promote -w`), waits (up to 30 s) until
    /// `pg_is_in_recovery()` is false on it, and makes it the primary of
    /// [`Cluster::primary_id`], [`Cluster::writer_url`] and
    /// [`Cluster::wait_for_replication`].
    ///
    /// Nothing else changes: the former primary is not stopped (kill it first, or there
    /// are two primaries), and the other replicas are not re-pointed. PostgreSQL 15
    /// replicas can follow the promoted node across its timeline switch
    /// (`recovery_target_timeline = 'latest'`, the default), but they connect to the
    /// former primary until [`Cluster::repoint`]ed; until then only the promoted node is
    /// guaranteed usable.
    pub fn promote(&self, id: NodeId) -> Result<(), Error> {
        let node = self.replica_for("promote", id)?;
        let name = node.name.clone();
        self.driver.promote(&node)?;
        let deadline = Instant::now() + REPLICATION_TIMEOUT;
        loop {
            let last = match self.psql(id, "SELECT pg_is_in_recovery()") {
                Ok(out) if out == "f" => break,
                Ok(out) => format!("pg_is_in_recovery() = {out}"),
                Err(err) => err.to_string(),
            };
            if Instant::now() > deadline {
                let what = format!("{name} to leave recovery");
                return Err(Error::Timeout { what, last });
            }
            thread::sleep(Duration::from_millis(20));
        }
        let mut topology = self.topology();
        topology.primary = id;
        topology.slot_mut(id).upstream = None;
        Ok(())
    }

    /// Points a replica at the current primary (after a [`Cluster::promote`]): stops it
    /// (fast) if running, rewrites the port of the `primary_conninfo` that
    /// `pg_basebackup -R` wrote into its `postgresql.auto.conf`, and starts it again.
    /// [`Cluster::wait_for_replication`] waits for it from then on.
    ///
    /// It follows the new primary's timeline switch only if it has not replayed past the
    /// point of the promotion (such as WAL the former primary sent it and not the
    /// promoted replica); otherwise it stays behind and its log says why. A node that has
    /// been a primary cannot be repointed (it would need `pg_rewind`): an
    /// [`Error::Topology`], as are the current primary and a removed node.
    pub fn repoint(&self, id: NodeId) -> Result<(), Error> {
        let node = self.replica_for("repoint", id)?;
        let (primary, upstream) = {
            let topology = self.topology();
            let slot = topology.slot(id);
            if slot.upstream.is_none() {
                return Err(refuse("repoint", slot, "it has been a primary"));
            }
            (
                topology.primary,
                topology.slot(topology.primary).node.clone(),
            )
        };
        self.driver.repoint(&node, &upstream)?;
        self.topology().slot_mut(id).upstream = Some(primary);
        Ok(())
    }

    /// Pauses WAL replay on a replica (`SELECT pg_wal_replay_pause()`).
    pub fn pause_replay(&self, replica: usize) -> Result<(), Error> {
        self.psql(NodeId::Replica(replica), "SELECT pg_wal_replay_pause()")
            .map(drop)
    }

    /// Resumes WAL replay on a replica (`SELECT pg_wal_replay_resume()`).
    pub fn resume_replay(&self, replica: usize) -> Result<(), Error> {
        self.psql(NodeId::Replica(replica), "SELECT pg_wal_replay_resume()")
            .map(drop)
    }

    /// Freezes every process of the node: it keeps its sockets open and answers nothing
    /// (a hung server). Local: SIGSTOP to the postmaster, then to each of its children.
    /// Docker: `docker pause` (the cgroup freezer). [`Cluster::resume`] undoes it; the
    /// cluster resumes a paused node before shutting it down when dropped.
    pub fn pause(&self, id: NodeId) -> Result<(), Error> {
        self.driver.pause(&self.node(id))
    }

    /// Thaws a node frozen by [`Cluster::pause`] (SIGCONT, or `docker unpause`).
    pub fn resume(&self, id: NodeId) -> Result<(), Error> {
        self.driver.resume(&self.node(id))
    }

    /// Cuts the node off the network: not one packet goes in or out of it, on any
    /// connection (clients on this machine, and replication from or to the other nodes).
    /// Its established connections hang: what is sent is never acknowledged, nothing
    /// comes back, and no reset or FIN is seen either. A new connection from this machine
    /// gets no answer to its SYN: its connect times out; nothing is refused. The server
    /// itself keeps running, unaware.
    ///
    /// Docker backend only: iptables DROP rules inside the container's network namespace
    /// (entered with `nsenter`: input and output on every interface but the loopback) and
    /// in this machine's `INPUT` chain for the loopback packets to and from the node's
    /// published port (otherwise Docker's userland proxy, which owns that port, would
    /// still accept new connections and only then hang). So it needs root, `nsenter` and
    /// `iptables` on this machine. (A `docker network disconnect` is no partition: Docker
    /// then stops the port's proxy, and the client's connections are closed, and new
    /// ones refused, at once.) The rules on this machine carry a comment naming the
    /// cluster; they go with a heal, when the cluster drops, and, if its process died,
    /// with the next Docker cluster's start. A restart of the node heals it inside its
    /// container, not on this machine. On the local backend this is an
    /// [`Error::Unsupported`].
    pub fn partition(&self, id: NodeId) -> Result<(), Error> {
        self.driver.partition(&self.node(id))
    }

    /// Undoes [`Cluster::partition`]: packets flow again, and the hung connections go on
    /// where they stopped (unless a side gave up on them meanwhile). Healing a node that
    /// is not partitioned does nothing. Docker backend only, like `partition`.
    pub fn heal(&self, id: NodeId) -> Result<(), Error> {
        self.driver.heal(&self.node(id))
    }

    /// Waits (up to 30 s) until every running, unpaused replica that follows the current
    /// primary ([`Cluster::primary_id`]) has replayed the primary's current WAL LSN.
    ///
    /// The primary first commits a tiny WAL record with `synchronous_commit = on`, which
    /// writes out earlier asynchronous commits so that `pg_current_wal_lsn()` covers them.
    /// A replica counts as running while its `postmaster.pid` exists (on Docker: while its
    /// container runs). Removed replicas,
    /// and after a [`Cluster::promote`] the replicas not yet [`Cluster::repoint`]ed, are
    /// skipped.
    pub fn wait_for_replication(&self) -> Result<(), Error> {
        let (primary, replicas) = {
            let topology = self.topology();
            let replicas: Vec<(NodeId, Node)> = topology
                .replicas()
                .filter(|(_, slot)| slot.upstream == Some(topology.primary))
                .map(|(id, slot)| (id, slot.node.clone()))
                .collect();
            (topology.primary, replicas)
        };
        let out = self.driver.psql(
            &self.node(primary),
            &[
                "SET synchronous_commit = on",
                "SELECT pg_logical_emit_message(true, 'replica-testkit', 'flush')",
                "SELECT pg_current_wal_lsn()",
            ],
        )?;
        let lsn = out.lines().last().unwrap_or_default();
        let check = format!(
            "SELECT pg_is_wal_replay_paused() \
             OR coalesce(pg_last_wal_replay_lsn() >= '{lsn}', false), pg_last_wal_replay_lsn()"
        );
        let deadline = Instant::now() + REPLICATION_TIMEOUT;
        for (id, node) in replicas {
            while self.driver.is_running(&node) {
                let last = match self.psql(id, &check) {
                    Ok(out) if out.starts_with("t|") => break,
                    Ok(out) => format!("replayed up to {}", out.trim_start_matches("f|")),
                    Err(err) => err.to_string(),
                };
                if Instant::now() > deadline {
                    let what = format!("{} to replay up to {lsn}", node.name);
                    return Err(Error::Timeout { what, last });
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Runs SQL with psql on a node (over its unix socket, as superuser, with
    /// `-X -A -t -q -v ON_ERROR_STOP=1 -c SQL`) and returns the trimmed stdout.
    ///
    /// Several `;`-separated statements run in one transaction and only the last one's
    /// rows are printed; columns are separated by `|`, rows by newlines.
    pub fn psql(&self, id: NodeId, sql: &str) -> Result<String, Error> {
        self.driver.psql(&self.node(id), &[sql])
    }

    /// Runs SQL with this cluster's psql as a TCP client: `psql -X -A -t -q -v ON_ERROR_STOP=1
    /// -d CONNINFO -c SQL`, with `PGPASSWORD` set to `password`, and returns the trimmed
    /// stdout.
    ///
    /// `conninfo` is a libpq connection string or URL and says everything about the
    /// connection (`host=localhost port=5432 user=postgres dbname=postgres sslmode=...`):
    /// the `PG*` variables of this process's environment are removed, and no password
    /// file is read. psql runs as this process's user, so it can read the CA files. (On
    /// the Docker backend without a psql here, the image's psql runs in a throwaway
    /// container on this machine's network, with the temp dir mounted at its path.)
    ///
    /// On failure the error is an [`Error::Command`] whose output is psql's stderr (such as
    /// libpq's connection error). The password is never in the error: it travels in the
    /// environment, any `password=` in `conninfo` is shown as `***`, and any occurrence of
    /// the password in the output is replaced by `***`.
    pub fn psql_tcp(&self, conninfo: &str, password: &str, sql: &str) -> Result<String, Error> {
        let passfile = self.dir.path().join("no-such-passfile");
        let mut cmd = self.driver.psql_client(&[
            ("PGPASSWORD", password),
            ("PGPASSFILE", &passfile.to_string_lossy()),
            ("PGCONNECT_TIMEOUT", "10"),
        ]);
        cmd.current_dir(self.dir.path())
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(conninfo)
            .args(["-c", sql]);
        run(&mut cmd, None).map_err(|err| match err {
            Error::Command {
                command,
                status,
                output,
            } => Error::Command {
                command: redact(&redact_conninfo(&command), password),
                status,
                output: redact(&output, password),
            },
            other => other,
        })
    }

    /// Sets `role`'s password on the current primary (`ALTER ROLE "role" PASSWORD '...'` over the
    /// unix socket); the replicas get it by replication (see
    /// [`Cluster::wait_for_replication`]).
    ///
    /// The password is sent on psql's stdin, never on a command line; the session turns
    /// statement logging off so that the server log does not show it either, and errors
    /// show `***` in its place.
    ///
    /// The cluster's URLs, [`Cluster::password`] and the replicas' `primary_conninfo` keep
    /// the testkit's password: after changing the `postgres` role's password, the URLs no
    /// longer log in, and a replica whose streaming connection breaks (such as after a
    /// restart of either end) cannot reconnect until the password is set back with
    /// `set_password("postgres", cluster.password())`.
    pub fn set_password(&self, role: &str, password: &str) -> Result<(), Error> {
        let sql = format!(
            "SET log_statement = 'none';\n\
             SET log_min_error_statement = 'panic';\n\
             SET log_min_duration_statement = -1;\n\
             ALTER ROLE {} PASSWORD {};\n",
            quote_ident(role),
            quote_literal(password)?
        );
        let node = self.primary();
        let command = format!(
            "psql -h {} -p {} (ALTER ROLE {} PASSWORD ***)",
            node.data_dir.display(),
            node.port,
            quote_ident(role)
        );
        self.driver.psql_stdin(&node, &sql, &command, password)
    }

    /// PID of the node's postmaster (first line of `postmaster.pid`). On Docker, the PID
    /// in this machine's PID namespace of the container's main process, which is the
    /// postmaster: signals sent to it from here reach the server.
    pub fn postmaster_pid(&self, id: NodeId) -> Result<u32, Error> {
        self.driver.postmaster_pid(&self.node(id))
    }

    /// Makes, starts and lists a replica of the current primary on `port`.
    fn create_replica(&self, port: u16) -> Result<NodeId, Error> {
        // Registered before it exists, so that Drop stops it if anything below fails.
        let (id, node, upstream) = {
            let mut topology = self.topology();
            let id = NodeId::from_index(topology.slots.len());
            let NodeId::Replica(i) = id else {
                unreachable!("slot 0 is the first primary")
            };
            let node = Node::new(self.driver.root(), format!("replica-{i}"), port);
            let primary = topology.primary;
            let upstream = topology.slot(primary).node.clone();
            topology.slots.push(Slot {
                node: node.clone(),
                state: State::Creating,
                upstream: Some(primary),
            });
            (id, node, upstream)
        };
        let made = self.driver.make_replica(&node, &upstream, self.is_tls());
        self.topology().slot_mut(id).state = match made {
            Ok(()) => State::Member,
            Err(_) => State::Removed,
        };
        made.map(|()| id)
    }

    /// A free port (see [`free_ports`]) that no node of the cluster has ever had, so that
    /// a removed node's port keeps refusing connections.
    fn free_port(&self) -> Result<u16, Error> {
        loop {
            let port = free_ports(1, self.ipv6)?[0];
            if !self
                .topology()
                .slots
                .iter()
                .any(|slot| slot.node.port == port)
            {
                return Ok(port);
            }
        }
    }

    /// The node `id`, if it is a member and not the current primary; otherwise an
    /// [`Error::Topology`] for `action`.
    fn replica_for(&self, action: &'static str, id: NodeId) -> Result<Node, Error> {
        let topology = self.topology();
        let slot = topology.slot(id);
        let reason = match slot.state {
            _ if id == topology.primary => "it is the primary",
            State::Removed => "it was removed",
            State::Creating => "it is still being added",
            State::Member => return Ok(slot.node.clone()),
        };
        Err(refuse(action, slot, reason))
    }

    fn topology(&self) -> MutexGuard<'_, Topology> {
        // A panic while holding the lock leaves the node list consistent: every change is
        // a single assignment or push.
        self.topology.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Backend {
    /// The backend [`Cluster::start`](crate::Cluster::start) uses here and now.
    ///
    /// `DIESEL_REPLICA_TEST_BACKEND=local` or `docker` forces one (an unusable forced
    /// backend is its own error); any other non-empty value is an
    /// [`Error::UnknownBackend`]. Otherwise: `local` when the machine has PostgreSQL's
    /// server binaries (see [`Error::MissingBinary`]), else `docker` when the Docker
    /// engine answers `docker version`, else [`Error::NoBackend`], which says how to get
    /// either.
    pub fn select() -> Result<Backend, Error> {
        match Backend::forced(&std::env::var(BACKEND_VAR).unwrap_or_default())? {
            Some(Backend::Local) => return local::check().map(|()| Backend::Local),
            Some(Backend::Docker) => return docker::engine_answers().map(|()| Backend::Docker),
            None => {}
        }
        let local = match local::check() {
            Ok(()) => return Ok(Backend::Local),
            Err(err) => err,
        };
        match docker::engine_answers() {
            Ok(()) => Ok(Backend::Docker),
            Err(docker) => Err(Error::NoBackend {
                local: Box::new(local),
                docker: Box::new(docker),
            }),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let topology = self
            .topology
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        let nodes: Vec<Node> = topology
            .slots
            .iter()
            .map(|slot| slot.node.clone())
            .collect();
        self.driver.teardown(&nodes);
    }
}

/// An [`Error::Topology`]: `action` does not apply to the node of `slot`.
fn refuse(action: &'static str, slot: &Slot, reason: &'static str) -> Error {
    Error::Topology {
        action,
        node: slot.node.name.clone(),
        reason,
    }
}

/// `postgresql.auto.conf` text with the `port` of its `primary_conninfo` set to `port`;
/// `None` if it has no `primary_conninfo` line with a `port=` key.
fn with_upstream_port(conf: &str, port: u16) -> Option<String> {
    with_upstream(conf, None, port)
}

/// `postgresql.auto.conf` text with the `port` of its `primary_conninfo` set to `port`, and
/// its `host` to `host` if given; `None` if it has no `primary_conninfo` line with a
/// `port=` key.
fn with_upstream(conf: &str, host: Option<&str>, port: u16) -> Option<String> {
    let mut found = false;
    let lines: Vec<String> = conf
        .lines()
        .map(|line| {
            if !line.trim_start().starts_with("primary_conninfo") {
                return line.to_owned();
            }
            line.split(' ')
                .map(|word| {
                    if let Some(old) = word.strip_prefix("port=") {
                        found = true;
                        // The last key of the value keeps its closing quote.
                        let rest = old.trim_start_matches(|c: char| c.is_ascii_digit());
                        format!("port={port}{rest}")
                    } else if let (Some(old), Some(host)) = (word.strip_prefix("host="), host) {
                        let rest = old.trim_start_matches(|c: char| c != '\'');
                        format!("host={host}{rest}")
                    } else {
                        word.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    found.then(|| lines.join("\n") + "\n")
}

/// Whether `localhost` resolves to ::1 here (it need not: many hosts files map it to
/// 127.0.0.1 only).
fn localhost_is_ipv6() -> bool {
    ("localhost", 0)
        .to_socket_addrs()
        .is_ok_and(|mut addrs| addrs.any(|addr| addr.ip() == Ipv6Addr::LOCALHOST))
}

/// `role` as a double-quoted SQL identifier.
fn quote_ident(role: &str) -> String {
    format!("\"{}\"", role.replace('"', "\"\""))
}

/// `text` as an SQL string literal: `'...'` with `'` doubled, or `E'...'` with `\` doubled
/// too when it holds a backslash (whatever `standard_conforming_strings` says). NUL, which
/// PostgreSQL text cannot hold, is refused.
fn quote_literal(text: &str) -> Result<String, Error> {
    if text.contains('\0') {
        return Err(Error::Io {
            context: "quoting a password".into(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "it contains a NUL character"),
        });
    }
    let quoted = text.replace('\'', "''");
    Ok(if quoted.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    })
}

/// `text` with every occurrence of `secret` replaced by `***` (an empty secret hides nothing).
fn redact(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        text.to_owned()
    } else {
        text.replace(secret, "***")
    }
}

/// A command line with the password of a URL (`postgres://user:PASSWORD@...`) and the value
/// of each `password=` key of a conninfo or URL query shown as `***`.
fn redact_conninfo(command: &str) -> String {
    let mut out = String::with_capacity(command.len());
    let mut rest = command;
    if let Some(scheme) = rest.find("://") {
        let authority = scheme + "://".len();
        let end = rest[authority..]
            .find([' ', '/', '?'])
            .map_or(rest.len(), |i| authority + i);
        if let Some(at) = rest[authority..end].rfind('@') {
            let userinfo = &rest[authority..authority + at];
            if let Some(colon) = userinfo.find(':') {
                out += &rest[..authority + colon + 1];
                out += "***";
                rest = &rest[authority + at..];
            }
        }
    }
    while let Some(at) = rest.find("password=") {
        let value = at + "password=".len();
        out += &rest[..value];
        out += "***";
        rest = &rest[value..];
        let end = if rest.starts_with('\'') {
            // A quoted value ends at the next unescaped quote.
            let mut chars = rest.char_indices().skip(1);
            let mut end = rest.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '\'' => {
                        end = i + 1;
                        break;
                    }
                    _ => {}
                }
            }
            end
        } else {
            rest.find([' ', '&']).unwrap_or(rest.len())
        };
        rest = &rest[end..];
    }
    out + rest
}

/// Percent-encodes everything but unreserved characters and `/`, for a path in a URL query.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs a command; on success returns its trimmed stdout, otherwise an [`Error::Command`]
/// with the tail of its stderr and of `log`.
fn run(cmd: &mut Command, log: Option<&Path>) -> Result<String, Error> {
    let program = Path::new(cmd.get_program()).file_name().unwrap_or_default();
    let command = std::iter::once(program)
        .chain(cmd.get_args())
        .map(|arg| arg.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let out = cmd
        .output()
        .map_err(io_err(format!("running `{command}`")))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    }
    let mut output = tail(&String::from_utf8_lossy(&out.stderr));
    if let Some(log) = log {
        let log_text = fs::read_to_string(log).unwrap_or_default();
        output += &format!(
            "\n--- last lines of {} ---\n{}",
            log.display(),
            tail(&log_text)
        );
    }
    Err(Error::Command {
        command,
        status: out.status,
        output,
    })
}

/// Runs `cmd` with `input` on its stdin; errors show `shown` as the command and `***` for
/// `secret` in the output.
fn run_with_stdin(cmd: &mut Command, input: &str, shown: &str, secret: &str) -> Result<(), Error> {
    use std::io::Write;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(io_err(format!("running `{shown}`")))?;
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(input.as_bytes()))
        .unwrap_or(Ok(()));
    let out = child
        .wait_with_output()
        .map_err(io_err(format!("running `{shown}`")))?;
    if !out.status.success() {
        return Err(Error::Command {
            command: shown.to_owned(),
            status: out.status,
            output: redact(&tail(&String::from_utf8_lossy(&out.stderr)), secret),
        });
    }
    written.map_err(io_err(format!("writing to `{shown}`")))
}

/// `err` with `more` appended to its output when it is an [`Error::Command`] (the tail of a
/// log, a hint); any other error as it is.
fn with_output(err: Error, more: &str) -> Error {
    match err {
        Error::Command {
            command,
            status,
            output,
        } => Error::Command {
            command,
            status,
            output: format!("{output}\n{more}"),
        },
        other => other,
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io {
        context: context.into(),
        source,
    }
}

/// Picks `n` distinct free ports on 127.0.0.1, and free on ::1 too if `ipv6` (all listeners
/// are held until every port is picked).
fn free_ports(n: usize, ipv6: bool) -> Result<Vec<u16>, Error> {
    let mut listeners = Vec::new();
    let mut ports = Vec::new();
    // A port free on 127.0.0.1 may be taken on ::1; a few tries find one free on both.
    let mut tries = 0;
    while ports.len() < n {
        let v4 = TcpListener::bind("127.0.0.1:0").map_err(io_err("binding a free port"))?;
        let port = v4
            .local_addr()
            .map_err(io_err("reading a free port"))?
            .port();
        listeners.push(v4);
        if ipv6 {
            match TcpListener::bind((Ipv6Addr::LOCALHOST, port)) {
                Ok(v6) => listeners.push(v6),
                Err(_) if tries < 100 => {
                    tries += 1;
                    continue;
                }
                Err(e) => return Err(io_err("binding a free port on ::1")(e)),
            }
        }
        ports.push(port);
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_literal_doubles_quotes_and_escapes_backslashes() {
        assert_eq!(quote_literal("plain").unwrap(), "'plain'");
        assert_eq!(quote_literal("it's").unwrap(), "'it''s'");
        assert_eq!(quote_literal(r"a\'b").unwrap(), r"E'a\\''b'");
        assert!(quote_literal("nul\0").is_err());
    }

    #[test]
    fn with_upstream_port_rewrites_only_the_conninfo_port() {
        let conf = "# Do not edit\n\
                    port = 5000\n\
                    primary_conninfo = 'user=postgres host=127.0.0.1 port=5432 sslmode=prefer'\n";
        assert_eq!(
            with_upstream_port(conf, 6001).unwrap(),
            "# Do not edit\n\
             port = 5000\n\
             primary_conninfo = 'user=postgres host=127.0.0.1 port=6001 sslmode=prefer'\n"
        );
        assert_eq!(
            with_upstream_port("primary_conninfo = 'host=h port=5432'\n", 7).unwrap(),
            "primary_conninfo = 'host=h port=7'\n"
        );
        assert_eq!(with_upstream_port("port = 5000\n", 7), None);
    }

    #[test]
    fn quote_ident_doubles_double_quotes() {
        assert_eq!(quote_ident("postgres"), "\"postgres\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn redact_conninfo_hides_every_password() {
        assert_eq!(
            redact_conninfo("psql -d host=h password=s3cret user=u -c SELECT 1"),
            "psql -d host=h password=*** user=u -c SELECT 1"
        );
        assert_eq!(
            redact_conninfo(r"psql -d host=h password='a b\' c' user=u"),
            "psql -d host=h password=*** user=u"
        );
        assert_eq!(
            redact_conninfo("psql -d postgres://u:s3cret@h:5/db?password=x&sslmode=require"),
            "psql -d postgres://u:***@h:5/db?password=***&sslmode=require"
        );
        assert_eq!(
            redact_conninfo("psql -d postgres://u@h/db -c SELECT 1"),
            "psql -d postgres://u@h/db -c SELECT 1"
        );
    }

    #[test]
    fn percent_encode_keeps_slashes_and_unreserved_characters() {
        assert_eq!(
            percent_encode("/tmp/a b&c=d/ca.crt"),
            "/tmp/a%20b%26c%3Dd/ca.crt"
        );
    }
}
