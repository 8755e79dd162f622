//! The Docker backend: each node is a container of the image named by
//! `DIESEL_REPLICA_TEST_IMAGE`, on a private Docker network of its cluster, with its port
//! published on 127.0.0.1.
//!
//! A container's main process is the node's postmaster itself: its entrypoint, a small `sh`
//! script run as the `postgres` user, makes the data directory on the first start (initdb for
//! the primary, `pg_basebackup -R` from the upstream's container over the network for a
//! replica) and then `exec`s `postgres`. So stopping the container is stopping the server
//! (its stop signal is SIGINT, PostgreSQL's fast shutdown), `docker kill` is a crash, and the
//! container's PID in this machine's PID namespace is the postmaster's. Only PostgreSQL's own
//! programs, `sh` and coreutils are used inside; the image's entrypoint never runs.
//!
//! Inside its container a node listens on the same port number as the one published on the
//! host, so that `inet_server_port()` names the port the client used, as on the local backend.
//!
//! Each node's home (`/var/lib/postgresql`, which holds its data directory) is a Docker
//! volume of its own.
//!
//! Every container, volume and network carries the label [`LABEL`] (value: the cluster's
//! id) and [`OWNER_LABEL`] (`host/pid/start time` of the process that made it): they go
//! when the cluster is dropped, and a later cluster removes those whose owner has died.
//! Partitions are the `partition` module's.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use std::{env, fs, io, thread};

use crate::backend::{Backend, DEFAULT_IMAGE, Driver, IMAGE_VAR, Shutdown};
use crate::local::{self, client_env};
use crate::tls::TlsFiles;
use crate::{
    COMMON_CONF, Error, Node, PASSWORD, io_err, run, run_with_stdin, tail, with_output,
    with_upstream,
};

mod partition;

use partition::Partitions;

/// Label of every container, volume and network the testkit makes; its value is the
/// cluster's id.
pub const LABEL: &str = "diesel-replica-testkit";
/// Label naming the process that made a container, volume or network:
/// `host/pid/start time`.
pub const OWNER_LABEL: &str = "diesel-replica-testkit.owner";
/// The `postgres` user's home in the image, where the data directories go.
const HOME: &str = "/var/lib/postgresql";
/// How long a node may take to accept connections after its container starts.
const READY_TIMEOUT_STEPS: u32 = 1200;
/// Where a node's second socket directory, [`Driver::socket_dir`] on this machine, is
/// mounted in its container.
const SOCKET_MOUNT: &str = "/run/testkit-socket";
/// How long `docker version` may take to answer.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(20);

/// The entrypoint of every node's container (`sh -c`), run as `postgres`.
///
/// Arguments: data directory, role (`primary` or `replica`), lines to append to
/// `postgresql.conf`, then for a primary the whole `pg_hba.conf`, for a replica the
/// upstream's host, port and the `-d` conninfo of `pg_basebackup`. The password comes in
/// `PGPASSWORD`, which the server does not keep.
const NODE_SCRIPT: &str = r#"set -eu
D=$1
if [ ! -s "$D/PG_VERSION" ]; then
  if [ "$2" = primary ]; then
    (umask 077 && printf '%s' "$PGPASSWORD" > "$HOME/pwfile")
    initdb -D "$D" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
      --no-sync -E UTF8 --locale=C --pwfile="$HOME/pwfile" > /dev/null
    rm -f "$HOME/pwfile"
    printf '%s' "$4" > "$D/pg_hba.conf"
    if [ -d "$HOME/tls" ]; then
      cp "$HOME/tls/server.crt" "$HOME/tls/server.key" "$D/"
      chmod 600 "$D/server.key"
    fi
  else
    pg_basebackup -h "$4" -p "$5" -U postgres -d "$6" -D "$D" \
      -R -X stream --checkpoint=fast --no-sync
  fi
  printf '\n# replica-testkit\n%s' "$3" >> "$D/postgresql.conf"
fi
unset PGPASSWORD
exec postgres -D "$D"
"#;

