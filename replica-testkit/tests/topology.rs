//! Changing a running cluster's topology against real PostgreSQL binaries: adding and
//! removing replicas, promoting one after the primary dies, and re-pointing another at it.

use std::net::TcpStream;

use diesel_replica_testkit::{Cluster, Error, NodeId};

const R0: NodeId = NodeId::Replica(0);
const R1: NodeId = NodeId::Replica(1);
const R2: NodeId = NodeId::Replica(2);

fn rows(cluster: &Cluster, id: NodeId) -> String {
    cluster
        .psql(id, "SELECT string_agg(x::text, ',' ORDER BY x) FROM t")
        .unwrap()
}

fn in_recovery(cluster: &Cluster, id: NodeId) -> String {
    cluster.psql(id, "SELECT pg_is_in_recovery()").unwrap()
}

fn assert_topology_error(result: Result<(), Error>, reason: &str) {
    match result {
        Err(err @ Error::Topology { .. }) => {
            assert!(err.to_string().contains(reason), "{err}")
        }
        other => panic!("expected a topology error ({reason}), got {other:?}"),
    }
}

#[test]
fn an_added_replica_streams_what_the_primary_writes() {
    let cluster = Cluster::start(1).unwrap();
    cluster
        .psql(
            NodeId::Primary,
            "CREATE TABLE t(x int); INSERT INTO t VALUES (1)",
        )
        .unwrap();

    let id = cluster.add_replica().unwrap();
    assert_eq!(id, R1);
    assert_eq!(cluster.node(id).name(), "replica-1");
    assert_eq!(cluster.replica_ids(), [R0, R1]);
    assert_eq!(cluster.replica_urls(), [cluster.url(R0), cluster.url(R1)]);

    cluster
        .psql(NodeId::Primary, "INSERT INTO t VALUES (2)")
        .unwrap();
    cluster.wait_for_replication().unwrap();
    assert_eq!(rows(&cluster, id), "1,2");
    assert_eq!(in_recovery(&cluster, id), "t");
    let streaming = cluster
        .psql(
            NodeId::Primary,
            "SELECT application_name FROM pg_stat_replication ORDER BY 1",
        )
        .unwrap();
    assert_eq!(streaming, "replica-0\nreplica-1");
}

#[test]
fn a_removed_replica_refuses_connections_and_is_listed_nowhere() {
    let cluster = Cluster::start(2).unwrap();
    let port = cluster.node(R0).port();
    let url = cluster.url(R0);

    cluster.remove_replica(R0).unwrap();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    assert_eq!(cluster.replica_ids(), [R1]);
    assert_eq!(cluster.replica_urls(), [cluster.url(R1)]);
    assert_eq!(cluster.replicas()[0].name(), "replica-1");
    // Still described, as the stopped server it was.
    assert_eq!(cluster.node(R0).port(), port);
    assert_eq!(cluster.url(R0), url);

    assert_topology_error(
        cluster.start_node(R0),
        "cannot start replica-0: it was removed",
    );
    assert_topology_error(cluster.remove_replica(R0), "it was removed already");
    assert_topology_error(
        cluster.remove_replica(NodeId::Primary),
        "cannot remove primary: it is the primary",
    );
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());

    // Ids are not reused, and replication waits only for the replicas still there.
    assert_eq!(cluster.add_replica().unwrap(), R2);
    assert_ne!(cluster.node(R2).port(), port);
    cluster
        .psql(
            NodeId::Primary,
            "CREATE TABLE t(x int); INSERT INTO t VALUES (1)",
        )
        .unwrap();
    cluster.wait_for_replication().unwrap();
    assert_eq!(rows(&cluster, R1), "1");
    assert_eq!(rows(&cluster, R2), "1");
    assert_eq!(cluster.replica_ids(), [R1, R2]);
}

#[test]
fn a_promoted_replica_takes_writes_after_the_primary_dies() {
    let cluster = Cluster::start(2).unwrap();
    cluster
        .psql(
            NodeId::Primary,
            "CREATE TABLE t(x int); INSERT INTO t VALUES (1)",
        )
        .unwrap();
    cluster.wait_for_replication().unwrap();
    assert_eq!(cluster.primary_id(), NodeId::Primary);
    assert_topology_error(cluster.promote(NodeId::Primary), "it is the primary");

    cluster.kill(NodeId::Primary).unwrap();
    cluster.promote(R0).unwrap();
    assert_eq!(in_recovery(&cluster, R0), "f");
    assert_eq!(cluster.primary_id(), R0);
    assert_eq!(cluster.primary().name(), "replica-0");
    assert_eq!(cluster.writer_url(), cluster.url(R0));
    assert_eq!(cluster.replica_ids(), [R1]);

    cluster.psql(R0, "INSERT INTO t VALUES (2)").unwrap();
    assert_eq!(rows(&cluster, R0), "1,2");
    // replica-1 still follows the dead primary, so the wait skips it.
    cluster.wait_for_replication().unwrap();
    assert_eq!(in_recovery(&cluster, R1), "t");

    // A replica added now is a copy of the new primary.
    let id = cluster.add_replica().unwrap();
    cluster.psql(R0, "INSERT INTO t VALUES (3)").unwrap();
    cluster.wait_for_replication().unwrap();
    assert_eq!(rows(&cluster, id), "1,2,3");
}

#[test]
fn a_repointed_replica_follows_the_promoted_primary_across_the_timeline_switch() {
    let cluster = Cluster::start(2).unwrap();
    cluster
        .psql(
            NodeId::Primary,
            "CREATE TABLE t(x int); INSERT INTO t VALUES (1)",
        )
        .unwrap();
    cluster.wait_for_replication().unwrap();
    cluster.kill(NodeId::Primary).unwrap();
    cluster.promote(R0).unwrap();
    cluster.psql(R0, "INSERT INTO t VALUES (2)").unwrap();

    cluster.repoint(R1).unwrap();
    cluster.wait_for_replication().unwrap();
    assert_eq!(rows(&cluster, R1), "1,2");
    assert_eq!(in_recovery(&cluster, R1), "t");
    let timeline = cluster
        .psql(R1, "SELECT received_tli FROM pg_stat_wal_receiver")
        .unwrap();
    assert_eq!(timeline, "2");

    assert_topology_error(
        cluster.repoint(R0),
        "cannot repoint replica-0: it is the primary",
    );
    assert_topology_error(
        cluster.repoint(NodeId::Primary),
        "cannot repoint primary: it has been a primary",
    );
}
