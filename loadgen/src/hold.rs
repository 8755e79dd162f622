//! `--local N --hold-cluster ENV_FILE`: the throwaway cluster for other
//! processes. loadgen starts it, writes where it is and how to log in to
//! `ENV_FILE`, prints its nodes, and keeps it up, running no load, until
//! SIGINT or SIGTERM; then it stops the nodes and removes the cluster and
//! the file. A script can then run loadgen against it through the library
//! (`DATABASE_*`) and through a proxy in front of it (`--through`) in turn,
//! on the one cluster.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use diesel_replica_testkit::Cluster;
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};

use crate::error::Fatal;

/// Starts the cluster, publishes it in `env_file` and on stdout, and holds
/// it until SIGINT or SIGTERM.
pub(crate) fn hold(replicas: usize, env_file: &Path) -> Result<(), Fatal> {
    eprintln!(
        "loadgen: --hold-cluster: starting a throwaway local cluster (primary + {replicas} \
         streaming replicas) with diesel_replica_testkit"
    );
    let cluster =
        Cluster::start(replicas).map_err(|e| Fatal::new(format!("cannot start it: {e}")))?;
    let primary = format!("127.0.0.1:{}", cluster.primary().port());
    let nodes: Vec<String> = cluster
        .replicas()
        .iter()
        .map(|node| format!("127.0.0.1:{}", node.port()))
        .collect();
    write_env(env_file, &env_text(&cluster, &primary, &nodes))?;
    // The nodes without credentials; those are in the file only.
    println!(
        "{}",
        json!({ "primary": primary, "replicas": nodes, "env_file": env_file })
    );
    eprintln!(
        "loadgen: cluster up, written to {}; SIGINT or SIGTERM stops and removes it",
        env_file.display()
    );
    let waited = wait_for_stop();
    // The file names a cluster about to go: removed first, so that nothing
    // reads it in between.
    let removed = fs::remove_file(env_file).map_err(|e| {
        Fatal::new(format!(
            "cannot remove {}: {e} (the cluster is removed all the same)",
            env_file.display()
        ))
    });
    drop(cluster);
    eprintln!("loadgen: cluster stopped and removed");
    waited.and(removed)
}

/// The lines of the env file, for a shell's `source`: the library's
/// variables for the cluster, the password for psql, and the nodes.
fn env_text(cluster: &Cluster, primary: &str, replicas: &[String]) -> String {
    let vars = [
        ("DATABASE_URL", cluster.writer_url()),
        ("DATABASE_REPLICA_URLS", cluster.replica_urls().join(",")),
        ("PGPASSWORD", cluster.password().to_owned()),
        ("LOADGEN_PRIMARY", primary.to_owned()),
        ("LOADGEN_REPLICAS", replicas.join(",")),
    ];
    let mut text =
        String::from("# loadgen --hold-cluster: a throwaway cluster, up while that loadgen runs\n");
    for (name, value) in vars {
        text += &format!("{name}={}\n", shell_quote(&value));
    }
    text
}

/// `value` in single quotes for a POSIX shell.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// Writes `text` to `path`, readable by its owner only (it holds the
/// password), whole or not at all: a script waiting for the file never
/// reads half of it.
fn write_env(path: &Path, text: &str) -> Result<(), Fatal> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = Path::new(&partial);
    let written = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(partial)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .and_then(|()| fs::rename(partial, path));
    written.map_err(|e| Fatal::new(format!("cannot write {}: {e}", path.display())))
}

/// Waits for SIGINT or SIGTERM.
fn wait_for_stop() -> Result<(), Fatal> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Fatal::new(format!("cannot start the tokio runtime: {e}")))?;
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate())
            .map_err(|e| Fatal::new(format!("cannot wait for SIGTERM: {e}")))?;
        tokio::select! {
            interrupted = tokio::signal::ctrl_c() => interrupted
                .map_err(|e| Fatal::new(format!("cannot wait for SIGINT: {e}"))),
            _ = term.recv() => Ok(()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn values_are_quoted_for_the_shell() {
        assert_eq!(
            shell_quote("postgres://a:b@h:1/d"),
            "'postgres://a:b@h:1/d'"
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
