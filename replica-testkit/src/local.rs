//! The local backend: the machine's PostgreSQL binaries, one server process per node, with
//! its data directory, unix socket and log in the cluster's temp dir. When running as root,
//! every PostgreSQL command runs as the `postgres` user.

use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::{env, fs, io};

use crate::backend::{Backend, Driver, Shutdown};
use crate::tls::TlsFiles;
use crate::{COMMON_CONF, Error, Node, PASSWORD, TLS_HBA, io_err, run, with_upstream_port};

/// The PostgreSQL programs the cluster runs.
const BINARIES: [&str; 4] = ["initdb", "pg_ctl", "pg_basebackup", "psql"];

/// Whether the local backend can run here: the binaries are found and, as root, there is a
/// `postgres` user to run them as.
pub(crate) fn check() -> Result<(), Error> {
    find_bin_dir()?;
    run_as_user().map(drop)
}

/// The machine's binaries, run as the right user in the cluster's temp dir.
#[derive(Debug)]
pub(crate) struct Local {
    bin: PathBuf,
    /// uid and gid to run PostgreSQL commands as (the `postgres` user when we are root).
    run_as: Option<(u32, u32)>,
    /// The cluster's temp dir.
    dir: PathBuf,
}

impl Local {
    /// Finds the binaries and the user, and hands `dir` (the cluster's temp dir) to it.
    pub(crate) fn new(dir: &Path) -> Result<Local, Error> {
        let local = Local {
            bin: find_bin_dir()?,
            run_as: run_as_user()?,
            dir: dir.to_owned(),
        };
        local.chown(dir)?;
        Ok(local)
    }

    fn pg_ctl<S: AsRef<std::ffi::OsStr>>(&self, node: &Node, args: &[S]) -> Result<(), Error> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(&node.data_dir).arg("-w").args(args);
        run(&mut cmd, Some(&node.log)).map(drop)
    }

    /// A command for one of the PostgreSQL binaries, run as the right user.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.current_dir(&self.dir).env("PGCONNECT_TIMEOUT", "10");
        if let Some((uid, gid)) = self.run_as {
            // libpq (pg_basebackup, and the replicas' WAL receivers, which inherit it from
            // pg_ctl) looks for client certificates in $HOME/.postgresql and fails when it
            // may not look into root's home; the temp dir has no `.postgresql`.
            cmd.uid(uid).gid(gid).env("HOME", &self.dir);
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

    /// Sends `signal` (`-STOP`, `-CONT`) to the node's postmaster, then to every process
    /// it started (backends may exit meanwhile: only the postmaster's signal must land).
    fn signal(&self, node: &Node, signal: &str) -> Result<(), Error> {
        let pid = self.postmaster_pid(node)?;
        run(Command::new("kill").args([signal, &pid.to_string()]), None)?;
        let children = children_of(pid);
        if !children.is_empty() {
            let _ = Command::new("kill")
                .arg(signal)
                .args(children.iter().map(u32::to_string))
                .stderr(Stdio::null())
                .status();
        }
        Ok(())
    }
}

impl Driver for Local {
    fn backend(&self) -> Backend {
        Backend::Local
    }

    fn root(&self) -> &Path {
        &self.dir
    }

    fn bin_dir(&self) -> &Path {
        &self.bin
    }

    fn socket_dir(&self, node: &Node) -> PathBuf {
        node.data_dir.clone()
    }

