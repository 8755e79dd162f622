//! The command line: flags, their defaults and the checks between them.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::plan::{FailoverPlan, Fault, FaultPlan};

/// Load generator for diesel-replica: runs reads and writes through a
/// ReplicaSet and reports where each ran, throughput and read latency.
///
/// Without --local, the cluster comes from DATABASE_URL (or DATABASE_SECRET)
/// and DATABASE_REPLICA_URLS / DATABASE_REPLICA_HOSTS. Progress goes to
/// stderr, one JSON summary line to stdout.
#[derive(Parser, Debug)]
#[command(version)]
pub(crate) struct Args {
    /// How long to run, in seconds.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub(crate) duration: u64,

    /// How many tasks issue queries at once.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 16,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub(crate) concurrency: u32,

    /// Fraction of operations that are reads, from 0 (only writes) to 1 (only
    /// reads) [default: 0.9].
    #[arg(long, value_name = "R", value_parser = parse_read_ratio)]
    pub(crate) read_ratio: Option<f64>,

    /// Each operation writes a row of its task's own in a read-your-writes
    /// session, then reads it back, given the write's token (carried as a
    /// string), through a read-only repo method; counts "stale_reads" and
    /// adds a "read_your_writes" object to the JSON. Not with --read-ratio,
    /// --tenants or --fail-over-at.
    #[arg(long)]
    pub(crate) read_your_writes: bool,

    /// Ignore the environment and start a throwaway local cluster with N
    /// streaming replicas (needs the PostgreSQL server binaries); it is
    /// removed on exit.
    #[arg(long, value_name = "N")]
    pub(crate) local: Option<usize>,

    /// With --local: kill replica 0 (immediate shutdown) this many seconds
    /// into the run (decimals allowed).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub(crate) kill_replica_at: Option<Duration>,

    /// With --local and --kill-replica-at: start replica 0 again this many
    /// seconds into the run (later than the kill).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub(crate) restart_replica_at: Option<Duration>,

    /// What --kill-replica-at and --restart-replica-at do to replica 0:
    /// `kill` (immediate shutdown, then start it again) or `partition` (cut
    /// it off the network, no packets in or out, then reconnect it; needs
    /// the testkit's Docker backend, DIESEL_REPLICA_TEST_BACKEND=docker).
    #[arg(long, value_enum, default_value_t = Fault::Kill, requires = "kill_replica_at")]
    pub(crate) fault: Fault,

    /// With --local: kill the primary (immediate shutdown) this many seconds
    /// into the run and promote replica 0, which discovery (candidate hosts)
    /// then finds as the writer; adds a "failover" object to the JSON.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub(crate) fail_over_at: Option<Duration>,

    /// With --fail-over-at: promote replica 0 this many milliseconds after
    /// the kill of the primary was issued, at the earliest when the kill
    /// returns (default: as soon as the kill returns).
    #[arg(long, value_name = "MS")]
    pub(crate) promote_after_ms: Option<u64>,

    /// Add to the JSON a "timeline" of 100 ms buckets: reads, writes,
    /// errors, and reads per node.
    #[arg(long)]
    pub(crate) timeline: bool,

    /// Provision N tenants (schemas tenant_0 .. tenant_{N-1}) and run every
    /// operation scoped to a random one of them; 0: no tenants.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) tenants: u32,

    /// Run the same reads and writes without the library: bare autocommit
    /// queries on a plain diesel-async pool (Fast recycling, --concurrency
    /// connections) to this one endpoint, as an application behind a
    /// read/write-splitting proxy (such as pgpool-II) would; the URL is the
    /// proxy's. Ignores DATABASE_*. Not with --local, the fault and failover
    /// flags, --read-your-writes or --tenants.
    #[arg(long, value_name = "URL")]
    pub(crate) through: Option<String>,

