//! The Docker backend's own behaviour: labelled containers on the cluster's network, faults
//! (kill, pause, partition), and clean-up after a drop, after a panic, and of what a dead
//! process left. These run when the backend is Docker (`DIESEL_REPLICA_TEST_BACKEND=docker`,
//! or no local binaries); elsewhere they are reported as ignored, with the reason, and
//! only the local backend's pause and its refusal to partition are checked.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, ExitCode};
use std::thread;
use std::time::{Duration, Instant};

use diesel_replica_testkit::{
    Backend, Cluster, DOCKER_LABEL, DOCKER_OWNER_LABEL, Error, NodeId, Rng,
};
use libtest_mimic::{Arguments, Completion, Trial};

const R0: NodeId = NodeId::Replica(0);

fn main() -> ExitCode {
    let backend = Backend::select().unwrap_or_else(|e| panic!("no backend: {e}"));
    let docker: [(&str, fn()); 5] = [
        (
            "a_cluster_is_labelled_containers_on_its_own_network",
            a_cluster_is_labelled_containers_on_its_own_network,
        ),
        (
            "kill_pause_and_restart_act_on_the_container",
            kill_pause_and_restart_act_on_the_container,
        ),
        (
            "a_partition_stops_every_packet_until_healed",
            a_partition_stops_every_packet_until_healed,
        ),
        (
            "a_panicking_test_leaves_nothing_behind",
            a_panicking_test_leaves_nothing_behind,
        ),
        (
            "what_a_dead_process_left_goes_at_the_next_start",
            what_a_dead_process_left_goes_at_the_next_start,
        ),
    ];
    let mut trials: Vec<Trial> = docker
        .into_iter()
        .map(|(name, test)| {
            Trial::ignorable_test(name, move || {
                if backend != Backend::Docker {
                    return Ok(Completion::ignored_with(format!(
                        "needs the Docker backend (DIESEL_REPLICA_TEST_BACKEND=docker); \
                         this run's is {backend}"
                    )));
                }
                test();
                Ok(Completion::Completed)
            })
        })
        .collect();
    trials.push(Trial::ignorable_test(
        "the_local_backend_pauses_and_refuses_to_partition",
        move || {
            if backend != Backend::Local {
                return Ok(Completion::ignored_with("checks the local backend"));
            }
            the_local_backend_pauses_and_refuses_to_partition();
            Ok(Completion::Completed)
        },
    ));
    libtest_mimic::run(&Arguments::from_args(), trials).exit_code()
}

