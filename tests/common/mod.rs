//! One throwaway replication cluster per test binary, shared by its tests.
//!
//! Test binaries that use it set `harness = false` and run their tests
//! through libtest-mimic, so the cluster is started once before the tests
//! and stopped and removed after them (a `static` would never be dropped).
#![allow(dead_code, reason = "each test binary uses a part of this module")]

pub(crate) mod aurora;
pub(crate) mod load;
pub(crate) mod writer_cut;

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use diesel_replica_testkit::{Backend, Cluster};
use libtest_mimic::{Arguments, Completion, Failed, Trial};

/// The future of one test.
pub(crate) type TestFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A test: its name and an async function of the shared cluster.
pub(crate) type Test = (&'static str, fn(Arc<Cluster>) -> TestFuture);

/// Starts a cluster with `replicas` replicas, runs `setup` on it, then the
/// tests, then removes the cluster.
pub(crate) fn run(replicas: usize, setup: &str, tests: Vec<Test>) -> ExitCode {
    run_with(
        Arguments::from_args(),
        Cluster::start,
        replicas,
        setup,
        tests,
    )
}

/// As [`run`], on a cluster that accepts TLS connections only.
pub(crate) fn run_tls(replicas: usize, setup: &str, tests: Vec<Test>) -> ExitCode {
    run_with(
        Arguments::from_args(),
        Cluster::start_tls,
        replicas,
        setup,
        tests,
    )
}

/// As [`run`], one test at a time: for tests that stop and start nodes.
pub(crate) fn run_one_at_a_time(replicas: usize, setup: &str, tests: Vec<Test>) -> ExitCode {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    run_with(args, Cluster::start, replicas, setup, tests)
}

fn run_with(
    args: Arguments,
    start: fn(usize) -> Result<Cluster, diesel_replica_testkit::Error>,
    replicas: usize,
    setup: &str,
    tests: Vec<Test>,
) -> ExitCode {
    let cluster = (!args.list).then(|| start_cluster(start, replicas, setup));
    let trials = tests
        .into_iter()
        .map(|(name, test)| {
            let cluster = cluster.clone();
            Trial::test(name, move || {
                block_on(test(cluster.expect("the cluster runs unless listing")));
                Ok(())
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    drop(cluster);
    conclusion.exit_code()
}

/// A check that runs after the cluster is gone: its name and the check.
pub(crate) type AfterCheck = (&'static str, fn() -> Result<(), String>);

/// As [`run_one_at_a_time`], on the Docker backend only (for tests that need what only
/// Docker can do, such as a partition). With any other backend no cluster starts and
/// every test is reported as ignored, with the reason. After the tests, the cluster is
/// dropped and each of `after` runs, as one more test each.
pub(crate) fn run_on_docker_one_at_a_time(
    replicas: usize,
    setup: &str,
    tests: Vec<Test>,
    after: Vec<AfterCheck>,
) -> ExitCode {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let skip = match Backend::select() {
        Ok(Backend::Docker) => None,
        Ok(backend) => Some(format!(
            "needs the Docker backend (DIESEL_REPLICA_TEST_BACKEND=docker); this run's is \
             {backend}"
        )),
        Err(e) => panic!("cannot choose a backend for the test cluster: {e}"),
    };
    let cluster =
        (!args.list && skip.is_none()).then(|| start_cluster(Cluster::start, replicas, setup));
    let shared = Arc::new(Mutex::new(cluster));
    let mut trials: Vec<Trial> = tests
        .into_iter()
        .map(|(name, test)| {
            let (shared, skip) = (shared.clone(), skip.clone());
            Trial::ignorable_test(name, move || {
                if let Some(reason) = skip {
                    return Ok(Completion::ignored_with(reason));
                }
                let cluster = shared.lock().unwrap().clone();
                let cluster = cluster.ok_or("the cluster is gone")?;
                block_on(test(cluster));
                Ok(Completion::Completed)
            })
        })
        .collect();
    trials.extend(after.into_iter().map(|(name, check)| {
        let (shared, skip) = (shared.clone(), skip.clone());
        Trial::ignorable_test(name, move || {
            if let Some(reason) = skip {
                return Ok(Completion::ignored_with(reason));
            }
            if let Some(cluster) = shared.lock().unwrap().take() {
                Arc::try_unwrap(cluster)
                    .map_err(|_| Failed::from("a test still holds the cluster"))?;
            }
            check()
                .map(|()| Completion::Completed)
                .map_err(Failed::from)
        })
    }));
    let conclusion = libtest_mimic::run(&args, trials);
    drop(shared);
    conclusion.exit_code()
}

/// Starts the shared cluster, runs `setup` on it and waits for the replicas.
fn start_cluster(
    start: fn(usize) -> Result<Cluster, diesel_replica_testkit::Error>,
    replicas: usize,
    setup: &str,
) -> Arc<Cluster> {
    let cluster = start(replicas).unwrap_or_else(|e| panic!("cannot start the test cluster: {e}"));
    cluster
        .psql(diesel_replica_testkit::NodeId::Primary, setup)
        .unwrap_or_else(|e| panic!("setup failed: {e}"));
    cluster
        .wait_for_replication()
        .unwrap_or_else(|e| panic!("replicas did not catch up: {e}"));
    Arc::new(cluster)
}

/// Runs a test's future on a fresh two-thread runtime.
fn block_on(test: TestFuture) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(test);
}

/// Wraps an async test function for [`run`].
#[macro_export]
macro_rules! tests {
    ($($name:ident),* $(,)?) => {
        vec![$((
            stringify!($name),
            (|c| -> common::TestFuture { Box::pin($name(c)) }) as fn(_) -> _,
        )),*]
    };
}

/// The replicas' ports, in order.
pub(crate) fn replica_ports(cluster: &Cluster) -> Vec<i32> {
    cluster
        .replicas()
        .iter()
        .map(|n| i32::from(n.port()))
        .collect()
}

/// A loopback port where nothing listens.
pub(crate) fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// An error's message and those of its sources, as a reporter prints them.
pub(crate) fn report(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(next) = source {
        text = format!("{text}: {next}");
        source = next.source();
    }
    text
}

/// Collects log lines, for tests that check what is (and is not) logged.
#[derive(Clone, Default)]
pub(crate) struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    /// A subscriber writing every event at `level` and above here.
    pub(crate) fn subscriber(
        &self,
        level: tracing_subscriber::filter::LevelFilter,
    ) -> impl tracing_subscriber::util::SubscriberInitExt + use<> {
        let writer = self.clone();
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(level)
            .finish()
    }

    /// What was logged so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
