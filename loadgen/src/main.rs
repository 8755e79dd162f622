//! `loadgen`: a load generator for diesel-replica. It runs reads and writes
//! through a `#[derive(ReplicatedRepo)]` repo against your cluster or a
//! throwaway local one, and prints where each query ran, throughput, read
//! latency and errors as one line of JSON. With `--through URL` it runs the
//! same queries without the library, on a plain pool to one endpoint (a
//! read/write-splitting proxy's); with `--hold-cluster` it only holds a
//! throwaway cluster up for other processes.
//!
//! Flags, configuration, output and examples: see `README.md` in this
//! crate's directory (`loadgen/README.md`).
//!
//! ```text
//! cargo run --release -p loadgen -- --local 2 --duration 5
//! ```

mod args;
mod clock;
mod error;
mod failover;
mod faults;
mod hold;
mod local;
mod nodes;
mod own_writes;
mod plan;
mod repo;
mod report;
mod setup;
mod stats;
mod task;
mod through;
mod timeline;
mod token_reads;
mod workers;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use diesel_replica::Config;
use diesel_replica_testkit::Cluster;
use serde_json::Value;
use tracing_subscriber::EnvFilter;

use crate::args::Args;
use crate::error::Fatal;
use crate::failover::{FailoverClock, fail_over};
use crate::faults::{FaultClock, inject_faults, watch_health};
use crate::nodes::{NodeTally, watch_nodes};
use crate::workers::Clocks;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(message) = args.check() {
        Args::command()
            .bin_name("loadgen")
            .error(ErrorKind::ArgumentConflict, message)
            .exit();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if let Some(env_file) = &args.hold_cluster {
        // clap made --hold-cluster require --local.
        return match hold::hold(args.local.unwrap_or_default(), env_file) {
            Ok(()) => ExitCode::SUCCESS,
            Err(fatal) => fail(fatal),
        };
    }
    // Owned here, outside `run`, so that the local cluster outlives the
    // runtime and its pools: the servers stop after every connection is gone.
    // The fault injection shares it, and is over before `run` returns.
    let mut cluster = None;
    match run(&args, &mut cluster) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(fatal) => fail(fatal),
    }
}

/// Tells why the run ended and exits with its status.
fn fail(fatal: Fatal) -> ExitCode {
    eprintln!("loadgen: {}", fatal.message);
    ExitCode::from(fatal.code)
}

/// The multi-thread runtime the load runs on.
fn runtime() -> Result<tokio::runtime::Runtime, Fatal> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Fatal::new(format!("cannot start the tokio runtime: {e}")))
}

fn run(args: &Args, cluster: &mut Option<Arc<Cluster>>) -> Result<Value, Fatal> {
    if let Some(url) = &args.through {
        return runtime()?.block_on(through::load(args, url));
    }
    let concurrency = args.concurrency as usize;
    let config = match args.local {
        Some(replicas) => {
            eprintln!(
                "loadgen: --local {replicas}: starting a throwaway local cluster (primary + \
                 {replicas} streaming replicas) with diesel_replica_testkit; it is removed on exit"
            );
            let local = cluster
                .insert(Arc::new(Cluster::start(replicas).map_err(|e| {
                    Fatal::new(format!("cannot start the local cluster: {e}"))
                })?));
            // Both pools hold exactly `--concurrency` connections, opened
            // before the clock starts.
            if args.fail_over_at.is_some() {
                setup::discovery_config(local, concurrency)?
            } else {
                local.load_config(concurrency)
            }
        }
        None => setup::env_config(concurrency)?,
    };
    runtime()?.block_on(load(args, config, cluster.clone()))
}

/// Connects, prepares the table, runs the workers (and the faults, with
/// the local `cluster`) and builds the summary.
async fn load(args: &Args, config: Config, cluster: Option<Arc<Cluster>>) -> Result<Value, Fatal> {
    let (db, replicas) = setup::connect(config).await?;
    let (ids, tenants) = setup::prepare(&db, args).await?;
    if args.read_your_writes {
        own_writes::check_rows(ids, args.concurrency)?;
    }

    if args.read_your_writes {
        eprintln!(
            "loadgen: running {}s, concurrency {}, read-your-writes: each operation writes a \
             row and reads it back with the write's token",
            args.duration, args.concurrency
        );
    } else {
        eprintln!(
            "loadgen: running {}s, concurrency {}, read ratio {}",
            args.duration,
            args.concurrency,
            args.read_ratio()
        );
    }
    // `check` made sure that faults and the failover come with a local
    // cluster of at least one replica, and not together.
    // (`<[_]>::first` spelled out: diesel-async's `RunQueryDsl::first`
    // would otherwise be picked.)
    let failover = args.failover().zip(cluster.clone());
    let faults = args.faults().zip(cluster).zip(<[String]>::first(&replicas));
    let before = db.replica_set().status();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.duration);
    let clock = match &faults {
        Some(((plan, _), address)) => Some(Arc::new(
            FaultClock::new(start, address, plan.fault).map_err(Fatal::new)?,
        )),
        None => None,
    };
    let failover_clock = failover
        .as_ref()
        .map(|(_, cluster)| Arc::new(FailoverClock::new(start, cluster)));
    let clocks = Clocks {
        faults: clock.clone(),
        failover: failover_clock.clone(),
    };
    let running = workers::spawn(&db, args, ids, tenants, start, deadline, clocks);
    let watch_nodes = tokio::spawn(watch_nodes(
        db.clone(),
        NodeTally::new(&before),
        failover_clock.clone(),
        deadline,
    ));
    let failing_over = match (failover, &failover_clock) {
        (Some((plan, cluster)), Some(clock)) => {
            Some(tokio::spawn(fail_over(cluster, plan, clock.clone())))
        }
        _ => None,
    };
    let injected = match (faults, &clock) {
        (Some(((plan, cluster), _)), Some(clock)) => Some((
            tokio::spawn(inject_faults(cluster, plan, clock.clone())),
            tokio::spawn(watch_health(db.clone(), clock.clone(), deadline)),
        )),
        _ => None,
    };

    let (totals, elapsed) = running.join().await?;
    if let Some((inject, watch)) = injected {
        // `check` put the faults inside the run: both end at the deadline,
        // or (a late restart) as soon as `pg_ctl start` returns.
        inject
            .await
            .map_err(|e| Fatal::new(format!("the fault injection task failed: {e}")))?
            .map_err(Fatal::new)?;
        watch
            .await
            .map_err(|e| Fatal::new(format!("the health watch task failed: {e}")))?;
    }
    if let Some(failing_over) = failing_over {
        // `check` put the kill and the promotion inside the run.
        failing_over
            .await
            .map_err(|e| Fatal::new(format!("the failover task failed: {e}")))?
            .map_err(Fatal::new)?;
    }
    let mut tally = watch_nodes
        .await
        .map_err(|e| Fatal::new(format!("the node watch task failed: {e}")))?;
    // What the nodes counted after the deadline, while the last operations
    // finished.
    tally.observe(&db.replica_set().status());
    Ok(report::summarize(
        &totals,
        elapsed,
        args.tenants,
        &tally,
        clock.as_deref(),
        failover_clock.as_deref(),
    ))
}
