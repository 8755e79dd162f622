//! End-to-end check of the testkit against real PostgreSQL binaries.

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use diesel_replica_testkit::{Cluster, DOCKER_LABEL, NodeId};

const R0: NodeId = NodeId::Replica(0);
const R1: NodeId = NodeId::Replica(1);

fn count(cluster: &Cluster, id: NodeId) -> String {
    cluster.psql(id, "SELECT count(*) FROM t").unwrap()
}

#[test]
fn cluster_lifecycle() {
    let started = Instant::now();
    let cluster = Cluster::start(2).unwrap();
    eprintln!("Cluster::start(2) took {:?}", started.elapsed());

    let urls = cluster.replica_urls();
    assert_eq!(urls.len(), 2);
    assert_eq!(cluster.replicas()[1].name(), "replica-1");
    let writer = format!(
        "postgres://postgres:{}@127.0.0.1:{}/postgres",
        cluster.password(),
        cluster.primary().port()
    );
    assert_eq!(cluster.writer_url(), writer);
    assert_eq!(urls[0], cluster.url(R0));
    assert!(!cluster.is_tls());
    assert_eq!(cluster.ca_cert_path(), None);
    assert_eq!(cluster.wrong_ca_cert_path(), None);

    cluster
        .psql(
            NodeId::Primary,
            "CREATE TABLE t(x int); INSERT INTO t VALUES (1)",
        )
        .unwrap();
    cluster.wait_for_replication().unwrap();
    for id in [R0, R1] {
        assert_eq!(cluster.psql(id, "SELECT x FROM t").unwrap(), "1");
        assert_eq!(cluster.psql(id, "SELECT pg_is_in_recovery()").unwrap(), "t");
    }

    // A paused replica falls behind while the other one keeps up.
    cluster.pause_replay(0).unwrap();
    cluster
        .psql(NodeId::Primary, "INSERT INTO t VALUES (2)")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&cluster, R1) != "2" {
        assert!(
            Instant::now() < deadline,
            "replica-1 never saw the second row"
        );
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(300));
    assert_eq!(count(&cluster, R0), "1");
    cluster.wait_for_replication().unwrap(); // paused replicas are skipped
    cluster.resume_replay(0).unwrap();
    cluster.wait_for_replication().unwrap();
    assert_eq!(count(&cluster, R0), "2");

    // A killed replica refuses connections until started again, then catches up.
    cluster.kill(R1).unwrap();
    assert!(cluster.psql(R1, "SELECT 1").is_err());
    assert!(cluster.postmaster_pid(R1).is_err());
    cluster
        .psql(NodeId::Primary, "INSERT INTO t VALUES (3)")
        .unwrap();
    cluster.start_node(R1).unwrap();
    cluster.wait_for_replication().unwrap();
    assert_eq!(count(&cluster, R1), "3");

    // After a primary restart the replicas reconnect (with the password) and keep replicating.
    let old_pid = cluster.postmaster_pid(NodeId::Primary).unwrap();
    cluster.restart(NodeId::Primary).unwrap();
    assert_ne!(cluster.postmaster_pid(NodeId::Primary).unwrap(), old_pid);
    cluster
        .psql(NodeId::Primary, "INSERT INTO t VALUES (4)")
        .unwrap();
    cluster.wait_for_replication().unwrap();
    for id in [R0, R1] {
        assert_eq!(count(&cluster, id), "4");
    }

    // TCP connections must present the right password.
    let psql_url = |url: &str| {
        let psql = cluster.bin_dir().join("psql");
        let out = Command::new(psql)
            .args(["-X", "-A", "-t", "-c", "SELECT 42", url])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        )
    };
    assert_eq!(psql_url(&cluster.url(R1)), (true, "42".to_owned()));
    let wrong = cluster
        .writer_url()
        .replace(cluster.password(), "wrong-password");
    assert_eq!(psql_url(&wrong), (false, String::new()));

    if let Some(id) = cluster.docker_id() {
        // On Docker the data directories are in the containers' volumes, which go with
        // the cluster (tests/docker.rs checks the rest).
        let filter = format!("label={DOCKER_LABEL}={id}");
        drop(cluster);
        let out = Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
            .unwrap();
        assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
        return;
    }
    let data_dir = cluster.primary().data_dir().to_owned();
    let root = data_dir.parent().unwrap().to_owned();
    drop(cluster);
    assert!(!root.exists(), "{} still exists", root.display());
    let pgrep = Command::new("pgrep").arg("-f").arg(&root).output().unwrap();
    assert!(
        pgrep.stdout.is_empty(),
        "postgres still running: {}",
        String::from_utf8_lossy(&pgrep.stdout)
    );
}