    /// With --local N: start the cluster, write its DATABASE_URL,
    /// DATABASE_REPLICA_URLS and PGPASSWORD to this file (mode 0600, for a
    /// shell's `source`), print its nodes as one JSON line, and keep it up
    /// until SIGINT or SIGTERM; runs no load. For a script that runs
    /// loadgen against it, and other clients beside it.
    #[arg(
        long,
        value_name = "ENV_FILE",
        requires = "local",
        conflicts_with_all = [
            "through", "duration", "concurrency", "read_ratio", "read_your_writes",
            "kill_replica_at", "restart_replica_at", "fail_over_at", "promote_after_ms",
            "timeline", "tenants",
        ]
    )]
    pub(crate) hold_cluster: Option<PathBuf>,
}

/// The fraction of reads without `--read-ratio`.
pub(crate) const DEFAULT_READ_RATIO: f64 = 0.9;

impl Args {
    /// The fraction of operations that are reads (`--read-ratio`, else
    /// [`DEFAULT_READ_RATIO`]); with `--read-your-writes`, which pairs each
    /// write with a read, unused.
    pub(crate) fn read_ratio(&self) -> f64 {
        self.read_ratio.unwrap_or(DEFAULT_READ_RATIO)
    }

    /// Checks what clap cannot: the fault and failover flags against each
    /// other, `--local` and `--duration`; `--read-your-writes` against the
    /// mix of operations and tenants.
    pub(crate) fn check(&self) -> Result<(), String> {
        self.check_through()?;
        self.check_read_your_writes()?;
        self.check_failover()?;
        let (kill, restart) = (self.kill_replica_at, self.restart_replica_at);
        if kill.is_none() && restart.is_none() {
            return Ok(());
        }
        match self.local {
            None => {
                return Err(
                    "--kill-replica-at and --restart-replica-at need --local N: loadgen \
                     only kills and restarts replicas of the throwaway cluster it starts itself"
                        .into(),
                );
            }
            Some(0) => {
                return Err(
                    "--kill-replica-at needs a replica to kill: use --local 1 or more".into(),
                );
            }
            Some(_) => {}
        }
        let Some(kill) = kill else {
            return Err(
                "--restart-replica-at needs --kill-replica-at: only a killed replica is restarted"
                    .into(),
            );
        };
        let run = Duration::from_secs(self.duration);
        if kill >= run {
            return Err(format!(
                "--kill-replica-at {} is not within the run (--duration {})",
                kill.as_secs_f64(),
                self.duration
            ));
        }
        match restart {
            Some(restart) if restart <= kill => Err(format!(
                "--restart-replica-at {} must be later than --kill-replica-at {}",
                restart.as_secs_f64(),
                kill.as_secs_f64()
            )),
            Some(restart) if restart >= run => Err(format!(
                "--restart-replica-at {} is not within the run (--duration {})",
                restart.as_secs_f64(),
                self.duration
            )),
            _ => Ok(()),
        }
    }

    /// Checks `--through` against the flags that need the library or a
    /// cluster of loadgen's own.
    fn check_through(&self) -> Result<(), String> {
        if self.through.is_none() {
            return Ok(());
        }
        let refused = [
            (
                self.local.map(|n| format!("--local {n}")),
                "--through runs against the proxy you name, in front of nodes loadgen did not \
                 start; start the cluster with --local N --hold-cluster FILE and put the proxy \
                 in front of it",
            ),
            (
                self.kill_replica_at
                    .or(self.restart_replica_at)
                    .map(|_| "--kill-replica-at / --restart-replica-at".to_owned()),
                "fault injection acts on the cluster of --local, and loadgen does not know \
                 the nodes behind a proxy",
            ),
            (
                self.fail_over_at
                    .map(|_| "--fail-over-at".to_owned())
                    .or(self
                        .promote_after_ms
                        .map(|_| "--promote-after-ms".to_owned())),
                "the failover acts on the cluster of --local, and loadgen does not know the \
                 nodes behind a proxy",
            ),
            (
                self.read_your_writes
                    .then(|| "--read-your-writes".to_owned()),
                "its tokens and the wait for a replica that holds a write are the library's; \
                 a plain pool has neither",
            ),
            (
                (self.tenants > 0).then(|| format!("--tenants {}", self.tenants)),
                "tenant scoping is the library's; the plain pool runs on the untenanted \
                 loadgen_items",
            ),
        ];
        match refused
            .into_iter()
            .find_map(|(flag, why)| Some((flag?, why)))
        {
            Some((flag, why)) => Err(format!("--through cannot be combined with {flag}: {why}")),
            None => Ok(()),
        }
    }

