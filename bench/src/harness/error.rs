//! The harness's one error type: a message that says what was being done and
//! what went wrong, for a person reading the terminal.

use std::fmt;

/// What went wrong, with the context it went wrong in.
#[derive(Debug)]
pub struct Error(String);

/// The harness's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// Says what was being done when an error happened: `doing: cause`.
pub trait Context<T> {
    /// Wraps the error with `doing`.
    fn context(self, doing: impl fmt::Display) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, doing: impl fmt::Display) -> Result<T> {
        self.map_err(|cause| Error(format!("{doing}: {cause}")))
    }
}
