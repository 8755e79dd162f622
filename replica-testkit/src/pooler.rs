//! PgBouncer, the machine's own (Debian's `pgbouncer` package), in front of one node of a
//! cluster, in transaction mode: the pooler large fleets put between their containers and
//! the database. Its settings are PgBouncer's defaults but for the pool mode, the pool size
//! and the address, so that what it refuses (startup `options`, on 1.18) it refuses here.

use std::net::TcpStream;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use std::{env, fs, thread};

use crate::{Error, PASSWORD, free_ports, io_err, local, tail};

/// The variable naming the `pgbouncer` program, when it is not on `PATH` or in `/usr/sbin`.
pub const PGBOUNCER_VAR: &str = "PGBOUNCER";

/// The variable naming a local Docker image to run PgBouncer from instead of the machine's
/// own (`docker/build-image.sh --pgbouncer` builds one with Debian trixie's 1.24). The
/// container shares the host's network, so it listens on 127.0.0.1 as the local one does.
pub const PGBOUNCER_IMAGE_VAR: &str = "DIESEL_REPLICA_TEST_PGBOUNCER_IMAGE";

/// How long PgBouncer may take to listen.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A PgBouncer in `pool_mode = transaction` in front of one node, listening on a free port of
/// 127.0.0.1, with the testkit's `postgres` role and password (SCRAM both ways). Stopped
/// (killed) and its files removed when dropped.
///
/// ```no_run
/// # use diesel_replica_testkit::{Cluster, NodeId, PgBouncer};
/// let cluster = Cluster::start(1)?;
/// let pooler = PgBouncer::start(cluster.node(NodeId::Primary).port(), 2)?;
/// let url = pooler.url(); // postgres://postgres:...@127.0.0.1:PORT/postgres
/// # Ok::<(), diesel_replica_testkit::Error>(())
/// ```
#[derive(Debug)]
pub struct PgBouncer {
    child: Child,
    /// The container it runs in, when it runs from an image.
    container: Option<String>,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl PgBouncer {
    /// Starts PgBouncer in front of the server at `127.0.0.1:target`, with `pool_size`
    /// server connections at most per database and user (`default_pool_size`), and waits
    /// until it listens.
    ///
    /// # Errors
    /// [`Error::MissingPgBouncer`] when there is no `pgbouncer` program; [`Error::Command`]
    /// when it exits or does not listen within 10 s (with the tail of its log);
    /// [`Error::Io`] for the files it needs.
    pub fn start(target: u16, pool_size: usize) -> Result<PgBouncer, Error> {
        Self::start_with_logins(target, pool_size, &[])
    }

    /// As [`PgBouncer::start`], and PgBouncer also takes each `(user, password)` of
    /// `logins` (roles the test made on the node), besides the testkit's `postgres`.
    ///
    /// # Errors
    /// As [`PgBouncer::start`].
    pub fn start_with_logins(
        target: u16,
        pool_size: usize,
        logins: &[(&str, &str)],
    ) -> Result<PgBouncer, Error> {
        let image = env::var(PGBOUNCER_IMAGE_VAR).ok().filter(|i| !i.is_empty());
        let program = match image {
            Some(_) => PathBuf::from("docker"),
            None => find()?,
        };
        let dir = tempfile::Builder::new()
            .prefix("replica-testkit-pgbouncer-")
            .tempdir()
            .map_err(io_err("making PgBouncer's temp dir"))?;
        let port = free_ports(1, false)?[0];
        let log = dir.path().join("pgbouncer.log");
        let users = dir.path().join("userlist.txt");
        let ini = dir.path().join("pgbouncer.ini");
        let quoted = |text: &str| format!("\"{}\"", text.replace('"', "\"\""));
        let userlist: String = std::iter::once(("postgres", PASSWORD))
            .chain(logins.iter().copied())
            .map(|(user, password)| format!("{} {}\n", quoted(user), quoted(password)))
            .collect();
        fs::write(&users, userlist).map_err(io_err("writing PgBouncer's userlist"))?;
        fs::write(
            &ini,
            format!(
                "[databases]\n\
                 * = host=127.0.0.1 port={target}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = scram-sha-256\n\
                 auth_file = {users}\n\
                 pool_mode = transaction\n\
                 default_pool_size = {pool_size}\n\
                 max_client_conn = 1000\n\
                 logfile = {log}\n\
                 admin_users = postgres\n",
                users = users.display(),
                log = log.display(),
            ),
        )
        .map_err(io_err("writing pgbouncer.ini"))?;
        let mut cmd = Command::new(&program);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let container = image
            .as_ref()
            .map(|_| format!("replica-testkit-pgbouncer-{port}"));
        if let (Some(image), Some(name)) = (&image, &container) {
            // PgBouncer refuses to run as root: in its container it runs as `nobody`, in
            // its directory mounted at the same path.
            let mode = fs::Permissions::from_mode(0o777);
            fs::set_permissions(dir.path(), mode)
                .map_err(io_err("opening PgBouncer's temp dir to its container"))?;
            let mount = format!("{0}:{0}", dir.path().display());
            cmd.args(["run", "--rm", "--name", name, "--network", "host"])
                .args(["--user", "65534:65534", "--label", "diesel-replica-testkit"])
                .args(["-v", &mount, image, "pgbouncer"])
                .arg(&ini);
        } else {
            cmd.arg(&ini);
        }
        // PgBouncer refuses to run as root: as root, it runs as `postgres`.
        if image.is_none()
            && let Some((uid, gid)) = local::run_as_user()?
        {
            for path in [dir.path(), &users, &ini] {
                chown(path, Some(uid), Some(gid))
                    .map_err(io_err(format!("chowning {} to postgres", path.display())))?;
            }
            cmd.uid(uid).gid(gid);
        }
        let child = cmd
            .spawn()
            .map_err(io_err(format!("starting {}", program.display())))?;
        let mut pooler = PgBouncer {
            child,
            container,
            port,
            log,
            _dir: dir,
        };
        pooler.wait_until_listening(&program)?;
        Ok(pooler)
    }

    /// The port it listens on, at 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres:PASSWORD@127.0.0.1:PORT/postgres`: the node, through PgBouncer.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// What PgBouncer logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_until_listening(&mut self, program: &Path) -> Result<(), Error> {
        let started = Instant::now();
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            let exited = self
                .child
                .try_wait()
                .map_err(io_err("waiting for PgBouncer"))?;
            if exited.is_some() || started.elapsed() > READY_TIMEOUT {
                let _ = self.child.kill();
                let status = self.child.wait().map_err(io_err("waiting for PgBouncer"))?;
                return Err(Error::Command {
                    command: format!(
                        "{} (listening on 127.0.0.1:{})",
                        program.display(),
                        self.port
                    ),
                    status,
                    output: tail(&self.log()),
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Some(name) = &self.container {
            // Killing `docker run` would leave its container running.
            let _ = Command::new("docker")
                .args(["rm", "-f", name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `pgbouncer` program: `PGBOUNCER`, else on `PATH`, else Debian's `/usr/sbin`.
fn find() -> Result<PathBuf, Error> {
    if let Some(named) = env::var_os(PGBOUNCER_VAR) {
        return Ok(PathBuf::from(named));
    }
    let on_path: Vec<PathBuf> = env::var_os("PATH")
        .map(|path| {
            env::split_paths(&path)
                .map(|dir| dir.join("pgbouncer"))
                .collect()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin/pgbouncer")])
        .find(|candidate| candidate.is_file())
        .ok_or(Error::MissingPgBouncer)
}
