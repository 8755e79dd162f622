//! What a new connection's server says it is. PostgreSQL 14 and later
//! report `in_hot_standby` and `default_transaction_read_only` in the
//! startup's ParameterStatus messages, unasked: where they are reported, a
//! connection's role is known with no query. Older servers (and poolers
//! that do not pass them on) are asked, by the writer's pools only.

use std::sync::atomic::{AtomicU8, Ordering};

/// What a pool's connections must reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expect {
    /// A server that takes writes: a standby, or a session that starts
    /// read-only, is refused at connect, not at the first write.
    Writes,
    /// The writer, for reads that must see its latest commits: a standby
    /// is refused. A read login's sessions may start read-only.
    Primary,
    /// A standby: a server that says it is none (a promoted replica, an
    /// endpoint that reaches the writer) is said loudly, and still serves
    /// reads, each `READ ONLY`.
    Standby,
}

/// What the server said, where it said it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The connection may be used.
    Fine,
    /// It may not, for this reason.
    Refused(&'static str),
    /// The server did not say: ask it this, and read the answer with
    /// [`Question::verdict`].
    Ask(Question),
}

/// What an older server is asked instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Question {
    /// Whether it takes writes in this session.
    TakesWrites,
    /// Whether it is the writer.
    InRecovery,
}

impl Question {
    pub(crate) fn sql(self) -> &'static str {
        match self {
            Self::TakesWrites => "SHOW transaction_read_only",
            Self::InRecovery => "SELECT pg_catalog.pg_is_in_recovery()",
        }
    }

    /// The verdict on the answer's one value.
    pub(crate) fn verdict(self, answer: Option<&str>) -> Verdict {
        match (self, answer) {
            (Self::TakesWrites, Some("off")) | (Self::InRecovery, Some("f")) => Verdict::Fine,
            (Self::TakesWrites, _) => {
                Verdict::Refused("the server takes no writes (transaction_read_only is not off)")
            }
            (Self::InRecovery, _) => Verdict::Refused("the server is a standby (in recovery)"),
        }
    }
}

/// The newest report of a node's connections: whether it is a standby
/// (0 while none has said).
#[derive(Debug, Default)]
pub(crate) struct Reported(AtomicU8);

const STANDBY: u8 = 1;
const PRIMARY: u8 = 2;

impl Reported {
    /// `Some(true)` when the newest connection's server said it is a
    /// standby, `Some(false)` when it said it is not, `None` when none has
    /// said.
    pub(crate) fn standby(&self) -> Option<bool> {
        match self.0.load(Ordering::Relaxed) {
            STANDBY => Some(true),
            PRIMARY => Some(false),
            _ => None,
        }
    }

    /// Judges a new connection of `node` by its server's startup report
    /// (`parameter` looks one up), records what it said, and says when a
    /// replica's server turns out not to be a standby.
    pub(crate) fn judge<'p>(
        &self,
        expect: Expect,
        node: &str,
        parameter: impl Fn(&str) -> Option<&'p str>,
    ) -> Verdict {
        let standby = match parameter("in_hot_standby") {
            Some("on") => Some(true),
            Some("off") => Some(false),
            _ => None,
        };
        if let Some(standby) = standby {
            let now = if standby { STANDBY } else { PRIMARY };
            let before = self.0.swap(now, Ordering::Relaxed);
            if expect == Expect::Standby && !standby && before != PRIMARY {
                tracing::warn!(
                    node,
                    "a replica's server is not a standby (in_hot_standby = off): a promoted \
                     replica, or an address that reaches the writer; its reads still run READ ONLY"
                );
            }
        }
        match (expect, standby) {
            (Expect::Standby, _) => Verdict::Fine,
            (_, Some(true)) => Verdict::Refused("the server is a standby (in_hot_standby = on)"),
            (Expect::Primary, Some(false)) => Verdict::Fine,
            (Expect::Primary, None) => Verdict::Ask(Question::InRecovery),
            (Expect::Writes, Some(false)) => match parameter("default_transaction_read_only") {
                Some("off") => Verdict::Fine,
                Some(_) => Verdict::Refused(
                    "the server's sessions start read-only (default_transaction_read_only is on)",
                ),
                None => Verdict::Ask(Question::TakesWrites),
            },
            (Expect::Writes, None) => Verdict::Ask(Question::TakesWrites),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report<'p>(pairs: &'p [(&'p str, &'p str)]) -> impl Fn(&str) -> Option<&'p str> {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    #[test]
    fn a_reported_role_decides_without_a_question() {
        let writer = [
            ("in_hot_standby", "off"),
            ("default_transaction_read_only", "off"),
        ];
        let standby = [
            ("in_hot_standby", "on"),
            ("default_transaction_read_only", "off"),
        ];
        let read_only = [
            ("in_hot_standby", "off"),
            ("default_transaction_read_only", "on"),
        ];
        let reported = Reported::default();
        assert_eq!(reported.standby(), None);
        assert_eq!(
            reported.judge(Expect::Writes, "w", report(&writer)),
            Verdict::Fine
        );
        assert_eq!(reported.standby(), Some(false));
        assert!(matches!(
            reported.judge(Expect::Writes, "w", report(&standby)),
            Verdict::Refused(_)
        ));
        assert_eq!(reported.standby(), Some(true));
        assert!(matches!(
            reported.judge(Expect::Writes, "w", report(&read_only)),
            Verdict::Refused(_)
        ));
        // A read login's sessions may start read-only; a standby is still refused.
        assert_eq!(
            reported.judge(Expect::Primary, "w", report(&read_only)),
            Verdict::Fine
        );
        assert!(matches!(
            reported.judge(Expect::Primary, "w", report(&standby)),
            Verdict::Refused(_)
        ));
        // A replica's connection is used whatever it reaches, and recorded.
        let replica = Reported::default();
        assert_eq!(
            replica.judge(Expect::Standby, "r", report(&writer)),
            Verdict::Fine
        );
        assert_eq!(replica.standby(), Some(false));
    }

    #[test]
    fn a_server_that_does_not_report_is_asked_by_the_writer_only() {
        let silent: [(&str, &str); 0] = [];
        let odd = [("in_hot_standby", "maybe")];
        let reported = Reported::default();
        for pairs in [&silent[..], &odd[..]] {
            assert_eq!(
                reported.judge(Expect::Writes, "w", report(pairs)),
                Verdict::Ask(Question::TakesWrites)
            );
            assert_eq!(
                reported.judge(Expect::Primary, "w", report(pairs)),
                Verdict::Ask(Question::InRecovery)
            );
            assert_eq!(
                reported.judge(Expect::Standby, "r", report(pairs)),
                Verdict::Fine
            );
        }
        assert_eq!(reported.standby(), None);
        let writes = Question::TakesWrites;
        assert_eq!(writes.verdict(Some("off")), Verdict::Fine);
        assert!(matches!(writes.verdict(Some("on")), Verdict::Refused(_)));
        assert!(matches!(writes.verdict(None), Verdict::Refused(_)));
        let recovery = Question::InRecovery;
        assert_eq!(recovery.verdict(Some("f")), Verdict::Fine);
        assert!(matches!(recovery.verdict(Some("t")), Verdict::Refused(_)));
    }
}