/// Waits (up to [`READY_TIMEOUT_STEPS`] × 50 ms) until the node accepts connections.
const READY_SCRIPT: &str = r#"i=0
until pg_isready -q -h "$1" -p "$2"; do
  i=$((i + 1))
  [ "$i" -lt "$3" ] || exit 1
  sleep 0.05
done"#;

/// `pg_hba.conf` of a plain cluster: the containers and the host (through Docker's
/// gateway) come from addresses of the cluster's network.
const PLAIN_HBA: &str = "\
# replica-testkit (docker)
local   all          all                trust
local   replication  all                trust
host    all          all   0.0.0.0/0    scram-sha-256
host    all          all   ::/0         scram-sha-256
host    replication  all   0.0.0.0/0    scram-sha-256
host    replication  all   ::/0         scram-sha-256
";
/// `pg_hba.conf` of a TLS cluster: TCP only with TLS.
const TLS_HBA: &str = "\
# replica-testkit (docker): TCP connections only with TLS
local   all          all                trust
local   replication  all                trust
hostssl all          all   0.0.0.0/0    scram-sha-256
hostssl all          all   ::/0         scram-sha-256
hostssl replication  all   0.0.0.0/0    scram-sha-256
hostssl replication  all   ::/0         scram-sha-256
";

/// Whether the Docker engine answers `docker version` (within 20 s).
pub(crate) fn engine_answers() -> Result<(), Error> {
    let mut cmd = docker();
    cmd.args(["version", "--format", "{{.Server.Version}}"]);
    run_within(&mut cmd, ENGINE_TIMEOUT)
        .map(drop)
        .map_err(|source| Error::DockerUnavailable {
            source: Box::new(source),
        })
}

/// The containers, volumes and network of one cluster.
#[derive(Debug)]
pub(crate) struct Docker {
    /// The cluster's id: the value of [`LABEL`], and part of every name.
    id: String,
    /// The network's name, also the prefix of the containers' names.
    network: String,
    image: String,
    /// `host/pid/start time` of this process, for [`OWNER_LABEL`].
    owner: String,
    /// The cluster's temp dir (TLS files, client working directory).
    dir: PathBuf,
    /// The machine's PostgreSQL binaries, or at least its psql, if any; else empty.
    bin: PathBuf,
    /// Publish on ::1 too (a TLS cluster where `localhost` resolves to ::1).
    ipv6: bool,
    /// The nodes cut off by [`Driver::partition`].
    partitions: Partitions,
}

impl Docker {
    /// Checks that the image is here, removes what dead testkit processes left, and makes
    /// the cluster's network.
    pub(crate) fn new(dir: &Path, ipv6: bool) -> Result<Docker, Error> {
        let image = env::var(IMAGE_VAR)
            .ok()
            .filter(|image| !image.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_IMAGE.to_owned());
        if run(
            docker().args(["image", "inspect", "--format", "{{.Id}}", &image]),
            None,
        )
        .is_err()
        {
            return Err(Error::MissingImage { image });
        }
        remove_orphans();
        let id = cluster_id();
        let owner = owner();
        let cluster = Docker {
            network: format!("drt-{id}"),
            partitions: Partitions::new(&id, &owner),
            id,
            image,
            owner,
            dir: dir.to_owned(),
            bin: local::find_bin_dir()
                .ok()
                .or_else(psql_dir)
                .unwrap_or_default(),
            ipv6,
        };
        run(
            docker()
                .args(["network", "create"])
                .args(cluster.labels())
                .arg(&cluster.network),
            None,
        )?;
        Ok(cluster)
    }

    /// `--label` options for everything this cluster makes.
    fn labels(&self) -> [String; 4] {
        [
            "--label".into(),
            format!("{LABEL}={}", self.id),
            "--label".into(),
            format!("{OWNER_LABEL}={}", self.owner),
        ]
    }

    fn container(&self, node: &Node) -> String {
        format!("{}-{}", self.network, node.name)
    }

