//! Time within a run: milliseconds since the start, the 100 ms buckets of
//! the timelines, the bound of the latency histograms, and event times
//! recorded once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Largest latency the histograms hold (a minute); larger ones count as it.
pub(crate) const MAX_LATENCY_US: u64 = 60_000_000;
/// Width of one timeline bucket, in milliseconds.
pub(crate) const BUCKET_MS: u64 = 100;
/// An event time that has not happened (yet).
pub(crate) const UNSET: u64 = u64::MAX;

/// Milliseconds from `start` to `at`.
pub(crate) fn ms_since(start: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(start).as_millis()).unwrap_or(u64::MAX - 1)
}

/// The timeline bucket of an operation that ended at `done`.
pub(crate) fn bucket(start: Instant, done: Instant) -> usize {
    usize::try_from(ms_since(start, done) / BUCKET_MS).unwrap_or(usize::MAX - 1)
}

/// When `event` happened, in ms since the start of the run; `None` while
/// it is [`UNSET`].
pub(crate) fn event_ms(event: &AtomicU64) -> Option<u64> {
    Some(AtomicU64::load(event, Ordering::Relaxed)).filter(|&ms| ms != UNSET)
}

/// Records `event` (ms since `start`, [`UNSET`] until it happens) as
/// happening now, unless it already did, and then prints `what` on stderr.
pub(crate) fn record_event(start: Instant, event: &AtomicU64, what: impl std::fmt::Display) {
    let now = ms_since(start, Instant::now());
    if event
        .compare_exchange(UNSET, now, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
    {
        eprintln!("loadgen: t={:.3}s {what}", now as f64 / 1000.0);
    }
}
