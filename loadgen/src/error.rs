//! How failures are told: a [`Fatal`] error that ends the run, and the
//! [`Chain`] of an error's causes for a message.

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
