//! What the fault and failover flags ask for, as [`Args`](crate::args::Args)
//! hands it to the tasks that carry it out.

use std::time::Duration;

/// What `--fault` makes of `--kill-replica-at` and `--restart-replica-at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Fault {
    /// An immediate shutdown, then a start.
    Kill,
    /// Cut off the network (no packets in or out), then reconnected.
    Partition,
}

impl Fault {
    /// Its name in the JSON.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Kill => "kill",
            Self::Partition => "partition",
        }
    }
}

/// What `--kill-replica-at` and `--restart-replica-at` ask for.
#[derive(Clone, Copy)]
pub(crate) struct FaultPlan {
    pub(crate) fault: Fault,
    pub(crate) kill_at: Duration,
    pub(crate) restart_at: Option<Duration>,
}

/// What `--fail-over-at` and `--promote-after-ms` ask for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FailoverPlan {
    /// When the primary is killed, into the run.
    pub(crate) kill_at: Duration,
    /// From the kill being issued to the promotion being issued (at least
    /// until the kill returns).
    pub(crate) promote_after: Duration,
}
