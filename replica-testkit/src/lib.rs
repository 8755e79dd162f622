//! A throwaway local PostgreSQL replication cluster for diesel-replica's tests,
//! examples and benchmarks: one primary plus N streaming replicas, started from
//! the machine's PostgreSQL binaries in a fresh temporary directory.
//!
//! Everything is synchronous (plain [`std::process::Command`]). When running as
//! root, every PostgreSQL command runs as the `postgres` user.
//!
//! Beside the cluster: [`Cluster::config`] and [`Cluster::load_config`] (a
//! `Config` for the cluster), [`WHO_SERVED`] and [`Served`] (which server
//! ran a query, as it reports itself), and [`Rng`] (a small seeded random
//! number generator).
//!
//! ```no_run
//! use replica_testkit::{Cluster, NodeId};
//!
//! let cluster = Cluster::start(2)?;
//! cluster.psql(NodeId::Primary, "CREATE TABLE t(x int); INSERT INTO t VALUES (1)")?;
//! cluster.wait_for_replication()?;
//! assert_eq!(cluster.psql(NodeId::Replica(0), "SELECT x FROM t")?, "1");
//! println!("writer: {}, readers: {:?}", cluster.writer_url(), cluster.replica_urls());
//! # Ok::<(), replica_testkit::Error>(())
//! ```

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};
use std::{env, fs, io, thread};

use tempfile::TempDir;

mod load;
mod served;

pub use load::Rng;
pub use served::{Served, WHO_SERVED, who_served};

/// Password of the `postgres` role; TCP connections must present it.
const PASSWORD: &str = "testkit-s3cret-pw";
/// How long [`Cluster::wait_for_replication`] waits before giving up.
const REPLICATION_TIMEOUT: Duration = Duration::from_secs(30);
/// The PostgreSQL programs the cluster runs.
const BINARIES: [&str; 4] = ["initdb", "pg_ctl", "pg_basebackup", "psql"];
/// How many trailing lines of stderr or a server log go into an [`Error`].
const TAIL_LINES: usize = 20;
/// Settings for every node (replicas inherit them from the primary's base backup).
const COMMON_CONF: &str = "
listen_addresses = '127.0.0.1'
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
    /// Replication did not catch up in time.
    #[error("timed out after {REPLICATION_TIMEOUT:?} waiting for {what} (last seen: {last})")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The last observed state.
        last: String,
    },
}

/// Identifies a node of a [`Cluster`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeId {
    /// The read-write primary.
    Primary,
    /// The replica with this index (0-based, in start order).
    Replica(usize),
}

/// One PostgreSQL server of a [`Cluster`].
#[derive(Debug)]
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

    /// The TCP port the node listens on at 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The node's data directory, which also holds its unix socket.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

/// A primary plus streaming replicas in a temporary directory.
///
/// Dropping it shuts every node down (immediate mode) and deletes the directory.
#[derive(Debug)]
pub struct Cluster {
    primary: Node,
    replicas: Vec<Node>,
    bin: PathBuf,
    /// uid and gid to run PostgreSQL commands as (the `postgres` user when we are root).
    run_as: Option<(u32, u32)>,
    dir: TempDir,
}

impl Cluster {
    /// Starts a primary and `replicas` streaming replicas on free 127.0.0.1 ports in a fresh
    /// temp dir and waits until every replica has replayed the primary's latest write.
    pub fn start(replicas: usize) -> Result<Cluster, Error> {
        let bin = find_bin_dir()?;
        let run_as = run_as_user()?;
        let dir = tempfile::Builder::new()
            .prefix("replica-testkit-")
            .tempdir()
            .map_err(io_err("creating the temp dir"))?;
        let ports = free_ports(replicas + 1)?;
        let primary = Node::new(dir.path(), "primary".into(), ports[0]);
        let mut cluster = Cluster {
            primary,
            replicas: Vec::new(),
            bin,
            run_as,
            dir,
        };
        cluster.chown(cluster.dir.path())?;
        cluster.init_primary()?;
        for (i, &port) in ports[1..].iter().enumerate() {
            cluster.add_replica(Node::new(cluster.dir.path(), format!("replica-{i}"), port))?;
        }
        cluster.wait_for_replication()?;
        Ok(cluster)
    }

    /// The primary.
    pub fn primary(&self) -> &Node {
        &self.primary
    }

    /// The replicas, in start order.
    pub fn replicas(&self) -> &[Node] {
        &self.replicas
    }

