//! Whether a node takes reads: its failure count, ejection after
//! `eject_after` failures in a row, and the probe that re-admits it.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::Notify;
use tracing::instrument::WithSubscriber;

use crate::config::HealthConfig;

/// Whether a node takes reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Health {
    /// It takes its share of reads.
    Up,
    /// It failed `eject_after` times in a row and takes no reads until a
    /// probe succeeds. Only replicas are ejected.
    Ejected,
    /// The writer gave no answer to its watchdog twice in a row (it is cut
    /// off the network, hung or down): calls to it fail fast with
    /// [`Error::WriterUnreachable`](crate::Error::WriterUnreachable) until
    /// it answers again or discovery finds another writer.
    Unreachable,
}

/// What the health of one node needs of the node: its name, a way to drop
/// its idle connections, and a real query to probe it with.
pub(crate) trait Probed: Send + Sync + 'static {
    /// `role (host:port)`, for logs.
    fn label(&self) -> &str;
    /// The node's health.
    fn health(&self) -> &Tracker;
    /// Drops the idle connections, so that none to a failing node is
    /// handed out again.
    fn drop_idle(&self);
    /// Runs a real query on a fresh connection; true when it succeeded.
    fn probe(&self) -> impl Future<Output = bool> + Send;
}

/// The health of one node, shared by every attempt on it.
pub(crate) struct Tracker {
    policy: Arc<HealthConfig>,
    /// Only replicas are ejected: the writer has no stand-in.
    ejectable: bool,
    ejected: AtomicBool,
    /// The writer's: its watchdog got no answer.
    unreachable: AtomicBool,
    /// Wakes the attempts in flight on the node when it is ejected, or
    /// found unreachable.
    ejection: Notify,
    failures: AtomicU32,
    ejections: AtomicU64,
    retried: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Tracker {
    pub(crate) fn new(policy: Arc<HealthConfig>, ejectable: bool) -> Self {
        Self {
            policy,
            ejectable,
            ejected: AtomicBool::new(false),
            unreachable: AtomicBool::new(false),
            ejection: Notify::new(),
            failures: AtomicU32::new(0),
            ejections: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    pub(crate) fn is_up(&self) -> bool {
        !self.ejected.load(Ordering::Relaxed) && !self.unreachable.load(Ordering::Relaxed)
    }

    pub(crate) fn state(&self) -> Health {
        if self.ejected.load(Ordering::Relaxed) {
            Health::Ejected
        } else if self.unreachable.load(Ordering::Relaxed) {
            Health::Unreachable
        } else {
            Health::Up
        }
    }

    /// Marks the node unreachable: the attempts in flight on it end, its
    /// idle connections close, and new ones fail fast. True when it was
    /// not already.
    pub(crate) fn mark_unreachable<N: Probed>(node: &Arc<N>, reason: String) -> bool {
        let health = node.health();
        // The reason first: a status that says unreachable says why.
        *health.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
        let newly = !health.unreachable.swap(true, Ordering::AcqRel);
        if newly {
            health.ejection.notify_waiters();
            node.drop_idle();
        }
        newly
    }

    /// Marks the node reachable again; true when it was not.
    pub(crate) fn mark_reachable(&self) -> bool {
        self.unreachable.swap(false, Ordering::AcqRel)
    }

    pub(crate) fn record_success(&self) {
        // Read first: a store on every success would bounce the cache line.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failure of the node; the one that reaches `eject_after`
    /// ejects it and starts its probe.
    pub(crate) fn record_failure<N: Probed>(node: &Arc<N>, reason: String) {
        let health = node.health();
        let failures = health.failures.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(node = %node.label(), failures, %reason, "node failure");
        if health.ejectable
            && failures >= health.policy.eject_after
            && !health.ejected.swap(true, Ordering::AcqRel)
        {
            health.ejections.fetch_add(1, Ordering::Relaxed);
            health.ejection.notify_waiters();
            node.drop_idle();
            tracing::warn!(node = %node.label(), %reason, "replica ejected: reads go elsewhere until a probe succeeds");
            tokio::spawn(
                probe(Arc::downgrade(node), Arc::clone(&health.policy)).with_current_subscriber(),
            );
        }
        *health.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
    }

    /// Runs `f` unless the node is ejected (or found unreachable) first:
    /// `None` then, at once, also when it was before `f` began. A read
    /// waiting on a node that stopped answering goes elsewhere when the
    /// node is ejected, without waiting out its own timeout; a call on a
    /// writer cut off the network ends when its watchdog says so.
    pub(crate) async fn unless_ejected<F: Future>(&self, f: F) -> Option<F::Output> {
        let ejected = self.ejection.notified();
        tokio::pin!(ejected);
        // Listening before looking: an ejection in between is not missed.
        ejected.as_mut().enable();
        if !self.is_up() {
            return None;
        }
        tokio::select! {
            biased;
            output = f => Some(output),
            () = ejected => None,
        }
    }

    /// Counts a failed attempt on the node that a read retried elsewhere.
    pub(crate) fn count_retry(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    pub(crate) fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    pub(crate) fn retried(&self) -> u64 {
        self.retried.load(Ordering::Relaxed)
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Probes an ejected node with a real query, waiting longer between probes
/// while it stays down, and re-admits it when one succeeds. Ends when the
/// node is dropped (it left the replica set).
///
/// A probe starts every interval whether or not the last one ended: one
/// whose connect hangs (the node is cut off, and its SYN was lost) does
/// not hold back the next, so a node that comes back is re-admitted within
/// one interval of it answering again.
async fn probe<N: Probed>(node: Weak<N>, policy: Arc<HealthConfig>) {
    let mut probes = FuturesUnordered::new();
    let mut wait = policy.probe_interval;
    let mut next = tokio::time::Instant::now() + wait;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {
                let Some(node) = node.upgrade() else { return };
                probes.push(async move { node.probe().await.then_some(node) });
                wait = (wait * 2).min(policy.probe_max_interval);
                next += wait;
            }
            Some(answered) = probes.next() => {
                let Some(node) = answered else { continue };
                let health = node.health();
                health.failures.store(0, Ordering::Relaxed);
                health.ejected.store(false, Ordering::Release);
                tracing::info!(node = %node.label(), "replica re-admitted: a probe query succeeded");
                return;
            }
        }
    }
}