    /// Checks `--read-your-writes` against the flags that choose what each
    /// operation does.
    fn check_read_your_writes(&self) -> Result<(), String> {
        if !self.read_your_writes {
            return Ok(());
        }
        if let Some(ratio) = self.read_ratio {
            return Err(format!(
                "--read-your-writes cannot be combined with --read-ratio {ratio}: each of its \
                 operations is a write followed by a read of the row written (one read per \
                 write); drop --read-ratio"
            ));
        }
        if self.tenants > 0 {
            return Err(format!(
                "--read-your-writes cannot be combined with --tenants {}: its operations run \
                 on the untenanted loadgen_items only",
                self.tenants
            ));
        }
        if self.fail_over_at.is_some() {
            return Err(
                "--read-your-writes cannot be combined with --fail-over-at: every operation \
                 starts with a write, and while no writer is known writes fail at once, so the \
                 tasks would spin on writer_unavailable errors (millions a second) instead of \
                 measuring the failover"
                    .into(),
            );
        }
        Ok(())
    }

    /// Checks `--fail-over-at` and `--promote-after-ms` against the other
    /// flags.
    fn check_failover(&self) -> Result<(), String> {
        let Some(at) = self.fail_over_at else {
            return match self.promote_after_ms {
                Some(_) => Err("--promote-after-ms needs --fail-over-at: it delays the \
                                promotion that follows the primary's kill"
                    .into()),
                None => Ok(()),
            };
        };
        if self.kill_replica_at.is_some() || self.restart_replica_at.is_some() {
            return Err(
                "--fail-over-at cannot be combined with --kill-replica-at or \
                        --restart-replica-at: the failover promotes replica 0, which those \
                        kill and restart"
                    .into(),
            );
        }
        match self.local {
            None => {
                return Err(
                    "--fail-over-at needs --local N: loadgen only kills the primary \
                            and promotes a replica of the throwaway cluster it starts itself"
                        .into(),
                );
            }
            Some(0) => {
                return Err(
                    "--fail-over-at needs a replica to promote: use --local 1 or more".into(),
                );
            }
            Some(_) => {}
        }
        let run = Duration::from_secs(self.duration);
        if at >= run {
            return Err(format!(
                "--fail-over-at {} is not within the run (--duration {})",
                at.as_secs_f64(),
                self.duration
            ));
        }
        let promote = at + Duration::from_millis(self.promote_after_ms.unwrap_or(0));
        if promote >= run {
            return Err(format!(
                "--fail-over-at {} with --promote-after-ms {} promotes at {} s, not within \
                 the run (--duration {})",
                at.as_secs_f64(),
                self.promote_after_ms.unwrap_or(0),
                promote.as_secs_f64(),
                self.duration
            ));
        }
        Ok(())
    }

    /// The writer failover to run, if any (after [`Args::check`]).
    pub(crate) fn failover(&self) -> Option<FailoverPlan> {
        Some(FailoverPlan {
            kill_at: self.fail_over_at?,
            promote_after: Duration::from_millis(self.promote_after_ms.unwrap_or(0)),
        })
    }

    /// The faults to inject, if any (after [`Args::check`]).
    pub(crate) fn faults(&self) -> Option<FaultPlan> {
        Some(FaultPlan {
            fault: self.fault,
            kill_at: self.kill_replica_at?,
            restart_at: self.restart_replica_at,
        })
    }
}