    /// Creates the node's container with `args` for [`NODE_SCRIPT`] (after the data
    /// directory), copies the TLS files in if any, starts it and waits until it is ready.
    fn create(&self, node: &Node, args: &[&str], tls: Option<&TlsFiles>) -> Result<(), Error> {
        let name = self.container(node);
        let port = node.port;
        let mut cmd = docker();
        // The node's home, which holds its data directory, is a volume of its own: much
        // faster to write than the container's layer (fuse-overlayfs, here), and new
        // volumes start with the image's home (owned by `postgres`) copied in.
        let volume = format!(
            "type=volume,src={name},dst={HOME},volume-label={LABEL}={},\
             volume-label={OWNER_LABEL}={}",
            self.id, self.owner
        );
        // The node's socket is also in a directory of this machine's, for clients here
        // (the container's `postgres` makes it: anyone may write the directory).
        let sockets = self.socket_dir(node);
        fs::create_dir_all(&sockets)
            .and_then(|()| fs::set_permissions(&sockets, fs::Permissions::from_mode(0o777)))
            .map_err(io_err(format!("making {}", sockets.display())))?;
        let socket_mount = format!("type=bind,src={},dst={SOCKET_MOUNT}", sockets.display());
        cmd.args(["create", "--name", &name, "--hostname", &node.name])
            .args(["--network", &self.network, "--network-alias", &node.name])
            .args(self.labels())
            .args(["--mount", &volume, "--mount", &socket_mount])
            .args(["-p", &format!("127.0.0.1:{port}:{port}")]);
        if self.ipv6 {
            cmd.args(["-p", &format!("[::1]:{port}:{port}")]);
        }
        // `-e NAME` without a value passes this process's value: the password stays off
        // the command line (and out of errors).
        cmd.args(["--user", "postgres", "--stop-signal", "SIGINT"])
            .args(["--stop-timeout", "60", "-e", "PGPASSWORD"])
            .args(["-e", "PGCONNECT_TIMEOUT=10", "--entrypoint", "sh"])
            .arg(&self.image)
            .args(["-c", NODE_SCRIPT, "testkit-node"])
            .arg(&node.data_dir)
            .args(args)
            .env("PGPASSWORD", PASSWORD);
        run_shown(
            &mut cmd,
            &format!("docker create --name {name} ... (the {} node)", node.name),
        )?;
        if let Some(files) = tls {
            let staged = self.dir.join("docker-tls");
            stage_tls(files, &staged)?;
            run(
                docker()
                    .arg("cp")
                    .arg(&staged)
                    .arg(format!("{name}:{HOME}/tls")),
                None,
            )?;
        }
        self.start(node)
    }

    /// Runs `args` in the node's container (as `postgres`).
    fn exec(&self, node: &Node, args: &[&str]) -> Result<String, Error> {
        run(
            docker().args(["exec", &self.container(node)]).args(args),
            None,
        )
    }

    /// The error of a node that did not come up: `err` with the tail of its log.
    fn with_log(&self, node: &Node, err: Error) -> Error {
        let logs = docker()
            .args(["logs", "--tail", "20", &self.container(node)])
            .output()
            .map(|out| {
                String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr)
            })
            .unwrap_or_default();
        with_output(
            err,
            &format!(
                "--- last lines of the log of container {} ---\n{}",
                self.container(node),
                tail(&logs)
            ),
        )
    }
}

impl Driver for Docker {
    fn backend(&self) -> Backend {
        Backend::Docker
    }

    fn docker_id(&self) -> Option<&str> {
        Some(&self.id)
    }

    fn root(&self) -> &Path {
        Path::new(HOME)
    }

    fn bin_dir(&self) -> &Path {
        &self.bin
    }

    fn socket_dir(&self, node: &Node) -> PathBuf {
        self.dir.join("sockets").join(&node.name)
    }