    /// The node `id` refers to.
    ///
    /// # Panics
    /// If `id` is `Replica(i)` with `i` out of range.
    pub fn node(&self, id: NodeId) -> &Node {
        match id {
            NodeId::Primary => &self.primary,
            NodeId::Replica(i) => &self.replicas[i],
        }
    }

    /// The directory holding the PostgreSQL binaries in use (for running e.g. psql or pgbench).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// The password of the `postgres` role used in the URLs.
    pub fn password(&self) -> &str {
        PASSWORD
    }

    /// `postgres://postgres:PASSWORD@127.0.0.1:PORT/postgres` for the primary.
    pub fn writer_url(&self) -> String {
        self.url(NodeId::Primary)
    }

    /// One URL per replica, in start order.
    pub fn replica_urls(&self) -> Vec<String> {
        (0..self.replicas.len())
            .map(|i| self.url(NodeId::Replica(i)))
            .collect()
    }

    /// `postgres://postgres:PASSWORD@127.0.0.1:PORT/postgres` for the node.
    pub fn url(&self, id: NodeId) -> String {
        let port = self.node(id).port;
        format!("postgres://postgres:{PASSWORD}@127.0.0.1:{port}/postgres")
    }

    /// Fast shutdown (`pg_ctl stop -m fast`).
    pub fn stop(&self, id: NodeId) -> Result<(), Error> {
        self.pg_ctl(id, &["stop", "-m", "fast"])
    }

    /// Immediate shutdown (`pg_ctl stop -m immediate`): the crash-like kill.
    pub fn kill(&self, id: NodeId) -> Result<(), Error> {
        self.pg_ctl(id, &["stop", "-m", "immediate"])
    }

    /// Starts a stopped or killed node again on the same port and waits until it accepts
    /// connections (`pg_ctl start -w`).
    pub fn start_node(&self, id: NodeId) -> Result<(), Error> {
        let log = self.node(id).log.as_os_str();
        self.pg_ctl(id, &["start".as_ref(), "-l".as_ref(), log])
    }

