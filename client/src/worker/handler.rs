//! The handler's vocabulary: [`TaskError`] (retry, retry after a delay, or dead, with a
//! reason) and [`HandlerOutput`] (what a successful handler returns as the ack's result).

use std::fmt;
use std::time::Duration;

use bytes::Bytes;

/// Why a handler did not finish its task, and what should happen to it.
///
/// Any `std::error::Error` converts into a `TaskError` that retries with the queue's
/// backoff, so `?` works in handlers. Use [`TaskError::dead`] for input that will never
/// succeed and [`TaskError::retry_after`] to choose the delay.
///
/// `TaskError` deliberately does not implement `std::error::Error` (that would collide
/// with the blanket conversion); it implements `Display` and `Debug`.
pub struct TaskError {
    pub(super) action: Action,
    pub(super) message: String,
}

/// What becomes of a task whose handler failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    Retry(Option<Duration>),
    Dead,
}

impl TaskError {
    /// Retry after the queue's exponential backoff, recording `reason`.
    pub fn retry(reason: impl fmt::Display) -> Self {
        TaskError {
            action: Action::Retry(None),
            message: reason.to_string(),
        }
    }

    /// Retry after `delay`, recording `reason`.
    pub fn retry_after(delay: Duration, reason: impl fmt::Display) -> Self {
        TaskError {
            action: Action::Retry(Some(delay)),
            message: reason.to_string(),
        }
    }

    /// Send the task to the dead set now, whatever its attempts, with `reason`.
    pub fn dead(reason: impl fmt::Display) -> Self {
        TaskError {
            action: Action::Dead,
            message: reason.to_string(),
        }
    }

    /// The reason recorded as the task's last error.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// True for [`TaskError::dead`].
    pub fn is_dead(&self) -> bool {
        self.action == Action::Dead
    }

    /// The explicit retry delay, if one was chosen.
    pub fn retry_delay(&self) -> Option<Duration> {
        match self.action {
            Action::Retry(delay) => delay,
            Action::Dead => None,
        }
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for TaskError {
    fn from(err: E) -> Self {
        // Keep the source chain: "decode failed: invalid utf-8 at byte 3".
        let mut message = err.to_string();
        let mut source = err.source();
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        TaskError {
            action: Action::Retry(None),
            message,
        }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskError")
            .field("action", &self.action)
            .field("message", &self.message)
            .finish()
    }
}

/// What a handler may return on success: nothing, or a result payload for the ack.
pub trait HandlerOutput: Send + 'static {
    /// The result payload to ack with (empty = none).
    fn into_result(self) -> Bytes;
}

impl HandlerOutput for () {
    fn into_result(self) -> Bytes {
        Bytes::new()
    }
}

impl HandlerOutput for Bytes {
    fn into_result(self) -> Bytes {
        self
    }
}

impl HandlerOutput for Vec<u8> {
    fn into_result(self) -> Bytes {
        Bytes::from(self)
    }
}

impl HandlerOutput for String {
    fn into_result(self) -> Bytes {
        Bytes::from(self)
    }
}

impl<T: HandlerOutput> HandlerOutput for Option<T> {
    fn into_result(self) -> Bytes {
        self.map(HandlerOutput::into_result).unwrap_or_default()
    }
}
