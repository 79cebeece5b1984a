//! `ClientError`, the one error type of the crate, and the mapping from wire `Error`
//! messages to it. Nothing here does I/O.

use std::sync::Arc;
use std::time::Duration;

use squall_proto::{v1, ErrorCode};

/// Everything that can go wrong in a client call.
///
/// Whether a failed call may simply be repeated depends on the variant and the
/// operation; see the crate docs, section *Retries*. In short: the outcome of a
/// [`Timeout`](ClientError::Timeout) or [`ConnectionLost`](ClientError::ConnectionLost)
/// publish is unknown, so repeat a publish only when it carries an idempotency key.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Connecting or talking to the broker failed at the transport level.
    #[error("i/o error talking to the broker: {0}")]
    Io(#[source] Arc<std::io::Error>),

    /// The broker sent something this client does not understand (an undecodable
    /// frame, or an answer of the wrong kind). The connection is dropped.
    #[error("protocol error: {0}")]
    Protocol(String),

    /// No answer within the configured time. For a publish the outcome is unknown.
    #[error("{op} timed out after {after:?}; raise the timeout with ClientBuilder::request_timeout / connect_timeout if the broker is just slow")]
    Timeout {
        /// The operation that timed out (`"publish"`, `"connect"`, ...).
        op: &'static str,
        /// How long the client waited.
        after: Duration,
    },

    /// The broker refused the request with a typed error code.
    #[error("broker refused the request: {code:?}: {message}")]
    Server {
        /// The wire error code.
        code: ErrorCode,
        /// The broker's explanation.
        message: String,
    },

    /// The lease of this delivery is no longer live: it expired, the connection that
    /// received it was lost (leases never survive a reconnect), or it was already
    /// settled. The task is (or will be) redelivered; do not repeat the settle.
    #[error("the lease of task {task_id} is no longer live (expired, connection lost, or already settled); the task will be redelivered")]
    LeaseExpired {
        /// The task whose lease is gone.
        task_id: u64,
    },

    /// The connection was lost while the request was in flight. The broker may or may
    /// not have applied it; repeat only idempotent operations.
    #[error(
        "connection to the broker lost with the request in flight (outcome unknown): {reason}"
    )]
    ConnectionLost {
        /// Why the connection ended.
        reason: String,
    },

    /// The client is not connected and did not reconnect within the configured wait
    /// (`ClientBuilder::wait_for_connection`). Nothing was sent: retrying is safe.
    #[error("broker unavailable: not connected after waiting {waited:?} (last error: {reason})")]
    Unavailable {
        /// How long the call waited for a connection.
        waited: Duration,
        /// The last connection error.
        reason: String,
    },

    /// The request was refused by the client before sending, for the reason the
    /// broker would refuse it with (the wire `code` is given). Nothing was sent.
    #[error("invalid request ({code:?}): {message}")]
    Invalid {
        /// The wire code the broker would answer with.
        code: ErrorCode,
        /// What is wrong and what to do.
        message: String,
    },

    /// The broker ended the subscription: its queue was deleted. No more deliveries
    /// come; leases it held are gone. Subscribing again creates a new, empty queue.
    #[error("the broker ended the subscription to queue {queue:?}: {reason}")]
    SubscriptionEnded {
        /// The queue.
        queue: String,
        /// The broker's reason.
        reason: String,
    },

    /// The client configuration is unusable (for example TLS, which is not supported yet).
    #[error("invalid client configuration: {0}")]
    Config(String),

    /// The client was closed (by [`Client::close`](crate::Client::close), by dropping
    /// every handle, or because reconnecting gave up).
    #[error("client is closed")]
    Closed,

    /// A [`ClusterClient`](crate::ClusterClient) call about a queue failed at once
    /// because the node that owns the queue is not connected (down, unreachable, or
    /// reconnecting). Nothing was sent: retrying is safe. Queues of other nodes are not
    /// affected, and the client keeps reconnecting to this node in the background.
    #[error("cluster node {node} ({addr}) is unavailable: {reason}; calls for its queues fail until it is back (the client keeps reconnecting)")]
    NodeUnavailable {
        /// The node's name in the cluster's node list.
        node: String,
        /// The node's address.
        addr: String,
        /// Why it is not connected.
        reason: String,
    },
}