/// A time into the run, in seconds with decimals.
pub(crate) fn parse_secs(value: &str) -> Result<Duration, String> {
    let secs: f64 = value.trim().parse().map_err(|_| {
        format!("`{value}` is not a number; expected seconds into the run, such as 3 or 2.5")
    })?;
    Duration::try_from_secs_f64(secs).map_err(|_| {
        format!("`{value}` is not a time into the run; expected seconds from 0, such as 3 or 2.5")
    })
}

pub(crate) fn parse_read_ratio(value: &str) -> Result<f64, String> {
    let ratio: f64 = value.trim().parse().map_err(|_| {
        format!("`{value}` is not a number; expected a fraction from 0 to 1, such as 0.9")
    })?;
    if (0.0..=1.0).contains(&ratio) {
        Ok(ratio)
    } else {
        Err(format!(
            "{value} is outside 0..=1; expected the fraction of operations that are reads, \
             such as 0.9 (0 = only writes, 1 = only reads)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags parsed as from the command line, then checked.
    fn checked(flags: &[&str]) -> Result<Args, String> {
        let args = Args::try_parse_from(std::iter::once("loadgen").chain(flags.iter().copied()))
            .map_err(|e| e.to_string())?;
        args.check().map(|()| args)
    }

    #[test]
    fn a_failover_within_the_run_is_accepted() {
        let args = checked(&["--local", "2", "--duration", "8", "--fail-over-at", "3"]).unwrap();
        let plan = args.failover().unwrap();
        assert_eq!(plan.kill_at, Duration::from_secs(3));
        assert_eq!(plan.promote_after, Duration::ZERO);
        assert!(args.faults().is_none());
        let args = checked(&[
            "--local",
            "1",
            "--duration",
            "8",
            "--fail-over-at",
            "2.5",
            "--promote-after-ms",
            "500",
        ])
        .unwrap();
        assert_eq!(
            args.failover().unwrap().promote_after,
            Duration::from_millis(500)
        );
    }

    #[test]
    fn a_failover_needs_a_local_cluster_with_a_replica() {
        let error = checked(&["--fail-over-at", "3"]).unwrap_err();
        assert!(error.contains("needs --local N"), "{error}");
        let error = checked(&["--local", "0", "--fail-over-at", "3"]).unwrap_err();
        assert!(error.contains("--local 1 or more"), "{error}");
    }

    #[test]
    fn a_failover_does_not_mix_with_the_replica_faults() {
        for fault in [
            &["--kill-replica-at", "2"][..],
            &["--kill-replica-at", "2", "--restart-replica-at", "4"],
        ] {
            let mut flags = vec!["--local", "2", "--fail-over-at", "3"];
            flags.extend_from_slice(fault);
            let error = checked(&flags).unwrap_err();
            assert!(error.contains("cannot be combined"), "{error}");
        }
    }

    #[test]
    fn a_failover_and_its_promotion_must_fall_within_the_run() {
        let error =
            checked(&["--local", "2", "--duration", "5", "--fail-over-at", "5"]).unwrap_err();
        assert!(error.contains("not within the run"), "{error}");
        let error = checked(&[
            "--local",
            "2",
            "--duration",
            "5",
            "--fail-over-at",
            "4",
            "--promote-after-ms",
            "1000",
        ])
        .unwrap_err();
        assert!(error.contains("promotes at 5 s"), "{error}");
    }

    #[test]
    fn read_your_writes_stands_alone_or_with_a_replica_fault() {
        let args = checked(&["--local", "2", "--read-your-writes"]).unwrap();
        assert!(args.read_your_writes);
        assert_eq!(args.read_ratio, None);
        checked(&["--local", "2", "--read-your-writes", "--timeline"]).unwrap();
        checked(&[
            "--local",
            "2",
            "--read-your-writes",
            "--kill-replica-at",
            "2",
        ])
        .unwrap();
        checked(&["--local", "2", "--read-your-writes", "--tenants", "0"]).unwrap();
        // Without it, the mix is as before.
        assert_eq!(checked(&[]).unwrap().read_ratio(), DEFAULT_READ_RATIO);
        assert_eq!(checked(&["--read-ratio", "0.5"]).unwrap().read_ratio(), 0.5);
    }

    #[test]
    fn read_your_writes_refuses_a_read_ratio_tenants_and_a_failover() {
        for ratio in ["0.9", "1", "0"] {
            let error = checked(&["--read-your-writes", "--read-ratio", ratio]).unwrap_err();
            assert!(
                error.contains("cannot be combined with --read-ratio"),
                "{error}"
            );
        }
        let error = checked(&["--local", "2", "--read-your-writes", "--tenants", "3"]).unwrap_err();
        assert!(
            error.contains("cannot be combined with --tenants 3"),
            "{error}"
        );
        let error =
            checked(&["--local", "2", "--read-your-writes", "--fail-over-at", "3"]).unwrap_err();
        assert!(
            error.contains("cannot be combined with --fail-over-at"),
            "{error}"
        );
    }

    #[test]
    fn through_takes_the_mix_concurrency_duration_and_timeline() {
        let url = "postgres://u:p@127.0.0.1:9999/postgres";
        let args = checked(&[
            "--through",
            url,
            "--duration",
            "5",
            "--concurrency",
            "32",
            "--read-ratio",
            "0.9",
            "--timeline",
        ])
        .unwrap();
        assert_eq!(args.through.as_deref(), Some(url));
        assert_eq!(args.read_ratio(), 0.9);
        assert!(args.faults().is_none() && args.failover().is_none());
    }

    #[test]
    fn through_refuses_local_faults_failover_tokens_and_tenants() {
        let url = "postgres://u:p@127.0.0.1:9999/postgres";
        for (flags, named) in [
            (&["--local", "2"][..], "--local 2"),
            (&["--local", "2", "--kill-replica-at", "1"], "--local 2"),
            (&["--kill-replica-at", "1"], "--kill-replica-at"),
            (&["--fail-over-at", "1"], "--fail-over-at"),
            (&["--promote-after-ms", "100"], "--promote-after-ms"),
            (&["--read-your-writes"], "--read-your-writes"),
            (&["--tenants", "3"], "--tenants 3"),
        ] {
            let mut all = vec!["--through", url];
            all.extend_from_slice(flags);
            let error = checked(&all).unwrap_err();
            assert!(
                error.contains(&format!("--through cannot be combined with {named}")),
                "{flags:?}: {error}"
            );
        }
        // `--tenants 0` is no tenants.
        checked(&["--through", url, "--tenants", "0"]).unwrap();
    }

    #[test]
    fn hold_cluster_needs_local_and_runs_no_load() {
        let args = checked(&["--local", "2", "--hold-cluster", "/tmp/env"]).unwrap();
        assert_eq!(args.hold_cluster, Some(PathBuf::from("/tmp/env")));
        let error = checked(&["--hold-cluster", "/tmp/env"]).unwrap_err();
        assert!(error.contains("--local"), "{error}");
        for flags in [
            &["--duration", "5"][..],
            &["--concurrency", "4"],
            &["--read-ratio", "0.5"],
            &["--timeline"],
            &["--tenants", "2"],
            &["--kill-replica-at", "1"],
            &["--through", "postgres://127.0.0.1/x"],
        ] {
            let mut all = vec!["--local", "2", "--hold-cluster", "/tmp/env"];
            all.extend_from_slice(flags);
            let error = checked(&all).unwrap_err();
            assert!(error.contains("cannot be used with"), "{flags:?}: {error}");
        }
    }

    #[test]
    fn a_promotion_delay_needs_a_failover() {
        let error = checked(&["--local", "2", "--promote-after-ms", "100"]).unwrap_err();
        assert!(error.contains("needs --fail-over-at"), "{error}");
    }
}
