//! How failures are told: a [`Fatal`] error that ends the run, the
//! [`Chain`] of an error's causes for a message, and the first failure of
//! each kind on stderr ([`print_first`]).

use std::collections::HashSet;
use std::fmt::Display;
use std::sync::Mutex;
use std::time::Instant;

/// A failure that ends the run before or instead of the JSON summary.
pub(crate) struct Fatal {
    pub(crate) message: String,
    pub(crate) code: u8,
}

impl Fatal {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 1,
        }
    }
}

/// An error with its sources, `message: cause: cause`: the library keeps
/// the cause of a failure (diesel's error, the server's words) in
/// `source()`, not in its message.
pub(crate) struct Chain<'a>(pub(crate) &'a dyn std::error::Error);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(next) = source {
            write!(f, ": {next}")?;
            source = next.source();
        }
        Ok(())
    }
}

/// Prints `loadgen: t=..s first {what}` on stderr, `done` since `start`, the
/// first time any task reports `kind` to `seen`. Only failures get here, so
/// the lock is off the hot path.
pub(crate) fn print_first(
    seen: &Mutex<HashSet<&'static str>>,
    kind: &'static str,
    start: Instant,
    done: Instant,
    what: impl Display,
) {
    if seen.lock().map_or(true, |mut printed| printed.insert(kind)) {
        eprintln!(
            "loadgen: t={:.3}s first {what}",
            done.saturating_duration_since(start).as_secs_f64()
        );
    }
}