/// The crate's result type.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

impl ClientError {
    /// The wire error code behind this error, if there is one: the broker's code for
    /// [`Server`](ClientError::Server), the would-be code for
    /// [`Invalid`](ClientError::Invalid), `LEASE_EXPIRED` for
    /// [`LeaseExpired`](ClientError::LeaseExpired).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } | ClientError::Invalid { code, .. } => Some(*code),
            ClientError::LeaseExpired { .. } => Some(ErrorCode::LeaseExpired),
            _ => None,
        }
    }

    /// True when the request certainly did not take effect on the broker, so sending
    /// it again cannot create a duplicate.
    pub fn nothing_was_applied(&self) -> bool {
        match self {
            ClientError::Unavailable { .. }
            | ClientError::NodeUnavailable { .. }
            | ClientError::Invalid { .. }
            | ClientError::Config(_)
            | ClientError::LeaseExpired { .. } => true,
            // A cluster member that stopped leading refuses a change it had already
            // proposed with NOT_LEADER: that one may still commit.
            ClientError::Server {
                code: ErrorCode::NotLeader,
                ..
            } => false,
            // A numbered publish refused as too old stored nothing itself, but an earlier
            // send of the same number may have (the client resends a first send under a
            // new number by itself, so only a retry's refusal reaches the caller).
            ClientError::Server {
                code: ErrorCode::SequenceTooOld,
                ..
            } => false,
            // A typed refusal means the broker rejected the request as a whole.
            ClientError::Server { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn from_wire(err: v1::Error) -> Self {
        match ErrorCode::try_from(err.code) {
            Ok(code) => ClientError::Server {
                code,
                message: err.message,
            },
            Err(_) => ClientError::Server {
                code: ErrorCode::Unspecified,
                message: format!("unknown error code {}: {}", err.code, err.message),
            },
        }
    }

    pub(crate) fn invalid(code: ErrorCode, message: impl Into<String>) -> Self {
        ClientError::Invalid {
            code,
            message: message.into(),
        }
    }

    /// Maps a broker `LEASE_EXPIRED` answer to [`ClientError::LeaseExpired`].
    pub(crate) fn for_lease(self, task_id: u64) -> Self {
        match self {
            ClientError::Server {
                code: ErrorCode::LeaseExpired,
                ..
            } => ClientError::LeaseExpired { task_id },
            other => other,
        }
    }
}

impl From<std::io::Error> for ClientError {
    fn from(err: std::io::Error) -> Self {
        ClientError::Io(Arc::new(err))
    }
}

impl From<squall_proto::FrameError> for ClientError {
    fn from(err: squall_proto::FrameError) -> Self {
        match err {
            squall_proto::FrameError::Io(e) => ClientError::Io(Arc::new(e)),
            other => ClientError::Protocol(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_errors_map_to_typed_codes() {
        let e = ClientError::from_wire(v1::Error {
            code: ErrorCode::QueueFull as i32,
            message: "full".into(),
        });
        assert_eq!(e.code(), Some(ErrorCode::QueueFull));
        let e = ClientError::from_wire(v1::Error {
            code: 9999,
            message: "x".into(),
        });
        assert_eq!(e.code(), Some(ErrorCode::Unspecified));
        assert!(e.to_string().contains("9999"));
    }

    #[test]
    fn lease_expired_answer_becomes_lease_expired() {
        let e = ClientError::from_wire(v1::Error {
            code: ErrorCode::LeaseExpired as i32,
            message: "stale".into(),
        })
        .for_lease(42);
        assert!(matches!(e, ClientError::LeaseExpired { task_id: 42 }));
        let other = ClientError::Closed.for_lease(42);
        assert!(matches!(other, ClientError::Closed));
    }
}