    fn init_primary(&self, node: &Node, tls: Option<&TlsFiles>, _ipv6: bool) -> Result<(), Error> {
        let mut conf = format!("listen_addresses = '*'\n{COMMON_CONF}");
        if tls.is_some() {
            conf += "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n";
        }
        conf += &own_conf(node);
        let hba = if tls.is_some() { TLS_HBA } else { PLAIN_HBA };
        self.create(node, &["primary", &conf, hba], tls)
    }

    fn make_replica(&self, node: &Node, upstream: &Node, tls: bool) -> Result<(), Error> {
        // The replica streams over TLS too: `-R` writes this into its `primary_conninfo`.
        let ssl = if tls { " sslmode=require" } else { "" };
        let conninfo = format!("application_name={}{ssl}", node.name);
        let port = upstream.port.to_string();
        self.create(
            node,
            &["replica", &own_conf(node), &upstream.name, &port, &conninfo],
            None,
        )
    }

    fn start(&self, node: &Node) -> Result<(), Error> {
        let name = self.container(node);
        run(docker().args(["start", &name]), None)?;
        let data_dir = node.data_dir.display().to_string();
        let steps = READY_TIMEOUT_STEPS.to_string();
        let port = node.port.to_string();
        self.exec(
            node,
            &["sh", "-c", READY_SCRIPT, "ready", &data_dir, &port, &steps],
        )
        .map(drop)
        .map_err(|err| self.with_log(node, err))
    }

    fn stop(&self, node: &Node, how: Shutdown) -> Result<(), Error> {
        let name = self.container(node);
        match how {
            // SIGINT, the container's stop signal: a fast shutdown.
            Shutdown::Fast => run(docker().args(["stop", &name]), None).map(drop),
            // SIGKILL to the postmaster; `docker wait` returns once the container has
            // stopped, so that a start right after finds it stopped.
            Shutdown::Immediate => {
                run(docker().args(["kill", &name]), None)?;
                run(docker().args(["wait", &name]), None).map(drop)
            }
        }
    }

    fn is_running(&self, node: &Node) -> bool {
        inspect(&self.container(node), "{{.State.Running}}").is_ok_and(|out| out == "true")
    }

    fn promote(&self, node: &Node) -> Result<(), Error> {
        let data_dir = node.data_dir.display().to_string();
        self.exec(node, &["pg_ctl", "-D", &data_dir, "-w", "promote"])
            .map(drop)
    }

    fn repoint(&self, node: &Node, upstream: &Node) -> Result<(), Error> {
        // The file is read and written through the running container, then the node
        // restarts to read it.
        if !self.is_running(node) {
            self.start(node)?;
        }
        let path = node.data_dir.join("postgresql.auto.conf");
        let path = path.display().to_string();
        let text = self.exec(node, &["cat", &path])? + "\n";
        let text =
            with_upstream(&text, Some(&upstream.name), upstream.port).ok_or_else(|| Error::Io {
                context: format!("rewriting {path} in container {}", self.container(node)),
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    "no primary_conninfo with a port",
                ),
            })?;
        let container = self.container(node);
        let mut cmd = docker();
        cmd.args(["exec", "-i", &container, "sh", "-c"])
            .arg(r#"cat > "$1.new" && mv "$1.new" "$1""#)
            .args(["write", &path]);
        run_with_stdin(
            &mut cmd,
            &text,
            &format!("docker exec -i {container} (write {path})"),
            PASSWORD,
        )?;
        self.stop(node, Shutdown::Fast)?;
        self.start(node)
    }

    fn psql_program(&self, node: &Node, stdin: bool) -> Command {
        let mut cmd = docker();
        cmd.arg("exec");
        if stdin {
            cmd.arg("-i");
        }
        cmd.arg(self.container(node)).arg("psql");
        cmd
    }

    fn psql_client(&self, env: &[(&str, &str)]) -> Command {
        if self.bin.join("psql").is_file() {
            let mut cmd = Command::new(self.bin.join("psql"));
            client_env(&mut cmd, env);
            return cmd;
        }
        // No psql here: the image's, in a throwaway container on this machine's network,
        // with the temp dir (the CA files) at the same path.
        let mut cmd = docker();
        client_env(&mut cmd, env);
        let dir = self.dir.display().to_string();
        cmd.args(["run", "--rm", "-i", "--network", "host"])
            .args(self.labels())
            .args(["-v", &format!("{dir}:{dir}:ro")]);
        for (name, _) in env {
            cmd.args(["-e", name]);
        }
        cmd.args(["--entrypoint", "psql"]).arg(&self.image);
        cmd
    }

