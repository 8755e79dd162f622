//! Network partitions under load, on the Docker backend only (elsewhere these tests are
//! reported as ignored, with the reason): a node is cut off the network
//! (`Cluster::partition`: no packet in or out, its connections hang, new connections get
//! no answer) while tasks read, or write, and is healed again. One test at a time: they
//! share the nodes. The last test checks that the cluster, once dropped, left no
//! container, network or volume behind.

mod common;

use std::io::{ErrorKind as IoErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::load::{
    READERS, SLACK, Timeouts, assert_ejected, ejected_within, on_cluster, reading_for, spread,
    until_health,
};
use common::replica_ports;
use common::writer_cut;
use diesel_replica::{Health, ReplicaSet};
use diesel_replica_testkit::{Cluster, DOCKER_LABEL, NodeId};

fn main() -> ExitCode {
    common::run_on_docker_one_at_a_time(
        2,
        "CREATE TABLE t (x int)",
        tests![
            a_partitioned_replica_costs_no_reads_and_is_readmitted_after_heal,
            a_partitioned_writer_fails_its_calls_at_once_and_they_resume_after_heal,
        ],
        vec![(
            "nothing_labelled_remains_after_the_cluster_is_dropped",
            nothing_labelled_remains,
        )],
    )
}

/// Heals a partitioned node even when the test fails midway.
struct Heal(Arc<Cluster>, NodeId);

impl Drop for Heal {
    fn drop(&mut self) {
        let _ = self.0.heal(self.1);
    }
}

/// PostgreSQL's SSLRequest: the smallest message a server answers (with `N` or `S`).
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// What sending an SSLRequest on `stream` got within `wait`: `Ok(byte)` for an answer,
/// `Err(kind)` for none (`WouldBlock`/`TimedOut` when nothing came; an EOF is
/// `UnexpectedEof`).
fn ask(stream: &mut TcpStream, wait: Duration) -> Result<u8, IoErrorKind> {
    stream.set_read_timeout(Some(wait)).unwrap();
    stream.write_all(&SSL_REQUEST).map_err(|e| e.kind())?;
    let mut answer = [0u8; 1];
    match stream.read(&mut answer) {
        Ok(0) => Err(IoErrorKind::UnexpectedEof),
        Ok(_) => Ok(answer[0]),
        Err(e) => Err(e.kind()),
    }
}

/// Whether `result` is "nothing came back in time" (not an answer, not an EOF or reset).
fn hung(result: Result<u8, IoErrorKind>) -> bool {
    matches!(result, Err(IoErrorKind::WouldBlock | IoErrorKind::TimedOut))
}

async fn a_partitioned_replica_costs_no_reads_and_is_readmitted_after_heal(cluster: Arc<Cluster>) {
    // The defaults (statement timeout 10 s, connect timeout 5 s): what ends the wait on a
    // cut-off replica is its ejection, not a timeout.
    let config = cluster.load_config(READERS);
    let timeouts = Timeouts::of(&config);
    let probe_max_interval = config.health.probe_max_interval;
    let db = ReplicaSet::connect(config).await.unwrap();
    let cut = NodeId::Replica(1);
    let cut_port = replica_ports(&cluster)[1];
    let address = ("127.0.0.1", cluster.node(cut).port());
    let mut before = TcpStream::connect(address).unwrap();

    let load = reading_for(&db, Duration::from_secs(6));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let heal = Heal(cluster.clone(), cut);
    let cut_at = Instant::now();
    on_cluster(&cluster, move |c| c.partition(cut))
        .await
        .unwrap();
    let ejected_after = ejected_within(&db, 1, cut_at, timeouts.connect).await;

    // What a client sees of the partitioned node: a connection from before the partition
    // hangs (nothing answers, nothing closes it), and a new one's connect times out (it
    // is not refused).
    let wait = Duration::from_millis(1500);
    assert!(
        hung(ask(&mut before, wait)),
        "a connection from before the partition hangs"
    );
    let after = TcpStream::connect_timeout(&address.into_addr(), wait);
    assert_eq!(
        after.map(drop).map_err(|e| e.kind()),
        Err(IoErrorKind::TimedOut),
        "a new connection times out"
    );

    let load = load.await.unwrap();
    load.assert_no_failed_reads();
    // A read waiting on the cut replica goes elsewhere when it is ejected: none waits
    // out its statement timeout.
    load.assert_ended_by_ejection(ejected_after, timeouts.statement);
    assert!(
        load.by_port.get(&cut_port).copied().unwrap_or(0) > 0,
        "the replica served reads before the partition: {load:?}"
    );
    assert_ejected(&db, 1);

    drop(heal);
    let healed_at = Instant::now();
    until_health(&db, 1, Health::Up).await;
    let readmitted_after = healed_at.elapsed();
    assert!(
        readmitted_after <= probe_max_interval + SLACK,
        "re-admitted {readmitted_after:?} after the heal, past the probe interval \
         {probe_max_interval:?} and slack {SLACK:?}"
    );
    let after_heal = spread(&db, 40).await;
    assert!(
        after_heal.get(&cut_port).copied().unwrap_or(0) > 0,
        "the healed replica serves reads again: {after_heal:?}"
    );
    assert_eq!(
        ask(&mut TcpStream::connect(address).unwrap(), wait),
        Ok(b'N')
    );
    eprintln!(
        "replica partition: ejected {ejected_after:?} after the cut, re-admitted \
         {readmitted_after:?} after the heal; {} reads, slowest {:?}",
        load.ok, load.slowest
    );
    on_cluster(&cluster, |c| c.wait_for_replication())
        .await
        .unwrap();
}

/// The writer cut off the network under load: found within two seconds by its watchdog,
/// calls to it then fail at once with a clear error, reads go on on the replicas, and
/// writes resume by themselves after the heal, with none lost or duplicated. Before the
/// watchdog, every write waited out its 10 s statement timeout.
async fn a_partitioned_writer_fails_its_calls_at_once_and_they_resume_after_heal(
    cluster: Arc<Cluster>,
) {
    let db = ReplicaSet::connect(cluster.load_config(READERS))
        .await
        .unwrap();
    let writer_address = format!("127.0.0.1:{}", cluster.node(NodeId::Primary).port());
    let figures = writer_cut::writer_stops_answering(
        &cluster,
        db,
        |c| c.partition(NodeId::Primary),
        |c| c.heal(NodeId::Primary),
    )
    .await;
    eprintln!("writer partition ({writer_address}): {figures:?}");
}

/// The lines `docker ARGS` prints, or an error saying what failed.
fn docker_lines(args: &[&str]) -> Result<Vec<String>, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("docker {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// No container, network or volume with the testkit's label is left, nor a partition's
/// rule.
fn nothing_labelled_remains() -> Result<(), String> {
    let filter = format!("label={DOCKER_LABEL}");
    for (kind, name) in [
        (&["ps", "-a"][..], "{{.Names}}"),
        (&["network", "ls"], "{{.Name}}"),
        (&["volume", "ls"], "{{.Name}}"),
    ] {
        let mut args = kind.to_vec();
        args.extend(["--filter", &filter, "--format", name]);
        let left = docker_lines(&args)?;
        if !left.is_empty() {
            return Err(format!("docker {} still lists {left:?}", kind.join(" ")));
        }
    }
    // Nor a partition's DROP rule on this machine (they carry the label in a comment).
    let out = Command::new("iptables")
        .args(["-w", "-S", "INPUT"])
        .output()
        .map_err(|e| format!("iptables -S INPUT: {e}"))?;
    let rules = String::from_utf8_lossy(&out.stdout);
    match rules.lines().find(|rule| rule.contains(DOCKER_LABEL)) {
        Some(rule) => Err(format!("iptables still has {rule}")),
        None => Ok(()),
    }
}

/// `(host, port)` as a socket address.
trait IntoAddr {
    fn into_addr(self) -> std::net::SocketAddr;
}

impl IntoAddr for (&str, u16) {
    fn into_addr(self) -> std::net::SocketAddr {
        format!("{}:{}", self.0, self.1).parse().unwrap()
    }
}