/// The lines `docker ARGS` prints; panics if it fails.
fn docker(args: &[&str]) -> Vec<String> {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The containers (`ps -a`), volumes (`volume ls`) or networks (`network ls`) labelled
/// with the cluster id `id`.
fn labelled(kind: &[&str], id: &str) -> Vec<String> {
    let mut args = kind.to_vec();
    let filter = format!("label={DOCKER_LABEL}={id}");
    args.extend(["--filter", &filter, "--format", "{{.Name}}"]);
    if kind[0] == "ps" {
        args.pop();
        args.push("{{.Names}}");
    }
    docker(&args)
}

fn assert_nothing_left(id: &str) {
    for kind in [&["ps", "-a"][..], &["volume", "ls"], &["network", "ls"]] {
        assert_eq!(labelled(kind, id), Vec::<String>::new(), "{kind:?}");
    }
}

fn a_cluster_is_labelled_containers_on_its_own_network() {
    let started = Instant::now();
    let cluster = Cluster::start(2).unwrap();
    eprintln!("Cluster::start(2) on Docker took {:?}", started.elapsed());
    assert_eq!(cluster.backend(), Backend::Docker);
    let id = cluster.docker_id().unwrap().to_owned();
    let network = format!("drt-{id}");
    for node in [cluster.primary()].into_iter().chain(cluster.replicas()) {
        let name = format!("{network}-{}", node.name());
        let facts = docker(&[
            "inspect",
            "-f",
            &format!(
                "{{{{index .Config.Labels \"{DOCKER_LABEL}\"}}}} \
                 {{{{index .Config.Labels \"{DOCKER_OWNER_LABEL}\"}}}} \
                 {{{{.Config.User}}}} {{{{range $n, $_ := .NetworkSettings.Networks}}}}{{{{$n}}}}{{{{end}}}}"
            ),
            &name,
        ]);
        let facts: Vec<&str> = facts[0].split(' ').collect();
        assert_eq!(facts[0], id, "{name}");
        assert!(
            facts[1].contains(&format!("/{}/", std::process::id())),
            "{name}: owner {}",
            facts[1]
        );
        assert_eq!(facts[2..], ["postgres", &network], "{name}");
        let port = docker(&["port", &name]);
        assert_eq!(
            port,
            [format!("{0}/tcp -> 127.0.0.1:{0}", node.port())],
            "{name}"
        );
    }
    assert_eq!(
        labelled(&["network", "ls"], &id),
        std::slice::from_ref(&network)
    );
    let mut volumes = labelled(&["volume", "ls"], &id);
    volumes.sort();
    assert_eq!(
        volumes,
        ["primary", "replica-0", "replica-1"].map(|node| format!("{network}-{node}"))
    );
    // The replicas stream from the primary over the network, by name.
    let streaming = cluster
        .psql(
            NodeId::Primary,
            "SELECT application_name FROM pg_stat_replication ORDER BY 1",
        )
        .unwrap();
    assert_eq!(streaming, "replica-0\nreplica-1");
    drop(cluster);
    assert_nothing_left(&id);
}

fn kill_pause_and_restart_act_on_the_container() {
    let cluster = Cluster::start(1).unwrap();
    cluster
        .psql(
            NodeId::Primary,
            "CREATE TABLE t(x int); INSERT INTO t VALUES (1)",
        )
        .unwrap();
    cluster.wait_for_replication().unwrap();

    // The postmaster's PID, as this machine sees it: its command line is postgres.
    let pid = cluster.postmaster_pid(R0).unwrap();
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(cmdline.starts_with("postgres\0-D\0"), "{cmdline:?}");

    // Paused, the node holds its port and answers nothing.
    cluster.pause(R0).unwrap();
    let mut stream = TcpStream::connect(addr(&cluster, R0)).unwrap();
    assert!(hung(ask(&mut stream, Duration::from_millis(500))));
    cluster.resume(R0).unwrap();
    assert_eq!(ask(&mut stream, Duration::from_secs(5)), Ok(b'N'));

    // Killed, it is gone (port refused) until started again, then catches up.
    cluster.kill(R0).unwrap();
    assert!(cluster.postmaster_pid(R0).is_err());
    assert!(cluster.psql(R0, "SELECT 1").is_err());
    assert!(TcpStream::connect(addr(&cluster, R0)).is_err());
    cluster
        .psql(NodeId::Primary, "INSERT INTO t VALUES (2)")
        .unwrap();
    cluster.start_node(R0).unwrap();
    cluster.wait_for_replication().unwrap();
    assert_eq!(cluster.psql(R0, "SELECT count(*) FROM t").unwrap(), "2");
    assert_ne!(cluster.postmaster_pid(R0).unwrap(), pid);

    // Stopped (fast) and restarted on the same port.
    cluster.restart(NodeId::Primary).unwrap();
    cluster
        .psql(NodeId::Primary, "INSERT INTO t VALUES (3)")
        .unwrap();
    cluster.wait_for_replication().unwrap();
    assert_eq!(cluster.psql(R0, "SELECT count(*) FROM t").unwrap(), "3");
    let out = cluster
        .psql_tcp(&cluster.writer_url(), cluster.password(), "SELECT 42")
        .unwrap();
    assert_eq!(out, "42");
}

fn a_partition_stops_every_packet_until_healed() {
    let cluster = Cluster::start(1).unwrap();
    cluster
        .psql(
            NodeId::Primary,
            "CREATE TABLE t(x int); INSERT INTO t VALUES (1)",
        )
        .unwrap();
    cluster.wait_for_replication().unwrap();
    let mut before = TcpStream::connect(addr(&cluster, R0)).unwrap();
    assert_eq!(ask(&mut before, Duration::from_secs(5)), Ok(b'N'));
    let mut before = TcpStream::connect(addr(&cluster, R0)).unwrap();

    cluster.partition(R0).unwrap();
    cluster.partition(R0).unwrap(); // twice is once
    let wait = Duration::from_millis(1000);
    // Clients: the open connection hangs, and a new one's connect times out; nothing is
    // refused or closed.
    assert!(hung(ask(&mut before, wait)));
    let started = Instant::now();
    let new = TcpStream::connect_timeout(&addr(&cluster, R0), wait);
    assert_eq!(
        new.map(drop).map_err(|e| e.kind()),
        Err(ErrorKind::TimedOut)
    );
    assert!(started.elapsed() >= wait);
    // Replication: the replica no longer hears the primary.
    cluster
        .psql(NodeId::Primary, "INSERT INTO t VALUES (2)")
        .unwrap();
    thread::sleep(Duration::from_millis(500));
    assert_eq!(cluster.psql(R0, "SELECT count(*) FROM t").unwrap(), "1");

    cluster.heal(R0).unwrap();
    cluster.heal(R0).unwrap(); // healing a healed node does nothing
    cluster.wait_for_replication().unwrap();
    assert_eq!(cluster.psql(R0, "SELECT count(*) FROM t").unwrap(), "2");
    // The hung connection goes on where it stopped: the request sent during the
    // partition is answered now.
    let mut answer = [0u8; 1];
    before
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(before.read(&mut answer).unwrap(), 1);
    assert_eq!(answer[0], b'N');
    let mut fresh = TcpStream::connect(addr(&cluster, R0)).unwrap();
    assert_eq!(ask(&mut fresh, Duration::from_secs(5)), Ok(b'N'));
}

fn a_panicking_test_leaves_nothing_behind() {
    let made = thread::spawn(|| {
        let cluster = Cluster::start(1).unwrap();
        cluster.partition(R0).unwrap();
        cluster.pause(NodeId::Primary).unwrap();
        panic!("cluster {}", cluster.docker_id().unwrap());
    })
    .join()
    .unwrap_err();
    let message = made.downcast_ref::<String>().unwrap();
    let id = message.strip_prefix("cluster ").unwrap();
    assert_nothing_left(id);
    assert!(!input_rules().contains(id), "{}", input_rules());
}

/// This machine's `INPUT` rules, as `iptables -S` prints them.
fn input_rules() -> String {
    let out = Command::new("iptables")
        .args(["-w", "-S", "INPUT"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn what_a_dead_process_left_goes_at_the_next_start() {
    // Our own PID with another start time: a process that had this PID before us.
    let dead = format!(
        "{}/{}/1",
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim(),
        std::process::id()
    );
    let mut rng = Rng::new(u64::from(std::process::id()));
    let id = format!("leftover-{:x}", rng.next_u64() & 0xffff_ffff);
    let image = std::env::var(diesel_replica_testkit::IMAGE_VAR)
        .unwrap_or_else(|_| diesel_replica_testkit::DEFAULT_IMAGE.to_owned());
    let labels = [
        "--label".to_owned(),
        format!("{DOCKER_LABEL}={id}"),
        "--label".to_owned(),
        format!("{DOCKER_OWNER_LABEL}={dead}"),
    ];
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    let network = format!("drt-{id}");
    docker(&[&["network", "create"][..], &labels, &[&network]].concat());
    docker(
        &[
            &[
                "create",
                "--name",
                &format!("{network}-primary"),
                "--network",
                &network,
            ][..],
            &labels,
            &["--entrypoint", "sleep", &image, "1000"],
        ]
        .concat(),
    );
    docker(
        &[
            &["volume", "create"][..],
            &labels,
            &[&format!("{network}-primary")],
        ]
        .concat(),
    );
    assert_eq!(labelled(&["ps", "-a"], &id).len(), 1);
    assert_eq!(labelled(&["volume", "ls"], &id).len(), 1);
    // A partition's rule on this machine, for a port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let comment = format!("diesel-replica-testkit {id} {dead}");
    let rule = [
        "INPUT",
        "-i",
        "lo",
        "-p",
        "tcp",
        "--dport",
        &port,
        "-m",
        "comment",
        "--comment",
        &comment,
        "-j",
        "DROP",
    ];
    let status = Command::new("iptables")
        .args(["-w", "-I"])
        .args(rule)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(input_rules().contains(&id));

    let cluster = Cluster::start(0).unwrap();
    assert_nothing_left(&id);
    assert!(!input_rules().contains(&id), "{}", input_rules());
    // A live owner's cluster is left alone.
    let live = cluster.docker_id().unwrap().to_owned();
    let other = Cluster::start(0).unwrap();
    assert_eq!(labelled(&["ps", "-a"], &live).len(), 1);
    drop((cluster, other));
    assert_nothing_left(&live);
}

fn the_local_backend_pauses_and_refuses_to_partition() {
    let cluster = Cluster::start(0).unwrap();
    // Paused (SIGSTOP), the server holds its port and answers nothing until resumed.
    let mut stream = TcpStream::connect(addr(&cluster, NodeId::Primary)).unwrap();
    cluster.pause(NodeId::Primary).unwrap();
    assert!(hung(ask(&mut stream, Duration::from_millis(500))));
    cluster.resume(NodeId::Primary).unwrap();
    assert_eq!(ask(&mut stream, Duration::from_secs(5)), Ok(b'N'));

    let err = cluster.partition(NodeId::Primary).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with("cannot partition primary on the local backend: ")
            && text.contains("DIESEL_REPLICA_TEST_BACKEND=docker"),
        "{text}"
    );
    assert!(cluster.heal(NodeId::Primary).is_err());
    assert!(cluster.docker_id().is_none());
}

fn addr(cluster: &Cluster, id: NodeId) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], cluster.node(id).port()))
}

/// PostgreSQL's SSLRequest: the smallest message a server answers (with `N` or `S`).
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// What an SSLRequest on `stream` got within `wait`: the answer's byte, or the kind of
/// error (`UnexpectedEof` for a closed connection).
fn ask(stream: &mut TcpStream, wait: Duration) -> Result<u8, ErrorKind> {
    stream.set_read_timeout(Some(wait)).unwrap();
    stream.write_all(&SSL_REQUEST).map_err(|e| e.kind())?;
    let mut answer = [0u8; 1];
    match stream.read(&mut answer) {
        Ok(0) => Err(ErrorKind::UnexpectedEof),
        Ok(_) => Ok(answer[0]),
        Err(e) => Err(e.kind()),
    }
}

/// Nothing came back in time: no answer, and no EOF or reset either.
fn hung(result: Result<u8, ErrorKind>) -> bool {
    matches!(result, Err(ErrorKind::WouldBlock | ErrorKind::TimedOut))
}