    /// Fast shutdown, then start.
    pub fn restart(&self, id: NodeId) -> Result<(), Error> {
        self.stop(id)?;
        self.start_node(id)
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

    /// Waits (up to 30 s) until every running, unpaused replica has replayed the primary's
    /// current WAL LSN.
    ///
    /// The primary first commits a tiny WAL record with `synchronous_commit = on`, which
    /// writes out earlier asynchronous commits so that `pg_current_wal_lsn()` covers them.
    /// A replica counts as running while its `postmaster.pid` exists.
    pub fn wait_for_replication(&self) -> Result<(), Error> {
        let out = self.run_psql(
            NodeId::Primary,
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
        for (i, node) in self.replicas.iter().enumerate() {
            while node.data_dir.join("postmaster.pid").exists() {
                let last = match self.psql(NodeId::Replica(i), &check) {
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
        self.run_psql(id, &[sql])
    }

    /// PID of the node's postmaster (first line of `postmaster.pid`).
    pub fn postmaster_pid(&self, id: NodeId) -> Result<u32, Error> {
        let path = self.node(id).data_dir.join("postmaster.pid");
        let context = || format!("reading the PID in {}", path.display());
        let text = fs::read_to_string(&path).map_err(io_err(context()))?;
        text.lines()
            .next()
            .and_then(|line| line.trim().parse().ok())
            .ok_or_else(|| Error::Io {
                context: context(),
                source: io::Error::new(io::ErrorKind::InvalidData, "no PID on the first line"),
            })
    }

    fn init_primary(&self) -> Result<(), Error> {
        let pwfile = self.dir.path().join("pwfile");
        fs::write(&pwfile, PASSWORD).map_err(io_err("writing the password file"))?;
        self.chown(&pwfile)?;
        let initdb = run(
            self.command("initdb")
                .arg("-D")
                .arg(&self.primary.data_dir)
                .args([
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                ])
                .args(["--no-sync", "-E", "UTF8", "--locale=C", "--pwfile"])
                .arg(&pwfile),
            None,
        );
        let removed = fs::remove_file(&pwfile).map_err(io_err("removing the password file"));
        initdb?;
        removed?;
        append_conf(&self.primary, COMMON_CONF)?;
        self.start_node(NodeId::Primary)
    }

    fn add_replica(&mut self, node: Node) -> Result<(), Error> {
        let i = self.replicas.len();
        // Registered before it exists, so that Drop stops it if anything below fails.
        self.replicas.push(node);
        let node = &self.replicas[i];
        run(
            self.command("pg_basebackup")
                .env("PGPASSWORD", PASSWORD)
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.primary.port.to_string(),
                    "-U",
                    "postgres",
                ])
                .args(["-d", &format!("application_name={}", node.name), "-D"])
                .arg(&node.data_dir)
                .args(["-R", "-X", "stream", "--checkpoint=fast", "--no-sync"]),
            None,
        )?;
        append_conf(node, "")?;
        self.start_node(NodeId::Replica(i))
    }

    fn pg_ctl<S: AsRef<std::ffi::OsStr>>(&self, id: NodeId, args: &[S]) -> Result<(), Error> {
        let node = self.node(id);
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(&node.data_dir).arg("-w").args(args);
        run(&mut cmd, Some(&node.log)).map(drop)
    }

    fn run_psql(&self, id: NodeId, sqls: &[&str]) -> Result<String, Error> {
        let node = self.node(id);
        let mut cmd = self.command("psql");
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&node.data_dir)
            .args([
                "-p",
                &node.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ]);
        for sql in sqls {
            cmd.args(["-c", sql]);
        }
        run(&mut cmd, None)
    }

    /// A command for one of the PostgreSQL binaries, run as the right user.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.current_dir(self.dir.path())
            .env("PGCONNECT_TIMEOUT", "10");
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn chown(&self, path: &Path) -> Result<(), Error> {
        match self.run_as {
            Some((uid, gid)) => chown(path, Some(uid), Some(gid))
                .map_err(io_err(format!("chowning {} to postgres", path.display()))),
            None => Ok(()),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.replicas.iter().chain([&self.primary]) {
            let mut cmd = self.command("pg_ctl");
            let _ = cmd
                .arg("stop")
                .arg("-D")
                .arg(&node.data_dir)
                .args(["-m", "immediate", "-w"])
                .output();
        }
    }
}

/// Appends the node's own settings (after `extra`) to its `postgresql.conf`; later lines win.
fn append_conf(node: &Node, extra: &str) -> Result<(), Error> {
    let path = node.data_dir.join("postgresql.conf");
    let socket_dir = node.data_dir.display().to_string().replace('\'', "''");
    let conf = format!(
        "\n# replica-testkit\n{extra}port = {}\nunix_socket_directories = '{socket_dir}'\n",
        node.port
    );
    let context = format!("appending to {}", path.display());
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(io_err(&context))?;
    file.write_all(conf.as_bytes()).map_err(io_err(context))
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

/// Picks `n` distinct free ports on 127.0.0.1 (all listeners are held until every port is picked).
fn free_ports(n: usize) -> Result<Vec<u16>, Error> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<io::Result<Vec<_>>>()
        .map_err(io_err("binding a free port"))?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect::<io::Result<_>>()
        .map_err(io_err("reading a free port"))
}

/// `PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`, else `pg_config --bindir`, else the
/// first `PATH` entry holding `initdb`; it must contain every program in [`BINARIES`].
fn find_bin_dir() -> Result<PathBuf, Error> {
    let dir = match env::var_os("PG_BIN") {
        Some(dir) => PathBuf::from(dir),
        None => versioned_bin_dir()
            .or_else(pg_config_bin_dir)
            .or_else(path_bin_dir)
            .ok_or_else(|| Error::MissingBinary {
                binary: "initdb".into(),
                searched: "/usr/lib/postgresql/*/bin, `pg_config --bindir` and PATH".into(),
            })?,
    };
    match BINARIES.iter().find(|binary| !dir.join(binary).is_file()) {
        Some(binary) => Err(Error::MissingBinary {
            binary: (*binary).into(),
            searched: dir.display().to_string(),
        }),
        None => Ok(dir),
    }
}

fn versioned_bin_dir() -> Option<PathBuf> {
    fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: Vec<u32> = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<_>>()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
}

fn pg_config_bin_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(run(Command::new("pg_config").arg("--bindir"), None).ok()?);
    dir.join("initdb").is_file().then_some(dir)
}

fn path_bin_dir() -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?).find(|dir| dir.join("initdb").is_file())
}

/// `None` when not root; the `postgres` user's uid and gid when root.
fn run_as_user() -> Result<Option<(u32, u32)>, Error> {
    if run(Command::new("id").arg("-u"), None)? != "0" {
        return Ok(None);
    }
    let passwd = fs::read_to_string("/etc/passwd").map_err(io_err("reading /etc/passwd"))?;
    let user = passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields[..] {
            ["postgres", _, uid, gid, ..] => Some((uid.parse().ok()?, gid.parse().ok()?)),
            _ => None,
        }
    });
    user.map(Some).ok_or(Error::NoPostgresUser)
}