    fn init_primary(&self, node: &Node, tls: Option<&TlsFiles>, ipv6: bool) -> Result<(), Error> {
        if let Some(files) = tls {
            for path in [
                &files.ca,
                &files.wrong_ca,
                &files.server_cert,
                &files.server_key,
            ] {
                self.chown(path)?;
            }
        }
        let pwfile = self.dir.join("pwfile");
        fs::write(&pwfile, PASSWORD).map_err(io_err("writing the password file"))?;
        self.chown(&pwfile)?;
        let initdb = run(
            self.command("initdb")
                .arg("-D")
                .arg(&node.data_dir)
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
        let listen = if ipv6 { "127.0.0.1,::1" } else { "127.0.0.1" };
        let mut conf = format!("listen_addresses = '{listen}'\n{COMMON_CONF}");
        if let Some(files) = tls {
            conf += &files.server_conf();
            let hba = node.data_dir.join("pg_hba.conf");
            // Written over the file initdb made, which keeps its owner.
            fs::write(&hba, TLS_HBA).map_err(io_err(format!("writing {}", hba.display())))?;
        }
        append_conf(node, &conf)?;
        self.start(node)
    }

    fn make_replica(&self, node: &Node, upstream: &Node, tls: bool) -> Result<(), Error> {
        // The replica streams over TLS too: `-R` writes this into its `primary_conninfo`.
        let ssl = if tls { " sslmode=require" } else { "" };
        run(
            self.command("pg_basebackup")
                .env("PGPASSWORD", PASSWORD)
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &upstream.port.to_string(),
                    "-U",
                    "postgres",
                ])
                .args(["-d", &format!("application_name={}{ssl}", node.name), "-D"])
                .arg(&node.data_dir)
                .args(["-R", "-X", "stream", "--checkpoint=fast", "--no-sync"]),
            None,
        )?;
        append_conf(node, "")?;
        self.start(node)
    }

    fn start(&self, node: &Node) -> Result<(), Error> {
        self.pg_ctl(
            node,
            &["start".as_ref(), "-l".as_ref(), node.log.as_os_str()],
        )
    }

    fn stop(&self, node: &Node, how: Shutdown) -> Result<(), Error> {
        let mode = match how {
            Shutdown::Fast => "fast",
            Shutdown::Immediate => "immediate",
        };
        self.pg_ctl(node, &["stop", "-m", mode])
    }

    fn is_running(&self, node: &Node) -> bool {
        node.data_dir.join("postmaster.pid").exists()
    }

    fn promote(&self, node: &Node) -> Result<(), Error> {
        self.pg_ctl(node, &["promote"])
    }

    fn repoint(&self, node: &Node, upstream: &Node) -> Result<(), Error> {
        if self.is_running(node) {
            self.stop(node, Shutdown::Fast)?;
        }
        let path = node.data_dir.join("postgresql.auto.conf");
        let text =
            fs::read_to_string(&path).map_err(io_err(format!("reading {}", path.display())))?;
        let text = with_upstream_port(&text, upstream.port).ok_or_else(|| Error::Io {
            context: format!("rewriting {}", path.display()),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                "no primary_conninfo with a port",
            ),
        })?;
        // Written over the existing file, which keeps its owner.
        fs::write(&path, text).map_err(io_err(format!("writing {}", path.display())))?;
        self.start(node)
    }

    fn psql_program(&self, _node: &Node, _stdin: bool) -> Command {
        self.command("psql")
    }

    fn psql_client(&self, env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(self.bin.join("psql"));
        client_env(&mut cmd, env);
        cmd
    }

    fn postmaster_pid(&self, node: &Node) -> Result<u32, Error> {
        let path = node.data_dir.join("postmaster.pid");
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

    fn pause(&self, node: &Node) -> Result<(), Error> {
        self.signal(node, "-STOP")
    }

    fn resume(&self, node: &Node) -> Result<(), Error> {
        self.signal(node, "-CONT")
    }

    fn partition(&self, node: &Node) -> Result<(), Error> {
        Err(Error::Unsupported {
            action: "partition",
            node: node.name.clone(),
            backend: Backend::Local,
            reason: "a partition needs the Docker backend (DIESEL_REPLICA_TEST_BACKEND=docker): \
                     local nodes share this machine's loopback, which cannot be cut per node",
        })
    }

    fn heal(&self, node: &Node) -> Result<(), Error> {
        Err(Error::Unsupported {
            action: "heal",
            node: node.name.clone(),
            backend: Backend::Local,
            reason: "a partition needs the Docker backend (DIESEL_REPLICA_TEST_BACKEND=docker)",
        })
    }

    fn teardown(&mut self, nodes: &[Node]) {
        // Newest first, so that the first primary goes last. A paused node is resumed
        // first: a stopped process would not hear the shutdown.
        for node in nodes.iter().rev() {
            let _ = self.resume(node);
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

/// Sets a TCP client psql's environment: `env`, and none of this process's other `PG*`
/// variables.
pub(crate) fn client_env(cmd: &mut Command, env: &[(&str, &str)]) {
    for (name, _) in env::vars_os() {
        if name.to_string_lossy().starts_with("PG") {
            cmd.env_remove(name);
        }
    }
    cmd.envs(env.iter().copied());
}

/// The processes whose parent is `pid` (from `/proc/*/stat`).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let child: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
            let after_comm = &stat[stat.rfind(')')? + 1..];
            let ppid: u32 = after_comm.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}

/// Appends the node's own settings (after `extra`) to its `postgresql.conf`; later lines win.
fn append_conf(node: &Node, extra: &str) -> Result<(), Error> {
    use std::io::Write;
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

/// `PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`, else `pg_config --bindir`, else the
/// first `PATH` entry holding `initdb`; it must contain every program in [`BINARIES`].
pub(crate) fn find_bin_dir() -> Result<PathBuf, Error> {
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
pub(crate) fn run_as_user() -> Result<Option<(u32, u32)>, Error> {
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