    fn postmaster_pid(&self, node: &Node) -> Result<u32, Error> {
        let name = self.container(node);
        let context = || format!("reading the PID of the postmaster of container {name}");
        let pid = inspect(&name, "{{.State.Pid}}")
            .map_err(|err| Error::Io {
                context: context(),
                source: io::Error::other(err.to_string()),
            })?
            .parse::<u32>()
            .map_err(|err| Error::Io {
                context: context(),
                source: io::Error::new(io::ErrorKind::InvalidData, err),
            })?;
        match pid {
            0 => Err(Error::Io {
                context: context(),
                source: io::Error::new(io::ErrorKind::NotFound, "the container is not running"),
            }),
            pid => Ok(pid),
        }
    }

    fn pause(&self, node: &Node) -> Result<(), Error> {
        run(docker().args(["pause", &self.container(node)]), None).map(drop)
    }

    fn resume(&self, node: &Node) -> Result<(), Error> {
        run(docker().args(["unpause", &self.container(node)]), None).map(drop)
    }

    fn partition(&self, node: &Node) -> Result<(), Error> {
        self.partitions.cut(self.postmaster_pid(node)?, node.port)
    }

    fn heal(&self, node: &Node) -> Result<(), Error> {
        let pid = self.postmaster_pid(node).ok();
        self.partitions.heal(pid, node.port)
    }

    fn teardown(&mut self, _nodes: &[Node]) {
        remove_labelled(&format!("{LABEL}={}", self.id), |_| true);
        self.partitions.heal_all();
    }
}

impl Docker {}

/// The node's own `postgresql.conf` lines: its port (the published one) and socket
/// directories (its data directory, and the one mounted from this machine).
fn own_conf(node: &Node) -> String {
    let socket_dir = node.data_dir.display().to_string().replace('\'', "''");
    format!(
        "port = {}\nunix_socket_directories = '{socket_dir}, {SOCKET_MOUNT}'\n",
        node.port
    )
}

/// Copies the server certificate and key into `dir` readable by anyone, so that the
/// container's `postgres` user can read them once copied in (root owns what `docker cp`
/// copies); the entrypoint puts them into the data directory with mode 0600.
fn stage_tls(files: &TlsFiles, dir: &Path) -> Result<(), Error> {
    fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    for (from, name) in [
        (&files.server_cert, "server.crt"),
        (&files.server_key, "server.key"),
    ] {
        let to = dir.join(name);
        fs::copy(from, &to).map_err(io_err(format!("copying {}", from.display())))?;
        fs::set_permissions(&to, fs::Permissions::from_mode(0o644))
            .map_err(io_err(format!("chmod {}", to.display())))?;
    }
    Ok(())
}

/// `docker`, with the caller's environment (`DOCKER_HOST` and the like).
fn docker() -> Command {
    Command::new("docker")
}

/// `docker inspect -f FORMAT NAME`.
fn inspect(name: &str, format: &str) -> Result<String, Error> {
    run(docker().args(["inspect", "-f", format, name]), None)
}

/// [`run`], with `shown` as the command in errors (for long command lines).
fn run_shown(cmd: &mut Command, shown: &str) -> Result<String, Error> {
    run(cmd, None).map_err(|err| match err {
        Error::Command { status, output, .. } => Error::Command {
            command: shown.to_owned(),
            status,
            output,
        },
        other => other,
    })
}

