//! Replica lag: what is known of each replica's progress ([`Lag`]), from
//! the lag monitor's samples and from reads that waited for a write.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::config::ConsistencyConfig;
use crate::consistency::{WriteToken, unix_ms};

/// Not known.
const UNKNOWN: u64 = u64::MAX;

/// What is known of one replica's progress. Written by the monitor (and,
/// for the replayed position, by reads that waited for a token), read on
/// the read path without a lock.
pub(crate) struct Lag {
    /// The highest WAL position known replayed, 0 when none is.
    replayed: AtomicU64,
    /// Time lag at the last sample, ms.
    lag_ms: AtomicU64,
    /// WAL bytes not yet replayed at the last sample.
    lag_bytes: AtomicU64,
    /// When the last sample was taken, Unix ms.
    sampled_at: AtomicU64,
    /// Behind the configured limit: no reads.
    behind: AtomicBool,
}

impl Default for Lag {
    fn default() -> Self {
        Self {
            replayed: AtomicU64::new(0),
            lag_ms: AtomicU64::new(UNKNOWN),
            lag_bytes: AtomicU64::new(UNKNOWN),
            sampled_at: AtomicU64::new(0),
            behind: AtomicBool::new(false),
        }
    }
}

/// One sample of a replica.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Sample {
    pub(crate) replayed: Option<u64>,
    pub(crate) lag_ms: Option<u64>,
    pub(crate) lag_bytes: Option<u64>,
}

impl Lag {
    pub(crate) fn is_behind(&self) -> bool {
        self.behind.load(Ordering::Relaxed)
    }

    /// Time lag at the last sample.
    pub(crate) fn lag(&self) -> Option<Duration> {
        known(&self.lag_ms).map(Duration::from_millis)
    }

    pub(crate) fn lag_bytes(&self) -> Option<u64> {
        known(&self.lag_bytes)
    }

    /// Whether the replica is known to hold the write of `token`: it
    /// replayed past its position, or (Aurora, `by_time`) its data was no
    /// older than the write when last sampled.
    pub(crate) fn has_replayed(&self, token: &WriteToken, by_time: bool) -> bool {
        if by_time {
            let (Some(lag), sampled) =
                (known(&self.lag_ms), self.sampled_at.load(Ordering::Relaxed))
            else {
                return false;
            };
            sampled != 0 && sampled.saturating_sub(lag) > token.at_ms
        } else {
            token.lsn != WriteToken::UNKNOWN_LSN
                && self.replayed.load(Ordering::Relaxed) >= token.lsn
        }
    }

    /// The replica was seen to have replayed `lsn`.
    pub(crate) fn replayed_at_least(&self, lsn: u64) {
        self.replayed.fetch_max(lsn, Ordering::Relaxed);
    }

    /// Records a sample and whether it puts the replica behind `limits`;
    /// returns `Some(behind)` when that changed.
    pub(crate) fn record(&self, sample: Sample, limits: &ConsistencyConfig) -> Option<bool> {
        if let Some(lsn) = sample.replayed {
            self.replayed_at_least(lsn);
        }
        self.lag_ms
            .store(sample.lag_ms.unwrap_or(UNKNOWN), Ordering::Relaxed);
        self.lag_bytes
            .store(sample.lag_bytes.unwrap_or(UNKNOWN), Ordering::Relaxed);
        self.sampled_at.store(unix_ms(), Ordering::Relaxed);
        let over_time = limits
            .max_replica_lag
            .zip(sample.lag_ms)
            .is_some_and(|(limit, lag)| u128::from(lag) > limit.as_millis());
        let over_bytes = limits
            .max_replica_lag_bytes
            .zip(sample.lag_bytes)
            .is_some_and(|(limit, lag)| lag > limit);
        let behind = over_time || over_bytes;
        (self.behind.swap(behind, Ordering::Relaxed) != behind).then_some(behind)
    }
}

fn known(value: &AtomicU64) -> Option<u64> {
    Some(value.load(Ordering::Relaxed)).filter(|&v| v != UNKNOWN)
}
