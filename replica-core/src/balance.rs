//! Replica selection: which replica serves the next read.

use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Deserialize;

/// How reads are spread over the replicas. Ejected replicas are skipped by
/// every strategy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
#[non_exhaustive]
pub enum Balance {
    /// Replicas take turns.
    RoundRobin,
    /// A replica chosen uniformly at random.
    Random,
    /// The less busy of two replicas chosen at random (power of two
    /// choices), by reads in flight: a slow or hung replica gets less work.
    #[default]
    LeastInFlight,
    /// A replica chosen at random in proportion to its weight
    /// (`replica_weights`).
    Weighted,
}

impl Balance {
    /// Parses the names used in `DATABASE_BALANCE` and serde, in any case
    /// and with `-` or `_` between words.
    pub(crate) fn parse(name: &str) -> Option<Self> {
        Some(
            match name.trim().to_ascii_lowercase().replace('-', "_").as_str() {
                "round_robin" => Self::RoundRobin,
                "random" => Self::Random,
                "least_in_flight" => Self::LeastInFlight,
                "weighted" => Self::Weighted,
                _ => return None,
            },
        )
    }
}

impl TryFrom<String> for Balance {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        Self::parse(&name).ok_or_else(|| {
            format!(
                "unknown strategy `{name}`, expected one of round_robin, random, least_in_flight, weighted"
            )
        })
    }
}

/// What a strategy needs to know of each replica.
pub(crate) trait Candidate {
    fn in_flight(&self) -> usize;
}

/// A strategy with its state: the round-robin cursor and cumulative weights.
pub(crate) struct Balancer {
    balance: Balance,
    next: AtomicUsize,
    /// Running sums of the weights, for `Weighted`.
    cumulative: Vec<u64>,
}

impl Balancer {
    pub(crate) fn new(balance: Balance, weights: &[u32]) -> Self {
        let cumulative = weights
            .iter()
            .scan(0u64, |sum, &w| {
                *sum += u64::from(w);
                Some(*sum)
            })
            .collect();
        Self {
            balance,
            next: AtomicUsize::new(0),
            cumulative,
        }
    }

    /// The index of the replica to use among those `eligible` says yes to,
    /// or `None` when there is none.
    pub(crate) fn pick<C: Candidate>(
        &self,
        nodes: &[C],
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = nodes.len();
        if n == 0 {
            return None;
        }
        let first = match self.balance {
            Balance::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % n,
            Balance::Random => fastrand::usize(..n),
            Balance::LeastInFlight => {
                let a = fastrand::usize(..n);
                let b = (a + 1 + fastrand::usize(..n.max(2) - 1)) % n;
                match (eligible(a), eligible(b)) {
                    (true, true) if nodes[b].in_flight() < nodes[a].in_flight() => b,
                    (false, true) => b,
                    _ => a,
                }
            }
            Balance::Weighted => {
                let total = self.cumulative.last().copied().unwrap_or(0);
                if total == 0 {
                    0
                } else {
                    let r = fastrand::u64(..total);
                    self.cumulative.partition_point(|&sum| sum <= r)
                }
            }
        };
        if eligible(first) {
            return Some(first);
        }
        self.fallback(n, first, &eligible)
    }

    /// Some replica is out: the next eligible one, by weight when weighted.
    #[cold]
    fn fallback(&self, n: usize, first: usize, eligible: &impl Fn(usize) -> bool) -> Option<usize> {
        if self.balance == Balance::Weighted {
            let weight =
                |i: usize| self.cumulative[i] - if i == 0 { 0 } else { self.cumulative[i - 1] };
            let total: u64 = (0..n).filter(|&i| eligible(i)).map(weight).sum();
            if total > 0 {
                let mut r = fastrand::u64(..total);
                for i in (0..n).filter(|&i| eligible(i)) {
                    if r < weight(i) {
                        return Some(i);
                    }
                    r -= weight(i);
                }
            }
        }
        if self.balance == Balance::RoundRobin {
            // Take further turns, so that a skipped replica's share is
            // spread over the others rather than given to its neighbour.
            return (1..n)
                .map(|_| self.next.fetch_add(1, Ordering::Relaxed) % n)
                .find(|&i| eligible(i))
                .or_else(|| (0..n).find(|&i| eligible(i)));
        }
        (1..n).map(|step| (first + step) % n).find(|&i| eligible(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Busy(usize);

    impl Candidate for Busy {
        fn in_flight(&self) -> usize {
            self.0
        }
    }

    fn counts(
        balancer: &Balancer,
        nodes: &[Busy],
        eligible: impl Fn(usize) -> bool,
        picks: usize,
    ) -> Vec<usize> {
        let mut counts = vec![0; nodes.len()];
        for _ in 0..picks {
            counts[balancer.pick(nodes, &eligible).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn round_robin_takes_turns_and_skips_the_ineligible() {
        let nodes = [Busy(0), Busy(0), Busy(0)];
        let balancer = Balancer::new(Balance::RoundRobin, &[]);
        assert_eq!(counts(&balancer, &nodes, |_| true, 9), [3, 3, 3]);
        assert_eq!(counts(&balancer, &nodes, |i| i != 1, 10), [5, 0, 5]);
    }

    #[test]
    fn least_in_flight_prefers_the_idle_replica() {
        let nodes = [Busy(0), Busy(10)];
        let balancer = Balancer::new(Balance::LeastInFlight, &[]);
        assert_eq!(counts(&balancer, &nodes, |_| true, 100), [100, 0]);
        assert_eq!(counts(&balancer, &nodes, |i| i == 1, 10), [0, 10]);
    }

    #[test]
    fn weighted_follows_the_weights_and_reweighs_without_the_ineligible() {
        let nodes = [Busy(0), Busy(0), Busy(0)];
        let balancer = Balancer::new(Balance::Weighted, &[3, 1, 0]);
        let spread = counts(&balancer, &nodes, |_| true, 40_000);
        assert_eq!(spread[2], 0);
        let ratio = spread[0] as f64 / spread[1] as f64;
        assert!((2.7..3.3).contains(&ratio), "{spread:?}");
        assert_eq!(counts(&balancer, &nodes, |i| i != 0, 100), [0, 100, 0]);
    }

    #[test]
    fn nothing_eligible_is_none() {
        let nodes = [Busy(0), Busy(0)];
        for balance in [
            Balance::RoundRobin,
            Balance::Random,
            Balance::LeastInFlight,
            Balance::Weighted,
        ] {
            let balancer = Balancer::new(balance, &[1, 1]);
            assert_eq!(balancer.pick(&nodes, |_| false), None, "{balance:?}");
            assert_eq!(balancer.pick::<Busy>(&[], |_| true), None, "{balance:?}");
        }
    }
}