/// [`run`], but a command still running after `limit` is killed and is an error.
fn run_within(cmd: &mut Command, limit: Duration) -> Result<String, Error> {
    let shown = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|arg| arg.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err(format!("running `{shown}`")))?;
    let deadline = Instant::now() + limit;
    loop {
        match child
            .try_wait()
            .map_err(io_err(format!("waiting for `{shown}`")))?
        {
            Some(status) => {
                let out = child
                    .wait_with_output()
                    .map_err(io_err(format!("reading the output of `{shown}`")))?;
                if status.success() {
                    return Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned());
                }
                return Err(Error::Command {
                    command: shown,
                    status,
                    output: tail(&String::from_utf8_lossy(&out.stderr)),
                });
            }
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Io {
                    context: format!("running `{shown}`"),
                    source: io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer within {limit:?}"),
                    ),
                });
            }
            None => thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// A fresh cluster id: this process's PID, a counter and some clock bits.
fn cluster_id() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let clock = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    format!(
        "{}-{}-{:04x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        clock & 0xffff
    )
}

/// This process as [`OWNER_LABEL`] names it: `host/pid/start time`.
fn owner() -> String {
    let pid = std::process::id();
    format!(
        "{}/{pid}/{}",
        hostname(),
        start_time(pid).unwrap_or_default()
    )
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_default()
}

/// When process `pid` started (field 22 of `/proc/PID/stat`, in clock ticks since boot):
/// with the PID, it names one process for the machine's uptime.
fn start_time(pid: u32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`: the comm may hold spaces and parentheses.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19).map(str::to_owned)
}

/// Whether the process an [`OWNER_LABEL`] value names is gone. Owners on other hosts, and
/// values that do not parse, are never judged gone.
fn owner_is_gone(owner: &str) -> bool {
    let mut parts = owner.split('/');
    let (Some(host), Some(pid), Some(started)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    host == hostname() && start_time(pid).as_deref() != Some(started)
}

/// Removes the containers (with their anonymous volumes), volumes, networks and
/// partition rules that testkit processes now gone left behind.
fn remove_orphans() {
    remove_labelled(LABEL, owner_is_gone);
    partition::remove_orphan_rules(owner_is_gone);
}

/// Removes the containers, then the volumes and the networks, that carry `filter` (a `--filter label=`
/// value) and whose [`OWNER_LABEL`] passes `remove`. Errors are ignored: whatever stays is
/// tried again by the next cluster.
fn remove_labelled(filter: &str, remove: impl Fn(&str) -> bool) {
    let format = |id: &str| format!("{{{{{id}}}}} {{{{.Label \"{OWNER_LABEL}\"}}}}");
    let label = format!("label={filter}");
    let listed = |kind: &[&str]| -> Vec<String> {
        // Volumes have no ID, only a name.
        let id = if kind[0] == "volume" { ".Name" } else { ".ID" };
        run(
            docker()
                .args(kind)
                .args(["--filter", &label, "--format", &format(id)]),
            None,
        )
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (id, owner) = line.split_once(' ').unwrap_or((line, ""));
            (!id.is_empty() && remove(owner)).then(|| id.to_owned())
        })
        .collect()
    };
    let containers = listed(&["ps", "-a"]);
    if !containers.is_empty() {
        let _ = docker().args(["rm", "-f", "-v"]).args(&containers).output();
    }
    let volumes = listed(&["volume", "ls"]);
    if !volumes.is_empty() {
        let _ = docker()
            .args(["volume", "rm", "-f"])
            .args(&volumes)
            .output();
    }
    let networks = listed(&["network", "ls"]);
    if !networks.is_empty() {
        let _ = docker().args(["network", "rm"]).args(&networks).output();
    }
}

/// The directory of a `psql` on `PATH`.
fn psql_dir() -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?).find(|dir| dir.join("psql").is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_not_gone_and_a_dead_one_is() {
        assert!(!owner_is_gone(&owner()));
        let host = hostname();
        assert!(owner_is_gone(&format!("{host}/{}/1", std::process::id())));
        assert!(owner_is_gone(&format!("{host}/4294967295/1")));
        assert!(!owner_is_gone("another-host/4294967295/1"));
        assert!(!owner_is_gone("garbage"));
    }
}
