//! The bus's errors. Each says what happened to state.

use thiserror::Error;

use crate::event::{EncodeError, ValidationError};
use crate::log::AppendError;
use crate::subject::SubjectError;

/// Why an event was not published.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PublishError {
    /// The subject, reply subject, headers or payload break a rule or a limit.
    /// Nothing was published.
    #[error(transparent)]
    Invalid(#[from] EncodeError),
    /// Bytes given as an archived event were refused by validation. Nothing was
    /// published.
    #[error("malformed event ({code}): {reason}")]
    Malformed {
        /// Short stable code, see [`crate::event::ValidationError::code`].
        code: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The event memory budget is spent (slow consumers hold it all). The event
    /// was not stored; every subscription it matched counts it as dropped.
    #[error(
        "the event memory budget is spent; the event was dropped for all {0} of its subscribers"
    )]
    OutOfMemory(usize),
    /// The bus was shut down. Nothing was published.
    #[error("the bus is closed")]
    Closed,
}

/// Why a batch ([`crate::Publisher::publish_batch`]) stopped part way.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("message {published} of the batch was not published: {error}")]
pub struct PublishBatchError {
    /// How many messages, from the start of the batch, were published. The
    /// message at this index failed; those after it were not tried.
    pub published: usize,
    /// Why that message was not published.
    pub error: PublishError,
}

impl From<ValidationError> for PublishError {
    fn from(error: ValidationError) -> Self {
        PublishError::Malformed {
            code: error.code(),
            reason: error.to_string(),
        }
    }
}

impl From<AppendError> for PublishError {
    fn from(error: AppendError) -> Self {
        match error {
            AppendError::OutOfMemory => PublishError::OutOfMemory(0),
        }
    }
}

/// Why a subscription was refused. Nothing was subscribed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SubscribeError {
    /// The pattern breaks a subject rule.
    #[error("invalid pattern: {0}")]
    Pattern(#[from] SubjectError),
    /// The queue group name is empty, too long, or holds whitespace.
    #[error("invalid queue group name: names are 1 to 256 characters without whitespace")]
    QueueGroup,
    /// The bus was shut down.
    #[error("the bus is closed")]
    Closed,
}

/// Why no event was received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RecvError {
    /// Nothing arrived before the timeout. The subscription is unchanged.
    #[error("no event arrived before the timeout")]
    Timeout,
    /// The bus was shut down and every queued event was received.
    #[error("the bus is closed")]
    Closed,
}

/// Why a request got no reply.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestError {
    /// Nobody subscribes to the request's subject; reported at once, without
    /// waiting for the timeout.
    #[error("no responders for this subject")]
    NoResponders,
    /// The request went out but no reply came in time. A late reply is
    /// discarded.
    #[error("no reply before the timeout")]
    Timeout,
    /// The request could not be published.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The reply inbox could not be set up.
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
    /// The bus was shut down while waiting.
    #[error("the bus is closed")]
    Closed,
}
